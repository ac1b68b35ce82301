//! The per-request bound on decoded tensors (`--max-tensor-bytes`). Every front end charges each
//! input's size, computed from the shape the client claims, to one [`Budget`] per request *before*
//! anything for that input is allocated; a request over the limit is refused with
//! [`Error::TooLarge`] (RESOURCE_EXHAUSTED / HTTP 413) naming the input, its shape, its size and the
//! limit.
use super::{fmt_shape, DType};
use crate::error::Error;
use bytes::Bytes;
use std::fmt::Display;

/// What one string element costs besides its bytes: its handle in memory (and ONNX Runtime's
/// `std::string` is as large again), so that a count claim of empty strings is bounded too.
pub const STRING_ELEMENT_BYTES: usize = std::mem::size_of::<Bytes>();

/// Which input of which model a conversion is for, to name it in messages.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// `model 'm' version 1`
    pub ctx: &'a str,
    pub name: &'a str,
}

impl Input<'_> {
    /// INVALID_ARGUMENT: "<ctx>: input '<name>': <msg>".
    pub fn invalid(&self, msg: impl Display) -> Error {
        Error::InvalidArgument(format!("{}: input '{}': {msg}", self.ctx, self.name))
    }

    /// RESOURCE_EXHAUSTED / 413: "<ctx>: input '<name>': <msg>".
    pub fn too_large(&self, msg: impl Display) -> Error {
        Error::TooLarge(format!("{}: input '{}': {msg}", self.ctx, self.name))
    }
}

/// The bytes one request's decoded inputs may take, all inputs together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    limit: usize,
    used: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget { limit, used: 0 }
    }

    /// No limit (benchmarks, tools).
    pub fn unlimited() -> Budget {
        Budget::new(usize::MAX)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes charged so far.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Charges `bytes` for `input` (a tensor of `dtype` and `shape`), or refuses it when the request
    /// would go over the limit. `bytes` saturates at `u128::MAX` for shapes beyond any machine.
    pub fn charge(&mut self, input: Input<'_>, dtype: DType, shape: &[i64], bytes: u128) -> Result<(), Error> {
        let total = bytes.saturating_add(self.used as u128);
        if total <= self.limit as u128 {
            // total <= limit <= usize::MAX
            self.used = usize::try_from(total).unwrap_or(usize::MAX);
            return Ok(());
        }
        let needs = if bytes == u128::MAX { "more than 2^128".to_string() } else { bytes.to_string() };
        let what = match dtype {
            DType::String => format!("string ({STRING_ELEMENT_BYTES} bytes per element plus its bytes)"),
            d => d.name().to_string(),
        };
        let over = if self.used == 0 {
            ", more than".to_string()
        } else {
            format!("; with the {} bytes of the inputs before it that is more than", self.used)
        };
        Err(input.too_large(format!(
            "shape {} of {what} needs {needs} bytes{over} the {} bytes --max-tensor-bytes allows for one request \
             (all inputs together)",
            fmt_shape(shape),
            self.limit
        )))
    }
}

/// The number of elements a shape claims (saturating), or INVALID_ARGUMENT for a negative
/// dimension.
pub fn claimed_elements(input: Input<'_>, shape: &[i64]) -> Result<u128, Error> {
    let mut n: u128 = 1;
    for &d in shape {
        let d = u64::try_from(d).map_err(|_| {
            input.invalid(format!(
                "shape {} has a negative dimension; request tensors need a concrete shape",
                fmt_shape(shape)
            ))
        })?;
        n = n.saturating_mul(u128::from(d));
    }
    Ok(n)
}

/// Bytes of `n` elements of a fixed-width dtype; of `n` strings holding `payload` bytes together.
pub fn tensor_bytes(dtype: DType, n: u128, payload: u128) -> u128 {
    match dtype.size() {
        Some(size) => n.saturating_mul(size as u128),
        None => n.saturating_mul(STRING_ELEMENT_BYTES as u128).saturating_add(payload),
    }
}

/// An empty vector with room for `n` elements, or RESOURCE_EXHAUSTED if the memory cannot be had
/// (never an abort).
pub fn try_vec<T>(input: Input<'_>, n: usize) -> Result<Vec<T>, Error> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        input.too_large(format!("cannot allocate {n} elements of {} bytes for it", std::mem::size_of::<T>()))
    })?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: Input<'static> = Input { ctx: "model 'm' version 1", name: "x" };

    #[test]
    fn charges_and_refuses_with_the_numbers() {
        let mut b = Budget::new(1 << 30);
        let shape = [1_099_511_627_776, 8];
        let n = claimed_elements(X, &shape).unwrap();
        let e = b.charge(X, DType::F32, &shape, tensor_bytes(DType::F32, n, 0)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "model 'm' version 1: input 'x': shape [1099511627776, 8] of float32 needs 35184372088832 bytes, more \
             than the 1073741824 bytes --max-tensor-bytes allows for one request (all inputs together)"
        );
        assert_eq!(e.http_status(), 413);
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert_eq!(b.used(), 0);

        let mut b = Budget::new(100);
        b.charge(X, DType::F32, &[20], 80).unwrap();
        let y = Input { ctx: "model 'm' version 1", name: "y" };
        let e = b.charge(y, DType::F32, &[6], 24).unwrap_err().to_string();
        assert_eq!(
            e,
            "model 'm' version 1: input 'y': shape [6] of float32 needs 24 bytes; with the 80 bytes of the inputs \
             before it that is more than the 100 bytes --max-tensor-bytes allows for one request (all inputs \
             together)"
        );
        b.charge(y, DType::F32, &[5], 20).unwrap();
        assert_eq!(b.used(), 100);
    }

    #[test]
    fn huge_and_negative_shapes() {
        let shape = [i64::MAX, i64::MAX, i64::MAX];
        let n = claimed_elements(X, &shape).unwrap();
        assert_eq!(n, u128::MAX);
        let e = Budget::new(10).charge(X, DType::String, &shape, tensor_bytes(DType::String, n, 0)).unwrap_err();
        assert!(
            e.to_string().contains("of string (32 bytes per element plus its bytes) needs more than 2^128 bytes"),
            "{e}"
        );
        let e = claimed_elements(X, &[2, -1]).unwrap_err().to_string();
        assert_eq!(
            e,
            "model 'm' version 1: input 'x': shape [2, -1] has a negative dimension; request tensors need a concrete \
             shape"
        );
        assert_eq!(claimed_elements(X, &[]).unwrap(), 1);
        assert_eq!(claimed_elements(X, &[0, i64::MAX]).unwrap(), 0);
    }
}
