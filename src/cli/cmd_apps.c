/* cmd_apps: help, login, and the commands that look at or change an existing app. */
#include <ctype.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/commands.h"
#include "cli/manifest.h"
#include "common/buf.h"
#include "common/util.h"

/* ---- shared by the app commands --------------------------------------------------------- */

char *cli_app_path(const char *name, const char *suffix)
{
    char *esc = cli_escape(name);
    char *p = xasprintf("/v1/apps/%s%s", esc, suffix ? suffix : "");
    free(esc);
    return p;
}

void cli_format_mb(long long mb, char *out, size_t size)
{
    if (mb <= 0)
        snprintf(out, size, "-");
    else if (mb % 1024 == 0)
        snprintf(out, size, "%lldG", mb / 1024);
    else
        snprintf(out, size, "%lldM", mb);
}

static void cli_format_bytes(long long bytes, char *out, size_t size)
{
    if (bytes <= 0)
        snprintf(out, size, "-");
    else if (bytes >= 1024LL * 1024 * 1024)
        snprintf(out, size, "%.1fG", (double)bytes / (1024.0 * 1024 * 1024));
    else if (bytes >= 1024LL * 1024)
        snprintf(out, size, "%.1fM", (double)bytes / (1024.0 * 1024));
    else
        snprintf(out, size, "%.1fK", (double)bytes / 1024.0);
}

/* A log rate limit (bytes a second, -1 unlimited) as `cf scale -l` takes it: "16K", "1M". */
static void cli_format_log_rate(long long bytes, char *out, size_t size)
{
    if (bytes < 0)
        snprintf(out, size, "unlimited");
    else if (bytes && bytes % (1LL << 30) == 0)
        snprintf(out, size, "%lldG", bytes >> 30);
    else if (bytes && bytes % (1 << 20) == 0)
        snprintf(out, size, "%lldM", bytes >> 20);
    else if (bytes && bytes % 1024 == 0)
        snprintf(out, size, "%lldK", bytes >> 10);
    else
        snprintf(out, size, "%lldB", bytes);
}

/* One line of `skiff app` for a check: "http /health, every 10s, timeout 2s"; the interval
 * and timeout only when set (else the platform's defaults apply). */
static void cli_print_check(const char *label, const char *type, const char *endpoint,
                            const json_t *interval, const json_t *timeout)
{
    printf("%-13s%s", label, type);
    if (!strcmp(type, "http"))
        printf(" %s", *endpoint ? endpoint : "/");
    if (json_is_integer(interval))
        printf(", every %llds", (long long)json_integer_value(interval));
    if (json_is_integer(timeout))
        printf(", timeout %llds", (long long)json_integer_value(timeout));
    putchar('\n');
}

/* "a, b, c" from a JSON array of strings (or of route objects with "host"/"path"). */
static char *cli_join(const json_t *array)
{
    struct buf b = {0};
    size_t i;
    json_t *v;
    json_array_foreach(array, i, v)
    {
        if (i)
            buf_puts(&b, ", ");
        if (json_is_string(v))
            buf_puts(&b, json_string_value(v));
        else if (json_is_object(v))
            buf_printf(&b, "%s%s", cli_json_str(v, "host"), cli_json_str(v, "path"));
    }
    return b.data ? buf_steal(&b) : xstrdup("");
}

/* One instance's outcome in words: "exit status 3", "signal SIGKILL", "". */
static void cli_instance_detail(const json_t *inst, char *out, size_t size)
{
    json_t *status = json_object_get(inst, "exit_status");
    const char *sig = cli_json_str(inst, "exit_signal");
    long long crashes = cli_json_int(inst, "crash_count");
    size_t n = 0;
    out[0] = '\0';
    if (*sig)
        n = (size_t)snprintf(out, size, "signal %s", sig);
    else if (json_is_integer(status))
        n = (size_t)snprintf(out, size, "exit status %lld", (long long)json_integer_value(status));
    if (crashes > 0 && n < size)
        snprintf(out + n, size - n, "%scrashed %lld time%s", n ? ", " : "", crashes,
                 crashes == 1 ? "" : "s");
}

static bool cli_is_web(const json_t *inst)
{
    const char *type = cli_json_str(inst, "process_type");
    return !*type || strcmp(type, "web") == 0;
}

/* Milliseconds since the epoch of an RFC 3339 UTC time ("2026-11-27T11:09:56.123Z"); 0 when
 * it cannot be read. */
static int64_t cli_parse_time_ms(const char *s)
{
    struct tm tm = {0};
    const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!end)
        return 0;
    int64_t ms = (int64_t)timegm(&tm) * 1000;
    if (*end == '.') {
        int scale = 100;
        for (end++; *end >= '0' && *end <= '9'; end++, scale /= 10)
            ms += (*end - '0') * scale;
    }
    return ms;
}

int cli_wait_running(const char *name, long timeout_s, int64_t since_ms, const char *droplet)
{
    char *path = cli_app_path(name, NULL);
    int64_t started_ms = time_mono_ms();
    int64_t deadline = started_ms + timeout_s * 1000;
    long long last_running = -1;
    int rc = CLI_EXIT_ERROR;
    printf("Waiting for %s to start...\n", name);
    for (;;) {
        json_t *app = NULL;
        if (cli_api("GET", path, NULL, &app) != 0)
            break;
        long long desired = cli_json_int(app, "instances");
        long long running = 0;
        const json_t *crashed = NULL;
        struct buf waiting = {0}; /* "#1 STARTING, #2 DOWN": what the others are doing */
        size_t i;
        json_t *inst;
        json_array_foreach(json_object_get(app, "instances_detail"), i, inst)
        {
            if (!cli_is_web(inst))
                continue;
            const char *state = cli_json_str(inst, "state");
            bool fresh =
                (since_ms <= 0 || cli_parse_time_ms(cli_json_str(inst, "since")) >= since_ms) &&
                (!droplet || !strcmp(cli_json_str(inst, "droplet"), droplet));
            if (strcmp(state, "RUNNING") == 0 && fresh)
                running++;
            else if (strcmp(state, "CRASHED") == 0 && fresh && !crashed)
                crashed = inst;
            else
                buf_printf(&waiting, "%s#%lld %s", waiting.len ? ", " : "",
                           cli_json_int(inst, "index"), fresh ? state : "not restarted yet");
        }
        if (running != last_running) {
            printf("  %lld of %lld instances running\n", running, desired);
            last_running = running;
        }
        if (strcmp(cli_json_str(app, "state"), "STARTED") != 0) {
            cli_error("%s is %s, not started. Start it with `skiff start %s`.", name,
                      cli_json_str(app, "state"), name);
            json_decref(app);
            buf_free(&waiting);
            break;
        }
        if (crashed) {
            char detail[128];
            cli_instance_detail(crashed, detail, sizeof(detail));
            cli_error("instance %lld of %s crashed (%s).\n"
                      "`skiff logs %s --recent` shows its output; it is being restarted.",
                      cli_json_int(crashed, "index"), name, *detail ? detail : "no exit status",
                      name);
            json_decref(app);
            buf_free(&waiting);
            break;
        }
        json_decref(app);
        char *others = buf_steal(&waiting);
        if (running >= desired) {
            printf("%s is running: %lld of %lld instances.\n", name, running, desired);
            rc = CLI_EXIT_OK;
            free(others);
            break;
        }
        if (time_mono_ms() >= deadline) {
            cli_error("%s: only %lld of %lld instances running after %lds%s%s%s.\n"
                      "`skiff app %s` shows them; `skiff logs %s --recent` shows their output.",
                      name, running, desired, timeout_s, *others ? " (" : "", others,
                      *others ? ")" : "", name, name);
            free(others);
            break;
        }
        free(others);
        /* Instances usually come up within a second: look often at first, then less. */
        usleep(time_mono_ms() - started_ms < 2000 ? 50 * 1000 : 250 * 1000);
    }
    free(path);
    return rc;
}

int cli_wait_deployed(const char *name, long timeout_s, const char *droplet)
{
    char *path = cli_app_path(name, NULL);
    int64_t started_ms = time_mono_ms();
    int64_t deadline = started_ms + timeout_s * 1000;
    long long last_updated = -1;
    int rc = CLI_EXIT_ERROR;
    for (;;) {
        json_t *app = NULL;
        if (cli_api("GET", path, NULL, &app) != 0)
            break;
        const json_t *dep = json_object_get(app, "deployment");
        bool ours = dep && droplet && !strcmp(cli_json_str(dep, "droplet"), droplet);
        if (!ours) {
            /* no deployment of it: the app ran nothing before (or another push came) */
            json_decref(app);
            free(path);
            return cli_wait_running(name, timeout_s, 0, droplet);
        }
        const char *state = cli_json_str(dep, "state");
        long long updated = cli_json_int(dep, "updated"), total = cli_json_int(dep, "total");
        if (updated != last_updated && strcmp(state, "FAILED")) {
            printf("  %lld of %lld instances updated\n", updated, total);
            last_updated = updated;
        }
        if (!strcmp(state, "FAILED")) {
            cli_error("the deployment of %s failed: %s.\nThe app stays on its previous "
                      "droplet, which keeps serving; `skiff logs %s --recent` shows the new "
                      "instance's output.",
                      name, cli_json_str(dep, "error"), name);
            json_decref(app);
            break;
        }
        if (!strcmp(state, "DEPLOYED")) {
            printf("%s is running: %lld of %lld instances on the new droplet.\n", name, updated,
                   total);
            json_decref(app);
            rc = CLI_EXIT_OK;
            break;
        }
        json_decref(app);
        if (time_mono_ms() >= deadline) {
            cli_error("%s: only %lld of %lld instances updated after %lds; the others still "
                      "run the previous droplet. `skiff app %s` shows them.",
                      name, updated, total, timeout_s, name);
            break;
        }
        usleep(time_mono_ms() - started_ms < 2000 ? 50 * 1000 : 250 * 1000);
    }
    free(path);
    return rc;
}

/* ---- help and login --------------------------------------------------------------------- */

int cli_cmd_help(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 0, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    if (args.count == 0) {
        cli_print_help(NULL);
        return CLI_EXIT_OK;
    }
    const struct cli_command *c = cli_command_find(args.items[0]);
    if (!c)
        return cli_usage_error(NULL, "unknown command \"%s\". `skiff help` lists the commands.",
                               args.items[0]);
    cli_print_help(c);
    return CLI_EXIT_OK;
}

/* ---- looking at apps -------------------------------------------------------------------- */

int cli_cmd_apps(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    const char *selector = NULL;
    struct cli_option opts[] = {{"labels", 0, CLI_OPT_STRING, &selector}, {0}};
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 0, 0);
    if (rc != CLI_CONTINUE)
        return rc;
    json_t *res = NULL;
    char *escaped = selector ? cli_escape(selector) : NULL;
    char *path = selector ? xasprintf("/v1/apps?label_selector=%s", escaped) : xstrdup("/v1/apps");
    rc = cli_api("GET", path, NULL, &res);
    free(path);
    free(escaped);
    if (rc != 0)
        return CLI_EXIT_ERROR;
    if (cli_json_printed(res))
        return CLI_EXIT_OK;
    const struct cli_target *target = cli_target();
    if (target && target->from_login && target->org && target->space)
        printf("Getting apps in org %s / space %s as %s...\n\n", target->org, target->space,
               target->user ? target->user : "an API token");
    json_t *apps = json_object_get(res, "apps");
    if (json_array_size(apps) == 0 && selector) {
        printf("No app has labels matching %s.\n", selector);
        json_decref(res);
        return CLI_EXIT_OK;
    }
    if (json_array_size(apps) == 0) {
        printf("No apps yet. Push one with `skiff push NAME -p FOLDER`.\n");
        json_decref(res);
        return CLI_EXIT_OK;
    }
    static const char *const headers[] = {"name", "state",  "instances", "memory",
                                          "kind", "routes", NULL};
    struct cli_table *t = cli_table_new(headers);
    size_t i;
    json_t *app;
    json_array_foreach(apps, i, app)
    {
        char inst[48], mem[32];
        snprintf(inst, sizeof(inst), "%lld/%lld", cli_json_int(app, "running"),
                 cli_json_int(app, "instances"));
        cli_format_mb(cli_json_int(app, "memory_mb"), mem, sizeof(mem));
        char *routes = cli_join(json_object_get(app, "routes"));
        const char *kind = cli_json_str(app, "kind");
        cli_table_add(t, cli_json_str(app, "name"), cli_json_str(app, "state"), inst, mem,
                      *kind ? kind : "app", routes);
        free(routes);
    }
    cli_table_print(t);
    json_decref(res);
    return CLI_EXIT_OK;
}

/* The functions inside the app (process types that run one of its functions), one a line:
 * APP/NAME, handler, runtime, running instances and the most it scales to. */
static void cli_app_print_functions(const json_t *app)
{
    size_t i;
    json_t *p;
    bool first = true;
    json_array_foreach(json_object_get(app, "processes"), i, p)
    {
        const json_t *fn = json_object_get(p, "function");
        if (!json_is_object(fn))
            continue;
        const char *type = cli_json_str(p, "type");
        long long running = 0;
        size_t k;
        json_t *inst;
        json_array_foreach(json_object_get(app, "instances_detail"), k, inst)
        {
            running += !strcmp(cli_json_str(inst, "process_type"), type) &&
                       !strcmp(cli_json_str(inst, "state"), "RUNNING");
        }
        printf("%s%s/%s: %s (%s), %lld running, up to %lld\n",
               first ? "functions:   " : "             ", cli_json_str(app, "name"), type,
               cli_json_str(fn, "handler"), cli_json_str(fn, "runtime"), running,
               cli_json_int(fn, "max_instances"));
        first = false;
    }
}

/* The app's sidecars, one a line: NAME (in TYPES, MEMORY): COMMAND. */
static void cli_app_print_sidecars(const json_t *app)
{
    size_t i;
    json_t *sc;
    json_array_foreach(json_object_get(app, "sidecars"), i, sc)
    {
        char *types = cli_join(json_object_get(sc, "process_types"));
        char mem[32] = "";
        if (cli_json_int(sc, "memory_mb") > 0) {
            strcpy(mem, ", ");
            cli_format_mb(cli_json_int(sc, "memory_mb"), mem + 2, sizeof mem - 2);
        }
        printf("%s%s (in %s%s): %s\n",
               i ? "             " : "sidecars:    ", cli_json_str(sc, "name"), types, mem,
               cli_json_str(sc, "command"));
        free(types);
    }
}

int cli_cmd_app(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *name = args.items[0];
    char *path = cli_app_path(name, NULL);
    json_t *app = NULL;
    rc = cli_api("GET", path, NULL, &app);
    free(path);
    if (rc)
        return rc;
    if (cli_json_printed(app))
        return CLI_EXIT_OK;
    char mem[32], disk[32];
    cli_format_mb(cli_json_int(app, "memory_mb"), mem, sizeof(mem));
    cli_format_mb(cli_json_int(app, "disk_mb"), disk, sizeof(disk));
    char *routes = cli_join(json_object_get(app, "routes"));
    char *buildpacks = cli_join(json_object_get(app, "buildpacks"));
    const char *detected = cli_json_str(app, "detected_buildpack");
    const char *command = cli_json_str(app, "command");
    printf("name:        %s\n", cli_json_str(app, "name"));
    printf("state:       %s\n", cli_json_str(app, "state"));
    printf("instances:   %lld/%lld\n", cli_json_int(app, "running"),
           cli_json_int(app, "instances"));
    printf("memory:      %s\n", mem);
    printf("disk:        %s\n", disk);
    printf("routes:      %s\n", *routes ? routes : "(none)");
    json_t *image = json_object_get(app, "image");
    if (json_is_object(image))
        printf("image:       %s\ndigest:      %s\n", cli_json_str(image, "ref"),
               cli_json_str(image, "digest"));
    else
        printf("buildpack:   %s\n", *detected     ? detected
                                    : *buildpacks ? buildpacks
                                                  : "(not staged)");
    if (*command)
        printf("command:     %s\n", command);
    cli_print_check("health:", cli_json_str(app, "health_check_type"),
                    cli_json_str(app, "health_check_http_endpoint"),
                    json_object_get(app, "health_check_interval"),
                    json_object_get(app, "health_check_invocation_timeout"));
    if (*cli_json_str(app, "readiness_health_check_type"))
        cli_print_check("readiness:", cli_json_str(app, "readiness_health_check_type"),
                        cli_json_str(app, "readiness_health_check_http_endpoint"),
                        json_object_get(app, "readiness_health_check_interval"),
                        json_object_get(app, "readiness_health_check_invocation_timeout"));
    json_t *rate = json_object_get(app, "log_rate_limit_per_second");
    if (json_is_integer(rate)) {
        char text[32];
        cli_format_log_rate(json_integer_value(rate), text, sizeof text);
        printf("log rate:    %s%s\n", text, json_integer_value(rate) >= 0 ? "/s" : "");
    }
    json_t *fn = json_object_get(app, "function");
    if (json_is_object(fn))
        printf("function:    %s%s%s%s\n", cli_json_str(fn, "handler"),
               *cli_json_str(fn, "runtime") ? " (" : "", cli_json_str(fn, "runtime"),
               *cli_json_str(fn, "runtime") ? ")" : "");
    cli_app_print_functions(app);
    for (int part = 0; part < 2; part++) {
        json_t *o =
            json_object_get(json_object_get(app, "metadata"), part ? "annotations" : "labels");
        if (json_object_size(o) == 0)
            continue;
        printf("%s", part ? "annotations: " : "labels:      ");
        const char *k;
        json_t *v;
        bool first = true;
        json_object_foreach(o, k, v)
        {
            printf("%s%s=%s", first ? "" : ", ", k,
                   json_string_value(v) ? json_string_value(v) : "");
            first = false;
        }
        putchar('\n');
    }
    cli_app_print_sidecars(app);
    const json_t *dep = json_object_get(app, "deployment");
    if (json_is_object(dep)) {
        const char *dstate = cli_json_str(dep, "state");
        printf("deployment:  %s, %lld of %lld instances on droplet %.8s%s%s\n", dstate,
               cli_json_int(dep, "updated"), cli_json_int(dep, "total"),
               cli_json_str(dep, "droplet"), strcmp(dstate, "FAILED") ? "" : ": ",
               strcmp(dstate, "FAILED") ? "" : cli_json_str(dep, "error"));
    }
    printf("updated:     %s\n", cli_json_str(app, "updated_at"));
    free(routes);
    free(buildpacks);

    json_t *instances = json_object_get(app, "instances_detail");
    if (json_array_size(instances) == 0) {
        printf("\nNo instances%s.\n",
               strcmp(cli_json_str(app, "state"), "STARTED") == 0 ? " yet" : " (stopped)");
        json_decref(app);
        return CLI_EXIT_OK;
    }
    putchar('\n');
    static const char *const headers[] = {"index", "type",    "state", "since", "cpu",
                                          "memory", "port",   "address", "uid",  "disk",
                                          "details", NULL};
    struct cli_table *t = cli_table_new(headers);
    size_t i;
    json_t *inst;
    json_array_foreach(instances, i, inst)
    {
        char index[24], cpu[24], memory[32], port[24], detail[160], uid[24], disk_text[64];
        const char *type = cli_json_str(inst, "process_type");
        snprintf(index, sizeof(index), "#%lld", cli_json_int(inst, "index"));
        snprintf(cpu, sizeof(cpu), "%.1f%%",
                 json_number_value(json_object_get(inst, "cpu")) * 100.0);
        cli_format_bytes(cli_json_int(inst, "memory_bytes"), memory, sizeof(memory));
        if (cli_json_int(inst, "port") > 0)
            snprintf(port, sizeof(port), "%lld", cli_json_int(inst, "port"));
        else
            snprintf(port, sizeof(port), "-");
        json_t *host_uid = json_object_get(inst, "host_uid");
        if (json_is_integer(host_uid))
            snprintf(uid, sizeof uid, "%lld", (long long)json_integer_value(host_uid));
        else
            snprintf(uid, sizeof uid, "-");
        long long disk_used = cli_json_int(inst, "disk_bytes");
        long long disk_quota = cli_json_int(inst, "disk_quota_bytes");
        if (disk_quota > 0) {
            char used[32], quota[32];
            cli_format_bytes(disk_used, used, sizeof used);
            cli_format_bytes(disk_quota, quota, sizeof quota);
            snprintf(disk_text, sizeof disk_text, "%s/%s", used, quota);
        } else {
            snprintf(disk_text, sizeof disk_text, "-");
        }
        cli_instance_detail(inst, detail, sizeof(detail));
        if (json_is_false(json_object_get(inst, "ready")) &&
            !strcmp(cli_json_str(inst, "state"), "RUNNING")) {
            size_t dl = strlen(detail);
            snprintf(detail + dl, sizeof detail - dl, "%snot ready (readiness check failing)",
                     dl ? ", " : "");
        }
        if (json_is_true(json_object_get(inst, "disk_full"))) {
            size_t dl = strlen(detail);
            snprintf(detail + dl, sizeof detail - dl, "%sdisk quota exceeded", dl ? ", " : "");
        }
        const char *address = cli_json_str(inst, "address");
        cli_table_add(t, index, *type ? type : "web", cli_json_str(inst, "state"),
                      cli_json_str(inst, "since"), cpu, memory, port, *address ? address : "-",
                      uid, disk_text, detail);
    }
    cli_table_print(t);
    json_decref(app);
    return CLI_EXIT_OK;
}

/* ---- changing apps ---------------------------------------------------------------------- */

int cli_size_flags(const struct cli_command *cmd, long instances, const char *memory,
                   const char *disk, json_t *body)
{
    long mb = 0;
    if (instances != LONG_MIN) {
        if (instances < 0)
            return cli_usage_error(cmd, "-i needs 0 or more instances, not %ld", instances);
        json_object_set_new(body, "instances", json_integer(instances));
    }
    if (memory) {
        if (manifest_parse_megabytes(memory, &mb))
            return cli_usage_error(cmd, "-m needs a size like 256M or 1G, not \"%s\"", memory);
        json_object_set_new(body, "memory_mb", json_integer(mb));
    }
    if (disk) {
        if (manifest_parse_megabytes(disk, &mb))
            return cli_usage_error(cmd, "-k needs a size like 512M or 1G, not \"%s\"", disk);
        json_object_set_new(body, "disk_mb", json_integer(mb));
    }
    return CLI_CONTINUE;
}

/* A rolling restart, so that the instances run with settings just changed; then waits for
 * them unless no_wait. */
static int cli_restart_to_apply(const char *name, bool no_wait, long timeout)
{
    char *path = cli_app_path(name, "/restart?rolling=1");
    int64_t asked_ms = time_now_ms();
    printf("Restarting %s to apply it...\n", name);
    int rc = cli_api("POST", path, NULL, NULL);
    free(path);
    if (rc || no_wait)
        return rc;
    return cli_wait_running(name, timeout, asked_ms, NULL);
}

/* 0 when the app has a process of that type; else says which it has (a typo of a type must
 * not make a new, empty one). */
static int cli_app_has_process(const char *name, const char *type)
{
    char *path = cli_app_path(name, NULL);
    json_t *app = NULL;
    int rc = cli_api("GET", path, NULL, &app);
    free(path);
    if (rc)
        return rc;
    struct buf types = {0};
    bool found = false;
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(app, "processes"), i, p)
    {
        found = found || !strcmp(cli_json_str(p, "type"), type);
        buf_printf(&types, "%s%s", i ? ", " : "", cli_json_str(p, "type"));
    }
    if (!found)
        cli_error("%s has no process type %s; its process types: %s", name, type,
                  types.data ? types.data : "(none)");
    buf_free(&types);
    json_decref(app);
    return found ? 0 : CLI_EXIT_ERROR;
}

/* set-health-check and set-readiness-health-check: NAME TYPE [--endpoint PATH]
 * [--invocation-timeout S] [--interval S] (and, for readiness, [--process P]) as one PATCH.
 * The liveness type is the app's (its web process's); timing and readiness are per process. */
static int cli_set_check(const struct cli_command *cmd, int argc, char **argv, bool readiness)
{
    const char *endpoint = NULL, *process = "web";
    long timeout = LONG_MIN, interval = LONG_MIN;
    struct cli_option opts[] = {{"endpoint", 0, CLI_OPT_STRING, &endpoint},
                                {"invocation-timeout", 0, CLI_OPT_INT, &timeout},
                                {"interval", 0, CLI_OPT_INT, &interval},
                                /* ends the list here for set-health-check */
                                {readiness ? "process" : NULL, 0, CLI_OPT_STRING, &process},
                                {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 2, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *name = args.items[0], *type = args.items[1];
    static const char *const liveness_types[] = {"port", "http", "process", NULL};
    static const char *const readiness_types[] = {"port", "http", "process", "none", NULL};
    bool known = false;
    for (const char *const *t = readiness ? readiness_types : liveness_types; *t; t++)
        known = known || !strcmp(type, *t);
    if (!known)
        return cli_usage_error(cmd, "TYPE must be port, http or process%s, not \"%s\"",
                               readiness ? " (none removes the check)" : "", type);
    if (endpoint && strcmp(type, "http"))
        return cli_usage_error(cmd, "--endpoint goes with the http type");
    if ((timeout != LONG_MIN && timeout < 1) || (interval != LONG_MIN && interval < 1))
        return cli_usage_error(cmd, "--invocation-timeout and --interval need seconds above 0");
    const char *prefix = readiness ? "readiness_health_check" : "health_check";
    json_t *fields = json_object();
    char key[64];
    snprintf(key, sizeof key, "%s_type", prefix);
    json_object_set_new(fields, key, strcmp(type, "none") ? json_string(type) : json_null());
    if (endpoint || !strcmp(type, "http")) {
        snprintf(key, sizeof key, "%s_http_endpoint", prefix);
        json_object_set_new(fields, key, json_string(endpoint ? endpoint : "/"));
    }
    if (timeout != LONG_MIN) {
        snprintf(key, sizeof key, "%s_invocation_timeout", prefix);
        json_object_set_new(fields, key, json_integer(timeout));
    }
    if (interval != LONG_MIN) {
        snprintf(key, sizeof key, "%s_interval", prefix);
        json_object_set_new(fields, key, json_integer(interval));
    }
    json_t *body = fields;
    if (strcmp(process, "web") && (rc = cli_app_has_process(name, process)) != 0) {
        json_decref(fields);
        return rc;
    }
    if (strcmp(process, "web")) { /* another process type: an item of "processes" */
        json_object_set_new(fields, "type", json_string(process));
        body = json_pack("{s:[o]}", "processes", fields);
    }
    char *path = cli_app_path(name, NULL);
    rc = cli_api("PATCH", path, body, NULL);
    json_decref(body);
    free(path);
    if (rc)
        return rc;
    if (!cli_json_output)
        printf("Set the %s check of %s (%s) to %s.\n\nTIP: An app restart is required for the "
               "change to take effect: running instances keep the check they started with "
               "(`skiff restart %s`).\n",
               readiness ? "readiness" : "health", name, process, type, name);
    return CLI_EXIT_OK;
}

int cli_cmd_set_health_check(const struct cli_command *cmd, int argc, char **argv)
{
    return cli_set_check(cmd, argc, argv, false);
}

int cli_cmd_set_readiness_health_check(const struct cli_command *cmd, int argc, char **argv)
{
    return cli_set_check(cmd, argc, argv, true);
}

int cli_cmd_scale(const struct cli_command *cmd, int argc, char **argv)
{
    long instances = LONG_MIN; /* not given */
    const char *memory = NULL, *disk = NULL, *log_rate = NULL;
    bool no_wait = false;
    long timeout = 60;
    struct cli_option opts[] = {{"instances", 'i', CLI_OPT_INT, &instances},
                                {"memory", 'm', CLI_OPT_STRING, &memory},
                                {"disk", 'k', CLI_OPT_STRING, &disk},
                                {"log-rate-limit", 'l', CLI_OPT_STRING, &log_rate},
                                {"no-wait", 0, CLI_OPT_FLAG, &no_wait},
                                {"timeout", 0, CLI_OPT_INT, &timeout},
                                {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *name = args.items[0];
    json_t *body = json_object();
    rc = cli_size_flags(cmd, instances, memory, disk, body);
    long long rate = 0;
    if (rc == CLI_CONTINUE && log_rate) {
        if (manifest_parse_log_rate(log_rate, &rate))
            rc = cli_usage_error(cmd,
                                 "-l needs bytes a second like 16K, 1M or 512B, or -1 for "
                                 "unlimited, not \"%s\"",
                                 log_rate);
        else
            json_object_set_new(body, "log_rate_limit_per_second", json_integer(rate));
    }
    if (rc == CLI_CONTINUE && json_object_size(body) == 0)
        rc = cli_usage_error(cmd, "say what to change: -i, -m, -k or -l");
    if (rc != CLI_CONTINUE) {
        json_decref(body);
        return rc;
    }
    char *path = cli_app_path(name, NULL);
    json_t *app = NULL;
    rc = cli_api("PATCH", path, body, &app);
    json_decref(body);
    free(path);
    if (rc)
        return rc;
    if (cli_json_printed(app))
        return CLI_EXIT_OK;
    char mem[32];
    cli_format_mb(cli_json_int(app, "memory_mb"), mem, sizeof(mem));
    printf("Scaled %s: %lld instances, %s memory.\n", name, cli_json_int(app, "instances"), mem);
    bool started = strcmp(cli_json_str(app, "state"), "STARTED") == 0;
    json_decref(app);
    if (started && log_rate) /* as `cf scale -l`: the instances restart with the new limit */
        return cli_restart_to_apply(name, no_wait, timeout);
    if (started && !no_wait)
        return cli_wait_running(name, timeout, 0, NULL);
    return CLI_EXIT_OK;
}

/* start, stop and restart: POST /v1/apps/NAME/ACTION, then (unless stopping) wait. */
static int cli_app_action(const struct cli_command *cmd, int argc, char **argv, const char *action,
                          const char *doing, bool wait)
{
    bool no_wait = false;
    long timeout = 60;
    struct cli_option opts[] = {
        {"no-wait", 0, CLI_OPT_FLAG, &no_wait}, {"timeout", 0, CLI_OPT_INT, &timeout}, {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, wait ? opts : NULL, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *name = args.items[0];
    char *suffix = xasprintf("/%s", action);
    char *path = cli_app_path(name, suffix);
    free(suffix);
    if (!cli_json_output)
        printf("%s %s...\n", doing, name);
    json_t *app = NULL;
    int64_t asked_ms = time_now_ms();
    rc = cli_api("POST", path, NULL, &app);
    free(path);
    if (rc)
        return rc;
    if (cli_json_printed(app))
        return CLI_EXIT_OK;
    json_decref(app);
    if (wait && !no_wait)
        return cli_wait_running(name, timeout, strcmp(action, "restart") == 0 ? asked_ms : 0,
                                NULL);
    printf("OK\n");
    return CLI_EXIT_OK;
}

int cli_cmd_start(const struct cli_command *cmd, int argc, char **argv)
{
    return cli_app_action(cmd, argc, argv, "start", "Starting", true);
}

int cli_cmd_stop(const struct cli_command *cmd, int argc, char **argv)
{
    return cli_app_action(cmd, argc, argv, "stop", "Stopping", false);
}

int cli_cmd_restart(const struct cli_command *cmd, int argc, char **argv)
{
    return cli_app_action(cmd, argc, argv, "restart", "Restarting", true);
}

int cli_cmd_delete(const struct cli_command *cmd, int argc, char **argv)
{
    bool force = false;
    struct cli_option opts[] = {{"force", 'f', CLI_OPT_FLAG, &force}, {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *name = args.items[0];
    char *question = xasprintf("Really delete the app %s, its instances and its routes?", name);
    rc = cli_confirm(cmd, force, name, question);
    free(question);
    if (rc != CLI_CONTINUE)
        return rc;
    char *path = cli_app_path(name, NULL);
    rc = cli_api("DELETE", path, NULL, NULL);
    free(path);
    if (rc)
        return rc;
    if (!cli_json_output)
        printf("Deleted %s.\n", name);
    return CLI_EXIT_OK;
}

/* ---- logs and environment --------------------------------------------------------------- */

/* Prints a log line; with arg (a tag such as "[APP/FUNC/RESIZE/"), only the lines of it. */
static int cli_print_line(const char *line, size_t len, void *arg)
{
    if (arg && !memmem(line, len, arg, strlen(arg)))
        return 0;
    fwrite(line, 1, len, stdout);
    putchar('\n');
    return 0;
}

int cli_cmd_logs(const struct cli_command *cmd, int argc, char **argv)
{
    bool recent = false;
    long lines = 0;
    struct cli_option opts[] = {
        {"recent", 0, CLI_OPT_FLAG, &recent}, {"lines", 'n', CLI_OPT_INT, &lines}, {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    char query[64];
    if (!recent)
        snprintf(query, sizeof(query), "/logs?follow=1");
    else if (lines > 0)
        snprintf(query, sizeof(query), "/logs?recent=1&lines=%ld", lines);
    else
        snprintf(query, sizeof(query), "/logs?recent=1");
    /* APP/FUNC: the lines of a function inside the app, tagged [APP/FUNC/NAME/n] */
    const char *slash = strchr(args.items[0], '/');
    char *app =
        slash ? xstrndup(args.items[0], (size_t)(slash - args.items[0])) : xstrdup(args.items[0]);
    char *tag = slash ? xasprintf("[APP/FUNC/%s/", slash + 1) : NULL;
    for (char *c = tag; c && *c; c++)
        *c = (char)toupper((unsigned char)*c);
    char *path = cli_app_path(app, query);
    struct cli_request req = {.method = "GET", .path = path, .on_line = cli_print_line, .arg = tag};
    struct cli_response res;
    rc = cli_http(&req, &res);
    cli_response_free(&res);
    free(path);
    free(app);
    free(tag);
    if (rc)
        return CLI_EXIT_ERROR;
    /* Following never ends on our side: the API ended it. */
    if (!recent)
        return cli_error("the log stream of %s ended: skiffd closed it (stopped or restarting?)",
                         args.items[0]);
    return CLI_EXIT_OK;
}

int cli_cmd_env(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    char *path = cli_app_path(args.items[0], "/env");
    json_t *res = NULL;
    rc = cli_api("GET", path, NULL, &res);
    free(path);
    if (rc)
        return rc;
    if (cli_json_printed(res))
        return CLI_EXIT_OK;
    json_t *env = json_object_get(res, "env");
    printf("User-provided:\n");
    if (json_object_size(env) == 0)
        printf("  (none: set one with `skiff set-env %s KEY VALUE`)\n", args.items[0]);
    const char *key;
    json_t *value;
    json_object_foreach(env, key, value)
    {
        if (json_is_string(value)) {
            printf("  %s=%s\n", key, json_string_value(value));
        } else {
            char *s = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);
            printf("  %s=%s\n", key, s ? s : "");
            free(s);
        }
    }
    json_t *system = json_object_get(res, "system");
    if (json_object_size(system) > 0) {
        printf("\nSystem-provided:\n");
        json_object_foreach(system, key, value)
        {
            char *s = json_is_string(value) ? xstrdup(json_string_value(value))
                                            : json_dumps(value, JSON_INDENT(2) | JSON_ENCODE_ANY);
            printf("  %s=%s\n", key, s ? s : "");
            free(s);
        }
    }
    json_decref(res);
    return CLI_EXIT_OK;
}

/* PUT /v1/apps/NAME/env with {KEY: value or null}. */
static int cli_env_change(const char *name, const char *key, const char *value)
{
    char *path = cli_app_path(name, "/env");
    json_t *body = json_object();
    json_object_set_new(body, key, value ? json_string(value) : json_null());
    json_t *res = NULL;
    int rc = cli_api("PUT", path, body, &res);
    json_decref(body);
    free(path);
    if (rc)
        return rc;
    if (cli_json_output)
        cli_print_json(res);
    else if (value)
        printf("Set %s for %s. Run `skiff restart %s` so the app sees it.\n", key, name, name);
    else
        printf("Removed %s from %s. Run `skiff restart %s` so the app no longer sees it.\n", key,
               name, name);
    json_decref(res);
    return CLI_EXIT_OK;
}

int cli_cmd_set_env(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 3, 3);
    if (rc != CLI_CONTINUE)
        return rc;
    return cli_env_change(args.items[0], args.items[1], args.items[2]);
}

int cli_cmd_unset_env(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 2, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    return cli_env_change(args.items[0], args.items[1], NULL);
}
