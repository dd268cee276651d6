/* fabric: durable topics of events.
 *
 * A fabric is a set of named topics. Each topic is an append-only sequence of records; a
 * record is an opaque payload (the publishing layer stores an encoded CloudEvent, see
 * cloudevents.h) with an offset (0, 1, 2, ... per topic, never reused) and the time it was
 * appended. Appends are durable before they are acknowledged: many appends share one fsync
 * (group commit), which runs off the loop thread. Consumers keep a durable cursor each; any
 * reader may also read from an offset or a time, and subscribe to be told the moment new
 * records become durable.
 *
 * This header is the whole contract; the embedded backend keeps one folder per fabric on the
 * local disk, and the NATS JetStream backend (fabric_config.nats_url) implements the same calls
 * (a topic is a stream; see README.md). Nothing here exposes how records are laid out.
 *
 * Threading: a fabric belongs to one libuv loop. Every call is made on that loop's thread and
 * every callback runs there, never from inside the call that registered it.
 *
 * Errors: calls return 0 or a negative errno value, the one error type of common/err.h
 * (skiff_strerror words it, skiff_err_from says which API error answers it); fabric_strerror()
 * adds what the fabric knows (its name rules, which thing is missing). Over JetStream,
 * -ENOTCONN: no NATS server answers, -ETIMEDOUT: JetStream did not acknowledge in time (the
 * record may or may not have been stored). A call that returns an error never calls its callback.
 *
 * Visibility: readers and subscribers see a record only once it is durable, so nothing is
 * delivered that a crash could take back. */
#ifndef SKIFF_FABRIC_H
#define SKIFF_FABRIC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "natsconn/natsconn.h"

struct fabric;
struct fabric_sub;

/* Topic names: 1 to 128 characters of [a-z0-9._-], starting with a letter or digit. The public
 * API is stricter (see docs/api.md); system topics may use '.' and '_'. */
#define FABRIC_TOPIC_MAX 128
/* Consumer (cursor) names: the same characters, 1 to 128 of them. */
#define FABRIC_CONSUMER_MAX 128

struct fabric_retention {
    int64_t max_age_ms; /* records older than this may be removed; 0: keep forever */
    int64_t max_bytes;  /* per topic; the oldest records go first; 0: no limit */
};

struct fabric_config {
    const char *dir;                   /* the fabric's folder; created when missing */
    struct fabric_retention retention; /* default for every topic */
    int64_t segment_bytes;             /* roll a topic's segment past this; 0: 64 MiB */
    size_t max_record_bytes;           /* larger appends fail with -EMSGSIZE; 0: 1 MiB */
    bool no_sync;                      /* benchmarks only: skip fsync (not durable) */
    /* NATS JetStream instead of the embedded log: "nats://h1:4222,nats://h2:4222" (NULL or
     * empty: the embedded log in dir). A topic is then a stream, a cursor a record in the
     * cursors stream; see src/fabric/README.md. */
    const char *nats_url;
    struct natsconn_security nats_security; /* credentials and TLS for nats_url */
    int nats_replicas;                      /* each stream's replicas (JetStream's R); 0: 1 */
};

/* Opens (or creates) the fabric in cfg->dir and recovers it: a record torn by a crash at the
 * tail of a topic is dropped, everything before it is kept. On error *out is NULL, nothing is
 * left open and errmsg (when not NULL) says why. */
int fabric_open(uv_loop_t *loop, const struct fabric_config *cfg, struct fabric **out, char *errmsg,
                size_t errlen);

/* Finishes every pending append and cursor commit (their callbacks run with the outcome of a
 * last fsync), stops the writer thread, and frees the fabric once its handles are closed; then
 * calls done (may be NULL). The loop must keep running until done is called. Subscriptions are
 * dropped without a callback. */
void fabric_close(struct fabric *f, void (*done)(void *arg), void *arg);

/* ---- appending ----------------------------------------------------------------------- */

struct fabric_blob {
    const void *data;
    size_t len;
};

/* status is 0 once every record of the append is durable, else a negative errno (the
 * records may or may not survive a crash). first_offset is the offset of the first record;
 * the others follow it one by one. */
typedef void (*fabric_append_cb)(void *arg, int status, uint64_t first_offset, size_t count);

/* Appends count records to topic (created on its first append) in one piece: they get
 * consecutive offsets and no other append interleaves. The payloads are copied before the
 * call returns. cb (may be NULL) runs once all of them are durable. first_offset (may be
 * NULL) receives the first offset at once; it is not yet durable, and final unless writing
 * the records fails (then cb has the error and the offsets are given again). On JetStream,
 * which numbers records when it stores them, it receives UINT64_MAX: cb has the offset.
 * Errors: -EINVAL bad topic name or count 0, -EMSGSIZE a record too large, -EIO the disk
 * failed (the fabric then refuses appends until it is reopened), -ENOSPC the disk is full,
 * -EMFILE / -ENFILE / -ENOMEM a passing shortage (a new topic needs a descriptor): only this
 * append is refused. The embedded log writes the records of one loop turn together after the
 * call, so a write error may also come to cb (with -ENOSPC or a shortage, for those appends
 * only). Running out of descriptors while records wait for their fsync makes them
 * wait longer, never fail: the round is tried again until descriptors are free. */
int fabric_append(struct fabric *f, const char *topic, const struct fabric_blob *records,
                  size_t count, fabric_append_cb cb, void *arg, uint64_t *first_offset);

/* ---- reading ------------------------------------------------------------------------- */

struct fabric_record {
    uint64_t offset;
    int64_t time_ms; /* when it was appended (wall clock, ms since the epoch) */
    const void *data;
    size_t len;
};

/* The result of a read. The records and their data are owned by the batch and stay valid
 * until fabric_batch_free(). A zeroed batch is empty and may be freed. */
struct fabric_batch {
    struct fabric_record *records;
    size_t count;
    uint64_t next_offset; /* where the next read should start */
    void *storage_;       /* private */
};

/* Reads durable records of topic from offset `from` on, at most max_records of them and not
 * much more than max_bytes of payload (at least one record is returned if any is there).
 * A `from` older than what retention kept starts at the oldest record kept (the caller sees
 * the gap in the offsets); a `from` at or past the end returns no records.
 * Errors: -ENOENT no such topic, -EINVAL bad name, -EIO. On JetStream also -EAGAIN: the
 * records are being fetched off the loop; the topic's subscribers are told (a notify call)
 * when they are here, and the same read then answers at once. */
int fabric_read(struct fabric *f, const char *topic, uint64_t from, size_t max_records,
                size_t max_bytes, struct fabric_batch *out);
/* Reads as the named consumer: what fabric_read returns, on the embedded log. On JetStream the
 * records come through the consumer's durable consumer, from the place its cursor was last
 * committed (by this process or another one), so the first record may be past `from`; a
 * record read and not committed is read again by the next process that reads as this
 * consumer. A consumer that has no cursor yet (none committed, by any process) is made at
 * `from`. -EAGAIN as fabric_read. */
int fabric_cursor_read(struct fabric *f, const char *topic, const char *consumer, uint64_t from,
                       size_t max_records, size_t max_bytes, struct fabric_batch *out);
void fabric_batch_free(struct fabric_batch *b);

/* Finds the offset of the first durable record appended at or after time_ms (the end offset
 * when there is none) and calls cb on the loop with status 0 and it, or a negative errno
 * (-ENOENT no such topic, -EIO; on JetStream also -ENOTCONN, -ETIMEDOUT, and -ECANCELED when
 * the fabric closes first). cb runs exactly once: on the embedded log before this returns, on
 * JetStream later, once the fabric's worker has searched the stream (nothing on the loop waits
 * for NATS). Returns 0, or a negative errno and then never calls cb (-EINVAL a bad name,
 * -ENOTCONN, -ECANCELED while closing). */
typedef void (*fabric_seek_cb)(void *arg, int status, uint64_t offset);
int fabric_seek_time(struct fabric *f, const char *topic, int64_t time_ms, fabric_seek_cb cb,
                     void *arg);

struct fabric_topic_info {
    char name[FABRIC_TOPIC_MAX + 1];
    uint64_t first_offset; /* oldest record kept */
    uint64_t end_offset;   /* one past the newest durable record; equal to first when empty */
    uint64_t records;      /* end_offset - first_offset */
    uint64_t bytes;        /* on disk */
    int64_t last_time_ms;  /* append time of the newest record; 0 when empty */
};

/* Describes one topic. Errors: -ENOENT, -EINVAL. */
int fabric_topic_info(struct fabric *f, const char *topic, struct fabric_topic_info *out);
/* All topics, sorted by name; the caller frees *out with free(). */
int fabric_topics(struct fabric *f, struct fabric_topic_info **out, size_t *count);
/* Creates an empty topic (an existing one is fine). Errors: -EINVAL, -EIO. */
int fabric_topic_create(struct fabric *f, const char *topic);

/* Overrides the default retention of one topic until the fabric is closed (the caller keeps
 * the setting where it keeps configuration). Enforcement runs in the background. */
int fabric_topic_set_retention(struct fabric *f, const char *topic,
                               const struct fabric_retention *r);
/* Applies retention now (it also runs on its own every few seconds). */
void fabric_enforce_retention(struct fabric *f);

/* ---- subscribing --------------------------------------------------------------------- */

/* Called on the loop as soon as records of topic up to end_offset (exclusive) are durable.
 * Calls are coalesced: one call may cover many appends. The callback may read, append,
 * subscribe and unsubscribe (itself included). */
typedef void (*fabric_notify_cb)(void *arg, const char *topic, uint64_t end_offset);

/* Subscribes to appends on topic, or on every topic when topic is NULL. The topic need not
 * exist yet. *out is owned by the fabric; it stays valid until fabric_unsubscribe() or
 * fabric_close(). */
int fabric_subscribe(struct fabric *f, const char *topic, fabric_notify_cb cb, void *arg,
                     struct fabric_sub **out);
/* No callback runs for sub after this returns. */
void fabric_unsubscribe(struct fabric_sub *sub);

/* ---- cursors ------------------------------------------------------------------------- */

/* A cursor is the offset a named consumer of a topic will read next: everything before it is
 * acknowledged. It survives restarts. On JetStream it is a durable consumer of the topic's
 * stream (its acknowledgement floor), shared by every process on the same servers. */

/* Errors: -ENOENT when the consumer has no cursor on this topic yet. On JetStream the answer
 * is what this process last learned (at open, or from its own commits and reads). */
int fabric_cursor_get(struct fabric *f, const char *topic, const char *consumer,
                      uint64_t *next_offset);
/* Moves the cursor (backwards too, for replays). Durable with the next group commit; cb (may be
 * NULL) runs then with status 0 or a negative errno. */
int fabric_cursor_commit(struct fabric *f, const char *topic, const char *consumer,
                         uint64_t next_offset, void (*cb)(void *arg, int status), void *arg);
/* Forgets a cursor (a mapping was deleted). A missing one is fine. */
int fabric_cursor_delete(struct fabric *f, const char *topic, const char *consumer);
/* This process stops reading as the consumer (another one takes over): on JetStream what it
 * read and did not commit is let go, and its next cursor read starts again at the cursor, as
 * a process that just started would. Nothing to do on the embedded log. */
int fabric_cursor_release(struct fabric *f, const char *topic, const char *consumer);

/* ---- errors and statistics ----------------------------------------------------------- */

/* A message for a negative code returned by this module, saying what to do about it: the
 * fabric's own words for names, missing topics, sizes and its disk, else skiff_strerror's. */
const char *fabric_strerror(int code);
/* Whether name is a valid topic (or consumer) name. */
bool fabric_name_valid(const char *name);

/* Topics belong to a space: a space's topic NAME lives in the fabric as "s" + the 32 hex
 * digits of the space's guid + "." + NAME (the default space's keep their bare names, which
 * they had before spaces). Written into out (size >= FABRIC_TOPIC_MAX + 1); -ENAMETOOLONG
 * when it does not fit. */
int fabric_topic_scoped(const char *space_guid, const char *name, char *out, size_t size);
/* The name within space_guid of a fabric topic, or NULL when it belongs to another space. */
const char *fabric_topic_unscoped(const char *space_guid, const char *fabric_name);

struct fabric_stats {
    uint64_t appends;       /* fabric_append calls */
    uint64_t records;       /* records appended */
    uint64_t bytes;         /* payload bytes appended */
    uint64_t syncs;         /* group commits (each one fsync round) */
    uint64_t sync_us_total; /* time spent in those rounds */
    uint64_t pending;       /* appends waiting for their commit now */
};
void fabric_get_stats(struct fabric *f, struct fabric_stats *out);
/* "log" (the embedded log) or "jetstream". */
const char *fabric_backend_name(struct fabric *f);
/* Whether other processes share this fabric's topics and cursors (JetStream): then only one
 * of them may consume as a given consumer at a time. */
bool fabric_is_shared(struct fabric *f);

#endif
