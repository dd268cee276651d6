/* buf: a growable byte buffer.
 *
 * A zeroed `struct buf` is an empty buffer; the caller owns it and releases it with
 * buf_free(). `data` is always NUL-terminated after any append, so a buffer of text can be
 * passed where a C string is expected. Out of memory aborts (see util.h: xmalloc). */
#ifndef SKIFF_BUF_H
#define SKIFF_BUF_H

#include <stdarg.h>
#include <stddef.h>

struct buf {
    char *data;
    size_t len;
    size_t cap;
};

void buf_reserve(struct buf *b, size_t extra);
void buf_append(struct buf *b, const void *data, size_t len);
void buf_puts(struct buf *b, const char *s);
void buf_putc(struct buf *b, char c);
/* Appends v in decimal: what buf_printf's "%llu" writes, without the format's cost (for
 * lines written per request). */
void buf_put_uint(struct buf *b, unsigned long long v);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_vprintf(struct buf *b, const char *fmt, va_list ap);
/* Drops the first n bytes (a consumer that has used the front of the buffer). */
void buf_consume(struct buf *b, size_t n);
void buf_reset(struct buf *b);
/* Reading a stream of '\n'-terminated lines: returns the next whole line at or after *pos,
 * NUL-terminated in place (its newline overwritten) with its length in *len, and moves *pos
 * past it; NULL when no whole line is left. The caller then drops what it took with
 * buf_consume(b, *pos), keeping a partial last line for the next read. */
char *buf_next_line(struct buf *b, size_t *pos, size_t *len);
/* Hands the data to the caller (free() it) and leaves the buffer empty. */
char *buf_steal(struct buf *b);
void buf_free(struct buf *b);

enum {
    /* Bytes outside ASCII become %XX instead of passing through: for text that is bytes
     * rather than UTF-8, like a request target in an access line. */
    BUF_JSON_PERCENT_NON_ASCII = 1,
};

/* Appends the len bytes of s as the inside of a JSON string (no quotes around it): `"` and
 * `\` backslash-escaped, control characters and DEL as \n, \r, \t or \u00XX. Without
 * flags, valid UTF-8 passes through and each byte of an invalid sequence becomes \ufffd, so
 * the result is always valid JSON in valid UTF-8; BUF_JSON_PERCENT_NON_ASCII percent-encodes
 * every byte from 0x80 instead. s may hold NUL bytes (written as \u0000). */
void buf_append_json_escaped(struct buf *b, const char *s, size_t len, int flags);

#endif
