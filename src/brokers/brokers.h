/* brokers: Skiff's built-in service brokers, the program `skiff-brokers`.
 *
 * One program serves the Open Service Broker API (2.17) over HTTP with basic auth for the
 * platform's own offerings, each a backend behind `struct brokers_backend`:
 *
 *   postgresql  Debian's PostgreSQL, run by this program (initdb on first use): an instance is
 *               a database owned by a NOLOGIN role, a binding a LOGIN role in it
 *   redis       Debian's redis-server, run by this program: an instance is a key prefix, a
 *               binding an ACL user limited to that prefix
 *   events      Skiff's event fabric: an instance is a topic, a binding a token that
 *               publishes to it only (checked by skiffd)
 *
 * skiffd starts the program (src/daemon/builtin_brokers.c), and registers it as a platform
 * broker through the same path as any external broker; an operator may run it anywhere else
 * and register it with `skiff create-service-broker`.
 *
 * The stores listen on loopback and on the address instances reach the host on (never on a
 * public interface), and refuse every login but a binding's. The program handles one request
 * at a time on one libuv loop: a request that needs a store waits for it (they are local and
 * fast), which keeps the records (brokers/state.json) simple.
 *
 * Errors: backends return 0 or a negative errno value with a message for the platform's user
 * in err. Ownership: json_t results are new references the caller decrefs. */
#ifndef SKIFF_BROKERS_H
#define SKIFF_BROKERS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* The program's settings: the file skiffd writes ($SKIFF_HOME/brokers/config.json, 0600). */
struct brokers_config {
    char *home;     /* where the stores keep their data: HOME/brokers/... */
    char *listen;   /* OSB: "127.0.0.1:PORT" */
    char *username; /* basic auth of the OSB API */
    char *password;
    char *service_host; /* the address put in credentials: what instances reach */
    char *listen_hosts; /* the stores' addresses, comma-separated ("127.0.0.1,10.244.255.254") */
    int postgres_port;
    int redis_port;
    char *postgres_bin; /* Debian's /usr/lib/postgresql/15/bin */
    char *redis_server; /* /usr/bin/redis-server */
    char *events_url;   /* where instances publish (the events offering; NULL: not offered) */
    char *events_key;   /* the file of the key binding tokens are signed with */
};

/* Reads the config file; -EINVAL with a message when a field is missing or wrong. */
int brokers_config_load(const char *path, struct brokers_config *cfg, char *err, size_t errlen);
void brokers_config_clean(struct brokers_config *cfg);

/* ---- names (pure) ------------------------------------------------------------------------ */

/* Whether id (an instance or binding id from the platform) may name things in the stores:
 * 1 to 64 letters, digits and '-'. Everything a store names comes from an id checked here,
 * so no quoting rule of SQL or of Redis' ACL globs is ever needed. */
bool brokers_id_valid(const char *id);
/* "si_<id>" / "sb_<id>" with '-' as '_' (lower case): the database and instance role of an
 * instance, the login role of a binding. out has room for 3 + 64 + 1. */
void brokers_pg_instance_name(const char *instance_id, char out[68]);
void brokers_pg_binding_name(const char *binding_id, char out[68]);
/* PostgreSQL credentials in the shape apps expect (uri, jdbcUrl, host, port, name, username,
 * password). */
json_t *brokers_pg_credentials(const char *host, int port, const char *db, const char *user,
                               const char *password);
/* Redis credentials: host, port, username, password, uri, key_prefix ("<instance>:"). */
json_t *brokers_redis_credentials(const char *host, int port, const char *instance_id,
                                  const char *user, const char *password);
/* The ACL rule of a binding's user: its keys and channels under the prefix, every command
 * but the dangerous ones and those that see across prefixes. Caller frees. */
char *brokers_redis_acl_rules(const char *instance_id);
/* A password: 32 random bytes as base64url (43 characters). out has room for 44. */
void brokers_password(char out[44]);
/* Whether an Authorization header value is "Basic base64(user:password)" for these. */
bool brokers_basic_auth_ok(const char *header, const char *user, const char *password);

/* ---- backends ---------------------------------------------------------------------------- */

struct brokers_backend {
    const char *name;       /* the offering's name in the catalog */
    const char *service_id; /* the catalog's ids */
    const char *plan_id;
    const char *description;
    const char *plan_description;
    const char *tags; /* JSON array text */
    void *ctx;
    /* Makes the instance's place in the store; idempotent for the same id. */
    int (*provision)(void *ctx, const char *instance_id, char *err, size_t errlen);
    int (*deprovision)(void *ctx, const char *instance_id, char *err, size_t errlen);
    /* Makes the binding's login and returns its credentials in *out. */
    int (*bind)(void *ctx, const char *instance_id, const char *binding_id, json_t **out, char *err,
                size_t errlen);
    int (*unbind)(void *ctx, const char *instance_id, const char *binding_id, char *err,
                  size_t errlen);
    /* Stops its server, or with leave_running lets it run for the next skiff-brokers to keep
     * (skiffd went away without stopping the platform: apps keep their connections). */
    void (*stop)(void *ctx, bool leave_running);
};

struct brokers_pg;
struct brokers_redis;
struct uv_loop_s;

/* The PostgreSQL backend: its server starts on first use, or at once when it has data. */
int brokers_pg_new(struct uv_loop_s *loop, const struct brokers_config *cfg,
                   struct brokers_backend *out);
void brokers_pg_free(struct brokers_backend *be);
int brokers_redis_new(struct uv_loop_s *loop, const struct brokers_config *cfg,
                      struct brokers_backend *out);
void brokers_redis_free(struct brokers_backend *be);
/* The events backend: an instance is the topic named like it, in its space; a binding a token
 * that publishes to that topic only (services_binding_token), good while skiffd keeps the
 * binding. -ENOENT when the config offers no events. */
int brokers_events_new(const struct brokers_config *cfg, struct brokers_backend *out);
void brokers_events_free(struct brokers_backend *be);
/* The events backend: an instance is the topic named like it, in its space; a binding a token
 * that publishes to that topic only (services_binding_token), good while skiffd keeps the
 * binding. -ENOENT when the config offers no events. */
int brokers_events_new(const struct brokers_config *cfg, struct brokers_backend *out);
void brokers_events_free(struct brokers_backend *be);

/* ---- the OSB API (brokers.c) ------------------------------------------------------------- */

struct brokers;

/* backends: the offerings (borrowed, alive as long as b); state_path: the records. */
int brokers_new(const struct brokers_backend *backends, size_t count, const char *state_path,
                struct brokers **out);
void brokers_free(struct brokers *b);
/* The catalog (GET /v2/catalog). */
json_t *brokers_catalog(const struct brokers *b);
/* Answers one OSB request: method, target (path and query), body (may be NULL). Sets *status
 * and returns the JSON body to send. */
json_t *brokers_handle(struct brokers *b, const char *method, const char *target, const char *body,
                       size_t body_len, int *status);

/* ---- processes (proc.c) ------------------------------------------------------------------ */

/* The uid and gid a store server runs as: the named system user when skiff-brokers runs as
 * root (the servers refuse root), else our own. -ENOENT when the user does not exist. */
int brokers_run_as(const char *user, uid_t *uid, gid_t *gid);
/* Runs argv to its end as uid/gid, output appended to log; its exit status, or -errno. */
int brokers_run_wait(char *const argv[], uid_t uid, gid_t gid, const char *log);

/* ---- the HTTP server (server.c) ---------------------------------------------------------- */

struct brokers_server;
int brokers_server_start(struct uv_loop_s *loop, struct brokers *b, const char *addr,
                         const char *user, const char *password, struct brokers_server **out,
                         char *err, size_t errlen);
void brokers_server_close(struct brokers_server *s);

#endif
