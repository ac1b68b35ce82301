//! CPU cost per request of tenancy: authentication (Bearer token: parse, SHA-256, constant-time
//! compare, expiry), the tenant's rate limiter and concurrency slot, the task-local context, the
//! per-model rows limiter, and metering (totals + the usage-log bucket). This is everything the
//! tenancy layers add to an inference request, measured on one thread without the model run.
//!
//!     cargo bench --bench tenancy
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use maas::tenancy::{auth, Tenancy, TenancySettings};
use maas::tensor::{DType, InferRequest, InferResponse, Tensor, TensorData, Timing};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn setup() -> (tempfile::TempDir, std::sync::Arc<Tenancy>, axum::http::HeaderMap) {
    let dir = tempfile::tempdir().unwrap();
    let (token, id, digest) = maas::tenancy::keys::generate(Some("benchkey01")).unwrap();
    let file = dir.path().join("tenants.pbtxt");
    std::fs::write(
        &file,
        format!(
            "tiers {{ name: \"big\" limits {{ requests_per_second: 1000000000 burst: 1000000000 rows_per_minute: 2000000000 max_concurrent: 64 }} }}\n\
             tenants {{ name: \"acme\" tier: \"big\" models: \"numbers_classifier\" keys {{ id: \"{id}\" sha256: \"{}\" expires: \"2999-01-01T00:00:00Z\" }} }}\n",
            digest.to_hex()
        ),
    )
    .unwrap();
    let log = dir.path().join("usage.jsonl");
    let t = Tenancy::start(TenancySettings { file, poll: Duration::ZERO, usage_log: Some(log) }).unwrap();
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    headers.insert("content-type", "application/grpc".parse().unwrap());
    (dir, t, headers)
}

fn per_request(c: &mut Criterion) {
    let (_dir, tenancy, headers) = setup();
    let x = Tensor::new(DType::F32, vec![2, 8], TensorData::Raw(Bytes::from(vec![0u8; 64]))).unwrap();
    let req = InferRequest { inputs: vec![("x".into(), x.clone())], outputs: Vec::new() };
    let resp = InferResponse {
        outputs: vec![("y".into(), x)],
        timing: Timing { queue: Duration::from_micros(3), compute: Duration::from_micros(40) },
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    c.bench_function("auth_limits_metering_per_request", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let admitted = auth::admit(&tenancy, black_box(&headers), None, None, true).unwrap();
                    let ctx = admitted.ctx.clone();
                    ctx.clone()
                        .scope(async {
                            maas::tenancy::admit_inference("numbers_classifier", 2, &req).unwrap();
                            maas::tenancy::note_response(&resp);
                        })
                        .await;
                    ctx.finish(Some(tonic::Code::Ok));
                    drop(admitted);
                }
                start.elapsed()
            })
        })
    });
}

criterion_group!(benches, per_request);
criterion_main!(benches);
