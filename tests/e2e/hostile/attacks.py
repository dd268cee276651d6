"""What a hostile tenant tries from inside its instance or its staging, each attack for real.

Every attack answers {"escaped": bool, "detail": str, ...}: escaped is true when the attack
got through (read the file, reached the port, the syscall was not refused), and detail says
what happened to each attempt. An attack that cannot even be attempted (a bug here) raises,
so that it shows up as an error instead of a pass. Controls answer {"ok": bool, "detail": str}:
the same mechanisms used against the instance's own things, which must work.

Nothing here harms the host when an attack does get through: signals are signal 0, files
that are "written" are new files, mounts are undone at once, privileged syscalls get arguments
the kernel refuses after its permission check (reboot without the magic numbers, swapon of
a missing file, settimeofday with no time), special files are opened without being written.

Used two ways: imported by app.py (GET /attack/NAME?...) and run by the hostile buildpack's
bin/compile as `python3 attacks.py staging PLAN.json BUILD CACHE`, which prints one line per
attempt: "ATTACK label escaped=0|1 detail" or "CONTROL label ok=0|1 detail".
"""
import concurrent.futures
import ctypes
import errno
import json
import os
import platform
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

TIMEOUT = 1.0  # every network attempt

NR = {
    "x86_64": dict(init_module=175, finit_module=313, delete_module=176, kexec_load=246,
                   bpf=321, keyctl=250, settimeofday=164, reboot=169, swapon=167, setns=308,
                   unshare=272, capset=126, capget=125, ptrace=101, mount=165, umount2=166),
    "aarch64": dict(init_module=105, finit_module=273, delete_module=106, kexec_load=104,
                    bpf=280, keyctl=219, settimeofday=170, reboot=142, swapon=224, setns=268,
                    unshare=97, capset=91, capget=90, ptrace=117, mount=40, umount2=39),
}.get(platform.machine(), {})

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x2000000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_BIND, MNT_DETACH = 4096, 2
PTRACE_SEIZE = 0x4206
CAP_SYS_ADMIN = 21

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def ename(e):
    return errno.errorcode.get(e, str(e))


def syscall(name, *args):
    """(rc, errno) of a raw syscall by name (errno 0 when it worked)."""
    if name not in NR:
        raise RuntimeError("no syscall number for %s on %s" % (name, platform.machine()))
    ctypes.set_errno(0)
    rc = _libc.syscall(ctypes.c_long(NR[name]), *args)
    return rc, (ctypes.get_errno() if rc == -1 else 0)


def one(params, key, default=None):
    v = params.get(key)
    if isinstance(v, list):
        return v[0] if v else default
    return default if v is None else v


def many(params, key):
    v = params.get(key) or []
    out = []
    for item in (v if isinstance(v, list) else [v]):
        out += [x for x in str(item).split(",") if x]
    return out


def result(attempts):
    """attempts: [(escaped, text)] -> the attack's answer."""
    return {"escaped": any(e for e, _ in attempts),
            "detail": "; ".join(("ESCAPED " if e else "") + t for e, t in attempts) or "nothing tried"}


def not_eperm(what, rc, e):
    """A privileged syscall that the sandbox must refuse with EPERM: anything else got past it
    (an EINVAL or ENOENT means the kernel's permission check passed; ENOSYS means no filter
    refused it before the kernel looked)."""
    if rc != -1:
        return True, "%s: succeeded (%d)" % (what, rc)
    return e != errno.EPERM, "%s: %s" % (what, ename(e))


def in_child(code, timeout=20):
    """Runs python code in a fresh single-threaded process (unshare, setns and setuid need one);
    the code prints one JSON value, which is returned."""
    prelude = ("import ctypes, json, os, sys\n"
               "libc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n")
    r = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0 or not r.stdout.strip():
        raise RuntimeError("child failed (%d): %s %s" % (r.returncode, r.stdout, r.stderr))
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- files ----------------------------------------------------------------------------------

def paths(params):
    """The paths of path=... ("~/x" is under HOME) and of path_env=NAME (the path in $NAME)."""
    out = []
    for p in many(params, "path"):
        out.append(os.path.join(home(), p[2:]) if p.startswith("~/") else p)
    for name in many(params, "path_env"):
        if not os.environ.get(name):
            raise RuntimeError("$%s is not set" % name)
        out.append(os.environ[name])
    return out


def attack_read(params):
    """Reads each path: escaped if any of them could be read."""
    attempts = []
    for path in paths(params):
        try:
            with open(path, "rb") as f:
                n = len(f.read(4096))
            attempts.append((True, "%s: read %d bytes" % (path, n)))
        except OSError as e:
            attempts.append((False, "%s: %s" % (path, ename(e.errno))))
    return result(attempts)


def attack_write(params):
    """Creates (or truncates) each path with content: escaped if any write landed."""
    content = one(params, "content", "written by the hostile app\n").encode()
    attempts = []
    for path in paths(params):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, content)
            finally:
                os.close(fd)
            attempts.append((True, "%s: written" % path))
        except OSError as e:
            attempts.append((False, "%s: %s" % (path, ename(e.errno))))
    return result(attempts)


def attack_fill_disk(params):
    """Writes mb MiB into dir (default TMPDIR): escaped if the quota did not stop it."""
    mb = int(one(params, "mb", "128"))
    d = one(params, "dir") or os.environ.get("TMPDIR") or "/tmp"
    path = os.path.join(d, "fill-%d" % os.getpid())
    chunk = b"\0" * (1 << 20)
    written, err = 0, None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as e:
        return {"escaped": False, "detail": "cannot create %s: %s" % (path, ename(e.errno)),
                "errno": ename(e.errno), "written_mb": 0}
    try:
        try:
            while written < mb:
                n = os.write(fd, chunk)
                if n < len(chunk):
                    raise OSError(errno.ENOSPC, "short write")
                written += 1
            os.fsync(fd)
        except OSError as e:
            err = e.errno
        finally:
            try:
                os.close(fd)
            except OSError as e:
                err = err or e.errno
    finally:
        if one(params, "keep") == "1":  # the disk stays full, for the platform to see
            return {"escaped": written >= mb, "detail": "wrote %d MiB, then %s" % (
                written, ename(err) if err else "no error"), "errno": ename(err) if err else None,
                "written_mb": written}
        try:
            os.unlink(path)
        except OSError:
            pass
    return {"escaped": err is None,
            "detail": "%s: wrote %d of %d MiB%s" % (path, written, mb,
                                                   ", then %s" % ename(err) if err else ""),
            "errno": ename(err) if err else None, "written_mb": written}


# ---- processes -------------------------------------------------------------------------------

def _cmdline(pid):
    with open("/proc/%s/cmdline" % pid, "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace").strip()


def attack_proc(params):
    """Looks for processes beyond its own PID namespace: the given host pids (pid:expected
    text of its command line), any skiffd or skiff-router, any process of another PID namespace."""
    attempts = []
    for target in many(params, "target"):
        pid, _, expect = target.partition(":")
        try:
            cmd = _cmdline(pid)
            attempts.append((expect in cmd, "pid %s visible: %r" % (pid, cmd[:80])))
        except OSError as e:
            attempts.append((False, "pid %s: %s" % (pid, ename(e.errno))))
    own_ns = os.readlink("/proc/self/ns/pid")
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    for p in pids:
        try:
            cmd = _cmdline(p)
        except OSError:
            continue
        if "skiffd" in cmd or "skiff-router" in cmd:
            attempts.append((True, "pid %s is %r" % (p, cmd[:80])))
        try:
            ns = os.readlink("/proc/%s/ns/pid" % p)
            if ns != own_ns:
                attempts.append((True, "pid %s (%r) is in PID namespace %s" % (p, cmd[:60], ns)))
        except OSError:
            pass
    attempts.append((False, "%d processes visible" % len(pids)))
    return result(attempts)


def attack_signal(params):
    """kill(pid, 0) on each host pid: escaped if any could be signalled."""
    attempts = []
    for pid in many(params, "pid"):
        try:
            os.kill(int(pid), 0)
            attempts.append((True, "pid %s: may be signalled" % pid))
        except OSError as e:
            attempts.append((False, "pid %s: %s" % (pid, ename(e.errno))))
    return result(attempts)


def attack_environ(params):
    """Reads /proc/PID/environ of the given pids and of every visible process: escaped if any
    holds the name (the victim's secret variable)."""
    name = one(params, "name", "VICTIM_SECRET").encode() + b"="
    attempts = []
    seen = set()
    for pid in many(params, "pid") + [p for p in os.listdir("/proc") if p.isdigit()]:
        if pid in seen or pid == str(os.getpid()):
            continue
        seen.add(pid)
        try:
            with open("/proc/%s/environ" % pid, "rb") as f:
                env = f.read()
            if name in env:
                attempts.append((True, "pid %s: environ holds %s" % (pid, name.decode())))
            elif pid in many(params, "pid"):
                attempts.append((False, "pid %s: readable, without %s" % (pid, name.decode())))
        except OSError as e:
            if pid in many(params, "pid"):
                attempts.append((False, "pid %s: %s" % (pid, ename(e.errno))))
    return result(attempts)


def _seize(pid, out):
    """PTRACE_SEIZE from a thread of its own: when the thread ends, the kernel detaches."""
    ctypes.set_errno(0)
    rc = _libc.ptrace(ctypes.c_long(PTRACE_SEIZE), ctypes.c_long(pid), None, None)
    out.append((rc, ctypes.get_errno() if rc == -1 else 0))


def attack_ptrace(params):
    """PTRACE_SEIZE of other processes (who=others: the given pids and its own parent) or of a
    child of its own (who=child): escaped if any attach worked."""
    who = one(params, "who", "others")
    targets, child = [], None
    if who == "child":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        targets.append(("own child %d" % child.pid, child.pid))
    else:
        targets += [("pid %s" % p, int(p)) for p in many(params, "pid")]
        targets.append(("parent %d" % os.getppid(), os.getppid()))
    attempts = []
    try:
        for what, pid in targets:
            out = []
            t = threading.Thread(target=_seize, args=(pid, out))
            t.start()
            t.join()
            rc, e = out[0]
            attempts.append((rc == 0, "%s: %s" % (what, "attached" if rc == 0 else ename(e))))
    finally:
        if child:
            child.kill()
            child.wait()
    return result(attempts)


# ---- privileges --------------------------------------------------------------------------------

def attack_mount(params):
    """Mounts a tmpfs, a proc and a bind mount under dir (default TMPDIR), undone at once."""
    base = os.path.join(one(params, "dir") or os.environ.get("TMPDIR") or "/tmp",
                        "mnt-%d" % os.getpid())
    tries = [("tmpfs", b"tmpfs", b"tmpfs", 0, b"size=1m"), ("proc", b"proc", b"proc", 0, None),
             ("bind", None, None, MS_BIND, None)]
    attempts = []
    os.makedirs(os.path.join(base, "src"), exist_ok=True)
    try:
        for kind, src, fstype, flags, data in tries:
            target = os.path.join(base, kind)
            os.makedirs(target, exist_ok=True)
            if kind == "bind":
                src = os.path.join(base, "src").encode()
            ctypes.set_errno(0)
            rc = _libc.mount(src, target.encode(), fstype, ctypes.c_ulong(flags), data)
            e = ctypes.get_errno()
            if rc == 0:
                _libc.umount2(target.encode(), MNT_DETACH)
                attempts.append((True, "%s mount on %s: mounted (and unmounted)" % (kind, target)))
            else:
                attempts.append((e != errno.EPERM, "%s mount: %s" % (kind, ename(e))))
    finally:
        for d in ("tmpfs", "proc", "bind", "src"):
            try:
                os.rmdir(os.path.join(base, d))
            except OSError:
                pass
        try:
            os.rmdir(base)
        except OSError:
            pass
    return result(attempts)


def attack_module(params):
    """init_module of an empty image, finit_module of /dev/null, delete_module of a missing
    module: the sandbox must refuse each with EPERM before the kernel looks at them."""
    buf = ctypes.create_string_buffer(16)
    attempts = [not_eperm("init_module", *syscall("init_module", buf, ctypes.c_ulong(0),
                                                   ctypes.c_char_p(b"")))]
    try:
        fd = os.open("/dev/null", os.O_RDONLY)
    except OSError:
        fd = os.open(sys.executable, os.O_RDONLY)
    try:
        attempts.append(not_eperm("finit_module", *syscall("finit_module", ctypes.c_int(fd),
                                                            ctypes.c_char_p(b""), ctypes.c_int(0))))
    finally:
        os.close(fd)
    attempts.append(not_eperm("delete_module", *syscall(
        "delete_module", ctypes.c_char_p(b"skiff_no_such_module"), ctypes.c_int(os.O_NONBLOCK))))
    return result(attempts)


def attack_userns(params):
    """unshare(CLONE_NEWUSER), alone and with a mount namespace, in a fresh process."""
    attempts = []
    for what, flags in (("CLONE_NEWUSER", CLONE_NEWUSER),
                        ("CLONE_NEWUSER|CLONE_NEWNS", CLONE_NEWUSER | CLONE_NEWNS)):
        rc, e = in_child("rc = libc.unshare(%d)\nprint(json.dumps([rc, ctypes.get_errno()]))" % flags)
        attempts.append((rc == 0, "unshare(%s): %s" % (what, "created" if rc == 0 else ename(e))))
    return result(attempts)


def attack_unshare(params):
    """unshare of every other kind of namespace, in a fresh process each."""
    attempts = []
    for what, flags in (("CLONE_NEWNS", CLONE_NEWNS), ("CLONE_NEWNET", CLONE_NEWNET),
                        ("CLONE_NEWPID", CLONE_NEWPID), ("CLONE_NEWUTS", CLONE_NEWUTS),
                        ("CLONE_NEWIPC", CLONE_NEWIPC), ("CLONE_NEWCGROUP", CLONE_NEWCGROUP)):
        rc, e = in_child("rc = libc.unshare(%d)\nprint(json.dumps([rc, ctypes.get_errno()]))" % flags)
        attempts.append((rc == 0, "unshare(%s): %s" % (what, "created" if rc == 0 else ename(e))))
    return result(attempts)


def _status():
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    return fields


CAPSET_CHILD = """
class H(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class D(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]
h = H(0x20080522, 0)
d = (D * 2)()
libc.capget(ctypes.byref(h), d)
d[0].effective |= 1 << %d
d[0].permitted |= 1 << %d
rc = libc.capset(ctypes.byref(h), d)
e = ctypes.get_errno()
eff = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff:")][0]
print(json.dumps([rc, e, eff]))
""" % (CAP_SYS_ADMIN, CAP_SYS_ADMIN)

SETUID_CHILD = """
try:
    os.setuid(0)
    print(json.dumps([0, 0, os.getuid()]))
except OSError as ex:
    print(json.dumps([-1, ex.errno, os.getuid()]))
"""


def attack_capability(params):
    """Any capability in its sets, no no_new_privs, capset raising CAP_SYS_ADMIN, setuid(0):
    escaped if any of them holds."""
    st = _status()
    attempts = []
    for k in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        v = int(st.get(k, "0"), 16)
        attempts.append((v != 0, "%s=%s" % (k, st.get(k))))
    attempts.append((st.get("NoNewPrivs") != "1", "NoNewPrivs=%s" % st.get("NoNewPrivs")))
    rc, e, eff = in_child(CAPSET_CHILD)
    raised = rc == 0 and (int(eff, 16) >> CAP_SYS_ADMIN) & 1
    attempts.append((bool(raised), "capset(+CAP_SYS_ADMIN): %s" %
                     ("raised, CapEff=%s" % eff if raised else ename(e) if rc else "no effect")))
    rc, e, uid = in_child(SETUID_CHILD)
    attempts.append((rc == 0 and uid == 0, "setuid(0): %s" % ("uid 0" if rc == 0 else ename(e))))
    return result(attempts)


SETNS_CHILD = """
fd = os.open("/proc/self/ns/uts", os.O_RDONLY)
rc = libc.setns(fd, %d)
print(json.dumps([rc, ctypes.get_errno()]))
""" % CLONE_NEWUTS


def attack_syscall(params):
    """Privileged syscalls the seccomp filter must answer with EPERM (name=...), with arguments
    that can do no harm when the kernel does get them."""
    attempts = []
    for name in many(params, "name"):
        if name == "kexec_load":
            r = syscall(name, ctypes.c_ulong(0), ctypes.c_ulong(0), None, ctypes.c_ulong(0xdead0000))
        elif name == "bpf":
            r = syscall(name, ctypes.c_int(9999), None, ctypes.c_uint(0))
        elif name == "keyctl":  # KEYCTL_GET_KEYRING_ID of the session keyring, not created
            r = syscall(name, ctypes.c_int(0), ctypes.c_int(-3), ctypes.c_int(0))
        elif name == "settimeofday":  # no time, no zone: only the permission check runs
            r = syscall(name, None, None)
        elif name == "reboot":  # without the magic numbers the kernel refuses after its check
            r = syscall(name, ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0), None)
        elif name == "swapon":
            r = syscall(name, ctypes.c_char_p(b"/nonexistent-skiff-swap"), ctypes.c_int(0))
        elif name == "setns":  # rejoin its own UTS namespace
            r = tuple(in_child(SETNS_CHILD))
        else:
            raise RuntimeError("unknown syscall attack %s" % name)
        attempts.append(not_eperm(name, *r))
    return result(attempts)


# ---- the kernel's files --------------------------------------------------------------------------

def attack_proc_paths(params):
    """/proc/kcore read, /proc/sysrq-trigger and /proc/sys files opened for writing (never
    written): escaped if any opens. Paths this kernel lacks are reported and count as closed."""
    attempts = []
    for path, flags in (("/proc/kcore", os.O_RDONLY), ("/proc/sysrq-trigger", os.O_WRONLY),
                        ("/proc/sys/kernel/hostname", os.O_WRONLY),
                        ("/proc/sys/vm/drop_caches", os.O_WRONLY),
                        ("/proc/sys/kernel/core_pattern", os.O_WRONLY)):
        try:
            fd = os.open(path, flags)
            os.close(fd)
            attempts.append((True, "%s: opened %s" % (path, "for writing" if flags else "")))
        except OSError as e:
            attempts.append((False, "%s: %s" % (path, ename(e.errno))))
    return result(attempts)


def attack_cgroup(params):
    """Opens its own cgroup's limits (and the root cgroup's cgroup.procs, to move out of them)
    for writing: escaped if any opens. Nothing is written."""
    paths = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.strip().split(":", 2)
            path = path.lstrip("/")
            if controllers == "":
                base = os.path.join("/sys/fs/cgroup", path)
                paths += [os.path.join(base, n) for n in ("memory.max", "pids.max", "cgroup.procs")]
                paths.append("/sys/fs/cgroup/cgroup.procs")
            for c in controllers.split(","):
                if c in ("memory", "pids"):
                    base = os.path.join("/sys/fs/cgroup", c, path)
                    limit = "memory.limit_in_bytes" if c == "memory" else "pids.max"
                    paths += [os.path.join(base, limit), os.path.join("/sys/fs/cgroup", c, "cgroup.procs")]
    attempts = []
    for path in dict.fromkeys(paths):
        try:
            fd = os.open(path, os.O_WRONLY)
            os.close(fd)
            attempts.append((True, "%s: opened for writing" % path))
        except OSError as e:
            attempts.append((False, "%s: %s" % (path, ename(e.errno))))
    return result(attempts)


DEV_ALLOWED = {"null", "zero", "full", "random", "urandom", "tty", "console", "ptmx"}


def attack_devices(params):
    """Any device node in /dev beyond the minimal set (null, zero, full, random, urandom, tty,
    console, ptmx; pts/ and shm/ are folders): the host's disks, loop devices, kmsg, mem."""
    attempts = []
    for name in sorted(os.listdir("/dev")):
        try:
            st = os.lstat(os.path.join("/dev", name))
        except OSError:
            continue
        if (stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode)) and name not in DEV_ALLOWED:
            attempts.append((True, "/dev/%s is a %s device" %
                             (name, "block" if stat.S_ISBLK(st.st_mode) else "character")))
    attempts.append((False, "%d entries in /dev" % len(os.listdir("/dev"))))
    return result(attempts)


# ---- network -------------------------------------------------------------------------------------

def split_addr(addr):
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def tcp_connect(addr):
    """(connected, text) for one host:port, within TIMEOUT."""
    try:
        with socket.create_connection(split_addr(addr), timeout=TIMEOUT):
            return True, "%s: connected" % addr
    except socket.timeout:
        return False, "%s: timed out" % addr
    except OSError as e:
        return False, "%s: %s" % (addr, ename(e.errno) if e.errno else e)


# straight to the address: a proxy from the environment would be another way out, not this one
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def whoami(addr):
    """GET /whoami on addr: the answering instance's {"app", "guid"}, or None."""
    try:
        with _direct.open("http://%s/whoami" % addr, timeout=TIMEOUT) as r:
            return json.loads(r.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def http_status(method, url, token=None):
    req = urllib.request.Request(url, method=method)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with _direct.open(req, timeout=TIMEOUT) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, urllib.error.URLError) as e:
        return "unreachable (%s)" % getattr(e, "reason", e)


def events_hostport():
    url = os.environ.get("SKIFF_EVENTS_URL")
    if not url:
        return None, None
    u = urllib.parse.urlsplit(url)
    return "%s:%d" % (u.hostname, u.port or 80), "%s://%s" % (u.scheme, u.netloc)


def attack_unix(params):
    """Connects to each Unix socket path=... (skiffd's bus, another instance's supervisor):
    escaped if any accepts."""
    attempts = []
    for path in paths(params):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(TIMEOUT)
        try:
            s.connect(path)
            attempts.append((True, "%s: connected" % path))
        except OSError as e:
            attempts.append((False, "%s: %s" % (path, ename(e.errno) if e.errno else e)))
        finally:
            s.close()
    return result(attempts)


def attack_publish_elsewhere(params):
    """Publishes with the instance's own token into each space=ORG/SPACE that is not its own,
    by query and by ORG/SPACE/NAME: escaped if any is accepted (2xx)."""
    url = os.environ["SKIFF_EVENTS_URL"].rstrip("/")
    if not url.endswith("/v1"):
        url += "/v1"
    token = os.environ["SKIFF_EVENTS_TOKEN"]
    attempts = []
    for space in many(params, "space"):
        quoted = urllib.parse.quote(space, safe="")
        for target in ("%s/topics/stolen/events?space=%s" % (url, quoted),
                       "%s/topics/%s%%2Fstolen/events" % (url, quoted)):
            req = urllib.request.Request(target, method="POST", data=b'{"from": "hostile"}',
                                         headers={"Authorization": "Bearer " + token,
                                                  "Content-Type": "application/json"})
            try:
                with _direct.open(req, timeout=5) as r:
                    attempts.append((200 <= r.status < 300, "POST %s: %d" % (target, r.status)))
            except urllib.error.HTTPError as e:
                attempts.append((False, "POST %s: %d" % (target, e.code)))
            except (OSError, urllib.error.URLError) as e:
                attempts.append((False, "POST %s: %s" % (target, e)))
    return result(attempts)


def attack_connect(params):
    """TCP connections to each addr=host:port: escaped if any connects. With identify=1, a
    connection that turns out to be itself (its own /whoami) does not count. With publish_only=1, the host:port of SKIFF_EVENTS_URL
    is instead asked for what is not publishing (GET /v1/info, /v1/apps, /v1/topics, with
    and without its token): escaped if any of those answers 2xx."""
    addrs = many(params, "addr")
    identify = one(params, "identify") == "1"
    own = os.environ.get("CF_INSTANCE_GUID")
    attempts = []
    ev_addr, ev_base = events_hostport() if one(params, "publish_only") == "1" else (None, None)
    if one(params, "publish"):  # staging has no SKIFF_EVENTS_URL: the test names the endpoint
        ev_addr = one(params, "publish")
        ev_base = "http://" + ev_addr
    if ev_addr:
        token = os.environ.get("SKIFF_EVENTS_TOKEN")
        for path in ("/v1/info", "/v1/apps", "/v1/topics"):
            for tok in (None, token):
                s = http_status("GET", ev_base + path, tok)
                attempts.append((isinstance(s, int) and 200 <= s < 300,
                                 "GET %s%s %s: %s" % (ev_base, path, "with its token" if tok else
                                                      "without a token", s)))
    todo = [a for a in dict.fromkeys(addrs) if a != ev_addr]
    # all at once: where a firewall drops the packets, each attempt takes its whole timeout
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(32, len(todo)))) as pool:
        tried = list(zip(todo, pool.map(tcp_connect, todo)))
    for addr, (ok, text) in tried:
        if ok and identify:
            who = whoami(addr)
            if who and own and who.get("guid") == own:
                attempts.append((False, text + ", but that is itself"))
                continue
            text += ", answered by %s" % (json.dumps(who) if who else "something else")
        attempts.append((ok, text))
    return result(attempts)


_steal = {"lock": threading.Lock()}


def _steal_loop(sock, state):
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nstolen\n"
    while not state["stop"] and time.monotonic() < state["deadline"]:
        try:
            conn, _ = sock.accept()
        except socket.timeout:
            continue
        except OSError:
            break
        with conn:
            conn.settimeout(TIMEOUT)
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                state["requests"].append(data.split(b"\r\n", 1)[0].decode(errors="replace"))
                conn.sendall(reply)
            except OSError:
                pass


def attack_reuseport_start(params):
    """Binds host:port (the router's) with SO_REUSEPORT and keeps accepting for up to
    seconds in the background; reuseport_result says whether it received anything."""
    addr = "%s:%s" % (one(params, "host", "127.0.0.1"), one(params, "port"))
    with _steal["lock"]:
        if _steal.get("state"):
            raise RuntimeError("a reuseport attack is already running")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            s.bind(split_addr(addr))
            s.listen(128)
        except OSError as e:
            s.close()
            return {"escaped": False, "bound": False,
                    "detail": "bind %s with SO_REUSEPORT: %s" % (addr, ename(e.errno))}
        s.settimeout(0.1)
        state = {"stop": False, "deadline": time.monotonic() + float(one(params, "seconds", "30")),
                 "requests": [], "sock": s, "addr": addr}
        state["thread"] = threading.Thread(target=_steal_loop, args=(s, state), daemon=True)
        state["thread"].start()
        _steal["state"] = state
    return {"escaped": False, "bound": True,
            "detail": "bound %s with SO_REUSEPORT (in its own network namespace that is "
                      "harmless); accepting" % addr}


def attack_reuseport_result(params):
    with _steal["lock"]:
        state = _steal.pop("state", None)
    if not state:
        return {"escaped": False, "detail": "nothing was bound"}
    state["stop"] = True
    state["thread"].join()
    state["sock"].close()
    n = len(state["requests"])
    return {"escaped": n > 0, "stolen": n,
            "detail": "%s: received %d connections meant for the router%s" %
                      (state["addr"], n, (": " + ", ".join(state["requests"][:3])) if n else "")}


ATTACKS = {name[len("attack_"):]: f for name, f in globals().items() if name.startswith("attack_")}


# ---- controls: the same mechanisms on its own things must work -----------------------------------

def home():
    return os.environ.get("HOME") or os.getcwd()


def control_info(params):
    import pwd
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = None
    names = ("HOME", "TMPDIR", "PORT", "CF_INSTANCE_GUID", "CF_INSTANCE_INDEX", "SKIFF_EVENTS_URL")
    return {"ok": True, "detail": "uid %d" % os.getuid(), "uid": os.getuid(), "gid": os.getgid(),
            "euid": os.geteuid(), "user": user, "hostname": socket.gethostname(),
            "cwd": os.getcwd(), "env": {n: os.environ.get(n) for n in names}, "pid": os.getpid()}


def control_own_droplet(params):
    """Its own droplet (the app's files under HOME) is readable with attack_read."""
    r = attack_read({"path": [os.path.join(home(), "app.py"), os.path.join(home(), "attacks.py")]})
    return {"ok": r["escaped"] and "ESCAPED" in r["detail"] and "ENOENT" not in r["detail"],
            "detail": r["detail"]}


def control_tmpdir(params):
    """TMPDIR is writable (attack_write there works) and reads back."""
    path = os.path.join(os.environ.get("TMPDIR") or "/tmp", "control-%d" % os.getpid())
    r = attack_write({"path": [path], "content": ["control\n"]})
    try:
        with open(path) as f:
            back = f.read()
        os.unlink(path)
    except OSError as e:
        return {"ok": False, "detail": r["detail"] + "; read back: " + ename(e.errno)}
    return {"ok": r["escaped"] and back == "control\n", "detail": r["detail"]}


def control_loopback(params):
    """Its own port answers over its loopback: attack_connect works, and /whoami says itself."""
    addr = "127.0.0.1:%s" % os.environ.get("PORT", "8080")
    r = attack_connect({"addr": [addr]})
    who = whoami(addr)
    return {"ok": r["escaped"] and bool(who) and who.get("guid") == os.environ.get("CF_INSTANCE_GUID"),
            "detail": "%s; whoami %s" % (r["detail"], who)}


def control_self(params):
    """It sees itself: its pid in /proc (attack_proc finds it), its own environ, and signal 0
    to itself works (attack_signal)."""
    me = str(os.getpid())
    p = attack_proc({"target": ["%s:" % me]})
    s = attack_signal({"pid": [me]})
    with open("/proc/self/environ", "rb") as f:
        own_env = b"CF_INSTANCE_GUID=" in f.read()
    ok = "ESCAPED pid %s visible" % me in p["detail"] and s["escaped"] and own_env
    return {"ok": ok, "detail": "proc: %s; signal: %s; own environ: %s" % (p["detail"], s["detail"], own_env)}


def control_events(params):
    """Publishes one event to topic through SKIFF_EVENTS_URL with SKIFF_EVENTS_TOKEN."""
    topic = one(params, "topic", "hostile-events")
    url = os.environ["SKIFF_EVENTS_URL"].rstrip("/")
    if not url.endswith("/v1"):
        url += "/v1"
    req = urllib.request.Request("%s/topics/%s/events" % (url, topic), method="POST",
                                 data=json.dumps({"from": "inside"}).encode(),
                                 headers={"Authorization": "Bearer " + os.environ["SKIFF_EVENTS_TOKEN"],
                                          "Content-Type": "application/json",
                                          "ce-specversion": "1.0", "ce-id": one(params, "id", "hostile-1"),
                                          "ce-source": "/hostile", "ce-type": "hostile.published"})
    try:
        # the one positive network control: 202 comes once the event is on disk, which may
        # take longer than an attack's 1 s under load
        with _direct.open(req, timeout=5) as r:
            body = json.loads(r.read())
            return {"ok": r.status == 202, "status": r.status, "ack": body,
                    "detail": "POST %s: %d" % (req.full_url, r.status)}
    except urllib.error.HTTPError as e:
        return {"ok": False, "status": e.code, "detail": "POST %s: %d %s" % (req.full_url, e.code,
                                                                            e.read()[:200])}
    except (OSError, urllib.error.URLError) as e:
        return {"ok": False, "status": None, "detail": "POST %s: %s" % (req.full_url, e)}


def control_marker(params):
    """Whether HOME/marker exists, and what it holds."""
    path = os.path.join(home(), "marker")
    try:
        with open(path) as f:
            return {"ok": True, "exists": True, "content": f.read(), "detail": path}
    except OSError as e:
        return {"ok": True, "exists": False, "content": None, "detail": "%s: %s" % (path, ename(e.errno))}


CONTROLS = {name[len("control_"):]: f for name, f in globals().items() if name.startswith("control_")}


# ---- staging: bin/compile runs a plan ---------------------------------------------------------

def staging(plan_path, build, cache):
    """Runs each [label, attack, params] of the plan, then the staging controls; one line each."""
    def line(text):
        print(" ".join(str(text).split()), flush=True)

    with open(plan_path) as f:
        plan = json.load(f)
    for label, name, params in plan:
        try:
            r = ATTACKS[name](params)
            line("ATTACK %s escaped=%d %s" % (label, 1 if r["escaped"] else 0, r["detail"]))
        except Exception as e:  # noqa: BLE001 - reported, and the test fails on it
            line("ATTACK %s error %s: %s" % (label, type(e).__name__, e))
    checks = []
    for label, path in (("build", os.path.join(build, "staged-by-hostile")),
                        ("cache", os.path.join(cache, "hostile-cache")),
                        ("tmp", os.path.join(os.environ.get("TMPDIR") or "/tmp",
                                             "hostile-%d" % os.getpid()))):
        r = attack_write({"path": [path], "content": ["x\n"]})
        if label == "tmp" and r["escaped"]:
            os.unlink(path)
        checks.append(("write_" + label, r["escaped"], r["detail"]))
    r = attack_read({"path": [os.path.join(build, "app.py")]})
    checks.append(("read_build", r["escaped"], r["detail"]))
    me = str(os.getpid())
    r = attack_proc({"target": ["%s:" % me]})
    checks.append(("proc_self", "ESCAPED pid %s visible" % me in r["detail"], r["detail"]))
    import pwd
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = "?"
    checks.append(("whoami", True, "uid=%d user=%s build=%s cache=%s" % (os.getuid(), user, build, cache)))
    for label, ok, detail in checks:
        line("CONTROL %s ok=%d %s" % (label, 1 if ok else 0, detail))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "staging":
        staging(*sys.argv[2:])
    else:
        sys.exit("usage: attacks.py staging PLAN.json BUILD CACHE")
