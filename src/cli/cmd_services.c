/* cmd_services: service instances, bindings, service keys, brokers and the marketplace
 * (Cloud Foundry's verbs). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/commands.h"
#include "common/buf.h"
#include "common/util.h"

#define CLI_RESTAGE_TIP                                                                            \
    "TIP: Use 'skiff restage %s' (or 'skiff restart %s') to ensure your env variable changes "     \
    "take effect\n"

/* A JSON object given inline or as the name of a file holding one (-p, -c). Returns
 * CLI_CONTINUE with *out set, or the exit status after a usage error naming the option. */
static int cli_json_object_arg(const struct cli_command *cmd, const char *text, const char *opt,
                               json_t **out)
{
    json_error_t jerr;
    json_t *v = json_loads(text, 0, &jerr);
    if (!v) {
        char *data = NULL;
        size_t len = 0;
        if (file_read(text, &data, &len) == 0) {
            v = json_loadb(data, len, 0, &jerr);
            free(data);
            if (!v)
                return cli_usage_error(cmd, "%s: the file %s is not JSON: %s (line %d)", opt, text,
                                       jerr.text, jerr.line);
        } else {
            return cli_usage_error(cmd,
                                   "%s takes a JSON object, like '{\"uri\": \"...\"}', or a file "
                                   "holding one (%s is neither: %s)",
                                   opt, text, jerr.text);
        }
    }
    if (!json_is_object(v)) {
        json_decref(v);
        return cli_usage_error(cmd, "%s takes a JSON object, like '{\"uri\": \"...\"}'", opt);
    }
    *out = v;
    return CLI_CONTINUE;
}

/* "a, b,c" -> ["a", "b", "c"]. */
static json_t *cli_tags(const char *text)
{
    json_t *tags = json_array();
    char *copy = xstrdup(text), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        while (*t == ' ')
            t++;
        size_t n = strlen(t);
        while (n && t[n - 1] == ' ')
            t[--n] = '\0';
        if (n)
            json_array_append_new(tags, json_string(t));
    }
    free(copy);
    return tags;
}

static int cli_wait_instance(const char *name, bool deleting);
static int cli_wait_row(const char *path, const char *key, const char *field, const char *value,
                        const char *what, bool gone_ok);

static char *cli_instance_path(const char *name, const char *suffix)
{
    char *q = cli_escape(name);
    char *path = xasprintf("/v1/service_instances/%s%s", q, suffix ? suffix : "");
    free(q);
    return path;
}

/* The "create succeeded" a listing shows for an operation. */
static void cli_format_operation(const json_t *row, const char *field, char *out, size_t size)
{
    const json_t *op = json_object_get(row, field);
    const char *type = cli_json_str(op, "type"), *state = cli_json_str(op, "state");
    if (!*type)
        snprintf(out, size, "%s", "");
    else
        snprintf(out, size, "%s %s", type,
                 !strcmp(state, "in progress") ? "in progress"
                 : !strcmp(state, "succeeded") ? "succeeded"
                                               : "failed");
}

static void cli_format_list(const json_t *row, const char *field, char *out, size_t size)
{
    struct buf b = {0};
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(row, field), i, v)
    {
        buf_printf(&b, "%s%s", i ? ", " : "", json_string_value(v) ? json_string_value(v) : "");
    }
    snprintf(out, size, "%s", b.data ? b.data : "");
    buf_free(&b);
}

static void cli_format_offering(const json_t *row, const char *field, char *out, size_t size)
{
    const char *type = cli_json_str(row, "type");
    snprintf(out, size, "%s",
             !strcmp(type, "user-provided") ? "user-provided" : cli_json_str(row, field));
}

/* ---- user-provided services -------------------------------------------------------------- */

/* cups and uups: the body from -p, -l, -r, -t; NULL after a usage error (in *rc). */
static json_t *cli_ups_body(const struct cli_command *cmd, const char *creds, const char *drain,
                            const char *route, const char *tags, int *rc)
{
    json_t *body = json_object();
    *rc = CLI_CONTINUE;
    if (creds) {
        json_t *c = NULL;
        *rc = cli_json_object_arg(cmd, creds, "-p", &c);
        if (*rc != CLI_CONTINUE) {
            json_decref(body);
            return NULL;
        }
        json_object_set_new(body, "credentials", c);
    }
    if (drain)
        json_object_set_new(body, "syslog_drain_url", json_string(drain));
    if (route)
        json_object_set_new(body, "route_service_url", json_string(route));
    if (tags)
        json_object_set_new(body, "tags", cli_tags(tags));
    return body;
}

static int cli_cmd_cups(const struct cli_command *cmd, int argc, char **argv)
{
    const char *creds = NULL, *drain = NULL, *route = NULL, *tags = NULL;
    struct cli_option opts[] = {{"params", 'p', CLI_OPT_STRING, &creds},
                                {"syslog-drain-url", 'l', CLI_OPT_STRING, &drain},
                                {"route-service-url", 'r', CLI_OPT_STRING, &route},
                                {"tags", 't', CLI_OPT_STRING, &tags},
                                {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    json_t *body = cli_ups_body(cmd, creds, drain, route, tags, &rc);
    if (!body)
        return rc;
    json_object_set_new(body, "name", json_string(args.items[0]));
    json_object_set_new(body, "user_provided", json_true());
    if (!cli_json_output)
        printf("Creating user provided service %s...\n", args.items[0]);
    json_t *res = NULL;
    rc = cli_api("POST", "/v1/service_instances", body, &res);
    json_decref(body);
    if (rc == 0 && !cli_json_printed(res)) {
        printf("OK\n");
        json_decref(res);
    }
    return rc;
}

static int cli_cmd_uups(const struct cli_command *cmd, int argc, char **argv)
{
    const char *creds = NULL, *drain = NULL, *route = NULL, *tags = NULL;
    struct cli_option opts[] = {{"params", 'p', CLI_OPT_STRING, &creds},
                                {"syslog-drain-url", 'l', CLI_OPT_STRING, &drain},
                                {"route-service-url", 'r', CLI_OPT_STRING, &route},
                                {"tags", 't', CLI_OPT_STRING, &tags},
                                {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    if (!creds && !drain && !route && !tags)
        return cli_usage_error(cmd, "say what changes: -p, -l, -r or -t");
    json_t *body = cli_ups_body(cmd, creds, drain, route, tags, &rc);
    if (!body)
        return rc;
    char *path = cli_instance_path(args.items[0], NULL);
    if (!cli_json_output)
        printf("Updating user provided service %s...\n", args.items[0]);
    json_t *res = NULL;
    rc = cli_api("PATCH", path, body, &res);
    free(path);
    json_decref(body);
    if (rc == 0 && !cli_json_printed(res)) {
        printf("OK\n\nTIP: Use 'skiff restage' (or 'skiff restart') for any bound apps to ensure "
               "your env variable changes take effect\n");
        json_decref(res);
    }
    return rc;
}

/* ---- service instances ------------------------------------------------------------------- */

static int cli_cmd_services(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 0, 0);
    if (rc != CLI_CONTINUE)
        return rc;
    static const struct cli_column cols[] = {
        {"name", "name", NULL},
        {"service", "service_name", cli_format_offering},
        {"plan", "plan_name", NULL},
        {"bound apps", "bound_apps", cli_format_list},
        {"last operation", "last_operation", cli_format_operation},
        {"broker", "broker", NULL},
        {NULL, NULL, NULL}};
    return cli_list("/v1/service_instances", "service_instances", cols);
}

static int cli_cmd_service(const struct cli_command *cmd, int argc, char **argv)
{
    bool guid = false;
    struct cli_option opts[] = {{"guid", 0, CLI_OPT_FLAG, &guid}, {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    char *path = cli_instance_path(args.items[0], NULL);
    json_t *res = NULL;
    rc = cli_api("GET", path, NULL, &res);
    free(path);
    if (rc)
        return rc;
    if (cli_json_printed(res))
        return CLI_EXIT_OK;
    if (guid) {
        printf("%s\n", cli_json_str(res, "guid"));
        json_decref(res);
        return CLI_EXIT_OK;
    }
    char line[512];
    bool ups = !strcmp(cli_json_str(res, "type"), "user-provided");
    printf("name:             %s\nguid:             %s\ntype:             %s\n",
           cli_json_str(res, "name"), cli_json_str(res, "guid"), ups ? "user-provided" : "managed");
    if (!ups)
        printf("broker:           %s\nservice:          %s\nplan:             %s\n",
               cli_json_str(res, "broker"), cli_json_str(res, "service_name"),
               cli_json_str(res, "plan_name"));
    cli_format_list(res, "tags", line, sizeof line);
    printf("tags:             %s\n", line);
    if (ups) {
        printf("syslog drain url: %s\nroute service url: %s\n",
               cli_json_str(res, "syslog_drain_url"), cli_json_str(res, "route_service_url"));
    } else if (*cli_json_str(res, "dashboard_url")) {
        printf("dashboard url:    %s\n", cli_json_str(res, "dashboard_url"));
    }
    cli_format_list(res, "bound_apps", line, sizeof line);
    printf("bound apps:       %s\n", *line ? line : "(none)");
    cli_format_list(res, "service_keys", line, sizeof line);
    printf("service keys:     %s\n", *line ? line : "(none)");
    const json_t *op = json_object_get(res, "last_operation");
    cli_format_operation(res, "last_operation", line, sizeof line);
    printf("status:           %s\n", line);
    if (*cli_json_str(op, "description"))
        printf("message:          %s\n", cli_json_str(op, "description"));
    json_decref(res);
    return CLI_EXIT_OK;
}

static int cli_cmd_delete_service(const struct cli_command *cmd, int argc, char **argv)
{
    bool force = false, wait = false;
    struct cli_option opts[] = {
        {"force", 'f', CLI_OPT_FLAG, &force}, {"wait", 'w', CLI_OPT_FLAG, &wait}, {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *name = args.items[0];
    char *question = xasprintf("Really delete the service instance %s?", name);
    rc = cli_confirm(cmd, force, name, question);
    free(question);
    if (rc != CLI_CONTINUE)
        return rc;
    if (!cli_json_output)
        printf("Deleting service %s...\n", name);
    char *path = cli_instance_path(name, wait ? "?wait=true" : NULL);
    struct cli_request req = {.method = "DELETE", .path = path};
    struct cli_response res;
    rc = cli_http(&req, &res);
    free(path);
    if (rc == 0 && cli_json_output) {
        cli_print_json(res.json ? res.json : json_object());
    } else if (rc == 0 && res.status == 202 && wait) {
        rc = cli_wait_instance(name, true);
        if (rc == 0)
            printf("OK\n");
    } else if (rc == 0 && res.status == 202) {
        printf("OK\n\nDelete in progress. Use 'skiff services' or 'skiff service %s' to check "
               "operation status.\n",
               name);
    } else if (rc == 0) {
        printf("OK\n");
    } else if (res.status == 404 && res.error_code && !strcmp(res.error_code, "not_found")) {
        /* cf says so and succeeds: the instance is not there, as asked (the error is printed) */
        printf("Service instance %s did not exist.\n", name);
        rc = CLI_EXIT_OK;
    }
    cli_response_free(&res);
    return rc;
}

/* ---- bindings ------------------------------------------------------------------------------ */

int cli_app_bound(const char *app, const char *instance, bool *bound)
{
    char *path = cli_app_path(app, "/service_bindings");
    json_t *res = NULL;
    int rc = cli_api("GET", path, NULL, &res);
    free(path);
    *bound = false;
    size_t i;
    json_t *b;
    json_array_foreach(json_object_get(res, "service_bindings"), i, b)
    {
        if (!strcmp(cli_json_str(b, "service_instance"), instance))
            *bound = true;
    }
    json_decref(res);
    return rc;
}

static int cli_cmd_bind_service(const struct cli_command *cmd, int argc, char **argv)
{
    const char *params = NULL, *binding_name = NULL;
    bool wait = false;
    struct cli_option opts[] = {{"configuration", 'c', CLI_OPT_STRING, &params},
                                {"binding-name", 0, CLI_OPT_STRING, &binding_name},
                                {"wait", 'w', CLI_OPT_FLAG, &wait},
                                {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 2, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *app = args.items[0], *instance = args.items[1];
    bool bound = false;
    if ((rc = cli_app_bound(app, instance, &bound)))
        return rc;
    if (bound) {
        /* cf: already bound is not a failure */
        if (!cli_json_output)
            printf("App %s is already bound to service instance %s.\nOK\n", app, instance);
        return CLI_EXIT_OK;
    }
    json_t *body = json_pack("{s:s}", "service_instance", instance);
    if (binding_name)
        json_object_set_new(body, "name", json_string(binding_name));
    if (params) {
        json_t *p = NULL;
        rc = cli_json_object_arg(cmd, params, "-c", &p);
        if (rc != CLI_CONTINUE) {
            json_decref(body);
            return rc;
        }
        json_object_set_new(body, "parameters", p);
    }
    if (!cli_json_output)
        printf("Binding service instance %s to app %s...\n", instance, app);
    char *path = cli_app_path(app, wait ? "/service_bindings?wait=true" : "/service_bindings");
    struct cli_request req = {.method = "POST", .path = path, .json = body};
    struct cli_response res;
    rc = cli_http(&req, &res);
    free(path);
    json_decref(body);
    if (rc == 0 && cli_json_output) {
        cli_print_json(res.json);
    } else if (rc == 0) {
        if (res.status == 202 && wait) {
            char *list = cli_app_path(app, "/service_bindings");
            char *what = xasprintf("the binding of %s to %s", app, instance);
            rc = cli_wait_row(list, "service_bindings", "service_instance", instance, what, false);
            free(what);
            free(list);
        }
        if (rc == 0) {
            printf("OK\n\n");
            if (res.status == 202 && !wait)
                printf("Binding in progress. Use 'skiff service %s' to check operation "
                       "status.\n\n",
                       instance);
            printf(CLI_RESTAGE_TIP, app, app);
        }
    }
    cli_response_free(&res);
    return rc;
}

static int cli_cmd_unbind_service(const struct cli_command *cmd, int argc, char **argv)
{
    bool wait = false;
    struct cli_option opts[] = {{"wait", 'w', CLI_OPT_FLAG, &wait}, {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 2, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *app = args.items[0], *instance = args.items[1];
    bool bound = false;
    if ((rc = cli_app_bound(app, instance, &bound)))
        return rc;
    if (!bound) {
        /* an instance that is not there is an error; one that is not bound is what was asked */
        char *ipath = cli_instance_path(instance, NULL);
        rc = cli_api("GET", ipath, NULL, NULL);
        free(ipath);
        if (rc == 0 && !cli_json_output)
            printf("Binding between %s and app %s did not exist\nOK\n", instance, app);
        return rc;
    }
    if (!cli_json_output)
        printf("Unbinding app %s from service %s...\n", app, instance);
    char *q = cli_escape(instance);
    char *suffix = xasprintf("/service_bindings/%s%s", q, wait ? "?wait=true" : "");
    char *path = cli_app_path(app, suffix);
    free(q);
    free(suffix);
    struct cli_request req = {.method = "DELETE", .path = path};
    struct cli_response res;
    rc = cli_http(&req, &res);
    free(path);
    if (rc == 0 && cli_json_output) {
        cli_print_json(res.json ? res.json : json_object());
    } else if (rc == 0) {
        printf("OK\n\n");
        if (res.status == 202)
            printf("Unbinding in progress. Use 'skiff service %s' to check operation status.\n\n",
                   instance);
        printf(CLI_RESTAGE_TIP, app, app);
    }
    cli_response_free(&res);
    return rc;
}

/* ---- waiting for a broker ---------------------------------------------------------------- */

#define CLI_SERVICE_WAIT_S 600

/* The row of list (GET path, array at key) whose field is value, or NULL (new reference). */
static int cli_find_row(const char *path, const char *key, const char *field, const char *value,
                        json_t **row)
{
    json_t *res = NULL;
    *row = NULL;
    int rc = cli_api("GET", path, NULL, &res);
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(res, key), i, r)
    {
        if (!strcmp(cli_json_str(r, field), value))
            *row = json_incref(r);
    }
    json_decref(res);
    return rc;
}

/* Polls the list until its row named value has no operation in progress (or is gone): 0 when
 * that ended well (succeeded, or gone when gone_ok), else the failure printed. */
static int cli_wait_row(const char *path, const char *key, const char *field, const char *value,
                        const char *what, bool gone_ok)
{
    int64_t deadline = time_mono_ms() + CLI_SERVICE_WAIT_S * 1000LL;
    for (;;) {
        json_t *row = NULL;
        int rc = cli_find_row(path, key, field, value, &row);
        if (rc)
            return rc;
        if (!row)
            return gone_ok ? CLI_EXIT_OK : cli_error("%s is gone", what);
        const json_t *op = json_object_get(row, "last_operation");
        const char *state = cli_json_str(op, "state");
        if (strcmp(state, "in progress")) {
            rc = !strcmp(state, "failed")
                     ? cli_error("%s: %s failed: %s", what, cli_json_str(op, "type"),
                                 cli_json_str(op, "description"))
                     : CLI_EXIT_OK;
            json_decref(row);
            return rc;
        }
        json_decref(row);
        if (time_mono_ms() > deadline)
            return cli_error("%s: still in progress after %d s", what, CLI_SERVICE_WAIT_S);
        struct timespec ts = {0, 300 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static int cli_wait_instance(const char *name, bool deleting)
{
    char *what = xasprintf("service instance %s", name);
    int rc =
        cli_wait_row("/v1/service_instances", "service_instances", "name", name, what, deleting);
    free(what);
    return rc;
}

/* ---- managed services ------------------------------------------------------------------- */

static int cli_cmd_create_service(const struct cli_command *cmd, int argc, char **argv)
{
    const char *params = NULL, *tags = NULL, *broker = NULL;
    bool wait = false;
    struct cli_option opts[] = {{"configuration", 'c', CLI_OPT_STRING, &params},
                                {"tags", 't', CLI_OPT_STRING, &tags},
                                {"broker", 'b', CLI_OPT_STRING, &broker},
                                {"wait", 'w', CLI_OPT_FLAG, &wait},
                                {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 3, 3);
    if (rc != CLI_CONTINUE)
        return rc;
    json_t *body = json_pack("{s:s,s:s,s:s}", "service", args.items[0], "plan", args.items[1],
                             "name", args.items[2]);
    if (params) {
        json_t *p = NULL;
        if ((rc = cli_json_object_arg(cmd, params, "-c", &p)) != CLI_CONTINUE) {
            json_decref(body);
            return rc;
        }
        json_object_set_new(body, "parameters", p);
    }
    if (tags)
        json_object_set_new(body, "tags", cli_tags(tags));
    if (broker)
        json_object_set_new(body, "broker", json_string(broker));
    if (!cli_json_output)
        printf("Creating service instance %s...\n", args.items[2]);
    struct cli_request req = {.method = "POST", .path = "/v1/service_instances", .json = body};
    struct cli_response res;
    rc = cli_http(&req, &res);
    json_decref(body);
    bool async = rc == 0 && res.status == 202;
    if (rc == 0 && cli_json_output && !wait)
        cli_print_json(res.json);
    cli_response_free(&res);
    if (rc)
        return rc;
    if (async && wait) {
        if ((rc = cli_wait_instance(args.items[2], false)))
            return rc;
        async = false;
    }
    if (!cli_json_output) {
        printf("OK\n");
        if (async)
            printf("\nCreate in progress. Use 'skiff services' or 'skiff service %s' to check "
                   "operation status.\n",
                   args.items[2]);
    }
    return CLI_EXIT_OK;
}

static int cli_cmd_update_service(const struct cli_command *cmd, int argc, char **argv)
{
    const char *params = NULL, *tags = NULL, *plan = NULL;
    bool wait = false;
    struct cli_option opts[] = {{"configuration", 'c', CLI_OPT_STRING, &params},
                                {"tags", 't', CLI_OPT_STRING, &tags},
                                {"plan", 'p', CLI_OPT_STRING, &plan},
                                {"wait", 'w', CLI_OPT_FLAG, &wait},
                                {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    if (!params && !tags && !plan)
        return cli_usage_error(cmd, "say what changes: -p PLAN, -c PARAMETERS or -t TAGS");
    json_t *body = json_object();
    if (params) {
        json_t *p = NULL;
        if ((rc = cli_json_object_arg(cmd, params, "-c", &p)) != CLI_CONTINUE) {
            json_decref(body);
            return rc;
        }
        json_object_set_new(body, "parameters", p);
    }
    if (tags)
        json_object_set_new(body, "tags", cli_tags(tags));
    if (plan)
        json_object_set_new(body, "plan", json_string(plan));
    if (!cli_json_output)
        printf("Updating service instance %s...\n", args.items[0]);
    char *path = cli_instance_path(args.items[0], NULL);
    struct cli_request req = {.method = "PATCH", .path = path, .json = body};
    struct cli_response res;
    rc = cli_http(&req, &res);
    free(path);
    json_decref(body);
    bool async = rc == 0 && res.status == 202;
    cli_response_free(&res);
    if (rc)
        return rc;
    if (async && wait) {
        if ((rc = cli_wait_instance(args.items[0], false)))
            return rc;
        async = false;
    }
    if (!cli_json_output)
        printf(async ? "OK\n\nUpdate in progress. Use 'skiff service %s' to check operation "
                       "status.\n"
                     : "OK\n",
               args.items[0]);
    return CLI_EXIT_OK;
}

static void cli_format_plans(const json_t *row, const char *field, char *out, size_t size)
{
    struct buf b = {0};
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(row, field), i, p)
    {
        buf_printf(&b, "%s%s%s", i ? ", " : "", cli_json_str(p, "name"),
                   json_is_false(json_object_get(p, "free")) ? "*" : "");
    }
    snprintf(out, size, "%s", b.data ? b.data : "");
    buf_free(&b);
}

static int cli_cmd_marketplace(const struct cli_command *cmd, int argc, char **argv)
{
    const char *only = NULL;
    struct cli_option opts[] = {{"service", 'e', CLI_OPT_STRING, &only}, {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 0, 0);
    if (rc != CLI_CONTINUE)
        return rc;
    if (!only) {
        static const struct cli_column cols[] = {{"service", "service", NULL},
                                                 {"plans", "plans", cli_format_plans},
                                                 {"description", "description", NULL},
                                                 {"broker", "broker", NULL},
                                                 {NULL, NULL, NULL}};
        rc = cli_list("/v1/marketplace", "services", cols);
        if (rc == 0 && !cli_json_output)
            printf("\n* these plans have an associated cost\n");
        return rc;
    }
    char *q = cli_escape(only);
    char *path = xasprintf("/v1/marketplace?service=%s", q);
    free(q);
    json_t *res = NULL;
    rc = cli_api("GET", path, NULL, &res);
    free(path);
    if (rc || cli_json_printed(res))
        return rc;
    size_t i, j;
    json_t *svc, *p;
    json_array_foreach(json_object_get(res, "services"), i, svc)
    {
        printf("service: %s (broker %s)\n%s\n\n", cli_json_str(svc, "service"),
               cli_json_str(svc, "broker"), cli_json_str(svc, "description"));
        struct cli_table *t =
            cli_table_new((const char *const[]){"plan", "description", "free or paid", NULL});
        json_array_foreach(json_object_get(svc, "plans"), j, p)
        {
            cli_table_add(t, cli_json_str(p, "name"), cli_json_str(p, "description"),
                          json_is_false(json_object_get(p, "free")) ? "paid" : "free");
        }
        cli_table_print(t);
    }
    json_decref(res);
    return CLI_EXIT_OK;
}

/* ---- service keys ------------------------------------------------------------------------ */

static char *cli_key_path(const char *instance, const char *key)
{
    char *k = key ? cli_escape(key) : NULL;
    char *suffix = k ? xasprintf("/keys/%s", k) : xstrdup("/keys");
    char *path = cli_instance_path(instance, suffix);
    free(k);
    free(suffix);
    return path;
}

static int cli_cmd_create_service_key(const struct cli_command *cmd, int argc, char **argv)
{
    const char *params = NULL;
    bool wait = false;
    struct cli_option opts[] = {
        {"configuration", 'c', CLI_OPT_STRING, &params}, {"wait", 'w', CLI_OPT_FLAG, &wait}, {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 2, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    json_t *body = json_pack("{s:s}", "name", args.items[1]);
    if (params) {
        json_t *p = NULL;
        if ((rc = cli_json_object_arg(cmd, params, "-c", &p)) != CLI_CONTINUE) {
            json_decref(body);
            return rc;
        }
        json_object_set_new(body, "parameters", p);
    }
    if (!cli_json_output)
        printf("Creating service key %s for service instance %s...\n", args.items[1],
               args.items[0]);
    char *path = cli_key_path(args.items[0], NULL);
    struct cli_request req = {.method = "POST", .path = path, .json = body};
    struct cli_response res;
    rc = cli_http(&req, &res);
    json_decref(body);
    bool async = rc == 0 && res.status == 202;
    cli_response_free(&res);
    if (rc == 0 && async && wait) {
        char *what = xasprintf("service key %s", args.items[1]);
        rc = cli_wait_row(path, "service_keys", "name", args.items[1], what, false);
        free(what);
    }
    free(path);
    if (rc == 0 && !cli_json_output)
        printf("OK\n");
    return rc;
}

static int cli_cmd_service_key(const struct cli_command *cmd, int argc, char **argv)
{
    bool guid = false;
    struct cli_option opts[] = {{"guid", 0, CLI_OPT_FLAG, &guid}, {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 2, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    char *path = cli_key_path(args.items[0], args.items[1]);
    json_t *res = NULL;
    rc = cli_api("GET", path, NULL, &res);
    free(path);
    if (rc || cli_json_printed(res))
        return rc;
    if (guid) {
        printf("%s\n", cli_json_str(res, "guid"));
    } else {
        char *text =
            json_dumps(json_object_get(res, "credentials"), JSON_INDENT(2) | JSON_SORT_KEYS);
        printf("%s\n", text ? text : "{}");
        free(text);
    }
    json_decref(res);
    return CLI_EXIT_OK;
}

static int cli_cmd_service_keys(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    static const struct cli_column cols[] = {
        {"name", "name", NULL},
        {"last operation", "last_operation", cli_format_operation},
        {NULL, NULL, NULL}};
    char *path = cli_key_path(args.items[0], NULL);
    rc = cli_list(path, "service_keys", cols);
    free(path);
    return rc;
}

static int cli_cmd_delete_service_key(const struct cli_command *cmd, int argc, char **argv)
{
    bool force = false, wait = false;
    struct cli_option opts[] = {
        {"force", 'f', CLI_OPT_FLAG, &force}, {"wait", 'w', CLI_OPT_FLAG, &wait}, {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 2, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    char *question = xasprintf("Really delete the service key %s?", args.items[1]);
    rc = cli_confirm(cmd, force, args.items[1], question);
    free(question);
    if (rc != CLI_CONTINUE)
        return rc;
    char *path = cli_key_path(args.items[0], args.items[1]);
    struct cli_request req = {.method = "DELETE", .path = path};
    struct cli_response res;
    rc = cli_http(&req, &res);
    free(path);
    bool async = rc == 0 && res.status == 202;
    cli_response_free(&res);
    if (rc == 0 && async && wait) {
        char *list = cli_key_path(args.items[0], NULL);
        char *what = xasprintf("service key %s", args.items[1]);
        rc = cli_wait_row(list, "service_keys", "name", args.items[1], what, true);
        free(what);
        free(list);
    }
    if (rc == 0 && !cli_json_output)
        printf("Deleted service key %s.\n", args.items[1]);
    return rc;
}

/* ---- brokers ---------------------------------------------------------------------------- */

static int cli_broker_send(const struct cli_command *cmd, int argc, char **argv, bool create)
{
    bool scoped = false;
    struct cli_option opts[] = {{"space-scoped", 0, CLI_OPT_FLAG, &scoped}, {0}};
    if (!create)
        opts[0] = (struct cli_option){0};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 4, 4);
    if (rc != CLI_CONTINUE)
        return rc;
    json_t *body = json_pack("{s:s,s:s,s:s}", "username", args.items[1], "password", args.items[2],
                             "url", args.items[3]);
    if (create) {
        json_object_set_new(body, "name", json_string(args.items[0]));
        json_object_set_new(body, "space_scoped", json_boolean(scoped));
    }
    if (!cli_json_output)
        printf("%s service broker %s...\n", create ? "Creating" : "Updating", args.items[0]);
    char *path = cli_path(create ? "/v1/service_brokers" : "/v1/service_brokers/%s", args.items[0],
                          NULL, NULL, NULL);
    json_t *res = NULL;
    rc = cli_api(create ? "POST" : "PATCH", path, body, &res);
    free(path);
    json_decref(body);
    if (rc == 0 && !cli_json_printed(res)) {
        printf("OK\n");
        json_decref(res);
    }
    return rc;
}

static int cli_cmd_create_service_broker(const struct cli_command *cmd, int argc, char **argv)
{
    return cli_broker_send(cmd, argc, argv, true);
}

static int cli_cmd_update_service_broker(const struct cli_command *cmd, int argc, char **argv)
{
    return cli_broker_send(cmd, argc, argv, false);
}

static int cli_cmd_service_brokers(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 0, 0);
    if (rc != CLI_CONTINUE)
        return rc;
    static const struct cli_column cols[] = {{"name", "name", NULL},
                                             {"url", "url", NULL},
                                             {"space", "space", NULL},
                                             {"services", "services", cli_format_list},
                                             {NULL, NULL, NULL}};
    return cli_list("/v1/service_brokers", "service_brokers", cols);
}

static int cli_cmd_delete_service_broker(const struct cli_command *cmd, int argc, char **argv)
{
    bool force = false;
    struct cli_option opts[] = {{"force", 'f', CLI_OPT_FLAG, &force}, {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    char *question = xasprintf("Really delete the service broker %s?", args.items[0]);
    rc = cli_confirm(cmd, force, args.items[0], question);
    free(question);
    if (rc != CLI_CONTINUE)
        return rc;
    char *path = cli_path("/v1/service_brokers/%s", args.items[0], NULL, NULL, NULL);
    rc = cli_api("DELETE", path, NULL, NULL);
    free(path);
    if (rc == 0 && !cli_json_output)
        printf("Deleted service broker %s.\n", args.items[0]);
    return rc;
}

/* ---- plan access ------------------------------------------------------------------------- */

static int cli_access_set(const struct cli_command *cmd, int argc, char **argv, bool enable)
{
    const char *broker = NULL, *plan = NULL, *org = NULL;
    struct cli_option opts[] = {{"broker", 'b', CLI_OPT_STRING, &broker},
                                {"plan", 'p', CLI_OPT_STRING, &plan},
                                {"org", 'o', CLI_OPT_STRING, &org},
                                {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    json_t *body = json_pack("{s:s,s:b}", "service", args.items[0], "enable", enable);
    if (broker)
        json_object_set_new(body, "broker", json_string(broker));
    if (plan)
        json_object_set_new(body, "plan", json_string(plan));
    if (org)
        json_object_set_new(body, "org", json_string(org));
    rc = cli_api("PUT", "/v1/service_access", body, NULL);
    json_decref(body);
    if (rc == 0 && !cli_json_output)
        printf("%s access to %s of service %s%s%s.\nOK\n", enable ? "Enabled" : "Disabled",
               plan ? plan : "all plans", args.items[0], org ? " for org " : " for all orgs",
               org ? org : "");
    return rc;
}

static int cli_cmd_enable_service_access(const struct cli_command *cmd, int argc, char **argv)
{
    return cli_access_set(cmd, argc, argv, true);
}

static int cli_cmd_disable_service_access(const struct cli_command *cmd, int argc, char **argv)
{
    return cli_access_set(cmd, argc, argv, false);
}

static int cli_cmd_service_access(const struct cli_command *cmd, int argc, char **argv)
{
    const char *broker = NULL, *service = NULL;
    struct cli_option opts[] = {{"broker", 'b', CLI_OPT_STRING, &broker},
                                {"service", 'e', CLI_OPT_STRING, &service},
                                {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 0, 0);
    if (rc != CLI_CONTINUE)
        return rc;
    char *b = broker ? cli_escape(broker) : NULL, *e = service ? cli_escape(service) : NULL;
    char *path = xasprintf("/v1/service_access?%s%s%s%s", b ? "broker=" : "", b ? b : "",
                           e ? "&service=" : "", e ? e : "");
    free(b);
    free(e);
    static const struct cli_column cols[] = {{"broker", "broker", NULL},
                                             {"service", "service", NULL},
                                             {"plan", "plan", NULL},
                                             {"access", "access", NULL},
                                             {"orgs", "orgs", cli_format_list},
                                             {NULL, NULL, NULL}};
    rc = cli_list(path, "service_access", cols);
    free(path);
    return rc;
}

const struct cli_command cli_services_commands[] = {
    {"create-user-provided-service",
     "create-user-provided-service NAME [-p CREDENTIALS] [-l SYSLOG_DRAIN_URL] "
     "[-r ROUTE_SERVICE_URL] [-t TAGS]",
     "Make a user-provided service instance: credentials of something outside the platform",
     "Apps bound to it see its credentials in VCAP_SERVICES under \"user-provided\".\n\n"
     "  -p CREDENTIALS   a JSON object, or a file holding one\n"
     "  -l URL           syslog drain URL (syslog://, syslog-tls:// or https://)\n"
     "  -r URL           route service URL (https://)\n"
     "  -t TAGS          comma-separated tags, like \"db, postgres\"\n\n"
     "Example:\n  skiff cups my-db -p '{\"uri\": \"postgres://u:p@db.example:5432/x\"}' -t db\n",
     cli_cmd_cups},
    {"update-user-provided-service",
     "update-user-provided-service NAME [-p CREDENTIALS] [-l SYSLOG_DRAIN_URL] "
     "[-r ROUTE_SERVICE_URL] [-t TAGS]",
     "Change a user-provided service instance (bound apps see it once restarted)",
     "  -p CREDENTIALS   a JSON object, or a file holding one (replaces the credentials)\n"
     "  -l URL           syslog drain URL (\"\" removes it)\n"
     "  -r URL           route service URL (\"\" removes it)\n"
     "  -t TAGS          comma-separated tags (replace the tags)\n",
     cli_cmd_uups},
    {"services", "services", "List the service instances of the target space",
     "Shows each instance's name, service, plan, bound apps, last operation and broker.\n",
     cli_cmd_services},
    {"service", "service NAME [--guid]", "Show a service instance",
     "Shows its service, plan, tags, bound apps, service keys and the state of its last\n"
     "operation (with the broker's message when it failed). Never its credentials.\n"
     "  --guid   print only its guid\n",
     cli_cmd_service},
    {"delete-service", "delete-service NAME [-f] [--wait]", "Delete a service instance",
     "It must have no bindings or service keys left. A managed instance is deprovisioned by\n"
     "its broker (asynchronously when the broker says so: --wait waits for it).\n"
     "  -f, --force   do not ask\n",
     cli_cmd_delete_service},
    {"bind-service", "bind-service APP INSTANCE [-c PARAMETERS] [--binding-name NAME] [--wait]",
     "Bind a service instance to an app",
     "The app's instances see the binding in VCAP_SERVICES from their next start: restart\n"
     "or restage the app.\n"
     "  -c PARAMETERS         a JSON object (or a file holding one) for the broker\n"
     "  --binding-name NAME   the binding's name (VCAP_SERVICES' \"name\"; default: the\n"
     "                        instance's)\n"
     "  --wait                wait for an asynchronous binding to finish\n",
     cli_cmd_bind_service},
    {
        "unbind-service",
        "unbind-service APP INSTANCE [--wait]",
        "Unbind a service instance from an app",
        "The app's instances stop seeing it from their next start.\n",
        cli_cmd_unbind_service,
    },
    {"marketplace", "marketplace [-e SERVICE]",
     "List the service offerings and plans the target space may create",
     "  -e SERVICE   one offering's plans, with descriptions and whether each is free\n",
     cli_cmd_marketplace},
    {"create-service",
     "create-service SERVICE PLAN INSTANCE [-c PARAMETERS] [-t TAGS] [-b BROKER] [--wait]",
     "Make a service instance from the marketplace (its broker provisions it)",
     "  -c PARAMETERS   a JSON object (or a file holding one) for the broker\n"
     "  -t TAGS         comma-separated tags\n"
     "  -b BROKER       the broker, when several offer SERVICE\n"
     "  --wait          wait until an asynchronous create has finished\n\n"
     "Example:\n  skiff create-service testdb small orders-db --wait\n",
     cli_cmd_create_service},
    {"update-service", "update-service INSTANCE [-p PLAN] [-c PARAMETERS] [-t TAGS] [--wait]",
     "Change a service instance's plan, parameters or tags",
     "  -p PLAN         a new plan (when the offering's plans are updateable)\n"
     "  -c PARAMETERS   a JSON object (or a file holding one) for the broker\n"
     "  -t TAGS         comma-separated tags (replace the tags)\n"
     "  --wait          wait until an asynchronous update has finished\n",
     cli_cmd_update_service},
    {"create-service-key", "create-service-key INSTANCE KEY [-c PARAMETERS] [--wait]",
     "Make a service key: credentials for use outside an app",
     "  -c PARAMETERS   a JSON object (or a file holding one) for the broker\n",
     cli_cmd_create_service_key},
    {"service-key", "service-key INSTANCE KEY [--guid]", "Show a service key's credentials",
     "Only a SpaceDeveloper (or the admin) may read them.\n", cli_cmd_service_key},
    {"service-keys", "service-keys INSTANCE", "List a service instance's keys", NULL,
     cli_cmd_service_keys},
    {"delete-service-key", "delete-service-key INSTANCE KEY [-f] [--wait]", "Delete a service key",
     "  -f, --force   do not ask\n", cli_cmd_delete_service_key},
    {"create-service-broker", "create-service-broker NAME USER PASSWORD URL [--space-scoped]",
     "Register a service broker (Open Service Broker API 2.17)",
     "Its catalog is fetched and checked first: a broken catalog is refused, naming the\n"
     "field. Only the platform admin registers a broker for the whole platform; a\n"
     "SpaceDeveloper registers one for the target space with --space-scoped.\n",
     cli_cmd_create_service_broker},
    {"service-brokers", "service-brokers", "List the service brokers", NULL,
     cli_cmd_service_brokers},
    {"update-service-broker", "update-service-broker NAME USER PASSWORD URL",
     "Change a broker's URL or credentials and fetch its catalog again", NULL,
     cli_cmd_update_service_broker},
    {"delete-service-broker", "delete-service-broker NAME [-f]",
     "Delete a service broker (it must have no service instances left)",
     "  -f, --force   do not ask\n", cli_cmd_delete_service_broker},
    {"service-access", "service-access [-b BROKER] [-e SERVICE]",
     "Show which orgs may use each plan of the platform's brokers (admin)",
     "  -b BROKER    one broker's plans\n  -e SERVICE   one offering's plans\n",
     cli_cmd_service_access},
    {"enable-service-access", "enable-service-access SERVICE [-b BROKER] [-p PLAN] [-o ORG]",
     "Let every org (or one) use an offering's plans (admin)",
     "A platform broker's plans are available to no org until the admin enables them, as in\n"
     "Cloud Foundry; a space-scoped broker's plans are its space's at once.\n"
     "  -b BROKER   the broker, when several offer SERVICE\n"
     "  -p PLAN     one plan (default: all of them)\n"
     "  -o ORG      one org (default: all orgs)\n",
     cli_cmd_enable_service_access},
    {"disable-service-access", "disable-service-access SERVICE [-b BROKER] [-p PLAN] [-o ORG]",
     "Take an offering's plans back from every org (or one) (admin)",
     "Instances made already stay; no new one of those plans can be made.\n",
     cli_cmd_disable_service_access},
    {NULL, NULL, NULL, NULL, NULL},
};

const struct cli_alias cli_aliases[] = {
    {"cups", "create-user-provided-service"},
    {"uups", "update-user-provided-service"},
    {"s", "services"},
    {"ds", "delete-service"},
    {"bs", "bind-service"},
    {"m", "marketplace"},
    {"cs", "create-service"},
    {"csk", "create-service-key"},
    {"sk", "service-keys"},
    {"dsk", "delete-service-key"},
    {"us", "unbind-service"},
    {NULL, NULL},
};
