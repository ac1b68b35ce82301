//! Cross-language: NVIDIA's official Triton Python client (tritonclient from PyPI) against maas's
//! KServe v2 gRPC and REST front ends.
mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_triton_client_over_grpc() {
    let python = repo_root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run ./scripts/setup.sh", python.display());
    let repo = tempfile::tempdir().unwrap();
    for (model, from) in [
        ("numbers_classifier", bundled()),
        ("identity_string", bundled()),
        ("identity_float16", fixtures()),
        ("identity_int64", fixtures()),
    ] {
        for entry in std::fs::read_dir(from.join(model)).unwrap() {
            let v = entry.unwrap().file_name().to_string_lossy().parse::<i64>().unwrap();
            publish(&repo.path().join(model), v, &std::fs::read(from.join(format!("{model}/{v}/model.onnx"))).unwrap());
        }
    }
    let server = TestServer::ready(test_config(repo.path())).await;
    let out = tokio::process::Command::new(&python)
        .arg(repo_root().join("tests/python/triton_client.py"))
        .args(["--grpc-url", &server.addr.to_string(), "--http-url", &server.rest_addr.to_string()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "triton_client.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["grpc_models"],
        serde_json::json!(["identity_float16", "identity_int64", "identity_string", "numbers_classifier"])
    );
    // the same probabilities as the TF Serving front end gives for that input
    let x: Vec<f32> = (0..24).map(|i| ((i % 5) as f32 - 2.0) / 2.0).collect();
    let tf = server
        .predict_client()
        .await
        .predict(predict_req("numbers_classifier", None, vec![("x", f32_tensor(&[3, 8], x))]))
        .await;
    let tf = tf.unwrap().into_inner().outputs["y"].float_val.clone();
    let py: Vec<f32> = serde_json::from_value(v["grpc_probabilities"].clone()).unwrap();
    assert_eq!(py, tf);
    // and through HTTP/JSON (KServe v2 REST on the server's REST port)
    let http: Vec<f32> = serde_json::from_value(v["http_probabilities"].clone()).unwrap();
    assert_eq!(http, tf);
}
