/* package: checks and unpacks uploaded archives (tar, tar.gz, zip) with libarchive.
 *
 * One walk serves both calls: package_check reads every entry (and its data, so that the
 * unpacked size is measured, not trusted from headers) and package_extract does the same
 * while writing to disk. An entry is refused when its path is absolute or has a ".."
 * component, when it is a device, fifo or socket, when it is a symlink whose target leaves
 * the folder, or when it is a hard link to a path that is itself refused. */
#include "stager/stager.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/err.h"
#include "common/util.h"

#define PACKAGE_BLOCK 65536

static int package__fail(char *err, size_t errsize, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int package__fail(char *err, size_t errsize, int code, const char *fmt, ...)
{
    if (err && errsize) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errsize, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* Drops leading "./" and "/"-runs so "./a//b" and "a/b" are the same entry. Returns a
 * pointer into path. */
static const char *package__skip_dot_prefix(const char *path)
{
    while (path[0] == '.' && path[1] == '/') {
        path += 2;
        while (*path == '/')
            path++;
    }
    return path;
}

/* Depth of a relative path inside the folder, or -1 when it has ".." or is absolute.
 * "a/b/c" is depth 3; "." components do not count. */
static int package__path_depth(const char *path)
{
    if (path[0] == '/')
        return -1;
    int depth = 0;
    const char *p = path;
    while (*p) {
        const char *end = strchr(p, '/');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return -1;
        if (n > 0 && !(n == 1 && p[0] == '.'))
            depth++;
        p += n;
        while (*p == '/')
            p++;
    }
    return depth;
}

/* A symlink at entry_path (depth = number of components including its own name) may point
 * upwards only with leading ".." components, and no further than the folder. A ".." after a
 * normal component is refused: through another symlink it could resolve anywhere. */
static bool package__symlink_stays_inside(const char *entry_path, const char *target)
{
    if (target[0] == '\0' || target[0] == '/')
        return false;
    int depth = package__path_depth(entry_path);
    if (depth < 1)
        return false;
    int level = depth - 1; /* the link lives in its parent folder */
    bool seen_name = false;
    const char *p = target;
    while (*p) {
        const char *end = strchr(p, '/');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.') {
            if (seen_name || --level < 0)
                return false;
        } else if (n > 0 && !(n == 1 && p[0] == '.')) {
            seen_name = true;
        }
        p += n;
        while (*p == '/')
            p++;
    }
    return true;
}

static const char *package__type_name(mode_t type)
{
    switch (type) {
    case AE_IFCHR:
        return "a character device";
    case AE_IFBLK:
        return "a block device";
    case AE_IFIFO:
        return "a fifo";
    case AE_IFSOCK:
        return "a socket";
    default:
        return "an unsupported file type";
    }
}

/* Checks one entry's name, type and link target; 0 or PACKAGE_UNSAFE with a message. */
static int package__check_entry(struct archive_entry *e, const char *name, char *err,
                                size_t errsize)
{
    if (name[0] == '/')
        return package__fail(err, errsize, PACKAGE_UNSAFE,
                             "entry '%s' has an absolute path: archive the app folder's "
                             "contents with relative paths",
                             name);
    if (package__path_depth(name) < 0)
        return package__fail(err, errsize, PACKAGE_UNSAFE,
                             "entry '%s' has a '..' component and would land outside the app "
                             "folder: remove it from the archive",
                             name);
    const char *hardlink = archive_entry_hardlink(e);
    if (hardlink) {
        const char *target = package__skip_dot_prefix(hardlink);
        if (target[0] == '\0' || package__path_depth(target) < 1)
            return package__fail(err, errsize, PACKAGE_UNSAFE,
                                 "entry '%s' is a hard link to '%s', outside the app folder: "
                                 "replace it with a copy of the file",
                                 name, hardlink);
        return 0;
    }
    mode_t type = archive_entry_filetype(e);
    if (type == AE_IFREG || type == AE_IFDIR)
        return 0;
    if (type == AE_IFLNK) {
        const char *target = archive_entry_symlink(e);
        if (!target || !package__symlink_stays_inside(name, target))
            return package__fail(err, errsize, PACKAGE_UNSAFE,
                                 "entry '%s' is a symlink to '%s', outside the app folder: "
                                 "replace it with a copy of what it points to",
                                 name, target ? target : "");
        return 0;
    }
    return package__fail(err, errsize, PACKAGE_UNSAFE,
                         "entry '%s' is %s: only files, folders and links are allowed", name,
                         package__type_name(type));
}

static struct archive *package__open(const char *archive_path)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_gzip(a);
    archive_read_support_filter_none(a);
    archive_read_support_format_tar(a);
    archive_read_support_format_gnutar(a);
    archive_read_support_format_zip(a);
    if (archive_read_open_filename(a, archive_path, PACKAGE_BLOCK) != ARCHIVE_OK) {
        archive_read_free(a);
        return NULL;
    }
    return a;
}

/* The one walk behind package_check (dir == NULL) and package_extract. */
static int package__walk(const char *archive_path, const char *dir, size_t max_unpacked, char *err,
                         size_t errsize)
{
    int rc = 0;
    struct archive *a = NULL, *disk = NULL;
    char *buf = NULL, *out_path = NULL, *out_link = NULL, *name = NULL;
    size_t total = 0;
    bool first = true;

    if (err && errsize)
        err[0] = '\0';
    struct stat st;
    if (stat(archive_path, &st) != 0)
        return package__fail(err, errsize, -errno, "cannot read the upload: %s",
                             skiff_strerror(-errno));
    a = package__open(archive_path);
    if (!a) {
        rc = package__fail(err, errsize, PACKAGE_NOT_ARCHIVE,
                           "the upload is not an archive: send a zip, tar or tar.gz file");
        goto done;
    }
    if (dir) {
        disk = archive_write_disk_new();
        /* Names are checked above and prefixed with dir, so they are absolute on purpose;
         * libarchive still refuses to write through a symlink made by an earlier entry. */
        archive_write_disk_set_options(disk,
                                       ARCHIVE_EXTRACT_TIME | ARCHIVE_EXTRACT_SECURE_SYMLINKS);
    }
    buf = xmalloc(PACKAGE_BLOCK);

    for (;;) {
        struct archive_entry *e;
        int r = archive_read_next_header(a, &e);
        if (r == ARCHIVE_EOF)
            break;
        if (r < ARCHIVE_WARN) {
            rc = first ? package__fail(err, errsize, PACKAGE_NOT_ARCHIVE,
                                       "the upload is not an archive (%s): send a zip, tar or "
                                       "tar.gz file",
                                       archive_error_string(a))
                       : package__fail(err, errsize, PACKAGE_UNSAFE,
                                       "the archive is damaged after %zu bytes (%s): create "
                                       "it again",
                                       total, archive_error_string(a));
            goto done;
        }
        first = false;
        const char *raw = archive_entry_pathname(e);
        if (!raw) {
            rc = package__fail(err, errsize, PACKAGE_UNSAFE,
                               "an entry has no readable name: create the archive again "
                               "with UTF-8 file names");
            goto done;
        }
        /* a copy: the entry's own string changes when it is renamed for extraction */
        free(name);
        name = xstrdup(raw[0] == '/' ? raw : package__skip_dot_prefix(raw));
        if ((rc = package__check_entry(e, name, err, errsize)) < 0)
            goto done;
        if (name[0] == '\0' || strcmp(name, ".") == 0)
            continue; /* the folder itself */
        if (archive_entry_filetype(e) == AE_IFREG) {
            la_int64_t declared = archive_entry_size_is_set(e) ? archive_entry_size(e) : 0;
            if (max_unpacked && declared > 0 && (size_t)declared > max_unpacked - total)
                goto too_large;
        }

        if (disk) {
            free(out_path);
            out_path = xasprintf("%s/%s", dir, name);
            archive_entry_set_pathname(e, out_path);
            const char *hardlink = archive_entry_hardlink(e);
            if (hardlink) {
                free(out_link);
                out_link = xasprintf("%s/%s", dir, package__skip_dot_prefix(hardlink));
                archive_entry_set_hardlink(e, out_link);
            }
            /* No set-id bits from strangers' archives, and always readable by the owner. */
            archive_entry_set_perm(e, (archive_entry_perm(e) & 0777) | 0600);
            if (archive_write_header(disk, e) < ARCHIVE_WARN) {
                rc = package__fail(err, errsize, PACKAGE_UNSAFE,
                                   "entry '%s' cannot be unpacked (%s): fix or remove it", name,
                                   archive_error_string(disk));
                goto done;
            }
        }
        for (;;) {
            la_ssize_t n = archive_read_data(a, buf, PACKAGE_BLOCK);
            if (n == 0)
                break;
            if (n < 0) {
                rc = package__fail(err, errsize, PACKAGE_UNSAFE,
                                   "entry '%s' is damaged (%s): create the archive again", name,
                                   archive_error_string(a));
                goto done;
            }
            total += (size_t)n;
            if (max_unpacked && total > max_unpacked)
                goto too_large;
            if (disk && archive_write_data(disk, buf, (size_t)n) < 0) {
                rc = package__fail(err, errsize, -EIO, "entry '%s' cannot be written (%s)", name,
                                   archive_error_string(disk));
                goto done;
            }
        }
        if (disk && archive_write_finish_entry(disk) < ARCHIVE_WARN) {
            rc = package__fail(err, errsize, -EIO, "entry '%s' cannot be written (%s)", name,
                               archive_error_string(disk));
            goto done;
        }
    }
    if (first) {
        /* libarchive reads an empty file as an empty tar; an upload must have content. */
        rc = package__fail(err, errsize, PACKAGE_NOT_ARCHIVE,
                           "the upload is empty or not an archive: send a zip, tar or tar.gz "
                           "file of the app folder");
    }
    goto done;

too_large:
    rc = package__fail(err, errsize, PACKAGE_TOO_LARGE,
                       "the archive unpacks to more than %zu bytes: make the app smaller (leave "
                       "out build outputs and dependencies the buildpack installs)",
                       max_unpacked);
done:
    free(buf);
    free(name);
    free(out_path);
    free(out_link);
    if (disk) {
        archive_write_close(disk);
        archive_write_free(disk);
    }
    if (a)
        archive_read_free(a);
    return rc;
}

int package_check(const char *archive_path, size_t max_unpacked, char *err, size_t errsize)
{
    return package__walk(archive_path, NULL, max_unpacked, err, errsize);
}

int package_extract(const char *archive_path, const char *dir, size_t max_unpacked, char *err,
                    size_t errsize)
{
    return package__walk(archive_path, dir, max_unpacked, err, errsize);
}
