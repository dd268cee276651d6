"""A hostile tenant: a web app that tries to escape its instance when asked to.

GET /attack/NAME?k=v&...  runs attacks.attack_NAME: {"escaped": true|false, "detail": "..."}
GET /control/NAME?...     runs attacks.control_NAME: {"ok": true|false, "detail": "..."}
GET /whoami               {"app": ..., "guid": CF_INSTANCE_GUID}
GET /health               200 ok
An attack that fails to run at all (a bug, not a refusal) is a 500 with its traceback.
Standard library only; listens on $PORT.
"""
import json
import os
import signal
import sys
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import attacks


def app_name():
    try:
        return json.loads(os.environ.get("VCAP_APPLICATION", "{}")).get("application_name")
    except ValueError:
        return None


class Handler(BaseHTTPRequestHandler):
    server_version = "hostile"

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        params = urllib.parse.parse_qs(url.query)
        parts = url.path.strip("/").split("/")
        if url.path == "/health":
            return self.reply(200, {"ok": True})
        if url.path == "/whoami":
            return self.reply(200, {"app": app_name(), "guid": os.environ.get("CF_INSTANCE_GUID")})
        table = {"attack": attacks.ATTACKS, "control": attacks.CONTROLS}
        if len(parts) != 2 or parts[0] not in table or parts[1] not in table[parts[0]]:
            return self.reply(404, {"error": "no such attack or control: %s" % url.path})
        try:
            answer = table[parts[0]][parts[1]](params)
        except Exception:  # noqa: BLE001 - the test must see that the attack did not run
            return self.reply(500, {"error": traceback.format_exc()})
        print("%s %s escaped=%s" % (parts[0], parts[1], answer.get("escaped")), flush=True)
        self.reply(200, answer)

    def reply(self, status, obj):
        data = (json.dumps(obj) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        pass


def main():
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("hostile listening on port %d" % port, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
