"""The web app the deploy, drain and autoscaling tests push: it answers every GET with
"instance N" (its CF_INSTANCE_INDEX), or with its version when a version.txt lies beside it.

- /sleep/SECONDS takes that long, and prints a MARK line when it starts (read back from the
  app's logs, so a test knows the request reached the app).
- With a version.txt: a version starting "crash" (or "second-crashes", for instance 1) exits 3
  at once; any other starts after 0.3 s, so a deploy that did not wait for its successor to
  run would leave a gap.
- Python's default SIGTERM action ends the process at once: without a drain, a request in
  flight fails."""
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INDEX = os.environ.get("CF_INSTANCE_INDEX", "?")
VERSION_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "version.txt")
VERSION = open(VERSION_FILE).read().strip() if os.path.exists(VERSION_FILE) else None
if VERSION is not None:
    if VERSION.startswith("crash") or (VERSION.startswith("second-crashes") and INDEX == "1"):
        print("this version cannot start", flush=True)
        sys.exit(3)
    time.sleep(0.3)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once, not 40 ms apart

    def do_GET(self):
        if self.path.startswith("/sleep/"):
            print("MARK %s-%d-%d" % (INDEX, os.getpid(), time.monotonic_ns()), flush=True)
            time.sleep(float(self.path.split("/")[2]))
        body = ((VERSION if VERSION is not None else "instance %s" % INDEX) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
