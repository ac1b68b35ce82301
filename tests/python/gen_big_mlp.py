#!/usr/bin/env python3
"""Write a ~50 MB float32 MLP for tests/shared_weights.rs (generated at test time, never committed).

Usage: .venv/bin/python tests/python/gen_big_mlp.py DIR

  DIR/big/1/model.onnx  x[N,1024] -> Dense 4096 -> ReLU -> Dense 2048 -> ReLU -> Dense 16 -> y[N,16]
                        (seeded N(0, 1/fan_in) weights; about 12.6 M parameters in float32)
  DIR/expected.json     {"input": [4 x 1024 floats, row-major], "output": [4 x 16 floats]}: the output
                        computed by numpy in float64 for that input
"""

import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTHS = [1024, 4096, 2048, 16]


def main():
    out = sys.argv[1]
    rng = np.random.default_rng(20261201)
    inits, nodes, weights = [], [], []
    prev = "x"
    for i, (n_in, n_out) in enumerate(zip(WIDTHS, WIDTHS[1:])):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = (rng.standard_normal(n_out) * 0.01).astype(np.float32)
        weights.append((w, b))
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        last = i == len(WIDTHS) - 2
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Add", [f"m{i}", f"B{i}"], ["y" if last else f"a{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"]))
            prev = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "big_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTHS[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDTHS[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="maas-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = os.path.join(out, "big", "1", "model.onnx")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())

    x = (np.arange(4 * WIDTHS[0]) % 97 / 97.0 - 0.5).astype(np.float32).reshape(4, WIDTHS[0])
    h = x.astype(np.float64)
    for i, (w, b) in enumerate(weights):
        h = h @ w.astype(np.float64) + b.astype(np.float64)
        if i < len(weights) - 1:
            h = np.maximum(h, 0.0)
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({"input": x.ravel().tolist(), "output": h.ravel().tolist()}, f)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
