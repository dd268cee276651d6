/* seccomp: see seccomp.h.
 *
 * A denylist on a default-allow filter: every call in seccomp__denied fails with EPERM, a few
 * are denied only for some arguments, clone3 answers ENOSYS (its flags sit in memory a
 * filter cannot read, so libc is sent back to clone, whose flags it can), and a call made
 * through a foreign architecture's entry point fails with EPERM before any rule is looked
 * at. Numbers come from the kernel headers, not libseccomp's table, so a call libseccomp
 * does not know by name is still denied. */
#include "container/seccomp.h"

#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <linux/sched.h>
#include <seccomp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/err.h"
#include "common/util.h"

/* Calls newer than some kernel headers; the numbers are the same on every architecture
 * since 5.1 except alpha. */
#ifndef __NR_open_tree
#define __NR_open_tree 428
#endif
#ifndef __NR_move_mount
#define __NR_move_mount 429
#endif
#ifndef __NR_fsopen
#define __NR_fsopen 430
#endif
#ifndef __NR_fsconfig
#define __NR_fsconfig 431
#endif
#ifndef __NR_fsmount
#define __NR_fsmount 432
#endif
#ifndef __NR_fspick
#define __NR_fspick 433
#endif
#ifndef __NR_pidfd_getfd
#define __NR_pidfd_getfd 438
#endif
#ifndef __NR_mount_setattr
#define __NR_mount_setattr 442
#endif
#ifndef __NR_quotactl_fd
#define __NR_quotactl_fd 443
#endif
#ifndef __NR_open_tree_attr
#define __NR_open_tree_attr 467
#endif

struct seccomp__call {
    const char *name;
    int nr;
};
#define CALL(name)                                                                                 \
    {                                                                                              \
#name, __NR_##name                                                                         \
    }

/* Denied whatever the arguments. */
static const struct seccomp__call seccomp__denied[] = {
    /* mounts, old and new API */
    CALL(mount),
    CALL(umount2),
    CALL(pivot_root),
    CALL(open_tree),
    CALL(open_tree_attr),
    CALL(move_mount),
    CALL(fsopen),
    CALL(fsconfig),
    CALL(fsmount),
    CALL(fspick),
    CALL(mount_setattr),
    /* other processes' memory and descriptors */
    CALL(ptrace),
    CALL(process_vm_readv),
    CALL(process_vm_writev),
    CALL(kcmp),
    CALL(pidfd_getfd),
    /* the kernel itself */
    CALL(kexec_load),
    CALL(kexec_file_load),
    CALL(bpf),
    CALL(perf_event_open),
    CALL(init_module),
    CALL(finit_module),
    CALL(delete_module),
    CALL(syslog),
    CALL(acct),
    CALL(quotactl),
    CALL(quotactl_fd),
    CALL(reboot),
    CALL(swapon),
    CALL(swapoff),
    CALL(lookup_dcookie),
    CALL(vhangup),
    CALL(fanotify_init),
#if defined(__x86_64__)
    CALL(iopl),
    CALL(ioperm),
    CALL(uselib),
    CALL(_sysctl),
    CALL(sysfs),
    CALL(ustat),
    CALL(nfsservctl),
    CALL(create_module),
    CALL(get_kernel_syms),
    CALL(query_module),
#endif
    /* the kernel keyring */
    CALL(keyctl),
    CALL(add_key),
    CALL(request_key),
    /* time */
    CALL(clock_settime),
    CALL(clock_adjtime),
    CALL(settimeofday),
    CALL(adjtimex),
    /* namespaces */
    CALL(unshare),
    CALL(setns),
    /* files by handle, page-fault handlers, asynchronous I/O rings (Docker denies them too) */
    CALL(open_by_handle_at),
    CALL(name_to_handle_at),
    CALL(userfaultfd),
    CALL(io_uring_setup),
    CALL(io_uring_enter),
    CALL(io_uring_register),
};

/* clone with any of these flags makes a namespace. */
static const uint64_t seccomp__clone_namespace_flags[] = {
    CLONE_NEWNS,  CLONE_NEWUTS, CLONE_NEWIPC,    CLONE_NEWUSER,
    CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWCGROUP,
};

/* personality values programs use (Docker's list): PER_LINUX, PER_LINUX32, UNAME26 alone
 * or with PER_LINUX32, and 0xffffffff, which only asks for the current one. */
#define SECCOMP_PERSONALITY_ALLOWED_BITS (PER_LINUX32 | UNAME26)

static int seccomp__add(scmp_filter_ctx ctx, uint32_t action, int nr, unsigned count,
                        const struct scmp_arg_cmp *cmp, const char *what, char *err, size_t errlen)
{
    int rc = seccomp_rule_add_array(ctx, action, nr, count, cmp);
    if (rc < 0)
        snprintf(err, errlen, "cannot add the seccomp rule for %s: %s", what, skiff_strerror(rc));
    return rc;
}

/* personality(v) is denied unless v (an unsigned int: the high 32 bits of the register do
 * not count, and no mask below looks at them) is one of the allowed values. A rule
 * may test an argument only once, so "v not allowed" is written as a union of masked
 * equalities: either the bits outside the allowed ones are neither all clear nor all set
 * (then some bit among them, in a cyclic order, is set while the next is clear), or they
 * are all set but v is not 0xffffffff (PER_LINUX32 or UNAME26 is clear). */
static int seccomp__personality(scmp_filter_ctx ctx, uint32_t deny, char *err, size_t errlen)
{
    const uint32_t other = ~(uint32_t)SECCOMP_PERSONALITY_ALLOWED_BITS;
    int bits[32], n = 0;
    for (int i = 0; i < 32; i++)
        if (other & (1u << i))
            bits[n++] = i;
    for (int i = 0; i < n; i++) {
        uint32_t set = 1u << bits[i], clear = 1u << bits[(i + 1) % n];
        struct scmp_arg_cmp cmp = SCMP_A0_64(SCMP_CMP_MASKED_EQ, set | clear, set);
        int rc = seccomp__add(ctx, deny, __NR_personality, 1, &cmp, "personality", err, errlen);
        if (rc < 0)
            return rc;
    }
    const uint32_t partial[] = {PER_LINUX32, UNAME26};
    for (size_t i = 0; i < ARRAY_SIZE(partial); i++) {
        struct scmp_arg_cmp cmp = SCMP_A0_64(SCMP_CMP_MASKED_EQ, other | partial[i], other);
        int rc = seccomp__add(ctx, deny, __NR_personality, 1, &cmp, "personality", err, errlen);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Builds the filter with libseccomp and keeps its BPF program (libseccomp takes about a
 * millisecond to build it; the kernel takes microseconds to load it). */
static int seccomp__build(struct sock_fprog *out, char *err, size_t errlen)
{
    const uint32_t deny = SCMP_ACT_ERRNO(EPERM);
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (!ctx) {
        snprintf(err, errlen, "cannot create a seccomp filter (out of memory)");
        return -ENOMEM;
    }
    int rc, fd = -1;
    /* x32 calls on x86-64 and every other architecture the kernel could run */
    if ((rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, deny)) < 0) {
        snprintf(err, errlen, "cannot set up the seccomp filter: %s", skiff_strerror(rc));
        goto out;
    }
    for (size_t i = 0; i < ARRAY_SIZE(seccomp__denied); i++) {
        rc = seccomp__add(ctx, deny, seccomp__denied[i].nr, 0, NULL, seccomp__denied[i].name, err,
                          errlen);
        if (rc < 0)
            goto out;
    }
    for (size_t i = 0; i < ARRAY_SIZE(seccomp__clone_namespace_flags); i++) {
        uint64_t flag = seccomp__clone_namespace_flags[i];
        struct scmp_arg_cmp cmp = SCMP_A0_64(SCMP_CMP_MASKED_EQ, flag, flag);
        if ((rc = seccomp__add(ctx, deny, __NR_clone, 1, &cmp, "clone", err, errlen)) < 0)
            goto out;
    }
    rc = seccomp__add(ctx, SCMP_ACT_ERRNO(ENOSYS), __NR_clone3, 0, NULL, "clone3", err, errlen);
    if (rc < 0)
        goto out;
    /* The command is an unsigned int: the kernel drops the high 32 bits of the register, so
     * the rule must ignore them too (libseccomp's 32-bit comparisons do not). */
    const uint32_t ioctls[] = {TIOCSTI, TIOCLINUX};
    for (size_t i = 0; i < ARRAY_SIZE(ioctls); i++) {
        struct scmp_arg_cmp cmp = SCMP_A1_64(SCMP_CMP_MASKED_EQ, 0xffffffffu, ioctls[i]);
        if ((rc = seccomp__add(ctx, deny, __NR_ioctl, 1, &cmp, "ioctl", err, errlen)) < 0)
            goto out;
    }
    if ((rc = seccomp__personality(ctx, deny, err, errlen)) < 0)
        goto out;

    /* libseccomp 2.5 exports the program only to a file descriptor */
    fd = memfd_create("skiff-seccomp", MFD_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot export the seccomp filter: %s", skiff_strerror(rc));
        goto out;
    }
    if ((rc = seccomp_export_bpf(ctx, fd)) < 0) {
        snprintf(err, errlen, "cannot export the seccomp filter: %s", skiff_strerror(rc));
        goto out;
    }
    off_t size = lseek(fd, 0, SEEK_END);
    if (size <= 0 || size % sizeof(struct sock_filter) ||
        size > (off_t)(sizeof(struct sock_filter) * BPF_MAXINSNS)) {
        rc = -EINVAL;
        snprintf(err, errlen, "the seccomp filter has an unexpected size (%lld bytes)",
                 (long long)size);
        goto out;
    }
    struct sock_filter *prog = xmalloc((size_t)size);
    if (pread(fd, prog, (size_t)size, 0) != size) {
        rc = -EIO;
        free(prog);
        snprintf(err, errlen, "cannot read the exported seccomp filter back");
        goto out;
    }
    out->filter = prog;
    out->len = (unsigned short)(size / sizeof(struct sock_filter));
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    seccomp_release(ctx);
    return rc;
}

static pthread_once_t seccomp__once = PTHREAD_ONCE_INIT;
static struct sock_fprog seccomp__program;
static int seccomp__program_rc;
static char seccomp__program_err[256];
static bool seccomp__program_loaded; /* by seccomp_prepare_from: nothing to build */

static void seccomp__build_once(void)
{
    seccomp__program_rc =
        seccomp__build(&seccomp__program, seccomp__program_err, sizeof(seccomp__program_err));
}

int seccomp_prepare_default(char *err, size_t errlen)
{
    if (seccomp__program_loaded)
        return 0;
    pthread_once(&seccomp__once, seccomp__build_once);
    if (seccomp__program_rc < 0)
        snprintf(err, errlen, "%s", seccomp__program_err);
    return seccomp__program_rc;
}

int seccomp_export_default(const char *path, char *err, size_t errlen)
{
    int rc = seccomp_prepare_default(err, errlen);
    if (rc < 0)
        return rc;
    rc = file_write_atomic(path, seccomp__program.filter,
                           seccomp__program.len * sizeof(struct sock_filter), 0600);
    if (rc < 0)
        snprintf(err, errlen, "cannot write the seccomp filter to %s: %s", path,
                 skiff_strerror(rc));
    return rc;
}

int seccomp_prepare_from(const char *path, char *err, size_t errlen)
{
    char *data = NULL;
    size_t size = 0;
    int rc = file_read(path, &data, &size);
    if (rc < 0) {
        snprintf(err, errlen, "cannot read the seccomp filter %s: %s", path, skiff_strerror(rc));
        return rc;
    }
    if (size == 0 || size % sizeof(struct sock_filter) ||
        size > sizeof(struct sock_filter) * BPF_MAXINSNS) {
        free(data);
        snprintf(err, errlen, "%s is not a seccomp filter (%zu bytes)", path, size);
        return -EINVAL;
    }
    seccomp__program.filter = (struct sock_filter *)data;
    seccomp__program.len = (unsigned short)(size / sizeof(struct sock_filter));
    seccomp__program_loaded = true;
    return 0;
}

int seccomp_install_default(char *err, size_t errlen)
{
    int rc = seccomp_prepare_default(err, errlen);
    if (rc < 0)
        return rc;
    /* the filter binds this process's future programs only when they cannot gain privilege */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot set no_new_privs: %s", skiff_strerror(rc));
        return rc;
    }
    long r =
        syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &seccomp__program);
    if (r < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot load the seccomp filter: %s", skiff_strerror(rc));
        return rc;
    }
    if (r > 0) { /* the id of a thread that could not take the filter */
        snprintf(err, errlen, "cannot load the seccomp filter into thread %ld of this process", r);
        return -EBUSY;
    }
    return 0;
}
