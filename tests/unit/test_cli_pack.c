/* Unit tests for cli/pack: .cfignore/.skiffignore matching and the tar.gz a push uploads. */
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
#include <unistd.h>

#include "cli/pack.h"
#include "common/util.h"

static struct pack_ignore *ignore_of(const char *const *lines)
{
    char dir[] = "/tmp/skiff-pack-ig-XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct pack_ignore *ig = pack_ignore_load(dir); /* no ignore files: the built-in ones */
    rmdir(dir);
    for (; *lines; lines++)
        pack_ignore_add(ig, *lines);
    return ig;
}

static void test_ignore_patterns(void **state)
{
    (void)state;
    static const char *const lines[] = {"# a comment", "",          "*.log",     "tmp/",
                                        "/build",      "docs/*.md", "!keep.log", "**/cache",
                                        "secret?.txt", NULL};
    struct pack_ignore *ig = ignore_of(lines);
    assert_true(pack_ignore_match(ig, "app.log", false));
    assert_true(pack_ignore_match(ig, "deep/down/app.log", false));
    assert_false(pack_ignore_match(ig, "keep.log", false));
    assert_true(pack_ignore_match(ig, "tmp", true));
    assert_false(pack_ignore_match(ig, "tmp", false)); /* a file named tmp is kept */
    assert_true(pack_ignore_match(ig, "src/tmp", true));
    assert_true(pack_ignore_match(ig, "build", true));
    assert_false(pack_ignore_match(ig, "src/build", true)); /* anchored to the top */
    assert_true(pack_ignore_match(ig, "docs/readme.md", false));
    assert_false(pack_ignore_match(ig, "docs/api/readme.md", false));
    assert_false(pack_ignore_match(ig, "readme.md", false));
    assert_true(pack_ignore_match(ig, "cache", true));
    assert_true(pack_ignore_match(ig, "a/b/cache", true));
    assert_true(pack_ignore_match(ig, "secret1.txt", false));
    assert_false(pack_ignore_match(ig, "secret12.txt", false));
    assert_true(pack_ignore_match(ig, ".git", true));
    assert_false(pack_ignore_match(ig, "app.py", false));
    pack_ignore_free(ig);
}

static void test_double_star_between_folders(void **state)
{
    (void)state;
    static const char *const lines[] = {"a/**/b", "logs/**", "src/**/test_*.c", NULL};
    struct pack_ignore *ig = ignore_of(lines);
    assert_true(pack_ignore_match(ig, "a/b", false)); /* ** may be no folder at all */
    assert_true(pack_ignore_match(ig, "a/x/y/b", false));
    assert_false(pack_ignore_match(ig, "ab", false));
    assert_true(pack_ignore_match(ig, "logs/x/y", false));
    assert_false(pack_ignore_match(ig, "logsx/y", false));
    assert_true(pack_ignore_match(ig, "src/u/v/test_b.c", false));
    assert_false(pack_ignore_match(ig, "lib/test_b.c", false));
    pack_ignore_free(ig);
}

static void write_file(const char *dir, const char *rel, const char *text)
{
    char *path = xasprintf("%s/%s", dir, rel);
    char *slash = strrchr(path, '/');
    *slash = '\0';
    assert_int_equal(mkdir_p(path, 0755), 0);
    *slash = '/';
    assert_int_equal(file_write_atomic(path, text, strlen(text), 0644), 0);
    free(path);
}

static void test_pack_folder_honours_ignore_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/skiff-pack-XXXXXX";
    assert_non_null(mkdtemp(dir));
    write_file(dir, "app.py", "print('hi')\n");
    write_file(dir, "lib/util.py", "x = 1\n");
    write_file(dir, "debug.log", "noise\n");
    write_file(dir, "node_modules/big/index.js", "x\n");
    write_file(dir, ".git/HEAD", "ref\n");
    write_file(dir, ".cfignore", "*.log\n");
    write_file(dir, ".skiffignore", "node_modules/\n");
    char *link = xasprintf("%s/current", dir);
    assert_int_equal(symlink("lib/util.py", link), 0);
    free(link);

    FILE *out = tmpfile();
    assert_non_null(out);
    size_t files = 0;
    char *err = NULL;
    assert_int_equal(pack_folder(dir, out, &files, &err), 0);
    assert_null(err);
    rewind(out);

    /* read it back: what is in, what is not */
    struct archive *ar = archive_read_new();
    archive_read_support_filter_gzip(ar);
    archive_read_support_format_tar(ar);
    assert_int_equal(archive_read_open_FILE(ar, out), ARCHIVE_OK);
    struct archive_entry *e;
    char names[512] = "";
    size_t seen = 0;
    while (archive_read_next_header(ar, &e) == ARCHIVE_OK) {
        strcat(names, archive_entry_pathname(e));
        strcat(names, " ");
        if (strcmp(archive_entry_pathname(e), "current") == 0)
            assert_string_equal(archive_entry_symlink(e), "lib/util.py");
        if (strcmp(archive_entry_pathname(e), "app.py") == 0) {
            char data[64] = "";
            assert_int_equal(archive_read_data(ar, data, sizeof(data)), 12);
            assert_string_equal(data, "print('hi')\n");
        }
        seen++;
    }
    archive_read_free(ar);
    assert_string_equal(names, ".cfignore .skiffignore app.py current lib/ lib/util.py ");
    assert_int_equal(seen, files);
    fclose(out);
    assert_int_equal(rm_rf(dir), 0);
}

static void test_pack_missing_folder_says_which(void **state)
{
    (void)state;
    FILE *out = tmpfile();
    size_t files = 0;
    char *err = NULL;
    assert_int_not_equal(pack_folder("/nonexistent/skiff-app", out, &files, &err), 0);
    assert_non_null(err);
    assert_non_null(strstr(err, "/nonexistent/skiff-app"));
    free(err);
    fclose(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ignore_patterns),
        cmocka_unit_test(test_double_star_between_folders),
        cmocka_unit_test(test_pack_folder_honours_ignore_files),
        cmocka_unit_test(test_pack_missing_folder_says_which),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
