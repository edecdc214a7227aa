"""compression: download a directory from object storage, zip it, upload the archive
(SeBS's 311.compression). Storage is reached through the sandbox's `storage` module, whose
API follows SeBS's python storage wrapper."""

import hashlib
import os
import shutil
import time
import uuid
import zipfile

from . import storage

client = storage.storage.get_instance()


def handler(event):
    bucket = event["bucket"]["bucket"]
    input_prefix = event["bucket"]["input"]
    output_prefix = event["bucket"]["output"]
    key = event["object"]["key"]
    work = f"/tmp/compression-{uuid.uuid4()}"
    download_path = os.path.join(work, "in")
    os.makedirs(download_path)
    try:
        t0 = time.perf_counter()
        prefix = f"{input_prefix}/{key}"
        client.download_directory(bucket, prefix, download_path)
        # SeBS's wrapper places each object at <path>/<full key>; tolerate <path>/<relative key>
        root = os.path.join(download_path, prefix)
        if not os.path.isdir(root):
            root = download_path
        size = sum(os.path.getsize(os.path.join(d, f))
                   for d, _, files in os.walk(root) for f in files)
        t1 = time.perf_counter()
        archive = shutil.make_archive(os.path.join(work, key), "zip", root_dir=root)
        archive_size = os.path.getsize(archive)
        t2 = time.perf_counter()
        out_key = f"{output_prefix}/{os.path.basename(archive)}"
        stored = client.upload(bucket, out_key, archive)
        if isinstance(stored, str) and stored:  # SeBS's wrappers may return a unique key
            out_key = stored
        t3 = time.perf_counter()
        # The archive's manifest, read back from the archive itself, for the output check.
        manifest = {}
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if not info.is_dir():
                    manifest[info.filename] = [info.file_size,
                                               hashlib.sha256(z.read(info)).hexdigest()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "result": {
            "bucket": bucket,
            "key": out_key,
            "input_bytes": size,
            "archive_bytes": archive_size,
            "manifest": manifest,
        },
        "measurement": {
            "download_time": (t1 - t0) * 1e6,
            "download_size": size,
            "compute_time": (t2 - t1) * 1e6,
            "upload_time": (t3 - t2) * 1e6,
            "upload_size": archive_size,
        },
    }
