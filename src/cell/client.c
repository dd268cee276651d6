/* cellc: the local cell and the remote ones behind one interface (client.h). */
#include "cell/client.h"
#include "cell/client_internal.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#define CELLC__CHECK_MS 250
#define CELLC__SETTLE_MS 2000          /* a heartbeat (1 s) and a margin, after leading began */
#define CELLC__SETTLE_GIVE_UP_MS 10000 /* NATS still down: converge without the cells' word */
#define CELLC__MISSING_MS 3000         /* launched this long ago and not in a heartbeat: gone */
/* a stop sent this long ago whose instance a heartbeat still lists as starting or running:
 * the request was lost (NATS core delivers at most once; a cell that reconnects misses what
 * came meanwhile), so it is sent again */
#define CELLC__STOP_AGAIN_MS 2000

/* ---- instances ---------------------------------------------------------------------------- */

static struct cellc_inst *cellc__inst_new(struct cellc *c, struct cellc__cell *cell,
                                          const char *guid, const char *app_guid, const char *type,
                                          int index, const char *droplet)
{
    struct cellc_inst *i = xcalloc(1, sizeof *i);
    i->c = c;
    i->cell = cell;
    snprintf(i->guid, sizeof i->guid, "%s", guid ? guid : "");
    snprintf(i->app_guid, sizeof i->app_guid, "%s", app_guid ? app_guid : "");
    snprintf(i->type, sizeof i->type, "%s", type ? type : "");
    snprintf(i->droplet, sizeof i->droplet, "%s", droplet ? droplet : "");
    i->index = index;
    i->state = INSTANCE_STARTING;
    i->since_ms = time_now_ms();
    i->launched_mono = time_mono_ms();
    i->next = c->insts;
    c->insts = i;
    return i;
}

/* The cell's grant for gone's droplet is withdrawn when gone was the last instance of that
 * droplet there (running, starting or stopping); a leader that steps down leaves the grants
 * to the next one. */
static void cellc__withdraw_if_last(struct cellc *c, const struct cellc_inst *gone)
{
    if (!gone->cell || !gone->digest[0] || !c->withdraw || !c->leading || c->closing)
        return;
    for (const struct cellc_inst *i = c->insts; i; i = i->next)
        if (i != gone && i->cell == gone->cell && !strcmp(i->digest, gone->digest))
            return;
    c->withdraw(c->grant_ctx, gone->cell->id, gone->digest);
}

void cellc__inst_free(struct cellc *c, struct cellc_inst *gone)
{
    cellc__withdraw_if_last(c, gone);
    for (struct cellc_inst **pp = &c->insts; *pp; pp = &(*pp)->next)
        if (*pp == gone) {
            *pp = gone->next;
            break;
        }
    free(gone->dir);
    free(gone);
}

static void cellc__on_collect(uv_timer_t *t)
{
    struct cellc *c = t->data;
    cell_droplets_collect(c->droplets);
}

/* A local instance ended: its droplet was used until now, and goes once unused for the grace
 * (checked then: another instance may have started from it meanwhile). */
static void cellc__droplet_released(struct cellc *c, const struct cellc_inst *i)
{
    if (!c->droplets || c->closing)
        return;
    if (i->dir)
        utimensat(AT_FDCWD, i->dir, NULL, 0);
    uv_timer_start(&c->collect, cellc__on_collect, (uint64_t)c->droplet_grace_ms + 100, 0);
}

/* What a collection never removes: the folders the local executor's instances run from. */
static char **cellc__droplets_in_use(void *ctx)
{
    struct cellc *c = ctx;
    return executor_app_dirs(c->ex);
}

/* Its final state told, then it is freed. */
static void cellc__final(struct cellc *c, struct cellc_inst *i, enum instance_state state,
                         const struct instance_exit *ex)
{
    i->state = state;
    if (c->cb.on_state)
        c->cb.on_state(c->cb.ctx, i, state, ex);
    cellc__inst_free(c, i);
}

struct cellc_inst *cellc__find(struct cellc *c, const char *guid)
{
    for (struct cellc_inst *i = c->insts; i; i = i->next)
        if (!strcmp(i->guid, guid))
            return i;
    return NULL;
}

/* ---- the local cell: the executor's callbacks ---------------------------------------------- */

static void cellc__local_output(void *ctx, struct instance *inst, int stream, const char *line,
                                size_t len)
{
    struct cellc *c = ctx;
    struct cellc_inst *i = instance_user_data(inst);
    if (i && i->served)
        cellc__serve_output(c, i, stream, line, len);
    else if (i && c->cb.on_output)
        c->cb.on_output(c->cb.ctx, i, stream, line, len);
}

static void cellc__local_state(void *ctx, struct instance *inst, enum instance_state state,
                               const struct instance_exit *ex)
{
    struct cellc *c = ctx;
    struct cellc_inst *i = instance_user_data(inst);
    if (!i)
        return;
    if (state == INSTANCE_DOWN || state == INSTANCE_CRASHED) {
        cellc__droplet_released(c, i);
        cell_launch_droplet_forget(c->home, i->guid);
    }
    if (i->served) {
        cellc__serve_state(c, i, state, ex);
        if (state == INSTANCE_DOWN || state == INSTANCE_CRASHED) {
            instance_set_user_data(inst, NULL);
            cellc__inst_free(c, i);
        } else {
            i->state = state;
        }
        return;
    }
    if (state == INSTANCE_DOWN || state == INSTANCE_CRASHED) {
        instance_set_user_data(inst, NULL);
        i->local = NULL; /* the executor frees it when we return */
        cellc__final(c, i, state, ex);
        return;
    }
    i->state = state;
    if (c->cb.on_state)
        c->cb.on_state(c->cb.ctx, i, state, ex);
}

static void cellc__local_readiness(void *ctx, struct instance *inst, bool ready)
{
    struct cellc *c = ctx;
    struct cellc_inst *i = instance_user_data(inst);
    if (i && i->served)
        cellc__serve_readiness(c, i, ready);
    else if (i && c->cb.on_readiness)
        c->cb.on_readiness(c->cb.ctx, i, ready);
}

struct cellc_inst *cellc__wrap_local(struct cellc *c, struct instance *inst, const char *app_guid,
                                     const char *type, int index, const char *droplet)
{
    struct cellc_inst *i =
        cellc__inst_new(c, NULL, instance_guid(inst), app_guid, type, index, droplet);
    i->local = inst;
    i->port = instance_port(inst);
    struct instance_endpoint ep;
    instance_endpoint(inst, &ep);
    snprintf(i->addr, sizeof i->addr, "%s", ep.addr);
    instance_set_user_data(inst, i);
    return i;
}

struct cellc__adopting {
    struct cellc *c;
    int n;
};

static void cellc__local_found(void *ctx, struct instance *inst, const struct instance_spec *sp)
{
    struct cellc__adopting *a = ctx;
    char *droplet = cell_launch_droplet_read(a->c->home, sp->instance_guid);
    struct cellc_inst *i =
        cellc__wrap_local(a->c, inst, sp->app_guid, sp->process_type, sp->index, droplet);
    free(droplet);
    i->state = instance_state(inst);
    i->port = sp->port;
    size_t n = sp->app_dir ? strlen(sp->app_dir) : 0;
    if (n > 4 && !strcmp(sp->app_dir + n - 4, "/app"))
        i->dir = xstrndup(sp->app_dir, n - 4);
    a->n++;
    struct cellc_found f = {.app_guid = sp->app_guid,
                            .process_type = sp->process_type,
                            .index = sp->index,
                            .instance_guid = sp->instance_guid,
                            .droplet_guid = i->droplet[0] ? i->droplet : NULL,
                            .app_dir = sp->app_dir,
                            .port = sp->port,
                            .readiness = sp->readiness};
    a->c->cb.on_found(a->c->cb.ctx, i, &f);
}

/* The instances started here for the skiffd that led before: this one's now (leading). */
static int cellc__adopt_served(struct cellc *c)
{
    int n = 0;
    for (struct cellc_inst *i = c->insts, *next; i; i = next) {
        next = i->next;
        if (!i->served || !i->local || i->user)
            continue;
        i->served = false;
        n++;
        /* one left by a skiffd that wrote no droplet note is known by its folder */
        char *app_dir = i->dir ? xasprintf("%s/app", i->dir) : NULL;
        struct cellc_found f = {.app_guid = i->app_guid,
                                .process_type = i->type,
                                .index = i->index,
                                .instance_guid = i->guid,
                                .droplet_guid = i->droplet[0] ? i->droplet : NULL,
                                .app_dir = app_dir,
                                .port = i->port,
                                .readiness = i->readiness};
        c->cb.on_found(c->cb.ctx, i, &f);
        free(app_dir);
        /* its readiness was told to the leader before: tell it again to this one */
        if (i->readiness && i->ready_ok && i->user && c->cb.on_readiness)
            c->cb.on_readiness(c->cb.ctx, i, true);
    }
    return n;
}

int cellc_adopt_local(struct cellc *c)
{
    struct cellc__adopting a = {c, 0};
    if (!c->adopted)
        executor_adopt(c->ex, cellc__local_found, &a);
    c->adopted = true;
    if (c->leading)
        a.n += cellc__adopt_served(c);
    return a.n;
}

/* ---- remote cells: what they say ----------------------------------------------------------- */

static void cellc__send(struct cellc *c, struct cellc__cell *cell, json_t *msg)
{
    json_object_set_new(msg, "v", json_integer(1));
    char *text = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    char subject[64];
    snprintf(subject, sizeof subject, "skiff.cell.%s.req", cell->id);
    int rc = text && c->nc ? natsconn_publish(c->nc, subject, NULL, text, strlen(text)) : -ENOTCONN;
    if (rc < 0)
        log_warning("[CELLS] cannot send a request to cell %s: %s", cell->id, skiff_strerror(rc));
    free(text);
}

static void cellc__send_stop(struct cellc *c, struct cellc__cell *cell, const char *guid,
                             const char *reason)
{
    cellc__send(c, cell, json_pack("{s:s,s:s,s:s}", "op", "stop", "guid", guid, "reason", reason));
}

static struct cellc__cell *cellc__cell(struct cellc *c, const char *id, bool create)
{
    for (struct cellc__cell *cell = c->cells; cell; cell = cell->next)
        if (!strcmp(cell->id, id))
            return cell;
    if (!create)
        return NULL;
    struct cellc__cell *cell = xcalloc(1, sizeof *cell);
    snprintf(cell->id, sizeof cell->id, "%s", id);
    cell->next = c->cells;
    c->cells = cell;
    return cell;
}

static bool cellc__addr_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n < 3 || n > 63 || !strchr(s, ':'))
        return false;
    for (size_t k = 0; k < n; k++)
        if (!isalnum((unsigned char)s[k]) && !strchr(".:[]-", s[k]))
            return false;
    return true;
}

static enum instance_state cellc__state_named(const char *name, bool *ok)
{
    static const enum instance_state all[] = {INSTANCE_STARTING, INSTANCE_RUNNING,
                                              INSTANCE_STOPPING, INSTANCE_DOWN, INSTANCE_CRASHED};
    for (size_t k = 0; k < ARRAY_SIZE(all); k++)
        if (name && !strcmp(name, instance_state_name(all[k]))) {
            *ok = true;
            return all[k];
        }
    *ok = false;
    return INSTANCE_STARTING;
}

static void cellc__running(struct cellc *c, struct cellc_inst *i)
{
    if (i->state != INSTANCE_STARTING || i->forgotten)
        return;
    i->state = INSTANCE_RUNNING;
    i->since_ms = time_now_ms();
    if (c->cb.on_state)
        c->cb.on_state(c->cb.ctx, i, INSTANCE_RUNNING, NULL);
}

/* A heartbeat's instance nobody here knows: offered to the scheduler (leading only). */
static void cellc__found_remote(struct cellc *c, struct cellc__cell *cell, json_t *e)
{
    const char *guid = json_string_value(json_object_get(e, "guid"));
    const char *app = json_string_value(json_object_get(e, "app_guid"));
    const char *type = json_string_value(json_object_get(e, "process_type"));
    const char *droplet = json_string_value(json_object_get(e, "droplet_guid"));
    const char *addr = json_string_value(json_object_get(e, "addr"));
    bool ok = false;
    enum instance_state st =
        cellc__state_named(json_string_value(json_object_get(e, "state")), &ok);
    if (!guid || strlen(guid) != 36 || !app || !type || !ok || !cellc__addr_valid(addr) ||
        st == INSTANCE_DOWN || st == INSTANCE_CRASHED || st == INSTANCE_STOPPING)
        return;
    int index = (int)json_integer_value(json_object_get(e, "index"));
    struct cellc_inst *i = cellc__inst_new(c, cell, guid, app, type, index, droplet);
    snprintf(i->addr, sizeof i->addr, "%s", addr);
    i->state = st;
    i->since_ms = json_integer_value(json_object_get(e, "since_ms"));
    i->memory = (uint64_t)json_integer_value(json_object_get(e, "memory_bytes"));
    struct cellc_found f = {.app_guid = i->app_guid,
                            .process_type = i->type,
                            .index = index,
                            .instance_guid = i->guid,
                            .droplet_guid = droplet,
                            .port = 0};
    c->cb.on_found(c->cb.ctx, i, &f);
}

static void cellc__heartbeat(struct cellc *c, struct cellc__cell *cell, json_t *m)
{
    const char *zone = json_string_value(json_object_get(m, "zone"));
    const char *host = json_string_value(json_object_get(m, "host"));
    snprintf(cell->zone, sizeof cell->zone, "%s", zone ? zone : "default");
    snprintf(cell->host, sizeof cell->host, "%s", host ? host : "");
    cell->capacity = (uint64_t)json_integer_value(json_object_get(m, "memory_capacity_bytes"));
    cell->used = (uint64_t)json_integer_value(json_object_get(m, "memory_used_bytes"));
    cell->interval_ms = (int)json_integer_value(json_object_get(m, "interval_ms"));
    cell->placed = 0;
    cell->beat_mono = time_mono_ms();
    cell->led = json_is_true(json_object_get(m, "leading"));
    const char *blobs = json_string_value(json_object_get(m, "blobs"));
    cell->reads_store = blobs && !strcmp(blobs, "store");
    if (cell->lost)
        log_info("[CELLS] cell %s (%s, zone %s) is back: the instances it runs that were "
                 "started elsewhere meanwhile are stopped there",
                 cell->id, cell->host, cell->zone);
    cell->lost = false;
    json_t *list = json_object_get(m, "instances");
    cell->instances = (int)json_array_size(list);
    /* not leading: a heartbeat's "leading" decides nothing here (anyone on the bus can send
     * one); whether another skiffd leads is the store's word (daemon/leader.h) */
    if (!c->leading)
        return;
    size_t k;
    json_t *e;
    json_array_foreach(list, k, e)
    {
        const char *guid = json_string_value(json_object_get(e, "guid"));
        if (!guid)
            continue;
        struct cellc_inst *i = cellc__find(c, guid);
        if (!i) {
            cellc__found_remote(c, cell, e);
            continue;
        }
        if (i->cell != cell)
            continue;
        i->memory = (uint64_t)json_integer_value(json_object_get(e, "memory_bytes"));
        const char *st = json_string_value(json_object_get(e, "state"));
        bool up = st && (!strcmp(st, "RUNNING") || !strcmp(st, "STARTING"));
        if (up && i->state == INSTANCE_STOPPING && !i->forgotten &&
            time_mono_ms() - i->stop_sent_mono >= CELLC__STOP_AGAIN_MS) {
            log_info("[CELLS] cell %s still runs instance %s after it was asked to stop it: "
                     "asking again",
                     cell->id, i->guid);
            cellc__send_stop(c, cell, i->guid, "the leader no longer wants it here");
            i->stop_sent_mono = time_mono_ms();
        }
        if (st && !strcmp(st, "RUNNING"))
            cellc__running(c, i); /* its state report was lost */
    }
    /* what this cell should run and does not list (its shim was killed, say): gone */
    int64_t now = time_mono_ms();
    for (struct cellc_inst *i = c->insts, *next; i; i = next) {
        next = i->next;
        if (i->cell != cell || i->forgotten || now - i->launched_mono < CELLC__MISSING_MS)
            continue;
        bool listed = false;
        json_array_foreach(list, k, e)
        {
            const char *guid = json_string_value(json_object_get(e, "guid"));
            if (guid && !strcmp(guid, i->guid))
                listed = true;
        }
        if (!listed) {
            struct instance_exit ex = {.exit_status = -1, .reason = "its cell no longer runs it"};
            cellc__final(c, i, INSTANCE_CRASHED, &ex);
        }
    }
}

static void cellc__state(struct cellc *c, struct cellc__cell *cell, json_t *m)
{
    const char *guid = json_string_value(json_object_get(m, "guid"));
    struct cellc_inst *i = guid ? cellc__find(c, guid) : NULL;
    if (!i || i->cell != cell || i->forgotten)
        return; /* a cell speaks only of its own instances */
    bool ok = false;
    enum instance_state st =
        cellc__state_named(json_string_value(json_object_get(m, "state")), &ok);
    const char *addr = json_string_value(json_object_get(m, "addr"));
    if (addr && cellc__addr_valid(addr))
        snprintf(i->addr, sizeof i->addr, "%s", addr);
    if (!ok)
        return;
    if (st == INSTANCE_RUNNING) {
        cellc__running(c, i);
    } else if (st == INSTANCE_DOWN || st == INSTANCE_CRASHED) {
        const char *reason = json_string_value(json_object_get(m, "reason"));
        char why[256];
        snprintf(why, sizeof why, "%s", reason ? reason : "exited");
        json_t *status = json_object_get(m, "exit_status");
        struct instance_exit ex = {.exit_status = status ? (int)json_integer_value(status) : -1,
                                   .term_signal =
                                       (int)json_integer_value(json_object_get(m, "term_signal")),
                                   .reason = why};
        cellc__final(c, i, st, &ex);
    }
}

static void cellc__output(struct cellc *c, struct cellc__cell *cell, json_t *m)
{
    size_t k;
    json_t *e;
    json_array_foreach(json_object_get(m, "lines"), k, e)
    {
        const char *guid = json_string_value(json_object_get(e, "guid"));
        const char *line = json_string_value(json_object_get(e, "line"));
        struct cellc_inst *i = guid ? cellc__find(c, guid) : NULL;
        if (!i || i->cell != cell || !line || !c->cb.on_output)
            continue;
        int stream = (int)json_integer_value(json_object_get(e, "stream"));
        c->cb.on_output(c->cb.ctx, i, stream, line, json_string_length(json_object_get(e, "line")));
    }
}

static void cellc__on_nats(void *ctx, bool connected)
{
    struct cellc *c = ctx;
    c->connected_since_mono = connected ? time_mono_ms() : 0;
    if (connected && c->serve && !c->closing)
        cellc__beat(c); /* heard at once, not a heartbeat later */
}

static void cellc__on_msg(void *ctx, const char *subject, const char *reply, const char *data,
                          size_t len)
{
    struct cellc *c = ctx;
    char id[33];
    /* skiff.cell.<id>.up */
    if (sscanf(subject, "skiff.cell.%32[0-9a-f]", id) != 1 || strlen(id) != 32)
        return;
    const char *kind = subject + strlen("skiff.cell.") + 32;
    if (!strcmp(kind, ".req")) {
        if (c->serve && !strcmp(id, c->local_id))
            cellc__serve_request(c, data, len);
        return;
    }
    if (strcmp(kind, ".up") || !strcmp(id, c->local_id))
        return; /* the local cell's own heartbeat comes back too */
    json_t *m = json_loadb(data, len, 0, NULL);
    const char *type = json_string_value(json_object_get(m, "type"));
    if (type && json_integer_value(json_object_get(m, "v")) == 1) {
        struct cellc__cell *cell = cellc__cell(c, id, !strcmp(type, "heartbeat"));
        if (cell && !strcmp(type, "heartbeat"))
            cellc__heartbeat(c, cell, m);
        else if (cell && !strcmp(type, "state"))
            cellc__state(c, cell, m);
        else if (cell && !strcmp(type, "output"))
            cellc__output(c, cell, m);
        else if (cell && !strcmp(type, "readiness")) {
            const char *guid = json_string_value(json_object_get(m, "guid"));
            struct cellc_inst *i = guid ? cellc__find(c, guid) : NULL;
            if (i && i->cell == cell && c->cb.on_readiness)
                c->cb.on_readiness(c->cb.ctx, i, json_is_true(json_object_get(m, "ready")));
        }
    }
    json_decref(m);
}

/* The cell is lost: its instances are crashed (started elsewhere). */
static void cellc__lose(struct cellc *c, struct cellc__cell *cell, const char *because)
{
    cell->lost = true;
    int n = 0;
    char why[160];
    snprintf(why, sizeof why, "its cell %.8s was lost (%s)", cell->id, because);
    for (struct cellc_inst *i = c->insts, *next; i; i = next) {
        next = i->next;
        if (i->cell != cell)
            continue;
        n++;
        struct instance_exit ex = {.exit_status = -1, .reason = why};
        cellc__final(c, i, i->forgotten ? INSTANCE_DOWN : INSTANCE_CRASHED, &ex);
    }
    log_warning("[CELLS] cell %s (%s, zone %s) is lost: %s; its %d instances are started "
                "elsewhere",
                cell->id, cell->host, cell->zone, because, n);
}

/* Lost cells' instances are crashed (started elsewhere); forgotten ones reported DOWN. */
static void cellc__on_check(uv_timer_t *t)
{
    struct cellc *c = t->data;
    int64_t now = time_mono_ms();
    for (struct cellc__cell *cell = c->cells; cell; cell = cell->next) {
        if (cell->lost || now - cell->beat_mono <= c->lost_ms)
            continue;
        char because[64];
        snprintf(because, sizeof because, "no heartbeat for %d ms", c->lost_ms);
        cellc__lose(c, cell, because);
    }
    for (struct cellc_inst *i = c->insts, *next; i; i = next) {
        next = i->next;
        if (i->forgotten)
            cellc__final(c, i, INSTANCE_DOWN, NULL);
    }
}

/* ---- placing and starting ------------------------------------------------------------------ */

void cellc_local_usage(const struct cellc *c, int *instances, uint64_t *memory_bytes)
{
    int n = 0;
    uint64_t used = 0;
    for (const struct cellc_inst *i = c->insts; i; i = i->next)
        if (!i->cell && i->local) {
            double cpu;
            uint64_t mem = 0;
            instance_usage(i->local, &cpu, &mem);
            used += mem;
            n++;
        }
    if (instances)
        *instances = n;
    if (memory_bytes)
        *memory_bytes = used;
}

static uint64_t cellc__local_used(const struct cellc *c)
{
    uint64_t used = 0;
    cellc_local_usage(c, NULL, &used);
    return used;
}

/* The one place the local cell finds a launch's droplet folder: local_droplet (brought here
 * from the blob store, an image's layers with it), else the launch's own path. */
int cellc__local_dir(struct cellc *c, const struct cell_launch *l, char **dir, char *err,
                     size_t errsize)
{
    int rc;
    if (c->local_droplet) {
        rc = c->local_droplet(c->local_droplet_ctx, l, dir, err, errsize);
    } else {
        struct cell_launch here = *l;
        here.blob_urls = NULL;
        rc = cell_droplet_get(NULL, &here, NULL, NULL, dir, err, errsize);
    }
    if (rc == 0)
        utimensat(AT_FDCWD, *dir, NULL, 0); /* used now: a collection counts its grace from here */
    return rc;
}

/* How many instances of app/type run on the cell (NULL: the local one). */
static int cellc__count(const struct cellc *c, const struct cellc__cell *cell, const char *app,
                        const char *type)
{
    int n = 0;
    for (const struct cellc_inst *i = c->insts; i; i = i->next)
        if (i->cell == cell && !i->forgotten && !strcmp(i->app_guid, app) && !strcmp(i->type, type))
            n++;
    return n;
}

/* Lets cell_id read the droplet's blob and the further blobs it lists (an image's config and
 * layers, space-separated), by one grant written before the start is sent; a cell's token
 * reads nothing else. */
static int cellc__grant(struct cellc *c, const char *cell_id, const char *digest, const char *blobs,
                        char *err, size_t errsize)
{
    if (!c->grant)
        return 0;
    int rc = c->grant(c->grant_ctx, cell_id, digest, blobs);
    if (rc < 0)
        snprintf(err, errsize, "cannot let cell %s read droplet %s%s: %s", cell_id, digest,
                 rc == -EINVAL ? " (it lists a blob that is no digest)" : "", skiff_strerror(rc));
    return rc;
}

int cellc_launch(struct cellc *c, const struct cell_launch *l, uint64_t memory_bytes,
                 struct cellc_inst **out, char addr[64], char *err, size_t errsize)
{
    size_t n = 1;
    for (struct cellc__cell *cell = c->cells; cell; cell = cell->next)
        n++;
    struct cell_candidate *cands = xcalloc(n, sizeof *cands);
    struct cellc__cell **cells = xcalloc(n, sizeof *cells);
    size_t k = 0;
    if (c->local_cell) {
        uint64_t used = cellc__local_used(c);
        cands[k] = (struct cell_candidate){
            .id = c->local_id,
            .zone = c->local_zone,
            .up = true,
            .free_bytes = c->local_capacity > used ? c->local_capacity - used : 0,
            .process_count = cellc__count(c, NULL, l->app_guid, l->process_type)};
        cells[k++] = NULL;
    }
    for (struct cellc__cell *cell = c->cells; cell && c->leading; cell = cell->next) {
        uint64_t taken = cell->used + cell->placed;
        cands[k] = (struct cell_candidate){
            .id = cell->id,
            .zone = cell->zone,
            .up = !cell->lost,
            .free_bytes = cell->capacity > taken ? cell->capacity - taken : 0,
            .process_count = cellc__count(c, cell, l->app_guid, l->process_type)};
        cells[k++] = cell;
    }
    for (size_t a = 0; a < k; a++)
        for (size_t b = 0; b < k; b++)
            if (!strcmp(cands[a].zone, cands[b].zone))
                cands[a].zone_process_count += cands[b].process_count;
    int pick = cell_place(cands, k, memory_bytes);
    struct cellc__cell *cell = pick >= 0 ? cells[pick] : NULL;
    free(cands);
    free(cells);
    if (pick < 0) {
        snprintf(err, errsize, "no cell has %llu MB free (%zu cells known)",
                 (unsigned long long)(memory_bytes >> 20), k);
        return -EAGAIN;
    }
    if (!cell) {
        char *dir = NULL;
        struct instance *inst = NULL;
        int rc = cellc__local_dir(c, l, &dir, err, errsize);
        if (rc == 0)
            rc = cell_launch_start(c->ex, c->home, l, dir, &inst, addr, err, errsize);
        if (rc < 0) {
            free(dir);
            return rc;
        }
        *out = cellc__wrap_local(c, inst, l->app_guid, l->process_type, l->index, l->droplet_guid);
        (*out)->dir = dir;
        return 0;
    }
    struct cell_launch sent = *l;
    /* a skiffd --role all reads it from the blob store it shares: no token, no grant */
    if (sent.droplet_digest && !cell->reads_store) { /* made before blobs: read at its path */
        sent.blob_urls = (const char *const *)c->blob_urls;
        int rc = cellc__grant(c, cell->id, sent.droplet_digest, sent.droplet_blobs, err, errsize);
        if (rc < 0)
            return rc;
    }
    struct cellc_inst *i = cellc__inst_new(c, cell, l->instance_guid, l->app_guid, l->process_type,
                                           l->index, l->droplet_guid);
    if (sent.droplet_digest && !cell->reads_store)
        snprintf(i->digest, sizeof i->digest, "%s", sent.droplet_digest);
    cell->placed += memory_bytes;
    cellc__send(c, cell,
                json_pack("{s:s,s:o}", "op", "start", "launch", cell_launch_to_json(&sent)));
    addr[0] = '\0';
    *out = i;
    return 0;
}

void cellc_stop(struct cellc_inst *i)
{
    struct cellc *c = i->c;
    if (!i->cell) {
        if (i->local)
            executor_stop(i->local);
        return;
    }
    if (i->forgotten)
        return;
    if (!c->leading || c->closing) {
        /* the cell keeps it running for the controller that leads next */
        i->forgotten = true;
        if (!c->closing)
            uv_timer_start(&c->check, cellc__on_check, 0, CELLC__CHECK_MS);
        return;
    }
    if (i->state != INSTANCE_STOPPING) {
        cellc__send_stop(c, i->cell, i->guid, "the leader no longer wants it here");
        i->stop_sent_mono = time_mono_ms();
    }
    i->state = INSTANCE_STOPPING;
}

bool cellc_hand_over(struct cellc_inst *i, bool readiness, bool ready)
{
    struct cellc *c = i->c;
    if (i->cell || !i->local || !c->serve || c->leading || c->closing)
        return false;
    i->served = true;
    i->user = NULL;
    i->readiness = readiness;
    i->ready_ok = ready;
    uv_timer_start(&c->beat, cellc__on_beat, 0, (uint64_t)c->beat_ms); /* heard at once */
    return true;
}

/* ---- reading ------------------------------------------------------------------------------- */

void cellc_inst_info(const struct cellc_inst *i, struct cellc_inst_info *out)
{
    memset(out, 0, sizeof *out);
    out->host_uid = -1;
    if (!i)
        return;
    snprintf(out->cell, sizeof out->cell, "%s", i->cell ? i->cell->id : i->c->local_id);
    if (i->local) {
        struct instance_endpoint ep;
        instance_endpoint(i->local, &ep);
        out->state = instance_state(i->local);
        out->since_ms = instance_since_ms(i->local);
        instance_usage(i->local, &out->cpu, &out->memory_bytes);
        snprintf(out->addr, sizeof out->addr, "%s", ep.addr);
        out->port = ep.port;
        out->host_uid = instance_host_uid(i->local);
        out->warm_start = instance_started_warm(i->local);
        const char *rt = instance_warm_runtime(i->local);
        snprintf(out->warm_runtime, sizeof out->warm_runtime, "%s", rt ? rt : "");
        out->disk_full = instance_disk_usage(i->local, &out->disk_bytes, &out->disk_quota_bytes);
        return;
    }
    out->state = i->state;
    out->since_ms = i->since_ms;
    out->memory_bytes = i->memory;
    snprintf(out->addr, sizeof out->addr, "%s", i->addr);
    const char *colon = strrchr(i->addr, ':');
    out->port = colon ? atoi(colon + 1) : 0;
}

const char *cellc_inst_sidecar_name(const struct cellc_inst *i, size_t k)
{
    return i->local ? instance_sidecar_name(i->local, k) : NULL;
}

bool cellc_inst_local(const struct cellc_inst *i)
{
    return !i->cell;
}

void *cellc_inst_user_data(const struct cellc_inst *i)
{
    return i->user;
}

void cellc_inst_set_user_data(struct cellc_inst *i, void *data)
{
    i->user = data;
}

void cellc_inst_set_digest(struct cellc_inst *i, const char *digest)
{
    if (i->cell && digest && strlen(digest) < sizeof i->digest)
        snprintf(i->digest, sizeof i->digest, "%s", digest);
}

json_t *cellc_remote_cells(const struct cellc *c)
{
    json_t *a = json_array();
    int64_t now = time_mono_ms();
    for (const struct cellc__cell *cell = c->cells; cell; cell = cell->next) {
        if (cell->reads_store)
            continue; /* a skiffd on the store: listed by its heartbeat there (src/cells) */
        json_array_append_new(
            a, json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:i,s:I}", "id", cell->id, "host", cell->host,
                         "zone", cell->zone, "state", cell->lost ? "lost" : "up",
                         "memory_capacity_bytes", (json_int_t)cell->capacity, "memory_used_bytes",
                         (json_int_t)cell->used, "instances", cell->instances, "heartbeat_age_ms",
                         (json_int_t)(now - cell->beat_mono)));
    }
    return a;
}

/* ---- life ---------------------------------------------------------------------------------- */

int cellc_new(uv_loop_t *loop, const struct cellc_config *cfg, const struct cellc_callbacks *cb,
              struct cellc **out, char *err, size_t errsize)
{
    struct cellc *c = xcalloc(1, sizeof *c);
    c->loop = loop;
    c->cb = *cb;
    c->local_cell = cfg->local_cell;
    c->leading = true;
    c->leading_since_mono = time_mono_ms();
    snprintf(c->local_id, sizeof c->local_id, "%s", cfg->local_id ? cfg->local_id : "");
    snprintf(c->local_zone, sizeof c->local_zone, "%s",
             cfg->local_zone ? cfg->local_zone : "default");
    struct sysinfo si;
    c->local_capacity = cfg->local_memory_bytes ? cfg->local_memory_bytes
                        : sysinfo(&si) == 0     ? (uint64_t)si.totalram * si.mem_unit
                                                : 0;
    c->serve = cfg->serve && cfg->local_cell && cfg->nats_urls && *cfg->nats_urls;
    c->beat_ms = cfg->heartbeat_ms > 0 ? cfg->heartbeat_ms : CELL_HEARTBEAT_MS;
    c->local_droplet = cfg->local_droplet;
    c->local_droplet_ctx = cfg->local_droplet_ctx;
    c->lines = json_array();
    if (gethostname(c->host, sizeof c->host - 1) < 0)
        snprintf(c->host, sizeof c->host, "unknown");
    c->lost_ms = cfg->lost_ms > 0 ? cfg->lost_ms : CELLC_LOST_MS;
    c->home = xstrdup(cfg->home ? cfg->home : "");
    c->grant = cfg->grant;
    c->withdraw = cfg->withdraw;
    c->grant_ctx = cfg->grant_ctx;
    size_t n_urls = 0;
    while (cfg->blob_urls && cfg->blob_urls[n_urls])
        n_urls++;
    c->blob_urls = xcalloc(n_urls + 1, sizeof *c->blob_urls);
    for (size_t k = 0; k < n_urls; k++)
        c->blob_urls[k] = xstrdup(cfg->blob_urls[k]);
    int rc = 0;
    if (cfg->nats_urls && *cfg->nats_urls) {
        struct natsconn_config nc = {.urls = cfg->nats_urls,
                                     .name = "skiffd cells",
                                     .security = cfg->nats_security,
                                     .on_msg = cellc__on_msg,
                                     .on_state = cellc__on_nats,
                                     .ctx = c};
        rc = natsconn_open(loop, &nc, &c->nc, err, errsize);
        if (rc == 0 && (rc = natsconn_subscribe(c->nc, "skiff.cell.*.up")) < 0)
            snprintf(err, errsize, "cannot subscribe to skiff.cell.*.up: %s", skiff_strerror(rc));
        char req[64];
        snprintf(req, sizeof req, "skiff.cell.%s.req", c->local_id);
        if (rc == 0 && c->serve && (rc = natsconn_subscribe(c->nc, req)) < 0)
            snprintf(err, errsize, "cannot subscribe to %s: %s", req, skiff_strerror(rc));
    }
    struct executor_config ec = *cfg->executor;
    ec.on_readiness = cellc__local_readiness;
    if (rc == 0 &&
        (rc = executor_new(loop, &ec, cellc__local_output, cellc__local_state, c, &c->ex)) < 0)
        snprintf(err, errsize, "cannot start the executor: %s", skiff_strerror(rc));
    if (rc < 0) {
        if (c->nc)
            natsconn_close(c->nc);
        strv_free(c->blob_urls);
        json_decref(c->lines);
        free(c->home);
        free(c);
        return rc;
    }
    uv_timer_init(loop, &c->check);
    uv_timer_init(loop, &c->beat);
    uv_timer_init(loop, &c->flush);
    uv_timer_init(loop, &c->collect);
    c->check.data = c->beat.data = c->flush.data = c->collect.data = c;
    if (cfg->collect_droplets && cfg->local_cell) {
        c->droplet_grace_ms = cfg->droplet_grace_ms > 0 ? cfg->droplet_grace_ms : 0;
        struct cell_droplets_config dc = {.home = c->home,
                                          .cell_id = c->local_id,
                                          .collect_unused = true,
                                          .unused_grace_ms = c->droplet_grace_ms,
                                          .in_use = cellc__droplets_in_use,
                                          .in_use_ctx = c};
        if (cell_droplets_new(loop, &dc, &c->droplets) < 0)
            log_warning("the droplets brought to %s/blobs/droplets cannot be collected: the "
                        "folder cannot be made",
                        c->home);
        else /* what a previous skiffd on this home left unused */
            uv_timer_start(&c->collect, cellc__on_collect, (uint64_t)c->droplet_grace_ms, 0);
    }
    if (c->nc)
        uv_timer_start(&c->check, cellc__on_check, CELLC__CHECK_MS, CELLC__CHECK_MS);
    if (c->serve) {
        /* before the first heartbeat, so that the leader never hears of a cell without them */
        int kept = cellc__serve_adopt(c);
        if (kept)
            log_info("[CELL] %d instances left running by the last skiffd on this home are kept "
                     "for whoever leads",
                     kept);
        uv_timer_start(&c->beat, cellc__on_beat, 0, (uint64_t)c->beat_ms);
    }
    *out = c;
    return 0;
}

struct executor *cellc_executor(struct cellc *c)
{
    return c->ex;
}

void cellc_set_leading(struct cellc *c, bool leading)
{
    bool began = leading && !c->leading;
    if (began)
        c->leading_since_mono = time_mono_ms();
    bool ended = !leading && c->leading;
    c->leading = leading;
    if (ended && c->serve && !c->closing)
        uv_timer_start(&c->beat, cellc__on_beat, 0, (uint64_t)c->beat_ms); /* heard at once */
    if (!began)
        return;
    /* starts the last leader asked for and that wait for their droplet: this one decides */
    while (c->pending) {
        struct cellc__pending *p = c->pending;
        c->pending = p->next;
        cellc__say_state(c, p->d.l.instance_guid, "DOWN", NULL, NULL, "its leader changed");
        cellc__pending_free(p);
    }
    /* The lock came here because the last leader's session ended: dead, or stepping down
     * (then it stops its instances). Either way nothing more is placed there before it
     * beats again as a follower. */
    for (struct cellc__cell *cell = c->cells; cell; cell = cell->next)
        if (cell->led && !cell->lost)
            cellc__lose(c, cell, "it led, and this skiffd leads now");
    if (c->serve)
        cellc__beat(c); /* the others hear at once who leads */
}

int cellc_settle_ms(const struct cellc *c)
{
    if (!c->nc)
        return 0;
    int64_t now = time_mono_ms();
    /* heard from NATS for CELLC__SETTLE_MS while leading; without NATS, converge anyway once
     * the cells could not have answered (CELLC__SETTLE_GIVE_UP_MS) */
    if (!c->connected_since_mono)
        return now - c->leading_since_mono >= CELLC__SETTLE_GIVE_UP_MS ? 0 : CELLC__CHECK_MS;
    int64_t from = c->leading_since_mono > c->connected_since_mono ? c->leading_since_mono
                                                                   : c->connected_since_mono;
    int64_t left = from + CELLC__SETTLE_MS - now;
    return left > 0 ? (int)left : 0;
}

static void cellc__check_closed(uv_handle_t *h)
{
    struct cellc *c = h->data;
    if (c->done)
        c->done(c->done_arg);
}

static void cellc__executor_down(void *arg)
{
    struct cellc *c = arg;
    cellc__flush_output(c);
    if (c->nc)
        natsconn_close(c->nc);
    c->nc = NULL;
    uv_close((uv_handle_t *)&c->beat, NULL);
    uv_close((uv_handle_t *)&c->flush, NULL);
    uv_close((uv_handle_t *)&c->collect, NULL);
    uv_close((uv_handle_t *)&c->check, cellc__check_closed);
}

void cellc_shutdown(struct cellc *c, void (*done)(void *arg), void *arg)
{
    c->closing = true;
    c->done = done;
    c->done_arg = arg;
    uv_timer_stop(&c->check);
    uv_timer_stop(&c->beat);
    uv_timer_stop(&c->collect);
    /* what runs for another leader is its: the next skiffd on this home takes it over */
    int kept = 0;
    for (struct cellc_inst *i = c->insts; i; i = i->next)
        if (i->served && i->local && !c->leading &&
            instance_state(i->local) != INSTANCE_STOPPING) { /* one asked to stop ends */
            executor_let_go(i->local);
            i->local = NULL;
            kept++;
        }
    if (kept)
        log_info("[CELL] %d instances run for the leader keep running for the next skiffd on "
                 "this home",
                 kept);
    executor_shutdown(c->ex, cellc__executor_down, c);
}

void cellc_detach(struct cellc *c, void (*done)(void *arg), void *arg)
{
    c->closing = true;
    c->done = done;
    c->done_arg = arg;
    uv_timer_stop(&c->check);
    uv_timer_stop(&c->beat);
    uv_timer_stop(&c->collect);
    executor_detach(c->ex, cellc__executor_down, c);
}

void cellc_free(struct cellc *c)
{
    if (!c)
        return;
    executor_free(c->ex);
    while (c->insts) {
        struct cellc_inst *i = c->insts;
        c->insts = i->next;
        free(i->dir);
        free(i);
    }
    while (c->cells) {
        struct cellc__cell *cell = c->cells;
        c->cells = cell->next;
        free(cell);
    }
    while (c->pending) {
        struct cellc__pending *p = c->pending;
        c->pending = p->next;
        cellc__pending_free(p);
    }
    json_decref(c->lines);
    cell_droplets_free(c->droplets);
    strv_free(c->blob_urls);
    free(c->home);
    free(c);
}
