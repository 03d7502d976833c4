//! [`GgufWriter`]: writes a GGUF v3 file by streaming tensor data to disk.
//!
//! The header, metadata and tensor table are written first (every offset is known from the
//! [`TensorSpec`]s), then the data of each tensor in table order, possibly in several chunks.
//! Tensor data is never held in memory. The file is written to `<path>.partial` and renamed into
//! place by [`GgufWriter::finish`]; a writer dropped before that removes the partial file.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::value::{Array, Value};
use super::{
    align_up, tensor_size, Metadata, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_DEPTH,
    VERSION,
};
use crate::ggml_type::GgmlType;
use crate::{bail_invalid, Error, Result};

/// llama.cpp keeps tensor names in a 64-byte buffer with a terminating NUL.
const MAX_NAME_BYTES: usize = 63;

/// A tensor to be written: its table entry, before its data offset is known.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    /// The tensor's name (at most 63 bytes, llama.cpp's limit).
    pub name: String,
    /// Dimensions in ggml order, innermost first.
    pub dims: Vec<u64>,
    /// The element type.
    pub ggml_type: GgmlType,
    /// Extra alignment of this tensor's data in the file, in bytes: 0 means the file alignment;
    /// otherwise a multiple of the file alignment (4096 page-aligns a large table). The *absolute*
    /// file offset of the data becomes a multiple of `align`.
    ///
    /// gguf-py reads such files, but llama.cpp's loader requires each tensor to start exactly at
    /// the previous one's end padded to the file alignment, so it rejects a file where this
    /// padding is larger. Leave it 0 in files meant for llama.cpp (or raise `general.alignment`).
    pub align: usize,
}

impl TensorSpec {
    /// A tensor with the file's alignment.
    pub fn new(name: impl Into<String>, dims: Vec<u64>, ty: GgmlType) -> Self {
        TensorSpec {
            name: name.into(),
            dims,
            ggml_type: ty,
            align: 0,
        }
    }

    /// The same tensor with extra alignment (see [`TensorSpec::align`]).
    pub fn with_align(mut self, align: usize) -> Self {
        self.align = align;
        self
    }

    /// Bytes of data, after checking the dims (1 to 4 of them, no overflow, innermost dim a
    /// multiple of the type's block size).
    pub fn size(&self) -> Result<usize> {
        tensor_size(&self.dims, self.ggml_type)
            .map(|(_, size)| size)
            .map_err(|m| Error::Invalid(format!("tensor `{}`: {m}", self.name)))
    }
}

/// Streams a GGUF v3 file to disk. See the module documentation.
#[derive(Debug)]
pub struct GgufWriter {
    path: PathBuf,
    partial: PathBuf,
    out: Option<BufWriter<File>>,
    tensors: Vec<TensorSpec>,
    sizes: Vec<usize>,
    /// Absolute file offset of each tensor's data.
    starts: Vec<u64>,
    alignment: u64,
    /// The tensor the next `write_data` goes to, and how many of its bytes were written.
    cur: usize,
    written: usize,
    /// Absolute position in the file.
    pos: u64,
    /// Set after an I/O error: the file is in an unknown state.
    failed: bool,
    finished: bool,
}

impl GgufWriter {
    /// Writes the header, metadata and tensor table to `<path>.partial`. The alignment comes from
    /// `general.alignment` (a `u32` power of two) or is 32; data offsets follow from the tensor
    /// sizes, in table order.
    pub fn create(path: &Path, metadata: &Metadata, tensors: Vec<TensorSpec>) -> Result<Self> {
        let alignment = match metadata.get(ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT as u64,
            Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(other) => bail_invalid!(
                "metadata `{ALIGNMENT_KEY}` must be a u32 power of two, found {}",
                other.describe()
            ),
        };
        for (key, value) in metadata.iter() {
            if value.array_depth() > MAX_ARRAY_DEPTH {
                bail_invalid!(
                    "metadata `{key}`: arrays nested {} levels deep, at most {MAX_ARRAY_DEPTH} \
                     can be read back",
                    value.array_depth()
                );
            }
        }

        let mut sizes = Vec::with_capacity(tensors.len());
        let mut names = std::collections::HashSet::with_capacity(tensors.len());
        for t in &tensors {
            if t.name.is_empty() || t.name.len() > MAX_NAME_BYTES {
                bail_invalid!(
                    "tensor name `{}` has {} bytes, expected 1 to {MAX_NAME_BYTES} (llama.cpp's \
                     limit)",
                    t.name,
                    t.name.len()
                );
            }
            if !names.insert(t.name.as_str()) {
                bail_invalid!("duplicate tensor name `{}`", t.name);
            }
            if t.align != 0 && !(t.align as u64).is_multiple_of(alignment) {
                bail_invalid!(
                    "tensor `{}`: align {} is not a multiple of the file alignment {alignment}",
                    t.name,
                    t.align
                );
            }
            sizes.push(t.size()?);
        }

        // Header and metadata.
        let mut head = Vec::new();
        head.extend_from_slice(&MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata.iter() {
            put_str(&mut head, key);
            head.extend_from_slice(&value.value_type().id().to_le_bytes());
            put_value(&mut head, value);
        }

        // Layout: the table's size does not depend on the offsets, so place the data first.
        let overflow = || Error::Invalid("GGUF layout offsets overflow".to_string());
        let table_len = tensors
            .iter()
            .try_fold(0u64, |acc, t| {
                let entry = 8 + t.name.len() as u64 + 4 + 8 * t.dims.len() as u64 + 4 + 8;
                acc.checked_add(entry)
            })
            .ok_or_else(overflow)?;
        let table_end = (head.len() as u64)
            .checked_add(table_len)
            .ok_or_else(overflow)?;
        let data_offset = align_up(table_end, alignment).ok_or_else(overflow)?;
        let mut starts = Vec::with_capacity(tensors.len());
        let mut end = data_offset;
        for (t, &size) in tensors.iter().zip(&sizes) {
            let align = if t.align == 0 {
                alignment
            } else {
                t.align as u64
            };
            let start = align_up(end, align).ok_or_else(overflow)?;
            end = start.checked_add(size as u64).ok_or_else(overflow)?;
            starts.push(start);
        }

        for (t, &start) in tensors.iter().zip(&starts) {
            put_str(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for &d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&(t.ggml_type as u32).to_le_bytes());
            head.extend_from_slice(&(start - data_offset).to_le_bytes());
        }
        if head.len() as u64 != table_end {
            return Err(Error::Invalid(format!(
                "internal error: GGUF header is {} bytes, expected {table_end}",
                head.len()
            )));
        }

        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
            .map_err(|e| Error::io(format!("create {}", partial.display()), e))?;
        let mut writer = GgufWriter {
            path: path.to_path_buf(),
            partial,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            tensors,
            sizes,
            starts,
            alignment,
            cur: 0,
            written: 0,
            pos: 0,
            failed: false,
            finished: false,
        };
        // From here on, an error drops `writer`, which removes the partial file.
        writer.put(&head)?;
        writer.pad_to(data_offset)?;
        writer.settle()?;
        Ok(writer)
    }

    /// The tensor the next [`GgufWriter::write_data`] goes to (`None` when all are complete).
    pub fn current_tensor(&self) -> Option<&TensorSpec> {
        self.tensors.get(self.cur)
    }

    /// Appends data of the current tensor. Tensors are written in table order and a tensor's data
    /// may come in several chunks; a chunk may not run past the end of the current tensor.
    pub fn write_data(&mut self, bytes: &[u8]) -> Result<()> {
        self.check_ok()?;
        if bytes.is_empty() {
            return Ok(());
        }
        let (Some(t), Some(&size)) = (self.tensors.get(self.cur), self.sizes.get(self.cur)) else {
            bail_invalid!(
                "write_data: {} bytes, but all {} tensors already have their data",
                bytes.len(),
                self.tensors.len()
            );
        };
        let left = size - self.written;
        if bytes.len() > left {
            bail_invalid!(
                "write_data: {} bytes for tensor `{}`, but only {left} of its {size} bytes remain",
                bytes.len(),
                t.name
            );
        }
        self.put(bytes)?;
        self.written += bytes.len();
        self.settle()
    }

    /// Checks that every tensor got exactly its bytes, pads the file, flushes, fsyncs and renames
    /// `<path>.partial` to `path`.
    pub fn finish(mut self) -> Result<()> {
        self.check_ok()?;
        if let (Some(t), Some(&size)) = (self.tensors.get(self.cur), self.sizes.get(self.cur)) {
            bail_invalid!(
                "finish: tensor `{}` got {} of its {size} bytes ({} of {} tensors complete)",
                t.name,
                self.written,
                self.cur,
                self.tensors.len()
            );
        }
        let end = align_up(self.pos, self.alignment)
            .ok_or_else(|| Error::Invalid("GGUF file size overflows".to_string()))?;
        self.pad_to(end)?;
        let out = self.out.take();
        let file = match out.map(BufWriter::into_inner) {
            Some(Ok(file)) => file,
            Some(Err(e)) => {
                return Err(Error::io(
                    format!("flush {}", self.partial.display()),
                    e.into_error(),
                ))
            }
            None => bail_invalid!("finish: the writer was already closed"),
        };
        file.sync_all()
            .map_err(|e| Error::io(format!("fsync {}", self.partial.display()), e))?;
        drop(file);
        std::fs::rename(&self.partial, &self.path).map_err(|e| {
            Error::io(
                format!(
                    "rename {} to {}",
                    self.partial.display(),
                    self.path.display()
                ),
                e,
            )
        })?;
        self.finished = true;
        // Make the rename durable; not every platform can open a directory, so this is best effort.
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    fn check_ok(&self) -> Result<()> {
        if self.failed {
            bail_invalid!(
                "GGUF writer for {} failed earlier; the partial file is unusable",
                self.path.display()
            );
        }
        Ok(())
    }

    /// Writes raw bytes, tracking the position; an I/O error poisons the writer.
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(out) = self.out.as_mut() else {
            bail_invalid!("GGUF writer is closed");
        };
        if let Err(e) = out.write_all(bytes) {
            self.failed = true;
            return Err(Error::io(format!("write {}", self.partial.display()), e));
        }
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes zeros up to absolute offset `to`.
    fn pad_to(&mut self, to: u64) -> Result<()> {
        const ZEROS: [u8; 4096] = [0; 4096];
        while self.pos < to {
            let n = (to - self.pos).min(ZEROS.len() as u64) as usize;
            self.put(ZEROS.get(..n).unwrap_or(&ZEROS))?;
        }
        Ok(())
    }

    /// Moves past complete (and empty) tensors, padding to the start of the next one.
    fn settle(&mut self) -> Result<()> {
        while let Some(&size) = self.sizes.get(self.cur) {
            if self.written < size {
                break;
            }
            self.cur += 1;
            self.written = 0;
            if let Some(&start) = self.starts.get(self.cur) {
                self.pad_to(start)?;
            }
        }
        Ok(())
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        if !self.finished {
            drop(self.out.take());
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Encodes a value without its type id.
fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => put_array(out, a),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}

/// Encodes an array: element type, count, elements.
fn put_array(out: &mut Vec<u8>, array: &Array) {
    out.extend_from_slice(&array.element_type().id().to_le_bytes());
    out.extend_from_slice(&(array.len() as u64).to_le_bytes());
    match array {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::U16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::I16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::U32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::I32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => v.iter().for_each(|s| put_str(out, s)),
        Array::Array(v) => v.iter().for_each(|a| put_array(out, a)),
        Array::U64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::I64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::F64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
}
