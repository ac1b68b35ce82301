//! What recording the Prometheus metrics costs one request, with the server's own code
//! (`maas::metrics`):
//!
//! - `request/success`: a front end's whole part: `Call::start`, attaching the version's series,
//!   the servable's answer, `Call::finish` (4 counters of TF Serving and 10 of Triton, 4 histograms)
//! - `request/failure`, `request/unknown_model`: a failed request, and one for a model not served
//! - `servable/run`: the servable's part: in-flight and pending gauges, the two clock reads around
//!   a run, the execution counter
//! - `request/success_2_threads`: `request/success` on two threads recording into the same series
//!   (time per request, both threads together)
//! - `scrape/20_versions`: rendering an exposition of 20 model versions that have served requests
//!
//!     cargo bench --bench metrics
use criterion::{criterion_group, criterion_main, Criterion};
use maas::error::Error;
use maas::metrics::render::render;
use maas::metrics::{Api, Call, Registry, Stages, VersionMetrics};
use maas::tensor::{DType, InferRequest, Tensor, TensorData};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn stages() -> Stages {
    let now = Instant::now();
    Stages { queue_ns: 1_000, input_ns: 2_000, infer_ns: 50_000, began: Some(now), ran: Some(now), ..Stages::default() }
}

fn request_of(rows: i64) -> InferRequest {
    let t = Tensor::new(DType::F32, vec![rows, 8], TensorData::Raw(vec![0u8; rows as usize * 32].into()));
    InferRequest { inputs: vec![("x".into(), t.unwrap())], outputs: Vec::new() }
}

fn success(r: &Registry, v: &Arc<VersionMetrics>, req: &InferRequest, st: Stages) {
    let mut call = Call::start(r, Api::Predict);
    call.attach(Arc::clone(v));
    call.sent(req);
    call.ran(st);
    black_box(call.finish(Ok::<(), Error>(()))).ok();
}

fn request(c: &mut Criterion) {
    let r = Registry::new("1.31.1");
    let v = r.version("numbers_classifier", 1);
    let (req, st) = (request_of(4), stages());
    let mut g = c.benchmark_group("request");
    g.bench_function("success", |b| b.iter(|| success(&r, &v, &req, st)));
    g.bench_function("failure", |b| {
        b.iter(|| {
            let mut call = Call::start(&r, Api::ModelInfer);
            call.attach(Arc::clone(&v));
            black_box(call.finish(Err::<(), _>(Error::InvalidArgument(String::new())))).ok();
        })
    });
    g.bench_function("unknown_model", |b| {
        b.iter(|| {
            let call = Call::start(&r, Api::InferRest);
            black_box(call.finish(Err::<(), _>(Error::NotFound(String::new())))).ok();
        })
    });
    g.bench_function("success_2_threads", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..iters / 2 {
                            success(&r, &v, &req, st);
                        }
                    });
                }
            });
            started.elapsed()
        })
    });
    g.finish();

    let admitted = Instant::now();
    c.bench_function("servable/run", |b| {
        b.iter(|| {
            v.in_flight_add(1);
            let waiting = v.waiting();
            drop(waiting);
            v.executed();
            let acquired = Instant::now();
            let ran = Instant::now();
            black_box(Stages::timed(admitted, acquired, ran));
            v.in_flight_add(-1);
        })
    });
}

fn scrape(c: &mut Criterion) {
    let r = Registry::new("1.31.1");
    let versions: Vec<_> = (0..20).map(|i| r.version(&format!("model_{}", i / 2), i % 2)).collect();
    let (req, st) = (request_of(1), stages());
    for v in &versions {
        for _ in 0..10 {
            success(&r, v, &req, st);
        }
    }
    c.bench_function("scrape/20_versions", |b| b.iter(|| black_box(render(&r, &[]).len())));
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = request, scrape
}
criterion_main!(benches);
