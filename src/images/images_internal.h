/* What the files of src/images share and nobody else may use. */
#ifndef SKIFF_IMAGES_INTERNAL_H
#define SKIFF_IMAGES_INTERNAL_H

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

/* The largest manifest, index or config read whole. */
#define IMAGE_MAX_DOCUMENT (4u << 20)

#endif
