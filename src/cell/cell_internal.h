/* What the files of src/cell share and nobody else may use. */
#ifndef SKIFF_CELL_INTERNAL_H
#define SKIFF_CELL_INTERNAL_H

#include <stdbool.h>
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
/* How long a fetch from one controller may go without a byte before the next is tried. */
long cell__stall_ms(const struct cell_droplets *cd);
/* After a controller refused token (why: its answer) for what (a droplet's or a layer's
 * digest): true, with token replaced, when the token file holds another good token now (it
 * was rotated meanwhile: the fetch is worth one more try); false when not. Logs either way.
 * The one rule for droplets and layers alike. */
bool cell__token_rotated(const struct cell_droplets *cd, char token[CELL__TOKEN_MAX],
                         const char *what, const char *why);

#endif
