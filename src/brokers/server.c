/* The broker's HTTP side, on Skiff's HTTP server (src/http/server.h): basic auth and the OSB
 * version header are checked from the head, before any body is read, and refused in the
 * broker API's own error form; bodies are capped at 1 MiB. The connection handling (caps,
 * keep-alive, pipelining, timeouts, malformed requests) is the server's. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "brokers/brokers.h"
#include "common/log.h"
#include "common/util.h"
#include "http/server.h"

#define SERVER_BODY_MAX (1u << 20)

struct brokers_server {
    struct http_server *http;
    struct brokers *b;
    char *user, *password;
};

static void server__refuse(struct http_request *req, int status, const char *description)
{
    json_t *body = json_pack("{s:s}", "description", description);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    http_request_refuse_with(req, status, "application/json", text);
    free(text);
}

static void server__on_head(struct http_request *req, void *ctx)
{
    struct brokers_server *s = ctx;
    const char *version = http_request_header(req, "x-broker-api-version");
    if (!brokers_basic_auth_ok(http_request_header(req, "authorization"), s->user, s->password))
        server__refuse(req, 401, "basic auth with the broker's credentials");
    else if (!version || atoi(version) != 2)
        server__refuse(req, 412, "X-Broker-API-Version: 2.x is required (this broker speaks 2.17)");
    else
        req->body_limit = SERVER_BODY_MAX;
}

static void server__on_request(struct http_request *req, void *ctx)
{
    struct brokers_server *s = ctx;
    int status = 0;
    json_t *out =
        brokers_handle(s->b, req->method, req->target, req->body.data, req->body.len, &status);
    log_msg(LOG_DEBUG, "%s %s: %d", req->method, req->target, status);
    char *text = json_dumps(out, JSON_COMPACT);
    json_decref(out);
    http_respond(req, status, "application/json", text, text ? strlen(text) : 0);
    free(text);
}

int brokers_server_start(uv_loop_t *loop, struct brokers *b, const char *addr, const char *user,
                         const char *password, struct brokers_server **out, char *err,
                         size_t errlen)
{
    if (!http_server_addr_valid(addr)) {
        snprintf(err, errlen, "%s is not HOST:PORT", addr);
        return -EINVAL;
    }
    struct brokers_server *s = xcalloc(1, sizeof *s);
    s->b = b;
    s->user = xstrdup(user);
    s->password = xstrdup(password);
    struct http_server_config cfg = {.tmp_dir = NULL,
                                     .name = "skiff-brokers",
                                     .on_head = server__on_head,
                                     .on_request = server__on_request,
                                     .ctx = s};
    int rc = http_server_new(loop, &cfg, &s->http);
    if (rc == 0)
        rc = http_server_listen(s->http, addr, 0);
    if (rc < 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", addr, uv_strerror(rc));
        brokers_server_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

static void server__closed(void *arg)
{
    struct brokers_server *s = arg;
    http_server_free(s->http);
    free(s->user);
    free(s->password);
    free(s);
}

void brokers_server_close(struct brokers_server *s)
{
    if (!s)
        return;
    if (!s->http) {
        server__closed(s);
        return;
    }
    http_server_close(s->http, server__closed, s);
}
