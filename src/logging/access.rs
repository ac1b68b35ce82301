//! The access log (`--access-log`): one line per request, target `maas::access`, written when the
//! response has been sent (or the request was abandoned), in the request's span.
//!
//! What is written: request id (from the span), protocol, API, model, version, status, rows (the first
//! dimension of the first input), bytes in and out (the HTTP bodies: for gRPC the length-prefixed,
//! possibly compressed messages), duration and peer address. Never tensor contents and never header
//! values other than the request id.
//!
//! The transport layers know the protocol, API, peer and sizes; the model, version and rows are learnt
//! where the request meets the model manager and the servable, through a task-local [`Notes`] that
//! those places fill with [`note_model`] and [`note_servable`] (no-ops outside an access-logged request).
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The target of access log lines.
pub const TARGET: &str = "maas::access";

/// Whether access lines are written (`--access-log`, which turns the target on in the log filter).
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// What the core learns about the request while serving it.
#[derive(Debug, Default)]
pub struct Notes {
    model: OnceLock<String>,
    /// `i64::MIN` = unknown.
    version: AtomicI64,
    /// -1 = unknown.
    rows: AtomicI64,
    bytes_in: AtomicU64,
}

impl Notes {
    pub fn new() -> Arc<Notes> {
        Arc::new(Notes {
            model: OnceLock::new(),
            version: AtomicI64::new(i64::MIN),
            rows: AtomicI64::new(-1),
            bytes_in: AtomicU64::new(0),
        })
    }

    pub fn set_model(&self, model: &str) {
        if self.model.get().is_none() {
            let _ = self.model.set(model.to_string());
        }
    }

    pub fn set_version(&self, version: i64) {
        self.version.store(version, Ordering::Relaxed);
    }
}

tokio::task_local! {
    static NOTES: Arc<Notes>;
}

/// Runs `fut` with `notes` as the current request's notes.
pub async fn with_notes<F: std::future::Future>(notes: Arc<Notes>, fut: F) -> F::Output {
    NOTES.scope(notes, fut).await
}

/// The request names this model (whether or not it exists).
pub fn note_model(model: &str) {
    let _ = NOTES.try_with(|n| n.set_model(model));
}

/// The request runs on this version; `rows` is the first dimension of its first input.
pub fn note_servable(model: &str, version: i64, rows: Option<i64>) {
    let _ = NOTES.try_with(|n| {
        n.set_model(model);
        n.set_version(version);
        if let Some(r) = rows {
            n.rows.store(r, Ordering::Relaxed);
        }
    });
}

/// The status a request ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Grpc(tonic::Code),
    Http(u16),
}

/// The canonical name of a gRPC code (`OK`, `INVALID_ARGUMENT`, ...).
pub use crate::bench::load::code_name as grpc_code_name;

/// The `grpc-status` in these headers or trailers, if any.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers.get("grpc-status").map(|v| tonic::Code::from_bytes(v.as_bytes()))
}

/// One request's access line, written when it is dropped: after the response body has been sent, or
/// when the request is abandoned (a client that goes away: `CANCELLED` / 499; a gRPC deadline that
/// passed: `DEADLINE_EXCEEDED`).
#[derive(Debug)]
pub struct AccessRecord {
    pub span: tracing::Span,
    pub started: Instant,
    pub protocol: &'static str,
    pub api: String,
    pub peer: Option<SocketAddr>,
    pub notes: Arc<Notes>,
    pub outcome: Option<Outcome>,
    pub bytes_out: u64,
    /// gRPC: the client's deadline (`grpc-timeout`).
    pub deadline: Option<Instant>,
    /// REST: the model and version the path names, written when the core noted none (e.g. a body that
    /// could not be parsed).
    pub path_model: Option<(String, Option<i64>)>,
}

impl AccessRecord {
    pub fn new(span: tracing::Span, protocol: &'static str, api: String, peer: Option<SocketAddr>) -> AccessRecord {
        AccessRecord {
            span,
            started: Instant::now(),
            protocol,
            api,
            peer,
            notes: Notes::new(),
            outcome: None,
            bytes_out: 0,
            deadline: None,
            path_model: None,
        }
    }

    fn status(&self) -> String {
        match self.outcome {
            Some(Outcome::Grpc(code)) => grpc_code_name(code).to_string(),
            Some(Outcome::Http(s)) => s.to_string(),
            // Abandoned before the response completed.
            None if self.protocol == "grpc" => {
                let code = match self.deadline {
                    Some(d) if Instant::now() >= d => tonic::Code::DeadlineExceeded,
                    _ => tonic::Code::Cancelled,
                };
                grpc_code_name(code).to_string()
            }
            // nginx's "client closed request".
            None => "499".to_string(),
        }
    }
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        let n = &self.notes;
        let mut version = n.version.load(Ordering::Relaxed);
        let model = match (n.model.get(), &self.path_model) {
            (Some(m), _) => Some(m.as_str()),
            (None, Some((m, v))) => {
                version = v.unwrap_or(version);
                Some(m.as_str())
            }
            (None, None) => None,
        };
        let rows = n.rows.load(Ordering::Relaxed);
        let duration_ms = self.started.elapsed().as_secs_f64() * 1e3;
        let status = self.status();
        let _in_span = self.span.enter();
        tracing::info!(
            target: TARGET,
            protocol = self.protocol,
            api = %self.api,
            model,
            version = (version != i64::MIN).then_some(version),
            status = %status,
            rows = (rows >= 0).then_some(rows),
            bytes_in = n.bytes_in.load(Ordering::Relaxed),
            bytes_out = self.bytes_out,
            duration_ms = (duration_ms * 1e3).round() / 1e3,
            peer = self.peer.map(tracing::field::display),
            "access"
        );
    }
}

/// A request body that counts its bytes into [`Notes`].
pub struct CountIn<B> {
    inner: B,
    notes: Arc<Notes>,
}

impl<B> CountIn<B> {
    pub fn new(inner: B, notes: Arc<Notes>) -> CountIn<B> {
        CountIn { inner, notes }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for CountIn<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(d) = frame.data_ref() {
                self.notes.bytes_in.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that counts its bytes, reads the gRPC status from its trailers, can append
/// trailers of its own (see [`AccessBody::with_trailers`]), and writes the access line (by dropping
/// the record) when it ends or is dropped.
pub struct AccessBody<B> {
    inner: B,
    record: Option<AccessRecord>,
    /// Sent after the inner body ends.
    trailers: Option<http::HeaderMap>,
    inner_done: bool,
}

impl<B> AccessBody<B> {
    /// `record`: None when the access log is off (the body passes through untouched).
    pub fn new(inner: B, record: Option<AccessRecord>) -> AccessBody<B> {
        AccessBody { inner, record, trailers: None, inner_done: false }
    }

    /// Ends the body with these trailers (for a body that has none of its own).
    pub fn with_trailers(mut self, trailers: http::HeaderMap) -> AccessBody<B> {
        if let (Some(r), Some(code)) = (&mut self.record, grpc_status(&trailers)) {
            r.outcome = Some(Outcome::Grpc(code));
        }
        self.trailers = Some(trailers);
        self
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for AccessBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = if self.inner_done { Poll::Ready(None) } else { Pin::new(&mut self.inner).poll_frame(cx) };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(record) = &mut self.record {
                    if let Some(d) = frame.data_ref() {
                        record.bytes_out += d.len() as u64;
                    } else if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                        record.outcome = Some(Outcome::Grpc(code));
                    }
                }
            }
            Poll::Ready(None) => {
                self.inner_done = true;
                if let Some(t) = self.trailers.take() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                // The end: write the access line now rather than when hyper drops the body.
                self.record = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.trailers.is_none() && (self.inner_done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.trailers.is_some() {
            // Trailers follow: not "exactly 0", or the end would be signalled early.
            let mut h = SizeHint::new();
            h.set_lower(self.inner.size_hint().lower());
            return h;
        }
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names() {
        assert_eq!(grpc_code_name(tonic::Code::Ok), "OK");
        assert_eq!(grpc_code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
        let mut h = http::HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(grpc_status(&h), Some(tonic::Code::NotFound));
    }

    #[test]
    fn notes_outside_a_request_are_ignored() {
        note_model("m");
        note_servable("m", 1, Some(2));
    }

    #[tokio::test]
    async fn notes_inside_a_request() {
        let notes = Notes::new();
        with_notes(Arc::clone(&notes), async {
            note_model("m");
            note_servable("m", 3, Some(7));
        })
        .await;
        assert_eq!(notes.model.get().map(String::as_str), Some("m"));
        assert_eq!(notes.version.load(Ordering::Relaxed), 3);
        assert_eq!(notes.rows.load(Ordering::Relaxed), 7);
    }
}
