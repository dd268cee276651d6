/* The postgresql backend: Debian's PostgreSQL, started and supervised here.
 *
 * Its data is HOME/brokers/postgresql/data (initdb on first use), owned by the `postgres`
 * system user it runs as (PostgreSQL refuses root). The superuser logs in only on the Unix
 * socket in HOME/brokers/postgresql/run, with a password kept in
 * HOME/brokers/postgresql.password (0600, skiff-brokers' user). TCP logins are accepted only
 * for a role that is a member of the role named like the database ("samerole"): a binding's
 * role into its own instance's database, nothing else; the superuser is never a member.
 *
 * An instance "si_<id>" is a database owned by a NOLOGIN role of the same name, CONNECT
 * revoked from PUBLIC; a binding "sb_<id>" is a LOGIN role in it, whose sessions act as the
 * instance role (so what one binding creates, the next one of the instance owns too). */
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "brokers/brokers.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#define PG_READY_TIMEOUT_MS 60000
#define PG_RESTART_MS 1000

struct brokers_pg {
    uv_loop_t *loop;
    const struct brokers_config *cfg;
    char *root, *data, *sock, *log, *pw_path;
    char password[44]; /* the superuser's */
    uid_t uid;
    gid_t gid;
    uv_process_t *proc; /* the server while it runs */
    int adopted_pid;    /* a server a previous skiff-brokers left running, or 0 */
    uv_timer_t restart;
    PGconn *admin; /* to the "postgres" database */
    bool stopping;
};

static void pg__sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static PGconn *pg__connect(struct brokers_pg *pg, const char *db)
{
    char port[16];
    snprintf(port, sizeof port, "%d", pg->cfg->postgres_port);
    const char *keys[] = {"host", "port", "dbname", "user", "password", "connect_timeout", NULL};
    const char *vals[] = {pg->sock, port, db, "postgres", pg->password, "10", NULL};
    return PQconnectdbParams(keys, vals, 0);
}

static PGPing pg__ping(struct brokers_pg *pg)
{
    char port[16];
    snprintf(port, sizeof port, "%d", pg->cfg->postgres_port);
    const char *keys[] = {"host", "port", "dbname", "user", "connect_timeout", NULL};
    const char *vals[] = {pg->sock, port, "postgres", "postgres", "2", NULL};
    return PQpingParams(keys, vals, 0);
}

static bool pg__has_data(struct brokers_pg *pg)
{
    char *v = xasprintf("%s/PG_VERSION", pg->data);
    bool ok = access(v, F_OK) == 0 && access(pg->pw_path, R_OK) == 0;
    free(v);
    return ok;
}

/* initdb and the server's configuration, once. */
static int pg__init(struct brokers_pg *pg, char *err, size_t errlen)
{
    mkdir_p(pg->root, 0700);
    rm_rf(pg->data);
    if (chown(pg->root, pg->uid, pg->gid) < 0 || chmod(pg->root, 0700) < 0) {
        snprintf(err, errlen, "cannot give %s to the postgres user: %s", pg->root,
                 skiff_strerror(-errno));
        return -errno;
    }
    brokers_password(pg->password);
    char *pwfile = xasprintf("%s/initdb.pw", pg->root);
    int rc = file_write_atomic(pwfile, pg->password, strlen(pg->password), 0600);
    if (rc == 0 && chown(pwfile, pg->uid, pg->gid) < 0)
        rc = -errno;
    char *pwopt = xasprintf("--pwfile=%s", pwfile);
    char *initdb = xasprintf("%s/initdb", pg->cfg->postgres_bin);
    char *argv[] = {initdb,          "-D", pg->data, "-U",         "postgres", pwopt, "-A",
                    "scram-sha-256", "-E", "UTF8",   "--locale=C", NULL};
    if (rc == 0) {
        int st = brokers_run_wait(argv, pg->uid, pg->gid, pg->log);
        if (st != 0) {
            snprintf(err, errlen, "initdb failed (exit %d): see %s", st, pg->log);
            rc = -EIO;
        }
    } else {
        snprintf(err, errlen, "cannot write %s: %s", pwfile, skiff_strerror(rc));
    }
    unlink(pwfile);
    free(pwfile);
    free(pwopt);
    free(initdb);
    if (rc < 0)
        return rc;
    /* everything not listed is refused: the superuser on the socket, a binding's role into
     * its instance's database over TCP */
    static const char hba[] = "# written by skiff-brokers\n"
                              "local all postgres scram-sha-256\n"
                              "host samerole all 0.0.0.0/0 scram-sha-256\n";
    char *hba_path = xasprintf("%s/pg_hba.conf", pg->data);
    rc = file_write_atomic(hba_path, hba, sizeof hba - 1, 0600);
    if (rc == 0 && chown(hba_path, pg->uid, pg->gid) < 0)
        rc = -errno;
    free(hba_path);
    if (rc == 0)
        rc = file_write_atomic(pg->pw_path, pg->password, strlen(pg->password), 0600);
    if (rc < 0)
        snprintf(err, errlen, "cannot write the server's settings: %s", skiff_strerror(rc));
    return rc;
}

static void pg__restart_tick(uv_timer_t *t);

static void pg__exited(uv_process_t *p, int64_t status, int sig)
{
    struct brokers_pg *pg = p->data;
    uv_close((uv_handle_t *)p, (uv_close_cb)free);
    if (pg->proc == p)
        pg->proc = NULL;
    if (pg->admin) {
        PQfinish(pg->admin);
        pg->admin = NULL;
    }
    if (!pg->stopping) {
        log_warning("PostgreSQL exited (status %lld, signal %d): starting it again; its log "
                    "is %s",
                    (long long)status, sig, pg->log);
        uv_timer_start(&pg->restart, pg__restart_tick, PG_RESTART_MS, 0);
    }
}

static int pg__start(struct brokers_pg *pg, char *err, size_t errlen);

/* A server this program reaped itself (waitpid) gets no exit callback: its handle closes here. */
static void pg__forget(struct brokers_pg *pg)
{
    if (pg->proc) {
        uv_close((uv_handle_t *)pg->proc, (uv_close_cb)free);
        pg->proc = NULL;
    }
}

static void pg__restart_tick(uv_timer_t *t)
{
    struct brokers_pg *pg = t->data;
    char err[256];
    if (!pg->proc && !pg->stopping && pg__start(pg, err, sizeof err) < 0)
        log_error("PostgreSQL: %s", err);
}

/* Starts the server (initdb first when there is no data) and waits until it answers. */
/* The pid of a server running on our data (postmaster.pid) that answers, or 0: one a
 * previous skiff-brokers left (it was killed before it could stop it). */
static int pg__running_pid(struct brokers_pg *pg)
{
    char *path = xasprintf("%s/postmaster.pid", pg->data);
    char *text = NULL;
    int pid = 0;
    if (file_read(path, &text, NULL) == 0)
        pid = atoi(text);
    free(text);
    free(path);
    return pid > 1 && kill(pid, 0) == 0 && pg__ping(pg) == PQPING_OK ? pid : 0;
}

static int pg__start(struct brokers_pg *pg, char *err, size_t errlen)
{
    if (pg->proc)
        return 0;
    if (pg->adopted_pid && kill(pg->adopted_pid, 0) == 0)
        return 0;
    pg->adopted_pid = 0;
    int rc;
    if (!pg__has_data(pg) && (rc = pg__init(pg, err, errlen)) < 0)
        return rc;
    char *pw = NULL;
    if (file_read(pg->pw_path, &pw, NULL) < 0) {
        snprintf(err, errlen, "cannot read %s", pg->pw_path);
        return -EIO;
    }
    snprintf(pg->password, sizeof pg->password, "%s", pw);
    sodium_memzero(pw, strlen(pw));
    free(pw);
    if ((pg->adopted_pid = pg__running_pid(pg)) > 0) {
        log_info("PostgreSQL (pid %d) is already running on its data: kept", pg->adopted_pid);
        return 0;
    }
    mkdir_p(pg->sock, 0700);
    if (chown(pg->sock, pg->uid, pg->gid) < 0) {
        snprintf(err, errlen, "cannot give %s to the postgres user: %s", pg->sock,
                 skiff_strerror(-errno));
        return -errno;
    }
    char *postgres = xasprintf("%s/postgres", pg->cfg->postgres_bin);
    char *port = xasprintf("%d", pg->cfg->postgres_port);
    char *listen = xasprintf("listen_addresses=%s", pg->cfg->listen_hosts);
    char *argv[] = {postgres,
                    "-D",
                    pg->data,
                    "-k",
                    pg->sock,
                    "-p",
                    port,
                    "-c",
                    listen,
                    "-c",
                    "unix_socket_permissions=0700",
                    "-c",
                    "max_connections=200",
                    "-c",
                    "password_encryption=scram-sha-256",
                    NULL};
    int logfd = open(pg->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    uv_stdio_container_t stdio[3] = {{.flags = UV_IGNORE},
                                     {.flags = UV_INHERIT_FD, .data.fd = logfd},
                                     {.flags = UV_INHERIT_FD, .data.fd = logfd}};
    uv_process_options_t opt = {.file = postgres,
                                .args = argv,
                                .exit_cb = pg__exited,
                                .stdio = stdio,
                                .stdio_count = 3,
                                .uid = pg->uid,
                                .gid = pg->gid,
                                .flags =
                                    geteuid() == 0 ? UV_PROCESS_SETUID | UV_PROCESS_SETGID : 0};
    uv_process_t *p = xcalloc(1, sizeof *p);
    p->data = pg;
    rc = uv_spawn(pg->loop, p, &opt);
    if (logfd >= 0)
        close(logfd);
    free(postgres);
    free(port);
    free(listen);
    if (rc < 0) {
        free(p);
        snprintf(err, errlen, "cannot start PostgreSQL: %s", uv_strerror(rc));
        return rc;
    }
    pg->proc = p;
    int64_t deadline = time_mono_ms() + PG_READY_TIMEOUT_MS;
    while (pg__ping(pg) != PQPING_OK) {
        int status;
        bool gone = waitpid(p->pid, &status, WNOHANG) == p->pid;
        if (gone || time_mono_ms() > deadline) {
            snprintf(err, errlen, "PostgreSQL did not start: see %s", pg->log);
            if (!gone) {
                uv_process_kill(p, SIGKILL);
                waitpid(p->pid, &status, 0);
            }
            pg__forget(pg);
            return -EIO;
        }
        pg__sleep_ms(10);
    }
    log_info("PostgreSQL is running on port %d (%s)", pg->cfg->postgres_port,
             pg->cfg->listen_hosts);
    return 0;
}

/* The superuser's connection to the "postgres" database, the server started if need be. */
static PGconn *pg__admin(struct brokers_pg *pg, char *err, size_t errlen)
{
    if (pg__start(pg, err, errlen) < 0)
        return NULL;
    if (pg->admin && PQstatus(pg->admin) == CONNECTION_OK)
        return pg->admin;
    if (pg->admin)
        PQfinish(pg->admin);
    pg->admin = pg__connect(pg, "postgres");
    if (PQstatus(pg->admin) != CONNECTION_OK) {
        snprintf(err, errlen, "cannot reach PostgreSQL: %s", PQerrorMessage(pg->admin));
        PQfinish(pg->admin);
        pg->admin = NULL;
    }
    return pg->admin;
}

/* Runs sql (with params $1..); -EIO with the server's message in err. *rows, when given,
 * gets the number of rows. */
static int pg__exec(PGconn *c, const char *sql, int nparams, const char *const *params, int *rows,
                    char *err, size_t errlen)
{
    PGresult *r = PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    int rc = 0;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        snprintf(err, errlen, "PostgreSQL: %s", PQresultErrorMessage(r));
        size_t n = strlen(err);
        while (n && err[n - 1] == '\n')
            err[--n] = '\0';
        rc = -EIO;
    } else if (rows) {
        *rows = PQntuples(r);
    }
    PQclear(r);
    return rc;
}

/* sql with %s replaced by the identifier name (safe: names come from checked ids). */
static int pg__execf(PGconn *c, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int pg__execf(PGconn *c, char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *sql = NULL;
    int len = vasprintf(&sql, fmt, ap);
    va_end(ap);
    if (len < 0)
        abort();
    /* the simple protocol: several statements in one round trip */
    PGresult *r = PQexec(c, sql);
    free(sql);
    int rc = 0;
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
        snprintf(err, errlen, "PostgreSQL: %s", PQresultErrorMessage(r));
        size_t n = strlen(err);
        while (n && err[n - 1] == '\n')
            err[--n] = '\0';
        rc = -EIO;
    }
    PQclear(r);
    return rc;
}

static int pg__count(PGconn *c, const char *sql, const char *param, int *rows, char *err,
                     size_t errlen)
{
    return pg__exec(c, sql, 1, &param, rows, err, errlen);
}

static int pg__provision(void *ctx, const char *instance_id, char *err, size_t errlen)
{
    struct brokers_pg *pg = ctx;
    PGconn *c = pg__admin(pg, err, errlen);
    if (!c)
        return -EIO;
    char name[68];
    brokers_pg_instance_name(instance_id, name);
    int n = 0, rc;
    if ((rc = pg__count(c, "SELECT 1 FROM pg_roles WHERE rolname = $1", name, &n, err, errlen)) < 0)
        return rc;
    if (!n && (rc = pg__execf(c, err, errlen, "CREATE ROLE %s NOLOGIN", name)) < 0)
        return rc;
    if ((rc = pg__count(c, "SELECT 1 FROM pg_database WHERE datname = $1", name, &n, err, errlen)) <
        0)
        return rc;
    if (!n && (rc = pg__execf(c, err, errlen, "CREATE DATABASE %s OWNER %s", name, name)) < 0)
        return rc;
    if ((rc = pg__execf(c, err, errlen,
                        "REVOKE ALL ON DATABASE %s FROM PUBLIC; "
                        "GRANT CONNECT, TEMPORARY ON DATABASE %s TO %s",
                        name, name, name)) < 0)
        return rc;
    return 0;
}

/* Ends the sessions of role and drops it (after handing what it owns in db to owner). */
static int pg__drop_login(struct brokers_pg *pg, PGconn *c, const char *role, const char *db,
                          const char *owner, char *err, size_t errlen)
{
    int n = 0, rc;
    if ((rc = pg__count(c, "SELECT 1 FROM pg_roles WHERE rolname = $1", role, &n, err, errlen)) <
            0 ||
        !n)
        return rc;
    if ((rc = pg__execf(c, err, errlen, "ALTER ROLE %s NOLOGIN", role)) < 0)
        return rc;
    if ((rc = pg__count(c,
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE usename = $1",
                        role, &n, err, errlen)) < 0)
        return rc;
    if (db) {
        PGconn *in = pg__connect(pg, db);
        if (PQstatus(in) == CONNECTION_OK)
            rc = pg__execf(in, err, errlen, "REASSIGN OWNED BY %s TO %s; DROP OWNED BY %s", role,
                           owner, role);
        PQfinish(in);
        if (rc < 0)
            return rc;
    }
    return pg__execf(c, err, errlen, "DROP ROLE IF EXISTS %s", role);
}

static int pg__deprovision(void *ctx, const char *instance_id, char *err, size_t errlen)
{
    struct brokers_pg *pg = ctx;
    PGconn *c = pg__admin(pg, err, errlen);
    if (!c)
        return -EIO;
    char name[68];
    brokers_pg_instance_name(instance_id, name);
    int rc = pg__execf(c, err, errlen, "DROP DATABASE IF EXISTS %s WITH (FORCE)", name);
    if (rc < 0)
        return rc;
    /* the bindings' roles left (the platform unbinds first; a forced delete may not) */
    const char *param = name;
    PGresult *r = PQexecParams(c,
                               "SELECT m.rolname FROM pg_auth_members a "
                               "JOIN pg_roles m ON m.oid = a.member "
                               "JOIN pg_roles g ON g.oid = a.roleid WHERE g.rolname = $1",
                               1, NULL, &param, NULL, NULL, 0);
    if (PQresultStatus(r) == PGRES_TUPLES_OK) {
        for (int i = 0; i < PQntuples(r) && rc == 0; i++)
            rc = pg__drop_login(pg, c, PQgetvalue(r, i, 0), NULL, NULL, err, errlen);
    }
    PQclear(r);
    if (rc < 0)
        return rc;
    return pg__execf(c, err, errlen, "DROP ROLE IF EXISTS %s", name);
}

static int pg__bind(void *ctx, const char *instance_id, const char *binding_id, json_t **out,
                    char *err, size_t errlen)
{
    struct brokers_pg *pg = ctx;
    PGconn *c = pg__admin(pg, err, errlen);
    if (!c)
        return -EIO;
    char inst[68], role[68], password[44];
    brokers_pg_instance_name(instance_id, inst);
    brokers_pg_binding_name(binding_id, role);
    int n = 0, rc;
    if ((rc = pg__count(c, "SELECT 1 FROM pg_database WHERE datname = $1", inst, &n, err, errlen)) <
        0)
        return rc;
    if (!n) {
        snprintf(err, errlen, "the service instance %s has no database", instance_id);
        return -ENOENT;
    }
    brokers_password(password);
    char *lit = PQescapeLiteral(c, password, strlen(password));
    if ((rc = pg__count(c, "SELECT 1 FROM pg_roles WHERE rolname = $1", role, &n, err, errlen)) ==
        0)
        rc = pg__execf(c, err, errlen,
                       "%s ROLE %s LOGIN CONNECTION LIMIT 50 PASSWORD %s%s%s; "
                       "ALTER ROLE %s SET role = '%s'",
                       n ? "ALTER" : "CREATE", role, lit, n ? "" : " IN ROLE ", n ? "" : inst, role,
                       inst);
    PQfreemem(lit);
    if (rc == 0)
        *out = brokers_pg_credentials(pg->cfg->service_host, pg->cfg->postgres_port, inst, role,
                                      password);
    sodium_memzero(password, sizeof password);
    return rc;
}

static int pg__unbind(void *ctx, const char *instance_id, const char *binding_id, char *err,
                      size_t errlen)
{
    struct brokers_pg *pg = ctx;
    PGconn *c = pg__admin(pg, err, errlen);
    if (!c)
        return -EIO;
    char inst[68], role[68];
    brokers_pg_instance_name(instance_id, inst);
    brokers_pg_binding_name(binding_id, role);
    return pg__drop_login(pg, c, role, inst, inst, err, errlen);
}

static void pg__stop(void *ctx, bool leave_running)
{
    struct brokers_pg *pg = ctx;
    pg->stopping = true;
    uv_timer_stop(&pg->restart);
    if (pg->admin) {
        PQfinish(pg->admin);
        pg->admin = NULL;
    }
    if (leave_running) {
        /* the next skiff-brokers keeps it (pg__running_pid) */
        if (pg->proc) {
            uv_close((uv_handle_t *)pg->proc, (uv_close_cb)free);
            pg->proc = NULL;
        }
    } else if (pg->proc) {
        /* "fast" shutdown: sessions end, data is checkpointed */
        uv_process_kill(pg->proc, SIGINT);
        int status;
        int64_t deadline = time_mono_ms() + 30000;
        while (waitpid(pg->proc->pid, &status, WNOHANG) == 0) {
            if (time_mono_ms() > deadline) {
                uv_process_kill(pg->proc, SIGKILL);
                waitpid(pg->proc->pid, &status, 0);
                break;
            }
            pg__sleep_ms(10);
        }
        pg__forget(pg);
    } else if (pg->adopted_pid > 0 && kill(pg->adopted_pid, SIGINT) == 0) {
        int64_t deadline = time_mono_ms() + 30000;
        while (kill(pg->adopted_pid, 0) == 0 && time_mono_ms() < deadline)
            pg__sleep_ms(10);
    }
    uv_close((uv_handle_t *)&pg->restart, NULL);
}

int brokers_pg_new(uv_loop_t *loop, const struct brokers_config *cfg, struct brokers_backend *out)
{
    struct brokers_pg *pg = xcalloc(1, sizeof *pg);
    pg->loop = loop;
    pg->cfg = cfg;
    pg->root = xasprintf("%s/brokers/postgresql", cfg->home);
    pg->data = xasprintf("%s/data", pg->root);
    pg->sock = xasprintf("%s/run", pg->root);
    pg->log = xasprintf("%s/brokers/postgresql.log", cfg->home);
    pg->pw_path = xasprintf("%s/brokers/postgresql.password", cfg->home);
    if (brokers_run_as("postgres", &pg->uid, &pg->gid) < 0) {
        log_error("PostgreSQL runs as the system user \"postgres\", which does not exist "
                  "(install Debian's postgresql)");
        pg->uid = 65534;
        pg->gid = 65534;
    }
    uv_timer_init(loop, &pg->restart);
    pg->restart.data = pg;
    *out = (struct brokers_backend){
        .name = "postgresql",
        .service_id = "5d6e2f0a-6a1c-4a57-9a0e-2b1f3c4d5e01",
        .plan_id = "5d6e2f0a-6a1c-4a57-9a0e-2b1f3c4d5e02",
        .description = "PostgreSQL 15: a database with its own roles, on the platform's server",
        .plan_description = "a database on the platform's shared PostgreSQL server",
        .tags = "[\"postgresql\", \"relational\", \"sql\"]",
        .ctx = pg,
        .provision = pg__provision,
        .deprovision = pg__deprovision,
        .bind = pg__bind,
        .unbind = pg__unbind,
        .stop = pg__stop,
    };
    /* a server with data serves its instances whether or not a broker call comes */
    if (pg__has_data(pg))
        uv_timer_start(&pg->restart, pg__restart_tick, 0, 0);
    return 0;
}

void brokers_pg_free(struct brokers_backend *be)
{
    struct brokers_pg *pg = be->ctx;
    if (!pg)
        return;
    sodium_memzero(pg->password, sizeof pg->password);
    free(pg->root);
    free(pg->data);
    free(pg->sock);
    free(pg->log);
    free(pg->pw_path);
    free(pg);
    be->ctx = NULL;
}
