#include "logs/logs.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/util.h"

struct logs_ring {
    char app_guid[37];
    char **lines; /* grows up to lg->cap while not full (head stays 0 until then) */
    size_t alloc; /* slots in lines */
    size_t head;  /* index of the oldest line */
    size_t count;
    struct logs_ring *next;
};

struct logs_follower {
    int id;
    char app_guid[37];
    logs_follow_fn fn;
    void *ctx;
    bool removed;
    struct logs_follower *next;
};

#define LOGS_BUCKETS 256

struct logs {
    size_t cap;
    struct logs_ring *buckets[LOGS_BUCKETS];
    struct logs_follower *followers;
    int next_id;
    int dispatching; /* followers are only unlinked when no dispatch is running */
};

static unsigned logs__hash(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h % LOGS_BUCKETS;
}

struct logs *logs_new(size_t lines_per_app)
{
    struct logs *lg = xcalloc(1, sizeof *lg);
    lg->cap = lines_per_app ? lines_per_app : 1000;
    lg->next_id = 1;
    return lg;
}

static void logs__ring_free(struct logs *lg, struct logs_ring *r)
{
    if (r->lines) {
        for (size_t i = 0; i < r->count; i++)
            free(r->lines[(r->head + i) % r->alloc]);
        free(r->lines);
    }
    free(r);
}

void logs_free(struct logs *lg)
{
    if (!lg)
        return;
    for (int b = 0; b < LOGS_BUCKETS; b++) {
        struct logs_ring *r = lg->buckets[b];
        while (r) {
            struct logs_ring *next = r->next;
            logs__ring_free(lg, r);
            r = next;
        }
    }
    struct logs_follower *f = lg->followers;
    while (f) {
        struct logs_follower *next = f->next;
        free(f);
        f = next;
    }
    free(lg);
}

static struct logs_ring *logs__ring(struct logs *lg, const char *app_guid, bool create)
{
    unsigned b = logs__hash(app_guid);
    for (struct logs_ring *r = lg->buckets[b]; r; r = r->next)
        if (!strcmp(r->app_guid, app_guid))
            return r;
    if (!create)
        return NULL;
    struct logs_ring *r = xcalloc(1, sizeof *r);
    snprintf(r->app_guid, sizeof r->app_guid, "%s", app_guid);
    r->next = lg->buckets[b];
    lg->buckets[b] = r;
    return r;
}

static void logs__sweep(struct logs *lg)
{
    struct logs_follower **pp = &lg->followers;
    while (*pp) {
        if ((*pp)->removed) {
            struct logs_follower *dead = *pp;
            *pp = dead->next;
            free(dead);
        } else {
            pp = &(*pp)->next;
        }
    }
}

void logs_append(struct logs *lg, const char *app_guid, const char *tag, int stream,
                 const char *line, size_t len)
{
    if (!app_guid || !*app_guid)
        return;
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
        len--;
    char ts[40];
    time_format_rfc3339(time_now_ms(), ts, sizeof ts);
    /* "TS [TAG] OUT line\n", put together by hand: the router's access lines make this the
     * busiest path of skiffd under traffic */
    size_t ts_len = strlen(ts), tag_len = strlen(tag);
    size_t total = ts_len + 2 + tag_len + 6 + len + 1;
    char *text = xmalloc(total + 1), *o = text;
    memcpy(o, ts, ts_len);
    o += ts_len;
    memcpy(o, " [", 2);
    o += 2;
    memcpy(o, tag, tag_len);
    o += tag_len;
    memcpy(o, stream == LOGS_ERR ? "] ERR " : "] OUT ", 6);
    o += 6;
    if (len)
        memcpy(o, line, len);
    o += len;
    *o++ = '\n';
    *o = '\0';

    struct logs_ring *r = logs__ring(lg, app_guid, true);
    if (r->count == r->alloc && r->alloc < lg->cap) {
        /* most apps log little: grow the ring only as far as it is used */
        size_t grown = r->alloc ? r->alloc * 2 : 16;
        r->alloc = grown < lg->cap ? grown : lg->cap;
        r->lines = xrealloc(r->lines, r->alloc * sizeof *r->lines);
    }
    if (r->count == r->alloc) {
        free(r->lines[r->head]);
        r->lines[r->head] = NULL;
        r->head = (r->head + 1) % r->alloc;
        r->count--;
    }
    r->lines[(r->head + r->count) % r->alloc] = text;
    r->count++;

    lg->dispatching++;
    for (struct logs_follower *f = lg->followers; f; f = f->next)
        if (!f->removed && !strcmp(f->app_guid, app_guid))
            f->fn(f->ctx, text, total);
    if (--lg->dispatching == 0)
        logs__sweep(lg);
}

void logs_appendf(struct logs *lg, const char *app_guid, const char *tag, int stream,
                  const char *fmt, ...)
{
    struct buf b = {0};
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&b, fmt, ap);
    va_end(ap);
    logs_append(lg, app_guid, tag, stream, b.data ? b.data : "", b.len);
    buf_free(&b);
}

char *logs_recent(struct logs *lg, const char *app_guid, size_t max_lines, size_t *len)
{
    struct buf b = {0};
    buf_reserve(&b, 1);
    b.data[0] = '\0';
    struct logs_ring *r = logs__ring(lg, app_guid, false);
    if (r) {
        size_t skip = max_lines && r->count > max_lines ? r->count - max_lines : 0;
        for (size_t i = skip; i < r->count; i++)
            buf_puts(&b, r->lines[(r->head + i) % r->alloc]);
    }
    if (len)
        *len = b.len;
    return buf_steal(&b);
}

int logs_follow(struct logs *lg, const char *app_guid, logs_follow_fn fn, void *ctx)
{
    struct logs_follower *f = xcalloc(1, sizeof *f);
    f->id = lg->next_id++;
    snprintf(f->app_guid, sizeof f->app_guid, "%s", app_guid);
    f->fn = fn;
    f->ctx = ctx;
    f->next = lg->followers;
    lg->followers = f;
    return f->id;
}

void logs_unfollow(struct logs *lg, int id)
{
    for (struct logs_follower *f = lg->followers; f; f = f->next)
        if (f->id == id)
            f->removed = true;
    if (!lg->dispatching)
        logs__sweep(lg);
}

void logs_forget(struct logs *lg, const char *app_guid)
{
    unsigned b = logs__hash(app_guid);
    for (struct logs_ring **pp = &lg->buckets[b]; *pp; pp = &(*pp)->next) {
        if (!strcmp((*pp)->app_guid, app_guid)) {
            struct logs_ring *dead = *pp;
            *pp = dead->next;
            logs__ring_free(lg, dead);
            return;
        }
    }
}
