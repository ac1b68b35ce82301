//! ONNX Runtime: the process environment, execution providers, tensor conversion and the servable
//! (a loaded model version with its pool of sessions).
mod batching;
mod convert;
pub mod env;
pub mod gpu;
pub mod inline;
mod merge;
mod padding;
mod providers;
mod servable;
pub mod settings;
pub mod shared_weights;
pub mod trt_cache;
pub mod trt_options;

pub(crate) use convert::{from_output, string_tensor, to_input};
pub use providers::{Provider, Registered};
pub(crate) use servable::{session_builder, signature_of};
pub use servable::{LoadError, Servable, Stats, StatsSnapshot};
pub use settings::{BatchingConfig, GraphOptimization};

/// How model versions are loaded and run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Execution providers in priority order.
    pub providers: Vec<Provider>,
    /// GPU device for cuda/tensorrt.
    pub device_id: i32,
    /// Fall back to CPU when a GPU provider cannot be registered.
    pub allow_cpu_fallback: bool,
    /// Sessions per model version; 0 = the number of CPU cores divided by `intra_op_threads`
    /// (at least 1), so that busy threads match the cores.
    pub pool_size: usize,
    pub intra_op_threads: usize,
    pub inter_op_threads: usize,
    /// Requests per model version admitted at once (running or waiting for a session); more are
    /// refused with RESOURCE_EXHAUSTED. 0 = no bound.
    pub max_in_flight: usize,
    /// Dynamic batching (None = off).
    pub batching: Option<BatchingConfig>,
    /// Largest total size of one request's decoded inputs (and of a padded request in a batch).
    pub max_tensor_bytes: usize,
    /// TensorRT engine cache root (None = the default under `$XDG_CACHE_HOME`).
    pub trt_engine_cache_dir: Option<std::path::PathBuf>,
    /// ONNX Runtime graph optimization at load (`maas.pbtxt` `graph_optimization_level`; default all).
    pub graph_optimization: GraphOptimization,
    /// TensorRT build options (per model, from `maas.pbtxt`).
    pub tensorrt: trt_options::TrtOptions,
    /// The sessions of a version share their weights (CPU, two sessions or more; see
    /// [`shared_weights`]).
    pub share_weights: bool,
    /// Short runs on the I/O thread (`--inline-execution`, `maas.pbtxt` `inline_execution`).
    pub inline: inline::InlineSettings,
}

impl RuntimeConfig {
    /// The number of sessions a version gets (`pool_size`, or the automatic value for 0).
    pub fn sessions(&self) -> usize {
        if self.pool_size > 0 {
            return self.pool_size;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / self.intra_op_threads.max(1)).max(1)
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            providers: vec![Provider::Cpu],
            device_id: 0,
            allow_cpu_fallback: false,
            pool_size: 0,
            intra_op_threads: 1,
            inter_op_threads: 1,
            max_in_flight: 0,
            batching: None,
            max_tensor_bytes: 1 << 30,
            trt_engine_cache_dir: None,
            graph_optimization: GraphOptimization::All,
            tensorrt: trt_options::TrtOptions::default(),
            share_weights: true,
            inline: inline::InlineSettings::default(),
        }
    }
}
