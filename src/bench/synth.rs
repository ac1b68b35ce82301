//! Benchmark inputs synthesized from a model's input specs, the same for `load` and `inprocess`.
//!
//! A dynamic first dimension becomes `rows`, any other dynamic dimension 1 (`inprocess --seq` sets it). Values are deterministic
//! pseudo-random (SplitMix64 seeded by the input's name): floats uniform in [-1, 1), integers in
//! 0..16 (valid as indices and in range for every integer type), bools 0/1, strings `s<number>`.
use crate::tensor::{element_count, fmt_shape, DType, Tensor, TensorData, TensorSpec};
use bytes::Bytes;

/// The concrete shape used for a spec's shape.
pub fn concrete_shape(shape: &[i64], rows: i64) -> Vec<i64> {
    concrete_shape_with(shape, rows, 1)
}

/// The concrete shape with every dynamic dimension after the first set to `rest`.
pub fn concrete_shape_with(shape: &[i64], rows: i64, rest: i64) -> Vec<i64> {
    shape
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            if d >= 0 {
                d
            } else if i == 0 {
                rows
            } else {
                rest
            }
        })
        .collect()
}

/// One tensor per input spec, in spec order.
pub fn synthesize(specs: &[TensorSpec], rows: i64) -> Result<Vec<(String, Tensor)>, String> {
    synthesize_with(specs, rows, 1)
}

/// [`synthesize`] with every dynamic dimension after the first set to `rest` (`inprocess --seq`).
pub fn synthesize_with(specs: &[TensorSpec], rows: i64, rest: i64) -> Result<Vec<(String, Tensor)>, String> {
    specs.iter().map(|spec| Ok((spec.name.clone(), synthesize_one(spec, rows, rest)?))).collect()
}

fn synthesize_one(spec: &TensorSpec, rows: i64, rest: i64) -> Result<Tensor, String> {
    let shape = concrete_shape_with(&spec.shape, rows, rest);
    let n = element_count(&shape).map_err(|e| format!("input '{}': {e}", spec.name))?;
    let mut rng = SplitMix64::new(&spec.name);
    let mut raw: Vec<u8> = Vec::with_capacity(n.saturating_mul(spec.dtype.size().unwrap_or(0)));
    for _ in 0..n {
        let u = rng.next();
        match spec.dtype {
            DType::F32 => raw.extend_from_slice(&unit_f32(u).to_le_bytes()),
            DType::F64 => raw.extend_from_slice(&unit_f64(u).to_le_bytes()),
            DType::F16 => raw.extend_from_slice(&half::f16::from_f32(unit_f32(u)).to_le_bytes()),
            DType::BF16 => raw.extend_from_slice(&half::bf16::from_f32(unit_f32(u)).to_le_bytes()),
            DType::I8 | DType::U8 => raw.push((u % 16) as u8),
            DType::I16 | DType::U16 => raw.extend_from_slice(&((u % 16) as u16).to_le_bytes()),
            DType::I32 | DType::U32 => raw.extend_from_slice(&((u % 16) as u32).to_le_bytes()),
            DType::I64 | DType::U64 => raw.extend_from_slice(&(u % 16).to_le_bytes()),
            DType::Bool => raw.push((u & 1) as u8),
            DType::String => {}
        }
    }
    let data = match spec.dtype {
        DType::String => TensorData::Strings((0..n).map(|_| Bytes::from(format!("s{}", rng.next() % 1000))).collect()),
        _ => TensorData::Raw(Bytes::from(raw)),
    };
    Tensor::new(spec.dtype, shape.clone(), data)
        .map_err(|e| format!("input '{}' ({} {}): {e}", spec.name, spec.dtype, fmt_shape(&shape)))
}

fn unit_f32(u: u64) -> f32 {
    ((u >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

fn unit_f64(u: u64) -> f64 {
    ((u >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

struct SplitMix64(u64);

impl SplitMix64 {
    /// Seeded with the FNV-1a hash of `name`.
    fn new(name: &str) -> SplitMix64 {
        SplitMix64(name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: DType, shape: &[i64]) -> TensorSpec {
        TensorSpec { name: name.into(), dtype, shape: shape.to_vec() }
    }

    #[test]
    fn shapes_and_values() {
        assert_eq!(concrete_shape(&[-1, 8], 4), vec![4, 8]);
        assert_eq!(concrete_shape(&[2, -1, -1], 4), vec![2, 1, 1]);
        assert_eq!(concrete_shape(&[], 4), Vec::<i64>::new());
        for d in DType::ALL {
            let t = synthesize(&[spec("x", d, &[-1, 3])], 5).unwrap().remove(0).1;
            assert_eq!(t.shape, vec![5, 3], "{d}");
            assert_eq!(t.num_elements(), 15);
        }
        let a = synthesize(&[spec("x", DType::F32, &[-1, 8])], 2).unwrap();
        let b = synthesize(&[spec("x", DType::F32, &[-1, 8])], 2).unwrap();
        assert_eq!(a[0].1, b[0].1, "deterministic");
        let TensorData::Raw(raw) = &a[0].1.data else { panic!() };
        let vals: Vec<f32> = raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert!(vals.iter().all(|v| (-1.0..1.0).contains(v)), "{vals:?}");
        assert!(vals.windows(2).any(|w| w[0] != w[1]), "{vals:?}");
        let c = synthesize(&[spec("other", DType::F32, &[-1, 8])], 2).unwrap();
        assert_ne!(a[0].1, c[0].1, "seeded by name");
        let i = synthesize(&[spec("ids", DType::I64, &[3])], 1).unwrap().remove(0).1;
        let TensorData::Raw(raw) = &i.data else { panic!() };
        assert!(raw.chunks_exact(8).all(|c| u64::from_le_bytes(c.try_into().unwrap()) < 16));
    }
}
