//! Strings are bytes: TF `string_val`, v2 `bytes_contents` and v2 BYTES raw carry any byte sequence
//! (NUL, invalid UTF-8, empty, 1 MiB of random bytes) to the model and back byte-identical, through the
//! real server and ONNX Runtime's string tensors.
mod common;

use bytes::Bytes;
use common::*;
use maas::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use maas::proto::inference::{
    infer_parameter::ParameterChoice, model_infer_request::InferInputTensor, InferParameter, InferTensorContents,
    ModelInferRequest,
};
use maas::proto::tensorflow::{DataType, TensorProto};
use tonic::transport::Channel;

/// Deterministic pseudo-random bytes (xorshift64*), every byte value included.
fn blob(n: usize, mut seed: u64) -> Bytes {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(n);
    Bytes::from(out)
}

/// The elements every front end must carry unchanged.
fn items() -> Vec<Bytes> {
    vec![
        Bytes::from_static(b"\x00\xff\xfe"),
        Bytes::new(),
        blob(1 << 20, 0x0123_4567_89ab_cdef),
        Bytes::from_static(b"nul\0inside\0"),
        Bytes::from_static(b"\xc3\x28"),
        Bytes::from_static("h\u{e9}llo".as_bytes()),
    ]
}

/// A repository with the bundled `identity_string` (shape `[N]`) as `s1` and the fixture one
/// (`[batch, width]`) as `s2`.
fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, from) in [("s1", bundled()), ("s2", fixtures())] {
        let to = dir.path().join(name).join("1");
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(from.join("identity_string/1/model.onnx"), to.join("model.onnx")).unwrap();
    }
    dir
}

fn assert_same(what: &str, got: &[Bytes], want: &[Bytes]) {
    assert_eq!(got.len(), want.len(), "{what}: element count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g == w, "{what}: element {i} differs ({} bytes back for {} sent)", g.len(), w.len());
    }
}

fn string_tensor(dims: &[i64], vals: Vec<Bytes>) -> TensorProto {
    TensorProto { dtype: DataType::DtString as i32, tensor_shape: shape(dims), string_val: vals, ..Default::default() }
}

/// BYTES raw: each element as a 4-byte little-endian length and its bytes.
fn raw_bytes(items: &[Bytes]) -> Bytes {
    let mut raw = Vec::new();
    for i in items {
        raw.extend_from_slice(&(i.len() as u32).to_le_bytes());
        raw.extend_from_slice(i);
    }
    Bytes::from(raw)
}

fn v2_req(model: &str, dims: Vec<i64>, typed: Option<Vec<Bytes>>, raw: Option<Bytes>) -> ModelInferRequest {
    let typed_out = typed.is_some();
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "BYTES".into(),
            shape: dims,
            contents: typed.map(|b| InferTensorContents { bytes_contents: b, ..Default::default() }),
            ..Default::default()
        }],
        raw_input_contents: raw.into_iter().collect(),
        parameters: [(
            "binary_data_output".to_string(),
            InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(!typed_out)) },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

async fn v2_client(server: &TestServer) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::new(server.channel().await).max_decoding_message_size(64 << 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tf_predict_string_val_round_trips_bytes() {
    let repo = repo();
    let server = TestServer::ready(test_config(repo.path())).await;
    let mut c = server.predict_client().await;
    let sent = items();
    for (model, dims) in [("s1", vec![6]), ("s2", vec![2, 3]), ("s2", vec![3, 2])] {
        let req = predict_req(model, None, vec![("x", string_tensor(&dims, sent.clone()))]);
        let resp = c.predict(req).await.unwrap().into_inner();
        let y = &resp.outputs["y"];
        assert_eq!(y.dtype, DataType::DtString as i32, "{model} {dims:?}");
        assert_eq!(common::dims(y), dims, "{model}");
        assert_same(&format!("TF {model} {dims:?}"), &y.string_val, &sent);
    }
    // one element that is nothing but a NUL, and one empty element
    for one in [Bytes::from_static(b"\0"), Bytes::new()] {
        let req = predict_req("s1", None, vec![("x", string_tensor(&[1], vec![one.clone()]))]);
        let resp = c.predict(req).await.unwrap().into_inner();
        assert_same("TF single", &resp.outputs["y"].string_val, &[one]);
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_bytes_contents_and_raw_round_trip_bytes() {
    let repo = repo();
    let server = TestServer::ready(test_config(repo.path())).await;
    let mut c = v2_client(&server).await;
    let sent = items();
    for (model, dims) in [("s1", vec![6]), ("s2", vec![2, 3]), ("s2", vec![6, 1])] {
        // bytes_contents in, bytes_contents out
        let resp = c.model_infer(v2_req(model, dims.clone(), Some(sent.clone()), None)).await.unwrap().into_inner();
        assert_eq!(resp.outputs[0].datatype, "BYTES");
        assert_eq!(resp.outputs[0].shape, dims);
        let contents = resp.outputs[0].contents.as_ref().expect("typed output contents");
        assert_same(&format!("v2 typed {model} {dims:?}"), &contents.bytes_contents, &sent);

        // BYTES raw in, BYTES raw out (the same framing, byte for byte)
        let raw = raw_bytes(&sent);
        let resp = c.model_infer(v2_req(model, dims.clone(), None, Some(raw.clone()))).await.unwrap().into_inner();
        assert_eq!(resp.outputs[0].datatype, "BYTES");
        assert_eq!(resp.outputs[0].shape, dims);
        assert_eq!(resp.raw_output_contents.len(), 1);
        assert!(resp.raw_output_contents[0] == raw, "v2 raw {model} {dims:?}: raw output differs from the input");
    }
    server.stop().await.unwrap();
}
