"""face_detection: Haar-cascade face detection with OpenCV (FunctionBench's face detection).

The cascade is the frontal-face model that the opencv-python-headless wheel ships
(cv2.data.haarcascades); nothing is downloaded.
"""

import base64
import time

import cv2
import numpy as np

CASCADE = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
if CASCADE.empty():
    raise RuntimeError("cannot load the Haar cascade shipped with opencv-python-headless")


def handler(event):
    t0 = time.perf_counter()
    buf = np.frombuffer(base64.b64decode(event["image"]), dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    grey = cv2.equalizeHist(grey)
    t1 = time.perf_counter()
    faces = CASCADE.detectMultiScale(
        grey,
        scaleFactor=float(event.get("scale_factor", 1.1)),
        minNeighbors=int(event.get("min_neighbors", 5)),
        minSize=(int(event.get("min_size", 30)),) * 2,
    )
    t2 = time.perf_counter()
    return {
        "result": {
            "image_size": [int(img.shape[1]), int(img.shape[0])],
            "faces": [[int(v) for v in f] for f in faces],
        },
        "measurement": {"decode_time": (t1 - t0) * 1e6, "compute_time": (t2 - t1) * 1e6},
    }
