/* cellc's serve (client.h): the local cell of a skiffd --role all on a shared store, a cell
 * for whoever leads. It announces itself and its instances on skiff.cell.<id>.up, and while
 * another skiffd leads it takes that leader's start and stop requests on skiff.cell.<id>.req
 * and reports on them, as a --role cell does (agent.c, docs/bus.md "Cells"). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cell/client.h"
#include "cell/client_internal.h"
#include "common/log.h"
#include "common/util.h"

#define CELLC__OUTPUT_BYTES (256 * 1024) /* a batch stays well under NATS's 1 MB payload */

static void cellc__say(struct cellc *c, json_t *msg)
{
    json_object_set_new(msg, "v", json_integer(1));
    char *text = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    char subject[64];
    snprintf(subject, sizeof subject, "skiff.cell.%s.up", c->local_id);
    if (text && c->nc)
        natsconn_publish(c->nc, subject, NULL, text, strlen(text));
    free(text);
}

void cellc__flush_output(struct cellc *c)
{
    if (!json_array_size(c->lines))
        return;
    cellc__say(c, json_pack("{s:s,s:O}", "type", "output", "lines", c->lines));
    json_array_clear(c->lines);
    c->line_bytes = 0;
}

void cellc__on_flush(uv_timer_t *t)
{
    cellc__flush_output(t->data);
}

void cellc__say_state(struct cellc *c, const char *guid, const char *state, const char *addr,
                      const struct instance_exit *ex, const char *why)
{
    cellc__say(c, cell_state_message(guid, state, addr, ex, why));
}

void cellc__serve_state(struct cellc *c, struct cellc_inst *i, enum instance_state state,
                        const struct instance_exit *ex)
{
    cellc__flush_output(c); /* its last lines before its end */
    if (state == INSTANCE_RUNNING)
        log_info("[CELL] instance %d of %s (%s) is running at %s", i->index, i->type, i->guid,
                 i->addr);
    cellc__say_state(c, i->guid, instance_state_name(state), i->addr, ex, NULL);
}

void cellc__serve_output(struct cellc *c, struct cellc_inst *i, int stream, const char *line,
                         size_t len)
{
    json_array_append_new(c->lines, json_pack("{s:s,s:i,s:s%}", "guid", i->guid, "stream", stream,
                                              "line", line, len));
    c->line_bytes += len + 64;
    if (json_array_size(c->lines) >= CELL_OUTPUT_BATCH_LINES ||
        c->line_bytes >= CELLC__OUTPUT_BYTES)
        cellc__flush_output(c);
    else if (!uv_is_active((uv_handle_t *)&c->flush))
        uv_timer_start(&c->flush, cellc__on_flush, CELL_OUTPUT_BATCH_MS, 0);
}

void cellc__serve_readiness(struct cellc *c, struct cellc_inst *i, bool ready)
{
    i->ready_ok = ready;
    cellc__say(c, json_pack("{s:s,s:s,s:b}", "type", "readiness", "guid", i->guid, "ready", ready));
}

/* The heartbeat of the local cell: what a --role cell announces (docs/bus.md "Cells"), and
 * whether it leads and reads droplets from the blob store. */
void cellc__beat(struct cellc *c)
{
    json_t *insts = json_array();
    uint64_t used = 0;
    for (const struct cellc_inst *i = c->insts; i; i = i->next) {
        if (i->cell || !i->local || i->forgotten)
            continue;
        double cpu = 0;
        uint64_t memory = 0;
        instance_usage(i->local, &cpu, &memory);
        used += memory;
        json_array_append_new(
            insts,
            json_pack("{s:s,s:s,s:s,s:i,s:s,s:s,s:s,s:I,s:I}", "guid", i->guid, "app_guid",
                      i->app_guid, "process_type", i->type, "index", i->index, "droplet_guid",
                      i->droplet, "state", instance_state_name(instance_state(i->local)), "addr",
                      i->addr, "since_ms", (json_int_t)instance_since_ms(i->local), "memory_bytes",
                      (json_int_t)memory));
    }
    /* starts waiting for their droplet: the leader must not take them for gone */
    for (const struct cellc__pending *p = c->pending; p; p = p->next)
        json_array_append_new(
            insts, json_pack("{s:s,s:s,s:s,s:i,s:s,s:s,s:s,s:I,s:I}", "guid", p->d.l.instance_guid,
                             "app_guid", p->d.l.app_guid, "process_type", p->d.l.process_type,
                             "index", p->d.l.index, "droplet_guid", p->d.l.droplet_guid, "state",
                             "STARTING", "addr", "", "since_ms", (json_int_t)p->since_ms,
                             "memory_bytes", (json_int_t)0));
    cellc__say(c, json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:i,s:I,s:o,s:b,s:s}", "type", "heartbeat",
                            "id", c->local_id, "host", c->host, "zone", c->local_zone,
                            "memory_capacity_bytes", (json_int_t)c->local_capacity,
                            "memory_used_bytes", (json_int_t)used, "interval_ms", c->beat_ms,
                            "at_ms", (json_int_t)time_now_ms(), "instances", insts, "leading",
                            c->leading, "blobs", "store"));
}

void cellc__on_beat(uv_timer_t *t)
{
    cellc__beat(t->data);
}

static void cellc__pending_unlink(struct cellc *c, struct cellc__pending *p)
{
    for (struct cellc__pending **pp = &c->pending; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            return;
        }
}

void cellc__pending_free(struct cellc__pending *p)
{
    cell_launch_doc_clear(&p->d);
    free(p);
}

static struct cellc__pending *cellc__pending_find(struct cellc *c, const char *guid)
{
    for (struct cellc__pending *p = c->pending; p; p = p->next)
        if (!strcmp(p->d.l.instance_guid, guid))
            return p;
    return NULL;
}

static void cellc__refuse(struct cellc *c, const struct cell_launch *l, const char *err)
{
    log_warning("[CELL] cannot start instance %d of %s (%s): %s", l->index, l->process_type,
                l->instance_guid, err);
    char why[700];
    snprintf(why, sizeof why, "the cell could not start it: %s", err);
    cellc__say_state(c, l->instance_guid, "CRASHED", NULL, NULL, why);
}

/* Starts p's instance once its droplet is here; p stays pending while it is on its way, and
 * is consumed otherwise. */
static void cellc__serve_try(struct cellc *c, struct cellc__pending *p, bool linked)
{
    const struct cell_launch *l = &p->d.l;
    char *dir = NULL;
    char err[600] = "", addr[64] = "";
    int rc = cellc__local_dir(c, l, &dir, err, sizeof err);
    if (rc == -EINPROGRESS) {
        if (!linked) {
            p->next = c->pending;
            c->pending = p;
        }
        return;
    }
    if (linked)
        cellc__pending_unlink(c, p);
    struct instance *inst = NULL;
    if (rc == 0)
        rc = cell_launch_start(c->ex, c->home, l, dir, &inst, addr, err, sizeof err);
    if (rc < 0) {
        free(dir);
        cellc__refuse(c, l, err);
        cellc__pending_free(p);
        return;
    }
    struct cellc_inst *i =
        cellc__wrap_local(c, inst, l->app_guid, l->process_type, l->index, l->droplet_guid);
    i->dir = dir;
    i->served = true;
    i->readiness = l->readiness;
    log_info("[CELL] starting instance %d of %s (%s) of app %s at %s for the leader", l->index,
             l->process_type, i->guid, l->app_name, i->addr);
    cellc__say_state(c, i->guid, "STARTING", i->addr, NULL, NULL);
    cellc__pending_free(p);
}

void cellc_local_droplet_ready(struct cellc *c, const char *app_guid)
{
    if (c->closing)
        return;
    struct cellc__pending *ready = NULL;
    for (struct cellc__pending **pp = &c->pending, *p; (p = *pp);) {
        if (strcmp(p->d.l.app_guid, app_guid)) {
            pp = &p->next;
            continue;
        }
        *pp = p->next;
        p->next = ready;
        ready = p;
    }
    while (ready) {
        struct cellc__pending *p = ready;
        ready = p->next;
        cellc__serve_try(c, p, false);
    }
}

static void cellc__serve_start(struct cellc *c, json_t *launch)
{
    struct cell_launch_doc d;
    char err[512] = "";
    const char *refuse;
    if (cell_start_request(launch, &d, err, sizeof err, &refuse) < 0) {
        if (refuse)
            cellc__say_state(c, refuse, "CRASHED", NULL, NULL, err);
        return;
    }
    struct cellc_inst *known = cellc__find(c, d.l.instance_guid);
    if (known || cellc__pending_find(c, d.l.instance_guid)) {
        /* asked again (a leader that did not hear): say where it stands */
        if (known && !known->cell && known->local)
            cellc__say_state(c, known->guid, instance_state_name(instance_state(known->local)),
                             known->addr, NULL, NULL);
        cell_launch_doc_clear(&d);
        return;
    }
    struct cellc__pending *p = xcalloc(1, sizeof *p);
    p->d = d;
    p->since_ms = time_now_ms();
    cellc__serve_try(c, p, false);
}

static void cellc__serve_stop(struct cellc *c, const char *guid, const char *reason)
{
    struct cellc_inst *i = cellc__find(c, guid);
    struct cellc__pending *p = cellc__pending_find(c, guid);
    if (p) {
        cellc__pending_unlink(c, p);
        log_info("[CELL] instance %d of %s (%s) will not start: asked to stop while its droplet "
                 "was on its way",
                 p->d.l.index, p->d.l.process_type, guid);
        cellc__pending_free(p);
        cellc__say_state(c, guid, "DOWN", NULL, NULL, "stopped before it started");
    } else if (i && i->served && i->local) {
        log_info("[CELL] stopping instance %d of %s (%s): %s", i->index, i->type, i->guid,
                 reason ? reason : "asked by the leader");
        executor_stop(i->local);
    } else if (!i) {
        cellc__say_state(c, guid, "DOWN", NULL, NULL, "not on this cell");
    }
}

/* A request on skiff.cell.<local_id>.req: only from another skiffd that leads; a skiffd that
 * leads itself takes none (one that still thinks it leads is answered by nothing). */
void cellc__serve_request(struct cellc *c, const char *data, size_t len)
{
    if (c->leading || c->closing)
        return;
    json_t *m = json_loadb(data, len, 0, NULL);
    const char *op = json_string_value(json_object_get(m, "op"));
    const char *guid = json_string_value(json_object_get(m, "guid"));
    if (!op || json_integer_value(json_object_get(m, "v")) != 1)
        log_warning("[CELL] ignored a request that is not {\"v\":1,\"op\":...}");
    else if (!strcmp(op, "start"))
        cellc__serve_start(c, json_object_get(m, "launch"));
    else if (!strcmp(op, "stop") && guid && strlen(guid) == 36)
        cellc__serve_stop(c, guid, json_string_value(json_object_get(m, "reason")));
    else
        log_warning("[CELL] ignored a request with the unknown op \"%s\"", op);
    json_decref(m);
}

/* A leftover of the last skiffd on this home, run for whoever leads from now on. */
static void cellc__serve_found(void *ctx, struct instance *inst, const struct instance_spec *sp)
{
    struct cellc *c = ctx;
    char *droplet = cell_launch_droplet_read(c->home, sp->instance_guid);
    struct cellc_inst *i =
        cellc__wrap_local(c, inst, sp->app_guid, sp->process_type, sp->index, droplet);
    free(droplet);
    i->served = true;
    i->port = sp->port;
    i->readiness = sp->readiness;
    /* a ready instance that answers at once is RUNNING with no report: ready until its first
     * readiness check says otherwise */
    i->ready_ok = instance_state(inst) == INSTANCE_RUNNING;
    size_t n = sp->app_dir ? strlen(sp->app_dir) : 0;
    if (n > 4 && !strcmp(sp->app_dir + n - 4, "/app"))
        i->dir = xstrndup(sp->app_dir, n - 4);
    log_info("[CELL] kept instance %d of %s (%s) running across a restart of skiffd, for "
             "whoever leads",
             sp->index, sp->process_type, sp->instance_guid);
}

int cellc__serve_adopt(struct cellc *c)
{
    c->adopted = true;
    return executor_adopt(c->ex, cellc__serve_found, c);
}
