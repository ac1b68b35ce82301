//! Execution providers: parse them from the command line and register them on a session builder,
//! failing loudly (not silently falling back to CPU, as ort does by default) unless fallback is allowed.
use super::RuntimeConfig;
use ort::ep;
use ort::session::builder::SessionBuilder;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Provider {
    /// ONNX Runtime's CPU provider (always available).
    Cpu,
    /// NVIDIA CUDA (needs the onnxruntime-gpu library and CUDA/cuDNN).
    Cuda,
    /// NVIDIA TensorRT (needs the onnxruntime-gpu library and TensorRT).
    #[value(name = "tensorrt", alias = "trt")]
    TensorRt,
}

impl Provider {
    /// ONNX Runtime's name for the provider.
    pub fn ort_name(self) -> &'static str {
        match self {
            Provider::Cpu => "CPUExecutionProvider",
            Provider::Cuda => "CUDAExecutionProvider",
            Provider::TensorRt => "TensorrtExecutionProvider",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::TensorRt => "tensorrt",
        })
    }
}

/// The execution providers a version's sessions actually got, in priority order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// e.g. `["CUDAExecutionProvider (device 0)", "CPUExecutionProvider"]`.
    pub names: Vec<String>,
    /// Why a configured provider is missing (only with `--allow-cpu-fallback`), e.g. `cuda: ...`.
    pub fallback: Vec<String>,
}

impl fmt::Display for Registered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names.join(", "))?;
        if !self.fallback.is_empty() {
            write!(f, " (fallback: {})", self.fallback.join("; "))?;
        }
        Ok(())
    }
}

/// Registers the configured providers in priority order. Returns the builder and the providers
/// actually registered.
pub(crate) fn register(
    mut builder: SessionBuilder,
    cfg: &RuntimeConfig,
) -> Result<(SessionBuilder, Registered), String> {
    let mut registered: Vec<String> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for &p in &cfg.providers {
        let dispatch = match p {
            // The CPU provider is always present as ONNX Runtime's last resort.
            Provider::Cpu => continue,
            Provider::Cuda => ep::CUDA::default().with_device_id(cfg.device_id).build(),
            Provider::TensorRt => ep::TensorRT::default().with_device_id(cfg.device_id).with_engine_cache(true).build(),
        }
        .error_on_failure();
        match builder.with_execution_providers([dispatch]) {
            Ok(b) => {
                builder = b;
                registered.push(format!("{} (device {})", p.ort_name(), cfg.device_id));
            }
            Err(e) => {
                let msg = e.to_string();
                builder = e.recover();
                failures.push(format!("{p}: {msg}"));
            }
        }
    }
    if !failures.is_empty() {
        if !cfg.allow_cpu_fallback {
            return Err(format!(
                "execution provider could not be registered ({}); pass --allow-cpu-fallback to run on CPU instead",
                failures.join("; ")
            ));
        }
        tracing::warn!(failures = %failures.join("; "), "GPU execution provider unavailable, falling back to CPU");
    }
    registered.push(Provider::Cpu.ort_name().to_string());
    Ok((builder, Registered { names: registered, fallback: failures }))
}
