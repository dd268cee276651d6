/* manifest: reads a Cloud Foundry style manifest.yml (every key of Cloud Foundry's app
 * manifest, plus Skiff's `functions:`) into plain structs the CLI pushes from.
 *
 * A Cloud Foundry key that has no effect on this platform is accepted and leaves one warning
 * per key and app in manifest_app.warnings; a key that is not Cloud Foundry's nor Skiff's is an
 * error. Variables ((name)) in values are replaced from manifest_vars before anything is read.
 *
 * manifest_load() never aborts on bad input: a manifest that is not YAML, has a key Skiff does
 * not know, or a value of the wrong type gives a negative code and a message that names the
 * file, the line and the key, e.g.
 *   manifest.yml line 7: unknown key "instance" (did you mean "instances"?)
 * On success the caller owns the manifest and frees it with manifest_free(). */
#ifndef SKIFF_CLI_MANIFEST_H
#define SKIFF_CLI_MANIFEST_H

#include <stdbool.h>
#include <stddef.h>

enum {
    MANIFEST_ERR_IO = -1,     /* cannot read the file */
    MANIFEST_ERR_SYNTAX = -2, /* not YAML */
    MANIFEST_ERR_SCHEMA = -3, /* unknown key, wrong type, bad value, missing name */
};

struct manifest_kv {
    char *key;
    char *value;
};

/* Variables for ((name)) in a manifest: --vars-file and --var. Zero-initialise; free with
 * manifest_vars_free(). A later value for a name replaces an earlier one. */
struct manifest_vars {
    struct manifest_kv *items;
    size_t count;
};

struct manifest_route {
    char *route;   /* "host[/path]" */
    char *balance; /* "round-robin" or "least-connection"; NULL: not set */
    char *protocol;  /* "http1" or "http2" (h2c to the instances); NULL: not set */
    bool https_only; /* plain HTTP requests get a redirect to HTTPS (Skiff's own key) */
    bool https_only_set;
};

/* A process's request scaling policy (`skiff autoscale`): -1 for what is not set; set when
 * any is. */
struct manifest_autoscale {
    long min_instances;
    long max_instances;
    long target_concurrency;
    long target_rps;
};

/* A process's health-check timing, readiness check and log rate limit (Cloud Foundry's keys of
 * those names); -1 and NULL for what is not set. */
struct manifest_checks {
    long health_interval;     /* health-check-interval, seconds */
    long health_timeout;      /* health-check-invocation-timeout, seconds */
    char *readiness_type;     /* readiness-health-check-type: http, port or process */
    char *readiness_endpoint; /* readiness-health-check-http-endpoint */
    long readiness_interval;  /* readiness-health-check-interval, seconds */
    long readiness_timeout;   /* readiness-health-check-invocation-timeout, seconds */
    long long log_rate;       /* log-rate-limit-per-second, bytes; -1: unlimited;
                                 MANIFEST_LOG_RATE_UNSET: not set */
};
#define MANIFEST_LOG_RATE_UNSET (-2LL)

/* "16K", "1M", "512B", "100" (bytes) or "-1" (unlimited), as `cf scale -l` and the manifest's
 * log-rate-limit-per-second take them, into bytes a second: 0, or -1 when malformed. */
int manifest_parse_log_rate(const char *s, long long *bytes);

struct manifest_process {
    char *type;
    char *command;  /* NULL: not set */
    long instances; /* -1: not set */
    long memory_mb; /* -1: not set */
    long disk_mb;   /* -1: not set */
    char *health_check_type;
    char *health_check_http_endpoint;
    long timeout; /* -1: not set */
    struct manifest_autoscale autoscale;
    struct manifest_checks checks;
};

struct manifest_event {
    char *topic;                 /* NULL when this is a schedule */
    char *schedule;              /* cron or "@every 30s", NULL when a topic */
    struct manifest_kv *filters; /* attribute -> value; a value ending in '*' is a prefix */
    size_t filter_count;
};

struct manifest_function {
    char *name;
    char *handler; /* "file.py:handle" */
    struct manifest_event *events;
    size_t event_count;
    bool events_listed; /* "events:" is there: its mappings are exactly these (a push removes
                         * the function's others); without it a push leaves them alone */
    long min_instances; /* -1: not set */
    long max_instances; /* -1: not set */
    long concurrency;   /* -1: not set */
    long memory_mb;     /* -1: not set */
    char *idle_grace;   /* how long idle before it scales down ("30s"), NULL: not set */
};

/* A sidecar (Cloud Foundry's): a command run beside the process types' instances, in their
 * containers. */
struct manifest_sidecar {
    char *name;
    char **process_types;
    size_t process_type_count;
    char *command;
    long memory_mb; /* -1: not set */
};

/* One entry of an app's services: a name, or {name, binding_name, parameters}. */
struct manifest_service {
    char *name;
    char *binding_name; /* NULL: none */
    char *parameters;   /* a JSON object as text, NULL: none */
};

struct manifest_app {
    char *name;
    char *path;     /* absolute or relative to the cwd: resolved against the manifest's folder */
    long instances; /* -1: not set (same for every long below) */
    long memory_mb;
    long disk_mb;
    char *command;
    char *docker_image;    /* docker: image: (NULL: pushed from path) */
    char *docker_username; /* docker: username: (the password: CF_DOCKER_PASSWORD) */
    char **buildpacks;
    size_t buildpack_count;
    struct manifest_kv *env;
    size_t env_count;
    struct manifest_route *routes;
    size_t route_count;
    bool no_route;
    bool no_route_set;
    bool random_route; /* a random host when the app has no route yet */
    char *stack;       /* NULL: not set */
    char *health_check_type;
    char *health_check_http_endpoint;
    long timeout;
    struct manifest_service *services; /* bound on push, before the app starts */
    size_t service_count;
    struct manifest_process *processes;
    size_t process_count;
    struct manifest_function *functions;
    size_t function_count;
    struct manifest_sidecar *sidecars; /* none: a push removes the app's */
    size_t sidecar_count;
    struct manifest_autoscale autoscale; /* of the web process */
    struct manifest_checks checks;       /* of the web process */
    bool is_function; /* an entry of the top-level functions: (functions[0] is it) */
    int line;         /* where the app starts in the file, for messages */
    char *metadata_json; /* {"labels": {...}, "annotations": {...}} as given, NULL: none */
    char **warnings;  /* "manifest.yml line 9: shop: \"sidecars\" has no effect here: ..." */
    size_t warning_count;
};

struct manifest {
    char *file; /* the path it was loaded from */
    char *dir;  /* its folder: paths in it are relative to this */
    struct manifest_app *apps;
    size_t app_count;
};

/* Loads and checks a manifest. On error *out is NULL and *err (caller frees) says what.
 * vars may be NULL (then a ((name)) in the manifest is an error naming it). */
int manifest_load(const char *path, const struct manifest_vars *vars, struct manifest **out,
                  char **err);
/* Same, from text in memory; `name` is used in messages and `dir` to resolve paths. Text over
 * MANIFEST_MAX_BYTES or nested deeper than MANIFEST_MAX_DEPTH is refused. */
int manifest_parse(const char *text, size_t len, const char *name, const char *dir,
                   const struct manifest_vars *vars, struct manifest **out, char **err);
#define MANIFEST_MAX_BYTES (4 << 20)
#define MANIFEST_MAX_DEPTH 64

/* --var NAME=VALUE: 0, or -1 when it is not NAME=VALUE (a valid name). */
int manifest_vars_set(struct manifest_vars *vars, const char *assignment);
/* --vars-file: a YAML map of NAME: value. 0, or a negative code with *err (caller frees). */
int manifest_vars_load(struct manifest_vars *vars, const char *path, char **err);
void manifest_vars_free(struct manifest_vars *vars);
void manifest_free(struct manifest *m);

/* Parses a size like "256M", "1G", "512MB", "1024" (megabytes) into megabytes.
 * Returns 0, or -1 when it is not a size (zero and negative sizes are refused). */
int manifest_parse_megabytes(const char *s, long *mb);

/* Whether the policy has any key set. */
bool manifest_autoscale_set(const struct manifest_autoscale *as);

#endif
