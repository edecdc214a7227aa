"""image_rotate: decode an image and run Pillow transformations on it (FunctionBench's
image_processing: flip, rotate, filter, grey scale, resize)."""

import base64
import hashlib
import io
import time

from PIL import Image, ImageFilter

Image.preinit()  # load the common image plugins at import, not in the first invocation


def handler(event):
    t0 = time.perf_counter()
    img = Image.open(io.BytesIO(base64.b64decode(event["image"])))
    img.load()
    t1 = time.perf_counter()
    results = {}
    rotated = None
    for _ in range(int(event.get("repetitions", 1))):
        rotated = img.transpose(Image.Transpose.ROTATE_90)
        flipped = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        turned = img.rotate(int(event.get("angle", 30)), expand=True)
        blurred = img.filter(ImageFilter.GaussianBlur(2))
        grey = img.convert("L")
        resized = img.resize((max(1, img.width // 2), max(1, img.height // 2)))
        results = {
            "rotate90": list(rotated.size),
            "flip": list(flipped.size),
            "rotate_angle": list(turned.size),
            "blur": list(blurred.size),
            "grey": list(grey.size),
            "grey_mode": grey.mode,
            "resize": list(resized.size),
        }
    t2 = time.perf_counter()
    out = io.BytesIO()
    rotated.save(out, format="PNG")
    t3 = time.perf_counter()
    return {
        "result": {
            "input_size": list(img.size),
            "sizes": results,
            "rotate90_raw_sha256": hashlib.sha256(rotated.convert("RGB").tobytes()).hexdigest(),
            "rotate90_png_bytes": len(out.getvalue()),
        },
        "measurement": {
            "decode_time": (t1 - t0) * 1e6,
            "compute_time": (t2 - t1) * 1e6,
            "encode_time": (t3 - t2) * 1e6,
        },
    }
