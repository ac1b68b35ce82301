//! Atomic publication: everything is written into a hidden directory inside the model directory (the
//! server skips hidden entries), synced to disk, and renamed to the version number in one step, which
//! never replaces an existing version. A server polling the repository sees either no version or the
//! whole one.
use std::path::{Path, PathBuf};

/// A hidden working directory, removed when dropped unless it was published.
#[derive(Debug)]
pub struct Staging {
    pub dir: PathBuf,
    published: bool,
}

impl Staging {
    /// Creates `<model_dir>/.maas-optimize-<version>-<pid>`.
    pub fn create(model_dir: &Path, version: i64) -> Result<Staging, String> {
        let dir = model_dir.join(format!(".maas-optimize-{version}-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| format!("cannot remove the stale {}: {e}", dir.display()))?;
        }
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create the working directory {}: {e}", dir.display()))?;
        Ok(Staging { dir, published: false })
    }

    /// Renames the directory to `target`, which must not exist, and syncs the model directory.
    pub fn publish(mut self, target: &Path) -> Result<(), String> {
        sync_tree(&self.dir)?;
        rename_noreplace(&self.dir, target)?;
        self.published = true;
        if let Some(parent) = target.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("could not remove the working directory {}: {e}", self.dir.display());
                }
            }
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| format!("cannot sync {}: {e}", dir.display()))
}

/// Syncs every file and directory under `dir` (files written by ONNX Runtime were not synced yet).
fn sync_tree(dir: &Path) -> Result<(), String> {
    for entry in std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))? {
        let p = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?.path();
        if p.is_dir() {
            sync_tree(&p)?;
        } else {
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("cannot sync {}: {e}", p.display()))?;
        }
    }
    sync_dir(dir)
}

/// Copies a file and syncs the copy.
pub fn copy_synced(from: &Path, to: &Path) -> Result<(), String> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::copy(from, to).map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))?;
    Ok(())
}

/// Copies a directory tree.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    for entry in std::fs::read_dir(from).map_err(|e| format!("cannot read {}: {e}", from.display()))? {
        let p = entry.map_err(|e| format!("cannot read {}: {e}", from.display()))?.path();
        let dest = to.join(p.file_name().unwrap_or_default());
        if p.is_dir() {
            copy_tree(&p, &dest)?;
        } else {
            copy_synced(&p, &dest)?;
        }
    }
    Ok(())
}

/// `rename(from, to)` that fails if `to` exists (renameat2 RENAME_NOREPLACE on Linux; elsewhere, and on
/// file systems without it, a check just before the rename).
fn rename_noreplace(from: &Path, to: &Path) -> Result<(), String> {
    let exists = || format!("{} already exists; it was left untouched", to.display());
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let cstr =
            |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{} holds a NUL byte", p.display()));
        let (f, t) = (cstr(from)?, cstr(to)?);
        // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
        let rc =
            unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EEXIST) | Some(libc::ENOTEMPTY) => return Err(exists()),
            Some(libc::EINVAL) | Some(libc::ENOSYS) => {} // not supported here: fall back
            _ => return Err(format!("cannot rename {} to {}: {e}", from.display(), to.display())),
        }
    }
    if to.exists() {
        return Err(exists());
    }
    std::fs::rename(from, to).map_err(|e| format!("cannot rename {} to {}: {e}", from.display(), to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_once_and_never_over_a_version() {
        let dir = tempfile::tempdir().unwrap();
        let s = Staging::create(dir.path(), 2).unwrap();
        std::fs::write(s.dir.join("model.onnx"), b"x").unwrap();
        let staged = s.dir.clone();
        assert!(staged.file_name().unwrap().to_string_lossy().starts_with(".maas-optimize-2-"));
        s.publish(&dir.path().join("2")).unwrap();
        assert!(!staged.exists());
        assert_eq!(std::fs::read(dir.path().join("2/model.onnx")).unwrap(), b"x");

        // An existing version (even an empty directory) is never replaced; the staging dir goes away.
        std::fs::create_dir(dir.path().join("3")).unwrap();
        let s = Staging::create(dir.path(), 3).unwrap();
        std::fs::write(s.dir.join("model.onnx"), b"y").unwrap();
        let staged = s.dir.clone();
        let e = s.publish(&dir.path().join("3")).unwrap_err();
        assert_eq!(e, format!("{} already exists; it was left untouched", dir.path().join("3").display()));
        assert!(!staged.exists());
        assert_eq!(std::fs::read_dir(dir.path().join("3")).unwrap().count(), 0);
    }
}
