//! The guard's inputs: `.npy` files (`DIR/<sample>/<input name>.npy`), recorded TF Serving warmup
//! requests (a TFRecord file of `PredictionLog`s: real traffic), or inputs synthesized from the
//! signature with some sense of what transformer inputs hold.
//!
//! A *sample* is one run of both models: one sample directory, one record, or one synthesized batch
//! of `batch` rows.
use crate::manager::tfrecord;
use crate::proto::maas::onnx::{GraphProto, ModelProto};
use crate::tensor::{element_count, DType, Tensor, TensorData, TensorSpec};
use bytes::Bytes;
use std::collections::HashMap;
use std::path::Path;

/// One run's inputs.
pub type Feed = Vec<(String, Tensor)>;

/// The guard's samples and where they came from.
#[derive(Debug, Clone)]
pub struct Samples {
    /// `npy`, `recorded` or `synthesized`.
    pub kind: &'static str,
    /// The directory or file they were read from.
    pub from: Option<String>,
    pub feeds: Vec<Feed>,
}

impl AsRef<[Feed]> for Samples {
    fn as_ref(&self) -> &[Feed] {
        &self.feeds
    }
}

/// How synthesized inputs are shaped.
#[derive(Debug, Clone, Copy)]
pub struct Synth {
    pub samples: usize,
    /// Value of a dynamic first dimension.
    pub batch: i64,
    /// Value of every other dynamic dimension.
    pub seq: i64,
    pub seed: u64,
}

/// Reads `.npy` samples from a directory, or recorded requests from a TFRecord file, at most `max`.
pub fn read(path: &Path, inputs: &[TensorSpec], max: usize) -> Result<Samples, String> {
    if path.is_dir() {
        read_npy_dir(path, inputs, max)
    } else if path.is_file() {
        read_recorded(path, max)
    } else {
        Err(format!("--guard-inputs {} is neither a directory of .npy samples nor a warmup file", path.display()))
    }
}

fn read_npy_dir(dir: &Path, inputs: &[TensorSpec], max: usize) -> Result<Samples, String> {
    let mut samples: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read --guard-inputs {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    samples.sort();
    samples.truncate(max);
    if samples.is_empty() {
        return Err(format!(
            "--guard-inputs {} holds no sample directories (expected {}/<sample>/<input name>.npy)",
            dir.display(),
            dir.display()
        ));
    }
    let mut feeds = Vec::with_capacity(samples.len());
    for s in &samples {
        let mut feed = Vec::with_capacity(inputs.len());
        for spec in inputs {
            let file = s.join(format!("{}.npy", spec.name));
            let t = read_npy(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            if t.dtype != spec.dtype {
                return Err(format!(
                    "{}: input '{}' is {}, the file holds {}",
                    file.display(),
                    spec.name,
                    spec.dtype,
                    t.dtype
                ));
            }
            feed.push((spec.name.clone(), t));
        }
        for entry in std::fs::read_dir(s).map_err(|e| format!("cannot read {}: {e}", s.display()))? {
            let p = entry.map_err(|e| format!("cannot read {}: {e}", s.display()))?.path();
            let stem = p.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if p.extension().is_some_and(|e| e == "npy") && !inputs.iter().any(|i| i.name == stem) {
                let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
                return Err(format!("{}: the model has no input '{stem}' (inputs: {})", p.display(), names.join(", ")));
            }
        }
        feeds.push(feed);
    }
    Ok(Samples { kind: "npy", from: Some(dir.display().to_string()), feeds })
}

/// Reads the requests of a TF Serving warmup file (`assets.extra/tf_serving_warmup_requests`).
pub fn read_recorded(file: &Path, max: usize) -> Result<Samples, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let records = tfrecord::read_records(&Bytes::from(bytes), crate::manager::warmup::MAX_WARMUP_RECORDS).map_err(
        |e| match e {
            tfrecord::RecordError::Corrupt { record, message } => {
                format!("{} record {record}: {message}", file.display())
            }
            tfrecord::RecordError::TooMany { max } => format!("{} has more than {max} records", file.display()),
        },
    )?;
    let ctx = format!("guard input {}", file.display());
    let mut feeds = Vec::new();
    for (i, data) in records.into_iter().take(max).enumerate() {
        let req = crate::manager::warmup::recorded_request(&ctx, data)
            .map_err(|e| format!("{} record {}: {e}", file.display(), i + 1))?;
        // Bounded like a request to a server with the default --max-tensor-bytes (1 GiB).
        let budget = &mut crate::tensor::Budget::new(1 << 30);
        let req = crate::api::tfserving::decode_request(&ctx, req, budget)
            .map_err(|e| format!("{} record {}: {e}", file.display(), i + 1))?;
        feeds.push(req.inputs);
    }
    if feeds.is_empty() {
        return Err(format!("{} holds no records", file.display()));
    }
    Ok(Samples { kind: "recorded", from: Some(file.display().to_string()), feeds })
}

/// Reads one `.npy` file (format 1.0-3.0, little-endian, C order, numeric or bool).
pub fn read_npy(path: &Path) -> Result<Tensor, String> {
    let b = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    let (len, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let header = b.get(start..start + len).ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    let field = |key: &str| -> Result<&str, String> {
        let at = header.find(&format!("'{key}'")).ok_or_else(|| format!("the .npy header has no '{key}'"))?;
        let rest = header[at + key.len() + 2..].trim_start().strip_prefix(':').unwrap_or("").trim_start();
        Ok(rest)
    };
    let descr = field("descr")?;
    let descr = descr.get(1..).and_then(|d| d.split('\'').next()).unwrap_or("");
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-ordered arrays are not supported (save with np.ascontiguousarray)".into());
    }
    let shape = field("shape")?;
    let shape = shape.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or("cannot read the .npy shape")?;
    let shape: Vec<i64> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<i64>().map_err(|_| format!("bad .npy shape entry '{s}'")))
        .collect::<Result<_, _>>()?;
    let dtype = match descr.trim_start_matches(['<', '|', '=']) {
        "f4" => DType::F32,
        "f8" => DType::F64,
        "f2" => DType::F16,
        "i1" => DType::I8,
        "i2" => DType::I16,
        "i4" => DType::I32,
        "i8" => DType::I64,
        "u1" => DType::U8,
        "u2" => DType::U16,
        "u4" => DType::U32,
        "u8" => DType::U64,
        "b1" => DType::Bool,
        _ if descr.starts_with('>') => return Err(format!("big-endian arrays ('{descr}') are not supported")),
        other => return Err(format!("unsupported .npy dtype '{other}' (numeric and bool arrays only)")),
    };
    let data = Bytes::from(b).slice(start + len..);
    Tensor::new(dtype, shape, TensorData::Raw(data)).map_err(|e| e.to_string())
}

/// For each graph input that indexes a constant `Gather` table (directly or through Cast, Identity,
/// Reshape, Squeeze, Unsqueeze or Flatten), the table's size along the gathered axis.
pub fn vocabulary_sizes(model: &ModelProto) -> HashMap<String, i64> {
    let mut sizes = HashMap::new();
    let Some(g) = model.graph.as_ref() else { return sizes };
    let inits: HashMap<&str, &Vec<i64>> = g.initializer.iter().map(|t| (t.name(), &t.dims)).collect();
    for input in &g.input {
        let mut frontier = vec![input.name().to_string()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for v in &frontier {
                if let Some(n) = table_size(g, &inits, v) {
                    sizes.entry(input.name().to_string()).and_modify(|s: &mut i64| *s = (*s).min(n)).or_insert(n);
                }
                for n in g.node.iter().filter(|n| n.input.first() == Some(v)) {
                    if matches!(n.op_type(), "Cast" | "Identity" | "Reshape" | "Squeeze" | "Unsqueeze" | "Flatten") {
                        next.extend(n.output.iter().cloned());
                    }
                }
            }
            frontier = next;
        }
    }
    sizes
}

fn table_size(g: &GraphProto, inits: &HashMap<&str, &Vec<i64>>, v: &str) -> Option<i64> {
    g.node
        .iter()
        .filter(|n| n.op_type() == "Gather" && n.input.get(1).map(String::as_str) == Some(v))
        .filter_map(|n| {
            let dims = inits.get(n.input.first()?.as_str())?;
            let axis = super::onnx_proto::int_attribute(n, "axis", 0);
            let axis = if axis < 0 { axis + dims.len() as i64 } else { axis };
            dims.get(usize::try_from(axis).ok()?).copied()
        })
        .min()
}

/// Inputs made up from the signature: `*input_ids*` uniform below the vocabulary size (the rows of
/// the Gather table the input feeds; 16 if none is found), `*attention_mask*` ones with a random
/// number (up to half) of trailing zeros per row, `*token_type_ids*` 0 then 1 from a random point on,
/// other integers in [0, 16), bools 0/1, floats uniform in [-1, 1), strings `s<number>`.
pub fn synthesize(inputs: &[TensorSpec], vocab: &HashMap<String, i64>, s: Synth) -> Result<Samples, String> {
    let mut feeds = Vec::with_capacity(s.samples);
    for sample in 0..s.samples {
        let mut feed = Vec::with_capacity(inputs.len());
        for spec in inputs {
            let shape: Vec<i64> = spec
                .shape
                .iter()
                .enumerate()
                .map(|(i, &d)| {
                    if d >= 0 {
                        d
                    } else if i == 0 {
                        s.batch
                    } else {
                        s.seq
                    }
                })
                .collect();
            let mut rng = Rng::new(s.seed ^ (sample as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15), &spec.name);
            let t = synthesize_one(spec, shape, vocab.get(&spec.name).copied(), &mut rng)?;
            feed.push((spec.name.clone(), t));
        }
        feeds.push(feed);
    }
    Ok(Samples { kind: "synthesized", from: None, feeds })
}

fn synthesize_one(spec: &TensorSpec, shape: Vec<i64>, vocab: Option<i64>, rng: &mut Rng) -> Result<Tensor, String> {
    let n = element_count(&shape).map_err(|e| format!("input '{}': {e}", spec.name))?;
    let row = shape.last().copied().unwrap_or(1).max(1) as usize;
    let lower = spec.name.to_ascii_lowercase();
    let int_values: Vec<i64> = if lower.contains("attention_mask") {
        let mut v = vec![1i64; n];
        for r in v.chunks_mut(row) {
            let zeros = rng.below(row as u64 / 2 + 1) as usize;
            r[row - zeros.min(row - 1)..].fill(0);
        }
        v
    } else if lower.contains("token_type_ids") {
        let mut v = vec![0i64; n];
        for r in v.chunks_mut(row) {
            let from = 1 + rng.below(row as u64) as usize;
            if from < row {
                r[from..].fill(1);
            }
        }
        v
    } else if lower.contains("input_ids") {
        let top = vocab.unwrap_or(16).max(1) as u64;
        (0..n).map(|_| rng.below(top) as i64).collect()
    } else {
        (0..n).map(|_| rng.below(16) as i64).collect()
    };
    let raw: Vec<u8> = match spec.dtype {
        DType::F32 => (0..n).flat_map(|_| (rng.unit() as f32).to_le_bytes()).collect(),
        DType::F64 => (0..n).flat_map(|_| rng.unit().to_le_bytes()).collect(),
        DType::F16 => (0..n).flat_map(|_| half::f16::from_f64(rng.unit()).to_le_bytes()).collect(),
        DType::BF16 => (0..n).flat_map(|_| half::bf16::from_f64(rng.unit()).to_le_bytes()).collect(),
        DType::I8 | DType::U8 => int_values.iter().map(|&v| v as u8).collect(),
        DType::I16 | DType::U16 => int_values.iter().flat_map(|&v| (v as u16).to_le_bytes()).collect(),
        DType::I32 | DType::U32 => int_values.iter().flat_map(|&v| (v as u32).to_le_bytes()).collect(),
        DType::I64 | DType::U64 => int_values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
        DType::Bool => (0..n).map(|_| (rng.next() & 1) as u8).collect(),
        DType::String => {
            let items = (0..n).map(|_| Bytes::from(format!("s{}", rng.below(1000)))).collect();
            return Tensor::new(spec.dtype, shape, TensorData::Strings(items)).map_err(|e| e.to_string());
        }
    };
    Tensor::new(spec.dtype, shape, TensorData::Raw(Bytes::from(raw))).map_err(|e| format!("input '{}': {e}", spec.name))
}

/// SplitMix64, seeded with the seed and the input's name.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, name: &str) -> Rng {
        Rng(name.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: DType, shape: &[i64]) -> TensorSpec {
        TensorSpec { name: name.into(), dtype, shape: shape.to_vec() }
    }

    fn ints(t: &Tensor) -> Vec<i64> {
        let TensorData::Raw(b) = &t.data else { panic!() };
        b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
    }

    #[test]
    fn synthesized_inputs_make_sense() {
        let specs = [
            spec("input_ids", DType::I64, &[-1, -1]),
            spec("attention_mask", DType::I64, &[-1, -1]),
            spec("token_type_ids", DType::I64, &[-1, -1]),
            spec("x", DType::F32, &[-1, 3]),
        ];
        let vocab = HashMap::from([("input_ids".to_string(), 30522)]);
        let s = synthesize(&specs, &vocab, Synth { samples: 8, batch: 4, seq: 32, seed: 1 }).unwrap();
        assert_eq!(s.feeds.len(), 8);
        let mut any_padding = false;
        let mut max_id = 0;
        for feed in &s.feeds {
            assert_eq!(feed[0].1.shape, vec![4, 32]);
            assert_eq!(feed[3].1.shape, vec![4, 3]);
            let ids = ints(&feed[0].1);
            assert!(ids.iter().all(|&i| (0..30522).contains(&i)));
            max_id = max_id.max(*ids.iter().max().unwrap());
            for row in ints(&feed[1].1).chunks(32) {
                assert_eq!(row[0], 1, "every row attends to something");
                let ones = row.iter().take_while(|&&v| v == 1).count();
                assert!(row[ones..].iter().all(|&v| v == 0), "zeros trail: {row:?}");
                assert!(ones >= 16);
                any_padding |= ones < 32;
            }
            for row in ints(&feed[2].1).chunks(32) {
                assert_eq!(row[0], 0);
                assert!(row.windows(2).all(|w| w[0] <= w[1]), "0s then 1s: {row:?}");
            }
        }
        assert!(any_padding);
        assert!(max_id > 1000, "ids spread over the vocabulary: {max_id}");
        // Deterministic.
        let again = synthesize(&specs, &vocab, Synth { samples: 8, batch: 4, seq: 32, seed: 1 }).unwrap();
        assert_eq!(again.feeds[5][0].1, s.feeds[5][0].1);
        assert_ne!(s.feeds[4][0].1, s.feeds[5][0].1);
    }

    #[test]
    fn npy_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.npy");
        let header = "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 3), }";
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        let pad = 64 - (10 + header.len() + 1) % 64;
        let h = format!("{header}{}\n", " ".repeat(pad));
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        for v in 0..6i64 {
            b.extend_from_slice(&v.to_le_bytes());
        }
        std::fs::write(&f, &b).unwrap();
        let t = read_npy(&f).unwrap();
        assert_eq!((t.dtype, t.shape.clone()), (DType::I64, vec![2, 3]));
        assert_eq!(ints(&t), vec![0, 1, 2, 3, 4, 5]);
        std::fs::write(&f, b"nope").unwrap();
        assert_eq!(read_npy(&f).unwrap_err(), "not a .npy file (no \\x93NUMPY magic)");
    }
}
