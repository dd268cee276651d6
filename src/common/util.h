/* util: small helpers every component uses: memory that cannot fail, files, paths, ids, time.
 *
 * The x* allocators abort on out-of-memory (the only failure they have); everything else
 * returns 0 on success or a negative errno value, and never aborts on bad input. */
#ifndef SKIFF_UTIL_H
#define SKIFF_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* The space everything made before spaces existed belongs to (org "default", space "dev"):
 * the store, auth and the event fabric's topic names all mean this one. */
#define SKIFF_DEFAULT_SPACE_GUID "00000000-0000-4000-8000-00000000000b"

void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t n);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Creates a directory and its parents (mode 0755 unless given); an existing one is fine. */
int mkdir_p(const char *path, unsigned mode);
/* Removes a tree like `rm -rf`; a missing path is fine. Never follows symlinks. */
int rm_rf(const char *path);
/* What copy_tree may still copy: bytes of file contents and entries, spent as it goes. */
struct copy_budget {
    uint64_t bytes, entries;
};
/* Copies the tree src to dst (dst must not exist, or be an empty folder), never following
 * links: folders, regular files and symbolic links with their modes (less setuid and setgid),
 * owners and times; fifos, sockets and devices are left out. With a budget (NULL: no limit),
 * -EFBIG when the tree needs more than it has left: hard links and sparse files cannot make
 * the copy larger than the bound its source had. What was copied before an error stays (the
 * caller removes dst). */
int copy_tree(const char *src, const char *dst, struct copy_budget *budget);
/* Reads a whole file into a NUL-terminated heap string (caller frees); *len may be NULL. */
int file_read(const char *path, char **out, size_t *len);
/* Writes a file atomically (temp file, fsync, rename) with the given mode. */
int file_write_atomic(const char *path, const void *data, size_t len, unsigned mode);
/* The same without the fsync: readers never see half a file, but it may be lost in a
 * machine crash. For what does not outlive the machine (an instance's spec, pid files). */
int file_replace(const char *path, const void *data, size_t len, unsigned mode);

/* A random version-4 UUID, 36 characters plus NUL. */
void uuid_generate_v4(char out[37]);
/* `n` random bytes as 2n lowercase hex characters plus NUL. */
void random_hex(char *out, size_t n);

/* Wall clock in milliseconds and nanoseconds since the epoch; monotonic milliseconds. */
int64_t time_now_ms(void);
int64_t time_now_ns(void);
int64_t time_mono_ms(void);

/* A rate limit with a burst (a token bucket): rate_take says whether one more may be done at
 * now_ms (a monotonic time), at most per_s a second on average after burst at once. Zeroed is
 * full. */
struct rate_limit {
    double credit;
    int64_t at_ms;
    bool started;
};
bool rate_take(struct rate_limit *r, int64_t now_ms, double per_s, double burst);
/* How long something paced to once a period_ms (a table sent after changes) waits, at now_ms,
 * when it last happened at last_ms (negative: never): 0, unless that was less than period_ms
 * ago, then the rest of it. So a lone change goes at once and a burst goes once a period. */
int64_t time_pace_delay_ms(int64_t now_ms, int64_t last_ms, int64_t period_ms);
/* RFC 3339 UTC time with milliseconds, e.g. 2026-11-27T11:09:56.123Z; out >= 32 bytes. */
void time_format_rfc3339(int64_t ms, char *out, size_t size);

/* Expands a leading "~/" with $HOME. Caller frees. */
char *path_expand_home(const char *path);
bool str_has_prefix(const char *s, const char *prefix);
bool str_has_suffix(const char *s, const char *suffix);
/* A NULL-terminated array of strings copied (NULL: NULL), and freed with its strings. */
char **strv_dup(char *const *v);
void strv_free(char **v);
/* The one rule for what users name: apps, process types, orgs, spaces, quota plans,
 * mappings' apps: [a-z0-9][a-z0-9-]{0,62} (a DNS label, so an app's name can be its host).
 * Topic names (fabric_name_valid) also take '.' and '_'; user names are auth's. */
bool name_valid(const char *name);

#endif
