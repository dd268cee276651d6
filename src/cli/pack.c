/* pack: an app folder as tar.gz with libarchive, honouring .cfignore/.skiffignore. */
#include "cli/pack.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"

struct pack_pattern {
    char *glob;
    bool negate;
    bool dir_only;
    bool anchored; /* matched against the whole relative path, not just the last part */
};

struct pack_ignore {
    struct pack_pattern *items;
    size_t count;
};

void pack_ignore_add(struct pack_ignore *ig, const char *line)
{
    char *s = xstrdup(line);
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
    char *p = s;
    while (*p == ' ' || *p == '\t')
        p++;
    struct pack_pattern pat = {0};
    if (*p == '!') {
        pat.negate = true;
        p++;
    }
    n = strlen(p);
    if (n && p[n - 1] == '/') {
        pat.dir_only = true;
        p[--n] = '\0';
    }
    if (str_has_prefix(p, "./"))
        p += 2;
    if (*p == '/') {
        pat.anchored = true;
        p++;
    } else if (strchr(p, '/')) {
        pat.anchored = true;
    }
    if (*p && *p != '#' && strcmp(p, ".") != 0) {
        pat.glob = xstrdup(p);
        ig->items = xrealloc(ig->items, (ig->count + 1) * sizeof(*ig->items));
        ig->items[ig->count++] = pat;
    }
    free(s);
}

static void pack_ignore_load_file(struct pack_ignore *ig, const char *path)
{
    char *text;
    if (file_read(path, &text, NULL) != 0)
        return;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
        pack_ignore_add(ig, line);
    free(text);
}

struct pack_ignore *pack_ignore_load(const char *dir)
{
    struct pack_ignore *ig = xcalloc(1, sizeof(*ig));
    static const char *const always[] = {".git/", ".hg/", ".svn/", ".DS_Store"};
    for (size_t i = 0; i < ARRAY_SIZE(always); i++)
        pack_ignore_add(ig, always[i]);
    static const char *const files[] = {".cfignore", ".skiffignore"};
    for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
        char *path = xasprintf("%s/%s", dir, files[i]);
        pack_ignore_load_file(ig, path);
        free(path);
    }
    return ig;
}

static bool pack_glob_match(const char *glob, const char *path);

/* Whether the part of a glob before `**` matches the first len bytes of path. */
static bool pack_glob_head_match(const char *head, const char *path, size_t len)
{
    size_t hl = strlen(head);
    if (hl == 0)
        return true;
    char *prefix = xstrndup(path, len);
    bool ok = fnmatch(head, prefix, FNM_PATHNAME) == 0 ||
              (len > 0 && head[hl - 1] == '/' && fnmatch(head, prefix, 0) == 0);
    free(prefix);
    return ok;
}

/* Whether the part of a glob after `**` matches some end of path that starts a folder. */
static bool pack_glob_tail_match(const char *tail, const char *path)
{
    if (!*tail)
        return true;
    for (size_t j = 0;; j++) {
        if ((j == 0 || path[j - 1] == '/') && pack_glob_match(tail, path + j))
            return true;
        if (!path[j])
            return false;
    }
}

/* fnmatch with `**` meaning any number of folders: tries each way of consuming them. */
static bool pack_glob_match(const char *glob, const char *path)
{
    const char *star2 = strstr(glob, "**");
    if (!star2)
        return fnmatch(glob, path, FNM_PATHNAME) == 0;
    char *head = xstrndup(glob, (size_t)(star2 - glob));
    const char *tail = star2 + 2;
    if (*tail == '/')
        tail++;
    bool matched = false;
    /* head must match a prefix of path ending at a '/' (or be empty) */
    for (size_t i = 0; !matched; i++) {
        bool at_boundary = (i == 0 && !*head) || (i > 0 && path[i - 1] == '/');
        if (at_boundary && pack_glob_head_match(head, path, i))
            matched = pack_glob_tail_match(tail, path + i);
        if (!path[i])
            break;
    }
    free(head);
    return matched;
}

bool pack_ignore_match(const struct pack_ignore *ig, const char *rel_path, bool is_dir)
{
    const char *base = strrchr(rel_path, '/');
    base = base ? base + 1 : rel_path;
    bool ignored = false;
    for (size_t i = 0; i < ig->count; i++) {
        const struct pack_pattern *p = &ig->items[i];
        if (p->dir_only && !is_dir)
            continue;
        if (ignored == !p->negate)
            continue; /* it cannot change the answer */
        bool m = p->anchored ? pack_glob_match(p->glob, rel_path) : pack_glob_match(p->glob, base);
        if (m)
            ignored = !p->negate;
    }
    return ignored;
}

void pack_ignore_free(struct pack_ignore *ig)
{
    if (!ig)
        return;
    for (size_t i = 0; i < ig->count; i++)
        free(ig->items[i].glob);
    free(ig->items);
    free(ig);
}

struct pack_state {
    struct archive *ar;
    const struct pack_ignore *ig;
    const char *root;
    size_t files;
    char *err;
};

static la_ssize_t pack_write_cb(struct archive *a, void *arg, const void *data, size_t n)
{
    if (fwrite(data, 1, n, arg) != n) {
        archive_set_error(a, errno ? errno : EIO, "cannot write the archive: %s",
                          strerror(errno ? errno : EIO));
        return -1;
    }
    return (la_ssize_t)n;
}

static int pack_add_file(struct pack_state *st, const char *abs, const char *rel,
                         const struct stat *sb)
{
    int rc = 0, fd = -1;
    struct archive_entry *e = archive_entry_new();
    archive_entry_copy_stat(e, sb);
    archive_entry_set_pathname(e, rel);
    archive_entry_set_uid(e, 0);
    archive_entry_set_gid(e, 0);
    if (S_ISLNK(sb->st_mode)) {
        char target[4096];
        ssize_t n = readlink(abs, target, sizeof(target) - 1);
        if (n < 0) {
            st->err = xasprintf("cannot read the symlink %s: %s", abs, strerror(errno));
            rc = -1;
            goto done;
        }
        target[n] = '\0';
        archive_entry_set_symlink(e, target);
        archive_entry_set_size(e, 0);
    } else if (S_ISREG(sb->st_mode)) {
        fd = open(abs, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            st->err = xasprintf("cannot read %s: %s", abs, strerror(errno));
            rc = -1;
            goto done;
        }
    } else {
        archive_entry_set_size(e, 0);
    }
    if (archive_write_header(st->ar, e) != ARCHIVE_OK) {
        st->err = xasprintf("cannot pack %s: %s", abs, archive_error_string(st->ar));
        rc = -1;
        goto done;
    }
    if (fd >= 0) {
        char chunk[65536];
        ssize_t n;
        while ((n = read(fd, chunk, sizeof(chunk))) > 0)
            if (archive_write_data(st->ar, chunk, (size_t)n) < 0) {
                st->err = xasprintf("cannot pack %s: %s", abs, archive_error_string(st->ar));
                rc = -1;
                goto done;
            }
        if (n < 0) {
            st->err = xasprintf("cannot read %s: %s", abs, strerror(errno));
            rc = -1;
            goto done;
        }
    }
    st->files++;
done:
    if (fd >= 0)
        close(fd);
    archive_entry_free(e);
    return rc;
}

static int pack_walk(struct pack_state *st, const char *rel)
{
    char *abs = *rel ? xasprintf("%s/%s", st->root, rel) : xstrdup(st->root);
    DIR *d = opendir(abs);
    int rc = 0;
    if (!d) {
        st->err = xasprintf("cannot read the folder %s: %s", abs, strerror(errno));
        free(abs);
        return -1;
    }
    /* Sorted, so the same folder always packs the same way. */
    struct dirent **names = NULL;
    size_t count = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        names = xrealloc(names, (count + 1) * sizeof(*names));
        names[count] = xmalloc(sizeof(struct dirent));
        memcpy(names[count++], de, sizeof(struct dirent));
    }
    closedir(d);
    for (size_t i = 1; i < count; i++)
        for (size_t j = i; j > 0 && strcmp(names[j - 1]->d_name, names[j]->d_name) > 0; j--) {
            struct dirent *tmp = names[j];
            names[j] = names[j - 1];
            names[j - 1] = tmp;
        }
    for (size_t i = 0; i < count && rc == 0; i++) {
        char *child_rel =
            *rel ? xasprintf("%s/%s", rel, names[i]->d_name) : xstrdup(names[i]->d_name);
        char *child_abs = xasprintf("%s/%s", st->root, child_rel);
        struct stat sb;
        if (lstat(child_abs, &sb) != 0) {
            st->err = xasprintf("cannot read %s: %s", child_abs, strerror(errno));
            rc = -1;
        } else if (!pack_ignore_match(st->ig, child_rel, S_ISDIR(sb.st_mode))) {
            if (S_ISDIR(sb.st_mode)) {
                rc = pack_add_file(st, child_abs, child_rel, &sb);
                if (rc == 0)
                    rc = pack_walk(st, child_rel);
            } else if (S_ISREG(sb.st_mode) || S_ISLNK(sb.st_mode)) {
                rc = pack_add_file(st, child_abs, child_rel, &sb);
            } /* sockets, fifos and devices are not code: left out */
        }
        free(child_rel);
        free(child_abs);
    }
    for (size_t i = 0; i < count; i++)
        free(names[i]);
    free(names);
    free(abs);
    return rc;
}

int pack_folder(const char *dir, FILE *out, size_t *files, char **err)
{
    struct pack_state st = {.root = dir};
    struct pack_ignore *ig = pack_ignore_load(dir);
    int rc = -1;
    st.ig = ig;
    st.ar = archive_write_new();
    archive_write_set_format_pax_restricted(st.ar);
    archive_write_add_filter_gzip(st.ar);
    archive_write_set_bytes_in_last_block(st.ar, 1);
    if (archive_write_open(st.ar, out, NULL, pack_write_cb, NULL) != ARCHIVE_OK) {
        st.err = xasprintf("cannot start the archive: %s", archive_error_string(st.ar));
        goto done;
    }
    if (pack_walk(&st, "") != 0)
        goto done;
    if (archive_write_close(st.ar) != ARCHIVE_OK) {
        st.err = xasprintf("cannot finish the archive: %s", archive_error_string(st.ar));
        goto done;
    }
    rc = 0;
done:
    archive_write_free(st.ar);
    pack_ignore_free(ig);
    *files = st.files;
    *err = st.err;
    return rc;
}
