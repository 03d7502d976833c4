//! [`GgufFile`]: parses and validates a GGUF v3 file held in a memory map (or an aligned owned
//! buffer) and hands out tensor data in place.
//!
//! The parser treats the file as hostile: it reads through a bounds-checked cursor, bounds every
//! declared count by the bytes that remain, uses checked arithmetic for every offset and size, and
//! never indexes. Validation is complete before a `GgufFile` exists, so the accessors are
//! infallible apart from name lookups.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::value::{Array, Value, ValueType};
use super::{
    align_up, tensor_size, Limits, Metadata, TensorInfo, ALIGNMENT_KEY, DEFAULT_ALIGNMENT,
    HEADER_BYTES, MAGIC, MAX_ARRAY_DEPTH, VERSION,
};
use crate::ggml_type::GgmlType;
use crate::{Error, Result};

/// The fewest bytes one tensor-table entry can take: name length, n_dims, one dim, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;
/// The fewest bytes one metadata entry can take: key length, value type, a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;

/// A 64-byte aligned chunk, so that an owned copy of a file gives tensor data the same alignment
/// guarantees as a memory map (up to 64 bytes).
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Chunk([u8; 64]);

/// Where the bytes of a file live.
enum Storage {
    Mmap(Mmap),
    Owned { chunks: Vec<Chunk>, len: usize },
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned { chunks, len } => {
                let all: &[u8] = bytemuck::cast_slice(chunks);
                all.get(..*len).unwrap_or(all)
            }
        }
    }

    fn copy_of(bytes: &[u8]) -> Self {
        let mut chunks = vec![Chunk([0; 64]); bytes.len().div_ceil(64)];
        let all: &mut [u8] = bytemuck::cast_slice_mut(&mut chunks);
        if let Some(dst) = all.get_mut(..bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        Storage::Owned {
            chunks,
            len: bytes.len(),
        }
    }
}

/// A validated GGUF file. Owns its bytes (a read-only memory map, or an aligned copy), so it can be
/// shared across threads (`Arc<GgufFile>`) and hand out tensor data as borrowed slices.
pub struct GgufFile {
    storage: Storage,
    path: Option<PathBuf>,
    version: u32,
    alignment: usize,
    data_offset: usize,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("file_size", &self.file_size())
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps `path` read-only and validates it with the default [`Limits`].
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_limits(path, Limits::default())
    }

    /// Maps `path` read-only and validates it. Errors name the path.
    pub fn open_with_limits(path: &Path, limits: Limits) -> Result<Self> {
        let file =
            File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
            .len();
        let storage = if len == 0 {
            // Mapping an empty file is not portable; there is nothing to map anyway.
            Storage::Owned {
                chunks: Vec::new(),
                len: 0,
            }
        } else {
            // SAFETY: `Mmap::map` is unsafe because the slices it hands out assume the file is
            // not modified or truncated while mapped. The map is read-only and private to this
            // `GgufFile`; cheems never rewrites a model file in place (its writer goes through
            // `<path>.partial` and a rename, which leaves existing mappings intact). That other
            // processes leave the file alone is the standing assumption of every mmap loader.
            let map = unsafe { Mmap::map(&file) }
                .map_err(|e| Error::io(format!("mmap {}", path.display()), e))?;
            Storage::Mmap(map)
        };
        Self::parse(storage, Some(path.to_path_buf()), limits).map_err(|e| match e {
            Error::Format(m) => Error::Format(format!("{}: {m}", path.display())),
            Error::Unsupported(m) => Error::Unsupported(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Reads `path` into an owned, 64-byte aligned buffer instead of mapping it, and validates
    /// it. Only the header and the data of the tensors `keep` accepts are read; the bytes of the
    /// others stay zero (the buffer is allocated zeroed, so their pages are never touched and
    /// never resident). The header is read in prefixes, each twice the last, until it parses
    /// within what was read, so a few bytes after it may be read too.
    pub fn read(path: &Path, keep: &dyn Fn(&TensorInfo) -> bool) -> Result<Self> {
        Self::read_owned(path, keep).map_err(|e| match e {
            Error::Format(m) => Error::Format(format!("{}: {m}", path.display())),
            Error::Unsupported(m) => Error::Unsupported(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    fn read_owned(path: &Path, keep: &dyn Fn(&TensorInfo) -> bool) -> Result<Self> {
        use std::os::unix::fs::FileExt;
        let file =
            File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
            .len();
        let len = usize::try_from(len).map_err(|_| {
            Error::Unsupported(format!("{len} bytes do not fit in this machine's memory"))
        })?;
        let mut chunks: Vec<Chunk> = bytemuck::zeroed_vec(len.div_ceil(64));
        let all: &mut [u8] = bytemuck::cast_slice_mut(&mut chunks);
        let buf = all.get_mut(..len).unwrap_or_default();
        let read = |buf: &mut [u8], at: usize| {
            file.read_exact_at(buf, at as u64)
                .map_err(|e| Error::io(format!("read {} at byte {at}", path.display()), e))
        };
        // Parse what was read with zeros after it: the result stands once the data section
        // starts within the bytes read (everything the parser looked at was real).
        let (mut have, mut want) = (0, len.min(1 << 20));
        let parsed = loop {
            read(&mut buf[have..want], have)?;
            have = want;
            match parse(buf, Limits::default()) {
                Ok(p) if p.data_offset <= have || have == len => break p,
                Err(e) if have == len => return Err(e),
                _ => want = want.saturating_mul(2).min(len),
            }
        };
        for t in parsed.tensors.iter().filter(|t| keep(t)) {
            // `parse` checked that the range lies inside the file.
            let start = parsed.data_offset + t.offset as usize;
            if let Some(dst) = buf.get_mut(start.max(have)..start + t.size) {
                read(dst, start.max(have))?;
            }
        }
        Ok(Self::from_parsed(
            Storage::Owned { chunks, len },
            Some(path.to_path_buf()),
            parsed,
        ))
    }

    /// Copies `bytes` into an internal 64-byte aligned buffer and validates it (for tests and
    /// fuzzing).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::parse(Storage::copy_of(bytes), None, Limits::default())
    }

    /// [`GgufFile::from_bytes`] with explicit limits.
    pub fn from_bytes_with_limits(bytes: &[u8], limits: Limits) -> Result<Self> {
        Self::parse(Storage::copy_of(bytes), None, limits)
    }

    fn parse(storage: Storage, path: Option<PathBuf>, limits: Limits) -> Result<Self> {
        let parsed = parse(storage.bytes(), limits)?;
        Ok(Self::from_parsed(storage, path, parsed))
    }

    fn from_parsed(storage: Storage, path: Option<PathBuf>, parsed: Parsed) -> Self {
        let mut by_name = HashMap::with_capacity(parsed.tensors.len());
        for (i, t) in parsed.tensors.iter().enumerate() {
            by_name.insert(t.name.clone(), i);
        }
        GgufFile {
            storage,
            path,
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            by_name,
        }
    }

    /// The GGUF version (always 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment (`general.alignment`, or 32).
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// Size of the file in bytes.
    pub fn file_size(&self) -> usize {
        self.bytes().len()
    }

    /// The metadata table.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(*self.by_name.get(name)?)
    }

    /// The data of a tensor of this file, in place.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        debug_assert!(
            self.tensor(&info.name) == Some(info),
            "tensor `{}` is not from this file",
            info.name
        );
        let range = usize::try_from(info.offset)
            .ok()
            .and_then(|o| o.checked_add(self.data_offset))
            .and_then(|start| Some(start..start.checked_add(info.size)?));
        range.and_then(|r| self.bytes().get(r)).unwrap_or(&[])
    }

    /// The data of the tensor called `name`, in place.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.tensor(name).ok_or_else(|| {
            Error::Format(format!("tensor `{name}` not found in {}", self.describe()))
        })?;
        Ok(self.tensor_data(info))
    }

    /// The data of the tensor called `name` as a slice of `T`, in place (no copy). Fails if the
    /// size is not a multiple of `size_of::<T>()` or the data is not aligned for `T`.
    pub fn tensor_slice<T: bytemuck::Pod>(&self, name: &str) -> Result<&[T]> {
        let bytes = self.tensor_bytes(name)?;
        bytemuck::try_cast_slice(bytes).map_err(|e| {
            let what = match e {
                bytemuck::PodCastError::TargetAlignmentGreaterAndInputNotAligned
                | bytemuck::PodCastError::AlignmentMismatch => format!(
                    "its data at file offset {} is not aligned to {} bytes",
                    self.data_offset
                        .saturating_add(self.tensor(name).map_or(0, |t| t.offset as usize)),
                    std::mem::align_of::<T>()
                ),
                bytemuck::PodCastError::OutputSliceWouldHaveSlop
                | bytemuck::PodCastError::SizeMismatch => format!(
                    "its size {} is not a multiple of {} bytes",
                    bytes.len(),
                    std::mem::size_of::<T>()
                ),
            };
            Error::Format(format!(
                "tensor `{name}` in {} cannot be viewed as [{}]: {what}",
                self.describe(),
                std::any::type_name::<T>()
            ))
        })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// The path it was opened from (`None` for [`GgufFile::from_bytes`]).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn describe(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => format!("in-memory GGUF ({} bytes)", self.file_size()),
        }
    }
}

/// What [`parse`] finds.
struct Parsed {
    version: u32,
    alignment: usize,
    data_offset: usize,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
}

/// A bounds-checked little-endian reader over the file.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    limits: Limits,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn truncated(&self, what: &str, at: usize, need: u64) -> Error {
        Error::Format(format!(
            "truncated file: {what} at byte offset {at} needs {need} bytes, but the file ends at \
             byte {} (unexpected end of file)",
            self.bytes.len()
        ))
    }

    /// The next `n` bytes.
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let at = self.pos;
        let slice = at.checked_add(n).and_then(|end| self.bytes.get(at..end));
        match slice {
            Some(s) => {
                self.pos = at + s.len();
                Ok(s)
            }
            None => Err(self.truncated(&what(), at, n as u64)),
        }
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        <[u8; N]>::try_from(s).map_err(|_| self.truncated(&what(), self.pos, N as u64))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A GGUF string: u64 length, UTF-8 bytes.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let at = self.pos;
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > self.limits.max_string_len {
            return Err(Error::Format(format!(
                "{} at byte offset {at}: string length {len} exceeds the limit of {} bytes",
                what(),
                self.limits.max_string_len
            )));
        }
        let n = match usize::try_from(len) {
            Ok(n) if n <= self.remaining() => n,
            _ => {
                return Err(Error::Format(format!(
                    "{} at byte offset {at}: string length {len} runs past the end of the file \
                     ({} bytes remain)",
                    what(),
                    self.remaining()
                )))
            }
        };
        let start = self.pos;
        let bytes = self.take(n, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(Error::Format(format!(
                "{} at byte offset {start} is not valid UTF-8 (bad byte at offset {})",
                what(),
                start.saturating_add(e.valid_up_to())
            ))),
        }
    }

    /// Checks that `count` items of at least `min_size` bytes each can fit in what remains.
    fn check_count(&self, count: u64, min_size: usize, what: &dyn Fn() -> String) -> Result<usize> {
        let need = count.checked_mul(min_size as u64);
        match (need, usize::try_from(count)) {
            (Some(need), Ok(n)) if need <= self.remaining() as u64 => Ok(n),
            _ => Err(Error::Format(format!(
                "{}: {count} elements of at least {min_size} bytes run past the end of the file \
                 ({} bytes remain at byte offset {})",
                what(),
                self.remaining(),
                self.pos
            ))),
        }
    }

    /// A value of type `ty`; `depth` is the number of arrays around it.
    fn value(&mut self, ty: ValueType, depth: usize, what: &dyn Fn() -> String) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array(what)?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => {
                let at = self.pos;
                let [b] = self.array(what)?;
                Value::Bool(bool_of(b).ok_or_else(|| bad_bool(&what(), at, b))?)
            }
            ValueType::String => Value::String(self.string(what)?),
            ValueType::Array => Value::Array(self.array_value(depth + 1, what)?),
        })
    }

    /// An array: u32 element type, u64 count, elements. `depth` counts this array.
    fn array_value(&mut self, depth: usize, what: &dyn Fn() -> String) -> Result<Array> {
        let at = self.pos;
        let id = self.u32(&|| format!("array element type of {}", what()))?;
        let ty = ValueType::from_id(id).ok_or_else(|| {
            Error::Format(format!(
                "{} at byte offset {at}: unknown array element type id {id} (expected 0 to 12)",
                what()
            ))
        })?;
        if ty == ValueType::Array && depth >= MAX_ARRAY_DEPTH {
            return Err(Error::Format(format!(
                "{} at byte offset {at}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels",
                what()
            )));
        }
        let count = self.u64(&|| format!("array length of {}", what()))?;
        if count > self.limits.max_array_len {
            return Err(Error::Format(format!(
                "{} at byte offset {at}: array length {count} exceeds the limit of {} elements",
                what(),
                self.limits.max_array_len
            )));
        }
        let n = self.check_count(count, ty.min_encoded_size(), &|| {
            format!("{} at byte offset {at}: array of {ty}", what())
        })?;
        Ok(match ty {
            ValueType::U8 => Array::U8(self.take(n, what)?.to_vec()),
            ValueType::I8 => Array::I8(self.fixed(n, what, i8::from_le_bytes)?),
            ValueType::U16 => Array::U16(self.fixed(n, what, u16::from_le_bytes)?),
            ValueType::I16 => Array::I16(self.fixed(n, what, i16::from_le_bytes)?),
            ValueType::U32 => Array::U32(self.fixed(n, what, u32::from_le_bytes)?),
            ValueType::I32 => Array::I32(self.fixed(n, what, i32::from_le_bytes)?),
            ValueType::F32 => Array::F32(self.fixed(n, what, f32::from_le_bytes)?),
            ValueType::U64 => Array::U64(self.fixed(n, what, u64::from_le_bytes)?),
            ValueType::I64 => Array::I64(self.fixed(n, what, i64::from_le_bytes)?),
            ValueType::F64 => Array::F64(self.fixed(n, what, f64::from_le_bytes)?),
            ValueType::Bool => {
                let start = self.pos;
                let bytes = self.take(n, what)?;
                let mut out = Vec::with_capacity(n);
                for (i, &b) in bytes.iter().enumerate() {
                    let Some(v) = bool_of(b) else {
                        let w = format!("element {i} of {}", what());
                        return Err(bad_bool(&w, start.saturating_add(i), b));
                    };
                    out.push(v);
                }
                Array::Bool(out)
            }
            ValueType::String => {
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    out.push(self.string(&|| format!("string {i} of {}", what()))?);
                }
                Array::String(out)
            }
            ValueType::Array => {
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    out.push(self.array_value(depth + 1, &|| format!("array {i} of {}", what()))?);
                }
                Array::Array(out)
            }
        })
    }

    /// `n` fixed-size little-endian values.
    fn fixed<const N: usize, T>(
        &mut self,
        n: usize,
        what: &dyn Fn() -> String,
        decode: fn([u8; N]) -> T,
    ) -> Result<Vec<T>> {
        let len = n
            .checked_mul(N)
            .ok_or_else(|| Error::Format(format!("{}: array byte size overflows", what())))?;
        let bytes = self.take(len, what)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| decode(<[u8; N]>::try_from(c).unwrap_or([0; N])))
            .collect())
    }
}

fn bool_of(b: u8) -> Option<bool> {
    match b {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

fn bad_bool(what: &str, at: usize, b: u8) -> Error {
    Error::Format(format!(
        "{what} at byte offset {at}: bool value type holds {b}, expected 0 or 1"
    ))
}

/// Explains a file that does not start with `GGUF`, naming the format it looks like.
fn bad_magic(bytes: &[u8]) -> Error {
    let head: Vec<u8> = bytes.iter().take(4).copied().collect();
    let hex = head
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    let hint = match head.as_slice() {
        b"lmgg" => " (this is a legacy GGML file, magic 'ggml'; convert it to GGUF)".to_string(),
        b"fmgg" => " (this is a legacy GGMF file, magic 'ggmf'; convert it to GGUF)".to_string(),
        b"tjgg" => " (this is a legacy GGJT file, magic 'ggjt'; convert it to GGUF)".to_string(),
        b"algg" => " (this is a legacy GGLA LoRA file, magic 'ggla')".to_string(),
        b"FUGG" => " (byte-swapped GGUF magic)".to_string(),
        [b'P', b'K', 3, 4] => " (this is a zip archive, e.g. a PyTorch checkpoint)".to_string(),
        [0x80, 2..=5, ..] => {
            " (this looks like a Python pickle, e.g. a PyTorch checkpoint)".to_string()
        }
        _ if looks_like_safetensors(bytes) => " (this looks like a safetensors file)".to_string(),
        [b'{', ..] => " (this looks like JSON)".to_string(),
        _ => String::new(),
    };
    Error::Format(format!(
        "bad magic at byte offset 0: expected \"GGUF\" (47 47 55 46), found {hex} {:?}{hint}",
        String::from_utf8_lossy(&head)
    ))
}

/// safetensors: u64 header length, then a JSON object of that length.
fn looks_like_safetensors(bytes: &[u8]) -> bool {
    let Some(len) = bytes.get(..8).and_then(|s| <[u8; 8]>::try_from(s).ok()) else {
        return false;
    };
    let len = u64::from_le_bytes(len);
    bytes.get(8) == Some(&b'{') && len >= 2 && len <= (bytes.len() as u64).saturating_sub(8)
}

/// Parses and validates a whole file.
fn parse(bytes: &[u8], limits: Limits) -> Result<Parsed> {
    let mut c = Cursor {
        bytes,
        pos: 0,
        limits,
    };

    // Header.
    if bytes.len() >= 4 && bytes.get(..4) != Some(&MAGIC[..]) {
        return Err(bad_magic(bytes));
    }
    c.take(4, &|| "magic".to_string())?;
    let version = c.u32(&|| "version".to_string())?;
    if version != VERSION {
        let swapped = version.swap_bytes();
        if version & 0xffff == 0 && (1..=3).contains(&swapped) {
            return Err(Error::Unsupported(format!(
                "big-endian GGUF file (version field reads {version:#010x}, i.e. version {swapped} \
                 byte-swapped): only little-endian GGUF is supported"
            )));
        }
        let hint = if version == 1 || version == 2 {
            " (re-convert it with a current llama.cpp or cheems)"
        } else {
            ""
        };
        return Err(Error::Unsupported(format!(
            "unsupported GGUF version {version} at byte offset 4: only version {VERSION} is \
             supported{hint}"
        )));
    }
    let n_tensors = c.u64(&|| "tensor count".to_string())?;
    let n_kv = c.u64(&|| "metadata kv count".to_string())?;
    debug_assert_eq!(c.pos, HEADER_BYTES);
    if n_tensors > limits.max_tensors {
        return Err(Error::Format(format!(
            "tensor count {n_tensors} at byte offset 8 exceeds the limit of {}",
            limits.max_tensors
        )));
    }
    if n_kv > limits.max_kv {
        return Err(Error::Format(format!(
            "metadata kv count {n_kv} at byte offset 16 exceeds the limit of {}",
            limits.max_kv
        )));
    }
    let rem = c.remaining() as u64;
    let tensor_bytes = n_tensors.saturating_mul(MIN_TENSOR_INFO_BYTES);
    if tensor_bytes > rem {
        return Err(Error::Format(format!(
            "tensor count {n_tensors} at byte offset 8 is absurd: the tensor table alone needs at \
             least {tensor_bytes} bytes, but only {rem} bytes follow the header"
        )));
    }
    let kv_bytes = n_kv.saturating_mul(MIN_KV_BYTES);
    if kv_bytes.saturating_add(tensor_bytes) > rem {
        return Err(Error::Format(format!(
            "metadata kv count {n_kv} at byte offset 16 is absurd: {n_kv} entries and {n_tensors} \
             tensors need at least {} bytes, but only {rem} bytes follow the header",
            kv_bytes.saturating_add(tensor_bytes)
        )));
    }

    // Metadata.
    let mut metadata = Metadata::new();
    for i in 0..n_kv {
        let at = c.pos;
        let key = c.string(&|| format!("key of metadata entry {i}"))?;
        let type_at = c.pos;
        let id = c.u32(&|| format!("value type of metadata `{key}`"))?;
        let ty = ValueType::from_id(id).ok_or_else(|| {
            Error::Format(format!(
                "metadata `{key}` at byte offset {type_at}: unknown value type id {id} (expected \
                 0 to 12)"
            ))
        })?;
        let value = c.value(ty, 0, &|| format!("metadata `{key}`"))?;
        if metadata.contains(&key) {
            return Err(Error::Format(format!(
                "duplicate metadata key `{key}` (entry {i} at byte offset {at})"
            )));
        }
        metadata.insert_new(key, value);
    }

    let alignment = match metadata.get(ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if *a != 0 && a.is_power_of_two() => *a as usize,
        Some(Value::U32(a)) => {
            return Err(Error::Format(format!(
                "metadata `{ALIGNMENT_KEY}` = {a}: the alignment must be a non-zero power of two"
            )))
        }
        Some(other) => {
            return Err(Error::Format(format!(
                "metadata `{ALIGNMENT_KEY}` has the wrong type: expected u32, found {}",
                other.describe()
            )))
        }
    };

    // Tensor table.
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let at = c.pos;
        let name = c.string(&|| format!("name of tensor {i}"))?;
        if let Some(&first) = seen.get(&name) {
            return Err(Error::Format(format!(
                "duplicate tensor name `{name}`: tensor {i} at byte offset {at} repeats tensor \
                 {first}"
            )));
        }
        let dims_at = c.pos;
        let n_dims = c.u32(&|| format!("n_dims of tensor `{name}`"))?;
        if n_dims == 0 || n_dims as usize > super::MAX_DIMS {
            return Err(Error::Format(format!(
                "tensor `{name}` at byte offset {dims_at}: n_dims = {n_dims}, expected 1 to {} dims",
                super::MAX_DIMS
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for j in 0..n_dims {
            dims.push(c.u64(&|| format!("dim {j} of tensor `{name}`"))?);
        }
        let type_at = c.pos;
        let id = c.u32(&|| format!("ggml type of tensor `{name}`"))?;
        let ggml_type = GgmlType::from_id(id).ok_or_else(|| {
            Error::Format(format!(
                "tensor `{name}` at byte offset {type_at}: unknown ggml type id {id}"
            ))
        })?;
        let offset = c.u64(&|| format!("data offset of tensor `{name}`"))?;
        let (_, size) = tensor_size(&dims, ggml_type)
            .map_err(|m| Error::Format(format!("tensor `{name}` at byte offset {dims_at}: {m}")))?;
        seen.insert(name.clone(), tensors.len());
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            size,
        });
    }

    // Data section.
    let table_end = c.pos;
    let data_offset = align_up(table_end as u64, alignment as u64)
        .and_then(|d| usize::try_from(d).ok())
        .ok_or_else(|| {
            Error::Format(format!(
                "data section offset overflows (tensor table ends at byte {table_end}, alignment \
                 {alignment})"
            ))
        })?;
    if !tensors.is_empty() && data_offset > bytes.len() {
        return Err(Error::Format(format!(
            "data section at byte offset {data_offset} (tensor table end {table_end} padded to \
             alignment {alignment}) is past the end of the file ({} bytes)",
            bytes.len()
        )));
    }
    let mut ranges: Vec<(usize, usize, usize)> = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        if t.offset % alignment as u64 != 0 {
            return Err(Error::Format(format!(
                "tensor `{}`: data offset {} is not a multiple of the alignment {alignment}",
                t.name, t.offset
            )));
        }
        let start = usize::try_from(t.offset)
            .ok()
            .and_then(|o| o.checked_add(data_offset));
        let end = start.and_then(|s| s.checked_add(t.size));
        match (start, end) {
            (Some(start), Some(end)) if end <= bytes.len() => ranges.push((start, end, i)),
            _ => {
                return Err(Error::Format(format!(
                    "tensor `{}`: data out of range: {} bytes at data offset {} (file offset {}) \
                     run past the end of the file ({} bytes)",
                    t.name,
                    t.size,
                    t.offset,
                    (data_offset as u128) + u128::from(t.offset),
                    bytes.len()
                )))
            }
        }
    }
    // Overlaps: sort by start; each non-empty range must begin at or after the furthest end so far.
    ranges.sort_unstable();
    let mut furthest: Option<(usize, usize)> = None; // (end, tensor index)
    for &(start, end, i) in &ranges {
        if start == end {
            continue;
        }
        if let Some((prev_end, j)) = furthest {
            if start < prev_end {
                let name = |k: usize| tensors.get(k).map_or("?", |t| t.name.as_str());
                return Err(Error::Format(format!(
                    "tensor data overlap: `{}` (file bytes {start}..{end}) overlaps `{}` (ends at \
                     byte {prev_end})",
                    name(i),
                    name(j)
                )));
            }
        }
        if furthest.is_none_or(|(prev_end, _)| end > prev_end) {
            furthest = Some((end, i));
        }
    }

    Ok(Parsed {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_file_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<GgufFile>();
    }

    #[test]
    fn owned_storage_is_64_byte_aligned() {
        let s = Storage::copy_of(&[1, 2, 3]);
        assert_eq!(s.bytes(), [1, 2, 3]);
        assert_eq!(s.bytes().as_ptr() as usize % 64, 0);
        assert!(Storage::copy_of(&[]).bytes().is_empty());
    }
}
