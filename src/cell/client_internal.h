/* What client.c and serve.c (cellc, client.h) share and nobody else may use. */
#ifndef SKIFF_CELL_CLIENT_INTERNAL_H
#define SKIFF_CELL_CLIENT_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "cell/cell.h"
#include "cell/client.h"

struct cellc__cell {
    char id[33];
    char host[64];
    char zone[64];
    uint64_t capacity, used, placed; /* placed: memory of starts sent since its last beat */
    int64_t beat_mono;
    int interval_ms;
    int instances;
    bool lost;
    bool led;         /* its last heartbeat said it leads (a skiffd --role all) */
    bool reads_store; /* it reads droplets from the blob store it shares: no grant */
    struct cellc__cell *next;
};

struct cellc_inst {
    struct cellc *c;
    struct cellc__cell *cell; /* NULL: the local cell */
    struct instance *local;
    char guid[37], app_guid[37], droplet[37];
    char digest[72]; /* the droplet's blob the cell was granted ("": none) */
    char type[64];
    char addr[64];
    int index;
    int port;
    enum instance_state state;
    int64_t since_ms;
    int64_t launched_mono;
    int64_t stop_sent_mono; /* when the last stop was sent to its cell (0: none) */
    uint64_t memory;
    bool forgotten;           /* a final DOWN is queued */
    bool served;              /* started on a leader's request (serve): reported on NATS */
    bool readiness, ready_ok; /* served: it has a readiness check, and its last result */
    char *dir;                /* local: the droplet's folder it runs from (NULL: not known) */
    void *user;
    struct cellc_inst *next;
};

struct cellc {
    uv_loop_t *loop;
    struct cellc_callbacks cb;
    struct executor *ex;
    bool local_cell;
    char local_id[33];
    char local_zone[64];
    uint64_t local_capacity;
    int lost_ms;
    char *home;
    struct natsconn *nc;
    struct cellc__cell *cells;
    struct cellc_inst *insts;
    char **blob_urls; /* the controllers' API URLs a cell fetches droplets from */
    int (*grant)(void *ctx, const char *cell_id, const char *digest, const char *blobs);
    void (*withdraw)(void *ctx, const char *cell_id, const char *digest);
    void *grant_ctx;
    bool leading;
    bool adopted; /* the local executor's leftovers were taken over (cellc_adopt_local) */
    int64_t leading_since_mono;
    int64_t connected_since_mono; /* 0 while NATS is down */
    uv_timer_t check;             /* lost cells, and forgotten instances' DOWN */
    bool closing;
    void (*done)(void *);
    void *done_arg;
    /* serve: the local cell as a cell for whoever leads */
    bool serve;
    int beat_ms;
    char host[64];
    uv_timer_t beat, flush;
    json_t *lines; /* served instances' output waiting for the next batch */
    size_t line_bytes;
    struct cellc__pending *pending; /* starts asked whose droplet is on its way */
    int (*local_droplet)(void *ctx, const struct cell_launch *l, char **dir, char *err,
                         size_t errsize);
    void *local_droplet_ctx;
    struct cell_droplets *droplets; /* collect_droplets: what was brought here, collected */
    int64_t droplet_grace_ms;
    uv_timer_t collect;
};

/* A start a leader asked of the local cell, waiting for its droplet (local_droplet). */
struct cellc__pending {
    struct cell_launch_doc d;
    int64_t since_ms;
    struct cellc__pending *next;
};

/* ---- client.c ---------------------------------------------------------------------------- */

struct cellc_inst *cellc__find(struct cellc *c, const char *guid);
/* Forgets gone (withdrawing its grant when it was the last of its droplet there) and frees it. */
void cellc__inst_free(struct cellc *c, struct cellc_inst *gone);
/* A cellc_inst for inst, an instance of the local executor. */
struct cellc_inst *cellc__wrap_local(struct cellc *c, struct instance *inst, const char *app_guid,
                                     const char *type, int index, const char *droplet);
/* The local cell's folder for l's droplet (local_droplet): 0 with *dir, -EINPROGRESS, or an
 * error with err. */
int cellc__local_dir(struct cellc *c, const struct cell_launch *l, char **dir, char *err,
                     size_t errsize);

/* ---- serve.c: the local cell as a cell for whoever leads --------------------------------- */

/* What a served instance does, said on NATS. */
void cellc__serve_state(struct cellc *c, struct cellc_inst *i, enum instance_state state,
                        const struct instance_exit *ex);
void cellc__serve_output(struct cellc *c, struct cellc_inst *i, int stream, const char *line,
                         size_t len);
void cellc__serve_readiness(struct cellc *c, struct cellc_inst *i, bool ready);
void cellc__say_state(struct cellc *c, const char *guid, const char *state, const char *addr,
                      const struct instance_exit *ex, const char *why);
/* The local cell's heartbeat, now; and the timers' callbacks. */
void cellc__beat(struct cellc *c);
void cellc__on_beat(uv_timer_t *t);
void cellc__on_flush(uv_timer_t *t);
void cellc__flush_output(struct cellc *c);
void cellc__pending_free(struct cellc__pending *p);
/* A request on the local cell's skiff.cell.<id>.req. */
void cellc__serve_request(struct cellc *c, const char *data, size_t len);
/* What a predecessor on this home left running, taken over as served instances (not leading:
 * for whoever leads); returns how many. */
int cellc__serve_adopt(struct cellc *c);

#endif
