"""Packages and droplets as content-addressed blobs (src/blobs): two skiffds on one PostgreSQL
store with separate homes run what was staged through either, with the stager's droplet files
removed (so nothing is read from a shared path); GET /v1/blobs/DIGEST is for the platform admin
and a cell's own token for what was placed on it; on the embedded store blobs are files under the home."""
import glob
import hashlib
import http.client
import os
import shutil
import time

from conftest import WEB_APP, tar_gz, wait_for
from controllers import (needs_postgres, pair, pg_dir, psql, running_here,  # noqa: F401
                         serves)

pytestmark = needs_postgres


# SQL run before a write to PostgreSQL so that its change feed's triggers do not fire: the
# write is like another writer's whose notification has not arrived yet
UNANNOUNCED = "SET session_replication_role = replica; "


def stage_stopped(p, name):
    """An app made, uploaded and staged through p, not started."""
    status, body = p.api("PUT", f"/v1/apps/{name}", {"instances": 1})
    assert status in (200, 201), body
    status, body = p.api("PUT", f"/v1/apps/{name}/bits",
                         raw=tar_gz([("Procfile", b"web: python3 app.py\n"), ("app.py", WEB_APP)]),
                         headers={"Content-Type": "application/octet-stream"})
    assert status == 201, body
    assert body["digest"].startswith("sha256:"), body
    status, text = p.api("POST", f"/v1/apps/{name}/stage")
    assert status == 200 and '"ok":true' in text.replace(" ", ""), text
    status, body = p.api("POST", "/v1/routes", {"app": name, "host": f"{name}.localhost"})
    assert status in (200, 201), body


def droplet_row(pg_dir, name):
    row = psql(pg_dir, "SELECT d.path, d.digest FROM droplets d JOIN apps a ON "
                       f"a.droplet_guid = d.guid WHERE a.name = '{name}'").strip()
    path, digest = row.split("|")
    return path, digest


def get_raw(p, path, token):
    """GET with the path sent as it is (no client normalisation); (status, body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", p.api_port, timeout=30)
    headers = {"Authorization": "Bearer " + token} if token else {}
    c.request("GET", path, headers=headers)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def test_staged_through_the_follower_runs_on_the_leader_from_the_blob_store(pair, pg_dir):
    a, b = pair
    stage_stopped(b, "blobby")
    path, digest = droplet_row(pg_dir, "blobby")
    assert path.startswith(b.home), path
    # the package and the droplet are in the database, not as files in either home
    assert psql(pg_dir, f"SELECT count(*) FROM blobs WHERE digest = '{digest}'").strip() == "1"
    pkg = psql(pg_dir, "SELECT p.digest FROM packages p JOIN apps a ON a.package_guid = p.guid"
                       " WHERE a.name = 'blobby'").strip()
    assert psql(pg_dir, f"SELECT count(*) FROM blobs WHERE digest = '{pkg}'").strip() == "1"
    assert not glob.glob(os.path.join(a.home, "blobs", "sha256", "*"))
    assert not glob.glob(os.path.join(b.home, "blobs", "sha256", "*"))
    # what the follower staged is gone from its home: nothing can be read at that path
    shutil.rmtree(os.path.join(b.home, "apps"))
    assert b.api("POST", "/v1/apps/blobby/start")[0] == 200
    wait_for(lambda: running_here(a, "blobby"), 60,
             "the leader to run the app from the droplet's blob")
    wait_for(lambda: serves(a, "blobby"), 20, "the app through the leader's router")
    cached = os.path.join(a.home, "blobs", "droplets", digest[len("sha256:"):])
    assert os.path.isfile(os.path.join(cached, "app", "app.py")), os.listdir(a.home)
    status, logs = a.api("GET", "/v1/apps/blobby/logs")
    assert status == 200 and "Fetching droplet" in logs and digest in logs, logs
    assert running_here(b, "blobby") == []


def test_the_blob_endpoint_is_for_the_admin_and_cells_only(pair, pg_dir):
    a, b = pair
    stage_stopped(a, "perm")
    _, digest = droplet_row(pg_dir, "perm")
    absent = "sha256:" + "0" * 64
    # the admin: the blob streamed whole, and it is what its name says, from either skiffd
    for p in (a, b):
        status, body = get_raw(p, f"/v1/blobs/{digest}", p.token)
        assert status == 200, body[:200]
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
        assert get_raw(p, f"/v1/blobs/{absent}", p.token)[0] == 404
    # a cell's own token: made through one controller, the store keeps its hash, so every
    # controller accepts it; shown once, kept in no controller's home
    cell_id = "c" * 32
    status, made = a.api("POST", "/v1/cell_tokens", {"cell": cell_id})
    assert status == 201, made
    cell = made["token"]
    assert cell.startswith("skiffc_" + cell_id) and len(cell) == 7 + 32 + 64, made
    assert not os.path.exists(os.path.join(a.home, "cell-token"))
    assert psql(pg_dir, "SELECT count(*) FROM documents WHERE body LIKE '%%%s%%'" % cell).strip() \
        == "0"
    # nothing was placed on that cell: every blob is refused, there or not, alike
    for p in (a, b):
        there = get_raw(p, f"/v1/blobs/{digest}", cell)
        missing = get_raw(p, f"/v1/blobs/{absent}", cell)
        assert there[0] == missing[0] == 403, (there, missing)
        assert b"was not asked to start" in there[1], there
    # the leader's grant (what it writes as it sends the cell a start): that blob, from either,
    # at once: written here with the change feed's triggers off (no news ever comes), as a
    # grant the leader wrote a moment ago is to a controller its news has not reached yet,
    # which reads the database before it refuses
    psql(pg_dir, UNANNOUNCED + "INSERT INTO documents VALUES ('cell.grants', '%s/%s',"
         " '{\"until\": %d}', 0)" % (cell_id, digest, (time.time() + 600) * 1000))
    for p in (a, b):
        status, body = get_raw(p, f"/v1/blobs/{digest}", cell)
        assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == digest
        assert get_raw(p, f"/v1/blobs/{absent}", cell)[0] == 403
        # and nothing else
        status, body = get_raw(p, "/v1/apps", cell)
        assert status == 403, body
        assert b"blobby" not in body and b"perm" not in body
        assert get_raw(p, f"/v1/blobs/{digest}", cell[:-1] + "x")[0] == 401
        assert get_raw(p, f"/v1/blobs/{digest}", None)[0] == 401
        # another cell's id with this secret: not that cell's token
        assert get_raw(p, f"/v1/blobs/{digest}", "skiffc_" + "d" * 32 + cell[39:])[0] == 401
    # a droplet's grant covers the blobs it lists (an image's config and layers): the package's
    # blob stands for a layer here; another cell's token reads neither, and a blob the droplet
    # does not list is refused with the same answer whether it exists or not
    pkg = psql(pg_dir, "SELECT p.digest FROM packages p JOIN apps a ON a.guid = p.app_guid"
               " WHERE a.name = 'perm'").strip()
    assert pkg.startswith("sha256:") and pkg != digest, pkg
    other_id = "d" * 32
    status, made = a.api("POST", "/v1/cell_tokens", {"cell": other_id})
    assert status == 201, made
    other = made["token"]
    for p in (a, b):
        assert get_raw(p, f"/v1/blobs/{pkg}", cell)[0] == 403
    psql(pg_dir, UNANNOUNCED + "UPDATE documents SET body = '{\"until\": %d, \"blobs\":"
         " [\"%s\"]}' WHERE kind = 'cell.grants'" % ((time.time() + 600) * 1000, pkg))
    for p in (a, b):
        status, body = get_raw(p, f"/v1/blobs/{pkg}", cell)
        assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == pkg
        assert get_raw(p, f"/v1/blobs/{digest}", cell)[0] == 200
        for blob in (digest, pkg):
            refused = get_raw(p, f"/v1/blobs/{blob}", other)
            assert refused[0] == 403, refused
        there = get_raw(p, f"/v1/blobs/{pkg}", other)
        missing = get_raw(p, f"/v1/blobs/{absent}", other)
        assert there[1].replace(pkg.encode(), b"X") == missing[1].replace(absent.encode(), b"X")
        unlisted = get_raw(p, f"/v1/blobs/{absent}", cell)
        assert unlisted[0] == 403, unlisted
    assert a.api("DELETE", f"/v1/cell_tokens/{other_id}")[0] == 204
    # an ended grant is no grant: refused once the change feed told (a grant taken back is
    # refused by a controller when its news arrives, ms; one given is seen at once)
    psql(pg_dir, "UPDATE documents SET body = '{\"until\": 1}' WHERE kind = 'cell.grants'")
    wait_for(lambda: get_raw(b, f"/v1/blobs/{digest}", cell)[0] == 403, 10,
             "the ended grant refused")
    psql(pg_dir, "INSERT INTO documents VALUES ('cell.grants', '%s/%s', '{\"until\": %d}', 0) "
         "ON CONFLICT (kind, id) DO UPDATE SET body = EXCLUDED.body"
         % (cell_id, digest, (time.time() + 600) * 1000))
    assert get_raw(b, f"/v1/blobs/{digest}", cell)[0] == 200
    # rotated through b: the old token is refused by a once the change feed told it (a
    # notification, ms), the new one works on both
    status, again = b.api("POST", "/v1/cell_tokens", {"cell": cell_id})
    assert status == 201 and again["replaced"] is True, again
    wait_for(lambda: get_raw(a, f"/v1/blobs/{digest}", cell)[0] == 401, 10,
             "the rotated token refused through the other controller")
    for p in (a, b):
        assert get_raw(p, f"/v1/blobs/{digest}", again["token"])[0] == 200
    status, listed = a.api("GET", "/v1/cell_tokens")
    assert status == 200 and [t["cell"] for t in listed["cell_tokens"]] == [cell_id], listed
    # deleted through a: refused by a at once, by b once told, its grants gone with it
    assert a.api("DELETE", f"/v1/cell_tokens/{cell_id}")[0] == 204
    assert get_raw(a, f"/v1/blobs/{digest}", again["token"])[0] == 401
    wait_for(lambda: get_raw(b, f"/v1/blobs/{digest}", again["token"])[0] == 401, 10,
             "the deleted token refused through the other controller")
    assert psql(pg_dir, "SELECT count(*) FROM documents WHERE kind = 'cell.grants'").strip() == "0"
    assert a.api("DELETE", f"/v1/cell_tokens/{cell_id}")[0] == 404
    # what is not a cell's id names no cell
    for bad in ("C" * 32, "c" * 31, "../" + "c" * 29, "", 5):
        status, body = a.api("POST", "/v1/cell_tokens", {"cell": bad})
        assert status == 422 and "32 lowercase hex" in body["error"]["message"], (bad, body)
    assert a.api("POST", "/v1/cell_tokens", {"cell": cell_id, "admin": True})[0] == 400
    # a tenant: refused alike whether the blob exists or not (nothing about it leaks)
    admin = a.token
    assert a.api("POST", "/v1/users", {"name": "dev1", "password": "correct horse battery"},
                 token=admin)[0] == 201
    assert a.api("PUT", "/v1/orgs/default/spaces/dev/users/dev1/roles/SpaceDeveloper",
                 token=admin)[0] == 204
    status, tok = a.api("POST", "/v1/auth/token", {"grant_type": "password", "username": "dev1",
                                                   "password": "correct horse battery"},
                        token=False)
    assert status == 200, tok
    there = get_raw(a, f"/v1/blobs/{digest}", tok["access_token"])
    missing = get_raw(a, f"/v1/blobs/{absent}", tok["access_token"])
    assert there[0] == missing[0] == 403, (there, missing)
    assert there[1] == missing[1], (there, missing)
    # nor may a tenant make, list or delete a cell's token
    dev = tok["access_token"]
    assert a.api("POST", "/v1/cell_tokens", {"cell": "e" * 32}, token=dev)[0] == 403
    assert a.api("GET", "/v1/cell_tokens", token=dev)[0] == 403
    assert a.api("DELETE", "/v1/cell_tokens/" + "e" * 32, token=dev)[0] == 403
    # what is not a digest names nothing: 400 before anything is looked up
    for bad in ("sha256:" + digest[7:].upper(), digest[:-1], digest + "0", "sha512:" + digest[7:],
                "sha256:..%2F..%2F..%2Fetc%2Fpasswd" + "0" * 40, "sha256:..", digest[7:]):
        status, body = get_raw(a, f"/v1/blobs/{bad}", admin)
        assert status == 400, (bad, status, body)
    status, body = get_raw(a, "/v1/blobs/../../etc/passwd", admin)
    assert status in (400, 404), body
    assert b"root:" not in body


def test_on_the_embedded_store_blobs_are_files_in_the_home(platform):
    status, body = platform.api("PUT", "/v1/apps/local", {"instances": 1})
    assert status in (200, 201), body
    status, body = platform.api(
        "PUT", "/v1/apps/local/bits",
        raw=tar_gz([("Procfile", b"web: python3 app.py\n"), ("app.py", WEB_APP)]),
        headers={"Content-Type": "application/octet-stream"})
    assert status == 201, body
    pkg = body["digest"]
    blob = os.path.join(platform.home, "blobs", "sha256", pkg[len("sha256:"):])
    with open(blob, "rb") as f:
        assert "sha256:" + hashlib.sha256(f.read()).hexdigest() == pkg
    status, text = platform.api("POST", "/v1/apps/local/stage")
    assert status == 200 and '"ok":true' in text.replace(" ", ""), text
    # the droplet too: two blobs, both whole
    files = glob.glob(os.path.join(platform.home, "blobs", "sha256", "*"))
    assert len(files) == 2, files
    for path in files:
        with open(path, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == os.path.basename(path)
        status, body = get_raw(platform, "/v1/blobs/sha256:" + os.path.basename(path),
                               platform.token)
        assert status == 200 and hashlib.sha256(body).hexdigest() == os.path.basename(path)
    assert not glob.glob(os.path.join(platform.home, "blobs", "tmp", "*"))


def test_bits_uploaded_through_one_skiffd_are_staged_through_the_other(pair, pg_dir):
    a, b = pair
    status, body = b.api("PUT", "/v1/apps/carried", {"instances": 1})
    assert status in (200, 201), body
    status, body = b.api("PUT", "/v1/apps/carried/bits",
                         raw=tar_gz([("Procfile", b"web: python3 app.py\n"), ("app.py", WEB_APP)]),
                         headers={"Content-Type": "application/octet-stream"})
    assert status == 201, body
    digest = body["digest"]
    shutil.rmtree(os.path.join(b.home, "apps"))  # the upload is gone from b's home
    status, text = a.api("POST", "/v1/apps/carried/stage")
    assert status == 200 and '"ok":true' in text.replace(" ", ""), text
    assert f"Fetching the package ({digest}) from the blob store" in text, text
    fetched = os.path.join(a.home, "blobs", "packages", digest[len("sha256:"):])
    with open(fetched, "rb") as f:
        assert "sha256:" + hashlib.sha256(f.read()).hexdigest() == digest
    # a package whose blob is gone: the staging says so and what to do
    psql(pg_dir, f"DELETE FROM blobs WHERE digest = '{digest}'")
    os.unlink(fetched)
    status, text = b.api("POST", "/v1/apps/carried/stage")
    assert status == 200 and '"ok":false' in text.replace(" ", ""), text
    assert "could not be fetched from the blob store" in text and "upload it again" in text, text


def test_a_droplet_blob_changed_in_the_database_is_refused_and_nothing_is_cached(pair, pg_dir):
    a, b = pair
    stage_stopped(b, "forged")
    _, digest = droplet_row(pg_dir, "forged")
    shutil.rmtree(os.path.join(b.home, "apps"))
    # someone with write access to the database swaps the droplet's first chunk
    psql(pg_dir, "UPDATE blob_chunks SET data = 'not the droplet'::bytea WHERE seq = 0 AND "
                 f"blob_id = (SELECT id FROM blobs WHERE digest = '{digest}')")
    assert b.api("POST", "/v1/apps/forged/start")[0] == 200
    wait_for(lambda: "has the content of" in a.output(), 30,
             "the leader to refuse the droplet whose content is not its digest's")
    assert f"blob {digest} read from the database" in a.output(), a.output()
    droplets = os.path.join(a.home, "blobs", "droplets")
    assert not os.path.exists(os.path.join(droplets, digest[len("sha256:"):]))
    assert not os.path.exists(droplets) or not [
        n for n in os.listdir(droplets) if digest[len("sha256:"):] in n]
    assert not glob.glob(os.path.join(a.home, "blobs", "tmp", "*"))
    assert running_here(a, "forged") == []


def stage_through(up, st, name, tag):
    """An app made and uploaded through `up`, staged through `st`, with a route; not started.
    tag makes its bits (and so its package and droplet) its own."""
    status, body = up.api("PUT", f"/v1/apps/{name}", {"instances": 1})
    assert status in (200, 201), body
    app_py = WEB_APP + f"\n# {tag}\n".encode()
    status, body = up.api("PUT", f"/v1/apps/{name}/bits",
                          raw=tar_gz([("Procfile", b"web: python3 app.py\n"), ("app.py", app_py)]),
                          headers={"Content-Type": "application/octet-stream"})
    assert status == 201, body
    pkg = body["digest"]
    status, app = up.api("GET", f"/v1/apps/{name}")
    assert status == 200, app
    shutil.rmtree(os.path.join(up.home, "apps", app["guid"]))  # staged from the blob store
    status, text = st.api("POST", f"/v1/apps/{name}/stage")
    assert status == 200 and '"ok":true' in text.replace(" ", ""), text
    status, body = st.api("POST", "/v1/routes", {"app": name, "host": f"{name}.localhost"})
    assert status in (200, 201), body
    return pkg


def test_what_was_brought_here_goes_when_nothing_names_it(pair, pg_dir):
    a, b = pair
    # uploaded through the leader, staged through the follower (which fetches the package),
    # run by the leader (which materialises the droplet): two apps, each its own blobs
    cached = {}
    for name in ("gone", "stays"):
        pkg = stage_through(a, b, name, name)
        _, drop = droplet_row(pg_dir, name)
        cached[name] = (os.path.join(b.home, "blobs", "packages", pkg[len("sha256:"):]),
                        os.path.join(a.home, "blobs", "droplets", drop[len("sha256:"):]))
        assert os.path.isfile(cached[name][0]), os.listdir(os.path.dirname(cached[name][0]))
        guid = psql(pg_dir, f"SELECT guid FROM apps WHERE name = '{name}'").strip()
        shutil.rmtree(os.path.join(b.home, "apps", guid))  # run from the blob, not b's files
        assert b.api("POST", f"/v1/apps/{name}/start")[0] == 200
        wait_for(lambda: running_here(a, name), 60, f"the leader to run {name} from its blob")
        assert os.path.isdir(cached[name][1])
    # deleted through the follower: the follower's fetched package goes (its own delete), and
    # the leader's materialised droplet goes once its instance has stopped (a delete elsewhere)
    assert b.api("DELETE", "/v1/apps/gone")[0] in (200, 204)
    wait_for(lambda: not os.path.exists(cached["gone"][0]), 30,
             "the follower to remove the package it fetched for the deleted app")
    wait_for(lambda: not os.path.exists(cached["gone"][1]), 30,
             "the leader to remove the droplet it materialised for the deleted app")
    # what the other app still names, and runs from, stays (the same collections looked at
    # it), and it still serves
    assert os.path.isfile(cached["stays"][0])
    assert os.path.isfile(os.path.join(cached["stays"][1], "app", "app.py"))
    wait_for(lambda: serves(a, "stays"), 20, "the other app through the leader's router")


def test_a_trimmed_droplet_is_removed_only_from_its_apps_droplets_here(platform, tmp_path):
    """Revisions past the newest five take their droplets with them; the path the store records
    for one is removed only when it resolves into this skiffd's HOME/apps/APP/droplets."""
    p, name = platform, "trimmed"
    status, body = p.api("PUT", f"/v1/apps/{name}", {"instances": 1})
    assert status in (200, 201), body
    status, body = p.api("PUT", f"/v1/apps/{name}/bits",
                         raw=tar_gz([("Procfile", b"web: python3 app.py\n"), ("app.py", WEB_APP)]),
                         headers={"Content-Type": "application/octet-stream"})
    assert status == 201, body

    def stage():
        status, text = p.api("POST", f"/v1/apps/{name}/restage")
        assert status == 200 and '"ok":true' in text.replace(" ", ""), text

    for _ in range(3):
        stage()
    status, body = p.api("GET", f"/v1/apps/{name}/revisions")
    assert status == 200, body
    first = [r["droplet"] for r in reversed(body["revisions"])]
    assert len(first) == 3 and len(set(first)) == 3, body
    guid = p.api("GET", f"/v1/apps/{name}")[1]["guid"]
    droplets = os.path.join(p.home, "apps", guid, "droplets")
    # what the store names could be anything: a folder outside the home, a path through ".."
    # out of the app's droplets, and a droplet folder replaced by a link to one outside
    victims = [tmp_path / "outside", tmp_path / "linked", os.path.join(p.home, "not-a-droplet")]
    for v in victims:
        os.makedirs(v)
        with open(os.path.join(v, "precious"), "w") as f:
            f.write("keep me")
    p.stop()
    import sqlite3
    db = sqlite3.connect(os.path.join(p.home, "skiff.db"))
    for drop, path in ((first[0], str(victims[0])),
                       (first[1], os.path.join(droplets, "..", "..", "..", "not-a-droplet"))):
        assert db.execute("UPDATE droplets SET path = ? WHERE guid = ?",
                          (path, drop)).rowcount == 1
    db.commit()
    db.close()
    shutil.rmtree(os.path.join(droplets, first[2]))
    os.symlink(victims[1], os.path.join(droplets, first[2]))
    p.start()
    for _ in range(5):  # revisions 4 to 8: 1 to 3 are trimmed
        stage()
    status, body = p.api("GET", f"/v1/apps/{name}/revisions")
    assert [r["version"] for r in body["revisions"]] == [8, 7, 6, 5, 4], body
    for v in victims:
        with open(os.path.join(v, "precious")) as f:
            assert f.read() == "keep me", v
    assert not os.path.lexists(os.path.join(droplets, first[2]))  # the link, not its target
    # the folders the store no longer named stay (what it named instead was not removed)
    assert set(os.listdir(droplets)) == {r["droplet"] for r in body["revisions"]} | \
        {first[0], first[1]}
    assert "it is not in" in p.output() and "so it is left where it is" in p.output()
