//! `maas bench` smoke tests: the real binary's `bench load` against a real server (TF and v2, a
//! request file, failing requests, an unknown model) and `bench inprocess`, checking the numbers in
//! its `--json` report.
mod common;

use common::*;
use maas::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use maas::proto::inference::ModelStatisticsRequest;
use serde_json::Value;
use std::process::Output;

async fn maas(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_maas"))
        .env_remove("ORT_DYLIB_PATH")
        .env("RUST_LOG", "warn")
        .args(args)
        .output()
        .await
        .unwrap()
}

/// Runs `maas bench ... --json`, returning the exit code and the parsed report.
async fn bench_json(args: &[&str]) -> (Option<i32>, Value) {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = maas(&all).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}); exit {:?}\nstdout: {stdout}\nstderr: {stderr}", out.status));
    (out.status.code(), report)
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path).and_then(Value::as_f64).unwrap_or_else(|| panic!("report has no number at {path}: {v:#}"))
}

/// The success count of numbers_classifier in the server's v2 statistics.
async fn successes(server: &TestServer) -> u64 {
    let mut c = GrpcInferenceServiceClient::new(server.channel().await);
    let stats = c
        .model_statistics(ModelStatisticsRequest { name: "numbers_classifier".into(), version: String::new() })
        .await
        .unwrap()
        .into_inner();
    stats.model_stats.iter().filter_map(|m| m.inference_stats.as_ref()?.success.as_ref()).map(|s| s.count).sum()
}

/// Checks the fields every successful report has.
fn check_ok(code: Option<i32>, r: &Value, concurrency: u64) {
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(r["errors"], 0, "{r:#}");
    assert_eq!(r["errors_by_code"], Value::Array(vec![]), "{r:#}");
    assert_eq!(r["concurrency"], concurrency, "{r:#}");
    let requests = f(r, "/requests");
    assert!(requests > 0.0, "{r:#}");
    let seconds = f(r, "/seconds");
    assert!((f(r, "/requests_per_second") - requests / seconds).abs() < 1e-6, "{r:#}");
    let (p50, p90, p99, max) =
        (f(r, "/latency_us/p50"), f(r, "/latency_us/p90"), f(r, "/latency_us/p99"), f(r, "/latency_us/max"));
    assert!(0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max, "{r:#}");
    // Closed loop: the counted requests' latencies fit in concurrency x (window + the longest one).
    let busy_us = requests * f(r, "/latency_us/mean");
    assert!(busy_us <= concurrency as f64 * (seconds * 1e6 + max) * 1.01, "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_over_tf_and_v2_reaches_the_server() {
    let server = TestServer::ready(test_config(fixtures())).await;
    let addr = server.addr.to_string();
    let pid = std::process::id().to_string();
    for (protocol, input) in [("tf", "x float32 [1, 8]"), ("v2", "x FP32 [1, 8]")] {
        let before = successes(&server).await;
        let (code, r) = bench_json(&[
            "load",
            "--address",
            &addr,
            "--model",
            "numbers_classifier",
            "--protocol",
            protocol,
            "--concurrency",
            "4",
            "--connections",
            "2",
            "--seconds",
            "2",
            "--warmup-seconds",
            "0.5",
            "--server-pid",
            &pid,
        ])
        .await;
        check_ok(code, &r, 4);
        assert_eq!(r["bench"], "load");
        assert_eq!(r["protocol"], protocol);
        assert_eq!(r["model"], "numbers_classifier");
        assert_eq!(r["connections"], 2);
        assert_eq!(r["rows"], 1);
        assert_eq!(r["inputs"], serde_json::json!([input]), "{r:#}");
        assert_eq!(f(&r, "/seconds"), 2.0);
        // The server (this test process) ran every request the bench counted, and more (warmup).
        let served = successes(&server).await - before;
        assert!(served as f64 > f(&r, "/requests"), "served {served}: {r:#}");
        assert_eq!(r["cpu"]["process"], "server");
        assert_eq!(r["cpu"]["pid"], std::process::id());
        assert!(f(&r, "/cpu/cpu_seconds") > 0.0, "{r:#}");
        assert!(f(&r, "/cpu/cpu_us_per_request") > 0.0, "{r:#}");
        assert!(f(&r, "/cpu/utilization") > 0.0, "{r:#}");
        // This process's threads block and wake for every request.
        assert!(f(&r, "/cpu/voluntary_context_switches") > 0.0, "{r:#}");
        assert!(r["cpu"]["involuntary_context_switches"].is_u64(), "{r:#}");
        assert!(f(&r, "/cpu/context_switches_per_request") > 0.0, "{r:#}");
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_from_a_text_format_request_file() {
    let server = TestServer::ready(test_config(fixtures())).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("request.pbtxt");
    std::fs::write(
        &file,
        r#"model_spec { name: "numbers_classifier" }
           inputs {
             key: "x"
             value {
               dtype: DT_FLOAT
               tensor_shape { dim { size: 2 } dim { size: 8 } }
               float_val: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1, 0, 1, 0, 1, 0, 1, 0]
             }
           }"#,
    )
    .unwrap();
    let addr = server.addr.to_string();
    let (code, r) = bench_json(&[
        "load",
        "--address",
        &addr,
        "--request-file",
        file.to_str().unwrap(),
        "--concurrency",
        "2",
        "--seconds",
        "1",
        "--warmup-seconds",
        "0",
    ])
    .await;
    check_ok(code, &r, 2);
    assert_eq!(r["model"], "numbers_classifier");
    assert_eq!(r["inputs"], serde_json::json!(["x float32 [2, 8]"]), "{r:#}");
    assert_eq!(r["rows"], Value::Null);
    assert_eq!(r["cpu"], Value::Null);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_requests_are_counted_and_fail_the_run() {
    let mut cfg = test_config(fixtures());
    cfg.manager.runtime.max_in_flight = 1;
    let server = TestServer::ready(cfg).await;
    let addr = server.addr.to_string();
    let (code, r) = bench_json(&[
        "load",
        "--address",
        &addr,
        "--model",
        "numbers_classifier",
        "--concurrency",
        "16",
        "--seconds",
        "1",
        "--warmup-seconds",
        "0",
    ])
    .await;
    assert_eq!(code, Some(1), "{r:#}");
    let errors = f(&r, "/errors");
    assert!(errors > 0.0, "{r:#}");
    let by_code = r["errors_by_code"].as_array().unwrap();
    assert_eq!(by_code.len(), 1, "{r:#}");
    assert_eq!(by_code[0]["code"], "RESOURCE_EXHAUSTED");
    assert_eq!(f(&by_code[0], "/count"), errors);
    let msg = by_code[0]["first_message"].as_str().unwrap();
    assert!(msg.contains("--max-in-flight-requests"), "{msg}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_or_no_server_is_a_precise_error() {
    let server = TestServer::ready(test_config(fixtures())).await;
    let addr = server.addr.to_string();
    for protocol in ["tf", "v2"] {
        let out = maas(&[
            "bench",
            "load",
            "--address",
            &addr,
            "--model",
            "no_such_model",
            "--protocol",
            protocol,
            "--seconds",
            "1",
        ])
        .await;
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "maas bench: error: cannot get the metadata of model 'no_such_model' from {addr}: NOT_FOUND: "
            )),
            "{err}"
        );
        assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    }
    server.stop().await.unwrap();

    // Nothing listens there any more.
    let out = maas(&["bench", "load", "--address", &addr, "--model", "numbers_classifier", "--seconds", "1"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("maas bench: error: cannot connect to {addr}: transport error")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inprocess_runs_the_model_on_onnx_runtime() {
    let model = fixtures().join("numbers_classifier/1/model.onnx");
    let (code, r) = bench_json(&[
        "inprocess",
        "--model-path",
        model.to_str().unwrap(),
        "--concurrency",
        "2",
        "--sessions",
        "2",
        "--rows",
        "4",
        "--seconds",
        "1",
        "--warmup-seconds",
        "0.2",
    ])
    .await;
    check_ok(code, &r, 2);
    assert_eq!(r["bench"], "inprocess");
    assert_eq!(r["model"], "numbers_classifier");
    assert_eq!(r["sessions"], 2);
    assert_eq!(r["inputs"], serde_json::json!(["x float32 [4, 8]"]), "{r:#}");
    assert_eq!(r["cpu"]["process"], "self");
    assert!(f(&r, "/cpu/cpu_seconds") > 0.0, "{r:#}");
    assert!(f(&r, "/cpu/cpu_us_per_request") > 0.0, "{r:#}");

    let out = maas(&["bench", "inprocess", "--model-path", "/nonexistent/model.onnx", "--seconds", "1"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("maas bench: error: --model-path /nonexistent/model.onnx is not a file"), "{err}");
}
