//! KServe v2 gRPC tensors (`InferTensorContents`, raw contents) <-> core [`Tensor`].
//!
//! Raw contents are row-major little-endian bytes (taken without copying); BYTES elements are a
//! 4-byte little-endian length followed by the bytes. FP16 and BF16 have no typed field: raw only.
use super::v2_types::{dtype_from_v2, dtype_to_v2, supported_v2};
use crate::error::Error;
use crate::proto::inference::InferTensorContents;
use crate::tensor::{element_count, fmt_shape, le_bytes, DType, Tensor, TensorData};
use bytes::{Bytes, BytesMut};

/// Parses a v2 datatype string.
pub fn parse_datatype(ctx: &str, name: &str, datatype: &str) -> Result<DType, Error> {
    dtype_from_v2(datatype).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{ctx}: input '{name}': datatype '{datatype}' is not supported; supported: {}",
            supported_v2()
        ))
    })
}

/// Decodes an input from its raw bytes.
pub fn decode_raw(ctx: &str, name: &str, dtype: DType, shape: Vec<i64>, raw: Bytes) -> Result<Tensor, Error> {
    let bad = |m: String| Error::InvalidArgument(format!("{ctx}: input '{name}': {m}"));
    let n = element_count(&shape).map_err(|e| bad(format!("{e}")))?;
    let data = match dtype.size() {
        Some(size) => {
            let want = n.saturating_mul(size);
            if raw.len() != want {
                return Err(bad(format!(
                    "raw_input_contents has {} bytes but shape {} of {} needs {want} bytes ({n} x {size})",
                    raw.len(),
                    fmt_shape(&shape),
                    dtype_to_v2(dtype)
                )));
            }
            TensorData::Raw(raw)
        }
        None => TensorData::Strings(split_bytes(&raw).map_err(bad)?),
    };
    Tensor::new(dtype, shape.clone(), data).map_err(|e| bad(format!("{e} (shape {})", fmt_shape(&shape))))
}

/// Splits BYTES raw contents: repeated (u32 little-endian length, bytes).
fn split_bytes(raw: &Bytes) -> Result<Vec<Bytes>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        let Some(len) = raw.get(i..i + 4) else {
            return Err(format!("BYTES raw contents end inside a length prefix at byte {i}"));
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let start = i + 4;
        let end = start.checked_add(len).filter(|&e| e <= raw.len()).ok_or_else(|| {
            format!("BYTES element {} claims {len} bytes but only {} remain", out.len(), raw.len() - start)
        })?;
        out.push(raw.slice(start..end));
        i = end;
    }
    Ok(out)
}

/// Joins strings as BYTES raw contents.
pub fn join_bytes(items: &[Bytes]) -> Bytes {
    let mut out = BytesMut::with_capacity(items.iter().map(|b| b.len() + 4).sum());
    for b in items {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    }
    out.freeze()
}

/// Decodes an input from its typed contents.
pub fn decode_typed(
    ctx: &str,
    name: &str,
    dtype: DType,
    shape: Vec<i64>,
    c: InferTensorContents,
) -> Result<Tensor, Error> {
    let bad = |m: String| Error::InvalidArgument(format!("{ctx}: input '{name}': {m}"));
    let n = element_count(&shape).map_err(|e| bad(format!("{e}")))?;
    let sh = fmt_shape(&shape);
    fn count<T>(v: &[T], field: &str, n: usize, sh: &str) -> Result<(), String> {
        if v.len() == n {
            Ok(())
        } else {
            Err(format!("{field} has {} values but shape {sh} needs {n}", v.len()))
        }
    }
    fn le<T: Copy>(v: &[T], f: impl Fn(T, &mut Vec<u8>) -> Result<(), String>) -> Result<TensorData, String> {
        let mut out = Vec::with_capacity(v.len() * 8);
        for &x in v {
            f(x, &mut out)?;
        }
        Ok(TensorData::Raw(Bytes::from(out)))
    }
    let range = |x: i64, t: &str| format!("value {x} is out of range for {t}");
    let data = match dtype {
        DType::Bool => count(&c.bool_contents, "bool_contents", n, &sh).and_then(|()| {
            le(&c.bool_contents, |x, o| {
                o.push(u8::from(x));
                Ok(())
            })
        }),
        DType::I32 => {
            count(&c.int_contents, "int_contents", n, &sh).map(|()| TensorData::Raw(le_bytes(c.int_contents)))
        }
        DType::U32 => {
            count(&c.uint_contents, "uint_contents", n, &sh).map(|()| TensorData::Raw(le_bytes(c.uint_contents)))
        }
        DType::I8 | DType::I16 => count(&c.int_contents, "int_contents", n, &sh).and_then(|()| {
            le(&c.int_contents, |x, o| {
                match dtype {
                    DType::I8 => {
                        o.extend_from_slice(&i8::try_from(x).map_err(|_| range(x.into(), "INT8"))?.to_le_bytes())
                    }
                    DType::I16 => {
                        o.extend_from_slice(&i16::try_from(x).map_err(|_| range(x.into(), "INT16"))?.to_le_bytes())
                    }
                    _ => o.extend_from_slice(&x.to_le_bytes()),
                }
                Ok(())
            })
        }),
        DType::U8 | DType::U16 => count(&c.uint_contents, "uint_contents", n, &sh).and_then(|()| {
            le(&c.uint_contents, |x, o| {
                match dtype {
                    DType::U8 => {
                        o.extend_from_slice(&u8::try_from(x).map_err(|_| range(x.into(), "UINT8"))?.to_le_bytes())
                    }
                    DType::U16 => {
                        o.extend_from_slice(&u16::try_from(x).map_err(|_| range(x.into(), "UINT16"))?.to_le_bytes())
                    }
                    _ => o.extend_from_slice(&x.to_le_bytes()),
                }
                Ok(())
            })
        }),
        DType::I64 => {
            count(&c.int64_contents, "int64_contents", n, &sh).map(|()| TensorData::Raw(le_bytes(c.int64_contents)))
        }
        DType::U64 => {
            count(&c.uint64_contents, "uint64_contents", n, &sh).map(|()| TensorData::Raw(le_bytes(c.uint64_contents)))
        }
        DType::F32 => {
            count(&c.fp32_contents, "fp32_contents", n, &sh).map(|()| TensorData::Raw(le_bytes(c.fp32_contents)))
        }
        DType::F64 => {
            count(&c.fp64_contents, "fp64_contents", n, &sh).map(|()| TensorData::Raw(le_bytes(c.fp64_contents)))
        }
        DType::String => {
            count(&c.bytes_contents, "bytes_contents", n, &sh).map(|()| TensorData::Strings(c.bytes_contents))
        }
        DType::F16 | DType::BF16 => {
            Err(format!("{} has no typed contents field; send it in raw_input_contents", dtype_to_v2(dtype)))
        }
    }
    .map_err(bad)?;
    Tensor::new(dtype, shape, data).map_err(|e| bad(e.to_string()))
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
    let mut c = InferTensorContents::default();
    let raw = match t.data {
        TensorData::Strings(s) => {
            c.bytes_contents = s;
            return Some(c);
        }
        TensorData::Raw(b) => b,
    };
    fn chunks<const N: usize, T>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
        b.chunks_exact(N).map(|c| f(c.try_into().unwrap_or([0; N]))).collect()
    }
    match t.dtype {
        DType::Bool => c.bool_contents = raw.iter().map(|&b| b != 0).collect(),
        DType::I8 => c.int_contents = raw.iter().map(|&b| i32::from(b as i8)).collect(),
        DType::I16 => c.int_contents = chunks(&raw, |x| i32::from(i16::from_le_bytes(x))),
        DType::I32 => c.int_contents = chunks(&raw, i32::from_le_bytes),
        DType::U8 => c.uint_contents = raw.iter().map(|&b| u32::from(b)).collect(),
        DType::U16 => c.uint_contents = chunks(&raw, |x| u32::from(u16::from_le_bytes(x))),
        DType::U32 => c.uint_contents = chunks(&raw, u32::from_le_bytes),
        DType::I64 => c.int64_contents = chunks(&raw, i64::from_le_bytes),
        DType::U64 => c.uint64_contents = chunks(&raw, u64::from_le_bytes),
        DType::F32 => c.fp32_contents = chunks(&raw, f32::from_le_bytes),
        DType::F64 => c.fp64_contents = chunks(&raw, f64::from_le_bytes),
        DType::F16 | DType::BF16 | DType::String => return None,
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
        assert_eq!(split_bytes(&raw).unwrap(), items);
        let cut = raw.slice(..raw.len() - 1);
        assert_eq!(split_bytes(&cut).unwrap_err(), "BYTES element 2 claims 6 bytes but only 5 remain");
        let t = decode_raw("m", "x", DType::String, vec![3], raw.clone()).unwrap();
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
            assert_eq!(decode_typed("m", "x", d, vec![2], c).unwrap(), t, "{d}");
        }
        let err = decode_typed("m", "x", DType::F16, vec![1], InferTensorContents::default()).unwrap_err();
        assert_eq!(err.to_string(), "m: input 'x': FP16 has no typed contents field; send it in raw_input_contents");
    }
}
