"""The shop: a small Flask web app with functions inside it.

GET  /                  the catalogue
POST /upload?name=N     takes an image and publishes `image.uploaded` on the topic uploads;
                        the function resize (shop/images.py), pulled out of this app by its
                        manifest, makes the thumbnail on its own instances
GET  /flask             the version of Flask serving it and where it was imported from: the
                        app's vendored copy, which the Python buildpack installed from vendor/
                        into .python_packages
Each request prints one log line ([APP/PROC/WEB/n]); the function's are [APP/FUNC/RESIZE/n].
Flask is vendored: `make examples` puts wheels of Debian's python3-flask in vendor/. The
functions do not use Flask: they are plain handlers importing the shop's own modules.
"""
import json
import os
import signal
import sys
import urllib.request
import uuid

import flask
from flask import Flask, Response, request
from werkzeug.serving import WSGIRequestHandler

from shop import catalog

app = Flask(__name__)


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


def text(status, body):
    return Response(body, status=status, content_type="text/plain; charset=utf-8")


@app.get("/")
def products():
    lines = ["%s %s" % (p, catalog.thumbnail_name(p)) for p in catalog.PRODUCTS]
    return text(200, "shop: %d products\n%s\n" % (len(lines), "\n".join(lines)))


@app.post("/upload")
def upload():
    name = request.args.get("name", "")
    if not name:
        return text(404, "POST /upload?name=NAME\n")
    size = len(request.get_data(cache=False))
    publish("uploads", {"size": size}, "image.uploaded", name)
    return text(202, "uploaded %s (%d bytes): its thumbnail is on its way\n" % (name, size))


@app.get("/flask")
def which_flask():
    return {"version": flask.__version__, "file": flask.__file__}


@app.errorhandler(404)
@app.errorhandler(405)
def not_found(_):
    if request.method == "POST":
        return text(404, "POST /upload?name=NAME\n")
    return text(404, "not found\n")


class RequestLog(WSGIRequestHandler):
    """One line per request on stdout, plain (Werkzeug's own colours it and goes to stderr)."""

    def log_request(self, code="-", size="-"):
        print('web: "%s" %s %s' % (self.requestline, getattr(code, "value", code), size),
              flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("shop listening on", os.environ.get("PORT", "8080"), "with Flask", flask.__version__,
          flush=True)
    app.run(host="0.0.0.0", port=int(os.environ.get("PORT", "8080")), threaded=True,
            request_handler=RequestLog)
