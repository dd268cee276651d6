/* shim: the per-instance supervisor (`skiff-shim`) and the protocol skiffd speaks with it.
 *
 * skiffd's executor starts one shim per instance. The shim starts the instance's command as
 * its only child (a session of its own, see executor/proc.h), owns the child's stdout and
 * stderr pipes and reads them whatever happens to skiffd, so the app never blocks on a full
 * pipe nor gets EPIPE. It reaps the child and keeps its exit status until a skiffd has taken
 * it, then exits. The shim survives skiffd: a new skiffd reconnects and adopts the instance.
 *
 *   skiff-shim --listen-fd N --pid-file PATH [--lines N] -- PROGRAM ARG...
 *
 * The listening Unix socket (fd N, bound by the executor at <instance folder>/shim.sock before
 * the shim starts, so a connect never races the shim's start) takes one client at a time; a
 * new client replaces the old one. Messages are lines ("\n"-terminated, fields separated by
 * one space):
 *
 *   shim -> client   H <pid> <exited 0|1> <exit status> <signal>   first line of a connection
 *                    O <stream 1|2> <text>    an output line of the instance (no newline in it)
 *                    X <exit status> <signal> the instance has exited and its output is drained
 *   client -> shim   T <grace ms>             SIGTERM to the instance's group, SIGKILL after grace
 *                    S <signal>               that signal to the instance's group
 *                    P <path>                 the pid file moves to path (absolute): a warm
 *                                             container (container.h) became an instance
 *                    A                        exit taken: the shim removes its files and exits
 *                                             (at once, or once the instance has exited)
 *
 * While no client is connected, output lines are kept, at most SHIM_KEEP_LINES lines and
 * SHIM_KEEP_BYTES bytes (the oldest go first; how many were dropped is told as an O 2 line).
 * Lines that a connected client does not read fast enough are dropped past SHIM_QUEUE_BYTES.
 * PATH (the instance's pid file, read by cleanup scripts) is written when the child starts
 * and removed when the shim exits. */
#ifndef SKIFF_SHIM_H
#define SKIFF_SHIM_H

#define SHIM_KEEP_LINES 1000
#define SHIM_KEEP_BYTES (1024 * 1024)
#define SHIM_QUEUE_BYTES (4 * 1024 * 1024)
#define SHIM_SOCKET_NAME "shim.sock"

#endif
