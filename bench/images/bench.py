"""Prebuilt images, in one run on this machine, each beside its peer.

    /usr/bin/python3 bench/images/bench.py [--runs 3] [--starts 10] [--bin build/rel]

The image: 5 layers of ~10 MB of incompressible bytes each (~50 MB), the first with a static
HTTP server (bench/container/listen.c), written as an OCI layout here and pushed with skopeo
to Debian's docker-registry, started on loopback.

1. Pull and unpack: `skiff push NAME --docker-image REF --no-start` (the app made, the
   manifest, config and 5 layers pulled, each layer verified and unpacked in one pass, its
   compressed blob not kept, all of it synced to disk: the staging) beside
   `skopeo copy docker://REF oci:DIR` (pulled, verified and stored as compressed blobs, not
   unpacked), alternating, each from nothing (the app is deleted between runs and its layers
   collected).
2. A second push of the same image, layers stored: `skiff push` to the first 200 through the
   router.
3. An instance's start, scale 0 -> 1 to the first byte (bench/coldstart's measure), from the
   image beside the same binary pushed with the binary buildpack, alternating."""
import argparse
import gzip
import hashlib
import http.client
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import skiffd  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "coldstart_bench", os.path.join(ROOT, "bench", "coldstart", "bench.py"))
coldstart = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(coldstart)


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(files):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        for name, data, mode in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 1700000000
            t.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)


def oci_layout(d, binary):
    """~50 MB in 5 layers, as an OCI image layout folder (skopeo's oci:DIR:TAG)."""
    layers = [layer([("hello", binary, 0o755), ("data/0", os.urandom(10 << 20), 0o644)])]
    layers += [layer([("data/%d" % i, os.urandom(10 << 20), 0o644)]) for i in range(1, 5)]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Entrypoint": ["/hello"], "ExposedPorts": {"8080/tcp": {}}},
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest(x), "size": len(x)} for x in layers]}).encode()
    os.makedirs(os.path.join(d, "blobs", "sha256"))
    for blob in layers + [config, manifest]:
        with open(os.path.join(d, "blobs", "sha256", digest(blob)[7:]), "wb") as f:
            f.write(blob)
    with open(os.path.join(d, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    with open(os.path.join(d, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(manifest), "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}, f)
    return sum(len(x) for x in layers)


def start_registry(work):
    port = skiffd.free_port()
    config = os.path.join(work, "registry.yml")
    with open(config, "w") as f:
        f.write("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                "    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%d\n"
                % (os.path.join(work, "registry"), port))
    log = open(os.path.join(work, "registry.log"), "wb")
    proc = subprocess.Popen(["docker-registry", "serve", config], stdout=log,
                            stderr=subprocess.STDOUT)

    def up():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            c.request("GET", "/v2/")
            return c.getresponse().status == 200
        finally:
            c.close()
    skiffd.wait_for(up, 30, "docker-registry")
    return proc, "127.0.0.1:%d" % port


def timed(argv, env=None):
    t = time.monotonic()
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit("%s failed:\n%s%s" % (" ".join(argv), r.stdout, r.stderr))
    return time.monotonic() - t, r


def store_empty(d):
    layers = os.path.join(d.home, "images", "layers", "sha256")
    return not os.path.isdir(layers) or not os.listdir(layers)


def router_200(d, app):
    c = http.client.HTTPConnection("127.0.0.1", d.router_port, timeout=5)
    try:
        c.request("GET", "/", headers={"Host": app + ".localhost"})
        return c.getresponse().status == 200
    finally:
        c.close()


def pct(values, p):
    return coldstart.pct(values, p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--starts", type=int, default=10)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "rel"))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="skiff-bench-images-")
    registry = d = None
    try:
        hello = os.path.join(work, "hello")
        subprocess.run(["cc", "-O2", "-static", "-o", hello,
                        os.path.join(ROOT, "bench", "container", "listen.c")], check=True)
        with open(hello, "rb") as f:
            binary = f.read()
        layout = os.path.join(work, "layout")
        size = oci_layout(layout, binary)
        registry, host = start_registry(work)
        ref = host + "/bench/web:1"
        timed(["skopeo", "copy", "--dest-tls-verify=false", "oci:%s:latest" % layout,
               "docker://" + ref])
        d = skiffd.start(args.bin, "skiff-bench-images-", extra_args=["--insecure-registry", host])

        # 1. pull and unpack, beside skopeo copy
        skiff_s, skopeo_s = [], []
        for k in range(args.runs):
            for who in (("skiff", "skopeo") if k % 2 == 0 else ("skopeo", "skiff")):
                if who == "skopeo":
                    dest = os.path.join(work, "copy")
                    shutil.rmtree(dest, ignore_errors=True)
                    s, _ = timed(["skopeo", "copy", "--src-tls-verify=false", "docker://" + ref,
                                  "oci:%s:bench" % dest])
                    skopeo_s.append(s)
                    continue
                skiffd.wait_for(lambda: store_empty(d), 60, "the layers to be collected")
                s, r = timed([os.path.join(args.bin, "skiff"), "push", "pull%d" % k,
                              "--docker-image", ref, "--no-start"], env=d.env)
                if r.stdout.count(": pulled") != 6:
                    raise SystemExit("the push did not pull all 6 blobs:\n" + r.stdout)
                skiff_s.append(s)
                d.cli("delete", "pull%d" % k, "-f")

        # 2. a second push of the same image, its layers stored, to its first response
        r = d.cli("push", "first", "--docker-image", ref)
        if r.returncode != 0:
            raise SystemExit("push failed:\n" + r.stdout + r.stderr)
        again = []
        for k in range(args.runs):
            app = "again%d" % k
            t = time.monotonic()
            r = d.cli("push", app, "--docker-image", ref)
            if r.returncode != 0 or "already stored" not in r.stdout:
                raise SystemExit("second push failed:\n" + r.stdout + r.stderr)
            skiffd.wait_for(lambda: router_200(d, app), 60, app + " to answer")
            again.append(time.monotonic() - t)

        # 3. an instance's start from the image, beside the same binary from a droplet
        coldstart.push(d, work, "bp", {"hello": (binary, 0o755),
                                       "Procfile": ("web: ./hello\n", 0o644)})
        image_starts, droplet_starts, warm = [], [], {"image": 0, "droplet": 0}
        for _ in range(args.starts):
            for app, into, kind in (("first", image_starts, "image"),
                                    ("bp", droplet_starts, "droplet")):
                times, _, w = coldstart.bench_binary(d, app, 1)
                into.extend(times)
                warm[kind] += w

        ms = lambda v: 1000 * v  # noqa: E731
        print("images (%d runs; the image: 5 layers, %.1f MB compressed)" % (args.runs,
                                                                             size / 1e6))
        print("  %-58s %8s %8s" % ("", "p50", "max"))
        print("  %-58s %6.0f ms %6.0f ms" % ("skopeo copy docker:// -> oci: (pull, verify, store)",
                                             ms(pct(skopeo_s, 50)), ms(max(skopeo_s))))
        print("  %-58s %6.0f ms %6.0f ms   %.2fx skopeo" % (
            "skiff push --no-start (pull, verify, unpack, staging)", ms(pct(skiff_s, 50)),
            ms(max(skiff_s)), pct(skiff_s, 50) / pct(skopeo_s, 50)))
        print("  %-58s %6.0f ms %6.0f ms" % ("second push, layers stored, to the first 200",
                                             ms(pct(again, 50)), ms(max(again))))
        print("  %-58s %6.1f ms %6.1f ms   (%d of %d warm)" % (
            "instance start from the image, scale 0->1 to first byte", pct(image_starts, 50),
            max(image_starts), warm["image"], args.starts))
        print("  %-58s %6.1f ms %6.1f ms   (%d of %d warm)   image %.2fx" % (
            "same binary from a buildpack droplet", pct(droplet_starts, 50), max(droplet_starts),
            warm["droplet"], args.starts, pct(image_starts, 50) / pct(droplet_starts, 50)))
    finally:
        if d:
            d.stop()
        if registry:
            registry.terminate()
            registry.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
