#!/usr/bin/python3
"""Wheels of Python distributions installed from Debian packages, for an app's vendor/ folder.

    /usr/bin/python3 scripts/debian_wheels.py -d examples/python-flask/vendor \\
        Flask Werkzeug Jinja2 MarkupSafe itsdangerous click

Debian installs a distribution as its top-level packages plus an .egg-info folder (PKG-INFO,
top_level.txt, requires.txt), which pip cannot install from. This packs each into a wheel (the
files of its top-level packages and modules, a .dist-info made from the .egg-info), tagged for
this Python and machine when it holds a compiled extension, so that the Python buildpack
installs it from vendor/ without a package index. Debian leaves the dependencies that dpkg
handles out of requires.txt, so an app lists every distribution it vendors in its
requirements.txt. Standard library only; the wheels are made the same way every time (files
in order, fixed timestamps)."""
import argparse
import base64
import hashlib
import importlib.metadata
import os
import re
import sys
import sysconfig
import zipfile

EPOCH = (1980, 1, 1, 0, 0, 0)


def requires_dist(text):
    """requires.txt (setuptools' sections) as Requires-Dist lines."""
    lines, marker = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"\[([^:\]]*)(?::(.*))?\]", line)
        if m:
            extra, cond = m.group(1), m.group(2)
            parts = ([f'extra == "{extra}"'] if extra else []) + ([f"({cond})"] if cond else [])
            marker = " and ".join(parts)
            continue
        lines.append(f"Requires-Dist: {line}" + (f"; {marker}" if marker else ""))
    return lines


def files_of(site, top_level):
    """(path in the wheel, path on disk) of the top-level packages and modules, in order."""
    out = []
    for name in top_level:
        pkg = os.path.join(site, name)
        if os.path.isdir(pkg):
            for root, dirs, files in os.walk(pkg):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                for f in sorted(files):
                    if not f.endswith((".pyc", ".pyo")):
                        full = os.path.join(root, f)
                        out.append((os.path.relpath(full, site), full))
        else:
            for f in sorted(os.listdir(site)):
                if f == name + ".py" or (f.startswith(name + ".") and f.endswith(".so")):
                    out.append((f, os.path.join(site, f)))
    return out


def record_line(arc, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arc},sha256={digest},{len(data)}"


def wheel(name, dest):
    dist = importlib.metadata.distribution(name)
    info = str(dist._path)  # the .egg-info folder
    if not info.endswith(".egg-info"):
        sys.exit(f"{name}: {info} is not an .egg-info folder (not installed by a Debian package?)")
    site = os.path.dirname(info)
    read = lambda f: dist.read_text(f) or ""
    top = [t for t in read("top_level.txt").split() if t]
    files = files_of(site, top)
    if not files:
        sys.exit(f"{name}: none of its top-level names ({', '.join(top)}) is in {site}")
    compiled = any(arc.endswith(".so") for arc, _ in files)
    ver = sys.version_info
    tag = (f"cp{ver.major}{ver.minor}-cp{ver.major}{ver.minor}-"
           f"{sysconfig.get_platform().replace('-', '_').replace('.', '_')}"
           if compiled else "py3-none-any")
    norm = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    version = dist.version
    di = f"{norm}-{version}.dist-info"
    meta = read("PKG-INFO").rstrip("\n").split("\n\n", 1)
    head = [l for l in meta[0].split("\n") if not l.startswith("Requires-Dist:")]
    head += requires_dist(read("requires.txt"))
    metadata = "\n".join(head) + "\n\n" + (meta[1] if len(meta) > 1 else "") + "\n"
    extra = {f"{di}/METADATA": metadata.encode(),
             f"{di}/WHEEL": (f"Wheel-Version: 1.0\nGenerator: skiff debian_wheels.py\n"
                             f"Root-Is-Purelib: {'false' if compiled else 'true'}\n"
                             f"Tag: {tag}\n").encode(),
             f"{di}/top_level.txt": ("\n".join(top) + "\n").encode()}
    if read("entry_points.txt"):
        extra[f"{di}/entry_points.txt"] = read("entry_points.txt").encode()
    path = os.path.join(dest, f"{norm}-{version}-{tag}.whl")
    records = []
    with zipfile.ZipFile(path + ".tmp", "w", zipfile.ZIP_DEFLATED) as z:
        def add(arc, data, mode=0o644):
            zi = zipfile.ZipInfo(arc, EPOCH)
            zi.external_attr = mode << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, data)
            records.append(record_line(arc, data))
        for arc, full in files:
            with open(full, "rb") as f:
                add(arc, f.read(), 0o755 if arc.endswith(".so") else 0o644)
        for arc, data in extra.items():
            add(arc, data)
        records.append(f"{di}/RECORD,,")
        zi = zipfile.ZipInfo(f"{di}/RECORD", EPOCH)
        zi.external_attr = 0o644 << 16
        z.writestr(zi, "\n".join(records) + "\n")
    os.replace(path + ".tmp", path)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-d", "--dest", required=True, help="the folder for the wheels (vendor/)")
    ap.add_argument("names", nargs="+", help="distribution names, as pip knows them")
    args = ap.parse_args()
    os.makedirs(args.dest, exist_ok=True)
    for name in args.names:
        try:
            print(wheel(name, args.dest))
        except importlib.metadata.PackageNotFoundError:
            sys.exit(f"{name} is not installed for {sys.executable}: install its Debian package "
                     f"(scripts/deps.sh lists python3-flask)")


if __name__ == "__main__":
    main()
