//! Models from an object store, against a real S3 server (SeaweedFS on loopback, tests/s3): a
//! version uploaded object by object loads only when complete, serving survives the server
//! stopping, three replicas roll out together (a Python grpcio client spreading requests over
//! them), credentials never show, the metadata fallback can be turned off, and the listing
//! requests one poll costs. Nothing here sends a packet beyond 127.0.0.1.
mod common;
mod s3;

use common::*;
use maas::manager::ModelSource;
use maas::proto::tensorflow::serving::model_spec::VersionChoice;
use maas::repository::config::ModelConfig;
use maas::repository::object_store::{Env, ObjectStoreConfig};
use maas::repository::uri::Location;
use maas::ServeConfig;
use s3::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One SeaweedFS (and its replicas) at a time: the machine is small.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Version 2 of the rollout: model.onnx whose constant is in offset.bin (ONNX external data), so
/// a version loaded before its second object arrived would fail to load; then a third object.
fn version_two() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("model.onnx", fixture("objstore/v2/model.onnx")),
        ("offset.bin", fixture("objstore/v2/offset.bin")),
        ("notes.txt", b"version 2, uploaded object by object".to_vec()),
    ]
}

/// Uploads `objects` under `prefix` one at a time, `pause` apart (less than a listing period, so
/// no two listings can agree while it is incomplete). Returns when the last one is in.
async fn upload_slowly(
    store: &object_store::aws::AmazonS3,
    prefix: &str,
    objects: Vec<(&str, Vec<u8>)>,
    pause: Duration,
) {
    let n = objects.len();
    for (i, (name, bytes)) in objects.into_iter().enumerate() {
        put(store, &format!("{prefix}/{name}"), bytes).await;
        if i + 1 < n {
            tokio::time::sleep(pause).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_uploaded_object_by_object_loads_only_complete_and_serving_survives_the_server_stopping() {
    let _serial = SERIAL.lock().await;
    let mut weed = Seaweed::start().await;
    let store = weed.store();
    // KServe's bare layout: <base>/model.onnx is version 1.
    put(&store, "single/m/model.onnx", offset_model(1)).await;

    let cache = tempfile::tempdir().unwrap();
    let mut cfg = ServeConfig::with_source(ModelSource::List(vec![ModelConfig {
        name: "m".into(),
        base_path: Location::parse("s3://models/single/m").unwrap(),
        policy: Default::default(),
        labels: Default::default(),
    }]));
    cfg.manager.poll_interval = Some(Duration::from_millis(200));
    let endpoint = format!("127.0.0.1:{}", weed.s3_port);
    cfg.manager.object_store = ObjectStoreConfig {
        // TF Serving's names for the endpoint.
        env: Env::from_pairs([
            ("AWS_ACCESS_KEY_ID", KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("S3_ENDPOINT", endpoint.as_str()),
            ("S3_USE_HTTPS", "0"),
        ]),
        metadata_credentials: false,
        cache_dir: cache.path().to_path_buf(),
        poll_interval: Some(Duration::from_millis(600)),
        parallel_downloads: 4,
    };
    let server = TestServer::ready(cfg).await;
    assert_eq!(available(&server, "m").await, vec![1]);

    // Requests and status checks run throughout; every answer and every failed version is kept.
    let stop = Arc::new(AtomicBool::new(false));
    let recorder = {
        let (mut predict, mut models, stop) =
            (server.predict_client().await, server.model_client().await, Arc::clone(&stop));
        tokio::spawn(async move {
            let (mut answers, mut errors, mut failed_versions) = (Vec::new(), Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match predict.predict(offset_req("m", None)).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        let Some(VersionChoice::Version(v)) = r.model_spec.and_then(|s| s.version_choice) else {
                            panic!("response without a version")
                        };
                        answers.push((v, r.outputs["y"].float_val[0]));
                    }
                    Err(e) => errors.push(e.to_string()),
                }
                let req = maas::proto::tensorflow::serving::GetModelStatusRequest { model_spec: Some(spec("m", None)) };
                if let Ok(s) = models.get_model_status(req).await {
                    for v in s.into_inner().model_version_status {
                        let st = v.status.unwrap_or_default();
                        if st.error_code != 0 && !failed_versions.contains(&(v.version, st.error_message.clone())) {
                            failed_versions.push((v.version, st.error_message));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (answers, errors, failed_versions)
        })
    };

    // Version 2, object by object (a numbered version wins over the bare layout).
    upload_slowly(&store, "single/m/2", version_two(), Duration::from_millis(250)).await;
    let uploaded = Instant::now();
    wait_for(30, "version 2 AVAILABLE and version 1 retired", || async {
        (available(&server, "m").await == vec![2]).then_some(())
    })
    .await;
    eprintln!("single server: upload done -> version 2 serving alone: {} ms", uploaded.elapsed().as_millis());

    // The bucket server goes away for 3 s: requests keep being answered from what is loaded.
    weed.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    weed.restart().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(available(&server, "m").await, vec![2]);

    stop.store(true, Ordering::Relaxed);
    let (answers, errors, failed_versions) = recorder.await.unwrap();
    assert!(errors.is_empty(), "failed requests: {errors:?}");
    assert!(failed_versions.is_empty(), "a version failed to load (half-uploaded?): {failed_versions:?}");
    assert!(answers.iter().all(|(v, y)| *y == *v as f32), "an answer from the wrong model");
    assert!(answers.windows(2).all(|w| w[0].0 <= w[1].0), "an older version answered after a newer one");
    assert_eq!(answers.first().map(|a| a.0), Some(1));
    assert_eq!(answers.last().map(|a| a.0), Some(2));

    // The cache holds version 2 as listed (and, once retired, no longer version 1).
    let v2 = cache.path().join("s3/models/single/m/2");
    for f in ["model.onnx", "offset.bin", "notes.txt", ".maas-manifest.json"] {
        assert!(v2.join(f).is_file(), "{} missing", v2.join(f).display());
    }
    wait_for(10, "version 1 removed from the cache", || async {
        (!cache.path().join("s3/models/single/m/1").exists()).then_some(())
    })
    .await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_follow_one_bucket_through_a_rollout_a_restart_and_an_outage() {
    let _serial = SERIAL.lock().await;
    let python = repo_root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run ./scripts/setup.sh", python.display());
    let mut weed = Seaweed::start().await;
    let store = weed.store();
    put(&store, "repo/m/1/model.onnx", offset_model(1)).await;

    let work = tempfile::tempdir().unwrap();
    let args = |i: usize| -> Vec<String> {
        [
            "--model-repository=s3://models/repo",
            "--file-system-poll-wait-seconds=1",
            "--drain-timeout-seconds=1",
            "--object-store-metadata-credentials=false",
            "--session-pool-size=1",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--model-cache-dir={}", work.path().join(format!("cache-{i}")).display())])
        .collect()
    };
    let mut replicas: Vec<Replica> = (0..3).map(|i| Replica::start(args(i), weed.env(), work.path())).collect();
    for r in &replicas {
        wait_for_version(r, 1, 60).await;
    }

    // The client: round-robin over the three.
    let out = work.path().join("client.json");
    let stop_file = work.path().join("client.stop");
    let addresses: Vec<String> = replicas.iter().map(Replica::addr).collect();
    let mut client = tokio::process::Command::new(&python)
        .arg(repo_root().join("tests/python/replica_client.py"))
        .args(["--addresses", &addresses.join(","), "--model", "m", "--max-seconds", "150"])
        .arg("--stop-file")
        .arg(&stop_file)
        .arg("--out")
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = out.with_extension("json.started");
    wait_for(60, "the Python client to start", || async { started.exists().then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Version 2, object by object, 0.25 s apart (the listing period is 1 s).
    upload_slowly(&store, "repo/m/2", version_two(), Duration::from_millis(250)).await;
    let uploaded = Instant::now();

    // Each replica's time to serve version 2. Mid-rollout, the first one there is stopped
    // (SIGTERM) and started again with its cache.
    let mut reached: Vec<Option<Duration>> = vec![None; replicas.len()];
    let mut restarted = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while reached.iter().any(Option::is_none) {
        for i in 0..replicas.len() {
            if reached[i].is_none() && status(&replicas[i]).await.contains(&(2, true)) {
                reached[i] = Some(uploaded.elapsed());
                if restarted.is_none() {
                    let exit = tokio::task::block_in_place(|| replicas[i].terminate());
                    assert!(exit.success(), "SIGTERM: {exit}");
                    replicas[i].spawn();
                    restarted = Some(i);
                }
            }
        }
        assert!(Instant::now() < deadline, "not every replica served version 2 within 60 s: {reached:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restarted = restarted.unwrap();
    let all_at = reached.iter().flatten().max().copied().unwrap_or_default();
    wait_for_version(&replicas[restarted], 2, 60).await;
    wait_for(20, "version 1 retired everywhere", || async {
        for r in &replicas {
            if status(r).await.iter().any(|&(v, avail)| v == 1 && avail) {
                return None;
            }
        }
        Some(())
    })
    .await;

    // The bucket server stops for 3 s; the replicas keep serving from memory and cache.
    weed.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    weed.restart().await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    std::fs::write(&stop_file, b"").unwrap();
    let status_code =
        tokio::time::timeout(Duration::from_secs(30), client.wait()).await.expect("client stops").unwrap();
    let mut err = String::new();
    if let Some(mut e) = client.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = e.read_to_string(&mut err).await;
    }
    assert!(status_code.success(), "python client failed: {err}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    eprintln!("client: {} requests in {:.1} s", report["_sent"], report["_seconds"].as_f64().unwrap_or(0.0));
    for (i, r) in replicas.iter().enumerate() {
        let rep = &report[r.addr()];
        eprintln!(
            "replica {i}{}: ok {} errors {} versions {} regressions {}",
            if i == restarted { " (restarted)" } else { "" },
            rep["ok"],
            rep["error_count"],
            rep["versions"],
            rep["regressions"]
        );
        if i != restarted {
            assert_eq!(rep["error_count"], 0, "replica {i} failed requests: {}", rep["errors"]);
            assert!(rep["versions"]["1"].as_u64().unwrap_or(0) > 0, "replica {i} never answered with version 1");
        }
        assert_eq!(rep["regressions"], serde_json::json!([]), "replica {i} answered with an older version");
        assert_eq!(rep["wrong_answers"], 0);
        assert_eq!(rep["last"], 2, "replica {i} did not end on version 2");
    }

    // Never loaded half-uploaded; version 2 downloaded once per replica; the restarted replica
    // served from its cache.
    for (i, r) in replicas.iter().enumerate() {
        for n in 0..r.logs.len() {
            let log = r.log(n);
            assert!(!log.contains("failed to load"), "replica {i} run {n} failed a load:\n{log}");
        }
    }
    let second_run = replicas[restarted].log(1);
    assert!(
        second_run.contains("version 2 of s3://models/repo/m: the cache matches the listing; not downloading"),
        "restarted replica:\n{second_run}"
    );
    assert!(!second_run.contains("downloading into"), "the restarted replica downloaded again:\n{second_run}");
    for (i, r) in replicas.iter().enumerate() {
        let downloads = r.log(0).matches("downloaded s3://models/repo/m/2 into the cache").count();
        assert_eq!(downloads, 1, "replica {i} downloaded version 2 {downloads} times");
    }
    let outage_seen =
        replicas.iter().any(|r| (0..r.logs.len()).any(|n| r.log(n).contains("keeping the loaded versions")));
    assert!(outage_seen, "no replica logged a failed listing during the outage");
    eprintln!(
        "three replicas: upload done -> each serving version 2 after {:?} ms (all: {} ms)",
        reached.iter().map(|d| d.unwrap_or_default().as_millis()).collect::<Vec<_>>(),
        all_at.as_millis()
    );
    for r in &mut replicas {
        let exit = tokio::task::block_in_place(|| r.terminate());
        assert!(exit.success(), "SIGTERM: {exit}");
    }
}

/// (version, AVAILABLE) per version of model m on replica `r`, from GetModelStatus.
async fn status(r: &Replica) -> Vec<(i64, bool)> {
    use maas::proto::tensorflow::serving::model_service_client::ModelServiceClient;
    use maas::proto::tensorflow::serving::model_version_status::State;
    use maas::proto::tensorflow::serving::GetModelStatusRequest;
    let Ok(mut c) = ModelServiceClient::connect(format!("http://{}", r.addr())).await else { return Vec::new() };
    match c.get_model_status(GetModelStatusRequest { model_spec: Some(spec("m", None)) }).await {
        Ok(s) => s
            .into_inner()
            .model_version_status
            .iter()
            .map(|v| (v.version, v.state == State::Available as i32))
            .collect(),
        Err(_) => Vec::new(),
    }
}

async fn wait_for_version(r: &Replica, version: i64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if status(r).await.contains(&(version, true)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica {} did not serve version {version} within {secs} s:\n{}",
            r.addr(),
            r.log(r.logs.len() - 1)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_credential_fallback_can_be_turned_off() {
    // A stand-in for the instance-metadata service, on loopback, counting connections; and an S3
    // endpoint nobody listens on.
    let imds = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let imds_url = format!("http://{}", imds.local_addr().unwrap());
    let hits = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = {
        let hits = Arc::clone(&hits);
        tokio::spawn(async move {
            while let Ok((conn, _)) = imds.accept().await {
                hits.fetch_add(1, Ordering::Relaxed);
                drop(conn);
            }
        })
    };
    let env = vec![
        ("AWS_METADATA_ENDPOINT".to_string(), imds_url),
        ("AWS_ENDPOINT_URL".to_string(), format!("http://127.0.0.1:{}", free_port())),
    ];
    let work = tempfile::tempdir().unwrap();
    let cache = format!("--model-cache-dir={}", work.path().join("cache").display());

    // Off: no credentials in the environment is an error at start, naming the URI; nothing is
    // contacted.
    let args = vec![
        "--model-repository=s3://models/repo".to_string(),
        "--object-store-metadata-credentials=false".into(),
        cache.clone(),
    ];
    let mut off = Replica::start(args, env.clone(), work.path());
    let exit = wait_for(30, "maas to exit", || {
        let st = off.exited();
        async move { st }
    })
    .await;
    assert_eq!(exit.code(), Some(2), "{}", off.log(0));
    assert!(
        off.log(0).contains(
            "maas: error: s3://models/repo: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or \
             AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, or AWS_SKIP_SIGNATURE=true for a public bucket); the cloud \
             instance-metadata fallback is off (--object-store-metadata-credentials=false)"
        ),
        "{}",
        off.log(0)
    );
    assert_eq!(hits.load(Ordering::Relaxed), 0);

    // On (the default): maas asks the metadata service for credentials (here the stand-in).
    let mut on = Replica::start(vec!["--model-repository=s3://models/repo".into(), cache], env, work.path());
    wait_for(30, "a request to the metadata endpoint", || {
        let n = hits.load(Ordering::Relaxed);
        async move { (n > 0).then_some(()) }
    })
    .await;
    let exit = tokio::task::block_in_place(|| on.terminate());
    assert!(exit.success(), "{}", on.log(0));
    counter.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_error_names_the_uri_and_never_a_credential() {
    let _serial = SERIAL.lock().await;
    let weed = Seaweed::start().await;
    put(&weed.store(), "repo/m/1/model.onnx", offset_model(1)).await;
    let work = tempfile::tempdir().unwrap();
    let wrong_secret = "not-the-secret-0123456789";
    let env: Vec<(String, String)> = weed
        .env()
        .into_iter()
        .map(|(k, v)| if k == "AWS_SECRET_ACCESS_KEY" { (k, wrong_secret.to_string()) } else { (k, v) })
        .collect();
    let args = vec![
        "--model-repository=s3://models/repo".to_string(),
        "--object-store-metadata-credentials=false".into(),
        format!("--model-cache-dir={}", work.path().join("cache").display()),
    ];
    let mut r = Replica::start(args, env, work.path());
    let line = wait_for(30, "the listing error", || {
        let log = r.log(0);
        async move { log.lines().find(|l| l.contains("cannot list s3://models/repo:")).map(str::to_string) }
    })
    .await;
    eprintln!("{line}");
    assert!(line.contains("403") || line.contains("Forbidden") || line.contains("SignatureDoesNotMatch"), "{line}");
    let log = r.log(0);
    assert!(!log.contains(wrong_secret), "the secret shows:\n{log}");
    assert!(!log.contains(KEY_ID), "the key id shows:\n{log}");
    let exit = tokio::task::block_in_place(|| r.terminate());
    assert!(exit.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_listing_request_per_poll_for_100_models_with_3_versions() {
    use futures::StreamExt;
    let _serial = SERIAL.lock().await;
    let weed = Seaweed::start().await;
    let store = weed.store();
    let (models, versions) = (100, 3);
    let uploads: Vec<(String, Vec<u8>)> = (0..models)
        .flat_map(|m| (1..=versions).map(move |v| (m, v)))
        .flat_map(|(m, v)| {
            [
                (format!("many/m{m:03}/{v}/model.onnx"), offset_model(v)),
                (format!("many/m{m:03}/{v}/notes.txt"), format!("model {m} version {v}").into_bytes()),
            ]
        })
        .collect();
    let objects = uploads.len();
    let s = &store;
    futures::stream::iter(uploads).for_each_concurrent(16, |(k, b)| async move { put(s, &k, b).await }).await;

    // maas talks to the bucket through a loopback proxy that counts its requests.
    let proxy = CountingProxy::start(weed.s3_port).await;
    let work = tempfile::tempdir().unwrap();
    let mut env = weed.env();
    env.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
    env.push(("AWS_ENDPOINT_URL".into(), format!("http://127.0.0.1:{}", proxy.port)));
    env.push(("RUST_LOG".into(), "info,ort=warn,maas::repository::remote=debug".into()));
    let args = vec![
        "--model-repository=s3://models/many".to_string(),
        "--file-system-poll-wait-seconds=1".into(),
        "--session-pool-size=1".into(),
        "--object-store-metadata-credentials=false".into(),
        format!("--model-cache-dir={}", work.path().join("cache").display()),
    ];
    let started = Instant::now();
    let mut r = Replica::start(args, env, work.path());
    wait_for(120, "the initial models", || {
        let log = r.log(0);
        async move { log.contains("initial models loaded; serving models=100").then_some(()) }
    })
    .await;
    let ready = started.elapsed();
    // At least 5 polls (one a second; fewer on a loaded machine, so wait for them, bounded).
    wait_for(60, "5 polls of the bucket", || {
        let log = r.log(0);
        async move { (log.matches("maas::repository::remote: listed").count() >= 5).then_some(()) }
    })
    .await;
    let exit = tokio::task::block_in_place(|| r.terminate());
    assert!(exit.success());
    let polls = r.log(0).matches("maas::repository::remote: listed").count() as u64;
    let (lists, gets, heads) = (proxy.count("LIST"), proxy.count("GET"), proxy.count("HEAD"));
    eprintln!(
        "{models} models x {versions} versions ({objects} objects): {polls} polls, {lists} LIST requests \
         ({:.2} per poll), {gets} GETs, {heads} HEADs; all {models} models serving {} ms after start",
        lists as f64 / polls as f64,
        ready.as_millis()
    );
    assert!(polls >= 5, "{polls} polls");
    assert_eq!(lists, polls, "one ListObjectsV2 request per poll");
    assert_eq!(heads, 0, "no per-object HEAD");
    assert_eq!(gets, (models * 2) as u64, "only the latest version of each model, each object once");
}
