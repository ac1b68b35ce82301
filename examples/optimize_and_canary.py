#!/usr/bin/env python3
"""Optimize -> canary -> stable: publish an optimized version of a served model, route the `canary`
label to it next to `stable`, compare the two, then move `stable` to it, without restarting the server.

1. Pins the model to its current version N: HandleReloadConfigRequest with policy `specific {N}` and
   label `stable: N` (the canary setup starts from a known state).
2. Runs `maas optimize --model-dir REPO/MODEL --from N` (int8 per-channel by default): the version is
   built in a hidden directory, checked by the accuracy guard, and published as N+1 only if it passes.
   A refusal (exit status 1) ends the example there, with the guard's reasons.
3. Serves both: `specific {N, N+1}` with `stable: N` (the reload returns once N+1 is loaded), then labels
   `stable: N`, `canary: N+1`.
4. Sends the same requests to `stable` and to `canary` (TF Predict with version_label), checks which
   version answered, compares the outputs (cosine similarity per float output) and the client-side
   latency, and reads the per-version statistics the server keeps (KServe v2 ModelStatistics: request
   count and mean compute time of each version).
5. Promotes: labels `stable: N+1`, `canary: N+1`; a request to `stable` is now answered by N+1. Rolling
   back is the same reload with `stable: N`.

Needs grpcio, grpcio-tools and numpy (`./scripts/setup.sh`), a server started with the model (e.g.
`maas serve --model-config-file models.config`), and the maas binary:

    .venv/bin/python examples/optimize_and_canary.py --address localhost:8500 \\
        --model minilm --model-dir model_repository/minilm --from 1 --maas target/release/maas

Exit status: 0 when the canary was published, served, compared and promoted; 1 otherwise.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from python_client import ROOT, load_stubs  # noqa: E402


class Failure(Exception):
    """An expected failure: printed without a traceback, exit status 1."""


def reload(stubs, args, versions, labels):
    """HandleReloadConfigRequest with policy specific {versions} and the given labels."""
    msc, fsc, model_management_pb2 = stubs["msc"], stubs["fsc"], stubs["mm"]
    policy = fsc.FileSystemStoragePathSourceConfig.ServableVersionPolicy(
        specific=fsc.FileSystemStoragePathSourceConfig.ServableVersionPolicy.Specific(versions=sorted(versions)))
    config = msc.ModelConfig(name=args.model, base_path=os.path.abspath(args.model_dir), model_platform="onnx",
                             model_version_policy=policy, version_labels=labels)
    req = model_management_pb2.ReloadConfigRequest(
        config=msc.ModelServerConfig(model_config_list=msc.ModelConfigList(config=[config])))
    resp = stubs["model"].HandleReloadConfigRequest(req, timeout=args.timeout)
    if resp.status.error_code != 0:
        raise Failure(f"HandleReloadConfigRequest (versions {sorted(versions)}, labels {labels}) failed: "
                      f"{resp.status.error_message}")


def inputs_from_metadata(stubs, args, rng):
    """A request's inputs made from the model's signature: ids below 1000, masks of ones, floats N(0, 1)."""
    gm = stubs["gm"]
    meta = stubs["predict"].GetModelMetadata(
        gm.GetModelMetadataRequest(model_spec=stubs["ms"].ModelSpec(name=args.model),
                                   metadata_field=["signature_def"]), timeout=args.timeout)
    sig_map = gm.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(sig_map)
    sig = sig_map.signature_def["serving_default"]
    tensors = {}
    for name, info in sig.inputs.items():
        dims = [d.size if d.size >= 0 else (args.batch if i == 0 else args.seq)
                for i, d in enumerate(info.tensor_shape.dim)]
        if info.dtype == stubs["types"].DT_INT64:
            x = np.ones(dims, np.int64) if "mask" in name else rng.integers(0, 1000, dims, dtype=np.int64)
        elif info.dtype == stubs["types"].DT_FLOAT:
            x = rng.normal(size=dims).astype(np.float32)
        else:
            raise Failure(f"input '{name}' has dtype {info.dtype}; this example synthesizes int64 and float only")
        tensors[name] = x
    return tensors


def predict(stubs, args, label, tensors):
    """Predict through a version label; returns (served version, {output: array}, seconds)."""
    tf = stubs["tf"]
    req = stubs["pr"].PredictRequest(model_spec=stubs["ms"].ModelSpec(name=args.model, version_label=label))
    for name, x in tensors.items():
        dtype = stubs["types"].DT_INT64 if x.dtype == np.int64 else stubs["types"].DT_FLOAT
        req.inputs[name].CopyFrom(tf.TensorProto(
            dtype=dtype, tensor_content=x.tobytes(),
            tensor_shape=stubs["ts"].TensorShapeProto(dim=[stubs["ts"].TensorShapeProto.Dim(size=s) for s in x.shape])))
    t0 = time.perf_counter()
    resp = stubs["predict"].Predict(req, timeout=args.timeout)
    took = time.perf_counter() - t0
    outs = {}
    for name, t in resp.outputs.items():
        shape = [d.size for d in t.tensor_shape.dim]
        if t.dtype == stubs["types"].DT_FLOAT:
            outs[name] = np.array(t.float_val, np.float32).reshape(shape)
        elif t.dtype == stubs["types"].DT_INT64:
            outs[name] = np.array(t.int64_val, np.int64).reshape(shape)
    return resp.model_spec.version.value, outs, took


def cosine(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def statistics(stubs, args):
    """Per-version request count and mean compute time (KServe v2 ModelStatistics)."""
    resp = stubs["kserve"].ModelStatistics(stubs["ki"].ModelStatisticsRequest(name=args.model), timeout=args.timeout)
    out = {}
    for s in resp.model_stats:
        ok = s.inference_stats.success
        out[int(s.version)] = {"requests": ok.count, "mean_compute_ms": ok.ns / ok.count / 1e6 if ok.count else None}
    return out


def run(args, log):
    load_stubs()
    import grpc
    from inference import grpc_service_pb2, grpc_service_pb2_grpc
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import (get_model_metadata_pb2, model_management_pb2, model_pb2,
                                         model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)
    from tensorflow_serving.config import file_system_storage_path_source_pb2, model_server_config_pb2

    channel = grpc.insecure_channel(args.address, options=[("grpc.max_receive_message_length", 64 << 20)])
    stubs = {
        "predict": prediction_service_pb2_grpc.PredictionServiceStub(channel),
        "model": model_service_pb2_grpc.ModelServiceStub(channel),
        "kserve": grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel),
        "ki": grpc_service_pb2, "msc": model_server_config_pb2, "fsc": file_system_storage_path_source_pb2,
        "mm": model_management_pb2, "gm": get_model_metadata_pb2, "ms": model_pb2, "pr": predict_pb2,
        "tf": tensor_pb2, "ts": tensor_shape_pb2, "types": types_pb2,
    }
    n = args.from_version
    log(f"1. pinning {args.model} to version {n}: specific {{{n}}}, stable: {n}")
    reload(stubs, args, {n}, {"stable": n})

    log(f"2. maas optimize --from {n} {' '.join(args.optimize_args)}")
    cmd = [args.maas, "optimize", "--model-dir", args.model_dir, "--from", str(n), "--json", *args.optimize_args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 1:
        report = json.loads(proc.stdout)
        raise Failure("the guard refused the optimized version: " + "; ".join(report["guard"]["reasons"]))
    if proc.returncode != 0:
        raise Failure(f"maas optimize failed (exit status {proc.returncode}): {proc.stderr.strip()}")
    report = json.loads(proc.stdout)
    m = report["version"]
    log(f"   published version {m}: {report['sizes']['source_bytes']} -> {report['sizes']['candidate_bytes']} bytes, "
        f"guard {report['guard']['verdict']}")

    log(f"3. serving both: specific {{{n}, {m}}}, stable: {n}, then canary: {m}")
    reload(stubs, args, {n, m}, {"stable": n})
    reload(stubs, args, {n, m}, {"stable": n, "canary": m})

    log(f"4. {args.requests} requests to each label")
    rng = np.random.default_rng(args.seed)
    latencies = {"stable": [], "canary": []}
    served = {"stable": set(), "canary": set()}
    worst = {}
    for _ in range(args.requests):
        tensors = inputs_from_metadata(stubs, args, rng)
        answers = {}
        for label in ("stable", "canary"):
            v, outs, took = predict(stubs, args, label, tensors)
            served[label].add(v)
            latencies[label].append(took)
            answers[label] = outs
        for name, a in answers["stable"].items():
            b = answers["canary"][name]
            c = cosine(a, b) if a.dtype == np.float32 else float(np.array_equal(a, b))
            worst[name] = min(worst.get(name, 1.0), c)
    if served != {"stable": {n}, "canary": {m}}:
        raise Failure(f"expected stable -> {n} and canary -> {m}, the server answered with {served}")
    stats = statistics(stubs, args)
    p50 = {k: float(np.median(v)) * 1e3 for k, v in latencies.items()}
    log(f"   stable (v{n}) p50 {p50['stable']:.2f} ms, canary (v{m}) p50 {p50['canary']:.2f} ms; "
        f"worst cosine per output {worst}; server statistics {stats}")

    log(f"5. promoting: stable: {m}")
    reload(stubs, args, {n, m}, {"stable": m, "canary": m})
    v, _, _ = predict(stubs, args, "stable", inputs_from_metadata(stubs, args, rng))
    if v != m:
        raise Failure(f"after the promotion, stable was answered by version {v}, not {m}")
    return {
        "published": m, "stable_before": n, "stable_after": v, "canary": m,
        "sizes": report["sizes"], "guard": {k: report["guard"][k] for k in ("verdict", "min_cosine")},
        "worst_cosine_stable_vs_canary": worst, "client_p50_ms": p50,
        "server_statistics": {str(k): s for k, s in stats.items()},
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", default="localhost:8500")
    p.add_argument("--model", required=True)
    p.add_argument("--model-dir", required=True, help="the model's directory in the server's repository")
    p.add_argument("--from", dest="from_version", type=int, required=True, help="the version serving as stable")
    p.add_argument("--maas", default=os.path.join(ROOT, "target", "release", "maas"), help="the maas binary")
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--json", action="store_true", help="print one JSON object (used by the tests)")
    p.add_argument("optimize_args", nargs="*", metavar="-- OPTIMIZE FLAGS",
                   default=["--quantize", "int8-dynamic", "--per-channel", "--embeddings", "--min-cosine", "0.98"],
                   help="flags for maas optimize (default: --quantize int8-dynamic --per-channel --embeddings "
                        "--min-cosine 0.98)")
    args = p.parse_args()
    log = (lambda *_: None) if args.json else print
    try:
        result = run(args, log)
    except Failure as e:
        print(f"optimize_and_canary: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print(f"done: version {result['published']} is stable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
