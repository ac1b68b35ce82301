#!/usr/bin/env python3
"""Write the small models that tests/optimize.rs runs `maas optimize` on (at test time; nothing committed).

Usage: .venv/bin/python scripts/gen_optimize_models.py DIR

Writes (deterministically, seeded):

  DIR/text/1/model.onnx          a toy text classifier: input_ids int64 [batch, seq] -> Gather(embedding
                                 [1000, 64]) -> ReduceMean over seq -> MatMul [64, 256] + bias -> Relu ->
                                 Gemm (weight [10, 256], transB = 1, bias [10]) -> logits float [batch, 10];
                                 and shape = Shape(input_ids) int64 [2] (an exact output)
  DIR/text_ext/1/model.onnx      the same model, every tensor of 1 KiB or more stored as external data in
  DIR/text_ext/1/model.onnx.data model.onnx.data (onnx.save_model(save_as_external_data=True))
  DIR/identical.onnx             a byte-identical copy of text/1/model.onnx
  DIR/perturbed.onnx             text/1 with the MatMul weight replaced by unrelated values of the same
                                 scale (what a broken optimization looks like): the guard must refuse it
  DIR/oracle/<name>.onnx         when onnxruntime is installed and --oracle MODEL is given: ONNX Runtime's
                                 own quantize_dynamic of MODEL (per-channel and per-tensor, MatMul + Gemm +
                                 Gather), for comparing sizes and verdicts with maas optimize
"""

import argparse
import os
import shutil

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20250301
VOCAB, EMB, HIDDEN, CLASSES = 1000, 64, 256, 10


def text_model(rng, w1=None):
    emb = rng.normal(0.0, 0.5, size=(VOCAB, EMB)).astype(np.float32)
    drawn = rng.normal(0.0, np.sqrt(2.0 / EMB), size=(EMB, HIDDEN)).astype(np.float32)
    w1 = drawn if w1 is None else w1
    b1 = rng.normal(0.0, 0.05, size=(HIDDEN,)).astype(np.float32)
    w2 = rng.normal(0.0, np.sqrt(1.0 / HIDDEN), size=(CLASSES, HIDDEN)).astype(np.float32)
    b2 = rng.normal(0.0, 0.05, size=(CLASSES,)).astype(np.float32)
    inits = [
        numpy_helper.from_array(emb, "embedding"),
        numpy_helper.from_array(w1, "W1"),
        numpy_helper.from_array(b1, "B1"),
        numpy_helper.from_array(w2, "W2"),
        numpy_helper.from_array(b2, "B2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "seq_axis"),
    ]
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["tokens"], name="embed"),
        helper.make_node("ReduceMean", ["tokens", "seq_axis"], ["pooled"], keepdims=0, name="pool"),
        helper.make_node("MatMul", ["pooled", "W1"], ["h"], name="dense"),
        helper.make_node("Add", ["h", "B1"], ["hb"], name="dense_bias"),
        helper.make_node("Relu", ["hb"], ["hr"], name="relu"),
        helper.make_node("Gemm", ["hr", "W2", "B2"], ["logits"], transB=1, name="classifier"),
        helper.make_node("Shape", ["input_ids"], ["shape"], name="shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "text",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="gen_optimize_models")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def save(model, path, external=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if external:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=1024)
    else:
        onnx.save_model(model, path)
    print(f"wrote {path}")


def oracle(model_path, out_dir):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    os.makedirs(out_dir, exist_ok=True)
    for per_channel in (True, False):
        out = os.path.join(out_dir, f"{'per_channel' if per_channel else 'per_tensor'}.onnx")
        quantize_dynamic(model_path, out, per_channel=per_channel, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm", "Gather"])
        print(f"wrote {out} ({os.path.getsize(out)} bytes)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir")
    p.add_argument("--oracle", metavar="MODEL", help="also write ONNX Runtime's quantize_dynamic of MODEL")
    args = p.parse_args()
    model = text_model(np.random.default_rng(SEED))
    save(model, os.path.join(args.dir, "text", "1", "model.onnx"))
    save(model, os.path.join(args.dir, "text_ext", "1", "model.onnx"), external=True)
    shutil.copyfile(os.path.join(args.dir, "text", "1", "model.onnx"), os.path.join(args.dir, "identical.onnx"))
    other = np.random.default_rng(SEED + 1).normal(0.0, np.sqrt(2.0 / EMB), size=(EMB, HIDDEN)).astype(np.float32)
    save(text_model(np.random.default_rng(SEED), w1=other), os.path.join(args.dir, "perturbed.onnx"))
    if args.oracle:
        oracle(args.oracle, os.path.join(args.dir, "oracle"))


if __name__ == "__main__":
    main()
