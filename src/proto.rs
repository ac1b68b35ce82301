//! Generated protobuf/gRPC types (our own `proto/` files, wire-compatible with TensorFlow Serving).
#![allow(missing_docs, clippy::all, unreachable_pub)]

/// Encoded `FileDescriptorSet` of every file in `proto/`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/maas_descriptor.bin"));

pub mod tensorflow {
    tonic::include_proto!("tensorflow");

    pub mod error {
        tonic::include_proto!("tensorflow.error");
    }

    pub mod serving {
        tonic::include_proto!("tensorflow.serving");
    }
}

/// KServe v2 / Open Inference Protocol (`inference.GRPCInferenceService`, Triton field numbers).
pub mod inference {
    tonic::include_proto!("inference");
}

/// maas's own messages (per-model settings, `maas.pbtxt`).
pub mod maas {
    tonic::include_proto!("maas");

    /// The ONNX model format (`proto/maas/onnx.proto`), read and written by `maas optimize`.
    pub mod onnx {
        tonic::include_proto!("maas.onnx");
    }

    /// Usage metering (`maas.usage.v1.UsageService`).
    pub mod usage {
        pub mod v1 {
            tonic::include_proto!("maas.usage.v1");
        }
    }
}
