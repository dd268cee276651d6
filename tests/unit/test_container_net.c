/* Unit tests for container/net. The test process first moves into a network namespace of
 * its own, which plays the host: its links, firewall table and ip_forward are private, and
 * it has no link to anything outside, so no packet of these tests can leave the machine.
 * "Containers" are children that unshare a network namespace and wait on a pipe. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "container/net.h"

#define TEST_POOL "10.245.0.0/24"
#define PUBLISH_PORT 4005
#define APP_PORT 8080

static struct net_pool pool;

/* ---- namespaces ----------------------------------------------------------------------- */

struct ns {
    pid_t pid;
    int hold; /* closing it ends the child */
};

static struct ns ns_spawn(void)
{
    int ready[2], hold[2];
    assert_int_equal(pipe2(ready, O_CLOEXEC), 0);
    assert_int_equal(pipe2(hold, O_CLOEXEC), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        alarm(60); /* never outlives a stuck test */
        char c = unshare(CLONE_NEWNET) == 0 ? 'y' : 'n';
        if (write(ready[1], &c, 1) != 1)
            _exit(1);
        close(hold[1]);
        while (read(hold[0], &c, 1) > 0)
            ;
        _exit(0);
    }
    close(ready[1]);
    close(hold[0]);
    struct pollfd p = {.fd = ready[0], .events = POLLIN};
    assert_int_equal(poll(&p, 1, 5000), 1);
    char c = 0;
    assert_int_equal(read(ready[0], &c, 1), 1);
    assert_int_equal(c, 'y');
    close(ready[0]);
    return (struct ns){.pid = pid, .hold = hold[1]};
}

static void ns_stop(struct ns *ns)
{
    close(ns->hold);
    int status;
    for (int i = 0; i < 500; i++) {
        if (waitpid(ns->pid, &status, WNOHANG) == ns->pid)
            return;
        usleep(10000);
    }
    kill(ns->pid, SIGKILL);
    waitpid(ns->pid, &status, 0);
}

/* Moves the calling thread into pid's network namespace; returns the way back. */
static int ns_enter(pid_t pid)
{
    int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    assert_true(self >= 0);
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/ns/net", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(setns(fd, CLONE_NEWNET), 0);
    close(fd);
    return self;
}

static void ns_leave(int self)
{
    assert_int_equal(setns(self, CLONE_NEWNET), 0);
    close(self);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- sockets (pid 0: the test's own "host" namespace) ----------------------------------- */

static struct sockaddr_in sa(const char *addr, int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    assert_int_equal(inet_pton(AF_INET, addr, &a.sin_addr), 1);
    return a;
}

static int tcp_socket_in(pid_t pid)
{
    int self = pid ? ns_enter(pid) : -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (pid)
        ns_leave(self);
    assert_true(fd >= 0);
    return fd;
}

static int tcp_listen(pid_t pid, const char *addr, int port)
{
    int fd = tcp_socket_in(pid);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = sa(addr, port);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 16), 0);
    return fd;
}

/* Whether a connection from pid's namespace to addr:port is established within timeout. */
static bool tcp_connects(pid_t pid, const char *addr, int port, int timeout_ms)
{
    int fd = tcp_socket_in(pid);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    struct sockaddr_in a = sa(addr, port);
    int rc = connect(fd, (struct sockaddr *)&a, sizeof(a));
    bool ok = rc == 0;
    if (rc < 0 && errno == EINPROGRESS) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, timeout_ms) == 1) {
            int soerr = 0;
            socklen_t len = sizeof(soerr);
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
            ok = soerr == 0;
        }
    }
    close(fd);
    return ok;
}

/* The peer address of the next connection on a listener, or "" within 2 s. */
static void accept_peer(int listener, char out[INET_ADDRSTRLEN])
{
    out[0] = '\0';
    struct pollfd p = {.fd = listener, .events = POLLIN};
    if (poll(&p, 1, 2000) != 1)
        return;
    struct sockaddr_in peer;
    socklen_t len = sizeof(peer);
    int fd = accept(listener, (struct sockaddr *)&peer, &len);
    if (fd < 0)
        return;
    inet_ntop(AF_INET, &peer.sin_addr, out, INET_ADDRSTRLEN);
    close(fd);
}

/* ---- interface facts -------------------------------------------------------------------- */

/* The IPv4 address and prefix of ifname in pid's namespace; false when it has none. */
static bool if_address(pid_t pid, const char *ifname, char addr[INET_ADDRSTRLEN], int *prefix,
                       bool *up)
{
    int self = pid ? ns_enter(pid) : -1;
    struct ifaddrs *all = NULL;
    int rc = getifaddrs(&all);
    if (pid)
        ns_leave(self);
    assert_int_equal(rc, 0);
    bool found = false;
    for (struct ifaddrs *i = all; i; i = i->ifa_next) {
        if (strcmp(i->ifa_name, ifname) != 0 || !i->ifa_addr || i->ifa_addr->sa_family != AF_INET)
            continue;
        inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, addr, INET_ADDRSTRLEN);
        uint32_t mask = ntohl(((struct sockaddr_in *)i->ifa_netmask)->sin_addr.s_addr);
        *prefix = __builtin_popcount(mask);
        *up = i->ifa_flags & IFF_UP;
        found = true;
        break;
    }
    freeifaddrs(all);
    return found;
}

static int read_int_in(pid_t pid, const char *path)
{
    int self = pid ? ns_enter(pid) : -1;
    char *data = NULL;
    int rc = file_read(path, &data, NULL);
    if (pid)
        ns_leave(self);
    if (rc < 0)
        return -1;
    int v = atoi(data);
    free(data);
    return v;
}

/* The default route's gateway in pid's namespace, as "A.B.C.D", or "". */
static void default_gateway(pid_t pid, char out[INET_ADDRSTRLEN], char ifname[IFNAMSIZ])
{
    out[0] = ifname[0] = '\0';
    int self = ns_enter(pid);
    FILE *f = fopen("/proc/thread-self/net/route", "re");
    ns_leave(self);
    assert_non_null(f);
    char line[256], name[IFNAMSIZ];
    unsigned dest, gw;
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "%15s %x %x", name, &dest, &gw) == 3 && dest == 0) {
            struct in_addr a = {gw};
            inet_ntop(AF_INET, &a, out, INET_ADDRSTRLEN);
            snprintf(ifname, IFNAMSIZ, "%s", name);
        }
    }
    fclose(f);
}

static bool wait_slot_free(int slot, int deadline_ms)
{
    double end = now_ms() + deadline_ms;
    while (now_ms() < end) {
        if (!net_slot_in_use(slot))
            return true;
        usleep(5000);
    }
    return !net_slot_in_use(slot);
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_pool_parsing_and_slots(void **state)
{
    (void)state;
    char err[256];
    struct net_pool p;
    assert_int_equal(net_pool_parse("10.244.0.0/16", &p, err, sizeof(err)), 0);
    assert_int_equal(p.prefix, 16);
    assert_int_equal(net_pool_slots(&p), 16383);
    assert_int_equal(net_pool_parse("10.0.0.0/8", &p, err, sizeof(err)), 0);
    assert_int_equal(net_pool_slots(&p), (1 << 22) - 1);
    assert_int_equal(net_pool_parse(TEST_POOL, &p, err, sizeof(err)), 0);
    assert_int_equal(net_pool_slots(&p), 63);

    struct in_addr host, container;
    char a[INET_ADDRSTRLEN], b[INET_ADDRSTRLEN];
    net_slot_addresses(&p, 0, &host, &container);
    assert_string_equal(inet_ntop(AF_INET, &host, a, sizeof(a)), "10.245.0.1");
    assert_string_equal(inet_ntop(AF_INET, &container, b, sizeof(b)), "10.245.0.2");
    net_slot_addresses(&p, 62, &host, &container);
    assert_string_equal(inet_ntop(AF_INET, &host, a, sizeof(a)), "10.245.0.249");
    assert_string_equal(inet_ntop(AF_INET, &container, b, sizeof(b)), "10.245.0.250");
    struct in_addr publish = net_publish_address(&p);
    assert_string_equal(inet_ntop(AF_INET, &publish, a, sizeof(a)), "10.245.0.254");
    assert_int_equal(net_pool_parse("10.244.0.0/16", &p, err, sizeof(err)), 0);
    net_slot_addresses(&p, 300, &host, NULL);
    assert_string_equal(inet_ntop(AF_INET, &host, a, sizeof(a)), "10.244.4.177");
    publish = net_publish_address(&p);
    assert_string_equal(inet_ntop(AF_INET, &publish, a, sizeof(a)), "10.244.255.254");

    static const char *const bad[] = {"10.245.0.1/24", "10.245.0.0/25", "10.0.0.0/7",     "abc/24",
                                      "10.245.0.0",    "10.245.0.0/",   "10.245.0.0/24x", "",
                                      "10.245.0.0/-8", "1.2.3.4.5/24"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        err[0] = '\0';
        assert_int_equal(net_pool_parse(bad[i], &p, err, sizeof(err)), -EINVAL);
        assert_true(strlen(err) > 0);
    }
    assert_int_equal(net_pool_parse("10.245.0.1/24", &p, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "10.245.0.0/24"));
}

static void test_attach_wires_both_ends(void **state)
{
    (void)state;
    char err[256], addr[INET_ADDRSTRLEN], gw[INET_ADDRSTRLEN], gw_if[IFNAMSIZ];
    int prefix;
    bool up;
    struct ns a = ns_spawn();
    assert_false(net_slot_in_use(3));
    int rc = net_attach(&pool, 3, a.pid, err, sizeof(err));
    if (rc < 0)
        fail_msg("net_attach: %s", err);
    assert_true(net_slot_in_use(3));

    assert_true(if_address(0, "skv3", addr, &prefix, &up));
    assert_string_equal(addr, "10.245.0.13");
    assert_int_equal(prefix, 30);
    assert_true(up);
    assert_int_equal(read_int_in(0, "/proc/sys/net/ipv6/conf/skv3/disable_ipv6"), 1);

    assert_true(if_address(a.pid, "eth0", addr, &prefix, &up));
    assert_string_equal(addr, "10.245.0.14");
    assert_int_equal(prefix, 30);
    assert_true(up);
    assert_true(if_address(a.pid, "lo", addr, &prefix, &up));
    assert_true(up);
    assert_int_equal(read_int_in(a.pid, "/proc/sys/net/ipv6/conf/eth0/disable_ipv6"), 1);
    default_gateway(a.pid, gw, gw_if);
    assert_string_equal(gw, "10.245.0.13");
    assert_string_equal(gw_if, "eth0");

    /* the host reaches a listener of the container at its address (no firewall yet) */
    int l = tcp_listen(a.pid, "0.0.0.0", APP_PORT);
    assert_true(tcp_connects(0, "10.245.0.14", APP_PORT, 2000));
    close(l);

    /* a taken slot */
    struct ns b = ns_spawn();
    err[0] = '\0';
    assert_int_equal(net_attach(&pool, 3, b.pid, err, sizeof(err)), -EEXIST);
    assert_non_null(strstr(err, "taken"));
    assert_false(if_address(b.pid, "eth0", addr, &prefix, &up));
    /* a namespace that already has an eth0 (the slot is left free) */
    assert_int_equal(net_attach(&pool, 4, a.pid, err, sizeof(err)), -EEXIST);
    assert_false(net_slot_in_use(4));
    /* outside the pool, no such process */
    assert_int_equal(net_attach(&pool, 63, b.pid, err, sizeof(err)), -EINVAL);
    assert_int_equal(net_attach(&pool, -1, b.pid, err, sizeof(err)), -EINVAL);
    assert_true(net_attach(&pool, 5, 0x3ffffff0, err, sizeof(err)) < 0);
    assert_false(net_slot_in_use(5));

    assert_int_equal(net_detach(3), 0);
    assert_false(net_slot_in_use(3));
    assert_int_equal(net_detach(3), -ENODEV);
    assert_false(if_address(a.pid, "eth0", addr, &prefix, &up));
    /* the slot is free again */
    rc = net_attach(&pool, 3, b.pid, err, sizeof(err));
    if (rc < 0)
        fail_msg("net_attach again: %s", err);
    assert_int_equal(net_detach(3), 0);
    ns_stop(&a);
    ns_stop(&b);
}

static void test_pair_goes_away_with_the_namespace(void **state)
{
    (void)state;
    char err[256];
    struct ns a = ns_spawn();
    int rc = net_attach(&pool, 6, a.pid, err, sizeof(err));
    if (rc < 0)
        fail_msg("net_attach: %s", err);
    assert_true(net_slot_in_use(6));
    ns_stop(&a);
    assert_true(wait_slot_free(6, 10000));
}

static void test_firewall_isolates_containers(void **state)
{
    (void)state;
    char err[256];
    int rc = net_host_setup(&pool, false, err, sizeof(err));
    if (rc < 0)
        fail_msg("net_host_setup: %s", err);
    /* twice: it is idempotent */
    rc = net_host_setup(&pool, false, err, sizeof(err));
    if (rc < 0)
        fail_msg("net_host_setup again: %s", err);
    rc = net_firewall_allow_publish(&pool, PUBLISH_PORT, err, sizeof(err));
    if (rc < 0)
        fail_msg("net_firewall_allow_publish: %s", err);

    struct ns a = ns_spawn(), b = ns_spawn();
    assert_int_equal(net_attach(&pool, 0, a.pid, err, sizeof(err)), 0);
    assert_int_equal(net_attach(&pool, 1, b.pid, err, sizeof(err)), 0);
    int la = tcp_listen(a.pid, "0.0.0.0", APP_PORT);
    int lb = tcp_listen(b.pid, "0.0.0.0", APP_PORT);
    int host_other = tcp_listen(0, "0.0.0.0", 9099);
    int host_publish = tcp_listen(0, "10.245.0.254", PUBLISH_PORT);

    /* the host (router, health checks) reaches each container */
    assert_true(tcp_connects(0, "10.245.0.2", APP_PORT, 2000));
    assert_true(tcp_connects(0, "10.245.0.6", APP_PORT, 2000));
    /* a container reaches the publish endpoint */
    assert_true(tcp_connects(a.pid, "10.245.0.254", PUBLISH_PORT, 2000));
    char peer[INET_ADDRSTRLEN];
    accept_peer(host_publish, peer);
    assert_string_equal(peer, "10.245.0.2");
    /* ... and nothing else: not the other container, not another host port */
    assert_false(tcp_connects(a.pid, "10.245.0.6", APP_PORT, 300));
    assert_false(tcp_connects(b.pid, "10.245.0.2", APP_PORT, 300));
    assert_false(tcp_connects(a.pid, "10.245.0.1", 9099, 300));
    assert_false(tcp_connects(a.pid, "10.245.0.5", 9099, 300));
    assert_false(tcp_connects(a.pid, "10.245.0.254", 9099, 300));
    assert_false(tcp_connects(a.pid, "10.245.0.1", PUBLISH_PORT, 300));

    assert_int_equal(net_firewall_forget_publish(&pool, PUBLISH_PORT), 0);
    assert_false(tcp_connects(a.pid, "10.245.0.254", PUBLISH_PORT, 300));
    /* forgetting what is not there is fine */
    assert_int_equal(net_firewall_forget_publish(&pool, PUBLISH_PORT), 0);

    close(la);
    close(lb);
    close(host_other);
    close(host_publish);
    ns_stop(&a);
    ns_stop(&b);
    assert_true(wait_slot_free(0, 10000));
    assert_true(wait_slot_free(1, 10000));
}

static void run(const char *cmd)
{
    int rc = system(cmd);
    if (rc != 0)
        fail_msg("'%s' exited with %d", cmd, rc);
}

/* The first IPv4 nameserver of /etc/resolv.conf that is not loopback, or "". */
static void first_resolver(char out[INET_ADDRSTRLEN])
{
    out[0] = '\0';
    FILE *f = fopen("/etc/resolv.conf", "re");
    if (!f)
        return;
    char line[256], name[INET_ADDRSTRLEN];
    struct in_addr a;
    while (!out[0] && fgets(line, sizeof(line), f))
        if (sscanf(line, " nameserver %15s", name) == 1 && inet_pton(AF_INET, name, &a) == 1 &&
            (ntohl(a.s_addr) >> 24) != 127)
            snprintf(out, INET_ADDRSTRLEN, "%s", name);
    fclose(f);
}

/* "Outside" is one more namespace the test made, behind the test's host namespace: a public
 * looking 192.88.99.0/24 and a private 10.246.0.0/24 on its link (plus the resolver's
 * address, if any). */
static void test_egress_reaches_public_addresses_only(void **state)
{
    (void)state;
    char err[256], cmd[512], resolver[INET_ADDRSTRLEN];
    first_resolver(resolver);
    struct ns out = ns_spawn();
    snprintf(cmd, sizeof(cmd),
             "ip link add tup0 type veth peer name up0 netns %d && ip link set tup0 up && "
             "ip addr add 192.88.99.1/24 dev tup0 && ip route add 10.246.0.0/24 dev tup0",
             (int)out.pid);
    run(cmd);
    snprintf(cmd, sizeof(cmd),
             "nsenter --net=/proc/%d/ns/net sh -c 'ip link set lo up && ip link set up0 up && "
             "ip addr add 192.88.99.2/24 dev up0 && ip addr add 10.246.0.2/24 dev up0 && "
             "ip route add default via 192.88.99.1'",
             (int)out.pid);
    run(cmd);
    if (resolver[0]) {
        snprintf(cmd, sizeof(cmd),
                 "ip route add %s/32 dev tup0 && nsenter --net=/proc/%d/ns/net ip addr add "
                 "%s/32 dev up0",
                 resolver, (int)out.pid, resolver);
        run(cmd);
    }

    int rc = net_host_setup(&pool, true, err, sizeof(err));
    if (rc < 0)
        fail_msg("net_host_setup with egress: %s", err);
    assert_int_equal(read_int_in(0, "/proc/sys/net/ipv4/ip_forward"), 1);

    struct ns a = ns_spawn();
    assert_int_equal(net_attach(&pool, 2, a.pid, err, sizeof(err)), 0);
    int public_l = tcp_listen(out.pid, "0.0.0.0", 80);
    int dns_l = resolver[0] ? tcp_listen(out.pid, resolver, 53) : -1;

    assert_true(tcp_connects(a.pid, "192.88.99.2", 80, 2000));
    char peer[INET_ADDRSTRLEN];
    accept_peer(public_l, peer);
    assert_string_equal(peer, "192.88.99.1"); /* masqueraded */
    assert_false(tcp_connects(a.pid, "10.246.0.2", 80, 300));
    if (resolver[0]) {
        assert_true(tcp_connects(a.pid, resolver, 53, 2000));
        assert_false(tcp_connects(a.pid, resolver, 80, 300));
    }
    /* the outside never opens a connection into a container, nor is forwarded elsewhere */
    int la = tcp_listen(a.pid, "0.0.0.0", APP_PORT);
    assert_false(tcp_connects(out.pid, "10.245.0.10", APP_PORT, 300));

    /* egress off again: the same container reaches nothing outside */
    rc = net_host_setup(&pool, false, err, sizeof(err));
    if (rc < 0)
        fail_msg("net_host_setup without egress: %s", err);
    assert_false(tcp_connects(a.pid, "192.88.99.2", 80, 300));

    close(la);
    close(public_l);
    if (dns_l >= 0)
        close(dns_l);
    ns_stop(&a);
    ns_stop(&out);
    assert_true(wait_slot_free(2, 10000));
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* net_attach is on every container's start path: its median over 100 fresh namespaces. */
static void test_attach_time(void **state)
{
    (void)state;
    enum { N = 100 };
    char err[256];
    struct net_pool big;
    assert_int_equal(net_pool_parse("10.247.0.0/16", &big, err, sizeof(err)), 0);
    struct ns nss[N];
    double ms[N];
    for (int i = 0; i < N; i++)
        nss[i] = ns_spawn();
    for (int i = 0; i < N; i++) {
        double t0 = now_ms();
        int rc = net_attach(&big, 100 + i, nss[i].pid, err, sizeof(err));
        ms[i] = now_ms() - t0;
        if (rc < 0)
            fail_msg("net_attach %d: %s", i, err);
    }
    for (int i = 0; i < N; i++)
        ns_stop(&nss[i]);
    qsort(ms, N, sizeof(ms[0]), cmp_double);
    print_message("net_attach: median %.3f ms, p90 %.3f ms, max %.3f ms over %d namespaces\n",
                  ms[N / 2], ms[N * 9 / 10], ms[N - 1], N);
    assert_true(ms[N / 2] < 20.0);
    for (int i = 0; i < N; i++)
        assert_true(wait_slot_free(100 + i, 10000));
}

/* ---- other hosts' pools ------------------------------------------------------------------ */

static void test_pools_overlap(void **state)
{
    (void)state;
    struct net_pool a, b;
    char err[128];
    static const struct {
        const char *a, *b;
        bool overlap;
    } cases[] = {
        {"10.244.0.0/16", "10.244.0.0/16", true},   {"10.244.0.0/16", "10.244.128.0/17", true},
        {"10.244.128.0/17", "10.244.0.0/16", true}, {"10.244.0.0/16", "10.245.0.0/16", false},
        {"10.0.0.0/8", "10.250.3.0/24", true},      {"10.244.0.0/24", "10.244.1.0/24", false}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(net_pool_parse(cases[i].a, &a, err, sizeof err), 0);
        assert_int_equal(net_pool_parse(cases[i].b, &b, err, sizeof err), 0);
        assert_int_equal(net_pool_overlaps(&a, &b), cases[i].overlap);
    }
    char text[NET_POOL_STRLEN];
    net_pool_format(&a, text);
    assert_string_equal(text, "10.244.0.0/24");
}

/* `ip -4 route show proto 83`, the routes net_peer_routes_set made, as one string. */
static char *peer_routes(void)
{
    FILE *f = popen("ip -4 route show proto 83", "r");
    assert_non_null(f);
    char *text = xcalloc(1, 4096);
    size_t n = fread(text, 1, 4095, f);
    text[n] = '\0';
    pclose(f);
    return text;
}

/* A slot claimed by one process is refused to another until released (another skiffd on the
 * machine sees the claim before the interface exists), and a slot whose interface exists is
 * refused to all. */
static int claims_child_locks(int slot)
{
    pid_t pid = fork();
    if (pid == 0) {
        struct stat st;
        char path[128];
        if (stat("/proc/self/ns/net", &st) < 0)
            _exit(2);
        snprintf(path, sizeof path, NET_SLOT_CLAIMS_DIR "/net-slots-%llu.lock",
                 (unsigned long long)st.st_ino);
        int fd = open(path, O_RDWR | O_CLOEXEC); /* a description of its own, as a skiffd's */
        struct flock l = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = slot, .l_len = 1};
        _exit(fd >= 0 && fcntl(fd, F_OFD_SETLK, &l) == 0 ? 0 : 1);
    }
    int status = -1;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void test_a_slot_claimed_here_is_refused_elsewhere_until_released(void **state)
{
    (void)state;
    const int slot = 4093, named = 4094;
    assert_false(net_slot_in_use(slot));
    assert_int_equal(net_slot_claim(slot), 0);
    assert_int_equal(claims_child_locks(slot), 1); /* another process cannot take it */
    net_slot_release(slot);
    assert_int_equal(claims_child_locks(slot), 0); /* released: another can */
    assert_int_equal(net_slot_claim(slot), 0);
    net_slot_release(slot);

    assert_int_equal(system("ip link add skv4094 type veth peer name skv4094p"), 0);
    assert_true(net_slot_in_use(named));
    assert_int_equal(net_slot_claim(named), -EBUSY); /* its interface exists: taken */
    assert_int_equal(system("ip link del skv4094"), 0);
    assert_int_equal(net_slot_claim(named), 0);
    net_slot_release(named);
}

static void test_peer_routes_are_set_replaced_and_removed(void **state)
{
    (void)state;
    assert_int_equal(
        system("ip link add peers0 type veth peer name peers1 && ip link set peers1 up && ip addr "
               "add 10.251.0.1/24 dev peers0 "
               "&& ip link set peers0 up && ip route add 10.248.0.0/16 via 10.251.0.9"),
        0);
    struct net_peer_route routes[2];
    char err[256];
    assert_int_equal(net_pool_parse("10.246.0.0/16", &routes[0].pool, err, sizeof err), 0);
    assert_int_equal(net_pool_parse("10.247.0.0/24", &routes[1].pool, err, sizeof err), 0);
    inet_pton(AF_INET, "10.251.0.2", &routes[0].via);
    inet_pton(AF_INET, "10.251.0.3", &routes[1].via);
    assert_int_equal(net_peer_routes_set(routes, 2, err, sizeof err), 2);
    char *got = peer_routes();
    assert_non_null(strstr(got, "10.246.0.0/16 via 10.251.0.2 dev peers0"));
    assert_non_null(strstr(got, "10.247.0.0/24 via 10.251.0.3 dev peers0"));
    free(got);
    /* the same again writes nothing (a write waits for the kernel's RTNL lock, which every
     * container start on the host takes); a host moved is routed via its new address */
    assert_int_equal(net_peer_routes_set(routes, 2, err, sizeof err), 0);
    inet_pton(AF_INET, "10.251.0.4", &routes[0].via);
    assert_int_equal(net_peer_routes_set(routes, 2, err, sizeof err), 1);
    got = peer_routes();
    assert_non_null(strstr(got, "10.246.0.0/16 via 10.251.0.4 dev peers0"));
    assert_null(strstr(got, "10.251.0.2"));
    free(got);
    /* a route removed by someone else is set again */
    assert_int_equal(system("ip route del 10.247.0.0/24"), 0);
    assert_int_equal(net_peer_routes_set(routes, 2, err, sizeof err), 1);
    got = peer_routes();
    assert_non_null(strstr(got, "10.247.0.0/24 via 10.251.0.3 dev peers0"));
    free(got);
    /* a host gone: its route goes, the other stays, a route of someone else is not touched */
    assert_int_equal(net_peer_routes_set(routes + 1, 1, err, sizeof err), 1);
    got = peer_routes();
    assert_null(strstr(got, "10.246.0.0"));
    assert_non_null(strstr(got, "10.247.0.0/24 via 10.251.0.3"));
    free(got);
    assert_int_equal(system("ip route show 10.248.0.0/16 | grep -q 'via 10.251.0.9'"), 0);
    /* the link down takes the route; set again once it is up, it is back */
    assert_int_equal(system("ip link set peers0 down"), 0);
    got = peer_routes();
    assert_null(strstr(got, "10.247.0.0"));
    free(got);
    assert_int_not_equal(net_peer_routes_set(routes + 1, 1, err, sizeof err), 0);
    assert_non_null(strstr(err, "cannot route 10.247.0.0/24 via 10.251.0.3"));
    assert_int_equal(system("ip link set peers0 up"), 0);
    assert_int_equal(net_peer_routes_set(routes + 1, 1, err, sizeof err), 1);
    got = peer_routes();
    assert_non_null(strstr(got, "10.247.0.0/24 via 10.251.0.3"));
    free(got);
    assert_int_equal(net_peer_routes_set(NULL, 0, err, sizeof err), 1);
    got = peer_routes();
    assert_string_equal(got, "");
    free(got);
    assert_int_equal(system("ip link del peers0"), 0);
}

int main(void)
{
    if (geteuid() != 0) {
        fprintf(stderr, "test_container_net: needs root (CAP_NET_ADMIN); skipped\n");
        return 0;
    }
    /* the host of these tests: a network namespace of their own */
    if (unshare(CLONE_NEWNET) < 0) {
        perror("test_container_net: unshare(CLONE_NEWNET)");
        return 1;
    }
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ifr.ifr_flags = IFF_UP;
    if (s < 0 || ioctl(s, SIOCSIFFLAGS, &ifr) < 0) {
        perror("test_container_net: lo up");
        return 1;
    }
    close(s);
    char err[256];
    if (net_pool_parse(TEST_POOL, &pool, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_parsing_and_slots),
        cmocka_unit_test(test_attach_wires_both_ends),
        cmocka_unit_test(test_pair_goes_away_with_the_namespace),
        cmocka_unit_test(test_firewall_isolates_containers),
        cmocka_unit_test(test_egress_reaches_public_addresses_only),
        cmocka_unit_test(test_attach_time),
        cmocka_unit_test(test_pools_overlap),
        cmocka_unit_test(test_peer_routes_are_set_replaced_and_removed),
        cmocka_unit_test(test_a_slot_claimed_here_is_refused_elsewhere_until_released),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
