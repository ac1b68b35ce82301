//! Reading and writing ONNX model files with our own schema (`proto/maas/onnx.proto`): external data
//! is pulled into memory on load (slices of the data file, no copy per tensor) and written back into
//! one data file next to the model when asked to, so that everything in between works on plain
//! in-memory tensors.
use crate::proto::maas::onnx::{
    attribute_proto::AttributeType, tensor_proto::DataLocation, tensor_proto::DataType, AttributeProto, GraphProto,
    ModelProto, NodeProto, StringStringEntryProto, TensorProto,
};
use bytes::Bytes;
use prost::Message;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// Protobuf refuses messages of 2 GiB and more: larger models must keep their weights outside the file.
pub const PROTOBUF_LIMIT: u64 = (2 << 30) - 1;

/// Tensors at least this large go to the data file when a model is written with external data.
pub const EXTERNAL_MIN_BYTES: usize = 1024;

/// Offsets of tensors in a written data file are multiples of this (lets ONNX Runtime map them).
const EXTERNAL_ALIGN: u64 = 4096;

/// A model read from disk, every tensor's bytes in memory.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub model: ModelProto,
    /// The external data files its tensors were read from (relative to the model's directory).
    pub external_files: Vec<String>,
}

impl LoadedModel {
    pub fn has_external_data(&self) -> bool {
        !self.external_files.is_empty()
    }
}

/// Reads `path` and the external data files its tensors name.
pub fn load(path: &Path) -> Result<LoadedModel, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut model = ModelProto::decode(Bytes::from(bytes))
        .map_err(|e| format!("{} is not an ONNX model (cannot decode a ModelProto: {e})", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files: HashMap<String, Bytes> = HashMap::new();
    let Some(graph) = model.graph.as_mut() else {
        return Err(format!("{} is not an ONNX model: it has no graph", path.display()));
    };
    for_each_tensor(graph, &mut |t| internalize(t, dir, &mut files)).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut external_files: Vec<String> = files.into_keys().collect();
    external_files.sort();
    Ok(LoadedModel { model, external_files })
}

/// Calls `f` on every tensor of `graph`: initializers, sparse initializers, tensors in node attributes,
/// and those of every subgraph.
pub fn for_each_tensor(
    graph: &mut GraphProto,
    f: &mut impl FnMut(&mut TensorProto) -> Result<(), String>,
) -> Result<(), String> {
    for t in &mut graph.initializer {
        f(t)?;
    }
    for s in &mut graph.sparse_initializer {
        for t in [s.values.as_mut(), s.indices.as_mut()].into_iter().flatten() {
            f(t)?;
        }
    }
    for node in &mut graph.node {
        for a in &mut node.attribute {
            if let Some(t) = a.t.as_mut() {
                f(t)?;
            }
            for t in &mut a.tensors {
                f(t)?;
            }
            for g in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                for_each_tensor(g, f)?;
            }
        }
    }
    Ok(())
}

fn entry<'a>(t: &'a TensorProto, key: &str) -> Option<&'a str> {
    t.external_data.iter().find(|e| e.key() == key).map(|e| e.value())
}

/// Replaces an external tensor's reference by its bytes (a slice of the data file, read once).
fn internalize(t: &mut TensorProto, dir: &Path, files: &mut HashMap<String, Bytes>) -> Result<(), String> {
    if t.data_location() != DataLocation::External {
        return Ok(());
    }
    let name = t.name().to_string();
    let location = entry(t, "location")
        .ok_or_else(|| format!("tensor '{name}' is stored externally but names no location"))?
        .to_string();
    let rel = Path::new(&location);
    if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!(
            "tensor '{name}': external data location '{location}' must be a path inside the model's directory"
        ));
    }
    let number = |key: &str| -> Result<Option<u64>, String> {
        entry(t, key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| format!("tensor '{name}': external data {key} '{v}' is not a number"))
            })
            .transpose()
    };
    let offset = number("offset")?.unwrap_or(0);
    let length = number("length")?;
    if !files.contains_key(&location) {
        let file = dir.join(rel);
        let data = std::fs::read(&file)
            .map_err(|e| format!("tensor '{name}': cannot read its external data file {}: {e}", file.display()))?;
        files.insert(location.clone(), Bytes::from(data));
    }
    let data = &files[&location];
    let end = match length {
        Some(l) => offset.checked_add(l),
        None => Some(data.len() as u64),
    };
    let end = end.filter(|&e| e <= data.len() as u64 && offset <= e).ok_or_else(|| {
        format!(
            "tensor '{name}': external data offset {offset} length {} is outside {location} ({} bytes)",
            length.map_or("(rest)".to_string(), |l| l.to_string()),
            data.len()
        )
    })?;
    t.raw_data = Some(data.slice(offset as usize..end as usize));
    t.external_data.clear();
    t.data_location = None;
    Ok(())
}

/// Writes `model` to `path`. With `external` = Some(file name), every tensor of at least
/// [`EXTERNAL_MIN_BYTES`] goes to that file in the same directory. Both files are synced to disk.
/// Returns the file names written.
pub fn save(model: &ModelProto, path: &Path, external: Option<&str>) -> Result<Vec<String>, String> {
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut model = model.clone();
    let mut written = vec![file_name];
    if let Some(data_name) = external {
        let data_path = path.with_file_name(data_name);
        let mut data: Vec<u8> = Vec::new();
        let graph = model.graph.as_mut().ok_or("the model has no graph")?;
        for_each_tensor(graph, &mut |t| {
            let Some(raw) = t.raw_data.as_ref().filter(|r| r.len() >= EXTERNAL_MIN_BYTES) else {
                return Ok(());
            };
            let offset = (data.len() as u64).next_multiple_of(EXTERNAL_ALIGN);
            data.resize(offset as usize, 0);
            data.extend_from_slice(raw);
            let kv = |k: &str, v: String| StringStringEntryProto { key: Some(k.into()), value: Some(v) };
            t.external_data = vec![
                kv("location", data_name.to_string()),
                kv("offset", offset.to_string()),
                kv("length", raw.len().to_string()),
            ];
            t.data_location = Some(DataLocation::External as i32);
            t.raw_data = None;
            Ok(())
        })?;
        write_synced(&data_path, &data)?;
        written.push(data_name.to_string());
    }
    let bytes = model.encode_to_vec();
    if bytes.len() as u64 > PROTOBUF_LIMIT {
        return Err(format!(
            "the model would be {} bytes, over protobuf's 2 GiB limit; write its weights as external data",
            bytes.len()
        ));
    }
    write_synced(path, &bytes)?;
    Ok(written)
}

/// Writes a file and syncs it to disk.
pub fn write_synced(path: &Path, data: &[u8]) -> Result<(), String> {
    let mut f = std::fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(data).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.sync_all().map_err(|e| format!("cannot sync {}: {e}", path.display()))
}

/// The files of a model as written: the model file and the external data files it names (read without
/// reading the data).
pub fn model_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut model = ModelProto::decode(Bytes::from(bytes))
        .map_err(|e| format!("{} is not an ONNX model (cannot decode a ModelProto: {e})", path.display()))?;
    let mut locations = std::collections::BTreeSet::new();
    if let Some(g) = model.graph.as_mut() {
        for_each_tensor(g, &mut |t| {
            if t.data_location() == DataLocation::External {
                locations.extend(entry(t, "location").map(str::to_string));
            }
            Ok(())
        })?;
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files = vec![path.to_path_buf()];
    files.extend(locations.iter().map(|f| dir.join(f)));
    Ok(files)
}

/// Total size in bytes of `files`.
pub fn total_size(files: &[PathBuf]) -> Result<u64, String> {
    files.iter().try_fold(0u64, |acc, f| {
        let len = std::fs::metadata(f).map_err(|e| format!("cannot stat {}: {e}", f.display()))?.len();
        Ok(acc + len)
    })
}

/// Total bytes of the tensors' data (what decides whether a model fits protobuf's limit).
pub fn tensor_bytes(graph: &GraphProto) -> u64 {
    fn one(t: &TensorProto) -> u64 {
        t.raw_data.as_ref().map_or(0, |r| r.len() as u64)
            + 4 * (t.float_data.len() + t.int32_data.len()) as u64
            + 8 * (t.int64_data.len() + t.double_data.len() + t.uint64_data.len()) as u64
    }
    let mut total: u64 = graph.initializer.iter().map(one).sum();
    for s in &graph.sparse_initializer {
        total += s.values.as_ref().map_or(0, one) + s.indices.as_ref().map_or(0, one);
    }
    for a in graph.node.iter().flat_map(|n| &n.attribute) {
        total += a.t.as_ref().map_or(0, one) + a.tensors.iter().map(one).sum::<u64>();
        total += a.g.iter().chain(&a.graphs).map(tensor_bytes).sum::<u64>();
    }
    total
}

/// Number of elements of a tensor's dims (None if negative or overflowing).
pub fn element_count(dims: &[i64]) -> Option<usize> {
    dims.iter().try_fold(1usize, |n, &d| usize::try_from(d).ok().and_then(|d| n.checked_mul(d)))
}

/// The values of a float32 tensor (raw little-endian bytes or `float_data`).
pub fn f32_values(t: &TensorProto) -> Result<Vec<f32>, String> {
    if t.data_type() != DataType::Float as i32 {
        return Err(format!("tensor '{}' is not float32", t.name()));
    }
    let n = element_count(&t.dims).ok_or_else(|| format!("tensor '{}' has invalid dims {:?}", t.name(), t.dims))?;
    let values: Vec<f32> = match &t.raw_data {
        Some(raw) => {
            if raw.len() != n * 4 {
                return Err(format!("tensor '{}': {} bytes of data for {n} float32 values", t.name(), raw.len()));
            }
            raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }
        None => t.float_data.clone(),
    };
    if values.len() != n {
        return Err(format!("tensor '{}': {} values for dims {:?}", t.name(), values.len(), t.dims));
    }
    Ok(values)
}

/// A tensor initializer holding `raw` little-endian bytes.
pub fn raw_tensor(name: &str, data_type: DataType, dims: Vec<i64>, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        data_type: Some(data_type as i32),
        dims,
        raw_data: Some(Bytes::from(raw)),
        ..TensorProto::default()
    }
}

pub fn f32_tensor(name: &str, dims: Vec<i64>, values: &[f32]) -> TensorProto {
    raw_tensor(name, DataType::Float, dims, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

pub fn i8_tensor(name: &str, dims: Vec<i64>, values: &[i8]) -> TensorProto {
    raw_tensor(name, DataType::Int8, dims, values.iter().map(|&v| v as u8).collect())
}

/// An attribute `name` of a node, if it has one.
pub fn attribute<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name() == name)
}

pub fn int_attribute(node: &NodeProto, name: &str, default: i64) -> i64 {
    attribute(node, name).and_then(|a| a.i).unwrap_or(default)
}

pub fn float_attribute(node: &NodeProto, name: &str, default: f32) -> f32 {
    attribute(node, name).and_then(|a| a.f).unwrap_or(default)
}

pub fn int_attr(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(value),
        ..AttributeProto::default()
    }
}

/// A node of the default operator set.
pub fn node(op: &str, name: String, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: Some(op.to_string()),
        name: Some(name),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..NodeProto::default()
    }
}

/// The model's version of the default operator set (`""` / `ai.onnx`).
pub fn default_opset(model: &ModelProto) -> Option<i64> {
    model.opset_import.iter().find(|o| matches!(o.domain(), "" | "ai.onnx")).map(|o| o.version())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_data_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<f32> = (0..600).map(|i| i as f32 * 0.5).collect();
        let graph = GraphProto {
            name: Some("g".into()),
            initializer: vec![f32_tensor("big", vec![20, 30], &big), f32_tensor("small", vec![2], &[1.0, 2.0])],
            ..GraphProto::default()
        };
        let model = ModelProto { ir_version: Some(8), graph: Some(graph), ..ModelProto::default() };
        let path = dir.path().join("model.onnx");
        assert_eq!(save(&model, &path, Some("model.onnx.data")).unwrap(), vec!["model.onnx", "model.onnx.data"]);
        // The model file holds a reference, the data file the bytes.
        let on_disk = ModelProto::decode(Bytes::from(std::fs::read(&path).unwrap())).unwrap();
        let t = &on_disk.graph.as_ref().unwrap().initializer[0];
        assert_eq!(t.data_location(), DataLocation::External);
        assert_eq!(t.raw_data, None);
        assert_eq!(entry(t, "location"), Some("model.onnx.data"));
        assert_eq!(entry(t, "length"), Some("2400"));
        assert!(on_disk.graph.as_ref().unwrap().initializer[1].raw_data.is_some(), "small tensors stay inline");
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.external_files, vec!["model.onnx.data"]);
        assert_eq!(f32_values(&loaded.model.graph.as_ref().unwrap().initializer[0]).unwrap(), big);
        assert_eq!(model_files(&path).unwrap().len(), 2);

        // A location outside the model's directory is refused, as is a range past the file's end.
        let mut bad = on_disk.clone();
        bad.graph.as_mut().unwrap().initializer[0].external_data[0].value = Some("../x.data".into());
        std::fs::write(&path, bad.encode_to_vec()).unwrap();
        let e = load(&path).unwrap_err();
        assert!(
            e.ends_with("tensor 'big': external data location '../x.data' must be a path inside the model's directory"),
            "{e}"
        );
        let mut bad = on_disk;
        bad.graph.as_mut().unwrap().initializer[0].external_data[2].value = Some("999999".into());
        std::fs::write(&path, bad.encode_to_vec()).unwrap();
        let e = load(&path).unwrap_err();
        assert!(e.contains("tensor 'big': external data offset 0 length 999999 is outside model.onnx.data"), "{e}");
    }
}
