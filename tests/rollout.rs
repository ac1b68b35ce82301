//! Rollouts under full traffic, and memory across many load/unload cycles.
mod common;

use common::*;
use maas::proto::tensorflow::serving::model_spec::VersionChoice;
use maas::proto::tensorflow::serving::model_version_status::State;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_under_load_has_zero_failed_requests() {
    let repo = tempfile::tempdir().unwrap();
    let m = repo.path().join("m");
    publish(&m, 1, &offset_model(1));
    let mut cfg = test_config(repo.path());
    cfg.manager.poll_interval = Some(Duration::from_millis(50));
    cfg.manager.max_load_retries = 0;
    let server = TestServer::ready(cfg).await;
    let client = server.predict_client().await;

    // 8 clients send Predict back to back; each records (version, answer) in order.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (mut c, stop) = (client.clone(), Arc::clone(&stop));
        clients.push(tokio::spawn(async move {
            let mut seen: Vec<(Instant, i64, f32)> = Vec::new();
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match c.predict(offset_req("m", None)).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        let Some(VersionChoice::Version(v)) = r.model_spec.and_then(|s| s.version_choice) else {
                            panic!("response without a version")
                        };
                        seen.push((Instant::now(), v, r.outputs["y"].float_val[0]));
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (seen, errors)
        }));
    }

    // Health must stay SERVING through the whole rollout.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let mut watch =
        health.watch(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    let health_log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let watcher = {
        let log = Arc::clone(&health_log);
        tokio::spawn(async move {
            while let Ok(Some(m)) = watch.message().await {
                log.lock().unwrap().push(m.status());
            }
        })
    };

    // 10 new versions one after another, and one corrupt version in the middle.
    let mut published = Vec::new();
    let mut current = 1;
    for k in 2..=12 {
        let started = Instant::now();
        if k == 7 {
            publish(&m, 7, b"corrupt: not an onnx model");
            wait_for(10, "version 7 to fail", || async {
                version_states(&server, "m")
                    .await
                    .iter()
                    .any(|v| v.0 == 7 && v.1 == State::End as i32 && v.2 != 0)
                    .then_some(())
            })
            .await;
            continue;
        }
        publish(&m, k, &offset_model(k));
        published.push((k, started));
        wait_for(10, &format!("version {k} to serve"), || async {
            (available(&server, "m").await == vec![k]).then_some(())
        })
        .await;
        current = k;
        // let the traffic run on this version for a moment
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(current, 12);
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    let mut first_seen: std::collections::BTreeMap<i64, Instant> = Default::default();
    for c in clients {
        let (seen, errors) = c.await.unwrap();
        assert!(errors.is_empty(), "failed requests during the rollout: {errors:?}");
        total += seen.len();
        let mut last = 0;
        for (at, v, y) in &seen {
            assert_eq!(*y, *v as f32, "the answer comes from the version named in the response");
            assert_ne!(*v, 7, "the corrupt version never serves");
            assert!(*v >= last, "a client went back from version {last} to {v}");
            last = *v;
            let e = first_seen.entry(*v).or_insert(*at);
            if at < e {
                *e = *at;
            }
        }
    }
    assert!(total > 500, "only {total} requests were sent");
    // every new version took traffic, within a few poll intervals of being published
    let mut worst = Duration::ZERO;
    for (k, published_at) in published {
        let at = first_seen.get(&k).unwrap_or_else(|| panic!("version {k} never answered"));
        let delay = at.duration_since(published_at);
        worst = worst.max(delay);
        assert!(delay < Duration::from_secs(3), "version {k} took {delay:?} to take traffic");
    }
    watcher.abort();
    let statuses = health_log.lock().unwrap().clone();
    assert!(!statuses.is_empty());
    assert!(
        statuses.iter().all(|s| *s == tonic_health::pb::health_check_response::ServingStatus::Serving),
        "health left SERVING during the rollout: {statuses:?}"
    );
    println!("rollout: {total} requests, 0 failed, slowest switch to a new version {worst:?}");
    let states = version_states(&server, "m").await;
    for (v, state, code, msg) in &states {
        match v {
            12 => assert_eq!(*state, State::Available as i32),
            7 => assert!(*state == State::End as i32 && *code != 0, "{msg}"),
            _ => assert_eq!(*state, State::End as i32, "version {v}: {msg}"),
        }
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_does_not_grow_over_50_load_unload_cycles() {
    let repo = tempfile::tempdir().unwrap();
    let m = repo.path().join("m");
    let classifier = std::fs::read(fixtures().join("numbers_classifier/1/model.onnx")).unwrap();
    publish(&m, 1, &classifier);
    let mut cfg = test_config(repo.path());
    cfg.manager.poll_interval = Some(Duration::from_millis(30));
    let server = TestServer::ready(cfg).await;
    let mut client = server.predict_client().await;

    let mut rss_after_5 = 0;
    for cycle in 1..=50i64 {
        let v = cycle + 1;
        publish(&m, v, &classifier);
        std::fs::remove_dir_all(m.join((v - 1).to_string())).unwrap();
        wait_for(20, &format!("cycle {cycle}"), || async {
            let s = version_states(&server, "m").await;
            let new_up = s.iter().any(|x| x.0 == v && x.1 == State::Available as i32);
            let old_gone = s.iter().any(|x| x.0 == v - 1 && x.1 == State::End as i32);
            (new_up && old_gone).then_some(())
        })
        .await;
        let r = client.predict(predict_req("m", None, vec![("x", classifier_input(4, cycle as usize))])).await.unwrap();
        assert_eq!(r.into_inner().model_spec.unwrap().version_choice, Some(VersionChoice::Version(v)));
        if cycle == 5 {
            rss_after_5 = rss_kib();
        }
    }
    let rss_after_50 = rss_kib();
    let growth = rss_after_50 as i64 - rss_after_5 as i64;
    println!("RSS after 5 cycles: {rss_after_5} KiB, after 50: {rss_after_50} KiB, growth {growth} KiB");
    assert!(
        growth < 8 * 1024,
        "RSS grew by {growth} KiB over 45 load/unload cycles (5: {rss_after_5} KiB, 50: {rss_after_50} KiB)"
    );
}
