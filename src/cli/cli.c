/* cli: command lookup, option parsing, messages, tables and the HTTP client (see cli.h). */
#include "cli/cli.h"

#include <curl/curl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/util.h"

bool cli_json_output;

/* ---- commands --------------------------------------------------------------------------- */

static const struct cli_command *const cli_tables[] = {cli_core_commands, cli_events_commands,
                                                       cli_tenancy_commands, cli_quota_commands,
                                                       cli_services_commands};

const struct cli_command *cli_command_find(const char *name)
{
    for (size_t t = 0; t < ARRAY_SIZE(cli_tables); t++)
        for (const struct cli_command *c = cli_tables[t]; c->name; c++)
            if (strcmp(c->name, name) == 0)
                return c;
    for (const struct cli_alias *a = cli_aliases; a->alias; a++)
        if (strcmp(a->alias, name) == 0)
            return cli_command_find(a->name);
    return NULL;
}

void cli_print_help(const struct cli_command *cmd)
{
    if (cmd) {
        printf("usage: skiff %s\n\n%s\n", cmd->usage, cmd->summary);
        for (const struct cli_alias *a = cli_aliases; a->alias; a++)
            if (!strcmp(a->name, cmd->name))
                printf("Alias: skiff %s\n", a->alias);
        if (cmd->help && *cmd->help)
            printf("\n%s", cmd->help);
        printf("\nEvery command accepts --json (machine-readable output) and --help.\n");
        return;
    }
    static const char *const titles[] = {"Apps, routes and logs", "Events and functions",
                                         "Users, orgs, spaces and roles",
                                         "Quotas, audit events and domains", "Services"};
    printf("skiff: push code, run it, route to it, trigger it with events.\n\n"
           "usage: skiff COMMAND [ARGS] [--json]\n");
    for (size_t t = 0; t < ARRAY_SIZE(cli_tables); t++) {
        if (!cli_tables[t]->name)
            continue;
        printf("\n%s:\n", titles[t]);
        for (const struct cli_command *c = cli_tables[t]; c->name; c++)
            printf("  %-16s %s\n", c->name, c->summary);
    }
    printf("\n`skiff help COMMAND` or `skiff COMMAND --help` tells more about a command.\n"
           "Exit status: 0 success, 1 the operation failed, 2 the command line was wrong.\n");
}

/* ---- messages --------------------------------------------------------------------------- */

/* "error: ..." on its own line of stderr, after what stdout holds so far. */
static void cli_vprint_error(const char *fmt, va_list ap)
{
    fflush(stdout);
    fputs("error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

int cli_confirm(const struct cli_command *cmd, bool force, const char *what, const char *question)
{
    if (force)
        return CLI_CONTINUE;
    if (!isatty(STDIN_FILENO))
        return cli_usage_error(cmd, "deleting %s needs -f when there is no terminal to ask", what);
    printf("%s [y/N] ", question);
    fflush(stdout);
    char answer[16] = "";
    if (!fgets(answer, sizeof(answer), stdin) || (answer[0] != 'y' && answer[0] != 'Y')) {
        printf("Not deleted.\n");
        return CLI_EXIT_OK;
    }
    return CLI_CONTINUE;
}

int cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cli_vprint_error(fmt, ap);
    va_end(ap);
    return CLI_EXIT_ERROR;
}

int cli_usage_error(const struct cli_command *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cli_vprint_error(fmt, ap);
    va_end(ap);
    if (cmd)
        fprintf(stderr, "usage: skiff %s\n(`skiff help %s` tells more)\n", cmd->usage, cmd->name);
    return CLI_EXIT_USAGE;
}

void cli_print_json(const json_t *value)
{
    char *s = json_dumps(value, JSON_INDENT(2) | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
    if (s) {
        puts(s);
        free(s);
    }
}

bool cli_json_printed(json_t *value)
{
    if (!cli_json_output)
        return false;
    cli_print_json(value);
    json_decref(value);
    return true;
}

const char *cli_json_str(const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : "";
}

long long cli_json_int(const json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    if (json_is_integer(v))
        return json_integer_value(v);
    if (json_is_real(v))
        return (long long)json_real_value(v);
    return 0;
}

/* ---- options ---------------------------------------------------------------------------- */

static int cli_option_set(const struct cli_command *cmd, const struct cli_option *o,
                          const char *shown, const char *arg)
{
    switch (o->kind) {
    case CLI_OPT_FLAG:
        *(bool *)o->value = true;
        return 0;
    case CLI_OPT_STRING:
    case CLI_OPT_OPTIONAL:
        *(const char **)o->value = arg;
        return 0;
    case CLI_OPT_INT: {
        char *end;
        errno = 0;
        long v = strtol(arg, &end, 10);
        if (errno || end == arg || *end)
            return cli_usage_error(cmd, "%s needs a whole number, not \"%s\"", shown, arg);
        *(long *)o->value = v;
        return 0;
    }
    case CLI_OPT_LIST: {
        struct cli_list *l = o->value;
        if (l->count == (int)ARRAY_SIZE(l->items))
            return cli_usage_error(cmd, "%s is given too many times", shown);
        l->items[l->count++] = arg;
        return 0;
    }
    }
    return 0;
}

/* The name of the n-th positional argument in the usage line ("NAME", "HOST"), so that a
 * missing one can be named. */
static void cli_usage_positional(const struct cli_command *cmd, int n, char *out, size_t size)
{
    snprintf(out, size, "argument");
    const char *p = cmd->usage;
    p += strcspn(p, " "); /* the command's own name */
    while (*p) {
        p += strspn(p, " ");
        size_t len = strcspn(p, " ");
        if (len && p[0] != '[' && p[0] != '-' && p[0] != '.') {
            if (n-- == 0) {
                snprintf(out, size, "%.*s", (int)len, p);
                return;
            }
        } else if (len && p[0] == '-') {
            /* "--token TOKEN": the value belongs to the option */
            p += len;
            p += strspn(p, " ");
            len = strcspn(p, " ");
        }
        p += len;
    }
}

int cli_parse_options(const struct cli_command *cmd, int argc, char **argv,
                      const struct cli_option *opts, struct cli_args *args, int min_args,
                      int max_args)
{
    static const struct cli_option none[] = {{0}};
    bool only_positional = false;
    if (!opts)
        opts = none;
    args->count = 0;
    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        if (only_positional || a[0] != '-' || a[1] == '\0') {
            if (args->count == (int)ARRAY_SIZE(args->items))
                return cli_usage_error(cmd, "too many arguments");
            args->items[args->count++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_positional = true;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            cli_print_help(cmd);
            return CLI_EXIT_OK;
        }
        if (strcmp(a, "--json") == 0) {
            cli_json_output = true;
            continue;
        }
        const struct cli_option *o = NULL;
        const char *inline_arg = NULL;
        if (a[1] == '-') {
            const char *name = a + 2;
            const char *eq = strchr(name, '=');
            size_t n = eq ? (size_t)(eq - name) : strlen(name);
            for (const struct cli_option *p = opts; p->long_name; p++)
                if (strlen(p->long_name) == n && strncmp(p->long_name, name, n) == 0)
                    o = p;
            if (eq)
                inline_arg = eq + 1;
        } else if (a[2] == '\0') {
            for (const struct cli_option *p = opts; p->long_name; p++)
                if (p->short_name == a[1])
                    o = p;
        }
        if (!o) {
            /* A negative number is an argument, not an option (e.g. a replay offset). */
            if (a[1] >= '0' && a[1] <= '9') {
                if (args->count == (int)ARRAY_SIZE(args->items))
                    return cli_usage_error(cmd, "too many arguments");
                args->items[args->count++] = a;
                continue;
            }
            return cli_usage_error(cmd, "unknown option %s", a);
        }
        const char *arg = NULL;
        if (o->kind == CLI_OPT_FLAG) {
            if (inline_arg)
                return cli_usage_error(cmd, "%.*s takes no value", (int)(inline_arg - a - 1), a);
        } else if (inline_arg) {
            arg = inline_arg;
        } else if (o->kind == CLI_OPT_OPTIONAL && (i + 1 == argc || argv[i + 1][0] == '-')) {
            arg = "";
        } else if (i + 1 < argc) {
            arg = argv[++i];
        } else {
            return cli_usage_error(cmd, "%s needs a value", a);
        }
        int rc = cli_option_set(cmd, o, a, arg);
        if (rc)
            return rc;
    }
    if (args->count < min_args) {
        char what[64];
        cli_usage_positional(cmd, args->count, what, sizeof(what));
        return cli_usage_error(cmd, "missing %s", what);
    }
    if (max_args >= 0 && args->count > max_args)
        return cli_usage_error(cmd, "unexpected argument \"%s\"", args->items[max_args]);
    return CLI_CONTINUE;
}

/* ---- tables ----------------------------------------------------------------------------- */

struct cli_table {
    int ncols;
    int nrows;
    int cap;
    char **cells; /* nrows * ncols, row 0 is the header */
};

struct cli_table *cli_table_new(const char *const *headers)
{
    struct cli_table *t = xcalloc(1, sizeof(*t));
    while (headers[t->ncols] && t->ncols < CLI_TABLE_MAX_COLUMNS)
        t->ncols++;
    cli_table_add_row(t, headers);
    return t;
}

void cli_table_add_row(struct cli_table *t, const char *const *cells)
{
    if (t->nrows == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 16;
        t->cells = xrealloc(t->cells, (size_t)t->cap * (size_t)t->ncols * sizeof(char *));
    }
    for (int c = 0; c < t->ncols; c++)
        t->cells[t->nrows * t->ncols + c] = xstrdup(cells[c] ? cells[c] : "");
    t->nrows++;
}

void cli_table_add(struct cli_table *t, ...)
{
    const char *cells[CLI_TABLE_MAX_COLUMNS] = {0};
    va_list ap;
    va_start(ap, t);
    for (int c = 0; c < t->ncols; c++)
        cells[c] = va_arg(ap, const char *);
    va_end(ap);
    cli_table_add_row(t, cells);
}

int cli_list(const char *path, const char *key, const struct cli_column *cols)
{
    json_t *res = NULL;
    if (cli_api("GET", path, NULL, &res) != 0)
        return CLI_EXIT_ERROR;
    if (cli_json_printed(res))
        return CLI_EXIT_OK;
    const char *headers[CLI_TABLE_MAX_COLUMNS + 1] = {0};
    int ncols = 0;
    while (cols[ncols].header && ncols < CLI_TABLE_MAX_COLUMNS) {
        headers[ncols] = cols[ncols].header;
        ncols++;
    }
    struct cli_table *t = cli_table_new(headers);
    size_t i;
    json_t *row;
    json_array_foreach(json_object_get(res, key), i, row)
    {
        char formatted[CLI_TABLE_MAX_COLUMNS][128];
        const char *cells[CLI_TABLE_MAX_COLUMNS] = {0};
        for (int c = 0; c < ncols; c++) {
            if (cols[c].format) {
                formatted[c][0] = '\0';
                cols[c].format(row, cols[c].field, formatted[c], sizeof formatted[c]);
                cells[c] = formatted[c];
            } else {
                cells[c] = cli_json_str(row, cols[c].field);
            }
        }
        cli_table_add_row(t, cells);
    }
    cli_table_print(t);
    json_decref(res);
    return CLI_EXIT_OK;
}

void cli_format_yes(const json_t *row, const char *field, char *out, size_t size)
{
    snprintf(out, size, "%s", json_is_true(json_object_get(row, field)) ? "yes" : "");
}

void cli_format_never(const json_t *row, const char *field, char *out, size_t size)
{
    const char *v = cli_json_str(row, field);
    snprintf(out, size, "%s", *v ? v : "never");
}

/* Display width of UTF-8 text: counts code points, which is right for the text we print. */
static size_t cli_text_width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            w++;
    return w;
}

void cli_table_print(struct cli_table *t)
{
    cli_table_fprint(t, stdout);
}

void cli_table_fprint(struct cli_table *t, FILE *out)
{
    size_t width[CLI_TABLE_MAX_COLUMNS] = {0};
    for (int r = 0; r < t->nrows; r++)
        for (int c = 0; c < t->ncols; c++) {
            size_t w = cli_text_width(t->cells[r * t->ncols + c]);
            if (w > width[c])
                width[c] = w;
        }
    for (int r = 0; r < t->nrows; r++) {
        /* no padding after the last non-empty cell, so lines carry no trailing blanks */
        int last = t->ncols - 1;
        while (last > 0 && !*t->cells[r * t->ncols + last])
            last--;
        for (int c = 0; c <= last; c++) {
            const char *cell = t->cells[r * t->ncols + c];
            fputs(cell, out);
            if (c < last)
                fprintf(out, "%*s", (int)(width[c] - cli_text_width(cell) + 3), "");
        }
        fputc('\n', out);
    }
    cli_table_free(t);
}

void cli_table_free(struct cli_table *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t);
}

/* ---- target ----------------------------------------------------------------------------- */

static struct cli_target cli_current;
static bool cli_target_loaded;

static void cli_target_free(void)
{
    free(cli_current.api_url);
    free(cli_current.token);
    free(cli_current.router_url);
    free(cli_current.refresh_token);
    free(cli_current.user);
    free(cli_current.org);
    free(cli_current.space);
    memset(&cli_current, 0, sizeof(cli_current));
}

void cli_target_reset(void)
{
    cli_target_free();
    cli_target_loaded = false;
}

static char *cli_dup_or_null(const char *s)
{
    return s && *s ? xstrdup(s) : NULL;
}

static void cli_cleanup(void)
{
    cli_target_free();
    curl_global_cleanup();
}

static char *cli_strip_slash(const char *url)
{
    char *s = xstrdup(url);
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == '/')
        s[--n] = '\0';
    return s;
}

/* Reads {"url", "token", "router_url"} from a JSON file; 1 when found and usable. */
static int cli_target_from_file(const char *path, const char *from)
{
    json_error_t jerr;
    json_t *j = json_load_file(path, 0, &jerr);
    if (!j)
        return 0;
    const char *url = cli_json_str(j, "url");
    if (!*url) {
        json_decref(j);
        return 0;
    }
    cli_current.api_url = cli_strip_slash(url);
    if (*cli_json_str(j, "token"))
        cli_current.token = xstrdup(cli_json_str(j, "token"));
    if (*cli_json_str(j, "router_url"))
        cli_current.router_url = xstrdup(cli_json_str(j, "router_url"));
    cli_current.from = from;
    if (!strcmp(from, "skiff login")) {
        cli_current.from_login = true;
        cli_current.refresh_token = cli_dup_or_null(cli_json_str(j, "refresh_token"));
        cli_current.user = cli_dup_or_null(cli_json_str(j, "user"));
        cli_current.org = cli_dup_or_null(cli_json_str(j, "org"));
        cli_current.space = cli_dup_or_null(cli_json_str(j, "space"));
        cli_current.skip_ssl_validation = json_is_true(json_object_get(j, "skip_ssl_validation"));
    }
    json_decref(j);
    return 1;
}

int cli_login_save(const char *url, const char *token, const char *refresh_token,
                   const char *router_url, const char *user, const char *org, const char *space)
{
    json_t *saved = json_object();
    const char *keys[] = {"url", "token", "refresh_token", "router_url", "user", "org", "space"};
    const char *values[] = {url, token, refresh_token, router_url, user, org, space};
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
        if (values[i] && *values[i])
            json_object_set_new(saved, keys[i], json_string(values[i]));
    if (cli_skip_ssl_validation())
        json_object_set_new(saved, "skip_ssl_validation", json_true());
    char *path = cli_login_path();
    char *dir = xstrndup(path, (size_t)(strrchr(path, '/') - path));
    char *text = json_dumps(saved, JSON_INDENT(2));
    json_decref(saved);
    int err = mkdir_p(dir, 0700);
    if (!err)
        err = file_write_atomic(path, text, strlen(text), 0600);
    if (err)
        cli_error("could not save the login in %s: %s", path, strerror(-err));
    free(text);
    free(dir);
    free(path);
    cli_target_reset();
    return err ? CLI_EXIT_ERROR : 0;
}

char *cli_space_query(void)
{
    const struct cli_target *t = cli_target();
    if (!t || !t->org || !t->space)
        return NULL;
    char *ref = xasprintf("%s/%s", t->org, t->space);
    char *q = cli_escape(ref);
    free(ref);
    return q;
}

char *cli_login_path(void)
{
    const char *home = getenv("HOME");
    return xasprintf("%s/.skiff/cli.json", home && *home ? home : ".");
}

static char *cli_local_api_path(void)
{
    const char *skiff_home = getenv("SKIFF_HOME");
    if (skiff_home && *skiff_home)
        return xasprintf("%s/api.json", skiff_home);
    char *dir = path_expand_home("~/.skiff");
    char *p = xasprintf("%s/api.json", dir);
    free(dir);
    return p;
}

char *cli_local_token(const char *url)
{
    char *path = cli_local_api_path();
    json_error_t jerr;
    json_t *j = json_load_file(path, 0, &jerr);
    free(path);
    char *want = cli_strip_slash(url), *have = cli_strip_slash(cli_json_str(j, "url"));
    char *have_tls = cli_strip_slash(cli_json_str(j, "tls_url"));
    char *token = NULL;
    if ((strcmp(want, have) == 0 || (*have_tls && strcmp(want, have_tls) == 0)) &&
        *cli_json_str(j, "token"))
        token = xstrdup(cli_json_str(j, "token"));
    free(want);
    free(have);
    free(have_tls);
    json_decref(j);
    return token;
}

const struct cli_target *cli_target(void)
{
    if (cli_target_loaded)
        return cli_current.api_url ? &cli_current : NULL;
    cli_target_loaded = true;
    static bool cleanup_registered;
    if (!cleanup_registered) {
        atexit(cli_cleanup);
        cleanup_registered = true;
    }
    const char *env_api = getenv("SKIFF_API");
    if (env_api && *env_api) {
        cli_current.api_url = cli_strip_slash(env_api);
        const char *tok = getenv("SKIFF_TOKEN");
        if (tok && *tok)
            cli_current.token = xstrdup(tok);
        cli_current.from = "SKIFF_API";
        return &cli_current;
    }
    char *login = cli_login_path();
    int found = cli_target_from_file(login, "skiff login");
    free(login);
    if (!found) {
        char *local = cli_local_api_path();
        found = cli_target_from_file(local, "the local skiffd");
        free(local);
    }
    if (!found) {
        cli_error("not logged in: no Skiff API is known.\n"
                  "Start a local platform with `make run` (or `skiffd`), or log in to one with "
                  "`skiff login URL --token TOKEN`, or set SKIFF_API and SKIFF_TOKEN.");
        return NULL;
    }
    return &cli_current;
}

/* ---- TLS -------------------------------------------------------------------------------- */

bool cli_connect_error(const struct cli_target *t, int code, const char *detail)
{
    CURLcode cc = (CURLcode)code;
    const char *why = detail && detail[0] ? detail : curl_easy_strerror(cc);
    if (cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST) {
        cli_error("cannot reach the Skiff API at %s (found through %s): is skiffd running?\n"
                  "Start it with `make run` (or `skiffd`), or log in to another one with "
                  "`skiff login URL --token TOKEN`.",
                  t->api_url, t->from);
    } else if (cc == CURLE_PEER_FAILED_VERIFICATION) {
        cli_error("the API at %s has a certificate this machine does not trust (%s).\n"
                  "Give its CA to the system's store (a local skiffd's is trusted by itself: "
                  "$SKIFF_HOME/tls/ca.pem), or, only if you know why, log in with "
                  "`skiff login %s --skip-ssl-validation`.",
                  t->api_url, why, t->api_url);
    } else if (cc == CURLE_SSL_CONNECT_ERROR || cc == CURLE_SSL_CERTPROBLEM) {
        cli_error("TLS with the API at %s failed: %s", t->api_url, why);
    } else {
        return false;
    }
    return true;
}

bool cli_skip_ssl_validation(void)
{
    const char *env = getenv("SKIFF_SKIP_SSL_VALIDATION");
    if (env && !strcmp(env, "1"))
        return true;
    return cli_target_loaded && cli_current.api_url && cli_current.skip_ssl_validation;
}

/* $SKIFF_HOME/tls/ca.pem (the local skiffd's CA), or NULL when there is none. */
static char *cli_local_ca_path(void)
{
    const char *skiff_home = getenv("SKIFF_HOME");
    char *dir = skiff_home && *skiff_home ? xstrdup(skiff_home) : path_expand_home("~/.skiff");
    char *path = xasprintf("%s/tls/ca.pem", dir);
    free(dir);
    if (access(path, R_OK) == 0)
        return path;
    free(path);
    return NULL;
}

/* Adds the local CA to the CAs libcurl loaded (the system's), for this connection. */
static CURLcode cli_add_local_ca(CURL *curl, void *ssl_ctx, void *arg)
{
    (void)curl;
    X509_STORE *store = SSL_CTX_get_cert_store(ssl_ctx);
    if (store && X509_STORE_load_file(store, arg) != 1)
        ERR_clear_error(); /* unreadable: the system's CAs decide alone */
    return CURLE_OK;
}

void cli_curl_tls(void *curl)
{
    static char *local_ca;
    static bool looked;
    if (cli_skip_ssl_validation()) {
        curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 0L);
        return;
    }
    if (!looked) {
        looked = true;
        local_ca = cli_local_ca_path(); /* kept for the process's life */
    }
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
    if (local_ca) {
        curl_easy_setopt(curl, CURLOPT_SSL_CTX_FUNCTION, cli_add_local_ca);
        curl_easy_setopt(curl, CURLOPT_SSL_CTX_DATA, local_ca);
    }
}

/* ---- HTTP ------------------------------------------------------------------------------- */

long long cli_duration_seconds(const char *text)
{
    if (!text || *text < '0' || *text > '9')
        return -1;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(text, &end, 10);
    long long unit = !*end || !strcmp(end, "s") ? 1
                     : !strcmp(end, "m")        ? 60
                     : !strcmp(end, "h")        ? 3600
                     : !strcmp(end, "d")        ? 86400
                                                : 0;
    if (errno || v <= 0 || !unit || v > LLONG_MAX / unit)
        return -1;
    return v * unit;
}

char *cli_escape(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    struct buf b = {0};
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || *p == '.' || *p == '~') {
            buf_putc(&b, (char)*p);
        } else {
            buf_putc(&b, '%');
            buf_putc(&b, hex[*p >> 4]);
            buf_putc(&b, hex[*p & 15]);
        }
    }
    if (!b.data)
        return xstrdup("");
    return buf_steal(&b);
}

char *cli_path(const char *fmt, const char *a, const char *b, const char *c, const char *d)
{
    char *ea = a ? cli_escape(a) : NULL, *eb = b ? cli_escape(b) : NULL;
    char *ec = c ? cli_escape(c) : NULL, *ed = d ? cli_escape(d) : NULL;
    char *p = xasprintf(fmt, ea, eb, ec, ed);
    free(ea);
    free(eb);
    free(ec);
    free(ed);
    return p;
}

struct cli_transfer {
    CURL *curl;
    const struct cli_request *req;
    struct buf body;    /* the whole body, or the unfinished line for on_line */
    bool stopped;       /* on_line asked to stop */
    int progress_shown; /* 0 none, 1 partial line drawn, 2 final line written */
    int64_t last_progress_ms;
};

static bool cli_status_ok(long status)
{
    return status >= 200 && status < 300;
}

static size_t cli_on_write(char *data, size_t size, size_t nmemb, void *arg)
{
    struct cli_transfer *x = arg;
    size_t n = size * nmemb;
    long status = 0;
    curl_easy_getinfo(x->curl, CURLINFO_RESPONSE_CODE, &status);
    buf_append(&x->body, data, n);
    if (!x->req->on_line || !cli_status_ok(status))
        return n;
    size_t start = 0;
    for (size_t i = 0; i < x->body.len; i++) {
        if (x->body.data[i] != '\n')
            continue;
        size_t len = i - start;
        if (len > 0 && x->body.data[start + len - 1] == '\r')
            len--;
        x->body.data[start + len] = '\0';
        if (x->req->on_line(x->body.data + start, len, x->req->arg)) {
            x->stopped = true;
            return 0; /* makes curl stop with a write error, which we know is ours */
        }
        start = i + 1;
    }
    buf_consume(&x->body, start);
    return n;
}

void cli_human_bytes(double bytes, char *out, size_t size)
{
    if (bytes >= 1024.0 * 1024.0)
        snprintf(out, size, "%.1f MB", bytes / (1024.0 * 1024.0));
    else if (bytes >= 1024.0)
        snprintf(out, size, "%.1f KB", bytes / 1024.0);
    else
        snprintf(out, size, "%.0f B", bytes);
}

static int cli_on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                           curl_off_t ulnow)
{
    struct cli_transfer *x = arg;
    if (ultotal <= 0)
        return 0;
    int64_t now = time_mono_ms();
    bool done = ulnow >= ultotal;
    if (!done && now - x->last_progress_ms < 200)
        return 0;
    if (done && x->progress_shown == 2)
        return 0;
    x->last_progress_ms = now;
    char a[32], b[32];
    cli_human_bytes((double)ulnow, a, sizeof(a));
    cli_human_bytes((double)ultotal, b, sizeof(b));
    bool tty = isatty(STDOUT_FILENO);
    /* On a terminal the line is redrawn; in a pipe only the final line is written. */
    if (tty || done) {
        printf("%sUploading: %s of %s (%d%%)%s", tty ? "\r" : "", a, b,
               (int)(ulnow * 100 / ultotal), done ? "\n" : "");
        fflush(stdout);
    }
    x->progress_shown = done ? 2 : 1;
    return 0;
}

/* Pulls {"error":{"code","message"}} out of an error answer. */
static void cli_response_parse_error(struct cli_response *res)
{
    json_t *err = json_object_get(res->json, "error");
    if (json_is_object(err)) {
        if (*cli_json_str(err, "code"))
            res->error_code = xstrdup(cli_json_str(err, "code"));
        if (*cli_json_str(err, "message"))
            res->error_message = xstrdup(cli_json_str(err, "message"));
    }
}

/* The name of the app a path is about ("/v1/apps/NAME..."), or NULL. Caller frees. */
static char *cli_path_app(const char *path)
{
    if (!str_has_prefix(path, "/v1/apps/"))
        return NULL;
    const char *name = path + strlen("/v1/apps/");
    size_t n = strcspn(name, "/?");
    return n ? xstrndup(name, n) : NULL;
}

static void cli_print_api_error(const struct cli_request *req, const struct cli_response *res)
{
    const struct cli_target *t = cli_target();
    if (res->status == 401 && t && !t->token) {
        cli_error("the API at %s needs a token, and none is known (found through %s).\n"
                  "Set SKIFF_TOKEN, or log in with `skiff login %s --token TOKEN`.",
                  t->api_url, t->from, t->api_url);
        return;
    }
    if (res->status == 401) {
        cli_error("the API at %s refused the token (%s).\n"
                  "Log in again with `skiff login -a %s` (or `--token TOKEN`).",
                  t ? t->api_url : "?", res->error_message ? res->error_message : "unauthorized",
                  t ? t->api_url : "URL");
        return;
    }
    if (res->status == 404 && res->error_code && strcmp(res->error_code, "not_found") == 0) {
        /* a binding's answer names what is missing itself, and so does a function's */
        bool names_it = strstr(req->path, "/service_bindings") ||
                        strstr(req->path, "/functions/") || strstr(req->path, "process=");
        char *app = names_it ? NULL : cli_path_app(req->path);
        if (app) {
            cli_error("app \"%s\" not found. `skiff apps` lists the apps.", app);
            free(app);
            return;
        }
    }
    if (res->error_message) {
        cli_error("%s", res->error_message);
        return;
    }
    /* Not the API's error format: show the start of whatever came back. */
    const char *body = res->body ? res->body : "";
    size_t n = strcspn(body, "\n");
    if (n > 200)
        n = 200;
    cli_error("the API answered %s %s with HTTP %ld%s%.*s", req->method, req->path, res->status,
              n ? ": " : "", (int)n, body);
}

/* The paths about things of a space: they carry the target space (one place decides). */
static bool cli_path_in_space(const char *path)
{
    static const char *const prefixes[] = {"/v1/apps",
                                           "/v1/routes",
                                           "/v1/event-mappings",
                                           "/v1/topics",
                                           "/v1/audit_events",
                                           "/v1/service_instances",
                                           "/v1/service_brokers",
                                           "/v1/marketplace",
                                           NULL};
    for (size_t i = 0; prefixes[i]; i++) {
        size_t n = strlen(prefixes[i]);
        if (!strncmp(path, prefixes[i], n) &&
            (path[n] == '\0' || path[n] == '/' || path[n] == '?'))
            return true;
    }
    return false;
}

static int cli_http_once(const struct cli_request *req, struct cli_response *res, bool quiet401);

/* Renews the saved access token with the refresh token: 0 when it worked (saved, and the
 * target holds the new token). */
static int cli_refresh(void)
{
    const struct cli_target *t = cli_target();
    if (!t || !t->from_login || !t->refresh_token)
        return -1;
    json_t *body = json_pack("{s:s, s:s}", "grant_type", "refresh_token", "refresh_token",
                             t->refresh_token);
    struct cli_request req = {
        .method = "POST", .path = "/v1/auth/token", .json = body, .timeout_s = 60};
    struct cli_response res;
    int rc = cli_http_once(&req, &res, true);
    json_decref(body);
    if (rc == 0) {
        char *url = xstrdup(t->api_url), *router = cli_dup_or_null(t->router_url);
        char *user = cli_dup_or_null(t->user), *org = cli_dup_or_null(t->org);
        char *space = cli_dup_or_null(t->space);
        rc = cli_login_save(url, cli_json_str(res.json, "access_token"),
                            cli_json_str(res.json, "refresh_token"), router, user, org, space);
        free(url);
        free(router);
        free(user);
        free(org);
        free(space);
    }
    cli_response_free(&res);
    return rc == 0 && cli_target() ? 0 : -1;
}

int cli_http(const struct cli_request *req, struct cli_response *res)
{
    const struct cli_target *t = cli_target();
    if (!t) {
        memset(res, 0, sizeof(*res));
        return CLI_EXIT_ERROR;
    }
    /* an expired access token is renewed once, silently, and the request made again */
    bool can_refresh = t->from_login && t->refresh_token && strcmp(req->path, "/v1/auth/token");
    long body_start = req->body_file ? ftell(req->body_file) : 0;
    int rc = cli_http_once(req, res, can_refresh);
    if (rc == 0 || res->status != 401 || !can_refresh)
        return rc;
    cli_response_free(res);
    /* One skiff renews at a time (a refresh token is good once): the others wait, then find
     * the new pair in the login file. */
    char *refused = xstrdup(t->token ? t->token : "");
    char *path = cli_login_path();
    char *lock_path = xasprintf("%s.lock", path);
    int lock = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock >= 0)
        while (flock(lock, LOCK_EX) != 0 && errno == EINTR)
            ;
    cli_target_reset();
    t = cli_target();
    bool renewed = t && t->token && strcmp(t->token, refused);
    if (!renewed && t && t->from_login && t->refresh_token)
        renewed = cli_refresh() == 0;
    if (lock >= 0)
        close(lock);
    free(lock_path);
    free(path);
    free(refused);
    if (!renewed) {
        cli_error("your session ended: log in again with `skiff login`");
        res->status = 401;
        return CLI_EXIT_ERROR;
    }
    if (req->body_file && fseek(req->body_file, body_start, SEEK_SET) != 0)
        return cli_error("cannot read the upload again after renewing the login");
    return cli_http_once(req, res, false);
}

static int cli_http_once(const struct cli_request *req, struct cli_response *res, bool quiet401)
{
    memset(res, 0, sizeof(*res));
    const struct cli_target *t = cli_target();
    if (!t)
        return CLI_EXIT_ERROR;

    static bool curl_ready;
    if (!curl_ready) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        curl_ready = true;
    }
    struct cli_transfer x = {.req = req};
    struct curl_slist *headers = NULL;
    char *json_body = NULL;
    char *space = cli_path_in_space(req->path) && !strstr(req->path, "space=")
                      ? cli_space_query()
                      : NULL;
    char *url = space ? xasprintf("%s%s%sspace=%s", t->api_url, req->path,
                                  strchr(req->path, '?') ? "&" : "?", space)
                      : xasprintf("%s%s", t->api_url, req->path);
    free(space);
    int rc = CLI_EXIT_ERROR;

    x.curl = curl_easy_init();
    if (!x.curl) {
        cli_error("could not set up an HTTP client (out of memory?)");
        goto done;
    }
    curl_easy_setopt(x.curl, CURLOPT_URL, url);
    curl_easy_setopt(x.curl, CURLOPT_CUSTOMREQUEST, req->method);
    curl_easy_setopt(x.curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(x.curl, CURLOPT_CONNECTTIMEOUT, 10L);
    if (req->timeout_s > 0)
        curl_easy_setopt(x.curl, CURLOPT_TIMEOUT, req->timeout_s);
    curl_easy_setopt(x.curl, CURLOPT_WRITEFUNCTION, cli_on_write);
    curl_easy_setopt(x.curl, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(x.curl, CURLOPT_USERAGENT, "skiff-cli");
    char curl_err[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(x.curl, CURLOPT_ERRORBUFFER, curl_err);
    cli_curl_tls(x.curl);
    if (t->token) {
        char *auth = xasprintf("Authorization: Bearer %s", t->token);
        headers = curl_slist_append(headers, auth);
        free(auth);
    }
    headers = curl_slist_append(headers, "Expect:");
    if (req->json) {
        json_body = json_dumps(req->json, JSON_COMPACT | JSON_ENCODE_ANY);
        headers = curl_slist_append(headers, "Content-Type: application/json");
        curl_easy_setopt(x.curl, CURLOPT_POSTFIELDS, json_body);
        curl_easy_setopt(x.curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(json_body));
    } else if (req->body || req->body_file) {
        char *ct = xasprintf("Content-Type: %s",
                             req->content_type ? req->content_type : "application/octet-stream");
        headers = curl_slist_append(headers, ct);
        free(ct);
        if (req->body_file) {
            /* streamed from the file: the method stays the one asked for */
            curl_easy_setopt(x.curl, CURLOPT_UPLOAD, 1L);
            curl_easy_setopt(x.curl, CURLOPT_READDATA, req->body_file);
            curl_easy_setopt(x.curl, CURLOPT_INFILESIZE_LARGE, (curl_off_t)req->body_len);
        } else {
            curl_easy_setopt(x.curl, CURLOPT_POSTFIELDS, req->body);
            curl_easy_setopt(x.curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        }
    }
    for (const char *const *h = req->headers; h && *h; h++)
        headers = curl_slist_append(headers, *h);
    curl_easy_setopt(x.curl, CURLOPT_HTTPHEADER, headers);
    if (req->progress) {
        curl_easy_setopt(x.curl, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(x.curl, CURLOPT_XFERINFOFUNCTION, cli_on_progress);
        curl_easy_setopt(x.curl, CURLOPT_XFERINFODATA, &x);
    }

    CURLcode cc = curl_easy_perform(x.curl);
    curl_easy_getinfo(x.curl, CURLINFO_RESPONSE_CODE, &res->status);
    if (x.progress_shown == 1 && isatty(STDOUT_FILENO))
        putchar('\n');
    if (cc != CURLE_OK && !(cc == CURLE_WRITE_ERROR && x.stopped)) {
        if (cli_connect_error(t, cc, curl_err)) {
            /* said */
        } else if (cc == CURLE_OPERATION_TIMEDOUT) {
            cli_error("the API at %s did not answer %s %s in time", t->api_url, req->method,
                      req->path);
        } else if (res->status && !cli_status_ok(res->status)) {
            goto answered; /* the body was cut, but we have a status to report */
        } else {
            cli_error("talking to the API at %s failed: %s", t->api_url, curl_easy_strerror(cc));
        }
        goto done;
    }
answered:
    if (!req->on_line || !cli_status_ok(res->status)) {
        res->body_len = x.body.len;
        res->body = x.body.data ? buf_steal(&x.body) : xstrdup("");
        if (res->body_len) {
            json_error_t jerr;
            res->json = json_loadb(res->body, res->body_len, JSON_DECODE_ANY, &jerr);
        }
    } else if (x.body.len && !x.stopped) {
        /* the stream ended without a newline: that last piece is still a line */
        req->on_line(x.body.data, x.body.len, req->arg);
    }
    if (cli_status_ok(res->status)) {
        rc = 0;
        goto done;
    }
    cli_response_parse_error(res);
    if (!(quiet401 && res->status == 401))
        cli_print_api_error(req, res);

done:
    buf_free(&x.body);
    curl_slist_free_all(headers);
    if (x.curl)
        curl_easy_cleanup(x.curl);
    free(json_body);
    free(url);
    return rc;
}

void cli_response_free(struct cli_response *res)
{
    json_decref(res->json);
    free(res->body);
    free(res->error_code);
    free(res->error_message);
    memset(res, 0, sizeof(*res));
}

int cli_api(const char *method, const char *path, json_t *body, json_t **out)
{
    struct cli_request req = {.method = method, .path = path, .json = body, .timeout_s = 120};
    struct cli_response res;
    if (out)
        *out = NULL;
    int rc = cli_http(&req, &res);
    if (rc == 0 && out) {
        *out = res.json;
        res.json = NULL;
    }
    cli_response_free(&res);
    return rc;
}
