//! The watcher: scans the repository and reconciles the records with it (starts loads, retires
//! versions), and waits for the result (settle).
use super::{ModelManager, ModelRecord, ModelSource, State, VersionRecord, VersionState};
use crate::repository::config::ModelConfig;
use crate::repository::policy::VersionPolicy;
use crate::repository::remote::Kind;
use crate::repository::uri::{Location, RemoteUri};
use crate::repository::{self, Fingerprint, ModelDir};
use crate::runtime::Servable;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tonic::Code;

/// One model's view of the repository from a scan.
struct ScannedModel {
    config: ModelConfig,
    versions: Result<BTreeMap<i64, (PathBuf, Option<Fingerprint>)>, String>,
    /// Stability was decided by two agreeing object-store listings (no time window on top).
    listed: bool,
}

impl ModelManager {
    /// The initial pass: two scans one stability window apart (each listing object stores), then
    /// waits for the downloads and loads they started. A model that fails does not hold the
    /// others back.
    pub async fn initial_load(self: &Arc<Self>) {
        let _ = self.scan(true).await;
        tokio::time::sleep(self.cfg.stability_window()).await;
        let mut handles = self.scan(true).await;
        // Object-store versions load once their download into the cache ends.
        if self.remote.downloading() {
            while self.remote.downloading() {
                self.wake.notified().await;
                handles.extend(self.scan(false).await);
            }
            handles.extend(self.scan(false).await);
        }
        for h in handles {
            let _ = h.await;
        }
        self.lock().initial_done = true;
    }

    /// Scans every poll interval (or when woken) until the task is dropped. Object stores are
    /// listed at their own period (see [`Remote::refresh`](crate::repository::remote::Remote::refresh)).
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
            let _ = self.scan(false).await;
        }
    }

    /// Reads the repository (no locks held), then reconciles: starts loads and retires versions.
    /// `list`: list object stores now rather than when due. Returns the loads it started.
    pub async fn scan(self: &Arc<Self>, list: bool) -> Vec<JoinHandle<()>> {
        let (source, excluded, in_use) = {
            let state = self.lock();
            (state.source.clone(), state.excluded.clone(), in_use(&state))
        };
        let Some(scanned) = self.read(&source, &excluded, &in_use, list).await else {
            self.metrics.polled(false);
            return Vec::new();
        };
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

    /// What the source holds now. None: the repository could not be read (nothing changes).
    async fn read(
        &self,
        source: &ModelSource,
        excluded: &BTreeSet<String>,
        in_use: &BTreeMap<String, BTreeSet<i64>>,
        list: bool,
    ) -> Option<Vec<ScannedModel>> {
        let none = BTreeSet::new();
        match source {
            ModelSource::Repository(Location::Local(root)) => match repository::list_models(root) {
                Ok(dirs) => Some(
                    dirs.into_iter()
                        .filter(|d| !excluded.contains(&d.name))
                        .map(|d| {
                            scan_model(ModelConfig {
                                name: d.name,
                                base_path: Location::Local(d.path),
                                policy: VersionPolicy::default(),
                                labels: BTreeMap::new(),
                            })
                        })
                        .collect(),
                ),
                Err(e) => {
                    // Keep serving what is loaded: a storage hiccup must not unload everything.
                    tracing::error!(repository = %root.display(), "cannot read the model repository: {e}");
                    None
                }
            },
            ModelSource::Repository(Location::Remote(root)) => {
                self.remote.retain(&[root.clone()].into());
                let listed = self.remote.refresh(root, Kind::Repository, list).await;
                // Before the first successful listing there is nothing to reconcile (it logged why).
                let names = self.remote.models(root).ok()?;
                let scanned = names
                    .into_iter()
                    .filter(|n| !excluded.contains(n))
                    .map(|name| {
                        let policy = VersionPolicy::default();
                        let used = in_use.get(&name).unwrap_or(&none);
                        let versions = self.remote.versions(root, &name, &policy, used);
                        let base_path = Location::Remote(root.join(&name));
                        ScannedModel {
                            config: ModelConfig { name, base_path, policy, labels: BTreeMap::new() },
                            versions,
                            listed: true,
                        }
                    })
                    .collect();
                if listed {
                    self.remote.clean(root, in_use);
                }
                Some(scanned)
            }
            ModelSource::List(list_) => {
                let roots: BTreeSet<RemoteUri> = list_
                    .iter()
                    .filter_map(|c| match &c.base_path {
                        Location::Remote(u) => Some(u.clone()),
                        Location::Local(_) => None,
                    })
                    .collect();
                self.remote.retain(&roots);
                let mut scanned = Vec::new();
                for config in list_.iter().filter(|c| !excluded.contains(&c.name)).cloned() {
                    let Location::Remote(base) = &config.base_path else {
                        scanned.push(scan_model(config));
                        continue;
                    };
                    let base = base.clone();
                    let listed = self.remote.refresh(&base, Kind::Model, list).await;
                    let used = in_use.get(&config.name).unwrap_or(&none);
                    let versions = self.remote.versions(&base, "", &config.policy, used);
                    if listed {
                        self.remote.clean(&base, in_use);
                    }
                    scanned.push(ScannedModel { config, versions, listed: true });
                }
                Some(scanned)
            }
        }
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
        for ScannedModel { config, versions, listed } in scanned {
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
                    rec.config.base_path,
                    rec.config.base_path,
                    repository::MODEL_FILE
                )
            });

            // Stability: unchanged for at least one window (i.e. across two scans).
            let mut stable: BTreeMap<i64, Fingerprint> = BTreeMap::new();
            let mut unstable = false;
            for (v, (path, fp)) in &on_disk {
                if !listed {
                    still_present.insert(path.clone());
                }
                let Some(fp) = fp else {
                    unstable = true;
                    continue;
                };
                // Object-store versions are stable once two listings agree (and downloaded).
                let settled = listed || {
                    let since = match state.seen.get(path) {
                        Some((old, since)) if old == fp => *since,
                        _ => {
                            state.seen.insert(path.clone(), (fp.clone(), now));
                            now
                        }
                    };
                    now.duration_since(since) >= window
                };
                if settled && fp.has_model() {
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
                        vr.note.clear();
                        vr.load_error = None;
                        vr.report = None;
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
                            vr.note = "unloading: finishing in-flight requests".into();
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
    pub(super) fn retire(self: &Arc<Self>, model: String, version: i64, servable: Arc<Servable>, mark_end: bool) {
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
                        vr.message.clear();
                        vr.note = "unloaded".into();
                    }
                }
            }
            tracing::info!(model = %model, version, "version unloaded");
        });
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
}

/// Lists a local model's versions and fingerprints them (file system only, no locks).
fn scan_model(config: ModelConfig) -> ScannedModel {
    let path = config.base_path.local().map(Path::to_path_buf).unwrap_or_default();
    let dir = ModelDir { name: config.name.clone(), path };
    let versions = repository::list_versions(&dir)
        .map(|vs| {
            vs.into_iter().map(|v| (v.version, (v.path.clone(), repository::fingerprint(&v.path).ok()))).collect()
        })
        .map_err(|e| format!("cannot read model directory {}: {e}", config.base_path));
    ScannedModel { config, versions, listed: false }
}

/// Per model, the versions loaded or loading (the cache must keep them).
fn in_use(state: &State) -> BTreeMap<String, BTreeSet<i64>> {
    state
        .models
        .iter()
        .map(|(name, rec)| {
            let used = rec.versions.iter().filter(|(_, v)| v.servable.is_some() || v.loading).map(|(v, _)| *v);
            (name.clone(), used.collect())
        })
        .collect()
}
