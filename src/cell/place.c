/* cell: the placement rule (cell.h). */
#include <string.h>

#include "cell/cell.h"

/* Whether a is a better home than b for the next instance (both up, with room). */
static bool cell__better(const struct cell_candidate *a, const struct cell_candidate *b)
{
    if (a->process_count != b->process_count)
        return a->process_count < b->process_count;
    if (a->zone_process_count != b->zone_process_count)
        return a->zone_process_count < b->zone_process_count;
    if (a->free_bytes != b->free_bytes)
        return a->free_bytes > b->free_bytes;
    return strcmp(a->id ? a->id : "", b->id ? b->id : "") < 0;
}

int cell_place(const struct cell_candidate *cells, size_t n, uint64_t need_bytes)
{
    int best = -1;
    for (size_t i = 0; i < n; i++) {
        if (!cells[i].up || cells[i].free_bytes < need_bytes)
            continue;
        if (best < 0 || cell__better(&cells[i], &cells[best]))
            best = (int)i;
    }
    return best;
}
