//! The provenance record (`optimization.json`) and the report printed on stdout.
use super::guard::GuardReport;
use super::inputs::Samples;
use super::provenance::{cpu_features, hash_dir, now_utc, onnxruntime};
use super::{Made, OptimizeArgs, Outcome, Plan, QuantizeMode};
use crate::bench::report::Report;
use serde_json::{json, Value};
use std::time::Duration;

/// Sizes and times measured around the guard.
#[derive(Debug, Default)]
pub(crate) struct Measured {
    pub guard_time: Duration,
    /// Bytes of the source's and the candidate's files.
    pub sizes: (u64, u64),
    /// Session creation time at the server's optimization level (source, candidate).
    pub load: Option<(Duration, Duration)>,
    /// In-process latency (source, candidate).
    pub latency: Option<(Report, Report)>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn latency_json(r: &Report) -> Value {
    json!({
        "p50_us": r.latency_us.p50,
        "p90_us": r.latency_us.p90,
        "p99_us": r.latency_us.p99,
        "mean_us": r.latency_us.mean,
        "requests_per_second": r.requests_per_second,
        "requests": r.requests,
    })
}

/// The content of `optimization.json`.
pub(crate) fn provenance(
    a: &OptimizeArgs,
    p: &Plan,
    made: &Made,
    samples: &Samples,
    guard: &GuardReport,
    m: &Measured,
) -> Result<Value, String> {
    let quantize = match (&a.candidate, a.quantize) {
        (Some(_), _) => Value::Null,
        (None, Some(QuantizeMode::Int8Dynamic)) => json!("int8-dynamic"),
        (None, _) => json!("none"),
    };
    let latency = m.latency.as_ref().map(|(s, c)| {
        json!({
            "runner": "maas bench inprocess: 1 session, 1 intra-op thread, 1 client, graph optimization all",
            "inputs": s.inputs,
            "seconds": s.seconds,
            "source": latency_json(s),
            "candidate": latency_json(c),
            "speedup_p50": if c.latency_us.p50 > 0.0 { s.latency_us.p50 / c.latency_us.p50 } else { 0.0 },
        })
    });
    let (src, cand) = m.sizes;
    Ok(json!({
        "format": 1,
        "created": now_utc(),
        "maas_version": env!("CARGO_PKG_VERSION"),
        "model": p.model_name,
        "version": p.to,
        "source": {
            "version": a.from,
            "files": hash_dir(&p.source_dir)?,
        },
        "recipe": {
            "graph": p.graph.name(),
            "quantize": quantize,
            "per_channel": a.per_channel,
            "embeddings": a.embeddings,
            "candidate": a.candidate.as_ref().map(|c| c.display().to_string()),
            "external_data": made.external,
            "min_cosine": a.min_cosine,
        },
        "rewrite": made.rewrite,
        "onnxruntime": onnxruntime(),
        "cpu_features": cpu_features(),
        "guard": {
            "inputs": {
                "kind": samples.kind,
                "from": samples.from,
                "samples": samples.feeds.len(),
                "batch": (samples.kind == "synthesized").then_some(a.guard_batch),
                "seq": (samples.kind == "synthesized").then_some(a.guard_seq),
                "seed": (samples.kind == "synthesized").then_some(a.seed),
            },
            "min_cosine": guard.min_cosine,
            "outputs": guard.outputs,
            "verdict": guard.verdict,
            "reasons": guard.reasons,
        },
        "sizes": {
            "source_bytes": src,
            "candidate_bytes": cand,
            "ratio": if cand > 0 { src as f64 / cand as f64 } else { 0.0 },
        },
        "load_ms": m.load.map(|(s, c)| json!({"source": ms(s), "candidate": ms(c)})),
        "latency": latency,
        "timings_ms": {
            "quantize": made.quantize_time.map(ms),
            "graph": made.graph_time.map(ms),
            "guard": ms(m.guard_time),
        },
    }))
}

fn mb(b: u64) -> String {
    format!("{:.2} MB", b as f64 / 1e6)
}

/// Prints the report: the record as JSON with `--json`, else a summary.
pub(crate) fn print(a: &OptimizeArgs, p: &Plan, made: &Made, rec: &Value, outcome: &Outcome) -> Result<(), String> {
    let (name, published) = match outcome {
        Outcome::Published(dir) => ("published", Some(dir.display().to_string())),
        Outcome::Passed => ("passed (dry run: nothing published)", None),
        Outcome::Refused => ("refused (nothing published)", None),
    };
    if a.json {
        let mut rec = rec.clone();
        if let Some(o) = rec.as_object_mut() {
            o.insert("outcome".into(), json!(name.split(' ').next()));
            o.insert("dry_run".into(), json!(a.dry_run));
            o.insert("published".into(), json!(published));
        }
        let text = serde_json::to_string_pretty(&rec).map_err(|e| e.to_string())?;
        println!("{text}");
        return Ok(());
    }
    let mut out = String::new();
    let recipe = match (&a.candidate, p.quantize) {
        (Some(c), _) => format!("candidate {}", c.display()),
        (None, q) => {
            let q = q.map(|o| {
                format!(
                    ", int8-dynamic {}{}",
                    if o.per_channel { "per-channel" } else { "per-tensor" },
                    if o.embeddings { " with embeddings" } else { "" }
                )
            });
            format!("graph {}{}", p.graph.name(), q.unwrap_or_default())
        }
    };
    out += &format!("maas optimize: {} version {} -> {} ({recipe})\n", p.model_name, a.from, p.to);
    if let Some(r) = &made.rewrite {
        out += &format!(
            "  int8: {} MatMul, {} Gemm, {} Gather rewritten; {} weight input(s) computed in the graph left alone\n",
            r.matmul, r.gemm, r.gather, r.not_constant
        );
        for (w, why) in &r.kept_float {
            out += &format!("  kept float: {w}: {why}\n");
        }
    }
    let sizes = &rec["sizes"];
    let (s, c) = (sizes["source_bytes"].as_u64().unwrap_or(0), sizes["candidate_bytes"].as_u64().unwrap_or(0));
    out += &format!("  size: {} -> {} ({:.2}x smaller)\n", mb(s), mb(c), sizes["ratio"].as_f64().unwrap_or(0.0));
    if let Some(l) = rec["load_ms"].as_object() {
        let (s, c) = (l["source"].as_f64().unwrap_or(0.0), l["candidate"].as_f64().unwrap_or(0.0));
        out += &format!("  session creation: {s:.1} ms -> {c:.1} ms\n");
    }
    let g = &rec["guard"];
    let inputs = &g["inputs"];
    out += &format!(
        "  guard: {} {} sample(s){}; min cosine {}\n",
        inputs["samples"],
        inputs["kind"].as_str().unwrap_or(""),
        if inputs["kind"] == "synthesized" {
            format!(" (batch {}, seq {})", inputs["batch"], inputs["seq"])
        } else {
            String::new()
        },
        g["min_cosine"]
    );
    if let Some(outputs) = g["outputs"].as_object() {
        for (o, m) in outputs {
            let verdict = if m["pass"] == true { "ok" } else { "FAIL" };
            let detail = match m["kind"].as_str() {
                Some("float") => {
                    let mut d = format!(
                        "min cosine {:.4}, mean {:.4}, max abs {:.4} (rel {:.4})",
                        m["min_cosine"].as_f64().unwrap_or(f64::NAN),
                        m["mean_cosine"].as_f64().unwrap_or(f64::NAN),
                        m["max_abs"].as_f64().unwrap_or(f64::NAN),
                        m["max_rel"].as_f64().unwrap_or(f64::NAN)
                    );
                    if let Some(ag) = m["argmax_agreement"].as_f64() {
                        d += &format!(", argmax agreement {:.3}", ag);
                    }
                    d
                }
                _ => format!("exact, {} mismatch(es)", m["mismatches"]),
            };
            out += &format!(
                "    output '{o}' {} over {} rows: {detail} -> {verdict}\n",
                m["dtype"].as_str().unwrap_or(""),
                m["rows"]
            );
        }
    }
    if let Some(l) = rec["latency"].as_object() {
        let us = |side: &str, q: &str| l[side][q].as_f64().unwrap_or(0.0) / 1000.0;
        out += &format!(
            "  latency ({}; 1 thread): p50 {:.2} ms -> {:.2} ms, p99 {:.2} ms -> {:.2} ms\n",
            l["inputs"]
                .as_array()
                .map(|v| v.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
            us("source", "p50_us"),
            us("candidate", "p50_us"),
            us("source", "p99_us"),
            us("candidate", "p99_us")
        );
    }
    for r in g["reasons"].as_array().into_iter().flatten() {
        out += &format!("  refused: {}\n", r.as_str().unwrap_or(""));
    }
    out += &format!("  verdict: {name}{}\n", published.map(|d| format!(": {d}")).unwrap_or_default());
    print!("{out}");
    Ok(())
}
