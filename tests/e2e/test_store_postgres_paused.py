"""skiffd on a PostgreSQL store that stops answering (its server SIGSTOPped): the API keeps
answering what it serves from memory, the writes made meanwhile (heartbeats) wait in the
store's queue off the event loop and land once the server answers again, and SIGTERM ends
skiffd within a bounded time even while the server is still silent."""
import contextlib
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from conftest import (WEB_APP, Platform, deploy_bits, postgres_server_pids, stop_processes,
                      throwaway_postgres)
from controllers import cells, leader_and_follower, psql


@pytest.fixture
def pg_dir():
    with throwaway_postgres() as d:
        yield d


def pause(pids):
    stop_processes(pids)


def resume(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def heartbeat_at(url):
    """The heartbeat skiffd last wrote, read from the database itself (0: none)."""
    out = subprocess.run(["psql", "-At", url, "-c",
                          "SELECT body FROM documents WHERE kind = 'cell'"],
                         capture_output=True, text=True, timeout=30).stdout.strip()
    return max((json.loads(l)["heartbeat_at_ms"] for l in out.splitlines()), default=0)


def queued_writes(p):
    """The writes skiffd has queued for its store and not finished (GET /metrics)."""
    status, text = p.api("GET", "/metrics")
    assert status == 200, text
    line = next(ln for ln in text.splitlines() if ln.startswith("skiff_store_queued_writes "))
    return int(line.split()[1])


def timed(call):
    t0 = time.monotonic()
    got = call()
    return got, time.monotonic() - t0


def test_a_silent_server_neither_stalls_the_api_nor_holds_up_the_exit(pg_dir):
    url = f"postgresql:///postgres?host={pg_dir}&user=postgres"
    p = Platform(extra_args=["--store", url],
                 extra_env={"SKIFF_CELL_HEARTBEAT_MS": "200"}).start()
    pids = []
    try:
        status, body = p.api("POST", "/v1/apps", {"name": "paused-app"})
        assert status == 201, body
        status, listed = p.api("GET", "/v1/apps")
        assert status == 200, listed
        p.wait_for(lambda: heartbeat_at(url) > 0, timeout=10, what="a first heartbeat")

        pids = postgres_server_pids(pg_dir)
        pause(pids)
        paused_at = time.time() * 1000
        # 3 s: heartbeats (every 200 ms) and the once-a-second catch-up of users and tokens
        # come due many times meanwhile; each answer is bounded
        slowest = 0.0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            info, took = timed(p.info)
            assert info, info
            slowest = max(slowest, took)
            (status, listed), took = timed(lambda: p.api("GET", "/v1/apps"))
            assert status == 200, listed
            assert "paused-app" in [a["name"] for a in listed["apps"]], listed
            slowest = max(slowest, took)
        assert slowest < 1.0, f"an answer took {slowest:.2f} s while the server was paused"
        assert queued_writes(p) > 0  # the heartbeats of those 3 s wait
        resume(pids)
        # the heartbeats queued meanwhile land (and the next ones after them)
        p.wait_for(lambda: heartbeat_at(url) > paused_at, timeout=15,
                   what="the heartbeats queued while paused to land")
        p.wait_for(lambda: queued_writes(p) == 0, timeout=15, what="the store's queue to empty")
        assert "lost a queued write" not in p.output(), p.output()

        # paused again, then SIGTERM: skiffd gives up the queue after its bound and exits
        pause(pids)
        p.wait_for(lambda: queued_writes(p) > 0, timeout=10,
                   what="a heartbeat to queue behind the silent server")
        t0 = time.monotonic()
        p.proc.send_signal(signal.SIGTERM)
        try:
            p.proc.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError("skiffd did not exit within 30 s of SIGTERM while its store "
                                 "was silent:\n" + p.output())
        took = time.monotonic() - t0
        assert took < 20, f"skiffd took {took:.1f} s to exit"
        out = p.output()
        assert "lost a queued write" in out, out
        assert "Sanitizer" not in out and "runtime error" not in out, out
    finally:
        resume(pids)
        p.close()


@contextlib.contextmanager
def skiffd_on(pg_dir, *args, env=None):
    """A skiffd on the throwaway server, started: (it, the store's URL). The server is
    continued and skiffd closed at the end, whatever happened."""
    url = f"postgresql:///postgres?host={pg_dir}&user=postgres"
    p = Platform(extra_args=["--store", url, *args], extra_env=env).start()
    try:
        yield p, url
    finally:
        resume(postgres_server_pids(pg_dir))
        p.close()


def app_field(p, name, field):
    status, app = p.api("GET", f"/v1/apps/{name}")
    assert status == 200, app
    return app[field]


def writes_while_paused(p, pids, calls, seen_in, queued_at_least=0):
    """Stops the server (pids), sends calls, each (key, method, path, body) from a thread of
    its own, and reads through the API for 3 s: GET /v1/info and what seen_in(get) reads with
    get(path) -> (status, body) are each answered within 1 s, and seen_in says the queued
    changes are read back at least once, while no call is answered (and at least
    queued_at_least writes wait). Then continues the server and returns the answers, once
    every call was answered (or gave up after 30 s)."""
    pause(pids)
    answers = {}

    def call(key, method, path, body=None):
        answers[key] = timed(lambda: p.api(method, path, body))

    threads = [threading.Thread(target=call, args=c) for c in calls]
    for t in threads:
        t.start()
    slowest = 0.0

    def get(path):
        nonlocal slowest
        answer, took = timed(lambda: p.api("GET", path))
        slowest = max(slowest, took)
        return answer

    seen = False
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            info, took = timed(p.info)
        except OSError as e:  # its 2 s timeout
            raise AssertionError(f"GET /v1/info while the server was paused: {e}")
        assert info, info
        slowest = max(slowest, took)
        seen = seen_in(get) or seen
    assert slowest < 1.0, f"an answer took {slowest:.2f} s while the server was paused"
    assert seen, "the queued writes were not read back while the server was paused"
    assert answers == {}, f"answered before their writes were made: {answers}"
    assert queued_writes(p) >= queued_at_least, queued_writes(p)
    resume(pids)
    for t in threads:
        t.join(30)
    return answers


def test_a_scale_and_a_start_wait_for_the_silent_server_and_the_api_does_not(pg_dir):
    """A scale (PATCH instances), a pushed app's start and a task made while the server is
    stopped: each request waits for its write, which the store's writer makes once the server
    answers again; the other API calls are answered meanwhile, and already show both
    changes."""
    with skiffd_on(pg_dir) as (p, url):
        files = [("Procfile", b"web: python3 app.py\n"), ("app.py", WEB_APP)]
        deploy_bits(p, "scaled", files, {"instances": 1, "memory_mb": 32})
        deploy_bits(p, "pushed", files, {"instances": 1, "memory_mb": 32})
        assert p.api("POST", "/v1/apps/pushed/stop")[0] == 200
        p.wait_for(lambda: app_field(p, "scaled", "running") == 1, timeout=60,
                   what="the first instance of scaled")
        p.wait_for(lambda: app_field(p, "pushed", "running") == 0, timeout=30,
                   what="pushed to stop")

        pids = postgres_server_pids(pg_dir)

        def seen_in(get):
            status, listed = get("/v1/apps")
            assert status == 200, listed
            apps = {a["name"]: a for a in listed["apps"]}
            status, tasks = get("/v1/apps/scaled/tasks")
            assert status == 200, tasks
            return (apps["scaled"]["instances"] == 3 and apps["pushed"]["state"] == "STARTED"
                    and [t["name"] for t in tasks["tasks"]] == ["paused"])

        answers = writes_while_paused(
            p, pids, [("scale", "PATCH", "/v1/apps/scaled", {"instances": 3}),
                      ("start", "POST", "/v1/apps/pushed/start"),
                      ("task", "POST", "/v1/apps/scaled/tasks",
                       {"command": "true", "name": "paused"})], seen_in)
        assert answers["scale"][0][0] == 200, answers
        assert answers["start"][0][0] == 200, answers
        assert answers["task"][0][0] == 202, answers
        p.wait_for(lambda: app_field(p, "scaled", "running") == 3, timeout=60,
                   what="three instances of scaled")
        p.wait_for(lambda: app_field(p, "pushed", "running") == 1, timeout=60,
                   what="pushed to run again")
        out = p.output()
        assert "was not stored" not in out and "lost a queued write" not in out, out
        assert "Sanitizer" not in out and "runtime error" not in out, out


def db_rows(url, sql):
    """What the database itself holds (psql), one row a line."""
    r = subprocess.run(["psql", "-At", url, "-c", sql], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_a_map_route_and_an_app_delete_wait_for_the_silent_server_and_the_api_does_not(pg_dir):
    """A route mapped, another unmapped and an app deleted while the server is stopped: each
    request waits for its write, which the store's writer makes once the server answers again;
    the other API calls are answered meanwhile, and already show the routes as mapped and
    unmapped and the app gone (with its route)."""
    with skiffd_on(pg_dir) as (p, url):
        for name in ("mapped", "doomed"):
            status, body = p.api("POST", "/v1/apps", {"name": name})
            assert status == 201, body
        status, routes = p.api("GET", "/v1/routes")
        assert status == 200, routes

        pids = postgres_server_pids(pg_dir)

        def seen_in(get):
            status, listed = get("/v1/apps")
            assert status == 200, listed
            status, routes = get("/v1/routes")
            assert status == 200, routes
            # 404 once its deletion is queued, without asking the server
            doomed_status, doomed = get("/v1/apps/doomed")
            assert doomed_status in (200, 404), doomed
            names = {a["name"] for a in listed["apps"]}
            hosts = {(r["host"], r["app"]) for r in routes["routes"]}
            return (names == {"mapped"} and hosts == {("extra.localhost", "mapped")} and
                    doomed_status == 404)

        answers = writes_while_paused(
            p, pids, [("map", "POST", "/v1/routes", {"app": "mapped", "host": "extra.localhost"}),
                      ("delete", "DELETE", "/v1/apps/doomed"),
                      ("unmap", "DELETE", "/v1/routes?app=mapped&host=mapped.localhost")],
            seen_in, queued_at_least=3)
        assert answers["map"][0][0] == 201, answers
        assert answers["delete"][0][0] == 204, answers
        assert answers["unmap"][0][0] == 204, answers
        p.wait_for(lambda: queued_writes(p) == 0, timeout=15, what="the store's queue to empty")
        assert db_rows(url, "SELECT name FROM apps ORDER BY name") == ["mapped"]
        assert db_rows(url, "SELECT host FROM routes") == ["extra.localhost"]
        out = p.output()
        assert "lost a queued write" not in out, out
        assert "Sanitizer" not in out and "runtime error" not in out, out


def test_a_push_staged_while_the_server_is_stopped_waits_only_for_its_writes(pg_dir):
    """A pushed app staged again while the server is stopped: the package its push uploaded
    through this skiffd is read from memory, so the buildpack runs and its lines reach the
    app's log meanwhile; the stage's answer waits for its writes (the droplet's blob, row and
    the app's record of it, queued off the event loop), the other API calls are answered
    meanwhile, and the stage ends with its droplet recorded once the server answers."""
    with skiffd_on(pg_dir) as (p, url):
        r = p.cli("push", "site", "-p", "examples/static", "--no-route", "--no-start")
        assert r.returncode == 0, (r.stdout, r.stderr)
        before = db_rows(url, "SELECT droplet_guid FROM apps WHERE name = 'site'")
        assert len(before) == 1, before

        pids = postgres_server_pids(pg_dir)

        def seen_in(get):
            status, listed = get("/v1/apps")
            assert status == 200, listed
            assert "site" in [a["name"] for a in listed["apps"]], listed
            status, log = get("/v1/apps/site/logs")
            assert status == 200, log
            # the stage began and its buildpack ran, though the server does not answer
            return "Restaging app site" in log and "Serving" in log.split("Restaging")[-1]

        answers = writes_while_paused(
            p, pids, [("stage", "POST", "/v1/apps/site/restage")], seen_in)
        (status, text), _ = answers["stage"]
        assert status == 200, text
        last = json.loads(text.strip().splitlines()[-1])
        assert last["done"] and last["ok"], text
        p.wait_for(lambda: queued_writes(p) == 0, timeout=15, what="the store's queue to empty")
        assert db_rows(url, "SELECT droplet_guid FROM apps WHERE name = 'site'") == \
            [last["droplet"]]
        assert last["droplet"] in db_rows(url, "SELECT guid FROM droplets"), text
        assert before != [last["droplet"]]
        out = p.output()
        assert "lost a queued write" not in out, out
        assert "Sanitizer" not in out and "runtime error" not in out, out


def test_a_stage_past_the_queue_bound_is_refused_at_once_naming_the_cause(pg_dir):
    """With --store-queue-max 50 and the server stopped, heartbeats fill the store's queue; a
    stage whose package must be read from the server (a skiffd started since the upload) is
    then refused at once with 503 saying the database is not answering and how many writes
    wait, rather than waiting; once the server answers it stages."""
    url = f"postgresql:///postgres?host={pg_dir}&user=postgres"
    p = Platform(extra_args=["--store", url, "--store-queue-max", "50"],
                 extra_env={"SKIFF_CELL_HEARTBEAT_MS": "100"}).start()
    pids = []
    try:
        r = p.cli("push", "site", "-p", "examples/static", "--no-route", "--no-start")
        assert r.returncode == 0, (r.stdout, r.stderr)
        p.stop()
        p.start()  # knows the package only from the database now
        status, listed = p.api("GET", "/v1/apps")
        assert status == 200 and [a["name"] for a in listed["apps"]] == ["site"], listed

        pids = postgres_server_pids(pg_dir)
        pause(pids)
        p.wait_for(lambda: queued_writes(p) >= 50, timeout=30,
                   what="heartbeats to fill the store's queue")
        (status, body), took = timed(lambda: p.api("POST", "/v1/apps/site/restage"))
        assert status == 503, body
        assert took < 1.0, f"the refusal took {took:.2f} s"
        assert "the database is not answering; 50 writes wait" in body["error"]["message"], body
        info, took = timed(p.info)
        assert info and took < 1.0, took

        resume(pids)
        p.wait_for(lambda: queued_writes(p) == 0, timeout=15, what="the store's queue to empty")
        status, text = p.api("POST", "/v1/apps/site/restage")
        assert status == 200 and '"ok":true' in text.replace(" ", ""), text
        out = p.output()
        assert "writes wait for the database, which is not answering" in out, out
        assert "Sanitizer" not in out and "runtime error" not in out, out
    finally:
        resume(pids)
        p.close()


def test_a_queue_bound_below_the_first_starts_writes_does_not_stop_the_start(pg_dir):
    """skiffd's first start on a new store queues a burst of writes (the admin user, its
    roles, the built-in brokers) before it serves anyone. --store-queue-max 1 is far below that
    burst: those writes wait for room instead of being refused, so skiffd starts and serves,
    and starts again on the same store."""
    url = f"postgresql:///postgres?host={pg_dir}&user=postgres"
    p = Platform(extra_args=["--store", url, "--store-queue-max", "1"]).start()
    try:
        status, users = p.api("GET", "/v1/users")
        assert status == 200 and "admin" in [u["name"] for u in users["users"]], users
        p.stop()
        p.start()
        status, users = p.api("GET", "/v1/users")
        assert status == 200 and "admin" in [u["name"] for u in users["users"]], users
        out = p.output()
        assert "cannot load users and roles" not in out, out
        assert "Sanitizer" not in out and "runtime error" not in out, out
    finally:
        p.close()


def test_domains_certificates_mappings_and_the_audit_list_wait_for_the_silent_server(pg_dir):
    """A domain made, a domain's certificate set, an event mapping made and another deleted,
    and the audit events listed while the server is stopped: each request waits for its write
    (or its read, made after the writes queued before it), which the store's writer makes once
    the server answers again; the other API calls are answered meanwhile, the deleted mapping
    is already gone from the list, and GET /v1/domains (from the store's copy of the
    certificates' chains, read once before) already shows the new domain and the new
    certificate, never a key."""
    from test_tls import CA
    with skiffd_on(pg_dir) as (p, url):
        status, body = p.api("POST", "/v1/apps", {"name": "mapped"})
        assert status == 201, body
        status, body = p.api("POST", "/v1/domains", {"name": "certified.test"})
        assert status == 201, body
        status, old = p.api("POST", "/v1/event-mappings", {"app": "mapped", "topic": "old"})
        assert status == 201, old
        cert, key = CA(os.path.join(p.home, "paused-ca")).issue("certified.test",
                                                                ["certified.test"])
        with open(cert) as c, open(key) as k:
            cert_pair = {"cert": c.read(), "key": k.read()}
        status, listed = p.api("GET", "/v1/event-mappings")
        assert status == 200 and [m["id"] for m in listed["event_mappings"]] == [old["id"]]
        status, domains = p.api("GET", "/v1/domains")  # the chains read: the copy from now
        assert status == 200, domains

        pids = postgres_server_pids(pg_dir)

        def seen_in(get):
            status, listed = get("/v1/event-mappings")
            assert status == 200, listed
            status, metrics = get("/metrics")
            assert status == 200, metrics
            queued = next(int(ln.split()[1]) for ln in metrics.splitlines()
                          if ln.startswith("skiff_store_queued_writes "))
            status, domains = get("/v1/domains")
            assert status == 200, domains
            assert "PRIVATE KEY" not in json.dumps(domains), domains
            by_name = {d["name"]: d for d in domains["domains"]}
            shown = by_name.get("certified.test", {}).get("certificate", {})
            # the unmapped one stops at once; the writes (and the audit read) wait
            return (listed["event_mappings"] == [] and queued >= 5 and "paused.test" in by_name
                    and shown.get("subject", "").endswith("certified.test"))

        answers = writes_while_paused(
            p, pids, [("domain", "POST", "/v1/domains", {"name": "paused.test"}),
                      ("cert", "PUT", "/v1/domains/certified.test/certificate", cert_pair),
                      ("map", "POST", "/v1/event-mappings",
                       {"app": "mapped", "topic": "new", "id": "made-while-paused"}),
                      ("unmap", "DELETE", f"/v1/event-mappings/{old['id']}"),
                      ("audit", "GET", "/v1/admin/audit_events")], seen_in)
        assert answers["domain"][0][0] == 201, answers
        assert answers["cert"][0][0] == 200, answers
        assert answers["cert"][0][1]["certificate"]["subject"].endswith("certified.test"), answers
        assert answers["map"][0][0] == 201, answers
        assert answers["map"][0][1]["id"] == "made-while-paused", answers
        assert answers["unmap"][0][0] == 204, answers
        assert answers["audit"][0][0] == 200, answers
        status, listed = p.api("GET", "/v1/event-mappings")
        assert [m["id"] for m in listed["event_mappings"]] == ["made-while-paused"], listed
        status, domains = p.api("GET", "/v1/domains")
        assert status == 200, domains
        by_name = {d["name"]: d for d in domains["domains"]}
        assert "paused.test" in by_name, domains
        assert by_name["certified.test"]["certificate"]["subject"].endswith("certified.test")
        # the certificates come from a read of their chains: never a key in an answer
        for answer in (answers["cert"][0][1], domains):
            shown = json.dumps(answer)
            assert "PRIVATE KEY" not in shown and cert_pair["key"] not in shown
        p.wait_for(lambda: queued_writes(p) == 0, timeout=15, what="the store's queue to empty")
        assert "paused.test" in db_rows(url, "SELECT name FROM domains")
        assert db_rows(url, "SELECT domain FROM domain_certs") == ["certified.test"]
        assert db_rows(url, "SELECT id FROM documents WHERE kind = 'event_mapping'") == \
            ["made-while-paused"]
        out = p.output()
        assert "lost a queued write" not in out, out
        assert "Sanitizer" not in out and "runtime error" not in out, out


def test_a_login_a_refresh_a_role_and_a_label_wait_for_the_silent_server_and_the_api_does_not(
        pg_dir):
    """A login, a token refresh, a role given and a label set while the server is stopped:
    each request waits for its writes (the session's tokens, the used refresh token's
    deletion, the role's record, the app's metadata), which the store's writer makes once the
    server answers again; the other API calls are answered meanwhile, and already show the
    role and the label."""
    with skiffd_on(pg_dir) as (p, url):
        status, body = p.api("POST", "/v1/users", {"name": "dev1",
                                                   "password": "correct horse battery"})
        assert status == 201, body
        status, first = p.api("POST", "/v1/auth/token", {
            "grant_type": "password", "username": "dev1", "password": "correct horse battery"},
            token=False)
        assert status == 200, first
        status, body = p.api("POST", "/v1/apps", {"name": "labelled"})
        assert status == 201, body
        status, meta = p.api("GET", "/v1/apps/labelled/metadata")
        assert status == 200 and meta["labels"] == {}, meta

        pids = postgres_server_pids(pg_dir)

        def seen_in(get):
            status, meta = get("/v1/apps/labelled/metadata")
            assert status == 200, meta
            status, users = get("/v1/orgs/default/spaces/dev/users")
            assert status == 200, users
            return (meta["labels"] == {"tier": "paused"} and
                    "SpaceAuditor" in json.dumps(users))

        answers = writes_while_paused(
            p, pids, [("login", "POST", "/v1/auth/token",
                       {"grant_type": "password", "username": "dev1",
                        "password": "correct horse battery"}),
                      ("refresh", "POST", "/v1/auth/token",
                       {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}),
                      ("role", "PUT", "/v1/orgs/default/spaces/dev/users/dev1/roles/SpaceAuditor"),
                      ("label", "PATCH", "/v1/apps/labelled/metadata",
                       {"labels": {"tier": "paused"}})],
            seen_in, queued_at_least=3)
        assert answers["login"][0][0] == 200, answers
        assert answers["refresh"][0][0] == 200, answers
        assert answers["role"][0][0] == 204, answers
        assert answers["label"][0][0] == 200, answers
        assert answers["label"][0][1]["labels"] == {"tier": "paused"}, answers
        # the tokens the login and the refresh gave work, and the used refresh token is spent
        for key in ("login", "refresh"):
            token = answers[key][0][1]["access_token"]
            status, me = p.api("GET", "/v1/auth/me", token=token)
            assert status == 200 and me["user"]["name"] == "dev1", me
        status, again = p.api("POST", "/v1/auth/token", {
            "grant_type": "refresh_token", "refresh_token": first["refresh_token"]}, token=False)
        assert status == 401, again
        p.wait_for(lambda: queued_writes(p) == 0, timeout=15, what="the store's queue to empty")
        assert db_rows(url, "SELECT body FROM documents WHERE kind = 'metadata.app'") != []
        assert any("SpaceAuditor" in r for r in
                   db_rows(url, "SELECT id FROM documents WHERE kind = 'auth.role'"))
        out = p.output()
        assert "lost a queued write" not in out, out
        assert "Sanitizer" not in out and "runtime error" not in out, out


def test_a_leader_that_lost_its_lead_to_the_silent_server_shows_what_it_holds(pg_dir):
    """A lone leader whose server stops answering stops leading after 3 s and holds what it
    ran: GET /v1/apps/NAME of a running app and of a stopped one (which has no instance of
    its own to show, and no instance record to read) and GET /v1/cells are answered from
    memory meanwhile."""
    with skiffd_on(pg_dir) as (p, url):
        files = [("Procfile", b"web: python3 app.py\n"), ("app.py", WEB_APP)]
        deploy_bits(p, "held", files, {"instances": 1, "memory_mb": 32})
        deploy_bits(p, "idle", files, {"instances": 1, "memory_mb": 32})
        assert p.api("POST", "/v1/apps/idle/stop")[0] == 200
        p.wait_for(lambda: app_field(p, "held", "running") == 1, timeout=60,
                   what="the instance of held")
        p.wait_for(lambda: app_field(p, "idle", "running") == 0, timeout=30,
                   what="idle to stop")
        pids = postgres_server_pids(pg_dir)
        pause(pids)
        try:
            p.wait_for(lambda: "stopped leading" in p.output(), timeout=15,
                       what="skiffd to stop leading")
            for name, running in (("held", 1), ("idle", 0), ("held", 1), ("idle", 0)):
                (status, app), took = timed(lambda: p.api("GET", f"/v1/apps/{name}"))
                assert status == 200, app
                assert took < 1.0, f"GET /v1/apps/{name} took {took:.2f} s"
                assert app["running"] == running, app
            (status, listed), took = timed(lambda: p.api("GET", "/v1/cells"))
            assert status == 200 and len(listed["cells"]) == 1, listed
            assert took < 1.0, f"GET /v1/cells took {took:.2f} s"
        finally:
            resume(pids)
        p.wait_for(lambda: "this skiffd leads" in p.output().split("stopped leading")[-1],
                   timeout=30, what="skiffd to lead again")
        assert app_field(p, "held", "running") == 1


def test_env_autoscale_ssh_and_a_rollback_wait_for_the_silent_server_and_the_api_does_not(pg_dir):
    """An environment set, an autoscaling policy set, ssh turned off and a rollback sent while
    the server is stopped: each request waits for its writes (the app's, and the rollback's
    revision record after it), which the store's writer makes once the server answers again;
    the other API calls are answered meanwhile, and already show the app writes."""
    with skiffd_on(pg_dir) as (p, url):
        status, body = p.api("POST", "/v1/apps", {"name": "tuned"})
        assert status == 201, body
        files = [("Procfile", b"web: python3 app.py\n"), ("app.py", WEB_APP)]
        for _ in range(2):  # two stagings: revisions 1 and 2
            deploy_bits(p, "kept", files, {"instances": 1, "memory_mb": 32})
        assert p.api("POST", "/v1/apps/kept/stop")[0] == 200
        status, body = p.api("GET", "/v1/apps/kept/revisions")
        assert status == 200, body
        revs = {r["version"]: r["droplet"] for r in body["revisions"]}
        assert sorted(revs) == [1, 2] and revs[1] != revs[2], body
        assert app_field(p, "kept", "droplet") == revs[2]
        status, body = p.api("GET", "/v1/apps/tuned/ssh_enabled")
        assert status == 200 and body["app_enabled"] is True, body

        pids = postgres_server_pids(pg_dir)

        def seen_in(get):
            status, env = get("/v1/apps/tuned/env")
            assert status == 200, env
            status, policy = get("/v1/apps/tuned/autoscale")
            assert status == 200, policy
            status, ssh = get("/v1/apps/tuned/ssh_enabled")
            assert status == 200, ssh
            status, kept = get("/v1/apps/kept")
            assert status == 200, kept
            return (env["env"].get("FLAVOUR") == "paused" and policy["policy"] and
                    policy["policy"]["max_instances"] == 4 and ssh["app_enabled"] is False and
                    kept["droplet"] == revs[1])

        answers = writes_while_paused(
            p, pids, [("env", "PUT", "/v1/apps/tuned/env", {"FLAVOUR": "paused"}),
                      ("autoscale", "PUT", "/v1/apps/tuned/autoscale",
                       {"min_instances": 0, "max_instances": 4, "target_concurrency": 10}),
                      ("ssh", "PATCH", "/v1/apps/tuned/features/ssh", {"enabled": False}),
                      ("rollback", "POST", "/v1/apps/kept/rollback", {"revision": 1})],
            seen_in, queued_at_least=4)
        assert answers["env"][0][0] == 200, answers
        assert answers["env"][0][1]["env"]["FLAVOUR"] == "paused", answers
        assert answers["autoscale"][0][0] == 200, answers
        assert answers["autoscale"][0][1]["policy"]["max_instances"] == 4, answers
        assert answers["ssh"][0][0] == 200, answers
        assert answers["ssh"][0][1]["enabled"] is False, answers
        assert answers["rollback"][0][0] == 200, answers
        assert answers["rollback"][0][1]["droplet"] == revs[1], answers
        p.wait_for(lambda: queued_writes(p) == 0, timeout=15, what="the store's queue to empty")
        # the rollback's revision was recorded before its answer
        status, body = p.api("GET", "/v1/apps/kept/revisions")
        assert status == 200, body
        assert [(r["version"], r["description"], r["droplet"]) for r in body["revisions"]][0] == \
            (3, "rollback to revision 1", revs[1]), body
        # as the database itself holds them
        assert db_rows(url, "SELECT e.value FROM env_vars e JOIN apps a ON a.guid = e.app_guid "
                            "WHERE a.name = 'tuned' AND e.name = 'FLAVOUR'") == ["paused"]
        assert db_rows(url, "SELECT ssh_disabled FROM apps WHERE name = 'tuned'") == ["1"]
        assert db_rows(url, "SELECT droplet_guid FROM apps WHERE name = 'kept'") == [revs[1]]
        out = p.output()
        assert "lost a queued write" not in out and "not recorded" not in out, out
        assert "Sanitizer" not in out and "runtime error" not in out, out


def test_a_lookup_of_an_app_the_copy_lacks_waits_for_the_silent_server_and_the_api_does_not(
        pg_dir):
    """An app name skiffd's copy does not hold (none, or one another skiffd made a moment
    ago) is read from the database off the loop: a GET of an unknown app and a create of a new
    name, sent while the server is stopped, wait for that read; the other API calls are
    answered meanwhile, and the two are answered (404, 201) once the server answers again."""
    with skiffd_on(pg_dir) as (p, url):
        status, body = p.api("POST", "/v1/apps", {"name": "known"})
        assert status == 201, body
        pids = postgres_server_pids(pg_dir)

        def seen_in(get):
            status, listed = get("/v1/apps")
            assert status == 200, listed
            status, known = get("/v1/apps/known/ssh_enabled")  # a lookup the copy answers
            assert status == 200, known
            return [a["name"] for a in listed["apps"]] == ["known"]

        answers = writes_while_paused(
            p, pids, [("ghost", "GET", "/v1/apps/ghost"),
                      ("create", "POST", "/v1/apps", {"name": "fresh"})], seen_in)
        assert answers["ghost"][0][0] == 404, answers
        assert "no app named" in answers["ghost"][0][1]["error"]["message"], answers
        assert answers["create"][0][0] == 201, answers
        p.wait_for(lambda: queued_writes(p) == 0, timeout=15, what="the store's queue to empty")
        assert db_rows(url, "SELECT name FROM apps ORDER BY name") == ["fresh", "known"]
        # the name is taken now, and says so at once
        status, body = p.api("POST", "/v1/apps", {"name": "fresh"})
        assert status == 409, body
        out = p.output()
        assert "lost a queued write" not in out, out
        assert "Sanitizer" not in out and "runtime error" not in out, out


# SQL run before a write to PostgreSQL so that its change feed's triggers do not fire: the
# write is like another skiffd's whose news has not arrived yet
UNANNOUNCED = "SET session_replication_role = replica; "


def test_a_binding_an_invoke_and_a_mapping_the_copy_lacks_wait_for_the_silent_server(pg_dir):
    """After a restart, an app and an event mapping written to the database as another skiffd
    writes them, their news not come (the feed's triggers off), and an app that is nowhere: a
    service binding's create and an invoke naming each app, and a GET of the mapping, sent
    while the server is stopped, wait for their reads off the loop; GET /v1/info and GET
    /v1/apps are answered meanwhile, and each is answered once the server answers again (the
    app found: 201, 422 for its missing droplet; the mapping found: 200; the app that is
    nowhere: 404)."""
    with skiffd_on(pg_dir) as (p, url):
        status, body = p.api("POST", "/v1/apps", {"name": "known"})
        assert status == 201, body
        status, body = p.api("POST", "/v1/service_instances",
                             {"name": "db", "user_provided": True, "credentials": {"uri": "x"}})
        assert status == 201, body
        status, body = p.api("POST", "/v1/event-mappings",
                             {"app": "known", "topic": "orders", "id": "seen-mapping"})
        assert status == 201, body
        p.stop()
        assert p.proc.returncode == 0, p.output()
        p.start()
        # what the calls below read besides the apps' lookups, read before the server stops
        for path in ("/v1/apps", "/v1/service_instances", "/v1/apps/known/service_bindings",
                     "/v1/event-mappings/seen-mapping"):
            status, body = p.api("GET", path)
            assert status == 200, (path, body)
        late_guid = "1a7e0000-0000-4000-8000-000000000001"
        db_rows(url, UNANNOUNCED +
                "CREATE TEMP TABLE a AS SELECT * FROM apps WHERE name = 'known';"
                "CREATE TEMP TABLE pr AS SELECT * FROM processes WHERE app_guid = "
                "(SELECT guid FROM apps WHERE name = 'known');"
                f"UPDATE a SET guid = '{late_guid}', name = 'late';"
                f"UPDATE pr SET app_guid = '{late_guid}';"
                "INSERT INTO apps SELECT * FROM a; INSERT INTO processes SELECT * FROM pr;"
                "CREATE TEMP TABLE d AS SELECT * FROM documents"
                " WHERE kind = 'event_mapping' AND id = 'seen-mapping';"
                "UPDATE d SET id = 'hidden-mapping',"
                " body = replace(body, 'seen-mapping', 'hidden-mapping');"
                "INSERT INTO documents SELECT * FROM d")
        assert db_rows(url, "SELECT name FROM apps ORDER BY name") == ["known", "late"]
        pids = postgres_server_pids(pg_dir)

        def seen_in(get):
            status, listed = get("/v1/apps")
            assert status == 200, listed
            return [a["name"] for a in listed["apps"]] == ["known"]  # no news of late

        bind = {"service_instance": "db"}
        answers = writes_while_paused(
            p, pids, [("bind-late", "POST", "/v1/apps/late/service_bindings", bind),
                      ("bind-ghost", "POST", "/v1/apps/ghost/service_bindings", bind),
                      ("invoke-late", "POST", "/v1/apps/late/invoke", {"n": 1}),
                      ("invoke-ghost", "POST", "/v1/apps/ghost/invoke", {"n": 1}),
                      ("mapping", "GET", "/v1/event-mappings/hidden-mapping")], seen_in)
        assert answers["bind-late"][0][0] == 201, answers
        assert answers["bind-ghost"][0][0] == 404, answers
        assert "no app named" in answers["bind-ghost"][0][1]["error"]["message"], answers
        assert answers["invoke-late"][0][0] == 422, answers
        assert "no droplet" in answers["invoke-late"][0][1]["error"]["message"], answers
        assert answers["invoke-ghost"][0][0] == 404, answers
        assert "no app named 'ghost'" in answers["invoke-ghost"][0][1]["error"]["message"]
        assert answers["mapping"][0][0] == 200, answers
        assert answers["mapping"][0][1]["id"] == "hidden-mapping", answers
        status, binds = p.api("GET", "/v1/apps/late/service_bindings")
        assert status == 200 and len(binds["service_bindings"]) == 1, binds
        p.wait_for(lambda: queued_writes(p) == 0, timeout=15, what="the store's queue to empty")
        out = p.output()
        assert "lost a queued write" not in out, out
        assert "Sanitizer" not in out and "runtime error" not in out, out


def running(p, name):
    """The app's RUNNING instances as p's GET /v1/apps/NAME shows them."""
    status, app = p.api("GET", f"/v1/apps/{name}")
    assert status == 200, app
    return [d for d in app["instances_detail"] if d.get("state") == "RUNNING"]


def named_on(pg_dir):
    """make(zone) for leader_and_follower: a skiffd whose connections are named after its zone
    (application_name), to find its own server processes (own_connections)."""
    def named(zone):
        url = f"postgresql://postgres@/postgres?host={pg_dir}&application_name=skiffd-{zone}"
        return Platform(extra_args=["--store", url, "--isolation", "process", "--zone", zone],
                        extra_env={"SKIFF_CELL_HEARTBEAT_MS": "300", "SKIFF_PREWARM": "0"})
    return named


def own_connections(pg_dir, zone):
    """The server processes of the connections of named_on's skiffd of zone, all but its
    change feed's."""
    own = [int(pid) for pid in psql(
        pg_dir, f"SELECT pid FROM pg_stat_activity WHERE application_name = 'skiffd-{zone}'"
        " AND query NOT LIKE 'LISTEN%'").split()]
    assert own, f"the connections of skiffd-{zone}"
    return own


def answers_from_its_copies(p, app):
    """For 3 s, p's GET /v1/info, GET /v1/apps (listing app) and GET /v1/routes each answer
    within 1 s."""
    slowest = 0.0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        info, took = timed(p.info)
        assert info, info
        (status, listed), took_list = timed(lambda: p.api("GET", "/v1/apps"))
        assert status == 200 and app in [x["name"] for x in listed["apps"]], listed
        (status, routes), took_routes = timed(lambda: p.api("GET", "/v1/routes"))
        assert status == 200, routes
        slowest = max(slowest, took, took_list, took_routes)
    assert slowest < 1.0, f"an answer took {slowest:.2f} s while its connections stopped"


def test_a_follower_answers_from_its_copies_while_its_own_connections_are_stopped(pg_dir):
    """A leader runs an app's instance; its follower runs none of it and shows the leader's
    record of it. Both write their heartbeats (documents of kind "cell") every 300 ms and the
    leader its instance records. The server processes of the follower's own connections are
    stopped, all but its change feed's: the leader goes on writing and the follower goes on
    hearing of it. The follower's GET /v1/cells and GET /v1/apps/NAME (which reads the leader's
    record and heartbeat) are answered from its copies (the cells and the instance records
    held whole, to be read again through its stopped writer) within 1 s, as GET /v1/info is;
    before, news dropped those copies and the next call read the server on the loop (30 s,
    the client's timeout)."""
    files = [("Procfile", b"web: python3 app.py\n"), ("app.py", WEB_APP)]

    def deployed(a):
        deploy_bits(a, "kept", files, {"instances": 1, "memory_mb": 32})
        a.wait_for(lambda: running(a, "kept"), timeout=60, what="the leader's instance")

    with leader_and_follower(named_on(pg_dir), then=deployed) as (a, b):
        b.wait_for(lambda: running(b, "kept"), timeout=30,
                   what="the follower to show the leader's instance")
        assert len(cells(b)["cells"]) == 2
        own = own_connections(pg_dir, "zone-b")
        pause(own)
        try:
            before = a.api("GET", "/v1/cells")[1]["cells"]
            slowest = 0.0
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                listed, took = timed(lambda: cells(b))
                assert len(listed["cells"]) == 2, listed
                # answered from the copy as it was: the leader's heartbeat there ages (its
                # read again waits behind the stopped writer), so its instance soon shows no more
                _, took_app = timed(lambda: running(b, "kept"))
                _, took_info = timed(b.info)
                slowest = max(slowest, took, took_app, took_info)
            assert slowest < 1.0, f"an answer took {slowest:.2f} s while its connections stopped"
            assert a.api("GET", "/v1/cells")[1]["cells"] != before  # the leader wrote on
        finally:
            resume(own)


def test_a_follower_hears_of_apps_changed_elsewhere_without_waiting_for_its_own_connections(
        pg_dir):
    """The leader makes an app, scales another, sets its environment, and makes a service
    instance, an org, a user and a route while the server processes of the follower's own
    connections are stopped (its change feed's is not): the follower hears of each at once.
    An app's news, and the routes', are read again through its store's writer, and counted
    once they are in its copy, so its API answers all along (GET /v1/info, and GET /v1/apps
    and GET /v1/routes from the copies). Once its connections answer again it shows the new
    app, the new scale and the route. Before, the news of the first app made the scheduler
    read that app from the server on the event loop (and the routes' news the next route
    list), and the follower's whole API waited for the stopped server with no bound."""
    def made(a):
        status, body = a.api("PUT", "/v1/apps/kept", {"no_route": True})
        assert status == 201, body

    with leader_and_follower(named_on(pg_dir), then=made) as (a, b):
        b.wait_for(lambda: "kept" in [x["name"] for x in b.api("GET", "/v1/apps")[1]["apps"]],
                   timeout=15, what="the follower to list the leader's app")
        own = own_connections(pg_dir, "zone-b")
        pause(own)
        try:
            for method, path, body in (
                    ("PUT", "/v1/apps/fresh", {"no_route": True}),
                    ("PATCH", "/v1/apps/kept", {"instances": 2}),
                    ("PUT", "/v1/apps/kept/env", {"A": "b"}),
                    ("POST", "/v1/service_instances",
                     {"name": "ups", "user_provided": True, "credentials": {"y": 1}}),
                    ("POST", "/v1/orgs", {"name": "neworg"}),
                    ("POST", "/v1/users", {"name": "bob", "password": "a-long-password-1"}),
                    ("POST", "/v1/routes", {"app": "kept", "host": "kept-too.localhost"})):
                status, out = a.api(method, path, body)
                assert status in (200, 201), (method, path, status, out)
            answers_from_its_copies(b, "kept")
        finally:
            resume(own)
        b.wait_for(lambda: "fresh" in [x["name"] for x in b.api("GET", "/v1/apps")[1]["apps"]],
                   timeout=15, what="the follower to list the app made meanwhile")
        b.wait_for(lambda: app_field(b, "kept", "instances") == 2, timeout=15,
                   what="the follower to show the new scale")
        b.wait_for(lambda: "kept-too.localhost" in json.dumps(b.api("GET", "/v1/routes")[1]),
                   timeout=15, what="the follower to list the route mapped meanwhile")


def test_a_leader_hears_of_pushes_routes_and_deletes_made_elsewhere_without_waiting(pg_dir):
    """The follower pushes an app (a new package and droplet), maps a route, scales the
    leader's app and deletes another pushed before (its package and droplet deleted) while the
    server processes of the leader's own connections are stopped, its feed's not. The leader
    hears of each at once, and converges every second: its API answers all along, GET
    /v1/apps and GET /v1/routes from its copies. A new droplet outdates no droplet it read
    (they never change), and a deleted one is named by the feed, so the droplets its
    scheduler reads at each turn stay in its copy. Before, the routes' news made the next
    route list read the server on the event loop, and any droplet news dropped the copy of
    droplets, read again from the server at the next turn: the leader's whole API waited for
    the stopped server."""
    files = [("Procfile", b"web: python3 app.py\n"), ("app.py", WEB_APP)]

    def deployed(a):
        deploy_bits(a, "kept", files, {"instances": 1, "memory_mb": 32})
        a.wait_for(lambda: running(a, "kept"), timeout=60, what="the leader's instance")
        deploy_bits(a, "gone", files, {"instances": 0, "memory_mb": 32})

    with leader_and_follower(named_on(pg_dir), then=deployed) as (a, b):
        own = own_connections(pg_dir, "zone-a")
        for path in ("/v1/apps", "/v1/routes", "/v1/apps/kept"):
            assert a.api("GET", path)[0] == 200
        pause(own)
        try:
            deploy_bits(b, "fresh", files, {"instances": 0, "memory_mb": 32})
            for method, path, body in (
                    ("POST", "/v1/routes", {"app": "kept", "host": "kept-too.localhost"}),
                    ("PATCH", "/v1/apps/kept", {"instances": 2}),
                    ("DELETE", "/v1/apps/gone", None)):
                status, out = b.api(method, path, body)
                assert status in (200, 201, 204), (method, path, status, out)
            answers_from_its_copies(a, "kept")
        finally:
            resume(own)
        a.wait_for(lambda: "fresh" in [x["name"] for x in a.api("GET", "/v1/apps")[1]["apps"]]
                   and "gone" not in [x["name"] for x in a.api("GET", "/v1/apps")[1]["apps"]],
                   timeout=15, what="the leader to list the app pushed and not the one deleted")
        a.wait_for(lambda: "kept-too.localhost" in json.dumps(a.api("GET", "/v1/routes")[1]),
                   timeout=15, what="the leader to list the route mapped meanwhile")
        a.wait_for(lambda: len(running(a, "kept")) == 2, timeout=60,
                   what="the leader to run the new scale")


def test_on_nats_neither_a_routers_hello_nor_the_replays_read_stalls_the_api(pg_dir, tmp_path):
    """skiffd on NATS reads the store for two things of its own accord: every domain's
    certificate and key for a router it has not heard before (at its first hello; over
    cleartext NATS the notice alone goes, the names read all the same), and, leading, the
    replays asked through other skiffds. Both are reads through the store's writer, so with
    the server stopped the API answers at once all along, before and after the hello; the
    reads are made once the server answers. Before, the replays were read on the event loop
    every second: the API stopped with the server."""
    from test_bus_nats import RemoteRouter
    from test_fabric_nats import NatsServer
    nats = NatsServer(str(tmp_path)).start()
    rr = None
    try:
        with skiffd_on(pg_dir, "--nats", nats.url) as (p, url):
            status, body = p.api("POST", "/v1/domains", {"name": "hello.test"})
            assert status == 201, body
            p.wait_for(lambda: queued_writes(p) == 0, timeout=15, what="the domain's write")
            pids = postgres_server_pids(pg_dir)
            pause(pids)
            rr = RemoteRouter(nats.url).start()
            slowest, heard_at = 0.0, None
            deadline = time.monotonic() + 30
            # the hello comes within 5 s; then 2 s more of asking, while the pairs' read waits
            while time.monotonic() < deadline and (heard_at is None or
                                                   time.monotonic() < heard_at + 2):
                (status, listed), took = timed(lambda: p.api("GET", "/v1/apps"))
                assert status == 200, listed
                slowest = max(slowest, took)
                if heard_at is None and "a router on NATS said hello" in p.output():
                    heard_at = time.monotonic()
            assert heard_at is not None, p.output()
            assert slowest < 1.0, f"an answer took {slowest:.2f} s after the router's hello"
            resume(pids)
            p.wait_for(lambda: queued_writes(p) == 0, timeout=15, what="the pairs' read")
            out = p.output()
            assert "cannot read the domain certificates" not in out, out
            assert "Sanitizer" not in out and "runtime error" not in out, out
    finally:
        if rr:
            rr.close()
        nats.stop()
