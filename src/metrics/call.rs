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
///
/// Reading the clock is the dearest part of recording, so a request reads it as few times as
/// possible: the servable twice around the run (plus the time it already takes at admission), the
/// front end twice (start, finish); the stages are differences of these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stages {
    /// From admission to the run: waiting for a free session, or in the batch queue.
    pub queue_ns: u64,
    /// Converting inputs to ONNX Runtime values and taking the session (and merging a batch).
    pub input_ns: u64,
    /// The ONNX Runtime run.
    pub infer_ns: u64,
    /// Copying the outputs out of ONNX Runtime (the front end adds the time from `ran` to its answer).
    pub output_ns: u64,
    /// Whether the request went through the batch queue.
    pub batched: bool,
    /// When the servable admitted the request (the front end's decoding ends here).
    pub admitted: Option<Instant>,
    /// When the run's preparation began (the queue ends here).
    pub began: Option<Instant>,
    /// When the run ended (copying the outputs starts here).
    pub ran: Option<Instant>,
}

impl Stages {
    /// The stages of one run: inputs converted and a session taken from `started` to `acquired`,
    /// the run until `ran`.
    pub fn timed(started: Instant, acquired: Instant, ran: Instant) -> Stages {
        Stages {
            input_ns: ns(acquired.saturating_duration_since(started)),
            infer_ns: ns(ran.saturating_duration_since(acquired)),
            began: Some(started),
            ran: Some(ran),
            ..Stages::default()
        }
    }
}

/// `r`, admitted at `admitted`, after waiting until its run began.
pub fn queued(mut r: InferResponse, admitted: Instant) -> InferResponse {
    if let Some(began) = r.stages.began {
        r.stages.queue_ns = r.stages.queue_ns.saturating_add(ns(began.saturating_duration_since(admitted)));
    }
    r.stages.admitted = Some(admitted);
    r
}

/// The stages of a batch's run, popped from the queue at `popped`: merging the requests (from
/// `popped` until the run began) counts as input preparation.
pub fn batched(run: Stages, popped: Instant) -> Stages {
    let merge = run.began.map_or(0, |b| ns(b.saturating_duration_since(popped)));
    Stages { input_ns: run.input_ns.saturating_add(merge), batched: true, ..run }
}

/// A request's answer from a batch: the batch's stages, after waiting in the queue from `started`
/// (admission) until `popped`.
pub fn in_batch(mut r: InferResponse, batch: Stages, started: Instant, popped: Instant) -> InferResponse {
    r.stages = Stages { queue_ns: ns(popped.saturating_duration_since(started)), admitted: Some(started), ..batch };
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
    }

    /// Runs the decoded request on `s` (see [`Servable::infer_before`]); the time since the call
    /// started (resolving the model, decoding the wire tensors) counts as input preparation.
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
        self.sent(&req);
        let result = s.infer_before(req, deadline).await;
        if let Ok(r) = &result {
            self.ran(r.stages);
        }
        result
    }

    /// The decoded request goes to the servable ([`Call::infer`] does it).
    pub fn sent(&mut self, req: &InferRequest) {
        self.rows = rows(req);
    }

    /// Records what the servable measured ([`Call::infer`] does it).
    pub fn ran(&mut self, stages: Stages) {
        self.stages = stages;
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
        let api = self.api.index();
        let st = &self.stages;
        // Resolving and decoding: until the servable admitted the request.
        let decode = st.admitted.map_or(0, |t| ns(t.saturating_duration_since(self.started)));
        // Copying the outputs out of ONNX Runtime, handing them back, encoding the answer.
        let encode = st.ran.map_or(0, |t| ns(now.saturating_duration_since(t)));
        model.request_latency[api].observe_ns(total);
        model.runtime_latency[api].observe_ns(st.infer_ns);
        v.success.fetch_add(1, Relaxed);
        v.inferences.fetch_add(self.rows, Relaxed);
        v.request_ns.fetch_add(total, Relaxed);
        v.queue_ns.fetch_add(st.queue_ns, Relaxed);
        v.input_ns.fetch_add(decode.saturating_add(st.input_ns), Relaxed);
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
