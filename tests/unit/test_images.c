/* Unit tests for images: the blob store, hostile layers, configs, manifests and tarballs.
 * Every layer and tarball is built here with libarchive's writer. Runs as root (it checks
 * owners and overlayfs's whiteouts, as skiffd makes them). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <archive.h>
#include <archive_entry.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/util.h"
#include "images/images.h"
#include "images/images_internal.h"

#define UID_BASE 300000

/* 'f' file, 'd' folder, 'l' symlink, 'h' hard link, 'c' char device, 'b' block device.
 * For links, data is the target; for files, size 0 means strlen(data). */
struct entry {
    char type;
    const char *name;
    const char *data;
    size_t size;
    unsigned mode; /* 0: 0644 / 0755 */
    int uid;
};

struct fixture {
    char dir[64];
    struct image_store store;
    char *outside; /* a folder a hostile layer must never reach */
    char err[512];
    bool from_file; /* unpack(): from the stored blob (a tarball's import), not as a pull does */
};

static int setup(void **state)
{
    struct fixture *f = xcalloc(1, sizeof(*f));
    strcpy(f->dir, "/tmp/skiff-images-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    if (image_store_open(&f->store, f->dir, UID_BASE, f->err, sizeof f->err) != SKIFF_OK)
        return -1;
    f->outside = xasprintf("%s/outside", f->dir);
    mkdir(f->outside, 0755);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    rm_rf(f->dir);
    image_store_close(&f->store);
    free(f->outside);
    free(f);
    return 0;
}

static void write_tar(const char *path, bool gzip, const struct entry *entries, size_t n)
{
    struct archive *a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    if (gzip)
        archive_write_add_filter_gzip(a);
    assert_int_equal(archive_write_open_filename(a, path), ARCHIVE_OK);
    for (size_t i = 0; i < n; i++) {
        const struct entry *en = &entries[i];
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, en->name);
        archive_entry_set_uid(e, (la_int64_t)en->uid);
        archive_entry_set_gid(e, (la_int64_t)en->uid);
        size_t size = 0;
        switch (en->type) {
        case 'f':
            size = en->size ? en->size : strlen(en->data);
            archive_entry_set_filetype(e, AE_IFREG);
            archive_entry_set_perm(e, en->mode ? en->mode : 0644);
            archive_entry_set_size(e, (la_int64_t)size);
            break;
        case 'd':
            archive_entry_set_filetype(e, AE_IFDIR);
            archive_entry_set_perm(e, en->mode ? en->mode : 0755);
            break;
        case 'l':
            archive_entry_set_filetype(e, AE_IFLNK);
            archive_entry_set_perm(e, 0777);
            archive_entry_set_symlink(e, en->data);
            break;
        case 'h':
            archive_entry_set_filetype(e, AE_IFREG);
            archive_entry_set_perm(e, 0644);
            archive_entry_set_hardlink(e, en->data);
            break;
        case 'c':
        case 'b':
            archive_entry_set_filetype(e, en->type == 'c' ? AE_IFCHR : AE_IFBLK);
            archive_entry_set_perm(e, 0666);
            archive_entry_set_rdev(e, makedev(1, 3));
            break;
        }
        assert_int_equal(archive_write_header(a, e), ARCHIVE_OK);
        if (en->type == 'f')
            assert_int_equal(archive_write_data(a, en->data, size), (la_ssize_t)size);
        archive_entry_free(e);
    }
    archive_write_close(a);
    archive_write_free(a);
}

static void sha256_file(const char *path, char out[IMAGE_DIGEST_LEN], char **data, size_t *len)
{
    assert_int_equal(file_read(path, data, len), 0);
    unsigned char sum[32];
    crypto_hash_sha256(sum, (const unsigned char *)*data, *len);
    memcpy(out, "sha256:", 7);
    sodium_bin2hex(out + 7, IMAGE_DIGEST_LEN - 7, sum, sizeof sum);
}

/* Stores a file as a blob; returns its digest in out. */
static int store_file(struct fixture *f, const char *path, const char *expected,
                      char out[IMAGE_DIGEST_LEN])
{
    char *data;
    size_t len;
    assert_int_equal(file_read(path, &data, &len), 0);
    struct image_blob_writer *w;
    int rc = image_blob_begin(&f->store, expected, "layer under test", &w, f->err, sizeof f->err);
    if (rc == SKIFF_OK) {
        /* in pieces, as a download comes */
        for (size_t off = 0; rc == SKIFF_OK && off < len; off += 100)
            rc = image_blob_write(w, data + off, len - off < 100 ? len - off : 100, f->err,
                                  sizeof f->err);
        if (rc == SKIFF_OK)
            rc = image_blob_commit(w, out, f->err, sizeof f->err);
        else
            image_blob_abort(w);
    }
    free(data);
    return rc;
}

/* A layer as a pull stores it: the blob in pieces into its digest and into the unpacking at
 * once (the blob not kept), the folder put in place by the pull's one commit. expected: the
 * digest the manifest names. */
static int unpack_streamed(struct fixture *f, const char *path, const char *expected)
{
    char *data;
    size_t len;
    assert_int_equal(file_read(path, &data, &len), 0);
    struct image_pending p = IMAGE_PENDING_INIT;
    struct image_blob_writer *w;
    struct image_layer_stream *ls;
    assert_int_equal(image__blob_begin(&f->store, expected, "layer under test", false, &w, f->err,
                                       sizeof f->err),
                     SKIFF_OK);
    assert_int_equal(image__layer_stream_begin(&f->store, expected, &ls, f->err, sizeof f->err),
                     SKIFF_OK);
    int rc = SKIFF_OK;
    for (size_t off = 0; rc == SKIFF_OK && off < len; off += 100) {
        size_t piece = len - off < 100 ? len - off : 100;
        rc = image_blob_write(w, data + off, piece, f->err, sizeof f->err);
        image__layer_stream_write(ls, data + off, piece);
    }
    if (rc == SKIFF_OK)
        rc = image__blob_verify(w, &p, f->err, sizeof f->err);
    else
        image_blob_abort(w);
    int unpacked = image__layer_stream_end(ls, rc == SKIFF_OK, &p, f->err, sizeof f->err);
    if (rc == SKIFF_OK)
        rc = unpacked;
    if (rc == SKIFF_OK)
        rc = image__pending_commit(&f->store, &p, f->err, sizeof f->err);
    image__pending_abort(&p);
    free(data);
    return rc;
}

/* Builds a layer from entries and unpacks it as a pull does (f->from_file: stores it, then
 * unpacks the stored blob); the layer's digest in digest. */
static int unpack(struct fixture *f, const struct entry *entries, size_t n,
                  char digest[IMAGE_DIGEST_LEN])
{
    char *path = xasprintf("%s/layer.tgz", f->dir);
    write_tar(path, true, entries, n);
    char *data;
    size_t len;
    sha256_file(path, digest, &data, &len);
    free(data);
    f->err[0] = '\0';
    int rc;
    if (f->from_file) {
        assert_int_equal(store_file(f, path, NULL, digest), SKIFF_OK);
        f->err[0] = '\0';
        rc = image_layer_unpack(&f->store, digest, f->err, sizeof f->err);
    } else {
        rc = unpack_streamed(f, path, digest);
        assert_false(image_store_has_blob(&f->store, digest)); /* the layer is stored once */
    }
    unlink(path);
    free(path);
    return rc;
}

static char *layer_file(struct fixture *f, const char *digest, const char *name)
{
    char *dir = image_store_layer_path(&f->store, digest);
    char *p = xasprintf("%s/%s", dir, name);
    free(dir);
    return p;
}

static bool dir_empty(const char *path)
{
    char *cmd = xasprintf("test -z \"$(ls -A %s)\"", path);
    int rc = system(cmd);
    free(cmd);
    return rc == 0;
}

/* Refused both as a pull unpacks it and from a stored blob. */
static void assert_refused(struct fixture *f, const struct entry *entries, size_t n,
                           const char *words)
{
    for (int from_file = 0; from_file < 2; from_file++) {
        f->from_file = from_file;
        char digest[IMAGE_DIGEST_LEN];
        assert_int_equal(unpack(f, entries, n, digest), SKIFF_E_UNSAFE_ARCHIVE);
        if (!strstr(f->err, words))
            fail_msg("message '%s' does not say '%s'", f->err, words);
        assert_non_null(strstr(f->err, digest)); /* names the layer */
        char *layer = image_store_layer_path(&f->store, digest);
        assert_int_not_equal(access(layer, F_OK), 0); /* nothing half-unpacked */
        free(layer);
        char *tmp = xasprintf("%s/images/tmp", f->dir);
        assert_true(dir_empty(tmp));
        free(tmp);
        assert_true(dir_empty(f->outside));
    }
    f->from_file = false;
}

/* A pull's layer whose blob is not what the manifest's digest says: refused as the digest
 * mismatch it is (even though what streamed in was a fine layer), nothing stored anywhere. */
static void test_layer_streamed_is_kept_only_when_its_digest_matched(void **state)
{
    struct fixture *f = *state;
    const struct entry fine[] = {{'f', "hello", "world", 0, 0, 0}};
    char *path = xasprintf("%s/layer.tgz", f->dir);
    write_tar(path, true, fine, 1);
    static const char wrong[] =
        "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    assert_int_equal(unpack_streamed(f, path, wrong), SKIFF_E_DIGEST_MISMATCH);
    assert_non_null(strstr(f->err, "does not match its digest"));
    char *layers = xasprintf("%s/images/layers/sha256", f->dir);
    char *tmp = xasprintf("%s/images/tmp", f->dir);
    char *blobs = xasprintf("%s/images/blobs/sha256", f->dir);
    assert_true(dir_empty(layers) && dir_empty(tmp) && dir_empty(blobs));

    /* the same layer under its own digest: unpacked, in place, and only its folder stored */
    char digest[IMAGE_DIGEST_LEN], *data;
    size_t len;
    sha256_file(path, digest, &data, &len);
    free(data);
    assert_int_equal(unpack_streamed(f, path, digest), SKIFF_OK);
    char *hello = layer_file(f, digest, "hello");
    char *text;
    assert_int_equal(file_read(hello, &text, &len), 0);
    assert_string_equal(text, "world");
    assert_true(dir_empty(tmp) && dir_empty(blobs));

    /* a tar that ends long before its blob does (3 MiB of zeros after it, more than the
     * unpacking's buffer): the rest is only hashed, and the pull does not wait on it */
    free(text);
    free(hello);
    const struct entry padded[] = {{'f', "padded", "yes", 0, 0, 0}};
    write_tar(path, false, padded, 1);
    assert_int_equal(file_read(path, &data, &len), 0);
    data = xrealloc(data, len + (3u << 20));
    memset(data + len, 0, 3u << 20);
    assert_int_equal(file_write_atomic(path, data, len + (3u << 20), 0644), 0);
    free(data);
    sha256_file(path, digest, &data, &len);
    free(data);
    assert_int_equal(unpack_streamed(f, path, digest), SKIFF_OK);
    hello = layer_file(f, digest, "padded");
    assert_int_equal(access(hello, F_OK), 0);
    free(hello);

    /* more files than are synced in one batch: every one of them there, whole */
    struct entry many[70];
    char names[70][16];
    for (int i = 0; i < 70; i++) {
        snprintf(names[i], sizeof names[i], "f%02d", i);
        many[i] = (struct entry){'f', names[i], names[i], 0, 0, 0};
    }
    f->from_file = false;
    assert_int_equal(unpack(f, many, 70, digest), SKIFF_OK);
    for (int i = 0; i < 70; i++) {
        char *p = layer_file(f, digest, names[i]);
        assert_int_equal(file_read(p, &text, &len), 0);
        assert_string_equal(text, names[i]);
        free(text);
        free(p);
    }
    free(layers);
    free(tmp);
    free(blobs);
    free(path);
}

/* ---- the blob store ------------------------------------------------------------------ */

static void test_blob_verified_while_streaming(void **state)
{
    struct fixture *f = *state;
    char *path = xasprintf("%s/blob", f->dir);
    assert_int_equal(file_write_atomic(path, "hello", 5, 0644), 0);
    char digest[IMAGE_DIGEST_LEN], *data;
    size_t len;
    sha256_file(path, digest, &data, &len);
    free(data);

    char got[IMAGE_DIGEST_LEN];
    assert_int_equal(store_file(f, path, digest, got), SKIFF_OK);
    assert_string_equal(got, digest);
    assert_true(image_store_has_blob(&f->store, digest));

    /* a blob that is not what its digest says is not stored, under any name */
    static const char wrong[] =
        "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    char *other = xasprintf("%s/other", f->dir);
    assert_int_equal(file_write_atomic(other, "hellp", 5, 0644), 0);
    assert_int_equal(store_file(f, other, wrong, got), SKIFF_E_DIGEST_MISMATCH);
    assert_non_null(strstr(f->err, "layer under test"));
    assert_false(image_store_has_blob(&f->store, wrong));
    char *tmp = xasprintf("%s/images/tmp", f->dir);
    assert_true(dir_empty(tmp));

    /* over the limit: refused while it streams */
    f->store.max_blob = 3;
    assert_int_equal(store_file(f, other, NULL, got), SKIFF_E_TOO_LARGE);
    assert_true(dir_empty(tmp));

    /* digests that are not sha256 hex are refused, never turned into paths */
    assert_false(image_digest_valid("sha256:../../etc/passwd"));
    assert_false(image_digest_valid("sha512:abc"));
    assert_false(image_digest_valid(
        "sha256:0000000000000000000000000000000000000000000000000000000000000000/"));
    assert_null(image_store_blob_path(&f->store, "sha256:.."));
    struct image_blob_writer *w;
    assert_int_equal(image_blob_begin(&f->store, "sha256:../x", "x", &w, f->err, sizeof f->err),
                     SKIFF_E_BAD_IMAGE);
    free(tmp);
    free(other);
    free(path);
}

/* In a child with a user and mount namespace of its own, the store's tmp/ becomes a 64 KB
 * tmpfs: a blob larger than that fails with ENOSPC. Exit 0: answered as insufficient storage
 * with what failed; 1: answered otherwise; 77: the namespace or mount is not allowed here. */
static int disk_full_child(struct fixture *f)
{
    uid_t uid = getuid();
    gid_t gid = getgid();
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0)
        return 77;
    char map[64];
    snprintf(map, sizeof map, "%u %u 1\n", (unsigned)uid, (unsigned)uid);
    FILE *m = fopen("/proc/self/setgroups", "w"); /* before gid_map, as the kernel asks */
    if (m) {
        fputs("deny", m);
        fclose(m);
    }
    m = fopen("/proc/self/uid_map", "w");
    if (!m || fputs(map, m) < 0 || fclose(m) != 0)
        return 77;
    snprintf(map, sizeof map, "%u %u 1\n", (unsigned)gid, (unsigned)gid);
    m = fopen("/proc/self/gid_map", "w");
    if (!m || fputs(map, m) < 0 || fclose(m) != 0)
        return 77;
    char *tmp = xasprintf("%s/images/tmp", f->dir);
    if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
        mount("tmpfs", tmp, "tmpfs", 0, "size=64k") != 0)
        return 77;
    struct image_blob_writer *w;
    if (image_blob_begin(&f->store, NULL, "the layer under test", &w, f->err, sizeof f->err) !=
        SKIFF_OK) {
        fprintf(stderr, "cannot begin a blob: %s\n", f->err);
        return 1;
    }
    static char chunk[16384];
    int rc = SKIFF_OK;
    for (int i = 0; i < 16 && rc == SKIFF_OK; i++)
        rc = image_blob_write(w, chunk, sizeof chunk, f->err, sizeof f->err);
    char digest[IMAGE_DIGEST_LEN];
    if (rc == SKIFF_OK)
        rc = image_blob_commit(w, digest, f->err, sizeof f->err);
    else
        image_blob_abort(w);
    fprintf(stderr, "disk full: %d %s\n", rc, f->err);
    return rc == SKIFF_E_INSUFFICIENT_STORAGE && strstr(f->err, "the layer under test") &&
                   strstr(f->err, "free space") && skiff_err_http_status(rc) == 507
               ? 0
               : 1;
}

static void test_a_full_disk_is_insufficient_storage_not_internal(void **state)
{
    struct fixture *f = *state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(disk_full_child(f));
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) == 77)
        skip(); /* no user namespaces here: nothing to learn */
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* ---- layers -------------------------------------------------------------------------- */

static void test_layer_unpacks_owned_and_without_setuid(void **state)
{
    struct fixture *f = *state;
    const struct entry entries[] = {
        {'d', "./", NULL, 0, 0, 0},
        {'d', "./usr/bin", NULL, 0, 0, 0},
        {'f', "./usr/bin/tool", "#!/bin/sh\n", 0, 04755, 0},
        {'f', "./usr/bin/group", "x", 0, 02755, 0},
        {'l', "./bin", "/usr/bin", 0, 0, 0},
        {'h', "./usr/bin/tool2", "usr/bin/tool", 0, 0, 0},
        {'d', "./home/app", NULL, 0, 0, 1000},
        {'f', "./home/app/big-owner", "x", 0, 0, 100000},
    };
    char digest[IMAGE_DIGEST_LEN];
    assert_int_equal(unpack(f, entries, ARRAY_SIZE(entries), digest), SKIFF_OK);
    struct stat st;
    char *p = layer_file(f, digest, "usr/bin/tool");
    assert_int_equal(lstat(p, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0755); /* setuid dropped */
    assert_int_equal(st.st_uid, UID_BASE);
    assert_int_equal(st.st_nlink, 2);
    free(p);
    p = layer_file(f, digest, "usr/bin/group");
    assert_int_equal(lstat(p, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0755); /* setgid dropped */
    free(p);
    p = layer_file(f, digest, "bin");
    char target[64] = "";
    assert_int_equal(readlink(p, target, sizeof target - 1), 8);
    assert_string_equal(target, "/usr/bin"); /* absolute: resolved inside the container */
    free(p);
    p = layer_file(f, digest, "home/app");
    assert_int_equal(lstat(p, &st), 0);
    assert_int_equal(st.st_uid, UID_BASE + 1000);
    free(p);
    p = layer_file(f, digest, "home/app/big-owner");
    assert_int_equal(lstat(p, &st), 0);
    assert_int_equal(st.st_uid, UID_BASE + 65534);
    free(p);
    /* unpacked once: a second call keeps it */
    assert_int_equal(image_layer_unpack(&f->store, digest, f->err, sizeof f->err), SKIFF_OK);
}

static void test_layer_whiteouts_in_overlay_format(void **state)
{
    struct fixture *f = *state;
    const struct entry entries[] = {
        {'d', "etc", NULL, 0, 0, 0},          {'f', "etc/.wh.motd", "", 1, 0, 0},
        {'d', "var/cache", NULL, 0, 0, 0},    {'f', "var/cache/.wh..wh..opq", "", 1, 0, 0},
        {'f', "var/cache/new", "n", 0, 0, 0},
    };
    char digest[IMAGE_DIGEST_LEN];
    assert_int_equal(unpack(f, entries, ARRAY_SIZE(entries), digest), SKIFF_OK);
    struct stat st;
    char *p = layer_file(f, digest, "etc/motd");
    assert_int_equal(lstat(p, &st), 0);
    assert_true(S_ISCHR(st.st_mode));
    assert_int_equal(st.st_rdev, makedev(0, 0));
    free(p);
    p = layer_file(f, digest, "etc/.wh.motd");
    assert_int_not_equal(access(p, F_OK), 0);
    free(p);
    p = layer_file(f, digest, "var/cache");
    char v[4] = "";
    assert_int_equal(getxattr(p, "trusted.overlay.opaque", v, sizeof v), 1);
    assert_int_equal(v[0], 'y');
    free(p);
    p = layer_file(f, digest, "var/cache/.wh..wh..opq");
    assert_int_not_equal(access(p, F_OK), 0);
    free(p);
}

/* User of an image of these layers (bottom first) resolved; *uid:*gid set when it is. */
static int resolve_user(struct fixture *f, char (*layers)[IMAGE_DIGEST_LEN], size_t n,
                        const char *user, unsigned *uid, unsigned *gid)
{
    char *names[8] = {0};
    for (size_t i = 0; i < n; i++)
        names[i] = layers[i];
    struct image img = {.manifest = {.layers = names, .n_layers = n}};
    img.config.user = (char *)user;
    f->err[0] = '\0';
    int rc = image_user_resolve(&f->store, &img, f->err, sizeof f->err);
    *uid = img.config.uid;
    *gid = img.config.gid;
    assert_true(img.config.ids == (rc == SKIFF_OK));
    return rc;
}

static void expect_ids(struct fixture *f, char (*layers)[IMAGE_DIGEST_LEN], size_t n,
                       const char *user, unsigned want_uid, unsigned want_gid)
{
    unsigned uid, gid;
    if (resolve_user(f, layers, n, user, &uid, &gid) != SKIFF_OK)
        fail_msg("%s: %s", user, f->err);
    assert_int_equal(uid, want_uid);
    assert_int_equal(gid, want_gid);
}

static void expect_user_refused(struct fixture *f, char (*layers)[IMAGE_DIGEST_LEN], size_t n,
                                const char *user, const char *says)
{
    unsigned uid, gid;
    assert_int_equal(resolve_user(f, layers, n, user, &uid, &gid), SKIFF_E_BAD_IMAGE);
    if (!strstr(f->err, says))
        fail_msg("%s: \"%s\" does not say \"%s\"", user, f->err, says);
}

static void test_user_names_resolve_through_the_image(void **state)
{
    struct fixture *f = *state;
    const struct entry base[] = {
        {'d', "etc", NULL, 0, 0, 0},
        {'f', "etc/passwd", "root:x:0:0:root:/root:/bin/sh\nweb:x:1001:1002::/srv:/bin/sh\n", 0, 0,
         0},
        {'f', "etc/group", "root:x:0:\nstaff:x:50:web\nweb:x:1002:\n", 0, 0, 0},
    };
    char layers[3][IMAGE_DIGEST_LEN];
    assert_int_equal(unpack(f, base, ARRAY_SIZE(base), layers[0]), SKIFF_OK);
    expect_ids(f, layers, 1, "web", 1001, 1002);     /* its group from /etc/passwd */
    expect_ids(f, layers, 1, "web:staff", 1001, 50); /* a group by name */
    expect_ids(f, layers, 1, "web:7", 1001, 7);      /* a group by number */
    expect_ids(f, layers, 1, "1001", 1001, 1002);    /* a number it lists */
    expect_ids(f, layers, 1, "4000", 4000, 4000);    /* a number it does not */
    expect_ids(f, layers, 1, "4000:staff", 4000, 50);
    expect_ids(f, layers, 1, "root", 0, 0); /* root runs as vcap */
    expect_ids(f, layers, 1, NULL, 0, 0);
    expect_user_refused(f, layers, 1, "nobody", "\"nobody\" is not in its /etc/passwd");
    expect_user_refused(f, layers, 1, "web:wheel", "\"wheel\", which is not in its /etc/group");
    expect_user_refused(f, layers, 1, "70000", "outside the ids 0-65535");
    expect_user_refused(f, layers, 1, "web:", "is not USER[:GROUP]");
    expect_user_refused(f, layers, 1, ":staff", "is not USER[:GROUP]");

    /* the top layer's file wins; a whiteout hides the lower one */
    const struct entry newer[] = {
        {'d', "etc", NULL, 0, 0, 0},
        {'f', "etc/passwd", "web:x:2000:2000::/:/bin/sh\n", 0, 0, 0},
    };
    assert_int_equal(unpack(f, newer, ARRAY_SIZE(newer), layers[1]), SKIFF_OK);
    expect_ids(f, layers, 2, "web", 2000, 2000);
    expect_ids(f, layers, 2, "web:staff", 2000, 50); /* /etc/group from below */
    const struct entry gone[] = {
        {'d', "etc", NULL, 0, 0, 0},
        {'f', "etc/.wh.passwd", "", 1, 0, 0},
    };
    assert_int_equal(unpack(f, gone, ARRAY_SIZE(gone), layers[2]), SKIFF_OK);
    expect_user_refused(f, layers, 3, "web", "has no /etc/passwd");
    expect_ids(f, layers, 3, "4000:50", 4000, 50); /* numbers need nothing */
}

static void test_user_files_are_bounded(void **state)
{
    struct fixture *f = *state;
    size_t big = (1u << 20) + 4096;
    char *passwd = xmalloc(big + 1);
    memset(passwd, '#', big);
    passwd[big] = '\0';
    const struct entry huge[] = {
        {'d', "etc", NULL, 0, 0, 0},
        {'f', "etc/passwd", passwd, big, 0, 0},
    };
    char layers[1][IMAGE_DIGEST_LEN];
    assert_int_equal(unpack(f, huge, ARRAY_SIZE(huge), layers[0]), SKIFF_OK);
    free(passwd);
    expect_user_refused(f, layers, 1, "web", "/etc/passwd is over 1048576 bytes");
}

static void test_user_files_are_never_read_through_links(void **state)
{
    struct fixture *f = *state;
    /* a link to the host's own /etc/passwd (or anywhere) is not followed, whether it is the
     * file or the folder */
    const struct entry file_link[] = {
        {'d', "etc", NULL, 0, 0, 0},
        {'l', "etc/passwd", "/etc/passwd", 0, 0, 0},
    };
    const struct entry dir_link[] = {{'l', "etc", "/etc", 0, 0, 0}};
    const struct entry fifo_dir[] = {{'f', "etc", "not a folder", 0, 0, 0}};
    char layers[1][IMAGE_DIGEST_LEN];
    assert_int_equal(unpack(f, file_link, ARRAY_SIZE(file_link), layers[0]), SKIFF_OK);
    expect_user_refused(f, layers, 1, "root", "/etc/passwd is a symbolic link");
    assert_int_equal(unpack(f, dir_link, ARRAY_SIZE(dir_link), layers[0]), SKIFF_OK);
    expect_user_refused(f, layers, 1, "root", "/etc is a symbolic link");
    assert_int_equal(unpack(f, fifo_dir, ARRAY_SIZE(fifo_dir), layers[0]), SKIFF_OK);
    expect_user_refused(f, layers, 1, "root", "/etc is not a folder");
}

static void test_gc_keeps_what_is_named_and_waits_for_pulls(void **state)
{
    struct fixture *f = *state;
    f->from_file = true; /* blobs and layers both, as a tarball's import stores them */
    const struct entry one[] = {{'f', "one", "1", 0, 0, 0}};
    const struct entry two[] = {{'f', "two", "2", 0, 0, 0}};
    const struct entry three[] = {{'f', "three", "3", 0, 0, 0}};
    char a[IMAGE_DIGEST_LEN], b[IMAGE_DIGEST_LEN], c[IMAGE_DIGEST_LEN];
    assert_int_equal(unpack(f, one, 1, a), SKIFF_OK);
    assert_int_equal(unpack(f, two, 1, b), SKIFF_OK);
    assert_int_equal(unpack(f, three, 1, c), SKIFF_OK);

    /* a held store (a pull under way) is not collected at all */
    struct image_keep keep = {0};
    struct image_gc_result res;
    int hold = image_store_hold(&f->store);
    assert_true(hold >= 0);
    assert_int_equal(image_store_gc(&f->store, &keep, &res, f->err, sizeof f->err), SKIFF_E_BUSY);
    assert_true(image_store_has_blob(&f->store, a));
    image_store_release(hold);

    /* a: a droplet's; b: a running instance's lowerdir (among others); c: nobody's */
    image_keep_add(&keep, a);
    char *b_dir = image_store_layer_path(&f->store, b);
    char *lowerdir = xasprintf("/elsewhere/x:%s:/srv/sha256/short", b_dir);
    image_keep_layers(&keep, lowerdir);
    image_keep_add(&keep, "not a digest");
    assert_int_equal(keep.n, 2);
    assert_int_equal(image_store_gc(&f->store, &keep, &res, f->err, sizeof f->err), SKIFF_OK);
    assert_int_equal(res.layers, 1);
    assert_int_equal(res.blobs, 1);
    assert_true(image_store_has_blob(&f->store, a) && image_store_has_blob(&f->store, b));
    assert_false(image_store_has_blob(&f->store, c));
    char *c_dir = image_store_layer_path(&f->store, c);
    assert_int_not_equal(access(c_dir, F_OK), 0);
    assert_int_equal(access(b_dir, F_OK), 0);
    free(c_dir);
    free(b_dir);
    free(lowerdir);
    image_keep_clear(&keep);
}

static void test_layer_refuses_escaping_paths(void **state)
{
    struct fixture *f = *state;
    const struct entry dotdot[] = {{'f', "a/../../outside/pwned", "x", 0, 0, 0}};
    assert_refused(f, dotdot, 1, "outside the layer");
    const struct entry absolute[] = {{'f', "/etc/pwned", "x", 0, 0, 0}};
    assert_refused(f, absolute, 1, "absolute path");
}

static void test_layer_refuses_writing_through_links(void **state)
{
    struct fixture *f = *state;
    /* a link to the host's folder, then a file "in" it */
    const struct entry file[] = {
        {'l', "escape", f->outside, 0, 0, 0},
        {'f', "escape/pwned", "x", 0, 0, 0},
    };
    assert_refused(f, file, ARRAY_SIZE(file), "symbolic link");
    /* a relative link climbing out, then a folder in it */
    const struct entry dir[] = {
        {'l', "up", "../../../../../../../../../..", 0, 0, 0},
        {'d', "up/tmp/made", NULL, 0, 0, 0},
    };
    assert_refused(f, dir, ARRAY_SIZE(dir), "symbolic link");
    /* a whiteout or an opaque marker through a link would delete or mark the host's files */
    const struct entry whiteout[] = {
        {'l', "escape", f->outside, 0, 0, 0},
        {'f', "escape/.wh.victim", "", 1, 0, 0},
    };
    assert_refused(f, whiteout, ARRAY_SIZE(whiteout), "symbolic link");
    const struct entry opaque[] = {
        {'l', "escape", f->outside, 0, 0, 0},
        {'f', "escape/.wh..wh..opq", "", 1, 0, 0},
    };
    assert_refused(f, opaque, ARRAY_SIZE(opaque), "symbolic link");
    char v[4];
    assert_int_equal(getxattr(f->outside, "trusted.overlay.opaque", v, sizeof v), -1);
    /* a hard link whose target goes through a link */
    const struct entry hard[] = {
        {'l', "escape", "/etc", 0, 0, 0},
        {'h', "shadow", "escape/shadow", 0, 0, 0},
    };
    assert_refused(f, hard, ARRAY_SIZE(hard), "symbolic link");
}

static void test_layer_refuses_hard_links_outside(void **state)
{
    struct fixture *f = *state;
    const struct entry up[] = {{'h', "passwd", "../../../../etc/passwd", 0, 0, 0}};
    assert_refused(f, up, 1, "outside the layer");
    const struct entry absolute[] = {{'h', "passwd", "/etc/passwd", 0, 0, 0}};
    assert_refused(f, absolute, 1, "outside the layer");
    const struct entry missing[] = {{'h', "passwd", "etc/passwd", 0, 0, 0}};
    assert_refused(f, missing, 1, "not in the layer");
}

static void test_layer_refuses_devices(void **state)
{
    struct fixture *f = *state;
    const struct entry chr[] = {{'c', "dev/mem", NULL, 0, 0, 0}};
    assert_refused(f, chr, 1, "device node");
    const struct entry blk[] = {{'b', "dev/sda", NULL, 0, 0, 0}};
    assert_refused(f, blk, 1, "device node");
}

static void test_layer_limits_and_garbage(void **state)
{
    struct fixture *f = *state;
    f->store.max_layer = 1000;
    const struct entry big[] = {{'f', "big", NULL, 5000, 0, 0}};
    char *filler = xcalloc(1, 5001);
    memset(filler, 'x', 5000);
    const struct entry big_data[] = {{'f', big[0].name, filler, 5000, 0, 0}};
    char digest[IMAGE_DIGEST_LEN];
    assert_int_equal(unpack(f, big_data, 1, digest), SKIFF_E_TOO_LARGE);
    assert_non_null(strstr(f->err, "limit"));
    free(filler);

    /* a blob that is not a tar */
    char *path = xasprintf("%s/garbage", f->dir);
    assert_int_equal(file_write_atomic(path, "not a tar at all", 16, 0644), 0);
    assert_int_equal(store_file(f, path, NULL, digest), SKIFF_OK);
    assert_int_equal(image_layer_unpack(&f->store, digest, f->err, sizeof f->err),
                     SKIFF_E_BAD_IMAGE);
    assert_non_null(strstr(f->err, digest));
    free(path);
}

/* ---- documents ----------------------------------------------------------------------- */

static void test_config_decides_the_process(void **state)
{
    (void)state;
    const char *json = "{\"architecture\":\"amd64\",\"config\":{\"Entrypoint\":[\"/srv\",\"-v\"],"
                       "\"Cmd\":[\"--port\",\"9000\"],\"Env\":[\"PATH=/usr/bin\",\"A=b=c\"],"
                       "\"WorkingDir\":\"/srv/app\",\"User\":\"1000:1000\",\"ExposedPorts\":"
                       "{\"9000/tcp\":{},\"53/udp\":{},\"8443/tcp\":{}}}}";
    struct image_config c;
    char err[256];
    assert_int_equal(image_config_parse(json, strlen(json), &c, err, sizeof err), SKIFF_OK);
    assert_string_equal(c.entrypoint[0], "/srv");
    assert_string_equal(c.entrypoint[1], "-v");
    assert_null(c.entrypoint[2]);
    assert_string_equal(c.cmd[1], "9000");
    assert_string_equal(c.env[1], "A=b=c");
    assert_string_equal(c.workdir, "/srv/app");
    assert_string_equal(c.user, "1000:1000");
    assert_int_equal(c.port, 8443); /* the lowest TCP port; UDP does not count */
    image_config_clear(&c);

    const char *bare = "{\"config\":{}}";
    assert_int_equal(image_config_parse(bare, strlen(bare), &c, err, sizeof err), SKIFF_OK);
    assert_null(c.entrypoint);
    assert_int_equal(c.port, 0);
    image_config_clear(&c);

    static const char *const bad[] = {
        "[]",
        "{\"config\":[]}",
        "{\"config\":{\"Cmd\":\"sh -c x\"}}",
        "{\"config\":{\"Cmd\":[1]}}",
        "{\"config\":{\"Env\":[\"NOEQUALS\"]}}",
        "{\"config\":{\"WorkingDir\":\"relative\"}}",
        "{\"config\":{\"WorkingDir\":\"/../../../etc/evil\"}}",
        "{\"config\":{\"WorkingDir\":\"/srv/..\"}}",
        "{\"config\":{\"WorkingDir\":\"/srv/./x\"}}",
        "{\"config\":{\"ExposedPorts\":{\"99999/tcp\":{}}}}",
        "{\"config\":{\"ExposedPorts\":{\"x/tcp\":{}}}}",
        "{\"config\":{\"Cmd\":[\"a\\u0000b\"]}}",
        "{\"config\":{},\"config\":{}}",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        err[0] = '\0';
        if (image_config_parse(bad[i], strlen(bad[i]), &c, err, sizeof err) != SKIFF_E_BAD_IMAGE)
            fail_msg("accepted %s", bad[i]);
        assert_true(err[0] != '\0');
    }
}

static void test_manifest_and_index(void **state)
{
    (void)state;
    char err[256];
    const char *m = "{\"schemaVersion\":2,\"mediaType\":\"application/"
                    "vnd.docker.distribution.manifest.v2+json\",\"config\":{\"digest\":\"sha256:"
                    "1111111111111111111111111111111111111111111111111111111111111111\"},"
                    "\"layers\":[{\"mediaType\":\"application/"
                    "vnd.docker.image.rootfs.diff.tar.gzip\",\"digest\":\"sha256:"
                    "2222222222222222222222222222222222222222222222222222222222222222\"}]}";
    struct image_manifest man;
    bool is_index;
    assert_int_equal(image_manifest_parse(m, strlen(m), &man, &is_index, err, sizeof err),
                     SKIFF_OK);
    assert_false(is_index);
    assert_int_equal(man.n_layers, 1);
    assert_string_equal(man.layers[0] + 7,
                        "2222222222222222222222222222222222222222222222222222222222222222");
    image_manifest_clear(&man);

    const char *foreign = "{\"schemaVersion\":2,\"config\":{\"digest\":\"sha256:"
                          "1111111111111111111111111111111111111111111111111111111111111111\"},"
                          "\"layers\":[{\"mediaType\":\"application/"
                          "vnd.docker.image.rootfs.foreign.diff.tar.gzip\",\"digest\":\"sha256:"
                          "2222222222222222222222222222222222222222222222222222222222222222\"}]}";
    assert_int_equal(
        image_manifest_parse(foreign, strlen(foreign), &man, &is_index, err, sizeof err),
        SKIFF_E_BAD_IMAGE);
    const char *v1 = "{\"schemaVersion\":1}";
    assert_int_equal(image_manifest_parse(v1, strlen(v1), &man, &is_index, err, sizeof err),
                     SKIFF_E_BAD_IMAGE);
    assert_non_null(strstr(err, "schema"));

    const char *idx =
        "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\","
        "\"manifests\":[{\"digest\":\"sha256:"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\",\"platform\":{"
        "\"os\":\"linux\",\"architecture\":\"arm64\"}},{\"digest\":\"sha256:"
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\",\"platform\":{"
        "\"os\":\"linux\",\"architecture\":\"amd64\"}}]}";
    assert_int_equal(image_manifest_parse(idx, strlen(idx), &man, &is_index, err, sizeof err),
                     SKIFF_OK);
    assert_true(is_index);
    char d[IMAGE_DIGEST_LEN];
    assert_int_equal(image_index_pick(idx, strlen(idx), "linux", "amd64", d, err, sizeof err),
                     SKIFF_OK);
    assert_int_equal(d[7], 'b');
    assert_int_equal(image_index_pick(idx, strlen(idx), "linux", "s390x", d, err, sizeof err),
                     SKIFF_E_BAD_IMAGE);
    assert_non_null(strstr(err, "linux/arm64, linux/amd64"));
}

static void test_record_round_trip(void **state)
{
    (void)state;
    char *layers[] = {"sha256:2222222222222222222222222222222222222222222222222222222222222222",
                      NULL};
    char *cmd[] = {"/srv", NULL};
    struct image img = {
        .ref = "oci-archive:web.tar",
        .digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111",
        .manifest = {.layers = layers, .n_layers = 1},
        .config = {.cmd = cmd, .port = 9000, .workdir = "/srv"}};
    char *json = image_to_json(&img);
    struct image back;
    char err[256];
    assert_int_equal(image_from_json(json, &back, err, sizeof err), SKIFF_OK);
    assert_string_equal(back.ref, img.ref);
    assert_string_equal(back.manifest.layers[0], layers[0]);
    assert_int_equal(back.manifest.n_layers, 1);
    assert_string_equal(back.config.cmd[0], "/srv");
    assert_null(back.config.entrypoint);
    assert_int_equal(back.config.port, 9000);
    image_clear(&back);
    free(json);
}

/* An image record naming n layers (digests 0, 1, ...). Caller frees. */
static char *layers_record(int n)
{
    struct buf b = {0};
    buf_printf(&b, "{\"layers\":[");
    for (int i = 0; i < n; i++)
        buf_printf(&b, "%s\"sha256:%064x\"", i ? "," : "", i);
    buf_printf(&b, "]}");
    return buf_steal(&b);
}

/* A record may come from another host (a droplet's blob a cell fetched): its digests name files
 * in the image store, and its layers are what the cell fetches. */
static void test_a_hostile_record_is_refused(void **state)
{
    (void)state;
    struct image back;
    char err[256];
    const char *escaping[] = {
        "{\"layers\":[\"sha256:../../../../etc\"]}",
        "{\"layers\":[\"../../etc/passwd\"]}",
        "{\"config_digest\":\"sha256:../x\",\"layers\":[]}",
        "{\"layers\":[\"sha256:2222222222222222222222222222222222222222222222222222222222222222/"
        "..\"]}",
    };
    for (size_t i = 0; i < sizeof escaping / sizeof *escaping; i++) {
        assert_int_equal(image_from_json(escaping[i], &back, err, sizeof err), SKIFF_E_BAD_IMAGE);
        assert_non_null(strstr(err, "is not a digest"));
    }
    /* a manifest naming thousands of layers (the limit is Docker's, 127) */
    char *many = layers_record(5000);
    assert_int_equal(image_from_json(many, &back, err, sizeof err), SKIFF_E_BAD_IMAGE);
    assert_non_null(strstr(err, "more than 127 layers"));
    free(many);
    char *most = layers_record(127);
    assert_int_equal(image_from_json(most, &back, err, sizeof err), SKIFF_OK);
    assert_int_equal(back.manifest.n_layers, 127);
    image_clear(&back);
    free(most);
}

/* ---- tarballs ------------------------------------------------------------------------ */

struct blob {
    char digest[IMAGE_DIGEST_LEN];
    char *data;
    size_t len;
};

static void blob_of_file(const char *path, struct blob *b)
{
    sha256_file(path, b->digest, &b->data, &b->len);
}

static void blob_of_text(struct fixture *f, const char *text, struct blob *b)
{
    char *path = xasprintf("%s/doc", f->dir);
    assert_int_equal(file_write_atomic(path, text, strlen(text), 0644), 0);
    blob_of_file(path, b);
    unlink(path);
    free(path);
}

static const struct entry base_layer[] = {
    {'d', "srv", NULL, 0, 0, 0},
    {'f', "srv/hello", "hi\n", 0, 0755, 0},
    {'f', "srv/gone", "old\n", 0, 0, 0},
};
static const struct entry top_layer[] = {
    {'f', "srv/.wh.gone", "", 1, 0, 0},
    {'f', "srv/new", "new\n", 0, 0, 0},
};

/* Two layers (gzip), their config; layer_digest[i] set. */
static void make_layers(struct fixture *f, struct blob layers[2], struct blob *config, bool gzip)
{
    char *p = xasprintf("%s/l0", f->dir);
    write_tar(p, gzip, base_layer, ARRAY_SIZE(base_layer));
    blob_of_file(p, &layers[0]);
    write_tar(p, gzip, top_layer, ARRAY_SIZE(top_layer));
    blob_of_file(p, &layers[1]);
    unlink(p);
    free(p);
    blob_of_text(
        f,
        "{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"Cmd\":[\"/srv/hello\"],"
        "\"ExposedPorts\":{\"9000/tcp\":{}}},\"rootfs\":{\"type\":\"layers\"}}",
        config);
}

static void free_blob(struct blob *b)
{
    free(b->data);
}

static void test_import_oci_archive(void **state)
{
    struct fixture *f = *state;
    struct blob layers[2], config, manifest, index;
    make_layers(f, layers, &config, true);
    char *m = xasprintf("{\"schemaVersion\":2,\"mediaType\":\"application/"
                        "vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":"
                        "\"application/vnd.oci.image.config.v1+json\",\"digest\":\"%s\","
                        "\"size\":%zu},\"layers\":[{\"mediaType\":\"application/"
                        "vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"%s\",\"size\":%zu},"
                        "{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\","
                        "\"digest\":\"%s\",\"size\":%zu}]}",
                        config.digest, config.len, layers[0].digest, layers[0].len,
                        layers[1].digest, layers[1].len);
    blob_of_text(f, m, &manifest);
    char *i = xasprintf("{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"application/"
                        "vnd.oci.image.manifest.v1+json\",\"digest\":\"%s\",\"size\":%zu}]}",
                        manifest.digest, manifest.len);
    blob_of_text(f, i, &index);
    char names[4][100];
    const struct blob *blobs[] = {&layers[0], &layers[1], &config, &manifest};
    struct entry tar[6] = {
        {'f', "oci-layout", "{\"imageLayoutVersion\":\"1.0.0\"}", 0, 0, 0},
        {'f', "index.json", index.data, index.len, 0, 0},
    };
    for (int k = 0; k < 4; k++) {
        snprintf(names[k], sizeof names[k], "blobs/sha256/%s", blobs[k]->digest + 7);
        tar[2 + k] = (struct entry){'f', names[k], blobs[k]->data, blobs[k]->len, 0, 0};
    }
    char *path = xasprintf("%s/web.tar", f->dir);
    write_tar(path, false, tar, ARRAY_SIZE(tar));

    struct image img;
    assert_int_equal(
        image_import_archive(&f->store, "oci-archive", path, &img, f->err, sizeof f->err),
        SKIFF_OK);
    assert_string_equal(img.digest, manifest.digest);
    assert_int_equal(img.manifest.n_layers, 2);
    assert_string_equal(img.manifest.layers[1], layers[1].digest);
    assert_string_equal(img.config.cmd[0], "/srv/hello");
    assert_int_equal(img.config.port, 9000);
    char *gone = layer_file(f, layers[1].digest, "srv/gone");
    struct stat st;
    assert_int_equal(lstat(gone, &st), 0);
    assert_true(S_ISCHR(st.st_mode));
    free(gone);
    image_clear(&img);

    /* the same tarball named as a docker-archive says what it is */
    assert_int_equal(
        image_import_archive(&f->store, "docker-archive", path, &img, f->err, sizeof f->err),
        SKIFF_E_BAD_IMAGE);
    assert_non_null(strstr(f->err, "oci-archive:"));

    /* a blob whose name is not its digest: refused naming it */
    struct entry forged[ARRAY_SIZE(tar)];
    memcpy(forged, tar, sizeof forged);
    forged[2].data = layers[1].data;
    forged[2].size = layers[1].len;
    write_tar(path, false, forged, ARRAY_SIZE(forged));
    assert_int_equal(
        image_import_archive(&f->store, "oci-archive", path, &img, f->err, sizeof f->err),
        SKIFF_E_DIGEST_MISMATCH);
    assert_non_null(strstr(f->err, names[0]));

    /* not a tarball */
    assert_int_equal(file_write_atomic(path, "{}", 2, 0644), 0);
    assert_int_equal(
        image_import_archive(&f->store, "oci-archive", path, &img, f->err, sizeof f->err),
        SKIFF_E_NOT_AN_ARCHIVE);
    free(path);
    free(m);
    free(i);
    for (int k = 0; k < 2; k++)
        free_blob(&layers[k]);
    free_blob(&config);
    free_blob(&manifest);
    free_blob(&index);
}

static void test_import_docker_archive(void **state)
{
    struct fixture *f = *state;
    struct blob layers[2], config;
    make_layers(f, layers, &config, false);
    const char *manifest = "[{\"Config\":\"cfg.json\",\"RepoTags\":[\"web:1\"],"
                           "\"Layers\":[\"aaa/layer.tar\",\"bbb/layer.tar\",\"ccc/layer.tar\"]}]";
    /* ccc/layer.tar is a link to aaa's, as `docker save` writes a layer used twice */
    const struct entry tar[] = {
        {'f', "manifest.json", manifest, 0, 0, 0},
        {'f', "cfg.json", config.data, config.len, 0, 0},
        {'d', "aaa", NULL, 0, 0, 0},
        {'f', "aaa/layer.tar", layers[0].data, layers[0].len, 0, 0},
        {'f', "bbb/layer.tar", layers[1].data, layers[1].len, 0, 0},
        {'l', "ccc/layer.tar", "../aaa/layer.tar", 0, 0, 0},
    };
    char *path = xasprintf("%s/web.tar", f->dir);
    write_tar(path, false, tar, ARRAY_SIZE(tar));
    struct image img;
    assert_int_equal(
        image_import_archive(&f->store, "docker-archive", path, &img, f->err, sizeof f->err),
        SKIFF_OK);
    assert_string_equal(img.digest, config.digest);
    assert_int_equal(img.manifest.n_layers, 3);
    assert_string_equal(img.manifest.layers[0], layers[0].digest);
    assert_string_equal(img.manifest.layers[2], layers[0].digest);
    char *hello = layer_file(f, layers[0].digest, "srv/hello");
    assert_int_equal(access(hello, X_OK), 0);
    free(hello);
    image_clear(&img);

    /* a layer named in manifest.json but missing from the tarball */
    const struct entry missing[] = {tar[0], tar[1], tar[3]};
    write_tar(path, false, missing, ARRAY_SIZE(missing));
    assert_int_equal(
        image_import_archive(&f->store, "docker-archive", path, &img, f->err, sizeof f->err),
        SKIFF_E_BAD_IMAGE);
    assert_non_null(strstr(f->err, "bbb/layer.tar"));
    free(path);
    for (int k = 0; k < 2; k++)
        free_blob(&layers[k]);
    free_blob(&config);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_blob_verified_while_streaming, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_full_disk_is_insufficient_storage_not_internal,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_layer_unpacks_owned_and_without_setuid, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_layer_whiteouts_in_overlay_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_layer_refuses_escaping_paths, setup, teardown),
        cmocka_unit_test_setup_teardown(test_layer_streamed_is_kept_only_when_its_digest_matched,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_gc_keeps_what_is_named_and_waits_for_pulls, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_user_names_resolve_through_the_image, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_files_are_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_files_are_never_read_through_links, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_layer_refuses_writing_through_links, setup, teardown),
        cmocka_unit_test_setup_teardown(test_layer_refuses_hard_links_outside, setup, teardown),
        cmocka_unit_test_setup_teardown(test_layer_refuses_devices, setup, teardown),
        cmocka_unit_test_setup_teardown(test_layer_limits_and_garbage, setup, teardown),
        cmocka_unit_test(test_config_decides_the_process),
        cmocka_unit_test(test_manifest_and_index),
        cmocka_unit_test(test_record_round_trip),
        cmocka_unit_test(test_a_hostile_record_is_refused),
        cmocka_unit_test_setup_teardown(test_import_oci_archive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_import_docker_archive, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
