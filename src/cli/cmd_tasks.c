/* Tasks: `skiff run-task`, `skiff tasks` and `skiff terminate-task`, Cloud Foundry's one-off
 * processes run from an app's droplet (src/api/tasks.c). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "common/util.h"

static void cli_format_task_memory(const json_t *row, const char *field, char *out, size_t size)
{
    cli_format_mb(cli_json_int(row, field), out, size);
}

/* What became of it: the failure reason, the exit status of a success, or nothing yet. */
static void cli_format_task_result(const json_t *row, const char *field, char *out, size_t size)
{
    (void)field;
    const json_t *status = json_object_get(row, "exit_status");
    if (*cli_json_str(row, "failure_reason"))
        snprintf(out, size, "%s", cli_json_str(row, "failure_reason"));
    else if (json_is_integer(status))
        snprintf(out, size, "exited with status %lld", (long long)json_integer_value(status));
    else
        snprintf(out, size, "-");
}

int cli_cmd_run_task(const struct cli_command *cmd, int argc, char **argv)
{
    const char *name = NULL, *memory = NULL;
    struct cli_option opts[] = {
        {"name", 0, CLI_OPT_STRING, &name}, {"memory", 'm', CLI_OPT_STRING, &memory}, {0}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 2, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    json_t *body = json_pack("{s:s}", "command", args.items[1]);
    if (name)
        json_object_set_new(body, "name", json_string(name));
    rc = cli_size_flags(cmd, LONG_MIN, memory, NULL, body);
    if (rc != CLI_CONTINUE) {
        json_decref(body);
        return rc;
    }
    char *path = cli_app_path(args.items[0], "/tasks");
    json_t *task = NULL;
    rc = cli_api("POST", path, body, &task);
    json_decref(body);
    free(path);
    if (rc)
        return CLI_EXIT_ERROR;
    if (!cli_json_printed(task)) {
        if (!strcmp(cli_json_str(task, "state"), "FAILED"))
            rc = cli_error("task %lld (%s) of %s could not start: %s",
                           cli_json_int(task, "sequence_id"), cli_json_str(task, "name"),
                           args.items[0], cli_json_str(task, "failure_reason"));
        else
            printf("Task %lld (%s) of %s is running.\nIts output: skiff logs %s --recent\n",
                   cli_json_int(task, "sequence_id"), cli_json_str(task, "name"), args.items[0],
                   args.items[0]);
    }
    json_decref(task);
    return rc;
}

int cli_cmd_tasks(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    static const struct cli_column cols[] = {{"id", "sequence_id", NULL},
                                             {"name", "name", NULL},
                                             {"state", "state", NULL},
                                             {"created", "created_at", NULL},
                                             {"memory", "memory_mb", cli_format_task_memory},
                                             {"command", "command", NULL},
                                             {"result", "failure_reason", cli_format_task_result},
                                             {0}};
    char *path = cli_app_path(args.items[0], "/tasks");
    rc = cli_list(path, "tasks", cols);
    free(path);
    return rc;
}

int cli_cmd_terminate_task(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 2, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    char *end = NULL;
    long long id = strtoll(args.items[1], &end, 10);
    if (!*args.items[1] || *end || id < 1)
        return cli_usage_error(cmd, "ID is a task's number (`skiff tasks %s` lists them)",
                               args.items[0]);
    char suffix[64];
    snprintf(suffix, sizeof suffix, "/tasks/%lld/cancel", id);
    char *path = cli_app_path(args.items[0], suffix);
    json_t *task = NULL;
    rc = cli_api("POST", path, NULL, &task);
    free(path);
    if (rc)
        return CLI_EXIT_ERROR;
    if (!cli_json_printed(task))
        printf("Terminating task %lld (%s) of %s.\n", id, cli_json_str(task, "name"),
               args.items[0]);
    json_decref(task);
    return CLI_EXIT_OK;
}
