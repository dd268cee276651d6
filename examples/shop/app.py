"""The shop: a small web app (standard library only) with functions inside it.

GET  /                  the catalogue
POST /upload?name=N     takes an image and publishes `image.uploaded` on the topic uploads;
                        the function resize (shop/images.py), pulled out of this app by its
                        manifest, makes the thumbnail on its own instances
Each request prints one log line ([APP/PROC/WEB/n]); the function's are [APP/FUNC/RESIZE/n].
"""
import json
import os
import signal
import sys
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from shop import catalog


def publish(topic, data, type, subject):
    """POSTs a CloudEvent (binary mode) to the topic, where the platform said to."""
    url = "%s/topics/%s/events" % (os.environ["SKIFF_EVENTS_URL"].rstrip("/"), topic)
    req = urllib.request.Request(url, data=json.dumps(data).encode(), method="POST", headers={
        "Authorization": "Bearer " + os.environ["SKIFF_EVENTS_TOKEN"],
        "Content-Type": "application/json",
        "ce-specversion": "1.0", "ce-id": str(uuid.uuid4()), "ce-source": "/shop",
        "ce-type": type, "ce-subject": subject})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


class Handler(BaseHTTPRequestHandler):
    server_version = "shop"

    def do_GET(self):
        if self.path != "/":
            return self.reply(404, "not found\n")
        lines = ["%s %s" % (p, catalog.thumbnail_name(p)) for p in catalog.PRODUCTS]
        self.reply(200, "shop: %d products\n%s\n" % (len(lines), "\n".join(lines)))

    def do_POST(self):
        url = urllib.parse.urlparse(self.path)
        name = urllib.parse.parse_qs(url.query).get("name", [""])[0]
        if url.path != "/upload" or not name:
            return self.reply(404, "POST /upload?name=NAME\n")
        length = int(self.headers.get("Content-Length") or 0)
        size = len(self.rfile.read(length))
        publish("uploads", {"size": size}, "image.uploaded", name)
        self.reply(202, "uploaded %s (%d bytes): its thumbnail is on its way\n" % (name, size))

    def reply(self, status, text):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print("web: " + fmt % args, flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler)
    print("shop listening on", server.server_address[1], flush=True)
    server.serve_forever()
