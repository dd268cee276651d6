/* skiff-brokers: the built-in service brokers (brokers.h). skiffd starts it with
 * --config $SKIFF_HOME/brokers/config.json; an operator may run it anywhere with a config of
 * their own and register it as any Open Service Broker. SIGTERM or SIGINT stop it and the
 * stores it runs. */
#include <signal.h>
#include <stdbool.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <sodium.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "brokers/brokers.h"
#include "common/log.h"
#include "common/util.h"

struct program {
    struct brokers_backend backends[3];
    size_t count;
    struct brokers_server *server;
    uv_signal_t sigterm, sigint, sighup;
};

static void walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void on_signal(uv_signal_t *h, int sig)
{
    struct program *p = h->data;
    /* SIGHUP: skiffd went away without stopping the platform (killed, or an upgrade): the
     * stores keep serving apps, and the next skiff-brokers keeps them */
    bool leave = sig == SIGHUP;
    if (leave)
        log_info("skiffd is gone: exiting, the stores keep running for the next start");
    else
        log_info("stopping (signal %d)", sig);
    brokers_server_close(p->server);
    p->server = NULL;
    for (size_t i = 0; i < p->count; i++)
        p->backends[i].stop(p->backends[i].ctx, leave);
    uv_close((uv_handle_t *)&p->sigterm, NULL);
    uv_close((uv_handle_t *)&p->sigint, NULL);
    uv_close((uv_handle_t *)&p->sighup, NULL);
}

int main(int argc, char **argv)
{
    log_init("skiff-brokers");
    const char *config = NULL;
    bool stop_with_parent = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            config = argv[++i];
        else if (!strcmp(argv[i], "--stop-with-parent"))
            stop_with_parent = true;
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: skiff-brokers --config FILE [--stop-with-parent]\n"
                   "Serves the Open Service Broker API for the built-in offerings\n"
                   "(postgresql, redis, events); FILE is JSON: home, listen, username,\n"
                   "password, service_host, listen_hosts, postgres_port, redis_port, and\n"
                   "for events events_url and events_key.\n");
            return 0;
        } else {
            log_error("unknown argument \"%s\" (usage: skiff-brokers --config FILE)", argv[i]);
            return 2;
        }
    }
    if (!config) {
        log_error("usage: skiff-brokers --config FILE");
        return 2;
    }
    if (sodium_init() < 0)
        return 1;
    /* started by skiffd: it exits when skiffd goes, however it goes (SIGHUP: the stores keep
     * running; skiffd's clean stop sends SIGTERM first, which stops them) */
    pid_t parent = getppid();
    if (stop_with_parent && (prctl(PR_SET_PDEATHSIG, SIGHUP) < 0 || getppid() != parent))
        return 1;
    signal(SIGPIPE, SIG_IGN);
    struct brokers_config cfg;
    char err[512];
    if (brokers_config_load(config, &cfg, err, sizeof err) < 0) {
        log_error("%s", err);
        return 2;
    }
    uv_loop_t *loop = uv_default_loop();
    struct program p = {0};
    char *dir = xasprintf("%s/brokers", cfg.home);
    mkdir_p(dir, 0711);
    chmod(dir, 0711);
    brokers_pg_new(loop, &cfg, &p.backends[p.count++]);
    brokers_redis_new(loop, &cfg, &p.backends[p.count++]);
    if (brokers_events_new(&cfg, &p.backends[p.count]) == 0)
        p.count++;
    char *state = xasprintf("%s/state.json", dir);
    struct brokers *b = NULL;
    brokers_new(p.backends, p.count, state, &b);
    int rc = brokers_server_start(loop, b, cfg.listen, cfg.username, cfg.password, &p.server, err,
                                  sizeof err);
    if (rc < 0) {
        log_error("%s", err);
    } else {
        uv_signal_init(loop, &p.sigterm);
        uv_signal_init(loop, &p.sigint);
        uv_signal_init(loop, &p.sighup);
        p.sigterm.data = p.sigint.data = p.sighup.data = &p;
        uv_signal_start(&p.sigterm, on_signal, SIGTERM);
        uv_signal_start(&p.sigint, on_signal, SIGINT);
        uv_signal_start(&p.sighup, on_signal, SIGHUP);
        log_info("serving the Open Service Broker API on %s", cfg.listen);
        uv_run(loop, UV_RUN_DEFAULT);
    }
    if (rc < 0)
        for (size_t i = 0; i < p.count; i++)
            p.backends[i].stop(p.backends[i].ctx, false);
    uv_walk(loop, walk_close, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    brokers_free(b);
    brokers_pg_free(&p.backends[0]);
    brokers_redis_free(&p.backends[1]);
    if (p.count > 2)
        brokers_events_free(&p.backends[2]);
    uv_loop_close(loop);
    free(state);
    free(dir);
    brokers_config_clean(&cfg);
    return rc < 0 ? 1 : 0;
}
