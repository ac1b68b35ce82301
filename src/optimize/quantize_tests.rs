//! Unit tests of the int8 rewrite on small generated graphs: the nodes and initializers it produces
//! (op types, dtypes, shapes), what it leaves alone, and the numbers through real ONNX Runtime.
use super::*;
use crate::optimize::onnx_proto::{f32_tensor, save};
use crate::proto::maas::onnx::{
    tensor_shape_proto::{dimension::Value as Dim, Dimension},
    type_proto::{Tensor as TensorType, Value as TypeValue},
    OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::tensor::{Tensor, TensorData};

fn vi(name: &str, elem: DataType, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => Dim::DimValue(*v),
                None => Dim::DimParam("N".into()),
            }),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(TypeValue::TensorType(TensorType {
                elem_type: Some(elem as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        ..ValueInfoProto::default()
    }
}

fn model(
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
) -> ModelProto {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: nodes,
            initializer: inits,
            input: inputs,
            output: outputs,
            ..GraphProto::default()
        }),
        ..ModelProto::default()
    }
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn ops(m: &ModelProto) -> Vec<&str> {
    m.graph.as_ref().unwrap().node.iter().map(|n| n.op_type()).collect()
}

fn init<'m>(m: &'m ModelProto, name: &str) -> &'m TensorProto {
    m.graph.as_ref().unwrap().initializer.iter().find(|t| t.name() == name).unwrap_or_else(|| panic!("no {name}"))
}

fn has_init(m: &ModelProto, name: &str) -> bool {
    m.graph.as_ref().unwrap().initializer.iter().any(|t| t.name() == name)
}

/// Runs `m` through ONNX Runtime (written to a file, loaded like the server does) on one input.
fn run(m: &ModelProto, input: (&str, Tensor)) -> Vec<f32> {
    let env = crate::runtime::env::init(None).expect("ONNX Runtime is needed for these tests");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    save(m, &path, None).unwrap();
    let mut session = crate::optimize::guard::load_session(env, &path, 1).unwrap();
    let sig = crate::runtime::signature_of(&session).unwrap();
    let out = crate::optimize::guard::run_feed(&mut session, &vec![(input.0.to_string(), input.1)], &sig).unwrap();
    let TensorData::Raw(b) = &out[0].1.data else { panic!() };
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn f32_input(shape: Vec<i64>, seed: u64) -> Tensor {
    let n = shape.iter().product::<i64>() as usize;
    let raw: Vec<u8> = values(n, seed).iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::new(crate::tensor::DType::F32, shape, TensorData::Raw(raw.into())).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let a: Vec<f64> = a.iter().map(|&v| f64::from(v)).collect();
    let b: Vec<f64> = b.iter().map(|&v| f64::from(v)).collect();
    crate::optimize::guard::cosine(&a, &b)
}

fn matmul_model() -> ModelProto {
    model(
        vec![node("MatMul", "mm".into(), &["x", "W"], &["y"], vec![])],
        vec![f32_tensor("W", vec![64, 32], &values(64 * 32, 1))],
        vec![vi("x", DataType::Float, &[None, Some(64)])],
        vec![vi("y", DataType::Float, &[None, Some(32)])],
    )
}

#[test]
fn symmetric_int8_math() {
    let (q, s) = quantize_symmetric(&[-1.0, 0.5, 0.25, 1.27], None);
    assert_eq!(s, vec![0.01]);
    assert_eq!(q, vec![-100, 50, 25, 127]);
    // Per column of a [2, 2] tensor; an all-zero column gets scale 1.
    let (q, s) = quantize_symmetric(&[2.54, 0.0, -1.27, 0.0], Some(2));
    assert_eq!(s, vec![0.02, 1.0]);
    assert_eq!(q, vec![127, 0, -64, 0]);
    // Halves round to even, and nothing leaves [-127, 127].
    let (q, _) = quantize_symmetric(&[1.0, 0.5 / 127.0, 1.5 / 127.0, -1.0], None);
    assert_eq!(q, vec![127, 0, 2, -127]);
}

#[test]
fn matmul_becomes_dynamic_quantize_matmul_integer() {
    let src = matmul_model();
    for per_channel in [false, true] {
        let mut m = src.clone();
        let r = quantize(&mut m, Options { per_channel, embeddings: false }).unwrap();
        assert_eq!((r.matmul, r.gemm, r.gather, r.not_constant), (1, 0, 0, 0));
        assert_eq!(ops(&m), vec!["DynamicQuantizeLinear", "Mul", "MatMulInteger", "Cast", "Mul"]);
        let g = m.graph.as_ref().unwrap();
        let mmi = &g.node[2];
        assert_eq!(mmi.input, vec!["x_quantized", "W_quantized", "x_zero_point", "W_zero_point"]);
        assert_eq!(g.node[0].output, vec!["x_quantized", "x_scale", "x_zero_point"]);
        assert_eq!(g.node[1].input, vec!["x_scale", "W_scale"], "A scale first, as ONNX Runtime's fusion expects");
        assert_eq!(g.node[3].attribute[0].i, Some(1), "Cast to float");
        assert_eq!(g.node[4].output, vec!["y"], "the output keeps its name");
        assert!(!has_init(&m, "W"), "the float weight is gone");
        let (w, s, z) = (init(&m, "W_quantized"), init(&m, "W_scale"), init(&m, "W_zero_point"));
        assert_eq!((w.data_type(), w.dims.clone()), (DataType::Int8 as i32, vec![64, 32]));
        let sdims = if per_channel { vec![32] } else { vec![] };
        assert_eq!((s.data_type(), s.dims.clone()), (DataType::Float as i32, sdims.clone()));
        assert_eq!((z.data_type(), z.dims.clone()), (DataType::Int8 as i32, sdims));
        assert_eq!(r.float_bytes, 64 * 32 * 4);
        assert!(r.int8_bytes < r.float_bytes / 3, "{r:?}");

        let x = f32_input(vec![5, 64], 7);
        let (a, b) = (run(&src, ("x", x.clone())), run(&m, ("x", x)));
        assert_eq!(a.len(), b.len());
        let c = cosine(&a, &b);
        assert!(c > 0.999, "per_channel {per_channel}: cosine {c}");
    }
}

#[test]
fn gemm_with_bias_transposed_weight_alpha_and_beta() {
    let attrs = vec![
        int_attr("transB", 1),
        crate::proto::maas::onnx::AttributeProto {
            name: Some("alpha".into()),
            r#type: Some(crate::proto::maas::onnx::attribute_proto::AttributeType::Float as i32),
            f: Some(0.5),
            ..Default::default()
        },
        crate::proto::maas::onnx::AttributeProto {
            name: Some("beta".into()),
            r#type: Some(crate::proto::maas::onnx::attribute_proto::AttributeType::Float as i32),
            f: Some(2.0),
            ..Default::default()
        },
    ];
    let bias = values(48, 3);
    let src = model(
        vec![node("Gemm", "fc".into(), &["x", "W", "C"], &["y"], attrs)],
        vec![f32_tensor("W", vec![48, 64], &values(48 * 64, 2)), f32_tensor("C", vec![48], &bias)],
        vec![vi("x", DataType::Float, &[None, Some(64)])],
        vec![vi("y", DataType::Float, &[None, Some(48)])],
    );
    let mut m = src.clone();
    let r = quantize(&mut m, Options { per_channel: true, embeddings: false }).unwrap();
    assert_eq!(r.gemm, 1);
    assert_eq!(ops(&m), vec!["DynamicQuantizeLinear", "Mul", "MatMulInteger", "Cast", "Mul", "Add"]);
    assert_eq!(init(&m, "W_quantized").dims, vec![64, 48], "stored as [K, N]");
    assert_eq!(init(&m, "W_scale").dims, vec![48]);
    let g = m.graph.as_ref().unwrap();
    assert_eq!(g.node[5].input[1], "C_beta");
    assert_eq!(g.node[5].output, vec!["y"]);
    let scaled = f32_values(init(&m, "C_beta")).unwrap();
    assert!(scaled.iter().zip(&bias).all(|(s, b)| (s - 2.0 * b).abs() < 1e-6));
    assert!(!has_init(&m, "C") && !has_init(&m, "W"));
    let x = f32_input(vec![3, 64], 9);
    let c = cosine(&run(&src, ("x", x.clone())), &run(&m, ("x", x)));
    assert!(c > 0.999, "cosine {c}");
}

#[test]
fn gather_tables_become_int8_with_dequantize_after_the_gather() {
    let table = values(128 * 16, 4);
    let src = model(
        vec![node("Gather", "emb".into(), &["E", "ids"], &["y"], vec![])],
        vec![f32_tensor("E", vec![128, 16], &table)],
        vec![vi("ids", DataType::Int64, &[None, Some(3)])],
        vec![vi("y", DataType::Float, &[None, Some(3), Some(16)])],
    );
    // Without --embeddings, Gather is left alone.
    let mut m = src.clone();
    assert_eq!(quantize(&mut m, Options { per_channel: true, embeddings: false }).unwrap().gather, 0);
    assert_eq!(m, src);
    for per_channel in [false, true] {
        let mut m = src.clone();
        let r = quantize(&mut m, Options { per_channel, embeddings: true }).unwrap();
        assert_eq!(r.gather, 1);
        assert_eq!(ops(&m), vec!["Gather", "DequantizeLinear"]);
        let g = m.graph.as_ref().unwrap();
        assert_eq!(g.node[0].input, vec!["E_quantized", "ids"]);
        assert_eq!(g.node[1].input, vec!["y_quantized", "E_scale", "E_zero_point"]);
        assert_eq!(g.node[1].output, vec!["y"]);
        let axis = g.node[1].attribute.first().and_then(|a| a.i);
        assert_eq!(axis, per_channel.then_some(-1), "per-channel dequantizes along the last axis");
        assert_eq!(init(&m, "E_quantized").data_type(), DataType::Int8 as i32);
        assert_eq!(init(&m, "E_scale").dims, if per_channel { vec![16] } else { vec![] });

        let ids: Vec<u8> = [0i64, 5, 127, 64, 1, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
        let ids = Tensor::new(crate::tensor::DType::I64, vec![2, 3], TensorData::Raw(ids.into())).unwrap();
        let (a, b) = (run(&src, ("ids", ids.clone())), run(&m, ("ids", ids)));
        let amax = table.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst <= amax / 127.0 / 2.0 + 1e-6, "per_channel {per_channel}: error {worst}");
    }
}

#[test]
fn what_gains_nothing_or_is_not_constant_stays_float() {
    let src = model(
        vec![
            // Activation x activation: nothing to quantize.
            node("MatMul", "act".into(), &["x", "z"], &["a"], vec![]),
            // A small weight.
            node("MatMul", "small".into(), &["a", "S"], &["b"], vec![]),
            // An initializer that is also a graph input can be overridden: not a constant.
            node("MatMul", "overridable".into(), &["b", "O"], &["c"], vec![]),
            // A weight read by MatMul and, in float, by Add: quantized, and kept in float too.
            node("MatMul", "shared".into(), &["c", "W"], &["d"], vec![]),
            node("Add", "add".into(), &["d", "W"], &["y"], vec![]),
        ],
        vec![
            f32_tensor("S", vec![8, 8], &values(64, 5)),
            f32_tensor("O", vec![8, 128], &values(1024, 6)),
            f32_tensor("W", vec![128, 128], &values(128 * 128, 7)),
        ],
        vec![
            vi("x", DataType::Float, &[None, Some(8)]),
            vi("z", DataType::Float, &[Some(8), Some(8)]),
            vi("O", DataType::Float, &[Some(8), Some(128)]),
        ],
        vec![vi("y", DataType::Float, &[None, Some(128)])],
    );
    let mut m = src.clone();
    let r = quantize(&mut m, Options { per_channel: false, embeddings: true }).unwrap();
    assert_eq!(r.matmul, 1, "{r:?}");
    assert_eq!(r.not_constant, 2, "x*z and the overridable O");
    assert_eq!(r.kept_float["S"], "small: 64 elements (fewer than 1024)");
    assert_eq!(r.kept_float["W"], "also read in float by another node: stored both in float and in int8");
    let g = m.graph.as_ref().unwrap();
    let untouched: Vec<&NodeProto> = g.node.iter().filter(|n| n.op_type() == "MatMul").collect();
    assert_eq!(untouched.len(), 3);
    assert_eq!(untouched.iter().map(|n| n.name()).collect::<Vec<_>>(), vec!["act", "small", "overridable"]);
    assert!(has_init(&m, "W") && has_init(&m, "W_quantized") && has_init(&m, "O") && has_init(&m, "S"));
    assert_eq!(g.node.last().unwrap().input, vec!["d", "W"], "the Add still reads the float weight");

    // Too old an operator set for DynamicQuantizeLinear.
    let mut old = matmul_model();
    old.opset_import[0].version = Some(10);
    assert_eq!(
        quantize(&mut old, Options::default()).unwrap_err(),
        "int8-dynamic needs the default operator set at version 11 or later (for DynamicQuantizeLinear); the model \
         imports version 10"
    );
}

#[test]
fn one_dynamic_quantize_linear_per_activation_and_fresh_names() {
    // Two MatMuls read x (like Q, K and V), and a value named like a generated one already exists.
    let src = model(
        vec![
            node("MatMul", "q".into(), &["x", "Wq"], &["yq"], vec![]),
            node("MatMul", "k".into(), &["x", "Wk"], &["yk"], vec![]),
            node("Identity", "taken".into(), &["yk"], &["x_scale"], vec![]),
        ],
        vec![f32_tensor("Wq", vec![32, 32], &values(1024, 8)), f32_tensor("Wk", vec![32, 32], &values(1024, 9))],
        vec![vi("x", DataType::Float, &[None, Some(32)])],
        vec![vi("yq", DataType::Float, &[None, Some(32)]), vi("x_scale", DataType::Float, &[None, Some(32)])],
    );
    let mut m = src.clone();
    quantize(&mut m, Options::default()).unwrap();
    let o = ops(&m);
    assert_eq!(o.iter().filter(|&&op| op == "DynamicQuantizeLinear").count(), 1);
    assert_eq!(o.iter().filter(|&&op| op == "MatMulInteger").count(), 2);
    let g = m.graph.as_ref().unwrap();
    assert_eq!(g.node[0].output[1], "x_scale_1", "a name already in use is not reused");
    let x = f32_input(vec![2, 32], 11);
    let c = cosine(&run(&src, ("x", x.clone())), &run(&m, ("x", x)));
    assert!(c > 0.999, "cosine {c}");
}
