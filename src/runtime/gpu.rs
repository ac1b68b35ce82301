//! Which GPU a device ordinal is, for the TensorRT engine cache key: an engine is only valid for the
//! GPU model (compute capability) and TensorRT release that built it.
//!
//! ONNX Runtime does not say which GPU it runs on, so this asks the CUDA driver directly: it opens
//! `libcuda.so.1` (the driver library every CUDA program uses) with `dlopen` and calls `cuInit`,
//! `cuDeviceGet`, `cuDeviceGetName` and `cuDeviceGetAttribute`. No CUDA toolkit is needed at build
//! time, and on a machine without a GPU it is a precise error rather than a link failure.
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::{Mutex, OnceLock};

/// The identity of one GPU, as far as a TensorRT engine depends on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GpuIdentity {
    /// The device name, e.g. `NVIDIA H200`.
    pub name: String,
    /// Compute capability (major, minor), e.g. (9, 0).
    pub compute_capability: (i32, i32),
    /// `getInferLibVersion()` of the TensorRT library (e.g. 100300 for 10.3.0), if it could be loaded.
    pub tensorrt_version: Option<i32>,
}

impl GpuIdentity {
    /// A stable one-line description (also what the cache keys hash).
    pub fn describe(&self) -> String {
        let trt = self.tensorrt_version.map_or_else(|| "unknown".to_string(), |v| v.to_string());
        format!(
            "{} (compute capability {}.{}, TensorRT library version {trt})",
            self.name, self.compute_capability.0, self.compute_capability.1
        )
    }
}

const LIBCUDA: &CStr = c"libcuda.so.1";
/// TensorRT releases whose library ONNX Runtime's TensorRT provider may load, newest first.
const LIBNVINFER: [&CStr; 2] = [c"libnvinfer.so.10", c"libnvinfer.so.8"];
const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: c_int = 75;
const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: c_int = 76;

type CuResult = c_int;
type CuInit = unsafe extern "C" fn(c_uint) -> CuResult;
type CuDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> CuResult;
type CuDeviceGetName = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> CuResult;
type CuDeviceGetAttribute = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> CuResult;
type CuGetErrorString = unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult;
type GetInferLibVersion = unsafe extern "C" fn() -> i32;

static KNOWN: OnceLock<Mutex<HashMap<i32, GpuIdentity>>> = OnceLock::new();

/// The identity of CUDA device `ordinal` (the `--device-id` ONNX Runtime is given). Successes are
/// remembered for the process; failures are not (they are cheap, and a driver may appear later).
pub fn identify(ordinal: i32) -> Result<GpuIdentity, String> {
    let known = KNOWN.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(id) = known.lock().unwrap_or_else(|p| p.into_inner()).get(&ordinal) {
        return Ok(id.clone());
    }
    let id = query(ordinal).map_err(|e| format!("cannot identify GPU {ordinal}: {e}"))?;
    known.lock().unwrap_or_else(|p| p.into_inner()).insert(ordinal, id.clone());
    Ok(id)
}

/// The last `dlerror()` message, or a fallback.
fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated thread-local string valid until the next dl* call
    // on this thread; it is copied out at once.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

/// Opens a shared library for the rest of the process (never closed: ONNX Runtime's providers use the
/// same library, and unloading the CUDA driver after `cuInit` is not supported).
fn open(name: &CStr) -> Result<*mut c_void, String> {
    // SAFETY: `name` is a NUL-terminated string; dlopen has no other preconditions.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(format!("{} could not be loaded ({})", name.to_string_lossy(), dl_error()));
    }
    Ok(handle)
}

/// The address of `symbol` in `handle`, as a function pointer of type `F`.
///
/// # Safety
/// `F` must be the C signature of `symbol` (a function pointer type).
unsafe fn symbol<F: Copy>(handle: *mut c_void, lib: &CStr, symbol: &CStr) -> Result<F, String> {
    // SAFETY: `handle` came from a successful dlopen and is never closed; `symbol` is NUL-terminated.
    let p = unsafe { libc::dlsym(handle, symbol.as_ptr()) };
    if p.is_null() {
        return Err(format!("{} has no symbol {} ({})", lib.to_string_lossy(), symbol.to_string_lossy(), dl_error()));
    }
    debug_assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: `p` is the non-null address of `symbol`, whose C signature is `F` (the caller's promise);
    // function and data pointers have the same size and representation on the platforms CUDA supports.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
}

fn query(ordinal: i32) -> Result<GpuIdentity, String> {
    let lib = open(LIBCUDA)?;
    // SAFETY (all four): the types are the CUDA driver API's documented C signatures (cuda.h):
    // CUresult cuInit(unsigned), cuDeviceGet(CUdevice*, int), cuDeviceGetName(char*, int, CUdevice),
    // cuDeviceGetAttribute(int*, CUdevice_attribute, CUdevice), cuGetErrorString(CUresult, const char**),
    // where CUresult, CUdevice and CUdevice_attribute are C ints.
    let (init, get, get_name, get_attribute, error_string) = unsafe {
        (
            symbol::<CuInit>(lib, LIBCUDA, c"cuInit")?,
            symbol::<CuDeviceGet>(lib, LIBCUDA, c"cuDeviceGet")?,
            symbol::<CuDeviceGetName>(lib, LIBCUDA, c"cuDeviceGetName")?,
            symbol::<CuDeviceGetAttribute>(lib, LIBCUDA, c"cuDeviceGetAttribute")?,
            symbol::<CuGetErrorString>(lib, LIBCUDA, c"cuGetErrorString")?,
        )
    };
    let check = |call: &str, r: CuResult| -> Result<(), String> {
        if r == 0 {
            return Ok(());
        }
        let mut text: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorString writes a pointer to a static NUL-terminated string (or leaves it
        // NULL for an unknown code); it is copied out at once.
        let text = unsafe {
            if error_string(r, &mut text) == 0 && !text.is_null() {
                CStr::from_ptr(text).to_string_lossy().into_owned()
            } else {
                "unknown error".into()
            }
        };
        Err(format!("{call} failed with CUDA error {r} ({text})"))
    };
    // SAFETY: cuInit takes flags (must be 0) and may be called any number of times.
    check("cuInit", unsafe { init(0) })?;
    let mut device: c_int = 0;
    // SAFETY: `device` is a valid out-pointer; the driver checks the ordinal.
    check(&format!("cuDeviceGet({ordinal})"), unsafe { get(&mut device, ordinal) })?;
    let mut name = [0 as c_char; 256];
    // SAFETY: `name` holds 256 chars and that length is passed; the driver NUL-terminates within it.
    check("cuDeviceGetName", unsafe { get_name(name.as_mut_ptr(), name.len() as c_int, device) })?;
    name[name.len() - 1] = 0;
    // SAFETY: `name` is NUL-terminated (forced just above).
    let name = unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy().trim().to_string();
    let mut major: c_int = 0;
    let mut minor: c_int = 0;
    // SAFETY: `major`/`minor` are valid out-pointers; `device` came from cuDeviceGet.
    check("cuDeviceGetAttribute(major)", unsafe {
        get_attribute(&mut major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)
    })?;
    // SAFETY: as above.
    check("cuDeviceGetAttribute(minor)", unsafe {
        get_attribute(&mut minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)
    })?;
    Ok(GpuIdentity { name, compute_capability: (major, minor), tensorrt_version: tensorrt_version() })
}

/// The TensorRT library's version, if one of [`LIBNVINFER`] loads.
fn tensorrt_version() -> Option<i32> {
    LIBNVINFER.iter().find_map(|lib| {
        let handle = open(lib).ok()?;
        // SAFETY: TensorRT's NvInferRuntime.h declares `extern "C" int32_t getInferLibVersion() noexcept`.
        let version = unsafe { symbol::<GetInferLibVersion>(handle, lib, c"getInferLibVersion") }.ok()?;
        // SAFETY: the function takes no arguments and only returns a constant.
        Some(unsafe { version() })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_is_identified_or_the_reason_is_given() {
        match identify(0) {
            Ok(id) => {
                assert!(!id.name.is_empty());
                assert!(id.compute_capability.0 >= 3, "{id:?}");
                assert_eq!(identify(0), Ok(id));
            }
            Err(e) => assert!(
                e.starts_with("cannot identify GPU 0: libcuda.so.1 could not be loaded (")
                    || e.starts_with("cannot identify GPU 0: cuInit failed with CUDA error "),
                "{e}"
            ),
        }
        let e = identify(4096).unwrap_err();
        assert!(e.starts_with("cannot identify GPU 4096: "), "{e}");
    }

    #[test]
    fn the_description_names_everything_the_key_depends_on() {
        let id = GpuIdentity { name: "NVIDIA H200".into(), compute_capability: (9, 0), tensorrt_version: Some(100300) };
        assert_eq!(id.describe(), "NVIDIA H200 (compute capability 9.0, TensorRT library version 100300)");
        let id = GpuIdentity { tensorrt_version: None, ..id };
        assert_eq!(id.describe(), "NVIDIA H200 (compute capability 9.0, TensorRT library version unknown)");
    }
}
