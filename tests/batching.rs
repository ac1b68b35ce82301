//! Dynamic batching: merge and split, bit-identical answers, padding off and on, allowed batch sizes,
//! a full queue, passed deadlines, per-model settings.
mod common;

use common::*;
use maas::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use maas::proto::inference::ModelStatisticsRequest;
use maas::proto::tensorflow::serving::PredictResponse;
use maas::proto::tensorflow::{DataType, TensorProto};
use maas::runtime::BatchingConfig;
use maas::ServeConfig;
use std::time::{Duration, Instant};

fn batching(max: usize, timeout_ms: u64, f: impl FnOnce(&mut BatchingConfig)) -> BatchingConfig {
    let mut b = BatchingConfig {
        max_batch_size: max,
        batch_timeout: Duration::from_millis(timeout_ms),
        num_batch_threads: Some(1),
        ..BatchingConfig::default()
    };
    f(&mut b);
    b
}

fn batched_config(b: BatchingConfig) -> ServeConfig {
    let mut cfg = test_config(fixtures());
    cfg.manager.runtime.pool_size = 1;
    cfg.manager.runtime.batching = Some(b);
    cfg
}

/// (successful requests, failed requests, ONNX Runtime executions) of a model, from v2 statistics.
async fn counts(server: &TestServer, model: &str) -> (u64, u64, u64) {
    let mut v2 = GrpcInferenceServiceClient::new(server.channel().await);
    let r = v2.model_statistics(ModelStatisticsRequest { name: model.into(), version: String::new() }).await;
    let s = r.unwrap().into_inner().model_stats.remove(0);
    let st = s.inference_stats.unwrap();
    (st.success.unwrap().count, st.fail.unwrap().count, s.execution_count)
}

/// Sends all requests at once; answers in request order.
async fn concurrently(
    server: &TestServer,
    reqs: Vec<maas::proto::tensorflow::serving::PredictRequest>,
) -> Vec<Result<PredictResponse, tonic::Status>> {
    let client = server.predict_client().await;
    let tasks: Vec<_> = reqs
        .into_iter()
        .map(|r| {
            let mut c = client.clone();
            tokio::spawn(async move { c.predict(r).await.map(tonic::Response::into_inner) })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn bits(t: &TensorProto) -> Vec<u32> {
    t.float_val.iter().map(|v| v.to_bits()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_requests_of_mixed_sizes_get_bit_identical_answers() {
    let plain = TestServer::ready(test_config(fixtures())).await;
    let reqs: Vec<_> =
        (0..24).map(|i| predict_req("numbers_classifier", None, vec![("x", classifier_input(1 + i % 5, i))])).collect();
    let mut expected = Vec::new();
    for r in &reqs {
        let resp = plain.predict_client().await.predict(r.clone()).await.unwrap().into_inner();
        expected.push(resp.outputs);
    }
    // allowed_batch_sizes: every merged batch is padded up to 4, 8 or 16 rows.
    let server = TestServer::ready(batched_config(batching(16, 100, |b| b.allowed_batch_sizes = vec![4, 8, 16]))).await;
    let answers = concurrently(&server, reqs.clone()).await;
    for (i, (got, want)) in answers.into_iter().zip(&expected).enumerate() {
        let got = got.unwrap_or_else(|e| panic!("request {i}: {e}")).outputs;
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
        for (name, w) in want {
            assert_eq!(dims(&got[name]), dims(w), "request {i} output {name}");
            assert_eq!(dims(w)[0], 1 + (i % 5) as i64);
            assert_eq!(bits(&got[name]), bits(w), "request {i} output {name}: bit-identical to the unbatched run");
        }
    }
    let (ok, failed, executions) = counts(&server, "numbers_classifier").await;
    assert_eq!((ok, failed), (24, 0));
    // 24 requests of 72 rows in batches of at most 16 rows: at least 5 runs, far fewer than 24.
    assert!((5..=16).contains(&executions), "{executions} ONNX Runtime runs for 24 requests");
    let (_, _, plain_runs) = counts(&plain, "numbers_classifier").await;
    assert_eq!(plain_runs, 24, "unbatched: one run per request");

    // An output filter applies per request inside a merged batch.
    let mut filtered = reqs[0].clone();
    filtered.output_filter = vec!["y".into()];
    let answers = concurrently(&server, vec![filtered, reqs[1].clone()]).await;
    let a = answers[0].as_ref().unwrap();
    assert_eq!(a.outputs.keys().collect::<Vec<_>>(), vec!["y"]);
    assert_eq!(bits(&a.outputs["y"]), bits(&expected[0]["y"]));
    assert_eq!(answers[1].as_ref().unwrap().outputs.len(), expected[1].len());
}

fn identity_req(shape: &[i64], first: f32) -> maas::proto::tensorflow::serving::PredictRequest {
    let n: i64 = shape.iter().product();
    let vals = (0..n).map(|i| first + i as f32).collect();
    predict_req("identity_float", None, vec![("x", f32_tensor(shape, vals))])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_shapes_merge_only_with_padding() {
    let reqs = || vec![identity_req(&[1, 2], 10.0), identity_req(&[2, 2], 20.0), identity_req(&[2, 3], 30.0)];

    // Padding off: the two [_, 2] requests share a batch, the [2, 3] one runs alone.
    let server = TestServer::ready(batched_config(batching(8, 150, |_| {}))).await;
    let answers = concurrently(&server, reqs()).await;
    for (got, sent) in answers.iter().zip(reqs()) {
        let y = &got.as_ref().unwrap().outputs["y"];
        assert_eq!(dims(y), dims(&sent.inputs["x"]));
        assert_eq!(y.float_val, sent.inputs["x"].float_val);
    }
    assert_eq!(counts(&server, "identity_float").await, (3, 0, 2));
    drop(server);

    // Padding on: one batch of shape [5, 3]; each input was padded with its own first element.
    let server = TestServer::ready(batched_config(batching(8, 150, |b| b.pad_variable_length_inputs = true))).await;
    let answers = concurrently(&server, reqs()).await;
    let y: Vec<&TensorProto> = answers.iter().map(|a| &a.as_ref().unwrap().outputs["y"]).collect();
    assert_eq!(dims(y[0]), vec![1, 3]);
    assert_eq!(y[0].float_val, vec![10.0, 11.0, 10.0]);
    assert_eq!(dims(y[1]), vec![2, 3]);
    assert_eq!(y[1].float_val, vec![20.0, 21.0, 20.0, 22.0, 23.0, 20.0]);
    assert_eq!(dims(y[2]), vec![2, 3]);
    assert_eq!(y[2].float_val, (0..6).map(|i| 30.0 + i as f32).collect::<Vec<_>>());
    assert_eq!(counts(&server, "identity_float").await, (3, 0, 1));
}

/// Waits (bounded) until the `slow` model shows these gauges (`maas_inflight_requests`: admitted;
/// `maas_queue_depth`: waiting in the batch queue) in the server's own metrics, so the test does not
/// depend on sleeps.
async fn gauges(server: &TestServer, inflight: Option<u32>, queued: u32) {
    let url = format!("http://{}/metrics", server.rest_addr);
    let mut want = vec![format!("maas_queue_depth{{model=\"slow\"}} {queued}")];
    want.extend(inflight.map(|n| format!("maas_inflight_requests{{model=\"slow\"}} {n}")));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if want.iter().all(|w| text.lines().any(|l| l == w)) {
            return;
        }
        assert!(Instant::now() < deadline, "metrics never showed {want:?}:\n{text}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_unavailable_at_once_and_expired_requests_do_not_run() {
    let server = TestServer::ready(batched_config(batching(64, 0, |b| b.max_enqueued_batches = 2))).await;
    let client = server.predict_client().await;
    let send = |req: tonic::Request<_>| {
        let mut c = client.clone();
        tokio::spawn(async move { c.predict(req).await })
    };
    let slow = || predict_req("slow", None, vec![("x", slow_input(64))]);
    // A full batch runs (~200 ms) ...
    let a = send(tonic::Request::new(slow()));
    gauges(&server, Some(1), 0).await;
    // ... while two more full batches wait; B's client gives up after 30 ms.
    let mut b_req = tonic::Request::new(slow());
    b_req.set_timeout(Duration::from_millis(30));
    let b = send(b_req);
    let c = send(tonic::Request::new(slow()));
    // B stays queued (and counted) until A's run ends, even once its client has given up.
    gauges(&server, None, 2).await;
    // The queue holds 2 batches: a fourth request is refused at once (not queued: it fails, where a
    // queued request would run; the bound only guards against a hang).
    let started = Instant::now();
    let err = client.clone().predict(slow()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "refused at once, took {:?}", started.elapsed());
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(
        err.message(),
        "model 'slow' version 1: the batch queue is full (2 batches of up to 64 rows waiting, the \
         max_enqueued_batches limit); retry later"
    );
    // A request larger than max_batch_size can never be batched.
    let err = client.clone().predict(predict_req("slow", None, vec![("x", slow_input(65))])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "model 'slow' version 1: the request has batch size 65 (first dimension of its inputs), more than the \
         max_batch_size of 64 this model is batched with"
    );
    let a = a.await.unwrap().expect("A runs");
    assert_eq!(dims(&a.into_inner().outputs["y"]), vec![64, 256]);
    let b = b.await.unwrap().unwrap_err();
    assert!(matches!(b.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{b:?}");
    c.await.unwrap().expect("C runs");
    // B's deadline passed while it was queued: it never reached ONNX Runtime.
    let (ok, failed, executions) = counts(&server, "slow").await;
    assert_eq!((ok, executions), (2, 2), "A and C ran, B did not");
    assert_eq!(failed, 3, "B (deadline), the refused one, the oversized one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_model_settings_turn_batching_on_and_unbatchable_models_run_unbatched() {
    let dir = tempfile::tempdir().unwrap();
    for model in ["numbers_classifier", "fixed_shape"] {
        let from = fixtures().join(model).join("1").join("model.onnx");
        publish(&dir.path().join(model), 1, &std::fs::read(from).unwrap());
    }
    std::fs::write(
        dir.path().join("numbers_classifier").join("maas.pbtxt"),
        "session_pool_size: 1\nbatching_parameters { max_batch_size { value: 4 } batch_timeout_micros { value: 100000 } }\n",
    )
    .unwrap();
    // Server-wide batching on: fixed_shape (static first dimension) still serves, unbatched.
    let mut cfg = test_config(dir.path());
    cfg.manager.runtime.batching = Some(BatchingConfig::default());
    let server = TestServer::ready(cfg).await;
    // maas's status route shows the settings in effect.
    let route = |model: &str| format!("http://{}/maas/v1/models/{model}", server.rest_addr);
    let v: serde_json::Value = reqwest::get(route("numbers_classifier")).await.unwrap().json().await.unwrap();
    let version = &v["versions"][0];
    assert_eq!(version["sessions"], 1, "{v}");
    assert_eq!(
        (&version["batching"]["max_batch_size"], &version["batching"]["batch_timeout_micros"]),
        (&serde_json::json!(4), &serde_json::json!(100000)),
        "{v}"
    );
    assert_eq!(version["batching"]["num_batch_threads"], 1, "{v}");
    let v: serde_json::Value = reqwest::get(route("fixed_shape")).await.unwrap().json().await.unwrap();
    assert_eq!(v["versions"][0]["batching"], serde_json::Value::Null, "{v}");
    let reqs: Vec<_> =
        (0..4).map(|i| predict_req("numbers_classifier", None, vec![("x", classifier_input(2, i))])).collect();
    for a in concurrently(&server, reqs).await {
        assert_eq!(dims(&a.unwrap().outputs["y"])[0], 2);
    }
    // 8 rows in batches of at most 4: exactly 2 runs.
    assert_eq!(counts(&server, "numbers_classifier").await, (4, 0, 2));
    let a = f32_tensor(&[2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    let b = TensorProto {
        dtype: DataType::DtInt64 as i32,
        tensor_shape: shape(&[1]),
        int64_val: vec![7],
        ..Default::default()
    };
    let r = server.predict_client().await.predict(predict_req("fixed_shape", None, vec![("a", a), ("b", b)])).await;
    assert_eq!(r.unwrap().into_inner().outputs["sum"].float_val, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
}

fn i64_values(t: &TensorProto) -> Vec<i64> {
    if t.tensor_content.is_empty() {
        t.int64_val.clone()
    } else {
        t.tensor_content.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
    }
}

fn i64_req(model: &str, shape_: &[i64], first: i64) -> maas::proto::tensorflow::serving::PredictRequest {
    let n: i64 = shape_.iter().product();
    let t = TensorProto {
        dtype: DataType::DtInt64 as i32,
        tensor_shape: shape(shape_),
        int64_val: (0..n).map(|i| first + i).collect(),
        ..Default::default()
    };
    predict_req(model, None, vec![("x", t)])
}

/// A repository with identity_int64 (x -> y, int64 [batch, width]) as each `(name, maas.pbtxt)`.
fn identity_models(models: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let onnx = std::fs::read(fixtures().join("identity_int64").join("1").join("model.onnx")).unwrap();
    for (name, settings) in models {
        publish(&dir.path().join(name), 1, &onnx);
        std::fs::write(dir.path().join(name).join("maas.pbtxt"), settings).unwrap();
    }
    dir
}

const PADDED: &str = "session_pool_size: 1
batching_parameters { max_batch_size { value: 8 } batch_timeout_micros { value: 150000 }
  num_batch_threads { value: 1 } pad_variable_length_inputs: true }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pad_values_fill_the_padding_and_trim_outputs_cut_it_back() {
    let pad = format!("{PADDED}pad_values {{ key: \"x\" value: -7 }}\n");
    let trim = format!("{pad}trim_outputs {{ key: \"y\" value: \"x\" }}\n");
    let dir = identity_models(&[("first", PADDED), ("pad", &pad), ("trim", &trim)]);
    let server = TestServer::ready(test_config(dir.path())).await;
    let reqs = |m: &str| vec![i64_req(m, &[1, 2], 10), i64_req(m, &[2, 3], 20), i64_req(m, &[1, 1], 30)];

    // TF Serving's rule: each request padded with its own first element, answered in the padded shape.
    let answers = concurrently(&server, reqs("first")).await;
    let y: Vec<&TensorProto> = answers.iter().map(|a| &a.as_ref().unwrap().outputs["y"]).collect();
    assert_eq!((dims(y[0]), i64_values(y[0])), (vec![1, 3], vec![10, 11, 10]));
    assert_eq!((dims(y[2]), i64_values(y[2])), (vec![1, 3], vec![30, 30, 30]));
    assert_eq!(counts(&server, "first").await, (3, 0, 1));

    // pad_values: the padding is -7.
    let answers = concurrently(&server, reqs("pad")).await;
    let y: Vec<&TensorProto> = answers.iter().map(|a| &a.as_ref().unwrap().outputs["y"]).collect();
    assert_eq!((dims(y[0]), i64_values(y[0])), (vec![1, 3], vec![10, 11, -7]));
    assert_eq!((dims(y[1]), i64_values(y[1])), (vec![2, 3], (20..26).collect::<Vec<_>>()));
    assert_eq!((dims(y[2]), i64_values(y[2])), (vec![1, 3], vec![30, -7, -7]));
    assert_eq!(counts(&server, "pad").await, (3, 0, 1));

    // trim_outputs: every request gets exactly its own input back, from one merged run.
    let answers = concurrently(&server, reqs("trim")).await;
    for (a, sent) in answers.iter().zip(reqs("trim")) {
        let y = &a.as_ref().unwrap().outputs["y"];
        assert_eq!(dims(y), dims(&sent.inputs["x"]));
        assert_eq!(i64_values(y), sent.inputs["x"].int64_val);
    }
    assert_eq!(counts(&server, "trim").await, (3, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pad_values_and_trim_outputs_that_do_not_fit_the_model_fail_the_load() {
    let bad = [
        ("half", "pad_values { key: \"x\" value: 0.5 }"),
        ("name", "pad_values { key: \"input_ids\" value: 0 }"),
        ("trim", "trim_outputs { key: \"y\" value: \"mask\" }"),
    ];
    let models: Vec<(&str, String)> = bad.iter().map(|(m, s)| (*m, format!("{PADDED}{s}\n"))).collect();
    let models: Vec<(&str, &str)> = models.iter().map(|(m, s)| (*m, s.as_str())).collect();
    let dir = identity_models(&models);
    let server = TestServer::start(test_config(dir.path())).await;
    let why = |m: &str| format!("invalid model settings {}: ", dir.path().join(m).join("maas.pbtxt").display());
    for (model, expected) in [
        (
            "half",
            "pad_values: input 'x' has dtype int64, which cannot hold 0.5 (int64 takes whole numbers from \
             -9223372036854775808 to 9223372036854775807)",
        ),
        ("name", "pad_values: 'input_ids' is not an input of the model; its inputs are ['x' (int64 [-1, -1])]"),
        (
            "trim",
            "trim_outputs: output 'y' follows 'mask', which is not an input of the model; its inputs are ['x' \
             (int64 [-1, -1])]",
        ),
    ] {
        let failed = wait_for(20, "the load to fail", || async {
            version_states(&server, model).await.into_iter().find(|v| v.2 != 0)
        })
        .await;
        assert_eq!(failed.2, tonic::Code::InvalidArgument as i32, "{failed:?}");
        assert_eq!(failed.3, format!("{}{expected}", why(model)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_padding_would_take_over_max_tensor_bytes_runs_in_a_batch_of_its_own() {
    let mut cfg = batched_config(batching(8, 300, |b| b.pad_variable_length_inputs = true));
    cfg.manager.runtime.max_tensor_bytes = 1 << 20;
    let server = TestServer::ready(cfg).await;
    let client = server.predict_client().await;
    let send = |req| {
        let mut c = client.clone();
        tokio::spawn(async move { c.predict(req).await.map(tonic::Response::into_inner) })
    };
    // A: 4 rows of 1 float. B: 1 row of 100000 floats (400 KB). Padded together, A would be
    // [4, 100000] = 1.6 MB, over the 1 MiB limit: B opens a second batch. C (200 KB) joins B's
    // batch: padded to [1, 100000] it is 400 KB.
    let a = send(identity_req(&[4, 1], 1.0));
    tokio::time::sleep(Duration::from_millis(30)).await;
    let b = send(identity_req(&[1, 100_000], 0.0));
    tokio::time::sleep(Duration::from_millis(30)).await;
    let c = send(identity_req(&[1, 50_000], 5.0));
    let a = a.await.unwrap().expect("A is answered");
    assert_eq!(dims(&a.outputs["y"]), vec![4, 1], "A was not padded");
    assert_eq!(a.outputs["y"].float_val, vec![1.0, 2.0, 3.0, 4.0]);
    let b = b.await.unwrap().expect("B is answered");
    assert_eq!(dims(&b.outputs["y"]), vec![1, 100_000]);
    let c = c.await.unwrap().expect("C is answered");
    assert_eq!(dims(&c.outputs["y"]), vec![1, 100_000], "C was padded into B's batch");
    assert_eq!(counts(&server, "identity_float").await, (3, 0, 2));
}
