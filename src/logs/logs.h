/* logs: a bounded buffer of recent log lines per app, and live followers.
 *
 * Every line is stored formatted as Cloud Foundry prints it:
 *     2026-11-27T11:09:56.123Z [APP/PROC/WEB/0] OUT text
 * with an RFC 3339 UTC timestamp, the source tag and OUT (stdout) or ERR (stderr). Each app
 * keeps its last `lines_per_app` lines; older ones are dropped. Nothing here blocks or
 * fails except on out-of-memory. Single-threaded: call from the loop that owns it. */
#ifndef SKIFF_LOGS_H
#define SKIFF_LOGS_H

#include <stddef.h>

struct logs;

#define LOGS_OUT 1
#define LOGS_ERR 2

struct logs *logs_new(size_t lines_per_app);
void logs_free(struct logs *lg);

/* Appends one line (without its newline; a trailing \n or \r\n is stripped, embedded ones
 * are kept as they are). tag is e.g. "API", "STG/0", "APP/PROC/WEB/0", "RTR/0". */
void logs_append(struct logs *lg, const char *app_guid, const char *tag, int stream,
                 const char *line, size_t len);
/* Like logs_append with a printf format. */
void logs_appendf(struct logs *lg, const char *app_guid, const char *tag, int stream,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* The last max_lines lines (0: all kept), each ending in \n; the caller frees. */
char *logs_recent(struct logs *lg, const char *app_guid, size_t max_lines, size_t *len);

/* Calls fn with every new line of the app (formatted, ending in \n) until logs_unfollow.
 * Returns an id > 0. fn may call logs_unfollow (for itself or others) but not logs_append. */
typedef void (*logs_follow_fn)(void *ctx, const char *line, size_t len);
int logs_follow(struct logs *lg, const char *app_guid, logs_follow_fn fn, void *ctx);
void logs_unfollow(struct logs *lg, int id);

/* Drops an app's buffer (deleted app). Its followers stay until they unfollow. */
void logs_forget(struct logs *lg, const char *app_guid);

#endif
