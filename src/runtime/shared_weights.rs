//! The sessions of one model version share their weights, so that a version's memory does not grow
//! with its pool of sessions (one per core by default).
//!
//! Left alone, every ONNX Runtime session holds its own copy of the model's initializers, of the
//! initializers its graph optimizations create (e.g. the NCHWc-reordered convolution filters) and of
//! the weights MLAS pre-packs for MatMul and Gemm. For a pool of two or more sessions on the CPU
//! provider, [`prepare`] instead:
//!
//! 1. has ONNX Runtime optimize the model once, at the version's graph optimization level, and write the
//!    optimized graph to a private temporary directory, its initializers of at least
//!    [`EXTERNAL_MIN_BYTES`] in a data file next to it;
//! 2. reads those initializers once into ONNX Runtime tensors that every session uses in place
//!    (`AddInitializer`: no copy per session);
//! 3. gives the sessions the optimized graph with graph optimization off (it is done) and one
//!    pre-packed weights container, so that MLAS packs each shared weight once for all sessions.
//!
//! The directory is removed once the sessions are built. Optimizing the original file with shared
//! initializers instead would not do: the optimizers make new initializers in every session.
//! Anything that fails on the way is logged and the version loads the plain way (a copy per session).
//! GPU providers are left alone (their weights live on the device).
use super::providers::{Provider, Registered};
use crate::proto::maas::onnx::{tensor_proto::DataLocation, ModelProto, TensorProto};
use ort::logging::LogLevel;
use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights, SessionBuilder};
use ort::value::{DynValue, PrimitiveTensorElementType, Tensor, TensorElementType};
use prost::Message;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Initializers at least this large are written to the data file and shared; smaller ones stay in
/// each session's graph (biases, shapes, scalars).
pub const EXTERNAL_MIN_BYTES: usize = 1024;

const OPTIMIZED_FILE: &str = "model.onnx";
const DATA_FILE: &str = "model.onnx.data";

/// What a version's load cost in memory, for the status route and `maas_model_memory_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// Growth of the process's resident set (`VmRSS`) across the load, measured. Other versions
    /// loading at the same time are counted in too; memory freed by earlier unloads and reused
    /// is not.
    pub rss_delta_bytes: u64,
    /// Bytes of initializers held once for all the version's sessions (0 = not shared).
    pub shared_weight_bytes: u64,
    /// Whether the sessions share their weights.
    pub shared: bool,
}

/// Measures a load: the resident set before, and after the sessions are built.
#[derive(Debug)]
pub struct Meter {
    rss_before: Option<u64>,
}

impl Meter {
    pub fn start() -> Meter {
        Meter { rss_before: rss_bytes() }
    }

    /// The memory use once the sessions are built (and the shared files removed).
    pub fn finish(self, shared: Option<SharedWeights>) -> MemoryUse {
        let (shared_weight_bytes, is_shared) = shared.map_or((0, false), |s| (s.bytes, true));
        release_free_memory();
        let rss_delta_bytes = match (self.rss_before, rss_bytes()) {
            (Some(before), Some(after)) => after.saturating_sub(before),
            _ => 0,
        };
        MemoryUse { rss_delta_bytes, shared_weight_bytes, shared: is_shared }
    }
}

/// Gives memory freed during the load back to the system. Building a session allocates and frees large
/// buffers (the parsed model, and with a pre-packed weights container a packed copy of each weight that
/// the container already holds); glibc keeps such memory in its heaps unless asked to trim them.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator's heaps to the system; it takes no
    // pointers and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The process's resident set in bytes (`VmRSS` in `/proc/self/status`), None where there is none.
pub fn rss_bytes() -> Option<u64> {
    parse_vm_rss(&std::fs::read_to_string("/proc/self/status").ok()?)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line["VmRSS:".len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// Weights held once for the sessions of a version: the optimized model they load (in a private
/// temporary directory, removed on drop) and the size of the shared initializers.
#[derive(Debug)]
pub struct SharedWeights {
    dir: PathBuf,
    /// Bytes of the initializers the sessions share.
    pub bytes: u64,
    /// How many initializers they share.
    pub tensors: usize,
}

impl SharedWeights {
    /// The model file the sessions are committed from.
    pub fn model(&self) -> PathBuf {
        self.dir.join(OPTIMIZED_FILE)
    }
}

impl Drop for SharedWeights {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), "could not remove the optimized model's directory: {e}");
        }
    }
}

/// Sets `builder` up so that the `sessions` sessions it commits share their weights (see the module
/// documentation), when that applies: two sessions or more, CPU only, `enabled`. Returns the builder
/// to commit with and, when sharing, what the sessions must be committed from.
/// On any failure the original builder comes back with None, after a warning naming `what`.
pub fn prepare(
    builder: SessionBuilder,
    path: &Path,
    sessions: usize,
    providers: &Registered,
    enabled: bool,
    what: &str,
) -> (SessionBuilder, Option<SharedWeights>) {
    let gpu = [Provider::Cuda, Provider::TensorRt].iter().any(|p| providers.has(*p));
    if !enabled || sessions < 2 || gpu {
        return (builder, None);
    }
    match share(&builder, path) {
        Ok(None) => {
            tracing::debug!("{what}: no initializer of {EXTERNAL_MIN_BYTES} bytes or more to share");
            (builder, None)
        }
        Ok(Some((shared_builder, shared))) => {
            tracing::info!(
                "{what}: its {sessions} sessions share {} initializers ({} bytes) and their pre-packed weights",
                shared.tensors,
                shared.bytes
            );
            (shared_builder, Some(shared))
        }
        Err(e) => {
            tracing::warn!("{what}: its sessions do not share their weights (each holds a copy): {e}");
            (builder, None)
        }
    }
}

/// The builder whose sessions share the weights, or None when the model has none worth sharing.
fn share(builder: &SessionBuilder, path: &Path) -> Result<Option<(SessionBuilder, SharedWeights)>, String> {
    let mut shared = optimize(builder, path)?;
    let model = shared.model();
    let bytes =
        std::fs::read(&model).map_err(|e| format!("cannot read the optimized model {}: {e}", model.display()))?;
    let proto = ModelProto::decode(bytes.as_slice())
        .map_err(|e| format!("cannot decode the optimized model {}: {e}", model.display()))?;
    drop(bytes);
    let graph = proto.graph.as_ref().ok_or_else(|| format!("the optimized model {} has no graph", model.display()))?;
    let mut b = builder
        .clone()
        .with_optimization_level(GraphOptimizationLevel::Disable)
        .map_err(|e| format!("could not turn graph optimization off: {e}"))?
        .with_prepacked_weights(&PrepackedWeights::new())
        .map_err(|e| format!("could not set the pre-packed weights container: {e}"))?;
    let mut files: HashMap<String, File> = HashMap::new();
    let (mut total, mut count) = (0u64, 0usize);
    for t in &graph.initializer {
        let Some((tensor, size)) = read_external(t, &shared.dir, &mut files)? else { continue };
        b = b
            .with_initializer(t.name(), tensor)
            .map_err(|e| format!("could not share initializer '{}': {e}", t.name()))?;
        total += size as u64;
        count += 1;
    }
    if count == 0 {
        return Ok(None);
    }
    (shared.bytes, shared.tensors) = (total, count);
    Ok(Some((b, shared)))
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// Optimizes `path` with `builder`'s options into a new private temporary directory.
fn optimize(builder: &SessionBuilder, path: &Path) -> Result<SharedWeights, String> {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("maas-weights-{}-{n}", std::process::id()));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create the directory {} for the optimized model: {e}", dir.display()))?;
    }
    // Removes the directory on every way out from here.
    let shared = SharedWeights { dir, bytes: 0, tensors: 0 };
    let min = EXTERNAL_MIN_BYTES.to_string();
    // ONNX Runtime warns that a model saved after the NCHWc layout transformation is specific to this
    // machine; it is, and it is used only here and now.
    let ask = |e: ort::Error<SessionBuilder>| format!("could not ask ONNX Runtime to save the optimized model: {e}");
    let session = builder
        .clone()
        .with_log_level(LogLevel::Error)
        .map_err(ask)?
        .with_optimized_model_path(shared.model())
        .map_err(ask)?
        .with_config_entry("session.optimized_model_external_initializers_file_name", DATA_FILE)
        .map_err(ask)?
        .with_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", &min)
        .map_err(ask)?
        .commit_from_file(path)
        .map_err(|e| format!("ONNX Runtime could not optimize and save the model: {e}"))?;
    drop(session);
    if !shared.model().is_file() {
        return Err(format!("ONNX Runtime wrote no optimized model to {}", shared.model().display()));
    }
    Ok(shared)
}

/// Reads an initializer stored in `dir`'s data file into a new ONNX Runtime tensor: (tensor, bytes).
/// None for an initializer that stays in the graph (inline data, or a type that is not plain data).
fn read_external(
    t: &TensorProto,
    dir: &Path,
    files: &mut HashMap<String, File>,
) -> Result<Option<(DynValue, usize)>, String> {
    if t.data_location() != DataLocation::External {
        return Ok(None);
    }
    let Some(ty) = element_type(t.data_type()) else { return Ok(None) };
    let entry = |key: &str| t.external_data.iter().find(|e| e.key() == key).map(|e| e.value().to_string());
    let name = t.name();
    let location = entry("location").ok_or_else(|| format!("initializer '{name}' has no external data location"))?;
    if location != DATA_FILE {
        return Err(format!("initializer '{name}' is in '{location}', not in the optimized model's {DATA_FILE}"));
    }
    let number = |key: &str| -> Result<u64, String> {
        entry(key).map_or(Ok(0), |v| v.parse().map_err(|_| format!("initializer '{name}': bad {key} '{v}'")))
    };
    let offset = number("offset")?;
    let elements = t.dims.iter().try_fold(1usize, |n, &d| usize::try_from(d).ok().and_then(|d| n.checked_mul(d)));
    let Some(size) = elements.and_then(|n| ty.byte_size(n)) else {
        return Err(format!("initializer '{name}' has dimensions {:?} that do not fit in memory", t.dims));
    };
    let length = number("length")?;
    if length != 0 && length != size as u64 {
        return Err(format!("initializer '{name}' holds {length} bytes; its type and dimensions need {size}"));
    }
    let file = match files.get(&location) {
        Some(f) => f,
        None => {
            let p = dir.join(&location);
            let f = File::open(&p).map_err(|e| format!("cannot open {}: {e}", p.display()))?;
            files.entry(location.clone()).or_insert(f)
        }
    };
    let read = |buf: &mut [u8]| {
        file.read_exact_at(buf, offset).map_err(|e| {
            format!("cannot read initializer '{name}' ({size} bytes at offset {offset}) from {location}: {e}")
        })
    };
    let dims = t.dims.clone();
    let tensor = match ty {
        TensorElementType::Float32 => owned::<f32>(dims, size, read),
        TensorElementType::Float64 => owned::<f64>(dims, size, read),
        TensorElementType::Float16 => owned::<half::f16>(dims, size, read),
        TensorElementType::Bfloat16 => owned::<half::bf16>(dims, size, read),
        TensorElementType::Int8 => owned::<i8>(dims, size, read),
        TensorElementType::Int16 => owned::<i16>(dims, size, read),
        TensorElementType::Int32 => owned::<i32>(dims, size, read),
        TensorElementType::Int64 => owned::<i64>(dims, size, read),
        TensorElementType::Uint8 => owned::<u8>(dims, size, read),
        TensorElementType::Uint16 => owned::<u16>(dims, size, read),
        TensorElementType::Uint32 => owned::<u32>(dims, size, read),
        TensorElementType::Uint64 => owned::<u64>(dims, size, read),
        _ => return Ok(None),
    }
    .map_err(|e| format!("initializer '{name}': {e}"))?;
    Ok(Some((tensor, size)))
}

/// A tensor over memory maas owns (ONNX Runtime shares only initializers whose buffer the caller
/// owns), filled by `read`.
fn owned<T>(dims: Vec<i64>, size: usize, read: impl FnOnce(&mut [u8]) -> Result<(), String>) -> Result<DynValue, String>
where
    T: PrimitiveTensorElementType + bytemuck::Pod + std::fmt::Debug,
{
    let mut data = vec![T::zeroed(); size / std::mem::size_of::<T>()];
    read(bytemuck::cast_slice_mut(&mut data))?;
    Tensor::from_array((dims, data)).map(Tensor::into_dyn).map_err(|e| format!("could not make a tensor of it: {e}"))
}

/// ONNX `TensorProto.DataType` -> ONNX Runtime element type, for the plain-data types shared.
fn element_type(data_type: i32) -> Option<TensorElementType> {
    use crate::proto::maas::onnx::tensor_proto::DataType as D;
    Some(match D::try_from(data_type).ok()? {
        D::Float => TensorElementType::Float32,
        D::Uint8 => TensorElementType::Uint8,
        D::Int8 => TensorElementType::Int8,
        D::Uint16 => TensorElementType::Uint16,
        D::Int16 => TensorElementType::Int16,
        D::Int32 => TensorElementType::Int32,
        D::Int64 => TensorElementType::Int64,
        D::Float16 => TensorElementType::Float16,
        D::Double => TensorElementType::Float64,
        D::Uint32 => TensorElementType::Uint32,
        D::Uint64 => TensorElementType::Uint64,
        D::Bfloat16 => TensorElementType::Bfloat16,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        assert_eq!(parse_vm_rss("Name:\tmaas\nVmPeak:\t  10 kB\nVmRSS:\t  2048 kB\n"), Some(2 << 20));
        assert_eq!(parse_vm_rss("Name:\tmaas\n"), None);
        assert!(rss_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn maps_plain_types_only() {
        assert_eq!(element_type(1), Some(TensorElementType::Float32));
        assert_eq!(element_type(7), Some(TensorElementType::Int64));
        assert_eq!(element_type(8), None, "strings stay in the graph");
        assert_eq!(element_type(9), None, "so do booleans (not plain old data for bytemuck)");
        assert_eq!(element_type(0), None);
    }
}
