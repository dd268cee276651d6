/* archive: images from tarballs, in one pass over the tarball. Every regular file of it goes
 * into the blob store as it is read (checked against its name when the name is a digest, as in
 * an OCI layout's blobs/sha256/HEX), remembered by its path; the image is then resolved from
 * the paths (index.json for an OCI layout, manifest.json for `docker save` output). Nothing
 * of the tarball is written anywhere but the store, so its paths cannot lead anywhere. */
#include <archive.h>
#include <archive_entry.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "common/util.h"
#include "images/images.h"
#include "images/images_internal.h"

#define ARCHIVE_BLOCK 65536
#define ARCHIVE_MAX_FILES 4096

struct archive_file {
    char *path;   /* as in the tarball, without "./" */
    char *digest; /* a stored regular file */
    char *link;   /* or a link to another path of the tarball */
};

struct archive_files {
    struct archive_file *v;
    size_t n;
};

static void archive__files_free(struct archive_files *f)
{
    for (size_t i = 0; i < f->n; i++) {
        free(f->v[i].path);
        free(f->v[i].digest);
        free(f->v[i].link);
    }
    free(f->v);
}

static const char *archive__strip(const char *p)
{
    while (p[0] == '.' && p[1] == '/')
        p += 2;
    while (*p == '/')
        p++;
    return p;
}

/* The stored digest of a path of the tarball, through at most a few links. */
static const char *archive__digest(const struct archive_files *f, const char *path)
{
    char *cur = xstrdup(archive__strip(path));
    const char *found = NULL;
    for (int hops = 0; hops < 8 && !found; hops++) {
        const struct archive_file *hit = NULL;
        for (size_t i = 0; i < f->n && !hit; i++)
            if (strcmp(f->v[i].path, cur) == 0)
                hit = &f->v[i];
        if (!hit)
            break;
        if (hit->digest) {
            found = hit->digest;
            break;
        }
        /* a symbolic link's target is relative to its folder; a hard link's to the root */
        char *next;
        const char *slash = strrchr(cur, '/');
        if (hit->link[0] == '\x01')
            next = xstrdup(hit->link + 1);
        else if (slash)
            next = xasprintf("%.*s/%s", (int)(slash - cur), cur, hit->link);
        else
            next = xstrdup(hit->link);
        free(cur);
        cur = xstrdup(archive__strip(next));
        free(next);
        /* "a/../b" from a link: resolve one level, as docker save writes them */
        char *up;
        while ((up = strstr(cur, "/../"))) {
            char *start = up;
            while (start > cur && start[-1] != '/')
                start--;
            memmove(start, up + 4, strlen(up + 4) + 1);
        }
        if (str_has_prefix(cur, "../"))
            break;
    }
    free(cur);
    return found;
}

static int archive__store_entry(const struct image_store *s, struct archive *a, const char *path,
                                char **digest, char *err, size_t errlen)
{
    char expected[IMAGE_DIGEST_LEN] = "";
    if (str_has_prefix(path, "blobs/sha256/"))
        snprintf(expected, sizeof expected, "sha256:%s", path + strlen("blobs/sha256/"));
    char what[300];
    snprintf(what, sizeof what, "blob '%.200s' of the tarball", path);
    struct image_blob_writer *w;
    int rc = image_blob_begin(s, expected[0] ? expected : NULL, what, &w, err, errlen);
    if (rc != SKIFF_OK)
        return rc;
    const void *block;
    size_t size;
    la_int64_t offset;
    for (;;) {
        int r = archive_read_data_block(a, &block, &size, &offset);
        if (r == ARCHIVE_EOF)
            break;
        if (r < ARCHIVE_WARN) {
            image_blob_abort(w);
            return image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                               "the tarball is damaged at '%.200s': %s", path,
                               archive_error_string(a));
        }
        if ((rc = image_blob_write(w, block, size, err, errlen)) != SKIFF_OK) {
            image_blob_abort(w);
            return rc;
        }
    }
    char got[IMAGE_DIGEST_LEN];
    if ((rc = image_blob_commit(w, got, err, errlen)) != SKIFF_OK)
        return rc;
    *digest = xstrdup(got);
    return SKIFF_OK;
}

static int archive__walk(const struct image_store *s, const char *path, struct archive_files *files,
                         char *err, size_t errlen)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_all(a);
    archive_read_support_format_tar(a);
    archive_read_support_format_gnutar(a);
    int rc = SKIFF_OK;
    if (archive_read_open_filename(a, path, ARCHIVE_BLOCK) != ARCHIVE_OK) {
        rc = image__fail(err, errlen, SKIFF_E_NOT_AN_ARCHIVE, "cannot read the image tarball: %s",
                         archive_error_string(a));
        goto done;
    }
    for (;;) {
        struct archive_entry *e;
        int r = archive_read_next_header(a, &e);
        if (r == ARCHIVE_EOF)
            break;
        if (r < ARCHIVE_WARN) {
            rc = image__fail(err, errlen, files->n ? SKIFF_E_BAD_IMAGE : SKIFF_E_NOT_AN_ARCHIVE,
                             "the image tarball is not a tar archive or is damaged (%s)",
                             archive_error_string(a));
            goto done;
        }
        const char *name = archive_entry_pathname(e);
        mode_t type = archive_entry_filetype(e);
        const char *hard = archive_entry_hardlink(e);
        if (!name || (type != AE_IFREG && type != AE_IFLNK && !hard))
            continue;
        if (files->n >= ARCHIVE_MAX_FILES) {
            rc = image__fail(err, errlen, SKIFF_E_TOO_LARGE,
                             "the image tarball has more than %d files", ARCHIVE_MAX_FILES);
            goto done;
        }
        struct archive_file f = {.path = xstrdup(archive__strip(name))};
        if (hard)
            f.link = xasprintf("\x01%s", archive__strip(hard)); /* \1: relative to the root */
        else if (type == AE_IFLNK)
            f.link = xstrdup(archive_entry_symlink(e) ? archive_entry_symlink(e) : "");
        else if ((rc = archive__store_entry(s, a, f.path, &f.digest, err, errlen)) != SKIFF_OK) {
            free(f.path);
            goto done;
        }
        files->v = xrealloc(files->v, (files->n + 1) * sizeof(*files->v));
        files->v[files->n++] = f;
    }
done:
    archive_read_free(a);
    return rc;
}

static int archive__read(const struct image_store *s, const struct archive_files *files,
                         const char *path, const char *kind, char **out, size_t *len, char *err,
                         size_t errlen)
{
    const char *d = archive__digest(files, path);
    if (!d)
        return image__fail(err, errlen, SKIFF_E_BAD_IMAGE, "the tarball has no %s: it is not an %s",
                           path, kind);
    return image_blob_read(s, d, IMAGE_MAX_DOCUMENT, out, len, err, errlen);
}

/* An OCI layout: index.json, an index or manifest per platform, then the manifest. */
static int archive__oci(const struct image_store *s, const struct archive_files *files,
                        struct image *out, char *err, size_t errlen)
{
    char *doc = NULL;
    size_t len;
    int rc = archive__read(s, files, "index.json",
                           "OCI image layout (oci-archive:); `docker "
                           "save` output is docker-archive:",
                           &doc, &len, err, errlen);
    char digest[IMAGE_DIGEST_LEN];
    for (int depth = 0; rc == SKIFF_OK; depth++) {
        bool is_index = true;
        if (depth > 0)
            rc = image_manifest_parse(doc, len, &out->manifest, &is_index, err, errlen);
        if (rc != SKIFF_OK || !is_index)
            break;
        if (depth > 3) {
            rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE, "the image's indexes nest too deep");
            break;
        }
        if ((rc = image_index_pick(doc, len, "linux", image_host_arch(), digest, err, errlen)))
            break;
        free(doc);
        doc = NULL;
        rc = image_blob_read(s, digest, IMAGE_MAX_DOCUMENT, &doc, &len, err, errlen);
        free(out->digest);
        out->digest = xstrdup(digest);
    }
    free(doc);
    return rc;
}

/* `docker save`: manifest.json, [{"Config": PATH, "Layers": [PATH...]}], paths maybe links. */
static int archive__docker(const struct image_store *s, const struct archive_files *files,
                           struct image *out, char *err, size_t errlen)
{
    char *doc = NULL;
    size_t len;
    int rc = archive__read(s, files, "manifest.json",
                           "docker save tarball (docker-archive:); "
                           "an OCI layout is oci-archive:",
                           &doc, &len, err, errlen);
    if (rc != SKIFF_OK)
        return rc;
    json_t *root = json_loadb(doc, len, 0, NULL);
    free(doc);
    json_t *m = json_array_get(root, 0);
    json_t *layers = json_object_get(m, "Layers");
    const char *config = json_string_value(json_object_get(m, "Config"));
    if (!json_is_array(root) || !config || !json_is_array(layers)) {
        rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                         "the tarball's manifest.json is not `docker save` output");
        goto done;
    }
    if (json_array_size(root) != 1) {
        rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                         "the tarball holds %zu images: save one image per tarball",
                         json_array_size(root));
        goto done;
    }
    const char *cd = archive__digest(files, config);
    if (!cd) {
        rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE, "the tarball has no config '%.200s'",
                         config);
        goto done;
    }
    out->manifest.config = xstrdup(cd);
    out->digest = xstrdup(cd); /* Docker's image id */
    size_t n = json_array_size(layers), i;
    out->manifest.layers = xcalloc(n + 1, sizeof(char *));
    json_t *l;
    json_array_foreach(layers, i, l)
    {
        const char *d = json_is_string(l) ? archive__digest(files, json_string_value(l)) : NULL;
        if (!d) {
            rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                             "the tarball has no layer '%.200s' that its manifest.json names",
                             json_is_string(l) ? json_string_value(l) : "?");
            goto done;
        }
        out->manifest.layers[i] = xstrdup(d);
        out->manifest.n_layers = i + 1;
    }
done:
    json_decref(root);
    return rc;
}

int image_import_archive(const struct image_store *s, const char *kind, const char *path,
                         struct image *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    bool oci = strcmp(kind, "oci-archive") == 0;
    if (!oci && strcmp(kind, "docker-archive") != 0)
        return image__fail(err, errlen, SKIFF_E_BAD_VALUE,
                           "'%.40s' is not an image tarball kind: oci-archive or docker-archive",
                           kind);
    struct archive_files files = {0};
    char *doc = NULL;
    size_t len;
    struct stat st;
    if (stat(path, &st) == 0 && (uint64_t)st.st_size > image__max_image(s))
        return image__fail(err, errlen, SKIFF_E_TOO_LARGE,
                           "the image tarball has %llu MB, over the limit of %llu MB for an image "
                           "(skiffd --max-image-size)",
                           (unsigned long long)st.st_size >> 20,
                           (unsigned long long)image__max_image(s) >> 20);
    int rc = archive__walk(s, path, &files, err, errlen);
    if (rc == SKIFF_OK)
        rc = oci ? archive__oci(s, &files, out, err, errlen)
                 : archive__docker(s, &files, out, err, errlen);
    if (rc == SKIFF_OK)
        rc = image_blob_read(s, out->manifest.config, IMAGE_MAX_DOCUMENT, &doc, &len, err, errlen);
    if (rc == SKIFF_OK)
        rc = image_config_parse(doc, len, &out->config, err, errlen);
    for (size_t i = 0; rc == SKIFF_OK && i < out->manifest.n_layers; i++) {
        if (!image_store_has_blob(s, out->manifest.layers[i]))
            rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE, "the tarball has no layer %s",
                             out->manifest.layers[i]);
        else
            rc = image_layer_unpack(s, out->manifest.layers[i], err, errlen);
    }
    free(doc);
    archive__files_free(&files);
    if (rc == SKIFF_OK)
        out->ref = xasprintf("%s:%s", kind, path);
    else
        image_clear(out);
    return rc;
}
