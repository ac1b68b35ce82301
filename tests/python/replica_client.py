#!/usr/bin/env python3
"""Spreads Predict requests round-robin over several maas replicas (grpcio) and reports, per replica,
what answered: used by tests/object_store.rs while a new version rolls out to all of them.

Stubs come from maas's own proto/ files, built as examples/python_client.py builds them.

    .venv/bin/python tests/python/replica_client.py --addresses A,B,C --model m \\
        --stop-file STOP --out RESULT.json [--max-seconds 120] [--max-requests 200000]

Each request sends x = [[0.0]] to the rollout fixtures (version k answers y = x + k). It stops when
STOP exists, after --max-seconds, or after --max-requests, and writes one JSON object:
{address: {ok, versions: {v: count}, errors: [[unix_time, code, message]] (first 20), error_count,
regressions: [[unix_time, seen_before, answered]] (a version older than one already seen by that
replica), wrong_answers (y != version), last, max}}. OUT.started appears once the requests begin.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "examples"))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--addresses", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--stop-file", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--max-requests", type=int, default=200000)
    p.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args()

    from python_client import load_stubs

    load_stubs()
    import grpc
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    addresses = args.addresses.split(",")
    stubs = [prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(a)) for a in addresses]
    x = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1), tensor_shape_pb2.TensorShapeProto.Dim(size=1)]
        ),
        float_val=[0.0],
    )
    report = {
        a: {"ok": 0, "versions": {}, "errors": [], "error_count": 0, "regressions": [], "wrong_answers": 0, "last": None,
            "max": None}
        for a in addresses
    }
    started = time.time()
    sent = 0
    # Stubs are built: tell the test the requests start now.
    with open(args.out + ".started", "w"):
        pass
    while sent < args.max_requests and time.time() - started < args.max_seconds:
        if sent % len(addresses) == 0 and os.path.exists(args.stop_file):
            break
        i = sent % len(addresses)
        sent += 1
        r = report[addresses[i]]
        req = predict_pb2.PredictRequest()
        req.model_spec.name = args.model
        req.inputs["x"].CopyFrom(x)
        try:
            resp = stubs[i].Predict(req, timeout=args.timeout)
        except grpc.RpcError as e:
            r["error_count"] += 1
            if len(r["errors"]) < 20:
                r["errors"].append([time.time(), e.code().name, e.details()])
            time.sleep(0.01)
            continue
        v = resp.model_spec.version.value
        r["ok"] += 1
        r["versions"][str(v)] = r["versions"].get(str(v), 0) + 1
        if r["max"] is not None and v < r["max"]:
            r["regressions"].append([time.time(), r["max"], v])
        r["max"] = v if r["max"] is None else max(r["max"], v)
        if list(resp.outputs["y"].float_val) != [float(v)]:
            r["wrong_answers"] += 1
        r["last"] = v
        time.sleep(0.002)
    report["_sent"] = sent
    report["_seconds"] = time.time() - started
    with open(args.out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
