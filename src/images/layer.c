/* layer: unpacks a layer blob into overlayfs's format, refusing hostile layers.
 *
 * Nothing here goes through libarchive's disk writer: every entry is written relative to a
 * folder opened component by component with O_NOFOLLOW, so no path of the layer can lead
 * outside it, whatever symbolic links earlier entries made. The layer is unpacked under the
 * store's tmp/ and renamed into layers/ only when all of it was accepted. */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "common/err.h"
#include "common/util.h"
#include "images/images.h"
#include "images/images_internal.h"

#define LAYER_BLOCK 65536
#define LAYER_MAX_ENTRIES 1000000
#define LAYER_WHITEOUT ".wh."
#define LAYER_OPAQUE ".wh..wh..opq"
/* the owner of what a layer names as over 65535: the container's "nobody" */
#define LAYER_NOBODY 65534

/* Files written and not yet known to be on disk, synced together (layer__sync). */
#define LAYER_SYNC_BATCH 32

struct layer {
    const struct image_store *s;
    const char *digest;
    int root; /* the layer's folder */
    uint64_t bytes, entries;
    int unsynced[LAYER_SYNC_BATCH]; /* open regular files whose writeback was started */
    size_t n_unsynced;
    char *err;
    size_t errlen;
};

/* Waits until the data of the files written so far is on disk (their writeback was started
 * as each was written, so this mostly waits for what is under way), and closes them. */
static int layer__sync(struct layer *l)
{
    int rc = SKIFF_OK;
    for (size_t i = 0; i < l->n_unsynced; i++) {
        if (rc == SKIFF_OK && fdatasync(l->unsynced[i]) != 0)
            rc = image__fail(l->err, l->errlen, skiff_err_disk(-errno),
                             "layer %s: cannot write it to disk: %s", l->digest,
                             skiff_strerror(-errno));
        close(l->unsynced[i]);
    }
    l->n_unsynced = 0;
    return rc;
}

/* A regular file written: its writeback starts now, beside the rest of the pull; it is
 * synced with the next batch (kept open until then). */
static int layer__written(struct layer *l, int fd)
{
    sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
    l->unsynced[l->n_unsynced++] = fd;
    return l->n_unsynced == LAYER_SYNC_BATCH ? layer__sync(l) : SKIFF_OK;
}

/* Closes what is still open without waiting for it: the layer is refused. */
static void layer__drop_unsynced(struct layer *l)
{
    for (size_t i = 0; i < l->n_unsynced; i++)
        close(l->unsynced[i]);
    l->n_unsynced = 0;
}

/* Normalises an entry's name in place: leading "./" and "/" dropped only when the name is
 * relative ("./a"), "//" and "/./" collapsed, a trailing "/" dropped. NULL when the name is
 * absolute or has a ".." component: such an entry is refused, not repaired. */
static char *layer__clean(char *name)
{
    if (name[0] == '/')
        return NULL;
    char *out = name, *w = name;
    const char *p = name;
    while (*p) {
        const char *end = strchr(p, '/');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return NULL;
        if (n > 0 && !(n == 1 && p[0] == '.')) {
            if (w != out)
                *w++ = '/';
            memmove(w, p, n);
            w += n;
        }
        p += n;
        while (*p == '/')
            p++;
    }
    *w = '\0';
    return out;
}

/* The host uid (or gid) a layer's owner id becomes: the container's id, shifted. */
static unsigned layer__host_id(const struct layer *l, la_int64_t id)
{
    if (id < 0 || id > 65535)
        id = LAYER_NOBODY;
    return l->s->uid_base + (unsigned)id;
}

/* Opens the folder `dir` (a clean relative path, "" for the root) under the layer into *out,
 * making what is missing (0755, the container's root). A component that is a symbolic link,
 * or not a folder, is refused: nothing of a layer is ever written through a link. */
static int layer__open_dir(struct layer *l, const char *dir, const char *entry, int *out)
{
    *out = -1;
    int fd = dup(l->root);
    if (fd < 0)
        goto sys;
    char *copy = xstrdup(dir), *save = NULL;
    for (char *c = strtok_r(copy, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
        int next = openat(fd, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (next < 0 && errno == ENOENT) {
            if (mkdirat(fd, c, 0755) != 0 ||
                fchownat(fd, c, l->s->uid_base, l->s->uid_base, AT_SYMLINK_NOFOLLOW) != 0) {
                free(copy);
                close(fd);
                goto sys;
            }
            next = openat(fd, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        }
        if (next < 0) {
            int e = errno;
            close(fd);
            if (e == ELOOP || e == ENOTDIR) {
                image__fail(l->err, l->errlen, SKIFF_E_UNSAFE_ARCHIVE,
                            "layer %s: entry '%.200s' would be written through '%.200s', "
                            "which is a symbolic link or not a folder: the layer is refused",
                            l->digest, entry, c);
                free(copy);
                return SKIFF_E_UNSAFE_ARCHIVE;
            }
            free(copy);
            errno = e;
            goto sys;
        }
        close(fd);
        fd = next;
    }
    free(copy);
    *out = fd;
    return SKIFF_OK;
sys:
    return image__fail(l->err, l->errlen, skiff_err_disk(-errno),
                       "layer %s: cannot unpack '%.200s': %s", l->digest, entry,
                       skiff_strerror(-errno));
}

/* Splits a clean path into its folder (written over name's copy) and its last component. */
static const char *layer__split(char *path)
{
    char *slash = strrchr(path, '/');
    if (!slash)
        return NULL;
    *slash = '\0';
    return slash + 1;
}

/* Makes way for a new entry: whatever the lower entry of this same layer was, unless it is
 * a folder and a folder comes. */
static void layer__make_way(int dir, const char *name, bool keep_dir)
{
    struct stat st;
    if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return;
    if (S_ISDIR(st.st_mode)) {
        if (!keep_dir)
            unlinkat(dir, name, AT_REMOVEDIR); /* fails when not empty: the create says so */
        return;
    }
    unlinkat(dir, name, 0);
}

static int layer__write_data(struct layer *l, struct archive *a, int fd, const char *entry)
{
    const void *block;
    size_t size;
    la_int64_t offset;
    for (;;) {
        int r = archive_read_data_block(a, &block, &size, &offset);
        if (r == ARCHIVE_EOF)
            break;
        if (r < ARCHIVE_WARN)
            return image__fail(l->err, l->errlen, SKIFF_E_BAD_IMAGE,
                               "layer %s is damaged at entry '%.200s': %s", l->digest, entry,
                               archive_error_string(a));
        if (size > image__max_layer(l->s) - l->bytes)
            return image__fail(l->err, l->errlen, SKIFF_E_TOO_LARGE,
                               "layer %s unpacks to more than the limit of %llu MB", l->digest,
                               (unsigned long long)(image__max_layer(l->s) >> 20));
        l->bytes += size;
        const char *p = block;
        while (size) {
            ssize_t n = pwrite(fd, p, size, offset);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                return image__fail(l->err, l->errlen, skiff_err_disk(-errno),
                                   "layer %s: cannot write '%.200s': %s", l->digest, entry,
                                   skiff_strerror(-errno));
            p += n;
            size -= (size_t)n;
            offset += n;
        }
    }
    /* a sparse file's hole at its end */
    return SKIFF_OK;
}

static int layer__sys(struct layer *l, const char *what, const char *entry)
{
    return image__fail(l->err, l->errlen, skiff_err_disk(-errno),
                       "layer %s: cannot %s '%.200s': %s", l->digest, what, entry,
                       skiff_strerror(-errno));
}

/* One entry, written under the folder fd dir as name. */
static int layer__entry(struct layer *l, struct archive *a, struct archive_entry *e, int dir,
                        const char *name, const char *entry)
{
    mode_t type = archive_entry_filetype(e);
    mode_t perm = archive_entry_perm(e) & (0777 | S_ISVTX); /* never setuid or setgid */
    unsigned uid = layer__host_id(l, archive_entry_uid(e));
    unsigned gid = layer__host_id(l, archive_entry_gid(e));

    if (strcmp(name, LAYER_OPAQUE) == 0) {
        /* the folder hides everything lower layers have in it */
        if (fsetxattr(dir, "trusted.overlay.opaque", "y", 1, 0) != 0)
            return layer__sys(l, "mark opaque", entry);
        return SKIFF_OK;
    }
    if (str_has_prefix(name, LAYER_WHITEOUT)) {
        const char *gone = name + strlen(LAYER_WHITEOUT);
        if (!gone[0] || strcmp(gone, ".") == 0 || strcmp(gone, "..") == 0)
            return image__fail(l->err, l->errlen, SKIFF_E_UNSAFE_ARCHIVE,
                               "layer %s: whiteout '%.200s' names nothing: the layer is refused",
                               l->digest, entry);
        layer__make_way(dir, gone, false);
        if (mknodat(dir, gone, S_IFCHR | 0000, makedev(0, 0)) != 0 && errno != EEXIST)
            return layer__sys(l, "write the whiteout", entry);
        return SKIFF_OK;
    }

    switch (type) {
    case AE_IFDIR:
        layer__make_way(dir, name, true);
        if (mkdirat(dir, name, perm) != 0 && errno != EEXIST)
            return layer__sys(l, "make the folder", entry);
        break;
    case AE_IFREG: {
        layer__make_way(dir, name, false);
        int fd = openat(dir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0)
            return layer__sys(l, "write", entry);
        int rc = layer__write_data(l, a, fd, entry);
        if (rc == SKIFF_OK && archive_entry_size_is_set(e) &&
            ftruncate(fd, archive_entry_size(e)) != 0)
            rc = layer__sys(l, "write", entry);
        if (rc != SKIFF_OK) {
            close(fd);
            return rc;
        }
        if ((rc = layer__written(l, fd)) != SKIFF_OK)
            return rc;
        break;
    }
    case AE_IFLNK: {
        const char *target = archive_entry_symlink(e);
        if (!target || !target[0])
            return image__fail(l->err, l->errlen, SKIFF_E_BAD_IMAGE,
                               "layer %s: symbolic link '%.200s' has no target", l->digest, entry);
        layer__make_way(dir, name, false);
        /* any target is fine: it is resolved in the container's root, and nothing is ever
         * written through a link here (layer__open_dir) */
        if (symlinkat(target, dir, name) != 0)
            return layer__sys(l, "make the link", entry);
        if (fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW) != 0)
            return layer__sys(l, "own", entry);
        return SKIFF_OK;
    }
    case AE_IFIFO:
        layer__make_way(dir, name, false);
        if (mkfifoat(dir, name, perm) != 0)
            return layer__sys(l, "make the fifo", entry);
        break;
    case AE_IFCHR:
    case AE_IFBLK:
        return image__fail(l->err, l->errlen, SKIFF_E_UNSAFE_ARCHIVE,
                           "layer %s: entry '%.200s' is a device node: images may not bring "
                           "devices (the container has its own /dev): the layer is refused",
                           l->digest, entry);
    default:
        return SKIFF_OK; /* sockets: made by programs, not shipped */
    }
    /* owner first: chown clears setuid bits, and chmod sets the mode without them */
    if (fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW) != 0 ||
        fchmodat(dir, name, perm, 0) != 0)
        return layer__sys(l, "own", entry);
    struct timespec times[2] = {{.tv_sec = archive_entry_mtime(e), .tv_nsec = 0},
                                {.tv_sec = archive_entry_mtime(e), .tv_nsec = 0}};
    utimensat(dir, name, times, AT_SYMLINK_NOFOLLOW);
    return SKIFF_OK;
}

static int layer__hardlink(struct layer *l, int dir, const char *name, const char *entry,
                           const char *raw_target)
{
    char *target = xstrdup(raw_target);
    char *clean = layer__clean(target);
    int rc = SKIFF_OK, tdir = -1;
    if (!clean || !clean[0]) {
        rc = image__fail(l->err, l->errlen, SKIFF_E_UNSAFE_ARCHIVE,
                         "layer %s: hard link '%.200s' points to '%.200s', outside the layer: "
                         "the layer is refused",
                         l->digest, entry, raw_target);
        goto done;
    }
    const char *tname = layer__split(clean);
    if ((rc = layer__open_dir(l, tname ? clean : "", entry, &tdir)) != SKIFF_OK)
        goto done;
    if (!tname)
        tname = clean;
    layer__make_way(dir, name, false);
    /* without AT_SYMLINK_FOLLOW: a link to a symbolic link is a second name for the link */
    if (linkat(tdir, tname, dir, name, 0) != 0) {
        rc = errno == ENOENT ? image__fail(l->err, l->errlen, SKIFF_E_UNSAFE_ARCHIVE,
                                           "layer %s: hard link '%.200s' points to '%.200s', "
                                           "which is not in the layer: the layer is refused",
                                           l->digest, entry, raw_target)
                             : layer__sys(l, "make the hard link", entry);
    }
done:
    if (tdir >= 0)
        close(tdir);
    free(target);
    return rc;
}

/* A reader of layer blobs: tar, compressed any way libarchive knows. */
static struct archive *layer__archive_new(void)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_all(a);
    archive_read_support_format_tar(a);
    archive_read_support_format_gnutar(a);
    return a;
}

/* Every entry of the opened archive a, written under l->root. */
static int layer__walk(struct layer *l, struct archive *a)
{
    int rc = SKIFF_OK;
    for (;;) {
        struct archive_entry *e;
        int r = archive_read_next_header(a, &e);
        if (r == ARCHIVE_EOF)
            break;
        if (r < ARCHIVE_WARN)
            return image__fail(l->err, l->errlen, SKIFF_E_BAD_IMAGE,
                               "layer %s is not a tar archive or is damaged after %llu entries "
                               "(%s)",
                               l->digest, (unsigned long long)l->entries, archive_error_string(a));
        if (++l->entries > LAYER_MAX_ENTRIES)
            return image__fail(l->err, l->errlen, SKIFF_E_TOO_LARGE,
                               "layer %s has more than %d entries", l->digest, LAYER_MAX_ENTRIES);
        const char *raw = archive_entry_pathname(e);
        if (!raw)
            return image__fail(l->err, l->errlen, SKIFF_E_BAD_IMAGE,
                               "layer %s: an entry has no readable name", l->digest);
        char *path = xstrdup(raw);
        char *clean = layer__clean(path);
        if (!clean) {
            rc = image__fail(l->err, l->errlen, SKIFF_E_UNSAFE_ARCHIVE,
                             "layer %s: entry '%.200s' is %s: the layer is refused", l->digest, raw,
                             raw[0] == '/' ? "an absolute path" : "outside the layer ('..')");
            free(path);
            return rc;
        }
        if (!clean[0]) { /* the root itself: it is the container's root's */
            free(path);
            continue;
        }
        char *shown = xstrdup(clean);
        const char *name = layer__split(clean);
        int dir;
        rc = layer__open_dir(l, name ? clean : "", shown, &dir);
        if (rc == SKIFF_OK) {
            if (!name)
                name = clean;
            const char *hard = archive_entry_hardlink(e);
            rc = hard ? layer__hardlink(l, dir, name, shown, hard)
                      : layer__entry(l, a, e, dir, name, shown);
            close(dir);
        }
        free(shown);
        free(path);
        if (rc != SKIFF_OK)
            return rc;
    }
    return rc;
}

/* Every entry of a, then all of it on disk: the files' data, then (one fsync of the folder:
 * a journal's commit) what names them. Nothing of a refused layer is waited for. */
static int layer__unpack(struct layer *l, struct archive *a)
{
    int rc = layer__walk(l, a);
    if (rc == SKIFF_OK)
        rc = layer__sync(l);
    layer__drop_unsynced(l);
    if (rc == SKIFF_OK && fsync(l->root) != 0)
        rc =
            image__fail(l->err, l->errlen, skiff_err_disk(-errno),
                        "layer %s: cannot write it to disk: %s", l->digest, skiff_strerror(-errno));
    return rc;
}

/* The folder a layer is unpacked in under tmp/ (*tmp, caller frees and removes), opened as
 * l->root. */
static int layer__begin(const struct image_store *s, const char *digest, struct layer *l,
                        char **tmp, char *err, size_t errlen)
{
    *l = (struct layer){.s = s, .digest = digest, .root = -1, .err = err, .errlen = errlen};
    *tmp = image__tmp_path(s, "layer");
    if (mkdir(*tmp, 0755) != 0 || chown(*tmp, s->uid_base, s->uid_base) != 0 ||
        (l->root = open(*tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
        return image__fail(err, errlen, skiff_err_disk(-errno), "cannot unpack layer %s: %s",
                           digest, skiff_strerror(-errno));
    if (err && errlen)
        err[0] = '\0';
    return SKIFF_OK;
}

int image_layer_unpack(const struct image_store *s, const char *digest, char *err, size_t errlen)
{
    char *blob = image_store_blob_path(s, digest);
    char *final = image_store_layer_path(s, digest);
    char *tmp = NULL;
    struct layer l = {.root = -1};
    int rc = SKIFF_OK;
    if (!blob) {
        rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE, "'%.80s' is not a sha256 digest", digest);
        goto done;
    }
    if (access(final, F_OK) == 0)
        goto done; /* unpacked once, for every image that has it */
    if ((rc = layer__begin(s, digest, &l, &tmp, err, errlen)) != SKIFF_OK)
        goto done;
    struct archive *a = layer__archive_new();
    if (archive_read_open_filename(a, blob, LAYER_BLOCK) != ARCHIVE_OK)
        rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE, "layer %s is not a tar archive (%s)",
                         digest, archive_error_string(a));
    else
        rc = layer__unpack(&l, a);
    archive_read_free(a);
    if (rc == SKIFF_OK && rename(tmp, final) != 0 && access(final, F_OK) != 0)
        rc = image__fail(err, errlen, skiff_err_disk(-errno), "cannot unpack layer %s: %s", digest,
                         skiff_strerror(-errno));
done:
    if (l.root >= 0)
        close(l.root);
    if (tmp)
        rm_rf(tmp); /* gone after the rename; what a refused layer left otherwise */
    free(tmp);
    free(blob);
    free(final);
    return rc;
}

/* ---- unpacking while the blob streams in ------------------------------------------------ */

/* The socket buffer between the download and the unpacking: a few of curl's writes. */
#define LAYER_STREAM_BUFFER (1 << 20)

struct image_layer_stream {
    struct layer l;
    char digest[IMAGE_DIGEST_LEN];
    char *tmp;
    int in, out; /* the unpacking reads in; the download writes out (-1: stopped) */
    pthread_t thread;
    int rc;
    char err[512];
};

static void *layer__stream_work(void *arg)
{
    struct image_layer_stream *ls = arg;
    struct archive *a = layer__archive_new();
    if (archive_read_open_fd(a, ls->in, LAYER_BLOCK) != ARCHIVE_OK)
        ls->rc =
            image__fail(ls->err, sizeof ls->err, SKIFF_E_BAD_IMAGE,
                        "layer %s is not a tar archive (%s)", ls->digest, archive_error_string(a));
    else
        ls->rc = layer__unpack(&ls->l, a);
    archive_read_free(a);
    /* the rest of the blob (after the tar's end, or after a refusal) is only hashed: the
     * download's next send fails and it stops feeding */
    close(ls->in);
    ls->in = -1;
    return NULL;
}

static void layer__stream_free(struct image_layer_stream *ls)
{
    if (ls->l.root >= 0)
        close(ls->l.root);
    if (ls->in >= 0)
        close(ls->in);
    if (ls->out >= 0)
        close(ls->out);
    if (ls->tmp)
        rm_rf(ls->tmp);
    free(ls->tmp);
    free(ls);
}

int image__layer_stream_begin(const struct image_store *s, const char *digest,
                              struct image_layer_stream **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!image_digest_valid(digest))
        return image__fail(err, errlen, SKIFF_E_BAD_IMAGE, "'%.80s' is not a sha256 digest",
                           digest);
    struct image_layer_stream *ls = xcalloc(1, sizeof *ls);
    ls->in = ls->out = -1;
    snprintf(ls->digest, sizeof ls->digest, "%s", digest);
    int rc = layer__begin(s, ls->digest, &ls->l, &ls->tmp, ls->err, sizeof ls->err);
    int fds[2];
    if (rc == SKIFF_OK && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
        rc = image__fail(ls->err, sizeof ls->err, skiff_err_disk(-errno),
                         "cannot unpack layer %s: %s", digest, skiff_strerror(-errno));
    if (rc == SKIFF_OK) {
        ls->in = fds[0];
        ls->out = fds[1];
        int size = LAYER_STREAM_BUFFER;
        setsockopt(ls->out, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
        setsockopt(ls->in, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
        int e = pthread_create(&ls->thread, NULL, layer__stream_work, ls);
        if (e != 0)
            rc = image__fail(ls->err, sizeof ls->err, skiff_err_disk(-e),
                             "cannot unpack layer %s: %s", digest, skiff_strerror(-e));
    }
    if (rc != SKIFF_OK) {
        image__fail(err, errlen, rc, "%s", ls->err);
        layer__stream_free(ls);
        return rc;
    }
    *out = ls;
    return SKIFF_OK;
}

void image__layer_stream_write(struct image_layer_stream *ls, const void *data, size_t len)
{
    const char *p = data;
    while (len && ls->out >= 0) {
        ssize_t n = send(ls->out, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) { /* the unpacking stopped: what it said is end's */
            close(ls->out);
            ls->out = -1;
            return;
        }
        p += n;
        len -= (size_t)n;
    }
}

int image__layer_stream_end(struct image_layer_stream *ls, bool verified, struct image_pending *p,
                            char *err, size_t errlen)
{
    if (ls->out >= 0)
        close(ls->out); /* the end of the blob: the unpacking reads to it */
    ls->out = -1;
    pthread_join(ls->thread, NULL);
    int rc = verified ? ls->rc : SKIFF_OK;
    if (rc != SKIFF_OK)
        image__fail(err, errlen, rc, "%s", ls->err);
    if (verified && rc == SKIFF_OK) {
        char *final = image_store_layer_path(ls->l.s, ls->digest);
        image__pending_add(p, ls->tmp, final);
        ls->tmp = NULL;
    }
    layer__stream_free(ls);
    return rc;
}
