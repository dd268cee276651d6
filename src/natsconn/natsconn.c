#include "natsconn/natsconn.h"

#include <errno.h>
#include <nats/nats.h>
#include <strings.h>
#include <unistd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#define NATSCONN_MAX_SERVERS 16
#define NATSCONN_INBOX_MAX 65536
#define NATSCONN_CLOSE_FLUSH_MS 1000
#define NATSCONN_PROBE_MS 1000
/* A link that dies without a word (a cut, a host gone) is noticed by pings: one every
 * NATSCONN_PING_MS, the connection given up (and made again) once NATSCONN_PINGS_OUT are
 * unanswered, within about 9 s. libnats's default, a ping every 2 minutes, let a router whose
 * link died prune its whole table (each route's TTL, 30 s) long before it noticed. */
#define NATSCONN_PING_MS 3000
#define NATSCONN_PINGS_OUT 2

/* A message copied off libnats's thread, waiting for the loop. */
struct natsconn_item {
    struct natsconn_item *next;
    char *subject, *reply;
    size_t len;
    char data[]; /* len bytes and a NUL */
};

struct natsconn {
    uv_loop_t *loop;
    struct natsconn_config cfg;
    char *urls;
    natsConnection *nc;
    natsSubscription *subs[8];
    size_t n_subs;
    uv_async_t async;

    pthread_mutex_t lock; /* the rest */
    struct natsconn_item *head, **tail;
    size_t queued;
    bool state_changed;
    bool up;
    bool closed; /* libnats's last callback for the connection came */
    pthread_cond_t closed_cond;
    unsigned long long dropped;
    char last_refusal[256]; /* the server's last asynchronous error, logged once */
    bool tls;
    bool closing; /* natsconn_close was called: a closed connection is no news */
    char *shown;  /* urls fit for a message */
};

char *natsconn_url_masked(const char *url)
{
    char *out = xmalloc(strlen(url) * 2 + 8), *o = out;
    const char *p = url;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *scheme = memmem(p, len, "://", 3);
        const char *host = scheme ? scheme + 3 : p;
        const char *at = memchr(host, '@', len - (size_t)(host - p));
        if (at) {
            memcpy(o, p, (size_t)(host - p));
            o += host - p;
            o += sprintf(o, "***");
            memcpy(o, at, len - (size_t)(at - p));
            o += len - (size_t)(at - p);
        } else {
            memcpy(o, p, len);
            o += len;
        }
        p += len;
        if (*p == ',')
            *o++ = *p++;
    }
    *o = 0;
    return out;
}

int natsconn_errno(int nats_status)
{
    switch ((natsStatus)nats_status) {
    case NATS_OK:
        return 0;
    case NATS_NOT_FOUND:
        return -ENOENT;
    case NATS_TIMEOUT:
        return -ETIMEDOUT;
    case NATS_NO_MEMORY:
        return -ENOMEM;
    case NATS_CONNECTION_CLOSED:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_NO_SERVER:
    case NATS_NO_RESPONDERS:
    case NATS_STALE_CONNECTION:
    case NATS_NOT_YET_CONNECTED:
        return -ENOTCONN;
    case NATS_MAX_PAYLOAD:
        return -EMSGSIZE;
    case NATS_INVALID_ARG:
    case NATS_INVALID_SUBJECT:
        return -EINVAL;
    default:
        return -EIO;
    }
}

bool natsconn_security_tls(const char *urls, const struct natsconn_security *sec)
{
    if (sec && ((sec->tls_ca && *sec->tls_ca) || (sec->tls_cert && *sec->tls_cert)))
        return true;
    for (const char *p = urls; p && *p;) {
        p += strspn(p, ", ");
        if (!strncasecmp(p, "tls://", 6))
            return true;
        p += strcspn(p, ",");
    }
    return false;
}

/* A file the process must read: a sentence naming the flag when it cannot. */
static int natsconn__readable(const char *flag, const char *path, char *err, size_t errsize)
{
    if (access(path, R_OK) == 0)
        return 0;
    snprintf(err, errsize, "%s %s: cannot read it (%s)", flag, path, skiff_strerror(-errno));
    return -EINVAL;
}

/* libnats's last error on this thread, for a message. */
static const char *natsconn__last_error(natsStatus s)
{
    natsStatus last;
    const char *text = nats_GetLastError(&last);
    return text && *text ? text : natsStatus_GetText(s);
}

static int natsconn__apply_security(natsOptions *opts, const char *urls,
                                    const struct natsconn_security *sec, char *err, size_t errsize)
{
    struct natsconn_security none = {0};
    if (!sec)
        sec = &none;
    bool has_cert = sec->tls_cert && *sec->tls_cert, has_key = sec->tls_key && *sec->tls_key;
    if (has_cert != has_key) {
        snprintf(err, errsize,
                 "--nats-tls-cert and --nats-tls-key go together: give both "
                 "(a client certificate and its key) or neither");
        return -EINVAL;
    }
    natsStatus s = NATS_OK;
    if (natsconn_security_tls(urls, sec))
        s = natsOptions_SetSecure(opts, true);
    if (s == NATS_OK && sec->tls_ca && *sec->tls_ca) {
        if (natsconn__readable("--nats-tls-ca", sec->tls_ca, err, errsize) < 0)
            return -EINVAL;
        s = natsOptions_LoadCATrustedCertificates(opts, sec->tls_ca);
        if (s != NATS_OK) {
            snprintf(err, errsize, "--nats-tls-ca %s: not a PEM file of CA certificates (%s)",
                     sec->tls_ca, natsconn__last_error(s));
            return -EINVAL;
        }
    }
    if (s == NATS_OK && has_cert) {
        if (natsconn__readable("--nats-tls-cert", sec->tls_cert, err, errsize) < 0 ||
            natsconn__readable("--nats-tls-key", sec->tls_key, err, errsize) < 0)
            return -EINVAL;
        s = natsOptions_LoadCertificatesChain(opts, sec->tls_cert, sec->tls_key);
        if (s != NATS_OK) {
            snprintf(err, errsize,
                     "--nats-tls-cert %s / --nats-tls-key %s: not a PEM certificate chain and "
                     "its key (%s)",
                     sec->tls_cert, sec->tls_key, natsconn__last_error(s));
            return -EINVAL;
        }
    }
    if (s == NATS_OK && sec->creds && *sec->creds) {
        if (natsconn__readable("--nats-creds", sec->creds, err, errsize) < 0)
            return -EINVAL;
        s = natsOptions_SetUserCredentialsFromFiles(opts, sec->creds, NULL);
    }
    if (s != NATS_OK) {
        snprintf(err, errsize, "cannot set NATS security options: %s", natsconn__last_error(s));
        return -EINVAL;
    }
    return 0;
}

int natsconn_options(const char *urls, const struct natsconn_security *sec, int timeout_ms,
                     natsOptions **out, char *err, size_t errsize)
{
    const char *servers[NATSCONN_MAX_SERVERS];
    int n = 0;
    char *list = xstrdup(urls);
    for (char *save = NULL, *tok = strtok_r(list, ", ", &save); tok && n < NATSCONN_MAX_SERVERS;
         tok = strtok_r(NULL, ", ", &save))
        servers[n++] = tok;
    natsOptions *opts = NULL;
    natsStatus s = n ? natsOptions_Create(&opts) : NATS_INVALID_ARG;
    if (s == NATS_OK)
        s = natsOptions_SetServers(opts, servers, n);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(opts, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(opts, 250);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(opts, timeout_ms);
    if (s == NATS_OK)
        s = natsOptions_SetPingInterval(opts, NATSCONN_PING_MS);
    if (s == NATS_OK)
        s = natsOptions_SetMaxPingsOut(opts, NATSCONN_PINGS_OUT);
    free(list);
    if (s == NATS_OK && natsconn__apply_security(opts, urls, sec, err, errsize) < 0) {
        natsOptions_Destroy(opts);
        return -EINVAL;
    }
    if (s != NATS_OK) {
        char *shown = natsconn_url_masked(urls);
        snprintf(err, errsize,
                 "bad NATS servers \"%s\" (%s): give --nats as "
                 "nats://HOST:PORT[,nats://HOST:PORT...]",
                 shown, natsStatus_GetText(s));
        free(shown);
        natsOptions_Destroy(opts);
        return -EINVAL;
    }
    *out = opts;
    return 0;
}

/* ---- libnats's threads ------------------------------------------------------------------ */

static void natsconn__on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct natsconn *c = closure;
    const char *subject = natsMsg_GetSubject(msg), *reply = natsMsg_GetReply(msg);
    int len = natsMsg_GetDataLength(msg);
    struct natsconn_item *it = NULL;
    pthread_mutex_lock(&c->lock);
    if (c->queued < c->cfg.inbox_max && len >= 0) {
        it = xmalloc(sizeof *it + (size_t)len + 1);
        it->next = NULL;
        it->subject = xstrdup(subject ? subject : "");
        it->reply = reply && *reply ? xstrdup(reply) : NULL;
        it->len = (size_t)len;
        memcpy(it->data, natsMsg_GetData(msg), (size_t)len);
        it->data[len] = 0;
        *c->tail = it;
        c->tail = &it->next;
        c->queued++;
    } else {
        c->dropped++;
    }
    pthread_mutex_unlock(&c->lock);
    if (it)
        uv_async_send(&c->async);
    natsMsg_Destroy(msg);
}

static void natsconn__state(struct natsconn *c, bool up)
{
    pthread_mutex_lock(&c->lock);
    c->up = up;
    c->state_changed = true;
    pthread_mutex_unlock(&c->lock);
    uv_async_send(&c->async);
}

static void natsconn__on_up(natsConnection *nc, void *closure)
{
    natsconn__state(closure, true);
}

static void natsconn__on_down(natsConnection *nc, void *closure)
{
    natsconn__state(closure, false);
}

/* What an operator should check when NATS refuses us, from libnats's reason. */
static const char *natsconn__hint(const char *reason)
{
    if (strcasestr(reason, "verify") || strcasestr(reason, "certificate"))
        return ": the server's certificate must be signed by the CA of --nats-tls-ca (and name "
               "the host of the URL), and a client certificate by a CA the server trusts";
    if (strcasestr(reason, "authorization") || strcasestr(reason, "authentication"))
        return ": check the credentials (--nats-creds, or USER:PASSWORD@ in the URL)";
    if (strcasestr(reason, "permissions violation"))
        return ": the server's permissions for these credentials forbid it (docs/bus.md, "
               "\"Credentials and permissions\")";
    if (strcasestr(reason, "secure") || strcasestr(reason, "ssl") || strcasestr(reason, "tls"))
        return ": the server and this process must agree on TLS (tls:// URLs, --nats-tls-ca)";
    return "";
}

/* The server's asynchronous errors (a publish or a subscription its permissions forbid, a
 * slow consumer): each kind logged once, from libnats's thread (log_msg writes whole lines). */
static void natsconn__on_error(natsConnection *nc, natsSubscription *sub, natsStatus s,
                               void *closure)
{
    struct natsconn *c = closure;
    const char *text = NULL;
    if (natsConnection_GetLastError(nc, &text) == NATS_OK || !text || !*text)
        text = natsStatus_GetText(s);
    pthread_mutex_lock(&c->lock);
    bool fresh = strncmp(c->last_refusal, text, sizeof c->last_refusal - 1) != 0;
    if (fresh)
        snprintf(c->last_refusal, sizeof c->last_refusal, "%s", text);
    pthread_mutex_unlock(&c->lock);
    if (fresh)
        log_warning("NATS (%s): %s%s", c->cfg.name ? c->cfg.name : "connection", text,
                    natsconn__hint(text));
}

/* libnats calls it after every other callback of the connection: natsconn_close waits for it
 * so that no callback can come after the natsconn is freed. */
static void natsconn__on_closed(natsConnection *nc, void *closure)
{
    struct natsconn *c = closure;
    pthread_mutex_lock(&c->lock);
    bool ours = c->closing;
    pthread_mutex_unlock(&c->lock);
    /* libnats retries an unreachable server forever but gives up on a TLS failure (a server
     * certificate the CA does not vouch for, a client certificate refused): say why */
    const char *text = NULL;
    if (!ours && natsConnection_GetLastError(nc, &text) != NATS_OK && text && *text)
        log_error("NATS at %s: gave up connecting: %s%s", c->shown, text, natsconn__hint(text));
    pthread_mutex_lock(&c->lock);
    c->closed = true;
    pthread_cond_signal(&c->closed_cond);
    pthread_mutex_unlock(&c->lock);
}

/* ---- the loop --------------------------------------------------------------------------- */

static void natsconn__dispatch(uv_async_t *a)
{
    struct natsconn *c = a->data;
    pthread_mutex_lock(&c->lock);
    struct natsconn_item *it = c->head;
    c->head = NULL;
    c->tail = &c->head;
    c->queued = 0;
    bool changed = c->state_changed, up = c->up;
    c->state_changed = false;
    pthread_mutex_unlock(&c->lock);
    if (changed && c->cfg.on_state)
        c->cfg.on_state(c->cfg.ctx, up);
    while (it) {
        struct natsconn_item *next = it->next;
        if (c->nc)
            c->cfg.on_msg(c->cfg.ctx, it->subject, it->reply, it->data, it->len);
        free(it->subject);
        free(it->reply);
        free(it);
        it = next;
    }
}

/* One connection attempt in the foreground, its failure logged with libnats's reason: the
 * background attempts keep none (a refused certificate, bad credentials) and libnats gives up
 * on a TLS failure. An unreachable server is no news (the background attempts go on). */
static void natsconn__probe(const struct natsconn_config *cfg, const char *shown)
{
    natsOptions *probe = NULL;
    char err[256];
    if (natsconn_options(cfg->urls, &cfg->security, NATSCONN_PROBE_MS, &probe, err, sizeof err) < 0)
        return;
    natsConnection *nc = NULL;
    natsStatus s = natsOptions_SetMaxReconnect(probe, 0);
    if (s == NATS_OK && cfg->name)
        s = natsOptions_SetName(probe, cfg->name);
    if (s == NATS_OK)
        s = natsConnection_Connect(&nc, probe);
    if (s != NATS_OK && s != NATS_NO_SERVER) {
        const char *why = natsconn__last_error(s);
        log_error("NATS at %s refused the connection: %s%s", shown, why, natsconn__hint(why));
    }
    if (nc) {
        natsConnection_Close(nc);
        natsConnection_Destroy(nc);
    }
    natsOptions_Destroy(probe);
}

int natsconn_open(uv_loop_t *loop, const struct natsconn_config *cfg, struct natsconn **out,
                  char *err, size_t errsize)
{
    *out = NULL;
    natsOptions *opts = NULL;
    int rc = natsconn_options(cfg->urls, &cfg->security, 2000, &opts, err, errsize);
    if (rc < 0)
        return rc;
    struct natsconn *c = xcalloc(1, sizeof *c);
    c->loop = loop;
    c->cfg = *cfg;
    c->urls = xstrdup(cfg->urls);
    c->cfg.urls = c->urls;
    if (!c->cfg.inbox_max)
        c->cfg.inbox_max = NATSCONN_INBOX_MAX;
    c->tail = &c->head;
    c->tls = natsconn_security_tls(cfg->urls, &cfg->security);
    c->cfg.security = (struct natsconn_security){0}; /* the caller's strings: not kept */
    c->shown = natsconn_url_masked(cfg->urls);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->closed_cond, NULL);
    natsStatus s = NATS_OK;
    if (cfg->name)
        s = natsOptions_SetName(opts, cfg->name);
    if (s == NATS_OK)
        natsconn__probe(cfg, c->shown);
    if (s == NATS_OK)
        s = natsOptions_SetRetryOnFailedConnect(opts, true, natsconn__on_up, c);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(opts, natsconn__on_up, c);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(opts, natsconn__on_down, c);
    if (s == NATS_OK)
        s = natsOptions_SetClosedCB(opts, natsconn__on_closed, c);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(opts, natsconn__on_error, c);
    if (s == NATS_OK)
        s = natsOptions_SetSendAsap(opts, true);
    uv_async_init(loop, &c->async, natsconn__dispatch);
    c->async.data = c;
    if (s == NATS_OK) {
        s = natsConnection_Connect(&c->nc, opts);
        if (s == NATS_OK)
            natsconn__state(c, true);
        else if (s == NATS_NOT_YET_CONNECTED)
            s = NATS_OK; /* it keeps trying; on_up tells, on_closed says why it gave up */
    }
    natsOptions_Destroy(opts);
    if (s != NATS_OK) {
        char *shown = natsconn_url_masked(cfg->urls);
        snprintf(err, errsize, "cannot use NATS at %s: %s", shown, natsStatus_GetText(s));
        free(shown);
        natsconn_close(c);
        return natsconn_errno(s) ? natsconn_errno(s) : -EIO;
    }
    *out = c;
    return 0;
}

int natsconn_subscribe(struct natsconn *c, const char *subject)
{
    if (c->n_subs == ARRAY_SIZE(c->subs))
        return -ENOSPC;
    natsSubscription *sub = NULL;
    natsStatus s = natsConnection_Subscribe(&sub, c->nc, subject, natsconn__on_msg, c);
    if (s != NATS_OK)
        return natsconn_errno(s);
    natsSubscription_SetPendingLimits(sub, -1, -1); /* bounded by our inbox instead */
    c->subs[c->n_subs++] = sub;
    return 0;
}

int natsconn_publish(struct natsconn *c, const char *subject, const char *reply, const void *data,
                     size_t len)
{
    if (!c->nc)
        return -ENOTCONN;
    natsStatus s = reply ? natsConnection_PublishRequest(c->nc, subject, reply, data, (int)len)
                         : natsConnection_Publish(c->nc, subject, data, (int)len);
    return natsconn_errno(s);
}

char *natsconn_new_inbox(struct natsconn *c)
{
    natsInbox *inbox = NULL;
    if (natsInbox_Create(&inbox) != NATS_OK)
        return NULL;
    char *out = xstrdup(inbox);
    natsInbox_Destroy(inbox);
    return out;
}

bool natsconn_connected(const struct natsconn *c)
{
    return c && c->nc && natsConnection_Status(c->nc) == NATS_CONN_STATUS_CONNECTED;
}

bool natsconn_tls(const struct natsconn *c)
{
    return c && c->tls;
}

unsigned long long natsconn_dropped(const struct natsconn *c)
{
    pthread_mutex_t *lock = (pthread_mutex_t *)&c->lock;
    pthread_mutex_lock(lock);
    unsigned long long n = c->dropped;
    pthread_mutex_unlock(lock);
    return n;
}

static void natsconn__closed(uv_handle_t *h)
{
    struct natsconn *c = h->data;
    while (c->head) {
        struct natsconn_item *it = c->head;
        c->head = it->next;
        free(it->subject);
        free(it->reply);
        free(it);
    }
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->closed_cond);
    free(c->urls);
    free(c->shown);
    free(c);
}

void natsconn_close(struct natsconn *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_subs; i++) {
        natsSubscription_Unsubscribe(c->subs[i]);
        natsSubscription_Destroy(c->subs[i]);
    }
    c->n_subs = 0;
    pthread_mutex_lock(&c->lock);
    c->closing = true;
    pthread_mutex_unlock(&c->lock);
    if (c->nc) {
        if (natsConnection_Status(c->nc) == NATS_CONN_STATUS_CONNECTED)
            natsConnection_FlushTimeout(c->nc, NATSCONN_CLOSE_FLUSH_MS);
        natsConnection_Close(c->nc);
        /* bounded: the closed callback comes within milliseconds of Close */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 2;
        pthread_mutex_lock(&c->lock);
        while (!c->closed && pthread_cond_timedwait(&c->closed_cond, &c->lock, &until) == 0)
            ;
        pthread_mutex_unlock(&c->lock);
        natsConnection_Destroy(c->nc);
        c->nc = NULL;
    }
    uv_close((uv_handle_t *)&c->async, natsconn__closed);
}
