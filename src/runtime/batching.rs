//! Dynamic batching of one model version.
//!
//! Requests are queued in batches of the same inputs' non-batch dimensions (with
//! `pad_variable_length_inputs`, of any dimensions, as long as no request padded to the batch's largest
//! dimensions exceeds `max_tensor_bytes`; a request that would opens a batch of its own). Batch threads
//! take the oldest batch once it is full, once `batch_timeout` has passed since it opened, or at once
//! when the timeout is 0, merge the requests' inputs along the first dimension (padding when asked,
//! with `pad_values` or each request's first element), run the merged request on their own session,
//! and split every output back by rows, cutting `trim_outputs` back to each request's length. Output
//! slices share one buffer (`Bytes::slice`), so splitting copies nothing. The queue is bounded by
//! `max_enqueued_batches`: a request that would need one more batch gets UNAVAILABLE at once. The queue
//! lock is held only to push or pop, never while a batch runs, and never on the async reactor for
//! longer than a push.
use super::merge::{merge_tensors, slice_rows, trim_dim1, MergeError};
use super::padding::{max_dims, padded_bytes, InputCost, Padding};
use super::servable::{InFlight, Servable};
use super::settings::BatchingConfig;
use crate::error::Error;
use crate::tensor::{fmt_shape, InferRequest, InferResponse, Signature, Tensor, TensorSpec};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Why a model version cannot be batched (None = it can): every input and output needs a dynamic
/// first dimension.
pub(crate) fn unbatchable(sig: &Signature) -> Option<String> {
    let specs = sig.inputs.iter().map(|s| ("input", s)).chain(sig.outputs.iter().map(|s| ("output", s)));
    for (kind, spec) in specs {
        match spec.shape.first() {
            Some(&d) if d < 0 => {}
            _ => {
                return Some(format!(
                    "{kind} '{}' has shape {}; batching needs a dynamic first dimension on every input and output",
                    spec.name,
                    fmt_shape(&spec.shape)
                ))
            }
        }
    }
    None
}

type Reply = oneshot::Sender<Result<InferResponse, Error>>;

/// One queued request.
struct Task {
    /// Inputs in signature order.
    inputs: Vec<Tensor>,
    /// Outputs wanted, empty = all.
    outputs: Vec<String>,
    rows: usize,
    /// What each input costs padded (only when padding).
    costs: Vec<InputCost>,
    deadline: Option<Instant>,
    started: Instant,
    reply: Reply,
    _admitted: InFlight,
}

struct Batch {
    /// Non-batch dimensions of every input: the tasks' own, or with padding, the largest of the tasks'.
    dims: Vec<Vec<i64>>,
    rows: usize,
    opened: Instant,
    tasks: Vec<Task>,
}

#[derive(Default)]
struct Queue {
    batches: VecDeque<Batch>,
    stopped: bool,
    /// Batch threads waiting on the condition variable. Waking one costs a system call and, on a busy
    /// core, a context switch, so a new request wakes one only when it can make a batch ready.
    idle: usize,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The batch queue and threads of one model version.
pub(crate) struct Batcher {
    pub(crate) cfg: BatchingConfig,
    padding: Arc<Padding>,
    /// No request padded into a batch may exceed this (`RuntimeConfig::max_tensor_bytes`).
    max_tensor_bytes: usize,
    threads: usize,
    shared: Arc<Shared>,
    /// Threads are started with the first request (they need the version's `Arc`).
    started: OnceLock<Result<(), String>>,
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.wake.notify_all();
    }
}

impl Batcher {
    /// A batcher for a version of signature `sig`; Err when `pad_values` or `trim_outputs` do not fit
    /// the signature.
    pub(crate) fn new(
        cfg: BatchingConfig,
        threads: usize,
        sig: &Signature,
        max_tensor_bytes: usize,
    ) -> Result<Batcher, String> {
        let padding = Arc::new(Padding::resolve(&cfg, sig)?);
        let (shared, started) = (Arc::default(), OnceLock::new());
        Ok(Batcher { cfg, padding, max_tensor_bytes, threads: threads.max(1), shared, started })
    }

    /// Batch threads of this version.
    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    fn start(&self, servable: Weak<Servable>, sessions: usize) -> Result<(), String> {
        for i in 0..self.threads {
            let (shared, servable, cfg) = (Arc::clone(&self.shared), servable.clone(), self.cfg.clone());
            let padding = Arc::clone(&self.padding);
            std::thread::Builder::new()
                .name(format!("maas-batch-{i}"))
                .spawn(move || worker(&shared, &servable, &cfg, &padding, i % sessions.max(1)))
                .map_err(|e| format!("cannot start batch thread {i}: {e}"))?;
        }
        Ok(())
    }

    /// Queues a validated request; the answer comes on the returned channel. A full queue, a request
    /// larger than `max_batch_size` or inputs that disagree on the batch size are refused at once.
    pub(crate) fn submit(
        &self,
        servable: &Arc<Servable>,
        req: InferRequest,
        deadline: Option<Instant>,
        started: Instant,
        admitted: InFlight,
    ) -> Result<oneshot::Receiver<Result<InferResponse, Error>>, Error> {
        let what = servable.what();
        self.started
            .get_or_init(|| self.start(Arc::downgrade(servable), servable.pool_size()))
            .clone()
            .map_err(|e| Error::Unavailable(format!("{what}: {e}")))?;
        let (inputs, rows) = signature_order(servable, req.inputs)?;
        if rows > self.cfg.max_batch_size {
            return Err(Error::InvalidArgument(format!(
                "{what}: the request has batch size {rows} (first dimension of its inputs), more than the \
                 max_batch_size of {} this model is batched with",
                self.cfg.max_batch_size
            )));
        }
        let dims: Vec<Vec<i64>> = inputs.iter().map(|t| t.shape[1..].to_vec()).collect();
        let costs = if self.cfg.pad_variable_length_inputs {
            inputs.iter().zip(&self.padding.fills).map(|(t, f)| InputCost::of(t, f.as_deref())).collect()
        } else {
            Vec::new()
        };
        let (reply, answer) = oneshot::channel();
        let task = Task { inputs, outputs: req.outputs, rows, costs, deadline, started, reply, _admitted: admitted };
        let wake = {
            let mut q = self.shared.lock();
            let max = self.cfg.max_batch_size;
            let queued = q.batches.len();
            // A waiting thread needs to know when the queue stops being empty (it waits without a
            // timeout then), when a batch fills up, or when a batch is ready at once (no timeout).
            let idle = q.idle > 0;
            let wake_any = idle && (queued == 0 || self.cfg.batch_timeout.is_zero());
            match q.batches.iter_mut().rev().find(|b| b.rows + rows <= max && self.joins(b, &dims, &task.costs)) {
                Some(b) => {
                    if self.cfg.pad_variable_length_inputs {
                        b.dims = max_dims(&b.dims, &dims);
                    }
                    b.rows += rows;
                    b.tasks.push(task);
                    wake_any || (idle && b.rows >= max)
                }
                None if queued >= self.cfg.max_enqueued_batches => {
                    return Err(Error::Unavailable(format!(
                        "{what}: the batch queue is full ({} batches of up to {max} rows waiting, the \
                         max_enqueued_batches limit); retry later",
                        queued
                    )));
                }
                None => {
                    // A second batch of the same shapes makes the first one ready.
                    let closes = q.batches.iter().any(|b| same_shapes(&self.cfg, b, &dims));
                    q.batches.push_back(Batch { dims, rows, opened: Instant::now(), tasks: vec![task] });
                    wake_any || (idle && (closes || rows >= max))
                }
            }
        };
        servable.metrics().pending_add(1);
        if wake {
            self.shared.wake.notify_one();
        }
        Ok(answer)
    }

    /// Whether a request of inner dimensions `dims` (and padded costs `costs`) may join batch `b`:
    /// without padding, when its dimensions are the batch's; with padding, when neither it nor any
    /// request already in the batch, padded to the largest dimensions of both, exceeds
    /// `max_tensor_bytes` (counted with checked arithmetic: an overflow exceeds it).
    fn joins(&self, b: &Batch, dims: &[Vec<i64>], costs: &[InputCost]) -> bool {
        if !self.cfg.pad_variable_length_inputs {
            return b.dims == dims;
        }
        let merged = max_dims(&b.dims, dims);
        let fits = |c: &[InputCost]| padded_bytes(c, &merged).is_some_and(|n| n <= self.max_tensor_bytes);
        let joins = fits(costs) && (merged == b.dims || b.tasks.iter().all(|t| fits(&t.costs)));
        if !joins {
            tracing::debug!(
                "a request of inner dimensions {dims:?} does not join a batch of {:?}: padded to {merged:?}, it or \
                 a request already there would exceed --max-tensor-bytes ({} bytes)",
                b.dims,
                self.max_tensor_bytes
            );
        }
        joins
    }
}

/// Whether requests of inner dimensions `dims` go in the same batches as `b`'s (any dimensions do when
/// padding).
fn same_shapes(cfg: &BatchingConfig, b: &Batch, dims: &[Vec<i64>]) -> bool {
    cfg.pad_variable_length_inputs || b.dims == dims
}

/// The request's inputs in signature order, and its batch size (the first dimension, equal on every
/// input).
fn signature_order(servable: &Servable, mut given: Vec<(String, Tensor)>) -> Result<(Vec<Tensor>, usize), Error> {
    let mut inputs = Vec::with_capacity(servable.signature.inputs.len());
    let mut rows: Option<(usize, &str)> = None;
    for spec in &servable.signature.inputs {
        let Some(at) = given.iter().position(|(n, _)| n == &spec.name) else {
            return Err(Error::InvalidArgument(format!("{}: missing input '{}'", servable.what(), spec.name)));
        };
        let (_, t) = given.swap_remove(at);
        let n = t.shape.first().copied().unwrap_or(0).max(0) as usize;
        match rows {
            Some((r, first)) if r != n => {
                return Err(Error::InvalidArgument(format!(
                    "{}: inputs '{first}' and '{}' have different batch sizes ({r} and {n}); with batching on, \
                     every input's first dimension is the batch size",
                    servable.what(),
                    spec.name
                )));
            }
            Some(_) => {}
            None => rows = Some((n, &spec.name)),
        }
        inputs.push(t);
    }
    Ok((inputs, rows.map_or(0, |(r, _)| r)))
}

/// How long the oldest batch must still wait (None = run it now).
fn wait_for(q: &Queue, cfg: &BatchingConfig) -> Option<Duration> {
    let front = q.batches.front()?;
    let full = front.rows >= cfg.max_batch_size || q.batches.iter().skip(1).any(|b| same_shapes(cfg, b, &front.dims));
    let waited = front.opened.elapsed();
    if full || waited >= cfg.batch_timeout {
        None
    } else {
        Some(cfg.batch_timeout - waited)
    }
}

fn worker(shared: &Shared, servable: &Weak<Servable>, cfg: &BatchingConfig, padding: &Padding, session: usize) {
    loop {
        let batch = {
            let mut q = shared.lock();
            loop {
                if q.stopped {
                    return;
                }
                if q.batches.is_empty() {
                    q.idle += 1;
                    q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
                    q.idle -= 1;
                    continue;
                }
                match wait_for(&q, cfg) {
                    None => break q.batches.pop_front(),
                    Some(d) => {
                        q.idle += 1;
                        q = shared.wake.wait_timeout(q, d).unwrap_or_else(|p| p.into_inner()).0;
                        q.idle -= 1;
                    }
                }
            }
        };
        let Some(batch) = batch else { continue };
        // The tasks hold the version alive, so this succeeds while there is work.
        let Some(servable) = servable.upgrade() else { return };
        run_batch(&servable, cfg, padding, session, batch.tasks);
    }
}

fn run_batch(servable: &Servable, cfg: &BatchingConfig, padding: &Padding, session: usize, tasks: Vec<Task>) {
    let popped = Instant::now();
    servable.metrics().pending_add(-(tasks.len() as i64));
    // Requests whose client went away are dropped; those past their deadline are answered so.
    let mut live = Vec::with_capacity(tasks.len());
    for t in tasks {
        if t.reply.is_closed() {
            servable.stats.record(false, t.started.elapsed());
        } else if t.deadline.is_some_and(|d| Instant::now() >= d) {
            let e = Error::DeadlineExceeded(format!(
                "{}: the client's deadline passed after {} ms in the batch queue; the request was not run",
                servable.what(),
                t.started.elapsed().as_millis()
            ));
            finish(servable, t, Err(e));
        } else {
            live.push(t);
        }
    }
    if live.is_empty() {
        return;
    }
    let rows: usize = live.iter().map(|t| t.rows).sum();
    let run_rows = cfg.padded_rows(rows);
    let run_start = Instant::now();
    let mut ran = Duration::ZERO;
    let result = merge(servable, padding, &live, run_rows)
        .and_then(|req| {
            let r = servable.run_on_session(session, &req);
            ran = run_start.elapsed();
            r
        })
        .and_then(|resp| {
            let tasks: Vec<(usize, &[Tensor])> = live.iter().map(|t| (t.rows, &t.inputs[..])).collect();
            let stages = resp.stages;
            Ok((stages, split(servable.what(), &servable.signature.inputs, padding, resp, &tasks, run_rows)?))
        });
    match result {
        Ok((stages, parts)) => {
            let stages = crate::metrics::call::batched(stages, popped);
            for (t, outputs) in live.into_iter().zip(parts) {
                // The batch's run time is split across its requests by rows.
                let share = ran.mul_f64(t.rows as f64 / rows.max(1) as f64);
                let queue = run_start.saturating_duration_since(t.started);
                let answer = select(servable, outputs, &t.outputs)
                    .map(|mut r| {
                        r.timing = crate::tensor::Timing { queue, compute: share };
                        r
                    })
                    .map(|r| crate::metrics::call::in_batch(r, stages, t.started, popped));
                finish(servable, t, answer);
            }
        }
        Err(e) => {
            for t in live {
                finish(servable, t, Err(e.clone()));
            }
        }
    }
}

fn finish(servable: &Servable, t: Task, answer: Result<InferResponse, Error>) {
    servable.stats.record(answer.is_ok(), t.started.elapsed());
    // A client that has gone away no longer wants the answer.
    let _ = t.reply.send(answer);
}

/// The merged request: every input concatenated along the first dimension (padded when asked), with
/// `run_rows - rows` copies of the first row appended for `allowed_batch_sizes`.
fn merge(servable: &Servable, padding: &Padding, tasks: &[Task], run_rows: usize) -> Result<InferRequest, Error> {
    let mut inputs = Vec::with_capacity(servable.signature.inputs.len());
    for (i, spec) in servable.signature.inputs.iter().enumerate() {
        let parts: Vec<&Tensor> = tasks.iter().map(|t| &t.inputs[i]).collect();
        let fill = padding.fills.get(i).and_then(Option::as_deref);
        let merged = merge_tensors(spec.dtype, &parts, run_rows, fill).map_err(|e| match e {
            MergeError::TooLarge(shape, bytes) => Error::ResourceExhausted(format!(
                "{}: the batch's input '{}' of shape {} ({}) cannot be allocated",
                servable.what(),
                spec.name,
                fmt_shape(&shape),
                bytes.map_or_else(|| "more bytes than memory can address".to_string(), |b| format!("{b} bytes"))
            )),
            MergeError::Mismatch(m) => {
                Error::Internal(format!("{}: merging input '{}': {m}", servable.what(), spec.name))
            }
        })?;
        inputs.push((spec.name.clone(), merged));
    }
    Ok(InferRequest { inputs, outputs: Vec::new() })
}

/// Splits every output of the batch back into the tasks' rows, and cuts each `trim_outputs` output's
/// dimension 1 back to the request's own length of its input's dimension 1.
/// `tasks` are each request's rows and inputs (in the order of `inputs`, the signature's).
fn split(
    what: &str,
    inputs: &[TensorSpec],
    padding: &Padding,
    resp: InferResponse,
    tasks: &[(usize, &[Tensor])],
    run_rows: usize,
) -> Result<Vec<Vec<(String, Tensor)>>, Error> {
    let mut parts: Vec<Vec<(String, Tensor)>> = tasks.iter().map(|_| Vec::with_capacity(resp.outputs.len())).collect();
    for (name, t) in resp.outputs {
        if t.shape.first().copied() != i64::try_from(run_rows).ok() {
            return Err(Error::FailedPrecondition(format!(
                "{what}: output '{name}' has shape {} for a batch of {run_rows} rows, so it cannot be split back into \
                 requests; run this model without batching",
                fmt_shape(&t.shape)
            )));
        }
        // (input index, the batch's length of its dimension 1) when this output is trimmed.
        let trim = padding.trim_of(&name).map(|i| {
            let len = |&(_, inputs): &(usize, &[Tensor])| inputs[i].shape.get(1).copied().unwrap_or(0);
            (i, tasks.iter().map(len).max().unwrap_or(0))
        });
        if let Some((i, padded)) = trim {
            if t.shape.get(1) != Some(&padded) {
                let input = &inputs[i].name;
                return Err(Error::FailedPrecondition(format!(
                    "{what}: output '{name}' has shape {} in a batch whose input '{input}' has length {padded} in \
                     dimension 1, so it cannot be cut back to each request's length; trim_outputs in maas.pbtxt \
                     says that dimension 1 of '{name}' follows dimension 1 of '{input}', and it does not",
                    fmt_shape(&t.shape)
                )));
            }
        }
        let mut offset = 0;
        for (&(rows, task_inputs), out) in tasks.iter().zip(parts.iter_mut()) {
            let cut = |e: String| Error::Internal(format!("{what}: splitting output '{name}': {e}"));
            let mut part = slice_rows(&t, offset, rows, run_rows).map_err(cut)?;
            if let Some((i, _)) = trim {
                let own = task_inputs[i].shape.get(1).map_or(0, |&d| d.max(0) as usize);
                part = trim_dim1(&part, own).map_err(cut)?;
            }
            out.push((name.clone(), part));
            offset += rows;
        }
    }
    Ok(parts)
}

/// The outputs a request asked for, in its order (all, in model order, when it named none).
fn select(servable: &Servable, mut outputs: Vec<(String, Tensor)>, wanted: &[String]) -> Result<InferResponse, Error> {
    if wanted.is_empty() {
        return Ok(InferResponse { outputs, ..Default::default() });
    }
    let mut picked = Vec::with_capacity(wanted.len());
    for name in wanted {
        let at = outputs.iter().position(|(n, _)| n == name).ok_or_else(|| {
            Error::Internal(format!("{}: output '{name}' missing from the batch's outputs", servable.what()))
        })?;
        picked.push(outputs.swap_remove(at));
    }
    Ok(InferResponse { outputs: picked, ..Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::runtime::settings::BatchingConfig;
    use crate::tensor::{DType, TensorData};
    use bytes::Bytes;

    fn tensor<T: bytemuck::Pod>(dtype: DType, shape: &[i64], v: &[T]) -> Tensor {
        Tensor::new(dtype, shape.to_vec(), TensorData::Raw(Bytes::copy_from_slice(bytemuck::cast_slice(v)))).unwrap()
    }

    fn raw(t: &Tensor) -> &Bytes {
        match &t.data {
            TensorData::Raw(b) => b,
            TensorData::Strings(_) => panic!("strings"),
        }
    }

    /// A BERT-like signature, trimming `hidden` (rank 3) and `ids` (rank 2) to `input_ids`.
    fn bert() -> (Vec<TensorSpec>, Padding) {
        let spec = |name: &str, dtype, shape: &[i64]| TensorSpec { name: name.into(), dtype, shape: shape.to_vec() };
        let sig = Signature {
            inputs: vec![spec("input_ids", DType::I64, &[-1, -1])],
            outputs: vec![
                spec("hidden", DType::F32, &[-1, -1, 2]),
                spec("ids", DType::I64, &[-1, -1]),
                spec("pooled", DType::F32, &[-1, 2]),
            ],
        };
        let mut cfg = BatchingConfig::default();
        for out in ["hidden", "ids"] {
            cfg.trim_outputs.insert(out.into(), "input_ids".into());
        }
        let padding = Padding::resolve(&cfg, &sig).unwrap();
        (sig.inputs, padding)
    }

    #[test]
    fn split_cuts_trimmed_outputs_back_to_each_requests_length() {
        let (inputs, padding) = bert();
        // Requests of 1 row x 2 tokens, 2 rows x 3 tokens, 1 row x 1 token: a batch of [4, 3].
        let reqs = [
            tensor(DType::I64, &[1, 2], &[1i64, 2]),
            tensor(DType::I64, &[2, 3], &[3i64, 4, 5, 6, 7, 8]),
            tensor(DType::I64, &[1, 1], &[9i64]),
        ];
        let tasks: Vec<(usize, &[Tensor])> =
            reqs.iter().map(|t| (t.shape[0] as usize, std::slice::from_ref(t))).collect();
        let hidden: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let ids = [1i64, 2, 0, 3, 4, 5, 6, 7, 8, 9, 0, 0];
        let out = |hidden: Tensor| InferResponse {
            timing: Default::default(),
            outputs: vec![
                ("hidden".into(), hidden),
                ("ids".into(), tensor(DType::I64, &[4, 3], &ids)),
                ("pooled".into(), tensor(DType::F32, &[4, 2], &[0f32; 8])),
            ],
            ..Default::default()
        };
        let batch = tensor(DType::F32, &[4, 3, 2], &hidden);
        let parts = split("m", &inputs, &padding, out(batch.clone()), &tasks, 4).unwrap();
        let shapes: Vec<Vec<Vec<i64>>> =
            parts.iter().map(|p| p.iter().map(|(_, t)| t.shape.clone()).collect()).collect();
        assert_eq!(
            shapes,
            vec![
                vec![vec![1, 2, 2], vec![1, 2], vec![1, 2]],
                vec![vec![2, 3, 2], vec![2, 3], vec![2, 2]],
                vec![vec![1, 1, 2], vec![1, 1], vec![1, 2]],
            ]
        );
        assert_eq!(parts[0][1].1, reqs[0]);
        assert_eq!(parts[1][1].1, reqs[1]);
        assert_eq!(parts[2][1].1, reqs[2]);
        assert_eq!(parts[0][0].1, tensor(DType::F32, &[1, 2, 2], &[0f32, 1., 2., 3.]));
        assert_eq!(parts[2][0].1, tensor(DType::F32, &[1, 1, 2], &[18f32, 19.]));
        // One-row requests and untrimmed requests are slices of the batch's buffer.
        assert_eq!(raw(&parts[0][0].1).as_ptr(), raw(&batch).as_ptr());
        assert_eq!(raw(&parts[1][0].1).as_ptr(), raw(&batch)[24..].as_ptr());
        assert_eq!(raw(&parts[2][0].1).as_ptr(), raw(&batch)[72..].as_ptr());

        // An output that does not follow its input: a precise error, no panic.
        for shape in [vec![4, 2, 2], vec![4, 4, 1]] {
            let e = split("m", &inputs, &padding, out(tensor(DType::F32, &shape, &[0f32; 16])), &tasks, 4).unwrap_err();
            assert_eq!(e.code(), tonic::Code::FailedPrecondition);
            assert_eq!(
                e.to_string(),
                format!(
                    "m: output 'hidden' has shape {} in a batch whose input 'input_ids' has length 3 in dimension 1, \
                     so it cannot be cut back to each request's length; trim_outputs in maas.pbtxt says that \
                     dimension 1 of 'hidden' follows dimension 1 of 'input_ids', and it does not",
                    fmt_shape(&shape)
                )
            );
        }
        let e = split("m", &inputs, &padding, out(tensor(DType::F32, &[4], &[0f32; 4])), &tasks, 4).unwrap_err();
        assert!(e.to_string().starts_with("m: output 'hidden' has shape [4] in a batch whose"), "{e}");
    }

    #[test]
    fn only_dynamic_first_dimensions_batch() {
        let spec =
            |name: &str, shape: &[i64]| TensorSpec { name: name.into(), dtype: DType::F32, shape: shape.to_vec() };
        let sig = Signature { inputs: vec![spec("x", &[-1, 4])], outputs: vec![spec("y", &[-1])] };
        assert_eq!(unbatchable(&sig), None);
        let sig = Signature { inputs: vec![spec("x", &[-1, 4])], outputs: vec![spec("y", &[1])] };
        assert_eq!(
            unbatchable(&sig).unwrap(),
            "output 'y' has shape [1]; batching needs a dynamic first dimension on every input and output"
        );
        let sig = Signature { inputs: vec![spec("x", &[])], outputs: vec![] };
        assert!(unbatchable(&sig).unwrap().starts_with("input 'x' has shape []"));
    }
}
