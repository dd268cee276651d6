/* fabric_nats: the fabric on NATS JetStream (libnats), chosen by fabric_config.nats_url.
 *
 * Mapping (see README.md): a topic is a stream SKIFF_EV_<T> holding one subject
 * skiff.events.<T>, where <T> is the fabric's topic name with '.' written as '~' (a name has
 * no '~', '*', '>' or space: fabric_name_valid), so every topic is exactly one subject token
 * and no name can reach, or match as a wildcard, another topic's subject. Offset N is stream
 * sequence N + 1. Retention is the stream's MaxAge / MaxBytes. A cursor is a durable pull
 * consumer of the topic's stream, named after the fabric's consumer: its acknowledgement floor
 * is the cursor (a commit to N acknowledges the record at offset N - 1, AckAll), a move to any
 * other place (a replay, backwards or forwards) makes the consumer again with that start
 * sequence. A subscription is an ordered push consumer (headers only) whose messages carry the
 * stream sequence: their handler, on a libnats thread, hands the new end to the loop.
 *
 * Nothing on the loop waits for NATS. Appends to a known stream are asynchronous
 * publishes (libnats calls on_ack on its own thread); every JetStream API request (stream
 * creation and information, listings, reads, searches by time, consumer creation, fetches,
 * acknowledgements, deletes) is a job run by this fabric's worker thread, one at a time in the
 * order they were asked, and its result comes back to the loop through the same uv_async. What the
 * loop's synchronous calls answer comes from what those jobs brought: topic information from a
 * listing (asked again when an answer is older than LIST_EVERY_MS) and from every acknowledgement
 * and watch message; cursors from the consumers listed at open and every commit; reads from records
 * a job fetched, else -EAGAIN: the read is fetched meanwhile and the topic's subscribers are told
 * when it is here.
 */
#include "fabric/fabric_backend.h"

#include <errno.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "natsconn/natsconn.h"

#define STREAM_PREFIX "SKIFF_EV_"
#define SUBJECT_PREFIX "skiff.events."
#define PENDING_HEADER "Skiff-Pending"
#define REQUEST_WAIT_MS 2000
#define PUBLISH_WAIT_MS 5000
#define LIST_EVERY_MS 2000
#define LIST_MISS_MS 200 /* a topic not known yet: asked again sooner */
#define FETCH_RECORDS 256
/* A consumer's records are acknowledged by the cursor, however long the invoker keeps them;
 * the server redelivers unacknowledged ones after this, which a cursor read steps over. */
#define ACK_WAIT_NS ((int64_t)600 * 1000000000)
#define NAME_SIZE (FABRIC_TOPIC_MAX + 32)

enum pending_kind { PENDING_APPEND, PENDING_COMMIT };

/* One fabric_append or cursor commit waiting for its acknowledgements. Shared with libnats's
 * and the worker's threads: fields below `remaining` change only under the fabric's lock. */
struct pending {
    struct pending *next, *prev; /* in flight, then done */
    enum pending_kind kind;
    struct topic *topic;
    fabric_append_cb append_cb;
    void (*commit_cb)(void *arg, int status);
    void *arg;
    size_t count;
    int64_t started_us;
    size_t remaining;
    uint64_t first_seq; /* the smallest acknowledged sequence */
    int status;
};

/* What the loop knows of a stream: from the last listing, information request,
 * acknowledgement or watch message. */
struct stream_cache {
    bool known;
    uint64_t first_seq, last_seq, bytes;
    int64_t last_time_ns;
};

/* Records a job fetched for fabric_read: the loop answers reads from them. */
struct read_cache {
    uint64_t from, next; /* they answer a read from `from`; a read from `next` reads on */
    natsMsg **msgs;
    size_t n;
    int error; /* the fetch failed: the next read from `from` says so once */
};

/* A topic this fabric has touched. Never freed before the fabric: libnats may still be in a
 * handler holding it. Loop-owned unless said otherwise. */
struct topic {
    struct fabric *f;
    struct topic *next;
    char name[FABRIC_TOPIC_MAX + 1];
    char stream[NAME_SIZE], subject[NAME_SIZE];
    bool stream_known;  /* created or found on the server by this fabric */
    size_t stream_jobs; /* ensure and publish jobs queued: appends go behind them */
    bool has_retention;
    struct fabric_retention retention;
    struct stream_cache cache;
    struct read_cache reads;
    bool read_queued;
    bool info_queued;
    natsSubscription *watch; /* while subscribers exist */
    bool watch_queued;
    size_t subscribers;
    /* under the lock: the newest end seen by the watch and whether the loop was told */
    uint64_t seen_end;
    bool queued;
    struct topic *queued_next;
};

/* A consumer's cursor on a topic: a durable pull consumer. Loop-owned except `pull`, which
 * only the worker touches. */
struct cursor {
    struct cursor *next;
    struct topic *t;
    char name[FABRIC_CONSUMER_MAX + 1];
    char durable[FABRIC_CONSUMER_MAX + 1];
    bool known;     /* the consumer exists, its floor below */
    uint64_t floor; /* the next offset not acknowledged */
    bool bound;     /* this process made the consumer start at its floor */
    unsigned gen;   /* bumped when the consumer is made again: older fetches are void */
    bool fetch_queued;
    uint64_t fetch_end; /* the topic's end when the fetch was asked */
    natsMsg **buf;      /* fetched, not yet read */
    size_t buf_n;
    natsMsg **held; /* read, not yet acknowledged */
    size_t held_n;
    uint64_t read_end;      /* one past the newest record handed out */
    natsSubscription *pull; /* the worker's */
    /* where a consumer not known yet starts, when no process has made it meanwhile: the
     * reader's `from` (the place its owner recorded for it), else the topic's end */
    bool start_given;
    uint64_t start;
};

struct fabric_sub {
    struct fabric *f; /* first: see fabric_backend.h */
    struct fabric_sub *next;
    struct topic *topic; /* NULL: every topic */
    fabric_notify_cb cb;
    void *arg;
    bool removed;
};

enum job_kind {
    JOB_ENSURE,  /* make the stream, or bring it to the topic's limits */
    JOB_PUBLISH, /* JOB_ENSURE, then publish the records */
    JOB_LIST,    /* every stream's state */
    JOB_INFO,    /* one stream's state */
    JOB_READ,    /* records for fabric_read */
    JOB_WATCH,   /* start a topic's ordered consumer */
    JOB_UNWATCH, /* stop one */
    JOB_FETCH,   /* records for a cursor read, through its consumer */
    JOB_ACK,     /* acknowledge up to a record */
    JOB_MOVE,    /* make the consumer again at an offset */
    JOB_DROP,    /* delete the consumer */
    JOB_UNBIND,  /* let go of the consumer: the next read binds at its floor */
    JOB_SEEK,    /* the offset of the first record at or after a time */
};

struct list_entry {
    char name[FABRIC_TOPIC_MAX + 1];
    jsStreamState st;
};

/* One request for the worker; inputs above `rc`, results below. */
struct job {
    struct job *next;
    enum job_kind kind;
    struct topic *t;
    struct cursor *c;
    struct fabric_retention retention; /* ENSURE, PUBLISH */
    struct pending *p;                 /* PUBLISH, ACK, MOVE */
    struct fabric_blob *records;       /* PUBLISH: copies */
    size_t count;
    uint64_t from;         /* READ: offset; MOVE: the new floor */
    size_t max;            /* READ, FETCH */
    unsigned gen;          /* FETCH, MOVE */
    char *reply;           /* ACK: the acknowledged record's reply subject */
    natsSubscription *sub; /* UNWATCH; WATCH: result */
    bool notify_all;       /* INFO: for the topic-less subscribers */
    int rc;
    bool have_state;
    jsStreamState st;
    natsMsg **msgs; /* READ, FETCH */
    size_t n;
    uint64_t read_next;      /* READ: where a read after these records starts */
    struct list_entry *list; /* LIST */
    size_t list_n;
    bool have_floor; /* FETCH (a bind), MOVE */
    uint64_t floor;
    int64_t time_ms; /* SEEK: what it looks for; the offset found goes in `from` */
    fabric_seek_cb seek_cb;
    void *seek_arg;
};

struct fabric {
    const struct fabric_ops *ops; /* first: see fabric_backend.h */
    uv_loop_t *loop;
    struct fabric_config cfg;
    char *url;
    natsConnection *nc;
    jsCtx *js;
    natsSubscription *all_watch; /* core subscription for topic-less subscribers */
    struct topic *topics;
    struct cursor *cursors;
    struct fabric_sub *subs;
    int dispatching;
    size_t live_subs; /* subscriptions not yet unsubscribed */
    size_t jobs_out;  /* jobs queued and not yet back */
    bool list_queued;
    uint64_t listed_at; /* uv_now of the last listing */
    bool closing;
    uv_async_t async;
    int handles;
    void (*close_done)(void *arg);
    void *close_arg;
    struct fabric_stats stats;

    pthread_t worker;
    bool worker_started;
    pthread_mutex_t lock; /* the rest */
    pthread_cond_t wake;
    int64_t refused_logged_s;  /* the second of the last "not stored" line (pending_fail_locked) */
    unsigned refused_unlogged; /* records refused since that line, not logged one by one */
    bool worker_stop;
    struct job *queue, **queue_tail, *done, **done_tail_jobs;
    struct pending *inflight, *done_p, **done_tail;
    struct topic *notify; /* topics whose watch saw new records */
    char **all_notify;    /* topic names seen by all_watch */
    size_t all_notify_n;
};

static void dispatch(struct fabric *f);

/* ---- names ----------------------------------------------------------------------------- */

static void escape_name(const char *name, char *out)
{
    for (; *name; name++)
        *out++ = *name == '.' ? '~' : *name;
    *out = 0;
}

static bool unescape_stream(const char *stream, char out[FABRIC_TOPIC_MAX + 1])
{
    size_t plen = strlen(STREAM_PREFIX);
    if (strncmp(stream, STREAM_PREFIX, plen) || strlen(stream + plen) > FABRIC_TOPIC_MAX)
        return false;
    size_t i = 0;
    for (const char *p = stream + plen; *p; p++)
        out[i++] = *p == '~' ? '.' : *p;
    out[i] = 0;
    return fabric_name_valid(out);
}

/* ---- errors ---------------------------------------------------------------------------- */

static int errno_of(natsStatus s, jsErrCode jerr)
{
    if (s == NATS_OK)
        return 0;
    if (jerr == JSStreamNotFoundErr || jerr == JSNoMessageFoundErr ||
        jerr == JSConsumerNotFoundErr || s == NATS_NOT_FOUND)
        return -ENOENT;
    return natsconn_errno(s);
}

static bool link_up(struct fabric *f)
{
    return natsConnection_Status(f->nc) == NATS_CONN_STATUS_CONNECTED;
}

static bool connected(struct fabric *f)
{
    return !f->closing && link_up(f);
}

static void request_options(jsOptions *o)
{
    jsOptions_Init(o);
    o->Wait = REQUEST_WAIT_MS;
}

/* ---- topics and cursors (the loop's) ------------------------------------------------------ */

static struct topic *topic_find(struct fabric *f, const char *name, bool create)
{
    for (struct topic *t = f->topics; t; t = t->next)
        if (!strcmp(t->name, name))
            return t;
    if (!create)
        return NULL;
    struct topic *t = xcalloc(1, sizeof(*t));
    char esc[FABRIC_TOPIC_MAX + 1];
    escape_name(name, esc);
    t->f = f;
    snprintf(t->name, sizeof(t->name), "%s", name);
    snprintf(t->stream, sizeof(t->stream), STREAM_PREFIX "%s", esc);
    snprintf(t->subject, sizeof(t->subject), SUBJECT_PREFIX "%s", esc);
    t->next = f->topics;
    f->topics = t;
    return t;
}

static struct cursor *cursor_find(struct fabric *f, struct topic *t, const char *consumer,
                                  bool create)
{
    for (struct cursor *c = f->cursors; c; c = c->next)
        if (c->t == t && !strcmp(c->name, consumer))
            return c;
    if (!create)
        return NULL;
    struct cursor *c = xcalloc(1, sizeof(*c));
    c->t = t;
    snprintf(c->name, sizeof(c->name), "%s", consumer);
    escape_name(consumer, c->durable);
    c->next = f->cursors;
    f->cursors = c;
    return c;
}

static void msgs_free(natsMsg **msgs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        natsMsg_Destroy(msgs[i]);
    free(msgs);
}

/* A record's stream sequence and time: a message request's answer carries them in headers, a
 * consumer's delivery in its reply subject (its metadata). */
static uint64_t msg_seq(natsMsg *m)
{
    uint64_t seq = natsMsg_GetSequence(m);
    jsMsgMetaData *meta = NULL;
    if (!seq && natsMsg_GetMetaData(&meta, m) == NATS_OK)
        seq = meta->Sequence.Stream;
    jsMsgMetaData_Destroy(meta);
    return seq;
}

static int64_t msg_time_ms(natsMsg *m)
{
    int64_t ns = natsMsg_GetTime(m);
    jsMsgMetaData *meta = NULL;
    if (!ns && natsMsg_GetMetaData(&meta, m) == NATS_OK)
        ns = meta->Timestamp;
    jsMsgMetaData_Destroy(meta);
    return ns / 1000000;
}

static uint64_t msg_offset(natsMsg *m)
{
    return msg_seq(m) - 1;
}

static void cache_state(struct topic *t, const jsStreamState *st)
{
    t->cache.known = true;
    t->cache.first_seq = st->FirstSeq;
    if (st->LastSeq > t->cache.last_seq || st->LastSeq < t->cache.first_seq)
        t->cache.last_seq = st->LastSeq;
    t->cache.bytes = st->Bytes;
    if (st->Msgs)
        t->cache.last_time_ns = st->LastTime;
}

/* ---- the worker --------------------------------------------------------------------------- */

static void job_queue(struct fabric *f, struct job *j)
{
    f->jobs_out++;
    pthread_mutex_lock(&f->lock);
    j->next = NULL;
    *f->queue_tail = j;
    f->queue_tail = &j->next;
    pthread_cond_signal(&f->wake);
    pthread_mutex_unlock(&f->lock);
}

static struct job *job_new(enum job_kind kind, struct topic *t)
{
    struct job *j = xcalloc(1, sizeof(*j));
    j->kind = kind;
    j->t = t;
    if (t) /* what a stream made or updated by the job gets */
        j->retention = t->has_retention ? t->retention : t->f->cfg.retention;
    return j;
}

static void stream_config(struct fabric *f, jsStreamConfig *sc, const char *name,
                          const char **subject, const struct fabric_retention *r)
{
    jsStreamConfig_Init(sc);
    sc->Name = name;
    sc->Subjects = subject;
    sc->SubjectsLen = 1;
    sc->Storage = js_FileStorage;
    sc->Retention = js_LimitsPolicy;
    sc->Discard = js_DiscardOld;
    sc->Replicas = f->cfg.nats_replicas > 0 ? f->cfg.nats_replicas : 1;
    if (r && r->max_age_ms > 0) {
        /* JetStream's shortest max age is 100 ms */
        sc->MaxAge = (r->max_age_ms < 100 ? 100 : r->max_age_ms) * 1000000;
        /* JetStream refuses a de-duplication window longer than the records are kept */
        if (sc->MaxAge < (int64_t)120 * 1000000000)
            sc->Duplicates = sc->MaxAge;
    }
    if (r && r->max_bytes > 0)
        sc->MaxBytes = r->max_bytes;
}

static void take_state(struct job *j, jsStreamInfo *si)
{
    j->st = si->State;
    j->st.Subjects = NULL;
    j->st.Deleted = NULL;
    j->st.Lost = NULL;
    j->have_state = true;
}

/* Worker: creates the stream, or brings an existing one's limits and replicas to the job's. */
static int work_ensure(struct fabric *f, struct job *j)
{
    jsStreamConfig sc;
    const char *subject = j->t->subject;
    stream_config(f, &sc, j->t->stream, &subject, &j->retention);
    sc.MaxMsgSize = (int32_t)f->cfg.max_record_bytes;
    jsOptions o;
    request_options(&o);
    jsErrCode jerr = 0;
    jsStreamInfo *si = NULL;
    natsStatus s = js_AddStream(&si, f->js, &sc, &o, &jerr);
    if (s != NATS_OK && jerr == JSStreamNameExistErr) {
        jerr = 0;
        s = js_UpdateStream(&si, f->js, &sc, &o, &jerr);
    }
    if (s == NATS_OK)
        take_state(j, si);
    jsStreamInfo_Destroy(si);
    if (s != NATS_OK)
        log_warning("fabric: JetStream refused stream %s: %s (error %d)", sc.Name,
                    nats_GetLastError(NULL), (int)jerr);
    return errno_of(s, jerr);
}

static int work_info(struct fabric *f, struct job *j)
{
    jsOptions o;
    request_options(&o);
    jsErrCode jerr = 0;
    jsStreamInfo *si = NULL;
    natsStatus s = js_GetStreamInfo(&si, f->js, j->t->stream, &o, &jerr);
    if (s == NATS_OK)
        take_state(j, si);
    jsStreamInfo_Destroy(si);
    return errno_of(s, jerr);
}

static int work_list(struct fabric *f, struct job *j)
{
    jsOptions o;
    request_options(&o);
    jsErrCode jerr = 0;
    jsStreamInfoList *list = NULL;
    natsStatus s = js_Streams(&list, f->js, &o, &jerr);
    if (s == NATS_NOT_FOUND)
        return 0; /* no stream at all */
    int rc = errno_of(s, jerr);
    if (rc < 0)
        return rc;
    j->list = xcalloc((size_t)list->Count + 1, sizeof(*j->list));
    for (int i = 0; i < list->Count; i++) {
        struct list_entry *e = &j->list[j->list_n];
        if (!unescape_stream(list->List[i]->Config->Name, e->name))
            continue;
        e->st = list->List[i]->State;
        e->st.Subjects = NULL;
        e->st.Deleted = NULL;
        e->st.Lost = NULL;
        j->list_n++;
    }
    jsStreamInfoList_Destroy(list);
    return 0;
}

static int get_msg(struct fabric *f, const char *stream, uint64_t seq, natsMsg **out)
{
    jsOptions o;
    request_options(&o);
    jsErrCode jerr = 0;
    natsStatus s = js_GetMsg(out, f->js, stream, seq, &o, &jerr);
    return errno_of(s, jerr);
}

/* Worker: the records of a fabric_read, one message request each, after the stream's state. */
static int work_read(struct fabric *f, struct job *j)
{
    int rc = work_info(f, j);
    if (rc < 0)
        return rc;
    uint64_t seq = j->from + 1;
    if (j->st.FirstSeq && seq < j->st.FirstSeq)
        seq = j->st.FirstSeq;
    size_t bytes = 0;
    j->msgs = xcalloc(j->max ? j->max : 1, sizeof(*j->msgs));
    while (seq <= j->st.LastSeq && j->n < j->max && bytes < (4u << 20)) {
        natsMsg *m = NULL;
        rc = get_msg(f, j->t->stream, seq++, &m);
        if (rc == -ENOENT) /* removed by retention meanwhile */
            continue;
        if (rc < 0)
            break;
        j->msgs[j->n++] = m;
        bytes += (size_t)natsMsg_GetDataLength(m);
    }
    j->read_next = seq - 1;
    return j->n ? 0 : rc == -ENOENT ? 0 : rc;
}

/* Publishes one record of p; returns 0 or a negative errno (the record was not sent). */
static int publish(struct fabric *f, struct pending *p, const char *subject, const void *data,
                   size_t len)
{
    natsMsg *msg = NULL;
    char tag[32];
    snprintf(tag, sizeof(tag), "%p", (void *)p);
    natsStatus s = natsMsg_Create(&msg, subject, NULL, data, (int)len);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(msg, PENDING_HEADER, tag);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = PUBLISH_WAIT_MS;
    if (s == NATS_OK)
        s = js_PublishMsgAsync(f->js, &msg, &po);
    natsMsg_Destroy(msg);
    return errno_of(s, 0);
}

static void pending_finish_locked(struct fabric *f, struct pending *p);

/* A record published on topic was not stored (rc, why; code: JetStream's error, or 0): the
 * publisher is answered with rc (a 503 for most). Logged at most once a second, with how many
 * more were refused meanwhile, so that such an answer's cause (the link down, no stream
 * leader answering, a JetStream error) can be told afterwards. */
static void refusal_log_locked(struct fabric *f, const char *topic, int rc, const char *why,
                               int code)
{
    if (rc == -ECANCELED)
        return; /* closing */
    int64_t second = time_mono_ms() / 1000;
    if (second == f->refused_logged_s) {
        f->refused_unlogged++;
        return;
    }
    log_warning("fabric: a record published on %s was not stored: %s (JetStream error %d, "
                "answered: %s); %u more refused since the last such line",
                topic, why, code, fabric_strerror(rc), f->refused_unlogged);
    f->refused_logged_s = second;
    f->refused_unlogged = 0;
}

/* A record of p was not stored: the append fails with its first failure's rc. */
static void pending_fail_locked(struct fabric *f, struct pending *p, int rc, const char *why,
                                int code)
{
    if (p->status == 0)
        p->status = rc;
    refusal_log_locked(f, p->topic ? p->topic->name : "a topic", rc, why, code);
}

/* Records of p that were never sent count as failed with rc. */
static void pending_unsent(struct fabric *f, struct pending *p, size_t unsent, int rc)
{
    pthread_mutex_lock(&f->lock);
    pending_fail_locked(
        f, p, rc, rc == -ENOTCONN ? "not sent: the connection to NATS is not up" : "not sent", 0);
    p->remaining -= unsent;
    if (p->remaining == 0)
        pending_finish_locked(f, p);
    pthread_mutex_unlock(&f->lock);
    uv_async_send(&f->async);
}

/* Publishes the records of an append; the first failure fails the rest. */
static int publish_all(struct fabric *f, struct pending *p, const char *subject,
                       const struct fabric_blob *records, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        int rc = publish(f, p, subject, records[i].data, records[i].len);
        if (rc < 0) {
            pending_unsent(f, p, count - i, rc);
            return rc;
        }
    }
    return 0;
}

static int work_publish(struct fabric *f, struct job *j)
{
    int rc = link_up(f) ? work_ensure(f, j) : -ENOTCONN;
    if (rc < 0) {
        pending_unsent(f, j->p, j->count, rc);
        return rc;
    }
    publish_all(f, j->p, j->t->subject, j->records, j->count);
    return 0;
}

static void on_watch_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);

static int work_watch(struct fabric *f, struct job *j)
{
    int rc = work_ensure(f, j);
    if (rc < 0)
        return rc;
    jsOptions o;
    request_options(&o);
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = j->t->stream;
    so.Ordered = true;
    so.Config.HeadersOnly = true;
    so.Config.DeliverPolicy = js_DeliverNew;
    jsErrCode jerr = 0;
    natsStatus s = js_Subscribe(&j->sub, f->js, j->t->subject, on_watch_msg, j->t, &o, &so, &jerr);
    rc = errno_of(s, jerr);
    if (rc < 0) {
        j->sub = NULL;
        return rc;
    }
    /* what was stored before the consumer existed: the state after it */
    work_info(f, j);
    return 0;
}

static void sub_stop(natsSubscription *sub)
{
    if (sub) {
        natsSubscription_Unsubscribe(sub);
        natsSubscription_Destroy(sub);
    }
}

/* The next offset a consumer has not had acknowledged: sequence F acknowledged means offset F
 * is next. A consumer made to start at sequence S has S - 1 as its floor until something is
 * acknowledged (the server reports 0 then, on an empty stream at least). */
static uint64_t consumer_info_floor(const jsConsumerInfo *ci)
{
    uint64_t floor = ci->AckFloor.Stream;
    if (ci->Config && ci->Config->OptStartSeq > 0 && ci->Config->OptStartSeq - 1 > floor)
        floor = ci->Config->OptStartSeq - 1;
    return floor;
}

/* Worker: the consumer's state, or -ENOENT. */
static int consumer_floor(struct fabric *f, struct cursor *c, uint64_t *floor)
{
    jsOptions o;
    request_options(&o);
    jsErrCode jerr = 0;
    jsConsumerInfo *ci = NULL;
    natsStatus s = js_GetConsumerInfo(&ci, f->js, c->t->stream, c->durable, &o, &jerr);
    int rc = errno_of(s, jerr);
    if (rc == 0)
        *floor = consumer_info_floor(ci);
    jsConsumerInfo_Destroy(ci);
    return rc;
}

static int work_ensure(struct fabric *f, struct job *j);

/* Worker: (re)makes the consumer so that it delivers from offset `from` on (making the stream
 * first when there is none yet), and binds a pull subscription to it. Whatever was delivered
 * and not acknowledged is delivered again. */
static int consumer_make(struct fabric *f, struct job *j, struct cursor *c, uint64_t from)
{
    sub_stop(c->pull);
    c->pull = NULL;
    jsOptions o;
    request_options(&o);
    jsErrCode jerr = 0;
    natsStatus s = js_DeleteConsumer(f->js, c->t->stream, c->durable, &o, &jerr);
    int rc = errno_of(s, jerr);
    if (rc < 0 && rc != -ENOENT)
        return rc;
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = c->durable;
    cc.Description = c->name;
    cc.DeliverPolicy = js_DeliverByStartSequence;
    cc.OptStartSeq = from + 1;
    cc.AckPolicy = js_AckAll;
    cc.AckWait = ACK_WAIT_NS;
    cc.MaxAckPending = -1;
    cc.FilterSubject = c->t->subject;
    jerr = 0;
    s = js_AddConsumer(NULL, f->js, c->t->stream, &cc, &o, &jerr);
    if (jerr == JSStreamNotFoundErr && work_ensure(f, j) == 0) {
        jerr = 0;
        s = js_AddConsumer(NULL, f->js, c->t->stream, &cc, &o, &jerr);
    }
    if ((rc = errno_of(s, jerr)) < 0)
        return rc;
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = c->t->stream;
    so.Consumer = c->durable;
    jerr = 0;
    s = js_PullSubscribe(&c->pull, f->js, c->t->subject, c->durable, &o, &so, &jerr);
    if ((rc = errno_of(s, jerr)) < 0)
        c->pull = NULL;
    return rc;
}

/* Worker: records through the cursor's consumer. The first fetch of a process makes the
 * consumer again at its floor, so what another process was given and did not acknowledge
 * comes again at once rather than after the acknowledgement wait. */
static int work_fetch(struct fabric *f, struct job *j)
{
    struct cursor *c = j->c;
    int rc = 0;
    if (!c->pull) {
        uint64_t floor = 0;
        rc = consumer_floor(f, c, &floor);
        if (rc == -ENOENT) /* no consumer: a cursor at the end was never committed */
            rc = 0, floor = j->from;
        if (rc == 0)
            rc = consumer_make(f, j, c, floor);
        if (rc < 0)
            return rc;
        j->have_floor = true;
        j->floor = floor;
    }
    jsFetchRequest req;
    jsFetchRequest_Init(&req);
    req.Batch = (int)j->max;
    req.MaxBytes = 4 << 20;
    req.NoWait = true;
    req.Expires = (int64_t)REQUEST_WAIT_MS * 1000000;
    natsMsgList list = {0};
    natsStatus s = natsSubscription_FetchRequest(&list, c->pull, &req);
    if (s == NATS_TIMEOUT || s == NATS_NOT_FOUND)
        s = NATS_OK; /* nothing new */
    rc = errno_of(s, 0);
    if (rc < 0) {
        /* the consumer may have been made again by another process: bind again */
        sub_stop(c->pull);
        c->pull = NULL;
        natsMsgList_Destroy(&list);
        return rc;
    }
    j->msgs = xcalloc((size_t)list.Count + 1, sizeof(*j->msgs));
    for (int i = 0; i < list.Count; i++) {
        j->msgs[j->n++] = list.Msgs[i];
        list.Msgs[i] = NULL;
    }
    natsMsgList_Destroy(&list);
    return 0;
}

/* Acknowledges a record through its reply subject and waits for the server to confirm, as
 * natsMsg_AckSync does; by subject, so that the record need not outlive its subscription. */
static int work_ack(struct fabric *f, struct job *j)
{
    natsMsg *resp = NULL;
    natsStatus s = natsConnection_RequestString(&resp, f->nc, j->reply, "+ACK", REQUEST_WAIT_MS);
    natsMsg_Destroy(resp);
    if (s != NATS_OK)
        log_warning("fabric: JetStream did not confirm an acknowledgement on %s: %s", j->reply,
                    natsStatus_GetText(s));
    return errno_of(s, 0);
}

static int work_move(struct fabric *f, struct job *j)
{
    int rc = consumer_make(f, j, j->c, j->from);
    if (rc < 0)
        log_warning("fabric: JetStream refused consumer %s of stream %s at %" PRIu64 ": %s",
                    j->c->durable, j->t->stream, j->from, nats_GetLastError(NULL));
    if (rc == 0) {
        j->have_floor = true;
        j->floor = j->from;
    }
    return rc;
}

static int work_drop(struct fabric *f, struct job *j)
{
    sub_stop(j->c->pull);
    j->c->pull = NULL;
    jsOptions o;
    request_options(&o);
    jsErrCode jerr = 0;
    natsStatus s = js_DeleteConsumer(f->js, j->t->stream, j->c->durable, &o, &jerr);
    int rc = errno_of(s, jerr);
    return rc == -ENOENT ? 0 : rc;
}

/* Worker: the first sequence in [lo, hi] whose message is there, or hi + 1; *m receives it. */
static int first_present(struct fabric *f, const char *stream, uint64_t lo, uint64_t hi,
                         uint64_t *seq, natsMsg **m)
{
    for (uint64_t s = lo; s <= hi; s++) {
        int rc = get_msg(f, stream, s, m);
        if (rc == 0) {
            *seq = s;
            return 0;
        }
        if (rc != -ENOENT)
            return rc;
    }
    *seq = hi + 1;
    *m = NULL;
    return 0;
}

/* Worker: a stream's times grow with its sequences, so a binary search over the sequences
 * (at most one request per step, each bounded by REQUEST_WAIT_MS, the first failure ending
 * it) finds the first record at or after j->time_ms; its offset goes in j->from. */
static int work_seek(struct fabric *f, struct job *j)
{
    int rc = work_info(f, j);
    if (rc < 0)
        return rc;
    uint64_t lo = j->st.FirstSeq ? j->st.FirstSeq : j->st.LastSeq + 1, hi = j->st.LastSeq + 1;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2, at = 0;
        natsMsg *m = NULL;
        rc = first_present(f, j->t->stream, mid, hi - 1, &at, &m);
        if (rc < 0)
            return rc;
        if (!m || msg_time_ms(m) >= j->time_ms)
            hi = mid;
        else
            lo = at + 1;
        natsMsg_Destroy(m);
    }
    j->from = lo - 1;
    return 0;
}

static int work_run(struct fabric *f, struct job *j)
{
    if (j->kind == JOB_UNWATCH) {
        sub_stop(j->sub);
        return 0;
    }
    if (j->kind == JOB_UNBIND) {
        sub_stop(j->c->pull);
        j->c->pull = NULL;
        return 0;
    }
    if (!link_up(f)) {
        if (j->kind == JOB_PUBLISH)
            pending_unsent(f, j->p, j->count, -ENOTCONN);
        return -ENOTCONN;
    }
    switch (j->kind) {
    case JOB_ENSURE:
        return work_ensure(f, j);
    case JOB_PUBLISH:
        return work_publish(f, j);
    case JOB_LIST:
        return work_list(f, j);
    case JOB_INFO:
        return work_info(f, j);
    case JOB_READ:
        return work_read(f, j);
    case JOB_WATCH:
        return work_watch(f, j);
    case JOB_FETCH:
        return work_fetch(f, j);
    case JOB_ACK:
        return work_ack(f, j);
    case JOB_MOVE:
        return work_move(f, j);
    case JOB_DROP:
        return work_drop(f, j);
    case JOB_SEEK:
        return work_seek(f, j);
    case JOB_UNWATCH:
    case JOB_UNBIND:
        break;
    }
    return -EINVAL;
}

/* The next job (under the lock; the queue is not empty). */
static struct job *job_take(struct fabric *f)
{
    struct job *j = f->queue;
    f->queue = j->next;
    if (!f->queue)
        f->queue_tail = &f->queue;
    return j;
}

/* While closing: the next job that finishes what was accepted (an append and the stream it
 * goes to, a cursor's acknowledgement), so that a close, even from an append's callback,
 * does not fail appends queued behind it; NULL when none is left or NATS is not there (the
 * rest is cancelled by jobs_cancel). Each is bounded by REQUEST_WAIT_MS. */
static struct job *job_take_finishing(struct fabric *f)
{
    if (!link_up(f))
        return NULL;
    for (struct job **pp = &f->queue; *pp; pp = &(*pp)->next) {
        struct job *j = *pp;
        if (j->kind != JOB_ENSURE && j->kind != JOB_PUBLISH && j->kind != JOB_ACK)
            continue;
        *pp = j->next;
        if (!f->queue)
            f->queue_tail = &f->queue;
        else if (!j->next)
            f->queue_tail = pp;
        return j;
    }
    return NULL;
}

static void *worker_main(void *arg)
{
    struct fabric *f = arg;
    pthread_mutex_lock(&f->lock);
    for (;;) {
        while (!f->queue && !f->worker_stop)
            pthread_cond_wait(&f->wake, &f->lock);
        struct job *j = f->worker_stop ? job_take_finishing(f) : job_take(f);
        if (!j)
            break;
        pthread_mutex_unlock(&f->lock);
        j->rc = work_run(f, j);
        pthread_mutex_lock(&f->lock);
        j->next = NULL;
        *f->done_tail_jobs = j;
        f->done_tail_jobs = &j->next;
        uv_async_send(&f->async);
    }
    pthread_mutex_unlock(&f->lock);
    return NULL;
}

/* ---- acknowledgements and watches (libnats's threads) ------------------------------------- */

static void pending_finish_locked(struct fabric *f, struct pending *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        f->inflight = p->next;
    if (p->next)
        p->next->prev = p->prev;
    p->next = NULL;
    p->prev = NULL;
    *f->done_tail = p;
    f->done_tail = &p->next;
}

static void on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    struct fabric *f = closure;
    const char *tag = NULL;
    void *ptr = NULL;
    if (natsMsgHeader_Get(msg, PENDING_HEADER, &tag) == NATS_OK && tag)
        sscanf(tag, "%p", &ptr);
    struct pending *p = ptr;
    if (p) {
        pthread_mutex_lock(&f->lock);
        if (pa) {
            if (pa->Sequence < p->first_seq)
                p->first_seq = pa->Sequence;
        } else {
            pending_fail_locked(f, p, pae ? errno_of(pae->Err, pae->ErrCode) : -EIO,
                                pae ? natsStatus_GetText(pae->Err) : "no acknowledgement",
                                pae ? (int)pae->ErrCode : 0);
        }
        if (p->remaining > 0 && --p->remaining == 0)
            pending_finish_locked(f, p);
        pthread_mutex_unlock(&f->lock);
        uv_async_send(&f->async);
    }
    natsMsg_Destroy(msg);
}

static void topic_tell_locked(struct fabric *f, struct topic *t, uint64_t end)
{
    if (end > t->seen_end)
        t->seen_end = end;
    if (!t->queued) {
        t->queued = true;
        t->queued_next = f->notify;
        f->notify = t;
    }
}

/* A watch's message: headers only, with the stream sequence in its metadata. */
static void on_watch_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct topic *t = closure;
    struct fabric *f = t->f;
    jsMsgMetaData *meta = NULL;
    if (natsMsg_GetMetaData(&meta, msg) == NATS_OK) {
        pthread_mutex_lock(&f->lock);
        topic_tell_locked(f, t, meta->Sequence.Stream);
        pthread_mutex_unlock(&f->lock);
        uv_async_send(&f->async);
    }
    jsMsgMetaData_Destroy(meta);
    natsMsg_Destroy(msg);
}

/* The topic-less subscribers' core subscription on every topic's subject: it names the topic;
 * a job asks the stream for its end. */
static void on_all_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct fabric *f = closure;
    const char *subject = natsMsg_GetSubject(msg);
    size_t plen = strlen(SUBJECT_PREFIX);
    if (subject && !strncmp(subject, SUBJECT_PREFIX, plen) &&
        strlen(subject + plen) <= FABRIC_TOPIC_MAX) {
        char *name = xstrdup(subject + plen);
        for (char *c = name; *c; c++)
            if (*c == '~')
                *c = '.';
        pthread_mutex_lock(&f->lock);
        f->all_notify = xrealloc(f->all_notify, (f->all_notify_n + 1) * sizeof(char *));
        f->all_notify[f->all_notify_n++] = name;
        pthread_mutex_unlock(&f->lock);
        uv_async_send(&f->async);
    }
    natsMsg_Destroy(msg);
}

/* ---- the loop's side of the hand-over ---------------------------------------------------- */

/* The hand-over keeps the loop alive while an acknowledgement, a job's result or a
 * subscriber's news may come: they arrive from other threads, which the loop does not see. */
static void async_ref_update(struct fabric *f)
{
    if (f->closing)
        return;
    if (f->stats.pending > 0 || f->live_subs > 0 || f->jobs_out > 0)
        uv_ref((uv_handle_t *)&f->async);
    else
        uv_unref((uv_handle_t *)&f->async);
}

static void subs_sweep(struct fabric *f)
{
    if (f->dispatching)
        return;
    for (struct fabric_sub **pp = &f->subs; *pp;) {
        struct fabric_sub *s = *pp;
        if (s->removed) {
            *pp = s->next;
            free(s);
        } else {
            pp = &s->next;
        }
    }
}

static void notify_topic(struct fabric *f, const char *name, struct topic *t, uint64_t end)
{
    if (f->closing)
        return;
    f->dispatching++;
    for (struct fabric_sub *s = f->subs; s; s = s->next)
        if (!s->removed && (t ? s->topic == t : s->topic == NULL))
            s->cb(s->arg, name, end);
    f->dispatching--;
}

/* The topic's end as far as this process knows: one past the newest record's offset. */
static uint64_t topic_end(const struct topic *t)
{
    return t->cache.last_seq;
}

static void topic_saw(struct topic *t, uint64_t end)
{
    if (end > t->cache.last_seq) {
        if (!t->cache.first_seq) /* it was empty: its first record is the one after */
            t->cache.first_seq = t->cache.last_seq + 1;
        t->cache.last_seq = end;
        t->cache.known = true;
    }
}

static void pending_complete(struct fabric *f, struct pending *p)
{
    f->stats.syncs++;
    f->stats.sync_us_total += (uint64_t)(uv_hrtime() / 1000 - (uint64_t)p->started_us);
    f->stats.pending--;
    async_ref_update(f);
    if (p->kind == PENDING_APPEND && p->status == 0 && p->topic)
        topic_saw(p->topic, p->first_seq + p->count - 1);
    if (p->kind == PENDING_APPEND && p->append_cb)
        p->append_cb(p->arg, p->status, p->status == 0 ? p->first_seq - 1 : 0, p->count);
    else if (p->kind == PENDING_COMMIT && p->commit_cb)
        p->commit_cb(p->arg, p->status);
    free(p);
}

static struct pending *pending_new(struct fabric *f, enum pending_kind kind, size_t count)
{
    struct pending *p = xcalloc(1, sizeof(*p));
    p->kind = kind;
    p->count = count;
    p->remaining = count;
    p->first_seq = UINT64_MAX;
    p->started_us = (int64_t)(uv_hrtime() / 1000);
    pthread_mutex_lock(&f->lock);
    p->next = f->inflight;
    if (f->inflight)
        f->inflight->prev = p;
    f->inflight = p;
    pthread_mutex_unlock(&f->lock);
    f->stats.pending++;
    async_ref_update(f);
    return p;
}

/* A job that settles a pending (a commit) finishes it with the job's outcome. */
static void pending_settle(struct fabric *f, struct pending *p, int rc)
{
    pthread_mutex_lock(&f->lock);
    if (p->status == 0)
        p->status = rc;
    p->remaining = 0;
    pending_finish_locked(f, p);
    pthread_mutex_unlock(&f->lock);
}

static void cursor_fetch(struct fabric *f, struct cursor *c);

static void list_done(struct fabric *f, struct job *j)
{
    f->list_queued = false;
    if (j->rc < 0)
        return;
    f->listed_at = uv_now(f->loop);
    /* streams are never deleted by the fabric: a topic missing from a listing made while it
     * was being created is still known */
    for (size_t i = 0; i < j->list_n; i++) {
        struct topic *t = topic_find(f, j->list[i].name, true);
        cache_state(t, &j->list[i].st);
        t->stream_known = true;
    }
}

static void read_done(struct fabric *f, struct job *j)
{
    struct topic *t = j->t;
    t->read_queued = false;
    msgs_free(t->reads.msgs, t->reads.n);
    t->reads = (struct read_cache){.from = j->from, .next = j->read_next};
    if (j->have_state)
        cache_state(t, &j->st);
    if (j->rc < 0 && j->n == 0) {
        t->reads.error = j->rc;
        t->reads.next = j->from;
    } else {
        t->reads.msgs = j->msgs;
        t->reads.n = j->n;
        j->msgs = NULL;
        j->n = 0;
    }
    notify_topic(f, t->name, t, topic_end(t));
}

static void fetch_done(struct fabric *f, struct job *j)
{
    struct cursor *c = j->c;
    c->fetch_queued = false;
    if (j->gen != c->gen) { /* the consumer was moved meanwhile */
        msgs_free(j->msgs, j->n);
        j->msgs = NULL;
        j->n = 0;
        cursor_fetch(f, c);
        return;
    }
    if (j->have_floor) {
        c->known = c->bound = true;
        c->floor = c->read_end = j->floor;
    }
    if (j->rc < 0) {
        c->bound = false;
        log_warning("fabric: cannot fetch %s's records of topic %s: %s", c->name, c->t->name,
                    fabric_strerror(j->rc));
        return;
    }
    size_t kept = 0;
    c->buf = xrealloc(c->buf, (c->buf_n + j->n + 1) * sizeof(*c->buf));
    uint64_t last = c->buf_n ? msg_offset(c->buf[c->buf_n - 1]) + 1 : c->read_end;
    for (size_t i = 0; i < j->n; i++) {
        natsMsg *m = j->msgs[i];
        if (msg_offset(m) < last) { /* redelivered after the wait: the cursor has it */
            natsMsg_Destroy(m);
            continue;
        }
        last = msg_offset(m) + 1;
        topic_saw(c->t, last);
        c->buf[c->buf_n++] = m;
        kept++;
    }
    free(j->msgs);
    j->msgs = NULL;
    j->n = 0;
    if (kept)
        notify_topic(f, c->t->name, c->t, topic_end(c->t));
    else if (topic_end(c->t) > c->fetch_end)
        cursor_fetch(f, c); /* records came while it ran: it may have missed them */
}

static void job_done(struct fabric *f, struct job *j)
{
    struct topic *t = j->t;
    switch (j->kind) {
    case JOB_ENSURE:
    case JOB_PUBLISH:
        t->stream_jobs--;
        if (j->rc == 0)
            t->stream_known = true;
        if (j->have_state)
            cache_state(t, &j->st);
        break;
    case JOB_LIST:
        list_done(f, j);
        break;
    case JOB_INFO:
        t->info_queued = false;
        if (j->have_state)
            cache_state(t, &j->st);
        else if (j->rc == -ENOENT)
            t->cache.known = false;
        if (j->notify_all && j->have_state)
            notify_topic(f, t->name, NULL, topic_end(t));
        break;
    case JOB_READ:
        read_done(f, j);
        break;
    case JOB_WATCH:
        t->watch_queued = false;
        if (j->rc == 0)
            t->stream_known = true;
        if (j->have_state)
            cache_state(t, &j->st);
        if (t->subscribers == 0 || f->closing) {
            if (j->sub) {
                struct job *u = job_new(JOB_UNWATCH, t);
                u->sub = j->sub;
                if (f->closing)
                    sub_stop(j->sub), free(u);
                else
                    job_queue(f, u);
            }
        } else {
            t->watch = j->sub;
            if (j->rc < 0)
                log_warning("fabric: cannot watch topic %s: %s", t->name, fabric_strerror(j->rc));
            else if (topic_end(t))
                notify_topic(f, t->name, t, topic_end(t));
        }
        break;
    case JOB_FETCH:
        fetch_done(f, j);
        break;
    case JOB_ACK:
        if (j->rc == 0 && j->c->gen == j->gen) {
            j->c->known = true;
            j->c->floor = j->from;
        }
        pending_settle(f, j->p, j->rc);
        break;
    case JOB_MOVE:
        if (j->have_floor && j->c->gen == j->gen) {
            j->c->known = j->c->bound = true;
            j->c->floor = j->floor;
        }
        pending_settle(f, j->p, j->rc);
        break;
    case JOB_SEEK:
        if (j->have_state)
            cache_state(t, &j->st);
        j->seek_cb(j->seek_arg, j->rc, j->rc == 0 ? j->from : 0);
        break;
    case JOB_UNWATCH:
    case JOB_DROP:
    case JOB_UNBIND:
        break;
    }
    free(j->records);
    free(j->reply);
    msgs_free(j->msgs, j->n);
    free(j->list);
    free(j);
}

static void dispatch(struct fabric *f)
{
    pthread_mutex_lock(&f->lock);
    struct job *jobs = f->done;
    f->done = NULL;
    f->done_tail_jobs = &f->done;
    pthread_mutex_unlock(&f->lock);
    while (jobs) {
        struct job *next = jobs->next;
        f->jobs_out--;
        job_done(f, jobs);
        jobs = next;
    }

    pthread_mutex_lock(&f->lock);
    struct pending *done = f->done_p;
    f->done_p = NULL;
    f->done_tail = &f->done_p;
    size_t n = 0;
    for (struct topic *t = f->notify; t; t = t->queued_next)
        n++;
    struct topic **notices = n ? xcalloc(n, sizeof(*notices)) : NULL;
    n = 0;
    for (struct topic *t = f->notify; t; t = t->queued_next) {
        t->queued = false;
        topic_saw(t, t->seen_end);
        notices[n++] = t;
    }
    f->notify = NULL;
    char **all = f->all_notify;
    size_t all_n = f->all_notify_n;
    f->all_notify = NULL;
    f->all_notify_n = 0;
    pthread_mutex_unlock(&f->lock);

    while (done) {
        struct pending *next = done->next;
        pending_complete(f, done);
        done = next;
    }
    for (size_t i = 0; i < n; i++)
        notify_topic(f, notices[i]->name, notices[i], topic_end(notices[i]));
    free(notices);
    for (size_t i = 0; i < all_n; i++) {
        struct topic *t = fabric_name_valid(all[i]) ? topic_find(f, all[i], true) : NULL;
        if (t && !f->closing && !t->info_queued) {
            struct job *j = job_new(JOB_INFO, t);
            j->notify_all = true;
            t->info_queued = true;
            job_queue(f, j);
        }
        free(all[i]);
    }
    free(all);
    subs_sweep(f);
    async_ref_update(f);
}

static void on_async(uv_async_t *h)
{
    dispatch(h->data);
}

/* Asks for a listing when the last one is older than max_age_ms: what topic information
 * answers meanwhile is what the loop knows. One at a time, whoever asks how often. */
static void list_refresh(struct fabric *f, uint64_t max_age_ms)
{
    if (f->list_queued || f->closing)
        return;
    if (uv_now(f->loop) - f->listed_at < max_age_ms)
        return;
    f->list_queued = true;
    job_queue(f, job_new(JOB_LIST, NULL));
    async_ref_update(f);
}

/* ---- streams ---------------------------------------------------------------------------- */

static struct job *ensure_job(struct topic *t, enum job_kind kind)
{
    struct job *j = job_new(kind, t);
    j->retention = t->has_retention ? t->retention : t->f->cfg.retention;
    t->stream_jobs++;
    return j;
}

/* Makes sure, off the loop, that the topic's stream exists with its limits. */
static void topic_ensure(struct fabric *f, struct topic *t)
{
    if (t->stream_known || t->stream_jobs)
        return;
    job_queue(f, ensure_job(t, JOB_ENSURE));
    async_ref_update(f);
}

/* ---- appending -------------------------------------------------------------------------- */

static void pending_drop(struct fabric *f, struct pending *p)
{
    pthread_mutex_lock(&f->lock);
    if (p->prev)
        p->prev->next = p->next;
    else
        f->inflight = p->next;
    if (p->next)
        p->next->prev = p->prev;
    pthread_mutex_unlock(&f->lock);
    f->stats.pending--;
    async_ref_update(f);
    free(p);
}

/* A topic whose stream is not known yet: the records go to the worker, which makes the stream
 * and publishes them; later appends queue behind them, so that they keep their order. */
static void append_queued(struct fabric *f, struct topic *t, struct pending *p,
                          const struct fabric_blob *records, size_t count)
{
    struct job *j = ensure_job(t, JOB_PUBLISH);
    size_t bytes = 0;
    for (size_t i = 0; i < count; i++)
        bytes += records[i].len;
    j->records = xmalloc(count * sizeof(*j->records) + bytes + 1);
    char *data = (char *)(j->records + count);
    for (size_t i = 0; i < count; i++) {
        memcpy(data, records[i].data, records[i].len);
        j->records[i] = (struct fabric_blob){data, records[i].len};
        data += records[i].len;
    }
    j->count = count;
    j->p = p;
    job_queue(f, j);
}

static int nats_append(struct fabric *f, const char *topic, const struct fabric_blob *records,
                       size_t count, fabric_append_cb cb, void *arg, uint64_t *first_offset)
{
    if (f->closing)
        return -ECANCELED;
    if (!fabric_name_valid(topic) || count == 0)
        return -EINVAL;
    size_t limit = (size_t)natsConnection_GetMaxPayload(f->nc);
    for (size_t i = 0; i < count; i++)
        if (records[i].len > f->cfg.max_record_bytes ||
            (limit > 256 && records[i].len > limit - 256))
            return -EMSGSIZE;
    if (!connected(f)) {
        pthread_mutex_lock(&f->lock);
        refusal_log_locked(f, topic, -ENOTCONN, "the connection to NATS is not up", 0);
        pthread_mutex_unlock(&f->lock);
        return -ENOTCONN;
    }
    struct topic *t = topic_find(f, topic, true);
    struct pending *p = pending_new(f, PENDING_APPEND, count);
    p->append_cb = cb;
    p->arg = arg;
    p->topic = t;
    if (!t->stream_known || t->stream_jobs) {
        append_queued(f, t, p, records, count);
    } else {
        int rc = publish(f, p, t->subject, records[0].data, records[0].len);
        if (rc < 0) {
            pending_drop(f, p); /* nothing was sent: refuse the call, no callback */
            return rc;
        }
        publish_all(f, p, t->subject, records + 1, count - 1);
    }
    for (size_t i = 0; i < count; i++)
        f->stats.bytes += records[i].len;
    f->stats.records += count;
    f->stats.appends++;
    if (first_offset)
        *first_offset = UINT64_MAX; /* JetStream numbers the records when it stores them */
    return 0;
}

/* ---- reading ---------------------------------------------------------------------------- */

/* Copies records (from offset `from` on) out of msgs into a batch the caller owns. Returns how
 * many of msgs it took. */
static size_t batch_fill(struct fabric_batch *out, natsMsg **msgs, size_t n, uint64_t from,
                         size_t max_records, size_t max_bytes)
{
    size_t first = 0, last, bytes = 0;
    while (first < n && msg_offset(msgs[first]) < from)
        first++;
    for (last = first;
         last < n && last - first < max_records && (last == first || bytes < max_bytes); last++)
        bytes += (size_t)natsMsg_GetDataLength(msgs[last]);
    size_t count = last - first;
    out->records = xcalloc(count ? count : 1, sizeof(*out->records));
    char *storage = xmalloc(bytes ? bytes : 1);
    size_t at = 0;
    for (size_t i = 0; i < count; i++) {
        natsMsg *m = msgs[first + i];
        size_t len = (size_t)natsMsg_GetDataLength(m);
        memcpy(storage + at, natsMsg_GetData(m), len);
        out->records[i] = (struct fabric_record){
            .offset = msg_offset(m), .time_ms = msg_time_ms(m), .data = storage + at, .len = len};
        at += len;
    }
    out->storage_ = storage;
    out->count = count;
    out->next_offset = count ? out->records[count - 1].offset + 1 : from;
    return last;
}

static int nats_read(struct fabric *f, const char *topic, uint64_t from, size_t max_records,
                     size_t max_bytes, struct fabric_batch *out)
{
    memset(out, 0, sizeof(*out));
    if (!fabric_name_valid(topic))
        return -EINVAL;
    struct topic *t = topic_find(f, topic, false);
    if (!t || !t->cache.known)
        return -ENOENT;
    struct read_cache *r = &t->reads;
    if (r->error && r->from == from) {
        int rc = r->error;
        r->error = 0;
        r->from = r->next = 0;
        return rc;
    }
    if (from >= topic_end(t)) {
        out->next_offset = from;
        return 0;
    }
    /* what retention removed since the records were fetched is not read from them */
    if (t->cache.first_seq && from < t->cache.first_seq - 1)
        from = t->cache.first_seq - 1;
    bool covered = r->n && from >= r->from && from < msg_offset(r->msgs[r->n - 1]) + 1;
    if (covered) {
        batch_fill(out, r->msgs, r->n, from, max_records ? max_records : 1, max_bytes);
        return 0;
    }
    if (!r->n && r->from <= from && from < r->next) { /* a gap that retention left */
        out->next_offset = r->next;
        return 0;
    }
    if (!connected(f))
        return -ENOTCONN;
    if (!t->read_queued) {
        struct job *j = job_new(JOB_READ, t);
        j->from = from;
        j->max = max_records < FETCH_RECORDS ? FETCH_RECORDS : max_records;
        t->read_queued = true;
        job_queue(f, j);
        async_ref_update(f);
    }
    return -EAGAIN;
}

/* Asks the worker for the search (work_seek); cb runs on the loop with its outcome. */
static int nats_seek_time(struct fabric *f, const char *topic, int64_t time_ms, fabric_seek_cb cb,
                          void *arg)
{
    if (f->closing)
        return -ECANCELED;
    if (!fabric_name_valid(topic))
        return -EINVAL;
    if (!connected(f))
        return -ENOTCONN;
    struct job *j = job_new(JOB_SEEK, topic_find(f, topic, true));
    j->time_ms = time_ms;
    j->seek_cb = cb;
    j->seek_arg = arg;
    job_queue(f, j);
    async_ref_update(f);
    return 0;
}

static void info_of(const struct topic *t, struct fabric_topic_info *out)
{
    memset(out, 0, sizeof(*out));
    snprintf(out->name, sizeof(out->name), "%s", t->name);
    out->end_offset = t->cache.last_seq;
    out->first_offset = t->cache.first_seq ? t->cache.first_seq - 1 : t->cache.last_seq;
    if (out->first_offset > out->end_offset)
        out->first_offset = out->end_offset;
    out->records = out->end_offset - out->first_offset;
    out->bytes = t->cache.bytes;
    out->last_time_ms = out->records ? t->cache.last_time_ns / 1000000 : 0;
}

static int nats_topic_info(struct fabric *f, const char *topic, struct fabric_topic_info *out)
{
    if (!fabric_name_valid(topic))
        return -EINVAL;
    struct topic *t = topic_find(f, topic, false);
    if (!t || !t->cache.known) {
        list_refresh(f, LIST_MISS_MS);
        return -ENOENT;
    }
    list_refresh(f, LIST_EVERY_MS);
    info_of(t, out);
    return 0;
}

static int compare_info(const void *a, const void *b)
{
    return strcmp(((const struct fabric_topic_info *)a)->name,
                  ((const struct fabric_topic_info *)b)->name);
}

static int nats_topics(struct fabric *f, struct fabric_topic_info **out, size_t *count)
{
    size_t n = 0;
    for (struct topic *t = f->topics; t; t = t->next)
        n += t->cache.known;
    struct fabric_topic_info *infos = xcalloc(n + 1, sizeof(*infos));
    n = 0;
    for (struct topic *t = f->topics; t; t = t->next)
        if (t->cache.known)
            info_of(t, &infos[n++]);
    qsort(infos, n, sizeof(*infos), compare_info);
    *out = infos;
    *count = n;
    list_refresh(f, LIST_EVERY_MS);
    return 0;
}

static int nats_topic_create(struct fabric *f, const char *topic)
{
    if (!fabric_name_valid(topic))
        return -EINVAL;
    if (f->closing)
        return -ECANCELED;
    topic_ensure(f, topic_find(f, topic, true));
    return 0;
}

static int nats_topic_set_retention(struct fabric *f, const char *topic,
                                    const struct fabric_retention *r)
{
    if (!fabric_name_valid(topic))
        return -EINVAL;
    if (f->closing)
        return -ECANCELED;
    struct topic *t = topic_find(f, topic, true);
    t->has_retention = true;
    t->retention = *r;
    job_queue(f, ensure_job(t, JOB_ENSURE)); /* brings the stream's limits to these */
    async_ref_update(f);
    return 0;
}

/* JetStream applies a stream's limits itself. */
static void nats_enforce_retention(struct fabric *f) {}

/* ---- subscribing ------------------------------------------------------------------------ */

static int nats_subscribe(struct fabric *f, const char *topic, fabric_notify_cb cb, void *arg,
                          struct fabric_sub **out)
{
    if (topic && !fabric_name_valid(topic))
        return -EINVAL;
    if (f->closing)
        return -ECANCELED;
    struct topic *t = NULL;
    if (topic) {
        t = topic_find(f, topic, true);
        if (!t->watch && !t->watch_queued) {
            struct job *j = ensure_job(t, JOB_WATCH);
            t->stream_jobs--; /* a watch does not hold appends back */
            t->watch_queued = true;
            job_queue(f, j);
        }
    } else if (!f->all_watch) {
        /* a core subscription: one protocol line, no request */
        natsStatus s =
            natsConnection_Subscribe(&f->all_watch, f->nc, SUBJECT_PREFIX ">", on_all_msg, f);
        int rc = errno_of(s, 0);
        if (rc < 0)
            return rc;
    }
    if (t)
        t->subscribers++;
    struct fabric_sub *s = xcalloc(1, sizeof(*s));
    s->f = f;
    s->topic = t;
    s->cb = cb;
    s->arg = arg;
    s->next = f->subs;
    f->subs = s;
    f->live_subs++;
    async_ref_update(f);
    *out = s;
    return 0;
}

static void nats_unsubscribe(struct fabric_sub *sub)
{
    if (!sub || sub->removed)
        return;
    struct fabric *f = sub->f;
    sub->removed = true;
    f->live_subs--;
    struct topic *t = sub->topic;
    if (t && --t->subscribers == 0 && t->watch) {
        struct job *j = job_new(JOB_UNWATCH, t);
        j->sub = t->watch;
        t->watch = NULL;
        job_queue(f, j);
    }
    async_ref_update(f);
    subs_sweep(f);
}

/* ---- cursors ---------------------------------------------------------------------------- */

static int cursor_begin(struct fabric *f, const char *topic, const char *consumer,
                        struct cursor **out)
{
    if (!fabric_name_valid(topic) || !fabric_name_valid(consumer))
        return -EINVAL;
    if (f->closing)
        return -ECANCELED;
    *out = cursor_find(f, topic_find(f, topic, true), consumer, true);
    return 0;
}

static int nats_cursor_get(struct fabric *f, const char *topic, const char *consumer,
                           uint64_t *next_offset)
{
    struct cursor *c;
    int rc = cursor_begin(f, topic, consumer, &c);
    if (rc < 0)
        return rc;
    if (!c->known)
        return -ENOENT;
    *next_offset = c->floor;
    return 0;
}

static void cursor_fetch(struct fabric *f, struct cursor *c)
{
    if (c->fetch_queued || f->closing)
        return;
    struct job *j = job_new(JOB_FETCH, c->t);
    j->c = c;
    j->gen = c->gen;
    j->max = FETCH_RECORDS;
    j->from = c->known ? c->floor : c->start_given ? c->start : topic_end(c->t);
    c->fetch_queued = true;
    c->fetch_end = topic_end(c->t);
    job_queue(f, j);
    async_ref_update(f);
}

/* Reads through the consumer: what it delivers, from where it was acknowledged. */
static int nats_cursor_read(struct fabric *f, const char *topic, const char *consumer,
                            uint64_t from, size_t max_records, size_t max_bytes,
                            struct fabric_batch *out)
{
    memset(out, 0, sizeof(*out));
    struct cursor *c;
    int rc = cursor_begin(f, topic, consumer, &c);
    if (rc < 0)
        return rc;
    if (c->buf_n == 0) {
        if (!connected(f))
            return -ENOTCONN;
        if (!c->known) {
            c->start_given = true;
            c->start = from;
        }
        cursor_fetch(f, c);
        return -EAGAIN;
    }
    /* from the consumer's place on, even below `from`: records are never stepped over */
    size_t took = batch_fill(out, c->buf, c->buf_n, 0, max_records ? max_records : 1, max_bytes);
    /* what was handed out (and what was stepped over) waits for its acknowledgement */
    c->held = xrealloc(c->held, (c->held_n + took + 1) * sizeof(*c->held));
    memcpy(c->held + c->held_n, c->buf, took * sizeof(*c->buf));
    c->held_n += took;
    memmove(c->buf, c->buf + took, (c->buf_n - took) * sizeof(*c->buf));
    c->buf_n -= took;
    c->read_end = msg_offset(c->held[c->held_n - 1]) + 1;
    if (out->count == 0)
        out->next_offset = c->read_end > from ? c->read_end : from;
    return 0;
}

/* Drops the held records below sequence seq; returns the one at seq, if held. */
static natsMsg *held_take(struct cursor *c, uint64_t seq)
{
    natsMsg *found = NULL;
    size_t keep = 0;
    for (size_t i = 0; i < c->held_n; i++) {
        uint64_t s = msg_seq(c->held[i]);
        if (s == seq)
            found = c->held[i];
        else if (s < seq)
            natsMsg_Destroy(c->held[i]);
        else
            c->held[keep++] = c->held[i];
    }
    c->held_n = keep;
    return found;
}

static void cursor_forget_reads(struct cursor *c)
{
    msgs_free(c->held, c->held_n);
    msgs_free(c->buf, c->buf_n);
    c->held = c->buf = NULL;
    c->held_n = c->buf_n = 0;
}

static int nats_cursor_commit(struct fabric *f, const char *topic, const char *consumer,
                              uint64_t next_offset, void (*cb)(void *arg, int status), void *arg)
{
    struct cursor *c;
    int rc = cursor_begin(f, topic, consumer, &c);
    if (rc < 0)
        return rc;
    if (!connected(f))
        return -ENOTCONN;
    struct pending *p = pending_new(f, PENDING_COMMIT, 1);
    p->commit_cb = cb;
    p->arg = arg;
    natsMsg *m = next_offset > 0 ? held_take(c, next_offset) : NULL;
    struct job *j = job_new(m ? JOB_ACK : JOB_MOVE, c->t);
    j->c = c;
    j->p = p;
    j->from = next_offset;
    if (m) {
        /* acknowledges it and everything before it (AckAll) */
        j->reply = xstrdup(natsMsg_GetReply(m) ? natsMsg_GetReply(m) : "");
        natsMsg_Destroy(m);
    } else if (c->known && c->floor == next_offset) {
        free(j);
        pending_settle(f, p, 0);
        uv_async_send(&f->async);
        return 0;
    } else {
        /* anywhere else (a replay, or no consumer yet): the consumer starts there */
        c->gen++;
        cursor_forget_reads(c);
        c->read_end = next_offset;
    }
    j->gen = c->gen;
    job_queue(f, j);
    return 0;
}

static int nats_cursor_release(struct fabric *f, const char *topic, const char *consumer)
{
    struct cursor *c;
    int rc = cursor_begin(f, topic, consumer, &c);
    if (rc < 0)
        return rc;
    c->gen++;
    c->bound = false;
    cursor_forget_reads(c);
    struct job *j = job_new(JOB_UNBIND, c->t);
    j->c = c;
    job_queue(f, j);
    async_ref_update(f);
    return 0;
}

static int nats_cursor_delete(struct fabric *f, const char *topic, const char *consumer)
{
    struct cursor *c;
    int rc = cursor_begin(f, topic, consumer, &c);
    if (rc < 0)
        return rc;
    c->gen++;
    c->known = c->bound = false;
    cursor_forget_reads(c);
    struct job *j = job_new(JOB_DROP, c->t);
    j->c = c;
    job_queue(f, j);
    async_ref_update(f);
    return 0;
}

static void nats_get_stats(struct fabric *f, struct fabric_stats *out)
{
    *out = f->stats;
}

/* ---- open and close --------------------------------------------------------------------- */

static void fabric_free(struct fabric *f)
{
    while (f->topics) {
        struct topic *t = f->topics;
        f->topics = t->next;
        msgs_free(t->reads.msgs, t->reads.n);
        free(t);
    }
    while (f->cursors) {
        struct cursor *c = f->cursors;
        f->cursors = c->next;
        cursor_forget_reads(c);
        free(c);
    }
    while (f->subs) {
        struct fabric_sub *s = f->subs;
        f->subs = s->next;
        free(s);
    }
    for (size_t i = 0; i < f->all_notify_n; i++)
        free(f->all_notify[i]);
    free(f->all_notify);
    pthread_cond_destroy(&f->wake);
    pthread_mutex_destroy(&f->lock);
    free(f->url);
    free(f);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct fabric *f = h->data;
    if (--f->handles > 0)
        return;
    void (*done)(void *) = f->close_done;
    void *arg = f->close_arg;
    fabric_free(f);
    if (done)
        done(arg);
}

static void worker_stop(struct fabric *f)
{
    if (!f->worker_started)
        return;
    pthread_mutex_lock(&f->lock);
    f->worker_stop = true;
    pthread_cond_signal(&f->wake);
    pthread_mutex_unlock(&f->lock);
    pthread_join(f->worker, NULL);
    f->worker_started = false;
}

/* Jobs the worker never ran: their appends and commits fail, the rest is let go. */
static void jobs_cancel(struct fabric *f)
{
    pthread_mutex_lock(&f->lock);
    struct job *j = f->queue;
    f->queue = NULL;
    f->queue_tail = &f->queue;
    pthread_mutex_unlock(&f->lock);
    while (j) {
        struct job *next = j->next;
        if (j->kind == JOB_PUBLISH)
            pending_unsent(f, j->p, j->count, -ECANCELED);
        else if (j->kind == JOB_ACK || j->kind == JOB_MOVE)
            pending_settle(f, j->p, -ECANCELED);
        else if (j->kind == JOB_SEEK)
            j->seek_cb(j->seek_arg, -ECANCELED, 0);
        if (j->kind == JOB_UNWATCH)
            sub_stop(j->sub);
        free(j->reply);
        free(j->records);
        free(j);
        f->jobs_out--;
        j = next;
    }
}

static void nats_close(struct fabric *f, void (*done)(void *arg), void *arg)
{
    if (f->closing)
        return;
    f->closing = true;
    f->close_done = done;
    f->close_arg = arg;
    for (struct fabric_sub *s = f->subs; s; s = s->next)
        s->removed = true; /* dropped without a callback */
    worker_stop(f);        /* after the appends and acknowledgements queued */
    jobs_cancel(f);
    /* the outcome of what is in flight, bounded: then whatever was not acknowledged fails */
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = REQUEST_WAIT_MS;
    if (link_up(f))
        js_PublishAsyncComplete(f->js, &po);
    for (struct topic *t = f->topics; t; t = t->next) {
        sub_stop(t->watch);
        t->watch = NULL;
    }
    for (struct cursor *c = f->cursors; c; c = c->next) {
        sub_stop(c->pull);
        c->pull = NULL;
    }
    sub_stop(f->all_watch);
    f->all_watch = NULL;
    natsConnection_Close(f->nc);
    pthread_mutex_lock(&f->lock);
    while (f->inflight) {
        struct pending *p = f->inflight;
        if (p->status == 0)
            p->status = -ECANCELED;
        pending_finish_locked(f, p);
    }
    pthread_mutex_unlock(&f->lock);
    dispatch(f);
    jsCtx_Destroy(f->js);
    natsConnection_Destroy(f->nc);
    f->js = NULL;
    f->nc = NULL;
    uv_close((uv_handle_t *)&f->async, on_handle_closed);
}

/* Cursors an older build kept as the last message on skiff.cursors.<T>.<C> of the stream
 * SKIFF_CURSORS: a cursor with no consumer yet takes its value there, and the first read makes
 * the consumer at it, so a mapping goes on where it was. */
#define OLD_CURSOR_STREAM "SKIFF_CURSORS"
#define OLD_CURSOR_PREFIX "skiff.cursors."

static void old_cursor_take(struct fabric *f, const char *subject)
{
    char rest[2 * NAME_SIZE];
    snprintf(rest, sizeof(rest), "%s", subject + strlen(OLD_CURSOR_PREFIX));
    char *dot = strchr(rest, '.');
    if (!dot || strchr(dot + 1, '.'))
        return;
    *dot = 0;
    for (char *c = rest; *c; c++)
        *c = *c == '~' ? '.' : *c;
    for (char *c = dot + 1; *c; c++)
        *c = *c == '~' ? '.' : *c;
    if (!fabric_name_valid(rest) || !fabric_name_valid(dot + 1))
        return;
    struct cursor *c = cursor_find(f, topic_find(f, rest, true), dot + 1, true);
    if (c->known)
        return; /* a consumer says where it is */
    jsOptions o;
    request_options(&o);
    jsErrCode jerr = 0;
    natsMsg *m = NULL;
    if (js_GetLastMsg(&m, f->js, OLD_CURSOR_STREAM, subject, &o, &jerr) == NATS_OK) {
        char buf[32] = "";
        int len = natsMsg_GetDataLength(m);
        if (len > 0 && len < (int)sizeof(buf))
            memcpy(buf, natsMsg_GetData(m), (size_t)len);
        char *end = NULL;
        unsigned long long v = strtoull(buf, &end, 10);
        if (*buf && !*end) {
            c->known = true;
            c->floor = v;
        }
    }
    natsMsg_Destroy(m);
}

static void old_cursors_load(struct fabric *f)
{
    jsOptions o;
    request_options(&o);
    o.Stream.Info.SubjectsFilter = OLD_CURSOR_PREFIX ">";
    jsErrCode jerr = 0;
    jsStreamInfo *si = NULL;
    if (js_GetStreamInfo(&si, f->js, OLD_CURSOR_STREAM, &o, &jerr) == NATS_OK && si->State.Subjects)
        for (int i = 0; i < si->State.Subjects->Count; i++)
            old_cursor_take(f, si->State.Subjects->List[i].Subject);
    jsStreamInfo_Destroy(si);
}

/* At open (before the loop serves anything): the streams, and the cursors of each, so that
 * the first calls have answers. */
static int load_state(struct fabric *f)
{
    struct job list = {.kind = JOB_LIST};
    int rc = work_list(f, &list);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < list.list_n; i++) {
        struct topic *t = topic_find(f, list.list[i].name, true);
        cache_state(t, &list.list[i].st);
        t->stream_known = true;
        jsOptions o;
        request_options(&o);
        jsErrCode jerr = 0;
        jsConsumerInfoList *cl = NULL;
        if (js_Consumers(&cl, f->js, t->stream, &o, &jerr) != NATS_OK)
            continue;
        for (int k = 0; k < cl->Count; k++) {
            jsConsumerConfig *cc = cl->List[k]->Config;
            if (!cc || !cc->Durable || !cc->Description || !fabric_name_valid(cc->Description))
                continue;
            struct cursor *c = cursor_find(f, t, cc->Description, true);
            c->known = true;
            c->floor = consumer_info_floor(cl->List[k]);
        }
        jsConsumerInfoList_Destroy(cl);
    }
    free(list.list);
    old_cursors_load(f);
    return 0;
}

int fabric_nats_open(uv_loop_t *loop, const struct fabric_config *cfg, struct fabric **out,
                     char *errmsg, size_t errlen)
{
    char scratch[16];
    if (!errmsg) {
        errmsg = scratch;
        errlen = sizeof(scratch);
    }
    *out = NULL;
    struct fabric *f = xcalloc(1, sizeof(*f));
    f->ops = &fabric_nats_ops;
    f->loop = loop;
    f->cfg = *cfg;
    if (!f->cfg.max_record_bytes)
        f->cfg.max_record_bytes = 1u << 20;
    f->url = xstrdup(cfg->nats_url);
    f->cfg.nats_url = f->url;
    char *shown = natsconn_url_masked(f->url); /* never a password in a message */
    f->cfg.dir = NULL;
    f->done_tail = &f->done_p;
    f->done_tail_jobs = &f->done;
    f->queue_tail = &f->queue;
    pthread_mutex_init(&f->lock, NULL);
    pthread_cond_init(&f->wake, NULL);

    natsOptions *opts = NULL;
    if (natsconn_options(f->url, &cfg->nats_security, REQUEST_WAIT_MS, &opts, errmsg, errlen) < 0)
        goto fail;
    natsStatus s = natsOptions_UseGlobalMessageDelivery(opts, true);
    /* a publish goes out at once instead of waiting for libnats's flusher: single-publish
     * acknowledgement latency 1,003 -> 99 us p50 (bench/fabric) */
    if (s == NATS_OK)
        s = natsOptions_SetSendAsap(opts, true);
    if (s != NATS_OK) {
        snprintf(errmsg, errlen, "cannot set NATS options for %s: %s", shown,
                 natsStatus_GetText(s));
        goto fail;
    }
    s = natsConnection_Connect(&f->nc, opts);
    if (s != NATS_OK) {
        snprintf(errmsg, errlen,
                 "cannot connect to NATS at %s (%s): start nats-server "
                 "with -js, or fix --nats / SKIFF_NATS",
                 shown, natsStatus_GetText(s));
        goto fail;
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = REQUEST_WAIT_MS;
    jo.PublishAsync.AckHandler = on_ack;
    jo.PublishAsync.AckHandlerClosure = f;
    jo.PublishAsync.MaxPending = 1 << 16;
    s = natsConnection_JetStream(&f->js, f->nc, &jo);
    if (s != NATS_OK) {
        snprintf(errmsg, errlen, "cannot use JetStream at %s: %s", shown, natsStatus_GetText(s));
        goto fail;
    }
    int rc = load_state(f);
    if (rc < 0) {
        snprintf(errmsg, errlen,
                 "JetStream at %s does not answer (%s): is JetStream enabled (nats-server -js), "
                 "with enough servers for %d replicas?",
                 shown, fabric_strerror(rc), cfg->nats_replicas > 0 ? cfg->nats_replicas : 1);
        goto fail;
    }
    if (pthread_create(&f->worker, NULL, worker_main, f) != 0) {
        snprintf(errmsg, errlen, "cannot start the JetStream worker thread");
        goto fail;
    }
    f->worker_started = true;
    natsOptions_Destroy(opts);
    free(shown);
    uv_async_init(loop, &f->async, on_async);
    f->async.data = f;
    uv_unref((uv_handle_t *)&f->async);
    f->listed_at = uv_now(loop);
    f->handles = 1;
    *out = f;
    return 0;
fail:
    free(shown);
    natsOptions_Destroy(opts);
    jsCtx_Destroy(f->js);
    if (f->nc) {
        natsConnection_Close(f->nc);
        natsConnection_Destroy(f->nc);
    }
    fabric_free(f);
    return -ENOTCONN;
}

const struct fabric_ops fabric_nats_ops = {
    .name = "jetstream",
    .shared = true,
    .close = nats_close,
    .append = nats_append,
    .read = nats_read,
    .cursor_read = nats_cursor_read,
    .seek_time = nats_seek_time,
    .topic_info = nats_topic_info,
    .topics = nats_topics,
    .topic_create = nats_topic_create,
    .topic_set_retention = nats_topic_set_retention,
    .enforce_retention = nats_enforce_retention,
    .subscribe = nats_subscribe,
    .unsubscribe = nats_unsubscribe,
    .cursor_get = nats_cursor_get,
    .cursor_commit = nats_cursor_commit,
    .cursor_delete = nats_cursor_delete,
    .cursor_release = nats_cursor_release,
    .get_stats = nats_get_stats,
};
