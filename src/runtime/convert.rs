//! Conversion between core tensors and ONNX Runtime values.
//!
//! Inputs borrow the request's bytes when they are aligned for the element type (no copy); otherwise
//! they are copied once. Strings are always copied (ONNX Runtime keeps each element in its own
//! `std::string`). A string element is an arbitrary byte sequence, as in ONNX and TF Serving: NUL and
//! invalid UTF-8 included. The safe `ort` API only takes and gives `&str`/`String`, so string tensors go
//! through ONNX Runtime's C API, which takes and gives a pointer and a length per element.
//! Outputs of at least [`ZERO_COPY_OUTPUT_BYTES`] are not copied either: the core tensor's `Bytes`
//! owns the ONNX Runtime value and points into its buffer, so the only copy left is the front end's
//! encoding into the wire message. Smaller outputs are copied (cheaper than the shared owner).
use crate::tensor::{DType, Tensor, TensorData};
use bytes::Bytes;
use half::{bf16, f16};
use ort::memory::Allocator;
use ort::session::SessionInputValue;
use ort::sys::{OrtStatusPtr, OrtValue};
use ort::value::{DynValue, PrimitiveTensorElementType, TensorElementType, TensorRef, Value, ValueType};
use ort::AsPointer;
use std::ffi::{c_char, CStr};
use std::fmt::Debug;
use std::ptr::{self, NonNull};

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
        TensorData::Strings(items) => string_tensor(&shape, items)
            .map(SessionInputValue::from)
            .map_err(|e| format!("input '{name}': could not create an ONNX Runtime string tensor: {e}")),
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
            let n = crate::tensor::element_count(&shape).map_err(|e| format!("output '{name}': {e}"))?;
            let items =
                read_strings(v, n).map_err(|e| format!("output '{name}': could not read the string tensor: {e}"))?;
            Ok(TensorData::Strings(items))
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

/// Turns a non-null `OrtStatus` into an error naming the call (and releases the status).
fn check(status: OrtStatusPtr, call: &str) -> Result<(), String> {
    if status.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: `status.0` is a non-null status that ONNX Runtime just returned and that we own. Its
    // message is a NUL-terminated string owned by the status, copied out before the status is released
    // exactly once here.
    let message = unsafe {
        let text = (api.GetErrorMessage)(status.0);
        let message = if text.is_null() {
            String::from("no message")
        } else {
            CStr::from_ptr(text).to_string_lossy().into_owned()
        };
        (api.ReleaseStatus)(status.0);
        message
    };
    Err(format!("{call}: {message}"))
}

/// An ONNX Runtime string tensor of `shape` holding exactly the bytes of `items` (row-major; the caller
/// guarantees `items.len()` is the product of `shape`, as [`Tensor::new`] does). Elements may contain
/// NUL and need not be UTF-8.
pub(crate) fn string_tensor(shape: &[i64], items: &[Bytes]) -> Result<DynValue, String> {
    let api = ort::api();
    let mut allocator = Allocator::default();
    let mut raw: *mut OrtValue = ptr::null_mut();
    // SAFETY: the allocator is ONNX Runtime's default CPU allocator (alive for the whole process);
    // `shape` is a live slice read for `shape.len()` elements; `raw` is a valid out-pointer.
    let status = unsafe {
        (api.CreateTensorAsOrtValue)(
            allocator.ptr_mut(),
            shape.as_ptr(),
            shape.len(),
            TensorElementType::String.into(),
            &mut raw,
        )
    };
    check(status, "CreateTensorAsOrtValue")?;
    let raw = NonNull::new(raw).ok_or("CreateTensorAsOrtValue returned no value")?;
    // SAFETY: `raw` is a valid tensor value that we own, created with `allocator`; the `Value` takes
    // ownership and releases it when dropped, so every early return below frees it.
    let mut value: DynValue = unsafe { Value::from_ptr(raw, Some(&allocator)) };
    for (i, item) in items.iter().enumerate() {
        let mut buf: *mut c_char = ptr::null_mut();
        // SAFETY: `value` is the live string tensor created above and not shared; ONNX Runtime checks
        // `i` against its element count; `buf` is a valid out-pointer.
        let status = unsafe { (api.GetResizedStringTensorElementBuffer)(value.ptr_mut(), i, item.len(), &mut buf) };
        check(status, &format!("GetResizedStringTensorElementBuffer (element {i}, {} bytes)", item.len()))?;
        if item.is_empty() {
            continue;
        }
        if buf.is_null() {
            return Err(format!("GetResizedStringTensorElementBuffer returned no buffer for element {i}"));
        }
        // SAFETY: `buf` points at the `item.len()` writable bytes of element i's string, just resized to
        // that length by ONNX Runtime and owned by `value` (alive here); `item` is a distinct Rust
        // allocation, so the ranges do not overlap.
        unsafe { ptr::copy_nonoverlapping(item.as_ptr(), buf.cast::<u8>(), item.len()) };
    }
    Ok(value)
}

/// The `n` elements of a string tensor, as exact bytes. One buffer holds them all; each element is a
/// slice of it. Sizes come from the model, so the buffers are reserved fallibly.
fn read_strings(v: &DynValue, n: usize) -> Result<Vec<Bytes>, String> {
    let api = ort::api();
    let mut total: usize = 0;
    // SAFETY: `v` is a live string tensor (its element type was checked by the caller); `total` is a
    // valid out-pointer.
    check(unsafe { (api.GetStringTensorDataLength)(v.ptr(), &mut total) }, "GetStringTensorDataLength")?;
    let mut data: Vec<u8> = Vec::new();
    data.try_reserve_exact(total)
        .map_err(|e| format!("cannot allocate {total} bytes for {n} string element(s): {e}"))?;
    let mut offsets: Vec<usize> = Vec::new();
    offsets.try_reserve_exact(n).map_err(|e| format!("cannot allocate offsets for {n} string element(s): {e}"))?;
    // SAFETY: `data` has capacity for `total` bytes and `offsets` for `n` offsets; ONNX Runtime writes
    // at most `total` bytes (the length it just reported; it refuses a smaller buffer) and exactly
    // `n` offsets (it refuses an `offsets_len` other than the element count).
    let status =
        unsafe { (api.GetStringTensorContent)(v.ptr(), data.as_mut_ptr().cast(), total, offsets.as_mut_ptr(), n) };
    check(status, "GetStringTensorContent")?;
    // SAFETY: the call succeeded, so it initialized the first `total` bytes and `n` offsets.
    unsafe {
        data.set_len(total);
        offsets.set_len(n);
    }
    let data = Bytes::from(data);
    let mut items = Vec::new();
    items.try_reserve_exact(n).map_err(|e| format!("cannot allocate {n} string element(s): {e}"))?;
    for (i, &start) in offsets.iter().enumerate() {
        let end = offsets.get(i + 1).copied().unwrap_or(total);
        if start > end || end > total {
            return Err(format!("ONNX Runtime gave element {i} the range {start}..{end} of {total} bytes"));
        }
        items.push(data.slice(start..end));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> &'static ort::environment::Environment {
        crate::runtime::env::init(None).expect("ONNX Runtime (run ./scripts/setup.sh)")
    }

    /// Deterministic pseudo-random bytes (xorshift64*), every byte value included.
    fn blob(n: usize, mut seed: u64) -> Bytes {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        out.truncate(n);
        Bytes::from(out)
    }

    fn items() -> Vec<Bytes> {
        vec![
            Bytes::from_static(b"\x00\xff\xfe"),
            Bytes::new(),
            blob(1 << 20, 0x9e37_79b9_7f4a_7c15),
            Bytes::from_static(b"a\0b\0"),
            Bytes::from_static("caf\u{e9}".as_bytes()),
            Bytes::from_static(b"\xc3\x28 invalid"),
        ]
    }

    fn round_trip(shape: Vec<i64>, items: Vec<Bytes>) {
        env();
        let value = string_tensor(&shape, &items).expect("string tensor");
        let t = from_output("out", value).expect("read back");
        assert_eq!(t.dtype, DType::String);
        assert_eq!(t.shape, shape);
        match &t.data {
            TensorData::Strings(got) => {
                assert_eq!(got.len(), items.len());
                for (i, (g, w)) in got.iter().zip(&items).enumerate() {
                    assert!(g == w, "element {i}: {} bytes back for {} sent", g.len(), w.len());
                }
            }
            TensorData::Raw(_) => panic!("string tensor read back as raw bytes"),
        }
    }

    #[test]
    fn strings_are_bytes_in_every_shape() {
        round_trip(vec![6], items());
        round_trip(vec![2, 3], items());
        round_trip(vec![3, 1, 2], items());
        round_trip(vec![], vec![Bytes::from_static(b"\xff")]);
        round_trip(vec![0], vec![]);
        round_trip(vec![2, 0, 4], vec![]);
        round_trip(vec![3], vec![Bytes::new(), Bytes::new(), Bytes::new()]);
    }

    #[test]
    fn more_elements_than_the_shape_holds_is_an_error_naming_the_element() {
        env();
        let err = string_tensor(&[2], &[Bytes::new(), Bytes::new(), Bytes::from_static(b"x")]).unwrap_err();
        assert!(err.starts_with("GetResizedStringTensorElementBuffer (element 2, 1 bytes): "), "{err}");
    }

    #[test]
    fn a_negative_dimension_is_refused_by_onnx_runtime() {
        env();
        let err = string_tensor(&[-1], &[]).unwrap_err();
        assert!(err.starts_with("CreateTensorAsOrtValue: "), "{err}");
    }

    #[test]
    fn non_utf8_strings_pass_through_a_real_model() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/model_repository/identity_string/1/model.onnx");
        let mut session = crate::runtime::session_builder(env(), 1, 1)
            .expect("builder")
            .commit_from_file(path)
            .expect("identity_string loads");
        let sent = items();
        let t = Tensor::new(DType::String, vec![sent.len() as i64], TensorData::Strings(sent.clone())).unwrap();
        let input_name = session.inputs()[0].name().to_string();
        let output_name = session.outputs()[0].name().to_string();
        let input = to_input(&input_name, &t).expect("input");
        let mut outputs = session.run(vec![(input_name.as_str(), input)]).expect("run");
        let value = outputs.remove(output_name.as_str()).expect("output");
        let got = from_output(&output_name, value).expect("output tensor");
        assert_eq!(got, t);
    }
}
