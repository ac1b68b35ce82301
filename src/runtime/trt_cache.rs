//! Where TensorRT engines are cached: one directory per key, never the working directory.
//!
//! ONNX Runtime names a cached engine after the model file name and graph, not the weights, so two
//! versions (both `model.onnx`) with the same graph would share an engine and the newer one would serve
//! the older weights. Here every version gets the directory `<root>/engines/<key>`, where the key is a
//! SHA-256 over everything an engine depends on: every file of the version directory (relative path,
//! length and content, in sorted order), the ONNX Runtime build, the TensorRT provider options
//! (precision, workspace, profile shapes) and the GPU (name, compute capability, TensorRT library).
//! Identical versions (same files anywhere) share their engines. TensorRT's timing cache depends only
//! on the GPU: `<root>/timing/<device key>`.
use super::gpu::GpuIdentity;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What every key starts with; changing how keys are computed changes this.
const KEY_DOMAIN: &[u8] = b"maas TensorRT engine key v1";
/// A file maas writes into each engine directory, saying what the key stands for (ignored when deciding
/// whether the directory is empty).
pub const KEY_FILE: &str = "maas-key.txt";
/// Deepest sub-directory of a version directory that is hashed (a symlink loop ends here).
const MAX_DEPTH: usize = 16;

/// The cache root: `explicit` (`--trt-engine-cache-dir`), else `$XDG_CACHE_HOME/maas/trt` (an absolute
/// `XDG_CACHE_HOME`, as the XDG spec requires), else `$HOME/.cache/maas/trt`.
pub fn cache_root(
    explicit: Option<&Path>,
    xdg_cache_home: Option<&str>,
    home: Option<&str>,
) -> Result<PathBuf, String> {
    if let Some(dir) = explicit {
        return Ok(dir.to_path_buf());
    }
    if let Some(xdg) = xdg_cache_home.filter(|x| Path::new(x).is_absolute()) {
        return Ok(Path::new(xdg).join("maas").join("trt"));
    }
    if let Some(home) = home.filter(|h| !h.is_empty()) {
        return Ok(Path::new(home).join(".cache").join("maas").join("trt"));
    }
    Err("no directory for the TensorRT engine cache: neither XDG_CACHE_HOME (absolute) nor HOME is set; pass \
         --trt-engine-cache-dir"
        .into())
}

/// [`cache_root`] with this process's environment.
pub fn default_cache_root(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let var = |k: &str| std::env::var(k).ok();
    cache_root(explicit, var("XDG_CACHE_HOME").as_deref(), var("HOME").as_deref())
}

/// Feeds `bytes` with its length first, so that consecutive fields cannot run into each other.
fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// Every regular file under `dir` (following symlinks), as (relative path with `/` separators, path).
fn files(dir: &Path) -> Result<Vec<(Vec<u8>, PathBuf)>, String> {
    fn walk(dir: &Path, rel: &[u8], depth: usize, out: &mut Vec<(Vec<u8>, PathBuf)>) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("{} is more than {MAX_DEPTH} directories deep (a symlink loop?)", dir.display()));
        }
        let entries = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            let path = entry.path();
            let mut name = rel.to_vec();
            if !name.is_empty() {
                name.push(b'/');
            }
            name.extend_from_slice(entry.file_name().as_bytes());
            let meta = fs::metadata(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if meta.is_dir() {
                walk(&path, &name, depth + 1, out)?;
            } else if meta.is_file() {
                out.push((name, path));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, b"", 0, &mut out)?;
    out.sort();
    Ok(out)
}

/// The engine cache key (64 hex digits) of the version directory `version_dir`. Files are streamed
/// through the hash, never read whole.
pub fn engine_key(
    version_dir: &Path,
    ort_build: &str,
    provider_options: &[(&str, String)],
    device: &GpuIdentity,
) -> Result<String, String> {
    let mut h = Sha256::new();
    field(&mut h, KEY_DOMAIN);
    let files = files(version_dir)?;
    field(&mut h, &(files.len() as u64).to_le_bytes());
    for (name, path) in &files {
        field(&mut h, name);
        let mut f = fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let len = f.metadata().map_err(|e| format!("cannot read {}: {e}", path.display()))?.len();
        h.update(len.to_le_bytes());
        let copied =
            io::copy(&mut (&mut f).take(len), &mut h).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if copied != len {
            return Err(format!("{} changed while it was hashed ({copied} of {len} bytes)", path.display()));
        }
    }
    field(&mut h, ort_build.as_bytes());
    field(&mut h, &(provider_options.len() as u64).to_le_bytes());
    for (k, v) in provider_options {
        field(&mut h, k.as_bytes());
        field(&mut h, v.as_bytes());
    }
    field(&mut h, device_key(device).as_bytes());
    Ok(hex(&h.finalize()))
}

/// The timing cache key of a GPU (64 hex digits).
pub fn device_key(device: &GpuIdentity) -> String {
    let mut h = Sha256::new();
    field(&mut h, b"maas TensorRT device v1");
    field(&mut h, device.describe().as_bytes());
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The directories one version's TensorRT provider uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheDirs {
    /// `<root>/engines/<key>`: the engine cache path.
    pub engines: PathBuf,
    /// `<root>/timing/<device key>`: the timing cache path.
    pub timing: PathBuf,
    /// No engine is cached yet (TensorRT will build one, which may take minutes).
    pub empty: bool,
}

/// Creates (if needed) the engine and timing directories under `root` and records what the key stands
/// for in [`KEY_FILE`]. Paths are made absolute so that nothing depends on the working directory.
pub fn prepare(root: &Path, key: &str, device: &GpuIdentity, describe: &str) -> Result<CacheDirs, String> {
    let root =
        std::path::absolute(root).map_err(|e| format!("bad TensorRT cache directory {}: {e}", root.display()))?;
    let engines = root.join("engines").join(key);
    let timing = root.join("timing").join(device_key(device));
    for dir in [&engines, &timing] {
        fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the TensorRT cache directory {}: {e}", dir.display()))?;
    }
    let empty = fs::read_dir(&engines)
        .map_err(|e| format!("cannot list {}: {e}", engines.display()))?
        .filter_map(Result::ok)
        .all(|e| e.file_name() == KEY_FILE);
    let key_file = engines.join(KEY_FILE);
    if !key_file.exists() {
        let text = format!("{describe}\ndevice: {}\n", device.describe());
        fs::write(&key_file, text).map_err(|e| format!("cannot write {}: {e}", key_file.display()))?;
    }
    Ok(CacheDirs { engines, timing, empty })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h200() -> GpuIdentity {
        GpuIdentity { name: "NVIDIA H200".into(), compute_capability: (9, 0), tensorrt_version: Some(100300) }
    }

    fn opts() -> Vec<(&'static str, String)> {
        vec![("trt_fp16_enable", "false".into()), ("trt_int8_enable", "false".into())]
    }

    /// A version directory: a model file, an external-data weights file and a nested asset.
    fn version(root: &Path, name: &str, weights: &[u8]) -> PathBuf {
        let dir = root.join(name);
        fs::create_dir_all(dir.join("assets.extra")).unwrap();
        fs::write(dir.join("model.onnx"), b"graph: same").unwrap();
        fs::write(dir.join("weights.bin"), weights).unwrap();
        fs::write(dir.join("assets.extra/vocab.txt"), b"a\nb\n").unwrap();
        dir
    }

    fn key(dir: &Path) -> String {
        engine_key(dir, "ORT 1.31.1", &opts(), &h200()).unwrap()
    }

    #[test]
    fn the_key_follows_the_files_not_where_they_are() {
        let t = tempfile::tempdir().unwrap();
        let v1 = version(t.path(), "1", b"weights one");
        let v2 = version(t.path(), "2", b"weights two");
        let copy = version(&t.path().join("elsewhere"), "7", b"weights one");
        assert_eq!(key(&v1).len(), 64);
        assert_ne!(key(&v1), key(&v2), "same graph, other weights");
        assert_eq!(key(&v1), key(&copy), "same files in another directory");
        assert_eq!(key(&v1), key(&v1));
        // a file renamed, or moved into a sub-directory, or a new file: another key
        fs::rename(copy.join("weights.bin"), copy.join("weights2.bin")).unwrap();
        assert_ne!(key(&v1), key(&copy));
        fs::rename(copy.join("weights2.bin"), copy.join("assets.extra/weights.bin")).unwrap();
        assert_ne!(key(&v1), key(&copy));
        let v3 = version(t.path(), "3", b"weights one");
        fs::write(v3.join("maas.pbtxt"), b"").unwrap();
        assert_ne!(key(&v1), key(&v3));
        // bytes moved from one file's end to the next file's start: another key
        let a = t.path().join("a");
        let b = t.path().join("b");
        for (d, x, y) in [(&a, &b"ab"[..], &b"c"[..]), (&b, b"a", b"bc")] {
            fs::create_dir_all(d).unwrap();
            fs::write(d.join("1"), x).unwrap();
            fs::write(d.join("2"), y).unwrap();
        }
        assert_ne!(key(&a), key(&b));
    }

    #[test]
    fn the_key_does_not_depend_on_the_order_files_were_written() {
        let t = tempfile::tempdir().unwrap();
        let names = ["z.bin", "a.bin", "m/x.bin", "m/a.bin", "b.onnx"];
        let (d1, d2) = (t.path().join("one"), t.path().join("two"));
        for (dir, order) in [(&d1, names.to_vec()), (&d2, names.iter().rev().copied().collect::<Vec<_>>())] {
            for name in order {
                let p = dir.join(name);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(&p, name.as_bytes()).unwrap();
            }
        }
        assert_eq!(key(&d1), key(&d2));
    }

    #[test]
    fn options_runtime_and_device_are_part_of_the_key() {
        let t = tempfile::tempdir().unwrap();
        let v = version(t.path(), "1", b"w");
        let base = key(&v);
        let mut fp16 = opts();
        fp16[0].1 = "true".into();
        assert_ne!(base, engine_key(&v, "ORT 1.31.1", &fp16, &h200()).unwrap());
        let mut profile = opts();
        profile.push(("trt_profile_opt_shapes", "x:1x16".into()));
        assert_ne!(base, engine_key(&v, "ORT 1.31.1", &profile, &h200()).unwrap());
        assert_ne!(base, engine_key(&v, "ORT 1.32.0", &opts(), &h200()).unwrap());
        let a100 = GpuIdentity { name: "NVIDIA A100-SXM4-80GB".into(), compute_capability: (8, 0), ..h200() };
        assert_ne!(base, engine_key(&v, "ORT 1.31.1", &opts(), &a100).unwrap());
        let other_trt = GpuIdentity { tensorrt_version: Some(100400), ..h200() };
        assert_ne!(base, engine_key(&v, "ORT 1.31.1", &opts(), &other_trt).unwrap());
        assert_ne!(device_key(&h200()), device_key(&a100));
        assert_eq!(device_key(&h200()), device_key(&h200()));
    }

    #[test]
    fn a_missing_version_directory_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let e = engine_key(&t.path().join("nope"), "x", &opts(), &h200()).unwrap_err();
        assert!(e.starts_with(&format!("cannot list {}: ", t.path().join("nope").display())), "{e}");
    }

    #[test]
    fn the_cache_root_is_never_the_working_directory() {
        let explicit = Path::new("/srv/trt");
        assert_eq!(cache_root(Some(explicit), Some("/x"), Some("/h")).unwrap(), explicit);
        assert_eq!(cache_root(None, Some("/x"), Some("/h")).unwrap(), Path::new("/x/maas/trt"));
        assert_eq!(cache_root(None, Some("relative"), Some("/h")).unwrap(), Path::new("/h/.cache/maas/trt"));
        assert_eq!(cache_root(None, None, Some("/h")).unwrap(), Path::new("/h/.cache/maas/trt"));
        assert!(cache_root(None, Some(""), Some("")).unwrap_err().ends_with("pass --trt-engine-cache-dir"));
    }

    #[test]
    fn prepare_makes_one_directory_per_key_and_one_per_device() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("cache");
        let d = prepare(&root, "k1", &h200(), "model m version 1").unwrap();
        assert_eq!(d.engines, root.join("engines/k1"));
        assert_eq!(d.timing, root.join("timing").join(device_key(&h200())));
        assert!(d.empty && d.engines.is_dir() && d.timing.is_dir());
        let text = fs::read_to_string(d.engines.join(KEY_FILE)).unwrap();
        assert_eq!(text, format!("model m version 1\ndevice: {}\n", h200().describe()));
        fs::write(d.engines.join("TensorrtExecutionProvider_x.engine"), b"e").unwrap();
        assert!(!prepare(&root, "k1", &h200(), "model m version 1").unwrap().empty);
        let d2 = prepare(&root, "k2", &h200(), "model m version 2").unwrap();
        assert!(d2.empty);
        assert_eq!(d2.timing, d.timing);
    }
}
