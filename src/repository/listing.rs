//! What one listing of an object-store prefix says: models, versions and their objects, and the
//! two-listing stability rule.
//!
//! A version is *stable* when two consecutive successful listings show the same (size, ETag or
//! last-modified) for every object under it, or when its `.maas-ready` marker is listed. A version
//! or model that one listing lacks but the one before had is kept (*missing*): removal needs two
//! listings that agree, so a listing taken during an `aws s3 sync`, or a flapping one, never unloads.
use super::uri::safe_key;
use super::{Fingerprint, MODEL_FILE};
use crate::runtime::settings::SETTINGS_FILE;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Marker object an uploader may write last (`<version>/.maas-ready`): the version is complete.
pub const READY_MARKER: &str = ".maas-ready";

/// One object as a listing showed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// The full key in the bucket.
    pub key: String,
    pub size: u64,
    /// Compared for equality only (a multipart ETag is not an MD5).
    pub e_tag: Option<String>,
    /// RFC 3339; what stands in for the ETag when a store gives none.
    pub last_modified: String,
}

impl ObjectInfo {
    /// What must not change between two listings: the size and the ETag (or last-modified).
    fn stamp(&self) -> (u64, &str) {
        (self.size, self.e_tag.as_deref().unwrap_or(&self.last_modified))
    }
}

/// The objects of one version: path inside the version -> object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RemoteVersion {
    pub objects: BTreeMap<String, ObjectInfo>,
    /// The `.maas-ready` marker was listed.
    pub ready: bool,
}

impl RemoteVersion {
    /// Same objects with the same size and ETag (or last-modified).
    pub fn same_as(&self, other: &RemoteVersion) -> bool {
        self.objects.len() == other.objects.len()
            && self.objects.iter().zip(&other.objects).all(|((p, a), (q, b))| p == q && a.stamp() == b.stamp())
    }

    pub fn has_model(&self) -> bool {
        self.objects.contains_key(MODEL_FILE)
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::from_objects(
            self.objects.iter().map(|(p, o)| (p.as_str(), o.size, o.stamp().1.to_string())).collect(),
        )
    }

    pub fn bytes(&self) -> u64 {
        self.objects.values().map(|o| o.size).sum()
    }
}

/// One model's versions in a listing.
pub type ModelListing = BTreeMap<i64, RemoteVersion>;

/// Groups the objects under a model's base (keys relative to it) into versions:
/// `<version>/<path>` (version a positive integer), or KServe's bare layout, a `model.onnx` at the
/// base with no numbered directories, served as version 1. A model-level `maas.pbtxt` is added to
/// each numbered version that has none of its own (the same settings a local repository gives).
/// Hidden segments (temporary upload names), directory markers and unsafe keys are skipped.
pub fn versions<'a>(objects: impl IntoIterator<Item = (&'a str, &'a ObjectInfo)>) -> ModelListing {
    let mut out: ModelListing = BTreeMap::new();
    let mut bare = RemoteVersion::default();
    let mut settings = None;
    for (rel, obj) in objects {
        if rel.ends_with('/') || !safe_key(rel) {
            continue;
        }
        let (first, rest) = rel.split_once('/').unwrap_or((rel, ""));
        if let Some(v) = super::parse_version(first).filter(|_| !rest.is_empty()) {
            let entry = out.entry(v).or_default();
            if rest == READY_MARKER {
                entry.ready = true;
            } else if !rest.split('/').any(|s| s.starts_with('.')) {
                entry.objects.insert(rest.to_string(), obj.clone());
            }
        } else if rel == READY_MARKER {
            bare.ready = true;
        } else if !rel.split('/').any(|s| s.starts_with('.')) {
            if rel == SETTINGS_FILE {
                settings = Some(obj.clone());
            }
            bare.objects.insert(rel.to_string(), obj.clone());
        }
    }
    out.retain(|_, v| !v.objects.is_empty());
    if out.is_empty() {
        if bare.has_model() {
            out.insert(1, bare);
        }
    } else if let Some(s) = settings {
        for v in out.values_mut() {
            v.objects.entry(SETTINGS_FILE.to_string()).or_insert_with(|| s.clone());
        }
    }
    out
}

/// A whole listing of a repository prefix (keys relative to it), grouped by model (the first
/// segment; hidden names skipped) and version.
pub fn models(objects: &BTreeMap<String, ObjectInfo>) -> BTreeMap<String, ModelListing> {
    let mut by_model: BTreeMap<&str, Vec<(&str, &ObjectInfo)>> = BTreeMap::new();
    for (rel, obj) in objects {
        if let Some((model, rest)) = rel.split_once('/') {
            if !model.is_empty() && !model.starts_with('.') && safe_key(model) {
                by_model.entry(model).or_default().push((rest, obj));
            }
        }
    }
    by_model.into_iter().map(|(m, objs)| (m.to_string(), versions(objs))).filter(|(_, v)| !v.is_empty()).collect()
}

/// Where a version stands after the last two listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stability {
    /// Two consecutive listings agree (or its `.maas-ready` marker is listed).
    Stable,
    /// New, or its objects changed since the listing before.
    Changing,
    /// The last listing lacks it but the one before had it: kept until a second listing agrees.
    Missing,
}

/// A version as the last two listings show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionView {
    pub version: RemoteVersion,
    pub stability: Stability,
}

/// The versions of a model, from the listing before (`prev`) and the last one (`cur`).
pub fn view(prev: Option<&ModelListing>, cur: Option<&ModelListing>) -> BTreeMap<i64, VersionView> {
    let mut out = BTreeMap::new();
    for (v, rv) in cur.into_iter().flatten() {
        let before = prev.and_then(|p| p.get(v));
        let stability =
            if rv.ready || before.is_some_and(|b| b.same_as(rv)) { Stability::Stable } else { Stability::Changing };
        out.insert(*v, VersionView { version: rv.clone(), stability });
    }
    for (v, rv) in prev.into_iter().flatten() {
        out.entry(*v).or_insert_with(|| VersionView { version: rv.clone(), stability: Stability::Missing });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, size: u64, tag: &str) -> ObjectInfo {
        ObjectInfo { key: key.into(), size, e_tag: Some(tag.into()), last_modified: "2026-01-01T00:00:00Z".into() }
    }

    fn listing(entries: &[(&str, u64, &str)]) -> BTreeMap<String, ObjectInfo> {
        entries.iter().map(|(k, s, t)| (k.to_string(), obj(&format!("repo/{k}"), *s, t))).collect()
    }

    #[test]
    fn groups_models_and_versions_and_skips_temporaries() {
        let l = listing(&[
            ("a/1/model.onnx", 10, "x"),
            ("a/1/assets.extra/tf_serving_warmup_requests", 3, "w"),
            ("a/2/model.onnx.tmp/.part", 1, "t"),
            ("a/2/.model.onnx.uploading", 1, "t"),
            ("a/maas.pbtxt", 5, "s"),
            ("a/3/", 0, "d"),
            ("a/notes.txt", 1, "n"),
            (".trash/1/model.onnx", 1, "z"),
            ("b/0007/model.onnx", 4, "y"),
            ("b/1/../../x", 4, "y"),
            ("README", 1, "r"),
        ]);
        let m = models(&l);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["a", "b"]);
        let a1 = &m["a"][&1];
        assert_eq!(
            a1.objects.keys().collect::<Vec<_>>(),
            ["assets.extra/tf_serving_warmup_requests", "maas.pbtxt", "model.onnx"],
            "the model-level settings file joins each version"
        );
        assert_eq!(a1.objects["model.onnx"].key, "repo/a/1/model.onnx");
        assert!(!m["a"].contains_key(&2), "hidden upload names are not objects of the version");
        assert_eq!(m["b"].keys().collect::<Vec<_>>(), [&7]);
    }

    #[test]
    fn bare_model_onnx_is_version_one() {
        let l = listing(&[("model.onnx", 10, "x"), ("maas.pbtxt", 2, "s")]);
        let v = versions(l.iter().map(|(k, o)| (k.as_str(), o)));
        assert_eq!(v.keys().collect::<Vec<_>>(), [&1]);
        assert_eq!(v[&1].objects.keys().collect::<Vec<_>>(), ["maas.pbtxt", "model.onnx"]);
        // Numbered versions win over a bare file.
        let l = listing(&[("model.onnx", 10, "x"), ("3/model.onnx", 11, "y")]);
        let v = versions(l.iter().map(|(k, o)| (k.as_str(), o)));
        assert_eq!(v.keys().collect::<Vec<_>>(), [&3]);
        // Within a repository: <repo>/<model>/model.onnx.
        let m = models(&listing(&[("kserve/model.onnx", 10, "x")]));
        assert_eq!(m["kserve"].keys().collect::<Vec<_>>(), [&1]);
    }

    #[test]
    fn stability_needs_two_agreeing_listings() {
        let one =
            versions(listing(&[("1/model.onnx", 10, "a")]).iter().map(|(k, o)| (k.as_str(), o)).collect::<Vec<_>>());
        let first = view(None, Some(&one));
        assert_eq!(first[&1].stability, Stability::Changing, "one listing is not enough");
        assert_eq!(view(Some(&one), Some(&one))[&1].stability, Stability::Stable);
        // A changed ETag (same size) or a new object makes it change again.
        let changed = versions(listing(&[("1/model.onnx", 10, "b")]).iter().map(|(k, o)| (k.as_str(), o)));
        assert_eq!(view(Some(&one), Some(&changed))[&1].stability, Stability::Changing);
        let grown = versions(
            listing(&[("1/model.onnx", 10, "a"), ("1/weights.bin", 4, "c")]).iter().map(|(k, o)| (k.as_str(), o)),
        );
        assert_eq!(view(Some(&one), Some(&grown))[&1].stability, Stability::Changing);
        // Missing from the last listing only: kept, marked missing.
        let none = ModelListing::new();
        let v = view(Some(&one), Some(&none));
        assert_eq!(v[&1].stability, Stability::Missing);
        assert!(view(Some(&none), Some(&none)).is_empty(), "two listings agree that it is gone");
    }

    #[test]
    fn ready_marker_shortcuts_the_wait() {
        let l = listing(&[("2/model.onnx", 10, "a"), ("2/.maas-ready", 0, "m")]);
        let v = versions(l.iter().map(|(k, o)| (k.as_str(), o)));
        assert!(v[&2].ready);
        assert!(!v[&2].objects.contains_key(READY_MARKER));
        assert_eq!(view(None, Some(&v))[&2].stability, Stability::Stable);
    }

    #[test]
    fn fingerprints_follow_size_and_etag() {
        let a = versions(listing(&[("1/model.onnx", 10, "a")]).iter().map(|(k, o)| (k.as_str(), o)));
        let b = versions(listing(&[("1/model.onnx", 10, "b")]).iter().map(|(k, o)| (k.as_str(), o)));
        assert!(a[&1].fingerprint().has_model());
        assert_ne!(a[&1].fingerprint(), b[&1].fingerprint());
        assert_eq!(a[&1].fingerprint(), a[&1].clone().fingerprint());
    }
}
