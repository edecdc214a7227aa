"""video_processing: H.264 transcode, decode, thumbnail and lossless FFV1 round trip with the
ffmpeg of imageio-ffmpeg (TrEnv's video-processing).

The source is ffmpeg's deterministic `testsrc2`; its digests below were computed once with
imageio-ffmpeg 0.8.1 (its bundled ffmpeg). The validator checks the source digest, that the
lossless round trip gives the source back exactly, that the MP4 holds every frame and is smaller
than the raw video, and the thumbnail's size.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_shared"))
import synth  # noqa: E402

PARAMS = {
    "test": {"width": 160, "height": 120, "fps": 10, "seconds": 1},
    "small": {"width": 320, "height": 240, "fps": 25, "seconds": 2},
    "large": {"width": 640, "height": 480, "fps": 25, "seconds": 4},
}

# (width, height, fps, seconds) -> sha256 of the rgb24 frames of testsrc2
KNOWN_SOURCE_SHA256 = {
    (160, 120, 10, 1): "dd3ab1e3a199cf779f33731831f4e2fb18b20817f4c5f464d4948fedfbfd2fb8",
    (320, 240, 25, 2): "d0160fe555b000e037945958953b5fef3fc939962df497f24b810eb555d1f2a6",
    (640, 480, 25, 4): "2ed7e1d2d867dc1449d261bda57b41096f17fcd47e64dbc6b368897a37068996",
}


def buckets_count():
    return (0, 0)


def generate_input(data_dir=None, size=None, benchmarks_bucket=None, input_paths=None,
                   output_paths=None, upload_func=None, nosql_func=None):
    return dict(PARAMS[synth.pick_size(data_dir, size, PARAMS)])


def validate(event, output):
    try:
        output = output["result"]  # the handler's dict: SeBS's `result` and `measurement`
        w, h, fps, secs = event["width"], event["height"], event["fps"], event["seconds"]
        frames = fps * secs
        known = KNOWN_SOURCE_SHA256.get((w, h, fps, secs))
        return ((output["width"], output["height"]) == (w, h)
                and output["source_frames"] == frames
                and output["mp4_frames"] == frames
                and 0 < output["mp4_bytes"] < w * h * 3 * frames
                and output["thumbnail"] == [w // 2, h // 2]
                and output["lossless_sha256"] == output["source_sha256"]
                and (known is None or output["source_sha256"] == known))
    except (KeyError, TypeError):
        return False
