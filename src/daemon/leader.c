/* leader: the PostgreSQL advisory lock that says which skiffd leads (leader.h). */
#include "daemon/leader.h"

#include <errno.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "store/store_backend.h"

#define LEADER__STR2(x) #x
#define LEADER__STR(x) LEADER__STR2(x)

/* set on the session whatever the location's options say (store_pg_connect asks the same) */
#define LEADER__KEEPALIVES                                                                         \
    "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 1; "                               \
    "SET tcp_keepalives_count = 3; SET tcp_user_timeout = 8000; "
static const char leader__try[] = "SELECT pg_try_advisory_lock(" LEADER__STR(LEADER_LOCK_KEY) ")";
static const char leader__check[] = "SELECT 1";
/* Whether a session other than this skiffd's (nor the one it led on, which the server may not
 * have ended yet) holds the lock: the server's word on who leads, asked without taking it. A
 * bigint key is in pg_locks as its high half (classid), low half (objid) and objsubid 1. */
#define LEADER__WATCH_FMT                                                                          \
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = %llu AND "    \
    "objid = %llu AND objsubid = 1 AND granted AND pid <> pg_backend_pid() AND pid <> %d)"

enum leader__ask {
    LEADER__ASK_TRY,   /* pg_try_advisory_lock: a follower's try */
    LEADER__ASK_CHECK, /* SELECT 1: the leader's session answers */
    LEADER__ASK_WATCH, /* does another session hold the lock (holding only) */
};

enum leader__phase {
    LEADER__IDLE,       /* no connection; the timer makes one */
    LEADER__CONNECTING, /* PQconnectPoll until it says OK */
    LEADER__READY,      /* connected, no query in flight; the timer sends the next */
    LEADER__QUERY,      /* a try or a check is in flight, under the deadline */
};

/* A poll handle lives on the heap: the socket may change while connecting (libpq tries each
 * address in turn), and a closed handle is freed only in its close callback. */
struct leader__poll {
    uv_poll_t h;
    struct leader *l;
};

struct leader {
    uv_loop_t *loop;
    char *location;
    char *masked; /* the location with no password, for messages */
    char *name;
    int try_ms, check_ms;
    leader_change_cb on_change;
    void *ctx;
    PGconn *conn;
    struct leader__poll *poll;
    int poll_fd;
    uv_timer_t timer;    /* the next connection, try or check */
    uv_timer_t deadline; /* the answer (or the connection) in flight must come before it */
    enum leader__phase phase;
    enum leader__ask asking; /* the query in flight */
    bool fresh;              /* the connection is new: its first query sets its keepalives */
    bool query_ok;           /* every result of the query in flight was a success */
    bool got_lock;           /* ... and its one value was true (the lock; another holds it) */
    bool leading;
    int lock_pid; /* the server's pid of the session that holds the lock, while
                   * leading and after (the server may not have ended it yet) */
    /* After leading was lost and until another is known to lead (the server says another
     * session holds the lock): the caller holds what it ran. */
    bool holding;
    int64_t retry_mono; /* no try for the lock before (LEADER_LOST_BACKOFF after a loss) */
    bool decided;    /* on_change was called for the first try since the start or a loss */
    bool complained; /* a connection failure was logged since the last success */
    bool closing;
    int open_handles;
    void (*done)(void *arg);
    void *done_arg;
};

static void leader__on_poll(uv_poll_t *h, int status, int events);
static void leader__arm(struct leader *l, int ms);

/* How often a skiffd that holds what it ran asks whether another took the lock. */
static int leader__watch_ms(const struct leader *l)
{
    return l->try_ms / 4 > 0 ? l->try_ms / 4 : 1;
}

static void leader__handle_closed(uv_handle_t *h)
{
    struct leader *l = h->data;
    if (h->type == UV_POLL)
        free((struct leader__poll *)h); /* h is its first member */
    if (--l->open_handles == 0 && l->closing && l->done)
        l->done(l->done_arg);
}

static void leader__poll_release(struct leader *l)
{
    if (!l->poll)
        return;
    uv_poll_stop(&l->poll->h);
    uv_close((uv_handle_t *)&l->poll->h, leader__handle_closed);
    l->poll = NULL;
}

/* Watches the connection's socket for events (a new handle when the socket changed). */
static int leader__watch(struct leader *l, int events)
{
    int fd = PQsocket(l->conn);
    if (fd < 0)
        return -EBADF;
    if (l->poll && l->poll_fd != fd)
        leader__poll_release(l);
    if (!l->poll) {
        struct leader__poll *p = xcalloc(1, sizeof *p);
        p->l = l;
        int rc = uv_poll_init(l->loop, &p->h, fd);
        if (rc < 0) {
            free(p);
            return rc;
        }
        p->h.data = l;
        l->open_handles++;
        l->poll = p;
        l->poll_fd = fd;
    }
    return uv_poll_start(&l->poll->h, events, leader__on_poll);
}

/* The session is over (or never began): leading stops here, before anything else runs. */
static void leader__lost(struct leader *l, const char *why)
{
    bool was = l->leading;
    l->leading = false;
    if (was) {
        l->decided = false; /* its next answer says again who leads */
        l->holding = true;  /* until the server says another leads */
        l->retry_mono = time_mono_ms() + (int64_t)LEADER_LOST_BACKOFF * l->try_ms;
    }
    uv_timer_stop(&l->deadline);
    leader__poll_release(l); /* before libpq closes the socket under it */
    if (l->conn)
        PQfinish(l->conn);
    l->conn = NULL;
    l->phase = LEADER__IDLE;
    if (was) {
        log_warning("[LEADER] this skiffd stopped leading: %s (%s); it holds what it ran until "
                    "the store says another skiffd took the lock (asked every %d ms), and "
                    "tries for the lock again in %d ms, then every %d ms",
                    why, l->masked, leader__watch_ms(l), LEADER_LOST_BACKOFF * l->try_ms,
                    l->try_ms);
        l->complained = true;
        l->on_change(l->ctx, false);
    } else if (!l->complained) {
        log_warning("[LEADER] cannot reach the store to try for the lock: %s (%s); trying "
                    "again every %d ms",
                    why, l->masked, l->try_ms);
        l->complained = true;
    }
    if (!l->closing)
        leader__arm(l, l->holding ? leader__watch_ms(l) : l->try_ms);
}

/* libpq's last error, on one line. */
static const char *leader__pq_error(struct leader *l, char *out, size_t size)
{
    const char *m = l->conn ? PQerrorMessage(l->conn) : "";
    snprintf(out, size, "%s", m && *m ? m : "the connection broke");
    for (char *p = out; *p; p++)
        if (*p == '\n' || *p == '\t')
            *p = *(p + 1) ? ' ' : '\0';
    return out;
}

static void leader__lost_pq(struct leader *l)
{
    char why[256];
    leader__lost(l, leader__pq_error(l, why, sizeof why));
}

static void leader__read_results(struct leader *l);

static void leader__on_deadline(uv_timer_t *t)
{
    struct leader *l = t->data;
    /* a loop held up past the deadline runs timers before polls: an answer that did come in
     * time is read first, so a busy skiffd does not give up leading for nothing */
    if (l->phase == LEADER__QUERY && PQconsumeInput(l->conn) &&
        PQstatus(l->conn) == CONNECTION_OK) {
        leader__read_results(l);
        if (l->phase != LEADER__QUERY)
            return;
    }
    char why[96];
    snprintf(why, sizeof why, "the store did not answer within %d ms", l->check_ms);
    leader__lost(l, why);
}

static void leader__send(struct leader *l, const char *sql)
{
    if (!PQsendQuery(l->conn, sql)) {
        leader__lost_pq(l);
        return;
    }
    l->phase = LEADER__QUERY;
    l->query_ok = true;
    l->got_lock = false;
    uv_timer_start(&l->deadline, leader__on_deadline, (uint64_t)l->check_ms, 0);
    int flushed = PQflush(l->conn);
    if (flushed < 0 || leader__watch(l, UV_READABLE | (flushed == 1 ? UV_WRITABLE : 0)) < 0)
        leader__lost_pq(l);
}

/* Asks what this skiffd needs to know now: the leader whether its session answers; one that
 * holds what it ran (before its next try is due) whether another holds the lock; anyone else
 * for the lock. A new connection's first query also asks the server to probe it, so that the
 * session (and the lock) of a client that vanished without a word ends in 8 s (ignored on a
 * Unix socket, where such a session ends at once). */
static void leader__ask(struct leader *l)
{
    char watch[512], sql[768];
    const char *q = leader__check;
    l->asking = LEADER__ASK_CHECK;
    if (!l->leading && l->holding && time_mono_ms() < l->retry_mono) {
        unsigned long long key = LEADER_LOCK_KEY;
        snprintf(watch, sizeof watch, LEADER__WATCH_FMT, key >> 32, key & 0xffffffffULL,
                 l->lock_pid);
        q = watch;
        l->asking = LEADER__ASK_WATCH;
    } else if (!l->leading) {
        q = leader__try;
        l->asking = LEADER__ASK_TRY;
    }
    snprintf(sql, sizeof sql, "%s%s", l->fresh ? LEADER__KEEPALIVES : "", q);
    l->fresh = false;
    leader__send(l, sql);
}

/* Another skiffd leads (the server says so): the caller is told once since the start or the
 * last loss. */
static void leader__follow(struct leader *l)
{
    bool held = l->holding;
    l->holding = false;
    if (l->decided)
        return;
    l->decided = true;
    if (held)
        log_info(
            "[LEADER] another skiffd leads: the store says another session holds the lock; "
            "this one gives up what it held and tries for the lock from %lld ms on",
            (long long)(l->retry_mono - time_mono_ms() > 0 ? l->retry_mono - time_mono_ms() : 0));
    else
        log_info("[LEADER] another skiffd leads: this one serves the API and tries for "
                 "the lock every %d ms",
                 l->try_ms);
    l->on_change(l->ctx, false);
}

/* A successful answer: judged by what was asked. */
static void leader__answered(struct leader *l)
{
    switch (l->asking) {
    case LEADER__ASK_CHECK:
        break;
    case LEADER__ASK_WATCH:
        if (l->got_lock)
            leader__follow(l);
        break;
    case LEADER__ASK_TRY:
        if (!l->got_lock) {
            leader__follow(l);
            break;
        }
        l->holding = false;
        l->decided = true;
        l->leading = true;
        l->lock_pid = PQbackendPID(l->conn);
        log_info("[LEADER] this skiffd leads: it holds the lock on %s, and runs the "
                 "instances, the autoscaler and schedules",
                 l->masked);
        l->on_change(l->ctx, true);
        break;
    }
}

/* The query's last result came: it is judged, and the next one armed. */
static void leader__query_done(struct leader *l)
{
    uv_timer_stop(&l->deadline);
    l->phase = LEADER__READY;
    if (!l->query_ok) {
        if (l->leading) {
            leader__lost(l, "the store refused the check");
            return;
        }
        char why[256];
        log_warning("[LEADER] asking the store who leads failed: %s",
                    leader__pq_error(l, why, sizeof why));
    } else {
        l->complained = false;
        leader__answered(l);
    }
    if (l->phase == LEADER__READY && !l->closing)
        leader__arm(l, l->holding ? leader__watch_ms(l) : l->try_ms);
}

static void leader__read_results(struct leader *l)
{
    while (l->phase == LEADER__QUERY && !PQisBusy(l->conn)) {
        PGresult *res = PQgetResult(l->conn);
        if (!res) {
            leader__query_done(l);
            return;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_TUPLES_OK) {
            if (PQntuples(res) == 1 && PQnfields(res) == 1)
                l->got_lock = !strcmp(PQgetvalue(res, 0, 0), "t");
        } else if (st != PGRES_COMMAND_OK) {
            l->query_ok = false;
        }
        PQclear(res);
    }
}

static void leader__connect_step(struct leader *l, PostgresPollingStatusType st)
{
    int rc = 0;
    switch (st) {
    case PGRES_POLLING_READING:
        rc = leader__watch(l, UV_READABLE);
        break;
    case PGRES_POLLING_WRITING:
        rc = leader__watch(l, UV_WRITABLE);
        break;
    case PGRES_POLLING_OK:
        uv_timer_stop(&l->deadline);
        l->phase = LEADER__READY;
        leader__ask(l);
        return;
    default:
        leader__lost_pq(l);
        return;
    }
    if (rc < 0)
        leader__lost(l, uv_strerror(rc));
}

static void leader__on_poll(uv_poll_t *h, int status, int events)
{
    struct leader *l = h->data;
    if (status < 0) {
        leader__lost(l, uv_strerror(status));
        return;
    }
    if (l->phase == LEADER__CONNECTING) {
        leader__connect_step(l, PQconnectPoll(l->conn));
        return;
    }
    if (events & UV_WRITABLE) {
        int flushed = PQflush(l->conn);
        if (flushed < 0 || (flushed == 0 && leader__watch(l, UV_READABLE) < 0)) {
            leader__lost_pq(l);
            return;
        }
    }
    if (!(events & UV_READABLE))
        return;
    /* readable while idle too: that is how a session ended by the server is seen at once */
    if (!PQconsumeInput(l->conn) || PQstatus(l->conn) == CONNECTION_BAD) {
        leader__lost_pq(l);
        return;
    }
    PGnotify *n;
    while ((n = PQnotifies(l->conn)))
        PQfreemem(n);
    if (l->phase == LEADER__QUERY)
        leader__read_results(l);
}

static void leader__connect(struct leader *l)
{
    l->conn = store_pg_connect(l->location, true, l->name);
    if (!l->conn) {
        leader__lost(l, "out of memory");
        return;
    }
    if (PQstatus(l->conn) == CONNECTION_BAD || PQsetnonblocking(l->conn, 1) != 0) {
        leader__lost_pq(l);
        return;
    }
    l->phase = LEADER__CONNECTING;
    l->fresh = true;
    uv_timer_start(&l->deadline, leader__on_deadline, (uint64_t)l->check_ms, 0);
    leader__connect_step(l, PGRES_POLLING_WRITING);
}

static void leader__on_timer(uv_timer_t *t)
{
    struct leader *l = t->data;
    int64_t wait = l->retry_mono - time_mono_ms();
    if (!l->leading && !l->holding && wait > 0) {
        leader__arm(l, (int)wait); /* lost the lead lately: a sound follower takes it first */
        return;
    }
    if (l->phase == LEADER__IDLE)
        leader__connect(l);
    else if (l->phase == LEADER__READY)
        leader__ask(l);
}

static void leader__arm(struct leader *l, int ms)
{
    uv_timer_start(&l->timer, leader__on_timer, (uint64_t)ms, 0);
}

int leader_start(uv_loop_t *loop, const struct leader_config *cfg, struct leader **out)
{
    if (!cfg->location || !cfg->on_change)
        return -EINVAL;
    struct leader *l = xcalloc(1, sizeof *l);
    l->loop = loop;
    l->location = xstrdup(cfg->location);
    l->masked = store_location_masked(cfg->location);
    l->name = xstrdup(cfg->name ? cfg->name : "skiffd leader");
    l->try_ms = cfg->try_interval_ms > 0 ? cfg->try_interval_ms : LEADER_TRY_INTERVAL_MS;
    l->check_ms = cfg->check_timeout_ms > 0 ? cfg->check_timeout_ms : LEADER_CHECK_TIMEOUT_MS;
    l->on_change = cfg->on_change;
    l->ctx = cfg->ctx;
    uv_timer_init(loop, &l->timer);
    uv_timer_init(loop, &l->deadline);
    l->timer.data = l->deadline.data = l;
    l->open_handles = 2;
    leader__arm(l, 0);
    *out = l;
    return 0;
}

bool leader_is_leading(const struct leader *l)
{
    return l && l->leading;
}

bool leader_is_holding(const struct leader *l)
{
    return l && !l->leading && l->holding;
}

void leader_close(struct leader *l, void (*done)(void *arg), void *arg)
{
    l->closing = true;
    l->done = done;
    l->done_arg = arg;
    l->leading = false;
    l->holding = false;
    uv_timer_stop(&l->timer);
    uv_timer_stop(&l->deadline);
    leader__poll_release(l);
    if (l->conn)
        PQfinish(l->conn);
    l->conn = NULL;
    l->phase = LEADER__IDLE;
    uv_close((uv_handle_t *)&l->timer, leader__handle_closed);
    uv_close((uv_handle_t *)&l->deadline, leader__handle_closed);
}

void leader_free(struct leader *l)
{
    if (!l)
        return;
    if (l->conn)
        PQfinish(l->conn);
    free(l->location);
    free(l->masked);
    free(l->name);
    free(l);
}
