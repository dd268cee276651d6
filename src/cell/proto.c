/* cell: the start request's body, both ways (cell.h, docs/bus.md "Cells"). */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blobs/blobs.h"
#include "cell/cell.h"
#include "common/log.h"
#include "common/util.h"

#define CELL__TEXT_MAX (64 * 1024)
#define CELL__LIST_MAX 1024

static const char *const cell__health_names[] = {
    [HEALTH_PORT] = "port", [HEALTH_HTTP] = "http", [HEALTH_PROCESS] = "process"};

static json_t *cell__strv(const char *const *v)
{
    json_t *a = json_array();
    for (size_t i = 0; v && v[i]; i++)
        json_array_append_new(a, json_string(v[i]));
    return a;
}

static void cell__set_str(json_t *o, const char *key, const char *v)
{
    if (v)
        json_object_set_new(o, key, json_string(v));
}

json_t *cell_launch_to_json(const struct cell_launch *l)
{
    json_t *o = json_object();
    cell__set_str(o, "app_guid", l->app_guid);
    cell__set_str(o, "app_name", l->app_name);
    cell__set_str(o, "process_type", l->process_type);
    json_object_set_new(o, "index", json_integer(l->index));
    cell__set_str(o, "instance_guid", l->instance_guid);
    cell__set_str(o, "droplet_guid", l->droplet_guid);
    cell__set_str(o, "droplet_digest", l->droplet_digest);
    cell__set_str(o, "droplet_path", l->droplet_path);
    if (l->blob_urls && l->blob_urls[0])
        json_object_set_new(o, "blob_urls", cell__strv(l->blob_urls));
    cell__set_str(o, "command", l->command);
    json_object_set_new(o, "memory_mb", json_integer(l->memory_mb));
    json_object_set_new(o, "disk_mb", json_integer(l->disk_mb));
    json_object_set_new(o, "health", json_string(cell__health_names[l->health]));
    cell__set_str(o, "health_endpoint", l->health_endpoint);
    json_object_set_new(o, "start_timeout_s", json_integer(l->start_timeout_s));
    json_object_set_new(o, "health_interval_ms", json_integer(l->health_interval_ms));
    json_object_set_new(o, "health_timeout_ms", json_integer(l->health_timeout_ms));
    if (l->readiness) {
        json_object_set_new(o, "readiness", json_string(cell__health_names[l->readiness_type]));
        cell__set_str(o, "readiness_endpoint", l->readiness_endpoint);
        json_object_set_new(o, "readiness_interval_ms", json_integer(l->readiness_interval_ms));
        json_object_set_new(o, "readiness_timeout_ms", json_integer(l->readiness_timeout_ms));
    }
    if (l->log_rate_limited)
        json_object_set_new(o, "log_rate_limit", json_integer(l->log_rate_limit));
    json_t *sidecars = json_array();
    for (size_t i = 0; i < l->n_sidecars; i++)
        json_array_append_new(sidecars, json_pack("{s:s,s:s,s:i}", "name", l->sidecars[i].name,
                                                  "command", l->sidecars[i].command, "memory_mb",
                                                  l->sidecars[i].memory_mb));
    json_object_set_new(o, "sidecars", sidecars);
    json_object_set_new(o, "uris", cell__strv(l->uris));
    cell__set_str(o, "events_url", l->events_url);
    cell__set_str(o, "events_token", l->events_token);
    json_object_set_new(o, "user_env", cell__strv(l->user_env));
    cell__set_str(o, "vcap_services", l->vcap_services_json);
    return o;
}

/* ---- reading: every field checked ------------------------------------------------------- */

struct cell__reader {
    json_t *o;
    char *err;
    size_t errsize;
    int rc;
};

static void cell__fail(struct cell__reader *r, const char *field, const char *rule)
{
    if (r->rc == 0)
        snprintf(r->err, r->errsize, "the start request's \"%s\" %s", field, rule);
    r->rc = -EINVAL;
}

static bool cell__guid_valid(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (size_t i = 0; i < 36; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !isxdigit((unsigned char)s[i]))
            return false;
    }
    return true;
}

static bool cell__name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("-_./", s[i]))
            return false;
    return true;
}

/* A string field (NULL when absent and optional). */
static const char *cell__str(struct cell__reader *r, const char *key, bool required)
{
    json_t *v = json_object_get(r->o, key);
    if (!v || json_is_null(v)) {
        if (required)
            cell__fail(r, key, "is missing");
        return NULL;
    }
    const char *s = json_string_value(v);
    if (!s || strlen(s) > CELL__TEXT_MAX) {
        cell__fail(r, key, "must be a string of at most 64 KiB");
        return NULL;
    }
    return s;
}

static int64_t cell__int(struct cell__reader *r, const char *key, int64_t min, int64_t max)
{
    json_t *v = json_object_get(r->o, key);
    if (!v)
        return min < 0 ? 0 : min;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        char rule[96];
        snprintf(rule, sizeof rule, "must be a whole number from %lld to %lld", (long long)min,
                 (long long)max);
        cell__fail(r, key, rule);
        return min < 0 ? 0 : min;
    }
    return json_integer_value(v);
}

static enum health_check_type cell__health(struct cell__reader *r, const char *key)
{
    const char *s = cell__str(r, key, false);
    for (size_t i = 0; s && i < ARRAY_SIZE(cell__health_names); i++)
        if (!strcmp(s, cell__health_names[i]))
            return (enum health_check_type)i;
    if (s)
        cell__fail(r, key, "must be port, http or process");
    return HEALTH_PORT;
}

/* The controllers' API URLs a droplet is fetched from: where the cell sends its token. */
static bool cell__urls_valid(const char *const *urls)
{
    size_t n = 0;
    for (; urls[n]; n++) {
        const char *u = urls[n];
        if (n >= 8 || strlen(u) > 1024 || (strncmp(u, "http://", 7) && strncmp(u, "https://", 8)))
            return false;
        for (const char *c = u; *c; c++)
            if ((unsigned char)*c <= ' ' || (unsigned char)*c >= 0x7f)
                return false;
    }
    return true;
}

/* A NULL-terminated list of the array's strings (pointing into it). */
static const char **cell__strings(struct cell__reader *r, const char *key)
{
    json_t *a = json_object_get(r->o, key);
    size_t n = json_array_size(a);
    if (a && (!json_is_array(a) || n > CELL__LIST_MAX)) {
        cell__fail(r, key, "must be a list of at most 1024 strings");
        n = 0;
    }
    const char **v = xcalloc(n + 1, sizeof *v);
    for (size_t i = 0; i < n; i++) {
        v[i] = json_string_value(json_array_get(a, i));
        if (!v[i] || strlen(v[i]) > CELL__TEXT_MAX) {
            cell__fail(r, key, "must be a list of strings of at most 64 KiB each");
            v[i] = NULL;
            break;
        }
    }
    return v;
}

static struct instance_sidecar *cell__sidecars(struct cell__reader *r, size_t *n_out)
{
    json_t *a = json_object_get(r->o, "sidecars");
    size_t n = json_array_size(a);
    if (a && (!json_is_array(a) || n > 16)) {
        cell__fail(r, "sidecars", "must be a list of at most 16");
        n = 0;
    }
    struct instance_sidecar *v = xcalloc(n + 1, sizeof *v);
    for (size_t i = 0; i < n; i++) {
        struct cell__reader sr = {json_array_get(a, i), r->err, r->errsize, 0};
        v[i].name = cell__str(&sr, "name", true);
        v[i].command = cell__str(&sr, "command", true);
        v[i].memory_mb = (int)cell__int(&sr, "memory_mb", 0, 1 << 20);
        if (sr.rc == 0 && !cell__name_valid(v[i].name))
            cell__fail(&sr, "name", "must be 1 to 63 of letters, digits, '-', '_', '.'");
        if (sr.rc < 0 && r->rc == 0)
            r->rc = sr.rc;
    }
    *n_out = n;
    return v;
}

int cell_launch_from_json(json_t *obj, struct cell_launch_doc *out, char *err, size_t errsize)
{
    memset(out, 0, sizeof *out);
    if (!json_is_object(obj)) {
        snprintf(err, errsize, "the start request's \"launch\" must be an object");
        return -EINVAL;
    }
    out->json = json_incref(obj);
    struct cell__reader r = {obj, err, errsize, 0};
    struct cell_launch *l = &out->l;
    l->app_guid = cell__str(&r, "app_guid", true);
    l->app_name = cell__str(&r, "app_name", true);
    l->process_type = cell__str(&r, "process_type", true);
    l->index = (int)cell__int(&r, "index", 0, 100000);
    l->instance_guid = cell__str(&r, "instance_guid", true);
    l->droplet_guid = cell__str(&r, "droplet_guid", true);
    l->droplet_digest = cell__str(&r, "droplet_digest", false);
    l->droplet_path = cell__str(&r, "droplet_path", true);
    l->command = cell__str(&r, "command", true);
    l->memory_mb = (int)cell__int(&r, "memory_mb", 0, 1 << 20);
    l->disk_mb = (int)cell__int(&r, "disk_mb", 0, 1 << 24);
    l->health = cell__health(&r, "health");
    l->health_endpoint = cell__str(&r, "health_endpoint", false);
    l->start_timeout_s = (int)cell__int(&r, "start_timeout_s", 0, 86400);
    l->health_interval_ms = (int)cell__int(&r, "health_interval_ms", 0, 86400000);
    l->health_timeout_ms = (int)cell__int(&r, "health_timeout_ms", 0, 86400000);
    l->readiness = json_object_get(obj, "readiness") != NULL;
    l->readiness_type = cell__health(&r, "readiness");
    l->readiness_endpoint = cell__str(&r, "readiness_endpoint", false);
    l->readiness_interval_ms = (int)cell__int(&r, "readiness_interval_ms", 0, 86400000);
    l->readiness_timeout_ms = (int)cell__int(&r, "readiness_timeout_ms", 0, 86400000);
    l->log_rate_limited = json_object_get(obj, "log_rate_limit") != NULL;
    l->log_rate_limit = cell__int(&r, "log_rate_limit", -1, INT64_MAX);
    out->sidecars = cell__sidecars(&r, &l->n_sidecars);
    l->sidecars = out->sidecars;
    out->uris = cell__strings(&r, "uris");
    l->uris = out->uris;
    l->events_url = cell__str(&r, "events_url", false);
    l->events_token = cell__str(&r, "events_token", false);
    out->blob_urls = cell__strings(&r, "blob_urls");
    l->blob_urls = out->blob_urls;
    out->user_env = cell__strings(&r, "user_env");
    l->user_env = out->user_env;
    l->vcap_services_json = cell__str(&r, "vcap_services", false);
    if (r.rc == 0) {
        size_t n_env = 0;
        while (out->user_env[n_env])
            n_env++;
        if (n_env % 2)
            cell__fail(&r, "user_env", "must hold pairs: name, value, name, value, ...");
        else if (!cell__guid_valid(l->app_guid))
            cell__fail(&r, "app_guid", "must be a guid");
        else if (!cell__guid_valid(l->instance_guid))
            cell__fail(&r, "instance_guid", "must be a guid");
        else if (!cell__guid_valid(l->droplet_guid))
            cell__fail(&r, "droplet_guid", "must be a guid");
        else if (!cell__name_valid(l->process_type) || strchr(l->process_type, '.'))
            cell__fail(&r, "process_type", "must be 1 to 63 of letters, digits, '-', '_', '/'");
        else if (l->droplet_path[0] != '/' || strstr(l->droplet_path, "/../"))
            cell__fail(&r, "droplet_path", "must be an absolute path without \"..\"");
        else if (!*l->command)
            cell__fail(&r, "command", "must not be empty");
        else if (l->droplet_digest && !blob_digest_valid(l->droplet_digest))
            cell__fail(&r, "droplet_digest", "must be sha256: and 64 lowercase hex digits");
        else if (!cell__urls_valid(out->blob_urls))
            cell__fail(&r, "blob_urls",
                       "must be at most 8 http:// or https:// URLs of at most 1024 printable "
                       "characters each");
    }
    if (r.rc < 0)
        cell_launch_doc_clear(out);
    return r.rc;
}

void cell_launch_doc_clear(struct cell_launch_doc *d)
{
    free(d->blob_urls);
    free(d->uris);
    free(d->user_env);
    free(d->sidecars);
    json_decref(d->json);
    memset(d, 0, sizeof *d);
}

int cell_start_request(json_t *launch, struct cell_launch_doc *d, char *err, size_t errsize,
                       const char **refuse)
{
    *refuse = NULL;
    if (cell_launch_from_json(launch, d, err, errsize) == 0)
        return 0;
    const char *guid = json_string_value(json_object_get(launch, "instance_guid"));
    log_warning("[CELL] refused a start request: %s", err);
    if (guid && strlen(guid) == 36)
        *refuse = guid;
    return -EINVAL;
}

json_t *cell_state_message(const char *guid, const char *state, const char *addr,
                           const struct instance_exit *ex, const char *why)
{
    json_t *m = json_pack("{s:s,s:s,s:s}", "type", "state", "guid", guid, "state", state);
    if (addr && *addr)
        json_object_set_new(m, "addr", json_string(addr));
    if (ex) {
        json_object_set_new(m, "exit_status", json_integer(ex->exit_status));
        json_object_set_new(m, "term_signal", json_integer(ex->term_signal));
    }
    if (why || (ex && ex->reason))
        json_object_set_new(m, "reason", json_string(why ? why : ex->reason));
    return m;
}
