//! Merging the requests of a batch into one tensor per input (concatenated along the first dimension,
//! padded at the end of the other dimensions), and cutting the batch's outputs back: rows per request,
//! and dimension 1 to the request's own length (`trim_outputs`). Slices share the batch's buffer.
//!
//! Every size here comes from a client's shapes, so it is computed with checked arithmetic, and every
//! buffer is reserved with `try_reserve`: a batch too large for memory is an error, never an abort.
use crate::tensor::{fmt_shape, DType, Tensor, TensorData};
use bytes::Bytes;

/// Why tensors could not be merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MergeError {
    /// The merged tensor's shape, and its size in bytes when that is countable: too large to allocate.
    TooLarge(Vec<i64>, Option<usize>),
    /// Parts that do not fit together (a bug upstream: requests are validated before they queue).
    Mismatch(String),
}

fn reserve<T>(n: Option<usize>, shape: &[i64], size: usize) -> Result<Vec<T>, MergeError> {
    let too_large = || MergeError::TooLarge(shape.to_vec(), n.and_then(|n| n.checked_mul(size)));
    let n = n.ok_or_else(too_large)?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| too_large())?;
    Ok(v)
}

/// Concatenates `parts` along dimension 0 into `run_rows` rows. Parts whose other dimensions are
/// smaller than the largest are padded at the end of each dimension with `fill` (little-endian bytes
/// of one element), or with their own first element when there is none; rows beyond the parts' are
/// copies of the first row (zeros if there is none).
pub(crate) fn merge_tensors(
    dtype: DType,
    parts: &[&Tensor],
    run_rows: usize,
    fill: Option<&[u8]>,
) -> Result<Tensor, MergeError> {
    let mismatch = |m: &str| MergeError::Mismatch(m.to_string());
    let first = parts.first().ok_or_else(|| mismatch("no requests to merge"))?;
    let rank = first.shape.len();
    if rank == 0 || parts.iter().any(|p| p.shape.len() != rank) {
        return Err(mismatch("inputs of different ranks"));
    }
    let rows: usize = parts.iter().map(|p| p.shape[0].max(0) as usize).sum();
    if parts.len() == 1 && rows == run_rows {
        return Ok((*first).clone());
    }
    let mut inner: Vec<i64> = first.shape[1..].to_vec();
    for p in parts {
        for (d, &n) in inner.iter_mut().zip(&p.shape[1..]) {
            *d = (*d).max(n);
        }
    }
    let mut shape = Vec::with_capacity(rank);
    shape.push(i64::try_from(run_rows).map_err(|_| mismatch("too many rows"))?);
    shape.extend_from_slice(&inner);
    let row_elems = inner.iter().try_fold(1usize, |n, &d| n.checked_mul(d.max(0) as usize));
    let total_elems = row_elems.and_then(|r| r.checked_mul(run_rows));
    let data = match dtype.size() {
        Some(size) => {
            let fill = fill.filter(|f| f.len() == size);
            let mut out: Vec<u8> = reserve(total_elems.and_then(|n| n.checked_mul(size)), &shape, 1)?;
            for p in parts {
                let TensorData::Raw(b) = &p.data else { return Err(mismatch("string data in a numeric tensor")) };
                if p.shape[1..] == inner[..] {
                    out.extend_from_slice(b);
                } else {
                    let own = b.get(..size).unwrap_or(&[]);
                    let pad = fill.unwrap_or(if own.len() == size { own } else { &[0; 16][..size] });
                    pad_into(&p.shape, &inner, &mut |src| match src.and_then(|i| b.get(i * size..(i + 1) * size)) {
                        Some(e) => out.extend_from_slice(e),
                        None => out.extend_from_slice(pad),
                    });
                }
            }
            let row = row_elems.unwrap_or(0) * size;
            for _ in rows..run_rows {
                // The first row is at the front of the buffer by now.
                if rows > 0 {
                    out.extend_from_within(..row);
                } else {
                    out.resize(out.len() + row, 0);
                }
            }
            TensorData::Raw(Bytes::from(out))
        }
        None => {
            let mut out: Vec<Bytes> = reserve(total_elems, &shape, std::mem::size_of::<Bytes>())?;
            for p in parts {
                let TensorData::Strings(s) = &p.data else { return Err(mismatch("numeric data in a string tensor")) };
                if p.shape[1..] == inner[..] {
                    out.extend_from_slice(s);
                } else {
                    let pad = s.first().cloned().unwrap_or_default();
                    pad_into(&p.shape, &inner, &mut |src| {
                        out.push(src.and_then(|i| s.get(i)).cloned().unwrap_or_else(|| pad.clone()))
                    });
                }
            }
            let row = row_elems.unwrap_or(0);
            for _ in rows..run_rows {
                if rows > 0 {
                    out.extend_from_within(..row);
                } else {
                    out.resize(out.len() + row, Bytes::new());
                }
            }
            TensorData::Strings(out)
        }
    };
    Tensor::new(dtype, shape, data).map_err(|e| MergeError::Mismatch(e.to_string()))
}

/// Walks a tensor of `shape` padded to `[shape[0], inner...]` in row-major order, calling `emit` with
/// each element's index in the unpadded tensor, or None for padding.
fn pad_into(shape: &[i64], inner: &[i64], emit: &mut dyn FnMut(Option<usize>)) {
    let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    let mut target = Vec::with_capacity(dims.len());
    target.push(dims[0]);
    target.extend(inner.iter().map(|&d| d.max(0) as usize));
    walk(&dims, &target, 0, Some(0), emit);
}

fn walk(dims: &[usize], target: &[usize], axis: usize, base: Option<usize>, emit: &mut dyn FnMut(Option<usize>)) {
    if axis == dims.len() {
        emit(base);
        return;
    }
    let stride: usize = dims[axis + 1..].iter().product();
    for i in 0..target[axis] {
        let inside = base.filter(|_| i < dims[axis]).map(|b| b + i * stride);
        walk(dims, target, axis + 1, inside, emit);
    }
}

/// Rows `[offset, offset + n)` of a tensor with `rows` rows (no copy: a slice of the same buffer for
/// fixed-width data, shared handles for strings).
pub(crate) fn slice_rows(t: &Tensor, offset: usize, n: usize, rows: usize) -> Result<Tensor, String> {
    if offset == 0 && n == rows {
        return Ok(t.clone());
    }
    let mut shape = t.shape.clone();
    shape[0] = i64::try_from(n).map_err(|_| "too many rows")?;
    let span = |len: usize| {
        let row = len.checked_div(rows).unwrap_or(0);
        let (start, end) = (offset.checked_mul(row), offset.checked_add(n).and_then(|e| e.checked_mul(row)));
        start.zip(end).filter(|&(_, e)| e <= len).ok_or_else(|| format!("rows {offset}..{} of {rows}", offset + n))
    };
    let data = match &t.data {
        TensorData::Raw(b) => {
            let (s, e) = span(b.len())?;
            TensorData::Raw(b.slice(s..e))
        }
        TensorData::Strings(v) => {
            let (s, e) = span(v.len())?;
            TensorData::Strings(v[s..e].to_vec())
        }
    };
    Ok(Tensor { dtype: t.dtype, shape, data })
}

/// `t` (rank 2 or more) with dimension 1 cut to its first `len` entries. No copy when nothing is cut
/// or when `t` has at most one row (the kept part is then one contiguous slice of the same buffer);
/// otherwise one copy of the kept part.
pub(crate) fn trim_dim1(t: &Tensor, len: usize) -> Result<Tensor, String> {
    if t.shape.len() < 2 {
        return Err(format!("shape {} has no dimension 1", fmt_shape(&t.shape)));
    }
    let dims: Vec<usize> = t.shape.iter().map(|&d| d.max(0) as usize).collect();
    let (rows, have) = (dims[0], dims[1]);
    if len > have {
        return Err(format!("shape {} is shorter than {len} in dimension 1", fmt_shape(&t.shape)));
    }
    if len == have {
        return Ok(t.clone());
    }
    let mut shape = t.shape.clone();
    shape[1] = len as i64;
    let inner = dims[2..].iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or("too many elements")?;
    // Elements per row before and after the cut, and kept per row.
    let row_in = have.checked_mul(inner).ok_or("too many elements")?;
    let keep = len * inner;
    let too_large = || format!("the trimmed shape {} does not fit in memory", fmt_shape(&shape));
    let data = match &t.data {
        TensorData::Raw(b) => {
            let size = t.dtype.size().unwrap_or(1);
            let (row_in, keep) = (row_in * size, keep * size);
            if rows <= 1 {
                TensorData::Raw(b.slice(..keep.min(b.len())))
            } else {
                let mut out = Vec::new();
                out.try_reserve_exact(rows * keep).map_err(|_| too_large())?;
                for r in 0..rows {
                    out.extend_from_slice(b.get(r * row_in..r * row_in + keep).ok_or("data shorter than its shape")?);
                }
                TensorData::Raw(Bytes::from(out))
            }
        }
        TensorData::Strings(s) => {
            let mut out = Vec::new();
            out.try_reserve_exact(rows * keep).map_err(|_| too_large())?;
            for r in 0..rows {
                out.extend_from_slice(s.get(r * row_in..r * row_in + keep).ok_or("data shorter than its shape")?);
            }
            TensorData::Strings(out)
        }
    };
    Tensor::new(t.dtype, shape, data).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(shape: &[i64], v: &[f32]) -> Tensor {
        Tensor::new(DType::F32, shape.to_vec(), TensorData::Raw(Bytes::copy_from_slice(bytemuck::cast_slice(v))))
            .unwrap()
    }

    fn i64s(shape: &[i64], v: &[i64]) -> Tensor {
        Tensor::new(DType::I64, shape.to_vec(), TensorData::Raw(Bytes::copy_from_slice(bytemuck::cast_slice(v))))
            .unwrap()
    }

    fn values<T: bytemuck::Pod>(t: &Tensor) -> Vec<T> {
        match &t.data {
            TensorData::Raw(b) => bytemuck::pod_collect_to_vec(b),
            TensorData::Strings(_) => panic!("strings"),
        }
    }

    fn raw(t: &Tensor) -> &Bytes {
        match &t.data {
            TensorData::Raw(b) => b,
            TensorData::Strings(_) => panic!("strings"),
        }
    }

    fn strings(shape: &[i64], v: &[&str]) -> Tensor {
        let data = TensorData::Strings(v.iter().map(|x| Bytes::copy_from_slice(x.as_bytes())).collect());
        Tensor::new(DType::String, shape.to_vec(), data).unwrap()
    }

    #[test]
    fn merge_concatenates_and_pads_rows() {
        let a = f32s(&[1, 2], &[1., 2.]);
        let b = f32s(&[2, 2], &[3., 4., 5., 6.]);
        let m = merge_tensors(DType::F32, &[&a, &b], 3, None).unwrap();
        assert_eq!(m.shape, vec![3, 2]);
        assert_eq!(values::<f32>(&m), vec![1., 2., 3., 4., 5., 6.]);
        // allowed_batch_sizes: padded with copies of the first row (also with a pad value).
        let m = merge_tensors(DType::F32, &[&a, &b], 5, Some(&9f32.to_le_bytes())).unwrap();
        assert_eq!(m.shape, vec![5, 2]);
        assert_eq!(values::<f32>(&m), vec![1., 2., 3., 4., 5., 6., 1., 2., 1., 2.]);
        // One request that needs nothing is passed through as it is.
        assert_eq!(merge_tensors(DType::F32, &[&b], 2, None).unwrap(), b);
    }

    #[test]
    fn merge_pads_variable_length_inputs_with_the_first_element_or_the_pad_value() {
        let a = f32s(&[1, 1, 2], &[7., 8.]);
        let b = f32s(&[1, 2, 1], &[3., 4.]);
        let m = merge_tensors(DType::F32, &[&a, &b], 2, None).unwrap();
        assert_eq!(m.shape, vec![2, 2, 2]);
        assert_eq!(values::<f32>(&m), vec![7., 8., 7., 7., 3., 3., 4., 3.]);
        let m = merge_tensors(DType::F32, &[&a, &b], 2, Some(&(-1f32).to_le_bytes())).unwrap();
        assert_eq!(values::<f32>(&m), vec![7., 8., -1., -1., 3., -1., 4., -1.]);
        // A BERT attention mask: all ones, padded with 0, so padded positions are not attended.
        let short = i64s(&[1, 2], &[1, 1]);
        let long = i64s(&[2, 4], &[1, 1, 1, 1, 1, 1, 1, 1]);
        let m = merge_tensors(DType::I64, &[&short, &long], 3, Some(&0i64.to_le_bytes())).unwrap();
        assert_eq!(m.shape, vec![3, 4]);
        assert_eq!(values::<i64>(&m), vec![1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]);
        let m = merge_tensors(DType::I64, &[&short, &long], 3, None).unwrap();
        assert_eq!(values::<i64>(&m), vec![1; 12], "the first-element rule attends the padding");
    }

    #[test]
    fn merge_strings() {
        let m = merge_tensors(DType::String, &[&strings(&[1, 1], &["a"]), &strings(&[1, 2], &["b", "c"])], 3, None)
            .unwrap();
        assert_eq!(m, strings(&[3, 2], &["a", "a", "b", "c", "a", "a"]));
    }

    #[test]
    fn merges_too_large_to_allocate_are_errors_not_aborts() {
        // Empty parts whose padded merge is 2 x 2^31 x 2^31 bytes: more than a Vec can hold.
        let a = Tensor::new(DType::U8, vec![1, 1 << 31, 0], TensorData::Raw(Bytes::new())).unwrap();
        let b = Tensor::new(DType::U8, vec![1, 0, 1 << 31], TensorData::Raw(Bytes::new())).unwrap();
        assert_eq!(
            merge_tensors(DType::U8, &[&a, &b], 2, None).unwrap_err(),
            MergeError::TooLarge(vec![2, 1 << 31, 1 << 31], Some(1 << 63))
        );
        // 2^32 x 2^32 float32 elements per row: the count itself overflows.
        let a = Tensor::new(DType::F32, vec![1, 1 << 32, 0], TensorData::Raw(Bytes::new())).unwrap();
        let b = Tensor::new(DType::F32, vec![1, 0, 1 << 32], TensorData::Raw(Bytes::new())).unwrap();
        assert_eq!(
            merge_tensors(DType::F32, &[&a, &b], 2, None).unwrap_err(),
            MergeError::TooLarge(vec![2, 1 << 32, 1 << 32], None)
        );
        let s = Tensor::new(DType::String, vec![1, 1 << 32, 0], TensorData::Strings(Vec::new())).unwrap();
        let t = Tensor::new(DType::String, vec![1, 0, 1 << 32], TensorData::Strings(Vec::new())).unwrap();
        assert!(matches!(merge_tensors(DType::String, &[&s, &t], 2, None), Err(MergeError::TooLarge(_, None))));
    }

    #[test]
    fn slices_of_rows_share_the_batch_buffer() {
        let t = f32s(&[4, 2], &[0., 1., 2., 3., 4., 5., 6., 7.]);
        let part = slice_rows(&t, 1, 2, 4).unwrap();
        assert_eq!(part.shape, vec![2, 2]);
        assert_eq!(values::<f32>(&part), vec![2., 3., 4., 5.]);
        assert_eq!(raw(&part).as_ptr(), raw(&t)[8..].as_ptr(), "a slice of the batch's buffer");
        assert_eq!(slice_rows(&t, 0, 4, 4).unwrap(), t);
        assert_eq!(slice_rows(&t, 3, 0, 4).unwrap().shape, vec![0, 2]);
        assert_eq!(slice_rows(&t, 3, 2, 4).unwrap_err(), "rows 3..5 of 4");
    }

    #[test]
    fn trimming_rank_2_outputs() {
        // A batch of [3, 4] token scores; the request of rows 1..3 had length 2.
        let t = f32s(&[3, 4], &[0., 1., 2., 3., 10., 11., 12., 13., 20., 21., 22., 23.]);
        let one = slice_rows(&t, 1, 1, 3).unwrap();
        let cut = trim_dim1(&one, 2).unwrap();
        assert_eq!((cut.shape.clone(), values::<f32>(&cut)), (vec![1, 2], vec![10., 11.]));
        assert_eq!(raw(&cut).as_ptr(), raw(&t)[16..].as_ptr(), "one row: a slice of the batch's buffer");
        let two = slice_rows(&t, 1, 2, 3).unwrap();
        let cut = trim_dim1(&two, 2).unwrap();
        assert_eq!((cut.shape.clone(), values::<f32>(&cut)), (vec![2, 2], vec![10., 11., 20., 21.]));
        // Nothing to cut: the same buffer.
        let same = trim_dim1(&two, 4).unwrap();
        assert_eq!(raw(&same).as_ptr(), raw(&two).as_ptr());
        assert_eq!(trim_dim1(&two, 0).unwrap().shape, vec![2, 0]);
        assert_eq!(trim_dim1(&two, 5).unwrap_err(), "shape [2, 4] is shorter than 5 in dimension 1");
        assert_eq!(trim_dim1(&f32s(&[2], &[0., 1.]), 1).unwrap_err(), "shape [2] has no dimension 1");
        let s = trim_dim1(&strings(&[2, 3], &["a", "b", "c", "d", "e", "f"]), 1).unwrap();
        assert_eq!(s, strings(&[2, 1], &["a", "d"]));
    }

    #[test]
    fn trimming_rank_3_and_4_outputs() {
        // last_hidden_state [2, 3, 2]: 2 rows, padded length 3, hidden size 2.
        let v: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let t = f32s(&[2, 3, 2], &v);
        let row1 = slice_rows(&t, 1, 1, 2).unwrap();
        let cut = trim_dim1(&row1, 2).unwrap();
        assert_eq!((cut.shape.clone(), values::<f32>(&cut)), (vec![1, 2, 2], vec![6., 7., 8., 9.]));
        assert_eq!(raw(&cut).as_ptr(), raw(&t)[24..].as_ptr(), "one row: zero-copy");
        let cut = trim_dim1(&t, 1).unwrap();
        assert_eq!((cut.shape.clone(), values::<f32>(&cut)), (vec![2, 1, 2], vec![0., 1., 6., 7.]));
        // Rank 4 [2, 3, 1, 2]: the same elements, every trailing dimension kept.
        let t4 = f32s(&[2, 3, 1, 2], &v);
        let cut = trim_dim1(&t4, 2).unwrap();
        assert_eq!((cut.shape.clone(), values::<f32>(&cut)), (vec![2, 2, 1, 2], vec![0., 1., 2., 3., 6., 7., 8., 9.]));
        let i = i64s(&[1, 3, 1], &[5, 6, 7]);
        assert_eq!(trim_dim1(&i, 1).unwrap(), i64s(&[1, 1, 1], &[5]));
    }
}
