//! Micro-benchmarks of the wire <-> core tensor conversions every request goes through, using the
//! server's own functions (`maas::api::tf_tensor`, `maas::api::v2_tensor`, which call the core's
//! `maas::tensor::codec`):
//!
//! - `tf_decode` / `tf_encode`: TF `TensorProto` typed `*_val` fields and `tensor_content`
//! - `v2_decode` / `v2_encode`: KServe v2 typed `InferTensorContents` and raw contents
//!
//! for every dtype (float16/bfloat16: TF `half_val`; v2 raw only) and tensors of 1, 1 Ki and 256 Ki
//! elements (throughput in elements/s). The values are those `maas bench` sends. A full run (about
//! 300 cases) takes five to six minutes:
//!
//!     cargo bench --bench codec                  # everything
//!     cargo bench --bench codec -- tf_decode     # one group (criterion filter)
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use maas::api::{tf_tensor, v2_tensor};
use maas::bench::synth::synthesize;
use maas::tensor::{Budget, DType, Tensor, TensorSpec};
use std::hint::black_box;
use std::time::Duration;

const DTYPES: [DType; 14] = DType::ALL;
const SIZES: [usize; 3] = [1, 1024, 256 * 1024];

fn tensor(dtype: DType, n: usize) -> Tensor {
    let spec = TensorSpec { name: "x".into(), dtype, shape: vec![n as i64] };
    match synthesize(&[spec], 1) {
        Ok(mut v) => v.remove(0).1,
        Err(e) => panic!("cannot synthesize {dtype} x {n}: {e}"),
    }
}

fn batch(n: usize) -> BatchSize {
    if n > 1024 {
        BatchSize::LargeInput
    } else {
        BatchSize::SmallInput
    }
}

fn tf(c: &mut Criterion) {
    let mut decode = c.benchmark_group("tf_decode");
    for dtype in DTYPES {
        for n in SIZES {
            decode.throughput(Throughput::Elements(n as u64));
            let t = tensor(dtype, n);
            let forms: &[(&str, bool)] =
                if dtype == DType::String { &[("typed", false)] } else { &[("typed", false), ("content", true)] };
            for &(form, content) in forms {
                let proto = tf_tensor::encode(t.clone(), content);
                decode.bench_with_input(BenchmarkId::new(format!("{dtype}/{form}"), n), &proto, |b, p| {
                    b.iter_batched(
                        || p.clone(),
                        |p| black_box(tf_tensor::decode("m", "x", p, &mut Budget::unlimited())),
                        batch(n),
                    )
                });
            }
        }
    }
    decode.finish();

    let mut encode = c.benchmark_group("tf_encode");
    for dtype in DTYPES {
        for n in SIZES {
            encode.throughput(Throughput::Elements(n as u64));
            let t = tensor(dtype, n);
            let forms: &[(&str, bool)] =
                if dtype == DType::String { &[("typed", false)] } else { &[("typed", false), ("content", true)] };
            for &(form, content) in forms {
                encode.bench_with_input(BenchmarkId::new(format!("{dtype}/{form}"), n), &t, |b, t| {
                    b.iter_batched(|| t.clone(), |t| black_box(tf_tensor::encode(t, content)), batch(n))
                });
            }
        }
    }
    encode.finish();
}

fn v2(c: &mut Criterion) {
    let mut decode = c.benchmark_group("v2_decode");
    for dtype in DTYPES {
        for n in SIZES {
            decode.throughput(Throughput::Elements(n as u64));
            let t = tensor(dtype, n);
            let shape = t.shape.clone();
            if let Some(contents) = v2_tensor::encode_typed(t.clone()) {
                decode.bench_with_input(BenchmarkId::new(format!("{dtype}/typed"), n), &contents, |b, c| {
                    b.iter_batched(
                        || c.clone(),
                        |c| {
                            black_box(v2_tensor::decode_typed(
                                "m",
                                "x",
                                dtype,
                                shape.clone(),
                                c,
                                &mut Budget::unlimited(),
                            ))
                        },
                        batch(n),
                    )
                });
            }
            let raw = v2_tensor::encode_raw(t);
            decode.bench_with_input(BenchmarkId::new(format!("{dtype}/raw"), n), &raw, |b, r| {
                b.iter_batched(
                    || r.clone(),
                    |r| black_box(v2_tensor::decode_raw("m", "x", dtype, shape.clone(), r, &mut Budget::unlimited())),
                    batch(n),
                )
            });
        }
    }
    decode.finish();

    let mut encode = c.benchmark_group("v2_encode");
    for dtype in DTYPES {
        for n in SIZES {
            encode.throughput(Throughput::Elements(n as u64));
            let t = tensor(dtype, n);
            if !matches!(dtype, DType::F16 | DType::BF16) {
                encode.bench_with_input(BenchmarkId::new(format!("{dtype}/typed"), n), &t, |b, t| {
                    b.iter_batched(|| t.clone(), |t| black_box(v2_tensor::encode_typed(t)), batch(n))
                });
            }
            encode.bench_with_input(BenchmarkId::new(format!("{dtype}/raw"), n), &t, |b, t| {
                b.iter_batched(|| t.clone(), |t| black_box(v2_tensor::encode_raw(t)), batch(n))
            });
        }
    }
    encode.finish();
}

fn config() -> Criterion {
    // Short runs (about 1 s per case) so that the ~300 cases take minutes, not an hour.
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(700))
        .sample_size(20)
}

criterion_group! {
    name = codec;
    config = config();
    targets = tf, v2
}
criterion_main!(codec);
