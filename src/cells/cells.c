/* cells: heartbeats in the store and GET /v1/cells (cells.h). */
#include "cells/cells.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include "api/api.h"
#include "auth/auth.h"
#include "cell/client.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "scheduler/scheduler.h"
#include "store/store.h"

#define CELLS_KIND "cell"
#define CELLS_ID_HEX 16 /* bytes of randomness: 32 hex characters */

struct cells {
    uv_timer_t timer;
    char id[2 * CELLS_ID_HEX + 1];
    char host[256];
    char *zone;
    char *api_addr;
    int heartbeat_ms;
    struct store *store;
    struct scheduler *sched;
    bool (*leading)(void *ctx);
    void *leading_ctx;
    bool complained; /* a failed heartbeat was logged since the last that worked */
};

bool cells_zone_valid(const char *zone)
{
    size_t n = zone ? strlen(zone) : 0;
    if (n == 0 || n > CELLS_ZONE_MAX || !isalnum((unsigned char)zone[0]))
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)zone[i];
        if (!(islower(ch) || isdigit(ch) || ch == '.' || ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

int cells_zone_check(const char *zone, char *err, size_t errsize)
{
    if (cells_zone_valid(zone))
        return 0;
    snprintf(err, errsize,
             "--zone \"%s\" is not a zone name: 1 to %d of a-z, 0-9, '.', '_' and '-', "
             "starting with a letter or digit",
             zone ? zone : "", CELLS_ZONE_MAX);
    return -EINVAL;
}

const char *cells_state(int64_t heartbeat_ms, int64_t interval_ms, int64_t now_ms)
{
    if (interval_ms <= 0 || heartbeat_ms <= 0)
        return "missing";
    int64_t age = now_ms - heartbeat_ms; /* both are times since the epoch: no overflow */
    /* age <= N * interval, without the product (an interval read from the store is any size) */
    bool up =
        age <= 0 || (age + CELLS_MISSING_INTERVALS - 1) / CELLS_MISSING_INTERVALS <= interval_ms;
    return up ? "up" : "missing";
}

static bool cells__id_valid(const char *id)
{
    if (strlen(id) != 2 * CELLS_ID_HEX)
        return false;
    for (const char *p = id; *p; p++)
        if (!isxdigit((unsigned char)*p) || isupper((unsigned char)*p))
            return false;
    return true;
}

/* HOME/cell-id: made once, so a cell keeps its id across restarts. */
static int cells__load_id(struct cells *c, const char *home, char *err, size_t errsize);

int cells_load_id(const char *home, char id[CELLS_ID_LEN + 1], char *err, size_t errsize)
{
    struct cells c = {0};
    int rc = cells__load_id(&c, home, err, errsize);
    snprintf(id, CELLS_ID_LEN + 1, "%s", c.id);
    return rc;
}

static int cells__load_id(struct cells *c, const char *home, char *err, size_t errsize)
{
    char *path = xasprintf("%s/cell-id", home);
    char *text = NULL;
    int rc = 0;
    if (file_read(path, &text, NULL) == 0) {
        text[strcspn(text, "\n")] = '\0';
        if (cells__id_valid(text))
            snprintf(c->id, sizeof c->id, "%s", text);
        else
            log_warning("%s does not hold a cell id (32 hexadecimal digits): making a new one",
                        path);
    }
    free(text);
    if (!c->id[0]) {
        random_hex(c->id, CELLS_ID_HEX);
        char line[sizeof c->id + 1];
        snprintf(line, sizeof line, "%s\n", c->id);
        rc = file_write_atomic(path, line, strlen(line), 0644);
        if (rc < 0)
            snprintf(err, errsize, "cannot write the cell id to %s: %s", path, skiff_strerror(rc));
    }
    free(path);
    return rc;
}

static uint64_t cells__memory_capacity(void)
{
    struct sysinfo si;
    if (sysinfo(&si) < 0)
        return 0;
    return (uint64_t)si.totalram * si.mem_unit;
}

static void cells__beat_done(void *ctx, int rc)
{
    struct cells *c = ctx;
    if (rc < 0 && !c->complained)
        log_warning("cannot record this cell's heartbeat in the store: %s (tried again every "
                    "%d ms)",
                    skiff_strerror(rc), c->heartbeat_ms);
    c->complained = rc < 0;
}

void cells_beat(struct cells *c)
{
    if (!c)
        return;
    struct scheduler_usage u;
    scheduler_usage(c->sched, &u);
    json_t *doc = json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:i,s:b,s:I,s:i}", "id", c->id, "host",
                            c->host, "zone", c->zone, "api_addr", c->api_addr,
                            "memory_capacity_bytes", (json_int_t)cells__memory_capacity(),
                            "memory_used_bytes", (json_int_t)u.memory_bytes, "instances",
                            u.instances, "leader", c->leading(c->leading_ctx), "heartbeat_at_ms",
                            (json_int_t)time_now_ms(), "interval_ms", c->heartbeat_ms);
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    /* off the loop: the outcome comes back in cells__beat_done */
    store_doc_put_async(c->store, CELLS_KIND, c->id, text, cells__beat_done, c);
    free(text);
}

static void cells__on_timer(uv_timer_t *t)
{
    cells_beat(t->data);
}

int cells_start(uv_loop_t *loop, const struct cells_config *cfg, struct cells **out, char *err,
                size_t errsize)
{
    int rc = cells_zone_check(cfg->zone, err, errsize);
    if (rc < 0)
        return rc;
    struct cells *c = xcalloc(1, sizeof *c);
    rc = cells__load_id(c, cfg->home, err, errsize);
    if (rc < 0) {
        free(c);
        return rc;
    }
    if (gethostname(c->host, sizeof c->host - 1) < 0)
        snprintf(c->host, sizeof c->host, "unknown");
    c->zone = xstrdup(cfg->zone);
    c->api_addr = xstrdup(cfg->api_addr);
    c->heartbeat_ms = cfg->heartbeat_ms > 0 ? cfg->heartbeat_ms : CELLS_HEARTBEAT_MS;
    c->store = cfg->store;
    c->sched = cfg->sched;
    c->leading = cfg->leading;
    c->leading_ctx = cfg->leading_ctx;
    store_doc_hold(c->store, CELLS_KIND); /* read now, while the server answers */
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    cells_beat(c);
    uv_timer_start(&c->timer, cells__on_timer, (uint64_t)c->heartbeat_ms,
                   (uint64_t)c->heartbeat_ms);
    *out = c;
    return 0;
}

const char *cells_id(const struct cells *c)
{
    return c->id;
}

/* One stored heartbeat as the API shows it; NULL for a document that is not one. */
static json_t *cells__entry(const char *id, const char *text, int64_t now)
{
    json_t *doc = json_loads(text, 0, NULL);
    json_int_t at = json_integer_value(json_object_get(doc, "heartbeat_at_ms"));
    json_int_t interval = json_integer_value(json_object_get(doc, "interval_ms"));
    if (!json_is_object(doc) || at <= 0) {
        json_decref(doc);
        return NULL;
    }
    const char *state = cells_state(at, interval, now);
    char when[40];
    time_format_rfc3339(at, when, sizeof when);
    const char *fields[] = {"host", "zone", "api_addr", NULL};
    json_t *e = json_pack("{s:s,s:s,s:s}", "id", id, "state", state, "heartbeat_at", when);
    for (size_t i = 0; fields[i]; i++) {
        const char *v = json_string_value(json_object_get(doc, fields[i]));
        json_object_set_new(e, fields[i], json_string(v ? v : ""));
    }
    const char *numbers[] = {"memory_capacity_bytes", "memory_used_bytes", "instances",
                             "interval_ms", NULL};
    for (size_t i = 0; numbers[i]; i++)
        json_object_set_new(e, numbers[i],
                            json_integer(json_integer_value(json_object_get(doc, numbers[i]))));
    /* a missing cell leads nothing, whatever its last heartbeat said */
    json_object_set_new(
        e, "leader",
        json_boolean(!strcmp(state, "up") && json_is_true(json_object_get(doc, "leader"))));
    json_decref(doc);
    return e;
}

bool cells_leads(struct cells *c, const char *id)
{
    char *text = NULL;
    if (!id || !*id || store_doc_hold(c->store, CELLS_KIND) < 0 ||
        store_doc_get(c->store, CELLS_KIND, id, &text) < 0)
        return false;
    json_t *e = cells__entry(id, text, time_now_ms());
    free(text);
    bool leads = e && json_is_true(json_object_get(e, "leader"));
    json_decref(e);
    return leads;
}

struct cells__list {
    json_t *cells;
    int64_t now;
};

static int cells__each(void *ctx, const char *id, const char *text)
{
    struct cells__list *l = ctx;
    json_t *e = cells__entry(id, text, l->now);
    if (e)
        json_array_append_new(l->cells, e);
    return 0;
}

static void cells__list_handler(struct api_request *req, void *ctx)
{
    struct cells *c = ctx;
    struct cells__list l = {.cells = json_array(), .now = time_now_ms()};
    int rc = store_doc_each(c->store, CELLS_KIND, cells__each, &l);
    if (rc < 0) {
        json_decref(l.cells);
        api_respond_error(req, SKIFF_E_INTERNAL,
                          "cannot read the cells' heartbeats from the "
                          "store; see skiffd's output");
        return;
    }
    /* the cells that announce themselves on NATS (skiffd --role cell), as this skiffd hears
     * them: state "up", or "lost" once silent for SKIFF_CELL_LOST_MS */
    json_t *remote = c->sched ? cellc_remote_cells(scheduler_cells(c->sched)) : json_array();
    size_t k;
    json_t *e;
    json_array_foreach(remote, k, e)
    {
        json_int_t age = json_integer_value(json_object_get(e, "heartbeat_age_ms"));
        char when[40];
        time_format_rfc3339(l.now - age, when, sizeof when);
        json_object_set_new(e, "heartbeat_at", json_string(when));
        json_object_set_new(e, "api_addr", json_string(""));
        json_object_set_new(e, "leader", json_false());
        json_object_set_new(e, "role", json_string("cell"));
        json_array_append(l.cells, e);
    }
    json_decref(remote);
    api_respond_json(req, 200,
                     json_pack("{s:o,s:s,s:b}", "cells", l.cells, "this_cell", c->id, "leading",
                               c->leading(c->leading_ctx)));
}

void cells_register(struct cells *c, struct api *api)
{
    api_route_add(api, "GET", "/v1/cells", API_PERM(AUTH_PERM_ADMIN), cells__list_handler, c);
}

void cells_close(struct cells *c)
{
    if (!c)
        return;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, NULL);
}

void cells_free(struct cells *c)
{
    if (!c)
        return;
    free(c->zone);
    free(c->api_addr);
    free(c);
}
