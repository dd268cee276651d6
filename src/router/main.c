/* skiff-router: the shared HTTP router. See router.h and src/router/README.md. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "router/router.h"

static void usage(FILE *f)
{
    fputs(
        "usage: skiff-router [--home DIR] [--addr HOST:PORT] [--admin-addr HOST:PORT]\n"
        "                    [--tls-addr HOST:PORT] [--tls-client-ca FILE] [--nats URL[,URL]]\n"
        "                    [--nats-creds FILE] [--nats-tls-ca FILE] [--host-addr IP]\n"
        "                    [--nats-tls-cert FILE --nats-tls-key FILE]\n"
        "                    [--tls-handshake-timeout-ms N] [--tls-max-handshakes N]\n"
        "                    [--tls-ocsp-retry-ms N]\n"
        "                    [--workers N] [--index N] [--max-body-bytes N]\n"
        "                    [--max-header-bytes N] [--max-headers N] [--max-url-bytes N]\n"
        "                    [--header-timeout-ms N] [--idle-timeout-ms N]\n"
        "                    [--upstream-timeout-ms N] [--connect-timeout-ms N]\n"
        "                    [--connect-hedge-ms N]\n"
        "                    [--max-connections N] [--upstream-idle-max N]\n"
        "                    [--upstream-idle-timeout-ms N] [--hold-timeout-ms N] [--hold-max N]\n"
        "Environment: SKIFF_HOME, SKIFF_ROUTER_ADDR, SKIFF_ROUTER_ADMIN_ADDR,\n"
        "SKIFF_ROUTER_TLS_ADDR, SKIFF_ROUTER_TLS_CLIENT_CA, SKIFF_ROUTER_NATS (the place for a\n"
        "password: nats://USER:PASSWORD@HOST:PORT), SKIFF_ROUTER_NATS_CREDS,\n"
        "SKIFF_ROUTER_NATS_TLS_CA, SKIFF_ROUTER_NATS_TLS_CERT, SKIFF_ROUTER_NATS_TLS_KEY,\n"
        "SKIFF_ROUTER_HOST_ADDR, and\n"
        "SKIFF_ROUTER_<OPTION> for each numeric option (e.g. SKIFF_ROUTER_MAX_BODY_BYTES).\n",
        f);
}

/* Parses a non-negative number or fails with a message naming the option. */
static int parse_number(const char *name, const char *text, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-') {
        log_error("%s must be a non-negative number, not \"%s\"", name, text);
        return -EINVAL;
    }
    *out = v;
    return 0;
}

struct numeric_option {
    const char *flag; /* without -- */
    const char *env;
    int kind; /* 0 int, 1 size_t, 2 uint64 */
    size_t offset;
};

#define OPT(flag, env, kind, field)                                                                \
    {                                                                                              \
        flag, env, kind, offsetof(struct router_config, field)                                     \
    }
static const struct numeric_option numeric_options[] = {
    OPT("workers", "SKIFF_ROUTER_WORKERS", 0, workers),
    OPT("index", "SKIFF_ROUTER_INDEX", 0, router_index),
    OPT("max-body-bytes", "SKIFF_ROUTER_MAX_BODY_BYTES", 2, max_body_bytes),
    OPT("max-header-bytes", "SKIFF_ROUTER_MAX_HEADER_BYTES", 1, max_header_bytes),
    OPT("max-headers", "SKIFF_ROUTER_MAX_HEADERS", 1, max_headers),
    OPT("max-url-bytes", "SKIFF_ROUTER_MAX_URL_BYTES", 1, max_url_bytes),
    OPT("header-timeout-ms", "SKIFF_ROUTER_HEADER_TIMEOUT_MS", 0, header_timeout_ms),
    OPT("idle-timeout-ms", "SKIFF_ROUTER_IDLE_TIMEOUT_MS", 0, idle_timeout_ms),
    OPT("upstream-timeout-ms", "SKIFF_ROUTER_UPSTREAM_TIMEOUT_MS", 0, upstream_timeout_ms),
    OPT("connect-timeout-ms", "SKIFF_ROUTER_CONNECT_TIMEOUT_MS", 0, connect_timeout_ms),
    OPT("connect-hedge-ms", "SKIFF_ROUTER_CONNECT_HEDGE_MS", 0, connect_hedge_ms),
    OPT("max-connections", "SKIFF_ROUTER_MAX_CONNECTIONS", 0, max_connections),
    OPT("hold-timeout-ms", "SKIFF_ROUTER_HOLD_TIMEOUT_MS", 0, hold_timeout_ms),
    OPT("hold-max", "SKIFF_ROUTER_HOLD_MAX", 0, hold_max),
    OPT("upstream-idle-max", "SKIFF_ROUTER_UPSTREAM_IDLE_MAX", 0, upstream_idle_max),
    OPT("upstream-idle-timeout-ms", "SKIFF_ROUTER_UPSTREAM_IDLE_TIMEOUT_MS", 0,
        upstream_idle_timeout_ms),
    OPT("tls-handshake-timeout-ms", "SKIFF_ROUTER_TLS_HANDSHAKE_TIMEOUT_MS", 0,
        tls_handshake_timeout_ms),
    OPT("tls-max-handshakes", "SKIFF_ROUTER_TLS_MAX_HANDSHAKES", 0, tls_max_handshakes),
    OPT("tls-ocsp-retry-ms", "SKIFF_ROUTER_TLS_OCSP_RETRY_MS", 0, tls_ocsp_retry_ms),
};

static int set_numeric(struct router_config *cfg, const struct numeric_option *o, const char *v)
{
    uint64_t n;
    if (parse_number(o->flag, v, &n) < 0)
        return -EINVAL;
    char *field = (char *)cfg + o->offset;
    if (o->kind != 2 && n > 0x7fffffff) {
        log_error("%s is too large", o->flag);
        return -EINVAL;
    }
    if (o->kind == 0)
        *(int *)field = (int)n;
    else if (o->kind == 1)
        *(size_t *)field = (size_t)n;
    else
        *(uint64_t *)field = n;
    return 0;
}

int main(int argc, char **argv)
{
    log_init("skiff-router");
    /* Buffers of 64 KB and more (a response body held for an HTTP/2 client's window, a write
     * the socket did not take) come and go with every request: with glibc's default the
     * workers' heaps shrank (madvise) and grew back page by page after them, 4% of the
     * router's CPU under 64 KB responses over HTTP/2 (bench/router/README.md). Setting the
     * trim threshold stops the mmap threshold from adapting, so it is set too: else each
     * block of 128 KB or more would be an mmap and a munmap. */
    mallopt(M_TRIM_THRESHOLD, 32 * 1024 * 1024);
    mallopt(M_MMAP_THRESHOLD, 4 * 1024 * 1024); /* set, it no longer adapts: one per 256 KB */
    struct router_config cfg;
    router_config_defaults(&cfg);
    const char *home = getenv("SKIFF_HOME");
    if (getenv("SKIFF_ROUTER_ADDR"))
        cfg.addr = getenv("SKIFF_ROUTER_ADDR");
    cfg.admin_addr = getenv("SKIFF_ROUTER_ADMIN_ADDR");
    cfg.tls_addr = getenv("SKIFF_ROUTER_TLS_ADDR");
    cfg.tls_client_ca = getenv("SKIFF_ROUTER_TLS_CLIENT_CA");
    cfg.nats_urls = getenv("SKIFF_ROUTER_NATS"); /* where a password may be: not on argv */
    cfg.nats_security.creds = getenv("SKIFF_ROUTER_NATS_CREDS");
    cfg.host_addr = getenv("SKIFF_ROUTER_HOST_ADDR");
    cfg.nats_security.tls_ca = getenv("SKIFF_ROUTER_NATS_TLS_CA");
    cfg.nats_security.tls_cert = getenv("SKIFF_ROUTER_NATS_TLS_CERT");
    cfg.nats_security.tls_key = getenv("SKIFF_ROUTER_NATS_TLS_KEY");
    for (size_t i = 0; i < ARRAY_SIZE(numeric_options); i++) {
        const char *v = getenv(numeric_options[i].env);
        if (v && *v && set_numeric(&cfg, &numeric_options[i], v) < 0)
            return 2;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (strncmp(a, "--", 2) != 0 || i + 1 >= argc) {
            log_error("unexpected argument \"%s\" (every option takes a "
                    "value)",
                    a);
            usage(stderr);
            return 2;
        }
        const char *name = a + 2, *v = argv[++i];
        if (strcmp(name, "home") == 0)
            home = v;
        else if (strcmp(name, "addr") == 0)
            cfg.addr = v;
        else if (strcmp(name, "admin-addr") == 0)
            cfg.admin_addr = v;
        else if (strcmp(name, "tls-addr") == 0)
            cfg.tls_addr = v;
        else if (strcmp(name, "tls-client-ca") == 0)
            cfg.tls_client_ca = v;
        else if (strcmp(name, "nats") == 0)
            cfg.nats_urls = v;
        else if (strcmp(name, "host-addr") == 0)
            cfg.host_addr = v;
        else if (strcmp(name, "nats-creds") == 0)
            cfg.nats_security.creds = v;
        else if (strcmp(name, "nats-tls-ca") == 0)
            cfg.nats_security.tls_ca = v;
        else if (strcmp(name, "nats-tls-cert") == 0)
            cfg.nats_security.tls_cert = v;
        else if (strcmp(name, "nats-tls-key") == 0)
            cfg.nats_security.tls_key = v;
        else {
            const struct numeric_option *o = NULL;
            for (size_t k = 0; k < ARRAY_SIZE(numeric_options); k++)
                if (strcmp(numeric_options[k].flag, name) == 0)
                    o = &numeric_options[k];
            if (!o) {
                log_error("unknown option --%s", name);
                usage(stderr);
                return 2;
            }
            if (set_numeric(&cfg, o, v) < 0)
                return 2;
        }
    }
    if (cfg.nats_urls && *cfg.nats_urls) { /* a file that does not load: say so before starting */
        natsOptions *opts = NULL;
        char err[512];
        if (natsconn_options(cfg.nats_urls, &cfg.nats_security, 1000, &opts, err, sizeof err) < 0) {
            log_error("%s", err);
            return 2;
        }
        natsOptions_Destroy(opts);
    }
    struct in_addr host_addr;
    if (cfg.host_addr && *cfg.host_addr &&
        (!cfg.nats_urls || !*cfg.nats_urls || inet_pton(AF_INET, cfg.host_addr, &host_addr) != 1)) {
        log_error("--host-addr \"%s\" needs --nats and an IPv4 address (this host's address on "
                  "the network between hosts)",
                  cfg.host_addr);
        return 2;
    }
    char *home_owned = path_expand_home(home && *home ? home : "~/.skiff");
    cfg.home = home_owned;
    int r = router_run(&cfg);
    free(home_owned);
    return r < 0 ? 1 : 0;
}
