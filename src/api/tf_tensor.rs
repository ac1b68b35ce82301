//! `tensorflow.TensorProto` <-> core [`Tensor`].
//!
//! Accepts `tensor_content` (raw little-endian bytes, taken without copying) and every typed `*_val`
//! field, including the version-0 rule that a single value fills the whole shape; the conversion
//! itself is the core's [`crate::tensor::codec`], this module only maps dtypes to TF's fields.
use crate::error::Error;
use crate::proto::tensorflow::{tensor_shape_proto::Dim, DataType, TensorProto, TensorShapeProto};
use crate::tensor::codec::{self, SmallUnsigned, Values, Wire};
use crate::tensor::{Budget, DType, Input, Tensor, TensorData};

/// TF `DataType` for a core dtype.
pub fn dtype_to_tf(d: DType) -> DataType {
    match d {
        DType::F32 => DataType::DtFloat,
        DType::F64 => DataType::DtDouble,
        DType::F16 => DataType::DtHalf,
        DType::BF16 => DataType::DtBfloat16,
        DType::I8 => DataType::DtInt8,
        DType::I16 => DataType::DtInt16,
        DType::I32 => DataType::DtInt32,
        DType::I64 => DataType::DtInt64,
        DType::U8 => DataType::DtUint8,
        DType::U16 => DataType::DtUint16,
        DType::U32 => DataType::DtUint32,
        DType::U64 => DataType::DtUint64,
        DType::Bool => DataType::DtBool,
        DType::String => DataType::DtString,
    }
}

/// Core dtype for a TF `DataType` value, if maas serves it.
pub fn dtype_from_tf(v: i32) -> Option<DType> {
    let dt = DataType::try_from(v).ok()?;
    DType::ALL.into_iter().find(|&d| dtype_to_tf(d) == dt)
}

fn tf_name(v: i32) -> String {
    DataType::try_from(v).map_or_else(|_| format!("unknown DataType {v}"), |d| d.as_str_name().to_string())
}

/// Decodes one request tensor, charging its size to the request's `budget` first. `ctx` names the
/// model/version and `name` the input, for messages.
pub fn decode(ctx: &str, name: &str, mut t: TensorProto, budget: &mut Budget) -> Result<Tensor, Error> {
    let input = Input { ctx, name };
    let Some(dtype) = dtype_from_tf(t.dtype) else {
        let supported: Vec<&str> = DType::ALL.iter().map(|&d| dtype_to_tf(d).as_str_name()).collect();
        return Err(input.invalid(format!(
            "dtype {} is not supported; supported dtypes: {}",
            tf_name(t.dtype),
            supported.join(", ")
        )));
    };
    let tf_dtype = dtype_to_tf(dtype).as_str_name();
    let shape_proto = t.tensor_shape.take().unwrap_or_default();
    if shape_proto.unknown_rank {
        return Err(input.invalid("tensor_shape has unknown_rank set; request tensors need a concrete shape"));
    }
    let shape: Vec<i64> = shape_proto.dim.iter().map(|d| d.size).collect();
    if !t.tensor_content.is_empty() {
        if dtype == DType::String {
            return Err(input.invalid("DT_STRING values must be sent in string_val, not tensor_content"));
        }
        let wire = Wire { field: "tensor_content", dtype: tf_dtype, fill_from_one: None };
        return codec::from_raw(input, budget, dtype, shape, std::mem::take(&mut t.tensor_content), &wire);
    }
    let (field, values) = typed_values(dtype, t);
    let wire = Wire { field, dtype: tf_dtype, fill_from_one: Some("tensor_content") };
    codec::from_values(input, budget, dtype, shape, values, &wire)
}

/// The typed field TF uses for a dtype, and its values.
fn typed_values(dtype: DType, t: TensorProto) -> (&'static str, Values) {
    match dtype {
        DType::F32 => ("float_val", Values::F32(t.float_val)),
        DType::F64 => ("double_val", Values::F64(t.double_val)),
        DType::I8 | DType::I16 | DType::I32 | DType::U8 | DType::U16 => ("int_val", Values::I32(t.int_val)),
        DType::I64 => ("int64_val", Values::I64(t.int64_val)),
        DType::U32 => ("uint32_val", Values::U32(t.uint32_val)),
        DType::U64 => ("uint64_val", Values::U64(t.uint64_val)),
        DType::Bool => ("bool_val", Values::Bool(t.bool_val)),
        DType::F16 | DType::BF16 => ("half_val", Values::HalfBits(t.half_val)),
        DType::String => ("string_val", Values::Strings(t.string_val)),
    }
}

/// Encodes a core tensor: typed `*_val` fields, or `tensor_content` (no copy) when asked.
/// Strings always go in `string_val`.
pub fn encode(t: Tensor, tensor_content: bool) -> TensorProto {
    let mut p = TensorProto {
        dtype: dtype_to_tf(t.dtype) as i32,
        tensor_shape: Some(TensorShapeProto {
            dim: t.shape.iter().map(|&size| Dim { size, name: String::new() }).collect(),
            unknown_rank: false,
        }),
        ..Default::default()
    };
    if tensor_content {
        if let TensorData::Raw(b) = t.data {
            p.tensor_content = b;
            return p;
        }
    }
    match codec::to_values(t, SmallUnsigned::AsI32) {
        Values::F32(v) => p.float_val = v,
        Values::F64(v) => p.double_val = v,
        Values::I32(v) => p.int_val = v,
        Values::I64(v) => p.int64_val = v,
        Values::U32(v) => p.uint32_val = v,
        Values::U64(v) => p.uint64_val = v,
        Values::Bool(v) => p.bool_val = v,
        Values::HalfBits(v) => p.half_val = v,
        Values::Strings(v) => p.string_val = v,
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn proto(dtype: DataType, shape: &[i64]) -> TensorProto {
        TensorProto {
            dtype: dtype as i32,
            tensor_shape: Some(TensorShapeProto {
                dim: shape.iter().map(|&size| Dim { size, name: String::new() }).collect(),
                unknown_rank: false,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn typed_and_content_agree() {
        let mut a = proto(DataType::DtFloat, &[2]);
        a.float_val = vec![1.5, -2.0];
        let mut b = proto(DataType::DtFloat, &[2]);
        b.tensor_content = Bytes::from([1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat());
        assert_eq!(
            decode("m", "x", a, &mut Budget::unlimited()).unwrap(),
            decode("m", "x", b, &mut Budget::unlimited()).unwrap()
        );
    }

    #[test]
    fn broadcasts_single_value() {
        let mut a = proto(DataType::DtInt8, &[2, 2]);
        a.int_val = vec![-3];
        let t = decode("m", "x", a, &mut Budget::unlimited()).unwrap();
        assert_eq!(t.data, TensorData::Raw(Bytes::from(vec![0xfd; 4])));
    }

    #[test]
    fn rejects_bad_counts_and_ranges() {
        let mut a = proto(DataType::DtFloat, &[2, 3]);
        a.float_val = vec![1.0, 2.0];
        let e = decode("model 'm' version 1", "x", a, &mut Budget::unlimited()).unwrap_err().to_string();
        assert_eq!(
            e,
            "model 'm' version 1: input 'x': float_val has 2 values but shape [2, 3] needs 6 (or a single value to fill it)"
        );
        let mut b = proto(DataType::DtUint8, &[1]);
        b.int_val = vec![300];
        let e = decode("m", "x", b, &mut Budget::unlimited()).unwrap_err().to_string();
        assert_eq!(e, "m: input 'x': int_val value 300 is out of range for DT_UINT8");
        let e = decode("m", "x", proto(DataType::DtComplex64, &[1]), &mut Budget::unlimited()).unwrap_err().to_string();
        assert!(e.starts_with("m: input 'x': dtype DT_COMPLEX64 is not supported; supported dtypes: DT_FLOAT"), "{e}");
    }

    #[test]
    fn encode_roundtrips_every_dtype() {
        for d in DType::ALL {
            let t = match d.size() {
                Some(size) => {
                    let bytes: Vec<u8> =
                        (0..3 * size).map(|i| if d == DType::Bool { (i % 2) as u8 } else { i as u8 }).collect();
                    Tensor::new(d, vec![3], TensorData::Raw(Bytes::from(bytes))).unwrap()
                }
                None => Tensor::new(d, vec![3], TensorData::Strings(vec![Bytes::from_static(b"a"); 3])).unwrap(),
            };
            for content in [false, true] {
                let back = decode("m", "x", encode(t.clone(), content), &mut Budget::unlimited()).unwrap();
                assert_eq!(back, t, "{d} content={content}");
            }
        }
    }
}
