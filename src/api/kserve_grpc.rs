//! Open Inference Protocol (KServe v2) gRPC front end: `inference.GRPCInferenceService`, with
//! Triton's field numbers. Translates into the same core request as the TF Serving front end and
//! shares its servables, statistics and errors.
use super::v2_tensor;
use super::v2_types::dtype_to_v2;
use crate::error::Error;
use crate::manager::{ModelManager, VersionSelector, VersionState};
use crate::metrics::{Api, Call};
use crate::proto::inference::{
    self as pb, grpc_inference_service_server::GrpcInferenceService, infer_parameter::ParameterChoice,
    model_infer_response::InferOutputTensor, model_metadata_response::TensorMetadata,
};
use crate::tensor::{Budget, InferRequest, TensorSpec};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// ONNX models' platform string in the v2 protocol.
pub const PLATFORM: &str = "onnx_onnxv1";
/// Extensions this server implements (reported by ServerMetadata).
pub const EXTENSIONS: [&str; 2] = ["model_repository", "statistics"];
/// Request parameter: `false` asks for typed `contents` in the response instead of raw bytes.
pub const BINARY_OUTPUT_PARAM: &str = "binary_data_output";

#[derive(Debug, Clone)]
pub struct KServeGrpc {
    manager: Arc<ModelManager>,
    load_timeout: Duration,
    /// `--max-tensor-bytes`: the decoded inputs of one request, all together.
    max_tensor_bytes: usize,
}

impl KServeGrpc {
    pub fn new(manager: Arc<ModelManager>, load_timeout: Duration) -> KServeGrpc {
        let max_tensor_bytes = crate::runtime::RuntimeConfig::default().max_tensor_bytes;
        KServeGrpc { manager, load_timeout, max_tensor_bytes }
    }

    /// Bounds the decoded inputs of one request (all together) to `bytes`.
    pub fn with_max_tensor_bytes(mut self, bytes: usize) -> KServeGrpc {
        self.max_tensor_bytes = bytes;
        self
    }
}

/// "" = the highest AVAILABLE version.
pub fn selector(version: &str) -> Result<VersionSelector, Error> {
    if version.is_empty() {
        return Ok(VersionSelector::Latest);
    }
    version
        .parse::<i64>()
        .map(VersionSelector::Number)
        .map_err(|_| Error::InvalidArgument(format!("model_version '{version}' is not a version number")))
}

fn metadata(spec: &TensorSpec) -> TensorMetadata {
    TensorMetadata { name: spec.name.clone(), datatype: dtype_to_v2(spec.dtype).to_string(), shape: spec.shape.clone() }
}

fn duration(count: u64, ns: u64) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration { count, ns })
}

#[tonic::async_trait]
impl GrpcInferenceService for KServeGrpc {
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
        Ok(Response::new(pb::ServerReadyResponse { ready: self.manager.readiness().is_ok() }))
    }

    async fn model_ready(&self, r: Request<pb::ModelReadyRequest>) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = r.into_inner();
        let ready = self.manager.resolve(&r.name, &selector(&r.version)?).is_ok();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _r: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "maas".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        r: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = r.into_inner();
        let servable = self.manager.resolve(&r.name, &selector(&r.version)?)?;
        let mut versions: Vec<i64> = self.manager.servables(Some(&r.name)).iter().map(|s| s.version).collect();
        versions.sort_unstable();
        Ok(Response::new(pb::ModelMetadataResponse {
            name: servable.model.clone(),
            versions: versions.iter().map(|v| v.to_string()).collect(),
            platform: PLATFORM.into(),
            inputs: servable.signature.inputs.iter().map(metadata).collect(),
            outputs: servable.signature.outputs.iter().map(metadata).collect(),
        }))
    }

    async fn model_infer(&self, r: Request<pb::ModelInferRequest>) -> Result<Response<pb::ModelInferResponse>, Status> {
        let deadline = super::grpc_deadline(r.metadata());
        let mut call = Call::start(self.manager.metrics(), Api::ModelInfer).with_deadline(deadline);
        let result = self.model_infer_with(r, &mut call).await;
        call.finish(result).map_err(Status::from)
    }

    async fn model_statistics(
        &self,
        r: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let r = r.into_inner();
        let model = (!r.name.is_empty()).then_some(r.name.as_str());
        if let Some(m) = model {
            // Unknown model or version: the same NOT_FOUND as for inference.
            self.manager.resolve(m, &selector(&r.version)?)?;
        }
        let mut servables = self.manager.servables(model);
        if !r.version.is_empty() {
            servables.retain(|s| s.version.to_string() == r.version);
        }
        servables.sort_by(|a, b| (&a.model, a.version).cmp(&(&b.model, b.version)));
        let model_stats = servables
            .iter()
            .map(|s| {
                let st = s.stats.snapshot();
                pb::ModelStatistics {
                    name: s.model.clone(),
                    version: s.version.to_string(),
                    last_inference: st.last_inference_ms,
                    inference_count: st.success_count,
                    execution_count: st.execution_count,
                    inference_stats: Some(pb::InferStatistics {
                        success: duration(st.success_count, st.success_ns),
                        fail: duration(st.fail_count, st.fail_ns),
                        ..Default::default()
                    }),
                    batch_stats: Vec::new(),
                }
            })
            .collect();
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        r: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let ready_only = r.into_inner().ready;
        let mut models = Vec::new();
        for (name, versions) in self.manager.index() {
            if versions.is_empty() && !ready_only {
                models.push(pb::repository_index_response::ModelIndex {
                    name,
                    version: String::new(),
                    state: "UNAVAILABLE".into(),
                    reason: "unloaded".into(),
                });
                continue;
            }
            for (v, s) in versions {
                let state = match s.state {
                    VersionState::Available => "READY",
                    VersionState::Start | VersionState::Loading => "LOADING",
                    VersionState::Unloading => "UNLOADING",
                    VersionState::End => "UNAVAILABLE",
                };
                if ready_only && state != "READY" {
                    continue;
                }
                let reason = match state {
                    "READY" => String::new(),
                    _ if s.message.is_empty() => s.detail,
                    _ => s.message,
                };
                models.push(pb::repository_index_response::ModelIndex {
                    name: name.clone(),
                    version: v.to_string(),
                    state: state.into(),
                    reason,
                });
            }
        }
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        r: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let r = r.into_inner();
        if !r.parameters.is_empty() {
            let keys: Vec<&String> = r.parameters.keys().collect();
            return Err(Error::InvalidArgument(format!(
                "RepositoryModelLoad parameters are not supported (got {keys:?}); maas loads models from the repository"
            ))
            .into());
        }
        self.manager.load_model(&r.model_name, self.load_timeout).await?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        r: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let r = r.into_inner();
        self.manager.unload_model(&r.model_name).await?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

impl KServeGrpc {
    /// ModelInfer, measured by `call`.
    async fn model_infer_with(
        &self,
        r: Request<pb::ModelInferRequest>,
        call: &mut Call<'_>,
    ) -> Result<Response<pb::ModelInferResponse>, Error> {
        let deadline = super::grpc_deadline(r.metadata());
        let r = r.into_inner();
        let servable = self.manager.resolve(&r.model_name, &selector(&r.model_version)?)?;
        call.servable(&servable);
        let ctx = servable.what();
        let typed_output = match r.parameters.get(BINARY_OUTPUT_PARAM).and_then(|p| p.parameter_choice.as_ref()) {
            None => false,
            Some(ParameterChoice::BoolParam(b)) => !b,
            Some(other) => {
                return Err(Error::InvalidArgument(format!(
                    "parameter '{BINARY_OUTPUT_PARAM}' must be a bool_param, got {other:?}"
                )))
            }
        };
        let use_raw = !r.raw_input_contents.is_empty();
        if use_raw && r.raw_input_contents.len() != r.inputs.len() {
            return Err(Error::InvalidArgument(format!(
                "{ctx}: raw_input_contents has {} entries but the request has {} inputs; give one per input, in order",
                r.raw_input_contents.len(),
                r.inputs.len()
            )));
        }
        let mut raws = r.raw_input_contents.into_iter();
        let mut inputs = Vec::with_capacity(r.inputs.len());
        let mut budget = Budget::new(self.max_tensor_bytes);
        for input in r.inputs {
            let dtype = v2_tensor::parse_datatype(ctx, &input.name, &input.datatype)?;
            let tensor = match (use_raw, input.contents) {
                (true, Some(_)) => {
                    return Err(Error::InvalidArgument(format!(
                    "{ctx}: input '{}' sets contents although raw_input_contents is used; use one form for all inputs",
                    input.name
                )))
                }
                (true, None) => {
                    let raw = raws.next().unwrap_or_default();
                    v2_tensor::decode_raw(ctx, &input.name, dtype, input.shape, raw, &mut budget)?
                }
                (false, contents) => {
                    let contents = contents.unwrap_or_default();
                    v2_tensor::decode_typed(ctx, &input.name, dtype, input.shape, contents, &mut budget)?
                }
            };
            inputs.push((input.name, tensor));
        }
        let wanted: Vec<String> = r.outputs.into_iter().map(|o| o.name).collect();
        let response = call.infer(&servable, InferRequest { inputs, outputs: wanted }, deadline).await?;
        let mut outputs = Vec::with_capacity(response.outputs.len());
        let mut raw_output_contents = Vec::new();
        for (name, t) in response.outputs {
            let mut out = InferOutputTensor {
                name,
                datatype: dtype_to_v2(t.dtype).to_string(),
                shape: t.shape.clone(),
                parameters: HashMap::new(),
                contents: None,
            };
            if typed_output {
                let dtype = t.dtype;
                out.contents = Some(v2_tensor::encode_typed(t).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "{ctx}: output '{}' is {}, which has no typed contents field; do not set {BINARY_OUTPUT_PARAM}=false",
                        out.name,
                        dtype_to_v2(dtype)
                    ))
                })?);
            } else {
                raw_output_contents.push(v2_tensor::encode_raw(t));
            }
            outputs.push(out);
        }
        Ok(Response::new(pb::ModelInferResponse {
            model_name: servable.model.clone(),
            model_version: servable.version_str().to_string(),
            id: r.id,
            parameters: HashMap::new(),
            outputs,
            raw_output_contents,
        }))
    }
}
