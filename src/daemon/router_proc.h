/* router_proc: skiffd keeps one `skiff-router` process alive.
 *
 * The router runs in a session of its own, so that it keeps serving while skiffd restarts.
 * At start, a router left by a previous skiffd ($SKIFF_HOME/run/router.pid naming a live
 * skiff-router) is adopted, not duplicated; it is watched and replaced when it dies. A router
 * that skiffd started and that exits is started again (after 1 s, so a router that cannot
 * start does not spin). */
#ifndef SKIFF_ROUTER_PROC_H
#define SKIFF_ROUTER_PROC_H

#include <stdbool.h>
#include <uv.h>

struct router_proc;

struct router_proc_config {
    const char *binary; /* path of skiff-router */
    const char *home;
    const char *addr;
    const char *admin_addr;
    const char *tls_addr; /* HTTPS, HOST:PORT; "" or NULL: none */
    char **env;           /* the router's environment (copied); NULL: skiffd's own */
};

int router_proc_start(uv_loop_t *loop, const struct router_proc_config *cfg,
                      struct router_proc **out);
/* Stops supervising. With kill_router the router is sent SIGTERM too (the platform stops)
 * and done comes once it has exited (SIGKILL after 5 s); otherwise it keeps running for the
 * next skiffd. done is called once handles are closed. */
void router_proc_close(struct router_proc *rp, bool kill_router, void (*done)(void *arg),
                       void *arg);
void router_proc_free(struct router_proc *rp);

#endif
