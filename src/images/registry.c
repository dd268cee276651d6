/* registry: pulling an image from an OCI Distribution v2 registry with libcurl.
 *
 * One pull is one blocking call (run it off the event loop). Authentication follows the
 * registry's challenge: a 401 names Basic (the credentials are sent) or Bearer (a token is
 * asked of the realm it names, with the credentials when there are any, and the request made
 * again with it). Every document and blob is checked against its digest: a manifest named by
 * a digest, the config and each layer while it streams into the store. */
#include <ctype.h>
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/util.h"
#include "images/images.h"
#include "images/images_internal.h"

/* At most one line of bytes a second for a pull, whatever the registry's chunks are. */
#define REGISTRY_PROGRESS_MS 1000
/* Layers pulled (and unpacked) side by side, as docker pull and skopeo do. */
#define REGISTRY_PARALLEL_LAYERS 4
#define REGISTRY_DOCKER_HUB "registry-1.docker.io"
#define REGISTRY_ACCEPT                                                                            \
    "Accept: application/vnd.oci.image.index.v1+json, "                                            \
    "application/vnd.docker.distribution.manifest.list.v2+json, "                                  \
    "application/vnd.oci.image.manifest.v1+json, "                                                 \
    "application/vnd.docker.distribution.manifest.v2+json"

void image_ref_clear(struct image_ref *r)
{
    free(r->registry);
    free(r->repository);
    free(r->tag);
    free(r->digest);
    memset(r, 0, sizeof(*r));
}

/* A repository path component: [a-z0-9]+ joined by ".", "_", "__" or "-"s (the spec's rule,
 * a little looser), so nothing else can reach a URL. */
static bool registry__repo_valid(const char *repo)
{
    if (!repo[0] || strlen(repo) > 255 || repo[0] == '/' || strstr(repo, "//") ||
        repo[strlen(repo) - 1] == '/')
        return false;
    for (const char *p = repo; *p; p++)
        if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) || strchr("._-/", *p)))
            return false;
    return !strstr(repo, "..");
}

int image_ref_parse(const char *text, struct image_ref *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    char *s = xstrdup(text);
    char *at = strchr(s, '@');
    if (at) {
        *at = '\0';
        if (!image_digest_valid(at + 1)) {
            image__fail(err, errlen, SKIFF_E_BAD_VALUE,
                        "image %.200s: '%.100s' is not a sha256 digest", text, at + 1);
            free(s);
            return SKIFF_E_BAD_VALUE;
        }
        out->digest = xstrdup(at + 1);
    }
    /* the registry is the first component when it looks like a host: a dot, a port, or
     * localhost; otherwise Docker Hub, where one-word names are official images */
    char *slash = strchr(s, '/');
    char *rest = s;
    if (slash && (memchr(s, '.', (size_t)(slash - s)) || memchr(s, ':', (size_t)(slash - s)) ||
                  !strncmp(s, "localhost/", 10))) {
        out->registry = xstrndup(s, (size_t)(slash - s));
        rest = slash + 1;
    } else {
        out->registry = xstrdup(REGISTRY_DOCKER_HUB);
    }
    char *colon = strrchr(rest, ':');
    if (colon) {
        *colon = '\0';
        out->tag = xstrdup(colon + 1);
    } else if (!out->digest) {
        out->tag = xstrdup("latest");
    }
    out->repository = !strcmp(out->registry, REGISTRY_DOCKER_HUB) && !strchr(rest, '/')
                          ? xasprintf("library/%s", rest)
                          : xstrdup(rest);
    int rc = SKIFF_OK;
    bool tag_ok = !out->tag || (out->tag[0] && strlen(out->tag) <= 128);
    for (const char *p = out->tag; p && *p && tag_ok; p++)
        tag_ok = isalnum((unsigned char)*p) || strchr("._-", *p);
    bool host_ok = out->registry[0] != '\0';
    for (const char *p = out->registry; *p && host_ok; p++)
        host_ok = isalnum((unsigned char)*p) || strchr(".-:[]", *p);
    if (!host_ok || !registry__repo_valid(out->repository) || !tag_ok)
        rc = image__fail(err, errlen, SKIFF_E_BAD_VALUE,
                         "'%.200s' is not an image reference: [REGISTRY/]NAME[:TAG][@DIGEST], "
                         "NAME in lowercase letters, digits and . _ - /",
                         text);
    free(s);
    if (rc != SKIFF_OK)
        image_ref_clear(out);
    return rc;
}

/* ---- one pull --------------------------------------------------------------------------- */

struct registry {
    const struct image_store *s;
    const struct image_pull_options *opt;
    struct image_ref ref;
    char *base;   /* scheme://host/v2/repository */
    char *bearer; /* a token the realm gave, or NULL */
    bool basic;   /* the registry asked for Basic */
    struct registry_pull *pull; /* what the pull's layers share */
    char *err;
    size_t errlen;
};

/* What the layers of one pull share while they are pulled side by side. */
struct registry_pull {
    pthread_mutex_t lock;
    uint64_t image_bytes;     /* the image's blobs so far, pulled or found stored */
    int64_t last_progress_ms; /* when the last line of bytes went out */
    size_t next;              /* the next layer a worker takes */
    bool failed;              /* a layer failed: the others stop taking more */
    struct image_pending pending; /* what it stored, put in place when all of it is there */
};

/* Adds n bytes to the image's; false when that makes it larger than its limit. */
static bool registry__count(struct registry *g, uint64_t n)
{
    pthread_mutex_lock(&g->pull->lock);
    g->pull->image_bytes += n;
    bool ok = g->pull->image_bytes <= image__max_image(g->s);
    pthread_mutex_unlock(&g->pull->lock);
    return ok;
}

/* Whether a line of bytes may go out now (at most one a second for the whole pull). */
static bool registry__progress_due(struct registry *g)
{
    int64_t now = time_mono_ms();
    pthread_mutex_lock(&g->pull->lock);
    bool due = now - g->pull->last_progress_ms >= REGISTRY_PROGRESS_MS;
    if (due)
        g->pull->last_progress_ms = now;
    pthread_mutex_unlock(&g->pull->lock);
    return due;
}

struct registry_response {
    CURL *curl; /* while it runs */
    long status;
    struct buf body;                /* documents (bounded) */
    size_t max;                     /* bytes body may have */
    bool over;                      /* it had more */
    struct buf challenge;           /* WWW-Authenticate */
    struct image_blob_writer *blob; /* or streamed here (its digest) */
    struct image_layer_stream *layer; /* and there (unpacked as it comes) */
    int blob_rc;
    char blob_err[512];
    struct registry *g;  /* a blob's pull: its bytes count to the image's, and are told */
    const char *label;   /* "layer 2/5 sha256:..." */
    uint64_t blob_bytes; /* of it so far */
};

/* "12.5 MB" */
static void registry__human(uint64_t n, char *out, size_t size)
{
    if (n < (1u << 20))
        snprintf(out, size, "%.1f kB", (double)n / 1024);
    else
        snprintf(out, size, "%.1f MB", (double)n / (1 << 20));
}

/* A streaming blob's bytes: counted against the image's limit, and told now and then. */
static int registry__blob_bytes(struct registry_response *r, size_t len)
{
    struct registry *g = r->g;
    r->blob_bytes += len;
    uint64_t max = image__max_image(g->s);
    if (!registry__count(g, len)) {
        image__fail(r->blob_err, sizeof r->blob_err, SKIFF_E_TOO_LARGE,
                    "the image %s is larger than the limit of %llu MB for an image (skiffd "
                    "--max-image-size)",
                    g->ref.repository, (unsigned long long)(max >> 20));
        return SKIFF_E_TOO_LARGE;
    }
    if (g->opt->progress && registry__progress_due(g)) {
        curl_off_t total = -1;
        curl_easy_getinfo(r->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &total);
        char got[32], all[32] = "?";
        registry__human(r->blob_bytes, got, sizeof got);
        if (total > 0)
            registry__human((uint64_t)total, all, sizeof all);
        g->opt->progress(g->opt->progress_ctx, "%s: %s of %s", r->label, got, all);
    }
    return SKIFF_OK;
}

static size_t registry__header(char *data, size_t size, size_t n, void *arg)
{
    struct registry_response *r = arg;
    size_t len = size * n;
    static const char name[] = "www-authenticate:";
    if (len > sizeof name && !strncasecmp(data, name, sizeof name - 1) && r->challenge.len < 4096) {
        buf_reset(&r->challenge);
        buf_append(&r->challenge, data + sizeof name - 1, len - (sizeof name - 1));
    }
    return len;
}

static size_t registry__body(char *data, size_t size, size_t n, void *arg)
{
    struct registry_response *r = arg;
    size_t len = size * n;
    long status = 0;
    /* only a 200's body is the blob (a 401's or a 404's is an error's) */
    curl_easy_getinfo(r->curl, CURLINFO_RESPONSE_CODE, &status);
    if (r->blob && status == 200) {
        r->blob_rc = image_blob_write(r->blob, data, len, r->blob_err, sizeof r->blob_err);
        if (r->blob_rc == SKIFF_OK)
            r->blob_rc = registry__blob_bytes(r, len);
        if (r->blob_rc == SKIFF_OK && r->layer)
            image__layer_stream_write(r->layer, data, len);
        return r->blob_rc == SKIFF_OK ? len : 0;
    }
    if (r->body.len + len > r->max) {
        r->over = true;
        return 0;
    }
    buf_append(&r->body, data, len);
    return len;
}

/* The value of key="..." in a challenge, or NULL (caller frees). */
static char *registry__param(const char *challenge, const char *key)
{
    size_t klen = strlen(key);
    for (const char *p = challenge; (p = strcasestr(p, key)); p += klen) {
        if ((p != challenge && isalnum((unsigned char)p[-1])) || p[klen] != '=')
            continue;
        const char *v = p + klen + 1;
        if (*v == '"') {
            const char *end = strchr(v + 1, '"');
            return end ? xstrndup(v + 1, (size_t)(end - v - 1)) : NULL;
        }
        return xstrndup(v, strcspn(v, ", \r\n"));
    }
    return NULL;
}

/* One GET. url is absolute; the response in r (status 0: the registry was not reached). */
static int registry__get(struct registry *g, const char *url, bool with_auth,
                         struct registry_response *r, const char *accept)
{
    CURL *c = curl_easy_init();
    if (!c)
        return image__fail(g->err, g->errlen, SKIFF_E_INTERNAL, "libcurl cannot start");
    struct curl_slist *h = NULL;
    if (accept)
        h = curl_slist_append(h, accept);
    char *auth = NULL;
    if (with_auth && g->bearer)
        auth = xasprintf("Authorization: Bearer %s", g->bearer);
    if (auth)
        h = curl_slist_append(h, auth);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L); /* blobs come from storage elsewhere */
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 5L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR,
                     str_has_prefix(url, "https:") ? "https" : "http,https");
#else
    curl_easy_setopt(c, CURLOPT_PROTOCOLS, CURLPROTO_HTTP | CURLPROTO_HTTPS);
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS,
                     str_has_prefix(url, "https:") ? CURLPROTO_HTTPS
                                                   : CURLPROTO_HTTP | CURLPROTO_HTTPS);
#endif
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 15L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L); /* a registry that stalls: 60 s */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "skiff");
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, registry__header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, registry__body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    if (with_auth && g->basic && g->opt->username) {
        curl_easy_setopt(c, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
        curl_easy_setopt(c, CURLOPT_USERNAME, g->opt->username);
        curl_easy_setopt(c, CURLOPT_PASSWORD, g->opt->password ? g->opt->password : "");
    }
    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    r->curl = c;
    CURLcode cr = curl_easy_perform(c);
    r->curl = NULL;
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    r->status = status;
    curl_slist_free_all(h);
    free(auth);
    curl_easy_cleanup(c);
    if (cr != CURLE_OK && !(cr == CURLE_WRITE_ERROR && (r->over || r->blob_rc)))
        return image__fail(g->err, g->errlen, SKIFF_E_UNAVAILABLE,
                           "the registry %s cannot be reached: %s", g->ref.registry,
                           errbuf[0] ? errbuf : curl_easy_strerror(cr));
    return SKIFF_OK;
}

/* Answers a 401's challenge: Basic (the credentials on each request from now on) or Bearer (a
 * token from the realm). SKIFF_OK when a retry may succeed. */
static int registry__authenticate(struct registry *g, const char *challenge)
{
    while (isspace((unsigned char)*challenge))
        challenge++;
    if (!strncasecmp(challenge, "basic", 5)) {
        if (!g->opt->username || g->basic)
            return image__fail(g->err, g->errlen, SKIFF_E_UNAUTHORIZED,
                               "the registry %s refused %s: %s (401): give --docker-username "
                               "and CF_DOCKER_PASSWORD",
                               g->ref.registry, g->ref.repository,
                               g->opt->username ? "wrong username or password"
                                                : "it needs a username and password");
        g->basic = true;
        return SKIFF_OK;
    }
    if (strncasecmp(challenge, "bearer", 6) || g->bearer)
        return image__fail(g->err, g->errlen, SKIFF_E_UNAUTHORIZED,
                           "the registry %s refused %s (401)%s", g->ref.registry, g->ref.repository,
                           g->opt->username ? ": wrong username or password, or no access"
                                            : ": give --docker-username and CF_DOCKER_PASSWORD");
    char *realm = registry__param(challenge, "realm");
    char *service = registry__param(challenge, "service");
    char *scope = registry__param(challenge, "scope");
    int rc = SKIFF_OK;
    /* a realm over http only for a registry spoken to over http: a registry must not make
     * skiffd send credentials in the clear, or reach plain-http services on its network */
    if (!realm || !(str_has_prefix(realm, "https://") ||
                    (str_has_prefix(realm, "http://") && str_has_prefix(g->base, "http://")))) {
        rc = image__fail(g->err, g->errlen, SKIFF_E_UNAVAILABLE,
                         "the registry %s asks for a token from no usable realm (%.100s): "
                         "a registry over https needs an https realm",
                         g->ref.registry, realm ? realm : "none");
        goto done;
    }
    CURL *esc = curl_easy_init();
    char *s1 = service ? curl_easy_escape(esc, service, 0) : NULL;
    char *s2 = curl_easy_escape(esc, scope ? scope : "", 0);
    char *url = xasprintf("%s%sservice=%s&scope=%s", realm, strchr(realm, '?') ? "&" : "?",
                          s1 ? s1 : "", s2 ? s2 : "");
    curl_free(s1);
    curl_free(s2);
    curl_easy_cleanup(esc);
    struct registry_response r = {.max = 64 << 10};
    bool basic = g->basic;
    g->basic = g->opt->username != NULL; /* the credentials go to the realm */
    rc = registry__get(g, url, true, &r, NULL);
    g->basic = basic;
    free(url);
    if (rc == SKIFF_OK && (r.status == 401 || r.status == 403))
        rc = image__fail(g->err, g->errlen,
                         r.status == 401 ? SKIFF_E_UNAUTHORIZED : SKIFF_E_FORBIDDEN,
                         "the registry %s refused a token for %s (%ld): %s", g->ref.registry,
                         g->ref.repository, r.status,
                         g->opt->username ? "wrong username or password, or no access"
                                          : "give --docker-username and CF_DOCKER_PASSWORD");
    else if (rc == SKIFF_OK && r.status != 200)
        rc = image__fail(g->err, g->errlen, SKIFF_E_UNAVAILABLE,
                         "the registry %s's token service answered %ld", g->ref.registry, r.status);
    if (rc == SKIFF_OK) {
        json_t *j = json_loadb(r.body.data ? r.body.data : "", r.body.len, 0, NULL);
        const char *t = json_string_value(json_object_get(j, "token"));
        if (!t)
            t = json_string_value(json_object_get(j, "access_token"));
        if (t && *t && !strpbrk(t, "\r\n"))
            g->bearer = xstrdup(t);
        else
            rc = image__fail(g->err, g->errlen, SKIFF_E_UNAVAILABLE,
                             "the registry %s's token service gave no token", g->ref.registry);
        json_decref(j);
    }
    buf_free(&r.body);
    buf_free(&r.challenge);
done:
    free(realm);
    free(service);
    free(scope);
    return rc;
}

/* GET a path of the repository ("manifests/REF", "blobs/DIGEST"), authenticating as the
 * registry asks. what names it in errors. */
static int registry__fetch(struct registry *g, const char *path, const char *what,
                           struct registry_response *r, const char *accept)
{
    char *url = xasprintf("%s/%s", g->base, path);
    int rc = SKIFF_OK;
    for (int attempt = 0; attempt < 3; attempt++) {
        buf_reset(&r->body);
        buf_reset(&r->challenge);
        r->over = false;
        if ((rc = registry__get(g, url, true, r, accept)) != SKIFF_OK)
            break;
        if (r->status != 401)
            break;
        if ((rc = registry__authenticate(g, r->challenge.data ? r->challenge.data : "")))
            break;
    }
    free(url);
    if (rc != SKIFF_OK)
        return rc;
    switch (r->status) {
    case 200:
        if (r->over)
            return image__fail(g->err, g->errlen, SKIFF_E_TOO_LARGE,
                               "the registry %s sent more for the %s of %s than a %s may have "
                               "(it is larger than the limit of %zu kB): refused",
                               g->ref.registry, what, g->ref.repository,
                               strcmp(what, "config") ? "manifest" : "config", r->max >> 10);
        return r->blob_rc ? image__fail(g->err, g->errlen, r->blob_rc, "%s", r->blob_err)
                          : SKIFF_OK;
    case 401:
        return image__fail(g->err, g->errlen, SKIFF_E_UNAUTHORIZED,
                           "the registry %s refused %s (401): give --docker-username and "
                           "CF_DOCKER_PASSWORD",
                           g->ref.registry, g->ref.repository);
    case 403:
        return image__fail(g->err, g->errlen, SKIFF_E_FORBIDDEN,
                           "the registry %s does not allow %s to you (403)", g->ref.registry,
                           g->ref.repository);
    case 404:
        return image__fail(g->err, g->errlen, SKIFF_E_NOT_FOUND,
                           "the registry %s has no %s %s: check the image's name and tag",
                           g->ref.registry, g->ref.repository, what);
    default:
        return image__fail(g->err, g->errlen, SKIFF_E_UNAVAILABLE,
                           "the registry %s answered %ld for the %s of %s", g->ref.registry,
                           r->status, what, g->ref.repository);
    }
}

/* A document (a manifest or index under manifests/, the config under blobs/) checked against
 * digest when one is given. */
static int registry__document(struct registry *g, const char *kind, const char *reference,
                              const char *expected, char **out, size_t *len,
                              char digest[IMAGE_DIGEST_LEN])
{
    struct registry_response r = {.max = IMAGE_MAX_DOCUMENT};
    char *path = xasprintf("%s/%s", kind, reference);
    bool manifest = !strcmp(kind, "manifests");
    int rc = registry__fetch(g, path,
                             !manifest  ? "config"
                             : expected ? "manifest"
                                        : "image (tag)",
                             &r, manifest ? REGISTRY_ACCEPT : NULL);
    free(path);
    buf_free(&r.challenge);
    if (rc != SKIFF_OK) {
        buf_free(&r.body);
        return rc;
    }
    image__sha256(r.body.data ? r.body.data : "", r.body.len, digest);
    if (expected && strcmp(expected, digest)) {
        buf_free(&r.body);
        return image__fail(g->err, g->errlen, SKIFF_E_DIGEST_MISMATCH,
                           "the %s %s of %s does not match its digest (its content is "
                           "%s): the registry changed or damaged it",
                           manifest ? "manifest" : "config", expected, g->ref.repository, digest);
    }
    *len = r.body.len;
    buf_puts(&r.body, "");
    *out = buf_steal(&r.body);
    return SKIFF_OK;
}

static int registry__too_large(struct registry *g)
{
    return image__fail(g->err, g->errlen, SKIFF_E_TOO_LARGE,
                       "the image %s is larger than the limit of %llu MB for an image (skiffd "
                       "--max-image-size)",
                       g->ref.repository, (unsigned long long)(image__max_image(g->s) >> 20));
}

/* The config: stored already, or fetched whole (it is small), checked against its digest and
 * stored with the pull's other blobs. *out its bytes (caller frees). */
static int registry__config(struct registry *g, const char *digest, char **out, size_t *len)
{
    struct image_blob_writer *w = NULL;
    const struct image_pull_options *opt = g->opt;
    char got[IMAGE_DIGEST_LEN];
    int rc;
    bool stored = image_store_has_blob(g->s, digest);
    if (stored)
        rc = image_blob_read(g->s, digest, IMAGE_MAX_DOCUMENT, out, len, g->err, g->errlen);
    else
        rc = registry__document(g, "blobs", digest, digest, out, len, got);
    if (rc == SKIFF_OK && !registry__count(g, *len))
        rc = registry__too_large(g);
    if (rc == SKIFF_OK && !stored &&
        (rc = image__blob_begin(g->s, digest, "config", true, &w, g->err, g->errlen)) == SKIFF_OK) {
        rc = image_blob_write(w, *out, *len, g->err, g->errlen);
        if (rc == SKIFF_OK)
            rc = image__blob_verify(w, &g->pull->pending, g->err, g->errlen);
        else
            image_blob_abort(w);
    }
    if (rc == SKIFF_OK && opt->progress && stored)
        opt->progress(opt->progress_ctx, "config %.19s: already stored", digest);
    else if (rc == SKIFF_OK && opt->progress)
        opt->progress(opt->progress_ctx, "config %.19s: pulled %zu bytes", digest, *len);
    if (rc != SKIFF_OK) {
        free(*out);
        *out = NULL;
    }
    return rc;
}

/* A layer stored already (its blob: unpacked then, once; or, when blobs are not kept, its
 * folder), or pulled and unpacked in one pass: the blob streams into the unpacking while its
 * digest is computed (and, with keep_layer_blobs, into the store's blobs/: what the blob store
 * serves to cells on other hosts, src/blobs), and what was made goes on the pull's pending
 * list only when the digest matched. With keep_layer_blobs, a layer whose folder is here
 * without its blob is pulled for its blob only. declared: its size as the manifest says (what
 * a layer stored as a folder only counts to the image's size). */
static int registry__layer(struct registry *g, const char *digest, const char *what,
                           uint64_t declared)
{
    bool keep = g->opt->keep_layer_blobs;
    char *folder = image_store_layer_path(g->s, digest);
    char *blob = image_store_blob_path(g->s, digest);
    struct stat st = {0};
    bool has_blob = blob && stat(blob, &st) == 0;
    bool has_folder = folder && access(folder, F_OK) == 0;
    free(folder);
    free(blob);
    if (has_blob || (has_folder && !keep)) {
        if (!registry__count(g, has_blob ? (uint64_t)st.st_size : declared))
            return registry__too_large(g);
        if (g->opt->progress)
            g->opt->progress(g->opt->progress_ctx, "%s %.19s: already stored", what, digest);
        return image_layer_unpack(g->s, digest, g->err, g->errlen); /* once */
    }
    char label[128], shown[64];
    snprintf(label, sizeof label, "%s %s", what, digest);
    snprintf(shown, sizeof shown, "%s %.19s", what, digest);
    struct registry_response r = {.max = 64 << 10, .g = g, .label = shown};
    int rc = image__blob_begin(g->s, digest, label, keep, &r.blob, g->err, g->errlen);
    if (rc != SKIFF_OK)
        return rc;
    if (!has_folder &&
        (rc = image__layer_stream_begin(g->s, digest, &r.layer, g->err, g->errlen))) {
        image_blob_abort(r.blob);
        return rc;
    }
    char *path = xasprintf("blobs/%s", digest);
    rc = registry__fetch(g, path, what, &r, NULL);
    free(path);
    buf_free(&r.body);
    buf_free(&r.challenge);
    if (rc == SKIFF_OK)
        rc = image__blob_verify(r.blob, &g->pull->pending, g->err, g->errlen);
    else
        image_blob_abort(r.blob);
    /* the digest's verdict first: what a damaged blob unpacked to says nothing */
    int unpacked = r.layer ? image__layer_stream_end(r.layer, rc == SKIFF_OK, &g->pull->pending,
                                                     g->err, g->errlen)
                           : SKIFF_OK;
    if (rc == SKIFF_OK)
        rc = unpacked;
    if (rc == SKIFF_OK && g->opt->progress)
        g->opt->progress(g->opt->progress_ctx, "%s %.19s: pulled %llu bytes", what, digest,
                         (unsigned long long)r.blob_bytes);
    return rc;
}

/* One worker of a pull's layers: takes the next layer not taken yet, pulls and unpacks it,
 * until none is left or one failed. Its own copy of the registry (its own token when it must
 * ask again, its own error). */
struct registry_worker {
    struct registry g;
    const struct image_manifest *m;
    pthread_t thread;
    bool started;
    int rc;
    char err[512];
};

static void *registry__layers_work(void *arg)
{
    struct registry_worker *w = arg;
    struct registry *g = &w->g;
    for (;;) {
        pthread_mutex_lock(&g->pull->lock);
        size_t i = g->pull->failed ? w->m->n_layers : g->pull->next++;
        pthread_mutex_unlock(&g->pull->lock);
        if (i >= w->m->n_layers)
            break;
        bool again = false; /* an image may list a layer twice: the first one does it */
        for (size_t k = 0; k < i && !again; k++)
            again = !strcmp(w->m->layers[k], w->m->layers[i]);
        if (again)
            continue;
        char what[64];
        snprintf(what, sizeof what, "layer %zu/%zu", i + 1, w->m->n_layers);
        w->rc = registry__layer(g, w->m->layers[i], what, w->m->sizes ? w->m->sizes[i] : 0);
        if (w->rc != SKIFF_OK) {
            pthread_mutex_lock(&g->pull->lock);
            g->pull->failed = true;
            pthread_mutex_unlock(&g->pull->lock);
            break;
        }
    }
    return NULL;
}

/* Every layer of m pulled and unpacked, up to REGISTRY_PARALLEL_LAYERS side by side (the
 * first here, the others on threads of their own). The first failed worker's error is the
 * pull's. */
static int registry__layers(struct registry *g, const struct image_manifest *m)
{
    size_t n = m->n_layers < REGISTRY_PARALLEL_LAYERS ? m->n_layers : REGISTRY_PARALLEL_LAYERS;
    if (n == 0)
        return SKIFF_OK;
    struct registry_worker *w = xcalloc(n, sizeof *w);
    for (size_t k = 0; k < n; k++) {
        w[k].g = *g;
        w[k].g.bearer = g->bearer ? xstrdup(g->bearer) : NULL;
        w[k].g.err = w[k].err;
        w[k].g.errlen = sizeof w[k].err;
        w[k].m = m;
        /* a thread that cannot start leaves its share to the others */
        w[k].started =
            k > 0 && pthread_create(&w[k].thread, NULL, registry__layers_work, &w[k]) == 0;
    }
    registry__layers_work(&w[0]);
    int rc = SKIFF_OK;
    for (size_t k = 0; k < n; k++) {
        if (w[k].started)
            pthread_join(w[k].thread, NULL);
        if (rc == SKIFF_OK && w[k].rc != SKIFF_OK)
            rc = image__fail(g->err, g->errlen, w[k].rc, "%s", w[k].err);
        free(w[k].g.bearer);
    }
    free(w);
    return rc;
}

int image_pull(const struct image_store *s, const char *reference,
               const struct image_pull_options *opt, struct image *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    struct registry_pull pull = {.lock = PTHREAD_MUTEX_INITIALIZER, .pending = IMAGE_PENDING_INIT};
    struct registry g = {.s = s, .opt = opt, .pull = &pull, .err = err, .errlen = errlen};
    int rc = image_ref_parse(reference, &g.ref, err, errlen);
    if (rc != SKIFF_OK)
        return rc;
    bool insecure = false;
    for (const char *const *h = opt->insecure; h && *h && !insecure; h++)
        insecure = !strcmp(*h, g.ref.registry);
    g.base =
        xasprintf("%s://%s/v2/%s", insecure ? "http" : "https", g.ref.registry, g.ref.repository);
    char *doc = NULL, digest[IMAGE_DIGEST_LEN];
    size_t len = 0;
    if (opt->progress)
        opt->progress(opt->progress_ctx, "Resolving %s", reference);
    rc = registry__document(&g, "manifests", g.ref.digest ? g.ref.digest : g.ref.tag, g.ref.digest,
                            &doc, &len, digest);
    for (int depth = 0; rc == SKIFF_OK; depth++) {
        bool is_index;
        rc = image_manifest_parse(doc, len, &out->manifest, &is_index, err, errlen);
        if (rc != SKIFF_OK || !is_index)
            break;
        char pick[IMAGE_DIGEST_LEN];
        if (depth > 2)
            rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE, "the image's indexes nest too deep");
        if (rc == SKIFF_OK)
            rc = image_index_pick(doc, len, "linux", image_host_arch(), pick, err, errlen);
        free(doc);
        doc = NULL;
        if (rc == SKIFF_OK)
            rc = registry__document(&g, "manifests", pick, pick, &doc, &len, digest);
    }
    if (rc == SKIFF_OK)
        out->digest = xstrdup(digest);
    free(doc);
    doc = NULL;
    if (rc == SKIFF_OK)
        rc = registry__config(&g, out->manifest.config, &doc, &len);
    if (rc == SKIFF_OK)
        rc = image_config_parse(doc, len, &out->config, err, errlen);
    if (rc == SKIFF_OK && opt->progress)
        opt->progress(opt->progress_ctx, "Image %s: %zu layers, digest %s", reference,
                      out->manifest.n_layers, out->digest);
    if (rc == SKIFF_OK)
        rc = registry__layers(&g, &out->manifest);
    if (rc == SKIFF_OK)
        rc = image__pending_commit(s, &pull.pending, err, errlen);
    image__pending_abort(&pull.pending); /* a failed pull's: nothing of it stays */
    free(doc);
    free(g.base);
    free(g.bearer);
    image_ref_clear(&g.ref);
    if (rc == SKIFF_OK)
        out->ref = xstrdup(reference);
    else
        image_clear(out);
    return rc;
}
