/* image_root: what a container whose root is an image's layers needs before the usual mounts.
 *
 * An image's root is the tenant's: any of its paths may be a symbolic link (to "/etc" of the
 * host, as host root resolves it here). Every mount point Skiff needs in it is therefore made
 * by walking component by component with O_NOFOLLOW; a link on the way is refused, never
 * followed, so that run.c's path-based mounts that follow meet only real folders and files. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/util.h"
#include "container/container.h"
#include "container/container_internal.h"

/* Makes `inside` (absolute) under the root fd: folders, and the last one a folder or an empty
 * file. A component that is a link or of the wrong kind is an error (a file made last is
 * replaced: it is the container's own writable layer). */
static int image_root__make(int rootfd, const char *inside, bool dir, char *err, size_t errlen)
{
    char *copy = xstrdup(inside), *save = NULL;
    int fd = dup(rootfd), rc = 0;
    char *c = strtok_r(copy, "/", &save);
    while (c && fd >= 0) {
        char *next_name = strtok_r(NULL, "/", &save);
        if (!strcmp(c, "..") || !strcmp(c, ".")) { /* ".." from the root is the host's */
            rc = -EINVAL;
            break;
        }
        bool last = !next_name;
        if (last && !dir) {
            struct stat st;
            if (fstatat(fd, c, &st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISREG(st.st_mode))
                unlinkat(fd, c, S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0);
            int f = openat(fd, c, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
            if (f < 0)
                rc = -errno;
            else
                close(f);
            break;
        }
        int next = openat(fd, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (next < 0 && errno == ENOENT && mkdirat(fd, c, 0755) == 0)
            next = openat(fd, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (next < 0) {
            rc = -errno;
            break;
        }
        close(fd);
        fd = next;
        c = next_name;
    }
    if (fd >= 0)
        close(fd);
    free(copy);
    if (rc == -ELOOP || rc == -ENOTDIR) {
        snprintf(err, errlen,
                 "the image's %s is a symbolic link or not a %s: Skiff mounts its own there, "
                 "so it must be a real %s or absent",
                 inside, dir ? "folder" : "file", dir ? "folder" : "file");
        return rc;
    }
    if (rc == -EINVAL)
        snprintf(err, errlen, "the image's %s has a \".\" or \"..\" component", inside);
    else if (rc < 0)
        snprintf(err, errlen, "cannot make %s in the image's root: %s", inside, skiff_strerror(rc));
    return rc;
}

int container__image_root(const struct container_config *cfg, const char *root, char *err,
                          size_t errlen)
{
    static const char *const dirs[] = {"/proc", "/dev", CONTAINER_TMP_DIR, CONTAINER_APP_DIR,
                                       "/etc"};
    /* the stack's generated files: names resolve, the image brings no resolver of its own */
    static const char *const files[] = {"/etc/hosts", "/etc/resolv.conf"};
    int rootfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0) {
        snprintf(err, errlen, "cannot open the root %s: %s", root, skiff_strerror(-errno));
        return -errno;
    }
    int rc = 0;
    for (size_t i = 0; i < ARRAY_SIZE(dirs) && rc == 0; i++)
        rc = image_root__make(rootfd, dirs[i], true, err, errlen);
    if (rc == 0 && cfg->cwd[0] == '/' && strcmp(cfg->cwd, "/")) /* Docker makes WorkingDir */
        rc = image_root__make(rootfd, cfg->cwd, true, err, errlen);
    for (size_t i = 0; i < ARRAY_SIZE(files) && rc == 0; i++) {
        rc = image_root__make(rootfd, files[i], false, err, errlen);
        char *src = xasprintf("%s%s", cfg->stack, files[i]);
        char *dst = xasprintf("%s%s", root, files[i]);
        if (rc == 0 && (mount(src, dst, NULL, MS_BIND, NULL) < 0 ||
                        mount(NULL, dst, NULL,
                              MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                              NULL) < 0)) {
            rc = -errno;
            snprintf(err, errlen, "cannot mount %s: %s", files[i], skiff_strerror(-errno));
        }
        free(src);
        free(dst);
    }
    close(rootfd);
    return rc;
}
