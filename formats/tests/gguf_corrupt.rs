//! The GGUF reader on hostile input: a small valid file is built byte by byte (recording where each
//! field lies), then each case mutates or truncates it. Every case must give an error that names
//! the problem; no input may panic (truncation at every byte, 20k random mutations).

#![allow(clippy::unwrap_used)]

use cheems_formats::gguf::{GgufFile, Limits};
use cheems_formats::GgmlType;

/// Little-endian byte builder that remembers positions.
#[derive(Default)]
struct Raw {
    buf: Vec<u8>,
}

impl Raw {
    fn pos(&self) -> usize {
        self.buf.len()
    }
    fn u8(&mut self, v: u8) -> usize {
        let p = self.pos();
        self.buf.push(v);
        p
    }
    fn u32(&mut self, v: u32) -> usize {
        let p = self.pos();
        self.buf.extend_from_slice(&v.to_le_bytes());
        p
    }
    fn u64(&mut self, v: u64) -> usize {
        let p = self.pos();
        self.buf.extend_from_slice(&v.to_le_bytes());
        p
    }
    /// Returns the position of the length; the bytes follow at +8.
    fn str(&mut self, s: &str) -> usize {
        let p = self.u64(s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
        p
    }
}

/// Where the fields of [`valid`] lie.
struct Layout {
    bytes: Vec<u8>,
    n_tensors_at: usize,
    n_kv_at: usize,
    /// Key length position of each kv, and of its value (after the type id).
    key_at: Vec<usize>,
    type_at: Vec<usize>,
    value_at: Vec<usize>,
    /// Tensor table fields.
    name_at: Vec<usize>,
    n_dims_at: Vec<usize>,
    dims_at: Vec<usize>,
    ggml_type_at: Vec<usize>,
    offset_at: Vec<usize>,
    data_offset: usize,
}

const ALIGN_KV: usize = 1;
const TOKENS_KV: usize = 2;
const BOOL_KV: usize = 4;
const NESTED_KV: usize = 5;

/// A valid file: 6 metadata entries, 3 tensors (`a` f32 [8], `b` q8_0 [32, 2], `c` f16 [4]).
fn valid() -> Layout {
    let mut r = Raw::default();
    r.buf.extend_from_slice(b"GGUF");
    r.u32(3);
    let n_tensors_at = r.u64(3);
    let n_kv_at = r.u64(6);
    let (mut key_at, mut type_at, mut value_at) = (vec![], vec![], vec![]);
    let mut kv = |r: &mut Raw, key: &str, ty: u32, value: &dyn Fn(&mut Raw)| {
        key_at.push(r.str(key));
        type_at.push(r.u32(ty));
        value_at.push(r.pos());
        value(r);
    };
    kv(&mut r, "general.architecture", 8, &|r| {
        r.str("test");
    });
    kv(&mut r, "general.alignment", 4, &|r| {
        r.u32(32);
    });
    kv(&mut r, "test.tokens", 9, &|r| {
        r.u32(8);
        r.u64(2);
        r.str("ab");
        r.str("cd");
    });
    kv(&mut r, "test.f", 6, &|r| {
        r.u32(1.5f32.to_bits());
    });
    kv(&mut r, "test.g", 7, &|r| {
        r.u8(1);
    });
    kv(&mut r, "test.nest", 9, &|r| {
        r.u32(9);
        r.u64(1);
        r.u32(5);
        r.u64(1);
        r.u32(7);
    });
    let (mut name_at, mut n_dims_at, mut dims_at, mut ggml_type_at, mut offset_at) =
        (vec![], vec![], vec![], vec![], vec![]);
    let tensors: [(&str, &[u64], GgmlType, u64); 3] = [
        ("a", &[8], GgmlType::F32, 0),
        ("b", &[32, 2], GgmlType::Q8_0, 32),
        ("c", &[4], GgmlType::F16, 128),
    ];
    for (name, dims, ty, offset) in tensors {
        name_at.push(r.str(name));
        n_dims_at.push(r.u32(dims.len() as u32));
        dims_at.push(r.pos());
        for &d in dims {
            r.u64(d);
        }
        ggml_type_at.push(r.u32(ty as u32));
        offset_at.push(r.u64(offset));
    }
    while r.pos() % 32 != 0 {
        r.u8(0);
    }
    let data_offset = r.pos();
    // a: 32 bytes, b: 68 bytes (+28 pad), c: 8 bytes. The file ends with c's data (no trailing
    // padding, which readers do not require), so cutting off any byte breaks the file.
    for i in 0..136u32 {
        r.u8((i * 7) as u8);
    }
    Layout {
        bytes: r.buf,
        n_tensors_at,
        n_kv_at,
        key_at,
        type_at,
        value_at,
        name_at,
        n_dims_at,
        dims_at,
        ggml_type_at,
        offset_at,
        data_offset,
    }
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Parses `bytes`, expecting an error whose message contains every word (case-insensitive).
#[track_caller]
fn expect_err(bytes: &[u8], words: &[&str]) -> String {
    expect_err_with(bytes, Limits::default(), words)
}

#[track_caller]
fn expect_err_with(bytes: &[u8], limits: Limits, words: &[&str]) -> String {
    let msg = match GgufFile::from_bytes_with_limits(bytes, limits) {
        Ok(_) => panic!("accepted a corrupt file; expected an error with {words:?}"),
        Err(e) => e.to_string(),
    };
    let lower = msg.to_lowercase();
    for w in words {
        assert!(
            lower.contains(&w.to_lowercase()),
            "error `{msg}` lacks `{w}`"
        );
    }
    assert!(!msg.contains('\n'), "error `{msg}` is not one line");
    if std::env::var_os("GGUF_SHOW_ERRORS").is_some() {
        eprintln!("{msg}");
    }
    msg
}

/// Applies `f` to a copy of the valid file and expects an error with `words`.
#[track_caller]
fn mutated(f: impl FnOnce(&Layout, &mut Vec<u8>), words: &[&str]) -> String {
    let l = valid();
    let mut b = l.bytes.clone();
    f(&l, &mut b);
    expect_err(&b, words)
}

#[test]
fn the_valid_file_is_valid() {
    let l = valid();
    let f = GgufFile::from_bytes(&l.bytes).unwrap();
    assert_eq!(f.data_offset(), l.data_offset);
    assert_eq!(f.metadata().len(), 6);
    assert_eq!(
        f.metadata().get_str_array("test.tokens").unwrap(),
        ["ab", "cd"]
    );
    assert!(f.metadata().get_bool("test.g").unwrap());
    let sizes: Vec<usize> = f.tensors().iter().map(|t| t.size).collect();
    assert_eq!(sizes, [32, 68, 8]);
    assert_eq!(
        f.tensor_bytes("c").unwrap(),
        &l.bytes[l.data_offset + 128..l.data_offset + 136]
    );
}

#[test]
fn bad_magic() {
    mutated(
        |_, b| b[..4].copy_from_slice(b"GGML"),
        &["bad magic", "GGUF", "47 47 4d 4c"],
    );
    mutated(|_, b| b[..4].copy_from_slice(b"tjgg"), &["magic", "GGJT"]);
    mutated(
        |_, b| b[..4].copy_from_slice(b"lmgg"),
        &["magic", "legacy GGML"],
    );
    let mut st = Vec::new();
    let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    st.extend_from_slice(&(header.len() as u64).to_le_bytes());
    st.extend_from_slice(header);
    st.extend_from_slice(&[0; 4]);
    expect_err(&st, &["magic", "safetensors"]);
    expect_err(b"PK\x03\x04rest of a zip", &["magic", "zip"]);
    expect_err(b"GG", &["magic", "truncated", "end of file"]);
    expect_err(b"", &["magic", "truncated"]);
}

#[test]
fn unsupported_version() {
    let m = mutated(|_, b| put_u32(b, 4, 2), &["version 2", "only version 3"]);
    assert!(m.contains("re-convert"), "{m}");
    mutated(|_, b| put_u32(b, 4, 1), &["version 1", "only version 3"]);
    mutated(|_, b| put_u32(b, 4, 4), &["version 4", "only version 3"]);
    mutated(
        |_, b| put_u32(b, 4, 0x0300_0000),
        &["big-endian", "0x03000000"],
    );
}

#[test]
fn truncated_header() {
    let l = valid();
    expect_err(
        &l.bytes[..10],
        &["truncated", "tensor count", "end of file"],
    );
    expect_err(&l.bytes[..20], &["truncated", "kv count"]);
    expect_err(
        &l.bytes[..l.n_dims_at[1] + 2],
        &["truncated", "n_dims of tensor `b`"],
    );
    // A small file cut short mostly fails the count checks first ("absurd"); declare no tensors
    // to reach the truncated metadata value itself.
    let mut b = l.bytes[..l.value_at[3] + 1].to_vec();
    put_u64(&mut b, l.n_tensors_at, 0);
    expect_err(&b, &["truncated", "metadata `test.f`", "end of file"]);
    expect_err(&l.bytes[..l.value_at[3] + 1], &["kv count", "absurd"]);
}

#[test]
fn absurd_counts() {
    mutated(
        |l, b| put_u64(b, l.n_tensors_at, 1000),
        &["tensor count 1000", "absurd"],
    );
    mutated(
        |l, b| put_u64(b, l.n_tensors_at, u64::MAX),
        &["tensor count", "limit"],
    );
    mutated(
        |l, b| put_u64(b, l.n_kv_at, 1000),
        &["kv count 1000", "absurd"],
    );
    mutated(
        |l, b| put_u64(b, l.n_kv_at, u64::MAX),
        &["kv count", "limit"],
    );
    let l = valid();
    let limits = Limits {
        max_tensors: 2,
        ..Limits::default()
    };
    expect_err_with(&l.bytes, limits, &["tensor count 3", "limit of 2"]);
    let limits = Limits {
        max_kv: 5,
        ..Limits::default()
    };
    expect_err_with(&l.bytes, limits, &["kv count 6", "limit of 5"]);
}

#[test]
fn string_lengths() {
    // Past the end of the file but under the limit.
    mutated(
        |l, b| put_u64(b, l.key_at[3], 1 << 20),
        &[
            "key of metadata entry 3",
            "string length 1048576",
            "past the end",
        ],
    );
    mutated(
        |l, b| put_u64(b, l.key_at[0], u64::MAX),
        &["string length", "limit"],
    );
    mutated(
        |l, b| put_u64(b, l.value_at[0], 1 << 29),
        &["`general.architecture`", "past the end"],
    );
    mutated(
        |l, b| put_u64(b, l.name_at[2], 1 << 16),
        &["name of tensor 2", "past the end"],
    );
    let l = valid();
    let limits = Limits {
        max_string_len: 5,
        ..Limits::default()
    };
    expect_err_with(
        &l.bytes,
        limits,
        &["key of metadata entry 0", "limit of 5 bytes"],
    );
}

#[test]
fn array_lengths() {
    // test.tokens: u32 element type, then the u64 count.
    mutated(
        |l, b| put_u64(b, l.value_at[TOKENS_KV] + 4, 1 << 27),
        &["`test.tokens`", "134217728 elements", "past the end"],
    );
    mutated(
        |l, b| put_u64(b, l.value_at[TOKENS_KV] + 4, u64::MAX),
        &["array length", "limit"],
    );
    // The second string's length.
    mutated(
        |l, b| put_u64(b, l.value_at[TOKENS_KV] + 12 + 10, 1 << 20),
        &["string 1 of", "`test.tokens`", "past the end"],
    );
    // The nested inner array's count.
    mutated(
        |l, b| put_u64(b, l.value_at[NESTED_KV] + 16, 1 << 20),
        &["`test.nest`", "past the end"],
    );
    let l = valid();
    let limits = Limits {
        max_array_len: 1,
        ..Limits::default()
    };
    expect_err_with(
        &l.bytes,
        limits,
        &["`test.tokens`", "array length 2", "limit of 1"],
    );
}

#[test]
fn nested_arrays_too_deep_or_bombs() {
    // An array of arrays of arrays ... 100k levels deep: refused without recursing that far.
    let mut r = Raw::default();
    r.buf.extend_from_slice(b"GGUF");
    r.u32(3);
    r.u64(0);
    r.u64(1);
    r.str("bomb");
    r.u32(9);
    for _ in 0..100_000 {
        r.u32(9);
        r.u64(1);
    }
    expect_err(&r.buf, &["`bomb`", "nested deeper than 8"]);
}

#[test]
fn bad_dims() {
    mutated(
        |l, b| put_u32(b, l.n_dims_at[0], 5),
        &["tensor `a`", "n_dims = 5", "dims"],
    );
    mutated(
        |l, b| put_u32(b, l.n_dims_at[0], 0),
        &["tensor `a`", "n_dims = 0", "dims"],
    );
    mutated(
        |l, b| put_u32(b, l.n_dims_at[0], u32::MAX),
        &["n_dims", "dims"],
    );
    mutated(
        |l, b| put_u64(b, l.dims_at[0], u64::MAX),
        &["tensor `a`", "dim 0", "overflow"],
    );
    mutated(
        |l, b| {
            put_u64(b, l.dims_at[1], 1 << 32);
            put_u64(b, l.dims_at[1] + 8, 1 << 32);
        },
        &["tensor `b`", "element count", "overflow"],
    );
    // Element count fits but the byte size (x 34/32) does not fit usize... only on small targets;
    // here the element count limit (int64) catches a big q8_0 first.
    mutated(
        |l, b| put_u64(b, l.dims_at[1], 33),
        &["tensor `b`", "innermost dim 33", "block size 32"],
    );
}

#[test]
fn unknown_types() {
    mutated(
        |l, b| put_u32(b, l.ggml_type_at[0], 4),
        &["tensor `a`", "unknown ggml type id 4"],
    );
    mutated(
        |l, b| put_u32(b, l.ggml_type_at[2], 1000),
        &["tensor `c`", "type id 1000"],
    );
    mutated(
        |l, b| put_u32(b, l.type_at[3], 13),
        &["`test.f`", "unknown value type id 13"],
    );
    mutated(
        |l, b| put_u32(b, l.value_at[TOKENS_KV], 77),
        &["`test.tokens`", "unknown array element type id 77"],
    );
    mutated(
        |l, b| b[l.value_at[BOOL_KV]] = 2,
        &["`test.g`", "bool", "holds 2"],
    );
}

#[test]
fn bad_alignment() {
    let at = |l: &Layout| l.value_at[ALIGN_KV];
    mutated(
        |l, b| put_u32(b, at(l), 48),
        &["general.alignment", "48", "power of two"],
    );
    mutated(
        |l, b| put_u32(b, at(l), 0),
        &["general.alignment", "power of two"],
    );
    // The same four bytes declared as i32 or f32 instead of u32.
    mutated(
        |l, b| put_u32(b, l.type_at[ALIGN_KV], 5),
        &["general.alignment", "wrong type", "i32"],
    );
    mutated(
        |l, b| put_u32(b, l.type_at[ALIGN_KV], 6),
        &["general.alignment", "type", "f32"],
    );
    // Huge alignment: the data section lands past the end of the file.
    mutated(
        |l, b| put_u32(b, at(l), 1 << 31),
        &["data section", "past the end"],
    );
}

#[test]
fn bad_offsets() {
    mutated(
        |l, b| put_u64(b, l.offset_at[2], 130),
        &[
            "tensor `c`",
            "offset 130",
            "not a multiple of the alignment 32",
        ],
    );
    mutated(
        |l, b| put_u64(b, l.offset_at[2], 1 << 20),
        &["tensor `c`", "out of range", "past the end"],
    );
    mutated(
        |l, b| put_u64(b, l.offset_at[2], u64::MAX - 31),
        &["tensor `c`", "out of range"],
    );
    // Cut the data short: the last tensor's bytes are missing.
    let l = valid();
    expect_err(
        &l.bytes[..l.data_offset + 130],
        &["tensor `c`", "past the end"],
    );
    // c at 32 lies inside b (32..100).
    mutated(
        |l, b| put_u64(b, l.offset_at[2], 64),
        &["overlap", "`c`", "`b`"],
    );
    mutated(
        |l, b| put_u64(b, l.offset_at[0], 64),
        &["overlap", "`a`", "`b`"],
    );
    // A tensor entirely inside a longer one that starts earlier.
    mutated(
        |l, b| {
            put_u64(b, l.offset_at[1], 0);
            put_u64(b, l.offset_at[0], 32);
        },
        &["overlap"],
    );
}

#[test]
fn duplicates() {
    mutated(
        |l, b| b[l.name_at[2] + 8] = b'a',
        &["duplicate tensor name `a`", "tensor 2"],
    );
    mutated(
        |l, b| b[l.key_at[4] + 8 + 5] = b'f',
        &["duplicate metadata key `test.f`", "entry 4"],
    );
}

#[test]
fn invalid_utf8() {
    mutated(
        |l, b| b[l.key_at[3] + 8] = 0xff,
        &["key of metadata entry 3", "UTF-8"],
    );
    mutated(
        |l, b| b[l.value_at[0] + 8] = 0xc3,
        &["`general.architecture`", "UTF-8"],
    );
    mutated(
        |l, b| b[l.value_at[TOKENS_KV] + 12 + 8 + 1] = 0x80,
        &["string 0 of", "UTF-8"],
    );
    mutated(
        |l, b| b[l.name_at[1] + 8] = 0xfe,
        &["name of tensor 1", "UTF-8"],
    );
}

#[test]
fn truncation_at_every_byte_is_an_error() {
    let l = valid();
    for n in 0..l.bytes.len() {
        let r = GgufFile::from_bytes(&l.bytes[..n]);
        assert!(r.is_err(), "a file cut to {n} bytes was accepted");
    }
    assert!(GgufFile::from_bytes(&l.bytes).is_ok());
}

#[test]
fn random_mutations_never_panic() {
    let l = valid();
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let interesting: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, 0x20, 0x09, 0x08];
    let (mut ok, mut err) = (0, 0);
    for _ in 0..20_000 {
        let mut b = l.bytes.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % b.len() as u64) as usize;
            b[at] = match next() % 3 {
                0 => next() as u8,
                1 => interesting[(next() % 8) as usize],
                _ => b[at] ^ (1 << (next() % 8)),
            };
        }
        if next() % 8 == 0 {
            b.truncate((next() % b.len() as u64) as usize);
        }
        match GgufFile::from_bytes(&b) {
            Ok(f) => {
                ok += 1;
                for t in f.tensors() {
                    assert_eq!(f.tensor_data(t).len(), t.size);
                }
                for (k, _) in f.metadata().iter() {
                    let _ = f.metadata().get_u32(k);
                }
            }
            Err(e) => {
                err += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    // Most mutations of a small file break it, but some (data bytes, values) do not.
    assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
}
