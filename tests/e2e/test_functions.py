"""Functions as a user pushes them: `skiff push NAME --function FILE:HANDLER` for Python,
Node.js and shell snippets, called once with `skiff invoke` (which starts an instance from
zero), replies as JSON or text, failures as errors."""
import json
import os
import time
import urllib.request

from conftest import ROOT, Platform, out, push_function, write

FUNCTIONS = os.path.join(ROOT, "examples", "functions")


def test_python_function_invoke_scales_from_zero(platform):
    push_function(platform, "resize", os.path.join(FUNCTIONS, "resize.py"), "handle")
    # a function starts with no instance: events (or invoke) start one
    r = platform.cli("invoke", "resize", "--subject", "cat.png", '{"size": 42}')
    assert r.returncode == 0, out(r)
    assert json.loads(r.stdout) == {"thumbnail": "thumb-cat.png", "size": 21}
    logs = platform.cli("logs", "resize", "--recent", check=True).stdout
    assert "resizing cat.png (42 bytes)" in logs
    assert "[APP/" in logs


def test_node_function_reply_event(platform):
    push_function(platform, "upper", os.path.join(FUNCTIONS, "upper.js"), "handle")
    r = platform.cli("invoke", "upper", "hello")
    assert r.returncode == 0, out(r)
    assert json.loads(r.stdout) == {"text": "HELLO"}


def test_shell_function(platform):
    push_function(platform, "count", os.path.join(FUNCTIONS, "count.sh"), "main")
    r = platform.cli("invoke", "count", "--type", "text.count", "abcd")
    assert r.returncode == 0, out(r)
    assert json.loads(r.stdout) == {"chars": 4}
    platform.wait_for(lambda: "count text.count" in
                      platform.cli("logs", "count", "--recent").stdout, 10, "the script's stderr in the logs")


def test_function_returning_nothing_and_text(platform, tmp_path):
    write(tmp_path, "misc.py", """
        def handle(event):
            if event["data"] == "nothing":
                return None
            return "plain " + event["data"]
    """)
    push_function(platform, "misc", os.path.join(str(tmp_path), "misc.py"), "handle")
    r = platform.cli("invoke", "misc", "words")
    assert r.returncode == 0, out(r)
    assert r.stdout.strip() == "plain words"
    r = platform.cli("invoke", "misc", "nothing")
    assert r.returncode == 0, out(r)
    assert r.stdout.strip() == ""
    # the same through the API: 204 without a body
    status, body = platform.api("POST", "/v1/apps/misc/invoke", raw=b"nothing",
                                headers={"Content-Type": "text/plain"})
    assert status == 204, body


def test_function_failure_is_an_error(platform):
    push_function(platform, "flaky", os.path.join(FUNCTIONS, "flaky.py"), "handle")
    r = platform.cli("invoke", "flaky", '{"reject": true}')
    assert r.returncode == 1, out(r)
    assert "answered 400" in r.stderr
    r = platform.cli("invoke", "flaky", '{"fail": 1}')
    assert r.returncode == 1, out(r)
    assert "answered 500" in r.stderr


def test_invoke_errors(platform):
    r = platform.cli("invoke", "nosuchapp", "{}")
    assert r.returncode == 1
    assert "nosuchapp" in r.stderr
    status, body = platform.api("POST", "/v1/apps/nosuchapp/invoke", body={})
    assert status == 404 and body["error"]["code"] == "not_found", body
    # a malformed CloudEvent names the attribute
    push_function(platform, "resize", os.path.join(FUNCTIONS, "resize.py"), "handle")
    status, body = platform.api("POST", "/v1/apps/resize/invoke", raw=b"{}",
                                headers={"ce-id": "1", "ce-specversion": "1.0", "ce-type": "t"})
    assert status == 400, body
    assert "source" in body["error"]["message"]


def test_invoke_stopped_function(platform):
    push_function(platform, "resize", os.path.join(FUNCTIONS, "resize.py"), "handle")
    platform.cli("stop", "resize", check=True)
    r = platform.cli("invoke", "resize", "{}")
    assert r.returncode == 1 and "resize is stopped: start it with skiff start resize" in r.stderr, out(r)


def test_push_function_errors(platform, tmp_path):
    r = platform.cli("push", "bad", "--function", "nofile.py:handle")
    assert r.returncode != 0
    write(tmp_path, "f.rb", "def handle; end\n")
    r = platform.cli("push", "bad", "--function", os.path.join(str(tmp_path), "f.rb") + ":handle")
    assert r.returncode == 2, out(r)
    assert ".py, .js or .sh" in r.stderr


def test_idle_function_scales_to_zero_and_routed_requests_keep_it(tmp_path):
    """With no mapping at all: idle -> zero after the grace period; a request through the
    router wakes it, and a steady stream of requests keeps it up; then idle -> zero again."""
    p = Platform(extra_env={"SKIFF_FUNCTION_IDLE_GRACE": "2s"}).start()
    try:
        push_function(p, "resize", os.path.join(FUNCTIONS, "resize.py"), "handle")

        def running():
            status, app = p.api("GET", "/v1/apps/resize")
            return [i for i in app["instances_detail"] if i["state"] == "RUNNING"]

        def get():
            req = urllib.request.Request(p.router_url + "/", headers={"Host": "resize.localhost"})
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status

        def scaled_to_zero():
            # the desired count, and no instance left at all: one not RUNNING yet is not one
            # scaled away, and one still draining (STOPPING) serves what the router sends it
            # until the router has the table without it, so a request would not wake the app
            status, app = p.api("GET", "/v1/apps/resize")
            return app["instances"] == 0 and app["instances_detail"] == []

        p.wait_for(scaled_to_zero, 30, "an unused function to scale to zero")
        assert get() == 200  # the router wakes it
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # longer than the grace period, never idle
            assert get() == 200
            assert len(running()) == 1
            time.sleep(0.3)
        p.wait_for(scaled_to_zero, 30, "scale to zero once requests stop")
    finally:
        p.close()
