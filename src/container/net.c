/* net: see net.h.
 *
 * Links, addresses and routes go through rtnetlink requests built by hand (a few fixed
 * messages; no libnl). net_attach is on every container's start path, so it batches: one
 * request creates the pair (host end here, the other end "eth0" straight in the container's
 * namespace), one batch configures the host end, and one batch, sent on a socket opened
 * inside the container's namespace, configures the inside. The firewall is one `nft -f -`
 * transaction per skiffd start. See README.md. */
#include "container/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_link.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/if.h>
#include <sched.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/buf.h"
#include "common/util.h"

#define NET_CONTAINER_IFNAME "eth0"
#define NET_PUBLISH_IFNAME "skiff0"
#define NET_NFT_TABLE "skiff"

static void net__err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void net__err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- pool arithmetic ------------------------------------------------------------------ */

int net_pool_parse(const char *cidr, struct net_pool *out, char *err, size_t errlen)
{
    char addr[INET_ADDRSTRLEN];
    const char *slash = cidr ? strchr(cidr, '/') : NULL;
    if (!slash || (size_t)(slash - cidr) >= sizeof(addr)) {
        net__err(err, errlen, "address pool '%s' is not of the form A.B.C.D/P (e.g. %s)",
                 cidr ? cidr : "", NET_DEFAULT_POOL);
        return -EINVAL;
    }
    memcpy(addr, cidr, (size_t)(slash - cidr));
    addr[slash - cidr] = '\0';
    struct in_addr base;
    if (inet_pton(AF_INET, addr, &base) != 1) {
        net__err(err, errlen, "address pool '%s': '%s' is not an IPv4 address", cidr, addr);
        return -EINVAL;
    }
    char *end;
    errno = 0;
    long prefix = strtol(slash + 1, &end, 10);
    if (errno || end == slash + 1 || *end || prefix < 8 || prefix > 24) {
        net__err(err, errlen, "address pool '%s': the prefix length must be 8 to 24", cidr);
        return -EINVAL;
    }
    uint32_t mask = ~0u << (32 - prefix);
    if (ntohl(base.s_addr) & ~mask) {
        struct in_addr net = {htonl(ntohl(base.s_addr) & mask)};
        char fixed[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &net, fixed, sizeof(fixed));
        net__err(err, errlen, "address pool '%s' has host bits set; did you mean %s/%ld?", cidr,
                 fixed, prefix);
        return -EINVAL;
    }
    out->base = base;
    out->prefix = (int)prefix;
    return 0;
}

int net_pool_slots(const struct net_pool *pool)
{
    return (int)((1u << (32 - pool->prefix)) / 4) - 1;
}

static struct in_addr net__pool_offset(const struct net_pool *pool, uint32_t offset)
{
    struct in_addr a = {htonl(ntohl(pool->base.s_addr) + offset)};
    return a;
}

void net_slot_addresses(const struct net_pool *pool, int slot, struct in_addr *host,
                        struct in_addr *container)
{
    if (host)
        *host = net__pool_offset(pool, (uint32_t)slot * 4 + 1);
    if (container)
        *container = net__pool_offset(pool, (uint32_t)slot * 4 + 2);
}

struct in_addr net_publish_address(const struct net_pool *pool)
{
    return net__pool_offset(pool, (1u << (32 - pool->prefix)) - 2);
}

static void net__host_ifname(int slot, char name[IFNAMSIZ])
{
    snprintf(name, IFNAMSIZ, NET_HOST_IFNAME_PREFIX "%d", slot);
}

bool net_slot_in_use(int slot)
{
    char name[IFNAMSIZ];
    net__host_ifname(slot, name);
    return if_nametoindex(name) != 0;
}

/* The file whose byte N is locked by the process holding slot N, one per network namespace
 * (whose interface names the slots share), opened once; -1 when there can be none (not root):
 * the interface check alone then stands, as it did. Open file description locks: another
 * skiffd's open conflicts, and the kernel lets go of them when their holder dies. */
static int net__claims_fd(void)
{
    static int fd = -2;
    if (fd != -2)
        return fd;
    fd = -1;
    struct stat st;
    if (stat("/proc/self/ns/net", &st) < 0 || mkdir_p(NET_SLOT_CLAIMS_DIR, 0700) < 0)
        return fd;
    char path[sizeof NET_SLOT_CLAIMS_DIR + 48];
    snprintf(path, sizeof path, NET_SLOT_CLAIMS_DIR "/net-slots-%llu.lock",
             (unsigned long long)st.st_ino);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        log_warning("cannot open %s (%s): network slots are claimed by their interface alone", path,
                    skiff_strerror(-errno));
    return fd;
}

static int net__claim_lock(int fd, int slot, short type)
{
    struct flock l = {.l_type = type, .l_whence = SEEK_SET, .l_start = slot, .l_len = 1};
    return fcntl(fd, F_OFD_SETLK, &l) < 0 ? -errno : 0;
}

int net_slot_claim(int slot)
{
    if (slot < 0 || net_slot_in_use(slot))
        return -EBUSY;
    int fd = net__claims_fd();
    if (fd < 0)
        return 0;
    int rc = net__claim_lock(fd, slot, F_WRLCK);
    if (rc == -EAGAIN || rc == -EACCES)
        return -EBUSY; /* another skiffd took it and has not made its interface yet */
    if (rc < 0)
        return 0;                /* locks unsupported here: the interface check stands */
    if (net_slot_in_use(slot)) { /* its holder made the interface, then let go */
        net__claim_lock(fd, slot, F_UNLCK);
        return -EBUSY;
    }
    return 0;
}

void net_slot_release(int slot)
{
    int fd = net__claims_fd();
    if (slot >= 0 && fd >= 0)
        net__claim_lock(fd, slot, F_UNLCK);
}

/* ---- rtnetlink requests --------------------------------------------------------------- */

/* A batch of requests sent with one sendmsg; every message asks for an acknowledgement. */
struct net__batch {
    _Alignas(struct nlmsghdr) unsigned char buf[1024];
    size_t len;
    struct nlmsghdr *msg; /* the message being built */
    int count;
    uint32_t first_seq;
};

static void *net__put(struct net__batch *b, size_t len)
{
    size_t aligned = NLMSG_ALIGN(len);
    if (b->len + aligned > sizeof(b->buf))
        abort(); /* every request here is a fixed handful of small attributes */
    void *p = b->buf + b->len;
    memset(p, 0, aligned);
    b->len += aligned;
    if (b->msg)
        b->msg->nlmsg_len = (uint32_t)(b->buf + b->len - (unsigned char *)b->msg);
    return p;
}

/* Starts a message with its fixed header (ifinfomsg, ifaddrmsg, rtmsg) copied from body. */
static void net__msg(struct net__batch *b, uint16_t type, uint16_t flags, const void *body,
                     size_t body_len)
{
    b->msg = NULL;
    struct nlmsghdr *h = net__put(b, NLMSG_HDRLEN);
    b->msg = h;
    h->nlmsg_type = type;
    h->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    h->nlmsg_seq = b->first_seq + (uint32_t)b->count++;
    memcpy(net__put(b, body_len), body, body_len);
}

static void net__attr(struct net__batch *b, uint16_t type, const void *data, size_t len)
{
    struct rtattr *a = net__put(b, RTA_LENGTH(len));
    a->rta_type = type;
    a->rta_len = (unsigned short)RTA_LENGTH(len);
    if (len)
        memcpy(RTA_DATA(a), data, len);
}

static void net__attr_str(struct net__batch *b, uint16_t type, const char *s)
{
    net__attr(b, type, s, strlen(s) + 1);
}

static void net__attr_u32(struct net__batch *b, uint16_t type, uint32_t v)
{
    net__attr(b, type, &v, sizeof(v));
}

static struct rtattr *net__nest(struct net__batch *b, uint16_t type)
{
    struct rtattr *a = net__put(b, RTA_LENGTH(0));
    a->rta_type = type;
    return a;
}

static void net__nest_end(struct net__batch *b, struct rtattr *nest)
{
    nest->rta_len = (unsigned short)(b->buf + b->len - (unsigned char *)nest);
}

/* A route socket in the calling thread's current network namespace. */
static int net__socket(void)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0)
        return -errno;
    int one = 1;
    /* acknowledgements without a copy of the request, and with the kernel's reason */
    setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
    setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one));
    return fd;
}

/* The kernel's own words about a failed request (extended ack), when it gave any. */
static void net__ext_ack_message(const struct nlmsghdr *h, char *out, size_t outlen)
{
    out[0] = '\0';
    if (!(h->nlmsg_flags & NLM_F_ACK_TLVS))
        return;
    const struct nlmsgerr *e = NLMSG_DATA(h);
    size_t off = NLMSG_HDRLEN + sizeof(*e);
    if (!(h->nlmsg_flags & NLM_F_CAPPED))
        off += e->msg.nlmsg_len - NLMSG_HDRLEN;
    const unsigned char *p = (const unsigned char *)h + off;
    const unsigned char *end = (const unsigned char *)h + h->nlmsg_len;
    while (p + sizeof(struct nlattr) <= end) {
        const struct nlattr *a = (const struct nlattr *)p;
        if (a->nla_len < sizeof(*a) || p + a->nla_len > end)
            return;
        if ((a->nla_type & NLA_TYPE_MASK) == NLMSGERR_ATTR_MSG) {
            snprintf(out, outlen, "%.*s", (int)(a->nla_len - sizeof(*a)), (const char *)(a + 1));
            return;
        }
        p += NLA_ALIGN(a->nla_len);
    }
}

/* Sends the batch and reads one acknowledgement per message. Returns 0 or the first
 * failure's negative errno; *failed is that message's index and why its kernel reason. */
static int net__send(int fd, struct net__batch *b, int *failed, char *why, size_t whylen)
{
    if (why && whylen)
        why[0] = '\0';
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    ssize_t n = sendto(fd, b->buf, b->len, 0, (struct sockaddr *)&kernel, sizeof(kernel));
    if (n < 0)
        return -errno;
    int acked = 0, rc = 0;
    _Alignas(struct nlmsghdr) unsigned char reply[8192];
    while (acked < b->count) {
        n = recv(fd, reply, sizeof(reply), 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return rc ? rc : -errno;
        }
        int len = (int)n;
        for (struct nlmsghdr *h = (struct nlmsghdr *)reply; len > 0 && NLMSG_OK(h, (unsigned)len);
             h = NLMSG_NEXT(h, len)) {
            if (h->nlmsg_type != NLMSG_ERROR || h->nlmsg_seq < b->first_seq ||
                h->nlmsg_seq >= b->first_seq + (uint32_t)b->count)
                continue;
            acked++;
            const struct nlmsgerr *e = NLMSG_DATA(h);
            if (e->error && !rc) {
                rc = e->error;
                if (failed)
                    *failed = (int)(h->nlmsg_seq - b->first_seq);
                if (why && whylen)
                    net__ext_ack_message(h, why, whylen);
            }
        }
    }
    b->first_seq += (uint32_t)b->count;
    b->count = 0;
    b->len = 0;
    b->msg = NULL;
    return rc;
}

static int net__ifindex(int fd, const char *name)
{
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
    /* any socket answers for its own namespace */
    if (ioctl(fd, SIOCGIFINDEX, &ifr) < 0)
        return -errno;
    return ifr.ifr_ifindex;
}

static void net__link_up(struct net__batch *b, int ifindex)
{
    struct ifinfomsg ifi = {
        .ifi_family = AF_UNSPEC, .ifi_index = ifindex, .ifi_flags = IFF_UP, .ifi_change = IFF_UP};
    net__msg(b, RTM_NEWLINK, 0, &ifi, sizeof(ifi));
}

static void net__addr_add(struct net__batch *b, int ifindex, struct in_addr addr, int prefix)
{
    struct ifaddrmsg ifa = {.ifa_family = AF_INET,
                            .ifa_prefixlen = (unsigned char)prefix,
                            .ifa_scope = RT_SCOPE_UNIVERSE,
                            .ifa_index = (unsigned)ifindex};
    net__msg(b, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &ifa, sizeof(ifa));
    net__attr(b, IFA_LOCAL, &addr, sizeof(addr));
    net__attr(b, IFA_ADDRESS, &addr, sizeof(addr));
}

static void net__default_route(struct net__batch *b, int ifindex, struct in_addr gateway)
{
    struct rtmsg rt = {.rtm_family = AF_INET,
                       .rtm_table = RT_TABLE_MAIN,
                       .rtm_protocol = RTPROT_STATIC,
                       .rtm_scope = RT_SCOPE_UNIVERSE,
                       .rtm_type = RTN_UNICAST};
    net__msg(b, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &rt, sizeof(rt));
    net__attr(b, RTA_GATEWAY, &gateway, sizeof(gateway));
    net__attr_u32(b, RTA_OIF, (uint32_t)ifindex);
}

static int net__link_delete(const char *name)
{
    int fd = net__socket();
    if (fd < 0)
        return fd;
    struct net__batch b = {.first_seq = 1};
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
    net__msg(&b, RTM_DELLINK, 0, &ifi, sizeof(ifi));
    net__attr_str(&b, IFLA_IFNAME, name);
    int rc = net__send(fd, &b, NULL, NULL, 0);
    close(fd);
    return rc;
}

/* Turns IPv6 off on an interface of the calling thread's current namespace (the sysctl file
 * belongs to the namespace it is opened in). A kernel without IPv6 has nothing to turn off. */
static int net__disable_ipv6(const char *ifname)
{
    char path[96];
    snprintf(path, sizeof(path), "/proc/sys/net/ipv6/conf/%s/disable_ipv6", ifname);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT && access("/proc/sys/net/ipv6", F_OK) != 0 ? 0 : -errno;
    int rc = write(fd, "1", 1) == 1 ? 0 : -errno;
    close(fd);
    return rc;
}

/* ---- attach ---------------------------------------------------------------------------- */

/* Inside the namespace of pid: turns IPv6 off on eth0 and returns a route socket of that
 * namespace. The calling thread is back in its own namespace on every return. */
static int net__enter(int pid, char *err, size_t errlen)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/ns/net", pid);
    int target = open(path, O_RDONLY | O_CLOEXEC);
    if (target < 0) {
        int rc = -errno;
        net__err(err, errlen, "cannot open the network namespace of process %d: %s", pid,
                 skiff_strerror(rc));
        return rc;
    }
    int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (self < 0) {
        int rc = -errno;
        close(target);
        net__err(err, errlen, "cannot open this thread's network namespace: %s",
                 skiff_strerror(rc));
        return rc;
    }
    int fd;
    if (setns(target, CLONE_NEWNET) < 0) {
        fd = -errno;
        net__err(err, errlen, "cannot enter the network namespace of process %d: %s", pid,
                 skiff_strerror(fd));
    } else {
        fd = net__socket();
        int rc = fd < 0 ? fd : net__disable_ipv6(NET_CONTAINER_IFNAME);
        if (rc < 0) {
            net__err(err, errlen, "in the network namespace of process %d: %s: %s", pid,
                     fd < 0 ? "cannot open a route socket" : "cannot turn IPv6 off on eth0",
                     skiff_strerror(rc));
            if (fd >= 0)
                close(fd);
            fd = rc;
        }
        /* Staying in the container's namespace would put every later socket of this thread
         * there: there is no sane way to carry on. */
        if (setns(self, CLONE_NEWNET) < 0) {
            log_error("net: cannot return to the caller's network namespace: %s",
                      skiff_strerror(-errno));
            abort();
        }
    }
    close(self);
    close(target);
    return fd;
}

/* A link's MAC address made from its IPv4 address (locally administered, unique per
 * address), so each end can be told the other's for good: no ARP on a link of two. Without
 * it the host's first SYNs, sent while the container's end is not up yet, make the neighbour
 * entry fail and the next connection wait for ARP's one-second retry. */
static void net__mac(struct in_addr addr, unsigned char mac[6])
{
    mac[0] = 0x02;
    mac[1] = 0x53;
    memcpy(mac + 2, &addr, 4);
}

static void net__neigh_add(struct net__batch *b, int ifindex, struct in_addr addr)
{
    struct ndmsg nd = {.ndm_family = AF_INET, .ndm_ifindex = ifindex, .ndm_state = NUD_PERMANENT};
    net__msg(b, RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, &nd, sizeof(nd));
    net__attr(b, NDA_DST, &addr, sizeof(addr));
    unsigned char mac[6];
    net__mac(addr, mac);
    net__attr(b, NDA_LLADDR, mac, sizeof(mac));
}

static int net__attach_inside(int pid, struct in_addr host, struct in_addr container, char *err,
                              size_t errlen)
{
    int fd = net__enter(pid, err, errlen);
    if (fd < 0)
        return fd;
    int rc, ifindex = net__ifindex(fd, NET_CONTAINER_IFNAME);
    if (ifindex < 0) {
        rc = ifindex;
        net__err(err, errlen, "eth0 is missing in the network namespace of process %d: %s", pid,
                 skiff_strerror(rc));
        goto out;
    }
    struct net__batch b = {.first_seq = 1};
    net__link_up(&b, 1); /* lo is always index 1 */
    net__link_up(&b, ifindex);
    net__addr_add(&b, ifindex, container, 30);
    net__default_route(&b, ifindex, host);
    net__neigh_add(&b, ifindex, host);
    int failed = 0;
    char why[128];
    rc = net__send(fd, &b, &failed, why, sizeof(why));
    if (rc < 0) {
        static const char *const step[] = {"bring lo up", "bring eth0 up",
                                           "add the address to eth0", "add the default route",
                                           "add the host's neighbour entry"};
        net__err(err, errlen, "cannot %s in the network namespace of process %d: %s%s%s",
                 failed >= 0 && failed < (int)ARRAY_SIZE(step) ? step[failed] : "configure", pid,
                 skiff_strerror(rc), why[0] ? ": " : "", why);
    }
out:
    close(fd);
    return rc;
}

int net_attach(const struct net_pool *pool, int slot, int pid, char *err, size_t errlen)
{
    if (slot < 0 || slot >= net_pool_slots(pool)) {
        net__err(err, errlen, "slot %d is outside the address pool (0 to %d)", slot,
                 net_pool_slots(pool) - 1);
        return -EINVAL;
    }
    if (pid <= 0) {
        net__err(err, errlen, "no process to attach the network of (pid %d)", pid);
        return -EINVAL;
    }
    char host_if[IFNAMSIZ];
    net__host_ifname(slot, host_if);
    struct in_addr host, container;
    net_slot_addresses(pool, slot, &host, &container);

    int fd = net__socket();
    if (fd < 0) {
        net__err(err, errlen, "cannot open a route socket: %s", skiff_strerror(fd));
        return fd;
    }
    /* The pair, with the container end created straight in pid's namespace as eth0. */
    struct net__batch b = {.first_seq = 1};
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
    net__msg(&b, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifi, sizeof(ifi));
    net__attr_str(&b, IFLA_IFNAME, host_if);
    unsigned char host_mac[6], container_mac[6];
    net__mac(host, host_mac);
    net__mac(container, container_mac);
    net__attr(&b, IFLA_ADDRESS, host_mac, sizeof(host_mac));
    struct rtattr *linkinfo = net__nest(&b, IFLA_LINKINFO);
    net__attr_str(&b, IFLA_INFO_KIND, "veth");
    struct rtattr *data = net__nest(&b, IFLA_INFO_DATA);
    struct rtattr *peer = net__nest(&b, VETH_INFO_PEER);
    memcpy(net__put(&b, sizeof(ifi)), &ifi, sizeof(ifi));
    net__attr_str(&b, IFLA_IFNAME, NET_CONTAINER_IFNAME);
    net__attr(&b, IFLA_ADDRESS, container_mac, sizeof(container_mac));
    net__attr_u32(&b, IFLA_NET_NS_PID, (uint32_t)pid);
    net__nest_end(&b, peer);
    net__nest_end(&b, data);
    net__nest_end(&b, linkinfo);
    char why[128];
    int rc = net__send(fd, &b, NULL, why, sizeof(why));
    if (rc == -EEXIST) {
        if (net_slot_in_use(slot))
            net__err(err, errlen, "slot %d is taken: %s already exists", slot, host_if);
        else
            net__err(err, errlen, "the network namespace of process %d already has an eth0", pid);
        close(fd);
        return rc;
    }
    if (rc < 0) {
        net__err(err, errlen, "cannot create the veth pair %s: %s%s%s", host_if,
                 rc == -ESRCH ? "no such process" : skiff_strerror(rc), why[0] ? ": " : "", why);
        close(fd);
        return rc;
    }

    /* The host end: IPv6 off before it is up (no link-local address, no solicitations). */
    int ifindex = net__ifindex(fd, host_if);
    rc = ifindex < 0 ? ifindex : net__disable_ipv6(host_if);
    if (rc < 0) {
        net__err(err, errlen, "cannot turn IPv6 off on %s: %s", host_if, skiff_strerror(rc));
        goto fail;
    }
    net__addr_add(&b, ifindex, host, 30);
    net__link_up(&b, ifindex);
    net__neigh_add(&b, ifindex, container);
    rc = net__send(fd, &b, NULL, why, sizeof(why));
    if (rc < 0) {
        net__err(err, errlen, "cannot configure %s: %s%s%s", host_if, skiff_strerror(rc),
                 why[0] ? ": " : "", why);
        goto fail;
    }
    rc = net__attach_inside(pid, host, container, err, errlen);
    if (rc < 0)
        goto fail;
    close(fd);
    return 0;

fail:
    close(fd);
    net__link_delete(host_if); /* gives the slot back */
    return rc;
}

int net_detach(int slot)
{
    char host_if[IFNAMSIZ];
    net__host_ifname(slot, host_if);
    return net__link_delete(host_if);
}

/* ---- host set-up and firewall ----------------------------------------------------------- */

/* The dummy interface holding the publish address: created once per machine, shared. A
 * kernel built without dummy interfaces gets the address on lo instead (labelled
 * "lo:skiff"): any local address serves, the firewall matches the address, not the link. */
static int net__publish_interface(const struct net_pool *pool, char *err, size_t errlen)
{
    int fd = net__socket();
    if (fd < 0) {
        net__err(err, errlen, "cannot open a route socket: %s", skiff_strerror(fd));
        return fd;
    }
    char why[128];
    const char *ifname = NET_PUBLISH_IFNAME;
    struct net__batch b = {.first_seq = 1};
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
    net__msg(&b, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifi, sizeof(ifi));
    net__attr_str(&b, IFLA_IFNAME, ifname);
    struct rtattr *linkinfo = net__nest(&b, IFLA_LINKINFO);
    net__attr_str(&b, IFLA_INFO_KIND, "dummy");
    net__nest_end(&b, linkinfo);
    int rc = net__send(fd, &b, NULL, why, sizeof(why));
    if (rc == -EOPNOTSUPP)
        ifname = "lo";
    else if (rc < 0 && rc != -EEXIST) {
        net__err(err, errlen, "cannot create the interface %s: %s%s%s", ifname, skiff_strerror(rc),
                 why[0] ? ": " : "", why);
        goto out;
    }
    bool on_lo = strcmp(ifname, "lo") == 0;
    int ifindex = net__ifindex(fd, ifname);
    rc = ifindex < 0 ? ifindex : on_lo ? 0 : net__disable_ipv6(ifname);
    if (rc < 0) {
        net__err(err, errlen, "cannot turn IPv6 off on %s: %s", ifname, skiff_strerror(rc));
        goto out;
    }
    net__addr_add(&b, ifindex, net_publish_address(pool), 32);
    if (on_lo)
        net__attr_str(&b, IFA_LABEL, "lo:skiff");
    net__link_up(&b, ifindex);
    int failed = 0;
    rc = net__send(fd, &b, &failed, why, sizeof(why));
    if (rc == -EEXIST && failed == 0) { /* the address is there already; bring it up */
        net__link_up(&b, ifindex);
        rc = net__send(fd, &b, NULL, why, sizeof(why));
    }
    if (rc < 0)
        net__err(err, errlen, "cannot configure %s: %s%s%s", ifname, skiff_strerror(rc),
                 why[0] ? ": " : "", why);
out:
    close(fd);
    return rc;
}

/* Runs `nft -f -` with script on its stdin: the whole script is one transaction. */
static int net__nft(const char *script, char *err, size_t errlen)
{
    const char *nft = access("/usr/sbin/nft", X_OK) == 0 ? "/usr/sbin/nft"
                      : access("/sbin/nft", X_OK) == 0   ? "/sbin/nft"
                                                         : "nft";
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) < 0)
        return -errno;
    if (pipe2(out, O_CLOEXEC) < 0) {
        int rc = -errno;
        close(in[0]);
        close(in[1]);
        return rc;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, out[1], 2);
    char *argv[] = {(char *)nft, "-f", "-", NULL};
    char *envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", NULL};
    pid_t pid;
    int rc = posix_spawnp(&pid, nft, &fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    close(in[0]);
    close(out[1]);
    if (rc != 0) {
        close(in[1]);
        close(out[0]);
        net__err(err, errlen, "cannot run nft: %s (install the nftables package)",
                 skiff_strerror(-rc));
        return -rc;
    }
    /* nft reads its whole input before it writes anything */
    size_t len = strlen(script), off = 0;
    while (off < len) {
        ssize_t n = write(in[1], script + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    close(in[1]);
    struct buf output = {0};
    char chunk[1024];
    for (;;) {
        ssize_t n = read(out[0], chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        buf_append(&output, chunk, (size_t)n);
    }
    close(out[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    rc = 0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        while (output.len && (output.data[output.len - 1] == '\n'))
            output.data[--output.len] = '\0';
        net__err(err, errlen, "the firewall update (nft) failed: %s",
                 output.len ? output.data : "no output");
        rc = -EIO;
    }
    buf_free(&output);
    return rc;
}

/* The IPv4 nameservers of the host that a container may reach on port 53 (loopback ones
 * are the host's own stubs, which forwarding can never reach). */
static void net__resolvers(struct buf *out)
{
    static const char *const files[] = {"/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"};
    for (size_t i = 0; i < ARRAY_SIZE(files) && out->len == 0; i++) {
        FILE *f = fopen(files[i], "re");
        if (!f)
            continue;
        char line[256];
        while (fgets(line, sizeof(line), f)) {
            char name[64];
            struct in_addr a;
            if (sscanf(line, " nameserver %63s", name) != 1 || inet_pton(AF_INET, name, &a) != 1)
                continue;
            if ((ntohl(a.s_addr) >> 24) == 127)
                continue;
            buf_printf(out, "%s%s", out->len ? ", " : "", name);
        }
        fclose(f);
    }
}

/* The table's declarations: adding what exists already changes nothing. */
static const char net__nft_declare[] =
    "add table inet " NET_NFT_TABLE "\n"
    "add set inet " NET_NFT_TABLE " publish { type ipv4_addr . inet_service; }\n"
    "add set inet " NET_NFT_TABLE " egress_pools { type ipv4_addr; flags interval; }\n"
    /* holds ipv4 once a skiffd turned forwarding on: what was not forwarded before is not */
    "add set inet " NET_NFT_TABLE " forwarding_was_off { type nf_proto; }\n"
    /* the hosts whose routers and controllers may open connections to this host's instances */
    "add set inet " NET_NFT_TABLE " peer_sources { type ipv4_addr; }\n";

/* Destinations a container never reaches through egress: private, shared, loopback,
 * link-local, documentation, benchmark, multicast and reserved ranges. */
#define NET_PRIVATE_RANGES                                                                         \
    "0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, "           \
    "192.0.0.0/24, 192.0.2.0/24, 192.168.0.0/16, 198.18.0.0/15, 198.51.100.0/24, "                 \
    "203.0.113.0/24, 224.0.0.0/4, 240.0.0.0/4"

static int net__read_ip_forward(void)
{
    char *data;
    if (file_read("/proc/sys/net/ipv4/ip_forward", &data, NULL) < 0)
        return -1;
    int v = atoi(data);
    free(data);
    return v;
}

/* Turns IPv4 forwarding on (the forwarding_was_off element was added before, in the same
 * transaction as the rules, when it was off); why names what needs it. */
static int net__forwarding_on(const char *why, char *err, size_t errlen)
{
    if (net__read_ip_forward() == 1)
        return 0;
    int fd = open("/proc/sys/net/ipv4/ip_forward", O_WRONLY | O_CLOEXEC);
    int rc = fd < 0 ? -errno : write(fd, "1", 1) == 1 ? 0 : -errno;
    if (fd >= 0)
        close(fd);
    if (rc < 0)
        net__err(err, errlen, "cannot turn on IPv4 forwarding for %s: %s", why, skiff_strerror(rc));
    return rc;
}

/* The whole pool is unreachable from the host except through a slot's own link (whose /30
 * route is more specific): a connection to an address whose container is not (or no longer)
 * there fails at once instead of following the default route off the machine. */
static int net__pool_unreachable(const struct net_pool *pool, char *err, size_t errlen)
{
    int fd = net__socket();
    if (fd < 0) {
        net__err(err, errlen, "cannot open a route socket: %s", skiff_strerror(fd));
        return fd;
    }
    struct net__batch b = {.first_seq = 1};
    struct rtmsg rt = {.rtm_family = AF_INET,
                       .rtm_dst_len = (unsigned char)pool->prefix,
                       .rtm_table = RT_TABLE_MAIN,
                       .rtm_protocol = RTPROT_STATIC,
                       .rtm_scope = RT_SCOPE_UNIVERSE,
                       .rtm_type = RTN_UNREACHABLE};
    net__msg(&b, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &rt, sizeof(rt));
    net__attr(&b, RTA_DST, &pool->base, sizeof(pool->base));
    char why[128] = "";
    int rc = net__send(fd, &b, NULL, why, sizeof(why));
    close(fd);
    if (rc == -EEXIST)
        rc = 0; /* another skiffd of this pool made it */
    if (rc < 0)
        net__err(err, errlen, "cannot add the pool's unreachable route: %s%s%s", skiff_strerror(rc),
                 why[0] ? ": " : "", why);
    return rc;
}

int net_host_setup(const struct net_pool *pool, bool egress, char *err, size_t errlen)
{
    int rc = net__publish_interface(pool, err, errlen);
    if (rc == 0)
        rc = net__pool_unreachable(pool, err, errlen);
    if (rc < 0)
        return rc;

    char pool_cidr[INET_ADDRSTRLEN + 4];
    inet_ntop(AF_INET, &pool->base, pool_cidr, INET_ADDRSTRLEN);
    snprintf(pool_cidr + strlen(pool_cidr), 4, "/%d", pool->prefix);
    struct buf resolvers = {0};
    net__resolvers(&resolvers);

    struct buf s = {0};
    buf_printf(&s, "%s", net__nft_declare);
    buf_printf(&s, "add chain inet skiff input { type filter hook input priority filter - 10; "
                   "policy accept; }\n"
                   "add chain inet skiff forward { type filter hook forward priority filter - 10; "
                   "policy accept; }\n"
                   "add chain inet skiff postrouting { type nat hook postrouting priority srcnat + "
                   "10; policy accept; }\n"
                   "flush chain inet skiff input\n"
                   "flush chain inet skiff forward\n"
                   "flush chain inet skiff postrouting\n");
    /* This pool's egress choice; add-then-delete removes it whether or not it was there. */
    buf_printf(&s, "add element inet skiff egress_pools { %s }\n", pool_cidr);
    if (!egress)
        buf_printf(&s, "delete element inet skiff egress_pools { %s }\n", pool_cidr);
    if (egress && net__read_ip_forward() == 0)
        buf_printf(&s, "add element inet skiff forwarding_was_off { ipv4 }\n");

    /* From a container to the host: replies, the publish endpoints and (with egress) DNS. */
    buf_printf(&s, "add rule inet skiff input iifname != \"skv*\" accept\n"
                   "add rule inet skiff input ct state established,related accept\n"
                   "add rule inet skiff input meta l4proto tcp ip daddr . tcp dport @publish "
                   "accept\n");
    if (resolvers.len)
        buf_printf(&s,
                   "add rule inet skiff input ip saddr @egress_pools ip daddr { %s } "
                   "meta l4proto { tcp, udp } th dport 53 accept\n",
                   resolvers.data);
    buf_printf(&s, "add rule inet skiff input drop\n");

    /* Through the host: never between containers, into one only as replies, out of one
     * only with egress (DNS to the resolvers, anything else if not private). */
    buf_printf(&s, "add rule inet skiff forward iifname \"skv*\" oifname \"skv*\" drop\n"
                   "add rule inet skiff forward oifname \"skv*\" ct state established,related "
                   "accept\n"
                   /* replies of an instance to a peer host's router or controller */
                   "add rule inet skiff forward iifname \"skv*\" ct state established,related "
                   "accept\n"
                   /* a peer host's router or invoker opening a connection to an instance */
                   "add rule inet skiff forward oifname \"skv*\" ip saddr @peer_sources "
                   "meta l4proto tcp ct state new accept\n"
                   "add rule inet skiff forward oifname \"skv*\" drop\n");
    if (resolvers.len)
        buf_printf(&s,
                   "add rule inet skiff forward iifname \"skv*\" ip saddr @egress_pools "
                   "ip daddr { %s } meta l4proto { tcp, udp } th dport 53 accept\n",
                   resolvers.data);
    buf_printf(&s, "add rule inet skiff forward iifname \"skv*\" ip saddr @egress_pools "
                   "ip daddr != { " NET_PRIVATE_RANGES " } accept\n"
                   "add rule inet skiff forward iifname \"skv*\" drop\n"
                   "add rule inet skiff forward meta nfproto @forwarding_was_off drop\n"
                   "add rule inet skiff postrouting ip saddr @egress_pools oifname != \"skv*\" "
                   "masquerade\n");
    buf_free(&resolvers);

    rc = net__nft(s.data, err, errlen);
    buf_free(&s);
    if (rc < 0)
        return rc;
    return egress ? net__forwarding_on("egress", err, errlen) : 0;
}

static int net__publish_element(const struct net_pool *pool, int port, bool allow, char *err,
                                size_t errlen)
{
    if (port <= 0 || port > 65535) {
        net__err(err, errlen, "publish port %d is not a TCP port", port);
        return -EINVAL;
    }
    char addr[INET_ADDRSTRLEN];
    struct in_addr publish = net_publish_address(pool);
    inet_ntop(AF_INET, &publish, addr, sizeof(addr));
    /* add first, so that taking back an element that is not there is not an error */
    struct buf script = {0};
    buf_printf(&script, "%sadd element inet skiff publish { %s . %d }\n", net__nft_declare, addr,
               port);
    if (!allow)
        buf_printf(&script, "delete element inet skiff publish { %s . %d }\n", addr, port);
    int rc = net__nft(script.data, err, errlen);
    buf_free(&script);
    return rc;
}

int net_firewall_allow_publish(const struct net_pool *pool, int port, char *err, size_t errlen)
{
    return net__publish_element(pool, port, true, err, errlen);
}

int net_firewall_forget_publish(const struct net_pool *pool, int port)
{
    return net__publish_element(pool, port, false, NULL, 0);
}

/* ---- peer hosts: their pools routed, their routers and controllers let in ---------------- */

bool net_pool_overlaps(const struct net_pool *a, const struct net_pool *b)
{
    int prefix = a->prefix < b->prefix ? a->prefix : b->prefix;
    uint32_t mask = ~0u << (32 - prefix);
    return (ntohl(a->base.s_addr) & mask) == (ntohl(b->base.s_addr) & mask);
}

void net_pool_format(const struct net_pool *pool, char out[NET_POOL_STRLEN])
{
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &pool->base, ip, sizeof ip);
    snprintf(out, NET_POOL_STRLEN, "%s/%d", ip, pool->prefix);
}

static bool net__same_pool(const struct net_pool *a, const struct net_pool *b)
{
    return a->prefix == b->prefix && a->base.s_addr == b->base.s_addr;
}

static void net__peer_route_msg(struct net__batch *b, uint16_t type, uint16_t flags,
                                const struct net_pool *pool, const struct in_addr *via)
{
    struct rtmsg rt = {.rtm_family = AF_INET,
                       .rtm_dst_len = (unsigned char)pool->prefix,
                       .rtm_table = RT_TABLE_MAIN,
                       .rtm_protocol = NET_RTPROT_PEER,
                       .rtm_scope = RT_SCOPE_UNIVERSE,
                       .rtm_type = RTN_UNICAST};
    net__msg(b, type, flags, &rt, sizeof(rt));
    net__attr(b, RTA_DST, &pool->base, sizeof(pool->base));
    if (via)
        net__attr(b, RTA_GATEWAY, via, sizeof(*via));
}

/* The routes of the main table that an earlier net_peer_routes_set made (their protocol is
 * NET_RTPROT_PEER), with their gateway, in *out (the caller frees). */
static int net__peer_routes_dump(int fd, struct net_peer_route **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    struct {
        struct nlmsghdr h;
        struct rtmsg rt;
    } req = {.h = {.nlmsg_len = sizeof(req),
                   .nlmsg_type = RTM_GETROUTE,
                   .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP,
                   .nlmsg_seq = 1},
             .rt = {.rtm_family = AF_INET}};
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    if (sendto(fd, &req, sizeof(req), 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0)
        return -errno;
    _Alignas(struct nlmsghdr) unsigned char reply[16384];
    size_t cap = 0;
    for (;;) {
        ssize_t got = recv(fd, reply, sizeof(reply), 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return -errno;
        int len = (int)got;
        for (struct nlmsghdr *h = (struct nlmsghdr *)reply; NLMSG_OK(h, (unsigned)len);
             h = NLMSG_NEXT(h, len)) {
            if (h->nlmsg_type == NLMSG_DONE)
                return 0;
            if (h->nlmsg_type == NLMSG_ERROR) {
                const struct nlmsgerr *e = NLMSG_DATA(h);
                return e->error ? e->error : -EIO;
            }
            const struct rtmsg *rt = NLMSG_DATA(h);
            if (h->nlmsg_type != RTM_NEWROUTE || rt->rtm_protocol != NET_RTPROT_PEER ||
                rt->rtm_table != RT_TABLE_MAIN)
                continue;
            struct net_peer_route route = {.pool.prefix = rt->rtm_dst_len};
            int alen = (int)RTM_PAYLOAD(h);
            for (struct rtattr *a = RTM_RTA(rt); RTA_OK(a, alen); a = RTA_NEXT(a, alen)) {
                if (a->rta_type == RTA_DST && RTA_PAYLOAD(a) == sizeof(route.pool.base))
                    memcpy(&route.pool.base, RTA_DATA(a), sizeof(route.pool.base));
                else if (a->rta_type == RTA_GATEWAY && RTA_PAYLOAD(a) == sizeof(route.via))
                    memcpy(&route.via, RTA_DATA(a), sizeof(route.via));
            }
            if (*n == cap) {
                cap = cap ? cap * 2 : 8;
                *out = xrealloc(*out, cap * sizeof(**out));
            }
            (*out)[(*n)++] = route;
        }
    }
}

int net_peer_routes_set(const struct net_peer_route *routes, size_t n, char *err, size_t errlen)
{
    int fd = net__socket();
    if (fd < 0) {
        net__err(err, errlen, "cannot open a route socket: %s", skiff_strerror(fd));
        return fd;
    }
    struct net_peer_route *had = NULL;
    size_t n_had = 0;
    int rc = net__peer_routes_dump(fd, &had, &n_had), changed = 0;
    if (rc < 0)
        net__err(err, errlen, "cannot list the routes to other hosts' pools: %s",
                 skiff_strerror(rc));
    struct net__batch b = {.first_seq = 2};
    char why[128], cidr[NET_POOL_STRLEN];
    for (size_t i = 0; rc == 0 && i < n_had; i++) {
        bool wanted = false;
        for (size_t k = 0; k < n && !wanted; k++)
            wanted = net__same_pool(&routes[k].pool, &had[i].pool);
        if (wanted)
            continue;
        net__peer_route_msg(&b, RTM_DELROUTE, 0, &had[i].pool, NULL);
        int r = net__send(fd, &b, NULL, why, sizeof(why));
        changed += r == 0;
        if (r < 0 && r != -ESRCH) {
            net_pool_format(&had[i].pool, cidr);
            net__err(err, errlen, "cannot remove the route to %s: %s%s%s", cidr, skiff_strerror(r),
                     why[0] ? ": " : "", why);
            rc = r;
        }
    }
    /* every route missing from the table is set again (a link that went down took its routes
     * with it); one already there as wanted is left alone: a write waits for the kernel's
     * routing lock (RTNL), which every container's start takes too, and this runs on the
     * caller's event loop at each of its announce intervals */
    for (size_t i = 0; i < n; i++) {
        bool there = false;
        for (size_t k = 0; k < n_had && rc == 0 && !there; k++)
            there = net__same_pool(&routes[i].pool, &had[k].pool) &&
                    routes[i].via.s_addr == had[k].via.s_addr;
        if (there)
            continue;
        net__peer_route_msg(&b, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &routes[i].pool,
                            &routes[i].via);
        int r = net__send(fd, &b, NULL, why, sizeof(why));
        changed += r == 0;
        if (r < 0 && rc == 0) {
            char via[INET_ADDRSTRLEN];
            net_pool_format(&routes[i].pool, cidr);
            inet_ntop(AF_INET, &routes[i].via, via, sizeof via);
            net__err(err, errlen, "cannot route %s via %s: %s%s%s", cidr, via, skiff_strerror(r),
                     why[0] ? ": " : "", why);
            rc = r;
        }
    }
    free(had);
    close(fd);
    return rc < 0 ? rc : changed;
}

int net_firewall_peer_sources(const struct in_addr *sources, size_t n, char *err, size_t errlen)
{
    struct buf s = {0};
    bool forwarding_off = n > 0 && net__read_ip_forward() == 0;
    buf_printf(&s, "%sflush set inet skiff peer_sources\n", net__nft_declare);
    for (size_t i = 0; i < n; i++) {
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &sources[i], ip, sizeof ip);
        buf_printf(&s, "add element inet skiff peer_sources { %s }\n", ip);
    }
    if (forwarding_off)
        buf_printf(&s, "add element inet skiff forwarding_was_off { ipv4 }\n");
    int rc = net__nft(s.data, err, errlen);
    buf_free(&s);
    if (rc == 0 && n > 0)
        rc = net__forwarding_on("other hosts' routers", err, errlen);
    return rc;
}
