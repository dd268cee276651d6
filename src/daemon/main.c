/* skiffd: the control process. Store, API, scheduler, logs, bus, and the router's keeper. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <sodium.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

#include "api/api.h"
#include "api/audit.h"
#include "api/core.h"
#include "api/tenancy.h"
#include "auth/auth.h"
#include "blobs/blobs.h"
#include "autoscaler/autoscaler.h"
#include "bus/bus.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "container/container.h"
#include "container/net.h"
#include "cell/cell.h"
#include "cell/client.h"
#include "hosts/hosts.h"
#include "cells/cells.h"
#include "daemon/builtin_brokers.h"
#include "daemon/leader.h"
#include "daemon/router_proc.h"
#include "common/buf.h"
#include "tls/tls.h"
#include "executor/executor.h"
#include "hub/hub.h"
#include "invoker/invoker.h"
#include "logs/logs.h"
#include "scheduler/scheduler.h"
#include "services/services.h"
#include "store/store.h"

struct daemon {
    uv_loop_t *loop;
    struct blob_store *blobs;    /* packages and droplets (src/blobs), beside the store */
    uv_poll_t *store_feed;       /* the store's change feed (PostgreSQL): other skiffds' writes */
    uv_timer_t store_feed_retry; /* a lost feed's next try */
    uv_poll_t store_writes;      /* the store's finished writes (PostgreSQL's writer thread) */
    uint64_t routes_news;        /* store_routes_news when the table was last sent for it */
    char *home;
    char *api_addr;
    char *router_addr;
    char *router_admin_addr;
    char *router_tls_addr;
    char *api_tls_addr;
    struct tls_store *api_tls; /* the API's HTTPS certificate */
    char *api_cert_path, *api_key_path; /* read again on SIGHUP */
    char *router_url;
    char *token;
    struct store *store;
    struct auth *auth;
    struct logs *logs;
    struct api *api;
    struct api_core *core;
    struct api_tenancy *tenancy;
    struct api_audit *audit;
    struct hub *hub; /* platform events: the scheduler, API and staging publish there */
    struct scheduler *sched;
    struct invoker *invoker; /* event delivery, on the events API's fabric */
    struct autoscaler *autoscaler; /* request scaling, fed by the routers through the bus */
    struct bus *bus;
    struct hosts *hosts; /* --host-addr: the other hosts on NATS (src/hosts) */
    struct router_proc *router;
    struct api_events *events; /* the topics' endpoints and the fabric */
    struct services *services; /* service instances, bindings, brokers (records) */
    struct api_svc *svc;       /* their endpoints and the broker calls */
    /* a shared store (PostgreSQL): whether this skiffd leads (NULL: it always does) */
    struct leader *leader;
    bool leading_decided; /* the leader said once whether this skiffd leads */
    uv_timer_t resync;    /* while leading a shared store: other skiffds' writes converged */
    uv_timer_t catch_up;  /* on a shared store, leading or not: other skiffds' writes seen */
    struct cells *cells;  /* this skiffd's heartbeats, GET /v1/cells */
    uv_signal_t sigterm, sigint, sigusr2, sighup;
    bool stopping;
    /* while stopping: the step waited for, said every DAEMON_STOP_WATCH_MS (unreferenced) */
    const char *stop_step;
    int64_t stop_began;
    uv_timer_t stop_watch;
    bool detach; /* SIGUSR2: leave the router and the instances serving for the next skiffd */
    int64_t catch_up_began; /* when the last auth_catch_up_async began */
    int exit_code;
};

static void usage(FILE *out)
{
    fputs(
        "usage: skiffd [--home DIR] [--api-addr HOST:PORT] [--router-addr HOST:PORT]\n"
        "              [--router-admin-addr HOST:PORT] [--drain-timeout-ms MS]\n"
        "\n"
        "Runs the Skiff platform on this machine: the API, the scheduler, and the router.\n"
        "  --home DIR                  data folder (SKIFF_HOME, default ~/.skiff)\n"
        "  --api-addr HOST:PORT        API address (SKIFF_API_ADDR, default 127.0.0.1:8090)\n"
        "  --router-addr HOST:PORT     router address (SKIFF_ROUTER_ADDR, default "
        "127.0.0.1:8080)\n"
        "  --router-admin-addr H:P     router admin (SKIFF_ROUTER_ADMIN_ADDR, default "
        "127.0.0.1:8083)\n"
        "  --router-tls-addr H:P       router HTTPS (SKIFF_ROUTER_TLS_ADDR, default "
        "127.0.0.1:8443;\n"
        "                              \"\" for none); certificates from HOME/tls\n"
        "  --api-tls-addr H:P          API over HTTPS (SKIFF_API_TLS_ADDR, default "
        "127.0.0.1:8091;\n"
        "                              \"\" for none)\n"
        "  --tls-cert FILE --tls-key FILE\n"
        "                              the API's HTTPS certificate chain and key "
        "(SKIFF_TLS_CERT,\n"
        "                              SKIFF_TLS_KEY; default: the local CA's "
        "HOME/tls/default.pem)\n"
        "  --isolation container|process\n"
        "                              how instances and stagings run (SKIFF_ISOLATION, default\n"
        "                              container). process runs tenants' code as skiffd's own\n"
        "                              user with no isolation at all: UNSAFE, for development\n"
        "  --store URL                 the store (SKIFF_STORE, default sqlite:HOME/skiff.db);\n"
        "                              postgres://USER[:PASSWORD]@HOST/DB for PostgreSQL\n"
        "  --store-queue-max N         writes waiting for PostgreSQL past which new ones are\n"
        "                              refused (503) until it answers (SKIFF_STORE_QUEUE_MAX,\n"
        "                              default 10000)\n"
        "  --nats URL[,URL...]         keep events in NATS JetStream instead of the embedded log\n"
        "                              (SKIFF_NATS), e.g. nats://h1:4222,nats://h2:4222, and\n"
        "                              announce the route table on NATS core for routers on\n"
        "                              other hosts (docs/bus.md; SKIFF_BUS_ANNOUNCE_MS, default\n"
        "                              10000, and SKIFF_BUS_TTL_MS, default 30000)\n"
        "  --nats-creds FILE           a NATS credentials file (JWT and seed, as nats --creds;\n"
        "                              SKIFF_NATS_CREDS); a user and password go in the URL\n"
        "                              (nats://USER:PASSWORD@HOST:PORT, best in SKIFF_NATS)\n"
        "  --nats-tls-ca FILE          TLS to NATS, trusting this CA (SKIFF_NATS_TLS_CA); so do\n"
        "                              tls:// URLs\n"
        "  --nats-tls-cert FILE --nats-tls-key FILE\n"
        "                              a client certificate for NATS (SKIFF_NATS_TLS_CERT,\n"
        "                              SKIFF_NATS_TLS_KEY); docs/bus.md has the permissions\n"
        "  --zone NAME                 this cell's zone, shown by `skiff cells` (SKIFF_ZONE,\n"
        "                              default \"default\")\n"
        "  --role all|controller|cell|router\n"
        "                              all (default, SKIFF_ROLE): the whole platform; router: a\n"
        "                              lone skiff-router that learns its routes from --nats (no\n"
        "                              API, scheduler or executor), on --router-addr,\n"
        "                              --router-admin-addr and, when given, --router-tls-addr;\n"
        "                              cell: an executor that takes start and stop requests\n"
        "                              from --nats and reports on it (docs/bus.md \"Cells\");\n"
        "                              controller: API, scheduler and leading, its instances\n"
        "                              placed on the cells (SKIFF_CELL_LOST_MS, default 5000:\n"
        "                              a cell silent that long is lost, its instances moved)\n"
        "  --memory SIZE               a cell's memory capacity it announces (SKIFF_CELL_MEMORY,\n"
        "                              default: the host's RAM); for --role all, what the leader\n"
        "                              places on this skiffd's own executor at most\n"
        "  --cell-token-file PATH      a cell's own token (`skiff create-cell-token CELL_ID`,\n"
        "                              mode 0600), sent to its controllers to fetch droplets\n"
        "                              (SKIFF_CELL_TOKEN_FILE, default HOME/cell-token); read\n"
        "                              at each fetch, checked on SIGHUP\n"
        "  --controller-url URL        a controller's API URL a cell fetches droplets from and\n"
        "                              sends its token to, and the only ones (repeat it for\n"
        "                              each controller; SKIFF_CONTROLLER_URLS, comma-separated)\n"
        "  --fetch-stall-ms MS         a controller that sends a cell nothing that long while it\n"
        "                              fetches a droplet or layer is left for the next one\n"
        "                              (SKIFF_CELL_FETCH_STALL_MS, default 10000)\n"
        "  --droplet-cache-mb N        the droplets a cell fetched are kept up to N MB in all,\n"
        "                              the least recently used removed first, never one in use\n"
        "                              (SKIFF_CELL_DROPLET_CACHE_MB, default 4096; 0: no bound)\n"
        "  --layer-grace-ms MS         image layers no instance of a cell mounts any more are\n"
        "                              kept that long after its last instance ended\n"
        "                              (SKIFF_CELL_LAYER_GRACE_MS, default 600000; 0: at once)\n"
        "  --droplet-grace-ms MS       --role all: droplets brought here from the blob store\n"
        "                              (HOME/blobs/droplets) that no instance here runs any more\n"
        "                              are removed that long after the last one ended, never one\n"
        "                              in use (SKIFF_DROPLET_GRACE_MS, default 600000; 0: at "
        "once)\n"
        "  --host-addr IP              with --nats: this host's address on the network between\n"
        "                              hosts (SKIFF_HOST_ADDR): announced with the container\n"
        "                              pool, so routers of other hosts reach its instances (and\n"
        "                              only they); every other host's pool is routed via its own\n"
        "                              (README.md \"Several hosts\")\n"
        "  --nats-replicas N           replicas of each JetStream stream (SKIFF_NATS_REPLICAS,\n"
        "                              default 1; a publish is acknowledged once a majority of\n"
        "                              them stored it, JetStream's rule)\n"
        "  --no-builtin-brokers        do not run the built-in service brokers (postgresql,\n"
        "                              redis; SKIFF_BUILTIN_BROKERS=0)\n"
        "  --network-pool CIDR         containers' addresses (SKIFF_NETWORK_POOL, default\n"
        "                              10.244.0.0/16; one /30 each)\n"
        "  --prewarm N                 containers kept warm (SKIFF_PREWARM, default 2): made\n"
        "                              ahead but for the droplet and the program, so that an\n"
        "                              instance of the default disk size starts in a few ms;\n"
        "                              each holds a network slot, a disk and ~2 MB; 0: none\n"
        "  --prewarm-window-ms MS      how long a burst of starts keeps the warm pool grown to\n"
        "                              its size (SKIFF_PREWARM_WINDOW_MS, default 60000, from\n"
        "                              1000 to 3600000); then it shrinks back to --prewarm\n"
        "  --prewarm-memory SIZE       the warm containers' memory budget (SKIFF_PREWARM_MEMORY,\n"
        "                              default 256M; K, M or G, M when none): the pool is\n"
        "                              refilled only while its containers' memory, as their\n"
        "                              cgroups count it, and one more fit in it\n"
        "  --insecure-registry HOST:PORT\n"
        "                              an image registry spoken to over plain http instead of\n"
        "                              https (repeatable; for a registry on this machine)\n"
        "  --max-image-size SIZE       the largest image a push may bring (SKIFF_MAX_IMAGE_SIZE,\n"
        "                              default 4G; K, M or G): its blobs together, and what any\n"
        "                              one of its layers unpacks to\n"
        "  --drain-timeout-ms MS       the longest an instance stopped on purpose waits for the\n"
        "                              requests and event deliveries in flight to it before\n"
        "                              its SIGTERM (SKIFF_DRAIN_TIMEOUT_MS, default 10000)\n"
        "Other settings: SKIFF_MAX_UPLOAD_MB (default 1024), SKIFF_MAX_UNPACKED_MB (default "
        "4096),\n"
        "SKIFF_STAGING_TIMEOUT (seconds, default 900), SKIFF_STAGING_DISK_MB (the disk a\n"
        "staging's build, dependencies, cache and steps share; default the app's disk quota),\n"
        "SKIFF_BUILDPACKS (buildpacks folder),\n"
        "SKIFF_STORE (default sqlite:$SKIFF_HOME/skiff.db), SKIFF_EGRESS (0: containers reach no\n"
        "public address; default 1), SKIFF_CONTAINER_UID_BASE (host uid of containers' root,\n"
        "default 200000; vcap is that + 2000), SKIFF_API_MAX_CONNECTIONS (default 4096, at\n"
        "most half of the open-file limit), SKIFF_API_MAX_CONNECTIONS_PER_CLIENT (default a\n"
        "quarter of that), SKIFF_CELL_HEARTBEAT_MS (how often this skiffd records its heartbeat\n"
        "for `skiff cells`, default 5000).\n"
        "With --store postgres://..., several skiffds (each with its own home) share the store:\n"
        "one leads and runs the instances, the others serve the API (src/daemon/README.md).\n"
        "\n"
        "Signals:\n"
        "  SIGTERM, SIGINT  stop the platform: every instance gracefully (SIGTERM, then SIGKILL\n"
        "                   after SKIFF_GRACE_MS, default 10000), then the router; skiffd\n"
        "                   exits 0 and leaves nothing running. A follower on a shared store\n"
        "                   (with --nats) lets the instances it runs for the leader go on\n"
        "                   serving instead, for the next skiffd on its home to take over.\n"
        "  SIGUSR2          exit at once and leave the router and the instances serving, for\n"
        "                   a restart or an upgrade of skiffd; the next skiffd adopts them.\n"
        "  SIGHUP           read the API's certificate and key again (--tls-cert, --tls-key or\n"
        "                   HOME/tls/default.pem): connections made after it get the new\n"
        "                   one; a bad pair is logged and the one before stays.\n"
        "A crash or kill -9 of skiffd leaves them serving too: each instance runs under its\n"
        "own skiff-shim, which keeps its output (the last 1000 lines) until skiffd is back.\n",
        out);
}

static const char *env_or(const char *name, const char *def)
{
    const char *v = getenv(name);
    return v && *v ? v : def;
}

/* A whole number of at least min from the environment, def when unset or not one (said). */
static long env_long(const char *name, long def, long min)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return def;
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (*end || errno || n < min) {
        log_warning("%s=%s is not a whole number of at least %ld; using %ld", name, v, min, def);
        return def;
    }
    return n;
}

/* The folder of our own executable, where skiff-router and buildpacks are looked for. */
static char *self_dir(void)
{
    char path[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    if (n <= 0)
        return xstrdup(".");
    path[n] = '\0';
    char *slash = strrchr(path, '/');
    if (slash)
        *slash = '\0';
    return xstrdup(path);
}

/* buildpacks/ of the source tree: beside build/<flavour>/skiffd, or installed beside it. */
static char *find_buildpacks(const char *dir)
{
    const char *env = getenv("SKIFF_BUILDPACKS");
    if (env && *env)
        return xstrdup(env);
    const char *candidates[] = {"%s/buildpacks", "%s/../../buildpacks",
                                "%s/../share/skiff/buildpacks"};
    for (size_t i = 0; i < ARRAY_SIZE(candidates); i++) {
        char *p = xasprintf(candidates[i], dir);
        if (access(p, R_OK) == 0) {
            char *real = realpath(p, NULL);
            free(p);
            return real ? real : xstrdup(".");
        }
        free(p);
    }
    return xasprintf("%s/buildpacks", dir);
}

/* The admin token: kept in api.json across restarts, made with libsodium randomness (via
 * getrandom) the first time. api.json is written 0600 every start (addresses may change). */
static int setup_token(struct daemon *d, const char *api_url)
{
    char *path = xasprintf("%s/api.json", d->home);
    char *text = NULL;
    if (file_read(path, &text, NULL) == 0) {
        json_t *j = json_loads(text, 0, NULL);
        const char *t = json_string_value(json_object_get(j, "token"));
        if (t && strlen(t) >= 32)
            d->token = xstrdup(t);
        json_decref(j);
        free(text);
    }
    if (!d->token) {
        char hex[65];
        random_hex(hex, 32);
        d->token = xasprintf("skiff_%s", hex);
    }
    json_t *j =
        json_pack("{s:s,s:s,s:s}", "url", api_url, "token", d->token, "router_url", d->router_url);
    if (d->api_tls_addr && *d->api_tls_addr) /* the same API over HTTPS: skiff login takes it */
        json_object_set_new(j, "tls_url", json_sprintf("https://%s", d->api_tls_addr));
    char *out = json_dumps(j, JSON_INDENT(2));
    json_decref(j);
    size_t len = strlen(out);
    out = xrealloc(out, len + 2);
    out[len++] = '\n';
    int rc = file_write_atomic(path, out, len, 0600);
    free(out);
    if (rc < 0)
        log_error("cannot write %s: %s", path, skiff_strerror(rc));
    free(path);
    return rc;
}

/* ---- the routers' counts to the autoscaler (bus -> autoscaler, wired here) ----------------- */

static void daemon_autoscaler_report(void *as, int router, const char *app_guid,
                                     const char *process, double in_flight, double requests)
{
    autoscaler_router_metrics(as, router, app_guid, process, in_flight, requests);
}

static void daemon_autoscaler_router_gone(void *as, int router)
{
    autoscaler_router_gone(as, router);
}

static int daemon_autoscaler_woken(void *as, const char *app_guid, const char *process)
{
    return autoscaler_woken(as, app_guid, process);
}

/* ---- the invoker's event work to the autoscaler (invoker -> autoscaler, wired here) ---------- */

static bool daemon_invoker_work(void *invoker, const char *app_guid, const char *process,
                                struct autoscaler_work *out)
{
    struct invoker_work w;
    if (!invoker_work_of(invoker, app_guid, process, &w))
        return false;
    *out = (struct autoscaler_work){.load = w.load,
                                    .average = w.average,
                                    .max_instances = w.max_instances,
                                    .idle_grace_ms = w.idle_grace_ms};
    return true;
}

static int daemon_invoker_wake(void *as, const char *app_guid, const char *process, int wanted,
                               int *running)
{
    return autoscaler_wake(as, app_guid, process, wanted, running);
}

/* ---- shutdown: each step's callback starts the next ------------------------------------------ */

/* A stop that takes this long says which step it waits for, and again as often, so that a
 * skiffd slow to exit leaves in its log why. */
#define DAEMON_STOP_WATCH_MS 5000

static void daemon__count_handle(uv_handle_t *h, void *arg)
{
    int *counts = arg;
    /* what keeps uv_run going: active and referenced (the watch itself is not) */
    if (uv_is_active(h) && uv_has_ref(h) && !uv_is_closing(h) && h->type > 0 &&
        h->type < UV_HANDLE_TYPE_MAX)
        counts[h->type]++;
}

static void daemon_stop_watch(uv_timer_t *t)
{
    struct daemon *d = t->data;
    long long s = (long long)((time_mono_ms() - d->stop_began) / 1000);
    if (d->stop_step) {
        log_warning("still stopping after %lld s: waiting for %s", s, d->stop_step);
        return;
    }
    /* every step is done: what keeps the loop from ending */
    int counts[UV_HANDLE_TYPE_MAX] = {0};
    uv_walk(d->loop, daemon__count_handle, counts);
    char what[256] = "";
    size_t n = 0;
    for (int i = 1; i < UV_HANDLE_TYPE_MAX && n < sizeof what; i++)
        if (counts[i] && i != UV_SIGNAL)
            n += (size_t)snprintf(what + n, sizeof what - n, "%s%d %s", n ? ", " : "", counts[i],
                                  uv_handle_type_name((uv_handle_type)i));
    log_warning("still stopping after %lld s: every step is done; the loop still has %s (and "
                "work in its threads, if none)",
                s, n ? what : "no active handle");
}

static void daemon_stop_step(struct daemon *d, const char *step)
{
    d->stop_step = step;
}

static void shutdown_router_done(void *arg)
{
    struct daemon *d = arg;
    daemon_stop_step(d, NULL);
    uv_close((uv_handle_t *)&d->sigterm, NULL);
    uv_close((uv_handle_t *)&d->sigint, NULL);
    uv_close((uv_handle_t *)&d->sigusr2, NULL);
    uv_close((uv_handle_t *)&d->sighup, NULL);
}

static void shutdown_bus_done(void *arg)
{
    struct daemon *d = arg;
    daemon_stop_step(d, "the router to exit (SIGKILL 5 s after its SIGTERM)");
    if (d->router)
        router_proc_close(d->router, !d->detach, shutdown_router_done, d);
    else
        shutdown_router_done(d);
}

static void shutdown_sched_done(void *arg)
{
    struct daemon *d = arg;
    daemon_stop_step(d, "the bus to close");
    hosts_stop(d->hosts);
    d->hosts = NULL;
    if (d->bus)
        bus_close(d->bus, shutdown_bus_done, d);
    else
        shutdown_bus_done(d);
}

static void shutdown_events_done(void *arg)
{
    struct daemon *d = arg;
    daemon_stop_step(d, "the instances to stop, each within its grace period, or be let go "
                        "(the scheduler and the cells)");
    if (d->sched && d->detach)
        scheduler_detach(d->sched, shutdown_sched_done, d);
    else if (d->sched)
        scheduler_shutdown(d->sched, shutdown_sched_done, d);
    else
        shutdown_sched_done(d);
}

static void shutdown_invoker_done(void *arg)
{
    struct daemon *d = arg;
    daemon_stop_step(d, "the fabric to close (the events API)");
    d->invoker = NULL; /* freed by invoker_stop */
    struct api_events *events = d->events;
    d->events = NULL; /* freed by api_events_stop */
    api_events_stop(events, shutdown_events_done, d);
}

static void shutdown_api_done(void *arg)
{
    struct daemon *d = arg;
    daemon_stop_step(d, "event delivery to stop (the invoker)");
    /* the routers' access lines go on arriving until the bus closes: none reaches the
     * invoker once it stops (it is freed when stopped) */
    if (d->bus) {
        bus_set_traffic(d->bus, NULL, NULL);
        bus_set_metrics(d->bus, NULL, NULL);
    }
    if (d->autoscaler) /* no decision once the invoker (its floor) stops */
        autoscaler_close(d->autoscaler, NULL, NULL);
    if (d->core) /* the invoker is freed when stopped */
        api_core_set_mappings_check(d->core, NULL, NULL);
    invoker_stop(d->invoker, shutdown_invoker_done, d);
}

static void daemon_unwatch_store(struct daemon *d);

/* On a shared store, the key every skiffd signs tokens with: the store's (auth.h). */
static int daemon_token_key(struct daemon *d)
{
    char *key_path = xasprintf("%s/auth-token.key", d->home);
    unsigned char token_key[32];
    int rc = services_shared_key(d->services, AUTH_TOKEN_KEY_KIND, key_path, token_key);
    if (rc < 0)
        log_error("cannot read the tokens' key %s from the store: %s", key_path,
                  skiff_strerror(rc));
    else
        auth_set_token_key(d->auth, token_key);
    sodium_memzero(token_key, sizeof token_key);
    free(key_path);
    return rc;
}

static void daemon_stop(struct daemon *d)
{
    if (d->stopping)
        return;
    d->stopping = true;
    d->stop_began = time_mono_ms();
    daemon_stop_step(d, "the API to close (its requests in flight aborted)");
    uv_timer_init(d->loop, &d->stop_watch);
    d->stop_watch.data = d;
    uv_timer_start(&d->stop_watch, daemon_stop_watch, DAEMON_STOP_WATCH_MS, DAEMON_STOP_WATCH_MS);
    uv_unref((uv_handle_t *)&d->stop_watch); /* it keeps nothing running */
    /* the lock goes at once, so another skiffd takes over while this one stops */
    if (d->leader)
        leader_close(d->leader, NULL, NULL);
    cells_close(d->cells);
    uv_timer_stop(&d->resync);
    uv_timer_stop(&d->catch_up);
    daemon_unwatch_store(d); /* no convergence of other skiffds' changes while stopping */
    if (d->blobs)            /* droplets being brought here start nothing any more */
        blob_droplet_forget(d->blobs);
    if (d->core)
        api_core_shutdown(d->core);
    if (d->svc)
        api_svc_shutdown(d->svc);
    if (d->api)
        api_close(d->api, shutdown_api_done, d);
    else
        shutdown_api_done(d);
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct daemon *d = h->data;
    if (d->stopping) {
        log_info("still stopping (instances get their grace period)");
        return;
    }
    if (signum == SIGUSR2) {
        log_info("SIGUSR2: exiting, the router and the instances keep serving "
                        "for the next skiffd");
        d->detach = true;
    } else {
        log_info("%s: stopping the instances and the router, then exiting",
                signum == SIGINT ? "interrupted" : "terminated");
    }
    daemon_stop(d);
}

/* The scheduler's vcap_services hook. */
static char *vcap_services(void *ctx, const char *app_guid)
{
    return services_vcap_json(ctx, app_guid);
}

static void daemon_free(struct daemon *d)
{
    /* the queued writes land (or are reported lost) while their owners are still here */
    store_async_drain(d->store);
    leader_free(d->leader);
    cells_free(d->cells);
    api_core_free(d->core);
    api_svc_stop(d->svc);
    services_free(d->services);
    api_tenancy_free(d->tenancy);
    api_audit_free(d->audit);
    api_free(d->api);
    auth_free(d->auth);
    scheduler_free(d->sched);
    autoscaler_free(d->autoscaler);
    bus_free(d->bus);
    router_proc_free(d->router);
    hub_free(d->hub);
    logs_free(d->logs);
    blob_store_close(d->blobs);
    store_close(d->store);
    free(d->home);
    free(d->api_addr);
    free(d->router_addr);
    free(d->router_admin_addr);
    free(d->router_tls_addr);
    free(d->api_tls_addr);
    tls_store_free(d->api_tls);
    free(d->api_cert_path);
    free(d->api_key_path);
    free(d->router_url);
    free(d->token);
}

static void make_instance_token(void *api, const char *app_guid, const char *instance_guid,
                                char *out, size_t size)
{
    api_instance_token(api, app_guid, instance_guid, out, size);
}

/* An instance token is good while its instance runs and its app exists. */
static bool instance_token_live(void *ctx, const char *app_guid, const char *instance_guid,
                                char *name, size_t size, char space_guid[37])
{
    struct daemon *d = ctx;
    struct store_app *app = NULL;
    if (!d->sched || !scheduler_instance_alive(d->sched, app_guid, instance_guid) ||
        store_app_get(d->store, app_guid, &app) < 0 || !app || strcmp(app->guid, app_guid)) {
        store_app_free(app);
        return false;
    }
    snprintf(name, size, "%s", app->name);
    snprintf(space_guid, 37, "%s", app->space_guid);
    store_app_free(app);
    return true;
}

/* Descriptors are what connections, instances and the event log live on: the soft limit goes
 * up to the hard one (the API takes at most half of it, see api.h). */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > (1u << 20) ? (1u << 20)
                                                                                : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* An app another skiffd on the same store created, changed or deleted: the scheduler
 * converges it as it does after this skiffd's API changed it (app_guid NULL: any app). */
static void daemon_store_app_changed(void *ctx, const char *app_guid)
{
    struct daemon *d = ctx;
    if (app_guid) {
        if (scheduler_app_changed(d->sched, app_guid) == -ENOENT) {
            scheduler_app_deleted(d->sched, app_guid);
            if (d->core)
                api_core_app_deleted_elsewhere(d->core);
        }
        return;
    }
    struct store_app **apps = NULL;
    size_t n = 0;
    if (store_app_list(d->store, &apps, &n) < 0)
        return;
    for (size_t i = 0; i < n; i++)
        scheduler_app_changed(d->sched, apps[i]->guid);
    store_app_list_free(apps, n);
}

/* Those who read documents on news look whether theirs changed: after the feed brought news,
 * and after the store's writer reported back, as news of a kind the store's copy holds whole
 * counts only once that kind is read again (src/store/README.md). */
static void daemon_store_news(struct daemon *d)
{
    invoker_store_news(d->invoker);
    scheduler_store_news(d->sched);
}

/* Something was written to the store (by this skiffd or another): the apps others changed
 * converge, and the route table is sent again (a route another skiffd mapped is served
 * here too; the table is built from the store's read cache, at most every 5 ms). A lost
 * feed is reopened by the store, which says which descriptor to watch instead
 * (daemon_store_feed_moved). */
static void daemon_store_feed(uv_poll_t *h, int status, int events)
{
    struct daemon *d = h->data;
    store_feed_take(d->store, daemon_store_app_changed, d);
    if (d->bus)
        bus_routes_changed(d->bus);
    daemon_store_news(d);
}

static void daemon_store_feed_poll_closed(uv_handle_t *h)
{
    free(h);
}

static void daemon_store_feed_retry(uv_timer_t *t)
{
    struct daemon *d = t->data;
    /* any store call makes the try; its outcome comes through daemon_store_feed_moved */
    store_feed_take(d->store, daemon_store_app_changed, d);
    int64_t due = store_feed_retry_ms(d->store);
    if (!d->stopping && !d->store_feed && due >= 0)
        uv_timer_start(&d->store_feed_retry, daemon_store_feed_retry, (uint64_t)due, 0);
}

/* The descriptor to watch changed: the old one is let go first (it is closed, and the new
 * one may have its number); -1 means none until the next try. */
static void daemon_store_feed_moved(void *ctx, int fd, bool writable)
{
    struct daemon *d = ctx;
    if (d->store_feed) {
        uv_close((uv_handle_t *)d->store_feed, daemon_store_feed_poll_closed);
        d->store_feed = NULL;
    }
    uv_timer_stop(&d->store_feed_retry);
    if (d->stopping)
        return;
    if (fd < 0) {
        int64_t due = store_feed_retry_ms(d->store);
        if (due >= 0)
            uv_timer_start(&d->store_feed_retry, daemon_store_feed_retry, (uint64_t)due, 0);
        return;
    }
    uv_poll_t *h = xmalloc(sizeof *h);
    if (uv_poll_init(d->loop, h, fd) < 0) {
        free(h);
        log_error("cannot watch the store's change feed: other skiffds' changes are seen at "
                  "the next resync only");
        return;
    }
    h->data = d;
    d->store_feed = h;
    uv_poll_start(h, UV_READABLE | (writable ? UV_WRITABLE : 0), daemon_store_feed);
}

static void daemon_store_writes(uv_poll_t *h, int status, int events)
{
    struct daemon *d = h->data;
    store_async_reap(d->store);
    /* news of an app or of the routes another skiffd changed counts once the store's writer
     * read them again */
    uint64_t routes = store_routes_news(d->store);
    if ((store_feed_take(d->store, daemon_store_app_changed, d) || routes != d->routes_news) &&
        d->bus)
        bus_routes_changed(d->bus);
    d->routes_news = routes;
    daemon_store_news(d);
}

/* The store's writes made off the loop report back here (PostgreSQL); kept until the end,
 * for the writes made while stopping. */
static void daemon_watch_store_writes(struct daemon *d)
{
    int fd = store_async_fd(d->store);
    if (fd < 0)
        return; /* SQLite: every write is made during its call */
    if (uv_poll_init(d->loop, &d->store_writes, fd) < 0) {
        log_error("cannot watch the store's finished writes: their outcome is seen at exit");
        return;
    }
    d->store_writes.data = d;
    uv_poll_start(&d->store_writes, UV_READABLE, daemon_store_writes);
    uv_unref((uv_handle_t *)&d->store_writes); /* the loop ends without it: drained at exit */
}

/* Watches the store's change feed on the loop, when it has one (PostgreSQL). */
static void daemon_watch_store(struct daemon *d)
{
    daemon_watch_store_writes(d);
    int fd = store_feed_fd(d->store);
    if (fd < 0)
        return; /* SQLite: every change comes through this skiffd */
    store_feed_watch(d->store, daemon_store_feed_moved, d);
    daemon_store_feed_moved(d, fd, false);
}

static void daemon_unwatch_store(struct daemon *d)
{
    uv_timer_stop(&d->store_feed_retry);
    if (d->store_feed) {
        uv_close((uv_handle_t *)d->store_feed, daemon_store_feed_poll_closed);
        d->store_feed = NULL;
    }
}

static void walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* "4G", "512M", "1048576K": bytes; 0 when it is not a size of at least 1 MiB. */
static uint64_t daemon_size(const char *text)
{
    char *end;
    errno = 0;
    unsigned long long n = strtoull(text, &end, 10);
    if (errno || end == text || text[0] == '-')
        return 0;
    unsigned shift = *end == 'G' ? 30 : *end == 'M' ? 20 : *end == 'K' ? 10 : 0;
    if (shift)
        end++;
    if (*end || n > (1ull << (63 - shift)))
        return 0;
    uint64_t bytes = (uint64_t)n << shift;
    return bytes >= (1u << 20) ? bytes : 0;
}

/* The API's HTTPS certificate: --tls-cert and --tls-key (checked first), else the local CA's
 * default certificate (HOME/tls/default.pem). */
static int daemon_api_tls_paths(struct daemon *d, const char *tls_dir, const char *cert_path,
                                const char *key_path, char *err, size_t errsize)
{
    if (!*cert_path != !*key_path) {
        snprintf(err, errsize, "--tls-cert and --tls-key go together");
        return -EINVAL;
    }
    d->api_cert_path = *cert_path ? xstrdup(cert_path) : xasprintf("%s/default.pem", tls_dir);
    d->api_key_path = *key_path ? xstrdup(key_path) : xasprintf("%s/default.pem", tls_dir);
    return 0;
}

/* (Re)reads the API's certificate and key and serves them to handshakes from now on (made
 * ones keep theirs); on any error the certificate served so far stays. */
static int daemon_api_tls_load(struct daemon *d, char *err, size_t errsize)
{
    char *cert = NULL, *key = NULL;
    size_t cert_len = 0, key_len = 0;
    int r = file_read(d->api_cert_path, &cert, &cert_len);
    if (r == 0 && (r = file_read(d->api_key_path, &key, &key_len)) < 0)
        snprintf(err, errsize, "cannot read %s: %s", d->api_key_path, skiff_strerror(r));
    else if (r < 0)
        snprintf(err, errsize, "cannot read %s: %s", d->api_cert_path, skiff_strerror(r));
    if (r == 0)
        r = tls_pair_check(cert, cert_len, key, key_len, NULL, NULL, err, errsize);
    if (r == -EKEYEXPIRED) { /* served anyway: clients say so; a new one is read on SIGHUP */
        log_warning("API HTTPS: %s", err);
        r = 0;
    }
    if (r == 0 && !d->api_tls)
        r = tls_store_new(NULL, &d->api_tls, err, errsize);
    struct buf pair = {0};
    if (r == 0) {
        buf_append(&pair, cert, cert_len);
        buf_puts(&pair, "\n");
        buf_append(&pair, key, key_len);
        r = tls_store_set_only_pem(d->api_tls, pair.data, pair.len, err, errsize);
    }
    if (pair.data)
        memset(pair.data, 0, pair.len);
    if (key)
        memset(key, 0, key_len);
    buf_free(&pair);
    free(cert);
    free(key);
    return r;
}

/* SIGHUP: the API's certificate is read again (a renewed one needs no restart). */
static void on_sighup(uv_signal_t *h, int signum)
{
    (void)signum;
    struct daemon *d = h->data;
    if (!d->api_tls)
        return;
    char err[512];
    if (daemon_api_tls_load(d, err, sizeof err) < 0)
        log_error("SIGHUP: the API's certificate was not reloaded, the one before stays: %s", err);
    else
        log_info("SIGHUP: the API's certificate was reloaded from %s", d->api_cert_path);
}

/* ---- leading a shared store (leader.h) ------------------------------------------------------ */

/* How often the leader converges what other skiffds wrote to the shared store. */
#define DAEMON_RESYNC_MS 1000

static bool daemon_leading(void *ctx)
{
    struct daemon *d = ctx;
    return !d->leader || leader_is_leading(d->leader);
}

/* What other skiffds wrote: apps converge, and the route table is made again from the store
 * and sent to this skiffd's routers (a route mapped through another skiffd reaches them). */
static void daemon_on_resync(uv_timer_t *t)
{
    struct daemon *d = t->data;
    if (d->stopping)
        return;
    scheduler_resync(d->sched);
    bus_routes_changed(d->bus);
}

/* Every skiffd on a shared store, leading or not, once a DAEMON_RESYNC_MS: what other skiffds
 * wrote becomes what this one's API answers with. Users, roles and tokens are read again when
 * they changed (a token ended or a password changed through another skiffd is refused here
 * from then on), the API's cached app list is dropped, and the leader records its instances. */
static void daemon_caught_up(void *ctx, int rc)
{
    struct daemon *d = ctx;
    if (rc > 0)
        log_msg(LOG_DEBUG, "users, roles and tokens changed: read again from the store in %lld ms",
                (long long)(time_mono_ms() - d->catch_up_began));
    if (rc == -EIO)
        log_warning("cannot read users and tokens again from the store: this skiffd keeps "
                    "what it read before and tries again in %d ms",
                    DAEMON_RESYNC_MS);
}

static void daemon_on_catch_up(uv_timer_t *t)
{
    struct daemon *d = t->data;
    if (d->stopping)
        return;
    /* the reads go through the store's writer, the copy swapped once they are back */
    d->catch_up_began = time_mono_ms(); /* -EALREADY: one under way, timed from here */
    int rc = auth_catch_up_async(d->auth, daemon_caught_up, d);
    if (rc == -EIO)
        daemon_caught_up(d, rc);
    if (d->core) {
        api_core_store_changed(d->core);
        api_core_record_instances(d->core, daemon_leading(d));
    }
}

static bool daemon_cell_leads(void *ctx, const char *cell_id)
{
    struct daemon *d = ctx;
    /* its own word, not the store's (no read on the loop): while it holds what it ran after
     * a loss (a silent server), the instances it shows are still the ones it runs */
    if (cell_id && !strcmp(cell_id, cells_id(d->cells)))
        return daemon_leading(d) || leader_is_holding(d->leader);
    return cells_leads(d->cells, cell_id);
}

/* The one place that says what leading changes: the scheduler first (it starts instances at
 * once, or holds them), then the autoscaler and the schedules, then the heartbeat. Leading
 * lost (false while leading) holds the instances: they run on while the store says nobody
 * else leads; false again (the store says the lock is another's: leader.h) gives them up
 * (scheduler_hand_over). */
static void daemon_leading_changed(void *ctx, bool leading)
{
    struct daemon *d = ctx;
    if (d->stopping)
        return;
    if (!leading && !scheduler_leading(d->sched))
        scheduler_hand_over(d->sched);
    scheduler_set_leading(d->sched, leading);
    if (!leading && !d->leading_decided)
        scheduler_reconcile_all(d->sched); /* what a predecessor left here stops */
    d->leading_decided = true;
    autoscaler_set_leading(d->autoscaler, leading);
    invoker_set_leading(d->invoker, leading);
    bus_set_announcing(d->bus, leading || leader_is_holding(d->leader));
    if (leading)
        uv_timer_start(&d->resync, daemon_on_resync, DAEMON_RESYNC_MS, DAEMON_RESYNC_MS);
    else
        uv_timer_stop(&d->resync);
    cells_beat(d->cells);
}

/* The environment of a router that learns the routes from NATS: skiffd's, with the servers and
 * the security files in SKIFF_ROUTER_NATS*, never on a command line (a URL may hold a
 * password), and only in the router's: skiffd's own stays as it was, for what else it
 * starts. Freed with strv_free. */
static char **daemon_router_nats_env(const char *nats_url, const struct natsconn_security *sec)
{
    extern char **environ;
    const struct {
        const char *name, *value;
    } vars[] = {{"SKIFF_ROUTER_NATS", nats_url},
                {"SKIFF_ROUTER_NATS_CREDS", sec->creds},
                {"SKIFF_ROUTER_NATS_TLS_CA", sec->tls_ca},
                {"SKIFF_ROUTER_NATS_TLS_CERT", sec->tls_cert},
                {"SKIFF_ROUTER_NATS_TLS_KEY", sec->tls_key}};
    size_t n = 0;
    while (environ && environ[n])
        n++;
    char **env = xcalloc(n + ARRAY_SIZE(vars) + 1, sizeof *env);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (!str_has_prefix(environ[i], "SKIFF_ROUTER_NATS"))
            env[k++] = xstrdup(environ[i]);
    for (size_t i = 0; i < ARRAY_SIZE(vars); i++)
        if (vars[i].value && *vars[i].value)
            env[k++] = xasprintf("%s=%s", vars[i].name, vars[i].value);
    return env;
}

/* skiffd --role router: this process becomes a skiff-router that learns routes from NATS.
 * The server list goes in the environment, never on a command line (it may hold a password).
 * Returns only on error. */
static int daemon_run_router(const char *home, const char *nats_url,
                             const struct natsconn_security *sec, const char *addr,
                             const char *admin_addr, const char *tls_addr, const char *host_addr)
{
    if (!*nats_url) {
        log_error("--role router learns its routes from NATS: give --nats URL[,URL...] "
                  "(or SKIFF_NATS)");
        return 2;
    }
    char *dir = self_dir();
    char *bin = xasprintf("%s/skiff-router", dir);
    char *h = path_expand_home(home);
    int rc = mkdir_p(h, 0700);
    char *run = xasprintf("%s/run", h);
    if (rc == 0)
        rc = mkdir_p(run, 0755);
    if (rc < 0) {
        log_error("cannot create %s: %s (set SKIFF_HOME or --home)", run, skiff_strerror(rc));
        return 1;
    }
    char **env = daemon_router_nats_env(nats_url, sec);
    const char *argv[24] = {bin, "--home", h, "--addr", addr, "--admin-addr", admin_addr};
    int n = 7;
    if (tls_addr && *tls_addr) {
        argv[n++] = "--tls-addr";
        argv[n++] = tls_addr;
    }
    if (*host_addr) {
        argv[n++] = "--host-addr";
        argv[n++] = host_addr;
    }
    argv[n] = NULL;
    execve(bin, (char *const *)argv, env);
    log_error("cannot run %s: %s", bin, skiff_strerror(-errno));
    strv_free(env);
    free(run);
    free(h);
    free(bin);
    free(dir);
    return 1;
}

/* ---- skiffd --role cell: an executor that takes its instances from the leader over NATS ---- */

struct daemon_cell {
    uv_signal_t sigterm, sigint, sigusr2, sighup;
    struct cell_agent *agent;
    struct hosts *hosts; /* --host-addr: this cell among the hosts (src/hosts/README.md) */
    bool stopping;
};

/* What a cell with --host-addr tells the other hosts: its address and its container pool. */
struct daemon_cell_host {
    const char *addr; /* "" without --host-addr */
    const struct net_pool *pool;
};

static void daemon_cell_closed(void *arg)
{
    struct daemon_cell *c = arg;
    uv_close((uv_handle_t *)&c->sigterm, NULL);
    uv_close((uv_handle_t *)&c->sigint, NULL);
    uv_close((uv_handle_t *)&c->sigusr2, NULL);
    uv_close((uv_handle_t *)&c->sighup, NULL);
}

static void daemon_cell_on_signal(uv_signal_t *h, int signum)
{
    struct daemon_cell *c = h->data;
    if (signum == SIGHUP) {
        if (!c->stopping)
            cell_agent_reload(c->agent);
        return;
    }
    if (c->stopping)
        return;
    c->stopping = true;
    bool leave = signum == SIGUSR2;
    log_info("%s: %s, then exiting",
             leave              ? "SIGUSR2"
             : signum == SIGINT ? "interrupted"
                                : "terminated",
             leave ? "the instances keep running for the next cell on this home"
                   : "stopping the instances");
    if (c->hosts)
        hosts_stop(c->hosts);
    c->hosts = NULL;
    cell_agent_close(c->agent, leave, daemon_cell_closed, c);
}

#define DAEMON_CONTROLLERS_MAX 16

/* Whether text is a whole decimal number in [min, max] (then in *out). */
static bool daemon_long_in(const char *text, long min, long max, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (!*text || *end || errno || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* A controller's API URL as a cell takes it: http(s)://, a host, no spaces. */
static bool daemon_url_ok(const char *url)
{
    const char *rest = str_has_prefix(url, "http://")    ? url + 7
                       : str_has_prefix(url, "https://") ? url + 8
                                                         : NULL;
    return rest && *rest && *rest != '/' && !strpbrk(url, " \t\r\n") && strlen(url) < 512;
}

/* The leader lets a cell read the droplet it is about to start there (api.h). */
static int daemon_cell_grant(void *ctx, const char *cell_id, const char *digest, const char *blobs)
{
    return api_cell_grant(ctx, cell_id, digest, blobs);
}

/* ... and no longer once nothing of it runs there. */
static void daemon_cell_withdraw(void *ctx, const char *cell_id, const char *digest)
{
    api_cell_withdraw(ctx, cell_id, digest);
}

/* Runs until a signal; 0 after a clean stop. */
static int daemon_run_cell(const char *home, const struct cell_agent_config *cfg_in,
                           const struct daemon_cell_host *host)
{
    struct cell_agent_config cfg = *cfg_in;
    char *h = path_expand_home(home);
    char *run = xasprintf("%s/run", h);
    int rc = mkdir_p(run, 0755);
    char *lock_path = xasprintf("%s/skiffd.lock", run);
    int lock_fd = rc < 0 ? -1 : open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (rc < 0 || lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB) < 0) {
        log_error("cannot use %s as this cell's home (%s): another skiffd runs with it, or it "
                  "cannot be made; use another --home",
                  h, rc < 0 ? skiff_strerror(rc) : lock_path);
        rc = 1;
        goto out;
    }
    cfg.home = h;
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    uv_loop_t *loop = uv_default_loop();
    struct daemon_cell c = {0};
    char err[512] = "";
    rc = 0;
    /* before any instance starts (adopted ones included): a pool another host announced that
     * overlaps this cell's would send that host's instances' traffic here */
    if (*host->addr) {
        rc = hosts_start(loop,
                         &(struct hosts_config){.nats_urls = cfg.nats_urls,
                                                .security = cfg.nats_security,
                                                .addr = host->addr,
                                                .roles = HOSTS_CELL,
                                                .pool = host->pool},
                         &c.hosts, err, sizeof err);
        if (rc == 0)
            rc = hosts_settle(c.hosts, 3000, err, sizeof err);
    }
    if (rc == 0)
        rc = cell_agent_start(loop, &cfg, &c.agent, err, sizeof err);
    if (rc < 0) { /* the hosts' announcements stop before the exit */
        log_error("%s", err);
        if (c.hosts)
            hosts_stop(c.hosts);
        uv_run(loop, UV_RUN_DEFAULT);
        rc = 2;
        goto out;
    }
    uv_signal_t *sigs[] = {&c.sigterm, &c.sigint, &c.sigusr2, &c.sighup};
    int nums[] = {SIGTERM, SIGINT, SIGUSR2, SIGHUP};
    for (size_t i = 0; i < ARRAY_SIZE(sigs); i++) {
        uv_signal_init(loop, sigs[i]);
        sigs[i]->data = &c;
        uv_signal_start(sigs[i], daemon_cell_on_signal, nums[i]);
    }
    uv_run(loop, UV_RUN_DEFAULT);
    cell_agent_free(c.agent);
    uv_loop_close(loop);
    rc = 0;
out:
    if (lock_fd >= 0)
        close(lock_fd);
    free(lock_path);
    free(run);
    free(h);
    return rc;
}

int main(int argc, char **argv)
{
    log_init("skiffd");
    struct daemon d = {0};
    const char *home = env_or("SKIFF_HOME", "~/.skiff");
    const char *api_addr = env_or("SKIFF_API_ADDR", "127.0.0.1:8090");
    const char *router_addr = env_or("SKIFF_ROUTER_ADDR", "127.0.0.1:8080");
    const char *admin_addr = env_or("SKIFF_ROUTER_ADMIN_ADDR", "127.0.0.1:8083");
    /* an empty value set on purpose means no HTTPS there, as "" does on the command line */
    const char *router_tls_addr = getenv("SKIFF_ROUTER_TLS_ADDR");
    const char *api_tls_addr = getenv("SKIFF_API_TLS_ADDR");
    if (!router_tls_addr)
        router_tls_addr = "127.0.0.1:8443";
    if (!api_tls_addr)
        api_tls_addr = "127.0.0.1:8091";
    const char *tls_cert = env_or("SKIFF_TLS_CERT", ""), *tls_key = env_or("SKIFF_TLS_KEY", "");
    const char *drain_timeout = NULL;
    const char *store_queue_text = NULL;
    const char *isolation = env_or("SKIFF_ISOLATION", "container");
    const char *network_pool = env_or("SKIFF_NETWORK_POOL", NET_DEFAULT_POOL);
    const char *store_location = env_or("SKIFF_STORE", "");
    const char *nats_url = env_or("SKIFF_NATS", "");
    const char *nats_replicas_text = env_or("SKIFF_NATS_REPLICAS", "1");
    struct natsconn_security nats_sec = {.creds = getenv("SKIFF_NATS_CREDS"),
                                         .tls_ca = getenv("SKIFF_NATS_TLS_CA"),
                                         .tls_cert = getenv("SKIFF_NATS_TLS_CERT"),
                                         .tls_key = getenv("SKIFF_NATS_TLS_KEY")};
    const char *role = env_or("SKIFF_ROLE", "all");
    const char *host_addr = env_or("SKIFF_HOST_ADDR", "");
    const char *zone = env_or("SKIFF_ZONE", "default");
    bool tls_addr_given = getenv("SKIFF_ROUTER_TLS_ADDR") != NULL;
    const char *prewarm_text = env_or("SKIFF_PREWARM", "2");
    const char *max_image_text = env_or("SKIFF_MAX_IMAGE_SIZE", "4G");
    const char *prewarm_memory_text = env_or("SKIFF_PREWARM_MEMORY", "256M");
    const char *prewarm_window_text = env_or("SKIFF_PREWARM_WINDOW_MS", "60000");
    bool no_builtin_brokers = false;
    const char *cell_memory_text = env_or("SKIFF_CELL_MEMORY", "");
    const char *cell_token_file = env_or("SKIFF_CELL_TOKEN_FILE", "");
    const char *fetch_stall_text = env_or("SKIFF_CELL_FETCH_STALL_MS", "10000");
    const char *droplet_cache_text = env_or("SKIFF_CELL_DROPLET_CACHE_MB", "4096");
    const char *layer_grace_text = env_or("SKIFF_CELL_LAYER_GRACE_MS", "600000");
    const char *droplet_grace_text = env_or("SKIFF_DROPLET_GRACE_MS", "600000");
    const char *insecure_registries[17] = {NULL};
    size_t n_insecure = 0;
    /* --controller-url, each given; else SKIFF_CONTROLLER_URLS split at commas */
    const char *controller_urls[DAEMON_CONTROLLERS_MAX + 1] = {NULL};
    size_t n_controllers = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **target = NULL;
        if (!strcmp(a, "--home"))
            target = &home;
        else if (!strcmp(a, "--api-addr"))
            target = &api_addr;
        else if (!strcmp(a, "--router-addr"))
            target = &router_addr;
        else if (!strcmp(a, "--router-admin-addr"))
            target = &admin_addr;
        else if (!strcmp(a, "--router-tls-addr")) {
            target = &router_tls_addr;
            tls_addr_given = true;
        } else if (!strcmp(a, "--role"))
            target = &role;
        else if (!strcmp(a, "--api-tls-addr"))
            target = &api_tls_addr;
        else if (!strcmp(a, "--tls-cert"))
            target = &tls_cert;
        else if (!strcmp(a, "--tls-key"))
            target = &tls_key;
        else if (!strcmp(a, "--drain-timeout-ms"))
            target = &drain_timeout;
        else if (!strcmp(a, "--isolation"))
            target = &isolation;
        else if (!strcmp(a, "--network-pool"))
            target = &network_pool;
        else if (!strcmp(a, "--store"))
            target = &store_location;
        else if (!strcmp(a, "--store-queue-max"))
            target = &store_queue_text;
        else if (!strcmp(a, "--prewarm"))
            target = &prewarm_text;
        else if (!strcmp(a, "--nats"))
            target = &nats_url;
        else if (!strcmp(a, "--zone"))
            target = &zone;
        else if (!strcmp(a, "--host-addr"))
            target = &host_addr;
        else if (!strcmp(a, "--nats-replicas"))
            target = &nats_replicas_text;
        else if (!strcmp(a, "--nats-creds"))
            target = &nats_sec.creds;
        else if (!strcmp(a, "--nats-tls-ca"))
            target = &nats_sec.tls_ca;
        else if (!strcmp(a, "--nats-tls-cert"))
            target = &nats_sec.tls_cert;
        else if (!strcmp(a, "--nats-tls-key"))
            target = &nats_sec.tls_key;
        else if (!strcmp(a, "--memory"))
            target = &cell_memory_text;
        else if (!strcmp(a, "--cell-token-file"))
            target = &cell_token_file;
        else if (!strcmp(a, "--fetch-stall-ms"))
            target = &fetch_stall_text;
        else if (!strcmp(a, "--droplet-cache-mb"))
            target = &droplet_cache_text;
        else if (!strcmp(a, "--droplet-grace-ms"))
            target = &droplet_grace_text;
        else if (!strcmp(a, "--layer-grace-ms"))
            target = &layer_grace_text;
        else if (!strcmp(a, "--max-image-size"))
            target = &max_image_text;
        else if (!strcmp(a, "--prewarm-window-ms"))
            target = &prewarm_window_text;
        else if (!strcmp(a, "--prewarm-memory"))
            target = &prewarm_memory_text;
        else if (!strcmp(a, "--insecure-registry")) {
            if (i + 1 >= argc || n_insecure + 1 >= ARRAY_SIZE(insecure_registries)) {
                log_error("--insecure-registry needs HOST:PORT (at most %zu of them)",
                          ARRAY_SIZE(insecure_registries) - 1);
                return 2;
            }
            insecure_registries[n_insecure++] = argv[++i];
            continue;
        } else if (!strcmp(a, "--controller-url")) {
            if (i + 1 >= argc || n_controllers >= DAEMON_CONTROLLERS_MAX) {
                log_error("--controller-url needs a controller's API URL (at most %d of them)",
                          DAEMON_CONTROLLERS_MAX);
                return 2;
            }
            controller_urls[n_controllers++] = argv[++i];
            continue;
        } else if (!strcmp(a, "--no-builtin-brokers")) {
            no_builtin_brokers = true;
            continue;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;

        } else {
            log_error("unknown option \"%s\"", a);
            usage(stderr);
            return 2;
        }
        if (i + 1 >= argc) {
            log_error("%s needs a value", a);
            return 2;
        }
        *target = argv[++i];
    }
    if (*host_addr && !*nats_url) {
        log_error("--host-addr is announced to the other hosts on NATS: give --nats too");
        return 2;
    }
    /* a skiffd with a store reads droplets and image layers from the blob store beside it,
     * which every skiffd on that store shares: it has no controller to fetch them from */
    if (strcmp(role, "cell") && n_controllers) {
        log_error("--controller-url is where a --role cell fetches droplets and image layers; "
                  "--role all and controller read them from the blob store of their --store, "
                  "and a router needs none: drop --controller-url");
        return 2;
    }
    if (strcmp(role, "cell") && *env_or("SKIFF_CONTROLLER_URLS", ""))
        log_warning("SKIFF_CONTROLLER_URLS is ignored: it is where a --role cell fetches "
                    "droplets and image layers, and a --role %s skiffd needs none",
                    role);
    if (!strcmp(role, "router"))
        return daemon_run_router(home, nats_url, &nats_sec, router_addr, admin_addr,
                                 tls_addr_given ? router_tls_addr : NULL, host_addr);
    if (strcmp(role, "all") && strcmp(role, "cell") && strcmp(role, "controller")) {
        log_error("--role is all, controller, cell or router, not \"%s\"", role);
        return 2;
    }
    if (!strcmp(role, "controller") && !*nats_url) {
        log_error("--role controller runs no instance itself: it places them on the cells that "
                  "announce themselves on NATS; give --nats URL[,URL...] (or SKIFF_NATS)");
        return 2;
    }
    char *replicas_end;
    long nats_replicas = strtol(nats_replicas_text, &replicas_end, 10);
    if (*replicas_end || replicas_end == nats_replicas_text || nats_replicas < 1 ||
        nats_replicas > 5) {
        log_error("--nats-replicas %s is not a number of replicas from 1 to 5 (JetStream's "
                  "limit)",
                  nats_replicas_text);
        return 2;
    }
    int drain_timeout_ms = (int)env_long("SKIFF_DRAIN_TIMEOUT_MS", SCHEDULER_DRAIN_TIMEOUT_MS, 1);
    if (drain_timeout) {
        char *end;
        long ms = strtol(drain_timeout, &end, 10);
        if (*end || end == drain_timeout || ms <= 0 || ms > 3600000) {
            log_error("--drain-timeout-ms %s is not a number of milliseconds from 1 to "
                    "3600000",
                    drain_timeout);
            return 2;
        }
        drain_timeout_ms = (int)ms;
    }
    store_queue_max = (size_t)env_long("SKIFF_STORE_QUEUE_MAX", STORE_QUEUE_MAX_DEFAULT, 1);
    if (store_queue_text) {
        char *end;
        long n = strtol(store_queue_text, &end, 10);
        if (*end || end == store_queue_text || n < 1 || n > 100000000) {
            log_error("--store-queue-max %s is not a number of writes from 1 to 100000000",
                      store_queue_text);
            return 2;
        }
        store_queue_max = (size_t)n;
    }
    char *prewarm_end;
    uint64_t max_image_bytes = daemon_size(max_image_text);
    if (!max_image_bytes) {
        log_error("--max-image-size %s is not a size like 512M or 4G (at least 1M)",
                  max_image_text);
        return 2;
    }
    long prewarm = strtol(prewarm_text, &prewarm_end, 10);
    if (*prewarm_end || prewarm_end == prewarm_text || prewarm < 0 || prewarm > 64) {
        log_error("--prewarm %s is not a number of containers from 0 to 64", prewarm_text);
        return 2;
    }
    long prewarm_window_ms = strtol(prewarm_window_text, &prewarm_end, 10);
    if (*prewarm_end || prewarm_end == prewarm_window_text ||
        prewarm_window_ms < EXECUTOR_WARM_WINDOW_MIN_MS ||
        prewarm_window_ms > EXECUTOR_WARM_WINDOW_MAX_MS) {
        log_error("--prewarm-window-ms %s is not a number of milliseconds from %d to %d",
                  prewarm_window_text, EXECUTOR_WARM_WINDOW_MIN_MS, EXECUTOR_WARM_WINDOW_MAX_MS);
        return 2;
    }
    long prewarm_memory = strtol(prewarm_memory_text, &prewarm_end, 10);
    int prewarm_shift = !*prewarm_end || !strcmp(prewarm_end, "M") ? 20
                        : !strcmp(prewarm_end, "K")                ? 10
                        : !strcmp(prewarm_end, "G")                ? 30
                                                                   : -1;
    if (prewarm_shift < 0 || prewarm_end == prewarm_memory_text || prewarm_memory < 1 ||
        (uint64_t)prewarm_memory > (1ull << 40) >> prewarm_shift) {
        log_error("--prewarm-memory %s is not a size from 1K to 1024G (like 256M)",
                  prewarm_memory_text);
        return 2;
    }
    char zone_err[200];
    if (cells_zone_check(zone, zone_err, sizeof zone_err) < 0) {
        log_error("%s", zone_err);
        return 2;
    }
    bool contained = !strcmp(isolation, "container");
    if (!contained && strcmp(isolation, "process")) {
        log_error("--isolation is container or process, not \"%s\"", isolation);
        return 2;
    }
    struct net_pool pool;
    char pool_err[256];
    if (contained && net_pool_parse(network_pool, &pool, pool_err, sizeof pool_err) < 0) {
        log_error("--network-pool: %s", pool_err);
        return 2;
    }
    if (!contained)
        log_warning("--isolation process: every app and buildpack runs as "
                        "skiffd's own user, in the host's namespaces, with no seccomp: any of "
                        "them can take the platform over. Use it for development only.");
    if (!strcmp(role, "cell")) {
        uint64_t cell_memory = 0;
        if (*cell_memory_text && !(cell_memory = daemon_size(cell_memory_text))) {
            log_error("--memory %s is not a size like 4G or 512M (at least 1M)", cell_memory_text);
            return 2;
        }
        char *bin_dir = self_dir();
        char *cell_shim = xasprintf("%s/skiff-shim", bin_dir);
        char *cell_init = xasprintf("%s/skiff-init", bin_dir);
        char *cell_buildpacks = find_buildpacks(bin_dir);
        char *cell_home = path_expand_home(home);
        struct executor_config cell_ex = {
            .home = cell_home,
            .port_min = (int)env_long("SKIFF_PORT_MIN", 61000, 1),
            .port_max = (int)env_long("SKIFF_PORT_MAX", 64999, 1),
            .grace_ms = (int)env_long("SKIFF_GRACE_MS", 10000, 0),
            .shim_path = cell_shim,
            .isolation = contained ? EXECUTOR_CONTAINER : EXECUTOR_PROCESS,
            .init_path = cell_init,
            .net_pool = network_pool,
            .uid_base =
                (unsigned)env_long("SKIFF_CONTAINER_UID_BASE", CONTAINER_DEFAULT_UID_BASE, 1),
            .egress = env_long("SKIFF_EGRESS", 1, 0) != 0,
            .prewarm = (int)prewarm,
            .prewarm_window_ms = prewarm_window_ms,
            .prewarm_memory_bytes = (uint64_t)prewarm_memory << prewarm_shift,
            .runtimes_dir = cell_buildpacks};
        char *env_controllers = xstrdup(env_or("SKIFF_CONTROLLER_URLS", ""));
        if (!n_controllers)
            for (char *save = NULL, *u = strtok_r(env_controllers, ", \t", &save);
                 u && n_controllers < DAEMON_CONTROLLERS_MAX; u = strtok_r(NULL, ", \t", &save))
                controller_urls[n_controllers++] = u;
        for (size_t k = 0; k < n_controllers; k++)
            if (!daemon_url_ok(controller_urls[k])) {
                log_error("--controller-url %s is not a controller's API URL: write "
                          "http://HOST:PORT or https://HOST:PORT",
                          controller_urls[k]);
                free(env_controllers);
                return 2;
            }
        long fetch_stall_ms = 0, droplet_cache_mb = 0, layer_grace_ms = 0;
        if (!daemon_long_in(fetch_stall_text, 100, 3600000, &fetch_stall_ms) ||
            !daemon_long_in(droplet_cache_text, 0, 1L << 30, &droplet_cache_mb) ||
            !daemon_long_in(layer_grace_text, 0, 7L * 86400000, &layer_grace_ms)) {
            log_error("--fetch-stall-ms \"%s\" must be milliseconds from 100 to 3600000, "
                      "--droplet-cache-mb \"%s\" megabytes (0: no bound), --layer-grace-ms "
                      "\"%s\" milliseconds up to a week",
                      fetch_stall_text, droplet_cache_text, layer_grace_text);
            free(env_controllers);
            return 2;
        }
        if (!n_controllers)
            log_warning("no --controller-url: this cell fetches no droplet, it runs only those "
                        "at the controller's path on its own file system");
        struct cell_agent_config cell_cfg = {
            .home = cell_home,
            .zone = zone,
            .memory_bytes = cell_memory,
            .heartbeat_ms = (int)env_long("SKIFF_CELL_HEARTBEAT_MS", CELL_HEARTBEAT_MS, 100),
            .nats_urls = nats_url,
            .nats_security = nats_sec,
            .executor = &cell_ex,
            .token_file = cell_token_file,
            .controller_urls = controller_urls,
            .fetch_stall_ms = fetch_stall_ms,
            .droplet_cache_bytes = (uint64_t)droplet_cache_mb << 20,
            .layer_grace_ms = layer_grace_ms};
        if (*host_addr && !contained) {
            log_error("--host-addr needs --isolation container: instances of other hosts are "
                      "reached at their container addresses");
            free(env_controllers);
            return 2;
        }
        int cell_rc = daemon_run_cell(home, &cell_cfg,
                                      &(struct daemon_cell_host){.addr = host_addr, .pool = &pool});
        free(env_controllers);
        free(cell_home);
        free(cell_buildpacks);
        free(cell_init);
        free(cell_shim);
        free(bin_dir);
        return cell_rc;
    }
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    raise_nofile();

    char err[512] = "";
    int rc;
    d.loop = uv_default_loop();
    d.home = path_expand_home(home);
    d.api_addr = xstrdup(api_addr);
    d.router_addr = xstrdup(router_addr);
    d.router_admin_addr = xstrdup(admin_addr);
    d.router_tls_addr = xstrdup(router_tls_addr);
    d.api_tls_addr = xstrdup(api_tls_addr);
    d.router_url = xasprintf("http://%s", router_addr);
    char *dir = self_dir();
    char *buildpacks = find_buildpacks(dir);
    char *router_bin = xasprintf("%s/skiff-router", dir);
    char *shim_bin = xasprintf("%s/skiff-shim", dir);
    char *init_bin = xasprintf("%s/skiff-init", dir);
    char *brokers_bin = xasprintf("%s/skiff-brokers", dir);
    char publish_host[INET_ADDRSTRLEN] = "127.0.0.1";
    char *tls_dir = NULL;
    char *db = NULL, *bus_path = NULL, *api_url = NULL, *publish_addr = NULL, *events_url = NULL;
    bool publish_allowed = false;
    int publish_port = 0;
    bool builtin_brokers = !no_builtin_brokers && strcmp(env_or("SKIFF_BUILTIN_BROKERS", "1"), "0");
    struct builtin_brokers *brokers = NULL;

    char *run = xasprintf("%s/run", d.home);
    char *tmp = xasprintf("%s/tmp", d.home);
    rc = mkdir_p(d.home, 0700);
    if (rc == 0)
        rc = mkdir_p(run, 0755);
    if (rc == 0)
        rc = mkdir_p(tmp, 0700);
    free(run);
    if (rc < 0) {
        log_error("cannot create %s: %s (set SKIFF_HOME or --home)", d.home, skiff_strerror(rc));
        free(tmp);
        goto fail;
    }
    tls_dir = xasprintf("%s/tls", d.home);
    bool ca_made = false;
    if ((*d.router_tls_addr || *d.api_tls_addr) &&
        tls_local_ca_ensure(tls_dir, &ca_made, err, sizeof err) < 0) {
        log_error("HTTPS: %s", err);
        free(tmp);
        goto fail;
    }
    /* one skiffd per home: a second one would fight over the store, the bus and instances */
    char *lock_path = xasprintf("%s/run/skiffd.lock", d.home);
    int lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB) < 0) {
        log_error("another skiffd is running with %s (%s is locked): stop it first, or "
                "use another --home",
                d.home, lock_path);
        free(lock_path);
        free(tmp);
        if (lock_fd >= 0)
            close(lock_fd);
        goto fail;
    }
    free(lock_path);
    rm_rf(tmp); /* uploads and scratch of a previous run */
    mkdir_p(tmp, 0700);
    free(tmp);

    /* before any instance starts: a pool another host announced that overlaps this one's
     * would send that host's instances' traffic here, and this one's there */
    if (*host_addr) {
        if (!contained) {
            log_error("--host-addr needs --isolation container: instances of other hosts are "
                      "reached at their container addresses");
            goto fail;
        }
        rc = hosts_start(d.loop,
                         &(struct hosts_config){.nats_urls = nats_url,
                                                .security = nats_sec,
                                                .addr = host_addr,
                                                .roles = HOSTS_CONTROLLER | HOSTS_CELL,
                                                .pool = &pool},
                         &d.hosts, err, sizeof err);
        if (rc == 0)
            rc = hosts_settle(d.hosts, 3000, err, sizeof err);
        if (rc < 0) {
            log_error("%s", err);
            goto fail;
        }
    }

    /* the store's location names its backend: sqlite:PATH (the default, in the home) or
     * postgres://...; a URL's password is never logged (store_open's messages mask it) */
    db = *store_location ? xstrdup(store_location) : xasprintf("sqlite:%s/skiff.db", d.home);
    rc = store_open(db, err, sizeof err, &d.store);
    if (rc < 0) {
        log_error("%s", err);
        goto fail;
    }
    /* until skiffd serves, its own first writes wait for room in the store's queue: the bound
     * (--store-queue-max) is for requests piling up behind a silent server, not for its start */
    store_queue_full_waits = true;
    /* blobs live where the store is: in its database, or in files under the home */
    blob_store_open(db, d.home, &d.blobs);
    char *admin_password = NULL;
    rc = auth_open(d.store, &admin_password, &d.auth);
    if (rc < 0) {
        log_error("cannot load users and roles from the store: %s", skiff_strerror(rc));
        goto fail;
    }
    if (admin_password) {
        /* the first start: the one time this password is shown; kept for `make run`'s
         * walkthrough in a file only skiffd's user reads, until it is changed */
        char *pw_path = xasprintf("%s/admin-password", d.home);
        char *line = xasprintf("%s\n", admin_password);
        file_write_atomic(pw_path, line, strlen(line), 0600);
        log_info("made the platform admin user \"admin\" with the password %s "
                "(also in %s until changed with `skiff passwd`)", admin_password, pw_path);
        sodium_memzero(line, strlen(line));
        sodium_memzero(admin_password, strlen(admin_password));
        free(line);
        free(pw_path);
        free(admin_password);
    }
    rc = services_open(d.store, d.home, &d.services);
    if (rc < 0) {
        log_error("cannot open the services' records: %s", skiff_strerror(rc));
        goto fail;
    }
    if (store_location_is_postgres(db) && (rc = services_key_check(d.services, d.home)) < 0) {
        if (rc != -EKEYREJECTED) /* that one says what to do */
            log_error("cannot check the services' key against the store: %s", skiff_strerror(rc));
        goto fail;
    }
    if (store_location_is_postgres(db) && (rc = daemon_token_key(&d)) < 0)
        goto fail;
    d.logs = logs_new(1000);
    d.hub = hub_new();
    api_url = xasprintf("http://%s", d.api_addr);
    if (setup_token(&d, api_url) < 0)
        goto fail;

    /* containers publish to the pool's publish address, on the API's port number, where
     * only publishing is served */
    const char *api_port = strrchr(d.api_addr, ':');
    publish_port = api_port ? atoi(api_port + 1) : 0;
    if (contained) {
        char ip[INET_ADDRSTRLEN];
        struct in_addr pub = net_publish_address(&pool);
        inet_ntop(AF_INET, &pub, ip, sizeof ip);
        snprintf(publish_host, sizeof publish_host, "%s", ip);
        publish_addr = xasprintf("%s:%d", ip, publish_port);
        events_url = xasprintf("http://%s", publish_addr);
    }
    struct api_config acfg = {
        .home = d.home,
        .addr = d.api_addr,
        .admin_token = d.token,
        .auth = d.auth,
        .store = d.store,
        .upload_max = (uint64_t)env_long("SKIFF_MAX_UPLOAD_MB", 1024, 1) << 20,
        .publish_addr = publish_addr,
        .max_connections = (unsigned)env_long("SKIFF_API_MAX_CONNECTIONS", 0, 0),
        .max_connections_per_client =
            (unsigned)env_long("SKIFF_API_MAX_CONNECTIONS_PER_CLIENT", 0, 0),
        .tls_addr = d.api_tls_addr};
    if (*d.api_tls_addr) {
        if (daemon_api_tls_paths(&d, tls_dir, tls_cert, tls_key, err, sizeof err) < 0 ||
            daemon_api_tls_load(&d, err, sizeof err) < 0) {
            log_error("API HTTPS: %s", err);
            goto fail;
        }
        acfg.tls = d.api_tls;
    }
    rc = api_new(d.loop, &acfg, &d.api);
    if (rc < 0) {
        log_error("cannot set up the API: %s", skiff_strerror(rc));
        goto fail;
    }
    api_cell_tokens_setup(d.api, d.store, d.home);
    char cell_id[CELLS_ID_LEN + 1] = "";
    if (cells_load_id(d.home, cell_id, err, sizeof err) < 0) {
        log_error("%s", err);
        goto fail;
    }
    bool controller_only = !strcmp(role, "controller");
    uint64_t local_memory = 0;
    if (*cell_memory_text && !(local_memory = daemon_size(cell_memory_text))) {
        log_error("--memory %s is not a size like 4G or 512M (at least 1M)", cell_memory_text);
        goto fail;
    }
    long droplet_grace_ms = 0;
    if (!daemon_long_in(droplet_grace_text, 0, 7L * 86400000, &droplet_grace_ms)) {
        log_error("--droplet-grace-ms \"%s\" must be milliseconds up to a week (0: at once)",
                  droplet_grace_text);
        goto fail;
    }
    struct cellc_config cellcfg = {.local_cell = !controller_only,
                                   /* on a shared store, whoever leads places instances here
                                    * too: this skiffd is a cell on NATS (src/cell/client.h) */
                                   .serve = store_location_is_postgres(db),
                                   .local_memory_bytes = local_memory,
                                   .collect_droplets = true,
                                   .droplet_grace_ms = droplet_grace_ms,
                                   .local_id = cell_id,
                                   .local_zone = zone,
                                   .nats_urls = nats_url,
                                   .nats_security = nats_sec,
                                   .lost_ms =
                                       (int)env_long("SKIFF_CELL_LOST_MS", CELLC_LOST_MS, 500),
                                   .blob_urls = (const char *const[]){api_url, NULL},
                                   .grant = daemon_cell_grant,
                                   .withdraw = daemon_cell_withdraw,
                                   .grant_ctx = d.api};
    struct scheduler_config scfg = {.home = d.home,
                                    .cells = &cellcfg,
                                    .api_url = events_url ? events_url : api_url,
                                    .drain_timeout_ms = drain_timeout_ms,
                                    .hub = d.hub,
                                    .make_instance_token = make_instance_token,
                                    .token_ctx = d.api,
                                    .vcap_services = vcap_services,
                                    .vcap_services_ctx = d.services,
                                    .function_servers_dir = buildpacks,
                                    .blobs = d.blobs};
    struct executor_config ecfg = {
        .home = d.home,
        .port_min = (int)env_long("SKIFF_PORT_MIN", 61000, 1),
        .port_max = (int)env_long("SKIFF_PORT_MAX", 64999, 1),
        .grace_ms = (int)env_long("SKIFF_GRACE_MS", 10000, 0),
        .shim_path = shim_bin,
        .isolation = contained ? EXECUTOR_CONTAINER : EXECUTOR_PROCESS,
        .init_path = init_bin,
        .net_pool = network_pool,
        .uid_base = (unsigned)env_long("SKIFF_CONTAINER_UID_BASE", CONTAINER_DEFAULT_UID_BASE, 1),
        .egress = env_long("SKIFF_EGRESS", 1, 0) != 0,
        .prewarm = (int)prewarm,
        .prewarm_window_ms = prewarm_window_ms,
        .prewarm_memory_bytes = (uint64_t)prewarm_memory << prewarm_shift,
        .runtimes_dir = buildpacks};
    if (access(shim_bin, X_OK) != 0)
        log_warning("%s is missing: no instance can start (build it with `make`, and "
                "install it beside skiffd)",
                shim_bin);
    if (access(buildpacks, R_OK | X_OK) != 0)
        log_warning("no buildpacks folder at %s: nothing can be staged (set "
                "SKIFF_BUILDPACKS to the buildpacks/ folder of Skiff's source tree)",
                buildpacks);
    rc = scheduler_new(d.loop, &scfg, &ecfg, d.store, d.logs, &d.sched);
    if (rc < 0) {
        log_error("cannot start the executor: %s", skiff_strerror(rc));
        goto fail;
    }
    api_set_instance_check(d.api, instance_token_live, &d);
    /* on a shared store nothing runs here until the leader's lock says this skiffd leads */
    bool shared_store = store_location_is_postgres(db);
    if (shared_store)
        scheduler_set_leading(d.sched, false);
    uv_timer_init(d.loop, &d.resync);
    d.resync.data = &d;
    uv_timer_init(d.loop, &d.store_feed_retry);
    d.store_feed_retry.data = &d;
    uv_timer_init(d.loop, &d.catch_up);
    d.catch_up.data = &d;
    if (shared_store) {
        auth_set_shared(d.auth, true);
        /* the generation is read now, while starting: the store keeps it in its copy of
         * documents, so the catch-up's read finds it there and does not wait on the server */
        auth_catch_up(d.auth);
        uv_timer_start(&d.catch_up, daemon_on_catch_up, DAEMON_RESYNC_MS, DAEMON_RESYNC_MS);
    }
    rc = cells_start(
        d.loop,
        &(struct cells_config){.home = d.home,
                               .zone = zone,
                               .api_addr = d.api_addr,
                               .heartbeat_ms = (int)env_long("SKIFF_CELL_HEARTBEAT_MS", 0, 100),
                               .store = d.store,
                               .sched = d.sched,
                               .leading = daemon_leading,
                               .leading_ctx = &d},
        &d.cells, err, sizeof err);
    if (rc < 0) {
        log_error("%s", err);
        goto fail;
    }
    cells_register(d.cells, d.api);
    bus_path = xasprintf("%s/run/bus.sock", d.home);
    rc = bus_new(d.loop, bus_path, d.store, d.sched, d.hub, d.logs, err, sizeof err, &d.bus);
    if (rc < 0) {
        log_error("%s", err);
        goto fail;
    }
    if (*nats_url) {
        long announce_ms = env_long("SKIFF_BUS_ANNOUNCE_MS", 10000, 100);
        long ttl_ms = env_long("SKIFF_BUS_TTL_MS", 30000, 300);
        if (ttl_ms <= announce_ms || ttl_ms > 3600000) {
            log_error("SKIFF_BUS_TTL_MS (%ld) must be over SKIFF_BUS_ANNOUNCE_MS (%ld), so a "
                      "route is announced again before it expires, and at most 3600000",
                      ttl_ms, announce_ms);
            goto fail;
        }
        rc = bus_nats_start(d.bus, nats_url, &nats_sec, (int)announce_ms, (int)ttl_ms, err,
                            sizeof err);
        if (rc < 0) {
            log_error("%s", err);
            goto fail;
        }
        if (shared_store) /* until it leads (daemon_leading_changed) */
            bus_set_announcing(d.bus, false);
    }
    autoscaler_new(d.loop, d.store, d.sched, d.logs, &d.autoscaler);
    autoscaler_set_leading(d.autoscaler, !shared_store);
    static const struct bus_metrics_sink autoscaler_sink = {
        .report = daemon_autoscaler_report,
        .router_gone = daemon_autoscaler_router_gone,
        .woken = daemon_autoscaler_woken,
    };
    bus_set_metrics(d.bus, &autoscaler_sink, d.autoscaler);
    struct api_services svc = {.loop = d.loop,
                               .home = d.home,
                               .api_url = api_url,
                               .api = d.api,
                               .store = d.store,
                               .scheduler = d.sched,
                               .hub = d.hub,
                               .logs = d.logs,
                               .nats_url = nats_url,
                               .nats_replicas = (int)nats_replicas,
                               .nats_security = nats_sec};
    const char *own_addrs[] = {
        d.api_addr,   d.router_addr, d.router_admin_addr, d.router_tls_addr, d.api_tls_addr,
        publish_addr, NULL};
    struct api_svc_config svcfg = {.records = d.services, .own_addrs = own_addrs};
    api_svc_start(&svc, &svcfg, &d.svc);
    struct api_core_config ccfg = {
        .home = d.home,
        .router_url = d.router_url,
        .buildpacks_dir = buildpacks,
        .max_unpacked = (uint64_t)env_long("SKIFF_MAX_UNPACKED_MB", 4096, 1) << 20,
        .staging_timeout_s = (int)env_long("SKIFF_STAGING_TIMEOUT", 900, 1),
        .staging_disk_mb = (int)env_long("SKIFF_STAGING_DISK_MB", 0, 0),
        .containers = executor_container_site(scheduler_executor(d.sched)),
        .insecure_registries = insecure_registries,
        .max_image_bytes = max_image_bytes,
        .store = d.store,
        .scheduler = d.sched,
        .hub = d.hub,
        .logs = d.logs,
        .autoscaler = d.autoscaler,
        .auth = d.auth,
        .services = d.services,
        .app_deleted = api_svc_app_deleted,
        .app_deleted_ctx = d.svc,
        .routes_changed = bus_routes_changed_cb,
        .routes_ctx = d.bus,
        .certs_changed = bus_certs_changed_cb,
        .certs_ctx = d.bus,
        .cell_leads = shared_store ? daemon_cell_leads : NULL,
        .cell_ctx = &d,
        .cell_id = cells_id(d.cells),
        .blobs = d.blobs,
        .image_blobs = d.blobs && *nats_url,
    };
    api_core_register(d.api, &ccfg, &d.core);
    struct api_tenancy_config tcfg = {
        .home = d.home, .auth = d.auth, .store = d.store, .services = d.services};
    api_tenancy_register(d.api, &tcfg, &d.tenancy);
    api_audit_register(d.api, d.store, d.auth, &d.audit);
    rc = api_events_start(&svc, &d.events, err, sizeof err);
    if (rc < 0) {
        log_error("cannot start events: %s", err);
        goto fail;
    }
    /* delivery (mappings, invoke, replay) runs on the same fabric */
    rc = invoker_start(&svc, api_events_fabric(d.events), &d.invoker, err, sizeof err);
    if (rc < 0) {
        log_error("cannot start event delivery: %s", err);
        goto fail;
    }
    invoker_set_leading(d.invoker, !shared_store);
    bus_set_traffic(d.bus, invoker_note_traffic, d.invoker);
    autoscaler_set_work(d.autoscaler, daemon_invoker_work, d.invoker);
    invoker_set_wake(d.invoker, daemon_invoker_wake, d.autoscaler);
    /* a policy lowered under a mapping's explicit max_instances is refused, as the reverse is */
    api_core_set_mappings_check(d.core, invoker_mappings_within, d.invoker);
    rc = api_listen(d.api, err, sizeof err);
    if (rc < 0) {
        log_error("%s", err);
        goto fail;
    }
    if (contained && net_firewall_allow_publish(&pool, publish_port, err, sizeof err) < 0) {
        log_error("%s", err);
        goto fail;
    }
    publish_allowed = contained;
    /* On a shared store with NATS, this skiffd's own router learns the routes from NATS as a
     * router on another host does (docs/bus.md "On NATS"), not from the socket: whichever
     * skiffd leads, every router serves its table. On the socket a follower's router served
     * nothing, and the old leader's nothing once it handed its instances over. */
    char **router_env =
        shared_store && *nats_url ? daemon_router_nats_env(nats_url, &nats_sec) : NULL;
    struct router_proc_config rcfg = {.binary = router_bin,
                                      .home = d.home,
                                      .addr = d.router_addr,
                                      .admin_addr = d.router_admin_addr,
                                      .tls_addr = d.router_tls_addr,
                                      .env = router_env};
    router_proc_start(d.loop, &rcfg, &d.router);
    strv_free(router_env);
    if (builtin_brokers)
        brokers = builtin_brokers_start(
            d.loop, &(struct builtin_brokers_config){
                        .binary = brokers_bin,
                        .home = d.home,
                        .service_host = contained ? publish_host : "127.0.0.1",
                        .pool = contained ? &pool : NULL,
                        .svc = d.svc,
                        .api = d.api,
                        .records = d.services,
                        .events_url = events_url ? events_url : api_url,
                        .owner = cells_id(d.cells),
                        .listen_host = shared_store && *host_addr ? host_addr : "127.0.0.1",
                        .shared = shared_store});
    if (!shared_store) {
        scheduler_reconcile_all(d.sched); /* the embedded store has one skiffd: it leads */
    } else {
        char *leader_name = xasprintf("skiffd leader %s", cells_id(d.cells));
        rc = leader_start(d.loop,
                          &(struct leader_config){.location = db,
                                                  .name = leader_name,
                                                  .on_change = daemon_leading_changed,
                                                  .ctx = &d},
                          &d.leader);
        free(leader_name);
        if (rc < 0) {
            log_error("cannot try for the leader's lock: %s", skiff_strerror(rc));
            goto fail;
        }
    }
    daemon_watch_store(&d);

    uv_signal_init(d.loop, &d.sigterm);
    uv_signal_init(d.loop, &d.sigint);
    uv_signal_init(d.loop, &d.sigusr2);
    d.sigterm.data = d.sigint.data = d.sigusr2.data = &d;
    uv_signal_start(&d.sigterm, on_signal, SIGTERM);
    uv_signal_start(&d.sigint, on_signal, SIGINT);
    uv_signal_start(&d.sigusr2, on_signal, SIGUSR2);
    uv_signal_init(d.loop, &d.sighup);
    d.sighup.data = &d;
    uv_signal_start(&d.sighup, on_sighup, SIGHUP);

    printf("skiffd is running (data in %s)\n"
           "  API:    %s\n"
           "  router: %s  (apps answer at http://APP.localhost:%s/)\n",
           d.home, api_url, d.router_url,
           strrchr(d.router_addr, ':') ? strrchr(d.router_addr, ':') + 1 : "8080");
    if (*d.api_tls_addr)
        printf("  API:    https://%s  (HTTPS)\n", d.api_tls_addr);
    if (*d.router_tls_addr)
        printf("  HTTPS:  https://%s  (apps answer at https://APP.localhost:%s/; the local CA "
               "to trust is %s/ca.pem, e.g. curl --cacert %s/ca.pem)\n",
               d.router_tls_addr,
               strrchr(d.router_tls_addr, ':') ? strrchr(d.router_tls_addr, ':') + 1 : "8443",
               tls_dir, tls_dir);
    printf("  The skiff CLI on this machine is logged in: it reads %s/api.json.\n"
           "  Try: skiff push hello -p examples/python-web\n",
           d.home);

    store_queue_full_waits = false;
    uv_run(d.loop, UV_RUN_DEFAULT);
    d.exit_code = 0;
    goto out;

fail:
    d.exit_code = 1;
    /* what was started is closed before freeing */
    if (!d.stopping) {
        d.stopping = true;
        daemon_unwatch_store(&d);
        if (d.leader)
            leader_close(d.leader, NULL, NULL);
        cells_close(d.cells);
        uv_timer_stop(&d.resync);
        uv_timer_stop(&d.catch_up);
        if (d.core)
            api_core_shutdown(d.core);
        if (d.svc)
            api_svc_shutdown(d.svc);
        if (d.api)
            api_close(d.api, NULL, NULL);
        if (d.bus)
            bus_set_metrics(d.bus, NULL, NULL);
        if (d.autoscaler)
            autoscaler_close(d.autoscaler, NULL, NULL);
        if (d.invoker) {
            if (d.bus)
                bus_set_traffic(d.bus, NULL, NULL);
            invoker_stop(d.invoker, NULL, NULL);
            d.invoker = NULL;
        }
        api_events_stop(d.events, NULL, NULL);
        d.events = NULL;
        if (d.sched)
            scheduler_shutdown(d.sched, NULL, NULL);
        if (d.bus)
            bus_close(d.bus, NULL, NULL);
        hosts_stop(d.hosts);
        d.hosts = NULL;
        uv_run(d.loop, UV_RUN_DEFAULT);
    }
out:
    /* a clean stop takes its publish port out of the firewall; one that leaves the instances
     * running for the next skiffd (SIGUSR2) keeps it for them */
    if (publish_allowed && !d.detach)
        net_firewall_forget_publish(&pool, publish_port);
    /* the executor closes its own handles when freed; anything left is closed after */
    scheduler_free(d.sched);
    d.sched = NULL;
    uv_run(d.loop, UV_RUN_NOWAIT);
    uv_walk(d.loop, walk_close, NULL);
    uv_run(d.loop, UV_RUN_DEFAULT);
    daemon_free(&d);
    builtin_brokers_free(brokers, !d.detach);
    uv_loop_close(d.loop);
    free(dir);
    free(buildpacks);
    free(router_bin);
    free(tls_dir);
    free(shim_bin);
    free(init_bin);
    free(brokers_bin);
    free(db);
    free(bus_path);
    free(api_url);
    free(publish_addr);
    free(events_url);
    if (d.exit_code == 0)
        printf("skiffd stopped\n");
    return d.exit_code;
}
