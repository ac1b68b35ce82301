//! The model manager: models -> versions -> state.
//!
//! Requests read an immutable [`ServingTable`] through an `ArcSwap` (lock-free, never waits on a
//! load). Loads update the per-version status under a short mutex and then publish a new table built
//! from it. A retired servable is dropped when the last in-flight request holding its `Arc` finishes.
use crate::error::Error;
use crate::repository::{self, ModelDir};
use crate::runtime::{LoadError, RuntimeConfig, Servable};
use arc_swap::ArcSwap;
use ort::environment::Environment;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;
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

/// Status of one version as reported by GetModelStatus.
#[derive(Debug, Clone)]
pub struct VersionStatus {
    pub state: VersionState,
    /// `Code::Ok` unless the version failed.
    pub code: Code,
    /// The error when it failed; otherwise what it runs on (execution providers, sessions).
    pub message: String,
    servable: Option<Arc<Servable>>,
}

#[derive(Debug, Default)]
struct ModelRecord {
    base_path: PathBuf,
    /// Why the model has no versions to load, if so.
    problem: Option<String>,
    versions: BTreeMap<i64, VersionStatus>,
}

/// What requests read: every known model and its AVAILABLE versions.
#[derive(Debug, Default)]
pub struct ServingTable {
    models: HashMap<String, BTreeMap<i64, Arc<Servable>>>,
}

pub struct ModelManager {
    env: &'static Environment,
    runtime: RuntimeConfig,
    table: ArcSwap<ServingTable>,
    records: Mutex<BTreeMap<String, ModelRecord>>,
    load_slots: Arc<Semaphore>,
}

impl std::fmt::Debug for ModelManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelManager")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

impl ModelManager {
    pub fn new(
        env: &'static Environment,
        runtime: RuntimeConfig,
        num_load_threads: usize,
    ) -> ModelManager {
        ModelManager {
            env,
            runtime,
            table: ArcSwap::from_pointee(ServingTable::default()),
            records: Mutex::new(BTreeMap::new()),
            load_slots: Arc::new(Semaphore::new(num_load_threads.max(1))),
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ModelRecord>> {
        // A panic while holding this short lock leaves consistent data; keep serving.
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rebuilds the serving table from the records and swaps it in atomically.
    fn publish(&self, records: &BTreeMap<String, ModelRecord>) {
        let mut table = ServingTable::default();
        for (name, rec) in records {
            let available = rec
                .versions
                .iter()
                .filter(|(_, s)| s.state == VersionState::Available)
                .filter_map(|(v, s)| s.servable.clone().map(|sv| (*v, sv)))
                .collect();
            table.models.insert(name.clone(), available);
        }
        self.table.store(Arc::new(table));
    }

    /// Scans the repository and loads the highest version of every model. Returns when every load
    /// has finished (successfully or not); a model that fails does not stop the others.
    pub async fn load_repository(self: &Arc<Self>, root: &Path) -> Result<(), String> {
        let models = repository::list_models(root)
            .map_err(|e| format!("cannot read model repository {}: {e}", root.display()))?;
        if models.is_empty() {
            tracing::warn!(repository = %root.display(), "no model directories found: expected <repository>/<model>/<version>/model.onnx");
        }
        let mut loads = Vec::new();
        for model in models {
            if let Some(job) = self.plan_model(&model) {
                loads.push(job);
            }
        }
        self.publish(&self.records());
        let mut tasks = Vec::new();
        for (name, version, file) in loads {
            let this = Arc::clone(self);
            tasks.push(tokio::spawn(async move {
                this.load_version(name, version, file).await
            }));
        }
        for t in tasks {
            if let Err(e) = t.await {
                tracing::error!("model load task failed: {e}");
            }
        }
        Ok(())
    }

    /// Records a model and picks the version to load (the highest).
    fn plan_model(&self, model: &ModelDir) -> Option<(String, i64, PathBuf)> {
        let mut records = self.records();
        let rec = records.entry(model.name.clone()).or_default();
        rec.base_path = model.path.clone();
        let versions = match repository::list_versions(model) {
            Ok(v) => v,
            Err(e) => {
                let msg = format!("cannot read model directory {}: {e}", model.path.display());
                tracing::error!(model = %model.name, "{msg}");
                rec.problem = Some(msg);
                return None;
            }
        };
        let Some(latest) = versions.last() else {
            let msg = format!(
                "no versions found under {}: expected {}/<version>/{}",
                model.path.display(),
                model.path.display(),
                repository::MODEL_FILE
            );
            tracing::warn!(model = %model.name, "{msg}");
            rec.problem = Some(msg);
            return None;
        };
        rec.problem = None;
        rec.versions.insert(
            latest.version,
            VersionStatus {
                state: VersionState::Start,
                code: Code::Ok,
                message: String::new(),
                servable: None,
            },
        );
        Some((model.name.clone(), latest.version, latest.model_file()))
    }

    fn set_status(&self, model: &str, version: i64, status: VersionStatus) {
        let mut records = self.records();
        records
            .entry(model.to_string())
            .or_default()
            .versions
            .insert(version, status);
        self.publish(&records);
    }

    /// Loads one version on a dedicated loader thread (not the inference threads) and publishes it.
    async fn load_version(self: Arc<Self>, model: String, version: i64, file: PathBuf) {
        let Ok(_slot) = Arc::clone(&self.load_slots).acquire_owned().await else {
            return;
        };
        self.set_status(
            &model,
            version,
            VersionStatus {
                state: VersionState::Loading,
                code: Code::Ok,
                message: String::new(),
                servable: None,
            },
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (env, cfg, m) = (self.env, self.runtime.clone(), model.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("maas-load-{model}"))
            .spawn(move || {
                let started = std::time::Instant::now();
                let result = Servable::load(env, &m, version, &file, &cfg);
                let _ = tx.send((result, started.elapsed()));
            });
        let outcome = match spawned {
            Ok(_) => rx
                .await
                .map_err(|_| LoadError::new(Code::Internal, "the loader thread panicked")),
            Err(e) => Err(LoadError::new(
                Code::Internal,
                format!("could not start a loader thread: {e}"),
            )),
        };
        let status = match outcome {
            Ok((Ok(servable), took)) => {
                let message = format!(
                    "serving on {} with {} session(s); loaded in {} ms",
                    servable.providers,
                    servable.pool_size(),
                    took.as_millis()
                );
                tracing::info!(model, version, "{message}");
                VersionStatus {
                    state: VersionState::Available,
                    code: Code::Ok,
                    message,
                    servable: Some(Arc::new(servable)),
                }
            }
            Ok((Err(e), _)) | Err(e) => {
                tracing::error!(model, version, code = ?e.code, "failed to load: {}", e.message);
                VersionStatus {
                    state: VersionState::End,
                    code: e.code,
                    message: e.message,
                    servable: None,
                }
            }
        };
        self.set_status(&model, version, status);
    }

    /// The servable for a request: `version` if given, else the highest AVAILABLE version.
    pub fn resolve(&self, model: &str, version: Option<i64>) -> Result<Arc<Servable>, Error> {
        let table = self.table.load();
        let Some(versions) = table.models.get(model) else {
            let mut known: Vec<&String> = table.models.keys().collect();
            known.sort();
            let known: Vec<&str> = known.into_iter().map(String::as_str).collect();
            return Err(Error::ModelNotFound {
                model: model.to_string(),
                known: known.join(", "),
            });
        };
        let found = match version {
            Some(v) => versions.get(&v),
            None => versions.values().next_back(),
        };
        if let Some(s) = found {
            return Ok(Arc::clone(s));
        }
        // Error path: explain from the records.
        let records = self.records();
        let rec = records.get(model);
        let describe = |v: i64, s: &VersionStatus| {
            let detail = match s.state {
                VersionState::End if s.code != Code::Ok => {
                    format!(" (failed to load: {})", s.message)
                }
                VersionState::Start | VersionState::Loading => " (still loading)".to_string(),
                _ => String::new(),
            };
            format!("version {v} is {}{detail}", s.state.name())
        };
        match (version, rec) {
            (Some(v), Some(rec)) => match rec.versions.get(&v) {
                Some(s) => Err(Error::Unavailable(format!(
                    "model '{model}' {}",
                    describe(v, s)
                ))),
                None => {
                    let known: Vec<String> = rec.versions.keys().map(|v| v.to_string()).collect();
                    Err(Error::VersionNotFound {
                        model: model.to_string(),
                        version: v,
                        known: known.join(", "),
                    })
                }
            },
            (None, Some(rec)) => {
                let why = match &rec.problem {
                    Some(p) => p.clone(),
                    None => rec
                        .versions
                        .iter()
                        .map(|(v, s)| describe(*v, s))
                        .collect::<Vec<_>>()
                        .join("; "),
                };
                Err(Error::Unavailable(format!(
                    "model '{model}' has no available version: {why}"
                )))
            }
            (_, None) => Err(Error::Unavailable(format!(
                "model '{model}' has no available version"
            ))),
        }
    }

    /// Status of a model's versions (one version if given), as GetModelStatus reports it.
    pub fn status(
        &self,
        model: &str,
        version: Option<i64>,
    ) -> Result<Vec<(i64, VersionStatus)>, Error> {
        let records = self.records();
        let Some(rec) = records.get(model) else {
            let known: Vec<&str> = records.keys().map(String::as_str).collect();
            return Err(Error::ModelNotFound {
                model: model.to_string(),
                known: known.join(", "),
            });
        };
        match version {
            Some(v) => match rec.versions.get(&v) {
                Some(s) => Ok(vec![(v, s.clone())]),
                None => Err(Error::VersionNotFound {
                    model: model.to_string(),
                    version: v,
                    known: rec
                        .versions
                        .keys()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            },
            None if rec.versions.is_empty() => Err(Error::NotFound(format!(
                "Could not find any versions of model '{model}': {}",
                rec.problem.as_deref().unwrap_or("none found")
            ))),
            None => Ok(rec.versions.iter().map(|(v, s)| (*v, s.clone())).collect()),
        }
    }

    /// Names of all known models.
    pub fn model_names(&self) -> Vec<String> {
        self.records().keys().cloned().collect()
    }
}
