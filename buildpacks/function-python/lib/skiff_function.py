"""Skiff function server: runs a handler per CloudEvent delivered over HTTP (binary mode).

    python3 skiff_function.py FILE.py:HANDLER     # def HANDLER(event) in FILE.py
    python3 skiff_function.py --shell FILE.sh     # FILE.sh per event: data on stdin, reply on stdout

Listens on $PORT. The event is a dict of the CloudEvent's attributes plus `data` (parsed when
it is JSON). The handler's return value is the reply: None -> 204; a dict with "specversion"
-> that CloudEvent (binary mode); any other value -> 200 with it as JSON (or text for a str,
raw for bytes), sent as a CloudEvent of type "skiff.reply" so that a mapping's reply topic can
carry it on. An exception -> 500, so the event is retried (an exception with a `status`
attribute of 400-599 answers that status instead: 4xx other than 408/409/429 is not retried).

Only the standard library's cheapest modules are imported at start: cold start is a few ms.
"""
import json
import os
import socket
import sys
import threading

MAX_BODY = 16 << 20


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def pct_decode(value):
    if "%" not in value:
        return value
    from urllib.parse import unquote  # rare: only for values that need it
    return unquote(value)


def pct_encode(value):
    # The HTTP binding asks for percent-encoding of what is not printable ASCII, '"' and '%'.
    out = []
    for ch in value:
        o = ord(ch)
        if 0x21 <= o <= 0x7E and ch not in '"%':
            out.append(ch)
        else:
            out.extend("%%%02X" % b for b in ch.encode())
    return "".join(out)


def new_id():
    return os.urandom(16).hex()


def app_name():
    try:
        return json.loads(os.environ.get("VCAP_APPLICATION", "{}")).get("application_name") or "function"
    except ValueError:
        return "function"


class Reply:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status, headers=(), body=b""):
        self.status, self.headers, self.body = status, list(headers), body


def event_from_request(headers, body):
    event = {}
    for name, value in headers.items():
        if name.startswith("ce-") and len(name) > 3:
            event[name[3:]] = pct_decode(value)
    ctype = headers.get("content-type")
    if ctype:
        event["datacontenttype"] = ctype
    data = None
    if body:
        if ctype is None or "json" in ctype:
            try:
                data = json.loads(body)
            except ValueError:
                data = None if ctype and "json" in ctype else body.decode("utf-8", "replace")
        elif ctype.startswith("text/"):
            data = body.decode("utf-8", "replace")
        else:
            data = body
    event["data"] = data
    return event


def reply_from_value(value, event):
    """The HTTP reply for what a handler returned."""
    if value is None:
        return Reply(204)
    attrs = {"specversion": "1.0", "type": "skiff.reply", "source": "/apps/" + app_name()}
    if event.get("subject"):
        attrs["subject"] = event["subject"]
    if isinstance(value, dict) and "specversion" in value:
        value = dict(value)
        data = value.pop("data", None)
        ctype = value.pop("datacontenttype", None)
        attrs.update({k: str(v) for k, v in value.items()})
        value = data
    else:
        ctype = None
    attrs.setdefault("id", new_id())
    if value is None:
        body = b""
    elif isinstance(value, bytes):
        body, ctype = value, ctype or "application/octet-stream"
    elif isinstance(value, str) and not (ctype and "json" in ctype):
        body, ctype = value.encode(), ctype or "text/plain; charset=utf-8"
    else:
        body, ctype = json.dumps(value).encode(), ctype or "application/json"
    headers = [("ce-" + k, pct_encode(v)) for k, v in attrs.items()]
    if body:
        headers.append(("Content-Type", ctype))
    return Reply(200, headers, body)


def load_python_handler(spec):
    path, _, name = spec.rpartition(":")
    if not path:
        path, name = spec, "handle"
    import importlib.util
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    # a function inside an app imports the app's modules as the app does: from its folder
    if os.getcwd() not in sys.path:
        sys.path.insert(1, os.getcwd())
    modname = os.path.splitext(os.path.basename(path))[0]
    s = importlib.util.spec_from_file_location(modname, path)
    if s is None:
        raise SystemExit("skiff: cannot load %s: is it a Python file?" % path)
    module = importlib.util.module_from_spec(s)
    sys.modules[modname] = module
    s.loader.exec_module(module)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise SystemExit("skiff: %s has no function %s(event): define it or fix the handler "
                         "(FILE:FUNCTION)" % (path, name))

    def call(event, headers, body):
        return reply_from_value(fn(event), event)
    return call


def load_shell_handler(path):
    import subprocess
    script = os.path.abspath(path)

    def call(event, headers, body):
        env = dict(os.environ)
        for k, v in event.items():
            if k != "data" and isinstance(v, str):
                env["CE_" + k.upper()] = v
        cmd = [script] if os.access(script, os.X_OK) else ["/bin/sh", script]
        p = subprocess.run(cmd, input=body, stdout=subprocess.PIPE, env=env)
        if p.returncode != 0:
            return Reply(500, [("Content-Type", "text/plain")],
                         b"script exited with status %d\n" % p.returncode)
        out = p.stdout
        if not out:
            return Reply(204)
        try:
            value = json.loads(out)
        except ValueError:
            value = out.decode("utf-8", "replace")
        return reply_from_value(value, event)
    return call


REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found",
           413: "Payload Too Large", 422: "Unprocessable Entity", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable"}


def send(conn, reply, keep_alive):
    head = ["HTTP/1.1 %d %s" % (reply.status, REASONS.get(reply.status, "Status"))]
    head += ["%s: %s" % h for h in reply.headers]
    head.append("Content-Length: %d" % len(reply.body))
    if not keep_alive:
        head.append("Connection: close")
    conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body)


def serve_connection(conn, handler):
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                if len(buf) > 65536 and b"\r\n\r\n" not in buf:
                    send(conn, Reply(400), False)
                    return
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                send(conn, Reply(400), False)
                return
            method, version = parts[0], parts[2]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            keep_alive = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
            if headers.get("expect", "").lower() == "100-continue" and not buf:
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for it otherwise
            if "chunked" in headers.get("transfer-encoding", "").lower():
                body = b""
                while True:
                    while b"\r\n" not in buf:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    size_line, buf = buf.split(b"\r\n", 1)
                    size = int(size_line.split(b";")[0], 16)
                    while len(buf) < size + 2:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    body, buf = body + buf[:size], buf[size + 2:]
                    if size == 0:
                        break
            else:
                length = int(headers.get("content-length") or 0)
                if length > MAX_BODY:
                    send(conn, Reply(413), False)
                    return
                while len(buf) < length:
                    chunk = conn.recv(max(65536, length - len(buf)))
                    if not chunk:
                        return
                    buf += chunk
                body, buf = buf[:length], buf[length:]
            if method == "GET":
                reply = Reply(200, [("Content-Type", "text/plain")], b"ok\n")  # health checks
            else:
                event = event_from_request(headers, body)
                try:
                    reply = handler(event, headers, body)
                except Exception as e:
                    import traceback
                    traceback.print_exc()
                    sys.stderr.flush()
                    # An exception may carry an HTTP status (e.g. 400: not worth retrying).
                    status = getattr(e, "status", 500)
                    if not isinstance(status, int) or not 400 <= status <= 599:
                        status = 500
                    reply = Reply(status, [("Content-Type", "text/plain")],
                                  ("handler raised %s\n" % type(e).__name__).encode())
            send(conn, reply, keep_alive)
            if not keep_alive:
                return
    except (OSError, ValueError) as e:
        log("skiff: connection error: %s" % e)
    finally:
        conn.close()


def main(argv):
    if len(argv) == 3 and argv[1] == "--shell":
        handler = load_shell_handler(argv[2])
    elif len(argv) == 2:
        handler = load_python_handler(argv[1])
    else:
        raise SystemExit("usage: skiff_function.py FILE.py:HANDLER | --shell FILE.sh")
    port = int(os.environ.get("PORT", "8080"))
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((os.environ.get("SKIFF_FUNCTION_HOST", "0.0.0.0"), port))
    srv.listen(128)
    while True:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve_connection, args=(conn, handler), daemon=True).start()


if __name__ == "__main__":
    try:
        main(sys.argv)
    except KeyboardInterrupt:
        pass
