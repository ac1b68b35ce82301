//! Logging: the process's log output (`--log-format text|json`, on stderr), the access log
//! (`--access-log`), and per-request context: request ids (`x-request-id`), W3C `traceparent`, and the
//! request span that puts them on every log line of a request.
//!
//! One layer per transport does the request part: [`grpc::GrpcRequestLayer`] (tower, around every
//! gRPC service) and [`rest::rest_request_middleware`] (axum, around every REST route).
pub mod access;
pub mod grpc;
pub mod json;
pub mod request;
pub mod rest;

pub use access::{note_model, note_servable};
pub use request::{RequestId, REQUEST_ID_HEADER};

use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (tracing's default format; colored on a terminal).
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, message and every field, span fields
    /// (request_id, trace_id, span_id) included, at the top level.
    Json,
}

/// The filter: `RUST_LOG` if set, else `info,ort=warn`; the access log target is switched on or off by
/// `access_log` whatever `RUST_LOG` says.
pub fn filter(access_log: bool) -> EnvFilter {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    let access = if access_log { "maas::access=info" } else { "maas::access=off" };
    match access.parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    }
}

/// Installs the process's logger, writing to stderr.
pub fn init(format: LogFormat, access_log: bool) {
    let builder = tracing_subscriber::fmt().with_env_filter(filter(access_log)).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => {
            builder.with_ansi(false).fmt_fields(json::JsonSpanFields).event_format(json::JsonLines).init()
        }
    }
}
