//! Minimal `.npy` (NumPy format 1.0) reading and writing of little-endian f32 and i32 arrays, for
//! `cheems logits` and the parity tests.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Writes a C-order float32 array of `shape`.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    if shape.iter().product::<usize>() != data.len() {
        bail!("npy: shape {shape:?} does not hold {} values", data.len());
    }
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_s}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?,
    );
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    for v in data {
        f.write_all(&v.to_le_bytes())?;
    }
    f.flush()
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// An array read from `.npy` bytes: its shape and values as f64 (from `<f4`, `<f8`, `<i4`, `<i8`).
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// Parses `.npy` bytes (version 1 or 2, C order, little-endian numeric types).
pub fn parse(bytes: &[u8]) -> Result<Array> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("not an .npy file");
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => bail!("unsupported .npy version {v}"),
    };
    let header = std::str::from_utf8(
        bytes
            .get(start..start + hlen)
            .context("truncated .npy header")?,
    )?;
    let field = |name: &str| -> Result<&str> {
        let i = header
            .find(name)
            .with_context(|| format!(".npy header lacks {name}"))?;
        Ok(header[i + name.len()..].trim_start_matches([':', ' ', '\'']))
    };
    if field("'fortran_order'")?.starts_with("True") {
        bail!("Fortran-order .npy arrays are not supported");
    }
    let descr = field("'descr'")?;
    let (size, conv): (usize, fn(&[u8]) -> f64) = if descr.starts_with("<f4") {
        (4, |b| {
            f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        })
    } else if descr.starts_with("<f8") {
        (8, |b| {
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
        })
    } else if descr.starts_with("<i4") {
        (4, |b| {
            f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        })
    } else if descr.starts_with("<i8") {
        (8, |b| {
            i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64
        })
    } else {
        bail!("unsupported .npy dtype {}", &descr[..descr.len().min(8)]);
    };
    let shape_s = field("'shape'")?;
    let shape_s = &shape_s[shape_s.find('(').context("bad .npy shape")? + 1
        ..shape_s.find(')').context("bad .npy shape")?];
    let shape: Vec<usize> = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<_, _>>()?;
    let n: usize = shape.iter().product();
    let body = bytes.get(start + hlen..).context("truncated .npy data")?;
    if body.len() < n * size {
        bail!(
            ".npy data holds {} bytes, shape {shape:?} needs {}",
            body.len(),
            n * size
        );
    }
    let data = body[..n * size].chunks_exact(size).map(conv).collect();
    Ok(Array { shape, data })
}
