//! Cross-language: the README's Python grpcio client (examples/python_client.py) against a real server.
mod common;

use common::*;
#[allow(unused_imports)]
use maas::ServeConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_predicts() {
    let python = repo_root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run ./scripts/setup.sh (it creates .venv with grpcio)", python.display());
    let server = TestServer::ready(test_config(bundled())).await;
    let out = tokio::process::Command::new(&python)
        .arg(repo_root().join("examples/python_client.py"))
        .args(["--json", "--address", &server.addr.to_string()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "python client failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["states"]["2"], "AVAILABLE");
    assert_eq!(v["input_name"], "x");
    assert_eq!(v["output_name"], "y");
    assert_eq!(v["version"], 2);
    assert_eq!(v["signature_name"], "serving_default");

    // The same input through the Rust client gives the same probabilities.
    let rows: Vec<Vec<f32>> = serde_json::from_value(v["input"].clone()).unwrap();
    assert_eq!(rows.len(), 4);
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let rust = server
        .predict_client()
        .await
        .predict(predict_req("numbers_classifier", None, vec![("x", f32_tensor(&[4, 8], flat))]))
        .await
        .unwrap()
        .into_inner();
    let py: Vec<Vec<f32>> = serde_json::from_value(v["output"].clone()).unwrap();
    let py: Vec<f32> = py.into_iter().flatten().collect();
    assert_eq!(py, rust.outputs["y"].float_val);
}
