/* gc: the store's garbage collection. A blob or an unpacked layer stays while a droplet's
 * record or a running instance names it; everything else goes, but only while no pull or
 * import holds the store (their blobs are named by nothing until their droplet is written). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "common/err.h"
#include "common/util.h"
#include "images/images.h"
#include "images/images_internal.h"

static char *gc__lock_path(const struct image_store *s)
{
    return xasprintf("%s/store.lock", s->root);
}

/* The lock file, taken as op says (LOCK_SH, LOCK_EX | LOCK_NB): its fd, or -errno. */
static int gc__lock(const struct image_store *s, int op)
{
    char *path = gc__lock_path(s);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    free(path);
    if (fd < 0)
        return -errno;
    int rc;
    while ((rc = flock(fd, op)) < 0 && errno == EINTR)
        ;
    if (rc < 0) {
        int saved = errno;
        close(fd);
        return -saved;
    }
    return fd;
}

int image_store_hold(const struct image_store *s)
{
    return gc__lock(s, LOCK_SH);
}

void image_store_release(int hold)
{
    if (hold >= 0)
        close(hold); /* the lock goes with the last descriptor */
}

void image_keep_add(struct image_keep *k, const char *digest)
{
    if (!image_digest_valid(digest))
        return;
    if (k->n == k->cap) {
        k->cap = k->cap ? k->cap * 2 : 16;
        k->digests = xrealloc(k->digests, k->cap * sizeof(char *));
    }
    k->digests[k->n++] = xstrdup(digest);
}

void image_keep_record(struct image_keep *k, const char *droplet_dir)
{
    char *record = xasprintf("%s/%s", droplet_dir, IMAGE_RECORD);
    char *json = NULL, err[256];
    struct image img;
    if (file_read(record, &json, NULL) == 0 && image_from_json(json, &img, err, sizeof err) == 0) {
        image_keep_add(k, img.digest);
        image_keep_add(k, img.manifest.config);
        for (size_t i = 0; i < img.manifest.n_layers; i++)
            image_keep_add(k, img.manifest.layers[i]);
        image_clear(&img);
    }
    free(json);
    free(record);
}

void image_keep_layers(struct image_keep *k, const char *lowerdir)
{
    for (const char *p = lowerdir; p && *p;) {
        size_t len = strcspn(p, ":");
        const char *hex = len >= 64 ? p + len - 64 : NULL;
        if (hex && len >= 71 && !strncmp(hex - 7, "sha256/", 7)) {
            char digest[IMAGE_DIGEST_LEN];
            snprintf(digest, sizeof digest, "sha256:%.64s", hex);
            image_keep_add(k, digest);
        }
        p += len + (p[len] == ':');
    }
}

void image_keep_clear(struct image_keep *k)
{
    for (size_t i = 0; i < k->n; i++)
        free(k->digests[i]);
    free(k->digests);
    memset(k, 0, sizeof(*k));
}

static bool gc__kept(const struct image_keep *k, const char *hex)
{
    for (size_t i = 0; i < k->n; i++)
        if (!strcmp(k->digests[i] + 7, hex))
            return true;
    return false;
}

/* Removes what folder (blobs/sha256 or layers/sha256) has that keep does not name. */
static size_t gc__sweep(const struct image_store *s, const char *folder,
                        const struct image_keep *keep)
{
    char *dir = xasprintf("%s/%s", s->root, folder);
    DIR *d = opendir(dir);
    size_t removed = 0;
    for (struct dirent *de; d && (de = readdir(d));) {
        if (de->d_name[0] == '.' || gc__kept(keep, de->d_name))
            continue;
        char *path = xasprintf("%s/%s", dir, de->d_name);
        if (rm_rf(path) == 0)
            removed++;
        free(path);
    }
    if (d)
        closedir(d);
    free(dir);
    return removed;
}

int image_store_gc(const struct image_store *s, const struct image_keep *keep,
                   struct image_gc_result *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    int lock = gc__lock(s, LOCK_EX | LOCK_NB);
    if (lock == -EWOULDBLOCK)
        return image__fail(err, errlen, SKIFF_E_BUSY,
                           "a pull or an import holds the image store: collected after it");
    if (lock < 0)
        return image__fail(err, errlen, skiff_err_disk(lock), "cannot lock the image store: %s",
                           skiff_strerror(lock));
    out->layers = gc__sweep(s, "layers/sha256", keep);
    out->blobs = gc__sweep(s, "blobs/sha256", keep);
    /* nobody writes under tmp/ without holding the store: what is there was left by a pull
     * that was killed (its names are no digests: nothing there is kept) */
    gc__sweep(s, "tmp", keep);
    image_store_release(lock);
    return SKIFF_OK;
}
