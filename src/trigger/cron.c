/* Cron expressions and @every intervals (see trigger.h). */
#include "trigger/trigger.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/util.h"

struct cron_field {
    const char *name;
    int min, max;
    const char *const *names; /* names[i] stands for min + i; NULL when the field has none */
};

static const char *const month_names[] = {"jan", "feb", "mar", "apr", "may", "jun", "jul",
                                          "aug", "sep", "oct", "nov", "dec", NULL};
static const char *const wday_names[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat", NULL};

static const struct cron_field cron_fields[5] = {
    {"minute", 0, 59, NULL},           {"hour", 0, 23, NULL},
    {"day of month", 1, 31, NULL},     {"month", 1, 12, month_names},
    {"day of week", 0, 7, wday_names}, /* 7 is Sunday too */
};

/* Reads a number or a name at *p; advances *p. */
static int cron_read_value(const char **p, const struct cron_field *f, int *out)
{
    const char *s = *p;
    if (isdigit((unsigned char)*s)) {
        long v = 0;
        while (isdigit((unsigned char)*s)) {
            v = v * 10 + (*s - '0');
            if (v > 1000)
                return -1;
            s++;
        }
        *p = s;
        *out = (int)v;
        return 0;
    }
    if (f->names && isalpha((unsigned char)s[0]) && isalpha((unsigned char)s[1]) &&
        isalpha((unsigned char)s[2]) && !isalpha((unsigned char)s[3])) {
        for (int i = 0; f->names[i]; i++) {
            if (strncasecmp(s, f->names[i], 3) == 0) {
                *p = s + 3;
                *out = f->min + i;
                return 0;
            }
        }
    }
    return -1;
}

/* Parses one field (a comma list of *, n, a-b, with optional /step) into a bit set. */
static int cron_parse_field(const char *text, const struct cron_field *f, uint64_t *bits,
                            bool *restricted, char *err, size_t errsize)
{
    *bits = 0;
    *restricted = strcmp(text, "*") != 0 && strcmp(text, "?") != 0;
    const char *p = text;
    for (;;) {
        const char *item = p;
        int lo, hi, step = 1;
        if (*p == '*' || *p == '?') {
            lo = f->min;
            hi = f->max == 7 ? 6 : f->max;
            p++;
        } else {
            if (cron_read_value(&p, f, &lo) < 0)
                goto bad;
            hi = lo;
            if (*p == '-') {
                p++;
                if (cron_read_value(&p, f, &hi) < 0)
                    goto bad;
            }
        }
        bool ranged = item[0] == '*' || item[0] == '?' || hi != lo;
        if (*p == '/') {
            p++;
            if (cron_read_value(&p, &(struct cron_field){f->name, 1, 1000, NULL}, &step) < 0 ||
                step < 1)
                goto bad;
            if (!ranged)
                hi = f->max == 7 ? 6 : f->max; /* `5/15`: from 5 to the end, as Vixie cron */
        }
        if (lo < f->min || lo > f->max || hi < f->min || hi > f->max) {
            snprintf(err, errsize, "%s value in '%s' is out of range: use %d-%d", f->name, text,
                     f->min, f->max == 7 ? 6 : f->max);
            return TRIGGER_EINVAL;
        }
        if (lo > hi) {
            snprintf(err, errsize, "%s range in '%s' runs backwards: write it low-high", f->name,
                     text);
            return TRIGGER_EINVAL;
        }
        for (int v = lo; v <= hi; v += step)
            *bits |= 1ULL << (f->max == 7 && v == 7 ? 0 : v);
        if (*p == '\0')
            return 0;
        if (*p != ',')
            goto bad;
        p++;
    }
bad:
    snprintf(err, errsize,
             "cannot read the %s field '%s': use *, a number, a range a-b, a step */n or a-b/n, "
             "or a list a,b%s",
             f->name, text,
             f->names == month_names ? " (names jan-dec)"
             : f->names              ? " (names sun-sat)"
                                     : "");
    return TRIGGER_EINVAL;
}

int64_t trigger_parse_duration_ms(const char *s)
{
    int64_t total = 0;
    if (!*s)
        return -1;
    while (*s) {
        if (!isdigit((unsigned char)*s))
            return -1;
        int64_t n = 0;
        while (isdigit((unsigned char)*s)) {
            n = n * 10 + (*s++ - '0');
            if (n > 1000000000)
                return -1;
        }
        /* "ms" before "m" */
        static const struct {
            const char *suffix;
            int64_t ms;
        } units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
        size_t u = 0;
        while (u < ARRAY_SIZE(units) && !str_has_prefix(s, units[u].suffix))
            u++;
        if (u == ARRAY_SIZE(units))
            return -1;
        s += strlen(units[u].suffix);
        total += n * units[u].ms;
        if (total > (int64_t)1000 * 86400000)
            return -1;
    }
    return total;
}

static const struct {
    const char *name;
    const char *expr;
} cron_shorthands[] = {
    {"@yearly", "0 0 1 1 *"}, {"@annually", "0 0 1 1 *"}, {"@monthly", "0 0 1 * *"},
    {"@weekly", "0 0 * * 0"}, {"@daily", "0 0 * * *"},    {"@midnight", "0 0 * * *"},
    {"@hourly", "0 * * * *"},
};

int cron_parse(const char *spec, struct cron_schedule *out, char *err, size_t errsize)
{
    memset(out, 0, sizeof(*out));
    while (isspace((unsigned char)*spec))
        spec++;
    if (strncmp(spec, "@every", 6) == 0 && (spec[6] == ' ' || spec[6] == '\t')) {
        const char *d = spec + 6;
        while (isspace((unsigned char)*d))
            d++;
        char dur[64];
        size_t n = strcspn(d, " \t");
        if (n >= sizeof(dur) || d[n + strspn(d + n, " \t")] != '\0')
            goto bad_every;
        memcpy(dur, d, n);
        dur[n] = '\0';
        int64_t ms = trigger_parse_duration_ms(dur);
        if (ms < 0)
            goto bad_every;
        if (ms < 1000 || ms > (int64_t)366 * 86400000) {
            snprintf(err, errsize, "@every %s is out of range: use 1s to 366d", dur);
            return TRIGGER_EINVAL;
        }
        out->every_ms = ms;
        return 0;
    bad_every:
        snprintf(err, errsize,
                 "cannot read the interval in '%s': write e.g. '@every 30s', '@every 5m' or "
                 "'@every 1h30m' (units ms, s, m, h, d)",
                 spec);
        return TRIGGER_EINVAL;
    }
    if (spec[0] == '@') {
        for (size_t i = 0; i < sizeof(cron_shorthands) / sizeof(cron_shorthands[0]); i++) {
            size_t n = strlen(cron_shorthands[i].name);
            if (strncmp(spec, cron_shorthands[i].name, n) == 0 &&
                spec[n + strspn(spec + n, " \t")] == '\0')
                return cron_parse(cron_shorthands[i].expr, out, err, errsize);
        }
        snprintf(err, errsize,
                 "unknown schedule '%s': use 5 cron fields, @hourly, @daily, @weekly, @monthly, "
                 "@yearly or '@every 30s'",
                 spec);
        return TRIGGER_EINVAL;
    }

    char fields[5][64];
    int count = 0;
    const char *p = spec;
    while (*p) {
        size_t n = strcspn(p, " \t");
        if (count == 5) {
            count = 6;
            break;
        }
        if (n >= sizeof(fields[0])) {
            snprintf(err, errsize, "the %s field of '%s' is too long", cron_fields[count].name,
                     spec);
            return TRIGGER_EINVAL;
        }
        memcpy(fields[count], p, n);
        fields[count][n] = '\0';
        count++;
        p += n;
        p += strspn(p, " \t");
    }
    if (count != 5) {
        snprintf(err, errsize,
                 "schedule '%s' needs 5 fields (minute hour day-of-month month day-of-week), "
                 "e.g. '0 3 * * *', or @daily / '@every 30s'",
                 spec);
        return TRIGGER_EINVAL;
    }
    uint64_t bits[5];
    bool restricted[5];
    for (int i = 0; i < 5; i++) {
        int rc =
            cron_parse_field(fields[i], &cron_fields[i], &bits[i], &restricted[i], err, errsize);
        if (rc < 0)
            return rc;
    }
    out->minutes = bits[0];
    out->hours = (uint32_t)bits[1];
    out->mdays = (uint32_t)bits[2];
    out->months = (uint16_t)bits[3];
    out->wdays = (uint8_t)bits[4];
    out->mday_restricted = restricted[2];
    out->wday_restricted = restricted[4];

    /* Every valid day/month combination recurs within 28 years (the Gregorian weekday cycle
     * spans leap years), so a schedule with no fire in that window never fires. */
    int64_t from = 0, next = cron_next(out, from);
    if (next < 0) {
        snprintf(err, errsize, "schedule '%s' never fires (no such date): check day and month",
                 spec);
        return TRIGGER_EINVAL;
    }
    return 0;
}

static bool cron_day_matches(const struct cron_schedule *s, const struct tm *tm)
{
    bool mday = s->mdays & (1U << tm->tm_mday);
    bool wday = s->wdays & (1U << tm->tm_wday);
    if (s->mday_restricted && s->wday_restricted)
        return mday || wday;
    return mday && wday;
}

int64_t cron_next(const struct cron_schedule *s, int64_t after_ms)
{
    if (s->every_ms > 0)
        return after_ms + s->every_ms;
    /* Start at the next whole minute, then skip by the coarsest field that does not match:
     * each skip resets the finer fields, so the loop ends within a few thousand steps. */
    time_t t = (time_t)(after_ms / 60000 + 1) * 60;
    if (after_ms < 0)
        t = 0;
    time_t limit = t + (time_t)29 * 366 * 86400;
    struct tm tm;
    while (t < limit) {
        gmtime_r(&t, &tm);
        if (!(s->months & (1U << (tm.tm_mon + 1)))) {
            tm.tm_mon++;
            tm.tm_mday = 1;
            tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
            t = timegm(&tm);
            continue;
        }
        if (!cron_day_matches(s, &tm)) {
            tm.tm_mday++;
            tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
            t = timegm(&tm);
            continue;
        }
        if (!(s->hours & (1U << tm.tm_hour))) {
            tm.tm_hour++;
            tm.tm_min = tm.tm_sec = 0;
            t = timegm(&tm);
            continue;
        }
        if (!(s->minutes & (1ULL << tm.tm_min))) {
            t += 60;
            continue;
        }
        return (int64_t)t * 1000;
    }
    return -1;
}

int64_t cron_last_due(const struct cron_schedule *s, int64_t after_ms, int64_t now_ms)
{
    if (now_ms <= after_ms)
        return -1;
    if (s->every_ms > 0) {
        int64_t k = (now_ms - after_ms) / s->every_ms;
        return k > 0 ? after_ms + k * s->every_ms : -1;
    }
    /* Widen a window back from now until it holds a fire, then walk forward through it: the
     * walk covers the last doubling of the window, not every fire since after_ms. */
    int64_t from = after_ms;
    for (int64_t w = 60000; now_ms - w > after_ms; w *= 2) {
        int64_t d = cron_next(s, now_ms - w);
        if (d >= 0 && d <= now_ms) {
            from = now_ms - w;
            break;
        }
    }
    int64_t last = -1;
    for (int64_t d = cron_next(s, from); d >= 0 && d <= now_ms; d = cron_next(s, d))
        last = d;
    return last;
}

int trigger_parse_since(const char *text, int64_t now_ms, bool *is_offset, uint64_t *offset,
                        int64_t *time_ms, char *err, size_t errsize)
{
    *is_offset = false;
    size_t n = strlen(text);
    if (n > 0 && strspn(text, "0123456789") == n) {
        errno = 0;
        unsigned long long v = strtoull(text, NULL, 10);
        if (errno == 0) {
            *is_offset = true;
            *offset = v;
            return 0;
        }
    }
    int64_t ago = trigger_parse_duration_ms(text);
    if (ago >= 0) {
        *time_ms = now_ms - ago;
        return 0;
    }
    /* RFC 3339: 2026-11-27T10:00:00Z, with optional fraction and a Z or +hh:mm offset. */
    struct tm tm = {0};
    const char *rest = strptime(text, "%Y-%m-%dT%H:%M:%S", &tm);
    if (rest) {
        int64_t ms = (int64_t)timegm(&tm) * 1000;
        if (*rest == '.') {
            rest++;
            int64_t scale = 100;
            while (isdigit((unsigned char)*rest)) {
                ms += (*rest - '0') * scale;
                scale /= 10;
                rest++;
            }
        }
        int sign = 0, hh = 0, mm = 0;
        if (*rest == 'Z' || *rest == 'z') {
            rest++;
        } else if ((*rest == '+' || *rest == '-') && sscanf(rest + 1, "%2d:%2d", &hh, &mm) == 2) {
            sign = *rest == '+' ? 1 : -1;
            rest += 6;
        } else {
            rest = "?";
        }
        if (*rest == '\0') {
            *time_ms = ms - sign * ((int64_t)hh * 3600 + mm * 60) * 1000;
            return 0;
        }
    }
    snprintf(err, errsize,
             "cannot read '%s' as a start for replay: give a duration ago (90s, 1h, 2d), an RFC "
             "3339 time (2026-11-27T10:00:00Z) or an offset (a number)",
             text);
    return TRIGGER_EINVAL;
}
