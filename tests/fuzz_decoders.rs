//! Property-based tests (proptest, a bounded number of cases) over every decoder a client reaches:
//! TF `TensorProto`, v2 typed and raw contents, and the REST JSON bodies of both protocols. For any
//! input — arbitrary and huge or negative shapes, unknown dtypes, value lists of any length, raw
//! bytes with bad length prefixes, arbitrary JSON and arbitrary bytes — a decoder never panics or
//! aborts; it returns a tensor consistent with its shape or an error with a message and a
//! client-error code; and no accepted request ever takes more than the limit.
use bytes::Bytes;
use maas::api::rest::decoders;
use maas::api::{tf_tensor, v2_tensor};
use maas::error::Error;
use maas::proto::inference::InferTensorContents;
use maas::proto::tensorflow::{tensor_shape_proto::Dim, TensorProto, TensorShapeProto};
use maas::tensor::{Budget, DType, Signature, Tensor, TensorData, TensorSpec, STRING_ELEMENT_BYTES};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{json, Value};

/// Cases per decoder (about 2 s in all in a debug build); `MAAS_FUZZ_CASES=N` for a longer run.
fn cases() -> u32 {
    std::env::var("MAAS_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

/// Counts accepted and refused cases, to show that the generators reach both paths.
#[derive(Default)]
struct Outcomes {
    ok: std::sync::atomic::AtomicU32,
    err: std::sync::atomic::AtomicU32,
}

impl Outcomes {
    fn count<T, E>(&self, r: &Result<T, E>) {
        let c = if r.is_ok() { &self.ok } else { &self.err };
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Both paths taken in at least 5% of the cases.
    fn assert_both(&self, what: &str) {
        let (ok, err) =
            (self.ok.load(std::sync::atomic::Ordering::Relaxed), self.err.load(std::sync::atomic::Ordering::Relaxed));
        eprintln!("{what}: {ok} decoded, {err} refused");
        assert!(ok >= cases() / 20 && err >= cases() / 20, "{what}: {ok} decoded, {err} refused");
    }
}

fn config() -> Config {
    Config { cases: cases(), failure_persistence: None, ..Config::default() }
}

/// Limits: tiny, small, and the default (shapes that fit it are kept small by the generators).
fn limit() -> impl Strategy<Value = usize> {
    prop_oneof![1 => 0..64usize, 1 => 64..4096usize, 3 => Just(1 << 20), 3 => Just(1 << 30)]
}

/// A dimension: mostly small, sometimes zero, huge, or negative.
fn dim() -> impl Strategy<Value = i64> {
    prop_oneof![
        16 => 0..4i64,
        1 => Just(1i64 << 40),
        1 => Just(i64::MAX),
        1 => i64::MIN..0,
        1 => any::<i64>(),
    ]
}

fn dims() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(dim(), 0..4)
}

fn blob() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

/// The bytes a decoded tensor takes, as the budget counts them.
fn size(t: &Tensor) -> usize {
    match &t.data {
        TensorData::Raw(b) => b.len(),
        TensorData::Strings(s) => s.iter().map(|b| STRING_ELEMENT_BYTES + b.len()).sum(),
    }
}

/// A decoded tensor is consistent with its dtype and shape; an error has a message and a client
/// error code (never INTERNAL).
fn check(result: &Result<Tensor, Error>, want_shape: Option<&[i64]>) -> Result<(), TestCaseError> {
    match result {
        Ok(t) => {
            prop_assert!(Tensor::new(t.dtype, t.shape.clone(), t.data.clone()).is_ok(), "inconsistent tensor {t:?}");
            if let Some(shape) = want_shape {
                prop_assert_eq!(&t.shape[..], shape);
            }
        }
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            prop_assert!(
                matches!(e.code(), tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted),
                "unexpected code {:?}: {e}",
                e.code()
            );
        }
    }
    Ok(())
}

/// Every tensor together within the limit, and the budget's own count within it too.
fn within(tensors: &[&Tensor], budget: &Budget) -> Result<(), TestCaseError> {
    let total: usize = tensors.iter().map(|t| size(t)).sum();
    prop_assert!(total <= budget.limit(), "decoded {total} bytes over the limit {}", budget.limit());
    prop_assert!(budget.used() <= budget.limit());
    Ok(())
}

fn tf_tensor() -> impl Strategy<Value = TensorProto> {
    // Valid DataType numbers (1..=23) mostly, any number sometimes.
    let dtype = prop_oneof![8 => 1..24i32, 1 => any::<i32>()];
    (dtype, dims(), any::<bool>(), 0..3usize, 0..7usize, blob(), any::<u64>()).prop_map(
        |(dtype, shape, unknown_rank, content_kind, count_kind, raw, seed)| {
            let n: usize = shape.iter().map(|&d| d.clamp(0, 3) as usize).product();
            // Value counts: the shape's, one (fill rule), none, or any.
            let count = [n, n, 1, 0, (seed % 9) as usize, n + 1, n.saturating_sub(1)][count_kind];
            let int = |i: usize| (seed as i64).wrapping_mul(i as i64 + 1).rotate_left(i as u32);
            let unknown = unknown_rank && seed.is_multiple_of(5);
            TensorProto {
                dtype,
                tensor_shape: Some(TensorShapeProto {
                    dim: shape.iter().map(|&size| Dim { size, name: String::new() }).collect(),
                    unknown_rank: unknown,
                }),
                tensor_content: if content_kind == 0 { raw.clone() } else { Bytes::new() },
                float_val: (0..count).map(|i| int(i) as f32).collect(),
                double_val: (0..count).map(|i| f64::from_bits(int(i) as u64)).collect(),
                int_val: (0..count)
                    .map(|i| if seed.is_multiple_of(2) { (int(i) % 300) as i32 } else { int(i) as i32 })
                    .collect(),
                int64_val: (0..count).map(int).collect(),
                uint32_val: (0..count).map(|i| int(i) as u32).collect(),
                uint64_val: (0..count).map(|i| int(i) as u64).collect(),
                bool_val: (0..count).map(|i| int(i) % 2 == 0).collect(),
                half_val: (0..count)
                    .map(|i| if seed.is_multiple_of(3) { int(i) as i32 } else { (int(i) as u16).into() })
                    .collect(),
                string_val: (0..count).map(|i| raw.slice(..i.min(raw.len()))).collect(),
                ..Default::default()
            }
        },
    )
}

#[test]
fn tf_tensor_decoder() {
    let seen = Outcomes::default();
    proptest!(config(), |(t in tf_tensor(), limit in limit())| {
        let shape: Vec<i64> = t.tensor_shape.as_ref().map(|s| s.dim.iter().map(|d| d.size).collect()).unwrap_or_default();
        let mut budget = Budget::new(limit);
        let r = tf_tensor::decode("model 'm' version 1", "x", t, &mut budget);
        seen.count(&r);
        check(&r, Some(&shape))?;
        if let Ok(t) = &r {
            within(&[t], &budget)?;
        }
    });
    seen.assert_both("TF TensorProto");
}

const V2_TYPES: [&str; 15] = [
    "FP32", "FP64", "FP16", "BF16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL",
    "BYTES", "FP8",
];

/// BYTES raw contents: well-formed elements, then maybe a bad length prefix or a cut.
fn bytes_raw() -> impl Strategy<Value = Bytes> {
    (prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6), 0..6), 0..4usize, any::<u32>()).prop_map(
        |(items, tail, claim)| {
            let mut out = Vec::new();
            for it in &items {
                out.extend_from_slice(&(it.len() as u32).to_le_bytes());
                out.extend_from_slice(it);
            }
            match tail {
                1 => out.extend_from_slice(&claim.to_le_bytes()),
                2 => out.extend_from_slice(&claim.to_le_bytes()[..(claim % 4) as usize]),
                3 => {
                    out.extend_from_slice(&(claim % 8).to_le_bytes());
                    out.push(1);
                }
                _ => {}
            }
            Bytes::from(out)
        },
    )
}

fn v2_contents(count: usize, seed: u64, strings: &[Bytes]) -> InferTensorContents {
    let int = |i: usize| (seed as i64).wrapping_mul(i as i64 + 3).rotate_left(i as u32);
    InferTensorContents {
        bool_contents: (0..count).map(|i| int(i) % 2 == 0).collect(),
        int_contents: (0..count)
            .map(|i| if seed.is_multiple_of(2) { (int(i) % 200) as i32 } else { int(i) as i32 })
            .collect(),
        int64_contents: (0..count).map(int).collect(),
        uint_contents: (0..count)
            .map(|i| if seed.is_multiple_of(2) { (int(i) % 300) as u32 } else { int(i) as u32 })
            .collect(),
        uint64_contents: (0..count).map(|i| int(i) as u64).collect(),
        fp32_contents: (0..count).map(|i| int(i) as f32).collect(),
        fp64_contents: (0..count).map(|i| int(i) as f64).collect(),
        bytes_contents: (0..count)
            .map(|i| strings.get(i % strings.len().max(1)).cloned().unwrap_or_default())
            .collect(),
    }
}

/// Raw contents that fit the shape: `n` elements of `dtype` (length-prefixed for BYTES).
fn fitting_raw(dtype: DType, n: usize, seed: u64) -> Bytes {
    match dtype.size() {
        Some(size) => {
            let mask = if dtype == DType::Bool { 1 } else { 0xff };
            Bytes::from((0..n * size).map(|i| (seed >> (i % 8)) as u8 & mask).collect::<Vec<u8>>())
        }
        None => {
            let mut out = Vec::new();
            for i in 0..n {
                let len = (seed as usize >> i) % 5;
                out.extend_from_slice(&(len as u32).to_le_bytes());
                out.extend(std::iter::repeat_n(i as u8, len));
            }
            Bytes::from(out)
        }
    }
}

#[test]
fn v2_tensor_decoders() {
    let raw = prop_oneof![blob(), bytes_raw()];
    let strings = prop::collection::vec(blob(), 0..4);
    let (typed, raws) = (Outcomes::default(), Outcomes::default());
    proptest!(config(), |(datatype in prop::sample::select(&V2_TYPES[..]), shape in dims(), kind in 0..4usize, seed in any::<u64>(), strings in strings, raw in raw, limit in limit())| {
        let ctx = "model 'm' version 1";
        let Ok(dtype) = v2_tensor::parse_datatype(ctx, "x", datatype) else {
            prop_assert_eq!(datatype, "FP8");
            return Ok(());
        };
        // Counts and raw contents that fit the shape half of the time.
        let n: usize = shape.iter().map(|&d| d.clamp(0, 3) as usize).product();
        let count = [n, n, (seed % 9) as usize, n + 1][kind];
        let raw = if kind < 2 { fitting_raw(dtype, n, seed) } else { raw };
        let contents = v2_contents(count, seed, &strings);
        let mut budget = Budget::new(limit);
        let r = v2_tensor::decode_typed(ctx, "x", dtype, shape.clone(), contents, &mut budget);
        typed.count(&r);
        check(&r, Some(&shape))?;
        if let Ok(t) = &r {
            within(&[t], &budget)?;
        }
        let mut budget = Budget::new(limit);
        let r = v2_tensor::decode_raw(ctx, "x", dtype, shape.clone(), raw, &mut budget);
        raws.count(&r);
        check(&r, Some(&shape))?;
        if let Ok(t) = &r {
            within(&[t], &budget)?;
        }
    });
    typed.assert_both("v2 typed contents");
    raws.assert_both("v2 raw contents");
}

/// Arbitrary JSON, with the shapes tensors take (nested lists of numbers, strings, `{"b64": ...}`).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        3 => any::<i64>().prop_map(|i| json!(i % 1000)),
        1 => any::<i64>().prop_map(|i| json!(i)),
        1 => any::<u64>().prop_map(|u| json!(u)),
        2 => any::<f64>().prop_map(|f| if f.is_finite() { json!(f) } else { json!(null) }),
        1 => any::<bool>().prop_map(|b| json!(b)),
        1 => "[a-z\\x00-\\x7f]{0,4}".prop_map(Value::String),
        1 => prop_oneof![Just("aGk="), Just("!!"), Just("")].prop_map(|s| json!({"b64": s})),
        1 => Just(Value::Null),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            3 => prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            // Rectangular lists (what valid requests look like).
            3 => (inner.clone(), 1..4usize, 1..4usize).prop_map(|(v, a, b)| json!(vec![vec![v; b]; a])),
            1 => prop::collection::btree_map("[a-z]{1,2}", inner, 0..3).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn signature() -> impl Strategy<Value = Signature> {
    let spec = (prop::sample::select(&["x", "y", "a"][..]), prop::sample::select(&DType::ALL[..]))
        .prop_map(|(name, dtype)| TensorSpec { name: name.into(), dtype, shape: vec![-1, -1] });
    prop::collection::vec(spec, 1..3).prop_map(|mut inputs| {
        inputs.dedup_by(|a, b| a.name == b.name);
        Signature { inputs, outputs: Vec::new() }
    })
}

/// A rectangular nested list of leaves that suit `dtype` (what a valid tensor looks like), of
/// `dims`; or any JSON.
fn tensor_json(dtype: DType, dims: Vec<usize>) -> BoxedStrategy<Value> {
    let leaf = match dtype {
        DType::Bool => any::<bool>().prop_map(|b| json!(b)).boxed(),
        DType::String => prop_oneof!["[a-z]{0,3}".prop_map(Value::String), Just(json!({"b64": "AP/+"}))].boxed(),
        DType::F32 | DType::F64 | DType::F16 | DType::BF16 => (-100.0..100.0f64).prop_map(|f| json!(f)).boxed(),
        _ => (0..100i64).prop_map(|i| json!(i)).boxed(),
    };
    let rect = leaf.prop_map(move |leaf| dims.iter().rev().fold(leaf, |inner, &d| Value::Array(vec![inner; d])));
    prop_oneof![4 => rect, 1 => json_value()].boxed()
}

/// A signature, and a TF REST body for it: row or columnar, a single value or inputs by name.
fn tf_case() -> impl Strategy<Value = (Signature, Value)> {
    let dims = prop::collection::vec(1..3usize, 0..3);
    (signature(), dims, 0..6usize)
        .prop_flat_map(|(sig, dims, kind)| {
            let (first, last) = (&sig.inputs[0], &sig.inputs[sig.inputs.len() - 1]);
            // Row format: one instance's value; two instances share their shape.
            let a = tensor_json(first.dtype, dims.clone());
            let b = tensor_json(last.dtype, dims);
            (Just(sig), a, b, Just(kind))
        })
        .prop_map(|(sig, a, b, kind)| {
            let first = sig.inputs[0].name.clone();
            let last = sig.inputs[sig.inputs.len() - 1].name.clone();
            let body = match kind {
                0 => json!({"instances": [a.clone(), a]}),
                1 => json!({"instances": [{first.clone(): a.clone(), last.clone(): b.clone()}, {first: a, last: b}]}),
                2 => json!({"inputs": a}),
                3 => json!({"inputs": {first: a, last: b}}),
                4 => json!({"instances": a}),
                _ => json!({"instances": [{"nope": a}]}),
            };
            (sig, body)
        })
}

#[test]
fn tf_rest_decoder() {
    let seen = Outcomes::default();
    proptest!(config(), |((sig, body) in tf_case(), limit in limit())| {
        let text = body.to_string();
        let parsed = match decoders::parse(text.as_bytes(), limit) {
            Ok(v) => v,
            Err(e) => {
                prop_assert!(matches!(e.code(), tonic::Code::ResourceExhausted), "{e}");
                return Ok(());
            }
        };
        let unknown = |name: &str| Error::InvalidArgument(format!("no input '{name}'"));
        let model = decoders::Model { ctx: "model 'm' version 1", signature: &sig, unknown_input: &unknown };
        let mut budget = Budget::new(limit);
        let columns = parsed.get("inputs").unwrap_or(&Value::Null);
        let r = decoders::tf_inputs(&model, parsed.get("instances"), columns, &mut budget);
        seen.count(&r);
        match r {
            Ok((inputs, rows)) => {
                for (name, t) in &inputs {
                    check(&Ok(t.clone()), None)?;
                    let spec = sig.inputs.iter().find(|s| &s.name == name);
                    prop_assert_eq!(spec.map(|s| s.dtype), Some(t.dtype));
                    if let Some(n) = rows {
                        prop_assert_eq!(t.shape.first(), Some(&(n as i64)));
                    }
                }
                within(&inputs.iter().map(|(_, t)| t).collect::<Vec<_>>(), &budget)?;
            }
            Err(e) => check(&Err(e), None)?,
        }
    });
    seen.assert_both("TF REST body");
}

/// A v2 REST body: inputs with arbitrary names, shapes, datatypes and data.
fn v2_body() -> impl Strategy<Value = Value> {
    let shape = prop_oneof![
        4 => prop::collection::vec(0..4i64, 0..3).prop_map(|d| json!(d)),
        1 => Just(json!([1u64 << 40, 8])),
        1 => Just(json!([-1, 2])),
        1 => json_value(),
    ];
    let input = (prop::sample::select(&["x", "y"][..]), shape, prop::sample::select(&V2_TYPES[..]), json_value())
        .prop_map(
            |(name, shape, datatype, data)| json!({"name": name, "shape": shape, "datatype": datatype, "data": data}),
        );
    prop::collection::vec(input, 0..3).prop_map(Value::Array)
}

#[test]
fn v2_rest_decoder() {
    let seen = Outcomes::default();
    proptest!(config(), |(inputs in v2_body(), limit in limit())| {
        let text = json!({"inputs": inputs}).to_string();
        let parsed = match decoders::parse(text.as_bytes(), limit) {
            Ok(v) => v,
            Err(e) => {
                prop_assert!(matches!(e.code(), tonic::Code::ResourceExhausted), "{e}");
                return Ok(());
            }
        };
        let list = parsed["inputs"].as_array().cloned().unwrap_or_default();
        let mut budget = Budget::new(limit);
        let r = decoders::v2_inputs("model 'm' version 1", &list, &mut budget);
        seen.count(&r);
        match r {
            Ok(inputs) => {
                for (_, t) in &inputs {
                    check(&Ok(t.clone()), None)?;
                }
                within(&inputs.iter().map(|(_, t)| t).collect::<Vec<_>>(), &budget)?;
            }
            Err(e) => check(&Err(e), None)?,
        }
    });
    seen.assert_both("v2 REST body");
}

/// Arbitrary bytes, and JSON text with the non-finite tokens, through the body parser.
#[test]
fn json_body_parser() {
    let text = (
        json_value(),
        prop::collection::vec(
            (0..64usize, prop::sample::select(&["NaN", "-Infinity", "Infinity", "\"", "\\", "[", "{"][..])),
            0..4,
        ),
    )
        .prop_map(|(v, edits)| {
            let mut s = v.to_string();
            for (at, token) in edits {
                let mut at = at.min(s.len());
                while !s.is_char_boundary(at) {
                    at -= 1;
                }
                s.insert_str(at, token);
            }
            s.into_bytes()
        });
    let body = prop_oneof![prop::collection::vec(any::<u8>(), 0..64), text];
    let seen = Outcomes::default();
    proptest!(config(), |(body in body, limit in limit())| {
        let r = decoders::parse(&body, limit);
        seen.count(&r);
        match r {
            Ok(_) => {}
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                prop_assert!(matches!(e.code(), tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted), "{e}");
            }
        }
    });
    seen.assert_both("JSON body");
}
