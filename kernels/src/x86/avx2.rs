//! The `avx2` level: AVX2 + FMA + F16C (Haswell and later, Zen 1 and later).
//!
//! Integer dots are `vpmaddubsw` (u8 × i8 pairs into i16, which cannot saturate for our quant
//! ranges) then `vpmaddwd` by ones; float rows are 8-lane FMA, four rows per pass sharing the
//! activation loads, with F16C (`vcvtph2ps`) for f16 and a 16-bit shift for bf16.

use core::arch::x86_64::*;

use crate::dispatch::Table;

const _: () = assert!(cfg!(target_arch = "x86_64"));

/// `acc + Σ₄ u·y` per i32 lane (u unsigned, at most 63).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn udot(u: __m256i, y: __m256i, acc: __m256i) -> __m256i {
    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), _mm256_set1_epi16(1));
    _mm256_add_epi32(acc, p)
}

/// `Σ₄ x·y` per i32 lane for signed x: `|x| · (y with x's sign)`; exact because `|y| ≤ 127`
/// (the Q8 quantizers' range), so a pair sums to at most `2·128·127 < 2¹⁵`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn sdot(x: __m256i, y: __m256i, _nsum4: __m256i) -> __m256i {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
}

/// Byte `i` is `0xff` where bit `i` of `qh` is set (ggml's `bytes_from_bits_32`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn bits32(qh: u32) -> __m256i {
    let shuf = _mm256_setr_epi64x(
        0,
        0x0101_0101_0101_0101,
        0x0202_0202_0202_0202,
        0x0303_0303_0303_0303,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), shuf);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// Q4_0/Q5_0 subtract their offset (8, 16) in f32, once per block for all rows
/// (`-offset · d_x·d_y · Σ y`), rather than per row in the integer lanes: one `vpaddd` less per
/// block and row. The integer lanes then hold `Σ u·y` and the float rounding differs slightly
/// from the reference's (within the parity bound).
const FOLD_OFFSET: bool = true;

crate::x86::kernels_256!("avx2,fma,f16c");

rows_fn!(q4_0_rows, q4_0_n, 4, 32);
rows_fn!(q8_0_rows, q8_0_n, 4, 32);

/// Float rows times the f32 activation, `R` rows at a time, 16 values per step.
macro_rules! float_kernel {
    ($n_fn:ident, $rows_fn:ident, $load8:ident, $one:path, $esize:literal) => {
        /// # Safety
        /// Each `w[r]` points at a row of `n` values of the kernel's type; `a.x` holds `n`.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        unsafe fn $n_fn<const R: usize>(
            w: [*const u8; R],
            pf: *const u8,
            _b0: usize,
            n: usize,
            a: &ActView<'_>,
        ) -> [f32; R] {
            let x = a.x.as_ptr();
            let mut acc0 = [_mm256_setzero_ps(); R];
            let mut acc1 = [_mm256_setzero_ps(); R];
            let mut i = 0;
            // SAFETY: every index read is below `n`, inside each row and inside `a.x`.
            unsafe {
                while i + 16 <= n {
                    crate::x86::prefetch(pf.wrapping_add(i * R * $esize), 16 * R * $esize);
                    let x0 = _mm256_loadu_ps(x.add(i));
                    let x1 = _mm256_loadu_ps(x.add(i + 8));
                    for r in 0..R {
                        acc0[r] = _mm256_fmadd_ps($load8(w[r], i), x0, acc0[r]);
                        acc1[r] = _mm256_fmadd_ps($load8(w[r], i + 8), x1, acc1[r]);
                    }
                    i += 16;
                }
                if i + 8 <= n {
                    let x0 = _mm256_loadu_ps(x.add(i));
                    for r in 0..R {
                        acc0[r] = _mm256_fmadd_ps($load8(w[r], i), x0, acc0[r]);
                    }
                    i += 8;
                }
                let mut out = [0f32; R];
                for r in 0..R {
                    out[r] = hsum(_mm256_add_ps(acc0[r], acc1[r]));
                    for j in i..n {
                        out[r] += $one(w[r], j) * *x.add(j);
                    }
                }
                out
            }
        }

        rows_fn!($rows_fn, $n_fn, 4, 1);
    };
}

/// Eight f32 at element `i` of the row at `p`.
///
/// # Safety
/// Elements `i..i + 8` are in the row.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn ld_f32(p: *const u8, i: usize) -> __m256 {
    // SAFETY: forwarded from the caller.
    unsafe { _mm256_loadu_ps(p.cast::<f32>().add(i)) }
}

/// Eight f16 at element `i` of the row at `p`, as f32.
///
/// # Safety
/// Elements `i..i + 8` are in the row.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn ld_f16(p: *const u8, i: usize) -> __m256 {
    // SAFETY: forwarded from the caller.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i).cast())) }
}

/// Eight bf16 at element `i` of the row at `p`, as f32.
///
/// # Safety
/// Elements `i..i + 8` are in the row.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn ld_bf16(p: *const u8, i: usize) -> __m256 {
    // SAFETY: forwarded from the caller.
    let h = unsafe { _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(2 * i).cast())) };
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
}

float_kernel!(f32_n, f32_rows, ld_f32, crate::x86::one_f32, 4);
float_kernel!(f16_n, f16_rows, ld_f16, crate::x86::one_f16, 2);
float_kernel!(bf16_n, bf16_rows, ld_bf16, crate::x86::one_bf16, 2);

pub(crate) static TABLE: Table = Table {
    quant_q8: crate::x86::quant::quantize_q8,
    quant_q8_k: crate::x86::quant::quantize_q8_k,
    f32: f32_rows,
    f16: f16_rows,
    bf16: bf16_rows,
    q4_0: q4_0_rows,
    q4_1: q4_1_rows,
    q5_0: q5_0_rows,
    q5_1: q5_1_rows,
    q8_0: q8_0_rows,
    q4_k: q4_k_rows,
    q5_k: q5_k_rows,
    q6_k: q6_k_rows,
    q4_0_mm: None,
    q8_0_mm: None,
    f16_mm: None,
};
