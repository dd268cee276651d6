/* The API's HTTP/1.1 server: libuv connections, llhttp parsing, routing, auth, responses.
 *
 * One request per connection is handled at a time: bytes that arrive meanwhile (pipelining)
 * wait in conn->pending and are parsed once the response is finished. Reading goes on while
 * a request is handled, so a client that leaves is noticed (api_request_on_abort). */
#include "api/api.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <llhttp.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/buf.h"
#include "common/util.h"
#include "services/services.h"
#include "http/parser.h"
#include "http/url.h"
#include "store/store.h"

#define API_MAX_PARAMS 8
#define API_MAX_HEADERS 100
#define API_MAX_HEADER_BYTES (64u << 10)
#define API_PENDING_MAX (1u << 20)
/* Responses queued and not yet taken by a client: past this, pipelined requests wait. */
#define API_WRITE_PENDING_MAX (1u << 20)
/* Request bodies held in memory at once, all connections together: a body that would go past
 * it is refused with 503, so slow senders cannot make skiffd's memory grow without bound. */
#define API_BODY_MEMORY_BUDGET (256u << 20)
#define API_CLIENT_BUCKETS 1024
#define API_ACCEPT_BATCH 64
/* Accepting stops this long after a resource error (EMFILE, ENOMEM, ...), then resumes. */
#define API_ACCEPT_PAUSE_MS 100
/* After an answer sent before the body was read, the rest of what the client sends is read
 * and dropped for at most this long (or this much), so that the answer is not lost to a reset;
 * the client has been told (FIN) at once. */
#define API_LINGER_MS 2000
#define API_LINGER_BYTES (16u << 20)
/* One read's worth: every connection reads into the same buffer (api->read_buf), since what a
 * read brings is parsed, copied or dropped before the next read. */
#define API_READ_BYTES 65536

struct api_route {
    char method[16];
    char *pattern;
    char **segs;
    size_t nsegs;
    int flags;
    api_handler_fn fn;
    void *ctx;
    struct api_route *next;
};

struct api_conn;
struct api;

/* A listening socket, polled and accepted from by hand (not uv_listen), so that a resource
 * error pauses accepting instead of spinning or giving up. */
struct api_listener {
    struct api *api;
    uv_poll_t poll;
    int fd;
    bool open;         /* poll initialised and not closed */
    bool publish_only; /* containers' publish endpoint */
};

/* The connections of one client address (IPv4 as v4-mapped IPv6). */
struct api_client {
    struct api_client *next;
    unsigned char addr[16];
    unsigned count;
};

struct api {
    uv_loop_t *loop;
    struct api_listener listeners[2]; /* the API, and the publish endpoint when set */
    int nlisteners;
    uv_timer_t accept_timer; /* resumes accepting after a pause */
    bool accept_timer_open;
    bool accept_paused;
    int reserve_fd;         /* held so that accept-and-close works when out of descriptors */
    int64_t last_pressure_log_ms;
    char *publish_addr;
    char *home;
    char *addr;
    char *url;
    unsigned char admin_hash[crypto_generichash_BYTES];
    unsigned char instance_key[crypto_auth_hmacsha256_KEYBYTES];
    uint64_t upload_max;
    struct api_route *routes;
    struct api_route **routes_tail;
    struct api_conn *conns;
    /* connections waiting for a request head (or lingering), longest waiting first: the
     * ones closed when a cap is reached */
    struct api_conn *idle_head, *idle_tail;
    unsigned nconns, max_conns, max_per_client;
    struct api_client *clients[API_CLIENT_BUCKETS];
    uint64_t body_memory; /* request bodies held in memory now */
    api_instance_live_fn instance_live;
    void *instance_live_ctx;
    api_binding_check_fn binding_check;
    void *binding_check_ctx;
    api_audit_fn audit;
    void *audit_ctx;
    struct auth *auth;
    struct store *store;
    unsigned tmp_seq;
    bool closing;
    int handles_open;
    uv_timer_t sweep; /* closes connections that stall (see api__sweep) */
    bool sweep_open;
    void (*close_cb)(void *arg);
    void *close_arg;
    char read_buf[API_READ_BYTES];
};

struct api_header {
    char *name;
    char *value;
};

enum api_req_state { API_REQ_PARSING, API_REQ_HANDLING, API_REQ_STREAMING, API_REQ_DONE };

struct api_request {
    struct api *api;
    struct api_conn *conn; /* NULL once the connection is gone */
    enum api_req_state state;
    char method[16];
    char *path;
    char *query;
    char **segs;
    size_t nsegs;
    const char *params[API_MAX_PARAMS];
    unsigned nparams;
    struct api_header *headers;
    size_t nheaders;
    bool headers_dropped; /* more than API_MAX_HEADERS came: the request is refused */
    const struct api_route *route;
    /* body */
    struct buf body;
    int body_fd;
    char *body_path;
    uint64_t body_size;
    uint64_t body_limit;
    /* an error found before the body, answered once the body is read */
    enum skiff_err early_err; /* the answer decided from the head, before any body */
    char *early_message;
    bool expect_continue;
    bool keep_alive;
    char caller_app[37];
    char caller_instance[37];
    char caller_name[64];
    bool by_instance;
    char topic_limit[64]; /* a service-binding token's one topic, else "" */
    int status; /* of the response, once begun */
    struct auth_principal principal;
    char org_guid[AUTH_GUID_LEN + 1];  /* "" when the route is platform-wide */
    char space_guid[AUTH_GUID_LEN + 1]; /* "" unless the route is in a space */
    bool head_done;
    uint64_t body_memory; /* counted in api->body_memory */
    bool aborted;
    void (*abort_fn)(void *ctx);
    void *abort_ctx;
    struct api_header *resp_headers;
    size_t nresp_headers;
    char **scratch; /* strings handed out by accessors, freed with the request */
    size_t nscratch;
};

struct api_conn {
    uv_tcp_t tcp;
    struct api *api;
    llhttp_t parser;
    struct api_conn *prev, *next;
    struct api_request *req;
    struct buf url;
    struct buf hfield;
    struct buf hvalue;
    bool in_value;
    size_t header_bytes;
    struct buf pending;
    size_t write_pending;
    bool reading;
    bool in_execute;   /* inside llhttp_execute: api__feed goes on with what follows */
    int64_t active_ms; /* last byte read or request finished (monotonic) */
    bool close_after_write;
    bool closing;
    bool publish_only; /* came in on the publish listener */
    /* waiting for a request head: in api->idle_head's list since idle_since_ms */
    struct api_conn *idle_prev, *idle_next;
    bool in_idle;
    int64_t idle_since_ms;
    int64_t head_start_ms; /* first byte of the head being read; 0 when none */
    bool served;           /* a request was answered on it */
    struct api_client *client;
    bool write_blocked;  /* responses wait to be taken: pipelined requests wait too */
    bool linger_wanted;  /* answered before the body was read: linger when closing */
    bool lingering;
    int64_t linger_until_ms;
    uint64_t linger_bytes;
    uv_shutdown_t shutdown;
    char peer[80];
};

struct api_write {
    uv_write_t req;
    struct api_conn *conn;
    size_t len;
    char data[];
};

static void api__conn_close(struct api_conn *c);
static void api__process_pending(struct api_conn *c);
static void api__start_reading(struct api_conn *c);
static void api__settings_fill(llhttp_settings_t *s);
static void api__sweep(uv_timer_t *t);
static void api__dispatch(struct api_request *req);
static void api__close_or_linger(struct api_conn *c);
static void api__answer_now(struct api_conn *c, struct api_request *req, bool body_follows);
static void api__resume_accepting(uv_timer_t *t);

/* A request head must arrive whole within API_HEAD_MS of its first byte (and a new
 * connection send one within that time), a body may not stall for API_REQUEST_MS, and an idle
 * keep-alive connection is closed after API_IDLE_MS: slow or silent clients cannot pile up. */
#define API_SWEEP_MS 1000
#define API_HEAD_MS 30000
#define API_REQUEST_MS 60000
#define API_IDLE_MS 300000

/* ---- small helpers ---------------------------------------------------------------------- */

/* Percent-decodes (and '+' as space when form is set); NULL when it holds a NUL byte. A '%'
 * without two hex digits stays as it is. */
static char *api__decode(const char *s, size_t len, bool form)
{
    return http_percent_decode(s, len, form ? HTTP_DECODE_FORM : 0);
}

static const char *api__reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    default:
        return "Unknown";
    }
}

static char *api__scratch(struct api_request *req, char *s)
{
    req->scratch = xrealloc(req->scratch, (req->nscratch + 1) * sizeof *req->scratch);
    req->scratch[req->nscratch++] = s;
    return s;
}

/* ---- connection caps ------------------------------------------------------------------- */

static void api__client_key(const struct sockaddr_storage *ss, unsigned char key[16])
{
    memset(key, 0, 16);
    if (ss->ss_family == AF_INET) {
        key[10] = key[11] = 0xff; /* as ::ffff:a.b.c.d, which a dual-stack socket reports */
        memcpy(key + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    } else if (ss->ss_family == AF_INET6) {
        memcpy(key, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
    }
}

static size_t api__client_bucket(const unsigned char key[16])
{
    uint32_t h = 2166136261u;
    for (int i = 0; i < 16; i++)
        h = (h ^ key[i]) * 16777619u;
    return h % API_CLIENT_BUCKETS;
}

/* The record of a client address with one more connection counted. */
static struct api_client *api__client_get(struct api *api, const unsigned char key[16])
{
    struct api_client **head = &api->clients[api__client_bucket(key)];
    struct api_client *cl = *head;
    while (cl && memcmp(cl->addr, key, 16))
        cl = cl->next;
    if (!cl) {
        cl = xcalloc(1, sizeof *cl);
        memcpy(cl->addr, key, 16);
        cl->next = *head;
        *head = cl;
    }
    cl->count++;
    return cl;
}

/* One connection fewer; the record goes with the last one. */
static void api__client_put(struct api *api, struct api_client *cl)
{
    if (!cl || --cl->count > 0)
        return;
    for (struct api_client **pp = &api->clients[api__client_bucket(cl->addr)]; *pp;
         pp = &(*pp)->next)
        if (*pp == cl) {
            *pp = cl->next;
            free(cl);
            return;
        }
}

static void api__idle_remove(struct api_conn *c)
{
    struct api *api = c->api;
    if (!c->in_idle)
        return;
    if (c->idle_prev)
        c->idle_prev->idle_next = c->idle_next;
    else
        api->idle_head = c->idle_next;
    if (c->idle_next)
        c->idle_next->idle_prev = c->idle_prev;
    else
        api->idle_tail = c->idle_prev;
    c->idle_prev = c->idle_next = NULL;
    c->in_idle = false;
}

/* The connection waits for a request head from now on: the newest of the list. */
static void api__idle_add(struct api_conn *c)
{
    struct api *api = c->api;
    api__idle_remove(c);
    c->idle_since_ms = time_mono_ms();
    c->head_start_ms = 0;
    c->idle_prev = api->idle_tail;
    c->idle_next = NULL;
    if (api->idle_tail)
        api->idle_tail->idle_next = c;
    else
        api->idle_head = c;
    api->idle_tail = c;
    c->in_idle = true;
}

/* A lingering connection is the first to go when room is needed. */
static void api__idle_add_front(struct api_conn *c)
{
    struct api *api = c->api;
    api__idle_remove(c);
    c->idle_next = api->idle_head;
    c->idle_prev = NULL;
    if (api->idle_head)
        api->idle_head->idle_prev = c;
    else
        api->idle_tail = c;
    api->idle_head = c;
    c->in_idle = true;
}

/* The connection that has waited longest for a request head (of client cl when not NULL), or
 * NULL when every one is busy with a request. */
static struct api_conn *api__idle_victim(struct api *api, const struct api_client *cl)
{
    for (struct api_conn *c = api->idle_head; c; c = c->idle_next)
        if (!cl || c->client == cl)
            return c;
    return NULL;
}

/* Makes room for one more connection of cl (already counted in cl): false when there is
 * none, because every connection over the cap is busy with a request. */
static bool api__admit(struct api *api, struct api_client *cl)
{
    if (cl->count > api->max_per_client) {
        struct api_conn *victim = api__idle_victim(api, cl);
        if (!victim)
            return false;
        api__conn_close(victim);
    }
    if (api->nconns >= api->max_conns) {
        struct api_conn *victim = api__idle_victim(api, NULL);
        if (!victim)
            return false;
        api__conn_close(victim);
    }
    return true;
}

/* ---- life of the server ------------------------------------------------------------------ */

/* Loads the key that signs instance tokens, or makes one. It must be readable by skiffd only:
 * an existing key file that is not 0600 and owned by skiffd's user is made so (and said); one
 * that is not a regular file of the right size is replaced (tokens made with it stop working). */
static int api__load_key(const char *path, unsigned char *key, size_t len)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (size_t)st.st_size == len) {
        if (st.st_uid != geteuid() || st.st_gid != getegid()) {
            if (fchown(fd, geteuid(), getegid()) < 0) {
                int rc = -errno;
                log_warning("%s is owned by uid %u, not skiffd's: %s", path,
                        (unsigned)st.st_uid, strerror(errno));
                close(fd);
                return rc;
            }
            log_warning("%s was owned by uid %u: now skiffd's own", path,
                    (unsigned)st.st_uid);
        }
        if ((st.st_mode & 07777) != 0600) {
            if (fchmod(fd, 0600) < 0) {
                int rc = -errno;
                close(fd);
                return rc;
            }
            log_warning("%s had mode %04o: now 0600 (readable by skiffd only)",
                    path, (unsigned)(st.st_mode & 07777));
        }
        size_t got = 0;
        while (got < len) {
            ssize_t r = read(fd, key + got, len - got);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break;
            got += (size_t)r;
        }
        close(fd);
        if (got == len)
            return 0;
    } else if (fd >= 0) {
        close(fd);
    }
    /* missing, a symlink, not a regular file, or the wrong size: a new key */
    unlink(path);
    randombytes_buf(key, len);
    mode_t old = umask(077);
    int rc = file_write_atomic(path, key, len, 0600);
    umask(old);
    if (rc == 0 && chmod(path, 0600) < 0)
        rc = -errno;
    return rc;
}

/* The connection caps for a descriptor limit: never more than half of it. */
static void api__caps(struct api *api, const struct api_config *cfg)
{
    struct rlimit rl;
    uint64_t nofile = 1024;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        nofile = rl.rlim_cur == RLIM_INFINITY ? (1u << 20) : (uint64_t)rl.rlim_cur;
    uint64_t max = cfg->max_connections ? cfg->max_connections : API_MAX_CONNECTIONS;
    if (max > nofile / 2)
        max = nofile / 2;
    if (max < 16)
        max = 16;
    uint64_t per = cfg->max_connections_per_client ? cfg->max_connections_per_client : max / 4;
    if (per > max)
        per = max;
    if (per < 1)
        per = 1;
    api->max_conns = (unsigned)max;
    api->max_per_client = (unsigned)per;
}

int api_new(uv_loop_t *loop, const struct api_config *cfg, struct api **out)
{
    if (sodium_init() < 0)
        return -EIO;
    struct api *api = xcalloc(1, sizeof *api);
    api->loop = loop;
    api->home = xstrdup(cfg->home);
    api->addr = xstrdup(cfg->addr);
    api->publish_addr = cfg->publish_addr ? xstrdup(cfg->publish_addr) : NULL;
    api->url = xasprintf("http://%s", cfg->addr);
    api->upload_max = cfg->upload_max ? cfg->upload_max : (1ull << 30);
    api->auth = cfg->auth;
    api->store = cfg->store;
    api->routes_tail = &api->routes;
    api->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    api->listeners[0].fd = api->listeners[1].fd = -1;
    api__caps(api, cfg);
    crypto_generichash(api->admin_hash, sizeof api->admin_hash,
                       (const unsigned char *)cfg->admin_token, strlen(cfg->admin_token), NULL, 0);
    char *key_path = xasprintf("%s/instance_token.key", cfg->home);
    int rc = api__load_key(key_path, api->instance_key, sizeof api->instance_key);
    free(key_path);
    if (rc < 0) {
        api_free(api);
        return rc;
    }
    char *tmp = xasprintf("%s/tmp", cfg->home);
    mkdir_p(tmp, 0700);
    free(tmp);
    *out = api;
    return 0;
}

uv_loop_t *api_loop(struct api *api)
{
    return api->loop;
}
const char *api_url(struct api *api)
{
    return api->url;
}

unsigned api_connections(const struct api *api)
{
    return api->nconns;
}

void api_set_instance_check(struct api *api, api_instance_live_fn fn, void *ctx)
{
    api->instance_live = fn;
    api->instance_live_ctx = ctx;
}

void api_set_binding_check(struct api *api, api_binding_check_fn fn, void *ctx)
{
    api->binding_check = fn;
    api->binding_check_ctx = ctx;
}

const char *api_request_topic_limit(const struct api_request *req)
{
    return req->topic_limit[0] ? req->topic_limit : NULL;
}

static void api__on_listen_ready(uv_poll_t *h, int status, int events);

static int api__parse_addr(const char *addr, struct sockaddr_storage *ss)
{
    const char *colon = strrchr(addr, ':');
    if (!colon)
        return -EINVAL;
    char host[256];
    size_t hl = (size_t)(colon - addr);
    if (hl >= sizeof host)
        return -EINVAL;
    memcpy(host, addr, hl);
    host[hl] = '\0';
    int port = atoi(colon + 1);
    if (port <= 0 || port > 65535)
        return -EINVAL;
    if (host[0] == '[') {
        host[strlen(host) - 1] = '\0';
        return uv_ip6_addr(host + 1, port, (struct sockaddr_in6 *)ss);
    }
    if (!strcmp(host, "localhost"))
        snprintf(host, sizeof host, "127.0.0.1");
    return uv_ip4_addr(host[0] ? host : "0.0.0.0", port, (struct sockaddr_in *)ss);
}

/* Binds and listens on addr and polls the socket; a negative errno on failure. */
static int api__listener_open(struct api *api, const char *addr, bool publish_only)
{
    struct sockaddr_storage ss;
    int rc = api__parse_addr(addr, &ss);
    if (rc < 0)
        return rc;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    socklen_t len = ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                             : sizeof(struct sockaddr_in);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, (const struct sockaddr *)&ss, len) < 0 || listen(fd, 511) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    struct api_listener *l = &api->listeners[api->nlisteners];
    l->api = api;
    l->publish_only = publish_only;
    if ((rc = uv_poll_init(api->loop, &l->poll, fd)) < 0) {
        close(fd);
        return rc;
    }
    l->fd = fd;
    l->poll.data = l;
    l->open = true;
    api->handles_open++;
    api->nlisteners++;
    uv_poll_start(&l->poll, UV_READABLE, api__on_listen_ready);
    return 0;
}

int api_listen(struct api *api, char *err, size_t errsize)
{
    struct sockaddr_storage ss;
    int rc = api__parse_addr(api->addr, &ss);
    if (rc < 0) {
        snprintf(err, errsize, "invalid API address \"%s\": use HOST:PORT", api->addr);
        return rc;
    }
    rc = api__listener_open(api, api->addr, false);
    if (rc < 0) {
        snprintf(err, errsize,
                 "cannot listen on %s: %s (another skiffd running? set "
                 "SKIFF_API_ADDR or --api-addr)",
                 api->addr, uv_strerror(rc));
        return rc;
    }
    if (api->publish_addr && (rc = api__listener_open(api, api->publish_addr, true)) < 0) {
        snprintf(err, errsize, "cannot listen for publishing on %s: %s", api->publish_addr,
                 uv_strerror(rc));
        return rc;
    }
    uv_timer_init(api->loop, &api->sweep);
    api->sweep.data = api;
    api->sweep_open = true;
    api->handles_open++;
    uv_timer_start(&api->sweep, api__sweep, API_SWEEP_MS, API_SWEEP_MS);
    uv_unref((uv_handle_t *)&api->sweep);
    uv_timer_init(api->loop, &api->accept_timer);
    api->accept_timer.data = api;
    api->accept_timer_open = true;
    api->handles_open++;
    uv_unref((uv_handle_t *)&api->accept_timer);
    return 0;
}

static void api__handle_closed(struct api *api)
{
    if (--api->handles_open == 0 && api->closing && api->close_cb) {
        void (*cb)(void *) = api->close_cb;
        api->close_cb = NULL;
        cb(api->close_arg);
    }
}

static void api__server_closed(uv_handle_t *h)
{
    api__handle_closed(h->data);
}

static void api__listener_closed(uv_handle_t *h)
{
    struct api_listener *l = h->data;
    close(l->fd);
    l->fd = -1;
    api__handle_closed(l->api);
}

void api_close(struct api *api, void (*close_cb)(void *arg), void *arg)
{
    api->closing = true;
    api->close_cb = close_cb;
    api->close_arg = arg;
    api->handles_open++; /* held until every close below was started */
    for (int i = 0; i < api->nlisteners; i++)
        if (api->listeners[i].open) {
            api->listeners[i].open = false;
            uv_close((uv_handle_t *)&api->listeners[i].poll, api__listener_closed);
        }
    if (api->accept_timer_open) {
        api->accept_timer_open = false;
        uv_close((uv_handle_t *)&api->accept_timer, api__server_closed);
    }
    if (api->sweep_open) {
        api->sweep_open = false;
        uv_close((uv_handle_t *)&api->sweep, api__server_closed);
    }
    struct api_conn *c = api->conns;
    while (c) {
        struct api_conn *next = c->next;
        api__conn_close(c);
        c = next;
    }
    api__handle_closed(api);
}

void api_free(struct api *api)
{
    if (!api)
        return;
    struct api_route *r = api->routes;
    while (r) {
        struct api_route *next = r->next;
        for (size_t i = 0; i < r->nsegs; i++)
            free(r->segs[i]);
        free(r->segs);
        free(r->pattern);
        free(r);
        r = next;
    }
    sodium_memzero(api->instance_key, sizeof api->instance_key);
    if (api->reserve_fd >= 0)
        close(api->reserve_fd);
    for (size_t i = 0; i < API_CLIENT_BUCKETS; i++)
        while (api->clients[i]) {
            struct api_client *next = api->clients[i]->next;
            free(api->clients[i]);
            api->clients[i] = next;
        }
    free(api->home);
    free(api->addr);
    free(api->publish_addr);
    free(api->url);
    free(api);
}

/* ---- routes ------------------------------------------------------------------------------- */

static char **api__split_path(const char *path, size_t *n, bool decode)
{
    char **segs = NULL;
    size_t count = 0;
    const char *p = path;
    while (*p) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char *seg = decode ? api__decode(p, len, false) : xstrndup(p, len);
        if (!seg) {
            for (size_t i = 0; i < count; i++)
                free(segs[i]);
            free(segs);
            return NULL;
        }
        segs = xrealloc(segs, (count + 1) * sizeof *segs);
        segs[count++] = seg;
        p += len;
    }
    *n = count;
    return segs ? segs : xcalloc(1, sizeof *segs);
}

int api_route_add(struct api *api, const char *method, const char *pattern, int flags,
                  api_handler_fn handler, void *ctx)
{
    if (!method || strlen(method) >= 16 || !pattern || pattern[0] != '/' || !handler)
        return -EINVAL;
    struct api_route *r = xcalloc(1, sizeof *r);
    snprintf(r->method, sizeof r->method, "%s", method);
    r->pattern = xstrdup(pattern);
    r->segs = api__split_path(pattern, &r->nsegs, false);
    r->flags = flags;
    r->fn = handler;
    r->ctx = ctx;
    *api->routes_tail = r;
    api->routes_tail = &r->next;
    return 0;
}

json_t *api_routes_json(struct api *api)
{
    static const char *const scopes[] = {"platform", "space", "space (an app's)", "org",
                                         "org and space"};
    json_t *list = json_array();
    for (const struct api_route *r = api->routes; r; r = r->next) {
        struct buf path = {0};
        for (size_t i = 0; i < r->nsegs; i++) {
            buf_puts(&path, "/");
            buf_puts(&path, r->segs[i]);
        }
        unsigned scope = (unsigned)(r->flags & API_SCOPE_MASK) >> 5;
        json_array_append_new(
            list, json_pack("{s:s, s:s%, s:s, s:s}", "method", r->method, "path",
                            path.data ? path.data : "/", path.len, "permission",
                            auth_perm_name((enum auth_perm)(r->flags & API_PERM_MASK)), "scope",
                            scope < ARRAY_SIZE(scopes) ? scopes[scope] : "?"));
        buf_free(&path);
    }
    return list;
}

/* The route for the request, or NULL with *path_known telling 404 from 405. */
static const struct api_route *api__match(struct api *api, struct api_request *req,
                                          bool *path_known)
{
    *path_known = false;
    for (const struct api_route *r = api->routes; r; r = r->next) {
        if (r->nsegs != req->nsegs)
            continue;
        unsigned np = 0;
        size_t i;
        for (i = 0; i < r->nsegs; i++) {
            if (!strcmp(r->segs[i], "*")) {
                if (np < API_MAX_PARAMS)
                    req->params[np++] = req->segs[i];
            } else if (strcmp(r->segs[i], req->segs[i])) {
                break;
            }
        }
        if (i < r->nsegs)
            continue;
        *path_known = true;
        if (strcmp(r->method, req->method) &&
            !(strcmp(req->method, "HEAD") == 0 && strcmp(r->method, "GET") == 0))
            continue;
        req->nparams = np;
        return r;
    }
    return NULL;
}

/* ---- auth --------------------------------------------------------------------------------- */

#define API_INSTANCE_TOKEN_PREFIX "skiffi."

#define API_GUID_LEN 36

/* skiffi.APP.INSTANCE.MAC, MAC = HMAC-SHA256 of "APP.INSTANCE" under the instance key */
void api_instance_token(struct api *api, const char *app_guid, const char *instance_guid,
                        char *out, size_t size)
{
    char subject[2 * API_GUID_LEN + 2];
    int n = snprintf(subject, sizeof subject, "%s.%s", app_guid, instance_guid);
    if (n < 0 || (size_t)n >= sizeof subject)
        n = (int)strlen(subject);
    unsigned char mac[crypto_auth_hmacsha256_BYTES];
    crypto_auth_hmacsha256(mac, (const unsigned char *)subject, (size_t)n, api->instance_key);
    char hex[2 * sizeof mac + 1];
    sodium_bin2hex(hex, sizeof hex, mac, sizeof mac);
    snprintf(out, size, API_INSTANCE_TOKEN_PREFIX "%s.%s", subject, hex);
    sodium_memzero(mac, sizeof mac);
}

/* Fills req->principal from the bearer token: 0, or -1 missing, -2 not valid (unknown,
 * ended, expired), -3 an instance token that was good but is no longer (its instance
 * stopped, its app was stopped or deleted). */
static int api__authenticate(struct api *api, struct api_request *req)
{
    struct auth_principal *p = &req->principal;
    memset(p, 0, sizeof *p);
    p->space_role = -1;
    const char *h = api_request_header(req, "authorization");
    if (!h)
        return -1;
    if (strncasecmp(h, "Bearer ", 7))
        return -2;
    const char *token = h + 7;
    while (*token == ' ')
        token++;
    unsigned char hash[crypto_generichash_BYTES];
    crypto_generichash(hash, sizeof hash, (const unsigned char *)token, strlen(token), NULL, 0);
    if (sodium_memcmp(hash, api->admin_hash, sizeof hash) == 0) {
        p->kind = AUTH_LOCAL_ADMIN;
        p->admin = true;
        return 0;
    }
    if (str_has_prefix(token, API_INSTANCE_TOKEN_PREFIX)) {
        const char *subject = token + strlen(API_INSTANCE_TOKEN_PREFIX);
        size_t len = strlen(subject);
        if (len == 2 * API_GUID_LEN + 2 + 2 * crypto_auth_hmacsha256_BYTES &&
            subject[API_GUID_LEN] == '.' && subject[2 * API_GUID_LEN + 1] == '.') {
            char app[API_GUID_LEN + 1], inst[API_GUID_LEN + 1];
            memcpy(app, subject, API_GUID_LEN);
            app[API_GUID_LEN] = '\0';
            memcpy(inst, subject + API_GUID_LEN + 1, API_GUID_LEN);
            inst[API_GUID_LEN] = '\0';
            char expect[200];
            api_instance_token(api, app, inst, expect, sizeof expect);
            if (strlen(expect) == strlen(token) &&
                sodium_memcmp(expect, token, strlen(token)) == 0) {
                if (!api->instance_live ||
                    !api->instance_live(api->instance_live_ctx, app, inst, req->caller_name,
                                        sizeof req->caller_name, p->space_guid))
                    return -3;
                snprintf(req->caller_app, sizeof req->caller_app, "%s", app);
                snprintf(req->caller_instance, sizeof req->caller_instance, "%s", inst);
                req->by_instance = true;
                p->kind = AUTH_INSTANCE;
                return 0;
            }
        }
    }
    if (str_has_prefix(token, SERVICES_BINDING_TOKEN_PREFIX)) {
        /* publishing only (as an instance's), to the binding's one topic */
        if (!api->binding_check ||
            !api->binding_check(api->binding_check_ctx, token, req->topic_limit, p->space_guid,
                                req->caller_name, sizeof req->caller_name))
            return -2;
        p->kind = AUTH_INSTANCE;
        return 0;
    }
    if (api->auth && auth_authenticate(api->auth, token, p) == 0)
        return 0;
    return -2;
}

static bool api__looks_like_guid(const char *s)
{
    if (!s || strlen(s) != API_GUID_LEN)
        return false;
    for (size_t i = 0; i < API_GUID_LEN; i++)
        if (!(i == 8 || i == 13 || i == 18 || i == 23 ? s[i] == '-' : isxdigit((unsigned char)s[i])))
            return false;
    return true;
}

/* Finds the org/space the route's permission is decided in. SKIFF_OK, or the error the caller
 * answers early (*msg set). */
static enum skiff_err api__scope(struct api *api, struct api_request *req, int scope, char *msg,
                                 size_t msgsize)
{
    const struct auth_principal *p = &req->principal;
    const struct auth_space *space = NULL;
    const struct auth_org *org = NULL;
    switch (scope) {
    case API_SCOPE_NONE:
        return SKIFF_OK;
    case API_SCOPE_APP:
    case API_SCOPE_SPACE: {
        const char *ref = api_request_query(req, "space");
        if (ref && *ref) {
            space = auth_space_resolve(api->auth, ref);
            if (!space) {
                snprintf(msg, msgsize, "no space \"%s\" (write ORG/SPACE; `skiff spaces` lists "
                         "the spaces of an org)", ref);
                return SKIFF_E_NOT_FOUND;
            }
        } else if (scope == API_SCOPE_APP && api->store &&
                   api__looks_like_guid(api_request_param(req, 0))) {
            struct store_app *app = NULL;
            if (store_app_get(api->store, api_request_param(req, 0), &app) == 0) {
                space = auth_space_get(api->auth, app->space_guid);
                store_app_free(app);
            }
        }
        if (!space)
            space = auth_space_get(api->auth, p->space_guid[0] ? p->space_guid
                                                               : AUTH_DEFAULT_SPACE_GUID);
        if (!space) {
            snprintf(msg, msgsize, "no space given, and the default space default/dev is gone: "
                     "add ?space=ORG/SPACE (`skiff target -o ORG -s SPACE`)");
            return SKIFF_E_NOT_FOUND;
        }
        org = auth_org_find(api->auth, space->org_guid);
        break;
    }
    case API_SCOPE_ORG:
    case API_SCOPE_ORG_SPACE: {
        const char *name = api_request_param(req, 0);
        org = name ? auth_org_find(api->auth, name) : NULL;
        if (!org) {
            snprintf(msg, msgsize, "no org \"%s\": `skiff orgs` lists yours", name ? name : "");
            return SKIFF_E_NOT_FOUND;
        }
        if (scope == API_SCOPE_ORG_SPACE) {
            const char *sname = api_request_param(req, 1);
            space = sname ? auth_space_find(api->auth, org->guid, sname) : NULL;
            if (!space) {
                snprintf(msg, msgsize, "no space \"%s\" in org %s: `skiff spaces` lists them",
                         sname ? sname : "", org->name);
                return SKIFF_E_NOT_FOUND;
            }
        }
        break;
    }
    default:
        return SKIFF_OK;
    }
    if (org)
        snprintf(req->org_guid, sizeof req->org_guid, "%s", org->guid);
    if (space)
        snprintf(req->space_guid, sizeof req->space_guid, "%s", space->guid);
    return SKIFF_OK;
}

/* Whether the caller may use the route: SKIFF_OK, or why not with msg set. */
static enum skiff_err api__authorize(struct api *api, struct api_request *req, char *msg,
                                     size_t msgsize)
{
    int perm = req->route->flags & API_PERM_MASK;
    int scope = req->route->flags & API_SCOPE_MASK;
    if (perm == AUTH_PERM_PUBLIC)
        return SKIFF_OK;
    if (!api->auth) {
        /* without users, only the admin token and instances' publishing exist */
        if (req->principal.kind == AUTH_LOCAL_ADMIN)
            return SKIFF_OK;
        if (perm == AUTH_PERM_PUBLISH && req->principal.kind == AUTH_INSTANCE)
            return SKIFF_OK;
        snprintf(msg, msgsize, "an instance token may only publish events");
        return SKIFF_E_FORBIDDEN;
    }
    enum skiff_err err = api__scope(api, req, scope, msg, msgsize);
    if (err)
        return err;
    int rc = auth_check(api->auth, &req->principal, (enum auth_perm)perm,
                        req->org_guid[0] ? req->org_guid : NULL,
                        req->space_guid[0] ? req->space_guid : NULL);
    if (rc == 0)
        return SKIFF_OK;
    const struct auth_space *space = req->space_guid[0] ? auth_space_get(api->auth, req->space_guid) : NULL;
    const struct auth_org *org = req->org_guid[0] ? auth_org_find(api->auth, req->org_guid) : NULL;
    if (rc == -ENOENT) {
        if (space)
            snprintf(msg, msgsize, "no space %s/%s that you can see (`skiff target` shows "
                     "where you are; `skiff spaces` lists yours)", org ? org->name : "?",
                     space->name);
        else if (org)
            snprintf(msg, msgsize, "no org \"%s\": `skiff orgs` lists yours", org->name);
        else
            snprintf(msg, msgsize, "not found");
        return SKIFF_E_NOT_FOUND;
    }
    if (req->principal.kind == AUTH_INSTANCE)
        snprintf(msg, msgsize, "an instance token may only publish events, in its own space");
    else if (perm == AUTH_PERM_ADMIN)
        snprintf(msg, msgsize, "only a platform admin may do this");
    else {
        char roles[160] = "";
        unsigned mask = auth_perm_roles((enum auth_perm)perm);
        for (int r = 0; r < AUTH_ROLE_COUNT; r++)
            if (mask >> r & 1) {
                size_t used = strlen(roles);
                snprintf(roles + used, sizeof roles - used, "%s%s", used ? ", " : "",
                         auth_role_name((enum auth_role)r));
            }
        snprintf(msg, msgsize, "your roles%s%s%s%s do not allow this (%s needs one of: %s)",
                 space || org ? " in " : "", org ? org->name : "", space ? "/" : "",
                 space ? space->name : "", auth_perm_name((enum auth_perm)perm), roles);
    }
    return SKIFF_E_FORBIDDEN;
}

/* ---- writing ------------------------------------------------------------------------------ */

static void api__write_done(uv_write_t *w, int status)
{
    struct api_write *aw = (struct api_write *)w;
    struct api_conn *c = aw->conn;
    c->write_pending -= aw->len;
    free(aw);
    /* a peer that is gone ends the connection (and aborts a stream to it) */
    if (status < 0) {
        api__conn_close(c);
    } else if (c->close_after_write && c->write_pending == 0) {
        api__close_or_linger(c);
    } else if (c->write_blocked && c->write_pending <= API_WRITE_PENDING_MAX / 2 && !c->closing) {
        /* the client took its answers: go on with the requests it pipelined */
        c->write_blocked = false;
        llhttp_resume(&c->parser);
        api__process_pending(c);
    }
}

/* Sends at once what the socket takes when nothing is queued before it (most answers: no copy,
 * no write request, no callback on a later loop turn); the rest is queued. A failed send is
 * left to the queued write, whose callback ends the connection as for any write error. */
static int api__write(struct api_conn *c, const void *data, size_t len)
{
    if (!c || c->closing)
        return -EPIPE;
    if (c->write_pending == 0 && len > 0) {
        uv_buf_t now = uv_buf_init((char *)data, (unsigned)len);
        int n = uv_try_write((uv_stream_t *)&c->tcp, &now, 1);
        if (n > 0) {
            data = (const char *)data + n;
            len -= (size_t)n;
        }
        if (len == 0)
            return 0;
    }
    struct api_write *aw = xmalloc(sizeof *aw + len);
    aw->conn = c;
    aw->len = len;
    memcpy(aw->data, data, len);
    uv_buf_t b = uv_buf_init(aw->data, (unsigned)len);
    int rc = uv_write(&aw->req, (uv_stream_t *)&c->tcp, &b, 1, api__write_done);
    if (rc < 0) {
        free(aw);
        return -EPIPE;
    }
    c->write_pending += len;
    return 0;
}

static void api__head(struct api_request *req, struct buf *out, int status,
                      const char *content_type, long long content_length)
{
    buf_printf(out, "HTTP/1.1 %d %s\r\n", status, api__reason(status));
    if (content_type)
        buf_printf(out, "Content-Type: %s\r\n", content_type);
    if (content_length >= 0)
        buf_printf(out, "Content-Length: %lld\r\n", content_length);
    else if (content_length == -1)
        buf_puts(out, "Transfer-Encoding: chunked\r\n");
    for (size_t i = 0; i < req->nresp_headers; i++)
        buf_printf(out, "%s: %s\r\n", req->resp_headers[i].name, req->resp_headers[i].value);
    buf_puts(out, req->keep_alive ? "Connection: keep-alive\r\n" : "Connection: close\r\n");
    buf_puts(out, "\r\n");
}

static void api__request_free(struct api_request *req)
{
    free(req->path);
    free(req->query);
    for (size_t i = 0; i < req->nsegs; i++)
        free(req->segs[i]);
    free(req->segs);
    for (size_t i = 0; i < req->nheaders; i++) {
        free(req->headers[i].name);
        free(req->headers[i].value);
    }
    free(req->headers);
    for (size_t i = 0; i < req->nresp_headers; i++) {
        free(req->resp_headers[i].name);
        free(req->resp_headers[i].value);
    }
    free(req->resp_headers);
    for (size_t i = 0; i < req->nscratch; i++)
        free(req->scratch[i]);
    free(req->scratch);
    buf_free(&req->body);
    req->api->body_memory -= req->body_memory;
    if (req->body_fd >= 0)
        close(req->body_fd);
    if (req->body_path) {
        unlink(req->body_path);
        free(req->body_path);
    }
    free(req->early_message);
    free(req);
}

/* The response is queued: release the request and go on with the connection. */
/* Changes are told to the audit hook once answered: what the caller changed, not what it
 * tried (a refused request changed nothing); publishing is data, not a change. */
static void api__audit(struct api_request *req)
{
    struct api *api = req->api;
    if (!api->audit || !req->route || req->status >= 400 || req->status == 0 ||
        !strcmp(req->method, "GET") || !strcmp(req->method, "HEAD"))
        return;
    int perm = req->route->flags & API_PERM_MASK;
    if (perm == AUTH_PERM_PUBLIC || perm == AUTH_PERM_PUBLISH)
        return;
    api->audit(api->audit_ctx, req, req->status);
}

static void api__finish(struct api_request *req)
{
    struct api_conn *c = req->conn;
    api__audit(req);
    req->state = API_REQ_DONE;
    bool keep = req->keep_alive;
    if (c)
        c->req = NULL;
    api__request_free(req);
    if (!c || c->closing)
        return;
    if (!keep) {
        c->close_after_write = true;
        if (c->write_pending == 0)
            api__close_or_linger(c);
        return;
    }
    c->active_ms = time_mono_ms();
    c->served = true;
    api__idle_add(c);
    if (c->write_pending > API_WRITE_PENDING_MAX)
        c->write_blocked = true; /* api__write_done goes on once the client reads */
    if (c->in_execute || c->write_blocked)
        return;
    llhttp_resume(&c->parser);
    api__process_pending(c);
}

void api_response_header(struct api_request *req, const char *name, const char *value)
{
    req->resp_headers =
        xrealloc(req->resp_headers, (req->nresp_headers + 1) * sizeof *req->resp_headers);
    req->resp_headers[req->nresp_headers].name = xstrdup(name);
    req->resp_headers[req->nresp_headers].value = xstrdup(value);
    req->nresp_headers++;
}

void api_respond(struct api_request *req, int status, const char *content_type, const void *body,
                 size_t len)
{
    if (req->state == API_REQ_DONE || req->state == API_REQ_STREAMING)
        return;
    req->status = status;
    if (req->conn && !req->conn->closing) {
        struct buf out = {0};
        bool head = !strcmp(req->method, "HEAD");
        bool no_body = status == 204 || status == 304;
        /* 204 and 304 carry neither a length nor a body (-2) */
        api__head(req, &out, status, no_body ? NULL : content_type, no_body ? -2 : (long long)len);
        if (!head && !no_body && len)
            buf_append(&out, body, len);
        api__write(req->conn, out.data, out.len);
        buf_free(&out);
    }
    api__finish(req);
}

void api_respond_json(struct api_request *req, int status, json_t *body)
{
    if (!body) {
        api_respond(req, status, NULL, NULL, 0);
        return;
    }
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!text) {
        api_respond_error(req, SKIFF_E_INTERNAL, "cannot encode the response");
        return;
    }
    size_t len = strlen(text);
    text = xrealloc(text, len + 2);
    text[len++] = '\n';
    api_respond(req, status, "application/json", text, len);
    free(text);
}

void api_respond_error(struct api_request *req, enum skiff_err err, const char *fmt, ...)
{
    struct buf msg = {0};
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        buf_vprintf(&msg, fmt, ap);
        va_end(ap);
    }
    json_t *body = json_pack("{s:{s:s,s:s}}", "error", "code", skiff_err_name(err), "message",
                             msg.data ? msg.data : skiff_strerror(err));
    buf_free(&msg);
    api_respond_json(req, skiff_err_http_status(err), body);
}

void api_stream_begin(struct api_request *req, int status, const char *content_type)
{
    if (req->state != API_REQ_HANDLING)
        return;
    req->state = API_REQ_STREAMING;
    req->status = status;
    api_response_header(req, "Cache-Control", "no-store");
    api_response_header(req, "X-Content-Type-Options", "nosniff");
    if (req->conn && !req->conn->closing) {
        struct buf out = {0};
        api__head(req, &out, status, content_type, -1);
        api__write(req->conn, out.data, out.len);
        buf_free(&out);
    }
}

int api_stream_write(struct api_request *req, const void *data, size_t len)
{
    if (req->state != API_REQ_STREAMING || !req->conn || req->conn->closing || req->aborted)
        return -EPIPE;
    if (len == 0)
        return 0;
    struct buf out = {0};
    buf_printf(&out, "%zx\r\n", len);
    buf_append(&out, data, len);
    buf_puts(&out, "\r\n");
    int rc = api__write(req->conn, out.data, out.len);
    buf_free(&out);
    return rc;
}

size_t api_stream_pending(const struct api_request *req)
{
    return req->conn ? req->conn->write_pending : 0;
}

void api_stream_end(struct api_request *req)
{
    if (req->state == API_REQ_DONE)
        return;
    if (req->state == API_REQ_HANDLING) {
        api_respond(req, 204, NULL, NULL, 0);
        return;
    }
    if (req->conn && !req->conn->closing)
        api__write(req->conn, "0\r\n\r\n", 5);
    api__finish(req);
}

/* ---- request accessors -------------------------------------------------------------------- */

const char *api_request_method(const struct api_request *req)
{
    return req->method;
}
const char *api_request_path(const struct api_request *req)
{
    return req->path;
}

const char *api_request_param(const struct api_request *req, unsigned n)
{
    return n < req->nparams ? req->params[n] : NULL;
}

const char *api_request_query(const struct api_request *req, const char *name)
{
    if (!req->query)
        return NULL;
    const char *p = req->query;
    while (*p) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        size_t klen = eq ? (size_t)(eq - p) : len;
        char *key = api__decode(p, klen, true);
        bool match = key && !strcmp(key, name);
        free(key);
        if (match) {
            char *v = eq ? api__decode(eq + 1, len - klen - 1, true) : xstrdup("");
            if (!v)
                return NULL;
            return api__scratch((struct api_request *)req, v);
        }
        p += len;
        if (*p == '&')
            p++;
    }
    return NULL;
}

const char *api_request_header(const struct api_request *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (!strcasecmp(req->headers[i].name, name))
            return req->headers[i].value;
    return NULL;
}

void api_request_headers_each(const struct api_request *req,
                              void (*fn)(void *ctx, const char *name, const char *value), void *ctx)
{
    for (size_t i = 0; i < req->nheaders; i++)
        fn(ctx, req->headers[i].name, req->headers[i].value);
}

const char *api_request_body(const struct api_request *req, size_t *len)
{
    if (req->route && (req->route->flags & API_BODY_FILE))
        return NULL;
    if (len)
        *len = req->body.len;
    return req->body.data ? req->body.data : "";
}

const char *api_request_body_path(const struct api_request *req)
{
    return req->body_size ? req->body_path : NULL;
}

uint64_t api_request_body_size(const struct api_request *req)
{
    return req->body_size;
}

const char *api_request_caller_app(const struct api_request *req)
{
    return req->by_instance ? req->caller_app : NULL;
}

const char *api_request_caller_instance(const struct api_request *req)
{
    return req->by_instance ? req->caller_instance : NULL;
}

const char *api_request_caller_name(const struct api_request *req)
{
    return req->by_instance ? req->caller_name : NULL;
}

const char *api_request_route(const struct api_request *req)
{
    return req->route ? req->route->pattern : NULL;
}

void api_set_audit(struct api *api, api_audit_fn fn, void *ctx)
{
    api->audit = fn;
    api->audit_ctx = ctx;
}

const struct auth_principal *api_request_principal(const struct api_request *req)
{
    return &req->principal;
}

const char *api_request_org(const struct api_request *req)
{
    return req->org_guid[0] ? req->org_guid : NULL;
}

const char *api_request_space(const struct api_request *req)
{
    return req->space_guid[0] ? req->space_guid : NULL;
}

struct auth *api_auth(struct api *api)
{
    return api->auth;
}

struct auth *api_request_auth(const struct api_request *req)
{
    return req->api->auth;
}

const char *api_request_peer(const struct api_request *req)
{
    return req->conn ? req->conn->peer : "";
}

void api_request_on_abort(struct api_request *req, void (*fn)(void *ctx), void *ctx)
{
    req->abort_fn = fn;
    req->abort_ctx = ctx;
}

bool api_request_aborted(const struct api_request *req)
{
    return req->aborted;
}

json_t *api_request_json_object(struct api_request *req)
{
    size_t len = 0;
    const char *body = api_request_body(req, &len);
    if (!body || len == 0) {
        api_respond_error(req, SKIFF_E_BAD_JSON, "the request needs a JSON object as its body");
        return NULL;
    }
    json_error_t jerr;
    json_t *obj = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!obj) {
        api_respond_error(req, SKIFF_E_BAD_JSON,
                          "the body is not valid JSON (line %d, column %d: %s); send a JSON "
                          "object",
                          jerr.line, jerr.column, jerr.text);
        return NULL;
    }
    if (!json_is_object(obj)) {
        json_decref(obj);
        api_respond_error(req, SKIFF_E_BAD_JSON, "the body must be a JSON object");
        return NULL;
    }
    return obj;
}

bool api_json_check_fields(struct api_request *req, json_t *obj, const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        bool ok = false;
        for (const char *const *a = allowed; *a; a++)
            if (!strcmp(*a, key)) {
                ok = true;
                break;
            }
        if (!ok) {
            struct buf list = {0};
            for (const char *const *a = allowed; *a; a++)
                buf_printf(&list, "%s%s", a == allowed ? "" : ", ", *a);
            api_respond_error(req, SKIFF_E_UNKNOWN_FIELD, "unknown field \"%s\"; known fields: %s",
                              key, list.data ? list.data : "none");
            buf_free(&list);
            return false;
        }
    }
    return true;
}

/* ---- parsing ------------------------------------------------------------------------------ */

static void api__early(struct api_request *req, enum skiff_err err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void api__early(struct api_request *req, enum skiff_err err, const char *fmt, ...)
{
    if (req->early_err)
        return;
    req->early_err = err;
    struct buf msg = {0};
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&msg, fmt, ap);
    va_end(ap);
    req->early_message = buf_steal(&msg);
}

static int api__on_message_begin(llhttp_t *p)
{
    struct api_conn *c = p->data;
    struct api_request *req = xcalloc(1, sizeof *req);
    req->api = c->api;
    req->conn = c;
    req->body_fd = -1;
    req->state = API_REQ_PARSING;
    c->req = req;
    buf_reset(&c->url);
    buf_reset(&c->hfield);
    buf_reset(&c->hvalue);
    c->in_value = false;
    c->header_bytes = 0;
    if (!c->head_start_ms)
        c->head_start_ms = time_mono_ms();
    return 0;
}

static int api__on_url(llhttp_t *p, const char *at, size_t len)
{
    struct api_conn *c = p->data;
    if (c->url.len + len > API_MAX_HEADER_BYTES)
        return -1;
    buf_append(&c->url, at, len);
    return 0;
}

static void api__push_header(struct api_conn *c)
{
    struct api_request *req = c->req;
    if (!c->hfield.len)
        return;
    if (req->nheaders < API_MAX_HEADERS) {
        req->headers = xrealloc(req->headers, (req->nheaders + 1) * sizeof *req->headers);
        req->headers[req->nheaders].name = xstrdup(c->hfield.data);
        req->headers[req->nheaders].value = xstrdup(c->hvalue.data ? c->hvalue.data : "");
        req->nheaders++;
    } else {
        req->headers_dropped = true;
    }
    buf_reset(&c->hfield);
    buf_reset(&c->hvalue);
}

static int api__on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct api_conn *c = p->data;
    c->header_bytes += len;
    if (c->header_bytes > API_MAX_HEADER_BYTES)
        return -1;
    if (c->in_value) {
        api__push_header(c);
        c->in_value = false;
    }
    buf_append(&c->hfield, at, len);
    return 0;
}

static int api__on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct api_conn *c = p->data;
    c->header_bytes += len;
    if (c->header_bytes > API_MAX_HEADER_BYTES)
        return -1;
    c->in_value = true;
    buf_append(&c->hvalue, at, len);
    if (!c->hvalue.data)
        buf_puts(&c->hvalue, "");
    return 0;
}

static int api__on_headers_complete(llhttp_t *p)
{
    struct api_conn *c = p->data;
    struct api_request *req = c->req;
    struct api *api = c->api;
    if (c->in_value)
        api__push_header(c);
    c->in_value = false;
    /* busy with a request from here: no longer the first to close when room is needed */
    api__idle_remove(c);
    c->head_start_ms = 0;
    req->head_done = true;
    snprintf(req->method, sizeof req->method, "%s", llhttp_method_name(p->method));
    req->keep_alive = llhttp_should_keep_alive(p) != 0;

    const char *url = c->url.data ? c->url.data : "/";
    const char *q = strchr(url, '?');
    size_t plen = q ? (size_t)(q - url) : strlen(url);
    req->query = q ? xstrdup(q + 1) : NULL;
    char *raw_path = xstrndup(url, plen);
    req->path = api__decode(raw_path, plen, false);
    req->segs = req->path ? api__split_path(raw_path, &req->nsegs, true) : NULL;
    free(raw_path);
    if (!req->path || !req->segs) {
        if (!req->path)
            req->path = xstrdup("/");
        if (!req->segs)
            req->segs = xcalloc(1, sizeof *req->segs);
        api__early(req, SKIFF_E_BAD_VALUE,
                   "the request path holds an escaped NUL byte (%%00): names never contain one");
    }
    /* answered rather than read without the headers past the limit, which may be the ones
     * that matter (ce-* attributes, Authorization) */
    if (req->headers_dropped)
        api__early(req, SKIFF_E_HEAD_TOO_LARGE, "the request has more than %d headers: send fewer",
                   API_MAX_HEADERS);

    const char *expect = api_request_header(req, "expect");
    req->expect_continue = expect && !strcasecmp(expect, "100-continue");

    bool path_known = false;
    req->route = req->early_err ? NULL : api__match(api, req, &path_known);
    if (!req->early_err && !req->route) {
        if (path_known)
            api__early(req, SKIFF_E_METHOD, "%s is not allowed on %s", req->method, req->path);
        else
            api__early(req, SKIFF_E_NOT_FOUND, "no such endpoint: %s %s (see docs/api.md)",
                       req->method, req->path);
    }
    if (!req->early_err && c->publish_only &&
        (req->route->flags & API_PERM_MASK) != AUTH_PERM_PUBLISH) {
        req->route = NULL;
        api__early(req, SKIFF_E_NOT_FOUND,
                   "this address serves only publishing: POST /v1/topics/TOPIC/events");
    }
    if (!req->early_err && (req->route->flags & API_PERM_MASK) != AUTH_PERM_PUBLIC) {
        int who = api__authenticate(api, req);
        if (who == -1)
            api__early(req, SKIFF_E_UNAUTHORIZED,
                       "missing bearer token: send \"Authorization: Bearer TOKEN\" (`skiff "
                       "login` gets one; a local skiffd's admin token is in $SKIFF_HOME/api.json)");
        else if (who == -2)
            api__early(req, SKIFF_E_UNAUTHORIZED,
                       "the bearer token is not valid (unknown, ended or expired): log in again "
                       "with `skiff login`");
        else if (who == -3)
            api__early(req, SKIFF_E_UNAUTHORIZED,
                       "this instance token is no longer valid: it was given to an instance "
                       "that has stopped, or its app was stopped or deleted (each instance "
                       "gets a token of its own in SKIFF_EVENTS_TOKEN)");
        else if (req->principal.kind == AUTH_INSTANCE &&
                 (req->route->flags & API_PERM_MASK) != AUTH_PERM_PUBLISH)
            api__early(req, SKIFF_E_FORBIDDEN,
                       "an instance token may only publish events; this needs a user's token");
        else {
            char msg[512];
            enum skiff_err err = api__authorize(api, req, msg, sizeof msg);
            if (err)
                api__early(req, err, "%s", msg);
        }
    }
    if (!req->early_err) {
        bool to_file = req->route->flags & API_BODY_FILE;
        /* public routes take no body: nobody unknown gets to make skiffd hold one */
        bool public = (req->route->flags & API_PERM_MASK) == AUTH_PERM_PUBLIC;
        req->body_limit = public ? ((req->route->flags & API_SMALL_BODY) ? API_SMALL_BODY_MAX : 0)
                          : to_file ? api->upload_max
                                    : API_BODY_MEMORY_MAX;
        if ((p->flags & F_CONTENT_LENGTH) && p->content_length > req->body_limit)
            api__early(req, SKIFF_E_TOO_LARGE,
                       "the body is %llu bytes, more than the limit of %llu bytes%s",
                       (unsigned long long)p->content_length, (unsigned long long)req->body_limit,
                       to_file ? ": make the upload smaller (.cfignore/.skiffignore can leave "
                                 "files out) or raise SKIFF_MAX_UPLOAD_MB"
                               : "");
        else if (!to_file && (p->flags & F_CONTENT_LENGTH) &&
                 api->body_memory + p->content_length > API_BODY_MEMORY_BUDGET)
            api__early(req, SKIFF_E_BUSY,
                       "skiffd is receiving too many request bodies at once: retry in a moment");
        else if (to_file) {
            req->body_path =
                xasprintf("%s/tmp/upload-%d-%u", api->home, (int)getpid(), ++api->tmp_seq);
            req->body_fd = open(req->body_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
            if (req->body_fd < 0)
                api__early(req, SKIFF_E_INTERNAL, "cannot store the upload: %s", strerror(errno));
        }
    }
    if (req->early_err) {
        /* decided from the head: answered now, whatever body was announced is not read */
        api__answer_now(c, req, (p->flags & F_CHUNKED) ||
                                    ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0));
        return HPE_PAUSED;
    }
    if (req->expect_continue) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        api__write(c, cont, sizeof cont - 1);
    }
    return 0;
}

static int api__on_body(llhttp_t *p, const char *at, size_t len)
{
    struct api_conn *c = p->data;
    struct api_request *req = c->req;
    req->body_size += len;
    if (req->early_err)
        return 0;
    if (req->body_size > req->body_limit) {
        api__early(req, SKIFF_E_TOO_LARGE, "the body is larger than the limit of %llu bytes",
                   (unsigned long long)req->body_limit);
        api__answer_now(c, req, true);
        return HPE_PAUSED;
    }
    if (req->body_fd >= 0) {
        while (len > 0) {
            ssize_t w = write(req->body_fd, at, len);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                api__early(req, SKIFF_E_INTERNAL, "cannot store the upload: %s", strerror(errno));
                api__answer_now(c, req, true);
                return HPE_PAUSED;
            }
            at += w;
            len -= (size_t)w;
        }
    } else {
        if (c->api->body_memory + len > API_BODY_MEMORY_BUDGET) {
            api__early(req, SKIFF_E_BUSY,
                       "skiffd is receiving too many request bodies at once: retry in a moment");
            api__answer_now(c, req, true);
            return HPE_PAUSED;
        }
        buf_append(&req->body, at, len);
        req->body_memory += len;
        c->api->body_memory += len;
    }
    return 0;
}

/* Answers an error found before the body was read, at once, and ends the connection after
 * the answer: lingering (reading and dropping for a while) when a body may still come. */
static void api__answer_now(struct api_conn *c, struct api_request *req, bool body_follows)
{
    req->keep_alive = false;
    c->linger_wanted = body_follows;
    req->state = API_REQ_HANDLING;
    api__dispatch(req);
}

static void api__dispatch(struct api_request *req)
{
    if (req->early_err) {
        api_respond_error(req, req->early_err, "%s", req->early_message);
        return;
    }
    if (req->body_fd >= 0) {
        close(req->body_fd);
        req->body_fd = -1;
    }
    req->route->fn(req, req->route->ctx);
}

static int api__on_message_complete(llhttp_t *p)
{
    struct api_conn *c = p->data;
    struct api_request *req = c->req;
    req->state = API_REQ_HANDLING;
    api__dispatch(req);
    /* pause: nothing more is parsed until this request is finished (it may already be) */
    return HPE_PAUSED;
}

/* ---- connections -------------------------------------------------------------------------- */

static void api__conn_closed(uv_handle_t *h)
{
    struct api_conn *c = h->data;
    struct api *api = c->api;
    buf_free(&c->url);
    buf_free(&c->hfield);
    buf_free(&c->hvalue);
    buf_free(&c->pending);
    free(c);
    api__handle_closed(api);
}

static void api__conn_close(struct api_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->prev)
        c->prev->next = c->next;
    else
        c->api->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    api__idle_remove(c);
    c->api->nconns--;
    api__client_put(c->api, c->client);
    c->client = NULL;
    struct api_request *req = c->req;
    c->req = NULL;
    if (req) {
        req->conn = NULL;
        if (req->state == API_REQ_PARSING) {
            api__request_free(req);
        } else if (req->state != API_REQ_DONE) {
            req->aborted = true;
            if (req->abort_fn) {
                void (*fn)(void *) = req->abort_fn;
                req->abort_fn = NULL;
                fn(req->abort_ctx);
            }
        }
    }
    uv_close((uv_handle_t *)&c->tcp, api__conn_closed);
}

static void api__bad_request(struct api_conn *c, const char *why)
{
    enum skiff_err err = SKIFF_E_BAD_REQUEST;
    char body[512];
    int n = snprintf(body, sizeof body, "{\"error\":{\"code\":\"%s\",\"message\":\"%s: %s\"}}\n",
                     skiff_err_name(err), skiff_strerror(err), why);
    char head[256];
    int h = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\nConnection: close\r\n\r\n",
                     skiff_err_http_status(err), api__reason(skiff_err_http_status(err)), n);
    api__write(c, head, (size_t)h);
    api__write(c, body, (size_t)n);
    c->close_after_write = true;
    c->linger_wanted = true; /* the rest of what it sends is not read */
    if (c->req && c->req->state == API_REQ_PARSING) {
        api__request_free(c->req);
        c->req = NULL;
    }
    if (c->write_pending == 0)
        api__close_or_linger(c);
}

static void api__on_shutdown(uv_shutdown_t *sr, int status)
{
    struct api_conn *c = sr->data;
    if (status < 0 && !c->closing)
        api__conn_close(c);
}

/* Closes c once its answer is out; when it was answered before its body was read, first
 * sends FIN and reads and drops what still comes for a while, so that the close does not
 * reset the connection before the client has read the answer. */
static void api__close_or_linger(struct api_conn *c)
{
    if (c->closing || c->lingering)
        return;
    if (!c->linger_wanted) {
        api__conn_close(c);
        return;
    }
    c->lingering = true;
    c->linger_until_ms = time_mono_ms() + API_LINGER_MS;
    api__idle_add_front(c);
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, api__on_shutdown) < 0) {
        api__conn_close(c);
        return;
    }
    if (!c->reading) {
        c->reading = true;
        api__start_reading(c);
    }
}

/* Feeds bytes to the parser; whatever arrives after a complete request waits in pending. */
static void api__feed(struct api_conn *c, const char *data, size_t len)
{
    enum llhttp_errno e;
    for (;;) {
        c->in_execute = true;
        e = llhttp_execute(&c->parser, data, len);
        c->in_execute = false;
        if (e == HPE_OK)
            return;
        if (e != HPE_PAUSED)
            break;
        const char *pos = llhttp_get_error_pos(&c->parser);
        size_t rest = pos && pos >= data && pos < data + len ? (size_t)(data + len - pos) : 0;
        if (!c->req && !c->closing && !c->close_after_write && !c->write_blocked) {
            /* the request was answered at once: go on with the pipelined rest */
            llhttp_resume(&c->parser);
            if (!rest)
                return;
            data = pos;
            len = rest;
            continue;
        }
        /* pending may be what we are parsing: copy out first */
        struct buf keep = {0};
        if (rest)
            buf_append(&keep, pos, rest);
        buf_free(&c->pending);
        c->pending = keep;
        return;
    }
    const char *reason = llhttp_get_error_reason(&c->parser);
    char why[200];
    snprintf(why, sizeof why, "%s", reason ? reason : llhttp_errno_name(e));
    for (char *q = why; *q; q++)
        if (*q == '"' || *q == '\\' || (unsigned char)*q < 0x20)
            *q = ' ';
    api__bad_request(c, why);
}

static void api__process_pending(struct api_conn *c)
{
    if (!c->reading && !c->closing) {
        c->reading = true;
        api__start_reading(c);
    }
    if (c->pending.len == 0)
        return;
    struct buf data = c->pending;
    memset(&c->pending, 0, sizeof c->pending);
    api__feed(c, data.data, data.len);
    buf_free(&data);
}

static void api__alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)suggested;
    struct api_conn *c = h->data;
    *b = uv_buf_init(c->api->read_buf, sizeof c->api->read_buf);
}

static void api__on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct api_conn *c = s->data;
    c->active_ms = time_mono_ms();
    if (n < 0) {
        api__conn_close(c);
        return;
    }
    if (c->lingering) {
        c->linger_bytes += (uint64_t)n;
        if (c->linger_bytes > API_LINGER_BYTES)
            api__conn_close(c);
        return;
    }
    if (n == 0 || c->closing || c->close_after_write) {
        return;
    }
    if (c->write_blocked || (c->req && c->req->state != API_REQ_PARSING)) {
        /* a request is being handled: keep what comes (pipelined requests) for later */
        buf_append(&c->pending, b->base, (size_t)n);
        if (c->pending.len > API_PENDING_MAX) {
            uv_read_stop(s);
            c->reading = false;
        }
        return;
    }
    api__feed(c, b->base, (size_t)n);
}

static void api__start_reading(struct api_conn *c)
{
    uv_read_start((uv_stream_t *)&c->tcp, api__alloc, api__on_read);
}

/* Takes over an accepted socket, once there is room for it under the caps. */
static void api__conn_start(struct api *api, struct api_listener *l, int fd,
                            const struct sockaddr_storage *ss)
{
    unsigned char key[16];
    api__client_key(ss, key);
    struct api_client *cl = api__client_get(api, key);
    if (!api__admit(api, cl)) {
        /* every connection over the cap is busy with a request: this one waits no longer */
        api__client_put(api, cl);
        close(fd);
        return;
    }
    struct api_conn *c = xcalloc(1, sizeof *c);
    c->api = api;
    c->publish_only = l->publish_only;
    uv_tcp_init(api->loop, &c->tcp);
    c->tcp.data = c;
    api->handles_open++;
    if (uv_tcp_open(&c->tcp, fd) < 0) {
        close(fd);
        api__client_put(api, cl);
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, api__conn_closed);
        return;
    }
    c->client = cl;
    api->nconns++;
    uv_tcp_nodelay(&c->tcp, 1);
    char ip[48] = "";
    if (ss->ss_family == AF_INET) {
        uv_ip4_name((const struct sockaddr_in *)ss, ip, sizeof ip);
        snprintf(c->peer, sizeof c->peer, "%s:%d", ip,
                 ntohs(((const struct sockaddr_in *)ss)->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        uv_ip6_name((const struct sockaddr_in6 *)ss, ip, sizeof ip);
        snprintf(c->peer, sizeof c->peer, "[%s]:%d", ip,
                 ntohs(((const struct sockaddr_in6 *)ss)->sin6_port));
    }
    http_parser_init(&c->parser, HTTP_ROLE_SERVER, api__settings_fill, c);
    c->next = api->conns;
    if (api->conns)
        api->conns->prev = c;
    api->conns = c;
    c->reading = true;
    c->active_ms = time_mono_ms();
    api__idle_add(c);
    api__start_reading(c);
}

/* Stops accepting for API_ACCEPT_PAUSE_MS after a resource error (the connections wait in the
 * backlog meanwhile); accepting always resumes by itself. */
static void api__pause_accepting(struct api *api, int err)
{
    int64_t now = time_mono_ms();
    if (now - api->last_pressure_log_ms > 10000) {
        api->last_pressure_log_ms = now;
        log_error("the API cannot accept connections now (%s): trying again every %d ms; "
                "%u connections open",
                strerror(err), API_ACCEPT_PAUSE_MS, api->nconns);
    }
    if (api->accept_paused || !api->accept_timer_open)
        return;
    api->accept_paused = true;
    for (int i = 0; i < api->nlisteners; i++)
        if (api->listeners[i].open)
            uv_poll_stop(&api->listeners[i].poll);
    uv_timer_start(&api->accept_timer, api__resume_accepting, API_ACCEPT_PAUSE_MS, 0);
}

static void api__resume_accepting(uv_timer_t *t)
{
    struct api *api = t->data;
    api->accept_paused = false;
    if (api->closing)
        return;
    if (api->reserve_fd < 0)
        api->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    for (int i = 0; i < api->nlisteners; i++)
        if (api->listeners[i].open)
            uv_poll_start(&api->listeners[i].poll, UV_READABLE, api__on_listen_ready);
}

static void api__on_listen_ready(uv_poll_t *h, int status, int events)
{
    struct api_listener *l = h->data;
    struct api *api = l->api;
    (void)events;
    if (api->closing)
        return;
    if (status < 0) {
        api__pause_accepting(api, -status);
        return;
    }
    for (int n = 0; n < API_ACCEPT_BATCH; n++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            api__conn_start(api, l, fd, &ss);
            continue;
        }
        int err = errno;
        if (err == EINTR || err == ECONNABORTED || err == EPROTO)
            continue;
        if (err == EAGAIN || err == EWOULDBLOCK)
            return;
        if ((err == EMFILE || err == ENFILE) && api->reserve_fd >= 0) {
            /* out of descriptors: the reserve makes room to take the waiting connection and
             * close it, so its client hears at once rather than hanging in the backlog */
            close(api->reserve_fd);
            api->reserve_fd = -1;
            int shed = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
            if (shed >= 0)
                close(shed);
            api->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        }
        api__pause_accepting(api, err);
        return;
    }
}

static void api__sweep(uv_timer_t *t)
{
    struct api *api = t->data;
    int64_t now = time_mono_ms();
    struct api_conn *c = api->conns;
    while (c) {
        struct api_conn *next = c->next;
        struct api_request *req = c->req;
        if (c->lingering) {
            if (now >= c->linger_until_ms)
                api__conn_close(c);
        } else if (req && req->state != API_REQ_PARSING) {
            /* a request being handled or streamed is the handler's business, not a stall */
        } else if (req && req->head_done) {
            if (now - c->active_ms > API_REQUEST_MS) /* a body that stalls */
                api__conn_close(c);
        } else if (c->head_start_ms) {
            if (now - c->head_start_ms > API_HEAD_MS) /* a head that never ends */
                api__conn_close(c);
        } else if (now - c->idle_since_ms > (c->served ? API_IDLE_MS : API_HEAD_MS)) {
            api__conn_close(c); /* silent since it connected, or idle since its last answer */
        }
        c = next;
    }
}

static void api__settings_fill(llhttp_settings_t *s)
{
    s->on_message_begin = api__on_message_begin;
    s->on_url = api__on_url;
    s->on_header_field = api__on_header_field;
    s->on_header_value = api__on_header_value;
    s->on_headers_complete = api__on_headers_complete;
    s->on_body = api__on_body;
    s->on_message_complete = api__on_message_complete;
}
