/* The commands of users, logging in, tokens, orgs, spaces and roles (Cloud Foundry's verbs
 * and argument orders), listed in cli_tenancy_commands. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/util.h"

/* ---- prompting --------------------------------------------------------------------------- */

/* Reads one line from the terminal (without echo when secret); NULL when there is no
 * terminal. Caller frees. */
static char *tenancy__prompt(const char *what, bool secret)
{
    FILE *tty = fopen("/dev/tty", "r+");
    if (!tty)
        return NULL;
    /* echo goes off before the prompt shows, and without flushing: what is typed once the
     * prompt is there is kept (TCSAFLUSH would throw away a quick typist's answer) */
    struct termios old, quiet;
    bool restore = false;
    if (secret && tcgetattr(fileno(tty), &old) == 0) {
        quiet = old;
        quiet.c_lflag &= (tcflag_t) ~(ECHO | ECHONL);
        restore = tcsetattr(fileno(tty), TCSANOW, &quiet) == 0;
    }
    fprintf(tty, "%s: ", what);
    fflush(tty);
    char line[1100];
    char *got = fgets(line, sizeof line, tty);
    if (restore) {
        tcsetattr(fileno(tty), TCSANOW, &old);
        fputc('\n', tty);
    }
    fclose(tty);
    if (!got)
        return NULL;
    line[strcspn(line, "\r\n")] = '\0';
    return xstrdup(line);
}

/* The value given, else asked for; NULL (after saying why) when neither is possible. */
static char *tenancy__given_or_asked(const char *given, const char *what, bool secret,
                                     const char *option)
{
    if (given)
        return xstrdup(given);
    char *v = tenancy__prompt(what, secret);
    if (!v)
        cli_error("no terminal to ask for the %s: give it with %s", what, option);
    return v;
}

static void tenancy__zero_free(char *s)
{
    if (!s)
        return;
    volatile char *p = s;
    while (*p)
        *p++ = '\0';
    free(s);
}

/* ---- login, logout, target --------------------------------------------------------------- */

/* The only space of the only org, when the list has exactly one; org is set for one org. */
static void tenancy__single_listed(char **org, char **space)
{
    json_t *orgs = NULL;
    if (cli_api("GET", "/v1/orgs", NULL, &orgs) != 0)
        return;
    json_t *list = json_object_get(orgs, "orgs");
    if (json_array_size(list) == 1) {
        const char *name = cli_json_str(json_array_get(list, 0), "name");
        char *path = cli_path("/v1/orgs/%s/spaces", name, NULL, NULL, NULL);
        json_t *spaces = NULL;
        if (cli_api("GET", path, NULL, &spaces) == 0) {
            *org = xstrdup(name);
            json_t *sl = json_object_get(spaces, "spaces");
            if (json_array_size(sl) == 1)
                *space = xstrdup(cli_json_str(json_array_get(sl, 0), "name"));
        }
        json_decref(spaces);
        free(path);
    }
    json_decref(orgs);
}

/* The only org and space the user has, when there is exactly one; for a fresh login, as cf
 * login picks them. They are the places of the user's roles (GET /v1/auth/me): an org member
 * lists every space of the org but works only in those it has a role in; an OrgManager has
 * every space of its org, a platform admin every org. */
static void tenancy__single_space(json_t *me, char **org, char **space)
{
    json_t *user = json_object_get(me, "user");
    if (!json_is_object(user) || json_is_true(json_object_get(user, "admin"))) {
        tenancy__single_listed(org, space);
        return;
    }
    if (*cli_json_str(json_object_get(me, "token"), "space"))
        return; /* a space-limited API token: the API works in its space */
    const char *the_org = NULL, *the_space = NULL;
    bool many_orgs = false, many_spaces = false, manager = false;
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(me, "roles"), i, r)
    {
        const char *o = cli_json_str(r, "org"), *s = cli_json_str(r, "space");
        many_orgs = many_orgs || (the_org && strcmp(the_org, o));
        the_org = the_org ? the_org : o;
        if (*s) {
            many_spaces = many_spaces || (the_space && strcmp(the_space, s));
            the_space = the_space ? the_space : s;
        } else if (!strcmp(cli_json_str(r, "role"), "OrgManager")) {
            manager = true;
        }
    }
    if (!the_org || many_orgs)
        return;
    if (manager) {
        tenancy__single_listed(org, space);
        return;
    }
    *org = xstrdup(the_org);
    if (the_space && !many_spaces)
        *space = xstrdup(the_space);
}

/* The API URL given to login or api: http(s), without trailing slashes; with skip_ssl the
 * warning is printed and certificates go unchecked for the rest of this run (and in what is
 * saved). NULL after a usage error (*rc says which). */
static char *tenancy__api_url(const struct cli_command *cmd, const char *url, bool skip_ssl,
                              int *rc)
{
    if (!str_has_prefix(url, "http://") && !str_has_prefix(url, "https://")) {
        *rc = cli_usage_error(cmd, "the API URL must start with http:// or https://, not \"%s\"",
                              url);
        return NULL;
    }
    if (skip_ssl) { /* as cf does: it works, and says what it gives up */
        fprintf(stderr, "warning: --skip-ssl-validation: the API's certificate is not checked; "
                        "anyone between here and it can read and change what is sent, "
                        "passwords and tokens included.\n");
        setenv("SKIFF_SKIP_SSL_VALIDATION", "1", 1);
    } else {
        unsetenv("SKIFF_SKIP_SSL_VALIDATION");
    }
    char *the_url = xstrdup(url);
    for (size_t n = strlen(the_url); n > 0 && the_url[n - 1] == '/'; n--)
        the_url[n - 1] = '\0';
    return the_url;
}

/* skiff api: what the CLI talks to now, without URL. */
static int tenancy__api_show(void)
{
    const struct cli_target *t = cli_target();
    if (!t)
        return CLI_EXIT_ERROR;
    printf("API: %s (from %s)\n", t->api_url, t->from);
    if (str_has_prefix(t->api_url, "https://") && cli_skip_ssl_validation())
        printf("Its certificate is not checked (--skip-ssl-validation).\n");
    if (!t->token)
        printf("Not logged in: `skiff login` logs in.\n");
    else if (t->user)
        printf("Logged in as %s.\n", t->user);
    return 0;
}

/* skiff api --unset: forgets the saved API (and the login with it). */
static int tenancy__api_unset(void)
{
    char *path = cli_login_path();
    int rc = 0;
    if (unlink(path) < 0 && errno != ENOENT) {
        cli_error("could not remove %s: %s", path, strerror(errno));
        rc = CLI_EXIT_ERROR;
    } else {
        printf("No API saved (%s removed): the local skiffd's is used, if any.\n", path);
    }
    free(path);
    return rc;
}

static int cmd_api(const struct cli_command *cmd, int argc, char **argv)
{
    bool skip_ssl = false, unset = false;
    struct cli_option opts[] = {{"skip-ssl-validation", 0, CLI_OPT_FLAG, &skip_ssl},
                                {"unset", 0, CLI_OPT_FLAG, &unset},
                                {NULL, 0, 0, NULL}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 0, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    if (unset && (args.count || skip_ssl))
        return cli_usage_error(cmd, "--unset takes nothing else");
    if (unset)
        return tenancy__api_unset();
    if (!args.count) {
        if (skip_ssl)
            return cli_usage_error(cmd, "--skip-ssl-validation goes with a URL");
        return tenancy__api_show();
    }
    char *the_url = tenancy__api_url(cmd, args.items[0], skip_ssl, &rc);
    if (!the_url)
        return rc;
    /* the API must answer (and its certificate pass) before it is saved */
    setenv("SKIFF_API", the_url, 1);
    unsetenv("SKIFF_TOKEN");
    cli_target_reset();
    json_t *info = NULL;
    rc = CLI_EXIT_ERROR;
    if (cli_api("GET", "/v1/info", NULL, &info) != 0)
        goto done;
    unsetenv("SKIFF_API");
    /* a login saved for this same API stays; one for another API is forgotten */
    char *path = cli_login_path();
    json_error_t jerr;
    json_t *old = json_load_file(path, 0, &jerr);
    free(path);
    char *old_url = xstrdup(cli_json_str(old, "url"));
    for (size_t n = strlen(old_url); n > 0 && old_url[n - 1] == '/'; n--)
        old_url[n - 1] = '\0';
    bool same = !strcmp(old_url, the_url) && *cli_json_str(old, "token");
    free(old_url);
#define OLD(key) (same ? cli_json_str(old, key) : NULL)
    rc = cli_login_save(the_url, OLD("token"), OLD("refresh_token"),
                        cli_json_str(info, "router_url"), OLD("user"), OLD("org"), OLD("space"));
#undef OLD
    json_decref(old);
    if (rc == 0) {
        printf("API: %s\n", the_url);
        printf(same ? "Still logged in.\n" : "Not logged in: `skiff login` logs in.\n");
    }
done:
    json_decref(info);
    free(the_url);
    return rc;
}

static int cmd_login(const struct cli_command *cmd, int argc, char **argv)
{
    const char *api = NULL, *user = NULL, *password = NULL, *org = NULL, *space = NULL;
    const char *token = NULL;
    bool skip_ssl = false;
    struct cli_option opts[] = {
        {"api", 'a', CLI_OPT_STRING, &api},     {"skip-ssl-validation", 0, CLI_OPT_FLAG, &skip_ssl},
        {"user", 'u', CLI_OPT_STRING, &user},   {"password", 'p', CLI_OPT_STRING, &password},
        {"org", 'o', CLI_OPT_STRING, &org},     {"space", 's', CLI_OPT_STRING, &space},
        {"token", 't', CLI_OPT_STRING, &token}, {NULL, 0, 0, NULL}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 0, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    if (args.count && api)
        return cli_usage_error(cmd, "give the API once: as URL or with -a");
    const char *url = args.count ? args.items[0] : api;
    const struct cli_target *known = NULL;
    if (!url) {
        known = cli_target();
        if (!known)
            return CLI_EXIT_ERROR;
        url = known->api_url;
        skip_ssl = skip_ssl || cli_skip_ssl_validation(); /* as saved by skiff api */
    }
    char *the_url = tenancy__api_url(cmd, url, skip_ssl, &rc);
    if (!the_url)
        return rc;
    char *local_token = NULL, *name = NULL, *secret = NULL, *access = NULL, *refresh = NULL;
    char *org_name = org ? xstrdup(org) : NULL, *space_name = space ? xstrdup(space) : NULL;
    json_t *info = NULL;
    rc = CLI_EXIT_ERROR;
    if (!token && !user && !password) {
        /* the skiffd on this machine: its admin token is at hand */
        local_token = cli_local_token(the_url);
        token = local_token;
        if (token)
            printf("Using the token of the local skiffd.\n");
    }
    setenv("SKIFF_API", the_url, 1);
    unsetenv("SKIFF_TOKEN");
    cli_target_reset();
    if (!token && !user && !isatty(STDIN_FILENO)) {
        rc = cli_usage_error(cmd, "-u USER (and -p PASSWORD), or --token TOKEN, is needed: no "
                                  "local skiffd's token fits %s and there is no terminal to ask",
                             the_url);
        goto done;
    }
    if (!token) {
        name = tenancy__given_or_asked(user, "User", false, "-u USER");
        if (!name)
            goto done;
        secret = tenancy__given_or_asked(password, "Password", true, "-p PASSWORD");
        if (!secret)
            goto done;
        json_t *body = json_pack("{s:s, s:s, s:s}", "grant_type", "password", "username", name,
                                 "password", secret);
        json_t *res = NULL;
        int r = cli_api("POST", "/v1/auth/token", body, &res);
        json_decref(body);
        if (r != 0) {
            json_decref(res);
            goto done;
        }
        access = xstrdup(cli_json_str(res, "access_token"));
        refresh = xstrdup(cli_json_str(res, "refresh_token"));
        json_decref(res);
        token = access;
    }
    setenv("SKIFF_TOKEN", token, 1);
    cli_target_reset();
    /* check the token by using it */
    json_t *me = NULL;
    if (cli_api("GET", "/v1/info", NULL, &info) != 0 || cli_api("GET", "/v1/auth/me", NULL, &me))
        goto done;
    json_t *who = json_object_get(me, "user");
    const char *user_name = json_is_object(who) ? cli_json_str(who, "name") : NULL;
    if (!org_name && !space_name)
        tenancy__single_space(me, &org_name, &space_name);
    if (org_name && space_name) {
        char *path = cli_path("/v1/orgs/%s/spaces", org_name, NULL, NULL, NULL);
        json_t *spaces = NULL;
        int r = cli_api("GET", path, NULL, &spaces);
        free(path);
        bool found = false;
        size_t i;
        json_t *s;
        json_array_foreach(json_object_get(spaces, "spaces"), i, s)
        found = found || !strcmp(cli_json_str(s, "name"), space_name);
        json_decref(spaces);
        if (r != 0 || !found) {
            if (r == 0)
                cli_error("no space \"%s\" in org %s: `skiff spaces -o %s` lists them", space_name,
                          org_name, org_name);
            json_decref(me);
            goto done;
        }
    }
    unsetenv("SKIFF_API");
    unsetenv("SKIFF_TOKEN");
    rc = cli_login_save(the_url, token, refresh, cli_json_str(info, "router_url"), user_name,
                        org_name, space_name);
    if (rc == 0) {
        char *path = cli_login_path();
        printf("Logged in to %s as %s (saved in %s).\n", the_url,
               user_name && *user_name ? user_name : "the admin token", path);
        if (org_name && space_name)
            printf("Targeting org %s, space %s.\n", org_name, space_name);
        else
            printf("No space targeted: `skiff target -o ORG -s SPACE` picks one "
                   "(`skiff orgs`, `skiff spaces` list them).\n");
        free(path);
    }
    json_decref(me);
done:
    json_decref(info);
    tenancy__zero_free(secret);
    tenancy__zero_free(access);
    tenancy__zero_free(refresh);
    tenancy__zero_free(local_token);
    free(name);
    free(org_name);
    free(space_name);
    free(the_url);
    return rc;
}

static int cmd_logout(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 0, 0);
    if (rc != CLI_CONTINUE)
        return rc;
    char *path = cli_login_path();
    const struct cli_target *t = cli_target();
    if (t && t->from_login && t->refresh_token) {
        /* ends the session on the server too; a failure here still forgets it here */
        json_t *body = json_pack("{s:s}", "refresh_token", t->refresh_token);
        struct cli_request req = {.method = "POST", .path = "/v1/auth/logout", .json = body,
                                  .timeout_s = 30};
        struct cli_response res;
        cli_http(&req, &res);
        cli_response_free(&res);
        json_decref(body);
    }
    int err = unlink(path) == 0 || errno == ENOENT ? 0 : -errno;
    if (err)
        cli_error("cannot remove %s: %s", path, strerror(-err));
    else
        printf("Logged out (removed %s).\n", path);
    free(path);
    return err ? CLI_EXIT_ERROR : CLI_EXIT_OK;
}

static int cmd_target(const struct cli_command *cmd, int argc, char **argv)
{
    const char *org = NULL, *space = NULL;
    struct cli_option opts[] = {{"org", 'o', CLI_OPT_STRING, &org},
                                {"space", 's', CLI_OPT_STRING, &space},
                                {NULL, 0, 0, NULL}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 0, 0);
    if (rc != CLI_CONTINUE)
        return rc;
    const struct cli_target *t = cli_target();
    if (!t)
        return CLI_EXIT_ERROR;
    if (org || space) {
        if (!t->from_login)
            return cli_error("targets are kept with a login: `skiff login -a %s` first (the "
                             "local admin token targets default/dev)",
                             t->api_url);
        const char *o = org ? org : t->org;
        if (!o || !space)
            return cli_usage_error(cmd, "say the space too: -o ORG -s SPACE");
        char *path = cli_path("/v1/orgs/%s/spaces", o, NULL, NULL, NULL);
        json_t *spaces = NULL;
        rc = cli_api("GET", path, NULL, &spaces);
        free(path);
        bool found = false;
        size_t i;
        json_t *s;
        json_array_foreach(json_object_get(spaces, "spaces"), i, s)
        found = found || !strcmp(cli_json_str(s, "name"), space);
        json_decref(spaces);
        if (rc != 0)
            return rc;
        if (!found)
            return cli_error("no space \"%s\" in org %s: `skiff spaces -o %s` lists them", space,
                             o, o);
        char *url = xstrdup(t->api_url), *tok = t->token ? xstrdup(t->token) : NULL;
        char *ref = t->refresh_token ? xstrdup(t->refresh_token) : NULL;
        char *router = t->router_url ? xstrdup(t->router_url) : NULL;
        char *user = t->user ? xstrdup(t->user) : NULL, *oo = xstrdup(o);
        rc = cli_login_save(url, tok, ref, router, user, oo, space);
        free(url);
        tenancy__zero_free(tok);
        tenancy__zero_free(ref);
        free(router);
        free(user);
        free(oo);
        if (rc != 0)
            return rc;
        t = cli_target();
        if (!t)
            return CLI_EXIT_ERROR;
    }
    if (cli_json_output) {
        json_t *o = json_pack("{s:s, s:s?, s:s?, s:s?, s:s}", "api", t->api_url, "user", t->user,
                              "org", t->org, "space", t->space, "from", t->from);
        cli_print_json(o);
        json_decref(o);
        return CLI_EXIT_OK;
    }
    printf("API:   %s (from %s)\n", t->api_url, t->from);
    printf("User:  %s\n", t->user ? t->user : t->from_login ? "(an API token)" : "admin (local token)");
    if (t->org && t->space) {
        printf("Org:   %s\nSpace: %s\n", t->org, t->space);
    } else if (t->from_login) {
        printf("No space targeted: `skiff target -o ORG -s SPACE`\n");
    } else {
        printf("Org:   default\nSpace: dev\n");
    }
    return CLI_EXIT_OK;
}

/* ---- users ------------------------------------------------------------------------------- */

static int cmd_create_user(const struct cli_command *cmd, int argc, char **argv)
{
    bool admin = false;
    struct cli_option opts[] = {{"admin", 0, CLI_OPT_FLAG, &admin}, {NULL, 0, 0, NULL}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 2);
    if (rc != CLI_CONTINUE)
        return rc;
    json_t *body = json_pack("{s:s, s:b}", "name", args.items[0], "admin", admin);
    if (args.count > 1)
        json_object_set_new(body, "password", json_string(args.items[1]));
    json_t *res = NULL;
    rc = cli_api("POST", "/v1/users", body, &res);
    json_decref(body);
    if (rc == 0 && !cli_json_printed(res)) {
        printf("Created the user %s%s.\n", args.items[0], admin ? " (platform admin)" : "");
        if (*cli_json_str(res, "password"))
            printf("Password: %s\n(shown this once: the user changes it with `skiff passwd`)\n",
                   cli_json_str(res, "password"));
        printf("Give a role with `skiff set-space-role %s ORG SPACE SpaceDeveloper`; the user "
               "logs in with `skiff login -u %s`.\n",
               args.items[0], args.items[0]);
        json_decref(res);
    }
    return rc;
}

static int cmd_delete_user(const struct cli_command *cmd, int argc, char **argv)
{
    bool force = false;
    struct cli_option opts[] = {{"force", 'f', CLI_OPT_FLAG, &force}, {NULL, 0, 0, NULL}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    if (!force) {
        char *answer = tenancy__prompt("Really delete the user, its roles and tokens? [yN]", false);
        bool yes = answer && (answer[0] == 'y' || answer[0] == 'Y');
        free(answer);
        if (!yes)
            return cli_error("not deleted (-f deletes without asking)");
    }
    char *path = cli_path("/v1/users/%s", args.items[0], NULL, NULL, NULL);
    rc = cli_api("DELETE", path, NULL, NULL);
    free(path);
    if (rc == 0 && !cli_json_output)
        printf("Deleted the user %s.\n", args.items[0]);
    return rc;
}

static int cmd_users(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 0, 0);
    if (rc != CLI_CONTINUE)
        return rc;
    static const struct cli_column cols[] = {
        {"name", "name", NULL},
        {"admin", "admin", cli_format_yes},
        {"created", "created_at", NULL},
        {0}};
    return cli_list("/v1/users", "users", cols);
}

static int cmd_passwd(const struct cli_command *cmd, int argc, char **argv)
{
    const char *old_given = NULL, *new_given = NULL, *user = NULL;
    struct cli_option opts[] = {{"old", 0, CLI_OPT_STRING, &old_given},
                                {"new", 0, CLI_OPT_STRING, &new_given},
                                {"user", 'u', CLI_OPT_STRING, &user},
                                {NULL, 0, 0, NULL}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 0, 0);
    if (rc != CLI_CONTINUE)
        return rc;
    const struct cli_target *t = cli_target();
    if (!t)
        return CLI_EXIT_ERROR;
    const char *name = user ? user : t->user;
    if (!name)
        return cli_usage_error(cmd, "whose password? -u USER (the local admin token is no user)");
    char *old = NULL, *fresh = NULL, *again = NULL;
    rc = CLI_EXIT_ERROR;
    bool own = !user || (t->user && !strcmp(user, t->user));
    if (own && !(old = tenancy__given_or_asked(old_given, "Current password", true, "--old")))
        goto done;
    if (!(fresh = tenancy__given_or_asked(new_given, "New password", true, "--new")))
        goto done;
    if (!new_given) {
        if (!(again = tenancy__prompt("New password again", true)) || strcmp(again, fresh)) {
            cli_error("the two new passwords differ: nothing changed");
            goto done;
        }
    }
    json_t *body = json_pack("{s:s}", "password", fresh);
    if (old)
        json_object_set_new(body, "old_password", json_string(old));
    char *path = cli_path("/v1/users/%s/password", name, NULL, NULL, NULL);
    rc = cli_api("PUT", path, body, NULL);
    free(path);
    json_decref(body);
    if (rc == 0)
        printf("Changed the password of %s; its other sessions and tokens have ended.\n", name);
done:
    tenancy__zero_free(old);
    tenancy__zero_free(fresh);
    tenancy__zero_free(again);
    return rc;
}

/* ---- API tokens -------------------------------------------------------------------------- */

static int cmd_create_token(const struct cli_command *cmd, int argc, char **argv)
{
    const char *space = NULL, *role = NULL, *expires = NULL;
    struct cli_option opts[] = {{"space", 's', CLI_OPT_STRING, &space},
                                {"role", 'r', CLI_OPT_STRING, &role},
                                {"expires", 'e', CLI_OPT_STRING, &expires},
                                {NULL, 0, 0, NULL}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    json_t *body = json_pack("{s:s}", "name", args.items[0]);
    if (space) {
        /* a bare SPACE is in the target's org */
        const struct cli_target *t = cli_target();
        char *ref = strchr(space, '/') || !t || !t->org ? xstrdup(space)
                                                        : xasprintf("%s/%s", t->org, space);
        json_object_set_new(body, "space", json_string(ref));
        free(ref);
    }
    if (role)
        json_object_set_new(body, "role", json_string(role));
    if (expires) {
        long long secs = cli_duration_seconds(expires);
        if (secs < 0) {
            json_decref(body);
            return cli_usage_error(cmd, "--expires %s: write 30d, 12h, 90m or seconds", expires);
        }
        json_object_set_new(body, "expires_in", json_integer(secs));
    }
    json_t *res = NULL;
    rc = cli_api("POST", "/v1/tokens", body, &res);
    json_decref(body);
    if (rc == 0 && !cli_json_printed(res)) {
        printf("Created the token %s%s%s%s%s. It is shown this once:\n\n  %s\n\n"
               "Use it with SKIFF_API=URL SKIFF_TOKEN=TOKEN, or `skiff login -a URL --token "
               "TOKEN`.\n",
               args.items[0], space ? ", limited to " : "", space ? cli_json_str(res, "space") : "",
               role ? " as " : "", role ? role : "", cli_json_str(res, "token"));
        json_decref(res);
    }
    return rc;
}

static int cmd_tokens(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 0, 0);
    if (rc != CLI_CONTINUE)
        return rc;
    static const struct cli_column cols[] = {{"name", "name", NULL},
                                             {"space", "space", NULL},
                                             {"role", "role", NULL},
                                             {"expires", "expires_at", cli_format_never},
                                             {"created", "created_at", NULL},
                                             {0}};
    return cli_list("/v1/tokens", "tokens", cols);
}

static int cmd_revoke_token(const struct cli_command *cmd, int argc, char **argv)
{
    const char *user = NULL;
    struct cli_option opts[] = {{"user", 'u', CLI_OPT_STRING, &user}, {NULL, 0, 0, NULL}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    char *path = user ? cli_path("/v1/tokens/%s?user=%s", args.items[0], user, NULL, NULL)
                      : cli_path("/v1/tokens/%s", args.items[0], NULL, NULL, NULL);
    rc = cli_api("DELETE", path, NULL, NULL);
    free(path);
    if (rc == 0 && !cli_json_output)
        printf("Revoked the token %s: it no longer works.\n", args.items[0]);
    return rc;
}

/* ---- orgs and spaces --------------------------------------------------------------------- */

/* The org a command is about: -o, else the target's. NULL after saying so. */
static const char *tenancy__org(const struct cli_command *cmd, const char *given)
{
    if (given)
        return given;
    const struct cli_target *t = cli_target();
    if (t && t->org)
        return t->org;
    cli_usage_error(cmd, "which org? -o ORG (or `skiff target -o ORG -s SPACE`)");
    return NULL;
}

static int tenancy__list(const struct cli_command *cmd, int argc, char **argv, bool spaces)
{
    const char *org = NULL;
    struct cli_option opts[] = {{"org", 'o', CLI_OPT_STRING, &org}, {NULL, 0, 0, NULL}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, spaces ? opts : NULL, &args, 0, 0);
    if (rc != CLI_CONTINUE)
        return rc;
    char *path = NULL;
    if (spaces) {
        const char *o = tenancy__org(cmd, org);
        if (!o)
            return CLI_EXIT_USAGE;
        path = cli_path("/v1/orgs/%s/spaces", o, NULL, NULL, NULL);
    }
    static const struct cli_column cols[] = {
        {"name", "name", NULL}, {"quota", "quota", NULL}, {"created", "created_at", NULL}, {0}};
    rc = cli_list(spaces ? path : "/v1/orgs", spaces ? "spaces" : "orgs", cols);
    free(path);
    return rc;
}

static int cmd_orgs(const struct cli_command *cmd, int argc, char **argv)
{
    return tenancy__list(cmd, argc, argv, false);
}

static int cmd_spaces(const struct cli_command *cmd, int argc, char **argv)
{
    return tenancy__list(cmd, argc, argv, true);
}

static int cmd_create_org(const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    json_t *body = json_pack("{s:s}", "name", args.items[0]);
    json_t *res = NULL;
    rc = cli_api("POST", "/v1/orgs", body, &res);
    json_decref(body);
    if (rc == 0 && !cli_json_printed(res)) {
        printf("Created the org %s; you manage it. Next: `skiff create-space SPACE -o %s`.\n",
               args.items[0], args.items[0]);
        json_decref(res);
    }
    return rc;
}

static int cmd_create_space(const struct cli_command *cmd, int argc, char **argv)
{
    const char *org = NULL;
    struct cli_option opts[] = {{"org", 'o', CLI_OPT_STRING, &org}, {NULL, 0, 0, NULL}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *o = tenancy__org(cmd, org);
    if (!o)
        return CLI_EXIT_USAGE;
    char *path = cli_path("/v1/orgs/%s/spaces", o, NULL, NULL, NULL);
    json_t *body = json_pack("{s:s}", "name", args.items[0]);
    json_t *res = NULL;
    rc = cli_api("POST", path, body, &res);
    json_decref(body);
    free(path);
    if (rc == 0 && !cli_json_printed(res)) {
        printf("Created the space %s in org %s; you manage it and develop in it. "
               "`skiff target -o %s -s %s` works there.\n",
               args.items[0], o, o, args.items[0]);
        json_decref(res);
    }
    return rc;
}

static bool tenancy__confirm(bool force, const char *what)
{
    if (force)
        return true;
    char *q = xasprintf("Really delete %s? [yN]", what);
    char *answer = tenancy__prompt(q, false);
    bool yes = answer && (answer[0] == 'y' || answer[0] == 'Y');
    free(answer);
    free(q);
    if (!yes)
        cli_error("not deleted (-f deletes without asking)");
    return yes;
}

static int cmd_delete_org(const struct cli_command *cmd, int argc, char **argv)
{
    bool force = false;
    struct cli_option opts[] = {{"force", 'f', CLI_OPT_FLAG, &force}, {NULL, 0, 0, NULL}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    if (!tenancy__confirm(force, args.items[0]))
        return CLI_EXIT_ERROR;
    char *path = cli_path("/v1/orgs/%s", args.items[0], NULL, NULL, NULL);
    rc = cli_api("DELETE", path, NULL, NULL);
    free(path);
    if (rc == 0 && !cli_json_output)
        printf("Deleted the org %s, its spaces and their roles.\n", args.items[0]);
    return rc;
}

static int cmd_delete_space(const struct cli_command *cmd, int argc, char **argv)
{
    bool force = false;
    const char *org = NULL;
    struct cli_option opts[] = {{"org", 'o', CLI_OPT_STRING, &org},
                                {"force", 'f', CLI_OPT_FLAG, &force},
                                {NULL, 0, 0, NULL}};
    struct cli_args args;
    int rc = cli_parse_options(cmd, argc, argv, opts, &args, 1, 1);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *o = tenancy__org(cmd, org);
    if (!o)
        return CLI_EXIT_USAGE;
    if (!tenancy__confirm(force, args.items[0]))
        return CLI_EXIT_ERROR;
    char *path = cli_path("/v1/orgs/%s/spaces/%s", o, args.items[0], NULL, NULL);
    rc = cli_api("DELETE", path, NULL, NULL);
    free(path);
    if (rc == 0 && !cli_json_output)
        printf("Deleted the space %s of org %s.\n", args.items[0], o);
    return rc;
}

/* ---- roles ------------------------------------------------------------------------------- */

/* set-org-role USER ORG ROLE | unset-org-role ...; set-space-role USER ORG SPACE ROLE | ... */
static int tenancy__role(const struct cli_command *cmd, int argc, char **argv, bool space,
                         bool set)
{
    struct cli_args args;
    int n = space ? 4 : 3;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, n, n);
    if (rc != CLI_CONTINUE)
        return rc;
    char *path = space ? cli_path("/v1/orgs/%s/spaces/%s/users/%s/roles/%s", args.items[1],
                                  args.items[2], args.items[0], args.items[3])
                       : cli_path("/v1/orgs/%s/users/%s/roles/%s", args.items[1], args.items[0],
                                  args.items[2], NULL);
    rc = cli_api(set ? "PUT" : "DELETE", path, NULL, NULL);
    free(path);
    if (rc == 0 && !cli_json_output)
        printf("%s %s %s %s in %s%s%s.\n", set ? "Gave" : "Took", args.items[0], space ? args.items[3] : args.items[2],
               set ? "" : "away", args.items[1], space ? "/" : "", space ? args.items[2] : "");
    return rc;
}

static int cmd_set_org_role(const struct cli_command *cmd, int argc, char **argv)
{
    return tenancy__role(cmd, argc, argv, false, true);
}

static int cmd_unset_org_role(const struct cli_command *cmd, int argc, char **argv)
{
    return tenancy__role(cmd, argc, argv, false, false);
}

static int cmd_set_space_role(const struct cli_command *cmd, int argc, char **argv)
{
    return tenancy__role(cmd, argc, argv, true, true);
}

static int cmd_unset_space_role(const struct cli_command *cmd, int argc, char **argv)
{
    return tenancy__role(cmd, argc, argv, true, false);
}

static int tenancy__members(const struct cli_command *cmd, int argc, char **argv, bool space)
{
    struct cli_args args;
    int n = space ? 2 : 1;
    int rc = cli_parse_options(cmd, argc, argv, NULL, &args, n, n);
    if (rc != CLI_CONTINUE)
        return rc;
    char *path =
        space ? cli_path("/v1/orgs/%s/spaces/%s/users", args.items[0], args.items[1], NULL, NULL)
              : cli_path("/v1/orgs/%s/users", args.items[0], NULL, NULL, NULL);
    json_t *res = NULL;
    rc = cli_api("GET", path, NULL, &res);
    free(path);
    if (rc != 0)
        return rc;
    if (cli_json_printed(res))
        return CLI_EXIT_OK;
    static const char *const headers[] = {"user", "roles", NULL};
    struct cli_table *t = cli_table_new(headers);
    size_t i, k;
    json_t *u, *r;
    json_array_foreach(json_object_get(res, "users"), i, u)
    {
        char roles[256] = "";
        json_array_foreach(json_object_get(u, "roles"), k, r)
        {
            size_t used = strlen(roles);
            snprintf(roles + used, sizeof roles - used, "%s%s", used ? ", " : "",
                     json_string_value(r));
        }
        cli_table_add(t, cli_json_str(u, "name"), roles);
    }
    cli_table_print(t);
    json_decref(res);
    return CLI_EXIT_OK;
}

static int cmd_org_users(const struct cli_command *cmd, int argc, char **argv)
{
    return tenancy__members(cmd, argc, argv, false);
}

static int cmd_space_users(const struct cli_command *cmd, int argc, char **argv)
{
    return tenancy__members(cmd, argc, argv, true);
}

#define ROLES_HELP                                                                                 \
    "Org roles: OrgManager, BillingManager, OrgAuditor, OrgUser. Space roles: SpaceManager,\n"      \
    "SpaceDeveloper, SpaceAuditor, SpaceSupporter. docs/roles.md says what each may do.\n"

const struct cli_command cli_tenancy_commands[] = {
    {"login",
     "login [URL | -a URL] [-u USER] [-p PASSWORD] [-o ORG] [-s SPACE] [--token TOKEN] "
     "[--skip-ssl-validation]",
     "Log in to a Skiff API and save the login",
     "Logs in as a user (asking for what is not given; the password without echo) and saves\n"
     "the API URL, the tokens and the target in ~/.skiff/cli.json (mode 0600). The access\n"
     "token is renewed silently with the refresh token while it lasts. --token logs in with\n"
     "an API token (`skiff create-token`) instead. Without URL, user or token: the local\n"
     "skiffd's admin token ($SKIFF_HOME/api.json). Without -o/-s, the only space the user\n"
     "has is targeted.\n\n"
     "  -a, --api URL          the API (default: the one used now)\n"
     "  -u, --user USER\n"
     "  -p, --password PASS    (asked for when left out)\n"
     "  -o, --org ORG, -s, --space SPACE   the target\n"
     "  --token TOKEN          an API token instead of a user and password\n"
     "  --skip-ssl-validation  do not check the API's HTTPS certificate (warns; kept with the\n"
     "                         login). A local skiffd's CA ($SKIFF_HOME/tls/ca.pem) is trusted\n"
     "                         without it.\n",
     cmd_login},
    {"api", "api [URL [--skip-ssl-validation] | --unset]", "Show or set the API the CLI talks to",
     "With URL: checks that a Skiff API answers there (and that its certificate passes), then\n"
     "saves it in ~/.skiff/cli.json; a login saved for another API is forgotten (`skiff login`\n"
     "logs in). Without URL: the API used now and where it comes from.\n\n"
     "  --skip-ssl-validation  do not check the API's HTTPS certificate (warns; kept with the\n"
     "                         URL). A local skiffd's CA ($SKIFF_HOME/tls/ca.pem) is trusted\n"
     "                         without it.\n"
     "  --unset                forget the saved API and login\n",
     cmd_api},
    {"logout", "logout", "End the session and forget the saved login", NULL, cmd_logout},
    {"target", "target [-o ORG] [-s SPACE]", "Show or set the org and space commands work in",
     "Apps, routes, event mappings, topics and audit events are the target space's.\n", cmd_target},
    {"create-user", "create-user USER [PASSWORD] [--admin]",
     "Make a user (admin); without PASSWORD one is made and shown once", NULL, cmd_create_user},
    {"delete-user", "delete-user USER [-f]", "Delete a user with its roles and tokens (admin)",
     NULL, cmd_delete_user},
    {"users", "users", "List the users (admin)", NULL, cmd_users},
    {"passwd", "passwd [-u USER] [--old PASS] [--new PASS]",
     "Change your password (an admin: anyone's with -u)",
     "Asks for the current and the new password when not given. Ends your other sessions.\n",
     cmd_passwd},
    {"create-token", "create-token NAME [--space [ORG/]SPACE] [--role ROLE] [--expires 30d]",
     "Make an API token for CI and scripts (shown once)",
     "A token limited to a space acts only there, with the role given (which you must\n"
     "hold), and only while you hold it.\n",
     cmd_create_token},
    {"tokens", "tokens", "List your API tokens", NULL, cmd_tokens},
    {"revoke-token", "revoke-token NAME [-u USER]",
     "End an API token at once (an admin: another user's with -u)", NULL, cmd_revoke_token},
    {"orgs", "orgs", "List the orgs you have a role in", NULL, cmd_orgs},
    {"create-org", "create-org ORG", "Make an org (admin); you become its OrgManager", NULL,
     cmd_create_org},
    {"delete-org", "delete-org ORG [-f]", "Delete an org without apps (admin)", NULL,
     cmd_delete_org},
    {"spaces", "spaces [-o ORG]", "List an org's spaces", NULL, cmd_spaces},
    {"create-space", "create-space SPACE [-o ORG]",
     "Make a space (OrgManager); you become its SpaceManager and SpaceDeveloper", NULL,
     cmd_create_space},
    {"delete-space", "delete-space SPACE [-o ORG] [-f]", "Delete a space without apps", NULL,
     cmd_delete_space},
    {"set-org-role", "set-org-role USER ORG ROLE", "Give a user an org role (OrgManager)",
     ROLES_HELP, cmd_set_org_role},
    {"unset-org-role", "unset-org-role USER ORG ROLE", "Take an org role away (OrgManager)",
     ROLES_HELP, cmd_unset_org_role},
    {"set-space-role", "set-space-role USER ORG SPACE ROLE",
     "Give a user a space role (SpaceManager, OrgManager)", ROLES_HELP, cmd_set_space_role},
    {"unset-space-role", "unset-space-role USER ORG SPACE ROLE",
     "Take a space role away (SpaceManager, OrgManager)", ROLES_HELP, cmd_unset_space_role},
    {"org-users", "org-users ORG", "List an org's users and their roles", NULL, cmd_org_users},
    {"space-users", "space-users ORG SPACE", "List a space's users and their roles", NULL,
     cmd_space_users},
    {NULL, NULL, NULL, NULL, NULL},
};
