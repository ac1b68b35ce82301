//! Remote repositories as the watcher sees them: each root (a repository URI, or one model's base
//! URI) is listed once per poll; the last two successful listings give each version's stability
//! (see [`listing`](super::listing)); stable versions the policy wants are downloaded into the
//! cache in the background; the watcher gets the same (version -> directory, fingerprint) map the
//! local scanner gives, with `None` for versions not ready to load yet.
//!
//! A failed or empty listing changes nothing: it is logged, counted, and retried with backoff.
use super::cache;
use super::listing::{self, ModelListing, RemoteVersion, Stability};
use super::object_store::{build_store, list, ObjectStoreConfig};
use super::policy::VersionPolicy;
use super::uri::RemoteUri;
use super::Fingerprint;
use object_store::ObjectStore;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};

/// What a root holds: model name -> versions ("" for a model's own base URI).
type Models = BTreeMap<String, ModelListing>;

/// A version the watcher sees: the directory to load from and its fingerprint, or `None` while it
/// is changing or downloading.
pub type Versions = BTreeMap<i64, (PathBuf, Option<Fingerprint>)>;

/// Whether a root is a repository (models under it) or one model's base path (versions under it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Repository,
    Model,
}

/// Counters of the remote repositories (for logs and metrics).
#[derive(Debug, Default)]
pub struct Stats {
    pub listings_ok: AtomicU64,
    pub listings_failed: AtomicU64,
    pub listings_empty: AtomicU64,
    pub downloads: AtomicU64,
    pub downloads_failed: AtomicU64,
    pub downloaded_bytes: AtomicU64,
    /// Versions found in the cache, matching the listing, so not downloaded.
    pub cache_hits: AtomicU64,
}

impl Root {
    fn new(kind: Kind, store: Result<Arc<dyn ObjectStore>, String>) -> Root {
        Root {
            kind,
            store,
            prev: None,
            cur: None,
            listings: 0,
            next_list: None,
            failures: 0,
            last_error: None,
            keep: BTreeMap::new(),
        }
    }
}

struct Root {
    kind: Kind,
    store: Result<Arc<dyn ObjectStore>, String>,
    prev: Option<Arc<Models>>,
    cur: Option<Arc<Models>>,
    /// Successful listings so far.
    listings: u64,
    /// When the next listing is due (None: now).
    next_list: Option<Instant>,
    failures: u32,
    last_error: Option<String>,
    /// Per model: the versions the cache must keep (wanted, in use, or downloading).
    keep: BTreeMap<String, BTreeSet<i64>>,
}

#[derive(Default)]
struct Shared {
    roots: HashMap<RemoteUri, Root>,
    /// Version directories being downloaded.
    downloads: HashSet<PathBuf>,
    /// Version directory -> the listing count of its root when its download failed (retried after
    /// the next listing).
    failed: HashMap<PathBuf, u64>,
    /// Version directory -> the fingerprint its verified contents have.
    verified: HashMap<PathBuf, Fingerprint>,
}

pub struct Remote {
    cfg: ObjectStoreConfig,
    shared: Arc<Mutex<Shared>>,
    limit: Arc<Semaphore>,
    wake: Arc<Notify>,
    pub stats: Arc<Stats>,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Remote {
    /// `wake` is notified when a download ends.
    pub fn new(cfg: ObjectStoreConfig, wake: Arc<Notify>) -> Remote {
        Remote {
            limit: Arc::new(Semaphore::new(cfg.parallel_downloads.max(1))),
            cfg,
            shared: Arc::default(),
            wake,
            stats: Arc::default(),
        }
    }

    /// Uses `store` for root `uri` from now on (keeping what its listings showed): for embedding,
    /// and tests with an in-memory store.
    pub fn set_store(&self, uri: &RemoteUri, kind: Kind, store: Arc<dyn ObjectStore>) {
        let mut sh = lock(&self.shared);
        match sh.roots.get_mut(uri) {
            Some(root) => root.store = Ok(store),
            None => {
                sh.roots.insert(uri.clone(), Root::new(kind, Ok(store)));
            }
        }
    }

    /// Whether a download is in flight.
    pub fn downloading(&self) -> bool {
        !lock(&self.shared).downloads.is_empty()
    }

    /// Forgets roots no longer configured.
    pub fn retain(&self, roots: &BTreeSet<RemoteUri>) {
        lock(&self.shared).roots.retain(|u, _| roots.contains(u));
    }

    /// Lists `uri` if a listing is due (or `force`). Returns whether a new listing arrived.
    pub async fn refresh(&self, uri: &RemoteUri, kind: Kind, force: bool) -> bool {
        let store = {
            let mut sh = lock(&self.shared);
            let root = sh.roots.entry(uri.clone()).or_insert_with(|| Root::new(kind, build_store(uri, &self.cfg)));
            if !force && root.next_list.is_some_and(|t| Instant::now() < t) {
                return false;
            }
            match &root.store {
                Ok(s) => Arc::clone(s),
                Err(e) => {
                    if root.last_error.as_ref() != Some(e) {
                        tracing::error!("{e}");
                    }
                    root.last_error = Some(e.clone());
                    root.next_list = Some(Instant::now() + Duration::from_secs(3600));
                    return false;
                }
            }
        };
        let started = Instant::now();
        let result = list(&*store, uri, &self.cfg.env).await;
        let took = started.elapsed();
        let mut sh = lock(&self.shared);
        let Some(root) = sh.roots.get_mut(uri) else { return false };
        let failure = match result {
            Ok(objects) if !objects.is_empty() => {
                let models = match root.kind {
                    Kind::Repository => listing::models(&objects),
                    Kind::Model => {
                        [(String::new(), listing::versions(objects.iter().map(|(k, o)| (k.as_str(), o))))].into()
                    }
                };
                self.stats.listings_ok.fetch_add(1, Ordering::Relaxed);
                if root.failures > 0 {
                    tracing::info!(repository = %uri, "listing works again after {} failure(s)", root.failures);
                }
                tracing::debug!(repository = %uri, objects = objects.len(), ms = took.as_millis() as u64, "listed");
                root.prev = root.cur.take();
                root.cur = Some(Arc::new(models));
                root.listings += 1;
                root.failures = 0;
                root.last_error = None;
                root.next_list = self.cfg.poll_interval.map(|p| Instant::now() + jitter(p));
                if root.next_list.is_none() {
                    root.next_list = Some(Instant::now() + Duration::from_secs(365 * 86400));
                }
                return true;
            }
            Ok(_) => {
                self.stats.listings_empty.fetch_add(1, Ordering::Relaxed);
                format!("the listing of {uri} is empty")
            }
            Err(e) => {
                self.stats.listings_failed.fetch_add(1, Ordering::Relaxed);
                e
            }
        };
        root.failures += 1;
        let base = self.cfg.poll_interval.unwrap_or(Duration::from_secs(30));
        let backoff = base.saturating_mul(1 << (root.failures - 1).min(6)).min(base.max(Duration::from_secs(60)));
        root.next_list = Some(Instant::now() + backoff);
        tracing::error!(
            repository = %uri,
            failures = root.failures,
            "{failure}; keeping the loaded versions, listing again in {:.1} s",
            backoff.as_secs_f64()
        );
        root.last_error = Some(failure);
        false
    }

    /// The models of a repository root (those in either of the last two listings), or None before
    /// its first successful listing (with the error, if any).
    pub fn models(&self, uri: &RemoteUri) -> Result<Vec<String>, Option<String>> {
        let sh = lock(&self.shared);
        let Some(root) = sh.roots.get(uri) else { return Err(None) };
        match &root.cur {
            None => Err(root.last_error.clone()),
            Some(cur) => {
                let mut names: BTreeSet<String> = cur.keys().cloned().collect();
                names.extend(root.prev.iter().flat_map(|p| p.keys().cloned()));
                Ok(names.into_iter().collect())
            }
        }
    }

    /// The versions of `model` of root `uri` ("" for a model root) as the watcher sees them.
    /// `in_use`: versions the manager holds loaded or is loading. Starts the downloads needed.
    pub fn versions(
        &self,
        uri: &RemoteUri,
        model: &str,
        policy: &VersionPolicy,
        in_use: &BTreeSet<i64>,
    ) -> Result<Versions, String> {
        let mut sh = lock(&self.shared);
        let Some(root) = sh.roots.get(uri) else { return Err(format!("{uri} has not been listed yet")) };
        let Some(cur) = root.cur.clone() else {
            return Err(root.last_error.clone().unwrap_or_else(|| format!("{uri} has not been listed yet")));
        };
        let (prev, listings) = (root.prev.clone(), root.listings);
        let store = root.store.clone();
        let model_uri = if model.is_empty() { uri.clone() } else { uri.join(model) };
        let model_dir = self.cfg.cache_dir.join(model_uri.cache_path());
        let views = listing::view(prev.as_ref().and_then(|p| p.get(model)), cur.get(model));
        // The policy picks among the versions present that have a model, as the watcher does:
        // stable ones, missing ones (one listing is not enough to drop them) and loaded ones.
        let present: Vec<i64> = views
            .iter()
            .filter(|(n, v)| (v.stability != Stability::Changing || in_use.contains(n)) && v.version.has_model())
            .map(|(v, _)| *v)
            .collect();
        let wanted = policy.aspired(&present);
        let mut out = Versions::new();
        let mut keep: BTreeSet<i64> = wanted.union(in_use).copied().collect();
        for (v, view) in views {
            let dir = model_dir.join(v.to_string());
            let keep_v = wanted.contains(&v) || in_use.contains(&v);
            match view.stability {
                Stability::Changing => {
                    // It may be wanted once stable (after a restart, every version is changing
                    // until the second listing): its cached copy stays.
                    keep.insert(v);
                    out.insert(v, (dir, None));
                }
                Stability::Stable | Stability::Missing if keep_v => {
                    let fp = view.version.fingerprint();
                    if self.cached(&mut sh, &dir, &view.version, &fp, &model_uri, v) {
                        out.insert(v, (dir, Some(fp)));
                    } else {
                        if view.stability == Stability::Stable {
                            if let Ok(store) = &store {
                                self.start_download(
                                    &mut sh,
                                    store,
                                    &model_uri,
                                    v,
                                    dir.clone(),
                                    &view.version,
                                    listings,
                                );
                            }
                        }
                        out.insert(v, (dir, None));
                    }
                }
                Stability::Stable | Stability::Missing => {}
            }
        }
        keep.extend(
            sh.downloads
                .iter()
                .filter(|d| d.parent() == Some(&model_dir))
                .filter_map(|d| d.file_name().and_then(|n| n.to_str()).and_then(super::parse_version)),
        );
        if let Some(root) = sh.roots.get_mut(uri) {
            root.keep.insert(model.to_string(), keep);
        }
        Ok(out)
    }

    /// Whether `dir` holds `version` (checked on disk once, then remembered).
    fn cached(
        &self,
        sh: &mut Shared,
        dir: &PathBuf,
        version: &RemoteVersion,
        fp: &Fingerprint,
        model_uri: &RemoteUri,
        v: i64,
    ) -> bool {
        if sh.verified.get(dir) == Some(fp) {
            return true;
        }
        if sh.downloads.contains(dir) || !cache::holds(dir, version) {
            return false;
        }
        self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            source = %model_uri, version = v, cache = %dir.display(),
            "version {v} of {model_uri}: the cache matches the listing; not downloading"
        );
        sh.verified.insert(dir.clone(), fp.clone());
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn start_download(
        &self,
        sh: &mut Shared,
        store: &Arc<dyn ObjectStore>,
        model_uri: &RemoteUri,
        v: i64,
        dir: PathBuf,
        version: &RemoteVersion,
        listings: u64,
    ) {
        if sh.downloads.contains(&dir) || sh.failed.get(&dir).is_some_and(|&at| at == listings) {
            return;
        }
        sh.failed.remove(&dir);
        sh.verified.remove(&dir);
        sh.downloads.insert(dir.clone());
        tracing::info!(
            source = %model_uri, version = v, objects = version.objects.len(), bytes = version.bytes(),
            "version {v} of {model_uri}: downloading into {}", dir.display()
        );
        let (store, shared, limit, wake, stats, env) = (
            Arc::clone(store),
            Arc::clone(&self.shared),
            Arc::clone(&self.limit),
            Arc::clone(&self.wake),
            Arc::clone(&self.stats),
            self.cfg.env.clone(),
        );
        let source = model_uri.join(&v.to_string()).to_string();
        let version = version.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = cache::download(store, &source, &dir, &version, limit, &env).await;
            let mut sh = lock(&shared);
            sh.downloads.remove(&dir);
            match result {
                Ok(d) => {
                    stats.downloads.fetch_add(1, Ordering::Relaxed);
                    stats.downloaded_bytes.fetch_add(d.bytes, Ordering::Relaxed);
                    tracing::info!(
                        source = %source, objects = d.objects, bytes = d.bytes, ms = started.elapsed().as_millis() as u64,
                        "downloaded {source} into the cache"
                    );
                    sh.verified.insert(dir, version.fingerprint());
                }
                Err(e) => {
                    stats.downloads_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(source = %source, "download failed: {e}");
                    sh.failed.insert(dir, listings);
                }
            }
            drop(sh);
            wake.notify_one();
        });
    }

    /// After a new listing of `uri`: removes cached versions nobody wants and, for a repository,
    /// models that two listings agree are gone (unless still in use).
    pub fn clean(&self, uri: &RemoteUri, in_use: &BTreeMap<String, BTreeSet<i64>>) {
        let sh = lock(&self.shared);
        // One listing decides nothing, removals included.
        let Some(root) = sh.roots.get(uri).filter(|r| r.listings >= 2) else { return };
        let base = self.cfg.cache_dir.join(uri.cache_path());
        let mut removed = Vec::new();
        match root.kind {
            Kind::Model => {
                if let Some(keep) = root.keep.get("") {
                    removed = cache::clean(&base, keep);
                }
            }
            Kind::Repository => {
                let listed: BTreeSet<&String> =
                    root.cur.iter().chain(root.prev.iter()).flat_map(|m| m.keys()).collect();
                for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') {
                        continue;
                    }
                    match root.keep.get(&name) {
                        Some(keep) => removed.extend(cache::clean(&entry.path(), keep)),
                        None if !listed.contains(&name) && in_use.get(&name).is_none_or(|v| v.is_empty()) => {
                            let busy = sh.downloads.iter().any(|d| d.starts_with(entry.path()));
                            if !busy && entry.path().is_dir() && std::fs::remove_dir_all(entry.path()).is_ok() {
                                removed.push(entry.path());
                            }
                        }
                        None => {}
                    }
                }
            }
        }
        drop(sh);
        for r in removed {
            tracing::info!(cache = %r.display(), "removed from the model cache: no longer served");
            lock(&self.shared).verified.remove(&r);
        }
    }
}

/// `p` give or take 10%, so replicas do not list in step.
fn jitter(p: Duration) -> Duration {
    let r = std::collections::hash_map::RandomState::new().build_hasher().finish() % 2001;
    p.mul_f64(0.9 + r as f64 / 10_000.0)
}

#[cfg(test)]
#[path = "remote_tests.rs"]
mod tests;
