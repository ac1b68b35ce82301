//! maas: a Model-as-a-Service inference server for ONNX models, wire-compatible with TensorFlow Serving.
//!
//! Layout: protocol front ends in [`api`] translate wire messages into the protocol-neutral types of
//! [`tensor`]; the [`manager`] resolves a model/version to a loaded [`runtime::Servable`], which runs
//! ONNX Runtime on a pool of sessions off the async reactor. [`error::Error`] is the one error type,
//! mapped to `tonic::Status` in one place.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod api;
pub mod bench;
pub mod config;
pub mod error;
pub mod logging;
pub mod manager;
pub mod metrics;
pub mod optimize;
pub mod proto;
pub mod repository;
pub mod runtime;
pub mod server;
pub mod status_cli;
pub mod tenancy;
pub mod tensor;
pub mod tls;

pub use config::ServeConfig;
pub use error::Error;
