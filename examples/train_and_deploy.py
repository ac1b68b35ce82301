#!/usr/bin/env python3
"""Train -> deploy -> predict: publish a freshly trained numbers_classifier to a running maas server.

1. Trains the classic classifier (8 features -> Dense 16 + ReLU -> Dense 1 + sigmoid) with scikit-learn
   (MLPClassifier) on synthetic data, and reports train and holdout accuracy.
2. Exports it to ONNX with skl2onnx and reshapes the graph to the bundled model's signature:
   input "x" float32 [batch, 8] -> output "y" float32 [batch, 1] = probability of class 1
   (opset 17, IR version 8), checked with onnx.checker (and onnxruntime, when it is installed).
3. Publishes it as the next version N of the model in the server's repository: the file is written to a
   hidden directory inside the model directory, fsynced, then renamed to <model>/<N> in one step, so the
   server never sees a half-written version.
4. Waits (GetModelStatus) until the server has loaded version N and shows it AVAILABLE.
5. Predicts a few holdout rows through gRPC, pinned to version N, and checks the served probabilities
   against scikit-learn's predict_proba within 1e-4.

Needs grpcio, grpcio-tools, numpy, onnx, scikit-learn and skl2onnx (`./scripts/setup.sh` installs them in
.venv), and a server serving the same repository (`./scripts/serve.sh`):

    .venv/bin/python examples/train_and_deploy.py --address localhost:8500 --repository model_repository

Exit status: 0 when version N is AVAILABLE and answers like the local model; 1 otherwise.
"""
import argparse
import json
import os
import shutil
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from python_client import ROOT, load_stubs  # noqa: E402

N_FEATURES = 8
HIDDEN = 16
ROWS = 2000
HOLDOUT = 400
PREDICT_ROWS = 5
TOLERANCE = 1e-4
OPSET = 17
IR_VERSION = 8
# The "true" linear rule behind the synthetic labels (fixed; --seed changes the data and the training).
TRUE_W = np.array([1.5, -2.0, 1.0, 0.5, -1.0, 2.0, -0.5, 0.25], dtype=np.float32)
NOISE = 0.5


class Failure(Exception):
    """An expected failure: printed without a traceback, exit status 1."""


def make_data(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, N_FEATURES)).astype(np.float32)
    y = (x @ TRUE_W + rng.normal(scale=NOISE, size=ROWS) > 0).astype(np.int64)
    return (x[:-HOLDOUT], y[:-HOLDOUT]), (x[-HOLDOUT:], y[-HOLDOUT:])


def train(seed, x, y, log):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(HIDDEN,), activation="relu", random_state=seed, max_iter=2000)
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(x, y)
    clf.fit_seconds_ = time.monotonic() - t0
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log(f"warning: training stopped after {clf.n_iter_} iterations without converging")
    return clf


def export_onnx(clf):
    """skl2onnx export, then reshaped to the bundled signature: x float [batch, 8] -> y float [batch, 1]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper, version_converter
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    model = convert_sklearn(
        clf,
        initial_types=[("x", FloatTensorType([None, N_FEATURES]))],
        target_opset=OPSET,
        options={id(clf): {"zipmap": False}},
    )
    graph = model.graph
    outputs = {o.name: o for o in graph.output}
    if "probabilities" not in outputs:
        raise Failure(f"unexpected skl2onnx outputs {sorted(outputs)} (expected 'label' and 'probabilities')")
    taken = {i.name for i in graph.initializer} | {t for n in graph.node for t in n.output}
    if "y" in taken:
        raise Failure("the skl2onnx graph already has a tensor named 'y'")

    # y = probabilities[:, 1:2]: the probability of class 1, shape [batch, 1] like the bundled model.
    graph.initializer.extend([
        numpy_helper.from_array(np.array([1], dtype=np.int64), "y_slice_starts"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "y_slice_ends"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "y_slice_axes"),
    ])
    graph.node.append(helper.make_node(
        "Slice", ["probabilities", "y_slice_starts", "y_slice_ends", "y_slice_axes"], ["y"], name="y_positive_proba"))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1]))
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", N_FEATURES]))

    # Drop what only the label output needed (ArgMax, ArrayFeatureExtractor, ...), walking back from y.
    needed, keep = {"y"}, []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    del graph.value_info[:]
    domains = {n.domain for n in keep}
    imports = [op for op in model.opset_import if op.domain in ("", "ai.onnx") or op.domain in domains]
    del model.opset_import[:]
    model.opset_import.extend(imports)

    # skl2onnx declares the lowest opset its nodes need; serve it at opset 17 like the bundled models.
    if domains - {"", "ai.onnx"}:
        raise Failure(f"the exported graph uses operator domains {sorted(domains - {'', 'ai.onnx'})}")
    if any(op.version != OPSET for op in model.opset_import):
        model = version_converter.convert_version(model, OPSET)
    model.ir_version = IR_VERSION
    model.producer_name = "maas-train-and-deploy"
    model.producer_version = "1"
    model.graph.name = "mlp_classifier"  # skl2onnx names it with a random uuid: keep the file deterministic
    model.doc_string = "sklearn MLPClassifier (8 -> 16 ReLU -> 1 sigmoid); y = P(class 1)"
    onnx.checker.check_model(model, full_check=True)
    return model


def check_with_onnxruntime(model_bytes, clf, x, log):
    """Runs the exported model in onnxruntime, if installed; returns the max abs diff or None."""
    try:
        import onnxruntime as ort
    except ImportError:
        log("onnxruntime not installed: skipping the local ONNX check (the server checks it below)")
        return None
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    got = sess.run(["y"], {"x": x})[0]
    want = clf.predict_proba(x)[:, 1:2]
    if got.shape != want.shape:
        raise Failure(f"onnxruntime output shape {got.shape}, expected {want.shape}")
    diff = float(np.max(np.abs(got - want)))
    log(f"onnxruntime {ort.__version__}: exported model matches predict_proba on {len(x)} rows "
        f"(max abs diff {diff:.2e})")
    if not diff <= TOLERANCE:
        raise Failure(f"exported model differs from scikit-learn by {diff} (> {TOLERANCE})")
    return diff


def version_dirs(model_dir):
    """Numeric entries of a model directory (its versions): {version: name}. Files count too, so that the
    next version number never collides with an existing name."""
    return {int(name): name for name in os.listdir(model_dir)
            if name.isascii() and name.isdigit() and int(name) > 0}


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(model_dir, model_bytes):
    """Writes model_bytes as <model_dir>/<N>/model.onnx, N = highest version + 1; returns (N, path)."""
    os.makedirs(model_dir, exist_ok=True)  # a new model: a polling server picks it up too
    for _ in range(10):
        version = max(version_dirs(model_dir), default=0) + 1
        tmp = os.path.join(model_dir, f".tmp-{version}-{os.getpid()}")
        final = os.path.join(model_dir, str(version))
        shutil.rmtree(tmp, ignore_errors=True)
        os.mkdir(tmp)
        try:
            with open(os.path.join(tmp, "model.onnx"), "wb") as f:
                f.write(model_bytes)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(tmp)
            if os.path.exists(final):
                raise FileExistsError(final)
            os.rename(tmp, final)  # atomic: the version directory appears complete or not at all
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if os.path.exists(final):
                continue  # another publisher took this number: try the next one
            raise
        fsync_dir(model_dir)
        return version, final
    raise Failure(f"could not claim a new version number in {model_dir}")


def wait_available(stubs, args, version, log):
    """Polls GetModelStatus until `version` is AVAILABLE; raises Failure if it ends (END) or times out."""
    import grpc
    get_model_status_pb2 = stubs["get_model_status_pb2"]
    State = get_model_status_pb2.ModelVersionStatus.State
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = args.model
    deadline = time.monotonic() + args.timeout
    last, last_state = None, None
    while True:
        try:
            resp = stubs["model"].GetModelStatus(req, timeout=max(1.0, min(5.0, args.timeout)))
            mine = [v for v in resp.model_version_status if v.version == version]
            last = "versions " + ", ".join(f"{v.version}: {State.Name(v.state)}" for v in resp.model_version_status)
            if mine:
                st = mine[0]
                if st.state != last_state:
                    log(f"version {version}: {State.Name(st.state)}")
                    last_state = st.state
                if st.state == State.AVAILABLE:
                    return
                if st.state == State.END:
                    msg = st.status.error_message or "(no error message: the version was unloaded)"
                    raise Failure(f"version {version} of {args.model} ended without becoming AVAILABLE: {msg}")
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND,
                                grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Failure(f"GetModelStatus at {args.address} failed: {e.code().name}: {e.details()}")
            last = f"{e.code().name}: {e.details()}"
        if time.monotonic() >= deadline:
            raise Failure(f"version {version} of {args.model} not AVAILABLE after {args.timeout:g} s "
                          f"(last status: {last})")
        time.sleep(0.2)


def predict(stubs, args, version, x):
    """Predicts x with version `version`; returns (y [rows, 1] float32, version that answered)."""
    import grpc
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    req = stubs["predict_pb2"].PredictRequest()
    req.model_spec.name = args.model
    req.model_spec.version.value = version
    req.model_spec.signature_name = "serving_default"
    req.inputs["x"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in x.shape]),
        tensor_content=np.ascontiguousarray(x, dtype="<f4").tobytes(),
    ))
    try:
        resp = stubs["predict"].Predict(req, timeout=10)
    except grpc.RpcError as e:
        raise Failure(f"Predict on {args.model} version {version} failed: {e.code().name}: {e.details()}")
    if "y" not in resp.outputs:
        raise Failure(f"Predict answered outputs {sorted(resp.outputs)}, expected 'y'")
    out = resp.outputs["y"]
    if out.dtype != types_pb2.DT_FLOAT:
        raise Failure(f"output 'y' has dtype {types_pb2.DataType.Name(out.dtype)}, expected DT_FLOAT")
    shape = [d.size for d in out.tensor_shape.dim]
    if out.tensor_content:  # --enable-serialization-as-tensor-content
        y = np.frombuffer(out.tensor_content, dtype="<f4").astype(np.float32)
    else:
        y = np.array(out.float_val, dtype=np.float32)
    if y.size != int(np.prod(shape)) or shape != [len(x), 1]:
        raise Failure(f"output 'y' has shape {shape} and {y.size} values, expected [{len(x)}, 1]")
    return y.reshape(shape), resp.model_spec.version.value


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", default="localhost:8500", help="the server's gRPC address (default: %(default)s)")
    p.add_argument("--repository", default=os.path.join(ROOT, "model_repository"),
                   help="the server's model repository (default: this checkout's model_repository)")
    p.add_argument("--model", default="numbers_classifier", help="model name (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and the training (default: 0)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the new version to become AVAILABLE (default: %(default)s)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout at the end (progress goes to stderr); used by the tests")
    args = p.parse_args()

    def log(msg):
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    try:
        # 1. Train.
        (x_train, y_train), (x_hold, y_hold) = make_data(args.seed)
        clf = train(args.seed, x_train, y_train, log)
        train_acc = float(clf.score(x_train, y_train))
        accuracy = float(clf.score(x_hold, y_hold))
        log(f"trained MLPClassifier(8 -> {HIDDEN} relu -> 1 sigmoid) on {len(x_train)} rows in "
            f"{clf.n_iter_} iterations ({clf.fit_seconds_:.1f} s): "
            f"train accuracy {train_acc:.4f}, holdout accuracy {accuracy:.4f} ({len(x_hold)} rows)")

        # 2. Export and check.
        model = export_onnx(clf)
        model_bytes = model.SerializeToString(deterministic=True)
        log(f"exported to ONNX: x float32 [batch, 8] -> y float32 [batch, 1], opset {OPSET}, "
            f"IR {IR_VERSION}, {len(model_bytes)} bytes (onnx.checker: ok)")
        check_with_onnxruntime(model_bytes, clf, x_hold, log)

        # Compile the stubs before publishing, so a broken client setup leaves the repository untouched.
        load_stubs()
        import grpc
        from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                             prediction_service_pb2_grpc)
        channel = grpc.insecure_channel(args.address)
        stubs = {
            "get_model_status_pb2": get_model_status_pb2,
            "predict_pb2": predict_pb2,
            "model": model_service_pb2_grpc.ModelServiceStub(channel),
            "predict": prediction_service_pb2_grpc.PredictionServiceStub(channel),
        }

        # 3. Publish.
        model_dir = os.path.join(args.repository, args.model)
        if not os.path.isdir(args.repository):
            raise Failure(f"model repository {args.repository} is not a directory")
        version, path = publish(model_dir, model_bytes)
        log(f"published {path}{os.sep}model.onnx")

        # 4. Wait for the server to load it.
        t0 = time.monotonic()
        wait_available(stubs, args, version, log)
        log(f"{args.model} version {version} is AVAILABLE at {args.address} "
            f"({time.monotonic() - t0:.1f} s after publishing)")

        # 5. Predict through gRPC and compare with scikit-learn.
        rows = x_hold[:PREDICT_ROWS]
        served, served_version = predict(stubs, args, version, rows)
        local = clf.predict_proba(rows)[:, 1]
        max_abs_diff = float(np.max(np.abs(served[:, 0].astype(np.float64) - local)))
        log(f"answered by version {served_version}:")
        for served_p, local_p, label in zip(served[:, 0], local, y_hold[:PREDICT_ROWS]):
            log(f"  served {served_p:.6f}  sklearn {local_p:.6f}  label {label}")
        log(f"max abs diff {max_abs_diff:.2e} (tolerance {TOLERANCE:g})")
        if served_version != version:
            raise Failure(f"asked for version {version}, answered by version {served_version}")
        if not max_abs_diff <= TOLERANCE:
            raise Failure(f"served probabilities differ from scikit-learn by {max_abs_diff} (> {TOLERANCE})")
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)

    if args.json:
        print(json.dumps({
            "model": args.model,
            "version": version,
            "accuracy": accuracy,
            "train_accuracy": train_acc,
            "max_abs_diff": max_abs_diff,
            "served_version": served_version,
        }))


if __name__ == "__main__":
    main()
