//! One inference request's measurements, from the front end's first line to its answer.
//!
//! A front end starts a [`Call`] when an inference request arrives, attaches the servable it resolved
//! ([`Call::servable`]), runs the request through [`Call::infer`] and hands the final result to
//! [`Call::finish`]. Everything is recorded there, in one place, identically for all four front ends.
//! A call dropped unfinished (the client went away, or the transport enforced the deadline) counts as
//! CANCELLED (DEADLINE_EXCEEDED once its deadline has passed).
use super::registry::{Api, Reason, Registry, VersionMetrics};
use crate::error::Error;
use crate::runtime::Servable;
use crate::tensor::{InferRequest, InferResponse};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

/// Where the servable spent a successful request's time (Triton's stages). With batching, the
/// stages of the batch's run are every request's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stages {
    /// Waiting for a free session, or in the batch queue.
    pub queue_ns: u64,
    /// Converting inputs to ONNX Runtime values (and merging a batch).
    pub input_ns: u64,
    /// The ONNX Runtime run.
    pub infer_ns: u64,
    /// Copying the outputs out of ONNX Runtime (and splitting a batch).
    pub output_ns: u64,
    /// Whether the request went through the batch queue.
    pub batched: bool,
}

impl Stages {
    /// The stages of one run: inputs converted from `started` to `converted`, a session taken by
    /// `acquired` (waiting for it is queueing), the run until `ran`, the outputs copied out until now.
    pub fn timed(started: Instant, converted: Instant, acquired: Instant, ran: Instant) -> Stages {
        let between = |a: Instant, b: Instant| ns(b.saturating_duration_since(a));
        Stages {
            queue_ns: between(converted, acquired),
            input_ns: between(started, converted),
            infer_ns: between(acquired, ran),
            output_ns: between(ran, Instant::now()),
            batched: false,
        }
    }
}

/// `r` after `waited` in a queue before its run.
pub fn queued(mut r: InferResponse, waited: Duration) -> InferResponse {
    r.stages.queue_ns = r.stages.queue_ns.saturating_add(ns(waited));
    r
}

/// The stages of a batch's run, popped from the queue at `popped`: the time around the run (merging
/// the requests, splitting the outputs) counts as input preparation.
pub fn batched(run: Stages, popped: Instant) -> Stages {
    let measured = run.queue_ns.saturating_add(run.input_ns).saturating_add(run.infer_ns).saturating_add(run.output_ns);
    let extra = ns(popped.elapsed()).saturating_sub(measured);
    Stages { input_ns: run.input_ns.saturating_add(extra), batched: true, ..run }
}

/// A request's answer from a batch: the batch's stages, after waiting in the queue from `started`
/// until `popped`.
pub fn in_batch(mut r: InferResponse, batch: Stages, started: Instant, popped: Instant) -> InferResponse {
    r.stages =
        Stages { queue_ns: batch.queue_ns.saturating_add(ns(popped.saturating_duration_since(started))), ..batch };
    r
}

/// Nanoseconds of a duration, saturating.
pub fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A transport that drops a request this close to its deadline is enforcing the deadline (tonic
/// computes it a little before the handler does).
const DEADLINE_SLACK: Duration = Duration::from_millis(20);

/// Triton's failure reason for an error.
pub fn reason(e: &Error) -> Reason {
    match e {
        Error::ResourceExhausted(_) | Error::Unavailable(_) => Reason::Rejected,
        Error::DeadlineExceeded(_) => Reason::Canceled,
        Error::Runtime { .. } => Reason::Backend,
        _ => Reason::Other,
    }
}

/// One inference request being measured.
#[derive(Debug)]
pub struct Call<'r> {
    registry: &'r Registry,
    api: Api,
    started: Instant,
    deadline: Option<Instant>,
    version: Option<Arc<VersionMetrics>>,
    resolved: Option<Instant>,
    returned: Option<Instant>,
    decode_ns: u64,
    rows: u64,
    stages: Stages,
    done: bool,
}

impl<'r> Call<'r> {
    pub fn start(registry: &'r Registry, api: Api) -> Call<'r> {
        Call {
            registry,
            api,
            started: Instant::now(),
            deadline: None,
            version: None,
            resolved: None,
            returned: None,
            decode_ns: 0,
            rows: 0,
            stages: Stages::default(),
            done: false,
        }
    }

    /// The client's deadline, if it sent one.
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Call<'r> {
        self.deadline = deadline;
        self
    }

    /// The version the request resolved to: from here on it is counted under that model and version.
    pub fn servable(&mut self, s: &Servable) {
        self.attach(Arc::clone(s.metrics()));
    }

    /// Like [`Call::servable`], with the version's series directly.
    pub fn attach(&mut self, v: Arc<VersionMetrics>) {
        self.version = Some(v);
        self.resolved = Some(Instant::now());
    }

    /// Runs the decoded request on `s` (see [`Servable::infer_before`]); the time since the servable
    /// was resolved counts as input preparation.
    pub async fn infer(
        &mut self,
        s: &Arc<Servable>,
        req: InferRequest,
        deadline: Option<Instant>,
    ) -> Result<InferResponse, Error> {
        if self.version.is_none() {
            self.servable(s);
        }
        self.deadline = self.deadline.or(deadline);
        self.decode_ns = self.resolved.map_or(0, |t| ns(t.elapsed()));
        self.rows = rows(&req);
        let result = s.infer_before(req, deadline).await;
        if let Ok(r) = &result {
            self.ran(r.stages);
        }
        result
    }

    /// Records what the servable measured; encoding the answer starts now.
    pub fn ran(&mut self, stages: Stages) {
        self.stages = stages;
        self.returned = Some(Instant::now());
    }

    /// Sets the rows the request carries (`nv_inference_count`); [`Call::infer`] does it.
    pub fn rows(&mut self, rows: u64) {
        self.rows = rows;
    }

    /// Records the request's outcome and passes the result through.
    pub fn finish<T>(mut self, result: Result<T, Error>) -> Result<T, Error> {
        match &result {
            Ok(_) => self.record(Code::Ok, None),
            Err(e) => self.record(e.code(), Some(reason(e))),
        }
        result
    }

    /// Records a request that failed before it became a core request (e.g. an unreadable body).
    pub fn fail(mut self, code: Code) {
        let reason = if code == Code::ResourceExhausted { Reason::Rejected } else { Reason::Other };
        self.record(code, Some(reason));
    }

    /// Records a REST request refused with HTTP `status` before it became a core request (413: a
    /// body over the limit is RESOURCE_EXHAUSTED, other refusals INVALID_ARGUMENT); passes `response`
    /// through.
    pub fn fail_http<R>(self, status: u16, response: R) -> R {
        self.fail(if status == 413 { Code::ResourceExhausted } else { Code::InvalidArgument });
        response
    }

    fn record(&mut self, code: Code, failure: Option<Reason>) {
        self.done = true;
        let Some(v) = &self.version else {
            self.registry.unknown.inc(code);
            return;
        };
        let model = &v.model;
        model.request_count.inc(code);
        if let Some(reason) = failure {
            v.failure[reason as usize].fetch_add(1, Relaxed);
            return;
        }
        let now = Instant::now();
        let total = ns(now.saturating_duration_since(self.started));
        let encode = self.returned.map_or(0, |t| ns(now.saturating_duration_since(t)));
        let api = self.api.index();
        let st = &self.stages;
        model.request_latency[api].observe_ns(total);
        model.runtime_latency[api].observe_ns(st.infer_ns);
        v.success.fetch_add(1, Relaxed);
        v.inferences.fetch_add(self.rows, Relaxed);
        v.request_ns.fetch_add(total, Relaxed);
        v.queue_ns.fetch_add(st.queue_ns, Relaxed);
        v.input_ns.fetch_add(self.decode_ns.saturating_add(st.input_ns), Relaxed);
        v.infer_ns.fetch_add(st.infer_ns, Relaxed);
        v.output_ns.fetch_add(st.output_ns.saturating_add(encode), Relaxed);
        v.duration[api].observe_ns(total);
        if st.batched {
            self.registry.batch_queue.observe_ns(st.queue_ns);
        }
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let expired = self.deadline.is_some_and(|d| Instant::now() + DEADLINE_SLACK >= d);
        let code = if expired { Code::DeadlineExceeded } else { Code::Cancelled };
        self.record(code, Some(Reason::Canceled));
    }
}

/// Rows of a request: the first dimension of its first input (1 for a scalar).
fn rows(req: &InferRequest) -> u64 {
    match req.inputs.first().and_then(|(_, t)| t.shape.first()) {
        Some(&d) => u64::try_from(d).unwrap_or(0),
        None => 1,
    }
}
