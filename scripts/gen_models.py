#!/usr/bin/env python3
"""Generate the ONNX models used by maas: the bundled example repository and
the test fixtures.

Usage (from anywhere; paths are resolved relative to the repository root):

    python3 scripts/gen_models.py            # write all models
    python3 scripts/gen_models.py --verify   # write, then check them with onnxruntime

Requirements: ``pip install onnx==1.23.2 numpy`` (plus ``onnxruntime`` for
``--verify``).

The output is deterministic: fixed seeds, fixed producer name/version, no
timestamps, and deterministic protobuf serialisation, so re-running the script
yields byte-identical files.

Written files:

  model_repository/numbers_classifier/1/model.onnx   classifier, weights seed 1
  model_repository/numbers_classifier/2/model.onnx   classifier, weights seed 2
  model_repository/identity_string/1/model.onnx      string Identity, shape [N]

  tests/fixtures/repo/identity_<dtype>/1/model.onnx  Identity x -> y, shape [N, M]
  tests/fixtures/repo/numbers_classifier/1/model.onnx  same bytes as bundled v1
  tests/fixtures/repo/fixed_shape/1/model.onnx       a[2,3] f32 -> sum=a+1, b[N] i64 -> b_out
  tests/fixtures/repo/broken/1/model.onnx            not an ONNX file
  tests/fixtures/repo/slow/1/model.onnx              many MatMul+Tanh layers
  tests/fixtures/rollout/v<k>.onnx                   y = x + k, x float32 [N, 1], k = 1..12
  tests/fixtures/rollout/warmup_fails.onnx           loads, but its warmup run (N = 1) fails
  tests/fixtures/objstore/v2/model.onnx + offset.bin y = x + 2, the constant as ONNX external data:
                                                     model.onnx alone does not load (object-store tests)
  tests/fixtures/value_shapes/expand_shape/1/model.onnx    Expand whose shape is an input
  tests/fixtures/value_shapes/split_sequence/1/model.onnx  SplitToSequence with a split-sizes input
  tests/fixtures/rows/extra_row/1/model.onnx         x f32[N, 2] -> y = Concat(x, x[0:1]): N + 1 rows
  tests/fixtures/rows/uneven_rows/1/model.onnx       x f32[N, 2] -> a = x (N rows), b = Concat(x, x[0:1]) (N + 1)
"""

import argparse
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = os.path.join(ROOT, "model_repository")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "repo")

OPSET = 17
IR_VERSION = 8
PRODUCER_NAME = "maas-gen-models"
PRODUCER_VERSION = "1"

# Number of MatMul+Tanh layers in the "slow" fixture. Tuned so that
# onnxruntime (intra_op_num_threads=1) takes roughly 100-300 ms for an input
# of shape [64, 256] on a typical x86-64 core (measured ~190 ms; ~0.13 ms
# per layer). The file stays ~66 KB because W is computed in-graph.
SLOW_LAYERS = 1400
SLOW_WIDTH = 256

# name -> ONNX element type for the identity fixtures
IDENTITY_DTYPES = [
    ("float", TensorProto.FLOAT),
    ("double", TensorProto.DOUBLE),
    ("float16", TensorProto.FLOAT16),
    ("bfloat16", TensorProto.BFLOAT16),
    ("int8", TensorProto.INT8),
    ("int16", TensorProto.INT16),
    ("int32", TensorProto.INT32),
    ("int64", TensorProto.INT64),
    ("uint8", TensorProto.UINT8),
    ("uint16", TensorProto.UINT16),
    ("uint32", TensorProto.UINT32),
    ("uint64", TensorProto.UINT64),
    ("bool", TensorProto.BOOL),
    ("string", TensorProto.STRING),
]

BROKEN_BYTES = b"this is not an onnx model\n"


# --------------------------------------------------------------------------
# helpers


def make_model(graph):
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def serialize(model):
    return model.SerializeToString(deterministic=True)


def write_bytes(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    print(f"wrote {os.path.relpath(path, ROOT)} ({len(data)} bytes)")


def f32(array):
    return np.asarray(array, dtype=np.float32)


# --------------------------------------------------------------------------
# models


def numbers_classifier(seed):
    """x[N,8] -> Dense16 -> Relu -> Dense1 -> Sigmoid -> y[N,1]."""
    rng = np.random.default_rng(seed)
    w1 = f32(rng.normal(0.0, 0.5, size=(8, 16)))
    b1 = f32(rng.normal(0.0, 0.5, size=(16,)))
    w2 = f32(rng.normal(0.0, 0.5, size=(16, 1)))
    b2 = f32(rng.normal(0.0, 0.5, size=(1,)))
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h1_mm"], name="dense1_matmul"),
        helper.make_node("Add", ["h1_mm", "b1"], ["h1"], name="dense1_add"),
        helper.make_node("Relu", ["h1"], ["h1_relu"], name="relu"),
        helper.make_node("MatMul", ["h1_relu", "W2"], ["h2_mm"], name="dense2_matmul"),
        helper.make_node("Add", ["h2_mm", "b2"], ["logit"], name="dense2_add"),
        helper.make_node("Sigmoid", ["logit"], ["y"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "numbers_classifier",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            numpy_helper.from_array(w1, "W1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "W2"),
            numpy_helper.from_array(b2, "b2"),
        ],
    )
    return make_model(graph)


def identity(elem_type, shape, graph_name):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name="identity")],
        graph_name,
        inputs=[helper.make_tensor_value_info("x", elem_type, shape)],
        outputs=[helper.make_tensor_value_info("y", elem_type, shape)],
    )
    return make_model(graph)


def fixed_shape():
    """a f32[2,3] -> sum = a + 1.0 (f32[2,3]); b i64[N] -> b_out = Identity(b)."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "one"], ["sum"], name="add_one"),
            helper.make_node("Identity", ["b"], ["b_out"], name="identity_b"),
        ],
        "fixed_shape",
        inputs=[
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("b", TensorProto.INT64, ["batch"]),
        ],
        outputs=[
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("b_out", TensorProto.INT64, ["batch"]),
        ],
        initializer=[numpy_helper.from_array(f32([1.0]), "one")],
    )
    return make_model(graph)


def slow(layers=SLOW_LAYERS, width=SLOW_WIDTH):
    """x f32[N,256] -> (MatMul W, Tanh) x layers -> y f32[N,256].

    A dense [256,256] float32 initializer alone would be 256 KiB, so to keep
    the file small the shared weight matrix is computed inside the graph from
    two small vectors: W = Sin(u * v) * 0.125, with u [256,1] and v [1,256]
    (broadcast outer product; the wide value range makes W well conditioned,
    so activations neither vanish nor blow up). Every MatMul node references
    the same "W". Layer nodes are unnamed and use short tensor names to keep
    the file small.
    """
    rng = np.random.default_rng(1234)
    u = f32(rng.uniform(-100.0, 100.0, size=(width, 1)))
    v = f32(rng.uniform(-100.0, 100.0, size=(1, width)))
    scale = f32([0.125])
    nodes = [
        helper.make_node("Mul", ["u", "v"], ["uv"], name="outer"),
        helper.make_node("Sin", ["uv"], ["sin_uv"], name="sin"),
        helper.make_node("Mul", ["sin_uv", "scale"], ["W"], name="scale_w"),
    ]
    prev = "x"
    for i in range(layers):
        out = "y" if i == layers - 1 else f"t{i}"
        nodes.append(helper.make_node("MatMul", [prev, "W"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "slow",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=[
            numpy_helper.from_array(u, "u"),
            numpy_helper.from_array(v, "v"),
            numpy_helper.from_array(scale, "scale"),
        ],
    )
    return make_model(graph)


# --------------------------------------------------------------------------
# generation


def offset(value):
    """y = x + value for x float32 [N, 1]: a model whose output tells which version answered."""
    c = numpy_helper.from_array(f32([value]), "offset")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "offset"], ["y"])],
        f"offset_{value}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [c],
    )
    return make_model(graph)


def offset_external(value, data_file):
    """y = x + value with the constant stored outside the model (ONNX external data in `data_file`).

    Returns (model bytes, data bytes): the model alone fails to load, so a version loaded before its
    second object arrived would show.
    """
    model = offset(value)
    c = model.graph.initializer[0]
    data = c.raw_data if c.raw_data else f32(list(c.float_data)).tobytes()
    c.ClearField("raw_data")
    c.ClearField("float_data")
    c.data_location = TensorProto.EXTERNAL
    for key, val in (("location", data_file), ("offset", "0"), ("length", str(len(data)))):
        entry = c.external_data.add()
        entry.key = key
        entry.value = val
    return serialize(model), bytes(data)


def warmup_fails():
    """Loads fine, but Reshape([N] -> [2, 3]) fails for the warmup input (N = 1): only N = 6 runs."""
    shape = numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "warmup_fails",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [shape],
    )
    return make_model(graph)


ROLLOUT = os.path.join(ROOT, "tests", "fixtures", "rollout")
ROLLOUT_VERSIONS = 12
OBJSTORE = os.path.join(ROOT, "tests", "fixtures", "objstore")


# --------------------------------------------------------------------------
# value-dependent shapes: valid models whose output shapes depend on input values, so the
# synthesized warmup (zeros, dynamic dimensions = 1) fails while real requests run


VALUE_SHAPES = os.path.join(ROOT, "tests", "fixtures", "value_shapes")


def expand_shape():
    """x f32[N, 3], shape i64[2] -> y = Expand(x, shape): the output shape is the input *value*.

    With zeros for `shape` the broadcast of [1, 3] to [0, 0] is invalid ("invalid expand shape").
    """
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["y"], name="expand")],
        "expand_shape",
        inputs=[
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", "cols"])],
    )
    return make_model(graph)


def split_sequence():
    """x f32[N], split i64[K] -> SplitToSequence(x, split) -> first = SequenceAt(seq, 0) and
    joined = ConcatFromSequence(seq, axis 0) (== x): tensor outputs from a sequence.

    With zeros for `split` the sizes (sum 0) do not add up to the length of x (1): the run fails.
    """
    zero = numpy_helper.from_array(np.array(0, dtype=np.int64), "zero")
    graph = helper.make_graph(
        [
            helper.make_node("SplitToSequence", ["x", "split"], ["seq"], name="split", axis=0),
            helper.make_node("SequenceAt", ["seq", "zero"], ["first"], name="first"),
            helper.make_node("ConcatFromSequence", ["seq"], ["joined"], name="join", axis=0),
        ],
        "split_sequence",
        inputs=[
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"]),
            helper.make_tensor_value_info("split", TensorProto.INT64, ["k"]),
        ],
        outputs=[
            helper.make_tensor_value_info("first", TensorProto.FLOAT, ["m"]),
            helper.make_tensor_value_info("joined", TensorProto.FLOAT, ["n"]),
        ],
        initializer=[zero],
    )
    return make_model(graph)


def generate_value_shapes():
    write_bytes(os.path.join(VALUE_SHAPES, "expand_shape", "1", "model.onnx"), serialize(expand_shape()))
    write_bytes(os.path.join(VALUE_SHAPES, "split_sequence", "1", "model.onnx"), serialize(split_sequence()))


def verify_value_shapes(session, check):
    print("value_shapes (real inputs run, synthesized zeros fail):")
    sess = session(os.path.join(VALUE_SHAPES, "expand_shape", "1", "model.onnx"))
    x = f32([[1, 2, 3]])
    (y,) = sess.run(["y"], {"x": x, "shape": np.array([2, 3], dtype=np.int64)})
    check(np.array_equal(y, np.broadcast_to(x, (2, 3))), f"expand_shape y={y.tolist()}")
    try:
        sess.run(["y"], {"x": f32([[0, 0, 0]]), "shape": np.zeros(2, dtype=np.int64)})
        check(False, "expand_shape ran on zeros")
    except Exception as e:  # noqa: BLE001
        check(True, f"expand_shape on zeros fails: {str(e)[:80]}")
    sess = session(os.path.join(VALUE_SHAPES, "split_sequence", "1", "model.onnx"))
    x = f32([1, 2, 3, 4, 5])
    first, joined = sess.run(["first", "joined"], {"x": x, "split": np.array([2, 3], dtype=np.int64)})
    check(first.tolist() == [1, 2] and joined.tolist() == x.tolist(), f"split_sequence first={first} joined={joined}")
    try:
        sess.run(["first"], {"x": f32([0]), "split": np.zeros(1, dtype=np.int64)})
        check(False, "split_sequence ran on zeros")
    except Exception as e:  # noqa: BLE001
        check(True, f"split_sequence on zeros fails: {str(e)[:80]}")


def generate(slow_layers=SLOW_LAYERS):
    classifier_v1 = serialize(numbers_classifier(1))
    classifier_v2 = serialize(numbers_classifier(2))

    # bundled repository
    write_bytes(os.path.join(BUNDLED, "numbers_classifier", "1", "model.onnx"), classifier_v1)
    write_bytes(os.path.join(BUNDLED, "numbers_classifier", "2", "model.onnx"), classifier_v2)
    write_bytes(
        os.path.join(BUNDLED, "identity_string", "1", "model.onnx"),
        serialize(identity(TensorProto.STRING, ["batch"], "identity_string")),
    )

    # test fixtures
    for name, elem_type in IDENTITY_DTYPES:
        write_bytes(
            os.path.join(FIXTURES, f"identity_{name}", "1", "model.onnx"),
            serialize(identity(elem_type, ["batch", "width"], f"identity_{name}")),
        )
    write_bytes(os.path.join(FIXTURES, "numbers_classifier", "1", "model.onnx"), classifier_v1)
    write_bytes(os.path.join(FIXTURES, "fixed_shape", "1", "model.onnx"), serialize(fixed_shape()))
    write_bytes(os.path.join(FIXTURES, "broken", "1", "model.onnx"), BROKEN_BYTES)
    write_bytes(os.path.join(FIXTURES, "slow", "1", "model.onnx"), serialize(slow(slow_layers)))

    # rollout fixtures: version k answers y = x + k (copied into temp repositories by the tests)
    for k in range(1, ROLLOUT_VERSIONS + 1):
        write_bytes(os.path.join(ROLLOUT, f"v{k}.onnx"), serialize(offset(k)))
    write_bytes(os.path.join(ROLLOUT, "warmup_fails.onnx"), serialize(warmup_fails()))
    model, data = offset_external(2, "offset.bin")
    write_bytes(os.path.join(OBJSTORE, "v2", "model.onnx"), model)
    write_bytes(os.path.join(OBJSTORE, "v2", "offset.bin"), data)
    generate_value_shapes()
    generate_rows()


# --------------------------------------------------------------------------
# REST row format: outputs whose first dimension is not the number of instances


ROWS = os.path.join(ROOT, "tests", "fixtures", "rows")


def _with_first_row(x, out, prefix):
    """Nodes computing out = Concat(x, x[0:1]) along axis 0 (one row more than x)."""
    consts = [
        numpy_helper.from_array(np.array([0], dtype=np.int64), f"{prefix}_start"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), f"{prefix}_end"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), f"{prefix}_axis"),
    ]
    nodes = [
        helper.make_node(
            "Slice", [x, f"{prefix}_start", f"{prefix}_end", f"{prefix}_axis"], [f"{prefix}_first"], name=f"{prefix}_slice"
        ),
        helper.make_node("Concat", [x, f"{prefix}_first"], [out], name=f"{prefix}_concat", axis=0),
    ]
    return nodes, consts


def extra_row():
    """x f32[N, 2] -> y f32[N + 1, 2] = Concat(x, x[0:1]): more rows than instances."""
    nodes, consts = _with_first_row("x", "y", "y")
    graph = helper.make_graph(
        nodes,
        "extra_row",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 2])],
        initializer=consts,
    )
    return make_model(graph)


def uneven_rows():
    """x f32[N, 2] -> a = x (N rows) and b = Concat(x, x[0:1]) (N + 1 rows): outputs that disagree."""
    nodes, consts = _with_first_row("x", "b", "b")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["a"], name="a")] + nodes,
        "uneven_rows",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        outputs=[
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["rows", 2]),
        ],
        initializer=consts,
    )
    return make_model(graph)


def generate_rows():
    write_bytes(os.path.join(ROWS, "extra_row", "1", "model.onnx"), serialize(extra_row()))
    write_bytes(os.path.join(ROWS, "uneven_rows", "1", "model.onnx"), serialize(uneven_rows()))


def verify_rows(session, check):
    print("rows (outputs with another first dimension than the input):")
    x = f32([[1, 2], [3, 4]])
    (y,) = session(os.path.join(ROWS, "extra_row", "1", "model.onnx")).run(["y"], {"x": x})
    check(y.tolist() == [[1, 2], [3, 4], [1, 2]], f"extra_row y={y.tolist()}")
    a, b = session(os.path.join(ROWS, "uneven_rows", "1", "model.onnx")).run(["a", "b"], {"x": x})
    check(a.shape == (2, 2) and b.shape == (3, 2), f"uneven_rows a{a.shape} b{b.shape}")


# --------------------------------------------------------------------------
# verification (optional, needs onnxruntime)


def verify():
    import time

    import onnxruntime as ort

    def session(path, threads=None):
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def sample(name):
        shape = (3, 4)
        n = int(np.prod(shape))
        if name == "string":
            vals = ["", "hello", "wörld", "a b c", "ünïcødé ✓", "x" * 40]
            return np.array([vals[i % len(vals)] for i in range(n)], dtype=object).reshape(shape)
        if name == "bool":
            return (np.arange(n) % 3 == 0).reshape(shape)
        if name in ("float", "double", "float16", "bfloat16"):
            base = np.array([0.0, -0.0, 1.5, -2.25, 1e-3, 3.0, 100.0, -7.5, 0.5, 2.0, -1.0, 42.0])
            if name == "bfloat16":
                import ml_dtypes

                return base.astype(ml_dtypes.bfloat16).reshape(shape)
            dt = {"float": np.float32, "double": np.float64, "float16": np.float16}[name]
            return base.astype(dt).reshape(shape)
        dt = np.dtype(name)
        info = np.iinfo(dt)
        vals = [info.min, info.max, 0, 1] + list(range(2, n - 2))
        return np.array(vals[:n], dtype=dt).reshape(shape)

    failures = []

    def check(cond, msg):
        print(("  ok   " if cond else "  FAIL ") + msg)
        if not cond:
            failures.append(msg)

    print("identity fixtures:")
    for name, elem_type in IDENTITY_DTYPES:
        path = os.path.join(FIXTURES, f"identity_{name}", "1", "model.onnx")
        try:
            sess = session(path)
            x = sample(name)
            if name == "bfloat16":
                # numpy has no native bfloat16 and OrtValue.numpy() refuses it:
                # feed the raw bits and read the output buffer via its pointer.
                import ctypes

                bits = np.ascontiguousarray(x.view(np.uint16))
                ov = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, elem_type)
                (y,) = sess.run_with_ort_values(["y"], {"x": ov})
                n = int(np.prod(y.shape()))
                raw = ctypes.string_at(y.data_ptr(), n * 2)
                y_bits = np.frombuffer(raw, dtype=np.uint16).reshape(y.shape())
                same = y.data_type() == "tensor(bfloat16)" and np.array_equal(y_bits, bits)
            else:
                (y,) = sess.run(["y"], {"x": x})
                if name in ("float", "double", "float16"):
                    same = y.dtype == x.dtype and np.array_equal(y.view(f"u{x.itemsize}"), x.view(f"u{x.itemsize}"))
                else:
                    same = y.shape == x.shape and np.array_equal(y, x)
            inp = sess.get_inputs()[0]
            check(same, f"identity_{name}: {inp.type} {inp.shape} round-trip exact")
        except Exception as e:  # noqa: BLE001
            check(False, f"identity_{name}: {type(e).__name__}: {e}")

    print("bundled identity_string:")
    sess = session(os.path.join(BUNDLED, "identity_string", "1", "model.onnx"))
    x = np.array(["a", "", "héllo"], dtype=object)
    (y,) = sess.run(["y"], {"x": x})
    check(list(y) == list(x), f"identity_string {sess.get_inputs()[0].shape}: {list(y)}")

    print("numbers_classifier:")
    xs = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    outs = {}
    for v in (1, 2):
        sess = session(os.path.join(BUNDLED, "numbers_classifier", str(v), "model.onnx"))
        (y,) = sess.run(["y"], {"x": xs})
        outs[v] = y
        check(y.shape == (5, 1) and bool(np.all((y > 0) & (y < 1))), f"v{v} y={[round(float(t), 4) for t in y.ravel()]}")
    check(not np.allclose(outs[1], outs[2]), "v1 and v2 outputs differ")
    with open(os.path.join(BUNDLED, "numbers_classifier", "1", "model.onnx"), "rb") as a, open(
        os.path.join(FIXTURES, "numbers_classifier", "1", "model.onnx"), "rb"
    ) as b:
        check(a.read() == b.read(), "fixture numbers_classifier/1 == bundled v1 (bytes)")

    print("fixed_shape:")
    sess = session(os.path.join(FIXTURES, "fixed_shape", "1", "model.onnx"))
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([5, -1, 2**62], dtype=np.int64)
    s, bo = sess.run(["sum", "b_out"], {"a": a, "b": b})
    check(np.array_equal(s, a + 1) and np.array_equal(bo, b), f"sum={s.tolist()} b_out={bo.tolist()}")
    check(
        [(i.name, i.type, i.shape) for i in sess.get_inputs()]
        == [("a", "tensor(float)", [2, 3]), ("b", "tensor(int64)", ["batch"])],
        f"inputs {[(i.name, i.type, i.shape) for i in sess.get_inputs()]}",
    )

    print("broken:")
    try:
        session(os.path.join(FIXTURES, "broken", "1", "model.onnx"))
        check(False, "broken model unexpectedly loaded")
    except Exception as e:  # noqa: BLE001
        check(True, f"broken fails to load: {type(e).__name__}: {str(e)[:100]}")

    print("slow (intra_op_num_threads=1, input [64,256]):")
    path = os.path.join(FIXTURES, "slow", "1", "model.onnx")
    sess = session(path, threads=1)
    x = np.random.default_rng(0).normal(size=(64, SLOW_WIDTH)).astype(np.float32)
    sess.run(["y"], {"x": x})  # warm-up
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        (y,) = sess.run(["y"], {"x": x})
        times.append((time.perf_counter() - t0) * 1000)
    med = sorted(times)[len(times) // 2]
    check(y.shape == (64, SLOW_WIDTH) and bool(np.all(np.isfinite(y))), f"y shape {y.shape}, std {y.std():.3f}")
    print(f"  runs (ms): {[round(t, 1) for t in times]}; median {med:.1f} ms; file {os.path.getsize(path)} bytes")
    check(100 <= med <= 300, f"median {med:.1f} ms within 100-300 ms")

    verify_value_shapes(session, check)
    verify_rows(session, check)

    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verify", action="store_true", help="verify the written models with onnxruntime")
    args = parser.parse_args()
    generate()
    if args.verify:
        sys.exit(verify())


if __name__ == "__main__":
    main()
