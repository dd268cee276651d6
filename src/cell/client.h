/* cellc: the cells a scheduler runs its instances on, behind one interface: this skiffd's own
 * executor (the local cell, unless it is a controller only) and the cells that announce
 * themselves on NATS (skiffd --role cell, docs/bus.md "Cells").
 *
 * cellc_launch places an instance with cell_place (cell.h) and starts it there: on the local
 * cell through cell_launch_start, on a remote one with a start request. What happens to it
 * comes back through the same callbacks either way (on the loop, never from inside a call
 * into cellc): RUNNING and the final state (CRASHED or DOWN, after which the cellc_inst is
 * freed once the callback returns), readiness changes and output lines.
 *
 * Convergence: a remote cell whose heartbeat is older than lost_ms is lost; each of its
 * instances is reported CRASHED ("its cell was lost"), so the scheduler starts it again on
 * another cell, as after a crash. An instance a cell reports that nobody here knows (a cell
 * back after it was lost, or every instance when a controller begins to lead) goes to the
 * adopt callback, which keeps it in a slot or stops it (cellc_stop): that is how a returning
 * cell's duplicates are stopped and how a new leader takes over the cells' instances instead
 * of starting them again. Only while leading: a controller that follows asks nothing of a
 * cell, and one that stops leading or shuts down lets the cells' instances run (cellc_stop
 * then only forgets them, reported DOWN).
 *
 * Not thread-safe; errors are negative errno values. */
#ifndef SKIFF_CELL_CLIENT_H
#define SKIFF_CELL_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "cell/cell.h"
#include "executor/executor.h"
#include "natsconn/natsconn.h"

#define CELLC_LOST_MS 5000

struct cellc;
struct cellc_inst;

/* What an instance found running (adopted) looks like. */
struct cellc_found {
    const char *app_guid;
    const char *process_type;
    int index;
    const char *instance_guid;
    const char *droplet_guid; /* NULL when not known (the local cell: then app_dir) */
    const char *app_dir;      /* NULL when not known (a remote cell) */
    int port;
    bool readiness;
};

struct cellc_callbacks {
    void (*on_output)(void *ctx, struct cellc_inst *i, int stream, const char *line, size_t len);
    void (*on_state)(void *ctx, struct cellc_inst *i, enum instance_state state,
                     const struct instance_exit *exit);
    void (*on_readiness)(void *ctx, struct cellc_inst *i, bool ready);
    void (*on_found)(void *ctx, struct cellc_inst *i, const struct cellc_found *f);
    void *ctx;
};

struct cellc_config {
    const struct executor_config *executor; /* the local executor (also for stagings) */
    bool local_cell;      /* instances may be placed on it (false: --role controller) */
    const char *local_id; /* the local cell's id and zone, for placement and `cell` */
    const char *local_zone;
    const char *home;
    const char *nats_urls; /* NULL or "": no remote cells */
    struct natsconn_security nats_security;
    int lost_ms; /* <= 0: CELLC_LOST_MS */
    /* the controllers' API URLs a remote cell fetches a droplet's blob from (NULL-terminated,
     * copied; NULL: none, the cell reads the droplet at its path) */
    const char *const *blob_urls;
    /* Asked before a remote cell is sent a start whose droplet it fetches: 0 lets the start
     * go (the cell may now read the droplet's blob and the blobs it lists, space-separated
     * in blobs, NULL for none, with its token: api_cell_grant); an error fails the launch
     * with nothing sent. NULL: nothing asked. */
    int (*grant)(void *ctx, const char *cell_id, const char *digest, const char *blobs);
    /* Told, while leading, when nothing of that droplet runs or is starting on that cell any
     * more (its last instance there stopped, crashed, moved or the cell was lost): the cell
     * may read it no longer (api_cell_withdraw). NULL: nothing told. */
    void (*withdraw)(void *ctx, const char *cell_id, const char *digest);
    void *grant_ctx;
    /* The local cell is a cell for whoever leads too (skiffd --role all on a shared store):
     * it announces itself and its instances on skiff.cell.<local_id>.up every heartbeat_ms,
     * and while another skiffd leads it takes that leader's start and stop requests on
     * skiff.cell.<local_id>.req and reports on them as a --role cell does (docs/bus.md
     * "Cells"). Needs nats_urls and local_cell. */
    bool serve;
    int heartbeat_ms;            /* <= 0: CELL_HEARTBEAT_MS */
    uint64_t local_memory_bytes; /* the local cell's capacity; 0: the host's RAM */
    /* Brings a launch's droplet (and an image's layers) onto this host before a local start:
     * 0 with *dir (the caller's to free), -EINPROGRESS while on its way (then
     * cellc_local_droplet_ready names the app once it is here, or could not be), or an error
     * with err. NULL: the droplet is read at its droplet_path. */
    int (*local_droplet)(void *ctx, const struct cell_launch *l, char **dir, char *err,
                         size_t errsize);
    void *local_droplet_ctx;
    /* The droplets brought to the local cell (HOME/blobs/droplets) that no local instance runs
     * any more are removed droplet_grace_ms after the last one ended (0: at once), never one
     * in use (collect_droplets; cell_droplets_collect's collect_unused). */
    bool collect_droplets;
    int64_t droplet_grace_ms;
};

int cellc_new(uv_loop_t *loop, const struct cellc_config *cfg, const struct cellc_callbacks *cb,
              struct cellc **out, char *err, size_t errsize);
struct executor *cellc_executor(struct cellc *c);
/* Leading: remote cells are asked, found instances offered. Set false first when leading
 * stops (then stopping a remote instance only forgets it). */
void cellc_set_leading(struct cellc *c, bool leading);
/* How long (ms) to wait before converging after leading began, so that every cell has beaten
 * once and its instances were offered (0: now). */
int cellc_settle_ms(const struct cellc *c);
/* Offers the local cell's leftover instances (executor_adopt) to on_found, and, while
 * leading, those it started for the skiffd that led before (serve); the remote cells' are
 * offered as their heartbeats come. Returns how many were found locally. With serve, the
 * leftovers were taken over by cellc_new already, as instances run for whoever leads (a
 * skiffd restarted on its home keeps what it ran for the leader): they are offered here only
 * while leading. */
int cellc_adopt_local(struct cellc *c);
/* Places and starts l (needing memory_bytes); 0 with *out, and addr when known now ("" for a
 * remote cell until it reports), or an error with err: -EAGAIN when no cell has room,
 * -EINPROGRESS when it was placed on the local cell and its droplet is on its way there
 * (local_droplet: nothing started; cellc_local_droplet_ready tells when to try again). */
int cellc_launch(struct cellc *c, const struct cell_launch *l, uint64_t memory_bytes,
                 struct cellc_inst **out, char addr[64], char *err, size_t errsize);
/* The droplet or layers local_droplet was bringing for app_guid are here, or could not be:
 * the starts a leader asked of the local cell for that app are tried again. */
void cellc_local_droplet_ready(struct cellc *c, const char *app_guid);
/* The local cell's instances (whoever asked for them) and their memory use. */
void cellc_local_usage(const struct cellc *c, int *instances, uint64_t *memory_bytes);
/* SIGTERM, SIGKILL after the grace period, then DOWN; idempotent. */
void cellc_stop(struct cellc_inst *i);
/* While not leading, with serve: the local instance i goes on running for whoever leads, as
 * one it started on a leader's request (reported on NATS, listed in the heartbeat, which goes
 * out at once; offered to on_found again if this skiffd leads next). Its user data is
 * cleared and nothing more of it is reported through the callbacks. readiness: it has a
 * readiness check, ready its last result. false, and nothing done, for a remote instance, or
 * without serve or while leading: then the caller stops it. */
bool cellc_hand_over(struct cellc_inst *i, bool readiness, bool ready);

struct cellc_inst_info {
    enum instance_state state;
    int64_t since_ms;
    double cpu;
    uint64_t memory_bytes;
    char addr[64];
    int port;
    int64_t host_uid;
    bool warm_start;
    char warm_runtime[16];
    uint64_t disk_bytes, disk_quota_bytes;
    bool disk_full;
    char cell[33]; /* the id of the cell it runs on */
};
/* i may be NULL: all zero, host_uid -1. */
void cellc_inst_info(const struct cellc_inst *i, struct cellc_inst_info *out);
const char *cellc_inst_sidecar_name(const struct cellc_inst *i, size_t k);
/* Whether it runs on this skiffd's own executor. */
bool cellc_inst_local(const struct cellc_inst *i);
void *cellc_inst_user_data(const struct cellc_inst *i);
void cellc_inst_set_user_data(struct cellc_inst *i, void *data);
/* The droplet blob a remote cell was granted for an instance it ran before this controller
 * led (one offered to on_found): its grant is then withdrawn when the last instance of that
 * droplet there ends, as for one started here. Ignored for the local cell and a digest that
 * does not fit. */
void cellc_inst_set_digest(struct cellc_inst *i, const char *digest);

/* The cells known from NATS heartbeats (not the local one, nor the skiffds on the shared store,
 * which src/cells lists from their heartbeats there), for GET /v1/cells: a JSON array
 * (a new reference) of {id, host, zone, state up|lost, memory_capacity_bytes,
 * memory_used_bytes, instances, heartbeat_age_ms}. */
json_t *cellc_remote_cells(const struct cellc *c);

/* Stops every local instance, forgets the remote ones (they keep running), closes NATS. With
 * serve and not leading, the local instances run for the leader are let go instead of
 * stopped (executor_let_go): the next skiffd on this home takes them over. */
void cellc_shutdown(struct cellc *c, void (*done)(void *arg), void *arg);
/* Lets every local instance run for the next skiffd (executor_detach), closes NATS. */
void cellc_detach(struct cellc *c, void (*done)(void *arg), void *arg);
void cellc_free(struct cellc *c);

#endif
