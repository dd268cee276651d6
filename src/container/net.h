/* net: the network of containers. Each container has a slot in an address pool; slot N is
 * a veth pair, the host end "skv<N>" and the container end "eth0" in the container's own
 * network namespace, on a /30 of its own (host end .1, container end .2 of that /30), so
 * containers never share a link. The kernel is the arbiter of slots: creating "skv<N>"
 * claims slot N host-wide (several skiffd on one machine never collide), and the pair goes
 * away by itself when the container's network namespace dies.
 *
 * A host firewall (one nftables table "skiff", shared by every skiffd of the machine) lets
 * a container reach only: the publish endpoints registered with net_firewall_allow_publish,
 * replies to connections the host opened to it (the router, health checks, the invoker),
 * and, when egress is on, addresses outside the private ranges through NAT (plus the
 * host's DNS resolvers on port 53). Containers never reach each other, the host's other
 * ports, or private networks.
 *
 * All calls need CAP_NET_ADMIN (skiffd and skiff-init run as root). Errors are negative
 * errno values with a message for the user in err. */
#ifndef SKIFF_CONTAINER_NET_H
#define SKIFF_CONTAINER_NET_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>

#define NET_DEFAULT_POOL "10.244.0.0/16"
#define NET_HOST_IFNAME_PREFIX "skv"

struct net_pool {
    struct in_addr base; /* network address, host byte order kept in base.s_addr as usual
                            (network order) */
    int prefix;          /* 8..24 */
};

/* Parses "A.B.C.D/P" (P from 8 to 24). */
int net_pool_parse(const char *cidr, struct net_pool *out, char *err, size_t errlen);
/* How many slots the pool holds (one /30 each); the last slot is reserved for the publish
 * address, so valid slots are 0 .. net_pool_slots()-1. */
int net_pool_slots(const struct net_pool *pool);
/* The host end's and the container end's addresses of a slot. */
void net_slot_addresses(const struct net_pool *pool, int slot, struct in_addr *host,
                        struct in_addr *container);
/* The address instances publish events to: the last usable address of the pool, put on a
 * dummy interface "skiff0" on the host by net_host_setup (on lo, labelled "lo:skiff", when
 * the kernel has no dummy interfaces). */
struct in_addr net_publish_address(const struct net_pool *pool);
/* Whether the host interface of that slot exists (someone holds the slot). */
bool net_slot_in_use(int slot);
/* Claims a slot on this machine (its network namespace) until net_slot_release or the
 * process's end: 0, or -EBUSY when its interface exists or another process claimed it and has
 * not made the interface yet (two skiffds on one machine never pick the same free slot).
 * Claims live in NET_SLOT_CLAIMS_DIR; without it (not root) the interface check alone. */
#define NET_SLOT_CLAIMS_DIR "/run/skiff"
int net_slot_claim(int slot);
void net_slot_release(int slot);

/* Claims the slot and wires the container's network namespace (the one of process pid):
 * creates the pair, host end "skv<slot>" with host/30 up (IPv6 off on it), the other end
 * moved into pid's namespace, renamed eth0, container/30, up, lo up, default route via the
 * host end, IPv6 off. -EEXIST when the slot is taken. */
int net_attach(const struct net_pool *pool, int slot, int pid, char *err, size_t errlen);
/* Removes the host end of a slot (when the namespace still lives); -ENODEV when gone. */
int net_detach(int slot);

/* Once per skiffd start: the dummy interface with the publish address, and the firewall
 * table (created or brought up to date atomically; other skiffds' entries are kept).
 * egress: let containers of this pool reach public addresses through NAT (the choice is
 * kept per pool, so pools of skiffds on one machine must be identical or disjoint; sets
 * net.ipv4.ip_forward, and when it was 0 before, forwarding of anything that does not come
 * from or go to a container is dropped, as it was). Runs nft (package nftables). */
int net_host_setup(const struct net_pool *pool, bool egress, char *err, size_t errlen);
/* Lets containers connect to the publish address on port (a skiffd's publish listener);
 * net_firewall_forget_publish takes it back (skiffd's exit). */
int net_firewall_allow_publish(const struct net_pool *pool, int port, char *err, size_t errlen);
int net_firewall_forget_publish(const struct net_pool *pool, int port);

/* ---- other hosts (src/hosts: who announced what on NATS) ----
 * Instances of one host are reached from another host's router or invoker through the
 * network between hosts: each host routes every other host's pool via that host's address,
 * and lets in, towards its own instances, new TCP connections only from the addresses of
 * hosts that run a router or a controller. */

#define NET_POOL_STRLEN (INET_ADDRSTRLEN + 4)
/* The protocol number of the routes net_peer_routes_set makes (`ip route show proto 83`). */
#define NET_RTPROT_PEER 83

/* Whether two pools share an address. */
bool net_pool_overlaps(const struct net_pool *a, const struct net_pool *b);
/* "A.B.C.D/P". */
void net_pool_format(const struct net_pool *pool, char out[NET_POOL_STRLEN]);

struct net_peer_route {
    struct net_pool pool; /* another host's instances */
    struct in_addr via;   /* that host's address on the network between hosts */
};
/* Makes the main routing table hold exactly these routes to other hosts' pools: each one that
 * is missing or goes via another address is set (a link that went down and up lost it), one
 * already there is not written again, and a route an earlier call made that is not in the list
 * is removed. Idempotent: call it with the whole list whenever it may have changed, and now and
 * then. One caller per network namespace (host). The number of routes set or removed, or the
 * first failure (the others are still tried). */
int net_peer_routes_set(const struct net_peer_route *routes, size_t n, char *err, size_t errlen);
/* Sets the addresses that may open TCP connections to this host's instances through it (the
 * firewall's peer_sources set, replaced whole in one transaction); turns IPv4 forwarding on
 * when the list is not empty (recorded as egress does, so that nothing else is forwarded that
 * was not before). Everything else forwarded towards an instance is dropped. */
int net_firewall_peer_sources(const struct in_addr *sources, size_t n, char *err, size_t errlen);

#endif
