/* Event mapping specs: validation and the JSON form (see invoker.h). */
#include "invoker/invoker.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/util.h"
#include "fabric/fabric.h"

static const char *const mapping_fields[] = {
    "id",
    "app",
    "process",
    "topic",
    "schedule",
    "on_app_event",
    "filters",
    "retries",
    "backoff_ms",
    "backoff_cap_ms",
    "max_age",
    "max_age_ms",
    "dead_letter_topic",
    "reply_topic",
    "concurrency",
    "ordered",
    "max_instances",
    "max_instances_given",
    "idle_grace",
    "idle_grace_ms",
    "from",
    "created_at",
    "trigger",
    "space_guid",
    "topic_space_guid",
    "granted_by_guid",
    NULL,
};

static const char *const app_event_names[] = {"staged",  "started", "stopped",
                                              "crashed", "scaled",  NULL};

static int mapping_fail(enum skiff_err *code, enum skiff_err c, char *err, size_t errsize,
                        const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static int mapping_fail(enum skiff_err *code, enum skiff_err c, char *err, size_t errsize,
                        const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errsize, fmt, ap);
    va_end(ap);
    *code = c;
    return TRIGGER_EINVAL;
}

/* Reads an optional string field; *out is NULL when absent or null. */
static int mapping_get_string(json_t *body, const char *key, const char **out, enum skiff_err *code,
                              char *err, size_t errsize)
{
    json_t *v = json_object_get(body, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v) || json_string_length(v) == 0)
        return mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize,
                            "'%s' must be a non-empty string", key);
    *out = json_string_value(v);
    return 0;
}

/* An optional whole number in [min, max]; *out keeps its value when absent. */
static int mapping_get_int(json_t *body, const char *key, int64_t min, int64_t max, int64_t *out,
                           enum skiff_err *code, char *err, size_t errsize)
{
    json_t *v = json_object_get(body, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
        return mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize,
                            "'%s' must be a whole number from %lld to %lld", key, (long long)min,
                            (long long)max);
    *out = json_integer_value(v);
    return 0;
}

/* A duration given either as "24h" under key or as milliseconds under key_ms. */
static int mapping_get_duration(json_t *body, const char *key, const char *key_ms, int64_t min_ms,
                                int64_t *out, enum skiff_err *code, char *err, size_t errsize)
{
    int64_t ms = *out;
    if (mapping_get_int(body, key_ms, 0, (int64_t)1000 * 86400000, &ms, code, err, errsize) < 0)
        return TRIGGER_EINVAL;
    json_t *v = json_object_get(body, key);
    if (v && !json_is_null(v)) {
        if (json_is_integer(v) && json_integer_value(v) >= 0) {
            ms = json_integer_value(v) * 1000; /* a bare number means seconds */
        } else if (json_is_string(v)) {
            ms = strcmp(json_string_value(v), "0") == 0
                     ? 0
                     : trigger_parse_duration_ms(json_string_value(v));
            if (ms < 0)
                return mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize,
                                    "'%s' must be a duration such as 30s, 10m, 24h or 7d", key);
        } else {
            return mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize,
                                "'%s' must be a duration such as 30s, 10m, 24h or 7d", key);
        }
    }
    if (ms != 0 && ms < min_ms)
        return mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize,
                            "'%s' must be at least %lld ms (or 0 for no limit)", key,
                            (long long)min_ms);
    *out = ms;
    return 0;
}

static int mapping_check_topic(const char *key, const char *topic, enum skiff_err *code, char *err,
                               size_t errsize)
{
    if (!fabric_name_valid(topic))
        return mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize,
                            "'%s' is not a valid topic name for '%s': use lowercase letters, "
                            "digits, '-', '.' and '_', starting with a letter or digit",
                            topic, key);
    return 0;
}

int mapping_spec_from_json(json_t *body, struct mapping_spec *out, enum skiff_err *code, char *err,
                           size_t errsize)
{
    memset(out, 0, sizeof(*out));
    delivery_policy_default(&out->policy);
    out->max_instances = INVOKER_DEFAULT_MAX_INSTANCES;
    out->idle_grace_ms = INVOKER_DEFAULT_IDLE_GRACE_MS;
    out->process = NULL;
    *code = SKIFF_E_INVALID_VALUE;
    if (!json_is_object(body))
        return mapping_fail(code, SKIFF_E_BAD_JSON, err, errsize,
                            "the body must be a JSON object describing the mapping");

    const char *key;
    json_t *value;
    json_object_foreach(body, key, value)
    {
        bool known = false;
        for (size_t i = 0; mapping_fields[i]; i++)
            known = known || strcmp(key, mapping_fields[i]) == 0;
        if (!known) {
            mapping_fail(code, SKIFF_E_UNKNOWN_FIELD, err, errsize,
                         "unknown field '%s' in the event mapping: remove it (see docs/api.md)",
                         key);
            goto fail;
        }
    }

    const char *id, *app, *process, *topic, *schedule, *app_event, *dlq, *reply, *from;
    if (mapping_get_string(body, "id", &id, code, err, errsize) < 0 ||
        mapping_get_string(body, "app", &app, code, err, errsize) < 0 ||
        mapping_get_string(body, "process", &process, code, err, errsize) < 0 ||
        mapping_get_string(body, "topic", &topic, code, err, errsize) < 0 ||
        mapping_get_string(body, "schedule", &schedule, code, err, errsize) < 0 ||
        mapping_get_string(body, "on_app_event", &app_event, code, err, errsize) < 0 ||
        mapping_get_string(body, "dead_letter_topic", &dlq, code, err, errsize) < 0 ||
        mapping_get_string(body, "reply_topic", &reply, code, err, errsize) < 0 ||
        mapping_get_string(body, "from", &from, code, err, errsize) < 0)
        goto fail;
    /* kept with a stored mapping; the API sets it from the request, never from the body */
    const char *space = NULL;
    if (mapping_get_string(body, "space_guid", &space, code, err, errsize) < 0)
        goto fail;
    if (space && *space)
        out->space = xstrdup(space);
    /* likewise: a stored mapping's topic space, checked when the mapping was made */
    const char *topic_space = NULL;
    if (mapping_get_string(body, "topic_space_guid", &topic_space, code, err, errsize) < 0)
        goto fail;
    if (topic_space && *topic_space)
        out->topic_space = xstrdup(topic_space);
    const char *granted_by = NULL;
    if (mapping_get_string(body, "granted_by_guid", &granted_by, code, err, errsize) < 0)
        goto fail;
    if (granted_by && *granted_by)
        out->granted_by = xstrdup(granted_by);

    if (!app) {
        mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize,
                     "'app' is required: the app or function the events go to");
        goto fail;
    }
    if (!name_valid(app)) {
        mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize,
                     "'%s' is not an app name: use lowercase letters, digits and '-'", app);
        goto fail;
    }
    out->app = xstrdup(app);
    out->process = xstrdup(process ? process : "web");
    if (strlen(out->process) > 63) {
        mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize,
                     "'process' is too long (63 at most)");
        goto fail;
    }

    if (id) {
        if (strlen(id) > 36 || !fabric_name_valid(id)) {
            mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize,
                         "'id' must be up to 36 lowercase letters, digits and '-'");
            goto fail;
        }
        snprintf(out->id, sizeof(out->id), "%s", id);
    } else {
        uuid_generate_v4(out->id);
    }

    /* The JSON form shows the system topic of schedules and app events too: read back, the
     * trigger field says which one the mapping really has. */
    json_t *trigger = json_object_get(body, "trigger");
    if (json_is_string(trigger) && strcmp(json_string_value(trigger), "topic") != 0 &&
        (schedule || app_event))
        topic = NULL;
    int triggers = (topic != NULL) + (schedule != NULL) + (app_event != NULL);
    if (triggers != 1) {
        mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize,
                     "give exactly one trigger: 'topic', 'schedule' (cron or '@every 30s') or "
                     "'on_app_event' (APP:EVENT)");
        goto fail;
    }
    if (topic) {
        /* ORG/SPACE/NAME: another space's topic, reached where the caller's roles allow */
        const char *name = strrchr(topic, '/');
        if (name) {
            const char *mid = strchr(topic, '/');
            bool two_names = mid != name && mid > topic && mid + 1 < name &&
                             !memchr(mid + 1, '/', (size_t)(name - mid - 1));
            if (!two_names || name - topic > 2 * 63 + 1) {
                mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize,
                             "'topic' must be a topic name, or ORG/SPACE/NAME for another "
                             "space's topic");
                goto fail;
            }
            out->topic_space_ref = xstrndup(topic, (size_t)(name - topic));
            topic = name + 1;
        }
        if (mapping_check_topic("topic", topic, code, err, errsize) < 0)
            goto fail;
        out->trigger = MAPPING_TOPIC;
        out->topic = xstrdup(topic);
    } else if (schedule) {
        struct cron_schedule cs;
        char cerr[256];
        if (cron_parse(schedule, &cs, cerr, sizeof(cerr)) < 0) {
            mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize, "'schedule': %s", cerr);
            goto fail;
        }
        out->trigger = MAPPING_SCHEDULE;
        out->schedule = xstrdup(schedule);
        out->topic = xasprintf("skiff.schedule.%s", out->id);
    } else {
        const char *colon = strrchr(app_event, ':');
        const char *name = colon ? colon + 1 : app_event;
        bool known = false;
        for (size_t i = 0; app_event_names[i]; i++)
            known = known || strcmp(name, app_event_names[i]) == 0;
        if (!known) {
            mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize,
                         "'on_app_event' %s: the event must be one of staged, started, stopped, "
                         "crashed, scaled (write APP:EVENT, or EVENT for every app)",
                         app_event);
            goto fail;
        }
        if (colon && !(colon - app_event == 1 && app_event[0] == '*')) {
            char *watched = xstrndup(app_event, (size_t)(colon - app_event));
            if (!name_valid(watched)) {
                mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize,
                             "'on_app_event' %s: '%s' is not an app name", app_event, watched);
                free(watched);
                goto fail;
            }
            out->event_app = watched;
        }
        out->trigger = MAPPING_APP_EVENT;
        out->event_name = xstrdup(name);
        out->topic = xasprintf("skiff.app.%s", name);
    }

    json_t *filters = json_object_get(body, "filters");
    if (filters && !json_is_null(filters)) {
        if (!json_is_array(filters) || json_array_size(filters) > INVOKER_MAX_FILTERS) {
            mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize,
                         "'filters' must be a list of at most %d strings like 'type=x' or "
                         "'subject^=prefix'",
                         INVOKER_MAX_FILTERS);
            goto fail;
        }
        size_t i;
        json_t *f;
        json_array_foreach(filters, i, f)
        {
            char ferr[256];
            if (!json_is_string(f)) {
                mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize,
                             "'filters' must hold strings like 'type=x' or 'subject^=prefix'");
                goto fail;
            }
            if (event_filter_parse(json_string_value(f), &out->filters[out->filter_count], ferr,
                                   sizeof(ferr)) < 0) {
                mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize, "'filters': %s", ferr);
                goto fail;
            }
            out->filter_count++;
        }
    }
    if (out->trigger == MAPPING_APP_EVENT && out->event_app) {
        if (out->filter_count == INVOKER_MAX_FILTERS) {
            mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize, "too many filters");
            goto fail;
        }
        /* Platform events carry the app's name as subject. */
        struct event_filter *f = &out->filters[out->filter_count++];
        snprintf(f->attr, sizeof(f->attr), "subject");
        f->prefix = false;
        f->value = xstrdup(out->event_app);
    }

    int64_t v;
    v = out->policy.retries;
    if (mapping_get_int(body, "retries", 0, 1000, &v, code, err, errsize) < 0)
        goto fail;
    out->policy.retries = (int)v;
    if (mapping_get_int(body, "backoff_ms", 1, 3600000, &out->policy.backoff_ms, code, err,
                        errsize) < 0 ||
        mapping_get_int(body, "backoff_cap_ms", 1, 86400000, &out->policy.backoff_cap_ms, code, err,
                        errsize) < 0)
        goto fail;
    if (out->policy.backoff_cap_ms < out->policy.backoff_ms) {
        mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize,
                     "'backoff_cap_ms' (%lld) is below 'backoff_ms' (%lld): raise the cap",
                     (long long)out->policy.backoff_cap_ms, (long long)out->policy.backoff_ms);
        goto fail;
    }
    if (mapping_get_duration(body, "max_age", "max_age_ms", 1000, &out->policy.max_age_ms, code,
                             err, errsize) < 0 ||
        mapping_get_duration(body, "idle_grace", "idle_grace_ms", 1000, &out->idle_grace_ms, code,
                             err, errsize) < 0)
        goto fail;
    v = out->policy.concurrency;
    if (mapping_get_int(body, "concurrency", 1, 1000, &v, code, err, errsize) < 0)
        goto fail;
    out->policy.concurrency = (int)v;
    v = out->max_instances;
    if (mapping_get_int(body, "max_instances", 1, 100, &v, code, err, errsize) < 0)
        goto fail;
    out->max_instances = (int)v;
    /* a stored mapping says whether its max was asked for; a body (or a record from before
     * that was said) by naming it */
    json_t *given = json_object_get(body, "max_instances_given");
    out->max_given = json_is_boolean(given) ? json_is_true(given)
                                            : json_object_get(body, "max_instances") != NULL;
    json_t *ordered = json_object_get(body, "ordered");
    if (ordered && !json_is_null(ordered)) {
        if (!json_is_boolean(ordered)) {
            mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize,
                         "'ordered' must be true or false");
            goto fail;
        }
        out->policy.ordered = json_is_true(ordered);
    }
    if (mapping_get_int(body, "created_at", 0, INT64_MAX, &out->created_at, code, err, errsize) < 0)
        goto fail;

    if (dlq) {
        if (mapping_check_topic("dead_letter_topic", dlq, code, err, errsize) < 0)
            goto fail;
        out->dead_letter_topic = xstrdup(dlq);
    }
    if (reply) {
        if (mapping_check_topic("reply_topic", reply, code, err, errsize) < 0)
            goto fail;
        out->reply_topic = xstrdup(reply);
    }
    if (!out->topic_space_ref &&
        ((dlq && strcmp(dlq, out->topic) == 0) || (reply && strcmp(reply, out->topic) == 0))) {
        mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize,
                     "the reply or dead-letter topic is the topic the mapping reads: that would "
                     "loop; pick another topic");
        goto fail;
    }
    if (from) {
        if (strcmp(from, "beginning") == 0 || strcmp(from, "start") == 0) {
            out->start_at_beginning = true;
        } else if (strcmp(from, "end") != 0) {
            mapping_fail(code, SKIFF_E_INVALID_VALUE, err, errsize,
                         "'from' must be 'end' (new events only, the default) or 'beginning'");
            goto fail;
        }
    }
    return 0;

fail:
    mapping_spec_free(out);
    return TRIGGER_EINVAL;
}

json_t *mapping_spec_to_json(const struct mapping_spec *s)
{
    static const char *const trigger_names[] = {"topic", "schedule", "app_event"};
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(s->id));
    json_object_set_new(o, "app", json_string(s->app));
    if (s->space)
        json_object_set_new(o, "space_guid", json_string(s->space));
    if (s->topic_space)
        json_object_set_new(o, "topic_space_guid", json_string(s->topic_space));
    if (s->granted_by)
        json_object_set_new(o, "granted_by_guid", json_string(s->granted_by));
    json_object_set_new(o, "process", json_string(s->process));
    json_object_set_new(o, "trigger", json_string(trigger_names[s->trigger]));
    if (s->topic_space_ref)
        json_object_set_new(o, "topic", json_sprintf("%s/%s", s->topic_space_ref, s->topic));
    else
        json_object_set_new(o, "topic", json_string(s->topic));
    if (s->trigger == MAPPING_SCHEDULE)
        json_object_set_new(o, "schedule", json_string(s->schedule));
    if (s->trigger == MAPPING_APP_EVENT) {
        char *ev = xasprintf("%s:%s", s->event_app ? s->event_app : "*", s->event_name);
        json_object_set_new(o, "on_app_event", json_string(ev));
        free(ev);
    }
    json_t *filters = json_array();
    /* The subject filter of an app event comes from on_app_event: not repeated here. */
    size_t n = s->filter_count - (s->trigger == MAPPING_APP_EVENT && s->event_app ? 1 : 0);
    for (size_t i = 0; i < n; i++) {
        char *f = xasprintf("%s%s=%s", s->filters[i].attr, s->filters[i].prefix ? "^" : "",
                            s->filters[i].value);
        json_array_append_new(filters, json_string(f));
        free(f);
    }
    json_object_set_new(o, "filters", filters);
    json_object_set_new(o, "retries", json_integer(s->policy.retries));
    json_object_set_new(o, "backoff_ms", json_integer(s->policy.backoff_ms));
    json_object_set_new(o, "backoff_cap_ms", json_integer(s->policy.backoff_cap_ms));
    json_object_set_new(o, "max_age_ms", json_integer(s->policy.max_age_ms));
    json_object_set_new(o, "concurrency", json_integer(s->policy.concurrency));
    json_object_set_new(o, "ordered", json_boolean(s->policy.ordered));
    json_object_set_new(o, "dead_letter_topic",
                        s->dead_letter_topic ? json_string(s->dead_letter_topic) : json_null());
    json_object_set_new(o, "reply_topic",
                        s->reply_topic ? json_string(s->reply_topic) : json_null());
    json_object_set_new(o, "max_instances", json_integer(s->max_instances));
    json_object_set_new(o, "max_instances_given", json_boolean(s->max_given));
    json_object_set_new(o, "idle_grace_ms", json_integer(s->idle_grace_ms));
    json_object_set_new(o, "from", json_string(s->start_at_beginning ? "beginning" : "end"));
    json_object_set_new(o, "created_at", json_integer(s->created_at));
    return o;
}

char *mapping_app_ref(const struct mapping_spec *s)
{
    return xasprintf("%s/%s", s->space ? s->space : SKIFF_DEFAULT_SPACE_GUID, s->app);
}

void mapping_spec_free(struct mapping_spec *s)
{
    free(s->space);
    free(s->topic_space);
    free(s->topic_space_ref);
    free(s->granted_by);
    free(s->app);
    free(s->process);
    free(s->topic);
    free(s->schedule);
    free(s->event_app);
    free(s->event_name);
    free(s->dead_letter_topic);
    free(s->reply_topic);
    for (size_t i = 0; i < s->filter_count; i++)
        event_filter_free(&s->filters[i]);
    memset(s, 0, sizeof(*s));
}
