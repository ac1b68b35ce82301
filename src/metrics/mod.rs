//! Prometheus metrics under TF Serving's, Triton's and maas's own names.
//!
//! One [`Registry`] per server, owned by the model manager. Recording happens in the core: a front
//! end only starts a [`Call`] with the [`Api`] that carried the request, attaches the servable it
//! resolved, runs the request through [`Call::infer`] and hands the final result to [`Call::finish`];
//! the servable and the batcher measure their stages ([`Stages`]) and executions. On the request path
//! every record is a relaxed atomic add on series the servable already holds (created when the
//! version loaded): no lock, no map lookup, no allocation.
//!
//! The exposition ([`scrape`]) is hand-written text format 0.0.4 ([`encode`]) because the
//! compatibility names need what the exporter crates cannot print: `:`-mangled names, counters
//! without `_total`, and TF Serving's 6-significant-digit bucket bounds (`le="2.52873e+08"`).
//!
//! Cardinality is bounded: label values come from the repository (model names, versions) and fixed
//! enums only. A request that names no loaded version is counted under `model_name=""` and nowhere
//! else. The series of an unloaded version disappear once its last request has finished; a model's
//! TF Serving series disappear with its last loaded version.
pub mod call;
pub mod encode;
pub mod histogram;
pub mod http;
pub mod process;
pub mod registry;
pub mod render;

pub use call::{Call, Stages};
pub use encode::CONTENT_TYPE;
pub use registry::{Api, Reason, Registry, VersionMetrics};

use std::sync::{Arc, LazyLock};

/// The exposition of a server: its registry and its models' states.
pub fn scrape(manager: &crate::manager::ModelManager) -> String {
    render::render(manager.metrics(), &manager.index())
}

/// Series of servables that belong to no registry (loaded outside a server). Never exported.
pub fn detached() -> &'static Arc<VersionMetrics> {
    static DETACHED: LazyLock<Arc<VersionMetrics>> = LazyLock::new(VersionMetrics::detached);
    &DETACHED
}
