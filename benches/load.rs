//! A simple closed-loop load generator for a running maas server (TF Serving Predict over gRPC):
//! N concurrent clients send requests back to back for a fixed time; prints requests/s and
//! latency percentiles. Run through `scripts/bench.sh`, or:
//!
//!     cargo bench --bench load -- --address 127.0.0.1:8500 --concurrency 16 --seconds 10
use maas::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient;
use maas::proto::tensorflow::serving::{ModelSpec, PredictRequest};
use maas::proto::tensorflow::{tensor_shape_proto::Dim, DataType, TensorProto, TensorShapeProto};
use std::time::{Duration, Instant};

struct Opts {
    address: String,
    model: String,
    concurrency: usize,
    seconds: f64,
    rows: i64,
    connections: usize,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        address: "127.0.0.1:8500".into(),
        model: "numbers_classifier".into(),
        concurrency: 1,
        seconds: 10.0,
        rows: 1,
        connections: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--address" => o.address = val()?,
            "--model" => o.model = val()?,
            "--concurrency" => o.concurrency = val()?.parse().map_err(|e| format!("--concurrency: {e}"))?,
            "--seconds" => o.seconds = val()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--rows" => o.rows = val()?.parse().map_err(|e| format!("--rows: {e}"))?,
            "--connections" => o.connections = val()?.parse().map_err(|e| format!("--connections: {e}"))?,
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

fn request(o: &Opts) -> PredictRequest {
    let n = (o.rows * 8) as usize;
    let vals: Vec<f32> = (0..n).map(|i| ((i % 11) as f32 - 5.0) / 3.0).collect();
    let t = TensorProto {
        dtype: DataType::DtFloat as i32,
        tensor_shape: Some(TensorShapeProto {
            dim: vec![Dim { size: o.rows, name: String::new() }, Dim { size: 8, name: String::new() }],
            unknown_rank: false,
        }),
        tensor_content: vals.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into(),
        ..Default::default()
    };
    PredictRequest {
        model_spec: Some(ModelSpec { name: o.model.clone(), ..Default::default() }),
        inputs: [("x".to_string(), t)].into_iter().collect(),
        ..Default::default()
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("load: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async move {
        let mut clients = Vec::new();
        for _ in 0..o.connections.max(1) {
            match PredictionServiceClient::connect(format!("http://{}", o.address)).await {
                Ok(c) => clients.push(c),
                Err(e) => {
                    eprintln!("load: cannot connect to {}: {e}", o.address);
                    std::process::exit(2);
                }
            }
        }
        let req = request(&o);
        // warm up
        for _ in 0..50 {
            let _ = clients[0].clone().predict(req.clone()).await;
        }
        let deadline = Instant::now() + Duration::from_secs_f64(o.seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..o.concurrency {
            let mut c = clients[i % clients.len()].clone();
            let req = req.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match c.predict(req.clone()).await {
                        Ok(_) => lat.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors)
            }));
        }
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await.unwrap();
            all.extend(l);
            errors += e;
        }
        let elapsed = started.elapsed().as_secs_f64();
        all.sort();
        println!(
            "model={} rows={} concurrency={} seconds={:.1} requests={} errors={} rps={:.0} p50_us={:.0} p90_us={:.0} p99_us={:.0} max_us={:.0}",
            o.model,
            o.rows,
            o.concurrency,
            elapsed,
            all.len(),
            errors,
            all.len() as f64 / elapsed,
            pct(&all, 0.50),
            pct(&all, 0.90),
            pct(&all, 0.99),
            pct(&all, 1.0)
        );
    });
}
