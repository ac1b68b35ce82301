//! Protocol front ends. Each translates its wire types into the core types of [`crate::tensor`] and
//! back; wire types stop here.
pub mod kserve_grpc;
pub mod rest;
pub mod tf_tensor;
pub mod tfserving;
pub mod v2_tensor;
pub mod v2_types;
