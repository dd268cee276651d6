/* cgroup: per-instance control groups, so an instance's memory, process count and CPU are
 * limited and measured as a whole, and stopping it reaches every process it started.
 *
 * cgroup v2 is used when /sys/fs/cgroup (or SKIFF_CGROUP_ROOT) is a unified hierarchy with the
 * memory and pids controllers; otherwise the v1 memory, pids and cpuacct hierarchies are used
 * (and cpu, when mounted, for CPU weights in proportion to memory, as Cloud Foundry gives)
 * when they are mounted and writable. Every instance gets <root>/skiff/<name>: its guid, or
 * the warm container's name it took (never renamed: a rename waits for the kernel's cgroup
 * lock, held for milliseconds by any process joining a cgroup on the machine). With neither,
 * cgroup_create returns -ENOTSUP and the executor runs plain process groups.
 *
 * A process joins its cgroup by writing its own pid to the files cgroup_join_files lists
 * before it execs the app (see executor.c), so nothing it forks escapes. */
#ifndef SKIFF_CGROUP_H
#define SKIFF_CGROUP_H

#include <stdbool.h>
#include <stdint.h>

struct cgroup;

/* memory_mb and pids_max of 0 mean no limit. 0 and *out, or a negative errno. */
int cgroup_create(const char *name, int memory_mb, int pids_max, struct cgroup **out);
/* The existing cgroup of that name, with its processes and limits as they are (an instance
 * adopted from a previous daemon). -ENOENT when there is none. */
int cgroup_open(const char *name, struct cgroup **out);
/* Sets the limits (as cgroup_create does; 0 leaves one as it is). */
int cgroup_set_limits(struct cgroup *cg, int memory_mb, int pids_max);
/* A cgroup of its own under parent (a command run inside an instance's container: the
 * instance's limits hold for it, and destroying it ends every process it has). No limits of
 * its own. -EEXIST when there is one of that name. cgroup_destroy removes it; destroying the
 * parent removes it too. */
int cgroup_create_child(const struct cgroup *parent, const char *name, struct cgroup **out);
/* Frees cg and leaves the cgroup and its processes alone (the instance outlives us). */
void cgroup_release(struct cgroup *cg);
/* The cgroup.procs files a process writes its pid to, NULL-terminated; owned by cg. */
const char *const *cgroup_join_files(const struct cgroup *cg);
/* SIGKILL to every process in the cgroup, repeated until it is empty (bounded). */
void cgroup_kill_all(struct cgroup *cg);
/* True when the kernel's OOM killer has killed a process of this cgroup. */
bool cgroup_oom_killed(const struct cgroup *cg);
/* True when a fork failed because the cgroup was at its pids limit. */
bool cgroup_pids_limited(const struct cgroup *cg);
/* CPU time used in nanoseconds and memory in use (without page cache) in bytes. */
int cgroup_usage(const struct cgroup *cg, uint64_t *cpu_ns, uint64_t *memory_bytes);
/* Kills what is left, removes the cgroup folders and frees cg. */
void cgroup_destroy(struct cgroup *cg);
/* Removes empty instance cgroups created more than min_age_s ago: what daemons that were
 * killed left behind. A running instance's cgroup is never empty, so it stays; the age keeps
 * one that another daemon is creating right now. Returns how many were removed. */
int cgroup_remove_stale(int min_age_s);
/* "v2", "v1" or "none": which one cgroup_create would use on this machine. */
const char *cgroup_mode(void);

#endif
