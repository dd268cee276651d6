#include "daemon/builtin_brokers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "api/api.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "container/net.h"
#include "services/services.h"

#define BB_NAME "skiff-builtin"
#define BB_RESTART_MS 1000
#define BB_REGISTER_RETRY_MS 100
#define BB_REGISTER_TRIES 300
#define BB_STOP_MS 30000

struct builtin_brokers {
    uv_loop_t *loop;
    char *binary, *config_path, *url, *username, *password, *owner;
    struct api_svc *svc;
    struct services *records;
    unsigned char events_key[32];
    const struct net_pool *pool;
    int ports[2];      /* the stores' ports, opened in the firewall */
    uv_process_t proc; /* the program while pid is not 0 (closed when it exits) */
    int pid;
    uv_timer_t timer; /* restarts and registration retries */
    int register_tries;
    bool registered;
};

/* Whether a TCP port is free on address ip. */
static bool bb__port_free(const char *ip, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    bool ok = fd >= 0 && inet_pton(AF_INET, ip, &sa.sin_addr) == 1 &&
              bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* A port free on loopback and on the service host, below the kernel's ephemeral range. The
 * stores' ports are open in the firewall on the host address every instance reaches, which
 * all skiffds of a machine share: a port from the ephemeral range could be the number another
 * program there was given for a socket of its own on loopback (a router's admin port), which
 * its instances must not find answering on the host address. 0 when none is found. */
static int bb__free_port(const char *service_host)
{
    int low = 32768;
    char *range = NULL;
    if (file_read("/proc/sys/net/ipv4/ip_local_port_range", &range, NULL) == 0) {
        int a = atoi(range);
        if (a > 0)
            low = a;
        free(range);
    }
    const int first = 20000;
    if (low - first < 1000)
        return 0;
    int span = low - first;
    int start = (int)randombytes_uniform((uint32_t)span);
    for (int i = 0; i < span; i++) {
        int port = first + (start + i) % span;
        if (bb__port_free("127.0.0.1", port) && bb__port_free(service_host, port))
            return port;
    }
    return 0;
}

static int bb__port(json_t *cfg, const char *key, const char *service_host)
{
    json_int_t p = json_integer_value(json_object_get(cfg, key));
    if (p <= 0 || p > 65535) {
        p = bb__free_port(service_host);
        json_object_set_new(cfg, key, json_integer(p));
    }
    return (int)p;
}

/* The events offering's key into bb: the home's, or on a shared store the one the store keeps
 * (services_shared_key), which skiff-brokers then reads from the home too. */
static int bb__events_key(struct builtin_brokers *bb, const struct builtin_brokers_config *cfg)
{
    char *dir = xasprintf("%s/brokers", cfg->home);
    int rc = mkdir_p(dir, 0711);
    free(dir);
    char *path = xasprintf("%s/brokers/events.key", cfg->home);
    if (rc == 0)
        rc = cfg->shared
                 ? services_shared_key(cfg->records, SERVICES_KIND_EVENTS_KEY, path, bb->events_key)
                 : services_binding_key(path, bb->events_key);
    if (rc < 0)
        log_error("cannot read the events offering's key %s: %s", path, skiff_strerror(rc));
    free(path);
    return rc;
}

/* On a shared store, the skiffd whose built-in brokers serve it when it is another ("ID at
 * URL"), else NULL. The broker's record names its owner once registered; before that, the
 * first skiffd to leave its id in document SERVICES_KIND_BUILTIN_OWNER is the owner, so that
 * two skiffds starting at once on a new store do not both start and register brokers. */
static char *bb__other_owner(const struct builtin_brokers_config *cfg)
{
    if (!cfg->shared || !cfg->records)
        return NULL;
    json_t *b = services_find(cfg->records, SERVICES_KIND_BROKER, NULL, BB_NAME);
    json_t *owner = json_incref(json_object_get(b, "builtin_owner"));
    if (!json_is_string(owner)) {
        json_t *mine = json_string(cfg->owner);
        int rc;
        json_decref(owner);
        owner = services_shared(cfg->records, SERVICES_KIND_BUILTIN_OWNER, mine, &rc);
        json_decref(mine);
        if (!owner)
            log_error("cannot read whose built-in service brokers serve this store: %s (this "
                      "skiffd starts its own)",
                      skiff_strerror(rc));
    }
    const char *id = json_string_value(owner);
    const char *url = json_string_value(json_object_get(b, "url"));
    char *other = id && strcmp(id, cfg->owner)
                      ? xasprintf("%s at %s", id, url ? url : "an address not registered yet")
                      : NULL;
    json_decref(owner);
    json_decref(b);
    return other;
}

/* Reads (or makes) the config file, brought up to date with this start's addresses. */
static int bb__config(struct builtin_brokers *bb, const struct builtin_brokers_config *cfg)
{
    char *dir = xasprintf("%s/brokers", cfg->home);
    int rc = mkdir_p(dir, 0711);
    if (rc == 0)
        rc = chmod(dir, 0711) < 0 ? -errno : 0;
    free(dir);
    if (rc < 0)
        return rc;
    json_t *c = json_load_file(bb->config_path, 0, NULL);
    if (!json_is_object(c)) {
        json_decref(c);
        c = json_object();
    }
    int port = bb__port(c, "broker_port", cfg->listen_host);
    bb->ports[0] = bb__port(c, "postgres_port", cfg->service_host);
    bb->ports[1] = bb__port(c, "redis_port", cfg->service_host);
    if (!port || !bb->ports[0] || !bb->ports[1]) {
        log_error("built-in brokers: no free port between 20000 and the ephemeral range");
        json_decref(c);
        return -EADDRINUSE;
    }
    if (!json_is_string(json_object_get(c, "username")))
        json_object_set_new(c, "username", json_string("skiff-builtin"));
    if (!json_is_string(json_object_get(c, "password"))) {
        unsigned char raw[32];
        char pw[44];
        randombytes_buf(raw, sizeof raw);
        sodium_bin2base64(pw, sizeof pw, raw, sizeof raw, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        json_object_set_new(c, "password", json_string(pw));
        sodium_memzero(pw, sizeof pw);
    }
    char *listen = xasprintf("%s:%d", cfg->listen_host, port);
    char *hosts = strcmp(cfg->service_host, "127.0.0.1")
                      ? xasprintf("127.0.0.1,%s", cfg->service_host)
                      : xstrdup("127.0.0.1");
    json_object_set_new(c, "home", json_string(cfg->home));
    json_object_set_new(c, "listen", json_string(listen));
    json_object_set_new(c, "service_host", json_string(cfg->service_host));
    json_object_set_new(c, "listen_hosts", json_string(hosts));
    if (cfg->events_url) {
        json_object_set_new(c, "events_url", json_string(cfg->events_url));
        char *key = xasprintf("%s/brokers/events.key", cfg->home);
        json_object_set_new(c, "events_key", json_string(key));
        free(key);
        rc = bb__events_key(bb, cfg);
        if (rc < 0) {
            json_decref(c);
            free(listen);
            free(hosts);
            return rc;
        }
    }
    bb->url = xasprintf("http://%s", listen);
    bb->username = xstrdup(json_string_value(json_object_get(c, "username")));
    bb->password = xstrdup(json_string_value(json_object_get(c, "password")));
    char *text = json_dumps(c, JSON_INDENT(2));
    rc = file_write_atomic(bb->config_path, text, strlen(text), 0600);
    sodium_memzero(text, strlen(text));
    free(text);
    free(listen);
    free(hosts);
    json_decref(c);
    return rc;
}

static void bb__spawn(struct builtin_brokers *bb);
static void bb__register(struct builtin_brokers *bb);

static void bb__tick(uv_timer_t *t)
{
    struct builtin_brokers *bb = t->data;
    if (!bb->pid)
        bb__spawn(bb);
    else if (!bb->registered)
        bb__register(bb);
}

static void bb__exited(uv_process_t *p, int64_t status, int sig)
{
    struct builtin_brokers *bb = p->data;
    uv_close((uv_handle_t *)p, NULL);
    bb->pid = 0;
    if (uv_is_closing((uv_handle_t *)&bb->timer))
        return;
    log_warning("skiff-brokers exited (status %lld, signal %d): starting it again",
                (long long)status, sig);
    uv_timer_start(&bb->timer, bb__tick, BB_RESTART_MS, 0);
}

static void bb__spawn(struct builtin_brokers *bb)
{
    char *argv[] = {bb->binary, "--config", bb->config_path, "--stop-with-parent", NULL};
    uv_process_options_t opt = {
        .file = bb->binary,
        .args = argv,
        .exit_cb = bb__exited,
        .stdio_count = 3,
        .stdio = (uv_stdio_container_t[3]){{.flags = UV_IGNORE},
                                           {.flags = UV_INHERIT_FD, .data.fd = 1},
                                           {.flags = UV_INHERIT_FD, .data.fd = 2}}};
    uv_process_t *p = &bb->proc;
    p->data = bb;
    int rc = uv_spawn(bb->loop, p, &opt);
    if (rc < 0) {
        uv_close((uv_handle_t *)p, NULL);
        log_error("cannot start %s: %s (the built-in service brokers are off until skiffd "
                  "restarts)",
                  bb->binary, uv_strerror(rc));
        return;
    }
    bb->pid = p->pid;
    uv_unref((uv_handle_t *)p); /* it never keeps skiffd from exiting: free stops it */
    bb->register_tries = 0;
    if (!bb->registered)
        uv_timer_start(&bb->timer, bb__tick, BB_REGISTER_RETRY_MS, 0);
}

static void bb__registered(void *arg, bool ok, const char *msg)
{
    struct builtin_brokers *bb = arg;
    if (uv_is_closing((uv_handle_t *)&bb->timer))
        return;
    if (ok) {
        bb->registered = true;
        log_info("the built-in service brokers are registered as \"" BB_NAME "\" (%s)", bb->url);
        return;
    }
    if (++bb->register_tries >= BB_REGISTER_TRIES) {
        log_error("cannot register the built-in service brokers: %s", msg);
        return;
    }
    uv_timer_start(&bb->timer, bb__tick, BB_REGISTER_RETRY_MS, 0);
}

static void bb__register(struct builtin_brokers *bb)
{
    api_svc_builtin_broker(bb->svc, BB_NAME, bb->url, bb->username, bb->password, bb->owner,
                           bb__registered, bb);
}

/* The api's binding check: a token the events backend made, whose binding skiffd still
 * keeps, for the binding's instance (the topic) in the instance's space. */
static bool bb__binding_check(void *ctx, const char *token, char topic[64], char space_guid[37],
                              char *name, size_t size)
{
    struct builtin_brokers *bb = ctx;
    char inst[65], bind[65];
    if (!services_binding_token_check(bb->events_key, token, inst, bind) || strlen(inst) > 63)
        return false;
    json_t *b = services_get(bb->records, SERVICES_KIND_BINDING, bind);
    json_t *i = services_get(bb->records, SERVICES_KIND_INSTANCE, inst);
    const char *b_inst = json_string_value(json_object_get(b, "instance_guid"));
    const char *space = json_string_value(json_object_get(i, "space_guid"));
    bool ok = b_inst && !strcmp(b_inst, inst) && space && strlen(space) < 37;
    if (ok) {
        memcpy(topic, inst, strlen(inst) + 1); /* at most 63 characters, checked above */
        snprintf(space_guid, 37, "%s", space);
        snprintf(name, size, "%s", json_string_value(json_object_get(i, "name")) ?: inst);
    }
    json_decref(b);
    json_decref(i);
    return ok;
}

/* The timer of restarts and registration (closed with the loop's handles). */
static void bb__timer_init(struct builtin_brokers *bb)
{
    uv_timer_init(bb->loop, &bb->timer);
    uv_unref((uv_handle_t *)&bb->timer);
    bb->timer.data = bb;
}

struct builtin_brokers *builtin_brokers_start(uv_loop_t *loop,
                                              const struct builtin_brokers_config *cfg)
{
    if (access(cfg->binary, X_OK) != 0) {
        log_warning("%s is missing: no built-in service brokers (build it with `make`)",
                    cfg->binary);
        return NULL;
    }
    struct builtin_brokers *bb = xcalloc(1, sizeof *bb);
    bb->loop = loop;
    bb->svc = cfg->svc;
    bb->records = cfg->records;
    bb->binary = xstrdup(cfg->binary);
    bb->config_path = xasprintf("%s/brokers/config.json", cfg->home);
    bb->owner = xstrdup(cfg->owner);
    char *other = bb__other_owner(cfg);
    if (other) { /* one skiffd's brokers serve a store: they keep their stores' data */
        log_info("the built-in service brokers of skiffd %s serve this store: this skiffd's "
                 "stay off, and it takes their events tokens",
                 other);
        free(other);
        bb__timer_init(bb);
        if (cfg->events_url && cfg->api && bb__events_key(bb, cfg) == 0)
            api_set_binding_check(cfg->api, bb__binding_check, bb);
        return bb;
    }
    int rc = bb__config(bb, cfg);
    if (rc < 0) {
        log_error("cannot write %s: %s (no built-in service brokers)", bb->config_path,
                  skiff_strerror(rc));
        builtin_brokers_free(bb, true);
        return NULL;
    }
    /* the stores run as their own system users, who must reach their folders in the home */
    if (geteuid() == 0)
        chmod(cfg->home, 0711);
    char err[256];
    if (cfg->pool) {
        bb->pool = cfg->pool;
        for (int i = 0; i < 2; i++)
            if (net_firewall_allow_publish(cfg->pool, bb->ports[i], err, sizeof err) < 0)
                log_error("containers cannot reach the built-in stores: %s", err);
    }
    if (cfg->events_url && cfg->api && cfg->records)
        api_set_binding_check(cfg->api, bb__binding_check, bb);
    bb__timer_init(bb);
    bb__spawn(bb);
    return bb;
}

void builtin_brokers_free(struct builtin_brokers *bb, bool stop)
{
    if (!bb)
        return;
    if (stop && bb->pid > 0 && kill(bb->pid, SIGTERM) == 0) {
        int status;
        int64_t deadline = time_mono_ms() + BB_STOP_MS;
        while (waitpid(bb->pid, &status, WNOHANG) == 0) {
            if (time_mono_ms() > deadline) {
                kill(bb->pid, SIGKILL);
                waitpid(bb->pid, &status, 0);
                break;
            }
            struct timespec ts = {0, 10 * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    if (bb->pool && stop)
        for (int i = 0; i < 2; i++)
            net_firewall_forget_publish(bb->pool, bb->ports[i]);
    sodium_memzero(bb->events_key, sizeof bb->events_key);
    free(bb->binary);
    free(bb->owner);
    free(bb->config_path);
    free(bb->url);
    free(bb->username);
    if (bb->password)
        sodium_memzero(bb->password, strlen(bb->password));
    free(bb->password);
    free(bb);
}
