//! maas's own REST routes: `GET /maas/v1/models/{model}`, what operators want to know about a
//! model's versions beyond TF Serving's status (whose `error_message` stays "" for a healthy
//! version): per version the state, the execution providers actually registered, sessions,
//! batching, load time, warmup outcome and the load error, and how the version was made when
//! `maas optimize` made it (its `optimization.json`).
use super::tf::error_code_name;
use super::{respond, Mgr};
use crate::manager::{LoadReport, ModelDetails, ModelManager, VersionDetails, WarmupOutcome};
use crate::runtime::shared_weights::MemoryUse;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<ModelManager>> {
    Router::new().route("/maas/v1/models/{model}", get(model_details)).route("/maas/v1/usage", get(usage))
}

#[derive(Debug, serde::Deserialize)]
struct UsageQuery {
    #[serde(default)]
    tenant: String,
}

/// `GET /maas/v1/usage[?tenant=NAME]`: the caller's usage since start (an ADMIN: any tenant, or all).
async fn usage(q: Result<axum::extract::Query<UsageQuery>, axum::extract::rejection::QueryRejection>) -> Response {
    let tenant = q.map(|q| q.0.tenant).unwrap_or_default();
    respond(crate::tenancy::usage_for(&tenant).map(|t| crate::tenancy::usage::totals_json(&t)))
}

async fn model_details(State(m): Mgr, Path(model): Path<String>) -> Response {
    let details = match m.details(&model) {
        Ok(d) => d,
        Err(e) => return respond(Err(e)),
    };
    // optimization.json files are read from disk, off the reactor.
    let body = tokio::task::spawn_blocking(move || model_json(&details).to_string()).await;
    respond(body.map_err(|e| crate::error::Error::Internal(format!("the status task failed: {e}"))))
}

fn model_json(d: &ModelDetails) -> Value {
    let dirs = d.local_dir.as_deref().map(version_dirs).unwrap_or_default();
    let versions: Vec<Value> = d
        .versions
        .iter()
        .map(|(v, details)| {
            let mut j = version_json(*v, details);
            if let Some(o) = j.as_object_mut() {
                o.insert("optimization".into(), optimization_json(details.dir.as_ref().or(dirs.get(v))));
            }
            j
        })
        .collect();
    json!({"model": d.name, "problem": d.problem, "versions": versions})
}

/// Version number -> directory (names may have leading zeros). Quiet: the scans log what they ignore.
fn version_dirs(base: &std::path::Path) -> std::collections::HashMap<i64, std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(base) else { return Default::default() };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((crate::repository::parse_version(&e.file_name().to_string_lossy())?, e.path())))
        .filter(|(_, p)| p.is_dir())
        .collect()
}

/// The version's `optimization.json` (written by `maas optimize`), null without one.
fn optimization_json(dir: Option<&std::path::PathBuf>) -> Value {
    let Some(file) = dir.map(|d| d.join(crate::optimize::provenance::PROVENANCE_FILE)) else { return Value::Null };
    match std::fs::read(&file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
        Err(e) => json!({"error": format!("cannot read {}: {e}", file.display())}),
        Ok(bytes) => serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| json!({"error": format!("{} is not valid JSON: {e}", file.display())})),
    }
}

fn version_json(version: i64, d: &VersionDetails) -> Value {
    let s = &d.status;
    let mut v = json!({
        "version": version,
        "state": s.state.name(),
        "error_code": error_code_name(s.code),
        "error_message": s.message,
        "detail": (!s.detail.is_empty()).then_some(&s.detail),
        "load_error": d.load_error,
        "execution": d.execution.as_ref().map(|e| json!({
            "inline_execution": e.mode.name(),
            "inline_max_run_micros": u64::try_from(e.max_run.as_micros()).unwrap_or(u64::MAX),
            "inline_eligible": e.eligible,
            "largest_inline_request_bytes": e.largest_short_bytes,
            "inline_runs": e.inline_runs,
            "blocking_runs": e.blocking_runs,
            "too_large_for_inline": e.too_large,
        })),
    });
    let loaded = match &d.loaded {
        Some(r) => loaded_json(r),
        None => json!({
            "execution_providers": null,
            "provider_fallback": null,
            "sessions": null,
            "batching": null,
            "load_time_ms": null,
            "warmup": null,
            "memory": null,
        }),
    };
    if let (Some(v), Value::Object(l)) = (v.as_object_mut(), loaded) {
        v.extend(l);
    }
    v
}

fn loaded_json(r: &LoadReport) -> Value {
    let batching = r.batching.as_ref().map(|(b, threads)| {
        json!({
            "max_batch_size": b.max_batch_size,
            "batch_timeout_micros": u64::try_from(b.batch_timeout.as_micros()).unwrap_or(u64::MAX),
            "max_enqueued_batches": b.max_enqueued_batches,
            "num_batch_threads": threads,
            "allowed_batch_sizes": b.allowed_batch_sizes,
            "pad_variable_length_inputs": b.pad_variable_length_inputs,
        })
    });
    json!({
        "execution_providers": r.providers,
        "provider_fallback": (!r.provider_fallback.is_empty()).then(|| r.provider_fallback.join("; ")),
        "sessions": r.sessions,
        "batching": batching,
        "load_time_ms": u64::try_from(r.load_time.as_millis()).unwrap_or(u64::MAX),
        "warmup": warmup_json(&r.warmup),
        "memory": memory_json(&r.memory),
    })
}

/// What the version's load cost in memory: `bytes` is measured (the growth of the process's resident
/// set across the load), `shared_weight_bytes` is exact (initializers held once for all sessions).
fn memory_json(m: &MemoryUse) -> Value {
    json!({
        "bytes": m.rss_delta_bytes,
        "measured_as": "rss_delta_across_load",
        "weights_shared": m.shared,
        "shared_weight_bytes": m.shared_weight_bytes,
    })
}

fn warmup_json(w: &WarmupOutcome) -> Value {
    match w {
        WarmupOutcome::Disabled => json!({"kind": "disabled"}),
        WarmupOutcome::Recorded { records, iterations } => {
            json!({"kind": "recorded", "records": records, "iterations": iterations})
        }
        WarmupOutcome::Synthesized => json!({"kind": "synthesized"}),
        WarmupOutcome::Skipped { reason } => {
            json!({"kind": "skipped", "reason": reason, "message": format!("synthesized warmup skipped: {reason}")})
        }
    }
}
