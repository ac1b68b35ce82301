//! Strings are bytes through every front end: `b"\x00\xff\xfe"`, an empty string and a 1 MiB random
//! blob reach the bundled `identity_string` model and come back byte-identical over TF gRPC
//! (`string_val`), v2 gRPC (typed `bytes_contents` and BYTES raw), TF REST (`{"b64": ...}`) and v2 REST
//! (`{"b64": ...}` elements, and JSON strings for text). JSON replies never hold invalid UTF-8: such an
//! element comes back as `{"b64": ...}`, text as a JSON string. (tests/string_bytes.rs covers the gRPC
//! paths with more shapes.)
mod common;

use base64::Engine;
use bytes::Bytes;
use common::*;
use maas::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use maas::proto::inference::{
    infer_parameter::ParameterChoice, model_infer_request::InferInputTensor, InferParameter, InferTensorContents,
    ModelInferRequest,
};
use maas::proto::tensorflow::{DataType, TensorProto};
use serde_json::{json, Value};

/// Deterministic pseudo-random bytes (every byte value, mostly invalid UTF-8).
fn random(n: usize) -> Bytes {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn items() -> Vec<Bytes> {
    vec![Bytes::from_static(b"\x00\xff\xfe"), Bytes::new(), random(1 << 20)]
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A JSON string element (text) or `{"b64": ...}` (any bytes) back to its bytes.
fn element_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Object(o) if o.len() == 1 => {
            base64::engine::general_purpose::STANDARD.decode(o["b64"].as_str().unwrap()).unwrap()
        }
        other => panic!("not a string element: {}", &other.to_string()[..other.to_string().len().min(80)]),
    }
}

fn assert_same(what: &str, got: &[Bytes], want: &[Bytes]) {
    assert_eq!(got.len(), want.len(), "{what}: element count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g == w, "{what}: element {i} differs ({} bytes back for {} sent)", g.len(), w.len());
    }
}

fn v2_request(raw: bool, items: &[Bytes]) -> ModelInferRequest {
    let mut framed = Vec::new();
    for i in items {
        framed.extend_from_slice(&(i.len() as u32).to_le_bytes());
        framed.extend_from_slice(i);
    }
    ModelInferRequest {
        model_name: "identity_string".into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "BYTES".into(),
            shape: vec![items.len() as i64],
            contents: (!raw).then(|| InferTensorContents { bytes_contents: items.to_vec(), ..Default::default() }),
            ..Default::default()
        }],
        raw_input_contents: if raw { vec![Bytes::from(framed)] } else { Vec::new() },
        parameters: [(
            "binary_data_output".to_string(),
            InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(raw)) },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

async fn post(server: &TestServer, path: &str, body: &Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("http://{}{path}", server.rest_addr))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "POST {path}: {}", &text[..text.len().min(300)]);
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_bytes_round_trip_through_every_front_end() {
    let server = TestServer::ready(test_config(bundled())).await;
    let sent = items();

    // TF gRPC: string_val.
    let x = TensorProto {
        dtype: DataType::DtString as i32,
        tensor_shape: shape(&[3]),
        string_val: sent.clone(),
        ..Default::default()
    };
    let r = server.predict_client().await.predict(predict_req("identity_string", None, vec![("x", x)])).await;
    assert_same("TF gRPC", &r.unwrap().into_inner().outputs["y"].string_val, &sent);

    // v2 gRPC: typed bytes_contents, and BYTES raw.
    let mut c = GrpcInferenceServiceClient::new(server.channel().await).max_decoding_message_size(64 << 20);
    let r = c.model_infer(v2_request(false, &sent)).await.unwrap().into_inner();
    assert_same("v2 gRPC typed", &r.outputs[0].contents.as_ref().unwrap().bytes_contents, &sent);
    let r = c.model_infer(v2_request(true, &sent)).await.unwrap().into_inner();
    let back = maas::tensor::codec::from_length_prefixed(
        maas::tensor::Input { ctx: "reply", name: "y" },
        &mut maas::tensor::Budget::unlimited(),
        vec![3],
        r.raw_output_contents[0].clone(),
    )
    .unwrap();
    assert_eq!(back.data, maas::tensor::TensorData::Strings(sent.clone()), "v2 gRPC raw");

    // TF REST: {"b64": ...} in, row and columnar format; what is not UTF-8 comes back as {"b64": ...}.
    let elements: Vec<Value> = sent.iter().map(|b| json!({"b64": b64(b)})).collect();
    let v = post(&server, "/v1/models/identity_string:predict", &json!({"inputs": elements})).await;
    let got: Vec<Bytes> = v["outputs"].as_array().unwrap().iter().map(|e| element_bytes(e).into()).collect();
    assert_same("TF REST columnar", &got, &sent);
    assert_eq!(v["outputs"][0], json!({"b64": b64(b"\x00\xff\xfe")}));
    assert_eq!(v["outputs"][1], json!(""));
    let v = post(&server, "/v1/models/identity_string:predict", &json!({"instances": elements})).await;
    let got: Vec<Bytes> = v["predictions"].as_array().unwrap().iter().map(|e| element_bytes(e).into()).collect();
    assert_same("TF REST rows", &got, &sent);

    // v2 REST: {"b64": ...} elements and JSON strings (text, NUL included) in; the same rule out.
    let mut data = elements.clone();
    data.push(json!("nul\u{0}é"));
    let body = json!({"inputs": [{"name": "x", "shape": [4], "datatype": "BYTES", "data": data}]});
    let v = post(&server, "/v2/models/identity_string/infer", &body).await;
    let out = &v["outputs"][0];
    assert_eq!((out["datatype"].as_str(), &out["shape"]), (Some("BYTES"), &json!([4])));
    let got: Vec<Bytes> = out["data"].as_array().unwrap().iter().map(|e| element_bytes(e).into()).collect();
    let mut want = sent.clone();
    want.push(Bytes::from("nul\u{0}é"));
    assert_same("v2 REST", &got, &want);
    assert_eq!(out["data"][0], json!({"b64": "AP/+"}));
    assert_eq!(out["data"][3], json!("nul\u{0}é"));
    server.stop().await.unwrap();
}
