//! Per-model TensorRT options (`tensorrt { ... }` in `maas.pbtxt`): validated, turned into ONNX
//! Runtime's `trt_*` provider options, and the shapes the warmup runs at.
use crate::proto::maas::TensorRtSettings;
use crate::tensor::Signature;

/// Input name and dimensions, in the order given.
pub type Shapes = Vec<(String, Vec<i64>)>;

/// TensorRT's optimization profile for dynamic dimensions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub min: Shapes,
    pub opt: Shapes,
    pub max: Shapes,
}

/// Validated TensorRT build options of one model (all default = ONNX Runtime's defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrtOptions {
    pub fp16: bool,
    pub int8: bool,
    /// Bytes TensorRT may use while building (None = ONNX Runtime's default).
    pub max_workspace_size: Option<usize>,
    pub profile: Option<Profile>,
}

/// Parses one profile field in ONNX Runtime's syntax, `name:1x16,other:1x16x8`.
pub fn parse_shapes(field: &str, text: &str) -> Result<Shapes, String> {
    let mut out: Shapes = Vec::new();
    if text.trim().is_empty() {
        return Ok(out);
    }
    for entry in text.split(',') {
        let entry = entry.trim();
        let (name, dims) = entry
            .rsplit_once(':')
            .ok_or_else(|| format!("{field}: entry '{entry}' is not of the form name:dims (e.g. input_ids:1x16)"))?;
        let name = name.trim();
        if name.is_empty() || name.contains('\0') {
            return Err(format!("{field}: entry '{entry}' has no valid input name"));
        }
        let dims = dims
            .split('x')
            .map(|d| match d.trim().parse::<i64>() {
                Ok(n) if n >= 0 => Ok(n),
                _ => Err(format!(
                    "{field}: input '{name}' has dimension '{d}' in '{entry}'; dimensions are non-negative integers \
                     separated by 'x'"
                )),
            })
            .collect::<Result<Vec<i64>, String>>()?;
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("{field}: input '{name}' is given twice"));
        }
        out.push((name.to_string(), dims));
    }
    Ok(out)
}

/// ONNX Runtime's text for `shapes`.
pub fn format_shapes(shapes: &Shapes) -> String {
    let dims = |d: &[i64]| d.iter().map(i64::to_string).collect::<Vec<_>>().join("x");
    shapes.iter().map(|(n, d)| format!("{n}:{}", dims(d))).collect::<Vec<_>>().join(",")
}

impl Profile {
    fn parse(p: &TensorRtSettings) -> Result<Option<Profile>, String> {
        let min = parse_shapes("profile_min_shapes", &p.profile_min_shapes)?;
        let opt = parse_shapes("profile_opt_shapes", &p.profile_opt_shapes)?;
        let max = parse_shapes("profile_max_shapes", &p.profile_max_shapes)?;
        match (min.is_empty(), opt.is_empty(), max.is_empty()) {
            (true, true, true) => return Ok(None),
            (false, false, false) => {}
            _ => {
                return Err(
                    "profile_min_shapes, profile_opt_shapes and profile_max_shapes must be given together".into()
                )
            }
        }
        for (name, lo) in &min {
            let find = |set: &Shapes, field: &str| {
                set.iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, d)| d.clone())
                    .ok_or_else(|| format!("input '{name}' is in profile_min_shapes but not in {field}"))
            };
            let (mid, hi) = (find(&opt, "profile_opt_shapes")?, find(&max, "profile_max_shapes")?);
            if lo.len() != mid.len() || lo.len() != hi.len() {
                return Err(format!(
                    "input '{name}' has {} dimensions in profile_min_shapes, {} in profile_opt_shapes and {} in \
                     profile_max_shapes",
                    lo.len(),
                    mid.len(),
                    hi.len()
                ));
            }
            if lo.iter().zip(&mid).zip(&hi).any(|((a, b), c)| a > b || b > c) {
                return Err(format!(
                    "input '{name}': the profile needs min <= opt <= max in every dimension, got min {lo:?}, \
                     opt {mid:?}, max {hi:?}"
                ));
            }
        }
        for (set, field) in [(&opt, "profile_opt_shapes"), (&max, "profile_max_shapes")] {
            if let Some((name, _)) = set.iter().find(|(n, _)| !min.iter().any(|(m, _)| m == n)) {
                return Err(format!("input '{name}' is in {field} but not in profile_min_shapes"));
            }
        }
        Ok(Some(Profile { min, opt, max }))
    }
}

impl TrtOptions {
    /// Validates the `tensorrt` block of `maas.pbtxt`.
    pub fn from_proto(p: &TensorRtSettings) -> Result<TrtOptions, String> {
        let max_workspace_size = match p.max_workspace_size {
            None => None,
            Some(n) if n > 0 => {
                Some(usize::try_from(n).map_err(|_| format!("max_workspace_size {n} is too large for this machine"))?)
            }
            Some(n) => return Err(format!("max_workspace_size must be positive, got {n}")),
        };
        Ok(TrtOptions { fp16: p.fp16, int8: p.int8, max_workspace_size, profile: Profile::parse(p)? })
    }

    /// The ONNX Runtime provider options these stand for (key, value), in a fixed order: what the engine
    /// cache key hashes and what is registered.
    pub fn provider_options(&self) -> Vec<(&'static str, String)> {
        // as ort's builder writes them (and ONNX Runtime reads them)
        let flag = |b: bool| b.to_string();
        let mut out = vec![("trt_fp16_enable", flag(self.fp16)), ("trt_int8_enable", flag(self.int8))];
        if let Some(n) = self.max_workspace_size {
            out.push(("trt_max_workspace_size", n.to_string()));
        }
        if let Some(p) = &self.profile {
            out.push(("trt_profile_min_shapes", format_shapes(&p.min)));
            out.push(("trt_profile_opt_shapes", format_shapes(&p.opt)));
            out.push(("trt_profile_max_shapes", format_shapes(&p.max)));
        }
        out
    }
}

/// The shapes a TensorRT warmup runs at: one round at the profile's opt shapes, then one at its max
/// shapes (if they differ). Inputs the profile does not name keep their fixed dimensions, with 1 for
/// dynamic ones. None when there is no profile; an error when the profile contradicts the signature
/// (an unknown input, another rank, or another size for a fixed dimension).
pub fn profile_warmup_shapes(opts: &TrtOptions, signature: &Signature) -> Option<Result<Vec<Shapes>, String>> {
    let profile = opts.profile.as_ref()?;
    let round = |set: &Shapes, field: &str| -> Result<Shapes, String> {
        if let Some((name, _)) = set.iter().find(|(n, _)| !signature.inputs.iter().any(|s| &s.name == n)) {
            return Err(format!("{field} names input '{name}', which the model does not have"));
        }
        signature
            .inputs
            .iter()
            .map(|spec| {
                let given = set.iter().find(|(n, _)| n == &spec.name).map(|(_, d)| d);
                let dims = match given {
                    None => spec.shape.iter().map(|&d| if d < 0 { 1 } else { d }).collect(),
                    Some(d) => {
                        let fits =
                            d.len() == spec.shape.len() && d.iter().zip(&spec.shape).all(|(&g, &m)| m < 0 || g == m);
                        if !fits {
                            return Err(format!(
                                "{field} gives input '{}' the shape {d:?}, but the model's input is {:?} (-1 = any)",
                                spec.name, spec.shape
                            ));
                        }
                        d.clone()
                    }
                };
                Ok((spec.name.clone(), dims))
            })
            .collect()
    };
    Some((|| {
        let opt = round(&profile.opt, "profile_opt_shapes")?;
        let max = round(&profile.max, "profile_max_shapes")?;
        Ok(if opt == max { vec![opt] } else { vec![opt, max] })
    })())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{DType, TensorSpec};

    fn settings(min: &str, opt: &str, max: &str) -> TensorRtSettings {
        TensorRtSettings {
            profile_min_shapes: min.into(),
            profile_opt_shapes: opt.into(),
            profile_max_shapes: max.into(),
            ..Default::default()
        }
    }

    #[test]
    fn shapes_parse_in_onnx_runtime_syntax() {
        assert_eq!(
            parse_shapes("f", "input_ids:1x16, attention_mask : 1x16 ,scope:name:4").unwrap(),
            vec![
                ("input_ids".to_string(), vec![1, 16]),
                ("attention_mask".to_string(), vec![1, 16]),
                ("scope:name".to_string(), vec![4])
            ]
        );
        assert_eq!(parse_shapes("f", "  ").unwrap(), vec![]);
        assert_eq!(
            parse_shapes("f", "x:1x-2").unwrap_err(),
            "f: input 'x' has dimension '-2' in 'x:1x-2'; dimensions are non-negative integers separated by 'x'"
        );
        assert_eq!(
            parse_shapes("f", "x").unwrap_err(),
            "f: entry 'x' is not of the form name:dims (e.g. input_ids:1x16)"
        );
        assert_eq!(parse_shapes("f", ":3").unwrap_err(), "f: entry ':3' has no valid input name");
        assert_eq!(parse_shapes("f", "x\0y:3").unwrap_err(), "f: entry 'x\0y:3' has no valid input name");
        assert_eq!(parse_shapes("f", "x:1,x:2").unwrap_err(), "f: input 'x' is given twice");
        assert_eq!(format_shapes(&parse_shapes("f", "a:1x16,b:2").unwrap()), "a:1x16,b:2");
    }

    #[test]
    fn options_are_validated() {
        let p =
            TensorRtSettings { fp16: true, max_workspace_size: Some(1 << 30), ..settings("a:1x1", "a:1x8", "a:4x64") };
        let o = TrtOptions::from_proto(&p).unwrap();
        assert_eq!(
            o.provider_options(),
            vec![
                ("trt_fp16_enable", "true".to_string()),
                ("trt_int8_enable", "false".to_string()),
                ("trt_max_workspace_size", (1usize << 30).to_string()),
                ("trt_profile_min_shapes", "a:1x1".to_string()),
                ("trt_profile_opt_shapes", "a:1x8".to_string()),
                ("trt_profile_max_shapes", "a:4x64".to_string()),
            ]
        );
        assert_eq!(TrtOptions::from_proto(&TensorRtSettings::default()).unwrap(), TrtOptions::default());
        let err = |p: TensorRtSettings| TrtOptions::from_proto(&p).unwrap_err();
        assert_eq!(
            err(TensorRtSettings { max_workspace_size: Some(0), ..Default::default() }),
            "max_workspace_size must be positive, got 0"
        );
        assert_eq!(
            err(settings("a:1", "", "a:2")),
            "profile_min_shapes, profile_opt_shapes and profile_max_shapes must be given together"
        );
        assert_eq!(
            err(settings("a:1", "a:2", "b:2")),
            "input 'a' is in profile_min_shapes but not in profile_max_shapes"
        );
        assert_eq!(
            err(settings("a:1", "a:2,b:1", "a:2")),
            "input 'b' is in profile_opt_shapes but not in profile_min_shapes"
        );
        assert_eq!(
            err(settings("a:1", "a:2x2", "a:2")),
            "input 'a' has 1 dimensions in profile_min_shapes, 2 in profile_opt_shapes and 1 in profile_max_shapes"
        );
        assert_eq!(
            err(settings("a:1x8", "a:2x4", "a:4x16")),
            "input 'a': the profile needs min <= opt <= max in every dimension, got min [1, 8], opt [2, 4], max [4, 16]"
        );
    }

    fn signature() -> Signature {
        let spec = |name: &str, shape: Vec<i64>| TensorSpec { name: name.into(), dtype: DType::I64, shape };
        Signature {
            inputs: vec![spec("input_ids", vec![-1, -1]), spec("attention_mask", vec![-1, -1]), spec("k", vec![-1, 3])],
            outputs: vec![],
        }
    }

    #[test]
    fn warmup_runs_at_the_opt_then_the_max_shapes() {
        assert!(profile_warmup_shapes(&TrtOptions::default(), &signature()).is_none());
        let o = TrtOptions::from_proto(&settings(
            "input_ids:1x1,attention_mask:1x1",
            "input_ids:4x16,attention_mask:4x16",
            "input_ids:8x128,attention_mask:8x128",
        ))
        .unwrap();
        let rounds = profile_warmup_shapes(&o, &signature()).unwrap().unwrap();
        let s = |v: &[(&str, Vec<i64>)]| v.iter().map(|(n, d)| (n.to_string(), d.clone())).collect::<Shapes>();
        assert_eq!(
            rounds,
            vec![
                s(&[("input_ids", vec![4, 16]), ("attention_mask", vec![4, 16]), ("k", vec![1, 3])]),
                s(&[("input_ids", vec![8, 128]), ("attention_mask", vec![8, 128]), ("k", vec![1, 3])]),
            ]
        );
        // opt == max: one round
        let o = TrtOptions::from_proto(&settings("k:1x3", "k:2x3", "k:2x3")).unwrap();
        let rounds = profile_warmup_shapes(&o, &signature()).unwrap().unwrap();
        assert_eq!(rounds, vec![s(&[("input_ids", vec![1, 1]), ("attention_mask", vec![1, 1]), ("k", vec![2, 3])])]);
    }

    #[test]
    fn a_profile_that_contradicts_the_model_is_an_error() {
        let err = |min: &str, opt: &str, max: &str| {
            let o = TrtOptions::from_proto(&settings(min, opt, max)).unwrap();
            profile_warmup_shapes(&o, &signature()).unwrap().unwrap_err()
        };
        assert_eq!(err("x:1", "x:1", "x:1"), "profile_opt_shapes names input 'x', which the model does not have");
        assert_eq!(
            err("k:1x3", "k:1x3", "k:1x4"),
            "profile_max_shapes gives input 'k' the shape [1, 4], but the model's input is [-1, 3] (-1 = any)"
        );
        assert_eq!(
            err("k:1", "k:1", "k:1"),
            "profile_opt_shapes gives input 'k' the shape [1], but the model's input is [-1, 3] (-1 = any)"
        );
    }
}
