"""thumbnailer: download an image from object storage, shrink it to fit a box with Pillow,
upload the thumbnail (SeBS's 210.thumbnailer). Storage is reached through the sandbox's
`storage` module, whose API follows SeBS's python storage wrapper."""

import io
import os
import time

from PIL import Image

from . import storage

Image.preinit()
client = storage.storage.get_instance()


def resize_image(data, width, height):
    with Image.open(io.BytesIO(data)) as img:
        fmt = img.format or "PNG"
        img.thumbnail((width, height))
        out = io.BytesIO()
        img.save(out, format=fmt)
        return out.getvalue(), list(img.size), fmt


def handler(event):
    bucket = event["bucket"]["bucket"]
    input_prefix = event["bucket"]["input"]
    output_prefix = event["bucket"]["output"]
    key = event["object"]["key"]
    width, height = int(event["object"]["width"]), int(event["object"]["height"])
    t0 = time.perf_counter()
    data = client.download_stream(bucket, f"{input_prefix}/{key}")
    t1 = time.perf_counter()
    thumb, size, fmt = resize_image(data, width, height)
    t2 = time.perf_counter()
    base, ext = os.path.splitext(key)
    out_key = f"{output_prefix}/{base}-thumb{ext}"
    stored = client.upload_stream(bucket, out_key, thumb)
    if isinstance(stored, str) and stored:  # SeBS's wrappers may return a unique key
        out_key = stored
    t3 = time.perf_counter()
    return {
        "result": {
            "bucket": bucket,
            "key": out_key,
            "size": size,
            "format": fmt,
            "bytes": len(thumb),
        },
        "measurement": {
            "download_time": (t1 - t0) * 1e6,
            "download_size": len(data),
            "compute_time": (t2 - t1) * 1e6,
            "upload_time": (t3 - t2) * 1e6,
            "upload_size": len(thumb),
        },
    }
