//! AVX2 activation quantizers (Q8_0, Q8_1, Q8_K), byte-identical to the reference quantizers
//! of `cheems_formats::blocks` for every input: the same IEEE operations in the same order per
//! value (`x · (1/d)`, then ggml's rounding: half away from zero for Q8_0/Q8_1, done as
//! `trunc` plus a `±1` step where the exact fraction is at least ½; to nearest even for Q8_K,
//! which is `vcvtps2dq` under the default rounding mode), and F16C's round-to-nearest-even
//! for the f16 scales. A block holding a NaN or an infinity (whose treatment in the reference
//! is order-dependent), or whose scale's inverse overflows, goes through the reference
//! quantizer. Both AVX levels use these.

use core::arch::x86_64::*;

use bytemuck::Zeroable;
use cheems_formats::blocks::{self, BlockQ8K, BlockQ8_0, BlockQ8_1};

use crate::dispatch::ActBufs;

/// `max |v|` over 32 floats at `p`, or `None` when one is not finite.
///
/// # Safety
/// 32 floats are readable at `p`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn absmax32(p: *const f32) -> (__m256, [__m256; 4], bool) {
    let mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let inf = _mm256_set1_ps(f32::INFINITY);
    // SAFETY: forwarded from the caller.
    let v = unsafe { core::array::from_fn(|k| _mm256_loadu_ps(p.add(8 * k))) };
    let mut m = _mm256_setzero_ps();
    let mut finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    for vk in v {
        let a = _mm256_and_ps(vk, mask);
        finite = _mm256_and_ps(finite, _mm256_cmp_ps::<_CMP_LT_OQ>(a, inf));
        m = _mm256_max_ps(m, a);
    }
    (m, v, _mm256_movemask_ps(finite) == 0xff)
}

/// Maximum lane of `v`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

/// f32 to f16 bits, round to nearest even (F16C; equals `fp32_to_fp16` for non-NaN values).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn to_f16(x: f32) -> u16 {
    _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x))) as u16
}

/// f16 bits to f32 (exact).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn from_f16(h: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
}

/// Packs four i32x8 (values in i8 range) into 32 i8 in order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn pack32(i: [__m256i; 4]) -> __m256i {
    let a = _mm256_packs_epi32(i[0], i[1]);
    let b = _mm256_packs_epi32(i[2], i[3]);
    let c = _mm256_packs_epi16(a, b);
    _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// Q8_0 (or, with `q8_1`, Q8_1) blocks of `x` with the kernels' side arrays.
///
/// # Safety
/// `x.len()` is a multiple of 32 and `out`'s buffers hold the partner row of `x.len()`
/// values: `blocks` its bytes (34 or 36 per block), `q` `x.len()`, `d`/`s` one per block,
/// `nsum4` `x.len() / 4`, `nsum` one per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_q8(x: &[f32], out: &mut ActBufs<'_>, q8_1: bool) {
    let bs = if q8_1 { 36 } else { 34 };
    let qoff = bs - 32;
    let sign = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
    let half = _mm256_set1_ps(0.5);
    let one = _mm256_set1_ps(1.0);
    let ones8 = _mm256_set1_epi8(1);
    let ones16 = _mm256_set1_epi16(1);
    for (i, xb) in x.chunks_exact(32).enumerate() {
        let bytes = &mut out.blocks[bs * i..bs * (i + 1)];
        // SAFETY: `xb` holds 32 floats.
        let (m, v, finite) = unsafe { absmax32(xb.as_ptr()) };
        let d = hmax(m) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        // Non-finite inputs, or a subnormal scale whose inverse overflows: the reference.
        if !finite || !id.is_finite() {
            if q8_1 {
                let mut b = [BlockQ8_1::zeroed()];
                blocks::quantize_row_q8_1(xb, &mut b);
                bytes.copy_from_slice(bytemuck::bytes_of(&b[0]));
            } else {
                let mut b = [BlockQ8_0::zeroed()];
                blocks::quantize_row_q8_0(xb, &mut b);
                bytes.copy_from_slice(bytemuck::bytes_of(&b[0]));
            }
        } else {
            let id = _mm256_set1_ps(id);
            let qi: [__m256i; 4] = core::array::from_fn(|k| {
                let t = _mm256_mul_ps(v[k], id);
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(t);
                let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(t, r));
                let step = _mm256_or_ps(_mm256_and_ps(t, sign), one);
                let adj = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half), step);
                _mm256_cvttps_epi32(_mm256_add_ps(r, adj))
            });
            let q = pack32(qi);
            bytes[..2].copy_from_slice(&to_f16(d).to_le_bytes());
            // SAFETY: `bytes` holds the block's 32 quants after its header.
            unsafe { _mm256_storeu_si256(bytes.as_mut_ptr().add(qoff).cast(), q) };
            if q8_1 {
                let sum = qi
                    .iter()
                    .fold(_mm256_setzero_si256(), |a, &b| _mm256_add_epi32(a, b));
                let s = crate::x86::hsum(_mm256_cvtepi32_ps(sum));
                bytes[2..4].copy_from_slice(&to_f16(s * d).to_le_bytes());
            }
        }
        // Side arrays from the block as stored.
        // SAFETY: `bytes` holds the block; `q`, `nsum4` and `d`/`s` have room for block `i`.
        unsafe {
            let q = _mm256_loadu_si256(bytes.as_ptr().add(qoff).cast());
            _mm256_storeu_si256(out.q.as_mut_ptr().add(32 * i).cast(), q);
            let sum4 = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, q), ones16);
            let nsum4 = _mm256_sub_epi32(_mm256_setzero_si256(), sum4);
            _mm256_storeu_si256(out.nsum4.as_mut_ptr().add(8 * i).cast(), nsum4);
            out.nsum[i] = crate::x86::hsum(_mm256_cvtepi32_ps(nsum4));
        }
        out.d[i] = from_f16(u16::from_le_bytes([bytes[0], bytes[1]]));
        if q8_1 {
            out.s[i] = from_f16(u16::from_le_bytes([bytes[2], bytes[3]]));
        }
    }
}

/// Q8_K blocks of `x`.
///
/// # Safety
/// `x.len()` is a multiple of 256 and `blocks` holds `x.len() / 256` Q8_K blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_q8_k(x: &[f32], out: &mut [u8]) {
    let mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let lim = _mm256_set1_epi32(127);
    for (xb, bytes) in x.chunks_exact(256).zip(out.chunks_exact_mut(292)) {
        let mut m = _mm256_setzero_ps();
        let mut finite = true;
        for c in 0..8 {
            // SAFETY: `xb` holds 256 floats.
            let (mc, _, f) = unsafe { absmax32(xb.as_ptr().add(32 * c)) };
            m = _mm256_max_ps(m, mc);
            finite &= f;
        }
        let amax = hmax(m);
        // Non-finite inputs, an all-zero block, or a subnormal extreme whose `127 / max`
        // overflows (the reference's integer conversion of infinity is its own): the reference.
        if !finite || amax == 0.0 || !(127.0 / amax).is_finite() {
            let mut b = [BlockQ8K::zeroed()];
            blocks::quantize_row_q8_k(xb, &mut b);
            bytes.copy_from_slice(bytemuck::bytes_of(&b[0]));
            continue;
        }
        // The first value of largest magnitude, with its sign.
        let am = _mm256_set1_ps(amax);
        let mut max = amax;
        for c in 0..32 {
            // SAFETY: `xb` holds 256 floats.
            let v = unsafe { _mm256_loadu_ps(xb.as_ptr().add(8 * c)) };
            let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_and_ps(v, mask), am));
            if hit != 0 {
                max = xb[8 * c + hit.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127.0 / max;
        let is = _mm256_set1_ps(iscale);
        let mut bsums = [0i16; 16];
        for c in 0..8 {
            let qi: [__m256i; 4] = core::array::from_fn(|k| {
                // SAFETY: `xb` holds 256 floats.
                let v = unsafe { _mm256_loadu_ps(xb.as_ptr().add(32 * c + 8 * k)) };
                _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(is, v)), lim)
            });
            for h in 0..2 {
                let s = _mm256_add_epi32(qi[2 * h], qi[2 * h + 1]);
                bsums[2 * c + h] = crate::x86::hsum(_mm256_cvtepi32_ps(s)) as i16;
            }
            // SAFETY: the block's quants `32c..32c + 32` are inside `bytes` (offset 4).
            unsafe { _mm256_storeu_si256(bytes.as_mut_ptr().add(4 + 32 * c).cast(), pack32(qi)) };
        }
        bytes[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
        bytes[260..].copy_from_slice(bytemuck::cast_slice(&bsums));
    }
}
