/* The commands of quotas, audit events and orgs' private domains (Cloud Foundry's
 * create-quota, set-quota, quotas, create-space-quota's set-space-quota, events,
 * create-private-domain). Listed in cli_quota_commands. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/commands.h"
#include "common/util.h"

/* The limits as the API names them, and the options that set them. */
static const struct {
    const char *field, *option, *title;
    char short_name;
} quota__limits[] = {
    {"total_memory_mb", "memory", "total memory", 'm'},
    {"instance_memory_mb", "instance-memory", "instance memory", 'i'},
    {"instances", "instances", "instances", 'a'},
    {"apps", "apps", "apps", 0},
    {"routes", "routes", "routes", 'r'},
    {"event_mappings", "event-mappings", "event mappings", 'e'},
};
#define QUOTA_LIMITS (sizeof quota__limits / sizeof quota__limits[0])

/* "1G", "512M", "512" (MB), "-1" or "unlimited" for memory; a count or "unlimited" otherwise.
 * Puts the value (null for unlimited) in body under field; false when it is not one. */
static bool quota__set(json_t *body, const char *field, const char *text, bool megabytes)
{
    if (!strcmp(text, "unlimited") || !strcmp(text, "-1")) {
        json_object_set_new(body, field, json_null());
        return true;
    }
    char *end = NULL;
    long long v = strtoll(text, &end, 10);
    if (end == text || v < 0)
        return false;
    if (megabytes && (*end == 'G' || *end == 'g'))
        v *= 1024, end++;
    else if (megabytes && (*end == 'M' || *end == 'm'))
        end++;
    if (*end == 'B' || *end == 'b')
        end += megabytes;
    if (*end)
        return false;
    json_object_set_new(body, field, json_integer(v));
    return true;
}

/* create-quota NAME [-m 10G] ... and update-quota NAME [...]: the same options. */
static int quota__put(const struct cli_command *cmd, int argc, char **argv, bool create)
{
    const char *values[QUOTA_LIMITS] = {0};
    struct cli_option opts[QUOTA_LIMITS + 1];
    memset(opts, 0, sizeof opts);
    for (size_t i = 0; i < QUOTA_LIMITS; i++)
        opts[i] = (struct cli_option){quota__limits[i].option, quota__limits[i].short_name,
                                      CLI_OPT_STRING, &values[i]};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    json_t *body = create ? json_pack("{s:s}", "name", args.items[0]) : json_object();
    for (size_t i = 0; i < QUOTA_LIMITS; i++)
        if (values[i] && !quota__set(body, quota__limits[i].field, values[i], i < 2)) {
            json_decref(body);
            return cli_usage_error(cmd, "--%s %s: give a number%s, or unlimited",
                                   quota__limits[i].option, values[i],
                                   i < 2 ? " of megabytes (or 2G, 512M)" : "");
        }
    char *path = cli_path(create ? "/v1/quotas" : "/v1/quotas/%s", args.items[0], NULL, NULL, NULL);
    json_t *res = NULL;
    rc = cli_api(create ? "POST" : "PUT", path, body, &res);
    free(path);
    json_decref(body);
    if (rc == 0 && !cli_json_printed(res)) {
        printf("%s the quota %s.\n", create ? "Created" : "Updated", args.items[0]);
        json_decref(res);
    }
    return rc;
}

static int cmd_create_quota(const struct cli_command *cmd, int argc, char **argv)
{
    return quota__put(cmd, argc, argv, true);
}

static int cmd_update_quota(const struct cli_command *cmd, int argc, char **argv)
{
    return quota__put(cmd, argc, argv, false);
}

static void quota__cell(const json_t *q, const char *field, bool mb, char *out, size_t size);

static void quota__megabytes(const json_t *q, const char *field, char *out, size_t size)
{
    quota__cell(q, field, true, out, size);
}

static void quota__count(const json_t *q, const char *field, char *out, size_t size)
{
    quota__cell(q, field, false, out, size);
}

static void quota__cell(const json_t *q, const char *field, bool mb, char *out, size_t size)
{
    json_t *v = json_object_get(q, field);
    if (!json_is_integer(v))
        snprintf(out, size, "unlimited");
    else if (mb && json_integer_value(v) >= 1024 && json_integer_value(v) % 1024 == 0)
        snprintf(out, size, "%lldG", (long long)json_integer_value(v) / 1024);
    else
        snprintf(out, size, "%lld%s", (long long)json_integer_value(v), mb ? "M" : "");
}

static int cmd_quotas(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 0, 0);
    if (rc != CLI_CONTINUE)
        return rc;
    /* the name, then each limit under its header (memory limits in M or G) */
    struct cli_column cols[QUOTA_LIMITS + 2] = {{.header = "name", .field = "name"}};
    for (size_t k = 0; k < QUOTA_LIMITS; k++)
        cols[k + 1] = (struct cli_column){quota__limits[k].title, quota__limits[k].field,
                                          k < 2 ? quota__megabytes : quota__count};
    return cli_list("/v1/quotas", "quotas", cols);
}

static int cmd_delete_quota(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    char *path = cli_path("/v1/quotas/%s", args.items[0], NULL, NULL, NULL);
    rc = cli_api("DELETE", path, NULL, NULL);
    free(path);
    if (rc == 0 && !cli_json_output)
        printf("Deleted the quota %s (and took it off every org and space that had it).\n",
               args.items[0]);
    return rc;
}

/* set-quota ORG QUOTA, set-space-quota ORG SPACE QUOTA; "none" takes it off. */
static int quota__assign(const struct cli_command *cmd, int argc, char **argv, bool space)
{
    struct cli_args args;
    int n = space ? 3 : 2;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, n, n);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *quota = args.items[n - 1];
    json_t *body = !strcmp(quota, "none") ? json_pack("{s:n}", "quota")
                                          : json_pack("{s:s}", "quota", quota);
    char *org = cli_escape(args.items[0]);
    char *sp = space ? cli_escape(args.items[1]) : NULL;
    char *path = space ? xasprintf("/v1/orgs/%s/spaces/%s/quota", org, sp)
                       : xasprintf("/v1/orgs/%s/quota", org);
    json_t *res = NULL;
    rc = cli_api("PUT", path, body, &res);
    if (rc == 0 && !cli_json_printed(res)) {
        printf("The %s %s%s%s now has %s%s.\n", space ? "space" : "org", args.items[0],
               space ? "/" : "", space ? args.items[1] : "",
               strcmp(quota, "none") ? "the quota " : "no quota", strcmp(quota, "none") ? quota : "");
        json_decref(res);
    }
    json_decref(body);
    free(path);
    free(org);
    free(sp);
    return rc;
}

static int cmd_set_quota(const struct cli_command *cmd, int argc, char **argv)
{
    return quota__assign(cmd, argc, argv, false);
}

static int cmd_set_space_quota(const struct cli_command *cmd, int argc, char **argv)
{
    return quota__assign(cmd, argc, argv, true);
}

/* ---- audit events ------------------------------------------------------------------------ */

static int cmd_events(const struct cli_command *cmd, int argc, char **argv)
{
    long limit = 50;
    const char *org = NULL;
    bool all = false;
    struct cli_option opts[] = {{"limit", 'n', CLI_OPT_INT, &limit},
                                {"org", 'o', CLI_OPT_STRING, &org},
                                {"all", 0, CLI_OPT_FLAG, &all},
                                {NULL, 0, 0, NULL}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 0, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    if (limit < 1 || limit > 1000)
        return cli_usage_error(cmd, "--limit is 1 to 1000");
    char *path;
    if (all) {
        path = xasprintf("/v1/admin/audit_events?limit=%ld", limit);
    } else if (org) {
        char *o = cli_escape(org);
        path = xasprintf("/v1/orgs/%s/audit_events?limit=%ld", o, limit);
        free(o);
    } else if (args.count) {
        char *target = cli_escape(args.items[0]);
        path = xasprintf("/v1/audit_events?target=%s&limit=%ld", target, limit);
        free(target);
    } else {
        path = xasprintf("/v1/audit_events?limit=%ld", limit);
    }
    json_t *res = NULL;
    rc = cli_api("GET", path, NULL, &res);
    free(path);
    if (rc != 0)
        return rc;
    if (cli_json_printed(res))
        return CLI_EXIT_OK;
    static const char *const headers[] = {"time", "event", "actor", "target", "space", NULL};
    struct cli_table *t = cli_table_new(headers);
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(res, "audit_events"), i, e)
    {
        char where[160] = "";
        if (*cli_json_str(e, "org"))
            snprintf(where, sizeof where, "%s%s%s", cli_json_str(e, "org"),
                     *cli_json_str(e, "space") ? "/" : "", cli_json_str(e, "space"));
        cli_table_add(t, cli_json_str(e, "time"), cli_json_str(e, "type"),
                      cli_json_str(e, "actor"), cli_json_str(e, "target"), where);
    }
    cli_table_print(t);
    json_decref(res);
    return CLI_EXIT_OK;
}

/* ---- an org's private domain ------------------------------------------------------------- */

static int cmd_create_private_domain(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    const char *cert = NULL, *key = NULL;
    const struct cli_option opts[] = {
        {"cert", 0, CLI_OPT_STRING, &cert}, {"key", 0, CLI_OPT_STRING, &key}, {NULL, 0, 0, NULL}};
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 2, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    if (!cert != !key)
        return cli_usage_error(cmd, "--cert and --key go together");
    char *org = cli_escape(args.items[0]);
    char *path = xasprintf("/v1/orgs/%s/domains", org);
    json_t *body = json_pack("{s:s}", "name", args.items[1]);
    json_t *res = NULL;
    rc = cli_api("POST", path, body, &res);
    if (rc == 0 && !cli_json_printed(res)) {
        printf("Created the domain %s, private to the org %s: its spaces map hosts in it with "
               "`skiff map-route APP HOST.%s`.\n",
               args.items[1], args.items[0], args.items[1]);
        json_decref(res);
    }
    json_decref(body);
    free(path);
    free(org);
    if (rc == 0 && cert)
        rc = cli_domain_set_cert(args.items[1], args.items[0], cert, key);
    return rc;
}

#define QUOTA_OPTIONS                                                                              \
    "  -m, --memory SIZE            all instances together (2G, 512M; unlimited)\n"                 \
    "  -i, --instance-memory SIZE   one instance\n"                                               \
    "  -a, --instances N            all instances of all apps\n"                                   \
    "      --apps N\n"                                                                             \
    "  -r, --routes N\n"                                                                           \
    "  -e, --event-mappings N\n"

const struct cli_command cli_quota_commands[] = {
    {"quotas", "quotas", "list the quota plans", NULL, cmd_quotas},
    {"create-quota", "create-quota NAME [-m SIZE] [-i SIZE] [-a N] [--apps N] [-r N] [-e N]",
     "make a quota plan (admin); limits left out are unlimited", QUOTA_OPTIONS, cmd_create_quota},
    {"update-quota", "update-quota NAME [-m SIZE] [-i SIZE] [-a N] [--apps N] [-r N] [-e N]",
     "change the limits given of a quota plan (admin)", QUOTA_OPTIONS, cmd_update_quota},
    {"delete-quota", "delete-quota NAME", "delete a quota plan (admin)", NULL, cmd_delete_quota},
    {"set-quota", "set-quota ORG QUOTA", "give an org a quota plan (admin; `none` takes it off)",
     NULL, cmd_set_quota},
    {"set-space-quota", "set-space-quota ORG SPACE QUOTA",
     "give a space a quota plan (OrgManager; `none` takes it off)", NULL, cmd_set_space_quota},
    {"events", "events [APP] [-n N] [-o ORG | --all]",
     "who changed what: the audit events of the target space (or of an app, an org, "
     "everything)",
     "  -n, --limit N   how many, newest first (default 50)\n"
     "  -o, --org ORG   the org's own events (spaces, roles, quota)\n"
     "      --all       every event of the platform (admin)\n",
     cmd_events},
    {"create-private-domain", "create-private-domain ORG DOMAIN [--cert FILE --key FILE]",
     "make a domain only ORG's spaces may map hosts in (OrgManager), with its own HTTPS "
     "certificate",
     "  --cert FILE   PEM certificate chain whose names cover DOMAIN or *.DOMAIN\n"
     "  --key FILE    its PEM private key\n",
     cmd_create_private_domain},
    {NULL, NULL, NULL, NULL, NULL},
};
