//! The gRPC server's request layer (one tower layer around every service): request id and trace
//! context in, `x-request-id` out (initial metadata, on errors too), the request span around the whole
//! call, and the access line.
use super::access::{self, AccessBody, AccessRecord, CountIn, Outcome};
use super::request::{RequestId, RequestIds, REQUEST_ID_HEADER};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::body::Body;
use tracing::Instrument;

/// Add with `tonic::transport::Server::builder().layer(GrpcRequestLayer)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcRequestLayer;

impl<S> tower::Layer<S> for GrpcRequestLayer {
    type Service = GrpcRequestService<S>;

    fn layer(&self, inner: S) -> GrpcRequestService<S> {
        GrpcRequestService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcRequestService<S> {
    inner: S,
}

/// The method of a gRPC path (`/tensorflow.serving.PredictionService/Predict` -> `Predict`).
pub fn grpc_method(path: &str) -> &str {
    path.rsplit('/').next().filter(|m| !m.is_empty()).unwrap_or("-")
}

/// The client's deadline (`grpc-timeout`), parsed as the front ends parse it.
fn deadline(headers: &http::HeaderMap) -> Option<std::time::Instant> {
    let v = headers.get("grpc-timeout")?;
    let mut one = http::HeaderMap::with_capacity(1);
    one.insert("grpc-timeout", v.clone());
    crate::api::grpc_deadline(&tonic::metadata::MetadataMap::from_headers(one))
}

/// The gRPC status headers of a trailers-only response (an error status answered at once).
const STATUS_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];

/// A trailers-only response (a single HEADERS frame holding the status) has no initial metadata:
/// gRPC clients show its headers as trailing metadata. To return `x-request-id` as initial metadata on
/// errors too, such a response becomes headers (initial metadata, with the id), no message, and
/// trailers: the status, and the id again (tonic clients build an error's metadata from the trailers).
/// Returns the trailers to send; None for any other response.
fn split_trailers_only<B: http_body::Body>(
    resp: &mut http::Response<B>,
    id: &http::HeaderValue,
) -> Option<http::HeaderMap> {
    if resp.status() != http::StatusCode::OK
        || !resp.headers().contains_key("grpc-status")
        || !resp.body().is_end_stream()
    {
        return None;
    }
    let mut trailers = http::HeaderMap::with_capacity(4);
    for name in STATUS_HEADERS {
        if let Some(v) = resp.headers_mut().remove(name) {
            trailers.insert(name, v);
        }
    }
    trailers.insert(REQUEST_ID_HEADER, id.clone());
    Some(trailers)
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<Body>> for GrpcRequestService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body + Send + 'static,
{
    type Response = http::Response<AccessBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let ids = RequestIds::from_headers(req.headers());
        let span = ids.span();
        let id_value = ids.header_value();
        req.extensions_mut().insert(RequestId(ids.request_id));
        let record = access::enabled().then(|| {
            let peer = req.extensions().get::<crate::tls::PeerInfo>().and_then(|p| p.remote);
            let mut r = AccessRecord::new(span.clone(), "grpc", grpc_method(req.uri().path()).to_string(), peer);
            r.deadline = deadline(req.headers());
            r
        });
        let notes = record.as_ref().map(|r| std::sync::Arc::clone(&r.notes));
        if let Some(n) = &notes {
            let n = std::sync::Arc::clone(n);
            req = req.map(|b| Body::new(CountIn::new(b, n)));
        }
        let fut = span.in_scope(|| self.inner.call(req));
        let respond = async move {
            let mut record = record;
            let mut resp = fut.await?;
            let trailers = split_trailers_only(&mut resp, &id_value);
            resp.headers_mut().insert(REQUEST_ID_HEADER, id_value);
            if let Some(r) = &mut record {
                r.outcome = access::grpc_status(resp.headers()).map(Outcome::Grpc);
            }
            Ok(resp.map(|b| {
                let body = AccessBody::new(b, record);
                match trailers {
                    Some(t) => body.with_trailers(t),
                    None => body,
                }
            }))
        }
        .instrument(span);
        match notes {
            Some(n) => Box::pin(access::with_notes(n, respond)),
            None => Box::pin(respond),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn method_names() {
        assert_eq!(super::grpc_method("/tensorflow.serving.PredictionService/Predict"), "Predict");
        assert_eq!(super::grpc_method("/inference.GRPCInferenceService/ModelInfer"), "ModelInfer");
        assert_eq!(super::grpc_method("/"), "-");
    }
}
