//! int8 dynamic quantization as a rewrite of the ONNX graph, with standard operators only.
//!
//! - `MatMul(A, W)` with a constant float32 2-D weight `W[K, N]` becomes
//!   `DynamicQuantizeLinear(A) -> (A_u8, a_scale, a_zp)`, `MatMulInteger(A_u8, W_s8, a_zp, w_zp)` ->
//!   `Cast(float)` -> `Mul(_, Mul(a_scale, w_scale))`, which ONNX Runtime fuses into its
//!   `MatMulIntegerToFloat` / `DynamicQuantizeMatMul` kernels at load.
//! - `Gemm(A, W, C)` the same (a transposed `W` is stored transposed, `alpha` folds into the weight
//!   scale), then `Add(_, beta * C)`.
//! - With `embeddings`, `Gather(T, indices)` of a constant float table becomes `Gather(T_s8, indices)` ->
//!   `DequantizeLinear`.
//!
//! Weights are symmetric int8 in [-127, 127] with zero point 0, rounded half to even: one scale for
//! the tensor, or with `per_channel` one per output column (the last dimension). Activations are
//! quantized at run time (uint8, per tensor). One `DynamicQuantizeLinear` serves every rewritten node
//! that reads the same activation. Weights below [`MIN_ELEMENTS`], with non-finite values, or not
//! constant (a graph input may override an initializer) stay float; so does a weight that another node
//! still reads in float (it is then stored twice).
use super::onnx_proto::{
    default_opset, element_count, f32_tensor, f32_values, float_attribute, i8_tensor, int_attr, int_attribute, node,
};
use crate::proto::maas::onnx::{tensor_proto::DataType, GraphProto, ModelProto, NodeProto, TensorProto};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Weights with fewer elements gain nothing worth the extra nodes.
pub const MIN_ELEMENTS: usize = 1024;

/// What to quantize.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// One scale per output column instead of one per tensor.
    pub per_channel: bool,
    /// Quantize constant `Gather` tables (embeddings) too.
    pub embeddings: bool,
}

/// What the rewrite did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub matmul: usize,
    pub gemm: usize,
    pub gather: usize,
    /// Weights of these operators that are activations (computed in the graph), left alone.
    pub not_constant: usize,
    /// Float weights that stayed float, and why (initializer name -> reason).
    pub kept_float: BTreeMap<String, String>,
    /// Bytes of the float32 weights replaced, and of what replaced them (int8 values, scales, zero points).
    pub float_bytes: u64,
    pub int8_bytes: u64,
}

#[derive(Debug, Clone)]
struct Quantized {
    q: String,
    scale: String,
    zp: String,
}

struct Rewriter<'g> {
    opts: Options,
    opset: i64,
    graph: &'g GraphProto,
    inits: HashMap<String, usize>,
    inputs: HashSet<String>,
    /// Every value, initializer and node name in use (new names must differ).
    names: HashSet<String>,
    /// Remaining readers of each name (nodes of this graph and of subgraphs, graph outputs).
    uses: HashMap<String, usize>,
    /// Float initializers that have a quantized replacement.
    replaced: HashSet<String>,
    new_inits: Vec<TensorProto>,
    weights: HashMap<(String, bool, u32), Quantized>,
    tables: HashMap<(String, bool), Quantized>,
    /// Activation -> outputs of its DynamicQuantizeLinear.
    dql: HashMap<String, [String; 3]>,
    report: Report,
}

/// Quantizes `model` in place; the report says what changed.
pub fn quantize(model: &mut ModelProto, opts: Options) -> Result<Report, String> {
    let opset = default_opset(model).unwrap_or(0);
    if opset < 11 {
        return Err(format!(
            "int8-dynamic needs the default operator set at version 11 or later (for DynamicQuantizeLinear); \
             the model imports version {opset}"
        ));
    }
    let graph = model.graph.as_mut().ok_or("the model has no graph")?;
    let mut rw = Rewriter::new(graph, opts, opset);
    let mut out = Vec::with_capacity(graph.node.len() * 2);
    for n in &graph.node {
        let rewritten = match (n.domain(), n.op_type()) {
            ("" | "ai.onnx", "MatMul") => rw.matmul(n)?,
            ("" | "ai.onnx", "Gemm") => rw.gemm(n)?,
            ("" | "ai.onnx", "Gather") if opts.embeddings => rw.gather(n)?,
            ("" | "ai.onnx", _) => None,
            (domain, op) => {
                for i in &n.input {
                    if rw.float_constant(i).is_some_and(|t| element_count(&t.dims).unwrap_or(0) >= MIN_ELEMENTS) {
                        rw.keep(i, format!("read by {domain}.{op}, which is not rewritten"));
                    }
                }
                None
            }
        };
        match rewritten {
            Some(nodes) => out.extend(nodes),
            None => out.push(n.clone()),
        }
    }
    let Rewriter { replaced, uses, new_inits, mut report, .. } = rw;
    let dropped = |name: &str| replaced.contains(name) && uses.get(name).copied().unwrap_or(0) == 0;
    for t in graph.initializer.iter().filter(|t| replaced.contains(t.name()) && !dropped(t.name())) {
        report.kept_float.insert(
            t.name().to_string(),
            "also read in float by another node: stored both in float and in int8".into(),
        );
    }
    report.float_bytes = graph
        .initializer
        .iter()
        .filter(|t| dropped(t.name()))
        .map(|t| 4 * element_count(&t.dims).unwrap_or(0) as u64)
        .sum();
    report.int8_bytes = new_inits.iter().map(|t| t.raw_data.as_ref().map_or(0, |r| r.len() as u64)).sum();
    graph.node = out;
    graph.initializer.retain(|t| !dropped(t.name()));
    graph.value_info.retain(|v| !dropped(v.name()));
    graph.initializer.extend(new_inits);
    Ok(report)
}

/// Adds every name read inside `g` (and its subgraphs) to `uses`.
fn count_uses(g: &GraphProto, uses: &mut HashMap<String, usize>, names: &mut HashSet<String>) {
    for n in &g.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            *uses.entry(i.clone()).or_default() += 1;
        }
        names.extend(n.input.iter().chain(&n.output).cloned());
        names.insert(n.name().to_string());
        for a in &n.attribute {
            for sub in a.g.iter().chain(&a.graphs) {
                count_uses(sub, uses, names);
                names.extend(sub.initializer.iter().map(|t| t.name().to_string()));
                names.extend(sub.input.iter().chain(&sub.output).map(|v| v.name().to_string()));
            }
        }
    }
}

impl<'g> Rewriter<'g> {
    fn new(graph: &'g GraphProto, opts: Options, opset: i64) -> Rewriter<'g> {
        let mut uses = HashMap::new();
        let mut names = HashSet::new();
        count_uses(graph, &mut uses, &mut names);
        for o in &graph.output {
            *uses.entry(o.name().to_string()).or_default() += 1;
        }
        names.extend(graph.initializer.iter().map(|t| t.name().to_string()));
        names.extend(graph.input.iter().chain(&graph.output).chain(&graph.value_info).map(|v| v.name().to_string()));
        Rewriter {
            opts,
            opset,
            graph,
            inits: graph.initializer.iter().enumerate().map(|(i, t)| (t.name().to_string(), i)).collect(),
            inputs: graph.input.iter().map(|v| v.name().to_string()).collect(),
            names,
            uses,
            replaced: HashSet::new(),
            new_inits: Vec::new(),
            weights: HashMap::new(),
            tables: HashMap::new(),
            dql: HashMap::new(),
            report: Report::default(),
        }
    }

    /// A name not used yet, `base` if free.
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut i = 1;
        while self.names.contains(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// The initializer `name` if it is a float32 constant (not overridable by a graph input).
    fn float_constant(&self, name: &str) -> Option<&'g TensorProto> {
        let graph: &'g GraphProto = self.graph;
        let t = &graph.initializer[*self.inits.get(name)?];
        (!self.inputs.contains(name) && t.data_type() == DataType::Float as i32).then_some(t)
    }

    fn keep(&mut self, name: &str, why: String) {
        self.report.kept_float.entry(name.to_string()).or_insert(why);
    }

    /// The weight `name` if it can be quantized (a float constant of `rank` dimensions, or of any rank
    /// with None, big enough, finite), with its values.
    fn weight(&mut self, name: &str, rank: Option<usize>) -> Result<Option<(&'g TensorProto, Vec<f32>)>, String> {
        let Some(t) = self.float_constant(name) else {
            if self.inits.contains_key(name) && !self.inputs.contains(name) {
                return Ok(None); // a constant of another type
            }
            self.report.not_constant += 1;
            return Ok(None);
        };
        let dims_ok = rank.is_none_or(|r| t.dims.len() == r);
        if !dims_ok {
            self.keep(name, format!("has dims {:?}", t.dims));
            return Ok(None);
        }
        let n = element_count(&t.dims).unwrap_or(0);
        if n < MIN_ELEMENTS {
            self.keep(name, format!("small: {n} elements (fewer than {MIN_ELEMENTS})"));
            return Ok(None);
        }
        let values = f32_values(t)?;
        if values.iter().any(|v| !v.is_finite()) {
            self.keep(name, "holds non-finite values".into());
            return Ok(None);
        }
        Ok(Some((t, values)))
    }

    /// The weight's use by the node being rewritten goes away.
    fn consume(&mut self, name: &str) {
        if let Some(u) = self.uses.get_mut(name) {
            *u = u.saturating_sub(1);
        }
        self.replaced.insert(name.to_string());
    }

    fn add_quantized(&mut self, name: &str, dims: Vec<i64>, q: &[i8], scales: &[f32]) -> Quantized {
        let qname = self.fresh(&format!("{name}_quantized"));
        let sname = self.fresh(&format!("{name}_scale"));
        let zname = self.fresh(&format!("{name}_zero_point"));
        let sdims = if scales.len() == 1 { vec![] } else { vec![scales.len() as i64] };
        self.new_inits.push(i8_tensor(&qname, dims, q));
        self.new_inits.push(f32_tensor(&sname, sdims.clone(), scales));
        self.new_inits.push(i8_tensor(&zname, sdims, &vec![0i8; scales.len()]));
        Quantized { q: qname, scale: sname, zp: zname }
    }

    fn matmul(&mut self, n: &NodeProto) -> Result<Option<Vec<NodeProto>>, String> {
        let ([a, b], [y]) = (n.input.as_slice(), n.output.as_slice()) else { return Ok(None) };
        let Some(q) = self.quantized_weight(b, false, 1.0)? else { return Ok(None) };
        self.consume(b);
        self.report.matmul += 1;
        Ok(Some(self.emit(n, a, &q, y, None)))
    }

    fn gemm(&mut self, n: &NodeProto) -> Result<Option<Vec<NodeProto>>, String> {
        let [y] = n.output.as_slice() else { return Ok(None) };
        let (a, b) = match n.input.as_slice() {
            [a, b] | [a, b, _] => (a, b),
            _ => return Ok(None),
        };
        let c = n.input.get(2).filter(|c| !c.is_empty());
        if int_attribute(n, "transA", 0) != 0 {
            if self.float_constant(b).is_some() {
                self.keep(b, "read by a Gemm with transA = 1".into());
            }
            return Ok(None);
        }
        let (alpha, beta) = (float_attribute(n, "alpha", 1.0), float_attribute(n, "beta", 1.0));
        let c_const = c.and_then(|c| self.float_constant(c));
        if c.is_some() && c_const.is_none() && beta != 1.0 {
            if self.float_constant(b).is_some() {
                self.keep(b, "read by a Gemm whose C is computed and beta is not 1".into());
            }
            return Ok(None);
        }
        let Some(q) = self.quantized_weight(b, int_attribute(n, "transB", 0) != 0, alpha)? else {
            return Ok(None);
        };
        let bias = match (c, c_const) {
            (Some(c), Some(t)) if beta != 1.0 => {
                let scaled: Vec<f32> = f32_values(t)?.iter().map(|v| v * beta).collect();
                let name = self.fresh(&format!("{c}_beta"));
                self.new_inits.push(f32_tensor(&name, t.dims.clone(), &scaled));
                self.consume(c);
                Some(name)
            }
            (c, _) => c.cloned(),
        };
        self.consume(b);
        self.report.gemm += 1;
        Ok(Some(self.emit(n, a, &q, y, bias.as_deref())))
    }

    /// The int8 version of weight `b` (`[K, N]`, or `[N, K]` stored transposed), made once.
    fn quantized_weight(&mut self, b: &str, transposed: bool, alpha: f32) -> Result<Option<Quantized>, String> {
        let key = (b.to_string(), transposed, alpha.to_bits());
        if let Some(q) = self.weights.get(&key) {
            return Ok(Some(q.clone()));
        }
        let Some((t, mut values)) = self.weight(b, Some(2))? else { return Ok(None) };
        let (mut k, mut n) = (t.dims[0] as usize, t.dims[1] as usize);
        if transposed {
            values = (0..k * n).map(|i| values[(i % k) * n + i / k]).collect();
            std::mem::swap(&mut k, &mut n);
        }
        let (q, mut scales) = quantize_symmetric(&values, self.opts.per_channel.then_some(n));
        for s in &mut scales {
            *s *= alpha;
        }
        let q = self.add_quantized(b, vec![k as i64, n as i64], &q, &scales);
        self.weights.insert(key, q.clone());
        Ok(Some(q))
    }

    /// DynamicQuantizeLinear (shared) -> Mul(scales) -> MatMulInteger -> Cast -> Mul [-> Add(bias)] -> y.
    fn emit(&mut self, n: &NodeProto, a: &str, q: &Quantized, y: &str, bias: Option<&str>) -> Vec<NodeProto> {
        let base = if n.name().is_empty() { y.to_string() } else { n.name().to_string() };
        let mut nodes = Vec::with_capacity(6);
        let [aq, ascale, azp] = match self.dql.get(a) {
            Some(outs) => outs.clone(),
            None => {
                let outs = [
                    self.fresh(&format!("{a}_quantized")),
                    self.fresh(&format!("{a}_scale")),
                    self.fresh(&format!("{a}_zero_point")),
                ];
                let name = self.fresh(&format!("{a}_DynamicQuantizeLinear"));
                let o: Vec<&str> = outs.iter().map(String::as_str).collect();
                nodes.push(node("DynamicQuantizeLinear", name, &[a], &o, vec![]));
                self.dql.insert(a.to_string(), outs.clone());
                outs
            }
        };
        let scales = self.fresh(&format!("{base}_scales"));
        let yi = self.fresh(&format!("{base}_int32"));
        let yf = self.fresh(&format!("{base}_float"));
        nodes.push(node("Mul", self.fresh(&format!("{base}_scales_mul")), &[&ascale, &q.scale], &[&scales], vec![]));
        nodes.push(node(
            "MatMulInteger",
            self.fresh(&format!("{base}_quant")),
            &[&aq, &q.q, &azp, &q.zp],
            &[&yi],
            vec![],
        ));
        nodes.push(node("Cast", self.fresh(&format!("{base}_cast")), &[&yi], &[&yf], vec![int_attr("to", 1)]));
        match bias {
            None => nodes.push(node("Mul", self.fresh(&format!("{base}_rescale")), &[&yf, &scales], &[y], vec![])),
            Some(c) => {
                let ym = self.fresh(&format!("{base}_scaled"));
                nodes.push(node("Mul", self.fresh(&format!("{base}_rescale")), &[&yf, &scales], &[&ym], vec![]));
                nodes.push(node("Add", self.fresh(&format!("{base}_bias")), &[&ym, c], &[y], vec![]));
            }
        }
        nodes
    }

    fn gather(&mut self, n: &NodeProto) -> Result<Option<Vec<NodeProto>>, String> {
        let ([data, indices], [y]) = (n.input.as_slice(), n.output.as_slice()) else { return Ok(None) };
        let per_channel_ok = |rank: usize, axis: i64| {
            let axis = if axis < 0 { axis + rank as i64 } else { axis };
            rank >= 2 && axis != rank as i64 - 1
        };
        let axis = int_attribute(n, "axis", 0);
        let mut per_channel = self.opts.per_channel && self.opset >= 13;
        let q = match self.float_constant(data) {
            Some(t) => {
                per_channel &= per_channel_ok(t.dims.len(), axis);
                match self.tables.get(&(data.to_string(), per_channel)) {
                    Some(q) => q.clone(),
                    None => {
                        let Some((t, values)) = self.weight(data, None)? else {
                            return Ok(None);
                        };
                        let last = *t.dims.last().unwrap_or(&1) as usize;
                        let (q, scales) = quantize_symmetric(&values, per_channel.then_some(last));
                        let q = self.add_quantized(data, t.dims.clone(), &q, &scales);
                        self.tables.insert((data.to_string(), per_channel), q.clone());
                        q
                    }
                }
            }
            None => return Ok(None), // indices into a computed tensor: not a weight
        };
        self.consume(data);
        self.report.gather += 1;
        let base = if n.name().is_empty() { y.to_string() } else { n.name().to_string() };
        let gq = self.fresh(&format!("{y}_quantized"));
        let mut gathered = n.clone();
        gathered.input = vec![q.q.clone(), indices.clone()];
        gathered.output = vec![gq.clone()];
        let attrs = if per_channel { vec![int_attr("axis", -1)] } else { vec![] };
        let name = self.fresh(&format!("{base}_dequantize"));
        Ok(Some(vec![gathered, node("DequantizeLinear", name, &[&gq, &q.scale, &q.zp], &[y], attrs)]))
    }
}

/// Symmetric int8 of `values`: one scale (max |v| / 127), or with `columns` = Some(c) one per column of
/// a row-major `[.., c]` tensor. A scale of 0 (all zeros) becomes 1.
pub fn quantize_symmetric(values: &[f32], columns: Option<usize>) -> (Vec<i8>, Vec<f32>) {
    let c = columns.unwrap_or(1).max(1);
    let mut amax = vec![0f32; c];
    for (i, v) in values.iter().enumerate() {
        let m = &mut amax[if columns.is_some() { i % c } else { 0 }];
        *m = m.max(v.abs());
    }
    let scales: Vec<f32> = amax.iter().map(|&m| if m > 0.0 { m / 127.0 } else { 1.0 }).collect();
    let q = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let s = scales[if columns.is_some() { i % c } else { 0 }];
            (v / s).round_ties_even().clamp(-127.0, 127.0) as i8
        })
        .collect();
    (q, scales)
}

#[cfg(test)]
#[path = "quantize_tests.rs"]
mod tests;
