//! The series: per server ([`Registry`]), per model ([`ModelMetrics`]) and per model version
//! ([`VersionMetrics`]). A version's series are created when it loads and are held by its servable
//! in an `Arc`, so a request records with atomic adds on fields it already has: no map lookup, no
//! lock, no allocation. The registry keeps only weak references, so the series of an unloaded
//! version disappear from the exposition once its last request has finished.
use super::histogram::{Histogram, LOAD_SECONDS, REQUEST_SECONDS, TF_BATCH_QUEUE, TF_LATENCY};
use crate::runtime::Servable;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// Which front end carried a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// TF Serving `PredictionService/Predict` over gRPC.
    Predict,
    /// TF Serving REST `POST /v1/models/<m>:predict`.
    PredictRest,
    /// KServe v2 `GRPCInferenceService/ModelInfer`.
    ModelInfer,
    /// KServe v2 REST `POST /v2/models/<m>/infer`.
    InferRest,
}

impl Api {
    pub const ALL: [Api; 4] = [Api::Predict, Api::PredictRest, Api::ModelInfer, Api::InferRest];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// TF Serving's `API` label: the gRPC method, or the lower-case REST verb.
    pub fn tf_name(self) -> &'static str {
        match self {
            Api::Predict => "Predict",
            Api::PredictRest => "predict",
            Api::ModelInfer => "ModelInfer",
            Api::InferRest => "infer",
        }
    }

    /// TF Serving's `entrypoint` label.
    pub fn entrypoint(self) -> &'static str {
        match self {
            Api::Predict | Api::ModelInfer => "GRPC",
            Api::PredictRest | Api::InferRest => "REST",
        }
    }

    /// maas's `protocol` label: the transport.
    pub fn protocol(self) -> &'static str {
        match self {
            Api::Predict | Api::ModelInfer => "grpc",
            Api::PredictRest | Api::InferRest => "rest",
        }
    }

    /// maas's `api` label: TF Serving's predict or KServe v2's infer.
    pub fn api(self) -> &'static str {
        match self {
            Api::Predict | Api::PredictRest => "predict",
            Api::ModelInfer | Api::InferRest => "infer",
        }
    }
}

/// Triton's failure reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Refused by admission control (`--max-in-flight-requests`) or a full batch queue.
    Rejected,
    /// The deadline passed or the client went away.
    Canceled,
    /// ONNX Runtime failed.
    Backend,
    /// Anything else, bad input included.
    Other,
}

impl Reason {
    pub const ALL: [Reason; 4] = [Reason::Rejected, Reason::Canceled, Reason::Backend, Reason::Other];

    pub fn name(self) -> &'static str {
        match self {
            Reason::Rejected => "REJECTED",
            Reason::Canceled => "CANCELED",
            Reason::Backend => "BACKEND",
            Reason::Other => "OTHER",
        }
    }
}

/// gRPC status code names as TF Serving's `status` label spells them, indexed by code.
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

pub(crate) fn code_index(code: tonic::Code) -> usize {
    usize::try_from(i32::from(code)).unwrap_or(2).min(CODE_NAMES.len() - 1)
}

/// One counter per gRPC status code.
#[derive(Debug, Default)]
pub struct CodeCounts([AtomicU64; 17]);

impl CodeCounts {
    pub(crate) fn inc(&self, code: tonic::Code) {
        self.0[code_index(code)].fetch_add(1, Relaxed);
    }

    /// (code name, count) for every code counted at least once.
    pub fn nonzero(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        CODE_NAMES.iter().zip(&self.0).map(|(n, c)| (*n, c.load(Relaxed))).filter(|(_, c)| *c > 0)
    }
}

/// The series of one model name, shared by all its loaded versions (TF Serving labels by model only).
#[derive(Debug)]
pub struct ModelMetrics {
    pub name: String,
    /// `:tensorflow:serving:request_count{model_name,status}`.
    pub request_count: CodeCounts,
    /// `:tensorflow:serving:request_latency{model_name,API,entrypoint}`, per [`Api`].
    pub request_latency: [Histogram; 4],
    /// `:tensorflow:serving:runtime_latency{model_name,API,runtime}`, per [`Api`].
    pub runtime_latency: [Histogram; 4],
}

impl ModelMetrics {
    fn new(name: &str) -> ModelMetrics {
        ModelMetrics {
            name: name.to_string(),
            request_count: CodeCounts::default(),
            request_latency: std::array::from_fn(|_| Histogram::new(&TF_LATENCY)),
            runtime_latency: std::array::from_fn(|_| Histogram::new(&TF_LATENCY)),
        }
    }
}

/// The series of one model version (Triton's `{model,version}` labels, and maas's).
#[derive(Debug)]
pub struct VersionMetrics {
    pub model: Arc<ModelMetrics>,
    pub version: i64,
    /// `nv_inference_request_success`.
    pub success: AtomicU64,
    /// `nv_inference_request_failure{reason}`, per [`Reason`].
    pub failure: [AtomicU64; 4],
    /// `nv_inference_count`: rows of successful requests.
    pub inferences: AtomicU64,
    /// `nv_inference_exec_count`: ONNX Runtime runs.
    pub executions: AtomicU64,
    /// The five `nv_inference_*_duration_us` counters, kept in nanoseconds.
    pub request_ns: AtomicU64,
    pub queue_ns: AtomicU64,
    pub input_ns: AtomicU64,
    pub infer_ns: AtomicU64,
    pub output_ns: AtomicU64,
    /// `nv_inference_pending_request_count` (and `maas_queue_depth`): waiting for a session or in the
    /// batch queue.
    pub pending: AtomicI64,
    /// `maas_inflight_requests`: admitted and not finished.
    pub in_flight: AtomicI64,
    /// `maas_request_duration_seconds{protocol,api}`, per [`Api`].
    pub duration: [Histogram; 4],
    /// `nv_model_load_duration_secs`, as f64 bits.
    load_secs: AtomicU64,
    /// `maas_execution_provider_info{provider}`.
    providers: Mutex<Vec<String>>,
    /// `maas_model_memory_bytes`: the resident set the load added (measured).
    memory_bytes: AtomicU64,
}

impl VersionMetrics {
    fn new(model: Arc<ModelMetrics>, version: i64) -> VersionMetrics {
        VersionMetrics {
            model,
            version,
            success: AtomicU64::new(0),
            failure: Default::default(),
            inferences: AtomicU64::new(0),
            executions: AtomicU64::new(0),
            request_ns: AtomicU64::new(0),
            queue_ns: AtomicU64::new(0),
            input_ns: AtomicU64::new(0),
            infer_ns: AtomicU64::new(0),
            output_ns: AtomicU64::new(0),
            pending: AtomicI64::new(0),
            in_flight: AtomicI64::new(0),
            duration: std::array::from_fn(|_| Histogram::new(&REQUEST_SECONDS)),
            load_secs: AtomicU64::new(0),
            providers: Mutex::new(Vec::new()),
            memory_bytes: AtomicU64::new(0),
        }
    }

    /// Series that belong to no registry (a servable loaded outside a server: tools, benchmarks).
    pub fn detached() -> Arc<VersionMetrics> {
        Arc::new(VersionMetrics::new(Arc::new(ModelMetrics::new("")), 0))
    }

    /// Adds `n` to the requests waiting for a session or in the batch queue (negative: they left).
    pub fn pending_add(&self, n: i64) {
        self.pending.fetch_add(n, Relaxed);
    }

    /// Counts requests admitted (+1) or finished (-1).
    pub fn in_flight_add(&self, n: i64) {
        self.in_flight.fetch_add(n, Relaxed);
    }

    /// Counts one ONNX Runtime run.
    pub fn executed(&self) {
        self.executions.fetch_add(1, Relaxed);
    }

    /// A guard counted as pending until dropped.
    pub fn waiting(&self) -> Waiting<'_> {
        self.pending_add(1);
        Waiting(self)
    }

    pub fn load_seconds(&self) -> f64 {
        f64::from_bits(self.load_secs.load(Relaxed))
    }

    /// The resident set the version's load added, in bytes (measured; see `MemoryUse`).
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes.load(Relaxed)
    }

    pub fn providers(&self) -> Vec<String> {
        lock(&self.providers).clone()
    }
}

/// A request counted in `nv_inference_pending_request_count` while it lives.
#[derive(Debug)]
pub struct Waiting<'a>(&'a VersionMetrics);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.pending_add(-1);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Results of repository scans (`maas_repository_polls_total{result}`).
pub const POLL_RESULTS: [&str; 2] = ["ok", "error"];

/// All series of one server.
#[derive(Debug)]
pub struct Registry {
    /// Requests that named no loaded version: `request_count{model_name=""}`.
    pub unknown: CodeCounts,
    /// `:tensorflow:serving:batching_session:queuing_latency{thread_pool_name="batch_threads"}`.
    pub batch_queue: Histogram,
    pub(crate) polls: [AtomicU64; 2],
    pub(crate) ort_version: String,
    models: Mutex<BTreeMap<String, Weak<ModelMetrics>>>,
    versions: Mutex<BTreeMap<(String, i64), Weak<VersionMetrics>>>,
    pub(crate) load_failures: Mutex<BTreeMap<String, u64>>,
    pub(crate) load_durations: Mutex<BTreeMap<String, Histogram>>,
    /// The previous `/proc/stat` CPU sample (busy, total jiffies), for `nv_cpu_utilization`.
    pub(crate) cpu: Mutex<Option<(u64, u64)>>,
    /// The server's tenants, for the `maas_tenant_*` families (none without `--tenant-config-file`).
    pub(crate) tenancy: std::sync::OnceLock<Arc<crate::tenancy::Tenancy>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(crate::runtime::env::ORT_VERSION)
    }
}

impl Registry {
    /// An empty registry; `ort_version` is the ONNX Runtime version `maas_build_info` reports.
    pub fn new(ort_version: &str) -> Registry {
        Registry {
            unknown: CodeCounts::default(),
            batch_queue: Histogram::new(&TF_BATCH_QUEUE),
            polls: Default::default(),
            ort_version: ort_version.to_string(),
            models: Mutex::default(),
            versions: Mutex::default(),
            load_failures: Mutex::default(),
            load_durations: Mutex::default(),
            cpu: Mutex::default(),
            tenancy: std::sync::OnceLock::new(),
        }
    }

    /// Exports the usage and refusals of `tenancy` as the `maas_tenant_*` families (once).
    pub fn attach_tenancy(&self, tenancy: Arc<crate::tenancy::Tenancy>) {
        let _ = self.tenancy.set(tenancy);
    }

    /// A registry reporting the ONNX Runtime version of the loaded library (from its build info,
    /// e.g. `git-branch=rel-1.31.1`), or the version maas is built against.
    pub fn for_loaded_runtime() -> Registry {
        let info = ort::info();
        let version = info
            .split([',', ' '])
            .find_map(|part| part.strip_prefix("git-branch=rel-"))
            .unwrap_or(crate::runtime::env::ORT_VERSION);
        Registry::new(version)
    }

    /// The series of `model` version `version`, shared with any live servable of the same version
    /// (a reload of changed files keeps counting on the same series).
    pub fn version(&self, model: &str, version: i64) -> Arc<VersionMetrics> {
        let mut versions = lock(&self.versions);
        if let Some(v) = versions.get(&(model.to_string(), version)).and_then(Weak::upgrade) {
            return v;
        }
        let model_metrics = {
            let mut models = lock(&self.models);
            match models.get(model).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(ModelMetrics::new(model));
                    models.insert(model.to_string(), Arc::downgrade(&m));
                    m
                }
            }
        };
        let v = Arc::new(VersionMetrics::new(model_metrics, version));
        versions.insert((model.to_string(), version), Arc::downgrade(&v));
        v
    }

    /// Gives a freshly loaded servable its series, and records its load time and providers.
    pub fn register(&self, servable: &Servable, load_time: Duration) {
        let v = self.version(&servable.model, servable.version);
        v.load_secs.store(load_time.as_secs_f64().to_bits(), Relaxed);
        v.memory_bytes.store(servable.memory().rss_delta_bytes, Relaxed);
        *lock(&v.providers) = servable.providers.names.iter().map(|p| provider_name(p).to_string()).collect();
        lock(&self.load_durations)
            .entry(servable.model.clone())
            .or_insert_with(|| Histogram::new(&LOAD_SECONDS))
            .observe_ns(u64::try_from(load_time.as_nanos()).unwrap_or(u64::MAX));
        servable.attach_metrics(v);
    }

    /// Counts a failed load of `model`.
    pub fn load_failed(&self, model: &str) {
        *lock(&self.load_failures).entry(model.to_string()).or_default() += 1;
    }

    /// Counts one scan of the model repository.
    pub fn polled(&self, ok: bool) {
        self.polls[usize::from(!ok)].fetch_add(1, Relaxed);
    }

    /// The live model and version series, sorted by model and version.
    pub fn live(&self) -> (Vec<Arc<ModelMetrics>>, Vec<Arc<VersionMetrics>>) {
        let mut versions = lock(&self.versions);
        versions.retain(|_, w| w.strong_count() > 0);
        let v: Vec<Arc<VersionMetrics>> = versions.values().filter_map(Weak::upgrade).collect();
        drop(versions);
        let mut models = lock(&self.models);
        models.retain(|_, w| w.strong_count() > 0);
        let m = models.values().filter_map(Weak::upgrade).collect();
        (m, v)
    }

    /// Forgets the per-model load series of models that are no longer configured.
    pub(crate) fn retain_models(&self, known: &std::collections::BTreeSet<String>) {
        lock(&self.load_failures).retain(|m, _| known.contains(m));
        lock(&self.load_durations).retain(|m, _| known.contains(m));
    }
}

/// `CUDAExecutionProvider (device 0)` -> `CUDAExecutionProvider`.
fn provider_name(desc: &str) -> &str {
    desc.split([' ', '(']).next().unwrap_or(desc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_share_model_series_and_vanish_when_dropped() {
        let r = Registry::new("1.31.1");
        let a1 = r.version("a", 1);
        let a2 = r.version("a", 2);
        assert!(Arc::ptr_eq(&a1.model, &a2.model));
        assert!(Arc::ptr_eq(&a1, &r.version("a", 1)), "a reload shares the version's series");
        let (m, v) = r.live();
        assert_eq!((m.len(), v.len()), (1, 2));
        drop((m, v, a1));
        let (m, v) = r.live();
        assert_eq!((m.len(), v.len()), (1, 1));
        drop((m, v, a2));
        let (m, v) = r.live();
        assert_eq!((m.len(), v.len()), (0, 0));
    }

    #[test]
    fn names() {
        assert_eq!(provider_name("CUDAExecutionProvider (device 0)"), "CUDAExecutionProvider");
        assert_eq!(provider_name("CPUExecutionProvider"), "CPUExecutionProvider");
        assert_eq!(CODE_NAMES[code_index(tonic::Code::Unauthenticated)], "UNAUTHENTICATED");
        assert_eq!(CODE_NAMES[code_index(tonic::Code::InvalidArgument)], "INVALID_ARGUMENT");
        let c = CodeCounts::default();
        c.inc(tonic::Code::NotFound);
        c.inc(tonic::Code::NotFound);
        assert_eq!(c.nonzero().collect::<Vec<_>>(), vec![("NOT_FOUND", 2)]);
    }
}
