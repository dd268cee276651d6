/* container: the config's JSON, the stack, disk images, and containers run for real (as
 * root): what the program inside is, sees and may do, and how its end is reported. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <glob.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/util.h"
#include "container/container.h"
#include "container/container_internal.h"
#include "container/seccomp.h"
#include "executor/cgroup.h"

struct world {
    char home[64];
    char *stack;
    char *droplet;
    char *pool;
    char *seccomp_bpf; /* the filter built ahead, as skiffd gives it to its containers */
    char *disk_from;   /* the containers' disk_from (staging's shared disk), or NULL */
    bool warm;         /* run_in_container makes a warm container, then starts it */
    char **warm_program; /* and runs this in it ahead, when set */
    const char *warm_start; /* and sends this start instead of the script's, when set */
    struct container_sidecar *sidecars; /* run beside the script */
    size_t n_sidecars;
};

static int setup(void **state)
{
    struct world *w = xcalloc(1, sizeof *w);
    strcpy(w->home, "/tmp/skiff-test-container-XXXXXX");
    assert_non_null(mkdtemp(w->home));
    char err[256] = "";
    int rc = container_stack_prepare(w->home, &w->stack, err, sizeof err);
    assert_int_equal(rc, 0);
    w->droplet = xasprintf("%s/droplet", w->home);
    assert_int_equal(mkdir_p(w->droplet, 0755), 0);
    char *file = xasprintf("%s/hello.txt", w->droplet);
    assert_int_equal(file_write_atomic(file, "hello\n", 6, 0644), 0);
    free(file);
    /* as staging leaves a droplet: the containers' vcap owns it */
    assert_int_equal(container_chown_tree(w->droplet, CONTAINER_DEFAULT_UID_BASE), 0);
    w->pool = xasprintf("%s/disks", w->home);
    w->seccomp_bpf = xasprintf("%s/seccomp.bpf", w->home);
    assert_int_equal(seccomp_export_default(w->seccomp_bpf, err, sizeof err), 0);
    *state = w;
    return 0;
}

static int teardown(void **state)
{
    struct world *w = *state;
    rm_rf(w->home);
    free(w->stack);
    free(w->droplet);
    free(w->pool);
    free(w->seccomp_bpf);
    free(w);
    return 0;
}

/* Runs `sh -c script` in a container (in a child: container_run makes the caller's mount
 * namespace private); its stdout into out, and its wait status. */
static int run_in_container(struct world *w, const char *script, int disk_mb, char *out,
                            size_t outlen)
{
    static int n;
    char *scratch = xasprintf("%s/scratch-%d", w->home, n++);
    assert_int_equal(mkdir_p(scratch, 0700), 0);
    struct container_mount droplet = {.source = w->droplet,
                                      .target = CONTAINER_APP_DIR,
                                      .kind = CONTAINER_MOUNT_OVERLAY};
    struct container_config cfg = {.hostname = "test-instance",
                                   .stack = w->stack,
                                   .scratch = scratch,
                                   .disk_mb = disk_mb,
                                   .disk_pool = w->pool,
                                   .disk_from = w->disk_from,
                                   .seccomp_bpf = w->seccomp_bpf,
                                   .uid_base = CONTAINER_DEFAULT_UID_BASE,
                                   .cwd = CONTAINER_APP_DIR,
                                   .mounts = &droplet,
                                   .n_mounts = 1,
                                   .sidecars = w->sidecars,
                                   .n_sidecars = w->n_sidecars};
    if (w->warm) {
        cfg.hostname = "warm";
        cfg.mounts = NULL;
        cfg.n_mounts = 0;
        cfg.warm_socket = "warm.sock";
        cfg.warm_program = w->warm_program;
    }
    char *argv[] = {"/bin/sh", "-c", (char *)script, NULL};
    char *envp[] = {"PATH=/usr/bin:/bin", "HOME=/home/vcap/app", NULL};
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(pipefd[1], 1);
        close(pipefd[0]);
        char err[512] = "";
        int st = container_run(&cfg, w->warm ? NULL : argv, w->warm ? NULL : envp, err,
                               sizeof err);
        if (st < 0) {
            fprintf(stderr, "container_run: %s\n", err);
            _exit(125);
        }
        if (WIFSIGNALED(st))
            _exit(200 + WTERMSIG(st));
        _exit(WEXITSTATUS(st));
    }
    close(pipefd[1]);
    if (w->warm) {
        /* ready once its socket is there; the folder may move then (skiffd renames it) */
        char *sock = xasprintf("%s/warm.sock", scratch);
        for (int i = 0; i < 30000 && access(sock, F_OK) < 0; i++)
            usleep(1000);
        char *moved = xasprintf("%s-started", scratch);
        assert_int_equal(rename(scratch, moved), 0);
        char *moved_sock = xasprintf("%s/warm.sock", moved);
        char err[256] = "";
        if (w->warm_start) {
            int fd = -1;
            struct sockaddr_un un = {.sun_family = AF_UNIX};
            snprintf(un.sun_path, sizeof un.sun_path, "%s", moved_sock);
            fd = socket(AF_UNIX, SOCK_STREAM, 0);
            assert_int_equal(connect(fd, (struct sockaddr *)&un, sizeof un), 0);
            assert_true(write(fd, w->warm_start, strlen(w->warm_start)) > 0);
            close(fd);
        } else {
            struct container_start start = {.hostname = "test-instance",
                                            .app_dir = w->droplet,
                                            .argv = argv,
                                            .envp = envp};
            if (container_warm_start(moved_sock, &start, err, sizeof err) < 0)
                fail_msg("container_warm_start: %s", err);
        }
        /* one start a container: the socket is gone */
        for (int i = 0; i < 30000 && access(moved_sock, F_OK) == 0; i++)
            usleep(1000);
        assert_int_equal(access(moved_sock, F_OK), -1);
        free(sock);
        free(moved_sock);
        free(scratch);
        scratch = moved;
    }
    size_t len = 0;
    ssize_t r;
    while (len + 1 < outlen && (r = read(pipefd[0], out + len, outlen - 1 - len)) > 0)
        len += (size_t)r;
    out[len] = '\0';
    close(pipefd[0]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    free(scratch);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static void test_config_json_round_trip(void **state)
{
    (void)state;
    char *cg[] = {"/sys/fs/cgroup/memory/x/cgroup.procs", NULL};
    struct container_mount m[] = {{.source = "/a", .target = "/tmp/app", .kind = CONTAINER_MOUNT_RW},
                                  {.source = "/b", .target = "/x", .kind = CONTAINER_MOUNT_OVERLAY}};
    struct container_config in = {.hostname = "h",
                                  .stack = "/s",
                                  .scratch = "/sc",
                                  .disk_mb = 64,
                                  .uid_base = 300000,
                                  .net_pool = "10.1.0.0/16",
                                  .net_slot = 9,
                                  .cwd = "/tmp/app",
                                  .cgroup_procs = cg,
                                  .mounts = m,
                                  .n_mounts = 2,
                                  .seccomp_bpf = "/f.bpf",
                                  .disk_from = "/proc/1/fd/3"};
    char *proxy_cg[] = {"/sys/fs/cgroup/memory/skiff/i/sidecar-proxy/cgroup.procs", NULL};
    struct container_sidecar sc[] = {
        {.name = "proxy", .command = "exec proxy --port 8081", .cgroup_procs = proxy_cg},
        {.name = "agent", .command = "exec agent"}};
    in.sidecars = sc;
    in.n_sidecars = 2;
    char *text = container_config_to_json(&in);
    struct container_config out;
    char err[256] = "";
    assert_int_equal(container_config_from_json(text, &out, err, sizeof err), 0);
    assert_string_equal(out.hostname, "h");
    assert_int_equal(out.disk_mb, 64);
    assert_int_equal(out.uid_base, 300000);
    assert_string_equal(out.net_pool, "10.1.0.0/16");
    assert_int_equal(out.net_slot, 9);
    assert_string_equal(out.seccomp_bpf, "/f.bpf");
    assert_null(out.disk_pool);
    assert_string_equal(out.disk_from, "/proc/1/fd/3");
    assert_string_equal(out.cgroup_procs[0], cg[0]);
    assert_null(out.cgroup_procs[1]);
    assert_int_equal(out.n_mounts, 2);
    assert_int_equal(out.mounts[0].kind, CONTAINER_MOUNT_RW);
    assert_string_equal(out.mounts[1].target, "/x");
    assert_int_equal(out.mounts[1].kind, CONTAINER_MOUNT_OVERLAY);
    assert_int_equal(out.n_sidecars, 2);
    assert_string_equal(out.sidecars[0].name, "proxy");
    assert_string_equal(out.sidecars[0].command, "exec proxy --port 8081");
    assert_string_equal(out.sidecars[0].cgroup_procs[0], proxy_cg[0]);
    assert_null(out.sidecars[0].cgroup_procs[1]);
    assert_null(out.sidecars[1].cgroup_procs);
    container_config_clear(&out);
    free(text);
}

static void test_config_refuses_bad_json(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "not json",
        "[]",
        "{\"hostname\":\"h\"}",
        /* a relative target */
        "{\"hostname\":\"h\",\"stack\":\"/s\",\"scratch\":\"/x\",\"cwd\":\"/\",\"disk_mb\":1,"
        "\"uid_base\":1,\"mounts\":[{\"source\":\"/a\",\"target\":\"rel\",\"kind\":\"ro\"}]}",
        /* an unknown kind */
        "{\"hostname\":\"h\",\"stack\":\"/s\",\"scratch\":\"/x\",\"cwd\":\"/\",\"disk_mb\":1,"
        "\"uid_base\":1,\"mounts\":[{\"source\":\"/a\",\"target\":\"/t\",\"kind\":\"rwx\"}]}",
        /* a sidecar's cgroup file that is not an absolute path */
        "{\"hostname\":\"h\",\"stack\":\"/s\",\"scratch\":\"/x\",\"cwd\":\"/\",\"disk_mb\":1,"
        "\"uid_base\":1,\"sidecars\":[{\"name\":\"s\",\"command\":\"c\","
        "\"cgroup_procs\":[\"rel/cgroup.procs\"]}]}",
        /* no disk */
        "{\"hostname\":\"h\",\"stack\":\"/s\",\"scratch\":\"/x\",\"cwd\":\"/\",\"disk_mb\":0,"
        "\"uid_base\":1}",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        struct container_config out;
        char err[256] = "";
        assert_true(container_config_from_json(bad[i], &out, err, sizeof err) < 0);
        assert_true(err[0] != '\0');
    }
}

static void test_stack_names_vcap_and_holds_no_host_secret(void **state)
{
    struct world *w = *state;
    char *passwd = NULL, *shadow = NULL;
    char *p = xasprintf("%s/etc/passwd", w->stack);
    assert_int_equal(file_read(p, &passwd, NULL), 0);
    free(p);
    assert_non_null(strstr(passwd, "vcap:x:2000:2000:"));
    p = xasprintf("%s/etc/shadow", w->stack);
    assert_int_equal(file_read(p, &shadow, NULL), 0);
    free(p);
    assert_string_equal(shadow, ""); /* never the host's */
    free(passwd);
    free(shadow);
    struct stat st;
    p = xasprintf("%s/root", w->stack);
    assert_int_not_equal(lstat(p, &st), 0); /* no /root, no host home folders */
    free(p);
}

static void test_disk_pool_fill_and_take(void **state)
{
    struct world *w = *state;
    char err[256] = "";
    assert_int_equal(container_disk_pool_fill(w->pool, 16, 2, err, sizeof err), 0);
    char *img = xasprintf("%s/taken.img", w->home);
    assert_int_equal(container_disk_take(w->pool, 16, img, err, sizeof err), 0);
    struct stat st;
    assert_int_equal(stat(img, &st), 0);
    assert_int_equal(st.st_size, 16 << 20);
    /* one is left of that size; none of another size: that one is made on the spot */
    char *other = xasprintf("%s/other.img", w->home);
    assert_int_equal(container_disk_take(w->pool, 8, other, err, sizeof err), 0);
    assert_int_equal(stat(other, &st), 0);
    assert_int_equal(st.st_size, 8 << 20);
    free(img);
    free(other);
}

/* Waits (10 s at most) until the server holds `want` disks of size_mb. */
static bool disk_server_holds(struct container_disk_server *server, int size_mb, int want)
{
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
        if (container_disk_server_ready(server, size_mb) >= want)
            return true;
        usleep(5000);
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (now.tv_sec - start.tv_sec < 10);
    return false;
}

/* A disk from the server is a mounted ext4 of the size asked for, held by nothing on the
 * host; a container started while the server has one uses it (no image of its own) and
 * its quota holds as before. */
static void test_disk_server_hands_out_mounted_disks(void **state)
{
    struct world *w = *state;
    char err[256] = "";
    struct container_disk_server *server = NULL;
    /* what a server that died while mounting left behind goes at the next start */
    assert_int_equal(mkdir_p(w->pool, 0700), 0);
    char *stale = xasprintf("%s/mounting-0123456789abcdef.img", w->pool);
    assert_int_equal(file_write_atomic(stale, "x", 1, 0600), 0);
    free(stale);
    assert_int_equal(container_disk_server_start(w->pool, 16, &server, err, sizeof err), 0);
    assert_true(disk_server_holds(server, 16, 2));
    int fd = container__disk_receive(w->pool, 16);
    assert_true(fd >= 0);
    struct statfs sf;
    assert_int_equal(fstatfs(fd, &sf), 0);
    assert_int_equal(sf.f_type, EXT4_SUPER_MAGIC);
    assert_true((unsigned long long)sf.f_blocks * sf.f_bsize > 14ULL << 20);
    assert_true((unsigned long long)sf.f_blocks * sf.f_bsize <= 16ULL << 20);
    close(fd); /* unattached: unmounted */
    /* a size it has none of: refused at once, then kept ready */
    assert_true(container__disk_receive(w->pool, 8) < 0);
    assert_true(disk_server_holds(server, 8, 1));

    assert_true(disk_server_holds(server, 16, 2));
    char out[4096];
    int rc = run_in_container(w,
                              "dd if=/dev/zero of=$HOME/big bs=1M count=64 2>&1 | "
                              "grep -q 'No space' && echo ok-enospc",
                              16, out, sizeof out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "ok-enospc"));
    char *pattern = xasprintf("%s/scratch-*/disk.img", w->home);
    glob_t g;
    assert_int_equal(glob(pattern, 0, NULL, &g), GLOB_NOMATCH);
    free(pattern);
    /* the images behind the mounts are unlinked, the stale one removed: nothing is left */
    pattern = xasprintf("%s/mounting-*", w->pool);
    assert_int_equal(glob(pattern, 0, NULL, &g), GLOB_NOMATCH);
    free(pattern);
    container_disk_server_stop(server);
    /* with the server gone, a start makes its own disk */
    assert_true(container__disk_receive(w->pool, 16) < 0);
    assert_int_equal(run_in_container(w, "true", 16, out, sizeof out), 0);
}

static void test_program_runs_as_vcap_with_nothing_of_root(void **state)
{
    struct world *w = *state;
    char out[4096];
    int rc = run_in_container(w,
                              "id -u; id -g; hostname; pwd; cat hello.txt; "
                              "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; "
                              "echo pid1=$(cat /proc/1/comm)",
                              64, out, sizeof out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "2000\n2000\ntest-instance\n/home/vcap/app\nhello\n"));
    assert_non_null(strstr(out, "CapEff:\t0000000000000000"));
    assert_non_null(strstr(out, "CapBnd:\t0000000000000000"));
    assert_non_null(strstr(out, "NoNewPrivs:\t1"));
    assert_non_null(strstr(out, "Seccomp:\t2"));
}

static void test_host_is_out_of_sight_and_reach(void **state)
{
    struct world *w = *state;
    char out[4096];
    /* each line says "ok" when the attempt failed as it must */
    int rc = run_in_container(
        w,
        "ls /root >/dev/null 2>&1 || echo ok-root; "
        "test -e /etc/ssh || echo ok-etc; "
        "touch /usr/x 2>/dev/null || echo ok-usr; "
        "mount -t tmpfs t /tmp 2>/dev/null || echo ok-mount; "
        "test $(ls /proc | grep -c '^[0-9]') -lt 10 && echo ok-pids; "
        "echo x > /proc/sys/kernel/hostname 2>/dev/null || echo ok-procsys; "
        "test -e /dev/vda || echo ok-dev",
        64, out, sizeof out);
    assert_int_equal(rc, 0);
    static const char *const oks[] = {"ok-root",  "ok-etc",     "ok-usr", "ok-mount",
                                      "ok-pids",  "ok-procsys", "ok-dev"};
    for (size_t i = 0; i < ARRAY_SIZE(oks); i++)
        if (!strstr(out, oks[i]))
            fail_msg("%s missing in:\n%s", oks[i], out);
}

static void test_disk_quota_is_enospc_and_droplet_stays(void **state)
{
    struct world *w = *state;
    char out[4096];
    int rc = run_in_container(w,
                              "dd if=/dev/zero of=$HOME/big bs=1M count=64 2>&1 | "
                              "grep -q 'No space' && echo ok-enospc; echo new > $HOME/new.txt",
                              16, out, sizeof out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "ok-enospc"));
    /* the writes went to the container's own layer, never into the droplet */
    char *p = xasprintf("%s/new.txt", w->droplet);
    struct stat st;
    assert_int_not_equal(stat(p, &st), 0);
    free(p);
}

/* Staging's disk: one disk held by its opener that containers take one after the other
 * (disk_from). Their writable layers are on it, so what one step leaves in /tmp the next
 * finds, a write past it is ENOSPC, and the holder sees the files and that it is full. */
static void test_shared_disk_carries_over_and_holds_its_quota(void **state)
{
    struct world *w = *state;
    char err[256] = "", out[4096];
    int fd = container_disk_open(w->pool, 16, err, sizeof err);
    assert_true(fd >= 0);
    w->disk_from = xasprintf("/proc/%d/fd/%d", (int)getpid(), fd);
    int rc = run_in_container(w,
                              "echo one > /tmp/one; dd if=/dev/zero of=/tmp/big bs=1M count=64 "
                              "2>&1 | grep -q 'No space' && echo ok-enospc",
                              16, out, sizeof out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "ok-enospc"));
    unsigned long long used = 0, total = 0;
    assert_int_equal(container_disk_usage(w->disk_from, &used, &total), 0);
    assert_true(total > 8ull << 20 && total <= 16ull << 20);
    if (!container_disk_is_full(used, total))
        fail_msg("used %llu of %llu: %s", used, total, out);
    char *one = xasprintf("%s/root-upper/tmp/one", w->disk_from);
    char *text = NULL;
    assert_int_equal(file_read(one, &text, NULL), 0);
    assert_string_equal(text, "one\n");
    free(text);
    free(one);
    rc = run_in_container(w, "rm /tmp/big; cat /tmp/one", 16, out, sizeof out);
    assert_int_equal(rc, 0);
    assert_string_equal(out, "one\n");
    assert_int_equal(container_disk_usage(w->disk_from, &used, &total), 0);
    assert_false(container_disk_is_full(used, total));
    close(fd);
    /* the holder let go: nothing is left to take */
    rc = run_in_container(w, "true", 16, out, sizeof out);
    assert_int_equal(rc, 125);
    free(w->disk_from);
    w->disk_from = NULL;
}

static void test_disk_is_full_leaves_ext4_its_slack(void **state)
{
    (void)state;
    unsigned long long mb = 1ull << 20;
    assert_false(container_disk_is_full(0, 64 * mb));
    assert_false(container_disk_is_full(60 * mb, 64 * mb));
    assert_true(container_disk_is_full(63 * mb, 64 * mb)); /* 1/32 of it: ext4's own */
    assert_true(container_disk_is_full(64 * mb, 64 * mb));
    assert_false(container_disk_is_full(1000 * mb, 1024 * mb)); /* slack stops at 16 MB */
    assert_true(container_disk_is_full(1010 * mb, 1024 * mb));
    assert_false(container_disk_is_full(0, 0));                     /* no figures: not full */
    assert_true(container_disk_is_full(15 * mb + mb / 2, 16 * mb)); /* 1 MB on a small one */
}

static void test_exit_status_and_signal_come_through(void **state)
{
    struct world *w = *state;
    char out[64];
    assert_int_equal(run_in_container(w, "exit 7", 16, out, sizeof out), 7);
    assert_int_equal(run_in_container(w, "kill -TERM $$", 16, out, sizeof out), 200 + SIGTERM);
    /* a program that cannot be found is the program's failure, told as such */
    assert_int_equal(run_in_container(w, "exec /no/such/program", 16, out, sizeof out), 127);
}

/* A sidecar runs beside the program as it does (vcap, no capabilities, the filter, same
 * environment and folder, same localhost), its lines marked with its name. */
static void test_sidecars_run_beside_the_program_as_it_does(void **state)
{
    struct world *w = *state;
    struct container_sidecar sc[] = {
        {.name = "side",
         .command = "echo out $(id -u) $(pwd) $HOME; echo err >&2; "
                    "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; "
                    "printf no-newline-at-end; touch /home/vcap/tmp/side-was-here; exec sleep 60"}};
    w->sidecars = sc;
    w->n_sidecars = 1;
    char out[4096];
    /* the program sees what the sidecar wrote; the sidecar's output is drained at the end */
    int rc = run_in_container(w,
                              "while [ ! -e /home/vcap/tmp/side-was-here ]; do sleep 0.02; done; "
                              "echo program saw it; exit 4",
                              16, out, sizeof out);
    assert_int_equal(rc, 4); /* the program's end is the container's, the sidecar killed */
    assert_non_null(strstr(out, "program saw it\n"));
    assert_non_null(strstr(out, "\x1eside\x1eout 2000 /home/vcap/app /home/vcap/app\n"));
    assert_non_null(strstr(out, "\x1eside\x1e"
                                "CapEff:\t0000000000000000\n"));
    assert_non_null(strstr(out, "\x1eside\x1eNoNewPrivs:\t1\n"));
    assert_non_null(strstr(out, "\x1eside\x1eSeccomp:\t2\n"));
    assert_non_null(strstr(out, "\x1eside\x1eno-newline-at-end\n"));
    assert_null(strstr(out, "\x1eside\x1e"
                            "err")); /* stderr goes to stderr */
}

/* When a sidecar ends, the container ends with its status, and says so as its last line. */
static void test_a_sidecar_ending_ends_the_container(void **state)
{
    struct world *w = *state;
    struct container_sidecar sc[] = {{.name = "ok", .command = "exec sleep 60"},
                                     {.name = "dies", .command = "echo last words; exit 3"}};
    w->sidecars = sc;
    w->n_sidecars = 2;
    char out[4096];
    int rc = run_in_container(w, "exec sleep 60", 16, out, sizeof out);
    assert_int_equal(rc, 3);
    assert_non_null(strstr(out, "\x1e"
                                "dies\x1elast words\n"));
}

/* Lines longer than a line may be are cut, never interleaved with the program's. */
static void test_sidecar_long_lines_are_cut(void **state)
{
    struct world *w = *state;
    struct container_sidecar sc[] = {
        {.name = "long", .command = "head -c 10000 /dev/zero | tr '\\0' x; echo; exit 0"}};
    w->sidecars = sc;
    w->n_sidecars = 1;
    char out[16384];
    assert_int_equal(run_in_container(w, "exec sleep 60", 16, out, sizeof out), 0);
    size_t lines = 0;
    for (char *p = out; (p = strstr(p, "\x1elong\x1e")); p++) {
        char *nl = strchr(p, '\n');
        assert_non_null(nl);
        assert_true((size_t)(nl - p + 1) <= CONTAINER_SIDECAR_LINE_MAX);
        lines++;
    }
    assert_true(lines >= 3);
}

static void test_config_refuses_bad_sidecars(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "{\"name\":\"../x\",\"command\":\"true\"}",
        "{\"name\":\"a\",\"command\":\"\"}",
        "{\"name\":\"a\"}",
        "{\"name\":\"\\u001ex\",\"command\":\"true\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *text = xasprintf("{\"hostname\":\"h\",\"stack\":\"/s\",\"scratch\":\"/x\","
                               "\"cwd\":\"/\",\"disk_mb\":16,\"uid_base\":200000,"
                               "\"mounts\":[],\"sidecars\":[%s]}",
                               bad[i]);
        struct container_config cfg;
        char err[256] = "";
        assert_int_equal(container_config_from_json(text, &cfg, err, sizeof err), -22);
        assert_non_null(strstr(err, "sidecar"));
        free(text);
    }
}

/* Limits as Cloud Foundry gives them: memory (no swap beyond it), processes, and CPU by
 * weight in proportion to memory. */
static void test_cgroup_limits_follow_memory(void **state)
{
    (void)state;
    struct cgroup *cg = NULL;
    if (cgroup_create("skiff-test-limits", 256, 100, &cg) == -ENOTSUP)
        skip();
    assert_non_null(cg);
    const char *const *procs = cgroup_join_files(cg);
    bool memory = false, pids = false, cpu = false;
    for (const char *const *f = procs; *f; f++) {
        char *dir = xstrndup(*f, (size_t)(strrchr(*f, '/') - *f));
        char *text = NULL, *path;
        if (strstr(dir, "/memory/") || !strcmp(cgroup_mode(), "v2")) {
            path = xasprintf("%s/%s", dir, !strcmp(cgroup_mode(), "v2") ? "memory.max"
                                                                         : "memory.limit_in_bytes");
            memory |= file_read(path, &text, NULL) == 0 && strtoull(text, NULL, 10) == 256u << 20;
            free(text);
            free(path);
        }
        if (strstr(dir, "/pids/") || !strcmp(cgroup_mode(), "v2")) {
            path = xasprintf("%s/pids.max", dir);
            pids |= file_read(path, &text, NULL) == 0 && atoi(text) == 100;
            free(text);
            free(path);
        }
        if (strstr(dir, "/cpu/") || !strcmp(cgroup_mode(), "v2")) {
            path = xasprintf("%s/%s", dir, !strcmp(cgroup_mode(), "v2") ? "cpu.weight" : "cpu.shares");
            cpu |= file_read(path, &text, NULL) == 0 &&
                   atoi(text) == (!strcmp(cgroup_mode(), "v2") ? 25 : 256);
            free(text);
            free(path);
        }
        free(dir);
    }
    cgroup_destroy(cg);
    assert_true(memory);
    assert_true(pids);
    assert_true(cpu);
}

/* A warm container, started: the same program, the same isolation as one made at start. */
static void test_warm_container_runs_the_start_isolated(void **state)
{
    struct world *w = *state;
    w->warm = true;
    test_program_runs_as_vcap_with_nothing_of_root(state);
    test_host_is_out_of_sight_and_reach(state);
    /* what the droplet's overlay keeps is the container's own: not the droplet's */
    char out[256];
    assert_int_equal(run_in_container(w, "echo x > hello.txt && cat hello.txt", 64, out, sizeof out),
                     0);
    assert_string_equal(out, "x\n");
    char *file = xasprintf("%s/hello.txt", w->droplet);
    char *text = NULL;
    assert_int_equal(file_read(file, &text, NULL), 0);
    assert_string_equal(text, "hello\n");
    free(text);
    free(file);
    w->warm = false;
}

/* `/bin/sh -c 'exec WORDS'` runs WORDS without the shell only when the shell would merely
 * split them; anything it would interpret keeps the shell. */
static void test_shell_words_only_when_the_shell_would_only_split(void **state)
{
    (void)state;
    char *plain[] = {"/bin/sh", "-c", "exec ./hello  --port 8080\t-v", NULL};
    char **words = container__shell_words(plain);
    assert_non_null(words);
    assert_string_equal(words[0], "./hello");
    assert_string_equal(words[1], "--port");
    assert_string_equal(words[2], "8080");
    assert_string_equal(words[3], "-v");
    assert_null(words[4]);
    free(words[0]);
    free(words);
    static const char *const shell[] = {
        "exec ./hello $PORT", "exec ./hello '$PORT'", "exec ./a \"b c\"", "exec ./a b\\ c",
        "exec ./a *",         "exec ./a ?",           "exec ./a [ab]",    "exec ~/a",
        "exec ./a > log",     "exec ./a < in",        "exec ./a # note",  "exec A=1 ./a",
        "exec ./a; ./b",      "exec ./a && ./b",      "exec ./a | ./b",   "exec ./a `b`",
        "exec ./a $(b)",      "exec ./a\n./b",        "./hello",          "exec ",
        "exec ./a {b,c}",     "exec ./a !b",          "exec ./a (b)"};
    for (size_t i = 0; i < ARRAY_SIZE(shell); i++) {
        char *argv[] = {"/bin/sh", "-c", (char *)shell[i], NULL};
        if (container__shell_words(argv))
            fail_msg("%s was run without the shell", shell[i]);
    }
    /* not the executor's form: left as it is */
    char *other[][5] = {{"/bin/bash", "-c", "exec ./a", NULL},
                        {"/bin/sh", "-e", "exec ./a", NULL},
                        {"/bin/sh", "-c", "exec ./a", "name", NULL}};
    for (size_t i = 0; i < ARRAY_SIZE(other); i++)
        assert_null(container__shell_words(other[i]));
}

/* A command run without the shell has what the shell would have given it: PWD, its
 * arguments as they are; one the shell must interpret still runs with it, and a program
 * that is not there is said so by the shell, with its status (127). */
static void test_simple_command_runs_as_the_shell_would_run_it(void **state)
{
    struct world *w = *state;
    char out[4096];
    assert_int_equal(run_in_container(w, "exec /usr/bin/env", 64, out, sizeof out), 0);
    assert_non_null(strstr(out, "PWD=/home/vcap/app\n"));
    assert_non_null(strstr(out, "PATH=/usr/bin:/bin\n"));
    assert_int_equal(run_in_container(w, "exec /usr/bin/printf %s- a b", 64, out, sizeof out), 0);
    assert_string_equal(out, "a-b-");
    assert_int_equal(run_in_container(w, "exec /usr/bin/printf %s- $HOME", 64, out, sizeof out), 0);
    assert_string_equal(out, "/home/vcap/app-");
    assert_int_equal(run_in_container(w, "exec ./not-there", 64, out, sizeof out), 127);
}

/* A program run ahead (a runtime's zygote) is a program like any other: vcap, nothing of
 * root; its start comes on fd 3 once the droplet is there and the hostname set. */
static void test_warm_program_runs_ahead_and_takes_its_start(void **state)
{
    struct world *w = *state;
    char *program[] = {"/bin/sh", "-c",
                       "id -u; pwd; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; "
                       "tr '\\000' '\\n' <&3; hostname; cat /home/vcap/app/hello.txt",
                       NULL};
    w->warm = true;
    w->warm_program = program;
    char out[4096];
    /* the start's argv and env, as the program gets them */
    assert_int_equal(run_in_container(w, "the script", 64, out, sizeof out), 0);
    assert_non_null(strstr(out, "2000\n/home/vcap\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\n"
                                "Seccomp:\t2\n3\n/bin/sh\n-c\nthe script\n"
                                "PATH=/usr/bin:/bin\nHOME=/home/vcap/app\ntest-instance\nhello\n"));
    w->warm_program = NULL;
    w->warm = false;
}

/* The one child of pid (its PPid), or 0. */
static pid_t child_of(pid_t pid)
{
    char *text = NULL, want[32];
    snprintf(want, sizeof want, "\nPPid:\t%d\n", (int)pid);
    glob_t g;
    pid_t found = 0;
    if (glob("/proc/[0-9]*/status", 0, NULL, &g) != 0)
        return 0;
    for (size_t i = 0; i < g.gl_pathc && !found; i++) {
        if (file_read(g.gl_pathv[i], &text, NULL) == 0 && strstr(text, want))
            found = (pid_t)atoi(g.gl_pathv[i] + strlen("/proc/"));
        free(text);
        text = NULL;
    }
    globfree(&g);
    return found;
}

/* /proc/PID/status of a process running as uid_line's user with nothing of root and under the
 * seccomp filter. */
static bool status_dropped(const char *status, const char *uid_line)
{
    return strstr(status, uid_line) && strstr(status, "CapEff:\t0000000000000000") &&
           strstr(status, "CapBnd:\t0000000000000000") && strstr(status, "NoNewPrivs:\t1") &&
           strstr(status, "Seccomp:\t2");
}

/* A plain warm container's program is there before its start, already vcap with nothing of
 * root and under the filter, and it is the very process that then runs the start's argv. */
static void test_warm_container_program_waits_dropped_and_runs_the_start(void **state)
{
    struct world *w = *state;
    char *scratch = xasprintf("%s/ahead", w->home);
    assert_int_equal(mkdir_p(scratch, 0700), 0);
    struct container_config cfg = {.hostname = "warm",
                                   .stack = w->stack,
                                   .scratch = scratch,
                                   .disk_mb = 64,
                                   .disk_pool = w->pool,
                                   .seccomp_bpf = w->seccomp_bpf,
                                   .uid_base = CONTAINER_DEFAULT_UID_BASE,
                                   .cwd = CONTAINER_APP_DIR,
                                   .warm_socket = "warm.sock"};
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t keeper = fork();
    assert_true(keeper >= 0);
    if (keeper == 0) {
        dup2(pipefd[1], 1);
        close(pipefd[0]);
        char err[512] = "";
        int st = container_run(&cfg, NULL, NULL, err, sizeof err);
        _exit(st < 0 ? 125 : WIFEXITED(st) ? WEXITSTATUS(st) : 126);
    }
    close(pipefd[1]);
    char *sock = xasprintf("%s/warm.sock", scratch);
    for (int i = 0; i < 30000 && access(sock, F_OK) < 0; i++)
        usleep(1000);
    assert_int_equal(access(sock, F_OK), 0);
    pid_t init = child_of(keeper), program = init > 0 ? child_of(init) : 0;
    assert_true(program > 0);
    char path[64], *status = NULL;
    snprintf(path, sizeof path, "/proc/%d/status", (int)program);
    char uid[64];
    unsigned host_vcap = CONTAINER_DEFAULT_UID_BASE + CONTAINER_VCAP_UID;
    snprintf(uid, sizeof uid, "\nUid:\t%u\t%u\t%u\t%u\n", host_vcap, host_vcap, host_vcap,
             host_vcap);
    /* the program drops itself once forked: it is dropped before it waits (10 s at most) */
    for (int i = 0; i < 10000; i++) {
        free(status);
        status = NULL;
        assert_int_equal(file_read(path, &status, NULL), 0);
        if (status_dropped(status, uid))
            break;
        usleep(1000);
    }
    if (!status_dropped(status, uid))
        fail_msg("the program waiting for its start is not dropped:\n%s", status);
    const char *nspid = strstr(status, "NSpid:");
    assert_non_null(nspid);
    int host_pid = 0, inner_pid = 0;
    assert_int_equal(sscanf(nspid, "NSpid:\t%d\t%d", &host_pid, &inner_pid), 2);
    free(status);
    char *argv[] = {"/bin/sh", "-c", "echo $$; hostname; pwd", NULL};
    char *envp[] = {"PATH=/usr/bin:/bin", NULL};
    struct container_start start = {
        .hostname = "the-instance", .app_dir = w->droplet, .argv = argv, .envp = envp};
    char err[256] = "";
    if (container_warm_start(sock, &start, err, sizeof err) < 0)
        fail_msg("container_warm_start: %s", err);
    char out[512];
    size_t len = 0;
    ssize_t r;
    while (len + 1 < sizeof out && (r = read(pipefd[0], out + len, sizeof out - 1 - len)) > 0)
        len += (size_t)r;
    out[len] = '\0';
    close(pipefd[0]);
    int st = 0;
    assert_int_equal(waitpid(keeper, &st, 0), keeper);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    char want[128];
    snprintf(want, sizeof want, "%d\nthe-instance\n/home/vcap/app\n", inner_pid);
    assert_string_equal(out, want);
    free(sock);
    free(scratch);
}

/* A program run ahead that ends before its start ends the container, which takes none. */
static void test_warm_program_ending_early_ends_the_container(void **state)
{
    struct world *w = *state;
    char *scratch = xasprintf("%s/early", w->home);
    assert_int_equal(mkdir_p(scratch, 0700), 0);
    char *program[] = {"/bin/true", NULL};
    struct container_config cfg = {.hostname = "warm",
                                   .stack = w->stack,
                                   .scratch = scratch,
                                   .disk_mb = 64,
                                   .disk_pool = w->pool,
                                   .seccomp_bpf = w->seccomp_bpf,
                                   .uid_base = CONTAINER_DEFAULT_UID_BASE,
                                   .cwd = CONTAINER_APP_DIR,
                                   .warm_socket = "warm.sock",
                                   .warm_program = program};
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char err[512] = "";
        int st = container_run(&cfg, NULL, NULL, err, sizeof err);
        _exit(st < 0 && strstr(err, "ended before its start") ? 125 : 1);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 125);
    char *sock = xasprintf("%s/warm.sock", scratch);
    assert_int_equal(access(sock, F_OK), -1);
    free(sock);
    free(scratch);
}

/* A start that is not one ends the container (125) without running anything. */
static void test_warm_container_refuses_a_bad_start(void **state)
{
    struct world *w = *state;
    w->warm = true;
    static const char *const bad[] = {
        "not json",
        "{\"hostname\":\"x\",\"app_dir\":\"relative\",\"argv\":[\"true\"],\"env\":[]}",
        "{\"hostname\":\"x\",\"app_dir\":\"/nonexistent\",\"argv\":[\"true\"],\"env\":[]}",
        "{\"hostname\":\"x\",\"app_dir\":\"/tmp\",\"argv\":[],\"env\":[]}",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        w->warm_start = bad[i];
        char out[256];
        assert_int_equal(run_in_container(w, "echo ran", 64, out, sizeof out), 125);
        assert_null(strstr(out, "ran"));
    }
    w->warm_start = NULL;
    w->warm = false;
}

int main(void)
{
    if (geteuid() != 0) {
        fprintf(stderr, "test_container: needs root (namespaces, loop devices); skipped\n");
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_json_round_trip),
        cmocka_unit_test(test_disk_is_full_leaves_ext4_its_slack),
        cmocka_unit_test_setup_teardown(test_shared_disk_carries_over_and_holds_its_quota, setup,
                                        teardown),
        cmocka_unit_test(test_config_refuses_bad_json),
        cmocka_unit_test(test_config_refuses_bad_sidecars),
        cmocka_unit_test_setup_teardown(test_sidecars_run_beside_the_program_as_it_does, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_sidecar_ending_ends_the_container, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sidecar_long_lines_are_cut, setup, teardown),
        cmocka_unit_test(test_cgroup_limits_follow_memory),
        cmocka_unit_test_setup_teardown(test_stack_names_vcap_and_holds_no_host_secret, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_disk_pool_fill_and_take, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_server_hands_out_mounted_disks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_program_runs_as_vcap_with_nothing_of_root, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_host_is_out_of_sight_and_reach, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_quota_is_enospc_and_droplet_stays, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_exit_status_and_signal_come_through, setup, teardown),
        cmocka_unit_test(test_shell_words_only_when_the_shell_would_only_split),
        cmocka_unit_test_setup_teardown(test_simple_command_runs_as_the_shell_would_run_it, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_warm_container_runs_the_start_isolated, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_warm_container_refuses_a_bad_start, setup, teardown),
        cmocka_unit_test_setup_teardown(test_warm_program_runs_ahead_and_takes_its_start, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_warm_container_program_waits_dropped_and_runs_the_start, setup, teardown),
        cmocka_unit_test_setup_teardown(test_warm_program_ending_early_ends_the_container, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
