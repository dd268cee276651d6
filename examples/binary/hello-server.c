/* A prebuilt program for Skiff's binary buildpack: a tiny HTTP server on $PORT.
 * Build it before pushing (`make -C examples/binary`); the Procfile starts it. */
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t stopping;

static void on_term(int sig)
{
    (void)sig;
    stopping = 1;
}

int main(void)
{
    const char *port_text = getenv("PORT");
    int port = port_text ? atoi(port_text) : 8080;
    const char *greeting = getenv("GREETING") ? getenv("GREETING") : "hello";
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL); /* no SA_RESTART: accept() returns and we exit */
    signal(SIGPIPE, SIG_IGN);

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(fd, 64) != 0) {
        perror("hello-server: cannot listen");
        return 1;
    }
    printf("hello-server listening on port %d\n", port);
    fflush(stdout);
    while (!stopping) {
        int c = accept(fd, NULL, NULL);
        if (c < 0)
            continue;
        char req[2048];
        ssize_t n = read(c, req, sizeof(req) - 1);
        if (n <= 0) { /* a health check connects and hangs up */
            close(c);
            continue;
        }
        req[n] = '\0';
        char *eol = strpbrk(req, "\r\n");
        if (eol)
            *eol = '\0';
        printf("%s\n", req);
        fflush(stdout);
        char body[256], head[256];
        int blen = snprintf(body, sizeof(body), "%s from a prebuilt binary\n", greeting);
        int hlen = snprintf(head, sizeof(head),
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                            "%d\r\nConnection: close\r\n\r\n",
                            blen);
        if (write(c, head, (size_t)hlen) == hlen)
            (void)!write(c, body, (size_t)blen);
        close(c);
    }
    close(fd);
    return 0;
}
