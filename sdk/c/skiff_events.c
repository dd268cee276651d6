/* skiff_events: see skiff_events.h. Only libcurl and the C library: apps embed this file. */
#include "skiff_events.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct reply {
    char *data;
    size_t len;
};

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *arg)
{
    struct reply *r = arg;
    size_t n = size * nmemb;
    if (r->len + n > 65536)
        return 0; /* answers are small; a huge one is not Skiff */
    char *grown = realloc(r->data, r->len + n + 1);
    if (!grown)
        return 0;
    r->data = grown;
    memcpy(r->data + r->len, ptr, n);
    r->len += n;
    r->data[r->len] = '\0';
    return n;
}

static int set_error(char *errmsg, size_t errlen, int code, const char *fmt, ...)
{
    if (errmsg && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(errmsg, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* Where the value of "key" starts in the JSON text (past the colon), or NULL. The answers
 * read here are Skiff's own, small and flat, so a search is enough. */
static const char *json_field_value(const char *text, const char *key)
{
    char pattern[64];
    snprintf(pattern, sizeof(pattern), "\"%s\"", key);
    const char *p = text ? strstr(text, pattern) : NULL;
    if (!p)
        return NULL;
    p += strlen(pattern);
    while (*p == ' ' || *p == ':')
        p++;
    return p;
}

/* Copies the JSON string value of "key" found in text into out (unescaping \" and \\). */
static int json_string_field(const char *text, const char *key, char *out, size_t size)
{
    const char *p = json_field_value(text, key);
    if (!p || *p++ != '"')
        return -1;
    size_t o = 0;
    for (; *p && *p != '"'; p++) {
        if (*p == '\\' && p[1])
            p++;
        if (o + 1 < size)
            out[o++] = *p;
    }
    out[o] = '\0';
    return 0;
}

static int json_number_field(const char *text, const char *key, uint64_t *out)
{
    const char *p = json_field_value(text, key);
    if (!p)
        return -1;
    char *end;
    *out = strtoull(p, &end, 10);
    return end == p ? -1 : 0;
}

static void random_uuid(char out[37])
{
    unsigned char b[16];
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(b, 1, sizeof(b), f) != sizeof(b)) {
        for (size_t i = 0; i < sizeof(b); i++)
            b[i] = (unsigned char)rand();
    }
    if (f)
        fclose(f);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

/* "/apps/NAME" from VCAP_APPLICATION's application_name, when there is one. */
static void default_source(char *out, size_t size)
{
    char name[128];
    if (json_string_field(getenv("VCAP_APPLICATION"), "application_name", name, sizeof(name)) ==
            0 &&
        name[0])
        snprintf(out, size, "/apps/%s", name);
    else
        snprintf(out, size, "/skiff/sdk");
}

static void init_curl(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

static struct curl_slist *add_header(struct curl_slist *list, const char *name, const char *value)
{
    char line[1024];
    snprintf(line, sizeof(line), "%s: %s", name, value);
    return curl_slist_append(list, line);
}

int skiff_events_publish(const char *topic, const void *data, size_t len,
                         const struct skiff_event_opts *opts, struct skiff_publish_result *result,
                         char *errmsg, size_t errlen)
{
    static const struct skiff_event_opts none = {0};
    if (!opts)
        opts = &none;
    if (!topic || !*topic || (len && !data))
        return set_error(errmsg, errlen, SKIFF_EVENTS_EINVAL, "a topic name is required");
    const char *base = getenv("SKIFF_EVENTS_URL"), *token = getenv("SKIFF_EVENTS_TOKEN");
    if (!base || !*base || !token || !*token)
        return set_error(errmsg, errlen, SKIFF_EVENTS_ENOCONFIG,
                         "SKIFF_EVENTS_URL and SKIFF_EVENTS_TOKEN must be set (Skiff sets them in "
                         "every instance)");
    static pthread_once_t curl_ready = PTHREAD_ONCE_INIT;
    pthread_once(&curl_ready, init_curl);
    CURL *curl = curl_easy_init();
    if (!curl)
        return set_error(errmsg, errlen, SKIFF_EVENTS_ENETWORK, "cannot start an HTTP client");

    char id[128], source[256], *escaped = curl_easy_escape(curl, topic, 0);
    if (opts->id)
        snprintf(id, sizeof(id), "%s", opts->id);
    else
        random_uuid(id);
    if (opts->source)
        snprintf(source, sizeof(source), "%s", opts->source);
    else
        default_source(source, sizeof(source));
    size_t blen = strlen(base);
    while (blen && base[blen - 1] == '/')
        blen--;
    /* SKIFF_EVENTS_URL is the API's /v1; a bare API URL works too. */
    bool has_v1 = blen >= 3 && !strncmp(base + blen - 3, "/v1", 3);
    char url[2048];
    snprintf(url, sizeof(url), "%.*s%s/topics/%s/events", (int)blen, base, has_v1 ? "" : "/v1",
             escaped ? escaped : topic);
    curl_free(escaped);

    struct curl_slist *h = NULL;
    char auth[1024];
    snprintf(auth, sizeof(auth), "Bearer %s", token);
    h = add_header(h, "Authorization", auth);
    h = add_header(h, "ce-specversion", "1.0");
    h = add_header(h, "ce-id", id);
    h = add_header(h, "ce-source", source);
    h = add_header(h, "ce-type", opts->type ? opts->type : "skiff.event");
    if (opts->subject)
        h = add_header(h, "ce-subject", opts->subject);
    h = add_header(h, "Content-Type", opts->content_type ? opts->content_type : "application/json");
    h = curl_slist_append(h, "Expect:");

    struct reply r = {0};
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_POST, 1L);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, len ? (const char *)data : "");
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, opts->timeout_ms > 0 ? opts->timeout_ms : 30000L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    CURLcode cc = curl_easy_perform(curl);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    int rc = 0;
    if (cc != CURLE_OK) {
        rc = set_error(errmsg, errlen, SKIFF_EVENTS_ENETWORK, "cannot reach Skiff at %s: %s", base,
                       curl_easy_strerror(cc));
    } else if (status != 202) {
        char message[512];
        if (json_string_field(r.data, "message", message, sizeof(message)) < 0)
            snprintf(message, sizeof(message), "%s", r.data ? r.data : "");
        rc = set_error(errmsg, errlen, SKIFF_EVENTS_EREFUSED,
                       "Skiff refused the event (HTTP %ld): %s", status, message);
    } else if (result) {
        memset(result, 0, sizeof(*result));
        json_string_field(r.data, "id", result->id, sizeof(result->id));
        json_number_field(r.data, "offset", &result->offset);
    }
    free(r.data);
    curl_slist_free_all(h);
    curl_easy_cleanup(curl);
    return rc;
}
