//! The serving table requests read, and resolution: labels, versions, readiness and status.
use super::{ModelDetails, ModelManager, ModelSource, State, VersionRecord, VersionState, VersionStatus};
use crate::error::Error;
use crate::repository::config::ModelConfig;
use crate::runtime::Servable;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tonic::Code;

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

impl ModelManager {
    /// Rebuilds the serving table from the records and swaps it in atomically.
    pub(super) fn publish(&self, state: &State) {
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

    /// The servable a request asks for.
    pub fn resolve(&self, model: &str, selector: &VersionSelector) -> Result<Arc<Servable>, Error> {
        crate::logging::note_model(model);
        let table = self.table.load();
        // A model outside the caller's allow-list is answered exactly like a missing one.
        let Some(m) = table.models.get(model).filter(|_| crate::tenancy::allowed(model)) else {
            let mut known: Vec<&str> =
                table.models.keys().map(String::as_str).filter(|n| crate::tenancy::visible(n)).collect();
            known.sort_unstable();
            return Err(Error::ModelNotFound { model: model.to_string(), known: known.join(", ") });
        };
        let found = self.resolve_in(m, model, selector);
        if let Ok(s) = &found {
            crate::tenancy::note_resolved(&s.model, s.version);
        }
        found
    }

    fn resolve_in(&self, m: &ServingModel, model: &str, selector: &VersionSelector) -> Result<Arc<Servable>, Error> {
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
    pub(super) fn unavailable(&self, model: &str, version: Option<i64>, via: &str) -> Error {
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
        crate::logging::note_model(model);
        let state = self.lock();
        let Some(rec) = state.models.get(model).filter(|_| crate::tenancy::allowed(model)) else {
            let known: Vec<&str> =
                state.models.keys().map(String::as_str).filter(|n| crate::tenancy::visible(n)).collect();
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

    /// Every version of a model with how it was loaded, for the status route.
    pub fn details(&self, model: &str) -> Result<ModelDetails, Error> {
        let state = self.lock();
        let Some(rec) = state.models.get(model).filter(|_| crate::tenancy::allowed(model)) else {
            let known: Vec<&str> =
                state.models.keys().map(String::as_str).filter(|n| crate::tenancy::visible(n)).collect();
            return Err(Error::ModelNotFound { model: model.to_string(), known: known.join(", ") });
        };
        Ok(ModelDetails {
            name: model.to_string(),
            local_dir: match &rec.config.base_path {
                crate::repository::uri::Location::Local(p) => Some(p.clone()),
                crate::repository::uri::Location::Remote(_) => None,
            },
            problem: rec.problem.clone(),
            versions: rec.versions.iter().map(|(v, r)| (*v, r.details())).collect(),
        })
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
            .filter(|(n, _)| model.is_none_or(|m| m == n.as_str()) && crate::tenancy::visible(n))
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
}
