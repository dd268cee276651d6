"""What a start's cgroup work waits for while a warm container is being made (cgroup v1).

    /usr/bin/python3 bench/coldstart/cgroup_lock.py [--rounds 200] [--joins on|off|both]

(root, a v1 memory hierarchy at /sys/fs/cgroup/memory). Beside a process that does what a
warm container's keeper does, over and over (a cgroup made, a child moved into it by writing
its pid to cgroup.procs, the cgroup removed once it has ended), it times, in turns, the two
things a start from a warm container could do to its cgroup: rename it (what an instance
took the warm container's cgroup by, before) and write its memory limit (what it still does);
and what skiffd's loop did before for the pool and for ended instances: make a cgroup and
remove it (mkdir, rmdir). With --joins off, the same without the process beside: the peer
(other processes on the machine may join cgroups all the same). Prints p50 / p99 / max in ms
for each, and the ratio of the rename's p99 to the limit's."""
import argparse
import multiprocessing
import os
import signal
import sys
import time

ROOT = "/sys/fs/cgroup/memory"


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))]


def joiner(base, stop):
    """A cgroup made, a child joined to it, the child ended, the cgroup removed; again."""
    k = 0
    while not stop.is_set():
        d = os.path.join(base, "join-%d" % k)
        os.mkdir(d)
        pid = os.fork()
        if pid == 0:
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write("0")
            os._exit(0)
        os.waitpid(pid, 0)
        while True:
            try:
                os.rmdir(d)
                break
            except OSError:
                time.sleep(0.0005)
        k += 1


def measure(base, rounds, joins):
    names = [os.path.join(base, "start-a"), os.path.join(base, "start-b")]
    os.mkdir(names[0])
    stop = multiprocessing.Event()
    p = multiprocessing.Process(target=joiner, args=(base, stop)) if joins else None
    if p:
        p.start()
        time.sleep(0.2)
    rename, limit, mkdir, rmdir = [], [], [], []
    try:
        cur = 0
        for k in range(rounds):
            t = time.monotonic()
            os.rename(names[cur], names[1 - cur])
            rename.append((time.monotonic() - t) * 1000)
            cur = 1 - cur
            t = time.monotonic()
            with open(os.path.join(names[cur], "memory.limit_in_bytes"), "w") as f:
                f.write(str((64 + k % 2) << 20))
            limit.append((time.monotonic() - t) * 1000)
            fresh = os.path.join(base, "made-%d" % k)
            t = time.monotonic()
            os.mkdir(fresh)
            mkdir.append((time.monotonic() - t) * 1000)
            t = time.monotonic()
            os.rmdir(fresh)
            rmdir.append((time.monotonic() - t) * 1000)
            time.sleep(0.002)
    finally:
        if p:
            stop.set()
            p.join()
        os.rmdir(names[cur])
    return rename, limit, mkdir, rmdir


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--joins", choices=("on", "off", "both"), default="both")
    args = ap.parse_args()
    if not os.path.isdir(ROOT):
        sys.exit("no v1 memory hierarchy at " + ROOT)
    base = os.path.join(ROOT, "skiff-bench-cgroup-lock-%d" % os.getpid())
    os.mkdir(base)
    try:
        print("bench/coldstart/cgroup_lock.py: %d rounds, %d cores, load %.1f; p50 / p99 / max ms"
              % (args.rounds, os.cpu_count(), os.getloadavg()[0]))
        for joins in {"on": [True], "off": [False], "both": [False, True]}[args.joins]:
            rename, limit, mkdir, rmdir = measure(base, args.rounds, joins)
            print("  %s:" % ("a keeper joining beside" if joins else "nothing beside (the peer)"))
            for name, v in (("rename", rename), ("limit write", limit), ("mkdir", mkdir),
                            ("rmdir", rmdir)):
                print("    %-12s %7.3f / %7.3f / %7.3f   p99 / the limit's p99 %6.1fx" %
                      (name, pct(v, 50), pct(v, 99), max(v), pct(v, 99) / pct(limit, 99)))
    finally:
        for d in os.listdir(base):
            if os.path.isdir(os.path.join(base, d)):
                os.rmdir(os.path.join(base, d))
        os.rmdir(base)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    main()
