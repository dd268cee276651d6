/* A static program that answers every HTTP request on $PORT (8080 by default) with 200 "ok":
 * what the container start and cold-start benchmarks start and wait for. */
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void)
{
    const char *p = getenv("PORT");
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(p ? atoi(p) : 8080)};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 64) < 0)
        return 1;
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    for (;;) {
        int c = accept(fd, NULL, NULL);
        if (c < 0)
            continue;
        char req[4096];
        if (read(c, req, sizeof req) > 0 && write(c, ok, sizeof ok - 1) < 0)
            (void)0; /* the client went away: nothing to do */
        close(c);
    }
}
