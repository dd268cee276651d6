/* blobs: blob_fetch, a blob from the controllers' GET /v1/blobs/DIGEST into a cache folder.
 *
 * The transfer is libcurl's blocking easy interface on libuv's thread pool: the body streams
 * into a temporary file in the cache folder while it is hashed, a body past the bound stops the
 * transfer (its Content-Length is checked first, then every byte counted), and the file is
 * renamed to HEX only when its digest matched; whatever fails is unlinked, so the cache holds
 * only whole, verified blobs. URLs are tried in order until one gives the blob. */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blobs/blobs_internal.h"
#include "common/err.h"
#include "common/util.h"

#define FETCH_DEFAULT_MAX (4ull << 30)
#define FETCH_DEFAULT_TIMEOUT_MS (10 * 60 * 1000L)
#define FETCH_DEFAULT_STALL_MS (10 * 1000L)

struct blob_fetch {
    uv_work_t work;
    uv_timer_t at_once; /* the blob was in the cache already: done from the loop */
    char digest[BLOB_DIGEST_LEN + 1];
    char **urls;
    char *token, *cache_dir, *ca_file, *path;
    uint64_t max_bytes;
    long timeout_ms, stall_ms;
    blob_fetch_cb done;
    void *ctx;
    int rc;
    char why[512];
    /* one transfer */
    int fd;
    uint64_t got;
    bool too_big;
    bool stalled;
    int64_t progress_mono; /* when the last byte came (or the transfer began) */
    struct blobs_hash hash;
};

static void fetch__free(struct blob_fetch *f)
{
    for (char **u = f->urls; u && *u; u++)
        free(*u);
    free(f->urls);
    if (f->token)
        memset(f->token, 0, strlen(f->token));
    free(f->token);
    free(f->cache_dir);
    free(f->ca_file);
    free(f->path);
    free(f);
}

static size_t fetch__write(char *data, size_t size, size_t n, void *arg)
{
    struct blob_fetch *f = arg;
    size_t len = size * n;
    f->got += len;
    f->progress_mono = time_mono_ms();
    if (f->got > f->max_bytes) {
        f->too_big = true;
        return 0; /* stops the transfer */
    }
    blobs__hash_update(&f->hash, data, len);
    return blobs__write_all(f->fd, data, len) == 0 ? len : 0;
}

/* libcurl calls this about once a second, bytes coming or not: a transfer with none for
 * stall_ms is given up (non-zero stops it). */
static int fetch__progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                           curl_off_t ulnow)
{
    (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    struct blob_fetch *f = arg;
    if (time_mono_ms() - f->progress_mono < f->stall_ms)
        return 0;
    f->stalled = true;
    return 1;
}

/* One URL: 0 with the verified blob at f->path, or an error with f->why. */
static int fetch__one(struct blob_fetch *f, const char *base)
{
    char *tmp = NULL;
    f->fd = blobs__temp_file(f->cache_dir, &tmp);
    if (f->fd < 0) {
        snprintf(f->why, sizeof f->why, "cannot write in %s: %s", f->cache_dir,
                 skiff_strerror(f->fd));
        return f->fd;
    }
    f->got = 0;
    f->too_big = false;
    f->stalled = false;
    f->progress_mono = time_mono_ms();
    int rc = blobs__hash_init(&f->hash);
    char *url = xasprintf("%s/v1/blobs/%s", base, f->digest);
    char *auth = xasprintf("Authorization: Bearer %s", f->token ? f->token : "");
    struct curl_slist *headers = curl_slist_append(NULL, auth);
    CURL *c = rc == 0 ? curl_easy_init() : NULL;
    long status = 0;
    if (c) {
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, f->timeout_ms);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
        curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)f->max_bytes);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, fetch__write);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, f);
        curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, fetch__progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, f);
        if (f->ca_file)
            curl_easy_setopt(c, CURLOPT_CAINFO, f->ca_file);
        CURLcode cc = curl_easy_perform(c);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        if (cc == CURLE_FILESIZE_EXCEEDED || f->too_big) {
            snprintf(f->why, sizeof f->why, "blob %s from %s is larger than the %llu bytes allowed",
                     f->digest, base, (unsigned long long)f->max_bytes);
            rc = -EFBIG;
        } else if (f->stalled) {
            snprintf(f->why, sizeof f->why,
                     "%s sent nothing for %ld ms while blob %s was fetched (%llu bytes come): "
                     "given up",
                     base, f->stall_ms, f->digest, (unsigned long long)f->got);
            rc = -EIO;
        } else if (cc == CURLE_HTTP_RETURNED_ERROR) {
            snprintf(f->why, sizeof f->why, "%s answered %ld for blob %s", base, status, f->digest);
            rc = status == 404 ? -ENOENT : status == 401 || status == 403 ? -EACCES : -EIO;
        } else if (cc != CURLE_OK) {
            snprintf(f->why, sizeof f->why, "cannot fetch blob %s from %s: %s", f->digest, base,
                     curl_easy_strerror(cc));
            rc = -EIO;
        }
        curl_easy_cleanup(c);
    } else if (rc == 0) {
        rc = -ENOMEM;
    }
    curl_slist_free_all(headers);
    memset(auth, 0, strlen(auth));
    free(auth);
    free(url);
    if (rc == 0) {
        char got[BLOB_DIGEST_LEN + 1];
        blobs__hash_final(&f->hash, got);
        if (strcmp(got, f->digest)) {
            snprintf(f->why, sizeof f->why,
                     "blob %s from %s does not match its digest (its content is %s): refused",
                     f->digest, base, got);
            rc = -EBADMSG;
        }
    } else if (f->hash.ctx) {
        blobs__hash_drop(&f->hash);
    }
    if (rc == 0 && fsync(f->fd) < 0)
        rc = -errno;
    close(f->fd);
    if (rc == 0 && rename(tmp, f->path) < 0) {
        rc = -errno;
        snprintf(f->why, sizeof f->why, "cannot keep blob %s: %s", f->digest,
                 skiff_strerror(-errno));
    }
    if (rc < 0)
        unlink(tmp);
    free(tmp);
    return rc;
}

static void fetch__work(uv_work_t *w)
{
    struct blob_fetch *f = w->data;
    f->rc = -EIO;
    /* the most telling failure wins: a mismatch or a size over any other */
    for (char **u = f->urls; *u; u++) {
        int rc = fetch__one(f, *u);
        if (rc == 0) {
            f->rc = 0;
            snprintf(f->why, sizeof f->why, "%s", *u); /* where it came from */
            return;
        }
        if (rc == -EBADMSG || rc == -EFBIG || f->rc == -EIO || (rc == -EACCES && f->rc == -ENOENT))
            f->rc = rc;
    }
}

static void fetch__after(uv_work_t *w, int status)
{
    struct blob_fetch *f = w->data;
    int rc = status < 0 ? status : f->rc;
    f->done(f->ctx, rc, rc == 0 ? f->path : NULL, f->why);
    fetch__free(f);
}

static void fetch__closed(uv_handle_t *h)
{
    fetch__free(h->data);
}

static void fetch__cached(uv_timer_t *t)
{
    struct blob_fetch *f = t->data;
    f->done(f->ctx, 0, f->path, NULL);
    uv_close((uv_handle_t *)t, fetch__closed);
}

/* libcurl's global set-up is not thread-safe: once, on the caller's thread, before any
 * transfer runs on the pool */
static pthread_once_t fetch__once = PTHREAD_ONCE_INIT;
static void fetch__global_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

int blob_fetch(uv_loop_t *loop, const struct blob_fetch_options *opt, blob_fetch_cb done, void *ctx)
{
    pthread_once(&fetch__once, fetch__global_init);
    if (!opt || !blob_digest_valid(opt->digest) || !opt->urls || !opt->urls[0] || !opt->cache_dir ||
        !*opt->cache_dir || !done)
        return -EINVAL;
    struct blob_fetch *f = xcalloc(1, sizeof *f);
    snprintf(f->digest, sizeof f->digest, "%s", opt->digest);
    size_t n = 0;
    while (opt->urls[n])
        n++;
    f->urls = xcalloc(n + 1, sizeof *f->urls);
    for (size_t i = 0; i < n; i++) {
        f->urls[i] = xstrdup(opt->urls[i]);
        size_t len = strlen(f->urls[i]);
        while (len > 0 && f->urls[i][len - 1] == '/')
            f->urls[i][--len] = '\0';
    }
    f->token = opt->token ? xstrdup(opt->token) : NULL;
    f->cache_dir = xstrdup(opt->cache_dir);
    f->ca_file = opt->ca_file ? xstrdup(opt->ca_file) : NULL;
    f->path = xasprintf("%s/%s", opt->cache_dir, blobs__hex(opt->digest));
    f->max_bytes = opt->max_bytes ? opt->max_bytes : FETCH_DEFAULT_MAX;
    f->timeout_ms = opt->timeout_ms > 0 ? opt->timeout_ms : FETCH_DEFAULT_TIMEOUT_MS;
    f->stall_ms = opt->stall_ms > 0 ? opt->stall_ms : FETCH_DEFAULT_STALL_MS;
    f->done = done;
    f->ctx = ctx;
    struct stat st;
    int rc;
    if (stat(f->path, &st) == 0 && S_ISREG(st.st_mode)) {
        f->at_once.data = f;
        uv_timer_init(loop, &f->at_once);
        rc = uv_timer_start(&f->at_once, fetch__cached, 0, 0);
        if (rc < 0)
            uv_close((uv_handle_t *)&f->at_once, fetch__closed);
        return rc;
    }
    f->work.data = f;
    rc = uv_queue_work(loop, &f->work, fetch__work, fetch__after);
    if (rc < 0)
        fetch__free(f);
    return rc;
}
