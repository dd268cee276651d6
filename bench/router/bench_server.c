/* The backend of bench/router/platform_bench.sh: a static HTTP/1.1 keep-alive server on $PORT
 * (8080 by default), one thread and one epoll loop, that answers GET /64k with 65,536 bytes and
 * any other request with the 13 bytes "hello, world\n" (the bodies bench.sh's nginx serves).
 * It is pushed as an app (binary buildpack, Procfile) and also run bare on loopback, so both
 * paths reach the same program. Requests are expected without a body (wrk's GETs). */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BIG_BODY 65536
#define IN_CAP 8192

struct conn {
    int fd;
    size_t in_len;
    const char *out; /* what is left of the answer being written */
    size_t out_len;
    char in[IN_CAP];
};

static char *small_answer, *big_answer;
static size_t small_len, big_len;

static char *make_answer(size_t body_len, char fill, size_t *len)
{
    char head[160];
    int h = snprintf(head, sizeof head,
                     "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n\r\n",
                     body_len);
    char *a = malloc((size_t)h + body_len);
    if (!a)
        abort();
    memcpy(a, head, (size_t)h);
    if (fill)
        memset(a + h, fill, body_len);
    else
        memcpy(a + h, "hello, world\n", body_len);
    *len = (size_t)h + body_len;
    return a;
}

/* Writes what is pending; 0 when all of it went, 1 when the socket is full, -1 on error. */
static int conn_flush(struct conn *c)
{
    while (c->out_len) {
        ssize_t n = write(c->fd, c->out, c->out_len);
        if (n < 0)
            return errno == EAGAIN ? 1 : -1;
        c->out += n;
        c->out_len -= (size_t)n;
    }
    return 0;
}

/* Answers every complete request head in the input, one at a time (pipelining keeps order). */
static int conn_serve(struct conn *c)
{
    for (;;) {
        if (c->out_len) {
            int r = conn_flush(c);
            if (r)
                return r;
        }
        char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
        if (!end)
            return c->in_len == IN_CAP ? -1 : 0;
        size_t used = (size_t)(end + 4 - c->in);
        bool big = c->in_len > 8 && memcmp(c->in, "GET /64k", 8) == 0;
        c->out = big ? big_answer : small_answer;
        c->out_len = big ? big_len : small_len;
        memmove(c->in, c->in + used, c->in_len - used);
        c->in_len -= used;
    }
}

static void conn_close(int ep, struct conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

int main(void)
{
    const char *port = getenv("PORT");
    signal(SIGPIPE, SIG_IGN);
    small_answer = make_answer(13, 0, &small_len);
    big_answer = make_answer(BIG_BODY, 'x', &big_len);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port ? atoi(port) : 8080)};
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 1024) < 0) {
        perror("bench_server: cannot listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    c = calloc(1, sizeof *c);
                    if (!c)
                        abort();
                    c->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            /* edge-triggered: read until the socket is empty, answering as heads complete */
            int r = 0;
            for (;;) {
                ssize_t got = read(c->fd, c->in + c->in_len, IN_CAP - c->in_len);
                if (got == 0 || (got < 0 && errno != EAGAIN)) {
                    r = -1;
                    break;
                }
                if (got > 0)
                    c->in_len += (size_t)got;
                r = conn_serve(c);
                if (r || got < 0)
                    break;
            }
            if (r < 0)
                conn_close(ep, c);
        }
    }
}
