//! `maas bench floor`: the floor under maas's cost per request. A bare tonic server on maas's own
//! service paths (`/tensorflow.serving.PredictionService/Predict`,
//! `/inference.GRPCInferenceService/ModelInfer`) whose unary handlers ignore the request and answer a
//! fixed reply, built once at start: what maas answers for the model, byte for byte the same size.
//!
//! The reply is true, not guessed: the model is loaded once with maas's own loader (its
//! `maas.pbtxt` settings included), one synthesized request (the same inputs `maas bench load`
//! sends, `--rows`/`--seq`) runs on it, and its outputs are encoded the way maas's Predict and
//! ModelInfer encode them (typed `*_val` fields, or `tensor_content` with
//! `--enable-serialization-as-tensor-content`, as for `maas serve`; v2 `raw_output_contents`).
//! The session is dropped before serving: no inference, no decoding of tensors, no model lookup,
//! no statistics, metrics, logging or authentication layers run per request. tonic still decodes
//! the request's protobuf (its codec) before the handler sees it, as it does for maas.
//!
//! Same server as maas otherwise: the same tokio runtime (multi-threaded, one worker per CPU the
//! process may use, so `taskset -c 0` gives one), the same accept loop (`tls::accept`, TCP_NODELAY
//! on every connection), tonic's default `Server::builder()` settings and the same
//! `--max-message-size-bytes` on both services. GetModelMetadata and ModelMetadata answer the
//! model's signature (also fixed), so `maas bench load --model NAME` drives it unchanged.
//!
//! When it listens it prints one line on stdout:
//! `maas bench floor listening addr=HOST:PORT model=NAME version=V tf_reply_bytes=N v2_reply_bytes=M`.
//! It serves until SIGTERM or Ctrl-C.
use super::synth::synthesize_with;
use crate::api::tfserving::{tensor_info, DEFAULT_SIGNATURE, SIGNATURE_DEF_MAP_URL};
use crate::api::v2_types::dtype_to_v2;
use crate::api::{tf_tensor, v2_tensor};
use crate::proto::inference::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use crate::proto::inference::model_infer_response::InferOutputTensor;
use crate::proto::inference::model_metadata_response::TensorMetadata;
use crate::proto::inference::{self as pb};
use crate::proto::tensorflow::serving::prediction_service_server::{PredictionService, PredictionServiceServer};
use crate::proto::tensorflow::serving::{self as tfs, model_spec::VersionChoice, ModelSpec};
use crate::proto::tensorflow::SignatureDef;
use crate::runtime::{RuntimeConfig, Servable};
use crate::tensor::{InferRequest, TensorSpec};
use clap::Args;
use prost::Message;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Flags of `maas bench floor`.
#[derive(Debug, Clone, Args)]
pub struct FloorArgs {
    /// The ONNX model whose answer the floor sends (e.g. REPO/numbers_classifier/1/model.onnx).
    #[arg(long, value_name = "FILE.onnx")]
    pub model_path: PathBuf,

    /// Model name in the replies (default: the directory above the version directory, as in a
    /// repository, else the file name).
    #[arg(long, value_name = "NAME")]
    pub model_name: Option<String>,

    /// Version in the replies (default: the version directory's number, else 1).
    #[arg(long, value_name = "N")]
    pub version: Option<i64>,

    /// Path of libonnxruntime.so (default: $ORT_DYLIB_PATH, then .ort/ as for `maas serve`).
    #[arg(long, alias = "ort_lib", value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1", value_name = "HOST")]
    pub host: String,

    /// Port to listen on (0: any free port; the printed line says which).
    #[arg(long, default_value_t = 0, value_name = "PORT")]
    pub port: u16,

    /// Value of a dynamic first (batch) dimension of the request the reply is computed from (what
    /// `maas bench load --rows` sends).
    #[arg(long, default_value_t = 1, value_name = "R")]
    pub rows: i64,

    /// Value of every other dynamic dimension of that request.
    #[arg(long, default_value_t = 1, value_name = "S")]
    pub seq: i64,

    /// Largest gRPC message received or sent, as `maas serve --max-message-size-bytes`.
    #[arg(long, default_value_t = 1 << 30, value_name = "BYTES")]
    pub max_message_size_bytes: usize,

    /// Predict replies in `tensor_content`, as `maas serve --enable-serialization-as-tensor-content`.
    #[arg(long, alias = "enable_serialization_as_tensor_content")]
    pub enable_serialization_as_tensor_content: bool,
}

/// The fixed replies, built once.
#[derive(Debug, Clone)]
pub struct Replies {
    pub predict: tfs::PredictResponse,
    pub tf_metadata: tfs::GetModelMetadataResponse,
    pub infer: pb::ModelInferResponse,
    pub v2_metadata: pb::ModelMetadataResponse,
}

/// Name and version from a repository path `.../NAME/VERSION/model.onnx`.
fn name_and_version(path: &Path) -> (String, i64) {
    let version_dir = path.parent();
    let version = version_dir.and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse().ok());
    let name = version_dir
        .filter(|_| version.is_some())
        .and_then(|v| v.parent())
        .and_then(|m| m.file_name())
        .or_else(|| path.file_name())
        .unwrap_or(path.as_os_str())
        .to_string_lossy()
        .into_owned();
    (name, version.unwrap_or(1))
}

/// Loads the model with maas's loader, runs one synthesized request and encodes its answer as maas's
/// Predict and ModelInfer do.
pub fn build_replies(a: &FloorArgs) -> Result<Replies, String> {
    super::check_counts(1, a.rows)?;
    if a.seq < 1 {
        return Err(format!("--seq must be at least 1, got {}", a.seq));
    }
    let path = &a.model_path;
    if !path.is_file() {
        return Err(format!("--model-path {} is not a file", path.display()));
    }
    let (derived_name, derived_version) = name_and_version(path);
    let model = a.model_name.clone().unwrap_or(derived_name);
    let version = a.version.unwrap_or(derived_version);
    let env = crate::runtime::env::init(a.ort_lib.as_deref())?;
    let cfg = RuntimeConfig { pool_size: 1, intra_op_threads: 1, inter_op_threads: 1, ..RuntimeConfig::default() };
    let servable = Servable::load(env, &model, version, path, &cfg)
        .map_err(|e| format!("cannot load {}: {}", path.display(), e.message))?;
    let inputs =
        synthesize_with(&servable.signature.inputs, a.rows, a.seq).map_err(|e| format!("model '{model}': {e}"))?;
    let request = InferRequest { inputs, outputs: Vec::new() };
    let answer = servable
        .validate(&request)
        .and_then(|()| servable.run_blocking(&request))
        .map_err(|e| format!("the synthesized request to {} failed: {e}", path.display()))?;

    let spec = ModelSpec {
        name: model.clone(),
        signature_name: DEFAULT_SIGNATURE.to_string(),
        version_choice: Some(VersionChoice::Version(version)),
    };
    let predict = tfs::PredictResponse {
        model_spec: Some(spec.clone()),
        outputs: answer
            .outputs
            .iter()
            .map(|(name, t)| (name.clone(), tf_tensor::encode(t.clone(), a.enable_serialization_as_tensor_content)))
            .collect(),
    };
    let mut outputs = Vec::with_capacity(answer.outputs.len());
    let mut raw_output_contents = Vec::with_capacity(answer.outputs.len());
    for (name, t) in &answer.outputs {
        outputs.push(InferOutputTensor {
            name: name.clone(),
            datatype: dtype_to_v2(t.dtype).to_string(),
            shape: t.shape.clone(),
            parameters: HashMap::new(),
            contents: None,
        });
        raw_output_contents.push(v2_tensor::encode_raw(t.clone()));
    }
    let infer = pb::ModelInferResponse {
        model_name: model.clone(),
        model_version: version.to_string(),
        id: String::new(),
        parameters: HashMap::new(),
        outputs,
        raw_output_contents,
    };

    let sig = &servable.signature;
    let def = SignatureDef {
        inputs: sig.inputs.iter().map(|s| (s.name.clone(), tensor_info(s))).collect(),
        outputs: sig.outputs.iter().map(|s| (s.name.clone(), tensor_info(s))).collect(),
        method_name: "tensorflow/serving/predict".to_string(),
        defaults: HashMap::new(),
    };
    let map = tfs::SignatureDefMap { signature_def: HashMap::from([(DEFAULT_SIGNATURE.to_string(), def)]) };
    let any = prost_types::Any { type_url: SIGNATURE_DEF_MAP_URL.to_string(), value: map.encode_to_vec() };
    let tf_metadata = tfs::GetModelMetadataResponse {
        model_spec: Some(spec),
        metadata: HashMap::from([("signature_def".to_string(), any)]),
    };
    let meta = |s: &TensorSpec| TensorMetadata {
        name: s.name.clone(),
        datatype: dtype_to_v2(s.dtype).to_string(),
        shape: s.shape.clone(),
    };
    let v2_metadata = pb::ModelMetadataResponse {
        name: model,
        versions: vec![version.to_string()],
        platform: crate::api::kserve_grpc::PLATFORM.into(),
        inputs: sig.inputs.iter().map(meta).collect(),
        outputs: sig.outputs.iter().map(meta).collect(),
    };
    Ok(Replies { predict, tf_metadata, infer, v2_metadata })
}

/// Builds the replies and serves them until SIGTERM or Ctrl-C.
pub fn run(a: &FloorArgs) -> Result<(), String> {
    let replies = Arc::new(build_replies(a)?);
    // The runtime of `maas serve`.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("maas-io")
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(serve(a, replies))
}

async fn serve(a: &FloorArgs, replies: Arc<Replies>) -> Result<(), String> {
    let addr = format!("{}:{}", a.host, a.port);
    let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| format!("cannot read the listening address: {e}"))?;
    let floor = Floor(Arc::clone(&replies));
    let max = a.max_message_size_bytes;
    let prediction =
        PredictionServiceServer::new(floor.clone()).max_decoding_message_size(max).max_encoding_message_size(max);
    let inference =
        GrpcInferenceServiceServer::new(floor).max_decoding_message_size(max).max_encoding_message_size(max);
    // maas's accept loop: TCP_NODELAY on, connections handed over a channel.
    let incoming = tokio_stream::StreamExt::map(
        ReceiverStream::new(crate::tls::accept(listener, None, Duration::from_secs(10), "gRPC")),
        Ok::<_, std::io::Error>,
    );
    let model = replies.infer.model_name.as_str();
    let version = replies.infer.model_version.as_str();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "maas bench floor listening addr={local} model={model} version={version} tf_reply_bytes={} v2_reply_bytes={}",
        replies.predict.encoded_len(),
        replies.infer.encoded_len()
    );
    let _ = out.flush();
    drop(out);
    tonic::transport::Server::builder()
        .add_service(prediction)
        .add_service(inference)
        .serve_with_incoming_shutdown(incoming, shutdown_signal())
        .await
        .map_err(|e| format!("gRPC server error: {e}"))
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// The handlers: a clone of the fixed reply (a prost message must be owned to be encoded).
#[derive(Clone)]
struct Floor(Arc<Replies>);

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "maas bench floor answers Predict, GetModelMetadata, ModelInfer and ModelMetadata only, not {rpc}"
    ))
}

#[tonic::async_trait]
impl PredictionService for Floor {
    async fn classify(
        &self,
        _r: Request<tfs::ClassificationRequest>,
    ) -> Result<Response<tfs::ClassificationResponse>, Status> {
        Err(unimplemented("Classify"))
    }

    async fn regress(&self, _r: Request<tfs::RegressionRequest>) -> Result<Response<tfs::RegressionResponse>, Status> {
        Err(unimplemented("Regress"))
    }

    async fn predict(&self, _r: Request<tfs::PredictRequest>) -> Result<Response<tfs::PredictResponse>, Status> {
        Ok(Response::new(self.0.predict.clone()))
    }

    async fn multi_inference(
        &self,
        _r: Request<tfs::MultiInferenceRequest>,
    ) -> Result<Response<tfs::MultiInferenceResponse>, Status> {
        Err(unimplemented("MultiInference"))
    }

    async fn get_model_metadata(
        &self,
        _r: Request<tfs::GetModelMetadataRequest>,
    ) -> Result<Response<tfs::GetModelMetadataResponse>, Status> {
        Ok(Response::new(self.0.tf_metadata.clone()))
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Floor {
    async fn server_live(
        &self,
        _r: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _r: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: true }))
    }

    async fn model_ready(
        &self,
        _r: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        Ok(Response::new(pb::ModelReadyResponse { ready: true }))
    }

    async fn server_metadata(
        &self,
        _r: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Err(unimplemented("ServerMetadata"))
    }

    async fn model_metadata(
        &self,
        _r: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        Ok(Response::new(self.0.v2_metadata.clone()))
    }

    async fn model_infer(
        &self,
        _r: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        Ok(Response::new(self.0.infer.clone()))
    }

    async fn model_statistics(
        &self,
        _r: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        Err(unimplemented("ModelStatistics"))
    }

    async fn repository_index(
        &self,
        _r: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        Err(unimplemented("RepositoryIndex"))
    }

    async fn repository_model_load(
        &self,
        _r: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        Err(unimplemented("RepositoryModelLoad"))
    }

    async fn repository_model_unload(
        &self,
        _r: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        Err(unimplemented("RepositoryModelUnload"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_repository_paths() {
        assert_eq!(name_and_version(Path::new("/r/numbers_classifier/3/model.onnx")), ("numbers_classifier".into(), 3));
        assert_eq!(name_and_version(Path::new("/tmp/x/model.onnx")), ("model.onnx".into(), 1));
    }
}
