/* cells: every skiffd that runs instances is a cell. Each records a heartbeat in the store
 * (a document of kind "cell", store.h) every interval: its id (kept in HOME/cell-id), host,
 * zone (--zone), API address, memory capacity and use, instance count, whether it leads,
 * the time and its interval. `GET /v1/cells` (platform admin; `skiff cells`) lists them,
 * each "up", or "missing" when its last heartbeat is older than CELLS_MISSING_INTERVALS
 * intervals (wall clocks of the hosts are compared: keep them in sync, e.g. with NTP).
 *
 * The store was chosen over NATS: it is what every skiffd sharing desired state already
 * reaches (PostgreSQL), and any of them answers the list from it at once, where a NATS
 * subscriber would know no cell until each had beaten again after its own start; it works
 * with the embedded store alone too. The cells that run instances for the leader over NATS
 * (skiffd --role cell) are heard by the scheduler's cells client (cell/client.h) and listed
 * beside these. Runs on the loop; errors are negative errno. */
#ifndef SKIFF_CELLS_H
#define SKIFF_CELLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define CELLS_HEARTBEAT_MS 5000
#define CELLS_MISSING_INTERVALS 3
#define CELLS_ZONE_MAX 63
#define CELLS_ID_LEN 32 /* lowercase hex digits */

struct cells;
struct store;
struct scheduler;
struct api;

struct cells_config {
    const char *home;     /* the cell's id is kept in HOME/cell-id */
    const char *zone;     /* checked with cells_zone_valid */
    const char *api_addr; /* where this skiffd's API answers */
    int heartbeat_ms;     /* <= 0: CELLS_HEARTBEAT_MS */
    struct store *store;
    struct scheduler *sched;
    bool (*leading)(void *ctx); /* whether this skiffd leads now */
    void *leading_ctx;
};

/* Reads (or makes) the cell's id and beats once at once, then every interval. */
int cells_start(uv_loop_t *loop, const struct cells_config *cfg, struct cells **out, char *err,
                size_t errsize);
/* Adds GET /v1/cells (platform admin) to the API. */
void cells_register(struct cells *c, struct api *api);
/* Records a heartbeat now (e.g. when leading changed). */
void cells_beat(struct cells *c);
const char *cells_id(const struct cells *c);
/* The cell id kept in HOME/cell-id (32 lowercase hex digits; an operator may write one there
 * before the first start, e.g. to name it in NATS permissions), made when there is none. */
int cells_load_id(const char *home, char id[CELLS_ID_LEN + 1], char *err, size_t errsize);
/* Whether the cell of that id is up and says it leads (its last heartbeat, one store read). */
bool cells_leads(struct cells *c, const char *id);
/* Stops the heartbeats (the handle closes on the loop); then cells_free. */
void cells_close(struct cells *c);
void cells_free(struct cells *c);

/* ---- pure parts (unit-tested) -------------------------------------------------------------- */

/* A zone name: 1 to CELLS_ZONE_MAX of [a-z0-9._-], starting with a letter or digit. */
bool cells_zone_valid(const char *zone);
/* The same, with the message for the user in err when it is not: -EINVAL. */
int cells_zone_check(const char *zone, char *err, size_t errsize);
/* "up" when the heartbeat at heartbeat_ms is at most CELLS_MISSING_INTERVALS intervals old
 * at now_ms, "missing" otherwise (and for a malformed interval). */
const char *cells_state(int64_t heartbeat_ms, int64_t interval_ms, int64_t now_ms);

#endif
