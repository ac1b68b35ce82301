//! Padding for dynamic batching: `pad_values` (the value each input is padded with, cast to the input's
//! dtype) and `trim_outputs` resolved against a version's signature, and what a request costs once
//! padded (checked against `max_tensor_bytes` before it joins a batch, with checked arithmetic: the
//! sizes come from a client's shapes). Merging and cutting the tensors themselves is in `merge.rs`.
use super::settings::BatchingConfig;
use crate::tensor::{fmt_shape, DType, Signature, Tensor, TensorData, TensorSpec};
use bytes::Bytes;

/// `pad_values` and `trim_outputs` of a version, resolved against its signature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Padding {
    /// Per input, in signature order: the element (little-endian bytes of the input's dtype) padding
    /// uses; None = the request's own first element (TF Serving's rule).
    pub fills: Vec<Option<Vec<u8>>>,
    /// (output name, index of the input whose dimension 1 the output's dimension 1 follows).
    pub trims: Vec<(String, usize)>,
}

fn names(specs: &[TensorSpec]) -> String {
    let items: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
    format!("[{}]", items.join(", "))
}

impl Padding {
    /// Checks the settings against the signature: every name known, every pad value representable in
    /// its input's dtype, every trimmed output and its input of rank 2 or more.
    pub fn resolve(cfg: &BatchingConfig, sig: &Signature) -> Result<Padding, String> {
        let mut fills = vec![None; sig.inputs.len()];
        for (name, value) in &cfg.pad_values {
            let Some(at) = sig.inputs.iter().position(|s| &s.name == name) else {
                return Err(format!(
                    "pad_values: '{name}' is not an input of the model; its inputs are {}",
                    names(&sig.inputs)
                ));
            };
            let spec = &sig.inputs[at];
            let bytes = cast_pad_value(value.0, spec.dtype)
                .map_err(|why| format!("pad_values: input '{name}' has dtype {}, {why}", spec.dtype))?;
            fills[at] = Some(bytes);
        }
        let mut trims = Vec::with_capacity(cfg.trim_outputs.len());
        for (output, input) in &cfg.trim_outputs {
            let Some(out) = sig.outputs.iter().find(|s| &s.name == output) else {
                return Err(format!(
                    "trim_outputs: '{output}' is not an output of the model; its outputs are {}",
                    names(&sig.outputs)
                ));
            };
            let Some(at) = sig.inputs.iter().position(|s| &s.name == input) else {
                return Err(format!(
                    "trim_outputs: output '{output}' follows '{input}', which is not an input of the model; its \
                     inputs are {}",
                    names(&sig.inputs)
                ));
            };
            let inp = &sig.inputs[at];
            for (kind, spec) in [("output", out), ("input", inp)] {
                if spec.shape.len() < 2 {
                    return Err(format!(
                        "trim_outputs: {kind} '{}' has shape {}; trimming follows dimension 1, so it needs rank 2 \
                         or more",
                        spec.name,
                        fmt_shape(&spec.shape)
                    ));
                }
            }
            let (o, i) = (out.shape[1], inp.shape[1]);
            if o >= 0 && o != i {
                return Err(format!(
                    "trim_outputs: output '{output}' has a fixed dimension 1 (shape {}), so it cannot follow \
                     dimension 1 of input '{input}' (shape {})",
                    fmt_shape(&out.shape),
                    fmt_shape(&inp.shape)
                ));
            }
            trims.push((output.clone(), at));
        }
        Ok(Padding { fills, trims })
    }

    /// The input whose dimension 1 `output`'s dimension 1 follows, if it is trimmed.
    pub fn trim_of(&self, output: &str) -> Option<usize> {
        self.trims.iter().find(|(o, _)| o == output).map(|&(_, i)| i)
    }
}

/// A double as a person writes it: `300`, `0.5`, `1e300`, `9.223372036854776e18`.
fn fmt_double(v: f64) -> String {
    if v.is_finite() && v != 0.0 && !(1e-4..1e16).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// The element bytes of `v` in `dtype`; Err says why the dtype cannot hold it (the caller names the
/// input and dtype before it).
pub(crate) fn cast_pad_value(v: f64, dtype: DType) -> Result<Vec<u8>, String> {
    let whole = |lo: i128, hi: i128| -> Result<i128, String> {
        // `as i128` saturates, so anything beyond ±2^127 lands outside [lo, hi] too.
        if v.is_finite() && v.fract() == 0.0 && (lo..=hi).contains(&(v as i128)) {
            Ok(v as i128)
        } else {
            Err(format!("which cannot hold {} ({dtype} takes whole numbers from {lo} to {hi})", fmt_double(v)))
        }
    };
    let float = |fits: bool, max: f64| -> Result<(), String> {
        if v.is_finite() && !fits {
            Err(format!("which cannot hold {} (the largest finite {dtype} is {})", fmt_double(v), fmt_double(max)))
        } else {
            Ok(())
        }
    };
    Ok(match dtype {
        DType::F64 => v.to_le_bytes().to_vec(),
        DType::F32 => {
            float((v as f32).is_finite(), f64::from(f32::MAX))?;
            (v as f32).to_le_bytes().to_vec()
        }
        DType::F16 => {
            let h = half::f16::from_f64(v);
            float(h.is_finite(), half::f16::MAX.to_f64())?;
            h.to_le_bytes().to_vec()
        }
        DType::BF16 => {
            let h = half::bf16::from_f64(v);
            float(h.is_finite(), half::bf16::MAX.to_f64())?;
            h.to_le_bytes().to_vec()
        }
        DType::I8 => (whole(i8::MIN.into(), i8::MAX.into())? as i8).to_le_bytes().to_vec(),
        DType::I16 => (whole(i16::MIN.into(), i16::MAX.into())? as i16).to_le_bytes().to_vec(),
        DType::I32 => (whole(i32::MIN.into(), i32::MAX.into())? as i32).to_le_bytes().to_vec(),
        DType::I64 => (whole(i64::MIN.into(), i64::MAX.into())? as i64).to_le_bytes().to_vec(),
        DType::U8 => (whole(0, u8::MAX.into())? as u8).to_le_bytes().to_vec(),
        DType::U16 => (whole(0, u16::MAX.into())? as u16).to_le_bytes().to_vec(),
        DType::U32 => (whole(0, u32::MAX.into())? as u32).to_le_bytes().to_vec(),
        DType::U64 => (whole(0, u64::MAX.into())? as u64).to_le_bytes().to_vec(),
        DType::Bool if v == 0.0 || v == 1.0 => vec![u8::from(v == 1.0)],
        DType::Bool => return Err(format!("which cannot hold {} (bool takes 0 or 1)", fmt_double(v))),
        DType::String => {
            return Err("and pad_values holds numbers; a string input is padded with its first element".into())
        }
    })
}

/// What one input of a request costs padded: its own elements and bytes, and the bytes each padding
/// element adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InputCost {
    rows: usize,
    elems: usize,
    bytes: usize,
    per_pad: usize,
}

impl InputCost {
    /// The cost profile of `t`, padded with `fill` (None = its first element).
    pub fn of(t: &Tensor, fill: Option<&[u8]>) -> InputCost {
        let rows = t.shape.first().map_or(1, |&d| d.max(0) as usize);
        let elems = t.num_elements();
        let (bytes, per_pad) = match &t.data {
            TensorData::Raw(b) => (b.len(), t.dtype.size().unwrap_or(0)),
            TensorData::Strings(s) => {
                // A padded string element is a copy of the fill in ONNX Runtime's string tensor.
                let fill = fill.map(<[u8]>::len).or_else(|| s.first().map(Bytes::len)).unwrap_or(0);
                (s.iter().map(Bytes::len).fold(0usize, usize::saturating_add), fill)
            }
        };
        InputCost { rows, elems, bytes, per_pad }
    }
}

/// Bytes of a request (its inputs' costs) padded to the inner dimensions `dims` (one list per input,
/// each at least the request's own); None when the count overflows.
pub(crate) fn padded_bytes(costs: &[InputCost], dims: &[Vec<i64>]) -> Option<usize> {
    let mut total = 0usize;
    for (c, inner) in costs.iter().zip(dims) {
        let mut elems = c.rows;
        for &d in inner {
            elems = elems.checked_mul(usize::try_from(d).ok()?)?;
        }
        let added = elems.checked_sub(c.elems)?.checked_mul(c.per_pad)?;
        total = total.checked_add(c.bytes)?.checked_add(added)?;
    }
    Some(total)
}

/// The element-wise largest of two lists of inner dimensions.
pub(crate) fn max_dims(a: &[Vec<i64>], b: &[Vec<i64>]) -> Vec<Vec<i64>> {
    a.iter().zip(b).map(|(x, y)| x.iter().zip(y).map(|(&p, &q)| p.max(q)).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::settings::PadValue;

    fn f32s(shape: &[i64], v: &[f32]) -> Tensor {
        Tensor::new(DType::F32, shape.to_vec(), TensorData::Raw(Bytes::copy_from_slice(bytemuck::cast_slice(v))))
            .unwrap()
    }

    fn strings(shape: &[i64], v: &[&str]) -> Tensor {
        let data = TensorData::Strings(v.iter().map(|x| Bytes::copy_from_slice(x.as_bytes())).collect());
        Tensor::new(DType::String, shape.to_vec(), data).unwrap()
    }

    #[test]
    fn pad_values_cast_to_the_dtype() {
        assert_eq!(cast_pad_value(0.0, DType::I64).unwrap(), 0i64.to_le_bytes());
        assert_eq!(cast_pad_value(-1.0, DType::I32).unwrap(), (-1i32).to_le_bytes());
        assert_eq!(cast_pad_value(255.0, DType::U8).unwrap(), [255]);
        assert_eq!(cast_pad_value(-9223372036854775808.0, DType::I64).unwrap(), i64::MIN.to_le_bytes());
        assert_eq!(cast_pad_value(0.5, DType::F32).unwrap(), 0.5f32.to_le_bytes());
        assert_eq!(cast_pad_value(0.1, DType::F64).unwrap(), 0.1f64.to_le_bytes());
        assert_eq!(cast_pad_value(-2.5, DType::F16).unwrap(), half::f16::from_f32(-2.5).to_le_bytes());
        assert_eq!(cast_pad_value(1.0, DType::BF16).unwrap(), half::bf16::ONE.to_le_bytes());
        assert_eq!(cast_pad_value(f64::NEG_INFINITY, DType::F32).unwrap(), f32::NEG_INFINITY.to_le_bytes());
        assert_eq!(cast_pad_value(1.0, DType::Bool).unwrap(), [1]);
        assert_eq!(cast_pad_value(0.0, DType::Bool).unwrap(), [0]);
    }

    #[test]
    fn pad_values_the_dtype_cannot_hold_are_refused() {
        let err = |v: f64, d: DType| cast_pad_value(v, d).unwrap_err();
        assert_eq!(
            err(0.5, DType::I64),
            "which cannot hold 0.5 (int64 takes whole numbers from -9223372036854775808 to 9223372036854775807)"
        );
        assert_eq!(err(300.0, DType::U8), "which cannot hold 300 (uint8 takes whole numbers from 0 to 255)");
        assert_eq!(
            err(-1.0, DType::U64),
            "which cannot hold -1 (uint64 takes whole numbers from 0 to 18446744073709551615)"
        );
        // 2^63 is the first double above i64::MAX.
        assert!(err(9223372036854775808.0, DType::I64).starts_with("which cannot hold 9.223372036854776e18 (int64"));
        assert!(err(1e300, DType::I32).starts_with("which cannot hold 1e300 (int32"));
        assert!(err(f64::NAN, DType::I8).starts_with("which cannot hold NaN (int8"));
        assert_eq!(err(70000.0, DType::F16), "which cannot hold 70000 (the largest finite float16 is 65504)");
        assert_eq!(
            err(1e39, DType::F32),
            "which cannot hold 1e39 (the largest finite float32 is 3.4028234663852886e38)"
        );
        assert_eq!(err(-1e-5, DType::U8), "which cannot hold -1e-5 (uint8 takes whole numbers from 0 to 255)");
        assert_eq!(err(2.0, DType::Bool), "which cannot hold 2 (bool takes 0 or 1)");
        assert!(err(0.0, DType::String).contains("a string input is padded with its first element"));
    }

    fn spec(name: &str, dtype: DType, shape: &[i64]) -> TensorSpec {
        TensorSpec { name: name.into(), dtype, shape: shape.to_vec() }
    }

    fn bert() -> Signature {
        Signature {
            inputs: vec![spec("input_ids", DType::I64, &[-1, -1]), spec("attention_mask", DType::I64, &[-1, -1])],
            outputs: vec![
                spec("last_hidden_state", DType::F32, &[-1, -1, 384]),
                spec("pooled", DType::F32, &[-1, 384]),
                spec("scores", DType::F32, &[-1]),
            ],
        }
    }

    fn settings(pads: &[(&str, f64)], trims: &[(&str, &str)]) -> BatchingConfig {
        BatchingConfig {
            pad_values: pads.iter().map(|&(k, v)| (k.to_string(), PadValue(v))).collect(),
            trim_outputs: trims.iter().map(|&(k, v)| (k.to_string(), v.to_string())).collect(),
            ..BatchingConfig::default()
        }
    }

    #[test]
    fn padding_settings_resolve_against_the_signature() {
        let p = Padding::resolve(
            &settings(&[("attention_mask", 0.0), ("input_ids", 0.0)], &[("last_hidden_state", "input_ids")]),
            &bert(),
        )
        .unwrap();
        assert_eq!(p.fills, vec![Some(vec![0; 8]), Some(vec![0; 8])]);
        assert_eq!(p.trims, vec![("last_hidden_state".to_string(), 0)]);
        assert_eq!(p.trim_of("last_hidden_state"), Some(0));
        assert_eq!(p.trim_of("pooled"), None);
        // Inputs without an entry keep the first-element rule.
        let p = Padding::resolve(&settings(&[("attention_mask", 0.0)], &[]), &bert()).unwrap();
        assert_eq!(p.fills, vec![None, Some(vec![0; 8])]);
        assert_eq!(Padding::resolve(&BatchingConfig::default(), &bert()).unwrap().fills, vec![None, None]);
    }

    #[test]
    fn padding_settings_that_do_not_fit_the_signature_are_load_errors() {
        let err = |pads: &[(&str, f64)], trims: &[(&str, &str)]| {
            Padding::resolve(&settings(pads, trims), &bert()).unwrap_err()
        };
        assert_eq!(
            err(&[("input_ids", 0.5)], &[]),
            "pad_values: input 'input_ids' has dtype int64, which cannot hold 0.5 (int64 takes whole numbers from \
             -9223372036854775808 to 9223372036854775807)"
        );
        assert_eq!(
            err(&[("token_type_ids", 0.0)], &[]),
            "pad_values: 'token_type_ids' is not an input of the model; its inputs are ['input_ids' (int64 [-1, -1]), \
             'attention_mask' (int64 [-1, -1])]"
        );
        assert_eq!(
            err(&[], &[("hidden", "input_ids")]),
            "trim_outputs: 'hidden' is not an output of the model; its outputs are ['last_hidden_state' (float32 \
             [-1, -1, 384]), 'pooled' (float32 [-1, 384]), 'scores' (float32 [-1])]"
        );
        assert_eq!(
            err(&[], &[("last_hidden_state", "ids")]),
            "trim_outputs: output 'last_hidden_state' follows 'ids', which is not an input of the model; its inputs \
             are ['input_ids' (int64 [-1, -1]), 'attention_mask' (int64 [-1, -1])]"
        );
        assert_eq!(
            err(&[], &[("pooled", "input_ids")]),
            "trim_outputs: output 'pooled' has a fixed dimension 1 (shape [-1, 384]), so it cannot follow dimension 1 \
             of input 'input_ids' (shape [-1, -1])"
        );
        assert_eq!(
            err(&[], &[("scores", "input_ids")]),
            "trim_outputs: output 'scores' has shape [-1]; trimming follows dimension 1, so it needs rank 2 or more"
        );
    }

    #[test]
    fn padded_sizes_are_counted_with_checked_arithmetic() {
        let a = f32s(&[1, 1, 3], &[0.; 3]);
        let b = f32s(&[2, 2, 1], &[0.; 4]);
        let (ca, cb) = (InputCost::of(&a, None), InputCost::of(&b, None));
        let dims = max_dims(&[vec![1, 3]], &[vec![2, 1]]);
        assert_eq!(dims, vec![vec![2, 3]]);
        assert_eq!(padded_bytes(&[ca], &[vec![1, 3]]), Some(12), "unpadded: its own size");
        assert_eq!(padded_bytes(&[ca], &dims), Some(24));
        assert_eq!(padded_bytes(&[cb], &dims), Some(48));
        // The example: [1, 1, 100000] and [1, 100000, 1] float32 pad each other to
        // [1, 100000, 100000], 40 GB each.
        let empty = |shape: &[i64]| {
            let n = shape.iter().product::<i64>() as usize;
            Tensor::new(DType::F32, shape.to_vec(), TensorData::Raw(Bytes::from(vec![0u8; n * 4]))).unwrap()
        };
        let (x, y) = (empty(&[1, 1, 100_000]), empty(&[1, 100_000, 1]));
        let dims = max_dims(&[x.shape[1..].to_vec()], &[y.shape[1..].to_vec()]);
        assert_eq!(dims, vec![vec![100_000, 100_000]]);
        assert_eq!(padded_bytes(&[InputCost::of(&x, None)], &dims), Some(40_000_000_000));
        assert!(padded_bytes(&[InputCost::of(&y, None)], &dims).unwrap() > 1 << 30);
        // Counts that overflow are None (the batcher treats them as over any limit).
        assert_eq!(padded_bytes(&[InputCost::of(&x, None)], &[vec![1 << 40, 1 << 40]]), None);
        // Several inputs add up; strings count their bytes plus the fill's per padded element.
        let s = strings(&[1, 2], &["abc", "de"]);
        let cs = InputCost::of(&s, None);
        assert_eq!(padded_bytes(&[cs], &[vec![2]]), Some(5));
        assert_eq!(padded_bytes(&[cs], &[vec![4]]), Some(11));
        assert_eq!(padded_bytes(&[ca, cs], &[vec![1, 3], vec![4]]), Some(23));
    }
}
