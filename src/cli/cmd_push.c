/* cmd_push: push (settings, upload, staging, start; from flags or a manifest) and restage. */
#include <dirent.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/commands.h"
#include "cli/manifest.h"
#include "cli/pack.h"
#include "common/buf.h"
#include "common/util.h"

/* ---- staging ---------------------------------------------------------------------------- */

struct cli_stage {
    bool done;
    bool ok;
    char *buildpack;
    char *droplet;
    char *error;
    json_t *process_types; /* {"web": "command", ...} of the droplet */
};

static int cli_stage_on_line(const char *line, size_t len, void *arg)
{
    struct cli_stage *st = arg;
    json_error_t jerr;
    json_t *j = json_loadb(line, len, 0, &jerr);
    if (!json_is_object(j)) {
        /* Not the ndjson we expect: still the user's staging output. */
        printf("   %.*s\n", (int)len, line);
        json_decref(j);
        return 0;
    }
    json_t *text = json_object_get(j, "line");
    if (json_is_string(text))
        printf("   %s\n", json_string_value(text));
    if (json_is_true(json_object_get(j, "done"))) {
        st->done = true;
        st->ok = json_is_true(json_object_get(j, "ok"));
        if (*cli_json_str(j, "buildpack"))
            st->buildpack = xstrdup(cli_json_str(j, "buildpack"));
        if (*cli_json_str(j, "droplet"))
            st->droplet = xstrdup(cli_json_str(j, "droplet"));
        json_decref(st->process_types);
        st->process_types = json_incref(json_object_get(j, "process_types"));
        json_t *err = json_object_get(j, "error");
        if (*cli_json_str(err, "message"))
            st->error = xstrdup(cli_json_str(err, "message"));
    }
    json_decref(j);
    return 0;
}

int cli_stage_stream(const char *name, const char *path, char **droplet)
{
    return cli_stage_stream_types(name, path, droplet, NULL);
}

int cli_stage_stream_types(const char *name, const char *path, char **droplet,
                           json_t **process_types)
{
    struct cli_stage st = {0};
    struct cli_request req = {
        .method = "POST", .path = path, .on_line = cli_stage_on_line, .arg = &st};
    struct cli_response res;
    printf("Staging %s...\n", name);
    int rc = cli_http(&req, &res);
    cli_response_free(&res);
    if (rc == 0) {
        if (!st.done)
            rc = cli_error("staging %s: the API closed the stream before staging finished. "
                           "`skiff logs %s --recent` may say why.",
                           name, name);
        else if (!st.ok)
            rc = cli_error("staging %s failed: %s", name,
                           st.error ? st.error : "the buildpack gave no reason");
        else
            printf("Staged %s%s%s.\n", name, st.buildpack ? " with the buildpack " : "",
                   st.buildpack ? st.buildpack : "");
    }
    if (rc == 0 && droplet) {
        *droplet = st.droplet;
        st.droplet = NULL;
    }
    if (rc == 0 && process_types) {
        *process_types = st.process_types;
        st.process_types = NULL;
    }
    json_decref(st.process_types);
    free(st.buildpack);
    free(st.droplet);
    free(st.error);
    return rc ? CLI_EXIT_ERROR : CLI_EXIT_OK;
}

/* ---- one app ---------------------------------------------------------------------------- */

/* What to push: from flags, a manifest entry, or both (flags win). */
struct cli_push_plan {
    const char *name;
    char *dir;    /* folder to pack (owned) */
    json_t *body; /* settings for PUT /v1/apps/NAME (owned) */
    bool no_start;
    long timeout_s;
    const char *strategy; /* NULL: rolling for a running app (the API's default) */
    const struct manifest_app *manifest; /* its services are bound before the start; NULL */
    const char *docker_image;    /* pushed instead of dir: an image reference or KIND:PATH */
    const char *docker_username; /* its registry's user (password: CF_DOCKER_PASSWORD) */
};

/* Binds the manifest's services to the app (those bound already stay as they are), so the
 * first start sees them, as Cloud Foundry's push does. */
static int cli_push_services(const char *name, const struct manifest_app *a)
{
    char *path = cli_app_path(name, "/service_bindings");
    int rc = CLI_EXIT_OK;
    for (size_t i = 0; a && i < a->service_count && rc == CLI_EXIT_OK; i++) {
        const struct manifest_service *svc = &a->services[i];
        bool bound = false;
        if ((rc = cli_app_bound(name, svc->name, &bound)) || bound)
            continue;
        json_t *body = json_pack("{s:s}", "service_instance", svc->name);
        if (svc->binding_name)
            json_object_set_new(body, "name", json_string(svc->binding_name));
        if (svc->parameters)
            json_object_set_new(body, "parameters", json_loads(svc->parameters, 0, NULL));
        rc = cli_api("POST", path, body, NULL);
        if (rc == 0)
            printf("Bound service instance %s to %s\n", svc->name, name);
        json_decref(body);
    }
    free(path);
    return rc;
}

static char *cli_router_url_from_info;
static void cli_free_router_url(void)
{
    free(cli_router_url_from_info);
}

/* The port of the router, for the "running at" line; NULL when unknown. */
static const char *cli_router_port(void)
{
    const struct cli_target *t = cli_target();
    if (!t)
        return NULL;
    const char *url = t->router_url;
    if (!url && !cli_router_url_from_info) {
        /* Logged in by URL only: the API says where its router is. */
        json_t *info = NULL;
        if (cli_api("GET", "/v1/info", NULL, &info) == 0 && *cli_json_str(info, "router_url"))
            cli_router_url_from_info = xstrdup(cli_json_str(info, "router_url"));
        json_decref(info);
        if (cli_router_url_from_info)
            atexit(cli_free_router_url);
    }
    if (!url)
        url = cli_router_url_from_info;
    if (!url)
        return NULL;
    const char *colon = strrchr(url, ':');
    const char *scheme = strstr(url, "://");
    if (!colon || !colon[1] || !scheme || colon < scheme + 3)
        return NULL;
    return colon + 1;
}

/* PUT of a file to the app's path suffix (the upload of its package). */
static int cli_push_send(const char *name, const char *suffix, FILE *body, long size)
{
    char *path = cli_app_path(name, suffix);
    struct cli_request req = {.method = "PUT",
                              .path = path,
                              .body_file = body,
                              .body_len = (size_t)size,
                              .content_type = "application/gzip",
                              .progress = true,
                              .timeout_s = 3600};
    struct cli_response res;
    int rc = cli_http(&req, &res) ? CLI_EXIT_ERROR : CLI_EXIT_OK;
    cli_response_free(&res);
    free(path);
    return rc;
}

static int cli_push_upload(const char *name, const char *dir)
{
    size_t files = 0;
    char *err = NULL;
    int rc = CLI_EXIT_ERROR;
    /* A temporary file, not memory: an app folder may be large. */
    FILE *tgz = tmpfile();
    if (!tgz)
        return cli_error("cannot create a temporary file to pack %s: %s (is TMPDIR writable?)", dir,
                         strerror(errno));
    printf("Packing %s...\n", dir);
    if (pack_folder(dir, tgz, &files, &err) != 0 || fflush(tgz) != 0) {
        cli_error("%s", err ? err : "cannot write the packed folder to a temporary file");
        goto done;
    }
    long size = ftell(tgz);
    rewind(tgz);
    char human[32];
    cli_human_bytes((double)size, human, sizeof(human));
    printf("Uploading %s: %zu files, %s\n", name, files, human);
    rc = cli_push_send(name, "/bits", tgz, size);
done:
    free(err);
    fclose(tgz);
    return rc;
}

/* The image kinds skiffd takes as a tarball (`KIND:PATH`). */
static const char *const cli_image_archives[] = {"oci-archive:", "docker-archive:", NULL};

/* --docker-image KIND:PATH: the tarball uploaded as the app's package, marked as an image. */
/* An image in a registry: its reference (and credentials) uploaded as the package, which
 * skiffd pulls at each staging (a restage follows a tag that moved). */
static int cli_push_image_ref(const char *name, const char *ref, const char *username)
{
    const char *password = getenv("CF_DOCKER_PASSWORD");
    if (username && !password)
        return cli_error("cannot push %s: --docker-username needs the password in "
                         "CF_DOCKER_PASSWORD",
                         name);
    json_t *body = json_pack("{s:s}", "ref", ref);
    if (username) {
        json_object_set_new(body, "username", json_string(username));
        json_object_set_new(body, "password", json_string(password));
    }
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    FILE *f = tmpfile();
    int rc = CLI_EXIT_ERROR;
    if (!f || fputs(text, f) < 0 || fflush(f) != 0) {
        rc = cli_error("cannot write a temporary file: %s", strerror(errno));
    } else {
        rewind(f);
        printf("Image %s%s%s\n", ref, username ? " as " : "", username ? username : "");
        rc = cli_push_send(name, "/bits?image=registry", f, (long)strlen(text));
    }
    if (f)
        fclose(f);
    free(text);
    return rc;
}

static int cli_push_image(const char *name, const char *ref, const char *username)
{
    const char *const *kind = cli_image_archives;
    while (*kind && !str_has_prefix(ref, *kind))
        kind++;
    if (!*kind)
        return cli_push_image_ref(name, ref, username);
    const char *file = ref + strlen(*kind);
    FILE *f = fopen(file, "rb");
    if (!f)
        return cli_error("cannot push %s: cannot read the image tarball %s: %s", name, file,
                         strerror(errno));
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    rewind(f);
    char human[32];
    cli_human_bytes((double)size, human, sizeof(human));
    printf("Uploading %s: the image %s, %s\n", name, ref, human);
    char *query = xasprintf("/bits?image=%.*s", (int)strlen(*kind) - 1, *kind);
    int rc = cli_push_send(name, query, f, size);
    free(query);
    fclose(f);
    return rc;
}

static int cli_push_one(const struct cli_push_plan *plan)
{
    const char *name = plan->name;
    struct stat sb;
    if (plan->docker_image)
        printf("Pushing %s from the image %s\n", name, plan->docker_image);
    else if (stat(plan->dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return cli_error("cannot push %s: %s is not a folder. Give the app's folder with -p.", name,
                         plan->dir);
    DIR *d = plan->docker_image ? NULL : opendir(plan->dir);
    bool empty = !plan->docker_image;
    for (struct dirent *de; d && empty && (de = readdir(d));)
        empty = !strcmp(de->d_name, ".") || !strcmp(de->d_name, "..");
    if (d)
        closedir(d);
    if (empty)
        return cli_error("cannot push %s: %s is empty (or cannot be read). Give the app's "
                         "folder with -p.",
                         name, plan->dir);
    if (!plan->docker_image)
        printf("Pushing %s from %s\n", name, plan->dir);
    char *path = cli_app_path(name, NULL);
    json_t *app = NULL;
    int rc = cli_api("PUT", path, plan->body, &app);
    bool was_started = rc == 0 && strcmp(cli_json_str(app, "state"), "STARTED") == 0;
    json_decref(app);
    if (rc)
        goto done;
    if ((rc = cli_push_services(name, plan->manifest)))
        goto done;
    if ((rc = plan->docker_image ? cli_push_image(name, plan->docker_image, plan->docker_username)
                                 : cli_push_upload(name, plan->dir)))
        goto done;
    char *stage = cli_app_path(name, plan->strategy && !strcmp(plan->strategy, "recreate")
                                         ? "/stage?strategy=recreate"
                                         : "/stage");
    char *droplet = NULL;
    json_t *types = NULL;
    rc = cli_stage_stream_types(name, stage, &droplet, &types);
    free(stage);
    if (rc)
        goto done;
    /* a droplet without a web command (a Procfile of workers only) would never start: say so
     * now, not after the start timeout */
    json_t *given = json_object_get(plan->body, "command");
    json_t *count = json_object_get(plan->body, "instances");
    if (json_is_object(types) && !json_object_get(types, "web") &&
        !(json_is_string(given) && *json_string_value(given)) &&
        !(json_is_integer(count) && json_integer_value(count) == 0)) {
        struct buf names = {0};
        const char *type;
        json_t *cmd;
        json_object_foreach(types, type, cmd)
        {
            (void)cmd;
            buf_printf(&names, "%s%s", names.len ? ", " : "", type);
        }
        rc = cli_error("%s is staged, but its web process has no command: the droplet declares "
                       "%s and no web. Add a 'web:' line to the Procfile, push with -c COMMAND, "
                       "or push with -i 0 to run no web instance.",
                       name, names.len ? names.data : "no process type");
        buf_free(&names);
        json_decref(types);
        free(droplet);
        goto done;
    }
    json_decref(types);
    if (plan->no_start && !was_started) {
        printf("%s is staged and not started (--no-start). Start it with `skiff start %s`.\n", name,
               name);
        free(droplet);
        goto done;
    }
    /* The end of staging restarts a started app onto its new droplet (the API does, once);
     * a stopped one is started here. */
    bool rolling = was_started && !(plan->strategy && !strcmp(plan->strategy, "recreate"));
    if (was_started) {
        printf(rolling ? "Deploying the new droplet of %s: each instance is replaced once its "
                         "successor runs...\n"
                       : "Restarting %s onto its new droplet...\n",
               name);
        rc = cli_api("GET", path, NULL, &app);
    } else {
        char *start = cli_app_path(name, "/start");
        printf("Starting %s...\n", name);
        rc = cli_api("POST", start, NULL, &app);
        free(start);
    }
    if (rc) {
        free(droplet);
        goto done;
    }
    json_t *routes = json_incref(json_object_get(app, "routes"));
    json_decref(app);
    rc = rolling ? cli_wait_deployed(name, plan->timeout_s, droplet)
                 : cli_wait_running(name, plan->timeout_s, 0, was_started ? droplet : NULL);
    free(droplet);
    if (rc == 0) {
        const char *port = cli_router_port();
        size_t i;
        json_t *r;
        json_array_foreach(routes, i, r)
        {
            const char *route = json_is_string(r) ? json_string_value(r) : cli_json_str(r, "host");
            /* "HOST/PATH" for a path route: the port goes after the host */
            const char *slash = strchr(route, '/');
            int host_len = slash ? (int)(slash - route) : (int)strlen(route);
            if (port)
                printf("  route: http://%.*s:%s%s\n", host_len, route, port, slash ? slash : "/");
            else
                printf("  route: %s\n", route);
        }
    }
    json_decref(routes);
done:
    free(path);
    return rc;
}

/* Runtime of a function from its file's extension; NULL when unknown. */
static const char *cli_function_runtime(const char *file)
{
    if (str_has_suffix(file, ".py"))
        return "python";
    if (str_has_suffix(file, ".js") || str_has_suffix(file, ".mjs"))
        return "node";
    if (str_has_suffix(file, ".sh"))
        return "shell";
    return NULL;
}

/* --function FILE:HANDLER: the body's "function" object; sets *dir when no -p was given
 * (the file's folder is what gets pushed). Returns CLI_CONTINUE or a usage error. */
static int cli_push_function(const struct cli_command *cmd, const char *spec, const char *path,
                             json_t *body, char **dir)
{
    const char *colon = strrchr(spec, ':');
    if (!colon || colon == spec || !colon[1])
        return cli_usage_error(cmd, "--function needs FILE:HANDLER, like resize.py:handle (or "
                                    "--docker-image REF: an image that serves the function)");
    char *file = xstrndup(spec, (size_t)(colon - spec));
    const char *runtime = cli_function_runtime(file);
    int rc = CLI_CONTINUE;
    if (!runtime) {
        rc = cli_usage_error(cmd, "--function %s: the file must end in .py, .js or .sh", file);
        goto done;
    }
    char *handler;
    if (path) {
        char *full = xasprintf("%s/%s", path, file);
        if (access(full, R_OK) != 0)
            rc = cli_error("--function: %s is not in the folder %s", file, path);
        free(full);
        handler = xasprintf("%s:%s", file, colon + 1);
    } else {
        if (access(file, R_OK) != 0) {
            rc = cli_error("--function: cannot read %s", file);
            goto done;
        }
        char *copy1 = xstrdup(file), *copy2 = xstrdup(file);
        *dir = xstrdup(dirname(copy1));
        handler = xasprintf("%s:%s", basename(copy2), colon + 1);
        free(copy1);
        free(copy2);
    }
    json_object_set_new(body, "kind", json_string("function"));
    json_object_set_new(body, "function",
                        json_pack("{s:s, s:s}", "handler", handler, "runtime", runtime));
    free(handler);
done:
    free(file);
    return rc;
}

/* --docker-image REF --function: the image is the function, serving the CloudEvents contract
 * on its port itself (no handler: nothing of Skiff's runs in it). */
static int cli_push_image_function(const struct cli_command *cmd, const char *spec, json_t *body)
{
    if (*spec)
        return cli_usage_error(cmd,
                               "--function takes no FILE:HANDLER with --docker-image (\"%s\"): "
                               "the image serves the function itself; give NAME before the "
                               "options",
                               spec);
    json_object_set_new(body, "kind", json_string("function"));
    json_object_set_new(body, "function", json_null());
    return CLI_CONTINUE;
}

/* Settings the manifest format has and the API does not take yet: said, never silently lost. */
static void cli_manifest_warn_unsupported(const struct manifest *m, const struct manifest_app *a)
{
    for (size_t i = 0; i < a->warning_count; i++)
        fprintf(stderr, "warning: %s\n", a->warnings[i]);
    if (a->stack) {
        /* a stack the platform has is used (there is one today); another one is said */
        json_t *stacks = NULL;
        bool known = false;
        size_t i;
        json_t *st;
        if (cli_api("GET", "/v1/stacks", NULL, &stacks) == 0)
            json_array_foreach(json_object_get(stacks, "stacks"), i, st)
            {
                known = known || strcmp(cli_json_str(st, "name"), a->stack) == 0;
            }
        if (!known && stacks)
            fprintf(stderr,
                    "warning: %s line %d: %s: \"stack\" has no effect here: there is no stack "
                    "%s, so the app runs on the platform's own (`skiff stacks` lists it)\n",
                    m->file, a->line, a->name, a->stack);
        json_decref(stacks);
    }
    for (size_t i = 0; i < a->process_count; i++) {
        const struct manifest_process *p = &a->processes[i];
        if (p->disk_mb > 0 || p->health_check_type || p->health_check_http_endpoint ||
            p->timeout > 0)
            fprintf(stderr,
                    "warning: %s: the %s process of %s sets disk_quota, health-check-type, "
                    "health-check-http-endpoint or timeout, which apply per app here: set them "
                    "on the app.\n",
                    m->file, p->type, a->name);
    }
}

/* A process's checks (manifest.h) into obj, an API app body or an item of its "processes". */
static void cli_manifest_checks(json_t *obj, const struct manifest_checks *k)
{
    if (k->health_interval > 0)
        json_object_set_new(obj, "health_check_interval", json_integer(k->health_interval));
    if (k->health_timeout > 0)
        json_object_set_new(obj, "health_check_invocation_timeout",
                            json_integer(k->health_timeout));
    if (k->readiness_type)
        json_object_set_new(obj, "readiness_health_check_type", json_string(k->readiness_type));
    if (k->readiness_endpoint)
        json_object_set_new(obj, "readiness_health_check_http_endpoint",
                            json_string(k->readiness_endpoint));
    if (k->readiness_interval > 0)
        json_object_set_new(obj, "readiness_health_check_interval",
                            json_integer(k->readiness_interval));
    if (k->readiness_timeout > 0)
        json_object_set_new(obj, "readiness_health_check_invocation_timeout",
                            json_integer(k->readiness_timeout));
    if (k->log_rate != MANIFEST_LOG_RATE_UNSET)
        json_object_set_new(obj, "log_rate_limit_per_second", json_integer(k->log_rate));
}

/* The settings of a manifest app, as the body of PUT /v1/apps/NAME. */
static json_t *cli_manifest_body(const struct manifest_app *a)
{
    json_t *body = json_object();
    if (a->instances >= 0)
        json_object_set_new(body, "instances", json_integer(a->instances));
    if (a->memory_mb > 0)
        json_object_set_new(body, "memory_mb", json_integer(a->memory_mb));
    if (a->disk_mb > 0)
        json_object_set_new(body, "disk_mb", json_integer(a->disk_mb));
    if (a->command)
        json_object_set_new(body, "command", json_string(a->command));
    if (a->buildpack_count) {
        json_t *bps = json_array();
        for (size_t i = 0; i < a->buildpack_count; i++)
            json_array_append_new(bps, json_string(a->buildpacks[i]));
        json_object_set_new(body, "buildpacks", bps);
    }
    if (a->env_count) {
        json_t *env = json_object();
        for (size_t i = 0; i < a->env_count; i++)
            json_object_set_new(env, a->env[i].key, json_string(a->env[i].value));
        json_object_set_new(body, "env", env);
    }
    if (a->route_count) {
        json_t *routes = json_array();
        for (size_t i = 0; i < a->route_count; i++)
            json_array_append_new(routes, json_string(a->routes[i].route));
        json_object_set_new(body, "routes", routes);
    }
    if (a->no_route_set && a->no_route)
        json_object_set_new(body, "no_route", json_true());
    if (a->health_check_type)
        json_object_set_new(body, "health_check_type", json_string(a->health_check_type));
    if (a->health_check_http_endpoint)
        json_object_set_new(body, "health_check_http_endpoint",
                            json_string(a->health_check_http_endpoint));
    if (a->timeout > 0)
        json_object_set_new(body, "timeout", json_integer(a->timeout));
    cli_manifest_checks(body, &a->checks);
    if (a->is_function) {
        /* A top-level function: an app of kind function whose code is the handler's file. */
        const struct manifest_function *f = &a->functions[0];
        json_t *fn = json_null(); /* an image: it serves the function itself */
        if (f->handler) {
            const char *colon = strrchr(f->handler, ':');
            char *file = xstrndup(f->handler, (size_t)(colon - f->handler));
            const char *runtime = cli_function_runtime(file);
            free(file);
            fn = json_pack("{s:s}", "handler", f->handler);
            if (runtime)
                json_object_set_new(fn, "runtime", json_string(runtime));
        }
        json_object_set_new(body, "kind", json_string("function"));
        json_object_set_new(body, "function", fn);
        if (f->memory_mb > 0)
            json_object_set_new(body, "memory_mb", json_integer(f->memory_mb));
        if (f->min_instances >= 0)
            json_object_set_new(body, "instances", json_integer(f->min_instances));
    }
    if (a->process_count) {
        json_t *procs = json_array();
        for (size_t i = 0; i < a->process_count; i++) {
            const struct manifest_process *p = &a->processes[i];
            json_t *o = json_pack("{s:s}", "type", p->type);
            if (p->command)
                json_object_set_new(o, "command", json_string(p->command));
            if (p->instances >= 0)
                json_object_set_new(o, "instances", json_integer(p->instances));
            if (p->memory_mb > 0)
                json_object_set_new(o, "memory_mb", json_integer(p->memory_mb));
            cli_manifest_checks(o, &p->checks);
            json_array_append_new(procs, o);
        }
        json_object_set_new(body, "processes", procs);
    }
    /* always: a manifest without sidecars removes the app's */
    json_t *sidecars = json_array();
    for (size_t i = 0; i < a->sidecar_count; i++) {
        const struct manifest_sidecar *sc = &a->sidecars[i];
        json_t *types = json_array();
        for (size_t k = 0; k < sc->process_type_count; k++)
            json_array_append_new(types, json_string(sc->process_types[k]));
        json_t *o = json_pack("{s:s,s:o,s:s}", "name", sc->name, "process_types", types, "command",
                              sc->command);
        if (sc->memory_mb > 0)
            json_object_set_new(o, "memory_mb", json_integer(sc->memory_mb));
        json_array_append_new(sidecars, o);
    }
    json_object_set_new(body, "sidecars", sidecars);
    return body;
}

/* random-route: a host like NAME-brave-otter on the platform's first shared domain, for an app
 * that has no route yet (a re-push keeps the one it got). Sets body's "routes". */
static int cli_push_random_route(const struct manifest_app *a, json_t *body)
{
    static const char *const adjectives[] = {"brave", "calm",  "eager", "fuzzy", "gentle",
                                             "happy", "jolly", "lucky", "proud", "quiet",
                                             "rapid", "shiny", "sunny", "tidy",  "witty"};
    static const char *const nouns[] = {"otter", "badger", "falcon", "heron",  "koala",
                                        "lynx",  "marten", "newt",   "panda",  "quail",
                                        "raven", "seal",   "tapir",  "walrus", "zebra"};
    char *name_q = cli_escape(a->name);
    char *path = xasprintf("/v1/routes?app=%s", name_q);
    json_t *existing = NULL;
    int rc = cli_api("GET", path, NULL, &existing);
    bool has_routes = json_array_size(json_object_get(existing, "routes")) > 0;
    json_decref(existing);
    free(path);
    free(name_q);
    if (rc || has_routes)
        return rc ? CLI_EXIT_ERROR : CLI_EXIT_OK;
    json_t *domains = NULL;
    if (cli_api("GET", "/v1/domains", NULL, &domains) != 0)
        return CLI_EXIT_ERROR;
    const char *domain = "localhost";
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(domains, "domains"), i, d)
    {
        if (json_is_true(json_object_get(d, "shared"))) {
            domain = cli_json_str(d, "name");
            break;
        }
    }
    unsigned seed = 0;
    FILE *urandom = fopen("/dev/urandom", "rb");
    if (!urandom || fread(&seed, sizeof(seed), 1, urandom) != 1)
        seed = (unsigned)getpid() ^ (unsigned)time(NULL);
    if (urandom)
        fclose(urandom);
    char *route = xasprintf("%s-%s-%s.%s", a->name, adjectives[seed % ARRAY_SIZE(adjectives)],
                            nouns[(seed / ARRAY_SIZE(adjectives)) % ARRAY_SIZE(nouns)], domain);
    json_object_set_new(body, "routes", json_pack("[s]", route));
    free(route);
    json_decref(domains);
    return CLI_EXIT_OK;
}

/* options: loadbalancing, protocol and https_only of the manifest's routes, as each route's
 * balance, protocol and https_only. */
static int cli_push_route_options(const struct manifest_app *a)
{
    int rc = CLI_EXIT_OK;
    for (size_t i = 0; i < a->route_count && rc == CLI_EXIT_OK; i++) {
        const struct manifest_route *r = &a->routes[i];
        if (!r->balance && !r->protocol && !r->https_only_set)
            continue;
        const char *slash = strchr(r->route, '/');
        json_t *body = json_pack("{s:s, s:s%}", "app", a->name, "host", r->route,
                                 slash ? (size_t)(slash - r->route) : strlen(r->route));
        if (r->balance)
            json_object_set_new(body, "balance", json_string(r->balance));
        if (r->protocol)
            json_object_set_new(body, "protocol", json_string(r->protocol));
        if (r->https_only_set)
            json_object_set_new(body, "https_only", json_boolean(r->https_only));
        if (slash)
            json_object_set_new(body, "path", json_string(slash));
        rc = cli_api("POST", "/v1/routes", body, NULL) ? CLI_EXIT_ERROR : CLI_EXIT_OK;
        json_decref(body);
    }
    return rc;
}

/* PUT /v1/apps/NAME/autoscale?process=TYPE with what the manifest sets. */
static int cli_push_autoscale_one(const char *app, const char *type,
                                  const struct manifest_autoscale *as)
{
    if (!manifest_autoscale_set(as))
        return CLI_EXIT_OK;
    json_t *body = json_object();
    const struct {
        const char *key;
        long value;
    } v[] = {{"min_instances", as->min_instances},
             {"max_instances", as->max_instances},
             {"target_concurrency", as->target_concurrency},
             {"target_rps", as->target_rps}};
    for (size_t i = 0; i < ARRAY_SIZE(v); i++)
        if (v[i].value >= 0)
            json_object_set_new(body, v[i].key, json_integer(v[i].value));
    char *query = cli_escape(type);
    char *suffix = xasprintf("/autoscale?process=%s", query);
    char *path = cli_app_path(app, suffix);
    int rc = cli_api("PUT", path, body, NULL) ? CLI_EXIT_ERROR : CLI_EXIT_OK;
    if (rc == CLI_EXIT_OK)
        printf("  autoscaling %s between %ld and %ld instances\n", type,
               as->min_instances >= 0 ? as->min_instances : 0,
               as->max_instances >= 0 ? as->max_instances : 10);
    free(path);
    free(suffix);
    free(query);
    json_decref(body);
    return rc;
}

/* The manifest's request scaling policies: the app's (its web process) and each process's. */
static int cli_push_autoscale(const struct manifest_app *a)
{
    int rc = cli_push_autoscale_one(a->name, "web", &a->autoscale);
    for (size_t i = 0; i < a->process_count && rc == CLI_EXIT_OK; i++)
        rc = cli_push_autoscale_one(a->name, a->processes[i].type, &a->processes[i].autoscale);
    return rc;
}

/* A manifest's metadata: its labels and annotations are set (the app's others stay, as Cloud
 * Foundry does; a null value removes one). */
static int cli_push_metadata(const struct manifest_app *a)
{
    json_t *body = json_loads(a->metadata_json, 0, NULL);
    char *path = cli_app_path(a->name, "/metadata");
    int rc = cli_api("PATCH", path, body, NULL) ? CLI_EXIT_ERROR : CLI_EXIT_OK;
    free(path);
    json_decref(body);
    return rc;
}

/* The first array in an answer like {"event_mappings": [...]}. */
static json_t *cli_first_array(json_t *obj)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        if (json_is_array(v))
            return v;
    }
    return NULL;
}

/* Whether mapping m is of app's process and for event e's topic or schedule. */
static bool cli_mapping_is(json_t *m, const char *app, const char *process,
                           const struct manifest_event *e)
{
    if (strcmp(cli_json_str(m, "app"), app) != 0 || strcmp(cli_json_str(m, "process"), process))
        return false;
    return (e->topic && strcmp(cli_json_str(m, "topic"), e->topic) == 0) ||
           (e->schedule && strcmp(cli_json_str(m, "schedule"), e->schedule) == 0);
}

/* Whether a mapping for app's process with this topic or schedule exists already (a re-push). */
static bool cli_mapping_exists(json_t *existing, const char *app, const char *process,
                               const struct manifest_event *e)
{
    size_t i;
    json_t *m;
    json_array_foreach(cli_first_array(existing), i, m)
    {
        if (cli_mapping_is(m, app, process, e))
            return true;
    }
    return false;
}

/* A function whose manifest entry lists its events: the mappings of its process for any other
 * topic or schedule go, each said on a line (the manifest is what the function listens to). */
static int cli_push_unmap_dropped(const struct manifest_app *a, const struct manifest_function *f,
                                  const char *process, json_t *existing)
{
    int rc = CLI_EXIT_OK;
    size_t i;
    json_t *m;
    json_array_foreach(cli_first_array(existing), i, m)
    {
        if (strcmp(cli_json_str(m, "app"), a->name) || strcmp(cli_json_str(m, "process"), process))
            continue;
        bool listed = false;
        for (size_t j = 0; j < f->event_count && !listed; j++)
            listed = cli_mapping_is(m, a->name, process, &f->events[j]);
        if (listed)
            continue;
        const char *schedule = cli_json_str(m, "schedule"); /* a schedule's topic is its own */
        printf("Removing the mapping of %s %s to %s%s%s: the manifest no longer lists it.\n",
               *schedule ? "the schedule" : "the topic",
               *schedule ? schedule : cli_json_str(m, "topic"), a->name, a->is_function ? "" : "/",
               a->is_function ? "" : f->name);
        char *path = xasprintf("/v1/event-mappings/%s", cli_json_str(m, "id"));
        if (cli_api("DELETE", path, NULL, NULL) != 0)
            rc = CLI_EXIT_ERROR;
        free(path);
    }
    return rc;
}

/* The events: of a manifest function become event mappings of its app. */
static int cli_push_mappings(const struct manifest_app *a)
{
    bool any = false;
    for (size_t i = 0; i < a->function_count; i++)
        any |= a->functions[i].events_listed;
    if (!any)
        return CLI_EXIT_OK;
    json_t *existing = NULL;
    if (cli_api("GET", "/v1/event-mappings", NULL, &existing) != 0)
        return CLI_EXIT_ERROR;
    int rc = CLI_EXIT_OK;
    for (size_t i = 0; i < a->function_count && rc == CLI_EXIT_OK; i++) {
        const struct manifest_function *f = &a->functions[i];
        /* a top-level function is its app's web process; one inside an app its own */
        const char *process = a->is_function ? "web" : f->name;
        if (f->events_listed)
            rc = cli_push_unmap_dropped(a, f, process, existing);
        for (size_t j = 0; j < f->event_count && rc == CLI_EXIT_OK; j++) {
            const struct manifest_event *e = &f->events[j];
            if (cli_mapping_exists(existing, a->name, process, e))
                continue;
            json_t *body = json_pack("{s:s,s:s}", "app", a->name, "process", process);
            if (e->topic)
                json_object_set_new(body, "topic", json_string(e->topic));
            else
                json_object_set_new(body, "schedule", json_string(e->schedule));
            if (e->filter_count) {
                json_t *filters = json_array();
                for (size_t k = 0; k < e->filter_count; k++) {
                    const char *v = e->filters[k].value;
                    size_t n = strlen(v);
                    /* a value ending in * in a manifest is a prefix filter: subject^=photos/ */
                    char *text = n && v[n - 1] == '*'
                                     ? xasprintf("%s^=%.*s", e->filters[k].key, (int)n - 1, v)
                                     : xasprintf("%s=%s", e->filters[k].key, v);
                    json_array_append_new(filters, json_string(text));
                    free(text);
                }
                json_object_set_new(body, "filters", filters);
            }
            if (f->concurrency > 0)
                json_object_set_new(body, "concurrency", json_integer(f->concurrency));
            if (f->max_instances > 0)
                json_object_set_new(body, "max_instances", json_integer(f->max_instances));
            if (f->idle_grace)
                json_object_set_new(body, "idle_grace", json_string(f->idle_grace));
            rc = cli_api("POST", "/v1/event-mappings", body, NULL);
            json_decref(body);
            if (rc == 0)
                printf("Mapped %s %s to %s%s%s.\n", e->topic ? "the topic" : "the schedule",
                       e->topic ? e->topic : e->schedule, a->name, a->is_function ? "" : "/",
                       a->is_function ? "" : f->name);
        }
    }
    json_decref(existing);
    return rc;
}

/* The functions: inside a manifest app become the app's functions (created or updated), and
 * those the app has that the manifest does not list are removed, with their event mappings,
 * each said on a line of its own. */
static int cli_push_functions(const struct manifest_app *a)
{
    if (a->is_function)
        return CLI_EXIT_OK;
    char *path = cli_app_path(a->name, "/functions");
    json_t *existing = NULL;
    int rc = cli_api("GET", path, NULL, &existing) ? CLI_EXIT_ERROR : CLI_EXIT_OK;
    free(path);
    for (size_t i = 0; i < a->function_count && rc == CLI_EXIT_OK; i++) {
        const struct manifest_function *f = &a->functions[i];
        json_t *body = json_pack("{s:s}", "handler", f->handler);
        if (f->max_instances > 0)
            json_object_set_new(body, "max_instances", json_integer(f->max_instances));
        if (f->min_instances >= 0)
            json_object_set_new(body, "min_instances", json_integer(f->min_instances));
        if (f->memory_mb > 0)
            json_object_set_new(body, "memory_mb", json_integer(f->memory_mb));
        char *fname = cli_escape(f->name);
        char *suffix = xasprintf("/functions/%s", fname);
        free(fname);
        path = cli_app_path(a->name, suffix);
        rc = cli_api("PUT", path, body, NULL) ? CLI_EXIT_ERROR : CLI_EXIT_OK;
        if (rc == CLI_EXIT_OK)
            printf("Function %s/%s runs %s from the app's droplet.\n", a->name, f->name,
                   f->handler);
        free(path);
        free(suffix);
        json_decref(body);
    }
    size_t i;
    json_t *fn;
    json_array_foreach(json_object_get(existing, "functions"), i, fn)
    {
        const char *name = cli_json_str(fn, "name");
        bool listed = false;
        for (size_t k = 0; k < a->function_count && !listed; k++)
            listed = !strcmp(a->functions[k].name, name);
        if (listed || rc != CLI_EXIT_OK)
            continue;
        printf("Removing function %s/%s and its event mappings: the manifest no longer lists "
               "it.\n",
               a->name, name);
        char *fname = cli_escape(name);
        char *suffix = xasprintf("/functions/%s", fname);
        free(fname);
        path = cli_app_path(a->name, suffix);
        rc = cli_api("DELETE", path, NULL, NULL) ? CLI_EXIT_ERROR : CLI_EXIT_OK;
        free(path);
        free(suffix);
    }
    json_decref(existing);
    return rc;
}

/* Whether the manifest at path lists an app called name (a broken manifest counts as yes, so
 * that pushing from it reports what is wrong). */
static bool cli_manifest_lists(const char *path, const struct manifest_vars *vars, const char *name)
{
    struct manifest *m = NULL;
    char *err = NULL;
    if (manifest_load(path, vars, &m, &err) != 0) {
        free(err);
        return true;
    }
    bool found = false;
    for (size_t i = 0; i < m->app_count && !found; i++)
        found = strcmp(m->apps[i].name, name) == 0;
    manifest_free(m);
    return found;
}

int cli_cmd_push(const struct cli_command *cmd, int argc, char **argv)
{
    const char *path = NULL, *manifest_path = NULL, *memory = NULL, *disk = NULL;
    const char *command = NULL, *function = NULL, *strategy = NULL, *docker_image = NULL;
    const char *docker_username = NULL;
    long instances = LONG_MIN, timeout = 60; /* LONG_MIN: not given */
    bool no_route = false, no_start = false, no_manifest = false;
    struct cli_list buildpacks = {0}, vars_files = {0}, var_flags = {0};
    struct cli_option opts[] = {{"path", 'p', CLI_OPT_STRING, &path},
                                {"manifest", 'f', CLI_OPT_STRING, &manifest_path},
                                {"instances", 'i', CLI_OPT_INT, &instances},
                                {"memory", 'm', CLI_OPT_STRING, &memory},
                                {"disk", 'k', CLI_OPT_STRING, &disk},
                                {"buildpack", 'b', CLI_OPT_LIST, &buildpacks},
                                {"command", 'c', CLI_OPT_STRING, &command},
                                {"no-route", 0, CLI_OPT_FLAG, &no_route},
                                {"no-start", 0, CLI_OPT_FLAG, &no_start},
                                {"no-manifest", 0, CLI_OPT_FLAG, &no_manifest},
                                {"function", 0, CLI_OPT_OPTIONAL, &function},
                                {"timeout", 't', CLI_OPT_INT, &timeout},
                                {"strategy", 0, CLI_OPT_STRING, &strategy},
                                {"docker-image", 'o', CLI_OPT_STRING, &docker_image},
                                {"docker-username", 0, CLI_OPT_STRING, &docker_username},
                                {"vars-file", 0, CLI_OPT_LIST, &vars_files},
                                {"var", 0, CLI_OPT_LIST, &var_flags},
                                {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 0, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *name = args.count ? args.items[0] : NULL;
    if (strategy && strcmp(strategy, "rolling") && strcmp(strategy, "recreate"))
        return cli_usage_error(cmd, "--strategy is rolling (the default) or recreate, not \"%s\"",
                               strategy);

    /* The settings given by flags, applied over a manifest's. */
    json_t *flags = json_object();
    rc = cli_size_flags(cmd, instances, memory, disk, flags);
    if (command)
        json_object_set_new(flags, "command", json_string(command));
    if (buildpacks.count) {
        json_t *bps = json_array();
        for (int i = 0; i < buildpacks.count; i++)
            json_array_append_new(bps, json_string(buildpacks.items[i]));
        json_object_set_new(flags, "buildpacks", bps);
    }
    if (no_route)
        json_object_set_new(flags, "no_route", json_true());
    /* ((name)) in the manifest: files in order, then --var, each later one winning */
    struct manifest_vars vars = {0};
    for (int i = 0; i < vars_files.count && rc == CLI_CONTINUE; i++) {
        char *err = NULL;
        if (manifest_vars_load(&vars, vars_files.items[i], &err) != 0) {
            cli_error("%s", err);
            rc = CLI_EXIT_ERROR;
        }
        free(err);
    }
    for (int i = 0; i < var_flags.count && rc == CLI_CONTINUE; i++)
        if (manifest_vars_set(&vars, var_flags.items[i]) != 0)
            rc = cli_usage_error(cmd, "--var needs NAME=VALUE, not \"%s\"", var_flags.items[i]);
    if (timeout <= 0 && rc == CLI_CONTINUE)
        rc = cli_usage_error(cmd, "--timeout needs a number of seconds above 0");
    char *function_dir = NULL;
    if (function && rc == CLI_CONTINUE)
        rc = docker_image ? cli_push_image_function(cmd, function, flags)
                          : cli_push_function(cmd, function, path, flags, &function_dir);
    if (rc != CLI_CONTINUE) {
        json_decref(flags);
        free(function_dir);
        manifest_vars_free(&vars);
        return rc;
    }

    /* Without a manifest named, ./manifest.yml is used, as Cloud Foundry does: for all its
     * apps, or for the named one when it lists it (otherwise the flags alone say how). */
    if (!manifest_path && !function && !no_manifest && access("manifest.yml", R_OK) == 0) {
        if (!name || cli_manifest_lists("manifest.yml", &vars, name))
            manifest_path = "manifest.yml";
        else
            printf("./manifest.yml has no app named %s: pushing it from the flags alone.\n", name);
    }
    if (!manifest_path) {
        manifest_vars_free(&vars);
        if (!name) {
            json_decref(flags);
            free(function_dir);
            return cli_usage_error(cmd, "give the app's NAME, or a manifest with -f");
        }
        struct cli_push_plan plan = {.name = name,
                                     .dir =
                                         function_dir ? function_dir : xstrdup(path ? path : "."),
                                     .body = flags,
                                     .no_start = no_start,
                                     .timeout_s = timeout,
                                     .strategy = strategy,
                                     .docker_image = docker_image,
                                     .docker_username = docker_username};
        rc = cli_push_one(&plan);
        free(plan.dir);
        json_decref(flags);
        return rc;
    }

    struct manifest *m = NULL;
    char *err = NULL;
    rc = manifest_load(manifest_path, &vars, &m, &err);
    manifest_vars_free(&vars);
    if (rc != 0) {
        cli_error("%s", err);
        free(err);
        json_decref(flags);
        free(function_dir);
        return CLI_EXIT_ERROR;
    }
    printf("Using the manifest %s\n", manifest_path);
    size_t pushed = 0;
    rc = CLI_EXIT_OK;
    for (size_t i = 0; i < m->app_count && rc == CLI_EXIT_OK; i++) {
        const struct manifest_app *a = &m->apps[i];
        if (name && strcmp(name, a->name) != 0)
            continue;
        if (m->app_count > 1 && !name && (json_object_size(flags) > 0 || path)) {
            rc = cli_usage_error(cmd,
                                 "flags like -p, -i or -m apply to one app: name it "
                                 "(`skiff push NAME -f %s ...`)",
                                 manifest_path);
            break;
        }
        cli_manifest_warn_unsupported(m, a);
        struct cli_push_plan plan = {.name = a->name,
                                     .body = cli_manifest_body(a),
                                     .no_start = no_start,
                                     .timeout_s = timeout,
                                     .strategy = strategy,
                                     .manifest = a,
                                     .docker_image = docker_image ? docker_image : a->docker_image,
                                     .docker_username =
                                         docker_username ? docker_username : a->docker_username};
        json_object_update(plan.body, flags);
        if (path)
            plan.dir = xstrdup(path);
        else if (function_dir)
            plan.dir = xstrdup(function_dir);
        else
            plan.dir = xstrdup(a->path ? a->path : m->dir);
        if (a->timeout > 0 && timeout == 60)
            plan.timeout_s = a->timeout;
        if (pushed)
            putchar('\n');
        if (a->random_route && !a->route_count && !json_object_get(plan.body, "routes") &&
            !json_is_true(json_object_get(plan.body, "no_route")))
            rc = cli_push_random_route(a, plan.body);
        if (rc == CLI_EXIT_OK)
            rc = cli_push_one(&plan);
        if (rc == CLI_EXIT_OK)
            rc = cli_push_route_options(a);
        if (rc == CLI_EXIT_OK && a->metadata_json)
            rc = cli_push_metadata(a);
        if (rc == CLI_EXIT_OK && !a->is_function)
            rc = cli_push_autoscale(a);
        if (rc == CLI_EXIT_OK)
            rc = cli_push_functions(a);
        if (rc == CLI_EXIT_OK)
            rc = cli_push_mappings(a);
        pushed++;
        free(plan.dir);
        json_decref(plan.body);
    }
    if (rc == CLI_EXIT_OK && name && pushed == 0)
        rc = cli_error("the manifest %s has no app named \"%s\"", manifest_path, name);
    manifest_free(m);
    json_decref(flags);
    free(function_dir);
    return rc;
}

int cli_cmd_restage(const struct cli_command *cmd, int argc, char **argv)
{
    long timeout = 60;
    struct cli_option opts[] = {{"timeout", 0, CLI_OPT_INT, &timeout}, {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *name = args.items[0];
    char *path = cli_app_path(name, "/restage");
    char *droplet = NULL;
    rc = cli_stage_stream(name, path, &droplet);
    free(path);
    if (rc)
        return rc;
    path = cli_app_path(name, NULL);
    json_t *app = NULL;
    rc = cli_api("GET", path, NULL, &app);
    free(path);
    if (rc == 0 && strcmp(cli_json_str(app, "state"), "STARTED") == 0)
        rc = cli_wait_deployed(name, timeout, droplet);
    json_decref(app);
    free(droplet);
    return rc;
}

/* ---- revisions ------------------------------------------------------------------------- */

static void cli_format_version(const json_t *row, const char *field, char *out, size_t size)
{
    snprintf(out, size, "%lld%s", (long long)json_integer_value(json_object_get(row, field)),
             json_is_true(json_object_get(row, "current")) ? " (current)" : "");
}

int cli_cmd_revisions(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    static const struct cli_column cols[] = {{"revision", "version", cli_format_version},
                                             {"created", "created_at", NULL},
                                             {"description", "description", NULL},
                                             {"droplet", "droplet", NULL},
                                             {0}};
    char *path = cli_app_path(args.items[0], "/revisions");
    rc = cli_list(path, "revisions", cols);
    free(path);
    return rc;
}

int cli_cmd_rollback(const struct cli_command *cmd, int argc, char **argv)
{
    long timeout = 60;
    struct cli_option opts[] = {{"timeout", 0, CLI_OPT_INT, &timeout}, {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *name = args.items[0];
    long long version = 0;
    if (args.count == 2) {
        char *end;
        version = strtoll(args.items[1], &end, 10);
        if (*end || version < 1)
            return cli_usage_error(cmd, "REVISION is a number (`skiff revisions %s` lists them)",
                                   name);
    } else {
        /* the newest revision before the current one */
        char *path = cli_app_path(name, "/revisions");
        json_t *res = NULL;
        rc = cli_api("GET", path, NULL, &res);
        free(path);
        if (rc)
            return CLI_EXIT_ERROR;
        bool past_current = false;
        size_t i;
        json_t *r;
        json_array_foreach(json_object_get(res, "revisions"), i, r)
        {
            if (json_is_true(json_object_get(r, "current")))
                past_current = true;
            else if (past_current && !version)
                version = json_integer_value(json_object_get(r, "version"));
        }
        json_decref(res);
        if (!version)
            return cli_error("%s has no revision before its current one to roll back to", name);
    }
    char *path = cli_app_path(name, "/rollback");
    json_t *body = json_pack("{s:I}", "revision", (json_int_t)version);
    json_t *app = NULL;
    printf("Rolling %s back to revision %lld...\n", name, version);
    rc = cli_api("POST", path, body, &app);
    json_decref(body);
    free(path);
    if (rc)
        return CLI_EXIT_ERROR;
    bool started = !strcmp(cli_json_str(app, "state"), "STARTED");
    char *droplet = xstrdup(cli_json_str(app, "droplet"));
    json_decref(app);
    if (started)
        rc = cli_wait_deployed(name, timeout, droplet);
    else
        printf("%s is stopped: it runs revision %lld's droplet when started.\n", name, version);
    free(droplet);
    return rc;
}
