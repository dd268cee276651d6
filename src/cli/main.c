/* skiff: the command-line tool. Finds the command in the tables (cli.h) and runs it. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

int main(int argc, char **argv)
{
    /* Lines of streamed output (staging, logs) should appear as they come, even in a pipe. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        cli_print_help(NULL);
        return CLI_EXIT_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
        cli_print_help(NULL);
        return CLI_EXIT_OK;
    }
    const struct cli_command *cmd = cli_command_find(name);
    if (!cmd) {
        cli_usage_error(NULL, "unknown command \"%s\". `skiff help` lists the commands.", name);
        return CLI_EXIT_USAGE;
    }
    int rc = cmd->run(cmd, argc - 1, argv + 1);
    fflush(stdout);
    return rc;
}
