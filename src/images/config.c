/* config: the JSON documents of an image (config, manifest, index) and Skiff's record of one.
 * Untrusted input: every field is checked for its type, and a wrong one is an error naming
 * it, never a crash. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/util.h"
#include "images/images.h"
#include "images/images_internal.h"

#define IMAGE_MAX_LAYERS 127 /* Docker's own limit; overlayfs takes about 500 lowers */

/* A JSON array of strings as a NULL-terminated vector (NULL for null or absent). */
static int image__strv(json_t *arr, const char *field, char ***out, char *err, size_t errlen)
{
    *out = NULL;
    if (!arr || json_is_null(arr))
        return SKIFF_OK;
    if (!json_is_array(arr))
        return image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                           "the image config's %s is not a list of strings", field);
    size_t n = json_array_size(arr);
    char **v = xcalloc(n + 1, sizeof(*v));
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_array_get(arr, i);
        if (!json_is_string(s) || strlen(json_string_value(s)) != json_string_length(s)) {
            strv_free(v);
            return image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                               "the image config's %s[%zu] is not a string", field, i);
        }
        v[i] = xstrdup(json_string_value(s));
    }
    *out = v;
    return SKIFF_OK;
}

static int image__str(json_t *obj, const char *field, char **out, char *err, size_t errlen)
{
    *out = NULL;
    json_t *s = json_object_get(obj, field);
    if (!s || json_is_null(s))
        return SKIFF_OK;
    if (!json_is_string(s) || strlen(json_string_value(s)) != json_string_length(s))
        return image__fail(err, errlen, SKIFF_E_BAD_IMAGE, "the image's %s is not a string", field);
    if (json_string_length(s))
        *out = xstrdup(json_string_value(s));
    return SKIFF_OK;
}

static json_t *image__load(const char *json, size_t len, const char *what, char *err, size_t errlen)
{
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root || !json_is_object(root)) {
        image__fail(err, errlen, SKIFF_E_BAD_IMAGE, "the image's %s is not a JSON object (%s)",
                    what, root ? "another JSON value" : je.text);
        json_decref(root);
        return NULL;
    }
    return root;
}

void image_config_clear(struct image_config *c)
{
    strv_free(c->entrypoint);
    strv_free(c->cmd);
    strv_free(c->env);
    free(c->workdir);
    free(c->user);
    memset(c, 0, sizeof(*c));
}

/* No "." or ".." component: a path that means what it says (the container's runtime makes
 * WorkingDir from outside the container, where ".." leads out of it). */
static bool image__path_plain(const char *path)
{
    for (const char *p = path; *p;) {
        while (*p == '/')
            p++;
        size_t n = strcspn(p, "/");
        if ((n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
            return false;
        p += n;
    }
    return true;
}

/* The lowest TCP port of ExposedPorts ({"8080/tcp": {}, "53/udp": {}}): Docker writes the
 * object with its keys sorted, so "the first one" is not a rule a reader can rely on. */
static int image__port(json_t *ports, int *out, char *err, size_t errlen)
{
    *out = 0;
    if (!ports || json_is_null(ports))
        return SKIFF_OK;
    if (!json_is_object(ports))
        return image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                           "the image config's ExposedPorts is not an object");
    const char *key;
    json_t *v;
    json_object_foreach(ports, key, v)
    {
        char *end;
        long port = strtol(key, &end, 10);
        if (end == key || port < 1 || port > 65535 ||
            (*end && strcmp(end, "/tcp") != 0 && strcmp(end, "/udp") != 0 &&
             strcmp(end, "/sctp") != 0))
            return image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                               "the image config exposes '%.40s', which is not PORT/tcp", key);
        if ((!*end || strcmp(end, "/tcp") == 0) && (*out == 0 || port < *out))
            *out = (int)port;
    }
    return SKIFF_OK;
}

int image_config_parse(const char *json, size_t len, struct image_config *out, char *err,
                       size_t errlen)
{
    memset(out, 0, sizeof(*out));
    json_t *root = image__load(json, len, "config", err, errlen);
    if (!root)
        return SKIFF_E_BAD_IMAGE;
    json_t *c = json_object_get(root, "config");
    int rc = SKIFF_OK;
    if (c && !json_is_null(c) && !json_is_object(c))
        rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE, "the image's config is not an object");
    else if (c && json_is_object(c)) {
        (void)((rc = image__strv(json_object_get(c, "Entrypoint"), "Entrypoint", &out->entrypoint,
                                 err, errlen)) ||
               (rc = image__strv(json_object_get(c, "Cmd"), "Cmd", &out->cmd, err, errlen)) ||
               (rc = image__strv(json_object_get(c, "Env"), "Env", &out->env, err, errlen)) ||
               (rc = image__str(c, "WorkingDir", &out->workdir, err, errlen)) ||
               (rc = image__str(c, "User", &out->user, err, errlen)) ||
               (rc = image__port(json_object_get(c, "ExposedPorts"), &out->port, err, errlen)));
        for (char **e = out->env; rc == SKIFF_OK && e && *e; e++)
            if (!strchr(*e, '=') || (*e)[0] == '=')
                rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                                 "the image config's Env has '%.80s', which is not KEY=VALUE", *e);
        if (rc == SKIFF_OK && out->workdir &&
            (out->workdir[0] != '/' || !image__path_plain(out->workdir)))
            rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                             "the image config's WorkingDir '%.200s' is not an absolute path "
                             "without \".\" or \"..\"",
                             out->workdir);
    }
    json_decref(root);
    if (rc != SKIFF_OK)
        image_config_clear(out);
    return rc;
}

void image_manifest_clear(struct image_manifest *m)
{
    free(m->config);
    strv_free(m->layers);
    free(m->sizes);
    memset(m, 0, sizeof(*m));
}

static const char *image__media_type(json_t *obj)
{
    json_t *t = json_object_get(obj, "mediaType");
    return json_is_string(t) ? json_string_value(t) : "";
}

static bool image__is_index(json_t *root)
{
    const char *t = image__media_type(root);
    return strcmp(t, "application/vnd.oci.image.index.v1+json") == 0 ||
           strcmp(t, "application/vnd.docker.distribution.manifest.list.v2+json") == 0 ||
           (!t[0] && json_is_array(json_object_get(root, "manifests")));
}

/* A descriptor's digest, checked. */
static int image__descriptor(json_t *d, const char *what, char **out, char *err, size_t errlen)
{
    json_t *digest = json_is_object(d) ? json_object_get(d, "digest") : NULL;
    if (!json_is_string(digest) || !image_digest_valid(json_string_value(digest)))
        return image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                           "the image manifest's %s has no sha256 digest", what);
    *out = xstrdup(json_string_value(digest));
    return SKIFF_OK;
}

/* Layers Skiff can unpack: tars, compressed or not. Foreign (Windows) layers are not. */
static bool image__layer_type_ok(const char *t)
{
    return !t[0] || str_has_prefix(t, "application/vnd.oci.image.layer.v1.tar") ||
           str_has_prefix(t, "application/vnd.oci.image.layer.nondistributable.v1.tar") ||
           strcmp(t, "application/vnd.docker.image.rootfs.diff.tar.gzip") == 0 ||
           strcmp(t, "application/vnd.docker.image.rootfs.diff.tar") == 0;
}

int image_manifest_parse(const char *json, size_t len, struct image_manifest *out, bool *is_index,
                         char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    *is_index = false;
    json_t *root = image__load(json, len, "manifest", err, errlen);
    if (!root)
        return SKIFF_E_BAD_IMAGE;
    int rc = SKIFF_OK;
    if (image__is_index(root)) {
        *is_index = true;
        goto done;
    }
    json_t *version = json_object_get(root, "schemaVersion");
    if (!json_is_integer(version) || json_integer_value(version) != 2) {
        rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                         "the image manifest is not schema version 2 (Docker schema 1 images "
                         "are not supported: push the image again with a current Docker)");
        goto done;
    }
    if ((rc = image__descriptor(json_object_get(root, "config"), "config", &out->config, err,
                                errlen)))
        goto done;
    json_t *layers = json_object_get(root, "layers");
    if (!json_is_array(layers)) {
        rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE, "the image manifest has no layers");
        goto done;
    }
    size_t n = json_array_size(layers);
    if (n > IMAGE_MAX_LAYERS) {
        rc = image__fail(err, errlen, SKIFF_E_TOO_LARGE,
                         "the image has %zu layers, over the limit of %d", n, IMAGE_MAX_LAYERS);
        goto done;
    }
    out->layers = xcalloc(n + 1, sizeof(char *));
    out->sizes = xcalloc(n + 1, sizeof(uint64_t));
    for (size_t i = 0; i < n; i++) {
        json_t *l = json_array_get(layers, i);
        char what[32];
        snprintf(what, sizeof what, "layer %zu", i);
        if ((rc = image__descriptor(l, what, &out->layers[i], err, errlen)))
            goto done;
        json_int_t size = json_integer_value(json_object_get(l, "size"));
        out->sizes[i] = size > 0 ? (uint64_t)size : 0;
        out->n_layers = i + 1;
        if (!image__layer_type_ok(image__media_type(l))) {
            rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                             "layer %s has media type '%.100s', which is not a tar layer",
                             out->layers[i], image__media_type(l));
            goto done;
        }
    }
done:
    json_decref(root);
    if (rc != SKIFF_OK)
        image_manifest_clear(out);
    return rc;
}

const char *image_host_arch(void)
{
#if defined(__x86_64__)
    return "amd64";
#elif defined(__aarch64__)
    return "arm64";
#elif defined(__arm__)
    return "arm";
#elif defined(__i386__)
    return "386";
#elif defined(__riscv) && __riscv_xlen == 64
    return "riscv64";
#elif defined(__powerpc64__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return "ppc64le";
#elif defined(__s390x__)
    return "s390x";
#else
    return "unknown";
#endif
}

int image_index_pick(const char *json, size_t len, const char *os, const char *arch,
                     char digest[IMAGE_DIGEST_LEN], char *err, size_t errlen)
{
    json_t *root = image__load(json, len, "index", err, errlen);
    if (!root)
        return SKIFF_E_BAD_IMAGE;
    json_t *manifests = json_object_get(root, "manifests");
    int rc = SKIFF_E_BAD_IMAGE;
    struct buf seen = {0};
    size_t i;
    json_t *m;
    json_array_foreach(manifests, i, m)
    {
        json_t *p = json_object_get(m, "platform");
        json_t *d = json_object_get(m, "digest");
        const char *mos = json_string_value(json_object_get(p, "os"));
        const char *march = json_string_value(json_object_get(p, "architecture"));
        if (!json_is_string(d) || !image_digest_valid(json_string_value(d)))
            continue;
        /* an index without platforms (an OCI layout's index.json) has one image */
        if ((!p && json_array_size(manifests) == 1) ||
            (mos && march && strcmp(mos, os) == 0 && strcmp(march, arch) == 0)) {
            snprintf(digest, IMAGE_DIGEST_LEN, "%s", json_string_value(d));
            rc = SKIFF_OK;
            break;
        }
        if (mos && march && seen.len < 400)
            buf_printf(&seen, "%s%.20s/%.20s", seen.len ? ", " : "", mos, march);
    }
    if (rc != SKIFF_OK)
        image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                    "the image has no variant for this machine (%s/%s); it has: %s", os, arch,
                    seen.len ? seen.data : "none");
    buf_free(&seen);
    json_decref(root);
    return rc;
}

void image_clear(struct image *img)
{
    free(img->ref);
    free(img->digest);
    image_manifest_clear(&img->manifest);
    image_config_clear(&img->config);
    memset(img, 0, sizeof(*img));
}

static json_t *image__strv_json(char **v)
{
    if (!v)
        return json_null();
    json_t *a = json_array();
    for (; *v; v++)
        json_array_append_new(a, json_string(*v));
    return a;
}

char *image_to_json(const struct image *img)
{
    const struct image_config *c = &img->config;
    json_t *cfg =
        json_pack("{s:o s:o s:o s:o s:o s:i}", "entrypoint", image__strv_json(c->entrypoint), "cmd",
                  image__strv_json(c->cmd), "env", image__strv_json(c->env), "workdir",
                  c->workdir ? json_string(c->workdir) : json_null(), "user",
                  c->user ? json_string(c->user) : json_null(), "port", c->port);
    json_t *root = json_pack("{s:s s:s s:s s:o s:o}", "ref", img->ref ? img->ref : "", "digest",
                             img->digest ? img->digest : "", "config_digest",
                             img->manifest.config ? img->manifest.config : "", "layers",
                             image__strv_json(img->manifest.layers), "config", cfg);
    if (c->ids) {
        json_object_set_new(cfg, "uid", json_integer(c->uid));
        json_object_set_new(cfg, "gid", json_integer(c->gid));
    }
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return s;
}

int image_from_json(const char *json, struct image *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    json_t *root = image__load(json, strlen(json), "record", err, errlen);
    if (!root)
        return SKIFF_E_BAD_IMAGE;
    json_t *c = json_object_get(root, "config");
    int rc;
    if ((rc = image__str(root, "ref", &out->ref, err, errlen)) ||
        (rc = image__str(root, "digest", &out->digest, err, errlen)) ||
        (rc = image__str(root, "config_digest", &out->manifest.config, err, errlen)) ||
        (rc = image__strv(json_object_get(root, "layers"), "layers", &out->manifest.layers, err,
                          errlen)) ||
        (rc = image__strv(json_object_get(c, "entrypoint"), "entrypoint", &out->config.entrypoint,
                          err, errlen)) ||
        (rc = image__strv(json_object_get(c, "cmd"), "cmd", &out->config.cmd, err, errlen)) ||
        (rc = image__strv(json_object_get(c, "env"), "env", &out->config.env, err, errlen)) ||
        (rc = image__str(c, "workdir", &out->config.workdir, err, errlen)) ||
        (rc = image__str(c, "user", &out->config.user, err, errlen)))
        goto done;
    out->config.port = (int)json_integer_value(json_object_get(c, "port"));
    json_t *uid = json_object_get(c, "uid"), *gid = json_object_get(c, "gid");
    if (json_is_integer(uid) && json_is_integer(gid)) {
        json_int_t u = json_integer_value(uid), g = json_integer_value(gid);
        if (u < 0 || u > 65535 || g < 0 || g > 65535) {
            rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                             "the image record's uid and gid are outside 0-65535");
            goto done;
        }
        out->config.ids = true;
        out->config.uid = (unsigned)u;
        out->config.gid = (unsigned)g;
    }
    /* a record may come from another host's droplet blob: its digests name files here */
    if (out->manifest.config && *out->manifest.config &&
        !image_digest_valid(out->manifest.config)) {
        rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                         "the image record's config_digest '%.80s' is not a digest",
                         out->manifest.config);
        goto done;
    }
    for (char **l = out->manifest.layers; l && *l; l++) {
        if (out->manifest.n_layers == IMAGE_MAX_LAYERS) {
            rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                             "the image record names more than %d layers", IMAGE_MAX_LAYERS);
            goto done;
        }
        if (!image_digest_valid(*l)) {
            rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                             "the image record's layer '%.80s' "
                             "is not a digest",
                             *l);
            goto done;
        }
        out->manifest.n_layers++;
    }
done:
    json_decref(root);
    if (rc != SKIFF_OK)
        image_clear(out);
    return rc;
}
