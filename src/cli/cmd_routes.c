/* cmd_routes: map-route, unmap-route, routes, domains, create-domain, delete-domain. */
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "common/buf.h"
#include "common/util.h"

/* Parses `APP HOST[/PATH] [--path /PATH]` (map-route, unmap-route): --path wins when both give
 * a path. Fills *args, *host (caller frees) and *path (a pointer into argv, or ""). With
 * balance and protocol not NULL, --balance and --protocol are accepted too, each NULL when
 * not given (the API checks the values). Returns CLI_CONTINUE, or the exit status to return
 * now. */
static int cli_route_args(const struct cli_command *cmd, int argc, char **argv,
                          struct cli_args *args, char **host, const char **path,
                          const char **balance, const char **protocol, bool *https_only)
{
    const char *path_opt = NULL;
    struct cli_option opts[] = {{"path", 0, CLI_OPT_STRING, &path_opt},
                                {"balance", 0, CLI_OPT_STRING, balance},
                                {"protocol", 0, CLI_OPT_STRING, protocol},
                                {"https-only", 0, CLI_OPT_FLAG, https_only},
                                {0}};
    if (!balance) { /* unmap-route: the path only */
        opts[1] = (struct cli_option){0};
    } else {
        *balance = *protocol = NULL;
        *https_only = false;
    }
    int rc = cli_parse_options(cmd, argc, argv, opts, args, 2, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *arg = args->items[1];
    const char *slash = strchr(arg, '/');
    if (strstr(arg, "://"))
        return cli_usage_error(cmd, "give the host without a scheme, like hello.localhost");
    *host = slash ? xstrndup(arg, (size_t)(slash - arg)) : xstrdup(arg);
    *path = path_opt ? path_opt : slash ? slash : "";
    if (**path && **path != '/') {
        free(*host);
        *host = NULL;
        return cli_usage_error(cmd, "--path must start with /, like /v1");
    }
    return CLI_CONTINUE;
}

int cli_cmd_map_route(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    char *host;
    const char *path, *balance, *protocol;
    bool https_only;
    int rc = cli_route_args(cmd, argc, argv, &args, &host, &path, &balance, &protocol, &https_only);
    if (rc != CLI_CONTINUE)
        return rc;
    json_t *body = json_pack("{s:s, s:s, s:s}", "app", args.items[0], "host", host, "path", path);
    if (balance)
        json_object_set_new(body, "balance", json_string(balance));
    if (protocol)
        json_object_set_new(body, "protocol", json_string(protocol));
    if (https_only) /* left out: a route the app has keeps its setting */
        json_object_set_new(body, "https_only", json_true());
    json_t *route = NULL;
    rc = cli_api("POST", "/v1/routes", body, &route);
    json_decref(body);
    if (rc == 0) {
        if (cli_json_output)
            cli_print_json(route);
        else if (balance || protocol)
            printf("Mapped %s%s to %s (%s%s%s)%s.\n", host, path, args.items[0],
                   balance ? balance : "", balance && protocol ? ", " : "",
                   protocol ? protocol : "",
                   https_only ? "; plain HTTP requests are redirected to HTTPS" : "");
        else if (https_only)
            printf("Mapped %s%s to %s; plain HTTP requests are redirected to HTTPS.\n", host, path,
                   args.items[0]);
        else
            printf("Mapped %s%s to %s.\n", host, path, args.items[0]);
    }
    json_decref(route);
    free(host);
    return rc;
}

int cli_cmd_unmap_route(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    char *host;
    const char *path;
    int rc = cli_route_args(cmd, argc, argv, &args, &host, &path, NULL, NULL, NULL);
    if (rc != CLI_CONTINUE)
        return rc;
    char *app_q = cli_escape(args.items[0]), *host_q = cli_escape(host), *path_q = cli_escape(path);
    char *url = xasprintf("/v1/routes?app=%s&host=%s&path=%s", app_q, host_q, path_q);
    rc = cli_api("DELETE", url, NULL, NULL);
    if (rc == 0 && !cli_json_output)
        printf("Unmapped %s%s from %s.\n", host, path, args.items[0]);
    free(url);
    free(app_q);
    free(host_q);
    free(path_q);
    free(host);
    return rc;
}

int cli_cmd_routes(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 0, 0);
    if (rc != CLI_CONTINUE)
        return rc;
    json_t *res = NULL;
    if (cli_api("GET", "/v1/routes", NULL, &res) != 0)
        return CLI_EXIT_ERROR;
    if (cli_json_printed(res))
        return CLI_EXIT_OK;
    json_t *routes = json_object_get(res, "routes");
    if (json_array_size(routes) == 0) {
        printf("No routes. Map one with `skiff map-route APP HOST`.\n");
        json_decref(res);
        return CLI_EXIT_OK;
    }
    static const char *const headers[] = {"host",    "path",     "app",        "instances",
                                          "balance", "protocol", "https-only", NULL};
    struct cli_table *t = cli_table_new(headers);
    size_t i;
    json_t *r;
    json_array_foreach(routes, i, r)
    {
        char inst[24];
        snprintf(inst, sizeof(inst), "%lld", cli_json_int(r, "instances"));
        cli_table_add(t, cli_json_str(r, "host"), cli_json_str(r, "path"), cli_json_str(r, "app"),
                      inst, cli_json_str(r, "balance"), cli_json_str(r, "protocol"),
                      json_is_true(json_object_get(r, "https_only")) ? "yes" : "no");
    }
    cli_table_print(t);
    json_decref(res);
    return CLI_EXIT_OK;
}

int cli_cmd_stacks(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 0, 0);
    if (rc != CLI_CONTINUE)
        return rc;
    static const struct cli_column cols[] = {
        {"name", "name", NULL}, {"description", "description", NULL}, {0}};
    return cli_list("/v1/stacks", "stacks", cols);
}

/* A domain's "shared" as its type: shared (every space) or private (an org's). */
static void routes__domain_type(const json_t *row, const char *field, char *out, size_t size)
{
    json_t *shared = json_object_get(row, field);
    snprintf(out, size, "%s", shared && !json_is_true(shared) ? "private" : "shared");
}

int cli_cmd_domains(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 0, 0);
    if (rc != CLI_CONTINUE)
        return rc;
    static const struct cli_column cols[] = {
        {"name", "name", NULL}, {"type", "shared", routes__domain_type}, {0}};
    return cli_list("/v1/domains", "domains", cols);
}

/* Reads a PEM file given to --cert or --key. */
static int routes__read_pem(const char *flag, const char *path, char **out, size_t *len)
{
    int r = file_read(path, out, len);
    if (r < 0)
        return cli_error("%s %s: %s", flag, path, strerror(-r));
    return 0;
}

/* A domain's API path: under its org for a private domain, else the shared one; tail is ""
 * or "/certificate". */
static char *routes__domain_path(const char *domain, const char *org, const char *tail)
{
    char *d = cli_escape(domain), *o = org ? cli_escape(org) : NULL;
    char *path = o ? xasprintf("/v1/orgs/%s/domains/%s%s", o, d, tail)
                   : xasprintf("/v1/domains/%s%s", d, tail);
    free(d);
    free(o);
    return path;
}

int cli_domain_set_cert(const char *domain, const char *org, const char *cert_path,
                        const char *key_path)
{
    char *cert = NULL, *key = NULL;
    size_t cert_len = 0, key_len = 0;
    if (routes__read_pem("--cert", cert_path, &cert, &cert_len) ||
        routes__read_pem("--key", key_path, &key, &key_len)) {
        free(cert);
        free(key);
        return CLI_EXIT_ERROR;
    }
    char *path = routes__domain_path(domain, org, "/certificate");
    json_t *body = json_pack("{s:s%,s:s%}", "cert", cert, cert_len, "key", key, key_len);
    memset(key, 0, key_len);
    free(cert);
    free(key);
    json_t *res = NULL;
    int rc = body ? cli_api("PUT", path, body, &res)
                  : cli_error("the certificate or key file is not text (PEM is)");
    if (rc == 0 && !cli_json_printed(res)) {
        json_t *c = json_object_get(res, "certificate");
        printf("HTTPS on %s now uses the certificate %s (until %s); the routers serve it to new "
               "connections.\n",
               domain, json_string_value(json_object_get(c, "subject")) ?: "?",
               json_string_value(json_object_get(c, "not_after")) ?: "?");
        json_decref(res);
    }
    json_decref(body); /* the key is in it: jansson's copy goes with it */
    free(path);
    return rc;
}

/* The options of create-domain and update-domain: the domain, then --cert FILE and --key FILE
 * (which of them a command needs is its own say). */
static int routes__domain_options(const struct cli_command *cmd, int argc, char **argv,
                                  struct cli_args *args, const char **cert, const char **key)
{
    const struct cli_option opts[] = {
        {"cert", 0, CLI_OPT_STRING, cert}, {"key", 0, CLI_OPT_STRING, key}, {NULL, 0, 0, NULL}};
    return cli_parse_options(cmd, argc, argv, opts, args, 1, 1);
}

/* The org of a private domain (*org NULL for a shared one): its certificate is set and
 * removed through the org. 0, or an error already printed. */
static int routes__domain_org(const char *domain, char **org)
{
    json_t *res = NULL;
    if (cli_api("GET", "/v1/domains", NULL, &res) != 0)
        return CLI_EXIT_ERROR;
    bool found = false;
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(res, "domains"), i, d)
    {
        if (!strcmp(json_string_value(json_object_get(d, "name")) ?: "", domain)) {
            found = true;
            const char *o = json_string_value(json_object_get(d, "org"));
            *org = o ? xstrdup(o) : NULL;
        }
    }
    json_decref(res);
    return found ? 0 : cli_error("there is no domain %s (see `skiff domains`)", domain);
}

int cli_cmd_update_domain(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    const char *cert = NULL, *key = NULL;
    int rc = routes__domain_options(cmd, argc, argv, &args, &cert, &key);
    if (rc != CLI_CONTINUE)
        return rc;
    if (!cert || !key)
        return cli_usage_error(cmd, "update-domain needs --cert FILE and --key FILE");
    char *org = NULL;
    if (routes__domain_org(args.items[0], &org) != 0)
        return CLI_EXIT_ERROR;
    rc = cli_domain_set_cert(args.items[0], org, cert, key);
    free(org);
    return rc;
}

int cli_cmd_delete_domain_cert(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    char *org = NULL;
    if (routes__domain_org(args.items[0], &org) != 0)
        return CLI_EXIT_ERROR;
    char *path = routes__domain_path(args.items[0], org, "/certificate");
    json_t *res = NULL;
    rc = cli_api("DELETE", path, NULL, &res);
    bool printed = rc == 0 && cli_json_printed(res); /* it drops res */
    if (rc == 0 && !printed)
        printf("HTTPS on %s now uses the default certificate; the routers serve it to new "
               "connections.\n",
               args.items[0]);
    if (!printed)
        json_decref(res);
    free(path);
    free(org);
    return rc;
}

int cli_cmd_delete_domain(const struct cli_command *cmd, int argc, char **argv)
{
    bool force = false;
    struct cli_option opts[] = {{"force", 'f', CLI_OPT_FLAG, &force}, {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *name = args.items[0];
    char *org = NULL;
    if (routes__domain_org(name, &org) != 0)
        return CLI_EXIT_ERROR;
    char *question = xasprintf("Really delete the domain %s and its certificate?", name);
    rc = cli_confirm(cmd, force, name, question);
    free(question);
    if (rc != CLI_CONTINUE) {
        free(org);
        return rc;
    }
    char *path = routes__domain_path(name, org, "");
    rc = cli_api("DELETE", path, NULL, NULL);
    if (rc == 0 && !cli_json_output)
        printf("Deleted the domain %s.\n", name);
    free(path);
    free(org);
    return rc;
}

int cli_cmd_create_domain(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    const char *cert = NULL, *key = NULL;
    int rc = routes__domain_options(cmd, argc, argv, &args, &cert, &key);
    if (rc != CLI_CONTINUE)
        return rc;
    if (!cert != !key)
        return cli_usage_error(cmd, "--cert and --key go together");
    json_t *body = json_pack("{s:s}", "name", args.items[0]);
    json_t *res = NULL;
    rc = cli_api("POST", "/v1/domains", body, &res);
    json_decref(body);
    if (rc == 0) {
        if (cli_json_output)
            cli_print_json(res);
        else
            printf("Created the shared domain %s. Map routes on it with "
                   "`skiff map-route APP HOST.%s`.\n",
                   args.items[0], args.items[0]);
    }
    json_decref(res);
    if (rc == 0 && cert)
        rc = cli_domain_set_cert(args.items[0], NULL, cert, key);
    return rc;
}
