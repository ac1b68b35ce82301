//! TF Serving REST predict bodies <-> core tensors: the row format (`instances` -> `predictions`) and
//! the columnar format (`inputs` -> `outputs`). Leaves are converted by [`json`] (the core codec's
//! checks), every input charged to the request's budget first.
use super::json::{self, Strings};
use crate::error::Error;
use crate::tensor::{Budget, Input, Signature, Tensor};
use serde_json::Value;

/// What the decoders need of a model: its name and version for messages, its signature, and the
/// core's error for an input it does not have.
pub struct Model<'a> {
    /// `model 'm' version 1`
    pub ctx: &'a str,
    pub signature: &'a Signature,
    pub unknown_input: &'a dyn Fn(&str) -> Error,
}

/// Named input tensors, and the number of instances for the row format (`None`: columnar).
pub type Decoded = (Vec<(String, Tensor)>, Option<usize>);

/// Decodes a predict body's inputs: the row format when `instances` is given (returning the number
/// of instances), else the columnar `inputs`.
pub fn decode_inputs(
    model: &Model<'_>,
    instances: Option<&Value>,
    inputs: &Value,
    budget: &mut Budget,
) -> Result<Decoded, Error> {
    match instances {
        Some(instances) => decode_rows(model, instances, budget).map(|(inputs, n)| (inputs, Some(n))),
        None => decode_columns(model, inputs, budget).map(|inputs| (inputs, None)),
    }
}

/// Converts the leaves of one input to a tensor of the dtype the signature gives it, charging it to
/// the request's budget first.
fn input_tensor(
    model: &Model<'_>,
    name: &str,
    shape: Vec<i64>,
    leaves: &[&Value],
    budget: &mut Budget,
) -> Result<Tensor, Error> {
    let Some(spec) = model.signature.inputs.iter().find(|s| s.name == name) else {
        return Err((model.unknown_input)(name));
    };
    let input = Input { ctx: model.ctx, name };
    json::charge(input, budget, spec.dtype, &shape, leaves)?;
    json::to_tensor(input, spec.dtype, shape, leaves)
}

fn input_names(signature: &Signature) -> String {
    let names: Vec<String> = signature.inputs.iter().map(|s| format!("'{}'", s.name)).collect();
    format!("[{}]", names.join(", "))
}

/// One value (nested list) per input, for the whole input.
fn whole(model: &Model<'_>, name: &str, v: &Value, budget: &mut Budget) -> Result<Tensor, Error> {
    let shape = json::nested_shape(v);
    let mut leaves = Vec::new();
    json::flatten_rect(v, &shape, &mut leaves).map_err(|m| Input { ctx: model.ctx, name }.invalid(m))?;
    input_tensor(model, name, shape, &leaves, budget)
}

/// Row format: a list of instances, each the value of the single input or an object keyed by input
/// name; every input gets the number of instances as its first dimension.
fn decode_rows(
    model: &Model<'_>,
    instances: &Value,
    budget: &mut Budget,
) -> Result<(Vec<(String, Tensor)>, usize), Error> {
    let ctx = model.ctx;
    let list = match instances.as_array() {
        Some(l) if !l.is_empty() => l,
        _ => {
            return Err(Error::InvalidArgument(format!(
                "{ctx}: \"instances\" must be a non-empty JSON list (one element per row), got {}",
                json::short(instances)
            )))
        }
    };
    let n = list.len();
    let Some(first) = json::is_named_map(&list[0]) else {
        let sig = &model.signature.inputs;
        if sig.len() != 1 {
            return Err(Error::InvalidArgument(format!(
                "{ctx}: the model has {} inputs {}; in the row format each instance must be a JSON object keyed \
                 by input name",
                sig.len(),
                input_names(model.signature)
            )));
        }
        let name = sig[0].name.clone();
        let t = whole(model, &name, instances, budget)?;
        return Ok((vec![(name, t)], n));
    };
    let names: Vec<&String> = first.keys().collect();
    for (i, inst) in list.iter().enumerate() {
        let same = json::is_named_map(inst)
            .is_some_and(|o| o.len() == names.len() && names.iter().all(|k| o.contains_key(k.as_str())));
        if !same {
            let listed: Vec<String> = names.iter().map(|k| format!("'{k}'")).collect();
            return Err(Error::InvalidArgument(format!(
                "{ctx}: instance {i} does not name the same inputs as instance 0 ([{}]); in the row format every \
                 instance is a JSON object with the same input names",
                listed.join(", ")
            )));
        }
    }
    let mut inputs = Vec::with_capacity(names.len());
    for name in names {
        let inner = json::nested_shape(&first[name.as_str()]);
        let mut shape = Vec::with_capacity(inner.len() + 1);
        shape.push(n as i64);
        shape.extend_from_slice(&inner);
        let mut leaves = Vec::new();
        for (i, inst) in list.iter().enumerate() {
            json::flatten_rect(&inst[name.as_str()], &inner, &mut leaves)
                .map_err(|m| Error::InvalidArgument(format!("{ctx}: input '{name}': instance {i}: {m}")))?;
        }
        inputs.push((name.clone(), input_tensor(model, name, shape, &leaves, budget)?));
    }
    Ok((inputs, n))
}

/// Columnar format: the value of the single input, or an object keyed by input name.
fn decode_columns(model: &Model<'_>, inputs: &Value, budget: &mut Budget) -> Result<Vec<(String, Tensor)>, Error> {
    if let Some(map) = json::is_named_map(inputs) {
        return map.iter().map(|(name, v)| Ok((name.clone(), whole(model, name, v, budget)?))).collect();
    }
    let sig = &model.signature.inputs;
    if sig.len() != 1 {
        return Err(Error::InvalidArgument(format!(
            "{}: the model has {} inputs {}; \"inputs\" must be a JSON object keyed by input name",
            model.ctx,
            sig.len(),
            input_names(model.signature)
        )));
    }
    let name = sig[0].name.clone();
    let t = whole(model, &name, inputs, budget)?;
    Ok(vec![(name, t)])
}

/// TF Serving writes outputs named `*_bytes` as `{"b64": ...}`.
fn strings_for(name: &str) -> Strings {
    if name.ends_with("_bytes") {
        Strings::B64
    } else {
        Strings::Auto
    }
}

fn write_row(out: &mut String, name: &str, t: &Tensor, row: usize) {
    let dims = t.shape.get(1..).unwrap_or_default();
    let stride: usize = dims.iter().map(|&d| d.max(0) as usize).product();
    json::write_nested(out, t, dims, row * stride, strings_for(name));
}

/// `{"predictions": [...]}`: one element per row, an object keyed by output name if there are several.
/// As in TF Serving, the outputs must agree with each other on their first dimension (not with the
/// number of instances); that many rows are returned.
pub fn encode_rows(ctx: &str, outputs: &[(String, Tensor)]) -> Result<String, Error> {
    let columnar = "send \"inputs\" (columnar format) instead";
    let mut firsts = Vec::with_capacity(outputs.len());
    for (name, t) in outputs {
        let Some(&first) = t.shape.first() else {
            return Err(Error::InvalidArgument(format!(
                "{ctx}: output '{name}' has shape [], which has no first dimension to return as rows in the row \
                 format; {columnar}"
            )));
        };
        firsts.push((name, first));
    }
    if firsts.iter().any(|&(_, d)| d != firsts[0].1) {
        let listed: Vec<String> = firsts.iter().map(|(name, d)| format!("'{name}' has {d}")).collect();
        return Err(Error::InvalidArgument(format!(
            "{ctx}: the outputs do not agree on their first dimension ({}), so they cannot be returned as rows in \
             the row format; {columnar}",
            listed.join(", ")
        )));
    }
    let n = firsts.first().map_or(0, |&(_, d)| usize::try_from(d).unwrap_or(0));
    let mut out = String::from("{\"predictions\":[");
    for row in 0..n {
        if row > 0 {
            out.push(',');
        }
        match outputs {
            [(name, t)] => write_row(&mut out, name, t, row),
            _ => {
                out.push('{');
                for (k, (name, t)) in outputs.iter().enumerate() {
                    if k > 0 {
                        out.push(',');
                    }
                    json::write_str(&mut out, name);
                    out.push(':');
                    write_row(&mut out, name, t, row);
                }
                out.push('}');
            }
        }
    }
    out.push_str("]}");
    Ok(out)
}

/// `{"outputs": ...}`: the single output's value, or an object keyed by output name.
pub fn encode_columns(outputs: &[(String, Tensor)]) -> String {
    let mut out = String::from("{\"outputs\":");
    match outputs {
        [(name, t)] => {
            json::write_nested(&mut out, t, &t.shape, 0, strings_for(name));
        }
        _ => {
            out.push('{');
            for (k, (name, t)) in outputs.iter().enumerate() {
                if k > 0 {
                    out.push(',');
                }
                json::write_str(&mut out, name);
                out.push(':');
                json::write_nested(&mut out, t, &t.shape, 0, strings_for(name));
            }
            out.push('}');
        }
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{DType, TensorData};
    use bytes::Bytes;

    fn t(shape: &[i64]) -> Tensor {
        let n: usize = shape.iter().map(|&d| d as usize).product();
        Tensor::new(DType::U8, shape.to_vec(), TensorData::Raw(Bytes::from(vec![7u8; n]))).unwrap()
    }

    #[test]
    fn rows_follow_the_outputs() {
        let out = |o: Vec<(&str, Tensor)>| o.into_iter().map(|(n, t)| (n.to_string(), t)).collect::<Vec<_>>();
        assert_eq!(encode_rows("m", &out(vec![("y", t(&[3]))])).unwrap(), r#"{"predictions":[7,7,7]}"#);
        assert_eq!(encode_rows("m", &out(vec![("y", t(&[0, 2]))])).unwrap(), r#"{"predictions":[]}"#);
        assert_eq!(
            encode_rows("m", &out(vec![("a", t(&[1, 1])), ("b", t(&[1]))])).unwrap(),
            r#"{"predictions":[{"a":[7],"b":7}]}"#
        );
        let e = encode_rows("m", &out(vec![("a", t(&[2])), ("b", t(&[2])), ("c", t(&[1]))])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "m: the outputs do not agree on their first dimension ('a' has 2, 'b' has 2, 'c' has 1), so they cannot \
             be returned as rows in the row format; send \"inputs\" (columnar format) instead"
        );
        let e = encode_rows("m", &out(vec![("s", t(&[]))])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "m: output 's' has shape [], which has no first dimension to return as rows in the row format; send \
             \"inputs\" (columnar format) instead"
        );
    }
}
