//! Protocol-neutral core types: a tensor is a dtype, a shape and bytes; a request names its inputs and
//! the outputs it wants. Front ends translate their wire formats into these and back through
//! [`codec`] (typed values, raw bytes and strings <-> tensor bytes, with every check and message),
//! charging each decoded input to the request's [`Budget`] (`--max-tensor-bytes`) first.
use bytes::Bytes;
use std::fmt;

mod budget;
pub mod codec;

pub use budget::{claimed_elements, tensor_bytes, try_vec, Budget, Input, STRING_ELEMENT_BYTES};

/// Element types maas serves (every tensor type ONNX Runtime supports that has a wire representation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
    String,
}

impl DType {
    pub const ALL: [DType; 14] = [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::Bool,
        DType::String,
    ];

    /// Lower-case name used in error messages (`float32`, `int64`, `string`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::U8 => "uint8",
            DType::U16 => "uint16",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
            DType::Bool => "bool",
            DType::String => "string",
        }
    }

    /// Bytes per element in the raw little-endian layout; `None` for strings.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::String => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Tensor contents: fixed-width types as raw little-endian row-major bytes (bool as one byte 0/1),
/// strings as one byte string per element.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Raw(Bytes),
    Strings(Vec<Bytes>),
}

/// A dense tensor. Invariant (checked by [`Tensor::new`]): the data holds exactly
/// `product(shape)` elements of `dtype`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

/// Why a tensor's parts do not fit together; the front end adds which input it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorError {
    NegativeDim(Vec<i64>),
    TooLarge(Vec<i64>),
    ByteLength { expected: usize, got: usize },
    StringCount { expected: usize, got: usize },
    Kind,
}

impl fmt::Display for TensorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorError::NegativeDim(s) => {
                write!(f, "shape {} has a negative dimension", fmt_shape(s))
            }
            TensorError::TooLarge(s) => write!(f, "shape {} has too many elements", fmt_shape(s)),
            TensorError::ByteLength { expected, got } => {
                write!(f, "expected {expected} bytes of data, got {got}")
            }
            TensorError::StringCount { expected, got } => {
                write!(f, "expected {expected} strings, got {got}")
            }
            TensorError::Kind => f.write_str("string data given for a numeric dtype or vice versa"),
        }
    }
}

/// Number of elements of a shape, or an error for negative dims / overflow.
pub fn element_count(shape: &[i64]) -> Result<usize, TensorError> {
    let mut n: usize = 1;
    for &d in shape {
        let d = usize::try_from(d).map_err(|_| TensorError::NegativeDim(shape.to_vec()))?;
        n = n.checked_mul(d).ok_or_else(|| TensorError::TooLarge(shape.to_vec()))?;
    }
    Ok(n)
}

impl Tensor {
    /// Builds a tensor, checking that the data matches dtype and shape.
    pub fn new(dtype: DType, shape: Vec<i64>, data: TensorData) -> Result<Tensor, TensorError> {
        let n = element_count(&shape)?;
        match (&data, dtype.size()) {
            (TensorData::Raw(b), Some(size)) => {
                let expected = n.checked_mul(size).ok_or_else(|| TensorError::TooLarge(shape.clone()))?;
                if b.len() != expected {
                    return Err(TensorError::ByteLength { expected, got: b.len() });
                }
            }
            (TensorData::Strings(s), None) => {
                if s.len() != n {
                    return Err(TensorError::StringCount { expected: n, got: s.len() });
                }
            }
            _ => return Err(TensorError::Kind),
        }
        Ok(Tensor { dtype, shape, data })
    }

    pub fn num_elements(&self) -> usize {
        self.shape.iter().map(|&d| d.max(0) as usize).product()
    }
}

/// A vector of fixed-width values seen as its bytes.
struct PodVec<T>(Vec<T>);

impl<T: bytemuck::Pod> AsRef<[u8]> for PodVec<T> {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

/// The little-endian bytes of `values`: on little-endian machines the vector itself, without a copy
/// (and aligned for `T`, so ONNX Runtime can read it in place too).
pub fn le_bytes<T: bytemuck::Pod + Send + 'static>(values: Vec<T>) -> Bytes {
    if cfg!(target_endian = "little") {
        Bytes::from_owner(PodVec(values))
    } else {
        let size = std::mem::size_of::<T>();
        let mut out = Vec::with_capacity(values.len() * size);
        for v in &values {
            let mut b = bytemuck::bytes_of(v).to_vec();
            b.reverse();
            out.extend_from_slice(&b);
        }
        Bytes::from(out)
    }
}

/// Formats a shape as `[2, 8]`, with `-1` for dynamic dimensions.
pub fn fmt_shape(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

/// One input or output of a model's signature. `shape` uses `-1` for dynamic dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<i64>,
}

impl fmt::Display for TensorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' ({} {})", self.name, self.dtype, fmt_shape(&self.shape))
    }
}

/// A model version's signature: its inputs and outputs in model order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// A protocol-neutral inference request: named inputs, and the outputs wanted (empty = all).
#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    pub inputs: Vec<(String, Tensor)>,
    pub outputs: Vec<String>,
}

/// Outputs in the order requested (or in model order when all were requested).
#[derive(Debug, Clone, Default)]
pub struct InferResponse {
    pub outputs: Vec<(String, Tensor)>,
    /// Where the servable spent the time (for the metrics).
    pub stages: crate::metrics::Stages,
    /// Where the time went (usage metering).
    pub timing: Timing,
}

/// Time a request spent waiting for a session or batch, and its share of ONNX Runtime's run time
/// (a batch's run split across its requests by rows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timing {
    pub queue: std::time::Duration,
    pub compute: std::time::Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_byte_length() {
        let ok = Tensor::new(DType::F32, vec![2, 2], TensorData::Raw(Bytes::from(vec![0u8; 16])));
        assert!(ok.is_ok());
        let bad = Tensor::new(DType::F32, vec![2, 2], TensorData::Raw(Bytes::from(vec![0u8; 12])));
        assert_eq!(bad, Err(TensorError::ByteLength { expected: 16, got: 12 }));
        let neg = Tensor::new(DType::U8, vec![-1], TensorData::Raw(Bytes::new()));
        assert_eq!(neg, Err(TensorError::NegativeDim(vec![-1])));
        let strings = Tensor::new(DType::String, vec![3], TensorData::Strings(vec![Bytes::new(); 2]));
        assert_eq!(strings, Err(TensorError::StringCount { expected: 3, got: 2 }));
        assert_eq!(element_count(&[i64::MAX, 4]), Err(TensorError::TooLarge(vec![i64::MAX, 4])));
    }

    #[test]
    fn scalar_has_one_element() {
        assert_eq!(element_count(&[]), Ok(1));
        assert_eq!(fmt_shape(&[-1, 8]), "[-1, 8]");
    }
}
