#!/usr/bin/env python3
"""Write a TF Serving warmup file (assets.extra/tf_serving_warmup_requests) from numpy arrays, without TensorFlow.

maas (like TF Serving) replays the recorded requests of a version's warmup file on every session
before the version takes traffic. The file is a TFRecord file (each record: u64 length, masked
CRC32C of the length, data, masked CRC32C of the data) whose records are serialized
`tensorflow.serving.PredictionLog` messages carrying a `predict_log` request. This script builds
them with stubs compiled from maas's own proto/ files (grpcio-tools; `./scripts/setup.sh` installs
it in .venv), so it needs neither TensorFlow nor tensorflow-serving-api.

Each `--npz FILE` is one recorded request; its arrays are the inputs, named by their keys:

    .venv/bin/python - <<'PY'
    import numpy as np
    np.savez("req1.npz", x=np.array([[1, 2, 3]], np.float32), shape=np.array([2, 3], np.int64))
    PY
    .venv/bin/python examples/make_warmup_file.py --version-dir models/expand/1 --npz req1.npz

From Python, `write_warmup_file(path, [{"x": array, ...}, ...])` does the same.
"""
import argparse
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_RECORDS = 1000  # TF Serving (and maas) replay at most this many


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data):
    """CRC-32C (Castagnoli), the checksum of TFRecord files."""
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc32c(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data):
    """One TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def write_tfrecords(path, records):
    """Writes serialized records (bytes) as a TFRecord file, creating its directory."""
    records = list(records)
    if len(records) > MAX_RECORDS:
        raise ValueError(f"{len(records)} records: a warmup file holds at most {MAX_RECORDS}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        for r in records:
            f.write(tfrecord(r))


# numpy dtype -> TF DataType name
_DTYPES = {
    "float32": "DT_FLOAT", "float64": "DT_DOUBLE", "float16": "DT_HALF",
    "int8": "DT_INT8", "int16": "DT_INT16", "int32": "DT_INT32", "int64": "DT_INT64",
    "uint8": "DT_UINT8", "uint16": "DT_UINT16", "uint32": "DT_UINT32", "uint64": "DT_UINT64",
    "bool": "DT_BOOL",
}


def tensor_proto(array, tensor_pb2, types_pb2):
    """A tensorflow.TensorProto of a numpy array: tensor_content for numbers, string_val for strings."""
    a = np.asarray(array)
    t = tensor_pb2.TensorProto()
    for d in a.shape:
        t.tensor_shape.dim.add(size=d)
    if a.dtype.kind in "OSU":
        t.dtype = types_pb2.DT_STRING
        t.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in a.ravel())
        return t
    name = _DTYPES.get(a.dtype.name)
    if name is None:
        raise ValueError(f"numpy dtype {a.dtype} has no TensorFlow equivalent here; supported: {sorted(_DTYPES)}")
    t.dtype = types_pb2.DataType.Value(name)
    t.tensor_content = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
    return t


def prediction_log(inputs, pb, output_filter=(), model_name=""):
    """A serialized PredictionLog whose predict_log request has these inputs.

    `pb` holds the generated modules: prediction_log_pb2, predict_pb2, tensor_pb2, types_pb2 (maas's
    stubs from `load_stubs()`, or the official tensorflow-serving-api ones). The model name is
    informational: the server replays the request on the version being loaded.
    """
    req = pb.predict_pb2.PredictRequest()
    req.model_spec.name = model_name
    for name, array in inputs.items():
        req.inputs[name].CopyFrom(tensor_proto(array, pb.tensor_pb2, pb.types_pb2))
    req.output_filter.extend(output_filter)
    log = pb.prediction_log_pb2.PredictionLog()
    log.predict_log.request.CopyFrom(req)
    return log.SerializeToString()


class Stubs:
    """maas's stubs, compiled from proto/ (as examples/python_client.py does)."""

    def __init__(self):
        sys.path.insert(0, HERE)
        from python_client import load_stubs

        load_stubs()
        from tensorflow.core.framework import tensor_pb2, types_pb2
        from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

        self.tensor_pb2, self.types_pb2 = tensor_pb2, types_pb2
        self.predict_pb2, self.prediction_log_pb2 = predict_pb2, prediction_log_pb2


def write_warmup_file(path, requests, output_filter=(), pb=None):
    """Writes one PredictionLog record per dict of input arrays in `requests`."""
    pb = pb or Stubs()
    write_tfrecords(path, (prediction_log(inputs, pb, output_filter) for inputs in requests))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--version-dir", help=f"a model version directory: writes DIR/{WARMUP_FILE}")
    where.add_argument("--out", help="the file to write")
    p.add_argument("--npz", action="append", required=True, help="one request: an .npz of the input arrays (repeat)")
    p.add_argument("--output-filter", action="append", default=[], help="an output to request (repeat; default all)")
    args = p.parse_args()
    path = args.out or os.path.join(args.version_dir, WARMUP_FILE)
    requests = []
    for f in args.npz:
        with np.load(f, allow_pickle=False) as z:
            requests.append({k: z[k] for k in z.files})
    write_warmup_file(path, requests, args.output_filter)
    print(f"wrote {len(requests)} warmup record(s) to {path}")


if __name__ == "__main__":
    main()
