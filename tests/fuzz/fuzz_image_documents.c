/* libFuzzer target: arbitrary bytes as the documents a registry or a tarball hands skiffd (an
 * image config, a manifest or index, Skiff's own record of an image) and as an image
 * reference. Each parser must return a result or an error message, never crash, leak or trip
 * a sanitizer; what it accepts must come back whole through image_to_json (its layers, its
 * port and the user's ids staging resolved). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "images/images.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    char err[512];
    struct image_config c;
    if (image_config_parse(text, size, &c, err, sizeof err) == SKIFF_OK)
        image_config_clear(&c);
    struct image_manifest m;
    bool is_index;
    if (image_manifest_parse(text, size, &m, &is_index, err, sizeof err) == SKIFF_OK)
        image_manifest_clear(&m);
    char digest[IMAGE_DIGEST_LEN];
    image_index_pick(text, size, "linux", "amd64", digest, err, sizeof err);

    char *s = malloc(size + 1); /* the record and a reference are C strings */
    memcpy(s, data, size);
    s[size] = '\0';
    struct image img;
    if (image_from_json(s, &img, err, sizeof err) == SKIFF_OK) {
        char *back = image_to_json(&img);
        struct image again;
        if (!back || image_from_json(back, &again, err, sizeof err) != SKIFF_OK)
            abort();
        if (again.manifest.n_layers != img.manifest.n_layers ||
            again.config.ids != img.config.ids || again.config.uid != img.config.uid ||
            again.config.gid != img.config.gid || again.config.port != img.config.port)
            abort();
        image_clear(&again);
        free(back);
        image_clear(&img);
    }
    struct image_ref ref;
    if (image_ref_parse(s, &ref, err, sizeof err) == SKIFF_OK)
        image_ref_clear(&ref);
    free(s);
    return 0;
}
