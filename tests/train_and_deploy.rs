//! The train -> deploy -> predict loop: examples/train_and_deploy.py trains with scikit-learn,
//! exports with skl2onnx, publishes the next version into a running server's repository, waits
//! for it to be AVAILABLE and predicts through gRPC.
mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_publish_and_predict() {
    let python = repo_root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run ./scripts/setup.sh", python.display());
    let repo = tempfile::tempdir().unwrap();
    let m = repo.path().join("numbers_classifier");
    for v in [1, 2] {
        publish(&m, v, &std::fs::read(bundled().join(format!("numbers_classifier/{v}/model.onnx"))).unwrap());
    }
    let mut cfg = test_config(repo.path());
    cfg.manager.poll_interval = Some(Duration::from_millis(200));
    let server = TestServer::ready(cfg).await;
    assert_eq!(available(&server, "numbers_classifier").await, vec![2]);

    let out = tokio::process::Command::new(&python)
        .arg(repo_root().join("examples/train_and_deploy.py"))
        .args(["--json", "--address", &server.addr.to_string(), "--repository"])
        .arg(repo.path())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "train_and_deploy.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], 3);
    assert_eq!(v["served_version"], 3);
    assert!(v["accuracy"].as_f64().unwrap() > 0.85, "{v}");
    assert!(v["max_abs_diff"].as_f64().unwrap() < 1e-4, "{v}");
    wait_for(10, "version 2 to retire", || async {
        (available(&server, "numbers_classifier").await == vec![3]).then_some(())
    })
    .await;
}
