//! Command line (clap) and the validated configuration the server runs with.
use crate::manager::{ManagerConfig, ModelSource};
use crate::repository::config::{self as model_config, ModelConfig};
use crate::repository::object_store::{build_store, default_cache_dir, Env, ObjectStoreConfig};
use crate::repository::policy::VersionPolicy;
use crate::repository::uri::Location;
use crate::runtime::{BatchingConfig, Provider, RuntimeConfig};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// ONNX models over gRPC, wire-compatible with TensorFlow Serving.
#[derive(Debug, Parser)]
#[command(name = "maas", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log output on stderr: `text` (human-readable) or `json` (one JSON object per line with
    /// timestamp, level, target, message and fields, request_id included).
    #[arg(long, alias = "log_format", global = true, value_enum, default_value_t = crate::logging::LogFormat::Text, env = "MAAS_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: crate::logging::LogFormat,
}

// Parsed once at start; boxing the flags would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve every model of a model repository over gRPC.
    Serve(ServeArgs),
    /// Measure: closed-loop gRPC load against a running server (`load`), or the same model on
    /// ONNX Runtime in this process (`inprocess`).
    Bench(crate::bench::BenchArgs),
    /// Make a smaller, faster version of a model offline (int8 quantization, ONNX Runtime's graph
    /// pass), check it against the source with the accuracy guard, and publish it as a new version.
    /// Exit status: 0 published (or --dry-run passed), 1 refused by the guard, 2 error.
    Optimize(crate::optimize::OptimizeArgs),
    /// Print the models of a running server: versions, states, providers, load times and request
    /// counts (through its gRPC APIs; `--json` for scripts).
    Status(crate::status_cli::StatusArgs),
    /// API keys for the tenants file.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Prints a new token once, and the `keys { ... }` line (its SHA-256 digest) for the tenants file.
    Generate(KeysGenerateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct KeysGenerateArgs {
    /// The tenant the key is for (shown in the printed line's comment).
    #[arg(long, value_name = "NAME")]
    pub tenant: String,
    /// Key id: 10 characters [a-z0-9] (default: random).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Expiry, RFC 3339 (e.g. 2027-06-30T00:00:00Z).
    #[arg(long, value_name = "RFC3339")]
    pub expires: Option<String>,
}

/// Flags of `maas serve`. Where TensorFlow Serving has the same flag, its underscore spelling is
/// accepted too (e.g. `--enable_serialization_as_tensor_content`).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Model repository: <DIR>/<model>/<version>/model.onnx, version a positive integer; or an
    /// object-store prefix laid out the same way (s3://bucket/prefix, gs://, az://container/prefix,
    /// as://account/container/prefix, file://). Every directory is a model serving its latest
    /// version; models added or removed at runtime are picked up. Give this, --model-config-file,
    /// or --model-base-path.
    #[arg(long, alias = "model_repository", env = "MAAS_MODEL_REPOSITORY", value_name = "DIR|URI")]
    pub model_repository: Option<PathBuf>,

    /// TF Serving `models.config` (ModelServerConfig text format, model_platform "onnx"): names,
    /// base paths, version policies and labels. Relative base_path values are resolved against the
    /// file's directory.
    #[arg(long, alias = "model_config_file", value_name = "FILE")]
    pub model_config_file: Option<PathBuf>,

    /// Re-read --model-config-file every N seconds (0 = read once at start).
    #[arg(long, alias = "model_config_file_poll_wait_seconds", default_value_t = 0.0, value_name = "SECONDS")]
    pub model_config_file_poll_wait_seconds: f64,

    /// Single-model mode: the model's name (with --model-base-path).
    #[arg(long, alias = "model_name", default_value = "default", value_name = "NAME")]
    pub model_name: String,

    /// Single-model mode: the directory or object-store prefix holding the model's numbered
    /// versions (or KServe's bare <DIR>/model.onnx, served as version 1).
    #[arg(long, alias = "model_base_path", value_name = "DIR|URI")]
    pub model_base_path: Option<PathBuf>,

    /// Scan the repository for new, changed and removed versions every N seconds (0 = once at
    /// start). A version is loaded once its files are unchanged across two scans (two listings
    /// for an object store). Default: 1 for directories; object stores are listed every 30 s
    /// (with 10% jitter) unless this is given.
    #[arg(long, alias = "file_system_poll_wait_seconds", value_name = "SECONDS")]
    pub file_system_poll_wait_seconds: Option<f64>,

    /// Where versions from object stores are downloaded to (one directory per process).
    /// Default: $XDG_CACHE_HOME/maas/models (or ~/.cache/maas/models).
    #[arg(long, alias = "model_cache_dir", env = "MAAS_MODEL_CACHE_DIR", value_name = "DIR")]
    pub model_cache_dir: Option<PathBuf>,

    /// With no credentials in the environment, ask the cloud's instance-metadata service for them
    /// (AWS IMDS, GCP metadata server, Azure managed identity). Off: such a URI fails at start.
    #[arg(long, env = "MAAS_OBJECT_STORE_METADATA_CREDENTIALS", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub object_store_metadata_credentials: bool,

    /// Retries after a failed load (a version whose files change is always tried again).
    #[arg(long, alias = "max_num_load_retries", default_value_t = 5, value_name = "N")]
    pub max_num_load_retries: u32,

    /// Wait between load retries, in microseconds.
    #[arg(long, alias = "load_retry_interval_micros", default_value_t = 60_000_000, value_name = "MICROS")]
    pub load_retry_interval_micros: u64,

    /// Run each new version once on inputs synthesized from its signature before it takes traffic.
    #[arg(long, alias = "enable_model_warmup", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub enable_model_warmup: bool,

    /// Let a new version label point at a version that is not AVAILABLE yet.
    #[arg(long, alias = "allow_version_labels_for_unavailable_models")]
    pub allow_version_labels_for_unavailable_models: bool,

    /// Longest HandleReloadConfigRequest waits for the new config's models to load.
    #[arg(long, alias = "reload_config_timeout_seconds", default_value_t = 60.0, value_name = "SECONDS")]
    pub reload_config_timeout_seconds: f64,

    /// gRPC port (TensorFlow Serving's default). 0 picks a free port.
    #[arg(long, default_value_t = 8500)]
    pub port: u16,

    /// HTTP/REST port for TF Serving's REST API, KServe v2 REST, /healthz and /readyz
    /// (0 = off). Must differ from --port.
    #[arg(long, alias = "rest_api_port", default_value_t = 8501)]
    pub rest_api_port: u16,

    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0", value_name = "ADDR")]
    pub host: String,

    /// Path of libonnxruntime.so. If not given: $ORT_DYLIB_PATH, then the library that
    /// scripts/setup.sh puts in .ort/.
    #[arg(long, alias = "ort_lib", value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,

    /// Execution providers in priority order, comma separated: cpu, cuda, tensorrt.
    /// A GPU provider that cannot be registered fails the model's load unless --allow-cpu-fallback.
    #[arg(long, alias = "execution_providers", value_delimiter = ',', default_value = "cpu", value_name = "LIST")]
    pub execution_providers: Vec<Provider>,

    /// GPU device id for the cuda and tensorrt providers.
    #[arg(long, alias = "device_id", default_value_t = 0)]
    pub device_id: i32,

    /// Load models on CPU when a requested GPU provider cannot be registered (logged, and shown
    /// in the model's status message) instead of failing the load.
    #[arg(long, alias = "allow_cpu_fallback")]
    pub allow_cpu_fallback: bool,

    /// ONNX Runtime sessions per model version (concurrent inferences per version).
    /// 0 = number of CPU cores divided by --intra-op-threads (at least 1).
    #[arg(long, alias = "session_pool_size", default_value_t = 0)]
    pub session_pool_size: usize,

    /// Threads each session uses inside one operator (ONNX Runtime intra-op threads).
    #[arg(long, alias = "tensorflow_intra_op_parallelism", default_value_t = 1)]
    pub intra_op_threads: usize,

    /// Threads each session uses to run independent operators in parallel (inter-op threads).
    #[arg(long, alias = "tensorflow_inter_op_parallelism", default_value_t = 1)]
    pub inter_op_threads: usize,

    /// The sessions of a model version share one copy of its weights (CPU provider, two sessions or
    /// more): the model is optimized once and its initializers and pre-packed weights are held once.
    /// false = every session holds its own copy, as ONNX Runtime does by default.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub share_session_weights: bool,

    /// Requests per model version admitted at once (running or waiting for a session); beyond it
    /// requests get RESOURCE_EXHAUSTED at once instead of queueing. 0 = no bound.
    #[arg(long, alias = "max_in_flight_requests", default_value_t = 0, value_name = "N")]
    pub max_in_flight_requests: usize,

    /// Batch concurrent requests to each model version whose inputs and outputs all have a dynamic
    /// first dimension (other models run unbatched). Per model: `enable_batching` in its maas.pbtxt.
    #[arg(long, alias = "enable_batching", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub enable_batching: bool,

    /// TF Serving BatchingParameters in text format for --enable-batching: max_batch_size (default
    /// 64), batch_timeout_micros (0), max_enqueued_batches (100), num_batch_threads (one per
    /// session), allowed_batch_sizes, pad_variable_length_inputs.
    #[arg(long, alias = "batching_parameters_file", value_name = "FILE")]
    pub batching_parameters_file: Option<PathBuf>,

    /// Largest gRPC message accepted or sent, in bytes (gRPC's own default is 4 MiB).
    #[arg(long, alias = "max_message_size_bytes", default_value_t = 1 << 30, value_name = "BYTES")]
    pub max_message_size_bytes: usize,

    /// Largest total size of one request's decoded input tensors, in bytes (all inputs together,
    /// counting a broadcast value at its expanded size, strings by count and bytes, and batch
    /// padding). Larger requests get RESOURCE_EXHAUSTED / HTTP 413 before anything is allocated.
    /// Default: the --max-message-size-bytes value.
    #[arg(long, alias = "max_tensor_bytes", value_name = "BYTES")]
    pub max_tensor_bytes: Option<usize>,

    /// Times each recorded warmup request (`assets.extra/tf_serving_warmup_requests`) is replayed on
    /// every session before a version becomes AVAILABLE.
    #[arg(long, alias = "num_request_iterations_for_warmup", default_value_t = 1, value_name = "N")]
    pub num_request_iterations_for_warmup: u32,

    /// TensorRT engine cache root; one sub-directory per version key (files, ONNX Runtime version,
    /// provider options, device). Default: `$XDG_CACHE_HOME/maas/trt` (or `~/.cache/maas/trt`).
    #[arg(long, alias = "trt_engine_cache_dir", value_name = "DIR")]
    pub trt_engine_cache_dir: Option<PathBuf>,

    /// Where short inferences run: `auto` runs a version on the I/O thread (no hand-off to a blocking
    /// thread) when its measured runs are short (99th percentile under --inline-max-run-micros) and a
    /// session is free at once; `always` does so whenever a session is free; `never` runs every
    /// inference on a blocking thread. Per model: `inline_execution` in `maas.pbtxt`.
    #[arg(long, alias = "inline_execution", default_value = "auto", value_name = "auto|always|never",
          value_parser = crate::runtime::inline::InlineMode::parse)]
    pub inline_execution: crate::runtime::inline::InlineMode,

    /// The run time, in microseconds, under which a run counts as short for --inline-execution auto
    /// (per model: `inline_max_run_micros` in `maas.pbtxt`).
    #[arg(long, alias = "inline_max_run_micros", default_value_t = 50, value_name = "MICROS")]
    pub inline_max_run_micros: u64,

    /// Reply to Predict with raw `tensor_content` instead of typed `*_val` fields.
    #[arg(long, alias = "enable_serialization_as_tensor_content")]
    pub enable_serialization_as_tensor_content: bool,

    /// On SIGTERM/Ctrl-C, how long in-flight requests may take to finish before the remaining
    /// connections are closed.
    #[arg(long, alias = "drain_timeout_seconds", default_value_t = 30.0, value_name = "SECONDS")]
    pub drain_timeout_seconds: f64,

    /// TLS server certificate chain (PEM) for every listener (gRPC, REST, metrics).
    #[arg(long, value_name = "FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// TLS private key (PEM) for --tls-cert-file.
    #[arg(long, value_name = "FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// CA certificates (PEM) that client certificates must chain to (mTLS).
    #[arg(long, value_name = "FILE", requires = "tls_cert_file")]
    pub tls_client_ca_file: Option<PathBuf>,

    /// Client certificates: none, optional or required (default: required with --tls-client-ca-file).
    #[arg(long, value_enum, value_name = "MODE")]
    pub tls_client_auth: Option<crate::tls::ClientAuth>,

    /// TF Serving's SSLConfig text file (inline PEM server_key, server_cert, custom_ca, client_verify),
    /// applied to every listener.
    #[arg(long = "ssl_config_file", alias = "ssl-config-file", value_name = "FILE", conflicts_with = "tls_cert_file")]
    pub ssl_config_file: Option<PathBuf>,

    /// Longest a TLS handshake may take.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub tls_handshake_timeout_seconds: f64,

    /// Tenants file (text maas.TenancyConfig): keys, client certificates, model allow-lists, roles
    /// and limits. Without it every caller may use everything.
    #[arg(long, alias = "tenant_config_file", value_name = "FILE")]
    pub tenant_config_file: Option<PathBuf>,

    /// Re-read --tenant-config-file every N seconds (0 = only at start and on SIGHUP).
    #[arg(long, alias = "tenant_config_file_poll_wait_seconds", default_value_t = 10.0, value_name = "SECONDS")]
    pub tenant_config_file_poll_wait_seconds: f64,

    /// Usage records (JSON Lines, one per tenant, key, model, version and minute), appended when
    /// each minute closes and at shutdown. Needs --tenant-config-file.
    #[arg(long, alias = "usage_log_file", value_name = "FILE", requires = "tenant_config_file")]
    pub usage_log_file: Option<PathBuf>,

    /// Models loaded at the same time.
    #[arg(long, alias = "num_load_threads", default_value_t = 1, value_name = "N")]
    pub num_load_threads: usize,

    /// Write one access log line per request (target `maas::access`): request id, protocol, API,
    /// model, version, status, rows, bytes in/out, duration, peer. Never tensor contents or headers.
    #[arg(long, alias = "access_log")]
    pub access_log: bool,

    /// TF Serving MonitoringConfig (text format): `prometheus_config { enable: true path: "..." }`
    /// also serves the Prometheus metrics at that path (default /monitoring/prometheus/metrics) on
    /// the REST port. /metrics is always served.
    #[arg(long, alias = "monitoring_config_file", value_name = "FILE")]
    pub monitoring_config_file: Option<PathBuf>,

    /// Also serve the Prometheus metrics on this port, on its own listener (0 = off).
    #[arg(long, alias = "metrics_port", default_value_t = 0, value_name = "PORT")]
    pub metrics_port: u16,
}

/// Everything `server::serve` needs, already validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub source: ModelSource,
    pub manager: ManagerConfig,
    pub max_message_size_bytes: usize,
    pub tensor_content_output: bool,
    pub drain_timeout: Duration,
    /// The config file to re-read, and how often.
    pub model_config_file: Option<(PathBuf, Duration)>,
    pub reload_config_timeout: Duration,
    /// TLS for every listener (None = plaintext).
    pub tls: Option<crate::tls::TlsSettings>,
    /// Tenants (None = open to every caller).
    pub tenancy: Option<crate::tenancy::TenancySettings>,
    /// Where `--monitoring-config-file` also serves the metrics (besides /metrics).
    pub monitoring_path: Option<String>,
}

impl ServeConfig {
    /// Defaults for serving every model under `repo` (what `maas serve --model-repository repo` uses).
    pub fn new(repo: impl Into<PathBuf>) -> ServeConfig {
        ServeConfig::with_source(ModelSource::Repository(Location::Local(repo.into())))
    }

    pub fn with_source(source: ModelSource) -> ServeConfig {
        ServeConfig {
            source,
            manager: ManagerConfig::default(),
            max_message_size_bytes: 1 << 30,
            tensor_content_output: false,
            drain_timeout: Duration::from_secs(30),
            model_config_file: None,
            reload_config_timeout: Duration::from_secs(60),
            tls: None,
            tenancy: None,
            monitoring_path: None,
        }
    }
}

fn seconds(flag: &str, v: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|_| format!("{flag} must be a non-negative number of seconds, got {v}"))
}

/// Reads and validates a model config file.
pub fn read_model_config(file: &std::path::Path) -> Result<Vec<ModelConfig>, String> {
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("cannot read model config file {}: {e}", file.display()))?;
    let dir = file.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    model_config::parse_text(&text, &dir).map_err(|e| format!("invalid model config file {}: {e}", file.display()))
}

impl ServeArgs {
    pub fn to_config(&self) -> Result<ServeConfig, String> {
        if self.intra_op_threads == 0 || self.inter_op_threads == 0 {
            return Err("--intra-op-threads and --inter-op-threads must be at least 1".into());
        }
        if self.num_load_threads == 0 {
            return Err("--num-load-threads must be at least 1".into());
        }
        if self.execution_providers.is_empty() {
            return Err("--execution-providers needs at least one of cpu, cuda, tensorrt".into());
        }
        let drain_timeout = seconds("--drain-timeout-seconds", self.drain_timeout_seconds)?;
        let poll_flag =
            self.file_system_poll_wait_seconds.map(|v| seconds("--file-system-poll-wait-seconds", v)).transpose()?;
        let poll = poll_flag.unwrap_or(Duration::from_secs(1));
        let object_store = ObjectStoreConfig {
            env: Env::from_process(),
            metadata_credentials: self.object_store_metadata_credentials,
            cache_dir: self.model_cache_dir.clone().unwrap_or_else(default_cache_dir),
            poll_interval: match poll_flag {
                Some(p) => (!p.is_zero()).then_some(p),
                None => Some(Duration::from_secs(30)),
            },
            parallel_downloads: 4,
        };
        // An object store is checked now (credentials, endpoint; nothing is contacted), so a
        // misconfigured one fails at start with the URI named.
        let check = |location: Location| -> Result<Location, String> {
            if let Location::Remote(uri) = &location {
                build_store(uri, &object_store)?;
            }
            Ok(location)
        };
        let config_poll = seconds("--model-config-file-poll-wait-seconds", self.model_config_file_poll_wait_seconds)?;
        let reload_timeout = seconds("--reload-config-timeout-seconds", self.reload_config_timeout_seconds)?;
        let given = [self.model_repository.is_some(), self.model_config_file.is_some(), self.model_base_path.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err("give exactly one of --model-repository, --model-config-file, or --model-base-path \
                 (with --model-name)"
                .into());
        }
        let source = if let Some(repo) = &self.model_repository {
            let repo = Location::from_arg(repo).map_err(|e| format!("--model-repository: {e}"))?;
            if let Location::Local(dir) = &repo {
                if !dir.is_dir() {
                    return Err(format!(
                        "model repository {} is not a directory (expected <dir>/<model>/<version>/model.onnx)",
                        dir.display()
                    ));
                }
            }
            ModelSource::Repository(check(repo)?)
        } else if let Some(file) = &self.model_config_file {
            let models = read_model_config(file)?;
            for m in &models {
                check(m.base_path.clone())?;
            }
            ModelSource::List(models)
        } else {
            let base = self.model_base_path.clone().unwrap_or_default();
            let base = Location::from_arg(&base).map_err(|e| format!("--model-base-path: {e}"))?;
            ModelSource::List(vec![ModelConfig {
                name: self.model_name.clone(),
                base_path: check(base)?,
                policy: VersionPolicy::default(),
                labels: Default::default(),
            }])
        };
        let batching = match (&self.batching_parameters_file, self.enable_batching) {
            (Some(_), false) => {
                return Err("--batching-parameters-file needs --enable-batching (as in TensorFlow Serving)".into())
            }
            (Some(file), true) => Some(BatchingConfig::read(file)?),
            (None, true) => Some(BatchingConfig::default()),
            (None, false) => None,
        };
        Ok(ServeConfig {
            source,
            manager: ManagerConfig {
                runtime: RuntimeConfig {
                    providers: self.execution_providers.clone(),
                    device_id: self.device_id,
                    allow_cpu_fallback: self.allow_cpu_fallback,
                    pool_size: self.session_pool_size,
                    intra_op_threads: self.intra_op_threads,
                    inter_op_threads: self.inter_op_threads,
                    max_in_flight: self.max_in_flight_requests,
                    batching,
                    max_tensor_bytes: self.max_tensor_bytes.unwrap_or(self.max_message_size_bytes),
                    trt_engine_cache_dir: self.trt_engine_cache_dir.clone(),
                    graph_optimization: crate::runtime::GraphOptimization::All,
                    // per model, from maas.pbtxt
                    tensorrt: Default::default(),
                    share_weights: self.share_session_weights,
                    inline: crate::runtime::inline::InlineSettings {
                        mode: self.inline_execution,
                        max_run: Duration::from_micros(self.inline_max_run_micros),
                    },
                },
                num_load_threads: self.num_load_threads,
                max_load_retries: self.max_num_load_retries,
                load_retry_interval: Duration::from_micros(self.load_retry_interval_micros),
                enable_warmup: self.enable_model_warmup,
                warmup_iterations: self.num_request_iterations_for_warmup,
                allow_labels_for_unavailable: self.allow_version_labels_for_unavailable_models,
                poll_interval: (!poll.is_zero()).then_some(poll),
                object_store,
            },
            max_message_size_bytes: self.max_message_size_bytes,
            tensor_content_output: self.enable_serialization_as_tensor_content,
            drain_timeout,
            model_config_file: match &self.model_config_file {
                Some(f) if !config_poll.is_zero() => Some((f.clone(), config_poll)),
                _ => None,
            },
            reload_config_timeout: reload_timeout,
            tls: self.tls_settings()?,
            tenancy: match &self.tenant_config_file {
                None => None,
                Some(file) => Some(crate::tenancy::TenancySettings {
                    file: file.clone(),
                    poll: seconds("--tenant-config-file-poll-wait-seconds", self.tenant_config_file_poll_wait_seconds)?,
                    usage_log: self.usage_log_file.clone(),
                }),
            },
            monitoring_path: match &self.monitoring_config_file {
                Some(f) => crate::metrics::http::read_monitoring_config(f)?,
                None => None,
            },
        })
    }

    fn tls_settings(&self) -> Result<Option<crate::tls::TlsSettings>, String> {
        use crate::tls::{TlsSettings, TlsSource};
        let source = match (&self.tls_cert_file, &self.tls_key_file, &self.ssl_config_file) {
            (Some(cert), Some(key), None) => {
                TlsSource::Files { cert: cert.clone(), key: key.clone(), client_ca: self.tls_client_ca_file.clone() }
            }
            (None, None, Some(f)) => TlsSource::SslConfig(f.clone()),
            (None, None, None) => {
                if self.tls_client_auth.is_some() || self.tls_client_ca_file.is_some() {
                    return Err(
                        "--tls-client-auth and --tls-client-ca-file need --tls-cert-file and --tls-key-file".into()
                    );
                }
                return Ok(None);
            }
            _ => return Err("give --tls-cert-file with --tls-key-file, or --ssl_config_file".into()),
        };
        Ok(Some(TlsSettings {
            source,
            client_auth: self.tls_client_auth,
            handshake_timeout: seconds("--tls-handshake-timeout-seconds", self.tls_handshake_timeout_seconds)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<ServeConfig, String> {
        let mut argv = vec!["maas", "serve"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).map_err(|e| e.to_string())?.command {
            Command::Serve(a) => a.to_config(),
            _ => Err("not a serve command".into()),
        }
    }

    #[test]
    fn exactly_one_model_source() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let err = args(&[]).unwrap_err();
        assert!(
            err.starts_with("give exactly one of --model-repository, --model-config-file, or --model-base-path"),
            "{err}"
        );
        let err = args(&["--model-repository", d, "--model-base-path", d]).unwrap_err();
        assert!(err.starts_with("give exactly one of"), "{err}");
        let cfg = args(&["--model_name", "mnist", "--model_base_path", d]).unwrap();
        match cfg.source {
            ModelSource::List(l) => {
                assert_eq!(l.len(), 1);
                assert_eq!(l[0].name, "mnist");
                assert_eq!(l[0].base_path, Location::from(dir.path()));
                assert_eq!(l[0].policy, VersionPolicy::Latest(1));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tf_serving_flags_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let cfg = args(&["--model-repository", d]).unwrap();
        assert_eq!(cfg.manager.poll_interval, Some(Duration::from_secs(1)));
        assert_eq!(cfg.manager.max_load_retries, 5);
        assert_eq!(cfg.manager.load_retry_interval, Duration::from_secs(60));
        assert!(cfg.manager.enable_warmup);
        assert!(!cfg.manager.allow_labels_for_unavailable);
        let cfg = args(&[
            "--model_repository",
            d,
            "--file_system_poll_wait_seconds",
            "0",
            "--max_num_load_retries",
            "2",
            "--load_retry_interval_micros",
            "1500",
            "--enable_model_warmup=false",
            "--allow_version_labels_for_unavailable_models",
        ])
        .unwrap();
        assert_eq!(cfg.manager.poll_interval, None, "0 = scan once");
        assert_eq!(cfg.manager.max_load_retries, 2);
        assert_eq!(cfg.manager.load_retry_interval, Duration::from_micros(1500));
        assert!(!cfg.manager.enable_warmup);
        assert!(cfg.manager.allow_labels_for_unavailable);
    }

    #[test]
    fn batching_flags() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        assert_eq!(args(&["--model-repository", d]).unwrap().manager.runtime.batching, None);
        let on = args(&["--model-repository", d, "--enable_batching"]).unwrap();
        assert_eq!(on.manager.runtime.batching, Some(BatchingConfig::default()));
        let on = args(&["--model-repository", d, "--enable_batching=true"]).unwrap();
        assert_eq!(on.manager.runtime.batching, Some(BatchingConfig::default()));
        let f = dir.path().join("batching.txt");
        std::fs::write(&f, "max_batch_size { value: 8 } batch_timeout_micros { value: 250 }").unwrap();
        let fa = f.to_str().unwrap();
        let err = args(&["--model-repository", d, "--batching_parameters_file", fa]).unwrap_err();
        assert_eq!(err, "--batching-parameters-file needs --enable-batching (as in TensorFlow Serving)");
        let cfg = args(&["--model-repository", d, "--enable-batching", "--batching-parameters-file", fa]).unwrap();
        let b = cfg.manager.runtime.batching.unwrap();
        assert_eq!((b.max_batch_size, b.batch_timeout), (8, Duration::from_micros(250)));
        std::fs::write(&f, "max_batch_size { value: 0 }").unwrap();
        let err = args(&["--model-repository", d, "--enable-batching", "--batching-parameters-file", fa]).unwrap_err();
        assert_eq!(err, format!("invalid batching parameters file {fa}: max_batch_size must be at least 1, got 0"));
    }

    #[test]
    fn config_file_is_read_and_validated_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("models.config");
        std::fs::write(&f, r#"model_config_list { config { name: "a" base_path: "a" model_platform: "onnx" } }"#)
            .unwrap();
        let cfg =
            args(&["--model_config_file", f.to_str().unwrap(), "--model_config_file_poll_wait_seconds", "5"]).unwrap();
        match &cfg.source {
            ModelSource::List(l) => assert_eq!(l[0].base_path, Location::from(dir.path().join("a"))),
            other => panic!("{other:?}"),
        }
        assert_eq!(cfg.model_config_file, Some((f.clone(), Duration::from_secs(5))));
        std::fs::write(&f, r#"model_config_list { config { name: "a" base_path: "a" model_platform: "tensorflow" } }"#)
            .unwrap();
        let err = args(&["--model-config-file", f.to_str().unwrap()]).unwrap_err();
        assert!(
            err.starts_with(&format!("invalid model config file {}: model 'a' has model_platform", f.display())),
            "{err}"
        );
    }
}
