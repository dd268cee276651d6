/* The redis backend: Debian's redis-server, started and supervised here.
 *
 * Its data and settings are HOME/brokers/redis (owned by the `redis` system user it runs
 * as). There is no default user ("user default off"); this program logs in as
 * "skiff-admin" (its password in HOME/brokers/redis.password, 0600). An instance is a key
 * prefix "<instance>:" (nothing to make in the server); a binding is an ACL user "sb-<id>"
 * limited to that prefix's keys and channels, without the commands that see or change more
 * than that (brokers_redis_acl_rules). Users are saved to the server's ACL file at once. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <uv.h>

#include "brokers/brokers.h"
#include "common/err.h"
#include "common/buf.h"
#include "common/log.h"
#include "common/util.h"

#define REDIS_READY_TIMEOUT_MS 30000
#define REDIS_RESTART_MS 1000
#define REDIS_ADMIN "skiff-admin"

struct brokers_redis {
    uv_loop_t *loop;
    const struct brokers_config *cfg;
    char *dir, *conf, *acl, *log, *pw_path;
    char password[44];
    uid_t uid;
    gid_t gid;
    uv_process_t *proc;
    uv_timer_t restart;
    int fd; /* the admin connection, or -1 */
    bool adopted; /* a server a previous skiff-brokers left running */
    bool stopping;
};

static void redis__sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- RESP: one command, one reply --------------------------------------------------------- */

static int redis__write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -EIO;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads one line (without CRLF) into line. */
static int redis__line(int fd, char *line, size_t size)
{
    size_t n = 0;
    for (;;) {
        char c;
        ssize_t r = read(fd, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -EIO;
        if (c == '\n')
            break;
        if (n + 1 < size)
            line[n++] = c;
    }
    if (n && line[n - 1] == '\r')
        n--;
    line[n] = '\0';
    return 0;
}

/* Reads one reply; an error reply is -EPERM with its text in err. Contents are skipped. */
static int redis__reply(int fd, char *err, size_t errlen)
{
    char line[1024];
    if (redis__line(fd, line, sizeof line) < 0) {
        snprintf(err, errlen, "Redis closed the connection");
        return -EIO;
    }
    long n;
    switch (line[0]) {
    case '+':
    case ':':
        return 0;
    case '-':
        snprintf(err, errlen, "Redis: %s", line + 1);
        return -EPERM;
    case '$':
        n = atol(line + 1);
        for (long i = 0; i < n + 2 && n >= 0; i++) {
            char c;
            if (read(fd, &c, 1) != 1)
                return -EIO;
        }
        return 0;
    case '*':
        n = atol(line + 1);
        for (long i = 0; i < n; i++) {
            int rc = redis__reply(fd, err, errlen);
            if (rc == -EIO)
                return rc;
        }
        return 0;
    default:
        snprintf(err, errlen, "Redis answered what is not RESP");
        return -EIO;
    }
}

/* Sends argv (count words) and reads the reply. */
static int redis__command(int fd, int count, const char *const *argv, char *err, size_t errlen)
{
    struct buf b = {0};
    buf_printf(&b, "*%d\r\n", count);
    for (int i = 0; i < count; i++) {
        buf_printf(&b, "$%zu\r\n", strlen(argv[i]));
        buf_puts(&b, argv[i]);
        buf_puts(&b, "\r\n");
    }
    int rc = redis__write_all(fd, b.data, b.len);
    sodium_memzero(b.data, b.len);
    buf_free(&b);
    if (rc < 0) {
        snprintf(err, errlen, "cannot write to Redis");
        return rc;
    }
    return redis__reply(fd, err, errlen);
}

static int redis__dial(const struct brokers_redis *r)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)r->cfg->redis_port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

/* ---- the server --------------------------------------------------------------------------- */

static bool redis__has_data(struct brokers_redis *r)
{
    return access(r->conf, F_OK) == 0 && access(r->pw_path, R_OK) == 0;
}

static int redis__init(struct brokers_redis *r, char *err, size_t errlen)
{
    mkdir_p(r->dir, 0700);
    if (chown(r->dir, r->uid, r->gid) < 0 || chmod(r->dir, 0700) < 0) {
        snprintf(err, errlen, "cannot give %s to the redis user: %s", r->dir,
                 skiff_strerror(-errno));
        return -errno;
    }
    brokers_password(r->password);
    char *acl = xasprintf("user default off resetkeys resetchannels -@all\n"
                          "user " REDIS_ADMIN " on >%s ~* &* +@all\n",
                          r->password);
    int rc = file_write_atomic(r->acl, acl, strlen(acl), 0600);
    sodium_memzero(acl, strlen(acl));
    free(acl);
    if (rc == 0 && chown(r->acl, r->uid, r->gid) < 0)
        rc = -errno;
    if (rc == 0)
        rc = file_write_atomic(r->pw_path, r->password, strlen(r->password), 0600);
    if (rc < 0)
        snprintf(err, errlen, "cannot write Redis' settings: %s", skiff_strerror(rc));
    return rc;
}

/* The settings, written at every start (addresses and ports may change with skiffd's). */
static int redis__write_conf(struct brokers_redis *r)
{
    struct buf b = {0};
    char *hosts = xstrdup(r->cfg->listen_hosts);
    for (char *p = hosts; *p; p++)
        if (*p == ',')
            *p = ' ';
    buf_printf(&b,
               "# written by skiff-brokers at each start\n"
               "bind %s\n"
               "port %d\n"
               "protected-mode no\n"
               "daemonize no\n"
               "dir %s\n"
               "aclfile %s\n"
               "appendonly yes\n"
               "appendfsync everysec\n"
               "enable-debug-command no\n"
               "enable-module-command no\n"
               "enable-protected-configs no\n"
               "maxclients 1000\n",
               hosts, r->cfg->redis_port, r->dir, r->acl);
    free(hosts);
    int rc = file_write_atomic(r->conf, b.data, b.len, 0600);
    if (rc == 0 && chown(r->conf, r->uid, r->gid) < 0)
        rc = -errno;
    buf_free(&b);
    return rc;
}

static void redis__forget(struct brokers_redis *r)
{
    if (r->proc) {
        uv_close((uv_handle_t *)r->proc, (uv_close_cb)free);
        r->proc = NULL;
    }
}

static int redis__start(struct brokers_redis *r, char *err, size_t errlen);

static void redis__restart_tick(uv_timer_t *t)
{
    struct brokers_redis *r = t->data;
    char err[256];
    if (!r->proc && !r->stopping && redis__start(r, err, sizeof err) < 0)
        log_error("Redis: %s", err);
}

static void redis__exited(uv_process_t *p, int64_t status, int sig)
{
    struct brokers_redis *r = p->data;
    uv_close((uv_handle_t *)p, (uv_close_cb)free);
    if (r->proc == p)
        r->proc = NULL;
    if (r->fd >= 0) {
        close(r->fd);
        r->fd = -1;
    }
    if (!r->stopping) {
        log_warning("Redis exited (status %lld, signal %d): starting it again; its log is %s",
                    (long long)status, sig, r->log);
        uv_timer_start(&r->restart, redis__restart_tick, REDIS_RESTART_MS, 0);
    }
}

static int redis__login(struct brokers_redis *r, int fd, char *err, size_t errlen)
{
    const char *auth[] = {"AUTH", REDIS_ADMIN, r->password};
    return redis__command(fd, 3, auth, err, errlen);
}

static int redis__start(struct brokers_redis *r, char *err, size_t errlen)
{
    if (r->proc || (r->adopted && r->fd >= 0))
        return 0;
    int rc;
    if (!redis__has_data(r) && (rc = redis__init(r, err, errlen)) < 0)
        return rc;
    char *pw = NULL;
    if (file_read(r->pw_path, &pw, NULL) < 0) {
        snprintf(err, errlen, "cannot read %s", r->pw_path);
        return -EIO;
    }
    snprintf(r->password, sizeof r->password, "%s", pw);
    sodium_memzero(pw, strlen(pw));
    free(pw);
    /* a server a previous skiff-brokers left (killed before it could stop it), which takes
     * our password: kept, and stopped with SHUTDOWN */
    int fd = redis__dial(r);
    if (fd >= 0 && redis__login(r, fd, err, errlen) == 0) {
        if (r->fd >= 0)
            close(r->fd);
        r->fd = fd;
        r->adopted = true;
        log_info("Redis is already running on port %d: kept", r->cfg->redis_port);
        return 0;
    }
    if (fd >= 0)
        close(fd);
    r->adopted = false;
    if ((rc = redis__write_conf(r)) < 0) {
        snprintf(err, errlen, "cannot write %s: %s", r->conf, skiff_strerror(rc));
        return rc;
    }
    char *argv[] = {r->cfg->redis_server, r->conf, NULL};
    int logfd = open(r->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    uv_stdio_container_t stdio[3] = {{.flags = UV_IGNORE},
                                     {.flags = UV_INHERIT_FD, .data.fd = logfd},
                                     {.flags = UV_INHERIT_FD, .data.fd = logfd}};
    uv_process_options_t opt = {.file = r->cfg->redis_server,
                                .args = argv,
                                .exit_cb = redis__exited,
                                .stdio = stdio,
                                .stdio_count = 3,
                                .cwd = r->dir,
                                .uid = r->uid,
                                .gid = r->gid,
                                .flags =
                                    geteuid() == 0 ? UV_PROCESS_SETUID | UV_PROCESS_SETGID : 0};
    uv_process_t *p = xcalloc(1, sizeof *p);
    p->data = r;
    rc = uv_spawn(r->loop, p, &opt);
    if (logfd >= 0)
        close(logfd);
    if (rc < 0) {
        free(p);
        snprintf(err, errlen, "cannot start Redis (%s): %s", r->cfg->redis_server, uv_strerror(rc));
        return rc;
    }
    r->proc = p;
    int64_t deadline = time_mono_ms() + REDIS_READY_TIMEOUT_MS;
    for (;;) {
        fd = redis__dial(r);
        if (fd >= 0) {
            rc = redis__login(r, fd, err, errlen);
            if (rc == 0) {
                r->fd = fd;
                break;
            }
            close(fd);
            if (rc == -EPERM) /* it answers, and refuses our password: no use waiting */
                goto failed;
        }
        int status;
        if (waitpid(p->pid, &status, WNOHANG) == p->pid) {
            snprintf(err, errlen, "Redis did not start: see %s", r->log);
            redis__forget(r);
            return -EIO;
        }
        if (time_mono_ms() > deadline) {
            snprintf(err, errlen, "Redis did not start in time: see %s", r->log);
            goto failed;
        }
        redis__sleep_ms(10);
    }
    log_info("Redis is running on port %d (%s)", r->cfg->redis_port, r->cfg->listen_hosts);
    return 0;
failed:
    uv_process_kill(p, SIGKILL);
    int status;
    waitpid(p->pid, &status, 0);
    redis__forget(r);
    return -EIO;
}

/* Runs one admin command, the server started (and logged in) if need be. */
static int redis__admin(struct brokers_redis *r, int count, const char *const *argv, char *err,
                        size_t errlen)
{
    int rc = redis__start(r, err, errlen);
    if (rc < 0)
        return rc;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (r->fd < 0) {
            int fd = redis__dial(r);
            if (fd < 0) {
                snprintf(err, errlen, "cannot reach Redis: %s", skiff_strerror(fd));
                return fd;
            }
            if ((rc = redis__login(r, fd, err, errlen)) < 0) {
                close(fd);
                return rc;
            }
            r->fd = fd;
        }
        rc = redis__command(r->fd, count, argv, err, errlen);
        if (rc != -EIO)
            return rc;
        close(r->fd); /* a connection that broke: once more on a new one */
        r->fd = -1;
    }
    return rc;
}

static void redis__user(const char *binding_id, char out[68])
{
    snprintf(out, 68, "sb-%s", binding_id);
}

static int redis__provision(void *ctx, const char *instance_id, char *err, size_t errlen)
{
    struct brokers_redis *r = ctx;
    const char *ping[] = {"PING"};
    return redis__admin(r, 1, ping, err, errlen);
}

/* Drops users of the instance and its keys. */
static int redis__deprovision(void *ctx, const char *instance_id, char *err, size_t errlen)
{
    struct brokers_redis *r = ctx;
    /* keys under the prefix, deleted by a server-side loop over SCAN */
    char *pattern = xasprintf("%s:*", instance_id);
    const char *eval[] = {"EVAL",
                          "local c = '0' repeat local r = redis.call('SCAN', c, 'MATCH', "
                          "ARGV[1], 'COUNT', 1000) c = r[1] for _, k in ipairs(r[2]) do "
                          "redis.call('UNLINK', k) end until c == '0' return 0",
                          "0", pattern};
    int rc = redis__admin(r, 4, eval, err, errlen);
    free(pattern);
    return rc;
}

static int redis__bind(void *ctx, const char *instance_id, const char *binding_id, json_t **out,
                       char *err, size_t errlen)
{
    struct brokers_redis *r = ctx;
    char user[68], password[44];
    redis__user(binding_id, user);
    brokers_password(password);
    char *rules = brokers_redis_acl_rules(instance_id);
    char *pass = xasprintf(">%s", password);
    /* SETUSER takes each rule as an argument */
    const char *argv[64] = {"ACL", "SETUSER", user, "reset", "on", pass};
    int n = 6;
    for (char *save = NULL, *tok = strtok_r(rules, " ", &save); tok && n < 64;
         tok = strtok_r(NULL, " ", &save))
        argv[n++] = tok;
    int rc = redis__admin(r, n, argv, err, errlen);
    const char *save_argv[] = {"ACL", "SAVE"};
    if (rc == 0)
        rc = redis__admin(r, 2, save_argv, err, errlen);
    if (rc == 0)
        *out = brokers_redis_credentials(r->cfg->service_host, r->cfg->redis_port, instance_id,
                                         user, password);
    sodium_memzero(pass, strlen(pass));
    sodium_memzero(password, sizeof password);
    free(pass);
    free(rules);
    return rc;
}

static int redis__unbind(void *ctx, const char *instance_id, const char *binding_id, char *err,
                         size_t errlen)
{
    struct brokers_redis *r = ctx;
    char user[68];
    redis__user(binding_id, user);
    const char *del[] = {"ACL", "DELUSER", user}; /* also ends the user's connections */
    const char *save[] = {"ACL", "SAVE"};
    int rc = redis__admin(r, 3, del, err, errlen);
    if (rc == 0)
        rc = redis__admin(r, 2, save, err, errlen);
    return rc;
}

static void redis__stop(void *ctx, bool leave_running)
{
    struct brokers_redis *r = ctx;
    r->stopping = true;
    uv_timer_stop(&r->restart);
    if (r->fd >= 0) {
        close(r->fd);
        r->fd = -1;
    }
    if (leave_running) {
        redis__forget(r); /* the next skiff-brokers keeps it (our admin login) */
    } else if (r->proc) {
        uv_process_kill(r->proc, SIGTERM);
        int status;
        int64_t deadline = time_mono_ms() + 30000;
        while (waitpid(r->proc->pid, &status, WNOHANG) == 0) {
            if (time_mono_ms() > deadline) {
                uv_process_kill(r->proc, SIGKILL);
                waitpid(r->proc->pid, &status, 0);
                break;
            }
            redis__sleep_ms(10);
        }
        redis__forget(r);
    } else if (r->adopted) {
        char err[128];
        const char *shutdown[] = {"SHUTDOWN"};
        int fd = redis__dial(r);
        if (fd >= 0 && redis__login(r, fd, err, sizeof err) == 0)
            redis__command(fd, 1, shutdown, err, sizeof err); /* answered by closing */
        if (fd >= 0)
            close(fd);
        int64_t deadline = time_mono_ms() + 30000;
        while ((fd = redis__dial(r)) >= 0 && time_mono_ms() < deadline) {
            close(fd);
            redis__sleep_ms(10);
        }
        if (fd >= 0)
            close(fd);
    }
    uv_close((uv_handle_t *)&r->restart, NULL);
}

int brokers_redis_new(uv_loop_t *loop, const struct brokers_config *cfg,
                      struct brokers_backend *out)
{
    struct brokers_redis *r = xcalloc(1, sizeof *r);
    r->loop = loop;
    r->cfg = cfg;
    r->fd = -1;
    r->dir = xasprintf("%s/brokers/redis", cfg->home);
    r->conf = xasprintf("%s/redis.conf", r->dir);
    r->acl = xasprintf("%s/users.acl", r->dir);
    r->log = xasprintf("%s/brokers/redis.log", cfg->home);
    r->pw_path = xasprintf("%s/brokers/redis.password", cfg->home);
    if (brokers_run_as("redis", &r->uid, &r->gid) < 0) {
        log_error("Redis runs as the system user \"redis\", which does not exist (install "
                  "Debian's redis-server)");
        r->uid = 65534;
        r->gid = 65534;
    }
    uv_timer_init(loop, &r->restart);
    r->restart.data = r;
    *out = (struct brokers_backend){
        .name = "redis",
        .service_id = "7c1a9e44-3b2d-4f6e-8a90-1d2c3b4a5f01",
        .plan_id = "7c1a9e44-3b2d-4f6e-8a90-1d2c3b4a5f02",
        .description = "Redis 7: a key prefix of its own on the platform's server, with an ACL "
                       "user per binding",
        .plan_description = "keys and channels under the instance's prefix on the platform's "
                            "shared Redis server",
        .tags = "[\"redis\", \"key-value\", \"cache\"]",
        .ctx = r,
        .provision = redis__provision,
        .deprovision = redis__deprovision,
        .bind = redis__bind,
        .unbind = redis__unbind,
        .stop = redis__stop,
    };
    if (redis__has_data(r))
        uv_timer_start(&r->restart, redis__restart_tick, 0, 0);
    return 0;
}

void brokers_redis_free(struct brokers_backend *be)
{
    struct brokers_redis *r = be->ctx;
    if (!r)
        return;
    sodium_memzero(r->password, sizeof r->password);
    free(r->dir);
    free(r->conf);
    free(r->acl);
    free(r->log);
    free(r->pw_path);
    free(r);
    be->ctx = NULL;
}
