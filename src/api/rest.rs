//! REST front ends (axum): TF Serving's `/v1/...`, KServe v2's `/v2/...`, maas's own status route
//! `/maas/v1/models/{model}`, the Kubernetes probes `/healthz` and `/readyz`, and the Prometheus
//! metrics at `/metrics`.
//!
//! Both protocols translate their JSON into the protocol-neutral [`crate::tensor::InferRequest`] and
//! call [`crate::runtime::Servable::infer`], like the gRPC front ends; errors are the core
//! [`Error`]s, with the HTTP status from [`Error::http_status`] and the body `{"error": "<message>"}`
//! (the error format of both TF Serving REST and v2 REST), with the same message text as gRPC.
mod json;
mod maas;
mod tf;
mod tf_json;
mod v2;

/// The REST body decoders on their own, without HTTP or a loaded model (what the handlers run; for
/// tests and tools).
pub mod decoders {
    pub use super::json::parse;
    pub use super::tf_json::{decode_inputs as tf_inputs, Model};
    pub use super::v2::decode_inputs as v2_inputs;
}

use crate::error::Error;
use crate::manager::ModelManager;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// Largest request body accepted by [`router`] (the default of `--max_message_size_bytes`).
pub const DEFAULT_BODY_LIMIT: usize = 1 << 30;

type Mgr = State<Arc<ModelManager>>;

/// Every REST route, with the default body limit.
pub fn router(manager: Arc<ModelManager>) -> Router {
    router_with_body_limit(manager, DEFAULT_BODY_LIMIT)
}

/// Every REST route; request bodies larger than `max_body_bytes` are refused with 413.
pub fn router_with_body_limit(manager: Arc<ModelManager>, max_body_bytes: usize) -> Router {
    router_with_limits(manager, max_body_bytes, max_body_bytes)
}

/// `--max-tensor-bytes` as the REST handlers see it: what one request's parsed JSON, and its
/// decoded inputs all together, may take.
#[derive(Debug, Clone, Copy)]
struct TensorLimit(usize);

/// Every REST route; request bodies larger than `max_body_bytes` are refused with 413, and so are
/// requests whose parsed JSON or decoded inputs would take more than `max_tensor_bytes`.
pub fn router_with_limits(manager: Arc<ModelManager>, max_body_bytes: usize, max_tensor_bytes: usize) -> Router {
    router_with_tenancy(manager, max_body_bytes, max_tensor_bytes, None)
}

/// [`router_with_limits`] behind the tenancy middleware (authentication before any body is read;
/// a pass-through when `tenancy` is `None`).
pub fn router_with_tenancy(
    manager: Arc<ModelManager>,
    max_body_bytes: usize,
    max_tensor_bytes: usize,
    tenancy: Option<Arc<crate::tenancy::Tenancy>>,
) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(crate::metrics::http::METRICS_PATH, get(crate::metrics::http::scrape))
        .merge(tf::routes())
        .merge(v2::routes())
        .merge(maas::routes())
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::Extension(TensorLimit(max_tensor_bytes)))
        .layer(axum::middleware::from_fn_with_state(tenancy, crate::tenancy::auth::rest_layer))
        .layer(axum::middleware::from_fn(crate::logging::rest::rest_request_middleware))
        .with_state(manager)
}

/// Liveness: the process answers.
async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n".into())
}

/// Readiness: every configured model has an AVAILABLE version ([`ModelManager::readiness`]). During
/// a rollout the old version stays AVAILABLE until the new one is, so this does not flap.
async fn readyz(State(manager): Mgr) -> Response {
    match manager.readiness() {
        Ok(()) => text(StatusCode::OK, "ready\n".into()),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

async fn fallback(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    if path.to_ascii_lowercase().starts_with("/v1/") {
        // TF Serving answers any /v1/ path it cannot parse this way.
        return error_response(&Error::InvalidArgument(format!("Malformed request: {method} {path}")));
    }
    error_response(&Error::NotFound(format!("no route for {method} {path}")))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        error_body(&format!("method {method} is not allowed for {}", uri.path())),
    )
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error_body(message: &str) -> String {
    format!("{{\"error\":{}}}", json::str_literal(message))
}

/// `{"error": "<message>"}` with the status of `e`; the message is cut like the gRPC one.
pub(crate) fn error_response(e: &Error) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = tonic::Status::from(e.clone()).message().to_string();
    tracing::debug!(status = status.as_u16(), "REST request failed: {message}");
    crate::tenancy::note_code(e.code());
    let mut r = json_response(status, error_body(&message));
    crate::tenancy::auth::rest_headers(e, r.headers_mut());
    r
}

/// A JSON response, or the error one.
fn respond(result: Result<String, Error>) -> Response {
    match result {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => error_response(&e),
    }
}

/// The response for a request body that could not be read (e.g. too large: 413).
fn body_rejected(r: BytesRejection) -> Response {
    json_response(r.status(), error_body(&format!("cannot read the request body: {}", r.body_text())))
}
