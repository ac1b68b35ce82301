//! What the gRPC request layer (`maas::logging::grpc::GrpcRequestLayer`: request id, span, access
//! line) costs per request, around an inner service that answers at once: the layer's whole
//! overhead, with the logger the server installs writing to a sink.
//!
//! - `no_subscriber`: no logger at all (as in the in-process tests)
//! - `text`: `--log-format text`, access log off (the default)
//! - `text_access`, `json_access`: `--access-log` on, each format
//!
//!     cargo bench --bench request_layer
use criterion::{criterion_group, criterion_main, Criterion};
use maas::logging::grpc::GrpcRequestLayer;
use maas::logging::{json, LogFormat};
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tonic::body::Body;
use tower::{Layer, Service};

/// Answers every request with an empty 200 and `grpc-status: 0` in the headers.
#[derive(Clone)]
struct Instant200;

impl Service<http::Request<Body>> for Instant200 {
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<http::Response<Body>, std::convert::Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<Body>) -> Self::Future {
        let mut r = http::Response::new(Body::empty());
        r.headers_mut().insert("grpc-status", http::HeaderValue::from_static("0"));
        std::future::ready(Ok(r))
    }
}

fn request() -> http::Request<Body> {
    let mut r = http::Request::new(Body::empty());
    *r.uri_mut() = http::Uri::from_static("/tensorflow.serving.PredictionService/Predict");
    r.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
    r
}

fn one(
    svc: &mut impl Service<http::Request<Body>, Response = http::Response<impl Send>, Error = std::convert::Infallible>,
) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut fut = pin!(svc.call(request()));
    match fut.as_mut().poll(&mut cx) {
        // Dropping the response (and its body) writes the access line, if on.
        Poll::Ready(r) => drop(black_box(r)),
        Poll::Pending => panic!("the inner service answers at once"),
    }
}

fn subscriber(format: LogFormat, access_log: bool) -> tracing::Dispatch {
    let b = tracing_subscriber::fmt().with_env_filter(maas::logging::filter(access_log)).with_writer(std::io::sink);
    match format {
        LogFormat::Text => b.with_ansi(false).finish().into(),
        LogFormat::Json => b.fmt_fields(json::JsonSpanFields).event_format(json::JsonLines).finish().into(),
    }
}

fn layer(c: &mut Criterion) {
    let mut g = c.benchmark_group("grpc_request_layer");
    let mut svc = GrpcRequestLayer.layer(Instant200);
    g.bench_function("no_subscriber", |b| b.iter(|| one(&mut svc)));
    for (name, format, access) in [
        ("text", LogFormat::Text, false),
        ("text_access", LogFormat::Text, true),
        ("json_access", LogFormat::Json, true),
    ] {
        tracing::dispatcher::with_default(&subscriber(format, access), || {
            g.bench_function(name, |b| b.iter(|| one(&mut svc)));
        });
    }
    let mut bare = Instant200;
    g.bench_function("without_the_layer", |b| b.iter(|| one(&mut bare)));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = layer
}
criterion_main!(benches);
