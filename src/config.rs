//! Command line (clap) and the validated configuration the server runs with.
use crate::runtime::{Provider, RuntimeConfig};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// ONNX models over gRPC, wire-compatible with TensorFlow Serving.
#[derive(Debug, Parser)]
#[command(name = "maas", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve every model of a model repository over gRPC.
    Serve(ServeArgs),
}

/// Flags of `maas serve`. Where TensorFlow Serving has the same flag, its underscore spelling is
/// accepted too (e.g. `--enable_serialization_as_tensor_content`).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Model repository: <DIR>/<model>/<version>/model.onnx, version a positive integer.
    #[arg(
        long,
        alias = "model_repository",
        env = "MAAS_MODEL_REPOSITORY",
        value_name = "DIR"
    )]
    pub model_repository: PathBuf,

    /// gRPC port (TensorFlow Serving's default). 0 picks a free port.
    #[arg(long, default_value_t = 8500)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0", value_name = "ADDR")]
    pub host: String,

    /// Path of libonnxruntime.so. If not given: $ORT_DYLIB_PATH, then the library that
    /// scripts/setup.sh puts in .ort/.
    #[arg(long, alias = "ort_lib", value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,

    /// Execution providers in priority order, comma separated: cpu, cuda, tensorrt.
    /// A GPU provider that cannot be registered fails the model's load unless --allow-cpu-fallback.
    #[arg(
        long,
        alias = "execution_providers",
        value_delimiter = ',',
        default_value = "cpu",
        value_name = "LIST"
    )]
    pub execution_providers: Vec<Provider>,

    /// GPU device id for the cuda and tensorrt providers.
    #[arg(long, alias = "device_id", default_value_t = 0)]
    pub device_id: i32,

    /// Load models on CPU when a requested GPU provider cannot be registered (logged, and shown
    /// in the model's status message) instead of failing the load.
    #[arg(long, alias = "allow_cpu_fallback")]
    pub allow_cpu_fallback: bool,

    /// ONNX Runtime sessions per model version (concurrent inferences per version).
    /// 0 = number of CPU cores divided by --intra-op-threads (at least 1).
    #[arg(long, alias = "session_pool_size", default_value_t = 0)]
    pub session_pool_size: usize,

    /// Threads each session uses inside one operator (ONNX Runtime intra-op threads).
    #[arg(long, alias = "tensorflow_intra_op_parallelism", default_value_t = 1)]
    pub intra_op_threads: usize,

    /// Threads each session uses to run independent operators in parallel (inter-op threads).
    #[arg(long, alias = "tensorflow_inter_op_parallelism", default_value_t = 1)]
    pub inter_op_threads: usize,

    /// Largest gRPC message accepted or sent, in bytes (gRPC's own default is 4 MiB).
    #[arg(long, alias = "max_message_size_bytes", default_value_t = 1 << 30, value_name = "BYTES")]
    pub max_message_size_bytes: usize,

    /// Reply to Predict with raw `tensor_content` instead of typed `*_val` fields.
    #[arg(long, alias = "enable_serialization_as_tensor_content")]
    pub enable_serialization_as_tensor_content: bool,

    /// On SIGTERM/Ctrl-C, how long in-flight requests may take to finish before the remaining
    /// connections are closed.
    #[arg(
        long,
        alias = "drain_timeout_seconds",
        default_value_t = 30.0,
        value_name = "SECONDS"
    )]
    pub drain_timeout_seconds: f64,

    /// Models loaded at the same time.
    #[arg(
        long,
        alias = "num_load_threads",
        default_value_t = 1,
        value_name = "N"
    )]
    pub num_load_threads: usize,
}

/// Everything `server::serve` needs, already validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model_repository: PathBuf,
    pub runtime: RuntimeConfig,
    pub max_message_size_bytes: usize,
    pub tensor_content_output: bool,
    pub num_load_threads: usize,
    pub drain_timeout: std::time::Duration,
}

impl ServeConfig {
    /// Defaults for serving `repo` (what `maas serve --model-repository repo` uses).
    pub fn new(repo: impl Into<PathBuf>) -> ServeConfig {
        ServeConfig {
            model_repository: repo.into(),
            runtime: RuntimeConfig::default(),
            max_message_size_bytes: 1 << 30,
            tensor_content_output: false,
            num_load_threads: 1,
            drain_timeout: std::time::Duration::from_secs(30),
        }
    }
}

impl ServeArgs {
    pub fn to_config(&self) -> Result<ServeConfig, String> {
        if self.intra_op_threads == 0 || self.inter_op_threads == 0 {
            return Err("--intra-op-threads and --inter-op-threads must be at least 1".into());
        }
        if self.num_load_threads == 0 {
            return Err("--num-load-threads must be at least 1".into());
        }
        if self.execution_providers.is_empty() {
            return Err("--execution-providers needs at least one of cpu, cuda, tensorrt".into());
        }
        let drain_timeout = std::time::Duration::try_from_secs_f64(self.drain_timeout_seconds)
            .map_err(|_| {
                format!(
                    "--drain-timeout-seconds must be a non-negative number, got {}",
                    self.drain_timeout_seconds
                )
            })?;
        let pool_size = if self.session_pool_size == 0 {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / self.intra_op_threads).max(1)
        } else {
            self.session_pool_size
        };
        Ok(ServeConfig {
            model_repository: self.model_repository.clone(),
            runtime: RuntimeConfig {
                providers: self.execution_providers.clone(),
                device_id: self.device_id,
                allow_cpu_fallback: self.allow_cpu_fallback,
                pool_size,
                intra_op_threads: self.intra_op_threads,
                inter_op_threads: self.inter_op_threads,
            },
            max_message_size_bytes: self.max_message_size_bytes,
            tensor_content_output: self.enable_serialization_as_tensor_content,
            num_load_threads: self.num_load_threads,
            drain_timeout,
        })
    }
}
