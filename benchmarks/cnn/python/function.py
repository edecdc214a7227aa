"""cnn: image classification with a small residual convolutional network on ONNX Runtime
(the idea of FunctionBench's and SeBS's CNN inference benchmarks).

No model can be downloaded, so the network is built in code with onnx.helper when the module
is imported (seeded He-initialised weights, the "model load" of a cold start) and run by
onnxruntime. The weights are random, so the classes mean nothing; the work is that of a real
inference: convolutions, ReLU, residual add, global pooling, a dense layer and softmax.
"""

import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

CLASSES = 1000
# (out_channels, stride) of each 3x3 convolution; a residual add follows each stride-1 conv
LAYERS = [(32, 2), (64, 2), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1)]


def build_model(seed=0):
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def weight(name, shape, fan_in):
        arr = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        inits.append(numpy_helper.from_array(arr, name))
        return name

    x, cin = "input", 3
    for i, (cout, stride) in enumerate(LAYERS):
        w = weight(f"conv{i}_w", (cout, cin, 3, 3), cin * 9)
        b = weight(f"conv{i}_b", (cout,), cout)
        nodes.append(helper.make_node("Conv", [x, w, b], [f"conv{i}"], kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1], strides=[stride, stride]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        y = f"relu{i}"
        if stride == 1 and cin == cout:
            nodes.append(helper.make_node("Add", [y, x], [f"res{i}"]))
            y = f"res{i}"
        x, cin = y, cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"]))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], axis=1))
    fc_w = weight("fc_w", (cin, CLASSES), cin)
    fc_b = weight("fc_b", (CLASSES,), CLASSES)
    nodes.append(helper.make_node("Gemm", ["flat", fc_w, fc_b], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes, "kindling_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", CLASSES])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


_options = ort.SessionOptions()
_options.intra_op_num_threads = 1
_options.inter_op_num_threads = 1
MODEL = build_model()
SESSION = ort.InferenceSession(MODEL, _options, providers=["CPUExecutionProvider"])


def handler(event):
    batch = int(event["batch"])
    size = int(event["image_size"])
    rng = np.random.default_rng(int(event["seed"]))
    t0 = time.perf_counter()
    # a batch of "images": uint8 pixels, normalised as for an ImageNet model
    pixels = rng.integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)
    mean = np.array([0.485, 0.456, 0.406], np.float32) * 255
    std = np.array([0.229, 0.224, 0.225], np.float32) * 255
    x = ((pixels.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2).copy()
    t1 = time.perf_counter()
    (probs,) = SESSION.run(["probabilities"], {"input": x})
    t2 = time.perf_counter()
    top = np.argsort(-probs, axis=1)[:, :5]
    return {
        "result": {
            "shape": list(probs.shape),
            "row_sums": [float(s) for s in probs.sum(axis=1)],
            "min": float(probs.min()),
            "max": float(probs.max()),
            "top5": top.tolist(),
            "top1_probability": [float(probs[i, top[i, 0]]) for i in range(batch)],
        },
        "measurement": {
            "preprocess_time": (t1 - t0) * 1e6,
            "compute_time": (t2 - t1) * 1e6,
            "model_bytes": len(MODEL),
        },
    }
