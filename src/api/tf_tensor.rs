//! `tensorflow.TensorProto` <-> core [`Tensor`].
//!
//! Accepts `tensor_content` (raw little-endian bytes, taken without copying) and every typed `*_val`
//! field, including the version-0 rule that a single value fills the whole shape.
use crate::error::Error;
use crate::proto::tensorflow::{tensor_shape_proto::Dim, DataType, TensorProto, TensorShapeProto};
use crate::tensor::{element_count, fmt_shape, DType, Tensor, TensorData};
use bytes::Bytes;

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

/// Decodes one request tensor. `ctx` names the model/version and `name` the input, for messages.
pub fn decode(ctx: &str, name: &str, t: TensorProto) -> Result<Tensor, Error> {
    let bad = |msg: String| Error::InvalidArgument(format!("{ctx}: input '{name}': {msg}"));
    let Some(dtype) = dtype_from_tf(t.dtype) else {
        let supported: Vec<&str> = DType::ALL.iter().map(|&d| dtype_to_tf(d).as_str_name()).collect();
        return Err(bad(format!(
            "dtype {} is not supported; supported dtypes: {}",
            tf_name(t.dtype),
            supported.join(", ")
        )));
    };
    let tf_dtype = dtype_to_tf(dtype).as_str_name();
    let shape_proto = t.tensor_shape.unwrap_or_default();
    if shape_proto.unknown_rank {
        return Err(bad("tensor_shape has unknown_rank set; request tensors need a concrete shape".into()));
    }
    let shape: Vec<i64> = shape_proto.dim.iter().map(|d| d.size).collect();
    let n = element_count(&shape).map_err(|e| bad(format!("{e}; request tensors need a concrete shape")))?;

    if !t.tensor_content.is_empty() {
        let Some(size) = dtype.size() else {
            return Err(bad("DT_STRING values must be sent in string_val, not tensor_content".into()));
        };
        let expected = n.saturating_mul(size);
        if t.tensor_content.len() != expected {
            return Err(bad(format!(
                "tensor_content has {} bytes but shape {} of {tf_dtype} needs {expected} bytes ({n} x {size})",
                t.tensor_content.len(),
                fmt_shape(&shape)
            )));
        }
        return Tensor::new(dtype, shape, TensorData::Raw(t.tensor_content)).map_err(|e| bad(e.to_string()));
    }

    let sh = fmt_shape(&shape);
    let data = match dtype {
        DType::F32 => whole(t.float_val, "float_val", n, &sh),
        DType::F64 => whole(t.double_val, "double_val", n, &sh),
        DType::I8 => typed(&t.int_val, "int_val", n, &sh, |v, out| narrow::<i8>(v, out, "DT_INT8")),
        DType::I16 => typed(&t.int_val, "int_val", n, &sh, |v, out| narrow::<i16>(v, out, "DT_INT16")),
        DType::U8 => typed(&t.int_val, "int_val", n, &sh, |v, out| narrow::<u8>(v, out, "DT_UINT8")),
        DType::U16 => typed(&t.int_val, "int_val", n, &sh, |v, out| narrow::<u16>(v, out, "DT_UINT16")),
        DType::I32 => whole(t.int_val, "int_val", n, &sh),
        DType::I64 => whole(t.int64_val, "int64_val", n, &sh),
        DType::U32 => whole(t.uint32_val, "uint32_val", n, &sh),
        DType::U64 => whole(t.uint64_val, "uint64_val", n, &sh),
        DType::Bool => typed(&t.bool_val, "bool_val", n, &sh, |v, out| {
            out.push(u8::from(v));
            Ok(())
        }),
        DType::F16 | DType::BF16 => typed(&t.half_val, "half_val", n, &sh, |v, out| {
            let bits = u16::try_from(v)
                .map_err(|_| format!("half_val holds 16-bit patterns (0..=65535), got {v} ({tf_dtype})"))?;
            out.extend_from_slice(&bits.to_le_bytes());
            Ok(())
        }),
        DType::String => {
            let vals = t.string_val;
            match check_count(vals.len(), "string_val", n, &sh) {
                Ok(Fill::Exact) => Ok(TensorData::Strings(vals)),
                Ok(Fill::Broadcast) => Ok(TensorData::Strings(vec![vals[0].clone(); n])),
                Err(e) => Err(e),
            }
        }
    }
    .map_err(bad)?;
    Tensor::new(dtype, shape, data).map_err(|e| bad(e.to_string()))
}

enum Fill {
    Exact,
    Broadcast,
}

fn check_count(count: usize, field: &str, n: usize, shape: &str) -> Result<Fill, String> {
    if count == n {
        Ok(Fill::Exact)
    } else if count == 1 {
        Ok(Fill::Broadcast)
    } else if count == 0 {
        Err(format!("no values: shape {shape} needs {n} values in {field} (or the bytes in tensor_content)"))
    } else {
        Err(format!("{field} has {count} values but shape {shape} needs {n} (or a single value to fill it)"))
    }
}

/// A typed field of the tensor's own element type: the values become the tensor's bytes without a
/// copy (a single value is broadcast).
fn whole<T: bytemuck::Pod + Send + 'static>(
    vals: Vec<T>,
    field: &str,
    n: usize,
    shape: &str,
) -> Result<TensorData, String> {
    match check_count(vals.len(), field, n, shape)? {
        Fill::Exact => Ok(TensorData::Raw(crate::tensor::le_bytes(vals))),
        Fill::Broadcast => typed(&vals, field, n, shape, |v, out| {
            out.extend_from_slice(crate::tensor::le_bytes(vec![v]).as_ref());
            Ok(())
        }),
    }
}

/// Encodes typed values as raw little-endian bytes, broadcasting a single value.
fn typed<T: Copy>(
    vals: &[T],
    field: &str,
    n: usize,
    shape: &str,
    mut put: impl FnMut(T, &mut Vec<u8>) -> Result<(), String>,
) -> Result<TensorData, String> {
    let fill = check_count(vals.len(), field, n, shape)?;
    let mut out = Vec::with_capacity(n);
    match fill {
        Fill::Exact => {
            for &v in vals {
                put(v, &mut out)?;
            }
        }
        Fill::Broadcast => {
            put(vals[0], &mut out)?;
            let one = out.len();
            out.reserve(one * n.saturating_sub(1));
            for _ in 1..n {
                out.extend_from_within(0..one);
            }
        }
    }
    Ok(TensorData::Raw(Bytes::from(out)))
}

trait LeBytes: Sized {
    fn put(self, out: &mut Vec<u8>);
}
macro_rules! le_bytes {
    ($($t:ty),*) => {$(impl LeBytes for $t { fn put(self, out: &mut Vec<u8>) { out.extend_from_slice(&self.to_le_bytes()) } })*};
}
le_bytes!(i8, i16, u8, u16);

fn narrow<T: TryFrom<i32> + LeBytes>(v: i32, out: &mut Vec<u8>, tf: &str) -> Result<(), String> {
    let x = T::try_from(v).map_err(|_| format!("int_val value {v} is out of range for {tf}"))?;
    x.put(out);
    Ok(())
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
    let raw = match t.data {
        TensorData::Strings(s) => {
            p.string_val = s;
            return p;
        }
        TensorData::Raw(b) => b,
    };
    if tensor_content {
        p.tensor_content = raw;
        return p;
    }
    fn chunks<const N: usize, T>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
        b.chunks_exact(N).map(|c| f(c.try_into().unwrap_or([0; N]))).collect()
    }
    match t.dtype {
        DType::F32 => p.float_val = chunks(&raw, f32::from_le_bytes),
        DType::F64 => p.double_val = chunks(&raw, f64::from_le_bytes),
        DType::I8 => p.int_val = raw.iter().map(|&b| i32::from(b as i8)).collect(),
        DType::U8 => p.int_val = raw.iter().map(|&b| i32::from(b)).collect(),
        DType::I16 => p.int_val = chunks(&raw, |c| i32::from(i16::from_le_bytes(c))),
        DType::U16 => p.int_val = chunks(&raw, |c| i32::from(u16::from_le_bytes(c))),
        DType::I32 => p.int_val = chunks(&raw, i32::from_le_bytes),
        DType::I64 => p.int64_val = chunks(&raw, i64::from_le_bytes),
        DType::U32 => p.uint32_val = chunks(&raw, u32::from_le_bytes),
        DType::U64 => p.uint64_val = chunks(&raw, u64::from_le_bytes),
        DType::Bool => p.bool_val = raw.iter().map(|&b| b != 0).collect(),
        DType::F16 | DType::BF16 => p.half_val = chunks(&raw, |c| i32::from(u16::from_le_bytes(c))),
        DType::String => {}
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(decode("m", "x", a).unwrap(), decode("m", "x", b).unwrap());
    }

    #[test]
    fn broadcasts_single_value() {
        let mut a = proto(DataType::DtInt8, &[2, 2]);
        a.int_val = vec![-3];
        let t = decode("m", "x", a).unwrap();
        assert_eq!(t.data, TensorData::Raw(Bytes::from(vec![0xfd; 4])));
    }

    #[test]
    fn rejects_bad_counts_and_ranges() {
        let mut a = proto(DataType::DtFloat, &[2, 3]);
        a.float_val = vec![1.0, 2.0];
        let e = decode("model 'm' version 1", "x", a).unwrap_err().to_string();
        assert_eq!(
            e,
            "model 'm' version 1: input 'x': float_val has 2 values but shape [2, 3] needs 6 (or a single value to fill it)"
        );
        let mut b = proto(DataType::DtUint8, &[1]);
        b.int_val = vec![300];
        let e = decode("m", "x", b).unwrap_err().to_string();
        assert_eq!(e, "m: input 'x': int_val value 300 is out of range for DT_UINT8");
        let e = decode("m", "x", proto(DataType::DtComplex64, &[1])).unwrap_err().to_string();
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
                let back = decode("m", "x", encode(t.clone(), content)).unwrap();
                assert_eq!(back, t, "{d} content={content}");
            }
        }
    }
}
