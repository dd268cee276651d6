# A function snippet: `skiff push resize --function examples/functions/resize.py:handle`,
# then `skiff map-event resize uploads --filter type=image.uploaded`.
def handle(event):
    size = (event.get("data") or {}).get("size", 0)
    print(f"resizing {event.get('subject')} ({size} bytes)", flush=True)
    return {"thumbnail": f"thumb-{event.get('subject')}", "size": size // 2}
