//! `optimization.json`, written next to the published `model.onnx`: where the version came from (the
//! source version and the SHA-256 of each of its files), how it was made (the recipe), on what (ONNX
//! Runtime, CPU features), and what the guard measured (per output), with sizes and latencies.
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// File name of the provenance record in a version directory.
pub const PROVENANCE_FILE: &str = "optimization.json";

/// SHA-256 of a file, as lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The SHA-256 of every file under `dir` (recursively), keyed by the path relative to `dir`.
pub fn hash_dir(dir: &Path) -> Result<serde_json::Map<String, Value>, String> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| format!("cannot read {}: {e}", d.display()))? {
            let p = entry.map_err(|e| format!("cannot read {}: {e}", d.display()))?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut out = serde_json::Map::new();
    for f in files {
        let rel = f.strip_prefix(dir).unwrap_or(&f).to_string_lossy().into_owned();
        out.insert(rel, Value::String(sha256_file(&f)?));
    }
    Ok(out)
}

/// The CPU features int8 speed depends on: `avx2`, `avx512_vnni`, `avx_vnni`, `amx` (from
/// /proc/cpuinfo on Linux; null where unknown).
pub fn cpu_features() -> Value {
    let flags: Option<Vec<String>> = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|text| {
        text.lines()
            .find(|l| l.starts_with("flags") || l.starts_with("Features"))
            .and_then(|l| l.split(':').nth(1))
            .map(|f| f.split_whitespace().map(str::to_string).collect())
    });
    let model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|text| {
        text.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
    });
    let has = |name: &str| flags.as_ref().map(|f| f.iter().any(|x| x == name));
    json!({
        "model": model,
        "avx2": has("avx2"),
        "avx512_vnni": has("avx512_vnni"),
        "avx_vnni": has("avx_vnni"),
        "amx": has("amx_int8").map(|i| i && has("amx_tile").unwrap_or(false)),
        "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
    })
}

/// Now as RFC 3339 UTC, e.g. `2025-03-01T12:34:56Z`.
pub fn now_utc() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    rfc3339(secs)
}

fn rfc3339(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// The ONNX Runtime that made and checked the version.
pub fn onnxruntime() -> Value {
    json!({"version": crate::runtime::env::ORT_VERSION, "build": ort::info()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_hashes() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_740_832_496), "2025-03-01T12:34:56Z");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/abc"), b"abc").unwrap();
        let h = hash_dir(dir.path()).unwrap();
        assert_eq!(h["sub/abc"], "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(cpu_features().get("avx2").is_some());
    }
}
