#!/usr/bin/env python3
"""Drives maas with NVIDIA's official Triton client (tritonclient from PyPI): gRPC (and HTTP when
--http-url is given). Every check asserts values; the script exits non-zero on the first failure and
prints one JSON summary line on success. Used by tests/triton_client.rs.

The repository must hold numbers_classifier, identity_string ([N] strings), identity_float16 and
identity_int64 ([N, M]), all loadable.
"""
import argparse
import json

import numpy as np


def check_grpc(url):
    import tritonclient.grpc as tc
    from tritonclient.grpc import service_pb2

    c = tc.InferenceServerClient(url=url)
    assert c.is_server_live(), "server live"
    assert c.is_server_ready(), "server ready"
    assert c.is_model_ready("numbers_classifier"), "model ready"
    assert not c.is_model_ready("numbers_classifier", "7"), "version 7 not ready"
    meta = c.get_server_metadata()
    assert meta.name == "maas", meta
    md = c.get_model_metadata("numbers_classifier")
    assert md.versions == ["2"], md.versions
    assert (md.inputs[0].name, md.inputs[0].datatype, list(md.inputs[0].shape)) == ("x", "FP32", [-1, 8]), md
    assert (md.outputs[0].name, md.outputs[0].datatype, list(md.outputs[0].shape)) == ("y", "FP32", [-1, 1]), md

    # raw FP32 (what tritonclient sends), requested output, request id echoed
    x = (np.arange(24, dtype=np.float32).reshape(3, 8) % 5 - 2) / 2
    inp = tc.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = c.infer("numbers_classifier", [inp], outputs=[tc.InferRequestedOutput("y")], request_id="abc-1")
    y = r.as_numpy("y")
    assert y.shape == (3, 1) and y.dtype == np.float32, (y.shape, y.dtype)
    assert np.all((y > 0) & (y < 1)), y
    assert r.get_response().id == "abc-1"
    assert r.get_response().model_version == "2"

    # typed contents, built with the client's own generated protos
    req = service_pb2.ModelInferRequest(model_name="numbers_classifier")
    t = req.inputs.add(name="x", datatype="FP32", shape=[3, 8])
    t.contents.fp32_contents.extend(x.flatten().tolist())
    typed = c._client_stub.ModelInfer(req)
    y_typed = np.frombuffer(typed.raw_output_contents[0], dtype=np.float32).reshape(3, 1)
    assert np.array_equal(y, y_typed), (y, y_typed)

    # BYTES
    s = np.array([b"a", b"", "h\u00e9llo".encode(), b"x y"], dtype=np.object_)
    inp = tc.InferInput("x", [4], "BYTES")
    inp.set_data_from_numpy(s)
    got = c.infer("identity_string", [inp]).as_numpy("y")
    assert list(got) == list(s), got

    # FP16 (raw only) and INT64
    h = np.array([[1.5, -2.0, 65504.0], [0.0, -0.0, 1e-4]], dtype=np.float16)
    inp = tc.InferInput("x", list(h.shape), "FP16")
    inp.set_data_from_numpy(h)
    got = c.infer("identity_float16", [inp]).as_numpy("y")
    assert got.dtype == np.float16 and np.array_equal(got.view(np.uint16), h.view(np.uint16)), got
    i = np.array([[-(2**63), 2**63 - 1, 0]], dtype=np.int64)
    inp = tc.InferInput("x", list(i.shape), "INT64")
    inp.set_data_from_numpy(i)
    assert np.array_equal(c.infer("identity_int64", [inp]).as_numpy("y"), i)

    # errors come back as exceptions with the server's message
    bad = tc.InferInput("x", [1, 7], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 7), dtype=np.float32))
    try:
        c.infer("numbers_classifier", [bad])
        raise AssertionError("a wrong shape must fail")
    except tc.InferenceServerException as e:
        assert "dimension 1 must be 8" in e.message(), e.message()

    stats = c.get_inference_statistics("numbers_classifier", as_json=True)
    s0 = stats["model_stats"][0]
    assert int(s0["inference_stats"]["success"]["count"]) == 2, s0
    assert int(s0["inference_stats"]["fail"]["count"]) == 1, s0

    index = c.get_model_repository_index(as_json=True)
    names = sorted({m["name"] for m in index["models"]})
    c.unload_model("identity_int64")
    assert not c.is_model_ready("identity_int64")
    c.load_model("identity_int64")
    assert c.is_model_ready("identity_int64")
    return {"grpc_models": names, "grpc_probabilities": y.flatten().tolist()}


def check_http(url):
    import tritonclient.http as tc

    c = tc.InferenceServerClient(url=url)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("numbers_classifier")
    md = c.get_model_metadata("numbers_classifier")
    assert md["inputs"][0]["datatype"] == "FP32", md
    x = (np.arange(24, dtype=np.float32).reshape(3, 8) % 5 - 2) / 2
    inp = tc.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    r = c.infer("numbers_classifier", [inp], outputs=[tc.InferRequestedOutput("y", binary_data=False)])
    y = r.as_numpy("y")
    assert y.shape == (3, 1), y.shape
    s = np.array([b"a", b"hello"], dtype=np.object_)
    inp = tc.InferInput("x", [2], "BYTES")
    inp.set_data_from_numpy(s, binary_data=False)
    got = c.infer("identity_string", [inp], outputs=[tc.InferRequestedOutput("y", binary_data=False)]).as_numpy("y")
    assert [v if isinstance(v, bytes) else v.encode() for v in got] == list(s), got
    return {"http_probabilities": y.flatten().tolist()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--grpc-url", required=True)
    p.add_argument("--http-url")
    a = p.parse_args()
    out = check_grpc(a.grpc_url)
    if a.http_url:
        out.update(check_http(a.http_url))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
