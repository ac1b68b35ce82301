#!/usr/bin/env python3
"""Predict with the bundled numbers_classifier through maas's TensorFlow Serving gRPC API (grpcio).

Any TensorFlow Serving client works unchanged; this one builds its stubs from maas's own proto/
files (so it needs only grpcio, grpcio-tools and numpy: `./scripts/setup.sh` installs them in .venv).

    .venv/bin/python examples/python_client.py --address localhost:8500
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_stubs():
    """Compiles proto/ to Python modules once (into target/python-protos) and imports them."""
    out = os.path.join(ROOT, "target", "python-protos")
    stamp = os.path.join(out, ".stamp")
    protos = []
    for d, _, files in os.walk(os.path.join(ROOT, "proto")):
        protos += [os.path.relpath(os.path.join(d, f), os.path.join(ROOT, "proto")) for f in files if f.endswith(".proto")]
    newest = max(os.path.getmtime(os.path.join(ROOT, "proto", p)) for p in protos)
    if not os.path.exists(stamp) or os.path.getmtime(stamp) < newest:
        os.makedirs(out, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=out)
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", "-I" + os.path.join(ROOT, "proto"),
             "--python_out=" + tmp, "--grpc_python_out=" + tmp, *sorted(protos)],
            check=True,
        )
        for d, _, files in os.walk(tmp):
            for f in files:
                dest = os.path.join(out, os.path.relpath(os.path.join(d, f), tmp))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.replace(os.path.join(d, f), dest)
        open(stamp, "w").close()
    # Regular packages: an installed tensorflow / tensorflow-serving-api must not shadow them.
    for d, _, files in os.walk(out):
        if d != out:
            open(os.path.join(d, "__init__.py"), "a").close()
    sys.path.insert(0, out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", default="localhost:8500")
    p.add_argument("--model", default="numbers_classifier")
    p.add_argument("--json", action="store_true", help="print one JSON object (used by the tests)")
    args = p.parse_args()

    load_stubs()
    import grpc
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                         predict_pb2, prediction_service_pb2_grpc)

    channel = grpc.insecure_channel(args.address)
    predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    model_stub = model_service_pb2_grpc.ModelServiceStub(channel)

    # 1. Which versions are loaded?
    status_req = get_model_status_pb2.GetModelStatusRequest()
    status_req.model_spec.name = args.model
    status = model_stub.GetModelStatus(status_req, timeout=10)
    states = {v.version: get_model_status_pb2.ModelVersionStatus.State.Name(v.state)
              for v in status.model_version_status}

    # 2. The signature: input name and shape.
    meta_req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta_req.model_spec.name = args.model
    meta = predict_stub.GetModelMetadata(meta_req, timeout=10)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(sig_map)
    sig = sig_map.signature_def["serving_default"]
    input_name = next(iter(sig.inputs))
    width = sig.inputs[input_name].tensor_shape.dim[-1].size

    # 3. Predict: a batch of 4 rows, sent as tensor_content (what tf.make_tensor_proto produces).
    x = (np.arange(4 * width, dtype=np.float32).reshape(4, width) % 7 - 3) / 2
    req = predict_pb2.PredictRequest()
    req.model_spec.name = args.model
    req.model_spec.signature_name = "serving_default"
    req.inputs[input_name].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in x.shape]),
        tensor_content=x.tobytes(),
    ))
    resp = predict_stub.Predict(req, timeout=10)
    out_name, out = next(iter(resp.outputs.items()))
    y = np.array(out.float_val, dtype=np.float32).reshape([d.size for d in out.tensor_shape.dim])

    if args.json:
        print(json.dumps({
            "states": {str(k): v for k, v in states.items()},
            "input_name": input_name,
            "output_name": out_name,
            "version": resp.model_spec.version.value,
            "signature_name": resp.model_spec.signature_name,
            "input": x.tolist(),
            "output": y.tolist(),
        }))
    else:
        print(f"model {args.model}: versions {states}")
        print(f"signature: input '{input_name}' [-1, {width}] -> output '{out_name}'")
        print(f"answered by version {resp.model_spec.version.value}:")
        for row, p in zip(x, y[:, 0]):
            print(f"  {row.tolist()} -> {p:.4f}")


if __name__ == "__main__":
    main()
