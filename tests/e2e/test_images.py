"""Images: `skiff push --docker-image oci-archive:FILE` and `docker-archive:FILE` run a prebuilt
image's root file system, its config deciding the process, reached through the router like any
app. The images are built here: a tiny static HTTP server compiled with `cc -static`, written
into an OCI image layout (and `docker save`'s layout) by hand, in two layers with a whiteout."""
import gzip
import hashlib
import http.server
import io
import json
import os
import subprocess
import tarfile
import threading
import time

import pytest

from conftest import BIN_DIR, http_get, out

# What the servers built here share: listening on $PORT (8080 without it), and answering a
# connection with a body and closing it.
SERVE_C = r"""
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int listen_on_port(void)
{
    const char *port = getenv("PORT");
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(port ? port : "8080"))};
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 64))
        exit(1);
    return s;
}

static void answer(int c, const char *extra_headers, const char *body, int n)
{
    char head[256];
    int h = snprintf(head, sizeof head,
                     "HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\nConnection: close\r\n\r\n",
                     extra_headers, n);
    if (write(c, head, h) < 0 || write(c, body, n) < 0) {
    }
    close(c);
}
"""

# Answers every request with what the image's config decided: user, working directory,
# environment, and files of both layers (one deleted by the upper layer's whiteout).
SERVER_C = SERVE_C + r"""

static const char *file(const char *path, char *buf, size_t n)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return "absent";
    size_t got = fread(buf, 1, n - 1, f);
    buf[got] = 0;
    fclose(f);
    while (got && buf[got - 1] == '\n')
        buf[--got] = 0;
    return buf;
}

int main(int argc, char **argv)
{
    const char *port = getenv("PORT");
    int s = listen_on_port();
    printf("listening on %s\n", port);
    fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0)
            continue;
        char req[4096];
        if (read(c, req, sizeof req) <= 0) {
            close(c);
            continue;
        }
        char cwd[256], greeting[256], gone[256], body[2048];
        int n = snprintf(body, sizeof body,
                         "port=%s uid=%d gid=%d cwd=%s greeting=%s gone=%s GREETING=%s "
                         "APP_ENV=%s args=%s\n",
                         port ? port : "unset", (int)getuid(), (int)getgid(), getcwd(cwd, sizeof cwd) ? cwd : "?",
                         file("/srv/greeting", greeting, sizeof greeting),
                         file("/srv/gone", gone, sizeof gone), getenv("GREETING"),
                         getenv("APP_ENV") ? getenv("APP_ENV") : "unset",
                         argc > 1 ? argv[1] : "none");
        answer(c, "", body, n);
    }
}
"""


def static_binary(tmp_path_factory, name, source):
    """source compiled with `cc -static` in a folder of its own: the folder and the binary."""
    d = tmp_path_factory.mktemp(name)
    (d / (name + ".c")).write_text(source)
    r = subprocess.run(["cc", "-static", "-O2", "-o", str(d / name), str(d / (name + ".c"))],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return d, (d / name).read_bytes()


@pytest.fixture(scope="module")
def server_binary(tmp_path_factory):
    return static_binary(tmp_path_factory, "server", SERVER_C)[1]


def tar_bytes(entries, compress=False):
    """A tar of (name, bytes | ('symlink', target) | ('dir',)), mode 0755 for files named
    'server' and for bin/sh."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            if isinstance(content, tuple) and content[0] == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, content[1]
                t.addfile(info)
            elif isinstance(content, tuple):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
            else:
                info.size = len(content)
                info.mode = 0o755 if name.endswith(("server", "bin/sh")) else 0o644
                t.addfile(info, io.BytesIO(content))
    raw = data.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_config(**config):
    return json.dumps({"architecture": "amd64", "os": "linux", "config": config,
                       "rootfs": {"type": "layers", "diff_ids": []}}).encode()


DEFAULT_CONFIG = dict(Entrypoint=["/srv/server"], Cmd=["from-cmd"],
                      Env=["GREETING=hello-from-image", "APP_ENV=image-value",
                           "PATH=/usr/bin:/bin"],
                      WorkingDir="/srv/work", User="1000:1000",
                      ExposedPorts={"8080/tcp": {}})


def layers_of(server, greeting="layered"):
    base = tar_bytes([("srv", ("dir",)), ("srv/server", server), ("srv/gone", b"still here\n")],
                     compress=True)
    top = tar_bytes([("srv/.wh.gone", b""), ("srv/greeting", greeting.encode() + b"\n")],
                    compress=True)
    return [base, top]


def image_manifest(layers, config):
    """An OCI image manifest of gzipped layers and a config, as bytes."""
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest(x), "size": len(x)} for x in layers],
    }).encode()


def oci_archive(path, layers, config):
    """Writes an OCI image layout tarball (what `skopeo copy ... oci-archive:` makes)."""
    blobs = {digest(config): config}
    for layer in layers:
        blobs[digest(layer)] = layer
    manifest = image_manifest(layers, config)
    blobs[digest(manifest)] = manifest
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest(manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}).encode()
    entries = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)]
    entries += [("blobs/sha256/" + d[7:], b) for d, b in blobs.items()]
    with open(path, "wb") as f:
        f.write(tar_bytes(entries))
    return digest(manifest)


def docker_archive(path, layers, config):
    """Writes `docker save` output: manifest.json, the config, one folder per layer."""
    raw = [gzip.decompress(x) for x in layers]
    names = ["%s/layer.tar" % hashlib.sha256(x).hexdigest() for x in raw]
    manifest = json.dumps([{"Config": "config.json", "RepoTags": ["web:latest"],
                            "Layers": names}]).encode()
    entries = [("manifest.json", manifest), ("config.json", config)]
    entries += list(zip(names, raw))
    with open(path, "wb") as f:
        f.write(tar_bytes(entries))
    return digest(config)


def get_app(platform, host):
    status, body = http_get(platform.router_url + "/", host=host)
    assert status == 200, (status, body)
    return dict(kv.split("=", 1) for kv in body.split())


def push(platform, name, ref, *extra):
    return platform.cli("push", name, "--docker-image", ref, *extra, timeout=300)


def test_an_oci_archive_runs_as_its_config_says(platform, tmp_path, server_binary):
    archive = tmp_path / "web.tar"
    image_digest = oci_archive(archive, layers_of(server_binary), image_config(**DEFAULT_CONFIG))
    r = push(platform, "web", f"oci-archive:{archive}")
    assert r.returncode == 0, out(r) + platform.output()
    assert image_digest in r.stdout  # staging says which image it runs

    got = get_app(platform, "web.localhost")
    assert got["port"] == "8080"  # its exposed port
    assert got["uid"] == "1000" and got["gid"] == "1000"  # User, unprivileged on the host
    assert got["cwd"] == "/srv/work"  # WorkingDir, made as Docker does
    assert got["greeting"] == "layered"  # the upper layer
    assert got["gone"] == "absent"  # the whiteout hides the lower layer's file
    assert got["GREETING"] == "hello-from-image"  # the image's Env
    assert got["args"] == "from-cmd"  # Entrypoint + Cmd, exec'd without a shell

    # the app's env wins over the image's
    r = platform.cli("set-env", "web", "APP_ENV", "app-value")
    assert r.returncode == 0, out(r)
    r = platform.cli("restart", "web")
    assert r.returncode == 0, out(r)
    platform.wait_for(lambda: get_app(platform, "web.localhost")["APP_ENV"] == "app-value",
                      60, "the app's env over the image's")


def test_a_manifest_names_the_image(platform, tmp_path, server_binary):
    archive = tmp_path / "web.tar"
    oci_archive(archive, layers_of(server_binary, "from-manifest"),
                image_config(**DEFAULT_CONFIG))
    manifest = tmp_path / "manifest.yml"
    manifest.write_text(f"applications:\n- name: fromfile\n  docker:\n"
                        f"    image: oci-archive:{archive}\n")
    r = platform.cli("push", "-f", str(manifest), timeout=300)
    assert r.returncode == 0, out(r) + platform.output()
    assert get_app(platform, "fromfile.localhost")["greeting"] == "from-manifest"


def test_the_first_exposed_port_is_port(platform, tmp_path, server_binary):
    archive = tmp_path / "web.tar"
    config = dict(DEFAULT_CONFIG, ExposedPorts={"9000/tcp": {}, "53/udp": {}})
    oci_archive(archive, layers_of(server_binary), image_config(**config))
    r = push(platform, "port", f"oci-archive:{archive}")
    assert r.returncode == 0, out(r) + platform.output()
    assert get_app(platform, "port.localhost")["port"] == "9000"  # reached there, and told
    app = json.loads(platform.cli("app", "port", "--json").stdout)
    assert all(i["address"].endswith(":9000") for i in app["instances_detail"]), app


def test_a_docker_archive_runs_too(platform, tmp_path, server_binary):
    archive = tmp_path / "web.tar"
    docker_archive(archive, layers_of(server_binary, "from-docker"),
                   image_config(**DEFAULT_CONFIG))
    r = push(platform, "dock", f"docker-archive:{archive}")
    assert r.returncode == 0, out(r) + platform.output()
    got = get_app(platform, "dock.localhost")
    assert got["greeting"] == "from-docker" and got["gone"] == "absent"


def test_two_images_share_their_base_layer(platform, tmp_path, server_binary):
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    la, lb = layers_of(server_binary, "one"), layers_of(server_binary, "two")
    assert la[0] == lb[0] and la[1] != lb[1]
    oci_archive(a, la, image_config(**DEFAULT_CONFIG))
    oci_archive(b, lb, image_config(**DEFAULT_CONFIG))
    for name, archive in (("one", a), ("two", b)):
        r = push(platform, name, f"oci-archive:{archive}")
        assert r.returncode == 0, out(r) + platform.output()
    assert get_app(platform, "one.localhost")["greeting"] == "one"
    assert get_app(platform, "two.localhost")["greeting"] == "two"
    layers_dir = os.path.join(platform.home, "images", "layers", "sha256")
    blobs_dir = os.path.join(platform.home, "images", "blobs", "sha256")
    assert sorted(os.listdir(layers_dir)) == sorted({digest(x)[7:] for x in la + lb})  # base once

    # deleting one app collects what only it used; the shared base stays for the other
    r = platform.cli("delete", "one", "-f")
    assert r.returncode == 0, out(r)
    platform.wait_for(lambda: sorted(os.listdir(layers_dir)) == sorted(
        {digest(x)[7:] for x in lb}) and digest(la[1])[7:] not in os.listdir(blobs_dir), 60,
        "one's own layer and blob to be collected")
    assert digest(la[0])[7:] in os.listdir(blobs_dir)  # the shared base stays
    r = platform.cli("restart", "two")
    assert r.returncode == 0, out(r) + platform.output()
    platform.wait_for(lambda: get_app(platform, "two.localhost")["greeting"] == "two", 60,
                      "two to run again from its layers")

    # deleting the last one: nothing of either image is left
    r = platform.cli("delete", "two", "-f")
    assert r.returncode == 0, out(r)
    platform.wait_for(lambda: os.listdir(layers_dir) == [] and os.listdir(blobs_dir) == [], 60,
                      "every layer and blob to be collected")


def test_an_entrypoint_without_cmd_runs(platform, tmp_path, server_binary):
    archive = tmp_path / "web.tar"
    config = dict(DEFAULT_CONFIG, Cmd=None)
    oci_archive(archive, layers_of(server_binary), image_config(**config))
    r = push(platform, "cmd", f"oci-archive:{archive}")
    assert r.returncode == 0, out(r) + platform.output()
    assert get_app(platform, "cmd.localhost")["args"] == "none"


def test_hostile_layers_are_refused_naming_the_entry(platform, tmp_path, server_binary):
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = tar_bytes([("escape", ("symlink", str(outside))), ("escape/pwned", b"x")],
                     compress=True)
    archive = tmp_path / "evil.tar"
    oci_archive(archive, [layers_of(server_binary)[0], evil], image_config(**DEFAULT_CONFIG))
    r = push(platform, "evil", f"oci-archive:{archive}")
    assert r.returncode != 0
    text = r.stdout + r.stderr
    assert "escape/pwned" in text and "symbolic link" in text and digest(evil) in text, out(r)
    assert os.listdir(outside) == []

    dotdot = tar_bytes([("../../../../../../tmp/pwned-by-image", b"x")], compress=True)
    oci_archive(archive, [dotdot], image_config(**DEFAULT_CONFIG))
    r = push(platform, "evil", f"oci-archive:{archive}")
    assert r.returncode != 0 and "outside the layer" in r.stdout + r.stderr, out(r)
    assert not os.path.exists("/tmp/pwned-by-image")

    # a WorkingDir that climbs: the runtime makes it from outside the container
    climbing = dict(DEFAULT_CONFIG, WorkingDir=f"/../../../../..{tmp_path}/outside/made")
    oci_archive(archive, layers_of(server_binary), image_config(**climbing))
    r = push(platform, "evil", f"oci-archive:{archive}")
    assert r.returncode != 0 and "WorkingDir" in r.stdout + r.stderr, out(r)
    assert os.listdir(outside) == []


def test_damaged_and_unknown_images_say_what_is_wrong(platform, tmp_path, server_binary):
    layers = layers_of(server_binary)
    archive = tmp_path / "bad.tar"
    oci_archive(archive, layers, image_config(**DEFAULT_CONFIG))
    # a blob whose content is not its name's digest
    with tarfile.open(archive) as t:
        members = [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
    victim = "blobs/sha256/" + digest(layers[1])[7:]
    members = [(n, b"tampered" if n == victim else b) for n, b in members]
    with open(archive, "wb") as f:
        f.write(tar_bytes(members))
    r = push(platform, "bad", f"oci-archive:{archive}")
    assert r.returncode != 0 and "does not match its digest" in r.stdout + r.stderr, out(r)
    assert victim in r.stdout + r.stderr

    # a docker save tarball named as an OCI layout
    docker_archive(archive, layers, image_config(**DEFAULT_CONFIG))
    r = push(platform, "bad", f"oci-archive:{archive}")
    assert r.returncode != 0 and "docker-archive:" in r.stdout + r.stderr, out(r)

    r = push(platform, "bad", f"oci-archive:{tmp_path}/missing.tar")
    assert r.returncode != 0 and "missing.tar" in r.stderr, out(r)

    # a forged kind through the API
    status, body = platform.api("PUT", "/v1/apps/bad/bits?image=../../x", raw=b"x",
                                headers={"Content-Type": "application/octet-stream"})
    assert status == 400 and "oci-archive" in json.dumps(body), body


# ---- from a registry: Debian's docker-registry on loopback, images pushed with skopeo ----------

REGISTRY_CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
{auth}"""


def oci_layout(d, layers, config, tag="latest"):
    """Writes an OCI image layout folder (what skopeo reads as oci:DIR:TAG)."""
    os.makedirs(os.path.join(d, "blobs", "sha256"), exist_ok=True)
    archive = os.path.join(d, "..", os.path.basename(d) + ".tar")
    manifest_digest = oci_archive(archive, layers, config)
    with tarfile.open(archive) as t:
        t.extractall(d)
    with open(os.path.join(d, "index.json")) as f:
        index = json.load(f)
    index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] = tag
    with open(os.path.join(d, "index.json"), "w") as f:
        json.dump(index, f)
    return manifest_digest


class Registry:
    def __init__(self, root, users=None):
        from conftest import free_port, wait_for
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        os.makedirs(root)
        auth = ""
        if users:
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import crypt
            with open(os.path.join(root, "htpasswd"), "w") as f:
                for user, password in users.items():
                    salt = crypt.mksalt(crypt.METHOD_BLOWFISH)
                    f.write(f"{user}:{crypt.crypt(password, salt)}\n")
            auth = (f"auth:\n  htpasswd:\n    realm: skiff-test\n"
                    f"    path: {os.path.join(root, 'htpasswd')}\n")
        config = os.path.join(root, "config.yml")
        with open(config, "w") as f:
            f.write(REGISTRY_CONFIG.format(root=os.path.join(root, "data"), port=self.port,
                                           auth=auth))
        self.log = open(os.path.join(root, "registry.log"), "wb")
        self.proc = subprocess.Popen(["docker-registry", "serve", config], stdout=self.log,
                                     stderr=subprocess.STDOUT)

        def up():
            import urllib.error
            import urllib.request
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1)
                return True
            except urllib.error.HTTPError:
                return True  # 401: up, and asking for credentials
            except OSError:
                return False
        wait_for(up, 30, "docker-registry to answer")

    def push(self, layout, name, tag="latest", creds=None):
        args = ["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:latest",
                f"docker://{self.host}/{name}:{tag}"]
        if creds:
            args[2:2] = ["--dest-creds", creds]
        r = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
def registry(tmp_path, closing):
    return closing.add(Registry(str(tmp_path / "registry-open")))


@pytest.fixture
def private_registry(tmp_path, closing):
    return closing.add(Registry(str(tmp_path / "registry-private"), users={"alice": "s3cret"}))


def platform_for(registries):
    from conftest import Platform
    args = []
    for r in registries:
        args += ["--insecure-registry", r.host]
    return Platform(extra_args=args).start()


class Closing(list):
    """What a test starts (platforms, registries), closed after it, the last started first."""

    def add(self, thing):
        self.append(thing)
        return thing


@pytest.fixture
def closing():
    started = Closing()
    yield started
    for thing in reversed(started):
        thing.close()


def test_push_from_a_registry_by_tag_and_by_digest(registry, tmp_path, server_binary, closing):
    layout = str(tmp_path / "layout")
    oci_layout(layout, layers_of(server_binary, "from-registry"), image_config(**DEFAULT_CONFIG))
    registry.push(layout, "team/web", "1.0")
    p = closing.add(platform_for([registry]))

    r = push(p, "web", f"{registry.host}/team/web:1.0")
    assert r.returncode == 0, out(r) + p.output()
    assert "layer 1/2" in r.stdout and "pulled" in r.stdout, out(r)  # progress, like docker pull
    got = get_app(p, "web.localhost")
    assert got["greeting"] == "from-registry" and got["gone"] == "absent" and got["uid"] == "1000"

    # `skiff app` shows the image and the digest it runs
    digest_line = [x for x in r.stdout.splitlines() if "digest sha256:" in x]
    assert digest_line, out(r)
    image_digest = digest_line[-1].split("digest ")[-1].strip()
    app = p.cli("app", "web")
    assert app.returncode == 0, out(app)
    assert f"image:       {registry.host}/team/web:1.0" in app.stdout, out(app)
    assert f"digest:      {image_digest}" in app.stdout, out(app)

    # the digest pins it; the layers are stored already: nothing is pulled again
    r = push(p, "pinned", f"{registry.host}/team/web@{image_digest}")
    assert r.returncode == 0, out(r) + p.output()
    assert "already stored" in r.stdout and "pulled" not in r.stdout, out(r)
    assert get_app(p, "pinned.localhost")["greeting"] == "from-registry"

    # a restage follows the tag where it moved
    moved = str(tmp_path / "moved")
    oci_layout(moved, layers_of(server_binary, "moved-on"), image_config(**DEFAULT_CONFIG))
    registry.push(moved, "team/web", "1.0")
    r = p.cli("restage", "web", timeout=300)
    assert r.returncode == 0, out(r) + p.output()
    p.wait_for(lambda: get_app(p, "web.localhost")["greeting"] == "moved-on", 60,
               "the restaged image to answer")
    assert get_app(p, "pinned.localhost")["greeting"] == "from-registry"

    # errors that say what is wrong
    r = push(p, "nope", f"{registry.host}/team/web:2.0")
    assert r.returncode != 0 and "check the image's name and tag" in r.stdout + r.stderr, out(r)
    r = push(p, "nope", f"{registry.host}/team/web@sha256:" + "0" * 64)
    assert r.returncode != 0, out(r)
    r = push(p, "nope", "127.0.0.1:1/team/web:1.0")
    assert r.returncode != 0 and "cannot be reached" in r.stdout + r.stderr, out(r)
    r = push(p, "nope", "Not A Reference")
    assert r.returncode != 0 and "not an image reference" in r.stdout + r.stderr, out(r)


def test_a_registry_not_named_insecure_is_spoken_to_over_https(registry, tmp_path,
                                                                server_binary, closing):
    layout = str(tmp_path / "layout")
    oci_layout(layout, layers_of(server_binary), image_config(**DEFAULT_CONFIG))
    registry.push(layout, "web")
    p = platform_for([])
    closing.append(p)
    r = push(p, "web", f"{registry.host}/web")
    assert r.returncode != 0 and "cannot be reached" in r.stdout + r.stderr, out(r)


def test_a_private_registry_needs_the_right_credentials(private_registry, tmp_path,
                                                        server_binary, closing):
    layout = str(tmp_path / "layout")
    oci_layout(layout, layers_of(server_binary, "private"), image_config(**DEFAULT_CONFIG))
    private_registry.push(layout, "team/secret", creds="alice:s3cret")
    p = closing.add(platform_for([private_registry]))
    ref = f"{private_registry.host}/team/secret"

    r = push(p, "secret", ref)
    assert r.returncode != 0 and "401" in r.stdout + r.stderr, out(r)
    assert "CF_DOCKER_PASSWORD" in r.stdout + r.stderr, out(r)

    r = p.cli("push", "secret", "--docker-image", ref, "--docker-username", "alice")
    assert r.returncode != 0 and "CF_DOCKER_PASSWORD" in r.stderr, out(r)

    env = dict(p.env(), CF_DOCKER_PASSWORD="wrong")
    r = subprocess.run([os.path.join(BIN_DIR, "skiff"), "push",
                        "secret", "--docker-image", ref, "--docker-username", "alice"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "wrong username or password" in r.stdout + r.stderr, out(r)

    env["CF_DOCKER_PASSWORD"] = "s3cret"
    r = subprocess.run([os.path.join(BIN_DIR, "skiff"), "push",
                        "secret", "--docker-image", ref, "--docker-username", "alice"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, out(r) + p.output()
    assert get_app(p, "secret.localhost")["greeting"] == "private"


@pytest.mark.parametrize("link", ["home", "proc", "etc"])
def test_an_image_root_with_links_where_skiff_mounts_cannot_reach_out(platform, tmp_path,
                                                                      server_binary, link):
    # the image's /home (or /proc, /etc) leads to a folder of the host: Skiff must neither make
    # its mount points there nor mount over it, and the instance must not start
    outside = tmp_path / "outside"
    outside.mkdir()
    layers = layers_of(server_binary) + [
        tar_bytes([(link, ("symlink", str(outside)))], compress=True)]
    archive = tmp_path / "links.tar"
    oci_archive(archive, layers, image_config(**DEFAULT_CONFIG))
    r = push(platform, "links", f"oci-archive:{archive}", "-t", "15")
    assert r.returncode != 0, out(r)
    logs = platform.cli("logs", "links", "--recent").stdout
    assert f"the image's /{link}" in logs and "symbolic link" in logs, logs
    assert os.listdir(outside) == []


# ---- the token flow, platform indexes, redirects, a lying registry: a registry of our own -------

class RegistryHandler(http.server.BaseHTTPRequestHandler):
    """What the registries of our own answer with: send(status, body, headers), no log."""

    def log_message(self, *args):
        pass

    def send(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class OwnRegistry:
    """The servers of a registry of our own, each on a thread; host is the first one's."""

    def serve(self, handler, addresses=("127.0.0.1",)):
        """addresses: each an IP (any port) or (IP, port)."""
        self.servers = [http.server.ThreadingHTTPServer(a if isinstance(a, tuple) else (a, 0),
                                                        handler) for a in addresses]
        self.hosts = ["%s:%d" % s.server_address[:2] for s in self.servers]
        self.host = self.hosts[0]
        for s in self.servers:
            threading.Thread(target=s.serve_forever, daemon=True).start()

    def close(self):
        for s in self.servers:
            s.shutdown()
            s.server_close()


class TokenRegistry(OwnRegistry):
    """A registry as the Distribution spec has it, in a few lines: every /v2/ request needs a
    Bearer token, which its realm gives for alice's Basic credentials; blobs are redirected to
    a storage path (as registries on object stores do); `tamper` names a blob it serves wrong."""

    def __init__(self, blobs, tags):
        self.blobs, self.tags, self.tamper = blobs, tags, set()
        self.token_requests = 0
        registry = self

        class Handler(RegistryHandler):

            def do_GET(self):
                import base64
                port = self.server.server_address[1]
                if self.path.startswith("/token?"):
                    registry.token_requests += 1
                    good = "Basic " + base64.b64encode(b"alice:s3cret").decode()
                    if self.headers.get("Authorization") != good:
                        return self.send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
                    return self.send(200, b'{"token":"good-token"}')
                if self.path.startswith("/storage/"):
                    d = self.path[len("/storage/"):]
                    body = registry.blobs[d]
                    return self.send(200, b"tampered" if d in registry.tamper else body)
                if self.headers.get("Authorization") != "Bearer good-token":
                    challenge = (f'Bearer realm="http://127.0.0.1:{port}/token",'
                                 f'service="token-registry",scope="repository:app:pull"')
                    return self.send(401, b"{}", [("WWW-Authenticate", challenge)])
                parts = self.path.split("/")  # ['', 'v2', 'app', 'manifests', REF]
                if len(parts) != 5 or parts[1] != "v2" or parts[2] != "app":
                    return self.send(404)
                ref = registry.tags.get(parts[4], parts[4])
                if parts[3] == "manifests" and ref in registry.blobs:
                    doc = registry.blobs[ref]
                    kind = json.loads(doc).get("mediaType", "")
                    return self.send(200, doc, [("Content-Type", kind)])
                if parts[3] == "blobs" and ref in registry.blobs:
                    return self.send(307, b"", [("Location", f"/storage/{ref}")])
                return self.send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')

        self.serve(Handler)


def multi_platform_image(server):
    """An OCI index with an arm64 image (that must not be chosen) and an amd64 one."""
    blobs = {}

    def add(data):
        blobs[digest(data)] = data
        return digest(data)

    images = {}
    for arch, greeting in (("arm64", "wrong-platform"), ("amd64", "right-platform")):
        layers = layers_of(server, greeting)
        config = image_config(**DEFAULT_CONFIG)
        for x in layers + [config]:
            add(x)
        manifest = image_manifest(layers, config)
        images[arch] = (add(manifest), len(manifest), layers)
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": d, "size": n, "platform": {"os": "linux", "architecture": a}}
                      for a, (d, n, _) in images.items()]}).encode()
    return blobs, add(index), images


def test_a_token_registry_with_a_platform_index(tmp_path, server_binary, closing):
    blobs, index_digest, images = multi_platform_image(server_binary)
    reg = closing.add(TokenRegistry(blobs, {"v1": index_digest}))
    p = closing.add(platform_for([reg]))
    ref = f"{reg.host}/app:v1"
    r = push(p, "tok", ref)
    assert r.returncode != 0 and "401" in r.stdout + r.stderr, out(r)

    env = dict(p.env(), CF_DOCKER_PASSWORD="s3cret")
    r = subprocess.run([os.path.join(BIN_DIR, "skiff"), "push", "tok", "--docker-image", ref,
                        "--docker-username", "alice"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, out(r) + p.output()
    assert reg.token_requests >= 2
    assert get_app(p, "tok.localhost")["greeting"] == "right-platform"
    assert images["amd64"][0] in r.stdout  # the platform's manifest is the digest run

    # a registry that serves a layer that is not what its digest says
    layer = images["arm64"][2][1]
    reg.tamper.add(digest(layer))
    reg.tags["v2"] = images["arm64"][0]
    r = subprocess.run([os.path.join(BIN_DIR, "skiff"), "push", "liar", "--docker-image",
                        f"{reg.host}/app:v2", "--docker-username", "alice"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0, out(r)
    assert "does not match its digest" in r.stdout + r.stderr, out(r)
    assert digest(layer) in r.stdout + r.stderr, out(r)
    blob = os.path.join(p.home, "images", "blobs", "sha256", digest(layer)[7:])
    assert not os.path.exists(blob)  # nothing half-stored: no blob, no layer, nothing in tmp/
    assert not os.path.exists(os.path.join(p.home, "images", "layers", "sha256",
                                           digest(layer)[7:]))
    assert os.listdir(os.path.join(p.home, "images", "tmp")) == []


# ---- functions from images: the image serves the CloudEvents binary contract itself -------------

# Answers each CloudEvent (binary mode) with its attributes and data as JSON and logs one line
# per event; one request per connection.
FUNCTION_C = SERVE_C + r"""
#include <strings.h>

static void header(const char *req, const char *name, char *out, size_t n)
{
    out[0] = 0;
    for (const char *p = strstr(req, "\r\n"); p && p[2] != '\r'; p = strstr(p + 2, "\r\n")) {
        size_t len = strlen(name);
        if (!strncasecmp(p + 2, name, len) && p[2 + len] == ':') {
            const char *v = p + 3 + len;
            while (*v == ' ')
                v++;
            size_t k = strcspn(v, "\r");
            snprintf(out, n, "%.*s", (int)(k < n ? k : n - 1), v);
            return;
        }
    }
}

int main(void)
{
    int s = listen_on_port();
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0)
            continue;
        char req[16384];
        size_t got = 0;
        char *end = NULL;
        while (got < sizeof req - 1 && !end) {
            ssize_t n = read(c, req + got, sizeof req - 1 - got);
            if (n <= 0)
                break;
            got += (size_t)n;
            req[got] = 0;
            end = strstr(req, "\r\n\r\n");
        }
        if (!end) {
            close(c);
            continue;
        }
        char id[128], type[128], subject[128], length[32];
        header(req, "ce-id", id, sizeof id);
        header(req, "ce-type", type, sizeof type);
        header(req, "ce-subject", subject, sizeof subject);
        header(req, "content-length", length, sizeof length);
        size_t want = (size_t)atoi(length), have = got - (size_t)(end + 4 - req);
        while (have < want && got < sizeof req - 1) {
            ssize_t n = read(c, req + got, sizeof req - 1 - got);
            if (n <= 0)
                break;
            got += (size_t)n;
            have += (size_t)n;
        }
        req[got] = 0;
        char body[4096];
        int n = snprintf(body, sizeof body,
                         "{\"id\": \"%s\", \"type\": \"%s\", \"subject\": \"%s\", \"data\": %s, "
                         "\"uid\": %d}", id, type, subject, *(end + 4) ? end + 4 : "null",
                         (int)getuid());
        printf("image function got %s %s\n", type, subject);
        fflush(stdout);
        answer(c, "Content-Type: application/json\r\n", body, n);
    }
}
"""


@pytest.fixture(scope="module")
def function_archive(tmp_path_factory):
    d, fn = static_binary(tmp_path_factory, "fn", FUNCTION_C)
    layer = tar_bytes([("fn", ("dir",)), ("fn/server", fn)], compress=True)
    archive = d / "fn.tar"
    oci_archive(archive, [layer], image_config(Entrypoint=["/fn/server"], User="1000",
                                               ExposedPorts={"7000/tcp": {}}))
    return archive


def app_state(p, name):
    status, app = p.api("GET", f"/v1/apps/{name}")
    assert status == 200, app
    return app


def scaled_to_zero(p, name):
    app = app_state(p, name)
    return app["instances"] == 0 and app["instances_detail"] == []


def test_an_image_pushed_as_a_function_serves_events_from_zero(tmp_path, function_archive):
    from conftest import Platform
    p = Platform(extra_env={"SKIFF_FUNCTION_IDLE_GRACE": "2s"}).start()
    try:
        r = push(p, "imgfn", f"oci-archive:{function_archive}", "--function")
        assert r.returncode == 0, out(r) + p.output()
        assert app_state(p, "imgfn")["kind"] == "function"
        p.wait_for(lambda: scaled_to_zero(p, "imgfn"), 30, "the function to start at zero")

        # invoked directly: an instance starts from zero, on the image's port, as its user
        r = p.cli("invoke", "imgfn", "--type", "img.direct", "--subject", "cat.png", '{"n": 1}',
                  timeout=120)
        assert r.returncode == 0, out(r) + p.output()
        got = json.loads(r.stdout)
        assert got["type"] == "img.direct" and got["subject"] == "cat.png", got
        assert got["data"] == {"n": 1} and got["uid"] == 1000 and got["id"], got
        assert all(i["address"].endswith(":7000")
                   for i in app_state(p, "imgfn")["instances_detail"])
        p.wait_for(lambda: scaled_to_zero(p, "imgfn"), 30, "scale to zero when idle")

        # an event mapping: a published event wakes it and is delivered
        r = p.cli("map-event", "imgfn", "uploads", "--idle-grace", "2s")
        assert r.returncode == 0, out(r)
        r = p.cli("emit", "uploads", "--type", "img.uploaded", "--subject", "dog.png", '{"n": 2}')
        assert r.returncode == 0, out(r)
        p.wait_for(lambda: "image function got img.uploaded dog.png"
                   in p.cli("logs", "imgfn", "--recent").stdout, 60, "the event to be delivered")
        logs = p.cli("logs", "imgfn", "--recent").stdout
        assert "[APP/FUNC/IMGFN/" in logs, logs

        def delivered():
            r = p.cli("event-mappings", "--json", "imgfn")
            m = json.loads(r.stdout)["event_mappings"] if r.returncode == 0 else []
            return len(m) == 1 and m[0]["delivered"] == 1 and m[0]["failed"] == 0
        p.wait_for(delivered, 30, "the mapping to count one delivery")
        p.wait_for(lambda: scaled_to_zero(p, "imgfn"), 30, "scale to zero again")
    finally:
        p.close()


def test_a_manifest_function_from_an_image(platform, tmp_path, function_archive):
    manifest = tmp_path / "manifest.yml"
    manifest.write_text(f"functions:\n- name: mfimg\n  docker:\n"
                        f"    image: oci-archive:{function_archive}\n"
                        f"  events:\n  - topic: mf-topic\n")
    r = platform.cli("push", "-f", str(manifest), timeout=300)
    assert r.returncode == 0, out(r) + platform.output()
    r = platform.cli("emit", "mf-topic", "--type", "mf.new", "--subject", "x", "{}")
    assert r.returncode == 0, out(r)
    platform.wait_for(lambda: "image function got mf.new x"
                      in platform.cli("logs", "mfimg", "--recent").stdout, 60,
                      "the manifest's mapping to deliver to the image")


def test_image_function_mistakes_are_refused(platform, tmp_path, function_archive):
    # a handler names code of Skiff's function buildpacks: an image has none
    r = platform.cli("push", "x", "--docker-image", f"oci-archive:{function_archive}",
                     "--function", "f.py:handle")
    assert r.returncode == 2 and "serves the function itself" in r.stderr, out(r)
    r = platform.cli("push", "x", "--function")
    assert r.returncode == 2 and "FILE:HANDLER" in r.stderr, out(r)
    for body, says in (
            (f"functions:\n- name: both\n  handler: f.py:handle\n  docker:\n"
             f"    image: oci-archive:{function_archive}\n", "both a \"handler\" and"),
            (f"applications:\n- name: app\n  functions:\n  - name: inner\n    docker:\n"
             f"      image: oci-archive:{function_archive}\n", "belongs to a top-level")):
        manifest = tmp_path / "manifest.yml"
        manifest.write_text(body)
        r = platform.cli("push", "-f", str(manifest))
        assert r.returncode != 0 and says in r.stderr, out(r)


# ---- User by name -------------------------------------------------------------------------------

# What `skiff ssh` runs is /bin/sh -c COMMAND: this "shell" says who it runs as, and where.
WHOAMI_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(void)
{
    char cwd[256];
    printf("ssh-uid=%d ssh-gid=%d ssh-cwd=%s\n", (int)getuid(), (int)getgid(),
           getcwd(cwd, sizeof cwd) ? cwd : "?");
    return 0;
}
"""


@pytest.fixture(scope="module")
def whoami_binary(tmp_path_factory):
    return static_binary(tmp_path_factory, "whoami", WHOAMI_C)[1]


def named_user_image(path, server, whoami, user, accounts=None):
    passwd, group = accounts or (b"root:x:0:0:root:/root:/bin/sh\nweb:x:1001:1002::/srv:/bin/sh\n",
                                 b"root:x:0:\nstaff:x:50:web\nweb:x:1002:\n")
    base = tar_bytes([("etc", ("dir",)), ("etc/passwd", passwd), ("etc/group", group),
                      ("bin", ("dir",)), ("bin/sh", whoami)], compress=True)
    layers = [base] + layers_of(server, "named")
    oci_archive(path, layers, image_config(**dict(DEFAULT_CONFIG, User=user)))


def test_a_user_by_name_runs_as_the_image_says_and_ssh_too(platform, tmp_path, server_binary,
                                                           whoami_binary):
    archive = tmp_path / "named.tar"
    named_user_image(archive, server_binary, whoami_binary, "web:staff")
    r = push(platform, "named", f"oci-archive:{archive}")
    assert r.returncode == 0, out(r) + platform.output()
    got = get_app(platform, "named.localhost")
    assert (got["uid"], got["gid"]) == ("1001", "50"), got

    # a session in the instance is the program's user, not vcap, and starts where the program
    # does: the image's WorkingDir, not /home/vcap/app
    r = platform.cli("ssh", "named", "-c", "id", timeout=60)
    assert r.returncode == 0, out(r)
    assert "ssh-uid=1001 ssh-gid=50 ssh-cwd=/srv/work" in r.stdout, out(r)


@pytest.mark.parametrize("user,says", [
    ("nobody", "\"nobody\" is not in its /etc/passwd"),
    ("web:wheel", "\"wheel\", which is not in its /etc/group"),
])
def test_an_unknown_user_name_is_a_staging_error(platform, tmp_path, server_binary,
                                                 whoami_binary, user, says):
    archive = tmp_path / "unknown.tar"
    named_user_image(archive, server_binary, whoami_binary, user)
    r = push(platform, "unknown", f"oci-archive:{archive}")
    assert r.returncode != 0 and says in r.stdout + r.stderr, out(r)


def test_user_files_are_not_read_through_a_link(platform, tmp_path, server_binary):
    # /etc/passwd a link to the host's: never read, the push fails saying why
    base = tar_bytes([("etc", ("dir",)), ("etc/passwd", ("symlink", "/etc/passwd"))],
                     compress=True)
    archive = tmp_path / "link.tar"
    oci_archive(archive, [base] + layers_of(server_binary),
                image_config(**dict(DEFAULT_CONFIG, User="root")))
    r = push(platform, "link", f"oci-archive:{archive}")
    assert r.returncode != 0 and "/etc/passwd is a symbolic link" in r.stdout + r.stderr, out(r)


# ---- pull progress, the image size limit, hostile registries ------------------------------------

class HostileRegistry(OwnRegistry):
    """An anonymous registry serving one image (app:v1), able to misbehave: `slow` serves the
    big layer in 64 KiB pieces 50 ms apart; `endless` is "manifest" or "blob" (that document
    never ends); with `token` every /v2/ request needs a Bearer token from a realm on another
    host, 127.0.0.2 (which records what it was sent), and blobs are redirected to storage
    there. at: (IP, port) to listen on instead of loopback (no token then)."""

    def __init__(self, blobs, manifest, token=False, at=None):
        self.blobs, self.manifest = blobs, manifest
        self.slow, self.endless = set(), None
        self.token_auth, self.storage_auth = [], []
        registry = self

        class Handler(RegistryHandler):

            def endless_body(self, content_type):
                import time as _t
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.end_headers()  # no length: it ends when the connection does
                chunk = b"{" * 65536
                deadline = _t.monotonic() + 120
                try:
                    while _t.monotonic() < deadline:
                        self.wfile.write(chunk)
                except OSError:
                    pass  # the client hung up: what it should do

            def do_GET(self):
                import time as _t
                if self.path.startswith("/token"):
                    registry.token_auth.append(self.headers.get("Authorization"))
                    return self.send(200, b'{"token":"t0ken"}')
                if self.path.startswith("/storage/"):
                    registry.storage_auth.append(self.headers.get("Authorization"))
                    return self.serve_blob(self.path[len("/storage/"):])
                token_host = registry.token_host
                if token_host and self.headers.get("Authorization") != "Bearer t0ken":
                    challenge = (f'Bearer realm="http://{token_host}/token",'
                                 f'service="hostile",scope="repository:app:pull"')
                    return self.send(401, b"{}", [("WWW-Authenticate", challenge)])
                parts = self.path.split("/")
                if len(parts) != 5 or parts[1] != "v2" or parts[2] != "app":
                    return self.send(404)
                if parts[3] == "manifests":
                    if registry.endless == "manifest":
                        return self.endless_body("application/vnd.oci.image.manifest.v1+json")
                    return self.send(200, registry.manifest,
                                     [("Content-Type",
                                       "application/vnd.oci.image.manifest.v1+json")])
                if parts[3] == "blobs" and token_host:
                    return self.send(307, b"", [("Location",
                                                 f"http://{token_host}/storage/{parts[4]}")])
                if parts[3] == "blobs":
                    return self.serve_blob(parts[4])
                return self.send(404)

            def serve_blob(self, d):
                import time as _t
                if registry.endless == "blob" and d in registry.slow:
                    return self.endless_body("application/octet-stream")
                body = registry.blobs.get(d)
                if body is None:
                    return self.send(404)
                if d not in registry.slow:
                    return self.send(200, body)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for i in range(0, len(body), 65536):
                    self.wfile.write(body[i:i + 65536])
                    self.wfile.flush()
                    _t.sleep(0.05)

        self.serve(Handler, (at,) if at else ("127.0.0.1", "127.0.0.2") if token else ("127.0.0.1",))
        self.token_host = self.hosts[1] if token else None


def big_layer_image(server, megabytes=3):
    """The server image with a third layer of `megabytes` of incompressible bytes."""
    big = tar_bytes([("srv/noise", os.urandom(megabytes << 20))], compress=True)
    layers = layers_of(server, "big") + [big]
    config = image_config(**DEFAULT_CONFIG)
    blobs = {digest(x): x for x in layers + [config]}
    return blobs, image_manifest(layers, config), digest(big)


def test_pull_progress_in_bytes_at_most_once_a_second(tmp_path, server_binary, closing):
    blobs, manifest, big = big_layer_image(server_binary)
    reg = closing.add(HostileRegistry(blobs, manifest))
    reg.slow.add(big)  # ~48 pieces, 50 ms apart: ~2.4 s
    p = closing.add(platform_for([reg]))
    started = time.monotonic()
    r = push(p, "slow", f"{reg.host}/app:v1")
    took = time.monotonic() - started
    assert r.returncode == 0, out(r) + p.output()
    lines = [x for x in r.stdout.splitlines() if f"layer 3/3 {big[:19]}: " in x and " of " in x]
    # told while it came (it took over 2 s), in bytes of its size, but not once per piece
    # (48 of them): at most a line a second
    assert 1 <= len(lines) <= int(took) + 1, (took, out(r))
    assert all(x.rstrip().endswith(" of 3.0 MB") for x in lines), lines
    assert f"layer 3/3 {big[:19]}: pulled" in r.stdout, out(r)


@pytest.mark.parametrize("endless", ["manifest", "blob"])
def test_an_endless_document_is_cut_at_its_limit(tmp_path, server_binary, closing, endless):
    from conftest import Platform
    blobs, manifest, big = big_layer_image(server_binary, 1)
    reg = closing.add(HostileRegistry(blobs, manifest))
    reg.endless = endless
    reg.slow.add(big)
    p = Platform(extra_args=["--insecure-registry", reg.host,
                             "--max-image-size", "8M"]).start()
    closing.append(p)
    r = push(p, "endless", f"{reg.host}/app:v1")
    assert r.returncode != 0, out(r)
    said = r.stdout + r.stderr
    if endless == "manifest":
        assert "manifest" in said and "larger than the limit" in said, out(r)
    else:
        assert "larger than the limit of 8 MB" in said and "--max-image-size" in said, out(r)
    # nothing of it is kept, and skiffd still serves
    assert os.listdir(os.path.join(p.home, "images", "tmp")) == []
    assert p.cli("apps").returncode == 0


def test_an_image_over_the_limit_is_refused(tmp_path, server_binary, closing):
    from conftest import Platform
    blobs, manifest, big = big_layer_image(server_binary, 3)
    reg = closing.add(HostileRegistry(blobs, manifest))
    p = Platform(extra_args=["--insecure-registry", reg.host,
                             "--max-image-size", "2M"]).start()
    closing.append(p)
    r = push(p, "large", f"{reg.host}/app:v1")
    assert r.returncode != 0, out(r)
    assert "larger than the limit of 2 MB" in r.stdout + r.stderr, out(r)
    # a tarball too
    archive = tmp_path / "large.tar"
    layers = [blobs[x["digest"]] for x in json.loads(manifest)["layers"]]
    oci_archive(archive, layers, image_config(**DEFAULT_CONFIG))
    r = push(p, "large", f"oci-archive:{archive}")
    assert r.returncode != 0 and "over the limit of 2 MB" in r.stdout + r.stderr, out(r)


def test_a_layer_bomb_stops_at_the_limit(tmp_path, server_binary, closing):
    from conftest import Platform
    p = Platform(extra_args=["--max-image-size", "16M"]).start()
    closing.append(p)
    bomb = tar_bytes([("srv/zeros", bytes(256 << 20))], compress=True)  # 256 MB in ~250 kB
    assert len(bomb) < (1 << 20)
    archive = tmp_path / "bomb.tar"
    oci_archive(archive, layers_of(server_binary) + [bomb], image_config(**DEFAULT_CONFIG))
    r = push(p, "bomb", f"oci-archive:{archive}")
    assert r.returncode != 0, out(r)
    assert "unpacks to more than the limit of 16 MB" in r.stdout + r.stderr, out(r)
    assert digest(bomb)[7:] not in os.listdir(os.path.join(p.home, "images", "layers", "sha256"))


def test_credentials_go_only_where_the_registry_sends_them(tmp_path, server_binary, closing):
    """The realm the registry's challenge names is its token service, on whatever host: it gets
    the credentials (as Docker sends them). Storage a blob is redirected to is not the registry:
    it gets neither the credentials nor the token."""
    import base64
    blobs, manifest, big = big_layer_image(server_binary, 1)
    reg = closing.add(HostileRegistry(blobs, manifest, token=True))
    p = closing.add(platform_for([reg]))
    env = dict(p.env(), CF_DOCKER_PASSWORD="s3cret")
    r = subprocess.run([os.path.join(BIN_DIR, "skiff"), "push", "tok", "--docker-image",
                        f"{reg.host}/app:v1", "--docker-username", "alice"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, out(r) + p.output()
    basic = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert reg.token_auth and set(reg.token_auth) == {basic}, reg.token_auth
    assert reg.storage_auth and set(reg.storage_auth) == {None}, reg.storage_auth


def test_what_a_killed_skiffd_left_is_collected_at_start(tmp_path):
    from conftest import Platform
    home = tmp_path / "home"
    orphan = "ab" * 32
    for folder in ("layers", "blobs"):
        os.makedirs(home / "images" / folder / "sha256", exist_ok=True)
    os.makedirs(home / "images" / "layers" / "sha256" / orphan / "srv")
    (home / "images" / "blobs" / "sha256" / orphan).write_bytes(b"left by a pull")
    p = Platform(home=str(home)).start()
    try:
        p.wait_for(lambda: os.listdir(home / "images" / "layers" / "sha256") == [] and
                   os.listdir(home / "images" / "blobs" / "sha256") == [], 30,
                   "the orphans to be collected")
    finally:
        p.close()


@pytest.mark.parametrize("size", ["12", "4X", "-1G", ""])
def test_a_max_image_size_that_is_no_size_is_refused(tmp_path, size):
    r = subprocess.run([os.path.join(BIN_DIR, "skiffd"), "--home", str(tmp_path),
                        "--max-image-size", size], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--max-image-size" in r.stderr and "512M or 4G" in r.stderr, \
        out(r)
