//! `maas status`: what a running server serves, for an operator's terminal (a table) or a script
//! (`--json`), through the standard gRPC APIs so it works against any maas:
//! KServe v2 `RepositoryIndex` (the models), TF Serving `GetModelStatus` (each version's state and
//! error), KServe v2 `ModelStatistics` (request counts). Execution providers and load times come from
//! maas's REST route `GET /maas/v1/models/{model}` when the REST port answers; otherwise they show as
//! `-`.
mod rest;
mod table;

use crate::bench::error_chain;
use crate::bench::load::code_name;
use crate::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::proto::inference::{ModelStatisticsRequest, RepositoryIndexRequest};
use crate::proto::tensorflow::serving::model_service_client::ModelServiceClient;
use crate::proto::tensorflow::serving::{model_version_status::State, GetModelStatusRequest, ModelSpec};
use clap::Args;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Flags of `maas status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The server's gRPC address.
    #[arg(long, default_value = "127.0.0.1:8500", value_name = "HOST:PORT")]
    pub address: String,

    /// The server's REST address, for execution providers and load times
    /// (`GET /maas/v1/models/{model}`). Default: the --address host, port 8501. When it does not
    /// answer, those columns show `-`.
    #[arg(long, value_name = "HOST:PORT")]
    pub rest_address: Option<String>,

    /// Only this model.
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,

    /// Print JSON (one object: {"address", "models": [...]}) instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Longest wait for the server (connection and each call).
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub timeout_seconds: f64,
}

/// One model version (or a model with no version) as printed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VersionRow {
    pub model: String,
    /// None: the model has no version (e.g. unloaded).
    pub version: Option<i64>,
    /// TF Serving's state name: START, LOADING, AVAILABLE, UNLOADING, END (or KServe v2's index
    /// state where GetModelStatus did not answer).
    pub state: String,
    /// The version's error or reason ("" when none).
    pub message: String,
    /// Execution providers actually registered (REST details; None = unknown).
    pub providers: Option<Vec<String>>,
    /// How long loading and warming up took, in seconds (REST details).
    pub load_seconds: Option<f64>,
    /// Inference requests (successes and failures) since the version loaded (v2 ModelStatistics).
    pub requests: Option<u64>,
    pub successes: Option<u64>,
    pub failures: Option<u64>,
    /// ONNX Runtime executions (fewer than requests when batching merges them).
    pub executions: Option<u64>,
    /// Time of the last inference, milliseconds since the Unix epoch (0 = never).
    pub last_inference_ms: Option<u64>,
}

/// Everything `maas status` prints.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub address: String,
    /// The REST address asked for providers and load times, and whether it answered.
    pub rest_address: String,
    pub rest_details: bool,
    pub models: Vec<VersionRow>,
}

/// Runs `maas status`: prints the report on stdout. `Err`: the message for stderr (exit code 2).
pub fn run(args: &StatusArgs) -> Result<(), String> {
    let timeout = Duration::try_from_secs_f64(args.timeout_seconds).ok().filter(|d| !d.is_zero()).ok_or_else(|| {
        format!("--timeout-seconds must be a positive number of seconds, got {}", args.timeout_seconds)
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let report = runtime.block_on(gather(args, timeout))?;
    let text = if args.json {
        serde_json::to_string_pretty(&report).map_err(|e| format!("cannot write JSON: {e}"))? + "\n"
    } else {
        table::render(&report)
    };
    use std::io::Write;
    std::io::stdout().write_all(text.as_bytes()).map_err(|e| format!("cannot write to stdout: {e}"))
}

/// The REST address to ask when --rest-address is not given: the gRPC host, port 8501.
pub fn default_rest_address(grpc: &str) -> String {
    let hostport = grpc.rsplit("://").next().unwrap_or(grpc);
    let host = match hostport.rsplit_once(':') {
        Some((h, _)) if !h.is_empty() => h,
        _ => hostport,
    };
    format!("{host}:8501")
}

fn status_error(what: &str, address: &str, s: &tonic::Status) -> String {
    let mut m = s.message().to_string();
    if let Some(src) = std::error::Error::source(s) {
        m = format!("{m}: {}", error_chain(src));
    }
    format!("{what} at {address} failed: {}: {m}", code_name(s.code()))
}

fn state_name(state: i32) -> String {
    match State::try_from(state) {
        Ok(State::Unknown) | Err(_) => format!("UNKNOWN({state})"),
        Ok(s) => s.as_str_name().to_string(),
    }
}

/// Asks the server at `args.address` (and its REST port) for the report.
pub async fn gather(args: &StatusArgs, timeout: Duration) -> Result<StatusReport, String> {
    let address = args.address.as_str();
    let uri = if address.contains("://") { address.to_string() } else { format!("http://{address}") };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| format!("--address {address} is not HOST:PORT: {}", error_chain(&e)))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel: Channel =
        endpoint.connect().await.map_err(|e| format!("cannot connect to {address}: {}", error_chain(&e)))?;
    let mut v2 = GrpcInferenceServiceClient::new(channel.clone());
    let mut tf = ModelServiceClient::new(channel);

    let index = v2
        .repository_index(RepositoryIndexRequest { repository_name: String::new(), ready: false })
        .await
        .map_err(|s| status_error("RepositoryIndex", address, &s))?
        .into_inner()
        .models;
    // Model -> the index's versions (name order).
    let mut models: BTreeMap<String, Vec<(Option<i64>, String, String)>> = BTreeMap::new();
    for m in index {
        let version = m.version.parse::<i64>().ok();
        models.entry(m.name).or_default().push((version, m.state, m.reason));
    }
    if let Some(only) = &args.model {
        if !models.contains_key(only) {
            let known: Vec<&str> = models.keys().map(String::as_str).collect();
            return Err(format!(
                "model '{only}' is not served by {address}; it serves: {}",
                if known.is_empty() { "no models".to_string() } else { known.join(", ") }
            ));
        }
        models.retain(|name, _| name == only);
    }

    let stats = v2
        .model_statistics(ModelStatisticsRequest {
            name: args.model.clone().unwrap_or_default(),
            version: String::new(),
        })
        .await
        .map(|r| r.into_inner().model_stats)
        // A server without statistics still gets its table, without counts.
        .unwrap_or_default();
    let stats: HashMap<(String, String), _> =
        stats.into_iter().map(|s| ((s.name.clone(), s.version.clone()), s)).collect();

    let rest_address = args.rest_address.clone().unwrap_or_else(|| default_rest_address(address));
    let mut rest_details = false;
    let mut rows = Vec::new();
    for (name, indexed) in &models {
        // The state of each version as TF Serving reports it; the index where that fails.
        let tf_status = tf
            .get_model_status(GetModelStatusRequest {
                model_spec: Some(ModelSpec { name: name.clone(), ..Default::default() }),
            })
            .await;
        let mut versions: Vec<VersionRow> = match tf_status {
            Ok(r) => r
                .into_inner()
                .model_version_status
                .into_iter()
                .map(|v| VersionRow {
                    model: name.clone(),
                    version: Some(v.version),
                    state: state_name(v.state),
                    message: v.status.map(|s| s.error_message).unwrap_or_default(),
                    ..Default::default()
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        for (version, state, reason) in indexed {
            if versions.iter().any(|r| r.version == *version && version.is_some()) {
                continue;
            }
            if version.is_none() && !versions.is_empty() {
                continue;
            }
            versions.push(VersionRow {
                model: name.clone(),
                version: *version,
                state: state.clone(),
                message: reason.clone(),
                ..Default::default()
            });
        }
        versions.sort_by_key(|r| r.version);
        let details = rest::model_details(&rest_address, name, timeout).await;
        rest_details |= details.is_some();
        for row in &mut versions {
            if let Some(v) = row.version {
                if let Some(s) = stats.get(&(name.clone(), v.to_string())) {
                    let st = s.inference_stats.unwrap_or_default();
                    let ok = st.success.map_or(s.inference_count, |d| d.count);
                    let failed = st.fail.map_or(0, |d| d.count);
                    row.successes = Some(ok);
                    row.failures = Some(failed);
                    row.requests = Some(ok + failed);
                    row.executions = Some(s.execution_count);
                    row.last_inference_ms = Some(s.last_inference);
                }
                if let Some(d) = details.as_ref().and_then(|d| d.get(&v)) {
                    row.providers.clone_from(&d.providers);
                    row.load_seconds = d.load_seconds;
                }
            }
        }
        rows.extend(versions);
    }
    Ok(StatusReport { address: address.to_string(), rest_address, rest_details, models: rows })
}

#[cfg(test)]
mod tests {
    #[test]
    fn rest_address_defaults_to_the_grpc_host() {
        assert_eq!(super::default_rest_address("127.0.0.1:8500"), "127.0.0.1:8501");
        assert_eq!(super::default_rest_address("http://models.internal:9000"), "models.internal:8501");
        assert_eq!(super::default_rest_address("[::1]:8500"), "[::1]:8501");
        assert_eq!(super::default_rest_address("host"), "host:8501");
    }
}
