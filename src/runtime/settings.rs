//! How one model version runs: the server-wide flags, overridden per model by `maas.pbtxt`, and the
//! batching parameters (TF Serving's `BatchingParameters` text format).
use super::RuntimeConfig;
use crate::proto::maas::ModelSettings;
use crate::proto::tensorflow::serving::BatchingParameters;
use crate::repository::config::parse_text_message;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the per-model settings file, in a model's directory or in one version's directory.
pub const SETTINGS_FILE: &str = "maas.pbtxt";

/// Default `max_batch_size` when the parameters do not give one.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 64;
/// Default `max_enqueued_batches`.
pub const DEFAULT_MAX_ENQUEUED_BATCHES: usize = 100;

/// Validated batching parameters of a model version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchingConfig {
    /// Most rows (sum of the requests' first dimensions) in one batch.
    pub max_batch_size: usize,
    /// Longest a non-full batch waits for more requests (0 = run what is queued as soon as a batch
    /// thread is free).
    pub batch_timeout: Duration,
    /// Batches waiting at most; a request that would need one more gets UNAVAILABLE at once.
    pub max_enqueued_batches: usize,
    /// Threads running batches (None = one per session of the version).
    pub num_batch_threads: Option<usize>,
    /// If not empty: a batch is padded up to the next of these sizes (increasing; the last equals
    /// `max_batch_size`).
    pub allowed_batch_sizes: Vec<usize>,
    /// Merge requests whose non-batch dimensions differ, padding each input to the largest size in
    /// the batch with its first element (or its `pad_values` entry).
    pub pad_variable_length_inputs: bool,
    /// Per input: the value padding uses instead of the request's first element (`maas.pbtxt`
    /// `pad_values`; cast to the input's dtype and checked against the signature at load).
    pub pad_values: BTreeMap<String, PadValue>,
    /// Output name -> input name: the output's dimension 1 follows the input's dimension 1, so each
    /// request's part is cut back to its own length (`maas.pbtxt` `trim_outputs`).
    pub trim_outputs: BTreeMap<String, String>,
}

/// ONNX Runtime's graph optimization level at load (`graph_optimization_level` in `maas.pbtxt`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GraphOptimization {
    Disable,
    Basic,
    Extended,
    #[default]
    All,
}

impl GraphOptimization {
    pub fn parse(s: &str) -> Result<GraphOptimization, String> {
        Ok(match s {
            "disable" => GraphOptimization::Disable,
            "basic" => GraphOptimization::Basic,
            "extended" => GraphOptimization::Extended,
            "all" => GraphOptimization::All,
            other => {
                return Err(format!(
                    "graph_optimization_level must be one of disable, basic, extended, all; got \"{other}\""
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            GraphOptimization::Disable => "disable",
            GraphOptimization::Basic => "basic",
            GraphOptimization::Extended => "extended",
            GraphOptimization::All => "all",
        }
    }

    pub fn to_ort(self) -> ort::session::builder::GraphOptimizationLevel {
        use ort::session::builder::GraphOptimizationLevel as L;
        match self {
            GraphOptimization::Disable => L::Disable,
            GraphOptimization::Basic => L::Level1,
            GraphOptimization::Extended => L::Level2,
            GraphOptimization::All => L::All,
        }
    }
}

/// A `pad_values` entry as written (a double); compared bit for bit, so configurations stay `Eq`.
#[derive(Debug, Clone, Copy)]
pub struct PadValue(pub f64);

impl PartialEq for PadValue {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for PadValue {}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            max_batch_size: DEFAULT_MAX_BATCH_SIZE,
            batch_timeout: Duration::ZERO,
            max_enqueued_batches: DEFAULT_MAX_ENQUEUED_BATCHES,
            num_batch_threads: None,
            allowed_batch_sizes: Vec::new(),
            pad_variable_length_inputs: false,
            pad_values: BTreeMap::new(),
            trim_outputs: BTreeMap::new(),
        }
    }
}

fn positive(field: &str, v: Option<i64>, default: usize) -> Result<usize, String> {
    match v {
        None => Ok(default),
        Some(n) if n >= 1 => usize::try_from(n).map_err(|_| format!("{field} {n} is too large")),
        Some(n) => Err(format!("{field} must be at least 1, got {n}")),
    }
}

impl BatchingConfig {
    /// Validates TF Serving's `BatchingParameters`; absent fields take the defaults above.
    pub fn from_params(p: &BatchingParameters) -> Result<BatchingConfig, String> {
        let max_batch_size = positive("max_batch_size", p.max_batch_size, DEFAULT_MAX_BATCH_SIZE)?;
        let timeout = p.batch_timeout_micros.unwrap_or(0);
        let batch_timeout = u64::try_from(timeout)
            .map(Duration::from_micros)
            .map_err(|_| format!("batch_timeout_micros must not be negative, got {timeout}"))?;
        let max_enqueued_batches =
            positive("max_enqueued_batches", p.max_enqueued_batches, DEFAULT_MAX_ENQUEUED_BATCHES)?;
        let num_batch_threads = match p.num_batch_threads {
            None => None,
            Some(n) => Some(positive("num_batch_threads", Some(n), 1)?),
        };
        if p.enable_large_batch_splitting == Some(true) || p.max_execution_batch_size.is_some() {
            return Err("enable_large_batch_splitting and max_execution_batch_size are not supported; a request \
                 larger than max_batch_size is refused instead"
                .into());
        }
        let mut allowed_batch_sizes = Vec::with_capacity(p.allowed_batch_sizes.len());
        for &s in &p.allowed_batch_sizes {
            let s = positive("every allowed_batch_sizes entry", Some(s), 1)?;
            if allowed_batch_sizes.last().is_some_and(|&prev| prev >= s) {
                return Err(format!("allowed_batch_sizes must increase, got {:?}", p.allowed_batch_sizes));
            }
            allowed_batch_sizes.push(s);
        }
        if let Some(&last) = allowed_batch_sizes.last() {
            if last != max_batch_size {
                return Err(format!(
                    "the last allowed_batch_sizes entry ({last}) must equal max_batch_size ({max_batch_size})"
                ));
            }
        }
        Ok(BatchingConfig {
            max_batch_size,
            batch_timeout,
            max_enqueued_batches,
            num_batch_threads,
            allowed_batch_sizes,
            pad_variable_length_inputs: p.pad_variable_length_inputs,
            ..BatchingConfig::default()
        })
    }

    /// Parses a `--batching-parameters-file` (BatchingParameters in protobuf text format).
    pub fn parse_text(text: &str) -> Result<BatchingConfig, String> {
        let p: BatchingParameters = parse_text_message("tensorflow.serving.BatchingParameters", text)?;
        BatchingConfig::from_params(&p)
    }

    /// Reads and validates a batching parameters file.
    pub fn read(file: &Path) -> Result<BatchingConfig, String> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read batching parameters file {}: {e}", file.display()))?;
        BatchingConfig::parse_text(&text)
            .map_err(|e| format!("invalid batching parameters file {}: {e}", file.display()))
    }

    /// The batch size actually run for `rows` rows: the next allowed size, if any are given.
    pub fn padded_rows(&self, rows: usize) -> usize {
        self.allowed_batch_sizes.iter().copied().find(|&s| s >= rows).unwrap_or(rows)
    }
}

/// The settings file that applies to the version whose model file is `model_file`
/// (`<model>/<version>/model.onnx`): the version's own, else the model's, else none.
pub fn settings_file(model_file: &Path) -> Option<PathBuf> {
    let version_dir = model_file.parent()?;
    [Some(version_dir), version_dir.parent()].into_iter().flatten().map(|d| d.join(SETTINGS_FILE)).find(|f| f.is_file())
}

/// The runtime configuration of the version at `model_file`: `base` (the flags) with the overrides of
/// its `maas.pbtxt`, if there is one.
pub fn for_version(base: &RuntimeConfig, model_file: &Path) -> Result<RuntimeConfig, String> {
    let Some(file) = settings_file(model_file) else {
        return Ok(base.clone());
    };
    let text = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    apply(base, &text).map_err(|e| invalid(&file, &e))
}

/// The load error of an invalid settings file.
pub fn invalid(file: &Path, e: &str) -> String {
    format!("invalid model settings {}: {e}", file.display())
}

/// Applies the settings text (a `maas.ModelSettings`) to `base`.
pub fn apply(base: &RuntimeConfig, text: &str) -> Result<RuntimeConfig, String> {
    let s: ModelSettings = parse_text_message("maas.ModelSettings", text)?;
    let mut cfg = base.clone();
    let at_least_one = |field: &str, v: u32| {
        if v == 0 {
            Err(format!("{field} must be at least 1"))
        } else {
            Ok(v as usize)
        }
    };
    if let Some(n) = s.intra_op_threads {
        cfg.intra_op_threads = at_least_one("intra_op_threads", n)?;
    }
    if let Some(n) = s.inter_op_threads {
        cfg.inter_op_threads = at_least_one("inter_op_threads", n)?;
    }
    if let Some(n) = s.session_pool_size {
        cfg.pool_size = at_least_one("session_pool_size", n)?;
    }
    if let Some(n) = s.max_in_flight_requests {
        cfg.max_in_flight = n as usize;
    }
    let params = match &s.batching_parameters {
        Some(p) => Some(BatchingConfig::from_params(p).map_err(|e| format!("batching_parameters: {e}"))?),
        None => None,
    };
    if let Some(level) = &s.graph_optimization_level {
        cfg.graph_optimization = GraphOptimization::parse(level)?;
    }
    if let Some(mode) = &s.inline_execution {
        cfg.inline.mode = super::inline::InlineMode::parse(mode)?;
    }
    if let Some(us) = s.inline_max_run_micros {
        cfg.inline.max_run = std::time::Duration::from_micros(us);
    }
    let enabled = s.enable_batching.unwrap_or(params.is_some() || cfg.batching.is_some());
    cfg.batching = if enabled { Some(params.or_else(|| cfg.batching.clone()).unwrap_or_default()) } else { None };
    // ---- TensorRT ----
    if let Some(t) = &s.tensorrt {
        cfg.tensorrt = super::trt_options::TrtOptions::from_proto(t).map_err(|e| format!("tensorrt: {e}"))?;
    }
    // Pad values and trims are checked against the signature when the version loads; unbatched, they
    // have nothing to do.
    if let Some(b) = &mut cfg.batching {
        b.pad_values = s.pad_values.into_iter().map(|(k, v)| (k, PadValue(v))).collect();
        b.trim_outputs = s.trim_outputs.into_iter().collect();
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batching_parameters_text_format() {
        let c = BatchingConfig::parse_text(
            "max_batch_size { value: 32 } batch_timeout_micros { value: 1500 } max_enqueued_batches { value: 7 }
             num_batch_threads { value: 3 } thread_pool_name { value: 'x' } allowed_batch_sizes: [4, 8, 32]
             pad_variable_length_inputs: true",
        )
        .unwrap();
        assert_eq!(
            c,
            BatchingConfig {
                max_batch_size: 32,
                batch_timeout: Duration::from_micros(1500),
                max_enqueued_batches: 7,
                num_batch_threads: Some(3),
                allowed_batch_sizes: vec![4, 8, 32],
                pad_variable_length_inputs: true,
                ..BatchingConfig::default()
            }
        );
        assert_eq!(c.padded_rows(1), 4);
        assert_eq!(c.padded_rows(4), 4);
        assert_eq!(c.padded_rows(5), 8);
        assert_eq!(c.padded_rows(32), 32);
        assert_eq!(BatchingConfig::parse_text("").unwrap(), BatchingConfig::default());
        assert_eq!(BatchingConfig::default().padded_rows(5), 5);
    }

    #[test]
    fn batching_parameters_are_validated() {
        let err = |t: &str| BatchingConfig::parse_text(t).unwrap_err();
        assert_eq!(err("max_batch_size { value: 0 }"), "max_batch_size must be at least 1, got 0");
        assert_eq!(err("batch_timeout_micros { value: -1 }"), "batch_timeout_micros must not be negative, got -1");
        assert_eq!(err("max_enqueued_batches { value: -3 }"), "max_enqueued_batches must be at least 1, got -3");
        assert_eq!(err("num_batch_threads { value: 0 }"), "num_batch_threads must be at least 1, got 0");
        assert_eq!(
            err("max_batch_size { value: 8 } allowed_batch_sizes: [4, 2, 8]"),
            "allowed_batch_sizes must increase, got [4, 2, 8]"
        );
        assert_eq!(
            err("max_batch_size { value: 8 } allowed_batch_sizes: [2, 4]"),
            "the last allowed_batch_sizes entry (4) must equal max_batch_size (8)"
        );
        assert!(err("enable_large_batch_splitting { value: true }").starts_with("enable_large_batch_splitting"));
        let e = err("max_batch_size: 3");
        assert!(e.starts_with("syntax error at line 1"), "{e}");
    }

    #[test]
    fn model_settings_override_the_flags() {
        let base = RuntimeConfig { pool_size: 2, intra_op_threads: 1, ..RuntimeConfig::default() };
        assert_eq!(apply(&base, "").unwrap(), base);
        let c = apply(&base, "session_pool_size: 1 intra_op_threads: 2 inter_op_threads: 3 max_in_flight_requests: 9")
            .unwrap();
        assert_eq!((c.pool_size, c.intra_op_threads, c.inter_op_threads, c.max_in_flight), (1, 2, 3, 9));
        assert_eq!(c.batching, None);
        // Parameters alone turn batching on for this model.
        let c = apply(&base, "batching_parameters { max_batch_size { value: 8 } }").unwrap();
        assert_eq!(c.batching.map(|b| b.max_batch_size), Some(8));
        // enable_batching alone uses the defaults; false turns a server-wide setting off.
        let c = apply(&base, "enable_batching: true").unwrap();
        assert_eq!(c.batching, Some(BatchingConfig::default()));
        let global = RuntimeConfig { batching: Some(BatchingConfig::default()), ..base.clone() };
        assert_eq!(apply(&global, "enable_batching: false").unwrap().batching, None);
        assert_eq!(apply(&global, "").unwrap().batching, Some(BatchingConfig::default()));
        assert_eq!(apply(&base, "session_pool_size: 0").unwrap_err(), "session_pool_size must be at least 1");
        assert_eq!(
            apply(&base, "batching_parameters { max_batch_size { value: -2 } }").unwrap_err(),
            "batching_parameters: max_batch_size must be at least 1, got -2"
        );
        assert!(apply(&base, "threads: 3").unwrap_err().starts_with("syntax error at line 1"));
    }

    // ---- TensorRT ----
    #[test]
    fn tensorrt_settings_are_read_and_validated() {
        let base = RuntimeConfig::default();
        assert_eq!(apply(&base, "").unwrap().tensorrt, Default::default());
        let c = apply(
            &base,
            "tensorrt { fp16: true int8: true max_workspace_size: 1073741824 profile_min_shapes: 'ids:1x1' \
             profile_opt_shapes: 'ids:1x16' profile_max_shapes: 'ids:8x128' }",
        )
        .unwrap();
        let t = &c.tensorrt;
        assert!(t.fp16 && t.int8);
        assert_eq!(t.max_workspace_size, Some(1 << 30));
        let p = t.profile.as_ref().unwrap();
        assert_eq!(
            (p.min[0].1.clone(), p.opt[0].1.clone(), p.max[0].1.clone()),
            (vec![1, 1], vec![1, 16], vec![8, 128])
        );
        assert_eq!(
            apply(&base, "tensorrt { profile_min_shapes: 'ids:1' }").unwrap_err(),
            "tensorrt: profile_min_shapes, profile_opt_shapes and profile_max_shapes must be given together"
        );
        assert_eq!(
            apply(&base, "tensorrt { max_workspace_size: -1 }").unwrap_err(),
            "tensorrt: max_workspace_size must be positive, got -1"
        );
    }

    #[test]
    fn inline_execution_is_read() {
        let base = RuntimeConfig::default();
        let c = apply(&base, "inline_execution: \"never\" inline_max_run_micros: 200").unwrap();
        assert_eq!(c.inline.mode, crate::runtime::inline::InlineMode::Never);
        assert_eq!(c.inline.max_run, std::time::Duration::from_micros(200));
        assert_eq!(
            apply(&base, "inline_execution: \"yes\"").unwrap_err(),
            "inline_execution must be one of auto, always, never; got \"yes\""
        );
    }

    #[test]
    fn graph_optimization_level_is_read() {
        let base = RuntimeConfig::default();
        assert_eq!(base.graph_optimization, GraphOptimization::All);
        for (text, level) in [
            ("disable", GraphOptimization::Disable),
            ("basic", GraphOptimization::Basic),
            ("extended", GraphOptimization::Extended),
            ("all", GraphOptimization::All),
        ] {
            let c = apply(&base, &format!("graph_optimization_level: \"{text}\"")).unwrap();
            assert_eq!(c.graph_optimization, level);
            assert_eq!(level.name(), text);
        }
        assert_eq!(
            apply(&base, "graph_optimization_level: \"ALL\"").unwrap_err(),
            "graph_optimization_level must be one of disable, basic, extended, all; got \"ALL\""
        );
    }

    #[test]
    fn pad_values_and_trim_outputs_are_read_with_batching() {
        let base = RuntimeConfig::default();
        let text = r#"
            enable_batching: true
            batching_parameters { pad_variable_length_inputs: true }
            pad_values { key: "attention_mask" value: 0 }
            pad_values { key: "input_ids" value: -1.5 }
            trim_outputs { key: "last_hidden_state" value: "input_ids" }
        "#;
        let b = apply(&base, text).unwrap().batching.unwrap();
        assert!(b.pad_variable_length_inputs);
        let pads: Vec<(&str, f64)> = b.pad_values.iter().map(|(k, v)| (k.as_str(), v.0)).collect();
        assert_eq!(pads, vec![("attention_mask", 0.0), ("input_ids", -1.5)]);
        assert_eq!(b.trim_outputs.get("last_hidden_state").map(String::as_str), Some("input_ids"));
        // With server-wide batching parameters, the model's pad values join them.
        let global = BatchingConfig { pad_variable_length_inputs: true, ..BatchingConfig::default() };
        let base = RuntimeConfig { batching: Some(global), ..RuntimeConfig::default() };
        let b = apply(&base, r#"pad_values { key: "x" value: 2 }"#).unwrap().batching.unwrap();
        assert!(b.pad_variable_length_inputs);
        assert_eq!(b.pad_values.get("x"), Some(&PadValue(2.0)));
        // Unbatched, they have nothing to do.
        let c = apply(&base, r#"enable_batching: false pad_values { key: "x" value: 2 }"#).unwrap();
        assert_eq!(c.batching, None);
        // The double is kept as written; it is cast to the input's dtype when the version loads.
        assert_ne!(PadValue(0.0), PadValue(-0.0));
        let e = apply(&base, r#"pad_values { key: "x" value: "zero" }"#).unwrap_err();
        assert!(e.starts_with("syntax error at line 1"), "{e}");
    }

    #[test]
    fn version_settings_win_over_model_settings() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("1");
        std::fs::create_dir(&v1).unwrap();
        let model = v1.join("model.onnx");
        let base = RuntimeConfig { pool_size: 2, ..RuntimeConfig::default() };
        assert_eq!(for_version(&base, &model).unwrap(), base);
        std::fs::write(dir.path().join(SETTINGS_FILE), "session_pool_size: 3").unwrap();
        assert_eq!(for_version(&base, &model).unwrap().pool_size, 3);
        std::fs::write(v1.join(SETTINGS_FILE), "session_pool_size: 4").unwrap();
        assert_eq!(for_version(&base, &model).unwrap().pool_size, 4);
        std::fs::write(v1.join(SETTINGS_FILE), "session_pool_size: x").unwrap();
        let e = for_version(&base, &model).unwrap_err();
        assert!(
            e.starts_with(&format!("invalid model settings {}: syntax error", v1.join(SETTINGS_FILE).display())),
            "{e}"
        );
    }
}
