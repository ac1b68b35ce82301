//! Predict through a real server: every dtype, both input encodings and both output encodings,
//! v0 broadcast, output_filter, version selection.
mod common;

use bytes::Bytes;
use common::*;
use maas::proto::tensorflow::serving::model_spec::VersionChoice;
use maas::proto::tensorflow::{DataType, TensorProto};
#[allow(unused_imports)]
use maas::ServeConfig;
use tonic::Code;

/// A [2, 3] test tensor of `dtype` in typed-field form, and the raw little-endian bytes it stands for.
fn sample(dtype: DataType) -> (TensorProto, Vec<u8>) {
    let mut t = TensorProto { dtype: dtype as i32, tensor_shape: shape(&[2, 3]), ..Default::default() };
    let raw: Vec<u8> = match dtype {
        DataType::DtFloat => {
            t.float_val = vec![1.5, -2.25, 0.0, f32::MAX, f32::MIN_POSITIVE, -0.0];
            t.float_val.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        DataType::DtDouble => {
            t.double_val = vec![1.5, -2.25e300, 0.0, f64::MAX, 1e-300, -0.0];
            t.double_val.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        DataType::DtHalf | DataType::DtBfloat16 => {
            t.half_val = vec![0x3c00, 0xc000, 0, 0x7bff, 1, 0x8000];
            t.half_val.iter().flat_map(|&v| (v as u16).to_le_bytes()).collect()
        }
        DataType::DtInt8 => {
            t.int_val = vec![-128, 127, 0, 1, -1, 5];
            t.int_val.iter().map(|&v| v as i8 as u8).collect()
        }
        DataType::DtUint8 => {
            t.int_val = vec![0, 255, 1, 2, 128, 7];
            t.int_val.iter().map(|&v| v as u8).collect()
        }
        DataType::DtInt16 => {
            t.int_val = vec![-32768, 32767, 0, 1, -1, 300];
            t.int_val.iter().flat_map(|&v| (v as i16).to_le_bytes()).collect()
        }
        DataType::DtUint16 => {
            t.int_val = vec![0, 65535, 1, 2, 40000, 7];
            t.int_val.iter().flat_map(|&v| (v as u16).to_le_bytes()).collect()
        }
        DataType::DtInt32 => {
            t.int_val = vec![i32::MIN, i32::MAX, 0, 1, -1, 123456];
            t.int_val.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        DataType::DtInt64 => {
            t.int64_val = vec![i64::MIN, i64::MAX, 0, 1, -1, 1 << 62];
            t.int64_val.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        DataType::DtUint32 => {
            t.uint32_val = vec![0, u32::MAX, 1, 2, 3, 1 << 31];
            t.uint32_val.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        DataType::DtUint64 => {
            t.uint64_val = vec![0, u64::MAX, 1, 2, 3, 1 << 63];
            t.uint64_val.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        DataType::DtBool => {
            t.bool_val = vec![true, false, false, true, true, false];
            t.bool_val.iter().map(|&v| u8::from(v)).collect()
        }
        DataType::DtString => {
            t.string_val =
                ["a", "", "héllo", "x y", "ünïcode ✓", "z"].iter().map(|s| Bytes::from(s.to_string())).collect();
            return (t, Vec::new());
        }
        other => panic!("no sample for {other:?}"),
    };
    (t, raw)
}

const DTYPES: [(&str, DataType); 14] = [
    ("float", DataType::DtFloat),
    ("double", DataType::DtDouble),
    ("float16", DataType::DtHalf),
    ("bfloat16", DataType::DtBfloat16),
    ("int8", DataType::DtInt8),
    ("int16", DataType::DtInt16),
    ("int32", DataType::DtInt32),
    ("int64", DataType::DtInt64),
    ("uint8", DataType::DtUint8),
    ("uint16", DataType::DtUint16),
    ("uint32", DataType::DtUint32),
    ("uint64", DataType::DtUint64),
    ("bool", DataType::DtBool),
    ("string", DataType::DtString),
];

/// Clears the typed fields, keeping dtype and shape.
fn only_meta(t: &TensorProto) -> TensorProto {
    TensorProto { dtype: t.dtype, tensor_shape: t.tensor_shape.clone(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dtype_round_trips_typed_and_tensor_content() {
    let server = TestServer::ready(test_config(fixtures())).await;
    let mut client = server.predict_client().await;
    for (name, dtype) in DTYPES {
        let model = format!("identity_{name}");
        let (typed, raw) = sample(dtype);

        // typed *_val in, typed *_val out (TF Serving's default reply form)
        let resp = client.predict(predict_req(&model, None, vec![("x", typed.clone())])).await;
        let resp = resp.unwrap_or_else(|e| panic!("{model}: {e}")).into_inner();
        let spec = resp.model_spec.unwrap();
        assert_eq!(spec.name, model);
        assert_eq!(spec.version_choice, Some(VersionChoice::Version(1)));
        assert_eq!(spec.signature_name, "serving_default");
        assert_eq!(resp.outputs.len(), 1, "{model}");
        let y = &resp.outputs["y"];
        assert_eq!(y, &typed, "{model}: typed output must equal the typed input");

        // tensor_content in (not for strings)
        if dtype != DataType::DtString {
            let mut content = only_meta(&typed);
            content.tensor_content = Bytes::from(raw.clone());
            let resp = client.predict(predict_req(&model, Some(1), vec![("x", content)])).await.unwrap().into_inner();
            assert_eq!(&resp.outputs["y"], &typed, "{model}: tensor_content input must give the same values");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensor_content_output_mode() {
    let mut cfg = test_config(fixtures());
    cfg.tensor_content_output = true;
    let server = TestServer::ready(cfg).await;
    let mut client = server.predict_client().await;
    for (name, dtype) in DTYPES {
        let model = format!("identity_{name}");
        let (typed, raw) = sample(dtype);
        let resp = client.predict(predict_req(&model, None, vec![("x", typed.clone())])).await.unwrap().into_inner();
        let y = &resp.outputs["y"];
        assert_eq!(y.dtype, dtype as i32);
        assert_eq!(dims(y), vec![2, 3]);
        if dtype == DataType::DtString {
            assert_eq!(y.string_val, typed.string_val, "strings always travel in string_val");
        } else {
            assert_eq!(y.tensor_content.as_ref(), raw.as_slice(), "{model}");
            assert!(y.float_val.is_empty() && y.int_val.is_empty() && y.int64_val.is_empty() && y.half_val.is_empty());
        }
    }
}

/// `v` repeated 1024 times.
fn repeat<T: Copy>(v: &mut Vec<T>) {
    *v = v.iter().copied().cycle().take(v.len() * 1024).collect();
}

/// Outputs of 4 KiB and more are handed from ONNX Runtime to the encoder without a copy; their bytes
/// must be exactly the input's, for every fixed-width dtype, in both output encodings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_outputs_round_trip_exactly() {
    for tensor_content_output in [false, true] {
        let mut cfg = test_config(fixtures());
        cfg.tensor_content_output = tensor_content_output;
        let server = TestServer::ready(cfg).await;
        let mut client = server.predict_client().await;
        for (name, dtype) in DTYPES {
            if dtype == DataType::DtString {
                continue;
            }
            let model = format!("identity_{name}");
            let (typed, raw) = sample(dtype);
            // 1024 copies of the [2, 3] sample: [2048, 3], at least 6 KiB of output.
            let big: Vec<u8> = raw.iter().copied().cycle().take(raw.len() * 1024).collect();
            let input = TensorProto {
                dtype: dtype as i32,
                tensor_shape: shape(&[2048, 3]),
                tensor_content: Bytes::from(big.clone()),
                ..Default::default()
            };
            let resp =
                client.predict(predict_req(&model, None, vec![("x", input.clone())])).await.unwrap().into_inner();
            let y = &resp.outputs["y"];
            assert_eq!(dims(y), vec![2048, 3], "{model}");
            if tensor_content_output {
                assert_eq!(y.tensor_content.as_ref(), big.as_slice(), "{model}");
            } else {
                // The typed answer of the big tensor is the small one's, repeated.
                let small = client.predict(predict_req(&model, None, vec![("x", typed)])).await.unwrap().into_inner();
                let mut expected = small.outputs["y"].clone();
                repeat(&mut expected.float_val);
                repeat(&mut expected.double_val);
                repeat(&mut expected.half_val);
                repeat(&mut expected.int_val);
                repeat(&mut expected.int64_val);
                repeat(&mut expected.uint32_val);
                repeat(&mut expected.uint64_val);
                repeat(&mut expected.bool_val);
                expected.tensor_shape = shape(&[2048, 3]);
                assert_eq!(y, &expected, "{model}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v0_broadcast_fills_the_shape() {
    let server = TestServer::ready(test_config(fixtures())).await;
    let mut client = server.predict_client().await;
    let one = f32_tensor(&[2, 8], vec![0.5]);
    let full = f32_tensor(&[2, 8], vec![0.5; 16]);
    let a = client.predict(predict_req("numbers_classifier", None, vec![("x", one)])).await.unwrap().into_inner();
    let b = client.predict(predict_req("numbers_classifier", None, vec![("x", full)])).await.unwrap().into_inner();
    assert_eq!(a.outputs["y"], b.outputs["y"]);
    assert_eq!(dims(&a.outputs["y"]), vec![2, 1]);

    let mut s = TensorProto { dtype: DataType::DtString as i32, tensor_shape: shape(&[2, 2]), ..Default::default() };
    s.string_val = vec![Bytes::from_static(b"same")];
    let r = client.predict(predict_req("identity_string", None, vec![("x", s)])).await.unwrap().into_inner();
    assert_eq!(r.outputs["y"].string_val, vec![Bytes::from_static(b"same"); 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifier_outputs_are_probabilities_and_deterministic() {
    let server = TestServer::ready(test_config(fixtures())).await;
    let mut client = server.predict_client().await;
    let req = predict_req("numbers_classifier", None, vec![("x", classifier_input(5, 0))]);
    let a = client.predict(req.clone()).await.unwrap().into_inner();
    let y = &a.outputs["y"];
    assert_eq!(y.dtype, DataType::DtFloat as i32);
    assert_eq!(dims(y), vec![5, 1]);
    assert_eq!(y.float_val.len(), 5);
    assert!(y.float_val.iter().all(|&p| p > 0.0 && p < 1.0), "{:?}", y.float_val);
    let distinct: std::collections::BTreeSet<u32> = y.float_val.iter().map(|v| v.to_bits()).collect();
    assert!(distinct.len() > 1, "different rows must give different probabilities: {:?}", y.float_val);
    let b = client.predict(req).await.unwrap().into_inner();
    assert_eq!(a.outputs, b.outputs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_filter_selects_outputs() {
    let server = TestServer::ready(test_config(fixtures())).await;
    let mut client = server.predict_client().await;
    let a = f32_tensor(&[2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    let b = TensorProto {
        dtype: DataType::DtInt64 as i32,
        tensor_shape: shape(&[3]),
        int64_val: vec![7, 8, 9],
        ..Default::default()
    };
    let mut req = predict_req("fixed_shape", None, vec![("a", a), ("b", b.clone())]);
    let all = client.predict(req.clone()).await.unwrap().into_inner();
    let mut keys: Vec<&String> = all.outputs.keys().collect();
    keys.sort();
    assert_eq!(keys, vec!["b_out", "sum"]);
    assert_eq!(all.outputs["sum"].float_val, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);

    req.output_filter = vec!["b_out".into()];
    let only = client.predict(req.clone()).await.unwrap().into_inner();
    assert_eq!(only.outputs.keys().collect::<Vec<_>>(), vec!["b_out"]);
    assert_eq!(only.outputs["b_out"].int64_val, vec![7, 8, 9]);

    req.output_filter = vec!["nope".into()];
    let err = client.predict(req.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "model 'fixed_shape' version 1 has no output named 'nope' (in output_filter); its outputs are ['sum' (float32 [2, 3]), 'b_out' (int64 [-1])]"
    );

    req.output_filter = vec!["sum".into(), "sum".into()];
    let err = client.predict(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "model 'fixed_shape' version 1: output_filter names 'sum' more than once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_selection_on_the_bundled_repository() {
    let server = TestServer::ready(test_config(bundled())).await;
    let mut client = server.predict_client().await;
    let latest = client
        .predict(predict_req("numbers_classifier", None, vec![("x", classifier_input(3, 1))]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(latest.model_spec.unwrap().version_choice, Some(VersionChoice::Version(2)), "highest version is served");
    let explicit = client
        .predict(predict_req("numbers_classifier", Some(2), vec![("x", classifier_input(3, 1))]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(latest.outputs, explicit.outputs);

    // version 1 differs (other weights): compare with the fixture copy of version 1
    let fixture = TestServer::ready(test_config(fixtures())).await;
    let v1 = fixture
        .predict_client()
        .await
        .predict(predict_req("numbers_classifier", Some(1), vec![("x", classifier_input(3, 1))]))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(v1.outputs["y"].float_val, latest.outputs["y"].float_val);

    let err = client
        .predict(predict_req("numbers_classifier", Some(7), vec![("x", classifier_input(1, 0))]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        err.message(),
        "Servable not found for request: model 'numbers_classifier' has no version 7; its versions: [2]"
    );
}
