/* Unit tests for the C publishing library (sdk/c), against a one-shot HTTP peer on loopback
 * that records the request and plays Skiff's answer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* The library is a file apps compile in; so does this test. */
#include "../../sdk/c/skiff_events.c"

struct peer {
    int listen_fd;
    int port;
    const char *answer; /* whole HTTP response */
    char request[16384];
    size_t request_len;
    pthread_t thread;
};

static void *peer_main(void *arg)
{
    struct peer *p = arg;
    int fd = accept(p->listen_fd, NULL, NULL);
    if (fd < 0)
        return NULL;
    /* Read the head, then as much body as Content-Length says. */
    for (;;) {
        ssize_t n = read(fd, p->request + p->request_len, sizeof(p->request) - 1 - p->request_len);
        if (n <= 0)
            break;
        p->request_len += (size_t)n;
        p->request[p->request_len] = '\0';
        char *end = strstr(p->request, "\r\n\r\n");
        if (!end)
            continue;
        char *cl = strcasestr(p->request, "content-length:");
        size_t body = cl ? strtoul(cl + 15, NULL, 10) : 0;
        if (p->request_len >= (size_t)(end - p->request) + 4 + body)
            break;
    }
    if (write(fd, p->answer, strlen(p->answer)) < 0)
        perror("write");
    close(fd);
    return NULL;
}

static void peer_start(struct peer *p, const char *answer)
{
    memset(p, 0, sizeof(*p));
    p->answer = answer;
    p->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(p->listen_fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t len = sizeof(a);
    getsockname(p->listen_fd, (struct sockaddr *)&a, &len);
    p->port = ntohs(a.sin_port);
    assert_int_equal(listen(p->listen_fd, 4), 0);
    pthread_create(&p->thread, NULL, peer_main, p);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", p->port);
    setenv("SKIFF_EVENTS_URL", url, 1);
    setenv("SKIFF_EVENTS_TOKEN", "tok-123", 1);
}

static void peer_join(struct peer *p)
{
    pthread_join(p->thread, NULL);
    close(p->listen_fd);
}

static void test_publish_binary_mode(void **state)
{
    struct peer p;
    const char *body = "{\"id\":\"ev-1\",\"offset\":1234}\n";
    char answer[256];
    snprintf(answer, sizeof(answer),
             "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: "
             "%zu\r\nConnection: close\r\n\r\n%s",
             strlen(body), body);
    peer_start(&p, answer);
    setenv("VCAP_APPLICATION", "{\"application_name\":\"shop\",\"instance_index\":0}", 1);
    struct skiff_event_opts opts = {.type = "order.created", .subject = "o-1", .id = "ev-1"};
    struct skiff_publish_result res;
    char err[256] = "";
    int rc = skiff_events_publish("orders", "{\"total\":3}", 11, &opts, &res, err, sizeof(err));
    peer_join(&p);
    if (rc != 0)
        fail_msg("publish failed: %s", err);
    assert_string_equal(res.id, "ev-1");
    assert_int_equal(res.offset, 1234);
    assert_non_null(strstr(p.request, "POST /v1/topics/orders/events HTTP/1.1\r\n"));
    assert_non_null(strstr(p.request, "Authorization: Bearer tok-123\r\n"));
    assert_non_null(strstr(p.request, "ce-specversion: 1.0\r\n"));
    assert_non_null(strstr(p.request, "ce-id: ev-1\r\n"));
    assert_non_null(strstr(p.request, "ce-type: order.created\r\n"));
    assert_non_null(strstr(p.request, "ce-subject: o-1\r\n"));
    assert_non_null(strstr(p.request, "ce-source: /apps/shop\r\n"));
    assert_non_null(strstr(p.request, "\r\n\r\n{\"total\":3}"));
    unsetenv("VCAP_APPLICATION");
}

static void test_refusal_carries_message(void **state)
{
    unsetenv("VCAP_APPLICATION");
    struct peer p;
    const char *body = "{\"error\":{\"code\":\"invalid_name\",\"message\":\"topic name 'Bad' is "
                       "not valid\"}}";
    char answer[512];
    snprintf(answer, sizeof(answer),
             "HTTP/1.1 400 Bad Request\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
             strlen(body), body);
    peer_start(&p, answer);
    char err[256] = "";
    int rc = skiff_events_publish("Bad", "x", 1, NULL, NULL, err, sizeof(err));
    peer_join(&p);
    assert_int_equal(rc, SKIFF_EVENTS_EREFUSED);
    assert_non_null(strstr(err, "HTTP 400"));
    assert_non_null(strstr(err, "topic name 'Bad' is not valid"));
    assert_non_null(strstr(p.request, "ce-type: skiff.event\r\n")); /* the default type */
    assert_non_null(strstr(p.request, "ce-source: /skiff/sdk\r\n"));
}

static void test_missing_config_and_network(void **state)
{
    char err[256] = "";
    unsetenv("SKIFF_EVENTS_URL");
    assert_int_equal(skiff_events_publish("t", "x", 1, NULL, NULL, err, sizeof(err)),
                     SKIFF_EVENTS_ENOCONFIG);
    assert_non_null(strstr(err, "SKIFF_EVENTS_URL"));

    /* A port nobody listens on. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(fd, (struct sockaddr *)&a, sizeof(a));
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", ntohs(a.sin_port));
    close(fd);
    setenv("SKIFF_EVENTS_URL", url, 1);
    setenv("SKIFF_EVENTS_TOKEN", "t", 1);
    assert_int_equal(skiff_events_publish("t", "x", 1, NULL, NULL, err, sizeof(err)),
                     SKIFF_EVENTS_ENETWORK);
    assert_non_null(strstr(err, "cannot reach Skiff"));
    assert_int_equal(skiff_events_publish("", "x", 1, NULL, NULL, err, sizeof(err)),
                     SKIFF_EVENTS_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_publish_binary_mode),
        cmocka_unit_test(test_refusal_carries_message),
        cmocka_unit_test(test_missing_config_and_network),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
