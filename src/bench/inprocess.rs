//! `maas bench inprocess`: the limit a server could reach. The model runs on ONNX Runtime in this
//! process, with the session options maas uses (graph optimization level All, the given intra- and
//! inter-op threads), M sessions and N driver threads: a request waits for a free session, as in the
//! server's pool, then runs on it. Inputs are synthesized once per driver thread, the same way as
//! for `load`; outputs are dropped unread. No network, no protocol, no copies: what remains between
//! this and `load` is the cost of serving.
use super::report::{Cpu, Recorder, Report};
use super::synth::synthesize_with;
use super::{check_counts, sample_usage, Window};
use crate::tensor::{fmt_shape, DType, Tensor, TensorData};
use clap::Args;
use half::{bf16, f16};
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, PrimitiveTensorElementType};
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

/// Flags of `maas bench inprocess`.
#[derive(Debug, Clone, Args)]
pub struct InprocessArgs {
    /// The ONNX model file.
    #[arg(long, value_name = "FILE.onnx")]
    pub model_path: PathBuf,

    /// Path of libonnxruntime.so (default: $ORT_DYLIB_PATH, then .ort/ as for `maas serve`).
    #[arg(long, alias = "ort_lib", value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,

    /// Driver threads, each running its next request as soon as the previous one returns.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub concurrency: usize,

    /// ONNX Runtime sessions (like `maas serve --session-pool-size`).
    #[arg(long, default_value_t = 1, value_name = "M")]
    pub sessions: usize,

    /// Threads each session uses inside one operator (like `maas serve --intra-op-threads`).
    #[arg(long, default_value_t = 1, value_name = "T")]
    pub intra_op_threads: usize,

    /// Threads each session uses across operators (like `maas serve --inter-op-threads`).
    #[arg(long, default_value_t = 1, value_name = "T")]
    pub inter_op_threads: usize,

    /// Length of the measured window.
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    pub seconds: f64,

    /// Load before the measured window (not counted).
    #[arg(long, default_value_t = 1.0, value_name = "W")]
    pub warmup_seconds: f64,

    /// Value of a dynamic first (batch) dimension.
    #[arg(long, default_value_t = 1, value_name = "R")]
    pub rows: i64,

    /// Value of every other dynamic dimension (e.g. a sequence length).
    #[arg(long, default_value_t = 1, value_name = "S")]
    pub seq: i64,

    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Sessions not in use; a driver waits here for one, like a request for a pool permit in the server.
struct Pool {
    free: Mutex<Vec<Session>>,
    returned: Condvar,
}

impl Pool {
    fn take(&self) -> Session {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(s) = free.pop() {
                return s;
            }
            free = self.returned.wait(free).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn put(&self, s: Session) {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).push(s);
        self.returned.notify_one();
    }
}

/// Loads the sessions, runs the load and returns its report.
pub fn run(a: &InprocessArgs) -> Result<Report, String> {
    run_with_inputs(a, None)
}

/// [`run`], on the given inputs instead of synthesized ones (`maas optimize` times the guard's inputs).
pub fn run_with_inputs(a: &InprocessArgs, given: Option<Vec<(String, Tensor)>>) -> Result<Report, String> {
    check_counts(a.concurrency, a.rows)?;
    if a.seq < 1 {
        return Err(format!("--seq must be at least 1, got {}", a.seq));
    }
    if a.sessions == 0 {
        return Err("--sessions must be at least 1".into());
    }
    if a.intra_op_threads == 0 || a.inter_op_threads == 0 {
        return Err("--intra-op-threads and --inter-op-threads must be at least 1".into());
    }
    let path = &a.model_path;
    if !path.is_file() {
        return Err(format!("--model-path {} is not a file", path.display()));
    }
    let env = crate::runtime::env::init(a.ort_lib.as_deref())?;
    // The options of runtime::Servable::load.
    let mut builder = crate::runtime::session_builder(env, a.intra_op_threads, a.inter_op_threads)?;
    let mut sessions = Vec::with_capacity(a.sessions);
    for _ in 0..a.sessions {
        sessions.push(
            builder
                .commit_from_file(path)
                .map_err(|e| format!("ONNX Runtime could not load {}: {e}", path.display()))?,
        );
    }
    let specs = crate::runtime::signature_of(&sessions[0])?.inputs;
    let tensors = match given {
        Some(t) => t,
        None => synthesize_with(&specs, a.rows, a.seq)?,
    };
    let model = path
        .parent()
        .and_then(|v| v.parent())
        .filter(|_| path.file_name().is_some_and(|f| f == "model.onnx"))
        .and_then(|m| m.file_name())
        .unwrap_or_else(|| path.as_os_str())
        .to_string_lossy()
        .into_owned();
    let inputs: Vec<String> =
        tensors.iter().map(|(name, t)| format!("{name} {} {}", t.dtype, fmt_shape(&t.shape))).collect();

    // Fail fast on inputs the model refuses.
    let probe = to_values(&tensors)?;
    run_once(&mut sessions[0], &probe).map_err(|e| format!("the first run of {} failed: {e}", path.display()))?;

    let pool = Pool { free: Mutex::new(sessions), returned: Condvar::new() };
    let window = Window::new(a.warmup_seconds, a.seconds)?;
    let pid = std::process::id();
    let sampler = sample_usage(pid, window);
    let recorders: Vec<Result<Recorder, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..a.concurrency)
            .map(|_| {
                let pool = &pool;
                let tensors = &tensors;
                scope.spawn(move || -> Result<Recorder, String> {
                    let values = to_values(tensors)?;
                    let mut rec = Recorder::new()?;
                    loop {
                        let start = Instant::now();
                        if start >= window.end {
                            break;
                        }
                        let mut session = pool.take();
                        let result = run_once(&mut session, &values);
                        pool.put(session);
                        let done = Instant::now();
                        match result {
                            Ok(()) if window.measures(done) => rec.success(done - start),
                            Ok(()) => {}
                            Err(e) => rec.error(&format!("{:?}", e.code()), || e.to_string()),
                        }
                    }
                    Ok(rec)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a driver thread panicked".into()))).collect()
    });
    let mut all = Recorder::new()?;
    for rec in recorders {
        all.merge(rec?)?;
    }
    let used = sampler.join().map_err(|_| "the CPU sampler thread panicked".to_string())??;
    let measured = window.measured();
    let errors_by_code = all.error_counts();
    Ok(Report {
        bench: "inprocess",
        model,
        target: path.display().to_string(),
        protocol: None,
        concurrency: a.concurrency,
        connections: None,
        sessions: Some(a.sessions),
        rows: Some(a.rows),
        inputs,
        warmup_seconds: a.warmup_seconds,
        seconds: measured.as_secs_f64(),
        requests: all.requests(),
        requests_per_second: all.requests() as f64 / measured.as_secs_f64(),
        latency_us: all.latency(),
        errors: errors_by_code.iter().map(|e| e.count).sum(),
        errors_by_code,
        cpu: Some(Cpu::new("self", pid, used, all.requests(), measured)),
        json: a.json,
    })
}

fn run_once(session: &mut Session, values: &[(String, DynValue)]) -> Result<(), ort::Error> {
    let inputs: Vec<(&str, SessionInputValue<'_>)> =
        values.iter().map(|(name, v)| (name.as_str(), SessionInputValue::from(v))).collect();
    session.run(inputs).map(drop)
}

/// Owned ONNX Runtime values for the synthesized tensors.
fn to_values(tensors: &[(String, Tensor)]) -> Result<Vec<(String, DynValue)>, String> {
    tensors
        .iter()
        .map(|(name, t)| {
            let shape = t.shape.clone();
            let value = match &t.data {
                TensorData::Strings(items) => crate::runtime::string_tensor(&shape, items)
                    .map_err(|e| format!("input '{name}': could not create an ONNX Runtime string tensor: {e}"))?,
                TensorData::Raw(b) => match t.dtype {
                    DType::F32 => owned::<f32>(shape, b),
                    DType::F64 => owned::<f64>(shape, b),
                    DType::F16 => owned::<f16>(shape, b),
                    DType::BF16 => owned::<bf16>(shape, b),
                    DType::I8 => owned::<i8>(shape, b),
                    DType::I16 => owned::<i16>(shape, b),
                    DType::I32 => owned::<i32>(shape, b),
                    DType::I64 => owned::<i64>(shape, b),
                    DType::U8 => owned::<u8>(shape, b),
                    DType::U16 => owned::<u16>(shape, b),
                    DType::U32 => owned::<u32>(shape, b),
                    DType::U64 => owned::<u64>(shape, b),
                    DType::Bool => {
                        let v: Vec<bool> = b.iter().map(|&x| x != 0).collect();
                        ort::value::Tensor::from_array((shape, v)).map(|v| v.into_dyn())
                    }
                    DType::String => return Err(format!("input '{name}': string tensor without strings")),
                }
                .map_err(|e| format!("input '{name}': could not create an ONNX Runtime tensor: {e}"))?,
            };
            Ok((name.clone(), value))
        })
        .collect()
}

fn owned<T>(shape: Vec<i64>, b: &[u8]) -> ort::Result<DynValue>
where
    T: PrimitiveTensorElementType + bytemuck::Pod + std::fmt::Debug,
{
    let v: Vec<T> = bytemuck::pod_collect_to_vec(b);
    ort::value::Tensor::from_array((shape, v)).map(|v| v.into_dyn())
}
