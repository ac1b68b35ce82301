//! `maas optimize` through the real binary on small generated models (scripts/gen_optimize_models.py):
//! exit codes and messages, the guard refusing a broken candidate and accepting an identical one,
//! recorded warmup requests and .npy files as guard inputs, --dry-run, a model with external data
//! published atomically into the repository of a running server that polls it every 20 ms, and the
//! optimize -> canary -> stable example against a running server.
mod common;

use common::*;
use maas::proto::tensorflow::serving::{prediction_log::LogType, PredictLog, PredictionLog};
use maas::proto::tensorflow::{DataType, TensorProto};
use maas::repository::{config::ModelConfig, policy::VersionPolicy, uri::Location};
use prost::Message;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A directory's files and their sizes.
type Listing = Vec<(String, u64)>;

fn python() -> PathBuf {
    let p = repo_root().join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: run ./scripts/setup.sh", p.display());
    p
}

/// Generates the test models into `dir`.
fn gen(dir: &Path) {
    let out = Command::new(python()).arg(repo_root().join("scripts/gen_optimize_models.py")).arg(dir).output().unwrap();
    assert!(out.status.success(), "gen_optimize_models.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

fn maas() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_maas"));
    c.env_remove("ORT_DYLIB_PATH").env("RUST_LOG", "warn");
    c
}

/// Runs `maas optimize ARGS` and returns (exit status, stdout, stderr).
fn optimize(args: &[&str]) -> (i32, String, String) {
    let out = maas().arg("optimize").args(args).output().unwrap();
    let s = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code().unwrap_or(-1), s(out.stdout), s(out.stderr))
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn ids_tensor(rows: i64, seq: i64, seed: i64) -> TensorProto {
    TensorProto {
        dtype: DataType::DtInt64 as i32,
        tensor_shape: shape(&[rows, seq]),
        int64_val: (0..rows * seq).map(|i| (i * 37 + seed * 101) % 1000).collect(),
        ..Default::default()
    }
}

fn sha256(path: &Path) -> String {
    maas::optimize::provenance::sha256_file(path).unwrap()
}

#[test]
fn help_documents_every_flag() {
    let out = maas().args(["optimize", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--model-dir",
        "--from",
        "--to",
        "--graph",
        "--quantize",
        "--per-channel",
        "--embeddings",
        "--candidate",
        "--guard-inputs",
        "--guard-samples",
        "--guard-batch",
        "--guard-seq",
        "--min-cosine",
        "--dry-run",
        "--latency-seconds",
        "--seed",
        "--ort-lib",
        "--json",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    for value in ["- none:", "- basic:", "- extended:", "- int8-dynamic:"] {
        assert!(help.contains(value), "--help lacks {value}:\n{help}");
    }
}

#[test]
fn errors_exit_2_and_refusals_exit_1_and_neither_publishes() {
    let gen_dir = tempfile::tempdir().unwrap();
    gen(gen_dir.path());
    let text = gen_dir.path().join("text");
    let m = text.to_str().unwrap();
    let v1 = sha256(&text.join("1/model.onnx"));

    let (code, _, err) = optimize(&["--model-dir", "/nonexistent/model", "--from", "1"]);
    assert_eq!(code, 2);
    assert_eq!(
        err.trim_end(),
        "maas optimize: error: --model-dir /nonexistent/model is not a directory (expected REPO/MODEL holding \
         numbered versions)"
    );
    let (code, _, err) = optimize(&["--model-dir", m, "--from", "7"]);
    assert_eq!(
        (code, err.trim_end()),
        (2, format!("maas optimize: error: {m} has no version 7 (versions: 1)").as_str())
    );
    let (code, _, err) = optimize(&["--model-dir", m, "--from", "1", "--to", "1", "--quantize", "int8-dynamic"]);
    assert_eq!(code, 2);
    assert!(err.contains("--to 1: version 1 already exists"), "{err}");
    assert!(err.trim_end().ends_with("it was left untouched"), "{err}");
    let (code, _, err) = optimize(&["--model-dir", m, "--from", "1", "--graph", "none"]);
    assert_eq!(
        (code, err.trim_end()),
        (2, "maas optimize: error: nothing to do: --graph none without --quantize int8-dynamic or --candidate")
    );
    let (code, _, err) = optimize(&["--model-dir", m, "--from", "1", "--per-channel"]);
    assert_eq!(
        (code, err.trim_end()),
        (2, "maas optimize: error: --per-channel and --embeddings need --quantize int8-dynamic")
    );
    let identical = gen_dir.path().join("identical.onnx");
    let (code, _, err) = optimize(&[
        "--model-dir",
        m,
        "--from",
        "1",
        "--candidate",
        identical.to_str().unwrap(),
        "--quantize",
        "int8-dynamic",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--candidate is checked and published as it is"), "{err}");
    // An unreadable model.
    std::fs::create_dir(text.join("2")).unwrap();
    std::fs::write(text.join("2/model.onnx"), b"not a model").unwrap();
    let (code, _, err) = optimize(&["--model-dir", m, "--from", "2", "--quantize", "int8-dynamic"]);
    assert_eq!(code, 2);
    assert!(err.contains(&format!("{m}/2/model.onnx is not an ONNX model (cannot decode a ModelProto")), "{err}");
    std::fs::remove_dir_all(text.join("2")).unwrap();

    // A broken candidate (a weight replaced by unrelated values): refused, with the output and its cosine.
    let perturbed = gen_dir.path().join("perturbed.onnx");
    let p = perturbed.to_str().unwrap();
    let (code, out, _) = optimize(&["--model-dir", m, "--from", "1", "--candidate", p, "--latency-seconds", "0"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("  refused: output 'logits': min cosine "), "{out}");
    assert!(out.contains("< 0.99 (row "), "{out}");
    assert!(out.ends_with("  verdict: refused (nothing published)\n"), "{out}");
    let (code, out, _) =
        optimize(&["--model-dir", m, "--from", "1", "--candidate", p, "--latency-seconds", "0", "--json"]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&v["outcome"], &v["published"], &v["guard"]["verdict"]),
        (&Value::from("refused"), &Value::Null, &Value::from("refuse"))
    );
    let logits = &v["guard"]["outputs"]["logits"];
    assert_eq!(logits["pass"], false);
    assert!(logits["min_cosine"].as_f64().unwrap() < 0.5, "{logits}");
    assert!(logits["argmax_agreement"].as_f64().unwrap() < 0.9, "{logits}");
    assert_eq!(
        v["guard"]["outputs"]["shape"],
        serde_json::json!({"kind": "exact", "dtype": "int64", "rows": 128, "mismatches": 0, "pass": true})
    );

    // Nothing was published, no working directory is left, version 1 is untouched.
    assert_eq!(entries(&text), vec!["1"]);
    assert_eq!(sha256(&text.join("1/model.onnx")), v1);
}

#[test]
fn an_identical_candidate_is_published_with_settings_warmup_records_and_provenance() {
    let gen_dir = tempfile::tempdir().unwrap();
    gen(gen_dir.path());
    let text = gen_dir.path().join("text");
    let v1 = text.join("1");
    std::fs::write(v1.join("maas.pbtxt"), "graph_optimization_level: \"basic\"\n").unwrap();
    // Three recorded requests: the guard replays them instead of synthesizing inputs.
    let mut records = Vec::new();
    for seed in 0..3 {
        let req = predict_req("text", None, vec![("input_ids", ids_tensor(2, 5, seed))]);
        let log = PredictionLog {
            log_type: Some(LogType::PredictLog(PredictLog { request: Some(req), response: None })),
            ..Default::default()
        };
        maas::manager::tfrecord::write_record(&mut records, &log.encode_to_vec());
    }
    std::fs::create_dir(v1.join("assets.extra")).unwrap();
    std::fs::write(v1.join("assets.extra/tf_serving_warmup_requests"), &records).unwrap();

    let identical = gen_dir.path().join("identical.onnx");
    let m = text.to_str().unwrap();
    let (code, out, err) = optimize(&[
        "--model-dir",
        m,
        "--from",
        "1",
        "--candidate",
        identical.to_str().unwrap(),
        "--latency-seconds",
        "0.2",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with(&format!("  verdict: published: {m}/2\n")), "{out}");
    assert!(out.contains("  guard: 3 recorded sample(s); min cosine 0.99\n"), "{out}");
    let v2 = text.join("2");
    assert_eq!(entries(&v2), vec!["assets.extra", "maas.pbtxt", "model.onnx", "optimization.json"]);
    assert_eq!(std::fs::read(v2.join("model.onnx")).unwrap(), std::fs::read(&identical).unwrap());
    assert_eq!(std::fs::read_to_string(v2.join("maas.pbtxt")).unwrap(), "graph_optimization_level: \"basic\"\n");
    assert_eq!(std::fs::read(v2.join("assets.extra/tf_serving_warmup_requests")).unwrap(), records);

    let p: Value = serde_json::from_slice(&std::fs::read(v2.join("optimization.json")).unwrap()).unwrap();
    assert_eq!(
        (&p["model"], &p["version"], &p["source"]["version"]),
        (&Value::from("text"), &Value::from(2), &Value::from(1))
    );
    let files = p["source"]["files"].as_object().unwrap();
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        vec!["assets.extra/tf_serving_warmup_requests", "maas.pbtxt", "model.onnx"]
    );
    assert_eq!(files["model.onnx"], sha256(&v1.join("model.onnx")));
    assert_eq!(p["recipe"]["candidate"], identical.to_str().unwrap());
    assert_eq!(p["recipe"]["quantize"], Value::Null);
    assert_eq!(p["guard"]["inputs"]["kind"], "recorded");
    assert_eq!(p["guard"]["inputs"]["samples"], 3);
    assert_eq!(p["guard"]["verdict"], "pass");
    let logits = &p["guard"]["outputs"]["logits"];
    assert_eq!((logits["rows"].as_u64(), logits["max_abs"].as_f64()), (Some(6), Some(0.0)));
    assert!((logits["min_cosine"].as_f64().unwrap() - 1.0).abs() < 1e-12, "{logits}");
    assert_eq!(p["sizes"]["source_bytes"], p["sizes"]["candidate_bytes"]);
    assert_eq!(p["onnxruntime"]["version"], "1.31.1");
    for key in ["avx2", "avx512_vnni", "amx"] {
        assert!(p["cpu_features"].get(key).is_some(), "{}", p["cpu_features"]);
    }
    assert!(p["latency"]["source"]["p50_us"].as_f64().unwrap() > 0.0, "{}", p["latency"]);
    assert!(p["load_ms"]["candidate"].as_f64().unwrap() > 0.0);
}

/// Writes `DIR/<sample>/input_ids.npy` (int64 [2, 4]) for two samples.
fn write_npy_samples(dir: &Path) {
    for (s, seed) in [("a", 1i64), ("b", 2)] {
        let header = "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 4), }";
        let h = format!("{header}{}\n", " ".repeat(64 - (10 + header.len() + 1) % 64));
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        for i in 0..8i64 {
            b.extend_from_slice(&((i * 91 + seed * 7) % 1000).to_le_bytes());
        }
        std::fs::create_dir_all(dir.join(s)).unwrap();
        std::fs::write(dir.join(s).join("input_ids.npy"), b).unwrap();
    }
}

#[test]
fn dry_run_publishes_nothing_and_npy_samples_feed_the_guard() {
    let gen_dir = tempfile::tempdir().unwrap();
    gen(gen_dir.path());
    let text = gen_dir.path().join("text");
    let m = text.to_str().unwrap();
    let args = ["--model-dir", m, "--from", "1", "--quantize", "int8-dynamic", "--per-channel", "--embeddings"];
    let (code, out, err) = optimize(&[&args[..], &["--dry-run", "--latency-seconds", "0"]].concat());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("  int8: 1 MatMul, 1 Gemm, 1 Gather rewritten;"), "{out}");
    assert!(out.contains("  guard: 64 synthesized sample(s) (batch 4, seq 32); min cosine 0.99\n"), "{out}");
    assert!(out.ends_with("  verdict: passed (dry run: nothing published)\n"), "{out}");
    assert_eq!(entries(&text), vec!["1"]);

    let samples = gen_dir.path().join("samples");
    write_npy_samples(&samples);
    let s = samples.to_str().unwrap();
    let (code, out, err) =
        optimize(&[&args[..], &["--dry-run", "--json", "--guard-inputs", s, "--latency-seconds", "0"]].concat());
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((&v["outcome"], &v["dry_run"]), (&Value::from("passed"), &Value::from(true)));
    assert_eq!(v["guard"]["inputs"]["kind"], "npy");
    assert_eq!(v["guard"]["inputs"]["samples"], 2);
    assert_eq!(v["guard"]["outputs"]["logits"]["rows"], 4);
    assert_eq!(entries(&text), vec!["1"]);
    // A file for an input the model does not have is an error, not ignored.
    std::fs::write(samples.join("a/token_type_ids.npy"), b"x").unwrap();
    let (code, _, err) = optimize(&[&args[..], &["--dry-run", "--guard-inputs", s]].concat());
    assert_eq!(code, 2);
    assert!(err.contains("token_type_ids.npy: the model has no input 'token_type_ids' (inputs: input_ids)"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_data_version_is_published_atomically_into_a_polling_server() {
    let gen_dir = tempfile::tempdir().unwrap();
    gen(gen_dir.path());
    let repo = tempfile::tempdir().unwrap();
    let model = repo.path().join("text");
    std::fs::create_dir_all(model.join("1")).unwrap();
    for f in ["model.onnx", "model.onnx.data"] {
        std::fs::copy(gen_dir.path().join("text_ext/1").join(f), model.join("1").join(f)).unwrap();
    }
    // The optimized version is pre-optimized: it may load without ONNX Runtime's graph passes.
    std::fs::write(model.join("1/maas.pbtxt"), "graph_optimization_level: \"disable\"\n").unwrap();
    // Every version served (policy all), the repository scanned every 20 ms.
    let mut cfg = maas::ServeConfig::with_source(maas::manager::ModelSource::List(vec![ModelConfig {
        name: "text".into(),
        base_path: Location::Local(model.clone()),
        policy: VersionPolicy::All,
        labels: Default::default(),
    }]));
    cfg.manager.poll_interval = Some(Duration::from_millis(20));
    cfg.manager.max_load_retries = 0;
    let server = TestServer::ready(cfg).await;
    assert_eq!(available(&server, "text").await, vec![1]);

    // Watch the model directory every millisecond: the first sight of version 2 must be complete.
    let stop = Arc::new(AtomicBool::new(false));
    let first_sight: Arc<Mutex<Option<Listing>>> = Arc::default();
    let watcher = {
        let (stop, seen, dir) = (Arc::clone(&stop), Arc::clone(&first_sight), model.join("2"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) && seen.lock().unwrap().is_none() {
                if let Ok(rd) = std::fs::read_dir(&dir) {
                    let mut files: Vec<(String, u64)> = rd
                        .filter_map(|e| e.ok())
                        .map(|e| {
                            (e.file_name().to_string_lossy().into_owned(), e.metadata().map(|m| m.len()).unwrap_or(0))
                        })
                        .collect();
                    files.sort();
                    *seen.lock().unwrap() = Some(files);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    // And the server's view of version 2, every 10 ms: never an error.
    let server_states: Arc<Mutex<Vec<(i32, String)>>> = Arc::default();
    let status_poller = {
        let (stop, log, mut client) = (Arc::clone(&stop), Arc::clone(&server_states), server.model_client().await);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let req =
                    maas::proto::tensorflow::serving::GetModelStatusRequest { model_spec: Some(spec("text", Some(2))) };
                if let Ok(r) = client.get_model_status(req).await {
                    for v in r.into_inner().model_version_status {
                        log.lock().unwrap().push((v.state, v.status.unwrap_or_default().error_message));
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let m = model.to_str().unwrap().to_string();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_maas"))
        .env_remove("ORT_DYLIB_PATH")
        .env("RUST_LOG", "warn")
        .args(["optimize", "--model-dir", &m, "--from", "1", "--quantize", "int8-dynamic", "--per-channel"])
        .args(["--embeddings", "--latency-seconds", "0.2", "--guard-samples", "8"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    wait_for(30, "version 2 to be AVAILABLE", || async { available(&server, "text").await.contains(&2).then_some(()) })
        .await;
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    status_poller.await.unwrap();

    let v2 = model.join("2");
    assert_eq!(entries(&v2), vec!["maas.pbtxt", "model.onnx", "model.onnx.data", "optimization.json"]);
    let mut final_files: Vec<(String, u64)> =
        entries(&v2).into_iter().map(|f| (f.clone(), std::fs::metadata(v2.join(&f)).unwrap().len())).collect();
    final_files.sort();
    assert_eq!(first_sight.lock().unwrap().as_ref(), Some(&final_files), "version 2 was seen before it was complete");
    for (state, message) in server_states.lock().unwrap().iter() {
        assert!(message.is_empty(), "the server saw an error for version 2 (state {state}): {message}");
    }
    assert_eq!(entries(&model).iter().filter(|e| e.starts_with('.')).count(), 0, "no working directory left");

    // The written model keeps its weights external, in the data file next to it.
    let onnx =
        maas::proto::maas::onnx::ModelProto::decode(bytes::Bytes::from(std::fs::read(v2.join("model.onnx")).unwrap()))
            .unwrap();
    let external: Vec<_> = onnx.graph.unwrap().initializer.into_iter().filter(|t| t.data_location == Some(1)).collect();
    assert!(!external.is_empty());
    for t in &external {
        let loc = t.external_data.iter().find(|e| e.key() == "location").unwrap();
        assert_eq!(loc.value(), "model.onnx.data", "{}", t.name());
    }

    // The status route shows how version 2 was made, and nothing for version 1.
    let url = format!("http://{}/maas/v1/models/text", server.rest_addr);
    let d: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    let version = |n: i64| d["versions"].as_array().unwrap().iter().find(|v| v["version"] == n).unwrap().clone();
    assert_eq!(version(1)["optimization"], Value::Null);
    let o = &version(2)["optimization"];
    assert_eq!(
        (&o["recipe"]["quantize"], &o["recipe"]["external_data"]),
        (&Value::from("int8-dynamic"), &Value::from(true))
    );
    assert_eq!(o["guard"]["verdict"], "pass");
    assert_eq!(version(2)["load_error"], Value::Null);

    // Both versions answer; the int8 one like the float one.
    let mut client = server.predict_client().await;
    let mut answers = Vec::new();
    for v in [1, 2] {
        let r = client.predict(predict_req("text", Some(v), vec![("input_ids", ids_tensor(3, 6, 5))])).await.unwrap();
        answers.push(r.into_inner().outputs["logits"].float_val.clone());
    }
    assert_eq!(answers[0].len(), 30);
    for (a, b) in answers[0].chunks(10).zip(answers[1].chunks(10)) {
        let (a, b): (Vec<f64>, Vec<f64>) =
            (a.iter().map(|&x| x.into()).collect(), b.iter().map(|&x| x.into()).collect());
        let c = maas::optimize::guard::cosine(&a, &b);
        assert!(c > 0.99, "cosine {c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimize_and_canary_example_end_to_end() {
    let gen_dir = tempfile::tempdir().unwrap();
    gen(gen_dir.path());
    let repo = tempfile::tempdir().unwrap();
    let model = repo.path().join("text");
    std::fs::create_dir_all(model.join("1")).unwrap();
    std::fs::copy(gen_dir.path().join("text/1/model.onnx"), model.join("1/model.onnx")).unwrap();
    let mut cfg = maas::ServeConfig::with_source(maas::manager::ModelSource::List(vec![ModelConfig {
        name: "text".into(),
        base_path: Location::Local(model.clone()),
        policy: VersionPolicy::Specific([1].into_iter().collect()),
        labels: [("stable".to_string(), 1)].into_iter().collect(),
    }]));
    cfg.manager.poll_interval = Some(Duration::from_millis(100));
    let server = TestServer::ready(cfg).await;

    let out = tokio::process::Command::new(python())
        .arg(repo_root().join("examples/optimize_and_canary.py"))
        .args(["--json", "--address", &server.addr.to_string(), "--model", "text", "--from", "1", "--requests", "5"])
        .args(["--model-dir", model.to_str().unwrap(), "--maas", env!("CARGO_BIN_EXE_maas")])
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "optimize_and_canary.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&v["published"], &v["stable_before"], &v["stable_after"]),
        (&Value::from(2), &Value::from(1), &Value::from(2))
    );
    assert!(v["worst_cosine_stable_vs_canary"]["logits"].as_f64().unwrap() > 0.98, "{v}");
    assert_eq!(v["worst_cosine_stable_vs_canary"]["shape"], 1.0);
    for version in ["1", "2"] {
        assert!(v["server_statistics"][version]["requests"].as_u64().unwrap() >= 5, "{v}");
    }
    // The server agrees: both versions serve, and `stable` now means version 2.
    assert_eq!(available(&server, "text").await, vec![1, 2]);
    let mut client = server.predict_client().await;
    let mut req = predict_req("text", None, vec![("input_ids", ids_tensor(1, 4, 1))]);
    req.model_spec.as_mut().unwrap().version_choice =
        Some(maas::proto::tensorflow::serving::model_spec::VersionChoice::VersionLabel("stable".into()));
    let r = client.predict(req).await.unwrap().into_inner();
    assert_eq!(
        r.model_spec.unwrap().version_choice,
        Some(maas::proto::tensorflow::serving::model_spec::VersionChoice::Version(2))
    );
}
