//! The poller against object_store's in-memory store: partial uploads, objects changed between
//! listings, flapping, empty and failed listings, the cache across a restart, cleanup.
use super::*;
use crate::repository::uri::Location;
use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path as Key;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStoreExt, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};
use std::sync::atomic::AtomicBool;

/// An in-memory store whose listings fail while `fail` is set, and leave out the keys under
/// `hide` (a flapping, eventually consistent listing); counts listings.
#[derive(Debug, Default)]
struct Flaky {
    inner: InMemory,
    fail: AtomicBool,
    hide: std::sync::Mutex<Option<String>>,
    lists: AtomicU64,
}

impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Flaky")
    }
}

#[async_trait]
impl ObjectStore for Flaky {
    async fn put_opts(&self, l: &Key, p: PutPayload, o: PutOptions) -> object_store::Result<PutResult> {
        self.inner.put_opts(l, p, o).await
    }
    async fn put_multipart_opts(
        &self,
        l: &Key,
        o: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(l, o).await
    }
    async fn get_opts(&self, l: &Key, o: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(l, o).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Key>>,
    ) -> BoxStream<'static, object_store::Result<Key>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Key>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        if self.fail.load(Ordering::Relaxed) {
            let e = object_store::Error::Generic { store: "Flaky", source: "connection refused".into() };
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        match self.hide.lock().unwrap().clone() {
            Some(h) => self
                .inner
                .list(prefix)
                .filter(move |m| std::future::ready(!matches!(m, Ok(m) if m.location.as_ref().starts_with(&h))))
                .boxed(),
            None => self.inner.list(prefix),
        }
    }
    async fn list_with_delimiter(&self, prefix: Option<&Key>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, from: &Key, to: &Key, o: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, o).await
    }
}

use futures::StreamExt;

struct Fixture {
    store: Arc<Flaky>,
    remote: Remote,
    uri: RemoteUri,
    cache: tempfile::TempDir,
}

fn uri(text: &str) -> RemoteUri {
    match Location::parse(text).unwrap() {
        Location::Remote(u) => u,
        other => panic!("{other:?}"),
    }
}

impl Fixture {
    fn new() -> Fixture {
        let cache = tempfile::tempdir().unwrap();
        Fixture::with(Arc::new(Flaky::default()), cache)
    }

    /// A poller (a "replica") over `store` with the cache in `cache`.
    fn with(store: Arc<Flaky>, cache: tempfile::TempDir) -> Fixture {
        let cfg = ObjectStoreConfig {
            cache_dir: cache.path().to_path_buf(),
            poll_interval: Some(Duration::from_millis(1)),
            ..Default::default()
        };
        let remote = Remote::new(cfg, Arc::new(Notify::new()));
        let uri = uri("s3://bucket/repo");
        remote.set_store(&uri, Kind::Repository, store.clone());
        Fixture { store, remote, uri, cache }
    }

    async fn put(&self, key: &str, bytes: &[u8]) {
        self.store.inner.put(&format!("repo/{key}").into(), bytes.to_vec().into()).await.unwrap();
    }

    fn hide(&self, prefix: &str) {
        *self.store.hide.lock().unwrap() = (!prefix.is_empty()).then(|| prefix.to_string());
    }

    async fn delete(&self, key: &str) {
        self.store.inner.delete(&format!("repo/{key}").into()).await.unwrap();
    }

    /// One poll: a listing, then the versions of `model` with `in_use` loaded, after the
    /// downloads this starts have ended (as the watcher sees them once woken).
    async fn poll(&self, model: &str, in_use: &[i64]) -> (bool, BTreeMap<i64, Option<Fingerprint>>) {
        let listed = self.remote.refresh(&self.uri, Kind::Repository, true).await;
        let used: BTreeSet<i64> = in_use.iter().copied().collect();
        let _ = self.remote.versions(&self.uri, model, &VersionPolicy::default(), &used);
        for _ in 0..500 {
            if !self.remote.downloading() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let v = self.remote.versions(&self.uri, model, &VersionPolicy::default(), &used);
        (listed, v.map(|m| m.into_iter().map(|(k, (_, fp))| (k, fp)).collect()).unwrap_or_default())
    }

    /// The versions now (no listing).
    fn now(&self, model: &str, in_use: &[i64]) -> BTreeMap<i64, Option<Fingerprint>> {
        let used: BTreeSet<i64> = in_use.iter().copied().collect();
        let v = self.remote.versions(&self.uri, model, &VersionPolicy::default(), &used).unwrap();
        v.into_iter().map(|(k, (_, fp))| (k, fp)).collect()
    }

    fn dir(&self, model: &str, v: i64) -> PathBuf {
        self.cache.path().join("s3/bucket/repo").join(model).join(v.to_string())
    }

    fn count(&self, c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

#[tokio::test]
async fn a_partial_upload_loads_only_once_two_listings_agree() {
    let f = Fixture::new();
    f.put("m/1/model.onnx", b"graph").await;
    let (_, v) = f.poll("m", &[]).await;
    assert_eq!(v.get(&1), Some(&None), "one listing: changing");
    f.put("m/1/weights.bin", b"weights").await;
    let (_, v) = f.poll("m", &[]).await;
    assert_eq!(v.get(&1), Some(&None), "a new object: still changing");
    assert_eq!(f.count(&f.remote.stats.downloads), 0, "nothing downloaded half-uploaded");
    // Unchanged across two listings: downloaded, then offered for loading.
    let (_, v) = f.poll("m", &[]).await;
    assert_eq!(f.count(&f.remote.stats.downloads), 1);
    let fp = v[&1].clone().expect("stable and cached");
    assert!(fp.has_model());
    assert_eq!(std::fs::read(f.dir("m", 1).join("weights.bin")).unwrap(), b"weights");
    assert!(f.dir("m", 1).join(super::cache::MANIFEST).is_file());
}

#[tokio::test]
async fn an_object_changed_between_listings_is_downloaded_again_once_stable() {
    let f = Fixture::new();
    f.put("m/1/model.onnx", b"graph-a").await;
    f.poll("m", &[]).await;
    let (_, v) = f.poll("m", &[]).await;
    let first = v[&1].clone().unwrap();
    // Same size, new ETag: changing again; the loaded version keeps being offered.
    f.put("m/1/model.onnx", b"graph-b").await;
    let (_, v) = f.poll("m", &[1]).await;
    assert_eq!(v.get(&1), Some(&None));
    let (_, v) = f.poll("m", &[1]).await;
    let second = v[&1].clone().unwrap();
    assert_ne!(first, second);
    assert_eq!(f.count(&f.remote.stats.downloads), 2);
    assert_eq!(std::fs::read(f.dir("m", 1).join("model.onnx")).unwrap(), b"graph-b");
}

#[tokio::test]
async fn flapping_and_empty_listings_never_drop_a_version_and_removal_needs_two_listings() {
    let f = Fixture::new();
    f.put("m/1/model.onnx", b"one").await;
    f.put("m/2/model.onnx", b"two").await;
    f.poll("m", &[]).await;
    let (_, v) = f.poll("m", &[]).await;
    let fp2 = v[&2].clone().unwrap();
    assert!(!v.contains_key(&1), "latest{{1}}: version 1 is neither wanted nor downloaded");

    // A listing that lacks version 2: 2 stays offered.
    f.hide("repo/m/2/");
    let (_, v) = f.poll("m", &[2]).await;
    assert_eq!(v.get(&2), Some(&Some(fp2.clone())), "missing once: kept");
    assert!(!v.contains_key(&1), "version 1 is not downloaded because of one listing");
    f.hide("");
    let (_, v) = f.poll("m", &[2]).await;
    assert_eq!(v.get(&2), Some(&None), "back after a gap: changing (still offered while loaded)");
    let (_, v) = f.poll("m", &[2]).await;
    assert_eq!(v.get(&2), Some(&Some(fp2.clone())), "stable again, the same files: no reload");
    assert_eq!(f.count(&f.remote.stats.downloads), 1);

    // An empty listing changes nothing, and is counted.
    f.hide("repo/");
    let (listed, v) = f.poll("m", &[2]).await;
    assert!(!listed);
    assert_eq!(v.get(&2), Some(&Some(fp2.clone())));
    assert_eq!(f.count(&f.remote.stats.listings_empty), 1);
    assert_eq!(f.remote.models(&f.uri).unwrap(), ["m"]);
    f.hide("");

    // Removal: a model gone from one listing is kept; gone from two, it is gone.
    f.delete("m/1/model.onnx").await;
    f.delete("m/2/model.onnx").await;
    f.put("other/1/model.onnx", b"x").await;
    f.poll("m", &[2]).await;
    assert_eq!(f.remote.models(&f.uri).unwrap(), ["m", "other"], "m lacks from one listing only");
    assert!(f.now("m", &[2]).contains_key(&2));
    f.poll("m", &[2]).await;
    assert_eq!(f.remote.models(&f.uri).unwrap(), ["other"]);
    assert!(f.now("m", &[2]).is_empty());
}

#[tokio::test]
async fn a_failed_listing_changes_nothing_and_backs_off() {
    let f = Fixture::new();
    f.put("m/3/model.onnx", b"three").await;
    f.poll("m", &[]).await;
    let (_, before) = f.poll("m", &[]).await;
    assert!(before[&3].is_some());
    f.store.fail.store(true, Ordering::Relaxed);
    let (listed, after) = f.poll("m", &[3]).await;
    assert!(!listed);
    assert_eq!(after, before, "the last good listings still decide");
    assert_eq!(f.count(&f.remote.stats.listings_failed), 1);
    // Not due yet (backoff): no listing is made.
    let lists = f.count(&f.store.lists);
    assert!(!f.remote.refresh(&f.uri, Kind::Repository, false).await);
    assert_eq!(f.count(&f.store.lists), lists);
    // Working again.
    f.store.fail.store(false, Ordering::Relaxed);
    let (listed, v) = f.poll("m", &[3]).await;
    assert!(listed);
    assert_eq!(v, before);
}

#[tokio::test]
async fn a_restarted_poller_uses_its_cache_and_cleans_what_is_no_longer_served() {
    let f = Fixture::new();
    f.put("m/1/model.onnx", b"one").await;
    f.poll("m", &[]).await;
    let (_, v) = f.poll("m", &[]).await;
    let fp1 = v[&1].clone().unwrap();
    assert_eq!(f.count(&f.remote.stats.downloads), 1);

    // "Restart": a new poller on the same store and cache.
    let restarted = Fixture::with(f.store.clone(), f.cache);
    restarted.poll("m", &[]).await;
    // The watcher cleans after each listing: the first one (everything still changing) must not
    // take the cache away.
    restarted.remote.clean(&restarted.uri, &BTreeMap::new());
    assert!(restarted.dir("m", 1).join("model.onnx").is_file());
    let (_, v) = restarted.poll("m", &[]).await;
    assert_eq!(v[&1], Some(fp1));
    assert_eq!(restarted.count(&restarted.remote.stats.downloads), 0, "not downloaded again");
    assert_eq!(restarted.count(&restarted.remote.stats.cache_hits), 1);

    // Version 2 arrives; once 1 is no longer in use, its cache directory goes. Stale temporary
    // directories of other processes go too.
    let f = restarted;
    std::fs::create_dir_all(f.dir("m", 1).with_file_name(".tmp-999999-0-1")).unwrap();
    f.put("m/2/model.onnx", b"two").await;
    f.poll("m", &[1]).await;
    let (_, v) = f.poll("m", &[1]).await;
    assert!(v[&2].is_some());
    f.remote.clean(&f.uri, &[("m".to_string(), [1, 2].into())].into());
    assert!(f.dir("m", 1).is_dir(), "in use: kept");
    f.poll("m", &[2]).await;
    f.remote.clean(&f.uri, &[("m".to_string(), [2].into())].into());
    assert!(!f.dir("m", 1).exists(), "no longer served: removed");
    assert!(f.dir("m", 2).is_dir());
    assert!(!f.dir("m", 1).with_file_name(".tmp-999999-0-1").exists());
}

#[tokio::test]
async fn a_ready_marker_loads_after_one_listing() {
    let f = Fixture::new();
    f.put("m/4/model.onnx", b"four").await;
    f.put("m/4/.maas-ready", b"").await;
    let (_, v) = f.poll("m", &[]).await;
    assert!(v[&4].is_some());
}
