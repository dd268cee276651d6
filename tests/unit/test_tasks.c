/* Unit tests for one-off tasks: which names and commands a task may have, the failure reason
 * its end gives, which records count against the quota, and the audit names of its routes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/audit.h"
#include "api/core_internal.h"
#include "scheduler/scheduler.h"
#include "store/store.h"

static void test_names(void **state)
{
    (void)state;
    char err[256];
    assert_true(api_task_name_check("migrate", err, sizeof err));
    assert_true(api_task_name_check("db.seed-2_x", err, sizeof err));
    char longest[SCHEDULER_TASK_NAME_MAX + 2];
    memset(longest, 'a', sizeof longest);
    longest[SCHEDULER_TASK_NAME_MAX] = '\0';
    assert_true(api_task_name_check(longest, err, sizeof err));
    longest[SCHEDULER_TASK_NAME_MAX] = 'a';
    longest[SCHEDULER_TASK_NAME_MAX + 1] = '\0';
    const char *bad[] = {"", "a/b", "../x", "a b", "tab\t", "x]", "ü", longest, NULL};
    for (size_t i = 0; bad[i]; i++) {
        err[0] = '\0';
        assert_false(api_task_name_check(bad[i], err, sizeof err));
        assert_non_null(strstr(err, "a task's name is 1 to"));
    }
    assert_false(api_task_name_check(NULL, err, sizeof err));
}

static void test_commands(void **state)
{
    (void)state;
    char err[256];
    assert_true(api_task_command_check("rake db:migrate", err, sizeof err));
    assert_true(api_task_command_check("echo \"$X\" | tr a b; exit 3", err, sizeof err));
    assert_false(api_task_command_check(NULL, err, sizeof err));
    assert_false(api_task_command_check("", err, sizeof err));
    assert_false(api_task_command_check(" \t\n", err, sizeof err));
    assert_non_null(strstr(err, "a task needs a command"));
    char *huge = malloc(API_TASK_COMMAND_MAX + 2);
    memset(huge, 'x', API_TASK_COMMAND_MAX + 1);
    huge[API_TASK_COMMAND_MAX] = '\0';
    assert_true(api_task_command_check(huge, err, sizeof err));
    huge[API_TASK_COMMAND_MAX] = 'x';
    huge[API_TASK_COMMAND_MAX + 1] = '\0';
    assert_false(api_task_command_check(huge, err, sizeof err));
    assert_non_null(strstr(err, "at most 4096"));
    free(huge);
}

static void test_failure_reasons(void **state)
{
    (void)state;
    char out[160];
    struct scheduler_task_end end = {.exit_status = 3, .reason = "exited"};
    api_task_failure_reason(&end, 256, out, sizeof out);
    assert_string_equal(out, "exited with status 3");
    end =
        (struct scheduler_task_end){.exit_status = -1, .term_signal = 9, .reason = "out of memory"};
    api_task_failure_reason(&end, 64, out, sizeof out);
    assert_string_equal(out, "out of memory: killed by signal 9 at the task's limit of 64 MB");
    end = (struct scheduler_task_end){.exit_status = -1, .term_signal = 15, .reason = "exited"};
    api_task_failure_reason(&end, 64, out, sizeof out);
    assert_string_equal(out, "killed by signal 15");
    end = (struct scheduler_task_end){.exit_status = 1, .reason = "process limit reached"};
    api_task_failure_reason(&end, 64, out, sizeof out);
    assert_string_equal(out, "exited with status 1 (process limit reached)");
}

static void test_only_active_tasks_hold_memory(void **state)
{
    (void)state;
    struct store_task list[] = {
        {.app_guid = "a", .state = "RUNNING", .memory_mb = 100},
        {.app_guid = "a", .state = "PENDING", .memory_mb = 10},
        {.app_guid = "a", .state = "CANCELING", .memory_mb = 1},
        {.app_guid = "a", .state = "SUCCEEDED", .memory_mb = 1000},
        {.app_guid = "a", .state = "FAILED", .memory_mb = 1000},
        {.app_guid = "b", .state = "RUNNING", .memory_mb = 5000},
    };
    assert_int_equal(api_core__tasks_memory_mb(list, 6, "a"), 111);
    assert_int_equal(api_core__tasks_memory_mb(list, 6, "b"), 5000);
    assert_int_equal(api_core__tasks_memory_mb(list, 6, "c"), 0);
    assert_int_equal(api_core__tasks_memory_mb(NULL, 0, "a"), 0);
}

static void test_audit_names(void **state)
{
    (void)state;
    char type[96];
    api_audit_type("POST", "/v1/apps/*/tasks", type, sizeof type);
    assert_string_equal(type, "audit.app.task.create");
    api_audit_type("POST", "/v1/apps/*/tasks/*/cancel", type, sizeof type);
    assert_string_equal(type, "audit.app.task.cancel");
    api_audit_type("POST", "/v1/apps/*/start", type, sizeof type);
    assert_string_equal(type, "audit.app.start");
    api_audit_type("DELETE", "/v1/orgs/*/spaces/*/users/*/roles/*", type, sizeof type);
    assert_string_equal(type, "audit.role.delete");
    api_audit_type("PUT", "/v1/apps/*/functions/*", type, sizeof type);
    assert_string_equal(type, "audit.function.update");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_commands),
        cmocka_unit_test(test_failure_reasons),
        cmocka_unit_test(test_only_active_tasks_hold_memory),
        cmocka_unit_test(test_audit_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
