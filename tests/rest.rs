//! REST front ends (TF Serving `/v1`, KServe v2 `/v2`, `/healthz`, `/readyz`) over real sockets, with a
//! real model manager and ONNX Runtime.
mod common;

use base64::Engine;
use bytes::Bytes;
use common::*;
use maas::manager::{ManagerConfig, ModelManager, ModelSource, VersionSelector};
use maas::repository::config::ModelConfig;
use maas::repository::policy::VersionPolicy;
use maas::tensor::{DType, InferRequest, Tensor, TensorData};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

struct Rest {
    base: String,
    mgr: Arc<ModelManager>,
    client: reqwest::Client,
    _server: tokio::task::JoinHandle<()>,
}

fn manager_config() -> ManagerConfig {
    ManagerConfig { poll_interval: Some(Duration::from_millis(100)), ..ManagerConfig::default() }
}

impl Rest {
    async fn start(source: ModelSource) -> Rest {
        let mgr = Arc::new(ModelManager::new(ort_env(), manager_config(), source));
        mgr.initial_load().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = maas::api::rest::router(Arc::clone(&mgr));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Rest { base: format!("http://{addr}"), mgr, client: reqwest::Client::new(), _server: server }
    }

    async fn repo(dir: &Path) -> Rest {
        Rest::start(ModelSource::Repository(dir.to_path_buf().into())).await
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self.client.get(format!("{}{path}", self.base)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn post(&self, path: &str, body: &str) -> (u16, String) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let (s, b) = self.get(path).await;
        (s, serde_json::from_str(&b).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {b}")))
    }

    async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let (s, b) = self.post(path, &body.to_string()).await;
        (s, serde_json::from_str(&b).unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {b}")))
    }

    /// The error message of a failed request, checking the status and the `{"error": ...}` body.
    async fn post_err(&self, path: &str, body: &str, status: u16) -> String {
        let (s, b) = self.post(path, body).await;
        assert_eq!(s, status, "POST {path} {body}: {b}");
        error_of(&b)
    }

    async fn get_err(&self, path: &str, status: u16) -> String {
        let (s, b) = self.get(path).await;
        assert_eq!(s, status, "GET {path}: {b}");
        error_of(&b)
    }

    /// The core's answer for `inputs` on the latest version of `model` (what gRPC returns).
    async fn direct(&self, model: &str, inputs: Vec<(&str, Tensor)>) -> Result<Vec<(String, Tensor)>, String> {
        let s = self.mgr.resolve(model, &VersionSelector::Latest).unwrap();
        let req =
            InferRequest { inputs: inputs.into_iter().map(|(n, t)| (n.to_string(), t)).collect(), outputs: vec![] };
        s.infer(req).await.map(|r| r.outputs).map_err(|e| e.to_string())
    }
}

fn error_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{body}");
    v["error"].as_str().unwrap_or_else(|| panic!("no \"error\" string: {body}")).to_string()
}

/// A repository holding copies of the named fixture models.
fn repo(models: &[&str]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for m in models {
        let src = fixtures().join(m).join("1");
        let dst = dir.path().join(m).join("1");
        std::fs::create_dir_all(&dst).unwrap();
        for f in std::fs::read_dir(&src).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
        }
    }
    dir
}

fn f32_t(shape: &[i64], vals: &[f32]) -> Tensor {
    let raw: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::new(DType::F32, shape.to_vec(), TensorData::Raw(Bytes::from(raw))).unwrap()
}

fn f32_vals(t: &Tensor) -> Vec<f32> {
    let TensorData::Raw(b) = &t.data else { panic!("not raw") };
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// JSON numbers (nested lists flattened) as f32.
fn json_f32(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(a) => a.iter().flat_map(json_f32).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        other => panic!("not a number: {other}"),
    }
}

fn classifier_rows(rows: usize) -> Vec<Vec<f32>> {
    (0..rows).map(|r| (0..8).map(|i| (((r * 8 + i) % 17) as f32 - 8.0) / 4.0).collect()).collect()
}

const MODELS: &[&str] = &["numbers_classifier", "identity_float", "identity_string", "fixed_shape"];

#[tokio::test]
async fn tf_status_metadata_and_route_errors() {
    let dir = repo(MODELS);
    let rest = Rest::repo(dir.path()).await;

    let (s, v) = rest.get_json("/v1/models/numbers_classifier").await;
    assert_eq!(s, 200);
    let st = &v["model_version_status"];
    assert_eq!(st.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(st[0]["version"], "1");
    assert_eq!(st[0]["state"], "AVAILABLE");
    assert_eq!(st[0]["status"]["error_code"], "OK");
    assert_eq!(st[0]["status"]["error_message"], "", "a healthy version has no error message, as in TF Serving");
    let (s, v1) = rest.get_json("/v1/models/numbers_classifier/versions/1").await;
    assert_eq!((s, &v1["model_version_status"][0]["version"]), (200, &json!("1")));

    let (s, v) = rest.get_json("/v1/models/numbers_classifier/metadata").await;
    assert_eq!(s, 200);
    let dims = |d: &[&str]| -> Value { d.iter().map(|s| json!({"size": s, "name": ""})).collect() };
    assert_eq!(
        v,
        json!({
            "model_spec": {"name": "numbers_classifier", "signature_name": "", "version": "1"},
            "metadata": {"signature_def": {"signature_def": {"serving_default": {
                "inputs": {"x": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": dims(&["-1", "8"]), "unknown_rank": false}, "name": "x"}},
                "outputs": {"y": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": dims(&["-1", "1"]), "unknown_rank": false}, "name": "y"}},
                "method_name": "tensorflow/serving/predict",
            }}}},
        })
    );
    let (s, v) = rest.get_json("/v1/models/fixed_shape/versions/1/metadata").await;
    assert_eq!(s, 200);
    let def = &v["metadata"]["signature_def"]["signature_def"]["serving_default"];
    assert_eq!(def["inputs"]["b"]["dtype"], "DT_INT64");
    assert_eq!(def["inputs"]["a"]["tensor_shape"]["dim"], dims(&["2", "3"]));
    assert_eq!(def["outputs"]["sum"]["dtype"], "DT_FLOAT");

    // Unknown model / version: 404 with the gRPC message.
    let e = rest.get_err("/v1/models/nope", 404).await;
    assert_eq!(
        e,
        "Servable not found for request: model 'nope' is not served here; served models: [fixed_shape, \
         identity_float, identity_string, numbers_classifier]"
    );
    let e = rest.get_err("/v1/models/numbers_classifier/versions/7", 404).await;
    assert_eq!(e, "Servable not found for request: model 'numbers_classifier' has no version 7; its versions: [1]");
    let e = rest.get_err("/v1/models/numbers_classifier/versions/7/metadata", 404).await;
    assert!(e.contains("has no version 7"), "{e}");
    let e = rest.post_err("/v1/models/nope:predict", r#"{"instances":[1]}"#, 404).await;
    assert!(e.starts_with("Servable not found for request: model 'nope'"), "{e}");

    // Path errors (TF Serving's texts).
    assert_eq!(rest.get_err("/v1/models", 400).await, "Missing model name in request.");
    assert_eq!(
        rest.get_err("/v1/models/numbers_classifier/versions/abc", 400).await,
        "Malformed request: GET /v1/models/numbers_classifier/versions/abc"
    );
    assert_eq!(
        rest.get_err("/v1/models/numbers_classifier:predict", 400).await,
        "Malformed request: GET /v1/models/numbers_classifier:predict"
    );
    assert_eq!(
        rest.post_err("/v1/models/numbers_classifier:explode", "{}", 400).await,
        "Malformed request: POST /v1/models/numbers_classifier:explode"
    );
    assert_eq!(
        rest.post_err("/v1/models/numbers_classifier", "{}", 400).await,
        "Malformed request: POST /v1/models/numbers_classifier"
    );
    assert_eq!(rest.get_err("/v1/something/else", 400).await, "Malformed request: GET /v1/something/else");
    let e = rest.post_err("/v1/models/numbers_classifier:classify", "{}", 501).await;
    assert!(e.starts_with("Classify is not supported"), "{e}");
    let e = rest.post_err("/v1/models/numbers_classifier/versions/1:regress", "{}", 501).await;
    assert!(e.starts_with("Regress is not supported"), "{e}");

    // Unknown routes and methods.
    assert_eq!(rest.get_err("/nope", 404).await, "no route for GET /nope");
    let (s, b) = rest
        .client
        .delete(format!("{}/v1/models/x", rest.base))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map(|s| (s, ()))
        .unwrap();
    assert_eq!((s, b), (405, ()));

    // Probes: every model here is AVAILABLE.
    assert_eq!(rest.get("/healthz").await, (200, "ok\n".to_string()));
    assert_eq!(rest.get("/readyz").await, (200, "ready\n".to_string()));
}

#[tokio::test]
async fn tf_predict_row_and_columnar() {
    let dir = repo(MODELS);
    let rest = Rest::repo(dir.path()).await;
    let rows = classifier_rows(3);
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let want = rest.direct("numbers_classifier", vec![("x", f32_t(&[3, 8], &flat))]).await.unwrap();
    let want = f32_vals(&want[0].1);
    assert_eq!(want.len(), 3);

    // Row format, single input: a list of values; one output: a list of values.
    let (s, v) = rest.post_json("/v1/models/numbers_classifier:predict", &json!({"instances": rows})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v.as_object().unwrap().len(), 1);
    let preds = v["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 3);
    assert!(preds.iter().all(|p| p.as_array().map(Vec::len) == Some(1)), "{v}");
    assert_eq!(json_f32(&v["predictions"]), want);
    // Row format with objects, explicit signature, version route.
    let inst: Vec<Value> = rows.iter().map(|r| json!({"x": r})).collect();
    let body = json!({"signature_name": "serving_default", "instances": inst});
    let (s, v) = rest.post_json("/v1/models/numbers_classifier/versions/1:predict", &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(json_f32(&v["predictions"]), want);
    // Columnar: a value, or an object keyed by input name.
    let (s, v) = rest.post_json("/v1/models/numbers_classifier:predict", &json!({"inputs": rows})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v.as_object().unwrap().keys().collect::<Vec<_>>(), ["outputs"]);
    assert_eq!(v["outputs"].as_array().unwrap().len(), 3);
    assert_eq!(json_f32(&v["outputs"]), want);
    let (s, v) = rest.post_json("/v1/models/numbers_classifier:predict", &json!({"inputs": {"x": rows}})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(json_f32(&v["outputs"]), want);

    // Several inputs and outputs.
    let body = json!({"instances": [{"a": [1.0, 2.0, 3.0], "b": 5}, {"a": [4.0, 5.0, 6.0], "b": -6}]});
    let (s, v) = rest.post_json("/v1/models/fixed_shape:predict", &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"predictions": [{"sum": [2.0, 3.0, 4.0], "b_out": 5}, {"sum": [5.0, 6.0, 7.0], "b_out": -6}]})
    );
    let body = json!({"inputs": {"a": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "b": [7, 8, 9]}});
    let (s, v) = rest.post_json("/v1/models/fixed_shape:predict", &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!({"outputs": {"sum": [[2.0, 3.0, 4.0], [5.0, 6.0, 7.0]], "b_out": [7, 8, 9]}}));
    // Row format whose outputs do not have the batch as first dimension.
    let body = json!({"instances": [{"a": [1.0, 2.0, 3.0], "b": 5}]});
    let e = rest.post_err("/v1/models/fixed_shape:predict", &body.to_string(), 400).await;
    let direct = rest
        .direct(
            "fixed_shape",
            vec![
                ("a", f32_t(&[1, 3], &[1.0, 2.0, 3.0])),
                (
                    "b",
                    Tensor::new(DType::I64, vec![1], TensorData::Raw(Bytes::from(5i64.to_le_bytes().to_vec())))
                        .unwrap(),
                ),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(e, direct, "a shape error must read as the core's (gRPC's)");

    // NaN / Infinity tokens, in and out.
    let (s, b) =
        rest.post("/v1/models/identity_float:predict", r#"{"inputs": [[NaN, Infinity, -Infinity, 1.5]]}"#).await;
    assert_eq!((s, b.as_str()), (200, r#"{"outputs":[[NaN,Infinity,-Infinity,1.5]]}"#));

    // Binary values: {"b64": ...} in; strings out as text when UTF-8, else {"b64": ...}.
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let body = json!({"inputs": [[{"b64": b64(b"hi")}, {"b64": b64("é€".as_bytes())}, "plain"]]});
    let (s, v) = rest.post_json("/v1/models/identity_string:predict", &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!({"outputs": [["hi", "é€", "plain"]]}));
    // Strings are bytes: what is not UTF-8 comes back as {"b64": ...} (tests/strings.rs has more).
    let body = json!({"inputs": [[{"b64": b64(&[0xff, 0xfe])}, "ok"]]});
    let (s, v) = rest.post_json("/v1/models/identity_string:predict", &body).await;
    assert_eq!((s, v), (200, json!({"outputs": [[{"b64": b64(&[0xff, 0xfe])}, "ok"]]})));
    let e = rest.post_err("/v1/models/identity_string:predict", r#"{"inputs": [[{"b64": "!!"}]]}"#, 400).await;
    assert!(
        e.starts_with("model 'identity_string' version 1: input 'x': element 0: invalid base64 in {\"b64\": ...}"),
        "{e}"
    );
    let body = json!({"instances": [[{"b64": b64(b"a")}], ["b"]]});
    let (s, v) = rest.post_json("/v1/models/identity_string:predict", &body).await;
    assert_eq!((s, v), (200, json!({"predictions": [["a"], ["b"]]})));
}

#[tokio::test]
async fn tf_predict_bad_inputs() {
    let dir = repo(MODELS);
    let rest = Rest::repo(dir.path()).await;
    let p = "/v1/models/numbers_classifier:predict";
    let e = rest.post_err(p, "{\"instances\": [1, 2", 400).await;
    assert!(e.starts_with("JSON Parse error: "), "{e}");
    let e = rest.post_err(p, "[1]", 400).await;
    assert!(e.starts_with("the request body must be a JSON object"), "{e}");
    let e = rest.post_err(p, r#"{"instances": [[1]], "inputs": [[1]]}"#, 400).await;
    assert_eq!(e, "the request has both \"instances\" (row format) and \"inputs\" (columnar format); send exactly one");
    let e = rest.post_err(p, r#"{"instances": []}"#, 400).await;
    assert!(e.contains("\"instances\" must be a non-empty JSON list"), "{e}");
    let e = rest.post_err(p, r#"{"signature_name": "other", "inputs": [[1]]}"#, 400).await;
    assert_eq!(
        e,
        "Serving signature key \"other\" not found: model 'numbers_classifier' has one signature, \"serving_default\""
    );
    // Ragged lists name the input.
    let e = rest.post_err("/v1/models/identity_float:predict", r#"{"inputs": [[1.0, 2.0], [3.0]]}"#, 400).await;
    assert_eq!(
        e,
        "model 'identity_float' version 1: input 'x': the nested lists are ragged (not rectangular): a list has 1 \
         elements where 2 were expected at depth 1, but the first elements give shape [2, 2]"
    );
    let e = rest
        .post_err("/v1/models/identity_float:predict", r#"{"instances": [{"x": [1.0]}, {"x": [1.0, 2.0]}]}"#, 400)
        .await;
    assert!(
        e.starts_with("model 'identity_float' version 1: input 'x': instance 1: the nested lists are ragged"),
        "{e}"
    );
    // Wrong value types and ranges, from the signature's dtype.
    let e = rest.post_err("/v1/models/identity_float:predict", r#"{"inputs": [["a"]]}"#, 400).await;
    assert_eq!(
        e,
        "model 'identity_float' version 1: input 'x': element 0: expected a number for dtype float32, got \"a\""
    );
    let e = rest.post_err("/v1/models/identity_float:predict", r#"{"inputs": [[1e300]]}"#, 400).await;
    assert_eq!(e, "model 'identity_float' version 1: input 'x': element 0: value 1e300 is out of range for float32");
    // Shape errors: same text as the core (gRPC).
    let seven = vec![vec![0.5f32; 7]];
    let e = rest.post_err(p, &json!({"instances": seven}).to_string(), 400).await;
    let direct = rest.direct("numbers_classifier", vec![("x", f32_t(&[1, 7], &[0.5; 7]))]).await.unwrap_err();
    assert_eq!(e, direct);
    assert_eq!(
        e,
        "model 'numbers_classifier' version 1: input 'x' dimension 1 must be 8 (shape [-1, 8]), received shape [1, 7]"
    );
    let e = rest.post_err(p, r#"{"inputs": {"z": [[1.0]]}}"#, 400).await;
    assert_eq!(
        e,
        "model 'numbers_classifier' version 1 has no input named 'z'; its inputs are ['x' (float32 [-1, 8])]"
    );
    let e = rest.post_err("/v1/models/fixed_shape:predict", r#"{"inputs": {"b": [1]}}"#, 400).await;
    assert!(e.starts_with("model 'fixed_shape' version 1: missing input 'a' (float32 [2, 3])"), "{e}");
    let e = rest.post_err("/v1/models/fixed_shape:predict", r#"{"instances": [[1.0, 2.0, 3.0]]}"#, 400).await;
    assert!(
        e.contains("the model has 2 inputs ['a', 'b']; in the row format each instance must be a JSON object"),
        "{e}"
    );
}

/// One identity model's sample: (model, v2 datatype, 2x2 values as JSON).
fn dtype_samples() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("identity_float", "FP32", json!([[1.5, -2.25], [0.5, 100.0]])),
        ("identity_double", "FP64", json!([[1.5, -2.25], [1e300, 0.1]])),
        ("identity_float16", "FP16", json!([[1.5, -2.25], [0.5, 65504.0]])),
        ("identity_bfloat16", "BF16", json!([[1.5, -2.25], [0.5, 256.0]])),
        ("identity_int8", "INT8", json!([[-128, 127], [0, 5]])),
        ("identity_int16", "INT16", json!([[-32768, 32767], [0, 5]])),
        ("identity_int32", "INT32", json!([[-2147483648i64, 2147483647], [0, 5]])),
        ("identity_int64", "INT64", json!([[i64::MIN, i64::MAX], [0, -5]])),
        ("identity_uint8", "UINT8", json!([[0, 255], [1, 5]])),
        ("identity_uint16", "UINT16", json!([[0, 65535], [1, 5]])),
        ("identity_uint32", "UINT32", json!([[0, 4294967295u64], [1, 5]])),
        ("identity_uint64", "UINT64", json!([[0, u64::MAX], [1, 5]])),
        ("identity_bool", "BOOL", json!([[true, false], [false, true]])),
        ("identity_string", "BYTES", json!([["a", "héllo"], ["", "x y \"q\""]])),
    ]
}

#[tokio::test]
async fn every_dtype_round_trips_through_tf_and_v2() {
    let samples = dtype_samples();
    let names: Vec<&str> = samples.iter().map(|s| s.0).collect();
    let dir = repo(&names);
    let rest = Rest::repo(dir.path()).await;
    for (model, datatype, vals) in &samples {
        let flat: Vec<Value> = vals.as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().clone()).collect();
        // v2, flat and nested data.
        for data in [json!(flat), vals.clone()] {
            let body =
                json!({"id": "r1", "inputs": [{"name": "x", "shape": [2, 2], "datatype": datatype, "data": data}]});
            let (s, v) = rest.post_json(&format!("/v2/models/{model}/infer"), &body).await;
            assert_eq!(s, 200, "{model}: {v}");
            assert_eq!(
                v,
                json!({"model_name": model, "model_version": "1", "id": "r1",
                       "outputs": [{"name": "y", "datatype": datatype, "shape": [2, 2], "data": flat}]}),
                "{model}"
            );
        }
        // TF row and columnar.
        let (s, v) = rest.post_json(&format!("/v1/models/{model}:predict"), &json!({"instances": vals})).await;
        assert_eq!((s, &v), (200, &json!({"predictions": vals})), "{model}");
        let (s, v) = rest.post_json(&format!("/v1/models/{model}/versions/1:predict"), &json!({"inputs": vals})).await;
        assert_eq!((s, &v), (200, &json!({"outputs": vals})), "{model}");
    }
    // Range checks per dtype.
    let e = rest.post_err("/v1/models/identity_uint8:predict", r#"{"inputs": [[300]]}"#, 400).await;
    assert_eq!(e, "model 'identity_uint8' version 1: input 'x': element 0: value 300 is out of range for uint8");
    let e = rest.post_err("/v1/models/identity_int32:predict", r#"{"inputs": [[1, 2.5]]}"#, 400).await;
    assert_eq!(e, "model 'identity_int32' version 1: input 'x': element 1: value 2.5 is not an integer (dtype int32)");
    let e = rest.post_err("/v1/models/identity_bool:predict", r#"{"inputs": [[1]]}"#, 400).await;
    assert_eq!(
        e,
        "model 'identity_bool' version 1: input 'x': element 0: expected true or false for dtype bool, got 1"
    );
    let e = rest.post_err("/v1/models/identity_float16:predict", r#"{"inputs": [[70000.0]]}"#, 400).await;
    assert_eq!(
        e,
        "model 'identity_float16' version 1: input 'x': element 0: value 70000.0 is out of range for float16"
    );
    let body = r#"{"inputs":[{"name":"x","shape":[1,1],"datatype":"INT8","data":[-129]}]}"#;
    let e = rest.post_err("/v2/models/identity_int8/infer", body, 400).await;
    assert_eq!(e, "model 'identity_int8' version 1: input 'x': element 0: value -129 is out of range for int8");
}

#[tokio::test]
async fn v2_routes_and_errors() {
    let dir = repo(MODELS);
    let rest = Rest::repo(dir.path()).await;
    let (s, v) = rest.get_json("/v2").await;
    assert_eq!((s, v), (200, json!({"name": "maas", "version": env!("CARGO_PKG_VERSION"), "extensions": []})));
    assert_eq!(rest.get("/v2/health/live").await, (200, String::new()));
    assert_eq!(rest.get("/v2/health/ready").await, (200, String::new()));
    assert_eq!(rest.get("/v2/models/numbers_classifier/ready").await, (200, String::new()));
    assert_eq!(rest.get("/v2/models/numbers_classifier/versions/1/ready").await, (200, String::new()));
    let e = rest.get_err("/v2/models/numbers_classifier/versions/9/ready", 404).await;
    assert_eq!(e, "Servable not found for request: model 'numbers_classifier' has no version 9; its versions: [1]");
    let e = rest.get_err("/v2/models/nope/ready", 404).await;
    assert!(e.starts_with("Servable not found for request: model 'nope' is not served here"), "{e}");

    let want = json!({
        "name": "numbers_classifier", "versions": ["1"], "platform": "onnx_onnxv1",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
    });
    assert_eq!(rest.get_json("/v2/models/numbers_classifier").await, (200, want.clone()));
    assert_eq!(rest.get_json("/v2/models/numbers_classifier/versions/1").await, (200, want));
    let e = rest.get_err("/v2/models/nope", 404).await;
    assert!(e.starts_with("Servable not found for request: model 'nope'"), "{e}");
    let e = rest.get_err("/v2/models/numbers_classifier/versions/x1", 400).await;
    assert_eq!(e, "invalid model version 'x1': a version is a non-negative integer");

    // Inference equals the core's answer.
    let rows = classifier_rows(4);
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let want = rest.direct("numbers_classifier", vec![("x", f32_t(&[4, 8], &flat))]).await.unwrap();
    let body = json!({"inputs": [{"name": "x", "shape": [4, 8], "datatype": "FP32", "data": flat}]});
    let (s, v) = rest.post_json("/v2/models/numbers_classifier/versions/1/infer", &body).await;
    assert_eq!(s, 200, "{v}");
    assert!(v.get("id").is_none());
    assert_eq!(v["outputs"][0]["shape"], json!([4, 1]));
    assert_eq!(json_f32(&v["outputs"][0]["data"]), f32_vals(&want[0].1));

    // Output selection.
    let body = json!({"inputs": [
        {"name": "a", "shape": [2, 3], "datatype": "FP32", "data": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]},
        {"name": "b", "shape": [3], "datatype": "INT64", "data": [1, 2, 3], "parameters": {"x": 1}}],
        "outputs": [{"name": "b_out"}]});
    let (s, v) = rest.post_json("/v2/models/fixed_shape/infer", &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["outputs"], json!([{"name": "b_out", "datatype": "INT64", "shape": [3], "data": [1, 2, 3]}]));

    // Errors, with the core's (gRPC's) text where the core finds them.
    let infer = "/v2/models/numbers_classifier/infer";
    let e = rest.post_err(infer, "{", 400).await;
    assert!(e.starts_with("JSON Parse error: "), "{e}");
    let e = rest.post_err(infer, "{}", 400).await;
    assert_eq!(e, "the request needs \"inputs\": a JSON list of tensors");
    let body = r#"{"inputs":[{"name":"x","shape":[1,8],"datatype":"FP64","data":[1,2,3,4,5,6,7,8]}]}"#;
    let e = rest.post_err(infer, body, 400).await;
    let f64_t = Tensor::new(DType::F64, vec![1, 8], TensorData::Raw(Bytes::from(vec![0u8; 64]))).unwrap();
    assert_eq!(e, rest.direct("numbers_classifier", vec![("x", f64_t)]).await.unwrap_err());
    assert_eq!(e, "model 'numbers_classifier' version 1: input 'x' must have dtype float32, received float64");
    let body = r#"{"inputs":[{"name":"x","shape":[1,7],"datatype":"FP32","data":[1,2,3,4,5,6,7]}]}"#;
    let e = rest.post_err(infer, body, 400).await;
    assert_eq!(
        e,
        "model 'numbers_classifier' version 1: input 'x' dimension 1 must be 8 (shape [-1, 8]), received shape [1, 7]"
    );
    let body = r#"{"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","data":[1,2,3]}]}"#;
    let e = rest.post_err(infer, body, 400).await;
    assert_eq!(e, "model 'numbers_classifier' version 1: input 'x': shape [1, 8] needs 8 values, \"data\" has 3");
    let body = r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP8","data":[1]}]}"#;
    let e = rest.post_err(infer, body, 400).await;
    assert!(e.starts_with("model 'numbers_classifier' version 1: input 'x': datatype FP8 is not supported; supported datatypes: FP32, "), "{e}");
    let body = r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#;
    let e = rest.post_err(infer, body, 400).await;
    assert_eq!(
        e,
        "model 'numbers_classifier' version 1: input 'x': \"shape\" must be a list of non-negative integers, got [-1]"
    );
    let body = r#"{"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","data":[1,2,3,4,5,6,7,8]}],"outputs":[{"name":"q"}]}"#;
    let e = rest.post_err(infer, body, 400).await;
    assert!(e.starts_with("model 'numbers_classifier' version 1 has no output named 'q'"), "{e}");
    let body = r#"{"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","data":[1,2,3,4,5,6,7,"8"]}]}"#;
    let e = rest.post_err(infer, body, 400).await;
    assert_eq!(
        e,
        "model 'numbers_classifier' version 1: input 'x': element 7: expected a number for dtype float32, got \"8\""
    );
    let e = rest.post_err("/v2/models/nope/infer", r#"{"inputs":[]}"#, 404).await;
    assert!(e.starts_with("Servable not found for request: model 'nope'"), "{e}");
    assert_eq!(
        rest.get_err("/v2/models/numbers_classifier/infer", 405).await,
        "method GET is not allowed for /v2/models/numbers_classifier/infer"
    );
}

#[tokio::test]
async fn labels_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let model = std::fs::read(fixtures().join("numbers_classifier/1/model.onnx")).unwrap();
    let base = dir.path().join("nc");
    for v in [1, 2] {
        publish(&base, v, &model);
    }
    let labels = BTreeMap::from([("stable".to_string(), 1), ("canary".to_string(), 2)]);
    let cfg = ModelConfig { name: "nc".into(), base_path: base.into(), policy: VersionPolicy::All, labels };
    let rest = Rest::start(ModelSource::List(vec![cfg])).await;

    let (s, v) = rest.get_json("/v1/models/nc").await;
    assert_eq!(s, 200);
    let versions: Vec<&str> =
        v["model_version_status"].as_array().unwrap().iter().map(|x| x["version"].as_str().unwrap()).collect();
    assert_eq!(versions, ["1", "2"]);
    // A label does not narrow the status (as in TF Serving and the gRPC front end).
    let (s, v2) = rest.get_json("/v1/models/nc/labels/stable").await;
    assert_eq!((s, v2["model_version_status"].as_array().unwrap().len()), (200, 2));
    let (s, v) = rest.get_json("/v1/models/nc/labels/stable/metadata").await;
    assert_eq!((s, &v["model_spec"]["version"]), (200, &json!("1")));
    let (s, v) = rest.get_json("/v1/models/nc/metadata").await;
    assert_eq!((s, &v["model_spec"]["version"]), (200, &json!("2")));
    let (s, v) = rest.get_json("/v1/models/nc/versions/1").await;
    assert_eq!((s, v["model_version_status"].as_array().unwrap().len()), (200, 1));

    let body = json!({"instances": classifier_rows(2)});
    for path in [
        "/v1/models/nc/labels/canary:predict",
        "/v1/models/nc/labels/stable:predict",
        "/v1/models/nc/versions/2:predict",
    ] {
        let (s, v) = rest.post_json(path, &body).await;
        assert_eq!(s, 200, "{path}: {v}");
        assert_eq!(v["predictions"].as_array().unwrap().len(), 2);
    }
    let e = rest.post_err("/v1/models/nc/labels/nope:predict", &body.to_string(), 400).await;
    assert_eq!(e, "Unrecognized servable version label: 'nope' for model 'nc'; its labels: ['canary', 'stable']");
    let e = rest.post_err("/v1/models/nc/versions/3:predict", &body.to_string(), 404).await;
    assert_eq!(e, "Servable not found for request: model 'nc' has no version 3; its versions: [1, 2]");

    let (s, v) = rest.get_json("/v2/models/nc").await;
    assert_eq!((s, &v["versions"]), (200, &json!(["1", "2"])));
    let body = json!({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": classifier_rows(1)}]});
    let (s, v) = rest.post_json("/v2/models/nc/versions/1/infer", &body).await;
    assert_eq!((s, &v["model_version"]), (200, &json!("1")), "{v}");
    let (s, v) = rest.post_json("/v2/models/nc/infer", &body).await;
    assert_eq!((s, &v["model_version"]), (200, &json!("2")), "{v}");
}

#[tokio::test]
async fn probes_with_a_broken_model() {
    let dir = repo(&["numbers_classifier", "broken"]);
    let rest = Rest::repo(dir.path()).await;
    assert_eq!(rest.get("/healthz").await, (200, "ok\n".to_string()));
    let (s, b) = rest.get("/readyz").await;
    assert_eq!((s, b.as_str()), (503, "not ready: no AVAILABLE version for model(s): broken\n"));
    let e = rest.get_err("/v2/health/ready", 400).await;
    assert_eq!(e, "no AVAILABLE version for model(s): broken");
    assert_eq!(rest.get("/v2/health/live").await, (200, String::new()));
    let e = rest.get_err("/v2/models/broken/ready", 400).await;
    assert!(e.starts_with("model 'broken' has no available version: version 1 is END (failed to load: "), "{e}");
    assert_eq!(rest.get("/v2/models/numbers_classifier/ready").await, (200, String::new()));

    let (s, v) = rest.get_json("/v1/models/broken").await;
    assert_eq!(s, 200, "TF Serving answers 200 for a known model whatever its state");
    let st = &v["model_version_status"][0];
    assert_eq!(
        (&st["version"], &st["state"], &st["status"]["error_code"]),
        (&json!("1"), &json!("END"), &json!("INVALID_ARGUMENT"))
    );
    assert!(st["status"]["error_message"].as_str().unwrap().contains("ONNX Runtime could not load"), "{v}");
    let e = rest.post_err("/v1/models/broken:predict", r#"{"instances": [1]}"#, 503).await;
    assert!(e.starts_with("model 'broken' has no available version"), "{e}");
    let e = rest.post_err("/v2/models/broken/infer", r#"{"inputs": []}"#, 503).await;
    assert!(e.starts_with("model 'broken' has no available version"), "{e}");
}

#[tokio::test]
async fn rest_and_grpc_agree() {
    use maas::proto::tensorflow::DataType;
    let dir = repo(&["numbers_classifier", "identity_float"]);
    let grpc = TestServer::ready(test_config(dir.path())).await;
    let rest = Rest::repo(dir.path()).await;
    let mut client = grpc.predict_client().await;

    let input = classifier_input(5, 3);
    let rows: Vec<Vec<f32>> = input.float_val.chunks(8).map(<[f32]>::to_vec).collect();
    let g =
        client.predict(predict_req("numbers_classifier", None, vec![("x", input.clone())])).await.unwrap().into_inner();
    let want = g.outputs["y"].float_val.clone();
    assert_eq!(want.len(), 5);
    let (s, v) = rest.post_json("/v1/models/numbers_classifier:predict", &json!({"instances": rows})).await;
    assert_eq!(s, 200);
    assert_eq!(json_f32(&v["predictions"]), want);
    let body = json!({"inputs": [{"name": "x", "shape": [5, 8], "datatype": "FP32", "data": input.float_val}]});
    let (s, v) = rest.post_json("/v2/models/numbers_classifier/infer", &body).await;
    assert_eq!(s, 200);
    assert_eq!(json_f32(&v["outputs"][0]["data"]), want);

    // Same messages for the same mistakes.
    let bad_shape = f32_tensor(&[1, 7], vec![0.5; 7]);
    let g = client.predict(predict_req("numbers_classifier", None, vec![("x", bad_shape)])).await.unwrap_err();
    let e = rest
        .post_err("/v1/models/numbers_classifier:predict", &json!({"inputs": [vec![0.5f32; 7]]}).to_string(), 400)
        .await;
    assert_eq!(e, g.message());
    let body = json!({"inputs": [{"name": "x", "shape": [1, 7], "datatype": "FP32", "data": vec![0.5f32; 7]}]});
    let e = rest.post_err("/v2/models/numbers_classifier/infer", &body.to_string(), 400).await;
    assert_eq!(e, g.message());

    let wrong_dtype = maas::proto::tensorflow::TensorProto {
        dtype: DataType::DtDouble as i32,
        tensor_shape: shape(&[1, 2]),
        double_val: vec![1.0, 2.0],
        ..Default::default()
    };
    let g = client.predict(predict_req("identity_float", None, vec![("x", wrong_dtype)])).await.unwrap_err();
    let body = r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP64","data":[1.0,2.0]}]}"#;
    assert_eq!(rest.post_err("/v2/models/identity_float/infer", body, 400).await, g.message());

    let g = client.predict(predict_req("nope", None, vec![("x", f32_tensor(&[1], vec![1.0]))])).await.unwrap_err();
    assert_eq!(g.code(), tonic::Code::NotFound);
    assert_eq!(rest.post_err("/v1/models/nope:predict", r#"{"inputs": [1.0]}"#, 404).await, g.message());
    assert_eq!(rest.post_err("/v2/models/nope/infer", r#"{"inputs": []}"#, 404).await, g.message());
    grpc.stop().await.unwrap();
}
