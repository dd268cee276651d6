/* cli: the shared core of the `skiff` command-line tool.
 *
 * A command is one row of a command table: its name, usage line, one-line summary, help text
 * and handler. The core commands live in src/cli/commands.c (cli_core_commands); the event
 * commands live in src/cli/cmd_events.c (cli_events_commands). Each table ends with a row
 * whose name is NULL. main() finds the command by name, runs it, and exits with what it returns.
 *
 * Exit status that scripts can trust: CLI_EXIT_OK (0) success, CLI_EXIT_ERROR (1) the
 * operation failed (message on stderr), CLI_EXIT_USAGE (2) the command line was wrong.
 *
 * The helpers below find the API and its token by themselves (see cli_target), talk to it
 * with libcurl, and print errors and tables in one consistent way. Every helper that can fail
 * has already printed a message for the user when it returns an error, so a command handler
 * just returns the code it got. Output: tables and progress go to stdout, errors to stderr.
 */
#ifndef SKIFF_CLI_H
#define SKIFF_CLI_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

enum {
    CLI_EXIT_OK = 0,
    CLI_EXIT_ERROR = 1,
    CLI_EXIT_USAGE = 2,
};

/* Returned by cli_parse_options when the command should go on (any other value is the exit
 * status the command should return at once: 0 after --help, 2 after a usage error). */
#define CLI_CONTINUE (-1)

struct cli_command {
    const char *name;    /* "push" */
    const char *usage;   /* "push NAME [-p PATH] [-i N]": without the leading "skiff " */
    const char *summary; /* one line, shown by `skiff help` */
    const char *help;    /* options and examples, shown by `skiff help CMD`; may be NULL */
    /* argv[0] is the command name; returns an exit status (CLI_EXIT_*). */
    int (*run)(const struct cli_command *cmd, int argc, char **argv);
};

/* Short names that find a command too, as Cloud Foundry's CLI has them ("cups"); the list
 * ends with a row whose alias is NULL. */
struct cli_alias {
    const char *alias, *name;
};
extern const struct cli_alias cli_aliases[]; /* src/cli/cmd_services.c */

extern const struct cli_command cli_core_commands[];   /* src/cli/commands.c */
extern const struct cli_command cli_events_commands[]; /* src/cli/cmd_events.c */
extern const struct cli_command cli_tenancy_commands[]; /* src/cli/cmd_tenancy.c */
extern const struct cli_command cli_quota_commands[];   /* src/cli/cmd_quotas.c */
extern const struct cli_command cli_services_commands[]; /* src/cli/cmd_services.c */

/* Finds a command by name in every table; NULL when there is none. */
const struct cli_command *cli_command_find(const char *name);
/* Prints `skiff help` (every command) or `skiff help CMD` to stdout. */
void cli_print_help(const struct cli_command *cmd);

/* ---- options ---------------------------------------------------------------------------- */

enum cli_option_kind {
    CLI_OPT_FLAG,   /* bool *: set to true when present */
    CLI_OPT_STRING, /* const char **: the argument (points into argv) */
    CLI_OPT_INT,    /* long *: a whole number; anything else is a usage error */
    CLI_OPT_LIST,   /* struct cli_list *: repeatable, each argument appended */
    /* const char **: the argument (--opt=VALUE, or the next one when it is not an option),
     * or "" when given bare (last, or followed by another option) */
    CLI_OPT_OPTIONAL,
};

struct cli_list {
    const char *items[32];
    int count;
};

struct cli_option {
    const char *long_name; /* "instances" for --instances (also --instances=N) */
    char short_name;       /* 'i' for -i, or 0 */
    enum cli_option_kind kind;
    void *value;
};

struct cli_args {
    char *items[32]; /* the positional arguments, in order (point into argv) */
    int count;
};

/* Parses argv[1..] against opts (an array ended by a row whose long_name is NULL).
 * `--json` and `-h`/`--help` are understood by every command: --json sets cli_json_output,
 * --help prints the command's help. `--` ends the options; a lone `-` is positional.
 * Positional arguments are collected into *args; fewer than min_args or more than max_args
 * is a usage error (max_args < 0: no limit). Returns CLI_CONTINUE, or the exit status to
 * return now (after printing help or a usage error that names the problem). */
int cli_parse_options(const struct cli_command *cmd, int argc, char **argv,
                      const struct cli_option *opts, struct cli_args *args, int min_args,
                      int max_args);

/* True when --json was given: print the API's JSON (cli_print_json) instead of tables. */
extern bool cli_json_output;

/* ---- messages --------------------------------------------------------------------------- */

/* Prints "error: ..." to stderr; returns CLI_EXIT_ERROR so a handler can `return cli_error(..)`. */
int cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints "error: ..." and the command's usage line to stderr; returns CLI_EXIT_USAGE. */
int cli_usage_error(const struct cli_command *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Asks question ("... [y/N]") on the terminal unless force: CLI_CONTINUE on yes; else the
 * exit status to return (0 after "Not deleted.", or a usage error saying that deleting what
 * needs -f when there is no terminal to ask). */
int cli_confirm(const struct cli_command *cmd, bool force, const char *what, const char *question);
/* A byte count for people: "512 B", "1.5 KB", "28.6 MB". */
void cli_human_bytes(double bytes, char *out, size_t size);
/* Prints a JSON value to stdout, indented, with a newline. Does not take the reference. */
void cli_print_json(const json_t *value);
/* With --json: prints value as cli_print_json does, drops the caller's reference to it and
 * returns true (the command has nothing left to print). Otherwise returns false and leaves
 * value alone. */
bool cli_json_printed(json_t *value);

/* ---- tables ----------------------------------------------------------------------------- */

/* A table of text cells, printed with aligned columns. Cells are copied. */
struct cli_table;
#define CLI_TABLE_MAX_COLUMNS 32
/* headers: column titles, ended by NULL (columns past CLI_TABLE_MAX_COLUMNS are dropped). */
struct cli_table *cli_table_new(const char *const *headers);
/* Adds a row of as many cells as there are columns (a NULL cell prints as empty). */
void cli_table_add(struct cli_table *t, ...);
void cli_table_add_row(struct cli_table *t, const char *const *cells);
/* Prints the table to stdout (headers first) and frees it. */
void cli_table_print(struct cli_table *t);
/* Same, to any stream. */
void cli_table_fprint(struct cli_table *t, FILE *out);
void cli_table_free(struct cli_table *t);

/* One column of a listing: its header, and the row's field as text (cli_json_str), or what
 * format writes for it when given. */
struct cli_column {
    const char *header;
    const char *field;
    void (*format)(const json_t *row, const char *field, char *out, size_t size);
};
/* The list commands' one shape: GET path; with --json the answer as it came, else the objects
 * of its array at key as a table of cols (ended by a column whose header is NULL). Returns the
 * exit status. */
int cli_list(const char *path, const char *key, const struct cli_column *cols);
/* Formats for cli_column: a boolean as "yes" or nothing; a missing or empty value as
 * "never". */
void cli_format_yes(const json_t *row, const char *field, char *out, size_t size);
void cli_format_never(const json_t *row, const char *field, char *out, size_t size);

/* ---- talking to the API ----------------------------------------------------------------- */

/* Where the API is and how to authenticate: SKIFF_API + SKIFF_TOKEN, else the login saved by
 * `skiff login` ($HOME/.skiff/cli.json), else $SKIFF_HOME/api.json written by a local skiffd.
 * Loaded once, on the first API call. */
struct cli_target {
    char *api_url;    /* "http://127.0.0.1:8090", no trailing slash */
    char *token;      /* may be NULL for /v1/info */
    char *router_url; /* may be NULL */
    const char *from; /* where it came from, for messages */
    /* from `skiff login` only (NULL otherwise): */
    char *refresh_token; /* renews token when the API says it expired */
    char *user;
    char *org, *space; /* the target (`skiff target`): requests about apps, routes, event
                        * mappings, topics and audit events carry ?space=ORG/SPACE */
    bool from_login;
    bool skip_ssl_validation; /* saved by `skiff login --skip-ssl-validation` */
};
/* Where `skiff login` keeps the login: $HOME/.skiff/cli.json. Caller frees. */
char *cli_login_path(void);
/* Writes the login file (mode 0600) from the fields given (NULL leaves one out), after which
 * the CLI uses them. Returns 0, or prints why not and returns CLI_EXIT_ERROR. */
int cli_login_save(const char *url, const char *token, const char *refresh_token,
                   const char *router_url, const char *user, const char *org, const char *space);
/* Sets a libcurl handle's TLS checks for the API: the peer's certificate and name are
 * verified against the system's CAs and, when $SKIFF_HOME/tls/ca.pem exists (a local
 * skiffd's CA), that one too; unless the login asked for --skip-ssl-validation. */
void cli_curl_tls(void *curl);
/* Says why a connection to the API failed (libcurl's code, its error buffer or NULL) when it is
 * the API being unreachable or its certificate: true when said, false for other codes. */
bool cli_connect_error(const struct cli_target *t, int code, const char *detail);
/* Whether certificates go unchecked (skiff login --skip-ssl-validation, kept with the login). */
bool cli_skip_ssl_validation(void);
/* Forgets what cli_target loaded, so the next call reads it again. */
void cli_target_reset(void);
/* "ORG/SPACE" percent-escaped for a query (caller frees), or NULL without a target space. */
char *cli_space_query(void);
/* The token a local skiffd wrote to $SKIFF_HOME/api.json, when its API is at url; else NULL.
 * Caller frees. */
char *cli_local_token(const char *url);
/* Returns the target, loading it if needed; NULL (after printing "not logged in" with what to
 * do) when nothing says where the API is. The CLI owns it. */
const struct cli_target *cli_target(void);

struct cli_request {
    const char *method;         /* "GET", "POST", ... */
    const char *path;           /* "/v1/apps/hello": escape names with cli_escape */
    json_t *json;               /* request body as JSON (borrowed), or NULL */
    const void *body;           /* raw request body (when json is NULL), or NULL */
    size_t body_len;            /* bytes of body */
    FILE *body_file;            /* or a raw body read from this stream (body_len bytes) */
    const char *content_type;   /* of the raw body; NULL means application/octet-stream */
    const char *const *headers; /* extra "Name: value" lines ended by NULL, or NULL */
    /* When set, a 2xx body is delivered line by line as it arrives (without the newline)
     * instead of being collected; return nonzero to stop reading (not an error). */
    int (*on_line)(const char *line, size_t len, void *arg);
    void *arg;
    /* When set, upload progress is drawn on stdout (for large bodies). */
    bool progress;
    long timeout_s; /* 0: no overall timeout (streams); connection timeout is always short */
};

struct cli_response {
    long status;  /* HTTP status; 0 when no answer */
    json_t *json; /* parsed body when it is JSON (owned), else NULL */
    char *body;   /* the raw body, NUL-terminated (owned); NULL for on_line requests */
    size_t body_len;
    char *error_code;    /* from {"error":{"code","message"}} on a non-2xx answer, else NULL */
    char *error_message; /* idem */
};

/* Performs one request. Returns 0 when the API answered 2xx. Otherwise prints why (the daemon
 * is not running, the API's error message verbatim) and returns CLI_EXIT_ERROR; res->status and
 * res->error_code say what happened for callers that want to react. Free res with
 * cli_response_free in every case. */
int cli_http(const struct cli_request *req, struct cli_response *res);
void cli_response_free(struct cli_response *res);

/* The common case: METHOD PATH with an optional JSON body (borrowed). On 2xx returns 0 and,
 * when out is not NULL, stores the parsed answer (NULL if the body was empty; caller
 * json_decref()s). Otherwise prints why and returns CLI_EXIT_ERROR. A 404 on a path under
 * /v1/apps/NAME says "app NAME not found" and to run `skiff apps`. */
int cli_api(const char *method, const char *path, json_t *body, json_t **out);

/* Percent-escapes s for use in a URL path or query. Caller frees. */
char *cli_escape(const char *s);
/* fmt ("/v1/orgs/%s/spaces/%s") with each of a..d that is given percent-escaped in place of its
 * %s, in order (NULL for those fmt does not use). Caller frees. */
char *cli_path(const char *fmt, const char *a, const char *b, const char *c, const char *d);
/* "30d", "12h", "90m", "3600s" or "3600" -> seconds (more than 0); -1 when it is none of
 * these or too long to count. */
long long cli_duration_seconds(const char *text);

/* ---- small JSON readers (never NULL: "" or 0 when missing) ------------------------------ */

const char *cli_json_str(const json_t *obj, const char *key);
long long cli_json_int(const json_t *obj, const char *key);

#endif
