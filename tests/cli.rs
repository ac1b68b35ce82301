//! The real `maas` binary: flags, the missing-library error, and SIGTERM.
mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn maas() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_maas"));
    c.env_remove("ORT_DYLIB_PATH").env("RUST_LOG", "info,ort=warn");
    c
}

#[test]
fn help_documents_every_flag() {
    let out = maas().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--model-repository",
        "--port",
        "--host",
        "--ort-lib",
        "--execution-providers",
        "--device-id",
        "--allow-cpu-fallback",
        "--session-pool-size",
        "--intra-op-threads",
        "--inter-op-threads",
        "--max-message-size-bytes",
        "--enable-serialization-as-tensor-content",
        "--drain-timeout-seconds",
        "--num-load-threads",
        "--rest-api-port",
        "--max-in-flight-requests",
        "--model-config-file",
        "--model-config-file-poll-wait-seconds",
        "--model-name",
        "--model-base-path",
        "--file-system-poll-wait-seconds",
        "--max-num-load-retries",
        "--load-retry-interval-micros",
        "--enable-model-warmup",
        "--allow-version-labels-for-unavailable-models",
        "--reload-config-timeout-seconds",
        "--log-format",
        "--access-log",
        "--model-cache-dir",
        "--object-store-metadata-credentials",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn missing_library_says_what_to_run() {
    let out = maas()
        .args(["serve", "--model-repository"])
        .arg(bundled())
        .args(["--port", "0", "--ort-lib", "/nonexistent/libonnxruntime.so.1.31.1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(
            "maas: error: could not load ONNX Runtime from /nonexistent/libonnxruntime.so.1.31.1 (given by --ort-lib)"
        ),
        "{err}"
    );
    assert!(
        err.contains("Run `./scripts/setup.sh` to fetch onnxruntime==1.31.1 from PyPI into .ort/, or pass --ort-lib"),
        "{err}"
    );

    // the same through ORT_DYLIB_PATH
    let out = maas()
        .env("ORT_DYLIB_PATH", "/also/missing.so")
        .args(["serve", "--model-repository"])
        .arg(bundled())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("could not load ONNX Runtime from /also/missing.so (given by ORT_DYLIB_PATH)"), "{err}");
}

#[test]
fn tf_serving_underscore_flags_are_accepted() {
    // Parsed fine: the run then fails on the (deliberately) missing repository, not on the flags.
    let out = maas()
        .args([
            "serve",
            "--model_repository",
            "/nonexistent-repo",
            "--enable_serialization_as_tensor_content",
            "--tensorflow_intra_op_parallelism",
            "2",
            "--tensorflow_inter_op_parallelism",
            "1",
            "--num_load_threads",
            "2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("model repository /nonexistent-repo is not a directory"), "{err}");

    let out = maas().args(["serve", "--model-repository", ".", "--execution-providers", "gpu"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("invalid value 'gpu'") && err.contains("cpu, cuda, tensorrt"), "{err}");
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let mut child = maas()
        .args(["serve", "--host", "127.0.0.1", "--port", "0", "--rest-api-port", "0", "--model-repository"])
        .arg(bundled())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut child = KillOnDrop(Some(child));
    let child = child.0.as_mut().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut addr = None;
    let mut serving = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline && !(addr.is_some() && serving) {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
            break;
        };
        if let Some(i) = line.find("addr=") {
            addr = line[i + 5..].split_whitespace().next().map(|s| s.to_string());
        }
        serving |= line.contains("initial models loaded; serving");
    }
    let addr = addr.expect("the server logs its address");
    assert!(serving, "models loaded");
    // a real request through the binary
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = maas::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient::connect(
            format!("http://{addr}"),
        )
        .await
        .unwrap();
        let r = c
            .predict(predict_req("numbers_classifier", None, vec![("x", classifier_input(2, 3))]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.outputs["y"].float_val.len(), 2);
    });
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let mut status = None;
    for _ in 0..200 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("maas did not exit within 10 s of SIGTERM")
    });
    assert_eq!(status.code(), Some(0));
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(rest.iter().any(|l| l.contains("received SIGTERM")), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("server stopped")), "{rest:?}");
}

/// Kills the server if the test fails before it exits.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
