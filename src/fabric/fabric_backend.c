/* fabric_backend: the public calls of fabric.h, forwarded to the backend chosen at open (see
 * fabric_backend.h). */
#include "fabric/fabric_backend.h"

#include <errno.h>

static const struct fabric_ops *ops_of(struct fabric *f)
{
    return *(const struct fabric_ops *const *)f;
}

int fabric_open(uv_loop_t *loop, const struct fabric_config *cfg, struct fabric **out, char *errmsg,
                size_t errlen)
{
    if (cfg->nats_url && *cfg->nats_url)
        return fabric_nats_open(loop, cfg, out, errmsg, errlen);
    return fabric_log_open(loop, cfg, out, errmsg, errlen);
}

const char *fabric_backend_name(struct fabric *f)
{
    return ops_of(f)->name;
}

void fabric_close(struct fabric *f, void (*done)(void *arg), void *arg)
{
    ops_of(f)->close(f, done, arg);
}

int fabric_append(struct fabric *f, const char *topic, const struct fabric_blob *records,
                  size_t count, fabric_append_cb cb, void *arg, uint64_t *first_offset)
{
    return ops_of(f)->append(f, topic, records, count, cb, arg, first_offset);
}

int fabric_read(struct fabric *f, const char *topic, uint64_t from, size_t max_records,
                size_t max_bytes, struct fabric_batch *out)
{
    return ops_of(f)->read(f, topic, from, max_records, max_bytes, out);
}

int fabric_cursor_read(struct fabric *f, const char *topic, const char *consumer, uint64_t from,
                       size_t max_records, size_t max_bytes, struct fabric_batch *out)
{
    if (!ops_of(f)->cursor_read)
        return ops_of(f)->read(f, topic, from, max_records, max_bytes, out);
    return ops_of(f)->cursor_read(f, topic, consumer, from, max_records, max_bytes, out);
}

bool fabric_is_shared(struct fabric *f)
{
    return ops_of(f)->shared;
}

int fabric_seek_time(struct fabric *f, const char *topic, int64_t time_ms, fabric_seek_cb cb,
                     void *arg)
{
    return ops_of(f)->seek_time(f, topic, time_ms, cb, arg);
}

int fabric_topic_info(struct fabric *f, const char *topic, struct fabric_topic_info *out)
{
    return ops_of(f)->topic_info(f, topic, out);
}

int fabric_topics(struct fabric *f, struct fabric_topic_info **out, size_t *count)
{
    return ops_of(f)->topics(f, out, count);
}

int fabric_topic_create(struct fabric *f, const char *topic)
{
    return ops_of(f)->topic_create(f, topic);
}

int fabric_topic_set_retention(struct fabric *f, const char *topic,
                               const struct fabric_retention *r)
{
    return ops_of(f)->topic_set_retention(f, topic, r);
}

void fabric_enforce_retention(struct fabric *f)
{
    ops_of(f)->enforce_retention(f);
}

int fabric_subscribe(struct fabric *f, const char *topic, fabric_notify_cb cb, void *arg,
                     struct fabric_sub **out)
{
    return ops_of(f)->subscribe(f, topic, cb, arg, out);
}

void fabric_unsubscribe(struct fabric_sub *sub)
{
    struct fabric *f = *(struct fabric **)sub;
    ops_of(f)->unsubscribe(sub);
}

int fabric_cursor_get(struct fabric *f, const char *topic, const char *consumer,
                      uint64_t *next_offset)
{
    return ops_of(f)->cursor_get(f, topic, consumer, next_offset);
}

int fabric_cursor_commit(struct fabric *f, const char *topic, const char *consumer,
                         uint64_t next_offset, void (*cb)(void *arg, int status), void *arg)
{
    return ops_of(f)->cursor_commit(f, topic, consumer, next_offset, cb, arg);
}

int fabric_cursor_delete(struct fabric *f, const char *topic, const char *consumer)
{
    return ops_of(f)->cursor_delete(f, topic, consumer);
}

int fabric_cursor_release(struct fabric *f, const char *topic, const char *consumer)
{
    if (!ops_of(f)->cursor_release)
        return 0;
    return ops_of(f)->cursor_release(f, topic, consumer);
}

void fabric_get_stats(struct fabric *f, struct fabric_stats *out)
{
    ops_of(f)->get_stats(f, out);
}
