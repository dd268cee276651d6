/* Unit tests for blobs/: digests, put/get/has/delete/gc, a blob whose content no longer
 * matches its name, droplets packed and unpacked (and hostile tars refused), a droplet
 * materialised from the blob store, and blob_fetch against a small HTTP server of the test's
 * (a good blob, a mismatch, one too large, a refusal, the next URL). The store tests run twice:
 * on files (the embedded store) and on PostgreSQL in a throwaway server
 * (scripts/pg-throwaway.sh), as tests/unit/test_store.c does. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <archive.h>
#include <archive_entry.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "blobs/blobs.h"
#include "common/util.h"
#include "store/store.h"
#include "blob_server.h"
#include "pg_throwaway.h"

struct env {
    char *home;
    char *location; /* the store's: a SQLite file, or a database on the server */
    struct store *st;
    struct blob_store *bs;
};

static int env_setup(void **state)
{
    struct env *e = xcalloc(1, sizeof *e);
    char dir[] = "/tmp/skiff-test-blobs-XXXXXX";
    assert_non_null(mkdtemp(dir));
    e->home = xstrdup(dir);
    if (pg_throwaway_dir) {
        e->location = pg_throwaway_database();
    } else {
        e->location = xasprintf("%s/skiff.db", e->home);
    }
    char err[256];
    assert_int_equal(store_open(e->location, err, sizeof err, &e->st), 0);
    assert_int_equal(blob_store_open(e->location, e->home, &e->bs), 0);
    assert_int_equal(blob_store_in_database(e->bs), pg_throwaway_dir != NULL);
    *state = e;
    return 0;
}

static int env_teardown(void **state)
{
    struct env *e = *state;
    blob_store_close(e->bs);
    store_close(e->st);
    rm_rf(e->home);
    free(e->home);
    free(e->location);
    free(e);
    return 0;
}

static char *write_file(const char *dir, const char *name, const void *data, size_t len)
{
    char *path = xasprintf("%s/%s", dir, name);
    assert_int_equal(file_write_atomic(path, data, len, 0600), 0);
    return path;
}

static bool file_is(const char *path, const void *data, size_t len)
{
    char *got = NULL;
    size_t n = 0;
    bool same = file_read(path, &got, &n) == 0 && n == len && memcmp(got, data, len) == 0;
    free(got);
    return same;
}

static size_t dir_entries(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return 0;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

/* ---- digests ------------------------------------------------------------------------------- */

static void test_digests_are_checked_strictly(void **state)
{
    (void)state;
    const char *good = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert_true(blob_digest_valid(good));
    assert_false(blob_digest_valid(NULL));
    assert_false(blob_digest_valid(""));
    assert_false(blob_digest_valid(
        "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"));
    assert_false(blob_digest_valid(
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85"));
    assert_false(blob_digest_valid(
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8555"));
    assert_false(blob_digest_valid(
        "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    assert_false(blob_digest_valid(
        "sha256:../../../../etc/passwd/0000000000000000000000000000000000000000"));
    assert_false(blob_digest_valid(
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85/"));
}

/* ---- the store ----------------------------------------------------------------------------- */

static void test_put_get_has_delete_round_trip(void **state)
{
    struct env *e = *state;
    /* three chunks and a bit: the chunked backend's edges */
    size_t len = 3 * BLOB_CHUNK_BYTES + 17;
    char *data = xmalloc(len);
    for (size_t i = 0; i < len; i++)
        data[i] = (char)(i * 7 + i / 4096);
    char *src = write_file(e->home, "src", data, len);
    char digest[BLOB_DIGEST_LEN + 1], again[BLOB_DIGEST_LEN + 1];
    uint64_t size = 0;
    assert_int_equal(blob_put_file(e->bs, src, digest, &size), 0);
    assert_true(blob_digest_valid(digest));
    assert_int_equal(size, len);
    assert_int_equal(blob_put_file(e->bs, src, again, NULL), 0); /* the same content: once */
    assert_string_equal(digest, again);
    uint64_t has = 0;
    assert_int_equal(blob_has(e->bs, digest, &has), 0);
    assert_int_equal(has, len);
    char *dest = xasprintf("%s/got", e->home);
    assert_int_equal(blob_get_file(e->bs, digest, dest, 0), 0);
    assert_true(file_is(dest, data, len));
    unlink(dest);
    assert_int_equal(blob_get_file(e->bs, digest, dest, len - 1), -EFBIG);
    assert_int_equal(access(dest, F_OK), -1);
    /* an empty blob is a blob too */
    char *empty = write_file(e->home, "empty", "", 0);
    char edigest[BLOB_DIGEST_LEN + 1];
    assert_int_equal(blob_put_file(e->bs, empty, edigest, NULL), 0);
    assert_string_equal(edigest,
                        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_int_equal(blob_get_file(e->bs, edigest, dest, 0), 0);
    assert_true(file_is(dest, "", 0));
    assert_int_equal(blob_delete(e->bs, digest), 0);
    assert_int_equal(blob_delete(e->bs, digest), -ENOENT);
    assert_int_equal(blob_has(e->bs, digest, NULL), -ENOENT);
    assert_int_equal(blob_get_file(e->bs, digest, dest, 0), -ENOENT);
    assert_int_equal(blob_has(e->bs, "sha256:../x", NULL), -EINVAL);
    free(empty);
    free(dest);
    free(src);
    free(data);
}

static void test_gc_deletes_only_what_nothing_references(void **state)
{
    struct env *e = *state;
    char *a = write_file(e->home, "a", "kept", 4);
    char *b = write_file(e->home, "b", "unreferenced", 12);
    char da[BLOB_DIGEST_LEN + 1], db[BLOB_DIGEST_LEN + 1];
    assert_int_equal(blob_put_file(e->bs, a, da, NULL), 0);
    assert_int_equal(blob_put_file(e->bs, b, db, NULL), 0);
    /* the store names one of them (as a package row would) */
    struct store_app app = {.name = "gc", .state = "STOPPED", .kind = "app", .memory_mb = 64};
    uuid_generate_v4(app.guid);
    assert_int_equal(store_app_create(e->st, &app), 0);
    struct store_package pkg = {.app_guid = app.guid, .path = a, .bytes = 4, .digest = da};
    uuid_generate_v4(pkg.guid);
    assert_int_equal(store_package_add(e->st, &pkg), 0);
    char **refs = NULL;
    assert_int_equal(store_blob_refs(e->st, &refs), 0);
    assert_non_null(refs[0]);
    assert_string_equal(refs[0], da);
    assert_null(refs[1]);
    size_t n = 0;
    /* young blobs are kept: they may be on their way into a row */
    assert_int_equal(blob_gc(e->bs, (const char *const *)refs, 1, 60000, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(blob_gc(e->bs, (const char *const *)refs, 1, -1000, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(blob_has(e->bs, da, NULL), 0);
    assert_int_equal(blob_has(e->bs, db, NULL), -ENOENT);
    strv_free(refs);
    struct store_package *got = NULL;
    assert_int_equal(store_package_get(e->st, pkg.guid, &got), 0);
    assert_string_equal(got->digest, da);
    store_package_free(got);
    free(a);
    free(b);
}

/* "sha256:HEX" of a file's content. */
static void file_digest(const char *path, char out[BLOB_DIGEST_LEN + 1])
{
    char *data = NULL;
    size_t len = 0;
    assert_int_equal(file_read(path, &data, &len), 0);
    unsigned char sum[32];
    assert_int_equal(EVP_Digest(data, len, sum, NULL, EVP_sha256(), NULL), 1);
    free(data);
    strcpy(out, "sha256:");
    for (int i = 0; i < 32; i++)
        sprintf(out + 7 + 2 * i, "%02x", sum[i]);
}

/* An image droplet's further blobs (its config and layers): put as files that are never written
 * again (linked, not copied, on the files backend), named by the droplet's row, so kept by the
 * collection as long as the row is there and no longer. */
static void test_an_image_droplets_config_and_layers_are_kept_by_its_row(void **state)
{
    struct env *e = *state;
    char *layer = write_file(e->home, "layer", "a layer's compressed tar", 24);
    char *config = write_file(e->home, "config", "{\"config\":{}}", 13);
    char *stray = write_file(e->home, "stray", "another layer", 13);
    char dl[BLOB_DIGEST_LEN + 1], dc[BLOB_DIGEST_LEN + 1], ds[BLOB_DIGEST_LEN + 1];
    file_digest(layer, dl);
    file_digest(config, dc);
    file_digest(stray, ds);
    /* a layer pulled long ago: put now, it is young (no row names it yet) */
    struct timespec old[2] = {{.tv_sec = time(NULL) - 3600}, {.tv_sec = time(NULL) - 3600}};
    assert_int_equal(utimensat(AT_FDCWD, layer, old, 0), 0);
    assert_int_equal(blob_put_immutable(e->bs, layer, dl), 0);
    assert_int_equal(blob_put_immutable(e->bs, config, dc), 0);
    assert_int_equal(blob_put_immutable(e->bs, stray, ds), 0);
    assert_int_equal(blob_put_immutable(e->bs, layer, dl), 0); /* there already */
    assert_int_equal(blob_put_immutable(e->bs, layer, "sha256:../x"), -EINVAL);
    uint64_t size = 0;
    assert_int_equal(blob_has(e->bs, dl, &size), 0);
    assert_int_equal(size, 24);
    if (!pg_throwaway_dir) { /* the same file, not a copy */
        char *blob = xasprintf("%s/blobs/sha256/%s", e->home, dl + 7);
        struct stat a, b;
        assert_int_equal(stat(layer, &a), 0);
        assert_int_equal(stat(blob, &b), 0);
        assert_true(a.st_ino == b.st_ino && a.st_dev == b.st_dev);
        free(blob);
    } else { /* content that is not the digest said is refused */
        char *other = write_file(e->home, "other", "not the layer", 13);
        assert_int_equal(blob_put_immutable(e->bs, other,
                                            "sha256:"
                                            "00000000000000000000000000000000"
                                            "00000000000000000000000000000000"),
                         -EBADMSG);
        char od[BLOB_DIGEST_LEN + 1];
        file_digest(other, od); /* stored under its own name: nothing names it */
        assert_int_equal(blob_delete(e->bs, od), 0);
        free(other);
    }
    char *dest = xasprintf("%s/got", e->home);
    assert_int_equal(blob_get_file(e->bs, dl, dest, 0), 0);
    assert_true(file_is(dest, "a layer's compressed tar", 24));
    size_t n = 0;
    assert_int_equal(blob_gc(e->bs, NULL, 0, 60000, &n), 0);
    assert_int_equal(n, 0);
    struct store_app app = {.name = "img", .state = "STOPPED", .kind = "app", .memory_mb = 64};
    uuid_generate_v4(app.guid);
    assert_int_equal(store_app_create(e->st, &app), 0);
    char *blobs = xasprintf("%s %s", dc, dl);
    /* no digest of its own here, so that only its further blobs are named */
    struct store_droplet d = {.app_guid = app.guid, .path = e->home, .blobs = blobs};
    uuid_generate_v4(d.guid);
    assert_int_equal(store_droplet_add(e->st, &d), 0);
    struct store_droplet *got = NULL;
    assert_int_equal(store_droplet_get(e->st, d.guid, &got), 0);
    assert_string_equal(got->blobs, blobs);
    store_droplet_free(got);
    char **refs = NULL;
    assert_int_equal(store_blob_refs(e->st, &refs), 0);
    size_t n_refs = 0;
    while (refs[n_refs])
        n_refs++;
    assert_int_equal(n_refs, 2); /* one digest an entry */
    assert_true((!strcmp(refs[0], dc) && !strcmp(refs[1], dl)) ||
                (!strcmp(refs[0], dl) && !strcmp(refs[1], dc)));
    assert_int_equal(blob_gc(e->bs, (const char *const *)refs, n_refs, -1000, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(blob_has(e->bs, dl, NULL), 0);
    assert_int_equal(blob_has(e->bs, dc, NULL), 0);
    assert_int_equal(blob_has(e->bs, ds, NULL), -ENOENT);
    strv_free(refs);
    /* the row gone, so are they */
    assert_int_equal(store_droplet_delete(e->st, d.guid), 0);
    assert_int_equal(store_blob_refs(e->st, &refs), 0);
    assert_null(refs[0]);
    assert_int_equal(blob_gc(e->bs, (const char *const *)refs, 0, -1000, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(blob_has(e->bs, dl, NULL), -ENOENT);
    assert_int_equal(access(layer, F_OK), 0); /* a link removed, not the file it shared */
    strv_free(refs);
    free(blobs);
    free(dest);
    free(layer);
    free(config);
    free(stray);
}

/* Changes a stored blob's content behind the store's back. */
static void corrupt(struct env *e, const char *digest)
{
    if (pg_throwaway_dir) {
        char *sql = xasprintf("UPDATE blob_chunks SET data = 'forged'::bytea WHERE blob_id ="
                              " (SELECT id FROM blobs WHERE digest = '%s')",
                              digest);
        pg_throwaway_sql(e->location, sql);
        free(sql);
        return;
    }
    char *file = xasprintf("%s/blobs/sha256/%s", e->home, digest + 7);
    assert_int_equal(file_replace(file, "forged", 6, 0600), 0);
    free(file);
}

static void test_a_blob_that_does_not_match_its_digest_is_refused(void **state)
{
    struct env *e = *state;
    char *src = write_file(e->home, "src", "the real content", 16);
    char digest[BLOB_DIGEST_LEN + 1];
    assert_int_equal(blob_put_file(e->bs, src, digest, NULL), 0);
    corrupt(e, digest);
    char *dir = xasprintf("%s/out", e->home);
    assert_int_equal(mkdir(dir, 0700), 0);
    char *dest = xasprintf("%s/blob", dir);
    assert_int_equal(blob_get_file(e->bs, digest, dest, 0), -EBADMSG);
    assert_int_equal(dir_entries(dir), 0); /* nothing left, not even the temporary file */
    free(dest);
    free(dir);
    free(src);
}

/* ---- droplets ------------------------------------------------------------------------------ */

static void make_droplet(const char *dir)
{
    char *app = xasprintf("%s/app/bin", dir);
    assert_int_equal(mkdir_p(app, 0700), 0);
    char *script = xasprintf("%s/run.sh", app);
    assert_int_equal(file_write_atomic(script, "#!/bin/sh\necho hi\n", 18, 0755), 0);
    char *info = xasprintf("%s/staging_info.json", dir);
    assert_int_equal(file_write_atomic(info, "{}", 2, 0644), 0);
    char *link = xasprintf("%s/app/python", dir);
    assert_int_equal(symlink("/usr/bin/python3", link), 0);
    free(link);
    free(info);
    free(script);
    free(app);
}

static void test_a_droplet_packs_and_unpacks_with_modes_and_links(void **state)
{
    struct env *e = *state;
    char *drop = xasprintf("%s/droplet", e->home);
    make_droplet(drop);
    char *tar = NULL;
    assert_int_equal(blob_droplet_pack(drop, e->home, &tar), 0);
    char *out = xasprintf("%s/unpacked", e->home);
    assert_int_equal(blob_droplet_unpack(tar, out), 0);
    char *script = xasprintf("%s/app/bin/run.sh", out);
    assert_true(file_is(script, "#!/bin/sh\necho hi\n", 18));
    struct stat st;
    assert_int_equal(stat(script, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0755);
    char *link = xasprintf("%s/app/python", out);
    char target[64] = "";
    assert_true(readlink(link, target, sizeof target - 1) > 0);
    assert_string_equal(target, "/usr/bin/python3");
    assert_int_equal(blob_droplet_unpack(tar, out), -EEXIST); /* never into what exists */
    unlink(tar);
    free(tar);
    free(link);
    free(script);
    free(out);
    free(drop);
}

/* A tar with the entries given: name, then a symlink target or NULL for a file. */
static char *hostile_tar(const char *dir, const char *const *entries, size_t n)
{
    char *path = xasprintf("%s/hostile.tar", dir);
    struct archive *a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    assert_int_equal(archive_write_open_filename(a, path), ARCHIVE_OK);
    for (size_t i = 0; i < n; i += 2) {
        struct archive_entry *en = archive_entry_new();
        archive_entry_set_pathname(en, entries[i]);
        if (entries[i + 1]) {
            archive_entry_set_mode(en, AE_IFLNK | 0777);
            archive_entry_set_symlink(en, entries[i + 1]);
        } else {
            archive_entry_set_mode(en, AE_IFREG | 0644);
            archive_entry_set_size(en, 4);
        }
        archive_write_header(a, en);
        if (!entries[i + 1])
            archive_write_data(a, "evil", 4);
        archive_entry_free(en);
    }
    archive_write_close(a);
    archive_write_free(a);
    return path;
}

static void test_a_hostile_droplet_tar_is_refused_leaving_nothing(void **state)
{
    struct env *e = *state;
    char *victim = xasprintf("%s/victim", e->home);
    assert_int_equal(mkdir(victim, 0700), 0);
    char *through = xasprintf("%s/victim/", e->home);
    const char *const up[] = {"app/../../escaped", NULL};
    const char *const abs[] = {"/tmp/skiff-blobs-absolute", NULL};
    const char *const via_link[] = {"app", NULL, "link", through, "link/written", NULL};
    const char *const *cases[] = {up, abs, via_link};
    size_t sizes[] = {2, 2, 6};
    for (size_t i = 0; i < 3; i++) {
        char *tar = hostile_tar(e->home, cases[i], sizes[i]);
        char *out = xasprintf("%s/out", e->home);
        assert_int_equal(blob_droplet_unpack(tar, out), -EBADMSG);
        assert_int_equal(access(out, F_OK), -1);
        unlink(tar);
        free(tar);
        free(out);
    }
    assert_int_equal(dir_entries(victim), 0);
    assert_int_equal(access("/tmp/skiff-blobs-absolute", F_OK), -1);
    char *escaped = xasprintf("%s/escaped", e->home);
    assert_int_equal(access(escaped, F_OK), -1);
    free(escaped);
    free(through);
    free(victim);
}

struct ready {
    int calls;
    int rc;
    char app[37];
};

static void on_ready(void *ctx, const char *app_guid, int rc)
{
    struct ready *r = ctx;
    r->calls++;
    r->rc = rc;
    snprintf(r->app, sizeof r->app, "%s", app_guid);
}

static void test_a_droplet_missing_here_is_materialised_from_its_blob(void **state)
{
    struct env *e = *state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    char *drop = xasprintf("%s/made-elsewhere", e->home);
    make_droplet(drop);
    char *tar = NULL;
    assert_int_equal(blob_droplet_pack(drop, e->home, &tar), 0);
    char digest[BLOB_DIGEST_LEN + 1];
    assert_int_equal(blob_put_file(e->bs, tar, digest, NULL), 0);
    unlink(tar);
    free(tar);
    /* here, the folder the store names exists: it is used as it is */
    char *local = NULL;
    struct ready r = {0};
    assert_int_equal(blob_droplet_local(e->bs, &loop, drop, digest, "app-1", on_ready, &r, &local),
                     0);
    assert_string_equal(local, drop);
    free(local);
    /* another host's path: materialised once, whoever asks meanwhile */
    rm_rf(drop);
    assert_int_equal(blob_droplet_local(e->bs, &loop, drop, digest, "app-1", on_ready, &r, &local),
                     -EINPROGRESS);
    assert_int_equal(blob_droplet_local(e->bs, &loop, drop, digest, "app-1", on_ready, &r, &local),
                     -EINPROGRESS);
    while (r.calls == 0)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.rc, 0);
    assert_string_equal(r.app, "app-1");
    assert_int_equal(blob_droplet_local(e->bs, &loop, drop, digest, "app-1", on_ready, &r, &local),
                     0);
    char *expect = xasprintf("%s/blobs/droplets/%s", e->home, digest + 7);
    assert_string_equal(local, expect);
    char *script = xasprintf("%s/app/bin/run.sh", local);
    assert_true(file_is(script, "#!/bin/sh\necho hi\n", 18));
    free(script);
    free(expect);
    free(local);
    /* a blob that is not there: the failure is said once, and not tried again at once */
    const char *absent = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    struct ready r2 = {0};
    assert_int_equal(blob_droplet_local(e->bs, &loop, drop, absent, "app-2", on_ready, &r2, &local),
                     -EINPROGRESS);
    while (r2.calls == 0)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(r2.rc, -ENOENT);
    assert_int_equal(blob_droplet_local(e->bs, &loop, drop, absent, "app-2", on_ready, &r2, &local),
                     0);
    assert_string_equal(local, drop);
    free(local);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    free(drop);
}

/* ---- what is materialised here -------------------------------------------------------------- */

static char *cache_entry(const char *dir, char hexdigit, const char *suffix, bool folder)
{
    char hex[65];
    memset(hex, hexdigit, 64);
    hex[64] = '\0';
    char *path = xasprintf("%s/%s%s", dir, hex, suffix);
    if (folder) {
        char *app = xasprintf("%s/app", path);
        assert_int_equal(mkdir_p(app, 0700), 0);
        free(write_file(app, "app.py", "x", 1));
        free(app);
    } else {
        assert_int_equal(mkdir_p(dir, 0700), 0);
        assert_int_equal(file_write_atomic(path, "pkg", 3, 0600), 0);
    }
    return path;
}

static bool exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

struct cache_done {
    int calls, rc;
    size_t deleted, busy;
};

static void on_cache_gc(void *ctx, int rc, size_t deleted, size_t busy)
{
    struct cache_done *d = ctx;
    d->calls++;
    d->rc = rc;
    d->deleted = deleted;
    d->busy = busy;
}

static void test_cache_gc_removes_only_what_nothing_names_or_runs(void **state)
{
    struct env *e = *state;
    char *drops = xasprintf("%s/blobs/droplets", e->home);
    char *pkgs = xasprintf("%s/blobs/packages", e->home);
    char *named = cache_entry(drops, 'a', "", true);   /* a row names it */
    char *running = cache_entry(drops, 'b', "", true); /* an instance runs from it */
    char *unused = cache_entry(drops, 'c', "", true);
    char *unpacking = cache_entry(drops, 'd', "-1234", true); /* no digest: left alone */
    char *hidden = xasprintf("%s/.%s", drops, unused + strlen(drops) + 1);
    assert_int_equal(mkdir_p(hidden, 0700), 0);
    char *pkg_named = cache_entry(pkgs, 'a', ".docker", false);
    char *pkg_unused = cache_entry(pkgs, 'e', "", false);
    char *pkg_image = cache_entry(pkgs, 'f', ".oci", false);
    char *staging = cache_entry(pkgs, '1', "", false); /* a staging under way reads it */
    /* a link named as a digest, to a folder outside: the link goes, never what it points to */
    char *outside = xasprintf("%s/outside", e->home);
    assert_int_equal(mkdir_p(outside, 0700), 0);
    free(write_file(outside, "keep-me", "k", 1));
    char hex2[65];
    memset(hex2, '2', 64);
    hex2[64] = '\0';
    char *link = xasprintf("%s/%s", drops, hex2);
    assert_int_equal(symlink(outside, link), 0);

    char *digest_a = xasprintf("sha256:%.64s", named + strlen(drops) + 1);
    const char *keep[] = {digest_a};
    char *running_app = xasprintf("%s/app", running);
    char *near_miss = xasprintf("%s-other/app", unused); /* a prefix of its name is not in it */
    const char *in_use[] = {running_app, near_miss, staging};
    /* what came here after the list of names was read stays */
    size_t deleted = 9, busy = 9;
    assert_int_equal(
        blob_cache_gc(e->bs, keep, 1, in_use, 3, time_now_ms() - 60000, &deleted, &busy), 0);
    assert_int_equal(deleted, 0);
    assert_true(exists(unused) && exists(pkg_unused) && exists(link));

    assert_int_equal(blob_cache_gc(e->bs, keep, 1, in_use, 3, 0, &deleted, &busy), 0);
    assert_int_equal(deleted, 4); /* unused, the link, pkg_unused, pkg_image */
    assert_int_equal(busy, 2);    /* running, staging */
    assert_true(exists(named) && exists(running) && exists(pkg_named) && exists(staging));
    assert_false(exists(unused) || exists(pkg_unused) || exists(pkg_image) || exists(link));
    assert_true(exists(unpacking) && exists(hidden));
    char *kept = xasprintf("%s/keep-me", outside);
    assert_true(exists(kept));
    free(kept);

    /* on the loop: the instance has stopped, the staging ended */
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct cache_done d = {0};
    assert_int_equal(blob_cache_gc_async(e->bs, &loop, keep, 1, NULL, 0, on_cache_gc, &d), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    /* renamed into place just now: kept, as one materialised after the names were read */
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.rc, 0);
    assert_int_equal(d.busy, 0);
    assert_int_equal(blob_cache_gc(e->bs, keep, 1, NULL, 0, 0, &deleted, &busy), 0);
    assert_int_equal(deleted + d.deleted, 2);
    assert_false(exists(running) || exists(staging));
    assert_true(exists(named) && exists(pkg_named));

    char *s[] = {drops,  pkgs,      named,       running,   unused,  unpacking,
                 hidden, pkg_named, pkg_unused,  pkg_image, staging, outside,
                 link,   digest_a,  running_app, near_miss};
    for (size_t i = 0; i < sizeof s / sizeof *s; i++)
        free(s[i]);
}

static void test_a_package_fetched_here_has_one_place_the_cache_sweeps(void **state)
{
    struct env *e = *state;
    char digest[] = "sha256:"
                    "abababababababababababababababababababababababababababababababab";
    char *path = NULL;
    assert_int_equal(blob_package_local(e->bs, digest, "oci", &path), 0);
    char *want = xasprintf("%s/blobs/packages/%s.oci", e->home, digest + 7);
    assert_string_equal(path, want);
    free(path);
    assert_int_equal(blob_package_local(e->bs, digest, NULL, &path), 0);
    want[strlen(want) - strlen(".oci")] = '\0';
    assert_string_equal(path, want);
    /* the folder is made, and what is put there is what the cache's collection looks at */
    assert_int_equal(file_write_atomic(path, "p", 1, 0600), 0);
    size_t deleted = 0;
    assert_int_equal(blob_cache_gc(e->bs, NULL, 0, NULL, 0, 0, &deleted, NULL), 0);
    assert_int_equal(deleted, 1);
    assert_false(exists(path));
    free(path);
    free(want);

    /* a digest that would lead out of the folder is refused, and nothing is given */
    path = NULL;
    assert_int_equal(blob_package_local(e->bs, "sha256:../../../etc/passwd", NULL, &path), -EINVAL);
    assert_int_equal(blob_package_local(e->bs, "sha256:", "oci", &path), -EINVAL);
    assert_null(path);
}

/* ---- blob_fetch against a server of the test's ---------------------------------------------- */

struct fetched {
    int calls;
    int rc;
    char path[512];
    char why[512];
};

static void on_fetched(void *ctx, int rc, const char *path, const char *why)
{
    struct fetched *f = ctx;
    f->calls++;
    f->rc = rc;
    snprintf(f->path, sizeof f->path, "%s", path ? path : "");
    snprintf(f->why, sizeof f->why, "%s", why ? why : "");
}

static int fetch_now(const char *const *urls, const char *digest, const char *cache, uint64_t max,
                     struct fetched *f)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct blob_fetch_options opt = {.digest = digest,
                                     .urls = urls,
                                     .token = "skiffc_t0ken",
                                     .cache_dir = cache,
                                     .max_bytes = max};
    memset(f, 0, sizeof *f);
    int rc = blob_fetch(&loop, &opt, on_fetched, f);
    if (rc == 0) {
        assert_int_equal(f->calls, 0); /* never from inside the call */
        uv_run(&loop, UV_RUN_DEFAULT);
        assert_int_equal(f->calls, 1);
    }
    uv_loop_close(&loop);
    return rc;
}

#define HELLO_DIGEST "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"

static void test_fetch_verifies_bounds_and_falls_over_to_the_next_url(void **state)
{
    (void)state;
    char cache[] = "/tmp/skiff-test-fetch-XXXXXX";
    assert_non_null(mkdtemp(cache));
    struct blob_server good = {.body = "hello", .len = 5}, forged = {.body = "hellO", .len = 5};
    struct blob_server refusing = {.status = 403, .body = "{}", .len = 2};
    char good_url[64], forged_at[64], refusing_url[64];
    blob_server_start(&good, good_url);
    blob_server_start(&forged, forged_at);
    blob_server_start(&refusing, refusing_url);
    char *forged_url = xasprintf("%s/", forged_at); /* a URL ending in a slash works as well */
    struct fetched f;

    /* content that does not match: refused, nothing in the cache */
    const char *only_forged[] = {forged_url, NULL};
    assert_int_equal(fetch_now(only_forged, HELLO_DIGEST, cache, 0, &f), 0);
    assert_int_equal(f.rc, -EBADMSG);
    assert_non_null(strstr(f.why, "does not match its digest"));
    assert_int_equal(dir_entries(cache), 0);
    assert_string_equal(forged.path, "/v1/blobs/" HELLO_DIGEST);
    assert_string_equal(forged.auth, "Bearer skiffc_t0ken");

    /* past the bound: refused, nothing in the cache */
    const char *only_good[] = {good_url, NULL};
    assert_int_equal(fetch_now(only_good, HELLO_DIGEST, cache, 4, &f), 0);
    assert_int_equal(f.rc, -EFBIG);
    assert_int_equal(dir_entries(cache), 0);

    /* refused by one controller: -EACCES */
    const char *only_refusing[] = {refusing_url, NULL};
    assert_int_equal(fetch_now(only_refusing, HELLO_DIGEST, cache, 0, &f), 0);
    assert_int_equal(f.rc, -EACCES);

    /* the next URL gives it: verified, in the cache by its hex */
    const char *both[] = {refusing_url, forged_url, good_url, NULL};
    assert_int_equal(fetch_now(both, HELLO_DIGEST, cache, 0, &f), 0);
    assert_int_equal(f.rc, 0);
    char *expect = xasprintf("%s/%s", cache, HELLO_DIGEST + 7);
    assert_string_equal(f.path, expect);
    assert_true(file_is(expect, "hello", 5));
    assert_int_equal(dir_entries(cache), 1);
    /* there already: not fetched again */
    int before = good.requests;
    assert_int_equal(fetch_now(only_good, HELLO_DIGEST, cache, 0, &f), 0);
    assert_int_equal(f.rc, 0);
    assert_int_equal(good.requests, before);

    /* what is not a digest is refused before anything is asked */
    assert_int_equal(fetch_now(only_good, "sha256:../../etc/passwd", cache, 0, &f), -EINVAL);
    const char *none[] = {NULL};
    assert_int_equal(fetch_now(none, HELLO_DIGEST, cache, 0, &f), -EINVAL);

    blob_server_stop(&good);
    blob_server_stop(&forged);
    blob_server_stop(&refusing);
    free(expect);
    free(forged_url);
    rm_rf(cache);
}

/* ---- groups -------------------------------------------------------------------------------- */

#define BLOB_STORE_TESTS                                                                           \
    cmocka_unit_test_setup_teardown(test_put_get_has_delete_round_trip, env_setup, env_teardown),  \
        cmocka_unit_test_setup_teardown(test_gc_deletes_only_what_nothing_references, env_setup,   \
                                        env_teardown),                                             \
        cmocka_unit_test_setup_teardown(                                                           \
            test_an_image_droplets_config_and_layers_are_kept_by_its_row, env_setup,               \
            env_teardown),                                                                         \
        cmocka_unit_test_setup_teardown(test_a_blob_that_does_not_match_its_digest_is_refused,     \
                                        env_setup, env_teardown),                                  \
        cmocka_unit_test_setup_teardown(test_a_droplet_missing_here_is_materialised_from_its_blob, \
                                        env_setup, env_teardown)

int main(void)
{
    const struct CMUnitTest file_tests[] = {
        cmocka_unit_test(test_digests_are_checked_strictly),
        BLOB_STORE_TESTS,
        cmocka_unit_test_setup_teardown(test_a_droplet_packs_and_unpacks_with_modes_and_links,
                                        env_setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_a_hostile_droplet_tar_is_refused_leaving_nothing,
                                        env_setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_cache_gc_removes_only_what_nothing_names_or_runs,
                                        env_setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_a_package_fetched_here_has_one_place_the_cache_sweeps,
                                        env_setup, env_teardown),
        cmocka_unit_test(test_fetch_verifies_bounds_and_falls_over_to_the_next_url),
    };
    const struct CMUnitTest pg_tests[] = {BLOB_STORE_TESTS};
    int failed = cmocka_run_group_tests_name("blobs in files", file_tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("blobs in PostgreSQL", pg_tests, pg_throwaway_start,
                                          pg_throwaway_stop);
    return failed;
}
