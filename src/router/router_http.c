/* HTTP head rules the proxy needs beyond llhttp: strict line endings, and the rewriting of
 * heads in both directions. */
#include <string.h>
#include <strings.h>

#include "router/router.h"

void router_head_scan_reset(struct router_head_scan *s)
{
    memset(s, 0, sizeof(*s));
}

int router_head_scan(struct router_head_scan *s, const char *p, size_t n, size_t *end)
{
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\n') {
            if (s->last != '\r')
                return -1; /* bare LF */
            if (s->line_len == 0 && s->lines > 0) {
                *end = i + 1;
                s->last = c;
                return 1;
            }
            if (s->line_len)
                s->lines++;
            s->line_len = 0;
        } else if (s->last == '\r') {
            return -1; /* bare CR */
        } else if (c != '\r') {
            if (s->line_len == 0 && s->lines > 0 && (c == ' ' || c == '\t'))
                return -1; /* obsolete line folding */
            s->line_len++;
        }
        s->last = c;
    }
    return 0;
}

bool router_request_id_valid(const char *s, size_t n)
{
    if (n == 0 || n > 128)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == ':' || c == '+' || c == '/' || c == '=' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

bool router_header_name_valid(const char *s, size_t n)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  (c && strchr(extra, c));
        if (!ok)
            return false;
    }
    return true;
}

bool router_header_is(const struct router_header *h, const char *lower_name)
{
    size_t n = strlen(lower_name);
    return h->name_len == n && strncasecmp(h->name, lower_name, n) == 0;
}

bool router_header_has_token(const char *value, size_t len, const char *lower_token)
{
    size_t tl = strlen(lower_token);
    size_t i = 0;
    while (i < len) {
        while (i < len && (value[i] == ' ' || value[i] == '\t' || value[i] == ','))
            i++;
        size_t start = i;
        while (i < len && value[i] != ',')
            i++;
        size_t stop = i;
        while (stop > start && (value[stop - 1] == ' ' || value[stop - 1] == '\t'))
            stop--;
        if (stop - start == tl && strncasecmp(value + start, lower_token, tl) == 0)
            return true;
    }
    return false;
}

/* Headers that describe one hop, never forwarded as they are. */
static bool is_hop_by_hop(const struct router_header *h)
{
    static const char *const names[] = {
        "connection",    "keep-alive",        "proxy-connection", "te",
        "trailer",       "transfer-encoding", "upgrade",          "proxy-authenticate",
        "content-length"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (router_header_is(h, names[i]))
            return true;
    return false;
}

/* Whether a header is named in any Connection header (so it is hop-by-hop too). */
static bool named_in_connection(const struct router_header *h, const struct router_header *all,
                                size_t count)
{
    char name[64];
    if (h->name_len >= sizeof(name))
        return false;
    for (size_t i = 0; i < h->name_len; i++)
        name[i] = (char)(h->name[i] >= 'A' && h->name[i] <= 'Z' ? h->name[i] + 32 : h->name[i]);
    name[h->name_len] = '\0';
    for (size_t i = 0; i < count; i++)
        if (router_header_is(&all[i], "connection") &&
            router_header_has_token(all[i].value, all[i].value_len, name))
            return true;
    return false;
}

static void put_header(struct buf *out, const struct router_header *h)
{
    buf_reserve(out, h->name_len + h->value_len + 4);
    memcpy(out->data + out->len, h->name, h->name_len);
    out->len += h->name_len;
    out->data[out->len++] = ':';
    out->data[out->len++] = ' ';
    memcpy(out->data + out->len, h->value, h->value_len);
    out->len += h->value_len;
    out->data[out->len++] = '\r';
    out->data[out->len++] = '\n';
    out->data[out->len] = '\0';
}

static bool is_replaced_by_router(const struct router_header *hd)
{
    return router_header_is(hd, "x-forwarded-for") || router_header_is(hd, "x-forwarded-proto") ||
           router_header_is(hd, "x-forwarded-host") || router_header_is(hd, "x-request-id");
}

void router_head_build_request(struct buf *out, const struct router_request_head *h)
{
    const struct router_header *host = NULL, *upgrade = NULL;
    buf_printf(out, "%s %.*s HTTP/1.1\r\n", h->method, (int)h->url_len, h->url);
    for (size_t i = 0; i < h->header_count; i++) {
        const struct router_header *hd = &h->headers[i];
        if (router_header_is(hd, "host"))
            host = hd;
        else if (router_header_is(hd, "upgrade"))
            upgrade = hd;
        if (is_replaced_by_router(hd) || is_hop_by_hop(hd) ||
            named_in_connection(hd, h->headers, h->header_count))
            continue;
        put_header(out, hd);
    }
    /* every earlier hop, in order, then the client as this router saw it */
    buf_puts(out, "X-Forwarded-For: ");
    for (size_t i = 0; i < h->header_count; i++) {
        if (router_header_is(&h->headers[i], "x-forwarded-for") && h->headers[i].value_len) {
            buf_append(out, h->headers[i].value, h->headers[i].value_len);
            buf_puts(out, ", ");
        }
    }
    buf_printf(out, "%s\r\nX-Forwarded-Proto: http\r\n", h->client_ip);
    if (host) {
        buf_puts(out, "X-Forwarded-Host: ");
        buf_append(out, host->value, host->value_len);
        buf_puts(out, "\r\n");
    }
    buf_printf(out, "X-Request-Id: %s\r\n", h->request_id);
    if (h->chunked)
        buf_puts(out, "Transfer-Encoding: chunked\r\n");
    else if (h->has_length)
        buf_printf(out, "Content-Length: %llu\r\n", (unsigned long long)h->content_length);
    if (h->upgrade && upgrade) {
        buf_puts(out, "Connection: upgrade\r\nUpgrade: ");
        buf_append(out, upgrade->value, upgrade->value_len);
        buf_puts(out, "\r\n");
    }
    buf_puts(out, "\r\n");
}

void router_head_build_response(struct buf *out, int status, const char *reason, size_t reason_len,
                                const struct router_header *headers, size_t count,
                                bool close_client, bool upgrade, bool http10_keep_alive)
{
    buf_printf(out, "HTTP/1.1 %d %.*s\r\n", status, (int)reason_len, reason);
    for (size_t i = 0; i < count; i++) {
        const struct router_header *hd = &headers[i];
        /* framing headers stay: the body is forwarded with the framing they describe */
        bool framing =
            router_header_is(hd, "transfer-encoding") || router_header_is(hd, "content-length");
        bool keep_upgrade = upgrade && router_header_is(hd, "upgrade");
        if (!framing && !keep_upgrade &&
            (is_hop_by_hop(hd) || named_in_connection(hd, headers, count)))
            continue;
        put_header(out, hd);
    }
    if (upgrade)
        buf_puts(out, "Connection: upgrade\r\n");
    else if (close_client)
        buf_puts(out, "Connection: close\r\n");
    else if (http10_keep_alive)
        buf_puts(out, "Connection: keep-alive\r\n");
    buf_puts(out, "\r\n");
}
