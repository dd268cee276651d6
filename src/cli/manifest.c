/* manifest: a Cloud Foundry style manifest.yml, read with libyaml (see manifest.h). */
#include "cli/manifest.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <strings.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "common/buf.h"
#include "common/util.h"

int manifest_parse_megabytes(const char *s, long *mb)
{
    char *end;
    if (!s || !isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || v <= 0)
        return -1;
    long long mult;
    if (strcasecmp(end, "") == 0 || strcasecmp(end, "M") == 0 || strcasecmp(end, "MB") == 0)
        mult = 1;
    else if (strcasecmp(end, "G") == 0 || strcasecmp(end, "GB") == 0)
        mult = 1024;
    else if (strcasecmp(end, "T") == 0 || strcasecmp(end, "TB") == 0)
        mult = 1024 * 1024;
    else
        return -1;
    if (v > (1LL << 40) / mult)
        return -1;
    *mb = (long)(v * mult);
    return 0;
}

/* ---- the parser: a libyaml document checked against the schema below ------------------- */

struct manifest_ctx {
    const char *name; /* file name, for messages */
    const char *dir;
    yaml_document_t *doc;
    char *err;
};

static int manifest_line(const yaml_node_t *n)
{
    return (int)n->start_mark.line + 1;
}

static int manifest_fail(struct manifest_ctx *c, const yaml_node_t *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int manifest_fail(struct manifest_ctx *c, const yaml_node_t *n, const char *fmt, ...)
{
    if (c->err)
        return MANIFEST_ERR_SCHEMA;
    struct buf b = {0};
    buf_printf(&b, "%s line %d: ", c->name, n ? manifest_line(n) : 1);
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&b, fmt, ap);
    va_end(ap);
    c->err = buf_steal(&b);
    return MANIFEST_ERR_SCHEMA;
}

static const char *manifest_kind(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_SCALAR_NODE:
        return "a single value";
    case YAML_SEQUENCE_NODE:
        return "a list";
    case YAML_MAPPING_NODE:
        return "a map of keys";
    default:
        return "empty";
    }
}

static const char *manifest_scalar(const yaml_node_t *n)
{
    return n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* A plain `~`, `null` or empty value in YAML means "nothing". */
static bool manifest_is_null(const yaml_node_t *n)
{
    const char *s = manifest_scalar(n);
    return s && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
           (!*s || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
            strcmp(s, "NULL") == 0);
}

static size_t manifest_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 40 || lb > 40)
        return 99;
    size_t d[41][41];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = d[i - 1][j - 1] +
                         (tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]));
            size_t del = d[i - 1][j] + 1, ins = d[i][j - 1] + 1;
            d[i][j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
    return d[la][lb];
}

/* The closest known key, when it is close enough to be what was meant. */
static const char *manifest_suggest(const char *key, const char *const *known)
{
    const char *best = NULL;
    size_t best_d = 99;
    for (const char *const *k = known; *k; k++) {
        size_t d = manifest_distance(key, *k);
        /* "memory_mb" for "memory", "health_check_type" for "health-check-type" */
        char alt[64];
        snprintf(alt, sizeof(alt), "%s", key);
        for (char *p = alt; *p; p++)
            if (*p == '_')
                *p = '-';
        if (strcasecmp(alt, *k) == 0 || (strlen(*k) > 3 && str_has_prefix(alt, *k)))
            d = 1;
        if (d < best_d) {
            best_d = d;
            best = *k;
        }
    }
    return best_d <= 2 + strlen(key) / 6 ? best : NULL;
}

/* Checks that n is a mapping whose keys are all known and distinct. */
static int manifest_check_keys(struct manifest_ctx *c, const yaml_node_t *n, const char *what,
                               const char *const *known)
{
    if (n->type != YAML_MAPPING_NODE)
        return manifest_fail(c, n, "%s must be a map of keys, not %s", what, manifest_kind(n));
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
        const char *key = manifest_scalar(k);
        if (!key)
            return manifest_fail(c, k, "a key in %s must be a name, not %s", what,
                                 manifest_kind(k));
        bool ok = false;
        for (const char *const *kk = known; *kk && !ok; kk++)
            ok = strcmp(key, *kk) == 0;
        if (!ok) {
            const char *hint = manifest_suggest(key, known);
            if (hint)
                return manifest_fail(c, k, "unknown key \"%s\" (did you mean \"%s\"?)", key, hint);
            struct buf list = {0};
            for (const char *const *kk = known; *kk; kk++)
                buf_printf(&list, "%s%s", kk == known ? "" : ", ", *kk);
            int rc = manifest_fail(c, k, "unknown key \"%s\" in %s (known keys: %s)", key, what,
                                   list.data);
            buf_free(&list);
            return rc;
        }
        for (yaml_node_pair_t *q = n->data.mapping.pairs.start; q < p; q++) {
            const char *other = manifest_scalar(yaml_document_get_node(c->doc, q->key));
            if (other && strcmp(other, key) == 0)
                return manifest_fail(c, k, "the key \"%s\" is given twice", key);
        }
    }
    return 0;
}

static int manifest_string(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                           char **out)
{
    const char *s = manifest_scalar(v);
    if (!s)
        return manifest_fail(c, v, "\"%s\" must be a single value, not %s", key, manifest_kind(v));
    free(*out);
    *out = xstrdup(s);
    return 0;
}

static int manifest_int(struct manifest_ctx *c, const char *key, const yaml_node_t *v, long min,
                        long *out)
{
    const char *s = manifest_scalar(v);
    char *end = NULL;
    long long x = 0;
    if (s && *s) {
        errno = 0;
        x = strtoll(s, &end, 10);
        if (errno)
            end = NULL;
    }
    if (!s || !end || *end || x < min || x > 1000000000)
        return manifest_fail(c, v, "\"%s\" must be a whole number of at least %ld, not %s%s%s", key,
                             min, s ? "\"" : "", s ? s : manifest_kind(v), s ? "\"" : "");
    *out = (long)x;
    return 0;
}

static int manifest_size(struct manifest_ctx *c, const char *key, const yaml_node_t *v, long *out)
{
    const char *s = manifest_scalar(v);
    if (!s || manifest_parse_megabytes(s, out) != 0)
        return manifest_fail(c, v, "\"%s\" must be a size like 256M or 1G, not %s%s%s", key,
                             s ? "\"" : "", s ? s : manifest_kind(v), s ? "\"" : "");
    return 0;
}

static int manifest_bool(struct manifest_ctx *c, const char *key, const yaml_node_t *v, bool *out)
{
    const char *s = manifest_scalar(v);
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On"};
    static const char *const no[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off"};
    for (size_t i = 0; s && i < ARRAY_SIZE(yes); i++) {
        if (strcmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return manifest_fail(c, v, "\"%s\" must be true or false, not %s%s%s", key, s ? "\"" : "",
                         s ? s : manifest_kind(v), s ? "\"" : "");
}

static int manifest_one_of(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                           const char *const *allowed, char **out)
{
    int rc = manifest_string(c, key, v, out);
    if (rc)
        return rc;
    for (const char *const *a = allowed; *a; a++)
        if (strcmp(*out, *a) == 0)
            return 0;
    struct buf list = {0};
    for (const char *const *a = allowed; *a; a++)
        buf_printf(&list, "%s%s", a == allowed ? "" : ", ", *a);
    rc = manifest_fail(c, v, "\"%s\" must be one of %s, not \"%s\"", key, list.data, *out);
    buf_free(&list);
    return rc;
}

/* A list of single values. */
static int manifest_string_list(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                                char ***items, size_t *count)
{
    if (v->type != YAML_SEQUENCE_NODE)
        return manifest_fail(c, v, "\"%s\" must be a list, not %s", key, manifest_kind(v));
    for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top;
         it++) {
        yaml_node_t *e = yaml_document_get_node(c->doc, *it);
        const char *s = manifest_scalar(e);
        if (!s || !*s)
            return manifest_fail(c, e, "each entry of \"%s\" must be a single value, not %s", key,
                                 manifest_kind(e));
        *items = xrealloc(*items, (*count + 1) * sizeof(char *));
        (*items)[(*count)++] = xstrdup(s);
    }
    return 0;
}

static int manifest_env(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                        struct manifest_kv **kv, size_t *count)
{
    if (v->type != YAML_MAPPING_NODE)
        return manifest_fail(c, v, "\"%s\" must be a map of NAME: value, not %s", key,
                             manifest_kind(v));
    for (yaml_node_pair_t *p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
        yaml_node_t *val = yaml_document_get_node(c->doc, p->value);
        const char *ks = manifest_scalar(k), *vs = manifest_scalar(val);
        if (!ks || !*ks)
            return manifest_fail(c, k, "a name in \"%s\" must be a single value", key);
        if (!vs)
            return manifest_fail(c, val, "the value of %s in \"%s\" must be a single value, not %s",
                                 ks, key, manifest_kind(val));
        *kv = xrealloc(*kv, (*count + 1) * sizeof(**kv));
        (*kv)[*count].key = xstrdup(ks);
        (*kv)[*count].value = xstrdup(manifest_is_null(val) ? "" : vs);
        (*count)++;
    }
    return 0;
}

#define MANIFEST_FOREACH_PAIR(c, node, key, val)                                                   \
    for (yaml_node_pair_t *pair_ = (node)->data.mapping.pairs.start;                               \
         pair_ < (node)->data.mapping.pairs.top &&                                                 \
         ((key) = manifest_scalar(yaml_document_get_node((c)->doc, pair_->key)),                   \
         (val) = yaml_document_get_node((c)->doc, pair_->value), 1);                               \
         pair_++)

static const char *const manifest_health_types[] = {"port", "http", "process", "none", NULL};

static const char *const manifest_process_keys[] = {"type",
                                                    "command",
                                                    "instances",
                                                    "memory",
                                                    "disk_quota",
                                                    "health-check-type",
                                                    "health-check-http-endpoint",
                                                    "timeout",
                                                    NULL};

static int manifest_process(struct manifest_ctx *c, const yaml_node_t *n,
                            struct manifest_process *p)
{
    p->instances = p->memory_mb = p->disk_mb = p->timeout = -1;
    int rc = manifest_check_keys(c, n, "a process", manifest_process_keys);
    const char *key;
    yaml_node_t *v;
    if (rc)
        return rc;
    MANIFEST_FOREACH_PAIR(c, n, key, v)
    {
        if (strcmp(key, "type") == 0)
            rc = manifest_string(c, key, v, &p->type);
        else if (strcmp(key, "command") == 0)
            rc = manifest_string(c, key, v, &p->command);
        else if (strcmp(key, "instances") == 0)
            rc = manifest_int(c, key, v, 0, &p->instances);
        else if (strcmp(key, "memory") == 0)
            rc = manifest_size(c, key, v, &p->memory_mb);
        else if (strcmp(key, "disk_quota") == 0)
            rc = manifest_size(c, key, v, &p->disk_mb);
        else if (strcmp(key, "health-check-type") == 0)
            rc = manifest_one_of(c, key, v, manifest_health_types, &p->health_check_type);
        else if (strcmp(key, "health-check-http-endpoint") == 0)
            rc = manifest_string(c, key, v, &p->health_check_http_endpoint);
        else if (strcmp(key, "timeout") == 0)
            rc = manifest_int(c, key, v, 1, &p->timeout);
        if (rc)
            return rc;
    }
    if (!p->type)
        return manifest_fail(c, n, "a process needs a \"type\" (like web or worker)");
    return 0;
}

static const char *const manifest_event_keys[] = {"topic", "filter", "schedule", NULL};

static int manifest_event(struct manifest_ctx *c, const yaml_node_t *n, struct manifest_event *e)
{
    int rc = manifest_check_keys(c, n, "an event", manifest_event_keys);
    const char *key;
    yaml_node_t *v;
    if (rc)
        return rc;
    MANIFEST_FOREACH_PAIR(c, n, key, v)
    {
        if (strcmp(key, "topic") == 0)
            rc = manifest_string(c, key, v, &e->topic);
        else if (strcmp(key, "schedule") == 0)
            rc = manifest_string(c, key, v, &e->schedule);
        else if (strcmp(key, "filter") == 0)
            rc = manifest_env(c, key, v, &e->filters, &e->filter_count);
        if (rc)
            return rc;
    }
    if (!e->topic == !e->schedule)
        return manifest_fail(c, n, "an event needs either a \"topic\" or a \"schedule\"%s",
                             e->topic ? ", not both" : "");
    if (e->filter_count && !e->topic)
        return manifest_fail(c, n, "\"filter\" applies to a \"topic\" event, not a schedule");
    return 0;
}

static const char *const manifest_function_keys[] = {
    "name",   "handler", "events", "min-instances", "max-instances", "concurrency",
    "memory", "path",    NULL};

static int manifest_function(struct manifest_ctx *c, const yaml_node_t *n,
                             struct manifest_function *f, char **path)
{
    f->min_instances = f->max_instances = f->concurrency = f->memory_mb = -1;
    int rc = manifest_check_keys(c, n, "a function", manifest_function_keys);
    const char *key;
    yaml_node_t *v;
    if (rc)
        return rc;
    MANIFEST_FOREACH_PAIR(c, n, key, v)
    {
        if (strcmp(key, "name") == 0)
            rc = manifest_string(c, key, v, &f->name);
        else if (strcmp(key, "handler") == 0)
            rc = manifest_string(c, key, v, &f->handler);
        else if (strcmp(key, "min-instances") == 0)
            rc = manifest_int(c, key, v, 0, &f->min_instances);
        else if (strcmp(key, "max-instances") == 0)
            rc = manifest_int(c, key, v, 1, &f->max_instances);
        else if (strcmp(key, "concurrency") == 0)
            rc = manifest_int(c, key, v, 1, &f->concurrency);
        else if (strcmp(key, "memory") == 0)
            rc = manifest_size(c, key, v, &f->memory_mb);
        else if (strcmp(key, "path") == 0) {
            if (!path)
                rc = manifest_fail(c, v, "\"path\" belongs to the app, not to a function in it");
            else
                rc = manifest_string(c, key, v, path);
        } else if (strcmp(key, "events") == 0) {
            if (v->type != YAML_SEQUENCE_NODE) {
                rc = manifest_fail(c, v, "\"events\" must be a list, not %s", manifest_kind(v));
            } else {
                size_t count = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
                f->events = xcalloc(count ? count : 1, sizeof(*f->events));
                for (size_t i = 0; i < count && !rc; i++) {
                    f->event_count++;
                    rc = manifest_event(
                        c, yaml_document_get_node(c->doc, v->data.sequence.items.start[i]),
                        &f->events[i]);
                }
            }
        }
        if (rc)
            return rc;
    }
    if (!f->name)
        return manifest_fail(c, n, "a function needs a \"name\"");
    if (!f->handler || !strchr(f->handler, ':'))
        return manifest_fail(c, n, "the function %s needs a \"handler\" like file.py:handle",
                             f->name);
    if (f->min_instances >= 0 && f->max_instances >= 0 && f->min_instances > f->max_instances)
        return manifest_fail(c, n, "the function %s has min-instances above max-instances",
                             f->name);
    return 0;
}

static const char *const manifest_app_keys[] = {"name",
                                                "path",
                                                "instances",
                                                "memory",
                                                "disk_quota",
                                                "command",
                                                "buildpacks",
                                                "buildpack",
                                                "env",
                                                "routes",
                                                "no-route",
                                                "health-check-type",
                                                "health-check-http-endpoint",
                                                "timeout",
                                                "services",
                                                "processes",
                                                "functions",
                                                NULL};

static char *manifest_resolve(const struct manifest_ctx *c, const char *path)
{
    if (path[0] == '/' || !c->dir || !*c->dir)
        return xstrdup(path);
    return xasprintf("%s/%s", c->dir, path);
}

/* Parses a list of maps into a freshly allocated array with one parse call per element. */
#define MANIFEST_LIST(c, key, v, arr, count, parse_call)                                           \
    do {                                                                                           \
        if ((v)->type != YAML_SEQUENCE_NODE) {                                                     \
            rc = manifest_fail(c, v, "\"%s\" must be a list, not %s", key, manifest_kind(v));      \
            break;                                                                                 \
        }                                                                                          \
        size_t n_ = (size_t)((v)->data.sequence.items.top - (v)->data.sequence.items.start);       \
        (arr) = xcalloc(n_ ? n_ : 1, sizeof(*(arr)));                                              \
        for (size_t i_ = 0; i_ < n_ && !rc; i_++) {                                                \
            yaml_node_t *item_ =                                                                   \
                yaml_document_get_node((c)->doc, (v)->data.sequence.items.start[i_]);              \
            (count)++;                                                                             \
            rc = parse_call(c, item_, &(arr)[i_]);                                                 \
        }                                                                                          \
    } while (0)

static int manifest_route(struct manifest_ctx *c, const yaml_node_t *n, char **out)
{
    static const char *const keys[] = {"route", NULL};
    int rc = manifest_check_keys(c, n, "a route", keys);
    if (rc)
        return rc;
    const char *key;
    yaml_node_t *v;
    MANIFEST_FOREACH_PAIR(c, n, key, v)
    {
        rc = manifest_string(c, key, v, out);
    }
    if (!rc && (!*out || !**out))
        return manifest_fail(c, n, "a route needs a \"route\", like - route: hello.localhost");
    if (!rc && strstr(*out, "://"))
        return manifest_fail(c, n,
                             "a route is a host and path without a scheme, like "
                             "hello.localhost/v1, not \"%s\"",
                             *out);
    return rc;
}

static int manifest_service(struct manifest_ctx *c, const yaml_node_t *n, char **out)
{
    if (n->type == YAML_SCALAR_NODE)
        return manifest_string(c, "services", n, out);
    static const char *const keys[] = {"name", "parameters", "binding_name", NULL};
    int rc = manifest_check_keys(c, n, "a service", keys);
    const char *key;
    yaml_node_t *v;
    if (rc)
        return rc;
    MANIFEST_FOREACH_PAIR(c, n, key, v)
    {
        if (strcmp(key, "name") == 0)
            rc = manifest_string(c, key, v, out);
        if (rc)
            return rc;
    }
    if (!*out)
        return manifest_fail(c, n, "a service needs a \"name\"");
    return 0;
}

static int manifest_app_function(struct manifest_ctx *c, const yaml_node_t *n,
                                 struct manifest_function *f)
{
    return manifest_function(c, n, f, NULL);
}

static int manifest_app(struct manifest_ctx *c, const yaml_node_t *n, struct manifest_app *a)
{
    a->instances = a->memory_mb = a->disk_mb = a->timeout = -1;
    a->line = manifest_line(n);
    int rc = manifest_check_keys(c, n, "an application", manifest_app_keys);
    const char *key;
    yaml_node_t *v;
    if (rc)
        return rc;
    MANIFEST_FOREACH_PAIR(c, n, key, v)
    {
        if (strcmp(key, "name") == 0) {
            rc = manifest_string(c, key, v, &a->name);
        } else if (strcmp(key, "path") == 0) {
            char *p = NULL;
            rc = manifest_string(c, key, v, &p);
            if (!rc) {
                a->path = manifest_resolve(c, p);
                free(p);
            }
        } else if (strcmp(key, "instances") == 0) {
            rc = manifest_int(c, key, v, 0, &a->instances);
        } else if (strcmp(key, "memory") == 0) {
            rc = manifest_size(c, key, v, &a->memory_mb);
        } else if (strcmp(key, "disk_quota") == 0) {
            rc = manifest_size(c, key, v, &a->disk_mb);
        } else if (strcmp(key, "command") == 0) {
            rc = manifest_string(c, key, v, &a->command);
        } else if (strcmp(key, "buildpacks") == 0) {
            rc = manifest_string_list(c, key, v, &a->buildpacks, &a->buildpack_count);
        } else if (strcmp(key, "buildpack") == 0) {
            const char *s = manifest_scalar(v);
            if (!s || !*s) {
                rc = manifest_fail(c, v, "\"buildpack\" must be a single value, not %s",
                                   manifest_kind(v));
            } else {
                a->buildpacks = xrealloc(a->buildpacks, (a->buildpack_count + 1) * sizeof(char *));
                a->buildpacks[a->buildpack_count++] = xstrdup(s);
            }
        } else if (strcmp(key, "env") == 0) {
            rc = manifest_env(c, key, v, &a->env, &a->env_count);
        } else if (strcmp(key, "routes") == 0) {
            MANIFEST_LIST(c, key, v, a->routes, a->route_count, manifest_route);
        } else if (strcmp(key, "no-route") == 0) {
            rc = manifest_bool(c, key, v, &a->no_route);
            a->no_route_set = true;
        } else if (strcmp(key, "health-check-type") == 0) {
            rc = manifest_one_of(c, key, v, manifest_health_types, &a->health_check_type);
        } else if (strcmp(key, "health-check-http-endpoint") == 0) {
            rc = manifest_string(c, key, v, &a->health_check_http_endpoint);
            if (!rc && a->health_check_http_endpoint[0] != '/')
                rc = manifest_fail(c, v, "\"%s\" must be a path starting with /, not \"%s\"", key,
                                   a->health_check_http_endpoint);
        } else if (strcmp(key, "timeout") == 0) {
            rc = manifest_int(c, key, v, 1, &a->timeout);
        } else if (strcmp(key, "services") == 0) {
            MANIFEST_LIST(c, key, v, a->services, a->service_count, manifest_service);
        } else if (strcmp(key, "processes") == 0) {
            MANIFEST_LIST(c, key, v, a->processes, a->process_count, manifest_process);
        } else if (strcmp(key, "functions") == 0) {
            MANIFEST_LIST(c, key, v, a->functions, a->function_count, manifest_app_function);
        }
        if (rc)
            return rc;
    }
    if (!a->name || !*a->name)
        return manifest_fail(c, n, "an application needs a \"name\"");
    if (a->no_route && a->route_count)
        return manifest_fail(c, n, "the app %s has both \"routes\" and \"no-route: true\"",
                             a->name);
    return 0;
}

/* A top-level function is an app of its own whose code is the handler's file. */
static int manifest_top_function(struct manifest_ctx *c, const yaml_node_t *n,
                                 struct manifest_app *a)
{
    a->instances = a->memory_mb = a->disk_mb = a->timeout = -1;
    a->line = manifest_line(n);
    a->functions = xcalloc(1, sizeof(*a->functions));
    a->function_count = 1;
    a->is_function = true;
    char *path = NULL;
    int rc = manifest_function(c, n, &a->functions[0], &path);
    if (path) {
        a->path = manifest_resolve(c, path);
        free(path);
    }
    if (!rc)
        a->name = xstrdup(a->functions[0].name);
    return rc;
}

static const char *const manifest_top_keys[] = {"applications", "functions", "version", NULL};

static int manifest_build(struct manifest_ctx *c, struct manifest *m)
{
    yaml_node_t *root = yaml_document_get_root_node(c->doc);
    if (!root)
        return manifest_fail(c, NULL, "the manifest is empty: it needs \"applications:\"");
    int rc = manifest_check_keys(c, root, "the manifest", manifest_top_keys);
    const char *key;
    yaml_node_t *v;
    if (rc)
        return rc;
    size_t apps = 0;
    MANIFEST_FOREACH_PAIR(c, root, key, v)
    {
        if (strcmp(key, "version") != 0 && v->type == YAML_SEQUENCE_NODE)
            apps += (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    }
    m->apps = xcalloc(apps ? apps : 1, sizeof(*m->apps));
    MANIFEST_FOREACH_PAIR(c, root, key, v)
    {
        bool is_apps = strcmp(key, "applications") == 0;
        if (strcmp(key, "version") == 0) {
            long version;
            rc = manifest_int(c, key, v, 1, &version);
            if (!rc && version != 1)
                rc = manifest_fail(c, v, "\"version\" must be 1, not %ld", version);
        } else if (v->type != YAML_SEQUENCE_NODE) {
            rc = manifest_fail(c, v,
                               "\"%s\" must be a list (each entry starting with \"- \"), "
                               "not %s",
                               key, manifest_kind(v));
        } else {
            for (yaml_node_item_t *it = v->data.sequence.items.start;
                 it < v->data.sequence.items.top && !rc; it++) {
                struct manifest_app *a = &m->apps[m->app_count++];
                yaml_node_t *item = yaml_document_get_node(c->doc, *it);
                rc = is_apps ? manifest_app(c, item, a) : manifest_top_function(c, item, a);
                for (size_t i = 0; !rc && i + 1 < m->app_count; i++)
                    if (strcmp(m->apps[i].name, a->name) == 0)
                        rc = manifest_fail(c, item, "the name \"%s\" is used twice", a->name);
            }
        }
        if (rc)
            return rc;
    }
    if (m->app_count == 0)
        return manifest_fail(c, root, "the manifest lists no applications");
    return 0;
}

int manifest_parse(const char *text, size_t len, const char *name, const char *dir,
                   struct manifest **out, char **err)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    struct manifest_ctx c = {.name = name, .dir = dir, .doc = &doc};
    struct manifest *m = xcalloc(1, sizeof(*m));
    int rc;
    *out = NULL;
    *err = NULL;
    m->file = xstrdup(name);
    m->dir = xstrdup(dir && *dir ? dir : ".");
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        const yaml_mark_t *mark = parser.problem_mark.line || parser.problem_mark.column
                                      ? &parser.problem_mark
                                      : &parser.context_mark;
        *err = xasprintf("%s line %d: not valid YAML: %s%s%s", name, (int)mark->line + 1,
                         parser.problem ? parser.problem : "syntax error",
                         parser.context ? " " : "", parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        manifest_free(m);
        return MANIFEST_ERR_SYNTAX;
    }
    rc = manifest_build(&c, m);
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    if (rc) {
        *err = c.err ? c.err : xasprintf("%s: invalid manifest", name);
        manifest_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

int manifest_load(const char *path, struct manifest **out, char **err)
{
    char *text;
    size_t len;
    *out = NULL;
    int rc = file_read(path, &text, &len);
    if (rc) {
        *err = xasprintf("cannot read the manifest %s: %s", path, strerror(-rc));
        return MANIFEST_ERR_IO;
    }
    char *copy = xstrdup(path);
    char *slash = strrchr(copy, '/');
    const char *dir = ".";
    if (slash == copy)
        dir = "/";
    else if (slash) {
        *slash = '\0';
        dir = copy;
    }
    rc = manifest_parse(text, len, path, dir, out, err);
    free(copy);
    free(text);
    return rc;
}

static void manifest_kv_free(struct manifest_kv *kv, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(kv[i].key);
        free(kv[i].value);
    }
    free(kv);
}

static void manifest_strings_free(char **s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(s[i]);
    free(s);
}

static void manifest_function_free(struct manifest_function *f)
{
    free(f->name);
    free(f->handler);
    for (size_t i = 0; i < f->event_count; i++) {
        free(f->events[i].topic);
        free(f->events[i].schedule);
        manifest_kv_free(f->events[i].filters, f->events[i].filter_count);
    }
    free(f->events);
}

void manifest_free(struct manifest *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->app_count; i++) {
        struct manifest_app *a = &m->apps[i];
        free(a->name);
        free(a->path);
        free(a->command);
        manifest_strings_free(a->buildpacks, a->buildpack_count);
        manifest_kv_free(a->env, a->env_count);
        manifest_strings_free(a->routes, a->route_count);
        free(a->health_check_type);
        free(a->health_check_http_endpoint);
        manifest_strings_free(a->services, a->service_count);
        for (size_t j = 0; j < a->process_count; j++) {
            struct manifest_process *p = &a->processes[j];
            free(p->type);
            free(p->command);
            free(p->health_check_type);
            free(p->health_check_http_endpoint);
        }
        free(a->processes);
        for (size_t j = 0; j < a->function_count; j++)
            manifest_function_free(&a->functions[j]);
        free(a->functions);
    }
    free(m->apps);
    free(m->file);
    free(m->dir);
    free(m);
}
