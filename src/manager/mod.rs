//! The model manager: models -> versions -> state, kept in step with the model repository.
//!
//! A watcher scans the repository every poll interval (never blocking requests: the scan does its
//! file system work without locks). A version becomes loadable once its files (size and mtime of
//! every file) are unchanged across two scans at least one poll interval apart, so a version that
//! is still being copied is never loaded half-written. The version policy picks the aspired
//! versions among the loadable ones; new aspired versions are loaded and warmed on loader threads
//! while the old ones keep serving, and an old version is retired only once an aspired version is
//! AVAILABLE (or nothing is left on disk): a rollout never leaves a model without a version.
//!
//! Requests read an immutable [`ServingTable`] through an `ArcSwap` (lock-free, never waiting on a
//! load). A retired servable leaves the table at once, finishes its in-flight requests (they hold
//! its `Arc`), and is dropped — sessions and memory returned — when the last one ends.
//!
//! Files: this one holds the records (models, versions, states); `table` the serving table and
//! resolution (labels, versions, readiness, status); `watch` the watcher and reconcile; `load`
//! loading (and warming) versions and explicit load/unload.
mod load;
mod table;
pub mod tfrecord;
pub mod warmup;
mod watch;

pub use table::{ServingTable, VersionSelector};
pub use warmup::WarmupOutcome;

use crate::repository::config::ModelConfig;
use crate::repository::object_store::ObjectStoreConfig;
use crate::repository::remote::Remote;
use crate::repository::uri::Location;
use crate::repository::Fingerprint;
use crate::runtime::{BatchingConfig, RuntimeConfig, Servable};
use arc_swap::ArcSwap;
use ort::environment::Environment;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tonic::Code;

/// Lifecycle of a model version (TF Serving's `ModelVersionStatus.State`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    Start,
    Loading,
    Available,
    Unloading,
    End,
}

impl VersionState {
    pub fn name(self) -> &'static str {
        match self {
            VersionState::Start => "START",
            VersionState::Loading => "LOADING",
            VersionState::Available => "AVAILABLE",
            VersionState::Unloading => "UNLOADING",
            VersionState::End => "END",
        }
    }
}

/// Status of one version as GetModelStatus reports it.
#[derive(Debug, Clone)]
pub struct VersionStatus {
    pub state: VersionState,
    /// `Code::Ok` unless the version failed.
    pub code: Code,
    /// The error when it failed; "" whenever `code` is OK (as in TF Serving).
    pub message: String,
    /// What is going on when that is not an error, e.g. "unloaded" (for RepositoryIndex reasons).
    pub detail: String,
}

/// How the files a version serves were loaded: what the status route shows, protocol-neutral.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Execution providers actually registered, in priority order.
    pub providers: Vec<String>,
    /// Configured providers that could not be registered (only with `--allow-cpu-fallback`).
    pub provider_fallback: Vec<String>,
    pub sessions: usize,
    /// Batching parameters in effect and the batch threads (None = not batched).
    pub batching: Option<(BatchingConfig, usize)>,
    /// Loading and warming up.
    pub load_time: Duration,
    pub warmup: WarmupOutcome,
    /// What the load cost in memory, and whether the sessions share their weights.
    pub memory: crate::runtime::shared_weights::MemoryUse,
}

/// One version for the status route.
#[derive(Debug, Clone)]
pub struct VersionDetails {
    pub status: VersionStatus,
    /// How the served files were loaded (None before a load succeeded).
    pub loaded: Option<LoadReport>,
    /// The directory the served files were loaded from (for an object-store model, its local copy).
    pub dir: Option<PathBuf>,
    /// The last failed load, if the version failed, or if changed files failed while the earlier
    /// ones keep serving.
    pub load_error: Option<String>,
    /// Where the version's inferences run (inline or blocking), live (None when not serving).
    pub execution: Option<crate::runtime::inline::InlineSnapshot>,
}

/// One model for the status route.
#[derive(Debug, Clone)]
pub struct ModelDetails {
    pub name: String,
    /// The model's directory when it is local (its versions are sub-directories).
    pub local_dir: Option<PathBuf>,
    /// Why the model has nothing to load, if so.
    pub problem: Option<String>,
    pub versions: Vec<(i64, VersionDetails)>,
}

/// Where the list of models comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// Every directory (or object-store prefix) under this root is a model, serving its latest
    /// version.
    Repository(Location),
    /// An explicit list: a config file, `--model_name`/`--model_base_path`, or a reload RPC.
    List(Vec<ModelConfig>),
}

/// How the manager loads, retries and watches.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub runtime: RuntimeConfig,
    pub num_load_threads: usize,
    /// Retries after a failed load (TF Serving's `--max_num_load_retries`).
    pub max_load_retries: u32,
    pub load_retry_interval: Duration,
    pub enable_warmup: bool,
    /// Replays of each recorded warmup request on every session (`--num-request-iterations-for-warmup`).
    pub warmup_iterations: u32,
    /// Let a label point at a version that is not AVAILABLE (only for labels that are new).
    pub allow_labels_for_unavailable: bool,
    /// Repository scan period; `None` = scan once at start (and when asked to).
    pub poll_interval: Option<Duration>,
    /// Object-store repositories: credentials, cache, listing period.
    pub object_store: ObjectStoreConfig,
}

impl ManagerConfig {
    /// Minimum time a version's files must stay unchanged before it is loaded.
    fn stability_window(&self) -> Duration {
        self.poll_interval.unwrap_or(Duration::from_secs(1))
    }
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            runtime: RuntimeConfig::default(),
            num_load_threads: 1,
            max_load_retries: 5,
            load_retry_interval: Duration::from_secs(60),
            enable_warmup: true,
            warmup_iterations: 1,
            allow_labels_for_unavailable: false,
            poll_interval: Some(Duration::from_secs(1)),
            object_store: ObjectStoreConfig::default(),
        }
    }
}

#[derive(Debug)]
struct VersionRecord {
    state: VersionState,
    code: Code,
    /// The error when `code` is not OK.
    message: String,
    /// What is going on when that is not an error (unloading, unloaded).
    note: String,
    /// The last failed load (see [`VersionDetails::load_error`]).
    load_error: Option<String>,
    /// How the served files were loaded.
    report: Option<LoadReport>,
    servable: Option<Arc<Servable>>,
    /// The files that were loaded (or whose load failed).
    fingerprint: Option<Fingerprint>,
    loading: bool,
    failures: u32,
    retry_at: Option<Instant>,
}

impl VersionRecord {
    fn new() -> VersionRecord {
        VersionRecord {
            state: VersionState::Start,
            code: Code::Ok,
            message: String::new(),
            note: String::new(),
            load_error: None,
            report: None,
            servable: None,
            fingerprint: None,
            loading: false,
            failures: 0,
            retry_at: None,
        }
    }

    fn status(&self) -> VersionStatus {
        let message = if self.code == Code::Ok { String::new() } else { self.message.clone() };
        let detail = match &self.load_error {
            Some(e) if self.code == Code::Ok => {
                format!("still serving the previously loaded files; loading the changed files failed: {e}")
            }
            _ => self.note.clone(),
        };
        VersionStatus { state: self.state, code: self.code, message, detail }
    }

    fn details(&self) -> VersionDetails {
        VersionDetails {
            status: self.status(),
            loaded: self.report.clone(),
            dir: self.servable.as_ref().map(|s| s.version_dir().to_path_buf()),
            load_error: self.load_error.clone(),
            execution: self.servable.as_ref().map(|s| s.inline.snapshot()),
        }
    }
}

#[derive(Debug)]
struct ModelRecord {
    config: ModelConfig,
    /// Why the model has nothing to load, if so (unreadable directory, no versions).
    problem: Option<String>,
    versions: BTreeMap<i64, VersionRecord>,
    aspired: BTreeSet<i64>,
    /// Whether the last scan saw versions whose files were still changing.
    unstable: bool,
    /// Scans since the model was (re)configured.
    scans: u64,
}

#[derive(Debug)]
struct State {
    source: ModelSource,
    models: BTreeMap<String, ModelRecord>,
    /// Per version directory: the fingerprint last seen and since when it has not changed.
    seen: HashMap<PathBuf, (Fingerprint, Instant)>,
    /// Models unloaded explicitly (RepositoryModelUnload): ignored by scans until loaded again.
    excluded: BTreeSet<String>,
    /// Whether the initial load pass has finished.
    initial_done: bool,
}

pub struct ModelManager {
    env: &'static Environment,
    cfg: ManagerConfig,
    table: ArcSwap<ServingTable>,
    state: Mutex<State>,
    load_slots: Arc<Semaphore>,
    wake: Arc<Notify>,
    /// Object-store roots: listings, downloads, the cache.
    remote: Remote,
    metrics: crate::metrics::Registry,
}

impl std::fmt::Debug for ModelManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelManager").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl ModelManager {
    pub fn new(env: &'static Environment, cfg: ManagerConfig, source: ModelSource) -> ModelManager {
        let wake = Arc::new(Notify::new());
        ModelManager {
            remote: Remote::new(cfg.object_store.clone(), Arc::clone(&wake)),
            env,
            load_slots: Arc::new(Semaphore::new(cfg.num_load_threads.max(1))),
            cfg,
            table: ArcSwap::from_pointee(ServingTable::default()),
            state: Mutex::new(State {
                source,
                models: BTreeMap::new(),
                seen: HashMap::new(),
                excluded: BTreeSet::new(),
                initial_done: false,
            }),
            wake,
            metrics: crate::metrics::Registry::for_loaded_runtime(),
        }
    }

    /// The server's Prometheus series.
    pub fn metrics(&self) -> &crate::metrics::Registry {
        &self.metrics
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Critical sections are short and leave the state consistent; survive a poisoned lock.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the watcher to scan now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Names of all known models.
    pub fn model_names(&self) -> Vec<String> {
        self.lock().models.keys().cloned().collect()
    }
}
