/* skiff cells: the skiffds that run instances, from their heartbeats (GET /v1/cells). */
#include <jansson.h>
#include <stdio.h>

#include "cli/cli.h"
#include "cli/commands.h"

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
