#!/usr/bin/env python3
"""grpcio (TF Serving Predict) and tritonclient (v2 gRPC) against maas over TLS with a bearer token.

Prints one JSON object: {"grpcio": [class ids], "triton_ready": bool, "triton_shape": [..], "denied": code}.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples"))
from python_client import load_stubs  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--grpc", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--token", required=True)
    a = p.parse_args()
    load_stubs()
    import grpc
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    ca = open(a.ca, "rb").read()
    creds = grpc.ssl_channel_credentials(root_certificates=ca)
    ch = grpc.secure_channel(a.grpc, creds, options=[("grpc.ssl_target_name_override", "localhost")])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "numbers_classifier"
    req.inputs["x"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in x.shape]),
        float_val=x.flatten().tolist()))
    md = [("authorization", "Bearer " + a.token)]
    resp = stub.Predict(req, metadata=md, timeout=30)
    out = {"grpcio_outputs": sorted(resp.outputs.keys())}
    try:
        stub.Predict(req, timeout=30)
        out["denied"] = "OK"
    except grpc.RpcError as e:
        out["denied"] = e.code().name
        out["denied_message"] = e.details()

    import tritonclient.grpc as tg
    c = tg.InferenceServerClient(url=a.grpc, ssl=True, root_certificates=a.ca)
    # tritonclient cannot override the TLS name: the server certificate has an IP SAN for 127.0.0.1.
    headers = {"authorization": "Bearer " + a.token}
    out["triton_ready"] = c.is_model_ready("numbers_classifier", headers=headers)
    inp = tg.InferInput("x", [2, 8], "FP32")
    inp.set_data_from_numpy(x)
    r = c.infer("numbers_classifier", [inp], headers=headers)
    out["triton_outputs"] = sorted(o.name for o in r.get_response().outputs)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
