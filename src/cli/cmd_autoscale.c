/* skiff autoscale: a process's request scaling policy (GET/PUT/DELETE /v1/apps/NAME/autoscale). */
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/commands.h"
#include "common/util.h"

/* A --window/--scale-down-delay value into body[key] in ms; false after a usage error. */
static bool autoscale__duration(const struct cli_command *cmd, const char *flag, const char *text,
                                bool zero_ok, json_t *body, const char *key, int *rc)
{
    if (!text)
        return true;
    long long s = zero_ok && !strcmp(text, "0") ? 0 : cli_duration_seconds(text);
    if (s < 0 || s > 3600) {
        *rc = cli_usage_error(cmd, "--%s is a duration such as 6s, 60s or 5m (at most 1h)", flag);
        return false;
    }
    json_object_set_new(body, key, json_integer(s * 1000));
    return true;
}

static void autoscale__print(const char *name, json_t *o)
{
    json_t *pol = json_object_get(o, "policy");
    json_t *st = json_object_get(o, "status");
    printf("%s, process %s: %lld instances\n", name, cli_json_str(o, "process"),
           cli_json_int(o, "instances"));
    if (!json_is_object(pol)) {
        printf("policy:    none (the instance count is set with `skiff scale`)\n");
        return;
    }
    json_t *rps = json_object_get(pol, "target_rps");
    printf("policy:    %lld to %lld instances, target %lld %s per instance\n",
           cli_json_int(pol, "min_instances"), cli_json_int(pol, "max_instances"),
           rps ? (long long)json_integer_value(rps) : cli_json_int(pol, "target_concurrency"),
           rps ? "requests/s" : "in flight");
    printf("windows:   stable %llds, panic %llds, scale-down delay %llds\n",
           cli_json_int(pol, "window_ms") / 1000, cli_json_int(pol, "panic_window_ms") / 1000,
           cli_json_int(pol, "scale_down_delay_ms") / 1000);
    json_t *m = json_object_get(st, "metric");
    if (json_is_object(m))
        printf("metric:    %.1f in flight, %.1f requests/s (stable %.1f, panic %.1f)%s\n",
               json_number_value(json_object_get(m, "in_flight")),
               json_number_value(json_object_get(m, "requests_per_second")),
               json_number_value(json_object_get(m, "stable")),
               json_number_value(json_object_get(m, "panic")),
               json_is_true(json_object_get(st, "panic")) ? ", panicking" : "");
    else
        printf("metric:    none yet\n");
    json_t *ds = json_object_get(st, "decisions");
    if (json_array_size(ds) == 0) {
        printf("decisions: none yet\n");
        return;
    }
    printf("decisions:\n");
    size_t i;
    json_t *d;
    json_array_foreach(ds, i, d)
        printf("  %s  %lld -> %lld: %s\n", cli_json_str(d, "at"), cli_json_int(d, "from"),
               cli_json_int(d, "to"), cli_json_str(d, "reason"));
}

int cli_cmd_autoscale(const struct cli_command *cmd, int argc, char **argv)
{
    long min = LONG_MIN, max = LONG_MIN, conc = LONG_MIN, rps = LONG_MIN;
    const char *process = NULL, *window = NULL, *delay = NULL;
    bool off = false;
    struct cli_option opts[] = {{"process", 0, CLI_OPT_STRING, &process},
                                {"min", 0, CLI_OPT_INT, &min},
                                {"max", 0, CLI_OPT_INT, &max},
                                {"target-concurrency", 0, CLI_OPT_INT, &conc},
                                {"target-rps", 0, CLI_OPT_INT, &rps},
                                {"window", 0, CLI_OPT_STRING, &window},
                                {"scale-down-delay", 0, CLI_OPT_STRING, &delay},
                                {"off", 0, CLI_OPT_FLAG, &off},
                                {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *name = args.items[0];
    json_t *body = json_object();
    const struct {
        const char *key;
        long value;
    } ints[] = {{"min_instances", min},
                {"max_instances", max},
                {"target_concurrency", conc},
                {"target_rps", rps}};
    for (size_t i = 0; i < ARRAY_SIZE(ints); i++)
        if (ints[i].value != LONG_MIN)
            json_object_set_new(body, ints[i].key, json_integer(ints[i].value));
    if (!autoscale__duration(cmd, "window", window, false, body, "window_ms", &rc) ||
        !autoscale__duration(cmd, "scale-down-delay", delay, true, body, "scale_down_delay_ms",
                             &rc)) {
        json_decref(body);
        return rc;
    }
    if (off && json_object_size(body)) {
        json_decref(body);
        return cli_usage_error(cmd, "--off takes no other setting");
    }
    char *query = process ? cli_escape(process) : NULL;
    char *suffix = xasprintf("/autoscale%s%s", query ? "?process=" : "", query ? query : "");
    free(query);
    char *path = cli_app_path(name, suffix);
    free(suffix);
    const char *method = off ? "DELETE" : json_object_size(body) ? "PUT" : "GET";
    json_t *out = NULL;
    rc = cli_api(method, path, strcmp(method, "PUT") ? NULL : body, &out);
    json_decref(body);
    free(path);
    if (rc)
        return rc;
    if (!cli_json_printed(out))
        autoscale__print(name, out);
    json_decref(out);
    return CLI_EXIT_OK;
}
