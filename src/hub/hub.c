/* hub: see hub.h. Subscribers live in an array; one removed while events are being delivered
 * is marked and taken out once the outermost delivery ends, so no delivery loop ever walks a
 * freed entry. */
#include "hub/hub.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/log.h"
#include "common/util.h"

struct hub_sub {
    int id;
    hub_cb cb; /* NULL once unsubscribed */
    void *ctx;
};

struct hub {
    struct hub_sub *subs;
    size_t nsubs, cap;
    int next_id;
    int depth;     /* deliveries in progress (nested publishes) */
    bool has_dead; /* an entry was unsubscribed during a delivery */
};

struct hub *hub_new(void)
{
    struct hub *h = xcalloc(1, sizeof *h);
    h->next_id = 1;
    return h;
}

static void hub__compact(struct hub *h)
{
    size_t n = 0;
    for (size_t i = 0; i < h->nsubs; i++)
        if (h->subs[i].cb)
            h->subs[n++] = h->subs[i];
    h->nsubs = n;
    h->has_dead = false;
}

void hub_free(struct hub *h)
{
    if (!h)
        return;
    hub__compact(h);
    if (h->nsubs)
        log_warning("%zu platform event subscribers were never unsubscribed",
                h->nsubs);
    free(h->subs);
    free(h);
}

int hub_subscribe(struct hub *h, hub_cb cb, void *ctx)
{
    if (h->nsubs == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 8;
        h->subs = xrealloc(h->subs, h->cap * sizeof *h->subs);
    }
    int id = h->next_id++;
    h->subs[h->nsubs++] = (struct hub_sub){.id = id, .cb = cb, .ctx = ctx};
    return id;
}

void hub_unsubscribe(struct hub *h, int id)
{
    if (!h || id <= 0)
        return;
    for (size_t i = 0; i < h->nsubs; i++) {
        if (h->subs[i].id != id || !h->subs[i].cb)
            continue;
        h->subs[i].cb = NULL;
        if (h->depth)
            h->has_dead = true;
        else
            hub__compact(h);
        return;
    }
}

void hub_publish(struct hub *h, const struct platform_event *ev)
{
    if (!h)
        return;
    h->depth++;
    /* those subscribed during this delivery get the next event, not this one; the array may
     * move under a callback that subscribes, so entries are read by index */
    size_t n = h->nsubs;
    for (size_t i = 0; i < n; i++) {
        hub_cb cb = h->subs[i].cb;
        if (cb)
            cb(h->subs[i].ctx, ev);
    }
    if (--h->depth == 0 && h->has_dead)
        hub__compact(h);
}

int hub_subscribers(const struct hub *h)
{
    int n = 0;
    for (size_t i = 0; h && i < h->nsubs; i++)
        n += h->subs[i].cb != NULL;
    return n;
}

const char *platform_event_name(enum platform_event_type type)
{
    switch (type) {
    case PLATFORM_INSTANCE_READY:
        return "instance.ready";
    case PLATFORM_INSTANCE_GONE:
        return "instance.gone";
    case PLATFORM_INSTANCE_DRAINING:
        return "instance.draining";
    case PLATFORM_APP_STARTED:
        return "app.started";
    case PLATFORM_APP_STOPPED:
        return "app.stopped";
    case PLATFORM_APP_CRASHED:
        return "app.crashed";
    case PLATFORM_APP_SCALED:
        return "app.scaled";
    case PLATFORM_APP_STAGED:
        return "app.staged";
    case PLATFORM_APP_DEPLOY_FAILED:
        return "app.deploy_failed";
    case PLATFORM_PROCESS_REMOVED:
        return "process.removed";
    }
    return "unknown";
}
