/* Unit tests for executor/: real child processes on a libuv loop, every wait bounded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/util.h"
#include "executor/cgroup.h"
#include "executor/executor.h"
#include "executor/proc.h"

/* Instances' ports: below the kernel's ephemeral range (32768 up by default), which any
 * process's outgoing connection or bind to port 0 may take between the allocation and the
 * instance's own bind, and below the ports the e2e tests hand out (tests/e2e/conftest.py
 * free_port: 16384-32767), so that a run beside them takes none of theirs. */
#define TEST_PORT_MIN 10000
#define TEST_PORT_MAX 16383

struct world {
    uv_loop_t loop;
    struct executor *ex;
    char home[64];
    struct buf out; /* "1:line\n" / "2:line\n" */
    int running;    /* RUNNING reports */
    int finals;     /* DOWN/CRASHED reports */
    enum instance_state final_state;
    struct instance_exit exit;
    char reason[64];
    bool shutdown_done;
    int readiness[8]; /* the readiness results reported, in order */
    int readiness_count;
    char guid[64]; /* the last from instance_guid_for */
};

/* An instance guid of this test process: an instance's cgroup is named by its guid under the
 * machine's one skiff/ cgroup, and a start kills what a cgroup of that name holds (a dead
 * daemon's leftover), so a fixed guid would kill the same test run at the same time from
 * another build tree. */
static const char *instance_guid_for(struct world *w, const char *name)
{
    snprintf(w->guid, sizeof(w->guid), "%s-%d", name, (int)getpid());
    return w->guid;
}

static void on_output(void *ctx, struct instance *inst, int stream, const char *line, size_t len)
{
    struct world *w = ctx;
    (void)inst;
    buf_printf(&w->out, "%d:%.*s\n", stream, (int)len, line);
}

static void on_state(void *ctx, struct instance *inst, enum instance_state state,
                     const struct instance_exit *exit)
{
    struct world *w = ctx;
    (void)inst;
    if (state == INSTANCE_RUNNING) {
        w->running++;
        return;
    }
    assert_true(state == INSTANCE_DOWN || state == INSTANCE_CRASHED);
    assert_non_null(exit);
    w->finals++;
    w->final_state = state;
    w->exit = *exit;
    snprintf(w->reason, sizeof(w->reason), "%s", exit->reason);
    w->exit.reason = w->reason;
}

static void on_readiness(void *ctx, struct instance *inst, bool ready)
{
    struct world *w = ctx;
    (void)inst;
    if (w->readiness_count < 8)
        w->readiness[w->readiness_count++] = ready;
}

static int setup(void **state)
{
    struct world *w = xcalloc(1, sizeof(*w));
    uv_loop_init(&w->loop);
    strcpy(w->home, "/tmp/skiff-exec-XXXXXX");
    if (!mkdtemp(w->home))
        return -1;
    struct executor_config cfg = {.home = w->home,
                                  .port_min = TEST_PORT_MIN,
                                  .port_max = TEST_PORT_MAX,
                                  .grace_ms = 500,
                                  .liveness_ms = 100,
                                  .on_readiness = on_readiness};
    if (executor_new(&w->loop, &cfg, on_output, on_state, w, &w->ex) != 0)
        return -1;
    *state = w;
    return 0;
}

static void shutdown_done(void *arg)
{
    ((struct world *)arg)->shutdown_done = true;
}

static void stop_loop(uv_timer_t *t)
{
    *(bool *)t->data = true;
}
static void poke(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until cond(w) holds; fails the test at the deadline. */
static void run_until(struct world *w, bool (*cond)(struct world *), int timeout_ms,
                      const char *what)
{
    bool expired = false;
    uv_timer_t deadline;
    uv_timer_init(&w->loop, &deadline);
    deadline.data = &expired;
    uv_timer_start(&deadline, stop_loop, (uint64_t)timeout_ms, 0);
    /* UV_RUN_ONCE may sleep until the next timer after running a callback that made cond
     * true; a short repeating timer bounds that sleep so the check below comes promptly */
    uv_timer_t poker;
    uv_timer_init(&w->loop, &poker);
    uv_timer_start(&poker, poke, 5, 5);
    while (!cond(w) && !expired)
        uv_run(&w->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&poker, NULL);
    uv_close((uv_handle_t *)&deadline, NULL);
    uv_run(&w->loop, UV_RUN_NOWAIT);
    if (!cond(w))
        fail_msg("timed out after %d ms waiting for %s; output so far:\n%s", timeout_ms, what,
                 w->out.data ? w->out.data : "");
}

static bool has_final(struct world *w)
{
    return w->finals > 0;
}
static bool has_running(struct world *w)
{
    return w->running > 0 || w->finals > 0;
}
static bool is_shut_down(struct world *w)
{
    return w->shutdown_done;
}

static int teardown(void **state)
{
    struct world *w = *state;
    executor_shutdown(w->ex, shutdown_done, w);
    run_until(w, is_shut_down, 5000, "executor shutdown");
    executor_free(w->ex);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&w->loop), 0);
    rm_rf(w->home);
    buf_free(&w->out);
    free(w);
    return 0;
}

static struct instance *start(struct world *w, const char *command, char *const *env,
                              enum health_check_type health, int port)
{
    static int counter;
    char name[32];
    snprintf(name, sizeof(name), "test-%d", ++counter);
    const char *guid = instance_guid_for(w, name);
    struct instance_spec spec = {
        .app_guid = "app-guid",
        .app_name = "app",
        .process_type = "web",
        .index = 0,
        .instance_guid = guid,
        .app_dir = w->home,
        .command = command,
        .env = env,
        .port = port,
        .health = health,
        .start_timeout_s = 10,
    };
    struct instance *inst = NULL;
    assert_int_equal(executor_start(w->ex, &spec, &inst), 0);
    assert_non_null(inst);
    assert_int_equal(instance_state(inst), INSTANCE_STARTING);
    return inst;
}

static void test_captures_lines_and_exit_status(void **state)
{
    struct world *w = *state;
    start(w, "echo hello; echo oops >&2; printf 'no newline'; exit 3", NULL, HEALTH_PROCESS, 0);
    run_until(w, has_final, 5000, "exit");
    assert_int_equal(w->final_state, INSTANCE_CRASHED);
    assert_int_equal(w->exit.exit_status, 3);
    assert_int_equal(w->exit.term_signal, 0);
    assert_string_equal(w->exit.reason, "exited");
    assert_non_null(strstr(w->out.data, "1:hello\n"));
    assert_non_null(strstr(w->out.data, "2:oops\n"));
    assert_non_null(strstr(w->out.data, "1:no newline\n"));
}

static void test_env_exactly_and_cwd(void **state)
{
    struct world *w = *state;
    char *env[] = {"GREETING=hi there", "PORT=1234", NULL};
    start(w, "echo \"g=$GREETING p=$PORT h=${HOME-unset}\"; pwd", env, HEALTH_PROCESS, 0);
    run_until(w, has_final, 5000, "exit");
    assert_int_equal(w->exit.exit_status, 0);
    assert_non_null(strstr(w->out.data, "1:g=hi there p=1234 h=unset\n"));
    char *line = xasprintf("1:%s\n", w->home);
    assert_non_null(strstr(w->out.data, line));
    free(line);
}

static void test_long_lines_are_split(void **state)
{
    struct world *w = *state;
    /* 20000 characters without a newline arrive as bounded pieces */
    start(w, "head -c 20000 /dev/zero | tr '\\0' x; echo; echo end", NULL, HEALTH_PROCESS, 0);
    run_until(w, has_final, 5000, "exit");
    size_t longest = 0, total_x = 0;
    for (char *p = w->out.data; p && *p;) {
        char *nl = strchr(p, '\n');
        size_t n = (size_t)(nl - p);
        if (n > longest)
            longest = n;
        for (size_t i = 0; i < n; i++)
            total_x += p[i] == 'x';
        p = nl + 1;
    }
    assert_true(longest <= 8192 + 2);
    assert_int_equal(total_x, 20000);
    assert_non_null(strstr(w->out.data, "1:end\n"));
}

static struct instance *comm_probe;
static bool main_process_is_sleep(struct world *w)
{
    (void)w;
    char path[64], *comm = NULL;
    snprintf(path, sizeof(path), "/proc/%d/comm", instance_pid(comm_probe));
    bool yes = file_read(path, &comm, NULL) == 0 && strcmp(comm, "sleep\n") == 0;
    free(comm);
    return yes;
}

static void test_simple_command_is_the_main_process(void **state)
{
    struct world *w = *state;
    /* no shell stays in between: the app gets the signals and its own status is reported */
    comm_probe = start(w, "sleep 30", NULL, HEALTH_PROCESS, 0);
    run_until(w, main_process_is_sleep, 5000, "sleep to be the main process");
    kill(instance_pid(comm_probe), SIGKILL);
    run_until(w, has_final, 5000, "exit");
    assert_int_equal(w->exit.term_signal, SIGKILL);
    assert_int_equal(w->exit.exit_status, -1);
}

static void test_exec_form(void **state)
{
    (void)state;
    struct {
        const char *in, *out;
    } cases[] = {
        {"python3 app.py --port $PORT", "exec python3 app.py --port $PORT"},
        {"  ./server", "exec ./server"},
        {"exit 3", "exit 3"},
        {"cd web && ./run", "cd web && ./run"},
        {"a; b", "a; b"},
        {"FOO=1 ./run", "FOO=1 ./run"},
        {"if true; then x; fi", "if true; then x; fi"},
        {"exec ./run", "exec ./run"},
        {"python3 -c 'print(1)'", "python3 -c 'print(1)'"},
        {"", ""},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char *got = proc_exec_form(cases[i].in);
        assert_string_equal(got, cases[i].out);
        free(got);
    }
}

static void test_reports_signal(void **state)
{
    struct world *w = *state;
    start(w, "kill -9 $$", NULL, HEALTH_PROCESS, 0);
    run_until(w, has_final, 5000, "exit");
    assert_int_equal(w->final_state, INSTANCE_CRASHED);
    assert_int_equal(w->exit.exit_status, -1);
    assert_int_equal(w->exit.term_signal, SIGKILL);
}

static bool said_ready(struct world *w);

static void test_stop_sends_term(void **state)
{
    struct world *w = *state;
    struct instance *inst =
        start(w, "trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.02; done",
              NULL, HEALTH_PROCESS, 0);
    run_until(w, said_ready, 5000, "the TERM trap to be set");
    assert_int_equal(instance_state(inst), INSTANCE_RUNNING);
    assert_true(instance_pid(inst) > 0);
    executor_stop(inst);
    assert_int_equal(instance_state(inst), INSTANCE_STOPPING);
    executor_stop(inst); /* idempotent */
    run_until(w, has_final, 5000, "stopped");
    assert_int_equal(w->final_state, INSTANCE_DOWN);
    assert_int_equal(w->exit.exit_status, 0);
    assert_non_null(strstr(w->out.data, "1:got-term\n"));
}

static bool said_ready(struct world *w)
{
    return w->out.data && strstr(w->out.data, "1:ready\n");
}

static void test_stop_kills_after_grace(void **state)
{
    struct world *w = *state;
    struct instance *inst =
        start(w, "trap '' TERM; echo ready; while :; do sleep 0.02; done", NULL, HEALTH_PROCESS, 0);
    run_until(w, said_ready, 5000, "the TERM trap to be set");
    executor_stop(inst);
    run_until(w, has_final, 5000, "killed after the grace period");
    assert_int_equal(w->final_state, INSTANCE_DOWN);
    assert_int_equal(w->exit.term_signal, SIGKILL);
}

static const char http_server[] =
    "exec python3 -c 'import http.server, os\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        sick = os.path.exists(\"sick\")\n"
    "        self.send_response(503 if sick else 200 if self.path == \"/ok\" else 404)\n"
    "        self.end_headers()\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer((\"127.0.0.1\", int(os.environ[\"PORT\"])), H).serve_forever()'";

static void test_health_port_and_http_pass(void **state)
{
    struct world *w = *state;
    for (int round = 0; round < 2; round++) {
        int port = executor_port_allocate(w->ex);
        assert_true(port > 0);
        char portvar[32];
        snprintf(portvar, sizeof(portvar), "PORT=%d", port);
        char *env[] = {portvar, "PATH=/usr/local/bin:/usr/bin:/bin", NULL};
        struct instance_spec spec = {
            .instance_guid = instance_guid_for(w, round ? "health-http" : "health-port"),
            .app_dir = w->home,
            .command = http_server,
            .env = env,
            .port = port,
            .health = round ? HEALTH_HTTP : HEALTH_PORT,
            .health_endpoint = "/ok",
            .start_timeout_s = 20,
        };
        struct instance *inst;
        assert_int_equal(executor_start(w->ex, &spec, &inst), 0);
        w->running = 0;
        w->finals = 0;
        run_until(w, has_running, 20000, "healthy");
        assert_int_equal(w->finals, 0);
        assert_int_equal(instance_state(inst), INSTANCE_RUNNING);
        assert_int_equal(instance_port(inst), port);
        executor_stop(inst);
        run_until(w, has_final, 5000, "stopped");
        assert_int_equal(w->final_state, INSTANCE_DOWN);
    }
}

static void test_health_http_fail_hits_start_timeout(void **state)
{
    struct world *w = *state;
    int port = executor_port_allocate(w->ex);
    char portvar[32];
    snprintf(portvar, sizeof(portvar), "PORT=%d", port);
    char *env[] = {portvar, "PATH=/usr/local/bin:/usr/bin:/bin", NULL};
    struct instance_spec spec = {
        .instance_guid = instance_guid_for(w, "health-404"),
        .app_dir = w->home,
        .command = http_server,
        .env = env,
        .port = port,
        .health = HEALTH_HTTP,
        .health_endpoint = "/missing", /* answers 404: never healthy */
        .start_timeout_s = 2,
    };
    struct instance *inst;
    assert_int_equal(executor_start(w->ex, &spec, &inst), 0);
    run_until(w, has_final, 10000, "start timeout");
    assert_int_equal(w->running, 0);
    assert_int_equal(w->final_state, INSTANCE_CRASHED);
    assert_string_equal(w->exit.reason, "start timeout");
}

/* Sidecars are processes in the instance's container: without containers there is none, and
 * the start is refused (nothing runs) rather than the sidecar lost. */
static void test_sidecars_need_containers(void **state)
{
    struct world *w = *state;
    int port = executor_port_allocate(w->ex);
    const struct instance_sidecar sidecar = {.name = "proxy", .command = "sleep 60"};
    struct instance_spec spec = {
        .instance_guid = instance_guid_for(w, "with-sidecar"),
        .app_dir = w->home,
        .command = "sleep 60",
        .port = port,
        .health = HEALTH_PROCESS,
        .sidecars = &sidecar,
        .n_sidecars = 1,
    };
    struct instance *inst = NULL;
    assert_int_equal(executor_start(w->ex, &spec, &inst), -ENOTSUP);
    assert_null(inst);
}

static void test_liveness_failure_crashes(void **state)
{
    struct world *w = *state;
    int port = executor_port_allocate(w->ex);
    char portvar[32];
    snprintf(portvar, sizeof(portvar), "PORT=%d", port);
    char *env[] = {portvar, "PATH=/usr/local/bin:/usr/bin:/bin", NULL};
    struct instance_spec spec = {
        .instance_guid = instance_guid_for(w, "gets-sick"),
        .app_dir = w->home,
        .command = http_server,
        .env = env,
        .port = port,
        .health = HEALTH_HTTP,
        .health_endpoint = "/ok",
        .start_timeout_s = 20,
    };
    struct instance *inst;
    assert_int_equal(executor_start(w->ex, &spec, &inst), 0);
    run_until(w, has_running, 20000, "healthy");
    assert_int_equal(w->finals, 0);
    /* from now on the app answers 503: liveness checks fail and the instance is killed */
    char *sick = xasprintf("%s/sick", w->home);
    assert_int_equal(file_write_atomic(sick, "", 0, 0644), 0);
    free(sick);
    run_until(w, has_final, 10000, "the liveness check to fail");
    assert_int_equal(w->final_state, INSTANCE_CRASHED);
    assert_string_equal(w->exit.reason, "health check failed");
    assert_int_equal(w->exit.term_signal, SIGKILL);
}

static bool readiness_reported(struct world *w, int n)
{
    return w->readiness_count >= n || w->finals > 0;
}
static bool one_readiness(struct world *w)
{
    return readiness_reported(w, 1);
}
static bool two_readiness(struct world *w)
{
    return readiness_reported(w, 2);
}
static bool three_readiness(struct world *w)
{
    return readiness_reported(w, 3);
}

/* A readiness check only reports: failing, the instance is told not ready and keeps running
 * (its liveness check, a port check, still passes); passing again, it is told ready. */
static void test_readiness_reports_and_never_kills(void **state)
{
    struct world *w = *state;
    int port = executor_port_allocate(w->ex);
    char portvar[32];
    snprintf(portvar, sizeof(portvar), "PORT=%d", port);
    char *env[] = {portvar, "PATH=/usr/local/bin:/usr/bin:/bin", NULL};
    struct instance_spec spec = {
        .instance_guid = instance_guid_for(w, "readiness-flips"),
        .app_dir = w->home,
        .command = http_server,
        .env = env,
        .port = port,
        .health = HEALTH_PORT,
        .start_timeout_s = 20,
        .readiness = true,
        .readiness_type = HEALTH_HTTP,
        .readiness_endpoint = "/ok",
        .readiness_interval_ms = 50,
    };
    struct instance *inst;
    assert_int_equal(executor_start(w->ex, &spec, &inst), 0);
    run_until(w, one_readiness, 20000, "ready");
    assert_int_equal(w->readiness[0], 1);
    char *sick = xasprintf("%s/sick", w->home);
    assert_int_equal(file_write_atomic(sick, "", 0, 0644), 0);
    run_until(w, two_readiness, 10000, "not ready");
    assert_int_equal(w->readiness[1], 0);
    unlink(sick);
    free(sick);
    run_until(w, three_readiness, 10000, "ready again");
    assert_int_equal(w->readiness[2], 1);
    assert_int_equal(w->finals, 0);
    assert_int_equal(instance_state(inst), INSTANCE_RUNNING);
}

static bool has_log_notice(struct world *w)
{
    return (w->out.data && strstr(w->out.data, "4:app instance exceeded log rate limit")) ||
           w->finals > 0;
}

/* Output past the log rate limit is dropped, with one notice for the second it happened in;
 * under the limit nothing is dropped. */
static void test_log_rate_limit_drops_lines_with_one_notice(void **state)
{
    struct world *w = *state;
    struct instance_spec spec = {
        .instance_guid = instance_guid_for(w, "chatty"),
        .app_dir = w->home,
        /* 200 lines of 20 bytes (with the newline) at once, against 100 bytes a second */
        .command = "i=100; while [ $i -lt 300 ]; do echo line-$i-xxxxxxxxxx; i=$((i+1)); done;"
                   " sleep 30",
        .health = HEALTH_PROCESS,
        .log_rate_limited = true,
        .log_rate_limit = 100,
    };
    struct instance *inst;
    assert_int_equal(executor_start(w->ex, &spec, &inst), 0);
    run_until(w, has_log_notice, 10000, "the notice");
    assert_int_equal(w->finals, 0);
    const char *o = w->out.data;
    assert_non_null(strstr(o, "4:app instance exceeded log rate limit (100 bytes/sec)\n"));
    /* the first five lines of the second went through, then nothing of it */
    assert_non_null(strstr(o, "1:line-100-xxxxxxxxxx\n1:line-101-xxxxxxxxxx\n"));
    assert_non_null(strstr(o, "1:line-104-xxxxxxxxxx\n"));
    assert_null(strstr(o, "1:line-105-"));
    /* one notice, however many lines were dropped in that second */
    assert_null(strstr(strstr(o, "4:app instance") + 1, "4:app instance"));
}

static void test_start_timeout_port_never_opens(void **state)
{
    struct world *w = *state;
    int port = executor_port_allocate(w->ex);
    struct instance_spec spec = {
        .instance_guid = instance_guid_for(w, "never-listens"),
        .app_dir = w->home,
        .command = "sleep 30",
        .port = port,
        .health = HEALTH_PORT,
        .start_timeout_s = 1,
    };
    struct instance *inst;
    assert_int_equal(executor_start(w->ex, &spec, &inst), 0);
    run_until(w, has_final, 10000, "start timeout");
    assert_int_equal(w->final_state, INSTANCE_CRASHED);
    assert_string_equal(w->exit.reason, "start timeout");
    assert_int_equal(w->exit.term_signal, SIGKILL);
}

static void test_port_check_ignores_other_listeners(void **state)
{
    struct world *w = *state;
    /* the test itself listens on the port: that is not the instance being ready (CLOEXEC,
     * or the instance would inherit the socket and really listen on it) */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    assert_int_equal(listen(fd, 8), 0);
    socklen_t alen = sizeof(addr);
    getsockname(fd, (struct sockaddr *)&addr, &alen);
    struct instance_spec spec = {
        .instance_guid = instance_guid_for(w, "squatted-port"),
        .app_dir = w->home,
        .command = "sleep 30",
        .port = ntohs(addr.sin_port),
        .health = HEALTH_PORT,
        .start_timeout_s = 1,
    };
    struct instance *inst;
    assert_int_equal(executor_start(w->ex, &spec, &inst), 0);
    run_until(w, has_final, 10000, "start timeout");
    close(fd);
    assert_int_equal(w->running, 0);
    assert_string_equal(w->exit.reason, "start timeout");
}

static void test_leftovers_of_a_dead_daemon_are_ended(void **state)
{
    struct world *w = *state;
    start(w, "sleep 30", NULL, HEALTH_PROCESS, 0);
    run_until(w, has_running, 5000, "running");
    /* a new executor on the same home, as when a daemon restarts after being killed: what
     * the old one left running is ended (the old executor here sees it die) */
    struct executor *ex2;
    struct executor_config cfg = {
        .home = w->home, .port_min = TEST_PORT_MIN, .port_max = TEST_PORT_MIN + 100};
    assert_int_equal(executor_new(&w->loop, &cfg, on_output, on_state, w, &ex2), 0);
    run_until(w, has_final, 5000, "the leftover instance to be ended");
    assert_int_equal(w->final_state, INSTANCE_CRASHED);
    assert_int_equal(w->exit.term_signal, SIGKILL);
    executor_free(ex2);
}

/* The cgroup an instance's folder names (a warm container's, kept in its "cgroup" file) is
 * ended with the instance: a file naming another cgroup (another instance's) is not taken, so
 * ending a leftover never kills what another cgroup holds. */
static void test_a_folder_naming_another_cgroup_ends_only_its_own(void **state)
{
    struct world *w = *state;
    char victim_name[64];
    snprintf(victim_name, sizeof victim_name, "victim-%d", (int)getpid());
    struct cgroup *victim = NULL;
    if (cgroup_create(victim_name, 0, 0, &victim) < 0)
        skip(); /* no cgroups here: nothing to end either way */
    int joined[2];
    assert_int_equal(pipe(joined), 0);
    pid_t kid = fork();
    assert_true(kid >= 0);
    if (kid == 0) {
        close(joined[0]);
        for (const char *const *f = cgroup_join_files(victim); *f; f++) {
            FILE *fp = fopen(*f, "w");
            if (fp) {
                fprintf(fp, "%d\n", (int)getpid());
                fclose(fp);
            }
        }
        if (write(joined[1], "j", 1) != 1)
            _exit(126);
        close(joined[1]);
        execlp("sleep", "sleep", "30", (char *)NULL);
        _exit(127);
    }
    close(joined[1]);
    char c;
    assert_int_equal(read(joined[0], &c, 1), 1); /* in the victim's cgroup from now on */
    close(joined[0]);
    start(w, "sleep 30", NULL, HEALTH_PROCESS, 0);
    run_until(w, has_running, 5000, "running");
    char *file = xasprintf("%s/instances/%s/cgroup", w->home, w->guid);
    assert_int_equal(file_replace(file, victim_name, strlen(victim_name), 0600), 0);
    free(file);
    struct executor *ex2;
    struct executor_config cfg = {
        .home = w->home, .port_min = TEST_PORT_MIN, .port_max = TEST_PORT_MIN + 100};
    assert_int_equal(executor_new(&w->loop, &cfg, on_output, on_state, w, &ex2), 0);
    run_until(w, has_final, 5000, "the leftover instance to be ended");
    assert_int_equal(waitpid(kid, NULL, WNOHANG), 0); /* the other cgroup's process lives */
    executor_free(ex2);
    cgroup_destroy(victim);
    assert_int_equal(waitpid(kid, NULL, 0), kid);
}

static void noop_adopt(void *ctx, struct instance *inst, const struct instance_spec *spec)
{
    (void)ctx, (void)inst, (void)spec;
}

/* A process of an instance whose shim is gone (run/instance-GUID.pid names it, with its start
 * time) is ended by executor_adopt; a pid file whose pid is now someone else's (the start time
 * differs: the pid was reused) or that has no start time is only removed. */
static void test_instances_without_a_shim_are_ended_by_adopt(void **state)
{
    struct world *w = *state;
    const char *guid = "0d6c3f8e-1111-4222-8333-444455556666";
    const char *reused = "0d6c3f8e-1111-4222-8333-777788889999";
    const char *old_format = "0d6c3f8e-1111-4222-8333-aaaabbbbcccc";
    pid_t kids[3];
    for (int i = 0; i < 3; i++) {
        kids[i] = fork();
        assert_true(kids[i] >= 0);
        if (kids[i] == 0) {
            char *const argv[] = {"sleep", "30", NULL};
            setpgid(0, 0);
            execv("/bin/sleep", argv);
            _exit(127);
        }
    }
    char path[512], text[64];
    snprintf(path, sizeof path, "%s/run/instance-%s.pid", w->home, guid);
    assert_int_equal(proc_pid_file_write(path, kids[0]), 0);
    assert_int_equal(proc_pid_file_read(path), kids[0]);
    snprintf(path, sizeof path, "%s/run/instance-%s.pid", w->home, reused);
    assert_int_equal(proc_pid_file_write(path, kids[1]), 0);
    char *written = NULL;
    assert_int_equal(file_read(path, &written, NULL), 0);
    unsigned long long start = 0;
    assert_int_equal(sscanf(written, "%*d %llu", &start), 1);
    free(written);
    snprintf(text, sizeof text, "%d %llu\n", (int)kids[1], start + 1);
    assert_int_equal(file_replace(path, text, strlen(text), 0644), 0);
    assert_int_equal(proc_pid_file_read(path), 0);
    snprintf(path, sizeof path, "%s/run/instance-%s.pid", w->home, old_format);
    snprintf(text, sizeof text, "%d\n", (int)kids[2]);
    assert_int_equal(file_replace(path, text, strlen(text), 0644), 0);
    assert_int_equal(proc_pid_file_read(path), 0);

    assert_int_equal(executor_adopt(w->ex, noop_adopt, NULL), 0);
    int status = 0;
    assert_int_equal(waitpid(kids[0], &status, 0), kids[0]);
    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
        fail_msg("the orphan ended with status %#x, not SIGKILL", status);
    for (int i = 1; i < 3; i++) {
        assert_int_equal(waitpid(kids[i], &status, WNOHANG), 0); /* not known ours: left alone */
        kill(kids[i], SIGKILL);
        waitpid(kids[i], &status, 0);
    }
    const char *all[] = {guid, reused, old_format};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/run/instance-%s.pid", w->home, all[i]);
        assert_int_equal(access(path, F_OK), -1);
    }
}

static void test_start_errors(void **state)
{
    struct world *w = *state;
    struct instance *inst = NULL;
    struct instance_spec spec = {.instance_guid = instance_guid_for(w, "bad"),
                                 .app_dir = "/nonexistent/skiff",
                                 .command = "true"};
    assert_int_equal(executor_start(w->ex, &spec, &inst), -ENOENT);
    spec.app_dir = w->home;
    spec.command = "";
    assert_int_equal(executor_start(w->ex, &spec, &inst), -EINVAL);
    assert_null(inst);
}

static void test_port_allocation_skips_busy_ports(void **state)
{
    struct world *w = *state;
    /* a port below the kernel's ephemeral range (32768 up by default): one the kernel gave
     * this test would be free for any outgoing connection on a busy machine to take in
     * between close and allocate */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int busy = 0;
    for (int tries = 0; tries < 4000 && !busy; tries++) {
        int port = 24000 + (int)((getpid() * 7 + tries) % 4000);
        addr.sin_port = htons((uint16_t)port);
        if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0)
            busy = port;
    }
    assert_true(busy > 0);
    assert_int_equal(listen(fd, 1), 0);

    struct executor *ex;
    struct executor_config cfg = {.home = w->home, .port_min = busy, .port_max = busy};
    assert_int_equal(executor_new(&w->loop, &cfg, on_output, on_state, w, &ex), 0);
    assert_int_equal(executor_port_allocate(ex), -EADDRNOTAVAIL); /* someone listens there */
    close(fd);
    assert_int_equal(executor_port_allocate(ex), busy);
    assert_int_equal(executor_port_allocate(ex), -EADDRNOTAVAIL); /* handed out already */
    executor_port_release(ex, busy);
    assert_int_equal(executor_port_allocate(ex), busy);
    executor_free(ex);
}

static void test_shutdown_stops_everything(void **state)
{
    struct world *w = *state;
    start(w, "sleep 30", NULL, HEALTH_PROCESS, 0);
    start(w, "sleep 30", NULL, HEALTH_PROCESS, 0);
    executor_shutdown(w->ex, shutdown_done, w);
    run_until(w, is_shut_down, 5000, "shutdown");
    assert_int_equal(w->finals, 2);
    assert_int_equal(w->final_state, INSTANCE_DOWN);
}

static struct instance *usage_probe;
static bool has_memory_sample(struct world *w)
{
    (void)w;
    uint64_t memory = 0;
    instance_usage(usage_probe, NULL, &memory);
    return memory > 0;
}

static void test_usage_is_measured(void **state)
{
    struct world *w = *state;
    struct instance *inst = start(w, "exec sleep 30", NULL, HEALTH_PROCESS, 0);
    usage_probe = inst;
    run_until(w, has_memory_sample, 5000, "a memory sample"); /* sampled every second */
    double cpu = -1;
    instance_usage(inst, &cpu, NULL);
    assert_true(cpu >= 0 && cpu < 64);
    executor_stop(inst);
    run_until(w, has_final, 5000, "stopped");
}

/* How many processes run `sleep 37.5` (the fork test's marker). */
static int count_marked_processes(void)
{
    DIR *d = opendir("/proc");
    int count = 0;
    struct dirent *de;
    while (d && (de = readdir(d))) {
        char path[300], cmd[64];
        snprintf(path, sizeof(path), "/proc/%s/cmdline", de->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t n = fread(cmd, 1, sizeof(cmd) - 1, f);
        fclose(f);
        if (n == 11 && memcmp(cmd,
                              "sleep\0"
                              "37.5",
                              10) == 0)
            count++;
    }
    if (d)
        closedir(d);
    return count;
}

static void test_memory_limit_kills_a_hog(void **state)
{
    struct world *w = *state;
    if (strcmp(cgroup_mode(), "none") == 0)
        skip(); /* no usable cgroups on this machine: nothing enforces memory_mb */
    char *env[] = {"PATH=/usr/local/bin:/usr/bin:/bin", NULL};
    struct instance_spec spec = {
        .instance_guid = instance_guid_for(w, "memory-hog"),
        .app_dir = w->home,
        .command = "exec python3 -c 'x = []\nwhile True: x.append(bytearray(8 << 20))'",
        .env = env,
        .memory_mb = 64,
        .health = HEALTH_PROCESS,
    };
    struct instance *inst;
    assert_int_equal(executor_start(w->ex, &spec, &inst), 0);
    run_until(w, has_final, 20000, "the hog to be killed");
    assert_int_equal(w->final_state, INSTANCE_CRASHED);
    assert_string_equal(w->exit.reason, "out of memory");
    assert_int_equal(w->exit.term_signal, SIGKILL);
}

static void test_pids_limit_contains_forks(void **state)
{
    struct world *w = *state;
    if (strcmp(cgroup_mode(), "none") == 0)
        skip();
    struct instance_spec spec = {
        .instance_guid = instance_guid_for(w, "fork-loop"),
        .app_dir = w->home,
        .command = "i=0; while [ $i -lt 300 ]; do sleep 37.5 & i=$((i+1)); done; wait",
        .pids_max = 16,
        .health = HEALTH_PROCESS,
    };
    struct instance *inst;
    assert_int_equal(executor_start(w->ex, &spec, &inst), 0);
    run_until(w, has_final, 20000, "the fork loop to hit its limit");
    assert_int_equal(w->final_state, INSTANCE_CRASHED);
    /* the shell could not fork past the limit, and nothing it started is left */
    assert_string_equal(w->exit.reason, "process limit reached");
    assert_non_null(strstr(w->out.data, "fork"));
    assert_int_equal(count_marked_processes(), 0);
}

/* ---- the shim driver: instances under skiff-shim, which outlive their executor ---------- */

static int setup_shim(void **state)
{
    struct world *w = xcalloc(1, sizeof(*w));
    uv_loop_init(&w->loop);
    strcpy(w->home, "/tmp/skiff-shim-XXXXXX");
    if (!mkdtemp(w->home))
        return -1;
    char *run = xasprintf("%s/run", w->home);
    mkdir_p(run, 0755);
    free(run);
    /* the test program lives in <build>/asan/tests, the shim in <build>/asan */
    char exe[512];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return -1;
    exe[n] = '\0';
    *strrchr(exe, '/') = '\0';
    static char shim[600];
    snprintf(shim, sizeof(shim), "%s/../skiff-shim", exe);
    if (access(shim, X_OK) != 0) {
        fprintf(stderr, "no skiff-shim at %s: build it with make asan\n", shim);
        return -1;
    }
    struct executor_config cfg = {.home = w->home,
                                  .port_min = TEST_PORT_MIN,
                                  .port_max = TEST_PORT_MAX,
                                  .grace_ms = 500,
                                  .liveness_ms = 100,
                                  .shim_path = shim};
    if (executor_new(&w->loop, &cfg, on_output, on_state, w, &w->ex) != 0)
        return -1;
    *state = w;
    return 0;
}

/* A second executor on the same home, as a restarted daemon makes. */
static void replace_executor(struct world *w)
{
    static char shim[600];
    char exe[512];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    assert_true(n > 0);
    exe[n] = '\0';
    *strrchr(exe, '/') = '\0';
    snprintf(shim, sizeof(shim), "%s/../skiff-shim", exe);
    executor_free(w->ex); /* lets the instances go: they run on under their shims */
    uv_run(&w->loop, UV_RUN_NOWAIT);
    struct executor_config cfg = {.home = w->home,
                                  .port_min = TEST_PORT_MIN,
                                  .port_max = TEST_PORT_MAX,
                                  .grace_ms = 500,
                                  .liveness_ms = 100,
                                  .shim_path = shim};
    assert_int_equal(executor_new(&w->loop, &cfg, on_output, on_state, w, &w->ex), 0);
}

static int adopted_count;
static struct instance *adopted_inst;
static char adopted_command[128];
static void on_adopt(void *ctx, struct instance *inst, const struct instance_spec *spec)
{
    (void)ctx;
    adopted_count++;
    adopted_inst = inst;
    snprintf(adopted_command, sizeof(adopted_command), "%s", spec->command);
}

static bool has_ready(struct world *w)
{
    return w->out.data && strstr(w->out.data, "1:ready");
}

static bool has_tick(struct world *w)
{
    return w->out.data && strstr(w->out.data, "1:tick");
}

static bool has_pid(struct world *w)
{
    (void)w;
    return adopted_inst && instance_pid(adopted_inst) > 0;
}

static bool pid_gone(int pid)
{
    char path[64], *text = NULL;
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    if (file_read(path, &text, NULL) != 0)
        return true;
    const char *p = strrchr(text, ')');
    bool zombie = p && p[2] == 'Z';
    free(text);
    return zombie;
}

static void test_shim_captures_lines_and_exit_status(void **state)
{
    struct world *w = *state;
    start(w, "echo out; echo err >&2; exit 3", NULL, HEALTH_PROCESS, 0);
    run_until(w, has_final, 5000, "exit");
    assert_int_equal(w->final_state, INSTANCE_CRASHED);
    assert_int_equal(w->exit.exit_status, 3);
    assert_string_equal(w->reason, "exited");
    assert_non_null(strstr(w->out.data, "1:out\n"));
    assert_non_null(strstr(w->out.data, "2:err\n"));
    /* the shim ended with its instance, and took its pid file with it */
    char *pid_file = xasprintf("%s/run", w->home);
    DIR *d = opendir(pid_file);
    struct dirent *de;
    int pid_files = 0;
    bool gone = false;
    for (int round = 0; round < 200 && !gone; round++) {
        pid_files = 0;
        rewinddir(d);
        while ((de = readdir(d)))
            pid_files += de->d_name[0] != '.';
        gone = pid_files == 0;
        if (!gone)
            usleep(10000);
    }
    closedir(d);
    free(pid_file);
    assert_int_equal(pid_files, 0);
}

static void test_shim_stop_sends_term(void **state)
{
    struct world *w = *state;
    struct instance *inst =
        start(w, "trap 'echo got term; exit 0' TERM; echo ready; while :; do sleep 0.05; done",
              NULL, HEALTH_PROCESS, 0);
    run_until(w, has_ready, 5000, "the trap to be set");
    executor_stop(inst);
    run_until(w, has_final, 5000, "stopped");
    assert_int_equal(w->final_state, INSTANCE_DOWN);
    assert_non_null(strstr(w->out.data, "1:got term"));
}

static void test_shim_instance_outlives_its_executor_and_is_adopted(void **state)
{
    struct world *w = *state;
    struct instance *inst =
        start(w, "while :; do echo tick; sleep 0.05; done", NULL, HEALTH_PROCESS, 0);
    run_until(w, has_tick, 5000, "output");
    int pid = instance_pid(inst);
    assert_true(pid > 0);
    replace_executor(w);
    buf_free(&w->out);
    memset(&w->out, 0, sizeof(w->out));
    usleep(300 * 1000); /* the instance writes on while no executor reads */
    assert_false(pid_gone(pid));
    adopted_count = 0;
    adopted_inst = NULL;
    assert_int_equal(executor_adopt(w->ex, on_adopt, w), 1);
    assert_int_equal(adopted_count, 1);
    assert_string_equal(adopted_command, "while :; do echo tick; sleep 0.05; done");
    assert_int_equal(instance_state(adopted_inst), INSTANCE_RUNNING);
    assert_int_equal(instance_pid(adopted_inst), pid);
    assert_ptr_equal(executor_find(w->ex, instance_guid(adopted_inst)), adopted_inst);
    run_until(w, has_tick, 5000, "the kept output replayed");
    /* a second adoption finds nothing new */
    assert_int_equal(executor_adopt(w->ex, on_adopt, w), 0);
    executor_stop(adopted_inst);
    run_until(w, has_final, 5000, "stopped");
    assert_int_equal(w->final_state, INSTANCE_DOWN);
    assert_true(pid_gone(pid));
}

static void test_shim_exit_while_away_is_reported(void **state)
{
    struct world *w = *state;
    struct instance *inst = start(w, "echo started; sleep 0.3; exit 7", NULL, HEALTH_PROCESS, 0);
    run_until(w, has_running, 5000, "running");
    adopted_inst = inst;
    run_until(w, has_pid, 5000, "the pid");
    int pid = instance_pid(inst);
    replace_executor(w);
    for (int round = 0; round < 500 && !pid_gone(pid); round++)
        usleep(10000);
    assert_true(pid_gone(pid));
    adopted_inst = NULL;
    assert_int_equal(executor_adopt(w->ex, on_adopt, w), 1);
    run_until(w, has_final, 5000, "the exit to be reported");
    assert_int_equal(w->final_state, INSTANCE_CRASHED);
    assert_int_equal(w->exit.exit_status, 7);
}

/* The warm pool's size: --prewarm, more after a burst of starts, at most the cap, back once
 * the burst is old; none without prewarm. */
static void test_warm_target_follows_bursts(void **state)
{
    (void)state;
    uint64_t asked[EXECUTOR_WARM_POOL_MAX] = {0};
    uint64_t t = 1000000;
    const int64_t W = EXECUTOR_WARM_DEMAND_MS; /* the default window */
    assert_int_equal(executor_warm_target(2, asked, EXECUTOR_WARM_POOL_MAX, t, W), 2);
    /* starts a second or more apart: no burst */
    for (int i = 0; i < 4; i++)
        asked[i] = t + (uint64_t)i * EXECUTOR_WARM_BURST_MS;
    uint64_t now = t + 4 * EXECUTOR_WARM_BURST_MS;
    assert_int_equal(executor_warm_target(2, asked, EXECUTOR_WARM_POOL_MAX, now, W), 2);
    /* five within a second (the four above are older than one of them) */
    for (int i = 0; i < 5; i++)
        asked[3 + i] = now + (uint64_t)i * 100;
    now += 500;
    assert_int_equal(executor_warm_target(2, asked, EXECUTOR_WARM_POOL_MAX, now, W), 5);
    assert_int_equal(executor_warm_target(1, asked, EXECUTOR_WARM_POOL_MAX, now, W), 5);
    /* prewarm above the burst wins; prewarm 0 keeps none, whatever the starts */
    assert_int_equal(executor_warm_target(6, asked, EXECUTOR_WARM_POOL_MAX, now, W), 6);
    assert_int_equal(executor_warm_target(0, asked, EXECUTOR_WARM_POOL_MAX, now, W), 0);
    /* a burst past the cap is held to it (a prewarm above the cap still holds) */
    for (int i = 0; i < EXECUTOR_WARM_POOL_MAX; i++)
        asked[i] = now + (uint64_t)i;
    assert_int_equal(executor_warm_target(2, asked, EXECUTOR_WARM_POOL_MAX, now + 10, W),
                     EXECUTOR_WARM_POOL_MAX);
    assert_int_equal(executor_warm_target(EXECUTOR_WARM_POOL_MAX + 3, asked, EXECUTOR_WARM_POOL_MAX,
                                          now + 10, W),
                     EXECUTOR_WARM_POOL_MAX + 3);
    /* the burst forgotten: back to prewarm */
    assert_int_equal(
        executor_warm_target(2, asked, EXECUTOR_WARM_POOL_MAX, now + W + EXECUTOR_WARM_POOL_MAX, W),
        2);
    /* a shorter window (--prewarm-window-ms) forgets it sooner, and not before its end */
    assert_int_equal(executor_warm_target(2, asked, EXECUTOR_WARM_POOL_MAX, now + 2999, 3000),
                     EXECUTOR_WARM_POOL_MAX);
    assert_int_equal(executor_warm_target(2, asked, EXECUTOR_WARM_POOL_MAX,
                                          now + 3000 + EXECUTOR_WARM_POOL_MAX, 3000),
                     2);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_captures_lines_and_exit_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env_exactly_and_cwd, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_lines_are_split, setup, teardown),
        cmocka_unit_test(test_exec_form),
        cmocka_unit_test(test_warm_target_follows_bursts),
        cmocka_unit_test_setup_teardown(test_reports_signal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_simple_command_is_the_main_process, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_sends_term, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_kills_after_grace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_health_port_and_http_pass, setup, teardown),
        cmocka_unit_test_setup_teardown(test_health_http_fail_hits_start_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sidecars_need_containers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_liveness_failure_crashes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readiness_reports_and_never_kills, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_rate_limit_drops_lines_with_one_notice, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_start_timeout_port_never_opens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_port_check_ignores_other_listeners, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leftovers_of_a_dead_daemon_are_ended, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_folder_naming_another_cgroup_ends_only_its_own,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_instances_without_a_shim_are_ended_by_adopt, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_start_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_port_allocation_skips_busy_ports, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shutdown_stops_everything, setup, teardown),
        cmocka_unit_test_setup_teardown(test_usage_is_measured, setup, teardown),
        cmocka_unit_test_setup_teardown(test_memory_limit_kills_a_hog, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pids_limit_contains_forks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shim_captures_lines_and_exit_status, setup_shim,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_shim_stop_sends_term, setup_shim, teardown),
        cmocka_unit_test_setup_teardown(test_shim_instance_outlives_its_executor_and_is_adopted,
                                        setup_shim, teardown),
        cmocka_unit_test_setup_teardown(test_shim_exit_while_away_is_reported, setup_shim,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
