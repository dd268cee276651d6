/* cell: starting a launch on a local executor, and finding its droplet (cell.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cell/cell.h"
#include "common/err.h"
#include "common/util.h"
#include "images/images.h"
#include "scheduler/instance_env.h"

int cell_droplet_path(const char *path, const char *digest, char **out, char *err, size_t errsize)
{
    struct stat st;
    if (path && *path && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        *out = xstrdup(path);
        return 0;
    }
    /* the blob service's fetch by digest goes here (GET /v1/blobs/sha256:HEX on a controller,
     * cached under the cell's home by digest) */
    snprintf(err, errsize,
             "droplet %s not on this cell: it is read at the controller's path (%s), which "
             "must be on a file system this cell shares; fetching droplets by digest is not "
             "done yet",
             digest && *digest ? digest : "sha256:(unknown)", path && *path ? path : "none");
    return -ENOENT;
}

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

/* ---- a droplet folder's digest ------------------------------------------------------------- */

struct cell__hash {
    EVP_MD_CTX *md;
    int rc;
};

static void cell__hash_text(struct cell__hash *h, const char *kind, const char *rel,
                            const char *rest)
{
    EVP_DigestUpdate(h->md, kind, strlen(kind));
    EVP_DigestUpdate(h->md, rel, strlen(rel) + 1); /* with its NUL: names cannot hold one */
    EVP_DigestUpdate(h->md, rest, strlen(rest));
    EVP_DigestUpdate(h->md, "\n", 1);
}

static void cell__hash_file(struct cell__hash *h, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        h->rc = -errno;
        return;
    }
    char buf[65536];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        EVP_DigestUpdate(h->md, buf, (size_t)n);
    if (n < 0)
        h->rc = -errno;
    close(fd);
}

/* Every entry under dir/rel, in name order: kind, relative path, mode, size or link target,
 * then a file's bytes. */
static void cell__hash_tree(struct cell__hash *h, const char *dir, const char *rel)
{
    char *path = *rel ? xasprintf("%s/%s", dir, rel) : xstrdup(dir);
    struct dirent **names = NULL;
    int n = scandir(path, &names, NULL, alphasort);
    if (n < 0)
        h->rc = -errno;
    for (int k = 0; k < n; k++) {
        const char *name = names[k]->d_name;
        if (h->rc == 0 && strcmp(name, ".") && strcmp(name, "..")) {
            char *sub = *rel ? xasprintf("%s/%s", rel, name) : xstrdup(name);
            char *full = xasprintf("%s/%s", dir, sub);
            struct stat st;
            char rest[PATH_MAX + 64];
            if (lstat(full, &st) < 0) {
                h->rc = -errno;
            } else if (S_ISDIR(st.st_mode)) {
                snprintf(rest, sizeof rest, "%o", (unsigned)(st.st_mode & 07777));
                cell__hash_text(h, "D", sub, rest);
                cell__hash_tree(h, dir, sub);
            } else if (S_ISLNK(st.st_mode)) {
                ssize_t len = readlink(full, rest, sizeof rest - 1);
                rest[len > 0 ? len : 0] = '\0';
                cell__hash_text(h, "L", sub, rest);
            } else if (S_ISREG(st.st_mode)) {
                snprintf(rest, sizeof rest, "%o %llu", (unsigned)(st.st_mode & 07777),
                         (unsigned long long)st.st_size);
                cell__hash_text(h, "F", sub, rest);
                cell__hash_file(h, full);
            }
            free(full);
            free(sub);
        }
        free(names[k]);
    }
    free(names);
    free(path);
}

int cell_droplet_digest(const char *dir, char out[CELL_DIGEST_LEN], char *err, size_t errsize)
{
    struct cell__hash h = {EVP_MD_CTX_new(), 0};
    if (!h.md || !EVP_DigestInit_ex(h.md, EVP_sha256(), NULL))
        abort(); /* out of memory */
    cell__hash_tree(&h, dir, "");
    unsigned char md[32];
    unsigned len = 0;
    EVP_DigestFinal_ex(h.md, md, &len);
    EVP_MD_CTX_free(h.md);
    if (h.rc < 0) {
        snprintf(err, errsize, "cannot read droplet %s to make its digest: %s", dir,
                 strerror(-h.rc));
        return h.rc;
    }
    int n = snprintf(out, CELL_DIGEST_LEN, "sha256:");
    for (unsigned k = 0; k < len; k++)
        n += snprintf(out + n, CELL_DIGEST_LEN - (size_t)n, "%02x", md[k]);
    return 0;
}
