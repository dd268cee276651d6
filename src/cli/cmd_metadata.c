/* skiff labels / set-label / unset-label: an app's labels (GET/PATCH /v1/apps/NAME/metadata),
 * spelled as Cloud Foundry's `cf labels app NAME`, `cf set-label app NAME KEY=VALUE...`. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/commands.h"
#include "common/util.h"

/* The resource type and name the arguments start with; NULL after a usage error. */
static const char *metadata__app(const struct cli_command *cmd, const struct cli_args *args,
                                 int *rc)
{
    if (strcmp(args->items[0], "app") != 0) {
        *rc = cli_usage_error(cmd, "labels are kept on apps: %s app NAME ...", cmd->name);
        return NULL;
    }
    return args->items[1];
}

static void metadata__print(const char *part, json_t *m)
{
    json_t *o = json_object_get(m, part);
    if (json_object_size(o) == 0) {
        printf("No %s.\n", part);
        return;
    }
    static const char *const headers[] = {"key", "value", NULL};
    struct cli_table *t = cli_table_new(headers);
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
        cli_table_add(t, k, json_string_value(v) ? json_string_value(v) : "");
    cli_table_print(t);
}

int cli_cmd_labels(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 2, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *name = metadata__app(cmd, &args, &rc);
    if (!name)
        return rc;
    char *path = cli_app_path(name, "/metadata");
    json_t *m = NULL;
    rc = cli_api("GET", path, NULL, &m);
    free(path);
    if (rc)
        return rc;
    if (!cli_json_printed(m)) {
        printf("Getting labels for app %s...\n\n", name);
        metadata__print("labels", m);
        json_decref(m);
    }
    return CLI_EXIT_OK;
}

/* PATCHes {"labels": labels} and says so. */
static int metadata__patch(const char *name, json_t *labels, const char *done)
{
    char *path = cli_app_path(name, "/metadata");
    json_t *body = json_pack("{s:o}", "labels", labels);
    int rc = cli_api("PATCH", path, body, NULL);
    json_decref(body);
    free(path);
    if (rc == 0)
        printf("%s for app %s.\n", done, name);
    return rc ? CLI_EXIT_ERROR : CLI_EXIT_OK;
}

/* set-label (KEY=VALUE...) and unset-label (KEY...): one PATCH of the labels given. */
static int metadata__labels_change(const struct cli_command *cmd, int argc, char **argv, bool set)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 3, -1);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *name = metadata__app(cmd, &args, &rc);
    if (!name)
        return rc;
    json_t *labels = json_object();
    for (int i = 2; i < args.count; i++) {
        if (!set) {
            json_object_set_new(labels, args.items[i], json_null());
            continue;
        }
        const char *eq = strchr(args.items[i], '=');
        if (!eq || eq == args.items[i]) {
            json_decref(labels);
            return cli_usage_error(cmd, "\"%s\" is not KEY=VALUE", args.items[i]);
        }
        char *key = xstrndup(args.items[i], (size_t)(eq - args.items[i]));
        json_object_set_new(labels, key, json_string(eq + 1));
        free(key);
    }
    return metadata__patch(name, labels, set ? "Set the labels" : "Removed the labels");
}

int cli_cmd_set_label(const struct cli_command *cmd, int argc, char **argv)
{
    return metadata__labels_change(cmd, argc, argv, true);
}

int cli_cmd_unset_label(const struct cli_command *cmd, int argc, char **argv)
{
    return metadata__labels_change(cmd, argc, argv, false);
}
