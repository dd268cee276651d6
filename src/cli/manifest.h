/* manifest: reads a Cloud Foundry style manifest.yml (the subset in DESIGN.md, plus Skiff's
 * `functions:`) into plain structs the CLI pushes from.
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

struct manifest_process {
    char *type;
    char *command;  /* NULL: not set */
    long instances; /* -1: not set */
    long memory_mb; /* -1: not set */
    long disk_mb;   /* -1: not set */
    char *health_check_type;
    char *health_check_http_endpoint;
    long timeout; /* -1: not set */
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
    long min_instances; /* -1: not set */
    long max_instances; /* -1: not set */
    long concurrency;   /* -1: not set */
    long memory_mb;     /* -1: not set */
};

struct manifest_app {
    char *name;
    char *path;     /* absolute or relative to the cwd: resolved against the manifest's folder */
    long instances; /* -1: not set (same for every long below) */
    long memory_mb;
    long disk_mb;
    char *command;
    char **buildpacks;
    size_t buildpack_count;
    struct manifest_kv *env;
    size_t env_count;
    char **routes; /* "host[/path]" */
    size_t route_count;
    bool no_route;
    bool no_route_set;
    char *health_check_type;
    char *health_check_http_endpoint;
    long timeout;
    char **services;
    size_t service_count;
    struct manifest_process *processes;
    size_t process_count;
    struct manifest_function *functions;
    size_t function_count;
    bool is_function; /* an entry of the top-level functions: (functions[0] is it) */
    int line;         /* where the app starts in the file, for messages */
};

struct manifest {
    char *file; /* the path it was loaded from */
    char *dir;  /* its folder: paths in it are relative to this */
    struct manifest_app *apps;
    size_t app_count;
};

/* Loads and checks a manifest. On error *out is NULL and *err (caller frees) says what. */
int manifest_load(const char *path, struct manifest **out, char **err);
/* Same, from text in memory; `name` is used in messages and `dir` to resolve paths. */
int manifest_parse(const char *text, size_t len, const char *name, const char *dir,
                   struct manifest **out, char **err);
void manifest_free(struct manifest *m);

/* Parses a size like "256M", "1G", "512MB", "1024" (megabytes) into megabytes.
 * Returns 0, or -1 when it is not a size (zero and negative sizes are refused). */
int manifest_parse_megabytes(const char *s, long *mb);

#endif
