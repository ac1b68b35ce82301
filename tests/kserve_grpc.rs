//! KServe v2 / Open Inference Protocol gRPC front end, through a tonic client.
mod common;

use bytes::Bytes;
use common::*;
use maas::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use maas::proto::inference::{
    self as pb, infer_parameter::ParameterChoice, model_infer_request::InferInputTensor,
    model_infer_request::InferRequestedOutputTensor, InferParameter, InferTensorContents, ModelInferRequest,
};
use maas::proto::tensorflow::DataType;
use tonic::transport::Channel;
use tonic::Code;

async fn client(server: &TestServer) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::new(server.channel().await).max_decoding_message_size(64 << 20)
}

fn raw_req(model: &str, name: &str, datatype: &str, shape: Vec<i64>, raw: Vec<u8>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        id: "req-7".into(),
        inputs: vec![InferInputTensor { name: name.into(), datatype: datatype.into(), shape, ..Default::default() }],
        raw_input_contents: vec![Bytes::from(raw)],
        ..Default::default()
    }
}

/// (model suffix, v2 datatype, raw bytes of a [2, 3] sample)
fn samples() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let f32s: Vec<u8> = [1.5f32, -2.25, 0.0, f32::MAX, 1e-30, -0.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let f64s: Vec<u8> = [1.5f64, -2.25e300, 0.0, f64::MAX, 1e-300, -0.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let halves: Vec<u8> = [0x3c00u16, 0xc000, 0, 0x7bff, 1, 0x8000].iter().flat_map(|v| v.to_le_bytes()).collect();
    let i64s: Vec<u8> = [i64::MIN, i64::MAX, 0, 1, -1, 1 << 62].iter().flat_map(|v| v.to_le_bytes()).collect();
    let u64s: Vec<u8> = [0u64, u64::MAX, 1, 2, 3, 1 << 63].iter().flat_map(|v| v.to_le_bytes()).collect();
    let i32s: Vec<u8> = [i32::MIN, i32::MAX, 0, 1, -1, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
    let u32s: Vec<u8> = [0u32, u32::MAX, 1, 2, 3, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
    let i16s: Vec<u8> = [i16::MIN, i16::MAX, 0, 1, -1, 300].iter().flat_map(|v| v.to_le_bytes()).collect();
    let u16s: Vec<u8> = [0u16, u16::MAX, 1, 2, 40000, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
    vec![
        ("float", "FP32", f32s),
        ("double", "FP64", f64s),
        ("float16", "FP16", halves.clone()),
        ("bfloat16", "BF16", halves),
        ("int8", "INT8", vec![0x80, 0x7f, 0, 1, 0xff, 5]),
        ("int16", "INT16", i16s),
        ("int32", "INT32", i32s),
        ("int64", "INT64", i64s),
        ("uint8", "UINT8", vec![0, 255, 1, 2, 128, 7]),
        ("uint16", "UINT16", u16s),
        ("uint32", "UINT32", u32s),
        ("uint64", "UINT64", u64s),
        ("bool", "BOOL", vec![1, 0, 0, 1, 1, 0]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_infer_every_datatype_raw_and_typed() {
    let server = TestServer::ready(test_config(fixtures())).await;
    let mut c = client(&server).await;
    for (suffix, datatype, raw) in samples() {
        let model = format!("identity_{suffix}");
        let resp = c.model_infer(raw_req(&model, "x", datatype, vec![2, 3], raw.clone())).await;
        let resp = resp.unwrap_or_else(|e| panic!("{model}: {e}")).into_inner();
        assert_eq!(
            (resp.model_name.as_str(), resp.model_version.as_str(), resp.id.as_str()),
            (model.as_str(), "1", "req-7")
        );
        assert_eq!(resp.outputs.len(), 1);
        assert_eq!((resp.outputs[0].name.as_str(), resp.outputs[0].datatype.as_str()), ("y", datatype));
        assert_eq!(resp.outputs[0].shape, vec![2, 3]);
        assert_eq!(resp.raw_output_contents, vec![Bytes::from(raw.clone())], "{model}: raw output is the default");

        if datatype == "FP16" || datatype == "BF16" {
            continue;
        }
        // typed output on request, then typed input from that output: same values
        let mut req = raw_req(&model, "x", datatype, vec![2, 3], raw.clone());
        req.parameters.insert(
            "binary_data_output".into(),
            InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(false)) },
        );
        let typed = c.model_infer(req).await.unwrap().into_inner();
        assert!(typed.raw_output_contents.is_empty());
        let contents = typed.outputs[0].contents.clone().expect("typed contents");
        let again = ModelInferRequest {
            model_name: model.clone(),
            inputs: vec![InferInputTensor {
                name: "x".into(),
                datatype: datatype.into(),
                shape: vec![2, 3],
                contents: Some(contents),
                ..Default::default()
            }],
            ..Default::default()
        };
        let back = c.model_infer(again).await.unwrap().into_inner();
        assert_eq!(back.raw_output_contents, vec![Bytes::from(raw)], "{model}: typed in, raw out");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_strings_and_requested_outputs() {
    let server = TestServer::ready(test_config(fixtures())).await;
    let mut c = client(&server).await;
    let items: Vec<&[u8]> = vec![b"a", b"", "héllo".as_bytes(), b"x y"];
    let mut raw = Vec::new();
    for i in &items {
        raw.extend_from_slice(&(i.len() as u32).to_le_bytes());
        raw.extend_from_slice(i);
    }
    let resp =
        c.model_infer(raw_req("identity_string", "x", "BYTES", vec![2, 2], raw.clone())).await.unwrap().into_inner();
    assert_eq!(resp.outputs[0].datatype, "BYTES");
    assert_eq!(resp.raw_output_contents, vec![Bytes::from(raw)]);
    let typed = ModelInferRequest {
        model_name: "identity_string".into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "BYTES".into(),
            shape: vec![1, 4],
            contents: Some(InferTensorContents {
                bytes_contents: items.iter().map(|b| Bytes::copy_from_slice(b)).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        parameters: [(
            "binary_data_output".to_string(),
            InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(false)) },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    let resp = c.model_infer(typed).await.unwrap().into_inner();
    let out: Vec<&[u8]> =
        resp.outputs[0].contents.as_ref().unwrap().bytes_contents.iter().map(|b| b.as_ref()).collect();
    assert_eq!(out, items);

    // requested outputs: only b_out of fixed_shape
    let a: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let b: Vec<u8> = [7i64, 8].iter().flat_map(|v| v.to_le_bytes()).collect();
    let req = ModelInferRequest {
        model_name: "fixed_shape".into(),
        model_version: "1".into(),
        inputs: vec![
            InferInputTensor { name: "a".into(), datatype: "FP32".into(), shape: vec![2, 3], ..Default::default() },
            InferInputTensor { name: "b".into(), datatype: "INT64".into(), shape: vec![2], ..Default::default() },
        ],
        outputs: vec![InferRequestedOutputTensor { name: "b_out".into(), ..Default::default() }],
        raw_input_contents: vec![Bytes::from(a), Bytes::from(b.clone())],
        ..Default::default()
    };
    let resp = c.model_infer(req).await.unwrap().into_inner();
    assert_eq!(resp.outputs.len(), 1);
    assert_eq!(resp.outputs[0].name, "b_out");
    assert_eq!(resp.raw_output_contents, vec![Bytes::from(b)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_answers_as_the_tf_serving_front_end() {
    let server = TestServer::ready(test_config(bundled())).await;
    let x = classifier_input(3, 5);
    let tf =
        server.predict_client().await.predict(predict_req("numbers_classifier", None, vec![("x", x.clone())])).await;
    let tf = tf.unwrap().into_inner().outputs["y"].float_val.clone();
    let raw: Vec<u8> = x.float_val.iter().flat_map(|v| v.to_le_bytes()).collect();
    let v2 = client(&server).await.model_infer(raw_req("numbers_classifier", "x", "FP32", vec![3, 8], raw)).await;
    let v2 = v2.unwrap().into_inner();
    assert_eq!(v2.model_version, "2");
    let got: Vec<f32> =
        v2.raw_output_contents[0].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(got, tf);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inference_requests_get_precise_statuses() {
    let server = TestServer::ready(test_config(fixtures())).await;
    let mut c = client(&server).await;
    let cases: Vec<(ModelInferRequest, Code, &str)> = vec![
        (raw_req("nope", "x", "FP32", vec![1, 8], vec![0; 32]), Code::NotFound, "Servable not found for request: model 'nope' is not served here"),
        (
            { let mut r = raw_req("numbers_classifier", "x", "FP32", vec![1, 8], vec![0; 32]); r.model_version = "v2".into(); r },
            Code::InvalidArgument,
            "model_version 'v2' is not a version number",
        ),
        (
            raw_req("numbers_classifier", "x", "FP32", vec![1, 8], vec![0; 30]),
            Code::InvalidArgument,
            "model 'numbers_classifier' version 1: input 'x': raw_input_contents has 30 bytes but shape [1, 8] of FP32 needs 32 bytes (8 x 4)",
        ),
        (
            raw_req("numbers_classifier", "x", "FP8", vec![1, 8], vec![0; 8]),
            Code::InvalidArgument,
            "model 'numbers_classifier' version 1: input 'x': datatype 'FP8' is not supported; supported: FP32, FP64, FP16, BF16, INT8, INT16, INT32, INT64, UINT8, UINT16, UINT32, UINT64, BOOL, BYTES",
        ),
        (
            raw_req("numbers_classifier", "x", "FP64", vec![1, 8], vec![0; 64]),
            Code::InvalidArgument,
            "model 'numbers_classifier' version 1: input 'x' must have dtype float32, received float64",
        ),
        (
            raw_req("numbers_classifier", "x", "FP32", vec![1, 7], vec![0; 28]),
            Code::InvalidArgument,
            "model 'numbers_classifier' version 1: input 'x' dimension 1 must be 8 (shape [-1, 8]), received shape [1, 7]",
        ),
        (
            { let mut r = raw_req("numbers_classifier", "x", "FP32", vec![1, 8], vec![0; 32]); r.raw_input_contents.push(Bytes::new()); r },
            Code::InvalidArgument,
            "model 'numbers_classifier' version 1: raw_input_contents has 2 entries but the request has 1 inputs; give one per input, in order",
        ),
        (
            ModelInferRequest {
                model_name: "numbers_classifier".into(),
                inputs: vec![InferInputTensor {
                    name: "x".into(),
                    datatype: "FP32".into(),
                    shape: vec![1, 8],
                    contents: Some(InferTensorContents { fp32_contents: vec![1.0; 3], ..Default::default() }),
                    ..Default::default()
                }],
                ..Default::default()
            },
            Code::InvalidArgument,
            "model 'numbers_classifier' version 1: input 'x': fp32_contents has 3 values but shape [1, 8] needs 8",
        ),
        (
            raw_req("identity_float16", "x", "FP16", vec![1, 1], vec![0; 2]).tap_typed_output(),
            Code::InvalidArgument,
            "model 'identity_float16' version 1: output 'y' is FP16, which has no typed contents field; do not set binary_data_output=false",
        ),
        (
            raw_req("broken", "x", "FP32", vec![1], vec![0; 4]),
            Code::Unavailable,
            "model 'broken' has no available version: version 1 is END (failed to load: ONNX Runtime could not load",
        ),
    ];
    for (req, code, msg) in cases {
        let err = c.model_infer(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{}", err.message());
        assert!(err.message().starts_with(msg), "got: {}\nwant prefix: {msg}", err.message());
    }
    let _ = DataType::DtFloat;
}

trait TypedOutput {
    fn tap_typed_output(self) -> Self;
}

impl TypedOutput for ModelInferRequest {
    fn tap_typed_output(mut self) -> Self {
        self.parameters.insert(
            "binary_data_output".into(),
            InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(false)) },
        );
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metadata_statistics_and_repository() {
    let server = TestServer::ready(test_config(fixtures())).await;
    let mut c = client(&server).await;
    assert!(c.server_live(pb::ServerLiveRequest {}).await.unwrap().into_inner().live);
    // `broken` never becomes AVAILABLE, so the server is not ready (every configured model must be)
    assert!(!c.server_ready(pb::ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let ready = |name: &str, version: &str| pb::ModelReadyRequest { name: name.into(), version: version.into() };
    assert!(c.model_ready(ready("numbers_classifier", "")).await.unwrap().into_inner().ready);
    assert!(c.model_ready(ready("numbers_classifier", "1")).await.unwrap().into_inner().ready);
    assert!(!c.model_ready(ready("numbers_classifier", "2")).await.unwrap().into_inner().ready);
    assert!(!c.model_ready(ready("broken", "")).await.unwrap().into_inner().ready);

    let meta = c.server_metadata(pb::ServerMetadataRequest {}).await.unwrap().into_inner();
    assert_eq!(meta.name, "maas");
    assert_eq!(meta.extensions, vec!["model_repository", "statistics"]);
    let m = c.model_metadata(pb::ModelMetadataRequest { name: "fixed_shape".into(), version: String::new() }).await;
    let m = m.unwrap().into_inner();
    assert_eq!((m.name.as_str(), m.platform.as_str()), ("fixed_shape", "onnx_onnxv1"));
    assert_eq!(m.versions, vec!["1"]);
    let inputs: Vec<(String, String, Vec<i64>)> = m.inputs.into_iter().map(|t| (t.name, t.datatype, t.shape)).collect();
    assert_eq!(inputs, vec![("a".into(), "FP32".into(), vec![2, 3]), ("b".into(), "INT64".into(), vec![-1])]);

    // statistics: 3 successes and 1 failure on numbers_classifier
    for _ in 0..3 {
        c.model_infer(raw_req("numbers_classifier", "x", "FP32", vec![1, 8], vec![0; 32])).await.unwrap();
    }
    c.model_infer(raw_req("numbers_classifier", "x", "FP32", vec![1, 7], vec![0; 28])).await.unwrap_err();
    let stats = c
        .model_statistics(pb::ModelStatisticsRequest { name: "numbers_classifier".into(), version: String::new() })
        .await;
    let stats = stats.unwrap().into_inner().model_stats;
    assert_eq!(stats.len(), 1);
    let s = &stats[0];
    assert_eq!((s.name.as_str(), s.version.as_str(), s.inference_count), ("numbers_classifier", "1", 3));
    let inf = s.inference_stats.as_ref().unwrap();
    assert_eq!(inf.success.as_ref().unwrap().count, 3);
    assert!(inf.success.as_ref().unwrap().ns > 0);
    assert_eq!(inf.fail.as_ref().unwrap().count, 1);
    assert!(s.last_inference > 0);
    let all = c.model_statistics(pb::ModelStatisticsRequest::default()).await.unwrap().into_inner().model_stats;
    assert!(all.len() > 10, "every AVAILABLE model version: {}", all.len());

    // repository: index, unload, load
    let index = c.repository_index(pb::RepositoryIndexRequest { repository_name: String::new(), ready: false }).await;
    let index = index.unwrap().into_inner().models;
    let broken = index.iter().find(|m| m.name == "broken").unwrap();
    assert_eq!((broken.version.as_str(), broken.state.as_str()), ("1", "UNAVAILABLE"));
    assert!(broken.reason.starts_with("ONNX Runtime could not load"), "{}", broken.reason);
    let unload = pb::RepositoryModelUnloadRequest { model_name: "numbers_classifier".into(), ..Default::default() };
    c.repository_model_unload(unload).await.unwrap();
    let err = c.model_infer(raw_req("numbers_classifier", "x", "FP32", vec![1, 8], vec![0; 32])).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "unloaded when the RPC returned");
    let ready_index =
        c.repository_index(pb::RepositoryIndexRequest { repository_name: String::new(), ready: true }).await;
    assert!(!ready_index.unwrap().into_inner().models.iter().any(|m| m.name == "numbers_classifier"));
    let load = pb::RepositoryModelLoadRequest { model_name: "numbers_classifier".into(), ..Default::default() };
    c.repository_model_load(load).await.unwrap();
    c.model_infer(raw_req("numbers_classifier", "x", "FP32", vec![1, 8], vec![0; 32]))
        .await
        .expect("loaded when the RPC returned");
    let err = c
        .repository_model_load(pb::RepositoryModelLoadRequest { model_name: "ghost".into(), ..Default::default() })
        .await;
    let err = err.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().starts_with("cannot load model 'ghost': there is no directory"), "{}", err.message());
    let err = c
        .repository_model_load(pb::RepositoryModelLoadRequest { model_name: "broken".into(), ..Default::default() })
        .await;
    assert_eq!(err.unwrap_err().code(), Code::Unavailable);
}
