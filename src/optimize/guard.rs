//! The accuracy guard: the source and the candidate, each loaded in a fresh ONNX Runtime session from
//! its file on disk (never from memory), run on the same samples; every output compared.
//!
//! - Float outputs: cosine similarity per row (a row = one item of the batch, all its values
//!   flattened); the minimum over all rows must reach `min_cosine`. The mean, the largest absolute
//!   difference and that difference relative to the largest |source value| are information, as is
//!   argmax agreement for a `[batch, classes]` output.
//! - Integer, bool and string outputs: equal element for element.
//! - Shapes must match, and a non-finite value in one model where the other has a different value
//!   refuses the candidate.
use super::inputs::Feed;
use crate::runtime::{from_output, session_builder, signature_of, to_input};
use crate::tensor::{DType, Signature, Tensor, TensorData};
use ort::environment::Environment;
use ort::session::{Session, SessionInputValue};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// What the guard measured for one output.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct OutputMetrics {
    /// `float` (judged by cosine) or `exact`.
    pub kind: &'static str,
    pub dtype: String,
    pub rows: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_cosine: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_cosine: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_abs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rel: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argmax_agreement: Option<f64>,
    /// Exact outputs: elements that differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatches: Option<u64>,
    pub pass: bool,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The guard's verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GuardReport {
    pub min_cosine: f64,
    pub samples: usize,
    pub outputs: BTreeMap<String, OutputMetrics>,
    /// `pass` or `refuse`.
    pub verdict: &'static str,
    /// Why it was refused (one line per problem).
    pub reasons: Vec<String>,
}

impl GuardReport {
    pub fn passed(&self) -> bool {
        self.verdict == "pass"
    }
}

/// Accumulates the comparison of one float output over all samples.
#[derive(Default)]
struct FloatAcc {
    rows: u64,
    min: f64,
    sum: f64,
    worst_row: u64,
    max_abs: f64,
    max_src: f64,
    argmax_rows: u64,
    argmax_same: u64,
    nonfinite: u64,
}

/// Loads `path` the way the server does (graph optimization All), in a fresh session.
pub fn load_session(env: &Environment, path: &Path, intra: usize) -> Result<Session, String> {
    session_builder(env, intra, 1)?
        .commit_from_file(path)
        .map_err(|e| format!("ONNX Runtime could not load {}: {e}", path.display()))
}

/// Runs both models on every sample (made by `samples` from the source's signature) and judges the
/// candidate. `Err` only when the source (or the inputs) cannot run; a candidate that fails to load or
/// run is refused.
pub fn run<S: AsRef<[Feed]>>(
    env: &Environment,
    source: &Path,
    candidate: &Path,
    samples: impl FnOnce(&Signature) -> Result<S, String>,
    min_cosine: f64,
    intra: usize,
) -> Result<(GuardReport, S), String> {
    let mut src = load_session(env, source, intra)?;
    let src_sig = signature_of(&src)?;
    let made = samples(&src_sig)?;
    let report = judge(&mut src, &src_sig, env, candidate, made.as_ref(), min_cosine, intra)?;
    Ok((report, made))
}

fn judge(
    src: &mut Session,
    src_sig: &Signature,
    env: &Environment,
    candidate: &Path,
    feeds: &[Feed],
    min_cosine: f64,
    intra: usize,
) -> Result<GuardReport, String> {
    let mut report = GuardReport {
        min_cosine,
        samples: feeds.len(),
        outputs: BTreeMap::new(),
        verdict: "refuse",
        reasons: Vec::new(),
    };
    let mut cand = match load_session(env, candidate, intra) {
        Ok(s) => s,
        Err(e) => {
            report.reasons.push(format!("the candidate does not load: {e}"));
            return Ok(report);
        }
    };
    let cand_sig = signature_of(&cand)?;
    if let Some(why) = signature_difference(src_sig, &cand_sig) {
        report.reasons.push(why);
        return Ok(report);
    }
    let mut floats: BTreeMap<String, FloatAcc> = BTreeMap::new();
    for spec in &src_sig.outputs {
        let kind = if is_float(spec.dtype) { "float" } else { "exact" };
        report.outputs.insert(
            spec.name.clone(),
            OutputMetrics { kind, dtype: spec.dtype.to_string(), pass: true, ..OutputMetrics::default() },
        );
        if is_float(spec.dtype) {
            floats.insert(spec.name.clone(), FloatAcc { min: f64::INFINITY, ..FloatAcc::default() });
        } else {
            if let Some(m) = report.outputs.get_mut(&spec.name) {
                m.mismatches = Some(0);
            }
        }
    }
    for (i, feed) in feeds.iter().enumerate() {
        let a =
            run_feed(src, feed, src_sig).map_err(|e| format!("the source failed on guard sample {}: {e}", i + 1))?;
        let b = match run_feed(&mut cand, feed, src_sig) {
            Ok(b) => b,
            Err(e) => {
                report.reasons.push(format!("the candidate failed on guard sample {}: {e}", i + 1));
                return Ok(report);
            }
        };
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            let m = report.outputs.get_mut(name).ok_or("internal error: unknown output")?;
            if !m.pass {
                continue;
            }
            if x.shape != y.shape {
                m.pass = false;
                m.problem = Some(format!(
                    "shape {:?} from the source, {:?} from the candidate (sample {})",
                    x.shape,
                    y.shape,
                    i + 1
                ));
                continue;
            }
            match floats.get_mut(name) {
                Some(acc) => compare_floats(acc, x, y)?,
                None => {
                    let n = count_mismatches(x, y);
                    m.rows += x.shape.first().copied().unwrap_or(1).max(0) as u64;
                    *m.mismatches.get_or_insert(0) += n;
                }
            }
        }
    }
    for (name, m) in &mut report.outputs {
        if let Some(acc) = floats.get(name) {
            m.rows = acc.rows;
            if acc.rows > 0 {
                m.min_cosine = Some(acc.min);
                m.mean_cosine = Some(acc.sum / acc.rows as f64);
            }
            m.max_abs = Some(acc.max_abs);
            m.max_rel = Some(if acc.max_src > 0.0 { acc.max_abs / acc.max_src } else { acc.max_abs });
            m.argmax_agreement = (acc.argmax_rows > 0).then(|| acc.argmax_same as f64 / acc.argmax_rows as f64);
            if m.pass && acc.nonfinite > 0 {
                m.pass = false;
                m.problem =
                    Some(format!("{} value(s) are non-finite in one model and not in the other", acc.nonfinite));
            } else if m.pass && (acc.min < min_cosine || acc.min.is_nan()) {
                m.pass = false;
                m.problem = Some(format!(
                    "min cosine {:.4} < {min_cosine} (row {} of {}; mean {:.4})",
                    acc.min,
                    acc.worst_row + 1,
                    acc.rows,
                    acc.sum / acc.rows.max(1) as f64
                ));
            }
        } else if m.pass && m.mismatches.unwrap_or(0) > 0 {
            m.pass = false;
            m.problem =
                Some(format!("{} element(s) differ; {} outputs must be equal", m.mismatches.unwrap_or(0), m.dtype));
        }
        if let Some(p) = &m.problem {
            report.reasons.push(format!("output '{name}': {p}"));
        }
    }
    if report.reasons.is_empty() {
        report.verdict = "pass";
    }
    Ok(report)
}

fn is_float(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
}

/// Why the candidate's signature cannot stand in for the source's, if it cannot.
fn signature_difference(src: &Signature, cand: &Signature) -> Option<String> {
    for s in &src.inputs {
        match cand.inputs.iter().find(|c| c.name == s.name) {
            None => return Some(format!("the candidate has no input '{}'", s.name)),
            Some(c) if c.dtype != s.dtype => {
                return Some(format!("input '{}' is {} in the source, {} in the candidate", s.name, s.dtype, c.dtype))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = cand.inputs.iter().find(|c| !src.inputs.iter().any(|s| s.name == c.name)) {
        return Some(format!("the candidate needs an input the source does not have: '{}'", extra.name));
    }
    for s in &src.outputs {
        match cand.outputs.iter().find(|c| c.name == s.name) {
            None => return Some(format!("the candidate has no output '{}'", s.name)),
            Some(c) if c.dtype != s.dtype => {
                return Some(format!("output '{}' is {} in the source, {} in the candidate", s.name, s.dtype, c.dtype))
            }
            Some(_) => {}
        }
    }
    None
}

/// Runs one sample; the outputs in the order of `sig`.
pub fn run_feed(session: &mut Session, feed: &Feed, sig: &Signature) -> Result<Vec<(String, Tensor)>, String> {
    let mut inputs: Vec<(&str, SessionInputValue<'_>)> = Vec::with_capacity(feed.len());
    for (name, t) in feed {
        inputs.push((name.as_str(), to_input(name, t)?));
    }
    let mut outputs = session.run(inputs).map_err(|e| e.to_string())?;
    let mut result = Vec::with_capacity(sig.outputs.len());
    for spec in &sig.outputs {
        let v = outputs.remove(spec.name.as_str()).ok_or_else(|| format!("no output '{}'", spec.name))?;
        result.push((spec.name.clone(), from_output(&spec.name, v)?));
    }
    Ok(result)
}

/// The values of a float tensor as f64.
fn float_values(t: &Tensor) -> Result<Vec<f64>, String> {
    let TensorData::Raw(b) = &t.data else { return Err("a float tensor without raw data".into()) };
    Ok(match t.dtype {
        DType::F32 => b.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect(),
        DType::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect(),
        DType::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
        DType::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
        other => return Err(format!("{other} is not a float type")),
    })
}

/// Cosine similarity of two vectors: 1 when both are zero, 0 when only one is.
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    match (na == 0.0, nb == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        _ => dot / (na.sqrt() * nb.sqrt()),
    }
}

fn compare_floats(acc: &mut FloatAcc, x: &Tensor, y: &Tensor) -> Result<(), String> {
    let (a, b) = (float_values(x)?, float_values(y)?);
    let rows = if x.shape.is_empty() { 1 } else { x.shape[0].max(0) as usize };
    if rows == 0 || a.is_empty() {
        return Ok(());
    }
    let width = a.len() / rows;
    for r in 0..rows {
        let (ra, rb) = (&a[r * width..(r + 1) * width], &b[r * width..(r + 1) * width]);
        let mut fa = Vec::with_capacity(width);
        let mut fb = Vec::with_capacity(width);
        for (&p, &q) in ra.iter().zip(rb) {
            if p.is_finite() && q.is_finite() {
                fa.push(p);
                fb.push(q);
                acc.max_abs = acc.max_abs.max((p - q).abs());
                acc.max_src = acc.max_src.max(p.abs());
            } else if p.to_bits() != q.to_bits() && !(p.is_nan() && q.is_nan()) {
                acc.nonfinite += 1;
            }
        }
        let c = cosine(&fa, &fb);
        if c < acc.min {
            acc.min = c;
            acc.worst_row = acc.rows;
        }
        acc.sum += c;
        acc.rows += 1;
        if x.shape.len() == 2 && width > 1 {
            acc.argmax_rows += 1;
            acc.argmax_same += u64::from(argmax(ra) == argmax(rb));
        }
    }
    Ok(())
}

fn argmax(v: &[f64]) -> usize {
    v.iter().enumerate().fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) }).0
}

/// Elements that differ (every element, if the data cannot be compared element-wise).
fn count_mismatches(x: &Tensor, y: &Tensor) -> u64 {
    match (&x.data, &y.data) {
        (TensorData::Raw(a), TensorData::Raw(b)) => {
            let size = x.dtype.size().unwrap_or(1).max(1);
            a.chunks(size).zip(b.chunks(size)).filter(|(p, q)| p != q).count() as u64
        }
        (TensorData::Strings(a), TensorData::Strings(b)) => a.iter().zip(b).filter(|(p, q)| p != q).count() as u64,
        _ => x.num_elements() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_of_rows() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-12);
        assert_eq!(cosine(&[0.0, 0.0], &[0.0, 0.0]), 1.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        let t = |v: Vec<f32>| {
            Tensor::new(
                DType::F32,
                vec![2, 2],
                TensorData::Raw(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>().into()),
            )
            .unwrap()
        };
        let mut acc = FloatAcc { min: f64::INFINITY, ..FloatAcc::default() };
        compare_floats(&mut acc, &t(vec![1.0, 0.0, 3.0, 4.0]), &t(vec![1.0, 0.0, 4.0, 3.0])).unwrap();
        assert_eq!(acc.rows, 2);
        assert!((acc.min - 0.96).abs() < 1e-9, "{}", acc.min);
        assert_eq!(acc.worst_row, 1);
        assert_eq!((acc.argmax_rows, acc.argmax_same), (2, 1));
        assert_eq!(acc.max_abs, 1.0);
        compare_floats(&mut acc, &t(vec![f32::NAN, 0.0, 1.0, 1.0]), &t(vec![1.0, 0.0, 1.0, 1.0])).unwrap();
        assert_eq!(acc.nonfinite, 1);
    }
}
