/* Disk images for containers' writable layers: ext4 in sparse files on loop devices.
 *
 * Why this and not a quota: this machine's kernel has no quota support (CONFIG_QUOTA) and no
 * XFS, so neither XFS project quotas nor ext4 project quotas exist; a size-limited tmpfs
 * would charge the disk to the instance's memory limit (a write would be an OOM kill, not
 * ENOSPC). A file system of its own per container is the one limit that holds everywhere:
 * a sparse image costs only the blocks written, mkfs (~10 ms) happens ahead of time in a
 * pool, and the mount (a loop device with autoclear) goes away with the container's mount
 * namespace. */
#include <dirent.h>
#include <stdbool.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/err.h"
#include "common/util.h"
#include "container/container.h"
#include "container/container_internal.h"

/* mkfs.ext4 of a sparse file: no journal (the layer is thrown away; nothing to recover),
 * no reserved blocks (the whole quota is the app's), lazy inode tables. */
static int disk__mkfs(const char *path, int size_mb, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)size_mb * 1024 * 1024) < 0) {
        int rc = -errno;
        snprintf(err, errlen, "cannot create disk image %s: %s", path, skiff_strerror(-errno));
        if (fd >= 0)
            close(fd);
        return rc;
    }
    close(fd);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "cannot run mkfs.ext4: %s", skiff_strerror(-errno));
        return -errno;
    }
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 1);
            dup2(null, 2);
        }
        execl("/sbin/mkfs.ext4", "mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
              "-E", "lazy_itable_init=1,nodiscard", path, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        snprintf(err, errlen, "mkfs.ext4 failed for %s (status %d)", path, status);
        unlink(path);
        return -EIO;
    }
    return 0;
}

static char *disk__pool_prefix(int size_mb)
{
    return xasprintf("ext4-%dM-", size_mb);
}

int container_disk_pool_fill(const char *pool_dir, int size_mb, int keep, char *err,
                             size_t errlen)
{
    int rc = mkdir_p(pool_dir, 0700);
    if (rc < 0) {
        snprintf(err, errlen, "cannot create %s: %s", pool_dir, skiff_strerror(rc));
        return rc;
    }
    char *prefix = disk__pool_prefix(size_mb);
    int ready = 0;
    DIR *d = opendir(pool_dir);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (str_has_prefix(e->d_name, prefix) && !str_has_suffix(e->d_name, ".tmp"))
            ready++;
    if (d)
        closedir(d);
    for (; ready < keep && rc == 0; ready++) {
        char id[17];
        random_hex(id, 8);
        char *tmp = xasprintf("%s/%s%s.tmp", pool_dir, prefix, id);
        char *final = xasprintf("%s/%s%s", pool_dir, prefix, id);
        rc = disk__mkfs(tmp, size_mb, err, errlen);
        if (rc == 0 && rename(tmp, final) < 0)
            rc = -errno;
        free(tmp);
        free(final);
    }
    free(prefix);
    return rc;
}

int container_disk_take(const char *pool_dir, int size_mb, const char *path, char *err,
                        size_t errlen)
{
    if (pool_dir) {
        char *prefix = disk__pool_prefix(size_mb);
        DIR *d = opendir(pool_dir);
        struct dirent *e;
        bool taken = false;
        while (d && !taken && (e = readdir(d))) {
            if (!str_has_prefix(e->d_name, prefix) || str_has_suffix(e->d_name, ".tmp"))
                continue;
            char *src = xasprintf("%s/%s", pool_dir, e->d_name);
            taken = rename(src, path) == 0; /* another start may win this one: try the next */
            free(src);
        }
        if (d)
            closedir(d);
        free(prefix);
        if (taken)
            return 0;
    }
    return disk__mkfs(path, size_mb, err, errlen);
}

/* Attaches image to a free loop device with autoclear (it frees itself once its last user,
 * the mount, lets go) and returns the device open, its name in dev. */
static int disk__loop_attach(const char *image, char *dev, size_t devlen, char *err, size_t errlen)
{
    int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0) {
        snprintf(err, errlen, "cannot open /dev/loop-control: %s", skiff_strerror(-errno));
        return -errno;
    }
    int img = open(image, O_RDWR | O_CLOEXEC);
    if (img < 0) {
        int rc = -errno;
        snprintf(err, errlen, "cannot open disk image %s: %s", image, skiff_strerror(-errno));
        close(ctl);
        return rc;
    }
    int rc = -EBUSY;
    for (int attempt = 0; attempt < 16 && rc == -EBUSY; attempt++) {
        int n = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (n < 0) {
            rc = -errno;
            break;
        }
        snprintf(dev, devlen, "/dev/loop%d", n);
        int lfd = open(dev, O_RDWR | O_CLOEXEC);
        if (lfd < 0) {
            rc = -errno;
            break;
        }
        struct loop_config lc = {.fd = (unsigned)img,
                                 .info = {.lo_flags = LO_FLAGS_AUTOCLEAR}};
        if (ioctl(lfd, LOOP_CONFIGURE, &lc) < 0) {
            rc = -errno; /* EBUSY: another process took this device first */
            close(lfd);
            continue;
        }
        rc = lfd;
    }
    if (rc < 0)
        snprintf(err, errlen, "no loop device for the disk image: %s", skiff_strerror(rc));
    close(img);
    close(ctl);
    return rc;
}

int container__disk_mount(const char *image, const char *dir, char *err, size_t errlen)
{
    char dev[32];
    int lfd = disk__loop_attach(image, dev, sizeof dev, err, errlen);
    if (lfd < 0)
        return lfd;
    int rc = mount(dev, dir, "ext4", MS_NOSUID | MS_NODEV | MS_NOATIME, NULL) < 0 ? -errno : 0;
    close(lfd); /* the mount holds the device; autoclear frees it at the unmount */
    if (rc < 0)
        snprintf(err, errlen, "cannot mount disk image %s: %s", image, skiff_strerror(rc));
    return rc;
}

int container__disk_mount_detached(const char *image, char *err, size_t errlen)
{
    char dev[32];
    int lfd = disk__loop_attach(image, dev, sizeof dev, err, errlen);
    if (lfd < 0)
        return lfd;
    int rc = 0, mfd = -1, fs = fsopen("ext4", FSOPEN_CLOEXEC);
    if (fs < 0 || fsconfig(fs, FSCONFIG_SET_STRING, "source", dev, 0) < 0 ||
        fsconfig(fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0 ||
        (mfd = fsmount(fs, FSMOUNT_CLOEXEC,
                       MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOATIME)) < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot mount disk image %s: %s", image, skiff_strerror(-errno));
    }
    if (fs >= 0)
        close(fs);
    close(lfd); /* the mount holds the device; autoclear frees it when the mount goes */
    return rc < 0 ? rc : mfd;
}

int container_disk_usage(const char *dir, unsigned long long *used, unsigned long long *total)
{
    struct statfs st;
    if (statfs(dir, &st) < 0)
        return -errno;
    *total = (unsigned long long)st.f_blocks * (unsigned long long)st.f_bsize;
    *used = (unsigned long long)(st.f_blocks - st.f_bfree) * (unsigned long long)st.f_bsize;
    return 0;
}

/* less free than this: the quota is used. On a small disk, ext4's reservations for delayed
 * allocation hold back most of it when a write fails (734 KB of a 16 MB disk) */
#define DISK_FULL_BYTES (1ull << 20)
#define DISK_FULL_MAX_SLACK (16ull << 20) /* ext4's own reserve, at most */

bool container_disk_is_full(unsigned long long used, unsigned long long total)
{
    if (total == 0 || used >= total)
        return total > 0;
    unsigned long long slack = total / 32 < DISK_FULL_MAX_SLACK ? total / 32 : DISK_FULL_MAX_SLACK;
    return total - used < (slack > DISK_FULL_BYTES ? slack : DISK_FULL_BYTES);
}
