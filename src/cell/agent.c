/* cell: the cell agent, skiffd --role cell (cell.h, docs/bus.md "Cells").
 *
 * Subjects: requests come on skiff.cell.<id>.req (start, stop), everything the cell says goes
 * out on skiff.cell.<id>.up (heartbeat, state, readiness, output), so that NATS permissions
 * can give a cell exactly its own two subjects. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include "cell/cell.h"
#include "cells/cells.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "container/container.h"
#include "images/images.h"

#define CELL__OUTPUT_BYTES (256 * 1024) /* a batch stays well under NATS's 1 MB payload */

struct cell__inst {
    char guid[37], app_guid[37], droplet[37];
    char type[64];
    char addr[64];
    int index;
    bool image; /* it mounts an image's layers */
    struct instance *inst;
    struct cell__inst *next;
};

/* A start waiting for its droplet to be fetched (cell_droplet_get), then for an image's layers
 * (cell_layers_get). */
struct cell__pending {
    struct cell_agent *a;
    struct cell_launch_doc d;
    char *dir;    /* the droplet's folder, once here */
    bool stopped; /* asked to stop meanwhile: said DOWN, never started */
    int64_t since_ms;
    struct cell__pending *next;
};

struct cell_agent {
    uv_loop_t *loop;
    char id[CELLS_ID_LEN + 1];
    char host[256];
    char *zone;
    char *home;
    uint64_t capacity;
    int heartbeat_ms;
    struct executor *ex;
    struct natsconn *nc;
    char *subject_req, *subject_up;
    uv_timer_t beat, flush;
    json_t *lines; /* output waiting for the next batch */
    size_t line_bytes;
    struct cell__inst *insts;
    struct cell_droplets *droplets;
    struct cell_layers *layers;
    struct cell__pending *pending;
    int open_handles;
    bool leave, closing;
    void (*done)(void *);
    void *done_arg;
};

/* ---- what the cell says ------------------------------------------------------------------ */

static void cell__say(struct cell_agent *a, json_t *msg)
{
    json_object_set_new(msg, "v", json_integer(1));
    char *text = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    if (text && a->nc)
        natsconn_publish(a->nc, a->subject_up, NULL, text, strlen(text));
    free(text);
}

static void cell__flush_output(struct cell_agent *a)
{
    if (!json_array_size(a->lines))
        return;
    cell__say(a, json_pack("{s:s,s:O}", "type", "output", "lines", a->lines));
    json_array_clear(a->lines);
    a->line_bytes = 0;
}

static void cell__on_flush(uv_timer_t *t)
{
    cell__flush_output(t->data);
}

static json_t *cell__inst_json(const struct cell__inst *ci)
{
    double cpu = 0;
    uint64_t memory = 0;
    instance_usage(ci->inst, &cpu, &memory);
    return json_pack("{s:s,s:s,s:s,s:i,s:s,s:s,s:s,s:I,s:I}", "guid", ci->guid, "app_guid",
                     ci->app_guid, "process_type", ci->type, "index", ci->index, "droplet_guid",
                     ci->droplet, "state", instance_state_name(instance_state(ci->inst)), "addr",
                     ci->addr, "since_ms", (json_int_t)instance_since_ms(ci->inst), "memory_bytes",
                     (json_int_t)memory);
}

static void cell__beat(struct cell_agent *a)
{
    json_t *insts = json_array();
    uint64_t used = 0;
    for (struct cell__inst *ci = a->insts; ci; ci = ci->next) {
        json_t *j = cell__inst_json(ci);
        used += (uint64_t)json_integer_value(json_object_get(j, "memory_bytes"));
        json_array_append_new(insts, j);
    }
    /* starts waiting for their droplet: the leader must not take them for gone */
    for (struct cell__pending *p = a->pending; p; p = p->next)
        if (!p->stopped)
            json_array_append_new(
                insts, json_pack("{s:s,s:s,s:s,s:i,s:s,s:s,s:s,s:I,s:I}", "guid",
                                 p->d.l.instance_guid, "app_guid", p->d.l.app_guid, "process_type",
                                 p->d.l.process_type, "index", p->d.l.index, "droplet_guid",
                                 p->d.l.droplet_guid, "state", "STARTING", "addr", "", "since_ms",
                                 (json_int_t)p->since_ms, "memory_bytes", (json_int_t)0));
    cell__say(a, json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:i,s:I,s:o}", "type", "heartbeat", "id",
                           a->id, "host", a->host, "zone", a->zone, "memory_capacity_bytes",
                           (json_int_t)a->capacity, "memory_used_bytes", (json_int_t)used,
                           "interval_ms", a->heartbeat_ms, "at_ms", (json_int_t)time_now_ms(),
                           "instances", insts));
}

/* How many of the tracked instances mount an image's layers. */
static size_t cell__image_instances(const struct cell_agent *a)
{
    size_t n = 0;
    for (const struct cell__inst *ci = a->insts; ci; ci = ci->next)
        n += ci->image;
    return n;
}

static void cell__on_beat(uv_timer_t *t)
{
    struct cell_agent *a = t->data;
    cell__beat(a);
    /* layers a stopping instance still named when they were last collected */
    if (cell_layers_waiting(a->layers))
        cell_layers_collect(a->layers, cell__image_instances(a));
}

static void cell__say_state(struct cell_agent *a, const char *guid, const char *state,
                            const char *addr, const struct instance_exit *ex, const char *why)
{
    cell__say(a, cell_state_message(guid, state, addr, ex, why));
}

/* ---- the executor's callbacks ------------------------------------------------------------- */

static struct cell__inst *cell__find(struct cell_agent *a, const char *guid)
{
    for (struct cell__inst *ci = a->insts; ci; ci = ci->next)
        if (!strcmp(ci->guid, guid))
            return ci;
    return NULL;
}

static void cell__forget(struct cell_agent *a, struct cell__inst *gone)
{
    for (struct cell__inst **pp = &a->insts; *pp; pp = &(*pp)->next)
        if (*pp == gone) {
            *pp = gone->next;
            break;
        }
    cell_launch_droplet_forget(a->home, gone->guid);
    free(gone);
}

static void cell__on_output(void *ctx, struct instance *inst, int stream, const char *line,
                            size_t len)
{
    struct cell_agent *a = ctx;
    struct cell__inst *ci = instance_user_data(inst);
    if (!ci)
        return;
    json_array_append_new(a->lines, json_pack("{s:s,s:i,s:s%}", "guid", ci->guid, "stream", stream,
                                              "line", line, len));
    a->line_bytes += len + 64;
    if (json_array_size(a->lines) >= CELL_OUTPUT_BATCH_LINES || a->line_bytes >= CELL__OUTPUT_BYTES)
        cell__flush_output(a);
    else if (!uv_is_active((uv_handle_t *)&a->flush))
        uv_timer_start(&a->flush, cell__on_flush, CELL_OUTPUT_BATCH_MS, 0);
}

static void cell__on_state(void *ctx, struct instance *inst, enum instance_state state,
                           const struct instance_exit *ex)
{
    struct cell_agent *a = ctx;
    struct cell__inst *ci = instance_user_data(inst);
    if (!ci)
        return;
    cell__flush_output(a); /* its last lines before its end */
    if (state == INSTANCE_RUNNING)
        log_info("[CELL] instance %d of %s (%s) is running at %s", ci->index, ci->type, ci->guid,
                 ci->addr);
    cell__say_state(a, ci->guid, instance_state_name(state), ci->addr, ex, NULL);
    if (state == INSTANCE_DOWN || state == INSTANCE_CRASHED) {
        cell__forget(a, ci);
        cell_layers_collect(a->layers, cell__image_instances(a)); /* what it alone mounted */
        cell_droplets_collect(a->droplets); /* its droplet may be over the cache's bound */
    }
}

static void cell__on_readiness(void *ctx, struct instance *inst, bool ready)
{
    struct cell_agent *a = ctx;
    struct cell__inst *ci = instance_user_data(inst);
    if (ci)
        cell__say(
            a, json_pack("{s:s,s:s,s:b}", "type", "readiness", "guid", ci->guid, "ready", ready));
}

/* ---- requests ---------------------------------------------------------------------------- */

static struct cell__inst *cell__track(struct cell_agent *a, struct instance *inst, const char *guid,
                                      const char *app_guid, const char *type, int index,
                                      const char *droplet)
{
    struct cell__inst *ci = xcalloc(1, sizeof *ci);
    snprintf(ci->guid, sizeof ci->guid, "%s", guid);
    snprintf(ci->app_guid, sizeof ci->app_guid, "%s", app_guid);
    snprintf(ci->type, sizeof ci->type, "%s", type);
    snprintf(ci->droplet, sizeof ci->droplet, "%s", droplet ? droplet : "");
    ci->index = index;
    ci->inst = inst;
    struct instance_endpoint ep;
    instance_endpoint(inst, &ep);
    snprintf(ci->addr, sizeof ci->addr, "%s", ep.addr);
    instance_set_user_data(inst, ci);
    ci->next = a->insts;
    a->insts = ci;
    return ci;
}

static struct cell__pending *cell__pending_find(struct cell_agent *a, const char *guid)
{
    for (struct cell__pending *p = a->pending; p; p = p->next)
        if (!strcmp(p->d.l.instance_guid, guid))
            return p;
    return NULL;
}

static void cell__refuse(struct cell_agent *a, const struct cell_launch *l, const char *what,
                         const char *err)
{
    log_warning("[CELL] cannot start instance %d of %s (%s): %s", l->index, l->process_type,
                l->instance_guid, err);
    char why[700];
    snprintf(why, sizeof why, "the cell could not %s: %s", what, err);
    cell__say_state(a, l->instance_guid, "CRASHED", NULL, NULL, why);
}

/* Starts d's instance from the droplet folder dir; d is cleared either way. */
static void cell__launch(struct cell_agent *a, struct cell_launch_doc *d, const char *dir)
{
    struct cell_launch *l = &d->l;
    struct instance *inst = NULL;
    char addr[64] = "", err[512] = "";
    int rc = cell_launch_start(a->ex, a->home, l, dir, &inst, addr, err, sizeof err);
    if (rc < 0) {
        cell__refuse(a, l, "start it", err);
        cell_launch_doc_clear(d);
        return;
    }
    struct cell__inst *ci = cell__track(a, inst, l->instance_guid, l->app_guid, l->process_type,
                                        l->index, l->droplet_guid);
    ci->image = image_droplet_is_image(dir);
    log_info("[CELL] starting instance %d of %s (%s) of app %s at %s", l->index, l->process_type,
             ci->guid, l->app_name, ci->addr);
    cell__say_state(a, ci->guid, "STARTING", ci->addr, NULL, NULL);
    cell_launch_doc_clear(d);
}

static void cell__pending_unlink(struct cell_agent *a, struct cell__pending *p)
{
    for (struct cell__pending **pp = &a->pending; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            return;
        }
}

static void cell__pending_free(struct cell__pending *p)
{
    cell_launch_doc_clear(&p->d);
    free(p->dir);
    free(p);
}

static void cell__on_layers(void *ctx, int rc, const char *why)
{
    struct cell__pending *p = ctx;
    struct cell_agent *a = p->a;
    cell__pending_unlink(a, p);
    if (!p->stopped && !a->closing) {
        if (rc < 0)
            cell__refuse(a, &p->d.l, "fetch its image's layers", why);
        else
            cell__launch(a, &p->d, p->dir);
    }
    cell__pending_free(p);
}

/* p's droplet is at dir: its instance starts, once an image's layers are here too. p is
 * consumed; it is on a->pending only while it waits. */
static void cell__droplet_here(struct cell_agent *a, struct cell__pending *p, const char *dir)
{
    if (image_droplet_is_image(dir)) {
        char err[600] = "";
        int rc =
            cell_layers_get(a->layers, dir, cell__on_layers, p, err, sizeof err);
        if (rc == -EINPROGRESS) {
            p->dir = xstrdup(dir);
            p->next = a->pending;
            a->pending = p;
            return;
        }
        if (rc < 0) {
            cell__refuse(a, &p->d.l, "find its image's layers", err);
            cell__pending_free(p);
            return;
        }
    }
    cell__launch(a, &p->d, dir);
    cell__pending_free(p);
}

static void cell__on_droplet(void *ctx, int rc, const char *dir, const char *why)
{
    struct cell__pending *p = ctx;
    struct cell_agent *a = p->a;
    cell__pending_unlink(a, p);
    if (p->stopped || a->closing) {
        cell__pending_free(p);
    } else if (rc < 0) {
        char err[600];
        snprintf(err, sizeof err, "droplet %s: %s", p->d.l.droplet_digest, why);
        cell__refuse(a, &p->d.l, "fetch its droplet", err);
        cell__pending_free(p);
    } else {
        cell__droplet_here(a, p, dir);
    }
}

static void cell__start(struct cell_agent *a, json_t *launch)
{
    struct cell_launch_doc d;
    char err[512] = "";
    const char *refuse;
    if (cell_start_request(launch, &d, err, sizeof err, &refuse) < 0) {
        if (refuse)
            cell__say_state(a, refuse, "CRASHED", NULL, NULL, err);
        return;
    }
    struct cell_launch *l = &d.l;
    struct cell__inst *known = cell__find(a, l->instance_guid);
    if (known) { /* asked again (a controller that did not hear): say where it stands */
        cell__say_state(a, known->guid, instance_state_name(instance_state(known->inst)),
                        known->addr, NULL, NULL);
        cell_launch_doc_clear(&d);
        return;
    }
    struct cell__pending *waiting = cell__pending_find(a, l->instance_guid);
    if (waiting && !waiting->stopped) { /* its droplet or its layers are on their way */
        cell_launch_doc_clear(&d);
        return;
    }
    struct cell__pending *p = xcalloc(1, sizeof *p);
    p->a = a;
    p->d = d;
    p->since_ms = time_now_ms();
    char *dir = NULL;
    int rc = cell_droplet_get(a->droplets, &p->d.l, cell__on_droplet, p, &dir, err, sizeof err);
    if (rc == -EINPROGRESS) {
        p->next = a->pending;
        a->pending = p;
        return;
    }
    if (rc < 0) {
        cell__refuse(a, &p->d.l, "start it", err);
        cell__pending_free(p);
        return;
    }
    cell__droplet_here(a, p, dir);
    free(dir);
}

static void cell__on_msg(void *ctx, const char *subject, const char *reply, const char *data,
                         size_t len)
{
    struct cell_agent *a = ctx;
    json_t *m = json_loadb(data, len, 0, NULL);
    const char *op = json_string_value(json_object_get(m, "op"));
    if (!op || json_integer_value(json_object_get(m, "v")) != 1) {
        log_warning("[CELL] ignored a request on %s that is not {\"v\":1,\"op\":...}", subject);
    } else if (!strcmp(op, "start")) {
        cell__start(a, json_object_get(m, "launch"));
    } else if (!strcmp(op, "stop")) {
        const char *guid = json_string_value(json_object_get(m, "guid"));
        struct cell__inst *ci = guid ? cell__find(a, guid) : NULL;
        struct cell__pending *p = guid && !ci ? cell__pending_find(a, guid) : NULL;
        if (p && !p->stopped) {
            p->stopped = true; /* never started once its droplet is here */
            log_info("[CELL] instance %d of %s (%s) will not start: asked to stop while its "
                     "droplet was fetched",
                     p->d.l.index, p->d.l.process_type, guid);
            cell__say_state(a, guid, "DOWN", NULL, NULL, "stopped before it started");
        } else if (ci) {
            log_info("[CELL] stopping instance %d of %s (%s): %s", ci->index, ci->type, ci->guid,
                     json_string_value(json_object_get(m, "reason"))
                         ? json_string_value(json_object_get(m, "reason"))
                         : "asked by the leader");
            executor_stop(ci->inst);
        } else if (guid) {
            cell__say_state(a, guid, "DOWN", NULL, NULL, "not on this cell");
        }
    } else {
        log_warning("[CELL] ignored a request with the unknown op \"%s\"", op);
    }
    json_decref(m);
}

static void cell__on_nats(void *ctx, bool connected)
{
    struct cell_agent *a = ctx;
    if (connected) {
        log_info("[CELL] connected to NATS: cell %s takes requests on %s", a->id, a->subject_req);
        cell__beat(a);
    } else {
        log_warning("[CELL] lost NATS: instances keep running; reconnecting");
    }
}

/* ---- life --------------------------------------------------------------------------------- */

/* What a droplet's folder may not be removed under: the executor's instances' app_dirs and
 * the folders of starts waiting for their layers. */
static char **cell__droplets_in_use(void *ctx)
{
    struct cell_agent *a = ctx;
    char **dirs = a->ex ? executor_app_dirs(a->ex) : NULL;
    size_t n = 0;
    while (dirs && dirs[n])
        n++;
    for (const struct cell__pending *p = a->pending; p; p = p->next)
        if (p->dir) {
            dirs = xrealloc(dirs, (n + 2) * sizeof *dirs);
            dirs[n++] = xstrdup(p->dir);
            dirs[n] = NULL;
        }
    return dirs;
}

static void cell__adopt(void *ctx, struct instance *inst, const struct instance_spec *sp)
{
    struct cell_agent *a = ctx;
    char *droplet = cell_launch_droplet_read(a->home, sp->instance_guid);
    struct cell__inst *ci =
        cell__track(a, inst, sp->instance_guid, sp->app_guid, sp->process_type, sp->index, droplet);
    ci->image = sp->image_layers != NULL;
    free(droplet);
    log_info("[CELL] kept instance %d of %s (%s) running across a restart of the cell", sp->index,
             sp->process_type, sp->instance_guid);
}

static uint64_t cell__host_memory(void)
{
    struct sysinfo si;
    return sysinfo(&si) == 0 ? (uint64_t)si.totalram * si.mem_unit : 0;
}

int cell_agent_start(uv_loop_t *loop, const struct cell_agent_config *cfg, struct cell_agent **out,
                     char *err, size_t errsize)
{
    int rc = cells_zone_check(cfg->zone, err, errsize);
    if (rc < 0)
        return rc;
    if (!cfg->nats_urls || !*cfg->nats_urls) {
        snprintf(err, errsize,
                 "--role cell takes its requests from NATS: give --nats "
                 "URL[,URL...] (or SKIFF_NATS)");
        return -EINVAL;
    }
    struct cell_agent *a = xcalloc(1, sizeof *a);
    a->loop = loop;
    rc = cells_load_id(cfg->home, a->id, err, errsize);
    if (rc < 0) {
        free(a);
        return rc;
    }
    if (gethostname(a->host, sizeof a->host - 1) < 0)
        snprintf(a->host, sizeof a->host, "unknown");
    a->zone = xstrdup(cfg->zone);
    a->home = xstrdup(cfg->home);
    a->capacity = cfg->memory_bytes ? cfg->memory_bytes : cell__host_memory();
    a->heartbeat_ms = cfg->heartbeat_ms > 0 ? cfg->heartbeat_ms : CELL_HEARTBEAT_MS;
    a->subject_req = xasprintf("skiff.cell.%s.req", a->id);
    a->subject_up = xasprintf("skiff.cell.%s.up", a->id);
    a->lines = json_array();
    struct cell_droplets_config dc = {.home = a->home,
                                      .cell_id = a->id,
                                      .token_file = cfg->token_file,
                                      .controller_urls = cfg->controller_urls,
                                      .fetch_stall_ms = cfg->fetch_stall_ms,
                                      .cache_bytes = cfg->droplet_cache_bytes,
                                      .in_use = cell__droplets_in_use,
                                      .in_use_ctx = a};
    rc = cell_droplets_new(loop, &dc, &a->droplets);
    if (rc < 0) {
        snprintf(err, errsize, "cannot make the droplet cache under %s/blobs: %s", a->home,
                 skiff_strerror(rc));
        goto fail;
    }
    struct executor_config ec = *cfg->executor;
    ec.on_readiness = cell__on_readiness;
    rc = executor_new(loop, &ec, cell__on_output, cell__on_state, a, &a->ex);
    if (rc < 0) {
        snprintf(err, errsize, "cannot start the executor: %s", skiff_strerror(rc));
        goto fail;
    }
    rc = cell_layers_new(loop, a->home, ec.uid_base ? ec.uid_base : CONTAINER_DEFAULT_UID_BASE,
                         a->droplets, a->ex, &a->layers);
    if (rc < 0) {
        snprintf(err, errsize, "cannot open the image store under %s/images", a->home);
        goto fail;
    }
    cell_layers_set_grace(a->layers, cfg->layer_grace_ms);
    int adopted = executor_adopt(a->ex, cell__adopt, a);
    char *name = xasprintf("skiffd cell %s", a->id);
    struct natsconn_config nc = {.urls = cfg->nats_urls,
                                 .name = name,
                                 .security = cfg->nats_security,
                                 .on_msg = cell__on_msg,
                                 .on_state = cell__on_nats,
                                 .ctx = a};
    rc = natsconn_open(loop, &nc, &a->nc, err, errsize);
    free(name);
    if (rc == 0)
        rc = natsconn_subscribe(a->nc, a->subject_req);
    if (rc < 0) {
        if (!*err)
            snprintf(err, errsize, "cannot subscribe to %s: %s", a->subject_req,
                     skiff_strerror(rc));
        goto fail;
    }
    uv_timer_init(loop, &a->beat);
    uv_timer_init(loop, &a->flush);
    a->beat.data = a->flush.data = a;
    a->open_handles = 2;
    uv_timer_start(&a->beat, cell__on_beat, 0, (uint64_t)a->heartbeat_ms);
    log_info("[CELL] cell %s (zone %s, %llu MB) runs instances; %d kept from before", a->id,
             a->zone, (unsigned long long)(a->capacity >> 20), adopted);
    *out = a;
    return 0;
fail:
    if (a->nc)
        natsconn_close(a->nc);
    a->nc = NULL;
    cell_agent_free(a);
    return rc < 0 ? rc : -EINVAL;
}

const char *cell_agent_id(const struct cell_agent *a)
{
    return a->id;
}

void cell_agent_reload(struct cell_agent *a)
{
    char err[512];
    if (cell_droplets_check_token(a->droplets, err, sizeof err) < 0)
        log_warning("[CELL] %s", err);
}

static void cell__handle_closed(uv_handle_t *h)
{
    struct cell_agent *a = h->data;
    if (--a->open_handles == 0 && a->done)
        a->done(a->done_arg);
}

static void cell__executor_down(void *arg)
{
    struct cell_agent *a = arg;
    cell__flush_output(a);
    if (a->nc)
        natsconn_close(a->nc);
    a->nc = NULL;
    uv_close((uv_handle_t *)&a->beat, cell__handle_closed);
    uv_close((uv_handle_t *)&a->flush, cell__handle_closed);
}

void cell_agent_close(struct cell_agent *a, bool leave, void (*done)(void *arg), void *arg)
{
    a->done = done;
    a->done_arg = arg;
    a->leave = leave;
    a->closing = true; /* a droplet that arrives from now on starts nothing */
    uv_timer_stop(&a->beat);
    uv_timer_stop(&a->flush);
    if (leave)
        executor_detach(a->ex, cell__executor_down, a);
    else
        executor_shutdown(a->ex, cell__executor_down, a);
}

void cell_agent_free(struct cell_agent *a)
{
    if (!a)
        return;
    executor_free(a->ex);
    cell_layers_free(a->layers);
    cell_droplets_free(a->droplets);
    while (a->insts) {
        struct cell__inst *ci = a->insts;
        a->insts = ci->next;
        free(ci);
    }
    json_decref(a->lines);
    free(a->subject_req);
    free(a->subject_up);
    free(a->zone);
    free(a->home);
    free(a);
}
