# Fails on purpose, to show retries and dead letters:
#   data {"fail": N}      the first N attempts of the event fail with 500 (retried with backoff)
#   data {"reject": true} answers 400 at once (not retried: straight to the dead-letter topic)
#   anything else         succeeds (204)


class Reject(Exception):
    status = 400


_attempts = {}


def handle(event):
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    key = event.get("id")
    _attempts[key] = _attempts.get(key, 0) + 1
    print(f"attempt {_attempts[key]} for {key}", flush=True)
    if data.get("reject"):
        raise Reject("this event can never succeed")
    if _attempts[key] <= int(data.get("fail", 0)):
        raise RuntimeError(f"failing attempt {_attempts[key]} on purpose")
    return None
