/* router_run: wires the workers, the bus client and the admin port, and shuts down cleanly. */
#include <errno.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "router/route_table.h"
#include "router/router_internal.h"

void router_config_defaults(struct router_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->addr = "127.0.0.1:8080";
    cfg->workers = 0;
    cfg->max_body_bytes = 0;
    cfg->max_header_bytes = 32 * 1024;
    cfg->max_headers = 100;
    cfg->max_url_bytes = 8 * 1024;
    cfg->header_timeout_ms = 10 * 1000;
    cfg->idle_timeout_ms = 75 * 1000;
    cfg->upstream_timeout_ms = 60 * 1000;
    cfg->connect_timeout_ms = 5 * 1000;
    cfg->connect_hedge_ms = 200;
    cfg->hold_timeout_ms = 60 * 1000;
    cfg->hold_max = 1000;
    cfg->max_connections = 50000;
    cfg->upstream_idle_max = 1024;
    cfg->upstream_idle_timeout_ms = 30 * 1000;
    cfg->tls_handshake_timeout_ms = 10 * 1000;
    cfg->tls_max_handshakes = 1024;
    cfg->tls_ocsp_retry_ms = 60 * 1000;
}

static uv_signal_t sig_term, sig_int;

static void on_stop_signal(uv_signal_t *s, int signum)
{
    static bool stopping;
    if (stopping)
        return; /* already draining: a second signal must not kill the requests in flight */
    stopping = true;
    /* the handlers stay installed but no longer keep the loop alive */
    uv_unref((uv_handle_t *)&sig_term);
    uv_unref((uv_handle_t *)&sig_int);
    router_admin_stop();
    router_bus_stop();
    router_proxy_stop_async();
}

/* Each proxied request holds two descriptors: take all the process may have, so the
 * connection cap (not an inherited soft limit of 1024) decides how many clients fit. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            log_error("cannot raise the open file limit: %s", skiff_strerror(-errno));
    }
}

int router_run(const struct router_config *cfg)
{
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    char *run_dir = xasprintf("%s/run", cfg->home);
    char *pid_path = xasprintf("%s/router.pid", run_dir);
    int r = mkdir_p(run_dir, 0755);
    if (r < 0) {
        log_error("cannot create %s: %s", run_dir, skiff_strerror(r));
        goto out;
    }
    router_bus_load_saved(cfg);
    uv_loop_t loop;
    uv_loop_init(&loop);
    r = router_proxy_start(cfg);
    if (r < 0)
        goto out_loop;
    r = router_admin_start(&loop, cfg);
    if (r < 0) {
        router_proxy_stop();
        goto out_loop;
    }
    char pid[32];
    int n = snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
    file_write_atomic(pid_path, pid, (size_t)n, 0644);
    router_bus_start(&loop, cfg);
    uv_signal_init(&loop, &sig_term);
    uv_signal_init(&loop, &sig_int);
    uv_signal_start(&sig_term, on_stop_signal, SIGTERM);
    uv_signal_start(&sig_int, on_stop_signal, SIGINT);
    log_info("listening on %s (admin %s)", cfg->addr,
            cfg->admin_addr && cfg->admin_addr[0] ? cfg->admin_addr : "off");
    uv_run(&loop, UV_RUN_DEFAULT);
    router_proxy_stop(); /* waits for the workers to drain */
    unlink(pid_path);
    uv_close((uv_handle_t *)&sig_term, NULL);
    uv_close((uv_handle_t *)&sig_int, NULL);
    r = 0;
out_loop:
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    router_bus_free();
out:
    route_table_clear_current();
    route_stats_clear();
    free(run_dir);
    free(pid_path);
    return r;
}
