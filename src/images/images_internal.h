/* What the files of src/images share and nobody else may use. */
#ifndef SKIFF_IMAGES_INTERNAL_H
#define SKIFF_IMAGES_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "images/images.h"

/* Writes the message to err and returns code. */
int image__fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
uint64_t image__max_blob(const struct image_store *s);
uint64_t image__max_layer(const struct image_store *s);
uint64_t image__max_image(const struct image_store *s);
/* "sha256:HEX" of data (libcrypto's: the CPU's SHA instructions where there are some). */
void image__sha256(const void *data, size_t len, char out[IMAGE_DIGEST_LEN]);
/* A fresh name under the store's tmp/ (caller frees). */
char *image__tmp_path(const struct image_store *s, const char *what);

/* What a pull stored under tmp/, each with the name it gets in the store: each fsynced (a
 * layer's files were synced as it was unpacked), then all renamed into place
 * (image__pending_commit), or all removed (image__pending_abort). Adding is thread-safe; both
 * ends free the lists. */
struct image_pending {
    pthread_mutex_t lock;
    char **tmp, **final;
    size_t n, cap;
};
#define IMAGE_PENDING_INIT                                                                         \
    {                                                                                              \
        .lock = PTHREAD_MUTEX_INITIALIZER                                                          \
    }
void image__pending_add(struct image_pending *p, char *tmp, char *final); /* takes both */
int image__pending_commit(const struct image_store *s, struct image_pending *p, char *err,
                          size_t errlen);
void image__pending_abort(struct image_pending *p);

/* image_blob_begin; keep false: nothing is written, only the digest and the size are checked
 * (a layer unpacked while it streams in is not kept compressed too). */
int image__blob_begin(const struct image_store *s, const char *expected, const char *what,
                      bool keep, struct image_blob_writer **out, char *err, size_t errlen);
/* Checks the digest like image_blob_commit and frees the writer, but a kept blob is neither
 * synced nor renamed: it goes on p for image__pending_commit. */
int image__blob_verify(struct image_blob_writer *w, struct image_pending *p, char *err,
                       size_t errlen);

/* Unpacking a layer while its blob streams in, on a thread of its own: begin (the layer's
 * folder made under tmp/), feed it every byte of the blob, then end. The unpacking is the
 * hostile-layer checks of image_layer_unpack; once it stopped (the tar ended, or it was
 * refused) what is fed is dropped. end: verified says the blob matched its digest; only then
 * is a layer that was accepted put on p (to be renamed to layers/sha256/HEX); otherwise its
 * folder is removed. The unpacking's error is end's. end frees the stream. */
struct image_layer_stream;
int image__layer_stream_begin(const struct image_store *s, const char *digest,
                              struct image_layer_stream **out, char *err, size_t errlen);
void image__layer_stream_write(struct image_layer_stream *ls, const void *data, size_t len);
int image__layer_stream_end(struct image_layer_stream *ls, bool verified, struct image_pending *p,
                            char *err, size_t errlen);

/* The largest manifest, index or config read whole. */
#define IMAGE_MAX_DOCUMENT (4u << 20)

#endif
