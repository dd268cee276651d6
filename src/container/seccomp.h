/* seccomp: the default system-call filter of containers, at least as strict as Docker's
 * default profile. What it denies fails with EPERM (the process is not killed), so programs
 * that probe for a feature carry on: mount and the new mount API, pivot_root, ptrace,
 * process_vm_readv/writev, kcmp, pidfd_getfd, kexec, bpf, perf_event_open, syslog,
 * keyctl/add_key/request_key, module loading, clock and time setting, reboot,
 * swapon/swapoff, acct, quotactl, fanotify_init, vhangup, io_uring, new namespaces
 * (unshare, setns, clone/clone3 with namespace flags: clone3 answers ENOSYS so libc falls
 * back to clone, whose flags are checked), open_by_handle_at/name_to_handle_at, userfaultfd,
 * iopl/ioperm and x86-64's obsolete calls (uselib, _sysctl, ustat, sysfs, ...),
 * personality other than the usual ones, the TIOCSTI and TIOCLINUX ioctls, and every call
 * of a foreign architecture (x32, i386 on x86-64). */
#ifndef SKIFF_CONTAINER_SECCOMP_H
#define SKIFF_CONTAINER_SECCOMP_H

#include <stddef.h>

/* Loads the filter into the calling thread's process (every thread of it), setting
 * no_new_privs first if it is not set yet. 0, or a negative errno with a message in err. */
int seccomp_install_default(char *err, size_t errlen);
/* Builds the filter's program once per process (about 1 ms of libseccomp), so that
 * seccomp_install_default only hands it to the kernel (about 0.01 ms). Optional: install
 * prepares when it was not done. Call it off the critical path, e.g. before a fork, or in
 * the child while it waits for the parent. Thread-safe; 0 or a negative errno. */
int seccomp_prepare_default(char *err, size_t errlen);

/* The program built ahead, so that a container's start builds nothing: libseccomp costs
 * ~1 ms of CPU at every start (2-3 ms on a busy machine), on the path to the program.
 * seccomp_export_default writes this build's program to path (atomically, 0600);
 * seccomp_prepare_from makes a program so written the process's default filter (call it
 * before anything prepares; not thread-safe). A file of another build of Skiff is trusted
 * like the binary beside it: the daemon rewrites it at each start. 0 or a negative errno
 * (prepare_from: the caller then builds with seccomp_prepare_default). */
int seccomp_export_default(const char *path, char *err, size_t errlen);
int seccomp_prepare_from(const char *path, char *err, size_t errlen);

#endif
