/* The SQLite backend of store.h: one connection, WAL mode, prepared on demand. */
#include "store/store.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "store/store_backend.h"

/* One script per schema version (index 0 makes version 1). Append only. */
const char *const store_sqlite_migrations[] = {
    /* 1: the core model */
    "CREATE TABLE apps ("
    "  guid TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, state TEXT NOT NULL,"
    "  kind TEXT NOT NULL DEFAULT 'app', memory_mb INTEGER NOT NULL, disk_mb INTEGER NOT NULL,"
    "  timeout INTEGER NOT NULL, command TEXT, buildpacks TEXT NOT NULL DEFAULT '[]',"
    "  health_check_type TEXT NOT NULL DEFAULT 'port',"
    "  health_check_http_endpoint TEXT NOT NULL DEFAULT '/', function TEXT,"
    "  package_guid TEXT, droplet_guid TEXT, detected_buildpack TEXT,"
    "  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);"
    "CREATE TABLE processes ("
    "  app_guid TEXT NOT NULL REFERENCES apps(guid) ON DELETE CASCADE, type TEXT NOT NULL,"
    "  command TEXT, instances INTEGER NOT NULL, memory_mb INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY (app_guid, type));"
    "CREATE TABLE env_vars ("
    "  app_guid TEXT NOT NULL REFERENCES apps(guid) ON DELETE CASCADE, name TEXT NOT NULL,"
    "  value TEXT NOT NULL, PRIMARY KEY (app_guid, name));"
    "CREATE TABLE packages ("
    "  guid TEXT PRIMARY KEY, app_guid TEXT NOT NULL REFERENCES apps(guid) ON DELETE CASCADE,"
    "  path TEXT NOT NULL, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL);"
    "CREATE TABLE droplets ("
    "  guid TEXT PRIMARY KEY, app_guid TEXT NOT NULL REFERENCES apps(guid) ON DELETE CASCADE,"
    "  path TEXT NOT NULL, buildpack TEXT, process_types TEXT NOT NULL DEFAULT '{}',"
    "  created_at INTEGER NOT NULL);"
    "CREATE TABLE domains (name TEXT PRIMARY KEY, shared INTEGER NOT NULL);"
    "INSERT INTO domains VALUES ('localhost', 1);"
    "CREATE TABLE routes ("
    "  guid TEXT PRIMARY KEY, host TEXT NOT NULL, path TEXT NOT NULL DEFAULT '',"
    "  app_guid TEXT NOT NULL REFERENCES apps(guid) ON DELETE CASCADE,"
    "  domain TEXT NOT NULL REFERENCES domains(name), UNIQUE (host, path));"
    "CREATE INDEX routes_app ON routes(app_guid);",
    /* 2: records of other components (events, mappings) */
    "CREATE TABLE documents ("
    "  kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,"
    "  updated_at INTEGER NOT NULL, PRIMARY KEY (kind, id));",
    /* 3: how the router spreads a route's requests over its backends (docs/bus.md) */
    "ALTER TABLE routes ADD COLUMN balance TEXT NOT NULL DEFAULT 'round-robin';",
    /* 4: apps belong to a space and their names are unique there (auth.h's default space
     * holds the apps made before); rebuilt, as SQLite cannot change a UNIQUE constraint */
    "CREATE TABLE apps_spaced ("
    "  guid TEXT PRIMARY KEY, space_guid TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL,"
    "  kind TEXT NOT NULL DEFAULT 'app', memory_mb INTEGER NOT NULL, disk_mb INTEGER NOT NULL,"
    "  timeout INTEGER NOT NULL, command TEXT, buildpacks TEXT NOT NULL DEFAULT '[]',"
    "  health_check_type TEXT NOT NULL DEFAULT 'port',"
    "  health_check_http_endpoint TEXT NOT NULL DEFAULT '/', function TEXT,"
    "  package_guid TEXT, droplet_guid TEXT, detected_buildpack TEXT,"
    "  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, UNIQUE (space_guid, name));"
    "INSERT INTO apps_spaced (guid, space_guid, name, state, kind, memory_mb, disk_mb, timeout,"
    "  command, buildpacks, health_check_type, health_check_http_endpoint, function,"
    "  package_guid, droplet_guid, detected_buildpack, created_at, updated_at)"
    "  SELECT guid, '" STORE_DEFAULT_SPACE_GUID "', name, state, kind, memory_mb, disk_mb,"
    "  timeout, command, buildpacks, health_check_type, health_check_http_endpoint, function,"
    "  package_guid, droplet_guid, detected_buildpack, created_at, updated_at FROM apps;"
    "DROP TABLE apps;"
    "ALTER TABLE apps_spaced RENAME TO apps;"
    "ALTER TABLE domains ADD COLUMN org_guid TEXT;",
    /* 5: audit events, who changed what (docs/api.md) */
    "CREATE TABLE audit_events ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, type TEXT NOT NULL,"
    "  actor TEXT NOT NULL, actor_guid TEXT, token_guid TEXT, target TEXT,"
    "  space_guid TEXT, org_guid TEXT, detail TEXT NOT NULL DEFAULT '{}');"
    "CREATE INDEX audit_space ON audit_events(space_guid, id);"
    "CREATE INDEX audit_org ON audit_events(org_guid, id);",
    /* 6: each process's scaling policy (store.h's min_instances), as the rules that decided it
     * before it was stored: a function's processes and an app's non-web ones scale to zero */
    "ALTER TABLE processes ADD COLUMN min_instances INTEGER NOT NULL DEFAULT -1;"
    "UPDATE processes SET min_instances = 0 WHERE type != 'web' OR app_guid IN"
    "  (SELECT guid FROM apps WHERE kind = 'function');",
    /* 7: the rest of a process's request scaling policy (store.h's max_instances and on) */
    "ALTER TABLE processes ADD COLUMN max_instances INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE processes ADD COLUMN target_concurrency INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE processes ADD COLUMN target_rps INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE processes ADD COLUMN window_ms INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE processes ADD COLUMN scale_down_delay_ms INTEGER NOT NULL DEFAULT 0;",
    /* 8: functions inside apps: a process type that runs a function of the app's own code
     * keeps what makes it one (store.h's store_process.function_json) */
    "ALTER TABLE processes ADD COLUMN function TEXT;",
    /* 9: one-off tasks run from an app's droplet (store.h's store_task) */
    "CREATE TABLE tasks ("
    "  guid TEXT PRIMARY KEY,"
    "  app_guid TEXT NOT NULL REFERENCES apps(guid) ON DELETE CASCADE,"
    "  sequence_id INTEGER NOT NULL, name TEXT NOT NULL, command TEXT NOT NULL,"
    "  state TEXT NOT NULL, failure_reason TEXT, exit_status INTEGER NOT NULL DEFAULT -1,"
    "  memory_mb INTEGER NOT NULL, disk_mb INTEGER NOT NULL, droplet_guid TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,"
    "  UNIQUE (app_guid, sequence_id));",
    /* 10: each process's health check timing, readiness check and log rate limit
     * (store.h's store_process_checks) */
    "ALTER TABLE processes ADD COLUMN health_check_interval INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE processes ADD COLUMN health_check_invocation_timeout INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE processes ADD COLUMN readiness_type TEXT;"
    "ALTER TABLE processes ADD COLUMN readiness_endpoint TEXT;"
    "ALTER TABLE processes ADD COLUMN readiness_interval INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE processes ADD COLUMN readiness_invocation_timeout INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE processes ADD COLUMN log_rate_limit BIGINT NOT NULL DEFAULT -1;",
    /* 11: sidecars, Cloud Foundry's extra processes in an instance's container (store.h's
     * store_app.sidecars_json) */
    "ALTER TABLE apps ADD COLUMN sidecars TEXT;",
    /* 12: whether `skiff ssh` may enter the app's instances (Cloud Foundry's enable_ssh, on
     * unless turned off: store.h's store_app.ssh_disabled) */
    "ALTER TABLE apps ADD COLUMN ssh_disabled INTEGER NOT NULL DEFAULT 0;",
    /* 13: routes that redirect plain HTTP to HTTPS (store.h's store_route.https_only) */
    "ALTER TABLE routes ADD COLUMN https_only INTEGER NOT NULL DEFAULT 0;",
    /* 14: a function's max_instances has one owner, its scaling policy: a function inside an
     * app takes it from its function document (which no longer holds it), a function app's
     * process gets the default policy (store_process_default_policy) */
    "UPDATE processes SET max_instances = COALESCE(json_extract(function, '$.max_instances'), 10)"
    "  WHERE function IS NOT NULL AND max_instances = 0 AND min_instances >= 0;"
    "UPDATE processes SET function = json_remove(function, '$.max_instances')"
    "  WHERE function IS NOT NULL;"
    "UPDATE processes SET max_instances = 10 WHERE max_instances = 0 AND min_instances >= 0"
    "  AND type = 'web' AND app_guid IN (SELECT guid FROM apps WHERE kind = 'function');"
    "UPDATE processes SET target_concurrency = 100 WHERE max_instances > 0"
    "  AND target_concurrency = 0 AND target_rps = 0;",
    /* 15: what the router speaks to a route's instances, http1 or http2 (docs/bus.md) */
    "ALTER TABLE routes ADD COLUMN protocol TEXT NOT NULL DEFAULT 'http1';",
    /* 16: a domain's own HTTPS certificate and key (store_domain_cert_set), in the store so
     * that every router gets it (before: files under HOME/tls/domains, moved in at start) */
    "CREATE TABLE domain_certs ("
    "  domain TEXT PRIMARY KEY REFERENCES domains(name), cert TEXT NOT NULL, key TEXT NOT NULL,"
    "  updated_at INTEGER NOT NULL);",
    /* 17: row versions, for compare-and-swap updates (store.h's store_app.version) */
    "ALTER TABLE apps ADD COLUMN version INTEGER NOT NULL DEFAULT 1;",
    /* 18: packages and droplets name their blobs (src/blobs: files under HOME/blobs here) */
    "ALTER TABLE packages ADD COLUMN digest TEXT;"
    "ALTER TABLE droplets ADD COLUMN digest TEXT;",
    /* 19: the one token every cell shared (document cell.token/hash) is gone: each cell has
     * its own, scoped to what is placed on it (src/api/cell_tokens.c) */
    "DELETE FROM documents WHERE kind = 'cell.token';",
    /* 20: the further blobs a droplet needs (an image's config and layers), space-separated */
    "ALTER TABLE droplets ADD COLUMN blobs TEXT;",
    /* 21: on PostgreSQL the change feed names each document's kind; SQLite has no feed */
    "SELECT 1;",
    /* 22: on PostgreSQL the change feed names each package and droplet deleted */
    "SELECT 1;",
};
const size_t store_sqlite_migrations_count =
    sizeof store_sqlite_migrations / sizeof store_sqlite_migrations[0];

#define STORE_STMT_CACHE 64

struct store_backend {
    sqlite3 *db;
    int version;
    /* prepared statements by SQL text: parsing SQL was a tenth of listing 1,000 apps */
    struct {
        char *sql;
        sqlite3_stmt *stmt;
    } cache[STORE_STMT_CACHE];
    size_t ncache;
};

static int store__fail(struct store_backend *st, const char *what)
{
    log_error("store: %s: %s", what, sqlite3_errmsg(st->db));
    return -EIO;
}

/* A statement ready to bind and step; give it back with store__release (never finalize). */
static sqlite3_stmt *store__prepare(struct store_backend *st, const char *sql)
{
    bool in_use = false;
    for (size_t i = 0; i < st->ncache; i++) {
        if (strcmp(st->cache[i].sql, sql))
            continue;
        /* a caller iterating with it (store_doc_each's callback) gets a fresh one */
        if (!sqlite3_stmt_busy(st->cache[i].stmt))
            return st->cache[i].stmt;
        in_use = true;
        break;
    }
    sqlite3_stmt *stmt = NULL;
    if (sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, NULL) != SQLITE_OK) {
        store__fail(st, sql);
        return NULL;
    }
    if (!in_use && st->ncache < STORE_STMT_CACHE) {
        st->cache[st->ncache].sql = xstrdup(sql);
        st->cache[st->ncache].stmt = stmt;
        st->ncache++;
    }
    return stmt;
}

/* Resets a statement for its next use (which also ends its read of the database), or
 * finalizes one that did not fit in the cache. */
static void store__release(struct store_backend *st, sqlite3_stmt *stmt)
{
    if (!stmt)
        return;
    for (size_t i = 0; i < st->ncache; i++)
        if (st->cache[i].stmt == stmt) {
            sqlite3_reset(stmt);
            sqlite3_clear_bindings(stmt);
            return;
        }
    sqlite3_finalize(stmt);
}

static void store__bind_text(sqlite3_stmt *stmt, int i, const char *s)
{
    if (s)
        sqlite3_bind_text(stmt, i, s, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(stmt, i);
}

static char *store__col_text(sqlite3_stmt *stmt, int i)
{
    const unsigned char *t = sqlite3_column_text(stmt, i);
    return t ? xstrdup((const char *)t) : NULL;
}

static int store__exec(struct store_backend *st, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(st->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        log_error("store: %s", msg ? msg : "error");
        sqlite3_free(msg);
        return -EIO;
    }
    return 0;
}

/* Runs a single-statement write; returns -EEXIST on a unique constraint. */
static int store__step_done(struct store_backend *st, sqlite3_stmt *stmt)
{
    int rc = sqlite3_step(stmt);
    int ret = 0;
    if (rc == SQLITE_CONSTRAINT)
        ret = -EEXIST;
    else if (rc != SQLITE_DONE)
        ret = store__fail(st, "write");
    store__release(st, stmt);
    return ret;
}

static int sqlite__schema_version(struct store_backend *st)
{
    return st->version;
}

static uint64_t sqlite__change_count(struct store_backend *st)
{
    return (uint64_t)sqlite3_total_changes64(st->db);
}

/* No feed: every change to an SQLite store is made through this process's store. */
static int sqlite__feed_fd(struct store_backend *st)
{
    return -1;
}

static size_t sqlite__feed_take(struct store_backend *st,
                                void (*fn)(void *ctx, const char *app_guid), void *ctx)
{
    return 0;
}

static int store__migrate(struct store_backend *st, char *err, size_t errsize)
{
    if (store__exec(st, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL,"
                        " applied_at INTEGER NOT NULL)") < 0)
        goto fail;
    sqlite3_stmt *q = store__prepare(st, "SELECT COALESCE(MAX(version), 0) FROM schema_version");
    if (!q)
        goto fail;
    int version = 0;
    if (sqlite3_step(q) == SQLITE_ROW)
        version = sqlite3_column_int(q, 0);
    store__release(st, q);
    if ((size_t)version > store_sqlite_migrations_count) {
        snprintf(err, errsize,
                 "the store has schema version %d, newer than this skiffd knows (%zu): run a "
                 "newer skiffd",
                 version, store_sqlite_migrations_count);
        return -EPROTO;
    }
    /* a rebuilt table is dropped and renamed: no cascade may run meanwhile (SQLite's own
     * procedure for schema changes); the check before each commit keeps references whole */
    if (store__exec(st, "PRAGMA foreign_keys=OFF") < 0)
        goto fail;
    for (size_t v = (size_t)version; v < store_sqlite_migrations_count; v++) {
        if (store__exec(st, "BEGIN IMMEDIATE") < 0)
            goto fail;
        if (store__exec(st, store_sqlite_migrations[v]) < 0) {
            store__exec(st, "ROLLBACK");
            snprintf(err, errsize, "schema migration %zu failed: %s", v + 1,
                     sqlite3_errmsg(st->db));
            return -EIO;
        }
        sqlite3_stmt *ins = store__prepare(st, "INSERT INTO schema_version VALUES (?, ?)");
        if (!ins) {
            store__exec(st, "ROLLBACK");
            goto fail;
        }
        sqlite3_bind_int(ins, 1, (int)v + 1);
        sqlite3_bind_int64(ins, 2, time_now_ms());
        if (store__step_done(st, ins) < 0 || store__exec(st, "COMMIT") < 0) {
            store__exec(st, "ROLLBACK");
            goto fail;
        }
        version = (int)v + 1;
    }
    if (store__exec(st, "PRAGMA foreign_keys=ON") < 0)
        goto fail;
    st->version = version;
    return 0;
fail:
    snprintf(err, errsize, "cannot migrate the store: %s", sqlite3_errmsg(st->db));
    return -EIO;
}

static void sqlite__close(struct store_backend *st);

int store_sqlite_open(const char *location, char *err, size_t errsize, struct store_backend **out)
{
    struct store_backend *st = xcalloc(1, sizeof *st);
    if (sqlite3_open_v2(location, &st->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        snprintf(err, errsize, "cannot open the store %s: %s", location,
                 st->db ? sqlite3_errmsg(st->db) : "out of memory");
        goto fail;
    }
    /* domain keys live here (store_domain_cert_set): skiffd's alone; a new file's WAL and
     * shared-memory files take this mode from it */
    if (strcmp(location, ":memory:") != 0 && chmod(location, 0600) < 0)
        log_warning("cannot make the store %s readable by skiffd alone: %s", location,
                    skiff_strerror(-errno));
    sqlite3_busy_timeout(st->db, 5000);
    if (store__exec(st, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                        " PRAGMA foreign_keys=ON;") < 0) {
        snprintf(err, errsize, "cannot set up the store %s: %s", location, sqlite3_errmsg(st->db));
        goto fail;
    }
    int rc = store__migrate(st, err, errsize);
    if (rc < 0) {
        sqlite__close(st);
        return rc;
    }
    *out = st;
    return 0;
fail:
    sqlite__close(st);
    return -EIO;
}

static void sqlite__close(struct store_backend *st)
{
    if (!st)
        return;
    for (size_t i = 0; i < st->ncache; i++) {
        sqlite3_finalize(st->cache[i].stmt);
        free(st->cache[i].sql);
    }
    sqlite3_close(st->db);
    free(st);
}

/* ---- apps ------------------------------------------------------------------------------ */

#define STORE_APP_COLUMNS                                                                          \
    "guid, name, state, kind, memory_mb, disk_mb, timeout, command, buildpacks,"                   \
    " health_check_type, health_check_http_endpoint, function, package_guid, droplet_guid,"        \
    " created_at, updated_at, detected_buildpack, space_guid, sidecars,"                           \
    " ssh_disabled, version"

static void store__bind_app(sqlite3_stmt *stmt, const struct store_app *app)
{
    store__bind_text(stmt, 1, app->guid);
    store__bind_text(stmt, 2, app->name);
    store__bind_text(stmt, 3, app->state ? app->state : "STOPPED");
    store__bind_text(stmt, 4, app->kind ? app->kind : "app");
    sqlite3_bind_int(stmt, 5, app->memory_mb);
    sqlite3_bind_int(stmt, 6, app->disk_mb);
    sqlite3_bind_int(stmt, 7, app->timeout);
    store__bind_text(stmt, 8, app->command);
    store__bind_text(stmt, 9, app->buildpacks_json ? app->buildpacks_json : "[]");
    store__bind_text(stmt, 10, app->health_check_type ? app->health_check_type : "port");
    store__bind_text(stmt, 11,
                     app->health_check_http_endpoint ? app->health_check_http_endpoint : "/");
    store__bind_text(stmt, 12, app->function_json);
    store__bind_text(stmt, 13, app->package_guid);
    store__bind_text(stmt, 14, app->droplet_guid);
    sqlite3_bind_int64(stmt, 15, app->created_at);
    sqlite3_bind_int64(stmt, 16, app->updated_at);
    store__bind_text(stmt, 17, app->detected_buildpack);
    store__bind_text(stmt, 18, app->space_guid[0] ? app->space_guid : STORE_DEFAULT_SPACE_GUID);
    store__bind_text(stmt, 19, app->sidecars_json);
    sqlite3_bind_int(stmt, 20, app->ssh_disabled);
    sqlite3_bind_int64(stmt, 21, app->version > 0 ? app->version : 1);
}

static struct store_app *store__read_app(sqlite3_stmt *stmt)
{
    struct store_app *app = xcalloc(1, sizeof *app);
    snprintf(app->guid, sizeof app->guid, "%s", (const char *)sqlite3_column_text(stmt, 0));
    app->name = store__col_text(stmt, 1);
    app->state = store__col_text(stmt, 2);
    app->kind = store__col_text(stmt, 3);
    app->memory_mb = sqlite3_column_int(stmt, 4);
    app->disk_mb = sqlite3_column_int(stmt, 5);
    app->timeout = sqlite3_column_int(stmt, 6);
    app->command = store__col_text(stmt, 7);
    app->buildpacks_json = store__col_text(stmt, 8);
    app->health_check_type = store__col_text(stmt, 9);
    app->health_check_http_endpoint = store__col_text(stmt, 10);
    app->function_json = store__col_text(stmt, 11);
    app->package_guid = store__col_text(stmt, 12);
    app->droplet_guid = store__col_text(stmt, 13);
    app->created_at = sqlite3_column_int64(stmt, 14);
    app->updated_at = sqlite3_column_int64(stmt, 15);
    app->detected_buildpack = store__col_text(stmt, 16);
    app->sidecars_json = store__col_text(stmt, 18);
    app->ssh_disabled = sqlite3_column_int(stmt, 19) != 0;
    app->version = sqlite3_column_int64(stmt, 20);
    const unsigned char *space = sqlite3_column_text(stmt, 17);
    snprintf(app->space_guid, sizeof app->space_guid, "%s", space ? (const char *)space : "");
    return app;
}

static int store__write_children(struct store_backend *st, const struct store_app *app)
{
    sqlite3_stmt *del = store__prepare(st, "DELETE FROM processes WHERE app_guid = ?");
    if (!del)
        return -EIO;
    sqlite3_bind_text(del, 1, app->guid, -1, SQLITE_STATIC);
    if (store__step_done(st, del) < 0)
        return -EIO;
    del = store__prepare(st, "DELETE FROM env_vars WHERE app_guid = ?");
    if (!del)
        return -EIO;
    sqlite3_bind_text(del, 1, app->guid, -1, SQLITE_STATIC);
    if (store__step_done(st, del) < 0)
        return -EIO;
    for (size_t i = 0; i < app->n_processes; i++) {
        const struct store_process *p = &app->processes[i];
        sqlite3_stmt *ins =
            store__prepare(st, "INSERT INTO processes (app_guid, type, command,"
                               " instances, memory_mb, min_instances" STORE_PROCESS_POLICY_COLUMNS
                               ", function" STORE_PROCESS_CHECK_COLUMNS ")"
                               " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
        if (!ins)
            return -EIO;
        sqlite3_bind_text(ins, 1, app->guid, -1, SQLITE_STATIC);
        store__bind_text(ins, 2, p->type);
        store__bind_text(ins, 3, p->command);
        sqlite3_bind_int(ins, 4, p->instances);
        sqlite3_bind_int(ins, 5, p->memory_mb);
        sqlite3_bind_int(ins, 6, p->min_instances < 0 ? STORE_SCALE_MANUAL : p->min_instances);
        sqlite3_bind_int(ins, 7, p->max_instances);
        sqlite3_bind_int(ins, 8, p->target_concurrency);
        sqlite3_bind_int(ins, 9, p->target_rps);
        sqlite3_bind_int(ins, 10, p->window_ms);
        sqlite3_bind_int(ins, 11, p->scale_down_delay_ms);
        store__bind_text(ins, 12, p->function_json);
        const struct store_process_checks *c = &p->checks;
        sqlite3_bind_int(ins, 13, c->health_interval_s);
        sqlite3_bind_int(ins, 14, c->health_timeout_s);
        store__bind_text(ins, 15, c->readiness_type);
        store__bind_text(ins, 16, c->readiness_endpoint);
        sqlite3_bind_int(ins, 17, c->readiness_interval_s);
        sqlite3_bind_int(ins, 18, c->readiness_timeout_s);
        sqlite3_bind_int64(ins, 19, c->log_rate_limited ? c->log_rate_limit : -1);
        int rc = store__step_done(st, ins);
        if (rc < 0)
            return rc;
    }
    for (size_t i = 0; i < app->n_env; i++) {
        sqlite3_stmt *ins = store__prepare(st, "INSERT INTO env_vars VALUES (?, ?, ?)");
        if (!ins)
            return -EIO;
        sqlite3_bind_text(ins, 1, app->guid, -1, SQLITE_STATIC);
        store__bind_text(ins, 2, app->env[i].name);
        store__bind_text(ins, 3, app->env[i].value ? app->env[i].value : "");
        int rc = store__step_done(st, ins);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* After an update that changed no row: -ESTALE when the app is there (at another version),
 * -ENOENT when it is not. */
static int store__app_missed(struct store_backend *st, const char *guid)
{
    sqlite3_stmt *q = store__prepare(st, "SELECT 1 FROM apps WHERE guid = ?");
    if (!q)
        return -EIO;
    sqlite3_bind_text(q, 1, guid, -1, SQLITE_STATIC);
    int step = sqlite3_step(q);
    int rc = step == SQLITE_ROW    ? -ESTALE
             : step == SQLITE_DONE ? -ENOENT
                                   : store__fail(st, "read app");
    store__release(st, q);
    return rc;
}

/* Create: inserts at version 1. Update: only the row still at app->version, raising it. */
static int store__app_write(struct store_backend *st, struct store_app *app, bool create)
{
    if (store__exec(st, "BEGIN IMMEDIATE") < 0)
        return -EIO;
    sqlite3_stmt *stmt = store__prepare(
        st, create ? "INSERT INTO apps (" STORE_APP_COLUMNS
                     ") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,1)"
                   : "UPDATE apps SET name=?2, state=?3, kind=?4, memory_mb=?5, disk_mb=?6,"
                     " timeout=?7, command=?8, buildpacks=?9, health_check_type=?10,"
                     " health_check_http_endpoint=?11, function=?12, package_guid=?13,"
                     " droplet_guid=?14, created_at=?15, updated_at=?16, detected_buildpack=?17,"
                     " space_guid=?18, sidecars=?19, ssh_disabled=?20, version=version+1"
                     " WHERE guid=?1 AND version=?21");
    int rc = -EIO;
    if (!stmt)
        goto fail;
    store__bind_app(stmt, app);
    rc = store__step_done(st, stmt);
    if (rc < 0)
        goto fail;
    if (!create && sqlite3_changes(st->db) == 0) {
        rc = store__app_missed(st, app->guid);
        goto fail;
    }
    rc = store__write_children(st, app);
    if (rc < 0)
        goto fail;
    if (store__exec(st, "COMMIT") < 0) {
        rc = -EIO;
        goto fail;
    }
    if (!create)
        app->version++;
    return 0;
fail:
    store__exec(st, "ROLLBACK");
    return rc;
}

static int sqlite__app_create(struct store_backend *st, struct store_app *app)
{
    return store__app_write(st, app, true);
}

static int sqlite__app_update(struct store_backend *st, struct store_app *app)
{
    return store__app_write(st, app, false);
}

/* Appends the process in the row's columns from col on: type, command, instances, memory_mb,
 * min_instances, the policy columns, function, the check columns. */
static void store__add_process(struct store_app *app, sqlite3_stmt *q, int col)
{
    app->processes = xrealloc(app->processes, (app->n_processes + 1) * sizeof *app->processes);
    struct store_process *p = &app->processes[app->n_processes++];
    p->type = store__col_text(q, col);
    p->command = store__col_text(q, col + 1);
    p->instances = sqlite3_column_int(q, col + 2);
    p->memory_mb = sqlite3_column_int(q, col + 3);
    p->min_instances = sqlite3_column_int(q, col + 4);
    p->max_instances = sqlite3_column_int(q, col + 5);
    p->target_concurrency = sqlite3_column_int(q, col + 6);
    p->target_rps = sqlite3_column_int(q, col + 7);
    p->window_ms = sqlite3_column_int(q, col + 8);
    p->scale_down_delay_ms = sqlite3_column_int(q, col + 9);
    p->function_json = store__col_text(q, col + 10);
    struct store_process_checks *c = &p->checks;
    c->health_interval_s = sqlite3_column_int(q, col + 11);
    c->health_timeout_s = sqlite3_column_int(q, col + 12);
    c->readiness_type = store__col_text(q, col + 13);
    c->readiness_endpoint = store__col_text(q, col + 14);
    c->readiness_interval_s = sqlite3_column_int(q, col + 15);
    c->readiness_timeout_s = sqlite3_column_int(q, col + 16);
    c->log_rate_limit = sqlite3_column_int64(q, col + 17);
    c->log_rate_limited = c->log_rate_limit >= 0;
}

/* Appends the variable in the row's columns from col on: name, value. */
static void store__add_env(struct store_app *app, sqlite3_stmt *q, int col)
{
    app->env = xrealloc(app->env, (app->n_env + 1) * sizeof *app->env);
    app->env[app->n_env].name = store__col_text(q, col);
    app->env[app->n_env].value = store__col_text(q, col + 1);
    app->n_env++;
}

/* Ends a read loop: 0 when q stepped to its end, else -EIO (reported) for the step that failed
 * (a table gone, a corrupt page, a busy database). Releases q either way. */
static int store__read_done(struct store_backend *st, sqlite3_stmt *q, int step_rc,
                            const char *what)
{
    int rc = step_rc == SQLITE_DONE ? 0 : store__fail(st, what);
    store__release(st, q);
    return rc;
}

/* Adds the app's processes and env; -EIO when either query fails (app then half-filled: the
 * caller frees it). */
static int store__app_load_children(struct store_backend *st, struct store_app *app)
{
    sqlite3_stmt *q = store__prepare(st, "SELECT type, command, instances, memory_mb,"
                                         " min_instances" STORE_PROCESS_POLICY_COLUMNS
                                         ", function" STORE_PROCESS_CHECK_COLUMNS
                                         " FROM processes WHERE app_guid = ?"
                                         " ORDER BY type != 'web', type");
    int step;
    if (!q)
        return -EIO;
    sqlite3_bind_text(q, 1, app->guid, -1, SQLITE_STATIC);
    while ((step = sqlite3_step(q)) == SQLITE_ROW)
        store__add_process(app, q, 0);
    if (store__read_done(st, q, step, "read processes") < 0)
        return -EIO;
    q = store__prepare(st, "SELECT name, value FROM env_vars WHERE app_guid = ? ORDER BY name");
    if (!q)
        return -EIO;
    sqlite3_bind_text(q, 1, app->guid, -1, SQLITE_STATIC);
    while ((step = sqlite3_step(q)) == SQLITE_ROW)
        store__add_env(app, q, 0);
    return store__read_done(st, q, step, "read env");
}

static int sqlite__app_get(struct store_backend *st, const char *ref, struct store_app **out)
{
    /* "SPACE/NAME", a guid, or a name in the default space */
    char space[37];
    const char *name = store_ref_split(ref, space);
    sqlite3_stmt *q = store__prepare(st, "SELECT " STORE_APP_COLUMNS " FROM apps WHERE guid = ?1"
                                         " UNION ALL SELECT " STORE_APP_COLUMNS " FROM apps"
                                         " WHERE space_guid = ?2 AND name = ?3 LIMIT 1");
    if (!q)
        return -EIO;
    sqlite3_bind_text(q, 1, ref, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, space, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(q, 3, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(q);
    if (rc != SQLITE_ROW) {
        if (rc == SQLITE_DONE) {
            store__release(st, q);
            return -ENOENT;
        }
        return store__read_done(st, q, rc, "read app");
    }
    struct store_app *app = store__read_app(q);
    store__release(st, q);
    rc = store__app_load_children(st, app);
    if (rc < 0) {
        store_app_free(app);
        return rc;
    }
    *out = app;
    return 0;
}

static int store__cmp_guid(const void *a, const void *b)
{
    const struct store_app *const *x = a, *const *y = b;
    return strcmp((*x)->guid, (*y)->guid);
}

static void store__web_first(struct store_app *app)
{
    for (size_t i = 1; i < app->n_processes; i++) {
        if (strcmp(app->processes[i].type, "web"))
            continue;
        struct store_process web = app->processes[i];
        memmove(&app->processes[1], &app->processes[0], i * sizeof *app->processes);
        app->processes[0] = web;
        return;
    }
}

/* The app whose guid is in the row's first column, walking *i forward through by_guid (apps in
 * guid order, as the rows come); NULL when the row belongs to no listed app. */
static struct store_app *store__row_owner(struct store_app **by_guid, size_t count, size_t *i,
                                          sqlite3_stmt *q)
{
    const char *guid = (const char *)sqlite3_column_text(q, 0);
    while (*i < count && strcmp(by_guid[*i]->guid, guid) < 0)
        (*i)++;
    return *i < count && strcmp(by_guid[*i]->guid, guid) == 0 ? by_guid[*i] : NULL;
}

/* Loads all apps with three queries (not one per app), so listing 1,000 apps stays fast. */
static int sqlite__app_list_in(struct store_backend *st, const char *space_guid,
                               struct store_app ***out, size_t *n)
{
    struct store_app **apps = NULL, **by_guid = NULL;
    size_t count = 0;
    int step;
    /* one space's: through the (space_guid, name) index, and only its apps' children */
    sqlite3_stmt *q = store__prepare(
        st, space_guid ? "SELECT " STORE_APP_COLUMNS " FROM apps WHERE space_guid = ?1"
                         " ORDER BY name"
                       : "SELECT " STORE_APP_COLUMNS " FROM apps ORDER BY name, space_guid");
    if (!q)
        return -EIO;
    if (space_guid)
        store__bind_text(q, 1, space_guid);
    while ((step = sqlite3_step(q)) == SQLITE_ROW) {
        apps = xrealloc(apps, (count + 1) * sizeof *apps);
        apps[count++] = store__read_app(q);
    }
    if (store__read_done(st, q, step, "list apps") < 0)
        goto fail;
    /* children come in primary-key order (app guid first, so SQLite sorts nothing) and are
     * matched to apps walking a guid-ordered index beside them */
    by_guid = xcalloc(count + 1, sizeof *by_guid);
    if (count)
        memcpy(by_guid, apps, count * sizeof *apps);
    qsort(by_guid, count, sizeof *by_guid, store__cmp_guid);
    q = store__prepare(st, space_guid ? "SELECT app_guid, type, command, instances, memory_mb,"
                                        " min_instances" STORE_PROCESS_POLICY_COLUMNS
                                        ", function" STORE_PROCESS_CHECK_COLUMNS
                                        " FROM processes WHERE app_guid IN"
                                        " (SELECT guid FROM apps WHERE space_guid = ?1)"
                                        " ORDER BY app_guid, type"
                                      : "SELECT app_guid, type, command, instances, memory_mb,"
                                        " min_instances" STORE_PROCESS_POLICY_COLUMNS
                                        ", function" STORE_PROCESS_CHECK_COLUMNS
                                        " FROM processes ORDER BY app_guid, type");
    if (!q)
        goto fail;
    if (space_guid)
        store__bind_text(q, 1, space_guid);
    size_t i = 0;
    struct store_app *app;
    while ((step = sqlite3_step(q)) == SQLITE_ROW)
        if ((app = store__row_owner(by_guid, count, &i, q)))
            store__add_process(app, q, 1);
    if (store__read_done(st, q, step, "list processes") < 0)
        goto fail;
    q = store__prepare(st, space_guid ? "SELECT app_guid, name, value FROM env_vars WHERE"
                                        " app_guid IN (SELECT guid FROM apps WHERE space_guid"
                                        " = ?1) ORDER BY app_guid, name"
                                      : "SELECT app_guid, name, value FROM env_vars ORDER BY"
                                        " app_guid, name");
    if (!q)
        goto fail;
    if (space_guid)
        store__bind_text(q, 1, space_guid);
    i = 0;
    while ((step = sqlite3_step(q)) == SQLITE_ROW)
        if ((app = store__row_owner(by_guid, count, &i, q)))
            store__add_env(app, q, 1);
    if (store__read_done(st, q, step, "list env") < 0)
        goto fail;
    free(by_guid);
    /* "web" first, as store_app_get gives them */
    for (size_t a = 0; a < count; a++)
        store__web_first(apps[a]);
    *out = apps;
    *n = count;
    return 0;
fail:
    free(by_guid);
    store_app_list_free(apps, count);
    return -EIO;
}

static int sqlite__app_delete(struct store_backend *st, const char *guid)
{
    sqlite3_stmt *q = store__prepare(st, "DELETE FROM apps WHERE guid = ?");
    if (!q)
        return -EIO;
    sqlite3_bind_text(q, 1, guid, -1, SQLITE_STATIC);
    int rc = store__step_done(st, q);
    if (rc == 0 && sqlite3_changes(st->db) == 0)
        return -ENOENT;
    return rc;
}

/* ---- routes and domains ------------------------------------------------------------------ */

static int sqlite__route_add(struct store_backend *st, const struct store_route *route)
{
    sqlite3_stmt *q =
        store__prepare(st, "INSERT INTO routes (guid, host, path, app_guid, domain, balance, "
                           "https_only, protocol) VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
    if (!q)
        return -EIO;
    store__bind_text(q, 1, route->guid);
    store__bind_text(q, 2, route->host);
    store__bind_text(q, 3, route->path ? route->path : "");
    store__bind_text(q, 4, route->app_guid);
    store__bind_text(q, 5, route->domain);
    store__bind_text(q, 6, route->balance ? route->balance : "round-robin");
    sqlite3_bind_int(q, 7, route->https_only ? 1 : 0);
    store__bind_text(q, 8, route->protocol ? route->protocol : "http1");
    return store__step_done(st, q);
}

static int sqlite__route_set_https_only(struct store_backend *st, const char *host,
                                        const char *path, bool on)
{
    sqlite3_stmt *q =
        store__prepare(st, "UPDATE routes SET https_only = ? WHERE host = ? AND path = ?");
    if (!q)
        return -EIO;
    sqlite3_bind_int(q, 1, on ? 1 : 0);
    store__bind_text(q, 2, host);
    store__bind_text(q, 3, path ? path : "");
    int rc = store__step_done(st, q);
    if (rc == 0 && sqlite3_changes(st->db) == 0)
        return -ENOENT;
    return rc;
}

static int sqlite__route_update(struct store_backend *st, const char *host, const char *path,
                                const char *balance, const char *protocol)
{
    sqlite3_stmt *q = store__prepare(st, "UPDATE routes SET balance = COALESCE(?, balance), "
                                         "protocol = COALESCE(?, protocol) "
                                         "WHERE host = ? AND path = ?");
    if (!q)
        return -EIO;
    store__bind_text(q, 1, balance);
    store__bind_text(q, 2, protocol);
    store__bind_text(q, 3, host);
    store__bind_text(q, 4, path ? path : "");
    int rc = store__step_done(st, q);
    if (rc == 0 && sqlite3_changes(st->db) == 0)
        return -ENOENT;
    return rc;
}

static int sqlite__route_delete(struct store_backend *st, const char *host, const char *path)
{
    sqlite3_stmt *q = store__prepare(st, "DELETE FROM routes WHERE host = ? AND path = ?");
    if (!q)
        return -EIO;
    store__bind_text(q, 1, host);
    store__bind_text(q, 2, path ? path : "");
    int rc = store__step_done(st, q);
    if (rc == 0 && sqlite3_changes(st->db) == 0)
        return -ENOENT;
    return rc;
}

static int sqlite__route_list(struct store_backend *st, const char *app_guid,
                              struct store_route **out, size_t *n)
{
    sqlite3_stmt *q = store__prepare(
        st, app_guid ? "SELECT guid, host, path, app_guid, domain, balance, https_only, protocol "
                       "FROM routes WHERE app_guid = ? ORDER BY host, path"
                     : "SELECT guid, host, path, app_guid, domain, balance, https_only, protocol "
                       "FROM routes ORDER BY host, path");
    if (!q)
        return -EIO;
    if (app_guid)
        sqlite3_bind_text(q, 1, app_guid, -1, SQLITE_STATIC);
    struct store_route *routes = NULL;
    size_t count = 0;
    int step;
    while ((step = sqlite3_step(q)) == SQLITE_ROW) {
        routes = xrealloc(routes, (count + 1) * sizeof *routes);
        struct store_route *r = &routes[count++];
        snprintf(r->guid, sizeof r->guid, "%s", (const char *)sqlite3_column_text(q, 0));
        r->host = store__col_text(q, 1);
        r->path = store__col_text(q, 2);
        r->app_guid = store__col_text(q, 3);
        r->domain = store__col_text(q, 4);
        r->balance = store__col_text(q, 5);
        r->https_only = sqlite3_column_int(q, 6) != 0;
        r->protocol = store__col_text(q, 7);
    }
    if (store__read_done(st, q, step, "list routes") < 0) {
        store_route_list_free(routes, count);
        return -EIO;
    }
    *out = routes;
    *n = count;
    return 0;
}

static int sqlite__domain_add(struct store_backend *st, const char *name, const char *org_guid)
{
    sqlite3_stmt *q =
        store__prepare(st, "INSERT INTO domains (name, shared, org_guid) VALUES (?, ?, ?)");
    if (!q)
        return -EIO;
    store__bind_text(q, 1, name);
    sqlite3_bind_int(q, 2, org_guid == NULL);
    store__bind_text(q, 3, org_guid);
    return store__step_done(st, q);
}

static int sqlite__domain_delete(struct store_backend *st, const char *name)
{
    sqlite3_stmt *q = store__prepare(st, "DELETE FROM domains WHERE name = ?");
    if (!q)
        return -EIO;
    store__bind_text(q, 1, name);
    int rc = store__step_done(st, q);
    if (rc == 0 && sqlite3_changes(st->db) == 0)
        return -ENOENT;
    return rc;
}

static int sqlite__domain_cert_set(struct store_backend *st, const char *domain,
                                   const char *cert_pem, const char *key_pem)
{
    sqlite3_stmt *q = store__prepare(
        st, "INSERT INTO domain_certs (domain, cert, key, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(domain) DO UPDATE SET cert = excluded.cert, key = excluded.key,"
            " updated_at = excluded.updated_at");
    if (!q)
        return -EIO;
    store__bind_text(q, 1, domain);
    store__bind_text(q, 2, cert_pem);
    store__bind_text(q, 3, key_pem);
    sqlite3_bind_int64(q, 4, time_now_ms());
    return store__step_done(st, q);
}

static int sqlite__domain_cert_get(struct store_backend *st, const char *domain, char **cert_pem,
                                   char **key_pem)
{
    sqlite3_stmt *q = store__prepare(st, "SELECT cert, key FROM domain_certs WHERE domain = ?");
    if (!q)
        return -EIO;
    store__bind_text(q, 1, domain);
    int step = sqlite3_step(q);
    if (step == SQLITE_ROW) {
        *cert_pem = store__col_text(q, 0);
        if (key_pem)
            *key_pem = store__col_text(q, 1);
    }
    if (step == SQLITE_ROW) {
        store__release(st, q);
        return 0;
    }
    return store__read_done(st, q, step, "read a certificate") < 0 ? -EIO : -ENOENT;
}

static int sqlite__domain_cert_delete(struct store_backend *st, const char *domain)
{
    sqlite3_stmt *q = store__prepare(st, "DELETE FROM domain_certs WHERE domain = ?");
    if (!q)
        return -EIO;
    store__bind_text(q, 1, domain);
    int rc = store__step_done(st, q);
    if (rc == 0 && sqlite3_changes(st->db) == 0)
        return -ENOENT;
    return rc;
}

static int sqlite__domain_cert_list(struct store_backend *st, char ***domains)
{
    sqlite3_stmt *q = store__prepare(st, "SELECT domain FROM domain_certs ORDER BY domain");
    if (!q)
        return -EIO;
    char **v = xcalloc(1, sizeof *v);
    size_t n = 0;
    int step;
    while ((step = sqlite3_step(q)) == SQLITE_ROW) {
        v = xrealloc(v, (n + 2) * sizeof *v);
        v[n++] = store__col_text(q, 0);
        v[n] = NULL;
    }
    if (store__read_done(st, q, step, "list certificates") < 0) {
        strv_free(v);
        return -EIO;
    }
    *domains = v;
    return 0;
}

static int sqlite__domain_list(struct store_backend *st, char ***names, bool **shared,
                               char ***org_guids)
{
    sqlite3_stmt *q =
        store__prepare(st, "SELECT name, shared, org_guid FROM domains ORDER BY name");
    if (!q)
        return -EIO;
    char **v = xcalloc(1, sizeof *v);
    char **o = xcalloc(1, sizeof *o);
    bool *s = xcalloc(1, sizeof *s);
    size_t n = 0;
    int step;
    while ((step = sqlite3_step(q)) == SQLITE_ROW) {
        v = xrealloc(v, (n + 2) * sizeof *v);
        o = xrealloc(o, (n + 2) * sizeof *o);
        s = xrealloc(s, (n + 1) * sizeof *s);
        v[n] = store__col_text(q, 0);
        s[n] = sqlite3_column_int(q, 1) != 0;
        o[n] = store__col_text(q, 2);
        if (!o[n])
            o[n] = xstrdup("");
        v[++n] = NULL;
        o[n] = NULL;
    }
    if (store__read_done(st, q, step, "list domains") < 0) {
        strv_free(v);
        strv_free(o);
        free(s);
        return -EIO;
    }
    *names = v;
    if (shared)
        *shared = s;
    else
        free(s);
    if (org_guids)
        *org_guids = o;
    else
        strv_free(o);
    return 0;
}

/* ---- packages and droplets --------------------------------------------------------------- */

static int sqlite__package_add(struct store_backend *st, const struct store_package *pkg)
{
    sqlite3_stmt *q = store__prepare(st, "INSERT INTO packages (guid, app_guid, path, bytes,"
                                         " created_at, digest) VALUES (?, ?, ?, ?, ?, ?)");
    if (!q)
        return -EIO;
    store__bind_text(q, 1, pkg->guid);
    store__bind_text(q, 2, pkg->app_guid);
    store__bind_text(q, 3, pkg->path);
    sqlite3_bind_int64(q, 4, (sqlite3_int64)pkg->bytes);
    sqlite3_bind_int64(q, 5, pkg->created_at);
    store__bind_text(q, 6, pkg->digest);
    return store__step_done(st, q);
}

static int sqlite__package_get(struct store_backend *st, const char *guid,
                               struct store_package **out)
{
    sqlite3_stmt *q = store__prepare(
        st, "SELECT guid, app_guid, path, bytes, created_at, digest FROM packages WHERE guid = ?");
    if (!q)
        return -EIO;
    sqlite3_bind_text(q, 1, guid, -1, SQLITE_STATIC);
    int rc = -ENOENT;
    if (sqlite3_step(q) == SQLITE_ROW) {
        struct store_package *p = xcalloc(1, sizeof *p);
        snprintf(p->guid, sizeof p->guid, "%s", (const char *)sqlite3_column_text(q, 0));
        p->app_guid = store__col_text(q, 1);
        p->path = store__col_text(q, 2);
        p->bytes = (uint64_t)sqlite3_column_int64(q, 3);
        p->created_at = sqlite3_column_int64(q, 4);
        p->digest = store__col_text(q, 5);
        *out = p;
        rc = 0;
    }
    store__release(st, q);
    return rc;
}

static int sqlite__droplet_add(struct store_backend *st, const struct store_droplet *drop)
{
    sqlite3_stmt *q = store__prepare(st, "INSERT INTO droplets (guid, app_guid, path, buildpack,"
                                         " process_types, created_at, digest, blobs)"
                                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
    if (!q)
        return -EIO;
    store__bind_text(q, 1, drop->guid);
    store__bind_text(q, 2, drop->app_guid);
    store__bind_text(q, 3, drop->path);
    store__bind_text(q, 4, drop->buildpack);
    store__bind_text(q, 5, drop->process_types_json ? drop->process_types_json : "{}");
    sqlite3_bind_int64(q, 6, drop->created_at);
    store__bind_text(q, 7, drop->digest);
    store__bind_text(q, 8, drop->blobs);
    return store__step_done(st, q);
}

static int sqlite__droplet_get(struct store_backend *st, const char *guid,
                               struct store_droplet **out)
{
    sqlite3_stmt *q = store__prepare(st, "SELECT guid, app_guid, path, buildpack, process_types,"
                                         " created_at, digest, blobs FROM droplets WHERE guid = ?");
    if (!q)
        return -EIO;
    sqlite3_bind_text(q, 1, guid, -1, SQLITE_STATIC);
    int rc = -ENOENT;
    if (sqlite3_step(q) == SQLITE_ROW) {
        struct store_droplet *d = xcalloc(1, sizeof *d);
        snprintf(d->guid, sizeof d->guid, "%s", (const char *)sqlite3_column_text(q, 0));
        d->app_guid = store__col_text(q, 1);
        d->path = store__col_text(q, 2);
        d->buildpack = store__col_text(q, 3);
        d->process_types_json = store__col_text(q, 4);
        d->created_at = sqlite3_column_int64(q, 5);
        d->digest = store__col_text(q, 6);
        d->blobs = store__col_text(q, 7);
        *out = d;
        rc = 0;
    }
    store__release(st, q);
    return rc;
}

static int sqlite__droplet_delete(struct store_backend *st, const char *guid)
{
    sqlite3_stmt *q = store__prepare(st, "DELETE FROM droplets WHERE guid = ?");
    if (!q)
        return -EIO;
    sqlite3_bind_text(q, 1, guid, -1, SQLITE_STATIC);
    int rc = store__step_done(st, q);
    if (rc == 0 && sqlite3_changes(st->db) == 0)
        rc = -ENOENT;
    return rc;
}

static int store__prune(struct store_backend *st, const char *table, const char *app_guid,
                        const char *keep, char ***paths, size_t *n)
{
    char *sql =
        xasprintf("SELECT path FROM %s WHERE app_guid = ?1 AND guid != COALESCE(?2, '')", table);
    sqlite3_stmt *q = store__prepare(st, sql);
    free(sql);
    if (!q)
        return -EIO;
    sqlite3_bind_text(q, 1, app_guid, -1, SQLITE_STATIC);
    store__bind_text(q, 2, keep);
    while (sqlite3_step(q) == SQLITE_ROW) {
        *paths = xrealloc(*paths, (*n + 2) * sizeof **paths);
        (*paths)[(*n)++] = store__col_text(q, 0);
        (*paths)[*n] = NULL;
    }
    store__release(st, q);
    sql = xasprintf("DELETE FROM %s WHERE app_guid = ?1 AND guid != COALESCE(?2, '')", table);
    q = store__prepare(st, sql);
    free(sql);
    if (!q)
        return -EIO;
    sqlite3_bind_text(q, 1, app_guid, -1, SQLITE_STATIC);
    store__bind_text(q, 2, keep);
    return store__step_done(st, q);
}

static int sqlite__app_prune_artifacts(struct store_backend *st, const char *app_guid,
                                       const char *keep_package, const char *keep_droplet,
                                       char ***paths)
{
    char **v = xcalloc(1, sizeof *v);
    size_t n = 0;
    int rc = store__prune(st, "packages", app_guid, keep_package, &v, &n);
    if (rc == 0 && keep_droplet)
        rc = store__prune(st, "droplets", app_guid, keep_droplet, &v, &n);
    *paths = v;
    return rc;
}

static int sqlite__blob_refs(struct store_backend *st, char ***digests)
{
    sqlite3_stmt *q =
        store__prepare(st, "SELECT digest FROM packages WHERE digest IS NOT NULL"
                           " UNION SELECT digest FROM droplets WHERE digest IS NOT NULL"
                           " UNION SELECT blobs FROM droplets WHERE blobs IS NOT NULL");
    if (!q)
        return -EIO;
    char **v = xcalloc(1, sizeof *v);
    size_t n = 0;
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        v = xrealloc(v, (n + 2) * sizeof *v);
        v[n++] = store__col_text(q, 0);
        v[n] = NULL;
    }
    store__release(st, q);
    if (rc != SQLITE_DONE) {
        strv_free(v);
        return -EIO;
    }
    *digests = v;
    return 0;
}

/* ---- audit events ------------------------------------------------------------------------- */

static int sqlite__audit_add(struct store_backend *st, const struct store_audit_event *ev)
{
    sqlite3_stmt *q = store__prepare(st, "INSERT INTO audit_events (at, type, actor, actor_guid,"
                                         " token_guid, target, space_guid, org_guid, detail)"
                                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)");
    if (!q)
        return -EIO;
    sqlite3_bind_int64(q, 1, ev->at);
    store__bind_text(q, 2, ev->type);
    store__bind_text(q, 3, ev->actor);
    store__bind_text(q, 4, ev->actor_guid);
    store__bind_text(q, 5, ev->token_guid);
    store__bind_text(q, 6, ev->target);
    store__bind_text(q, 7, ev->space_guid);
    store__bind_text(q, 8, ev->org_guid);
    store__bind_text(q, 9, ev->detail ? ev->detail : "{}");
    int rc = store__step_done(st, q);
    if (rc < 0)
        return rc;
    /* the newest STORE_AUDIT_KEEP are kept: a busy or hostile caller cannot fill the disk */
    sqlite3_int64 id = sqlite3_last_insert_rowid(st->db);
    if (id % 1000 == 0) {
        q = store__prepare(st, "DELETE FROM audit_events WHERE id <= ?");
        if (!q)
            return -EIO;
        sqlite3_bind_int64(q, 1, id - STORE_AUDIT_KEEP);
        return store__step_done(st, q);
    }
    return 0;
}

static int sqlite__audit_list(struct store_backend *st, const char *space_guid,
                              const char *org_guid, const char *target, int64_t before_id,
                              size_t limit, struct store_audit_event **out, size_t *n)
{
    sqlite3_stmt *q = store__prepare(
        st, "SELECT id, at, type, actor, actor_guid, token_guid, target, space_guid, org_guid,"
            " detail FROM audit_events WHERE (?1 IS NULL OR space_guid = ?1)"
            " AND (?2 IS NULL OR org_guid = ?2) AND (?3 IS NULL OR target = ?3)"
            " AND (?4 <= 0 OR id < ?4) ORDER BY id DESC LIMIT ?5");
    if (!q)
        return -EIO;
    store__bind_text(q, 1, space_guid);
    store__bind_text(q, 2, org_guid);
    store__bind_text(q, 3, target);
    sqlite3_bind_int64(q, 4, before_id);
    sqlite3_bind_int64(q, 5, (sqlite3_int64)limit);
    struct store_audit_event *list = NULL;
    size_t count = 0;
    int step;
    while ((step = sqlite3_step(q)) == SQLITE_ROW) {
        list = xrealloc(list, (count + 1) * sizeof *list);
        struct store_audit_event *e = &list[count++];
        e->id = sqlite3_column_int64(q, 0);
        e->at = sqlite3_column_int64(q, 1);
        e->type = store__col_text(q, 2);
        e->actor = store__col_text(q, 3);
        e->actor_guid = store__col_text(q, 4);
        e->token_guid = store__col_text(q, 5);
        e->target = store__col_text(q, 6);
        e->space_guid = store__col_text(q, 7);
        e->org_guid = store__col_text(q, 8);
        e->detail = store__col_text(q, 9);
    }
    if (store__read_done(st, q, step, "list audit events") < 0) {
        store_audit_list_free(list, count);
        return -EIO;
    }
    *out = list;
    *n = count;
    return 0;
}

/* ---- tasks ------------------------------------------------------------------------------- */

static int sqlite__task_put(struct store_backend *st, const struct store_task *t)
{
    sqlite3_stmt *q = store__prepare(
        st, "INSERT INTO tasks (guid, app_guid, sequence_id, name, command, state, failure_reason, "
            "exit_status, memory_mb, disk_mb, droplet_guid, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (guid) DO UPDATE SET state = excluded.state,"
            " failure_reason = excluded.failure_reason,"
            " exit_status = excluded.exit_status,"
            " updated_at = excluded.updated_at");
    if (!q)
        return -EIO;
    store__bind_text(q, 1, t->guid);
    store__bind_text(q, 2, t->app_guid);
    sqlite3_bind_int64(q, 3, t->sequence_id);
    store__bind_text(q, 4, t->name);
    store__bind_text(q, 5, t->command);
    store__bind_text(q, 6, t->state);
    store__bind_text(q, 7, t->failure_reason);
    sqlite3_bind_int(q, 8, t->exit_status);
    sqlite3_bind_int(q, 9, t->memory_mb);
    sqlite3_bind_int(q, 10, t->disk_mb);
    store__bind_text(q, 11, t->droplet_guid);
    sqlite3_bind_int64(q, 12, t->created_at);
    sqlite3_bind_int64(q, 13, t->updated_at);
    return store__step_done(st, q);
}

static int sqlite__task_list(struct store_backend *st, const char *app_guid,
                             struct store_task **out, size_t *n)
{
    sqlite3_stmt *q = store__prepare(
        st, "SELECT guid, app_guid, sequence_id, name, command, state, failure_reason, "
            "exit_status, memory_mb, disk_mb, droplet_guid, created_at, updated_at"
            " FROM tasks WHERE (?1 IS NULL OR app_guid = ?1)"
            " ORDER BY app_guid, sequence_id");
    if (!q)
        return -EIO;
    store__bind_text(q, 1, app_guid);
    struct store_task *list = NULL;
    size_t count = 0;
    int step;
    while ((step = sqlite3_step(q)) == SQLITE_ROW) {
        list = xrealloc(list, (count + 1) * sizeof *list);
        struct store_task *t = &list[count++];
        memset(t, 0, sizeof *t);
        snprintf(t->guid, sizeof t->guid, "%s", (const char *)sqlite3_column_text(q, 0) ?: "");
        snprintf(t->app_guid, sizeof t->app_guid, "%s",
                 (const char *)sqlite3_column_text(q, 1) ?: "");
        t->sequence_id = sqlite3_column_int64(q, 2);
        t->name = store__col_text(q, 3);
        t->command = store__col_text(q, 4);
        t->state = store__col_text(q, 5);
        t->failure_reason = store__col_text(q, 6);
        t->exit_status = sqlite3_column_int(q, 7);
        t->memory_mb = sqlite3_column_int(q, 8);
        t->disk_mb = sqlite3_column_int(q, 9);
        snprintf(t->droplet_guid, sizeof t->droplet_guid, "%s",
                 (const char *)sqlite3_column_text(q, 10) ?: "");
        t->created_at = sqlite3_column_int64(q, 11);
        t->updated_at = sqlite3_column_int64(q, 12);
    }
    if (store__read_done(st, q, step, "list tasks") < 0) {
        store_task_list_free(list, count);
        return -EIO;
    }
    *out = list;
    *n = count;
    return 0;
}

static int sqlite__task_delete(struct store_backend *st, const char *guid)
{
    sqlite3_stmt *q = store__prepare(st, "DELETE FROM tasks WHERE guid = ?");
    if (!q)
        return -EIO;
    store__bind_text(q, 1, guid);
    int rc = store__step_done(st, q);
    if (rc == 0 && sqlite3_changes(st->db) == 0)
        return -ENOENT;
    return rc;
}

/* ---- documents --------------------------------------------------------------------------- */

/* One document written by sql, whose parameters are ?1 kind, ?2 id, ?3 body, ?4 the time: 0,
 * or missing (-ENOENT, -EEXIST as the caller words it) when it changed no row. */
static int sqlite__doc_write(struct store_backend *st, const char *sql, const char *kind,
                             const char *id, const char *json, int missing)
{
    sqlite3_stmt *q = store__prepare(st, sql);
    if (!q)
        return -EIO;
    store__bind_text(q, 1, kind);
    store__bind_text(q, 2, id);
    store__bind_text(q, 3, json);
    sqlite3_bind_int64(q, 4, time_now_ms());
    int rc = store__step_done(st, q);
    if (rc == 0 && missing && sqlite3_changes(st->db) == 0)
        return missing;
    return rc;
}

static int sqlite__doc_put(struct store_backend *st, const char *kind, const char *id,
                           const char *json)
{
    return sqlite__doc_write(st, "INSERT OR REPLACE INTO documents VALUES (?1, ?2, ?3, ?4)", kind,
                             id, json, 0);
}

static int sqlite__doc_create(struct store_backend *st, const char *kind, const char *id,
                              const char *json)
{
    return sqlite__doc_write(st, "INSERT OR IGNORE INTO documents VALUES (?1, ?2, ?3, ?4)", kind,
                             id, json, -EEXIST);
}

static int sqlite__doc_get(struct store_backend *st, const char *kind, const char *id, char **json)
{
    sqlite3_stmt *q = store__prepare(st, "SELECT body FROM documents WHERE kind = ? AND id = ?");
    if (!q)
        return -EIO;
    store__bind_text(q, 1, kind);
    store__bind_text(q, 2, id);
    int rc = -ENOENT;
    if (sqlite3_step(q) == SQLITE_ROW) {
        *json = store__col_text(q, 0);
        rc = 0;
    }
    store__release(st, q);
    return rc;
}

static int sqlite__doc_delete(struct store_backend *st, const char *kind, const char *id)
{
    sqlite3_stmt *q = store__prepare(st, "DELETE FROM documents WHERE kind = ? AND id = ?");
    if (!q)
        return -EIO;
    store__bind_text(q, 1, kind);
    store__bind_text(q, 2, id);
    int rc = store__step_done(st, q);
    if (rc == 0 && sqlite3_changes(st->db) == 0)
        return -ENOENT;
    return rc;
}

static int sqlite__doc_update(struct store_backend *st, const char *kind, const char *id,
                              const char *json)
{
    return sqlite__doc_write(
        st, "UPDATE documents SET body = ?3, updated_at = ?4 WHERE kind = ?1 AND id = ?2", kind, id,
        json, -ENOENT);
}

static int sqlite__doc_replace(struct store_backend *st, const char *kind, const char *id,
                               const char *expected, const char *json)
{
    sqlite3_stmt *q = store__prepare(st, "UPDATE documents SET body = ?3, updated_at = ?4"
                                         " WHERE kind = ?1 AND id = ?2 AND body = ?5");
    if (!q)
        return -EIO;
    store__bind_text(q, 1, kind);
    store__bind_text(q, 2, id);
    store__bind_text(q, 3, json);
    sqlite3_bind_int64(q, 4, time_now_ms());
    store__bind_text(q, 5, expected);
    int rc = store__step_done(st, q);
    return rc == 0 && sqlite3_changes(st->db) == 0 ? -ESTALE : rc;
}

static int sqlite__doc_each(struct store_backend *st, const char *kind,
                            int (*fn)(void *ctx, const char *id, const char *json), void *ctx)
{
    sqlite3_stmt *q =
        store__prepare(st, "SELECT id, body FROM documents WHERE kind = ? ORDER BY id");
    if (!q)
        return -EIO;
    store__bind_text(q, 1, kind);
    int step;
    while ((step = sqlite3_step(q)) == SQLITE_ROW) {
        if (fn(ctx, (const char *)sqlite3_column_text(q, 0),
               (const char *)sqlite3_column_text(q, 1))) {
            step = SQLITE_DONE; /* the callback asked to stop: not an error */
            break;
        }
    }
    return store__read_done(st, q, step, "list documents");
}

const struct store_ops store_sqlite_ops = {
    .name = "sqlite",
    .close = sqlite__close,
    .schema_version = sqlite__schema_version,
    .change_count = sqlite__change_count,
    .feed_fd = sqlite__feed_fd,
    .feed_take = sqlite__feed_take,
    .app_create = sqlite__app_create,
    .app_update = sqlite__app_update,
    .app_get = sqlite__app_get,
    .app_list_in = sqlite__app_list_in,
    .app_delete = sqlite__app_delete,
    .route_add = sqlite__route_add,
    .route_delete = sqlite__route_delete,
    .route_update = sqlite__route_update,
    .route_set_https_only = sqlite__route_set_https_only,
    .route_list = sqlite__route_list,
    .domain_add = sqlite__domain_add,
    .domain_list = sqlite__domain_list,
    .domain_delete = sqlite__domain_delete,
    .domain_cert_set = sqlite__domain_cert_set,
    .domain_cert_get = sqlite__domain_cert_get,
    .domain_cert_list = sqlite__domain_cert_list,
    .domain_cert_delete = sqlite__domain_cert_delete,
    .package_add = sqlite__package_add,
    .package_get = sqlite__package_get,
    .droplet_add = sqlite__droplet_add,
    .droplet_get = sqlite__droplet_get,
    .droplet_delete = sqlite__droplet_delete,
    .app_prune_artifacts = sqlite__app_prune_artifacts,
    .blob_refs = sqlite__blob_refs,
    .audit_add = sqlite__audit_add,
    .audit_list = sqlite__audit_list,
    .task_put = sqlite__task_put,
    .task_list = sqlite__task_list,
    .task_delete = sqlite__task_delete,
    .doc_put = sqlite__doc_put,
    .doc_create = sqlite__doc_create,
    .doc_get = sqlite__doc_get,
    .doc_delete = sqlite__doc_delete,
    .doc_each = sqlite__doc_each,
    .doc_update = sqlite__doc_update,
    .doc_replace = sqlite__doc_replace,
};
