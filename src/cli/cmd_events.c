/* cmd_events: the `skiff` commands for events and functions (emit, topics, tail, map-event,
 * unmap-event, event-mappings, replay, invoke). Add a row to cli_events_commands for each, with
 * its handler in this file; the table must end with the NULL row. See cli.h for the helpers. */
#include "cli/cli.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/manifest.h"
#include "common/buf.h"
#include "common/util.h"

/* ---- publishing: emit, topics, tail ------------------------------------------------------- */

/* Reads all of stdin (for `skiff emit TOPIC -`). */
static int events_read_stdin(struct buf *out)
{
    char chunk[65536];
    for (;;) {
        ssize_t n = read(0, chunk, sizeof(chunk));
        if (n < 0)
            return cli_error("cannot read the event data from standard input");
        if (n == 0)
            return 0;
        buf_append(out, chunk, (size_t)n);
    }
}

/* What `skiff emit` and `skiff invoke` send: the data and, in CloudEvents binary mode, the
 * ce-* headers. Free with events_payload_free in every case. */
struct events_payload {
    struct buf data;
    const char *content_type; /* the user's, or guessed from the data; NULL when empty */
    char id[37];              /* a generated event id */
    char *headers[8];         /* "ce-...: ..." lines, ended by NULL */
    int nheaders;
};

/* Takes DATA from args->items[1] ('-' reads standard input); without --content-type, data
 * that parses as JSON is sent as application/json, anything else as text. */
static int events_payload_read(struct events_payload *p, const struct cli_args *args,
                               const char *content_type)
{
    if (args->count == 2 && !strcmp(args->items[1], "-")) {
        int rc = events_read_stdin(&p->data);
        if (rc != 0)
            return rc;
    } else if (args->count == 2) {
        buf_puts(&p->data, args->items[1]);
    }
    p->content_type = content_type;
    if (!content_type && p->data.len) {
        json_t *probe = json_loadb(p->data.data, p->data.len, JSON_DECODE_ANY, NULL);
        p->content_type = probe ? "application/json" : "text/plain; charset=utf-8";
        json_decref(probe);
    }
    return 0;
}

/* Switches to binary mode with these attributes; a NULL id is generated, a NULL source is the
 * CLI's. */
static void events_payload_binary(struct events_payload *p, const char *id, const char *type,
                                  const char *source, const char *subject)
{
    if (!id) {
        uuid_generate_v4(p->id);
        id = p->id;
    }
    p->headers[p->nheaders++] = xasprintf("ce-specversion: 1.0");
    p->headers[p->nheaders++] = xasprintf("ce-id: %s", id);
    p->headers[p->nheaders++] = xasprintf("ce-type: %s", type);
    p->headers[p->nheaders++] = xasprintf("ce-source: %s", source ? source : "/skiff/cli");
    if (subject)
        p->headers[p->nheaders++] = xasprintf("ce-subject: %s", subject);
}

/* POSTs the payload to path; the answer is in *res (see cli_http). */
static int events_payload_post(const struct events_payload *p, const char *path, long timeout_s,
                               struct cli_response *res)
{
    struct cli_request req = {
        .method = "POST",
        .path = path,
        .body = p->data.data ? p->data.data : "",
        .body_len = p->data.len,
        .content_type = p->content_type,
        .headers = (const char *const *)p->headers,
        .timeout_s = timeout_s,
    };
    return cli_http(&req, res);
}

static void events_payload_free(struct events_payload *p)
{
    for (int i = 0; i < p->nheaders; i++)
        free(p->headers[i]);
    buf_free(&p->data);
}

static int cmd_emit(const struct cli_command *cmd, int argc, char **argv)
{
    const char *type = NULL, *source = NULL, *subject = NULL, *content_type = NULL, *id = NULL;
    struct cli_option opts[] = {
        {"type", 't', CLI_OPT_STRING, &type},
        {"source", 's', CLI_OPT_STRING, &source},
        {"subject", 0, CLI_OPT_STRING, &subject},
        {"id", 0, CLI_OPT_STRING, &id},
        {"content-type", 'c', CLI_OPT_STRING, &content_type},
        {NULL, 0, 0, NULL},
    };
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *topic = args.items[0];
    struct events_payload payload = {0};
    char *path_topic = NULL, *path = NULL;
    struct cli_response res = {0};
    if ((rc = events_payload_read(&payload, &args, content_type)) != 0)
        goto done;
    /* Binary mode with the attributes the user gave; the API wraps a bare body itself. */
    if (type || source || subject || id)
        events_payload_binary(&payload, id, type ? type : "skiff.event", source, subject);
    path_topic = cli_escape(topic);
    path = xasprintf("/v1/topics/%s/events", path_topic);
    rc = events_payload_post(&payload, path, 60, &res);
    if (rc == 0) {
        if (cli_json_output)
            cli_print_json(res.json);
        else
            printf("published %s to %s at offset %lld\n", cli_json_str(res.json, "id"), topic,
                   cli_json_int(res.json, "offset"));
    }
done:
    cli_response_free(&res);
    free(path);
    free(path_topic);
    events_payload_free(&payload);
    return rc;
}

static int cmd_topics(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_option opts[] = {{NULL, 0, 0, NULL}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 0, 0);
    if (rc != CLI_CONTINUE)
        return rc;
    json_t *out = NULL;
    if ((rc = cli_api("GET", "/v1/topics", NULL, &out)) != 0)
        return rc;
    if (cli_json_printed(out))
        return 0;
    json_t *topics = json_object_get(out, "topics");
    if (json_array_size(topics) == 0) {
        printf("no topics yet: publish with `skiff emit TOPIC DATA`\n");
        json_decref(out);
        return 0;
    }
    static const char *const headers[] = {"name", "events", "bytes", "offsets", "last event", NULL};
    struct cli_table *t = cli_table_new(headers);
    size_t i;
    json_t *tp;
    json_array_foreach(topics, i, tp)
    {
        char events[32], bytes[32], offsets[64];
        snprintf(events, sizeof(events), "%lld", cli_json_int(tp, "events"));
        snprintf(bytes, sizeof(bytes), "%lld", cli_json_int(tp, "bytes"));
        if (cli_json_int(tp, "events") > 0)
            snprintf(offsets, sizeof(offsets), "%lld-%lld", cli_json_int(tp, "first_offset"),
                     cli_json_int(tp, "last_offset"));
        else
            snprintf(offsets, sizeof(offsets), "-");
        cli_table_add(t, cli_json_str(tp, "name"), events, bytes, offsets,
                      cli_json_str(tp, "last_event_at"));
    }
    cli_table_print(t);
    json_decref(out);
    return 0;
}

/* One ndjson line of a tail: printed as "OFFSET TIME TYPE [SUBJECT] DATA". */
static int tail_line(const char *line, size_t len, void *arg)
{
    if (cli_json_output) {
        fwrite(line, 1, len, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        return 0;
    }
    json_t *ev = json_loadb(line, len, 0, NULL);
    if (!ev)
        return 0;
    json_t *data = json_object_get(ev, "data");
    char *data_text = NULL;
    if (json_is_string(data))
        data_text = xstrdup(json_string_value(data));
    else if (data)
        data_text = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
    else if (json_object_get(ev, "data_base64"))
        data_text = xasprintf("(base64) %s", cli_json_str(ev, "data_base64"));
    const char *subject = cli_json_str(ev, "subject");
    printf("#%lld %s %s%s%s %s\n", cli_json_int(ev, "offset"), cli_json_str(ev, "time"),
           cli_json_str(ev, "type"), *subject ? " " : "", subject, data_text ? data_text : "");
    fflush(stdout);
    free(data_text);
    json_decref(ev);
    return 0;
}

static int cmd_tail(const struct cli_command *cmd, int argc, char **argv)
{
    const char *from = NULL;
    bool no_follow = false;
    long limit = -1;
    struct cli_option opts[] = {
        {"from", 'f', CLI_OPT_STRING, &from},
        {"no-follow", 0, CLI_OPT_FLAG, &no_follow},
        {"limit", 'n', CLI_OPT_INT, &limit},
        {NULL, 0, 0, NULL},
    };
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    char *topic = cli_escape(args.items[0]);
    struct buf path = {0};
    buf_printf(&path, "/v1/topics/%s/events?follow=%d", topic, no_follow ? 0 : 1);
    if (from) {
        char *f = cli_escape(from);
        buf_printf(&path, "&from=%s", f);
        free(f);
    }
    if (limit >= 0)
        buf_printf(&path, "&limit=%ld", limit);
    struct cli_request req = {
        .method = "GET",
        .path = path.data,
        .on_line = tail_line,
        .timeout_s = 0,
    };
    struct cli_response res = {0};
    rc = cli_http(&req, &res);
    cli_response_free(&res);
    buf_free(&path);
    free(topic);
    return rc;
}

/* ---- mappings and functions: map-event, unmap-event, event-mappings, replay, invoke -------- */

/* Mappings of app (all apps when NULL), as a new reference to the API's array. */
/* APP or APP/FUNC (a function inside an app): the app's name (caller frees) and in *process
 * the function's name, or NULL for APP alone. */
static char *events_split_target(const char *ref, const char **process)
{
    const char *slash = strchr(ref, '/');
    *process = slash ? slash + 1 : NULL;
    return slash ? xstrndup(ref, (size_t)(slash - ref)) : xstrdup(ref);
}

/* The mappings of APP (any of its processes) or of APP/FUNC (that function's only), or all. */
static int mappings_fetch(const char *target, json_t **out)
{
    char *path;
    const char *process = NULL;
    char *app = target ? events_split_target(target, &process) : NULL;
    if (app) {
        char *e = cli_escape(app);
        path = xasprintf("/v1/event-mappings?app=%s", e);
        free(e);
    } else {
        path = xstrdup("/v1/event-mappings");
    }
    free(app);
    json_t *res = NULL;
    int rc = cli_api("GET", path, NULL, &res);
    free(path);
    if (rc != 0)
        return rc;
    json_t *all = json_object_get(res, "event_mappings");
    *out = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(all, i, m)
    {
        if (!process || !strcmp(cli_json_str(m, "process"), process))
            json_array_append(*out, m);
    }
    json_decref(res);
    return 0;
}

/* Who a mapping invokes, as the user names it: APP, or APP/FUNC for a process other than web. */
static char *mapping_target_text(const json_t *m)
{
    const char *process = cli_json_str(m, "process");
    return *process && strcmp(process, "web") ? xasprintf("%s/%s", cli_json_str(m, "app"), process)
                                              : xstrdup(cli_json_str(m, "app"));
}

/* "topic uploads", "schedule 0 3 * * *" or "app event shop:crashed". */
static char *mapping_trigger_text(const json_t *m)
{
    const char *trigger = cli_json_str(m, "trigger");
    if (!strcmp(trigger, "schedule") && *cli_json_str(m, "next_fire"))
        return xasprintf("schedule %s (next %.16sZ)", cli_json_str(m, "schedule"),
                         cli_json_str(m, "next_fire"));
    if (!strcmp(trigger, "schedule"))
        return xasprintf("schedule %s", cli_json_str(m, "schedule"));
    if (!strcmp(trigger, "app_event"))
        return xasprintf("app event %s", cli_json_str(m, "on_app_event"));
    return xasprintf("topic %s", cli_json_str(m, "topic"));
}

/* Does mapping m match what the user named: a topic, a schedule or an app event (or any)? */
static bool mapping_matches(const json_t *m, const char *topic, bool schedule,
                            const char *app_event, const char *id)
{
    if (id)
        return !strncmp(cli_json_str(m, "id"), id, strlen(id));
    if (schedule)
        return !strcmp(cli_json_str(m, "trigger"), "schedule");
    if (app_event) {
        const char *have = cli_json_str(m, "on_app_event");
        return !strcmp(have, app_event) ||
               (!strchr(app_event, ':') && !strncmp(have, "*:", 2) && !strcmp(have + 2, app_event));
    }
    return topic && !strcmp(cli_json_str(m, "trigger"), "topic") &&
           !strcmp(cli_json_str(m, "topic"), topic);
}

static int cmd_map_event(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_list filters = {.count = 0};
    const char *schedule = NULL, *app_event = NULL, *reply = NULL, *dlq = NULL, *max_age = NULL;
    const char *idle_grace = NULL, *process = NULL, *from = NULL;
    long retries = -1, backoff = -1, backoff_cap = -1, concurrency = -1, max_instances = -1;
    bool ordered = false;
    struct cli_option opts[] = {
        {"filter", 'f', CLI_OPT_LIST, &filters},
        {"schedule", 0, CLI_OPT_STRING, &schedule},
        {"on-app-event", 0, CLI_OPT_STRING, &app_event},
        {"reply-topic", 0, CLI_OPT_STRING, &reply},
        {"dead-letter", 0, CLI_OPT_STRING, &dlq},
        {"retries", 0, CLI_OPT_INT, &retries},
        {"backoff", 0, CLI_OPT_INT, &backoff},
        {"backoff-cap", 0, CLI_OPT_INT, &backoff_cap},
        {"max-age", 0, CLI_OPT_STRING, &max_age},
        {"concurrency", 'c', CLI_OPT_INT, &concurrency},
        {"ordered", 0, CLI_OPT_FLAG, &ordered},
        {"max-instances", 0, CLI_OPT_INT, &max_instances},
        {"idle-grace", 0, CLI_OPT_STRING, &idle_grace},
        {"process", 'p', CLI_OPT_STRING, &process},
        {"from", 0, CLI_OPT_STRING, &from},
        {NULL, 0, 0, NULL},
    };
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *topic = args.count == 2 ? args.items[1] : NULL;
    int triggers = (topic != NULL) + (schedule != NULL) + (app_event != NULL);
    if (triggers != 1)
        return cli_usage_error(cmd, "give exactly one trigger: a TOPIC, --schedule CRON or "
                                    "--on-app-event APP:EVENT");
    const char *function = NULL;
    char *app = events_split_target(args.items[0], &function);
    if (function && process && strcmp(function, process)) {
        free(app);
        return cli_usage_error(cmd, "name the function once: %s or --process %s", args.items[0],
                               process);
    }
    json_t *body = json_pack("{s:s}", "app", app);
    free(app);
    if (function)
        process = function;
    if (topic)
        json_object_set_new(body, "topic", json_string(topic));
    if (schedule)
        json_object_set_new(body, "schedule", json_string(schedule));
    if (app_event)
        json_object_set_new(body, "on_app_event", json_string(app_event));
    if (filters.count) {
        json_t *list = json_array();
        for (int i = 0; i < filters.count; i++)
            json_array_append_new(list, json_string(filters.items[i]));
        json_object_set_new(body, "filters", list);
    }
    if (reply)
        json_object_set_new(body, "reply_topic", json_string(reply));
    if (dlq)
        json_object_set_new(body, "dead_letter_topic", json_string(dlq));
    if (max_age)
        json_object_set_new(body, "max_age", json_string(max_age));
    if (idle_grace)
        json_object_set_new(body, "idle_grace", json_string(idle_grace));
    if (process)
        json_object_set_new(body, "process", json_string(process));
    if (from)
        json_object_set_new(body, "from", json_string(from));
    if (ordered)
        json_object_set_new(body, "ordered", json_true());
    const struct {
        const char *key;
        long value;
    } ints[] = {{"retries", retries},
                {"backoff_ms", backoff},
                {"backoff_cap_ms", backoff_cap},
                {"concurrency", concurrency},
                {"max_instances", max_instances}};
    for (size_t i = 0; i < ARRAY_SIZE(ints); i++)
        if (ints[i].value >= 0)
            json_object_set_new(body, ints[i].key, json_integer(ints[i].value));
    json_t *out = NULL;
    rc = cli_api("POST", "/v1/event-mappings", body, &out);
    json_decref(body);
    if (rc != 0)
        return rc;
    if (cli_json_output) {
        cli_print_json(out);
    } else {
        char *what = mapping_trigger_text(out);
        printf("mapped %s to %s (mapping %s)\n", what, args.items[0], cli_json_str(out, "id"));
        free(what);
    }
    json_decref(out);
    return 0;
}

static int cmd_unmap_event(const struct cli_command *cmd, int argc, char **argv)
{
    const char *app_event = NULL, *id = NULL;
    bool schedule = false, all = false;
    struct cli_option opts[] = {
        {"schedule", 0, CLI_OPT_FLAG, &schedule},
        {"on-app-event", 0, CLI_OPT_STRING, &app_event},
        {"id", 0, CLI_OPT_STRING, &id},
        {"all", 0, CLI_OPT_FLAG, &all},
        {NULL, 0, 0, NULL},
    };
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *app = args.items[0];
    const char *topic = args.count == 2 ? args.items[1] : NULL;
    if (!topic && !schedule && !app_event && !id && !all)
        return cli_usage_error(cmd, "say which mapping: a TOPIC, --schedule, --on-app-event "
                                    "APP:EVENT, --id ID, or --all");
    json_t *list;
    if ((rc = mappings_fetch(app, &list)) != 0)
        return rc;
    int removed = 0;
    size_t i;
    json_t *m;
    json_array_foreach(list, i, m)
    {
        if (!all && !mapping_matches(m, topic, schedule, app_event, id))
            continue;
        char *path = xasprintf("/v1/event-mappings/%s", cli_json_str(m, "id"));
        rc = cli_api("DELETE", path, NULL, NULL);
        free(path);
        if (rc != 0)
            break;
        char *what = mapping_trigger_text(m);
        printf("unmapped %s from %s (mapping %s)\n", what, app, cli_json_str(m, "id"));
        free(what);
        removed++;
    }
    json_decref(list);
    if (rc == 0 && removed == 0)
        return cli_error("%s has no such event mapping: see skiff event-mappings %s", app, app);
    return rc;
}

static int cmd_event_mappings(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_option opts[] = {{NULL, 0, 0, NULL}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 0, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    json_t *list;
    if ((rc = mappings_fetch(args.count ? args.items[0] : NULL, &list)) != 0)
        return rc;
    if (cli_json_output) {
        json_t *o = json_pack("{s:O}", "event_mappings", list);
        cli_print_json(o);
        json_decref(o);
        json_decref(list);
        return 0;
    }
    if (json_array_size(list) == 0) {
        printf("no event mappings: add one with `skiff map-event APP TOPIC`\n");
        json_decref(list);
        return 0;
    }
    static const char *const headers[] = {
        "id",        "app",     "trigger",       "filters", "backlog",   "in-flight",
        "delivered", "retried", "dead-lettered", "failed",  "instances", NULL};
    struct cli_table *t = cli_table_new(headers);
    size_t i;
    json_t *m;
    json_array_foreach(list, i, m)
    {
        char *what = mapping_trigger_text(m);
        struct buf f = {0};
        size_t k;
        json_t *fv;
        json_array_foreach(json_object_get(m, "filters"), k, fv)
            buf_printf(&f, "%s%s", k ? " " : "", json_string_value(fv));
        char id[9], n[7][24];
        snprintf(id, sizeof(id), "%s", cli_json_str(m, "id"));
        const char *keys[] = {"backlog",       "in_flight", "delivered", "retried",
                              "dead_lettered", "failed",    "instances"};
        for (int j = 0; j < 7; j++)
            snprintf(n[j], sizeof(n[j]), "%lld", cli_json_int(m, keys[j]));
        char *target = mapping_target_text(m);
        cli_table_add(t, id, target, what, f.len ? f.data : "-", n[0], n[1], n[2], n[3], n[4], n[5],
                      n[6]);
        free(target);
        buf_free(&f);
        free(what);
    }
    cli_table_print(t);
    /* What went wrong, under the table, so the table stays readable. */
    json_array_foreach(list, i, m)
    {
        const char *err = cli_json_str(m, "last_error");
        json_t *failures = json_object_get(m, "failures");
        if (!*err && json_array_size(failures) == 0)
            continue;
        char *target = mapping_target_text(m);
        printf("\nmapping %.8s (%s):\n", cli_json_str(m, "id"), target);
        free(target);
        if (*err)
            printf("  last error: %s\n", err);
        size_t k;
        json_t *fv;
        json_array_foreach(failures, k, fv)
        {
            bool dead = !strcmp(cli_json_str(fv, "outcome"), "dead_lettered");
            printf("  %s%s: event %s (offset %lld) at %s: %s\n",
                   dead ? "dead-lettered to " : "failed",
                   dead ? cli_json_str(fv, "dead_letter_topic") : "", cli_json_str(fv, "id"),
                   cli_json_int(fv, "offset"), cli_json_str(fv, "at"), cli_json_str(fv, "reason"));
        }
    }
    json_decref(list);
    return 0;
}

static int cmd_replay(const struct cli_command *cmd, int argc, char **argv)
{
    const char *since = NULL, *id = NULL, *app_event = NULL;
    bool schedule = false;
    struct cli_option opts[] = {
        {"since", 's', CLI_OPT_STRING, &since},
        {"id", 0, CLI_OPT_STRING, &id},
        {"schedule", 0, CLI_OPT_FLAG, &schedule},
        {"on-app-event", 0, CLI_OPT_STRING, &app_event},
        {NULL, 0, 0, NULL},
    };
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    if (!since)
        return cli_usage_error(cmd, "--since is required: a duration ago (1h), an RFC 3339 "
                                    "time or an offset");
    const char *app = args.items[0];
    const char *topic = args.count == 2 ? args.items[1] : NULL;
    if (!topic && !id && !schedule && !app_event)
        return cli_usage_error(cmd, "say which mapping: a TOPIC, --id ID, --schedule or "
                                    "--on-app-event APP:EVENT");
    json_t *list;
    if ((rc = mappings_fetch(app, &list)) != 0)
        return rc;
    int done = 0;
    size_t i;
    json_t *m;
    json_array_foreach(list, i, m)
    {
        if (!mapping_matches(m, topic, schedule, app_event, id))
            continue;
        char *path = xasprintf("/v1/event-mappings/%s/replay", cli_json_str(m, "id"));
        json_t *body = json_pack("{s:s}", "since", since);
        json_t *out = NULL;
        rc = cli_api("POST", path, body, &out);
        json_decref(body);
        free(path);
        if (rc != 0)
            break;
        if (cli_json_output)
            cli_print_json(out);
        else
            printf("%s %lld events of %s to %s from offset %lld\n",
                   !strcmp(cli_json_str(out, "replayed_by"), "the leader")
                       ? "the leading skiffd replays (within a second)"
                       : "replaying",
                   cli_json_int(out, "events"), cli_json_str(out, "topic"), app,
                   cli_json_int(out, "from_offset"));
        json_decref(out);
        done++;
    }
    json_decref(list);
    if (rc == 0 && done == 0)
        return cli_error("%s has no such event mapping: see skiff event-mappings %s", app, app);
    return rc;
}

static int cmd_invoke(const struct cli_command *cmd, int argc, char **argv)
{
    const char *type = NULL, *source = NULL, *subject = NULL, *content_type = NULL;
    const char *process = NULL;
    struct cli_option opts[] = {
        {"type", 't', CLI_OPT_STRING, &type},
        {"source", 's', CLI_OPT_STRING, &source},
        {"subject", 0, CLI_OPT_STRING, &subject},
        {"content-type", 'c', CLI_OPT_STRING, &content_type},
        {"process", 'p', CLI_OPT_STRING, &process},
        {NULL, 0, 0, NULL},
    };
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    struct events_payload payload = {0};
    char *app = NULL, *path = NULL;
    struct cli_response res = {0};
    if ((rc = events_payload_read(&payload, &args, content_type)) != 0)
        goto done;
    if (type || source || subject)
        events_payload_binary(&payload, NULL, type ? type : "skiff.invoke", source, subject);
    const char *function = NULL;
    char *name = events_split_target(args.items[0], &function);
    app = cli_escape(name);
    free(name);
    if (function)
        process = function;
    char *process_q = process ? cli_escape(process) : NULL;
    path = process ? xasprintf("/v1/apps/%s/invoke?process=%s", app, process_q)
                   : xasprintf("/v1/apps/%s/invoke", app);
    free(process_q);
    rc = events_payload_post(&payload, path, 130, &res);
    if (rc == 0 && res.body && res.body_len) {
        fwrite(res.body, 1, res.body_len, stdout);
        if (res.body[res.body_len - 1] != '\n')
            fputc('\n', stdout);
    }
done:
    cli_response_free(&res);
    free(path);
    free(app);
    events_payload_free(&payload);
    return rc;
}

/* ---- functions inside apps ------------------------------------------------------------ */

/* /v1/apps/APP/functions/NAME, escaped (caller frees). */
static char *function_path(const char *app, const char *name)
{
    char *a = cli_escape(app), *n = cli_escape(name);
    char *path = xasprintf("/v1/apps/%s/functions/%s", a, n);
    free(a);
    free(n);
    return path;
}

static int cmd_create_function(const struct cli_command *cmd, int argc, char **argv)
{
    const char *handler = NULL, *memory = NULL;
    long max_instances = -1, min_instances = -1;
    struct cli_option opts[] = {
        {"handler", 0, CLI_OPT_STRING, &handler},
        {"max-instances", 0, CLI_OPT_INT, &max_instances},
        {"min-instances", 0, CLI_OPT_INT, &min_instances},
        {"memory", 'm', CLI_OPT_STRING, &memory},
        {NULL, 0, 0, NULL},
    };
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 2, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    if (!handler)
        return cli_usage_error(cmd, "--handler FILE:FUNCTION is required, like "
                                    "--handler shop/images.py:resize");
    json_t *body = json_pack("{s:s}", "handler", handler);
    if (max_instances >= 0)
        json_object_set_new(body, "max_instances", json_integer(max_instances));
    if (min_instances >= 0)
        json_object_set_new(body, "min_instances", json_integer(min_instances));
    long mb = 0;
    if (memory && manifest_parse_megabytes(memory, &mb)) {
        json_decref(body);
        return cli_usage_error(cmd, "-m needs a size like 256M or 1G, not \"%s\"", memory);
    }
    if (memory)
        json_object_set_new(body, "memory_mb", json_integer(mb));
    char *path = function_path(args.items[0], args.items[1]);
    json_t *out = NULL;
    rc = cli_api("PUT", path, body, &out);
    free(path);
    json_decref(body);
    if (rc != 0)
        return rc;
    if (!cli_json_printed(out)) {
        printf("Function %s/%s runs %s (%s) from the droplet of %s, scaled from zero up to %lld "
               "instances.\n",
               args.items[0], args.items[1], cli_json_str(out, "handler"),
               cli_json_str(out, "runtime"), args.items[0], cli_json_int(out, "max_instances"));
        printf("Call it with `skiff invoke %s/%s DATA`, or map events to it with "
               "`skiff map-event %s/%s TOPIC`.\n",
               args.items[0], args.items[1], args.items[0], args.items[1]);
        json_decref(out);
    }
    return 0;
}

static int cmd_delete_function(const struct cli_command *cmd, int argc, char **argv)
{
    bool force = false;
    struct cli_option opts[] = {{"force", 'f', CLI_OPT_FLAG, &force}, {NULL, 0, 0, NULL}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 2, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    char *what = xasprintf("%s/%s", args.items[0], args.items[1]);
    char *question = xasprintf("Really delete the function %s and its event mappings?", what);
    rc = cli_confirm(cmd, force, what, question);
    free(question);
    if (rc != CLI_CONTINUE) {
        free(what);
        return rc;
    }
    char *path = function_path(args.items[0], args.items[1]);
    rc = cli_api("DELETE", path, NULL, NULL);
    free(path);
    if (rc == 0)
        printf("Deleted the function %s and its event mappings.\n", what);
    free(what);
    return rc;
}

static const char create_function_help[] =
    "  Pulls a function out of a running app: the function FUNCTION in FILE of the app's own\n"
    "  code runs as its own process type from the app's droplet, with its own instances\n"
    "  (from zero, scaled with its events and invokes), logs ([APP/FUNC/NAME/n]) and event\n"
    "  mappings. The app's web process is left as it is. Again with another handler: changes it.\n"
    "  --handler FILE:FUNCTION  a .py, .js or .sh file inside the app, and its function\n"
    "  --max-instances N        the most instances it scales to (default 10)\n"
    "  --min-instances N        the fewest it scales down to when idle (default 0)\n"
    "  -m, --memory MEM         memory per instance (default: the app's)\n"
    "  example: skiff create-function shop resize --handler shop/images.py:resize";

static const char map_event_help[] =
    "  Invokes APP for each event of TOPIC, on a schedule, or on platform events. TOPIC is\n"
    "  a topic of the target space, or ORG/SPACE/NAME for another space's where your roles\n"
    "  allow reading its events.\n"
    "  -f, --filter K=V         only events whose attribute K is V (K^=V: starts with V);\n"
    "                           repeatable, on type, source, subject or an extension\n"
    "  --schedule CRON          5 cron fields (UTC), @hourly/@daily/..., or '@every 30s'\n"
    "  --on-app-event APP:EVENT staged, started, stopped, crashed or scaled (EVENT alone:\n"
    "                           any app)\n"
    "  --reply-topic T          publish the function's reply events to T\n"
    "  --dead-letter T          events that exhaust their retries go to T\n"
    "  --retries N              retries after the first attempt (default 10)\n"
    "  --backoff MS, --backoff-cap MS  first retry delay (200) doubling up to the cap (60000)\n"
    "  --max-age DUR            do not retry events older than DUR (default 24h)\n"
    "  -c, --concurrency N      events in flight per instance (default 1)\n"
    "  --ordered                one event at a time per subject, in order\n"
    "  --max-instances N        scale up to N instances with the backlog (default 10; above\n"
    "                           the function's autoscale max: refused, raise it first with\n"
    "                           skiff autoscale FN --max N)\n"
    "  --idle-grace DUR         scale a function to zero after DUR idle (default 60s)\n"
    "  -p, --process P          the process type to invoke (default web); APP/FUNC names a\n"
    "                           function inside an app the same way\n"
    "  --from beginning         also deliver the events already in the topic\n"
    "  examples: skiff map-event resize uploads --filter type=image.uploaded\n"
    "            skiff map-event nightly --schedule '0 3 * * *'\n"
    "            skiff map-event notify --on-app-event shop:crashed\n"
    "            skiff map-event shop/resize uploads   (a function inside the app shop)";

static const char unmap_event_help[] =
    "  Removes APP's mappings of TOPIC (or: --schedule, --on-app-event APP:EVENT, --id ID\n"
    "  (a prefix is enough), --all). APP/FUNC: only those of a function inside APP. Events\n"
    "  stay in the topic.";

static const char replay_help[] =
    "  Delivers past events again: moves the mapping's cursor back.\n"
    "  -s, --since X   a duration ago (90s, 1h, 2d), an RFC 3339 time, or an offset\n"
    "  Pick the mapping by TOPIC, --id ID, --schedule or --on-app-event APP:EVENT.";

static const char invoke_help[] =
    "  Calls APP once with DATA ('-' reads standard input) as a CloudEvent, starting an\n"
    "  instance if none runs, and prints the reply.\n"
    "  -t, --type T, -s, --source S, --subject S   the event's attributes\n"
    "  -p, --process P   the process type to call (default web)\n"
    "  APP/FUNC calls a function inside an app: skiff invoke shop/resize '{\"id\": 7}'";

static const char emit_help[] =
    "  DATA is the event's data (JSON is sent as application/json); '-' reads standard input.\n"
    "  With --type, --source, --subject or --id the event is sent in CloudEvents binary mode;\n"
    "  without them the platform wraps it (generated id, type skiff.event).\n"
    "  -c, --content-type T   the data's media type\n"
    "  example: skiff emit uploads --type image.uploaded --subject cat.png '{\"size\": 42}'";

static const char tail_help[] =
    "  --from       where to start: end (default), start, an offset, an RFC 3339 time or\n"
    "               a duration ago such as 10m\n"
    "  --no-follow  stop at the last event instead of waiting for more\n"
    "  -n, --limit  stop after N events\n"
    "  --json       print each event as its CloudEvents JSON";

const struct cli_command cli_events_commands[] = {
    /* publishing and watching */
    {"emit", "emit TOPIC [--type T] [--source S] [--subject S] [--id ID] [DATA|-]",
     "Publish an event to a topic", emit_help, cmd_emit},
    {"topics", "topics", "List topics with their event counts", NULL, cmd_topics},
    {"tail", "tail TOPIC [--from start|end|OFFSET|TIME|10m] [--no-follow] [-n N]",
     "Print a topic's events, and follow new ones as they are published", tail_help, cmd_tail},
    /* mappings and functions */
    {"map-event",
     "map-event APP[/FUNC] [TOPIC] [--filter K=V|K^=P] [--schedule CRON] [--on-app-event "
     "APP:EVENT] "
     "[--reply-topic T] [--dead-letter T] [--retries N] [...]",
     "Invoke an app or function when events arrive", map_event_help, cmd_map_event},
    {"unmap-event",
     "unmap-event APP[/FUNC] [TOPIC] [--schedule] [--on-app-event APP:EVENT] [--id ID] [--all]",
     "Remove an event mapping", unmap_event_help, cmd_unmap_event},
    {"event-mappings", "event-mappings [APP[/FUNC]]",
     "List event mappings with backlog, in flight, delivered, retried, dead-lettered "
     "and failed counts",
     NULL, cmd_event_mappings},
    {"replay", "replay APP[/FUNC] [TOPIC] --since 1h|TIME|OFFSET [--id ID]",
     "Deliver a mapping's past events again", replay_help, cmd_replay},
    {"create-function",
     "create-function APP NAME --handler FILE:FUNCTION [--max-instances N] [--min-instances N] "
     "[-m MEM]",
     "Run a function of an app's own code as its own, independently scaled process",
     create_function_help, cmd_create_function},
    {"delete-function", "delete-function APP NAME [-f]",
     "Remove a function from an app, with its event mappings", NULL, cmd_delete_function},
    {"invoke", "invoke APP[/FUNC] [DATA|-] [--type T] [--subject S]",
     "Call a function once and print its reply", invoke_help, cmd_invoke},
    {NULL, NULL, NULL, NULL, NULL},
};
