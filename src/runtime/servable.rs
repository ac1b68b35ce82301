//! A servable is one loaded model version: its signature and a bounded pool of ONNX Runtime sessions.
//!
//! `Session::run` takes `&mut self`, so each session serves one inference at a time. A semaphore with
//! one permit per session bounds the work: a request waits (asynchronously, on the reactor) for a
//! permit, then runs on a blocking thread where it takes a free session; a version measured short
//! ([`super::inline`]) runs it on the I/O thread instead when a permit is free at once. No lock is
//! ever held across an `.await`. The runs themselves are in [`run`].
mod run;

use super::batching::{unbatchable, Batcher};
use super::convert::dtype_from_ort;
use super::inline::Inline;
use super::providers;
use super::shared_weights::{self, MemoryUse};
use super::trt_options::{profile_warmup_shapes, Shapes, TrtOptions};
use super::{settings, BatchingConfig, RuntimeConfig};
use crate::error::Error;
use crate::tensor::{fmt_shape, InferRequest, InferResponse, Signature, TensorSpec};
use ort::environment::Environment;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::value::{Outlet, ValueType};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use tokio::sync::Semaphore;
use tonic::Code;

/// Why a model version could not be loaded, with the status code reported for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub code: Code,
    pub message: String,
}

impl LoadError {
    pub fn new(code: Code, message: impl Into<String>) -> LoadError {
        LoadError { code, message: message.into() }
    }
}

impl From<String> for LoadError {
    fn from(message: String) -> LoadError {
        LoadError::new(Code::Internal, message)
    }
}

/// A request counted against `max_in_flight` until dropped. It also keeps its version alive.
pub(crate) struct InFlight(Arc<Servable>);

impl InFlight {
    fn admit(s: &Arc<Servable>) -> Result<InFlight, Error> {
        let before = s.in_flight.fetch_add(1, Ordering::AcqRel);
        s.metrics().in_flight_add(1);
        let guard = InFlight(Arc::clone(s));
        if s.max_in_flight > 0 && before >= s.max_in_flight {
            return Err(Error::ResourceExhausted(format!(
                "{} already has {before} requests in flight, the limit set by --max-in-flight-requests ({}); retry later",
                s.what(),
                s.max_in_flight
            )));
        }
        Ok(guard)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics().in_flight_add(-1);
    }
}

/// Per-version request statistics (shared by every front end).
#[derive(Debug, Default)]
pub struct Stats {
    success_count: AtomicU64,
    success_ns: AtomicU64,
    fail_count: AtomicU64,
    fail_ns: AtomicU64,
    /// Milliseconds since the Unix epoch of the last request, 0 = none.
    last_inference_ms: AtomicU64,
    /// ONNX Runtime runs (one per request, or one per batch when batching).
    executions: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub success_count: u64,
    pub success_ns: u64,
    pub fail_count: u64,
    pub fail_ns: u64,
    pub last_inference_ms: u64,
    pub execution_count: u64,
}

impl Stats {
    pub(crate) fn record(&self, ok: bool, took: std::time::Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let (count, total) =
            if ok { (&self.success_count, &self.success_ns) } else { (&self.fail_count, &self.fail_ns) };
        count.fetch_add(1, Ordering::Relaxed);
        total.fetch_add(ns, Ordering::Relaxed);
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.last_inference_ms.store(now, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            success_count: self.success_count.load(Ordering::Relaxed),
            success_ns: self.success_ns.load(Ordering::Relaxed),
            fail_count: self.fail_count.load(Ordering::Relaxed),
            fail_ns: self.fail_ns.load(Ordering::Relaxed),
            last_inference_ms: self.last_inference_ms.load(Ordering::Relaxed),
            execution_count: self.executions.load(Ordering::Relaxed),
        }
    }
}

pub struct Servable {
    /// Request counts and durations.
    pub stats: Stats,
    /// Requests admitted and not finished; refused beyond `max_in_flight` (0 = no bound).
    in_flight: AtomicUsize,
    max_in_flight: usize,
    pub model: String,
    pub version: i64,
    pub path: PathBuf,
    pub signature: Signature,
    /// Execution providers actually registered, e.g. `CPUExecutionProvider`.
    pub providers: providers::Registered,
    sessions: Vec<Mutex<Session>>,
    permits: Arc<Semaphore>,
    /// Dynamic batching, when configured and the model allows it.
    batcher: Option<Batcher>,
    /// The model's TensorRT options, when TensorRT was registered (the warmup runs at its profile).
    tensorrt: Option<TrtOptions>,
    /// Prometheus series, given by the registry when the version is registered.
    metrics: OnceLock<Arc<crate::metrics::VersionMetrics>>,
    /// What the load cost in memory.
    memory: MemoryUse,
    /// Which runs are short enough for the I/O thread ([`super::inline`]).
    pub inline: Inline,
    label: String,
    version_string: String,
}

impl std::fmt::Debug for Servable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Servable")
            .field("model", &self.model)
            .field("version", &self.version)
            .field("sessions", &self.sessions.len())
            .field("providers", &self.providers)
            .finish()
    }
}

impl Servable {
    /// Loads `path` into `cfg.sessions()` sessions, with the overrides of the model's `maas.pbtxt`.
    /// Blocking: call it from a loader thread.
    pub fn load(
        env: &Environment,
        model: &str,
        version: i64,
        path: &Path,
        cfg: &RuntimeConfig,
    ) -> Result<Servable, LoadError> {
        if !path.is_file() {
            return Err(LoadError::new(Code::NotFound, format!("model file {} does not exist", path.display())));
        }
        let cfg = &settings::for_version(cfg, path).map_err(|m| LoadError::new(Code::InvalidArgument, m))?;
        let meter = shared_weights::Meter::start();
        let builder = session_builder(env, cfg.intra_op_threads, cfg.inter_op_threads)?
            .with_optimization_level(cfg.graph_optimization.to_ort())
            .map_err(|e| format!("could not set the graph optimization level: {e}"))?
            .with_log_id(format!("{model}:{version}"))
            .map_err(|e| format!("could not set the log id: {e}"))?;
        let target = providers::Target { model, version, dir: path.parent().unwrap_or(Path::new(".")) };
        let (builder, providers) =
            providers::register(builder, cfg, &target).map_err(|m| LoadError::new(Code::FailedPrecondition, m))?;
        let pool_size = cfg.sessions();
        let what = format!("model '{model}' version {version}");
        let (mut builder, shared) =
            shared_weights::prepare(builder, path, pool_size, &providers, cfg.share_weights, &what);
        let file = shared.as_ref().map_or_else(|| path.to_path_buf(), |s| s.model());
        let mut sessions = Vec::with_capacity(pool_size);
        for _ in 0..pool_size {
            let session = builder.commit_from_file(&file).map_err(|e| {
                LoadError::new(Code::InvalidArgument, format!("ONNX Runtime could not load {}: {e}", path.display()))
            })?;
            sessions.push(session);
        }
        let memory = meter.finish(shared);
        let signature = signature_of(&sessions[0]).map_err(|m| LoadError::new(Code::InvalidArgument, m))?;
        let batcher = match &cfg.batching {
            None => None,
            Some(b) => {
                // Checks pad_values and trim_outputs against the signature.
                let batcher =
                    Batcher::new(b.clone(), b.num_batch_threads.unwrap_or(pool_size), &signature, cfg.max_tensor_bytes)
                        .map_err(|m| {
                            let file = settings::settings_file(path)
                                .unwrap_or_else(|| path.with_file_name(settings::SETTINGS_FILE));
                            LoadError::new(Code::InvalidArgument, settings::invalid(&file, &m))
                        })?;
                match unbatchable(&signature) {
                    Some(why) => {
                        tracing::info!(model, version, "not batched: {why}");
                        None
                    }
                    None => Some(batcher),
                }
            }
        };
        let tensorrt = providers.has(providers::Provider::TensorRt).then(|| cfg.tensorrt.clone());
        tracing::info!(model, version, path = %path.display(), sessions = pool_size, providers = %providers, "loaded model version");
        Ok(Servable {
            batcher,
            model: model.to_string(),
            version,
            path: path.to_path_buf(),
            signature,
            providers,
            tensorrt,
            stats: Stats::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: cfg.max_in_flight,
            permits: Arc::new(Semaphore::new(sessions.len())),
            sessions: sessions.into_iter().map(Mutex::new).collect(),
            metrics: OnceLock::new(),
            memory,
            inline: Inline::new(cfg.inline),
            label: format!("model '{model}' version {version}"),
            version_string: version.to_string(),
        })
    }

    /// What loading the version cost in memory, and whether its sessions share their weights.
    pub fn memory(&self) -> MemoryUse {
        self.memory
    }

    /// This version's Prometheus series (series that are never exported until registered).
    pub fn metrics(&self) -> &Arc<crate::metrics::VersionMetrics> {
        self.metrics.get().unwrap_or_else(|| crate::metrics::detached())
    }

    /// Gives the version its series (once; see [`crate::metrics::Registry::register`]).
    pub(crate) fn attach_metrics(&self, m: Arc<crate::metrics::VersionMetrics>) {
        let _ = self.metrics.set(m);
    }

    /// Number of sessions in the pool.
    pub fn pool_size(&self) -> usize {
        self.sessions.len()
    }

    /// How requests are batched, for the load log line (None = not batched).
    pub fn batching(&self) -> Option<String> {
        self.batcher.as_ref().map(|b| {
            format!(
                "batches of up to {} rows ({} µs timeout, {} thread(s))",
                b.cfg.max_batch_size,
                b.cfg.batch_timeout.as_micros(),
                b.threads()
            )
        })
    }

    /// The batching parameters in effect and the number of batch threads (None = not batched).
    pub fn batching_config(&self) -> Option<(&BatchingConfig, usize)> {
        self.batcher.as_ref().map(|b| (&b.cfg, b.threads()))
    }

    /// The version's directory (where `model.onnx` and `assets.extra/` are).
    /// With TensorRT and a profile in `maas.pbtxt`: the input shapes of each synthesized warmup round
    /// (opt, then max), or why the profile does not fit the model. None otherwise.
    pub fn tensorrt_warmup_shapes(&self) -> Option<Result<Vec<Shapes>, String>> {
        self.tensorrt.as_ref().and_then(|o| profile_warmup_shapes(o, &self.signature))
    }

    pub fn version_dir(&self) -> &Path {
        self.path.parent().unwrap_or(&self.path)
    }

    /// "model 'm' version v", for messages (built once at load).
    pub fn what(&self) -> &str {
        &self.label
    }

    /// The version as a string, as the protocols answer it (built once at load).
    pub fn version_str(&self) -> &str {
        &self.version_string
    }

    /// Checks a request against the signature: every input present, known, with the right dtype and
    /// shape; every requested output known.
    pub fn validate(&self, req: &InferRequest) -> Result<(), Error> {
        let sig = &self.signature;
        for (name, t) in &req.inputs {
            let Some(spec) = sig.inputs.iter().find(|s| &s.name == name) else {
                return Err(Error::InvalidArgument(format!(
                    "{} has no input named '{name}'; its inputs are {}",
                    self.what(),
                    list(&sig.inputs)
                )));
            };
            if spec.dtype != t.dtype {
                return Err(Error::InvalidArgument(format!(
                    "{}: input '{name}' must have dtype {}, received {}",
                    self.what(),
                    spec.dtype,
                    t.dtype
                )));
            }
            if spec.shape.len() != t.shape.len() {
                return Err(Error::InvalidArgument(format!(
                    "{}: input '{name}' must have rank {} (shape {}), received rank {} (shape {})",
                    self.what(),
                    spec.shape.len(),
                    fmt_shape(&spec.shape),
                    t.shape.len(),
                    fmt_shape(&t.shape)
                )));
            }
            for (i, (&want, &got)) in spec.shape.iter().zip(&t.shape).enumerate() {
                if want >= 0 && want != got {
                    return Err(Error::InvalidArgument(format!(
                        "{}: input '{name}' dimension {i} must be {want} (shape {}), received shape {}",
                        self.what(),
                        fmt_shape(&spec.shape),
                        fmt_shape(&t.shape)
                    )));
                }
            }
        }
        let missing: Vec<String> = sig
            .inputs
            .iter()
            .filter(|s| !req.inputs.iter().any(|(n, _)| n == &s.name))
            .map(|s| s.to_string())
            .collect();
        if !missing.is_empty() {
            let got: Vec<String> = req.inputs.iter().map(|(n, _)| format!("'{n}'")).collect();
            return Err(Error::InvalidArgument(format!(
                "{}: missing input {}; received inputs [{}]",
                self.what(),
                missing.join(", "),
                got.join(", ")
            )));
        }
        for name in &req.outputs {
            if !sig.outputs.iter().any(|s| &s.name == name) {
                return Err(Error::InvalidArgument(format!(
                    "{} has no output named '{name}' (in output_filter); its outputs are {}",
                    self.what(),
                    list(&sig.outputs)
                )));
            }
        }
        Ok(())
    }

    /// Validates and runs a request on a free session of the pool, off the reactor.
    pub async fn infer(self: &Arc<Self>, req: InferRequest) -> Result<InferResponse, Error> {
        self.infer_before(req, None).await
    }

    /// Like [`Servable::infer`], for a client with a deadline: a request whose deadline has passed
    /// by the time a session is free is not run (DEADLINE_EXCEEDED).
    pub async fn infer_before(
        self: &Arc<Self>,
        req: InferRequest,
        deadline: Option<Instant>,
    ) -> Result<InferResponse, Error> {
        let started = Instant::now();
        crate::logging::note_servable(
            &self.model,
            self.version,
            req.inputs.first().and_then(|(_, t)| t.shape.first().copied()),
        );
        // Admission: beyond the in-flight bound, refuse at once instead of queueing.
        let admitted = InFlight::admit(self)?;
        if let Err(e) = self.validate(&req) {
            self.stats.record(false, started.elapsed());
            return Err(e);
        }
        // The tenant's per-model limits and rows (no-op without tenancy).
        crate::tenancy::admit_inference(&self.model, self.version, &req)?;
        let result = self.infer_admitted(req, deadline, started, admitted).await;
        if let Ok(r) = &result {
            crate::tenancy::note_response(r);
        }
        result
    }

    async fn infer_admitted(
        self: &Arc<Self>,
        req: InferRequest,
        deadline: Option<Instant>,
        started: Instant,
        admitted: InFlight,
    ) -> Result<InferResponse, Error> {
        if let Some(batcher) = &self.batcher {
            let answer = match batcher.submit(self, req, deadline, started, admitted) {
                Ok(answer) => answer,
                Err(e) => {
                    self.stats.record(false, started.elapsed());
                    return Err(e);
                }
            };
            return answer
                .await
                .map_err(|_| Error::Internal(format!("{}: the batch thread dropped the request", self.what())))?;
        }
        let bytes = run::input_bytes(&req);
        // A short run goes on this (I/O) thread when a session is free at once: no hand-off.
        if self.inline.wants(bytes) {
            if let Ok(permit) = self.permits.try_acquire() {
                let result = self.run_now(&req, None, started, bytes, true);
                drop(permit);
                self.stats.record(result.is_ok(), started.elapsed());
                drop(admitted);
                return result;
            }
        }
        let waiting = self.metrics().waiting();
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Unavailable(format!("{} is unloading", self.what())))?;
        drop(waiting);
        let this = Arc::clone(self);
        // The request's span (request id) goes with it to the blocking thread.
        let span = tracing::Span::current();
        // Statistics are recorded on the blocking thread, so they count requests whose client
        // gave up while they waited.
        tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            let _admitted = admitted;
            let result = this.run_now(&req, deadline, started, bytes, false);
            drop(permit);
            this.stats.record(result.is_ok(), started.elapsed());
            result
        })
        .await
        .map_err(|e| Error::Internal(format!("inference task for {} failed: {e}", self.what())))?
    }
}

fn list(specs: &[TensorSpec]) -> String {
    let items: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
    format!("[{}]", items.join(", "))
}

fn spec_of(outlet: &Outlet, kind: &str) -> Result<TensorSpec, String> {
    match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => {
            let dtype = dtype_from_ort(*ty).ok_or_else(|| {
                format!("{kind} '{}' has element type {ty:?}, which maas cannot serve", outlet.name())
            })?;
            Ok(TensorSpec { name: outlet.name().to_string(), dtype, shape: shape.iter().copied().collect() })
        }
        other => Err(format!("{kind} '{}' is a {other}; maas serves tensor inputs and outputs only", outlet.name())),
    }
}

/// A session builder with maas's session options: full graph optimization, the given intra- and
/// inter-op threads (the in-process benchmark uses the same).
pub(crate) fn session_builder(env: &Environment, intra: usize, inter: usize) -> Result<SessionBuilder, String> {
    let ort_err = |what: &str, e: ort::Error| format!("{what}: {e}");
    Session::builder(env)
        .map_err(|e| ort_err("could not create a session builder", e))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| ort_err("could not set the optimization level", e.into()))?
        .with_intra_threads(intra)
        .map_err(|e| ort_err("could not set intra-op threads", e.into()))?
        .with_inter_threads(inter)
        .map_err(|e| ort_err("could not set inter-op threads", e.into()))
}

/// The signature of a loaded session.
pub(crate) fn signature_of(session: &Session) -> Result<Signature, String> {
    Ok(Signature {
        inputs: session.inputs().iter().map(|o| spec_of(o, "input")).collect::<Result<_, _>>()?,
        outputs: session.outputs().iter().map(|o| spec_of(o, "output")).collect::<Result<_, _>>()?,
    })
}
