"""A small Open Service Broker API 2.17 broker for the tests (Python stdlib, loopback only).

It offers one service, `testdb`, whose plans choose how the broker behaves:

    small, large      provisioned at once (201); large is not free, and its schemas take one
                      parameter: size, an integer from 1 to 10
    async             202 + an operation; last_operation says "in progress" twice (with
                      Retry-After: 1), then "succeeded"; deleting it is asynchronous too
                      (202, "in progress" once, then 410 Gone)
    async-fail        like async, then "failed" with a description
    never             always "in progress"; its maximum_polling_duration is 2 s
    fail500           provisioning answers 500 (the platform must clean up: orphan mitigation)
    bad201            provisioning answers 201 with a body that is not JSON
    slow              provisioning answers after `slow_seconds`
    async-bind        bindings are asynchronous (202, then fetched with GET)
    nobind            not bindable
    bindfail          provisioned at once; binding answers 502 (though it made the binding)

`broken_catalog = True` makes GET /v2/catalog leave out a plan's id; `refuse_deletes = True`
makes every DELETE answer 500. Every request is kept in
`requests` (method, path, query, headers, body) so tests can check what the platform sent.

    broker = OsbBroker(user="u", password="p").start()
    ... broker.url ...
    broker.stop()
"""
import base64
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SERVICE_ID = "testdb-service-id"


def plan(name, **extra):
    p = {"id": f"plan-{name}", "name": name, "description": f"the {name} plan"}
    p.update(extra)
    return p


SIZE_SCHEMA = {"parameters": {"type": "object", "additionalProperties": False,
                              "properties": {"size": {"type": "integer", "minimum": 1,
                                                      "maximum": 10}}}}
PLANS = [plan("small", free=True),
         plan("large", free=False, schemas={"service_instance": {"create": SIZE_SCHEMA,
                                                                 "update": SIZE_SCHEMA}}),
         plan("async"),
         plan("async-fail"), plan("never", maximum_polling_duration=2), plan("fail500"),
         plan("bad201"), plan("slow"), plan("async-bind"), plan("nobind", bindable=False),
         plan("bindfail")]


def catalog(broken=False):
    plans = [dict(p) for p in PLANS]
    if broken:
        del plans[1]["id"]
    return {"services": [{"id": SERVICE_ID, "name": "testdb", "description": "A test database",
                          "bindable": True, "plan_updateable": True, "tags": ["sql", "test"],
                          "plans": plans}]}


class OsbBroker:
    def __init__(self, user="broker-user", password="broker-pass"):
        self.user, self.password = user, password
        self.requests = []
        self.instances = {}   # id -> {"plan_id", "polls", "op"}
        self.bindings = {}    # id -> {"instance_id", "credentials", "polls"}
        self.broken_catalog = False
        self.refuse_deletes = False  # every DELETE answers 500 while set
        self.slow_seconds = 5
        self.lock = threading.Lock()
        self.server = None

    # ---- running ----
    def start(self):
        broker = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                with broker.lock:
                    broker.requests.append({"method": self.command, "path": url.path,
                                            "query": query, "headers": dict(self.headers),
                                            "body": body, "at": time.monotonic()})
                status, payload, headers = broker.handle(self.command, url.path, query,
                                                         self.headers, body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_PATCH = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    def calls(self, method, path_part=""):
        with self.lock:
            return [r for r in self.requests if r["method"] == method and path_part in r["path"]]

    # ---- the API ----
    def handle(self, method, path, query, headers, body):
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if headers.get("Authorization") != expected:
            return 401, {"description": "wrong credentials"}, {}
        if headers.get("X-Broker-API-Version") != "2.17":
            return 412, {"description": "X-Broker-API-Version 2.17 expected"}, {}
        if method == "DELETE" and self.refuse_deletes:
            return 500, {"description": "deletes are refused for now"}, {}
        parts = [p for p in path.split("/") if p]
        if parts == ["v2", "catalog"] and method == "GET":
            return 200, catalog(self.broken_catalog), {}
        if len(parts) >= 3 and parts[:2] == ["v2", "service_instances"]:
            iid = parts[2]
            rest = parts[3:]
            if not rest:
                return self.instance(method, iid, query, body)
            if rest == ["last_operation"]:
                return self.instance_last_operation(iid, query)
            if len(rest) >= 2 and rest[0] == "service_bindings":
                bid = rest[1]
                if rest[2:] == ["last_operation"]:
                    return self.binding_last_operation(bid)
                if not rest[2:]:
                    return self.binding(method, iid, bid, query, body)
        return 404, {"description": "no such endpoint"}, {}

    def instance(self, method, iid, query, body):
        if method == "PUT":
            plan_id = body.get("plan_id")
            name = plan_id.removeprefix("plan-") if plan_id else ""
            if query.get("accepts_incomplete") != "true" and name.startswith("async"):
                return 422, {"error": "AsyncRequired", "description": "async only"}, {}
            if name == "fail500":
                self.instances[iid] = {"plan_id": plan_id}  # made, though it says it failed
                return 500, {"description": "the test broker failed on purpose"}, {}
            if name == "bad201":
                self.instances[iid] = {"plan_id": plan_id}
                return 201, b"this is not json", {}
            if name == "slow":
                time.sleep(self.slow_seconds)
                self.instances[iid] = {"plan_id": plan_id}
                return 201, {}, {}
            self.instances[iid] = {"plan_id": plan_id, "polls": 0, "op": "provision"}
            if name in ("async", "async-fail", "never"):
                return 202, {"operation": f"provision-{iid[:8]}"}, {}
            return 201, {"dashboard_url": f"https://dash.example/{iid}"}, {}
        if method == "PATCH":
            inst = self.instances.get(iid)
            if not inst:
                return 404, {"description": "no such instance"}, {}
            inst["plan_id"] = body.get("plan_id", inst["plan_id"])
            return 200, {}, {}
        if method == "DELETE":
            if iid not in self.instances:
                return 410, {}, {}
            if self.instances[iid]["plan_id"] == "plan-async":
                # deleted asynchronously: last_operation says so once, then the instance is gone
                self.instances[iid].update(op="deprovision", polls=0)
                return 202, {"operation": f"deprovision-{iid[:8]}"}, {}
            del self.instances[iid]
            return 200, {}, {}
        return 405, {}, {}

    def instance_last_operation(self, iid, query):
        inst = self.instances.get(iid)
        if not inst:
            return 410, {}, {}
        if inst.get("op") == "deprovision":
            inst["polls"] += 1
            if inst["polls"] < 2:
                return 200, {"state": "in progress"}, {"Retry-After": "1"}
            del self.instances[iid]
            return 410, {}, {}
        inst["polls"] = inst.get("polls", 0) + 1
        name = inst["plan_id"].removeprefix("plan-")
        if name == "never" or inst["polls"] < 3:
            return 200, {"state": "in progress", "description": f"working ({inst['polls']})"}, \
                {"Retry-After": "1"}
        if name == "async-fail":
            return 200, {"state": "failed", "description": "the test broker's async provision failed"}, {}
        return 200, {"state": "succeeded", "description": "done"}, {}

    def binding(self, method, iid, bid, query, body):
        if method == "PUT":
            inst = self.instances.get(iid)
            if not inst:
                return 404, {"description": "no such instance"}, {}
            creds = {"uri": f"testdb://{bid}", "password": f"pw-{bid[:8]}", "instance": iid}
            self.bindings[bid] = {"instance_id": iid, "credentials": creds, "polls": 0}
            if inst["plan_id"] == "plan-bindfail":
                # made, though it says it failed: the platform must unbind it
                return 502, {"description": "the test broker's bind failed on purpose"}, {}
            if inst["plan_id"] == "plan-async-bind":
                return 202, {"operation": f"bind-{bid[:8]}"}, {}
            return 201, {"credentials": creds}, {}
        if method == "GET":
            b = self.bindings.get(bid)
            if not b:
                return 404, {}, {}
            return 200, {"credentials": b["credentials"]}, {}
        if method == "DELETE":
            if bid not in self.bindings:
                return 410, {}, {}
            del self.bindings[bid]
            return 200, {}, {}
        return 405, {}, {}

    def binding_last_operation(self, bid):
        b = self.bindings.get(bid)
        if not b:
            return 410, {}, {}
        b["polls"] += 1
        if b["polls"] < 2:
            return 200, {"state": "in progress"}, {"Retry-After": "1"}
        return 200, {"state": "succeeded"}, {}
