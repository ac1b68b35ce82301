//! KServe v2 / Open Inference Protocol REST API (`/v2/...`): health, server and model metadata, model
//! readiness and inference with JSON tensors.
//!
//! Health and readiness answer 200 with an empty body when true and 400 with `{"error": ...}` when
//! false (Triton's choice); an unknown model or version is 404.
use super::json::{self, Strings};
use super::{body_rejected, error_response, json_response, respond, Mgr, TensorLimit};
use crate::api::v2_types::{dtype_from_v2, dtype_to_v2, supported_v2};
use crate::error::Error;
use crate::manager::{ModelManager, VersionSelector};
use crate::metrics::{Api, Call};
use crate::tensor::{claimed_elements, fmt_shape, Budget, InferRequest, Input, Tensor, TensorSpec};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::Arc;

/// The `platform` of every model in model metadata.
pub const PLATFORM: &str = "onnx_onnxv1";

pub fn routes() -> Router<Arc<ModelManager>> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}", get(version_metadata))
        .route("/v2/models/{name}/versions/{version}/ready", get(version_ready))
        .route("/v2/models/{name}/versions/{version}/infer", post(version_infer))
}

fn version(v: &str) -> Result<VersionSelector, Error> {
    match v.parse::<i64>() {
        Ok(n) if n >= 0 && v.bytes().all(|b| b.is_ascii_digit()) => Ok(VersionSelector::Number(n)),
        _ => Err(Error::InvalidArgument(format!("invalid model version '{v}': a version is a non-negative integer"))),
    }
}

fn empty(status: StatusCode) -> Response {
    status.into_response()
}

/// 400 with the reason: what v2 REST answers for "false".
fn not_ready(message: String) -> Response {
    json_response(StatusCode::BAD_REQUEST, super::error_body(&message))
}

async fn server_metadata() -> Response {
    // No v2 extension (binary data, statistics, repository, ...) is served over REST yet.
    let extensions: [&str; 0] = [];
    respond(Ok(json!({"name": "maas", "version": env!("CARGO_PKG_VERSION"), "extensions": extensions}).to_string()))
}

async fn live() -> Response {
    empty(StatusCode::OK)
}

async fn ready(State(m): Mgr) -> Response {
    match m.readiness() {
        Ok(()) => empty(StatusCode::OK),
        Err(why) => not_ready(why),
    }
}

fn model_ready_response(m: &ModelManager, name: &str, selector: Result<VersionSelector, Error>) -> Response {
    match selector.and_then(|s| m.resolve(name, &s)) {
        Ok(_) => empty(StatusCode::OK),
        Err(e @ Error::Unavailable(_)) => not_ready(e.to_string()),
        Err(e) => error_response(&e),
    }
}

async fn model_ready(State(m): Mgr, Path(name): Path<String>) -> Response {
    model_ready_response(&m, &name, Ok(VersionSelector::Latest))
}

async fn version_ready(State(m): Mgr, Path((name, v)): Path<(String, String)>) -> Response {
    model_ready_response(&m, &name, version(&v))
}

fn tensor_metadata(spec: &TensorSpec) -> Value {
    json!({"name": spec.name, "datatype": dtype_to_v2(spec.dtype), "shape": spec.shape})
}

fn metadata(m: &ModelManager, name: &str, selector: Result<VersionSelector, Error>) -> Result<String, Error> {
    let servable = m.resolve(name, &selector?)?;
    let mut versions: Vec<i64> = m.servables(Some(name)).iter().map(|s| s.version).collect();
    versions.sort_unstable();
    versions.dedup();
    let sig = &servable.signature;
    Ok(json!({
        "name": servable.model,
        "versions": versions.iter().map(i64::to_string).collect::<Vec<_>>(),
        "platform": PLATFORM,
        "inputs": sig.inputs.iter().map(tensor_metadata).collect::<Vec<_>>(),
        "outputs": sig.outputs.iter().map(tensor_metadata).collect::<Vec<_>>(),
    })
    .to_string())
}

async fn model_metadata(State(m): Mgr, Path(name): Path<String>) -> Response {
    respond(metadata(&m, &name, Ok(VersionSelector::Latest)))
}

async fn version_metadata(State(m): Mgr, Path((name, v)): Path<(String, String)>) -> Response {
    respond(metadata(&m, &name, version(&v)))
}

async fn infer(
    State(m): Mgr,
    Extension(limit): Extension<TensorLimit>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    measured(&m, limit, &name, Ok(VersionSelector::Latest), body).await
}

async fn version_infer(
    State(m): Mgr,
    Extension(limit): Extension<TensorLimit>,
    Path((name, v)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    measured(&m, limit, &name, version(&v), body).await
}

/// An inference request, measured.
async fn measured(
    m: &ModelManager,
    limit: TensorLimit,
    name: &str,
    selector: Result<VersionSelector, Error>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut call = Call::start(m.metrics(), Api::InferRest);
    match body {
        Ok(b) => {
            let result = run(m, limit, name, selector, &b, &mut call).await;
            respond(call.finish(result))
        }
        Err(r) => call.fail_http(r.status().as_u16(), body_rejected(r)),
    }
}

fn bad(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

async fn run(
    m: &ModelManager,
    limit: TensorLimit,
    name: &str,
    selector: Result<VersionSelector, Error>,
    body: &[u8],
    call: &mut Call<'_>,
) -> Result<String, Error> {
    let selector = selector?;
    let value = json::parse(body, limit.0)?;
    let Some(obj) = value.as_object() else {
        return Err(bad(format!(
            "the request body must be a JSON object with \"inputs\", got {}",
            json::short(&value)
        )));
    };
    let id = match obj.get("id") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(other) => return Err(bad(format!("\"id\" must be a string, got {}", json::short(other)))),
    };
    let Some(inputs) = obj.get("inputs").and_then(Value::as_array) else {
        return Err(bad("the request needs \"inputs\": a JSON list of tensors".into()));
    };
    let servable = m.resolve(name, &selector)?;
    call.servable(&servable);
    let ctx = servable.what();
    let decoded = decode_inputs(ctx, inputs, &mut Budget::new(limit.0))?;
    let mut outputs = Vec::new();
    if let Some(list) = obj.get("outputs") {
        let Some(list) = list.as_array() else {
            return Err(bad(format!("{ctx}: \"outputs\" must be a JSON list of {{\"name\": ...}} objects")));
        };
        for (i, o) in list.iter().enumerate() {
            let Some(n) = o.get("name").and_then(Value::as_str) else {
                return Err(bad(format!("{ctx}: outputs[{i}] has no \"name\" string")));
            };
            if outputs.iter().any(|x: &String| x == n) {
                return Err(bad(format!("{ctx}: output '{n}' is requested more than once in \"outputs\"")));
            }
            outputs.push(n.to_string());
        }
    }
    let response = call.infer(&servable, InferRequest { inputs: decoded, outputs }, None).await?;

    let mut out = String::from("{\"model_name\":");
    json::write_str(&mut out, &servable.model);
    out.push_str(",\"model_version\":");
    json::write_str(&mut out, servable.version_str());
    if let Some(id) = id {
        out.push_str(",\"id\":");
        json::write_str(&mut out, id);
    }
    out.push_str(",\"outputs\":[");
    for (k, (name, t)) in response.outputs.iter().enumerate() {
        if k > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        json::write_str(&mut out, name);
        out.push_str(",\"datatype\":");
        json::write_str(&mut out, dtype_to_v2(t.dtype));
        out.push_str(",\"shape\":");
        out.push_str(&json!(t.shape).to_string());
        out.push_str(",\"data\":");
        // BYTES elements: JSON strings when UTF-8, else {"b64": ...} (JSON cannot carry other bytes).
        json::write_flat(&mut out, t, Strings::Auto);
        out.push('}');
    }
    out.push_str("]}");
    Ok(out)
}

/// Decodes the `"inputs"` list of an infer body; `ctx` names the model and version for messages.
pub fn decode_inputs(ctx: &str, inputs: &[Value], budget: &mut Budget) -> Result<Vec<(String, Tensor)>, Error> {
    let mut decoded: Vec<(String, Tensor)> = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let (name, t) = decode_input(ctx, i, input, budget)?;
        if decoded.iter().any(|(n, _)| *n == name) {
            return Err(bad(format!("{ctx}: input '{name}' appears more than once in \"inputs\"")));
        }
        decoded.push((name, t));
    }
    Ok(decoded)
}

/// One entry of `"inputs"`: `{"name", "shape", "datatype", "data", "parameters"?}`. BYTES elements
/// are JSON strings or `{"b64": "..."}` (any bytes). The size the shape claims is charged to the
/// request's budget before the data is looked at.
fn decode_input(ctx: &str, i: usize, input: &Value, budget: &mut Budget) -> Result<(String, Tensor), Error> {
    let Some(o) = input.as_object() else {
        return Err(bad(format!("{ctx}: inputs[{i}] must be a JSON object, got {}", json::short(input))));
    };
    let Some(name) = o.get("name").and_then(Value::as_str) else {
        return Err(bad(format!("{ctx}: inputs[{i}] has no \"name\" string")));
    };
    let err = |m: String| bad(format!("{ctx}: input '{name}': {m}"));
    let Some(datatype) = o.get("datatype").and_then(Value::as_str) else {
        return Err(err("no \"datatype\" string".into()));
    };
    let Some(dtype) = dtype_from_v2(datatype) else {
        return Err(err(format!("datatype {datatype} is not supported; supported datatypes: {}", supported_v2())));
    };
    let shape: Option<Vec<i64>> = o
        .get("shape")
        .and_then(Value::as_array)
        .and_then(|dims| dims.iter().map(|d| d.as_u64().and_then(|d| i64::try_from(d).ok())).collect());
    let Some(shape) = shape else {
        return Err(err(format!(
            "\"shape\" must be a list of non-negative integers, got {}",
            o.get("shape").map_or_else(|| "nothing".into(), json::short)
        )));
    };
    if o.get("parameters").and_then(|p| p.get("binary_data_size")).is_some() {
        return Err(err("the binary data extension is not supported over REST; send the values in \"data\"".into()));
    }
    let Some(data) = o.get("data") else {
        return Err(err("no \"data\"".into()));
    };
    let mut leaves = Vec::new();
    json::flatten_any(data, &mut leaves);
    let input = Input { ctx, name };
    json::charge(input, budget, dtype, &shape, &leaves)?;
    let n = claimed_elements(input, &shape)?;
    if leaves.len() as u128 != n {
        return Err(err(format!("shape {} needs {n} values, \"data\" has {}", fmt_shape(&shape), leaves.len())));
    }
    let t = json::to_tensor(input, dtype, shape, &leaves)?;
    Ok((name.to_string(), t))
}
