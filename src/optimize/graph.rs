//! The graph pass: ONNX Runtime's own optimizer at the chosen level, on the CPU provider, saving the
//! optimized graph (`with_optimized_model_path`). Never `all` offline: layout transformations tie the
//! file to the CPU it was made on, and graphs compiled by TensorRT or OpenVINO cannot be saved.
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use std::path::Path;
use std::time::{Duration, Instant};

/// `--graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphLevel {
    /// No graph pass.
    None,
    /// Constant folding, redundant node elimination, Conv+BN/Add/Mul fusions (every provider).
    Basic,
    /// Basic plus CPU fusions: MatMul+Add, GELU, LayerNorm, attention, SkipLayerNorm, BiasGelu, and the
    /// int8 kernels for quantized MatMuls.
    Extended,
}

impl GraphLevel {
    pub fn name(self) -> &'static str {
        match self {
            GraphLevel::None => "none",
            GraphLevel::Basic => "basic",
            GraphLevel::Extended => "extended",
        }
    }
}

/// Runs the pass from `input` to `output`. With `external` = Some(file name), initializers of at least
/// 1 KiB are written to that file next to `output` (needed above protobuf's 2 GiB). Returns how long
/// ONNX Runtime took.
pub fn run(
    env: &Environment,
    input: &Path,
    output: &Path,
    level: GraphLevel,
    external: Option<&str>,
) -> Result<Duration, String> {
    let level = match level {
        GraphLevel::None => return Err("internal error: the graph pass was asked for level none".into()),
        GraphLevel::Basic => GraphOptimizationLevel::Level1,
        GraphLevel::Extended => GraphOptimizationLevel::Level2,
    };
    let err = |what: &str, e: ort::Error| format!("graph pass: {what}: {e}");
    // A builder of its own: the file is written whenever a session is committed from it.
    let mut builder = Session::builder(env)
        .map_err(|e| err("could not create a session builder", e))?
        .with_optimization_level(level)
        .map_err(|e| err("could not set the optimization level", e.into()))?
        .with_intra_threads(1)
        .map_err(|e| err("could not set intra-op threads", e.into()))?
        .with_optimized_model_path(output)
        .map_err(|e| err("could not set the optimized model path", e.into()))?;
    if let Some(name) = external {
        builder = builder
            .with_config_entry("session.optimized_model_external_initializers_file_name", name)
            .map_err(|e| err("could not set the external initializers file", e.into()))?
            .with_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
            .map_err(|e| err("could not set the external initializers threshold", e.into()))?;
    }
    let start = Instant::now();
    let session = builder
        .commit_from_file(input)
        .map_err(|e| format!("graph pass: ONNX Runtime could not optimize {}: {e}", input.display()))?;
    let took = start.elapsed();
    drop(session);
    if !output.is_file() {
        return Err(format!("graph pass: ONNX Runtime wrote no optimized model to {}", output.display()));
    }
    Ok(took)
}

/// Session creation time of `path` at the server's optimization level (All), single-threaded.
pub fn load_time(env: &Environment, path: &Path) -> Result<Duration, String> {
    let mut builder = crate::runtime::session_builder(env, 1, 1)?;
    let start = Instant::now();
    let s =
        builder.commit_from_file(path).map_err(|e| format!("ONNX Runtime could not load {}: {e}", path.display()))?;
    let took = start.elapsed();
    drop(s);
    Ok(took)
}
