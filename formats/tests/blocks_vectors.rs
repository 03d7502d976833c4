//! The block quantizers and dequantizers against vectors from independent implementations:
//! gguf-py and ggml's own C (see `tests/fixtures/blocks/README.md` and
//! `tests/fixtures/make_block_vectors.py`). Quantized bytes must be identical and dequantized
//! floats bit-identical (`to_bits`), NaNs included.
//!
//! Two kinds of vectors: committed files (inputs and outputs, for edge cases and readable
//! diffs), and "bulk" vectors whose inputs both the script and this test generate from a small
//! integer RNG, with only a hash of ggml's outputs committed (many more blocks for no space).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use cheems_formats::blocks::{dequantize_row, quantize_row};
use cheems_formats::GgmlType;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/blocks")
}

fn read(name: &str) -> Vec<u8> {
    let path = fixtures().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_f32(name: &str) -> Vec<f32> {
    let bytes = read(name);
    assert_eq!(bytes.len() % 4, 0, "{name}");
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

struct Vector {
    ty: GgmlType,
    op: String,
    input: String,
    expected: String,
    references: String,
}

fn index() -> serde_json::Value {
    serde_json::from_slice(&read("index.json")).unwrap()
}

fn vectors() -> Vec<Vector> {
    let index = index();
    let list = index["vectors"].as_array().unwrap();
    list.iter()
        .map(|v| {
            let s = |k: &str| {
                v[k].as_str()
                    .unwrap_or_else(|| panic!("{k} in {v}"))
                    .to_string()
            };
            let refs: Vec<&str> = v["references"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            Vector {
                ty: GgmlType::parse(&s("type")).unwrap_or_else(|| panic!("type {}", s("type"))),
                op: s("op"),
                input: s("input"),
                expected: s("expected"),
                references: refs.join("; "),
            }
        })
        .collect()
}

/// Runs `check` on each vector of `op` and fails with every mismatch it reports; also fails
/// when a type with blocks (but the ones in `missing`) has no vector.
fn for_each(op: &str, missing: &[GgmlType], mut check: impl FnMut(&Vector) -> Option<String>) {
    let all = vectors();
    let mut seen = Vec::new();
    let mut failures = Vec::new();
    for v in all.iter().filter(|v| v.op == op) {
        failures.extend(check(v));
        seen.push(v.ty);
    }
    for &ty in GgmlType::ALL
        .iter()
        .filter(|t| t.has_blocks() && !missing.contains(t))
    {
        if !seen.contains(&ty) {
            failures.push(format!("no {op} vector for {ty}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn quantize_matches_reference_bytes() {
    for_each("quantize", &[], |v| {
        let input = read_f32(&v.input);
        let expected = read(&v.expected);
        let mut out = vec![0u8; expected.len()];
        quantize_row(v.ty, &input, &mut out).unwrap();
        let i = out.iter().zip(&expected).position(|(a, b)| a != b)?;
        let (bs, qk) = (v.ty.type_size(), v.ty.block_size());
        let block = i / bs;
        let range = block * bs..(block + 1) * bs;
        Some(format!(
            "{} quantize differs from {} at byte {i} (block {block}, values {:?})\n ours: {:02x?}\n want: {:02x?}",
            v.ty,
            v.references,
            &input[block * qk..(block + 1) * qk],
            &out[range.clone()],
            &expected[range],
        ))
    });
}

#[test]
fn dequantize_matches_reference_bits() {
    // Neither gguf-py nor ggml dequantizes Q8_1.
    for_each("dequantize", &[GgmlType::Q8_1], |v| {
        let input = read(&v.input);
        let expected = read_f32(&v.expected);
        // Once as read, once one byte off alignment (the block-by-block path).
        let mut shifted = vec![0u8; input.len() + 1];
        shifted[1..].copy_from_slice(&input);
        for (what, src) in [("aligned", &input[..]), ("unaligned", &shifted[1..])] {
            let mut out = vec![0.0f32; expected.len()];
            dequantize_row(v.ty, src, &mut out).unwrap();
            let bad = out
                .iter()
                .zip(&expected)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            if let Some(i) = bad {
                let (a, b) = (out[i], expected[i]);
                return Some(format!(
                    "{} dequantize ({what}) differs from {} at value {i} (block {}): ours {a:e} ({:#010x}), want {b:e} ({:#010x})",
                    v.ty,
                    v.references,
                    i / v.ty.block_size(),
                    a.to_bits(),
                    b.to_bits(),
                ));
            }
        }
        None
    });
}

#[test]
fn fixtures_stay_small() {
    let total: u64 = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(total < 1 << 20, "tests/fixtures/blocks holds {total} bytes");
}

/// xorshift64*, as `XorShift` in `tests/fixtures/make_block_vectors.py`.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// `2^e` as an exact f32.
fn pow2(e: i32) -> f32 {
    f32::from_bits(((127 + e) as u32) << 23)
}

/// The script's `bulk_values`: super-block `b` is uniform, a product, a cube or heavy-tailed
/// (`b % 4`), scaled by `2^((b / 4) % 12 - 6)`.
fn bulk_values(rng: &mut XorShift, n_superblocks: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n_superblocks * 256);
    for b in 0..n_superblocks {
        let kind = b % 4;
        let draws = if kind == 1 || kind == 3 { 2 } else { 1 };
        let scale = pow2(((b / 4) % 12) as i32 - 6);
        for _ in 0..256 {
            let mut u = [0.0f32; 2];
            for v in u.iter_mut().take(draws) {
                *v = (((rng.next() >> 40) as i64 - (1 << 23)) as f32) * pow2(-23);
            }
            let v = match kind {
                0 => u[0],
                1 => u[0] * u[1],
                2 => (u[0] * u[0]) * u[0],
                _ => u[0] / (u[1].abs() + 0.0625),
            };
            out.push(v * scale);
        }
    }
    out
}

/// The script's `bulk_blocks`: random bytes with finite scales; every 16-bit pattern for f16
/// and bf16.
fn bulk_blocks(rng: &mut XorShift, ty: GgmlType, n_bytes: usize) -> Vec<u8> {
    if matches!(ty, GgmlType::F16 | GgmlType::BF16) {
        return (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
    }
    let ts = ty.type_size();
    let n_blocks = n_bytes / ts;
    let mut out = Vec::with_capacity(n_blocks * ts);
    for _ in 0..n_blocks {
        let mut block: Vec<u8> = (0..ts.div_ceil(8))
            .flat_map(|_| rng.next().to_le_bytes())
            .collect();
        block.truncate(ts);
        let f16_at: &[usize] = match ty {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 | GgmlType::Q4_K | GgmlType::Q5_K => {
                &[0, 2]
            }
            GgmlType::Q6_K => &[208],
            _ => &[],
        };
        for &off in f16_at {
            let h = u16::from_le_bytes([block[off], block[off + 1]]);
            let h = if h & 0x7c00 == 0x7c00 { h & 0x83ff } else { h };
            block[off..off + 2].copy_from_slice(&h.to_le_bytes());
        }
        if ty == GgmlType::Q8_K {
            let d = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
            let d = if (d >> 23) & 0xff == 0xff {
                d & 0xbfff_ffff
            } else {
                d
            };
            block[0..4].copy_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&block);
    }
    out
}

#[test]
fn bulk_outputs_hash_as_reference() {
    let index = index();
    let bulk = &index["bulk"];
    let num = |k: &str| bulk[k].as_u64().unwrap_or_else(|| panic!("bulk.{k}"));
    let mut rng = XorShift(num("seed"));
    let values = bulk_values(&mut rng, num("superblocks") as usize);
    let bits: Vec<f32> = (0..num("float_values"))
        .map(|_| f32::from_bits((rng.next() >> 32) as u32))
        .collect();
    let mut failures = Vec::new();
    // The script's TYPES order: it draws each type's dequantize input in turn.
    let order = [
        "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q8_1", "q4_k", "q5_k",
        "q6_k", "q8_k",
    ];
    for name in order {
        let ty = GgmlType::parse(name).unwrap();
        let want = &bulk["hashes"][name];
        let x = if ty.is_quantized() { &values } else { &bits };
        let mut q = vec![0u8; ty.row_bytes(x.len()).unwrap()];
        quantize_row(ty, x, &mut q).unwrap();
        let got = fnv1a64(&q);
        if want["quantize"].as_str() != Some(got.as_str()) {
            failures.push(format!(
                "{ty} quantize: hash {got}, want {}",
                want["quantize"]
            ));
        }
        if ty == GgmlType::Q8_1 {
            continue;
        }
        let b = if ty == GgmlType::F32 {
            bytemuck::cast_slice::<f32, u8>(x).to_vec()
        } else {
            bulk_blocks(&mut rng, ty, num("dequantize_bytes") as usize)
        };
        assert_eq!(
            Some(b.len() as u64 / ty.type_size() as u64),
            want["dequantize_blocks"].as_u64()
        );
        let mut y = vec![0.0f32; b.len() / ty.type_size() * ty.block_size()];
        dequantize_row(ty, &b, &mut y).unwrap();
        let got = fnv1a64(bytemuck::cast_slice(&y));
        if want["dequantize"].as_str() != Some(got.as_str()) {
            failures.push(format!(
                "{ty} dequantize: hash {got}, want {}",
                want["dequantize"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "bulk vectors differ from {}:\n{}",
        bulk["references"],
        failures.join("\n")
    );
}
