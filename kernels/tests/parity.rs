//! Parity of every SIMD kernel with its scalar reference twin, at every kernel level this CPU
//! has (each level is run explicitly through the `*_at` functions, so no global state is
//! involved and the tests can run in parallel).
//!
//! Tolerances:
//! - **Exact** (bitwise equal to the reference): weights whose block scales are powers of two
//!   and activations whose partner scales come out as ±1 (one ±127 per block, the rest small
//!   integers). Every float operation is then exact in both the kernel and the reference, so
//!   any difference would be an error in the integer part (unpacking, offsets, lane sums).
//! - **Random data** (quantized from random floats): `|fast − ref| ≤ 2⁻¹⁶ · Σ|wᵢ·xᵢ|` over the
//!   dequantized values. The kernels scale each 4-value lane sum and add the lanes in another
//!   order than the reference (which scales each block's total), so only float rounding
//!   differs: a few ulps of the terms, far inside the bound.
//! - **matvec**: equal bitwise whatever the thread count and row grouping (each row's
//!   arithmetic does not depend on its neighbours), and within the random-data bound of the
//!   reference.

#![allow(clippy::unwrap_used)]

use cheems_formats::{blocks, GgmlType};
use cheems_kernels::dispatch::{self, available_levels, Level};
use cheems_kernels::matvec::{matvec_at, row_dot_at, Activation, MatRef};
use cheems_kernels::pool::Pool;

const TYPES: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn byte(&mut self) -> u8 {
        (self.next() >> 32) as u8
    }
    /// Uniform in `[-1, 1)`.
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    /// Uniform integer in `lo..=hi`.
    fn int(&mut self, lo: i32, hi: i32) -> i32 {
        lo + ((self.next() >> 33) % (hi - lo + 1) as u64) as i32
    }
}

/// Value counts that cover one block, one block plus one, odd counts and many blocks.
fn lengths(ty: GgmlType) -> Vec<usize> {
    let qk = ty.block_size();
    if qk == 1 {
        vec![
            1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 64, 100, 257, 768, 1000,
        ]
    } else if qk == 32 {
        [1, 2, 3, 4, 5, 7, 24, 37, 64]
            .iter()
            .map(|b| b * 32)
            .collect()
    } else {
        [1, 2, 3, 5].iter().map(|b| b * 256).collect()
    }
}

const ROWS: [usize; 6] = [1, 2, 3, 5, 8, 9];

/// The f16 bits of `±2^e`.
fn pow2_f16(rng: &mut Rng) -> [u8; 2] {
    let e = rng.int(-2, 2);
    let sign = if rng.next() & 1 == 1 { 0x8000u16 } else { 0 };
    (sign | (((15 + e) as u16) << 10)).to_le_bytes()
}

/// One random block of `ty` whose scales are powers of two (quants and scale bytes random).
fn exact_block(ty: GgmlType, rng: &mut Rng) -> Vec<u8> {
    let mut b: Vec<u8> = (0..ty.type_size()).map(|_| rng.byte()).collect();
    let mut put = |at: usize, rng: &mut Rng| {
        let v = pow2_f16(rng);
        b[at..at + 2].copy_from_slice(&v);
    };
    use GgmlType as T;
    match ty {
        T::Q4_0 | T::Q5_0 | T::Q8_0 => put(0, rng),
        T::Q4_1 | T::Q5_1 | T::Q4_K | T::Q5_K => {
            put(0, rng);
            put(2, rng);
        }
        T::Q6_K => put(208, rng),
        _ => unreachable!(),
    }
    if ty == T::Q6_K {
        // Keep the 16 sub-block scales small so block sums stay exact in f32.
        for s in &mut b[192..208] {
            *s = (rng.int(-32, 31) as i8) as u8;
        }
    }
    b
}

/// A weight row of `n` values of `ty` whose every float operation in a dot is exact.
fn exact_row(ty: GgmlType, n: usize, rng: &mut Rng) -> Vec<u8> {
    match ty {
        GgmlType::F32 => (0..n)
            .flat_map(|_| (rng.int(-64, 64) as f32 * 0.25).to_le_bytes())
            .collect(),
        GgmlType::F16 => (0..n)
            .flat_map(|_| half::f16::from_f32(rng.int(-64, 64) as f32 * 0.25).to_le_bytes())
            .collect(),
        GgmlType::BF16 => (0..n)
            .flat_map(|_| half::bf16::from_f32(rng.int(-64, 64) as f32 * 0.25).to_le_bytes())
            .collect(),
        _ => (0..n / ty.block_size())
            .flat_map(|_| exact_block(ty, rng))
            .collect(),
    }
}

/// An activation whose partner scales are ±1: small integers with one ±127 per block.
fn exact_x(n: usize, rng: &mut Rng) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n).map(|_| rng.int(-3, 3) as f32).collect();
    for b in (0..n).step_by(32) {
        let at = b + rng.int(0, (n - b).min(32) as i32 - 1) as usize;
        x[at] = if rng.next() & 1 == 1 { 127.0 } else { -127.0 };
    }
    x
}

fn reference_rows(ty: GgmlType, data: &[u8], rows: usize, act: &Activation, x: &[f32]) -> Vec<f32> {
    let rb = data.len() / rows;
    (0..rows)
        .map(|i| row_dot_at(Level::Scalar, ty, &data[i * rb..(i + 1) * rb], act, x))
        .collect()
}

fn levels() -> Vec<Level> {
    let l: Vec<Level> = available_levels().collect();
    assert!(l.contains(&Level::Scalar));
    eprintln!("levels under test: {l:?}");
    l
}

#[test]
fn integer_parts_are_exact_at_every_level() {
    let pool = Pool::new(1).unwrap();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for level in levels() {
        for ty in TYPES {
            for n in lengths(ty) {
                for rows in ROWS {
                    let data: Vec<u8> =
                        (0..rows).flat_map(|_| exact_row(ty, n, &mut rng)).collect();
                    let x = exact_x(n, &mut rng);
                    let mut act = Activation::with_capacity(n);
                    act.quantize_for_at(level, ty, &x);
                    let want = reference_rows(ty, &data, rows, &act, &x);
                    let mut got = vec![0f32; rows];
                    let w = MatRef {
                        ty,
                        rows,
                        cols: n,
                        data: &data,
                    };
                    matvec_at(level, &w, &act, &x, &mut got, &pool);
                    assert_eq!(got, want, "{level} {ty} n={n} rows={rows}");
                    let rb = data.len() / rows;
                    let one = row_dot_at(level, ty, &data[..rb], &act, &x);
                    assert_eq!(one, want[0], "{level} {ty} n={n} row_dot");
                }
            }
        }
    }
}

/// Random float weights quantized with the reference quantizer, random activations.
fn random_case(
    ty: GgmlType,
    rows: usize,
    n: usize,
    rng: &mut Rng,
) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
    let wf: Vec<f32> = (0..rows * n).map(|_| rng.f() * 0.1).collect();
    let mut data = vec![0u8; ty.row_bytes(rows * n).unwrap()];
    blocks::quantize_row(ty, &wf, &mut data).unwrap();
    let mut wd = vec![0f32; rows * n];
    blocks::dequantize_row(ty, &data, &mut wd).unwrap();
    let x: Vec<f32> = (0..n).map(|_| rng.f() * 4.0).collect();
    (data, wd, x)
}

/// `2⁻¹⁶ · Σ|wᵢ·xᵢ|` of each row (dequantized weights, partner-dequantized activation).
fn bounds(ty: GgmlType, wd: &[f32], x: &[f32], rows: usize) -> Vec<f32> {
    let n = x.len();
    let partner = blocks::vec_dot_type(ty);
    let mut xd = x.to_vec();
    if partner.is_quantized() {
        let mut q = vec![0u8; partner.row_bytes(n).unwrap()];
        blocks::quantize_row(partner, x, &mut q).unwrap();
        blocks::dequantize_row(partner, &q, &mut xd).unwrap();
    }
    (0..rows)
        .map(|r| {
            let norm: f32 = wd[r * n..(r + 1) * n]
                .iter()
                .zip(&xd)
                .map(|(a, b)| (a * b).abs())
                .sum();
            norm / 65536.0 + f32::MIN_POSITIVE
        })
        .collect()
}

#[test]
fn random_data_within_tolerance_at_every_level() {
    let pool = Pool::new(1).unwrap();
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for level in levels() {
        for ty in TYPES {
            for n in lengths(ty) {
                for rows in [1, 5] {
                    let (data, wd, x) = random_case(ty, rows, n, &mut rng);
                    let mut act = Activation::with_capacity(n);
                    act.quantize_for_at(level, ty, &x);
                    let want = reference_rows(ty, &data, rows, &act, &x);
                    let tol = bounds(ty, &wd, &x, rows);
                    let mut got = vec![0f32; rows];
                    let w = MatRef {
                        ty,
                        rows,
                        cols: n,
                        data: &data,
                    };
                    matvec_at(level, &w, &act, &x, &mut got, &pool);
                    for r in 0..rows {
                        assert!(
                            (got[r] - want[r]).abs() <= tol[r],
                            "{level} {ty} n={n} row {r}: {} vs {} (bound {})",
                            got[r],
                            want[r],
                            tol[r]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn matvec_is_the_same_on_any_thread_count() {
    let pools = [
        Pool::new(1).unwrap(),
        Pool::new(2).unwrap(),
        Pool::new(3).unwrap(),
    ];
    let mut rng = Rng(0x0bad_f00d_1234_5678);
    for level in levels() {
        for ty in TYPES {
            let (rows, n) = (203, if ty.block_size() == 256 { 768 } else { 416 });
            let (data, wd, x) = random_case(ty, rows, n, &mut rng);
            let mut act = Activation::with_capacity(n);
            act.quantize_for_at(level, ty, &x);
            let want = reference_rows(ty, &data, rows, &act, &x);
            let tol = bounds(ty, &wd, &x, rows);
            let w = MatRef {
                ty,
                rows,
                cols: n,
                data: &data,
            };
            let mut first: Option<Vec<f32>> = None;
            for pool in &pools {
                let mut got = vec![0f32; rows];
                matvec_at(level, &w, &act, &x, &mut got, pool);
                for r in 0..rows {
                    assert!(
                        (got[r] - want[r]).abs() <= tol[r],
                        "{level} {ty} row {r}: {} vs {}",
                        got[r],
                        want[r]
                    );
                }
                match &first {
                    None => first = Some(got),
                    Some(f) => assert_eq!(&got, f, "{level} {ty}: {} threads", pool.threads()),
                }
            }
        }
    }
}

/// Activation rows that stress the quantizers: random, all zero, exact halves (ties in the
/// rounding), the extreme value repeated with both signs (Q8_K's "first one wins"),
/// subnormals, huge values, and NaN/infinity (handed to the reference quantizer).
fn activation_cases(rng: &mut Rng) -> Vec<Vec<f32>> {
    let n = 512;
    let mut cases = vec![
        (0..n).map(|_| rng.f() * 3.0).collect::<Vec<f32>>(),
        vec![0.0; n],
        (0..n).map(|i| (i % 64) as f32 * 0.5 - 16.0).collect(),
        (0..n).map(|i| (i % 255) as f32 - 127.0).collect(),
        (0..n).map(|i| [-2.0, 2.0, 1.0, -1.0][i % 4]).collect(),
        (0..n).map(|i| f32::from_bits(1 + i as u32)).collect(),
        (0..n).map(|_| rng.f() * 1e30).collect(),
        (0..n).map(|_| rng.f() * 1e-30).collect(),
    ];
    let mut special: Vec<f32> = (0..n).map(|_| rng.f()).collect();
    special[3] = f32::NAN;
    special[40] = f32::INFINITY;
    special[300] = f32::NEG_INFINITY;
    special[301] = -0.0;
    cases.push(special);
    cases
}

#[test]
fn activation_quantizers_make_the_reference_bytes_at_every_level() {
    let mut rng = Rng(0x5eed_0fac_717a_7e01);
    let cases = activation_cases(&mut rng);
    for level in levels() {
        for (c, x) in cases.iter().enumerate() {
            for weight in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4_K] {
                let partner = blocks::vec_dot_type(weight);
                let mut want = vec![0u8; partner.row_bytes(x.len()).unwrap()];
                blocks::quantize_row(partner, x, &mut want).unwrap();
                let mut act = Activation::with_capacity(x.len());
                act.quantize_for_at(level, weight, x);
                assert!(act.partner_bytes() == want, "{level} {partner} case {c}");
            }
        }
    }
}

#[test]
fn empty_rows_and_unsupported_types() {
    let pool = Pool::new(2).unwrap();
    for level in levels() {
        for ty in TYPES {
            let mut act = Activation::with_capacity(0);
            act.quantize_for(ty, &[]);
            let w = MatRef {
                ty,
                rows: 3,
                cols: 0,
                data: &[],
            };
            let mut y = [1f32; 3];
            matvec_at(level, &w, &act, &[], &mut y, &pool);
            assert_eq!(y, [0.0; 3], "{level} {ty}");
        }
        let act = Activation::with_capacity(32);
        assert!(row_dot_at(level, GgmlType::Q2_K, &[0; 84], &act, &[0.0; 256]).is_nan());
    }
}

#[test]
fn levels_are_named_and_forcing_checks_support() {
    assert_eq!(Level::parse("avx512"), Some(Level::Avx512Vnni));
    for l in Level::ALL {
        assert_eq!(Level::parse(l.name()), Some(l));
        assert_eq!(dispatch::force_level(l).is_ok(), l.is_supported());
    }
    dispatch::force_level(Level::Scalar).unwrap();
    assert_eq!(dispatch::level_name(), "scalar");
    dispatch::force_level(dispatch::detected_level()).unwrap();
    assert_eq!(dispatch::level(), dispatch::detected_level());
}
