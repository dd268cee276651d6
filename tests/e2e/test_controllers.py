"""Several skiffds on one PostgreSQL store: one leads (runs the instances), the others serve
the API; the leader's death or the loss of its database session hands leading over within
LEADER_BOUND_S; `skiff cells` lists every skiffd from its heartbeats.

Each skiffd has its own home and ports. They run instances as host processes (--isolation
process) so that two of them on one machine do not share a container network; a droplet
whose folder is not on a skiffd's host comes from the blob store (tests/e2e/test_blobs.py)."""
import concurrent.futures
import json
import os
import signal
import socket
import threading
import time

import pytest

from conftest import (ROOT, WEB_APP, Platform, deploy_bits, http_get, out, read_pid_file,
                      wait_for)
from controllers import (LEADER_BOUND_S, cells, leader_and_follower, leading,  # noqa: F401
                         needs_postgres, pair, pg_dir, psql, running_here, serves, skiffd,
                         stopped_clean)

pytestmark = needs_postgres


def deploy_through(p, name):
    deploy_bits(p, name, [("Procfile", b"web: python3 app.py\n"), ("app.py", WEB_APP)],
                {"instances": 1})
    status, body = p.api("POST", "/v1/routes", {"app": name, "host": f"{name}.localhost"})
    assert status in (200, 201), body


def test_push_through_a_follower_runs_on_the_leader_and_a_killed_leader_is_replaced(pair):
    a, b = pair
    deploy_through(b, "ctl")
    wait_for(lambda: running_here(a, "ctl"), 60, "the leader to run the app pushed through "
             "the follower")
    wait_for(lambda: serves(a, "ctl"), 20, "the app through the leader's router")
    assert running_here(b, "ctl") == [], "a follower runs nothing"
    # a route mapped through the follower reaches the leader's router
    status, body = b.api("POST", "/v1/routes", {"app": "ctl", "host": "ctl-two.localhost"})
    assert status in (200, 201), body
    wait_for(lambda: serves(a, "ctl", "ctl-two.localhost"), 10,
             "a route mapped through the follower to be served by the leader's router")
    # a stop, a scale and a start through the follower are carried out by the leader
    assert b.api("POST", "/v1/apps/ctl/stop")[0] == 200
    wait_for(lambda: not running_here(a, "ctl"), 15, "the leader to stop the app")
    assert b.api("PATCH", "/v1/apps/ctl", {"instances": 2})[0] == 200
    assert b.api("POST", "/v1/apps/ctl/start")[0] == 200
    wait_for(lambda: len(running_here(a, "ctl")) == 2, 60, "the leader to run two instances")
    assert running_here(b, "ctl") == []
    assert "[LEADER] this skiffd leads" in a.output(), a.output()
    assert "[LEADER] another skiffd leads" in b.output(), b.output()

    # skiff cells: both, up, the leader marked, with their zones
    r = b.cli("cells", check=True)
    lines = r.stdout.splitlines()
    assert len(lines) == 3, r.stdout
    listed = {c["zone"]: c for c in cells(b)["cells"]}
    assert set(listed) == {"zone-a", "zone-b"}, listed
    assert [c["state"] for c in listed.values()] == ["up", "up"], listed
    assert listed["zone-a"]["leader"] and not listed["zone-b"]["leader"], listed
    wait_for(lambda: {c["zone"]: c for c in cells(b)["cells"]}["zone-a"]["instances"] >= 1, 10,
             "the leader's heartbeat to count its instance")
    assert all(c["memory_capacity_bytes"] > 0 for c in listed.values()), listed
    a_id = listed["zone-a"]["id"]

    # kill -9 the leader: b leads within the bound and runs the app itself
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    killed = time.monotonic()
    wait_for(lambda: leading(b), LEADER_BOUND_S, "the follower to lead after kill -9")
    took = time.monotonic() - killed
    print(f"leading went over {took:.2f} s after kill -9")
    wait_for(lambda: running_here(b, "ctl"), 60, "the new leader to run the app")
    try:
        wait_for(lambda: serves(b, "ctl"), 20, "the app through the new leader's router")
    except AssertionError as e:
        # what the router answers, what the API shows and what skiffd said, to tell why
        status, app = b.api("GET", "/v1/apps/ctl")
        raise AssertionError("%s\nGET: %r\napp: %r\nb's log:\n%s" % (
            e, http_get(b.router_url + "/", host="ctl.localhost"),
            app.get("instances_detail"), b.output()[-6000:])) from e

    # the killed one is missing after three heartbeat intervals, and leads nothing
    def a_missing():
        c = {c["id"]: c for c in cells(b)["cells"]}[a_id]
        return c["state"] == "missing" and not c["leader"]
    wait_for(a_missing, 10, "the killed skiffd listed as missing")
    r = b.cli("cells", check=True)
    assert "missing" in r.stdout and "up" in r.stdout, out(r)


def test_a_leader_whose_session_ends_stops_at_once_and_the_other_takes_over(pair, pg_dir):
    a, b = pair
    deploy_through(a, "sess")
    wait_for(lambda: running_here(a, "sess"), 60, "the leader to run the app")
    a_id = next(c["id"] for c in cells(a)["cells"] if c["zone"] == "zone-a")
    # a hostile or failing database ends the leader's session under it (as a restart would)
    ended = psql(pg_dir, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                         f"WHERE application_name = 'skiffd leader {a_id}'")
    assert ended.strip() == "1", ended
    # a stops leading at once and holds its instance (it starts and stops nothing) until the
    # store says another leads: it asks every 250 ms, and stops its instance (without NATS)
    # as soon as b took the lock, long before its own next try (three intervals on)
    wait_for(lambda: not leading(a), 2, "the leader to stop leading when its session ends")
    assert "[LEADER] this skiffd stopped leading" in a.output(), a.output()
    guid = running_here(a, "sess")[0]["guid"] if running_here(a, "sess") else None
    assert guid, "a holds its instance"
    pid = read_pid_file(os.path.join(a.home, "run", "instance-%s.pid" % guid))
    t = {}
    deadline = time.monotonic() + 60
    while len(t) < 3 and time.monotonic() < deadline:
        now = time.monotonic()
        if "b leads" not in t and leading(b):
            t["b leads"] = now
        if "b runs" not in t and running_here(b, "sess"):
            t["b runs"] = now
        if "a stopped" not in t and not os.path.exists("/proc/%d" % pid):
            t["a stopped"] = now
        time.sleep(0.05)
    assert len(t) == 3, t
    overlap = t["a stopped"] - t["b runs"]
    print("a's instance stopped %.2f s after b led; both ran for %.2f s"
          % (t["a stopped"] - t["b leads"], max(overlap, 0)))
    # the bound (src/daemon/README.md, "No split brain"): a watch (250 ms), a query and the
    # instance's drain and exit; it was a's next try, three intervals after the loss
    assert overlap < 1.0, t
    assert "the store says another session holds the lock" in a.output(), a.output()
    # never two leaders
    assert a.output().count("[LEADER] another skiffd leads") == 1, a.output()
    assert leading(b) and not leading(a), (cells(a), cells(b))
    assert not running_here(a, "sess")
    assert a.proc.poll() is None and b.proc.poll() is None


def test_a_leader_stopped_with_sigterm_hands_over_at_once(pair):
    a, b = pair
    stopping = time.monotonic()
    a.stop()
    assert a.proc.returncode == 0, a.output()
    # its session ended as it began to stop: b's next try takes the lock
    wait_for(lambda: leading(b), LEADER_BOUND_S, "the follower to lead after a SIGTERM")
    print(f"leading went over {time.monotonic() - stopping:.2f} s after SIGTERM")


def test_cells_is_for_the_platform_admin_only(pair):
    a, b = pair
    admin = b.token
    assert b.api("POST", "/v1/users", {"name": "dev1", "password": "correct horse battery"},
                 token=admin)[0] == 201
    assert b.api("POST", "/v1/orgs", {"name": "acme"}, token=admin)[0] == 201
    assert b.api("POST", "/v1/orgs/acme/spaces", {"name": "prod"}, token=admin)[0] == 201
    assert b.api("PUT", "/v1/orgs/acme/spaces/prod/users/dev1/roles/SpaceDeveloper",
                 token=admin)[0] == 204
    status, tok = b.api("POST", "/v1/auth/token", {"grant_type": "password", "username": "dev1",
                                                   "password": "correct horse battery"},
                        token=False)
    assert status == 200, tok
    status, body = b.api("GET", "/v1/cells", token=tok["access_token"])
    assert status == 403, body
    assert "cells" not in body, body
    # a token made through b is a user's token on a too, with the same limits
    status, body = a.api("GET", "/v1/cells", token=tok["access_token"])
    assert status == 403, body
    for p in (a, b):
        status, body = p.api("GET", "/v1/cells", token=False)
        assert status == 401, body
        status, body = p.api("GET", "/v1/cells", token="skiffa_forged")
        assert status == 401, body


def test_skiff_push_through_a_follower_waits_for_the_leaders_instances(pair):
    a, b = pair
    # the real CLI, through the follower: it waits until the leader's instance is RUNNING
    r = b.cli("push", "viab", "-p", os.path.join(ROOT, "examples", "python-web"), timeout=300)
    assert r.returncode == 0, out(r)
    assert "viab is running: 1 of 1 instances" in r.stdout, out(r)
    status, _ = http_get(a.router_url + "/", host="viab.localhost")
    assert status == 200
    # the follower shows the instance the leader runs, as the leader does
    status, app = b.api("GET", "/v1/apps/viab")
    assert status == 200, app
    mine = [i["guid"] for i in running_here(a, "viab")]
    assert [i["guid"] for i in app["instances_detail"]] == mine, (app, mine)
    assert running_here(b, "viab") == [], app
    assert app["running"] == 1, app
    # stopped through the follower: the leader's record of the instance goes with it
    assert b.api("POST", "/v1/apps/viab/stop")[0] == 200
    wait_for(lambda: b.api("GET", "/v1/apps/viab")[1]["instances_detail"] == [], 15,
             "the follower to show no instance once the leader stopped it")


# src/daemon/main.c: every skiffd on a shared store reads users and tokens again once a second
# (DAEMON_RESYNC_MS); a revocation is refused by the others within that, plus the reading.
REVOKE_BOUND_S = 2.0


def login(p, name, password):
    return p.api("POST", "/v1/auth/token", {"grant_type": "password", "username": name,
                                            "password": password}, token=False)


def test_users_and_tokens_made_through_one_skiffd_work_through_the_other(pair):
    a, b = pair
    assert a.api("POST", "/v1/users", {"name": "dev2", "password": "first password ok"})[0] == 201
    # at once through b: a token b does not know makes it read the store
    status, tok = login(b, "dev2", "first password ok")
    assert status == 200, tok
    access = tok["access_token"]
    assert a.api("GET", "/v1/orgs", token=access)[0] == 200
    assert b.api("GET", "/v1/orgs", token=access)[0] == 200
    # a user made through a cannot be made again through b
    status, body = b.api("POST", "/v1/users", {"name": "dev2", "password": "another one ok"})
    assert status == 409, body
    # a role given through b for a user made through a
    assert b.api("PUT", "/v1/orgs/default/spaces/dev/users/dev2/roles/SpaceAuditor")[0] == 204
    # used through a at once: a refusal is decided again on the roles the store holds (a's
    # copy may not have heard of the role yet), as is a space made through b a moment ago
    status, body = a.api("GET", "/v1/apps?space=default/dev", token=access)
    assert status == 200, body
    assert b.api("POST", "/v1/orgs/default/spaces", {"name": "made-on-b"})[0] == 201
    status, body = a.api("GET", "/v1/apps?space=default/made-on-b")
    assert status == 200, body
    # the same with a body: read (16 KiB at most) while the refusal is decided again
    assert b.api("POST", "/v1/orgs/default/spaces", {"name": "made-on-b-too"})[0] == 201
    status, body = a.api("PUT", "/v1/apps/made-there?space=default/made-on-b-too",
                         {"no_route": True, "env": {"K": "v"}})
    assert status == 201, body
    # an API token made through a works through b, and a refresh token made through b on a
    status, made = a.api("POST", "/v1/tokens", {"name": "ci"}, token=access)
    assert status == 201, made
    assert b.api("GET", "/v1/orgs", token=made["token"])[0] == 200
    status, again = a.api("POST", "/v1/auth/token", {"grant_type": "refresh_token",
                                                     "refresh_token": tok["refresh_token"]},
                          token=False)
    assert status == 200, again

    # revoked through a: refused by b within the bound (b had it in memory)
    assert a.api("DELETE", "/v1/tokens/ci", token=access)[0] == 204
    revoked = time.monotonic()
    wait_for(lambda: b.api("GET", "/v1/orgs", token=made["token"])[0] == 401, REVOKE_BOUND_S,
             "the token revoked through a to be refused by b")
    print(f"a token revoked through one skiffd was refused by the other after "
          f"{time.monotonic() - revoked:.2f} s")
    assert a.api("GET", "/v1/orgs", token=made["token"])[0] == 401
    # a refresh token used once through a is not good again through b
    status, body = b.api("POST", "/v1/auth/token", {"grant_type": "refresh_token",
                                                    "refresh_token": tok["refresh_token"]},
                         token=False)
    assert status == 401, body

    # a new password through b: the old one and the user's other tokens end on a too
    access2 = again["access_token"]
    assert a.api("GET", "/v1/orgs", token=access2)[0] == 200
    status, body = b.api("PUT", "/v1/users/dev2/password", {"password": "second password ok"})
    assert status == 204, body
    changed = time.monotonic()
    wait_for(lambda: a.api("GET", "/v1/orgs", token=access2)[0] == 401, REVOKE_BOUND_S,
             "a's copy of the user's token to end with the new password")
    assert login(a, "dev2", "first password ok")[0] == 401
    assert time.monotonic() - changed < REVOKE_BOUND_S + 1
    assert login(a, "dev2", "second password ok")[0] == 200
    # a refresh token is good once, whichever skiffd takes it: b made it and still holds it
    # when a takes it, and refuses it at once after
    status, fresh = login(b, "dev2", "second password ok")
    assert status == 200, fresh
    grant = {"grant_type": "refresh_token", "refresh_token": fresh["refresh_token"]}
    assert a.api("POST", "/v1/auth/token", grant, token=False)[0] == 200
    status, body = b.api("POST", "/v1/auth/token", grant, token=False)
    assert status == 401, body
    # a user deleted through a is gone on b, and its tokens with it
    status, tok3 = login(b, "dev2", "second password ok")
    assert status == 200, tok3
    assert a.api("DELETE", "/v1/users/dev2")[0] == 204
    wait_for(lambda: b.api("GET", "/v1/orgs", token=tok3["access_token"])[0] == 401,
             REVOKE_BOUND_S, "the deleted user's token to be refused by b")
    assert login(b, "dev2", "second password ok")[0] == 401


def test_a_skiffd_on_the_embedded_store_always_leads(shared_platform):
    body = cells(shared_platform)
    assert body["leading"] is True, body
    assert [c["state"] for c in body["cells"]] == ["up"], body
    assert body["cells"][0]["leader"] is True, body
    assert body["cells"][0]["zone"] == "default", body


def test_a_bad_zone_is_refused(tmp_path):
    p = Platform(extra_args=["--zone", "Zone A;rm"])
    try:
        with pytest.raises(AssertionError):
            p.start(timeout=10)
        p.proc.wait(10)
        assert p.proc.returncode == 2, p.output()
        assert "--zone" in p.output() and "is not a zone name" in p.output(), p.output()
    finally:
        p.close()


def app_names(p):
    status, body = p.api("GET", "/v1/apps")
    assert status == 200, body
    return {x["name"] for x in body["apps"]}


def test_an_app_made_through_one_skiffd_is_listed_by_the_other(pg_dir):
    # heartbeats far apart and no brokers to register, so that the follower writes nothing of
    # its own that would drop its cached app list by chance: only catching up with the store
    # (once a second) does
    with stopped_clean() as made:
        a = skiffd(pg_dir, "zone-a", 60000, ["--no-builtin-brokers"])
        made.append(a)
        a.start()
        wait_for(lambda: leading(a), 15, "the first skiffd to lead")
        b = skiffd(pg_dir, "zone-b", 60000, ["--no-builtin-brokers"])
        made.append(b)
        b.start()
        assert "listed" not in app_names(b)  # b's list is cached now
        assert app_names(b) == app_names(b)
        assert a.api("PUT", "/v1/apps/listed", {"no_route": True})[0] in (200, 201)
        made_at = time.monotonic()
        wait_for(lambda: "listed" in app_names(b), 3, "b to list the app made through a")
        print(f"an app made through one skiffd was listed by the other after "
              f"{time.monotonic() - made_at:.2f} s")
        assert b.api("DELETE", "/v1/apps/listed")[0] in (200, 204)
        wait_for(lambda: "listed" not in app_names(a), 3, "a to drop the app deleted through b")


def schedule_fires(p):
    status, text = p.api("GET", "/metrics")
    assert status == 200, text
    line = next(ln for ln in text.splitlines() if ln.startswith("skiff_schedule_fires_total "))
    return int(line.split()[1])


def a_ticking_schedule(a):
    assert a.api("PUT", "/v1/apps/tick", {"no_route": True})[0] in (200, 201)
    status, body = a.api("POST", "/v1/event-mappings", {"app": "tick", "schedule": "@every 1s"})
    assert status == 201, body
    wait_for(lambda: schedule_fires(a) >= 1, 10, "the leader's first fire")


def test_only_the_leader_fires_schedules_and_the_next_one_takes_them_over(pg_dir):
    # b loads the same mapping from the store at its start, and follows
    with leader_and_follower(lambda zone: skiffd(pg_dir, zone), a_ticking_schedule) as (a, b):
        base = schedule_fires(a)
        wait_for(lambda: schedule_fires(a) >= base + 3, 10, "three more fires on the leader")
        assert schedule_fires(b) == 0, "a follower fires no schedule"
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        wait_for(lambda: leading(b), LEADER_BOUND_S, "the follower to lead after kill -9")
        wait_for(lambda: schedule_fires(b) >= 2, 10, "the new leader to fire the schedule")


def test_a_lost_change_feed_is_reopened_and_carries_changes_again(pair, pg_dir):
    a, b = pair
    deploy_through(a, "feed")
    wait_for(lambda: serves(a, "feed"), 60, "the leader to serve the app")
    # the database ends both skiffds' change feeds (their LISTEN sessions) under them
    ended = psql(pg_dir, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                         "WHERE query LIKE 'LISTEN%'")
    assert ended.strip() == "2", ended
    for p in (a, b):
        wait_for(lambda: "the change feed is reopened" in p.output(), 15,
                 "the feed to be reopened")
    wait_for(lambda: psql(pg_dir, "SELECT count(*) FROM pg_stat_activity "
                                  "WHERE query LIKE 'LISTEN%'").strip() == "2", 10,
             "both feeds to listen again")
    # what the follower writes reaches the leader again: a new route is served there
    status, body = b.api("POST", "/v1/routes", {"app": "feed", "host": "feed-two.localhost"})
    assert status in (200, 201), body
    wait_for(lambda: serves(a, "feed", "feed-two.localhost"), 10,
             "the leader to serve the route mapped through the follower")
    assert a.proc.poll() is None and b.proc.poll() is None


RACE_ROUNDS = 12


def race(a, b, calls):
    """Sends calls[0] to a and calls[1] to b at the same moment; returns both answers."""
    out = [None, None]
    gate = threading.Barrier(2)

    def send(i, p):
        method, path, body, token = calls[i]
        gate.wait(10)
        out[i] = p.api(method, path, body, token=token)
    threads = [threading.Thread(target=send, args=(i, p)) for i, p in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_one_name_made_through_two_skiffds_at_once_is_made_once(pair):
    """Two skiffds on one store both checked a new name and then wrote it, so both succeeded;
    now the store decides (a document created only when absent): of a user, an org, a space,
    a quota or an API token made through both at the same moment, one is made and the other
    refused with 409 naming it. Raced RACE_ROUNDS times each."""
    a, b = pair
    assert a.api("POST", "/v1/users", {"name": "racer", "password": "racer password ok"})[0] == 201
    status, tok = login(a, "racer", "racer password ok")
    assert status == 200, tok
    racer = tok["access_token"]
    assert b.api("GET", "/v1/tokens", token=racer)[0] == 200  # b knows the token now
    kinds = {
        "user": lambda n: ("POST", "/v1/users", {"name": n, "password": "a password ok"}, True),
        "org": lambda n: ("POST", "/v1/orgs", {"name": n}, True),
        "space": lambda n: ("POST", "/v1/orgs/default/spaces", {"name": n}, True),
        "quota": lambda n: ("POST", "/v1/quotas", {"name": n, "apps": 3}, True),
        "token": lambda n: ("POST", "/v1/tokens", {"name": n}, racer),
    }
    for kind, call in kinds.items():
        for i in range(RACE_ROUNDS):
            name = f"race-{kind}-{i}"
            answers = race(a, b, [call(name), call(name)])
            statuses = sorted(s for s, _ in answers)
            assert statuses == [201, 409], (kind, name, answers)
            refused = next(body for s, body in answers if s == 409)
            assert f'"{name}" exists already' in refused["error"]["message"], refused
    # each name is there once, seen through either skiffd once they caught up
    def listed(p, path, key, token=True):
        status, body = p.api("GET", path, token=token)
        assert status == 200, body
        return sorted(x["name"] for x in body[key] if x["name"].startswith("race-"))
    for p in (a, b):
        wait_for(lambda: len(listed(p, "/v1/users", "users")) == RACE_ROUNDS, 5,
                 "each raced user listed once")
        wait_for(lambda: len(listed(p, "/v1/orgs", "orgs")) == RACE_ROUNDS, 5,
                 "each raced org listed once")
        wait_for(lambda: len(listed(p, "/v1/quotas", "quotas")) == RACE_ROUNDS, 5,
                 "each raced quota listed once")
        wait_for(lambda: len(listed(p, "/v1/tokens", "tokens", racer)) == RACE_ROUNDS, 5,
                 "each raced token listed once")
    # a name let go (the user deleted) can be made again, through the other skiffd
    assert a.api("DELETE", "/v1/users/race-user-0")[0] == 204
    wait_for(lambda: b.api("POST", "/v1/users", {"name": "race-user-0",
                                                 "password": "a password ok"})[0] == 201, 5,
             "the name of a deleted user to be free again")


def test_a_user_made_through_one_skiffd_is_changed_through_the_other_at_once(pair):
    """A user name the copy lacks is looked for in the store off the loop (the handler runs
    again once the read is made): a user made through b is given a new password and deleted
    through a at once, and a name made through b is refused as taken through a."""
    a, b = pair
    for i in range(3):
        name = f"hop{i}"
        assert b.api("POST", "/v1/users", {"name": name, "password": "a first password"})[0] == 201
        status, body = a.api("PUT", f"/v1/users/{name}/password",
                             {"password": "a second password"})
        assert status in (200, 204), body
        status, body = a.api("POST", "/v1/users", {"name": name, "password": "yet another one"})
        assert status == 409, body
        status, body = a.api("DELETE", f"/v1/users/{name}")
        assert status == 204, body
    assert a.api("DELETE", "/v1/users/nobody-at-all")[0] == 404


def test_a_refused_caller_cannot_make_a_controller_take_an_upload(pair):
    """A refusal on a shared store is decided again once the store is read (a role may have
    been given through the other controller a moment ago), but an upload is refused at once:
    a user with no role in the space is answered as soon as its head is read, without skiffd
    waiting for (or taking) its body."""
    a, b = pair
    assert b.api("POST", "/v1/users", {"name": "uploader", "password": "an upload password"})[0] == 201
    status, tok = login(a, "uploader", "an upload password")
    assert status == 200, tok
    host, port = a.api_url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"PUT /v1/apps/up/bits?space=default/dev HTTP/1.1\r\nHost: x\r\n"
                  b"Authorization: Bearer " + tok["access_token"].encode() + b"\r\n"
                  b"Content-Type: application/octet-stream\r\nContent-Length: 100000000\r\n"
                  b"\r\n" + b"x" * 1024)
        answer = s.recv(4096).decode(errors="replace")  # before the rest of the body
    assert answer.split(" ")[1] in ("403", "404"), answer
    status, apps = a.api("GET", "/v1/apps?space=default/dev")
    assert status == 200 and "up" not in [x["name"] for x in apps["apps"]], apps


def test_made_up_tokens_cost_no_read_of_the_store(pair):
    """Tokens are signed with a key every skiffd on the store shares: a token this copy lacks
    is looked for in the store only when its signature holds. A flood of made-up tokens is
    refused without a read, so it takes none of the 50 reads a second that a token made a
    moment ago through the other skiffd needs (before, it took them all, and the log said
    so), and a real token with one character changed is refused too."""
    a, b = pair
    def made_up(i):
        return a.api("GET", "/v1/apps", token="skiffa_" + f"{i:043d}")[0]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert set(pool.map(made_up, range(300))) == {401}
    assert b.api("POST", "/v1/users", {"name": "dev8", "password": "correct horse battery"})[0] == 201
    status, tok = login(b, "dev8", "correct horse battery")
    assert status == 200, tok
    status, body = a.api("GET", "/v1/auth/me", token=tok["access_token"])
    assert status == 200 and body["user"]["name"] == "dev8", body
    access = tok["access_token"]
    changed = access[:-1] + ("B" if access[-1] != "B" else "C")
    assert a.api("GET", "/v1/apps", token=changed)[0] == 401
    # the refusals a second are logged once the next second begins: let one begin
    second = int(time.time())
    wait_for(lambda: int(time.time()) > second, 2, "the next second")
    assert made_up(300) == 401
    assert "reads for unknown tokens or user names refused" not in a.output(), a.output()


def test_a_made_up_token_is_looked_for_off_the_loop_and_its_body_not_taken(pair):
    """A made-up bearer token is refused 401 at once whatever it asks (its signature does not
    hold). A signed one the copy lacks is looked for in the store (queued) before the request
    is decided: meanwhile the request may carry a small body only, so a client sending such
    tokens (an ended one) with large bodies has none read (413), and a token made through the
    other controller a moment ago works (its body small)."""
    a, b = pair
    made_up = "skiffa_" + "A" * 43
    for method, path in (("GET", "/v1/orgs"), ("GET", "/v1/apps"), ("DELETE", "/v1/users/admin")):
        status, body = a.api(method, path, token=made_up)
        assert status == 401, (method, path, body)
    status, body = a.api("POST", "/v1/apps", {"name": "x" * 200}, token=made_up)
    assert status == 401, body
    big = json.dumps({"name": "big", "env": {"PAD": "x" * (64 << 10)}}).encode()
    status, body = a.api("POST", "/v1/apps", token=made_up, raw=big,
                         headers={"Content-Type": "application/json"})
    assert status == 401, body
    assert b.api("POST", "/v1/users", {"name": "dev9", "password": "correct horse battery"})[0] == 201
    status, ended = login(b, "dev9", "correct horse battery")
    assert status == 200, ended
    assert b.api("POST", "/v1/auth/logout", {}, token=ended["access_token"])[0] == 204
    wait_for(lambda: a.api("GET", "/v1/auth/me", token=ended["access_token"])[0] == 401,
             REVOKE_BOUND_S * 5, "the ended token refused through a")
    status, body = a.api("POST", "/v1/apps", token=ended["access_token"], raw=big,
                         headers={"Content-Type": "application/json"})
    assert status == 413, body
    status, tok = login(b, "dev9", "correct horse battery")
    assert status == 200, tok
    status, body = a.api("GET", "/v1/auth/me", token=tok["access_token"])
    assert status == 200 and body["user"]["name"] == "dev9", body
    assert "Sanitizer" not in a.output() and "runtime error" not in a.output(), a.output()
