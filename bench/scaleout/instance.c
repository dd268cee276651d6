/* The app bench/scaleout runs hundreds of: a static HTTP server on $PORT that answers every
 * request with "instance N" (N = CF_INSTANCE_INDEX), so that a client through the router knows
 * which instances served it. One request per connection; a health check's bare connect is
 * accepted and closed. */
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void)
{
    const char *port_text = getenv("PORT");
    const char *index = getenv("CF_INSTANCE_INDEX");
    char body[64], reply[256];
    int blen = snprintf(body, sizeof body, "instance %s\n", index ? index : "?");
    int rlen = snprintf(reply, sizeof reply,
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                        "Connection: close\r\n\r\n%s",
                        blen, body);
    signal(SIGPIPE, SIG_IGN);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_port = htons((uint16_t)atoi(port_text ? port_text : "8080"))};
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(fd, 64) < 0) {
        perror("instance: bind/listen");
        return 1;
    }
    for (;;) {
        int c = accept(fd, NULL, NULL);
        if (c < 0)
            continue;
        char req[2048];
        if (read(c, req, sizeof req) > 0)
            (void)!write(c, reply, (size_t)rlen);
        close(c);
    }
}
