//! The REST server's request middleware (one axum middleware around every route and the fallbacks):
//! request id and trace context in, `x-request-id` response header out (errors included), the request
//! span around the whole request, and the access line.
use super::access::{self, AccessBody, AccessRecord, CountIn, Outcome};
use super::request::{RequestId, RequestIds, REQUEST_ID_HEADER};
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// Add with `router.layer(axum::middleware::from_fn(rest_request_middleware))`.
pub async fn rest_request_middleware(mut req: Request, next: Next) -> Response {
    let ids = RequestIds::from_headers(req.headers());
    let span = ids.span();
    let id_value = ids.header_value();
    req.extensions_mut().insert(RequestId(ids.request_id));
    let record = access::enabled().then(|| {
        let peer = req.extensions().get::<ConnectInfo<crate::tls::PeerInfo>>().and_then(|c| c.0.remote);
        let (api, model) = rest_api(req.method(), req.uri().path());
        let mut r = AccessRecord::new(span.clone(), "rest", api.to_string(), peer);
        r.path_model = model;
        r
    });
    let mut resp = match &record {
        Some(r) => {
            let notes = std::sync::Arc::clone(&r.notes);
            let req = req.map(|b| Body::new(CountIn::new(b, std::sync::Arc::clone(&notes))));
            access::with_notes(notes, next.run(req)).instrument(span).await
        }
        None => next.run(req).instrument(span).await,
    };
    resp.headers_mut().insert(REQUEST_ID_HEADER, id_value);
    match record {
        Some(mut r) => {
            r.outcome = Some(Outcome::Http(resp.status().as_u16()));
            resp.map(|b| Body::new(AccessBody::new(b, Some(r))))
        }
        None => resp,
    }
}

/// The API a REST request calls, and the model (and version) its path names.
///
/// TF Serving REST: `predict`, `classify`, `regress`, `model_status`, `model_metadata`; KServe v2
/// REST: `infer`, `model_metadata`, `model_ready`, `server_metadata`, `server_live`, `server_ready`;
/// `healthz`, `readyz`; maas's status route `maas_model_status`; anything else `other`.
pub fn rest_api(method: &http::Method, path: &str) -> (&'static str, Option<(String, Option<i64>)>) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let model = |name: &str, version: Option<&str>| {
        let v = version.and_then(|v| v.parse::<i64>().ok());
        (!name.is_empty()).then(|| (name.to_string(), v))
    };
    let post = method == http::Method::POST;
    match parts.as_slice() {
        ["healthz"] => ("healthz", None),
        ["readyz"] => ("readyz", None),
        ["maas", "v1", "models", name] => ("maas_model_status", model(name, None)),
        ["v2"] => ("server_metadata", None),
        ["v2", "health", "live"] => ("server_live", None),
        ["v2", "health", "ready"] => ("server_ready", None),
        ["v2", "models", name] => ("model_metadata", model(name, None)),
        ["v2", "models", name, "ready"] => ("model_ready", model(name, None)),
        ["v2", "models", name, "infer"] => ("infer", model(name, None)),
        ["v2", "models", name, "versions", v] => ("model_metadata", model(name, Some(v))),
        ["v2", "models", name, "versions", v, "ready"] => ("model_ready", model(name, Some(v))),
        ["v2", "models", name, "versions", v, "infer"] => ("infer", model(name, Some(v))),
        ["v1", "models", rest @ ..] if !rest.is_empty() => {
            // The verb is on the last segment: /v1/models/m[/versions/v|/labels/l]:predict.
            let last = rest[rest.len() - 1];
            let (last, verb) = match last.rfind(':') {
                Some(i) if post => (&last[..i], &last[i + 1..]),
                _ => (last, ""),
            };
            let api = match (post, verb, rest.last() == Some(&"metadata")) {
                (true, "predict", _) => "predict",
                (true, "classify", _) => "classify",
                (true, "regress", _) => "regress",
                (true, _, _) => "other",
                (false, _, true) => "model_metadata",
                (false, _, false) => "model_status",
            };
            let name = if rest.len() == 1 { last } else { rest[0] };
            let version = match rest {
                [_, "versions", _, ..] if rest.len() == 3 => Some(last),
                [_, "versions", v, ..] => Some(*v),
                _ => None,
            };
            (api, model(name, version))
        }
        _ => ("other", None),
    }
}

#[cfg(test)]
mod tests {
    use super::rest_api;
    use http::Method;

    fn m(name: &str, v: Option<i64>) -> Option<(String, Option<i64>)> {
        Some((name.to_string(), v))
    }

    #[test]
    fn rest_apis() {
        assert_eq!(rest_api(&Method::POST, "/v1/models/iris:predict"), ("predict", m("iris", None)));
        assert_eq!(rest_api(&Method::POST, "/v1/models/iris/versions/3:predict"), ("predict", m("iris", Some(3))));
        assert_eq!(rest_api(&Method::POST, "/v1/models/iris/labels/stable:classify"), ("classify", m("iris", None)));
        assert_eq!(rest_api(&Method::GET, "/v1/models/iris"), ("model_status", m("iris", None)));
        assert_eq!(rest_api(&Method::GET, "/v1/models/iris/versions/2"), ("model_status", m("iris", Some(2))));
        assert_eq!(
            rest_api(&Method::GET, "/v1/models/iris/versions/2/metadata"),
            ("model_metadata", m("iris", Some(2)))
        );
        assert_eq!(rest_api(&Method::GET, "/v1/models/iris/metadata"), ("model_metadata", m("iris", None)));
        assert_eq!(rest_api(&Method::POST, "/v2/models/iris/infer"), ("infer", m("iris", None)));
        assert_eq!(rest_api(&Method::POST, "/v2/models/iris/versions/1/infer"), ("infer", m("iris", Some(1))));
        assert_eq!(rest_api(&Method::GET, "/v2/models/iris/ready"), ("model_ready", m("iris", None)));
        assert_eq!(rest_api(&Method::GET, "/v2/health/ready"), ("server_ready", None));
        assert_eq!(rest_api(&Method::GET, "/healthz"), ("healthz", None));
        assert_eq!(rest_api(&Method::GET, "/maas/v1/models/iris"), ("maas_model_status", m("iris", None)));
        assert_eq!(rest_api(&Method::GET, "/nope"), ("other", None));
        assert_eq!(rest_api(&Method::GET, "/v1/models/"), ("model_status", None));
    }
}
