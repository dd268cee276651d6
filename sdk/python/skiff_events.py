"""Publish events to Skiff from Python (standard library only).

Inside an instance Skiff sets SKIFF_EVENTS_URL and SKIFF_EVENTS_TOKEN; publish() reads them
and POSTs a CloudEvent in binary mode. It returns once Skiff has the event on disk (HTTP 202):

    import skiff_events
    skiff_events.publish("uploads", {"size": 42}, type="image.uploaded", subject="cat.png")
    # -> {"id": "...", "offset": 17}

data may be bytes (sent as application/octet-stream unless content_type says otherwise), str
(text/plain) or anything json.dumps accepts (application/json). Errors raise SkiffEventsError
with Skiff's own message.
"""
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid

__all__ = ["publish", "SkiffEventsError"]


class SkiffEventsError(Exception):
    """A publish that Skiff refused (status is the HTTP status) or could not reach (status None)."""

    def __init__(self, message, status=None, code=None):
        super().__init__(message)
        self.status = status
        self.code = code


def _default_source():
    try:
        name = json.loads(os.environ.get("VCAP_APPLICATION", "{}")).get("application_name")
    except ValueError:
        name = None
    return "/apps/%s" % name if name else "/skiff/sdk"


def _encode(data, content_type):
    if isinstance(data, (bytes, bytearray)):
        return bytes(data), content_type or "application/octet-stream"
    if isinstance(data, str):
        return data.encode("utf-8"), content_type or "text/plain; charset=utf-8"
    if data is None:
        return b"", content_type
    return json.dumps(data).encode("utf-8"), content_type or "application/json"


def _header_value(value):
    # The HTTP binding percent-encodes space, '"', '%' and everything outside printable ASCII.
    out = []
    for b in str(value).encode("utf-8"):
        out.append("%%%02X" % b if b <= 0x20 or b >= 0x7F or b in (0x22, 0x25) else chr(b))
    return "".join(out)


def publish(topic, data=None, type="skiff.event", subject=None, source=None, id=None,
            content_type=None, extensions=None, url=None, token=None, timeout=30):
    """Publishes one event to topic; returns {"id": ..., "offset": ...} once it is durable."""
    url = url or os.environ.get("SKIFF_EVENTS_URL")
    token = token or os.environ.get("SKIFF_EVENTS_TOKEN")
    if not url or not token:
        raise SkiffEventsError("SKIFF_EVENTS_URL and SKIFF_EVENTS_TOKEN must be set "
                               "(Skiff sets them in every instance)")
    if not topic:
        raise SkiffEventsError("a topic name is required")
    body, ctype = _encode(data, content_type)
    headers = {
        "Authorization": "Bearer " + token,
        "ce-specversion": "1.0",
        "ce-id": _header_value(id or str(uuid.uuid4())),
        "ce-source": _header_value(source or _default_source()),
        "ce-type": _header_value(type or "skiff.event"),
    }
    if subject is not None:
        headers["ce-subject"] = _header_value(subject)
    for name, value in (extensions or {}).items():
        headers["ce-" + name] = _header_value(value)
    if ctype:
        headers["Content-Type"] = ctype
    base = url.rstrip("/")
    if not base.endswith("/v1"):  # SKIFF_EVENTS_URL is the API's /v1; a bare API URL works too
        base += "/v1"
    target = "%s/topics/%s/events" % (base, urllib.parse.quote(topic, safe=""))
    req = urllib.request.Request(target, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        text = e.read().decode("utf-8", "replace")
        try:
            err = json.loads(text)["error"]
            message, code = err.get("message", text), err.get("code")
        except (ValueError, KeyError, TypeError):
            message, code = text, None
        raise SkiffEventsError("Skiff refused the event (HTTP %d): %s" % (e.code, message),
                               status=e.code, code=code) from None
    except (urllib.error.URLError, OSError) as e:
        raise SkiffEventsError("cannot reach Skiff at %s: %s" % (url, getattr(e, "reason", e))) from None
