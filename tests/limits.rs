//! `--max-tensor-bytes`: no request can make the server allocate more than the limit. Requests of a
//! few bytes that claim huge tensors (TF's single value filling the shape, v2 typed contents and
//! BYTES count claims, v2 REST shapes, large JSON bodies) get RESOURCE_EXHAUSTED / HTTP 413 naming
//! the input, its shape, its size and the limit, before anything is allocated; the server keeps
//! answering, and its memory (the server runs in this process) stays small.
mod common;

use bytes::Bytes;
use common::*;
use maas::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use maas::proto::inference::{model_infer_request::InferInputTensor, InferTensorContents, ModelInferRequest};
use maas::proto::tensorflow::{DataType, TensorProto};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

const GIB: usize = 1 << 30;
const HUGE: i64 = 1 << 40;

/// A repository with copies of the fixture models `names`.
fn repo(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        let to = dir.path().join(name).join("1");
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(fixtures().join(name).join("1/model.onnx"), to.join("model.onnx")).unwrap();
    }
    dir
}

async fn server(repo: &tempfile::TempDir, max_tensor_bytes: Option<usize>) -> TestServer {
    let mut cfg = test_config(repo.path());
    if let Some(limit) = max_tensor_bytes {
        cfg.manager.runtime.max_tensor_bytes = limit;
    }
    TestServer::ready(cfg).await
}

async fn v2(server: &TestServer) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::new(server.channel().await)
}

fn v2_input(name: &str, datatype: &str, shape: Vec<i64>, contents: Option<InferTensorContents>) -> InferInputTensor {
    InferInputTensor { name: name.into(), datatype: datatype.into(), shape, contents, ..Default::default() }
}

fn v2_req(model: &str, inputs: Vec<InferInputTensor>, raw: Vec<Bytes>) -> ModelInferRequest {
    ModelInferRequest { model_name: model.into(), inputs, raw_input_contents: raw, ..Default::default() }
}

fn fp32(vals: Vec<f32>) -> Option<InferTensorContents> {
    Some(InferTensorContents { fp32_contents: vals, ..Default::default() })
}

fn string_tensor(dims: &[i64], vals: Vec<&'static [u8]>) -> TensorProto {
    TensorProto {
        dtype: DataType::DtString as i32,
        tensor_shape: shape(dims),
        string_val: vals.into_iter().map(Bytes::from_static).collect(),
        ..Default::default()
    }
}

/// POSTs `body` to the REST port: (status, body).
async fn post(server: &TestServer, path: &str, body: String) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("http://{}{path}", server.rest_addr))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The `{"error": ...}` message of a REST answer with `status`.
async fn post_err(server: &TestServer, path: &str, body: String, status: u16) -> String {
    let (s, b) = post(server, path, body).await;
    assert_eq!(s, status, "POST {path}: {b}");
    let v: Value = serde_json::from_str(&b).unwrap_or_else(|e| panic!("not JSON ({e}): {b}"));
    v["error"].as_str().unwrap_or_else(|| panic!("no error string: {b}")).to_string()
}

fn too_large(model: &str, input: &str, shape: &str, what: &str, bytes: u128, limit: usize) -> String {
    format!(
        "model '{model}' version 1: input '{input}': shape {shape} of {what} needs {bytes} bytes, more than the \
         {limit} bytes --max-tensor-bytes allows for one request (all inputs together)"
    )
}

const STRING: &str = "string (32 bytes per element plus its bytes)";

/// Peak and current resident memory of this process (the server runs in it), in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib = |key: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key}"));
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    };
    (kib("VmHWM:"), kib("VmRSS:"))
}

fn assert_memory_small() {
    let (peak, now) = memory();
    eprintln!("process memory: peak {} MiB, now {} MiB", peak >> 20, now >> 20);
    assert!(peak < GIB as u64, "peak resident memory {peak} bytes");
}

/// The normal request still answered on every front end.
async fn still_serving(server: &TestServer) {
    let r = server
        .predict_client()
        .await
        .predict(predict_req("numbers_classifier", None, vec![("x", classifier_input(2, 1))]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dims(&r.outputs["y"]), vec![2, 1]);
    let r = v2(server)
        .await
        .model_infer(v2_req("numbers_classifier", vec![v2_input("x", "FP32", vec![1, 8], fp32(vec![0.5; 8]))], vec![]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outputs[0].shape, vec![1, 1]);
    let (s, b) =
        post(server, "/v1/models/numbers_classifier:predict", json!({"instances": [vec![0.5; 8]]}).to_string()).await;
    assert_eq!(s, 200, "{b}");
    let body = json!({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": vec![0.5; 8]}]});
    let (s, b) = post(server, "/v2/models/numbers_classifier/infer", body.to_string()).await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_claims_are_refused_before_allocation_and_the_server_keeps_serving() {
    let dir = repo(&["numbers_classifier", "identity_string"]);
    let server = server(&dir, None).await;
    still_serving(&server).await;
    let mut tf = server.predict_client().await;

    // TF: one float_val fills [2^40, 8] (the 60-byte request that used to abort the process), and
    // [2^28, 8] (which used to grow the process to 16 GiB).
    for (rows, bytes) in [(HUGE, 35_184_372_088_832u128), (268_435_456, 8_589_934_592)] {
        let req = predict_req("numbers_classifier", None, vec![("x", f32_tensor(&[rows, 8], vec![1.0]))]);
        let e = tf.predict(req).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert_eq!(e.message(), too_large("numbers_classifier", "x", &format!("[{rows}, 8]"), "float32", bytes, GIB));
    }
    // A string filling the shape counts per element and its bytes at the expanded size.
    let req = predict_req("identity_string", None, vec![("x", string_tensor(&[HUGE, 1], vec![b"ab"]))]);
    let e = tf.predict(req).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(e.message(), too_large("identity_string", "x", "[1099511627776, 1]", STRING, 34 << 40, GIB));

    // v2 gRPC: typed contents, raw contents, and BYTES count claims (typed and raw).
    let mut c = v2(&server).await;
    let bytes_typed =
        Some(InferTensorContents { bytes_contents: vec![Bytes::from_static(b"a")], ..Default::default() });
    let cases = vec![
        (
            v2_req("numbers_classifier", vec![v2_input("x", "FP32", vec![HUGE, 8], fp32(vec![1.0]))], vec![]),
            "[1099511627776, 8]",
            "float32",
            32u128 << 40,
        ),
        (
            v2_req(
                "numbers_classifier",
                vec![v2_input("x", "FP32", vec![HUGE, 8], None)],
                vec![Bytes::from_static(&[0; 4])],
            ),
            "[1099511627776, 8]",
            "float32",
            32 << 40,
        ),
        (
            v2_req("identity_string", vec![v2_input("x", "BYTES", vec![HUGE, 1], bytes_typed)], vec![]),
            "[1099511627776, 1]",
            STRING,
            (32 << 40) + 1,
        ),
        (
            v2_req(
                "identity_string",
                vec![v2_input("x", "BYTES", vec![HUGE, 1], None)],
                vec![Bytes::from_static(b"\x01\0\0\0a")],
            ),
            "[1099511627776, 1]",
            STRING,
            (32 << 40) + 1,
        ),
    ];
    for (req, shape, what, bytes) in cases {
        let model = req.model_name.clone();
        let e = c.model_infer(req).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
        assert_eq!(e.message(), too_large(&model, "x", shape, what, bytes, GIB));
    }

    // v2 REST: a huge "shape" with short data.
    let body = json!({"inputs": [{"name": "x", "shape": [HUGE, 8], "datatype": "FP32", "data": [1.0]}]});
    let e = post_err(&server, "/v2/models/numbers_classifier/infer", body.to_string(), 413).await;
    assert_eq!(e, too_large("numbers_classifier", "x", "[1099511627776, 8]", "float32", 32 << 40, GIB));
    let body = json!({"inputs": [{"name": "x", "shape": [HUGE, 1], "datatype": "BYTES", "data": ["a"]}]});
    let e = post_err(&server, "/v2/models/identity_string/infer", body.to_string(), 413).await;
    assert_eq!(e, too_large("identity_string", "x", "[1099511627776, 1]", STRING, (32 << 40) + 1, GIB));

    still_serving(&server).await;
    assert_memory_small();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn just_under_the_limit_passes_and_just_over_fails() {
    let dir = repo(&["numbers_classifier", "fixed_shape"]);
    // [8, 8] float32 = 256 bytes.
    let server = server(&dir, Some(256)).await;
    let mut tf = server.predict_client().await;
    let mut c = v2(&server).await;

    // TF: typed values, a filled single value, and tensor_content.
    for filled in [false, true] {
        let vals = |rows: usize| if filled { vec![0.25] } else { vec![0.25; rows * 8] };
        let ok = tf.predict(predict_req("numbers_classifier", None, vec![("x", f32_tensor(&[8, 8], vals(8)))])).await;
        assert_eq!(dims(&ok.unwrap().into_inner().outputs["y"]), vec![8, 1]);
        let e = tf
            .predict(predict_req("numbers_classifier", None, vec![("x", f32_tensor(&[9, 8], vals(9)))]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert_eq!(e.message(), too_large("numbers_classifier", "x", "[9, 8]", "float32", 288, 256));
    }
    let mut t = f32_tensor(&[9, 8], vec![]);
    t.tensor_content = Bytes::from(vec![0u8; 288]);
    let e = tf.predict(predict_req("numbers_classifier", None, vec![("x", t)])).await.unwrap_err();
    assert_eq!(e.message(), too_large("numbers_classifier", "x", "[9, 8]", "float32", 288, 256));

    // v2: typed and raw.
    let ok = c
        .model_infer(v2_req("numbers_classifier", vec![v2_input("x", "FP32", vec![8, 8], fp32(vec![0.5; 64]))], vec![]))
        .await;
    assert_eq!(ok.unwrap().into_inner().outputs[0].shape, vec![8, 1]);
    let e = c
        .model_infer(v2_req(
            "numbers_classifier",
            vec![v2_input("x", "FP32", vec![9, 8], None)],
            vec![Bytes::from(vec![0u8; 288])],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(e.message(), too_large("numbers_classifier", "x", "[9, 8]", "float32", 288, 256));

    // All inputs of a request together: a [2, 3] float32 (24 bytes) and b [n] int64.
    let two = |n: i64| {
        let a = v2_input("a", "FP32", vec![2, 3], fp32(vec![1.0; 6]));
        let b = v2_input(
            "b",
            "INT64",
            vec![n],
            Some(InferTensorContents { int64_contents: vec![7; n as usize], ..Default::default() }),
        );
        v2_req("fixed_shape", vec![a, b], vec![])
    };
    let ok = c.model_infer(two(29)).await.unwrap().into_inner();
    assert_eq!(ok.outputs.len(), 2);
    let e = c.model_infer(two(30)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(
        e.message(),
        "model 'fixed_shape' version 1: input 'b': shape [30] of int64 needs 240 bytes; with the 24 bytes of the \
         inputs before it that is more than the 256 bytes --max-tensor-bytes allows for one request (all inputs \
         together)"
    );
    still_serving_small(&server).await;
}

/// Under a 256-byte limit, REST bodies (whose parsed JSON alone is larger) are refused; gRPC answers.
async fn still_serving_small(server: &TestServer) {
    let r = server
        .predict_client()
        .await
        .predict(predict_req("numbers_classifier", None, vec![("x", classifier_input(1, 1))]))
        .await
        .unwrap();
    assert_eq!(dims(&r.into_inner().outputs["y"]), vec![1, 1]);
    let e = post_err(
        server,
        "/v1/models/numbers_classifier:predict",
        json!({"instances": [vec![0.5; 8]]}).to_string(),
        413,
    )
    .await;
    assert!(e.starts_with("the JSON body needs about "), "{e}");
    assert!(
        e.ends_with("more than the 256 bytes --max-tensor-bytes allows for one request; send large tensors over gRPC"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_json_is_bounded_before_it_is_parsed() {
    let dir = repo(&["numbers_classifier"]);
    let limit = 64 << 10;
    let server = server(&dir, Some(limit)).await;

    // v2 REST: the shape's claim against the limit, before the data is looked at. [2048, 8] float32 is
    // exactly the limit (then the data is short: 400); [2049, 8] is over it (413).
    let body = |rows: i64| json!({"inputs": [{"name": "x", "shape": [rows, 8], "datatype": "FP32", "data": [1.0]}]});
    let e = post_err(&server, "/v2/models/numbers_classifier/infer", body(2048).to_string(), 400).await;
    assert_eq!(
        e,
        "model 'numbers_classifier' version 1: input 'x': shape [2048, 8] needs 16384 values, \"data\" has 1"
    );
    let e = post_err(&server, "/v2/models/numbers_classifier/infer", body(2049).to_string(), 413).await;
    assert_eq!(e, too_large("numbers_classifier", "x", "[2049, 8]", "float32", 65568, limit));

    // TF REST: 100 rows pass; 1000 rows (32 KB of tensor, but about 300 KB of parsed JSON) are refused
    // before the body is parsed.
    let rows = |n: usize| json!({"instances": vec![[0.5; 8]; n]}).to_string();
    let (s, b) = post(&server, "/v1/models/numbers_classifier:predict", rows(100)).await;
    assert_eq!(s, 200, "{b}");
    let e = post_err(&server, "/v1/models/numbers_classifier:predict", rows(1000), 413).await;
    assert!(e.starts_with("the JSON body needs about "), "{e}");
    assert!(e.contains("(9002 values, 1 objects), more than the 65536 bytes --max-tensor-bytes"), "{e}");

    // A deeply nested array of 1 Mi zeros (2 MiB on the wire, 32 MiB once parsed) and a body of
    // NaN tokens (each a marker object once parsed) are refused without being parsed.
    let nested = format!("{{\"instances\": [[[{}0]]]}}", "0,".repeat((1 << 20) - 1));
    let e = post_err(&server, "/v1/models/numbers_classifier:predict", nested, 413).await;
    assert!(e.contains("(1048580 values, 1 objects)"), "{e}");
    let nans = format!("{{\"instances\": [[{}NaN]]}}", "NaN,".repeat(1 << 18));
    let e = post_err(&server, "/v1/models/numbers_classifier:predict", nans, 413).await;
    assert!(e.starts_with("the JSON body needs about "), "{e}");

    let (s, b) = post(&server, "/v1/models/numbers_classifier:predict", rows(2)).await;
    assert_eq!(s, 200, "{b}");
    assert_memory_small();
}
