/* Unit tests for stager/package: every archive is built here with libarchive's writer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <archive.h>
#include <archive_entry.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "common/util.h"
#include "stager/stager.h"

enum kind { KIND_TAR, KIND_TGZ, KIND_ZIP };

/* One entry to write: type is 'f' file, 'd' folder, 'l' symlink, 'h' hard link, 'p' fifo,
 * 'c' character device. For links, data is the target. */
struct entry {
    char type;
    const char *name;
    const char *data;
    size_t size; /* for 'f': bytes of filler when data is NULL */
};

struct fixture {
    char dir[64];
    char *archive;
    char *out;
};

static int setup(void **state)
{
    struct fixture *f = xcalloc(1, sizeof(*f));
    strcpy(f->dir, "/tmp/skiff-pkg-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    f->archive = xasprintf("%s/upload", f->dir);
    f->out = xasprintf("%s/out", f->dir);
    mkdir(f->out, 0755);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    rm_rf(f->dir);
    free(f->archive);
    free(f->out);
    free(f);
    return 0;
}

static void write_archive(const char *path, enum kind kind, const struct entry *entries, size_t n)
{
    struct archive *a = archive_write_new();
    if (kind == KIND_ZIP) {
        archive_write_set_format_zip(a);
    } else {
        archive_write_set_format_pax_restricted(a);
        if (kind == KIND_TGZ)
            archive_write_add_filter_gzip(a);
    }
    assert_int_equal(archive_write_open_filename(a, path), ARCHIVE_OK);
    for (size_t i = 0; i < n; i++) {
        const struct entry *en = &entries[i];
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, en->name);
        size_t size = 0;
        switch (en->type) {
        case 'f':
            size = en->data ? strlen(en->data) : en->size;
            archive_entry_set_filetype(e, AE_IFREG);
            archive_entry_set_perm(e, 0644);
            archive_entry_set_size(e, (la_int64_t)size);
            break;
        case 'd':
            archive_entry_set_filetype(e, AE_IFDIR);
            archive_entry_set_perm(e, 0755);
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
        case 'p':
            archive_entry_set_filetype(e, AE_IFIFO);
            archive_entry_set_perm(e, 0644);
            break;
        case 'c':
            archive_entry_set_filetype(e, AE_IFCHR);
            archive_entry_set_perm(e, 0644);
            archive_entry_set_rdev(e, makedev(1, 3));
            break;
        }
        assert_int_equal(archive_write_header(a, e), ARCHIVE_OK);
        if (en->type == 'f') {
            if (en->data) {
                archive_write_data(a, en->data, size);
            } else {
                char block[4096];
                memset(block, 'x', sizeof(block));
                for (size_t done = 0; done < size;) {
                    size_t chunk = size - done < sizeof(block) ? size - done : sizeof(block);
                    archive_write_data(a, block, chunk);
                    done += chunk;
                }
            }
        }
        archive_entry_free(e);
    }
    archive_write_close(a);
    archive_write_free(a);
}

static char *read_text(const char *dir, const char *name)
{
    char *path = xasprintf("%s/%s", dir, name);
    char *data = NULL;
    int rc = file_read(path, &data, NULL);
    free(path);
    return rc == 0 ? data : NULL;
}

static const struct entry app_entries[] = {
    {'d', "./", NULL, 0},
    {'f', "./app.py", "print('hi')\n", 0},
    {'d', "./lib", NULL, 0},
    {'f', "./lib/util.py", "X = 1\n", 0},
    {'l', "./lib/current", "util.py", 0},
    {'l', "./lib/up", "../app.py", 0},
    {'h', "./lib/copy.py", "./lib/util.py", 0},
};

static void check_extracts(struct fixture *f, enum kind kind)
{
    write_archive(f->archive, kind, app_entries, ARRAY_SIZE(app_entries));
    char err[512];
    assert_int_equal(package_check(f->archive, 0, err, sizeof(err)), 0);
    assert_int_equal(package_extract(f->archive, f->out, 0, err, sizeof(err)), 0);
    char *s = read_text(f->out, "app.py");
    assert_non_null(s);
    assert_string_equal(s, "print('hi')\n");
    free(s);
    s = read_text(f->out, "lib/current");
    assert_non_null(s);
    assert_string_equal(s, "X = 1\n");
    free(s);
    if (kind != KIND_ZIP) { /* zip has no hard links: the writer stores an empty file */
        s = read_text(f->out, "lib/copy.py");
        assert_non_null(s);
        assert_string_equal(s, "X = 1\n");
        free(s);
    }
}

static void test_tar_extracts(void **state)
{
    check_extracts(*state, KIND_TAR);
}
static void test_tgz_extracts(void **state)
{
    check_extracts(*state, KIND_TGZ);
}
static void test_zip_extracts(void **state)
{
    check_extracts(*state, KIND_ZIP);
}

/* Writes one bad entry after a good one and expects `code` with `name` in the message,
 * from both calls, and nothing written outside the output folder. */
static void expect_refused(struct fixture *f, enum kind kind, struct entry bad, int code,
                           const char *needle)
{
    struct entry entries[] = {{'f', "ok.txt", "fine", 0}, bad};
    write_archive(f->archive, kind, entries, 2);
    char err[512] = "";
    assert_int_equal(package_check(f->archive, 0, err, sizeof(err)), code);
    if (!strstr(err, needle))
        fail_msg("message '%s' does not name '%s'", err, needle);
    err[0] = '\0';
    assert_int_equal(package_extract(f->archive, f->out, 0, err, sizeof(err)), code);
    if (!strstr(err, needle))
        fail_msg("message '%s' does not name '%s'", err, needle);
    char *outside = xasprintf("%s/evil", f->dir);
    assert_int_not_equal(access(outside, F_OK), 0);
    free(outside);
}

static void test_refuses_dotdot(void **state)
{
    struct fixture *f = *state;
    expect_refused(f, KIND_TAR, (struct entry){'f', "../evil", "x", 0}, PACKAGE_UNSAFE,
                   "'../evil'");
    expect_refused(f, KIND_ZIP, (struct entry){'f', "a/../../evil", "x", 0}, PACKAGE_UNSAFE,
                   "'a/../../evil'");
}

static void test_refuses_absolute(void **state)
{
    struct fixture *f = *state;
    char *abs = xasprintf("%s/evil", f->dir);
    expect_refused(f, KIND_TGZ, (struct entry){'f', abs, "x", 0}, PACKAGE_UNSAFE, abs);
    free(abs);
}

static void test_refuses_symlink_outside(void **state)
{
    struct fixture *f = *state;
    expect_refused(f, KIND_TAR, (struct entry){'l', "evil", "/etc/passwd", 0}, PACKAGE_UNSAFE,
                   "'evil'");
    expect_refused(f, KIND_TAR, (struct entry){'l', "a/evil", "../../etc", 0}, PACKAGE_UNSAFE,
                   "'a/evil'");
    /* ".." after a name could resolve through another link: refused */
    expect_refused(f, KIND_TGZ, (struct entry){'l', "a/b/evil", "x/../../..", 0}, PACKAGE_UNSAFE,
                   "'a/b/evil'");
}

static void test_refuses_hardlink_outside(void **state)
{
    struct fixture *f = *state;
    expect_refused(f, KIND_TAR, (struct entry){'h', "evil", "/etc/passwd", 0}, PACKAGE_UNSAFE,
                   "'evil'");
    expect_refused(f, KIND_TAR, (struct entry){'h', "evil", "../x", 0}, PACKAGE_UNSAFE, "'evil'");
}

static void test_refuses_devices_and_fifos(void **state)
{
    struct fixture *f = *state;
    expect_refused(f, KIND_TAR, (struct entry){'p', "pipe", NULL, 0}, PACKAGE_UNSAFE,
                   "'pipe' is a fifo");
    expect_refused(f, KIND_TGZ, (struct entry){'c', "null", NULL, 0}, PACKAGE_UNSAFE,
                   "'null' is a character device");
}

static void test_refuses_too_large(void **state)
{
    struct fixture *f = *state;
    /* compresses to almost nothing but unpacks to 2 MB: the measured size counts */
    struct entry entries[] = {{'f', "a.bin", NULL, 1 << 20}, {'f', "b.bin", NULL, 1 << 20}};
    write_archive(f->archive, KIND_ZIP, entries, 2);
    char err[512];
    assert_int_equal(package_check(f->archive, 1500000, err, sizeof(err)), PACKAGE_TOO_LARGE);
    assert_non_null(strstr(err, "1500000 bytes"));
    assert_int_equal(package_extract(f->archive, f->out, 1500000, err, sizeof(err)),
                     PACKAGE_TOO_LARGE);
    assert_int_equal(package_check(f->archive, 3000000, err, sizeof(err)), 0);
    assert_int_equal(package_check(f->archive, 0, err, sizeof(err)), 0);
}

static void test_not_an_archive(void **state)
{
    struct fixture *f = *state;
    char err[512];
    assert_int_equal(file_write_atomic(f->archive, "just some text\n", 15, 0644), 0);
    assert_int_equal(package_check(f->archive, 0, err, sizeof(err)), PACKAGE_NOT_ARCHIVE);
    assert_non_null(strstr(err, "not an archive"));
    assert_int_equal(file_write_atomic(f->archive, "", 0, 0644), 0);
    assert_int_equal(package_check(f->archive, 0, err, sizeof(err)), PACKAGE_NOT_ARCHIVE);
    assert_int_equal(package_extract(f->archive, f->out, 0, err, sizeof(err)), PACKAGE_NOT_ARCHIVE);
}

/* Damaged uploads (truncated, bytes flipped) get an error code, never a crash. */
static void test_damaged_archives(void **state)
{
    struct fixture *f = *state;
    for (int kind = KIND_TAR; kind <= KIND_ZIP; kind++) {
        write_archive(f->archive, (enum kind)kind, app_entries, ARRAY_SIZE(app_entries));
        char *good = NULL;
        size_t len = 0;
        assert_int_equal(file_read(f->archive, &good, &len), 0);
        srand(1234 + kind);
        for (int round = 0; round < 60; round++) {
            char *bad = xmalloc(len);
            memcpy(bad, good, len);
            size_t cut = round < 20 ? (size_t)rand() % len : len;
            for (int flips = round < 20 ? 0 : 1 + rand() % 8; flips > 0; flips--)
                bad[(size_t)rand() % len] ^= (char)(1 + rand() % 255);
            assert_int_equal(file_write_atomic(f->archive, bad, cut, 0644), 0);
            free(bad);
            char err[512];
            int rc = package_check(f->archive, 1 << 20, err, sizeof(err));
            assert_true(rc == 0 || rc == PACKAGE_NOT_ARCHIVE || rc == PACKAGE_UNSAFE ||
                        rc == PACKAGE_TOO_LARGE);
            if (rc < 0)
                assert_true(strlen(err) > 0);
            rm_rf(f->out);
            mkdir(f->out, 0755);
            rc = package_extract(f->archive, f->out, 1 << 20, err, sizeof(err));
            assert_true(rc <= 0);
        }
        free(good);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tar_extracts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tgz_extracts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_zip_extracts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuses_dotdot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuses_absolute, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuses_symlink_outside, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuses_hardlink_outside, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuses_devices_and_fifos, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuses_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_an_archive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_archives, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
