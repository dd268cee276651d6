/* stager's parsers for what buildpacks and apps declare: `bin/release` output and Procfiles.
 * Internal to the stager (tested on their own in tests/unit/test_stager.c). */
#ifndef SKIFF_STAGER_RELEASE_H
#define SKIFF_STAGER_RELEASE_H

#include <jansson.h>
#include <stddef.h>

/* Reads the YAML that `bin/release` prints and returns its default_process_types as a new
 * JSON object of strings ({} when the key is absent or empty). NULL and a message in err
 * when the YAML is broken or default_process_types is not a map of names to commands. */
json_t *stager_release_parse(const char *yaml, size_t len, char *err, size_t errsize);

/* Reads a Procfile ("name: command" per line; blank lines and # comments skipped) into a new
 * JSON object. NULL and a message naming the line when a line is not of that form. */
json_t *stager_procfile_parse(const char *text, size_t len, char *err, size_t errsize);

#endif
