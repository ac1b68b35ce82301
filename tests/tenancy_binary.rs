//! The real `maas` binary with TLS and tenants: Python grpcio and tritonclient, curl, SIGHUP reload,
//! usage (REST, GetUsage and the usage log after SIGTERM agree exactly), and no secret in any log.
mod common;
#[path = "common/pki.rs"]
mod pki;

use common::*;
use maas::proto::maas::usage::v1::{usage_service_client::UsageServiceClient, GetUsageRequest};
use maas::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn auth<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl").args(["-sS", "-o", "-", "-w", "\n%{http_code}"]).args(args).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    let code = code.parse().unwrap_or(0);
    if code == 0 {
        return (0, String::from_utf8_lossy(&out.stderr).into_owned());
    }
    (code, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_sighup_usage_log_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki::Pki::new(dir.path());
    let (acme, k1) = pki::key("acmekey001", None);
    let (acme2, k2) = pki::key("acmekey002", None);
    let (ops, ko) = pki::key("opskey0001", None);
    let file = dir.path().join("tenants.pbtxt");
    let tenants = |extra: &str| {
        format!(
            "tenants {{ name: \"acme\" models: \"numbers_classifier\" {k1} {extra} }}\n\
             tenants {{ name: \"ops\" role: ADMIN models: \"*\" {ko} }}\n"
        )
    };
    std::fs::write(&file, tenants(&k2)).unwrap();
    let usage_log = dir.path().join("usage.jsonl");
    let (port, rest_port) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_maas"))
        .env("RUST_LOG", "trace")
        .args(["serve", "--model-repository"])
        .arg(bundled())
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--rest-api-port", &rest_port.to_string()])
        .arg("--tls-cert-file")
        .arg(&pki.server_cert)
        .arg("--tls-key-file")
        .arg(&pki.server_key)
        .arg("--tenant-config-file")
        .arg(&file)
        .args(["--tenant-config-file-poll-wait-seconds", "0", "--access-log"])
        .arg("--usage-log-file")
        .arg(&usage_log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut { stderr }, &mut s).unwrap();
        s
    });
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca_pem)).domain_name("localhost");
    let url = format!("https://127.0.0.1:{port}");
    let ch: Channel = wait_for(60, "the TLS port", || {
        let (url, tls) = (url.clone(), tls.clone());
        async move {
            let ch = Channel::from_shared(url).unwrap().tls_config(tls).unwrap().connect().await.ok()?;
            let mut h = tonic_health::pb::health_client::HealthClient::new(ch.clone());
            let r = h.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.ok()?;
            (r.into_inner().status() == tonic_health::pb::health_check_response::ServingStatus::Serving).then_some(ch)
        }
    })
    .await;
    let mut tf = PredictionServiceClient::new(ch.clone());

    // A known mix: 3 OK Predicts (1 + 2 + 3 rows), 1 INVALID_ARGUMENT, curl v2 REST (4 rows).
    for rows in 1..=3 {
        tf.predict(auth(predict_req("numbers_classifier", None, vec![("x", classifier_input(rows, rows))]), &acme))
            .await
            .unwrap();
    }
    let bad = predict_req("numbers_classifier", None, vec![("nope", classifier_input(1, 0))]);
    assert_eq!(tf.predict(auth(bad, &acme2)).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    let ca = pki.ca.to_str().unwrap();
    let body = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4, 8], "data": vec![0.25f32; 32]}]});
    let infer_url = format!("https://127.0.0.1:{rest_port}/v2/models/numbers_classifier/infer");
    let bearer = format!("Authorization: Bearer {acme}");
    let (code, out) = curl(&[
        "--cacert",
        ca,
        "-H",
        &bearer,
        "-H",
        "content-type: application/json",
        "-d",
        &body.to_string(),
        &infer_url,
    ]);
    assert_eq!(code, 200, "{out}");
    let (code, out) = curl(&["-i", "--cacert", ca, "-d", &body.to_string(), &infer_url]);
    assert_eq!(code, 401);
    assert!(out.contains("www-authenticate: Bearer realm=\"maas\""), "{out}");
    assert!(out.ends_with("{\"error\":\"missing or invalid credentials\"}"), "{out}");
    // Plain HTTP against the TLS REST port fails; the server keeps serving.
    let (code, _) = curl(&[&format!("http://127.0.0.1:{rest_port}/healthz")]);
    assert_ne!(code, 200);

    // Python grpcio and tritonclient over TLS with a bearer token (2 Predict rows + 2 infer rows).
    let python = repo_root().join(".venv/bin/python");
    let out = tokio::process::Command::new(&python)
        .arg(repo_root().join("tests/python/tls_clients.py"))
        .args(["--grpc", &format!("127.0.0.1:{port}"), "--ca", ca, "--token", &acme])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "tls_clients.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let py: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(py["denied"], "UNAUTHENTICATED");
    assert_eq!(py["denied_message"], "missing or invalid credentials");
    assert_eq!(py["triton_ready"], true);
    assert_eq!(py["grpcio_outputs"], py["triton_outputs"]);

    // SIGHUP: the removed key fails within a second.
    std::fs::write(&file, tenants("")).unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    // Calls that still pass before the reload is seen are metered like any other (1 row each).
    let passed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    wait_for(2, "acmekey002 refused after SIGHUP", || {
        let mut tf = tf.clone();
        let t = acme2.clone();
        let passed = std::sync::Arc::clone(&passed);
        async move {
            let r = tf.predict(auth(predict_req("numbers_classifier", None, vec![("x", classifier_input(1, 0))]), &t));
            match r.await {
                Ok(_) => {
                    passed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    None
                }
                Err(e) => (e.code() == tonic::Code::Unauthenticated).then_some(()),
            }
        }
    })
    .await;
    let extra = passed.load(std::sync::atomic::Ordering::Relaxed);

    // Usage: REST (curl) and GetUsage agree; then SIGTERM and the usage log agrees too.
    let (code, rest_usage) = curl(&[
        "--cacert",
        ca,
        "-H",
        &format!("x-api-key: {ops}"),
        &format!("https://127.0.0.1:{rest_port}/maas/v1/usage"),
    ]);
    assert_eq!(code, 200);
    let rest_usage: Value = serde_json::from_str(&rest_usage).unwrap();
    let g = UsageServiceClient::new(ch.clone())
        .get_usage(auth(GetUsageRequest::default(), &ops))
        .await
        .unwrap()
        .into_inner();
    let acme_grpc = &g.tenants[0];
    assert_eq!(acme_grpc.tenant, "acme");
    let m = &acme_grpc.models[0];
    assert_eq!(m.requests, [("OK".to_string(), 6 + extra), ("INVALID_ARGUMENT".to_string(), 1)].into_iter().collect());
    // The INVALID_ARGUMENT request never reached the rows count.
    assert_eq!(m.rows, 1 + 2 + 3 + 4 + 2 + 2 + extra);
    assert_eq!(m.request_bytes, (1 + 2 + 3 + 4 + 2 + 2 + extra) * 8 * 4);
    let r = &rest_usage["tenants"][0]["models"][0];
    assert_eq!(r["rows"], m.rows);
    assert_eq!(r["request_bytes"], m.request_bytes);
    assert_eq!(r["response_bytes"], m.response_bytes);
    assert_eq!(r["compute_seconds"].as_f64().unwrap(), m.compute_seconds);
    assert_eq!(r["queue_seconds"].as_f64().unwrap(), m.queue_seconds);
    assert_eq!(r["requests"], json!({"OK": 6 + extra, "INVALID_ARGUMENT": 1}));

    // The metrics registry carries the same numbers (admin key, REST port).
    let (code, metrics) =
        curl(&["--cacert", ca, "-H", &format!("x-api-key: {ops}"), &format!("https://127.0.0.1:{rest_port}/metrics")]);
    assert_eq!(code, 200);
    let sample = |name: &str, labels: &str| -> f64 {
        let prefix = format!("{name}{{{labels}}} ");
        let line = metrics.lines().find(|l| l.starts_with(&prefix));
        line.unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))[prefix.len()..].parse().unwrap()
    };
    let mv = r#"tenant="acme",model="numbers_classifier",version="2""#;
    assert_eq!(sample("maas_tenant_requests_total", &format!(r#"{mv},code="OK""#)), (6 + extra) as f64);
    assert_eq!(sample("maas_tenant_requests_total", &format!(r#"{mv},code="INVALID_ARGUMENT""#)), 1.0);
    assert_eq!(sample("maas_tenant_rows_total", mv), m.rows as f64);
    assert_eq!(sample("maas_tenant_request_bytes_total", mv), m.request_bytes as f64);
    assert_eq!(sample("maas_tenant_response_bytes_total", mv), m.response_bytes as f64);
    assert_eq!(sample("maas_tenant_compute_seconds_total", mv), m.compute_seconds);
    assert_eq!(sample("maas_tenant_queue_seconds_total", mv), m.queue_seconds);
    // Refused: curl without a key, grpcio's call without one, the removed key after SIGHUP.
    assert_eq!(sample("maas_tenant_rejected_total", r#"tenant="",reason="unauthenticated""#), 3.0);
    assert_eq!(metrics.matches("maas_tenant_requests_total{").count(), 2, "{metrics}");
    // promtool parses it and has no lint for the tenant families (exit 3 = lint elsewhere only).
    let promtool = repo_root().join(".tools/prometheus/usr/bin/promtool");
    let mut p = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut p.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    let lint = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(matches!(out.status.code(), Some(0 | 3)), "promtool: {lint}");
    assert!(!lint.contains("maas_tenant"), "promtool lint on the tenant families: {lint}");
    drop((tf, ch));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let logs = logs.join().unwrap();

    let log_text = std::fs::read_to_string(&usage_log).unwrap();
    let mut sum: BTreeMap<&str, f64> = BTreeMap::new();
    let mut requests: BTreeMap<String, u64> = BTreeMap::new();
    let mut keys = Vec::new();
    let records: Vec<Value> = log_text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for rec in &records {
        assert_eq!(
            (rec["tenant"].as_str(), rec["model"].as_str(), rec["version"].as_str()),
            (Some("acme"), Some("numbers_classifier"), Some("2"))
        );
        keys.push(rec["key_id"].as_str().unwrap().to_string());
        for f in ["rows", "request_bytes", "response_bytes", "compute_seconds", "queue_seconds"] {
            *sum.entry(f).or_default() += rec[f].as_f64().unwrap();
        }
        for (c, n) in rec["requests"].as_object().unwrap() {
            *requests.entry(c.clone()).or_default() += n.as_u64().unwrap();
        }
        assert!(rec["start"].as_str().unwrap().ends_with(":00Z") && rec["end"].as_str().unwrap().ends_with(":00Z"));
    }
    keys.sort();
    keys.dedup();
    assert_eq!(keys, ["acmekey001", "acmekey002"]);
    assert_eq!(requests, m.requests.clone().into_iter().collect::<BTreeMap<_, _>>());
    assert_eq!(sum["rows"], m.rows as f64);
    assert_eq!(sum["request_bytes"], m.request_bytes as f64);
    assert_eq!(sum["response_bytes"], m.response_bytes as f64);
    assert!((sum["compute_seconds"] - m.compute_seconds).abs() < 1e-9);
    assert!((sum["queue_seconds"] - m.queue_seconds).abs() < 1e-9);

    // No secret anywhere: tokens, digests, the private key.
    assert!(logs.contains("TRACE"), "trace logging was on");
    assert!(logs.contains("maas::access"), "the access log was on");
    let key_body: String = pki.server_key_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    for token in [&acme, &acme2, &ops] {
        let digest = maas::tenancy::keys::Digest::of(token.as_bytes()).to_hex();
        let secret = token.rsplit('_').next().unwrap();
        for (what, text) in [("logs", &logs), ("usage log", &log_text), ("metrics", &metrics)] {
            assert!(!text.contains(secret), "a token secret is in the {what}");
            assert!(!text.contains(&digest), "a token digest is in the {what}");
        }
    }
    for line in pki.server_key_pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!logs.contains(line) && !metrics.contains(line), "the private key is in the logs or metrics");
    }
    assert!(!key_body.is_empty());
}

/// Runs `maas serve` with `args` and returns (exit code, stderr); it must exit on its own.
fn serve_fails(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_maas"))
        .args(["serve", "--model-repository"])
        .arg(bundled())
        .args(["--host", "127.0.0.1", "--port", "0", "--rest-api-port", "0"])
        .args(args)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn broken_tls_and_tenants_files_fail_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki::Pki::new(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let os = |p: &std::path::Path| p.as_os_str().to_owned();
    let flag = |f: &str| std::ffi::OsString::from(f);
    let cases: Vec<(Vec<std::ffi::OsString>, Vec<String>)> = vec![
        (
            vec![flag("--tls-cert-file"), os(&garbage), flag("--tls-key-file"), os(&pki.server_key)],
            vec![garbage.display().to_string(), "no PEM certificate".into()],
        ),
        (
            vec![flag("--tls-cert-file"), os(&pki.server_cert), flag("--tls-key-file"), os(&missing)],
            vec![missing.display().to_string()],
        ),
        (
            vec![flag("--tls-cert-file"), os(&pki.server_cert), flag("--tls-key-file"), os(&garbage)],
            vec![garbage.display().to_string()],
        ),
        (
            vec![
                flag("--tls-cert-file"),
                os(&pki.server_cert),
                flag("--tls-key-file"),
                os(&pki.server_key),
                flag("--tls-client-ca-file"),
                os(&garbage),
            ],
            vec![garbage.display().to_string()],
        ),
    ];
    let ssl = dir.path().join("ssl.pbtxt");
    std::fs::write(&ssl, "server_key: \"x\" no_such_field: 1").unwrap();
    let tenants = dir.path().join("tenants.pbtxt");
    std::fs::write(&tenants, "tenants { name: \"Bad Name\" }").unwrap();
    let mut cases = cases;
    cases.push((vec![flag("--ssl_config_file"), os(&ssl)], vec![ssl.display().to_string()]));
    cases.push((vec![flag("--tenant-config-file"), os(&tenants)], vec![tenants.display().to_string()]));
    for (args, wanted) in cases {
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let (code, stderr) = serve_fails(&refs);
        assert!(code.is_some_and(|c| c != 0), "{args:?} exited with {code:?}:\n{stderr}");
        for w in wanted {
            assert!(stderr.contains(&w), "{args:?}: the message does not name {w:?}:\n{stderr}");
        }
        assert!(!stderr.contains("listening"), "{args:?} listened before failing:\n{stderr}");
        let key_line = pki.server_key_pem.lines().nth(1).unwrap();
        assert!(!stderr.contains(key_line), "the private key is in the error");
    }
}
