//! KServe v2 gRPC tensors (`InferTensorContents`, raw contents) <-> core [`Tensor`].
//!
//! Raw contents are row-major little-endian bytes (taken without copying); BYTES elements are a
//! 4-byte little-endian length followed by the bytes. FP16 and BF16 have no typed field: raw only.
//! The conversion itself is the core's [`crate::tensor::codec`]; this module maps dtypes to v2's
//! fields.
use super::v2_types::{dtype_from_v2, dtype_to_v2, supported_v2};
use crate::error::Error;
use crate::proto::inference::InferTensorContents;
use crate::tensor::codec::{self, SmallUnsigned, Values, Wire};
use crate::tensor::{Budget, DType, Input, Tensor, TensorData};
use bytes::Bytes;

/// Parses a v2 datatype string.
pub fn parse_datatype(ctx: &str, name: &str, datatype: &str) -> Result<DType, Error> {
    dtype_from_v2(datatype).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{ctx}: input '{name}': datatype '{datatype}' is not supported; supported: {}",
            supported_v2()
        ))
    })
}

/// Decodes an input from its raw bytes (BYTES: length-prefixed), charging its size to `budget` first.
pub fn decode_raw(
    ctx: &str,
    name: &str,
    dtype: DType,
    shape: Vec<i64>,
    raw: Bytes,
    budget: &mut Budget,
) -> Result<Tensor, Error> {
    let wire = Wire { field: "raw_input_contents", dtype: dtype_to_v2(dtype), fill_from_one: None };
    codec::from_raw(Input { ctx, name }, budget, dtype, shape, raw, &wire)
}

/// Joins strings as BYTES raw contents.
pub fn join_bytes(items: &[Bytes]) -> Bytes {
    codec::join_length_prefixed(items)
}

/// Decodes an input from its typed contents, charging its size to `budget` first.
pub fn decode_typed(
    ctx: &str,
    name: &str,
    dtype: DType,
    shape: Vec<i64>,
    c: InferTensorContents,
    budget: &mut Budget,
) -> Result<Tensor, Error> {
    let input = Input { ctx, name };
    let (field, values) = match dtype {
        DType::Bool => ("bool_contents", Values::Bool(c.bool_contents)),
        DType::I8 | DType::I16 | DType::I32 => ("int_contents", Values::I32(c.int_contents)),
        DType::U8 | DType::U16 | DType::U32 => ("uint_contents", Values::U32(c.uint_contents)),
        DType::I64 => ("int64_contents", Values::I64(c.int64_contents)),
        DType::U64 => ("uint64_contents", Values::U64(c.uint64_contents)),
        DType::F32 => ("fp32_contents", Values::F32(c.fp32_contents)),
        DType::F64 => ("fp64_contents", Values::F64(c.fp64_contents)),
        DType::String => ("bytes_contents", Values::Strings(c.bytes_contents)),
        DType::F16 | DType::BF16 => {
            return Err(input
                .invalid(format!("{} has no typed contents field; send it in raw_input_contents", dtype_to_v2(dtype))))
        }
    };
    let wire = Wire { field, dtype: dtype_to_v2(dtype), fill_from_one: None };
    codec::from_values(input, budget, dtype, shape, values, &wire)
}

/// Raw output contents of a tensor (no copy for fixed-width types).
pub fn encode_raw(t: Tensor) -> Bytes {
    match t.data {
        TensorData::Raw(b) => b,
        TensorData::Strings(s) => join_bytes(&s),
    }
}

/// Typed output contents; `None` for FP16/BF16, which have no typed field.
pub fn encode_typed(t: Tensor) -> Option<InferTensorContents> {
    if matches!(t.dtype, DType::F16 | DType::BF16) {
        return None;
    }
    let mut c = InferTensorContents::default();
    match codec::to_values(t, SmallUnsigned::AsU32) {
        Values::Bool(v) => c.bool_contents = v,
        Values::I32(v) => c.int_contents = v,
        Values::U32(v) => c.uint_contents = v,
        Values::I64(v) => c.int64_contents = v,
        Values::U64(v) => c.uint64_contents = v,
        Values::F32(v) => c.fp32_contents = v,
        Values::F64(v) => c.fp64_contents = v,
        Values::Strings(v) => c.bytes_contents = v,
        Values::HalfBits(_) => return None,
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_raw_round_trip_and_errors() {
        let items = vec![Bytes::from_static(b"a"), Bytes::new(), Bytes::from_static("héllo".as_bytes())];
        let raw = join_bytes(&items);
        let cut = raw.slice(..raw.len() - 1);
        let e = decode_raw("m", "x", DType::String, vec![3], cut, &mut Budget::unlimited()).unwrap_err();
        assert_eq!(e.to_string(), "m: input 'x': BYTES element 2 claims 6 bytes but only 5 remain");
        let t = decode_raw("m", "x", DType::String, vec![3], raw.clone(), &mut Budget::unlimited()).unwrap();
        assert_eq!(t.data, TensorData::Strings(items));
        assert_eq!(encode_raw(t), raw);
    }

    #[test]
    fn typed_round_trip_every_typed_dtype() {
        for d in DType::ALL {
            if matches!(d, DType::F16 | DType::BF16) {
                continue;
            }
            let t = match d.size() {
                Some(size) => {
                    let bytes: Vec<u8> = (0..2 * size)
                        .map(|i| if d == DType::Bool { (i % 2) as u8 } else { (i * 7) as u8 & 0x3f })
                        .collect();
                    Tensor::new(d, vec![2], TensorData::Raw(Bytes::from(bytes))).unwrap()
                }
                None => Tensor::new(d, vec![2], TensorData::Strings(vec![Bytes::from_static(b"q"); 2])).unwrap(),
            };
            let c = encode_typed(t.clone()).unwrap();
            assert_eq!(decode_typed("m", "x", d, vec![2], c, &mut Budget::unlimited()).unwrap(), t, "{d}");
        }
        let err = decode_typed("m", "x", DType::F16, vec![1], InferTensorContents::default(), &mut Budget::unlimited())
            .unwrap_err();
        assert_eq!(err.to_string(), "m: input 'x': FP16 has no typed contents field; send it in raw_input_contents");
    }
}
