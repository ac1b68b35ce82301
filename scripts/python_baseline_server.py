#!/usr/bin/env python3
"""A Python baseline for scripts/bench.sh: the TF Serving Predict RPC served the way Python model servers
serve it (grpcio with a thread pool, onnxruntime's Python API, numpy conversions), for one ONNX model,
with the same session options as maas (one session, 1 intra-op and 1 inter-op thread, sequential).

    python_baseline_server.py --model-path M.onnx --name NAME --port P [--workers N]   (P = 0: any free port)
    python_baseline_server.py --model-path M.onnx --name NAME --write-request FILE [--rows R]

The second form writes a binary PredictRequest for the model (inputs as tensor_content, the same
deterministic values for every run) for `maas bench load --request-file`, so maas and this server get the
same bytes. Needs grpcio, numpy and onnxruntime (bench.sh installs onnxruntime==1.31.1 into .venv).
"""
import argparse
import os
import sys
import threading
from concurrent import futures

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
import python_client  # noqa: E402  (compiles the stubs from proto/)

DTYPES = {
    "tensor(float)": (np.float32, 1),
    "tensor(double)": (np.float64, 2),
    "tensor(int32)": (np.int32, 3),
    "tensor(int64)": (np.int64, 9),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, default=8600)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--write-request")
    p.add_argument("--rows", type=int, default=1)
    args = p.parse_args()

    python_client.load_stubs()
    import grpc
    import onnxruntime as ort
    from tensorflow.core.framework import tensor_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(args.model_path, opts, providers=["CPUExecutionProvider"])
    lock = threading.Lock()  # one session, one run at a time (as maas with --session-pool-size 1)

    if args.write_request:
        req = predict_pb2.PredictRequest()
        req.model_spec.name = args.name
        rng = np.random.default_rng(7)
        for i in session.get_inputs():
            dtype, tf_dtype = DTYPES[i.type]
            shape = [args.rows if n == 0 else (d if isinstance(d, int) else 1) for n, d in enumerate(i.shape)]
            x = rng.standard_normal(shape).astype(dtype)
            t = tensor_pb2.TensorProto(dtype=tf_dtype, tensor_content=x.tobytes())
            for d in shape:
                t.tensor_shape.dim.add().size = d
            req.inputs[i.name].CopyFrom(t)
        with open(args.write_request, "wb") as f:
            f.write(req.SerializeToString())
        return

    np_of = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64}
    tf_of = {np.dtype(v): k for k, v in np_of.items()}

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            if request.model_spec.name != args.name:
                context.abort(grpc.StatusCode.NOT_FOUND, f"model '{request.model_spec.name}' is not served")
            feeds = {}
            for name, t in request.inputs.items():
                shape = [d.size for d in t.tensor_shape.dim]
                feeds[name] = np.frombuffer(t.tensor_content, dtype=np_of[t.dtype]).reshape(shape)
            with lock:
                outs = session.run(None, feeds)
            resp = predict_pb2.PredictResponse()
            resp.model_spec.name = args.name
            for meta, y in zip(session.get_outputs(), outs):
                t = resp.outputs[meta.name]
                t.dtype = tf_of[y.dtype]
                t.tensor_content = y.tobytes()
                for d in y.shape:
                    t.tensor_shape.dim.add().size = d
            return resp

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"python baseline serving '{args.name}' on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
