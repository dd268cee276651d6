"""Event mappings end to end, through the CLI: topic triggers with filters, reply-topic chains
A -> B -> C, retries and dead letters with a function that fails on purpose, recorded
failures, ordered delivery, scale from zero and back, schedules, platform events, replay,
unmap, and the counts of `skiff event-mappings` and /metrics."""
import json
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request

from conftest import ROOT, Platform, out, push_function, write

FUNCTIONS = os.path.join(ROOT, "examples", "functions")


def cli_ok(platform, *args):
    r = platform.cli(*args)
    assert r.returncode == 0, out(r)
    return r


def mappings(platform, app=None):
    args = ["event-mappings", "--json"] + ([app] if app else [])
    return json.loads(cli_ok(platform, *args).stdout)["event_mappings"]


def mapping(platform, app):
    found = mappings(platform, app)
    assert len(found) == 1, found
    return found[0]


def logs(platform, app):
    return platform.cli("logs", app, "--recent").stdout


def topic_events(platform, topic):
    status, body = platform.api("GET", f"/v1/topics/{topic}/events?from=start&follow=0")
    if status != 200:
        return []
    text = body if isinstance(body, str) else json.dumps(body)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def running_instances(platform, app):
    status, body = platform.api("GET", f"/v1/apps/{app}")
    assert status == 200, body
    return [i for i in body.get("instances_detail", []) if i["state"] == "RUNNING"]


def emit(platform, topic, data, *attrs):
    r = cli_ok(platform, "emit", topic, *attrs, data)
    return r


def test_topic_filter_and_counts(platform):
    push_function(platform, "resize", os.path.join(FUNCTIONS, "resize.py"))
    r = cli_ok(platform, "map-event", "resize", "uploads", "--filter", "type=image.uploaded",
               "--filter", "subject^=cat")
    assert "mapped topic uploads to resize" in r.stdout
    emit(platform, "uploads", '{"size": 42}', "--type", "image.uploaded", "--subject", "cat.png")
    emit(platform, "uploads", '{"size": 1}', "--type", "image.deleted", "--subject", "cat.png")
    emit(platform, "uploads", '{"size": 2}', "--type", "image.uploaded", "--subject", "dog.png")
    platform.wait_for(lambda: "resizing cat.png (42 bytes)" in logs(platform, "resize"), 60,
                      "resize to log the matching event")
    m = platform.wait_for(lambda: (lambda m: m if m["delivered"] == 1 and m["filtered"] == 2
                                   and m["backlog"] == 0 else None)(mapping(platform, "resize")),
                          20, "counts to settle")
    assert m["in_flight"] == 0 and m["failed"] == 0 and m["dead_lettered"] == 0, m
    assert "dog.png" not in logs(platform, "resize")
    # the table: one row, with the counts
    r = cli_ok(platform, "event-mappings")
    row = next(l for l in r.stdout.splitlines() if " resize " in l)
    assert "topic uploads" in row and "type=image.uploaded subject^=cat" in row, r.stdout
    # /metrics exports the same counts
    status, text = platform.api("GET", "/metrics")
    assert status == 200
    assert re.search(r'skiff_event_mapping_delivered_total\{mapping="%s",app="resize",'
                     r'topic="uploads"\} 1' % m["id"], text), text


def test_chain_through_reply_topics(platform, tmp_path):
    write(tmp_path, "a.py", """
        def handle(event):
            print("A got", event["data"], flush=True)
            return {"specversion": "1.0", "type": "step.a", "data": {"n": event["data"]["n"] + 1}}
    """)
    write(tmp_path, "b.js", """
        exports.handle = async (event) => {
          console.log('B got', JSON.stringify(event.data));
          return { specversion: '1.0', type: 'step.b', data: { n: event.data.n * 10 } };
        };
    """)
    write(tmp_path, "c.sh", """
        data=$(cat)
        echo "C got $CE_TYPE $data" >&2
        echo "{\\"final\\": $data}"
    """)
    push_function(platform, "fa", os.path.join(str(tmp_path), "a.py"))
    push_function(platform, "fb", os.path.join(str(tmp_path), "b.js"))
    push_function(platform, "fc", os.path.join(str(tmp_path), "c.sh"), "main")
    cli_ok(platform, "map-event", "fa", "chain-in", "--reply-topic", "chain-ab")
    cli_ok(platform, "map-event", "fb", "chain-ab", "--reply-topic", "chain-bc")
    cli_ok(platform, "map-event", "fc", "chain-bc", "--reply-topic", "chain-out")
    emit(platform, "chain-in", '{"n": 4}', "--type", "start", "--subject", "job-1")
    events = platform.wait_for(lambda: topic_events(platform, "chain-out"), 90,
                               "the chain's last reply on chain-out")
    assert events[0]["data"] == {"final": {"n": 50}}, events
    assert events[0]["subject"] == "job-1", events  # the subject follows the chain
    assert "C got step.b" in logs(platform, "fc")


def test_retry_then_success_and_dead_letter(platform):
    push_function(platform, "flaky", os.path.join(FUNCTIONS, "flaky.py"))
    cli_ok(platform, "map-event", "flaky", "orders", "--dead-letter", "orders-dlq",
           "--retries", "5", "--backoff", "50", "--backoff-cap", "200")
    # fails twice with 500, then succeeds: retried twice, delivered once
    emit(platform, "orders", '{"fail": 2}', "--type", "order", "--id", "ev-retry")
    m = platform.wait_for(lambda: (lambda m: m if m["delivered"] == 1 else None)(
        mapping(platform, "flaky")), 60, "the retried event to be delivered")
    assert m["retried"] == 2 and m["dead_lettered"] == 0, m
    # a 400 is not retried: straight to the dead-letter topic, with the reason
    emit(platform, "orders", '{"reject": true}', "--type", "order", "--id", "ev-reject")
    dead = platform.wait_for(lambda: topic_events(platform, "orders-dlq"), 30,
                             "the rejected event on the dead-letter topic")
    assert dead[0]["id"] == "ev-reject", dead
    assert dead[0]["skiffreason"].startswith("the function answered 400"), dead
    m = platform.wait_for(lambda: (lambda m: m if m["dead_lettered"] == 1 else None)(
        mapping(platform, "flaky")), 20, "the dead-letter count")
    assert m["retried"] == 2, m  # no retry for the 400
    # always failing: exhausts 5 retries, then the dead-letter topic
    emit(platform, "orders", '{"fail": 100}', "--type", "order", "--id", "ev-exhaust")
    platform.wait_for(lambda: len(topic_events(platform, "orders-dlq")) == 2, 60,
                      "the exhausted event on the dead-letter topic")
    m = mapping(platform, "flaky")
    assert m["retried"] == 2 + 5 and m["dead_lettered"] == 2, m
    assert "attempt 6 for ev-exhaust" in logs(platform, "flaky")


def test_exhausted_without_dead_letter_is_recorded_failed(platform):
    push_function(platform, "flaky", os.path.join(FUNCTIONS, "flaky.py"))
    cli_ok(platform, "map-event", "flaky", "jobs", "--retries", "1", "--backoff", "20")
    emit(platform, "jobs", '{"fail": 100}', "--type", "job", "--id", "ev-failed")
    m = platform.wait_for(lambda: (lambda m: m if m["failed"] == 1 else None)(
        mapping(platform, "flaky")), 60, "the failed count")
    assert m["failures"][0]["id"] == "ev-failed", m
    assert "answered 500 after 2 attempts" in m["failures"][0]["reason"], m
    r = cli_ok(platform, "event-mappings", "flaky")
    assert "failed: event ev-failed" in r.stdout, r.stdout


def test_ordered_per_subject(platform, tmp_path):
    # The first attempt of event 2 of each subject fails: in ordered mode nothing after it
    # (same subject) is delivered before it succeeds.
    write(tmp_path, "order.py", """
        import time
        tried = set()
        def handle(event):
            n = event["data"]["n"]
            key = (event["subject"], n)
            if n == 2 and key not in tried:
                tried.add(key)
                raise RuntimeError("first attempt fails")
            time.sleep(0.01)
            print("ORDER", event["subject"], n, flush=True)
    """)
    push_function(platform, "order", os.path.join(str(tmp_path), "order.py"))
    cli_ok(platform, "map-event", "order", "seq", "--ordered", "--concurrency", "4",
           "--backoff", "100")
    payload = "\n".join(json.dumps({"specversion": "1.0", "id": f"{s}-{n}", "source": "/t",
                                    "type": "seq", "subject": s, "data": {"n": n}})
                        for n in range(6) for s in ("a", "b"))
    batch = [json.loads(l) for l in payload.splitlines()]
    status, body = platform.api("POST", "/v1/topics/seq/events:batch", body=batch)
    assert status == 202, body

    def delivered():
        seen = re.findall(r"ORDER (\w) (\d+)", logs(platform, "order"))
        return seen if len(seen) == 12 else None

    seen = platform.wait_for(delivered, 60, "all 12 events delivered")
    for s in ("a", "b"):
        got = [int(n) for subj, n in seen if subj == s]
        assert got == list(range(6)), (s, got)


def test_scale_from_zero_and_back(platform):
    push_function(platform, "resize", os.path.join(FUNCTIONS, "resize.py"))
    cli_ok(platform, "map-event", "resize", "uploads", "--idle-grace", "2s")
    # idle: down to zero after the grace period
    platform.wait_for(lambda: running_instances(platform, "resize") == [], 30,
                      "scale to zero after the idle grace")
    # an event starts one again and is delivered to it
    emit(platform, "uploads", '{"size": 8}', "--type", "image.uploaded", "--subject", "z.png")
    platform.wait_for(lambda: mapping(platform, "resize")["delivered"] == 1, 60,
                      "delivery from zero")
    assert len(running_instances(platform, "resize")) >= 1
    platform.wait_for(lambda: running_instances(platform, "resize") == [], 30,
                      "scale back to zero after the idle grace")
    emit(platform, "uploads", '{"size": 9}', "--type", "image.uploaded", "--subject", "y.png")
    platform.wait_for(lambda: mapping(platform, "resize")["delivered"] == 2, 60,
                      "delivery after scaling to zero again")
    m = mapping(platform, "resize")
    assert m["failed"] == 0 and m["retried"] == 0, m  # each cold start took its event at once


def test_scale_up_with_backlog(platform, tmp_path):
    write(tmp_path, "slow.py", """
        import os, time
        def handle(event):
            time.sleep(0.3)
            print("SLOW", os.environ.get("CF_INSTANCE_INDEX"), flush=True)
    """)
    push_function(platform, "slow", os.path.join(str(tmp_path), "slow.py"))
    cli_ok(platform, "map-event", "slow", "work", "--max-instances", "3")
    batch = [{"specversion": "1.0", "id": f"w{i}", "source": "/t", "type": "work", "data": i}
             for i in range(60)]
    status, body = platform.api("POST", "/v1/topics/work/events:batch", body=batch)
    assert status == 202, body
    platform.wait_for(lambda: len(running_instances(platform, "slow")) == 3, 60,
                      "3 instances for a backlog of 60 (max 3)")
    platform.wait_for(lambda: mapping(platform, "slow")["delivered"] == 60, 90, "all delivered")
    indexes = set(re.findall(r"SLOW (\d+)", logs(platform, "slow")))
    assert len(indexes) >= 2, indexes


def test_scale_down_to_what_the_work_needs(platform, tmp_path):
    write(tmp_path, "slow.py", """
        import time
        def handle(event):
            time.sleep(0.2)
    """)
    push_function(platform, "slow", os.path.join(str(tmp_path), "slow.py"))
    cli_ok(platform, "map-event", "slow", "work", "--max-instances", "3", "--idle-grace", "2s")
    batch = [{"specversion": "1.0", "id": f"w{i}", "source": "/t", "type": "work", "data": i}
             for i in range(60)]
    status, body = platform.api("POST", "/v1/topics/work/events:batch", body=batch)
    assert status == 202, body
    platform.wait_for(lambda: len(running_instances(platform, "slow")) == 3, 60, "3 instances")
    # then a trickle that one instance can serve: the others go after the grace period
    stop = threading.Event()

    def trickle():
        n = 0
        while not stop.is_set():
            platform.api("POST", "/v1/topics/work/events", body={"n": n})
            n += 1
            stop.wait(0.4)

    t = threading.Thread(target=trickle)
    t.start()
    try:
        platform.wait_for(lambda: len(running_instances(platform, "slow")) <= 2, 30,
                          "fewer instances for a trickle")
        before = mapping(platform, "slow")["delivered"]
        platform.wait_for(lambda: mapping(platform, "slow")["delivered"] > before + 2, 30,
                          "the trickle still delivered")
    finally:
        stop.set()
        t.join()
    m = platform.wait_for(lambda: (lambda m: m if m["backlog"] == 0 and m["in_flight"] == 0
                                   else None)(mapping(platform, "slow")), 60, "all delivered")
    assert m["failed"] == 0 and m["dead_lettered"] == 0, m


def test_many_events_pass_through_the_window(platform):
    # more events than a mapping holds in memory at once: reading continues as they settle
    push_function(platform, "resize", os.path.join(FUNCTIONS, "resize.py"))
    cli_ok(platform, "map-event", "resize", "bulk", "--concurrency", "8", "--max-instances", "1")
    batch = [{"specversion": "1.0", "id": f"b{i}", "source": "/t", "type": "bulk", "data": {}}
             for i in range(500)]
    status, body = platform.api("POST", "/v1/topics/bulk/events:batch", body=batch)
    assert status == 202, body
    m = platform.wait_for(lambda: (lambda m: m if m["delivered"] == 500 else None)(
        mapping(platform, "resize")), 120, "500 deliveries")
    platform.wait_for(lambda: mapping(platform, "resize")["cursor"] == 500, 10, "the cursor at 500")
    assert m["backlog"] == 0 and m["retried"] == 0, m


def test_events_wait_while_the_function_is_stopped(platform):
    # retries that fall due while no instance can run must not spin: the daemon stays
    # responsive, the events stay in the backlog, and are delivered once it is started again
    push_function(platform, "flaky", os.path.join(FUNCTIONS, "flaky.py"))
    cli_ok(platform, "map-event", "flaky", "orders", "--backoff", "20", "--backoff-cap", "50",
           "--retries", "1000")
    emit(platform, "orders", '{"fail": 3}', "--type", "order", "--id", "ev-wait")
    platform.wait_for(lambda: mapping(platform, "flaky")["retried"] >= 1, 60, "a first retry")
    cli_ok(platform, "stop", "flaky")
    for _ in range(5):
        emit(platform, "orders", '{}', "--type", "order")
    m = platform.wait_for(lambda: (lambda m: m if m["last_error"] and "stopped" in m["last_error"]
                                   else None)(mapping(platform, "flaky")), 30,
                          "the mapping to say the function is stopped")
    assert m["backlog"] >= 5 and m["failed"] == 0, m
    cli_ok(platform, "start", "flaky")
    m = platform.wait_for(lambda: (lambda m: m if m["delivered"] == 6 else None)(
        mapping(platform, "flaky")), 60, "all six delivered after the start")
    assert m["backlog"] == 0 and m["failed"] == 0 and m["dead_lettered"] == 0, m


def test_schedule(platform):
    push_function(platform, "nightly", os.path.join(FUNCTIONS, "count.sh"), "main")
    r = cli_ok(platform, "map-event", "nightly", "--schedule", "@every 1s")
    assert "schedule @every 1s" in r.stdout
    platform.wait_for(lambda: mapping(platform, "nightly")["delivered"] >= 2, 60,
                      "two schedule fires delivered")
    assert "count skiff.schedule.fired" in logs(platform, "nightly")
    r = platform.cli("map-event", "nightly", "--schedule", "61 * * * *")
    assert r.returncode == 1 and "minute" in r.stderr, out(r)
    cli_ok(platform, "unmap-event", "nightly", "--schedule")
    assert mappings(platform, "nightly") == []


def event_time(ev):
    """An event's `time` (RFC 3339, UTC, milliseconds) in seconds since the epoch."""
    from datetime import datetime, timezone
    t = datetime.strptime(ev["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return t.replace(tzinfo=timezone.utc).timestamp()


def test_schedule_makes_up_one_missed_fire_after_a_restart(platform):
    """Fires due while skiffd was down are made up for once, for the latest missed time (as
    a Kubernetes CronJob does), not once per missed fire."""
    push_function(platform, "tick", os.path.join(FUNCTIONS, "count.sh"), "main")
    cli_ok(platform, "map-event", "tick", "--schedule", "@every 1s")
    topic = mapping(platform, "tick")["topic"]
    platform.wait_for(lambda: len(topic_events(platform, topic)) >= 2, 30, "two fires")
    platform.stop()
    stopped_at = time.time()
    # let at least three fires come due while skiffd is down
    platform.wait_for(lambda: time.time() >= stopped_at + 3.5, 10, "fires to be missed")
    platform.start()
    # skiffd loads its mappings before its API answers: the made-up fire was due by now
    ready_at = time.time()

    def two_after_restart():
        events = topic_events(platform, topic)
        times = [event_time(e) for e in events]
        return events if len([t for t in times if t > stopped_at]) >= 2 else None
    events = platform.wait_for(two_after_restart, 30, "fires after the restart")
    times = [event_time(e) for e in events]
    assert times == sorted(times), times
    last_before_stop = max(t for t in times if t < stopped_at)
    after = [t for t in times if t > last_before_stop]
    made_up = after[0]
    # exactly one made-up fire, for the latest time that came due while skiffd was down or
    # starting (not one per missed fire: with 3.5 s down, at least two were skipped) ...
    assert made_up >= stopped_at + 2.5, (times, stopped_at, ready_at)
    assert made_up <= ready_at + 0.5, (times, stopped_at, ready_at)
    # ... and the schedule goes on from it, one interval apart
    assert round(after[1] - made_up, 3) == 1.0, (times, stopped_at, ready_at)


def test_platform_event(platform):
    push_function(platform, "notify", os.path.join(FUNCTIONS, "count.sh"), "main")
    push_function(platform, "resize", os.path.join(FUNCTIONS, "resize.py"))
    cli_ok(platform, "map-event", "notify", "--on-app-event", "resize:stopped")
    cli_ok(platform, "stop", "resize")
    platform.wait_for(lambda: mapping(platform, "notify")["delivered"] >= 1, 60,
                      "the stopped event delivered")
    assert "count skiff.app.stopped" in logs(platform, "notify")
    events = topic_events(platform, "skiff.app.stopped")
    assert any(e["subject"] == "resize" for e in events), events
    # a new droplet is the staged event, for every app when no app is named
    cli_ok(platform, "map-event", "notify", "--on-app-event", "staged")
    push_function(platform, "resize", os.path.join(FUNCTIONS, "resize.py"))
    platform.wait_for(lambda: "count skiff.app.staged" in logs(platform, "notify"), 60,
                      "the staged event delivered")
    staged = [m for m in mappings(platform, "notify") if m["on_app_event"] == "*:staged"]
    assert staged and staged[0]["delivered"] >= 1, staged


def test_replay_and_unmap(platform):
    push_function(platform, "resize", os.path.join(FUNCTIONS, "resize.py"))
    cli_ok(platform, "map-event", "resize", "uploads")
    for i in range(3):
        emit(platform, "uploads", json.dumps({"size": i}), "--type", "image.uploaded")
    platform.wait_for(lambda: mapping(platform, "resize")["delivered"] == 3, 60, "3 deliveries")
    r = cli_ok(platform, "replay", "resize", "uploads", "--since", "1h")
    assert "replaying 3 events of uploads to resize" in r.stdout, r.stdout
    platform.wait_for(lambda: mapping(platform, "resize")["delivered"] == 6, 60,
                      "3 more deliveries after replay")
    r = cli_ok(platform, "replay", "resize", "uploads", "--since", "2")
    assert "from offset 2" in r.stdout
    platform.wait_for(lambda: mapping(platform, "resize")["delivered"] == 7, 60, "offset replay")
    r = cli_ok(platform, "unmap-event", "resize", "uploads")
    assert "unmapped topic uploads from resize" in r.stdout
    assert mappings(platform, "resize") == []
    r = platform.cli("unmap-event", "resize", "uploads")
    assert r.returncode == 1 and "no such event mapping" in r.stderr, out(r)


def test_mapping_errors(platform):
    r = platform.cli("map-event", "ghost", "uploads")
    assert r.returncode == 1 and "no app named 'ghost'" in r.stderr, out(r)
    push_function(platform, "resize", os.path.join(FUNCTIONS, "resize.py"))
    r = platform.cli("map-event", "resize", "uploads", "--filter", "type")
    assert r.returncode == 1 and "no '='" in r.stderr, out(r)
    r = platform.cli("map-event", "resize")
    assert r.returncode == 2 and "exactly one trigger" in r.stderr, out(r)
    r = platform.cli("map-event", "resize", "--on-app-event", "shop:exploded")
    assert r.returncode == 1 and "crashed" in r.stderr, out(r)
    status, body = platform.api("POST", "/v1/event-mappings", body={"app": "resize",
                                                                    "topic": "t", "x": 1})
    assert status == 400 and body["error"]["code"] == "unknown_field", body
    status, body = platform.api("DELETE", "/v1/event-mappings/nope")
    assert status == 404, body
    status, body = platform.api("POST", "/v1/event-mappings", raw=b"{not json",
                                headers={"Content-Type": "application/json"})
    assert status == 400, body


def test_mappings_survive_restart(platform):
    push_function(platform, "resize", os.path.join(FUNCTIONS, "resize.py"))
    cli_ok(platform, "map-event", "resize", "uploads", "--retries", "3")
    emit(platform, "uploads", '{"size": 5}', "--type", "image.uploaded")
    platform.wait_for(lambda: mapping(platform, "resize")["delivered"] == 1, 60, "delivery")
    platform.wait_for(lambda: mapping(platform, "resize")["cursor"] == 1, 10, "cursor commit")
    platform.stop()
    platform.start()
    m = mapping(platform, "resize")
    assert m["retries"] == 3 and m["delivered"] == 1 and m["cursor"] == 1, m
    emit(platform, "uploads", '{"size": 6}', "--type", "image.uploaded")
    platform.wait_for(lambda: mapping(platform, "resize")["delivered"] == 2, 60,
                      "delivery after restart")


def test_kill_9_while_publishing_and_delivering(platform, tmp_path):
    """Every event that got 202 is delivered at least once across kill -9 of skiffd (three
    times, while publishing and delivering); duplicates are allowed and counted."""
    # the function tells what it saw the durable way: it publishes the event's id to "seen"
    # (with the SDK, as an app would vendor it); its container cannot write the test's files
    sdk = open(os.path.join(ROOT, "sdk", "python", "skiff_events.py")).read()
    (tmp_path / "rec.py").write_text(sdk + """

def handle(event):
    publish("seen", {"id": event["id"]}, type="seen")
""")
    push_function(platform, "rec", os.path.join(str(tmp_path), "rec.py"))

    def seen_ids():
        status, text = platform.api("GET", "/v1/topics/seen/events?from=start")
        if status != 200:
            return []
        lines = [text] if isinstance(text, dict) else [json.loads(l) for l in text.splitlines() if l.strip()]
        return [e["data"]["id"] for e in lines]

    cli_ok(platform, "map-event", "rec", "crash", "--concurrency", "4", "--backoff", "50",
           "--backoff-cap", "500")
    acked = []
    stop = threading.Event()

    def publisher():
        n = 0
        while not stop.is_set():
            eid = f"e{n}"
            n += 1
            req = urllib.request.Request(
                platform.api_url + "/v1/topics/crash/events", data=b"{}", method="POST",
                headers={"Authorization": "Bearer " + platform.token, "ce-id": eid,
                         "ce-source": "/crash", "ce-type": "crash", "ce-specversion": "1.0",
                         "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status == 202:
                        acked.append(eid)
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(0.01)  # the daemon is down or restarting

    t = threading.Thread(target=publisher)
    t.start()
    try:
        for _ in range(3):
            platform.wait_for(lambda: len(acked) > 0 and seen_ids(), 60,
                              "publishing and delivering")
            time.sleep(0.5)
            platform.proc.send_signal(signal.SIGKILL)
            platform.proc.wait()
            platform.start()
        time.sleep(0.5)
    finally:
        stop.set()
        t.join()

    def all_seen():
        seen = seen_ids()
        missing = set(acked) - set(seen)
        return (seen, missing) if not missing else None

    seen, _ = platform.wait_for(all_seen, 120, f"all {len(acked)} acknowledged events delivered")
    duplicates = len(seen) - len(set(seen))
    print(f"kill -9 x3: {len(acked)} events acknowledged, all delivered; "
          f"{duplicates} duplicate deliveries")


def test_function_inside_an_app(platform, tmp_path):
    """A function that lives in an app's code: the function buildpack supplies its server to
    the app's droplet, the function runs as its own process type, scales from zero with its
    events and back, while the app's web process keeps running."""
    write(tmp_path, "app.py", """
        import http.server, os
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"shop\\n")
        http.server.HTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
    """)
    write(tmp_path, "thumbs.py", """
        def make(event):
            print("THUMB", event.get("subject"), flush=True)
    """)
    write(tmp_path, "Procfile", """
        web: python3 app.py
        thumbs: python3 .skiff/function/skiff_function.py thumbs.py:make
    """)
    cli_ok(platform, "push", "shop", "-p", str(tmp_path), "-b", "function-python", "-b", "python")
    cli_ok(platform, "map-event", "shop", "uploads", "--process", "thumbs", "--idle-grace", "2s")
    emit(platform, "uploads", "{}", "--type", "image.uploaded", "--subject", "cat.png")
    platform.wait_for(lambda: "THUMB cat.png" in logs(platform, "shop"), 60, "the function ran")
    platform.wait_for(lambda: mapping(platform, "shop")["delivered"] == 1, 30, "delivered")
    # the instance started from zero took the event at the first attempt: it was ready only
    # once its port accepted a connection, not as soon as its process ran
    m = mapping(platform, "shop")
    assert m["retried"] == 0 and m["failed"] == 0, m

    def processes():
        status, app = platform.api("GET", "/v1/apps/shop")
        return sorted(i["process_type"] for i in app["instances_detail"] if i["state"] == "RUNNING")

    platform.wait_for(lambda: processes() == ["web"], 30, "thumbs back to zero, web still up")


def test_deleting_an_app_removes_its_mappings(platform):
    push_function(platform, "resize", os.path.join(FUNCTIONS, "resize.py"))
    push_function(platform, "flaky", os.path.join(FUNCTIONS, "flaky.py"))
    cli_ok(platform, "map-event", "resize", "uploads")
    cli_ok(platform, "map-event", "flaky", "uploads")
    cli_ok(platform, "delete", "resize", "-f")
    platform.wait_for(lambda: [m["app"] for m in mappings(platform)] == ["flaky"], 30,
                      "the deleted app's mapping to go")
    emit(platform, "uploads", "{}", "--type", "t")
    platform.wait_for(lambda: mapping(platform, "flaky")["delivered"] == 1, 60,
                      "the other mapping still delivers")


def test_shutdown_with_deliveries_in_flight(tmp_path):
    """skiffd stops cleanly (exit 0: no leak, nothing left open) while a delivery is in flight
    on an instance that is itself stopping, and the event is delivered after the restart."""
    write(tmp_path, "slow.py", f"""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # keeps its call open while stopping
        def handle(event):
            time.sleep(8)
    """)
    p = Platform().start()
    try:
        push_function(p, "slow", os.path.join(str(tmp_path), "slow.py"))
        cli_ok(p, "map-event", "slow", "t")
        emit(p, "t", "{}", "--type", "x", "--id", "ev-1")
        p.wait_for(lambda: mapping(p, "slow")["in_flight"] == 1, 60, "the delivery under way")
        cli_ok(p, "stop", "slow")  # its instance leaves while the call runs
        p.stop()
        assert p.proc.returncode == 0, p.output()
        p.start()
        cli_ok(p, "start", "slow")
        p.wait_for(lambda: mapping(p, "slow")["delivered"] == 1, 60, "delivery after the restart")
    finally:
        p.close()
