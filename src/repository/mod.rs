//! The model repository: `<root>/<model>/<version>/model.onnx`, version a positive integer, on
//! disk (this file: the local scanner) or in an object store (`object_store`, `listing`, `cache`,
//! `remote`), both giving the watcher the same versions and fingerprints. KServe's bare layout, a
//! `model.onnx` directly in the model's directory, is version 1.
pub mod cache;
pub mod config;
pub mod listing;
pub mod object_store;
pub mod policy;
pub mod remote;
pub mod uri;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// File name of a version's model inside its version directory.
pub const MODEL_FILE: &str = "model.onnx";

/// A model directory found under the repository root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDir {
    pub name: String,
    pub path: PathBuf,
}

/// A version directory of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionDir {
    pub version: i64,
    pub path: PathBuf,
}

impl VersionDir {
    pub fn model_file(&self) -> PathBuf {
        self.path.join(MODEL_FILE)
    }
}

/// Every model directory under `root` (hidden entries and plain files are skipped), sorted by name.
pub fn list_models(root: &Path) -> std::io::Result<Vec<ModelDir>> {
    let mut models = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        models.push(ModelDir { name, path: entry.path() });
    }
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(models)
}

/// Parses a version directory name: a positive integer (leading zeros allowed, as in TF Serving).
pub fn parse_version(name: &str) -> Option<i64> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse::<i64>().ok().filter(|&v| v > 0)
}

/// The version directories of a model, sorted by version. Other entries are ignored with a warning,
/// except in KServe's bare layout: no version directories and a `model.onnx` in the model's
/// directory, which is then version 1 (the directory itself).
pub fn list_versions(model: &ModelDir) -> std::io::Result<Vec<VersionDir>> {
    let mut versions: Vec<VersionDir> = Vec::new();
    let mut others = Vec::new();
    for entry in std::fs::read_dir(&model.path)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == crate::runtime::settings::SETTINGS_FILE {
            continue;
        }
        let is_dir = entry.path().is_dir();
        match parse_version(&name) {
            Some(version) if is_dir => {
                if let Some(dup) = versions.iter().find(|v| v.version == version) {
                    tracing::warn!(model = %model.name, ignored = %entry.path().display(), kept = %dup.path.display(),
                        "two directories name version {version}; ignoring one");
                    continue;
                }
                versions.push(VersionDir { version, path: entry.path() });
            }
            _ => others.push(entry.path()),
        }
    }
    if versions.is_empty() && model.path.join(MODEL_FILE).is_file() {
        versions.push(VersionDir { version: 1, path: model.path.clone() });
        return Ok(versions);
    }
    for entry in others {
        tracing::warn!(model = %model.name, entry = %entry.display(),
            "ignoring entry: versions are directories named by a positive integer, e.g. {}/1/{MODEL_FILE}",
            model.path.display());
    }
    versions.sort_by_key(|v| v.version);
    Ok(versions)
}

/// What a version holds: every file's relative path, size and modification time (on disk) or
/// ETag (in an object store). Two equal fingerprints from consecutive scans mean nobody is writing
/// the version any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, u64, Stamp)>);

/// What changes when a file is rewritten.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stamp {
    Modified(Option<SystemTime>),
    /// An object's ETag (or its last-modified time where the store gives no ETag).
    Tag(String),
}

impl Fingerprint {
    /// Whether the version holds its model file.
    pub fn has_model(&self) -> bool {
        self.0.iter().any(|(p, _, _)| p == Path::new(MODEL_FILE))
    }

    /// The fingerprint of listed objects: (path inside the version, size, ETag).
    pub fn from_objects(objects: Vec<(&str, u64, String)>) -> Fingerprint {
        let mut files: Vec<_> =
            objects.into_iter().map(|(p, size, tag)| (PathBuf::from(p), size, Stamp::Tag(tag))).collect();
        files.sort();
        Fingerprint(files)
    }
}

/// Fingerprints a version directory (recursively).
pub fn fingerprint(dir: &Path) -> std::io::Result<Fingerprint> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                let rel = entry.path().strip_prefix(dir).map(Path::to_path_buf).unwrap_or_else(|_| entry.path());
                files.push((rel, meta.len(), Stamp::Modified(meta.modified().ok())));
            }
        }
    }
    files.sort();
    Ok(Fingerprint(files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names() {
        assert_eq!(parse_version("1"), Some(1));
        assert_eq!(parse_version("0007"), Some(7));
        assert_eq!(parse_version("0"), None);
        assert_eq!(parse_version("-3"), None);
        assert_eq!(parse_version("v2"), None);
        assert_eq!(parse_version("1.5"), None);
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("99999999999999999999"), None);
    }

    #[test]
    fn fingerprint_changes_when_a_file_grows() {
        let dir = tempfile::tempdir().unwrap();
        let a = fingerprint(dir.path()).unwrap();
        assert!(!a.has_model());
        std::fs::write(dir.path().join(MODEL_FILE), b"abc").unwrap();
        let b = fingerprint(dir.path()).unwrap();
        assert!(b.has_model());
        assert_ne!(a, b);
        assert_eq!(b, fingerprint(dir.path()).unwrap(), "unchanged files give the same fingerprint");
        std::fs::create_dir(dir.path().join("assets")).unwrap();
        std::fs::write(dir.path().join("assets/vocab.txt"), b"x").unwrap();
        let c = fingerprint(dir.path()).unwrap();
        assert_ne!(b, c, "nested files count");
        std::fs::write(dir.path().join(MODEL_FILE), b"abcd").unwrap();
        assert_ne!(c, fingerprint(dir.path()).unwrap());
    }

    #[test]
    fn lists_versions_and_ignores_others() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        for d in ["1", "10", "2", "0", "abc", ".tmp", "002"] {
            std::fs::create_dir_all(model.join(d)).unwrap();
        }
        std::fs::write(model.join("3"), b"a file, not a dir").unwrap();
        std::fs::write(dir.path().join("README"), b"not a model").unwrap();
        let models = list_models(dir.path()).unwrap();
        assert_eq!(models.len(), 1);
        assert_eq!(models[0].name, "m");
        let versions: Vec<i64> = list_versions(&models[0]).unwrap().iter().map(|v| v.version).collect();
        assert_eq!(versions, vec![1, 2, 10]);
    }

    #[test]
    fn bare_model_onnx_is_version_one() {
        let dir = tempfile::tempdir().unwrap();
        let model = ModelDir { name: "m".into(), path: dir.path().to_path_buf() };
        std::fs::write(dir.path().join(MODEL_FILE), b"x").unwrap();
        let versions = list_versions(&model).unwrap();
        assert_eq!(versions, vec![VersionDir { version: 1, path: dir.path().to_path_buf() }]);
        assert_eq!(versions[0].model_file(), dir.path().join(MODEL_FILE));
        // Version directories win over a bare file.
        std::fs::create_dir(dir.path().join("4")).unwrap();
        let versions: Vec<i64> = list_versions(&model).unwrap().iter().map(|v| v.version).collect();
        assert_eq!(versions, vec![4]);
    }
}
