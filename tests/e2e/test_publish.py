"""Publishing events: the API in CloudEvents binary, structured and wrapped modes, batches,
malformed events, listing and reading topics, the emit/topics/tail commands, and the C-less
SDKs (Python, Node.js) against a real skiffd."""
import json
import os
import subprocess
import sys
import threading

import pytest

from conftest import ROOT, BIN_DIR

CE = {"ce-specversion": "1.0", "ce-id": "e-1", "ce-source": "/tests", "ce-type": "t.created"}


def read_topic(platform, topic, **query):
    q = "&".join("%s=%s" % kv for kv in query.items())
    status, text = platform.api("GET", "/v1/topics/%s/events?%s" % (topic, q))
    assert status == 200, text
    if isinstance(text, dict):  # a single line parses as one JSON object
        return [text]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_publish_binary_mode_is_durable_and_readable(shared_platform):
    p = shared_platform
    status, body = p.api("POST", "/v1/topics/orders/events", raw=b'{"total": 3}',
                         headers={**CE, "ce-subject": "order%201", "ce-region": "eu",
                                  "Content-Type": "application/json"})
    assert status == 202, body
    assert body["id"] == "e-1"
    offset = body["offset"]
    events = read_topic(p, "orders", **{"from": offset})
    ev = events[0]
    assert ev["offset"] == offset
    assert ev["type"] == "t.created" and ev["source"] == "/tests"
    assert ev["subject"] == "order 1"  # percent-decoded, as the HTTP binding says
    assert ev["region"] == "eu"
    assert ev["data"] == {"total": 3}
    assert ev["time"].endswith("Z")


def test_publish_structured_and_wrapped(shared_platform):
    p = shared_platform
    structured = {"specversion": "1.0", "id": "s-1", "source": "/shop", "type": "order.paid",
                  "subject": "o-9", "data": {"amount": 12}}
    status, body = p.api("POST", "/v1/topics/payments/events", raw=json.dumps(structured).encode(),
                         headers={"Content-Type": "application/cloudevents+json"})
    assert status == 202, body
    status, body = p.api("POST", "/v1/topics/payments/events", raw=b"plain words",
                         headers={"Content-Type": "text/plain"})
    assert status == 202, body
    wrapped_id = body["id"]
    events = read_topic(p, "payments", **{"from": "start"})
    assert events[0]["id"] == "s-1" and events[0]["data"] == {"amount": 12}
    wrapped = [e for e in events if e["id"] == wrapped_id][0]
    assert wrapped["type"] == "skiff.event"
    assert wrapped["source"] == "/skiff/api"
    assert wrapped["data"] == "plain words"


@pytest.mark.parametrize("drop,named", [("ce-id", "'id'"), ("ce-source", "'source'"),
                                        ("ce-type", "'type'"), ("ce-specversion", "'specversion'")])
def test_missing_attribute_is_400_naming_it(shared_platform, drop, named):
    headers = {k: v for k, v in CE.items() if k != drop}
    status, body = shared_platform.api("POST", "/v1/topics/orders/events", raw=b"x",
                                       headers=headers)
    assert status == 400, body
    assert named in body["error"]["message"]


def test_malformed_events_are_400_with_a_reason(shared_platform):
    p = shared_platform
    status, body = p.api("POST", "/v1/topics/orders/events", raw=b"x",
                         headers={**CE, "ce-specversion": "0.3"})
    assert status == 400 and "'specversion'" in body["error"]["message"]
    status, body = p.api("POST", "/v1/topics/orders/events", raw=b"x",
                         headers={**CE, "ce-time": "last tuesday"})
    assert status == 400 and "'time'" in body["error"]["message"]
    status, body = p.api("POST", "/v1/topics/orders/events", raw=b"x",
                         headers={**CE, "ce-Not_Valid": "1"})
    assert status == 400 and "ce-not_valid" in body["error"]["message"].lower()
    status, body = p.api("POST", "/v1/topics/orders/events", raw=b"{broken",
                         headers={"Content-Type": "application/cloudevents+json"})
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, body = p.api("POST", "/v1/topics/Not_A_Topic/events", raw=b"x")
    assert status == 400 and body["error"]["code"] == "invalid_name"
    status, body = p.api("POST", "/v1/topics/orders/events", raw=b"x", token=False)
    assert status == 401
    # the daemon is still there
    assert p.info()["version"]


def test_ids_that_need_escaping_come_back_as_sent(shared_platform):
    p = shared_platform
    odd = ['q"uote', "back\\slash", "caf\u00e9 \u2603"]
    status, body = p.api("POST", "/v1/topics/orders/events", raw=b"{}",
                         headers={**CE, "ce-id": odd[0], "Content-Type": "application/json"})
    assert status == 202 and body["id"] == odd[0], body
    batch = [{"specversion": "1.0", "id": i, "source": "/odd", "type": "o"} for i in odd]
    status, body = p.api("POST", "/v1/topics/orders/events:batch", body=batch)
    assert status == 202, body
    assert [e["id"] for e in body["events"]] == odd


def test_event_over_the_record_limit_names_the_limit(shared_platform):
    p = shared_platform
    status, body = p.api("POST", "/v1/topics/orders/events", raw=b"x" * (2 << 20),
                         headers={**CE, "Content-Type": "application/octet-stream"})
    assert status == 413 and body["error"]["code"] == "too_large", body
    assert "1048576 bytes" in body["error"]["message"], body


def test_batch_is_one_durable_append(shared_platform):
    p = shared_platform
    batch = [{"specversion": "1.0", "id": "b-%d" % i, "source": "/batch", "type": "b",
              "data": {"i": i}} for i in range(50)]
    status, body = p.api("POST", "/v1/topics/batched/events:batch", body=batch)
    assert status == 202, body
    assert body["count"] == 50 and body["first_offset"] == body["events"][0]["offset"]
    assert [e["id"] for e in body["events"]] == ["b-%d" % i for i in range(50)]
    offsets = [e["offset"] for e in body["events"]]
    assert offsets == list(range(offsets[0], offsets[0] + 50))
    events = read_topic(p, "batched", **{"from": offsets[0], "limit": 50})
    assert [e["data"]["i"] for e in events] == list(range(50))
    # one bad event refuses the whole batch, naming it
    batch[7] = {"specversion": "1.0", "id": "x", "type": "b"}
    status, body = p.api("POST", "/v1/topics/batched/events:batch", body=batch)
    assert status == 400 and "event 7" in body["error"]["message"]
    assert "'source'" in body["error"]["message"]
    status, topics = p.api("GET", "/v1/topics")
    batched = [t for t in topics["topics"] if t["name"] == "batched"][0]
    assert batched["events"] == 50


def test_topics_and_read_positions(shared_platform):
    p = shared_platform
    for i in range(3):
        status, _ = p.api("POST", "/v1/topics/positions/events", raw=b"%d" % i,
                          headers={"Content-Type": "text/plain"})
        assert status == 202
    status, body = p.api("GET", "/v1/topics")
    t = [t for t in body["topics"] if t["name"] == "positions"][0]
    assert t["events"] == 3 and t["first_offset"] == 0 and t["last_offset"] == 2
    assert [e["data"] for e in read_topic(p, "positions", **{"from": 1})] == ["1", "2"]
    assert read_topic(p, "positions", **{"from": "2020-01-01T00:00:00Z", "limit": 1})[0]["offset"] == 0
    assert read_topic(p, "positions", **{"from": "1h", "limit": 1})[0]["offset"] == 0
    assert read_topic(p, "positions", **{"from": "end"}) == []
    status, body = p.api("GET", "/v1/topics/positions/events?from=soon")
    assert status == 400 and "from=soon" in body["error"]["message"]
    status, body = p.api("GET", "/v1/topics/never-published/events")
    assert status == 404


def test_cli_emit_topics_tail(shared_platform):
    p = shared_platform
    r = p.cli("emit", "uploads", "--type", "image.uploaded", "--subject", "cat.png", '{"size": 42}')
    assert r.returncode == 0, r.stderr
    assert "published" in r.stdout and "uploads" in r.stdout
    r = p.cli("emit", "uploads", "-", input="from stdin")
    assert r.returncode == 0, r.stderr
    r = p.cli("topics")
    assert r.returncode == 0 and "uploads" in r.stdout
    r = p.cli("tail", "uploads", "--from", "start", "--no-follow")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "image.uploaded cat.png" in lines[0] and '{"size":42}' in lines[0]
    assert "from stdin" in lines[1]
    r = p.cli("emit", "Bad_Topic", "x")
    assert r.returncode != 0 and "not valid" in r.stderr


def test_cli_tail_follows_live(shared_platform):
    p = shared_platform
    proc = subprocess.Popen([os.path.join(BIN_DIR, "skiff"), "tail", "live"], env=p.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    reader = threading.Thread(target=lambda: [seen.append(l) for l in proc.stdout], daemon=True)
    reader.start()
    try:
        # publish until the follower (which starts at the end) has shown one of ours
        def shown():
            p.cli("emit", "live", "--type", "ping", "hello-live", check=True)
            return any("ping" in l and "hello-live" in l for l in seen)
        p.wait_for(shown, timeout=20, what="skiff tail to print a new event", interval=0.2)
    finally:
        proc.terminate()
        proc.wait(10)


def sdk_env(p):
    env = p.env()
    env["SKIFF_EVENTS_URL"] = p.api_url + "/v1"
    env["SKIFF_EVENTS_TOKEN"] = p.token
    env["VCAP_APPLICATION"] = json.dumps({"application_name": "sdk-test"})
    return env


def test_python_sdk_publishes(shared_platform):
    p = shared_platform
    code = ("import json, sys; sys.path.insert(0, 'sdk/python'); import skiff_events as s\n"
            "print(json.dumps(s.publish('sdk-py', {'n': 1}, type='py.test', subject='caf\u00e9')))\n"
            "try:\n s.publish('Bad_Topic', 'x')\nexcept s.SkiffEventsError as e:\n print('refused', e.status, e)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=sdk_env(p), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    first, refused = r.stdout.splitlines()
    ack = json.loads(first)
    assert refused.startswith("refused 400") and "not valid" in refused
    ev = read_topic(p, "sdk-py", **{"from": ack["offset"]})[0]
    assert ev["id"] == ack["id"]
    assert ev["type"] == "py.test" and ev["subject"] == "caf\u00e9"
    assert ev["source"] == "/apps/sdk-test" and ev["data"] == {"n": 1}


def test_node_sdk_publishes(shared_platform):
    p = shared_platform
    code = ("const s = require('./sdk/node');\n"
            "(async () => {\n"
            "  console.log(JSON.stringify(await s.publish('sdk-node', {n: 2}, {type: 'node.test', subject: 'x y'})));\n"
            "  try { await s.publish('Bad_Topic', 'x'); } catch (e) { console.log('refused', e.status, e.message); }\n"
            "})();\n")
    r = subprocess.run(["node", "-e", code], cwd=ROOT, env=sdk_env(p), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    first, refused = r.stdout.splitlines()
    ack = json.loads(first)
    assert refused.startswith("refused 400") and "not valid" in refused
    ev = read_topic(p, "sdk-node", **{"from": ack["offset"]})[0]
    assert ev["id"] == ack["id"]
    assert ev["type"] == "node.test" and ev["subject"] == "x y"
    assert ev["source"] == "/apps/sdk-test" and ev["data"] == {"n": 2}


def test_instance_token_may_publish_and_nothing_else(platform, tmp_path):
    """A function's instance publishes with its own SKIFF_EVENTS_URL/TOKEN, through the Python
    SDK (pasted into the snippet, as an app would vendor it), and is refused everything else."""
    sdk = open(os.path.join(ROOT, "sdk", "python", "skiff_events.py")).read()
    fn = tmp_path / "publisher.py"
    fn.write_text(sdk + '''

def _status(method, path):
    req = urllib.request.Request(os.environ["SKIFF_EVENTS_URL"].rstrip("/") + path, method=method,
                                 headers={"Authorization": "Bearer " + os.environ["SKIFF_EVENTS_TOKEN"]})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _plain(path, body):
    req = urllib.request.Request(os.environ["SKIFF_EVENTS_URL"].rstrip("/") + path, data=body,
                                 method="POST", headers={"Content-Type": "text/plain",
                                 "Authorization": "Bearer " + os.environ["SKIFF_EVENTS_TOKEN"]})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())["offset"]


def handle(event):
    ack = publish("from-app", {"via": "sdk"}, type="app.said")
    return {"offset": ack["offset"], "wrapped": _plain("/topics/from-app/events", b"bare"),
            "list": _status("GET", "/topics"), "apps": _status("GET", "/apps"),
            "read": _status("GET", "/topics/from-app/events")}
''')
    p = platform
    p.cli("push", "publisher", "--function", "%s:handle" % fn, check=True, timeout=300)
    r = p.cli("invoke", "publisher", "{}", check=True, timeout=60)
    reply = json.loads(r.stdout[r.stdout.index("{"):])
    # a container's SKIFF_EVENTS_URL serves nothing but publishing (404); the API itself
    # refuses an instance token anything else (403, with --isolation process)
    assert {reply["list"], reply["apps"], reply["read"]} <= {403, 404}, reply
    ev = read_topic(p, "from-app", **{"from": reply["offset"]})[0]
    assert ev["type"] == "app.said" and ev["data"] == {"via": "sdk"}
    assert ev["source"] == "/apps/publisher"  # from VCAP_APPLICATION
    wrapped = read_topic(p, "from-app", **{"from": reply["wrapped"]})[0]
    assert wrapped["type"] == "skiff.event" and wrapped["data"] == "bare"
    assert wrapped["source"] == "/apps/publisher"  # the platform knows who published


def test_garbage_never_crashes_the_daemon(shared_platform):
    """Deterministic junk: broken JSON, wrong types, odd percent-encodings, deep nesting,
    non-UTF-8 and too many headers. Every answer is a 4xx with a message; skiffd stays up."""
    import random
    rnd = random.Random(4)
    p = shared_platform
    structured = {"Content-Type": "application/cloudevents+json"}
    bodies = [b"", b"null", b"[]", b"{}", b'{"specversion": 1}', b"[" * 5000 + b"]" * 5000,
              b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"!!"}',
              b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AA=="}',
              b'{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":{"nested":1}}',
              b'{"specversion":"1.0","id":"\xff\xfe","source":"/s","type":"t"}']
    bodies += [bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 200))) for _ in range(30)]
    for body in bodies:
        status, answer = p.api("POST", "/v1/topics/junk/events", raw=body, headers=structured)
        assert 400 <= status < 500, (body[:40], status, answer)
        assert answer["error"]["message"]
    for value in ["%", "%4", "%zz", "%00", "%FF%FE", "a%0Db", "x" * 5000]:
        status, answer = p.api("POST", "/v1/topics/junk/events", raw=b"x",
                               headers={**CE, "ce-subject": value})
        assert 400 <= status < 500 or status == 202, (value, status, answer)
    many = {**CE, **{"ce-x%d" % i: "v" for i in range(40)}}
    status, answer = p.api("POST", "/v1/topics/junk/events", raw=b"x", headers=many)
    assert status == 400 and "extension" in answer["error"]["message"]
    status, answer = p.api("POST", "/v1/topics/junk/events:batch", raw=b'[1, "two", null]',
                           headers={"Content-Type": "application/json"})
    assert status == 400 and "event 0" in answer["error"]["message"]
    assert p.info()["version"]


def _pipelined(platform, requests):
    """Sends every request on one connection at once, then reads answers until the server
    closes the connection or every request has one: their statuses and bodies, in order."""
    import socket
    sock = socket.create_connection(("127.0.0.1", platform.api_port), timeout=30)
    sock.sendall(b"".join(requests))
    data, answers = b"", []
    while len(answers) < len(requests):
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(data) >= end + 4 + length:
                body = data[end + 4:end + 4 + length]
                answers.append((int(head.split()[1]), json.loads(body) if body else None))
                data = data[end + 4 + length:]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    return answers


def test_pipelined_publishes_answered_in_order_each_authorised(shared_platform):
    """40 publishes sent at once on one connection, a stranger's token on the 20th: the 19
    before it are answered 202 in the order sent, the stranger's is refused (authorisation is
    per request, not per connection) and ends the connection, and nothing sent after it is
    handled: the topic holds exactly the 19, in order."""
    p = shared_platform

    def publish(i, token):
        body = json.dumps({"n": i}).encode()
        return ("POST /v1/topics/pipelined/events HTTP/1.1\r\nHost: x\r\n"
                "Authorization: Bearer %s\r\nce-specversion: 1.0\r\nce-id: p-%d\r\n"
                "ce-source: /tests\r\nce-type: t.piped\r\nContent-Type: application/json\r\n"
                "Content-Length: %d\r\n\r\n" % (token, i, len(body))).encode() + body

    reqs = [publish(i, "not-a-token" if i == 19 else p.token) for i in range(40)]
    answers = _pipelined(p, reqs)
    assert len(answers) == 20, answers
    for i, (status, body) in enumerate(answers[:19]):
        assert status == 202 and body["id"] == "p-%d" % i, (i, status, body)
    assert answers[19][0] == 401, answers[19]
    offsets = [body["offset"] for _, body in answers[:19]]
    assert offsets == sorted(offsets)
    events = read_topic(p, "pipelined", **{"from": "start", "limit": 100})
    assert [e["data"]["n"] for e in events] == list(range(19))
    # and all 40 from a client that behaves are answered and stored in order
    answers = _pipelined(p, [publish(i, p.token) for i in range(100, 140)])
    assert [status for status, _ in answers] == [202] * 40, answers
    events = read_topic(p, "pipelined", **{"from": answers[0][1]["offset"], "limit": 100})
    assert [e["data"]["n"] for e in events] == list(range(100, 140))
