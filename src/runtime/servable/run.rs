//! Running a request on a session: inputs borrowed into ONNX Runtime values, the session held only
//! for the run, outputs copied out after it is given back; timed for the inline decision.
use super::Servable;
use crate::error::Error;
use crate::runtime::convert::{from_output, to_input};
use crate::tensor::{InferRequest, InferResponse};
use ort::session::{OutputSelector, RunOptions, Session, SessionInputValue};
use std::sync::atomic::Ordering;
use std::sync::{MutexGuard, TryLockError};
use std::time::Instant;

impl Servable {
    /// Runs `req` now (the caller holds a permit), unless its deadline has passed; times the run for
    /// the inline decision.
    pub(super) fn run_now(
        &self,
        req: &InferRequest,
        deadline: Option<Instant>,
        started: Instant,
        bytes: u64,
        inline: bool,
    ) -> Result<InferResponse, Error> {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Error::DeadlineExceeded(format!(
                "{}: the client's deadline passed after {} ms waiting for a free session; the request was not run",
                self.what(),
                started.elapsed().as_millis()
            )));
        }
        if !inline {
            self.inline.blocked();
        }
        let run_start = Instant::now();
        let result = self.run_blocking(req);
        let took = run_start.elapsed();
        self.inline.record(bytes, took, inline);
        result.map(|mut r| {
            r.timing = crate::tensor::Timing { queue: run_start.saturating_duration_since(started), compute: took };
            crate::metrics::call::queued(r, started)
        })
    }

    /// Runs a validated request on a free session. Blocking.
    pub fn run_blocking(&self, req: &InferRequest) -> Result<InferResponse, Error> {
        self.stats.executions.fetch_add(1, Ordering::Relaxed);
        self.metrics().executed();
        self.run_on(req, || self.take_session())
    }

    /// Runs a validated request on session `i` of the pool (batch threads own their session), blocking
    /// until that session is free.
    pub(crate) fn run_on_session(&self, i: usize, req: &InferRequest) -> Result<InferResponse, Error> {
        let session = &self.sessions[i % self.sessions.len()];
        self.stats.executions.fetch_add(1, Ordering::Relaxed);
        self.metrics().executed();
        self.run_on(req, || Ok(session.lock().unwrap_or_else(|p| p.into_inner())))
    }

    /// Runs `req` on the session `take` hands out (after the inputs are converted, so the session
    /// is held only for the run itself).
    fn run_on<'s>(
        &'s self,
        req: &InferRequest,
        take: impl FnOnce() -> Result<MutexGuard<'s, Session>, Error>,
    ) -> Result<InferResponse, Error> {
        let started = Instant::now();
        let mut inputs: Vec<(&str, SessionInputValue<'_>)> = Vec::with_capacity(req.inputs.len());
        for (name, t) in &req.inputs {
            inputs.push((
                name.as_str(),
                to_input(name, t).map_err(|m| Error::InvalidArgument(format!("{}: {m}", self.what())))?,
            ));
        }
        let mut guard = take()?;
        let acquired = Instant::now();
        let session: &mut Session = &mut guard;
        let runtime_err = |e: ort::Error| Error::Runtime {
            model: self.model.clone(),
            version: self.version,
            invalid_input: matches!(e.code(), ort::error::ErrorCode::InvalidArgument),
            message: e.to_string(),
        };
        let wanted: Vec<&str> = if req.outputs.is_empty() {
            self.signature.outputs.iter().map(|s| s.name.as_str()).collect()
        } else {
            req.outputs.iter().map(String::as_str).collect()
        };
        let options = if req.outputs.is_empty() {
            None
        } else {
            let selector = wanted.iter().fold(OutputSelector::no_default(), |s, n| s.with(*n));
            let options = RunOptions::new()
                .map_err(|e| Error::Internal(format!("could not create run options: {e}")))?
                .with_outputs(selector);
            Some(options)
        };
        let mut outputs = match &options {
            None => session.run(inputs),
            Some(options) => session.run_with_options(inputs, options),
        }
        .map_err(runtime_err)?;
        let ran = Instant::now();
        let mut values = Vec::with_capacity(wanted.len());
        for name in wanted {
            let value = outputs
                .remove(name)
                .ok_or_else(|| Error::Internal(format!("{}: ONNX Runtime returned no output '{name}'", self.what())))?;
            values.push((name, value));
        }
        // The values are owned: give the session back before copying them out.
        drop(outputs);
        drop(guard);
        let mut result = Vec::with_capacity(values.len());
        for (name, value) in values {
            let tensor = from_output(name, value).map_err(Error::Internal)?;
            result.push((name.to_string(), tensor));
        }
        let stages = crate::metrics::Stages::timed(started, acquired, ran);
        Ok(InferResponse { outputs: result, stages, timing: Default::default() })
    }

    /// Runs a validated request on session `i` of the pool for warmup, before the version serves.
    /// `counted`: whether the run adds to the execution count (recorded warmup requests do).
    pub(crate) fn warm_session(&self, i: usize, req: &InferRequest, counted: bool) -> Result<InferResponse, Error> {
        let session = &self.sessions[i % self.sessions.len()];
        if counted {
            self.stats.executions.fetch_add(1, Ordering::Relaxed);
        }
        let run_start = Instant::now();
        let result = self.run_on(req, || Ok(session.lock().unwrap_or_else(|p| p.into_inner())));
        if result.is_ok() {
            self.inline.record(input_bytes(req), run_start.elapsed(), false);
        }
        result
    }

    pub(super) fn take_session(&self) -> Result<MutexGuard<'_, Session>, Error> {
        // The caller holds a permit, so at least one session is free.
        for s in &self.sessions {
            match s.try_lock() {
                Ok(g) => return Ok(g),
                Err(TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
                Err(TryLockError::WouldBlock) => continue,
            }
        }
        Err(Error::Internal(format!("{}: no free session although a permit was held", self.what())))
    }
}

/// The size of a request for the inline decision: its input bytes.
pub(super) fn input_bytes(req: &InferRequest) -> u64 {
    req.inputs
        .iter()
        .map(|(_, t)| match &t.data {
            crate::tensor::TensorData::Raw(b) => b.len() as u64,
            crate::tensor::TensorData::Strings(s) => s.iter().map(|b| b.len() as u64 + 32).sum(),
        })
        .sum()
}
