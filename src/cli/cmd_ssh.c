/* cmd_ssh: `skiff ssh APP`, a command or a shell inside a running instance's container.
 *
 * One POST /v1/apps/APP/ssh with `Upgrade: skiff-ssh` on a connection of its own (libcurl
 * connects, TLS included; the request and the frames after it are written by hand), then the
 * frames of common/ssh_frame.h both ways until EXIT. With a terminal, the local one is raw
 * meanwhile (restored on every way out) and its size follows SIGWINCH. */
#include <curl/curl.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/commands.h"
#include "common/buf.h"
#include "common/ssh_frame.h"
#include "common/util.h"

#define SSH_EXIT_LOST 255 /* as ssh: the session failed, not the command */
#define SSH_HEAD_MAX (64 << 10)

static struct termios ssh_saved_termios;
static bool ssh_raw;
static volatile sig_atomic_t ssh_winch;

static void ssh_restore_terminal(void)
{
    if (ssh_raw) {
        tcsetattr(STDIN_FILENO, TCSADRAIN, &ssh_saved_termios);
        ssh_raw = false;
    }
}

static void ssh_on_winch(int sig)
{
    (void)sig;
    ssh_winch = 1;
}

static void ssh_window(unsigned *rows, unsigned *cols)
{
    struct winsize ws;
    if (ioctl(STDIN_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row && ws.ws_col) {
        *rows = ws.ws_row;
        *cols = ws.ws_col;
    } else {
        *rows = 24;
        *cols = 80;
    }
}

/* Waits until the socket can be read (or written) for curl_easy_recv/send. */
static void ssh_wait(curl_socket_t sock, short events)
{
    struct pollfd p = {.fd = sock, .events = events};
    poll(&p, 1, 1000);
}

static int ssh_send_all(CURL *curl, curl_socket_t sock, const void *data, size_t len)
{
    for (size_t off = 0; off < len;) {
        size_t n = 0;
        CURLcode cc = curl_easy_send(curl, (const char *)data + off, len - off, &n);
        if (cc == CURLE_AGAIN) {
            ssh_wait(sock, POLLOUT);
            continue;
        }
        if (cc != CURLE_OK)
            return -1;
        off += n;
    }
    return 0;
}

/* Reads what the socket has now into in: 1 when something came, 0 when nothing (yet), -1 at
 * the end of the connection or on an error. */
static int ssh_recv(CURL *curl, struct buf *in)
{
    char chunk[16384];
    int got = 0;
    for (;;) {
        size_t n = 0;
        CURLcode cc = curl_easy_recv(curl, chunk, sizeof chunk, &n);
        if (cc == CURLE_AGAIN)
            return got;
        if (cc != CURLE_OK || n == 0)
            return got ? got : -1;
        buf_append(in, chunk, n);
        got = 1;
    }
}

static void ssh_write_fd(int fd, const void *data, size_t len)
{
    for (size_t off = 0; off < len;) {
        ssize_t n = write(fd, (const char *)data + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        off += (size_t)n;
    }
}

/* The answer when it is not 101: the API's message, as every command prints it. */
static int ssh_refused(const char *app, int status, const char *head, const char *body, size_t len)
{
    json_t *o = json_loadb(body, len, 0, NULL);
    const char *msg = json_string_value(json_object_get(json_object_get(o, "error"), "message"));
    int rc;
    if (status == 401)
        rc = cli_error("the API refused the token (%s): log in again with `skiff login`",
                       msg ? msg : "401");
    else if (status == 404 && !msg)
        rc = cli_error("app %s not found: list the apps with `skiff apps`", app);
    else if (msg)
        rc = cli_error("%s", msg);
    else
        rc = cli_error("the API answered %.*s", (int)strcspn(head, "\r\n"), head);
    json_decref(o);
    return rc;
}

/* Frames from the server; returns the exit status once EXIT or ERROR came, else -1. */
static int ssh_frames(struct buf *in)
{
    size_t pos = 0;
    int rc = -1;
    while (rc < 0) {
        struct ssh_frame f;
        ssize_t n = ssh_frame_parse(in->data + pos, in->len - pos, &f);
        if (n == 0)
            break;
        if (n < 0) {
            ssh_restore_terminal();
            cli_error("the API sent a malformed frame: is it a skiffd of this version?");
            rc = SSH_EXIT_LOST;
            break;
        }
        pos += (size_t)n;
        if (f.type == SSH_FRAME_STDOUT)
            ssh_write_fd(STDOUT_FILENO, f.data, f.len);
        else if (f.type == SSH_FRAME_STDERR)
            ssh_write_fd(STDERR_FILENO, f.data, f.len);
        else if (f.type == SSH_FRAME_EXIT)
            rc = (int)(ssh_frame_u32(&f) & 0xff);
        else if (f.type == SSH_FRAME_ERROR) {
            ssh_restore_terminal();
            cli_error("%.*s", (int)f.len, (const char *)f.data);
            rc = SSH_EXIT_LOST;
        }
    }
    buf_consume(in, pos);
    return rc;
}

static int ssh_session(CURL *curl, curl_socket_t sock, struct buf *in)
{
    bool stdin_open = true;
    struct buf out = {0};
    char chunk[32768];
    int rc = ssh_frames(in);
    while (rc < 0) {
        if (ssh_winch) {
            ssh_winch = 0;
            unsigned rows, cols;
            ssh_window(&rows, &cols);
            buf_reset(&out);
            ssh_frame_put_u32(&out, SSH_FRAME_RESIZE, rows << 16 | cols);
            if (ssh_send_all(curl, sock, out.data, out.len) < 0)
                break;
        }
        struct pollfd p[2] = {{.fd = sock, .events = POLLIN},
                              {.fd = stdin_open ? STDIN_FILENO : -1, .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[0].revents) {
            int got = ssh_recv(curl, in);
            if (got < 0) {
                rc = ssh_frames(in); /* what came before the end still counts */
                break;
            }
            rc = ssh_frames(in);
            continue;
        }
        if (p[1].revents) {
            ssize_t n = read(STDIN_FILENO, chunk, sizeof chunk);
            if (n < 0 && errno == EINTR)
                continue;
            buf_reset(&out);
            if (n <= 0) {
                stdin_open = false;
                ssh_frame_put(&out, SSH_FRAME_EOF, NULL, 0);
            } else {
                ssh_frame_put(&out, SSH_FRAME_STDIN, chunk, (size_t)n);
            }
            if (ssh_send_all(curl, sock, out.data, out.len) < 0)
                break;
        }
    }
    buf_free(&out);
    ssh_restore_terminal();
    if (rc < 0) {
        cli_error("the connection to the instance was lost before the command ended");
        return SSH_EXIT_LOST;
    }
    return rc;
}

int cli_cmd_ssh(const struct cli_command *cmd, int argc, char **argv)
{
    long index = 0;
    const char *process = "web", *command = NULL;
    bool force_tty = false, no_tty = false;
    struct cli_option opts[] = {
        {"index", 'i', CLI_OPT_INT, &index},
        {"process", 0, CLI_OPT_STRING, &process},
        {"command", 'c', CLI_OPT_STRING, &command},
        {"force-pseudo-tty", 't', CLI_OPT_FLAG, &force_tty},
        {"disable-pseudo-tty", 'T', CLI_OPT_FLAG, &no_tty},
        {NULL, 0, 0, NULL},
    };
    struct cli_args args;
    int prc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (prc != CLI_CONTINUE)
        return prc;
    if (index < 0)
        return cli_usage_error(cmd, "-i takes an instance index: 0 or more");
    const char *app = args.items[0];
    const struct cli_target *t = cli_target();
    if (!t)
        return CLI_EXIT_ERROR;
    /* a terminal when asked, else for a shell typed at one (as ssh decides) */
    bool tty = !no_tty && (force_tty || (!command && isatty(STDIN_FILENO)));
    unsigned rows = 24, cols = 80;
    if (tty)
        ssh_window(&rows, &cols);

    struct buf path = {0};
    char *e_app = cli_escape(app), *e_process = cli_escape(process);
    buf_printf(&path, "/v1/apps/%s/ssh?process=%s&index=%ld", e_app, e_process, index);
    free(e_app);
    free(e_process);
    if (command) {
        char *e = cli_escape(command);
        buf_printf(&path, "&command=%s", e);
        free(e);
    }
    if (tty) {
        buf_printf(&path, "&tty=1&rows=%u&cols=%u", rows, cols);
        const char *term = getenv("TERM");
        if (term && *term) {
            char *e = cli_escape(term);
            buf_printf(&path, "&term=%s", e);
            free(e);
        }
    }
    char *space = cli_space_query();
    if (space)
        buf_printf(&path, "&space=%s", space);
    free(space);

    const char *host = strstr(t->api_url, "://");
    host = host ? host + 3 : t->api_url;
    struct buf req = {0};
    buf_printf(&req,
               "POST %s HTTP/1.1\r\nHost: %.*s\r\nUser-Agent: skiff-cli\r\n"
               "Connection: Upgrade\r\nUpgrade: %s\r\nContent-Length: 0\r\n",
               path.data, (int)strcspn(host, "/"), host, SSH_PROTOCOL);
    if (t->token)
        buf_printf(&req, "Authorization: Bearer %s\r\n", t->token);
    buf_puts(&req, "\r\n");
    char *url = xasprintf("%s%s", t->api_url, path.data);
    buf_free(&path);

    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURL *curl = curl_easy_init();
    struct buf in = {0};
    int rc = CLI_EXIT_ERROR;
    if (!curl) {
        cli_error("could not set up an HTTP client (out of memory?)");
        goto done;
    }
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_CONNECT_ONLY, 1L);
    cli_curl_tls(curl);
    char curl_err[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, curl_err);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 10L);
    CURLcode cc = curl_easy_perform(curl);
    curl_socket_t sock = CURL_SOCKET_BAD;
    if (cc == CURLE_OK)
        curl_easy_getinfo(curl, CURLINFO_ACTIVESOCKET, &sock);
    if (cc != CURLE_OK || sock == CURL_SOCKET_BAD) {
        if (!cli_connect_error(t, cc, curl_err))
            cli_error("cannot reach the Skiff API at %s (found through %s): %s", t->api_url,
                      t->from, curl_easy_strerror(cc));
        goto done;
    }
    if (ssh_send_all(curl, sock, req.data, req.len) < 0) {
        cli_error("the API at %s closed the connection", t->api_url);
        goto done;
    }
    /* the answer's head; the frames may follow in the same read */
    char *end = NULL;
    while (!(end = in.len ? strstr(in.data, "\r\n\r\n") : NULL)) {
        if (in.len > SSH_HEAD_MAX) {
            cli_error("the API's answer has no end to its head");
            goto done;
        }
        int got = ssh_recv(curl, &in);
        if (got < 0) {
            cli_error("the API at %s closed the connection without an answer", t->api_url);
            goto done;
        }
        if (got == 0)
            ssh_wait(sock, POLLIN);
    }
    size_t head_len = (size_t)(end - in.data) + 4;
    int status = 0;
    sscanf(in.data, "HTTP/1.%*d %d", &status);
    if (status != 101) {
        char *cl = strcasestr(in.data, "\r\ncontent-length:");
        size_t want = cl && cl < end ? strtoul(cl + 17, NULL, 10) : 0;
        while (in.len - head_len < want && want <= SSH_HEAD_MAX) {
            int got = ssh_recv(curl, &in);
            if (got < 0)
                break;
            if (got == 0)
                ssh_wait(sock, POLLIN);
        }
        char *head = xstrndup(in.data, head_len);
        rc = ssh_refused(app, status, head, in.data + head_len, in.len - head_len);
        free(head);
        goto done;
    }
    buf_consume(&in, head_len);
    if (tty && isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &ssh_saved_termios) == 0) {
        struct termios raw = ssh_saved_termios;
        cfmakeraw(&raw);
        if (tcsetattr(STDIN_FILENO, TCSADRAIN, &raw) == 0) {
            ssh_raw = true;
            atexit(ssh_restore_terminal);
        }
        struct sigaction sa = {.sa_handler = ssh_on_winch};
        sigaction(SIGWINCH, &sa, NULL);
    }
    signal(SIGPIPE, SIG_IGN);
    rc = ssh_session(curl, sock, &in);
done:
    ssh_restore_terminal();
    buf_free(&in);
    buf_free(&req);
    free(url);
    if (curl)
        curl_easy_cleanup(curl);
    return rc;
}

/* ---- who may ssh: enable-ssh, disable-ssh, ssh-enabled and the space's three ---------------- */

/* enable-ssh APP / disable-ssh APP. */
static int ssh_app_feature(const struct cli_command *cmd, int argc, char **argv, bool enabled)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *app = args.items[0];
    char *path = cli_app_path(app, "/features/ssh");
    json_t *body = json_pack("{s:b}", "enabled", enabled);
    json_t *res = NULL;
    rc = cli_api("PATCH", path, body, &res);
    if (rc == 0 && !cli_json_printed(res)) {
        printf("ssh is now %s for app %s.\n", enabled ? "enabled" : "disabled", app);
        json_decref(res);
    }
    json_decref(body);
    free(path);
    return rc;
}

int cli_cmd_enable_ssh(const struct cli_command *cmd, int argc, char **argv)
{
    return ssh_app_feature(cmd, argc, argv, true);
}

int cli_cmd_disable_ssh(const struct cli_command *cmd, int argc, char **argv)
{
    return ssh_app_feature(cmd, argc, argv, false);
}

/* ssh-enabled APP: whether `skiff ssh APP` may start a session, and why not (exit 0 either
 * way, as cf ssh-enabled). */
int cli_cmd_ssh_enabled(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *app = args.items[0];
    char *path = cli_app_path(app, "/ssh_enabled");
    json_t *res = NULL;
    rc = cli_api("GET", path, NULL, &res);
    free(path);
    if (rc != 0 || cli_json_printed(res))
        return rc;
    const char *reason = json_string_value(json_object_get(res, "reason"));
    if (json_is_true(json_object_get(res, "enabled")))
        printf("ssh is enabled for app %s.\n", app);
    else
        printf("ssh is disabled for app %s: %s\n", app, reason && *reason ? reason : "");
    json_decref(res);
    return 0;
}

/* The path of SPACE's ssh feature: SPACE in the target org, or ORG/SPACE. */
static char *ssh_space_path(const char *space)
{
    const struct cli_target *t = cli_target();
    if (!t)
        return NULL;
    const char *slash = strchr(space, '/');
    char *org =
        slash ? xstrndup(space, (size_t)(slash - space)) : xstrdup(t->org ? t->org : "default");
    char *e_org = cli_escape(org), *e_space = cli_escape(slash ? slash + 1 : space);
    char *path = xasprintf("/v1/orgs/%s/spaces/%s/features/ssh", e_org, e_space);
    free(org);
    free(e_org);
    free(e_space);
    return path;
}

/* allow-space-ssh SPACE / disallow-space-ssh SPACE / space-ssh-allowed SPACE (set < 0). */
static int ssh_space_feature(const struct cli_command *cmd, int argc, char **argv, int set)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *space = args.items[0];
    char *path = ssh_space_path(space);
    if (!path)
        return CLI_EXIT_ERROR;
    json_t *body = set < 0 ? NULL : json_pack("{s:b}", "enabled", set > 0);
    json_t *res = NULL;
    rc = cli_api(set < 0 ? "GET" : "PATCH", path, body, &res);
    if (rc == 0 && !cli_json_printed(res)) {
        bool allowed = json_is_true(json_object_get(res, "enabled"));
        printf("ssh is %s%s in space %s.\n", set < 0 ? "" : "now ",
               allowed ? "allowed" : "not allowed", space);
        json_decref(res);
    }
    json_decref(body);
    free(path);
    return rc;
}

int cli_cmd_allow_space_ssh(const struct cli_command *cmd, int argc, char **argv)
{
    return ssh_space_feature(cmd, argc, argv, 1);
}

int cli_cmd_disallow_space_ssh(const struct cli_command *cmd, int argc, char **argv)
{
    return ssh_space_feature(cmd, argc, argv, 0);
}

int cli_cmd_space_ssh_allowed(const struct cli_command *cmd, int argc, char **argv)
{
    return ssh_space_feature(cmd, argc, argv, -1);
}
