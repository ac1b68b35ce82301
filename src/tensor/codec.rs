//! Typed values <-> tensor bytes: the one conversion every front end uses (TF `*_val` fields, v2
//! `*_contents`, raw bytes, REST JSON leaves).
//!
//! It holds the element conversions with their range checks, TF's rule that a single value fills
//! the shape, the raw-length and value-count checks, the length-prefixed string format, and their
//! messages; a front end only says which field the values came in and how its protocol names the
//! dtype. Every decoder charges the size the shape claims to the request's [`Budget`] before it
//! allocates anything, and allocates with `try_reserve`.
use super::budget::{claimed_elements, tensor_bytes, try_vec, Budget, Input};
use super::{fmt_shape, le_bytes, DType, Tensor, TensorData};
use crate::error::Error;
use bytes::{Bytes, BytesMut};
use std::fmt::Display;

/// A list of typed values as a protocol carries them (one variant per wire type).
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    Bool(Vec<bool>),
    /// float16/bfloat16 bit patterns in 32-bit integers (TF `half_val`).
    HalfBits(Vec<i32>),
    Strings(Vec<Bytes>),
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
            Values::I32(v) | Values::HalfBits(v) => v.len(),
            Values::I64(v) => v.len(),
            Values::U32(v) => v.len(),
            Values::U64(v) => v.len(),
            Values::Bool(v) => v.len(),
            Values::Strings(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Only the first value (for TF's fill rule).
    fn first(self) -> Values {
        fn one<T>(mut v: Vec<T>) -> Vec<T> {
            v.truncate(1);
            v
        }
        match self {
            Values::F32(v) => Values::F32(one(v)),
            Values::F64(v) => Values::F64(one(v)),
            Values::I32(v) => Values::I32(one(v)),
            Values::I64(v) => Values::I64(one(v)),
            Values::U32(v) => Values::U32(one(v)),
            Values::U64(v) => Values::U64(one(v)),
            Values::Bool(v) => Values::Bool(one(v)),
            Values::HalfBits(v) => Values::HalfBits(one(v)),
            Values::Strings(v) => Values::Strings(one(v)),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Values::F32(_) => "float32",
            Values::F64(_) => "float64",
            Values::I32(_) => "int32",
            Values::I64(_) => "int64",
            Values::U32(_) => "uint32",
            Values::U64(_) => "uint64",
            Values::Bool(_) => "bool",
            Values::HalfBits(_) => "16-bit pattern",
            Values::Strings(_) => "string",
        }
    }
}

/// How a protocol names the values of one input, for messages.
#[derive(Debug, Clone, Copy)]
pub struct Wire<'a> {
    /// The field the values came in: `float_val`, `fp32_contents`, `tensor_content`.
    pub field: &'a str,
    /// The dtype's name in this protocol: `DT_FLOAT`, `FP32`, `float32`.
    pub dtype: &'a str,
    /// TF's (version-0) rule: a single value fills the whole shape. Holds the field that carries
    /// raw bytes instead, which messages name as the alternative when no value is given.
    pub fill_from_one: Option<&'a str>,
}

fn count_message(wire: &Wire<'_>, count: usize, n: u128, shape: &str) -> String {
    match wire.fill_from_one {
        Some(raw) if count == 0 => {
            format!("no values: shape {shape} needs {n} values in {} (or the bytes in {raw})", wire.field)
        }
        Some(_) => {
            format!("{} has {count} values but shape {shape} needs {n} (or a single value to fill it)", wire.field)
        }
        None => format!("{} has {count} values but shape {shape} needs {n}", wire.field),
    }
}

/// Decodes typed values into a tensor of `dtype` and `shape`: counts checked against the shape (with
/// TF's fill rule when the wire has it), the size charged to `budget` first, every value range
/// checked. Values of the tensor's own width become its bytes without a copy.
pub fn from_values(
    input: Input<'_>,
    budget: &mut Budget,
    dtype: DType,
    shape: Vec<i64>,
    values: Values,
    wire: &Wire<'_>,
) -> Result<Tensor, Error> {
    let n = claimed_elements(input, &shape)?;
    let count = values.len();
    let fill = wire.fill_from_one.is_some() && count == 1 && n != 1;
    let payload: u128 = match &values {
        Values::Strings(s) if fill => n.saturating_mul(s.first().map_or(0, |b| b.len() as u128)),
        Values::Strings(s) => s.iter().map(|b| b.len() as u128).sum(),
        _ => 0,
    };
    budget.charge(input, dtype, &shape, tensor_bytes(dtype, n, payload))?;
    if count as u128 != n && !fill {
        return Err(input.invalid(count_message(wire, count, n, &fmt_shape(&shape))));
    }
    // n <= the budget's limit, so it fits a usize.
    let n = usize::try_from(n).map_err(|_| input.too_large(format!("shape {} is too large", fmt_shape(&shape))))?;
    let data = if fill {
        repeat(input, convert(input, dtype, values.first(), wire)?, n)?
    } else {
        convert(input, dtype, values, wire)?
    };
    Tensor::new(dtype, shape, data).map_err(|e| input.invalid(e))
}

/// Converts values to the tensor's element type, one to one.
fn convert(input: Input<'_>, dtype: DType, values: Values, wire: &Wire<'_>) -> Result<TensorData, Error> {
    let raw = match (dtype, values) {
        (DType::F32, Values::F32(v)) => le_bytes(v),
        (DType::F64, Values::F64(v)) => le_bytes(v),
        (DType::I32, Values::I32(v)) => le_bytes(v),
        (DType::I64, Values::I64(v)) => le_bytes(v),
        (DType::U32, Values::U32(v)) => le_bytes(v),
        (DType::U64, Values::U64(v)) => le_bytes(v),
        (DType::I8, Values::I32(v)) => narrow::<i32, i8>(input, &v, wire)?,
        (DType::I16, Values::I32(v)) => narrow::<i32, i16>(input, &v, wire)?,
        (DType::U8, Values::I32(v)) => narrow::<i32, u8>(input, &v, wire)?,
        (DType::U16, Values::I32(v)) => narrow::<i32, u16>(input, &v, wire)?,
        (DType::U8, Values::U32(v)) => narrow::<u32, u8>(input, &v, wire)?,
        (DType::U16, Values::U32(v)) => narrow::<u32, u16>(input, &v, wire)?,
        (DType::Bool, Values::Bool(v)) => {
            let mut out = try_vec::<u8>(input, v.len())?;
            out.extend(v.iter().map(|&b| u8::from(b)));
            Bytes::from(out)
        }
        (DType::F16 | DType::BF16, Values::HalfBits(v)) => {
            let mut out = try_vec::<u16>(input, v.len())?;
            for &x in &v {
                out.push(u16::try_from(x).map_err(|_| {
                    input.invalid(format!("{} holds 16-bit patterns (0..=65535), got {x} ({})", wire.field, wire.dtype))
                })?);
            }
            le_bytes(out)
        }
        (DType::String, Values::Strings(v)) => return Ok(TensorData::Strings(v)),
        (d, v) => {
            return Err(input.invalid(format!(
                "{} values in {} cannot fill a tensor of {} ({d})",
                v.kind(),
                wire.field,
                wire.dtype
            )))
        }
    };
    Ok(TensorData::Raw(raw))
}

/// Narrows every value to `T`, refusing those out of its range.
fn narrow<S, T>(input: Input<'_>, values: &[S], wire: &Wire<'_>) -> Result<Bytes, Error>
where
    S: Copy + Display,
    T: TryFrom<S> + bytemuck::Pod + Send + 'static,
{
    let mut out = try_vec::<T>(input, values.len())?;
    for &v in values {
        let x = T::try_from(v)
            .map_err(|_| input.invalid(format!("{} value {v} is out of range for {}", wire.field, wire.dtype)))?;
        out.push(x);
    }
    Ok(le_bytes(out))
}

/// Repeats the single element of `one` `n` times (the fill rule).
fn repeat(input: Input<'_>, one: TensorData, n: usize) -> Result<TensorData, Error> {
    match one {
        TensorData::Strings(s) => {
            let Some(first) = s.into_iter().next() else { return Ok(TensorData::Strings(Vec::new())) };
            let mut out = try_vec::<Bytes>(input, n)?;
            out.extend(std::iter::repeat_n(first, n));
            Ok(TensorData::Strings(out))
        }
        TensorData::Raw(b) => {
            let total = b.len().checked_mul(n).ok_or_else(|| input.too_large("the filled tensor is too large"))?;
            let mut out = try_vec::<u8>(input, total)?;
            if total > 0 {
                out.extend_from_slice(&b);
                // Double the filled part until it is complete.
                while out.len() < total {
                    let more = out.len().min(total - out.len());
                    out.extend_from_within(..more);
                }
            }
            Ok(TensorData::Raw(Bytes::from(out)))
        }
    }
}

/// Decodes raw little-endian bytes (TF `tensor_content`, v2 raw contents) of a fixed-width dtype,
/// taken without a copy, after charging the shape's size.
pub fn from_raw(
    input: Input<'_>,
    budget: &mut Budget,
    dtype: DType,
    shape: Vec<i64>,
    raw: Bytes,
    wire: &Wire<'_>,
) -> Result<Tensor, Error> {
    let n = claimed_elements(input, &shape)?;
    let Some(size) = dtype.size() else {
        return from_length_prefixed(input, budget, shape, raw);
    };
    let expected = tensor_bytes(dtype, n, 0);
    budget.charge(input, dtype, &shape, expected)?;
    if raw.len() as u128 != expected {
        return Err(input.invalid(format!(
            "{} has {} bytes but shape {} of {} needs {expected} bytes ({n} x {size})",
            wire.field,
            raw.len(),
            fmt_shape(&shape),
            wire.dtype
        )));
    }
    Tensor::new(dtype, shape, TensorData::Raw(raw)).map_err(|e| input.invalid(e))
}

/// Counts the elements of length-prefixed strings (repeated: u32 little-endian length, bytes) and
/// their bytes, without allocating.
pub fn scan_length_prefixed(raw: &[u8]) -> Result<(usize, usize), String> {
    let (mut count, mut payload, mut i) = (0usize, 0usize, 0usize);
    while i < raw.len() {
        let Some(prefix) = raw.get(i..i + 4) else {
            return Err(format!("BYTES raw contents end inside a length prefix at byte {i}"));
        };
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        let start = i + 4;
        let remain = raw.len() - start;
        if len > remain {
            return Err(format!("BYTES element {count} claims {len} bytes but only {remain} remain"));
        }
        count += 1;
        payload += len;
        i = start + len;
    }
    Ok((count, payload))
}

/// Decodes length-prefixed strings (v2 BYTES raw contents); the elements share `raw`'s memory.
pub fn from_length_prefixed(
    input: Input<'_>,
    budget: &mut Budget,
    shape: Vec<i64>,
    raw: Bytes,
) -> Result<Tensor, Error> {
    let n = claimed_elements(input, &shape)?;
    let (count, payload) = scan_length_prefixed(&raw).map_err(|m| input.invalid(m))?;
    budget.charge(input, DType::String, &shape, tensor_bytes(DType::String, n, payload as u128))?;
    if count as u128 != n {
        return Err(input.invalid(format!("expected {n} strings, got {count} (shape {})", fmt_shape(&shape))));
    }
    let mut out = try_vec::<Bytes>(input, count)?;
    let mut i = 0;
    while i + 4 <= raw.len() {
        let len = u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]) as usize;
        out.push(raw.slice(i + 4..i + 4 + len));
        i += 4 + len;
    }
    Tensor::new(DType::String, shape, TensorData::Strings(out)).map_err(|e| input.invalid(e))
}

/// Joins strings as length-prefixed bytes (v2 BYTES raw contents).
pub fn join_length_prefixed(items: &[Bytes]) -> Bytes {
    let mut out = BytesMut::with_capacity(items.iter().map(|b| b.len() + 4).sum());
    for b in items {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    }
    out.freeze()
}

/// A number as a text protocol (JSON) gives it, before conversion to the tensor's dtype.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    I64(i64),
    U64(u64),
    F64(f64),
}

impl Number {
    fn as_f64(self) -> f64 {
        match self {
            Number::I64(i) => i as f64,
            Number::U64(u) => u as f64,
            Number::F64(f) => f,
        }
    }
}

/// `NaN`, `Infinity`, `-Infinity`, or the shortest form that reads back (`1.5`, `1e300`).
pub fn format_f64(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{x:?}")
    }
}

impl Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Number::I64(i) => write!(f, "{i}"),
            Number::U64(u) => write!(f, "{u}"),
            Number::F64(x) => f.write_str(&format_f64(*x)),
        }
    }
}

/// Appends `x` as one element of `dtype` (little-endian), refusing values out of its range,
/// non-integers for integer dtypes and finite floats that would overflow a narrower float.
/// Messages name the dtype by its core name (`uint8`).
pub fn push_number(dtype: DType, x: Number, out: &mut Vec<u8>) -> Result<(), String> {
    fn float_fits(x: f64, narrowed_is_finite: bool, dtype: DType) -> Result<(), String> {
        if x.is_finite() && !narrowed_is_finite {
            return Err(format!("value {} is out of range for {dtype}", format_f64(x)));
        }
        Ok(())
    }
    match dtype {
        DType::F64 => out.extend_from_slice(&x.as_f64().to_le_bytes()),
        DType::F32 => {
            let f = x.as_f64();
            let y = f as f32;
            float_fits(f, y.is_finite(), dtype)?;
            out.extend_from_slice(&y.to_le_bytes());
        }
        DType::F16 => {
            let f = x.as_f64();
            let y = half::f16::from_f64(f);
            float_fits(f, y.is_finite(), dtype)?;
            out.extend_from_slice(&y.to_le_bytes());
        }
        DType::BF16 => {
            let f = x.as_f64();
            let y = half::bf16::from_f64(f);
            float_fits(f, y.is_finite(), dtype)?;
            out.extend_from_slice(&y.to_le_bytes());
        }
        DType::I8 => out.extend_from_slice(&integer::<i8>(x, dtype)?.to_le_bytes()),
        DType::I16 => out.extend_from_slice(&integer::<i16>(x, dtype)?.to_le_bytes()),
        DType::I32 => out.extend_from_slice(&integer::<i32>(x, dtype)?.to_le_bytes()),
        DType::I64 => out.extend_from_slice(&integer::<i64>(x, dtype)?.to_le_bytes()),
        DType::U8 => out.extend_from_slice(&integer::<u8>(x, dtype)?.to_le_bytes()),
        DType::U16 => out.extend_from_slice(&integer::<u16>(x, dtype)?.to_le_bytes()),
        DType::U32 => out.extend_from_slice(&integer::<u32>(x, dtype)?.to_le_bytes()),
        DType::U64 => out.extend_from_slice(&integer::<u64>(x, dtype)?.to_le_bytes()),
        DType::Bool | DType::String => return Err(format!("a number cannot be an element of dtype {dtype}")),
    }
    Ok(())
}

fn integer<T: TryFrom<i64> + TryFrom<u64>>(x: Number, dtype: DType) -> Result<T, String> {
    let range = || format!("value {x} is out of range for {dtype}");
    match x {
        Number::I64(i) => T::try_from(i).map_err(|_| range()),
        Number::U64(u) => T::try_from(u).map_err(|_| range()),
        Number::F64(f) => {
            if !f.is_finite() || f.fract() != 0.0 {
                return Err(format!("value {x} is not an integer (dtype {dtype})"));
            }
            if f < 0.0 {
                if f < -9.223_372_036_854_776e18 {
                    return Err(range());
                }
                T::try_from(f as i64).map_err(|_| range())
            } else {
                if f >= 18_446_744_073_709_551_616.0 {
                    return Err(range());
                }
                T::try_from(f as u64).map_err(|_| range())
            }
        }
    }
}

/// Which typed field 8- and 16-bit unsigned elements go to: TF's `int_val` or v2's `uint_contents`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmallUnsigned {
    AsI32,
    AsU32,
}

/// A tensor's elements as typed values (for protocols with typed fields). Narrow integers widen to
/// 32 bits; float16/bfloat16 become their bit patterns.
pub fn to_values(t: Tensor, small_unsigned: SmallUnsigned) -> Values {
    let raw = match t.data {
        TensorData::Strings(s) => return Values::Strings(s),
        TensorData::Raw(b) => b,
    };
    fn chunks<const N: usize, T>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
        b.chunks_exact(N).map(|c| f(c.try_into().unwrap_or([0; N]))).collect()
    }
    match (t.dtype, small_unsigned) {
        (DType::F32, _) => Values::F32(chunks(&raw, f32::from_le_bytes)),
        (DType::F64, _) => Values::F64(chunks(&raw, f64::from_le_bytes)),
        (DType::I8, _) => Values::I32(raw.iter().map(|&b| i32::from(b as i8)).collect()),
        (DType::I16, _) => Values::I32(chunks(&raw, |c| i32::from(i16::from_le_bytes(c)))),
        (DType::I32, _) => Values::I32(chunks(&raw, i32::from_le_bytes)),
        (DType::I64, _) => Values::I64(chunks(&raw, i64::from_le_bytes)),
        (DType::U8, SmallUnsigned::AsI32) => Values::I32(raw.iter().map(|&b| i32::from(b)).collect()),
        (DType::U8, SmallUnsigned::AsU32) => Values::U32(raw.iter().map(|&b| u32::from(b)).collect()),
        (DType::U16, SmallUnsigned::AsI32) => Values::I32(chunks(&raw, |c| i32::from(u16::from_le_bytes(c)))),
        (DType::U16, SmallUnsigned::AsU32) => Values::U32(chunks(&raw, |c| u32::from(u16::from_le_bytes(c)))),
        (DType::U32, _) => Values::U32(chunks(&raw, u32::from_le_bytes)),
        (DType::U64, _) => Values::U64(chunks(&raw, u64::from_le_bytes)),
        (DType::Bool, _) => Values::Bool(raw.iter().map(|&b| b != 0).collect()),
        (DType::F16 | DType::BF16, _) => Values::HalfBits(chunks(&raw, |c| i32::from(u16::from_le_bytes(c)))),
        (DType::String, _) => Values::Strings(Vec::new()),
    }
}

/// One element of a tensor, for text protocols: float16/bfloat16 widen to `F32`, signed integers to
/// `Int`, unsigned to `UInt`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Element<'a> {
    F32(f32),
    F64(f64),
    Int(i64),
    UInt(u64),
    Bool(bool),
    Bytes(&'a [u8]),
}

/// Element `i` of `t` (zero / empty past the end, which a valid tensor never reaches).
pub fn element(t: &Tensor, i: usize) -> Element<'_> {
    fn le<const N: usize>(b: &[u8], i: usize) -> [u8; N] {
        b.get(i * N..(i + 1) * N).and_then(|c| c.try_into().ok()).unwrap_or([0; N])
    }
    let raw = match &t.data {
        TensorData::Strings(s) => return Element::Bytes(s.get(i).map(|b| &b[..]).unwrap_or_default()),
        TensorData::Raw(b) => &b[..],
    };
    match t.dtype {
        DType::F32 => Element::F32(f32::from_le_bytes(le(raw, i))),
        DType::F64 => Element::F64(f64::from_le_bytes(le(raw, i))),
        DType::F16 => Element::F32(half::f16::from_le_bytes(le(raw, i)).to_f32()),
        DType::BF16 => Element::F32(half::bf16::from_le_bytes(le(raw, i)).to_f32()),
        DType::I8 => Element::Int(i8::from_le_bytes(le(raw, i)).into()),
        DType::I16 => Element::Int(i16::from_le_bytes(le(raw, i)).into()),
        DType::I32 => Element::Int(i32::from_le_bytes(le(raw, i)).into()),
        DType::I64 => Element::Int(i64::from_le_bytes(le(raw, i))),
        DType::U8 => Element::UInt(u8::from_le_bytes(le(raw, i)).into()),
        DType::U16 => Element::UInt(u16::from_le_bytes(le(raw, i)).into()),
        DType::U32 => Element::UInt(u32::from_le_bytes(le(raw, i)).into()),
        DType::U64 => Element::UInt(u64::from_le_bytes(le(raw, i))),
        DType::Bool => Element::Bool(raw.get(i).copied().unwrap_or(0) != 0),
        DType::String => Element::Bytes(&[]),
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
