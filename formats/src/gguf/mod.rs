//! The GGUF v3 container (llama.cpp's model file format): a validating reader that borrows tensor
//! data in place from a memory map, and a streaming writer.
//!
//! Layout (all little-endian):
//!
//! ```text
//! "GGUF" | u32 version = 3 | u64 n_tensors | u64 n_kv
//! n_kv x     { string key | u32 value type | value }
//! n_tensors x { string name | u32 n_dims | u64 dims[n_dims] (innermost first) | u32 ggml type | u64 offset }
//! zero padding to `general.alignment` (default 32)
//! tensor data; each tensor at data start + offset, offsets multiples of the alignment
//! ```
//!
//! Strings are a u64 byte length followed by UTF-8 bytes; arrays are a u32 element type, a u64
//! count and the elements.
//!
//! - [`GgufFile`] reads a file as hostile input: every count, length, offset and size is checked
//!   against the bytes that exist (checked arithmetic throughout), and every error is one line that
//!   names what was wrong and where (byte offset, key or tensor name, expected versus found).
//! - [`GgufWriter`] writes the header and tensor table up front and then streams tensor data,
//!   never holding it in memory. Files it writes read back byte for byte in llama.cpp and `gguf-py`
//!   (see [`TensorSpec::align`] for the one option llama.cpp does not accept).
//! - [`Metadata`] holds the key-value table with typed accessors.
//!
//! What a model *means* (architectures, key names, tensor names) is not decided here.
//!
//! ```
//! use cheems_formats::gguf::{GgufFile, GgufWriter, Metadata, TensorSpec};
//! use cheems_formats::GgmlType;
//! # fn main() -> cheems_formats::Result<()> {
//! # let dir = tempfile::tempdir().map_err(|e| cheems_formats::Error::io("tempdir", e))?;
//! let path = dir.path().join("tiny.gguf");
//! let mut md = Metadata::new();
//! md.set("general.architecture", "llama");
//! md.set("llama.attention.layer_norm_rms_epsilon", 1e-5f32);
//! let specs = vec![TensorSpec::new("output_norm.weight", vec![4], GgmlType::F32)];
//! let mut w = GgufWriter::create(&path, &md, specs)?;
//! for x in [1.0f32, 2.0, 3.0, 4.0] {
//!     w.write_data(&x.to_le_bytes())?; // data may come in chunks
//! }
//! w.finish()?;
//!
//! let file = GgufFile::open(&path)?;
//! assert_eq!(file.metadata().get_str("general.architecture")?, "llama");
//! let norm: &[f32] = file.tensor_slice("output_norm.weight")?; // borrowed from the map
//! assert_eq!(norm, [1.0, 2.0, 3.0, 4.0]);
//! # Ok(())
//! # }
//! ```
//!
//! There is deliberately no `From<f64> for Value`: a bare float literal would become an `f64`
//! entry, which llama.cpp refuses where it expects `f32` (write `1e-5f32`, or `Value::F64`).

mod metadata;
mod reader;
mod value;
mod writer;

pub use metadata::Metadata;
pub use reader::GgufFile;
pub use value::{Array, Value, ValueType};
pub use writer::{GgufWriter, TensorSpec};

use crate::ggml_type::GgmlType;

/// The four bytes a GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The only GGUF version read and written.
pub const VERSION: u32 = 3;
/// The data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// The metadata key that sets the data alignment (a `u32` power of two).
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// The most dimensions a tensor can have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// The deepest nesting of metadata arrays read or written (1 = a flat array). Bounds recursion on
/// hostile input.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Bytes of the fixed header: magic, version, tensor count, metadata count.
const HEADER_BYTES: usize = 4 + 4 + 8 + 8;

/// One entry of the tensor table, validated against the file it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order, innermost (contiguous) first: a `[rows, cols]` matrix is
    /// `[cols, rows]`.
    pub dims: Vec<u64>,
    /// The element type.
    pub ggml_type: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub size: usize,
}

impl TensorInfo {
    /// Number of elements (the product of the dims).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Number of dimensions.
    pub fn n_dims(&self) -> usize {
        self.dims.len()
    }

    /// The shape in row-major order, outermost first (numpy / PyTorch order).
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }

    /// Length of one row: the innermost dim.
    pub fn row_len(&self) -> usize {
        let d0 = self.dims.first().copied().unwrap_or(1);
        usize::try_from(d0).unwrap_or(usize::MAX)
    }

    /// Number of rows: the product of all dims but the innermost.
    pub fn n_rows(&self) -> usize {
        let rows = self
            .dims
            .iter()
            .skip(1)
            .fold(1u64, |acc, &d| acc.saturating_mul(d));
        usize::try_from(rows).unwrap_or(usize::MAX)
    }
}

/// Caps on what a file may declare, on top of the bytes it actually has (a count is always also
/// bounded by the bytes that remain). The defaults are generous but finite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most tensors in the table.
    pub max_tensors: u64,
    /// Most metadata entries.
    pub max_kv: u64,
    /// Longest string (key, value, tensor name) in bytes.
    pub max_string_len: u64,
    /// Most elements in one metadata array.
    pub max_array_len: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tensors: 1 << 20,
            max_kv: 1 << 20,
            max_string_len: 1 << 30,
            max_array_len: 1 << 28,
        }
    }
}

/// `n` rounded up to a multiple of `align` (`align` > 0), or `None` on overflow.
pub(crate) fn align_up(n: u64, align: u64) -> Option<u64> {
    let rem = n.checked_rem(align)?;
    if rem == 0 {
        Some(n)
    } else {
        n.checked_add(align - rem)
    }
}

/// Element count and byte size of a tensor, or a message saying what is wrong with its dims.
/// Shared by the reader (which adds where in the file) and the writer.
pub(crate) fn tensor_size(dims: &[u64], ty: GgmlType) -> std::result::Result<(u64, usize), String> {
    if dims.is_empty() || dims.len() > MAX_DIMS {
        return Err(format!(
            "has {} dims, expected 1 to {MAX_DIMS} dims",
            dims.len()
        ));
    }
    // ggml stores dims as int64_t: each dim and the element count must fit.
    let limit = i64::MAX as u64;
    let mut n = 1u64;
    for (j, &d) in dims.iter().enumerate() {
        if d > limit {
            return Err(format!("dim {j} = {d} overflows int64 (dims {dims:?})"));
        }
        n = n
            .checked_mul(d)
            .filter(|&n| n <= limit)
            .ok_or_else(|| format!("element count of dims {dims:?} overflows int64"))?;
    }
    let d0 = dims.first().copied().unwrap_or(0);
    let bs = ty.block_size() as u64;
    if d0 % bs != 0 {
        return Err(format!(
            "innermost dim {d0} (dims {dims:?}) is not a multiple of the {ty} block size {bs}"
        ));
    }
    let size = (n / bs)
        .checked_mul(ty.type_size() as u64)
        .and_then(|s| usize::try_from(s).ok())
        .ok_or_else(|| format!("byte size of {ty} dims {dims:?} overflows"))?;
    Ok((n, size))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn align_up_is_checked() {
        assert_eq!(align_up(0, 32), Some(0));
        assert_eq!(align_up(1, 32), Some(32));
        assert_eq!(align_up(64, 32), Some(64));
        assert_eq!(align_up(u64::MAX, 32), None);
        assert_eq!(align_up(5, 0), None);
    }

    #[test]
    fn tensor_size_checks_dims() {
        assert_eq!(tensor_size(&[64, 2], GgmlType::Q8_0).unwrap(), (128, 136));
        assert!(tensor_size(&[], GgmlType::F32)
            .unwrap_err()
            .contains("dims"));
        assert!(tensor_size(&[1; 5], GgmlType::F32)
            .unwrap_err()
            .contains("dims"));
        assert!(tensor_size(&[1 << 40, 1 << 40], GgmlType::F32)
            .unwrap_err()
            .contains("overflow"));
        assert!(tensor_size(&[u64::MAX, 0], GgmlType::F32)
            .unwrap_err()
            .contains("overflow"));
        assert!(tensor_size(&[33], GgmlType::Q4_0)
            .unwrap_err()
            .contains("block size"));
        assert_eq!(tensor_size(&[0, 7], GgmlType::Q4_K).unwrap(), (0, 0));
    }

    #[test]
    fn tensor_info_shapes() {
        let t = TensorInfo {
            name: "w".into(),
            dims: vec![8, 3, 2],
            ggml_type: GgmlType::F32,
            offset: 0,
            size: 192,
        };
        assert_eq!(t.n_elements(), 48);
        assert_eq!(t.shape(), [2, 3, 8]);
        assert_eq!(t.row_len(), 8);
        assert_eq!(t.n_rows(), 6);
        assert_eq!(t.n_dims(), 3);
    }
}
