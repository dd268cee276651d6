/* fabric_backend: the seam between the public calls of fabric.h (fabric_backend.c, which
 * chooses a backend at fabric_open and forwards every call) and each backend: the embedded
 * log (fabric.c) and NATS JetStream (fabric_nats.c). Only the fabric's files include it.
 *
 * Every backend's fabric object begins with `const struct fabric_ops *ops`, and every
 * subscription object with the `struct fabric *` it belongs to, so the public calls find the
 * backend from either. Each op has the meaning of the public call of the same name. */
#ifndef SKIFF_FABRIC_BACKEND_H
#define SKIFF_FABRIC_BACKEND_H

#include "fabric/fabric.h"

struct fabric_ops {
    const char *name; /* "log", "jetstream" */
    bool shared;      /* other processes read and move the same topics and cursors */
    void (*close)(struct fabric *f, void (*done)(void *arg), void *arg);
    int (*append)(struct fabric *f, const char *topic, const struct fabric_blob *records,
                  size_t count, fabric_append_cb cb, void *arg, uint64_t *first_offset);
    int (*read)(struct fabric *f, const char *topic, uint64_t from, size_t max_records,
                size_t max_bytes, struct fabric_batch *out);
    /* NULL: fabric_read */
    int (*cursor_read)(struct fabric *f, const char *topic, const char *consumer, uint64_t from,
                       size_t max_records, size_t max_bytes, struct fabric_batch *out);
    int (*seek_time)(struct fabric *f, const char *topic, int64_t time_ms, fabric_seek_cb cb,
                     void *arg);
    int (*topic_info)(struct fabric *f, const char *topic, struct fabric_topic_info *out);
    int (*topics)(struct fabric *f, struct fabric_topic_info **out, size_t *count);
    int (*topic_create)(struct fabric *f, const char *topic);
    int (*topic_set_retention)(struct fabric *f, const char *topic,
                               const struct fabric_retention *r);
    void (*enforce_retention)(struct fabric *f);
    int (*subscribe)(struct fabric *f, const char *topic, fabric_notify_cb cb, void *arg,
                     struct fabric_sub **out);
    void (*unsubscribe)(struct fabric_sub *sub);
    int (*cursor_get)(struct fabric *f, const char *topic, const char *consumer,
                      uint64_t *next_offset);
    int (*cursor_commit)(struct fabric *f, const char *topic, const char *consumer,
                         uint64_t next_offset, void (*cb)(void *arg, int status), void *arg);
    int (*cursor_delete)(struct fabric *f, const char *topic, const char *consumer);
    /* NULL: nothing to let go of */
    int (*cursor_release)(struct fabric *f, const char *topic, const char *consumer);
    void (*get_stats)(struct fabric *f, struct fabric_stats *out);
};

/* The embedded log (fabric.c). */
extern const struct fabric_ops fabric_log_ops;
int fabric_log_open(uv_loop_t *loop, const struct fabric_config *cfg, struct fabric **out,
                    char *errmsg, size_t errlen);

/* NATS JetStream (fabric_nats.c): cfg->nats_url names the servers. */
extern const struct fabric_ops fabric_nats_ops;
int fabric_nats_open(uv_loop_t *loop, const struct fabric_config *cfg, struct fabric **out,
                     char *errmsg, size_t errlen);

#endif
