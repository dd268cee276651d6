/* http/message: what Skiff's HTTP server, client and router share about a message: a header
 * pair and the reason phrase of a status (the router's own answers use it too). */
#ifndef SKIFF_HTTP_MESSAGE_H
#define SKIFF_HTTP_MESSAGE_H

#include <stddef.h>

struct http_header {
    char *name; /* lower case in responses the client read; as sent in requests the server read */
    char *value;
};

/* The value of the first of n headers named name (compared without case, as RFC 9110 says
 * names are), or NULL. */
const char *http_header_find(const struct http_header *headers, size_t n, const char *name);

/* The reason phrase of an HTTP status (RFC 9110), "Unknown" for one Skiff never sends. */
const char *http_status_reason(int status);

#endif
