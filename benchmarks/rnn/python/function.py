"""rnn: character-level text generation with an LSTM on ONNX Runtime (the idea of
FunctionBench's rnn benchmark, which generates names from a character RNN).

No model can be downloaded, so the network (embedding, one LSTM layer, dense layer, softmax)
is built in code with onnx.helper when the module is imported, with seeded random weights,
and run by onnxruntime: the prompt is fed in one call, then each generated character is fed
back, one session call per step, carrying the LSTM state (greedy decoding).
"""

import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,'-"
VOCAB = len(ALPHABET)
EMBED = 128
HIDDEN = 512


def build_model(seed=0):
    rng = np.random.default_rng(seed)

    def init(name, shape, scale):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32),
                                       name)

    inits = [
        init("embedding", (VOCAB, EMBED), 1.0),
        init("W", (1, 4 * HIDDEN, EMBED), 1.0 / np.sqrt(EMBED)),
        init("R", (1, 4 * HIDDEN, HIDDEN), 1.0 / np.sqrt(HIDDEN)),
        init("B", (1, 8 * HIDDEN), 0.1),
        init("out_w", (HIDDEN, VOCAB), 2.0 / np.sqrt(HIDDEN)),
        init("out_b", (VOCAB,), 0.1),
        numpy_helper.from_array(np.array([-1, HIDDEN], np.int64), "flat_shape"),
    ]
    nodes = [
        # tokens [seq, 1] -> embeddings [seq, 1, EMBED]
        helper.make_node("Gather", ["embedding", "tokens"], ["embedded"], axis=0),
        helper.make_node("LSTM", ["embedded", "W", "R", "B", "", "h0", "c0"],
                         ["Y", "h_out", "c_out"], hidden_size=HIDDEN),
        # the last step's output: h_out [1, 1, HIDDEN] -> [1, HIDDEN]
        helper.make_node("Reshape", ["h_out", "flat_shape"], ["h_flat"]),
        helper.make_node("Gemm", ["h_flat", "out_w", "out_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    state = ["num_directions", "batch", HIDDEN]
    graph = helper.make_graph(
        nodes, "kindling_char_lstm",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["seq", 1]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, state),
         helper.make_tensor_value_info("c0", TensorProto.FLOAT, state)],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, VOCAB]),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, state),
         helper.make_tensor_value_info("c_out", TensorProto.FLOAT, state)],
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
    prompt = event["prompt"].lower()
    length = int(event["length"])
    t0 = time.perf_counter()
    tokens = np.array([[ALPHABET.index(ch)] for ch in prompt if ch in ALPHABET], np.int64)
    h = np.zeros((1, 1, HIDDEN), np.float32)
    c = np.zeros((1, 1, HIDDEN), np.float32)
    generated = []
    sums = []
    probs = None
    for _ in range(length):
        probs, h, c = SESSION.run(None, {"tokens": tokens, "h0": h, "c0": c})
        nxt = int(np.argmax(probs[0]))
        generated.append(ALPHABET[nxt])
        sums.append(float(probs.sum()))
        tokens = np.array([[nxt]], np.int64)
    t1 = time.perf_counter()
    return {
        "result": {
            "prompt": prompt,
            "generated": "".join(generated),
            "probability_shape": list(probs.shape) if probs is not None else [],
            "min_probability_sum": min(sums) if sums else None,
            "max_probability_sum": max(sums) if sums else None,
            "state_shape": list(h.shape),
        },
        "measurement": {"compute_time": (t1 - t0) * 1e6, "model_bytes": len(MODEL)},
    }
