//! Tenants: who is calling (API keys, client certificates), which models they may use, their limits,
//! and what they used.
//!
//! The transport layers ([`auth`]) authenticate every call before its body is decoded and run the
//! rest of the call inside a task-local [`RequestCtx`]. The protocol-neutral core reads it:
//! [`visible`] (model resolution, status, statistics and their not-found messages), [`admit_inference`]
//! (per-model limits and rows, in `Servable::infer`) and the metering notes; so the four front ends
//! cannot disagree. Without `--tenant-config-file` there is no context and everything is open.
pub mod auth;
pub mod config;
pub mod keys;
pub mod limits;
pub mod usage;

use crate::error::Error;
use crate::tensor::{InferRequest, InferResponse, TensorData};
use arc_swap::ArcSwap;
use config::{CertMatch, Models, TenancySpec};
use keys::Digest;
use limits::{LimiterSet, Slot};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tonic::Code;
use usage::{Sample, Usage};

/// `--tenant-config-file` and friends.
#[derive(Debug, Clone)]
pub struct TenancySettings {
    pub file: PathBuf,
    /// 0 = only at start and on SIGHUP.
    pub poll: Duration,
    pub usage_log: Option<PathBuf>,
}

/// One tenant as requests see it.
pub struct Tenant {
    pub name: Arc<str>,
    pub admin: bool,
    pub models: Models,
    /// Tenant-wide limits (the tier's).
    pub limits: Arc<LimiterSet>,
    /// Models with `model_limits`: their own limiters.
    pub model_limits: HashMap<String, Arc<LimiterSet>>,
    /// "tenant 'acme'", for messages.
    who: String,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant").field("name", &self.name).field("admin", &self.admin).finish_non_exhaustive()
    }
}

struct KeyEntry {
    tenant: Arc<Tenant>,
    digest: Digest,
    expires: Option<OffsetDateTime>,
    id: Arc<str>,
}

/// An immutable view of the tenants file, swapped whole on reload.
#[derive(Default)]
pub struct Snapshot {
    tenants: HashMap<String, Arc<Tenant>>,
    keys: HashMap<String, KeyEntry>,
    certs: HashMap<CertMatch, Arc<Tenant>>,
    anonymous: Option<Arc<Tenant>>,
}

impl Snapshot {
    /// Builds the view; tenants whose limits did not change keep their limiters from `old`.
    fn build(spec: TenancySpec, old: Option<&Snapshot>) -> Snapshot {
        let mut tenants = HashMap::new();
        let mut keys = HashMap::new();
        for (name, t) in spec.tenants {
            let prev = old.and_then(|o| o.tenants.get(&name));
            let limits = match prev {
                Some(p) if p.limits.limits == t.limits => Arc::clone(&p.limits),
                _ => Arc::new(LimiterSet::new(t.limits)),
            };
            let model_limits = t
                .model_limits
                .iter()
                .map(|(m, l)| {
                    let set = match prev.and_then(|p| p.model_limits.get(m)) {
                        Some(s) if s.limits == *l => Arc::clone(s),
                        _ => Arc::new(LimiterSet::new(*l)),
                    };
                    (m.clone(), set)
                })
                .collect();
            let tenant = Arc::new(Tenant {
                who: format!("tenant '{name}'"),
                name: Arc::from(name.as_str()),
                admin: t.admin,
                models: t.models,
                limits,
                model_limits,
            });
            for k in t.keys {
                let id: Arc<str> = Arc::from(k.id.as_str());
                keys.insert(k.id, KeyEntry { tenant: Arc::clone(&tenant), digest: k.digest, expires: k.expires, id });
            }
            tenants.insert(name, tenant);
        }
        let certs = spec.certs.into_iter().filter_map(|(m, t)| tenants.get(&t).map(|t| (m, Arc::clone(t)))).collect();
        let anonymous = spec.anonymous.and_then(|a| tenants.get(&a).cloned());
        Snapshot { tenants, keys, certs, anonymous }
    }
}

/// The tenants of one server: the current snapshot, the reload machinery and the meter.
pub struct Tenancy {
    settings: TenancySettings,
    snapshot: ArcSwap<Snapshot>,
    last_text: Mutex<Option<String>>,
    pub usage: Usage,
    /// Reloads rejected since start.
    pub reload_failures: AtomicU64,
    /// Calls refused per (tenant, reason): `maas_tenant_rejected_total`. The tenant is "" when the
    /// caller could not be identified; reasons are the fixed names of [`Reject`].
    rejected: Mutex<BTreeMap<(Arc<str>, &'static str), u64>>,
}

/// Why a call was refused (the `reason` label of `maas_tenant_rejected_total`).
pub struct Reject;

impl Reject {
    pub const UNAUTHENTICATED: &'static str = "unauthenticated";
    pub const PERMISSION_DENIED: &'static str = "permission_denied";
    pub const MODEL_NOT_ALLOWED: &'static str = "model_not_allowed";
    pub const TOO_MANY_ROWS: &'static str = "rows_per_request";

    /// The reason of a refusal by authentication or a limit; None for other errors.
    pub fn of(e: &Error) -> Option<&'static str> {
        match e {
            Error::Unauthenticated => Some(Self::UNAUTHENTICATED),
            Error::PermissionDenied(_) => Some(Self::PERMISSION_DENIED),
            Error::RateLimited { limit, .. } => Some(limit),
            Error::ResourceExhausted(_) => Some(limits::CONCURRENT),
            Error::InvalidArgument(_) => Some(Self::TOO_MANY_ROWS),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Tenancy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenancy").field("file", &self.settings.file).finish_non_exhaustive()
    }
}

impl Tenancy {
    /// Reads the tenants file (a start-up failure if it is invalid) and opens the usage log.
    pub fn start(settings: TenancySettings) -> Result<Arc<Tenancy>, String> {
        let text = std::fs::read_to_string(&settings.file)
            .map_err(|e| format!("cannot read tenants file {}: {e}", settings.file.display()))?;
        let spec =
            config::parse(&text).map_err(|e| format!("invalid tenants file {}: {e}", settings.file.display()))?;
        let usage = Usage::new(settings.usage_log.clone())?;
        tracing::info!(file = %settings.file.display(), tenants = spec.tenants.len(), "tenants file loaded");
        Ok(Arc::new(Tenancy {
            snapshot: ArcSwap::from_pointee(Snapshot::build(spec, None)),
            last_text: Mutex::new(Some(text)),
            settings,
            usage,
            reload_failures: AtomicU64::new(0),
            rejected: Mutex::default(),
        }))
    }

    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// Re-reads the tenants file; a changed, valid file replaces the tenants, an invalid one is
    /// logged and counted and the old tenants stay.
    pub fn reload(&self, force: bool) {
        let file = &self.settings.file;
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(file = %file.display(), "cannot read the tenants file: {e}; keeping the current tenants");
                return;
            }
        };
        let mut last = self.last_text.lock().unwrap_or_else(|p| p.into_inner());
        if !force && last.as_deref() == Some(text.as_str()) {
            return;
        }
        match config::parse(&text) {
            Ok(spec) => {
                let n = spec.tenants.len();
                let old = self.snapshot.load_full();
                self.snapshot.store(Arc::new(Snapshot::build(spec, Some(&old))));
                tracing::info!(file = %file.display(), tenants = n, "tenants file reloaded");
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(file = %file.display(), "tenants file rejected: {e}; keeping the current tenants");
            }
        }
        *last = Some(text);
    }

    /// Polls the file (every `--tenant-config-file-poll-wait-seconds`), reloads on SIGHUP, and
    /// closes usage-log buckets as minutes end. Runs until aborted.
    pub async fn watch(self: Arc<Self>) {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| tracing::error!("cannot listen for SIGHUP: {e}"))
            .ok();
        let poll = self.settings.poll;
        let mut next_poll = tokio::time::Instant::now() + poll;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            tokio::select! {
                () = hangup => {
                    tracing::info!("SIGHUP: re-reading the tenants file");
                    self.reload(true);
                }
                _ = tick.tick() => {
                    self.usage.flush(false);
                    if !poll.is_zero() && tokio::time::Instant::now() >= next_poll {
                        next_poll = tokio::time::Instant::now() + poll;
                        self.reload(false);
                    }
                }
            }
        }
    }

    /// Counts a refused call of `tenant` ("" when unidentified).
    pub fn reject(&self, tenant: &str, reason: &'static str) {
        let mut r = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        match r.iter_mut().find(|((t, why), _)| &**t == tenant && *why == reason) {
            Some((_, n)) => *n += 1,
            None => {
                r.insert((Arc::from(tenant), reason), 1);
            }
        }
    }

    /// Refusals so far, sorted by tenant and reason.
    pub fn rejections(&self) -> Vec<(Arc<str>, &'static str, u64)> {
        let r = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        r.iter().map(|((t, why), n)| (Arc::clone(t), *why, *n)).collect()
    }

    /// Names of the configured tenants.
    pub fn tenant_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.snapshot.load().tenants.keys().cloned().collect();
        v.sort_unstable();
        v
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: Arc<Tenant>,
    /// The key used, if any (public, loggable).
    pub key_id: Option<Arc<str>>,
}

/// What the core notes about an inference call, for metering.
#[derive(Debug, Default)]
struct Note {
    model: Option<(Arc<str>, i64)>,
    rows: u64,
    request_bytes: u64,
    response_bytes: u64,
    compute_ns: u64,
    queue_ns: u64,
    code: Option<Code>,
    slots: Vec<Slot>,
}

/// The context of one authenticated call, task-local for its handler.
#[derive(Debug)]
pub struct RequestCtx {
    pub caller: Caller,
    pub tenancy: Arc<Tenancy>,
    /// An inference call (metered).
    metered: bool,
    note: Mutex<Note>,
}

tokio::task_local! {
    static CTX: Arc<RequestCtx>;
}

impl RequestCtx {
    pub fn new(caller: Caller, tenancy: Arc<Tenancy>, metered: bool) -> RequestCtx {
        RequestCtx { caller, tenancy, metered, note: Mutex::new(Note::default()) }
    }

    fn note(&self) -> std::sync::MutexGuard<'_, Note> {
        self.note.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with this context visible to the core.
    pub async fn scope<F: std::future::Future>(self: Arc<Self>, f: F) -> F::Output {
        CTX.scope(self, f).await
    }

    /// Meters the finished call (inference calls that named a served model). `code`: the answer's
    /// status, unless the core noted one.
    pub fn finish(&self, code: Option<Code>) {
        if !self.metered {
            return;
        }
        let mut n = self.note();
        n.slots.clear();
        let Some((model, version)) = n.model.clone() else { return };
        let code = n.code.or(code).unwrap_or(Code::Ok);
        let sample = Sample {
            code,
            rows: n.rows,
            request_bytes: n.request_bytes,
            response_bytes: n.response_bytes,
            compute_ns: n.compute_ns,
            queue_ns: n.queue_ns,
        };
        self.tenancy.usage.record(&self.caller.tenant.name, self.caller.key_id.as_ref(), &model, version, &sample);
    }
}

/// The caller of the current call, if tenancy is on and the call was authenticated.
pub fn current() -> Option<Arc<RequestCtx>> {
    CTX.try_with(Arc::clone).ok()
}

/// Whether the current caller may see `model` (always, without tenancy).
pub fn visible(model: &str) -> bool {
    CTX.try_with(|c| c.caller.tenant.models.allows(model)).unwrap_or(true)
}

/// Like [`visible`] for a model the caller named: a model outside the list is counted as a refusal
/// (`model_not_allowed`), then answered like a missing one.
pub fn allowed(model: &str) -> bool {
    CTX.try_with(|c| {
        let ok = c.caller.tenant.models.allows(model);
        if !ok {
            c.tenancy.reject(&c.caller.tenant.name, Reject::MODEL_NOT_ALLOWED);
        }
        ok
    })
    .unwrap_or(true)
}

/// The core resolved `model` `version` for the current call.
pub fn note_resolved(model: &str, version: i64) {
    let _ = CTX.try_with(|c| {
        if c.metered {
            c.note().model = Some((Arc::from(model), version));
        }
    });
}

/// The status code the front end answers with (REST: noted where the error is mapped).
pub fn note_code(code: Code) {
    let _ = CTX.try_with(|c| c.note().code = Some(code));
}

fn tensor_bytes(t: &crate::tensor::Tensor) -> u64 {
    match &t.data {
        TensorData::Raw(b) => b.len() as u64,
        TensorData::Strings(s) => s.iter().map(|b| b.len() as u64).sum(),
    }
}

/// Per-model limits of the current tenant for an inference on `model`: the model's own request
/// rate and concurrency where `model_limits` set them, and rows (the first dimension of the
/// request) against the model's rows limit, else the tenant's.
pub fn admit_inference(model: &str, version: i64, req: &InferRequest) -> Result<(), Error> {
    let Ok(ctx) = CTX.try_with(Arc::clone) else { return Ok(()) };
    let result = admit_model(&ctx, model, version, req);
    if let Err(e) = &result {
        if let Some(reason) = Reject::of(e) {
            ctx.tenancy.reject(&ctx.caller.tenant.name, reason);
        }
    }
    result
}

fn admit_model(ctx: &RequestCtx, model: &str, version: i64, req: &InferRequest) -> Result<(), Error> {
    let rows = req.inputs.first().and_then(|(_, t)| t.shape.first()).map_or(0, |&d| d.max(0) as u64);
    {
        let mut n = ctx.note();
        if ctx.metered {
            n.model = Some((Arc::from(model), version));
            n.rows = rows;
            n.request_bytes = req.inputs.iter().map(|(_, t)| tensor_bytes(t)).sum();
        }
    }
    let tenant = &ctx.caller.tenant;
    let own = tenant.model_limits.get(model);
    let who = || format!("{} for model '{model}'", tenant.who);
    if let Some(set) = own {
        set.check_rate(&who())?;
        if let Some(slot) = set.admit(&who())? {
            ctx.note().slots.push(slot);
        }
    }
    match own {
        Some(set) if set.limits.rows_per_minute.is_some() => set.check_rows(&who(), rows),
        _ => tenant.limits.check_rows(&tenant.who, rows),
    }
}

/// Meters a finished inference: response bytes, compute and queue time.
pub fn note_response(resp: &InferResponse) {
    let _ = CTX.try_with(|c| {
        if c.metered {
            let mut n = c.note();
            n.response_bytes = resp.outputs.iter().map(|(_, t)| tensor_bytes(t)).sum();
            n.compute_ns = u64::try_from(resp.timing.compute.as_nanos()).unwrap_or(u64::MAX);
            n.queue_ns = u64::try_from(resp.timing.queue.as_nanos()).unwrap_or(u64::MAX);
        }
    });
}

/// The usage answer for `tenant` ("" = the caller's own, or every tenant for an ADMIN).
pub fn usage_for(tenant: &str) -> Result<usage::Totals, Error> {
    let Some(ctx) = current() else { return Ok(Vec::new()) };
    let caller = &ctx.caller.tenant;
    let known = ctx.tenancy.tenant_names();
    if caller.admin {
        if tenant.is_empty() {
            return Ok(ctx.tenancy.usage.totals(None, &known));
        }
        if !known.iter().any(|k| k == tenant) {
            return Err(Error::NotFound(format!("tenant '{tenant}' is not in the tenants file")));
        }
        return Ok(ctx.tenancy.usage.totals(Some(tenant), &known));
    }
    if !tenant.is_empty() && tenant != &*caller.name {
        return Err(Error::PermissionDenied(format!(
            "usage of another tenant needs the ADMIN role; {} has the USER role",
            caller.who
        )));
    }
    Ok(ctx.tenancy.usage.totals(Some(&caller.name), &known))
}

/// gRPC `maas.usage.v1.UsageService`.
#[derive(Debug, Clone, Default)]
pub struct UsageService;

#[tonic::async_trait]
impl crate::proto::maas::usage::v1::usage_service_server::UsageService for UsageService {
    async fn get_usage(
        &self,
        request: tonic::Request<crate::proto::maas::usage::v1::GetUsageRequest>,
    ) -> Result<tonic::Response<crate::proto::maas::usage::v1::GetUsageResponse>, tonic::Status> {
        let totals = usage_for(&request.into_inner().tenant)?;
        Ok(tonic::Response::new(usage::totals_proto(totals)))
    }
}
