/* libFuzzer target: arbitrary bytes as a manifest.yml. The parser must return a manifest or
 * an error message, never crash, leak or trip a sanitizer. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "cli/manifest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct manifest *m = NULL;
    char *err = NULL;
    if (manifest_parse((const char *)data, size, "manifest.yml", "/nonexistent", NULL, &m, &err) ==
        0)
        manifest_free(m);
    free(err);
    return 0;
}
