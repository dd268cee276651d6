/* log: the one way skiffd and skiff-router write their own lines (to stderr, where an operator
 * or a service manager reads them): "PROGRAM: message", with "error: " or "warning: " after
 * the program for those levels. SKIFF_LOG_LEVEL (error, warning, info, debug; default info)
 * leaves out what is below it. One write per line, so threads never interleave within one.
 * Tenants' output never goes through here: it is their log (src/logs). */
#ifndef SKIFF_LOG_H
#define SKIFF_LOG_H

enum log_level { LOG_ERROR, LOG_WARNING, LOG_INFO, LOG_DEBUG };

/* Names the program in each line and reads SKIFF_LOG_LEVEL; before it, lines say "skiff". */
void log_init(const char *program);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Whether lines of level are written (for a caller that must build an expensive one). */
int log_enabled(enum log_level level);
/* The level a name stands for (error, warning or warn, info, debug), or -1. */
int log_level_parse(const char *name);

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
