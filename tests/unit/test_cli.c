/* Unit tests for cli/cli: option parsing, usage errors and exit codes, tables, escaping. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/util.h"

static int cli_test_run(const struct cli_command *cmd, int argc, char **argv)
{
    return 0;
}

static const struct cli_command test_cmd = {"scale", "scale NAME [-i N] [-m MEM]", "Scale", NULL,
                                            cli_test_run};

struct parsed {
    long instances;
    const char *memory;
    bool force;
    struct cli_list buildpacks;
    struct cli_args args;
};

static int parse(struct parsed *p, int min, int max, ...)
{
    char *argv[32] = {"scale"};
    int argc = 1;
    va_list ap;
    va_start(ap, max);
    for (char *a; (a = va_arg(ap, char *));)
        argv[argc++] = a;
    va_end(ap);
    memset(p, 0, sizeof(*p));
    p->instances = -1;
    struct cli_option opts[] = {{"instances", 'i', CLI_OPT_INT, &p->instances},
                                {"memory", 'm', CLI_OPT_STRING, &p->memory},
                                {"force", 'f', CLI_OPT_FLAG, &p->force},
                                {"buildpack", 'b', CLI_OPT_LIST, &p->buildpacks},
                                {0}};
    return cli_parse_options(&test_cmd, argc, argv, opts, &p->args, min, max);
}

static void test_options_long_short_and_inline(void **state)
{
    (void)state;
    struct parsed p;
    assert_int_equal(parse(&p, 1, 1, "hello", "-i", "3", "--memory=1G", "-f", NULL), CLI_CONTINUE);
    assert_int_equal(p.instances, 3);
    assert_string_equal(p.memory, "1G");
    assert_true(p.force);
    assert_int_equal(p.args.count, 1);
    assert_string_equal(p.args.items[0], "hello");

    assert_int_equal(parse(&p, 0, -1, "--instances", "2", "a", "-b", "x", "b", "--buildpack=y",
                           "--", "-i", "-", NULL),
                     CLI_CONTINUE);
    assert_int_equal(p.instances, 2);
    assert_int_equal(p.buildpacks.count, 2);
    assert_string_equal(p.buildpacks.items[1], "y");
    assert_int_equal(p.args.count, 4);
    assert_string_equal(p.args.items[2], "-i"); /* after --, options are arguments */
    assert_string_equal(p.args.items[3], "-");
    /* a negative number is an argument, not an option */
    assert_int_equal(parse(&p, 1, 1, "-5", NULL), CLI_CONTINUE);
    assert_string_equal(p.args.items[0], "-5");
}

static void test_options_errors_are_usage_errors(void **state)
{
    (void)state;
    struct parsed p;
    assert_int_equal(parse(&p, 1, 1, "hello", "-i", "two", NULL), CLI_EXIT_USAGE);
    assert_int_equal(parse(&p, 1, 1, "hello", "-i", "3x", NULL), CLI_EXIT_USAGE);
    assert_int_equal(parse(&p, 1, 1, "hello", "-i", NULL), CLI_EXIT_USAGE);
    assert_int_equal(parse(&p, 1, 1, "hello", "--nope", NULL), CLI_EXIT_USAGE);
    assert_int_equal(parse(&p, 1, 1, "hello", "-z", NULL), CLI_EXIT_USAGE);
    assert_int_equal(parse(&p, 1, 1, "hello", "--force=yes", NULL), CLI_EXIT_USAGE);
    assert_int_equal(parse(&p, 1, 1, NULL), CLI_EXIT_USAGE);
    assert_int_equal(parse(&p, 1, 1, "a", "b", NULL), CLI_EXIT_USAGE);
    /* --help is answered, and the command should end with success */
    assert_int_equal(parse(&p, 1, 1, "--help", NULL), CLI_EXIT_OK);
    /* --json is everyone's */
    cli_json_output = false;
    assert_int_equal(parse(&p, 1, 1, "a", "--json", NULL), CLI_CONTINUE);
    assert_true(cli_json_output);
    cli_json_output = false;
}

static char *table_text(struct cli_table *t)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    cli_table_fprint(t, f);
    fclose(f);
    return text;
}

static void test_table_aligns_columns(void **state)
{
    (void)state;
    static const char *const headers[] = {"name", "state", "routes", NULL};
    struct cli_table *t = cli_table_new(headers);
    cli_table_add(t, "hello", "STARTED", "hello.localhost");
    cli_table_add(t, "a-much-longer-name", "STOPPED", "");
    cli_table_add(t, "ünï", NULL, "x");
    char *text = table_text(t);
    assert_string_equal(text, "name                 state     routes\n"
                              "hello                STARTED   hello.localhost\n"
                              "a-much-longer-name   STOPPED\n"
                              "ünï                            x\n");
    free(text);
}

static void test_escape(void **state)
{
    (void)state;
    char *s = cli_escape("a b/c?d=e&f~g.h-i_j%");
    assert_string_equal(s, "a%20b%2Fc%3Fd%3De%26f~g.h-i_j%25");
    free(s);
    s = cli_escape("");
    assert_string_equal(s, "");
    free(s);
}

static void test_json_readers(void **state)
{
    (void)state;
    json_t *o = json_pack("{s:s, s:i, s:f, s:n}", "s", "x", "i", 7, "f", 2.9, "n");
    assert_string_equal(cli_json_str(o, "s"), "x");
    assert_string_equal(cli_json_str(o, "i"), "");
    assert_string_equal(cli_json_str(o, "missing"), "");
    assert_string_equal(cli_json_str(NULL, "s"), "");
    assert_int_equal(cli_json_int(o, "i"), 7);
    assert_int_equal(cli_json_int(o, "f"), 2);
    assert_int_equal(cli_json_int(o, "n"), 0);
    json_decref(o);
}

static void test_every_command_is_found_and_has_usage(void **state)
{
    (void)state;
    static const char *const names[] = {
        "login",     "push",        "apps",   "app",     "scale",         "start",   "stop",
        "restart",   "restage",     "delete", "logs",    "env",           "set-env", "unset-env",
        "map-route", "unmap-route", "routes", "domains", "create-domain", "help"};
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        const struct cli_command *c = cli_command_find(names[i]);
        assert_non_null(c);
        assert_true(str_has_prefix(c->usage, names[i]));
        assert_non_null(c->summary);
        assert_non_null(c->run);
    }
    assert_null(cli_command_find("nope"));
}

static void test_aliases_find_their_commands(void **state)
{
    (void)state;
    static const char *const pairs[][2] = {{"cups", "create-user-provided-service"},
                                           {"uups", "update-user-provided-service"},
                                           {"bs", "bind-service"},
                                           {"us", "unbind-service"},
                                           {"cs", "create-service"},
                                           {"m", "marketplace"}};
    for (size_t i = 0; i < ARRAY_SIZE(pairs); i++) {
        const struct cli_command *c = cli_command_find(pairs[i][0]);
        assert_non_null(c);
        assert_string_equal(c->name, pairs[i][1]);
    }
    /* every alias names a command, and none hides one */
    for (const struct cli_alias *a = cli_aliases; a->alias; a++) {
        assert_non_null(cli_command_find(a->name));
        assert_string_equal(cli_command_find(a->alias)->name, a->name);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_options_long_short_and_inline),
        cmocka_unit_test(test_options_errors_are_usage_errors),
        cmocka_unit_test(test_table_aligns_columns),
        cmocka_unit_test(test_escape),
        cmocka_unit_test(test_json_readers),
        cmocka_unit_test(test_every_command_is_found_and_has_usage),
        cmocka_unit_test(test_aliases_find_their_commands),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
