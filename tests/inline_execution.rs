//! Inline execution: short runs on the I/O thread, long ones on blocking threads.
//!
//! The server runs on this test's single-threaded runtime, so a run that stalled the I/O thread would
//! hold every other request until it ended: the fast model's answers while a slow run is in flight
//! prove the slow one went the blocking way (asserted by ordering and counts, not by timing).
mod common;

use common::*;
use maas::proto::tensorflow::{DataType, TensorProto};
use serde_json::Value;
use std::path::Path;

fn model(repo: &Path, fixture: &str, name: &str, settings: &str) {
    let dir = repo.join(name).join("1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixtures().join(fixture).join("1/model.onnx"), dir.join("model.onnx")).unwrap();
    if !settings.is_empty() {
        std::fs::write(repo.join(name).join("maas.pbtxt"), settings).unwrap();
    }
}

async fn execution(server: &TestServer, model: &str) -> Value {
    let url = format!("http://{}/maas/v1/models/{model}", server.rest_addr);
    let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    v["versions"][0]["execution"].clone()
}

fn slow_input(rows: i64) -> TensorProto {
    let vals: Vec<f32> = (0..rows * 256).map(|i| ((i % 97) as f32 - 48.0) / 50.0).collect();
    TensorProto {
        dtype: DataType::DtFloat as i32,
        tensor_shape: shape(&[rows, 256]),
        float_val: vals,
        ..Default::default()
    }
}

#[tokio::test]
async fn short_runs_go_inline_long_ones_never_stall_the_io_thread() {
    let repo = tempfile::tempdir().unwrap();
    // A generous threshold: this is a debug build on a loaded machine; what is tested is the routing.
    model(repo.path(), "numbers_classifier", "fast", "inline_max_run_micros: 20000");
    model(repo.path(), "numbers_classifier", "fast_never", "inline_execution: \"never\"");
    model(repo.path(), "slow", "slow", "");
    let mut cfg = test_config(repo.path());
    cfg.manager.runtime.pool_size = 1;
    let server = TestServer::ready(cfg).await;
    let client = server.predict_client().await;
    let fast = |rows: usize, seed: usize| predict_req("fast", None, vec![("x", classifier_input(rows, seed))]);

    // The fast model becomes eligible after its first measured window (16 runs, warmup included).
    let reference = client.clone().predict(fast(1, 3)).await.unwrap().into_inner().outputs["y"].float_val.clone();
    for i in 0..20 {
        client.clone().predict(fast(1, i)).await.unwrap();
    }
    let ex = execution(&server, "fast").await;
    assert_eq!(ex["inline_execution"], "auto", "{ex}");
    assert_eq!(ex["inline_eligible"], true, "{ex}");
    assert_eq!(ex["largest_inline_request_bytes"], 32, "one row of 8 floats: {ex}");
    let inline_before = ex["inline_runs"].as_u64().unwrap();
    assert!(inline_before >= 1, "{ex}");
    // Answers are the same whichever way the run went.
    let again = client.clone().predict(fast(1, 3)).await.unwrap().into_inner().outputs["y"].float_val.clone();
    assert_eq!(again, reference);

    // A slow run is in flight on a blocking thread (it counts as started before it runs) ...
    let mut c = client.clone();
    let slow = tokio::spawn(async move { c.predict(predict_req("slow", None, vec![("x", slow_input(256))])).await });
    wait_for(30, "the slow run to start", || {
        let server = &server;
        async move { (execution(server, "slow").await["blocking_runs"] == 1).then_some(()) }
    })
    .await;
    // ... and 20 fast requests are answered, inline, before it ends.
    for i in 0..20 {
        client.clone().predict(fast(1, i)).await.unwrap();
    }
    assert!(!slow.is_finished(), "the slow run ended before 20 fast requests were answered");
    let out = slow.await.unwrap().unwrap().into_inner();
    assert_eq!(out.outputs["y"].tensor_shape.as_ref().unwrap().dim[0].size, 256);
    let ex = execution(&server, "fast").await;
    assert!(ex["inline_runs"].as_u64().unwrap() >= inline_before + 21, "{ex}");
    let slow_ex = execution(&server, "slow").await;
    assert_eq!((&slow_ex["inline_eligible"], &slow_ex["inline_runs"]), (&Value::from(false), &Value::from(0)));

    // A request larger than any measured short goes the blocking way, then small ones go inline again.
    let blocking_before = ex["blocking_runs"].as_u64().unwrap();
    let big = client.clone().predict(fast(20_000, 1)).await.unwrap().into_inner();
    assert_eq!(big.outputs["y"].float_val.len(), 20_000);
    let ex = execution(&server, "fast").await;
    assert_eq!(ex["too_large_for_inline"], 1, "{ex}");
    assert_eq!(ex["blocking_runs"].as_u64().unwrap(), blocking_before + 1, "{ex}");
    let inline_now = ex["inline_runs"].as_u64().unwrap();
    client.clone().predict(fast(1, 0)).await.unwrap();
    assert_eq!(execution(&server, "fast").await["inline_runs"].as_u64().unwrap(), inline_now + 1);

    // `inline_execution: "never"`: today's path for every run.
    for i in 0..30 {
        client.clone().predict(predict_req("fast_never", None, vec![("x", classifier_input(1, i))])).await.unwrap();
    }
    let ex = execution(&server, "fast_never").await;
    assert_eq!(ex["inline_execution"], "never");
    assert_eq!((ex["inline_runs"].as_u64(), ex["blocking_runs"].as_u64()), (Some(0), Some(30)), "{ex}");
    assert_eq!(ex["inline_eligible"], false);
    server.stop().await.unwrap();
}
