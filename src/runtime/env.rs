//! Finding and loading the ONNX Runtime shared library, and the one ort `Environment` per process.
use ort::environment::Environment;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The ONNX Runtime release maas is built and tested against (the PyPI wheel `onnxruntime==1.31.1`).
pub const ORT_VERSION: &str = "1.31.1";
/// File name of the library inside the wheel and in `.ort/`.
pub const ORT_LIB_NAME: &str = "libonnxruntime.so.1.31.1";

static ENV: OnceLock<Environment> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// Where the library is looked for when neither `--ort-lib` nor `ORT_DYLIB_PATH` is given: the `.ort/`
/// folder that `scripts/setup.sh` fills, in the source tree this binary was built from, next to the
/// executable's tree (`target/<profile>/maas` -> `.ort/`), and in the working directory.
pub fn default_library_paths() -> Vec<PathBuf> {
    let mut paths = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join(".ort").join(ORT_LIB_NAME)];
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1).take(4) {
            let p = up.join(".ort").join(ORT_LIB_NAME);
            if !paths.contains(&p) {
                paths.push(p);
            }
        }
    }
    let cwd = PathBuf::from(".ort").join(ORT_LIB_NAME);
    paths.push(cwd);
    paths
}

/// Loads ONNX Runtime and builds the process-wide environment (once; later calls return it).
///
/// The library is `explicit` (`--ort-lib`) if given, else `$ORT_DYLIB_PATH` if set, else the first of
/// [`default_library_paths`] that exists. A given path that fails is an error: maas never silently
/// loads a different library than the one asked for.
pub fn init(explicit: Option<&Path>) -> Result<&'static Environment, String> {
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    let from_env = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty());
    let (path, source) = match (explicit, from_env) {
        (Some(p), _) => (p.to_path_buf(), "--ort-lib"),
        (None, Some(p)) => (PathBuf::from(p), "ORT_DYLIB_PATH"),
        (None, None) => {
            let candidates = default_library_paths();
            match candidates.iter().find(|p| p.is_file()) {
                Some(p) => (p.clone(), "the default location"),
                None => {
                    let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
                    return Err(format!(
                        "ONNX Runtime {ORT_VERSION} was not found (looked for {}). {}",
                        tried.join(", "),
                        HOW_TO_FIX
                    ));
                }
            }
        }
    };
    let builder = ort::init_from(&path).map_err(|e| {
        format!("could not load ONNX Runtime from {} (given by {source}): {e}. {HOW_TO_FIX}", path.display())
    })?;
    let env = builder
        .with_name("maas")
        .with_telemetry(false)
        .build()
        .map_err(|e| format!("could not create the ONNX Runtime environment: {e}"))?;
    tracing::info!(library = %path.display(), source, "loaded ONNX Runtime {}", ort::info());
    Ok(ENV.get_or_init(|| env))
}

const HOW_TO_FIX: &str = "Run `./scripts/setup.sh` to fetch onnxruntime==1.31.1 from PyPI into .ort/, \
     or pass --ort-lib /path/to/libonnxruntime.so.1.31.1 (or set ORT_DYLIB_PATH)";
