//! Execution providers: parse them from the command line and register them on a session builder,
//! failing loudly (not silently falling back to CPU, as ort does by default) unless fallback is allowed.
use super::trt_cache::{self, CacheDirs};
use super::trt_options::{format_shapes, TrtOptions};
use super::{gpu, RuntimeConfig};
use ort::ep;
use ort::session::builder::SessionBuilder;
use std::ffi::CStr;
use std::fmt;
use std::path::Path;

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

impl Registered {
    /// Whether `p` was registered (the CPU provider always is).
    pub fn has(&self, p: Provider) -> bool {
        self.names.iter().any(|n| n.starts_with(p.ort_name()))
    }
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

/// The model version providers are registered for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub model: &'a str,
    pub version: i64,
    /// The version directory (every file in it is part of the TensorRT engine cache key).
    pub dir: &'a Path,
}

/// Registers the configured providers in priority order. Returns the builder and the providers
/// actually registered.
pub(crate) fn register(
    mut builder: SessionBuilder,
    cfg: &RuntimeConfig,
    target: &Target<'_>,
) -> Result<(SessionBuilder, Registered), String> {
    let mut registered: Vec<String> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for &p in &cfg.providers {
        let (dispatch, trt_dirs) = match p {
            // The CPU provider is always present as ONNX Runtime's last resort.
            Provider::Cpu => continue,
            Provider::Cuda => (ep::CUDA::default().with_device_id(cfg.device_id).build(), None),
            Provider::TensorRt => match tensorrt(cfg, target) {
                Ok((trt, dirs)) => (trt.build(), Some(dirs)),
                Err(e) => {
                    failures.push(format!("{p}: {e}"));
                    continue;
                }
            },
        };
        match builder.with_execution_providers([dispatch.error_on_failure()]) {
            Ok(b) => {
                builder = b;
                match trt_dirs {
                    None => registered.push(format!("{} (device {})", p.ort_name(), cfg.device_id)),
                    Some(dirs) => {
                        if dirs.empty {
                            tracing::info!(
                                model = target.model,
                                version = target.version,
                                cache = %dirs.engines.display(),
                                "building TensorRT engine (may take minutes)"
                            );
                        }
                        registered.push(format!(
                            "{} (device {}, engine cache {})",
                            p.ort_name(),
                            cfg.device_id,
                            dirs.engines.display()
                        ));
                    }
                }
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

/// ONNX Runtime's build description (version branch, commit, flags): part of the engine cache key.
fn ort_build() -> String {
    // SAFETY: GetBuildInfoString takes no arguments and returns a static NUL-terminated string owned by
    // the library (never freed), copied out at once.
    unsafe {
        let p = (ort::api().GetBuildInfoString)();
        if p.is_null() {
            String::from("unknown build")
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// The TensorRT provider for `target`, with its engine cache in a directory of its own (see
/// [`trt_cache`]). Fails when the GPU cannot be identified: without knowing the GPU the cache could
/// hand an engine to a device it was not built for.
fn tensorrt(cfg: &RuntimeConfig, target: &Target<'_>) -> Result<(ep::TensorRT, CacheDirs), String> {
    let device = gpu::identify(cfg.device_id)
        .map_err(|e| format!("{e}; the TensorRT engine cache is keyed by the GPU, so TensorRT is not used"))?;
    let root = trt_cache::default_cache_root(cfg.trt_engine_cache_dir.as_deref())?;
    tensorrt_on(cfg, target, &device, &root)
}

fn tensorrt_on(
    cfg: &RuntimeConfig,
    target: &Target<'_>,
    device: &gpu::GpuIdentity,
    root: &Path,
) -> Result<(ep::TensorRT, CacheDirs), String> {
    let options = cfg.tensorrt.provider_options();
    let build = ort_build();
    let key = trt_cache::engine_key(target.dir, &build, &options, device)
        .map_err(|e| format!("cannot compute the TensorRT engine cache key: {e}"))?;
    let describe = format!(
        "model '{}' version {} ({})\nONNX Runtime: {build}\noptions: {}",
        target.model,
        target.version,
        target.dir.display(),
        options.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    );
    let dirs = trt_cache::prepare(root, &key, device, &describe)?;
    let trt = tensorrt_ep(cfg.device_id, &cfg.tensorrt, &dirs)?;
    Ok((trt, dirs))
}

/// The provider with its options: the per-key engine cache, the per-device timing cache, and the
/// model's `tensorrt` settings.
fn tensorrt_ep(device_id: i32, opts: &TrtOptions, dirs: &CacheDirs) -> Result<ep::TensorRT, String> {
    let utf8 = |p: &Path| {
        p.to_str()
            .map(str::to_string)
            .ok_or_else(|| format!("the TensorRT cache directory {} is not valid UTF-8", p.display()))
    };
    let mut trt = ep::TensorRT::default()
        .with_device_id(device_id)
        .with_engine_cache(true)
        .with_engine_cache_path(utf8(&dirs.engines)?)
        .with_timing_cache(true)
        .with_timing_cache_path(utf8(&dirs.timing)?)
        .with_fp16(opts.fp16)
        .with_int8(opts.int8);
    if let Some(n) = opts.max_workspace_size {
        trt = trt.with_max_workspace_size(n);
    }
    if let Some(p) = &opts.profile {
        trt = trt
            .with_profile_min_shapes(format_shapes(&p.min))
            .with_profile_opt_shapes(format_shapes(&p.opt))
            .with_profile_max_shapes(format_shapes(&p.max));
    }
    Ok(trt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::maas::TensorRtSettings;

    fn h200() -> gpu::GpuIdentity {
        gpu::GpuIdentity { name: "NVIDIA H200".into(), compute_capability: (9, 0), tensorrt_version: Some(100300) }
    }

    fn listing(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v
    }

    #[test]
    fn tensorrt_gets_the_per_key_cache_and_the_model_options() {
        crate::runtime::env::init(None).unwrap();
        let t = tempfile::tempdir().unwrap();
        let version_dir = t.path().join("m/3");
        std::fs::create_dir_all(&version_dir).unwrap();
        std::fs::write(version_dir.join("model.onnx"), b"model").unwrap();
        let settings = TensorRtSettings {
            fp16: true,
            max_workspace_size: Some(2 << 30),
            profile_min_shapes: "ids:1x1".into(),
            profile_opt_shapes: "ids:1x32".into(),
            profile_max_shapes: "ids:8x128".into(),
            ..Default::default()
        };
        let cfg = RuntimeConfig {
            providers: vec![Provider::TensorRt],
            tensorrt: TrtOptions::from_proto(&settings).unwrap(),
            ..RuntimeConfig::default()
        };
        let cwd = std::env::current_dir().unwrap();
        let before = listing(&cwd);
        let target = Target { model: "m", version: 3, dir: &version_dir };
        let root = t.path().join("cache");
        let (trt, dirs) = tensorrt_on(&cfg, &target, &h200(), &root).unwrap();
        assert!(dirs.engines.starts_with(root.join("engines")) && dirs.engines.is_dir(), "{dirs:?}");
        assert!(dirs.timing.starts_with(root.join("timing")) && dirs.timing.is_dir(), "{dirs:?}");
        assert!(dirs.empty);
        // ort's builder only shows its options through Debug: every one must be there.
        let shown = format!("{trt:?}");
        let mut expected: Vec<(&str, String)> = vec![
            ("device_id", "0".into()),
            ("trt_engine_cache_enable", "true".into()),
            ("trt_engine_cache_path", dirs.engines.display().to_string()),
            ("trt_timing_cache_enable", "true".into()),
            ("trt_timing_cache_path", dirs.timing.display().to_string()),
        ];
        expected.extend(cfg.tensorrt.provider_options());
        for (k, v) in expected {
            assert!(shown.contains(&format!("{k:?}: {v:?}")), "{k}={v} not in {shown}");
        }
        assert_eq!(listing(&cwd), before, "nothing is written to the working directory");
        // the same files elsewhere share the directory; other options get another one
        let copy = t.path().join("other/9");
        std::fs::create_dir_all(&copy).unwrap();
        std::fs::copy(version_dir.join("model.onnx"), copy.join("model.onnx")).unwrap();
        let again = tensorrt_on(&cfg, &Target { model: "n", version: 9, dir: &copy }, &h200(), &root).unwrap().1;
        assert_eq!(again.engines, dirs.engines);
        let plain = RuntimeConfig { tensorrt: TrtOptions::default(), ..cfg.clone() };
        let other = tensorrt_on(&plain, &target, &h200(), &root).unwrap().1;
        assert_ne!(other.engines, dirs.engines);
        assert_eq!(other.timing, dirs.timing);
    }

    #[test]
    fn registered_knows_which_providers_it_holds() {
        let r = Registered {
            names: vec![
                "TensorrtExecutionProvider (device 0, engine cache /c/engines/k)".into(),
                "CPUExecutionProvider".into(),
            ],
            fallback: vec![],
        };
        assert!(r.has(Provider::TensorRt) && r.has(Provider::Cpu) && !r.has(Provider::Cuda));
    }

    #[test]
    fn tensorrt_without_an_identifiable_gpu_is_refused_or_falls_back() {
        let env = crate::runtime::env::init(None).unwrap();
        let Err(why) = gpu::identify(0) else {
            return; // a GPU machine: the GPU run covers it
        };
        let t = tempfile::tempdir().unwrap();
        let target = Target { model: "m", version: 1, dir: t.path() };
        let mut cfg = RuntimeConfig {
            providers: vec![Provider::TensorRt],
            trt_engine_cache_dir: Some(t.path().join("cache")),
            ..RuntimeConfig::default()
        };
        let builder = || crate::runtime::session_builder(env, 1, 1).unwrap();
        let err = register(builder(), &cfg, &target).err().unwrap();
        assert_eq!(
            err,
            format!(
                "execution provider could not be registered (tensorrt: {why}; the TensorRT engine cache is keyed by \
                 the GPU, so TensorRT is not used); pass --allow-cpu-fallback to run on CPU instead"
            )
        );
        assert!(!t.path().join("cache").exists(), "nothing is written without a GPU");
        cfg.allow_cpu_fallback = true;
        let (_, registered) = register(builder(), &cfg, &target).unwrap();
        assert!(!registered.has(Provider::TensorRt) && registered.has(Provider::Cpu));
        assert_eq!(
            registered.to_string(),
            format!(
                "CPUExecutionProvider (fallback: tensorrt: {why}; the TensorRT engine cache is keyed by the GPU, so \
                 TensorRT is not used)"
            )
        );
    }
}
