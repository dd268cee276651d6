/* commands: the table of core `skiff` commands. Usage lines and help text live here, next to
 * each other, so `skiff help` and the handlers cannot drift apart. */
#include "cli/commands.h"

#include <stddef.h>

const struct cli_command cli_core_commands[] = {
    {"push",
     "push [NAME] [-p PATH] [-f MANIFEST] [-i N] [-m MEM] [-k DISK] [-b BUILDPACK]... "
     "[-c COMMAND] [--no-route] [--no-start] [--no-manifest] [--function [FILE:HANDLER]] "
     "[--strategy rolling|recreate] [--vars-file FILE]... [--var NAME=VALUE]... "
     "[--docker-image REF [--docker-username USER]]",
     "Upload an app, stage it with a buildpack and start it",
     "Packs PATH (default: the current folder) as tar.gz, leaving out what .cfignore or\n"
     ".skiffignore lists, uploads it, stages it (the buildpack's output is shown as it comes)\n"
     "and starts it, waiting until its instances run. A manifest (-f, or ./manifest.yml when\n"
     "present) gives the settings: without NAME all its apps are pushed, with NAME that one;\n"
     "flags override it.\n\n"
     "  -p, --path PATH          folder to push (default: .)\n"
     "  -f, --manifest FILE      Cloud Foundry style manifest.yml\n"
     "  -i, --instances N        number of instances\n"
     "  -m, --memory MEM         memory per instance, like 256M or 1G\n"
     "  -k, --disk MEM           disk quota per instance, like 1G\n"
     "  -b, --buildpack NAME     buildpack to use (repeatable; a name or a folder)\n"
     "  -c, --command CMD        start command (instead of the buildpack's)\n"
     "  --no-route               do not map the default route NAME.localhost\n"
     "  --no-start               upload and stage, but do not start\n"
     "  --no-manifest            ignore ./manifest.yml\n"
     "  --function FILE:HANDLER  push a function: the handler in FILE (.py, .js or .sh); with\n"
     "                           --docker-image and no value, the image is the function: it\n"
     "                           serves CloudEvents (binary mode) on its port, from zero\n"
     "  -o, --docker-image REF   push a prebuilt image instead of a folder: from a registry\n"
     "                           ([REGISTRY/]NAME[:TAG][@DIGEST]; skiffd pulls it at each\n"
     "                           staging), or a tarball: oci-archive:FILE (an OCI image\n"
     "                           layout) or docker-archive:FILE (`docker save` output); its\n"
     "                           config says what runs\n"
     "  --docker-username USER   the registry's user; the password in CF_DOCKER_PASSWORD\n"
     "  --timeout SECONDS        how long to wait for instances to run (default: 60)\n"
     "  --strategy S             a running app's new droplet: rolling (default: each instance\n"
     "                           is replaced once its successor runs, and if one crashes the\n"
     "                           app stays on the old droplet) or recreate (all stop, then\n"
     "                           start)\n"
     "  --vars-file FILE         values for ((NAME)) in the manifest: a YAML map of NAME: value\n"
     "                           (repeatable; a later file wins)\n"
     "  --var NAME=VALUE         a value for ((NAME)) (repeatable; wins over --vars-file)\n\n"
     "Examples:\n  skiff push hello -p examples/python-web\n"
     "  skiff push -f examples/manifest.yml\n"
     "  skiff push -f manifest.yml --vars-file prod.yml --var instances=3\n",
     cli_cmd_push},
    {"apps", "apps [--labels SELECTOR]", "List the apps",
     "Shows each app's name, state, running/desired instances, memory and routes.\n\n"
     "  --labels SELECTOR   only the apps whose labels match: comma-separated KEY, !KEY,\n"
     "                      KEY=VALUE, KEY!=VALUE, KEY in (V1,V2), KEY notin (V1,V2)\n\n"
     "Example:\n  skiff apps --labels 'env=prod,tier in (web,api)'\n",
     cli_cmd_apps},
    {"app", "app NAME", "Show an app and its instances",
     "Shows the app's settings and, for each instance: index, state, since, cpu, memory,\n"
     "port (and the exit status of crashed ones).\n",
     cli_cmd_app},
    {"scale", "scale NAME [-i N] [-m MEM] [-k DISK] [-l RATE]",
     "Change an app's instances, memory or log rate limit",
     "  -i, --instances N        number of instances\n"
     "  -m, --memory MEM         memory per instance, like 256M or 1G\n"
     "  -k, --disk MEM           disk quota per instance\n"
     "  -l, --log-rate-limit R   bytes of output a second per instance, like 16K or 1M, -1 for\n"
     "                           unlimited; lines past it are dropped with one notice a second\n"
     "                           (the instances restart, rolling, to apply it)\n"
     "  --no-wait                do not wait for the instances to run\n",
     cli_cmd_scale},
    {"set-health-check",
     "set-health-check NAME TYPE [--endpoint PATH] [--invocation-timeout S] [--interval S]",
     "Change how an app's instances are checked alive",
     "TYPE is port (it accepts connections), http (GET PATH answers 200) or process (it runs).\n"
     "Three failed checks in a row restart the instance. Applies at the next restart.\n"
     "  --endpoint PATH            for http (default /)\n"
     "  --invocation-timeout S     how long one check may take (default 1)\n"
     "  --interval S               seconds between checks (default 3)\n",
     cli_cmd_set_health_check},
    {"set-readiness-health-check",
     "set-readiness-health-check NAME TYPE [--endpoint PATH] [--invocation-timeout S] "
     "[--interval S] [--process P]",
     "Change when an app's instances take requests",
     "An instance whose readiness check fails is taken out of the route table (no requests,\n"
     "no events) but not restarted; when the check passes again it takes requests again.\n"
     "TYPE is http, port or process, or none to remove the check. Applies at the next restart.\n"
     "  --endpoint PATH            for http (default /)\n"
     "  --invocation-timeout S     how long one check may take (default 1)\n"
     "  --interval S               seconds between checks (default: the health check's)\n"
     "  --process P                the process type (default web)\n"
     "Example:\n  skiff set-readiness-health-check shop http --endpoint /ready --interval 5\n",
     cli_cmd_set_readiness_health_check},
    {"autoscale",
     "autoscale NAME [--process P] [--min N] [--max N] [--target-concurrency N | --target-rps N] "
     "[--window DURATION] [--scale-down-delay DURATION] [--off]",
     "Scale a process with its requests, or show how it scales",
     "Without settings, shows the process's policy, the requests in flight and per second the\n"
     "routers see, and the autoscaler's recent decisions. With settings, the platform runs\n"
     "between --min and --max instances (--min 0: to zero when idle; the router holds requests\n"
     "while the first instance starts), as many as the requests in flight divided by the\n"
     "target (default 100 per instance), or the requests per second by --target-rps.\n"
     "Settings not given keep their value.\n\n"
     "  --process P              the process type (default: web)\n"
     "  --min N, --max N         the fewest and most instances (--max below an event mapping's\n"
     "                           --max-instances is refused, naming the mapping)\n"
     "  --target-concurrency N   requests in flight per instance\n"
     "  --target-rps N           requests per second per instance (instead)\n"
     "  --window DURATION        the stable window the load is averaged over (default 60s; the\n"
     "                           panic window, which reacts when load doubles, is a tenth)\n"
     "  --scale-down-delay D     how long fewer instances must be wanted before they go\n"
     "  --off                    the process's instance count is its user's again\n\n"
     "Example:\n  skiff autoscale hello --min 0 --max 20 --target-concurrency 10\n",
     cli_cmd_autoscale},
    {"start", "start NAME", "Start an app and wait until its instances run",
     "  --no-wait           return at once\n  --timeout SECONDS   how long to wait (default: 60)\n",
     cli_cmd_start},
    {"stop", "stop NAME", "Stop an app's instances", NULL, cli_cmd_stop},
    {"restart", "restart NAME", "Stop and start an app (picks up new environment variables)",
     "  --no-wait           return at once\n  --timeout SECONDS   how long to wait (default: 60)\n",
     cli_cmd_restart},
    {"restage", "restage NAME", "Stage an app again from its last upload, then restart it",
     "Staging output is shown as it comes. A failed staging leaves the running app as it was.\n",
     cli_cmd_restage},
    {"revisions", "revisions NAME", "List an app's revisions (its droplets, env and commands)",
     "Each new droplet (a push, a restage, a rollback) is a revision; the newest 5 are kept,\n"
     "with their droplets.\n",
     cli_cmd_revisions},
    {"rollback", "rollback NAME [REVISION] [--timeout SECONDS]",
     "Go back to an earlier revision, rolling",
     "Makes a new revision from REVISION's droplet, environment and commands (default: the\n"
     "revision before the current one) and deploys it as a push does: each instance replaced\n"
     "once its successor runs.\n",
     cli_cmd_rollback},
    {"run-task", "run-task NAME \"COMMAND\" [--name TASK] [-m MEM]",
     "Run a one-off task from an app's droplet",
     "Runs COMMAND once in a container of its own, from the app's current droplet, with the\n"
     "app's environment and services (no route, no health check, never restarted). Its output\n"
     "goes to the app's logs as [APP/TASK/TASK/0]; `skiff tasks NAME` shows how it ended.\n"
     "Its memory counts against the space's and org's quotas while it runs.\n\n"
     "  --name TASK     the task's name (default: a random one)\n"
     "  -m, --memory M  its memory limit, like 512M or 1G (default: the app's)\n\n"
     "Example:\n  skiff run-task shop \"python manage.py migrate\" --name migrate\n",
     cli_cmd_run_task},
    {"tasks", "tasks NAME", "List an app's tasks",
     "Shows each task's id, name, state (PENDING, RUNNING, CANCELING, SUCCEEDED, FAILED),\n"
     "when it was created, its memory, its command and how it ended.\n",
     cli_cmd_tasks},
    {"terminate-task", "terminate-task NAME ID", "Stop a running task of an app",
     "The task gets SIGTERM, then SIGKILL after 10 s; it ends FAILED, \"task was cancelled\".\n",
     cli_cmd_terminate_task},
    {"delete", "delete NAME [-f]", "Delete an app, its instances and its routes",
     "  -f, --force   do not ask for confirmation (needed when input is not a terminal)\n",
     cli_cmd_delete},
    {"logs", "logs NAME[/FUNC] [--recent]", "Show an app's logs (follows by default)",
     "Lines carry their source: [API], [STG/0] staging, [APP/PROC/WEB/n] the app's output,\n"
     "[APP/FUNC/NAME/n] a function inside it, [RTR/n] the router, [CELL/n] the executor.\n"
     "NAME/FUNC shows only the lines of the function FUNC of the app NAME.\n\n"
     "  --recent   print the recent lines and exit instead of following\n",
     cli_cmd_logs},
    {"labels", "labels app NAME", "List an app's labels",
     "Labels are KEY=VALUE pairs kept with an app (`skiff set-label`, or a manifest's\n"
     "metadata.labels) that `skiff apps --labels` selects apps by. `skiff app` also shows its\n"
     "annotations.\n",
     cli_cmd_labels},
    {"set-label", "set-label app NAME KEY=VALUE...", "Set labels of an app",
     "A key is a name of at most 63 letters, digits, '-', '_' and '.', starting and ending\n"
     "with a letter or digit, with an optional DNS prefix and '/' (example.com/team); a value\n"
     "is empty or like a name.\n\n"
     "Example:\n  skiff set-label app web env=prod example.com/team=shop\n",
     cli_cmd_set_label},
    {"unset-label", "unset-label app NAME KEY...", "Remove labels of an app", "",
     cli_cmd_unset_label},
    {"env", "env NAME", "Show an app's environment variables",
     "Shows the variables set with set-env, and the system ones (VCAP_APPLICATION, ...).\n",
     cli_cmd_env},
    {"set-env", "set-env NAME KEY VALUE", "Set an environment variable of an app",
     "The app sees it after `skiff restart NAME`.\n", cli_cmd_set_env},
    {"unset-env", "unset-env NAME KEY", "Remove an environment variable of an app",
     "The app stops seeing it after `skiff restart NAME`.\n", cli_cmd_unset_env},
    {"map-route",
     "map-route NAME HOST [--path PATH] [--balance POLICY] [--protocol PROTOCOL] [--https-only]",
     "Route requests for HOST[/PATH] to an app",
     "HOST must end in a known domain (`skiff domains`), like hello.localhost.\n"
     "The longest matching path wins.\n\n"
     "  --path PATH        only requests under this path prefix, like /v1\n"
     "  --balance POLICY   how requests are spread over the app's instances: round-robin\n"
     "                     (the default) or least-connection (to the one with the fewest\n"
     "                     requests in flight); on a route the app has, changes it\n"
     "  --protocol PROTOCOL what the router speaks to the app's instances: http1 (the\n"
     "                     default) or http2 (h2c, for gRPC: HTTP/2 end to end, trailers\n"
     "                     included); on a route the app has, changes it\n"
     "  --https-only       plain HTTP requests get a redirect to HTTPS (301, or 308 for\n"
     "                     methods other than GET and HEAD)\n\n"
     "Example:\n  skiff map-route hello api.localhost --path /v1 --balance least-connection\n"
     "  skiff map-route greeter grpc.localhost --protocol http2\n",
     cli_cmd_map_route},
    {"unmap-route", "unmap-route NAME HOST [--path PATH]", "Remove a route from an app",
     "  --path PATH   the path the route was mapped with\n", cli_cmd_unmap_route},
    {"routes", "routes", "List the routes",
     "Shows each route's host, path, app, the instances behind it, its balance and its\n"
     "protocol.\n",
     cli_cmd_routes},
    {"domains", "domains", "List the domains routes can use", NULL, cli_cmd_domains},
    {"stacks", "stacks", "List the stacks (root file systems) apps run on", NULL, cli_cmd_stacks},
    {"cells", "cells", "List the skiffds that run instances (platform admin)",
     "Shows each cell's id, host, zone, state (up, or missing when it has not sent a\n"
     "heartbeat for three of its intervals), whether it leads, its memory (used / capacity),\n"
     "its instances and its last heartbeat.\n",
     cli_cmd_cells},
    {"create-cell-token", "create-cell-token CELL_ID",
     "Make a cell's own token to fetch droplets (platform admin)",
     "Prints the token once, alone on stdout; CELL_ID is the cell's id (its HOME/cell-id,\n"
     "or `skiff cells`). The token reads only the droplets the leader places on that cell.\n"
     "A new token for the same cell refuses its previous one at once (rotation: put the new\n"
     "one in the cell's token file; the cell reads it at its next fetch, no restart).\n"
     "Example:\n  skiff create-cell-token 0123456789abcdef0123456789abcdef > cell-token\n",
     cli_cmd_create_cell_token},
    {"delete-cell-token", "delete-cell-token CELL_ID",
     "Refuse a cell's token from now on (platform admin)", NULL, cli_cmd_delete_cell_token},
    {"cell-tokens", "cell-tokens", "List the cells that have a token (platform admin)", NULL,
     cli_cmd_cell_tokens},
    {"create-domain", "create-domain NAME [--cert FILE --key FILE]",
     "Add a shared domain for routes (with its own HTTPS certificate)",
     "  --cert FILE   PEM certificate chain whose names cover NAME or *.NAME\n"
     "  --key FILE    its PEM private key (kept where only the platform reads it)\n"
     "Example:\n  skiff create-domain example.test --cert example.pem --key example.key\n",
     cli_cmd_create_domain},
    {"update-domain", "update-domain NAME --cert FILE --key FILE",
     "Give a domain a new HTTPS certificate (no restart; open connections keep theirs)",
     "  --cert FILE   PEM certificate chain whose names cover NAME or *.NAME\n"
     "  --key FILE    its PEM private key\n",
     cli_cmd_update_domain},
    {"delete-domain-cert", "delete-domain-cert NAME",
     "Remove a domain's own HTTPS certificate (the default one serves it again)",
     "Removes the certificate and key from the store, from this host's router and from every\n"
     "router on TLS NATS; new connections to NAME get the default certificate at once, open\n"
     "ones keep theirs. A private domain's needs its OrgManager, a shared one's the admin.\n",
     cli_cmd_delete_domain_cert},
    {"delete-domain", "delete-domain NAME [-f]",
     "Delete a domain and its HTTPS certificate (refused while routes use it)",
     "  -f, --force   do not ask for confirmation\n"
     "A shared domain needs the admin, a private one its org's OrgManager. Routes on the\n"
     "domain are not deleted with it: the request is refused, naming them, until they are\n"
     "unmapped (`skiff unmap-route`). localhost, the built-in shared domain, cannot be deleted.\n",
     cli_cmd_delete_domain},
    {"ssh", "ssh NAME [-i INDEX] [--process TYPE] [-c COMMAND] [-t|-T]",
     "Run a shell or a command inside a running instance",
     "Runs COMMAND (with /bin/sh -c), or a login shell without -c, inside the container of\n"
     "instance INDEX (default 0) of the app's process TYPE (default web): its file system,\n"
     "processes, network and limits, as vcap in /home/vcap/app with the instance's\n"
     "environment. Input, output and errors are passed through; skiff ssh exits as the\n"
     "command does (128+N when a signal N killed it, 255 when the session failed). A shell\n"
     "typed at a terminal gets a terminal inside (its size follows the window's). Ending\n"
     "skiff ssh ends everything the command started. Needs the right to change the app\n"
     "(SpaceDeveloper).\n\n"
     "  -i, --index INDEX          the instance (default 0)\n"
     "  --process TYPE             the process type (default web)\n"
     "  -c, --command COMMAND      run this instead of a shell\n"
     "  -t, --force-pseudo-tty     a terminal even with -c or when stdin is not one\n"
     "  -T, --disable-pseudo-tty   no terminal\n\n"
     "Examples:\n  skiff ssh hello\n  skiff ssh hello -i 1 -c 'ps aux'\n",
     cli_cmd_ssh},
    {"enable-ssh", "enable-ssh NAME", "Let skiff ssh enter the app's instances (the default)",
     "Sessions also need the app's space to allow ssh (`skiff space-ssh-allowed SPACE`).\n"
     "Takes effect at once, with no restart. Needs SpaceDeveloper.\n",
     cli_cmd_enable_ssh},
    {"disable-ssh", "disable-ssh NAME", "Refuse new skiff ssh sessions into the app",
     "Sessions already open go on until they end. Needs SpaceDeveloper.\n", cli_cmd_disable_ssh},
    {"ssh-enabled", "ssh-enabled NAME", "Say whether skiff ssh may enter the app, and why not",
     NULL, cli_cmd_ssh_enabled},
    {"allow-space-ssh", "allow-space-ssh SPACE", "Allow ssh into the apps of a space (the default)",
     "SPACE is in the target org, or give ORG/SPACE. Each app's own setting (enable-ssh)\n"
     "still applies. Needs SpaceManager (or the org's OrgManager).\n",
     cli_cmd_allow_space_ssh},
    {"disallow-space-ssh", "disallow-space-ssh SPACE",
     "Refuse new ssh sessions into every app of a space",
     "SPACE is in the target org, or give ORG/SPACE. Needs SpaceManager (or the org's\n"
     "OrgManager).\n",
     cli_cmd_disallow_space_ssh},
    {"space-ssh-allowed", "space-ssh-allowed SPACE", "Say whether a space allows ssh into its apps",
     "SPACE is in the target org, or give ORG/SPACE.\n", cli_cmd_space_ssh_allowed},
    {"help", "help [COMMAND]", "Show the commands, or the help of one", NULL, cli_cmd_help},
    {NULL, NULL, NULL, NULL, NULL},
};
