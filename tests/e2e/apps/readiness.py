"""The web app of the readiness tests (test_readiness.py, and test_router_lost.py's instance
that turns unready with a request in flight). Its switches are GETs sent to the instance itself,
not through the router:

- /unready and /ready set its readiness; /readyz answers 200 or 503 accordingly.
- /slow makes /health answer after HEALTH_DELAY seconds (at once before), with a
  SLOW-HEALTH-ANSWERED line for each check it answered so; /probe answers at once with a
  PROBE-ANSWERED line.
- A POST is read whole, then answered only once GET /release came (30 s at most), with the
  number of bytes it got; GET /posts counts the POSTs read.
- Any other GET answers "instance N pid P".
- LINES_PER_TICK lines of LINE_BYTES are printed every 0.1 s (none by default)."""
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INDEX = os.environ.get("CF_INSTANCE_INDEX", "?")
state = {"ready": True, "slow": False, "posts": 0}
release = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, code, text):
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/unready":
            state["ready"] = False
        elif self.path == "/ready":
            state["ready"] = True
        elif self.path == "/slow":
            state["slow"] = True
        elif self.path == "/release":
            release.set()
        if self.path == "/readyz":
            return self.answer(200 if state["ready"] else 503, "ready" if state["ready"] else "no")
        if self.path == "/posts":
            return self.answer(200, "%d" % state["posts"])
        if self.path == "/probe":
            print("PROBE-ANSWERED %s" % INDEX, flush=True)
            return self.answer(200, "ok")
        if self.path == "/health":
            if state["slow"]:
                time.sleep(float(os.environ.get("HEALTH_DELAY", "0")))
                print("SLOW-HEALTH-ANSWERED %s" % INDEX, flush=True)
            return self.answer(200, "ok")
        self.answer(200, "instance %s pid %d\n" % (INDEX, os.getpid()))

    def do_POST(self):
        n = len(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        state["posts"] += 1
        release.wait(30)
        self.answer(200, "got %d\n" % n)

    def log_message(self, *args):
        pass


def chatter():
    n = int(os.environ.get("LINES_PER_TICK", "0"))
    size = int(os.environ.get("LINE_BYTES", "100"))
    seq = 0
    while n:
        for _ in range(n):
            seq += 1
            line = "SEQ %09d " % seq
            sys.stdout.write(line + "x" * max(0, size - len(line) - 1) + "\n")
        sys.stdout.flush()
        time.sleep(0.1)


threading.Thread(target=chatter, daemon=True).start()
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
