//! One scrape: every family of the registry, the model states and the machine, in a fixed order.
use super::encode::Writer;
use super::histogram::Histogram;
use super::process;
use super::registry::{Api, ModelMetrics, Reason, Registry, VersionMetrics, POLL_RESULTS};
use crate::manager::{VersionState, VersionStatus};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Every model the manager knows, with each version's state.
pub type ModelStates = [(String, Vec<(i64, VersionStatus)>)];

const STATES: [VersionState; 5] =
    [VersionState::Start, VersionState::Loading, VersionState::Available, VersionState::Unloading, VersionState::End];

/// The exposition of `r`, with the model states of `states`.
pub fn render(r: &Registry, states: &ModelStates) -> String {
    let (models, versions) = r.live();
    let mut w = Writer::new();
    tf_serving(&mut w, r, &models);
    triton(&mut w, &versions);
    machine(&mut w, r);
    maas(&mut w, r, &versions, states);
    if let Some(t) = r.tenancy.get() {
        tenants(&mut w, t);
    }
    w.finish()
}

fn tf_serving(w: &mut Writer, r: &Registry, models: &[Arc<ModelMetrics>]) {
    let name = ":tensorflow:serving:request_count";
    w.family(name, "counter", None);
    for (status, n) in r.unknown.nonzero() {
        w.int(name, &[("model_name", ""), ("status", status)], n);
    }
    for m in models {
        for (status, n) in m.request_count.nonzero() {
            w.int(name, &[("model_name", &m.name), ("status", status)], n);
        }
    }
    let latency = |w: &mut Writer, name: &str, pick: fn(&ModelMetrics) -> &[Histogram; 4], runtime: bool| {
        w.family(name, "histogram", None);
        for m in models {
            for api in Api::ALL {
                let h = &pick(m)[api.index()];
                if h.count() == 0 {
                    continue;
                }
                let third = if runtime { ("runtime", "ONNXRuntime") } else { ("entrypoint", api.entrypoint()) };
                w.histogram(name, &[("model_name", &m.name), ("API", api.tf_name()), third], h);
            }
        }
    };
    latency(w, ":tensorflow:serving:request_latency", |m| &m.request_latency, false);
    latency(w, ":tensorflow:serving:runtime_latency", |m| &m.runtime_latency, true);
    let name = ":tensorflow:serving:batching_session:queuing_latency";
    w.family(name, "histogram", None);
    if r.batch_queue.count() > 0 {
        w.histogram(name, &[("thread_pool_name", "batch_threads")], &r.batch_queue);
    }
}

fn triton(w: &mut Writer, versions: &[Arc<VersionMetrics>]) {
    let labels = |v: &VersionMetrics| (v.model.name.clone(), v.version.to_string());
    let counter = |w: &mut Writer, name: &str, help: &str, get: &dyn Fn(&VersionMetrics) -> u64| {
        w.family(name, "counter", Some(help));
        for v in versions {
            let (m, ver) = labels(v);
            w.int(name, &[("model", &m), ("version", &ver)], get(v));
        }
    };
    counter(w, "nv_inference_request_success", "Number of successful inference requests, all batch sizes", &|v| {
        v.success.load(Relaxed)
    });
    let name = "nv_inference_request_failure";
    w.family(name, "counter", Some("Number of failed inference requests, all batch sizes"));
    for v in versions {
        let (m, ver) = labels(v);
        for reason in Reason::ALL {
            let n = v.failure[reason as usize].load(Relaxed);
            w.int(name, &[("model", &m), ("version", &ver), ("reason", reason.name())], n);
        }
    }
    counter(w, "nv_inference_count", "Number of inferences performed (rows: a batch of n counts n)", &|v| {
        v.inferences.load(Relaxed)
    });
    counter(w, "nv_inference_exec_count", "Number of model executions performed (ONNX Runtime runs)", &|v| {
        v.executions.load(Relaxed)
    });
    let us = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed) / 1000;
    counter(w, "nv_inference_request_duration_us", "Cumulative inference request duration in microseconds", &|v| {
        us(&v.request_ns)
    });
    counter(w, "nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds", &|v| {
        us(&v.queue_ns)
    });
    counter(w, "nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds", &|v| {
        us(&v.input_ns)
    });
    counter(
        w,
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds",
        &|v| us(&v.infer_ns),
    );
    counter(
        w,
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds",
        &|v| us(&v.output_ns),
    );
    let name = "nv_inference_pending_request_count";
    w.family(name, "gauge", Some("Instantaneous number of pending requests awaiting execution per-model."));
    for v in versions {
        let (m, ver) = labels(v);
        w.int(name, &[("model", &m), ("version", &ver)], v.pending.load(Relaxed).max(0));
    }
    let name = "nv_model_load_duration_secs";
    w.family(name, "gauge", Some("Model load time in seconds"));
    for v in versions {
        let (m, ver) = labels(v);
        w.float(name, &[("model", &m), ("version", &ver)], v.load_seconds());
    }
}

fn machine(w: &mut Writer, r: &Registry) {
    if let Some(now) = process::cpu_ticks() {
        let before = r.cpu.lock().map(|mut prev| prev.replace(now)).unwrap_or(None);
        w.family("nv_cpu_utilization", "gauge", Some("CPU utilization rate [0.0 - 1.0]"));
        w.float("nv_cpu_utilization", &[], process::utilization(before, now));
    }
    if let Some((total, used)) = process::memory() {
        w.family("nv_cpu_memory_total_bytes", "gauge", Some("CPU total memory (RAM), in bytes"));
        w.int("nv_cpu_memory_total_bytes", &[], total);
        w.family("nv_cpu_memory_used_bytes", "gauge", Some("CPU used memory (RAM), in bytes"));
        w.int("nv_cpu_memory_used_bytes", &[], used);
    }
}

fn maas(w: &mut Writer, r: &Registry, versions: &[Arc<VersionMetrics>], states: &ModelStates) {
    let name = "maas_build_info";
    w.family(name, "gauge", Some("maas build: its version and the ONNX Runtime version it runs"));
    w.int(name, &[("version", env!("CARGO_PKG_VERSION")), ("ort_version", &r.ort_version)], 1);

    let name = "maas_model_state";
    w.family(name, "gauge", Some("1 for the current state of a model version (unloaded versions are not listed)"));
    for (model, list) in states {
        for (v, st) in list {
            // Versions unloaded normally leave; a version that failed to load stays, in END.
            if st.state == VersionState::End && st.code == tonic::Code::Ok {
                continue;
            }
            let ver = v.to_string();
            for s in STATES {
                w.int(name, &[("model", model), ("version", &ver), ("state", s.name())], u8::from(s == st.state));
            }
        }
    }

    let known: BTreeSet<String> = states.iter().map(|(m, _)| m.clone()).collect();
    r.retain_models(&known);
    let name = "maas_model_load_duration_seconds";
    w.family(name, "histogram", Some("Time to load (and warm up) a model version, in seconds"));
    if let Ok(loads) = r.load_durations.lock() {
        for (model, h) in loads.iter() {
            w.histogram(name, &[("model", model)], h);
        }
    }
    let name = "maas_model_load_failures_total";
    w.family(name, "counter", Some("Failed loads of a model's versions"));
    if let Ok(failures) = r.load_failures.lock() {
        for (model, n) in failures.iter() {
            w.int(name, &[("model", model)], n);
        }
    }

    let mut per_model: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for v in versions {
        let e = per_model.entry(&v.model.name).or_default();
        e.0 += v.in_flight.load(Relaxed).max(0);
        e.1 += v.pending.load(Relaxed).max(0);
    }
    let name = "maas_inflight_requests";
    w.family(name, "gauge", Some("Inference requests admitted and not yet answered"));
    for (model, (in_flight, _)) in &per_model {
        w.int(name, &[("model", model)], in_flight);
    }
    let name = "maas_queue_depth";
    w.family(name, "gauge", Some("Inference requests waiting for a session or in the batch queue"));
    for (model, (_, pending)) in &per_model {
        w.int(name, &[("model", model)], pending);
    }

    let name = "maas_request_duration_seconds";
    w.family(name, "histogram", Some("Duration of successful inference requests, in seconds"));
    for v in versions {
        let ver = v.version.to_string();
        for api in Api::ALL {
            let h = &v.duration[api.index()];
            if h.count() > 0 {
                let labels = [
                    ("model", v.model.name.as_str()),
                    ("version", &ver),
                    ("protocol", api.protocol()),
                    ("api", api.api()),
                ];
                w.histogram(name, &labels, h);
            }
        }
    }

    let name = "maas_repository_polls_total";
    w.family(name, "counter", Some("Scans of the model repository, by result"));
    for (i, result) in POLL_RESULTS.iter().enumerate() {
        w.int(name, &[("result", result)], r.polls[i].load(Relaxed));
    }

    let name = "maas_model_memory_bytes";
    w.family(name, "gauge", Some(MEMORY_HELP));
    for v in versions {
        w.int(name, &[("model", &v.model.name), ("version", &v.version.to_string())], v.memory_bytes());
    }

    let name = "maas_execution_provider_info";
    w.family(name, "gauge", Some("The ONNX Runtime execution providers a model version runs on"));
    for v in versions {
        let ver = v.version.to_string();
        for p in v.providers() {
            w.int(name, &[("model", &v.model.name), ("version", &ver), ("provider", &p)], 1);
        }
    }
}

/// How `maas_model_memory_bytes` is obtained (measured, not estimated).
const MEMORY_HELP: &str = "Memory a model version's load added to the process, in bytes: measured, as the growth of \
the resident set (VmRSS) across the load (its sessions, weights and pre-packed weights, after memory freed by the \
load is returned to the system); versions loading at the same time count into each other's";

/// `maas_tenant_*`: the usage meter's totals (the same numbers `/maas/v1/usage` answers) and the
/// refusals per tenant and reason. Label values come from the tenants file and the repository only.
fn tenants(w: &mut Writer, t: &crate::tenancy::Tenancy) {
    use crate::tenancy::usage::{seconds, Counters};
    let totals = t.usage.totals(None, &[]);
    let rows: Vec<(&str, &str, String, &Counters)> = totals
        .iter()
        .flat_map(|(tenant, models)| {
            models.iter().map(move |(m, v, c)| (tenant.as_str(), m.as_str(), v.to_string(), c))
        })
        .collect();
    let name = "maas_tenant_requests_total";
    w.family(name, "counter", Some("Inference requests of a tenant per model version and status code"));
    for (tenant, model, ver, c) in &rows {
        for (code, n) in &c.requests {
            w.int(name, &[("tenant", tenant), ("model", model), ("version", ver), ("code", code)], n);
        }
    }
    type Pick = fn(&Counters) -> f64;
    let families: [(&str, &str, Pick); 5] = [
        ("maas_tenant_rows_total", "Rows (first dimension) of a tenant's inference requests", |c| c.rows as f64),
        ("maas_tenant_request_bytes_total", "Bytes of a tenant's decoded input tensors", |c| c.request_bytes as f64),
        ("maas_tenant_response_bytes_total", "Bytes of a tenant's output tensors", |c| c.response_bytes as f64),
        (
            "maas_tenant_compute_seconds_total",
            "ONNX Runtime time of a tenant's requests (a batch's time split by rows), in seconds",
            |c| seconds(c.compute_ns),
        ),
        (
            "maas_tenant_queue_seconds_total",
            "Time a tenant's requests waited for a session or a batch, in seconds",
            |c| seconds(c.queue_ns),
        ),
    ];
    for (name, help, pick) in families {
        w.family(name, "counter", Some(help));
        for (tenant, model, ver, c) in &rows {
            w.float(name, &[("tenant", tenant), ("model", model), ("version", ver)], pick(c));
        }
    }
    let name = "maas_tenant_rejected_total";
    w.family(name, "counter", Some("Calls refused by authentication, authorization or a tenant limit, per reason"));
    for (tenant, reason, n) in t.rejections() {
        w.int(name, &[("tenant", &tenant), ("reason", reason)], n);
    }
}
