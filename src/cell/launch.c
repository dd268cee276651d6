/* cell: starting a launch on a local executor (cell.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cell/cell.h"
#include "common/err.h"
#include "common/start_trace.h"
#include "common/util.h"
#include "images/images.h"
#include "scheduler/instance_env.h"

/* The executor's spec for l, without what depends on the slot (port, env, dirs). */
static struct instance_spec cell__spec(const struct cell_launch *l, const char *app_dir)
{
    return (struct instance_spec){.app_guid = l->app_guid,
                                  .app_name = l->app_name,
                                  .process_type = l->process_type,
                                  .index = l->index,
                                  .instance_guid = l->instance_guid,
                                  .app_dir = app_dir,
                                  .command = l->command,
                                  .memory_mb = l->memory_mb,
                                  .disk_mb = l->disk_mb,
                                  .health = l->health,
                                  .health_endpoint = l->health_endpoint,
                                  .start_timeout_s = l->start_timeout_s,
                                  .health_interval_ms = l->health_interval_ms,
                                  .health_timeout_ms = l->health_timeout_ms,
                                  .readiness = l->readiness,
                                  .readiness_type = l->readiness_type,
                                  .readiness_endpoint = l->readiness_endpoint,
                                  .readiness_interval_ms = l->readiness_interval_ms,
                                  .readiness_timeout_ms = l->readiness_timeout_ms,
                                  .log_rate_limited = l->log_rate_limited,
                                  .log_rate_limit = l->log_rate_limit,
                                  .sidecars = l->sidecars,
                                  .n_sidecars = l->n_sidecars};
}

static char *cell__droplet_note(const char *home, const char *instance_guid)
{
    return xasprintf("%s/run/cell-instance-%s", home, instance_guid);
}

char *cell_launch_droplet_read(const char *home, const char *instance_guid)
{
    char *note = cell__droplet_note(home, instance_guid), *droplet = NULL;
    if (file_read(note, &droplet, NULL) < 0)
        droplet = NULL;
    free(note);
    return droplet;
}

void cell_launch_droplet_forget(const char *home, const char *instance_guid)
{
    char *note = cell__droplet_note(home, instance_guid);
    unlink(note);
    free(note);
}

int cell_launch_start(struct executor *ex, const char *home, const struct cell_launch *l,
                      const char *droplet_dir, struct instance **out, char addr[64], char *err,
                      size_t errsize)
{
    /* a warm container runs no sidecars, nor an image's root (executor.h): an instance with
     * either has its container made for it */
    bool image = image_droplet_is_image(droplet_dir);
    int port = l->n_sidecars || image ? executor_port_allocate(ex)
                                      : executor_port_allocate_for(ex, l->disk_mb, l->command);
    if (port < 0) {
        snprintf(err, errsize, "no free port");
        return -EAGAIN;
    }
    /* an image listens where its config says (its first exposed port), and is told so */
    int inside_port = image ? image_droplet_port(droplet_dir) : 0;
    struct instance_endpoint ep;
    executor_endpoint_at(ex, port, inside_port, &ep);
    snprintf(addr, 64, "%s", ep.addr);
    char *app_dir = xasprintf("%s/app", droplet_dir);
    char *home_dir = NULL, *tmpdir = NULL;
    executor_instance_dirs(ex, l->instance_guid, app_dir, &home_dir, &tmpdir);
    struct scheduler_env_input in = {.app_guid = l->app_guid,
                                     .app_name = l->app_name,
                                     .instance_guid = l->instance_guid,
                                     .index = l->index,
                                     .port = ep.port,
                                     .addr = ep.addr,
                                     .memory_mb = l->memory_mb,
                                     .disk_mb = l->disk_mb,
                                     .home = home_dir,
                                     .tmpdir = tmpdir,
                                     .uris = l->uris,
                                     .events_url = l->events_url,
                                     .events_token = l->events_token,
                                     .user_env = l->user_env,
                                     .vcap_services_json = l->vcap_services_json};
    char **env = scheduler_instance_env(&in);
    struct instance_spec spec = cell__spec(l, app_dir);
    spec.env = env;
    spec.port = port;
    struct image_run run = {0};
    int rc = 0;
    if (image &&
        image_run_prepare(home, droplet_dir, l->command, env, &run, err, errsize) != SKIFF_OK) {
        executor_port_release(ex, port);
        rc = -EINVAL;
        goto out;
    }
    if (run.layers) {
        spec.inside_port = inside_port;
        spec.image_layers = run.layers;
        spec.argv = run.argv;
        spec.cwd = run.cwd;
        spec.env = run.env;
        spec.user_uid = run.uid;
        spec.user_gid = run.gid;
    }
    rc = executor_start(ex, &spec, out);
    /* read back only by a skiffd that adopts the running instance, which a crash of the
     * machine does not leave: replaced whole, not made durable (an fsync here was 40% of a
     * start from zero, the probe waiting behind it) */
    if (rc == 0 && l->droplet_guid) {
        char *note = cell__droplet_note(home, l->instance_guid);
        file_replace(note, l->droplet_guid, strlen(l->droplet_guid), 0600);
        free(note);
        start_trace("cell: droplet note written");
    }
    if (rc < 0)
        snprintf(err, errsize, "%s",
                 rc == -ENOTSUP && l->n_sidecars
                     ? "sidecars need containers (this skiffd runs host processes)"
                     : skiff_strerror(rc));
out:
    image_run_clear(&run);
    scheduler_env_free(env);
    free(home_dir);
    free(tmpdir);
    free(app_dir);
    return rc;
}
