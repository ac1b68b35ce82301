//! The live repository: versions appear, change, fail and disappear while the server runs.
mod common;

use common::*;
use maas::proto::tensorflow::serving::model_version_status::State;
use std::time::Duration;
use tonic::Code;

async fn answer(server: &TestServer, model: &str) -> Result<f32, tonic::Status> {
    let r = server.predict_client().await.predict(offset_req(model, None)).await?.into_inner();
    Ok(r.outputs["y"].float_val[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_version_is_picked_up_and_the_old_one_retired() {
    let repo = tempfile::tempdir().unwrap();
    let m = repo.path().join("m");
    publish(&m, 1, &offset_model(1));
    let server = TestServer::ready(test_config(repo.path())).await;
    assert_eq!(answer(&server, "m").await.unwrap(), 1.0);

    publish(&m, 2, &offset_model(2));
    wait_for(10, "version 2 to answer", || async { (answer(&server, "m").await.ok()? == 2.0).then_some(()) }).await;
    wait_for(10, "version 1 to be unloaded", || async {
        let s = version_states(&server, "m").await;
        s.iter().any(|v| v.0 == 1 && v.1 == State::End as i32 && v.2 == 0 && v.3.is_empty()).then_some(())
    })
    .await;
    assert_eq!(available(&server, "m").await, vec![2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_still_being_written_is_not_loaded() {
    let repo = tempfile::tempdir().unwrap();
    let m = repo.path().join("m");
    publish(&m, 1, &offset_model(1));
    // A writer that makes progress at least once per poll interval is never caught mid-copy:
    // scans every 300 ms, a write every ~20 ms (margin for a slow CI machine).
    let mut cfg = test_config(repo.path());
    cfg.manager.poll_interval = Some(Duration::from_millis(300));
    let server = TestServer::ready(cfg).await;

    // Copy version 2 slowly in place (no rename): the file grows between scans.
    let bytes = offset_model(2);
    std::fs::create_dir_all(m.join("2")).unwrap();
    let path = m.join("2/model.onnx");
    let mut written = 0;
    while written < bytes.len() {
        let end = (written + 4).min(bytes.len());
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, &bytes[written..end]).unwrap();
        drop(f);
        written = end;
        // never loaded while incomplete: no status for version 2, and version 1 answers
        let states = version_states(&server, "m").await;
        assert!(!states.iter().any(|v| v.0 == 2), "version 2 touched while being written: {states:?}");
        assert_eq!(answer(&server, "m").await.unwrap(), 1.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for(10, "version 2 to answer once complete", || async {
        (answer(&server, "m").await.ok()? == 2.0).then_some(())
    })
    .await;
    let states = version_states(&server, "m").await;
    assert!(states.iter().all(|v| v.2 == 0), "no failed load: {states:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_version_fails_old_keeps_serving_and_fixed_files_load() {
    let repo = tempfile::tempdir().unwrap();
    let m = repo.path().join("m");
    publish(&m, 1, &offset_model(1));
    let mut cfg = test_config(repo.path());
    cfg.manager.max_load_retries = 1;
    cfg.manager.load_retry_interval = Duration::from_millis(200);
    let server = TestServer::ready(cfg).await;

    publish(&m, 2, b"definitely not onnx");
    let failed = wait_for(10, "version 2 to fail", || async {
        version_states(&server, "m").await.into_iter().find(|v| v.0 == 2 && v.1 == State::End as i32)
    })
    .await;
    assert_eq!(failed.2, Code::InvalidArgument as i32);
    assert!(
        failed.3.starts_with("ONNX Runtime could not load ") && failed.3.contains("m/2/model.onnx"),
        "{}",
        failed.3
    );
    assert_eq!(answer(&server, "m").await.unwrap(), 1.0, "the previous version keeps serving");
    assert_eq!(available(&server, "m").await, vec![1]);
    let err = server.predict_client().await.predict(offset_req("m", Some(2))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().starts_with("model 'm' version 2 is END (failed to load: ONNX Runtime could not load"),
        "{}",
        err.message()
    );

    // after the retries the version stays END; fixing its files loads it
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(answer(&server, "m").await.unwrap(), 1.0);
    std::fs::write(m.join("2/model.onnx"), offset_model(2)).unwrap();
    wait_for(10, "the fixed version 2 to answer", || async { (answer(&server, "m").await.ok()? == 2.0).then_some(()) })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_files_of_a_loaded_version_are_reloaded() {
    let repo = tempfile::tempdir().unwrap();
    let m = repo.path().join("m");
    publish(&m, 1, &offset_model(1));
    let server = TestServer::ready(test_config(repo.path())).await;
    assert_eq!(answer(&server, "m").await.unwrap(), 1.0);
    std::fs::write(m.join("1/model.onnx"), offset_model(5)).unwrap();
    wait_for(10, "version 1 to answer with the new files", || async {
        (answer(&server, "m").await.ok()? == 5.0).then_some(())
    })
    .await;
    assert_eq!(available(&server, "m").await, vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_version_is_unloaded_and_models_come_and_go() {
    let repo = tempfile::tempdir().unwrap();
    let m = repo.path().join("m");
    publish(&m, 1, &offset_model(1));
    publish(&m, 2, &offset_model(2));
    let server = TestServer::ready(test_config(repo.path())).await;
    assert_eq!(answer(&server, "m").await.unwrap(), 2.0);

    // removing the served version rolls back to the highest remaining one
    std::fs::remove_dir_all(m.join("2")).unwrap();
    wait_for(10, "version 1 to answer", || async { (answer(&server, "m").await.ok()? == 1.0).then_some(()) }).await;
    wait_for(10, "version 2 to be unloaded", || async {
        version_states(&server, "m").await.iter().any(|v| v.0 == 2 && v.1 == State::End as i32).then_some(())
    })
    .await;

    // a model added at runtime
    publish(&repo.path().join("n"), 3, &offset_model(3));
    wait_for(10, "model n", || async { (answer(&server, "n").await.ok()? == 3.0).then_some(()) }).await;
    // and removed
    std::fs::remove_dir_all(repo.path().join("n")).unwrap();
    let err = wait_for(10, "model n to be gone", || async { answer(&server, "n").await.err() }).await;
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().starts_with("Servable not found for request: model 'n' is not served here"),
        "{}",
        err.message()
    );
    assert_eq!(answer(&server, "m").await.unwrap(), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_synthesized_warmup_does_not_fail_the_load() {
    let repo = tempfile::tempdir().unwrap();
    let m = repo.path().join("m");
    publish(&m, 1, &offset_model(1));
    let mut cfg = test_config(repo.path());
    cfg.manager.max_load_retries = 0;
    let server = TestServer::ready(cfg).await;
    // Version 2 runs only for 6 elements: the synthesized warmup (1 element) fails, and the version
    // serves anyway; version 1 is retired as for any rollout.
    let bytes = std::fs::read(repo_root().join("tests/fixtures/rollout/warmup_fails.onnx")).unwrap();
    publish(&m, 2, &bytes);
    wait_for(10, "version 2 to be the only AVAILABLE one", || async {
        (available(&server, "m").await == vec![2]).then_some(())
    })
    .await;
    let v2 = version_states(&server, "m").await.into_iter().find(|v| v.0 == 2).unwrap();
    assert_eq!((v2.2, v2.3.as_str()), (Code::Ok as i32, ""));
    let x = f32_tensor(&[6], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let r = server.predict_client().await.predict(predict_req("m", None, vec![("x", x)])).await.unwrap();
    assert_eq!(dims(&r.into_inner().outputs["y"]), vec![2, 3]);
    let url = format!("http://{}/maas/v1/models/m", server.rest_addr);
    let details: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    let warmup = &details["versions"].as_array().unwrap().iter().find(|v| v["version"] == 2).unwrap()["warmup"];
    assert_eq!(warmup["kind"], "skipped", "{details}");
    assert!(
        warmup["message"]
            .as_str()
            .unwrap()
            .starts_with("synthesized warmup skipped: model 'm' version 2: ONNX Runtime failed to run"),
        "{details}"
    );
}
