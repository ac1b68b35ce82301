//! Every bad input gets a precise status whose message names the model, the input, what was
//! expected and what came; the server keeps serving afterwards.
mod common;

use bytes::Bytes;
use common::*;
use maas::proto::tensorflow::serving::{model_spec::VersionChoice, ModelSpec, PredictRequest};
use maas::proto::tensorflow::{DataType, TensorProto};
#[allow(unused_imports)]
use maas::ServeConfig;
use tonic::Code;

async fn expect(
    client: &mut maas::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient<
        tonic::transport::Channel,
    >,
    req: PredictRequest,
    code: Code,
    message: &str,
) {
    let err = client.predict(req).await.expect_err("request must fail");
    assert_eq!(err.code(), code, "message: {}", err.message());
    assert_eq!(err.message(), message);
}

fn fixed_b() -> TensorProto {
    TensorProto {
        dtype: DataType::DtInt64 as i32,
        tensor_shape: shape(&[2]),
        int64_val: vec![1, 2],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_statuses() {
    let server = TestServer::ready(test_config(fixtures())).await;
    let mut c = server.predict_client().await;
    let x = || classifier_input(1, 0);

    // model spec problems
    let mut req = predict_req("numbers_classifier", None, vec![("x", x())]);
    req.model_spec = None;
    expect(&mut c, req, Code::InvalidArgument, "Missing ModelSpec").await;
    expect(&mut c, predict_req("", None, vec![("x", x())]), Code::InvalidArgument, "ModelSpec has no name specified.")
        .await;
    let known = "broken, fixed_shape, identity_bfloat16, identity_bool, identity_double, identity_float, \
                 identity_float16, identity_int16, identity_int32, identity_int64, identity_int8, identity_string, \
                 identity_uint16, identity_uint32, identity_uint64, identity_uint8, numbers_classifier, slow";
    expect(
        &mut c,
        predict_req("nope", None, vec![("x", x())]),
        Code::NotFound,
        &format!("Servable not found for request: model 'nope' is not served here; served models: [{known}]"),
    )
    .await;
    expect(
        &mut c,
        predict_req("numbers_classifier", Some(3), vec![("x", x())]),
        Code::NotFound,
        "Servable not found for request: model 'numbers_classifier' has no version 3; its versions: [1]",
    )
    .await;
    let mut req = predict_req("numbers_classifier", None, vec![("x", x())]);
    req.model_spec.as_mut().unwrap().signature_name = "classify".into();
    expect(
        &mut c,
        req,
        Code::FailedPrecondition,
        "Serving signature key \"classify\" not found: model 'numbers_classifier' has one signature, \"serving_default\"",
    )
    .await;
    let mut req = predict_req("numbers_classifier", None, vec![("x", x())]);
    req.model_spec = Some(ModelSpec {
        name: "numbers_classifier".into(),
        signature_name: String::new(),
        version_choice: Some(VersionChoice::VersionLabel("stable".into())),
    });
    expect(
        &mut c,
        req,
        Code::InvalidArgument,
        "Unrecognized servable version label: 'stable' for model 'numbers_classifier'; its labels: []",
    )
    .await;

    // inputs: missing, extra, dtype, rank, dim
    expect(
        &mut c,
        predict_req("numbers_classifier", None, vec![]),
        Code::InvalidArgument,
        "model 'numbers_classifier' version 1: missing input 'x' (float32 [-1, 8]); received inputs []",
    )
    .await;
    expect(
        &mut c,
        predict_req("numbers_classifier", None, vec![("x", x()), ("z", x())]),
        Code::InvalidArgument,
        "model 'numbers_classifier' version 1 has no input named 'z'; its inputs are ['x' (float32 [-1, 8])]",
    )
    .await;
    let ints = TensorProto {
        dtype: DataType::DtInt32 as i32,
        tensor_shape: shape(&[1, 8]),
        int_val: vec![1],
        ..Default::default()
    };
    expect(
        &mut c,
        predict_req("numbers_classifier", None, vec![("x", ints)]),
        Code::InvalidArgument,
        "model 'numbers_classifier' version 1: input 'x' must have dtype float32, received int32",
    )
    .await;
    expect(
        &mut c,
        predict_req("numbers_classifier", None, vec![("x", f32_tensor(&[8], vec![0.0; 8]))]),
        Code::InvalidArgument,
        "model 'numbers_classifier' version 1: input 'x' must have rank 2 (shape [-1, 8]), received rank 1 (shape [8])",
    )
    .await;
    expect(
        &mut c,
        predict_req("numbers_classifier", None, vec![("x", f32_tensor(&[2, 7], vec![0.0; 14]))]),
        Code::InvalidArgument,
        "model 'numbers_classifier' version 1: input 'x' dimension 1 must be 8 (shape [-1, 8]), received shape [2, 7]",
    )
    .await;
    expect(
        &mut c,
        predict_req("fixed_shape", None, vec![("a", f32_tensor(&[3, 3], vec![0.0; 9])), ("b", fixed_b())]),
        Code::InvalidArgument,
        "model 'fixed_shape' version 1: input 'a' dimension 0 must be 2 (shape [2, 3]), received shape [3, 3]",
    )
    .await;
    expect(
        &mut c,
        predict_req("fixed_shape", None, vec![("b", fixed_b())]),
        Code::InvalidArgument,
        "model 'fixed_shape' version 1: missing input 'a' (float32 [2, 3]); received inputs ['b']",
    )
    .await;

    // data that does not match the shape
    let mut short = TensorProto { dtype: DataType::DtFloat as i32, tensor_shape: shape(&[2, 8]), ..Default::default() };
    short.tensor_content = Bytes::from(vec![0u8; 12]);
    expect(
        &mut c,
        predict_req("numbers_classifier", None, vec![("x", short)]),
        Code::InvalidArgument,
        "model 'numbers_classifier' version 1: input 'x': tensor_content has 12 bytes but shape [2, 8] of DT_FLOAT needs 64 bytes (16 x 4)",
    )
    .await;
    expect(
        &mut c,
        predict_req("numbers_classifier", None, vec![("x", f32_tensor(&[2, 8], vec![1.0; 5]))]),
        Code::InvalidArgument,
        "model 'numbers_classifier' version 1: input 'x': float_val has 5 values but shape [2, 8] needs 16 (or a single value to fill it)",
    )
    .await;
    expect(
        &mut c,
        predict_req("numbers_classifier", None, vec![("x", f32_tensor(&[2, 8], vec![]))]),
        Code::InvalidArgument,
        "model 'numbers_classifier' version 1: input 'x': no values: shape [2, 8] needs 16 values in float_val (or the bytes in tensor_content)",
    )
    .await;
    expect(
        &mut c,
        predict_req("numbers_classifier", None, vec![("x", f32_tensor(&[-1, 8], vec![1.0]))]),
        Code::InvalidArgument,
        "model 'numbers_classifier' version 1: input 'x': shape [-1, 8] has a negative dimension; request tensors need a concrete shape",
    )
    .await;
    let complex = TensorProto { dtype: DataType::DtComplex64 as i32, tensor_shape: shape(&[1]), ..Default::default() };
    expect(
        &mut c,
        predict_req("numbers_classifier", None, vec![("x", complex)]),
        Code::InvalidArgument,
        "model 'numbers_classifier' version 1: input 'x': dtype DT_COMPLEX64 is not supported; supported dtypes: \
         DT_FLOAT, DT_DOUBLE, DT_HALF, DT_BFLOAT16, DT_INT8, DT_INT16, DT_INT32, DT_INT64, DT_UINT8, DT_UINT16, \
         DT_UINT32, DT_UINT64, DT_BOOL, DT_STRING",
    )
    .await;
    let big = TensorProto {
        dtype: DataType::DtInt8 as i32,
        tensor_shape: shape(&[1, 1]),
        int_val: vec![200],
        ..Default::default()
    };
    expect(
        &mut c,
        predict_req("identity_int8", None, vec![("x", big)]),
        Code::InvalidArgument,
        "model 'identity_int8' version 1: input 'x': int_val value 200 is out of range for DT_INT8",
    )
    .await;
    let mut str_content =
        TensorProto { dtype: DataType::DtString as i32, tensor_shape: shape(&[1, 1]), ..Default::default() };
    str_content.tensor_content = Bytes::from_static(b"abc");
    expect(
        &mut c,
        predict_req("identity_string", None, vec![("x", str_content)]),
        Code::InvalidArgument,
        "model 'identity_string' version 1: input 'x': DT_STRING values must be sent in string_val, not tensor_content",
    )
    .await;

    // a model that failed to load
    let err = c.predict(predict_req("broken", None, vec![("x", x())])).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().starts_with(
            "model 'broken' has no available version: version 1 is END (failed to load: ONNX Runtime could not load "
        ),
        "{}",
        err.message()
    );
    assert!(err.message().contains("broken/1/model.onnx"), "{}", err.message());

    // and the server still serves
    let ok = c.predict(predict_req("numbers_classifier", None, vec![("x", x())])).await.unwrap().into_inner();
    assert_eq!(ok.outputs["y"].float_val.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_size_limit_is_a_flag() {
    let mut cfg = test_config(fixtures());
    cfg.max_message_size_bytes = 1024;
    let server = TestServer::ready(cfg).await;
    let mut c = server.predict_client().await;
    let big = f32_tensor(&[64, 8], vec![0.25; 512]);
    let err = c.predict(predict_req("numbers_classifier", None, vec![("x", big)])).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());
    assert!(err.message().contains("message length too large"), "{}", err.message());

    // the default accepts far more than gRPC's 4 MiB: 8 MiB of float32 through the identity model
    let server = TestServer::ready(test_config(fixtures())).await;
    let c = server.predict_client().await;
    let n = 2 * 1024 * 1024;
    let mut t = TensorProto { dtype: DataType::DtFloat as i32, tensor_shape: shape(&[1, n]), ..Default::default() };
    t.tensor_content = Bytes::from((0..n).flat_map(|i| (i as f32).to_le_bytes()).collect::<Vec<u8>>());
    let mut req = predict_req("identity_float", None, vec![("x", t.clone())]);
    req.output_filter = vec!["y".into()];
    let mut c = c.max_encoding_message_size(64 << 20);
    let resp = c.predict(req).await.unwrap().into_inner();
    assert_eq!(resp.outputs["y"].float_val.len(), n as usize);
    assert_eq!(resp.outputs["y"].float_val[12345], 12345.0);
}
