/* HTTP head rules the proxy needs beyond llhttp: strict line endings, and the rewriting of
 * heads in both directions. */
#include <string.h>
#include <strings.h>

#include "http/url.h"
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

enum header_kind {
    HK_OTHER,
    HK_HOST,
    HK_UPGRADE,
    HK_CONNECTION,
    HK_HOP, /* keep-alive, proxy-connection, proxy-authenticate */
    HK_TE,
    HK_TRANSFER_ENCODING,
    HK_CONTENT_LENGTH,
    HK_XFF,
    HK_XFP,
    HK_XFH,
    HK_REQUEST_ID,
    HK_XFCC,
};

/* What a header is to a proxy: by length first, so most names cost one comparison at most. */
static enum header_kind classify(const struct router_header *h)
{
    static const struct {
        const char *name;
        enum header_kind kind;
    } known[] = {
        {"host", HK_HOST},
        {"upgrade", HK_UPGRADE},
        {"connection", HK_CONNECTION},
        {"keep-alive", HK_HOP},
        {"proxy-connection", HK_HOP},
        {"te", HK_TE},
        {"proxy-authenticate", HK_HOP},
        {"transfer-encoding", HK_TRANSFER_ENCODING},
        {"content-length", HK_CONTENT_LENGTH},
        {"x-forwarded-for", HK_XFF},
        {"x-forwarded-proto", HK_XFP},
        {"x-forwarded-host", HK_XFH},
        {"x-request-id", HK_REQUEST_ID},
        {"x-forwarded-client-cert", HK_XFCC},
    };
    static const unsigned char lengths[] = {4, 7, 10, 10, 16, 2, 18, 17, 14, 15, 17, 16, 12, 23};
    char first = h->name_len ? (char)(h->name[0] | 0x20) : 0;
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (lengths[i] == h->name_len && known[i].name[0] == first &&
            strncasecmp(h->name, known[i].name, h->name_len) == 0)
            return known[i].kind;
    return HK_OTHER;
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

/* Whether some Connection header names more than the usual keep-alive/close/upgrade. */
static bool connection_names_headers(const struct router_header *all, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        if (classify(&all[i]) != HK_CONNECTION)
            continue;
        const char *v = all[i].value;
        size_t n = all[i].value_len, k = 0;
        while (k < n) {
            while (k < n && (v[k] == ' ' || v[k] == '\t' || v[k] == ','))
                k++;
            size_t start = k;
            while (k < n && v[k] != ',' && v[k] != ' ' && v[k] != '\t')
                k++;
            size_t len = k - start;
            if (len && !(len == 10 && strncasecmp(v + start, "keep-alive", 10) == 0) &&
                !(len == 5 && strncasecmp(v + start, "close", 5) == 0) &&
                !(len == 7 && strncasecmp(v + start, "upgrade", 7) == 0))
                return true;
        }
    }
    return false;
}

static void put(struct buf *out, const char *s, size_t n)
{
    memcpy(out->data + out->len, s, n);
    out->len += n;
}

#define PUT_LITERAL(out, lit) put((out), (lit), sizeof(lit) - 1)

static void put_header(struct buf *out, const struct router_header *h)
{
    buf_reserve(out, h->name_len + h->value_len + 4);
    put(out, h->name, h->name_len);
    PUT_LITERAL(out, ": ");
    put(out, h->value, h->value_len);
    PUT_LITERAL(out, "\r\n");
    out->data[out->len] = '\0';
}

void router_head_build_request(struct buf *out, const struct router_request_head *h)
{
    const struct router_header *upgrade = NULL;
    const char *host = h->host;
    size_t host_len = h->host_len;
    for (size_t i = 0; !host && i < h->header_count; i++)
        if (classify(&h->headers[i]) == HK_HOST) {
            host = h->headers[i].value;
            host_len = h->headers[i].value_len;
        }
    bool listed = connection_names_headers(h->headers, h->header_count);
    size_t method_len = strlen(h->method);
    buf_reserve(out, method_len + h->url_len + host_len + 20);
    put(out, h->method, method_len);
    PUT_LITERAL(out, " ");
    put(out, h->url, h->url_len);
    PUT_LITERAL(out, " HTTP/1.1\r\n");
    if (host) { /* the app sees the authority it was routed by, whatever the client said */
        PUT_LITERAL(out, "Host: ");
        put(out, host, host_len);
        PUT_LITERAL(out, "\r\n");
    }
    size_t xff_len = 0;
    bool te_trailers = false;
    for (size_t i = 0; i < h->header_count; i++) {
        const struct router_header *hd = &h->headers[i];
        switch (classify(hd)) {
        case HK_UPGRADE:
            upgrade = hd;
            continue;
        case HK_TE:
            /* hop-by-hop, but "trailers" holds for the next hop too: the router forwards them */
            te_trailers |= router_header_has_token(hd->value, hd->value_len, "trailers");
            continue;
        case HK_XFF:
            xff_len += hd->value_len + 2;
            continue;
        case HK_OTHER:
            break;
        default:
            continue;
        }
        if (listed && named_in_connection(hd, h->headers, h->header_count))
            continue;
        put_header(out, hd);
    }
    /* every earlier hop, in order, then the client as this router saw it */
    size_t ip_len = strlen(h->client_ip), id_len = strlen(h->request_id);
    buf_reserve(out, xff_len + ip_len + id_len + 128 + host_len);
    PUT_LITERAL(out, "X-Forwarded-For: ");
    for (size_t i = 0; xff_len && i < h->header_count; i++) {
        if (h->headers[i].value_len && classify(&h->headers[i]) == HK_XFF) {
            put(out, h->headers[i].value, h->headers[i].value_len);
            PUT_LITERAL(out, ", ");
        }
    }
    put(out, h->client_ip, ip_len);
    if (h->https)
        PUT_LITERAL(out, "\r\nX-Forwarded-Proto: https\r\n");
    else
        PUT_LITERAL(out, "\r\nX-Forwarded-Proto: http\r\n");
    if (host) {
        PUT_LITERAL(out, "X-Forwarded-Host: ");
        put(out, host, host_len);
        PUT_LITERAL(out, "\r\n");
    }
    PUT_LITERAL(out, "X-Request-Id: ");
    put(out, h->request_id, id_len);
    PUT_LITERAL(out, "\r\n");
    out->data[out->len] = '\0';
    if (h->client_cert) {
        buf_puts(out, "X-Forwarded-Client-Cert: ");
        buf_puts(out, h->client_cert);
        buf_puts(out, "\r\n");
    }
    if (te_trailers)
        buf_puts(out, "TE: trailers\r\n");
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
    bool listed = connection_names_headers(headers, count);
    if (status < 100 || status > 999)
        status = 502;
    buf_reserve(out, reason_len + 16);
    PUT_LITERAL(out, "HTTP/1.1 ");
    char code[4] = {(char)('0' + status / 100), (char)('0' + status / 10 % 10),
                    (char)('0' + status % 10), ' '};
    put(out, code, 4);
    put(out, reason, reason_len);
    PUT_LITERAL(out, "\r\n");
    out->data[out->len] = '\0';
    for (size_t i = 0; i < count; i++) {
        const struct router_header *hd = &headers[i];
        switch (classify(hd)) {
        case HK_TRANSFER_ENCODING:
        case HK_CONTENT_LENGTH:
            /* framing headers stay: the body is forwarded with the framing they describe */
            put_header(out, hd);
            continue;
        case HK_UPGRADE:
            if (upgrade)
                put_header(out, hd);
            continue;
        case HK_CONNECTION:
        case HK_HOP:
        case HK_TE:
            continue;
        default:
            break;
        }
        if (listed && named_in_connection(hd, headers, count))
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

void router_trailers_build(struct buf *out, const struct router_header *trailers, size_t count)
{
    buf_puts(out, "0\r\n");
    for (size_t i = 0; i < count; i++) {
        const struct router_header *hd = &trailers[i];
        /* framing, routing and connection fields mean nothing after the body; the forwarding
         * headers are the router's own to set */
        if (classify(hd) != HK_OTHER || !router_header_name_valid(hd->name, hd->name_len))
            continue;
        put_header(out, hd);
    }
    buf_puts(out, "\r\n");
}


size_t router_target_normalize(char *t, size_t len, const char **why)
{
    static const char hex[] = "0123456789ABCDEF";
    if (len == 1 && t[0] == '*')
        return 1;
    if (len == 0 || t[0] != '/') {
        *why = "The request target must be a path that starts with /.";
        return 0;
    }
    size_t path_end = 0;
    while (path_end < len && t[path_end] != '?' && t[path_end] != '#')
        path_end++;
    /* in place: every input byte gives at most one output byte, so o never passes i */
    size_t i = 1, o = 1;
    while (i <= path_end) {
        size_t seg = o;
        while (i < path_end && t[i] != '/') {
            if (t[i] != '%') {
                t[o++] = t[i++];
                continue;
            }
            int hi = i + 2 < path_end ? http_hex_value((unsigned char)t[i + 1]) : -1;
            int lo = i + 2 < path_end ? http_hex_value((unsigned char)t[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                *why = "The request path has a % that is not followed by two hex digits (send a "
                       "literal % as %25).";
                return 0;
            }
            unsigned char v = (unsigned char)(hi * 16 + lo);
            if (v == 0) {
                *why = "The request path contains an encoded NUL (%00).";
                return 0;
            }
            if (http_is_unreserved(v)) { /* %7E and ~ are the same URI: keep the plain form */
                t[o++] = (char)v;
            } else {
                t[o++] = '%';
                t[o++] = hex[v >> 4];
                t[o++] = hex[v & 15];
            }
            i += 3;
        }
        size_t seg_len = o - seg;
        bool dot = seg_len == 1 && t[seg] == '.';
        bool dotdot = seg_len == 2 && t[seg] == '.' && t[seg + 1] == '.';
        if (dot || dotdot) {
            o = seg; /* the output ends with the slash before the segment */
            if (dotdot && o > 1) {
                o--; /* that slash, then the segment before it */
                while (o > 0 && t[o - 1] != '/')
                    o--;
            }
        }
        if (i < path_end && !(dot || dotdot))
            t[o++] = '/';
        i++; /* past the slash, or past the end */
    }
    memmove(t + o, t + path_end, len - path_end);
    return o + (len - path_end);
}

bool router_authority_valid(const char *s, size_t n)
{
    size_t i = 0;
    if (n && s[0] == '[') { /* IP literal: hex digits, colons and dots (an IPv4 tail) */
        for (i = 1; i < n && s[i] != ']'; i++)
            if (!(http_hex_value((unsigned char)s[i]) >= 0 || s[i] == ':' || s[i] == '.'))
                return false;
        if (i == n || i == 1)
            return false;
        i++;
    } else {
        for (; i < n && s[i] != ':'; i++)
            if (!http_is_unreserved((unsigned char)s[i]))
                return false;
        if (i == 0)
            return false;
    }
    if (i == n)
        return true;
    if (s[i] != ':' || n - i - 1 > 5)
        return false;
    for (i++; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

int router_target_absolute(char *t, size_t len, size_t *authority_len, size_t *origin_len,
                           const char **why)
{
    size_t scheme;
    if (len >= 7 && strncasecmp(t, "http://", 7) == 0)
        scheme = 7;
    else if (len >= 8 && strncasecmp(t, "https://", 8) == 0)
        scheme = 8;
    else
        return 0;
    size_t end = scheme;
    while (end < len && t[end] != '/' && t[end] != '?')
        end++;
    size_t auth = end - scheme;
    if (!router_authority_valid(t + scheme, auth)) {
        *why = "The request target's authority is not host[:port] (no user@, no odd "
               "characters).";
        return -1;
    }
    memmove(t, t + scheme, auth);
    size_t o = auth;
    if (end == len || t[end] != '/')
        t[o++] = '/'; /* "http://a?q" is "/?q" for a; the scheme left room for it */
    memmove(t + o, t + end, len - end);
    *authority_len = auth;
    *origin_len = o - auth + (len - end);
    return 1;
}
