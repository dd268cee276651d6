/* cmd_events: the `skiff` commands for events and functions (emit, topics, tail, map-event,
 * unmap-event, event-mappings, replay, invoke). Add a row to cli_events_commands for each, with
 * its handler in this file; the table must end with the NULL row. See cli.h for the helpers. */
#include "cli/cli.h"

#include <stddef.h>

const struct cli_command cli_events_commands[] = {
    {NULL, NULL, NULL, NULL, NULL},
};
