/* pack: turns an app's folder into the tar.gz that `skiff push` uploads.
 *
 * Files listed in the folder's .cfignore or .skiffignore (gitignore-like patterns: `#`
 * comments, `*`, `?`, `[...]`, `**`, a trailing `/` for folders only, a leading `/` or an inner
 * `/` anchoring the pattern to the folder, `!` to take a file back) are left out, as are .git,
 * .hg, .svn and .DS_Store. Symlinks are stored as symlinks (the API refuses those that point
 * outside the folder). */
#ifndef SKIFF_CLI_PACK_H
#define SKIFF_CLI_PACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

struct pack_ignore;

/* Reads .cfignore and .skiffignore of dir (missing files are fine). Never NULL. */
struct pack_ignore *pack_ignore_load(const char *dir);
/* Adds one pattern line (as it would appear in an ignore file). */
void pack_ignore_add(struct pack_ignore *ig, const char *line);
/* True when the relative path (a folder when is_dir) is left out. */
bool pack_ignore_match(const struct pack_ignore *ig, const char *rel_path, bool is_dir);
void pack_ignore_free(struct pack_ignore *ig);

/* Packs dir as tar.gz into out (written from its current position, so a temporary file keeps
 * memory bounded whatever the folder's size). *files counts the entries packed. Returns 0, or
 * a negative code with *err (caller frees) naming the file that could not be read or written. */
int pack_folder(const char *dir, FILE *out, size_t *files, char **err);

#endif
