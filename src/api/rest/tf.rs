//! TensorFlow Serving REST API (`/v1/models/...`): model status, metadata and predict.
//!
//! matchit (axum's router) cannot match a parameter with a suffix in one segment, so
//! `/v1/models/{name}:predict` is routed as `/v1/models/{name}` and the verb is split off the last
//! `:` here.
use super::json::{self, Strings};
use super::{body_rejected, error_response, respond, Mgr};
use crate::api::tf_tensor::dtype_to_tf;
use crate::api::tfserving::DEFAULT_SIGNATURE;
use crate::error::Error;
use crate::manager::{ModelManager, VersionSelector, VersionStatus};
use crate::metrics::{Api, Call};
use crate::runtime::Servable;
use crate::tensor::{DType, InferRequest, Tensor, TensorData, TensorSpec};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{Method, Uri};
use axum::response::Response;
use axum::routing::get;
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
    method: Method,
    uri: Uri,
    Path(name_verb): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some((name, verb)) = split_verb(&name_verb) else {
        return error_response(&malformed(&method, &uri));
    };
    post(&m, &method, &uri, name, Sel::Latest, verb, body).await
}

async fn post_version(
    State(m): Mgr,
    method: Method,
    uri: Uri,
    Path((name, v_verb)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some((v, verb)) = split_verb(&v_verb) else {
        return error_response(&malformed(&method, &uri));
    };
    post(&m, &method, &uri, &name, Sel::Version(v), verb, body).await
}

async fn post_label(
    State(m): Mgr,
    method: Method,
    uri: Uri,
    Path((name, l_verb)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some((l, verb)) = split_verb(&l_verb) else {
        return error_response(&malformed(&method, &uri));
    };
    post(&m, &method, &uri, &name, Sel::Label(l), verb, body).await
}

async fn post(
    m: &ModelManager,
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
    let result = predict(m, name, selector, &body, &mut call).await;
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

fn error_code_name(code: tonic::Code) -> String {
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
    name: &str,
    selector: VersionSelector,
    body: &[u8],
    call: &mut Call<'_>,
) -> Result<String, Error> {
    let value = json::parse(body).map_err(Error::InvalidArgument)?;
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
    let ctx = format!("model '{}' version {}", servable.model, servable.version);
    let (inputs, batch) = match rows {
        Some(instances) => {
            let (inputs, n) = decode_rows(&servable, &ctx, instances)?;
            (inputs, Some(n))
        }
        None => (decode_columns(&servable, &ctx, obj.get("inputs").unwrap_or(&Value::Null))?, None),
    };
    let response = call.infer(&servable, InferRequest { inputs, outputs: Vec::new() }, None).await?;
    match batch {
        Some(n) => encode_rows(&ctx, &response.outputs, n),
        None => Ok(encode_columns(&response.outputs)),
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

/// Converts the leaves of one input to a tensor of the dtype the signature gives it.
fn input_tensor(
    servable: &Servable,
    ctx: &str,
    name: &str,
    shape: Vec<i64>,
    leaves: &[&Value],
) -> Result<Tensor, Error> {
    let Some(spec) = servable.signature.inputs.iter().find(|s| s.name == name) else {
        return Err(unknown_input(servable, name));
    };
    json::to_tensor(spec.dtype, shape, leaves)
        .map_err(|m| Error::InvalidArgument(format!("{ctx}: input '{name}': {m}")))
}

fn input_names(servable: &Servable) -> String {
    let names: Vec<String> = servable.signature.inputs.iter().map(|s| format!("'{}'", s.name)).collect();
    format!("[{}]", names.join(", "))
}

/// One value (nested list) per input, for the whole input.
fn whole(servable: &Servable, ctx: &str, name: &str, v: &Value) -> Result<Tensor, Error> {
    let shape = json::nested_shape(v);
    let mut leaves = Vec::new();
    json::flatten_rect(v, &shape, &mut leaves)
        .map_err(|m| Error::InvalidArgument(format!("{ctx}: input '{name}': {m}")))?;
    input_tensor(servable, ctx, name, shape, &leaves)
}

/// Row format: a list of instances, each the value of the single input or an object keyed by input
/// name; every input gets the number of instances as its first dimension.
fn decode_rows(servable: &Servable, ctx: &str, instances: &Value) -> Result<(Vec<(String, Tensor)>, usize), Error> {
    let list = match instances.as_array() {
        Some(l) if !l.is_empty() => l,
        _ => {
            return Err(Error::InvalidArgument(format!(
                "{ctx}: \"instances\" must be a non-empty JSON list (one element per row), got {}",
                json::short(instances)
            )))
        }
    };
    let n = list.len();
    let Some(first) = json::is_named_map(&list[0]) else {
        let sig = &servable.signature.inputs;
        if sig.len() != 1 {
            return Err(Error::InvalidArgument(format!(
                "{ctx}: the model has {} inputs {}; in the row format each instance must be a JSON object keyed \
                 by input name",
                sig.len(),
                input_names(servable)
            )));
        }
        let name = sig[0].name.clone();
        let t = whole(servable, ctx, &name, instances)?;
        return Ok((vec![(name, t)], n));
    };
    let names: Vec<&String> = first.keys().collect();
    for (i, inst) in list.iter().enumerate() {
        let same = json::is_named_map(inst)
            .is_some_and(|o| o.len() == names.len() && names.iter().all(|k| o.contains_key(k.as_str())));
        if !same {
            let listed: Vec<String> = names.iter().map(|k| format!("'{k}'")).collect();
            return Err(Error::InvalidArgument(format!(
                "{ctx}: instance {i} does not name the same inputs as instance 0 ([{}]); in the row format every \
                 instance is a JSON object with the same input names",
                listed.join(", ")
            )));
        }
    }
    let mut inputs = Vec::with_capacity(names.len());
    for name in names {
        let inner = json::nested_shape(&first[name.as_str()]);
        let mut shape = Vec::with_capacity(inner.len() + 1);
        shape.push(n as i64);
        shape.extend_from_slice(&inner);
        let mut leaves = Vec::new();
        for (i, inst) in list.iter().enumerate() {
            json::flatten_rect(&inst[name.as_str()], &inner, &mut leaves)
                .map_err(|m| Error::InvalidArgument(format!("{ctx}: input '{name}': instance {i}: {m}")))?;
        }
        inputs.push((name.clone(), input_tensor(servable, ctx, name, shape, &leaves)?));
    }
    Ok((inputs, n))
}

/// Columnar format: the value of the single input, or an object keyed by input name.
fn decode_columns(servable: &Servable, ctx: &str, inputs: &Value) -> Result<Vec<(String, Tensor)>, Error> {
    if let Some(map) = json::is_named_map(inputs) {
        return map.iter().map(|(name, v)| Ok((name.clone(), whole(servable, ctx, name, v)?))).collect();
    }
    let sig = &servable.signature.inputs;
    if sig.len() != 1 {
        return Err(Error::InvalidArgument(format!(
            "{ctx}: the model has {} inputs {}; \"inputs\" must be a JSON object keyed by input name",
            sig.len(),
            input_names(servable)
        )));
    }
    let name = sig[0].name.clone();
    let t = whole(servable, ctx, &name, inputs)?;
    Ok(vec![(name, t)])
}

/// TF Serving writes outputs named `*_bytes` as `{"b64": ...}`.
fn strings_for(name: &str) -> Strings {
    if name.ends_with("_bytes") {
        Strings::B64
    } else {
        Strings::Auto
    }
}

fn write_row(out: &mut String, name: &str, t: &Tensor, row: usize) {
    let dims = t.shape.get(1..).unwrap_or_default();
    let stride: usize = dims.iter().map(|&d| d.max(0) as usize).product();
    json::write_nested(out, t, dims, row * stride, strings_for(name));
}

/// `{"predictions": [...]}`: one element per row, an object keyed by output name if there are several.
fn encode_rows(ctx: &str, outputs: &[(String, Tensor)], n: usize) -> Result<String, Error> {
    for (name, t) in outputs {
        if t.shape.first() != Some(&(n as i64)) {
            return Err(Error::InvalidArgument(format!(
                "{ctx}: output '{name}' has shape {}, whose first dimension is not the {n} instances of the \
                 request, so it cannot be returned in the row format; send \"inputs\" (columnar format) instead",
                crate::tensor::fmt_shape(&t.shape)
            )));
        }
    }
    let mut out = String::from("{\"predictions\":[");
    for row in 0..n {
        if row > 0 {
            out.push(',');
        }
        match outputs {
            [(name, t)] => write_row(&mut out, name, t, row),
            _ => {
                out.push('{');
                for (k, (name, t)) in outputs.iter().enumerate() {
                    if k > 0 {
                        out.push(',');
                    }
                    json::write_str(&mut out, name);
                    out.push(':');
                    write_row(&mut out, name, t, row);
                }
                out.push('}');
            }
        }
    }
    out.push_str("]}");
    Ok(out)
}

/// `{"outputs": ...}`: the single output's value, or an object keyed by output name.
fn encode_columns(outputs: &[(String, Tensor)]) -> String {
    let mut out = String::from("{\"outputs\":");
    match outputs {
        [(name, t)] => {
            json::write_nested(&mut out, t, &t.shape, 0, strings_for(name));
        }
        _ => {
            out.push('{');
            for (k, (name, t)) in outputs.iter().enumerate() {
                if k > 0 {
                    out.push(',');
                }
                json::write_str(&mut out, name);
                out.push(':');
                json::write_nested(&mut out, t, &t.shape, 0, strings_for(name));
            }
            out.push('}');
        }
    }
    out.push('}');
    out
}
