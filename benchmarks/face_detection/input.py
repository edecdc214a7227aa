"""face_detection: OpenCV Haar cascade on a generated image of drawn faces.

No photograph can be downloaded here, so the image is a grid of identical drawn faces (an
ellipse with brows, eyes, nose and mouth, softened by a box blur; benchmarks/_shared/synth.py)
that the frontal-face cascade shipped with opencv-python-headless does detect. The validator
checks that every rectangle lies within the image and that every drawn face has a detection
centred inside its tile (a property, not an exact list of rectangles, which may move by a
pixel or two between OpenCV versions).
"""

import base64
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_shared"))
import synth  # noqa: E402

MARGIN = 20
PARAMS = {
    "test": {"tile": 96, "cols": 1, "rows": 1},
    "small": {"tile": 160, "cols": 4, "rows": 3},
    "large": {"tile": 200, "cols": 12, "rows": 8},
}


def buckets_count():
    return (0, 0)


def generate_input(data_dir=None, size=None, benchmarks_bucket=None, input_paths=None,
                   output_paths=None, upload_func=None, nosql_func=None):
    p = PARAMS[synth.pick_size(data_dir, size, PARAMS)]
    w, h, raw = synth.tile_grey(synth.face_tile(p["tile"]), p["tile"], p["cols"], p["rows"],
                                margin=MARGIN)
    png = synth.encode_png(w, h, raw, channels=1)
    return {"image": base64.b64encode(png).decode(), "width": w, "height": h,
            "scale_factor": 1.1, "min_neighbors": 5, "min_size": 30, **p}


def validate(event, output):
    try:
        result = output["result"]  # the handler's dict: SeBS's `result` and `measurement`
        w, h, t = event["width"], event["height"], event["tile"]
        faces = result["faces"]
        if result["image_size"] != [w, h] or not isinstance(faces, list):
            return False
        for x, y, fw, fh in faces:
            if x < 0 or y < 0 or fw <= 0 or fh <= 0 or x + fw > w or y + fh > h:
                return False
        for r in range(event["rows"]):
            for c in range(event["cols"]):
                x0, y0 = MARGIN + c * (t + MARGIN), MARGIN + r * (t + MARGIN)
                if not any(x0 <= x + fw / 2 < x0 + t and y0 <= y + fh / 2 < y0 + t
                           for x, y, fw, fh in faces):
                    return False
        return len(faces) <= 2 * event["rows"] * event["cols"]
    except (KeyError, TypeError, ValueError):
        return False
