//! Concurrency and graceful shutdown with requests in flight.
mod common;

use common::*;
use maas::proto::tensorflow::{DataType, TensorProto};
#[allow(unused_imports)]
use maas::ServeConfig;
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_requests_are_all_correct() {
    let server = TestServer::ready(test_config(fixtures())).await;
    let client = server.predict_client().await;
    // Reference answers, one request at a time.
    let mut expected = Vec::new();
    for i in 0..64 {
        let r = client
            .clone()
            .predict(predict_req("numbers_classifier", None, vec![("x", classifier_input(1 + i % 4, i))]))
            .await
            .unwrap()
            .into_inner();
        expected.push(r.outputs["y"].float_val.clone());
    }
    // The same 64 at once, over one HTTP/2 connection.
    let mut tasks = Vec::new();
    for i in 0..64 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            let r = c
                .predict(predict_req("numbers_classifier", None, vec![("x", classifier_input(1 + i % 4, i))]))
                .await
                .map(|r| r.into_inner().outputs["y"].float_val.clone());
            (i, r)
        }));
    }
    for t in tasks {
        let (i, r) = t.await.unwrap();
        let got = r.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(got, expected[i], "request {i}");
        assert_eq!(got.len(), 1 + i % 4);
    }
}

fn slow_input() -> TensorProto {
    let vals: Vec<f32> = (0..64 * 256).map(|i| ((i % 97) as f32 - 48.0) / 50.0).collect();
    TensorProto {
        dtype: DataType::DtFloat as i32,
        tensor_shape: shape(&[64, 256]),
        float_val: vals,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let mut cfg = test_config(fixtures());
    cfg.manager.runtime.pool_size = 1;
    let mut server = TestServer::ready(cfg).await;
    let client = server.predict_client().await;
    // The reference answer.
    let expected = client
        .clone()
        .predict(predict_req("slow", None, vec![("x", slow_input())]))
        .await
        .unwrap()
        .into_inner()
        .outputs["y"]
        .float_val
        .clone();
    assert_eq!(expected.len(), 64 * 256);

    // A health watcher sees the drain begin.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let mut watch =
        health.watch(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status(), ServingStatus::Serving);

    // Three slow requests queue on one session (about 3 x 170 ms), then shutdown is triggered.
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move { c.predict(predict_req("slow", None, vec![("x", slow_input())])).await }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    server.trigger_shutdown();
    let status = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(status.status(), ServingStatus::NotServing, "health goes NOT_SERVING when draining begins");
    for t in tasks {
        let r = t.await.unwrap().expect("in-flight request must complete during the drain");
        assert_eq!(r.into_inner().outputs["y"].float_val, expected);
    }
    // The open Watch stream would keep the drain waiting; the drain timeout (30 s by default)
    // ends it. Drop it so the server can stop as soon as the requests are done.
    drop(watch);
    server.join().await.expect("serve returns Ok after the drain");
    assert!(started.elapsed() < Duration::from_secs(20), "drain took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_a_stream_that_never_ends() {
    let mut cfg = test_config(fixtures());
    cfg.drain_timeout = Duration::from_millis(500);
    let mut server = TestServer::ready(cfg).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let mut watch =
        health.watch(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status(), ServingStatus::Serving);
    let started = Instant::now();
    server.trigger_shutdown();
    server.join().await.expect("serve returns Ok when the drain timeout ends");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450) && took < Duration::from_secs(10), "took {took:?}");
    drop(watch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_bound_refuses_at_once_with_resource_exhausted() {
    let mut cfg = test_config(fixtures());
    cfg.manager.runtime.pool_size = 1;
    cfg.manager.runtime.max_in_flight = 2;
    let server = TestServer::ready(cfg).await;
    let client = server.predict_client().await;
    // two slow requests hold the bound (one runs, one waits for the single session)
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = client.clone();
        held.push(tokio::spawn(async move { c.predict(predict_req("slow", None, vec![("x", slow_input())])).await }));
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    let started = Instant::now();
    let err = client.clone().predict(predict_req("slow", None, vec![("x", slow_input())])).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(150), "refused at once, took {:?}", started.elapsed());
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        err.message(),
        "model 'slow' version 1 already has 2 requests in flight, the limit set by --max-in-flight-requests (2); retry later"
    );
    for h in held {
        h.await.unwrap().expect("admitted requests complete");
    }
    // the bound is per model version: the slot is free again
    client.clone().predict(predict_req("slow", None, vec![("x", slow_input())])).await.unwrap();
    // other models are not affected
    client.clone().predict(predict_req("numbers_classifier", None, vec![("x", classifier_input(1, 0))])).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_deadline_passed_while_queued_is_not_run() {
    use maas::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
    use maas::proto::inference::ModelStatisticsRequest;
    let mut cfg = test_config(fixtures());
    cfg.manager.runtime.pool_size = 1;
    let server = TestServer::ready(cfg).await;
    let client = server.predict_client().await;
    // occupy the only session for ~3 x 170 ms
    let mut busy = Vec::new();
    for _ in 0..3 {
        let mut c = client.clone();
        busy.push(tokio::spawn(async move { c.predict(predict_req("slow", None, vec![("x", slow_input())])).await }));
    }
    tokio::time::sleep(Duration::from_millis(40)).await;
    let mut req = tonic::Request::new(predict_req("slow", None, vec![("x", slow_input())]));
    req.set_timeout(Duration::from_millis(50));
    let err = client.clone().predict(req).await.unwrap_err();
    assert!(
        matches!(err.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled),
        "{:?}: {}",
        err.code(),
        err.message()
    );
    for b in busy {
        b.await.unwrap().unwrap();
    }
    // The expired request never ran: either the server dropped it while it waited for the session
    // (tonic enforces grpc-timeout), or it was refused on its turn (counted as a failure).
    client.clone().predict(predict_req("slow", None, vec![("x", slow_input())])).await.unwrap();
    let mut v2 = GrpcInferenceServiceClient::new(server.channel().await);
    let s = v2.model_statistics(ModelStatisticsRequest { name: "slow".into(), version: String::new() }).await;
    let st = s.unwrap().into_inner().model_stats[0].inference_stats.unwrap();
    assert_eq!(st.success.unwrap().count, 4, "3 busy requests + 1 after: the expired one did not run");
    assert!(st.fail.unwrap().count <= 1);
}
