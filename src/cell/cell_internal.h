/* What the files of src/cell share and nobody else may use. */
#ifndef SKIFF_CELL_INTERNAL_H
#define SKIFF_CELL_INTERNAL_H

#include <stddef.h>

#include "cell/cell.h"

#define CELL__TOKEN_MAX 256

/* This cell's own token from cd's token file, checked (fetch.c): 0, or a negative errno and
 * a sentence in err naming the file and what to do. */
int cell__token(const struct cell_droplets *cd, char token[CELL__TOKEN_MAX], char *err,
                size_t errsize);
/* The controllers of this cell's configuration (--controller-url; NULL-terminated, may be
 * empty; cd's): the only places its token is sent (fetch.c). */
const char *const *cell__controllers(const struct cell_droplets *cd);

#endif
