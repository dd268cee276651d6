"""The function resize: invoked for each `image.uploaded` event, on instances of its own.
An event's data may hold {"work_ms": N}: resizing then takes that long (to watch it scale)."""
import os
import time

from shop import catalog


def resize(event):
    name = event.get("subject") or "unnamed.png"
    data = event.get("data")
    work_ms = data.get("work_ms", 0) if isinstance(data, dict) else 0
    if isinstance(work_ms, (int, float)) and 0 < work_ms <= 10000:
        time.sleep(work_ms / 1000)
    thumb = catalog.thumbnail_name(name)
    print("resized %s to %s on instance %s" % (name, thumb, os.environ.get("CF_INSTANCE_INDEX")),
          flush=True)
    return {"image": name, "thumbnail": thumb}
