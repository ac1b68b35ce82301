//! Warmup: recorded requests (`assets.extra/tf_serving_warmup_requests`, as TF Serving) are replayed
//! on every session before a version is AVAILABLE, and a bad record fails the load naming it; the
//! synthesized warmup is best effort, so models whose shapes depend on input values load and answer
//! through every front end.
mod common;

use common::*;
use maas::manager::tfrecord;
use maas::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use maas::proto::inference::{self as pb, model_infer_request::InferInputTensor, InferTensorContents};
use maas::proto::tensorflow::serving::{
    model_version_status::State, prediction_log::LogType, ClassificationRequest, ClassifyLog, PredictLog,
    PredictRequest, PredictionLog,
};
use maas::proto::tensorflow::{DataType, TensorProto};
use prost::Message;
use serde_json::{json, Value};
use std::path::Path;
use tonic::Code;

const WARMUP_FILE: &str = "assets.extra/tf_serving_warmup_requests";

fn value_shapes() -> std::path::PathBuf {
    repo_root().join("tests/fixtures/value_shapes")
}

/// Copies `<from>/1/model.onnx` to `<repo>/<name>/1/model.onnx`; returns the version directory.
fn add_model(repo: &Path, name: &str, from: &Path) -> std::path::PathBuf {
    let dir = repo.join(name).join("1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(from.join("1/model.onnx"), dir.join("model.onnx")).unwrap();
    dir
}

fn i64_tensor(dims: &[i64], vals: Vec<i64>) -> TensorProto {
    TensorProto { dtype: DataType::DtInt64 as i32, tensor_shape: shape(dims), int64_val: vals, ..Default::default() }
}

fn predict_log(inputs: Vec<(&str, TensorProto)>) -> Vec<u8> {
    // The recorded model name is ignored: the request runs on the version being loaded.
    let request = predict_req("recorded_for_another_model", Some(42), inputs);
    let log = PredictionLog {
        log_type: Some(LogType::PredictLog(PredictLog { request: Some(request), response: None })),
        ..Default::default()
    };
    log.encode_to_vec()
}

fn write_warmup(version_dir: &Path, records: &[Vec<u8>]) {
    let mut file = Vec::new();
    for r in records {
        tfrecord::write_record(&mut file, r);
    }
    let path = version_dir.join(WARMUP_FILE);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, file).unwrap();
}

async fn v2(server: &TestServer) -> GrpcInferenceServiceClient<tonic::transport::Channel> {
    GrpcInferenceServiceClient::new(server.channel().await)
}

/// (inference count, ONNX Runtime executions) from v2 ModelStatistics.
async fn executions(server: &TestServer, model: &str) -> (u64, u64) {
    let mut c = v2(server).await;
    let r = c.model_statistics(pb::ModelStatisticsRequest { name: model.into(), version: String::new() }).await;
    let s = r.unwrap().into_inner().model_stats.remove(0);
    (s.inference_count, s.execution_count)
}

/// maas's status route for a model.
async fn details(server: &TestServer, model: &str) -> Value {
    let url = format!("http://{}/maas/v1/models/{model}", server.rest_addr);
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// (state, error code, error message) of version 1 from GetModelStatus.
async fn status_of(server: &TestServer, model: &str) -> (i32, i32, String) {
    let v = version_states(server, model).await.into_iter().find(|v| v.0 == 1).unwrap();
    (v.1, v.2, v.3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_requests_are_replayed_on_every_session() {
    let repo = tempfile::tempdir().unwrap();
    let dir = add_model(repo.path(), "m", &fixtures().join("numbers_classifier"));
    write_warmup(
        &dir,
        &[predict_log(vec![("x", classifier_input(1, 0))]), predict_log(vec![("x", classifier_input(3, 1))])],
    );
    let mut cfg = test_config(repo.path());
    cfg.manager.runtime.pool_size = 2;
    cfg.manager.warmup_iterations = 3;
    let server = TestServer::ready(cfg).await;

    assert_eq!(status_of(&server, "m").await, (State::Available as i32, 0, String::new()));
    // 2 records x 3 iterations x 2 sessions; no request was counted.
    assert_eq!(executions(&server, "m").await, (0, 12));
    let d = details(&server, "m").await;
    assert_eq!(d["versions"][0]["warmup"], json!({"kind": "recorded", "records": 2, "iterations": 3}), "{d}");
    assert_eq!(d["versions"][0]["sessions"], 2, "{d}");

    let r = server.predict_client().await.predict(predict_req("m", None, vec![("x", classifier_input(2, 0))])).await;
    assert_eq!(dims(&r.unwrap().into_inner().outputs["y"]), vec![2, 1]);
    assert_eq!(executions(&server, "m").await, (1, 13));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_from_the_example_script_and_the_official_package_load() {
    let python = repo_root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run ./scripts/setup.sh", python.display());
    let repo = tempfile::tempdir().unwrap();

    // examples/make_warmup_file.py, from .npz files of numpy arrays
    let ours = add_model(repo.path(), "expand_ours", &value_shapes().join("expand_shape"));
    let npz = repo.path().join("requests");
    std::fs::create_dir_all(&npz).unwrap();
    let make_npz = format!(
        "import numpy as np\nfor k in (1, 2):\n    np.savez('{}/r%d.npz' % k, x=np.array([[1, 2, 3]], np.float32), \
         shape=np.array([k + 1, 3], np.int64))\n",
        npz.display()
    );
    let out = std::process::Command::new(&python).args(["-c", &make_npz]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = std::process::Command::new(&python)
        .arg(repo_root().join("examples/make_warmup_file.py"))
        .arg("--version-dir")
        .arg(&ours)
        .arg("--npz")
        .arg(npz.join("r1.npz"))
        .arg("--npz")
        .arg(npz.join("r2.npz"))
        .output()
        .unwrap();
    assert!(out.status.success(), "make_warmup_file.py failed:\n{}", String::from_utf8_lossy(&out.stderr));

    // the official tensorflow-serving-api protos
    let official = add_model(repo.path(), "expand_official", &value_shapes().join("expand_shape"));
    let out = std::process::Command::new(&python)
        .arg(repo_root().join("tests/python/official_warmup_file.py"))
        .arg(official.join(WARMUP_FILE))
        .output()
        .unwrap();
    assert!(out.status.success(), "official_warmup_file.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let used: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        used["prediction_log_pb2"]
            .as_str()
            .unwrap()
            .ends_with(".venv/isolated/tensorflow_serving/apis/prediction_log_pb2.py"),
        "{used}"
    );

    let mut cfg = test_config(repo.path());
    cfg.manager.runtime.pool_size = 2;
    let server = TestServer::ready(cfg).await;
    for (model, records) in [("expand_ours", 2), ("expand_official", 3)] {
        assert_eq!(status_of(&server, model).await, (State::Available as i32, 0, String::new()), "{model}");
        assert_eq!(executions(&server, model).await, (0, records * 2), "{model}");
        let d = details(&server, model).await;
        assert_eq!(d["versions"][0]["warmup"], json!({"kind": "recorded", "records": records, "iterations": 1}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_record_fails_the_load_naming_it() {
    let repo = tempfile::tempdir().unwrap();
    let classifier = fixtures().join("numbers_classifier");
    let good = predict_log(vec![("x", classifier_input(1, 0))]);

    let dir = add_model(repo.path(), "unknown_input", &classifier);
    write_warmup(&dir, &[good.clone(), predict_log(vec![("z", classifier_input(1, 0))])]);

    let dir = add_model(repo.path(), "classify", &classifier);
    let classify = PredictionLog {
        log_type: Some(LogType::ClassifyLog(ClassifyLog {
            request: Some(ClassificationRequest::default()),
            response: None,
        })),
        ..Default::default()
    };
    write_warmup(&dir, &[good.clone(), classify.encode_to_vec()]);

    let dir = add_model(repo.path(), "not_a_log", &classifier);
    write_warmup(&dir, &[good.clone(), b"\xff\xff\xff".to_vec()]);

    let dir = add_model(repo.path(), "corrupt", &classifier);
    write_warmup(&dir, &[good.clone(), good.clone()]);
    let path = dir.join(WARMUP_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 5;
    bytes[last] ^= 0x40; // the last data byte of record 2
    std::fs::write(&path, bytes).unwrap();

    let dir = add_model(repo.path(), "bad_value", &classifier);
    let wrong_shape = PredictRequest { ..predict_req("m", None, vec![("x", f32_tensor(&[1, 7], vec![0.0; 7]))]) };
    let log = PredictionLog {
        log_type: Some(LogType::PredictLog(PredictLog { request: Some(wrong_shape), response: None })),
        ..Default::default()
    };
    write_warmup(&dir, &[good.clone(), log.encode_to_vec()]);

    let dir = add_model(repo.path(), "too_many", &classifier);
    write_warmup(&dir, &vec![good.clone(); 1001]);

    let mut cfg = test_config(repo.path());
    cfg.manager.max_load_retries = 0;
    let server = TestServer::ready(cfg).await;
    let end = State::End as i32;
    let cases: [(&str, Code, String); 6] = [
        (
            "unknown_input",
            Code::InvalidArgument,
            "warmup record 2: model 'unknown_input' version 1 has no input named 'z'; its inputs are ['x' (float32 [-1, 8])]"
                .into(),
        ),
        (
            "classify",
            Code::InvalidArgument,
            "warmup record 2: a classify_log record cannot be replayed: model 'classify' version 1 is an ONNX model, \
             whose only signature is predict (expected predict_log)"
                .into(),
        ),
        (
            "not_a_log",
            Code::InvalidArgument,
            "warmup record 2: not a serialized tensorflow.serving.PredictionLog: ".into(),
        ),
        (
            "corrupt",
            Code::DataLoss,
            "warmup record 2: corrupt data: its masked CRC32C is ".into(),
        ),
        (
            "bad_value",
            Code::InvalidArgument,
            "warmup record 2: model 'bad_value' version 1: input 'x' dimension 1 must be 8 (shape [-1, 8]), received shape [1, 7]"
                .into(),
        ),
        (
            "too_many",
            Code::InvalidArgument,
            format!(
                "the warmup file {} has more than 1000 records, the most that are replayed (as in TF Serving)",
                repo.path().join("too_many/1").join(WARMUP_FILE).display()
            ),
        ),
    ];
    for (model, code, prefix) in cases {
        let (state, got_code, message) = status_of(&server, model).await;
        assert_eq!((state, got_code), (end, code as i32), "{model}: {message}");
        assert!(message.starts_with(&prefix), "{model}:\n got: {message}\nwant: {prefix}...");
        let d = details(&server, model).await;
        assert_eq!(d["versions"][0]["load_error"], json!(message), "{model}");
    }
}

/// x f32[1, 3] = [[1, 2, 3]] expanded to `shape` [2, 3]; x f32[5] split into [2, 3].
const EXPECTED_Y: [f32; 6] = [1.0, 2.0, 3.0, 1.0, 2.0, 3.0];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_dependent_models_load_and_answer_through_every_front_end() {
    // Default flags: warmup on, no recorded requests; the synthesized warmup fails for both.
    let server = TestServer::ready(test_config(value_shapes())).await;
    for model in ["expand_shape", "split_sequence"] {
        assert_eq!(status_of(&server, model).await, (State::Available as i32, 0, String::new()), "{model}");
        let d = details(&server, model).await;
        let w = &d["versions"][0]["warmup"];
        assert_eq!(w["kind"], "skipped", "{d}");
        let want = format!("synthesized warmup skipped: model '{model}' version 1: ONNX Runtime failed to run");
        assert!(w["message"].as_str().unwrap().starts_with(&want), "{d}");
    }
    // Ready everywhere.
    assert!(v2(&server).await.server_ready(pb::ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let ready = reqwest::get(format!("http://{}/readyz", server.rest_addr)).await.unwrap();
    assert_eq!((ready.status().as_u16(), ready.text().await.unwrap()), (200, "ready\n".to_string()));

    // TF gRPC
    let mut tf = server.predict_client().await;
    let x = f32_tensor(&[1, 3], vec![1.0, 2.0, 3.0]);
    let r = tf.predict(predict_req("expand_shape", None, vec![("x", x), ("shape", i64_tensor(&[2], vec![2, 3]))]));
    let y = &r.await.unwrap().into_inner().outputs["y"];
    assert_eq!((dims(y), y.float_val.clone()), (vec![2, 3], EXPECTED_Y.to_vec()));
    let x = f32_tensor(&[5], vec![1.0, 2.0, 3.0, 4.0, 5.0]);
    let r = tf.predict(predict_req("split_sequence", None, vec![("x", x), ("split", i64_tensor(&[2], vec![2, 3]))]));
    let out = r.await.unwrap().into_inner().outputs;
    assert_eq!((dims(&out["first"]), out["first"].float_val.clone()), (vec![2], vec![1.0, 2.0]));
    assert_eq!(out["joined"].float_val, vec![1.0, 2.0, 3.0, 4.0, 5.0]);

    // v2 gRPC
    let input = |name: &str, datatype: &str, shape: Vec<i64>, contents: InferTensorContents| InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        contents: Some(contents),
        ..Default::default()
    };
    let f32s = |v: Vec<f32>| InferTensorContents { fp32_contents: v, ..Default::default() };
    let i64s = |v: Vec<i64>| InferTensorContents { int64_contents: v, ..Default::default() };
    let req = pb::ModelInferRequest {
        model_name: "expand_shape".into(),
        inputs: vec![
            input("x", "FP32", vec![1, 3], f32s(vec![1.0, 2.0, 3.0])),
            input("shape", "INT64", vec![2], i64s(vec![2, 3])),
        ],
        ..Default::default()
    };
    let r = v2(&server).await.model_infer(req).await.unwrap().into_inner();
    let raw: Vec<f32> = r.raw_output_contents[0].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!((r.outputs[0].shape.clone(), raw), (vec![2, 3], EXPECTED_Y.to_vec()));
    let req = pb::ModelInferRequest {
        model_name: "split_sequence".into(),
        inputs: vec![
            input("x", "FP32", vec![5], f32s(vec![1.0, 2.0, 3.0, 4.0, 5.0])),
            input("split", "INT64", vec![2], i64s(vec![2, 3])),
        ],
        ..Default::default()
    };
    let r = v2(&server).await.model_infer(req).await.unwrap().into_inner();
    let names: Vec<(&str, Vec<i64>)> = r.outputs.iter().map(|o| (o.name.as_str(), o.shape.clone())).collect();
    assert_eq!(names, vec![("first", vec![2]), ("joined", vec![5])]);

    // TF REST and v2 REST
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let req = http.post(format!("http://{}{path}", server.rest_addr)).json(&body);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, v) =
        post("/v1/models/expand_shape:predict", json!({"inputs": {"x": [[1.0, 2.0, 3.0]], "shape": [2, 3]}})).await;
    assert_eq!((s, &v), (200, &json!({"outputs": [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]})));
    let (s, v) =
        post("/v1/models/split_sequence:predict", json!({"inputs": {"x": [1.0, 2.0, 3.0, 4.0, 5.0], "split": [2, 3]}}))
            .await;
    assert_eq!((s, &v), (200, &json!({"outputs": {"first": [1.0, 2.0], "joined": [1.0, 2.0, 3.0, 4.0, 5.0]}})));
    let body = json!({"inputs": [
        {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]},
        {"name": "shape", "shape": [2], "datatype": "INT64", "data": [2, 3]},
    ]});
    let (s, v) = post("/v2/models/expand_shape/infer", body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["outputs"],
        json!([{"name": "y", "datatype": "FP32", "shape": [2, 3], "data": [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]}])
    );
    let body = json!({"inputs": [
        {"name": "x", "shape": [5], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0, 5.0]},
        {"name": "split", "shape": [2], "datatype": "INT64", "data": [2, 3]},
    ]});
    let (s, v) = post("/v2/models/split_sequence/infer", body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["outputs"][0], json!({"name": "first", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}));
}
