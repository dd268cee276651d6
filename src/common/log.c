/* log: see log.h. */
#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *log__program = "skiff";
static enum log_level log__level = LOG_INFO;

int log_level_parse(const char *name)
{
    static const struct {
        const char *name;
        enum log_level level;
    } names[] = {{"error", LOG_ERROR},
                 {"warning", LOG_WARNING},
                 {"warn", LOG_WARNING},
                 {"info", LOG_INFO},
                 {"debug", LOG_DEBUG}};
    for (size_t i = 0; name && i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(name, names[i].name))
            return (int)names[i].level;
    return -1;
}

void log_init(const char *program)
{
    log__program = program;
    const char *env = getenv("SKIFF_LOG_LEVEL");
    int level = log_level_parse(env);
    if (level >= 0)
        log__level = (enum log_level)level;
    else if (env && *env)
        log_warning("SKIFF_LOG_LEVEL=%.40s is not error, warning, info or debug: info is used",
                    env);
}

int log_enabled(enum log_level level)
{
    return level <= log__level;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (level > log__level)
        return;
    static const char *const tags[] = {"error: ", "warning: ", "", "debug: "};
    char line[2048];
    int n = snprintf(line, sizeof line, "%s: %s", log__program, tags[level]);
    if (n < 0 || (size_t)n >= sizeof line)
        n = 0;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = m < 0 ? (size_t)n : (size_t)n + (size_t)m;
    if (len > sizeof line - 2) {
        len = sizeof line - 5;
        memcpy(line + len, "...", 3); /* cut, and said to be */
        len += 3;
    }
    /* one message, one line: a library's text may hold newlines (libpq names each host of
     * a list on a line of its own, and ends with one), which would leave lines without the
     * program's name; they become "; " (nothing before a closing parenthesis) */
    while (len > (size_t)n && line[len - 1] == '\n')
        len--;
    char flat[sizeof line + sizeof line / 2];
    size_t k = 0;
    for (size_t i = 0; i < len && k < sizeof flat - 3; i++) {
        if (line[i] != '\n') {
            flat[k++] = line[i];
        } else if (i + 1 < len && line[i + 1] != ')' && line[i + 1] != '\n') {
            flat[k++] = ';';
            flat[k++] = ' ';
        }
    }
    flat[k++] = '\n';
    fwrite(flat, 1, k, stderr); /* one write: stdio locks it against other threads */
}
