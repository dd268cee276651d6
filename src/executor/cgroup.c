/* cgroup: see cgroup.h. */
#include "executor/cgroup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "common/util.h"

enum cgroup__mode { CGROUP_UNKNOWN, CGROUP_NONE, CGROUP_V1, CGROUP_V2 };

/* v1 hierarchies, in the order of struct cgroup's dirs */
enum { CG_MEMORY, CG_PIDS, CG_CPUACCT, CG_CPU /* optional: last */, CG_COUNT };
static const char *const cgroup__v1_names[CG_COUNT] = {"memory", "pids", "cpuacct", "cpu"};

struct cgroup {
    enum cgroup__mode mode;
    char *dirs[CG_COUNT]; /* v2 uses dirs[0] only */
    const char *procs[CG_COUNT + 1];
    char *procs_storage[CG_COUNT];
};

static enum cgroup__mode cgroup__detected = CGROUP_UNKNOWN;
static char *cgroup__base[CG_COUNT]; /* <root>/skiff (v2) or <root>/<hierarchy>/skiff (v1) */

static int cgroup__write(const char *dir, const char *file, const char *value)
{
    char *path = xasprintf("%s/%s", dir, file);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    free(path);
    if (fd < 0)
        return -errno;
    ssize_t n = write(fd, value, strlen(value));
    int rc = n < 0 ? -errno : 0;
    close(fd);
    return rc;
}

/* The number after `key ` in a "key value" file, or 0 when absent. */
static uint64_t cgroup__read_key(const char *dir, const char *file, const char *key)
{
    char *path = xasprintf("%s/%s", dir, file);
    FILE *f = fopen(path, "re");
    free(path);
    if (!f)
        return 0;
    char line[256];
    size_t klen = strlen(key);
    uint64_t value = 0;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ' ') {
            value = strtoull(line + klen + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return value;
}

static bool cgroup__usable_dir(const char *dir)
{
    if (mkdir_p(dir, 0755) < 0)
        return false;
    return access(dir, W_OK) == 0;
}

static void cgroup__detect(void)
{
    if (cgroup__detected != CGROUP_UNKNOWN)
        return;
    cgroup__detected = CGROUP_NONE;
    const char *root = getenv("SKIFF_CGROUP_ROOT");
    if (!root || !*root)
        root = "/sys/fs/cgroup";

    char *controllers = NULL;
    char *path = xasprintf("%s/cgroup.controllers", root);
    int rc = file_read(path, &controllers, NULL);
    free(path);
    if (rc == 0) {
        bool ok = strstr(controllers, "memory") && strstr(controllers, "pids");
        free(controllers);
        if (ok) {
            char *base = xasprintf("%s/skiff", root);
            /* Controllers must be enabled on the way down; the root may refuse when it
             * holds processes itself (a container), and then v2 is not usable here. */
            /* one controller a write: a write fails as a whole when one is unavailable */
            cgroup__write(root, "cgroup.subtree_control", "+memory");
            cgroup__write(root, "cgroup.subtree_control", "+pids");
            cgroup__write(root, "cgroup.subtree_control", "+cpu");
            if (cgroup__usable_dir(base) &&
                cgroup__write(base, "cgroup.subtree_control", "+memory") == 0 &&
                cgroup__write(base, "cgroup.subtree_control", "+pids") == 0) {
                cgroup__write(base, "cgroup.subtree_control", "+cpu");
                cgroup__base[0] = base;
                cgroup__detected = CGROUP_V2;
                return;
            }
            free(base);
        }
    }
    for (int i = 0; i < CG_COUNT; i++) {
        cgroup__base[i] = xasprintf("%s/%s/skiff", root, cgroup__v1_names[i]);
        if (i == CG_CPU && !cgroup__usable_dir(cgroup__base[i])) {
            free(cgroup__base[i]); /* CPU weights are a nicety: go on without them */
            cgroup__base[i] = NULL;
            continue;
        }
        if (!cgroup__usable_dir(cgroup__base[i])) {
            for (int j = 0; j <= i; j++) {
                free(cgroup__base[j]);
                cgroup__base[j] = NULL;
            }
            return;
        }
    }
    /* children inherit the parent's hierarchy flag in v1 only when it is set first */
    cgroup__write(cgroup__base[CG_MEMORY], "memory.use_hierarchy", "1");
    cgroup__detected = CGROUP_V1;
}

const char *cgroup_mode(void)
{
    cgroup__detect();
    return cgroup__detected == CGROUP_V2 ? "v2" : cgroup__detected == CGROUP_V1 ? "v1" : "none";
}

static int cgroup__make(const char *name, bool fresh, int memory_mb, int pids_max,
                        struct cgroup **out);

/* One folder under skiff/: no path in it */
static bool cgroup__name_ok(const char *name)
{
    return name[0] && !strchr(name, '/') && strcmp(name, "..") != 0 && strcmp(name, ".") != 0;
}

int cgroup_create(const char *name, int memory_mb, int pids_max, struct cgroup **out)
{
    return cgroup__make(name, true, memory_mb, pids_max, out);
}

int cgroup_open(const char *name, struct cgroup **out)
{
    return cgroup__make(name, false, 0, 0, out);
}

void cgroup_release(struct cgroup *cg)
{
    if (!cg)
        return;
    for (int i = 0; i < CG_COUNT; i++) {
        free(cg->dirs[i]);
        free(cg->procs_storage[i]);
    }
    free(cg);
}

static int cgroup__make(const char *name, bool fresh, int memory_mb, int pids_max,
                        struct cgroup **out)
{
    cgroup__detect();
    if (cgroup__detected == CGROUP_NONE)
        return -ENOTSUP;
    if (!cgroup__name_ok(name))
        return -EINVAL;
    struct cgroup *cg = xcalloc(1, sizeof(*cg));
    cg->mode = cgroup__detected;
    int count = cg->mode == CGROUP_V2 ? 1 : CG_COUNT;
    int rc = 0;
    for (int i = 0; i < count && cgroup__base[i]; i++) {
        cg->dirs[i] = xasprintf("%s/%s", cgroup__base[i], name);
        if (mkdir(cg->dirs[i], 0755) == 0) {
            if (!fresh) { /* it was not there: nothing to open */
                rmdir(cg->dirs[i]);
                rc = -ENOENT;
                goto fail;
            }
        } else if (errno != EEXIST) {
            rc = -errno;
            goto fail;
        }
        cg->procs_storage[i] = xasprintf("%s/cgroup.procs", cg->dirs[i]);
        cg->procs[i] = cg->procs_storage[i];
    }
    if (!fresh) {
        *out = cg;
        return 0;
    }
    cgroup_kill_all(cg); /* a leftover of the same name from a daemon that died */
    rc = cgroup_set_limits(cg, memory_mb, pids_max);
    if (rc < 0)
        goto fail;
    *out = cg;
    return 0;
fail:
    if (fresh)
        cgroup_destroy(cg);
    else
        cgroup_release(cg); /* what is there stays */
    return rc;
}

int cgroup_set_limits(struct cgroup *cg, int memory_mb, int pids_max)
{
    char value[32];
    int rc = 0;
    if (memory_mb > 0) {
        snprintf(value, sizeof(value), "%llu", (unsigned long long)memory_mb << 20);
        if (cg->mode == CGROUP_V2) {
            rc = cgroup__write(cg->dirs[0], "memory.max", value);
            cgroup__write(cg->dirs[0], "memory.swap.max", "0");
        } else {
            rc = cgroup__write(cg->dirs[CG_MEMORY], "memory.limit_in_bytes", value);
            cgroup__write(cg->dirs[CG_MEMORY], "memory.memsw.limit_in_bytes", value);
        }
        if (rc < 0)
            return rc;
        /* CPU by weight, in proportion to memory, as Cloud Foundry does: 1 GB gets the
         * default weight (v1 shares 1024, v2 weight 100) */
        if (cg->mode == CGROUP_V2) {
            long weight = (long)memory_mb * 100 / 1024;
            snprintf(value, sizeof(value), "%ld", weight < 1 ? 1 : weight > 10000 ? 10000 : weight);
            cgroup__write(cg->dirs[0], "cpu.weight", value);
        } else if (cg->dirs[CG_CPU]) {
            long shares = memory_mb < 2 ? 2 : memory_mb > 262144 ? 262144 : memory_mb;
            snprintf(value, sizeof(value), "%ld", shares);
            cgroup__write(cg->dirs[CG_CPU], "cpu.shares", value);
        }
    }
    if (pids_max > 0) {
        snprintf(value, sizeof(value), "%d", pids_max);
        rc = cgroup__write(cg->mode == CGROUP_V2 ? cg->dirs[0] : cg->dirs[CG_PIDS], "pids.max",
                           value);
    }
    return rc;
}

const char *const *cgroup_join_files(const struct cgroup *cg)
{
    return cg->procs;
}

/* Kills every pid listed in the procs file; returns how many were listed. */
static int cgroup__kill_listed(const char *procs)
{
    FILE *f = fopen(procs, "re");
    if (!f)
        return 0;
    int count = 0;
    long pid;
    while (fscanf(f, "%ld", &pid) == 1) {
        if (pid > 0)
            kill((pid_t)pid, SIGKILL);
        count++;
    }
    fclose(f);
    return count;
}

void cgroup_kill_all(struct cgroup *cg)
{
    if (cg->mode == CGROUP_V2 && cgroup__write(cg->dirs[0], "cgroup.kill", "1") == 0)
        return;
    /* No cgroup.kill: kill what is listed until nothing is; the pids limit keeps a fork
     * bomb from outrunning this. */
    const char *procs = cg->mode == CGROUP_V2 ? cg->procs[0] : cg->procs[CG_PIDS];
    for (int round = 0; round < 1000; round++) {
        if (cgroup__kill_listed(procs) == 0)
            return;
    }
}

bool cgroup_oom_killed(const struct cgroup *cg)
{
    if (cg->mode == CGROUP_V2)
        return cgroup__read_key(cg->dirs[0], "memory.events", "oom_kill") > 0;
    return cgroup__read_key(cg->dirs[CG_MEMORY], "memory.oom_control", "oom_kill") > 0;
}

bool cgroup_pids_limited(const struct cgroup *cg)
{
    return cgroup__read_key(cg->mode == CGROUP_V2 ? cg->dirs[0] : cg->dirs[CG_PIDS], "pids.events",
                            "max") > 0;
}

int cgroup_usage(const struct cgroup *cg, uint64_t *cpu_ns, uint64_t *memory_bytes)
{
    if (cg->mode == CGROUP_V2) {
        *cpu_ns = cgroup__read_key(cg->dirs[0], "cpu.stat", "usage_usec") * 1000;
        *memory_bytes = cgroup__read_key(cg->dirs[0], "memory.stat", "anon");
        return 0;
    }
    char *path = xasprintf("%s/cpuacct.usage", cg->dirs[CG_CPUACCT]);
    char *text = NULL;
    *cpu_ns = file_read(path, &text, NULL) == 0 ? strtoull(text, NULL, 10) : 0;
    free(text);
    free(path);
    *memory_bytes = cgroup__read_key(cg->dirs[CG_MEMORY], "memory.stat", "total_rss");
    return 0;
}

int cgroup_remove_stale(int min_age_s)
{
    cgroup__detect();
    if (cgroup__detected == CGROUP_NONE)
        return 0;
    int removed = 0;
    time_t now = time(NULL);
    int count = cgroup__detected == CGROUP_V2 ? 1 : CG_COUNT;
    for (int i = 0; i < count; i++) {
        uv_fs_t req;
        uv_dirent_t ent;
        if (!cgroup__base[i] || uv_fs_scandir(NULL, &req, cgroup__base[i], 0, NULL) < 0)
            continue;
        while (uv_fs_scandir_next(&req, &ent) != UV_EOF) { /* to the end: see libuv */
            if (ent.type != UV_DIRENT_DIR && ent.type != UV_DIRENT_UNKNOWN)
                continue;
            char *dir = xasprintf("%s/%s", cgroup__base[i], ent.name);
            struct stat st;
            if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && now - st.st_mtime >= min_age_s &&
                rmdir(dir) == 0 && i == 0)
                removed++;
            free(dir);
        }
        uv_fs_req_cleanup(&req);
    }
    return removed;
}

int cgroup_create_child(const struct cgroup *parent, const char *name, struct cgroup **out)
{
    if (!cgroup__name_ok(name))
        return -EINVAL;
    struct cgroup *cg = xcalloc(1, sizeof(*cg));
    cg->mode = parent->mode;
    for (int i = 0; i < CG_COUNT; i++) {
        if (!parent->dirs[i])
            continue;
        cg->dirs[i] = xasprintf("%s/%s", parent->dirs[i], name);
        if (mkdir(cg->dirs[i], 0755) < 0) {
            int rc = -errno;
            free(cg->dirs[i]);
            cg->dirs[i] = NULL;
            cgroup_destroy(cg);
            return rc;
        }
        cg->procs_storage[i] = xasprintf("%s/cgroup.procs", cg->dirs[i]);
        cg->procs[i] = cg->procs_storage[i]; /* as the parent's: only the optional last may lack */
    }
    *out = cg;
    return 0;
}

/* Removes the cgroups under dir (cgroup_create_child's), killing what is in them: a cgroup
 * with children cannot be removed, and v1 kills only what is listed in a cgroup itself. */
static void cgroup__remove_children(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_type != DT_DIR || de->d_name[0] == '.')
            continue;
        char *child = xasprintf("%s/%s", dir, de->d_name);
        char *procs = xasprintf("%s/cgroup.procs", child);
        for (int attempt = 0; attempt < 200; attempt++) {
            cgroup__kill_listed(procs);
            if (rmdir(child) == 0 || errno != EBUSY)
                break;
            nanosleep(&(struct timespec){0, 1000000}, NULL);
        }
        free(procs);
        free(child);
    }
    closedir(d);
}

void cgroup_destroy(struct cgroup *cg)
{
    if (!cg)
        return;
    cgroup_kill_all(cg);
    for (int i = 0; i < CG_COUNT; i++) {
        if (!cg->dirs[i])
            continue;
        cgroup__remove_children(cg->dirs[i]);
        /* killed processes leave their cgroup when the kernel has finished them: a moment */
        for (int attempt = 0; attempt < 200; attempt++) {
            if (rmdir(cg->dirs[i]) == 0 || errno == ENOENT)
                break;
            if (errno != EBUSY)
                break;
            cgroup__kill_listed(cg->procs[i]);
            nanosleep(&(struct timespec){0, 1000000}, NULL);
        }
        free(cg->dirs[i]);
        free(cg->procs_storage[i]);
    }
    free(cg);
}
