/* manifest: a Cloud Foundry style manifest.yml, read with libyaml (see manifest.h). */
#include "cli/manifest.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <strings.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
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

int manifest_parse_log_rate(const char *s, long long *bytes)
{
    if (s && strcmp(s, "-1") == 0) {
        *bytes = -1;
        return 0;
    }
    char *end;
    if (!s || !isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || v < 0)
        return -1;
    static const struct {
        const char *unit;
        long long mult;
    } units[] = {{"", 1},          {"B", 1},         {"K", 1024},      {"KB", 1024},
                 {"M", 1 << 20},   {"MB", 1 << 20},  {"G", 1LL << 30}, {"GB", 1LL << 30},
                 {"T", 1LL << 40}, {"TB", 1LL << 40}};
    for (size_t i = 0; i < ARRAY_SIZE(units); i++)
        if (strcasecmp(end, units[i].unit) == 0) {
            if (v > (1LL << 50) / units[i].mult)
                return -1;
            *bytes = v * units[i].mult;
            return 0;
        }
    return -1;
}

/* ---- the parser: a libyaml document checked against the schema below ------------------- */

struct manifest_ctx {
    const char *name; /* file name, for messages */
    const char *dir;
    yaml_document_t *doc;
    char *err;
    char **function_path; /* where a top-level function's "path" goes; NULL inside an app */
    struct manifest_app *function_app; /* a top-level function's app (its image); or NULL */
    struct manifest_app *app; /* the app being read, for its warnings; NULL at the top level */
    struct buf warned;        /* "\nkey\n" for each key the app has a warning for */
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

/* ---- one field table per block --------------------------------------------------------
 * Each block of the manifest (the top level, an application, a process, a function, an event,
 * a route, a service) is described by one table of its keys. The same table gives the
 * "unknown key" check (with its suggestion and list of known keys) and the parsing, so a key
 * is named in one place. Values go into the block's struct at `offset`. */

enum manifest_field_kind {
    MANIFEST_FIELD_STRING,      /* char * */
    MANIFEST_FIELD_INT,         /* long, at least `min` */
    MANIFEST_FIELD_SIZE,        /* long megabytes, from "256M" or "1G" */
    MANIFEST_FIELD_BOOL,        /* bool */
    MANIFEST_FIELD_ONE_OF,      /* char *, one of `allowed` */
    MANIFEST_FIELD_STRING_LIST, /* char **, its length at `count_offset` */
    MANIFEST_FIELD_ENV,         /* struct manifest_kv *, its length at `count_offset` */
    MANIFEST_FIELD_LIST,        /* an array of `item_size` items, each read by `parse_item` */
    MANIFEST_FIELD_CUSTOM,      /* read by `parse` */
    MANIFEST_FIELD_PATH,        /* char *, a URL path: starts with '/' */
    MANIFEST_FIELD_LOG_RATE,    /* long long bytes a second, from "16K" or "1M"; -1: unlimited */
    MANIFEST_FIELD_IGNORED,     /* accepted silently: the block it is in has a warning */
    MANIFEST_FIELD_NO_EFFECT,   /* a Cloud Foundry key that does nothing here: one warning */
};

struct manifest_field {
    const char *key;
    enum manifest_field_kind kind;
    size_t offset;
    size_t count_offset;
    long min;
    const char *const *allowed;
    size_t item_size;
    int (*parse_item)(struct manifest_ctx *c, const yaml_node_t *n, void *item);
    int (*parse)(struct manifest_ctx *c, const char *key, const yaml_node_t *v, void *block);
    const char *reason; /* MANIFEST_FIELD_NO_EFFECT: why, for the warning */
};

#define MANIFEST_STRING(k, type, member)                                                           \
    {                                                                                              \
        .key = k, .kind = MANIFEST_FIELD_STRING, .offset = offsetof(type, member)                  \
    }
#define MANIFEST_INT(k, type, member, least)                                                       \
    {                                                                                              \
        .key = k, .kind = MANIFEST_FIELD_INT, .offset = offsetof(type, member), .min = least       \
    }
#define MANIFEST_SIZE(k, type, member)                                                             \
    {                                                                                              \
        .key = k, .kind = MANIFEST_FIELD_SIZE, .offset = offsetof(type, member)                    \
    }
#define MANIFEST_ONE_OF(k, type, member, values)                                                   \
    {                                                                                              \
        .key = k, .kind = MANIFEST_FIELD_ONE_OF, .offset = offsetof(type, member),                 \
        .allowed = values                                                                          \
    }
#define MANIFEST_STRING_LIST(k, type, member, count)                                               \
    {                                                                                              \
        .key = k, .kind = MANIFEST_FIELD_STRING_LIST, .offset = offsetof(type, member),            \
        .count_offset = offsetof(type, count)                                                      \
    }
#define MANIFEST_ENV(k, type, member, count)                                                       \
    {                                                                                              \
        .key = k, .kind = MANIFEST_FIELD_ENV, .offset = offsetof(type, member),                    \
        .count_offset = offsetof(type, count)                                                      \
    }
#define MANIFEST_LIST(k, type, member, count, item_parser)                                         \
    {                                                                                              \
        .key = k, .kind = MANIFEST_FIELD_LIST, .offset = offsetof(type, member),                   \
        .count_offset = offsetof(type, count), .item_size = sizeof(*((type *)0)->member),          \
        .parse_item = item_parser                                                                  \
    }
#define MANIFEST_CUSTOM(k, parser)                                                                 \
    {                                                                                              \
        .key = k, .kind = MANIFEST_FIELD_CUSTOM, .parse = parser                                   \
    }
#define MANIFEST_PATH(k, type, member)                                                             \
    {                                                                                              \
        .key = k, .kind = MANIFEST_FIELD_PATH, .offset = offsetof(type, member)                    \
    }
#define MANIFEST_LOG_RATE(k, type, member)                                                         \
    {                                                                                              \
        .key = k, .kind = MANIFEST_FIELD_LOG_RATE, .offset = offsetof(type, member)                \
    }
#define MANIFEST_IGNORED(k)                                                                        \
    {                                                                                              \
        .key = k, .kind = MANIFEST_FIELD_IGNORED                                                   \
    }
#define MANIFEST_NO_EFFECT(k, why)                                                                 \
    {                                                                                              \
        .key = k, .kind = MANIFEST_FIELD_NO_EFFECT, .reason = why                                  \
    }

/* One warning per key and app: "manifest.yml line 9: shop: "sidecars" has no effect here: ...".
 * Outside an app (a top-level function) there is no one to tell, and nothing is recorded. */
static void manifest_warn(struct manifest_ctx *c, const yaml_node_t *n, const char *key,
                          const char *reason)
{
    struct manifest_app *a = c->app;
    if (!a)
        return;
    char *mark = xasprintf("\n%s\n", key);
    bool seen = c->warned.data && strstr(c->warned.data, mark);
    if (!seen) {
        buf_printf(&c->warned, "%s", mark);
        a->warnings = xrealloc(a->warnings, (a->warning_count + 1) * sizeof(char *));
        a->warnings[a->warning_count++] =
            xasprintf("%s line %d: %s: \"%s\" has no effect here: %s", c->name, manifest_line(n),
                      a->name ? a->name : "the app", key, reason);
    }
    free(mark);
}

static const struct manifest_field *manifest_field_find(const struct manifest_field *fields,
                                                        const char *key)
{
    for (const struct manifest_field *f = fields; f->key; f++)
        if (strcmp(key, f->key) == 0)
            return f;
    return NULL;
}

/* How far `key` is from the known key `known`: an edit distance, where "health_check_type" is
 * one from "health-check-type", and a key that starts the other one from it. */
static size_t manifest_key_distance(const char *key, const char *known)
{
    char alt[64];
    snprintf(alt, sizeof(alt), "%s", key);
    for (char *p = alt; *p; p++)
        if (*p == '_')
            *p = '-';
    /* "memory_mb" for "memory"; "log-rate-limit" for "log-rate-limit-per-second" */
    if (strcasecmp(alt, known) == 0 || (strlen(known) > 3 && str_has_prefix(alt, known)) ||
        (strlen(alt) > 8 && str_has_prefix(known, alt)))
        return 1;
    return manifest_distance(key, known);
}

/* Keys whose meanings are opposite: a typo of one must never be "corrected" to the other,
 * which would push the app with the contrary of what was asked. */
static const char *const manifest_opposites[][2] = {
    {"no-route", "random-route"},
    {"no-route", "default-route"},
    {"no-route", "routes"},
    {"min-instances", "max-instances"},
};

/* Whether suggesting `known` for `key` could turn what was written into its contrary: a hint
 * never adds or drops a "no-" (a key not starting with "n" is no typo of one that negates),
 * and a key whose opposite is at least as close to what was written is not suggested. */
static bool manifest_opposite_near(const char *key, const char *known)
{
    bool key_negates = strncasecmp(key, "no-", 3) == 0 || strncasecmp(key, "no_", 3) == 0;
    bool known_negates = str_has_prefix(known, "no-");
    if ((known_negates && tolower((unsigned char)key[0]) != 'n') || (key_negates && !known_negates))
        return true;
    for (size_t i = 0; i < ARRAY_SIZE(manifest_opposites); i++)
        for (int side = 0; side < 2; side++)
            if (strcmp(known, manifest_opposites[i][side]) == 0 &&
                manifest_key_distance(key, manifest_opposites[i][!side]) <=
                    manifest_key_distance(key, known))
                return true;
    return false;
}

/* The closest known key, when it is close enough to be what was meant. */
static const char *manifest_suggest(const char *key, const struct manifest_field *fields)
{
    const char *best = NULL;
    size_t best_d = 99;
    for (const struct manifest_field *f = fields; f->key; f++) {
        size_t d = manifest_key_distance(key, f->key);
        if (manifest_opposite_near(key, f->key))
            continue;
        if (d < best_d) {
            best_d = d;
            best = f->key;
        }
    }
    return best_d <= 2 + strlen(key) / 6 ? best : NULL;
}

#define MANIFEST_MAX_MERGED 16

/* The maps a YAML merge key ("<<: *defaults" or "<<: [*a, *b]") brings in, in order. */
static int manifest_merged_maps(struct manifest_ctx *c, const yaml_node_t *v,
                                const yaml_node_t **maps, size_t *count)
{
    *count = 0;
    if (v->type == YAML_MAPPING_NODE) {
        maps[(*count)++] = v;
        return 0;
    }
    if (v->type == YAML_SEQUENCE_NODE)
        for (yaml_node_item_t *it = v->data.sequence.items.start;
             it < v->data.sequence.items.top && *count < MANIFEST_MAX_MERGED; it++) {
            const yaml_node_t *m = yaml_document_get_node(c->doc, *it);
            if (m->type != YAML_MAPPING_NODE)
                break;
            maps[(*count)++] = m;
        }
    if (*count && v->type == YAML_SEQUENCE_NODE &&
        (size_t)(v->data.sequence.items.top - v->data.sequence.items.start) == *count)
        return 0;
    return manifest_fail(c, v,
                         "\"<<\" merges a map (like <<: *defaults) or a list of at most %d maps",
                         MANIFEST_MAX_MERGED);
}

static bool manifest_is_merge(const char *key)
{
    return strcmp(key, "<<") == 0;
}

/* Whether some "<<" of the document merges target: a block of shared settings
 * ("defaults: &defaults" beside "applications:", as Cloud Foundry manifests write them). */
static bool manifest_merged_somewhere(struct manifest_ctx *c, const yaml_node_t *target)
{
    for (yaml_node_t *n = c->doc->nodes.start; n < c->doc->nodes.top; n++) {
        if (n->type != YAML_MAPPING_NODE)
            continue;
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top;
             p++) {
            const char *key = manifest_scalar(yaml_document_get_node(c->doc, p->key));
            const yaml_node_t *v = yaml_document_get_node(c->doc, p->value);
            if (!key || !manifest_is_merge(key) || !v)
                continue;
            if (v == target)
                return true;
            if (v->type == YAML_SEQUENCE_NODE)
                for (yaml_node_item_t *it = v->data.sequence.items.start;
                     it < v->data.sequence.items.top; it++)
                    if (yaml_document_get_node(c->doc, *it) == target)
                        return true;
        }
    }
    return false;
}

static int manifest_check_keys_in(struct manifest_ctx *c, const yaml_node_t *n, const char *what,
                                  const struct manifest_field *fields, bool merge_allowed);

/* Checks that n is a mapping whose keys are all in `fields` and distinct; the maps a "<<"
 * merges are checked the same way (one level: they merge no further). */
static int manifest_check_keys(struct manifest_ctx *c, const yaml_node_t *n, const char *what,
                               const struct manifest_field *fields)
{
    return manifest_check_keys_in(c, n, what, fields, true);
}

static int manifest_check_keys_in(struct manifest_ctx *c, const yaml_node_t *n, const char *what,
                                  const struct manifest_field *fields, bool merge_allowed)
{
    if (n->type != YAML_MAPPING_NODE)
        return manifest_fail(c, n, "%s must be a map of keys, not %s", what, manifest_kind(n));
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
        const char *key = manifest_scalar(k);
        if (!key)
            return manifest_fail(c, k, "a key in %s must be a name, not %s", what,
                                 manifest_kind(k));
        if (manifest_is_merge(key)) {
            const yaml_node_t *maps[MANIFEST_MAX_MERGED];
            size_t count;
            if (!merge_allowed)
                return manifest_fail(c, k, "a map merged with \"<<\" cannot merge another");
            int rc =
                manifest_merged_maps(c, yaml_document_get_node(c->doc, p->value), maps, &count);
            for (size_t i = 0; i < count && !rc; i++)
                rc = manifest_check_keys_in(c, maps[i], what, fields, false);
            if (rc)
                return rc;
        } else if (!manifest_field_find(fields, key)) {
            /* a top-level block that only holds settings other entries merge is read through
             * them, not for itself */
            if (n == yaml_document_get_root_node(c->doc) &&
                manifest_merged_somewhere(c, yaml_document_get_node(c->doc, p->value)))
                continue;
            const char *hint = manifest_suggest(key, fields);
            if (hint)
                return manifest_fail(c, k, "unknown key \"%s\" (did you mean \"%s\"?)", key, hint);
            struct buf list = {0};
            for (const struct manifest_field *f = fields; f->key; f++)
                buf_printf(&list, "%s%s", f == fields ? "" : ", ", f->key);
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

static int manifest_path(struct manifest_ctx *c, const char *key, const yaml_node_t *v, char **out)
{
    int rc = manifest_string(c, key, v, out);
    if (!rc && (*out)[0] != '/')
        rc = manifest_fail(c, v, "\"%s\" must be a path starting with /, not \"%s\"", key, *out);
    return rc;
}

static int manifest_log_rate(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                             long long *out)
{
    const char *s = manifest_scalar(v);
    if (!s || manifest_parse_log_rate(s, out) != 0)
        return manifest_fail(c, v,
                             "\"%s\" must be bytes a second like 16K, 1M or 512B, or -1 for "
                             "unlimited, not %s%s%s",
                             key, s ? "\"" : "", s ? s : manifest_kind(v), s ? "\"" : "");
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

/* A list of maps, into a freshly allocated array with one parse_item call per entry. The
 * count grows before each call so that manifest_free() frees a half-read entry too. */
static int manifest_list(struct manifest_ctx *c, const struct manifest_field *f,
                         const yaml_node_t *v, void **arr, size_t *count)
{
    if (v->type != YAML_SEQUENCE_NODE)
        return manifest_fail(c, v, "\"%s\" must be a list, not %s", f->key, manifest_kind(v));
    size_t n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    *arr = xcalloc(n ? n : 1, f->item_size);
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        yaml_node_t *item = yaml_document_get_node(c->doc, v->data.sequence.items.start[i]);
        (*count)++;
        rc = f->parse_item(c, item, (char *)*arr + i * f->item_size);
    }
    return rc;
}

static int manifest_field_parse(struct manifest_ctx *c, const struct manifest_field *f,
                                const yaml_node_t *v, void *block)
{
    void *at = (char *)block + f->offset;
    size_t *count = (size_t *)(void *)((char *)block + f->count_offset);
    switch (f->kind) {
    case MANIFEST_FIELD_STRING:
        return manifest_string(c, f->key, v, at);
    case MANIFEST_FIELD_INT:
        return manifest_int(c, f->key, v, f->min, at);
    case MANIFEST_FIELD_SIZE:
        return manifest_size(c, f->key, v, at);
    case MANIFEST_FIELD_BOOL:
        return manifest_bool(c, f->key, v, at);
    case MANIFEST_FIELD_ONE_OF:
        return manifest_one_of(c, f->key, v, f->allowed, at);
    case MANIFEST_FIELD_STRING_LIST:
        return manifest_string_list(c, f->key, v, at, count);
    case MANIFEST_FIELD_ENV:
        return manifest_env(c, f->key, v, at, count);
    case MANIFEST_FIELD_LIST:
        return manifest_list(c, f, v, at, count);
    case MANIFEST_FIELD_CUSTOM:
        return f->parse(c, f->key, v, block);
    case MANIFEST_FIELD_PATH:
        return manifest_path(c, f->key, v, at);
    case MANIFEST_FIELD_LOG_RATE:
        return manifest_log_rate(c, f->key, v, at);
    case MANIFEST_FIELD_IGNORED:
        return 0;
    case MANIFEST_FIELD_NO_EFFECT:
        manifest_warn(c, v, f->key, f->reason);
        return 0;
    }
    return 0;
}

/* Whether the map n has `key` (its own keys, not merged ones). */
static bool manifest_has_key(struct manifest_ctx *c, const yaml_node_t *n, const char *key)
{
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++)
        if (strcmp(manifest_scalar(yaml_document_get_node(c->doc, p->key)), key) == 0)
            return true;
    return false;
}

/* Checks the keys of the mapping n against `fields`, then reads each value into `block`: its
 * own keys, then those "<<" merges in that it does not have (the first merged map wins). */
static int manifest_block(struct manifest_ctx *c, const yaml_node_t *n, const char *what,
                          const struct manifest_field *fields, void *block)
{
    int rc = manifest_check_keys(c, n, what, fields);
    if (rc)
        return rc;
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        const char *key = manifest_scalar(yaml_document_get_node(c->doc, p->key));
        const struct manifest_field *f = manifest_field_find(fields, key);
        if (manifest_is_merge(key) || !f) /* !f: a block of shared settings (check_keys) */
            continue;
        rc = manifest_field_parse(c, f, yaml_document_get_node(c->doc, p->value), block);
        if (rc)
            return rc;
    }
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        const char *key = manifest_scalar(yaml_document_get_node(c->doc, p->key));
        const yaml_node_t *maps[MANIFEST_MAX_MERGED];
        size_t count = 0;
        if (manifest_is_merge(key))
            manifest_merged_maps(c, yaml_document_get_node(c->doc, p->value), maps, &count);
        for (size_t i = 0; i < count; i++)
            for (yaml_node_pair_t *q = maps[i]->data.mapping.pairs.start;
                 q < maps[i]->data.mapping.pairs.top; q++) {
                const char *mkey = manifest_scalar(yaml_document_get_node(c->doc, q->key));
                bool taken = manifest_has_key(c, n, mkey);
                for (size_t j = 0; j < i && !taken; j++)
                    taken = manifest_has_key(c, maps[j], mkey);
                if (taken)
                    continue;
                rc = manifest_field_parse(c, manifest_field_find(fields, mkey),
                                          yaml_document_get_node(c->doc, q->value), block);
                if (rc)
                    return rc;
            }
    }
    return 0;
}

static const char *const manifest_health_types[] = {"port", "http", "process", "none", NULL};

static const char *const manifest_readiness_types[] = {"http", "port", "process", NULL};

/* The keys Cloud Foundry has for every process, app level (for web) and in "processes:". */
#define MANIFEST_CHECK_FIELDS(type)                                                                \
    MANIFEST_INT("health-check-interval", type, checks.health_interval, 1),                        \
        MANIFEST_INT("health-check-invocation-timeout", type, checks.health_timeout, 1),           \
        MANIFEST_ONE_OF("readiness-health-check-type", type, checks.readiness_type,                \
                        manifest_readiness_types),                                                 \
        MANIFEST_PATH("readiness-health-check-http-endpoint", type, checks.readiness_endpoint),    \
        MANIFEST_INT("readiness-health-check-interval", type, checks.readiness_interval, 1),       \
        MANIFEST_INT("readiness-health-check-invocation-timeout", type, checks.readiness_timeout,  \
                     1),                                                                           \
        MANIFEST_LOG_RATE("log-rate-limit-per-second", type, checks.log_rate)

static void manifest_checks_init(struct manifest_checks *k)
{
    k->health_interval = k->health_timeout = k->readiness_interval = k->readiness_timeout = -1;
    k->log_rate = MANIFEST_LOG_RATE_UNSET;
}

static void manifest_checks_free(struct manifest_checks *k)
{
    free(k->readiness_type);
    free(k->readiness_endpoint);
}

/* ---- processes ---- */

#define MANIFEST_AUTOSCALE_FIELDS(type)                                                            \
    MANIFEST_INT("min-instances", type, autoscale.min_instances, 0),                               \
        MANIFEST_INT("max-instances", type, autoscale.max_instances, 1),                           \
        MANIFEST_INT("target-concurrency", type, autoscale.target_concurrency, 1),                 \
        MANIFEST_INT("target-rps", type, autoscale.target_rps, 1)

bool manifest_autoscale_set(const struct manifest_autoscale *as)
{
    return as->min_instances >= 0 || as->max_instances >= 0 || as->target_concurrency >= 0 ||
           as->target_rps >= 0;
}

static void manifest_autoscale_init(struct manifest_autoscale *as)
{
    as->min_instances = as->max_instances = as->target_concurrency = as->target_rps = -1;
}

/* What the API would refuse, said with the line. */
static int manifest_autoscale_check(struct manifest_ctx *c, const yaml_node_t *n,
                                    const struct manifest_autoscale *as, const char *what)
{
    if (as->min_instances >= 0 && as->max_instances >= 0 && as->min_instances > as->max_instances)
        return manifest_fail(c, n, "%s has min-instances above max-instances", what);
    if (as->target_concurrency >= 0 && as->target_rps >= 0)
        return manifest_fail(c, n, "%s has both target-concurrency and target-rps: give one", what);
    return 0;
}

static const struct manifest_field manifest_process_fields[] = {
    MANIFEST_STRING("type", struct manifest_process, type),
    MANIFEST_STRING("command", struct manifest_process, command),
    MANIFEST_INT("instances", struct manifest_process, instances, 0),
    MANIFEST_SIZE("memory", struct manifest_process, memory_mb),
    MANIFEST_SIZE("disk_quota", struct manifest_process, disk_mb),
    MANIFEST_SIZE("disk-quota", struct manifest_process, disk_mb),
    MANIFEST_ONE_OF("health-check-type", struct manifest_process, health_check_type,
                    manifest_health_types),
    MANIFEST_STRING("health-check-http-endpoint", struct manifest_process,
                    health_check_http_endpoint),
    MANIFEST_INT("timeout", struct manifest_process, timeout, 1),
    MANIFEST_AUTOSCALE_FIELDS(struct manifest_process),
    MANIFEST_CHECK_FIELDS(struct manifest_process),
    {0},
};

static int manifest_process(struct manifest_ctx *c, const yaml_node_t *n, void *item)
{
    struct manifest_process *p = item;
    p->instances = p->memory_mb = p->disk_mb = p->timeout = -1;
    manifest_autoscale_init(&p->autoscale);
    manifest_checks_init(&p->checks);
    int rc = manifest_block(c, n, "a process", manifest_process_fields, p);
    if (rc)
        return rc;
    if (!p->type)
        return manifest_fail(c, n, "a process needs a \"type\" (like web or worker)");
    return manifest_autoscale_check(c, n, &p->autoscale, "a process");
}

/* ---- sidecars ---- */

static const struct manifest_field manifest_sidecar_fields[] = {
    MANIFEST_STRING("name", struct manifest_sidecar, name),
    MANIFEST_STRING_LIST("process_types", struct manifest_sidecar, process_types,
                         process_type_count),
    MANIFEST_STRING("command", struct manifest_sidecar, command),
    MANIFEST_SIZE("memory", struct manifest_sidecar, memory_mb),
    {0},
};

static int manifest_sidecar(struct manifest_ctx *c, const yaml_node_t *n, void *item)
{
    struct manifest_sidecar *sc = item;
    sc->memory_mb = -1;
    int rc = manifest_block(c, n, "a sidecar", manifest_sidecar_fields, sc);
    if (rc)
        return rc;
    if (!sc->name)
        return manifest_fail(c, n, "a sidecar needs a \"name\"");
    if (!sc->command || !*sc->command)
        return manifest_fail(c, n, "sidecar %s needs a \"command\" (what runs beside the process)",
                             sc->name);
    if (!sc->process_type_count)
        return manifest_fail(c, n,
                             "sidecar %s needs \"process_types\": the process types it runs "
                             "beside, e.g. [web]",
                             sc->name);
    return 0;
}

/* ---- functions and their events ---- */

static const struct manifest_field manifest_event_fields[] = {
    MANIFEST_STRING("topic", struct manifest_event, topic),
    MANIFEST_ENV("filter", struct manifest_event, filters, filter_count),
    MANIFEST_STRING("schedule", struct manifest_event, schedule),
    {0},
};

static int manifest_event(struct manifest_ctx *c, const yaml_node_t *n, void *item)
{
    struct manifest_event *e = item;
    int rc = manifest_block(c, n, "an event", manifest_event_fields, e);
    if (rc)
        return rc;
    if (!e->topic == !e->schedule)
        return manifest_fail(c, n, "an event needs either a \"topic\" or a \"schedule\"%s",
                             e->topic ? ", not both" : "");
    if (e->filter_count && !e->topic)
        return manifest_fail(c, n, "\"filter\" applies to a \"topic\" event, not a schedule");
    return 0;
}

/* "path" of a top-level function is its app's code; inside an app the app has the path. */
static int manifest_function_path(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                                  void *block)
{
    (void)block;
    if (!c->function_path)
        return manifest_fail(c, v, "\"path\" belongs to the app, not to a function in it");
    return manifest_string(c, key, v, c->function_path);
}

static int manifest_app_docker(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                               void *block);

/* A top-level function may be an image that serves the CloudEvents contract itself: its
 * "docker" block is its app's, as an application's is. */
static int manifest_function_docker(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                                    void *block)
{
    (void)block;
    if (!c->function_app)
        return manifest_fail(c, v,
                             "\"docker\" belongs to a top-level function (an image is an app of "
                             "its own), not to a function inside an app");
    return manifest_app_docker(c, key, v, c->function_app);
}

static const struct manifest_field manifest_function_fields[] = {
    MANIFEST_STRING("name", struct manifest_function, name),
    MANIFEST_STRING("handler", struct manifest_function, handler),
    MANIFEST_LIST("events", struct manifest_function, events, event_count, manifest_event),
    MANIFEST_INT("min-instances", struct manifest_function, min_instances, 0),
    MANIFEST_INT("max-instances", struct manifest_function, max_instances, 1),
    MANIFEST_INT("concurrency", struct manifest_function, concurrency, 1),
    MANIFEST_SIZE("memory", struct manifest_function, memory_mb),
    MANIFEST_STRING("idle-grace", struct manifest_function, idle_grace),
    MANIFEST_CUSTOM("path", manifest_function_path),
    MANIFEST_CUSTOM("docker", manifest_function_docker),
    {0},
};

static int manifest_function(struct manifest_ctx *c, const yaml_node_t *n, void *item)
{
    struct manifest_function *f = item;
    f->min_instances = f->max_instances = f->concurrency = f->memory_mb = -1;
    int rc = manifest_block(c, n, "a function", manifest_function_fields, f);
    if (rc)
        return rc;
    f->events_listed = manifest_has_key(c, n, "events");
    if (!f->name)
        return manifest_fail(c, n, "a function needs a \"name\"");
    bool image = c->function_app && c->function_app->docker_image;
    if (image && f->handler)
        return manifest_fail(c, n,
                             "the function %s has both a \"handler\" and a \"docker\" image: "
                             "an image serves the function itself, keep one of them",
                             f->name);
    if (!image && (!f->handler || !strchr(f->handler, ':')))
        return manifest_fail(c, n, "the function %s needs a \"handler\" like file.py:handle%s",
                             f->name,
                             c->function_app ? " (or a \"docker\" image that serves it)" : "");
    if (f->min_instances >= 0 && f->max_instances >= 0 && f->min_instances > f->max_instances)
        return manifest_fail(c, n, "the function %s has min-instances above max-instances",
                             f->name);
    return 0;
}

/* ---- routes and services ---- */

/* http1 and http2 are the route's protocol (what the router speaks to the instances); a tcp
 * route is accepted as an http1 one. */
static int manifest_route_protocol(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                                   void *block)
{
    struct manifest_route *r = block;
    static const char *const protocols[] = {"http1", "http2", "tcp", NULL};
    int rc = manifest_one_of(c, key, v, protocols, &r->protocol);
    if (!rc && strcmp(r->protocol, "tcp") == 0) {
        manifest_warn(c, v, key,
                      "the router has no TCP routes; the route is mapped as an http1 one");
        free(r->protocol);
        r->protocol = NULL;
    }
    return rc;
}

/* https_only (Skiff's, not Cloud Foundry's): the route's https_only, set only when given. */
static int manifest_route_https_only(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                                     void *block)
{
    struct manifest_route *r = block;
    r->https_only_set = true;
    return manifest_bool(c, key, v, &r->https_only);
}

/* Cloud Foundry's balancing names are the router's: they become the route's "balance". */
static int manifest_route_balancing(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                                    void *block)
{
    struct manifest_route *r = block;
    static const char *const ways[] = {"round-robin", "least-connection", "hash", NULL};
    int rc = manifest_one_of(c, key, v, ways, &r->balance);
    if (!rc && strcmp(r->balance, "hash") == 0) {
        manifest_warn(c, v, "loadbalancing: hash",
                      "the router balances round-robin or least-connection; the route keeps "
                      "round-robin");
        free(r->balance);
        r->balance = NULL;
    }
    return rc;
}

#define MANIFEST_WHY_HASH "only loadbalancing: hash uses it, and the router has no hash balancing"

static const struct manifest_field manifest_route_option_fields[] = {
    MANIFEST_CUSTOM("loadbalancing", manifest_route_balancing),
    MANIFEST_NO_EFFECT("hash_header", MANIFEST_WHY_HASH),
    MANIFEST_NO_EFFECT("hash_balance", MANIFEST_WHY_HASH),
    {0},
};

static int manifest_route_options(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                                  void *block)
{
    (void)key;
    return manifest_block(c, v, "the options of a route", manifest_route_option_fields, block);
}

static const struct manifest_field manifest_route_fields[] = {
    MANIFEST_STRING("route", struct manifest_route, route),
    MANIFEST_CUSTOM("protocol", manifest_route_protocol),
    MANIFEST_CUSTOM("https_only", manifest_route_https_only),
    MANIFEST_CUSTOM("options", manifest_route_options),
    {0},
};

static int manifest_route(struct manifest_ctx *c, const yaml_node_t *n, void *item)
{
    struct manifest_route *r = item;
    int rc = manifest_block(c, n, "a route", manifest_route_fields, r);
    if (!rc && (!r->route || !*r->route))
        return manifest_fail(c, n, "a route needs a \"route\", like - route: hello.localhost");
    if (!rc && strstr(r->route, "://"))
        return manifest_fail(c, n,
                             "a route is a host and path without a scheme, like "
                             "hello.localhost/v1, not \"%s\"",
                             r->route);
    return rc;
}

/* A YAML node as JSON: maps, lists, and scalars, where a plain scalar that reads as a JSON
 * number, true, false or null is one (as YAML's core schema has it). */
static json_t *manifest_node_json(struct manifest_ctx *c, const yaml_node_t *n, int depth)
{
    if (depth > 32)
        return NULL;
    if (n->type == YAML_SCALAR_NODE) {
        const char *text = (const char *)n->data.scalar.value;
        size_t len = n->data.scalar.length;
        if (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
            json_t *v = json_loadb(text, len, JSON_DECODE_ANY, NULL);
            if (v && !json_is_object(v) && !json_is_array(v) && !json_is_string(v))
                return v;
            json_decref(v);
        }
        return json_stringn(text, len);
    }
    if (n->type == YAML_SEQUENCE_NODE) {
        json_t *arr = json_array();
        for (yaml_node_item_t *i = n->data.sequence.items.start; i < n->data.sequence.items.top;
             i++) {
            json_t *v = manifest_node_json(c, yaml_document_get_node(c->doc, *i), depth + 1);
            if (!v) {
                json_decref(arr);
                return NULL;
            }
            json_array_append_new(arr, v);
        }
        return arr;
    }
    if (n->type == YAML_MAPPING_NODE) {
        json_t *obj = json_object();
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top;
             p++) {
            yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
            json_t *v =
                k && k->type == YAML_SCALAR_NODE
                    ? manifest_node_json(c, yaml_document_get_node(c->doc, p->value), depth + 1)
                    : NULL;
            if (!v) {
                json_decref(obj);
                return NULL;
            }
            json_object_setn_new(obj, (const char *)k->data.scalar.value, k->data.scalar.length, v);
        }
        return obj;
    }
    return NULL;
}

static int manifest_service_parameters(struct manifest_ctx *c, const char *key,
                                       const yaml_node_t *v, void *block)
{
    struct manifest_service *svc = block;
    json_t *params = v->type == YAML_MAPPING_NODE ? manifest_node_json(c, v, 0) : NULL;
    if (!params)
        return manifest_fail(c, v,
                             "\"%s\" of a service must be a map of the broker's parameters, not %s",
                             key, manifest_kind(v));
    free(svc->parameters);
    svc->parameters = json_dumps(params, JSON_COMPACT);
    json_decref(params);
    return 0;
}

static const struct manifest_field manifest_service_fields[] = {
    MANIFEST_STRING("name", struct manifest_service, name),
    MANIFEST_STRING("binding_name", struct manifest_service, binding_name),
    MANIFEST_CUSTOM("parameters", manifest_service_parameters),
    {0},
};

static int manifest_service(struct manifest_ctx *c, const yaml_node_t *n, void *item)
{
    struct manifest_service *svc = item;
    if (n->type == YAML_SCALAR_NODE)
        return manifest_string(c, "services", n, &svc->name);
    int rc = manifest_block(c, n, "a service", manifest_service_fields, svc);
    if (rc)
        return rc;
    if (!svc->name || !*svc->name)
        return manifest_fail(c, n, "a service needs a \"name\", like - name: my-db");
    return 0;
}

/* ---- applications ---- */

static char *manifest_resolve(const struct manifest_ctx *c, const char *path)
{
    if (path[0] == '/' || !c->dir || !*c->dir)
        return xstrdup(path);
    return xasprintf("%s/%s", c->dir, path);
}

static int manifest_app_path(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                             void *block)
{
    struct manifest_app *a = block;
    char *p = NULL;
    int rc = manifest_string(c, key, v, &p);
    if (!rc) {
        a->path = manifest_resolve(c, p);
        free(p);
    }
    return rc;
}

/* The Cloud Foundry v2 spelling of a single buildpack, added to "buildpacks". */
static int manifest_app_buildpack(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                                  void *block)
{
    struct manifest_app *a = block;
    const char *s = manifest_scalar(v);
    if (!s || !*s)
        return manifest_fail(c, v, "\"%s\" must be a single value, not %s", key, manifest_kind(v));
    a->buildpacks = xrealloc(a->buildpacks, (a->buildpack_count + 1) * sizeof(char *));
    a->buildpacks[a->buildpack_count++] = xstrdup(s);
    return 0;
}

static int manifest_app_no_route(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                                 void *block)
{
    struct manifest_app *a = block;
    a->no_route_set = true;
    return manifest_bool(c, key, v, &a->no_route);
}

static int manifest_app_endpoint(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                                 void *block)
{
    struct manifest_app *a = block;
    int rc = manifest_string(c, key, v, &a->health_check_http_endpoint);
    if (!rc && a->health_check_http_endpoint[0] != '/')
        rc = manifest_fail(c, v, "\"%s\" must be a path starting with /, not \"%s\"", key,
                           a->health_check_http_endpoint);
    return rc;
}

static int manifest_app_random_route(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                                     void *block)
{
    struct manifest_app *a = block;
    return manifest_bool(c, key, v, &a->random_route);
}

/* default-route: true asks for NAME.localhost when no route is listed, which is what a push
 * does anyway; false is Cloud Foundry's default, which maps it as well. Checked, then kept. */
static int manifest_app_default_route(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                                      void *block)
{
    (void)block;
    bool wanted;
    return manifest_bool(c, key, v, &wanted);
}

/* Prebuilt images, as Cloud Foundry writes them: docker: {image: REF, username: USER}. */
static const struct manifest_field manifest_docker_fields[] = {
    MANIFEST_STRING("image", struct manifest_app, docker_image),
    MANIFEST_STRING("username", struct manifest_app, docker_username),
    {0},
};

static int manifest_app_docker(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                               void *block)
{
    struct manifest_app *a = block;
    int rc = manifest_block(c, v, "\"docker\"", manifest_docker_fields, block);
    if (!rc && !a->docker_image)
        rc = manifest_fail(c, v, "\"%s\" needs \"image\": the image's reference", key);
    return rc;
}

static int manifest_app_lifecycle(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                                  void *block)
{
    (void)block;
    static const char *const kinds[] = {"buildpack", "cnb", "docker", NULL};
    char *kind = NULL;
    int rc = manifest_one_of(c, key, v, kinds, &kind);
    /* docker: the "docker" key says which image */
    if (!rc && strcmp(kind, "cnb") == 0)
        manifest_warn(c, v, "lifecycle: cnb",
                      "apps are staged with this platform's buildpacks, not Cloud Native ones");
    free(kind);
    return rc;
}

/* metadata.labels or metadata.annotations: a map of scalars, into out[part] (the API checks
 * the keys and values, with the same rules as `skiff set-label`). */
static int manifest_metadata_part(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                                  void *block)
{
    json_t *out = block;
    if (manifest_is_null(v))
        return 0;
    if (v->type != YAML_MAPPING_NODE)
        return manifest_fail(c, v, "\"metadata.%s\" is a map of keys and values", key);
    json_t *part = json_object();
    json_object_set_new(out, key, part);
    for (yaml_node_pair_t *p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top; p++) {
        const yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
        const yaml_node_t *val = yaml_document_get_node(c->doc, p->value);
        if (!manifest_scalar(k) || (!manifest_scalar(val) && !manifest_is_null(val)))
            return manifest_fail(c, val, "\"metadata.%s\" maps a key to a text value", key);
        json_object_set_new(part, manifest_scalar(k),
                            manifest_is_null(val) ? json_null()
                                                  : json_string(manifest_scalar(val)));
    }
    return 0;
}

static const struct manifest_field manifest_metadata_fields[] = {
    MANIFEST_CUSTOM("labels", manifest_metadata_part),
    MANIFEST_CUSTOM("annotations", manifest_metadata_part),
    {0},
};

static int manifest_app_metadata(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                                 void *block)
{
    (void)key;
    struct manifest_app *a = block;
    if (manifest_is_null(v))
        return 0;
    if (v->type != YAML_MAPPING_NODE)
        return manifest_fail(c, v, "\"metadata\" is a map with labels and annotations");
    json_t *m = json_object();
    int rc = manifest_block(c, v, "\"metadata\"", manifest_metadata_fields, m);
    if (!rc && json_object_size(m)) {
        free(a->metadata_json);
        a->metadata_json = json_dumps(m, JSON_COMPACT);
    }
    json_decref(m);
    return rc;
}

static int manifest_app_services(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                                 void *block)
{
    static const struct manifest_field f =
        MANIFEST_LIST("services", struct manifest_app, services, service_count, manifest_service);
    struct manifest_app *a = block;
    (void)key;
    return manifest_list(c, &f, v, (void **)&a->services, &a->service_count);
}

static const struct manifest_field manifest_app_fields[] = {
    MANIFEST_STRING("name", struct manifest_app, name),
    MANIFEST_CUSTOM("path", manifest_app_path),
    MANIFEST_INT("instances", struct manifest_app, instances, 0),
    MANIFEST_SIZE("memory", struct manifest_app, memory_mb),
    MANIFEST_SIZE("disk_quota", struct manifest_app, disk_mb),
    MANIFEST_SIZE("disk-quota", struct manifest_app, disk_mb),
    MANIFEST_STRING("command", struct manifest_app, command),
    MANIFEST_STRING_LIST("buildpacks", struct manifest_app, buildpacks, buildpack_count),
    MANIFEST_CUSTOM("buildpack", manifest_app_buildpack),
    MANIFEST_ENV("env", struct manifest_app, env, env_count),
    MANIFEST_LIST("routes", struct manifest_app, routes, route_count, manifest_route),
    MANIFEST_CUSTOM("no-route", manifest_app_no_route),
    MANIFEST_CUSTOM("random-route", manifest_app_random_route),
    MANIFEST_CUSTOM("default-route", manifest_app_default_route),
    MANIFEST_ONE_OF("health-check-type", struct manifest_app, health_check_type,
                    manifest_health_types),
    MANIFEST_CUSTOM("health-check-http-endpoint", manifest_app_endpoint),
    MANIFEST_INT("timeout", struct manifest_app, timeout, 1),
    MANIFEST_AUTOSCALE_FIELDS(struct manifest_app),
    MANIFEST_CUSTOM("services", manifest_app_services),
    MANIFEST_LIST("processes", struct manifest_app, processes, process_count, manifest_process),
    MANIFEST_LIST("functions", struct manifest_app, functions, function_count, manifest_function),
    MANIFEST_STRING("stack", struct manifest_app, stack),
    MANIFEST_CUSTOM("docker", manifest_app_docker),
    MANIFEST_CUSTOM("lifecycle", manifest_app_lifecycle),
    MANIFEST_CUSTOM("metadata", manifest_app_metadata),
    MANIFEST_LIST("sidecars", struct manifest_app, sidecars, sidecar_count, manifest_sidecar),
    MANIFEST_NO_EFFECT("cnb-credentials", "apps are not staged with Cloud Native Buildpacks here"),
    MANIFEST_CHECK_FIELDS(struct manifest_app),
    {0},
};

static int manifest_app(struct manifest_ctx *c, const yaml_node_t *n, struct manifest_app *a)
{
    a->instances = a->memory_mb = a->disk_mb = a->timeout = -1;
    manifest_autoscale_init(&a->autoscale);
    manifest_checks_init(&a->checks);
    a->line = manifest_line(n);
    /* the name first, so that warnings about keys before it can name the app */
    if (n->type == YAML_MAPPING_NODE)
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top;
             p++) {
            const char *key = manifest_scalar(yaml_document_get_node(c->doc, p->key));
            const char *name = manifest_scalar(yaml_document_get_node(c->doc, p->value));
            if (key && name && strcmp(key, "name") == 0 && !a->name)
                a->name = xstrdup(name);
        }
    c->app = a;
    buf_free(&c->warned);
    int rc = manifest_block(c, n, "an application", manifest_app_fields, a);
    c->app = NULL;
    if (rc)
        return rc;
    if (!a->name || !*a->name)
        return manifest_fail(c, n, "an application needs a \"name\"");
    if (a->no_route && a->route_count)
        return manifest_fail(c, n, "the app %s has both \"routes\" and \"no-route: true\"",
                             a->name);
    if (a->no_route && a->random_route)
        return manifest_fail(
            c, n, "the app %s has both \"random-route: true\" and \"no-route: true\"", a->name);
    if (a->random_route && a->route_count) {
        c->app = a;
        manifest_warn(c, n, "random-route", "the app lists its routes");
        c->app = NULL;
    }
    return manifest_autoscale_check(c, n, &a->autoscale, a->name);
}

/* A top-level function is an app of its own whose code is the handler's file. */
static int manifest_top_function(struct manifest_ctx *c, const yaml_node_t *n,
                                 struct manifest_app *a)
{
    a->instances = a->memory_mb = a->disk_mb = a->timeout = -1;
    manifest_autoscale_init(&a->autoscale);
    manifest_checks_init(&a->checks);
    a->line = manifest_line(n);
    a->functions = xcalloc(1, sizeof(*a->functions));
    a->function_count = 1;
    a->is_function = true;
    char *path = NULL;
    c->function_path = &path;
    c->function_app = a;
    int rc = manifest_function(c, n, &a->functions[0]);
    c->function_path = NULL;
    c->function_app = NULL;
    if (path) {
        a->path = manifest_resolve(c, path);
        free(path);
    }
    if (!rc)
        a->name = xstrdup(a->functions[0].name);
    return rc;
}

/* ---- the top level ---- */

/* "applications:" and "functions:" both add apps, checked for names used twice. */
static int manifest_top_list(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                             void *block)
{
    struct manifest *m = block;
    bool is_apps = strcmp(key, "applications") == 0;
    if (v->type != YAML_SEQUENCE_NODE)
        return manifest_fail(c, v,
                             "\"%s\" must be a list (each entry starting with \"- \"), not %s", key,
                             manifest_kind(v));
    int rc = 0;
    for (yaml_node_item_t *it = v->data.sequence.items.start;
         it < v->data.sequence.items.top && !rc; it++) {
        m->apps = xrealloc(m->apps, (m->app_count + 1) * sizeof(*m->apps));
        struct manifest_app *a = &m->apps[m->app_count++];
        memset(a, 0, sizeof(*a));
        yaml_node_t *item = yaml_document_get_node(c->doc, *it);
        rc = is_apps ? manifest_app(c, item, a) : manifest_top_function(c, item, a);
        for (size_t i = 0; !rc && i + 1 < m->app_count; i++)
            if (strcmp(m->apps[i].name, a->name) == 0)
                rc = manifest_fail(c, item, "the name \"%s\" is used twice", a->name);
    }
    return rc;
}

static int manifest_top_version(struct manifest_ctx *c, const char *key, const yaml_node_t *v,
                                void *block)
{
    (void)block;
    long version;
    int rc = manifest_int(c, key, v, 1, &version);
    if (!rc && version != 1)
        rc = manifest_fail(c, v, "\"version\" must be 1, not %ld", version);
    return rc;
}

static const struct manifest_field manifest_top_fields[] = {
    MANIFEST_CUSTOM("applications", manifest_top_list),
    MANIFEST_CUSTOM("functions", manifest_top_list),
    MANIFEST_CUSTOM("version", manifest_top_version),
    {0},
};

static int manifest_build(struct manifest_ctx *c, struct manifest *m)
{
    yaml_node_t *root = yaml_document_get_root_node(c->doc);
    if (!root)
        return manifest_fail(c, NULL, "the manifest is empty: it needs \"applications:\"");
    int rc = manifest_block(c, root, "the manifest", manifest_top_fields, m);
    if (rc)
        return rc;
    if (m->app_count == 0)
        return manifest_fail(c, root, "the manifest lists no applications");
    return 0;
}

/* ---- variables: ((name)) ------------------------------------------------------------- */

static bool manifest_var_char(char ch)
{
    return isalnum((unsigned char)ch) || ch == '_' || ch == '-' || ch == '.' || ch == '/';
}

/* The length of the variable name at s (after "(("), when "))" closes it; else 0. */
static size_t manifest_var_name(const char *s)
{
    size_t n = 0;
    while (manifest_var_char(s[n]))
        n++;
    return n && s[n] == ')' && s[n + 1] == ')' ? n : 0;
}

static const char *manifest_var_get(const struct manifest_vars *vars, const char *name, size_t n)
{
    for (size_t i = vars ? vars->count : 0; i-- > 0;)
        if (strlen(vars->items[i].key) == n && strncmp(vars->items[i].key, name, n) == 0)
            return vars->items[i].value;
    return NULL;
}

/* Replaces each ((name)) in the document's scalars, once per node (an alias shares its node, so
 * nothing is replaced twice, and a value's own "((" is never read as a variable). The result
 * stays one scalar: a value cannot add keys or entries, whatever it contains. A scalar that is
 * one variable becomes its value as it is, so "instances: ((n))" reads as a number. */
static int manifest_substitute(struct manifest_ctx *c, const struct manifest_vars *vars)
{
    for (yaml_node_t *n = c->doc->nodes.start; n < c->doc->nodes.top; n++) {
        if (n->type != YAML_SCALAR_NODE || !strstr((const char *)n->data.scalar.value, "(("))
            continue;
        const char *s = (const char *)n->data.scalar.value;
        struct buf out = {0};
        buf_printf(&out, "%s", "");
        while (*s) {
            const char *open = strstr(s, "((");
            size_t len = open ? manifest_var_name(open + 2) : 0;
            if (!open) {
                buf_printf(&out, "%s", s);
                break;
            }
            if (!len) {
                buf_printf(&out, "%.*s", (int)(open + 2 - s), s);
                s = open + 2;
                continue;
            }
            const char *value = manifest_var_get(vars, open + 2, len);
            if (!value) {
                buf_free(&out);
                return manifest_fail(c, n,
                                     "no value for the variable ((%.*s)): give it with "
                                     "--var %.*s=VALUE or in a --vars-file",
                                     (int)len, open + 2, (int)len, open + 2);
            }
            buf_printf(&out, "%.*s%s", (int)(open - s), s, value);
            s = open + 2 + len + 2;
        }
        free(n->data.scalar.value);
        n->data.scalar.length = out.len;
        n->data.scalar.value = (yaml_char_t *)buf_steal(&out);
    }
    return 0;
}

static bool manifest_name_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!manifest_var_char(s[i]))
            return false;
    return n > 0;
}

static void manifest_vars_put(struct manifest_vars *vars, const char *key, size_t key_len,
                              const char *value)
{
    vars->items = xrealloc(vars->items, (vars->count + 1) * sizeof(*vars->items));
    vars->items[vars->count].key = xstrndup(key, key_len);
    vars->items[vars->count].value = xstrdup(value);
    vars->count++;
}

int manifest_vars_set(struct manifest_vars *vars, const char *assignment)
{
    const char *eq = strchr(assignment, '=');
    if (!eq || !manifest_name_ok(assignment, (size_t)(eq - assignment)))
        return -1;
    manifest_vars_put(vars, assignment, (size_t)(eq - assignment), eq + 1);
    return 0;
}

/* Reads YAML with libyaml, refusing what no manifest needs and a hostile one would use: more
 * than MANIFEST_MAX_BYTES, or nesting deeper than MANIFEST_MAX_DEPTH (libyaml's loader recurses
 * once per level). Aliases are not expanded: an alias is the node it names, so a
 * "billion laughs" stays as small as its text. On error, *err says what and where. */
static int manifest_yaml_load(const char *text, size_t len, const char *name, yaml_document_t *doc,
                              char **err)
{
    if (len > MANIFEST_MAX_BYTES) {
        *err = xasprintf("%s: larger than %d MB, which no manifest needs", name,
                         MANIFEST_MAX_BYTES >> 20);
        return MANIFEST_ERR_SYNTAX;
    }
    yaml_parser_t parser;
    yaml_event_t ev;
    int depth = 0, rc = 0;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    for (bool end = false; !end && !rc;) {
        if (!yaml_parser_parse(&parser, &ev))
            break; /* the load below says what is wrong */
        if (ev.type == YAML_SEQUENCE_START_EVENT || ev.type == YAML_MAPPING_START_EVENT) {
            if (++depth > MANIFEST_MAX_DEPTH) {
                *err = xasprintf("%s line %d: nested more than %d levels deep, which no manifest "
                                 "needs",
                                 name, (int)ev.start_mark.line + 1, MANIFEST_MAX_DEPTH);
                rc = MANIFEST_ERR_SYNTAX;
            }
        } else if (ev.type == YAML_SEQUENCE_END_EVENT || ev.type == YAML_MAPPING_END_EVENT) {
            depth--;
        }
        end = ev.type == YAML_STREAM_END_EVENT;
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    if (rc)
        return rc;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, doc)) {
        const yaml_mark_t *mark = parser.problem_mark.line || parser.problem_mark.column
                                      ? &parser.problem_mark
                                      : &parser.context_mark;
        *err = xasprintf("%s line %d: not valid YAML: %s%s%s", name, (int)mark->line + 1,
                         parser.problem ? parser.problem : "syntax error",
                         parser.context ? " " : "", parser.context ? parser.context : "");
        rc = MANIFEST_ERR_SYNTAX;
    }
    yaml_parser_delete(&parser);
    return rc;
}

int manifest_vars_load(struct manifest_vars *vars, const char *path, char **err)
{
    char *text;
    size_t len;
    *err = NULL;
    int rc = file_read(path, &text, &len);
    if (rc) {
        *err = xasprintf("cannot read the vars file %s: %s", path, strerror(-rc));
        return MANIFEST_ERR_IO;
    }
    yaml_document_t doc;
    rc = manifest_yaml_load(text, len, path, &doc, err);
    free(text);
    if (rc)
        return rc;
    struct manifest_ctx c = {.name = path, .doc = &doc};
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root && !manifest_is_null(root) && root->type != YAML_MAPPING_NODE)
        rc = manifest_fail(&c, root, "a vars file is a map of NAME: value, not %s",
                           manifest_kind(root));
    for (yaml_node_pair_t *p =
             root && root->type == YAML_MAPPING_NODE ? root->data.mapping.pairs.start : NULL;
         p && p < root->data.mapping.pairs.top && !rc; p++) {
        yaml_node_t *k = yaml_document_get_node(&doc, p->key);
        yaml_node_t *v = yaml_document_get_node(&doc, p->value);
        const char *key = manifest_scalar(k), *value = manifest_scalar(v);
        if (!key || !manifest_name_ok(key, strlen(key)))
            rc = manifest_fail(&c, k, "a variable's name is letters, digits and _-./");
        else if (!value)
            rc = manifest_fail(&c, v, "the variable %s must be a single value, not %s", key,
                               manifest_kind(v));
        else
            manifest_vars_put(vars, key, strlen(key), manifest_is_null(v) ? "" : value);
    }
    yaml_document_delete(&doc);
    if (rc)
        *err = c.err;
    return rc;
}

void manifest_vars_free(struct manifest_vars *vars)
{
    for (size_t i = 0; i < vars->count; i++) {
        free(vars->items[i].key);
        free(vars->items[i].value);
    }
    free(vars->items);
    vars->items = NULL;
    vars->count = 0;
}

int manifest_parse(const char *text, size_t len, const char *name, const char *dir,
                   const struct manifest_vars *vars, struct manifest **out, char **err)
{
    yaml_document_t doc;
    struct manifest_ctx c = {.name = name, .dir = dir, .doc = &doc};
    int rc;
    *out = NULL;
    *err = NULL;
    rc = manifest_yaml_load(text, len, name, &doc, err);
    if (rc)
        return rc;
    struct manifest *m = xcalloc(1, sizeof(*m));
    m->file = xstrdup(name);
    m->dir = xstrdup(dir && *dir ? dir : ".");
    rc = manifest_substitute(&c, vars);
    if (!rc)
        rc = manifest_build(&c, m);
    yaml_document_delete(&doc);
    buf_free(&c.warned);
    if (rc) {
        *err = c.err ? c.err : xasprintf("%s: invalid manifest", name);
        manifest_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

int manifest_load(const char *path, const struct manifest_vars *vars, struct manifest **out,
                  char **err)
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
    rc = manifest_parse(text, len, path, dir, vars, out, err);
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
    free(f->idle_grace);
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
        free(a->docker_image);
        free(a->docker_username);
        manifest_strings_free(a->buildpacks, a->buildpack_count);
        manifest_kv_free(a->env, a->env_count);
        for (size_t j = 0; j < a->route_count; j++) {
            free(a->routes[j].route);
            free(a->routes[j].balance);
            free(a->routes[j].protocol);
        }
        free(a->routes);
        free(a->stack);
        free(a->metadata_json);
        manifest_strings_free(a->warnings, a->warning_count);
        free(a->health_check_type);
        free(a->health_check_http_endpoint);
        manifest_checks_free(&a->checks);
        for (size_t j = 0; j < a->service_count; j++) {
            free(a->services[j].name);
            free(a->services[j].binding_name);
            free(a->services[j].parameters);
        }
        free(a->services);
        for (size_t j = 0; j < a->process_count; j++) {
            struct manifest_process *p = &a->processes[j];
            free(p->type);
            free(p->command);
            free(p->health_check_type);
            free(p->health_check_http_endpoint);
            manifest_checks_free(&p->checks);
        }
        free(a->processes);
        for (size_t j = 0; j < a->function_count; j++)
            manifest_function_free(&a->functions[j]);
        free(a->functions);
        for (size_t j = 0; j < a->sidecar_count; j++) {
            free(a->sidecars[j].name);
            manifest_strings_free(a->sidecars[j].process_types, a->sidecars[j].process_type_count);
            free(a->sidecars[j].command);
        }
        free(a->sidecars);
    }
    free(m->apps);
    free(m->file);
    free(m->dir);
    free(m);
}
