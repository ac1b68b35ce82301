//! JSON values <-> core tensors, shared by the TF Serving and v2 REST front ends.
//!
//! Input: bodies are parsed with `serde_json` after the non-standard tokens `NaN`, `Infinity` and
//! `-Infinity` (which TF Serving accepts and emits) are rewritten, outside strings, into a marker
//! object; leaves are converted to the dtype the model (TF) or the request (v2) names, with range
//! and type checks. Output: written straight into a `String` (so non-finite floats can be emitted
//! as those tokens, which `serde_json` cannot do).
use crate::tensor::{fmt_shape, DType, Tensor, TensorData};
use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value};
use std::fmt::Write;

/// Key of the marker object that stands for a non-finite float token in a parsed body.
const NONFINITE_KEY: &str = "\u{0}nonfinite";
const NONFINITE_KEY_JSON: &[u8] = b"\"\\u0000nonfinite\"";

/// Parses a request body, accepting the tokens `NaN`, `Infinity` and `-Infinity` as numbers.
pub fn parse(body: &[u8]) -> Result<Value, String> {
    let rewritten = rewrite_nonfinite(body);
    let text = rewritten.as_deref().unwrap_or(body);
    serde_json::from_slice(text).map_err(|e| format!("JSON Parse error: {e}"))
}

/// Replaces `NaN`, `Infinity` and `-Infinity` outside strings by marker objects; `None` if the body
/// has none (the common case: no copy).
fn rewrite_nonfinite(body: &[u8]) -> Option<Vec<u8>> {
    const TOKENS: [(&[u8], &str); 3] = [(b"NaN", "NaN"), (b"Infinity", "Infinity"), (b"-Infinity", "-Infinity")];
    let mut out: Option<Vec<u8>> = None;
    let (mut in_string, mut escaped) = (false, false);
    let mut copied = 0;
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if c == b'N' || c == b'I' || c == b'-' {
            if let Some((tok, name)) = TOKENS.iter().find(|(t, _)| body[i..].starts_with(t)) {
                let o = out.get_or_insert_with(|| Vec::with_capacity(body.len() + 64));
                o.extend_from_slice(&body[copied..i]);
                o.push(b'{');
                o.extend_from_slice(NONFINITE_KEY_JSON);
                o.extend_from_slice(format!(":\"{name}\"}}").as_bytes());
                i += tok.len();
                copied = i;
                continue;
            }
        }
        i += 1;
    }
    let mut o = out?;
    o.extend_from_slice(&body[copied..]);
    Some(o)
}

/// The float a non-finite marker object stands for.
fn nonfinite(v: &Value) -> Option<f64> {
    let Value::Object(o) = v else { return None };
    if o.len() != 1 {
        return None;
    }
    match o.get(NONFINITE_KEY)?.as_str()? {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// The base64 text of a `{"b64": "..."}` object.
pub fn b64_of(v: &Value) -> Option<&Value> {
    match v {
        Value::Object(o) if o.len() == 1 => o.get("b64"),
        _ => None,
    }
}

/// Whether `v` is an object keyed by input names (not a `{"b64": ...}` value or a marker).
pub fn is_named_map(v: &Value) -> Option<&Map<String, Value>> {
    match v {
        Value::Object(o) if b64_of(v).is_none() && nonfinite(v).is_none() => Some(o),
        _ => None,
    }
}

/// A short rendering of a JSON value for messages.
pub fn short(v: &Value) -> String {
    if let Some(x) = nonfinite(v) {
        return format_f64(x);
    }
    let mut s = v.to_string();
    if s.len() > 64 {
        let mut cut = 64;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

fn format_f64(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{x:?}")
    }
}

/// The shape of a nested JSON list, following first elements (a scalar has shape `[]`).
pub fn nested_shape(v: &Value) -> Vec<i64> {
    let mut shape = Vec::new();
    let mut cur = v;
    while let Value::Array(a) = cur {
        shape.push(a.len() as i64);
        match a.first() {
            Some(first) => cur = first,
            None => break,
        }
    }
    shape
}

/// Appends the leaves of `v` to `out`, checking that `v` is a rectangular nested list of `shape`.
pub fn flatten_rect<'a>(v: &'a Value, shape: &[i64], out: &mut Vec<&'a Value>) -> Result<(), String> {
    flatten_at(v, shape, 0, out)
}

fn flatten_at<'a>(v: &'a Value, shape: &[i64], depth: usize, out: &mut Vec<&'a Value>) -> Result<(), String> {
    let ragged = |what: String| {
        format!(
            "the nested lists are ragged (not rectangular): {what} at depth {depth}, but the first elements give shape {}",
            fmt_shape(shape)
        )
    };
    match (v, shape.get(depth)) {
        (Value::Array(a), Some(&n)) => {
            if a.len() as i64 != n {
                return Err(ragged(format!("a list has {} elements where {n} were expected", a.len())));
            }
            for x in a {
                flatten_at(x, shape, depth + 1, out)?;
            }
            Ok(())
        }
        (Value::Array(a), None) => Err(ragged(format!("a list of {} elements where a value was expected", a.len()))),
        (x, Some(_)) => Err(ragged(format!("the value {} where a list was expected", short(x)))),
        (x, None) => {
            out.push(x);
            Ok(())
        }
    }
}

/// Appends every leaf of `v` (any nesting) to `out`.
pub fn flatten_any<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| flatten_any(x, out)),
        x => out.push(x),
    }
}

/// Builds a tensor of `dtype` and `shape` from its leaves (row-major).
pub fn to_tensor(dtype: DType, shape: Vec<i64>, leaves: &[&Value]) -> Result<Tensor, String> {
    let data = match dtype.size() {
        None => TensorData::Strings(
            leaves
                .iter()
                .enumerate()
                .map(|(i, v)| string_leaf(v).map_err(|m| format!("element {i}: {m}")))
                .collect::<Result<_, _>>()?,
        ),
        Some(size) => {
            let mut out = Vec::with_capacity(leaves.len().saturating_mul(size));
            for (i, v) in leaves.iter().enumerate() {
                push_leaf(dtype, v, &mut out).map_err(|m| format!("element {i}: {m}"))?;
            }
            TensorData::Raw(Bytes::from(out))
        }
    };
    Tensor::new(dtype, shape, data).map_err(|e| e.to_string())
}

fn expected(what: &str, dtype: DType, v: &Value) -> String {
    let b64 = if b64_of(v).is_some() { " ({\"b64\": ...} values are for string inputs only)" } else { "" };
    format!("expected {what} for dtype {dtype}, got {}{b64}", short(v))
}

fn string_leaf(v: &Value) -> Result<Bytes, String> {
    if let Value::String(s) = v {
        return Ok(Bytes::from(s.clone().into_bytes()));
    }
    match b64_of(v) {
        Some(Value::String(s)) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(Bytes::from)
            .map_err(|e| format!("invalid base64 in {{\"b64\": ...}}: {e}")),
        Some(other) => Err(format!("{{\"b64\": ...}} must hold a string, got {}", short(other))),
        None => Err(expected("a string or {\"b64\": \"...\"}", DType::String, v)),
    }
}

fn float(v: &Value, dtype: DType) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| expected("a number", dtype, v)),
        _ => nonfinite(v).ok_or_else(|| expected("a number", dtype, v)),
    }
}

/// A float converted to a narrower type must not overflow to infinity.
fn fits(x: f64, narrowed_is_finite: bool, dtype: DType) -> Result<(), String> {
    if x.is_finite() && !narrowed_is_finite {
        return Err(format!("value {} is out of range for {dtype}", format_f64(x)));
    }
    Ok(())
}

fn integer<T: TryFrom<i64> + TryFrom<u64>>(v: &Value, dtype: DType) -> Result<T, String> {
    let Value::Number(n) = v else {
        return Err(expected("an integer", dtype, v));
    };
    let range = || format!("value {n} is out of range for {dtype}");
    if let Some(i) = n.as_i64() {
        return T::try_from(i).map_err(|_| range());
    }
    if let Some(u) = n.as_u64() {
        return T::try_from(u).map_err(|_| range());
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    if !f.is_finite() || f.fract() != 0.0 {
        return Err(format!("value {n} is not an integer (dtype {dtype})"));
    }
    if f < 0.0 {
        if f < -9.223_372_036_854_776e18 {
            return Err(range());
        }
        T::try_from(f as i64).map_err(|_| range())
    } else {
        if f >= 18_446_744_073_709_551_616.0 {
            return Err(range());
        }
        T::try_from(f as u64).map_err(|_| range())
    }
}

fn push_leaf(dtype: DType, v: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    match dtype {
        DType::Bool => match v {
            Value::Bool(b) => out.push(u8::from(*b)),
            _ => return Err(expected("true or false", dtype, v)),
        },
        DType::F64 => out.extend_from_slice(&float(v, dtype)?.to_le_bytes()),
        DType::F32 => {
            let x = float(v, dtype)?;
            let y = x as f32;
            fits(x, y.is_finite(), dtype)?;
            out.extend_from_slice(&y.to_le_bytes());
        }
        DType::F16 => {
            let x = float(v, dtype)?;
            let y = half::f16::from_f64(x);
            fits(x, y.is_finite(), dtype)?;
            out.extend_from_slice(&y.to_le_bytes());
        }
        DType::BF16 => {
            let x = float(v, dtype)?;
            let y = half::bf16::from_f64(x);
            fits(x, y.is_finite(), dtype)?;
            out.extend_from_slice(&y.to_le_bytes());
        }
        DType::I8 => out.extend_from_slice(&integer::<i8>(v, dtype)?.to_le_bytes()),
        DType::I16 => out.extend_from_slice(&integer::<i16>(v, dtype)?.to_le_bytes()),
        DType::I32 => out.extend_from_slice(&integer::<i32>(v, dtype)?.to_le_bytes()),
        DType::I64 => out.extend_from_slice(&integer::<i64>(v, dtype)?.to_le_bytes()),
        DType::U8 => out.extend_from_slice(&integer::<u8>(v, dtype)?.to_le_bytes()),
        DType::U16 => out.extend_from_slice(&integer::<u16>(v, dtype)?.to_le_bytes()),
        DType::U32 => out.extend_from_slice(&integer::<u32>(v, dtype)?.to_le_bytes()),
        DType::U64 => out.extend_from_slice(&integer::<u64>(v, dtype)?.to_le_bytes()),
        DType::String => return Err(expected("a number", dtype, v)),
    }
    Ok(())
}

/// Appends `s` as a JSON string literal.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A JSON string literal.
pub fn str_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_str(&mut out, s);
    out
}

/// How string elements are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strings {
    /// JSON strings when valid UTF-8, else `{"b64": ...}` (TF Serving).
    Auto,
    /// Always `{"b64": ...}` (TF Serving, outputs named `*_bytes`).
    B64,
}

fn write_f32(out: &mut String, x: f32) {
    if x.is_finite() {
        let _ = write!(out, "{x:?}");
    } else {
        out.push_str(&format_f64(f64::from(x)));
    }
}

fn write_f64(out: &mut String, x: f64) {
    if x.is_finite() {
        let _ = write!(out, "{x:?}");
    } else {
        out.push_str(&format_f64(x));
    }
}

fn le<const N: usize>(b: &[u8], i: usize) -> [u8; N] {
    b.get(i * N..(i + 1) * N).and_then(|c| c.try_into().ok()).unwrap_or([0; N])
}

/// Appends element `i` of `t`.
fn write_elem(out: &mut String, t: &Tensor, i: usize, strings: Strings) {
    let raw = match &t.data {
        TensorData::Strings(s) => {
            let b = s.get(i).map(|b| &b[..]).unwrap_or_default();
            match (strings, std::str::from_utf8(b)) {
                (Strings::Auto, Ok(s)) => write_str(out, s),
                _ => {
                    out.push_str("{\"b64\":\"");
                    out.push_str(&base64::engine::general_purpose::STANDARD.encode(b));
                    out.push_str("\"}");
                }
            }
            return;
        }
        TensorData::Raw(b) => &b[..],
    };
    let _ = match t.dtype {
        DType::F32 => {
            write_f32(out, f32::from_le_bytes(le(raw, i)));
            Ok(())
        }
        DType::F64 => {
            write_f64(out, f64::from_le_bytes(le(raw, i)));
            Ok(())
        }
        DType::F16 => {
            write_f32(out, half::f16::from_le_bytes(le(raw, i)).to_f32());
            Ok(())
        }
        DType::BF16 => {
            write_f32(out, half::bf16::from_le_bytes(le(raw, i)).to_f32());
            Ok(())
        }
        DType::I8 => write!(out, "{}", i8::from_le_bytes(le(raw, i))),
        DType::I16 => write!(out, "{}", i16::from_le_bytes(le(raw, i))),
        DType::I32 => write!(out, "{}", i32::from_le_bytes(le(raw, i))),
        DType::I64 => write!(out, "{}", i64::from_le_bytes(le(raw, i))),
        DType::U8 => write!(out, "{}", u8::from_le_bytes(le(raw, i))),
        DType::U16 => write!(out, "{}", u16::from_le_bytes(le(raw, i))),
        DType::U32 => write!(out, "{}", u32::from_le_bytes(le(raw, i))),
        DType::U64 => write!(out, "{}", u64::from_le_bytes(le(raw, i))),
        DType::Bool => {
            out.push_str(if raw.get(i).copied().unwrap_or(0) != 0 { "true" } else { "false" });
            Ok(())
        }
        DType::String => Ok(()),
    };
}

/// Appends the block of `t` of shape `dims` that starts at element `start`, as nested lists (a
/// bare value when `dims` is empty). Returns the index after the block.
pub fn write_nested(out: &mut String, t: &Tensor, dims: &[i64], start: usize, strings: Strings) -> usize {
    match dims.split_first() {
        None => {
            write_elem(out, t, start, strings);
            start + 1
        }
        Some((&n, rest)) => {
            out.push('[');
            let mut next = start;
            let stride: usize = rest.iter().map(|&d| d.max(0) as usize).product();
            for k in 0..n.max(0) as usize {
                if k > 0 {
                    out.push(',');
                }
                next = write_nested(out, t, rest, start + k * stride, strings);
            }
            out.push(']');
            next.max(start + n.max(0) as usize * stride)
        }
    }
}

/// Appends every element of `t` as one flat list.
pub fn write_flat(out: &mut String, t: &Tensor, strings: Strings) {
    out.push('[');
    for i in 0..t.num_elements() {
        if i > 0 {
            out.push(',');
        }
        write_elem(out, t, i, strings);
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonfinite_tokens_outside_strings_only() {
        let v = parse(br#"{"a":[NaN, Infinity, -Infinity, -1], "s":"NaN Infinity \"NaN"}"#).unwrap();
        let a: Vec<f64> = v["a"].as_array().unwrap().iter().map(|x| float(x, DType::F64).unwrap()).collect();
        assert!(a[0].is_nan());
        assert_eq!(&a[1..], &[f64::INFINITY, f64::NEG_INFINITY, -1.0]);
        assert_eq!(v["s"], "NaN Infinity \"NaN");
        assert!(parse(b"[Nope]").unwrap_err().starts_with("JSON Parse error: "));
    }

    #[test]
    fn shapes_and_ragged() {
        let v: Value = serde_json::from_str("[[1,2],[3,4],[5,6]]").unwrap();
        let shape = nested_shape(&v);
        assert_eq!(shape, vec![3, 2]);
        let mut leaves = Vec::new();
        flatten_rect(&v, &shape, &mut leaves).unwrap();
        assert_eq!(leaves.len(), 6);
        let r: Value = serde_json::from_str("[[1,2],[3]]").unwrap();
        let e = flatten_rect(&r, &nested_shape(&r), &mut Vec::new()).unwrap_err();
        assert_eq!(
            e,
            "the nested lists are ragged (not rectangular): a list has 1 elements where 2 were expected at depth 1, \
             but the first elements give shape [2, 2]"
        );
    }

    #[test]
    fn converts_with_checks() {
        let v: Value = serde_json::from_str("[300]").unwrap();
        let leaves: Vec<&Value> = v.as_array().unwrap().iter().collect();
        assert_eq!(
            to_tensor(DType::U8, vec![1], &leaves).unwrap_err(),
            "element 0: value 300 is out of range for uint8"
        );
        let v: Value = serde_json::from_str("[1.5, 2.0]").unwrap();
        let leaves: Vec<&Value> = v.as_array().unwrap().iter().collect();
        assert_eq!(
            to_tensor(DType::I32, vec![2], &leaves).unwrap_err(),
            "element 0: value 1.5 is not an integer (dtype int32)"
        );
        let v: Value = serde_json::from_str("[1e300]").unwrap();
        let leaves: Vec<&Value> = v.as_array().unwrap().iter().collect();
        assert_eq!(
            to_tensor(DType::F32, vec![1], &leaves).unwrap_err(),
            "element 0: value 1e300 is out of range for float32"
        );
        let v: Value = serde_json::from_str(r#"[{"b64":"aGk="}, "yo"]"#).unwrap();
        let leaves: Vec<&Value> = v.as_array().unwrap().iter().collect();
        let t = to_tensor(DType::String, vec![2], &leaves).unwrap();
        assert_eq!(t.data, TensorData::Strings(vec![Bytes::from_static(b"hi"), Bytes::from_static(b"yo")]));
        let mut out = String::new();
        write_flat(&mut out, &t, Strings::Auto);
        assert_eq!(out, r#"["hi","yo"]"#);
        out.clear();
        write_flat(&mut out, &t, Strings::B64);
        assert_eq!(out, r#"[{"b64":"aGk="},{"b64":"eW8="}]"#);
    }

    #[test]
    fn writes_nested_and_nonfinite() {
        let vals = [1.5f32, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.1, -2.0];
        let raw: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = Tensor::new(DType::F32, vec![2, 3], TensorData::Raw(Bytes::from(raw))).unwrap();
        let mut out = String::new();
        let next = write_nested(&mut out, &t, &[2, 3], 0, Strings::Auto);
        assert_eq!(out, "[[1.5,NaN,Infinity],[-Infinity,0.1,-2.0]]");
        assert_eq!(next, 6);
        out.clear();
        write_nested(&mut out, &t, &[3], 3, Strings::Auto);
        assert_eq!(out, "[-Infinity,0.1,-2.0]");
        let mut s = String::new();
        write_str(&mut s, "a\"b\\c\n\u{1}é");
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\u0001é\"");
    }
}
