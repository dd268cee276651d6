/* ssh_frame: the frames `skiff ssh` and skiffd exchange once the API has switched the
 * connection over (HTTP/1.1 101, Upgrade: skiff-ssh; docs/api.md).
 *
 * A frame is a type byte, its length (3 bytes, big-endian), then that many bytes, at most
 * SSH_FRAME_MAX. Both sides send as many as they like, in any sizes up to that; the server
 * ends with one EXIT (the command ended) or ERROR (it could not run or the session broke),
 * then closes. A frame of a type the receiver does not take, longer than SSH_FRAME_MAX, or of
 * the wrong size for its type, is a protocol error: the receiver ends the session. */
#ifndef SKIFF_SSH_FRAME_H
#define SKIFF_SSH_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/buf.h"

#define SSH_FRAME_HEAD 4
#define SSH_FRAME_MAX 65536
#define SSH_PROTOCOL "skiff-ssh"

enum ssh_frame_type {
    SSH_FRAME_STDIN = 0,  /* client: bytes for the command's stdin */
    SSH_FRAME_STDOUT = 1, /* server: the command's stdout (and a terminal's whole output) */
    SSH_FRAME_STDERR = 2, /* server: the command's stderr */
    SSH_FRAME_EOF = 3,    /* client: no more stdin (empty) */
    SSH_FRAME_RESIZE = 4, /* client: the terminal's rows and columns (2 bytes each) */
    SSH_FRAME_EXIT = 5,   /* server: the exit status (4 bytes; 128+N when killed by signal N) */
    SSH_FRAME_ERROR = 6,  /* server: why the session ended without an exit status (text) */
};

struct ssh_frame {
    enum ssh_frame_type type;
    const unsigned char *data; /* points into the parsed bytes */
    size_t len;
};

/* Appends one frame to b; len at most SSH_FRAME_MAX (the caller cuts longer data). */
void ssh_frame_put(struct buf *b, enum ssh_frame_type type, const void *data, size_t len);
/* A 4-byte frame of a number (EXIT) or two 2-byte ones (RESIZE: a << 16 | b). */
void ssh_frame_put_u32(struct buf *b, enum ssh_frame_type type, uint32_t value);
uint32_t ssh_frame_u32(const struct ssh_frame *f);
/* The frame at the front of data: the bytes it takes, with out filled; 0 when it is not all
 * there yet; -EPROTO when it is not a frame (an unknown type, longer than SSH_FRAME_MAX, an
 * EOF with bytes, a RESIZE or EXIT not of 4 bytes). */
ssize_t ssh_frame_parse(const void *data, size_t len, struct ssh_frame *out);

#endif
