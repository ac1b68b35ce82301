//! TensorFlow Serving REST API (`/v1/models/...`): model status, metadata and predict.
//!
//! matchit (axum's router) cannot match a parameter with a suffix in one segment, so
//! `/v1/models/{name}:predict` is routed as `/v1/models/{name}` and the verb is split off the last
//! `:` here.
use super::{body_rejected, error_response, respond, Mgr, TensorLimit};
use super::{json, tf_json};
use crate::api::tf_tensor::dtype_to_tf;
use crate::api::tfserving::DEFAULT_SIGNATURE;
use crate::error::Error;
use crate::manager::{ModelManager, VersionSelector, VersionStatus};
use crate::metrics::{Api, Call};
use crate::runtime::Servable;
use crate::tensor::{Budget, DType, InferRequest, Tensor, TensorData, TensorSpec};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{Method, Uri};
use axum::response::Response;
use axum::routing::get;
use axum::Extension;
use axum::Router;
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<ModelManager>> {
    Router::new()
        .route("/v1/models", get(missing_name).post(missing_name))
        .route("/v1/models/", get(missing_name).post(missing_name))
        .route("/v1/models/{name}", get(get_model).post(post_model))
        .route("/v1/models/{name}/metadata", get(get_model_metadata))
        .route("/v1/models/{name}/versions/{version}", get(get_version).post(post_version))
        .route("/v1/models/{name}/versions/{version}/metadata", get(get_version_metadata))
        .route("/v1/models/{name}/labels/{label}", get(get_label).post(post_label))
        .route("/v1/models/{name}/labels/{label}/metadata", get(get_label_metadata))
}

/// How the path names the version.
enum Sel<'a> {
    Latest,
    Version(&'a str),
    Label(&'a str),
}

fn malformed(method: &Method, uri: &Uri) -> Error {
    Error::InvalidArgument(format!("Malformed request: {method} {}", uri.path()))
}

/// Checks the path parts and turns them into a selector (TF Serving: name and label `[^/:]+`,
/// version `\d+`).
fn selector(method: &Method, uri: &Uri, name: &str, sel: Sel<'_>) -> Result<VersionSelector, Error> {
    if name.is_empty() || name.contains(':') {
        return Err(malformed(method, uri));
    }
    match sel {
        Sel::Latest => Ok(VersionSelector::Latest),
        Sel::Version(v) => {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed(method, uri));
            }
            v.parse().map(VersionSelector::Number).map_err(|_| malformed(method, uri))
        }
        Sel::Label(l) if l.is_empty() || l.contains(':') => Err(malformed(method, uri)),
        Sel::Label(l) => Ok(VersionSelector::Label(l.to_string())),
    }
}

/// Splits `x:verb` on the last `:`.
fn split_verb(s: &str) -> Option<(&str, &str)> {
    s.rfind(':').map(|i| (&s[..i], &s[i + 1..]))
}

async fn missing_name() -> Response {
    error_response(&Error::InvalidArgument("Missing model name in request.".into()))
}

async fn get_model(State(m): Mgr, method: Method, uri: Uri, Path(name): Path<String>) -> Response {
    respond(status(&m, &method, &uri, &name, Sel::Latest))
}

async fn get_version(State(m): Mgr, method: Method, uri: Uri, Path((name, v)): Path<(String, String)>) -> Response {
    respond(status(&m, &method, &uri, &name, Sel::Version(&v)))
}

async fn get_label(State(m): Mgr, method: Method, uri: Uri, Path((name, l)): Path<(String, String)>) -> Response {
    respond(status(&m, &method, &uri, &name, Sel::Label(&l)))
}

async fn get_model_metadata(State(m): Mgr, method: Method, uri: Uri, Path(name): Path<String>) -> Response {
    respond(metadata(&m, &method, &uri, &name, Sel::Latest))
}

async fn get_version_metadata(
    State(m): Mgr,
    method: Method,
    uri: Uri,
    Path((name, v)): Path<(String, String)>,
) -> Response {
    respond(metadata(&m, &method, &uri, &name, Sel::Version(&v)))
}

async fn get_label_metadata(
    State(m): Mgr,
    method: Method,
    uri: Uri,
    Path((name, l)): Path<(String, String)>,
) -> Response {
    respond(metadata(&m, &method, &uri, &name, Sel::Label(&l)))
}

async fn post_model(
    State(m): Mgr,
    Extension(limit): Extension<TensorLimit>,
    method: Method,
    uri: Uri,
    Path(name_verb): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some((name, verb)) = split_verb(&name_verb) else {
        return error_response(&malformed(&method, &uri));
    };
    post(&m, limit, &method, &uri, name, Sel::Latest, verb, body).await
}

async fn post_version(
    State(m): Mgr,
    Extension(limit): Extension<TensorLimit>,
    method: Method,
    uri: Uri,
    Path((name, v_verb)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some((v, verb)) = split_verb(&v_verb) else {
        return error_response(&malformed(&method, &uri));
    };
    post(&m, limit, &method, &uri, &name, Sel::Version(v), verb, body).await
}

async fn post_label(
    State(m): Mgr,
    Extension(limit): Extension<TensorLimit>,
    method: Method,
    uri: Uri,
    Path((name, l_verb)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some((l, verb)) = split_verb(&l_verb) else {
        return error_response(&malformed(&method, &uri));
    };
    post(&m, limit, &method, &uri, &name, Sel::Label(l), verb, body).await
}

#[allow(clippy::too_many_arguments)]
async fn post(
    m: &ModelManager,
    limit: TensorLimit,
    method: &Method,
    uri: &Uri,
    name: &str,
    sel: Sel<'_>,
    verb: &str,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let selector = match selector(method, uri, name, sel) {
        Ok(s) => s,
        Err(e) => return error_response(&e),
    };
    let rpc = match verb {
        "predict" => None,
        "classify" => Some("Classify"),
        "regress" => Some("Regress"),
        _ => return error_response(&malformed(method, uri)),
    };
    if let Some(rpc) = rpc {
        // Same text as the gRPC front end.
        return error_response(&Error::Unimplemented(format!(
            "{rpc} is not supported: maas serves ONNX models, which have no tf.Example-based classify/regress \
             signatures; use Predict"
        )));
    }
    let mut call = Call::start(m.metrics(), Api::PredictRest);
    let body = match body {
        Ok(b) => b,
        Err(r) => return call.fail_http(r.status().as_u16(), body_rejected(r)),
    };
    let result = predict(m, limit, name, selector, &body, &mut call).await;
    respond(call.finish(result))
}

fn status(m: &ModelManager, method: &Method, uri: &Uri, name: &str, sel: Sel<'_>) -> Result<String, Error> {
    // As in TF Serving (and the gRPC GetModelStatus), a label does not narrow the answer.
    let version = match selector(method, uri, name, sel)? {
        VersionSelector::Number(v) => Some(v),
        _ => None,
    };
    Ok(status_json(&m.status(name, version)?))
}

pub(super) fn error_code_name(code: tonic::Code) -> String {
    crate::proto::tensorflow::error::Code::try_from(i32::from(code))
        .map_or_else(|_| format!("{code:?}"), |c| c.as_str_name().to_string())
}

fn status_json(statuses: &[(i64, VersionStatus)]) -> String {
    let list: Vec<Value> = statuses
        .iter()
        .map(|(v, s)| {
            json!({
                "version": v.to_string(),
                "state": s.state.name(),
                "status": {"error_code": error_code_name(s.code), "error_message": s.message},
            })
        })
        .collect();
    json!({ "model_version_status": list }).to_string()
}

fn tensor_info(spec: &TensorSpec) -> Value {
    let dims: Vec<Value> = spec.shape.iter().map(|d| json!({"size": d.to_string(), "name": ""})).collect();
    json!({
        "dtype": dtype_to_tf(spec.dtype).as_str_name(),
        "tensor_shape": {"dim": dims, "unknown_rank": false},
        "name": spec.name,
    })
}

fn metadata(m: &ModelManager, method: &Method, uri: &Uri, name: &str, sel: Sel<'_>) -> Result<String, Error> {
    let servable = m.resolve(name, &selector(method, uri, name, sel)?)?;
    let sig = &servable.signature;
    let inputs: serde_json::Map<String, Value> = sig.inputs.iter().map(|s| (s.name.clone(), tensor_info(s))).collect();
    let outputs: serde_json::Map<String, Value> =
        sig.outputs.iter().map(|s| (s.name.clone(), tensor_info(s))).collect();
    Ok(json!({
        "model_spec": {"name": servable.model, "signature_name": "", "version": servable.version.to_string()},
        "metadata": {"signature_def": {"signature_def": {DEFAULT_SIGNATURE: {
            "inputs": inputs,
            "outputs": outputs,
            "method_name": "tensorflow/serving/predict",
        }}}},
    })
    .to_string())
}

async fn predict(
    m: &ModelManager,
    limit: TensorLimit,
    name: &str,
    selector: VersionSelector,
    body: &[u8],
    call: &mut Call<'_>,
) -> Result<String, Error> {
    let value = json::parse(body, limit.0)?;
    let Some(obj) = value.as_object() else {
        return Err(Error::InvalidArgument(format!(
            "the request body must be a JSON object with \"instances\" (row format) or \"inputs\" (columnar \
             format), got {}",
            json::short(&value)
        )));
    };
    match obj.get("signature_name") {
        None => {}
        Some(Value::String(s)) if s.is_empty() || s == DEFAULT_SIGNATURE => {}
        Some(Value::String(s)) => {
            // Same text as the gRPC front end.
            return Err(Error::FailedPrecondition(format!(
                "Serving signature key \"{s}\" not found: model '{name}' has one signature, \"{DEFAULT_SIGNATURE}\""
            )));
        }
        Some(other) => {
            return Err(Error::InvalidArgument(format!(
                "\"signature_name\" must be a string, got {}",
                json::short(other)
            )))
        }
    }
    let rows =
        match (obj.get("instances"), obj.get("inputs")) {
            (Some(_), Some(_)) => return Err(Error::InvalidArgument(
                "the request has both \"instances\" (row format) and \"inputs\" (columnar format); send exactly one"
                    .into(),
            )),
            (None, None) => {
                return Err(Error::InvalidArgument(
                    "the request has neither \"instances\" (row format) nor \"inputs\" (columnar format)".into(),
                ))
            }
            (Some(instances), None) => Some(instances),
            (None, Some(_)) => None,
        };
    let servable = m.resolve(name, &selector)?;
    call.servable(&servable);
    let ctx = servable.what();
    let (inputs, batch) = {
        let unknown = |input: &str| unknown_input(&servable, input);
        let model = tf_json::Model { ctx, signature: &servable.signature, unknown_input: &unknown };
        let columns = obj.get("inputs").unwrap_or(&Value::Null);
        tf_json::decode_inputs(&model, rows, columns, &mut Budget::new(limit.0))?
    };
    let response = call.infer(&servable, InferRequest { inputs, outputs: Vec::new() }, None).await?;
    match batch {
        Some(_) => tf_json::encode_rows(ctx, &response.outputs),
        None => Ok(tf_json::encode_columns(&response.outputs)),
    }
}

/// The error the core gives for an input the model does not have (same text as gRPC).
fn unknown_input(servable: &Servable, name: &str) -> Error {
    let placeholder = Tensor { dtype: DType::F32, shape: vec![0], data: TensorData::Raw(Bytes::new()) };
    match servable.validate(&InferRequest { inputs: vec![(name.to_string(), placeholder)], outputs: Vec::new() }) {
        Err(e) => e,
        Ok(()) => Error::Internal(format!("input '{name}' is neither known nor unknown")),
    }
}
