"""A small web app for Skiff: standard library only, listens on $PORT.

GET /        a greeting ($GREETING, default "hello") with the instance that answered
GET /health  200 "ok" (for an http health check)
Every request prints one log line, which `skiff logs` shows as [APP/PROC/WEB/n].
"""
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    server_version = "python-web"

    def do_GET(self):
        if self.path == "/health":
            self.reply(200, "text/plain", "ok\n")
            return
        if self.path == "/env":
            names = ("GREETING", "CF_INSTANCE_INDEX", "MEMORY_LIMIT", "PORT")
            self.reply(200, "application/json",
                       json.dumps({n: os.environ.get(n) for n in names}) + "\n")
            return
        if self.path != "/":
            self.reply(404, "text/plain", "not found\n")
            return
        greeting = os.environ.get("GREETING", "hello")
        index = os.environ.get("CF_INSTANCE_INDEX", "0")
        self.reply(200, "text/plain", f"{greeting} from instance {index}\n")

    def reply(self, status, content_type, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        print(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}", flush=True)


def main():
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    # Stop cleanly on the platform's SIGTERM.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"python-web listening on port {port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
