//! Shared test harness: a real maas server task on 127.0.0.1:<ephemeral>, real ONNX Runtime, real
//! tonic clients.
#![allow(dead_code)]

use maas::proto::tensorflow::serving::model_service_client::ModelServiceClient;
use maas::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient;
use maas::proto::tensorflow::serving::{model_spec::VersionChoice, ModelSpec, PredictRequest};
use maas::proto::tensorflow::{tensor_shape_proto::Dim, DataType, TensorProto, TensorShapeProto};
use maas::ServeConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

pub fn ort_env() -> &'static ort::environment::Environment {
    maas::runtime::env::init(None).unwrap_or_else(|e| panic!("ONNX Runtime is needed for these tests: {e}"))
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The test fixture repository (tests/fixtures/repo).
pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures/repo")
}

/// The bundled model repository.
pub fn bundled() -> PathBuf {
    repo_root().join("model_repository")
}

pub struct TestServer {
    pub addr: SocketAddr,
    /// The REST (HTTP) port.
    pub rest_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl TestServer {
    /// Starts a server task on an ephemeral port (does not wait for models).
    pub async fn start(cfg: ServeConfig) -> TestServer {
        let env = ort_env();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rest_addr = rest.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(maas::server::serve(cfg, env, listener, Some(rest), async move {
            let _ = rx.await;
        }));
        TestServer { addr, rest_addr, shutdown: Some(tx), handle: Some(handle) }
    }

    /// Like [`TestServer::ready`], also serving the metrics on a port of their own (`--metrics-port`),
    /// whose address is returned.
    pub async fn ready_with_metrics_port(cfg: ServeConfig) -> (TestServer, SocketAddr) {
        let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let (listener, rest, metrics) = (bind().await.unwrap(), bind().await.unwrap(), bind().await.unwrap());
        let (addr, rest_addr, metrics_addr) =
            (listener.local_addr().unwrap(), rest.local_addr().unwrap(), metrics.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let serve = maas::server::serve_with_metrics(cfg, ort_env(), listener, Some(rest), Some(metrics), async move {
            let _ = rx.await;
        });
        let s = TestServer { addr, rest_addr, shutdown: Some(tx), handle: Some(tokio::spawn(serve)) };
        s.wait_serving().await;
        (s, metrics_addr)
    }

    /// Starts a server and waits until its health is SERVING (initial models loaded).
    pub async fn ready(cfg: ServeConfig) -> TestServer {
        let s = TestServer::start(cfg).await;
        s.wait_serving().await;
        s
    }

    pub async fn channel(&self) -> Channel {
        let url = format!("http://{}", self.addr);
        for _ in 0..100 {
            if let Ok(ch) = Channel::from_shared(url.clone()).unwrap().connect().await {
                return ch;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("could not connect to {url}");
    }

    pub async fn predict_client(&self) -> PredictionServiceClient<Channel> {
        PredictionServiceClient::new(self.channel().await).max_decoding_message_size(64 << 20)
    }

    pub async fn model_client(&self) -> ModelServiceClient<Channel> {
        ModelServiceClient::new(self.channel().await)
    }

    pub async fn health(&self, service: &str) -> ServingStatus {
        let mut c = HealthClient::new(self.channel().await);
        let r = c.check(HealthCheckRequest { service: service.to_string() }).await.unwrap();
        r.into_inner().status()
    }

    pub async fn wait_serving(&self) {
        for _ in 0..600 {
            if self.health("").await == ServingStatus::Serving {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server did not become SERVING within 30 s");
    }

    /// Triggers graceful shutdown and waits for the server task to return.
    pub async fn stop(mut self) -> Result<(), String> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let handle = self.handle.take().unwrap();
        tokio::time::timeout(Duration::from_secs(60), handle).await.expect("server did not stop").unwrap()
    }

    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn join(mut self) -> Result<(), String> {
        let handle = self.handle.take().unwrap();
        tokio::time::timeout(Duration::from_secs(60), handle).await.expect("server did not stop").unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn spec(name: &str, version: Option<i64>) -> ModelSpec {
    ModelSpec {
        name: name.to_string(),
        signature_name: String::new(),
        version_choice: version.map(VersionChoice::Version),
    }
}

pub fn shape(dims: &[i64]) -> Option<TensorShapeProto> {
    Some(TensorShapeProto {
        dim: dims.iter().map(|&size| Dim { size, name: String::new() }).collect(),
        unknown_rank: false,
    })
}

pub fn dims(t: &TensorProto) -> Vec<i64> {
    t.tensor_shape.as_ref().map(|s| s.dim.iter().map(|d| d.size).collect()).unwrap_or_default()
}

pub fn f32_tensor(dims: &[i64], vals: Vec<f32>) -> TensorProto {
    TensorProto { dtype: DataType::DtFloat as i32, tensor_shape: shape(dims), float_val: vals, ..Default::default() }
}

pub fn predict_req(model: &str, version: Option<i64>, inputs: Vec<(&str, TensorProto)>) -> PredictRequest {
    PredictRequest {
        model_spec: Some(spec(model, version)),
        inputs: inputs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        ..Default::default()
    }
}

/// The 8-feature input of numbers_classifier for `rows` rows, distinct per `seed`.
pub fn classifier_input(rows: usize, seed: usize) -> TensorProto {
    let vals: Vec<f32> = (0..rows * 8).map(|i| (((i + seed * 13) % 17) as f32 - 8.0) / 4.0).collect();
    f32_tensor(&[rows as i64, 8], vals)
}

/// Server defaults for tests: every model under `repo`, scanned every 100 ms.
pub fn test_config(repo: impl Into<PathBuf>) -> ServeConfig {
    let mut cfg = ServeConfig::new(repo);
    cfg.manager.poll_interval = Some(Duration::from_millis(100));
    cfg
}

/// Bytes of the rollout fixture whose output is `x + k`.
pub fn offset_model(k: i64) -> Vec<u8> {
    std::fs::read(repo_root().join(format!("tests/fixtures/rollout/v{k}.onnx"))).unwrap()
}

/// Publishes `bytes` as `<model_dir>/<version>/model.onnx` the safe way: write a hidden temp
/// directory, then rename it into place.
pub fn publish(model_dir: &std::path::Path, version: i64, bytes: &[u8]) {
    let tmp = model_dir.join(format!(".tmp-{version}"));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("model.onnx"), bytes).unwrap();
    std::fs::rename(&tmp, model_dir.join(version.to_string())).unwrap();
}

/// Polls `f` every 20 ms until it returns Some, or panics after `secs` seconds naming `what`.
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// x = [[0.0]] for the rollout models (y = x + k): the answer is the version's k.
pub fn offset_req(model: &str, version: Option<i64>) -> PredictRequest {
    predict_req(model, version, vec![("x", f32_tensor(&[1, 1], vec![0.0]))])
}

/// (state, error code, message) per version, from GetModelStatus.
pub async fn version_states(server: &TestServer, model: &str) -> Vec<(i64, i32, i32, String)> {
    use maas::proto::tensorflow::serving::GetModelStatusRequest;
    match server
        .model_client()
        .await
        .get_model_status(GetModelStatusRequest { model_spec: Some(spec(model, None)) })
        .await
    {
        Ok(r) => r
            .into_inner()
            .model_version_status
            .into_iter()
            .map(|v| {
                let st = v.status.unwrap_or_default();
                (v.version, v.state, st.error_code, st.error_message)
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The versions of `model` in state AVAILABLE.
pub async fn available(server: &TestServer, model: &str) -> Vec<i64> {
    use maas::proto::tensorflow::serving::model_version_status::State;
    version_states(server, model).await.into_iter().filter(|v| v.1 == State::Available as i32).map(|v| v.0).collect()
}
