//! Dynamic batching of one model version.
//!
//! Requests are queued in batches keyed by their inputs' non-batch dimensions (all requests share one
//! key when `pad_variable_length_inputs` is on). Batch threads take the oldest batch once it is full,
//! once `batch_timeout` has passed since it opened, or at once when the timeout is 0, merge the
//! requests' inputs along the first dimension (padding when asked), run the merged request on their own
//! session, and split every output back by rows. Output slices share one buffer (`Bytes::slice`), so
//! splitting copies nothing. The queue is bounded by `max_enqueued_batches`: a request that would need
//! one more batch gets UNAVAILABLE at once. The queue lock is held only to push or pop, never while a
//! batch runs, and never on the async reactor for longer than a push.
use super::servable::{InFlight, Servable};
use super::settings::BatchingConfig;
use crate::error::Error;
use crate::tensor::{fmt_shape, DType, InferRequest, InferResponse, Signature, Tensor, TensorData};
use bytes::{Bytes, BytesMut};
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
    deadline: Option<Instant>,
    started: Instant,
    reply: Reply,
    _admitted: InFlight,
}

struct Batch {
    /// Non-batch dimensions of every input (empty when padding merges any shapes).
    key: Vec<Vec<i64>>,
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
    pub(crate) fn new(cfg: BatchingConfig, threads: usize) -> Batcher {
        Batcher { cfg, threads: threads.max(1), shared: Arc::default(), started: OnceLock::new() }
    }

    /// Batch threads of this version.
    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    fn start(&self, servable: Weak<Servable>, sessions: usize) -> Result<(), String> {
        for i in 0..self.threads {
            let (shared, servable, cfg) = (Arc::clone(&self.shared), servable.clone(), self.cfg.clone());
            std::thread::Builder::new()
                .name(format!("maas-batch-{i}"))
                .spawn(move || worker(&shared, &servable, &cfg, i % sessions.max(1)))
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
        let key: Vec<Vec<i64>> = if self.cfg.pad_variable_length_inputs {
            Vec::new()
        } else {
            inputs.iter().map(|t| t.shape[1..].to_vec()).collect()
        };
        let (reply, answer) = oneshot::channel();
        let task = Task { inputs, outputs: req.outputs, rows, deadline, started, reply, _admitted: admitted };
        let wake = {
            let mut q = self.shared.lock();
            let max = self.cfg.max_batch_size;
            let queued = q.batches.len();
            // A waiting thread needs to know when the queue stops being empty (it waits without a
            // timeout then), when a batch fills up, or when a batch is ready at once (no timeout).
            let idle = q.idle > 0;
            let wake_any = idle && (queued == 0 || self.cfg.batch_timeout.is_zero());
            match q.batches.iter_mut().rev().find(|b| b.key == key && b.rows + rows <= max) {
                Some(b) => {
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
                    // A second batch with the same key makes the first one ready.
                    let closes = q.batches.iter().any(|b| b.key == key);
                    q.batches.push_back(Batch { key, rows, opened: Instant::now(), tasks: vec![task] });
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
    let full = front.rows >= cfg.max_batch_size || q.batches.iter().skip(1).any(|b| b.key == front.key);
    let waited = front.opened.elapsed();
    if full || waited >= cfg.batch_timeout {
        None
    } else {
        Some(cfg.batch_timeout - waited)
    }
}

fn worker(shared: &Shared, servable: &Weak<Servable>, cfg: &BatchingConfig, session: usize) {
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
        run_batch(&servable, cfg, session, batch.tasks);
    }
}

fn run_batch(servable: &Servable, cfg: &BatchingConfig, session: usize, tasks: Vec<Task>) {
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
    let result = merge(servable, &live, run_rows)
        .and_then(|req| servable.run_on_session(session, &req))
        .and_then(|resp| Ok((resp.stages, split(servable, resp, &live, run_rows)?)));
    match result {
        Ok((stages, parts)) => {
            let stages = crate::metrics::call::batched(stages, popped);
            for (t, outputs) in live.into_iter().zip(parts) {
                let answer = select(servable, outputs, &t.outputs)
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
fn merge(servable: &Servable, tasks: &[Task], run_rows: usize) -> Result<InferRequest, Error> {
    let mut inputs = Vec::with_capacity(servable.signature.inputs.len());
    for (i, spec) in servable.signature.inputs.iter().enumerate() {
        let parts: Vec<&Tensor> = tasks.iter().map(|t| &t.inputs[i]).collect();
        let merged = merge_tensors(spec.dtype, &parts, run_rows)
            .map_err(|e| Error::Internal(format!("{}: merging input '{}': {e}", servable.what(), spec.name)))?;
        inputs.push((spec.name.clone(), merged));
    }
    Ok(InferRequest { inputs, outputs: Vec::new() })
}

/// Concatenates `parts` along dimension 0 into `run_rows` rows. Parts whose other dimensions are
/// smaller than the largest are padded at the end of each dimension with their own first element;
/// rows beyond the parts' are copies of the first row (zeros if there is none).
pub(crate) fn merge_tensors(dtype: DType, parts: &[&Tensor], run_rows: usize) -> Result<Tensor, String> {
    let first = parts.first().ok_or("no requests to merge")?;
    let rank = first.shape.len();
    if rank == 0 || parts.iter().any(|p| p.shape.len() != rank) {
        return Err("inputs of different ranks".into());
    }
    let rows: usize = parts.iter().map(|p| p.shape[0].max(0) as usize).sum();
    if parts.len() == 1 && rows == run_rows {
        return Ok((*first).clone());
    }
    let mut inner: Vec<i64> = first.shape[1..].to_vec();
    for p in parts {
        for (d, &n) in inner.iter_mut().zip(&p.shape[1..]) {
            *d = (*d).max(n);
        }
    }
    let row_elems: usize = inner.iter().map(|&d| d.max(0) as usize).product();
    let mut shape = Vec::with_capacity(rank);
    shape.push(i64::try_from(run_rows).map_err(|_| "too many rows")?);
    shape.extend_from_slice(&inner);
    let data = match dtype.size() {
        Some(size) => {
            let mut out = BytesMut::with_capacity(run_rows * row_elems * size);
            for p in parts {
                let TensorData::Raw(b) = &p.data else { return Err("string data in a numeric tensor".into()) };
                if p.shape[1..] == inner[..] {
                    out.extend_from_slice(b);
                } else {
                    let fill = b.get(..size).map(<[u8]>::to_vec).unwrap_or_else(|| vec![0; size]);
                    pad_into(&p.shape, &inner, &mut |src| match src {
                        Some(i) => out.extend_from_slice(&b[i * size..(i + 1) * size]),
                        None => out.extend_from_slice(&fill),
                    });
                }
            }
            let row = row_elems * size;
            let first_row = if rows > 0 { out[..row].to_vec() } else { vec![0; row] };
            for _ in rows..run_rows {
                out.extend_from_slice(&first_row);
            }
            TensorData::Raw(out.freeze())
        }
        None => {
            let mut out: Vec<Bytes> = Vec::with_capacity(run_rows * row_elems);
            for p in parts {
                let TensorData::Strings(s) = &p.data else { return Err("numeric data in a string tensor".into()) };
                if p.shape[1..] == inner[..] {
                    out.extend_from_slice(s);
                } else {
                    let fill = s.first().cloned().unwrap_or_default();
                    pad_into(&p.shape, &inner, &mut |src| out.push(src.map_or_else(|| fill.clone(), |i| s[i].clone())));
                }
            }
            let first_row: Vec<Bytes> =
                if rows > 0 { out[..row_elems].to_vec() } else { vec![Bytes::new(); row_elems] };
            for _ in rows..run_rows {
                out.extend_from_slice(&first_row);
            }
            TensorData::Strings(out)
        }
    };
    Tensor::new(dtype, shape, data).map_err(|e| e.to_string())
}

/// Walks a tensor of `shape` padded to `[shape[0], inner...]` in row-major order, calling `emit` with
/// each element's index in the unpadded tensor, or None for padding.
fn pad_into(shape: &[i64], inner: &[i64], emit: &mut dyn FnMut(Option<usize>)) {
    let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    let mut target = Vec::with_capacity(dims.len());
    target.push(dims[0]);
    target.extend(inner.iter().map(|&d| d.max(0) as usize));
    walk(&dims, &target, 0, Some(0), emit);
}

fn walk(dims: &[usize], target: &[usize], axis: usize, base: Option<usize>, emit: &mut dyn FnMut(Option<usize>)) {
    if axis == dims.len() {
        emit(base);
        return;
    }
    let stride: usize = dims[axis + 1..].iter().product();
    for i in 0..target[axis] {
        let inside = base.filter(|_| i < dims[axis]).map(|b| b + i * stride);
        walk(dims, target, axis + 1, inside, emit);
    }
}

/// Splits every output of the batch back into the tasks' rows.
fn split(
    servable: &Servable,
    resp: InferResponse,
    tasks: &[Task],
    run_rows: usize,
) -> Result<Vec<Vec<(String, Tensor)>>, Error> {
    let mut parts: Vec<Vec<(String, Tensor)>> = tasks.iter().map(|_| Vec::with_capacity(resp.outputs.len())).collect();
    for (name, t) in resp.outputs {
        if t.shape.first().copied() != i64::try_from(run_rows).ok() {
            return Err(Error::FailedPrecondition(format!(
                "{}: output '{name}' has shape {} for a batch of {run_rows} rows, so it cannot be split back into \
                 requests; run this model without batching",
                servable.what(),
                fmt_shape(&t.shape)
            )));
        }
        let mut offset = 0;
        for (task, out) in tasks.iter().zip(parts.iter_mut()) {
            out.push((name.clone(), slice_rows(&t, offset, task.rows, run_rows)));
            offset += task.rows;
        }
    }
    Ok(parts)
}

/// Rows `[offset, offset + n)` of a tensor with `rows` rows (no copy for fixed-width data).
pub(crate) fn slice_rows(t: &Tensor, offset: usize, n: usize, rows: usize) -> Tensor {
    if offset == 0 && n == rows {
        return t.clone();
    }
    let mut shape = t.shape.clone();
    shape[0] = n as i64;
    let data = match &t.data {
        TensorData::Raw(b) => {
            let row = b.len().checked_div(rows).unwrap_or(0);
            TensorData::Raw(b.slice(offset * row..(offset + n) * row))
        }
        TensorData::Strings(s) => {
            let row = s.len().checked_div(rows).unwrap_or(0);
            TensorData::Strings(s[offset * row..(offset + n) * row].to_vec())
        }
    };
    Tensor { dtype: t.dtype, shape, data }
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

    fn f32s(shape: &[i64], v: &[f32]) -> Tensor {
        Tensor::new(DType::F32, shape.to_vec(), TensorData::Raw(Bytes::copy_from_slice(bytemuck::cast_slice(v))))
            .unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        match &t.data {
            TensorData::Raw(b) => bytemuck::pod_collect_to_vec(b),
            TensorData::Strings(_) => panic!("strings"),
        }
    }

    #[test]
    fn merge_concatenates_and_pads_rows() {
        let a = f32s(&[1, 2], &[1., 2.]);
        let b = f32s(&[2, 2], &[3., 4., 5., 6.]);
        let m = merge_tensors(DType::F32, &[&a, &b], 3).unwrap();
        assert_eq!(m.shape, vec![3, 2]);
        assert_eq!(values(&m), vec![1., 2., 3., 4., 5., 6.]);
        // allowed_batch_sizes: padded with copies of the first row.
        let m = merge_tensors(DType::F32, &[&a, &b], 5).unwrap();
        assert_eq!(m.shape, vec![5, 2]);
        assert_eq!(values(&m), vec![1., 2., 3., 4., 5., 6., 1., 2., 1., 2.]);
        // One request that needs nothing is passed through as it is.
        assert_eq!(merge_tensors(DType::F32, &[&b], 2).unwrap(), b);
    }

    #[test]
    fn merge_pads_variable_length_inputs_with_the_first_element() {
        let a = f32s(&[1, 1, 2], &[7., 8.]);
        let b = f32s(&[1, 2, 1], &[3., 4.]);
        let m = merge_tensors(DType::F32, &[&a, &b], 2).unwrap();
        assert_eq!(m.shape, vec![2, 2, 2]);
        assert_eq!(values(&m), vec![7., 8., 7., 7., 3., 3., 4., 3.]);
    }

    #[test]
    fn merge_strings() {
        let s = |shape: &[i64], v: &[&str]| {
            Tensor::new(
                DType::String,
                shape.to_vec(),
                TensorData::Strings(v.iter().map(|x| Bytes::copy_from_slice(x.as_bytes())).collect()),
            )
            .unwrap()
        };
        let m = merge_tensors(DType::String, &[&s(&[1, 1], &["a"]), &s(&[1, 2], &["b", "c"])], 3).unwrap();
        assert_eq!(m, s(&[3, 2], &["a", "a", "b", "c", "a", "a"]));
    }

    #[test]
    fn split_slices_rows_without_copying() {
        let t = f32s(&[4, 2], &[0., 1., 2., 3., 4., 5., 6., 7.]);
        let part = slice_rows(&t, 1, 2, 4);
        assert_eq!(part.shape, vec![2, 2]);
        assert_eq!(values(&part), vec![2., 3., 4., 5.]);
        if let (TensorData::Raw(all), TensorData::Raw(p)) = (&t.data, &part.data) {
            assert_eq!(p.as_ptr(), all[8..].as_ptr(), "a slice of the batch's buffer");
        }
        assert_eq!(slice_rows(&t, 0, 4, 4), t);
        assert_eq!(slice_rows(&t, 3, 0, 4).shape, vec![0, 2]);
    }

    #[test]
    fn only_dynamic_first_dimensions_batch() {
        use crate::tensor::TensorSpec;
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
