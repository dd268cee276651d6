/* proc: a child process in its own process group on a libuv loop, its output as lines.
 *
 * Shared by the executor (instances) and the stager (buildpack steps). The child runs in a
 * new session (setsid), so proc_signal_group reaches everything it started that did not
 * leave the group. stdout and stderr are read through pipes and delivered line by line;
 * a line longer than PROC_LINE_MAX is delivered in pieces of that size, so a child that never
 * writes a newline costs bounded memory.
 *
 * When the child exits, proc kills what is left of its group (SIGKILL) and waits for both
 * pipes to end, at most PROC_LINGER_MS (a grandchild that left the group may hold them),
 * then calls on_exit once. The caller owns the proc and releases it with proc_close, which
 * may be called at any time (also from a callback); after it no callback comes. */
#ifndef SKIFF_PROC_H
#define SKIFF_PROC_H

#include <stddef.h>
#include <uv.h>

#define PROC_LINE_MAX 8192
#define PROC_LINGER_MS 1000

struct proc;

/* stream is 1 (stdout) or 2 (stderr); line has no newline and is NUL-terminated. */
typedef void (*proc_line_cb)(void *ctx, int stream, const char *line, size_t len);
/* exit_status is -1 when the child was killed by term_signal (else term_signal is 0). */
typedef void (*proc_exit_cb)(void *ctx, int exit_status, int term_signal);

struct proc_options {
    const char *const *argv; /* argv[0] is the program, looked up in PATH when no '/' */
    char *const *env;        /* NULL-terminated KEY=VALUE; the whole environment */
    const char *cwd;
    proc_line_cb on_line;
    proc_exit_cb on_exit;
    void *ctx;
};

/* Starts the child. 0 and *out, or a negative errno (e.g. -ENOENT: no such program or
 * cwd) with nothing started and no callback to come. */
int proc_spawn(uv_loop_t *loop, const struct proc_options *opt, struct proc **out);
int proc_pid(const struct proc *p);
/* Sends sig to the child's process group; harmless when it is gone. */
void proc_signal_group(struct proc *p, int sig);
/* Kills the group if it still runs, drops pending output and frees the proc once its
 * handles are closed (on a later loop iteration). */
void proc_close(struct proc *p);

/* A pid file names one process for as long as it lives: "PID STARTTIME\n", the start time
 * (clock ticks after boot, /proc/PID/stat) telling it from a later process given the same pid.
 * Written by skiff-shim for its instance and by the executor for an instance it runs itself,
 * read by the executor to end what a daemon that died left behind. */
int proc_pid_file_write(const char *path, int pid);
/* The pid the file names while that same process still runs; 0 otherwise (no file, a pid
 * reused since, or a file without the start time). */
int proc_pid_file_read(const char *path);

/* A shell command written so that, when it is one simple command, the shell execs it
 * ("exec CMD"): the program is then the process whose exit or signal is seen, and it gets
 * signals first-hand. Commands with control operators or compound commands come back as
 * written. Caller frees. */
char *proc_exec_form(const char *cmd);

#endif
