/* The disk server: ext4 disks already attached to a loop device and mounted, handed to
 * starting containers as detached mounts (fsmount) over a unix socket.
 *
 * Why: attaching a loop device and mounting ext4 is the largest part of making a container
 * (about 1 ms, several under load), and it cannot be done ahead in the host's mount
 * namespace without leaving mounts and loop devices behind whenever the daemon dies. A
 * detached mount lives exactly as long as a file descriptor to it: while the daemon holds it,
 * it is ready; sent to skiff-init, it is moved into the keeper's private namespace and goes
 * with the container; if the daemon dies first, its descriptors close and the kernel
 * unmounts the disk and frees the loop device. Nothing is ever mounted on the host.
 *
 * Protocol, one request a connection at POOL_DIR/mounted.sock (the folder is root's, 0700;
 * peers other than root are refused too): the client sends the size in MB as a uint32, the
 * server answers one byte, '1' with the mount's descriptor (SCM_RIGHTS) or '0' when it has
 * none of that size ready; the client then makes its own disk as before. A size asked for is
 * kept ready from then on (the few most recent sizes).
 *
 * Two threads: one answers (never waits for a disk to be made), one makes disks (mkfs ~10 ms,
 * loop and mount ~1 ms) until each wanted size has DISK_SERVER_KEEP ready. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/util.h"
#include "container/container.h"
#include "container/container_internal.h"

#define DISK_SERVER_KEEP 2  /* ready disks of each wanted size */
#define DISK_SERVER_SIZES 4 /* wanted sizes remembered */
#define DISK_SERVER_SOCKET "mounted.sock"
#define DISK_CLIENT_TIMEOUT_MS 100 /* a busy or stuck daemon: make the disk ourselves */
#define DISK_SERVER_RETRY_S 1      /* after a failure to make a disk */

struct disk_server__size {
    int size_mb;        /* 0: unused entry */
    unsigned long used; /* when it was last asked for (a counter) */
    int fds[DISK_SERVER_KEEP];
    int n;
};

struct container_disk_server {
    char *pool_dir;
    char *sock_path;
    int listen_fd;
    int wake[2]; /* written at stop: the answering thread leaves its poll */
    pthread_t answer_thread, fill_thread;
    pthread_mutex_t lock; /* guards everything below */
    pthread_cond_t fill_cond;
    bool stopping;
    unsigned long clock;
    struct disk_server__size sizes[DISK_SERVER_SIZES];
};

/* ---- the server's state (under lock) ------------------------------------------------------ */

static struct disk_server__size *disk_server__find(struct container_disk_server *s, int size_mb)
{
    for (int i = 0; i < DISK_SERVER_SIZES; i++)
        if (s->sizes[i].size_mb == size_mb)
            return &s->sizes[i];
    return NULL;
}

/* The entry of size_mb, made (in place of the least recently asked for) when absent. */
static struct disk_server__size *disk_server__size(struct container_disk_server *s, int size_mb)
{
    struct disk_server__size *oldest = disk_server__find(s, size_mb);
    if (oldest)
        return oldest;
    oldest = &s->sizes[0];
    for (int i = 1; i < DISK_SERVER_SIZES; i++)
        if (s->sizes[i].used < oldest->used)
            oldest = &s->sizes[i];
    for (int i = 0; i < oldest->n; i++)
        close(oldest->fds[i]);
    *oldest = (struct disk_server__size){.size_mb = size_mb};
    return oldest;
}

/* A size that wants one more disk, or NULL. */
static struct disk_server__size *disk_server__short(struct container_disk_server *s)
{
    for (int i = 0; i < DISK_SERVER_SIZES; i++)
        if (s->sizes[i].size_mb > 0 && s->sizes[i].n < DISK_SERVER_KEEP)
            return &s->sizes[i];
    return NULL;
}

/* Takes a ready disk of size_mb (the caller owns the fd), or -1; remembers the size. */
static int disk_server__take(struct container_disk_server *s, int size_mb)
{
    pthread_mutex_lock(&s->lock);
    struct disk_server__size *z = disk_server__size(s, size_mb);
    z->used = ++s->clock;
    int fd = z->n > 0 ? z->fds[--z->n] : -1;
    pthread_cond_signal(&s->fill_cond);
    pthread_mutex_unlock(&s->lock);
    return fd;
}

/* ---- making disks ------------------------------------------------------------------------ */

int container__disk_make_detached(const char *pool_dir, int size_mb, char *err, size_t errlen)
{
    char id[17];
    random_hex(id, 8);
    char *image = xasprintf("%s/mounting-%s.img", pool_dir, id);
    int rc = container_disk_take(pool_dir, size_mb, image, err, errlen);
    if (rc == 0)
        rc = container__disk_mount_detached(image, err, errlen);
    unlink(image); /* the loop device keeps the file until the mount goes */
    free(image);
    return rc;
}

static void *disk_server__fill(void *arg)
{
    struct container_disk_server *s = arg;
    pthread_mutex_lock(&s->lock);
    while (!s->stopping) {
        struct disk_server__size *z = disk_server__short(s);
        if (!z) {
            pthread_cond_wait(&s->fill_cond, &s->lock);
            continue;
        }
        int size_mb = z->size_mb;
        pthread_mutex_unlock(&s->lock);
        char err[256] = "";
        int fd = container__disk_make_detached(s->pool_dir, size_mb, err, sizeof err);
        pthread_mutex_lock(&s->lock);
        z = disk_server__find(s, size_mb); /* may have been given to another size meanwhile */
        if (fd >= 0 && !s->stopping && z && z->n < DISK_SERVER_KEEP) {
            z->fds[z->n++] = fd;
        } else if (fd >= 0) {
            close(fd);
        } else {
            /* no loop devices, a full disk...: starts make their own meanwhile */
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += DISK_SERVER_RETRY_S;
            pthread_cond_timedwait(&s->fill_cond, &s->lock, &until);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* ---- answering ----------------------------------------------------------------------------- */

static void disk_server__send(int conn, int fd)
{
    char yes = fd >= 0 ? '1' : '0';
    struct iovec iov = {.iov_base = &yes, .iov_len = 1};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        msg.msg_control = ctl.buf;
        msg.msg_controllen = sizeof ctl.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    /* a client gone meanwhile loses its disk: closing our fd below unmounts it */
    (void)!sendmsg(conn, &msg, MSG_NOSIGNAL);
}

static void disk_server__answer_one(struct container_disk_server *s, int conn)
{
    struct ucred peer;
    socklen_t len = sizeof peer;
    uint32_t size_mb = 0;
    struct timeval tv = {.tv_usec = DISK_CLIENT_TIMEOUT_MS * 1000};
    setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &peer, &len) < 0 || peer.uid != 0 ||
        recv(conn, &size_mb, sizeof size_mb, MSG_WAITALL) != sizeof size_mb || size_mb == 0 ||
        size_mb > INT32_MAX)
        return;
    int fd = disk_server__take(s, (int)size_mb);
    disk_server__send(conn, fd);
    if (fd >= 0)
        close(fd);
}

static void *disk_server__answer(void *arg)
{
    struct container_disk_server *s = arg;
    for (;;) {
        struct pollfd p[2] = {{.fd = s->listen_fd, .events = POLLIN},
                              {.fd = s->wake[0], .events = POLLIN}};
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            break;
        if (p[1].revents)
            break;
        if (!(p[0].revents & POLLIN))
            continue;
        int conn = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (conn < 0)
            continue;
        disk_server__answer_one(s, conn);
        close(conn);
    }
    return NULL;
}

/* ---- the contract ------------------------------------------------------------------------ */

/* Images a server before us was mounting when it died: never mounted by anyone now. */
static void disk_server__remove_stale(const char *pool_dir)
{
    DIR *d = opendir(pool_dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!str_has_prefix(e->d_name, "mounting-"))
            continue;
        char *path = xasprintf("%s/%s", pool_dir, e->d_name);
        unlink(path);
        free(path);
    }
    if (d)
        closedir(d);
}

static int disk_server__listen(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "socket path too long: %s", path);
        return -ENAMETOOLONG;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "cannot make a socket: %s", skiff_strerror(-errno));
        return -errno;
    }
    unlink(path); /* a server before us died: its socket answers no one */
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 64) < 0) {
        int rc = -errno;
        snprintf(err, errlen, "cannot listen on %s: %s", path, skiff_strerror(-errno));
        close(fd);
        return rc;
    }
    return fd;
}

int container_disk_server_start(const char *pool_dir, int size_mb,
                                struct container_disk_server **out, char *err, size_t errlen)
{
    *out = NULL;
    int rc = mkdir_p(pool_dir, 0700);
    if (rc < 0) {
        snprintf(err, errlen, "cannot create %s: %s", pool_dir, skiff_strerror(rc));
        return rc;
    }
    disk_server__remove_stale(pool_dir);
    struct container_disk_server *s = xcalloc(1, sizeof *s);
    s->pool_dir = xstrdup(pool_dir);
    s->sock_path = xasprintf("%s/%s", pool_dir, DISK_SERVER_SOCKET);
    s->wake[0] = s->wake[1] = -1;
    s->listen_fd = disk_server__listen(s->sock_path, err, errlen);
    if (s->listen_fd < 0) {
        rc = s->listen_fd;
        goto fail;
    }
    if (pipe2(s->wake, O_CLOEXEC) < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot make a pipe: %s", skiff_strerror(-errno));
        goto fail;
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->fill_cond, NULL);
    if (size_mb > 0)
        disk_server__size(s, size_mb)->used = ++s->clock;
    if ((rc = -pthread_create(&s->fill_thread, NULL, disk_server__fill, s)) < 0) {
        snprintf(err, errlen, "cannot start a thread: %s", skiff_strerror(rc));
        goto fail_sync;
    }
    if ((rc = -pthread_create(&s->answer_thread, NULL, disk_server__answer, s)) < 0) {
        snprintf(err, errlen, "cannot start a thread: %s", skiff_strerror(rc));
        pthread_mutex_lock(&s->lock);
        s->stopping = true;
        pthread_cond_signal(&s->fill_cond);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->fill_thread, NULL);
        goto fail_sync;
    }
    *out = s;
    return 0;
fail_sync:
    pthread_cond_destroy(&s->fill_cond);
    pthread_mutex_destroy(&s->lock);
fail:
    if (s->listen_fd >= 0) {
        close(s->listen_fd);
        unlink(s->sock_path);
    }
    if (s->wake[0] >= 0) {
        close(s->wake[0]);
        close(s->wake[1]);
    }
    free(s->sock_path);
    free(s->pool_dir);
    free(s);
    return rc;
}

void container_disk_server_stop(struct container_disk_server *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_signal(&s->fill_cond);
    pthread_mutex_unlock(&s->lock);
    (void)!write(s->wake[1], "x", 1);
    pthread_join(s->answer_thread, NULL);
    pthread_join(s->fill_thread, NULL);
    for (int i = 0; i < DISK_SERVER_SIZES; i++)
        for (int k = 0; k < s->sizes[i].n; k++)
            close(s->sizes[i].fds[k]); /* unmounted; the loop devices free themselves */
    close(s->listen_fd);
    unlink(s->sock_path);
    close(s->wake[0]);
    close(s->wake[1]);
    pthread_cond_destroy(&s->fill_cond);
    pthread_mutex_destroy(&s->lock);
    free(s->sock_path);
    free(s->pool_dir);
    free(s);
}

int container_disk_server_ready(struct container_disk_server *s, int size_mb)
{
    pthread_mutex_lock(&s->lock);
    struct disk_server__size *z = disk_server__find(s, size_mb);
    int n = z ? z->n : 0;
    pthread_mutex_unlock(&s->lock);
    return n;
}

/* ---- the client (skiff-init) ------------------------------------------------------------ */

static int disk_client__recv_fd(int sock)
{
    char yes = 0;
    struct iovec iov = {.iov_base = &yes, .iov_len = 1};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    struct msghdr msg = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
    ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    if (n != 1)
        return n < 0 ? -errno : -EIO;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (yes != '1' || !c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS ||
        c->cmsg_len != CMSG_LEN(sizeof(int)))
        return -ENOENT;
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

int container__disk_receive(const char *pool_dir, int size_mb)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (!pool_dir || size_mb <= 0 ||
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s/%s", pool_dir, DISK_SERVER_SOCKET) >=
            (int)sizeof sa.sun_path)
        return -ENOENT;
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return -errno;
    struct timeval tv = {.tv_usec = DISK_CLIENT_TIMEOUT_MS * 1000};
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    uint32_t size = (uint32_t)size_mb;
    int rc;
    if (connect(sock, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        send(sock, &size, sizeof size, MSG_NOSIGNAL) != sizeof size)
        rc = -errno;
    else
        rc = disk_client__recv_fd(sock);
    close(sock);
    return rc;
}

int container_disk_open(const char *pool_dir, int size_mb, char *err, size_t errlen)
{
    if (!pool_dir || size_mb <= 0) {
        snprintf(err, errlen, "no disk pool or no size for the disk");
        return -EINVAL;
    }
    int fd = container__disk_receive(pool_dir, size_mb);
    if (fd >= 0)
        return fd;
    int rc = mkdir_p(pool_dir, 0700);
    if (rc < 0) {
        snprintf(err, errlen, "cannot create %s: %s", pool_dir, skiff_strerror(rc));
        return rc;
    }
    return container__disk_make_detached(pool_dir, size_mb, err, errlen);
}
