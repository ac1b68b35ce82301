//! Prometheus metrics of a real server: known requests through all four front ends, then scrapes
//! checked counter by counter; the exposition parsed by the Python client and promtool; batching;
//! the metrics endpoints and flags; bounded cardinality over 50 versions; the Grafana dashboard.
mod common;

use common::*;
use maas::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use maas::proto::inference::model_infer_request::InferInputTensor;
use maas::proto::inference::{InferTensorContents, ModelInferRequest};
use maas::proto::tensorflow::{DataType, TensorProto};
use maas::ServeConfig;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tonic::Code;

/// Label (name, value) pairs in exposition order.
type LabelSet = Vec<(String, String)>;

/// One scrape: the text and its samples (name, labels, value).
struct Scrape {
    text: String,
    samples: Vec<(String, LabelSet, f64)>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), Vec::new()),
                Some((name, rest)) => (name.to_string(), parse_labels(rest.strip_suffix('}').unwrap())),
            };
            samples.push((name, labels, value));
        }
        Scrape { text, samples }
    }

    /// The value of the sample with exactly these labels (in any order).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut want: LabelSet = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        want.sort();
        self.samples.iter().find_map(|(n, l, v)| {
            let mut l = l.clone();
            l.sort();
            (n == name && l == want).then_some(*v)
        })
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{}", self.text))
    }

    /// Every family named by a `# TYPE` line, with its type.
    fn families(&self) -> BTreeMap<String, String> {
        let parts =
            |l: &str| l.strip_prefix("# TYPE ").and_then(|r| r.split_once(' ')).map(|(n, t)| (n.into(), t.into()));
        self.text.lines().filter_map(parts).collect()
    }
}

fn parse_labels(s: &str) -> LabelSet {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "label {key} in {s}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("dangling escape in {s}"),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((key, value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (r.status().as_u16(), ct, r.text().await.unwrap())
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, ct, body) = get(addr, "/metrics").await;
    assert_eq!((status, ct.as_str()), (200, "text/plain; version=0.0.4"));
    Scrape::parse(body)
}

/// Scrapes until `ok` holds (at most 30 s).
async fn scrape_until(addr: SocketAddr, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    wait_for(30, what, || async {
        let s = scrape(addr).await;
        ok(&s).then_some(s)
    })
    .await
}

async fn post_json(addr: SocketAddr, path: &str, body: &str) -> u16 {
    let c = reqwest::Client::new();
    let r = c.post(format!("http://{addr}{path}")).header("content-type", "application/json");
    r.body(body.to_string()).send().await.unwrap().status().as_u16()
}

/// A repository with copies of the given fixture models.
fn repo(models: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for m in models {
        let bytes = std::fs::read(fixtures().join(m).join("1/model.onnx")).unwrap();
        publish(&dir.path().join(m), 1, &bytes);
    }
    dir
}

fn features(rows: usize) -> Vec<f32> {
    (0..rows * 8).map(|i| (i % 5) as f32 / 4.0).collect()
}

fn v2_req(model: &str, shape: Vec<i64>, values: Vec<f32>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape,
            contents: Some(InferTensorContents { fp32_contents: values, ..Default::default() }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn v2_json(shape: &[usize], values: &[f32]) -> String {
    json!({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": values}]}).to_string()
}

fn slow_input() -> TensorProto {
    let vals: Vec<f32> = (0..64 * 256).map(|i| ((i % 97) as f32 - 48.0) / 50.0).collect();
    TensorProto {
        dtype: DataType::DtFloat as i32,
        tensor_shape: shape(&[64, 256]),
        float_val: vals,
        ..Default::default()
    }
}

/// Every histogram: buckets cumulative, `+Inf` last and equal to `_count`.
fn check_histograms(s: &Scrape) {
    for (family, kind) in s.families() {
        if kind != "histogram" {
            continue;
        }
        let bucket = format!("{family}_bucket");
        let mut series: BTreeMap<LabelSet, Vec<(String, f64)>> = BTreeMap::new();
        for (n, labels, v) in &s.samples {
            if *n == bucket {
                let le = labels.iter().find(|(k, _)| k == "le").unwrap().1.clone();
                let rest: Vec<_> = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
                series.entry(rest).or_default().push((le, *v));
            }
        }
        for (labels, buckets) in series {
            assert_eq!(buckets.last().unwrap().0, "+Inf", "{family}{labels:?}");
            assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{family}{labels:?} not cumulative: {buckets:?}");
            let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(buckets.last().unwrap().1, s.get(&format!("{family}_count"), &l), "{family}{labels:?}");
            assert!(s.value(&format!("{family}_sum"), &l).is_some());
        }
    }
}

/// The exposition parses with the Python client's parser and promtool finds no parse error (exit 3
/// is lint only: TF Serving's `:` names and counters without `_total`).
async fn check_parsers(text: &str) {
    let python = repo_root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run ./scripts/setup.sh", python.display());
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families\n\
                  fams = list(text_string_to_metric_families(open(sys.argv[1]).read()))\n\
                  print(' '.join(f'{f.name}={f.type}' for f in fams))\n";
    let out = tokio::process::Command::new(&python).args(["-c", script]).arg(file.path()).output().await.unwrap();
    assert!(out.status.success(), "prometheus_client could not parse:\n{}", String::from_utf8_lossy(&out.stderr));
    let families = String::from_utf8(out.stdout).unwrap();
    for f in [":tensorflow:serving:request_latency=histogram", "nv_inference_count=counter", "maas_model_state=gauge"] {
        assert!(families.split_whitespace().any(|x| x == f), "{f} not in {families}");
    }
    let promtool = repo_root().join(".tools/prometheus/usr/bin/promtool");
    assert!(promtool.exists(), "{} is missing: run ./scripts/setup.sh", promtool.display());
    let out = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(file.path()).unwrap())
        .output()
        .unwrap();
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(3),
        "promtool check metrics exited {code:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_front_end_counts_identically() {
    let dir = repo(&["numbers_classifier", "slow"]);
    let mut cfg = test_config(dir.path());
    cfg.manager.runtime.pool_size = 1;
    cfg.manager.runtime.max_in_flight = 2;
    let server = TestServer::ready(cfg).await;
    let rest = server.rest_addr;
    let tf = server.predict_client().await;
    let mut v2 = GrpcInferenceServiceClient::new(server.channel().await);
    let nc = "numbers_classifier";

    // Per front end: 2 successes (2 rows and 1 row), 1 bad input, 1 unknown model.
    for rows in [2, 1] {
        let req = predict_req(nc, None, vec![("x", f32_tensor(&[rows, 8], features(rows as usize)))]);
        tf.clone().predict(req).await.unwrap();
        v2.model_infer(v2_req(nc, vec![rows, 8], features(rows as usize))).await.unwrap();
        let instances: Vec<Vec<f32>> = features(rows as usize).chunks(8).map(<[f32]>::to_vec).collect();
        let body = json!({ "instances": instances }).to_string();
        assert_eq!(post_json(rest, "/v1/models/numbers_classifier:predict", &body).await, 200);
        let body = v2_json(&[rows as usize, 8], &features(rows as usize));
        assert_eq!(post_json(rest, "/v2/models/numbers_classifier/infer", &body).await, 200);
    }
    let bad = tf.clone().predict(predict_req(nc, None, vec![("x", f32_tensor(&[1, 7], vec![0.0; 7]))])).await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(v2.model_infer(v2_req(nc, vec![1, 7], vec![0.0; 7])).await.unwrap_err().code(), Code::InvalidArgument);
    let body = json!({"instances": [[1.0, 2.0, 3.0]]}).to_string();
    assert_eq!(post_json(rest, "/v1/models/numbers_classifier:predict", &body).await, 400);
    assert_eq!(post_json(rest, "/v2/models/numbers_classifier/infer", &v2_json(&[1, 7], &[0.0; 7])).await, 400);
    let unknown = predict_req("no_such_model", None, vec![("x", f32_tensor(&[1, 8], features(1)))]);
    assert_eq!(tf.clone().predict(unknown).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        v2.model_infer(v2_req("no_such_model", vec![1, 8], features(1))).await.unwrap_err().code(),
        Code::NotFound
    );
    let body = json!({"instances": [features(1)]}).to_string();
    assert_eq!(post_json(rest, "/v1/models/no_such_model:predict", &body).await, 404);
    assert_eq!(post_json(rest, "/v2/models/no_such_model/infer", &v2_json(&[1, 8], &features(1))).await, 404);
    // A body that is not JSON fails before any model is resolved: model_name="".
    assert_eq!(post_json(rest, "/v1/models/numbers_classifier:predict", "{not json").await, 400);
    // Metadata and status calls are not inference requests.
    assert_eq!(get(rest, "/v1/models/numbers_classifier").await.0, 200);
    assert_eq!(get(rest, "/v2/models/numbers_classifier").await.0, 200);

    // Refusals: two slow requests hold --max-in-flight-requests=2 (one runs, one waits for the
    // session); then one more over TF gRPC and one over v2 REST are refused.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let mut c = tf.clone();
            tokio::spawn(async move { c.predict(predict_req("slow", None, vec![("x", slow_input())])).await })
        })
        .collect();
    let s = scrape_until(rest, "two slow requests in flight", |s| {
        s.value("maas_inflight_requests", &[("model", "slow")]) == Some(2.0)
            && s.value("maas_queue_depth", &[("model", "slow")]) == Some(1.0)
    })
    .await;
    assert_eq!(s.get("nv_inference_pending_request_count", &[("model", "slow"), ("version", "1")]), 1.0);
    let refused = tf.clone().predict(predict_req("slow", None, vec![("x", slow_input())])).await;
    assert_eq!(refused.unwrap_err().code(), Code::ResourceExhausted);
    let small: Vec<f32> = vec![0.5; 256];
    assert_eq!(post_json(rest, "/v2/models/slow/infer", &v2_json(&[1, 256], &small)).await, 429);
    for h in held {
        h.await.unwrap().unwrap();
    }
    // A deadline that passes: one slow request runs, a second waits for the session beyond its deadline.
    let holder = {
        let mut c = tf.clone();
        tokio::spawn(async move { c.predict(predict_req("slow", None, vec![("x", slow_input())])).await })
    };
    scrape_until(rest, "the holder running", |s| {
        s.value("maas_inflight_requests", &[("model", "slow")]) == Some(1.0)
            && s.value("maas_queue_depth", &[("model", "slow")]) == Some(0.0)
    })
    .await;
    let mut req = tonic::Request::new(v2_req("slow", vec![1, 256], small));
    req.set_timeout(Duration::from_millis(20));
    let late = v2.model_infer(req).await.unwrap_err();
    assert!(matches!(late.code(), Code::DeadlineExceeded | Code::Cancelled), "{late:?}");
    holder.await.unwrap().unwrap();

    let s = scrape_until(rest, "every request finished", |s| {
        s.value("maas_inflight_requests", &[("model", "slow")]) == Some(0.0)
            && s.value(":tensorflow:serving:request_count", &[("model_name", "slow"), ("status", "DEADLINE_EXCEEDED")])
                == Some(1.0)
    })
    .await;
    let count = |model: &str, status: &str| {
        s.get(":tensorflow:serving:request_count", &[("model_name", model), ("status", status)])
    };
    assert_eq!(count(nc, "OK"), 8.0);
    assert_eq!(count(nc, "INVALID_ARGUMENT"), 4.0);
    assert_eq!(count("", "NOT_FOUND"), 4.0);
    assert_eq!(count("", "INVALID_ARGUMENT"), 1.0);
    assert_eq!(count("slow", "OK"), 3.0);
    assert_eq!(count("slow", "RESOURCE_EXHAUSTED"), 2.0);
    assert_eq!(count("slow", "DEADLINE_EXCEEDED"), 1.0);
    let statuses = s.samples.iter().filter(|(n, _, _)| n == ":tensorflow:serving:request_count").count();
    assert_eq!(statuses, 7, "no other status was counted");

    for (api, entrypoint, protocol, maas_api) in [
        ("Predict", "GRPC", "grpc", "predict"),
        ("predict", "REST", "rest", "predict"),
        ("ModelInfer", "GRPC", "grpc", "infer"),
        ("infer", "REST", "rest", "infer"),
    ] {
        let l = [("model_name", nc), ("API", api), ("entrypoint", entrypoint)];
        assert_eq!(s.get(":tensorflow:serving:request_latency_count", &l), 2.0, "{api}");
        let l = [("model_name", nc), ("API", api), ("runtime", "ONNXRuntime")];
        assert_eq!(s.get(":tensorflow:serving:runtime_latency_count", &l), 2.0, "{api}");
        let l = [("model", nc), ("version", "1"), ("protocol", protocol), ("api", maas_api)];
        assert_eq!(s.get("maas_request_duration_seconds_count", &l), 2.0, "{api}");
    }
    let v = |model: &'static str| [("model", model), ("version", "1")];
    let failure = |model: &'static str, reason: &'static str| {
        s.get("nv_inference_request_failure", &[("model", model), ("version", "1"), ("reason", reason)])
    };
    assert_eq!(s.get("nv_inference_request_success", &v(nc)), 8.0);
    assert_eq!(s.get("nv_inference_count", &v(nc)), 12.0, "rows: 4 x (2 + 1)");
    assert_eq!(s.get("nv_inference_exec_count", &v(nc)), 8.0);
    assert_eq!(
        (failure(nc, "OTHER"), failure(nc, "REJECTED"), failure(nc, "CANCELED"), failure(nc, "BACKEND")),
        (4.0, 0.0, 0.0, 0.0)
    );
    assert_eq!(s.get("nv_inference_request_success", &v("slow")), 3.0);
    assert_eq!(s.get("nv_inference_count", &v("slow")), 192.0);
    assert_eq!(s.get("nv_inference_exec_count", &v("slow")), 3.0, "the expired request never ran");
    assert_eq!((failure("slow", "REJECTED"), failure("slow", "CANCELED"), failure("slow", "OTHER")), (2.0, 1.0, 0.0));
    for model in [nc, "slow"] {
        let us = |stage: &str| s.get(&format!("nv_inference_{stage}_duration_us"), &v(model));
        assert!(us("compute_infer") > 0.0 && us("request") >= us("compute_infer"), "{model}");
        assert!(us("request") >= us("queue") && us("request") >= us("compute_input"), "{model}");
        assert_eq!(s.get("nv_inference_pending_request_count", &v(model)), 0.0);
        assert_eq!(s.get("maas_model_state", &[("model", model), ("version", "1"), ("state", "AVAILABLE")]), 1.0);
        assert_eq!(s.get("maas_model_state", &[("model", model), ("version", "1"), ("state", "LOADING")]), 0.0);
        assert_eq!(
            s.get(
                "maas_execution_provider_info",
                &[("model", model), ("version", "1"), ("provider", "CPUExecutionProvider")]
            ),
            1.0
        );
        assert!(s.get("nv_model_load_duration_secs", &v(model)) > 0.0);
        assert_eq!(s.get("maas_model_load_duration_seconds_count", &[("model", model)]), 1.0);
    }
    assert!(s.get("nv_inference_queue_duration_us", &v("slow")) > 0.0, "the second held request waited");
    assert_eq!(s.get("maas_build_info", &[("version", env!("CARGO_PKG_VERSION")), ("ort_version", "1.31.1")]), 1.0);
    assert!(s.get("maas_repository_polls_total", &[("result", "ok")]) >= 2.0);
    assert!(s.get("nv_cpu_memory_total_bytes", &[]) >= s.get("nv_cpu_memory_used_bytes", &[]));
    assert!((0.0..=1.0).contains(&s.get("nv_cpu_utilization", &[])));
    // Golden lines, byte for byte.
    for line in [
        "# TYPE :tensorflow:serving:request_count counter",
        "# TYPE :tensorflow:serving:request_latency histogram",
        ":tensorflow:serving:request_count{model_name=\"numbers_classifier\",status=\"OK\"} 8",
        ":tensorflow:serving:request_count{model_name=\"\",status=\"NOT_FOUND\"} 4",
        ":tensorflow:serving:request_latency_bucket{model_name=\"numbers_classifier\",API=\"Predict\",entrypoint=\"GRPC\",le=\"2.52873e+08\"} 2",
        ":tensorflow:serving:request_latency_bucket{model_name=\"numbers_classifier\",API=\"Predict\",entrypoint=\"GRPC\",le=\"+Inf\"} 2",
        ":tensorflow:serving:request_latency_count{model_name=\"numbers_classifier\",API=\"Predict\",entrypoint=\"GRPC\"} 2",
        "# TYPE nv_inference_request_success counter",
        "nv_inference_request_failure{model=\"slow\",version=\"1\",reason=\"REJECTED\"} 2",
        "maas_inflight_requests{model=\"slow\"} 0",
    ] {
        assert!(s.text.lines().any(|l| l == line), "missing line {line}\nin\n{}", s.text);
    }
    let le: Vec<&str> = s
        .text
        .lines()
        .filter(|l| {
            l.starts_with(":tensorflow:serving:request_latency_bucket{model_name=\"numbers_classifier\",API=\"infer\"")
        })
        .map(|l| l.split("le=\"").nth(1).unwrap().split('"').next().unwrap())
        .collect();
    assert_eq!(le.len(), 34);
    assert_eq!(&le[..10], ["10", "18", "32.4", "58.32", "104.976", "188.957", "340.122", "612.22", "1102", "1983.59"]);
    check_histograms(&s);
    check_parsers(&s.text).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_runs_fewer_executions_than_inferences() {
    let dir = repo(&["numbers_classifier"]);
    let mut cfg = test_config(dir.path());
    cfg.manager.runtime.pool_size = 1;
    cfg.manager.runtime.batching = Some(maas::runtime::BatchingConfig {
        max_batch_size: 8,
        batch_timeout: Duration::from_millis(100),
        num_batch_threads: Some(1),
        ..Default::default()
    });
    let server = TestServer::ready(cfg).await;
    let client = server.predict_client().await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let mut c = client.clone();
            let req = predict_req("numbers_classifier", None, vec![("x", classifier_input(1, i))]);
            tokio::spawn(async move { c.predict(req).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let s = scrape(server.rest_addr).await;
    let v = [("model", "numbers_classifier"), ("version", "1")];
    assert_eq!(s.get("nv_inference_request_success", &v), 16.0);
    assert_eq!(s.get("nv_inference_count", &v), 16.0);
    let execs = s.get("nv_inference_exec_count", &v);
    assert!((2.0..16.0).contains(&execs), "16 rows in batches of at most 8: {execs} runs");
    let q = [("thread_pool_name", "batch_threads")];
    assert_eq!(s.get(":tensorflow:serving:batching_session:queuing_latency_count", &q), 16.0);
    assert_eq!(s.get("nv_inference_pending_request_count", &v), 0.0);
    assert!(s.get("nv_inference_queue_duration_us", &v) > 0.0);
    check_histograms(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_config_path_and_metrics_port() {
    use clap::Parser;
    let dir = repo(&["numbers_classifier"]);
    let file = dir.path().join("monitoring.config");
    std::fs::write(&file, "prometheus_config {\n  enable: true,\n  path: \"/monitoring/prometheus/metrics\"\n}\n")
        .unwrap();
    let argv = ["maas", "serve", "--model-repository", dir.path().to_str().unwrap(), "--monitoring_config_file"];
    let cli = maas::config::Cli::try_parse_from(argv.iter().copied().chain([file.to_str().unwrap()])).unwrap();
    let maas::config::Command::Serve(args) = cli.command else { panic!("serve") };
    let cfg: ServeConfig = args.to_config().unwrap();
    assert_eq!(cfg.monitoring_path.as_deref(), Some("/monitoring/prometheus/metrics"));
    let (server, metrics) = TestServer::ready_with_metrics_port(cfg).await;
    server
        .predict_client()
        .await
        .predict(predict_req("numbers_classifier", None, vec![("x", classifier_input(1, 0))]))
        .await
        .unwrap();
    for (addr, path) in [
        (server.rest_addr, "/metrics"),
        (server.rest_addr, "/monitoring/prometheus/metrics"),
        (metrics, "/metrics"),
        (metrics, "/monitoring/prometheus/metrics"),
    ] {
        let (status, ct, body) = get(addr, path).await;
        assert_eq!((status, ct.as_str()), (200, "text/plain; version=0.0.4"), "{addr}{path}");
        let s = Scrape::parse(body);
        assert_eq!(
            s.get(":tensorflow:serving:request_count", &[("model_name", "numbers_classifier"), ("status", "OK")]),
            1.0
        );
    }
    // The monitoring path goes through the REST port's layers as /metrics (here: the request id).
    for path in ["/metrics", "/monitoring/prometheus/metrics"] {
        let r = reqwest::get(format!("http://{}{path}", server.rest_addr)).await.unwrap();
        assert!(r.headers().contains_key("x-request-id"), "{path}: {:?}", r.headers());
    }
    // The metrics port serves nothing else; the REST port still serves everything else.
    assert_eq!(get(metrics, "/v1/models/numbers_classifier").await.0, 404);
    assert_eq!(get(server.rest_addr, "/v1/models/numbers_classifier").await.0, 200);
    assert_eq!(get(server.rest_addr, "/healthz").await.0, 200);

    // The binary: --metrics-port and --monitoring-config-file on real ports.
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (rest_port, metrics_port) = (free(), free());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_maas"))
        .args(["serve", "--host", "127.0.0.1", "--port", "0", "--rest-api-port", &rest_port.to_string()])
        .args(["--metrics-port", &metrics_port.to_string(), "--monitoring-config-file", file.to_str().unwrap()])
        .arg("--model-repository")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let metrics_addr: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let rest_addr: SocketAddr = format!("127.0.0.1:{rest_port}").parse().unwrap();
    let ok = wait_for(60, "the binary's metrics port", || async {
        let r = reqwest::get(format!("http://{metrics_addr}/metrics")).await.ok()?;
        let text = r.text().await.ok()?;
        text.contains("maas_model_state{model=\"numbers_classifier\",version=\"1\",state=\"AVAILABLE\"} 1")
            .then_some(())
    })
    .await;
    let rest_ok = get(rest_addr, "/monitoring/prometheus/metrics").await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!((ok, rest_ok.0), ((), 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_versions_do_not_grow_the_exposition() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("m");
    let bytes = std::fs::read(fixtures().join("numbers_classifier/1/model.onnx")).unwrap();
    publish(&model_dir, 1, &bytes);
    let server = TestServer::ready(test_config(dir.path())).await;
    let client = server.predict_client().await;
    let mut sizes = Vec::new();
    for v in 1..=50i64 {
        if v > 1 {
            publish(&model_dir, v, &bytes);
        }
        wait_for(60, &format!("version {v} alone AVAILABLE"), || async {
            (available(&server, "m").await == vec![v]).then_some(())
        })
        .await;
        client.clone().predict(predict_req("m", Some(v), vec![("x", classifier_input(1, 0))])).await.unwrap();
        let old = format!("version=\"{}\"", v - 1);
        let s = scrape_until(server.rest_addr, &format!("version {} gone", v - 1), |s| !s.text.contains(&old)).await;
        let versions = s.text.lines().filter(|l| l.contains("version=\"")).count();
        assert!(s.text.contains(&format!("nv_inference_request_success{{model=\"m\",version=\"{v}\"}} 1")));
        sizes.push((versions, s.text.lines().count()));
    }
    // Same per-version series at every step; the whole exposition does not grow either (the one
    // model's TF Serving counters and load histogram only change values).
    assert!(sizes.iter().all(|&(n, _)| n == sizes[0].0), "{sizes:?}");
    assert!(sizes[1..].iter().all(|&(_, n)| n == sizes[1].1), "{sizes:?}");
    let s = scrape(server.rest_addr).await;
    assert_eq!(s.get(":tensorflow:serving:request_count", &[("model_name", "m"), ("status", "OK")]), 50.0);
    assert_eq!(s.get("maas_model_load_duration_seconds_count", &[("model", "m")]), 50.0);
}

/// Metric names a PromQL expression uses: identifiers that start a selector, and every maas,
/// Triton or TF Serving name.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i += 1 + chars[i + 1..].iter().position(|&c| c == '"').unwrap_or(chars.len());
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let selector = chars.get(i) == Some(&'{') || chars.get(i) == Some(&'[');
            if selector || word.starts_with("maas_") || word.starts_with("nv_") || word.starts_with(":tensorflow:") {
                names.push(word);
            }
            continue;
        }
        i += 1;
    }
    names
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x) {
                    ("expr" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_exported_names() {
    let path = repo_root().join("deploy/grafana/maas-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 7), "panels");
    assert!(dashboard["title"].is_string() && dashboard["schemaVersion"].is_number());
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    let names: Vec<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    assert!(names.len() >= 10, "{queries:?}");

    let dir = repo(&["numbers_classifier"]);
    let server = TestServer::ready(test_config(dir.path())).await;
    let s = scrape(server.rest_addr).await;
    let families = s.families();
    let exported = |n: &str| {
        families.get(n).is_some_and(|t| t != "histogram")
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                n.strip_suffix(suffix).is_some_and(|base| families.get(base).is_some_and(|t| t == "histogram"))
            })
    };
    let missing: Vec<&String> = names.iter().filter(|n| !exported(n)).collect();
    assert!(missing.is_empty(), "the dashboard queries names maas does not export: {missing:?}");
    for want in ["maas_queue_depth", "maas_inflight_requests", "maas_model_state", "nv_model_load_duration_secs"] {
        assert!(names.iter().any(|n| n == want), "the dashboard has no {want} panel");
    }
    assert!(metric_names("sum(rate(x_total{a=\"b{c\"}[5m])) by (le)") == vec!["x_total".to_string()]);
}
