"""skiffd on a PostgreSQL store: a throwaway server (Unix socket only) started here, apps and
routes made through the API, skiffd restarted, and everything found again."""
import concurrent.futures
import json
import os
import pwd
import subprocess
import tempfile
import time

import pytest

from conftest import (ROOT, Platform, free_port, packets_dropped, postgres_ctl,
                      throwaway_postgres)
from controllers import PG_BIN, stop_clean

@pytest.fixture(scope="module")
def pg_dir():
    with throwaway_postgres() as d:
        yield d


def test_apps_and_routes_survive_a_restart_on_postgres(pg_dir):
    # the password is not needed (the server trusts its socket) but must never be logged
    url = f"postgresql://postgres:not-for-logs@/postgres?host={pg_dir}"
    p = Platform(extra_args=["--store", url]).start()
    try:
        status, body = p.api("POST", "/v1/apps", {"name": "pg-app", "env": {"Q": "it's"},
                                                  "routes": ["pg-app.localhost/b",
                                                             "pg-app.localhost/a"]})
        assert status == 201, body
        status, body = p.api("POST", "/v1/apps", {"name": "'; DROP TABLE apps; --"})
        assert status in (201, 422), body
        status, body = p.api("POST", "/v1/apps", {"name": "pg-app"})
        assert status == 409, body
        status, body = p.api("PUT", "/v1/apps/pg-app/functions/resize",
                             {"handler": "images.py:resize", "max_instances": 4})
        assert status == 201, body
        p.stop()
        assert p.proc.returncode == 0, p.output()
        # the state is in PostgreSQL, not in a file in the home
        assert not os.path.exists(os.path.join(p.home, "skiff.db"))

        p.start()
        status, app = p.api("GET", "/v1/apps/pg-app")
        assert status == 200, app
        assert app["routes"] == ["pg-app.localhost/a", "pg-app.localhost/b"], app
        status, fns = p.api("GET", "/v1/apps/pg-app/functions")
        assert status == 200, fns
        assert [(f["name"], f["handler"], f["max_instances"]) for f in fns["functions"]] == \
            [("resize", "images.py:resize", 4)], fns
        status, listed = p.api("GET", "/v1/apps")
        assert status == 200, listed
        assert "pg-app" in [a["name"] for a in listed["apps"]], listed
        r = p.cli("routes", "--json", check=True)
        hosts = sorted(rt["host"] for rt in json.loads(r.stdout)["routes"])
        assert hosts == ["pg-app.localhost", "pg-app.localhost"], r.stdout
        p.stop()
        assert p.proc.returncode == 0, p.output()
        assert "not-for-logs" not in p.output()
        assert "Sanitizer" not in p.output() and "runtime error" not in p.output(), p.output()
    finally:
        p.close()


def test_skiffd_refuses_an_unreachable_store_naming_no_password(tmp_path):
    url = f"postgresql://postgres:not-for-logs@/postgres?host={tmp_path}/nothing-here"
    p = Platform(extra_args=["--store", url])
    try:
        with pytest.raises(AssertionError):
            p.start(timeout=20)
        p.proc.wait(20)
        assert p.proc.returncode != 0
        assert "cannot connect to the store" in p.output(), p.output()
        assert "not-for-logs" not in p.output(), p.output()
    finally:
        p.close()


def wait_for(what, check, timeout=15):
    """check() until it returns a true value, for timeout seconds at most."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def test_a_second_skiffd_sees_what_the_first_writes(pg_dir):
    # two skiffds on one database: each answers from its read cache, which the change feed
    # (LISTEN/NOTIFY) keeps current with the other's writes
    url = f"postgresql:///postgres?host={pg_dir}&user=postgres"
    a = Platform(extra_args=["--store", url]).start()
    b = Platform(extra_args=["--store", url]).start()
    try:
        # b reads first, so that its cache is loaded before a writes
        status, listed = b.api("GET", "/v1/apps")
        assert status == 200, listed
        assert "two-app" not in [x["name"] for x in listed["apps"]], listed
        status, body = a.api("POST", "/v1/apps", {"name": "two-app", "env": {"K": "1"}})
        assert status == 201, body
        got = wait_for("b sees the app a made",
                       lambda: b.api("GET", "/v1/apps/two-app")[0] == 200)
        assert got
        wait_for("b lists it", lambda: "two-app" in [
            x["name"] for x in b.api("GET", "/v1/apps")[1]["apps"]])
        status, body = a.api("PUT", "/v1/apps/two-app/env", {"K": "2"})
        assert status == 200, body
        wait_for("b sees a's change",
                 lambda: b.api("GET", "/v1/apps/two-app/env")[1].get("env", {}).get("K") == "2")
        # and the other way round
        status, body = b.api("PUT", "/v1/apps/two-app/env", {"K": "3"})
        assert status == 200, body
        wait_for("a sees b's change",
                 lambda: a.api("GET", "/v1/apps/two-app/env")[1].get("env", {}).get("K") == "3")
        status, body = a.api("DELETE", "/v1/apps/two-app")
        assert status in (200, 202, 204), body
        wait_for("b sees it gone", lambda: b.api("GET", "/v1/apps/two-app")[0] == 404)
        for p in (a, b):
            p.stop()
            assert p.proc.returncode == 0, p.output()
            assert "Sanitizer" not in p.output() and "runtime error" not in p.output(), p.output()
    finally:
        b.close()
        a.close()


def test_service_credentials_sealed_through_one_skiffd_are_read_through_another(pg_dir):
    """Every skiffd on one store seals service credentials with the same key (each home's
    services.key, copied): a user-provided instance made through b and bound through a has
    its credentials in the app's VCAP_SERVICES through both. A skiffd whose services.key is
    another refuses to start and says which file to copy: it could read none of them, and
    the others none of what it sealed."""
    url = f"postgresql:///postgres?host={pg_dir}&user=postgres"
    a = Platform(extra_args=["--store", url]).start()
    b = Platform(extra_args=["--store", url]).start()
    other = tempfile.mkdtemp(prefix="skiff-e2e-")
    with open(os.open(os.path.join(other, "services.key"), os.O_WRONLY | os.O_CREAT, 0o600),
              "wb") as f:
        f.write(os.urandom(32))
    c = Platform(home=other, extra_args=["--store", url])
    try:
        status, body = a.api("POST", "/v1/apps", {"name": "sealed-app"})
        assert status == 201, body
        creds = {"uri": "postgres://u:sealed-pw@db.example/shop"}
        status, body = b.api("POST", "/v1/service_instances",
                             {"name": "sealed-db", "user_provided": True, "credentials": creds})
        assert status == 201, body
        wait_for("a to bind the instance b made", lambda: a.api(
            "POST", "/v1/apps/sealed-app/service_bindings",
            {"service_instance": "sealed-db"})[0] == 201)

        def shown(p):
            status, env = p.api("GET", "/v1/apps/sealed-app/env")
            ups = env.get("system", {}).get("VCAP_SERVICES", {}).get("user-provided", [])
            return status == 200 and [u["credentials"] for u in ups] == [creds]
        for p in (a, b):
            wait_for("the credentials in VCAP_SERVICES", lambda: shown(p))
        with pytest.raises(AssertionError, match="exited at start"):
            c.start()
        assert "services.key is not the key the other skiffds on this store" in c.output()
        assert f"to {other} and start again" in c.output(), c.output()
        assert "sealed-pw" not in c.output() + a.output() + b.output()
    finally:
        c.close()
        b.close()
        a.close()


def test_the_first_skiffds_built_in_brokers_serve_every_skiffd_on_the_store(pg_dir):
    """The built-in brokers keep their stores' data on one host, so on a shared store the first
    skiffd's are the platform's: a second skiffd starts none of its own (before, it registered
    its own over them, and the first's instances went to a broker that did not know them). The
    events offering's tokens are signed with the key the store keeps, so a token made through
    one skiffd publishes through the other; a forged one is refused by both."""
    subprocess.run(["psql", "-q", "-h", pg_dir, "-U", "postgres", "-c",
                    "CREATE DATABASE builtin", "postgres"],
                   check=True, capture_output=True, timeout=60)
    url = f"postgresql:///builtin?host={pg_dir}&user=postgres"
    env = {"SKIFF_BUILTIN_BROKERS": "1"}
    a = Platform(extra_args=["--store", url], extra_env=env).start()
    b = Platform(extra_args=["--store", url], extra_env=env)
    try:
        def brokers(p):
            return p.api("GET", "/v1/service_brokers")[1].get("service_brokers", [])
        wait_for("a's built-in brokers registered",
                 lambda: [x["name"] for x in brokers(a)] == ["skiff-builtin"])
        first = brokers(a)[0]["url"]
        b.start()
        wait_for("b to leave its own brokers off",
                 lambda: "this skiffd's stay off" in b.output())
        assert [(x["name"], x["url"]) for x in brokers(b)] == [("skiff-builtin", first)]
        keys = []
        for p in (a, b):
            with open(os.path.join(p.home, "brokers", "events.key")) as f:
                keys.append(f.read())
        assert keys[0] == keys[1]

        r = b.cli("create-service", "events", "shared", "feed")
        assert r.returncode == 0, r.stdout + r.stderr
        r = b.cli("create-service-key", "feed", "k")
        assert r.returncode == 0, r.stdout + r.stderr
        r = a.cli("service-key", "feed", "k")
        assert r.returncode == 0, r.stdout + r.stderr
        creds = json.loads(r.stdout)
        path = creds["url"][creds["url"].index("/v1/"):]
        forged = creds["token"][:-1] + ("1" if creds["token"].endswith("0") else "0")
        for p in (a, b):
            status, body = p.api("POST", path, raw=b"hello", token=creds["token"],
                                 headers={"Content-Type": "text/plain"})
            assert status == 202, (p.home, status, body)
            status, body = p.api("POST", path, raw=b"forged", token=forged,
                                 headers={"Content-Type": "text/plain"})
            assert status == 401, (p.home, status, body)
        assert keys[0].strip() not in a.output() + b.output()
    finally:
        b.close()
        a.close()


def test_two_skiffds_starting_at_once_on_a_new_store_start_one_set_of_built_in_brokers(pg_dir):
    """Two skiffds started at the same moment on a new store both find no built-in broker
    registered. Only one may start its brokers (their stores keep their data on its host): the
    first to leave its id in the store owns them, the other stays off, and both list the one
    broker, at the owner's address. Before, both started brokers and registered them, the
    last one over the other's."""
    subprocess.run(["psql", "-q", "-h", pg_dir, "-U", "postgres", "-c",
                    "CREATE DATABASE builtin_at_once", "postgres"],
                   check=True, capture_output=True, timeout=60)
    url = f"postgresql:///builtin_at_once?host={pg_dir}&user=postgres"
    env = {"SKIFF_BUILTIN_BROKERS": "1"}
    both = [Platform(extra_args=["--store", url], extra_env=env) for _ in range(2)]
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda p: p.start(), both))

        def brokers(p):
            return p.api("GET", "/v1/service_brokers")[1].get("service_brokers", [])

        def registered():
            lists = [[(x["name"], x["url"]) for x in brokers(p)] for p in both]
            return lists[0] == lists[1] and len(lists[0]) == 1 and lists[0]
        wait_for("one built-in broker, the same through both", registered)
        wait_for("the owner's brokers to say they are registered", lambda: any(
            "the built-in service brokers are registered" in p.output() for p in both))
        owners = [p for p in both if "the built-in service brokers are registered" in p.output()]
        off = [p for p in both if "this skiffd's stay off" in p.output()]
        assert len(owners) == 1 and len(off) == 1 and owners != off, \
            [p.output() for p in both]
        def broker_port(p):
            with open(os.path.join(p.home, "brokers", "config.json")) as f:
                return json.load(f)["broker_port"]
        assert registered()[0][1] == f"http://127.0.0.1:{broker_port(owners[0])}", registered()
        assert not os.path.exists(os.path.join(off[0].home, "brokers", "config.json"))

        # moved as docs/services.md says: deleted, and the other skiffd started again
        status, body = owners[0].api("DELETE", "/v1/service_brokers/skiff-builtin")
        assert status == 204, body
        owners[0].close()
        off[0].stop()
        off[0].start()
        wait_for("the other skiffd's own brokers registered", lambda: [
            x["url"] for x in brokers(off[0])] == [f"http://127.0.0.1:{broker_port(off[0])}"])
    finally:
        for p in both:
            p.close()


def test_event_mappings_sent_together_are_held_to_the_quota(pg_dir):
    """On PostgreSQL a mapping's create is answered once its write is made: mappings whose
    writes are still queued count against the space's quota too, so creates sent at once
    cannot each pass the check (before, 8 at once made up to 8 under a quota of 2)."""
    url = f"postgresql:///postgres?host={pg_dir}&user=postgres"
    p = Platform(extra_args=["--store", url]).start()
    try:
        for method, path, body in (
                ("POST", "/v1/quotas", {"name": "two-maps", "event_mappings": 2}),
                ("POST", "/v1/orgs", {"name": "burst"}),
                ("POST", "/v1/orgs/burst/spaces", {"name": "s"}),
                ("PUT", "/v1/orgs/burst/spaces/s/quota", {"quota": "two-maps"}),
                ("PUT", "/v1/apps/fn?space=burst/s", {"no_route": True})):
            status, out = p.api(method, path, body)
            assert status in (200, 201), (method, path, status, out)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda i: p.api(
                "POST", "/v1/event-mappings?space=burst/s", {"app": "fn", "topic": f"t{i}"}),
                range(8)))
        statuses = sorted(status for status, _ in got)
        assert statuses == [201, 201] + [422] * 6, got
        assert all(out["error"]["code"] == "quota_exceeded" for status, out in got
                   if status == 422), got
        status, out = p.api("GET", "/v1/event-mappings?space=burst/s")
        assert status == 200 and len(out["event_mappings"]) == 2, out
    finally:
        p.close()


def test_an_update_of_an_app_changed_meanwhile_is_a_409_naming_it(pg_dir):
    # another writer changes the app's row (its version) and skiffd has not heard of it yet
    # (no NOTIFY: as if its notification were still on the way): skiffd's write from its
    # cached read must not overwrite it, but answer 409; sent again, it goes through
    subprocess.run(["psql", "-q", "-h", pg_dir, "-U", "postgres", "-c", "CREATE DATABASE cas",
                    "postgres"], check=True, capture_output=True, timeout=60)
    url = f"postgresql:///cas?host={pg_dir}&user=postgres"
    p = Platform(extra_args=["--store", url]).start()
    try:
        status, body = p.api("POST", "/v1/apps", {"name": "cas-app", "env": {"K": "1"}})
        assert status == 201, body
        status, body = p.api("GET", "/v1/apps/cas-app/env")  # read, and cached
        assert status == 200 and body["env"] == {"K": "1"}, body
        sql = ("ALTER TABLE apps DISABLE TRIGGER apps_notify;"
               "UPDATE apps SET version = version + 1, memory_mb = 77 WHERE name = 'cas-app';"
               "ALTER TABLE apps ENABLE TRIGGER apps_notify;")
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", "-h", pg_dir, "-U", "postgres",
                        "-c", sql, "cas"], check=True, capture_output=True, timeout=60)
        status, body = p.api("PUT", "/v1/apps/cas-app/env", {"K": "2"})
        assert status == 409, body
        assert body["error"]["code"] == "conflict", body
        assert "cas-app" in body["error"]["message"], body
        assert "changed by someone else" in body["error"]["message"], body
        # the other writer's change is kept, and the request sent again succeeds on top of it
        status, body = p.api("PUT", "/v1/apps/cas-app/env", {"K": "2"})
        assert status == 200, body
        status, app = p.api("GET", "/v1/apps/cas-app")
        assert status == 200 and app["memory_mb"] == 77, app
        status, body = p.api("GET", "/v1/apps/cas-app/env")
        assert status == 200 and body["env"] == {"K": "2"}, body
        p.stop()
        assert p.proc.returncode == 0, p.output()
        assert "Sanitizer" not in p.output() and "runtime error" not in p.output(), p.output()
    finally:
        p.close()


def test_a_restart_of_the_server_or_its_absence_for_a_while_is_outlived(tmp_path):
    """The server restarts, or stops and comes back later, under a running skiffd: its
    connections are opened again, the API never stalls meanwhile, and other writers' changes
    are heard again."""
    import psycopg2
    with throwaway_postgres() as d:
        url = f"postgresql:///postgres?host={d}&user=postgres"
        p = Platform(extra_args=["--store", url]).start()
        try:
            assert p.api("POST", "/v1/apps", {"name": "one", "routes": ["one.localhost"]})[0] == 201

            def reads_answer():
                for path in ("/v1/apps", "/v1/apps/one", "/v1/routes", "/v1/domains",
                             "/v1/service_brokers", "/v1/users", "/v1/orgs"):
                    status, body = p.api("GET", path)
                    assert status == 200, (path, status, body)

            # a restart: the first reads after it are made on new connections
            postgres_ctl(d, "restart")
            reads_answer()
            status, body = p.api("PUT", "/v1/apps/two", {})
            assert status in (200, 201), body

            # away for a while: the API answers meanwhile (an error where only the server
            # knows), and all of it works again once the server is back
            postgres_ctl(d, "stop")
            for _ in range(3):
                assert p.api("GET", "/v1/info")[0] == 200
                p.api("GET", "/v1/apps/one")
                p.api("PUT", "/v1/apps/three", {})
            postgres_ctl(d, "start")
            wait_for("a write once the server is back",
                     lambda: p.api("PUT", "/v1/apps/three", {})[0] in (200, 201), timeout=30)
            reads_answer()
            listed = [a["name"] for a in p.api("GET", "/v1/apps")[1]["apps"]]
            assert {"one", "two", "three"} <= set(listed), listed

            # the change feed is on again: a change another writer makes is heard
            with psycopg2.connect(host=d, user="postgres", dbname="postgres") as c:
                c.cursor().execute("UPDATE apps SET memory_mb = 321 WHERE name = 'one'")
            wait_for("another writer's change heard",
                     lambda: p.api("GET", "/v1/apps/one")[1]["memory_mb"] == 321, timeout=30)
            stop_clean([p])
            out = p.output()
            assert "the connection to the database is open again" in out, out[-3000:]
            # each loss is told once: a feed lost while its owner was told of it used to be
            # read again and lost a second time, the retry delay doubled twice
            assert out.count("the change feed was lost") <= out.count(
                "the change feed is reopened") + 1, out[-6000:]
        finally:
            p.close()


def test_a_network_cut_from_the_server_is_noticed_and_outlived(tmp_path):
    """The network between skiffd and its server goes silent (packets to and from the
    server's TCP port dropped, as a cut link or a host gone would): skiffd notices within
    seconds, though nothing tells it (TCP keepalives), rather than trusting a deaf change feed
    for ever; once the network is back, it reconnects and hears what another writer changed
    meanwhile (over the server's Unix socket, which the cut does not touch)."""
    import psycopg2
    port = free_port()
    with throwaway_postgres() as d:
        postgres_ctl(d, "restart", tcp_port=port)
        p = Platform(extra_args=["--store", f"postgresql://postgres@127.0.0.1:{port}/postgres"]).start()
        try:
            assert p.api("POST", "/v1/apps", {"name": "one"})[0] == 201
            with packets_dropped(port):
                wait_for("skiffd to notice the cut",
                         lambda: "the change feed was lost" in p.output(), timeout=40)

                def sql(query):
                    with psycopg2.connect(host=d, port=port, user="postgres",
                                          dbname="postgres") as c:
                        cur = c.cursor()
                        cur.execute(query)
                        return cur.fetchall() if cur.description else None

                sql("UPDATE apps SET memory_mb = 321 WHERE name = 'one'")
                # the server, too, ends the sessions of a client it lost: the lead it held is
                # free for a controller on the server's side of the cut
                wait_for("the server to let go of the cut-off leader's lock",
                         lambda: sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                                     " AND granted")[0][0] == 0, timeout=40)
            wait_for("another writer's change made during the cut heard",
                     lambda: p.api("GET", "/v1/apps/one")[1].get("memory_mb") == 321, timeout=60)
            wait_for("a write once the network is back",
                     lambda: p.api("PUT", "/v1/apps/two", {})[0] in (200, 201), timeout=60)
            wait_for("it leads again",
                     lambda: p.api("GET", "/v1/cells")[1].get("leading"), timeout=60)
            stop_clean([p])
            assert "the change feed is reopened" in p.output(), p.output()[-3000:]
        finally:
            p.close()


def test_a_fail_over_to_a_standby_at_another_address_is_followed(tmp_path):
    """The store's URL names two servers (libpq's host list, target_session_attrs=read-write):
    a primary and its streaming standby. The primary stops for good and the standby is
    promoted: skiffd's connections (the loop's, the writer's, the change feed's and the
    leader's lock) go to the new primary, skiffd leads again, writes land there and the
    change feed hears another writer's change on it."""
    import psycopg2
    as_pg = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
    with throwaway_postgres() as primary:
        standby = tempfile.mkdtemp(prefix="skiff-pg-standby-")
        if os.getuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(standby, pw.pw_uid, pw.pw_gid)
        # the standby laid out as throwaway_postgres lays a server out (DIR/data, its socket
        # in DIR), so that postgres_ctl and scripts/pg-throwaway.sh serve it too
        subprocess.run(as_pg + [os.path.join(PG_BIN, "pg_basebackup"), "-h", primary, "-U",
                                "postgres", "-D", os.path.join(standby, "data"), "-R", "-X",
                                "stream"], check=True, capture_output=True, timeout=120)
        postgres_ctl(standby, "start")
        p = None
        try:
            url = (f"postgresql:///postgres?host={primary},{standby}&user=postgres"
                   "&target_session_attrs=read-write")
            p = Platform(extra_args=["--store", url]).start()
            wait_for("skiffd to lead", lambda: p.api("GET", "/v1/cells")[1].get("leading"))
            assert p.api("POST", "/v1/apps", {"name": "one", "routes": ["one.localhost"]})[0] \
                == 201

            # fail-over: the primary is gone for good, the standby becomes the primary
            postgres_ctl(primary, "stop")
            postgres_ctl(standby, "promote")
            promoted = time.monotonic()
            wait_for("a write on the promoted server",
                     lambda: p.api("PUT", "/v1/apps/two", {})[0] in (200, 201), timeout=30)
            wrote = time.monotonic() - promoted
            wait_for("skiffd to lead again", lambda: p.api("GET", "/v1/cells")[1].get("leading"),
                     timeout=30)
            print("promoted: the first write landed after %.2f s, leading again after %.2f s"
                  % (wrote, time.monotonic() - promoted))
            listed = [a["name"] for a in p.api("GET", "/v1/apps")[1]["apps"]]
            assert {"one", "two"} <= set(listed), listed
            with psycopg2.connect(host=standby, user="postgres", dbname="postgres") as c:
                cur = c.cursor()
                cur.execute("SELECT name FROM apps ORDER BY name")
                assert [r[0] for r in cur.fetchall()] == ["one", "two"]
                # another writer on the new primary: the feed, reopened there, hears it
                cur.execute("UPDATE apps SET memory_mb = 321 WHERE name = 'one'")
            wait_for("another writer's change heard on the new primary",
                     lambda: p.api("GET", "/v1/apps/one")[1]["memory_mb"] == 321, timeout=30)
            stop_clean([p])
            out = p.output()
            assert "this skiffd stopped leading" in out, out[-4000:]
            assert "the connection to the database is open again" in out, out[-4000:]
        finally:
            if p:
                p.close()
            subprocess.run([os.path.join(ROOT, "scripts", "pg-throwaway.sh"), "stop", standby],
                           check=True, timeout=120)
