#!/usr/bin/env python3
"""Writes a warmup file with the OFFICIAL tensorflow-serving-api protos (tests/warmup.rs loads it).

scripts/setup.sh installs tensorflow-serving-api==2.21.0 with --no-deps into .venv/isolated (off the
venv's import path; added to sys.path here). It gives tensorflow_serving.apis.*_pb2, which
import `tensorflow.core.framework.*_pb2` and friends from the (huge) tensorflow wheel. Instead,
those TensorFlow core modules are generated here, into a temporary directory, from maas's own
proto/tensorflow/core/**.proto with grpcio-tools; session_service_pb2 (imported by
prediction_log_pb2) also needs tensorflow/core/protobuf/{config,named_tensor}.proto, which maas
does not mirror, so minimal stand-ins with the three message names it references are generated too
(no record here uses them). The PredictionLog and PredictRequest classes are the official ones.

    .venv/bin/python tests/python/official_warmup_file.py OUT_FILE

Writes 3 predict_log records for the expand_shape fixture (x f32[1, 3], shape i64[2] = [k, 3] for
k = 1..3) and prints a JSON line naming the modules used.
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STAND_INS = {
    "tensorflow/core/protobuf/config.proto": 'syntax = "proto3";\npackage tensorflow;\n'
    "message RunOptions {}\nmessage RunMetadata {}\n",
    "tensorflow/core/protobuf/named_tensor.proto": 'syntax = "proto3";\npackage tensorflow;\n'
    'import "tensorflow/core/framework/tensor.proto";\n'
    "message NamedTensorProto { string name = 1; TensorProto tensor = 2; }\n",
}


def tensorflow_core_modules(tmp):
    """Generates tensorflow.core.* Python modules into tmp/out and puts them on sys.path."""
    protos, out = os.path.join(tmp, "protos"), os.path.join(tmp, "out")
    os.makedirs(out)
    for rel, text in STAND_INS.items():
        os.makedirs(os.path.dirname(os.path.join(protos, rel)), exist_ok=True)
        with open(os.path.join(protos, rel), "w") as f:
            f.write(text)
    ours = []
    for sub in ("framework", "example"):
        d = os.path.join(ROOT, "proto", "tensorflow", "core", sub)
        ours += [f"tensorflow/core/{sub}/{f}" for f in sorted(os.listdir(d)) if f.endswith(".proto")]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I" + os.path.join(ROOT, "proto"), "-I" + protos,
         "--python_out=" + out, *ours, *STAND_INS],
        check=True,
    )
    sys.path.insert(0, out)


def main():
    path = sys.argv[1]
    # scripts/setup.sh installs tensorflow-serving-api there, off the venv's import path.
    isolated = os.path.join(ROOT, ".venv", "isolated")
    if not os.path.isdir(os.path.join(isolated, "tensorflow_serving")):
        sys.exit(f"{isolated} has no tensorflow_serving: run ./scripts/setup.sh")
    sys.path.insert(0, isolated)
    with tempfile.TemporaryDirectory() as tmp:
        tensorflow_core_modules(tmp)
        import numpy as np
        from tensorflow.core.framework import tensor_pb2, types_pb2
        from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

        sys.path.insert(0, os.path.join(ROOT, "examples"))
        import make_warmup_file as mk

        class Official:
            pass

        pb = Official()
        pb.tensor_pb2, pb.types_pb2 = tensor_pb2, types_pb2
        pb.predict_pb2, pb.prediction_log_pb2 = predict_pb2, prediction_log_pb2
        requests = [
            {"x": np.array([[1, 2, 3]], np.float32), "shape": np.array([k, 3], np.int64)} for k in (1, 2, 3)
        ]
        # The model name in a recorded request is ignored by the server, as in TF Serving.
        records = [mk.prediction_log(r, pb, model_name="recorded_elsewhere") for r in requests]
        mk.write_tfrecords(path, records)
        # Cross-check: the official classes parse what was written.
        log = prediction_log_pb2.PredictionLog.FromString(records[2])
        assert log.WhichOneof("log_type") == "predict_log"
        assert list(log.predict_log.request.inputs["shape"].tensor_shape.dim[0:1])[0].size == 2
        print(json.dumps({
            "prediction_log_pb2": prediction_log_pb2.__file__,
            "predict_pb2": predict_pb2.__file__,
            "records": len(records),
        }))


if __name__ == "__main__":
    main()
