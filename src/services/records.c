/* services: the records in the store, the sealing of secrets, an app's VCAP_SERVICES. */
#include <errno.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "services/services.h"
#include "store/store.h"

#define SERVICES_SEAL_PREFIX "sb1:"

struct services {
    struct store *store;
    unsigned char key[crypto_secretbox_KEYBYTES];
};

static int services__load_key(const char *home, unsigned char key[crypto_secretbox_KEYBYTES])
{
    char *path = xasprintf("%s/services.key", home);
    char *data = NULL;
    size_t len = 0;
    int rc = file_read(path, &data, &len);
    if (rc == 0 && len == crypto_secretbox_KEYBYTES) {
        memcpy(key, data, len);
    } else if (rc == -ENOENT) {
        randombytes_buf(key, crypto_secretbox_KEYBYTES);
        rc = file_write_atomic(path, key, crypto_secretbox_KEYBYTES, 0600);
        if (rc < 0)
            log_error("cannot write %s: %s", path, skiff_strerror(rc));
    } else {
        log_error("%s is not a key of %d bytes: move it away to make a new one (what was sealed "
                  "with it is then lost)",
                  path, crypto_secretbox_KEYBYTES);
        rc = -EINVAL;
    }
    if (data) {
        sodium_memzero(data, len);
        free(data);
    }
    free(path);
    return rc < 0 ? rc : 0;
}

int services_open(struct store *st, const char *home, struct services **out)
{
    if (sodium_init() < 0)
        return -ENOMEM;
    services_osb_init();
    struct services *s = xcalloc(1, sizeof *s);
    s->store = st;
    int rc = services__load_key(home, s->key);
    if (rc < 0) {
        free(s);
        return rc;
    }
    if (st) { /* the kinds services_get reads by id, held whole from now on (store_doc_hold) */
        store_doc_hold(st, SERVICES_KIND_BROKER);
        store_doc_hold(st, SERVICES_KIND_INSTANCE);
        store_doc_hold(st, SERVICES_KIND_BINDING);
    }
    *out = s;
    return 0;
}

void services_free(struct services *s)
{
    if (!s)
        return;
    sodium_memzero(s->key, sizeof s->key);
    free(s);
}

bool services_name_valid(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > 255 || name[0] == ' ' || name[n - 1] == ' ')
        return false;
    for (const char *p = name; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.' || c == ' '))
            return false;
    }
    return true;
}

/* ---- records ------------------------------------------------------------------------------ */

int services_put_async(struct services *s, const char *kind, const json_t *rec, store_done_fn *done,
                       void *ctx)
{
    const char *guid = json_string_value(json_object_get(rec, "guid"));
    if (!guid)
        return -EINVAL;
    char *text = json_dumps(rec, JSON_COMPACT);
    int rc = store_doc_put_async(s->store, kind, guid, text, done, ctx);
    free(text);
    return rc;
}

int services_delete_async(struct services *s, const char *kind, const char *guid,
                          store_done_fn *done, void *ctx)
{
    return store_doc_delete_async(s->store, kind, guid, done, ctx);
}

struct services_reading {
    services_rec_fn *done;
    void *ctx;
};

static void services__read(void *ctx, int rc, const char *json)
{
    struct services_reading *r = ctx;
    json_t *rec = rc == 0 ? json_loads(json, 0, NULL) : NULL;
    if (rec && !json_is_object(rec)) {
        json_decref(rec);
        rec = NULL;
    }
    r->done(r->ctx, rec);
    free(r);
}

int services_get_stored_async(struct services *s, const char *kind, const char *guid,
                              services_rec_fn *done, void *ctx)
{
    struct services_reading *r = xcalloc(1, sizeof *r);
    r->done = done;
    r->ctx = ctx;
    int rc = store_doc_get_fresh_async(s->store, kind, guid, services__read, r);
    if (rc < 0)
        free(r);
    return rc;
}

/* A write no one waits for: the store logged a refusal, and reads show the record as the
 * server has it again. */
static void services__unheard(void *ctx, int rc)
{
    (void)ctx;
    (void)rc;
}

int services_put(struct services *s, const char *kind, const json_t *rec)
{
    return services_put_async(s, kind, rec, services__unheard, NULL);
}

int services_delete(struct services *s, const char *kind, const char *guid)
{
    return services_delete_async(s, kind, guid, services__unheard, NULL);
}

json_t *services_get(struct services *s, const char *kind, const char *guid)
{
    char *text = NULL; /* the kind held whole: read from memory, kept fresh off the loop */
    if (!guid || store_doc_hold(s->store, kind) < 0 ||
        store_doc_get(s->store, kind, guid, &text) < 0)
        return NULL;
    json_t *rec = json_loads(text, 0, NULL);
    free(text);
    return json_is_object(rec) ? rec : (json_decref(rec), NULL);
}

struct services__filter {
    const char *field, *value;
    json_t *out;
};

static int services__collect(void *ctx, const char *id, const char *json)
{
    struct services__filter *f = ctx;
    json_t *rec = json_loads(json, 0, NULL);
    if (!json_is_object(rec)) {
        json_decref(rec);
        return 0;
    }
    const char *v = f->field ? json_string_value(json_object_get(rec, f->field)) : NULL;
    if (!f->field || (v && f->value && !strcmp(v, f->value)) ||
        (!f->value && json_is_null(json_object_get(rec, f->field))))
        json_array_append_new(f->out, rec);
    else
        json_decref(rec);
    return 0;
}

static int services__by_creation(const void *a, const void *b)
{
    const json_t *x = *(const json_t *const *)a, *y = *(const json_t *const *)b;
    json_int_t cx = json_integer_value(json_object_get(x, "created_at"));
    json_int_t cy = json_integer_value(json_object_get(y, "created_at"));
    if (cx != cy)
        return cx < cy ? -1 : 1;
    return strcmp(json_string_value(json_object_get(x, "guid")),
                  json_string_value(json_object_get(y, "guid")));
}

json_t *services_list(struct services *s, const char *kind, const char *field, const char *value)
{
    struct services__filter f = {field, value, json_array()};
    if (store_doc_each(s->store, kind, services__collect, &f) < 0) {
        json_decref(f.out);
        return NULL;
    }
    size_t n = json_array_size(f.out);
    if (n < 2)
        return f.out;
    json_t **items = xcalloc(n, sizeof *items);
    for (size_t i = 0; i < n; i++)
        items[i] = json_incref(json_array_get(f.out, i));
    qsort(items, n, sizeof *items, services__by_creation);
    json_t *sorted = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(sorted, items[i]);
    free(items);
    json_decref(f.out);
    return sorted;
}

json_t *services_find(struct services *s, const char *kind, const char *space_guid,
                      const char *name)
{
    if (!name)
        return NULL;
    json_t *all = services_list(s, kind, "space_guid", space_guid);
    json_t *found = NULL;
    size_t i;
    json_t *rec;
    json_array_foreach(all, i, rec)
    {
        const char *n = json_string_value(json_object_get(rec, "name"));
        const char *g = json_string_value(json_object_get(rec, "guid"));
        if ((n && !strcmp(n, name)) || (g && !strcmp(g, name))) {
            found = json_incref(rec);
            break;
        }
    }
    json_decref(all);
    return found;
}

/* ---- secrets ------------------------------------------------------------------------------ */

char *services_seal(struct services *s, const json_t *value)
{
    char *plain = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);
    size_t plen = strlen(plain);
    size_t blen = crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES + plen;
    unsigned char *box = xmalloc(blen);
    randombytes_buf(box, crypto_secretbox_NONCEBYTES);
    crypto_secretbox_easy(box + crypto_secretbox_NONCEBYTES, (const unsigned char *)plain, plen,
                          box, s->key);
    sodium_memzero(plain, plen);
    free(plain);
    size_t tlen = sodium_base64_ENCODED_LEN(blen, sodium_base64_VARIANT_ORIGINAL);
    char *text = xmalloc(strlen(SERVICES_SEAL_PREFIX) + tlen);
    strcpy(text, SERVICES_SEAL_PREFIX);
    sodium_bin2base64(text + strlen(SERVICES_SEAL_PREFIX), tlen, box, blen,
                      sodium_base64_VARIANT_ORIGINAL);
    free(box);
    return text;
}

json_t *services_unseal(struct services *s, const char *text)
{
    if (!text || !str_has_prefix(text, SERVICES_SEAL_PREFIX))
        return NULL;
    text += strlen(SERVICES_SEAL_PREFIX);
    size_t cap = strlen(text), blen = 0;
    unsigned char *box = xmalloc(cap + 1);
    if (sodium_base642bin(box, cap, text, cap, NULL, &blen, NULL, sodium_base64_VARIANT_ORIGINAL) <
            0 ||
        blen < crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES) {
        free(box);
        return NULL;
    }
    size_t plen = blen - crypto_secretbox_NONCEBYTES - crypto_secretbox_MACBYTES;
    char *plain = xmalloc(plen + 1);
    json_t *value = NULL;
    if (crypto_secretbox_open_easy((unsigned char *)plain, box + crypto_secretbox_NONCEBYTES,
                                   blen - crypto_secretbox_NONCEBYTES, box, s->key) == 0)
        value = json_loadb(plain, plen, JSON_DECODE_ANY, NULL);
    sodium_memzero(plain, plen);
    free(plain);
    free(box);
    return value;
}

#define SERVICES_SHARED_ID "key"
#define SERVICES_KEY_CHECK_TEXT "the key of this platform's services"

json_t *services_shared(struct services *s, const char *kind, const json_t *plain, int *rc)
{
    char *text = NULL;
    *rc = store_doc_get_fresh(s->store, kind, SERVICES_SHARED_ID, &text);
    if (*rc == -ENOENT) {
        char *sealed = services_seal(s, plain);
        json_t *doc = json_pack("{s:s}", "sealed", sealed);
        char *body = json_dumps(doc, JSON_COMPACT);
        json_decref(doc);
        sodium_memzero(sealed, strlen(sealed));
        free(sealed);
        *rc = store_doc_create(s->store, kind, SERVICES_SHARED_ID, body);
        free(body);
        if (*rc == 0)
            return json_deep_copy(plain);
        if (*rc == -EEXIST) /* another skiffd was first meanwhile */
            *rc = store_doc_get_fresh(s->store, kind, SERVICES_SHARED_ID, &text);
    }
    if (*rc < 0)
        return NULL;
    json_t *doc = json_loads(text, 0, NULL);
    free(text);
    json_t *opened = services_unseal(s, json_string_value(json_object_get(doc, "sealed")));
    json_decref(doc);
    if (!opened)
        *rc = -EKEYREJECTED;
    return opened;
}

static void services__shared_forgotten(void *ctx, int rc)
{
    char *kind = ctx;
    if (rc < 0 && rc != -ENOENT && rc != -ECANCELED)
        log_error("cannot delete the store's document %s/" SERVICES_SHARED_ID ": %s", kind,
                  skiff_strerror(rc));
    free(kind);
}

void services_shared_forget(struct services *s, const char *kind)
{
    char *ctx = xstrdup(kind);
    if (store_doc_delete_async(s->store, kind, SERVICES_SHARED_ID, services__shared_forgotten,
                               ctx) < 0) {
        log_error("cannot delete the store's document %s/" SERVICES_SHARED_ID
                  ": the store refused the write",
                  kind);
        free(ctx);
    }
}

int services_key_check(struct services *s, const char *home)
{
    json_t *plain = json_string(SERVICES_KEY_CHECK_TEXT);
    int rc;
    json_t *opened = services_shared(s, SERVICES_KIND_KEY_CHECK, plain, &rc);
    bool same = opened && json_equal(opened, plain);
    json_decref(plain);
    json_decref(opened);
    if (same)
        return 0;
    if (rc != -EKEYREJECTED && rc < 0)
        return rc;
    log_error("%s/services.key is not the key the other skiffds on this store seal service "
              "credentials with: what they sealed could not be read here, nor what this one "
              "seals there. Copy services.key from the home of a skiffd that uses this store "
              "(mode 0600) to %s and start again",
              home, home);
    return -EKEYREJECTED;
}

int services_shared_key(struct services *s, const char *kind, const char *path,
                        unsigned char key[32])
{
    int rc = services_binding_key(path, key);
    if (rc < 0)
        return rc;
    char hex[65];
    sodium_bin2hex(hex, sizeof hex, key, 32);
    json_t *mine = json_string(hex);
    json_t *shared = services_shared(s, kind, mine, &rc);
    const char *theirs = json_string_value(shared);
    size_t n = 0;
    if (shared && (!theirs || strlen(theirs) != 64 ||
                   sodium_hex2bin(key, 32, theirs, 64, NULL, &n, NULL) < 0 || n != 32))
        rc = -EINVAL;
    else if (shared && strcmp(theirs, hex)) /* the key of the skiffd that was first */
        rc = file_write_atomic(path, theirs, 64, 0600);
    if (shared && theirs)
        sodium_memzero((char *)theirs, strlen(theirs));
    json_decref(shared);
    sodium_memzero(hex, sizeof hex);
    sodium_memzero((char *)json_string_value(mine), 64);
    json_decref(mine);
    if (rc < 0)
        sodium_memzero(key, 32);
    return rc;
}

/* ---- VCAP_SERVICES ------------------------------------------------------------------------ */

static json_t *services__str_or_null(const json_t *rec, const char *key)
{
    const char *v = json_string_value(json_object_get(rec, key));
    return v && *v ? json_string(v) : json_null();
}

void services_vcap_add(json_t *vcap, const struct services_vcap_binding *b)
{
    const json_t *inst = b->instance, *bind = b->binding;
    bool user_provided =
        !strcmp(json_string_value(json_object_get(inst, "type")) ?: "", SERVICES_USER_PROVIDED);
    const char *label = user_provided
                            ? SERVICES_USER_PROVIDED
                            : json_string_value(json_object_get(inst, "service_name")) ?: "";
    const char *instance_name = json_string_value(json_object_get(inst, "name")) ?: "";
    const char *binding_name = json_string_value(json_object_get(bind, "name"));
    json_t *tags = json_array();
    size_t i;
    json_t *t;
    json_array_foreach(b->service_tags, i, t)
    {
        if (json_is_string(t))
            json_array_append(tags, t);
    }
    json_array_foreach(json_object_get(inst, "tags"), i, t)
    {
        if (json_is_string(t))
            json_array_append(tags, t);
    }
    json_t *entry = json_object();
    json_object_set_new(entry, "label", json_string(label));
    if (!user_provided) {
        json_object_set_new(entry, "provider", json_null());
        json_object_set_new(entry, "plan", services__str_or_null(inst, "plan_name"));
    }
    json_object_set_new(entry, "name", json_string(binding_name ? binding_name : instance_name));
    json_object_set_new(entry, "tags", tags);
    json_object_set_new(entry, "instance_guid", services__str_or_null(inst, "guid"));
    json_object_set_new(entry, "instance_name", json_string(instance_name));
    json_object_set_new(entry, "binding_guid", services__str_or_null(bind, "guid"));
    json_object_set_new(entry, "binding_name",
                        binding_name ? json_string(binding_name) : json_null());
    json_object_set_new(entry, "credentials",
                        json_is_object(b->credentials) ? json_deep_copy(b->credentials)
                                                       : json_object());
    /* a user-provided instance's drain is its own; a managed binding's comes from the broker */
    json_object_set_new(entry, "syslog_drain_url",
                        services__str_or_null(user_provided ? inst : bind, "syslog_drain_url"));
    const json_t *mounts = json_object_get(bind, "volume_mounts");
    json_object_set_new(entry, "volume_mounts",
                        json_is_array(mounts) ? json_deep_copy(mounts) : json_array());
    json_t *list = json_object_get(vcap, label);
    if (!json_is_array(list)) {
        list = json_array();
        json_object_set_new(vcap, label, list);
    }
    json_array_append_new(list, entry);
}

/* The offering's tags from the broker's catalog, or NULL. */
static json_t *services__offering_tags(struct services *s, const json_t *inst)
{
    const char *broker_guid = json_string_value(json_object_get(inst, "broker_guid"));
    const char *service_id = json_string_value(json_object_get(inst, "service_id"));
    if (!broker_guid || !service_id)
        return NULL;
    json_t *broker = services_get(s, SERVICES_KIND_BROKER, broker_guid);
    json_t *tags = NULL;
    size_t i;
    json_t *svc;
    json_array_foreach(json_object_get(json_object_get(broker, "catalog"), "services"), i, svc)
    {
        if (!strcmp(json_string_value(json_object_get(svc, "id")) ?: "", service_id)) {
            tags = json_incref(json_object_get(svc, "tags"));
            break;
        }
    }
    json_decref(broker);
    return tags;
}

/* Whether a binding is one an instance should see: made, and not being deleted. */
static bool services__binding_ready(const json_t *bind)
{
    const json_t *op = json_object_get(bind, "last_operation");
    if (!op)
        return true;
    const char *type = json_string_value(json_object_get(op, "type")) ?: "";
    const char *state = json_string_value(json_object_get(op, "state")) ?: "";
    return !strcmp(type, "create") ? !strcmp(state, "succeeded") : strcmp(type, "delete") != 0;
}

char *services_vcap_json(struct services *s, const char *app_guid)
{
    json_t *binds = services_list(s, SERVICES_KIND_BINDING, "app_guid", app_guid);
    if (!binds)
        return NULL;
    json_t *vcap = json_object();
    bool failed = false;
    size_t i;
    json_t *bind;
    json_array_foreach(binds, i, bind)
    {
        if (!services__binding_ready(bind))
            continue;
        json_t *inst = services_get(s, SERVICES_KIND_INSTANCE,
                                    json_string_value(json_object_get(bind, "instance_guid")));
        if (!inst)
            continue; /* deleted under it: nothing to show */
        /* a user-provided instance's bindings show its credentials as they are now */
        const json_t *sealed = json_object_get(bind, "credentials");
        if (!strcmp(json_string_value(json_object_get(inst, "type")) ?: "", SERVICES_USER_PROVIDED))
            sealed = json_object_get(inst, "credentials");
        json_t *creds = services_unseal(s, json_string_value(sealed));
        if (!creds && json_is_string(sealed)) {
            log_error("the credentials of binding %s do not open with services.key",
                      json_string_value(json_object_get(bind, "guid")));
            failed = true;
        }
        json_t *tags = services__offering_tags(s, inst);
        struct services_vcap_binding b = {
            .instance = inst, .binding = bind, .credentials = creds, .service_tags = tags};
        services_vcap_add(vcap, &b);
        json_decref(tags);
        json_decref(creds);
        json_decref(inst);
    }
    json_decref(binds);
    char *text = failed ? NULL : json_dumps(vcap, JSON_COMPACT);
    json_decref(vcap);
    return text;
}

json_t *services_app_bound_names(struct services *s, const char *app_guid)
{
    json_t *names = json_array();
    json_t *binds = services_list(s, SERVICES_KIND_BINDING, "app_guid", app_guid);
    size_t i;
    json_t *bind;
    json_array_foreach(binds, i, bind)
    {
        json_t *inst = services_get(s, SERVICES_KIND_INSTANCE,
                                    json_string_value(json_object_get(bind, "instance_guid")));
        if (inst)
            json_array_append(names, json_object_get(inst, "name"));
        json_decref(inst);
    }
    json_decref(binds);
    return names;
}
