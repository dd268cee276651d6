/* Attribute filters of event mappings (see trigger.h). */
#include "trigger/trigger.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

int event_filter_parse(const char *expr, struct event_filter *out, char *err, size_t errsize)
{
    memset(out, 0, sizeof(*out));
    const char *eq = strchr(expr, '=');
    if (!eq) {
        snprintf(err, errsize,
                 "filter '%s' has no '=': write ATTR=VALUE for an exact match or ATTR^=PREFIX "
                 "for a prefix, e.g. type=image.uploaded",
                 expr);
        return TRIGGER_EINVAL;
    }
    size_t name_len = (size_t)(eq - expr);
    bool prefix = false;
    if (name_len > 0 && expr[name_len - 1] == '^') {
        prefix = true;
        name_len--;
    }
    if (name_len == 0 || name_len > 20) {
        snprintf(err, errsize,
                 "filter '%s' needs an attribute name of 1 to 20 characters before '=' (type, "
                 "source, subject or an extension)",
                 expr);
        return TRIGGER_EINVAL;
    }
    for (size_t i = 0; i < name_len; i++) {
        char c = expr[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) {
            snprintf(err, errsize,
                     "filter attribute '%.*s' is not a CloudEvents attribute name: use lowercase "
                     "letters and digits (type, source, subject, or an extension)",
                     (int)name_len, expr);
            return TRIGGER_EINVAL;
        }
    }
    memcpy(out->attr, expr, name_len);
    out->attr[name_len] = '\0';
    out->prefix = prefix;
    out->value = xstrdup(eq + 1);
    return 0;
}

void event_filter_free(struct event_filter *f)
{
    free(f->value);
    f->value = NULL;
}

bool event_filters_match(const struct event_filter *filters, size_t count, event_attr_fn get,
                         void *ctx)
{
    for (size_t i = 0; i < count; i++) {
        const char *v = get(ctx, filters[i].attr);
        if (!v)
            return false;
        if (filters[i].prefix ? !str_has_prefix(v, filters[i].value)
                              : strcmp(v, filters[i].value) != 0)
            return false;
    }
    return true;
}
