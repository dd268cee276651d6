/* container_config as JSON: how the executor and the stager hand a container's shape to
 * skiff-init. */
#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "container/container.h"

static const char *const mount_kinds[] = {"ro", "rw", "overlay"};

char *container_config_to_json(const struct container_config *cfg)
{
    json_t *mounts = json_array();
    for (size_t i = 0; i < cfg->n_mounts; i++)
        json_array_append_new(mounts, json_pack("{s:s,s:s,s:s}", "source", cfg->mounts[i].source,
                                                "target", cfg->mounts[i].target, "kind",
                                                mount_kinds[cfg->mounts[i].kind]));
    json_t *cgroups = json_array();
    for (char **c = cfg->cgroup_procs; c && *c; c++)
        json_array_append_new(cgroups, json_string(*c));
    json_t *j = json_pack("{s:s,s:s,s:s,s:i,s:I,s:s,s:o,s:o}", "hostname", cfg->hostname, "stack",
                          cfg->stack, "scratch", cfg->scratch, "disk_mb", cfg->disk_mb, "uid_base",
                          (json_int_t)cfg->uid_base, "cwd", cfg->cwd, "mounts", mounts,
                          "cgroup_procs", cgroups);
    if (cfg->disk_pool)
        json_object_set_new(j, "disk_pool", json_string(cfg->disk_pool));
    if (cfg->disk_from)
        json_object_set_new(j, "disk_from", json_string(cfg->disk_from));
    if (cfg->seccomp_bpf)
        json_object_set_new(j, "seccomp_bpf", json_string(cfg->seccomp_bpf));
    if (cfg->warm_socket)
        json_object_set_new(j, "warm_socket", json_string(cfg->warm_socket));
    if (cfg->warm_program) {
        json_t *a = json_array();
        for (char **v = cfg->warm_program; *v; v++)
            json_array_append_new(a, json_string(*v));
        json_object_set_new(j, "warm_program", a);
    }
    if (cfg->n_sidecars) {
        json_t *a = json_array();
        for (size_t i = 0; i < cfg->n_sidecars; i++) {
            json_t *sc = json_pack("{s:s,s:s}", "name", cfg->sidecars[i].name, "command",
                                   cfg->sidecars[i].command);
            if (cfg->sidecars[i].cgroup_procs) {
                json_t *files = json_array();
                for (char **f = cfg->sidecars[i].cgroup_procs; *f; f++)
                    json_array_append_new(files, json_string(*f));
                json_object_set_new(sc, "cgroup_procs", files);
            }
            json_array_append_new(a, sc);
        }
        json_object_set_new(j, "sidecars", a);
    }
    if (cfg->image_layers)
        json_object_set_new(j, "image_layers", json_string(cfg->image_layers));
    if (cfg->user_uid)
        json_object_set_new(
            j, "user", json_pack("[I,I]", (json_int_t)cfg->user_uid, (json_int_t)cfg->user_gid));
    if (cfg->net_pool) {
        json_object_set_new(j, "net_pool", json_string(cfg->net_pool));
        json_object_set_new(j, "net_slot", json_integer(cfg->net_slot));
    }
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return text;
}

static char *config__string(json_t *j, const char *key)
{
    const char *s = json_string_value(json_object_get(j, key));
    return s ? xstrdup(s) : NULL;
}

bool container_sidecar_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n < 1 || n > CONTAINER_SIDECAR_NAME_MAX)
        return false;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_'))
            return false;
    return true;
}

static int config__sidecars(json_t *a, struct container_config *out, char *err, size_t errlen)
{
    if (json_array_size(a) > CONTAINER_SIDECARS_MAX) {
        snprintf(err, errlen, "container config: more than %d sidecars", CONTAINER_SIDECARS_MAX);
        return -22;
    }
    out->sidecars = xcalloc(json_array_size(a) + 1, sizeof *out->sidecars);
    for (size_t i = 0; i < json_array_size(a); i++) {
        struct container_sidecar *sc = &out->sidecars[out->n_sidecars++];
        sc->name = config__string(json_array_get(a, i), "name");
        sc->command = config__string(json_array_get(a, i), "command");
        if (!sc->name || !container_sidecar_name_valid(sc->name) || !sc->command ||
            !sc->command[0]) {
            snprintf(err, errlen, "container config: sidecar %zu is not {name, command}", i);
            return -22;
        }
        json_t *files = json_object_get(json_array_get(a, i), "cgroup_procs");
        if (files && (!json_is_array(files) || json_array_size(files) == 0 ||
                      json_array_size(files) > CONTAINER_SIDECAR_CGROUP_FILES)) {
            snprintf(err, errlen,
                     "container config: sidecar %zu's cgroup_procs is not a list of 1 to %d "
                     "files",
                     i, CONTAINER_SIDECAR_CGROUP_FILES);
            return -22;
        }
        if (files) {
            sc->cgroup_procs = xcalloc(json_array_size(files) + 1, sizeof(char *));
            for (size_t k = 0; k < json_array_size(files); k++) {
                const char *f = json_string_value(json_array_get(files, k));
                if (!f || f[0] != '/') {
                    snprintf(err, errlen,
                             "container config: sidecar %zu's cgroup_procs names no absolute "
                             "path",
                             i);
                    return -22;
                }
                sc->cgroup_procs[k] = xstrdup(f);
            }
        }
    }
    return 0;
}

int container_config_from_json(const char *text, struct container_config *out, char *err,
                               size_t errlen)
{
    memset(out, 0, sizeof *out);
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    if (!json_is_object(j)) {
        snprintf(err, errlen, "container config is not a JSON object: %s", jerr.text);
        json_decref(j);
        return -22;
    }
    out->hostname = config__string(j, "hostname");
    out->stack = config__string(j, "stack");
    out->scratch = config__string(j, "scratch");
    out->cwd = config__string(j, "cwd");
    out->disk_pool = config__string(j, "disk_pool");
    out->disk_from = config__string(j, "disk_from");
    out->seccomp_bpf = config__string(j, "seccomp_bpf");
    out->net_pool = config__string(j, "net_pool");
    out->warm_socket = config__string(j, "warm_socket");
    out->image_layers = config__string(j, "image_layers");
    json_int_t uid = json_integer_value(json_array_get(json_object_get(j, "user"), 0));
    json_int_t gid = json_integer_value(json_array_get(json_object_get(j, "user"), 1));
    if (uid > 0 && uid < CONTAINER_UID_RANGE && gid >= 0 && gid < CONTAINER_UID_RANGE) {
        out->user_uid = (unsigned)uid;
        out->user_gid = (unsigned)gid;
    }
    json_t *prog = json_object_get(j, "warm_program");
    if (json_array_size(prog) > 0) {
        out->warm_program = xcalloc(json_array_size(prog) + 1, sizeof(char *));
        for (size_t i = 0; i < json_array_size(prog); i++)
            out->warm_program[i] = xstrdup(json_string_value(json_array_get(prog, i)) ?: "");
    }
    out->disk_mb = (int)json_integer_value(json_object_get(j, "disk_mb"));
    out->uid_base = (unsigned)json_integer_value(json_object_get(j, "uid_base"));
    out->net_slot = (int)json_integer_value(json_object_get(j, "net_slot"));
    json_t *cg = json_object_get(j, "cgroup_procs");
    out->cgroup_procs = xcalloc(json_array_size(cg) + 1, sizeof(char *));
    for (size_t i = 0; i < json_array_size(cg); i++)
        out->cgroup_procs[i] = xstrdup(json_string_value(json_array_get(cg, i)) ?: "");
    json_t *mounts = json_object_get(j, "mounts");
    out->mounts = xcalloc(json_array_size(mounts) + 1, sizeof *out->mounts);
    int rc = 0;
    for (size_t i = 0; i < json_array_size(mounts); i++) {
        json_t *m = json_array_get(mounts, i);
        const char *kind = json_string_value(json_object_get(m, "kind"));
        struct container_mount *cm = &out->mounts[out->n_mounts];
        cm->source = config__string(m, "source");
        cm->target = config__string(m, "target");
        out->n_mounts++;
        int k = -1;
        for (size_t n = 0; kind && n < ARRAY_SIZE(mount_kinds); n++)
            if (!strcmp(kind, mount_kinds[n]))
                k = (int)n;
        if (k < 0 || !cm->source || !cm->target || cm->target[0] != '/') {
            snprintf(err, errlen, "container config: mount %zu is not {source, target, kind}", i);
            rc = -22;
            break;
        }
        cm->kind = (enum container_mount_kind)k;
    }
    if (rc == 0)
        rc = config__sidecars(json_object_get(j, "sidecars"), out, err, errlen);
    json_decref(j);
    if (rc == 0 && (!out->hostname || !out->stack || !out->scratch || !out->cwd ||
                    out->disk_mb <= 0 || out->uid_base == 0)) {
        snprintf(err, errlen,
                 "container config lacks hostname, stack, scratch, cwd, disk_mb or uid_base");
        rc = -22;
    }
    if (rc < 0)
        container_config_clear(out);
    return rc;
}

void container_config_clear(struct container_config *cfg)
{
    free(cfg->hostname);
    free(cfg->stack);
    free(cfg->scratch);
    free(cfg->cwd);
    free(cfg->disk_pool);
    free(cfg->disk_from);
    free(cfg->seccomp_bpf);
    free(cfg->net_pool);
    free(cfg->warm_socket);
    free(cfg->image_layers);
    for (char **v = cfg->warm_program; v && *v; v++)
        free(*v);
    free(cfg->warm_program);
    for (char **c = cfg->cgroup_procs; c && *c; c++)
        free(*c);
    free(cfg->cgroup_procs);
    for (size_t i = 0; i < cfg->n_mounts; i++) {
        free(cfg->mounts[i].source);
        free(cfg->mounts[i].target);
    }
    free(cfg->mounts);
    for (size_t i = 0; i < cfg->n_sidecars; i++) {
        free(cfg->sidecars[i].name);
        free(cfg->sidecars[i].command);
        for (char **f = cfg->sidecars[i].cgroup_procs; f && *f; f++)
            free(*f);
        free(cfg->sidecars[i].cgroup_procs);
    }
    free(cfg->sidecars);
    memset(cfg, 0, sizeof *cfg);
}

static uid_t chown__uid;

static int chown__one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    return lchown(path, chown__uid, chown__uid) < 0 ? -errno : 0;
}

int container_chown_tree(const char *path, unsigned uid_base)
{
    /* nftw takes no context: the uid goes through a static, which is safe because every
     * caller of a daemon gives the same uid (it has one uid base) */
    chown__uid = uid_base + CONTAINER_VCAP_UID;
    int rc = nftw(path, chown__one, 32, FTW_PHYS);
    return rc < 0 ? -errno : rc;
}
