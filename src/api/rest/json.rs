//! JSON values <-> core tensors, shared by the TF Serving and v2 REST front ends.
//!
//! Input: bodies are parsed with `serde_json` after the non-standard tokens `NaN`, `Infinity` and
//! `-Infinity` (which TF Serving accepts and emits) are rewritten, outside strings, into a marker
//! object; leaves are converted to the dtype the model (TF) or the request (v2) names, with range
//! and type checks. Output: written straight into a `String` (so non-finite floats can be emitted
//! as those tokens, which `serde_json` cannot do).
use crate::error::Error;
use crate::tensor::codec::{self, format_f64, Element, Number};
use crate::tensor::{claimed_elements, fmt_shape, tensor_bytes, try_vec, Budget, DType, Input, Tensor, TensorData};
use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value};
use std::fmt::Write;

/// Key of the marker object that stands for a non-finite float token in a parsed body.
const NONFINITE_KEY: &str = "\u{0}nonfinite";
const NONFINITE_KEY_JSON: &[u8] = b"\"\\u0000nonfinite\"";
/// The longest marker object minus the shortest token it replaces (`{"\u0000nonfinite":"-Infinity"}`
/// for `NaN`).
const NONFINITE_GROWTH: usize = 31 - 3;

/// Memory a parsed JSON value takes (`serde_json::Value`), an object's first map node, and each
/// further object member: what [`parse`] charges before it parses.
const VALUE_BYTES: u128 = std::mem::size_of::<Value>() as u128;
const OBJECT_BYTES: u128 = 640;
const MEMBER_BYTES: u128 = 64;

/// What a body holds, counted outside strings without parsing it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Census {
    values: u128,
    objects: u128,
    members: u128,
    nonfinite: usize,
}

impl Census {
    /// The memory the parsed tree takes, about (an upper estimate for ordinary bodies).
    fn parsed_bytes(&self, body_len: usize) -> u128 {
        let values = self.values + 2 * self.nonfinite as u128;
        let objects = self.objects + self.nonfinite as u128;
        let members = self.members + self.nonfinite as u128;
        let copy = if self.nonfinite > 0 { body_len as u128 + (self.nonfinite * NONFINITE_GROWTH) as u128 } else { 0 };
        values * VALUE_BYTES + objects * OBJECT_BYTES + members * MEMBER_BYTES + body_len as u128 + copy
    }
}

/// Counts the values, objects, object members and non-finite tokens of a body (outside strings).
fn census(body: &[u8]) -> Census {
    let mut c = Census { values: 1, ..Census::default() };
    let (mut in_string, mut escaped, mut after_open) = (false, false, false);
    let mut i = 0;
    while i < body.len() {
        let ch = body[i];
        i += 1;
        if in_string {
            if escaped {
                escaped = false;
            } else if ch == b'\\' {
                escaped = true;
            } else if ch == b'"' {
                in_string = false;
            }
            continue;
        }
        if ch.is_ascii_whitespace() {
            continue;
        }
        if after_open && ch != b']' && ch != b'}' {
            // A container's first element.
            c.values += 1;
        }
        after_open = false;
        match ch {
            b'"' => in_string = true,
            b'[' => after_open = true,
            b'{' => {
                after_open = true;
                c.objects += 1;
            }
            b',' => c.values += 1,
            b':' => c.members += 1,
            b'N' | b'I' | b'-' => {
                if let Some((len, _)) = nonfinite_token(&body[i - 1..]) {
                    c.nonfinite += 1;
                    i += len - 1;
                }
            }
            _ => {}
        }
    }
    c
}

/// The non-finite token `rest` starts with, and its name.
fn nonfinite_token(rest: &[u8]) -> Option<(usize, &'static str)> {
    const TOKENS: [(&[u8], &str); 3] = [(b"NaN", "NaN"), (b"Infinity", "Infinity"), (b"-Infinity", "-Infinity")];
    TOKENS.iter().find(|(t, _)| rest.starts_with(t)).map(|(t, name)| (t.len(), *name))
}

/// Parses a request body, accepting the tokens `NaN`, `Infinity` and `-Infinity` as numbers. The
/// memory the parsed tree will take is estimated first (a cheap scan) and the body refused with
/// 413 when that is over `limit` (`--max-tensor-bytes`).
pub fn parse(body: &[u8], limit: usize) -> Result<Value, Error> {
    let c = census(body);
    let needs = c.parsed_bytes(body.len());
    if needs > limit as u128 {
        return Err(Error::TooLarge(format!(
            "the JSON body needs about {needs} bytes once parsed ({} values, {} objects), more than the {limit} bytes \
             --max-tensor-bytes allows for one request; send large tensors over gRPC",
            c.values, c.objects
        )));
    }
    let rewritten = if c.nonfinite > 0 { Some(rewrite_nonfinite(body, c.nonfinite)?) } else { None };
    let text = rewritten.as_deref().unwrap_or(body);
    serde_json::from_slice(text).map_err(|e| Error::InvalidArgument(format!("JSON Parse error: {e}")))
}

/// Replaces the `count` tokens `NaN`, `Infinity` and `-Infinity` outside strings by marker objects.
fn rewrite_nonfinite(body: &[u8], count: usize) -> Result<Vec<u8>, Error> {
    let mut o = Vec::new();
    o.try_reserve_exact(body.len() + count * NONFINITE_GROWTH)
        .map_err(|_| Error::TooLarge(format!("cannot allocate {} bytes to read the JSON body", body.len())))?;
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
            if let Some((len, name)) = nonfinite_token(&body[i..]) {
                o.extend_from_slice(&body[copied..i]);
                o.push(b'{');
                o.extend_from_slice(NONFINITE_KEY_JSON);
                o.extend_from_slice(b":\"");
                o.extend_from_slice(name.as_bytes());
                o.extend_from_slice(b"\"}");
                i += len;
                copied = i;
                continue;
            }
        }
        i += 1;
    }
    o.extend_from_slice(&body[copied..]);
    Ok(o)
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

/// Charges an input of `dtype` and `shape` whose leaves are `leaves` to the request's budget: the
/// size the shape claims (for strings: per element, plus the bytes of the leaves given).
pub fn charge(
    input: Input<'_>,
    budget: &mut Budget,
    dtype: DType,
    shape: &[i64],
    leaves: &[&Value],
) -> Result<(), Error> {
    let n = claimed_elements(input, shape)?;
    let payload: u128 = if dtype == DType::String { leaves.iter().map(|v| string_len(v) as u128).sum() } else { 0 };
    budget.charge(input, dtype, shape, tensor_bytes(dtype, n, payload))
}

/// The bytes a string leaf decodes to (at most).
fn string_len(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        _ => match b64_of(v) {
            Some(Value::String(s)) => base64::decoded_len_estimate(s.len()),
            _ => 0,
        },
    }
}

/// Builds a tensor of `dtype` and `shape` from its leaves (row-major), converting each with the
/// core codec's checks. Charge the input with [`charge`] first.
pub fn to_tensor(input: Input<'_>, dtype: DType, shape: Vec<i64>, leaves: &[&Value]) -> Result<Tensor, Error> {
    let element = |i: usize, m: String| input.invalid(format!("element {i}: {m}"));
    let data = match dtype.size() {
        None => {
            let mut out = try_vec::<Bytes>(input, leaves.len())?;
            for (i, v) in leaves.iter().enumerate() {
                out.push(string_leaf(v).map_err(|m| element(i, m))?);
            }
            TensorData::Strings(out)
        }
        Some(size) => {
            let mut out = try_vec::<u8>(input, leaves.len().saturating_mul(size))?;
            for (i, v) in leaves.iter().enumerate() {
                push_leaf(dtype, v, &mut out).map_err(|m| element(i, m))?;
            }
            TensorData::Raw(Bytes::from(out))
        }
    };
    Tensor::new(dtype, shape, data).map_err(|e| input.invalid(e))
}

fn expected(what: &str, dtype: DType, v: &Value) -> String {
    let b64 = if b64_of(v).is_some() { " ({\"b64\": ...} values are for string inputs only)" } else { "" };
    format!("expected {what} for dtype {dtype}, got {}{b64}", short(v))
}

/// A string element: a JSON string (its UTF-8 bytes) or `{"b64": "..."}` (any bytes).
fn string_leaf(v: &Value) -> Result<Bytes, String> {
    if let Value::String(s) = v {
        return Ok(Bytes::copy_from_slice(s.as_bytes()));
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

/// The number of a numeric leaf (a JSON number or a non-finite token).
fn number(v: &Value, what: &str, dtype: DType) -> Result<Number, String> {
    match v {
        Value::Number(n) => Ok(if let Some(i) = n.as_i64() {
            Number::I64(i)
        } else if let Some(u) = n.as_u64() {
            Number::U64(u)
        } else {
            Number::F64(n.as_f64().unwrap_or(f64::NAN))
        }),
        _ => nonfinite(v).map(Number::F64).ok_or_else(|| expected(what, dtype, v)),
    }
}

fn push_leaf(dtype: DType, v: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    match dtype {
        DType::Bool => match v {
            Value::Bool(b) => out.push(u8::from(*b)),
            _ => return Err(expected("true or false", dtype, v)),
        },
        DType::F32 | DType::F64 | DType::F16 | DType::BF16 => {
            codec::push_number(dtype, number(v, "a number", dtype)?, out)?;
        }
        DType::String => return Err(expected("a number", dtype, v)),
        _ => {
            if nonfinite(v).is_some() {
                return Err(expected("an integer", dtype, v));
            }
            codec::push_number(dtype, number(v, "an integer", dtype)?, out)?;
        }
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

/// Appends element `i` of `t`.
fn write_elem(out: &mut String, t: &Tensor, i: usize, strings: Strings) {
    match codec::element(t, i) {
        Element::Bytes(b) => match (strings, std::str::from_utf8(b)) {
            (Strings::Auto, Ok(s)) => write_str(out, s),
            _ => {
                out.push_str("{\"b64\":\"");
                out.push_str(&base64::engine::general_purpose::STANDARD.encode(b));
                out.push_str("\"}");
            }
        },
        Element::F32(x) => write_f32(out, x),
        Element::F64(x) => write_f64(out, x),
        Element::Int(x) => {
            let _ = write!(out, "{x}");
        }
        Element::UInt(x) => {
            let _ = write!(out, "{x}");
        }
        Element::Bool(b) => out.push_str(if b { "true" } else { "false" }),
    }
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
        let body = br#"{"a":[NaN, Infinity, -Infinity, -1], "s":"NaN Infinity \"NaN"}"#;
        assert_eq!(census(body), Census { values: 7, objects: 1, members: 2, nonfinite: 3 });
        let v = parse(body, 1 << 20).unwrap();
        let a: Vec<Number> =
            v["a"].as_array().unwrap().iter().map(|x| number(x, "a number", DType::F64).unwrap()).collect();
        assert!(matches!(a[0], Number::F64(x) if x.is_nan()));
        assert_eq!(&a[1..], &[Number::F64(f64::INFINITY), Number::F64(f64::NEG_INFINITY), Number::I64(-1)]);
        assert_eq!(v["s"], "NaN Infinity \"NaN");
        assert!(parse(b"[Nope]", 1 << 20).unwrap_err().to_string().starts_with("JSON Parse error: "));
    }

    #[test]
    fn parse_is_bounded_before_parsing() {
        assert_eq!(census(b"[]").values, 1);
        assert_eq!(census(b" [ 1 , [2, 3], {} ] ").values, 6);
        assert_eq!(census(br#"[{"a": "[,,:"}]"#), Census { values: 3, objects: 1, members: 1, nonfinite: 0 });
        let body = format!("[{}0]", "0,".repeat(99_999));
        let e = parse(body.as_bytes(), 1 << 20).unwrap_err();
        assert_eq!(e.http_status(), 413);
        assert_eq!(
            e.to_string(),
            "the JSON body needs about 3400033 bytes once parsed (100001 values, 0 objects), more than the 1048576 \
             bytes --max-tensor-bytes allows for one request; send large tensors over gRPC"
        );
        assert!(parse(body.as_bytes(), 4 << 20).is_ok());
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
        let x = Input { ctx: "m", name: "x" };
        assert_eq!(
            to_tensor(x, DType::U8, vec![1], &leaves).unwrap_err().to_string(),
            "m: input 'x': element 0: value 300 is out of range for uint8"
        );
        let v: Value = serde_json::from_str("[1.5, 2.0]").unwrap();
        let leaves: Vec<&Value> = v.as_array().unwrap().iter().collect();
        assert_eq!(
            to_tensor(x, DType::I32, vec![2], &leaves).unwrap_err().to_string(),
            "m: input 'x': element 0: value 1.5 is not an integer (dtype int32)"
        );
        let v: Value = serde_json::from_str("[1e300]").unwrap();
        let leaves: Vec<&Value> = v.as_array().unwrap().iter().collect();
        assert_eq!(
            to_tensor(x, DType::F32, vec![1], &leaves).unwrap_err().to_string(),
            "m: input 'x': element 0: value 1e300 is out of range for float32"
        );
        let v: Value = serde_json::from_str(r#"[{"b64":"aGk="}, "yo"]"#).unwrap();
        let leaves: Vec<&Value> = v.as_array().unwrap().iter().collect();
        let mut budget = Budget::new(2 * 32 + 5);
        charge(x, &mut budget, DType::String, &[2], &leaves).unwrap();
        let t = to_tensor(x, DType::String, vec![2], &leaves).unwrap();
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
