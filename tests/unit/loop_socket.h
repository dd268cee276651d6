/* What unit tests of a server on a libuv loop need from a client socket: a free loopback port,
 * a connection to one, and an exchange that runs the loop while it waits (the server answers
 * only while its loop runs). Include after cmocka.h. */
#ifndef SKIFF_TESTS_LOOP_SOCKET_H
#define SKIFF_TESTS_LOOP_SOCKET_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "common/util.h"

static inline int loop_socket_free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    bind(s, (struct sockaddr *)&a, sizeof a);
    getsockname(s, (struct sockaddr *)&a, &len);
    close(s);
    return ntohs(a.sin_port);
}

/* A non-blocking socket connecting to 127.0.0.1:port. */
static inline int loop_socket_connect(int port)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int rc = connect(s, (struct sockaddr *)&a, sizeof a);
    assert_true(rc == 0 || errno == EINPROGRESS);
    return s;
}

/* Sends text (when given), then runs the loop until the socket has something to read, at most
 * 3 s; what it read, or "" on EOF. */
static inline void loop_socket_exchange(uv_loop_t *loop, int s, const char *text, char *out,
                                        size_t size)
{
    if (text) {
        int64_t deadline = time_mono_ms() + 3000;
        while (send(s, text, strlen(text), MSG_NOSIGNAL) < 0 && time_mono_ms() < deadline) {
            uv_run(loop, UV_RUN_NOWAIT);
            usleep(1000);
        }
    }
    out[0] = '\0';
    int64_t deadline = time_mono_ms() + 3000;
    while (time_mono_ms() < deadline) {
        uv_run(loop, UV_RUN_NOWAIT);
        struct pollfd p = {.fd = s, .events = POLLIN};
        if (poll(&p, 1, 5) == 1) {
            ssize_t n = recv(s, out, size - 1, 0);
            out[n > 0 ? n : 0] = '\0';
            return;
        }
    }
    fail_msg("no answer within 3 s");
}

#endif
