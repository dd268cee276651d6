"""Code the web app and its functions share: they run from the same droplet."""
PRODUCTS = ["boat.png", "oar.png", "sail.png"]


def thumbnail_name(image):
    stem, _, ext = image.rpartition(".")
    return "%s.thumb.%s" % (stem or ext, ext if stem else "png")
