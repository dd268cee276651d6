/* Unit tests for container/seccomp: each check runs in a child that installs the filter.
 * The denied calls are made with arguments the kernel would refuse anyway with another
 * error (a bad reboot magic, a missing mount point, a bad fd), so a filter that let them
 * through fails the test without doing harm. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "container/seccomp.h"

/* Runs check in a child under the filter (read from bpf_path when not NULL, as a container
 * does with the daemon's); the child's exit status is check's line of failure (0: all
 * good). Waits at most 10 s. */
static int run_filtered_from(const char *bpf_path, int (*check)(void))
{
    pid_t pid = fork();
    if (pid == 0) {
        char err[256];
        signal(SIGSEGV, SIG_DFL); /* a crash ends the child, not into cmocka's handler */
        if (bpf_path && seccomp_prepare_from(bpf_path, err, sizeof err) < 0) {
            fprintf(stderr, "%s\n", err);
            _exit(252);
        }
        if (seccomp_install_default(err, sizeof(err)) < 0) {
            fprintf(stderr, "%s\n", err);
            _exit(251);
        }
        _exit(check());
    }
    assert_true(pid > 0);
    int status = 0;
    for (int i = 0; i < 1000; i++) {
        pid_t done = waitpid(pid, &status, WNOHANG);
        if (done == pid)
            break;
        if (i == 999) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            fail_msg("the filtered child did not finish within 10 s");
        }
        usleep(10000);
    }
    if (WIFSIGNALED(status))
        fail_msg("the filtered child died of signal %d", WTERMSIG(status));
    return WEXITSTATUS(status);
}

static int run_filtered(int (*check)(void))
{
    return run_filtered_from(NULL, check);
}

/* Fails the child with the line number when a call did not fail with the expected errno. */
#define EXPECT_ERRNO(call, expected)                                                               \
    do {                                                                                           \
        errno = 0;                                                                                 \
        long r_ = (long)(call);                                                                    \
        if (r_ != -1 || errno != (expected)) {                                                     \
            fprintf(stderr, "line %d: %s returned %ld errno %d, expected errno %d\n", __LINE__,    \
                    #call, r_, errno, (expected));                                                 \
            return __LINE__ % 200 + 1;                                                             \
        }                                                                                          \
    } while (0)

static int check_denied_calls(void)
{
    struct timespec bad_time = {.tv_sec = 0, .tv_nsec = -1};
    char c = 'x';
    EXPECT_ERRNO(mount("none", "/nonexistent-skiff-test", "tmpfs", 0, NULL), EPERM);
    EXPECT_ERRNO(umount2("/nonexistent-skiff-test", 0), EPERM);
    EXPECT_ERRNO(syscall(SYS_pivot_root, "/nonexistent-a", "/nonexistent-b"), EPERM);
    EXPECT_ERRNO(syscall(SYS_fsopen, "tmpfs", 0), EPERM);
    EXPECT_ERRNO(syscall(SYS_open_tree, -1, "/nonexistent", 0), EPERM);
    EXPECT_ERRNO(unshare(CLONE_NEWUSER), EPERM);
    EXPECT_ERRNO(unshare(CLONE_NEWNET), EPERM);
    EXPECT_ERRNO(setns(-1, 0), EPERM);
    EXPECT_ERRNO(ptrace(PTRACE_ATTACH, 0x3ffffff0, NULL, NULL), EPERM);
    EXPECT_ERRNO(syscall(SYS_process_vm_readv, 0x3ffffff0, NULL, 0, NULL, 0, 0), EPERM);
    EXPECT_ERRNO(syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3, 0), EPERM);
    EXPECT_ERRNO(syscall(SYS_add_key, "user", "skiff", "x", 1, -3), EPERM);
    EXPECT_ERRNO(syscall(SYS_bpf, -1, NULL, 0), EPERM);
    EXPECT_ERRNO(syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0), EPERM);
    EXPECT_ERRNO(syscall(SYS_init_module, NULL, 0, ""), EPERM);
    EXPECT_ERRNO(syscall(SYS_finit_module, -1, "", 0), EPERM);
    EXPECT_ERRNO(syscall(SYS_delete_module, "nonexistent_skiff", 0), EPERM);
    EXPECT_ERRNO(syscall(SYS_kexec_load, 0, 0, NULL, 0), EPERM);
    EXPECT_ERRNO(syscall(SYS_clock_settime, CLOCK_REALTIME, &bad_time), EPERM);
    EXPECT_ERRNO(syscall(SYS_settimeofday, NULL, NULL), EPERM);
    EXPECT_ERRNO(syscall(SYS_reboot, 0, 0, 0, NULL), EPERM); /* bad magic: never reboots */
    EXPECT_ERRNO(syscall(SYS_swapon, "/nonexistent-skiff-test", 0), EPERM);
    EXPECT_ERRNO(syscall(SYS_swapoff, "/nonexistent-skiff-test"), EPERM);
    EXPECT_ERRNO(syscall(SYS_acct, NULL), EPERM);
    EXPECT_ERRNO(syscall(SYS_open_by_handle_at, -1, NULL, 0), EPERM);
    EXPECT_ERRNO(syscall(SYS_userfaultfd, 0), EPERM);
    EXPECT_ERRNO(syscall(SYS_iopl, 0), EPERM);
    EXPECT_ERRNO(syscall(SYS_io_uring_setup, 0, NULL), EPERM);
    EXPECT_ERRNO(ioctl(-1, TIOCSTI, &c), EPERM);
    EXPECT_ERRNO(ioctl(-1, TIOCLINUX, &c), EPERM);
    /* the kernel reads the command as 32 bits: high bits must not slip past the filter */
    EXPECT_ERRNO(syscall(SYS_ioctl, -1, (1UL << 32) | TIOCSTI, &c), EPERM);
    EXPECT_ERRNO(syscall(SYS_ioctl, -1, (0xffffUL << 48) | TIOCLINUX, &c), EPERM);
    return 0;
}

static void test_denied_calls_fail_with_eperm(void **state)
{
    (void)state;
    assert_int_equal(run_filtered(check_denied_calls), 0);
}

static int check_namespace_clones(void)
{
    static const unsigned long flags[] = {CLONE_NEWUSER, CLONE_NEWNS,  CLONE_NEWPID,   CLONE_NEWNET,
                                          CLONE_NEWIPC,  CLONE_NEWUTS, CLONE_NEWCGROUP};
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        errno = 0;
        long r = syscall(SYS_clone, flags[i] | SIGCHLD, NULL, NULL, NULL, 0);
        if (r == 0)
            _exit(0); /* the filter let it through: this is the new child */
        if (r != -1 || errno != EPERM) {
            fprintf(stderr, "clone with flag %#lx: %ld errno %d\n", flags[i], r, errno);
            return 10 + (int)i;
        }
    }
    struct clone_args args = {.flags = CLONE_NEWUSER, .exit_signal = SIGCHLD};
    EXPECT_ERRNO(syscall(SYS_clone3, &args, sizeof(args)), ENOSYS);
    /* a plain clone (what fork is) still works */
    long r = syscall(SYS_clone, SIGCHLD, NULL, NULL, NULL, 0);
    if (r == 0)
        _exit(0);
    if (r < 0)
        return 30;
    int status;
    if (waitpid((pid_t)r, &status, 0) != r || !WIFEXITED(status))
        return 31;
    return 0;
}

static void test_clone_namespaces_denied_and_clone3_enosys(void **state)
{
    (void)state;
    assert_int_equal(run_filtered(check_namespace_clones), 0);
}

static int check_personality(void)
{
    EXPECT_ERRNO(personality(PER_LINUX32 | ADDR_NO_RANDOMIZE), EPERM);
    EXPECT_ERRNO(personality(PER_LINUX32 | READ_IMPLIES_EXEC), EPERM);
    EXPECT_ERRNO(personality(ADDR_NO_RANDOMIZE), EPERM);
    EXPECT_ERRNO(personality(PER_BSD), EPERM);
    EXPECT_ERRNO(personality(0xfffffffe), EPERM);
    EXPECT_ERRNO(personality(0x7fffffff), EPERM);
    EXPECT_ERRNO(syscall(SYS_personality, (1UL << 32) | ADDR_NO_RANDOMIZE), EPERM);
    if (personality(0xffffffff) != PER_LINUX)
        return 100;
    if (personality(PER_LINUX32) < 0 || personality(0xffffffff) != PER_LINUX32)
        return 101;
    if (personality(PER_LINUX32 | UNAME26) < 0 || personality(UNAME26) < 0)
        return 102;
    if (personality(PER_LINUX) < 0 || personality(0xffffffff) != PER_LINUX)
        return 103;
    if (syscall(SYS_personality, (1UL << 32) | PER_LINUX32) < 0 ||
        personality(0xffffffff) != PER_LINUX32)
        return 104;
    return 0;
}

static void test_personality_only_usual_values(void **state)
{
    (void)state;
    assert_int_equal(run_filtered(check_personality), 0);
}

/* i386's getpid through int $0x80: the pid when the kernel runs 32-bit calls, else -errno. */
static long int80_getpid(void)
{
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(20L) : "memory");
    return r;
}

static int check_x32(void)
{
    EXPECT_ERRNO(syscall(0x40000000L | SYS_getpid), EPERM); /* x32's getpid */
    return 0;
}

static int check_i386(void)
{
    return int80_getpid() == -EPERM ? 0 : 1;
}

static void test_foreign_architectures_denied(void **state)
{
    (void)state;
    assert_int_equal(run_filtered(check_x32), 0);
    /* without the filter, does this kernel run i386 calls at all? */
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGSEGV, SIG_DFL);
        _exit(int80_getpid() == getpid() ? 0 : 1);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        assert_int_equal(run_filtered(check_i386), 0);
    else
        print_message("i386 calls do not run on this kernel: only x32 is checked\n");
}

static void *thread_main(void *arg)
{
    return arg;
}

static int check_ordinary_calls(void)
{
    pid_t pid = fork();
    if (pid == 0)
        _exit(7);
    int status;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || WEXITSTATUS(status) != 7)
        return 1;
    pid = fork();
    if (pid == 0) {
        execl("/bin/true", "true", (char *)NULL);
        _exit(127);
    }
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0)
        return 2;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0)
        return 3;
    close(s);
    void *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return 4;
    memset(p, 1, 1 << 20);
    munmap(p, 1 << 20);
    pthread_t t;
    static int token;
    void *ret = NULL;
    if (pthread_create(&t, NULL, thread_main, &token) != 0 || pthread_join(t, &ret) != 0 ||
        ret != &token)
        return 5;
    /* an ordinary ioctl reaches the driver (whatever it answers, it is not EPERM) */
    int n, fd = open("/dev/null", O_RDONLY);
    if (fd < 0)
        return 6;
    errno = 0;
    if (ioctl(fd, FIONREAD, &n) < 0 && errno == EPERM)
        return 7;
    close(fd);
    return 0;
}

/* A thread that exists before the filter is installed gets it too. */
static pthread_mutex_t tsync_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t tsync_cond = PTHREAD_COND_INITIALIZER;
static int tsync_stage;

static void *tsync_thread(void *arg)
{
    pthread_mutex_lock(&tsync_lock);
    tsync_stage = 1;
    pthread_cond_broadcast(&tsync_cond);
    while (tsync_stage != 2)
        pthread_cond_wait(&tsync_cond, &tsync_lock);
    pthread_mutex_unlock(&tsync_lock);
    errno = 0;
    long r = syscall(SYS_unshare, CLONE_NEWUSER);
    return (void *)(long)(r == -1 && errno == EPERM);
}

static void test_filter_covers_every_thread(void **state)
{
    (void)state;
    char err[256];
    /* built ahead in the parent: the child only loads it */
    assert_int_equal(seccomp_prepare_default(err, sizeof(err)), 0);
    pid_t pid = fork();
    if (pid == 0) {
        pthread_t t;
        if (pthread_create(&t, NULL, tsync_thread, NULL) != 0)
            _exit(2);
        pthread_mutex_lock(&tsync_lock);
        while (tsync_stage != 1)
            pthread_cond_wait(&tsync_cond, &tsync_lock);
        pthread_mutex_unlock(&tsync_lock);
        if (seccomp_install_default(err, sizeof(err)) < 0) {
            fprintf(stderr, "%s\n", err);
            _exit(3);
        }
        pthread_mutex_lock(&tsync_lock);
        tsync_stage = 2;
        pthread_cond_broadcast(&tsync_cond);
        pthread_mutex_unlock(&tsync_lock);
        void *ok = NULL;
        pthread_join(t, &ok);
        _exit(ok ? 0 : 4);
    }
    int status = 0;
    for (int i = 0; i < 1000 && waitpid(pid, &status, WNOHANG) != pid; i++) {
        if (i == 999) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            fail_msg("the child did not finish within 10 s");
        }
        usleep(10000);
    }
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_ordinary_calls_still_work(void **state)
{
    (void)state;
    assert_int_equal(run_filtered(check_ordinary_calls), 0);
}

/* The program written ahead and read back denies what the built one does; a file that is
 * not a program is refused (the caller then builds its own). */
static void test_filter_built_ahead_is_the_same(void **state)
{
    (void)state;
    char dir[] = "/tmp/skiff-test-seccomp-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[64], bad[64], err[256] = "";
    snprintf(path, sizeof path, "%s/seccomp.bpf", dir);
    snprintf(bad, sizeof bad, "%s/bad.bpf", dir);
    assert_int_equal(seccomp_export_default(path, err, sizeof err), 0);
    assert_int_equal(run_filtered_from(path, check_denied_calls), 0);
    assert_int_equal(run_filtered_from(path, check_namespace_clones), 0);
    assert_int_equal(run_filtered_from(path, check_ordinary_calls), 0);
    FILE *f = fopen(bad, "w");
    assert_non_null(f);
    fputs("not a filter", f);
    fclose(f);
    assert_int_equal(run_filtered_from(bad, check_ordinary_calls), 252);
    unlink(path);
    unlink(bad);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_denied_calls_fail_with_eperm),
        cmocka_unit_test(test_clone_namespaces_denied_and_clone3_enosys),
        cmocka_unit_test(test_personality_only_usual_values),
        cmocka_unit_test(test_foreign_architectures_denied),
        cmocka_unit_test(test_ordinary_calls_still_work),
        cmocka_unit_test(test_filter_covers_every_thread),
        cmocka_unit_test(test_filter_built_ahead_is_the_same),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
