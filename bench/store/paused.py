"""skiffd on PostgreSQL while its server stops answering (SIGSTOP of the throwaway server):
the slowest GET /v1/info and GET /v1/apps during PAUSE_S seconds, whether skiffd exited within
EXIT_S of SIGTERM with the server still silent, and the statements each of its connections
sent during IDLE_S seconds before (log_statement on the server, by backend pid).

    SKIFF_BIN_DIR=BUILD/rel /usr/bin/python3 bench/store/paused.py
    SCALE_WHILE_PAUSED=1 SKIFF_BIN_DIR=BUILD/rel /usr/bin/python3 bench/store/paused.py
    MAP_DELETE_WHILE_PAUSED=1 SKIFF_BIN_DIR=BUILD/rel /usr/bin/python3 bench/store/paused.py
    DOMAINS_MAPPINGS_WHILE_PAUSED=1 SKIFF_BIN_DIR=BUILD/rel /usr/bin/python3 bench/store/paused.py
    AUTH_LABEL_WHILE_PAUSED=1 SKIFF_BIN_DIR=BUILD/rel /usr/bin/python3 bench/store/paused.py
    SETTINGS_WHILE_PAUSED=1 SKIFF_BIN_DIR=BUILD/rel /usr/bin/python3 bench/store/paused.py

With SCALE_WHILE_PAUSED=1, a PATCH of the app's instances is sent from a thread of its own as
the server stops (an app write): the line then also gives when that PATCH was answered. With
MAP_DELETE_WHILE_PAUSED=1, likewise a route's map (POST /v1/routes) and another app's
deletion (DELETE /v1/apps/NAME), each from a thread of its own. With
DOMAINS_MAPPINGS_WHILE_PAUSED=1, a domain's create (POST /v1/domains), an event mapping's
create (POST /v1/event-mappings) and another's delete, and the audit list
(GET /v1/admin/audit_events). With AUTH_LABEL_WHILE_PAUSED=1,
likewise a login (POST /v1/auth/token, a password grant of a user made before), a token
refresh, a role given (PUT .../roles/SpaceAuditor) and a label set (PATCH .../metadata).
With SETTINGS_WHILE_PAUSED=1,
the app's environment set, its autoscaling policy set, its ssh turned off and a GET of an app
nobody has (a name the store's copy lacks), each from a thread of its own.

Run it with two builds (SKIFF_BIN_DIR) to compare: it prints one line of figures per run."""
import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "e2e"))
from conftest import Platform, postgres_server_pids, throwaway_postgres  # noqa: E402

PAUSE_S = float(os.environ.get("PAUSE_S", "5"))
IDLE_S = float(os.environ.get("IDLE_S", "10"))
EXIT_S = float(os.environ.get("EXIT_S", "30"))
SCALE = os.environ.get("SCALE_WHILE_PAUSED", "0") == "1"
MAP_DELETE = os.environ.get("MAP_DELETE_WHILE_PAUSED", "0") == "1"
DOMAINS_MAPPINGS = os.environ.get("DOMAINS_MAPPINGS_WHILE_PAUSED", "0") == "1"
AUTH_LABEL = os.environ.get("AUTH_LABEL_WHILE_PAUSED", "0") == "1"
PASSWORD = "correct horse battery"
SETTINGS = os.environ.get("SETTINGS_WHILE_PAUSED", "0") == "1"


def signal_all(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def psql(url, sql):
    subprocess.run(["psql", "-Atq", url, "-c", sql], check=True, capture_output=True)


def timed(call):
    t0 = time.monotonic()
    try:
        call()
    except Exception:  # a timeout counts as its time
        pass
    return time.monotonic() - t0


def main():
    with throwaway_postgres() as d:
        url = f"postgresql:///postgres?host={d}&user=postgres"
        psql(url, "ALTER SYSTEM SET log_statement = 'all'")
        psql(url, "ALTER SYSTEM SET log_line_prefix = '%p '")
        psql(url, "SELECT pg_reload_conf()")
        p = Platform(extra_args=["--store", url]).start()
        pids = []
        try:
            for name in ("bench-app", "bench-doomed") if MAP_DELETE else ("bench-app",):
                status, body = p.api("POST", "/v1/apps", {"name": name})
                assert status == 201, body
            if DOMAINS_MAPPINGS:
                status, unmapped = p.api("POST", "/v1/event-mappings",
                                         {"app": "bench-app", "topic": "bench-old"})
                assert status == 201, unmapped
            if AUTH_LABEL:
                status, body = p.api("POST", "/v1/users", {"name": "bench-dev",
                                                           "password": PASSWORD})
                assert status == 201, body
                status, first = p.api("POST", "/v1/auth/token", {
                    "grant_type": "password", "username": "bench-dev", "password": PASSWORD},
                    token=False)
                assert status == 200, first
                status, body = p.api("GET", "/v1/apps/bench-app/metadata")
                assert status == 200, body
            log = os.path.join(d, "server.log")
            start = os.path.getsize(log)
            time.sleep(IDLE_S)
            with open(log, errors="replace") as f:
                f.seek(start)
                lines = f.read().splitlines()
            per_pid = collections.Counter()
            for line in lines:
                m = re.match(r"(\d+) LOG:  (statement|execute)", line)
                if m:
                    per_pid[m.group(1)] += 1
            pids = postgres_server_pids(d)
            signal_all(pids, signal.SIGSTOP)
            writes = {}  # what the request is called: its call
            if SCALE:
                writes["the PATCH of instances"] = lambda: p.api(
                    "PATCH", "/v1/apps/bench-app", {"instances": 2})
            if MAP_DELETE:
                writes["the map of a route"] = lambda: p.api(
                    "POST", "/v1/routes", {"app": "bench-app", "host": "bench-extra.localhost"})
                writes["the app's deletion"] = lambda: p.api("DELETE", "/v1/apps/bench-doomed")
            if DOMAINS_MAPPINGS:
                writes["the domain's create"] = lambda: p.api(
                    "POST", "/v1/domains", {"name": "bench-paused.test"})
                writes["the mapping's create"] = lambda: p.api(
                    "POST", "/v1/event-mappings", {"app": "bench-app", "topic": "bench-new"})
                writes["the mapping's delete"] = lambda: p.api(
                    "DELETE", f"/v1/event-mappings/{unmapped['id']}")
                writes["the audit list"] = lambda: p.api("GET", "/v1/admin/audit_events")
            if AUTH_LABEL:
                writes["the login"] = lambda: p.api("POST", "/v1/auth/token", {
                    "grant_type": "password", "username": "bench-dev", "password": PASSWORD},
                    token=False)
                writes["the refresh"] = lambda: p.api("POST", "/v1/auth/token", {
                    "grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
                    token=False)
                writes["the role"] = lambda: p.api(
                    "PUT", "/v1/orgs/default/spaces/dev/users/bench-dev/roles/SpaceAuditor")
                writes["the label"] = lambda: p.api(
                    "PATCH", "/v1/apps/bench-app/metadata", {"labels": {"tier": "paused"}})
            if SETTINGS:
                writes["the env set"] = lambda: p.api(
                    "PUT", "/v1/apps/bench-app/env", {"FLAVOUR": "paused"})
                writes["the autoscaling policy"] = lambda: p.api(
                    "PUT", "/v1/apps/bench-app/autoscale", {"max_instances": 4})
                writes["the ssh toggle"] = lambda: p.api(
                    "PATCH", "/v1/apps/bench-app/features/ssh", {"enabled": False})
                writes["the GET of an unknown app"] = lambda: p.api("GET", "/v1/apps/nobody")
            took = {}

            def send(what, call):
                took[what] = timed(call)
            for what, call in writes.items():
                threading.Thread(target=send, args=(what, call), daemon=True).start()
            slowest, calls = 0.0, 0
            deadline = time.monotonic() + PAUSE_S
            while time.monotonic() < deadline:
                slowest = max(slowest, timed(p.info),
                              timed(lambda: p.api("GET", "/v1/apps")))
                calls += 2
            scaled = "".join(f"; {what}: answered after {took[what]:.3f} s" if what in took
                             else f"; {what}: not answered while paused" for what in writes)
            t0 = time.monotonic()
            p.proc.send_signal(signal.SIGTERM)
            try:
                p.proc.wait(EXIT_S)
                exit_s = f"{time.monotonic() - t0:.1f} s"
            except subprocess.TimeoutExpired:
                exit_s = f"not within {EXIT_S:.0f} s"
            print(f"{os.environ.get('SKIFF_BIN_DIR')}: idle {IDLE_S:.0f} s: statements per "
                  f"connection {sorted(per_pid.values(), reverse=True)}; server paused "
                  f"{PAUSE_S:.0f} s: {calls} API calls, slowest {slowest:.3f} s{scaled}; exit "
                  f"after SIGTERM while paused: {exit_s}")
        finally:
            signal_all(pids, signal.SIGCONT)
            p.close()


main()
