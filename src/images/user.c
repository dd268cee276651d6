/* user: an image config's User, resolved to ids through the image's own /etc/passwd and
 * /etc/group, read from its unpacked layers as the overlay would show them. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "common/err.h"
#include "common/util.h"
#include "images/images.h"
#include "images/images_internal.h"

/* The most of /etc/passwd or /etc/group read: far above any real one. */
#define IMAGE_MAX_ACCOUNTS (1u << 20)
/* The ids a container's user namespace maps. */
#define IMAGE_MAX_ID 65535ul

enum user__found { USER_ABSENT, USER_HIDDEN, USER_FILE };

/* name in the folder dirfd of one layer, never through a link: USER_FILE with *fd open on a
 * regular file (or a folder when want_dir), USER_HIDDEN for an overlay whiteout (the layers
 * below do not count), USER_ABSENT when this layer does not have it; <0 for a link or
 * anything else, which is refused (a link could lead a read of the platform's out of the
 * image). */
static int user__open(int dirfd, const char *name, bool want_dir, int *fd, const char *shown,
                      char *err, size_t errlen)
{
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return errno == ENOENT
                   ? USER_ABSENT
                   : -image__fail(err, errlen, SKIFF_E_INTERNAL, "cannot read the image's %s: %s",
                                  shown, skiff_strerror(-errno));
    if (S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0))
        return USER_HIDDEN;
    if (S_ISLNK(st.st_mode) || (want_dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode)))
        return -image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                            "the image's %s is %s: Skiff reads users only from a plain "
                            "/etc/passwd and /etc/group; give User as UID[:GID]",
                            shown,
                            S_ISLNK(st.st_mode) ? "a symbolic link"
                            : want_dir          ? "not a folder"
                                                : "not a plain file");
    *fd = openat(dirfd, name,
                 O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | (want_dir ? O_DIRECTORY : 0));
    if (*fd < 0)
        return -image__fail(err, errlen, SKIFF_E_INTERNAL, "cannot open the image's %s: %s", shown,
                            skiff_strerror(-errno));
    return USER_FILE;
}

static bool user__opaque(int dirfd)
{
    char v[2] = "";
    return fgetxattr(dirfd, "trusted.overlay.opaque", v, sizeof v) == 1 && v[0] == 'y';
}

/* The whole of fd, at most IMAGE_MAX_ACCOUNTS bytes. */
static int user__read(int fd, const char *shown, char **out, char *err, size_t errlen)
{
    size_t len = 0, cap = 4096;
    char *text = xmalloc(cap + 1);
    for (;;) {
        if (len == cap) {
            if (cap >= IMAGE_MAX_ACCOUNTS) {
                free(text);
                return image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                                   "the image's %s is over %u bytes: give User as UID[:GID]", shown,
                                   IMAGE_MAX_ACCOUNTS);
            }
            cap *= 2;
            text = xrealloc(text, cap + 1);
        }
        ssize_t n = read(fd, text + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            free(text);
            return image__fail(err, errlen, SKIFF_E_INTERNAL, "cannot read the image's %s: %s",
                               shown, skiff_strerror(-errno));
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    text[len] = '\0';
    *out = text;
    return SKIFF_OK;
}

/* /etc/NAME as the image's root shows it: from the top layer down, a whiteout or an opaque
 * /etc ending the search. *out NULL when the image has none. */
static int user__etc_file(const struct image_store *s, const struct image *img, const char *name,
                          char **out, char *err, size_t errlen)
{
    char shown[32];
    snprintf(shown, sizeof shown, "/etc/%s", name);
    *out = NULL;
    for (size_t i = img->manifest.n_layers; i-- > 0;) {
        char *path = image_store_layer_path(s, img->manifest.layers[i]);
        int root = path ? open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) : -1;
        free(path);
        if (root < 0)
            return image__fail(err, errlen, SKIFF_E_INTERNAL, "the layer %s is not unpacked",
                               img->manifest.layers[i]);
        int etc = -1, file = -1;
        int found = user__open(root, "etc", true, &etc, "/etc", err, errlen);
        close(root);
        if (found < 0)
            return -found;
        if (found == USER_HIDDEN)
            return SKIFF_OK;
        if (found == USER_ABSENT)
            continue;
        found = user__open(etc, name, false, &file, shown, err, errlen);
        bool opaque = user__opaque(etc);
        close(etc);
        if (found < 0)
            return -found;
        if (found == USER_FILE) {
            int rc = user__read(file, shown, out, err, errlen);
            close(file);
            return rc;
        }
        if (found == USER_HIDDEN || opaque)
            return SKIFF_OK;
    }
    return SKIFF_OK;
}

/* A number in the range the container maps: true and *id, else false. */
static bool user__number(const char *text, size_t len, unsigned long *id)
{
    if (len == 0 || len > 5)
        return false;
    unsigned long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (text[i] < '0' || text[i] > '9')
            return false;
        v = v * 10 + (unsigned long)(text[i] - '0');
    }
    *id = v;
    return true;
}

/* In a passwd or group file: the first line whose field key_field is key (a name, or a
 * number), its third field (a user's uid, a group's gid) in *id and its fourth (a user's gid)
 * in *id2 (*id when it is not a number). */
static bool user__lookup(const char *text, const char *key, size_t key_len, int key_field,
                         unsigned long *id, unsigned long *id2)
{
    for (const char *line = text; line && *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        const char *field[4] = {0};
        size_t flen[4] = {0};
        const char *p = line;
        for (int f = 0; f < 4 && p <= line + len; f++) {
            const char *colon = memchr(p, ':', (size_t)(line + len - p));
            field[f] = p;
            flen[f] = colon ? (size_t)(colon - p) : (size_t)(line + len - p);
            p = colon ? colon + 1 : line + len + 1;
        }
        unsigned long a, b;
        if (field[2] && field[key_field] && flen[key_field] == key_len &&
            !memcmp(field[key_field], key, key_len) && user__number(field[2], flen[2], &a)) {
            *id = a;
            *id2 = field[3] && user__number(field[3], flen[3], &b) ? b : a;
            return true;
        }
        line = end ? end + 1 : NULL;
    }
    return false;
}

int image_user_resolve(const struct image_store *s, struct image *img, char *err, size_t errlen)
{
    struct image_config *c = &img->config;
    c->ids = true;
    c->uid = c->gid = 0;
    const char *user = c->user && *c->user ? c->user : NULL;
    if (!user)
        return SKIFF_OK;
    const char *colon = strchr(user, ':');
    size_t ulen = colon ? (size_t)(colon - user) : strlen(user);
    const char *group = colon ? colon + 1 : NULL;
    unsigned long uid = 0, gid = 0, unused;
    bool uid_numeric = user__number(user, ulen, &uid);
    bool gid_numeric = group && user__number(group, strlen(group), &gid);
    char *passwd = NULL, *groups = NULL;
    int rc = user__etc_file(s, img, "passwd", &passwd, err, errlen);
    if (rc == SKIFF_OK && group && !gid_numeric)
        rc = user__etc_file(s, img, "group", &groups, err, errlen);
    if (rc != SKIFF_OK)
        goto done;
    if (ulen == 0 || (colon && !*group)) {
        rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                         "the image's User \"%.80s\" is not USER[:GROUP] (a name or a number each)",
                         user);
        goto done;
    }
    unsigned long pw_uid, pw_gid;
    bool listed = passwd && (uid_numeric ? user__lookup(passwd, user, ulen, 2, &pw_uid, &pw_gid)
                                         : user__lookup(passwd, user, ulen, 0, &pw_uid, &pw_gid));
    if (!uid_numeric && !listed) {
        rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                         passwd ? "the image's User \"%.*s\" is not in its /etc/passwd: give a "
                                  "user the image has, or UID[:GID]"
                                : "the image's User \"%.*s\" is a name, and the image has no "
                                  "/etc/passwd to find it in: give User as UID[:GID]",
                         (int)ulen, user);
        goto done;
    }
    if (!uid_numeric)
        uid = pw_uid;
    /* without a group: the user's own from /etc/passwd, else (a number it does not list) the
     * uid as the gid, as Skiff always ran numeric users */
    gid = gid_numeric ? gid : listed ? pw_gid : uid;
    if (group && !gid_numeric &&
        !(groups && user__lookup(groups, group, strlen(group), 0, &gid, &unused))) {
        rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                         groups ? "the image's User names the group \"%.80s\", which is not in "
                                  "its /etc/group: give a group the image has, or a GID"
                                : "the image's User names the group \"%.80s\", and the image has "
                                  "no /etc/group to find it in: give a GID",
                         group);
        goto done;
    }
    if (uid > IMAGE_MAX_ID || gid > IMAGE_MAX_ID) {
        rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                         "the image's User \"%.80s\" is %lu:%lu, outside the ids 0-65535 a "
                         "container has",
                         user, uid, gid);
        goto done;
    }
    /* root inside is not given: uid 0 runs as vcap, as every container's program does */
    if (uid != 0) {
        c->uid = (unsigned)uid;
        c->gid = (unsigned)gid;
    }
done:
    free(passwd);
    free(groups);
    if (rc != SKIFF_OK)
        c->ids = false;
    return rc;
}
