/* hub: the platform's events inside skiffd, one publisher interface and one subscriber list.
 *
 * The scheduler publishes what happens to instances (ready, gone, draining, crashed) and to
 * apps it stops or scales; the API publishes what a user did (an app started, stopped,
 * scaled); staging publishes a new droplet. The route table (bus), the invoker (platform
 * events as CloudEvents, delivery targets) and the API's caches subscribe. Nobody calls
 * another component to tell a third one something.
 *
 * Delivery is synchronous, on the loop, in subscription order. A callback may publish
 * (nested events are delivered at once, depth first), subscribe (the new subscriber gets the
 * events published after its subscription) and unsubscribe itself or anyone else (a removed
 * subscriber gets nothing more, even from the event being delivered). */
#ifndef SKIFF_HUB_H
#define SKIFF_HUB_H

#include <stdint.h>

enum platform_event_type {
    PLATFORM_INSTANCE_READY,    /* an instance became RUNNING (and ready, with a readiness
                                   check): it may take traffic */
    PLATFORM_INSTANCE_GONE,     /* an instance left RUNNING (stopping, down or crashed), or
                                   failed its readiness check: it takes no new traffic */
    PLATFORM_INSTANCE_DRAINING, /* an instance that was ready is to stop: drain_id may be held */
    PLATFORM_APP_STARTED,       /* the app was started (desired state STARTED) */
    PLATFORM_APP_STOPPED,       /* the app was stopped (desired state STOPPED) or deleted */
    PLATFORM_APP_CRASHED,       /* an instance crashed (exited without being asked) */
    PLATFORM_APP_SCALED,        /* the desired instance count of a process changed */
    PLATFORM_APP_STAGED,        /* a new droplet was recorded */
    PLATFORM_APP_DEPLOY_FAILED, /* a new droplet's instance crashed before it was ready: the
                                 * store's droplet is the one that ran before again */
    PLATFORM_PROCESS_REMOVED,   /* a process type left its app (a function deleted), or the app
                                 * was deleted (process_type NULL); the store says so already */
};

struct platform_event {
    enum platform_event_type type;
    const char *app_guid;
    const char *app_name;
    const char *process_type;  /* NULL for app-wide events (started, stopped, staged) */
    int index;                 /* instance events and crashed; -1 otherwise */
    const char *instance_guid; /* instance events and crashed; NULL otherwise */
    const char *addr;          /* "IP:PORT" for READY; NULL otherwise */
    int instances;             /* SCALED: the new desired count */
    int exit_status;           /* CRASHED: exit code, -1 when killed by a signal */
    int exit_signal;           /* CRASHED: signal number, 0 when it exited */
    const char *reason;        /* CRASHED: "exited", "health check failed", ...; SCALED: why,
                                * when the autoscaler decided ("2 -> 5: 480 in flight, ..."),
                                * else NULL */
    int crash_count;           /* CRASHED: crashes in a row of this instance index */
    uint64_t drain_id;         /* DRAINING: for scheduler_drain_hold/_release */
};

/* An app-wide event of type for app (guid, name): index -1, exit_status -1, the rest 0. */
#define PLATFORM_APP_EVENT(t, guid, name)                                                         \
    ((struct platform_event){                                                                     \
        .type = (t), .app_guid = (guid), .app_name = (name), .index = -1, .exit_status = -1})

typedef void (*hub_cb)(void *ctx, const struct platform_event *ev);

struct hub;

struct hub *hub_new(void);
/* Frees the hub; its subscribers must be gone (a leftover one is a wiring bug: it is said on
 * stderr). NULL is a no-op. */
void hub_free(struct hub *h);

/* Returns an id > 0 for hub_unsubscribe. */
int hub_subscribe(struct hub *h, hub_cb cb, void *ctx);
/* Removes the subscription; an unknown id (or 0) is a no-op. */
void hub_unsubscribe(struct hub *h, int id);
/* Delivers ev to every subscriber. The strings of ev need to live only during the call. A NULL
 * hub (a component run alone, as in unit tests) drops the event. */
void hub_publish(struct hub *h, const struct platform_event *ev);
/* How many subscribers there are. */
int hub_subscribers(const struct hub *h);

/* "instance.ready", "app.crashed", ...: the event's name in logs and CloudEvent types. */
const char *platform_event_name(enum platform_event_type type);

#endif
