//! The local cache of object-store versions:
//! `<cache>/<provider>/<bucket>/<prefix>/[<model>/]<version>/`, holding the version's objects at
//! their paths and `.maas-manifest.json` (key, size, ETag of each).
//!
//! A download goes into a temporary directory next to its target; every GET is conditional on the
//! ETag the listing showed (an object replaced meanwhile aborts the download, and the next listing
//! decides again); objects stream to disk (never whole in memory), a few at a time; files, manifest
//! and directories are fsynced, then the directory is renamed into place. A version whose manifest
//! matches the listing (and whose files have the listed sizes) is not downloaded again, e.g. after
//! a restart.
use super::listing::{ObjectInfo, RemoteVersion};
use super::object_store::Env;
use futures::StreamExt;
use object_store::{GetOptions, ObjectStore};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

/// The manifest file inside a cached version.
pub const MANIFEST: &str = ".maas-manifest.json";

/// What a cached version holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The URI the version came from.
    pub source: String,
    pub objects: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Path inside the version directory.
    pub path: String,
    #[serde(flatten)]
    pub object: ObjectInfo,
}

impl Manifest {
    pub fn of(source: &str, version: &RemoteVersion) -> Manifest {
        Manifest {
            source: source.to_string(),
            objects: version
                .objects
                .iter()
                .map(|(p, o)| ManifestEntry { path: p.clone(), object: o.clone() })
                .collect(),
        }
    }

    /// Same paths, keys, sizes and ETags (or last-modified times) as the listing.
    pub fn matches(&self, version: &RemoteVersion) -> bool {
        self.objects.len() == version.objects.len()
            && self.objects.iter().zip(&version.objects).all(|(e, (p, o))| {
                &e.path == p
                    && e.object.key == o.key
                    && e.object.size == o.size
                    && e.object.e_tag == o.e_tag
                    && (o.e_tag.is_some() || e.object.last_modified == o.last_modified)
            })
    }
}

/// Whether `dir` holds `version` as listed: a matching manifest, and every file with its size.
pub fn holds(dir: &Path, version: &RemoteVersion) -> bool {
    let Ok(text) = std::fs::read(dir.join(MANIFEST)) else { return false };
    let Ok(manifest) = serde_json::from_slice::<Manifest>(&text) else { return false };
    manifest.matches(version)
        && version
            .objects
            .iter()
            .all(|(p, o)| std::fs::metadata(dir.join(p)).is_ok_and(|m| m.is_file() && m.len() == o.size))
}

/// What a download fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Downloaded {
    pub objects: usize,
    pub bytes: u64,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Prefix of this process's temporary directories (`.tmp-<pid>-...`); others' are stale.
fn temp_prefix() -> String {
    format!(".tmp-{}-", std::process::id())
}

/// Downloads `version` (listed under `source`) into `dir`, replacing what is there. `limit` bounds
/// the objects in flight across all downloads.
pub async fn download(
    store: Arc<dyn ObjectStore>,
    source: &str,
    dir: &Path,
    version: &RemoteVersion,
    limit: Arc<Semaphore>,
    env: &Env,
) -> Result<Downloaded, String> {
    let io = |what: &str, p: &Path, e: std::io::Error| format!("cannot {what} {} for {source}: {e}", p.display());
    let parent = dir.parent().ok_or_else(|| format!("cache directory {} has no parent", dir.display()))?;
    tokio::fs::create_dir_all(parent).await.map_err(|e| io("create", parent, e))?;
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = parent.join(format!("{}{n}-{name}", temp_prefix()));
    tokio::fs::create_dir(&tmp).await.map_err(|e| io("create", &tmp, e))?;
    let result = async {
        let fetches = version.objects.iter().map(|(rel, obj)| {
            let (store, limit, path) = (Arc::clone(&store), Arc::clone(&limit), tmp.join(rel));
            async move { fetch(&*store, source, obj, &path, &limit, env).await }
        });
        // The first failure drops the other fetches.
        let sizes = futures::future::try_join_all(fetches).await?;
        let manifest = serde_json::to_vec_pretty(&Manifest::of(source, version))
            .map_err(|e| format!("cannot write the manifest for {source}: {e}"))?;
        let mpath = tmp.join(MANIFEST);
        let mut f = tokio::fs::File::create(&mpath).await.map_err(|e| io("create", &mpath, e))?;
        f.write_all(&manifest).await.map_err(|e| io("write", &mpath, e))?;
        f.sync_all().await.map_err(|e| io("fsync", &mpath, e))?;
        let dirs: BTreeSet<PathBuf> =
            version.objects.keys().filter_map(|rel| tmp.join(rel).parent().map(Path::to_path_buf)).collect();
        for d in dirs.iter().rev() {
            sync_dir(d).await.map_err(|e| io("fsync", d, e))?;
        }
        sync_dir(&tmp).await.map_err(|e| io("fsync", &tmp, e))?;
        Ok::<_, String>(Downloaded { objects: sizes.len(), bytes: sizes.iter().sum() })
    }
    .await;
    let done = match result {
        Ok(d) => d,
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&tmp).await;
            return Err(e);
        }
    };
    // Into place: the old copy (if any) moves aside first, then goes.
    if tokio::fs::symlink_metadata(dir).await.is_ok() {
        let old = parent.join(format!("{}{}-old-{name}", temp_prefix(), TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)));
        tokio::fs::rename(dir, &old).await.map_err(|e| io("move aside", dir, e))?;
        let _ = tokio::fs::remove_dir_all(&old).await;
    }
    tokio::fs::rename(&tmp, dir).await.map_err(|e| io("rename into place", dir, e))?;
    sync_dir(parent).await.map_err(|e| io("fsync", parent, e))?;
    Ok(done)
}

/// One object, streamed to `path`, conditional on the listed ETag (or last-modified time).
async fn fetch(
    store: &dyn ObjectStore,
    source: &str,
    obj: &ObjectInfo,
    path: &Path,
    limit: &Semaphore,
    env: &Env,
) -> Result<u64, String> {
    let _permit = limit.acquire().await.map_err(|_| "the download limiter is closed".to_string())?;
    let key = &obj.key;
    let location = object_store::path::Path::parse(key).map_err(|e| format!("{source}: bad key {key}: {e}"))?;
    let opts = GetOptions {
        if_match: obj.e_tag.clone(),
        if_unmodified_since: match obj.e_tag {
            None => chrono::DateTime::parse_from_rfc3339(&obj.last_modified).ok().map(|t| t.to_utc()),
            Some(_) => None,
        },
        ..Default::default()
    };
    let changed = || {
        format!(
            "{source}: object {key} changed since it was listed (ETag {}); the next listings decide again",
            obj.e_tag.as_deref().unwrap_or(&obj.last_modified)
        )
    };
    let got = store.get_opts(&location, opts).await.map_err(|e| match e {
        object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. } => changed(),
        e => format!("{source}: cannot download {key}: {}", env.redact(&e.to_string())),
    })?;
    // A store that ignores If-Match still tells which version it sent.
    if obj.e_tag.is_some() && got.meta.e_tag.is_some() && got.meta.e_tag != obj.e_tag {
        return Err(changed());
    }
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| format!("cannot create {} for {source}: {e}", parent.display()))?;
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| format!("cannot create {} for {source}: {e}", path.display()))?;
    let mut stream = got.into_stream();
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| format!("{source}: download of {key} broke off: {}", env.redact(&e.to_string())))?;
        written += chunk.len() as u64;
        if written > obj.size {
            return Err(changed());
        }
        file.write_all(&chunk).await.map_err(|e| format!("cannot write {} for {source}: {e}", path.display()))?;
    }
    if written != obj.size {
        return Err(format!("{source}: object {key} had {written} bytes; the listing said {}", obj.size));
    }
    file.sync_all().await.map_err(|e| format!("cannot fsync {} for {source}: {e}", path.display()))?;
    Ok(written)
}

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all()).await.map_err(std::io::Error::other)?
}

/// Removes, under a model's cache directory, the version directories not in `keep` and temporary
/// directories other processes left behind. Returns what it removed.
pub fn clean(model_dir: &Path, keep: &BTreeSet<i64>) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(model_dir) else { return removed };
    let ours = temp_prefix();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = match super::parse_version(&name) {
            Some(v) => !keep.contains(&v),
            None => name.starts_with(".tmp-") && !name.starts_with(&ours),
        };
        if stale && entry.path().is_dir() && std::fs::remove_dir_all(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::listing;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    async fn listed(store: &InMemory, prefix: &str) -> listing::ModelListing {
        let uri = match crate::repository::uri::Location::parse(&format!("s3://b/{prefix}")).unwrap() {
            crate::repository::uri::Location::Remote(u) => u,
            other => panic!("{other:?}"),
        };
        let objs = super::super::object_store::list(store, &uri, &Env::default()).await.unwrap();
        listing::versions(objs.iter().map(|(k, o)| (k.as_str(), o)))
    }

    async fn put(store: &InMemory, key: &str, bytes: &[u8]) {
        store.put(&key.into(), bytes.to_vec().into()).await.unwrap();
    }

    #[tokio::test]
    async fn downloads_then_reuses_the_manifest() {
        let store = Arc::new(InMemory::new());
        put(&store, "m/1/model.onnx", b"model bytes").await;
        put(&store, "m/1/assets/vocab.txt", b"a b c").await;
        let v = listed(&store, "m").await[&1].clone();
        let cache = tempfile::tempdir().unwrap();
        let dir = cache.path().join("m/1");
        assert!(!holds(&dir, &v));
        let limit = Arc::new(Semaphore::new(4));
        let got = download(store.clone(), "s3://b/m", &dir, &v, limit.clone(), &Env::default()).await.unwrap();
        assert_eq!(got, Downloaded { objects: 2, bytes: 16 });
        assert_eq!(std::fs::read(dir.join("model.onnx")).unwrap(), b"model bytes");
        assert_eq!(std::fs::read(dir.join("assets/vocab.txt")).unwrap(), b"a b c");
        assert!(holds(&dir, &v), "the manifest matches the listing");
        let names: Vec<String> = std::fs::read_dir(cache.path().join("m"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        assert_eq!(names, ["1"], "no temporary directory is left");

        // A changed object (new ETag) no longer matches; a truncated file does not either.
        put(&store, "m/1/model.onnx", b"model bytes").await;
        let v2 = listed(&store, "m").await[&1].clone();
        assert!(!holds(&dir, &v2));
        std::fs::write(dir.join("assets/vocab.txt"), b"a").unwrap();
        assert!(!holds(&dir, &v));
    }

    #[tokio::test]
    async fn an_object_replaced_after_the_listing_aborts_the_download() {
        let store = Arc::new(InMemory::new());
        put(&store, "m/2/model.onnx", b"first").await;
        put(&store, "m/2/weights.bin", b"1234").await;
        let v = listed(&store, "m").await[&2].clone();
        let cache = tempfile::tempdir().unwrap();
        let dir = cache.path().join("m/2");
        // An older copy is in place; it must survive the failed download untouched.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.onnx"), b"old").unwrap();
        put(&store, "m/2/weights.bin", b"5678").await;
        let err = download(store.clone(), "s3://b/m", &dir, &v, Arc::new(Semaphore::new(4)), &Env::default())
            .await
            .unwrap_err();
        let tag = v.objects["weights.bin"].e_tag.clone().unwrap();
        assert_eq!(
            err,
            format!("s3://b/m: object m/2/weights.bin changed since it was listed (ETag {tag}); the next listings decide again")
        );
        assert_eq!(std::fs::read(dir.join("model.onnx")).unwrap(), b"old");
        let names: Vec<String> = std::fs::read_dir(cache.path().join("m"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        assert_eq!(names, ["2"], "the temporary directory is removed");
    }

    #[test]
    fn cleanup_removes_unwanted_versions_and_stale_temporaries() {
        let cache = tempfile::tempdir().unwrap();
        let m = cache.path();
        for d in ["1", "2", "3", ".tmp-1-0-4", &format!("{}9-5", temp_prefix()), "notes"] {
            std::fs::create_dir_all(m.join(d)).unwrap();
        }
        let mut removed = clean(m, &[2].into_iter().collect());
        removed.sort();
        assert_eq!(removed, vec![m.join(".tmp-1-0-4"), m.join("1"), m.join("3")]);
        assert!(m.join("2").is_dir() && m.join("notes").is_dir());
        assert!(m.join(format!("{}9-5", temp_prefix())).is_dir(), "an in-flight download of this process stays");
    }
}
