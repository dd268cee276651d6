"""The function resize: invoked for each `image.uploaded` event, on instances of its own."""
import os

from shop import catalog


def resize(event):
    name = event.get("subject") or "unnamed.png"
    thumb = catalog.thumbnail_name(name)
    print("resized %s to %s on instance %s" % (name, thumb, os.environ.get("CF_INSTANCE_INDEX")),
          flush=True)
    return {"image": name, "thumbnail": thumb}
