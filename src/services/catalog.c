/* services: a broker's catalog, checked against the Open Service Broker API. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "services/services.h"

static int catalog__fail(char *err, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int catalog__fail(char *err, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, size, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

/* CLI-friendly: what a user types after `skiff create-service`. */
static bool catalog__name_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 255)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_' || *s == '.'))
            return false;
    return true;
}

/* A string field: required or not, non-empty when there. */
static int catalog__string(const json_t *obj, const char *key, bool required, const char *where,
                           char *err, size_t size)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return required ? catalog__fail(err, size, "%s.%s: missing", where, key) : 0;
    if (!json_is_string(v) || (required && !json_string_length(v)))
        return catalog__fail(err, size, "%s.%s: must be a non-empty string", where, key);
    return 0;
}

static int catalog__typed(const json_t *obj, const char *key, json_type type, const char *what,
                          const char *where, char *err, size_t size)
{
    json_t *v = json_object_get(obj, key);
    if (v && json_typeof(v) != type && !(type == JSON_TRUE && json_is_boolean(v)))
        return catalog__fail(err, size, "%s.%s: must be %s", where, key, what);
    return 0;
}

static int catalog__strings(const json_t *obj, const char *key, const char *where, char *err,
                            size_t size)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return 0;
    size_t i;
    json_t *x;
    bool ok = json_is_array(v);
    json_array_foreach(v, i, x)
    {
        if (!json_is_string(x))
            ok = false;
    }
    return ok ? 0 : catalog__fail(err, size, "%s.%s: must be a list of strings", where, key);
}

static int catalog__plan(const json_t *plan, const char *where, char *err, size_t size)
{
    int rc;
    if (!json_is_object(plan))
        return catalog__fail(err, size, "%s: must be an object", where);
    if ((rc = catalog__string(plan, "id", true, where, err, size)) ||
        (rc = catalog__string(plan, "name", true, where, err, size)) ||
        (rc = catalog__string(plan, "description", true, where, err, size)))
        return rc;
    if (!catalog__name_ok(json_string_value(json_object_get(plan, "name"))))
        return catalog__fail(err, size,
                             "%s.name: \"%s\" is not CLI-friendly (letters, digits, '-', '_', '.')",
                             where, json_string_value(json_object_get(plan, "name")));
    if ((rc = catalog__typed(plan, "free", JSON_TRUE, "true or false", where, err, size)) ||
        (rc = catalog__typed(plan, "bindable", JSON_TRUE, "true or false", where, err, size)) ||
        (rc = catalog__typed(plan, "plan_updateable", JSON_TRUE, "true or false", where, err,
                             size)) ||
        (rc = catalog__typed(plan, "schemas", JSON_OBJECT, "an object", where, err, size)) ||
        (rc = catalog__typed(plan, "metadata", JSON_OBJECT, "an object", where, err, size)))
        return rc;
    json_t *mpd = json_object_get(plan, "maximum_polling_duration");
    if (mpd && (!json_is_integer(mpd) || json_integer_value(mpd) <= 0))
        return catalog__fail(
            err, size, "%s.maximum_polling_duration: must be a number of seconds above 0", where);
    return 0;
}

static int catalog__offering(const json_t *svc, const char *where, char *err, size_t size)
{
    int rc;
    if (!json_is_object(svc))
        return catalog__fail(err, size, "%s: must be an object", where);
    if ((rc = catalog__string(svc, "id", true, where, err, size)) ||
        (rc = catalog__string(svc, "name", true, where, err, size)) ||
        (rc = catalog__string(svc, "description", true, where, err, size)))
        return rc;
    if (!catalog__name_ok(json_string_value(json_object_get(svc, "name"))))
        return catalog__fail(err, size,
                             "%s.name: \"%s\" is not CLI-friendly (letters, digits, '-', '_', '.')",
                             where, json_string_value(json_object_get(svc, "name")));
    json_t *bindable = json_object_get(svc, "bindable");
    if (!bindable)
        return catalog__fail(err, size, "%s.bindable: missing", where);
    if (!json_is_boolean(bindable))
        return catalog__fail(err, size, "%s.bindable: must be true or false", where);
    if ((rc = catalog__strings(svc, "tags", where, err, size)) ||
        (rc = catalog__strings(svc, "requires", where, err, size)) ||
        (rc = catalog__typed(svc, "plan_updateable", JSON_TRUE, "true or false", where, err,
                             size)) ||
        (rc = catalog__typed(svc, "instances_retrievable", JSON_TRUE, "true or false", where, err,
                             size)) ||
        (rc = catalog__typed(svc, "bindings_retrievable", JSON_TRUE, "true or false", where, err,
                             size)) ||
        (rc = catalog__typed(svc, "metadata", JSON_OBJECT, "an object", where, err, size)))
        return rc;
    json_t *plans = json_object_get(svc, "plans");
    if (!plans)
        return catalog__fail(err, size, "%s.plans: missing", where);
    if (!json_is_array(plans) || !json_array_size(plans))
        return catalog__fail(err, size, "%s.plans: must be a list of at least one plan", where);
    size_t i, j;
    json_t *plan, *other;
    json_array_foreach(plans, i, plan)
    {
        char pw[128];
        snprintf(pw, sizeof pw, "%s.plans[%zu]", where, i);
        if ((rc = catalog__plan(plan, pw, err, size)))
            return rc;
        json_array_foreach(plans, j, other)
        {
            if (j >= i)
                break;
            static const char *const unique[] = {"id", "name"};
            for (size_t k = 0; k < 2; k++)
                if (!strcmp(json_string_value(json_object_get(plan, unique[k])),
                            json_string_value(json_object_get(other, unique[k]))))
                    return catalog__fail(err, size, "%s.%s: \"%s\" is used by plans[%zu] too", pw,
                                         unique[k],
                                         json_string_value(json_object_get(plan, unique[k])), j);
        }
    }
    return 0;
}

int services_catalog_validate(const json_t *catalog, char *err, size_t errsize)
{
    if (!json_is_object(catalog))
        return catalog__fail(err, errsize, "the catalog must be a JSON object");
    json_t *services = json_object_get(catalog, "services");
    if (!services)
        return catalog__fail(err, errsize, "services: missing");
    if (!json_is_array(services))
        return catalog__fail(err, errsize, "services: must be a list");
    size_t i, j;
    json_t *svc, *other;
    json_array_foreach(services, i, svc)
    {
        char where[64];
        snprintf(where, sizeof where, "services[%zu]", i);
        int rc = catalog__offering(svc, where, err, errsize);
        if (rc)
            return rc;
        json_array_foreach(services, j, other)
        {
            if (j >= i)
                break;
            static const char *const unique[] = {"id", "name"};
            for (size_t k = 0; k < 2; k++)
                if (!strcmp(json_string_value(json_object_get(svc, unique[k])),
                            json_string_value(json_object_get(other, unique[k]))))
                    return catalog__fail(err, errsize, "%s.%s: \"%s\" is used by services[%zu] too",
                                         where, unique[k],
                                         json_string_value(json_object_get(svc, unique[k])), j);
        }
    }
    return 0;
}

static bool catalog__named(const json_t *obj, const char *ref)
{
    const char *name = json_string_value(json_object_get(obj, "name"));
    const char *id = json_string_value(json_object_get(obj, "id"));
    return ref && ((name && !strcmp(name, ref)) || (id && !strcmp(id, ref)));
}

bool services_catalog_find(const json_t *catalog, const char *service, const char *plan,
                           json_t **offering, json_t **plan_out)
{
    size_t i, j;
    json_t *svc, *p;
    json_array_foreach(json_object_get(catalog, "services"), i, svc)
    {
        if (!catalog__named(svc, service))
            continue;
        *offering = svc;
        if (!plan) {
            *plan_out = NULL;
            return true;
        }
        json_array_foreach(json_object_get(svc, "plans"), j, p)
        {
            if (catalog__named(p, plan)) {
                *plan_out = p;
                return true;
            }
        }
        return false;
    }
    return false;
}

/* ---- parameters against a plan's schema --------------------------------------------------- */

static bool schema__type_is(const json_t *value, const char *type)
{
    if (!strcmp(type, "object"))
        return json_is_object(value);
    if (!strcmp(type, "array"))
        return json_is_array(value);
    if (!strcmp(type, "string"))
        return json_is_string(value);
    if (!strcmp(type, "integer"))
        return json_is_integer(value);
    if (!strcmp(type, "number"))
        return json_is_number(value);
    if (!strcmp(type, "boolean"))
        return json_is_boolean(value);
    if (!strcmp(type, "null"))
        return json_is_null(value);
    return true; /* a type this check does not know: the broker decides */
}

static int schema__check(const json_t *schema, const json_t *value, const char *where, int depth,
                         char *err, size_t size)
{
    if (!json_is_object(schema) || depth > 32)
        return 0;
    const json_t *type = json_object_get(schema, "type");
    if (json_is_string(type) && !schema__type_is(value, json_string_value(type)))
        return catalog__fail(err, size, "%s must be of type %s", where, json_string_value(type));
    if (json_is_array(type)) {
        bool any = false;
        size_t i;
        json_t *t;
        json_array_foreach(type, i, t)
        {
            if (json_is_string(t) && schema__type_is(value, json_string_value(t)))
                any = true;
        }
        if (!any)
            return catalog__fail(err, size, "%s has a type the plan does not take", where);
    }
    const json_t *allowed = json_object_get(schema, "enum");
    if (json_is_array(allowed)) {
        bool found = false;
        size_t i;
        json_t *v;
        json_array_foreach(allowed, i, v)
        {
            if (json_equal(v, value))
                found = true;
        }
        if (!found)
            return catalog__fail(err, size, "%s is not one of the values the plan allows", where);
    }
    if (json_is_number(value)) {
        const json_t *min = json_object_get(schema, "minimum");
        const json_t *max = json_object_get(schema, "maximum");
        if (json_is_number(min) && json_number_value(value) < json_number_value(min))
            return catalog__fail(err, size, "%s must be at least %g", where, json_number_value(min));
        if (json_is_number(max) && json_number_value(value) > json_number_value(max))
            return catalog__fail(err, size, "%s must be at most %g", where, json_number_value(max));
    }
    if (json_is_string(value)) {
        const json_t *minl = json_object_get(schema, "minLength");
        const json_t *maxl = json_object_get(schema, "maxLength");
        json_int_t len = (json_int_t)json_string_length(value);
        if (json_is_integer(minl) && len < json_integer_value(minl))
            return catalog__fail(err, size, "%s must be at least %lld characters", where,
                                 (long long)json_integer_value(minl));
        if (json_is_integer(maxl) && len > json_integer_value(maxl))
            return catalog__fail(err, size, "%s must be at most %lld characters", where,
                                 (long long)json_integer_value(maxl));
    }
    if (json_is_object(value)) {
        const json_t *props = json_object_get(schema, "properties");
        size_t i;
        json_t *req;
        json_array_foreach(json_object_get(schema, "required"), i, req)
        {
            if (json_is_string(req) && !json_object_get(value, json_string_value(req)))
                return catalog__fail(err, size, "%s.%s is required by the plan", where,
                                     json_string_value(req));
        }
        const char *key;
        json_t *v;
        json_object_foreach((json_t *)value, key, v)
        {
            char sub[256];
            snprintf(sub, sizeof sub, "%s.%s", where, key);
            const json_t *ps = json_object_get(props, key);
            if (!ps && json_is_false(json_object_get(schema, "additionalProperties")))
                return catalog__fail(err, size, "%s is not a parameter the plan takes", sub);
            int rc = schema__check(ps, v, sub, depth + 1, err, size);
            if (rc)
                return rc;
        }
    }
    if (json_is_array(value)) {
        size_t i;
        json_t *v;
        json_array_foreach(value, i, v)
        {
            char sub[256];
            snprintf(sub, sizeof sub, "%s[%zu]", where, i);
            int rc = schema__check(json_object_get(schema, "items"), v, sub, depth + 1, err, size);
            if (rc)
                return rc;
        }
    }
    return 0;
}

int services_parameters_check(const json_t *plan, const char *what, const json_t *parameters,
                              char *err, size_t errsize)
{
    /* schemas.service_instance.create.parameters, .update.parameters,
     * schemas.service_binding.create.parameters */
    const char *dot = strchr(what, '.');
    if (!dot)
        return 0;
    char resource[32];
    snprintf(resource, sizeof resource, "%.*s", (int)(dot - what), what);
    const json_t *schema = json_object_get(json_object_get(json_object_get(json_object_get(plan, "schemas"),
                                                             resource),
                                             dot + 1),
                             "parameters");
    if (!schema)
        return 0;
    json_t *empty = parameters ? NULL : json_object();
    int rc = schema__check(schema, parameters ? parameters : empty, "parameters", 0, err, errsize);
    json_decref(empty);
    return rc;
}
