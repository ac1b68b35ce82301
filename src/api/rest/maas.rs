//! maas's own REST routes: `GET /maas/v1/models/{model}`, what operators want to know about a
//! model's versions beyond TF Serving's status (whose `error_message` stays "" for a healthy
//! version): per version the state, the execution providers actually registered, sessions,
//! batching, load time, warmup outcome and the load error.
use super::tf::error_code_name;
use super::{respond, Mgr};
use crate::manager::{LoadReport, ModelDetails, ModelManager, VersionDetails, WarmupOutcome};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<ModelManager>> {
    Router::new().route("/maas/v1/models/{model}", get(model_details))
}

async fn model_details(State(m): Mgr, Path(model): Path<String>) -> Response {
    respond(m.details(&model).map(|d| model_json(&d).to_string()))
}

fn model_json(d: &ModelDetails) -> Value {
    let versions: Vec<Value> = d.versions.iter().map(|(v, details)| version_json(*v, details)).collect();
    json!({"model": d.name, "problem": d.problem, "versions": versions})
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
