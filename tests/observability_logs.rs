//! Request ids (`x-request-id`) on gRPC and REST, and the real binary's `--log-format json
//! --access-log` output: every line is JSON, access lines carry what they should and never tensor
//! values or credentials.
mod common;

use common::*;
use maas::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use maas::proto::inference::model_infer_request::InferInputTensor;
use maas::proto::inference::{InferTensorContents, ModelInferRequest};
use maas::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient;
use maas::proto::tensorflow::{DataType, TensorProto};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tonic::transport::Channel;

/// A float that appears nowhere else, sent as tensor data.
const FLOAT: f32 = 12345.678;
/// A string tensor element that appears nowhere else.
const STRING: &str = "tensor-secret-Zq81x";
/// A credential header value that must never be logged.
const TOKEN: &str = "Bearer credential-secret-Kp42w";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A repository with the models these tests use.
fn small_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for m in ["numbers_classifier", "identity_float", "identity_string"] {
        let to = dir.path().join(m).join("1");
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(fixtures().join(m).join("1/model.onnx"), to.join("model.onnx")).unwrap();
    }
    dir
}

fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn with_id<T>(msg: T, id: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(id) = id {
        r.metadata_mut().insert("x-request-id", id.parse().unwrap());
    }
    r
}

fn id_of(m: &tonic::metadata::MetadataMap) -> String {
    m.get("x-request-id").expect("x-request-id in the response metadata").to_str().unwrap().to_string()
}

fn float_req(model: &str) -> maas::proto::tensorflow::serving::PredictRequest {
    predict_req(model, None, vec![("x", f32_tensor(&[1, 2], vec![FLOAT, 1.5]))])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_request_id_round_trip() {
    let repo = small_repo();
    let server = TestServer::ready(test_config(repo.path())).await;
    let mut tf = PredictionServiceClient::new(server.channel().await);
    let mut v2 = GrpcInferenceServiceClient::new(server.channel().await);

    // Given: echoed in the initial metadata.
    let r = tf.predict(with_id(float_req("identity_float"), Some("client-id-1"))).await.unwrap();
    assert_eq!(id_of(r.metadata()), "client-id-1");
    // Missing: a new one, 32 hex digits, different each time.
    let a = id_of(tf.predict(with_id(float_req("identity_float"), None)).await.unwrap().metadata());
    let b = id_of(tf.predict(with_id(float_req("identity_float"), None)).await.unwrap().metadata());
    assert!(is_hex32(&a) && is_hex32(&b) && a != b, "{a} {b}");

    // On error statuses too.
    let e = tf.predict(with_id(float_req("no_such_model"), Some("err-id-2"))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert_eq!(id_of(e.metadata()), "err-id-2");
    let bad_input = predict_req("numbers_classifier", None, vec![("x", f32_tensor(&[1, 3], vec![1.0, 2.0, 3.0]))]);
    let e = tf.predict(with_id(bad_input, None)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(is_hex32(&id_of(e.metadata())));

    // Unusable ids are replaced: too long, a space, a non-ASCII byte.
    let long = "a".repeat(129);
    for bad in [long.as_str(), "has space", "tab\there"] {
        let r = tf.predict(with_id(float_req("identity_float"), Some(bad))).await.unwrap();
        let id = id_of(r.metadata());
        assert!(is_hex32(&id), "{bad:?} was replaced by {id}");
    }
    let ok128 = "b".repeat(128);
    let r = tf.predict(with_id(float_req("identity_float"), Some(&ok128))).await.unwrap();
    assert_eq!(id_of(r.metadata()), ok128);

    // KServe v2 gRPC: the transport id and the message id are separate things.
    let infer = ModelInferRequest {
        model_name: "identity_float".into(),
        id: "body-id-3".into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, 1],
            contents: Some(InferTensorContents { fp32_contents: vec![FLOAT], ..Default::default() }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let r = v2.model_infer(with_id(infer.clone(), Some("v2-id-4"))).await.unwrap();
    assert_eq!(id_of(r.metadata()), "v2-id-4");
    assert_eq!(r.get_ref().id, "body-id-3");
    let r = v2.model_infer(with_id(infer.clone(), None)).await.unwrap();
    assert!(is_hex32(&id_of(r.metadata())));
    assert_eq!(r.get_ref().id, "body-id-3");
    let mut missing = infer;
    missing.model_name = "absent".into();
    let e = v2.model_infer(with_id(missing, Some("v2-err-5"))).await.unwrap_err();
    assert_eq!((e.code(), id_of(e.metadata())), (tonic::Code::NotFound, "v2-err-5".to_string()));
    server.stop().await.unwrap();
}

/// A raw gRPC exchange over HTTP/2: the response's headers (initial metadata), body and trailers.
async fn raw_grpc(
    addr: std::net::SocketAddr,
    path: &str,
    msg: Vec<u8>,
    id: &str,
) -> (http::HeaderMap, bytes::Bytes, http::HeaderMap) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-request-id", id)
        .body(http_body_util::Full::new(bytes::Bytes::from(framed)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    (headers, collected.to_bytes(), trailers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_errors_carry_the_id_in_initial_metadata() {
    use prost::Message;
    let repo = small_repo();
    let server = TestServer::ready(test_config(repo.path())).await;
    let predict = "/tensorflow.serving.PredictionService/Predict";
    // An error is not trailers-only: initial metadata with the id, then the status in the trailers
    // (with the id again).
    let (headers, body, trailers) =
        raw_grpc(server.addr, predict, float_req("absent").encode_to_vec(), "raw-err-1").await;
    assert_eq!(headers["x-request-id"], "raw-err-1");
    assert!(headers.get("grpc-status").is_none(), "{headers:?}");
    assert!(body.is_empty());
    assert_eq!(trailers["grpc-status"], "5");
    assert!(trailers["grpc-message"].to_str().unwrap().contains("absent"), "{trailers:?}");
    assert_eq!(trailers["x-request-id"], "raw-err-1");
    // Success: the id in the initial metadata, the status in the trailers as usual.
    let (headers, body, trailers) =
        raw_grpc(server.addr, predict, float_req("identity_float").encode_to_vec(), "raw-ok-2").await;
    assert_eq!(headers["x-request-id"], "raw-ok-2");
    assert!(body.len() > 5);
    assert_eq!(trailers["grpc-status"], "0");
    // An unknown method (answered by tonic's router) too.
    let (headers, _, trailers) =
        raw_grpc(server.addr, "/tensorflow.serving.PredictionService/Nope", vec![], "raw-3").await;
    assert_eq!(headers["x-request-id"], "raw-3");
    assert_eq!(trailers["grpc-status"], "12");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_request_id_round_trip() {
    let repo = small_repo();
    let server = TestServer::ready(test_config(repo.path())).await;
    let base = format!("http://{}", server.rest_addr);
    let http = reqwest::Client::new();
    let header = |r: &reqwest::Response| r.headers()["x-request-id"].to_str().unwrap().to_string();
    let predict = json!({"instances": [[FLOAT, 1.5]]});

    let r = http
        .post(format!("{base}/v1/models/identity_float:predict"))
        .header("x-request-id", "rest-id-1")
        .json(&predict)
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), header(&r)), (200, "rest-id-1".to_string()));
    let r = http.post(format!("{base}/v1/models/identity_float:predict")).json(&predict).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(is_hex32(&header(&r)));

    // Errors: unknown model (404), bad body (400), no route (404), and the probes.
    let r = http
        .post(format!("{base}/v2/models/absent/infer"))
        .header("x-request-id", "rest-err-2")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), header(&r)), (400, "rest-err-2".to_string()));
    let r = http.get(format!("{base}/v1/models/absent")).header("x-request-id", "rest-err-3").send().await.unwrap();
    assert_eq!((r.status().as_u16(), header(&r)), (404, "rest-err-3".to_string()));
    let r = http.get(format!("{base}/no/such/route")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(is_hex32(&header(&r)));
    let r = http.get(format!("{base}/healthz")).header("x-request-id", "probe-4").send().await.unwrap();
    assert_eq!((r.status().as_u16(), header(&r)), (200, "probe-4".to_string()));

    // v2 REST: the body's "id" is echoed in the body, the header is the transport's.
    let body =
        json!({"id": "body-id-5", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [FLOAT]}]});
    let r = http
        .post(format!("{base}/v2/models/identity_float/infer"))
        .header("x-request-id", "rest-id-6")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r), "rest-id-6");
    assert_eq!(r.json::<Value>().await.unwrap()["id"], "body-id-5");

    // Replaced: overlong and non-printable ids.
    let bad_ids = [b"x".repeat(129), b"two words".to_vec(), b"tab\there".to_vec(), b"caf\xe9".to_vec()];
    for bad in bad_ids {
        let value = reqwest::header::HeaderValue::from_bytes(&bad).unwrap();
        let r = http.get(format!("{base}/healthz")).header("x-request-id", value).send().await.unwrap();
        assert!(is_hex32(&header(&r)), "{bad:?} -> {}", header(&r));
    }
    server.stop().await.unwrap();
}

/// The real binary, with its stderr and stdout read line by line.
struct Maas {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Maas {
    fn start(repo: &Path, rest_port: u16, rust_log: &str, extra: &[&str]) -> Maas {
        let mut child = Command::new(env!("CARGO_BIN_EXE_maas"))
            .env_remove("ORT_DYLIB_PATH")
            .env("RUST_LOG", rust_log)
            .args(["serve", "--host", "127.0.0.1", "--port", "0", "--rest-api-port", &rest_port.to_string()])
            .arg("--model-repository")
            .arg(repo)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        Maas { child, lines, stdout: Some(stdout) }
    }

    /// Waits for the JSON line whose message is `message`; all lines read so far go to `seen`.
    fn wait_for(&self, message: &str, seen: &mut Vec<String>) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let Ok(line) = self.lines.recv_timeout(Duration::from_secs(60)) else { break };
            seen.push(line.clone());
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if v["message"] == message {
                return v;
            }
        }
        panic!("no log line {message:?}; got {seen:#?}");
    }

    /// SIGTERM, wait for exit 0, and return every remaining stderr line and stdout.
    fn stop(mut self, seen: &mut Vec<String>) -> String {
        let kill = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(kill.success());
        let mut status = None;
        for _ in 0..400 {
            if let Some(s) = self.child.try_wait().unwrap() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let status = status.unwrap_or_else(|| {
            let _ = self.child.kill();
            panic!("maas did not exit within 20 s of SIGTERM")
        });
        assert_eq!(status.code(), Some(0));
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            seen.push(line);
        }
        self.stdout.take().unwrap().join().unwrap()
    }
}

impl Drop for Maas {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn grpc_traffic(addr: &str) {
    let ch = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut tf = PredictionServiceClient::new(ch.clone());
    let mut v2 = GrpcInferenceServiceClient::new(ch);
    let mut req = with_id(predict_req("numbers_classifier", None, vec![("x", classifier_input(3, 1))]), Some("g-ok"));
    req.metadata_mut().insert("traceparent", TRACEPARENT.parse().unwrap());
    req.metadata_mut().insert("authorization", TOKEN.parse().unwrap());
    tf.predict(req).await.unwrap();
    tf.predict(with_id(float_req("identity_float"), Some("g-float"))).await.unwrap();
    let s = TensorProto {
        dtype: DataType::DtString as i32,
        tensor_shape: shape(&[1, 1]),
        string_val: vec![bytes::Bytes::from_static(STRING.as_bytes())],
        ..Default::default()
    };
    tf.predict(with_id(predict_req("identity_string", None, vec![("x", s)]), Some("g-string"))).await.unwrap();
    let e = tf.predict(with_id(float_req("no_such_model"), Some("g-missing"))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let infer = ModelInferRequest {
        model_name: "identity_float".into(),
        model_version: "1".into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![2, 1],
            contents: Some(InferTensorContents { fp32_contents: vec![FLOAT, FLOAT], ..Default::default() }),
            ..Default::default()
        }],
        ..Default::default()
    };
    v2.model_infer(with_id(infer, Some("g-v2"))).await.unwrap();
}

async fn rest_traffic(base: &str) {
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/v1/models/identity_float/versions/1:predict"))
        .header("x-request-id", "r-float")
        .header("authorization", TOKEN)
        .json(&json!({"instances": [[FLOAT], [FLOAT]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let r = http
        .post(format!("{base}/v2/models/identity_string/infer"))
        .header("x-request-id", "r-string")
        .json(&json!({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1, 1], "data": [STRING]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // A bad request whose body holds the secrets: the error path must not log them either.
    let r = http
        .post(format!("{base}/v1/models/identity_float:predict"))
        .header("x-request-id", "r-bad")
        .body(format!("{{\"instances\": [[{FLOAT}], [\"{STRING}\"]]}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = http.get(format!("{base}/v1/models/absent")).header("x-request-id", "bad id!").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

/// The access line of request `id`.
fn access<'a>(lines: &'a [Value], id: &str) -> &'a Value {
    let found: Vec<&Value> = lines.iter().filter(|v| v["target"] == "maas::access" && v["request_id"] == id).collect();
    assert_eq!(found.len(), 1, "one access line for {id}: {found:#?}");
    found[0]
}

#[test]
fn json_logs_and_access_log_of_the_binary() {
    let repo = small_repo();
    let rest_port = free_port();
    let maas = Maas::start(repo.path(), rest_port, "info,ort=warn", &["--log-format", "json", "--access-log"]);
    let mut seen = Vec::new();
    let listening = maas.wait_for("maas gRPC server listening", &mut seen);
    let addr = listening["addr"].as_str().unwrap().to_string();
    maas.wait_for("initial models loaded; serving", &mut seen);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(grpc_traffic(&addr));
    rt.block_on(rest_traffic(&format!("http://127.0.0.1:{rest_port}")));
    let stdout = maas.stop(&mut seen);
    assert_eq!(stdout, "", "logs go to stderr");

    // Every line is one JSON object with the four fixed keys.
    let lines: Vec<Value> = seen
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for v in &lines {
        let ts = v["timestamp"].as_str().unwrap_or_else(|| panic!("no timestamp: {v}"));
        assert!(ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
        assert!(["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&v["level"].as_str().unwrap()), "{v}");
        assert!(v["target"].is_string() && v["message"].is_string(), "{v}");
    }

    // No tensor value, no credential, in any line.
    let all = seen.join("\n");
    for secret in ["12345.678", "12345.67", STRING, "credential-secret", "Bearer"] {
        assert!(!all.contains(secret), "the logs contain {secret:?}:\n{all}");
    }

    let g = access(&lines, "g-ok");
    assert_eq!(g["level"], "INFO");
    assert_eq!(g["message"], "access");
    assert_eq!(g["protocol"], "grpc");
    assert_eq!(g["api"], "Predict");
    assert_eq!(g["model"], "numbers_classifier");
    assert_eq!(g["version"], 1);
    assert_eq!(g["status"], "OK");
    assert_eq!(g["rows"], 3);
    assert_eq!(g["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(g["span_id"], "00f067aa0ba902b7");
    assert!(g["bytes_in"].as_u64().unwrap() > 3 * 8 * 4, "{g}");
    assert!(g["bytes_out"].as_u64().unwrap() > 0, "{g}");
    assert!(g["duration_ms"].as_f64().unwrap() > 0.0, "{g}");
    assert!(g["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{g}");
    assert!(g.get("authorization").is_none());

    let m = access(&lines, "g-missing");
    assert_eq!(
        (&m["status"], &m["model"], &m["api"]),
        (&json!("NOT_FOUND"), &json!("no_such_model"), &json!("Predict"))
    );
    assert!(m.get("version").is_none() && m.get("rows").is_none(), "{m}");
    let v = access(&lines, "g-v2");
    assert_eq!(
        (&v["api"], &v["model"], &v["version"], &v["rows"]),
        (&json!("ModelInfer"), &json!("identity_float"), &json!(1), &json!(2))
    );
    assert_eq!(access(&lines, "g-string")["model"], "identity_string");

    let r = access(&lines, "r-float");
    assert_eq!((&r["protocol"], &r["api"], &r["status"]), (&json!("rest"), &json!("predict"), &json!("200")));
    assert_eq!((&r["model"], &r["version"], &r["rows"]), (&json!("identity_float"), &json!(1), &json!(2)));
    assert!(r["bytes_in"].as_u64().unwrap() > 10 && r["bytes_out"].as_u64().unwrap() > 10, "{r}");
    let s = access(&lines, "r-string");
    assert_eq!((&s["api"], &s["model"], &s["status"]), (&json!("infer"), &json!("identity_string"), &json!("200")));
    let b = access(&lines, "r-bad");
    assert_eq!((&b["api"], &b["model"], &b["status"]), (&json!("predict"), &json!("identity_float"), &json!("400")));
    // The replaced id: a line in the request says so, with the new id (a request's other lines carry
    // its id like the access line).
    let replaced: Vec<&Value> =
        lines.iter().filter(|v| v["message"].as_str().unwrap_or("").contains("x-request-id was replaced")).collect();
    assert_eq!(replaced.len(), 1, "{replaced:#?}");
    let new_id = replaced[0]["request_id"].as_str().unwrap();
    assert!(is_hex32(new_id));
    assert_eq!(access(&lines, new_id)["status"], "404");
}

#[test]
fn access_log_is_off_by_default_and_text_is_the_default_format() {
    let repo = small_repo();
    let rest_port = free_port();
    let maas = Maas::start(repo.path(), rest_port, "info,ort=warn,maas::api=debug", &[]);
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !seen.iter().any(|l: &String| l.contains("initial models loaded; serving")) {
        assert!(std::time::Instant::now() < deadline, "{seen:#?}");
        seen.push(maas.lines.recv_timeout(Duration::from_secs(60)).unwrap());
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(rest_traffic(&format!("http://127.0.0.1:{rest_port}")));
    maas.stop(&mut seen);
    assert!(seen.iter().all(|l| !l.contains("maas::access")), "{seen:#?}");
    assert!(seen.iter().all(|l| serde_json::from_str::<Value>(l).is_err()), "text, not JSON: {seen:#?}");
    // Text lines of a request carry its span (here the REST error, logged at debug).
    assert!(
        seen.iter().any(|l| l.contains("DEBUG request{request_id=r-bad}: maas::api::rest: REST request failed")),
        "{seen:#?}"
    );
}
