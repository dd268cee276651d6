/* builtin_brokers: skiffd runs `skiff-brokers` (src/brokers) and registers it as the
 * platform broker "skiff-builtin" through the same path as any broker (its catalog fetched
 * over OSB), so that `skiff marketplace` offers postgresql and redis from the first start.
 *
 * Its settings are $SKIFF_HOME/brokers/config.json (0600): the OSB port, basic auth
 * credentials and the stores' ports are chosen on the first start (free ports on loopback)
 * and kept, so credentials given to apps stay valid across restarts. The stores listen on
 * loopback and on the address instances reach the host on (the pool's publish address),
 * whose ports the firewall opens to containers. The `events` offering's binding tokens are
 * signed with $SKIFF_HOME/brokers/events.key, and skiffd accepts one while the binding it
 * names is in its records (api_set_binding_check).
 *
 * On a store other skiffds share, the first skiffd's brokers serve them all (registered with
 * its id as their owner, and reached at listen_host): a later skiffd that finds another's
 * registered (or, before that, finds another's id in document SERVICES_KIND_BUILTIN_OWNER,
 * which the first to start leaves there) starts none of its own, since the stores keep their
 * data on one host, and takes
 * the events key the store keeps (services_shared_key) to check the tokens they make. The program
 * is restarted when it exits, and stops with skiffd; when skiffd goes without stopping the platform
 * (killed, SIGUSR2), the program exits and the stores keep serving for the next start. */
#ifndef SKIFF_BUILTIN_BROKERS_H
#define SKIFF_BUILTIN_BROKERS_H

#include <stdbool.h>
#include <uv.h>

struct api;
struct api_svc;
struct net_pool;
struct services;
struct builtin_brokers;

struct builtin_brokers_config {
    const char *binary; /* path of skiff-brokers */
    const char *home;
    const char *service_host;    /* what instances reach the host on (IP) */
    const struct net_pool *pool; /* containers' pool (the firewall), or NULL */
    struct api_svc *svc;         /* where the broker is registered */
    struct api *api;             /* checks the events offering's binding tokens */
    struct services *records;    /* ... against the bindings there */
    const char *events_url;      /* where instances publish ("http://IP:PORT") */
    const char *owner;           /* this skiffd's id in the store (its cell's) */
    const char *listen_host;     /* the OSB listener's address (the controllers reach) */
    bool shared;                 /* the store is other skiffds' too (PostgreSQL) */
};

/* NULL (after saying why) when it cannot start. */
struct builtin_brokers *builtin_brokers_start(uv_loop_t *loop,
                                              const struct builtin_brokers_config *cfg);
/* With stop, stops the program (SIGTERM, waiting up to 30 s for its stores to stop) and
 * closes the stores' ports; without (skiffd leaves the platform serving: SIGUSR2), the
 * program exits when skiffd does and its stores keep serving apps until the next skiffd's
 * skiff-brokers keeps them. Frees bb; after the loop's handles are closed and the services'
 * endpoints stopped. NULL is fine. */
void builtin_brokers_free(struct builtin_brokers *bb, bool stop);

#endif
