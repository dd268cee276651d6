/* cell: what a cell does with an instance it is asked to run, and where the platform puts one.
 *
 * A launch (struct cell_launch) is everything the platform decides about an instance: its
 * app, process, index and guid, the droplet (guid, digest, and where the controller keeps it),
 * the command, limits, checks, sidecars, and the inputs of its environment. What depends on
 * the cell that runs it (its network slot and address, HOME and TMPDIR, hence PORT,
 * CF_INSTANCE_ADDR and VCAP_APPLICATION) the cell decides: cell_launch_start is that one
 * place, used by the scheduler for the instances of this skiffd and by the cell agent
 * (cell_agent_start, `skiffd --role cell`) for the start requests it takes over NATS.
 *
 * The start request's body is cell_launch_to_json / cell_launch_from_json (docs/bus.md,
 * "Cells"); cell_place is the placement rule (Diego's auction in spirit), pure.
 *
 * Runs on one loop; errors are negative errno values with a sentence in err. */
#ifndef SKIFF_CELL_H
#define SKIFF_CELL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "executor/executor.h"
#include "natsconn/natsconn.h"

struct cell_launch {
    const char *app_guid;
    const char *app_name;
    const char *process_type;
    int index;
    const char *instance_guid;
    const char *droplet_guid;
    /* "sha256:HEX": the droplet's blob (src/blobs), which a cell fetches from the controllers'
     * GET /v1/blobs; NULL for a droplet made before blobs (read at droplet_path) */
    const char *droplet_digest;
    /* the further blobs the droplet needs (an image's config and layers; space-separated
     * digests, store.h's droplets.blobs): the leader grants them to the cell with the droplet.
     * Controller side only, never sent to a cell (which reads its layers in image.json) */
    const char *droplet_blobs;
    const char *droplet_path; /* where the controller keeps the droplet's folder */
    /* the controllers' API URLs the droplet's blob is fetched from by its digest
     * (NULL-terminated; NULL or empty: read at droplet_path) */
    const char *const *blob_urls;
    const char *command;
    int memory_mb;
    int disk_mb;
    enum health_check_type health;
    const char *health_endpoint;
    int start_timeout_s;
    int health_interval_ms, health_timeout_ms;
    bool readiness;
    enum health_check_type readiness_type;
    const char *readiness_endpoint;
    int readiness_interval_ms, readiness_timeout_ms;
    bool log_rate_limited;
    int64_t log_rate_limit;
    const struct instance_sidecar *sidecars;
    size_t n_sidecars;
    /* the environment's inputs (scheduler/instance_env.h) */
    const char *const *uris; /* NULL-terminated */
    const char *events_url;
    const char *events_token;
    const char *const *user_env; /* NULL-terminated KEY, VALUE, ... */
    const char *vcap_services_json;
};

/* Starts l on ex from the droplet folder droplet_dir (cell_droplet_path's answer): a slot (a
 * warm container when one fits and the instance has no sidecars and no image), the address
 * and environment that go with it, then executor_start. 0 with *out and addr ("IP:PORT",
 * where routers reach it) set; -EAGAIN when no slot is free; otherwise executor_start's or an
 * image's error, with the reason in err. home: the cell's $SKIFF_HOME (images' layers). */
int cell_launch_start(struct executor *ex, const char *home, const struct cell_launch *l,
                      const char *droplet_dir, struct instance **out, char addr[64], char *err,
                      size_t errsize);
/* The droplet guid of an instance started from a launch, which the executor's record of it
 * lacks: cell_launch_start writes it to HOME/run/cell-instance-GUID, so that whoever adopts
 * the instance on that home later (a cell agent, a skiffd) can say which droplet it runs.
 * cell_launch_droplet_read returns it (the caller frees it) or NULL; _forget removes it once
 * the instance ended. */
char *cell_launch_droplet_read(const char *home, const char *instance_guid);
void cell_launch_droplet_forget(const char *home, const char *instance_guid);

/* ---- droplets on a cell (fetch.c) ---------------------------------------------------------- */

/* Where a cell keeps the droplets it fetched: HOME/blobs/cache (blobs as fetched, verified)
 * and HOME/blobs/droplets/HEX (each unpacked once, then used by every start of it).
 *
 * cfg->controller_urls (NULL-terminated, copied; trailing slashes dropped) are the only
 * places the cell's token is ever sent: the controllers' API URLs from the cell's own
 * configuration, tried in turn from the last one that served a droplet, whatever a start
 * request names (its blob_urls are only compared with them: one not among them is logged and
 * ignored). The cell's own token is read from token_file (NULL or "": HOME/cell-token) at each
 * fetch, and read again once when a controller refuses it (it may have been rotated since the
 * fetch began); it must be for cell_id (auth.h's form). */
struct cell_droplets;
struct cell_droplets_config {
    const char *home;
    const char *cell_id;
    const char *token_file;
    const char *const *controller_urls;
    long fetch_stall_ms; /* a controller silent this long: the next one (<= 0: 10 s) */
    /* the fetched droplets' folders are kept up to this many bytes in all (0: no bound) */
    uint64_t cache_bytes;
    /* and, collect_unused: each folder nothing uses goes once unused_grace_ms passed since its
     * last use (its mtime: touched at each start from it and at each instance's end); what a
     * skiffd --role all brought from the blob store (src/blobs) is kept so */
    bool collect_unused;
    int64_t unused_grace_ms;
    /* the paths in use now (NULL-terminated, each and the list the caller's to free): an
     * instance's app_dir, a start's droplet folder; a folder one of them is in is never
     * removed. NULL: none. */
    char **(*in_use)(void *ctx);
    void *in_use_ctx;
};
int cell_droplets_new(uv_loop_t *loop, const struct cell_droplets_config *cfg,
                      struct cell_droplets **out);
/* Reads the token file now and says (log) whether it holds a token for this cell: 0, or the
 * error with err set. What SIGHUP asks of a cell, so that an operator who rotated the token
 * learns at once whether the new file is good. */
int cell_droplets_check_token(struct cell_droplets *cd, char *err, size_t errsize);
/* Keeps the fetched droplets within cache_bytes: the least recently used first (a droplet's
 * folder is touched at each start from it), and removes those unused for unused_grace_ms
 * (collect_unused); never one in_use names nor one on its way. The
 * sizes are read and the folders removed on the thread pool; which to remove is decided on the
 * loop, with in_use asked then. Called after a fetch and when an instance ends; one at a time
 * (a call meanwhile runs once it ends). */
void cell_droplets_collect(struct cell_droplets *cd);
/* After the loop ran every fetch and collection to its end (its callbacks called). */
void cell_droplets_free(struct cell_droplets *cd);

/* rc 0 and dir (the droplet's folder), or rc < 0 and why; both live during the call. */
typedef void (*cell_droplet_cb)(void *ctx, int rc, const char *dir, const char *why);

/* The one place a cell finds l's droplet folder:
 *  - a start request that names its blob (droplet_digest), on a cell with cd that has
 *    controllers configured: HOME/blobs/droplets/HEX, at once (0, *dir set) when it is
 *    there, else -EINPROGRESS and done(ctx, ...) once it was fetched (from those
 *    controllers, with the cell's token; verified against the digest before anything is
 *    unpacked) and unpacked, or could not be; one fetch per digest however many starts wait
 *    for it;
 *  - otherwise droplet_path when that folder exists on this cell (one host, or cd NULL: the
 *    skiffd that staged it or brought it here, src/blobs);
 *  - otherwise -ENOENT with "droplet sha256:... not on this cell" in err.
 * *dir is the caller's to free. Other errors (a token file missing or readable by others, a
 * fetch that cannot begin) are negative with the reason in err, and no call. */
int cell_droplet_get(struct cell_droplets *cd, const struct cell_launch *l, cell_droplet_cb done,
                     void *ctx, char **dir, char *err, size_t errsize);

/* ---- an image droplet's layers on a cell (layers.c) ---------------------------------------- */

/* A cell's image store (HOME/images, its layers owned from uid_base as the containers' user
 * namespaces map them), the layers of image droplets fetched into it by their digests from
 * the controllers' blob service (cd's: the cell's own token, to the controllers of its
 * configuration only), and its collection. ex: whose
 * instances' layers a collection keeps. */
struct cell_layers;
int cell_layers_new(uv_loop_t *loop, const char *home, unsigned uid_base, struct cell_droplets *cd,
                    struct executor *ex, struct cell_layers **out);
/* After the loop ran every fetch and collection to its end. */
void cell_layers_free(struct cell_layers *cl);
/* Missing layers are read from bs (blob_get_file: verified against the digest) instead of
 * fetched from controllers: a --role all skiffd, which reads droplets from the blob store it
 * shares with the others, reads layers from it too. bs outlives cl. */
struct blob_store;
void cell_layers_read_from(struct cell_layers *cl, struct blob_store *bs);

/* rc 0 once every layer is here, or rc < 0 and why (naming the layer); why lives during the
 * call. */
typedef void (*cell_layers_cb)(void *ctx, int rc, const char *why);
/* The one place a cell makes sure an image droplet's layers are here before an instance of it
 * starts: the layers the droplet's record names (image_from_json's checks: valid digests, at
 * most IMAGE_MAX_LAYERS) are looked for in HOME/images/layers; 0 when all are (start at once,
 * from this call: nothing collects them before the instance names them), else -EINPROGRESS
 * and done(ctx, ...) once the missing ones were fetched from cd's controllers (each verified
 * against its digest, then unpacked with the hostile-layer checks of src/images; one fetch per
 * digest however many starts wait for it) or one could not be. Other errors (a record refused, no
 * controller to fetch a missing layer from, the token file) are negative with err, and no call. */
int cell_layers_get(struct cell_layers *cl, const char *droplet_dir, cell_layers_cb done, void *ctx,
                    char *err, size_t errsize);
/* Removes the layers (and blobs) no instance of the executor mounts, on the thread pool; put
 * off while a fetch is in flight. Starts that come meanwhile wait for its end. live: how many
 * instances that mount layers the caller still runs; when the executor lists more (one
 * stopping, not yet retired), cell_layers_waiting says so afterwards and the caller collects
 * again a moment later. */
void cell_layers_collect(struct cell_layers *cl, size_t live);
bool cell_layers_waiting(const struct cell_layers *cl);
/* Layers no instance mounts are kept grace_ms after the last collection asked for (an
 * instance's end), so that an instance that crashes and starts again, or the next start of
 * the image, finds them here: cell_layers_collect then only marks the time, and
 * cell_layers_waiting says when it has passed (the caller collects then). <= 0 (the default):
 * collected at once. */
void cell_layers_set_grace(struct cell_layers *cl, int64_t grace_ms);

/* ---- the start request (docs/bus.md "Cells") ---------------------------------------------- */

/* l as a JSON object (a new reference). */
json_t *cell_launch_to_json(const struct cell_launch *l);
/* A launch read from a start request: every field checked (guids, names, numbers in range,
 * strings of bounded size), so nothing a sender writes reaches the executor unchecked. */
struct cell_launch_doc {
    struct cell_launch l;
    json_t *json; /* what l's strings point into */
    const char **uris, **user_env, **blob_urls;
    struct instance_sidecar *sidecars;
};
int cell_launch_from_json(json_t *obj, struct cell_launch_doc *out, char *err, size_t errsize);
void cell_launch_doc_clear(struct cell_launch_doc *d);
/* Reads a start request as a cell does: a refused one is logged, and *refuse is then the
 * instance guid to say CRASHED of (with err), or NULL when it names none. */
int cell_start_request(json_t *launch, struct cell_launch_doc *d, char *err, size_t errsize,
                       const char **refuse);
/* A cell's message of an instance's state (docs/bus.md): its address, its exit and a reason
 * (why, else the exit's) where there are any. */
json_t *cell_state_message(const char *guid, const char *state, const char *addr,
                           const struct instance_exit *ex, const char *why);

/* ---- placement (pure, unit-tested) -------------------------------------------------------- */

struct cell_candidate {
    const char *id;
    const char *zone;
    bool up;                /* heartbeat recent enough */
    uint64_t free_bytes;    /* capacity minus use (and what was placed since its last beat) */
    int process_count;      /* instances of the process being placed already on it */
    int zone_process_count; /* ... and on every cell of its zone */
};

/* The cell for one more instance of a process that needs need_bytes, or -1 when no cell is up
 * with room. Among the cells up with room: those with the fewest instances of the process
 * (so never two on one cell while another has room and none), then those of the zone with
 * the fewest instances of the process, then the most free memory, then the smallest id (so
 * the answer never depends on the order of the list). */
int cell_place(const struct cell_candidate *cells, size_t n, uint64_t need_bytes);

/* ---- the cell agent: skiffd --role cell ---------------------------------------------------- */

struct cell_agent;

struct cell_agent_config {
    const char *home;
    const char *zone;
    uint64_t memory_bytes; /* capacity announced; 0: the host's RAM */
    int heartbeat_ms;      /* <= 0: CELL_HEARTBEAT_MS */
    const char *nats_urls;
    struct natsconn_security nats_security;
    const struct executor_config *executor;
    const char *token_file; /* the cell's token for fetching droplets (NULL: HOME/cell-token) */
    /* the controllers' API URLs it fetches droplets from, and the only ones it sends its
     * token to (NULL-terminated; --controller-url) */
    const char *const *controller_urls;
    long fetch_stall_ms; /* a controller that sends nothing this long: the next (<= 0: 10 s) */
    uint64_t droplet_cache_bytes; /* fetched droplets kept up to this size (0: no bound) */
    int64_t layer_grace_ms;       /* unused layers kept this long (<= 0: collected at once) */
};

#define CELL_HEARTBEAT_MS 1000
#define CELL_FETCH_STALL_MS                                                                        \
    10000 /* a controller silent this long while a fetch waits: the next                           \
           */
#define CELL_OUTPUT_BATCH_MS 100
#define CELL_OUTPUT_BATCH_LINES 200

/* Runs an executor (adopting what a predecessor on the home left under its shims), announces
 * the cell on NATS every heartbeat, takes start and stop requests on its own subject and
 * reports what happens to its instances (docs/bus.md "Cells"). */
int cell_agent_start(uv_loop_t *loop, const struct cell_agent_config *cfg, struct cell_agent **out,
                     char *err, size_t errsize);
const char *cell_agent_id(const struct cell_agent *a);
/* SIGHUP: reads the cell's token file again and logs whether it is good (the file is read at
 * each fetch anyway). */
void cell_agent_reload(struct cell_agent *a);
/* Stops every instance (leave false) or lets them run for the next cell agent on this home
 * (leave true), closes NATS; done when every handle is closed; then cell_agent_free. */
void cell_agent_close(struct cell_agent *a, bool leave, void (*done)(void *arg), void *arg);
void cell_agent_free(struct cell_agent *a);

#endif
