//! Weights borrowed in place from the model file. A [`Mat`] is a byte range of the file plus its
//! type and shape; [`Mat::get`] turns it into a kernel view over the mapped bytes. Small vectors
//! (norm weights, biases, scales) are copied out as f32 at load (they are a tiny fraction of a
//! model); matrices never are.

use anyhow::{anyhow, bail, Result};
use cheems_formats::blocks::dequantize_row;
use cheems_formats::gguf::GgufFile;
use cheems_formats::GgmlType;
use cheems_kernels::matvec::MatRef;

/// A weight matrix of `rows` rows of `cols` values, stored as `ty` at `off..off + len` in the file.
#[derive(Clone, Copy, Debug)]
pub struct Mat {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    off: usize,
    len: usize,
}

impl Mat {
    /// The kernel view over the file's bytes.
    pub fn get<'a>(&self, map: &'a [u8]) -> MatRef<'a> {
        MatRef {
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            data: &map[self.off..self.off + self.len],
        }
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.len / self.rows.max(1)
    }

    /// Where the matrix lies in the file.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.off..self.off + self.len
    }
}

/// Types the engine computes with.
pub fn is_compute_type(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K
    )
}

/// Looks tensors up by name with the expected shape.
#[derive(Debug)]
pub struct Binder<'a> {
    pub file: &'a GgufFile,
}

impl Binder<'_> {
    fn find(&self, name: &str) -> Result<&cheems_formats::gguf::TensorInfo> {
        self.file
            .tensor(name)
            .ok_or_else(|| anyhow!("model file has no tensor `{name}`"))
    }

    pub fn has(&self, name: &str) -> bool {
        self.file.tensor(name).is_some()
    }

    /// A matrix with ggml dims `[cols, rows]` (trailing 1s ignored).
    pub fn mat(&self, name: &str, cols: usize, rows: usize) -> Result<Mat> {
        let t = self.find(name)?;
        let mut dims: Vec<u64> = t.dims.clone();
        while dims.len() > 2 && dims.last() == Some(&1) {
            dims.pop();
        }
        let n_rows: u64 = dims.iter().skip(1).product();
        if dims.first().copied() != Some(cols as u64) || n_rows != rows as u64 {
            bail!(
                "tensor `{name}` has dims {:?}, expected [{cols}, {rows}]",
                t.dims
            );
        }
        if !is_compute_type(t.ggml_type) {
            bail!(
                "tensor `{name}` has type {}, which cheems cannot compute with",
                t.ggml_type
            );
        }
        Ok(Mat {
            ty: t.ggml_type,
            rows,
            cols,
            off: self.file.data_offset() + t.offset as usize,
            len: t.size,
        })
    }

    /// A tensor of `n` values copied out as f32 (any shape with `n` elements).
    pub fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        let t = self.find(name)?;
        if t.n_elements() != n as u64 {
            bail!("tensor `{name}` has dims {:?}, expected {n} values", t.dims);
        }
        if !is_compute_type(t.ggml_type) {
            bail!(
                "tensor `{name}` has type {}, which cheems cannot compute with",
                t.ggml_type
            );
        }
        let mut out = vec![0f32; n];
        dequantize_row(t.ggml_type, self.file.tensor_data(t), &mut out)
            .map_err(|e| anyhow!("tensor `{name}`: {e}"))?;
        Ok(out)
    }

    /// Like [`Binder::vector`], for optional tensors (biases).
    pub fn opt_vector(&self, name: &str, n: usize) -> Result<Option<Vec<f32>>> {
        if self.has(name) {
            self.vector(name, n).map(Some)
        } else {
            Ok(None)
        }
    }
}
