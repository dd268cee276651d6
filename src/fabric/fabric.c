/* fabric: the embedded backend, a folder of segment files per topic (see fabric_internal.h).
 *
 * Writes happen on the loop thread (pwrite into the page cache is quick and keeps readers
 * consistent); every fsync, and the zero-fill of the space ahead, runs on one writer thread,
 * so nothing on the loop waits for the disk. Group commit: while one fsync round runs,
 * appends pile up in `waiting`; when it ends they all go into the next round, so one fsync
 * covers as many appends as arrived during the previous one. When no round runs, a round is
 * started on the loop's next turn rather than by the first append, so that the appends of one
 * turn (every request one poll brought in) share it, and right after a round it waits a little
 * for the publishers just answered (round_held). Acknowledgements and notifications then
 * run on the loop, in offset order. */
#include "fabric/fabric.h"
#include "fabric/fabric_backend.h"
#include "fabric/fabric_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/buf.h"
#include "common/util.h"

#define INDEX_EVERY_BYTES 4096
#define RETENTION_PERIOD_MS 5000
#define CURSOR_LOG_COMPACT_BYTES (1u << 20)
#define SEGMENT_PREALLOC_BYTES (1u << 20) /* zero-filled space kept ahead of the last record */
#define ZERO_FILL_CHUNK (64u << 10)          /* the writer zero-fills in steps of this much */
#define GATHER_MAX_NS 500000                 /* the longest a round waits for answered publishers */
#define GATHER_QUIET_NS 100000               /* ... and for the next of them after the last one */
#define PENDING_MAX_BYTES (256u << 10)       /* records held for one write before it is made */

struct index_entry {
    uint64_t offset;
    uint64_t pos;
    int64_t time_ms;
};

struct segment {
    uint64_t base; /* offset of the first record */
    uint64_t end;  /* one past the last record written */
    uint64_t size; /* bytes written */
    uint64_t alloc; /* file length: the records, then zero-filled space for the next ones */
    int64_t first_time, last_time;
    int fd;
    struct index_entry *index; /* sparse: one entry per INDEX_EVERY_BYTES */
    size_t index_count, index_cap;
    uint64_t index_last_pos;
};

struct topic {
    char name[FABRIC_TOPIC_MAX + 1];
    char *dir;
    struct segment *segs; /* sorted by base; the last one is written to */
    size_t nsegs, segs_cap;
    uint64_t next_offset; /* assigned */
    uint64_t durable_end; /* visible to readers */
    int64_t last_time;
    bool dirty;            /* written since the last round was started */
    bool dir_synced;       /* new files in dir need a directory fsync */
    struct sealed *sealed; /* segments sealed since the last round, synced by the next */
    size_t nsealed, sealed_cap;
    bool has_retention;
    struct fabric_retention retention;
    /* Records appended since the last write, framed, for the active segment: the appends of one
     * loop turn go out in one pwrite (topic_flush), before the round that syncs them. */
    struct buf pending;
    uint64_t pending_pos;   /* where they go in the file */
    uint64_t pending_first; /* the offset of the first */
};

struct waiter {
    struct waiter *next;
    struct topic *topic; /* an append's; NULL for a cursor commit */
    int status;          /* refused: why its records could not be written */
    fabric_append_cb append_cb;
    void (*cursor_cb)(void *arg, int status);
    void *arg;
    uint64_t first;
    size_t count;
};

/* A sealed segment waiting for its sync; its index is written once the sync succeeded, so an
 * index file only ever describes durable data. */
struct sealed {
    int fd;         /* dup()ed */
    char *idx_path; /* OFFSET.idx */
    struct buf idx; /* the index file's bytes */
};

struct sync_target {
    struct topic *topic; /* NULL for the cursor log or a directory */
    uint64_t end;        /* topic: durable up to here once synced */
    int fd;              /* dup()ed and closed by the writer, unless borrowed */
    bool borrowed;       /* the active segment's own fd: the loop keeps it open (segment_busy) */
    char *idx_path;      /* a sealed segment: its index, written after the sync (writer frees) */
    struct buf idx;
};

/* One fsync round, handed to the writer thread. */
struct round {
    struct sync_target *targets;
    size_t count, cap;
    struct waiter *waiters;
    int status;
    int64_t started_ns, ended_ns;
};

struct fabric_sub {
    struct fabric *f;
    struct fabric_sub *next;
    char *topic; /* NULL: all */
    fabric_notify_cb cb;
    void *arg;
    bool removed;
};

struct cursor {
    char *topic;
    char *consumer;
    uint64_t next_offset;
};

struct fabric {
    const struct fabric_ops *ops; /* first: see fabric_backend.h */
    uv_loop_t *loop;
    char *dir;
    struct fabric_config cfg;
    struct topic **topics; /* sorted by name */
    size_t ntopics, topics_cap;

    struct waiter *waiting, **waiting_tail;
    size_t nwaiting; /* in `waiting` */
    /* appends whose records could not be written (topic_flush): answered on the next turn */
    struct waiter *refused, **refused_tail;
    /* After a round, the next one waits (until gather_until at most) for gather_target waiters:
     * those that came during the sync plus the publishers just answered, whose next publishes
     * are on their way (round_held). */
    size_t gather_target;
    int64_t gather_until_ns;
    int64_t gather_last_ns; /* when the round ended or the last publish came, if later */
    int gather_fd; /* a timerfd: libuv's timers count milliseconds */
    uv_poll_t gather_poll;
    struct round *round; /* in flight, or NULL */
    int failed;          /* a negative errno once the disk failed */

    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct round *thread_job; /* guarded by mu */
    struct round *thread_done;
    bool thread_quit;
    uv_async_t async;
    uv_timer_t retention_timer;
    uv_timer_t retry_timer; /* a round that could not get its descriptors is tried again */
    uv_idle_t round_idle;   /* starts a round on the loop's next turn (round_schedule) */
    bool retry_armed;
    int retry_ms;
    int64_t retry_logged_ms;
    int handles_open;

    struct cursor *cursors;
    size_t ncursors, cursors_cap;
    int cursor_fd;
    uint64_t cursor_log_size;
    uint64_t cursor_seq; /* number of the next cursor log record */
    bool cursors_dirty;
    bool root_dir_dirty;
    bool sealed_pending; /* a segment was sealed: the next round syncs it and writes its index */

    /* Zero-filling the space ahead of an active segment (zero_fill_post), done by the writer
     * thread between rounds. One job at a time. The loop owns zero_topic, zero_base, zero_fd,
     * zero_from and zero_stopped; `zero` is shared, under zero_mu, which each step of the
     * writer holds while it writes: once the loop has raised `written_to` (before it writes
     * records there) no zero lands below it, and once it has set `stop` (a sealed segment) no
     * zero lands at all. */
    pthread_mutex_t zero_mu;
    struct {
        int fd;
        uint64_t from, to;
        uint64_t filled;     /* [from, from + filled) is done: zeros, or records over them */
        uint64_t written_to; /* the loop writes records up to here: zeros go only after it */
        bool stop;           /* the loop wants no more writes */
    } zero;
    bool zero_queued;   /* under mu: the writer has a zero-fill job */
    bool zero_finished; /* under mu: the writer is done with it (the loop collects) */
    bool zero_posted;   /* loop: a job is out (until collected) */
    bool zero_stopped;  /* loop: it was told to stop */
    struct topic *zero_topic;
    uint64_t zero_base;
    int zero_fd;
    uint64_t zero_from;
    int test_sync_delay_ms; /* SKIFF_FABRIC_TEST_SYNC_DELAY_MS, test builds only */

    struct fabric_sub *subs;
    int notifying;

    struct buf scratch;
    struct fabric_stats stats;

    bool closing;
    bool completing; /* inside on_round_done: a close waits for its end */
    bool finished;   /* the writer is stopped and the handles are closing */
    void (*close_done)(void *arg);
    void *close_arg;
};

/* ---- names, errors ---------------------------------------------------------------------- */

/* "s" + 32 hex digits of the guid + "." */
#define FABRIC_SCOPE_PREFIX_LEN 34

static bool fabric__default_space(const char *space_guid)
{
    return !space_guid || !*space_guid || !strcmp(space_guid, SKIFF_DEFAULT_SPACE_GUID);
}

static void fabric__scope_prefix(const char *space_guid, char out[FABRIC_SCOPE_PREFIX_LEN + 1])
{
    size_t n = 0;
    out[n++] = 's';
    for (const char *p = space_guid; *p && n < FABRIC_SCOPE_PREFIX_LEN - 1; p++)
        if (*p != '-')
            out[n++] = *p;
    out[n++] = '.';
    out[n] = '\0';
}

int fabric_topic_scoped(const char *space_guid, const char *name, char *out, size_t size)
{
    char prefix[FABRIC_SCOPE_PREFIX_LEN + 1] = "";
    if (!fabric__default_space(space_guid))
        fabric__scope_prefix(space_guid, prefix);
    int n = snprintf(out, size, "%s%s", prefix, name);
    return n < 0 || (size_t)n >= size || n > FABRIC_TOPIC_MAX ? -ENAMETOOLONG : 0;
}

const char *fabric_topic_unscoped(const char *space_guid, const char *fabric_name)
{
    bool scoped = fabric_name[0] == 's' && strlen(fabric_name) > FABRIC_SCOPE_PREFIX_LEN &&
                  fabric_name[FABRIC_SCOPE_PREFIX_LEN - 1] == '.' &&
                  strspn(fabric_name + 1, "0123456789abcdef") == FABRIC_SCOPE_PREFIX_LEN - 2;
    if (fabric__default_space(space_guid))
        return scoped ? NULL : fabric_name;
    char prefix[FABRIC_SCOPE_PREFIX_LEN + 1];
    fabric__scope_prefix(space_guid, prefix);
    return str_has_prefix(fabric_name, prefix) ? fabric_name + FABRIC_SCOPE_PREFIX_LEN : NULL;
}

bool fabric_name_valid(const char *name)
{
    if (!name || !*name)
        return false;
    size_t n = strlen(name);
    if (n > FABRIC_TOPIC_MAX)
        return false;
    if (!((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= '0' && name[0] <= '9')))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_'))
            return false;
    }
    return true;
}

const char *fabric_strerror(int code)
{
    /* what the fabric knows beyond the table: which names it takes, what is not found */
    switch (code) {
    case -EINVAL:
        return "invalid topic or consumer name: use 1-128 of a-z, 0-9, '-', '.', '_', starting "
               "with a letter or digit";
    case -ENOENT:
        return "no such topic (or cursor): publish to the topic first, or check its name";
    case -EMSGSIZE:
        return "event too large: make it smaller than the fabric's record limit";
    case -ENOSPC:
        return "the disk holding the event log is full: free space or lower retention";
    case -EIO: /* a failed fsync stops appends until a restart */
        return "the event log could not be written or read (disk error): check the disk and "
               "restart skiffd";
    case -ENOTCONN:
        return "no NATS server of the event fabric answers: check that they run and that "
               "skiffd's --nats names them, then retry";
    case -ETIMEDOUT:
        return "JetStream did not acknowledge in time (NATS down, or too few replicas up?): "
               "retry; an event may then be stored twice (de-duplicate by source and id)";
    default:
        return skiff_strerror(code);
    }
}

/* ---- little-endian record framing --------------------------------------------------------- */

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}
static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Appends one framed record to b. */
static void record_frame(struct buf *b, uint64_t offset, int64_t time_ms, const void *data,
                         size_t len)
{
    buf_reserve(b, FABRIC_RECORD_HEADER + len);
    uint8_t *h = (uint8_t *)b->data + b->len;
    put_u32(h, (uint32_t)len);
    put_u64(h + 8, offset);
    put_u64(h + 16, (uint64_t)time_ms);
    if (len)
        memcpy(h + FABRIC_RECORD_HEADER, data, len);
    uint32_t crc = fabric_crc32c(0, h + 8, FABRIC_RECORD_HEADER - 8 + len);
    put_u32(h + 4, crc);
    b->len += FABRIC_RECORD_HEADER + len;
    b->data[b->len] = '\0';
}

/* A buffered sequential reader over a file, for recovery and reads. */
struct file_reader {
    int fd;
    uint64_t limit; /* file bytes that may be read */
    uint8_t *buf;
    size_t cap;
    uint64_t start; /* file position of buf[0] */
    size_t len;
};

/* Makes [pos, pos + len) available; returns a pointer to it, or NULL (errno-like code in *err:
 * 0 when the range runs past the limit, a negative errno on a read error). */
static const uint8_t *reader_get(struct file_reader *r, uint64_t pos, size_t len, int *err)
{
    *err = 0;
    if (pos + len > r->limit)
        return NULL;
    if (pos >= r->start && pos + len <= r->start + r->len)
        return r->buf + (pos - r->start);
    size_t want = len > 65536 ? len : 65536;
    if (want > r->limit - pos)
        want = (size_t)(r->limit - pos);
    if (want > r->cap) {
        r->buf = xrealloc(r->buf, want);
        r->cap = want;
    }
    size_t got = 0;
    while (got < want) {
        ssize_t n = pread(r->fd, r->buf + got, want - got, (off_t)(pos + got));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            *err = -errno;
            r->len = 0;
            return NULL;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    r->start = pos;
    r->len = got;
    if (got < len)
        return NULL;
    return r->buf;
}

/* Reads and checks the record at pos, which should carry `expect` as its offset. Returns 1
 * with the header fields when it is good, 0 when it is missing or bad, a negative errno on a
 * read error. */
static int reader_record(struct file_reader *r, uint64_t pos, uint64_t expect, uint32_t *len,
                         int64_t *time_ms, const uint8_t **payload)
{
    int err;
    const uint8_t *h = reader_get(r, pos, FABRIC_RECORD_HEADER, &err);
    if (!h)
        return err;
    uint32_t n = get_u32(h);
    if (n > FABRIC_RECORD_HARD_MAX || get_u64(h + 8) != expect)
        return 0;
    h = reader_get(r, pos, FABRIC_RECORD_HEADER + (size_t)n, &err);
    if (!h)
        return err;
    if (fabric_crc32c(0, h + 8, FABRIC_RECORD_HEADER - 8 + (size_t)n) != get_u32(h + 4))
        return 0;
    *len = n;
    *time_ms = (int64_t)get_u64(h + 16);
    *payload = h + FABRIC_RECORD_HEADER;
    return 1;
}

static void reader_free(struct file_reader *r)
{
    free(r->buf);
    r->buf = NULL;
}

/* ---- topics and segments ------------------------------------------------------------------ */

static void segment_index_add(struct segment *s, uint64_t offset, uint64_t pos, int64_t time_ms)
{
    if (s->index_count && pos < s->index_last_pos + INDEX_EVERY_BYTES)
        return;
    if (s->index_count == s->index_cap) {
        s->index_cap = s->index_cap ? s->index_cap * 2 : 16;
        s->index = xrealloc(s->index, s->index_cap * sizeof(*s->index));
    }
    s->index[s->index_count++] = (struct index_entry){offset, pos, time_ms};
    s->index_last_pos = pos;
}

static void segment_close(struct segment *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    free(s->index);
    s->index = NULL;
}

static char *segment_path(const struct topic *t, uint64_t base)
{
    return xasprintf("%s/" FABRIC_SEGMENT_NAME_FMT, t->dir, (unsigned long long)base);
}

static char *index_path(const struct topic *t, uint64_t base)
{
    return xasprintf("%s/" FABRIC_INDEX_NAME_FMT, t->dir, (unsigned long long)base);
}

/* Index file: "SKIDX\1\0\0" | u64 base, end, size | i64 first, last time | u64 count |
 * count x (u64 offset, u64 pos, i64 time) | u32 CRC32C of all before. It is a cache: a missing,
 * stale or damaged one is rebuilt by reading the segment. */
#define INDEX_MAGIC "SKIDX\1\0\0"

static void index_encode(const struct segment *s, struct buf *out)
{
    size_t len = 8 + 6 * 8 + s->index_count * 24 + 4;
    buf_reserve(out, len);
    uint8_t *p = (uint8_t *)out->data + out->len;
    memcpy(p, INDEX_MAGIC, 8);
    uint64_t head[6] = {
        s->base, s->end, s->size, (uint64_t)s->first_time, (uint64_t)s->last_time, s->index_count};
    for (int i = 0; i < 6; i++)
        put_u64(p + 8 + 8 * i, head[i]);
    uint8_t *e = p + 56;
    for (size_t i = 0; i < s->index_count; i++, e += 24) {
        put_u64(e, s->index[i].offset);
        put_u64(e + 8, s->index[i].pos);
        put_u64(e + 16, (uint64_t)s->index[i].time_ms);
    }
    put_u32(e, fabric_crc32c(0, p, len - 4));
    out->len += len;
    out->data[out->len] = '\0';
}

/* Runs on the writer thread. Failure only costs a slower open. */
static void index_file_write(const char *path, const struct buf *idx)
{
    char *tmp = xasprintf("%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    bool ok = fd >= 0;
    size_t done = 0;
    while (ok && done < idx->len) {
        ssize_t n = write(fd, idx->data + done, idx->len - done);
        if (n < 0 && errno == EINTR)
            continue;
        ok = n > 0;
        done += ok ? (size_t)n : 0;
    }
    if (fd >= 0)
        close(fd);
    if (!ok || rename(tmp, path) < 0)
        unlink(tmp);
    free(tmp);
}

/* Loads a sealed segment's index when it matches the segment file; -1 when it does not. */
static int index_load(const struct topic *t, struct segment *s)
{
    char *path = index_path(t, s->base), *data = NULL;
    size_t len = 0;
    int rc = file_read(path, &data, &len);
    free(path);
    struct stat st;
    const uint8_t *p = (const uint8_t *)data;
    if (rc < 0 || len < 60 || memcmp(p, INDEX_MAGIC, 8) || fstat(s->fd, &st) < 0)
        goto bad;
    uint64_t count = get_u64(p + 48);
    if (count > (len - 60) / 24 || len != 60 + count * 24 ||
        get_u32(p + len - 4) != fabric_crc32c(0, p, len - 4) || get_u64(p + 8) != s->base ||
        get_u64(p + 24) != (uint64_t)st.st_size || get_u64(p + 16) < s->base)
        goto bad;
    s->end = get_u64(p + 16);
    s->size = get_u64(p + 24);
    s->first_time = (int64_t)get_u64(p + 32);
    s->last_time = (int64_t)get_u64(p + 40);
    s->index = xcalloc(count ? count : 1, sizeof(*s->index));
    s->index_cap = count ? count : 1;
    for (uint64_t i = 0; i < count; i++) {
        const uint8_t *e = p + 56 + 24 * i;
        s->index[i] = (struct index_entry){get_u64(e), get_u64(e + 8), (int64_t)get_u64(e + 16)};
    }
    s->index_count = count;
    s->index_last_pos = count ? s->index[count - 1].pos : 0;
    free(data);
    return 0;
bad:
    free(data);
    return -1;
}

static int fsync_path(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

/* Adds an empty segment starting at t->next_offset. */
static int topic_add_segment(struct fabric *f, struct topic *t)
{
    char *path = index_path(t, t->next_offset);
    unlink(path); /* a stale index from segments dropped at recovery */
    free(path);
    path = segment_path(t, t->next_offset);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    int rc = fd < 0 ? -errno : 0;
    if (fd >= 0 && ftruncate(fd, 0) < 0)
        rc = -errno;
    free(path);
    if (rc < 0) {
        if (fd >= 0)
            close(fd);
        return rc;
    }
    if (t->nsegs == t->segs_cap) {
        t->segs_cap = t->segs_cap ? t->segs_cap * 2 : 4;
        t->segs = xrealloc(t->segs, t->segs_cap * sizeof(*t->segs));
    }
    t->segs[t->nsegs++] = (struct segment){.base = t->next_offset, .end = t->next_offset, .fd = fd};
    t->dir_synced = false;
    (void)f;
    return 0;
}

/* 1 when the bytes [from, to) of fd are all zero, 0 when not, or a negative errno. */
static int file_is_zero(int fd, uint64_t from, uint64_t to)
{
    uint8_t chunk[16 << 10];
    while (from < to) {
        size_t want = to - from < sizeof(chunk) ? (size_t)(to - from) : sizeof(chunk);
        ssize_t n = pread(fd, chunk, want, (off_t)from);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return 1;
        for (ssize_t i = 0; i < n; i++)
            if (chunk[i])
                return 0;
        from += (uint64_t)n;
    }
    return 1;
}

static int write_all(int fd, const void *data, size_t len, uint64_t pos);

/* Scans one segment from its start, checking every record. Returns the number of good bytes
 * (everything after them is torn or corrupt) or a negative errno. */
static int64_t segment_recover(struct segment *s, bool *torn)
{
    struct stat st;
    if (fstat(s->fd, &st) < 0)
        return -errno;
    struct file_reader r = {.fd = s->fd, .limit = (uint64_t)st.st_size};
    uint64_t pos = 0, offset = s->base;
    int rc;
    for (;;) {
        uint32_t len;
        int64_t time_ms;
        const uint8_t *payload;
        rc = reader_record(&r, pos, offset, &len, &time_ms, &payload);
        if (rc <= 0)
            break;
        if (offset == s->base)
            s->first_time = time_ms;
        s->last_time = time_ms;
        segment_index_add(s, offset, pos, time_ms);
        pos += FABRIC_RECORD_HEADER + len;
        offset++;
    }
    reader_free(&r);
    if (rc < 0)
        return rc;
    s->end = offset;
    s->size = pos;
    s->alloc = (uint64_t)st.st_size;
    /* Zero-filled space ahead of the records (segment_prealloc) is not a torn write; anything
     * else after the last good record is. */
    rc = pos < (uint64_t)st.st_size ? file_is_zero(s->fd, pos, (uint64_t)st.st_size) : 1;
    if (rc < 0)
        return rc;
    *torn = rc == 0;
    return (int64_t)pos;
}

/* Keeps zero-filled, allocated space ahead of the active segment's last record, so that a
 * durable write overwrites blocks the file already has: its fdatasync then changes neither the
 * file's size nor its extent map and flushes the data alone. The loop only posts the job (after
 * a round has answered); the writer thread fallocates and writes the zeros between rounds
 * (zero_fill_step), so neither costs the loop anything; the zeros reach the disk with a later
 * round. Failure is harmless (appends then grow the file, as without it), so it is not
 * reported. */
static void zero_fill_post(struct fabric *f, struct topic *t)
{
    struct segment *s = &t->segs[t->nsegs - 1];
    uint64_t limit = (uint64_t)f->cfg.segment_bytes + SEGMENT_PREALLOC_BYTES;
    if (s->alloc < s->size)
        s->alloc = s->size;
    if (f->zero_posted || s->alloc - s->size >= SEGMENT_PREALLOC_BYTES / 2 || s->alloc >= limit)
        return;
    f->zero_posted = true;
    f->zero_stopped = false;
    f->zero_topic = t;
    f->zero_base = s->base;
    f->zero_fd = s->fd;
    f->zero_from = s->alloc;
    pthread_mutex_lock(&f->zero_mu);
    f->zero.fd = s->fd;
    f->zero.from = s->alloc;
    f->zero.to = s->size + SEGMENT_PREALLOC_BYTES;
    f->zero.filled = 0;
    f->zero.written_to = 0;
    f->zero.stop = false;
    pthread_mutex_unlock(&f->zero_mu);
    pthread_mutex_lock(&f->mu);
    f->zero_queued = true;
    pthread_mutex_unlock(&f->mu);
    pthread_cond_signal(&f->cond);
}

/* Tells the writer to write no more zeros into the segment of descriptor fd: the loop is about
 * to seal the segment. Waits at most for one step in progress. */
static void zero_fill_stop(struct fabric *f, int fd)
{
    if (!f->zero_posted || f->zero_stopped || f->zero_fd != fd)
        return;
    pthread_mutex_lock(&f->zero_mu);
    f->zero.stop = true;
    pthread_mutex_unlock(&f->zero_mu);
    f->zero_stopped = true;
}

/* Before the loop writes records up to `end` of the segment of descriptor fd: when that runs
 * into the space being zero-filled, the writer leaves everything below `end` alone from now on
 * (a step in progress finishes first, so its zeros come before the records). */
static void zero_fill_claim(struct fabric *f, int fd, uint64_t end)
{
    if (!f->zero_posted || f->zero_stopped || f->zero_fd != fd || end <= f->zero_from)
        return;
    pthread_mutex_lock(&f->zero_mu);
    f->zero.written_to = end;
    pthread_mutex_unlock(&f->zero_mu);
}

/* The writer's part: one step of the job (the fallocate, then ZERO_FILL_CHUNK of zeros). True
 * when the job is over. */
static bool zero_fill_step(struct fabric *f)
{
    static const uint8_t zeros[ZERO_FILL_CHUNK];
    bool over;
    pthread_mutex_lock(&f->zero_mu);
    uint64_t pos = f->zero.from + f->zero.filled;
    if (f->zero.stop || pos >= f->zero.to) {
        over = true;
    } else {
        if (f->zero.filled == 0) /* contiguous blocks if it can */
            (void)fallocate(f->zero.fd, 0, (off_t)pos, (off_t)(f->zero.to - pos));
        uint64_t step_end = f->zero.to - pos < ZERO_FILL_CHUNK ? f->zero.to : pos + ZERO_FILL_CHUNK;
        uint64_t start = pos > f->zero.written_to ? pos : f->zero.written_to;
        /* a full disk ends the job; what was filled stays filled */
        over = start < step_end && write_all(f->zero.fd, zeros, step_end - start, start) < 0;
        if (!over)
            f->zero.filled = step_end - f->zero.from;
    }
    pthread_mutex_unlock(&f->zero_mu);
    return over;
}

/* On the loop, once the writer is done with a job: the segment's zero-filled space grows by what
 * it wrote, if the segment is still the one written to. */
static void zero_fill_collect(struct fabric *f)
{
    pthread_mutex_lock(&f->zero_mu);
    uint64_t end = f->zero.from + f->zero.filled;
    pthread_mutex_unlock(&f->zero_mu);
    struct topic *t = f->zero_topic;
    f->zero_posted = false;
    f->zero_topic = NULL;
    struct segment *s = &t->segs[t->nsegs - 1];
    if (s->base != f->zero_base || s->fd != f->zero_fd)
        return; /* sealed meanwhile */
    if (end > s->alloc)
        s->alloc = end;
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void topic_free(struct topic *t)
{
    for (size_t i = 0; i < t->nsealed; i++) {
        close(t->sealed[i].fd);
        free(t->sealed[i].idx_path);
        buf_free(&t->sealed[i].idx);
    }
    free(t->sealed);
    buf_free(&t->pending);
    for (size_t i = 0; i < t->nsegs; i++)
        segment_close(&t->segs[i]);
    free(t->segs);
    free(t->dir);
    free(t);
}

/* Loads a topic folder: its segments, in order, with a torn tail cut off. */
static int topic_load(struct fabric *f, const char *name, struct topic **out, char *errmsg,
                      size_t errlen)
{
    struct topic *t = xcalloc(1, sizeof(*t));
    memcpy(t->name, name, strnlen(name, FABRIC_TOPIC_MAX)); /* validated by the caller */
    t->dir = xasprintf("%s/topics/%s", f->dir, name);
    t->dir_synced = true;
    uint64_t *bases = NULL;
    size_t nbases = 0, cap = 0;
    int rc = 0;
    DIR *d = opendir(t->dir);
    if (!d) {
        rc = -errno;
        snprintf(errmsg, errlen, "cannot open %s: %s", t->dir, skiff_strerror(rc));
        goto fail;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        unsigned long long base;
        char tail;
        if (sscanf(de->d_name, "%20llu.lo%c", &base, &tail) != 2 || tail != 'g' ||
            strlen(de->d_name) != 24)
            continue;
        if (nbases == cap) {
            cap = cap ? cap * 2 : 8;
            bases = xrealloc(bases, cap * sizeof(*bases));
        }
        bases[nbases++] = base;
    }
    qsort(bases, nbases, sizeof(*bases), compare_u64);
    /* Indexes whose segment is gone (retention raced their writing) and half-written ones. */
    rewinddir(d);
    while ((de = readdir(d))) {
        unsigned long long base;
        char tail;
        size_t n = strlen(de->d_name);
        bool tmp = str_has_suffix(de->d_name, ".idx.tmp");
        if (!tmp && (sscanf(de->d_name, "%20llu.id%c", &base, &tail) != 2 || tail != 'x' ||
                     n != 24 || bsearch(&base, bases, nbases, sizeof(*bases), compare_u64)))
            continue;
        char *orphan = xasprintf("%s/%s", t->dir, de->d_name);
        unlink(orphan);
        free(orphan);
    }
    closedir(d);

    for (size_t i = 0; i < nbases; i++) {
        char *path = segment_path(t, bases[i]);
        /* Segments never overlap; one that does is not ours to trust. A segment may start
         * past the end of the one before when that one was cut (below): a gap. */
        if (t->nsegs && bases[i] < t->next_offset) {
            log_warning("fabric: topic %s: dropping segment %s (overlaps offset %" PRIu64 ")",
                    name, path, t->next_offset);
            unlink(path);
            free(path);
            path = index_path(t, bases[i]);
            unlink(path);
            free(path);
            continue;
        }
        int fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            rc = -errno;
            snprintf(errmsg, errlen, "cannot open %s: %s", path, skiff_strerror(rc));
            free(path);
            goto fail;
        }
        if (t->nsegs == t->segs_cap) {
            t->segs_cap = t->segs_cap ? t->segs_cap * 2 : 4;
            t->segs = xrealloc(t->segs, t->segs_cap * sizeof(*t->segs));
        }
        struct segment *s = &t->segs[t->nsegs++];
        *s = (struct segment){.base = bases[i], .end = bases[i], .fd = fd};
        /* Sealed segments come back from their index; the last one (and any without a
         * usable index) is read and checked record by record. */
        if (i + 1 < nbases && index_load(t, s) == 0) {
            free(path);
            t->next_offset = s->end;
            if (s->end > s->base)
                t->last_time = s->last_time;
            continue;
        }
        bool torn = false;
        int64_t good = segment_recover(s, &torn);
        if (good < 0) {
            rc = (int)good;
            snprintf(errmsg, errlen, "cannot read %s: %s", path, skiff_strerror(rc));
            free(path);
            goto fail;
        }
        if (torn) {
            /* At the tail of the last segment this is a write torn by a crash, and since
             * acknowledgements go out in offset order after an fsync that covers every file,
             * nothing at or after it was acknowledged: cut it. In a sealed segment it is either
             * the same (a crash during the round that sealed it) or damage on disk; the later
             * segments are kept either way, and readers step over the gap. */
            if (i + 1 < nbases)
                log_warning("fabric: topic %s: records %" PRIu64 " to %llu are unreadable (damaged "
                        "on disk, or cut short by a crash before they were acknowledged); "
                        "cutting %s at byte %" PRId64 "",
                        name, s->end, (unsigned long long)bases[i + 1] - 1, path, good);
            else
                log_warning("fabric: topic %s: cut a torn or corrupt tail from %s at byte %" PRId64
                        "",
                        name, path, good);
            char *idx = index_path(t, s->base);
            unlink(idx);
            free(idx);
            if (ftruncate(fd, good) < 0 || fdatasync(fd) < 0) {
                rc = -errno;
                snprintf(errmsg, errlen, "cannot repair %s: %s", path, skiff_strerror(rc));
                free(path);
                goto fail;
            }
            s->alloc = (uint64_t)good;
        } else if (i + 1 < nbases && s->alloc > s->size) {
            /* a sealed segment keeps no zero-filled space (a crash between its seal and its
             * index): its index, written next time, describes the file's whole length */
            if (ftruncate(fd, good) == 0)
                s->alloc = s->size;
        }
        free(path);
        t->next_offset = s->end;
        if (s->end > s->base)
            t->last_time = s->last_time;
    }
    free(bases);
    bases = NULL;
    if (t->nsegs == 0 && (rc = topic_add_segment(f, t)) < 0) {
        snprintf(errmsg, errlen, "cannot create a segment in %s: %s", t->dir, skiff_strerror(rc));
        goto fail;
    }
    t->durable_end = t->next_offset;
    *out = t;
    return 0;
fail:
    free(bases);
    topic_free(t);
    return rc;
}

static struct topic *topic_find(struct fabric *f, const char *name, size_t *slot)
{
    size_t lo = 0, hi = f->ntopics;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(f->topics[mid]->name, name);
        if (c == 0)
            return f->topics[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (slot)
        *slot = lo;
    return NULL;
}

static void topic_insert(struct fabric *f, struct topic *t, size_t slot)
{
    if (f->ntopics == f->topics_cap) {
        f->topics_cap = f->topics_cap ? f->topics_cap * 2 : 8;
        f->topics = xrealloc(f->topics, f->topics_cap * sizeof(*f->topics));
    }
    memmove(&f->topics[slot + 1], &f->topics[slot], (f->ntopics - slot) * sizeof(*f->topics));
    f->topics[slot] = t;
    f->ntopics++;
}

static int topic_get(struct fabric *f, const char *name, bool create, struct topic **out)
{
    if (!fabric_name_valid(name))
        return -EINVAL;
    size_t slot = 0;
    struct topic *t = topic_find(f, name, &slot);
    if (t) {
        *out = t;
        return 0;
    }
    if (!create)
        return -ENOENT;
    t = xcalloc(1, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->dir = xasprintf("%s/topics/%s", f->dir, name);
    int rc = mkdir(t->dir, 0755) < 0 && errno != EEXIST ? -errno : 0;
    if (rc == 0)
        rc = topic_add_segment(f, t);
    if (rc < 0) {
        topic_free(t);
        return rc;
    }
    f->root_dir_dirty = true;
    topic_insert(f, t, slot);
    *out = t;
    return 0;
}

static const struct fabric_retention *topic_retention(struct fabric *f, struct topic *t)
{
    return t->has_retention ? &t->retention : &f->cfg.retention;
}

/* ---- cursors ------------------------------------------------------------------------------ */

static struct cursor *cursor_find(struct fabric *f, const char *topic, const char *consumer)
{
    for (size_t i = 0; i < f->ncursors; i++)
        if (!strcmp(f->cursors[i].topic, topic) && !strcmp(f->cursors[i].consumer, consumer))
            return &f->cursors[i];
    return NULL;
}

static void cursor_set(struct fabric *f, const char *topic, const char *consumer, uint64_t next,
                       bool remove)
{
    struct cursor *c = cursor_find(f, topic, consumer);
    if (remove) {
        if (c) {
            free(c->topic);
            free(c->consumer);
            *c = f->cursors[--f->ncursors];
        }
        return;
    }
    if (!c) {
        if (f->ncursors == f->cursors_cap) {
            f->cursors_cap = f->cursors_cap ? f->cursors_cap * 2 : 8;
            f->cursors = xrealloc(f->cursors, f->cursors_cap * sizeof(*f->cursors));
        }
        c = &f->cursors[f->ncursors++];
        c->topic = xstrdup(topic);
        c->consumer = xstrdup(consumer);
    }
    c->next_offset = next;
}

/* Cursor log payload: 1 byte (1 set, 2 delete), topic NUL consumer NUL cursor (decimal). The
 * record's offset field numbers the records from 0, as in a topic, so a stale tail is caught. */
static void cursor_record(struct buf *b, uint64_t seq, const char *topic, const char *consumer,
                          uint64_t next, bool remove)
{
    struct buf p = {0};
    buf_putc(&p, remove ? 2 : 1);
    buf_append(&p, topic, strlen(topic) + 1);
    buf_append(&p, consumer, strlen(consumer) + 1);
    char num[24];
    int n = snprintf(num, sizeof(num), "%" PRIu64, next);
    buf_append(&p, num, (size_t)n);
    record_frame(b, seq, time_now_ms(), p.data, p.len);
    buf_free(&p);
}

static int cursor_log_write_all(struct fabric *f, int fd, uint64_t *size)
{
    struct buf b = {0};
    uint64_t seq = 0;
    for (size_t i = 0; i < f->ncursors; i++)
        cursor_record(&b, seq++, f->cursors[i].topic, f->cursors[i].consumer,
                      f->cursors[i].next_offset, false);
    int rc = 0;
    size_t done = 0;
    while (done < b.len) {
        ssize_t n = pwrite(fd, b.data + done, b.len - done, (off_t)done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        done += (size_t)n;
    }
    buf_free(&b);
    f->cursor_seq = seq;
    *size = done;
    return rc;
}

/* Rewrites the cursor log with only the live cursors (temp file, fsync, rename). Runs on the
 * loop thread, rarely, and on a small file. */
static int cursor_log_compact(struct fabric *f)
{
    char *tmp = xasprintf("%s/cursors.log.tmp", f->dir);
    char *path = xasprintf("%s/cursors.log", f->dir);
    int rc = 0;
    uint64_t size = 0;
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        goto done;
    }
    if ((rc = cursor_log_write_all(f, fd, &size)) < 0 || (!f->cfg.no_sync && fsync(fd) < 0) ||
        rename(tmp, path) < 0) {
        rc = rc < 0 ? rc : -errno;
        close(fd);
        unlink(tmp);
        goto done;
    }
    if (f->cursor_fd >= 0)
        close(f->cursor_fd);
    f->cursor_fd = fd;
    f->cursor_log_size = size;
    if (!f->cfg.no_sync)
        fsync_path(f->dir);
done:
    free(tmp);
    free(path);
    return rc;
}

static int cursor_log_load(struct fabric *f, char *errmsg, size_t errlen)
{
    char *path = xasprintf("%s/cursors.log", f->dir);
    int rc = 0;
    f->cursor_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (f->cursor_fd < 0) {
        rc = -errno;
        snprintf(errmsg, errlen, "cannot open %s: %s", path, skiff_strerror(rc));
        goto done;
    }
    struct stat st;
    if (fstat(f->cursor_fd, &st) < 0) {
        rc = -errno;
        goto done;
    }
    struct file_reader r = {.fd = f->cursor_fd, .limit = (uint64_t)st.st_size};
    uint64_t pos = 0, seq = 0;
    for (;;) {
        uint32_t len;
        int64_t time_ms;
        const uint8_t *p;
        rc = reader_record(&r, pos, seq, &len, &time_ms, &p);
        if (rc <= 0)
            break;
        /* op, topic NUL consumer NUL number */
        const char *topic = (const char *)p + 1;
        const char *end = (const char *)p + len;
        const char *consumer = len >= 3 ? memchr(topic, '\0', (size_t)(end - topic)) : NULL;
        const char *num =
            consumer ? memchr(consumer + 1, '\0', (size_t)(end - consumer - 1)) : NULL;
        if (consumer && num) {
            consumer++;
            num++;
            char tmp[24];
            size_t nl = (size_t)(end - num);
            if (nl < sizeof(tmp)) {
                memcpy(tmp, num, nl);
                tmp[nl] = '\0';
                cursor_set(f, topic, consumer, strtoull(tmp, NULL, 10), p[0] == 2);
            }
        }
        pos += FABRIC_RECORD_HEADER + len;
        seq++;
    }
    reader_free(&r);
    if (rc < 0) {
        snprintf(errmsg, errlen, "cannot read %s: %s", path, skiff_strerror(rc));
        goto done;
    }
    rc = 0;
    f->cursor_seq = seq;
    f->cursor_log_size = pos;
    if (pos < (uint64_t)st.st_size &&
        (ftruncate(f->cursor_fd, (off_t)pos) < 0 || fdatasync(f->cursor_fd) < 0)) {
        rc = -errno;
        snprintf(errmsg, errlen, "cannot repair %s: %s", path, skiff_strerror(rc));
    }
done:
    free(path);
    return rc;
}

/* ---- the writer thread and group commit ------------------------------------------------------ */

static void *writer_main(void *arg)
{
    struct fabric *f = arg;
    pthread_mutex_lock(&f->mu);
    for (;;) {
        while (!f->thread_job && !f->thread_quit && !f->zero_queued)
            pthread_cond_wait(&f->cond, &f->mu);
        if (!f->thread_job && f->thread_quit)
            break;
        if (!f->thread_job) {
            /* zero-filling, one step at a time: a round handed over meanwhile goes first */
            pthread_mutex_unlock(&f->mu);
            bool over = zero_fill_step(f);
            pthread_mutex_lock(&f->mu);
            if (over) {
                f->zero_queued = false;
                f->zero_finished = true;
                pthread_mutex_unlock(&f->mu);
                uv_async_send(&f->async);
                pthread_mutex_lock(&f->mu);
            }
            continue;
        }
        struct round *r = f->thread_job;
        f->thread_job = NULL;
        pthread_mutex_unlock(&f->mu);

#ifdef SKIFF_TEST_HOOKS
        if (f->test_sync_delay_ms > 0) /* a stalling disk, for tests that the loop goes on */
            usleep((useconds_t)f->test_sync_delay_ms * 1000);
#endif
        for (size_t i = 0; i < r->count; i++) {
            if (!f->cfg.no_sync && fdatasync(r->targets[i].fd) < 0 && r->status == 0)
                r->status = errno == ENOSPC ? -ENOSPC : -EIO;
            if (!r->targets[i].borrowed)
                close(r->targets[i].fd);
            r->targets[i].fd = -1;
        }
        for (size_t i = 0; i < r->count; i++) {
            if (r->targets[i].idx_path && r->status == 0)
                index_file_write(r->targets[i].idx_path, &r->targets[i].idx);
            free(r->targets[i].idx_path);
            buf_free(&r->targets[i].idx);
        }
        r->ended_ns = time_now_ns();

        pthread_mutex_lock(&f->mu);
        f->thread_done = r;
        pthread_mutex_unlock(&f->mu);
        /* woken after the unlock, the loop takes the round at once instead of waiting for the
         * mutex (on two cores, one more sleep and wake-up per round). The fabric cannot be
         * finished before this send: its round is still in flight until the loop takes it. */
        uv_async_send(&f->async);
        pthread_mutex_lock(&f->mu);
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

static void round_push(struct round *r, struct sync_target target)
{
    if (r->count == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 8;
        r->targets = xrealloc(r->targets, r->cap * sizeof(*r->targets));
    }
    r->targets[r->count++] = target;
}

/* Adds a descriptor to sync (dup()ed: the loop may close the original meanwhile). 0 or a
 * negative errno, the round unchanged. */
static int round_add(struct round *r, struct topic *t, uint64_t end, int fd)
{
    int dupfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dupfd < 0)
        return -errno;
    round_push(r, (struct sync_target){.topic = t, .end = end, .fd = dupfd});
    return 0;
}

/* Adds a topic's active segment by its own descriptor: no dup and close per round. The loop
 * closes a segment's descriptor only when it drops the segment, which it does not do while a
 * round holds it (segment_busy). */
static void round_add_active(struct round *r, struct topic *t)
{
    round_push(r, (struct sync_target){.topic = t,
                                       .end = t->next_offset,
                                       .fd = t->segs[t->nsegs - 1].fd,
                                       .borrowed = true});
}

/* Whether the round in flight syncs this segment's own descriptor. */
static bool segment_busy(const struct fabric *f, const struct segment *s)
{
    for (size_t i = 0; f->round && i < f->round->count; i++)
        if (f->round->targets[i].borrowed && f->round->targets[i].fd == s->fd)
            return true;
    return false;
}

/* Adds a sealed segment; the round takes over its descriptor and index. */
static void round_add_sealed(struct round *r, struct sealed *sl)
{
    round_push(r, (struct sync_target){.fd = sl->fd, .idx_path = sl->idx_path, .idx = sl->idx});
    memset(sl, 0, sizeof(*sl));
}

static int round_add_dir(struct round *r, const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = round_add(r, NULL, 0, fd);
    close(fd);
    return rc;
}

/* Errors that pass by themselves: a round that meets one waits and is tried again, and nothing
 * is refused for it (a disk error stops appends for good, these never do). */
static bool transient_error(int rc)
{
    return rc == -EMFILE || rc == -ENFILE || rc == -ENOMEM || rc == -EAGAIN || rc == -ENOBUFS ||
           rc == -EINTR;
}

#define ROUND_RETRY_MIN_MS 5
#define ROUND_RETRY_MAX_MS 200

static void round_start(struct fabric *f);
static bool round_held(struct fabric *f);
static void on_round_idle(uv_idle_t *h);

/* Takes back the records of a topic's pending write that failed: the file is cut back, the
 * offsets are given again, and the appends that made them are refused with rc on the loop's
 * next turn (their 202 never went out). A full disk or a passing shortage refuses these appends
 * only; any other error, or a file that cannot be cut back, stops the fabric. */
static void topic_unappend(struct fabric *f, struct topic *t, int rc)
{
    struct segment *s = &t->segs[t->nsegs - 1];
    uint64_t pos = t->pending_pos, first = t->pending_first;
    bool passing = rc == -ENOSPC || transient_error(rc);
    s->alloc = pos;
    if (ftruncate(s->fd, (off_t)pos) < 0 || !passing) {
        if (!f->failed) {
            f->failed = rc == -ENOSPC ? -ENOSPC : -EIO;
            log_error("fabric: write to topic %s failed: %s; refusing appends", t->name,
                      skiff_strerror(rc));
        }
    }
    s->size = pos;
    s->end = first;
    t->next_offset = first;
    while (s->index_count && s->index[s->index_count - 1].offset >= first)
        s->index_count--;
    s->index_last_pos = s->index_count ? s->index[s->index_count - 1].pos : 0;
    for (struct waiter **p = &f->waiting; *p;) {
        struct waiter *w = *p;
        if (w->topic != t || w->first < first) {
            p = &w->next;
            continue;
        }
        *p = w->next;
        f->nwaiting--;
        f->stats.appends--;
        f->stats.records -= w->count;
        w->status = rc;
        w->next = NULL;
        *f->refused_tail = w;
        f->refused_tail = &w->next;
    }
    f->waiting_tail = &f->waiting;
    while (*f->waiting_tail)
        f->waiting_tail = &(*f->waiting_tail)->next;
    if (!uv_is_active((uv_handle_t *)&f->round_idle))
        uv_idle_start(&f->round_idle, on_round_idle);
}

/* Writes a topic's pending records (one pwrite for every append since the last); 0 or the
 * error, after which they are taken back (topic_unappend). */
static int topic_flush(struct fabric *f, struct topic *t)
{
    if (!t->pending.len)
        return 0;
    struct segment *s = &t->segs[t->nsegs - 1];
    int rc = write_all(s->fd, t->pending.data, t->pending.len, t->pending_pos);
    buf_reset(&t->pending);
    if (rc < 0)
        topic_unappend(f, t, rc);
    return rc;
}

/* Answers the appends whose records could not be written. */
static void refused_answer(struct fabric *f)
{
    struct waiter *list = f->refused;
    f->refused = NULL;
    f->refused_tail = &f->refused;
    for (struct waiter *w = list, *next; w; w = next) {
        next = w->next;
        f->stats.pending--;
        if (w->append_cb)
            w->append_cb(w->arg, w->status, w->first, w->count);
        free(w);
    }
}

static void on_retry_timer(uv_timer_t *h)
{
    struct fabric *f = h->data;
    f->retry_armed = false;
    round_start(f);
}

static void on_gather_timer(uv_poll_t *h, int status, int events)
{
    struct fabric *f = h->data;
    uint64_t expirations;
    (void)status;
    (void)events;
    (void)!read(f->gather_fd, &expirations, sizeof(expirations));
    uv_poll_stop(h);
    round_start(f); /* waits on when a publish came meanwhile (round_held) */
}

/* Whether the next round should wait a little longer for publishes on their way. Many
 * publishers that each wait for their answer come back together, a moment after a round
 * answered them; a round started at the first of them would split them into two rounds of
 * half as many, each one fdatasync (measured: 30-31 publishes per sync with 64 connections,
 * instead of 64). So after a round, the next one waits until as many publishes are waiting as
 * the round answered plus those that came meanwhile, but no longer than GATHER_QUIET_NS after
 * the round's end or the last publish that came (they stopped coming: the others are not on
 * their way), nor than half the round's sync time (GATHER_MAX_NS at most). A lone publisher is
 * back to one waiting, which is the target: its round starts at once. */
static bool round_held(struct fabric *f)
{
    if (f->closing || f->nwaiting >= f->gather_target || f->gather_fd < 0)
        return false;
    int64_t now = time_now_ns(), until = f->gather_until_ns;
    if (f->gather_last_ns + GATHER_QUIET_NS < until)
        until = f->gather_last_ns + GATHER_QUIET_NS;
    if (now >= until)
        return false;
    if (!uv_is_active((uv_handle_t *)&f->gather_poll)) {
        struct itimerspec its = {.it_value = {.tv_sec = (until - now) / 1000000000,
                                              .tv_nsec = (until - now) % 1000000000}};
        if (timerfd_settime(f->gather_fd, 0, &its, NULL) < 0 ||
            uv_poll_start(&f->gather_poll, UV_READABLE, on_gather_timer) < 0)
            return false;
    }
    return true;
}

/* Called as an append joins the waiting: the gathering ends once the target is reached. */
static void round_hold_update(struct fabric *f)
{
    if (f->gather_target)
        f->gather_last_ns = time_now_ns();
    if (f->gather_target && f->nwaiting >= f->gather_target &&
        uv_is_active((uv_handle_t *)&f->gather_poll)) {
        uv_poll_stop(&f->gather_poll);
        struct itimerspec off = {0};
        timerfd_settime(f->gather_fd, 0, &off, NULL);
    }
}

/* The descriptors a round syncs, gathered before anything is taken from the fabric's state, so
 * that running out of them leaves everything as it was. */
static int round_gather(struct fabric *f, struct round *r)
{
    int rc = 0;
    if (f->root_dir_dirty) {
        char *p = xasprintf("%s/topics", f->dir);
        rc = round_add_dir(r, p);
        free(p);
    }
    for (size_t i = 0; i < f->ntopics && rc == 0; i++) {
        struct topic *t = f->topics[i];
        if (!t->dirty)
            continue;
        if (!t->dir_synced)
            rc = round_add_dir(r, t->dir);
        if (rc == 0)
            round_add_active(r, t);
    }
    if (rc == 0 && f->cursors_dirty)
        rc = round_add(r, NULL, 0, f->cursor_fd);
    return rc;
}

/* Starts a round for everything waiting, unless one is running. */
static void round_start(struct fabric *f)
{
    if (f->round || f->finished || f->retry_armed || (!f->waiting && !f->sealed_pending))
        return;
    if (round_held(f))
        return;
    /* what this round syncs is written first; appends whose write failed leave the waiting */
    for (size_t i = 0; i < f->ntopics; i++)
        topic_flush(f, f->topics[i]);
    if (!f->waiting && !f->sealed_pending)
        return;
    struct round *r = xcalloc(1, sizeof(*r));
    int rc = round_gather(f, r);
    if (rc < 0 && transient_error(rc) && !f->closing) {
        /* e.g. out of descriptors: nothing is lost or refused, the appends wait a little */
        for (size_t i = 0; i < r->count; i++)
            if (!r->targets[i].borrowed)
                close(r->targets[i].fd);
        free(r->targets);
        free(r);
        int64_t now = time_mono_ms();
        if (now - f->retry_logged_ms > 10000) {
            f->retry_logged_ms = now;
            log_error("fabric: cannot start a sync round now (%s): appends wait and it is "
                      "tried again shortly",
                      skiff_strerror(rc));
        }
        f->retry_ms = f->retry_ms ? f->retry_ms * 2 : ROUND_RETRY_MIN_MS;
        if (f->retry_ms > ROUND_RETRY_MAX_MS)
            f->retry_ms = ROUND_RETRY_MAX_MS;
        f->retry_armed = true;
        uv_timer_start(&f->retry_timer, on_retry_timer, (uint64_t)f->retry_ms, 0);
        return;
    }
    f->retry_ms = 0;
    /* a disk that fails to open what it holds (or a close under pressure): the round fails */
    if (rc < 0)
        r->status = transient_error(rc) ? rc : -EIO;
    f->sealed_pending = false;
    r->started_ns = time_now_ns();
    r->waiters = f->waiting;
    f->waiting = NULL;
    f->waiting_tail = &f->waiting;
    f->nwaiting = 0;
    f->gather_target = 0;
    f->root_dir_dirty = false;
    for (size_t i = 0; i < f->ntopics; i++) {
        struct topic *t = f->topics[i];
        if (!t->dirty)
            continue;
        t->dir_synced = true;
        /* Segments sealed since the last round hold records this round acknowledges too. */
        for (size_t k = 0; k < t->nsealed; k++)
            round_add_sealed(r, &t->sealed[k]);
        t->nsealed = 0;
        t->dirty = false;
    }
    f->cursors_dirty = false;
    f->round = r;
    f->stats.syncs++;
    uv_ref((uv_handle_t *)&f->async);
    pthread_mutex_lock(&f->mu);
    f->thread_job = r;
    pthread_mutex_unlock(&f->mu);
    pthread_cond_signal(&f->cond); /* after the unlock, for the same reason as in writer_main */
}

static void on_round_idle(uv_idle_t *h)
{
    struct fabric *f = h->data;
    uv_idle_stop(h);
    refused_answer(f);
    round_start(f);
}

/* A round for what is waiting, on the loop's next turn: the appends still to come in this turn
 * go in the same round (without delay: an idle handle keeps the next poll from waiting). */
static void round_schedule(struct fabric *f)
{
    round_hold_update(f);
    if (!f->round && !uv_is_active((uv_handle_t *)&f->round_idle) &&
        !uv_is_active((uv_handle_t *)&f->gather_poll))
        uv_idle_start(&f->round_idle, on_round_idle);
}

static void subs_reap(struct fabric *f)
{
    if (f->notifying)
        return;
    for (struct fabric_sub **p = &f->subs; *p;) {
        struct fabric_sub *s = *p;
        if (s->removed) {
            *p = s->next;
            free(s->topic);
            free(s);
        } else {
            p = &s->next;
        }
    }
}

static void notify(struct fabric *f, struct topic *t)
{
    f->notifying++;
    for (struct fabric_sub *s = f->subs; s; s = s->next) {
        if (s->removed || (s->topic && strcmp(s->topic, t->name)))
            continue;
        s->cb(s->arg, t->name, t->durable_end);
    }
    f->notifying--;
    subs_reap(f);
}

static void fabric_finish_close(struct fabric *f);

/* Makes a finished round's records visible and answers its waiters; how many it answered. */
static size_t round_complete(struct fabric *f, struct round *r)
{
    size_t answered = 0;
    f->round = NULL;
    f->completing = true;
    f->stats.sync_us_total += (uint64_t)(r->ended_ns - r->started_ns) / 1000;
    if (r->status < 0 && !f->failed) {
        log_error("fabric: fsync failed: %s; refusing appends until restart",
                  skiff_strerror(r->status));
        f->failed = r->status;
    }
    if (r->status == 0) {
        for (size_t i = 0; i < r->count; i++) {
            struct topic *t = r->targets[i].topic;
            if (t && r->targets[i].end > t->durable_end) {
                t->durable_end = r->targets[i].end;
                notify(f, t);
            }
        }
    }
    for (struct waiter *w = r->waiters, *next; w; w = next) {
        next = w->next;
        answered++;
        f->stats.pending--;
        if (w->append_cb)
            w->append_cb(w->arg, r->status, w->first, w->count);
        else if (w->cursor_cb)
            w->cursor_cb(w->arg, r->status);
        free(w);
    }
    /* zero-filled space for the next records, now that this round's answers are out */
    for (size_t i = 0; i < r->count; i++) {
        struct topic *t = r->targets[i].topic;
        if (t && r->status == 0 && !f->failed && !f->closing)
            zero_fill_post(f, t);
    }
    free(r->targets);
    free(r);
    f->completing = false;
    return answered;
}

static void on_round_done(uv_async_t *h)
{
    struct fabric *f = h->data;
    pthread_mutex_lock(&f->mu);
    struct round *r = f->thread_done;
    f->thread_done = NULL;
    bool zero_finished = f->zero_finished;
    f->zero_finished = false;
    pthread_mutex_unlock(&f->mu);
    if (zero_finished) {
        struct topic *zt = f->zero_topic;
        zero_fill_collect(f);
        if (!f->failed && !f->closing)
            zero_fill_post(f, zt); /* when records filled the space faster than it was made */
    }
    if (!r)
        return;
    size_t came = f->nwaiting;
    int64_t sync_ns = r->ended_ns - r->started_ns;
    size_t answered = round_complete(f, r);
    f->gather_target = came + answered;
    f->gather_last_ns = time_now_ns();
    f->gather_until_ns =
        time_now_ns() + (sync_ns / 2 < GATHER_MAX_NS ? sync_ns / 2 : GATHER_MAX_NS);
    round_start(f);
    /* An idle fabric does not keep the loop alive; a round in flight does. */
    if (!f->round)
        uv_unref((uv_handle_t *)&f->async);
    if (f->closing && !f->round)
        fabric_finish_close(f);
}

static void waiter_push(struct fabric *f, struct waiter *w)
{
    w->next = NULL;
    *f->waiting_tail = w;
    f->waiting_tail = &w->next;
    f->nwaiting++;
    f->stats.pending++;
}

/* ---- appending ---------------------------------------------------------------------------- */

static int write_all(int fd, const void *data, size_t len, uint64_t pos)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(fd, (const char *)data + done, len - done, (off_t)(pos + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        done += (size_t)n;
    }
    return 0;
}

/* Seals the active segment and starts a new one. The sealed one is synced by the next round
 * (the records in it that are not durable yet are acknowledged by that round), off the loop. */
static int topic_roll(struct fabric *f, struct topic *t)
{
    int rc = topic_flush(f, t); /* the records of the segment are in it before it is cut */
    if (rc < 0)
        return rc;
    struct segment *s = &t->segs[t->nsegs - 1];
    /* a sealed segment ends at its last record: its index describes the whole file (the
     * writer may have fallocated past what the loop knows as zero-filled) */
    zero_fill_stop(f, s->fd);
    if (ftruncate(s->fd, (off_t)s->size) == 0)
        s->alloc = s->size;
    struct sealed sealed = {.fd = fcntl(s->fd, F_DUPFD_CLOEXEC, 0)};
    if (sealed.fd < 0) {
        /* Out of descriptors: sync it here rather than not at all (and go without an index). */
        if (!f->cfg.no_sync && fdatasync(s->fd) < 0)
            return -EIO;
    } else {
        sealed.idx_path = index_path(t, s->base);
        index_encode(s, &sealed.idx);
    }
    /* the new segment first: when it cannot be opened (no descriptor left), nothing changed
     * and the next append tries again */
    rc = topic_add_segment(f, t);
    if (rc < 0) {
        if (sealed.fd >= 0)
            close(sealed.fd);
        free(sealed.idx_path);
        buf_free(&sealed.idx);
        return rc;
    }
    if (sealed.fd >= 0) {
        if (t->nsealed == t->sealed_cap) {
            t->sealed_cap = t->sealed_cap ? t->sealed_cap * 2 : 4;
            t->sealed = xrealloc(t->sealed, t->sealed_cap * sizeof(*t->sealed));
        }
        t->sealed[t->nsealed++] = sealed;
        /* A sealed segment whose records are all durable still needs a round for its index. */
        t->dirty = true;
        f->sealed_pending = true;
    }
    return 0;
}

static int embedded_append(struct fabric *f, const char *topic, const struct fabric_blob *records,
                           size_t count, fabric_append_cb cb, void *arg, uint64_t *first_offset)
{
    if (f->closing)
        return -ECANCELED;
    if (f->failed)
        return f->failed;
    if (count == 0 || !records)
        return -EINVAL;
    size_t max = f->cfg.max_record_bytes;
    for (size_t i = 0; i < count; i++)
        if (records[i].len > max)
            return -EMSGSIZE;
    struct topic *t;
    int rc = topic_get(f, topic, true, &t);
    if (rc < 0)
        return rc;
    size_t frames = 0;
    for (size_t i = 0; i < count; i++)
        frames += FABRIC_RECORD_HEADER + records[i].len;
    if (t->pending.len && t->pending.len + frames > PENDING_MAX_BYTES &&
        (rc = topic_flush(f, t)) < 0)
        return rc;
    struct segment *s = &t->segs[t->nsegs - 1];
    if (s->size >= (uint64_t)f->cfg.segment_bytes) {
        if ((rc = topic_roll(f, t)) < 0)
            return rc;
        s = &t->segs[t->nsegs - 1];
    }

    /* Wall clocks can step back; record times never do, so seeking by time can bisect. */
    int64_t now = time_now_ms();
    if (now < t->last_time)
        now = t->last_time;
    uint64_t first = t->next_offset;
    if (!t->pending.len) {
        t->pending_pos = s->size;
        t->pending_first = first;
    }
    size_t payload_bytes = 0;
    for (size_t i = 0; i < count; i++) {
        record_frame(&t->pending, first + i, now, records[i].data, records[i].len);
        payload_bytes += records[i].len;
    }
    /* written by topic_flush before the round that syncs them; readers see records only once
     * a round made them durable, so none reads these before */
    zero_fill_claim(f, s->fd, s->size + frames);
    uint64_t pos = s->size;
    for (size_t i = 0; i < count; i++) {
        segment_index_add(s, first + i, pos, now);
        pos += FABRIC_RECORD_HEADER + records[i].len;
    }
    if (s->end == s->base)
        s->first_time = now;
    s->last_time = now;
    s->size = pos;
    s->end = first + count;
    t->next_offset = first + count;
    t->last_time = now;
    t->dirty = true;

    struct waiter *w = xcalloc(1, sizeof(*w));
    w->topic = t;
    w->append_cb = cb;
    w->arg = arg;
    w->first = first;
    w->count = count;
    waiter_push(f, w);
    f->stats.appends++;
    f->stats.records += count;
    f->stats.bytes += payload_bytes;
    if (first_offset)
        *first_offset = first;
    round_schedule(f);
    return 0;
}

/* ---- reading ------------------------------------------------------------------------------ */

static struct segment *segment_for(struct topic *t, uint64_t offset)
{
    size_t lo = 0, hi = t->nsegs;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (t->segs[mid].base <= offset)
            lo = mid;
        else
            hi = mid;
    }
    return &t->segs[lo];
}

/* The index entry at or before offset. */
static const struct index_entry *index_floor(const struct segment *s, uint64_t offset)
{
    if (!s->index_count || s->index[0].offset > offset)
        return NULL;
    size_t lo = 0, hi = s->index_count;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (s->index[mid].offset <= offset)
            lo = mid;
        else
            hi = mid;
    }
    return &s->index[lo];
}

struct read_slot {
    uint64_t offset;
    int64_t time_ms;
    size_t at, len; /* within storage */
};

static int embedded_read(struct fabric *f, const char *topic, uint64_t from, size_t max_records,
                         size_t max_bytes, struct fabric_batch *out)
{
    memset(out, 0, sizeof(*out));
    struct topic *t;
    int rc = topic_get(f, topic, false, &t);
    if (rc < 0)
        return rc;
    uint64_t first = t->segs[0].base;
    if (from < first)
        from = first;
    out->next_offset = from;
    if (from >= t->durable_end || max_records == 0)
        return 0;

    struct buf storage = {0};
    struct read_slot *slots = NULL;
    size_t nslots = 0, cap = 0, bytes = 0;
    uint64_t offset = from;
    while (offset < t->durable_end && nslots < max_records && (nslots == 0 || bytes < max_bytes)) {
        struct segment *s = segment_for(t, offset);
        if (offset >= s->end) {
            if (s == &t->segs[t->nsegs - 1])
                break;
            offset = s[1].base; /* a gap left by a segment cut at recovery */
            continue;
        }
        const struct index_entry *e = index_floor(s, offset);
        uint64_t pos = e ? e->pos : 0, at = e ? e->offset : s->base;
        struct file_reader r = {.fd = s->fd, .limit = s->size};
        while (offset < s->end && offset < t->durable_end && nslots < max_records &&
               (nslots == 0 || bytes < max_bytes)) {
            uint32_t len;
            int64_t time_ms;
            const uint8_t *payload;
            int got = reader_record(&r, pos, at, &len, &time_ms, &payload);
            if (got <= 0) {
                rc = got < 0 ? got : -EIO;
                log_warning("fabric: topic %s: unreadable record %" PRIu64 " at byte %" PRIu64
                        " of segment %" PRIu64 "",
                        t->name, at, pos, s->base);
                reader_free(&r);
                goto fail;
            }
            if (at >= offset) {
                if (nslots == cap) {
                    cap = cap ? cap * 2 : 16;
                    slots = xrealloc(slots, cap * sizeof(*slots));
                }
                slots[nslots++] = (struct read_slot){at, time_ms, storage.len, len};
                buf_append(&storage, payload, len);
                bytes += len;
                offset = at + 1;
            }
            pos += FABRIC_RECORD_HEADER + len;
            at++;
        }
        reader_free(&r);
    }
    out->records = xcalloc(nslots ? nslots : 1, sizeof(*out->records));
    for (size_t i = 0; i < nslots; i++)
        out->records[i] =
            (struct fabric_record){slots[i].offset, slots[i].time_ms,
                                   storage.data ? storage.data + slots[i].at : "", slots[i].len};
    out->count = nslots;
    out->next_offset = offset;
    out->storage_ = buf_steal(&storage);
    free(slots);
    return 0;
fail:
    free(slots);
    buf_free(&storage);
    return rc;
}

void fabric_batch_free(struct fabric_batch *b)
{
    free(b->records);
    free(b->storage_);
    memset(b, 0, sizeof(*b));
}

static int embedded_seek_offset(struct fabric *f, const char *topic, int64_t time_ms,
                                uint64_t *offset)
{
    struct topic *t;
    int rc = topic_get(f, topic, false, &t);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < t->nsegs; i++) {
        struct segment *s = &t->segs[i];
        if (s->end == s->base || s->last_time < time_ms)
            continue;
        /* Bisect the index for the last entry before time_ms, then walk. */
        uint64_t pos = 0, at = s->base;
        size_t lo = 0, hi = s->index_count; /* entries before lo are all older than time_ms */
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (s->index[mid].time_ms < time_ms)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo > 0) {
            pos = s->index[lo - 1].pos;
            at = s->index[lo - 1].offset;
        }
        struct file_reader r = {.fd = s->fd, .limit = s->size};
        while (at < s->end && at < t->durable_end) { /* records past it may not be written */
            uint32_t len;
            int64_t rt;
            const uint8_t *payload;
            int got = reader_record(&r, pos, at, &len, &rt, &payload);
            if (got <= 0) {
                reader_free(&r);
                return got < 0 ? got : -EIO;
            }
            if (rt >= time_ms)
                break;
            pos += FABRIC_RECORD_HEADER + len;
            at++;
        }
        reader_free(&r);
        *offset = at < t->durable_end ? at : t->durable_end;
        return 0;
    }
    *offset = t->durable_end;
    return 0;
}

/* The index and the page cache answer at once: cb runs before this returns. */
static int embedded_seek_time(struct fabric *f, const char *topic, int64_t time_ms,
                              fabric_seek_cb cb, void *arg)
{
    if (!fabric_name_valid(topic))
        return -EINVAL;
    uint64_t offset = 0;
    int rc = embedded_seek_offset(f, topic, time_ms, &offset);
    cb(arg, rc, rc == 0 ? offset : 0);
    return 0;
}

static void topic_describe(const struct topic *t, struct fabric_topic_info *out)
{
    memset(out, 0, sizeof(*out));
    snprintf(out->name, sizeof(out->name), "%s", t->name);
    out->first_offset = t->segs[0].base;
    out->end_offset = t->durable_end;
    if (out->first_offset > out->end_offset)
        out->first_offset = out->end_offset;
    out->records = out->end_offset - out->first_offset;
    for (size_t i = 0; i < t->nsegs; i++)
        out->bytes += t->segs[i].size;
    out->last_time_ms = out->records ? t->last_time : 0;
}

static int embedded_topic_info(struct fabric *f, const char *topic, struct fabric_topic_info *out)
{
    struct topic *t;
    int rc = topic_get(f, topic, false, &t);
    if (rc < 0)
        return rc;
    topic_describe(t, out);
    return 0;
}

static int embedded_topics(struct fabric *f, struct fabric_topic_info **out, size_t *count)
{
    *out = xcalloc(f->ntopics ? f->ntopics : 1, sizeof(**out));
    for (size_t i = 0; i < f->ntopics; i++)
        topic_describe(f->topics[i], &(*out)[i]);
    *count = f->ntopics;
    return 0;
}

static int embedded_topic_create(struct fabric *f, const char *topic)
{
    struct topic *t;
    return topic_get(f, topic, true, &t);
}

/* ---- retention ---------------------------------------------------------------------------- */

static void topic_drop_oldest(struct topic *t)
{
    char *path = segment_path(t, t->segs[0].base);
    unlink(path);
    free(path);
    path = index_path(t, t->segs[0].base);
    unlink(path);
    free(path);
    segment_close(&t->segs[0]);
    memmove(&t->segs[0], &t->segs[1], (t->nsegs - 1) * sizeof(*t->segs));
    t->nsegs--;
}

static void topic_enforce(struct fabric *f, struct topic *t, int64_t now)
{
    const struct fabric_retention *r = topic_retention(f, t);
    if (r->max_age_ms > 0) {
        int64_t cutoff = now - r->max_age_ms;
        /* A quiet topic never fills its segment: once all of it has expired, seal it. */
        struct segment *last = &t->segs[t->nsegs - 1];
        if (last->end > last->base && last->last_time < cutoff &&
            t->durable_end == t->next_offset && !f->closing) {
            topic_roll(f, t);
            round_start(f);
        }
        while (t->nsegs > 1 && t->segs[0].last_time < cutoff && t->segs[0].end <= t->durable_end &&
               !segment_busy(f, &t->segs[0]))
            topic_drop_oldest(t);
    }
    if (r->max_bytes > 0) {
        uint64_t total = 0;
        for (size_t i = 0; i < t->nsegs; i++)
            total += t->segs[i].size;
        while (t->nsegs > 1 && total > (uint64_t)r->max_bytes && t->segs[0].end <= t->durable_end &&
               !segment_busy(f, &t->segs[0])) {
            total -= t->segs[0].size;
            topic_drop_oldest(t);
        }
    }
}

static void embedded_enforce_retention(struct fabric *f)
{
    int64_t now = time_now_ms();
    for (size_t i = 0; i < f->ntopics; i++)
        topic_enforce(f, f->topics[i], now);
}

static void on_retention_timer(uv_timer_t *h)
{
    fabric_enforce_retention(h->data);
}

static int embedded_topic_set_retention(struct fabric *f, const char *topic,
                                        const struct fabric_retention *r)
{
    struct topic *t;
    int rc = topic_get(f, topic, true, &t);
    if (rc < 0)
        return rc;
    t->has_retention = true;
    t->retention = *r;
    return 0;
}

/* ---- subscriptions ------------------------------------------------------------------------ */

static int embedded_subscribe(struct fabric *f, const char *topic, fabric_notify_cb cb, void *arg,
                              struct fabric_sub **out)
{
    if (topic && !fabric_name_valid(topic))
        return -EINVAL;
    struct fabric_sub *s = xcalloc(1, sizeof(*s));
    s->f = f;
    s->topic = topic ? xstrdup(topic) : NULL;
    s->cb = cb;
    s->arg = arg;
    s->next = f->subs;
    f->subs = s;
    *out = s;
    return 0;
}

static void embedded_unsubscribe(struct fabric_sub *sub)
{
    if (!sub)
        return;
    sub->removed = true;
    subs_reap(sub->f);
}

/* ---- cursors (public) ------------------------------------------------------------------- */

static int embedded_cursor_get(struct fabric *f, const char *topic, const char *consumer,
                               uint64_t *next_offset)
{
    if (!fabric_name_valid(topic) || !fabric_name_valid(consumer))
        return -EINVAL;
    struct cursor *c = cursor_find(f, topic, consumer);
    if (!c)
        return -ENOENT;
    *next_offset = c->next_offset;
    return 0;
}

static int cursor_change(struct fabric *f, const char *topic, const char *consumer, uint64_t next,
                         bool remove, void (*cb)(void *arg, int status), void *arg)
{
    if (f->closing)
        return -ECANCELED;
    if (f->failed)
        return f->failed;
    if (!fabric_name_valid(topic) || !fabric_name_valid(consumer))
        return -EINVAL;
    if (remove && !cursor_find(f, topic, consumer))
        return 0;
    int rc;
    if (f->cursor_log_size > CURSOR_LOG_COMPACT_BYTES &&
        f->cursor_log_size > 64 * (uint64_t)(f->ncursors + 1) * 64) {
        cursor_set(f, topic, consumer, next, remove);
        if ((rc = cursor_log_compact(f)) < 0)
            return rc;
    } else {
        buf_reset(&f->scratch);
        cursor_record(&f->scratch, f->cursor_seq, topic, consumer, next, remove);
        if ((rc = write_all(f->cursor_fd, f->scratch.data, f->scratch.len, f->cursor_log_size)) <
            0) {
            if (ftruncate(f->cursor_fd, (off_t)f->cursor_log_size) < 0)
                f->failed = -EIO;
            return rc == -ENOSPC ? rc : -EIO;
        }
        f->cursor_seq++;
        f->cursor_log_size += f->scratch.len;
        cursor_set(f, topic, consumer, next, remove);
    }
    f->cursors_dirty = true;
    struct waiter *w = xcalloc(1, sizeof(*w));
    w->cursor_cb = cb;
    w->arg = arg;
    waiter_push(f, w);
    round_start(f);
    return 0;
}

static int embedded_cursor_commit(struct fabric *f, const char *topic, const char *consumer,
                                  uint64_t next_offset, void (*cb)(void *arg, int status),
                                  void *arg)
{
    return cursor_change(f, topic, consumer, next_offset, false, cb, arg);
}

static int embedded_cursor_delete(struct fabric *f, const char *topic, const char *consumer)
{
    return cursor_change(f, topic, consumer, 0, true, NULL, NULL);
}

/* ---- open and close ----------------------------------------------------------------------- */

static void embedded_get_stats(struct fabric *f, struct fabric_stats *out)
{
    *out = f->stats;
}

static void fabric_free(struct fabric *f)
{
    for (size_t i = 0; i < f->ntopics; i++)
        topic_free(f->topics[i]);
    free(f->topics);
    for (size_t i = 0; i < f->ncursors; i++) {
        free(f->cursors[i].topic);
        free(f->cursors[i].consumer);
    }
    free(f->cursors);
    if (f->cursor_fd >= 0)
        close(f->cursor_fd);
    if (f->gather_fd >= 0)
        close(f->gather_fd);
    for (struct fabric_sub *s = f->subs, *n; s; s = n) {
        n = s->next;
        free(s->topic);
        free(s);
    }
    buf_free(&f->scratch);
    pthread_mutex_destroy(&f->mu);
    pthread_mutex_destroy(&f->zero_mu);
    pthread_cond_destroy(&f->cond);
    free(f->dir);
    free(f);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct fabric *f = h->data;
    if (--f->handles_open > 0)
        return;
    void (*done)(void *) = f->close_done;
    void *arg = f->close_arg;
    fabric_free(f);
    if (done)
        done(arg);
}

static void fabric_finish_close(struct fabric *f)
{
    if (f->finished)
        return;
    f->finished = true;
    refused_answer(f);
    if (f->thread_started) {
        pthread_mutex_lock(&f->mu);
        f->thread_quit = true;
        pthread_cond_signal(&f->cond);
        pthread_mutex_unlock(&f->mu);
        pthread_join(f->thread, NULL);
        f->thread_started = false;
    }
    uv_close((uv_handle_t *)&f->async, on_handle_closed);
    uv_close((uv_handle_t *)&f->retention_timer, on_handle_closed);
    uv_close((uv_handle_t *)&f->retry_timer, on_handle_closed);
    uv_close((uv_handle_t *)&f->round_idle, on_handle_closed);
    uv_close((uv_handle_t *)&f->gather_poll, on_handle_closed);
}

static void embedded_close(struct fabric *f, void (*done)(void *arg), void *arg)
{
    if (f->closing)
        return;
    f->closing = true;
    f->close_done = done;
    f->close_arg = arg;
    uv_timer_stop(&f->retention_timer);
    uv_timer_stop(&f->retry_timer);
    f->retry_armed = false;
    /* Subscribers hear no more; pending appends still get their round. */
    for (struct fabric_sub *s = f->subs; s; s = s->next)
        s->removed = true;
    subs_reap(f);
    if (f->completing)
        return; /* on_round_done finishes the close once its callbacks are done */
    round_start(f);
    if (!f->round)
        fabric_finish_close(f);
}

int fabric_log_open(uv_loop_t *loop, const struct fabric_config *cfg, struct fabric **out,
                    char *errmsg, size_t errlen)
{
    char scratch_err[16];
    if (!errmsg) {
        errmsg = scratch_err;
        errlen = sizeof(scratch_err);
    }
    *out = NULL;
    if (!cfg || !cfg->dir || !*cfg->dir) {
        snprintf(errmsg, errlen, "no folder given for the event fabric");
        return -EINVAL;
    }
    struct fabric *f = xcalloc(1, sizeof(*f));
    f->ops = &fabric_log_ops;
    f->loop = loop;
    f->dir = xstrdup(cfg->dir);
    f->cfg = *cfg;
    f->cfg.dir = f->dir;
    if (f->cfg.segment_bytes <= 0)
        f->cfg.segment_bytes = 64 << 20;
    if (f->cfg.max_record_bytes == 0)
        f->cfg.max_record_bytes = 1u << 20;
    if (f->cfg.max_record_bytes > FABRIC_RECORD_HARD_MAX)
        f->cfg.max_record_bytes = FABRIC_RECORD_HARD_MAX;
    f->cursor_fd = -1;
    f->gather_fd = -1;
    f->waiting_tail = &f->waiting;
    f->refused_tail = &f->refused;
    pthread_mutex_init(&f->mu, NULL);
    pthread_mutex_init(&f->zero_mu, NULL);
    pthread_cond_init(&f->cond, NULL);
    f->zero_fd = -1;
#ifdef SKIFF_TEST_HOOKS
    const char *delay = getenv("SKIFF_FABRIC_TEST_SYNC_DELAY_MS");
    f->test_sync_delay_ms = delay ? atoi(delay) : 0;
#endif

    int rc;
    char *topics_dir = xasprintf("%s/topics", f->dir);
    if ((rc = mkdir_p(topics_dir, 0755)) < 0) {
        snprintf(errmsg, errlen, "cannot create %s: %s", topics_dir, skiff_strerror(rc));
        free(topics_dir);
        goto fail;
    }
    DIR *d = opendir(topics_dir);
    if (!d) {
        rc = -errno;
        snprintf(errmsg, errlen, "cannot open %s: %s", topics_dir, skiff_strerror(rc));
        free(topics_dir);
        goto fail;
    }
    free(topics_dir);
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!fabric_name_valid(de->d_name))
            continue;
        struct topic *t = NULL;
        if ((rc = topic_load(f, de->d_name, &t, errmsg, errlen)) < 0) {
            closedir(d);
            goto fail;
        }
        size_t slot = 0;
        topic_find(f, t->name, &slot);
        topic_insert(f, t, slot);
    }
    closedir(d);
    if ((rc = cursor_log_load(f, errmsg, errlen)) < 0)
        goto fail;
    if (!f->cfg.no_sync)
        fsync_path(f->dir);

    /* the first handle: a failure here leaves nothing to close */
    f->gather_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    rc = f->gather_fd < 0 ? -errno : uv_poll_init(loop, &f->gather_poll, f->gather_fd);
    if (rc < 0) {
        snprintf(errmsg, errlen, "cannot set up the fabric's round timer: %s", skiff_strerror(rc));
        goto fail;
    }
    f->gather_poll.data = f;
    if ((rc = uv_async_init(loop, &f->async, on_round_done)) < 0) {
        snprintf(errmsg, errlen, "cannot set up the fabric's wake-up: %s", skiff_strerror(rc));
        goto fail;
    }
    f->async.data = f;
    uv_unref((uv_handle_t *)&f->async);
    uv_timer_init(loop, &f->retention_timer);
    f->retention_timer.data = f;
    uv_timer_init(loop, &f->retry_timer);
    f->retry_timer.data = f;
    uv_idle_init(loop, &f->round_idle);
    f->round_idle.data = f;
    f->handles_open = 5;
    if ((rc = -pthread_create(&f->thread, NULL, writer_main, f)) < 0) {
        snprintf(errmsg, errlen, "cannot start the fabric's writer thread: %s", skiff_strerror(rc));
        f->closing = true;
        fabric_finish_close(f); /* frees f once the handles are closed */
        return rc;
    }
    f->thread_started = true;
    uv_timer_start(&f->retention_timer, on_retention_timer, RETENTION_PERIOD_MS,
                   RETENTION_PERIOD_MS);
    uv_unref((uv_handle_t *)&f->retention_timer);
    fabric_enforce_retention(f);
    *out = f;
    return 0;
fail:
    fabric_free(f);
    return rc;
}

const struct fabric_ops fabric_log_ops = {
    .name = "log",
    .close = embedded_close,
    .append = embedded_append,
    .read = embedded_read,
    .seek_time = embedded_seek_time,
    .topic_info = embedded_topic_info,
    .topics = embedded_topics,
    .topic_create = embedded_topic_create,
    .topic_set_retention = embedded_topic_set_retention,
    .enforce_retention = embedded_enforce_retention,
    .subscribe = embedded_subscribe,
    .unsubscribe = embedded_unsubscribe,
    .cursor_get = embedded_cursor_get,
    .cursor_commit = embedded_cursor_commit,
    .cursor_delete = embedded_cursor_delete,
    .get_stats = embedded_get_stats,
};
