/* skiff-shim: keeps one instance's output and exit status while skiffd comes and goes.
 * See shim.h for the protocol. */
#include <errno.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "common/err.h"
#include "common/log.h"
#include "common/buf.h"
#include "common/util.h"
#include "executor/proc.h"
#include "shim/shim.h"

struct shim_line {
    int stream;
    size_t len;
    char *text;
};

struct shim_client {
    uv_pipe_t pipe;
    struct buf in; /* commands from skiffd, up to a line */
};

#define SHIM_COMMAND_MAX 128 /* longer than any command skiffd sends */

struct shim {
    uv_loop_t *loop;
    uv_pipe_t server;
    uv_timer_t grace;
    uv_signal_t sigterm, sigint;
    struct proc *proc;
    int pid;
    char *pid_file;
    bool exited, done;
    bool release; /* A came before the exit: finish once the instance has exited */
    int exit_status, term_signal;
    struct shim_client *client;
    /* output kept while nobody listens: a ring of at most SHIM_KEEP_LINES */
    struct shim_line ring[SHIM_KEEP_LINES];
    size_t ring_start, ring_count, ring_bytes;
    unsigned long dropped;
};

static void shim_client_free(uv_handle_t *h)
{
    struct shim_client *c = h->data;
    buf_free(&c->in);
    free(c);
}

static void shim_client_close(struct shim *sh)
{
    if (!sh->client)
        return;
    uv_close((uv_handle_t *)&sh->client->pipe, shim_client_free);
    sh->client = NULL;
}

struct shim_write {
    uv_write_t req;
    char *data;
};

static void shim_written(uv_write_t *w, int status)
{
    (void)status; /* a client that went away is noticed by its read */
    struct shim_write *sw = (struct shim_write *)w;
    free(sw->data);
    free(sw);
}

/* Sends data (taken over) to the client; false when it cannot take more. */
static bool shim_send(struct shim *sh, char *data, size_t len)
{
    if (!sh->client || sh->client->pipe.write_queue_size > SHIM_QUEUE_BYTES) {
        free(data);
        return false;
    }
    struct shim_write *sw = xcalloc(1, sizeof *sw);
    sw->data = data;
    uv_buf_t b = uv_buf_init(data, (unsigned)len);
    if (uv_write(&sw->req, (uv_stream_t *)&sh->client->pipe, &b, 1, shim_written) < 0) {
        free(data);
        free(sw);
        return false;
    }
    return true;
}

static void shim_sendf(struct shim *sh, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void shim_sendf(struct shim *sh, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *text = NULL;
    int n = vasprintf(&text, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    shim_send(sh, text, (size_t)n);
}

static void shim_ring_drop_oldest(struct shim *sh)
{
    struct shim_line *l = &sh->ring[sh->ring_start];
    sh->ring_bytes -= l->len;
    free(l->text);
    l->text = NULL;
    sh->ring_start = (sh->ring_start + 1) % SHIM_KEEP_LINES;
    sh->ring_count--;
    sh->dropped++;
}

static void shim_keep(struct shim *sh, int stream, const char *line, size_t len)
{
    while (sh->ring_count > 0 &&
           (sh->ring_count == SHIM_KEEP_LINES || sh->ring_bytes + len > SHIM_KEEP_BYTES))
        shim_ring_drop_oldest(sh);
    struct shim_line *l = &sh->ring[(sh->ring_start + sh->ring_count) % SHIM_KEEP_LINES];
    l->stream = stream;
    l->len = len;
    l->text = xstrndup(line, len);
    sh->ring_count++;
    sh->ring_bytes += len;
}

static void shim_send_line(struct shim *sh, int stream, const char *line, size_t len)
{
    char *msg = xmalloc(len + 8);
    int head = snprintf(msg, 8, "O %d ", stream);
    memcpy(msg + head, line, len);
    msg[head + (int)len] = '\n';
    if (!shim_send(sh, msg, (size_t)head + len + 1))
        sh->dropped++;
}

static void shim_on_line(void *ctx, int stream, const char *line, size_t len)
{
    struct shim *sh = ctx;
    if (sh->client)
        shim_send_line(sh, stream, line, len);
    else
        shim_keep(sh, stream, line, len);
}

static void shim_finish(struct shim *sh);

static void shim_on_exit(void *ctx, int exit_status, int term_signal)
{
    struct shim *sh = ctx;
    sh->exited = true;
    sh->exit_status = exit_status;
    sh->term_signal = term_signal;
    uv_timer_stop(&sh->grace);
    if (sh->release)
        shim_finish(sh);
    else if (sh->client)
        shim_sendf(sh, "X %d %d\n", exit_status, term_signal);
}

static void shim_signal_group(struct shim *sh, int sig)
{
    if (sh->proc && !sh->exited)
        proc_signal_group(sh->proc, sig);
}

static void shim_grace_expired(uv_timer_t *t)
{
    shim_signal_group(t->data, SIGKILL);
}

/* Everything ends: the loop runs out once these handles are closed. */
static void shim_finish(struct shim *sh)
{
    if (sh->done)
        return;
    sh->done = true;
    shim_client_close(sh);
    uv_close((uv_handle_t *)&sh->server, NULL);
    uv_close((uv_handle_t *)&sh->grace, NULL);
    uv_close((uv_handle_t *)&sh->sigterm, NULL);
    uv_close((uv_handle_t *)&sh->sigint, NULL);
    if (sh->proc) {
        proc_close(sh->proc);
        sh->proc = NULL;
    }
}

static void shim_command(struct shim *sh, const char *line)
{
    int n = 0;
    if (line[0] == 'T' && sscanf(line + 1, "%d", &n) == 1) {
        shim_signal_group(sh, SIGTERM);
        if (!sh->exited)
            uv_timer_start(&sh->grace, shim_grace_expired, n > 0 ? (uint64_t)n : 0, 0);
    } else if (line[0] == 'S' && sscanf(line + 1, "%d", &n) == 1 && n > 0 && n < NSIG) {
        shim_signal_group(sh, n);
    } else if (line[0] == 'P' && line[1] == ' ' && line[2] == '/') {
        /* a warm container became an instance: its pid file takes the instance's name */
        if (rename(sh->pid_file, line + 2) == 0) {
            free(sh->pid_file);
            sh->pid_file = xstrdup(line + 2);
        }
    } else if (line[0] == 'A') {
        sh->release = true;
        if (sh->exited)
            shim_finish(sh);
    }
}

static void shim_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct shim_client *c = h->data;
    (void)suggested;
    buf_reserve(&c->in, SHIM_COMMAND_MAX);
    buf->base = c->in.data + c->in.len;
    buf->len = c->in.cap - 1 - c->in.len;
}

static void shim_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct shim_client *c = stream->data;
    struct shim *sh = stream->loop->data;
    (void)buf;
    if (nread < 0) {
        if (sh->client == c)
            shim_client_close(sh);
        else if (!uv_is_closing((uv_handle_t *)stream))
            uv_close((uv_handle_t *)stream, shim_client_free);
        return;
    }
    c->in.len += (size_t)nread;
    c->in.data[c->in.len] = '\0';
    size_t pos = 0, len;
    char *line;
    while (sh->client == c && (line = buf_next_line(&c->in, &pos, &len))) {
        shim_command(sh, line);
        if (sh->client != c)
            return; /* finished, or replaced: c is closing */
    }
    buf_consume(&c->in, pos);
    if (c->in.len >= SHIM_COMMAND_MAX)
        buf_reset(&c->in); /* a line this long is not ours: forget it */
}

static void shim_on_connection(uv_stream_t *server, int status)
{
    struct shim *sh = server->loop->data;
    if (status < 0 || sh->done)
        return;
    struct shim_client *c = xcalloc(1, sizeof *c);
    uv_pipe_init(sh->loop, &c->pipe, 0);
    c->pipe.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->pipe) < 0) {
        uv_close((uv_handle_t *)&c->pipe, shim_client_free);
        return;
    }
    shim_client_close(sh); /* the newest skiffd is the one that counts */
    sh->client = c;
    uv_read_start((uv_stream_t *)&c->pipe, shim_alloc, shim_read);
    shim_sendf(sh, "H %d %d %d %d\n", sh->pid, sh->exited, sh->exit_status, sh->term_signal);
    if (sh->dropped) {
        char *note = xasprintf("skiff-shim: %lu output lines were dropped while no one was "
                               "reading them",
                               sh->dropped);
        shim_send_line(sh, 2, note, strlen(note));
        free(note);
        sh->dropped = 0;
    }
    while (sh->ring_count > 0) {
        struct shim_line *l = &sh->ring[sh->ring_start];
        shim_send_line(sh, l->stream, l->text, l->len);
        sh->ring_bytes -= l->len;
        free(l->text);
        l->text = NULL;
        sh->ring_start = (sh->ring_start + 1) % SHIM_KEEP_LINES;
        sh->ring_count--;
    }
    if (sh->exited)
        shim_sendf(sh, "X %d %d\n", sh->exit_status, sh->term_signal);
}

/* Someone asked the shim itself to stop (not skiffd, which uses the socket): pass it on. */
static void shim_on_signal(uv_signal_t *h, int signum)
{
    shim_signal_group(h->data, signum);
}

static void shim_usage(void)
{
    fputs("usage: skiff-shim --listen-fd N --pid-file PATH -- PROGRAM ARG...\n"
          "Supervises one Skiff instance for skiffd, which starts it; not run by hand.\n",
          stderr);
}

int main(int argc, char **argv)
{
    log_init("skiff-shim");
    int listen_fd = -1;
    const char *pid_file = NULL;
    int i = 1;
    for (; i < argc; i++) {
        if (!strcmp(argv[i], "--")) {
            i++;
            break;
        }
        if (i + 1 >= argc) {
            shim_usage();
            return 2;
        }
        if (!strcmp(argv[i], "--listen-fd"))
            listen_fd = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--pid-file"))
            pid_file = argv[++i];
        else {
            shim_usage();
            return 2;
        }
    }
    if (listen_fd < 0 || !pid_file || i >= argc) {
        shim_usage();
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN); /* the terminal skiffd ran in may close */

    static struct shim sh;
    uv_loop_t *loop = uv_default_loop();
    loop->data = &sh;
    sh.loop = loop;
    sh.pid_file = xstrdup(pid_file);
    int rc = 0;
    uv_pipe_init(loop, &sh.server, 0);
    uv_timer_init(loop, &sh.grace);
    sh.grace.data = &sh;
    uv_signal_init(loop, &sh.sigterm);
    uv_signal_init(loop, &sh.sigint);
    sh.sigterm.data = sh.sigint.data = &sh;
    if ((rc = uv_pipe_open(&sh.server, listen_fd)) < 0 ||
        (rc = uv_listen((uv_stream_t *)&sh.server, 8, shim_on_connection)) < 0) {
        log_error("cannot listen on fd %d: %s", listen_fd, uv_strerror(rc));
        goto fail;
    }
    static char *const no_env[] = {NULL};
    extern char **environ;
    struct proc_options opt = {.argv = (const char *const *)(argv + i),
                               .env = environ ? environ : no_env,
                               .cwd = NULL,
                               .on_line = shim_on_line,
                               .on_exit = shim_on_exit,
                               .ctx = &sh};
    rc = proc_spawn(loop, &opt, &sh.proc);
    if (rc < 0) {
        log_error("cannot start %s: %s", argv[i], skiff_strerror(rc));
        goto fail;
    }
    sh.pid = proc_pid(sh.proc);
    proc_pid_file_write(sh.pid_file, sh.pid);
    uv_signal_start(&sh.sigterm, shim_on_signal, SIGTERM);
    uv_signal_start(&sh.sigint, shim_on_signal, SIGINT);
    uv_run(loop, UV_RUN_DEFAULT);
    goto out;
fail:
    shim_finish(&sh);
    uv_run(loop, UV_RUN_DEFAULT);
out:
    unlink(sh.pid_file);
    for (size_t k = 0; k < sh.ring_count; k++)
        free(sh.ring[(sh.ring_start + k) % SHIM_KEEP_LINES].text);
    free(sh.pid_file);
    uv_loop_close(loop);
    return rc < 0 ? 1 : 0;
}
