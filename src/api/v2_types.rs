//! Open Inference Protocol (KServe v2) datatype strings, shared by the v2 gRPC and REST front ends.
use crate::tensor::DType;

/// The v2 datatype string for a core dtype (`FP32`, `INT64`, `BYTES`, ...).
pub fn dtype_to_v2(d: DType) -> &'static str {
    match d {
        DType::F32 => "FP32",
        DType::F64 => "FP64",
        DType::F16 => "FP16",
        DType::BF16 => "BF16",
        DType::I8 => "INT8",
        DType::I16 => "INT16",
        DType::I32 => "INT32",
        DType::I64 => "INT64",
        DType::U8 => "UINT8",
        DType::U16 => "UINT16",
        DType::U32 => "UINT32",
        DType::U64 => "UINT64",
        DType::Bool => "BOOL",
        DType::String => "BYTES",
    }
}

/// The core dtype for a v2 datatype string.
pub fn dtype_from_v2(s: &str) -> Option<DType> {
    DType::ALL.into_iter().find(|&d| dtype_to_v2(d) == s)
}

/// Every v2 datatype string maas accepts, for error messages.
pub fn supported_v2() -> String {
    DType::ALL.iter().map(|&d| dtype_to_v2(d)).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for d in DType::ALL {
            assert_eq!(dtype_from_v2(dtype_to_v2(d)), Some(d));
        }
        assert_eq!(dtype_from_v2("FP8"), None);
    }
}
