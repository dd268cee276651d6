/* http/url: percent-encoding (see url.h). */
#include "http/url.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"

int http_hex_value(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

bool http_is_unreserved(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

long http_percent_decode_into(const char *s, size_t len, unsigned flags, char *out)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%') {
            int h = i + 1 < len ? http_hex_value((unsigned char)s[i + 1]) : -1;
            int l = i + 2 < len ? http_hex_value((unsigned char)s[i + 2]) : -1;
            if (h >= 0 && l >= 0) {
                out[n++] = (char)(h * 16 + l);
                i += 2;
                continue;
            }
            if (flags & HTTP_DECODE_STRICT)
                return -1;
            out[n++] = '%';
        } else if ((flags & HTTP_DECODE_FORM) && s[i] == '+') {
            out[n++] = ' ';
        } else {
            out[n++] = s[i];
        }
    }
    out[n] = '\0';
    return memchr(out, '\0', n) ? -1 : (long)n;
}

char *http_percent_decode(const char *s, size_t len, unsigned flags)
{
    char *out = xmalloc(len + 1);
    if (http_percent_decode_into(s, len, flags, out) < 0) {
        free(out);
        return NULL;
    }
    return out;
}

char *http_percent_encode(const char *s, bool (*keep)(int c))
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    char *out = xmalloc(3 * n + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (keep ? keep(c) : http_is_unreserved(c)) {
            *o++ = (char)c;
        } else {
            *o++ = '%';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    *o = '\0';
    return out;
}
