//! Status as TF Serving (error_message "" whenever error_code is OK, in gRPC and REST), and the
//! details in maas's own route `GET /maas/v1/models/{model}`.
mod common;

use common::*;
use maas::proto::tensorflow::serving::model_version_status::State;
use maas::runtime::BatchingConfig;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

fn copy_model(repo: &Path, name: &str) {
    let dir = repo.join(name).join("1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixtures().join(name).join("1/model.onnx"), dir.join("model.onnx")).unwrap();
}

async fn get(server: &TestServer, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("http://{}{path}", server.rest_addr)).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_versions_have_an_empty_error_message_and_details_in_the_route() {
    let repo = tempfile::tempdir().unwrap();
    copy_model(repo.path(), "numbers_classifier");
    copy_model(repo.path(), "broken");
    let mut cfg = test_config(repo.path());
    cfg.manager.runtime.pool_size = 2;
    cfg.manager.max_load_retries = 0;
    let server = TestServer::ready(cfg).await;

    // gRPC GetModelStatus and REST /v1/models/{m}: OK and "".
    let states = version_states(&server, "numbers_classifier").await;
    assert_eq!(states, vec![(1, State::Available as i32, 0, String::new())]);
    let (s, v) = get(&server, "/v1/models/numbers_classifier").await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]})
    );

    // The route: what it runs on, how it was loaded.
    let (s, mut v) = get(&server, "/maas/v1/models/numbers_classifier").await;
    assert_eq!(s, 200, "{v}");
    let ms = v["versions"][0].as_object_mut().unwrap().remove("load_time_ms").unwrap();
    assert!(ms.as_u64().is_some(), "load_time_ms is a number of milliseconds: {ms}");
    // Measured, so only its form here (tests/shared_weights.rs checks the numbers); this model's
    // weights are too small to share.
    let mut memory = v["versions"][0].as_object_mut().unwrap().remove("memory").unwrap();
    let bytes = memory.as_object_mut().unwrap().remove("bytes").unwrap();
    assert!(bytes.as_u64().is_some(), "memory.bytes is a number of bytes: {bytes}");
    assert_eq!(
        memory,
        json!({"measured_as": "rss_delta_across_load", "weights_shared": false, "shared_weight_bytes": 0})
    );
    // Where runs go: two warmup runs (one per session) measured, no decision yet, nothing served.
    let mut ex = v["versions"][0].as_object_mut().unwrap().remove("execution").unwrap();
    let largest = ex.as_object_mut().unwrap().remove("largest_inline_request_bytes").unwrap();
    assert!(largest == json!(0) || largest == json!(32), "one row of 8 floats, if measured short: {largest}");
    assert_eq!(
        ex,
        json!({"inline_execution": "auto", "inline_max_run_micros": 50, "inline_eligible": false,
               "inline_runs": 0, "blocking_runs": 0, "too_large_for_inline": 0})
    );
    assert_eq!(
        v,
        json!({"model": "numbers_classifier", "problem": null, "versions": [{
            "version": 1,
            "state": "AVAILABLE",
            "error_code": "OK",
            "error_message": "",
            "detail": null,
            "load_error": null,
            "execution_providers": ["CPUExecutionProvider"],
            "provider_fallback": null,
            "sessions": 2,
            "batching": null,
            "warmup": {"kind": "synthesized"},
            "optimization": null,
        }]})
    );

    // A version that failed: the error in both places.
    let states = version_states(&server, "broken").await;
    assert_eq!(states[0].2, tonic::Code::InvalidArgument as i32);
    let (s, v) = get(&server, "/maas/v1/models/broken").await;
    assert_eq!(s, 200, "{v}");
    let b = &v["versions"][0];
    assert_eq!((&b["state"], &b["error_code"]), (&json!("END"), &json!("INVALID_ARGUMENT")), "{v}");
    assert_eq!(b["error_message"], json!(states[0].3));
    assert_eq!(b["load_error"], json!(states[0].3));
    assert!(states[0].3.starts_with("ONNX Runtime could not load "), "{}", states[0].3);
    assert_eq!((&b["execution_providers"], &b["sessions"], &b["warmup"]), (&Value::Null, &Value::Null, &Value::Null));

    // An unknown model: 404 with TF Serving's error body.
    let (s, v) = get(&server, "/maas/v1/models/nope").await;
    assert_eq!(
        (s, v),
        (
            404,
            json!({"error": "Servable not found for request: model 'nope' is not served here; served models: [broken, numbers_classifier]"})
        )
    );

    // A retired version: END, OK, "" in TF status; the route says why.
    std::fs::remove_dir_all(repo.path().join("numbers_classifier/1")).unwrap();
    let dir = repo.path().join("numbers_classifier/.tmp");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixtures().join("numbers_classifier/1/model.onnx"), dir.join("model.onnx")).unwrap();
    std::fs::rename(&dir, repo.path().join("numbers_classifier/2")).unwrap();
    wait_for(10, "version 1 to be unloaded", || async {
        let s = version_states(&server, "numbers_classifier").await;
        s.contains(&(1, State::End as i32, 0, String::new())).then_some(())
    })
    .await;
    let (_, v) = get(&server, "/maas/v1/models/numbers_classifier").await;
    let v1 = v["versions"].as_array().unwrap().iter().find(|x| x["version"] == 1).unwrap().clone();
    assert_eq!((&v1["state"], &v1["error_message"], &v1["detail"]), (&json!("END"), &json!(""), &json!("unloaded")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_shows_batching_and_disabled_warmup() {
    let repo = tempfile::tempdir().unwrap();
    copy_model(repo.path(), "numbers_classifier");
    let mut cfg = test_config(repo.path());
    cfg.manager.runtime.pool_size = 1;
    cfg.manager.enable_warmup = false;
    cfg.manager.runtime.batching = Some(BatchingConfig {
        max_batch_size: 16,
        batch_timeout: Duration::from_micros(500),
        allowed_batch_sizes: vec![4, 16],
        ..BatchingConfig::default()
    });
    let server = TestServer::ready(cfg).await;
    let (s, v) = get(&server, "/maas/v1/models/numbers_classifier").await;
    assert_eq!(s, 200, "{v}");
    let version = &v["versions"][0];
    assert_eq!(
        version["batching"],
        json!({
            "max_batch_size": 16,
            "batch_timeout_micros": 500,
            "max_enqueued_batches": 100,
            "num_batch_threads": 1,
            "allowed_batch_sizes": [4, 16],
            "pad_variable_length_inputs": false,
        })
    );
    assert_eq!(version["warmup"], json!({"kind": "disabled"}));
    assert_eq!(version["sessions"], 1);
}
