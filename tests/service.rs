//! GetModelMetadata, GetModelStatus, unimplemented RPCs, health, reflection and execution providers.
mod common;

use common::*;
use maas::proto::tensorflow::serving::{
    self as tfs, model_version_status::State, GetModelMetadataRequest, GetModelStatusRequest, SignatureDefMap,
};
use maas::proto::tensorflow::{tensor_info, DataType};
use maas::runtime::Provider;
#[allow(unused_imports)]
use maas::ServeConfig;
use prost::Message;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

fn metadata_req(model: &str, fields: &[&str]) -> GetModelMetadataRequest {
    GetModelMetadataRequest {
        model_spec: Some(spec(model, None)),
        metadata_field: fields.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_has_the_signature_def() {
    let server = TestServer::ready(test_config(fixtures())).await;
    let mut c = server.predict_client().await;
    let resp = c.get_model_metadata(metadata_req("fixed_shape", &["signature_def"])).await.unwrap().into_inner();
    let spec = resp.model_spec.unwrap();
    assert_eq!(spec.name, "fixed_shape");
    assert_eq!(spec.version_choice, Some(tfs::model_spec::VersionChoice::Version(1)));
    let any = &resp.metadata["signature_def"];
    assert_eq!(any.type_url, "type.googleapis.com/tensorflow.serving.SignatureDefMap");
    let map = SignatureDefMap::decode(any.value.as_slice()).unwrap();
    assert_eq!(map.signature_def.keys().collect::<Vec<_>>(), vec!["serving_default"]);
    let def = &map.signature_def["serving_default"];
    assert_eq!(def.method_name, "tensorflow/serving/predict");
    let a = &def.inputs["a"];
    assert_eq!(a.dtype, DataType::DtFloat as i32);
    assert_eq!(a.encoding, Some(tensor_info::Encoding::Name("a".into())));
    let dims = |t: &maas::proto::tensorflow::TensorInfo| -> Vec<i64> {
        t.tensor_shape.as_ref().unwrap().dim.iter().map(|d| d.size).collect()
    };
    assert_eq!(dims(a), vec![2, 3]);
    assert_eq!(def.inputs["b"].dtype, DataType::DtInt64 as i32);
    assert_eq!(dims(&def.inputs["b"]), vec![-1], "dynamic dims are -1");
    assert_eq!(def.outputs.len(), 2);
    assert_eq!(dims(&def.outputs["sum"]), vec![2, 3]);

    let err = c.get_model_metadata(metadata_req("fixed_shape", &[])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "GetModelMetadataRequest must specify at least one metadata_field (supported: \"signature_def\")"
    );
    let err = c.get_model_metadata(metadata_req("fixed_shape", &["signature_def", "graph"])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "Metadata field graph is not supported; the supported field is \"signature_def\"");
    let err = c.get_model_metadata(metadata_req("missing", &["signature_def"])).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_status_reports_every_version() {
    let server = TestServer::ready(test_config(fixtures())).await;
    let mut m = server.model_client().await;
    let status = |name: &str, version: Option<i64>| GetModelStatusRequest { model_spec: Some(spec(name, version)) };

    let ok = m.get_model_status(status("numbers_classifier", None)).await.unwrap().into_inner();
    assert_eq!(ok.model_version_status.len(), 1);
    let v = &ok.model_version_status[0];
    assert_eq!(v.version, 1);
    assert_eq!(v.state, State::Available as i32);
    let st = v.status.as_ref().unwrap();
    // As in TF Serving, a healthy version's error_message is empty (details: /maas/v1/models/{m}).
    assert_eq!((st.error_code, st.error_message.as_str()), (0, ""));

    let broken = m.get_model_status(status("broken", None)).await.unwrap().into_inner();
    let v = &broken.model_version_status[0];
    assert_eq!((v.version, v.state), (1, State::End as i32));
    let st = v.status.as_ref().unwrap();
    assert_eq!(st.error_code, Code::InvalidArgument as i32);
    assert!(
        st.error_message.contains("ONNX Runtime could not load") && st.error_message.contains("broken/1/model.onnx"),
        "{}",
        st.error_message
    );

    let one = m.get_model_status(status("numbers_classifier", Some(1))).await.unwrap().into_inner();
    assert_eq!(one.model_version_status.len(), 1);
    let err = m.get_model_status(status("numbers_classifier", Some(9))).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        err.message(),
        "Servable not found for request: model 'numbers_classifier' has no version 9; its versions: [1]"
    );
    let err = m.get_model_status(status("missing", None)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = m.get_model_status(GetModelStatusRequest { model_spec: None }).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "Missing ModelSpec"));

    let err = m.handle_reload_config_request(tfs::ReloadConfigRequest::default()).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "ReloadConfigRequest has no config"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classify_regress_multi_inference_are_unimplemented() {
    let server = TestServer::ready(test_config(fixtures())).await;
    let mut c = server.predict_client().await;
    let e1 = c.classify(tfs::ClassificationRequest::default()).await.unwrap_err();
    let e2 = c.regress(tfs::RegressionRequest::default()).await.unwrap_err();
    let e3 = c.multi_inference(tfs::MultiInferenceRequest::default()).await.unwrap_err();
    for (e, rpc) in [(e1, "Classify"), (e2, "Regress"), (e3, "MultiInference")] {
        assert_eq!(e.code(), Code::Unimplemented);
        assert_eq!(
            e.message(),
            format!("{rpc} is not supported: maas serves ONNX models, which have no tf.Example-based classify/regress signatures; use Predict")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_until_models_are_loaded() {
    // The slow fixture takes about a second to load (two sessions), so the first Watch update
    // comes while loading.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("slow")).unwrap();
    copy_dir(&fixtures().join("slow/1"), &dir.path().join("slow/1"));
    let mut cfg = test_config(dir.path());
    cfg.manager.runtime.pool_size = 2;
    let server = TestServer::start(cfg).await;
    let mut h = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let mut watch =
        h.watch(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap().status();
    assert_eq!(first, ServingStatus::NotServing);
    let next =
        tokio::time::timeout(std::time::Duration::from_secs(60), watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::Serving);
    for svc in [
        "",
        "tensorflow.serving.PredictionService",
        "tensorflow.serving.ModelService",
        "inference.GRPCInferenceService",
    ] {
        assert_eq!(server.health(svc).await, ServingStatus::Serving, "{svc}");
    }
    let mut hc = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let err = hc.check(tonic_health::pb::HealthCheckRequest { service: "nope".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_is_serving_while_loading_and_not_serving_once_shutdown_begins() {
    // The Kubernetes liveness probe asks for the service "liveness": SERVING while the process
    // runs, even before the models are loaded (a large model must not get the pod restarted).
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("slow")).unwrap();
    copy_dir(&fixtures().join("slow/1"), &dir.path().join("slow/1"));
    let mut cfg = test_config(dir.path());
    cfg.manager.runtime.pool_size = 2;
    let mut server = TestServer::start(cfg).await;
    let live = server.health(maas::server::LIVENESS_SERVICE).await;
    let ready = server.health("").await;
    assert_eq!(live, ServingStatus::Serving, "liveness is SERVING while the models load");
    // Asked after liveness: readiness still NOT_SERVING proves both held at the same time.
    assert_eq!(ready, ServingStatus::NotServing, "the slow model takes about a second to load");
    server.wait_serving().await;
    assert_eq!(server.health("liveness").await, ServingStatus::Serving);

    let mut h = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let mut live_watch =
        h.watch(tonic_health::pb::HealthCheckRequest { service: "liveness".into() }).await.unwrap().into_inner();
    let mut ready_watch =
        h.watch(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(live_watch.message().await.unwrap().unwrap().status(), ServingStatus::Serving);
    assert_eq!(ready_watch.message().await.unwrap().unwrap().status(), ServingStatus::Serving);
    server.trigger_shutdown();
    let secs = std::time::Duration::from_secs(10);
    let live = tokio::time::timeout(secs, live_watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(live.status(), ServingStatus::NotServing, "liveness goes NOT_SERVING once shutdown begins");
    let ready = tokio::time::timeout(secs, ready_watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(ready.status(), ServingStatus::NotServing);
    drop((live_watch, ready_watch));
    server.join().await.expect("serve returns Ok after the drain");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services_v1_and_v1alpha() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse, ServerReflectionRequest,
    };
    let server = TestServer::ready(test_config(fixtures())).await;
    let mut client = ServerReflectionClient::new(server.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else { panic!("{resp:?}") };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "inference.GRPCInferenceService",
            "maas.usage.v1.UsageService",
            "tensorflow.serving.ModelService",
            "tensorflow.serving.PredictionService",
        ]
    );
    // the file for Predict resolves, with its dependencies
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("tensorflow.serving.PredictionService".into())),
    };
    let mut stream = client.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = resp.message_response else { panic!("{resp:?}") };
    let file = prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice()).unwrap();
    assert_eq!(file.name(), "tensorflow_serving/apis/prediction_service.proto");
    assert!(file.dependency.contains(&"tensorflow_serving/apis/predict.proto".to_string()), "{:?}", file.dependency);
    // and every dependency resolves by file name, as grpcurl asks for them
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileByFilename("tensorflow/core/framework/tensor.proto".into())),
    };
    let mut stream = client.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = resp.message_response else { panic!("{resp:?}") };
    let file = prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice()).unwrap();
    assert!(file.message_type.iter().any(|m| m.name() == "TensorProto"));

    use tonic_reflection::pb::v1alpha as alpha;
    let mut client = alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let req = alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut stream = client.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) = resp.message_response
    else {
        panic!("{resp:?}")
    };
    assert!(list.service.iter().any(|s| s.name == "tensorflow.serving.PredictionService"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_provider_that_cannot_register_fails_the_load_unless_fallback() {
    // This machine's ONNX Runtime is the CPU build: CUDA cannot be registered.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("numbers_classifier/1"), &dir.path().join("numbers_classifier/1"));

    let mut cfg = test_config(dir.path());
    cfg.manager.runtime.providers = vec![Provider::Cuda, Provider::Cpu];
    let server = TestServer::ready(cfg.clone()).await;
    let mut m = server.model_client().await;
    let s = m
        .get_model_status(GetModelStatusRequest { model_spec: Some(spec("numbers_classifier", None)) })
        .await
        .unwrap()
        .into_inner();
    let v = &s.model_version_status[0];
    assert_eq!(v.state, State::End as i32);
    let st = v.status.as_ref().unwrap();
    assert_eq!(st.error_code, Code::FailedPrecondition as i32);
    assert!(st.error_message.starts_with("execution provider could not be registered (cuda: "), "{}", st.error_message);
    assert!(st.error_message.ends_with("; pass --allow-cpu-fallback to run on CPU instead"), "{}", st.error_message);
    let err = server
        .predict_client()
        .await
        .predict(predict_req("numbers_classifier", None, vec![("x", classifier_input(1, 0))]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    drop(server);

    cfg.manager.runtime.allow_cpu_fallback = true;
    let server = TestServer::ready(cfg).await;
    let mut m = server.model_client().await;
    let s = m
        .get_model_status(GetModelStatusRequest { model_spec: Some(spec("numbers_classifier", None)) })
        .await
        .unwrap()
        .into_inner();
    let v = &s.model_version_status[0];
    assert_eq!(v.state, State::Available as i32);
    assert_eq!(v.status.as_ref().unwrap().error_message, "");
    // The fallback shows in maas's status route.
    let url = format!("http://{}/maas/v1/models/numbers_classifier", server.rest_addr);
    let details: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    let version = &details["versions"][0];
    assert_eq!(version["execution_providers"], serde_json::json!(["CPUExecutionProvider"]), "{details}");
    assert!(version["provider_fallback"].as_str().unwrap().starts_with("cuda: "), "{details}");
    let ok = server
        .predict_client()
        .await
        .predict(predict_req("numbers_classifier", None, vec![("x", classifier_input(1, 0))]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.outputs["y"].float_val.len(), 1);
}
