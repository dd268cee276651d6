/* leader: which of the skiffds sharing one PostgreSQL store leads (runs the scheduler's
 * convergence, the autoscaler and schedules); the others serve the API.
 *
 * The leader is whoever holds a session-level pg_try_advisory_lock(LEADER_LOCK_KEY) on a
 * connection of its own, made and used with libpq's non-blocking calls on the loop (uv_poll),
 * so a slow or gone server never holds the loop up. Followers try for the lock every
 * try_interval_ms. The leader asks its connection to answer (SELECT 1) every
 * try_interval_ms, and stops leading at once, before any other callback runs, when:
 *  - the connection breaks (the server ended it, e.g. pg_terminate_backend, or it restarted),
 *  - an answer takes more than check_timeout_ms (a server or network that went silent).
 * The server frees the lock when the session ends; a session whose client vanished without
 * closing it (a host that lost power) is ended by TCP keepalives the connection asks the
 * server for (idle 5 s, then 3 probes 1 s apart: 8 s), later than the old leader's own
 * check_timeout_ms, so two never lead at once. Over a Unix socket a dead client's session
 * ends at once. A session the server ends is the exception: it frees the lock before the
 * old leader reads that its session is over (src/daemon/README.md, "No split brain").
 *
 * After a loss the caller holds what it ran (it may lead again, alone, with the same
 * instances) only while the server says no other session holds the lock: it is asked every
 * try_interval_ms / 4 (pg_locks, without taking the lock), and the first answer that names
 * another holder ends the hold. A server that cannot be reached ends nothing: the instances of
 * stateless code run on (a database restart costs no app its instances), though a server that
 * the old leader cannot reach may free the lock to another skiffd, which then runs the app's
 * instances too until the old one hears of it. Nothing heard from another skiffd (a message on
 * NATS, which any client on the bus could forge) ends a hold: only the server's word.
 *
 * on_change is called on the loop whenever leading changes, and with false when the first try
 * after the start finds the lock taken, or once after losing the lead when the hold ends
 * (never from inside leader_start or leader_close). Errors are negative errno values. */
#ifndef SKIFF_LEADER_H
#define SKIFF_LEADER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* 0x736b69666631, "skiff1" (the migrations' lock is "skiff"), in decimal for the SQL text */
#define LEADER_LOCK_KEY 126905167013425
#define LEADER_TRY_INTERVAL_MS 1000
#define LEADER_CHECK_TIMEOUT_MS 3000
/* A skiffd that stopped leading waits this many try intervals before trying again, so that a
 * follower whose session is sound takes over rather than the one whose session just failed. */
#define LEADER_LOST_BACKOFF 3

struct leader;

typedef void (*leader_change_cb)(void *ctx, bool leading);

struct leader_config {
    const char *location; /* the store's postgres:// or postgresql:// URL (copied) */
    const char *name;     /* application_name of its session, for pg_stat_activity */
    int try_interval_ms;  /* <= 0: LEADER_TRY_INTERVAL_MS */
    int check_timeout_ms; /* <= 0: LEADER_CHECK_TIMEOUT_MS */
    leader_change_cb on_change;
    void *ctx;
};

/* Starts trying for the lock at once (connecting in the background). */
int leader_start(uv_loop_t *loop, const struct leader_config *cfg, struct leader **out);
bool leader_is_leading(const struct leader *l);
/* Leading was lost and no other session is known to hold the lock: the caller holds what it
 * ran (see above). */
bool leader_is_holding(const struct leader *l);
/* Ends the session (the lock goes with it) without calling on_change; done (may be NULL)
 * once its handles are closed; then leader_free. */
void leader_close(struct leader *l, void (*done)(void *arg), void *arg);
void leader_free(struct leader *l);

#endif
