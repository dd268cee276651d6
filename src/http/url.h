/* http/url: percent-encoding, the one implementation the API (paths, query strings), the
 * CloudEvents HTTP binding (ce-* header values) and the router (request targets) share. */
#ifndef SKIFF_HTTP_URL_H
#define SKIFF_HTTP_URL_H

#include <stdbool.h>
#include <stddef.h>

/* The value of one hex digit, or -1. */
int http_hex_value(int c);

enum {
    HTTP_DECODE_FORM = 1,   /* '+' is a space (application/x-www-form-urlencoded, queries) */
    HTTP_DECODE_STRICT = 2, /* a '%' not followed by two hex digits is an error, not kept */
};

/* Decodes len bytes of s (flags above) into a new string (caller frees). NULL when the result
 * would hold a NUL byte (it would cut the value short wherever it goes next) or, with
 * HTTP_DECODE_STRICT, when an escape is malformed. */
char *http_percent_decode(const char *s, size_t len, unsigned flags);
/* The same into out (len + 1 bytes at least): the decoded length, or -1 where
 * http_percent_decode gives NULL. */
long http_percent_decode_into(const char *s, size_t len, unsigned flags, char *out);

/* Encodes as %XX (upper-case digits) every byte of s for which keep is false; keep NULL
 * keeps RFC 3986's unreserved ones (http_is_unreserved). Caller frees. */
char *http_percent_encode(const char *s, bool (*keep)(int c));

/* Whether c is an RFC 3986 unreserved character. */
bool http_is_unreserved(int c);

#endif
