/* commands: the handlers of the core `skiff` commands, listed in cli_core_commands
 * (commands.c). Each follows the contract of struct cli_command in cli.h. */
#ifndef SKIFF_CLI_COMMANDS_H
#define SKIFF_CLI_COMMANDS_H

#include "cli/cli.h"

#include <stdint.h>

/* "/v1/apps/NAME" + suffix, with NAME escaped. Caller frees. */
char *cli_app_path(const char *name, const char *suffix);
/* 256 -> "256M", 1024 -> "1G", 0 -> "-". */
void cli_format_mb(long long mb, char *out, size_t size);
/* Adds the sizes given by -i, -m and -k (LONG_MIN / NULL when absent) to body as the API names
 * them (instances, memory_mb, disk_mb). Returns CLI_CONTINUE, or the exit status after a usage
 * error that names the bad value. */
int cli_size_flags(const struct cli_command *cmd, long instances, const char *memory,
                   const char *disk, json_t *body);
/* Polls the app until its web instances are RUNNING (0), one crashed or the deadline passed
 * (CLI_EXIT_ERROR, after saying which); prints progress. With since_ms > 0 only instances that
 * (re)started at or after that wall-clock time count, so a restart is not mistaken for done
 * while the old instances still run; with a droplet only instances running that droplet
 * count (after staging, whose end restarts a started app onto its new droplet). */
int cli_wait_running(const char *name, long timeout_s, int64_t since_ms, const char *droplet);
/* Follows a rolling deployment of droplet (GET /v1/apps/NAME's "deployment") until every
 * instance runs it: 0; or it failed (a new instance crashed: the app stays on its old droplet)
 * or timed out: an error naming why. */
int cli_wait_deployed(const char *name, long timeout_s, const char *droplet);
/* Runs the staging stream of POST PATH (stage or restage), printing each line as it comes.
 * Returns 0 when staging succeeded; then *droplet (when not NULL) is the new droplet's guid
 * (caller frees). */
int cli_stage_stream(const char *name, const char *path, char **droplet);
/* The same, also giving the droplet's process types ({"web": "command", ...}; caller
 * decrefs) when process_types is not NULL. */
int cli_stage_stream_types(const char *name, const char *path, char **droplet,
                           json_t **process_types);

/* Whether the app is bound to the service instance (GET its bindings): 0 with *bound set, or
 * CLI_EXIT_ERROR after saying why it cannot tell. */
int cli_app_bound(const char *app, const char *instance, bool *bound);

int cli_cmd_help(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_push(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_apps(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_app(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_scale(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_set_health_check(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_set_readiness_health_check(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_autoscale(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_start(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_stop(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_restart(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_restage(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_ssh(const struct cli_command *cmd, int argc, char **argv); /* cmd_ssh.c */
int cli_cmd_enable_ssh(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_disable_ssh(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_ssh_enabled(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_allow_space_ssh(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_disallow_space_ssh(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_space_ssh_allowed(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_revisions(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_rollback(const struct cli_command *cmd, int argc, char **argv);
/* cmd_tasks.c */
int cli_cmd_run_task(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_tasks(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_terminate_task(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_delete(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_logs(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_env(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_labels(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_set_label(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_unset_label(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_set_env(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_unset_env(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_map_route(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_unmap_route(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_routes(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_domains(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_update_domain(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_delete_domain_cert(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_delete_domain(const struct cli_command *cmd, int argc, char **argv);
/* Gives a domain its own HTTPS certificate (PEM files; org: its org for a private domain,
 * else NULL) and prints what it is. Returns a CLI exit status. */
int cli_domain_set_cert(const char *domain, const char *org, const char *cert_path,
                        const char *key_path);
int cli_cmd_stacks(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_cells(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_create_cell_token(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_delete_cell_token(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_cell_tokens(const struct cli_command *cmd, int argc, char **argv);
int cli_cmd_create_domain(const struct cli_command *cmd, int argc, char **argv);

#endif
