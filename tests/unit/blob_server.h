/* What unit tests that fetch blobs need: a listening socket on loopback, and a blob server of
 * the test's on one (a thread) that answers every request with the same status and body, and
 * records what it was asked. Include after cmocka.h. */
#ifndef SKIFF_TESTS_BLOB_SERVER_H
#define SKIFF_TESTS_BLOB_SERVER_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* A socket of type (SOCK_STREAM, with flags such as SOCK_NONBLOCK) listening on 127.0.0.1 at a
 * port of the system's choice: the socket; *port, that port. */
static inline int blob_server_listen(int type, int *port)
{
    int fd = socket(AF_INET, type, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t al = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &al);
    assert_int_equal(listen(fd, 8), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

/* Set body, len and, when wanted, status (200 unless set) and good before blob_server_start. */
struct blob_server {
    int fd, port;
    pthread_t thread;
    int status;       /* what it answers */
    const char *body; /* and with (the caller's until blob_server_stop) */
    size_t len;
    /* when set, a request without this text (e.g. "Authorization: Bearer T") is answered 401
     * with no body, and counted in refused */
    char good[200];
    int requests, refused;
    char path[256]; /* the last request's */
    char auth[256]; /* its Authorization header's value, when it had one */
};

static inline void *blob_server_main(void *arg)
{
    struct blob_server *s = arg;
    for (;;) {
        int c = accept(s->fd, NULL, NULL);
        if (c < 0)
            return NULL;
        char req[4096];
        size_t n = 0;
        req[0] = '\0';
        while (n < sizeof req - 1 && !strstr(req, "\r\n\r\n")) {
            ssize_t r = read(c, req + n, sizeof req - 1 - n);
            if (r <= 0)
                break;
            n += (size_t)r;
            req[n] = '\0';
        }
        s->requests++;
        sscanf(req, "GET %255s", s->path);
        const char *auth = strstr(req, "Authorization: ");
        if (auth)
            sscanf(auth, "Authorization: %255[^\r]", s->auth);
        bool ok = !s->good[0] || strstr(req, s->good) != NULL;
        if (!ok)
            s->refused++;
        char head[256];
        int hl = snprintf(head, sizeof head,
                          "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                          ok ? s->status : 401, ok ? "X" : "Unauthorized", ok ? s->len : 0);
        if (write(c, head, (size_t)hl) < 0 || (ok && write(c, s->body, s->len) < 0))
            s->requests += 0;
        close(c);
    }
}

/* Starts s on loopback: its URL ("http://127.0.0.1:PORT", no slash) in url. */
static inline void blob_server_start(struct blob_server *s, char url[64])
{
    if (!s->status)
        s->status = 200;
    s->fd = blob_server_listen(SOCK_STREAM, &s->port);
    pthread_create(&s->thread, NULL, blob_server_main, s);
    snprintf(url, 64, "http://127.0.0.1:%d", s->port);
}

static inline void blob_server_stop(struct blob_server *s)
{
    shutdown(s->fd, SHUT_RDWR);
    close(s->fd);
    pthread_join(s->thread, NULL);
}

#endif
