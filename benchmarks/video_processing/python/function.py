"""video_processing: transcode and frame extraction with the ffmpeg of imageio-ffmpeg (TrEnv's
and FunctionBench's video-processing).

ffmpeg's own `testsrc2` source gives `seconds` of WxH video at `fps` (deterministic); the
function encodes it to H.264 in MP4 and to lossless FFV1, decodes both, counts the MP4's frames,
extracts its middle frame as a half-size PNG thumbnail, and reports digests of the source and
of the FFV1 round trip (equal when encoding and decoding are exact). Two ffmpeg runs in all.
"""

import hashlib
import os
import struct
import subprocess
import tempfile
import time

import imageio_ffmpeg

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg(*args, data=None):
    run = subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", *args],
                         input=data, capture_output=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)}: {run.stderr.decode(errors='replace')}")
    return run.stdout


def read(path):
    with open(path, "rb") as f:
        return f.read()


def handler(event):
    width, height = int(event["width"]), int(event["height"])
    fps, seconds = int(event["fps"]), int(event["seconds"])
    frames = fps * seconds
    frame_bytes = width * height * 3
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = lambda name: os.path.join(tmp, name)  # noqa: E731
        # One run generates the source and encodes it twice: H.264 (lossy) and FFV1 (lossless).
        ffmpeg("-f", "lavfi", "-i",
               f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}",
               "-map", "0", "-f", "rawvideo", "-pix_fmt", "rgb24", path("source.rgb"),
               "-map", "0", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
               path("out.mp4"),
               "-map", "0", "-c:v", "ffv1", "-pix_fmt", "bgr0", path("lossless.mkv"))
        t1 = time.perf_counter()
        # One run decodes both, and extracts the middle frame of the MP4 as a thumbnail.
        ffmpeg("-i", path("out.mp4"), "-i", path("lossless.mkv"),
               "-map", "0", "-f", "rawvideo", "-pix_fmt", "rgb24", path("decoded.rgb"),
               "-map", "0", "-vf", f"select=eq(n\\,{frames // 2}),scale=iw/2:ih/2",
               "-frames:v", "1", "-c:v", "png", path("thumb.png"),
               "-map", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", path("lossless.rgb"))
        source, decoded, thumb, lossless = (read(path(n)) for n in
                                            ("source.rgb", "decoded.rgb", "thumb.png",
                                             "lossless.rgb"))
        mp4_size = os.path.getsize(path("out.mp4"))
    t2 = time.perf_counter()
    is_png = thumb[:8] == b"\x89PNG\r\n\x1a\n"
    thumb_w, thumb_h = struct.unpack(">II", thumb[16:24]) if is_png else (0, 0)
    return {
        "result": {
            "width": width,
            "height": height,
            "source_frames": len(source) // frame_bytes,
            "source_sha256": hashlib.sha256(source).hexdigest(),
            "mp4_bytes": mp4_size,
            "mp4_frames": len(decoded) // frame_bytes,
            "thumbnail": [thumb_w, thumb_h],
            "lossless_sha256": hashlib.sha256(lossless).hexdigest(),
        },
        "measurement": {
            "encode_time": (t1 - t0) * 1e6,
            "compute_time": (t2 - t0) * 1e6,
        },
    }
