//! TensorFlow Serving gRPC front end: `tensorflow.serving.PredictionService` and `ModelService`.
use super::tf_tensor;
use crate::error::Error;
use crate::manager::{ModelManager, VersionSelector, VersionState};
use crate::metrics::{Api, Call};
use crate::proto::tensorflow::serving::{
    self as tfs, model_service_server::ModelService, model_spec::VersionChoice,
    prediction_service_server::PredictionService, ModelSpec,
};
use crate::proto::tensorflow::{tensor_info, SignatureDef, TensorInfo, TensorShapeProto};
use crate::repository::config as model_config;
use crate::runtime::Servable;
use crate::tensor::{Budget, InferRequest, TensorSpec};
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The only signature an ONNX model has.
pub const DEFAULT_SIGNATURE: &str = "serving_default";
/// Type URL of the `Any` in GetModelMetadataResponse.metadata["signature_def"].
pub const SIGNATURE_DEF_MAP_URL: &str = "type.googleapis.com/tensorflow.serving.SignatureDefMap";

#[derive(Debug, Clone)]
pub struct TfServing {
    manager: Arc<ModelManager>,
    tensor_content_output: bool,
    reload_timeout: Duration,
    /// `--max-tensor-bytes`: the decoded inputs of one request, all together.
    max_tensor_bytes: usize,
}

impl TfServing {
    pub fn new(manager: Arc<ModelManager>, tensor_content_output: bool, reload_timeout: Duration) -> TfServing {
        let max_tensor_bytes = crate::runtime::RuntimeConfig::default().max_tensor_bytes;
        TfServing { manager, tensor_content_output, reload_timeout, max_tensor_bytes }
    }

    /// Bounds the decoded inputs of one request (all together) to `bytes`.
    pub fn with_max_tensor_bytes(mut self, bytes: usize) -> TfServing {
        self.max_tensor_bytes = bytes;
        self
    }

    /// Resolves a ModelSpec to a servable, checking the signature name.
    fn resolve(&self, spec: Option<&ModelSpec>) -> Result<Arc<Servable>, Error> {
        let spec = spec.ok_or_else(|| Error::InvalidArgument("Missing ModelSpec".into()))?;
        if spec.name.is_empty() {
            return Err(Error::InvalidArgument("ModelSpec has no name specified.".into()));
        }
        if !spec.signature_name.is_empty() && spec.signature_name != DEFAULT_SIGNATURE {
            return Err(Error::FailedPrecondition(format!(
                "Serving signature key \"{}\" not found: model '{}' has one signature, \"{DEFAULT_SIGNATURE}\"",
                spec.signature_name, spec.name
            )));
        }
        let selector = match &spec.version_choice {
            None => VersionSelector::Latest,
            Some(VersionChoice::Version(v)) => VersionSelector::Number(*v),
            Some(VersionChoice::VersionLabel(label)) => VersionSelector::Label(label.clone()),
        };
        self.manager.resolve(&spec.name, &selector)
    }
}

/// Decodes a Predict request's inputs and output filter into the core request: what Predict runs,
/// and what a recorded warmup request replays. `ctx` names the model and version for messages;
/// every input is charged to `budget` before it is allocated.
pub(crate) fn decode_request(ctx: &str, req: tfs::PredictRequest, budget: &mut Budget) -> Result<InferRequest, Error> {
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for (name, t) in req.inputs {
        let tensor = tf_tensor::decode(ctx, &name, t, budget)?;
        inputs.push((name, tensor));
    }
    let mut outputs = req.output_filter;
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = outputs.iter().find(|n| !seen.insert(n.as_str())) {
        return Err(Error::InvalidArgument(format!("{ctx}: output_filter names '{dup}' more than once")));
    }
    outputs.shrink_to_fit();
    Ok(InferRequest { inputs, outputs })
}

impl TfServing {
    /// Predict, measured by `call`.
    async fn predict_with(
        &self,
        request: Request<tfs::PredictRequest>,
        call: &mut Call<'_>,
    ) -> Result<Response<tfs::PredictResponse>, Error> {
        let deadline = super::grpc_deadline(request.metadata());
        let req = request.into_inner();
        let servable = self.resolve(req.model_spec.as_ref())?;
        call.servable(&servable);
        let ctx = servable.what();
        let request = decode_request(ctx, req, &mut Budget::new(self.max_tensor_bytes))?;
        let response = call.infer(&servable, request, deadline).await?;
        let outputs: HashMap<String, _> = response
            .outputs
            .into_iter()
            .map(|(name, t)| (name, tf_tensor::encode(t, self.tensor_content_output)))
            .collect();
        Ok(Response::new(tfs::PredictResponse { model_spec: Some(spec_out(&servable)), outputs }))
    }
}

fn spec_out(s: &Servable) -> ModelSpec {
    ModelSpec {
        name: s.model.clone(),
        signature_name: DEFAULT_SIGNATURE.to_string(),
        version_choice: Some(VersionChoice::Version(s.version)),
    }
}

fn tensor_info(spec: &TensorSpec) -> TensorInfo {
    TensorInfo {
        dtype: tf_tensor::dtype_to_tf(spec.dtype) as i32,
        tensor_shape: Some(TensorShapeProto {
            dim: spec
                .shape
                .iter()
                .map(|&size| crate::proto::tensorflow::tensor_shape_proto::Dim { size, name: String::new() })
                .collect(),
            unknown_rank: false,
        }),
        encoding: Some(tensor_info::Encoding::Name(spec.name.clone())),
    }
}

fn unimplemented(rpc: &str) -> Status {
    Error::Unimplemented(format!(
        "{rpc} is not supported: maas serves ONNX models, which have no tf.Example-based classify/regress \
         signatures; use Predict"
    ))
    .into()
}

#[tonic::async_trait]
impl PredictionService for TfServing {
    async fn classify(
        &self,
        _request: Request<tfs::ClassificationRequest>,
    ) -> Result<Response<tfs::ClassificationResponse>, Status> {
        Err(unimplemented("Classify"))
    }

    async fn regress(
        &self,
        _request: Request<tfs::RegressionRequest>,
    ) -> Result<Response<tfs::RegressionResponse>, Status> {
        Err(unimplemented("Regress"))
    }

    async fn predict(&self, request: Request<tfs::PredictRequest>) -> Result<Response<tfs::PredictResponse>, Status> {
        let deadline = super::grpc_deadline(request.metadata());
        let mut call = Call::start(self.manager.metrics(), Api::Predict).with_deadline(deadline);
        let result = self.predict_with(request, &mut call).await;
        call.finish(result).map_err(Status::from)
    }

    async fn multi_inference(
        &self,
        _request: Request<tfs::MultiInferenceRequest>,
    ) -> Result<Response<tfs::MultiInferenceResponse>, Status> {
        Err(unimplemented("MultiInference"))
    }

    async fn get_model_metadata(
        &self,
        request: Request<tfs::GetModelMetadataRequest>,
    ) -> Result<Response<tfs::GetModelMetadataResponse>, Status> {
        let req = request.into_inner();
        if req.metadata_field.is_empty() {
            return Err(Error::InvalidArgument(
                "GetModelMetadataRequest must specify at least one metadata_field (supported: \"signature_def\")"
                    .into(),
            )
            .into());
        }
        if let Some(f) = req.metadata_field.iter().find(|f| *f != "signature_def") {
            return Err(Error::InvalidArgument(format!(
                "Metadata field {f} is not supported; the supported field is \"signature_def\""
            ))
            .into());
        }
        let servable = self.resolve(req.model_spec.as_ref())?;
        let sig = &servable.signature;
        let def = SignatureDef {
            inputs: sig.inputs.iter().map(|s| (s.name.clone(), tensor_info(s))).collect(),
            outputs: sig.outputs.iter().map(|s| (s.name.clone(), tensor_info(s))).collect(),
            method_name: "tensorflow/serving/predict".to_string(),
            defaults: HashMap::new(),
        };
        let map = tfs::SignatureDefMap { signature_def: HashMap::from([(DEFAULT_SIGNATURE.to_string(), def)]) };
        let any = prost_types::Any { type_url: SIGNATURE_DEF_MAP_URL.to_string(), value: map.encode_to_vec() };
        Ok(Response::new(tfs::GetModelMetadataResponse {
            model_spec: Some(spec_out(&servable)),
            metadata: HashMap::from([("signature_def".to_string(), any)]),
        }))
    }
}

fn state_proto(s: VersionState) -> tfs::model_version_status::State {
    use tfs::model_version_status::State;
    match s {
        VersionState::Start => State::Start,
        VersionState::Loading => State::Loading,
        VersionState::Available => State::Available,
        VersionState::Unloading => State::Unloading,
        VersionState::End => State::End,
    }
}

#[tonic::async_trait]
impl ModelService for TfServing {
    async fn get_model_status(
        &self,
        request: Request<tfs::GetModelStatusRequest>,
    ) -> Result<Response<tfs::GetModelStatusResponse>, Status> {
        let req = request.into_inner();
        let spec = req.model_spec.ok_or_else(|| Error::InvalidArgument("Missing ModelSpec".into()))?;
        if spec.name.is_empty() {
            return Err(Error::InvalidArgument("ModelSpec has no name specified.".into()).into());
        }
        // As in TF Serving, a version label is ignored here: only an explicit version narrows the answer.
        let version = match spec.version_choice {
            Some(VersionChoice::Version(v)) => Some(v),
            _ => None,
        };
        let statuses = self.manager.status(&spec.name, version)?;
        let model_version_status = statuses
            .into_iter()
            .map(|(v, s)| tfs::ModelVersionStatus {
                version: v,
                state: state_proto(s.state) as i32,
                status: Some(tfs::StatusProto { error_code: i32::from(s.code), error_message: s.message }),
            })
            .collect();
        Ok(Response::new(tfs::GetModelStatusResponse { model_version_status }))
    }

    /// Replaces the model list. An invalid config is rejected whole (INVALID_ARGUMENT; a label on an
    /// unavailable version: FAILED_PRECONDITION) and the old one keeps serving. Otherwise the RPC
    /// returns once the new config is applied and its models have loaded, or after
    /// `--reload-config-timeout-seconds`; per-model load problems are reported in `status`.
    async fn handle_reload_config_request(
        &self,
        request: Request<tfs::ReloadConfigRequest>,
    ) -> Result<Response<tfs::ReloadConfigResponse>, Status> {
        let config = request
            .into_inner()
            .config
            .ok_or_else(|| Error::InvalidArgument("ReloadConfigRequest has no config".into()))?;
        let models = model_config::from_proto(config, None).map_err(Error::InvalidArgument)?;
        let count = models.len();
        self.manager.set_models(models, true)?;
        let problems = self.manager.settle(self.reload_timeout).await;
        let status = if problems.is_empty() {
            tracing::info!(models = count, "HandleReloadConfigRequest: new config applied");
            tfs::StatusProto { error_code: 0, error_message: String::new() }
        } else {
            let message = format!("config applied; {} problem(s): {}", problems.len(), problems.join("; "));
            tracing::warn!("HandleReloadConfigRequest: {message}");
            tfs::StatusProto { error_code: i32::from(tonic::Code::FailedPrecondition), error_message: message }
        };
        Ok(Response::new(tfs::ReloadConfigResponse { status: Some(status), metric: Vec::new() }))
    }
}
