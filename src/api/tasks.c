/* One-off tasks, as Cloud Foundry's v3 tasks: a command run once from an app's current droplet
 * with the app's environment and services, in a container like an instance's but with no route,
 * no health check and no restart (docs/api.md, "Tasks").
 *
 *   POST /v1/apps/APP/tasks              {"command": "...", "name": "...", "memory_mb": N}: runs
 *                                        one (202 with the task, PENDING or RUNNING)
 *   GET  /v1/apps/APP/tasks              the app's tasks, oldest first
 *   GET  /v1/apps/APP/tasks/ID           one, by its sequence id
 *   POST /v1/apps/APP/tasks/ID/cancel    stops it (202, CANCELING; then FAILED, "task was
 *                                        cancelled")
 *
 * A task's record is a store_task (store.h); the store is the one place that says which tasks
 * run, so a restart of skiffd, the quota and the list all read it. States: PENDING (recorded,
 * not yet started), RUNNING, CANCELING, then SUCCEEDED (exit status 0) or FAILED with a
 * failure reason. A task still PENDING, RUNNING or CANCELING when skiffd starts ran under a
 * skiffd that is gone: the scheduler ends what is left of it (a task is never adopted) and it
 * is marked FAILED here. Each app keeps its newest API_TASKS_KEEP records. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/core_internal.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "logs/logs.h"
#include "scheduler/scheduler.h"
#include "store/store.h"

#define TASK_PENDING "PENDING"
#define TASK_RUNNING "RUNNING"
#define TASK_CANCELING "CANCELING"
#define TASK_SUCCEEDED "SUCCEEDED"
#define TASK_FAILED "FAILED"

#define TASK_REASON_CANCELLED "task was cancelled"
#define TASK_REASON_RESTARTED "skiffd stopped while the task ran"

bool api_task_active(const struct store_task *t)
{
    return t && t->state &&
           (!strcmp(t->state, TASK_PENDING) || !strcmp(t->state, TASK_RUNNING) ||
            !strcmp(t->state, TASK_CANCELING));
}

bool api_task_name_check(const char *name, char *err, size_t errsize)
{
    size_t len = name ? strlen(name) : 0;
    bool ok = len > 0 && len <= SCHEDULER_TASK_NAME_MAX;
    for (size_t i = 0; ok && i < len; i++)
        ok = isalnum((unsigned char)name[i]) || name[i] == '-' || name[i] == '_' || name[i] == '.';
    if (!ok)
        snprintf(err, errsize,
                 "a task's name is 1 to %d letters, digits, dots, dashes and underscores (it "
                 "tags the task's log lines)",
                 SCHEDULER_TASK_NAME_MAX);
    return ok;
}

bool api_task_command_check(const char *command, char *err, size_t errsize)
{
    size_t len = command ? strlen(command) : 0;
    bool blank = true;
    for (size_t i = 0; blank && i < len; i++)
        blank = isspace((unsigned char)command[i]);
    if (blank) {
        snprintf(err, errsize, "a task needs a command: skiff run-task APP \"COMMAND\"");
        return false;
    }
    if (len > API_TASK_COMMAND_MAX) {
        snprintf(err, errsize, "the task's command is %zu bytes; at most %d are allowed", len,
                 API_TASK_COMMAND_MAX);
        return false;
    }
    return true;
}

void api_task_failure_reason(const struct scheduler_task_end *end, int memory_mb, char *out,
                             size_t size)
{
    if (end->term_signal && end->reason && !strcmp(end->reason, "out of memory"))
        snprintf(out, size, "out of memory: killed by signal %d at the task's limit of %d MB",
                 end->term_signal, memory_mb);
    else if (end->term_signal)
        snprintf(out, size, "killed by signal %d", end->term_signal);
    else if (end->reason && strcmp(end->reason, "exited"))
        snprintf(out, size, "exited with status %d (%s)", end->exit_status, end->reason);
    else
        snprintf(out, size, "exited with status %d", end->exit_status);
}

static void tasks__write(struct buf *b, const struct store_task *t)
{
    json_t *o = json_pack("{s:s, s:I, s:s, s:s, s:s, s:i, s:i, s:s}", "guid", t->guid,
                          "sequence_id", (json_int_t)t->sequence_id, "name", t->name, "command",
                          t->command, "state", t->state, "memory_mb", t->memory_mb, "disk_mb",
                          t->disk_mb, "droplet_guid", t->droplet_guid);
    json_object_set_new(o, "failure_reason",
                        t->failure_reason ? json_string(t->failure_reason) : json_null());
    json_object_set_new(o, "exit_status",
                        t->exit_status >= 0 ? json_integer(t->exit_status) : json_null());
    char created[40], updated[40];
    time_format_rfc3339(t->created_at, created, sizeof created);
    time_format_rfc3339(t->updated_at, updated, sizeof updated);
    json_object_set_new(o, "created_at", json_string(created));
    json_object_set_new(o, "updated_at", json_string(updated));
    char *text = json_dumps(o, JSON_COMPACT);
    buf_append(b, text, strlen(text));
    free(text);
    json_decref(o);
}

static void tasks__respond(struct api_request *req, int status, const struct store_task *t)
{
    struct buf b = {0};
    tasks__write(&b, t);
    api_respond(req, status, "application/json", b.data, b.len);
    buf_free(&b);
}

/* A request's task writes, queued: answered once the last is made (202 with task, as its
 * writes leave it; 500 when the store refused one, unless the task runs). req NULL: nobody
 * waits (a task's end). */
struct tasks_answer {
    struct api_request *req;
    int pending;  /* writes not finished, and 1 more until the last is queued */
    int rc;       /* the first refusal */
    bool running; /* the task was started: a refused write leaves its record behind, but an
                     error would tell the client to run it again */
    struct store_task task;
};

static struct tasks_answer *tasks__answer_new(struct api_request *req)
{
    struct tasks_answer *a = xcalloc(1, sizeof *a);
    a->req = req;
    a->pending = 1;
    return a;
}

static void tasks__fields_free(struct store_task *t)
{
    free(t->name);
    free(t->command);
    free(t->state);
    free(t->failure_reason);
}

/* One of a's writes finished (or, from tasks__answer_end, all are queued). */
static void tasks__answer_done(struct tasks_answer *a, int rc)
{
    if (rc < 0 && a->rc == 0)
        a->rc = rc;
    if (--a->pending > 0)
        return;
    if (a->req && a->rc < 0 && !a->running)
        api_respond_error(a->req, a->rc == -ECANCELED ? SKIFF_E_UNAVAILABLE : SKIFF_E_INTERNAL,
                          "cannot record the task in the store (see skiffd's output)");
    else if (a->req)
        tasks__respond(a->req, 202, &a->task);
    tasks__fields_free(&a->task);
    free(a);
}

static void tasks__answer_end(struct tasks_answer *a)
{
    tasks__answer_done(a, 0);
}

/* One task write of a's (or of nobody's), logged when the store refuses it. */
struct tasks_write {
    struct tasks_answer *answer;
    char guid[37];
    char *state;
};

static void tasks__written(void *ctx, int rc)
{
    struct tasks_write *w = ctx;
    if (rc < 0)
        log_error("tasks: cannot record task %s as %s: %s", w->guid, w->state ? w->state : "gone",
                  skiff_strerror(rc));
    if (w->answer)
        tasks__answer_done(w->answer, rc);
    free(w->state);
    free(w);
}

/* Queues t's put (state NULL: its deletion) for answer (NULL: nobody waits); answer's task is
 * then t as written. */
static void tasks__queue(struct api_core *core, const struct store_task *t, bool put,
                         struct tasks_answer *answer)
{
    struct tasks_write *w = xcalloc(1, sizeof *w);
    w->answer = answer;
    snprintf(w->guid, sizeof w->guid, "%s", t->guid);
    w->state = put ? xstrdup(t->state) : NULL;
    if (answer) {
        answer->pending++;
        if (put) {
            tasks__fields_free(&answer->task);
            answer->task = *t;
            answer->task.name = t->name ? xstrdup(t->name) : NULL;
            answer->task.command = t->command ? xstrdup(t->command) : NULL;
            answer->task.state = t->state ? xstrdup(t->state) : NULL;
            answer->task.failure_reason = t->failure_reason ? xstrdup(t->failure_reason) : NULL;
        }
    }
    int rc = put ? store_task_put_async(core->cfg.store, t, tasks__written, w)
                 : store_task_delete_async(core->cfg.store, t->guid, tasks__written, w);
    if (rc < 0)
        tasks__written(w, rc);
}

/* Sets t's new state (and reason) and queues its write for answer (NULL: nobody waits). */
static void tasks__set_state(struct api_core *core, struct store_task *t, const char *state,
                             const char *reason, struct tasks_answer *answer)
{
    free(t->state);
    t->state = xstrdup(state);
    free(t->failure_reason);
    t->failure_reason = reason ? xstrdup(reason) : NULL;
    t->updated_at = time_now_ms();
    tasks__queue(core, t, true, answer);
}

/* The task of the app with that guid (index into list), or -1. */
static ssize_t tasks__index(const struct store_task *list, size_t n, const char *guid)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(list[i].guid, guid))
            return (ssize_t)i;
    return -1;
}

/* scheduler_task_ended_cb: a task's end is its record's last state. */
static void tasks__ended(void *ctx, const char *app_guid, const char *task_guid,
                         const struct scheduler_task_end *end)
{
    struct api_core *core = ctx;
    struct store_task *list = NULL;
    size_t n = 0;
    if (store_task_list(core->cfg.store, app_guid, &list, &n) < 0)
        return;
    ssize_t i = tasks__index(list, n, task_guid);
    if (i < 0) { /* its app was deleted */
        store_task_list_free(list, n);
        return;
    }
    struct store_task *t = &list[i];
    char reason[160];
    bool cancelled = !strcmp(t->state, TASK_CANCELING);
    t->exit_status = end->stopped ? -1 : end->exit_status;
    if (cancelled)
        tasks__set_state(core, t, TASK_FAILED, TASK_REASON_CANCELLED, NULL);
    else if (end->stopped)
        tasks__set_state(core, t, TASK_FAILED, TASK_REASON_RESTARTED, NULL);
    else if (!end->term_signal && end->exit_status == 0)
        tasks__set_state(core, t, TASK_SUCCEEDED, NULL, NULL);
    else {
        api_task_failure_reason(end, t->memory_mb, reason, sizeof reason);
        tasks__set_state(core, t, TASK_FAILED, reason, NULL);
    }
    store_task_list_free(list, n);
}

/* The app's task named by the path's second parameter (its sequence id), or -1 after
 * answering. */
static ssize_t tasks__find(struct api_request *req, const struct store_app *app,
                           const struct store_task *list, size_t n)
{
    const char *id = api_request_param(req, 1);
    char *end = NULL;
    errno = 0;
    long long seq = id && isdigit((unsigned char)*id) ? strtoll(id, &end, 10) : -1;
    if (seq < 1 || errno || !end || *end) {
        api_respond_error(req, SKIFF_E_BAD_VALUE,
                          "a task is named by its number, not \"%s\": `skiff tasks %s` lists them",
                          id ? id : "", app->name);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if (list[i].sequence_id == seq)
            return (ssize_t)i;
    api_respond_error(req, SKIFF_E_NOT_FOUND,
                      "app %s has no task %lld: `skiff tasks %s` lists them", app->name, seq,
                      app->name);
    return -1;
}

/* Drops the oldest of the app's records (list, oldest first, and one more just made) past
 * API_TASKS_KEEP, never one that runs. */
static void tasks__trim(struct api_core *core, const struct store_task *list, size_t n)
{
    size_t over = n + 1 > API_TASKS_KEEP ? n + 1 - API_TASKS_KEEP : 0;
    for (size_t i = 0; i < n && over > 0; i++)
        if (!api_task_active(&list[i])) {
            tasks__queue(core, &list[i], false, NULL);
            over--;
        }
}

/* A task being created: its record queued, the request waiting for it. */
struct tasks_create {
    struct api_core *core;
    struct api_request *req; /* NULL once answered (the quota refused it) */
    struct store_app *app;
    struct store_task task; /* as recorded (a copy) */
    int pending;            /* its write, and the checks made once it is queued */
    int rc;                 /* its write's */
};

/* The task's record is written (and the request's checks made): it starts, and the request
 * is answered once its new state is written too. */
static void tasks__recorded(void *ctx, int rc)
{
    struct tasks_create *c = ctx;
    if (rc < 0 && c->rc == 0)
        c->rc = rc;
    if (--c->pending > 0)
        return;
    struct api_core *core = c->core;
    struct store_app *app = c->app;
    struct store_task *t = &c->task;
    if (!c->req) {
        /* answered */
    } else if (c->rc < 0) {
        api_respond_error(c->req, c->rc == -ECANCELED ? SKIFF_E_UNAVAILABLE : SKIFF_E_INTERNAL,
                          "cannot record the task in the store (see skiffd's output)");
    } else {
        struct scheduler_task run = {.app_guid = app->guid,
                                     .droplet_guid = t->droplet_guid,
                                     .task_guid = t->guid,
                                     .name = t->name,
                                     .command = t->command,
                                     .memory_mb = t->memory_mb};
        int started =
            core->cfg.scheduler ? scheduler_task_start(core->cfg.scheduler, &run) : -ENOSYS;
        struct tasks_answer *a = tasks__answer_new(c->req);
        if (started != 0) {
            char err[200];
            snprintf(err, sizeof err, "the task could not start: %s (`skiff logs %s --recent`)",
                     skiff_strerror(started), app->name);
            tasks__set_state(core, t, TASK_FAILED, err, a);
        } else {
            a->running = true;
            tasks__set_state(core, t, TASK_RUNNING, NULL, a);
        }
        logs_appendf(core->cfg.logs, app->guid, "API", LOGS_OUT, "Created task %lld (%s) of app %s",
                     (long long)t->sequence_id, t->name, app->name);
        tasks__answer_end(a);
    }
    tasks__fields_free(t);
    store_app_free(app);
    free(c);
}

/* POST /v1/apps/APP/tasks */
static void tasks__create(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    static const char *const fields[] = {"command", "name", "memory_mb", NULL};
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    struct store_app *app = NULL;
    struct store_task *list = NULL;
    size_t n = 0;
    char err[200], name[SCHEDULER_TASK_NAME_MAX + 1];
    if (!api_json_check_fields(req, body, fields))
        goto done;
    json_t *jcommand = json_object_get(body, "command");
    json_t *jname = json_object_get(body, "name");
    /* a command that is not a string is as good as none */
    if (!api_task_command_check(json_string_value(jcommand), err, sizeof err)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "%s", err);
        goto done;
    }
    if (jname && !json_is_null(jname)) {
        if (!api_task_name_check(json_string_value(jname), err, sizeof err)) {
            api_respond_error(req, SKIFF_E_INVALID_NAME, "%s", err);
            goto done;
        }
        snprintf(name, sizeof name, "%s", json_string_value(jname));
    } else {
        random_hex(name, 4); /* Cloud Foundry's default: a short random name */
    }
    app = api_core__find_app(core, req);
    if (!app)
        goto done;
    int memory = app->memory_mb;
    if (!api_core__int_field(req, body, "memory_mb", 1, 1 << 20, &memory))
        goto done;
    if (!app->droplet_guid) {
        api_respond_error(req, SKIFF_E_NOT_STAGED,
                          "app %s has no droplet to run a task from: `skiff push %s` first",
                          app->name, app->name);
        goto done;
    }
    if (store_task_list(core->cfg.store, app->guid, &list, &n) < 0) {
        api_respond_error(req, SKIFF_E_INTERNAL, "cannot read the app's tasks from the store");
        goto done;
    }
    int active = 0;
    for (size_t i = 0; i < n; i++)
        active += api_task_active(&list[i]);
    if (active >= API_TASKS_RUNNING_MAX) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "app %s runs %d tasks already, the most it may at once: wait for one "
                          "to end or `skiff terminate-task %s ID`",
                          app->name, active, app->name);
        goto done;
    }
    struct store_task t = {.sequence_id = n ? list[n - 1].sequence_id + 1 : 1,
                           .name = name,
                           .command = (char *)json_string_value(jcommand),
                           .state = TASK_PENDING,
                           .exit_status = -1,
                           .memory_mb = memory,
                           .disk_mb = app->disk_mb,
                           .created_at = time_now_ms()};
    t.updated_at = t.created_at;
    uuid_generate_v4(t.guid);
    snprintf(t.app_guid, sizeof t.app_guid, "%s", app->guid);
    snprintf(t.droplet_guid, sizeof t.droplet_guid, "%s", app->droplet_guid);
    /* recorded first, so that the quota counts it as it would run (reads see it queued) */
    struct tasks_create *c = xcalloc(1, sizeof *c);
    c->core = core;
    c->req = req;
    c->app = app;
    app = NULL;
    c->task = t;
    c->task.name = xstrdup(t.name);
    c->task.command = xstrdup(t.command);
    c->task.state = xstrdup(t.state);
    c->pending = 2; /* its write, and the checks below */
    int rc = store_task_put_async(core->cfg.store, &t, tasks__recorded, c);
    if (rc < 0) {
        tasks__recorded(c, rc);
    } else if (c->rc < 0) {
        /* refused during the call (SQLite): answered below */
    } else if (!api_core__quota_admits(core, req, c->app, 0)) {
        c->req = NULL; /* answered: its record goes again */
        tasks__queue(core, &t, false, NULL);
    } else {
        tasks__trim(core, list, n);
    }
    tasks__recorded(c, 0);
done:
    store_task_list_free(list, n);
    store_app_free(app);
    json_decref(body);
}

/* GET /v1/apps/APP/tasks */
static void tasks__list(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    struct store_app *app = api_core__find_app(core, req);
    if (!app)
        return;
    struct store_task *list = NULL;
    size_t n = 0;
    if (store_task_list(core->cfg.store, app->guid, &list, &n) < 0) {
        api_respond_error(req, SKIFF_E_INTERNAL, "cannot read the app's tasks from the store");
        store_app_free(app);
        return;
    }
    struct buf b = {0};
    buf_append(&b, "{\"tasks\":[", 10);
    for (size_t i = 0; i < n; i++) {
        if (i)
            buf_append(&b, ",", 1);
        tasks__write(&b, &list[i]);
    }
    buf_append(&b, "]}", 2);
    api_respond(req, 200, "application/json", b.data, b.len);
    buf_free(&b);
    store_task_list_free(list, n);
    store_app_free(app);
}

/* GET /v1/apps/APP/tasks/ID and POST /v1/apps/APP/tasks/ID/cancel */
static void tasks__one(struct api_request *req, void *ctx, bool cancel)
{
    struct api_core *core = ctx;
    struct store_app *app = api_core__find_app(core, req);
    if (!app)
        return;
    struct store_task *list = NULL;
    size_t n = 0;
    if (store_task_list(core->cfg.store, app->guid, &list, &n) < 0) {
        api_respond_error(req, SKIFF_E_INTERNAL, "cannot read the app's tasks from the store");
        goto done;
    }
    ssize_t i = tasks__find(req, app, list, n);
    if (i < 0)
        goto done;
    struct store_task *t = &list[i];
    if (!cancel) {
        tasks__respond(req, 200, t);
        goto done;
    }
    if (!api_task_active(t)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "task %lld of %s is %s already and cannot be cancelled",
                          (long long)t->sequence_id, app->name, t->state);
        goto done;
    }
    struct tasks_answer *a = tasks__answer_new(req);
    tasks__set_state(core, t, TASK_CANCELING, NULL, a);
    logs_appendf(core->cfg.logs, app->guid, "API", LOGS_OUT, "Cancelling task %lld (%s) of app %s",
                 (long long)t->sequence_id, t->name, app->name);
    /* nothing runs for it (it never started, or its skiffd is gone): it ends here */
    if (!core->cfg.scheduler || scheduler_task_stop(core->cfg.scheduler, t->guid) < 0)
        tasks__set_state(core, t, TASK_FAILED, TASK_REASON_CANCELLED, a);
    tasks__answer_end(a);
done:
    store_task_list_free(list, n);
    store_app_free(app);
}

static void tasks__show(struct api_request *req, void *ctx)
{
    tasks__one(req, ctx, false);
}

static void tasks__cancel(struct api_request *req, void *ctx)
{
    tasks__one(req, ctx, true);
}

int64_t api_core__tasks_memory_mb(const struct store_task *list, size_t n, const char *app_guid)
{
    int64_t mb = 0;
    for (size_t i = 0; i < n; i++)
        if (api_task_active(&list[i]) && !strcmp(list[i].app_guid, app_guid))
            mb += list[i].memory_mb;
    return mb;
}

/* Tasks recorded as running by a skiffd that is gone: the scheduler ends what is left of them
 * (it never adopts a task), so their records end here. */
static void tasks__end_leftovers(struct api_core *core)
{
    struct store_task *list = NULL;
    size_t n = 0;
    if (store_task_list(core->cfg.store, NULL, &list, &n) < 0)
        return;
    for (size_t i = 0; i < n; i++)
        if (api_task_active(&list[i])) {
            tasks__set_state(core, &list[i], TASK_FAILED, TASK_REASON_RESTARTED, NULL);
            log_info("task %s of app %s was running when skiffd stopped: marked FAILED",
                     list[i].name, list[i].app_guid);
        }
    store_task_list_free(list, n);
}

void api_core__tasks_register(struct api_core *core)
{
    tasks__end_leftovers(core);
    /* skiffd frees the scheduler before the core: no task's end comes to a freed core */
    if (core->cfg.scheduler)
        scheduler_set_task_ended(core->cfg.scheduler, tasks__ended, core);
    api_route_add(core->api, "POST", "/v1/apps/*/tasks",
                  API_PERM(AUTH_PERM_SPACE_DEVELOP) | API_SCOPE_APP, tasks__create, core);
    api_route_add(core->api, "GET", "/v1/apps/*/tasks",
                  API_PERM(AUTH_PERM_SPACE_READ) | API_SCOPE_APP, tasks__list, core);
    api_route_add(core->api, "GET", "/v1/apps/*/tasks/*",
                  API_PERM(AUTH_PERM_SPACE_READ) | API_SCOPE_APP, tasks__show, core);
    api_route_add(core->api, "POST", "/v1/apps/*/tasks/*/cancel",
                  API_PERM(AUTH_PERM_SPACE_DEVELOP) | API_SCOPE_APP, tasks__cancel, core);
}
