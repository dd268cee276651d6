/* skiff cells: the skiffds that run instances, from their heartbeats (GET /v1/cells). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli/cli.h"
#include "cli/commands.h"
#include "common/util.h"

/* "used / capacity" in MiB. */
static void cells__memory(const json_t *row, const char *field, char *out, size_t size)
{
    (void)field;
    json_int_t used = json_integer_value(json_object_get(row, "memory_used_bytes"));
    json_int_t cap = json_integer_value(json_object_get(row, "memory_capacity_bytes"));
    snprintf(out, size, "%lldM / %lldM", (long long)(used >> 20), (long long)(cap >> 20));
}

static void cells__int(const json_t *row, const char *field, char *out, size_t size)
{
    snprintf(out, size, "%lld", (long long)json_integer_value(json_object_get(row, field)));
}

int cli_cmd_cells(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 0, 0);
    if (rc != CLI_CONTINUE)
        return rc;
    static const struct cli_column cols[] = {{"id", "id", NULL},
                                             {"host", "host", NULL},
                                             {"zone", "zone", NULL},
                                             {"state", "state", NULL},
                                             {"leader", "leader", cli_format_yes},
                                             {"memory", "memory", cells__memory},
                                             {"instances", "instances", cells__int},
                                             {"last heartbeat", "heartbeat_at", NULL},
                                             {0}};
    return cli_list("/v1/cells", "cells", cols);
}

/* skiff create-cell-token CELL_ID: the token alone on stdout (so that `> file` keeps it and
 * nothing else), what to do with it on stderr. A new token for the same cell replaces the old
 * one at once. */
int cli_cmd_create_cell_token(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    json_t *body = json_pack("{s:s}", "cell", args.items[0]);
    json_t *res = NULL;
    rc = cli_api("POST", "/v1/cell_tokens", body, &res);
    json_decref(body);
    if (rc != 0)
        return rc;
    if (cli_json_output) {
        cli_print_json(res);
    } else {
        printf("%s\n", json_string_value(json_object_get(res, "token")));
        fprintf(stderr,
                "%sPut it in the cell's HOME/cell-token (mode 0600) or its --cell-token-file; "
                "the cell reads it at its next fetch.\n",
                json_is_true(json_object_get(res, "replaced"))
                    ? "The cell's previous token is refused from now on. "
                    : "");
    }
    json_decref(res);
    return 0;
}

int cli_cmd_delete_cell_token(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    char *path = cli_path("/v1/cell_tokens/%s", args.items[0], NULL, NULL, NULL);
    rc = cli_api("DELETE", path, NULL, NULL);
    free(path);
    if (rc == 0 && !cli_json_output)
        printf("Cell %s's token is refused from now on.\n", args.items[0]);
    return rc;
}

int cli_cmd_cell_tokens(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 0, 0);
    if (rc != CLI_CONTINUE)
        return rc;
    static const struct cli_column cols[] = {
        {"cell", "cell", NULL}, {"created", "created_at", NULL}, {0}};
    return cli_list("/v1/cell_tokens", "cell_tokens", cols);
}
