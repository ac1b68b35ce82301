//! Loading: a version's sessions are built (and warmed) on a loader thread, then published;
//! explicit load and unload of a whole model.
use super::warmup::{self, WarmupOutcome};
use super::{LoadReport, ModelManager, ModelSource, VersionState};
use crate::error::Error;
use crate::repository::uri::Location;
use crate::repository::Fingerprint;
use crate::runtime::{LoadError, Servable};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

impl ModelManager {
    /// Loads (and warms) one version on a loader thread, then publishes it.
    pub(super) async fn load(self: Arc<Self>, model: String, version: i64, file: PathBuf, fp: Fingerprint) {
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
                // Before the version is published: requests never wait for this.
                let outcome = warmup::run(&s, cfg.enable_warmup, cfg.warmup_iterations, cfg.runtime.max_tensor_bytes)?;
                Ok((s, outcome))
            });
            let _ = tx.send((result, started.elapsed()));
        });
        let outcome = match spawned {
            Ok(_) => rx.await.map_err(|_| LoadError::new(Code::Internal, "the loader thread panicked")),
            Err(e) => Err(LoadError::new(Code::Internal, format!("could not start a loader thread: {e}"))),
        }
        .and_then(|(r, took)| r.map(|(s, w)| (s, w, took)));

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
        outcome: Result<(Servable, WarmupOutcome, Duration), LoadError>,
    ) -> Option<Servable> {
        let mut state = self.lock();
        let Some(vr) = state.models.get_mut(model).and_then(|r| r.versions.get_mut(&version)) else {
            return outcome.ok().map(|(s, _, _)| s);
        };
        vr.loading = false;
        vr.fingerprint = Some(fp);
        match outcome {
            Ok((servable, warmup, took)) => {
                // The details go to this log line and the status route; the status stays OK and "".
                tracing::info!(
                    model,
                    version,
                    "serving on {} with {} session(s){}; loaded in {} ms; {warmup}",
                    servable.providers,
                    servable.pool_size(),
                    servable.batching().map(|b| format!(", {b}")).unwrap_or_default(),
                    took.as_millis()
                );
                vr.report = Some(LoadReport {
                    providers: servable.providers.names.clone(),
                    provider_fallback: servable.providers.fallback.clone(),
                    sessions: servable.pool_size(),
                    batching: servable.batching_config().map(|(c, threads)| (c.clone(), threads)),
                    load_time: took,
                    warmup,
                    memory: servable.memory(),
                });
                self.metrics.register(&servable, took);
                let old = vr.servable.replace(Arc::new(servable));
                vr.state = VersionState::Available;
                vr.code = Code::Ok;
                vr.message.clear();
                vr.note.clear();
                vr.load_error = None;
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
                vr.load_error = Some(e.message.clone());
                if vr.servable.is_none() {
                    vr.state = VersionState::End;
                    vr.code = e.code;
                    vr.message = e.message;
                    vr.report = None;
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

    /// Loads (or reloads) a model explicitly and returns when it is AVAILABLE, failed, or the
    /// timeout passed. It must be a directory of the repository or a model of the config.
    pub async fn load_model(&self, name: &str, timeout: Duration) -> Result<(), Error> {
        {
            let mut state = self.lock();
            let known = match &state.source {
                ModelSource::Repository(Location::Local(root)) => root.join(name).is_dir(),
                ModelSource::Repository(Location::Remote(root)) => {
                    self.remote.models(root).is_ok_and(|m| m.iter().any(|m| m == name))
                }
                ModelSource::List(list) => list.iter().any(|m| m.name == name),
            };
            if !known {
                return Err(Error::NotFound(match &state.source {
                    ModelSource::Repository(Location::Local(root)) => {
                        format!("cannot load model '{name}': there is no directory {}", root.join(name).display())
                    }
                    ModelSource::Repository(Location::Remote(root)) => {
                        format!("cannot load model '{name}': the last listings of {root} have no model {name}")
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
}
