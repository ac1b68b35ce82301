//! Tenancy and TLS with real TLS and real clients: every row of the answers table on both gRPC
//! services and both REST protocols, keys (rotation, expiry, removal on an open connection), broken
//! reloads, limits, client certificates, certificate rotation and usage.
mod common;
#[path = "common/pki.rs"]
mod pki;

use common::*;
use maas::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use maas::proto::inference::{self as v2, model_infer_request::InferInputTensor, InferTensorContents};
use maas::proto::maas::usage::v1::{usage_service_client::UsageServiceClient, GetUsageRequest};
use maas::proto::tensorflow::serving::{GetModelStatusRequest, ReloadConfigRequest};
use maas::tenancy::TenancySettings;
use maas::tls::{ClientAuth, TlsSettings, TlsSource};
use pki::{key, Pki};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request};
use tonic_types::StatusExt;

const DENIED: &str = "missing or invalid credentials";

struct Keys {
    acme1: String,
    acme2: String,
    acme_expired: String,
    beta: String,
    ops: String,
}

fn tenants_file(path: &Path, with_acme2: bool) -> Keys {
    let (acme1, k1) = key("acmekey001", None);
    let (acme2, k2) = key("acmekey002", Some("2999-01-01T00:00:00Z"));
    let (acme_expired, k3) = key("acmeold001", Some("2020-01-01T00:00:00Z"));
    let (beta, kb) = key("betakey001", None);
    let (ops, ko) = key("opskey0001", None);
    write_tenants(path, &k1, if with_acme2 { &k2 } else { "" }, &k3, &kb, &ko);
    Keys { acme1, acme2, acme_expired, beta, ops }
}

fn write_tenants(path: &Path, k1: &str, k2: &str, k3: &str, kb: &str, ko: &str) {
    let text = format!(
        r#"
tiers {{ name: "tight" limits {{ requests_per_second: 5 burst: 5 }} }}
tenants {{ name: "acme" models: "numbers_classifier" {k1} {k2} {k3} client_certs {{ san_uri: "spiffe://corp/acme" }} }}
tenants {{ name: "beta" tier: "tight" models: "numbers_classifier" {kb} }}
tenants {{ name: "ops" role: ADMIN models: "*" {ko} }}
"#
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn tls_cfg(pki: &Pki, mode: ClientAuth) -> TlsSettings {
    TlsSettings {
        source: TlsSource::Files {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: Some(pki.ca.clone()),
        },
        client_auth: Some(mode),
        handshake_timeout: Duration::from_secs(5),
    }
}

async fn tls_channel(addr: std::net::SocketAddr, pki: &Pki, leaf: Option<&pki::Leaf>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca_pem)).domain_name("localhost");
    if let Some(l) = leaf {
        tls = tls.identity(Identity::from_pem(&l.cert_pem, &l.key_pem));
    }
    let ch = Channel::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).map_err(|e| e.to_string())?;
    ch.connect().await.map_err(|e| format!("{e:?}"))
}

async fn wait_tls_serving(addr: std::net::SocketAddr, pki: &Pki, leaf: Option<&pki::Leaf>) -> Channel {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    for _ in 0..600 {
        if let Ok(ch) = tls_channel(addr, pki, leaf).await {
            let r = HealthClient::new(ch.clone()).check(HealthCheckRequest { service: String::new() }).await;
            if r.is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving) {
                return ch;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server did not become SERVING over TLS");
}

fn auth<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

fn v2_req(model: &str, rows: usize) -> v2::ModelInferRequest {
    v2::ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![rows as i64, 8],
            contents: Some(InferTensorContents { fp32_contents: vec![0.5; rows * 8], ..Default::default() }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn tf_req(model: &str, rows: usize) -> maas::proto::tensorflow::serving::PredictRequest {
    predict_req(model, None, vec![("x", classifier_input(rows, 1))])
}

fn not_served(model: &str, known: &str) -> String {
    format!("Servable not found for request: model '{model}' is not served here; served models: [{known}]")
}

fn https(pki: &Pki, leaf: Option<&pki::Leaf>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .https_only(true);
    if let Some(l) = leaf {
        b = b.identity(reqwest::Identity::from_pem(format!("{}{}", l.cert_pem, l.key_pem).as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// (status, headers, body) of a REST call.
async fn rest(
    c: &reqwest::Client,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let url = format!("https://localhost:{}{path}", addr.port());
    let mut r = if method == "POST" { c.post(&url) } else { c.get(&url) };
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn tf_body(rows: usize) -> Value {
    json!({"instances": vec![vec![0.5f32; 8]; rows]})
}

fn v2_body(rows: usize) -> Value {
    json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 8], "data": vec![0.5f32; rows * 8]}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_keys_limits_and_reloads_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let file = dir.path().join("tenants.pbtxt");
    let k = tenants_file(&file, true);
    let mut cfg = test_config(bundled());
    cfg.tls = Some(tls_cfg(&pki, ClientAuth::Optional));
    cfg.tenancy = Some(TenancySettings { file: file.clone(), poll: Duration::from_millis(100), usage_log: None });
    let server = TestServer::start(cfg).await;
    let ch = wait_tls_serving(server.addr, &pki, None).await;
    let mut tf = maas::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient::new(ch.clone());
    let mut ms = maas::proto::tensorflow::serving::model_service_client::ModelServiceClient::new(ch.clone());
    let mut kv = GrpcInferenceServiceClient::new(ch.clone());

    // Plaintext against the TLS port fails cleanly; the server keeps serving.
    let plain = Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await;
    if let Ok(p) = plain {
        let r = maas::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient::new(p)
            .predict(auth(tf_req("numbers_classifier", 1), Some(&k.acme1)))
            .await;
        assert!(r.is_err());
    }

    // Row 1: missing, unknown, malformed, expired credentials; two different headers.
    let unknown = k.acme1.replace("acmekey001", "zzzzzzzzzz");
    for tok in [None, Some(unknown.as_str()), Some("maas_garbage"), Some(k.acme_expired.as_str())] {
        let e = tf.predict(auth(tf_req("numbers_classifier", 1), tok)).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::Unauthenticated, DENIED), "{tok:?}");
        let e = kv.model_infer(auth(v2_req("numbers_classifier", 1), tok)).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::Unauthenticated, DENIED));
    }
    let e = kv.server_metadata(auth(v2::ServerMetadataRequest {}, None)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "ServerMetadata is not on the open list");
    assert!(kv.server_live(auth(v2::ServerLiveRequest {}, None)).await.unwrap().into_inner().live);
    let mut both = auth(tf_req("numbers_classifier", 1), Some(&k.acme1));
    both.metadata_mut().insert("x-api-key", k.acme2.parse().unwrap());
    assert_eq!(tf.predict(both).await.unwrap_err().code(), Code::Unauthenticated);
    let mut same = auth(tf_req("numbers_classifier", 1), Some(&k.acme1));
    same.metadata_mut().insert("x-api-key", k.acme1.parse().unwrap());
    tf.predict(same).await.unwrap();
    let mut xkey = Request::new(tf_req("numbers_classifier", 2));
    xkey.metadata_mut().insert("x-api-key", k.acme2.parse().unwrap());
    tf.predict(xkey).await.unwrap();
    kv.model_infer(auth(v2_req("numbers_classifier", 3), Some(&k.acme2))).await.unwrap();

    // Row 2: a model outside the list reads exactly like a missing one, listing only acme's models.
    let a = Some(k.acme1.as_str());
    for m in ["identity_string", "nope"] {
        let e = tf.predict(auth(tf_req(m, 1), a)).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::NotFound, not_served(m, "numbers_classifier").as_str()));
        let e = kv.model_infer(auth(v2_req(m, 1), a)).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::NotFound, not_served(m, "numbers_classifier").as_str()));
        let e = ms.get_model_status(auth(GetModelStatusRequest { model_spec: Some(spec(m, None)) }, a)).await;
        let e = e.unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::NotFound, not_served(m, "numbers_classifier").as_str()));
        let e = kv.model_metadata(auth(v2::ModelMetadataRequest { name: m.into(), version: String::new() }, a));
        assert_eq!(e.await.unwrap_err().code(), Code::NotFound);
        let r = kv.model_ready(auth(v2::ModelReadyRequest { name: m.into(), version: String::new() }, a));
        assert!(!r.await.unwrap().into_inner().ready);
    }
    let stats = kv.model_statistics(auth(v2::ModelStatisticsRequest::default(), a)).await.unwrap().into_inner();
    assert_eq!(stats.model_stats.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["numbers_classifier"]);
    let admin_stats =
        kv.model_statistics(auth(v2::ModelStatisticsRequest::default(), Some(&k.ops))).await.unwrap().into_inner();
    assert_eq!(admin_stats.model_stats.len(), 2);

    // Refusals are counted per tenant and reason: one more call for a model outside the list adds one.
    let c = https(&pki, None);
    let rejected = |metrics: &Value, labels: &str| -> u64 {
        let prefix = format!("maas_tenant_rejected_total{{{labels}}} ");
        let text = metrics.as_str().unwrap();
        text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.parse().unwrap())
    };
    let not_allowed = r#"tenant="acme",reason="model_not_allowed""#;
    let (_, _, before) = rest(&c, server.rest_addr, "GET", "/metrics", Some(&k.ops), None).await;
    assert!(rejected(&before, not_allowed) >= 3, "{before}");
    assert!(rejected(&before, r#"tenant="",reason="unauthenticated""#) >= 9, "{before}");
    tf.predict(auth(tf_req("identity_string", 1), a)).await.unwrap_err();
    let (_, _, after) = rest(&c, server.rest_addr, "GET", "/metrics", Some(&k.ops), None).await;
    assert_eq!(rejected(&after, not_allowed), rejected(&before, not_allowed) + 1);

    // Row 3: admin-only APIs.
    let e = ms.handle_reload_config_request(auth(ReloadConfigRequest::default(), a)).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::PermissionDenied, "HandleReloadConfigRequest needs the ADMIN role; tenant 'acme' has the USER role")
    );
    let e = kv
        .repository_model_unload(auth(
            v2::RepositoryModelUnloadRequest { model_name: "numbers_classifier".into(), ..Default::default() },
            a,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::PermissionDenied, "RepositoryModelUnload needs the ADMIN role; tenant 'acme' has the USER role")
    );
    kv.repository_index(auth(v2::RepositoryIndexRequest::default(), Some(&k.ops))).await.unwrap();

    // Row 4: beta's 5/s burst 5 on both gRPC services; acme is not slowed meanwhile (by counts).
    let b = Some(k.beta.as_str());
    let limit_msg = "tenant 'beta' is over its requests_per_second limit (5 per second, burst 5)";
    for service in ["tf", "v2"] {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // Six at once (sequential calls in a debug build could take long enough to earn a token).
        let mut calls = Vec::new();
        for _ in 0..6 {
            let (mut tf, mut kv, b) = (tf.clone(), kv.clone(), k.beta.clone());
            calls.push(tokio::spawn(async move {
                match service {
                    "tf" => tf.predict(auth(tf_req("numbers_classifier", 1), Some(&b))).await.map(|_| ()),
                    _ => kv.model_infer(auth(v2_req("numbers_classifier", 1), Some(&b))).await.map(|_| ()),
                }
            }));
        }
        let (mut ok, mut refused) = (0, None);
        for c in calls {
            match c.await.unwrap() {
                Ok(()) => ok += 1,
                Err(e) => refused = Some(e),
            }
        }
        let mut acme_ok = 0;
        for _ in 0..6 {
            if tf.predict(auth(tf_req("numbers_classifier", 1), a)).await.is_ok() {
                acme_ok += 1;
            }
        }
        assert_eq!((ok, acme_ok), (5, 6), "{service}");
        let e = refused.unwrap();
        assert_eq!((e.code(), e.message()), (Code::ResourceExhausted, limit_msg));
        let retry = e.get_details_retry_info().unwrap().retry_delay.unwrap();
        assert!(retry > Duration::ZERO && retry <= Duration::from_millis(200), "{retry:?}");
        let q = e.get_details_quota_failure().unwrap();
        assert_eq!(q.violations[0].subject, "requests_per_second");
        tokio::time::sleep(retry + Duration::from_millis(20)).await;
        tf.predict(auth(tf_req("numbers_classifier", 1), b)).await.unwrap();
    }

    let (_, _, metrics) = rest(&c, server.rest_addr, "GET", "/metrics", Some(&k.ops), None).await;
    assert_eq!(rejected(&metrics, r#"tenant="beta",reason="requests_per_second""#), 2, "{metrics}");
    assert_eq!(rejected(&metrics, r#"tenant="acme",reason="permission_denied""#), 2, "{metrics}");

    // The same rows over TF REST and v2 REST.
    let r = server.rest_addr;
    for (path, body) in
        [("/v1/models/numbers_classifier:predict", tf_body(1)), ("/v2/models/numbers_classifier/infer", v2_body(1))]
    {
        for tok in [None, Some(unknown.as_str()), Some(k.acme_expired.as_str())] {
            let (s, h, v) = rest(&c, r, "POST", path, tok, Some(body.clone())).await;
            assert_eq!((s, &v), (401, &json!({"error": DENIED})), "{path}");
            assert_eq!(h["www-authenticate"], "Bearer realm=\"maas\"");
        }
        let (s, _, _) = rest(&c, r, "POST", path, a, Some(body.clone())).await;
        assert_eq!(s, 200, "{path}");
        let other = path.replace("numbers_classifier", "identity_string");
        let (s, _, v) = rest(&c, r, "POST", &other, a, Some(body.clone())).await;
        assert_eq!((s, v), (404, json!({"error": not_served("identity_string", "numbers_classifier")})));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut calls = Vec::new();
        for _ in 0..6 {
            let (c, body, b) = (c.clone(), body.clone(), k.beta.clone());
            calls.push(tokio::spawn(async move { rest(&c, r, "POST", path, Some(&b), Some(body)).await }));
        }
        let mut statuses = Vec::new();
        let mut last = None;
        for call in calls {
            let (s, h, v) = call.await.unwrap();
            statuses.push(s);
            if s == 429 {
                last = Some((h, v));
            }
        }
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 200, 200, 200, 200, 429], "{path}");
        let (h, v) = last.unwrap();
        assert_eq!(v, json!({"error": limit_msg}));
        assert_eq!(h["retry-after"], "1");
    }
    for (path, tok) in [("/v2", None), ("/no/such/route", None), ("/v1/models/numbers_classifier", None)] {
        assert_eq!(rest(&c, r, "GET", path, tok, None).await.0, 401, "{path}");
    }
    assert_eq!(rest(&c, r, "GET", "/healthz", None, None).await.0, 200);
    assert_eq!(rest(&c, r, "GET", "/v2/health/live", None, None).await.0, 200);
    assert_eq!(rest(&c, r, "GET", "/v1/models/identity_string", a, None).await.0, 404);
    assert_eq!(rest(&c, r, "GET", "/v2/models/identity_string", a, None).await.0, 404);
    let (s, _, v) = rest(&c, r, "GET", "/maas/v1/models/numbers_classifier", a, None).await;
    assert_eq!(
        (s, v),
        (403, json!({"error": "/maas/v1/models needs the ADMIN role; tenant 'acme' has the USER role"}))
    );
    assert_eq!(rest(&c, r, "GET", "/maas/v1/models/numbers_classifier", Some(&k.ops), None).await.0, 200);

    // Usage: REST and gRPC agree; another tenant's usage is refused to a USER.
    let (s, _, rest_usage) = rest(&c, r, "GET", "/maas/v1/usage", a, None).await;
    assert_eq!(s, 200);
    let mut us = UsageServiceClient::new(ch.clone());
    let g = us.get_usage(auth(GetUsageRequest::default(), a)).await.unwrap().into_inner();
    assert_eq!(rest_usage, usage_json(&g));
    assert_eq!(rest_usage["tenants"][0]["tenant"], "acme");
    let m = &rest_usage["tenants"][0]["models"][0];
    assert_eq!((m["model"].as_str(), m["version"].as_str()), (Some("numbers_classifier"), Some("2")));
    assert!(m["requests"]["OK"].as_u64().unwrap() >= 16, "{m}");
    let (s, _, _) = rest(&c, r, "GET", "/maas/v1/usage?tenant=beta", a, None).await;
    assert_eq!(s, 403);
    let e = us.get_usage(auth(GetUsageRequest { tenant: "beta".into() }, a)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let all = us.get_usage(auth(GetUsageRequest::default(), Some(&k.ops))).await.unwrap().into_inner();
    assert_eq!(all.tenants.iter().map(|t| t.tenant.as_str()).collect::<Vec<_>>(), ["acme", "beta", "ops"]);

    // A key removed from the file fails on the next call on the same open connection; a broken file
    // keeps the old tenants.
    let text = std::fs::read_to_string(&file).unwrap();
    let without = strip_key(&text, "acmekey002");
    assert_ne!(without, text);
    std::fs::write(&file, &without).unwrap();
    wait_for(5, "acmekey002 to be refused", || {
        let mut tf = tf.clone();
        let t = k.acme2.clone();
        async move {
            let r = tf.predict(auth(tf_req("numbers_classifier", 1), Some(&t))).await;
            r.is_err_and(|e| e.code() == Code::Unauthenticated).then_some(())
        }
    })
    .await;
    tf.predict(auth(tf_req("numbers_classifier", 1), a)).await.unwrap();
    std::fs::write(&file, "tenants { name: \"Broken!\" }").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    tf.predict(auth(tf_req("numbers_classifier", 1), a)).await.unwrap();
    assert_eq!(
        tf.predict(auth(tf_req("numbers_classifier", 1), None)).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    server.stop().await.unwrap();
}

/// The tenants text without the `keys { ... }` entry of `id`.
fn strip_key(text: &str, id: &str) -> String {
    let at = text.find(&format!("keys {{ id: \"{id}\"")).unwrap();
    let end = at + text[at..].find('}').unwrap() + 1;
    format!("{}{}", &text[..at], &text[end..])
}

fn usage_json(g: &maas::proto::maas::usage::v1::GetUsageResponse) -> Value {
    json!({"tenants": g.tenants.iter().map(|t| json!({
        "tenant": t.tenant,
        "models": t.models.iter().map(|m| json!({
            "model": m.model, "version": m.version,
            "requests": m.requests.iter().collect::<std::collections::BTreeMap<_, _>>(),
            "rows": m.rows, "request_bytes": m.request_bytes, "response_bytes": m.response_bytes,
            "compute_seconds": m.compute_seconds, "queue_seconds": m.queue_seconds,
        })).collect::<Vec<_>>(),
    })).collect::<Vec<_>>()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = Pki::new(dir.path());
    let file = dir.path().join("tenants.pbtxt");
    let k = tenants_file(&file, true);
    let mut cfg = test_config(bundled());
    cfg.tls = Some(tls_cfg(&pki, ClientAuth::Required));
    cfg.tenancy = Some(TenancySettings { file, poll: Duration::ZERO, usage_log: None });
    let server = TestServer::start(cfg).await;
    let acme = pki.client("spiffe://corp/acme");
    let nobody = pki.client("spiffe://corp/nobody");
    let ch = wait_tls_serving(server.addr, &pki, Some(&acme)).await;
    let mut tf = maas::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient::new(ch.clone());
    // The certificate alone names acme.
    tf.predict(auth(tf_req("numbers_classifier", 1), None)).await.unwrap();
    let e = tf.predict(auth(tf_req("identity_string", 1), None)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // A certificate and a key naming different tenants: refused.
    let e = tf.predict(auth(tf_req("numbers_classifier", 1), Some(&k.beta))).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::Unauthenticated, DENIED));
    // An unmapped certificate without a key: refused like a missing key; with a key: the key's tenant.
    let ch2 = tls_channel(server.addr, &pki, Some(&nobody)).await.unwrap();
    let mut tf2 = maas::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient::new(ch2);
    let e = tf2.predict(auth(tf_req("numbers_classifier", 1), None)).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::Unauthenticated, DENIED));
    tf2.predict(auth(tf_req("numbers_classifier", 1), Some(&k.ops))).await.unwrap();
    // No certificate: the handshake fails (required).
    let no_cert = tls_channel(server.addr, &pki, None).await;
    if let Ok(c) = no_cert {
        let r = maas::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient::new(c)
            .predict(auth(tf_req("numbers_classifier", 1), Some(&k.acme1)))
            .await;
        assert!(r.is_err());
    }
    // REST with the client certificate.
    let c = https(&pki, Some(&acme));
    let (s, _, _) =
        rest(&c, server.rest_addr, "POST", "/v2/models/numbers_classifier/infer", None, Some(v2_body(2))).await;
    assert_eq!(s, 200);
    // curl with --cacert/--cert/--key: the certificate names acme; without it the handshake fails.
    let (cert, key) = (dir.path().join("acme.pem"), dir.path().join("acme.key"));
    std::fs::write(&cert, &acme.cert_pem).unwrap();
    std::fs::write(&key, &acme.key_pem).unwrap();
    let url = format!("https://localhost:{}/v2/models/numbers_classifier/infer", server.rest_addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", server.rest_addr.port());
    let curl = |with_cert: bool| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--resolve", &resolve, "--cacert"]).arg(&pki.ca);
        if with_cert {
            cmd.arg("--cert").arg(&cert).arg("--key").arg(&key);
        }
        cmd.args(["-H", "content-type: application/json", "-d", &v2_body(2).to_string(), "-w", "\n%{http_code}"]);
        cmd.arg(&url).output().unwrap()
    };
    let out = curl(true);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{text}");
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["model_name"], "numbers_classifier");
    assert_eq!(v["outputs"][0]["shape"][0], 2);
    let out = curl(false);
    assert!(!out.status.success() || String::from_utf8_lossy(&out.stdout).ends_with("000"), "no client certificate");

    // Rotation: replace the files; new connections get the new certificate, the open one keeps working.
    let before = peer_cert(server.addr, &pki, &acme).await;
    assert_eq!(before, pem_der(&std::fs::read_to_string(&pki.server_cert).unwrap()));
    let new_pem = pki.rotate_server();
    let want = pem_der(&new_pem);
    wait_for(10, "the new certificate on new connections", || {
        let (pki, acme, want) = (&pki, &acme, want.clone());
        async move { (peer_cert(server.addr, pki, acme).await == want).then_some(()) }
    })
    .await;
    tf.predict(auth(tf_req("numbers_classifier", 1), None)).await.unwrap();
    // A bad new file keeps the current certificate.
    std::fs::write(&pki.server_key, "not a key").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(peer_cert(server.addr, &pki, &acme).await, want);
    server.stop().await.unwrap();
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

/// The server certificate a new TLS connection is given.
async fn peer_cert(addr: std::net::SocketAddr, pki: &Pki, leaf: &pki::Leaf) -> Vec<u8> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap()).unwrap();
    let cfg =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let conn = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (_, session) = conn.get_ref();
    assert_eq!(session.alpn_protocol(), None, "no ALPN offered, none chosen");
    session.peer_certificates().unwrap()[0].to_vec()
}
