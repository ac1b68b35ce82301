//! `maas status` (the real binary) against a running server: the table, `--json`, `--model`, and the
//! errors for an unreachable server and an unknown model.
mod common;

use common::*;
use serde_json::Value;

async fn status(args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_maas")).arg("status").args(args).output().await.unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for m in ["numbers_classifier", "identity_float"] {
        let to = dir.path().join(m).join("1");
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(fixtures().join(m).join("1/model.onnx"), to.join("model.onnx")).unwrap();
    }
    // A second version of numbers_classifier, both served.
    let v2 = dir.path().join("numbers_classifier/2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::copy(fixtures().join("numbers_classifier/1/model.onnx"), v2.join("model.onnx")).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_models_states_and_counts() {
    let repo = repo();
    let mut cfg = test_config(repo.path());
    cfg.source = maas::manager::ModelSource::List(vec![
        maas::repository::config::ModelConfig {
            name: "numbers_classifier".into(),
            base_path: repo.path().join("numbers_classifier").into(),
            policy: maas::repository::policy::VersionPolicy::All,
            labels: Default::default(),
        },
        maas::repository::config::ModelConfig {
            name: "identity_float".into(),
            base_path: repo.path().join("identity_float").into(),
            policy: Default::default(),
            labels: Default::default(),
        },
    ]);
    let server = TestServer::ready(cfg).await;
    wait_for(30, "both versions AVAILABLE", || async {
        (available(&server, "numbers_classifier").await.len() == 2).then_some(())
    })
    .await;

    // N = 5 successes on version 2 (3 over gRPC, 2 over REST), 1 failure, nothing on version 1.
    let mut c = server.predict_client().await;
    for i in 0..3 {
        c.predict(predict_req("numbers_classifier", Some(2), vec![("x", classifier_input(2, i))])).await.unwrap();
    }
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let r = http
            .post(format!("http://{}/v1/models/numbers_classifier/versions/2:predict", server.rest_addr))
            .body(r#"{"instances": [[1, 2, 3, 4, 5, 6, 7, 8]]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let bad = predict_req("numbers_classifier", Some(2), vec![("x", f32_tensor(&[1, 3], vec![1.0, 2.0, 3.0]))]);
    assert_eq!(c.predict(bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    let addr = server.addr.to_string();
    let rest = server.rest_addr.to_string();
    let (code, out, err) = status(&["--address", &addr, "--rest-address", &rest]).await;
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        lines[0],
        ["MODEL", "VERSION", "STATE", "PROVIDERS", "LOAD_TIME", "REQUESTS", "FAILED", "MESSAGE"],
        "{out}"
    );
    let row = |model: &str, version: &str| -> Vec<&str> {
        lines
            .iter()
            .find(|l| l.first() == Some(&model) && l.get(1) == Some(&version))
            .unwrap_or_else(|| panic!("no row for {model} {version}:\n{out}"))
            .clone()
    };
    // Providers and load time from the REST status route.
    let v2 = row("numbers_classifier", "2");
    assert_eq!((v2[2], v2[3], v2[5], v2[6], v2[7]), ("AVAILABLE", "CPUExecutionProvider", "6", "1", "-"), "{out}");
    assert!(v2[4].ends_with('s') && v2[4].trim_end_matches('s').parse::<f64>().is_ok(), "{out}");
    let v1 = row("numbers_classifier", "1");
    assert_eq!((v1[2], v1[5], v1[6]), ("AVAILABLE", "0", "0"), "{out}");
    let f = row("identity_float", "1");
    assert_eq!((f[2], f[5]), ("AVAILABLE", "0"), "{out}");
    assert_eq!(lines.len(), 4, "{out}");

    let (code, out, err) = status(&["--address", &addr, "--rest-address", &rest, "--json"]).await;
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    assert_eq!(v["address"], addr.as_str());
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 3, "{out}");
    let get = |model: &str, version: i64| {
        models.iter().find(|m| m["model"] == model && m["version"] == version).unwrap_or_else(|| panic!("{out}"))
    };
    let n2 = get("numbers_classifier", 2);
    assert_eq!(n2["state"], "AVAILABLE");
    assert_eq!(v["rest_details"], true);
    assert_eq!(n2["providers"], serde_json::json!(["CPUExecutionProvider"]));
    assert!(n2["load_seconds"].as_f64().unwrap() >= 0.0, "{out}");
    assert_eq!(
        (n2["successes"].as_u64(), n2["failures"].as_u64(), n2["requests"].as_u64()),
        (Some(5), Some(1), Some(6))
    );
    assert_eq!(n2["executions"].as_u64(), Some(5));
    assert!(n2["last_inference_ms"].as_u64().unwrap() > 0);
    assert_eq!(get("numbers_classifier", 1)["requests"].as_u64(), Some(0));
    assert_eq!(get("identity_float", 1)["requests"].as_u64(), Some(0));

    // No REST port to ask: providers and load time are unknown, the rest is the same.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (code, out, err) = status(&["--address", &addr, "--rest-address", &closed, "--json"]).await;
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rest_details"], false);
    let n2 = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "numbers_classifier" && m["version"] == 2)
        .unwrap();
    assert!(n2["providers"].is_null() && n2["load_seconds"].is_null(), "{out}");
    assert_eq!(n2["requests"].as_u64(), Some(6));
    let (code, out, _) = status(&["--address", &addr, "--rest-address", &closed]).await;
    assert_eq!(code, Some(0));
    let line = out.lines().find(|l| l.starts_with("numbers_classifier  2")).unwrap_or_else(|| panic!("{out}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((cols[3], cols[4], cols[5]), ("-", "-", "6"), "{out}");

    // --model: just that model's versions.
    let (code, out, err) = status(&["--address", &addr, "--json", "--model", "identity_float"]).await;
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = v["models"].as_array().unwrap().iter().map(|m| m["model"].as_str().unwrap()).collect();
    assert_eq!(names, ["identity_float"]);

    // An unknown model: exit 2, the models it does serve.
    let (code, out, err) = status(&["--address", &addr, "--model", "nope"]).await;
    assert_eq!((code, out.as_str()), (Some(2), ""));
    assert_eq!(
        err.trim_end(),
        format!(
            "maas status: error: model 'nope' is not served by {addr}; it serves: identity_float, numbers_classifier"
        )
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn unreachable_server_exits_2_naming_the_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let (code, out, err) = status(&["--address", &addr, "--timeout-seconds", "5"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(out, "");
    assert!(err.starts_with(&format!("maas status: error: cannot connect to {addr}: ")), "{err}");
    let (code, _, err) = status(&["--address", "not an address"]).await;
    assert_eq!(code, Some(2));
    assert!(err.starts_with("maas status: error: --address not an address is not HOST:PORT"), "{err}");
}
