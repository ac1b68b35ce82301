//! Authentication: one tower layer in front of every gRPC service and one axum middleware in front
//! of the REST router, before any body is decoded. Default deny with an explicit open list; admin
//! APIs by path; the tenant's request rate and concurrency; then the call runs inside its
//! [`RequestCtx`] and is metered when it ends. Every credential failure goes through
//! [`authenticate`] and gets the same answer.
use super::keys::{self, Digest};
use super::limits::Slot;
use super::{Caller, RequestCtx, Snapshot, Tenancy};
use crate::error::Error;
use crate::tls::{ClientCert, PeerInfo};
use axum::http::{HeaderMap, HeaderValue};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use time::OffsetDateTime;
use tonic::Code;

/// Compared against when the key id is unknown or the token malformed, so every failure costs the same.
static DUMMY: Digest = Digest([0x5a; 32]);

/// The token of `authorization: Bearer` and/or `x-api-key`. Both present and different: refused.
fn token(headers: &HeaderMap) -> Result<Option<&str>, Error> {
    let bearer = match headers.get(axum::http::header::AUTHORIZATION) {
        None => None,
        Some(v) => {
            let v = v.to_str().map_err(|_| Error::Unauthenticated)?;
            match v.split_once(' ') {
                Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => Some(t.trim()),
                _ => return Err(Error::Unauthenticated),
            }
        }
    };
    let api_key = match headers.get("x-api-key") {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| Error::Unauthenticated)?.trim()),
    };
    match (bearer, api_key) {
        (Some(a), Some(b)) => {
            if Digest::of(a.as_bytes()).ct_eq(&Digest::of(b.as_bytes())) {
                Ok(Some(a))
            } else {
                Err(Error::Unauthenticated)
            }
        }
        (a, b) => Ok(a.or(b)),
    }
}

fn verify_key(snap: &Snapshot, token: &str, now: OffsetDateTime) -> Result<Caller, Error> {
    let entry = keys::token_id(token).and_then(|id| snap.keys.get(id));
    let digest = Digest::of(token.as_bytes());
    let matches = digest.ct_eq(entry.map_or(&DUMMY, |e| &e.digest));
    match entry {
        Some(e) if matches && e.expires.is_none_or(|x| now < x) => {
            Ok(Caller { tenant: Arc::clone(&e.tenant), key_id: Some(Arc::clone(&e.id)) })
        }
        _ => Err(Error::Unauthenticated),
    }
}

fn cert_tenant(snap: &Snapshot, cert: &ClientCert) -> Option<Arc<super::Tenant>> {
    use super::config::CertMatch;
    let mut found: Option<&Arc<super::Tenant>> = snap.certs.get(&CertMatch::Sha256(cert.sha256));
    let candidates = cert
        .uris
        .iter()
        .map(|u| CertMatch::SanUri(u.clone()))
        .chain(cert.dns.iter().map(|d| CertMatch::SanDns(d.clone())));
    for m in candidates {
        if let Some(t) = snap.certs.get(&m) {
            match found {
                Some(f) if !Arc::ptr_eq(f, t) => return None, // names two tenants: ambiguous
                _ => found = Some(t),
            }
        }
    }
    found.cloned()
}

/// Who is calling, from the key and/or the verified client certificate.
pub fn authenticate(
    snap: &Snapshot,
    headers: &HeaderMap,
    cert: Option<&ClientCert>,
    now: OffsetDateTime,
) -> Result<Caller, Error> {
    let by_key = token(headers)?.map(|t| verify_key(snap, t, now)).transpose()?;
    let by_cert = cert.map(|c| cert_tenant(snap, c));
    match (by_key, by_cert) {
        (Some(k), Some(Some(t))) if !Arc::ptr_eq(&k.tenant, &t) => Err(Error::Unauthenticated),
        (Some(k), _) => Ok(k),
        (None, Some(Some(tenant))) => Ok(Caller { tenant, key_id: None }),
        (None, Some(None)) => Err(Error::Unauthenticated),
        (None, None) => {
            snap.anonymous.clone().map(|tenant| Caller { tenant, key_id: None }).ok_or(Error::Unauthenticated)
        }
    }
}

/// What the layers pass on: the context the call runs in and the tenant's concurrency slot.
pub struct Admitted {
    pub ctx: Arc<RequestCtx>,
    _slot: Option<Slot>,
}

/// Authentication, the admin check (`admin_api` names the API) and the tenant-wide limits.
pub fn admit(
    tenancy: &Arc<Tenancy>,
    headers: &HeaderMap,
    cert: Option<&ClientCert>,
    admin_api: Option<&str>,
    metered: bool,
) -> Result<Admitted, Error> {
    let snap = tenancy.snapshot();
    let caller = authenticate(&snap, headers, cert, OffsetDateTime::now_utc()).inspect_err(|e| {
        if let Some(reason) = super::Reject::of(e) {
            tenancy.reject("", reason);
        }
    })?;
    let t = &caller.tenant;
    let checks = || {
        if let Some(api) = admin_api {
            if !t.admin {
                return Err(Error::PermissionDenied(format!(
                    "{api} needs the ADMIN role; {} has the USER role",
                    t.who
                )));
            }
        }
        t.limits.check_rate(&t.who)?;
        t.limits.admit(&t.who)
    };
    let slot = checks().inspect_err(|e| {
        if let Some(reason) = super::Reject::of(e) {
            tenancy.reject(&t.name, reason);
        }
    })?;
    Ok(Admitted { ctx: Arc::new(RequestCtx::new(caller, Arc::clone(tenancy), metered)), _slot: slot })
}

/// Credentials never travel further than the layer.
fn strip(headers: &mut HeaderMap) {
    headers.remove(axum::http::header::AUTHORIZATION);
    headers.remove("x-api-key");
}

// ---- gRPC ----

const GRPC_OPEN: [&str; 3] =
    ["/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"];
const GRPC_OPEN_EXACT: [&str; 2] =
    ["/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady"];
const GRPC_ADMIN: [&str; 4] = [
    "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
    "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/inference.GRPCInferenceService/RepositoryModelUnload",
    "/inference.GRPCInferenceService/RepositoryIndex",
];
const GRPC_METERED: [&str; 2] =
    ["/tensorflow.serving.PredictionService/Predict", "/inference.GRPCInferenceService/ModelInfer"];

/// The tower layer in front of every gRPC service (a pass-through without tenancy).
#[derive(Debug, Clone)]
pub struct GrpcAuthLayer(pub Option<Arc<Tenancy>>);

impl<S> tower_layer::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;
    fn layer(&self, inner: S) -> GrpcAuth<S> {
        GrpcAuth { inner, tenancy: self.0.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcAuth<S> {
    inner: S,
    tenancy: Option<Arc<Tenancy>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn grpc_code(headers: &HeaderMap) -> Code {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32)
}

impl<S> tower_service::Service<axum::http::Request<tonic::body::Body>> for GrpcAuth<S>
where
    S: tower_service::Service<
            axum::http::Request<tonic::body::Body>,
            Response = axum::http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: axum::http::Request<tonic::body::Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(tenancy) = self.tenancy.clone() else { return Box::pin(inner.call(req)) };
        let path = req.uri().path();
        if GRPC_OPEN.iter().any(|p| path.starts_with(p)) || GRPC_OPEN_EXACT.contains(&path) {
            return Box::pin(inner.call(req));
        }
        let admin_api = GRPC_ADMIN.iter().find(|p| **p == path).and_then(|p| p.rsplit('/').next());
        let metered = GRPC_METERED.contains(&path);
        let cert = req.extensions().get::<PeerInfo>().and_then(|p| p.client_cert.clone());
        match admit(&tenancy, req.headers(), cert.as_deref(), admin_api, metered) {
            Err(e) => {
                tracing::debug!(path, "gRPC call refused: {e}");
                let status: tonic::Status = e.into();
                Box::pin(async move { Ok(status.into_http()) })
            }
            Ok(admitted) => {
                strip(req.headers_mut());
                Box::pin(async move {
                    let ctx = Arc::clone(&admitted.ctx);
                    let res = ctx.clone().scope(inner.call(req)).await;
                    ctx.finish(Some(res.as_ref().map_or(Code::Internal, |r| grpc_code(r.headers()))));
                    drop(admitted);
                    res
                })
            }
        }
    }
}

// ---- REST ----

const REST_OPEN: [&str; 4] = ["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"];

fn rest_admin(path: &str) -> Option<&'static str> {
    if path.starts_with("/maas/v1/models") {
        Some("/maas/v1/models")
    } else if path == "/metrics" {
        Some("/metrics")
    } else {
        None
    }
}

fn rest_metered(method: &axum::http::Method, path: &str) -> bool {
    method == axum::http::Method::POST
        && ((path.starts_with("/v1/models/") && path.ends_with(":predict"))
            || (path.starts_with("/v2/models/") && path.ends_with("/infer")))
}

fn code_of_http(status: u16) -> Code {
    match status {
        200..=299 => Code::Ok,
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        413 | 429 => Code::ResourceExhausted,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

/// The axum middleware in front of the REST router (see [`crate::api::rest`]).
pub async fn rest_layer(
    axum::extract::State(tenancy): axum::extract::State<Option<Arc<Tenancy>>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let Some(tenancy) = tenancy else { return next.run(req).await };
    let path = req.uri().path().to_string();
    if REST_OPEN.contains(&path.as_str()) {
        return next.run(req).await;
    }
    let cert = req.extensions().get::<axum::extract::ConnectInfo<PeerInfo>>().and_then(|c| c.0.client_cert.clone());
    let metered = rest_metered(req.method(), &path);
    match admit(&tenancy, req.headers(), cert.as_deref(), rest_admin(&path), metered) {
        Err(e) => {
            tracing::debug!(path, "REST request refused: {e}");
            crate::api::rest::error_response(&e)
        }
        Ok(admitted) => {
            strip(req.headers_mut());
            let ctx = Arc::clone(&admitted.ctx);
            let res = ctx.clone().scope(next.run(req)).await;
            ctx.finish(Some(code_of_http(res.status().as_u16())));
            drop(admitted);
            res
        }
    }
}

/// The headers a refusal carries on REST: `WWW-Authenticate` (401), `Retry-After` (rate limits).
pub fn rest_headers(e: &Error, headers: &mut HeaderMap) {
    match e {
        Error::Unauthenticated => {
            headers.insert(axum::http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"maas\""));
        }
        Error::RateLimited { retry_after, .. } => {
            headers.insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from(super::limits::retry_after_secs(*retry_after)),
            );
        }
        _ => {}
    }
}
