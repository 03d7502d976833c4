//! Unit tests of the block module: layout sizes, dispatch errors, alignment handling and the
//! round-trip error bounds documented in `mod.rs`.

#![allow(clippy::unwrap_used)]

use super::*;
use bytemuck::Zeroable;

/// xorshift64* with a Box-Muller normal: deterministic test data without a dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    fn normal(&mut self) -> f32 {
        let u1 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * (1.0 - u1).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

/// Rows of 4096 values in the shapes that stress quantizers: normal and uniform at several
/// scales, one-signed, heavy-tailed, sparse with outliers, and sub-blocks of very different
/// scales inside one super-block.
fn test_rows() -> Vec<Vec<f32>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let n = 4096usize;
    let mut rows = Vec::new();
    for scale in [0.01f32, 0.5, 4.0, 100.0] {
        rows.push((0..n).map(|_| scale * rng.normal()).collect());
        rows.push(
            (0..n)
                .map(|_| scale * (2.0 * rng.uniform() - 1.0))
                .collect(),
        );
        rows.push((0..n).map(|_| scale * rng.uniform()).collect());
        rows.push((0..n).map(|_| -scale * rng.uniform()).collect());
        rows.push(
            (0..n)
                .map(|_| scale * rng.normal() / (rng.uniform() + 0.05))
                .collect(),
        );
        rows.push(
            (0..n)
                .map(|_| {
                    if rng.uniform() < 0.05 {
                        scale * 10.0 * rng.normal()
                    } else {
                        0.0
                    }
                })
                .collect(),
        );
        rows.push(
            (0..n)
                .map(|i| {
                    let sub = (i / 32) % 8;
                    scale * rng.normal() * 10f32.powi(-(sub as i32) / 2)
                })
                .collect(),
        );
        rows.push(
            (0..n)
                .map(|i| scale * (rng.normal() + if i % 7 == 0 { 3.0 } else { 0.0 }))
                .collect(),
        );
    }
    rows
}

/// The largest `|y - x| / amax` over the blocks of a row (256-value super-blocks for k-quants),
/// counting only blocks whose `amax` is in the range where the bound is documented to hold.
fn max_relative_error(ty: GgmlType, x: &[f32]) -> f32 {
    let mut bytes = vec![0u8; ty.row_bytes(x.len()).unwrap()];
    quantize_row(ty, x, &mut bytes).unwrap();
    let mut y = vec![0.0f32; x.len()];
    dequantize_row(ty, &bytes, &mut y).unwrap();
    let bs = ty.block_size();
    let mut worst = 0.0f32;
    for (xb, yb) in x.chunks(bs).zip(y.chunks(bs)) {
        let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        if amax < min_amax(ty) || amax > 6e4 {
            continue;
        }
        for (a, b) in xb.iter().zip(yb) {
            worst = worst.max((a - b).abs() / amax);
        }
    }
    worst
}

/// Below this block `amax` the f16 scales are subnormal and the documented bounds stop holding.
fn min_amax(ty: GgmlType) -> f32 {
    use GgmlType as T;
    match ty {
        T::Q4_0 | T::Q4_1 | T::Q5_0 | T::Q5_1 => 1e-3,
        T::Q8_K => 0.0,
        _ => 1e-2,
    }
}

/// The bound documented in `mod.rs`, as a fraction of the block's max |x|.
fn documented_bound(ty: GgmlType) -> f32 {
    use GgmlType as T;
    match ty {
        T::F32 => 0.0,
        T::Q8_0 | T::Q8_1 => 1.0 / 220.0,
        T::Q8_K => 1.0 / 250.0,
        T::Q5_1 => 1.0 / 29.5,
        T::Q5_0 => 1.0 / 15.8,
        T::Q4_1 => 1.0 / 14.5,
        T::Q4_0 => 1.0 / 7.9,
        T::Q6_K => 1.0 / 32.0,
        T::Q5_K => 1.0 / 15.0,
        T::Q4_K => 1.0 / 8.0,
        _ => unreachable!("float types are checked per value"),
    }
}

const QUANT_TYPES: [GgmlType; 10] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
];

#[test]
fn struct_sizes_match_the_type_table() {
    use std::mem::size_of;
    let sizes = [
        (GgmlType::Q4_0, size_of::<BlockQ4_0>()),
        (GgmlType::Q4_1, size_of::<BlockQ4_1>()),
        (GgmlType::Q5_0, size_of::<BlockQ5_0>()),
        (GgmlType::Q5_1, size_of::<BlockQ5_1>()),
        (GgmlType::Q8_0, size_of::<BlockQ8_0>()),
        (GgmlType::Q8_1, size_of::<BlockQ8_1>()),
        (GgmlType::Q4_K, size_of::<BlockQ4K>()),
        (GgmlType::Q5_K, size_of::<BlockQ5K>()),
        (GgmlType::Q6_K, size_of::<BlockQ6K>()),
        (GgmlType::Q8_K, size_of::<BlockQ8K>()),
        (GgmlType::F16, size_of::<half::f16>()),
        (GgmlType::BF16, size_of::<half::bf16>()),
        (GgmlType::F32, size_of::<f32>()),
    ];
    for (ty, size) in sizes {
        assert_eq!(ty.type_size(), size, "{ty}");
        assert!(ty.has_blocks(), "{ty}");
    }
    assert_eq!(GgmlType::Q4_0.block_size(), QK4_0);
    assert_eq!(GgmlType::Q4_1.block_size(), QK4_1);
    assert_eq!(GgmlType::Q5_0.block_size(), QK5_0);
    assert_eq!(GgmlType::Q5_1.block_size(), QK5_1);
    assert_eq!(GgmlType::Q8_0.block_size(), QK8_0);
    assert_eq!(GgmlType::Q8_1.block_size(), QK8_1);
    for ty in [
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
    ] {
        assert_eq!(ty.block_size(), QK_K);
    }
    // Field offsets that SIMD kernels rely on.
    assert_eq!(std::mem::offset_of!(BlockQ6K, d), 208);
    assert_eq!(std::mem::offset_of!(BlockQ8K, bsums), 260);
    assert_eq!(std::mem::offset_of!(BlockQ5K, qs), 48);
}

#[test]
fn every_type_with_blocks_dispatches() {
    for &ty in GgmlType::ALL {
        let n = ty.block_size() * 2;
        let src: Vec<f32> = (0..n).map(|i| i as f32 - 20.0).collect();
        let mut bytes = vec![0u8; ty.row_bytes(n).unwrap()];
        let mut back = vec![0.0f32; n];
        let q = quantize_row(ty, &src, &mut bytes);
        let d = dequantize_row(ty, &bytes, &mut back);
        if ty.has_blocks() {
            q.unwrap();
            d.unwrap();
        } else {
            assert!(matches!(q, Err(Error::Unsupported(_))), "{ty}: {q:?}");
            assert!(matches!(d, Err(Error::Unsupported(_))), "{ty}: {d:?}");
        }
    }
}

#[test]
fn dispatch_rejects_wrong_lengths() {
    let src = vec![0.5f32; 64];
    let mut dst = vec![0u8; 36];

    // Not a whole number of blocks.
    let err = quantize_row(GgmlType::Q4_0, &src[..33], &mut dst).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert!(
        msg.contains("Q4_0") && msg.contains("33") && msg.contains("32"),
        "{msg}"
    );

    // Destination too short and too long.
    for len in [35, 37, 0] {
        let mut dst = vec![0u8; len];
        let err = quantize_row(GgmlType::Q4_0, &src, &mut dst).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
        assert!(
            msg.contains("36") && msg.contains(&len.to_string()),
            "{msg}"
        );
    }
    quantize_row(GgmlType::Q4_0, &src, &mut dst).unwrap();

    // Dequantize: partial block of bytes, then wrong destination length.
    let mut out = vec![0.0f32; 64];
    let err = dequantize_row(GgmlType::Q4_0, &dst[..35], &mut out).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert!(
        err.to_string().contains("35") && err.to_string().contains("18"),
        "{err}"
    );
    let err = dequantize_row(GgmlType::Q4_0, &dst, &mut out[..63]).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert!(
        err.to_string().contains("64") && err.to_string().contains("63"),
        "{err}"
    );
    dequantize_row(GgmlType::Q4_0, &dst, &mut out).unwrap();

    // K-quants: 255 values is not a super-block.
    let mut dst = vec![0u8; 144];
    let err = quantize_row(GgmlType::Q4_K, &vec![0.0; 255], &mut dst).unwrap_err();
    assert!(err.to_string().contains("256"), "{err}");

    // Empty rows are fine.
    quantize_row(GgmlType::Q6_K, &[], &mut []).unwrap();
    dequantize_row(GgmlType::Q6_K, &[], &mut []).unwrap();
}

#[test]
fn dispatch_rejects_types_without_blocks() {
    for ty in [
        GgmlType::Q2_K,
        GgmlType::IQ4_NL,
        GgmlType::I32,
        GgmlType::MXFP4,
    ] {
        let n = ty.block_size();
        let mut dst = vec![0u8; ty.type_size()];
        let err = quantize_row(ty, &vec![0.0; n], &mut dst).unwrap_err();
        assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
        assert!(err.to_string().contains(&ty.to_string()), "{err}");
        let err = dequantize_row(ty, &dst, &mut vec![0.0; n]).unwrap_err();
        assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    }
}

#[test]
fn unaligned_buffers_give_the_same_bytes() {
    let row = &test_rows()[0][..512];
    for ty in QUANT_TYPES
        .iter()
        .copied()
        .chain([GgmlType::F16, GgmlType::BF16, GgmlType::F32])
    {
        let len = ty.row_bytes(row.len()).unwrap();
        let mut aligned = vec![0u64; len.div_ceil(8) + 1];
        let aligned = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..len];
        quantize_row(ty, row, aligned).unwrap();
        let mut storage = vec![0u64; len.div_ceil(8) + 1];
        let unaligned = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut storage)[1..=len];
        quantize_row(ty, row, unaligned).unwrap();
        assert_eq!(aligned, unaligned, "{ty}");

        let mut a = vec![0.0f32; row.len()];
        let mut b = vec![0.0f32; row.len()];
        dequantize_row(ty, aligned, &mut a).unwrap();
        dequantize_row(ty, unaligned, &mut b).unwrap();
        assert_eq!(
            bytemuck::cast_slice::<f32, u32>(&a),
            bytemuck::cast_slice::<f32, u32>(&b)
        );
    }
}

#[test]
fn round_trip_error_within_documented_bounds() {
    let rows = test_rows();
    for ty in QUANT_TYPES {
        let bound = documented_bound(ty);
        let worst = rows
            .iter()
            .map(|r| max_relative_error(ty, r))
            .fold(0.0f32, f32::max);
        eprintln!("{ty}: worst |error| / amax = 1/{:.2}", 1.0 / worst);
        assert!(
            worst <= bound,
            "{ty}: worst relative error {worst} exceeds 1/{}",
            1.0 / bound
        );
        assert!(worst > 0.0, "{ty}: suspiciously exact");
    }
}

#[test]
fn float_types_round_trip_within_bounds() {
    for row in test_rows() {
        for (ty, rel) in [
            (GgmlType::F32, 0.0f32),
            (GgmlType::F16, 1.0 / 2048.0),
            (GgmlType::BF16, 1.0 / 256.0),
        ] {
            let mut bytes = vec![0u8; ty.row_bytes(row.len()).unwrap()];
            quantize_row(ty, &row, &mut bytes).unwrap();
            let mut back = vec![0.0f32; row.len()];
            dequantize_row(ty, &bytes, &mut back).unwrap();
            for (x, y) in row.iter().zip(&back) {
                // f16 subnormals (below 6.1e-5) have an absolute, not relative, step.
                let tol = (x.abs() * rel).max(if ty == GgmlType::F16 { 3e-8 } else { 0.0 });
                assert!((x - y).abs() <= tol, "{ty}: {x} -> {y}");
            }
        }
    }
}

#[test]
fn all_zero_blocks_stay_zero() {
    for ty in QUANT_TYPES {
        let n = ty.block_size();
        let mut bytes = vec![0xa5u8; ty.type_size()];
        quantize_row(ty, &vec![0.0; n], &mut bytes).unwrap();
        let mut back = vec![1.0f32; n];
        dequantize_row(ty, &bytes, &mut back).unwrap();
        assert!(back.iter().all(|&v| v == 0.0), "{ty}: {back:?}");
    }
    // Q8_K's sums are zeroed too (ggml leaves them as they were).
    let mut block = [BlockQ8K {
        d: 1.0,
        qs: [1; QK_K],
        bsums: [7; QK_K / 16],
    }];
    quantize_row_q8_k(&[0.0; QK_K], &mut block);
    assert_eq!(block[0], bytemuck::Zeroable::zeroed());
}

#[test]
fn q8_sums_are_consistent() {
    let row = &test_rows()[1];
    let mut b1 = vec![BlockQ8_1::zeroed(); row.len() / QK8_1];
    quantize_row_q8_1(row, &mut b1);
    for b in &b1 {
        let sum: i32 = b.qs.iter().map(|&q| i32::from(q)).sum();
        // `s` is rounded from the f32 scale, which the block only keeps as f16.
        let s = sum as f32 * fp16_to_fp32(b.d);
        assert!(
            (fp16_to_fp32(b.s) - s).abs() <= s.abs() / 512.0,
            "{} vs {s}",
            b.s
        );
    }
    let mut bk = vec![BlockQ8K::zeroed(); row.len() / QK_K];
    quantize_row_q8_k(row, &mut bk);
    for b in &bk {
        for (s, q) in b.bsums.iter().zip(b.qs.chunks(16)) {
            assert_eq!(i32::from(*s), q.iter().map(|&v| i32::from(v)).sum::<i32>());
        }
    }
}

#[test]
fn vec_dot_partners() {
    use GgmlType as T;
    for (w, a) in [
        (T::Q4_0, T::Q8_0),
        (T::Q5_0, T::Q8_0),
        (T::Q8_0, T::Q8_0),
        (T::Q4_1, T::Q8_1),
        (T::Q5_1, T::Q8_1),
        (T::Q4_K, T::Q8_K),
        (T::Q5_K, T::Q8_K),
        (T::Q6_K, T::Q8_K),
        (T::F16, T::F16),
        (T::BF16, T::BF16),
        (T::F32, T::F32),
    ] {
        assert_eq!(vec_dot_type(w), a, "{w}");
    }
    // Every weight type's partner is a type cheems can quantize activations to.
    for &t in GgmlType::ALL.iter().filter(|t| t.is_weight_type()) {
        assert!(vec_dot_type(t).has_blocks(), "{t}");
    }
}

#[test]
fn get_scale_min_k4_inverts_the_packing() {
    let ls = [0, 1, 17, 63, 32, 5, 48, 63];
    let lm = [63, 2, 31, 0, 15, 16, 47, 33];
    let mut block = BlockQ4K::zeroed();
    block.scales = kquants_pack(&ls, &lm);
    for j in 0..8 {
        assert_eq!(
            get_scale_min_k4(j, &block.scales),
            (ls[j], lm[j]),
            "sub-block {j}"
        );
    }
}

fn kquants_pack(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut q = [0u8; K_SCALE_SIZE];
    for j in 0..8 {
        if j < 4 {
            q[j] = ls[j] | ((ls[j + 4] >> 4) << 6);
            q[j + 4] = lm[j] | ((lm[j + 4] >> 4) << 6);
        } else {
            q[j + 4] = (ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4);
        }
    }
    q
}
