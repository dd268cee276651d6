/* trigger: what makes an event mapping fire.
 *
 * Schedules (cron and @every) and attribute filters are pure functions: no I/O, no clock
 * reads, no allocation except where a function says it returns heap memory. All times are
 * milliseconds since the epoch, and cron fields are evaluated in UTC (a schedule written on
 * a machine in another zone means the same instants everywhere).
 *
 * Errors: the parse functions return 0, or TRIGGER_EINVAL (-EINVAL: the one error type of
 * common/err.h) with a message in err (size errsize) that names the offending field or token
 * and says what is accepted. */
#ifndef SKIFF_TRIGGER_H
#define SKIFF_TRIGGER_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TRIGGER_EINVAL (-EINVAL)

/* ---- schedules ----------------------------------------------------------------------- */

/* A parsed schedule. Either a 5-field cron expression (minute hour day-of-month month
 * day-of-week, with *, ranges a-b, steps * / n and a-b/n, lists, JAN-DEC and SUN-SAT names,
 * 7 as Sunday) or a fixed interval (`@every 30s`, `@every 1h30m`). The @yearly, @annually,
 * @monthly, @weekly, @daily, @midnight and @hourly shorthands are cron expressions. */
struct cron_schedule {
    uint64_t minutes; /* bit n: minute n (0-59) */
    uint32_t hours;   /* bit n: hour n (0-23) */
    uint32_t mdays;   /* bit n: day n of the month (1-31) */
    uint16_t months;  /* bit n: month n (1-12) */
    uint8_t wdays;    /* bit n: weekday n (0-6, 0 = Sunday) */
    /* Vixie cron's rule: when both day fields are restricted, a day matching either fires. */
    bool mday_restricted;
    bool wday_restricted;
    int64_t every_ms; /* > 0: a fixed interval, the fields above are unused */
};

/* Parses spec. A schedule that can never fire (e.g. `0 0 30 2 *`) is an error. An @every
 * interval must be at least 1 s and at most 366 days. */
int cron_parse(const char *spec, struct cron_schedule *out, char *err, size_t errsize);

/* The first instant strictly after after_ms at which the schedule fires: for cron, a whole
 * UTC minute; for @every, after_ms + the interval. Never fails for a parsed schedule. */
int64_t cron_next(const struct cron_schedule *s, int64_t after_ms);

/* The latest instant in (after_ms, now_ms] at which the schedule fires, or -1 when it does not
 * fire in between: the one fire to make up for when fires were missed. For @every the
 * instants are after_ms + k * interval. Cost grows with the log of the gap, not its length. */
int64_t cron_last_due(const struct cron_schedule *s, int64_t after_ms, int64_t now_ms);

/* A duration such as `30s`, `5m`, `1h30m`, `250ms`, `2d` (units ms, s, m, h, d, which may be
 * combined) in milliseconds; -1 when malformed or longer than 1000 days. */
int64_t trigger_parse_duration_ms(const char *text);
/* Parses where a replay or a read starts: "90s", "1h", "2d" (that long ago, relative to
 * now_ms), an RFC 3339 time, or a decimal offset. Sets exactly one of *offset (is_offset
 * true) or *time_ms. TRIGGER_EINVAL and a message in err when it is none of these. */
int trigger_parse_since(const char *text, int64_t now_ms, bool *is_offset, uint64_t *offset,
                        int64_t *time_ms, char *err, size_t errsize);

/* ---- filters ------------------------------------------------------------------------- */

/* One attribute condition: `attr=value` (exact) or `attr^=value` (prefix). attr is a
 * CloudEvents attribute name (type, source, subject, id, or an extension: lowercase letters
 * and digits, at most 20 characters). */
struct event_filter {
    char attr[21];
    bool prefix;
    char *value; /* heap, owned by the filter: event_filter_free() */
};

int event_filter_parse(const char *expr, struct event_filter *out, char *err, size_t errsize);
void event_filter_free(struct event_filter *f);

/* Looks up an attribute of the event being matched; NULL when the event has none. */
typedef const char *(*event_attr_fn)(void *ctx, const char *attr);

/* True when every filter matches (an empty list matches everything). An attribute the event
 * does not carry matches no filter on it. */
bool event_filters_match(const struct event_filter *filters, size_t count, event_attr_fn get,
                         void *ctx);

#endif
