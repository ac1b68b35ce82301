//! Usage metering per tenant × model × version: requests by status code, rows, request and response
//! bytes (of the decoded input and output tensors, the same for every protocol), compute seconds (a
//! batch's ONNX Runtime time split by rows) and queue seconds. Totals since start for
//! `/maas/v1/usage` and `GetUsage`; one-minute buckets per key id for `--usage-log-file`, appended
//! when the bucket closes and on shutdown. Never a payload, a token or a digest.
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::Code;

/// The counters of one (tenant, model, version) or one usage-log record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub requests: BTreeMap<&'static str, u64>,
    pub rows: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub compute_ns: u64,
    pub queue_ns: u64,
}

/// One metered request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub code: Code,
    pub rows: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub compute_ns: u64,
    pub queue_ns: u64,
}

impl Counters {
    fn add(&mut self, s: &Sample) {
        *self.requests.entry(code_name(s.code)).or_default() += 1;
        self.rows += s.rows;
        self.request_bytes += s.request_bytes;
        self.response_bytes += s.response_bytes;
        self.compute_ns += s.compute_ns;
        self.queue_ns += s.queue_ns;
    }

    fn fields(&self, out: &mut serde_json::Map<String, Value>) {
        out.insert("requests".into(), json!(self.requests));
        out.insert("rows".into(), json!(self.rows));
        out.insert("request_bytes".into(), json!(self.request_bytes));
        out.insert("response_bytes".into(), json!(self.response_bytes));
        out.insert("compute_seconds".into(), json!(seconds(self.compute_ns)));
        out.insert("queue_seconds".into(), json!(seconds(self.queue_ns)));
    }
}

pub fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

pub use crate::error::code_name;

/// Per tenant (sorted): per model and version (sorted), the counters.
pub type Totals = Vec<(String, Vec<(String, i64, Counters)>)>;

type TotalKey = (Arc<str>, Arc<str>, i64);
type BucketKey = (Arc<str>, Option<Arc<str>>, Arc<str>, i64);

#[derive(Default)]
struct Inner {
    totals: HashMap<TotalKey, Counters>,
    /// The open one-minute bucket: its minute (Unix seconds / 60) and records.
    minute: u64,
    bucket: HashMap<BucketKey, Counters>,
}

/// The meter of one server.
pub struct Usage {
    inner: Mutex<Inner>,
    log: Option<(PathBuf, Mutex<std::fs::File>)>,
}

impl std::fmt::Debug for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Usage").field("log", &self.log.as_ref().map(|l| &l.0)).finish_non_exhaustive()
    }
}

fn now_minute() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 60)
}

fn rfc3339(unix: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).unwrap_or(0))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

impl Usage {
    /// A meter; with `log`, the file is opened (created) for appending now, so a bad path fails at start.
    pub fn new(log: Option<PathBuf>) -> Result<Usage, String> {
        let log = match log {
            None => None,
            Some(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| format!("cannot open --usage-log-file {}: {e}", path.display()))?;
                Some((path, Mutex::new(f)))
            }
        };
        Ok(Usage { inner: Mutex::new(Inner { minute: now_minute(), ..Inner::default() }), log })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Meters one request.
    pub fn record(&self, tenant: &Arc<str>, key_id: Option<&Arc<str>>, model: &Arc<str>, version: i64, s: &Sample) {
        let minute = now_minute();
        let closed = {
            let mut g = self.lock();
            let closed = if minute != g.minute && self.log.is_some() {
                let old = std::mem::take(&mut g.bucket);
                let m = std::mem::replace(&mut g.minute, minute);
                Some((m, old))
            } else {
                g.minute = minute;
                None
            };
            g.totals.entry((Arc::clone(tenant), Arc::clone(model), version)).or_default().add(s);
            if self.log.is_some() {
                g.bucket.entry((Arc::clone(tenant), key_id.cloned(), Arc::clone(model), version)).or_default().add(s);
            }
            closed
        };
        if let Some((m, records)) = closed {
            self.write(m, records);
        }
    }

    /// Appends the open bucket if its minute is over (`force`: in any case, at shutdown).
    pub fn flush(&self, force: bool) {
        let minute = now_minute();
        let closed = {
            let mut g = self.lock();
            if (force || minute != g.minute) && !g.bucket.is_empty() {
                let old = std::mem::take(&mut g.bucket);
                let m = std::mem::replace(&mut g.minute, minute);
                Some((m, old))
            } else {
                if g.bucket.is_empty() {
                    g.minute = minute;
                }
                None
            }
        };
        if let Some((m, records)) = closed {
            self.write(m, records);
        }
    }

    fn write(&self, minute: u64, records: HashMap<BucketKey, Counters>) {
        let Some((path, file)) = &self.log else { return };
        let (start, end) = (rfc3339(minute * 60), rfc3339(minute * 60 + 60));
        let mut sorted: Vec<_> = records.into_iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut text = String::new();
        for ((tenant, key_id, model, version), c) in sorted {
            let mut o = serde_json::Map::new();
            o.insert("start".into(), json!(start));
            o.insert("end".into(), json!(end));
            o.insert("tenant".into(), json!(&*tenant));
            o.insert("key_id".into(), json!(key_id.as_deref()));
            o.insert("model".into(), json!(&*model));
            o.insert("version".into(), json!(version.to_string()));
            c.fields(&mut o);
            text.push_str(&Value::Object(o).to_string());
            text.push('\n');
        }
        let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(text.as_bytes()).and_then(|()| f.flush()) {
            tracing::error!(file = %path.display(), "cannot append to the usage log: {e}");
        }
    }

    /// Totals since start: one tenant, or every tenant (sorted; tenants without usage included
    /// when named in `known`).
    pub fn totals(&self, only: Option<&str>, known: &[String]) -> Totals {
        let g = self.lock();
        let mut by_tenant: BTreeMap<String, Vec<(String, i64, Counters)>> = BTreeMap::new();
        for name in known.iter().filter(|n| only.is_none_or(|o| o == n.as_str())) {
            by_tenant.entry(name.clone()).or_default();
        }
        for ((tenant, model, version), c) in &g.totals {
            if only.is_some_and(|o| o != &**tenant) {
                continue;
            }
            by_tenant.entry(tenant.to_string()).or_default().push((model.to_string(), *version, c.clone()));
        }
        by_tenant
            .into_iter()
            .map(|(t, mut models)| {
                models.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
                (t, models)
            })
            .collect()
    }
}

/// `{"tenants": [{"tenant", "models": [{"model", "version", "requests", ...}]}]}`.
pub fn totals_json(totals: &Totals) -> String {
    let tenants: Vec<Value> = totals
        .iter()
        .map(|(t, models)| {
            let models: Vec<Value> = models
                .iter()
                .map(|(m, v, c)| {
                    let mut o = serde_json::Map::new();
                    o.insert("model".into(), json!(m));
                    o.insert("version".into(), json!(v.to_string()));
                    c.fields(&mut o);
                    Value::Object(o)
                })
                .collect();
            json!({"tenant": t, "models": models})
        })
        .collect();
    json!({ "tenants": tenants }).to_string()
}

/// The same as the gRPC `GetUsageResponse`.
pub fn totals_proto(totals: Totals) -> crate::proto::maas::usage::v1::GetUsageResponse {
    use crate::proto::maas::usage::v1 as pb;
    pb::GetUsageResponse {
        tenants: totals
            .into_iter()
            .map(|(tenant, models)| pb::TenantUsage {
                tenant,
                models: models
                    .into_iter()
                    .map(|(model, v, c)| pb::ModelUsage {
                        model,
                        version: v.to_string(),
                        requests: c.requests.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
                        rows: c.rows,
                        request_bytes: c.request_bytes,
                        response_bytes: c.response_bytes,
                        compute_seconds: seconds(c.compute_ns),
                        queue_seconds: seconds(c.queue_ns),
                    })
                    .collect(),
            })
            .collect(),
    }
}
