/* The stack "host": the machine's own /usr, read-only, under a generated skeleton. It needs
 * no download and costs nothing to start: the skeleton is a handful of small files made once
 * per daemon start, and /usr is one bind mount. Nothing else of the host (its /etc, /root,
 * /home, /var, /tmp, $SKIFF_HOME) is in it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/util.h"
#include "container/container.h"

static int stack__write(const char *dir, const char *name, const char *text, unsigned mode)
{
    char *path = xasprintf("%s/%s", dir, name);
    int rc = file_write_atomic(path, text, strlen(text), mode);
    free(path);
    return rc;
}

/* The host's resolvers, unless they are on loopback (which inside is the container's own). */
static char *stack__resolv_conf(void)
{
    char *host = NULL;
    char *out = xstrdup("");
    if (file_read("/etc/resolv.conf", &host, NULL) == 0) {
        char *save = NULL;
        for (char *line = strtok_r(host, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            char addr[64];
            if (sscanf(line, "nameserver %63s", addr) == 1 && !str_has_prefix(addr, "127.") &&
                strcmp(addr, "::1")) {
                char *next = xasprintf("%snameserver %s\n", out, addr);
                free(out);
                out = next;
            }
        }
        free(host);
    }
    return out;
}

int container_stack_prepare(const char *home, char **dir_out, char *err, size_t errlen)
{
    char *dir = xasprintf("%s/stacks/%s/rootfs", home, CONTAINER_DEFAULT_STACK);
    static const char *const dirs[] = {"etc",  "usr",  "proc", "dev",       "home",
                                       "tmp",  "run",  "var",  "var/tmp",   "etc/ssl",
                                       "etc/alternatives", "home/vcap", "home/vcap/app",
                                       "home/vcap/tmp", "tmp/app", "tmp/cache",
                                       "tmp/buildpacks", "tmp/deps", "tmp/droplet"};
    int rc = 0;
    for (size_t i = 0; i < ARRAY_SIZE(dirs) && rc == 0; i++) {
        char *p = xasprintf("%s/%s", dir, dirs[i]);
        rc = mkdir_p(p, 0755);
        free(p);
    }
    static const char *const links[][2] = {
        {"bin", "usr/bin"}, {"sbin", "usr/sbin"}, {"lib", "usr/lib"}, {"lib64", "usr/lib64"}};
    for (size_t i = 0; i < ARRAY_SIZE(links) && rc == 0; i++) {
        char *p = xasprintf("%s/%s", dir, links[i][0]);
        if (symlink(links[i][1], p) < 0 && errno != EEXIST)
            rc = -errno;
        free(p);
    }
    if (rc < 0) {
        snprintf(err, errlen, "cannot make the stack under %s: %s", dir, skiff_strerror(rc));
        free(dir);
        return rc;
    }
    /* /tmp and /var/tmp are for everyone, as on any Unix; vcap's home is given to it in each
     * container's own writable layer (run.c), where its uid is known */
    char *p;
    p = xasprintf("%s/tmp", dir);
    chmod(p, 01777);
    free(p);
    p = xasprintf("%s/var/tmp", dir);
    chmod(p, 01777);
    free(p);

    char *passwd = xasprintf("root:x:0:0:root:/root:/usr/sbin/nologin\n"
                             "vcap:x:%d:%d:vcap:/home/vcap:/bin/bash\n"
                             "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
                             CONTAINER_VCAP_UID, CONTAINER_VCAP_UID);
    char *group = xasprintf("root:x:0:\nvcap:x:%d:\nnogroup:x:65534:\n", CONTAINER_VCAP_UID);
    char *resolv = stack__resolv_conf();
    rc = stack__write(dir, "etc/passwd", passwd, 0644);
    if (rc == 0)
        rc = stack__write(dir, "etc/group", group, 0644);
    if (rc == 0)
        rc = stack__write(dir, "etc/shadow", "", 0600);
    if (rc == 0)
        rc = stack__write(dir, "etc/hosts",
                          "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n", 0644);
    if (rc == 0)
        rc = stack__write(dir, "etc/resolv.conf", resolv, 0644);
    if (rc == 0)
        rc = stack__write(dir, "etc/nsswitch.conf",
                          "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n", 0644);
    if (rc == 0)
        rc = stack__write(dir, "etc/os-release",
                          "NAME=\"Skiff host stack\"\nID=skiff-host\nPRETTY_NAME=\"Skiff host "
                          "stack (the machine's /usr)\"\n",
                          0644);
    free(passwd);
    free(group);
    free(resolv);
    /* files the host's programs expect (the loader's cache, the time zone, MIME types for
     * nginx, which the staticfile buildpack runs): public, no secrets */
    static const char *const copies[] = {"/etc/ld.so.cache", "/etc/localtime", "/etc/mime.types",
                                         "/etc/nginx/mime.types"};
    for (size_t i = 0; i < ARRAY_SIZE(copies) && rc == 0; i++) {
        char *text = NULL;
        size_t len = 0;
        if (file_read(copies[i], &text, &len) == 0) {
            char *dst = xasprintf("%s%s", dir, copies[i]);
            char *parent = xstrndup(dst, (size_t)(strrchr(dst, '/') - dst));
            rc = mkdir_p(parent, 0755);
            free(parent);
            if (rc == 0)
                rc = file_write_atomic(dst, text, len, 0644);
            free(dst);
            free(text);
        }
    }
    if (rc < 0) {
        snprintf(err, errlen, "cannot write the stack's /etc under %s: %s", dir,
                 skiff_strerror(rc));
        free(dir);
        return rc;
    }
    *dir_out = dir;
    return 0;
}
