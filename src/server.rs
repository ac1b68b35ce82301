//! The gRPC server: TF Serving services, health (`grpc.health.v1`), reflection (v1 and v1alpha),
//! startup loading and graceful shutdown.
use crate::api::kserve_grpc::KServeGrpc;
use crate::api::tfserving::TfServing;
use crate::config::ServeConfig;
use crate::manager::ModelManager;
use crate::proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::proto::tensorflow::serving::model_service_server::ModelServiceServer;
use crate::proto::tensorflow::serving::prediction_service_server::PredictionServiceServer;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tonic::server::NamedService;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

type PredictionSvc = PredictionServiceServer<TfServing>;
type ModelSvc = ModelServiceServer<TfServing>;
type InferenceSvc = GrpcInferenceServiceServer<KServeGrpc>;

/// Service names whose health is reported: "" (the whole server) and each API service. They are
/// SERVING once the initial models are loaded (the readiness probe).
pub const HEALTH_SERVICES: [&str; 4] = ["", PredictionSvc::NAME, ModelSvc::NAME, InferenceSvc::NAME];

/// The health service name for a liveness probe: SERVING from the moment the port answers (model
/// loading does not hold it back), NOT_SERVING once shutdown begins.
pub const LIVENESS_SERVICE: &str = "liveness";

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    for name in HEALTH_SERVICES {
        reporter.set_service_status(name, status).await;
    }
}

/// Serves on `listener` until `shutdown` completes, then drains: health goes NOT_SERVING, new
/// connections are refused, in-flight requests finish, and the function returns.
///
/// Health is NOT_SERVING until the initial models have been loaded (or have failed to load: a model
/// that fails does not hold the others back); the port answers from the start.
pub async fn serve(
    cfg: ServeConfig,
    env: &'static ort::environment::Environment,
    listener: TcpListener,
    rest: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    serve_with_metrics(cfg, env, listener, rest, None, shutdown).await
}

/// Like [`serve`], also serving the Prometheus metrics on `metrics` (`--metrics-port`, with the REST
/// port's TLS).
pub async fn serve_with_metrics(
    cfg: ServeConfig,
    env: &'static ort::environment::Environment,
    listener: TcpListener,
    rest: Option<TcpListener>,
    metrics: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    // TLS and tenants are read and checked before anything is served: any problem is a start-up
    // failure, never a plaintext or open fallback.
    let tls = cfg.tls.clone().map(crate::tls::reload::TlsState::start).transpose()?;
    let tenancy = cfg.tenancy.clone().map(crate::tenancy::Tenancy::start).transpose()?;
    if tenancy.is_none() && listener.local_addr().is_ok_and(|a| !a.ip().is_loopback()) {
        tracing::warn!("no --tenant-config-file: every caller that reaches this non-loopback address may use every model and admin API");
    }
    let handshake_timeout = cfg.tls.as_ref().map_or(std::time::Duration::from_secs(10), |t| t.handshake_timeout);
    let tls_watch = tls.clone().map(|t| tokio::spawn(t.watch()));
    let tenancy_watch = tenancy.clone().map(|t| tokio::spawn(t.watch()));
    let manager = Arc::new(ModelManager::new(env, cfg.manager.clone(), cfg.source.clone()));
    if let Some(t) = &tenancy {
        manager.metrics().attach_tenancy(Arc::clone(t));
    }
    let max_tensor_bytes = cfg.manager.runtime.max_tensor_bytes;
    let api = TfServing::new(Arc::clone(&manager), cfg.tensor_content_output, cfg.reload_config_timeout)
        .with_max_tensor_bytes(max_tensor_bytes);

    let (reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;
    reporter.set_service_status(LIVENESS_SERVICE, ServingStatus::Serving).await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("cannot build the reflection service: {e}"))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| format!("cannot build the reflection service: {e}"))?;

    let max = cfg.max_message_size_bytes;
    let prediction =
        PredictionServiceServer::new(api.clone()).max_decoding_message_size(max).max_encoding_message_size(max);
    let model = ModelServiceServer::new(api).max_decoding_message_size(max).max_encoding_message_size(max);
    let kserve =
        KServeGrpc::new(Arc::clone(&manager), cfg.reload_config_timeout).with_max_tensor_bytes(max_tensor_bytes);
    let inference =
        GrpcInferenceServiceServer::new(kserve).max_decoding_message_size(max).max_encoding_message_size(max);

    // Load the initial models in the background; flip health to SERVING when that pass is done,
    // then keep watching the repository.
    let loader = {
        let (manager, reporter) = (Arc::clone(&manager), reporter.clone());
        tokio::spawn(async move {
            manager.initial_load().await;
            tracing::info!(models = manager.model_names().len(), "initial models loaded; serving");
            set_health(&reporter, ServingStatus::Serving).await;
            manager.watch().await;
        })
    };
    let config_poller = cfg.model_config_file.clone().map(|(file, period)| {
        let manager = Arc::clone(&manager);
        tokio::spawn(async move { poll_config_file(manager, file, period).await })
    });

    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, "maas gRPC server listening");
    let drain_reporter = reporter.clone();
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    // REST stops accepting when the drain begins, like gRPC.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let rest_task = match rest {
        Some(rest_listener) => {
            let rest_addr = rest_listener.local_addr().map_err(|e| e.to_string())?;
            tracing::info!(addr = %rest_addr, "maas REST server listening");
            let router = crate::api::rest::router_with_tenancy(
                Arc::clone(&manager),
                cfg.max_message_size_bytes,
                max_tensor_bytes,
                tenancy.clone(),
            );
            let router = crate::metrics::http::with_path(router, cfg.monitoring_path.as_deref());
            let conns =
                crate::tls::accept(rest_listener, tls.as_ref().map(|t| Arc::clone(&t.rest)), handshake_timeout, "REST");
            let rest_listener = crate::tls::ConnListener::new(conns, rest_addr);
            let mut stop = stop_rx.clone();
            Some(tokio::spawn(async move {
                let graceful = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(e) =
                    axum::serve(rest_listener, router.into_make_service_with_connect_info::<crate::tls::PeerInfo>())
                        .with_graceful_shutdown(graceful)
                        .await
                {
                    tracing::error!("REST server error: {e}");
                }
            }))
        }
        None => None,
    };
    let metrics_task = match metrics {
        Some(l) => {
            let addr = l.local_addr().map_err(|e| e.to_string())?;
            tracing::info!(%addr, "maas metrics server listening");
            let router = crate::metrics::http::metrics_router(&manager, cfg.monitoring_path.as_deref());
            let conns = crate::tls::accept(l, tls.as_ref().map(|t| Arc::clone(&t.rest)), handshake_timeout, "metrics");
            let l = crate::tls::ConnListener::new(conns, addr);
            let mut stop = stop_rx.clone();
            let graceful = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            Some(tokio::spawn(async move {
                if let Err(e) = axum::serve(l, router).with_graceful_shutdown(graceful).await {
                    tracing::error!("metrics server error: {e}");
                }
            }))
        }
        None => None,
    };
    // Nagle's algorithm is off on every accepted connection (otherwise a reply larger than one
    // segment waits for the client's delayed ACK, ~40 ms); TLS handshakes run in their own tasks.
    let incoming = tokio_stream::StreamExt::map(
        ReceiverStream::new(crate::tls::accept(
            listener,
            tls.as_ref().map(|t| Arc::clone(&t.grpc)),
            handshake_timeout,
            "gRPC",
        )),
        Ok::<_, std::io::Error>,
    );
    let server = tonic::transport::Server::builder()
        .layer(crate::logging::grpc::GrpcRequestLayer)
        .layer(crate::tenancy::auth::GrpcAuthLayer(tenancy.clone()))
        .add_service(health_service)
        .add_service(crate::proto::maas::usage::v1::usage_service_server::UsageServiceServer::new(
            crate::tenancy::UsageService,
        ))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(prediction)
        .add_service(model)
        .add_service(inference)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            tracing::info!("shutting down: health NOT_SERVING, finishing in-flight requests");
            set_health(&drain_reporter, ServingStatus::NotServing).await;
            drain_reporter.set_service_status(LIVENESS_SERVICE, ServingStatus::NotServing).await;
            let _ = stop_tx.send(true);
            let _ = drain_tx.send(());
        });
    // In-flight requests get `drain_timeout` to finish; streams that never end (e.g. Health/Watch)
    // must not keep the process alive forever.
    let drain_timeout = cfg.drain_timeout;
    let drain_deadline = async move {
        match drain_rx.await {
            Ok(()) => tokio::time::sleep(drain_timeout).await,
            Err(_) => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        r = server => r.map_err(|e| format!("gRPC server error: {e}")),
        () = drain_deadline => {
            tracing::warn!(timeout_s = drain_timeout.as_secs_f64(), "drain timeout: closing the remaining connections");
            Ok(())
        }
    };
    if let Some(t) = rest_task {
        // Bounded like the gRPC drain.
        let _ = tokio::time::timeout(cfg.drain_timeout, t).await;
    }
    if let Some(t) = metrics_task {
        let _ = tokio::time::timeout(cfg.drain_timeout, t).await;
    }
    loader.abort();
    if let Some(p) = config_poller {
        p.abort();
    }
    for t in [tls_watch, tenancy_watch].into_iter().flatten() {
        t.abort();
    }
    if let Some(t) = &tenancy {
        // The open usage bucket is appended now: a SIGTERM loses nothing.
        t.usage.flush(true);
    }
    tracing::info!("server stopped");
    result
}

/// Re-reads the model config file every `period`; a changed, valid file replaces the model list.
/// An invalid one is logged and ignored: the running config keeps serving.
async fn poll_config_file(manager: Arc<ModelManager>, file: std::path::PathBuf, period: std::time::Duration) {
    let mut last = std::fs::read_to_string(&file).ok();
    loop {
        tokio::time::sleep(period).await;
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(file = %file.display(), "cannot read the model config file: {e}; keeping the current config");
                continue;
            }
        };
        if last.as_deref() == Some(text.as_str()) {
            continue;
        }
        last = Some(text);
        match crate::config::read_model_config(&file) {
            Ok(models) => match manager.set_models(models, true) {
                Ok(()) => tracing::info!(file = %file.display(), "model config file changed; applied"),
                Err(e) => {
                    tracing::error!(file = %file.display(), "model config file rejected: {e}; keeping the current config")
                }
            },
            Err(e) => tracing::error!("{e}; keeping the current config"),
        }
    }
}
