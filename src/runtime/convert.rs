//! Conversion between core tensors and ONNX Runtime values.
//!
//! Inputs borrow the request's bytes when they are aligned for the element type (no copy); otherwise
//! they are copied once. Strings are always copied (ONNX Runtime stores its own NUL-terminated copies).
//! Outputs of at least [`ZERO_COPY_OUTPUT_BYTES`] are not copied either: the core tensor's `Bytes`
//! owns the ONNX Runtime value and points into its buffer, so the only copy left is the front end's
//! encoding into the wire message. Smaller outputs are copied (cheaper than the shared owner).
use crate::tensor::{DType, Tensor, TensorData};
use bytes::Bytes;
use half::{bf16, f16};
use ort::session::SessionInputValue;
use ort::value::{DynValue, PrimitiveTensorElementType, TensorElementType, TensorRef, ValueType};
use std::fmt::Debug;

/// The core dtype for an ONNX Runtime element type, if maas serves it.
pub(crate) fn dtype_from_ort(ty: TensorElementType) -> Option<DType> {
    Some(match ty {
        TensorElementType::Float32 => DType::F32,
        TensorElementType::Float64 => DType::F64,
        TensorElementType::Float16 => DType::F16,
        TensorElementType::Bfloat16 => DType::BF16,
        TensorElementType::Int8 => DType::I8,
        TensorElementType::Int16 => DType::I16,
        TensorElementType::Int32 => DType::I32,
        TensorElementType::Int64 => DType::I64,
        TensorElementType::Uint8 => DType::U8,
        TensorElementType::Uint16 => DType::U16,
        TensorElementType::Uint32 => DType::U32,
        TensorElementType::Uint64 => DType::U64,
        TensorElementType::Bool => DType::Bool,
        TensorElementType::String => DType::String,
        _ => return None,
    })
}

/// Builds an ONNX Runtime input value for `t` (which must be consistent: see [`Tensor::new`]).
pub(crate) fn to_input<'t>(name: &str, t: &'t Tensor) -> Result<SessionInputValue<'t>, String> {
    let shape = t.shape.clone();
    let fail = |e: ort::Error| format!("input '{name}': could not create an ONNX Runtime tensor: {e}");
    match &t.data {
        TensorData::Strings(items) => {
            let mut strs = Vec::with_capacity(items.len());
            for (i, b) in items.iter().enumerate() {
                let s = std::str::from_utf8(b).map_err(|e| {
                    format!("input '{name}': string element {i} is not valid UTF-8 ({e}); ONNX string tensors hold UTF-8 text")
                })?;
                strs.push(s.to_owned());
            }
            ort::value::Tensor::from_string_array((shape, strs.as_slice())).map(SessionInputValue::from).map_err(fail)
        }
        TensorData::Raw(b) => match t.dtype {
            DType::F32 => pod::<f32>(shape, b),
            DType::F64 => pod::<f64>(shape, b),
            DType::F16 => pod::<f16>(shape, b),
            DType::BF16 => pod::<bf16>(shape, b),
            DType::I8 => pod::<i8>(shape, b),
            DType::I16 => pod::<i16>(shape, b),
            DType::I32 => pod::<i32>(shape, b),
            DType::I64 => pod::<i64>(shape, b),
            DType::U8 => pod::<u8>(shape, b),
            DType::U16 => pod::<u16>(shape, b),
            DType::U32 => pod::<u32>(shape, b),
            DType::U64 => pod::<u64>(shape, b),
            DType::Bool => {
                let v: Vec<bool> = b.iter().map(|&x| x != 0).collect();
                ort::value::Tensor::from_array((shape, v)).map(SessionInputValue::from)
            }
            DType::String => return Err(format!("input '{name}': string tensor without string data")),
        }
        .map_err(fail),
    }
}

fn pod<T>(shape: Vec<i64>, b: &Bytes) -> ort::Result<SessionInputValue<'_>>
where
    T: PrimitiveTensorElementType + bytemuck::Pod + Debug,
{
    match bytemuck::try_cast_slice::<u8, T>(b) {
        Ok(slice) => TensorRef::from_array_view((shape, slice)).map(SessionInputValue::from),
        Err(_) => {
            let owned: Vec<T> = bytemuck::pod_collect_to_vec(b);
            ort::value::Tensor::from_array((shape, owned)).map(SessionInputValue::from)
        }
    }
}

/// Outputs at least this large are handed on without a copy.
pub(crate) const ZERO_COPY_OUTPUT_BYTES: usize = 4096;

/// An ONNX Runtime output value seen as its raw little-endian bytes (fixed-width types only).
struct OrtBytes {
    value: DynValue,
    dtype: DType,
}

impl AsRef<[u8]> for OrtBytes {
    fn as_ref(&self) -> &[u8] {
        fn bytes<T: PrimitiveTensorElementType + bytemuck::Pod>(v: &DynValue) -> &[u8] {
            v.try_extract_tensor::<T>().map(|(_, s)| bytemuck::cast_slice::<T, u8>(s)).unwrap_or(&[])
        }
        match self.dtype {
            DType::F32 => bytes::<f32>(&self.value),
            DType::F64 => bytes::<f64>(&self.value),
            DType::F16 => bytes::<f16>(&self.value),
            DType::BF16 => bytes::<bf16>(&self.value),
            DType::I8 => bytes::<i8>(&self.value),
            DType::I16 => bytes::<i16>(&self.value),
            DType::I32 => bytes::<i32>(&self.value),
            DType::I64 => bytes::<i64>(&self.value),
            DType::U8 => bytes::<u8>(&self.value),
            DType::U16 => bytes::<u16>(&self.value),
            DType::U32 => bytes::<u32>(&self.value),
            DType::U64 => bytes::<u64>(&self.value),
            DType::Bool | DType::String => &[],
        }
    }
}

/// Turns an ONNX Runtime output value into a core tensor (without a copy when it is large).
pub(crate) fn from_output(name: &str, v: DynValue) -> Result<Tensor, String> {
    let (ty, shape) = match v.dtype() {
        ValueType::Tensor { ty, shape, .. } => (*ty, shape.iter().copied().collect::<Vec<i64>>()),
        other => return Err(format!("output '{name}' is a {other}, not a tensor; maas serves tensor outputs only")),
    };
    let dtype = dtype_from_ort(ty)
        .ok_or_else(|| format!("output '{name}' has element type {ty:?}, which maas cannot serve"))?;
    let fail = |e: ort::Error| format!("output '{name}': could not read the ONNX Runtime tensor: {e}");
    let size = dtype.size().unwrap_or(0);
    if dtype != DType::Bool && size > 0 {
        let n = crate::tensor::element_count(&shape).map_err(|e| format!("output '{name}': {e}"))?;
        if n.saturating_mul(size) >= ZERO_COPY_OUTPUT_BYTES {
            let data = TensorData::Raw(Bytes::from_owner(OrtBytes { value: v, dtype }));
            return Tensor::new(dtype, shape, data)
                .map_err(|e| format!("output '{name}': inconsistent tensor from ONNX Runtime: {e}"));
        }
    }
    let v = &v;
    let data = match dtype {
        DType::F32 => raw::<f32>(v),
        DType::F64 => raw::<f64>(v),
        DType::F16 => raw::<f16>(v),
        DType::BF16 => raw::<bf16>(v),
        DType::I8 => raw::<i8>(v),
        DType::I16 => raw::<i16>(v),
        DType::I32 => raw::<i32>(v),
        DType::I64 => raw::<i64>(v),
        DType::U8 => raw::<u8>(v),
        DType::U16 => raw::<u16>(v),
        DType::U32 => raw::<u32>(v),
        DType::U64 => raw::<u64>(v),
        DType::Bool => v
            .try_extract_tensor::<bool>()
            .map(|(_, s)| TensorData::Raw(s.iter().map(|&x| u8::from(x)).collect::<Vec<u8>>().into())),
        DType::String => {
            v.try_extract_strings().map(|(_, s)| TensorData::Strings(s.into_iter().map(Bytes::from).collect()))
        }
    }
    .map_err(fail)?;
    Tensor::new(dtype, shape, data).map_err(|e| format!("output '{name}': inconsistent tensor from ONNX Runtime: {e}"))
}

fn raw<T>(v: &DynValue) -> ort::Result<TensorData>
where
    T: PrimitiveTensorElementType + bytemuck::Pod,
{
    let (_, s) = v.try_extract_tensor::<T>()?;
    Ok(TensorData::Raw(Bytes::copy_from_slice(bytemuck::cast_slice::<T, u8>(s))))
}
