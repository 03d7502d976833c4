//! A validating reader of Hugging Face `.safetensors` files, for the converter.
//!
//! The header (an 8-byte little-endian length and a JSON table) is parsed and checked as hostile
//! input: every tensor's byte range must lie inside the data section, match its dtype and shape,
//! and not overlap another. Tensor data is not mapped: [`SafetensorsFile::read_f32`] reads
//! element ranges with positioned reads and converts them to f32, so a converter streaming a model
//! block by block keeps its memory small no matter the model's size.
//!
//! Sharded checkpoints (`model.safetensors.index.json`) are opened with [`Checkpoint`].

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use crate::{Error, Result};

/// Element types found in checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Dtype {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "F64" => Dtype::F64,
            "I64" => Dtype::I64,
            "I32" => Dtype::I32,
            "I16" => Dtype::I16,
            "I8" => Dtype::I8,
            "U8" => Dtype::U8,
            "BOOL" => Dtype::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    /// Whether values convert to f32 (the converter reads floats only).
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
    }
}

/// One tensor of a safetensors file.
#[derive(Clone, Debug, PartialEq)]
pub struct StTensor {
    pub name: String,
    pub dtype: Dtype,
    /// Row-major shape, outermost first (as PyTorch).
    pub shape: Vec<usize>,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Bytes of data.
    pub len: usize,
}

impl StTensor {
    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Length of the innermost dimension (1 for a scalar).
    pub fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Number of rows (product of all but the innermost dimension).
    pub fn n_rows(&self) -> usize {
        match self.shape.split_last() {
            Some((_, outer)) => outer.iter().product(),
            None => 1,
        }
    }
}

/// An open `.safetensors` file with its validated header.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    tensors: Vec<StTensor>,
    index: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
}

/// Largest header we accept (the format itself caps it at 100 MB).
const MAX_HEADER: u64 = 100 << 20;

impl SafetensorsFile {
    /// Opens and validates a file.
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display();
        let file = File::open(path).map_err(|e| Error::io(format!("open {shown}"), e))?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io(format!("stat {shown}"), e))?
            .len();
        let mut len_bytes = [0u8; 8];
        if file_len < 8 {
            crate::bail_format!("{shown}: truncated safetensors file ({file_len} bytes)");
        }
        file.read_exact_at(&mut len_bytes, 0)
            .map_err(|e| Error::io(format!("read {shown}"), e))?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER || header_len > file_len - 8 {
            crate::bail_format!(
                "{shown}: safetensors header length {header_len} exceeds the file ({file_len} bytes)"
            );
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact_at(&mut header, 8)
            .map_err(|e| Error::io(format!("read header of {shown}"), e))?;
        let data_start = 8 + header_len;
        let data_len = file_len - data_start;
        let (tensors, metadata) = parse_header(&header, data_start, data_len)
            .map_err(|msg| Error::Format(format!("{shown}: {msg}")))?;
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            file,
            tensors,
            index,
            metadata,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[StTensor] {
        &self.tensors
    }

    /// The `__metadata__` table.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&StTensor> {
        self.index.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// Reads elements `first..first + out.len()` of `t` (flat, row-major order), converting to
    /// f32. `scratch` is reused between calls to hold the raw bytes.
    pub fn read_f32(
        &self,
        t: &StTensor,
        first: usize,
        out: &mut [f32],
        scratch: &mut Vec<u8>,
    ) -> Result<()> {
        let n = out.len();
        if first.checked_add(n).is_none_or(|end| end > t.n_elements()) {
            crate::bail_invalid!(
                "{}: elements {first}..+{n} of `{}` are outside its shape {:?}",
                self.path.display(),
                t.name,
                t.shape
            );
        }
        if !t.dtype.is_float() {
            crate::bail_format!(
                "{}: tensor `{}` has dtype {:?}; only float tensors can be converted",
                self.path.display(),
                t.name,
                t.dtype
            );
        }
        let es = t.dtype.size();
        let start = t.offset + (first * es) as u64;
        scratch.resize(n * es, 0);
        self.file
            .read_exact_at(scratch, start)
            .map_err(|e| Error::io(format!("read `{}` from {}", t.name, self.path.display()), e))?;
        convert_to_f32(t.dtype, scratch, out);
        Ok(())
    }
}

fn convert_to_f32(dtype: Dtype, raw: &[u8], out: &mut [f32]) {
    match dtype {
        Dtype::F32 => {
            for (o, c) in out.iter_mut().zip(raw.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        Dtype::F16 => {
            for (o, c) in out.iter_mut().zip(raw.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        Dtype::BF16 => {
            for (o, c) in out.iter_mut().zip(raw.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        Dtype::F64 => {
            for (o, c) in out.iter_mut().zip(raw.chunks_exact(8)) {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                *o = f64::from_le_bytes(b) as f32;
            }
        }
        // Callers check `is_float` first.
        _ => out.fill(f32::NAN),
    }
}

fn parse_header(
    header: &[u8],
    data_start: u64,
    data_len: u64,
) -> Result<(Vec<StTensor>, BTreeMap<String, String>), String> {
    let json: serde_json::Value = serde_json::from_slice(header)
        .map_err(|e| format!("safetensors header is not JSON: {e}"))?;
    let obj = json
        .as_object()
        .ok_or("safetensors header is not a JSON object")?;
    let mut tensors = Vec::with_capacity(obj.len());
    let mut metadata = BTreeMap::new();
    for (name, entry) in obj {
        if name == "__metadata__" {
            if let Some(m) = entry.as_object() {
                for (k, v) in m {
                    metadata.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                }
            }
            continue;
        }
        let dtype_s = entry
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| format!("tensor `{name}` has no dtype"))?;
        let dtype = Dtype::parse(dtype_s)
            .ok_or_else(|| format!("tensor `{name}`: unknown dtype {dtype_s}"))?;
        let shape = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| format!("tensor `{name}` has no shape"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| format!("tensor `{name}`: shape is not a list of sizes"))?;
        let offs = entry
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
            .ok_or_else(|| format!("tensor `{name}`: data_offsets is not [begin, end]"))?;
        let n = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| format!("tensor `{name}`: shape {shape:?} overflows"))?;
        if offs.1 < offs.0 || offs.1 > data_len || (offs.1 - offs.0) != n as u64 {
            return Err(format!(
                "tensor `{name}`: data_offsets {offs:?} do not hold {n} bytes of {dtype_s} {shape:?} inside the {data_len}-byte data section"
            ));
        }
        tensors.push(StTensor {
            name: name.clone(),
            dtype,
            shape,
            offset: data_start + offs.0,
            len: n,
        });
    }
    let mut by_offset: Vec<&StTensor> = tensors.iter().filter(|t| t.len > 0).collect();
    by_offset.sort_by_key(|t| t.offset);
    for w in by_offset.windows(2) {
        if w[0].offset + w[0].len as u64 > w[1].offset {
            return Err(format!(
                "tensors `{}` and `{}` overlap",
                w[0].name, w[1].name
            ));
        }
    }
    tensors.sort_by_key(|t| t.offset);
    Ok((tensors, metadata))
}

/// All tensors of a checkpoint folder: one `model.safetensors`, or the shards named by
/// `model.safetensors.index.json`, or every `*.safetensors` file in the folder.
#[derive(Debug)]
pub struct Checkpoint {
    files: Vec<SafetensorsFile>,
    /// name -> (file index, tensor index)
    index: HashMap<String, (usize, usize)>,
    names: Vec<String>,
}

impl Checkpoint {
    /// Opens the safetensors files of a Hugging Face checkpoint folder.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let paths: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|e| Error::io(format!("read {}", index_path.display()), e))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::Format(format!("{}: not JSON: {e}", index_path.display())))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    Error::Format(format!("{}: no `weight_map` object", index_path.display()))
                })?;
            let mut shards: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            shards.sort();
            shards.dedup();
            for s in &shards {
                if s.contains('/') || s.contains('\\') || s.starts_with('.') {
                    crate::bail_format!(
                        "{}: shard name `{s}` is not a plain file name",
                        index_path.display()
                    );
                }
            }
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Error::io(format!("list {}", dir.display()), e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            found.sort();
            if found.is_empty() {
                crate::bail_format!(
                    "{}: no model.safetensors, model.safetensors.index.json or *.safetensors file (PyTorch .bin checkpoints are not read; convert them to safetensors first)",
                    dir.display()
                );
            }
            found
        };
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        let mut names = Vec::new();
        for (fi, p) in paths.iter().enumerate() {
            let f = SafetensorsFile::open(p)?;
            for (ti, t) in f.tensors().iter().enumerate() {
                if index.insert(t.name.clone(), (fi, ti)).is_some() {
                    crate::bail_format!(
                        "tensor `{}` appears in more than one shard ({})",
                        t.name,
                        p.display()
                    );
                }
                names.push(t.name.clone());
            }
            files.push(f);
        }
        Ok(Checkpoint {
            files,
            index,
            names,
        })
    }

    /// Every tensor name, in shard and offset order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// A tensor and the file holding it.
    pub fn get(&self, name: &str) -> Option<(&SafetensorsFile, &StTensor)> {
        let &(fi, ti) = self.index.get(name)?;
        let f = self.files.get(fi)?;
        Some((f, f.tensors().get(ti)?))
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> u64 {
        self.files
            .iter()
            .flat_map(|f| f.tensors())
            .map(|t| t.len as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    fn write_st(dir: &Path, name: &str, header: &str, data: &[u8]) -> PathBuf {
        let p = dir.join(name);
        let mut f = File::create(&p).unwrap();
        f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
        f.write_all(header.as_bytes()).unwrap();
        f.write_all(data).unwrap();
        p
    }

    #[test]
    fn reads_rows_of_each_float_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = Vec::new();
        for v in [1.0f32, -2.0, 3.5, 4.0] {
            data.extend_from_slice(&v.to_le_bytes());
        }
        for v in [0.5f32, -1.25] {
            data.extend_from_slice(&bf16::from_f32(v).to_le_bytes());
        }
        let h = r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[16,20]},"__metadata__":{"format":"pt"}}"#;
        let p = write_st(dir.path(), "m.safetensors", h, &data);
        let f = SafetensorsFile::open(&p).unwrap();
        let a = f.tensor("a").unwrap().clone();
        let mut out = [0f32; 2];
        let mut scratch = Vec::new();
        f.read_f32(&a, 2, &mut out, &mut scratch).unwrap();
        assert_eq!(out, [3.5, 4.0]);
        let b = f.tensor("b").unwrap().clone();
        f.read_f32(&b, 0, &mut out, &mut scratch).unwrap();
        assert_eq!(out, [0.5, -1.25]);
        assert!(f.read_f32(&a, 3, &mut out, &mut scratch).is_err());
        assert_eq!(f.metadata().get("format").map(String::as_str), Some("pt"));
    }

    #[test]
    fn rejects_hostile_headers() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,32]}}"#,
                "data_offsets",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                "overlap",
            ),
            (
                r#"{"a":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}}"#,
                "dtype",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[18446744073709551615,4],"data_offsets":[0,8]}}"#,
                "overflow",
            ),
            (r#"[1,2]"#, "object"),
            (r#"{"a":"#, "JSON"),
        ];
        for (i, (h, want)) in cases.iter().enumerate() {
            let p = write_st(dir.path(), &format!("{i}.safetensors"), h, &[0u8; 16]);
            let err = SafetensorsFile::open(&p).unwrap_err().to_string();
            assert!(err.contains(want), "case {i}: {err}");
        }
        let p = dir.path().join("short.safetensors");
        std::fs::write(&p, [200u8, 0, 0, 0, 0, 0, 0, 0, b'{']).unwrap();
        let err = SafetensorsFile::open(&p).unwrap_err().to_string();
        assert!(err.contains("exceeds"), "{err}");
    }
}
