//! `maas optimize`: makes a smaller, faster version of a model offline, proves it is still accurate,
//! and publishes it as a new version for a canary rollout.
//!
//! Version `--from` is read (`model.onnx`, its external data, `maas.pbtxt`, `assets.extra/`); the new
//! version is built in a hidden directory inside the model directory: int8 dynamic quantization
//! ([`quantize`], a rewrite of the ONNX graph in Rust) and then ONNX Runtime's graph pass ([`graph`]),
//! or an artifact made elsewhere (`--candidate`). The accuracy [`guard`] loads the written files next
//! to the source and compares their outputs; `optimization.json` ([`provenance`]) records how the
//! version was made and what the guard measured. If the guard passes, the directory is renamed to
//! `--to` ([`publish`]): a running server picks it up like any new version.
//!
//! Exit status: 0 published (with `--dry-run`: the guard passed, nothing published), 1 the guard
//! refused the candidate (nothing published), 2 error.
pub mod graph;
pub mod guard;
pub mod inputs;
pub mod onnx_proto;
pub mod provenance;
pub mod publish;
pub mod quantize;
mod report;

use crate::repository::{list_versions, ModelDir, MODEL_FILE};
use crate::runtime::settings::SETTINGS_FILE;
use clap::Args;
use graph::GraphLevel;
use publish::Staging;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Above this many bytes of weights, a model is written with external data even if its source was not.
const EXTERNAL_ABOVE: u64 = 1 << 30;
/// Name of the data file of a model written with external data.
pub const DATA_FILE: &str = "model.onnx.data";

/// `--quantize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuantizeMode {
    None,
    /// int8 weights, activations quantized at run time (MatMul, Gemm; Gather with --embeddings).
    Int8Dynamic,
}

/// Flags of `maas optimize`.
#[derive(Debug, Clone, Args)]
pub struct OptimizeArgs {
    /// The model's directory in the repository (holding its numbered versions).
    #[arg(long, value_name = "REPO/MODEL")]
    pub model_dir: PathBuf,

    /// The version to optimize.
    #[arg(long, value_name = "N")]
    pub from: i64,

    /// The version to publish (must not exist). Default: the highest version + 1.
    #[arg(long, value_name = "M")]
    pub to: Option<i64>,

    /// ONNX Runtime's graph pass, on the CPU provider [default: extended]. Never "all" offline: layout
    /// optimizations tie the file to the CPU it was made on.
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub graph: Option<GraphLevel>,

    /// Quantization [default: none].
    #[arg(long, value_enum, value_name = "MODE")]
    pub quantize: Option<QuantizeMode>,

    /// int8: one scale per output column instead of one per weight tensor.
    #[arg(long)]
    pub per_channel: bool,

    /// int8: quantize constant Gather tables (embeddings) too.
    #[arg(long)]
    pub embeddings: bool,

    /// Check and publish a model made elsewhere instead (no graph pass, no quantization). Its external
    /// data files are copied with it.
    #[arg(long, value_name = "FILE.onnx")]
    pub candidate: Option<PathBuf>,

    /// Guard inputs: a directory of samples (DIR/<sample>/<input name>.npy), or a TF Serving warmup
    /// file (TFRecord of PredictionLog). Default: the source version's
    /// assets.extra/tf_serving_warmup_requests if it has one, else synthesized inputs.
    #[arg(long, value_name = "DIR|FILE")]
    pub guard_inputs: Option<PathBuf>,

    /// Guard samples (runs of both models): at most this many sample directories or records, or this
    /// many synthesized batches.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub guard_samples: usize,

    /// Synthesized inputs: value of a dynamic first (batch) dimension.
    #[arg(long, default_value_t = 4, value_name = "B")]
    pub guard_batch: i64,

    /// Synthesized inputs: value of every other dynamic dimension (sequence length).
    #[arg(long, default_value_t = 32, value_name = "S")]
    pub guard_seq: i64,

    /// Smallest per-row cosine similarity every float output must keep.
    #[arg(long, default_value_t = 0.99, value_name = "C", allow_negative_numbers = true)]
    pub min_cosine: f64,

    /// Run everything and the guard, publish nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// In-process latency measurement of each model on the first guard sample, in seconds (0 = skip).
    #[arg(long, default_value_t = 2.0, value_name = "S")]
    pub latency_seconds: f64,

    /// Seed of the synthesized guard inputs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub seed: u64,

    /// Path of libonnxruntime.so (default: $ORT_DYLIB_PATH, then .ort/ as for `maas serve`).
    #[arg(long, alias = "ort_lib", value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,

    /// Print the report as JSON (the content of optimization.json, plus the outcome).
    #[arg(long)]
    pub json: bool,
}

/// How a run ended (errors are `Err`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new version's directory.
    Published(PathBuf),
    /// `--dry-run` and the guard passed.
    Passed,
    /// The guard refused the candidate.
    Refused,
}

impl Outcome {
    /// The process exit status.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Published(_) | Outcome::Passed => 0,
            Outcome::Refused => 1,
        }
    }
}

/// The validated plan of a run.
struct Plan {
    model_name: String,
    source_dir: PathBuf,
    to: i64,
    graph: GraphLevel,
    quantize: Option<quantize::Options>,
}

fn plan(a: &OptimizeArgs) -> Result<Plan, String> {
    let dir = &a.model_dir;
    if !dir.is_dir() {
        return Err(format!(
            "--model-dir {} is not a directory (expected REPO/MODEL holding numbered versions)",
            dir.display()
        ));
    }
    let model_name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let versions = list_versions(&ModelDir { name: model_name.clone(), path: dir.clone() })
        .map_err(|e| format!("cannot list the versions in {}: {e}", dir.display()))?;
    let numbers: Vec<String> = versions.iter().map(|v| v.version.to_string()).collect();
    let source_dir = versions.iter().find(|v| v.version == a.from).map(|v| v.path.clone()).ok_or_else(|| {
        format!(
            "{} has no version {} (versions: {})",
            dir.display(),
            a.from,
            if numbers.is_empty() { "none".into() } else { numbers.join(", ") }
        )
    })?;
    let to = a.to.unwrap_or_else(|| versions.iter().map(|v| v.version).max().unwrap_or(0) + 1);
    if to < 1 {
        return Err(format!("--to must be a positive version number, got {to}"));
    }
    if let Some(v) = versions.iter().find(|v| v.version == to) {
        return Err(format!("--to {to}: version {to} already exists ({}); it was left untouched", v.path.display()));
    }
    if !(-1.0..=1.0).contains(&a.min_cosine) {
        return Err(format!("--min-cosine must be between -1 and 1, got {}", a.min_cosine));
    }
    if a.guard_samples == 0 || a.guard_batch < 1 || a.guard_seq < 1 {
        return Err("--guard-samples, --guard-batch and --guard-seq must be at least 1".into());
    }
    if !(a.latency_seconds >= 0.0 && a.latency_seconds.is_finite()) {
        return Err(format!("--latency-seconds must be a non-negative number, got {}", a.latency_seconds));
    }
    let int8 = a.quantize == Some(QuantizeMode::Int8Dynamic);
    if (a.per_channel || a.embeddings) && !int8 {
        return Err("--per-channel and --embeddings need --quantize int8-dynamic".into());
    }
    if a.candidate.is_some() && (a.quantize.is_some() || a.graph.is_some()) {
        return Err("--candidate is checked and published as it is: give it without --graph and --quantize".into());
    }
    let graph = if a.candidate.is_some() { GraphLevel::None } else { a.graph.unwrap_or(GraphLevel::Extended) };
    if a.candidate.is_none() && graph == GraphLevel::None && !int8 {
        return Err("nothing to do: --graph none without --quantize int8-dynamic or --candidate".into());
    }
    let quantize = int8.then_some(quantize::Options { per_channel: a.per_channel, embeddings: a.embeddings });
    Ok(Plan { model_name, source_dir, to, graph, quantize })
}

/// What was done to make the candidate.
#[derive(Debug, Default)]
pub(crate) struct Made {
    rewrite: Option<quantize::Report>,
    quantize_time: Option<Duration>,
    graph_time: Option<Duration>,
    external: bool,
}

/// Runs `maas optimize`; prints the report on stdout.
pub fn run(a: OptimizeArgs) -> Result<Outcome, String> {
    let p = plan(&a)?;
    let source_model = p.source_dir.join(MODEL_FILE);
    if !source_model.is_file() {
        return Err(format!("version {} has no {MODEL_FILE} ({} is missing)", a.from, source_model.display()));
    }
    let env = crate::runtime::env::init(a.ort_lib.as_deref())?;
    let source = onnx_proto::load(&source_model)?;
    let stage = Staging::create(&a.model_dir, p.to)?;
    let candidate = stage.dir.join(MODEL_FILE);

    let made = match &a.candidate {
        Some(c) => copy_candidate(c, &stage.dir)?,
        None => make(env, &p, &source, &source_model, &stage.dir)?,
    };
    for extra in [SETTINGS_FILE, crate::manager::warmup::WARMUP_FILE] {
        let from = p.source_dir.join(extra);
        if from.is_file() {
            publish::copy_synced(&from, &stage.dir.join(extra))?;
        }
    }

    // The guard, on the written files.
    let guard_start = Instant::now();
    let recorded = p.source_dir.join(crate::manager::warmup::WARMUP_FILE);
    let intra = std::thread::available_parallelism().map_or(1, |n| n.get());
    let make_samples = |signature: &crate::tensor::Signature| match &a.guard_inputs {
        Some(path) => inputs::read(path, &signature.inputs, a.guard_samples),
        None if recorded.is_file() => inputs::read_recorded(&recorded, a.guard_samples),
        None => {
            let synth =
                inputs::Synth { samples: a.guard_samples, batch: a.guard_batch, seq: a.guard_seq, seed: a.seed };
            inputs::synthesize(&signature.inputs, &inputs::vocabulary_sizes(&source.model), synth)
        }
    };
    let (verdict, samples) = guard::run(env, &source_model, &candidate, make_samples, a.min_cosine, intra)?;
    let guard_time = guard_start.elapsed();

    let source_files = onnx_proto::model_files(&source_model)?;
    let sizes = (onnx_proto::total_size(&source_files)?, candidate_size(&candidate));
    let mut measured = report::Measured { guard_time, sizes, ..report::Measured::default() };
    if verdict.passed() {
        measured.load = Some((graph::load_time(env, &source_model)?, graph::load_time(env, &candidate)?));
        if a.latency_seconds > 0.0 {
            let first = samples.feeds.first().cloned().unwrap_or_default();
            measured.latency = Some((
                latency(&source_model, first.clone(), a.latency_seconds)?,
                latency(&candidate, first, a.latency_seconds)?,
            ));
        }
    }
    let target = a.model_dir.join(p.to.to_string());
    let record = report::provenance(&a, &p, &made, &samples, &verdict, &measured)?;
    let text = serde_json::to_string_pretty(&record)
        .map_err(|e| format!("cannot write {}: {e}", provenance::PROVENANCE_FILE))?;
    onnx_proto::write_synced(&stage.dir.join(provenance::PROVENANCE_FILE), format!("{text}\n").as_bytes())?;

    let outcome = if !verdict.passed() {
        Outcome::Refused
    } else if a.dry_run {
        Outcome::Passed
    } else {
        stage.publish(&target)?;
        Outcome::Published(target)
    };
    report::print(&a, &p, &made, &record, &outcome)?;
    Ok(outcome)
}

/// Quantizes and/or runs the graph pass, writing `<stage>/model.onnx` (+ `model.onnx.data`).
fn make(
    env: &'static ort::environment::Environment,
    p: &Plan,
    source: &onnx_proto::LoadedModel,
    source_model: &Path,
    stage: &Path,
) -> Result<Made, String> {
    let mut made = Made::default();
    let graph = source.model.graph.as_ref().ok_or("the source model has no graph")?;
    made.external = source.has_external_data() || onnx_proto::tensor_bytes(graph) > EXTERNAL_ABOVE;
    let data = made.external.then_some(DATA_FILE);
    let out = stage.join(MODEL_FILE);
    let mut pass_input = source_model.to_path_buf();
    let work = stage.join(".work");
    if let Some(opts) = p.quantize {
        let start = Instant::now();
        let mut model = source.model.clone();
        made.rewrite = Some(quantize::quantize(&mut model, opts).map_err(|e| format!("int8-dynamic: {e}"))?);
        if p.graph == GraphLevel::None {
            onnx_proto::save(&model, &out, data)?;
        } else {
            std::fs::create_dir(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
            pass_input = work.join(MODEL_FILE);
            onnx_proto::save(&model, &pass_input, data)?;
        }
        made.quantize_time = Some(start.elapsed());
    }
    if p.graph != GraphLevel::None {
        made.graph_time = Some(graph::run(env, &pass_input, &out, p.graph, data)?);
        if work.exists() {
            std::fs::remove_dir_all(&work).map_err(|e| format!("cannot remove {}: {e}", work.display()))?;
        }
    }
    Ok(made)
}

/// Copies a `--candidate` model (and the external data files it names) into the stage.
fn copy_candidate(c: &Path, stage: &Path) -> Result<Made, String> {
    if !c.is_file() {
        return Err(format!("--candidate {} is not a file", c.display()));
    }
    let loaded = onnx_proto::load(c).map_err(|e| format!("--candidate: {e}"))?;
    publish::copy_synced(c, &stage.join(MODEL_FILE))?;
    let dir = c.parent().unwrap_or(Path::new("."));
    for f in &loaded.external_files {
        publish::copy_synced(&dir.join(f), &stage.join(f))?;
    }
    Ok(Made { external: loaded.has_external_data(), ..Made::default() })
}

fn candidate_size(path: &Path) -> u64 {
    onnx_proto::model_files(path).and_then(|f| onnx_proto::total_size(&f)).unwrap_or(0)
}

/// In-process latency of `model` on `inputs` (the bench's runner: 1 session, 1 thread, 1 client).
fn latency(model: &Path, inputs: inputs::Feed, seconds: f64) -> Result<crate::bench::report::Report, String> {
    let args = crate::bench::inprocess::InprocessArgs {
        model_path: model.to_path_buf(),
        ort_lib: None,
        concurrency: 1,
        sessions: 1,
        intra_op_threads: 1,
        inter_op_threads: 1,
        seconds,
        warmup_seconds: (seconds / 4.0).min(1.0),
        rows: 1,
        seq: 1,
        json: false,
    };
    crate::bench::inprocess::run_with_inputs(&args, Some(inputs))
        .map_err(|e| format!("latency of {}: {e}", model.display()))
}
