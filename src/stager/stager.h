/* stager: turns uploaded code into a droplet with the classic buildpack contract.
 *
 * Packages: an upload (tar, tar.gz or zip) is checked before it is accepted
 * (package_check) and unpacked for staging (package_extract). Both refuse entries that
 * escape the folder: "..", absolute paths, symlinks pointing outside, devices.
 *
 * Staging runs `bin/detect` of each candidate buildpack in order (or the named ones), then
 * `bin/supply`/`bin/finalize` or `bin/compile`, then `bin/release`, each as a child process
 * on the caller's libuv loop, streaming output line by line. The droplet is a folder
 * (droplet_dir/app plus droplet_dir/staging_info.json) written to a temporary name and
 * renamed into place only on success, so a failed stage leaves nothing half-made.
 *
 * Errors: calls return 0 or a negative errno, the one error type of common/err.h, with a
 * message for the user in err where they take one (worded with skiff_strerror). */
#ifndef SKIFF_STAGER_H
#define SKIFF_STAGER_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

/* ---- packages ------------------------------------------------------------------------ */

/* Checks an uploaded archive without writing anything. 0 when safe; otherwise a negative
 * value and a message naming the offending entry in err (size errsize). Codes: */
#define PACKAGE_NOT_ARCHIVE (-1000)
#define PACKAGE_UNSAFE (-1001)
#define PACKAGE_TOO_LARGE (-1002) /* unpacked size over max_unpacked bytes (0: no limit) */
int package_check(const char *archive_path, size_t max_unpacked, char *err, size_t errsize);
/* Unpacks into dir (which must exist and be empty) with the same checks. */
int package_extract(const char *archive_path, const char *dir, size_t max_unpacked, char *err,
                    size_t errsize);

/* ---- staging ------------------------------------------------------------------------- */

struct staging;

struct container_site;

struct stager_config {
    const char *buildpacks_dir; /* the built-in buildpacks, one folder each */
    const char *home;           /* $SKIFF_HOME: scratch under home/tmp */
    /* Buildpacks are untrusted code: with a site, every step runs in a container of its own
     * (as vcap, the build folder at /tmp/app, the cache at /tmp/cache, the buildpack
     * read-only at /tmp/buildpacks/N, network egress) under memory_mb, all of it on one disk
     * of the request's disk_mb; NULL runs them as host processes (unsafe: development only,
     * no disk quota). */
    const struct container_site *containers;
    int memory_mb; /* staging's memory limit in containers; 0: 1024 */
};

struct stage_request {
    const char *app_name;
    const char *package_path;   /* the accepted upload */
    const char *const *buildpacks; /* NULL-terminated names or folder paths; NULL: detect */
    const char *cache_dir;      /* per-app build cache, kept between stages */
    const char *droplet_dir;    /* where the droplet goes (must not exist yet) */
    char *const *env;           /* NULL-terminated KEY=VALUE for the buildpack processes */
    int timeout_s;              /* whole staging; default 900 */
    /* In containers, the staging disk: the build, deps, cache and whatever the steps write
     * share this many MB (writes past it fail with ENOSPC; the staging fails saying so);
     * 0: 1024. Cloud Foundry stages with the app's disk quota. */
    int disk_mb;
};

struct stage_result {
    bool ok;
    const char *buildpack;      /* the one that staged it */
    const char *process_types_json; /* {"web": "command", ...} from bin/release */
    const char *error;          /* when !ok: what failed and what to do */
};

typedef void (*stage_output_cb)(void *ctx, const char *line, size_t len);
typedef void (*stage_done_cb)(void *ctx, const struct stage_result *result);

/* Starts staging. On error (a negative errno) nothing started and no callback will come.
 * Otherwise on_done is called exactly once; the result's strings live until it returns.
 * A named buildpack that does not exist is reported through on_done, with a message. */
int stager_start(uv_loop_t *loop, const struct stager_config *cfg, const struct stage_request *req,
                 stage_output_cb on_output, stage_done_cb on_done, void *ctx, struct staging **out);
/* Stops a staging in progress; on_done still comes (with ok = false), from the loop, never
 * from inside this call. */
void stager_cancel(struct staging *s);

#endif
