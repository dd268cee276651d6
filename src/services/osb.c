/* services: the Open Service Broker API client: one blocking libcurl request per call, made
 * on a worker thread by the API (src/api/brokers.c). */
#include <curl/curl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/buf.h"
#include "common/util.h"
#include "services/services.h"

struct osb__transfer {
    struct services_osb_call *call;
    struct buf body;
    bool too_large;
};

static size_t osb__write(char *data, size_t size, size_t n, void *arg)
{
    struct osb__transfer *t = arg;
    if (t->body.len + size * n > SERVICES_OSB_BODY_MAX) {
        t->too_large = true;
        return 0;
    }
    buf_append(&t->body, data, size * n);
    return size * n;
}

static size_t osb__header(char *data, size_t size, size_t n, void *arg)
{
    struct osb__transfer *t = arg;
    size_t len = size * n;
    static const char name[] = "retry-after:";
    if (len > sizeof name && !strncasecmp(data, name, sizeof name - 1)) {
        char value[32];
        size_t vl = len - (sizeof name - 1);
        if (vl >= sizeof value)
            vl = sizeof value - 1;
        memcpy(value, data + sizeof name - 1, vl);
        value[vl] = '\0';
        char *end;
        long secs = strtol(value, &end, 10);
        if (end != value && secs >= 0)
            t->call->retry_after = secs > 3600 ? 3600 : secs;
    }
    return len;
}

static int osb__progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    struct osb__transfer *t = arg;
    return t->call->abort && *t->call->abort ? 1 : 0;
}

static pthread_once_t osb__once = PTHREAD_ONCE_INIT;
static void osb__global_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

void services_osb_init(void)
{
    pthread_once(&osb__once, osb__global_init);
}

void services_osb_perform(struct services_osb_call *c)
{
    services_osb_init();
    c->status = 0;
    c->retry_after = -1;
    c->timed_out = false;
    c->json = NULL;
    c->error[0] = '\0';
    struct osb__transfer t = {.call = c};
    CURL *curl = curl_easy_init();
    if (!curl) {
        snprintf(c->error, sizeof c->error, "cannot set up an HTTP client (out of memory?)");
        return;
    }
    struct curl_slist *headers = NULL;
    headers = curl_slist_append(headers, "X-Broker-API-Version: " SERVICES_OSB_VERSION);
    headers = curl_slist_append(headers, "Accept: application/json");
    /* one id per request, for the broker's logs and the platform's to meet */
    char request_id[37], request_header[80];
    uuid_generate_v4(request_id);
    snprintf(request_header, sizeof request_header, "X-Broker-API-Request-Identity: %s",
             request_id);
    headers = curl_slist_append(headers, request_header);
    char *identity = NULL;
    if (c->identity) {
        identity = xasprintf("X-Broker-API-Originating-Identity: %s", c->identity);
        headers = curl_slist_append(headers, identity);
    }
    if (c->body)
        headers = curl_slist_append(headers, "Content-Type: application/json");
    curl_easy_setopt(curl, CURLOPT_URL, c->url);
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, c->method);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
    curl_easy_setopt(curl, CURLOPT_USERNAME, c->username ? c->username : "");
    curl_easy_setopt(curl, CURLOPT_PASSWORD, c->password ? c->password : "");
    long timeout = c->timeout_s > 0 ? c->timeout_s : 60;
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, timeout);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, timeout < 10 ? timeout : 10L);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, osb__write);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, osb__header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, &t);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, osb__progress);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &t);
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    if (c->body)
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, c->body);
    CURLcode rc = curl_easy_perform(curl);
    if (rc == CURLE_OK) {
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &c->status);
        if (t.body.len)
            c->json = json_loadb(t.body.data, t.body.len, 0, NULL);
    } else if (t.too_large) {
        snprintf(c->error, sizeof c->error, "the broker's answer is larger than %u bytes",
                 SERVICES_OSB_BODY_MAX);
    } else {
        c->timed_out = rc == CURLE_OPERATION_TIMEDOUT;
        snprintf(c->error, sizeof c->error, "%s", curl_easy_strerror(rc));
    }
    buf_free(&t.body);
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);
    free(identity);
}

void services_osb_call_clean(struct services_osb_call *c)
{
    free(c->url);
    free(c->body);
    free(c->username);
    if (c->password) {
        sodium_memzero(c->password, strlen(c->password));
        free(c->password);
    }
    free(c->identity);
    json_decref(c->json);
    memset(c, 0, sizeof *c);
}

void services_osb_describe(const struct services_osb_call *c, char *out, size_t size)
{
    const char *desc = json_string_value(json_object_get(c->json, "description"));
    const char *code = json_string_value(json_object_get(c->json, "error"));
    if (desc && code)
        snprintf(out, size, "%s: %.300s", code, desc);
    else if (desc || code)
        snprintf(out, size, "%.300s", desc ? desc : code);
    else if (size)
        out[0] = '\0';
    /* a control character would garble a terminal: the broker's words are shown as text */
    for (char *p = out; *p; p++)
        if ((unsigned char)*p < 0x20)
            *p = ' ';
}

char *services_osb_identity(const char *user_id)
{
    json_t *o = json_pack("{s:s}", "user_id", user_id ? user_id : "");
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    size_t n = sodium_base64_ENCODED_LEN(strlen(text), sodium_base64_VARIANT_ORIGINAL);
    char *b64 = xmalloc(n);
    sodium_bin2base64(b64, n, (const unsigned char *)text, strlen(text),
                      sodium_base64_VARIANT_ORIGINAL);
    char *value = xasprintf("cloudfoundry %s", b64);
    free(b64);
    free(text);
    return value;
}
