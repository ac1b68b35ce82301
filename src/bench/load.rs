//! `maas bench load`: a closed-loop gRPC load generator. N clients share K HTTP/2 connections (tonic
//! channels) and send TF Serving `PredictionService/Predict` or KServe v2
//! `GRPCInferenceService/ModelInfer` back to back: each client sends its next request as soon as the
//! previous answer arrives.
use super::report::{Cpu, Recorder, Report};
use super::synth::synthesize_with;
use super::{
    check_counts, error_chain, is_text_format, process_cpu_time, sample_usage, thread_context_switches, Window,
};
use crate::api::tf_tensor::{dtype_from_tf, encode as tf_encode};
use crate::api::v2_tensor::encode_raw;
use crate::api::v2_types::{dtype_from_v2, dtype_to_v2};
use crate::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::proto::inference::model_infer_request::InferInputTensor;
use crate::proto::inference::{ModelInferRequest, ModelMetadataRequest};
use crate::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient;
use crate::proto::tensorflow::serving::{
    model_spec::VersionChoice, GetModelMetadataRequest, ModelSpec, PredictRequest, SignatureDefMap,
};
use crate::tensor::{fmt_shape, Tensor, TensorSpec};
use clap::{Args, ValueEnum};
use prost::Message;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

/// The signature maas gives every ONNX model.
const SIGNATURE: &str = "serving_default";

/// Which gRPC API to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// TensorFlow Serving `PredictionService/Predict`, inputs in `tensor_content`.
    Tf,
    /// KServe v2 `GRPCInferenceService/ModelInfer`, inputs in `raw_input_contents`.
    V2,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Tf => "tf",
            Protocol::V2 => "v2",
        }
    }
}

/// Flags of `maas bench load`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The server's gRPC address.
    #[arg(long, default_value = "127.0.0.1:8500", value_name = "HOST:PORT")]
    pub address: String,

    /// Model to drive (with --request-file: overrides the model named in the file).
    #[arg(long, value_name = "NAME", required_unless_present = "request_file")]
    pub model: Option<String>,

    /// Model version (default: the server's latest).
    #[arg(long, value_name = "N")]
    pub version: Option<i64>,

    /// tf: TF Serving Predict (tensor_content); v2: KServe v2 ModelInfer (raw_input_contents).
    #[arg(long, value_enum, default_value_t = Protocol::Tf)]
    pub protocol: Protocol,

    /// Concurrent clients, each sending its next request when the previous one is answered.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub concurrency: usize,

    /// HTTP/2 connections the clients share (client i uses connection i mod K).
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub connections: usize,

    /// Length of the measured window.
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    pub seconds: f64,

    /// Load before the measured window (not counted).
    #[arg(long, default_value_t = 1.0, value_name = "W")]
    pub warmup_seconds: f64,

    /// Value of a dynamic first (batch) dimension of the synthesized inputs.
    #[arg(long, default_value_t = 1, value_name = "R", conflicts_with = "request_file")]
    pub rows: i64,

    /// Value of every other dynamic dimension of the synthesized inputs (e.g. a sequence length).
    #[arg(long, default_value_t = 1, value_name = "S", conflicts_with = "request_file")]
    pub seq: i64,

    /// Send this request instead of synthesized inputs: a serialized PredictRequest (--protocol tf)
    /// or ModelInferRequest (--protocol v2), binary (.pb) or protobuf text format (.pbtxt, .txt,
    /// .textproto, .prototxt).
    #[arg(long, value_name = "FILE")]
    pub request_file: Option<PathBuf>,

    /// The server's process id: report its CPU time per request, its CPU utilisation and its context
    /// switches per request during the measured window (utime + stime from /proc/PID/stat; voluntary
    /// and involuntary switches summed over /proc/PID/task/*/status).
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,

    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,

    /// Threads of the load generator's async runtime (0 = the CPUs this process may use, which
    /// `taskset` restricts).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
}

#[derive(Clone)]
enum Client {
    Tf(PredictionServiceClient<Channel>, Arc<PredictRequest>),
    V2(GrpcInferenceServiceClient<Channel>, Arc<ModelInferRequest>),
}

impl Client {
    fn new(channel: Channel, request: &Request) -> Client {
        match request {
            Request::Tf(r) => Client::Tf(
                PredictionServiceClient::new(channel)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
                Arc::clone(r),
            ),
            Request::V2(r) => Client::V2(
                GrpcInferenceServiceClient::new(channel)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
                Arc::clone(r),
            ),
        }
    }

    async fn call(&mut self) -> Result<(), Status> {
        match self {
            Client::Tf(c, r) => c.predict(PredictRequest::clone(r)).await.map(drop),
            Client::V2(c, r) => c.model_infer(ModelInferRequest::clone(r)).await.map(drop),
        }
    }
}

/// The request every client sends.
enum Request {
    Tf(Arc<PredictRequest>),
    V2(Arc<ModelInferRequest>),
}

impl Request {
    fn model(&self) -> &str {
        match self {
            Request::Tf(r) => r.model_spec.as_ref().map_or("", |s| s.name.as_str()),
            Request::V2(r) => &r.model_name,
        }
    }

    /// `name dtype [shape]` per input, for the report.
    fn describe_inputs(&self) -> Vec<String> {
        match self {
            Request::Tf(r) => {
                let mut v: Vec<String> = r
                    .inputs
                    .iter()
                    .map(|(name, t)| {
                        let dtype =
                            dtype_from_tf(t.dtype).map_or_else(|| format!("DataType {}", t.dtype), |d| d.to_string());
                        let shape: Vec<i64> =
                            t.tensor_shape.as_ref().map(|s| s.dim.iter().map(|d| d.size).collect()).unwrap_or_default();
                        format!("{name} {dtype} {}", fmt_shape(&shape))
                    })
                    .collect();
                v.sort();
                v
            }
            Request::V2(r) => {
                r.inputs.iter().map(|t| format!("{} {} {}", t.name, t.datatype, fmt_shape(&t.shape))).collect()
            }
        }
    }
}

/// Runs the load and returns its report.
pub fn run(a: &LoadArgs) -> Result<Report, String> {
    check_counts(a.concurrency, a.rows)?;
    if a.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if let Some(pid) = a.server_pid {
        process_cpu_time(pid).map_err(|e| format!("--server-pid {pid}: {e}"))?;
        thread_context_switches(pid).map_err(|e| format!("--server-pid {pid}: {e}"))?;
    }
    let threads = match a.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .thread_name("maas-bench")
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(run_async(a))
}

async fn run_async(a: &LoadArgs) -> Result<Report, String> {
    let uri = if a.address.contains("://") { a.address.clone() } else { format!("http://{}", a.address) };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| format!("--address {} is not HOST:PORT: {}", a.address, error_chain(&e)))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(a.connections);
    for _ in 0..a.connections {
        // Each connect() opens its own HTTP/2 connection.
        let ch =
            endpoint.connect().await.map_err(|e| format!("cannot connect to {}: {}", a.address, error_chain(&e)))?;
        channels.push(ch);
    }
    let request = match &a.request_file {
        Some(path) => read_request(path, a)?,
        None => {
            let model = a.model.clone().unwrap_or_default();
            let specs = match a.protocol {
                Protocol::Tf => tf_specs(&channels[0], &model, a.version, &a.address).await?,
                Protocol::V2 => v2_specs(&channels[0], &model, a.version, &a.address).await?,
            };
            let tensors = synthesize_with(&specs, a.rows, a.seq).map_err(|e| format!("model '{model}': {e}"))?;
            build_request(a.protocol, &model, a.version, tensors)
        }
    };
    let model = request.model().to_string();
    if model.is_empty() {
        return Err(format!("{} names no model; pass --model", request_what(a)));
    }
    // One request first, so that a request the server refuses is reported once, precisely.
    Client::new(channels[0].clone(), &request).call().await.map_err(|s| {
        format!(
            "the first request to model '{model}' on {} failed: {}: {}",
            a.address,
            code_name(s.code()),
            status_message(&s)
        )
    })?;

    let window = Window::new(a.warmup_seconds, a.seconds)?;
    let cpu = a.server_pid.map(|pid| (pid, sample_usage(pid, window)));
    let mut tasks = Vec::with_capacity(a.concurrency);
    for i in 0..a.concurrency {
        let mut client = Client::new(channels[i % channels.len()].clone(), &request);
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::new()?;
            loop {
                let sent = Instant::now();
                if sent >= window.end {
                    break;
                }
                let result = client.call().await;
                let done = Instant::now();
                match result {
                    Ok(()) if window.measures(done) => rec.success(done - sent),
                    Ok(()) => {}
                    Err(s) => rec.error(code_name(s.code()), || status_message(&s)),
                }
            }
            Ok::<Recorder, String>(rec)
        }));
    }
    let mut all = Recorder::new()?;
    for t in tasks {
        let rec = t.await.map_err(|e| format!("a client task failed: {e}"))??;
        all.merge(rec)?;
    }
    let cpu = match cpu {
        Some((pid, sampler)) => {
            let used = tokio::task::spawn_blocking(move || sampler.join())
                .await
                .map_err(|e| format!("the CPU sampler failed: {e}"))?
                .map_err(|_| "the CPU sampler thread panicked".to_string())?
                .map_err(|e| format!("--server-pid {pid}: {e} (did the server exit?)"))?;
            Some(Cpu::new("server", pid, used, all.requests(), window.measured()))
        }
        None => None,
    };
    let measured = window.measured().as_secs_f64();
    let errors_by_code = all.error_counts();
    Ok(Report {
        bench: "load",
        model,
        target: a.address.clone(),
        protocol: Some(a.protocol.name()),
        concurrency: a.concurrency,
        connections: Some(a.connections),
        sessions: None,
        rows: a.request_file.is_none().then_some(a.rows),
        inputs: request.describe_inputs(),
        warmup_seconds: a.warmup_seconds,
        seconds: measured,
        requests: all.requests(),
        requests_per_second: all.requests() as f64 / measured,
        latency_us: all.latency(),
        errors: errors_by_code.iter().map(|e| e.count).sum(),
        errors_by_code,
        cpu,
        json: a.json,
    })
}

fn request_what(a: &LoadArgs) -> String {
    match &a.request_file {
        Some(p) => format!("--request-file {}", p.display()),
        None => "the request".into(),
    }
}

fn model_spec(model: &str, version: Option<i64>) -> ModelSpec {
    ModelSpec {
        name: model.to_string(),
        signature_name: String::new(),
        version_choice: version.map(VersionChoice::Version),
    }
}

fn which(model: &str, version: Option<i64>) -> String {
    match version {
        Some(v) => format!("model '{model}' version {v}"),
        None => format!("model '{model}'"),
    }
}

/// Input specs from TF Serving GetModelMetadata (signature `serving_default`).
async fn tf_specs(ch: &Channel, model: &str, version: Option<i64>, address: &str) -> Result<Vec<TensorSpec>, String> {
    let what = which(model, version);
    let mut c = PredictionServiceClient::new(ch.clone()).max_decoding_message_size(usize::MAX);
    let resp = c
        .get_model_metadata(GetModelMetadataRequest {
            model_spec: Some(model_spec(model, version)),
            metadata_field: vec!["signature_def".into()],
        })
        .await
        .map_err(|s| {
            format!("cannot get the metadata of {what} from {address}: {}: {}", code_name(s.code()), status_message(&s))
        })?
        .into_inner();
    let any = resp
        .metadata
        .get("signature_def")
        .ok_or_else(|| format!("GetModelMetadata for {what} returned no signature_def"))?;
    let map = SignatureDefMap::decode(&any.value[..])
        .map_err(|e| format!("GetModelMetadata for {what}: cannot decode its SignatureDefMap: {e}"))?;
    let sig = map.signature_def.get(SIGNATURE).ok_or_else(|| {
        let names: Vec<&String> = map.signature_def.keys().collect();
        format!("{what} has no signature '{SIGNATURE}' (it has {names:?})")
    })?;
    let mut names: Vec<&String> = sig.inputs.keys().collect();
    names.sort();
    let mut specs = Vec::with_capacity(names.len());
    for name in names {
        let info = &sig.inputs[name];
        let dtype = dtype_from_tf(info.dtype).ok_or_else(|| {
            format!("{what}: input '{name}' has DataType {}, which maas bench cannot send", info.dtype)
        })?;
        let shape = info.tensor_shape.clone().unwrap_or_default();
        if shape.unknown_rank {
            return Err(format!("{what}: input '{name}' has an unknown rank; pass --request-file"));
        }
        specs.push(TensorSpec { name: name.clone(), dtype, shape: shape.dim.iter().map(|d| d.size).collect() });
    }
    Ok(specs)
}

/// Input specs from KServe v2 ModelMetadata.
async fn v2_specs(ch: &Channel, model: &str, version: Option<i64>, address: &str) -> Result<Vec<TensorSpec>, String> {
    let what = which(model, version);
    let mut c = GrpcInferenceServiceClient::new(ch.clone()).max_decoding_message_size(usize::MAX);
    let resp = c
        .model_metadata(ModelMetadataRequest {
            name: model.to_string(),
            version: version.map(|v| v.to_string()).unwrap_or_default(),
        })
        .await
        .map_err(|s| {
            format!("cannot get the metadata of {what} from {address}: {}: {}", code_name(s.code()), status_message(&s))
        })?
        .into_inner();
    resp.inputs
        .into_iter()
        .map(|t| {
            let dtype = dtype_from_v2(&t.datatype).ok_or_else(|| {
                format!("{what}: input '{}' has datatype '{}', which maas bench cannot send", t.name, t.datatype)
            })?;
            Ok(TensorSpec { name: t.name, dtype, shape: t.shape })
        })
        .collect()
}

fn build_request(protocol: Protocol, model: &str, version: Option<i64>, tensors: Vec<(String, Tensor)>) -> Request {
    match protocol {
        Protocol::Tf => Request::Tf(Arc::new(PredictRequest {
            model_spec: Some(model_spec(model, version)),
            inputs: tensors.into_iter().map(|(name, t)| (name, tf_encode(t, true))).collect(),
            ..Default::default()
        })),
        Protocol::V2 => {
            let mut inputs = Vec::with_capacity(tensors.len());
            let mut raw = Vec::with_capacity(tensors.len());
            for (name, t) in tensors {
                inputs.push(InferInputTensor {
                    name,
                    datatype: dtype_to_v2(t.dtype).to_string(),
                    shape: t.shape.clone(),
                    ..Default::default()
                });
                raw.push(encode_raw(t));
            }
            Request::V2(Arc::new(ModelInferRequest {
                model_name: model.to_string(),
                model_version: version.map(|v| v.to_string()).unwrap_or_default(),
                inputs,
                raw_input_contents: raw,
                ..Default::default()
            }))
        }
    }
}

/// Reads --request-file; --model and --version override what it names.
fn read_request(path: &Path, a: &LoadArgs) -> Result<Request, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read --request-file {}: {e}", path.display()))?;
    let what = |e: String| format!("--request-file {}: {e}", path.display());
    match a.protocol {
        Protocol::Tf => {
            let mut r: PredictRequest =
                parse_message(path, &bytes, "tensorflow.serving.PredictRequest").map_err(what)?;
            if let Some(m) = &a.model {
                r.model_spec.get_or_insert_with(ModelSpec::default).name = m.clone();
            }
            if let Some(v) = a.version {
                r.model_spec.get_or_insert_with(ModelSpec::default).version_choice = Some(VersionChoice::Version(v));
            }
            Ok(Request::Tf(Arc::new(r)))
        }
        Protocol::V2 => {
            let mut r: ModelInferRequest = parse_message(path, &bytes, "inference.ModelInferRequest").map_err(what)?;
            if let Some(m) = &a.model {
                r.model_name = m.clone();
            }
            if let Some(v) = a.version {
                r.model_version = v.to_string();
            }
            Ok(Request::V2(Arc::new(r)))
        }
    }
}

/// A message from binary protobuf, or from protobuf text format (parsed against the crate's own
/// descriptor set) when the file's extension says so.
fn parse_message<T: Message + Default>(path: &Path, bytes: &[u8], full_name: &str) -> Result<T, String> {
    if !is_text_format(path) {
        return T::decode(bytes).map_err(|e| {
            format!("not a binary {full_name} ({e}); a text-format file needs the extension .pbtxt, .txt, .textproto or .prototxt")
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| format!("text format that is not UTF-8: {e}"))?;
    let pool = prost_reflect::DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| format!("internal error: cannot decode the descriptor set: {e}"))?;
    let desc = pool
        .get_message_by_name(full_name)
        .ok_or_else(|| format!("internal error: {full_name} is not in the descriptor set"))?;
    let msg = prost_reflect::DynamicMessage::parse_text_format(desc, text)
        .map_err(|e| format!("not a text-format {full_name}: {e}"))?;
    msg.transcode_to::<T>().map_err(|e| format!("cannot convert the text-format {full_name}: {e}"))
}

pub use crate::error::code_name;

/// A status's message, with its source (e.g. the transport error) when it has one.
fn status_message(s: &Status) -> String {
    let mut m = s.message().to_string();
    if let Some(src) = std::error::Error::source(s) {
        let c = error_chain(src);
        if !m.contains(&c) {
            if !m.is_empty() {
                m.push_str(": ");
            }
            m.push_str(&c);
        }
    }
    if m.is_empty() {
        m = "(no message)".into();
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_files_binary_and_text() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("r.pbtxt");
        std::fs::write(
            &text,
            r#"model_spec { name: "m" }
               inputs { key: "x" value { dtype: DT_FLOAT tensor_shape { dim { size: 1 } dim { size: 2 } } float_val: [1, 2] } }"#,
        )
        .unwrap();
        let r: PredictRequest =
            parse_message(&text, &std::fs::read(&text).unwrap(), "tensorflow.serving.PredictRequest").unwrap();
        assert_eq!(r.model_spec.as_ref().unwrap().name, "m");
        assert_eq!(r.inputs["x"].float_val, vec![1.0, 2.0]);
        let bin = dir.path().join("r.pb");
        std::fs::write(&bin, r.encode_to_vec()).unwrap();
        let back: PredictRequest =
            parse_message(&bin, &std::fs::read(&bin).unwrap(), "tensorflow.serving.PredictRequest").unwrap();
        assert_eq!(back, r);
        let err =
            parse_message::<PredictRequest>(&text, b"model_spec {", "tensorflow.serving.PredictRequest").unwrap_err();
        assert!(err.starts_with("not a text-format tensorflow.serving.PredictRequest: "), "{err}");
        let v2 = dir.path().join("r.txt");
        std::fs::write(
            &v2,
            r#"model_name: "m" inputs { name: "x" datatype: "FP32" shape: [1] } raw_input_contents: "\000\000\200?""#,
        )
        .unwrap();
        let r: ModelInferRequest =
            parse_message(&v2, &std::fs::read(&v2).unwrap(), "inference.ModelInferRequest").unwrap();
        assert_eq!(r.raw_input_contents[0].as_ref(), 1.0f32.to_le_bytes());
    }

    #[test]
    fn builds_both_protocols() {
        let specs = [TensorSpec { name: "x".into(), dtype: crate::tensor::DType::F32, shape: vec![-1, 8] }];
        let t = synthesize_with(&specs, 3, 1).unwrap();
        let Request::Tf(r) = build_request(Protocol::Tf, "m", Some(2), t.clone()) else { panic!() };
        assert_eq!(r.inputs["x"].tensor_content.len(), 3 * 8 * 4);
        assert_eq!(r.model_spec.as_ref().unwrap().version_choice, Some(VersionChoice::Version(2)));
        let req = build_request(Protocol::V2, "m", None, t);
        assert_eq!(req.describe_inputs(), vec!["x FP32 [3, 8]".to_string()]);
        let Request::V2(r) = req else { panic!() };
        assert_eq!(r.raw_input_contents[0].len(), 3 * 8 * 4);
        assert_eq!(r.model_version, "");
    }
}
