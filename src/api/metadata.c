/* Labels and annotations on apps, as Cloud Foundry's metadata (docs/api.md "Metadata"):
 *   GET   /v1/apps/NAME/metadata  {"labels": {...}, "annotations": {...}}
 *   PATCH /v1/apps/NAME/metadata  {"labels": {"K": "V" | null}, "annotations": {...}}: the keys
 *         given are set, or removed with null; the others stay
 *   GET   /v1/apps?label_selector=SELECTOR  only the apps whose labels match
 * `GET /v1/apps/NAME` shows them under "metadata". They are one document per app (kind
 * "metadata.app", id its guid), gone with the app. Keys, values and selectors follow Cloud
 * Foundry's rules, which are Kubernetes': api_metadata_key_valid, api_labels_match. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/core_internal.h"
#include "common/util.h"
#include "logs/logs.h"
#include "store/store.h"

#define METADATA_KIND "metadata.app"
#define METADATA_MAX_KEYS 64 /* labels, and annotations, per app */
#define METADATA_NAME_MAX 63
#define METADATA_PREFIX_MAX 253
#define METADATA_ANNOTATION_MAX 5000

/* A name, or a label's value: at most 63 of [A-Za-z0-9_.-], starting and ending with [A-Za-z0-9]
 * (a value may also be empty). */
static bool metadata__name_valid(const char *s, size_t n, bool empty_ok)
{
    if (n == 0)
        return empty_ok;
    if (n > METADATA_NAME_MAX || !isalnum((unsigned char)s[0]) || !isalnum((unsigned char)s[n - 1]))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("-_.", s[i]))
            return false;
    return true;
}

/* A prefix: a DNS subdomain (lowercase labels of [a-z0-9-] joined by dots), at most 253. */
static bool metadata__prefix_valid(const char *s, size_t n)
{
    if (n == 0 || n > METADATA_PREFIX_MAX)
        return false;
    size_t label = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '.') {
            if (label == 0 || s[i - 1] == '-')
                return false;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (c == '-' && label > 0)) {
            label++;
        } else {
            return false;
        }
    }
    return label > 0 && s[n - 1] != '-';
}

bool api_metadata_key_valid(const char *key)
{
    const char *slash = strchr(key, '/');
    if (!slash)
        return metadata__name_valid(key, strlen(key), false);
    return metadata__prefix_valid(key, (size_t)(slash - key)) &&
           metadata__name_valid(slash + 1, strlen(slash + 1), false);
}

bool api_label_value_valid(const char *value)
{
    return metadata__name_valid(value, strlen(value), true);
}

/* ---- selectors ---- */

static const char *metadata__skip_space(const char *p)
{
    while (*p == ' ')
        p++;
    return p;
}

/* The token at *p made of key or value characters ([A-Za-z0-9_.-/]), copied into out. */
static bool metadata__token(const char **p, char *out, size_t cap)
{
    const char *s = metadata__skip_space(*p), *e = s;
    while (*e && (isalnum((unsigned char)*e) || strchr("-_./", *e)))
        e++;
    if ((size_t)(e - s) >= cap)
        return false;
    memcpy(out, s, (size_t)(e - s));
    out[e - s] = '\0';
    *p = metadata__skip_space(e);
    return true;
}

/* "in (a, b)" / "notin (a, b)" after the key: whether the label's value is in the set. */
static int metadata__set_has(const char **p, const char *value, char *err, size_t errlen)
{
    if (**p != '(') {
        snprintf(err, errlen, "a set is written in parentheses: env in (prod,staging)");
        return -EINVAL;
    }
    (*p)++;
    int found = 0;
    for (;;) {
        char v[METADATA_NAME_MAX + 1];
        if (!metadata__token(p, v, sizeof v) || !*v || !api_label_value_valid(v)) {
            snprintf(err, errlen, "a value in a set is at most 63 letters, digits, '-', '_', '.'");
            return -EINVAL;
        }
        found |= value && !strcmp(value, v);
        if (**p == ')') {
            (*p)++;
            return found;
        }
        if (**p != ',') {
            snprintf(err, errlen, "a set's values are separated by commas and closed by ')'");
            return -EINVAL;
        }
        (*p)++;
    }
}

int api_labels_match(json_t *labels, const char *selector, char *err, size_t errlen)
{
    const char *p = metadata__skip_space(selector);
    if (!*p) {
        snprintf(err, errlen, "the label selector is empty");
        return -EINVAL;
    }
    int match = 1;
    while (*p) {
        bool negated = *p == '!';
        if (negated)
            p++;
        char key[METADATA_PREFIX_MAX + METADATA_NAME_MAX + 2];
        if (!metadata__token(&p, key, sizeof key) || !api_metadata_key_valid(key)) {
            snprintf(err, errlen,
                     "\"%.64s\": a requirement is KEY, !KEY, KEY=VALUE, KEY!=VALUE, KEY in "
                     "(V1,V2) or KEY notin (V1,V2), separated by commas",
                     selector);
            return -EINVAL;
        }
        const char *value = json_string_value(json_object_get(labels, key));
        int ok;
        if (negated) {
            ok = value == NULL;
        } else if (*p == ',' || !*p) {
            ok = value != NULL;
        } else if (p[0] == '=' || (p[0] == '!' && p[1] == '=')) {
            bool equal = p[0] == '=';
            p += p[1] == '=' ? 2 : 1;
            char want[METADATA_NAME_MAX + 1];
            if (!metadata__token(&p, want, sizeof want) || !api_label_value_valid(want)) {
                snprintf(err, errlen, "a label value is at most 63 letters, digits, '-', '_', '.'");
                return -EINVAL;
            }
            ok = equal ? value && !strcmp(value, want) : !value || strcmp(value, want) != 0;
        } else if (!strncmp(p, "in", 2) || !strncmp(p, "notin", 5)) {
            bool in = p[0] == 'i';
            p = metadata__skip_space(p + (in ? 2 : 5));
            int has = metadata__set_has(&p, value, err, errlen);
            if (has < 0)
                return has;
            ok = in ? has : !has;
            p = metadata__skip_space(p);
        } else {
            snprintf(err, errlen, "unexpected \"%.16s\" in the label selector after %s", p, key);
            return -EINVAL;
        }
        match &= ok;
        if (*p == ',') {
            p = metadata__skip_space(p + 1);
            if (!*p) {
                snprintf(err, errlen, "the label selector ends with a comma");
                return -EINVAL;
            }
        } else if (*p) {
            snprintf(err, errlen, "requirements of a label selector are separated by commas");
            return -EINVAL;
        }
    }
    return match;
}

/* ---- the documents ---- */

json_t *api_core__metadata_get(struct api_core *core, const char *app_guid)
{
    char *text = NULL;
    json_t *m = NULL; /* the kind held whole: read from memory, kept fresh off the loop */
    if (store_doc_hold(core->cfg.store, METADATA_KIND) == 0 &&
        store_doc_get(core->cfg.store, METADATA_KIND, app_guid, &text) == 0)
        m = json_loads(text, 0, NULL);
    free(text);
    if (!json_is_object(m)) {
        json_decref(m);
        m = json_object();
    }
    for (int i = 0; i < 2; i++) {
        const char *part = i ? "annotations" : "labels";
        if (!json_is_object(json_object_get(m, part)))
            json_object_set_new(m, part, json_object());
    }
    return m;
}

void api_core__metadata_forget(struct api_core *core, const char *app_guid)
{
    store_doc_delete_async(core->cfg.store, METADATA_KIND, app_guid, NULL, NULL);
}

/* Applies one part of a PATCH ({"K": "V" | null}) to have; false after answering 422. */
static bool metadata__apply(struct api_request *req, json_t *have, json_t *given, bool labels)
{
    const char *what = labels ? "label" : "annotation";
    if (!given)
        return true;
    if (!json_is_object(given)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "\"%ss\" is an object of keys and values (null removes a key)", what);
        return false;
    }
    const char *key;
    json_t *v;
    json_object_foreach(given, key, v)
    {
        if (!api_metadata_key_valid(key)) {
            api_respond_error(req, SKIFF_E_INVALID_VALUE,
                              "%s key \"%.80s\": an optional DNS prefix and '/', then a name of "
                              "at most 63 letters, digits, '-', '_' and '.' that starts and ends "
                              "with a letter or digit (like example.com/team or env)",
                              what, key);
            return false;
        }
        if (json_is_null(v)) {
            json_object_del(have, key);
            continue;
        }
        const char *s = json_string_value(v);
        if (!s || (labels && !api_label_value_valid(s)) ||
            (!labels && strlen(s) > METADATA_ANNOTATION_MAX)) {
            api_respond_error(req, SKIFF_E_INVALID_VALUE,
                              labels ? "label %s: the value is text of at most 63 letters, "
                                       "digits, '-', '_' and '.' (null removes the label)"
                                     : "annotation %s: the value is text of at most 5000 "
                                       "characters (null removes the annotation)",
                              key);
            return false;
        }
        json_object_set(have, key, v);
    }
    if (json_object_size(have) > METADATA_MAX_KEYS) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "an app has at most %d %ss",
                          METADATA_MAX_KEYS, what);
        return false;
    }
    return true;
}

static void metadata__get(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    struct store_app *app = api_core__find_app(core, req);
    if (!app)
        return;
    api_respond_json(req, 200, api_core__metadata_get(core, app->guid));
    store_app_free(app);
}

/* A PATCH whose document is being written: answered once it is. */
struct metadata_put {
    struct api_request *req;
    json_t *m;
};

static void metadata__stored(void *ctx, int rc)
{
    struct metadata_put *put = ctx;
    if (rc < 0) {
        json_decref(put->m);
        api_respond_error(put->req, rc, "cannot store the metadata (see skiffd's output)");
    } else {
        api_respond_json(put->req, 200, put->m);
    }
    free(put);
}

static void metadata__patch(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    static const char *const fields[] = {"labels", "annotations", NULL};
    struct store_app *app = NULL;
    json_t *m = NULL;
    if (!api_json_check_fields(req, body, fields) || !(app = api_core__find_app(core, req)))
        goto done;
    m = api_core__metadata_get(core, app->guid);
    if (!metadata__apply(req, json_object_get(m, "labels"), json_object_get(body, "labels"),
                         true) ||
        !metadata__apply(req, json_object_get(m, "annotations"),
                         json_object_get(body, "annotations"), false))
        goto done;
    char *text = json_dumps(m, JSON_COMPACT | JSON_SORT_KEYS);
    struct metadata_put *put = xcalloc(1, sizeof *put);
    put->req = req;
    put->m = json_incref(m);
    /* queued: reads see it at once, the answer waits for the store */
    int rc =
        store_doc_put_async(core->cfg.store, METADATA_KIND, app->guid, text, metadata__stored, put);
    free(text);
    if (rc < 0) {
        json_decref(put->m);
        free(put);
        api_respond_error(req, rc, "cannot store the metadata (see skiffd's output)");
    }
done:
    json_decref(m);
    json_decref(body);
    store_app_free(app);
}

void api_core__metadata_register(struct api_core *core)
{
    api_route_add(core->api, "GET", "/v1/apps/*/metadata",
                  API_PERM(AUTH_PERM_SPACE_READ) | API_SCOPE_APP, metadata__get, core);
    api_route_add(core->api, "PATCH", "/v1/apps/*/metadata",
                  API_PERM(AUTH_PERM_SPACE_DEVELOP) | API_SCOPE_APP, metadata__patch, core);
    store_doc_hold(core->cfg.store, METADATA_KIND); /* read now, while the server answers */
}
