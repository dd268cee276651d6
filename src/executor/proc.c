/* proc: see proc.h. */
#include "executor/proc.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"

struct proc__stream {
    uv_pipe_t pipe;
    struct proc *owner;
    int number; /* 1 or 2 */
    bool open;  /* still reading */
    size_t len;
    char line[PROC_LINE_MAX + 1];
};

struct proc {
    uv_process_t process;
    uv_timer_t linger;
    struct proc__stream out[2];
    proc_line_cb on_line;
    proc_exit_cb on_exit;
    void *ctx;
    int pid;
    int handles; /* open uv handles; freed at zero */
    bool exited, closing, reported;
    int exit_status, term_signal;
};

static void proc__handle_closed(uv_handle_t *h)
{
    struct proc *p = h->data;
    if (--p->handles == 0)
        free(p);
}

static void proc__close_handle(struct proc *p, uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, proc__handle_closed);
    (void)p;
}

static void proc__emit(struct proc__stream *s, const char *data, size_t len)
{
    struct proc *p = s->owner;
    if (p->closing || !p->on_line)
        return;
    char *line = (char *)data;
    line[len] = '\0';
    if (len > 0 && line[len - 1] == '\r')
        line[--len] = '\0';
    p->on_line(p->ctx, s->number, line, len);
}

static void proc__maybe_report(struct proc *p)
{
    if (p->reported || !p->exited || p->out[0].open || p->out[1].open)
        return;
    p->reported = true;
    uv_timer_stop(&p->linger);
    if (!p->closing && p->on_exit)
        p->on_exit(p->ctx, p->exit_status, p->term_signal);
}

static void proc__stream_end(struct proc__stream *s)
{
    if (!s->open)
        return;
    s->open = false;
    if (s->len > 0) {
        size_t n = s->len;
        s->len = 0;
        proc__emit(s, s->line, n);
    }
    uv_read_stop((uv_stream_t *)&s->pipe);
    proc__close_handle(s->owner, (uv_handle_t *)&s->pipe);
}

static void proc__alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct proc__stream *s = (struct proc__stream *)h; /* the pipe is its first member */
    (void)suggested;
    /* Read straight into the line buffer: a line never needs more than it holds. */
    buf->base = s->line + s->len;
    buf->len = PROC_LINE_MAX - s->len;
}

static void proc__read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct proc__stream *s = (struct proc__stream *)stream;
    struct proc *p = s->owner;
    if (nread < 0) {
        proc__stream_end(s);
        proc__maybe_report(p);
        return;
    }
    (void)buf;
    s->len += (size_t)nread;
    size_t start = 0;
    for (size_t i = 0; i < s->len; i++) {
        if (s->line[i] == '\n') {
            proc__emit(s, s->line + start, i - start);
            start = i + 1;
        }
    }
    if (start == 0 && s->len == PROC_LINE_MAX) { /* a line too long: deliver a piece */
        proc__emit(s, s->line, s->len);
        start = s->len;
    }
    /* proc__emit wrote NULs over the newlines; move the unfinished rest to the front */
    memmove(s->line, s->line + start, s->len - start);
    s->len -= start;
}

static void proc__linger_expired(uv_timer_t *t)
{
    struct proc *p = t->data;
    proc__stream_end(&p->out[0]);
    proc__stream_end(&p->out[1]);
    proc__maybe_report(p);
}

static void proc__exited(uv_process_t *process, int64_t exit_status, int term_signal)
{
    struct proc *p = process->data;
    p->exited = true;
    p->exit_status = term_signal ? -1 : (int)exit_status;
    p->term_signal = term_signal;
    /* what the child left behind in its group goes with it */
    kill(-p->pid, SIGKILL);
    proc__close_handle(p, (uv_handle_t *)&p->process);
    if (p->closing)
        return;
    uv_timer_start(&p->linger, proc__linger_expired, PROC_LINGER_MS, 0);
    proc__maybe_report(p);
}

int proc_spawn(uv_loop_t *loop, const struct proc_options *opt, struct proc **out)
{
    struct proc *p = xcalloc(1, sizeof(*p));
    p->on_line = opt->on_line;
    p->on_exit = opt->on_exit;
    p->ctx = opt->ctx;

    /* Real pipes rather than libuv's socketpairs: programs such as nginx open /dev/stdout,
     * which works on a pipe and fails on a socket. */
    uv_stdio_container_t stdio[3];
    uv_file fds[2][2] = {{-1, -1}, {-1, -1}};
    stdio[0].flags = UV_IGNORE;
    for (int i = 0; i < 2; i++) {
        struct proc__stream *s = &p->out[i];
        uv_pipe_init(loop, &s->pipe, 0);
        s->pipe.data = p;
        s->owner = p;
        s->number = i + 1;
        p->handles++;
        int prc = uv_pipe(fds[i], UV_NONBLOCK_PIPE, 0);
        if (prc < 0) {
            for (int j = 0; j < i; j++) {
                close(fds[j][0]);
                close(fds[j][1]);
            }
            p->closing = true;
            proc__close_handle(p, (uv_handle_t *)&p->out[0].pipe);
            if (i == 1)
                proc__close_handle(p, (uv_handle_t *)&p->out[1].pipe);
            return prc;
        }
        stdio[i + 1].flags = UV_INHERIT_FD;
        stdio[i + 1].data.fd = fds[i][1];
    }
    uv_timer_init(loop, &p->linger);
    p->linger.data = p;
    p->handles++;

    uv_process_options_t po = {0};
    po.file = opt->argv[0];
    po.args = (char **)opt->argv;
    po.env = (char **)opt->env;
    po.cwd = opt->cwd;
    po.exit_cb = proc__exited;
    po.flags = UV_PROCESS_DETACHED; /* setsid: a group of its own to signal */
    po.stdio_count = 3;
    po.stdio = stdio;
    p->process.data = p;
    int rc = uv_spawn(loop, &p->process, &po);
    for (int i = 0; i < 2; i++) {
        close(fds[i][1]); /* the child has its copy */
        if (rc < 0)
            close(fds[i][0]);
        else
            uv_pipe_open(&p->out[i].pipe, fds[i][0]);
    }
    if (rc < 0) {
        /* libuv leaves a failed process handle to be closed too */
        p->handles++;
        p->closing = true;
        proc__close_handle(p, (uv_handle_t *)&p->process);
        proc__close_handle(p, (uv_handle_t *)&p->out[0].pipe);
        proc__close_handle(p, (uv_handle_t *)&p->out[1].pipe);
        proc__close_handle(p, (uv_handle_t *)&p->linger);
        return rc;
    }
    p->handles++;
    p->pid = p->process.pid;
    for (int i = 0; i < 2; i++) {
        p->out[i].open = true;
        uv_read_start((uv_stream_t *)&p->out[i].pipe, proc__alloc, proc__read);
    }
    *out = p;
    return 0;
}

int proc_pid(const struct proc *p)
{
    return p->pid;
}

void proc_signal_group(struct proc *p, int sig)
{
    if (!p->exited)
        kill(-p->pid, sig);
}

void proc_close(struct proc *p)
{
    if (p->closing)
        return;
    p->closing = true;
    if (!p->exited)
        kill(-p->pid, SIGKILL); /* the process handle closes when the exit is reaped */
    proc__stream_end(&p->out[0]);
    proc__stream_end(&p->out[1]);
    proc__close_handle(p, (uv_handle_t *)&p->linger);
}

char *proc_exec_form(const char *cmd)
{
    /* words that exec cannot take: compound commands and builtins with no program behind */
    static const char *const keep[] = {
        "if",     "while",    "until",   "for",    "case",    "{",        "!",    "function",
        "exec",   ".",        ":",       "break",  "cd",      "continue", "eval", "exit",
        "export", "readonly", "return",  "set",    "shift",   "times",    "trap", "unset",
        "ulimit", "umask",    "wait",    "alias",  "unalias", "local",    "read", "getopts",
        "hash",   "type",     "command", "source", "jobs",    "fg",       "bg"};
    if (strpbrk(cmd, ";&|\n()`"))
        return xstrdup(cmd);
    const char *p = cmd;
    while (*p == ' ' || *p == '\t')
        p++;
    size_t n = strcspn(p, " \t");
    if (n == 0)
        return xstrdup(cmd);
    /* NAME=value before the program: the assignment must stay in front of exec's word */
    const char *eq = memchr(p, '=', n);
    if (eq && eq > p && !memchr(p, '/', (size_t)(eq - p)) && !memchr(p, '\'', n) &&
        !memchr(p, '"', n))
        return xstrdup(cmd);
    for (size_t i = 0; i < ARRAY_SIZE(keep); i++)
        if (strlen(keep[i]) == n && strncmp(p, keep[i], n) == 0)
            return xstrdup(cmd);
    return xasprintf("exec %s", p);
}

/* ---- pid files ------------------------------------------------------------------------- */

/* The start time of a process, 0 when there is no such process. */
static unsigned long long proc__start_time(int pid)
{
    char path[64], *text = NULL;
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    if (file_read(path, &text, NULL) != 0)
        return 0;
    unsigned long long start = 0;
    const char *p = strrchr(text, ')');
    /* after the name: state is field 3, starttime field 22 */
    if (!p || sscanf(p + 2,
                     "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d "
                     "%*d %*d %*d %llu",
                     &start) != 1)
        start = 0;
    free(text);
    return start;
}

int proc_pid_file_write(const char *path, int pid)
{
    char text[64];
    int n = snprintf(text, sizeof text, "%d %llu\n", pid, proc__start_time(pid));
    return file_replace(path, text, (size_t)n, 0644);
}

int proc_pid_file_read(const char *path)
{
    char *text = NULL;
    int pid = 0;
    unsigned long long start = 0;
    if (file_read(path, &text, NULL) != 0)
        return 0;
    if (sscanf(text, "%d %llu", &pid, &start) != 2 || pid <= 1 || !start ||
        proc__start_time(pid) != start)
        pid = 0;
    free(text);
    return pid;
}
