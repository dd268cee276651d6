/* libFuzzer target: arbitrary bytes from a client, through the router's real request path
 * (strict head scan, llhttp with the router's callbacks, limits, routing, head rewriting,
 * body re-framing, the response path) to a real backend, all in this process.
 *
 * Each input is sent on a fresh connection, split in two writes at a point the input picks,
 * then the client half-closes and reads until the router closes. The router must neither
 * crash nor trip a sanitizer, and must close within a bound: a connection it keeps open after
 * the client is gone is reported as a hang (abort). The same bytes also go straight through
 * the request-target normaliser, whose output is checked. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "router/route_table.h"
#include "router/router.h"
#include "router/router_internal.h"

static int router_port;

static int listen_any(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 128) < 0)
        abort();
    getsockname(fd, (struct sockaddr *)&a, &len);
    *port = ntohs(a.sin_port);
    return fd;
}

/* The backend: answers every request head it sees with a short response. */
static void *backend_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char buf[65536];
    size_t have = 0;
    for (;;) {
        ssize_t n = read(fd, buf + have, sizeof(buf) - have - 1);
        if (n <= 0)
            break;
        have += (size_t)n;
        /* bodies are not parsed: each head seen (after whatever came before) gets an answer */
        char *end;
        while ((end = memmem(buf, have, "\r\n\r\n", 4)) != NULL) {
            static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            if (write(fd, resp, sizeof(resp) - 1) < 0)
                goto out;
            size_t used = (size_t)(end + 4 - buf);
            memmove(buf, buf + used, have - used);
            have -= used;
        }
        if (have > sizeof(buf) / 2)
            have = 0;
    }
out:
    close(fd);
    return NULL;
}

static void *backend_main(void *arg)
{
    int lfd = (int)(intptr_t)arg;
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            continue;
        pthread_t t;
        pthread_create(&t, NULL, backend_conn, (void *)(intptr_t)fd);
        pthread_detach(t);
    }
    return NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    int backend_port;
    int bfd = listen_any(&backend_port);
    pthread_t t;
    pthread_create(&t, NULL, backend_main, (void *)(intptr_t)bfd);
    pthread_detach(t);

    char json[1024];
    snprintf(json, sizeof(json),
             "{\"type\":\"routes\",\"version\":1,\"routes\":["
             "{\"host\":\"a\",\"app_guid\":\"g\",\"backends\":[{\"addr\":\"127.0.0.1:%d\"}]},"
             "{\"host\":\"a\",\"path\":\"/p\",\"balance\":\"least-connection\","
             "\"backends\":[{\"addr\":\"127.0.0.1:1\"},{\"addr\":\"127.0.0.1:%d\"}]},"
             "{\"host\":\"*.w\",\"backends\":[{\"addr\":\"127.0.0.1:%d\"}]},"
             "{\"host\":\"n\",\"backends\":[]}]}",
             backend_port, backend_port, backend_port);
    struct route_table *table;
    char err[200];
    if (route_table_parse(json, strlen(json), &table, err, sizeof(err), NULL) < 0)
        abort();
    route_table_publish(table);

    int probe = listen_any(&router_port);
    close(probe);
    static char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", router_port);
    static struct router_config cfg;
    router_config_defaults(&cfg);
    cfg.home = "/nonexistent";
    cfg.addr = addr;
    cfg.workers = 1;
    cfg.max_body_bytes = 1 << 20;
    cfg.max_header_bytes = 4096;
    cfg.max_headers = 20;
    cfg.max_url_bytes = 1024;
    cfg.header_timeout_ms = 3000;
    cfg.upstream_timeout_ms = 3000;
    if (router_proxy_start(&cfg) < 0)
        abort();
    return 0;
}

/* The target normaliser on the same bytes, directly: it never grows its input, and its
 * output is a fixed point (normalising again changes nothing) without dot segments. */
static void check_target_normalize(const uint8_t *data, size_t size)
{
    if (size == 0 || size > 4096)
        return;
    char *t = malloc(size), *again = malloc(size);
    memcpy(t, data, size);
    const char *why = NULL;
    size_t n = router_target_normalize(t, size, &why);
    if (n > size || (n == 0 && !why))
        abort();
    if (n > 0) {
        memcpy(again, t, n);
        if (router_target_normalize(again, n, &why) != n || memcmp(again, t, n) != 0)
            abort();
        size_t path = 0;
        while (path < n && t[path] != '?' && t[path] != '#')
            path++;
        for (size_t i = 0; i + 1 < path; i++)
            if (t[i] == '/' && t[i + 1] == '.' &&
                (i + 2 == path || t[i + 2] == '/' ||
                 (t[i + 2] == '.' && (i + 3 == path || t[i + 3] == '/'))))
                abort();
    }
    free(t);
    free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_target_normalize(data, size);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)router_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        close(fd);
        return 0;
    }
    size_t split = size ? data[0] % (size + 1) : 0;
    if (split && send(fd, data, split, MSG_NOSIGNAL) < 0)
        goto done;
    if (size > split && send(fd, data + split, size - split, MSG_NOSIGNAL) < 0)
        goto done;
    shutdown(fd, SHUT_WR);
    char buf[65536];
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, 10000);
        if (r == 0) {
            fprintf(stderr, "the router kept a half-closed connection open for 10 s\n");
            abort();
        }
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0)
            break;
    }
done:
    close(fd);
    return 0;
}
