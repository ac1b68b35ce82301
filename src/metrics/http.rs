//! Where the exposition is served: `GET /metrics` on the REST port, the path of TF Serving's
//! `--monitoring_config_file`, and `--metrics-port`.
use super::encode::CONTENT_TYPE;
use crate::manager::ModelManager;
use crate::proto::tensorflow::serving::MonitoringConfig;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use std::path::Path;
use std::sync::Arc;

/// The path every maas serves the exposition on.
pub const METRICS_PATH: &str = "/metrics";
/// TF Serving's path when `prometheus_config` names none.
pub const TF_SERVING_PATH: &str = "/monitoring/prometheus/metrics";

/// `GET` handler: the exposition of the manager's registry.
pub async fn scrape(State(manager): State<Arc<ModelManager>>) -> Response {
    let body = super::scrape(&manager);
    (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

/// `router` with the exposition also at `path`: a request for `path` goes through `router` as a
/// request for `/metrics`, so every layer of `router` (request ids, access log, tenancy) treats both
/// alike; `path` is matched first, so it can never collide with a route of `router`.
pub fn with_path(router: Router, path: Option<&str>) -> Router {
    let Some(path) = path.filter(|p| *p != METRICS_PATH) else {
        return router;
    };
    let inner = router.clone();
    let forward = move |mut req: Request| {
        let mut inner = inner.clone();
        async move {
            *req.uri_mut() = Uri::from_static(METRICS_PATH);
            match tower_service::Service::call(&mut inner, req).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
    };
    Router::new().route(path, any(forward)).fallback_service(router)
}

/// The router of `--metrics-port`: `/metrics` and the monitoring config's path; 404 elsewhere.
pub fn metrics_router(manager: &Arc<ModelManager>, path: Option<&str>) -> Router {
    let router = Router::new()
        .route(METRICS_PATH, get(scrape))
        .fallback(|uri: Uri| async move {
            let body = format!("no route for {}: metrics are served at {METRICS_PATH}\n", uri.path());
            (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body)
        })
        .with_state(Arc::clone(manager));
    with_path(router, path)
}

/// Reads TF Serving's `MonitoringConfig` text file: the Prometheus path when enabled (its `path`, or
/// TF Serving's default), None when disabled.
pub fn read_monitoring_config(file: &Path) -> Result<Option<String>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read monitoring config file {}: {e}", file.display()))?;
    parse_monitoring_config(&text).map_err(|e| format!("invalid monitoring config file {}: {e}", file.display()))
}

/// The Prometheus path of a `MonitoringConfig` in text format (None when not enabled).
pub fn parse_monitoring_config(text: &str) -> Result<Option<String>, String> {
    let cfg: MonitoringConfig =
        crate::repository::config::parse_text_message("tensorflow.serving.MonitoringConfig", text)?;
    let Some(p) = cfg.prometheus_config.filter(|p| p.enable) else {
        return Ok(None);
    };
    let path = if p.path.is_empty() { TF_SERVING_PATH.to_string() } else { p.path };
    if !path.starts_with('/') || path.contains(['{', '}', '*', '?', '#']) || path.chars().any(char::is_whitespace) {
        return Err(format!(
            "prometheus_config.path must be an absolute URL path without {{, }}, *, ?, # or spaces, got \"{path}\""
        ));
    }
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitoring_config() {
        let on = parse_monitoring_config("prometheus_config { enable: true path: \"/monitoring/prometheus/metrics\" }");
        assert_eq!(on, Ok(Some(TF_SERVING_PATH.to_string())));
        assert_eq!(parse_monitoring_config("prometheus_config { enable: true }"), Ok(Some(TF_SERVING_PATH.into())));
        assert_eq!(parse_monitoring_config("prometheus_config { enable: true path: \"/m\" }"), Ok(Some("/m".into())));
        assert_eq!(parse_monitoring_config("prometheus_config { enable: false path: \"/m\" }"), Ok(None));
        assert_eq!(parse_monitoring_config(""), Ok(None));
        assert_eq!(
            parse_monitoring_config("prometheus_config { enable: true path: \"m\" }"),
            Err("prometheus_config.path must be an absolute URL path without {, }, *, ?, # or spaces, got \"m\"".into())
        );
        let err = parse_monitoring_config("prometheus_config { enabled: true }").unwrap_err();
        assert!(err.starts_with("syntax error at line 1, column 21"), "{err}");
    }

    #[test]
    fn monitoring_config_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.config");
        let err = read_monitoring_config(&missing).unwrap_err();
        assert!(err.starts_with(&format!("cannot read monitoring config file {}: ", missing.display())), "{err}");
        let bad = dir.path().join("bad.config");
        std::fs::write(&bad, "prometheus_config { enable: maybe }").unwrap();
        let err = read_monitoring_config(&bad).unwrap_err();
        assert!(err.starts_with(&format!("invalid monitoring config file {}: syntax error", bad.display())), "{err}");
        std::fs::write(&bad, "prometheus_config { enable: true path: \"/prom\" }").unwrap();
        assert_eq!(read_monitoring_config(&bad), Ok(Some("/prom".into())));
    }
}
