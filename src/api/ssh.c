/* api/ssh: POST /v1/apps/NAME/ssh, what `skiff ssh` talks to.
 *
 * The request names an instance (?process=web&index=0) and a command (?command=..., none: a
 * login shell; ?tty=1&rows=R&cols=C&term=T for a terminal). Once the instance is found and
 * the command started in its container (instance_exec_new, skiff-init --enter, a process
 * of its own so that skiffd's threads never setns), the connection switches to the frames
 * of common/ssh_frame.h (101, Upgrade: skiff-ssh): the client's STDIN, EOF and RESIZE go to
 * the command, its stdout and stderr come back, then EXIT with its status.
 *
 * Bounded whatever the client does: at most SSH_SESSIONS_MAX sessions in all and
 * SSH_SESSIONS_PER_INSTANCE per instance; at most one partial frame is kept from the client;
 * reading stops on either side while SSH_BUFFER_MAX bytes wait for the other (a client that
 * never reads stalls its own command, nothing else); a malformed frame ends the session.
 * When the client goes away or the session ends otherwise, every process the command started
 * is killed (its cgroup).
 *
 * Whether a session may start at all is Cloud Foundry's rule, decided in ssh__allowed alone:
 * the app allows it (enable-ssh / disable-ssh: PATCH /v1/apps/NAME/features/ssh, a
 * SpaceDeveloper) and so does its space (allow-space-ssh / disallow-space-ssh: PATCH
 * /v1/orgs/ORG/spaces/SPACE/features/ssh, a SpaceManager or the OrgManager); both default to
 * allowed. GET /v1/apps/NAME/ssh_enabled says whether and why not, as CF's does. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "api/core_internal.h"
#include "auth/auth.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/ssh_frame.h"
#include "common/util.h"
#include "executor/executor.h"
#include "scheduler/scheduler.h"
#include "store/store.h"

#define SSH_SESSIONS_MAX 64
#define SSH_SESSIONS_PER_INSTANCE 8
#define SSH_BUFFER_MAX (256u << 10)
#define SSH_TERM_MAX 64

struct ssh_session;

struct api_core_ssh {
    struct ssh_session *sessions;
    unsigned count;
    uint64_t next_id;
    bool orphaned; /* the core is freed: the last session to close frees this */
};

struct ssh_session {
    struct api_core_ssh *owner;
    struct ssh_session *prev, *next;
    char instance_guid[37];
    char app_name[128];
    struct instance_exec *exec;
    uv_process_t proc;
    uv_pipe_t in, out, err, ctl;
    uv_tcp_t sock;
    bool tty;
    int handles;    /* open handles: freed at zero */
    bool sock_open; /* the socket was handed over and is open */
    bool in_open;   /* stdin not yet closed */
    bool exited;    /* the command ended (exit_code) */
    int exit_code;
    int streams_open; /* stdout, stderr still to read to their end */
    bool ending;      /* everything is being closed */
    bool sock_paused; /* reading the client stops while the command's stdin is full */
    bool out_paused;  /* reading the command stops while the client is not taking */
    struct buf rx;    /* a partial frame from the client */
};

struct ssh_write {
    uv_write_t req;
    struct ssh_session *s;
    size_t len;
    char data[];
};

static void ssh__end(struct ssh_session *s, const char *error);
static void ssh__out_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b);
static void ssh__on_out(uv_stream_t *st, ssize_t n, const uv_buf_t *b);
static void ssh__sock_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b);
static void ssh__on_sock(uv_stream_t *st, ssize_t n, const uv_buf_t *b);

/* ---- life ------------------------------------------------------------------------------- */

static void ssh__closed(uv_handle_t *h)
{
    struct ssh_session *s = h->data;
    if (--s->handles > 0)
        return;
    struct api_core_ssh *o = s->owner;
    if (s->prev)
        s->prev->next = s->next;
    else
        o->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    o->count--;
    instance_exec_free(s->exec);
    buf_free(&s->rx);
    free(s);
    if (o->orphaned && o->count == 0)
        free(o);
}

static void ssh__close(struct ssh_session *s, uv_handle_t *h)
{
    (void)s;
    if (!uv_is_closing(h))
        uv_close(h, ssh__closed);
}

static unsigned ssh__count_for(struct api_core_ssh *o, const char *instance_guid)
{
    unsigned n = 0;
    for (struct ssh_session *s = o->sessions; s; s = s->next)
        if (!strcmp(s->instance_guid, instance_guid))
            n++;
    return n;
}

/* ---- towards the client --------------------------------------------------------------- */

static void ssh__sock_written(uv_write_t *w, int status)
{
    struct ssh_write *sw = (struct ssh_write *)w;
    struct ssh_session *s = sw->s;
    free(sw);
    if (status < 0) {
        ssh__end(s, NULL);
        return;
    }
    if (s->out_paused && !s->ending && s->sock.write_queue_size <= SSH_BUFFER_MAX / 2) {
        s->out_paused = false;
        if (!uv_is_closing((uv_handle_t *)&s->out))
            uv_read_start((uv_stream_t *)&s->out, ssh__out_alloc, ssh__on_out);
        if (!uv_is_closing((uv_handle_t *)&s->err))
            uv_read_start((uv_stream_t *)&s->err, ssh__out_alloc, ssh__on_out);
    }
}

static void ssh__send(struct ssh_session *s, const struct buf *frame)
{
    if (!s->sock_open || uv_is_closing((uv_handle_t *)&s->sock))
        return;
    struct ssh_write *sw = xmalloc(sizeof *sw + frame->len);
    sw->s = s;
    sw->len = frame->len;
    memcpy(sw->data, frame->data, frame->len);
    uv_buf_t b = uv_buf_init(sw->data, (unsigned)frame->len);
    if (uv_write(&sw->req, (uv_stream_t *)&s->sock, &b, 1, ssh__sock_written) < 0) {
        free(sw);
        ssh__end(s, NULL);
    }
}

static void ssh__shutdown_done(uv_shutdown_t *sr, int status)
{
    (void)status;
    struct ssh_session *s = sr->data;
    free(sr);
    ssh__close(s, (uv_handle_t *)&s->sock);
}

/* The last frame is out: the client reads it, then the end of the connection. */
static void ssh__finish_sock(struct ssh_session *s)
{
    if (!s->sock_open) {
        ssh__close(s, (uv_handle_t *)&s->sock);
        return;
    }
    if (uv_is_closing((uv_handle_t *)&s->sock))
        return;
    uv_read_stop((uv_stream_t *)&s->sock);
    uv_shutdown_t *sr = xcalloc(1, sizeof *sr);
    sr->data = s;
    if (uv_shutdown(sr, (uv_stream_t *)&s->sock, ssh__shutdown_done) < 0) {
        free(sr);
        ssh__close(s, (uv_handle_t *)&s->sock);
    }
}

/* Ends the session: an ERROR frame when error says why, every process of the command
 * killed, every handle closed. */
static void ssh__end(struct ssh_session *s, const char *error)
{
    if (s->ending)
        return;
    s->ending = true;
    if (error) {
        struct buf f = {0};
        ssh_frame_put(&f, SSH_FRAME_ERROR, error, strlen(error));
        ssh__send(s, &f);
        buf_free(&f);
    }
    if (!s->exited)
        uv_process_kill(&s->proc, SIGKILL);
    /* what it left running ends with its cgroup, now rather than when the last handle goes */
    instance_exec_free(s->exec);
    s->exec = NULL;
    ssh__close(s, (uv_handle_t *)&s->in);
    ssh__close(s, (uv_handle_t *)&s->out);
    ssh__close(s, (uv_handle_t *)&s->err);
    if (s->tty)
        ssh__close(s, (uv_handle_t *)&s->ctl);
    if (s->exited)
        ssh__close(s, (uv_handle_t *)&s->proc);
    if (error)
        ssh__finish_sock(s);
    else
        ssh__close(s, (uv_handle_t *)&s->sock);
}

/* The command ended and its output is all read: EXIT, then the end. */
static void ssh__maybe_done(struct ssh_session *s)
{
    if (s->ending || !s->exited || s->streams_open > 0)
        return;
    struct buf f = {0};
    ssh_frame_put_u32(&f, SSH_FRAME_EXIT, (uint32_t)s->exit_code);
    ssh__send(s, &f);
    buf_free(&f);
    ssh__finish_sock(s);
    s->ending = true;
    instance_exec_free(s->exec);
    s->exec = NULL;
    ssh__close(s, (uv_handle_t *)&s->in);
    ssh__close(s, (uv_handle_t *)&s->out);
    ssh__close(s, (uv_handle_t *)&s->err);
    if (s->tty)
        ssh__close(s, (uv_handle_t *)&s->ctl);
    ssh__close(s, (uv_handle_t *)&s->proc);
}

/* ---- from the command ------------------------------------------------------------------ */

static void ssh__out_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    (void)suggested;
    b->base = xmalloc(SSH_FRAME_MAX);
    b->len = SSH_FRAME_MAX;
}

static void ssh__on_out(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    struct ssh_session *s = st->data;
    if (n > 0 && !s->ending) {
        struct buf f = {0};
        ssh_frame_put(&f, st == (uv_stream_t *)&s->err ? SSH_FRAME_STDERR : SSH_FRAME_STDOUT,
                      b->base, (size_t)n);
        ssh__send(s, &f);
        buf_free(&f);
        if (s->sock_open && s->sock.write_queue_size > SSH_BUFFER_MAX && !s->out_paused) {
            s->out_paused = true;
            uv_read_stop((uv_stream_t *)&s->out);
            uv_read_stop((uv_stream_t *)&s->err);
        }
    }
    free(b->base);
    if (n < 0) {
        uv_read_stop(st);
        s->streams_open--;
        ssh__maybe_done(s);
    }
}

static void ssh__on_exit(uv_process_t *p, int64_t exit_status, int term_signal)
{
    struct ssh_session *s = p->data;
    s->exited = true;
    s->exit_code = term_signal ? 128 + term_signal : (int)exit_status;
    if (s->ending) {
        ssh__close(s, (uv_handle_t *)&s->proc);
        return;
    }
    /* what it left behind holds its output open: it goes with it, as with a login's end */
    instance_exec_free(s->exec);
    s->exec = NULL;
    ssh__maybe_done(s);
}

/* ---- from the client ------------------------------------------------------------------- */

static void ssh__in_written(uv_write_t *w, int status)
{
    struct ssh_write *sw = (struct ssh_write *)w;
    struct ssh_session *s = sw->s;
    free(sw);
    (void)status; /* a command that closed its stdin just does not get the rest */
    if (s->sock_paused && !s->ending && s->in.write_queue_size <= SSH_BUFFER_MAX / 2) {
        s->sock_paused = false;
        uv_read_start((uv_stream_t *)&s->sock, ssh__sock_alloc, ssh__on_sock);
    }
}

static void ssh__write_pipe(struct ssh_session *s, uv_pipe_t *pipe, const void *data, size_t len)
{
    struct ssh_write *sw = xmalloc(sizeof *sw + len);
    sw->s = s;
    sw->len = len;
    memcpy(sw->data, data, len);
    uv_buf_t b = uv_buf_init(sw->data, (unsigned)len);
    if (uv_write(&sw->req, (uv_stream_t *)pipe, &b, 1, ssh__in_written) < 0)
        free(sw);
}

static void ssh__in_shut(uv_shutdown_t *sr, int status)
{
    (void)status;
    struct ssh_session *s = sr->data;
    free(sr);
    ssh__close(s, (uv_handle_t *)&s->in);
}

/* One frame from the client; false after ending the session for a bad one. */
static bool ssh__frame(struct ssh_session *s, const struct ssh_frame *f)
{
    switch (f->type) {
    case SSH_FRAME_STDIN:
        if (s->in_open && f->len)
            ssh__write_pipe(s, &s->in, f->data, f->len);
        if (s->in_open && s->in.write_queue_size > SSH_BUFFER_MAX && !s->sock_paused) {
            s->sock_paused = true;
            uv_read_stop((uv_stream_t *)&s->sock);
        }
        return true;
    case SSH_FRAME_EOF:
        if (s->in_open) {
            s->in_open = false;
            uv_shutdown_t *sr = xcalloc(1, sizeof *sr);
            sr->data = s;
            if (uv_shutdown(sr, (uv_stream_t *)&s->in, ssh__in_shut) < 0) {
                free(sr);
                ssh__close(s, (uv_handle_t *)&s->in);
            }
        }
        return true;
    case SSH_FRAME_RESIZE:
        if (s->tty && !uv_is_closing((uv_handle_t *)&s->ctl))
            ssh__write_pipe(s, &s->ctl, f->data, 4);
        return true;
    default:
        ssh__end(s, "protocol error: a client sends only STDIN, EOF and RESIZE frames");
        return false;
    }
}

static void ssh__feed(struct ssh_session *s, const char *data, size_t len)
{
    buf_append(&s->rx, data, len);
    size_t pos = 0;
    while (!s->ending) {
        struct ssh_frame f;
        ssize_t n = ssh_frame_parse(s->rx.data + pos, s->rx.len - pos, &f);
        if (n < 0) {
            ssh__end(s, "protocol error: a malformed frame (see docs/api.md, skiff ssh)");
            return;
        }
        if (n == 0)
            break;
        if (!ssh__frame(s, &f))
            return;
        pos += (size_t)n;
    }
    buf_consume(&s->rx, pos); /* at most one partial frame stays */
}

static void ssh__sock_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    (void)suggested;
    static char space[SSH_FRAME_MAX];
    *b = uv_buf_init(space, sizeof space);
}

static void ssh__on_sock(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    struct ssh_session *s = st->data;
    if (n < 0) {
        /* the client is gone (or closed its side): so is everything it started */
        s->sock_open = false;
        ssh__end(s, NULL);
        return;
    }
    if (n > 0)
        ssh__feed(s, b->base, (size_t)n);
}

/* The API handed the connection over (or the client left first: fd -1). */
static void ssh__taken(void *ctx, int fd, const char *early, size_t len)
{
    struct ssh_session *s = ctx;
    if (fd >= 0 && uv_tcp_open(&s->sock, fd) == 0) {
        s->sock_open = true;
        uv_read_start((uv_stream_t *)&s->sock, ssh__sock_alloc, ssh__on_sock);
        uv_read_start((uv_stream_t *)&s->out, ssh__out_alloc, ssh__on_out);
        uv_read_start((uv_stream_t *)&s->err, ssh__out_alloc, ssh__on_out);
        if (len)
            ssh__feed(s, early, len);
        return;
    }
    if (fd >= 0)
        close(fd);
    ssh__end(s, NULL);
}

/* ---- the endpoint ------------------------------------------------------------------------ */

static bool ssh__header_has(const char *value, const char *token)
{
    if (!value)
        return false;
    size_t n = strlen(token);
    for (const char *p = value; (p = strcasestr(p, token)); p += n)
        if ((p == value || p[-1] == ' ' || p[-1] == ',') &&
            (p[n] == '\0' || p[n] == ',' || p[n] == ' '))
            return true;
    return false;
}

/* A whole number in [min, max] from the query, def when absent; -1 after answering 400. */
static long ssh__query_int(struct api_request *req, const char *name, long def, long min, long max)
{
    const char *v = api_request_query(req, name);
    if (!v)
        return def;
    char *end;
    long n = strtol(v, &end, 10);
    if (!*v || *end || n < min || n > max) {
        api_respond_error(req, SKIFF_E_BAD_VALUE, "%s must be a whole number from %ld to %ld", name,
                          min, max);
        return -1;
    }
    return n;
}

static bool ssh__term_ok(const char *t)
{
    size_t n = strlen(t);
    if (n == 0 || n > SSH_TERM_MAX)
        return false;
    for (const char *p = t; *p; p++)
        if (!(('a' <= *p && *p <= 'z') || ('A' <= *p && *p <= 'Z') || ('0' <= *p && *p <= '9') ||
              strchr("._+-", *p)))
            return false;
    return true;
}

/* The instance at process/index, answering why not when there is none running. */
static bool ssh__instance(struct api_core *core, struct api_request *req,
                          const struct store_app *app, const char *process, long index,
                          char guid[37])
{
    int total = scheduler_app_instances(core->cfg.scheduler, app->guid, NULL, 0);
    size_t cap = total > 0 ? (size_t)total : 0;
    struct scheduler_instance_info *info = xcalloc(cap ? cap : 1, sizeof *info);
    int n = scheduler_app_instances(core->cfg.scheduler, app->guid, info, cap);
    int of_process = 0;
    const struct scheduler_instance_info *found = NULL;
    for (int i = 0; i < n && (size_t)i < cap; i++) {
        if (strcmp(info[i].process_type, process) || !strcmp(info[i].state, "STOPPING"))
            continue;
        of_process++;
        if (info[i].index == index)
            found = &info[i];
    }
    bool ok = false;
    if (!of_process)
        api_respond_error(req, SKIFF_E_NO_INSTANCE,
                          "app %s has no instances of process %s: see its processes with "
                          "`skiff app %s`",
                          app->name, process, app->name);
    else if (!found)
        api_respond_error(req, SKIFF_E_NO_INSTANCE,
                          "app %s has %d instance%s of process %s: index %ld is not one of 0..%d",
                          app->name, of_process, of_process == 1 ? "" : "s", process, index,
                          of_process - 1);
    else if (!found->guid[0] ||
             (strcmp(found->state, "RUNNING") && strcmp(found->state, "STARTING")))
        api_respond_error(req, SKIFF_E_NO_INSTANCE,
                          "instance %ld of app %s (%s) is %s, not running: see `skiff app %s`",
                          index, app->name, process, found->state[0] ? found->state : "DOWN",
                          app->name);
    else {
        snprintf(guid, 37, "%s", found->guid);
        ok = true;
    }
    free(info);
    return ok;
}

/* The one answer to "may a session enter this app's instances?": the app has ssh enabled and
 * its space allows it. When not, reason says which and how to change it. */
static bool ssh__allowed(struct api_core *core, const struct store_app *app, char *reason,
                         size_t size)
{
    const struct auth_space *space =
        core->cfg.auth ? auth_space_get(core->cfg.auth, app->space_guid) : NULL;
    if (space && space->ssh_disallowed) {
        snprintf(reason, size,
                 "ssh is not allowed in space %s (app %s): a SpaceManager allows it with "
                 "`skiff allow-space-ssh %s`",
                 space->name, app->name, space->name);
        return false;
    }
    if (app->ssh_disabled) {
        snprintf(reason, size,
                 "ssh is disabled for app %s: a SpaceDeveloper enables it with `skiff "
                 "enable-ssh %s`",
                 app->name, app->name);
        return false;
    }
    reason[0] = 0;
    return true;
}

/* GET /v1/apps/NAME/ssh_enabled: {"enabled", "reason"} (Cloud Foundry's ssh_enabled). */
static void ssh__enabled_get(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    struct store_app *app = api_core__find_app(core, req);
    if (!app)
        return;
    char reason[512];
    bool ok = ssh__allowed(core, app, reason, sizeof reason);
    api_respond_json(req, 200,
                     json_pack("{s:b, s:s, s:b}", "enabled", ok, "reason", reason, "app_enabled",
                               !app->ssh_disabled));
    store_app_free(app);
}

/* Cloud Foundry's features/NAME: ssh is the one there is here (so the audit record of a change
 * is audit.app.features / audit.space.features, apart from a session's audit.app.ssh). False
 * after answering 404 for another name. */
static bool ssh__feature_named(struct api_request *req, unsigned param)
{
    const char *name = api_request_param(req, param);
    if (name && !strcmp(name, "ssh"))
        return true;
    api_respond_error(req, SKIFF_E_NOT_FOUND, "no feature named %s: ssh is the one there is",
                      name ? name : "");
    return false;
}

/* {"enabled": true|false}, the body of both features/ssh PATCHes; -1 when it answered why not. */
static int ssh__enabled_body(struct api_request *req)
{
    json_t *body = api_request_json_object(req);
    if (!body)
        return -1;
    static const char *const fields[] = {"enabled", NULL};
    int enabled = -1;
    if (!api_json_check_fields(req, body, fields))
        goto out;
    json_t *v = json_object_get(body, "enabled");
    if (!json_is_boolean(v)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "enabled must be true or false");
        goto out;
    }
    enabled = json_is_true(v);
out:
    json_decref(body);
    return enabled;
}

static void ssh__app_feature_stored(struct api_core *core, struct api_request *req,
                                    struct store_app *app, void *ctx)
{
    (void)core, (void)ctx;
    if (req)
        api_respond_json(req, 200,
                         json_pack("{s:s, s:b}", "name", "ssh", "enabled", !app->ssh_disabled));
}

/* PATCH /v1/apps/NAME/features/ssh {"enabled": B}: enable-ssh / disable-ssh. Sessions already
 * open stay open, as in Cloud Foundry; new ones are refused. */
static void ssh__app_feature_patch(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    if (!ssh__feature_named(req, 1))
        return;
    struct store_app *app = api_core__find_app(core, req);
    if (!app)
        return;
    int enabled = ssh__enabled_body(req);
    if (enabled < 0)
        goto out;
    app->ssh_disabled = !enabled;
    api_core__app_store_then(core, req, app, false, "cannot store the app's ssh setting",
                             ssh__app_feature_stored, NULL);
    return;
out:
    store_app_free(app);
}

static void ssh__space_feature_respond(struct api_request *req, const struct auth_space *space)
{
    api_respond_json(req, 200,
                     json_pack("{s:s, s:s, s:b}", "name", "ssh", "space", space->name, "enabled",
                               !space->ssh_disallowed));
}

/* GET /v1/orgs/ORG/spaces/SPACE/features/ssh: space-ssh-allowed. */
static void ssh__space_feature_get(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    if (!ssh__feature_named(req, 2))
        return;
    const struct auth_space *space =
        core->cfg.auth ? auth_space_get(core->cfg.auth, api_request_space(req)) : NULL;
    if (!space) {
        api_respond_error(req, SKIFF_E_NOT_FOUND, "no such space");
        return;
    }
    ssh__space_feature_respond(req, space);
}

/* PATCH /v1/orgs/ORG/spaces/SPACE/features/ssh {"enabled": B}: allow-space-ssh /
 * disallow-space-ssh. */
static void ssh__space_feature_patch(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    if (!ssh__feature_named(req, 2))
        return;
    int enabled = ssh__enabled_body(req);
    if (enabled < 0)
        return;
    int rc = core->cfg.auth
                 ? auth_space_set_ssh_allowed(core->cfg.auth, api_request_space(req), enabled)
                 : -ENOENT;
    if (rc == -ENOENT)
        api_respond_error(req, rc, "no such space");
    else if (rc < 0)
        api_respond_error(req, rc, "cannot store the space's ssh setting: %s", skiff_strerror(rc));
    else
        ssh__space_feature_respond(req, auth_space_get(core->cfg.auth, api_request_space(req)));
}

static void ssh__handle(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    struct api_core_ssh *o = core->ssh;
    struct store_app *app = api_core__find_app(core, req);
    if (!app)
        return;
    const char *upgrade = api_request_header(req, "upgrade");
    const char *process = api_request_query(req, "process");
    const char *command = api_request_query(req, "command");
    const char *term = api_request_query(req, "term");
    const char *tty_text = api_request_query(req, "tty");
    bool tty = tty_text && strcmp(tty_text, "0") && strcmp(tty_text, "false");
    long index = 0, rows = 0, cols = 0;
    char guid[37];
    struct instance *inst = NULL;
    struct ssh_session *s = NULL;
    if (!ssh__header_has(upgrade, SSH_PROTOCOL) ||
        !ssh__header_has(api_request_header(req, "connection"), "upgrade")) {
        api_respond_error(req, SKIFF_E_BAD_REQUEST,
                          "this endpoint switches to the %s protocol (Connection: Upgrade, "
                          "Upgrade: %s): use `skiff ssh %s`",
                          SSH_PROTOCOL, SSH_PROTOCOL, app->name);
        goto out;
    }
    char reason[512];
    if (!ssh__allowed(core, app, reason, sizeof reason)) {
        api_respond_error(req, SKIFF_E_SSH_DISABLED, "%s", reason);
        goto out;
    }
    if (!process)
        process = "web";
    if ((index = ssh__query_int(req, "index", 0, 0, 9999)) < 0 ||
        (rows = ssh__query_int(req, "rows", 24, 1, 0xffff)) < 0 ||
        (cols = ssh__query_int(req, "cols", 80, 1, 0xffff)) < 0)
        goto out;
    if (term && !ssh__term_ok(term)) {
        api_respond_error(req, SKIFF_E_BAD_VALUE,
                          "term must be a terminal type such as xterm-256color (letters, digits, "
                          ". _ + -, at most %d)",
                          SSH_TERM_MAX);
        goto out;
    }
    if (command && !*command) {
        api_respond_error(req, SKIFF_E_BAD_VALUE,
                          "command is empty: give one, or leave it out for a shell");
        goto out;
    }
    if (!core->cfg.scheduler) {
        api_respond_error(req, SKIFF_E_UNAVAILABLE, "this skiffd runs no instances");
        goto out;
    }
    if (strcmp(app->state, "STARTED")) {
        api_respond_error(req, SKIFF_E_APP_STOPPED,
                          "app %s is stopped: start it with `skiff "
                          "start %s`, then ssh into it",
                          app->name, app->name);
        goto out;
    }
    if (!ssh__instance(core, req, app, process, index, guid))
        goto out;
    inst = executor_find(scheduler_executor(core->cfg.scheduler), guid);
    if (!inst) {
        api_respond_error(req, SKIFF_E_NO_INSTANCE, "instance %ld of app %s is not running", index,
                          app->name);
        goto out;
    }
    if (o->count >= SSH_SESSIONS_MAX || ssh__count_for(o, guid) >= SSH_SESSIONS_PER_INSTANCE) {
        api_respond_error(req, SKIFF_E_BUSY,
                          "too many ssh sessions are open (at most %d to one instance, %d in "
                          "all): close one and try again",
                          SSH_SESSIONS_PER_INSTANCE, SSH_SESSIONS_MAX);
        goto out;
    }
    s = xcalloc(1, sizeof *s);
    s->owner = o;
    s->tty = tty;
    s->in_open = true;
    s->streams_open = 2;
    snprintf(s->instance_guid, sizeof s->instance_guid, "%s", guid);
    snprintf(s->app_name, sizeof s->app_name, "%s", app->name);
    char id[32];
    snprintf(id, sizeof id, "%llu", (unsigned long long)++o->next_id);
    struct instance_exec_spec spec = {.id = id,
                                      .command = command,
                                      .tty = tty,
                                      .rows = (unsigned)rows,
                                      .cols = (unsigned)cols,
                                      .term = term};
    int rc = instance_exec_new(inst, &spec, &s->exec);
    if (rc < 0) {
        free(s);
        if (rc == -ENOTSUP)
            api_respond_error(req, rc,
                              "ssh needs instances in containers: this skiffd runs them as "
                              "host processes");
        else if (rc == -ESRCH)
            api_respond_error(req, rc, "instance %ld of app %s is stopping", index, app->name);
        else
            api_respond_error(req, rc, "cannot prepare the session: %s", skiff_strerror(rc));
        goto out;
    }
    uv_loop_t *loop = api_loop(core->api);
    uv_pipe_init(loop, &s->in, 0);
    uv_pipe_init(loop, &s->out, 0);
    uv_pipe_init(loop, &s->err, 0);
    uv_pipe_init(loop, &s->ctl, 0);
    uv_tcp_init(loop, &s->sock);
    s->in.data = s->out.data = s->err.data = s->ctl.data = s->sock.data = s->proc.data = s;
    s->handles = 6;
    uv_stdio_container_t stdio[4] = {
        {.flags = UV_CREATE_PIPE | UV_READABLE_PIPE, .data.stream = (uv_stream_t *)&s->in},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&s->out},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&s->err},
        {.flags = UV_CREATE_PIPE | UV_READABLE_PIPE, .data.stream = (uv_stream_t *)&s->ctl}};
    char *const *argv = instance_exec_argv(s->exec);
    uv_process_options_t opts = {.file = argv[0],
                                 .args = (char **)argv,
                                 .env = (char **)instance_exec_env(s->exec),
                                 .exit_cb = ssh__on_exit,
                                 .stdio = stdio,
                                 .stdio_count = tty ? 4 : 3};
    s->next = o->sessions;
    if (o->sessions)
        o->sessions->prev = s;
    o->sessions = s;
    o->count++;
    rc = uv_spawn(loop, &s->proc, &opts);
    if (rc < 0) {
        api_respond_error(req, rc, "cannot start skiff-init: %s", skiff_strerror(rc));
        s->exited = true; /* nothing to kill, nothing to wait for */
        s->ending = true;
        instance_exec_free(s->exec);
        s->exec = NULL;
        uv_close((uv_handle_t *)&s->proc, ssh__closed);
        uv_close((uv_handle_t *)&s->in, ssh__closed);
        uv_close((uv_handle_t *)&s->out, ssh__closed);
        uv_close((uv_handle_t *)&s->err, ssh__closed);
        uv_close((uv_handle_t *)&s->ctl, ssh__closed);
        uv_close((uv_handle_t *)&s->sock, ssh__closed);
        goto out;
    }
    if (!tty) {
        uv_close((uv_handle_t *)&s->ctl, ssh__closed);
    }
    log_info("ssh into instance %ld of %s (%s) from %s", index, app->name, process,
             api_request_peer(req));
    api_upgrade(req, SSH_PROTOCOL, ssh__taken, s);
out:
    store_app_free(app);
}

void api_core__ssh_register(struct api_core *core)
{
    core->ssh = xcalloc(1, sizeof *core->ssh);
    api_route_add(core->api, "POST", "/v1/apps/*/ssh",
                  API_PERM(AUTH_PERM_SPACE_DEVELOP) | API_SCOPE_APP, ssh__handle, core);
    api_route_add(core->api, "GET", "/v1/apps/*/ssh_enabled",
                  API_PERM(AUTH_PERM_SPACE_READ) | API_SCOPE_APP, ssh__enabled_get, core);
    api_route_add(core->api, "PATCH", "/v1/apps/*/features/*",
                  API_PERM(AUTH_PERM_SPACE_DEVELOP) | API_SCOPE_APP | API_SMALL_BODY,
                  ssh__app_feature_patch, core);
    api_route_add(core->api, "GET", "/v1/orgs/*/spaces/*/features/*",
                  API_PERM(AUTH_PERM_SPACE_READ) | API_SCOPE_ORG_SPACE, ssh__space_feature_get,
                  core);
    api_route_add(core->api, "PATCH", "/v1/orgs/*/spaces/*/features/*",
                  API_PERM(AUTH_PERM_SPACE_MANAGE) | API_SCOPE_ORG_SPACE | API_SMALL_BODY,
                  ssh__space_feature_patch, core);
}

void api_core__ssh_end_all(struct api_core *core)
{
    if (!core->ssh)
        return;
    for (struct ssh_session *s = core->ssh->sessions; s; s = s->next)
        ssh__end(s, "skiffd is shutting down");
}

void api_core__ssh_free(struct api_core *core)
{
    struct api_core_ssh *o = core->ssh;
    core->ssh = NULL;
    if (!o)
        return;
    if (o->count == 0)
        free(o);
    else
        o->orphaned = true;
}
