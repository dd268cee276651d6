/* ssh_frame: see ssh_frame.h. */
#include "common/ssh_frame.h"

#include <errno.h>

void ssh_frame_put(struct buf *b, enum ssh_frame_type type, const void *data, size_t len)
{
    unsigned char head[SSH_FRAME_HEAD] = {(unsigned char)type, (unsigned char)(len >> 16),
                                          (unsigned char)(len >> 8), (unsigned char)len};
    buf_append(b, head, sizeof head);
    if (len)
        buf_append(b, data, len);
}

void ssh_frame_put_u32(struct buf *b, enum ssh_frame_type type, uint32_t value)
{
    unsigned char v[4] = {(unsigned char)(value >> 24), (unsigned char)(value >> 16),
                          (unsigned char)(value >> 8), (unsigned char)value};
    ssh_frame_put(b, type, v, sizeof v);
}

uint32_t ssh_frame_u32(const struct ssh_frame *f)
{
    if (f->len < 4)
        return 0;
    return (uint32_t)f->data[0] << 24 | (uint32_t)f->data[1] << 16 | (uint32_t)f->data[2] << 8 |
           f->data[3];
}

ssize_t ssh_frame_parse(const void *data, size_t len, struct ssh_frame *out)
{
    const unsigned char *p = data;
    if (len < 1)
        return 0;
    if (p[0] > SSH_FRAME_ERROR)
        return -EPROTO; /* said at once: no need to wait for a length */
    if (len < SSH_FRAME_HEAD)
        return 0;
    size_t flen = (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
    if (flen > SSH_FRAME_MAX)
        return -EPROTO;
    enum ssh_frame_type type = p[0];
    if ((type == SSH_FRAME_EOF && flen != 0) ||
        ((type == SSH_FRAME_RESIZE || type == SSH_FRAME_EXIT) && flen != 4))
        return -EPROTO;
    if (len < SSH_FRAME_HEAD + flen)
        return 0;
    out->type = type;
    out->data = p + SSH_FRAME_HEAD;
    out->len = flen;
    return (ssize_t)(SSH_FRAME_HEAD + flen);
}
