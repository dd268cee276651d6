/* Timestamps along an instance's start from zero, to see where its milliseconds go
 * (src/executor/README.md, "A start from zero, step by step"; bench/coldstart/trace.py).
 * Compiled in only when SKIFF_START_TRACE names a file:
 *     make BUILD=/tmp/bt REL_CFLAGS='-O2 -DSKIFF_START_TRACE=\"/tmp/skiff-start-trace.log\"' build
 * then each start_trace(STEP) appends "SECONDS.MICROSECONDS PID STEP\n" (CLOCK_MONOTONIC, one
 * write) to that file if it exists (it is never created here). Otherwise the calls are
 * nothing. */
#ifndef SKIFF_START_TRACE_H
#define SKIFF_START_TRACE_H

#ifdef SKIFF_START_TRACE
void start_trace(const char *step);
/* Opens the file now and keeps it, for a process about to lose sight of it (a container's
 * init before it enters its own root). */
void start_trace_keep_open(void);
#else
static inline void start_trace(const char *step)
{
    (void)step;
}
static inline void start_trace_keep_open(void) {}
#endif

#endif
