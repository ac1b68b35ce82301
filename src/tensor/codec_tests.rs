use super::*;

const X: Input<'static> = Input { ctx: "m", name: "x" };
const TF_INT8: Wire<'static> = Wire { field: "int_val", dtype: "DT_INT8", fill_from_one: Some("tensor_content") };

fn wire(field: &'static str, dtype: &'static str) -> Wire<'static> {
    Wire { field, dtype, fill_from_one: None }
}

fn raw(t: &Tensor) -> &[u8] {
    match &t.data {
        TensorData::Raw(b) => b,
        TensorData::Strings(_) => panic!("not raw"),
    }
}

#[test]
fn same_width_values_are_not_copied() {
    let v = vec![1.5f32, -2.0];
    let ptr = v.as_ptr() as *const u8;
    let w = wire("fp32_contents", "FP32");
    let t = from_values(X, &mut Budget::unlimited(), DType::F32, vec![2], Values::F32(v), &w).unwrap();
    assert_eq!(raw(&t).as_ptr(), ptr);
    assert_eq!(raw(&t), [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat());
}

#[test]
fn fill_rule_and_counts() {
    let mut b = Budget::unlimited();
    let t = from_values(X, &mut b, DType::I8, vec![2, 2], Values::I32(vec![-3]), &TF_INT8).unwrap();
    assert_eq!(raw(&t), [0xfd; 4]);
    assert_eq!(b.used(), 4);
    let t = from_values(X, &mut b, DType::I8, vec![0], Values::I32(vec![-3]), &TF_INT8).unwrap();
    assert_eq!(raw(&t), [0u8; 0]);
    let s = Values::Strings(vec![Bytes::from_static(b"ab")]);
    let t = from_values(X, &mut b, DType::String, vec![3], s, &TF_INT8).unwrap();
    assert_eq!(t.data, TensorData::Strings(vec![Bytes::from_static(b"ab"); 3]));
    let e = from_values(X, &mut b, DType::I8, vec![2, 3], Values::I32(vec![1, 2]), &TF_INT8).unwrap_err();
    assert_eq!(
        e.to_string(),
        "m: input 'x': int_val has 2 values but shape [2, 3] needs 6 (or a single value to fill it)"
    );
    let e = from_values(X, &mut b, DType::I8, vec![2], Values::I32(vec![]), &TF_INT8).unwrap_err();
    assert_eq!(
        e.to_string(),
        "m: input 'x': no values: shape [2] needs 2 values in int_val (or the bytes in tensor_content)"
    );
    let w = wire("int_contents", "INT8");
    let e = from_values(X, &mut b, DType::I8, vec![2], Values::I32(vec![1]), &w).unwrap_err();
    assert_eq!(e.to_string(), "m: input 'x': int_contents has 1 values but shape [2] needs 2");
}

#[test]
fn ranges_are_checked() {
    let mut b = Budget::unlimited();
    let e = from_values(X, &mut b, DType::I8, vec![1], Values::I32(vec![200]), &TF_INT8).unwrap_err();
    assert_eq!(e.to_string(), "m: input 'x': int_val value 200 is out of range for DT_INT8");
    // A single value that fills the shape is checked too.
    let e = from_values(X, &mut b, DType::I8, vec![4], Values::I32(vec![-200]), &TF_INT8).unwrap_err();
    assert_eq!(e.to_string(), "m: input 'x': int_val value -200 is out of range for DT_INT8");
    let w = wire("uint_contents", "UINT16");
    let e = from_values(X, &mut b, DType::U16, vec![2], Values::U32(vec![1, 70000]), &w).unwrap_err();
    assert_eq!(e.to_string(), "m: input 'x': uint_contents value 70000 is out of range for UINT16");
    let w = Wire { field: "half_val", dtype: "DT_HALF", fill_from_one: Some("tensor_content") };
    let e = from_values(X, &mut b, DType::F16, vec![1], Values::HalfBits(vec![65536]), &w).unwrap_err();
    assert_eq!(e.to_string(), "m: input 'x': half_val holds 16-bit patterns (0..=65535), got 65536 (DT_HALF)");
    let e = from_values(X, &mut b, DType::F32, vec![1], Values::I32(vec![1]), &TF_INT8).unwrap_err();
    assert_eq!(e.to_string(), "m: input 'x': int32 values in int_val cannot fill a tensor of DT_INT8 (float32)");
}

#[test]
fn budget_is_charged_before_filling() {
    let mut b = Budget::new(1 << 20);
    let w = Wire { field: "float_val", dtype: "DT_FLOAT", fill_from_one: Some("tensor_content") };
    let e = from_values(X, &mut b, DType::F32, vec![1 << 40, 8], Values::F32(vec![1.0]), &w).unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert!(e.to_string().starts_with("m: input 'x': shape [1099511627776, 8] of float32 needs 35184372088832 bytes"));
    // Strings: the element count, and the bytes of a filled value, count.
    let s = Values::Strings(vec![Bytes::from(vec![0u8; 1000])]);
    let e = from_values(X, &mut b, DType::String, vec![2000], s, &w).unwrap_err();
    assert!(e.to_string().contains("needs 2064000 bytes"), "{e}");
    let e = from_values(X, &mut b, DType::String, vec![1 << 40], Values::Strings(vec![]), &w).unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    assert_eq!(b.used(), 0);
}

#[test]
fn raw_and_length_prefixed() {
    let mut b = Budget::new(64);
    let w = wire("raw_input_contents", "FP32");
    let e = from_raw(X, &mut b, DType::F32, vec![1, 8], Bytes::from(vec![0u8; 30]), &w).unwrap_err();
    assert_eq!(
        e.to_string(),
        "m: input 'x': raw_input_contents has 30 bytes but shape [1, 8] of FP32 needs 32 bytes (8 x 4)"
    );
    let e = from_raw(X, &mut b, DType::F32, vec![1 << 20], Bytes::new(), &w).unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);

    let items = vec![Bytes::from_static(b"a"), Bytes::new(), Bytes::from_static(b"\x00\xff")];
    let joined = join_length_prefixed(&items);
    assert_eq!(scan_length_prefixed(&joined), Ok((3, 3)));
    let t = from_length_prefixed(X, &mut Budget::unlimited(), vec![3], joined.clone()).unwrap();
    assert_eq!(t.data, TensorData::Strings(items));
    let cut = joined.slice(..joined.len() - 1);
    assert_eq!(scan_length_prefixed(&cut).unwrap_err(), "BYTES element 2 claims 2 bytes but only 1 remain");
    assert_eq!(scan_length_prefixed(&[1, 0]).unwrap_err(), "BYTES raw contents end inside a length prefix at byte 0");
    let e = from_length_prefixed(X, &mut Budget::unlimited(), vec![2], joined.clone()).unwrap_err();
    assert_eq!(e.to_string(), "m: input 'x': expected 2 strings, got 3 (shape [2])");
    // A count claim far beyond the elements sent is refused by its size.
    let e = from_length_prefixed(X, &mut Budget::new(1 << 30), vec![1 << 40], joined).unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
}

#[test]
fn numbers() {
    let mut out = Vec::new();
    assert_eq!(push_number(DType::U8, Number::I64(300), &mut out).unwrap_err(), "value 300 is out of range for uint8");
    assert_eq!(
        push_number(DType::I32, Number::F64(2.5), &mut out).unwrap_err(),
        "value 2.5 is not an integer (dtype int32)"
    );
    assert_eq!(
        push_number(DType::F16, Number::F64(70000.0), &mut out).unwrap_err(),
        "value 70000.0 is out of range for float16"
    );
    assert_eq!(
        push_number(DType::F32, Number::F64(1e300), &mut out).unwrap_err(),
        "value 1e300 is out of range for float32"
    );
    assert!(out.is_empty());
    push_number(DType::F32, Number::F64(f64::NAN), &mut out).unwrap();
    push_number(DType::I64, Number::F64(-4.0), &mut out).unwrap();
    push_number(DType::U64, Number::U64(u64::MAX), &mut out).unwrap();
    assert_eq!(out.len(), 4 + 8 + 8);
}

#[test]
fn values_and_elements_round_trip() {
    for d in DType::ALL {
        let t = match d.size() {
            Some(size) => {
                let bytes: Vec<u8> =
                    (0..3 * size).map(|i| if d == DType::Bool { (i % 2) as u8 } else { (i * 37) as u8 }).collect();
                Tensor::new(d, vec![3], TensorData::Raw(Bytes::from(bytes))).unwrap()
            }
            None => Tensor::new(d, vec![3], TensorData::Strings(vec![Bytes::from_static(b"\xff"); 3])).unwrap(),
        };
        for small in [SmallUnsigned::AsI32, SmallUnsigned::AsU32] {
            let v = to_values(t.clone(), small);
            let w = wire("f", "D");
            let back = from_values(X, &mut Budget::unlimited(), d, vec![3], v, &w).unwrap();
            assert_eq!(back, t, "{d} {small:?}");
        }
        match d {
            DType::String => assert_eq!(element(&t, 2), Element::Bytes(b"\xff")),
            DType::Bool => assert_eq!(element(&t, 1), Element::Bool(true)),
            DType::I8 => assert_eq!(element(&t, 2), Element::Int(74)),
            DType::U16 => assert_eq!(element(&t, 1), Element::UInt(u64::from(u16::from_le_bytes([74, 111])))),
            _ => {}
        }
    }
    let t =
        Tensor::new(DType::F16, vec![1], TensorData::Raw(Bytes::from(half::f16::from_f32(1.5).to_le_bytes().to_vec())))
            .unwrap();
    assert_eq!(element(&t, 0), Element::F32(1.5));
}
