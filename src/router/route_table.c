#include "router/route_table.h"

#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

/* All routes of one host, longest path first. */
struct route_host {
    const char *host;
    size_t host_len;
    struct route **routes;
    size_t count;
};

struct route_table {
    int refs; /* atomic */
    int64_t version;
    struct route *routes;
    size_t route_count;
    struct route_host *slots; /* open addressing, power-of-two size, NULL host = empty */
    size_t slot_mask;
    struct route_addr *draining; /* "draining": instances stopped on purpose */
    size_t draining_count;
};

#define ATOMIC_ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_ACQ_REL)

static uint64_t hash_host(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a: short keys, good spread, no setup */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static void route_free_fields(struct route *r)
{
    free(r->host);
    free(r->path);
    free(r->app_guid);
    free(r->app_name);
    free(r->process);
    for (size_t i = 0; i < r->backend_count; i++) {
        free(r->backends[i].addr_text);
        free(r->backends[i].instance_guid);
    }
    free(r->backends);
}

/* ---- down marks, one per backend address -------------------------------------------------- */

struct route_addr_mark {
    struct sockaddr_storage addr;
    socklen_t len;
    size_t refs;           /* backends of the tables alive that point here (under marks_lock) */
    int64_t down_until_ms; /* passed over until then (atomic); 0: never marked, or cleared */
    struct route_addr_mark *next; /* in its bucket */
};

/* Taken when a table is parsed or freed (main thread, or a worker dropping the last hold of
 * an old table), never while routing: marks are read and written through the backends. */
static pthread_mutex_t marks_lock = PTHREAD_MUTEX_INITIALIZER;
static struct route_addr_mark **marks; /* buckets, a power of two */
static size_t marks_mask, marks_count;

static uint64_t addr_hash(const void *addr, socklen_t len);

static void marks_grow(void)
{
    size_t size = marks ? (marks_mask + 1) * 2 : 256;
    struct route_addr_mark **next = xcalloc(size, sizeof(*next));
    for (size_t i = 0; marks && i <= marks_mask; i++)
        for (struct route_addr_mark *m = marks[i], *after; m; m = after) {
            after = m->next;
            size_t k = addr_hash(&m->addr, m->len) & (size - 1);
            m->next = next[k];
            next[k] = m;
        }
    free(marks);
    marks = next;
    marks_mask = size - 1;
}

/* The mark of b's address, made on first use; one more reference to it. Under marks_lock. */
static struct route_addr_mark *mark_take(const struct route_backend *b)
{
    if (!marks || marks_count >= (marks_mask + 1) * 2)
        marks_grow();
    struct route_addr_mark **head = &marks[addr_hash(&b->addr, b->addr_len) & marks_mask];
    for (struct route_addr_mark *m = *head; m; m = m->next)
        if (m->len == b->addr_len && memcmp(&m->addr, &b->addr, m->len) == 0) {
            m->refs++;
            return m;
        }
    struct route_addr_mark *m = xcalloc(1, sizeof(*m));
    memcpy(&m->addr, &b->addr, b->addr_len);
    m->len = b->addr_len;
    m->refs = 1;
    m->next = *head;
    *head = m;
    marks_count++;
    return m;
}

/* Drops a reference; the last one frees the mark. Under marks_lock. */
static void mark_drop(struct route_addr_mark *m)
{
    if (--m->refs > 0)
        return;
    struct route_addr_mark **pp = &marks[addr_hash(&m->addr, m->len) & marks_mask];
    while (*pp != m)
        pp = &(*pp)->next;
    *pp = m->next;
    marks_count--;
    free(m);
    if (marks_count == 0) { /* the last table went (at exit): nothing left allocated */
        free(marks);
        marks = NULL;
        marks_mask = 0;
    }
}

/* Every backend of t points to its address's mark (t is being made: no one else reads it). */
static void table_take_marks(struct route_table *t)
{
    pthread_mutex_lock(&marks_lock);
    for (size_t i = 0; i < t->route_count; i++)
        for (size_t j = 0; j < t->routes[i].backend_count; j++)
            t->routes[i].backends[j].mark = mark_take(&t->routes[i].backends[j]);
    pthread_mutex_unlock(&marks_lock);
}

static void table_drop_marks(struct route_table *t)
{
    pthread_mutex_lock(&marks_lock);
    for (size_t i = 0; i < t->route_count; i++)
        for (size_t j = 0; j < t->routes[i].backend_count; j++)
            if (t->routes[i].backends[j].mark)
                mark_drop(t->routes[i].backends[j].mark);
    pthread_mutex_unlock(&marks_lock);
}

size_t route_addr_marks_count(void)
{
    pthread_mutex_lock(&marks_lock);
    size_t n = marks_count;
    pthread_mutex_unlock(&marks_lock);
    return n;
}

static void table_free(struct route_table *t)
{
    table_drop_marks(t);
    for (size_t i = 0; i < t->route_count; i++)
        route_free_fields(&t->routes[i]);
    free(t->routes);
    if (t->slots)
        for (size_t i = 0; i <= t->slot_mask; i++)
            free(t->slots[i].routes);
    free(t->slots);
    free(t->draining);
    free(t);
}

struct route_table *route_table_ref(struct route_table *t)
{
    ATOMIC_ADD(&t->refs, 1);
    return t;
}

void route_table_unref(struct route_table *t)
{
    if (t && ATOMIC_ADD(&t->refs, -1) == 0)
        table_free(t);
}

int64_t route_table_version(const struct route_table *t)
{
    return t->version;
}
size_t route_table_route_count(const struct route_table *t)
{
    return t->route_count;
}
const struct route *route_table_route_at(const struct route_table *t, size_t i)
{
    return i < t->route_count ? &t->routes[i] : NULL;
}

/* Parses "1.2.3.4:80" or "[::1]:80". */
static int parse_backend_addr(const char *text, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[64];
    const char *colon = strrchr(text, ':');
    if (!colon || colon == text)
        return -EINVAL;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port <= 0 || port > 65535 || colon[1] == '\0')
        return -EINVAL;
    const char *h = text;
    size_t hl = (size_t)(colon - text);
    if (h[0] == '[') {
        if (hl < 2 || h[hl - 1] != ']')
            return -EINVAL;
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl >= sizeof(host))
        return -EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        *len = sizeof(*in4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*in6);
        return 0;
    }
    return -EINVAL;
}

int route_table_parse_addr(const char *text, struct sockaddr_storage *out, socklen_t *len)
{
    return parse_backend_addr(text, out, len);
}

/* A host as stored: lowercase, without a trailing dot; NULL when not a plausible host name. */
static char *normalize_host(const char *s)
{
    size_t n = strlen(s);
    if (n && s[n - 1] == '.')
        n--;
    if (n == 0 || n > 253)
        return NULL;
    char *out = xmalloc(n + 1);
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
                  c == '_' || (c == '*' && i == 0 && n > 2 && s[1] == '.');
        if (!ok) {
            free(out);
            return NULL;
        }
        out[i] = c;
    }
    out[n] = '\0';
    return out;
}

/* A path as stored: "" for the root, else starting with '/' and without a trailing '/'. */
static char *normalize_path(const char *s)
{
    if (!s)
        return xstrdup("");
    size_t n = strlen(s);
    if (n && s[0] != '/')
        return NULL;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= ' ' || s[i] == '?' || s[i] == '#' || s[i] == 0x7f)
            return NULL;
    while (n && s[n - 1] == '/')
        n--;
    return xstrndup(s, n);
}

static const char *json_str(json_t *obj, const char *key, const char *fallback)
{
    json_t *v = json_object_get(obj, key);
    return json_is_string(v) ? json_string_value(v) : fallback;
}

static bool route_from_json(json_t *jr, struct route *r, int *skipped)
{
    memset(r, 0, sizeof(*r));
    const char *host = json_str(jr, "host", NULL);
    if (!json_is_object(jr) || !host || !(r->host = normalize_host(host)))
        goto fail;
    if (!(r->path = normalize_path(json_str(jr, "path", NULL))))
        goto fail;
    r->path_len = strlen(r->path);
    r->app_guid = xstrdup(json_str(jr, "app_guid", ""));
    r->app_name = xstrdup(json_str(jr, "app_name", ""));
    r->process = xstrdup(json_str(jr, "process", "web"));
    const char *balance = json_str(jr, "balance", "round-robin");
    r->balance = strcmp(balance, "least-connection") == 0 ? ROUTE_BALANCE_LEAST_CONNECTION
                                                          : ROUTE_BALANCE_ROUND_ROBIN;
    r->protocol = strcmp(json_str(jr, "protocol", "http1"), "http2") == 0 ? ROUTE_PROTOCOL_HTTP2
                                                                          : ROUTE_PROTOCOL_HTTP1;
    r->scale_from_zero = json_is_true(json_object_get(jr, "scale_from_zero"));
    r->https_only = json_is_true(json_object_get(jr, "https_only"));
    if (r->app_guid[0])
        r->stats = route_stats_get(r->app_guid, r->process);
    json_t *jb = json_object_get(jr, "backends");
    size_t nb = json_is_array(jb) ? json_array_size(jb) : 0;
    r->backends = nb ? xcalloc(nb, sizeof(*r->backends)) : NULL;
    for (size_t i = 0; i < nb; i++) {
        json_t *b = json_array_get(jb, i);
        const char *addr = json_str(b, "addr", NULL);
        struct route_backend *rb = &r->backends[r->backend_count];
        if (!addr || parse_backend_addr(addr, &rb->addr, &rb->addr_len) < 0) {
            (*skipped)++;
            continue;
        }
        rb->addr_text = xstrdup(addr);
        rb->instance_guid = xstrdup(json_str(b, "instance_guid", ""));
        json_t *idx = json_object_get(b, "index");
        rb->index = json_is_integer(idx) ? (int)json_integer_value(idx) : (int)i;
        r->backend_count++;
    }
    return true;
fail:
    route_free_fields(r);
    memset(r, 0, sizeof(*r));
    (*skipped)++;
    return false;
}

static struct route_host *slot_find(const struct route_table *t, const char *host, size_t len)
{
    if (!t->slots)
        return NULL;
    size_t i = hash_host(host, len) & t->slot_mask;
    for (;;) {
        struct route_host *s = &t->slots[i];
        if (!s->host)
            return NULL;
        if (s->host_len == len && memcmp(s->host, host, len) == 0)
            return s;
        i = (i + 1) & t->slot_mask;
    }
}

static int cmp_path_len_desc(const void *a, const void *b)
{
    const struct route *ra = *(struct route *const *)a, *rb = *(struct route *const *)b;
    return ra->path_len < rb->path_len ? 1 : ra->path_len > rb->path_len ? -1 : 0;
}

static void table_index(struct route_table *t)
{
    size_t size = 8;
    while (size < t->route_count * 2)
        size *= 2;
    t->slots = xcalloc(size, sizeof(*t->slots));
    t->slot_mask = size - 1;
    for (size_t k = 0; k < t->route_count; k++) {
        struct route *r = &t->routes[k];
        size_t len = strlen(r->host);
        struct route_host *s = slot_find(t, r->host, len);
        if (!s) {
            size_t i = hash_host(r->host, len) & t->slot_mask;
            while (t->slots[i].host)
                i = (i + 1) & t->slot_mask;
            s = &t->slots[i];
            s->host = r->host;
            s->host_len = len;
        }
        bool duplicate = false; /* the first route for a host and path wins */
        for (size_t j = 0; j < s->count; j++)
            duplicate |= strcmp(s->routes[j]->path, r->path) == 0;
        if (duplicate)
            continue;
        s->routes = xrealloc(s->routes, (s->count + 1) * sizeof(*s->routes));
        s->routes[s->count++] = r;
    }
    for (size_t i = 0; i <= t->slot_mask; i++)
        if (t->slots[i].count > 1)
            qsort(t->slots[i].routes, t->slots[i].count, sizeof(struct route *), cmp_path_len_desc);
}

struct route_table *route_table_new_empty(void)
{
    struct route_table *t = xcalloc(1, sizeof(*t));
    t->refs = 1;
    return t;
}

int route_table_parse(const char *json, size_t len, struct route_table **out, char *err,
                      size_t err_size, int *skipped)
{
    int skipped_local = 0;
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        snprintf(err, err_size, "routes message is not JSON: %s (line %d)", jerr.text, jerr.line);
        return -EINVAL;
    }
    json_t *routes = json_object_get(root, "routes");
    if (!json_is_object(root) || !json_is_array(routes)) {
        snprintf(err, err_size, "routes message has no \"routes\" array");
        json_decref(root);
        return -EINVAL;
    }
    struct route_table *t = route_table_new_empty();
    json_t *ver = json_object_get(root, "version");
    t->version = json_is_integer(ver) ? json_integer_value(ver) : 0;
    size_t n = json_array_size(routes);
    t->routes = n ? xcalloc(n, sizeof(*t->routes)) : NULL;
    for (size_t i = 0; i < n; i++)
        if (route_from_json(json_array_get(routes, i), &t->routes[t->route_count],
                            &skipped_local)) {
            t->routes[t->route_count].index = t->route_count;
            t->route_count++;
        }
    json_t *draining = json_object_get(root, "draining");
    size_t nd = json_is_array(draining) ? json_array_size(draining) : 0;
    t->draining = nd ? xcalloc(nd, sizeof(*t->draining)) : NULL;
    for (size_t i = 0; i < nd; i++) {
        const char *addr = json_string_value(json_array_get(draining, i));
        struct route_addr *a = &t->draining[t->draining_count];
        if (!addr || strlen(addr) >= sizeof(a->text) ||
            parse_backend_addr(addr, &a->addr, &a->len) < 0) {
            skipped_local++;
            continue;
        }
        snprintf(a->text, sizeof(a->text), "%s", addr);
        t->draining_count++;
    }
    json_decref(root);
    table_index(t);
    table_take_marks(t);
    if (skipped)
        *skipped = skipped_local;
    *out = t;
    return 0;
}

static bool path_matches(const struct route *r, const char *path, size_t path_len)
{
    if (r->path_len == 0)
        return true;
    if (path_len < r->path_len || memcmp(path, r->path, r->path_len) != 0)
        return false;
    if (path_len == r->path_len)
        return true;
    char next = path[r->path_len];
    return next == '/' || next == '?' || next == '#';
}

static struct route *host_match(const struct route_host *s, const char *path, size_t path_len)
{
    for (size_t i = 0; s && i < s->count; i++)
        if (path_matches(s->routes[i], path, path_len))
            return s->routes[i];
    return NULL;
}

struct route *route_table_lookup(const struct route_table *t, const char *host, size_t host_len,
                                 const char *path, size_t path_len)
{
    char key[256];
    size_t n = 0;
    /* "[::1]:8080" keeps its brackets; otherwise the port goes */
    for (size_t i = 0; i < host_len; i++) {
        char c = host[i];
        if (c == ':' && host[0] != '[')
            break;
        if (n >= sizeof(key) - 2)
            return NULL;
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        key[n++] = c;
        if (c == ']')
            break;
    }
    if (n && key[n - 1] == '.')
        n--;
    if (n == 0 || !t->slots)
        return NULL;
    struct route *r = host_match(slot_find(t, key, n), path, path_len);
    if (r)
        return r;
    /* wildcards: for a.b.c try *.b.c, then *.c */
    for (size_t i = 0; i < n; i++) {
        if (key[i] != '.')
            continue;
        size_t rest = n - i;
        char wild[sizeof(key) + 1];
        wild[0] = '*';
        memcpy(wild + 1, key + i, rest);
        if ((r = host_match(slot_find(t, wild, rest + 1), path, path_len)))
            return r;
    }
    return NULL;
}

static bool is_down(const struct route_backend *b, int64_t *now)
{
    int64_t until = __atomic_load_n(&b->mark->down_until_ms, __ATOMIC_RELAXED);
    if (until == 0)
        return false;
    if (*now == 0)
        *now = time_mono_ms();
    return until > *now;
}

static struct route_backend *pick(struct route *r, struct route_backend *const *skip,
                                  size_t skip_count, size_t start, bool pass_over_down)
{
    size_t n = r->backend_count;
    int64_t now = 0;
    struct route_backend *best = NULL;
    for (size_t k = 0; k < n; k++) {
        struct route_backend *b = &r->backends[(start + k) % n];
        bool tried = false;
        for (size_t j = 0; j < skip_count; j++)
            tried |= skip[j] == b;
        if (tried || (pass_over_down && is_down(b, &now)))
            continue;
        if (r->balance == ROUTE_BALANCE_ROUND_ROBIN)
            return b;
        if (!best || __atomic_load_n(&b->active, __ATOMIC_RELAXED) <
                         __atomic_load_n(&best->active, __ATOMIC_RELAXED))
            best = b;
    }
    return best;
}

struct route_backend *route_pick_backend(struct route *r, unsigned *cursor,
                                         struct route_backend *const *skip, size_t skip_count)
{
    size_t n = r->backend_count;
    if (n == 0)
        return NULL;
    size_t start = r->balance == ROUTE_BALANCE_ROUND_ROBIN ? (*cursor)++ % n : 0;
    struct route_backend *b = pick(r, skip, skip_count, start, true);
    return b ? b : pick(r, skip, skip_count, start, false);
}

struct route_backend *route_pick_backend_up(struct route *r, unsigned *cursor,
                                            struct route_backend *const *skip, size_t skip_count)
{
    size_t n = r->backend_count;
    if (n == 0)
        return NULL;
    size_t start = r->balance == ROUTE_BALANCE_ROUND_ROBIN ? (*cursor)++ % n : 0;
    return pick(r, skip, skip_count, start, true);
}

void route_backend_mark_down(struct route_backend *b, int ms)
{
    __atomic_store_n(&b->mark->down_until_ms, time_mono_ms() + ms, __ATOMIC_RELAXED);
}

bool route_backend_down(const struct route_backend *b)
{
    int64_t now = 0;
    return is_down(b, &now);
}

bool route_backend_suspect(const struct route_backend *b)
{
    return __atomic_load_n(&b->mark->down_until_ms, __ATOMIC_RELAXED) != 0;
}

void route_backend_connected(struct route_backend *b)
{
    int64_t *mark = &b->mark->down_until_ms;
    int64_t until = __atomic_load_n(mark, __ATOMIC_RELAXED);
    if (until != 0 && until <= time_mono_ms()) /* lost to a new mark meanwhile: that one stays */
        __atomic_compare_exchange_n(mark, &until, 0, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

static int addr_cmp(const void *a, const void *b)
{
    const struct route_addr *x = a, *y = b;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return memcmp(&x->addr, &y->addr, x->len);
}

static void addr_set(struct route_addr *a, const struct route_backend *b)
{
    memset(a, 0, sizeof(*a));
    memcpy(&a->addr, &b->addr, b->addr_len);
    a->len = b->addr_len;
    snprintf(a->text, sizeof(a->text), "%s", b->addr_text);
}

/* A set of backend addresses, open addressing on their bytes: what route_table_lost looks
 * addresses up in, built in one pass over a table (no copy, no sort). The entries point into
 * the table, which outlives the set. */
struct addr_key {
    const void *addr; /* NULL: an empty slot */
    socklen_t len;
};

struct addr_set {
    struct addr_key *slots;
    size_t mask;
};

static uint64_t addr_hash(const void *addr, socklen_t len)
{
    const unsigned char *p = addr;
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (socklen_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return h ^ (h >> 29);
}

/* Adds addr unless it is there; returns whether it was there already. */
static bool addr_set_add(struct addr_set *s, const void *addr, socklen_t len)
{
    for (size_t i = addr_hash(addr, len) & s->mask;; i = (i + 1) & s->mask) {
        struct addr_key *k = &s->slots[i];
        if (!k->addr) {
            k->addr = addr;
            k->len = len;
            return false;
        }
        if (k->len == len && memcmp(k->addr, addr, len) == 0)
            return true;
    }
}

static bool addr_set_has(const struct addr_set *s, const void *addr, socklen_t len)
{
    for (size_t i = addr_hash(addr, len) & s->mask;; i = (i + 1) & s->mask) {
        const struct addr_key *k = &s->slots[i];
        if (!k->addr)
            return false;
        if (k->len == len && memcmp(k->addr, addr, len) == 0)
            return true;
    }
}

/* A set with room for `count` addresses at most half full. */
static void addr_set_init(struct addr_set *s, size_t count)
{
    size_t cap = 16;
    while (cap < count * 2)
        cap *= 2;
    s->slots = xcalloc(cap, sizeof(*s->slots));
    s->mask = cap - 1;
}

static size_t table_backend_count(const struct route_table *t)
{
    size_t count = 0;
    for (size_t i = 0; i < t->route_count; i++)
        count += t->routes[i].backend_count;
    return count;
}

/* Every backend address of t and its draining ones. */
static void addr_set_of_table(struct addr_set *s, const struct route_table *t)
{
    addr_set_init(s, table_backend_count(t) + t->draining_count);
    for (size_t i = 0; i < t->route_count; i++)
        for (size_t j = 0; j < t->routes[i].backend_count; j++)
            addr_set_add(s, &t->routes[i].backends[j].addr, t->routes[i].backends[j].addr_len);
    for (size_t i = 0; i < t->draining_count; i++)
        addr_set_add(s, &t->draining[i].addr, t->draining[i].len);
}

/* Whether t has a route of exactly this host and path, to the same app. */
static bool table_has_route(const struct route_table *t, const struct route *r)
{
    const struct route_host *s = slot_find(t, r->host, strlen(r->host));
    for (size_t i = 0; s && i < s->count; i++)
        if (strcmp(s->routes[i]->path, r->path) == 0 &&
            strcmp(s->routes[i]->app_guid, r->app_guid) == 0)
            return true;
    return false;
}

size_t route_table_lost(const struct route_table *old, const struct route_table *now,
                        struct route_addr **out)
{
    *out = NULL;
    struct addr_set kept, seen = {0};
    addr_set_of_table(&kept, now);
    struct route_addr *lost = NULL;
    size_t n = 0, cap = 0;
    for (size_t i = 0; i < old->route_count; i++) {
        const struct route *r = &old->routes[i];
        if (r->backend_count == 0 || !table_has_route(now, r))
            continue;
        for (size_t j = 0; j < r->backend_count; j++) {
            const struct route_backend *b = &r->backends[j];
            if (addr_set_has(&kept, &b->addr, b->addr_len))
                continue;
            if (!seen.slots) /* room for every address of old: the set never fills */
                addr_set_init(&seen, table_backend_count(old));
            if (addr_set_add(&seen, &b->addr, b->addr_len))
                continue; /* lost from another route already */
            if (n == cap) {
                cap = cap ? cap * 2 : 4;
                lost = xrealloc(lost, cap * sizeof(*lost));
            }
            addr_set(&lost[n++], b);
        }
    }
    free(kept.slots);
    free(seen.slots);
    if (n > 1) /* few, usually: the instances of one lost host */
        qsort(lost, n, sizeof(*lost), addr_cmp);
    *out = lost;
    return n;
}

/* ---- the current table ------------------------------------------------------------------ */

static pthread_mutex_t current_lock = PTHREAD_MUTEX_INITIALIZER;
static struct route_table *current_table;
static uint64_t current_generation;

void route_table_publish(struct route_table *t)
{
    pthread_mutex_lock(&current_lock);
    struct route_table *old = current_table;
    current_table = t;
    __atomic_add_fetch(&current_generation, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&current_lock);
    route_table_unref(old);
}

struct route_table *route_table_current(void)
{
    pthread_mutex_lock(&current_lock);
    if (!current_table)
        current_table = route_table_new_empty();
    struct route_table *t = route_table_ref(current_table);
    pthread_mutex_unlock(&current_lock);
    return t;
}

uint64_t route_table_current_generation(void)
{
    return __atomic_load_n(&current_generation, __ATOMIC_ACQUIRE);
}

void route_table_clear_current(void)
{
    pthread_mutex_lock(&current_lock);
    struct route_table *old = current_table;
    current_table = NULL;
    pthread_mutex_unlock(&current_lock);
    route_table_unref(old);
}
