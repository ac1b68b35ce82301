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
use crate::error::Error;
use crate::repository::config::ModelConfig;
use crate::repository::policy::VersionPolicy;
use crate::repository::{self, Fingerprint, ModelDir};
use crate::runtime::{LoadError, RuntimeConfig, Servable};
use arc_swap::ArcSwap;
use ort::environment::Environment;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
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
    /// The error when it failed; otherwise what it runs on.
    pub message: String,
}

/// Where the list of models comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// Every directory under this root is a model, serving its latest version.
    Repository(PathBuf),
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
        }
    }
}

#[derive(Debug)]
struct VersionRecord {
    state: VersionState,
    code: Code,
    message: String,
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
            servable: None,
            fingerprint: None,
            loading: false,
            failures: 0,
            retry_at: None,
        }
    }

    fn status(&self) -> VersionStatus {
        VersionStatus { state: self.state, code: self.code, message: self.message.clone() }
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

#[derive(Debug, Default)]
struct ServingModel {
    versions: BTreeMap<i64, Arc<Servable>>,
    labels: BTreeMap<String, i64>,
}

/// What requests read: every model, its AVAILABLE versions and its labels.
#[derive(Debug, Default)]
pub struct ServingTable {
    models: HashMap<String, ServingModel>,
}

/// How a request names the version it wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSelector {
    /// The highest AVAILABLE version.
    Latest,
    Number(i64),
    Label(String),
}

pub struct ModelManager {
    env: &'static Environment,
    cfg: ManagerConfig,
    table: ArcSwap<ServingTable>,
    state: Mutex<State>,
    load_slots: Arc<Semaphore>,
    wake: Notify,
    metrics: crate::metrics::Registry,
}

impl std::fmt::Debug for ModelManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelManager").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

/// One model's view of the file system from a scan.
struct ScannedModel {
    config: ModelConfig,
    versions: Result<BTreeMap<i64, (PathBuf, Option<Fingerprint>)>, String>,
}

impl ModelManager {
    pub fn new(env: &'static Environment, cfg: ManagerConfig, source: ModelSource) -> ModelManager {
        ModelManager {
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
            wake: Notify::new(),
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

    /// Rebuilds the serving table from the records and swaps it in atomically.
    fn publish(&self, state: &State) {
        let mut table = ServingTable::default();
        for (name, rec) in &state.models {
            let versions = rec
                .versions
                .iter()
                .filter(|(_, v)| v.state == VersionState::Available)
                .filter_map(|(n, v)| v.servable.clone().map(|s| (*n, s)))
                .collect();
            table.models.insert(name.clone(), ServingModel { versions, labels: rec.config.labels.clone() });
        }
        self.table.store(Arc::new(table));
    }

    /// Asks the watcher to scan now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The initial pass: two scans one stability window apart, then waits for the loads they
    /// started. A model that fails does not hold the others back.
    pub async fn initial_load(self: &Arc<Self>) {
        let _ = self.scan();
        tokio::time::sleep(self.cfg.stability_window()).await;
        for h in self.scan() {
            let _ = h.await;
        }
        self.lock().initial_done = true;
    }

    /// Scans every poll interval (or when woken) until the task is dropped.
    pub async fn watch(self: Arc<Self>) {
        loop {
            match self.cfg.poll_interval {
                Some(d) => {
                    tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        () = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
            let _ = self.scan();
        }
    }

    /// Reads the file system (no locks held), then reconciles: starts loads and retires versions.
    /// Returns the loads it started.
    pub fn scan(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let source = self.lock().source.clone();
        let configs = match &source {
            ModelSource::List(list) => list.clone(),
            ModelSource::Repository(root) => match repository::list_models(root) {
                Ok(dirs) => dirs
                    .into_iter()
                    .map(|d| ModelConfig {
                        name: d.name,
                        base_path: d.path,
                        policy: VersionPolicy::default(),
                        labels: BTreeMap::new(),
                    })
                    .collect(),
                Err(e) => {
                    // Keep serving what is loaded: a storage hiccup must not unload everything.
                    self.metrics.polled(false);
                    tracing::error!(repository = %root.display(), "cannot read the model repository: {e}");
                    return Vec::new();
                }
            },
        };
        let excluded = self.lock().excluded.clone();
        let scanned: Vec<ScannedModel> =
            configs.into_iter().filter(|c| !excluded.contains(&c.name)).map(scan_model).collect();
        let mut state = self.lock();
        if state.excluded != excluded {
            return Vec::new();
        }
        if state.source != source {
            // The config changed while we were reading; the next scan uses the new one.
            return Vec::new();
        }
        let handles = self.reconcile(&mut state, scanned);
        self.publish(&state);
        self.metrics.polled(true);
        handles
    }

    fn reconcile(self: &Arc<Self>, state: &mut State, scanned: Vec<ScannedModel>) -> Vec<JoinHandle<()>> {
        let now = Instant::now();
        let window = self.cfg.stability_window();
        let mut handles = Vec::new();

        // Models no longer configured: out of the table now, unloaded after their in-flight requests.
        let wanted: BTreeSet<&str> = scanned.iter().map(|s| s.config.name.as_str()).collect();
        let removed: Vec<String> = state.models.keys().filter(|n| !wanted.contains(n.as_str())).cloned().collect();
        for name in removed {
            if let Some(rec) = state.models.remove(&name) {
                tracing::info!(model = %name, "model removed from the configuration; unloading");
                for (v, vr) in rec.versions {
                    if let Some(s) = vr.servable {
                        self.retire(name.clone(), v, s, false);
                    }
                }
            }
        }

        let mut still_present = std::collections::HashSet::new();
        for ScannedModel { config, versions } in scanned {
            let name = config.name.clone();
            let rec = state.models.entry(name.clone()).or_insert_with(|| ModelRecord {
                config: config.clone(),
                problem: None,
                versions: BTreeMap::new(),
                aspired: BTreeSet::new(),
                unstable: false,
                scans: 0,
            });
            if rec.config != config {
                rec.config = config;
                rec.scans = 0;
            }
            rec.scans += 1;
            let on_disk = match versions {
                Ok(v) => v,
                Err(e) => {
                    if rec.problem.as_deref() != Some(e.as_str()) {
                        tracing::error!(model = %name, "{e}; keeping the loaded versions");
                    }
                    rec.problem = Some(e);
                    continue;
                }
            };
            rec.problem = on_disk.is_empty().then(|| {
                format!(
                    "no versions found under {}: expected {}/<version>/{}",
                    rec.config.base_path.display(),
                    rec.config.base_path.display(),
                    repository::MODEL_FILE
                )
            });

            // Stability: unchanged for at least one window (i.e. across two scans).
            let mut stable: BTreeMap<i64, Fingerprint> = BTreeMap::new();
            let mut unstable = false;
            for (v, (path, fp)) in &on_disk {
                still_present.insert(path.clone());
                let Some(fp) = fp else {
                    unstable = true;
                    continue;
                };
                let since = match state.seen.get(path) {
                    Some((old, since)) if old == fp => *since,
                    _ => {
                        state.seen.insert(path.clone(), (fp.clone(), now));
                        now
                    }
                };
                if now.duration_since(since) >= window && fp.has_model() {
                    stable.insert(*v, fp.clone());
                } else {
                    unstable = true;
                }
            }

            // Candidates: stable versions, plus loaded ones still on disk whose files are changing.
            let mut candidates: BTreeSet<i64> = stable.keys().copied().collect();
            for (v, vr) in &rec.versions {
                if on_disk.contains_key(v) && (vr.servable.is_some() || vr.loading) {
                    candidates.insert(*v);
                }
            }
            let candidates: Vec<i64> = candidates.into_iter().collect();
            let aspired = rec.config.policy.aspired(&candidates);

            for &v in &aspired {
                let Some(fp) = stable.get(&v) else { continue };
                let vr = rec.versions.entry(v).or_insert_with(VersionRecord::new);
                let load = if vr.loading {
                    false
                } else if vr.fingerprint.as_ref() != Some(fp) {
                    if vr.fingerprint.is_some() {
                        tracing::info!(model = %name, version = v, "files changed; loading them again");
                    }
                    vr.failures = 0;
                    true
                } else if vr.state == VersionState::End && vr.code != Code::Ok {
                    vr.failures <= self.cfg.max_load_retries && vr.retry_at.is_some_and(|t| now >= t)
                } else {
                    // Unloaded earlier (e.g. by a policy change) and aspired again.
                    vr.state == VersionState::End && vr.servable.is_none()
                };
                if load {
                    vr.loading = true;
                    vr.retry_at = None;
                    if vr.servable.is_none() {
                        vr.state = VersionState::Start;
                        vr.code = Code::Ok;
                        vr.message.clear();
                    }
                    let path = on_disk[&v].0.join(repository::MODEL_FILE);
                    let this = Arc::clone(self);
                    let (m, f) = (name.clone(), fp.clone());
                    handles.push(tokio::spawn(async move { this.load(m, v, path, f).await }));
                }
            }

            // Retire versions that are no longer aspired, once that cannot leave the model empty.
            let aspired_available =
                aspired.iter().any(|a| rec.versions.get(a).is_some_and(|r| r.state == VersionState::Available));
            let nothing_coming = aspired.is_empty() && !unstable;
            if aspired_available || nothing_coming {
                let retire: Vec<i64> = rec
                    .versions
                    .iter()
                    .filter(|(v, r)| !aspired.contains(v) && r.servable.is_some() && !r.loading)
                    .map(|(v, _)| *v)
                    .collect();
                for v in retire {
                    if let Some(vr) = rec.versions.get_mut(&v) {
                        if let Some(s) = vr.servable.take() {
                            vr.state = VersionState::Unloading;
                            vr.message = "unloading: finishing in-flight requests".into();
                            self.retire(name.clone(), v, s, true);
                        }
                    }
                }
            }
            rec.aspired = aspired;
            rec.unstable = unstable;
        }
        state.seen.retain(|p, _| still_present.contains(p));
        handles
    }

    /// Drops a servable once its in-flight requests are done, then marks the version END.
    fn retire(self: &Arc<Self>, model: String, version: i64, servable: Arc<Servable>, mark_end: bool) {
        tracing::info!(model = %model, version, "retiring version");
        let this = Arc::clone(self);
        tokio::spawn(async move {
            while Arc::strong_count(&servable) > 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Dropping sessions frees their memory; do it off the reactor.
            let _ = tokio::task::spawn_blocking(move || drop(servable)).await;
            if mark_end {
                let mut state = this.lock();
                if let Some(vr) = state.models.get_mut(&model).and_then(|r| r.versions.get_mut(&version)) {
                    if vr.state == VersionState::Unloading {
                        vr.state = VersionState::End;
                        vr.code = Code::Ok;
                        vr.message = "unloaded".into();
                    }
                }
            }
            tracing::info!(model = %model, version, "version unloaded");
        });
    }

    /// Loads (and warms) one version on a loader thread, then publishes it.
    async fn load(self: Arc<Self>, model: String, version: i64, file: PathBuf, fp: Fingerprint) {
        let Ok(_slot) = Arc::clone(&self.load_slots).acquire_owned().await else {
            return;
        };
        {
            let mut state = self.lock();
            if let Some(vr) = state.models.get_mut(&model).and_then(|r| r.versions.get_mut(&version)) {
                if vr.servable.is_none() {
                    vr.state = VersionState::Loading;
                }
            }
            self.publish(&state);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (env, cfg, m) = (self.env, self.cfg.clone(), model.clone());
        let spawned = std::thread::Builder::new().name(format!("maas-load-{model}-{version}")).spawn(move || {
            let started = Instant::now();
            let result = Servable::load(env, &m, version, &file, &cfg.runtime).and_then(|s| {
                if cfg.enable_warmup {
                    s.warmup().map_err(|e| LoadError::new(Code::FailedPrecondition, e))?;
                }
                Ok(s)
            });
            let _ = tx.send((result, started.elapsed()));
        });
        let outcome = match spawned {
            Ok(_) => rx.await.map_err(|_| LoadError::new(Code::Internal, "the loader thread panicked")),
            Err(e) => Err(LoadError::new(Code::Internal, format!("could not start a loader thread: {e}"))),
        }
        .and_then(|(r, took)| r.map(|s| (s, took)));

        let leftover = self.finish_load(&model, version, fp, outcome);
        if let Some(s) = leftover {
            // The model or version went away while loading.
            let _ = tokio::task::spawn_blocking(move || drop(s)).await;
        }
        // Let the watcher retire what this load replaces without waiting for the next poll.
        self.wake();
    }

    /// Records a load's outcome; returns the servable if nobody wants it any more.
    fn finish_load(
        self: &Arc<Self>,
        model: &str,
        version: i64,
        fp: Fingerprint,
        outcome: Result<(Servable, Duration), LoadError>,
    ) -> Option<Servable> {
        let mut state = self.lock();
        let Some(vr) = state.models.get_mut(model).and_then(|r| r.versions.get_mut(&version)) else {
            return outcome.ok().map(|(s, _)| s);
        };
        vr.loading = false;
        vr.fingerprint = Some(fp);
        match outcome {
            Ok((servable, took)) => {
                let message = format!(
                    "serving on {} with {} session(s){}; loaded{} in {} ms",
                    servable.providers,
                    servable.pool_size(),
                    servable.batching().map(|b| format!(", {b}")).unwrap_or_default(),
                    if self.cfg.enable_warmup { " and warmed up" } else { "" },
                    took.as_millis()
                );
                tracing::info!(model, version, "{message}");
                self.metrics.register(&servable, took);
                let old = vr.servable.replace(Arc::new(servable));
                vr.state = VersionState::Available;
                vr.code = Code::Ok;
                vr.message = message;
                vr.failures = 0;
                if let Some(old) = old {
                    self.retire(model.to_string(), version, old, false);
                }
            }
            Err(e) => {
                self.metrics.load_failed(model);
                vr.failures += 1;
                let retries_left = self.cfg.max_load_retries.saturating_sub(vr.failures - 1);
                tracing::error!(model, version, code = ?e.code, retries_left, "failed to load: {}", e.message);
                if vr.servable.is_some() {
                    vr.message = format!(
                        "still serving the previously loaded files; loading the changed files failed: {}",
                        e.message
                    );
                } else {
                    vr.state = VersionState::End;
                    vr.code = e.code;
                    vr.message = e.message;
                }
                if retries_left > 0 {
                    let at = Instant::now() + self.cfg.load_retry_interval;
                    vr.retry_at = Some(at);
                    let this = Arc::clone(self);
                    tokio::spawn(async move {
                        tokio::time::sleep_until(at.into()).await;
                        this.wake();
                    });
                }
            }
        }
        self.publish(&state);
        None
    }

    /// Replaces the model list (config file or reload RPC). Labels are checked against the current
    /// state first; the whole config is rejected if one is not allowed.
    pub fn set_models(&self, models: Vec<ModelConfig>, check_labels: bool) -> Result<(), Error> {
        let mut state = self.lock();
        if check_labels {
            for m in &models {
                let rec = state.models.get(&m.name);
                for (label, &v) in &m.labels {
                    let previous = rec.and_then(|r| r.config.labels.get(label)).copied();
                    if previous == Some(v) {
                        continue;
                    }
                    let available =
                        rec.and_then(|r| r.versions.get(&v)).is_some_and(|vr| vr.state == VersionState::Available);
                    let allowed = self.cfg.allow_labels_for_unavailable && previous.is_none();
                    if !available && !allowed {
                        return Err(Error::FailedPrecondition(format!(
                            "Request to assign label '{label}' to version {v} of model '{}', which is not currently available for inference{}",
                            m.name,
                            if previous.is_some() {
                                " (moving an existing label always needs an AVAILABLE version)"
                            } else {
                                " (--allow-version-labels-for-unavailable-models permits that for new labels)"
                            }
                        )));
                    }
                }
            }
        }
        state.source = ModelSource::List(models);
        // New or changed models are picked up by the next scan; apply labels of known models now.
        if let ModelSource::List(list) = &state.source {
            let list = list.clone();
            for m in list {
                if let Some(rec) = state.models.get_mut(&m.name) {
                    if rec.config != m {
                        rec.config = m;
                        rec.scans = 0;
                    }
                }
            }
        }
        self.publish(&state);
        drop(state);
        self.wake();
        Ok(())
    }

    /// Waits (at most `timeout`) until every configured model has been scanned twice and has no
    /// load in progress. Returns the problems: per-model errors, or models still loading.
    pub async fn settle(&self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let (settled, problems) = self.settle_status();
            if settled {
                return problems;
            }
            if Instant::now() >= deadline {
                let mut p = problems;
                p.push(format!("still loading after {} s", timeout.as_secs_f64()));
                return p;
            }
            self.wake();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn settle_status(&self) -> (bool, Vec<String>) {
        let state = self.lock();
        let names: Vec<String> = match &state.source {
            ModelSource::List(l) => l.iter().map(|m| m.name.clone()).collect(),
            ModelSource::Repository(_) => state.models.keys().cloned().collect(),
        };
        let mut settled = true;
        let mut problems = Vec::new();
        for name in names {
            let Some(rec) = state.models.get(&name) else {
                settled = false;
                continue;
            };
            let busy = rec.unstable || rec.versions.values().any(|v| v.loading);
            if rec.scans < 2 || busy {
                settled = false;
                continue;
            }
            if let Some(p) = &rec.problem {
                problems.push(format!("model '{name}': {p}"));
            }
            for v in &rec.aspired {
                if let Some(vr) = rec.versions.get(v) {
                    if vr.state == VersionState::End && vr.code != Code::Ok {
                        problems.push(format!("model '{name}' version {v} failed to load: {}", vr.message));
                    }
                }
            }
        }
        (settled, problems)
    }

    /// The servable a request asks for.
    pub fn resolve(&self, model: &str, selector: &VersionSelector) -> Result<Arc<Servable>, Error> {
        let table = self.table.load();
        let Some(m) = table.models.get(model) else {
            let mut known: Vec<&str> = table.models.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(Error::ModelNotFound { model: model.to_string(), known: known.join(", ") });
        };
        let (version, via) = match selector {
            VersionSelector::Latest => match m.versions.values().next_back() {
                Some(s) => return Ok(Arc::clone(s)),
                None => return Err(self.unavailable(model, None, "")),
            },
            VersionSelector::Number(v) => (*v, String::new()),
            VersionSelector::Label(label) => match m.labels.get(label) {
                Some(v) => (*v, format!(" (label '{label}')")),
                None => {
                    let known: Vec<String> = m.labels.keys().map(|l| format!("'{l}'")).collect();
                    return Err(Error::InvalidArgument(format!(
                        "Unrecognized servable version label: '{label}' for model '{model}'; its labels: [{}]",
                        known.join(", ")
                    )));
                }
            },
        };
        match m.versions.get(&version) {
            Some(s) => Ok(Arc::clone(s)),
            None => Err(self.unavailable(model, Some(version), &via)),
        }
    }

    /// Explains why a model/version cannot serve (error path: reads the records).
    fn unavailable(&self, model: &str, version: Option<i64>, via: &str) -> Error {
        let state = self.lock();
        let Some(rec) = state.models.get(model) else {
            return Error::Unavailable(format!("model '{model}' has no available version"));
        };
        let describe = |v: i64, s: &VersionRecord| {
            let detail = match s.state {
                VersionState::End if s.code != Code::Ok => format!(" (failed to load: {})", s.message),
                VersionState::Start | VersionState::Loading => " (still loading)".to_string(),
                _ => String::new(),
            };
            format!("version {v} is {}{detail}", s.state.name())
        };
        match version {
            Some(v) => match rec.versions.get(&v) {
                Some(s) => Error::Unavailable(format!("model '{model}'{via} {}", describe(v, s))),
                None => Error::VersionNotFound {
                    model: model.to_string(),
                    version: v,
                    known: rec.versions.keys().map(|v| v.to_string()).collect::<Vec<_>>().join(", "),
                },
            },
            None => {
                let why = match &rec.problem {
                    Some(p) if rec.versions.is_empty() => p.clone(),
                    _ if rec.versions.is_empty() => "no version is loaded yet".to_string(),
                    _ => rec.versions.iter().map(|(v, s)| describe(*v, s)).collect::<Vec<_>>().join("; "),
                };
                Error::Unavailable(format!("model '{model}' has no available version: {why}"))
            }
        }
    }

    /// Status of a model's versions (one version if given), as GetModelStatus reports it.
    pub fn status(&self, model: &str, version: Option<i64>) -> Result<Vec<(i64, VersionStatus)>, Error> {
        let state = self.lock();
        let Some(rec) = state.models.get(model) else {
            let known: Vec<&str> = state.models.keys().map(String::as_str).collect();
            return Err(Error::ModelNotFound { model: model.to_string(), known: known.join(", ") });
        };
        match version {
            Some(v) => match rec.versions.get(&v) {
                Some(s) => Ok(vec![(v, s.status())]),
                None => Err(Error::VersionNotFound {
                    model: model.to_string(),
                    version: v,
                    known: rec.versions.keys().map(|v| v.to_string()).collect::<Vec<_>>().join(", "),
                }),
            },
            None if rec.versions.is_empty() => Err(Error::NotFound(format!(
                "Could not find any versions of model '{model}': {}",
                rec.problem.as_deref().unwrap_or("none loaded yet")
            ))),
            None => Ok(rec.versions.iter().map(|(v, s)| (*v, s.status())).collect()),
        }
    }

    /// Ready = every configured model has an AVAILABLE version (what `/readyz` and ServerReady
    /// report). The error names the models that do not.
    pub fn readiness(&self) -> Result<(), String> {
        let state = self.lock();
        if !state.initial_done {
            return Err("the initial models are still loading".into());
        }
        let mut missing = Vec::new();
        for (name, rec) in &state.models {
            if !rec.versions.values().any(|v| v.state == VersionState::Available) {
                missing.push(name.clone());
            }
        }
        if let ModelSource::List(list) = &state.source {
            for m in list {
                if !state.models.contains_key(&m.name) && !state.excluded.contains(&m.name) {
                    missing.push(m.name.clone());
                }
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("no AVAILABLE version for model(s): {}", missing.join(", ")))
        }
    }

    /// Every AVAILABLE servable of a model (or of every model), for metadata and statistics.
    pub fn servables(&self, model: Option<&str>) -> Vec<Arc<Servable>> {
        let table = self.table.load();
        table
            .models
            .iter()
            .filter(|(n, _)| model.is_none_or(|m| m == n.as_str()))
            .flat_map(|(_, m)| m.versions.values().cloned())
            .collect()
    }

    /// Every model the source names (and the ones loaded), with each version's state, for
    /// RepositoryIndex. Explicitly unloaded models are listed with no versions.
    pub fn index(&self) -> Vec<(String, Vec<(i64, VersionStatus)>)> {
        let state = self.lock();
        let mut out: BTreeMap<String, Vec<(i64, VersionStatus)>> = BTreeMap::new();
        for (name, rec) in &state.models {
            out.insert(name.clone(), rec.versions.iter().map(|(v, r)| (*v, r.status())).collect());
        }
        for name in &state.excluded {
            out.entry(name.clone()).or_default();
        }
        out.into_iter().collect()
    }

    /// Loads (or reloads) a model explicitly and returns when it is AVAILABLE, failed, or the
    /// timeout passed. It must be a directory of the repository or a model of the config.
    pub async fn load_model(&self, name: &str, timeout: Duration) -> Result<(), Error> {
        {
            let mut state = self.lock();
            let known = match &state.source {
                ModelSource::Repository(root) => root.join(name).is_dir(),
                ModelSource::List(list) => list.iter().any(|m| m.name == name),
            };
            if !known {
                return Err(Error::NotFound(match &state.source {
                    ModelSource::Repository(root) => {
                        format!("cannot load model '{name}': there is no directory {}", root.join(name).display())
                    }
                    ModelSource::List(_) => format!("cannot load model '{name}': it is not in the model config"),
                }));
            }
            state.excluded.remove(name);
            if let Some(rec) = state.models.get_mut(name) {
                rec.scans = 0;
            }
        }
        self.wake();
        let deadline = Instant::now() + timeout;
        loop {
            {
                let state = self.lock();
                if let Some(rec) = state.models.get(name) {
                    let loading = rec.unstable || rec.versions.values().any(|v| v.loading);
                    if rec.scans >= 2 && !loading {
                        if rec.versions.values().any(|v| v.state == VersionState::Available) {
                            return Ok(());
                        }
                        drop(state);
                        return Err(self.unavailable(name, None, ""));
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "model '{name}' is still loading after {} s",
                    timeout.as_secs_f64()
                )));
            }
            self.wake();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Unloads a model explicitly: it leaves the serving table at once, its in-flight requests
    /// finish, and scans ignore it until it is loaded again.
    pub async fn unload_model(&self, name: &str) -> Result<(), Error> {
        {
            let mut state = self.lock();
            if !state.models.contains_key(name) {
                let known: Vec<&str> = state.models.keys().map(String::as_str).collect();
                return Err(Error::ModelNotFound { model: name.to_string(), known: known.join(", ") });
            }
            state.excluded.insert(name.to_string());
        }
        self.wake();
        loop {
            if !self.lock().models.contains_key(name) {
                return Ok(());
            }
            self.wake();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Names of all known models.
    pub fn model_names(&self) -> Vec<String> {
        self.lock().models.keys().cloned().collect()
    }
}

/// Lists a model's versions and fingerprints them (file system only, no locks).
fn scan_model(config: ModelConfig) -> ScannedModel {
    let dir = ModelDir { name: config.name.clone(), path: config.base_path.clone() };
    let versions = repository::list_versions(&dir)
        .map(|vs| {
            vs.into_iter().map(|v| (v.version, (v.path.clone(), repository::fingerprint(&v.path).ok()))).collect()
        })
        .map_err(|e| format!("cannot read model directory {}: {e}", config.base_path.display()));
    ScannedModel { config, versions }
}
