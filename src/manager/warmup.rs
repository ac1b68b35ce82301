//! Warmup: runs every session of a freshly loaded version before it is published, so the first real
//! requests do not pay for ONNX Runtime's lazy initialization. It runs on the loader thread and
//! never holds the serving table or the manager's records.
//!
//! - **Recorded**, as TF Serving: `<version>/assets.extra/tf_serving_warmup_requests` is a TFRecord
//!   file of `tensorflow.serving.PredictionLog` records. Each `predict_log` request is decoded like a
//!   TF Predict request (its model_spec is ignored) and run `iterations` times on every session. A
//!   record that cannot be read, is of another kind, or fails fails the load, naming the record.
//! - **Synthesized**, without such a file: inputs made from the signature (see [`synthesized_shape`];
//!   with TensorRT and a profile in `maas.pbtxt`, the profile's opt and then max shapes), best effort. The model may need real values (a shape input of an `Expand`, split sizes), so a
//!   failure leaves the version serving and is reported as skipped.
use super::tfrecord::{self, RecordError};
use crate::api::tfserving::decode_request;
use crate::error::Error;
use crate::proto::tensorflow::serving::{prediction_log::LogType, PredictionLog};
use crate::runtime::{LoadError, Servable};
use crate::tensor::{InferRequest, Tensor, TensorData, TensorSpec};
use bytes::Bytes;
use prost::Message;
use std::path::Path;
use tonic::Code;

/// Where a version's recorded warmup requests are, relative to its directory (as in TF Serving).
pub const WARMUP_FILE: &str = "assets.extra/tf_serving_warmup_requests";

/// Most records a warmup file may hold (TF Serving's limit).
pub const MAX_WARMUP_RECORDS: usize = 1000;

/// What warmup did for a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WarmupOutcome {
    /// `--enable-model-warmup false`.
    Disabled,
    /// The recorded requests were replayed on every session.
    Recorded { records: usize, iterations: u32 },
    /// Synthesized inputs ran on every session.
    Synthesized,
    /// The synthesized inputs did not run; the version serves anyway.
    Skipped { reason: String },
}

impl std::fmt::Display for WarmupOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WarmupOutcome::Disabled => f.write_str("warmup disabled"),
            WarmupOutcome::Recorded { records, iterations } => {
                write!(f, "warmed up with {records} recorded request(s) x {iterations} iteration(s)")
            }
            WarmupOutcome::Synthesized => f.write_str("warmed up with synthesized inputs"),
            WarmupOutcome::Skipped { reason } => write!(f, "synthesized warmup skipped: {reason}"),
        }
    }
}

/// Warms up every session of `servable`: the recorded requests if the version has a warmup file,
/// otherwise synthesized inputs. Blocking; call it on the loader thread before publishing.
pub fn run(
    servable: &Servable,
    enabled: bool,
    iterations: u32,
    max_tensor_bytes: usize,
) -> Result<WarmupOutcome, LoadError> {
    if !enabled {
        return Ok(WarmupOutcome::Disabled);
    }
    let file = servable.version_dir().join(WARMUP_FILE);
    if file.is_file() {
        // As in TF Serving, 0 iterations means the default, 1.
        let iterations = iterations.max(1);
        let records = replay(servable, &file, iterations, max_tensor_bytes)?;
        return Ok(WarmupOutcome::Recorded { records, iterations });
    }
    match synthesized(servable) {
        Ok(()) => Ok(WarmupOutcome::Synthesized),
        Err(reason) => {
            tracing::warn!(
                model = %servable.model,
                version = servable.version,
                "synthesized warmup skipped: {reason}; the version serves anyway (put recorded requests in \
                 <version>/{WARMUP_FILE} to warm it up with real inputs)"
            );
            Ok(WarmupOutcome::Skipped { reason })
        }
    }
}

/// Replays the records of `file` on every session; returns the number of records.
fn replay(servable: &Servable, file: &Path, iterations: u32, max_tensor_bytes: usize) -> Result<usize, LoadError> {
    let bytes = std::fs::read(file).map_err(|e| {
        LoadError::new(Code::FailedPrecondition, format!("cannot read the warmup file {}: {e}", file.display()))
    })?;
    let records = tfrecord::read_records(&Bytes::from(bytes), MAX_WARMUP_RECORDS).map_err(|e| match e {
        RecordError::Corrupt { record, message } => {
            LoadError::new(Code::DataLoss, format!("warmup record {record}: {message} (in {})", file.display()))
        }
        RecordError::TooMany { max } => LoadError::new(
            Code::InvalidArgument,
            format!(
                "the warmup file {} has more than {max} records, the most that are replayed (as in TF Serving)",
                file.display()
            ),
        ),
    })?;
    let ctx = servable.what();
    for (i, data) in records.iter().enumerate() {
        let n = i + 1;
        let failed = |code: Code, m: String| LoadError::new(code, format!("warmup record {n}: {m}"));
        let request = recorded_request(ctx, data.clone()).map_err(|m| failed(Code::InvalidArgument, m))?;
        // Bounded like a request, by --max-tensor-bytes.
        let budget = &mut crate::tensor::Budget::new(max_tensor_bytes);
        let request = decode_request(ctx, request, budget).map_err(|e| failed(e.code(), e.to_string()))?;
        servable.validate(&request).map_err(|e| failed(e.code(), e.to_string()))?;
        for session in 0..servable.pool_size() {
            for _ in 0..iterations {
                servable.warm_session(session, &request, true).map_err(|e: Error| failed(e.code(), e.to_string()))?;
            }
        }
    }
    tracing::info!(
        model = %servable.model,
        version = servable.version,
        records = records.len(),
        iterations,
        sessions = servable.pool_size(),
        "replayed the recorded warmup requests"
    );
    Ok(records.len())
}

/// The PredictRequest of one record, which must be a `predict_log` (also what `maas optimize` reads
/// as guard inputs).
pub(crate) fn recorded_request(
    ctx: &str,
    data: Bytes,
) -> Result<crate::proto::tensorflow::serving::PredictRequest, String> {
    let log =
        PredictionLog::decode(data).map_err(|e| format!("not a serialized tensorflow.serving.PredictionLog: {e}"))?;
    let kind = match log.log_type {
        Some(LogType::PredictLog(p)) => return Ok(p.request.unwrap_or_default()),
        None => return Err("the PredictionLog has no log_type (expected predict_log)".into()),
        Some(LogType::ClassifyLog(_)) => "classify_log",
        Some(LogType::RegressLog(_)) => "regress_log",
        Some(LogType::PredictStreamedLog(_)) => "predict_streamed_log",
        Some(LogType::MultiInferenceLog(_)) => "multi_inference_log",
        Some(LogType::SessionRunLog(_)) => "session_run_log",
    };
    Err(format!(
        "a {kind} record cannot be replayed: {ctx} is an ONNX model, whose only signature is predict \
         (expected predict_log)"
    ))
}

/// The shape synthesized for an input: its fixed dimensions, and 1 for every dynamic one.
pub fn synthesized_shape(spec: &TensorSpec) -> Vec<i64> {
    spec.shape.iter().map(|&d| if d < 0 { 1 } else { d }).collect()
}

/// The input shapes of each synthesized round, in signature order: with TensorRT and a profile in
/// `maas.pbtxt`, the profile's opt and then max shapes (what TensorRT builds for); otherwise one round
/// of [`synthesized_shape`]s.
fn synthesized_rounds(servable: &Servable) -> Result<Vec<Vec<Vec<i64>>>, String> {
    match servable.tensorrt_warmup_shapes() {
        Some(rounds) => Ok(rounds
            .map_err(|e| format!("the TensorRT profile in maas.pbtxt does not fit the model: {e}"))?
            .into_iter()
            .map(|round| round.into_iter().map(|(_, dims)| dims).collect())
            .collect()),
        None => Ok(vec![servable.signature.inputs.iter().map(synthesized_shape).collect()]),
    }
}

/// Runs every session once per round on zeros (empty strings) of the synthesized shapes; the error says
/// why not.
fn synthesized(servable: &Servable) -> Result<(), String> {
    for shapes in synthesized_rounds(servable)? {
        let mut inputs = Vec::with_capacity(servable.signature.inputs.len());
        for (spec, shape) in servable.signature.inputs.iter().zip(shapes) {
            let n = crate::tensor::element_count(&shape).map_err(|e| format!("input '{}': {e}", spec.name))?;
            // Profile shapes come from maas.pbtxt: allocate fallibly, never abort on a huge one.
            let too_big = |e| format!("input '{}' of shape {shape:?} cannot be allocated: {e}", spec.name);
            let data = match spec.dtype.size() {
                Some(size) => {
                    let mut zeros = Vec::new();
                    zeros.try_reserve_exact(n.saturating_mul(size)).map_err(too_big)?;
                    zeros.resize(n.saturating_mul(size), 0u8);
                    TensorData::Raw(Bytes::from(zeros))
                }
                None => {
                    let mut empty = Vec::new();
                    empty.try_reserve_exact(n).map_err(too_big)?;
                    empty.resize(n, Bytes::new());
                    TensorData::Strings(empty)
                }
            };
            let t = Tensor::new(spec.dtype, shape, data).map_err(|e| format!("input '{}': {e}", spec.name))?;
            inputs.push((spec.name.clone(), t));
        }
        let req = InferRequest { inputs, outputs: Vec::new() };
        for session in 0..servable.pool_size() {
            servable.warm_session(session, &req, false).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
