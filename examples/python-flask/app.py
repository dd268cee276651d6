"""The Cloud Foundry Python sample's shape: a Flask app that listens on $PORT.

GET /        "Hello World! I am instance N" (CF_INSTANCE_INDEX)
GET /health  "ok" (for an http health check)
GET /flask   where Flask was imported from and its version: the app's vendored copy, which
             the Python buildpack installed from vendor/ into .python_packages
"""
import os

import flask
from flask import Flask

app = Flask(__name__)
port = int(os.getenv("PORT", 8080))


@app.route("/")
def hello_world():
    return "Hello World! I am instance " + os.getenv("CF_INSTANCE_INDEX", "0") + "\n"


@app.route("/health")
def health():
    return "ok\n"


@app.route("/flask")
def which_flask():
    return {"version": flask.__version__, "file": flask.__file__}


if __name__ == "__main__":
    app.run(host="0.0.0.0", port=port)
