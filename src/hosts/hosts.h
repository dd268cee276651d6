/* hosts: which hosts make up the platform, as each announces itself on NATS core, and what
 * that means for this host's network (src/container/net.h).
 *
 * A skiffd that runs instances announces its address on the network between hosts and its
 * container pool; a router (skiffd --role router) and a controller announce their address.
 * From what it hears, every host routes each other host's pool via that host's address
 * (net_peer_routes_set) and lets the routers and controllers among them open connections to
 * its own instances (net_firewall_peer_sources); nobody else gets through. Entries expire
 * when not announced again within their TTL, and their routes and firewall entries go with
 * them. docs/bus.md "Hosts" is the wire format.
 *
 * Everything runs on the loop thread; errors are negative errno values with a sentence in err. */
#ifndef SKIFF_HOSTS_H
#define SKIFF_HOSTS_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "container/net.h"
#include "natsconn/natsconn.h"

enum hosts_role {
    HOSTS_CONTROLLER = 1 << 0, /* API, scheduler, invoker: delivers events to instances */
    HOSTS_CELL = 1 << 1,       /* runs instances in its pool */
    HOSTS_ROUTER = 1 << 2,     /* proxies requests to instances */
};

struct hosts_config {
    const char *nats_urls;
    struct natsconn_security security; /* read by hosts_start only */
    const char *addr;                  /* this host's IPv4 address between hosts */
    unsigned roles;                    /* enum hosts_role */
    const struct net_pool *pool;       /* HOSTS_CELL: the pool announced (copied) */
    int announce_ms;                   /* 0: SKIFF_HOSTS_ANNOUNCE_MS or 2000 */
    int ttl_ms;                        /* 0: SKIFF_HOSTS_TTL_MS or 10000 */
};

struct hosts;

/* Connects to NATS, announces this host (and asks the others to announce themselves at once),
 * and keeps the routes and the firewall up to date from then on. -EINVAL with the reason (an
 * address that is not IPv4, a cell without a pool, NATS settings that do not load). */
int hosts_start(uv_loop_t *loop, const struct hosts_config *cfg, struct hosts **out, char *err,
                size_t errsize);
/* Runs the loop until the other hosts had time to answer this one's first announcement (at
 * most timeout_ms), then says whether one of them announced a pool that overlaps this host's:
 * -EADDRINUSE, with a message naming both pools, that host and what to do. A cell calls it
 * before it starts any instance, and refuses to start on failure. Only hosts_start's handles
 * may be on the loop yet. 0 when NATS could not be reached in time (said in a warning). */
int hosts_settle(struct hosts *h, int timeout_ms, char *err, size_t errsize);
/* How many other hosts are known now (tests, logs). */
size_t hosts_count(const struct hosts *h);
/* Stops announcing and closes the connection; the routes and firewall entries stay (the
 * instances keep serving across a restart) until the next hosts_start sets them. */
void hosts_stop(struct hosts *h);

#endif
