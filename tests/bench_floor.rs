//! `maas bench floor`: the real binary serves a fixed reply on maas's Predict and ModelInfer paths
//! (the same answer, value for value, as a real maas gives for the synthesized request), whatever
//! the request holds; `maas bench load --server-pid` against it reports CPU and context switches.
mod common;

use common::*;
use maas::api::tf_tensor;
use maas::api::v2_tensor::encode_raw;
use maas::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use maas::proto::inference::model_infer_request::InferInputTensor;
use maas::proto::inference::{ModelInferRequest, ModelInferResponse, ModelMetadataRequest};
use maas::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient;
use maas::proto::tensorflow::serving::{model_spec::VersionChoice, ModelSpec, PredictRequest, PredictResponse};
use maas::proto::tensorflow::DataType;
use maas::tensor::{DType, TensorSpec};
use serde_json::Value;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::Channel;

struct Floor {
    child: tokio::process::Child,
    addr: String,
    line: String,
}

/// Starts `maas bench floor` on numbers_classifier and reads the line with its address.
async fn start_floor() -> Floor {
    let model = fixtures().join("numbers_classifier/1/model.onnx");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_maas"))
        .env_remove("ORT_DYLIB_PATH")
        .env("RUST_LOG", "warn")
        .args(["bench", "floor", "--model-path", model.to_str().unwrap(), "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
        .await
        .expect("the floor printed nothing in 60 s")
        .unwrap()
        .expect("the floor exited without printing its address");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in {line:?}"))
        .to_string();
    Floor { child, addr, line }
}

async fn connect(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

/// The request `maas bench load` sends to numbers_classifier (x float32 [1, 8]).
fn synthesized() -> (String, maas::tensor::Tensor) {
    let spec = TensorSpec { name: "x".into(), dtype: DType::F32, shape: vec![-1, 8] };
    maas::bench::synth::synthesize(&[spec], 1).unwrap().remove(0)
}

fn tf_request(name: &str) -> PredictRequest {
    let (input, t) = synthesized();
    PredictRequest {
        model_spec: Some(ModelSpec { name: name.into(), ..Default::default() }),
        inputs: [(input, tf_tensor::encode(t, true))].into(),
        ..Default::default()
    }
}

fn v2_request(name: &str) -> ModelInferRequest {
    let (input, t) = synthesized();
    ModelInferRequest {
        model_name: name.into(),
        inputs: vec![InferInputTensor {
            name: input,
            datatype: "FP32".into(),
            shape: t.shape.clone(),
            ..Default::default()
        }],
        raw_input_contents: vec![encode_raw(t)],
        ..Default::default()
    }
}

async fn floor_predict(ch: &Channel, r: PredictRequest) -> PredictResponse {
    PredictionServiceClient::new(ch.clone()).predict(r).await.unwrap().into_inner()
}

async fn floor_infer(ch: &Channel, r: ModelInferRequest) -> ModelInferResponse {
    GrpcInferenceServiceClient::new(ch.clone()).model_infer(r).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_answers_maas_reply_whatever_the_request() {
    let mut floor = start_floor().await;
    assert!(floor.line.starts_with("maas bench floor listening addr=127.0.0.1:"), "{}", floor.line);
    assert!(floor.line.contains(" model=numbers_classifier version=1 tf_reply_bytes="), "{}", floor.line);
    let ch = connect(&floor.addr).await;

    // TF Predict: y float32 [1, 1] in float_val, a sigmoid.
    let tf = floor_predict(&ch, tf_request("numbers_classifier")).await;
    let spec = tf.model_spec.as_ref().unwrap();
    assert_eq!(spec.name, "numbers_classifier");
    assert_eq!(spec.signature_name, "serving_default");
    assert_eq!(spec.version_choice, Some(VersionChoice::Version(1)));
    assert_eq!(tf.outputs.len(), 1, "{tf:?}");
    let y = &tf.outputs["y"];
    assert_eq!(y.dtype, DataType::DtFloat as i32);
    let dims: Vec<i64> = y.tensor_shape.as_ref().unwrap().dim.iter().map(|d| d.size).collect();
    assert_eq!(dims, vec![1, 1]);
    assert_eq!(y.float_val.len(), 1, "{y:?}");
    assert!(y.tensor_content.is_empty());
    assert!(y.float_val[0] > 0.0 && y.float_val[0] < 1.0, "{y:?}");

    // v2 ModelInfer: the same value, raw little-endian FP32.
    let v2 = floor_infer(&ch, v2_request("numbers_classifier")).await;
    assert_eq!((v2.model_name.as_str(), v2.model_version.as_str()), ("numbers_classifier", "1"));
    assert_eq!(v2.outputs.len(), 1, "{v2:?}");
    assert_eq!((v2.outputs[0].name.as_str(), v2.outputs[0].datatype.as_str()), ("y", "FP32"));
    assert_eq!(v2.outputs[0].shape, vec![1, 1]);
    assert_eq!(v2.raw_output_contents.len(), 1);
    assert_eq!(v2.raw_output_contents[0].as_ref(), y.float_val[0].to_le_bytes());

    // The request's contents are skipped: anything gets the same reply.
    assert_eq!(floor_predict(&ch, PredictRequest::default()).await, tf);
    assert_eq!(floor_infer(&ch, ModelInferRequest::default()).await, v2);
    let unimplemented = GrpcInferenceServiceClient::new(ch.clone())
        .server_metadata(maas::proto::inference::ServerMetadataRequest {})
        .await
        .unwrap_err();
    assert_eq!(unimplemented.code(), tonic::Code::Unimplemented);
    assert_eq!(
        unimplemented.message(),
        "maas bench floor answers Predict, GetModelMetadata, ModelInfer and ModelMetadata only, not ServerMetadata"
    );

    // A real maas gives the same answer to the same request, value for value.
    let server = TestServer::ready(test_config(fixtures())).await;
    let maas_ch = server.channel().await;
    assert_eq!(floor_predict(&maas_ch, tf_request("numbers_classifier")).await, tf);
    assert_eq!(floor_infer(&maas_ch, v2_request("numbers_classifier")).await, v2);
    // And the same metadata, which `maas bench load` reads.
    let meta = |ch: Channel| async move {
        GrpcInferenceServiceClient::new(ch)
            .model_metadata(ModelMetadataRequest { name: "numbers_classifier".into(), version: String::new() })
            .await
            .unwrap()
            .into_inner()
    };
    let (floor_meta, maas_meta) = (meta(ch.clone()).await, meta(maas_ch).await);
    assert_eq!((floor_meta.inputs, floor_meta.outputs), (maas_meta.inputs, maas_meta.outputs));
    server.stop().await.unwrap();

    // SIGTERM ends it cleanly.
    let pid = floor.child.id().unwrap() as i32;
    // SAFETY: kill sends a signal to the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), floor.child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_against_the_floor_reports_cpu_and_context_switches() {
    let floor = start_floor().await;
    let pid = floor.child.id().unwrap().to_string();
    for protocol in ["tf", "v2"] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_maas"))
            .env_remove("ORT_DYLIB_PATH")
            .args(["bench", "load", "--address", &floor.addr, "--model", "numbers_classifier", "--protocol", protocol])
            .args(["--concurrency", "2", "--seconds", "1", "--warmup-seconds", "0.2", "--server-pid", &pid, "--json"])
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let r: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(r["errors"], 0, "{r:#}");
        assert_eq!(
            r["inputs"],
            serde_json::json!([if protocol == "tf" { "x float32 [1, 8]" } else { "x FP32 [1, 8]" }])
        );
        let requests = r["requests"].as_u64().unwrap();
        assert!(requests > 0, "{r:#}");
        let cpu = &r["cpu"];
        assert_eq!(cpu["process"], "server");
        assert_eq!(cpu["pid"].as_u64(), Some(u64::from(floor.child.id().unwrap())));
        let voluntary = cpu["voluntary_context_switches"].as_u64().unwrap_or_else(|| panic!("{r:#}"));
        let involuntary = cpu["involuntary_context_switches"].as_u64().unwrap_or_else(|| panic!("{r:#}"));
        let per_request = cpu["context_switches_per_request"].as_f64().unwrap_or_else(|| panic!("{r:#}"));
        assert!((per_request - (voluntary + involuntary) as f64 / requests as f64).abs() < 1e-9, "{r:#}");
        assert!(cpu["cpu_us_per_request"].as_f64().is_some(), "{r:#}");
    }
}
