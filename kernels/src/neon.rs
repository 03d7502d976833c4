//! The `neon` level (aarch64 Advanced SIMD, part of the base ISA): Q4_0 and Q8_0 integer dots,
//! F32/F16/BF16 FMA rows. Other types use the scalar twins. Compile-checked in CI
//! (`cargo check --target aarch64-unknown-linux-gnu`); no aarch64 machine runs it yet.
//!
//! The integer kernels widen with `smull`/`smull2` (i8 × i8 into i16, which cannot overflow)
//! and pairwise-accumulate into i32 (`sadalp`), then scale each block's exact sum in f32 the
//! way the reference does (`sum += s · (d_x · d_y)`), so they match it bitwise. They need
//! no `dotprod` extension; an `sdot` variant is future work. f16 weights convert with `fcvtl`
//! (inline assembly: Rust's f16 NEON intrinsics are not stable yet).

use core::arch::aarch64::*;

use crate::dispatch::{ActView, Table};
use crate::scalar;

/// Exact i32 sum of the 32 products of `x` (as two 16-lane halves) and the block `y` at `q`.
///
/// # Safety
/// 32 bytes are readable at `q`.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn block_dot(x0: int8x16_t, x1: int8x16_t, q: *const i8) -> i32 {
    // SAFETY: forwarded from the caller.
    let (y0, y1) = unsafe { (vld1q_s8(q), vld1q_s8(q.add(16))) };
    let mut acc = vdupq_n_s32(0);
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(x0), vget_low_s8(y0)));
    acc = vpadalq_s16(acc, vmull_high_s8(x0, y0));
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(x1), vget_low_s8(y1)));
    acc = vpadalq_s16(acc, vmull_high_s8(x1, y1));
    vaddvq_s32(acc)
}

/// The f16 at `p` as f32.
///
/// # Safety
/// Two bytes are readable at `p`.
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: forwarded from the caller.
    half::f16::from_bits(unsafe { p.cast::<u16>().read_unaligned() }).to_f32()
}

/// Q4_0 × Q8_0 rows.
///
/// # Safety
/// The [`crate::dispatch::RowsFn`] contract.
#[target_feature(enable = "neon")]
unsafe fn q4_0_rows(rows: &[u8], rb: usize, a: &ActView<'_>, out: &mut [f32]) {
    let nb = a.n / 32;
    let m4 = vdupq_n_u8(0x0f);
    let eight = vdupq_n_s8(8);
    for (row, o) in rows.chunks_exact(rb).zip(out.iter_mut()) {
        let mut sum = 0f32;
        for b in 0..nb {
            // SAFETY: block `b < nb` of the row (18 bytes) and of the activation are in bounds.
            unsafe {
                let p = row.as_ptr().add(18 * b);
                let v = vld1q_u8(p.add(2));
                let x0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, m4)), eight);
                let x1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)), eight);
                let s = block_dot(x0, x1, a.q.as_ptr().add(32 * b));
                sum += s as f32 * (f16_at(p) * *a.d.get_unchecked(b));
            }
        }
        *o = sum;
    }
}

/// Q8_0 × Q8_0 rows.
///
/// # Safety
/// The [`crate::dispatch::RowsFn`] contract.
#[target_feature(enable = "neon")]
unsafe fn q8_0_rows(rows: &[u8], rb: usize, a: &ActView<'_>, out: &mut [f32]) {
    let nb = a.n / 32;
    for (row, o) in rows.chunks_exact(rb).zip(out.iter_mut()) {
        let mut sum = 0f32;
        for b in 0..nb {
            // SAFETY: block `b < nb` of the row (34 bytes) and of the activation are in bounds.
            unsafe {
                let p = row.as_ptr().add(34 * b);
                let x0 = vld1q_s8(p.add(2).cast());
                let x1 = vld1q_s8(p.add(18).cast());
                let s = block_dot(x0, x1, a.q.as_ptr().add(32 * b));
                sum += s as f32 * (f16_at(p) * *a.d.get_unchecked(b));
            }
        }
        *o = sum;
    }
}

/// Four f16 as f32 (`fcvtl`).
#[target_feature(enable = "neon")]
#[inline]
fn cvt_f16x4(h: uint16x4_t) -> float32x4_t {
    let r: float32x4_t;
    // SAFETY: `fcvtl` only converts between the two registers.
    unsafe {
        core::arch::asm!(
            "fcvtl {0:v}.4s, {1:v}.4h",
            out(vreg) r,
            in(vreg) h,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    r
}

/// Four weights at element `i` of a row at `p`, as f32.
trait Load4 {
    /// # Safety
    /// Elements `i..i + 4` are in the row.
    unsafe fn load4(p: *const u8, i: usize) -> float32x4_t;
    /// # Safety
    /// Element `i` is in the row.
    unsafe fn one(p: *const u8, i: usize) -> f32;
}

struct F32;
struct F16;
struct Bf16;

impl Load4 for F32 {
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn load4(p: *const u8, i: usize) -> float32x4_t {
        // SAFETY: forwarded from the caller.
        unsafe { vld1q_f32(p.cast::<f32>().add(i)) }
    }
    #[inline(always)]
    unsafe fn one(p: *const u8, i: usize) -> f32 {
        // SAFETY: forwarded from the caller.
        unsafe { p.cast::<f32>().add(i).read_unaligned() }
    }
}

impl Load4 for F16 {
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn load4(p: *const u8, i: usize) -> float32x4_t {
        // SAFETY: forwarded from the caller.
        cvt_f16x4(unsafe { vld1_u16(p.cast::<u16>().add(i)) })
    }
    #[inline(always)]
    unsafe fn one(p: *const u8, i: usize) -> f32 {
        // SAFETY: forwarded from the caller.
        half::f16::from_bits(unsafe { p.cast::<u16>().add(i).read_unaligned() }).to_f32()
    }
}

impl Load4 for Bf16 {
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn load4(p: *const u8, i: usize) -> float32x4_t {
        // SAFETY: forwarded from the caller.
        let h = unsafe { vld1_u16(p.cast::<u16>().add(i)) };
        vreinterpretq_f32_u32(vshll_n_u16::<16>(h))
    }
    #[inline(always)]
    unsafe fn one(p: *const u8, i: usize) -> f32 {
        // SAFETY: forwarded from the caller.
        f32::from_bits(u32::from(unsafe { p.cast::<u16>().add(i).read_unaligned() }) << 16)
    }
}

/// Float rows times the f32 activation, 16 values per step in four accumulators.
///
/// # Safety
/// The [`crate::dispatch::RowsFn`] contract.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn float_rows<L: Load4>(rows: &[u8], rb: usize, a: &ActView<'_>, out: &mut [f32]) {
    let n = a.n;
    let x = a.x.as_ptr();
    for (row, o) in rows.chunks_exact(rb).zip(out.iter_mut()) {
        let p = row.as_ptr();
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        // SAFETY: every index read is below `n`, inside the row and inside `a.x`.
        unsafe {
            while i + 16 <= n {
                for (k, ak) in acc.iter_mut().enumerate() {
                    *ak = vfmaq_f32(*ak, L::load4(p, i + 4 * k), vld1q_f32(x.add(i + 4 * k)));
                }
                i += 16;
            }
            while i + 4 <= n {
                acc[0] = vfmaq_f32(acc[0], L::load4(p, i), vld1q_f32(x.add(i)));
                i += 4;
            }
            let mut sum = vaddvq_f32(vaddq_f32(
                vaddq_f32(acc[0], acc[1]),
                vaddq_f32(acc[2], acc[3]),
            ));
            while i < n {
                sum += L::one(p, i) * *x.add(i);
                i += 1;
            }
            *o = sum;
        }
    }
}

/// F32 rows.
///
/// # Safety
/// The [`crate::dispatch::RowsFn`] contract.
#[target_feature(enable = "neon")]
unsafe fn f32_rows(rows: &[u8], rb: usize, a: &ActView<'_>, out: &mut [f32]) {
    // SAFETY: forwarded.
    unsafe { float_rows::<F32>(rows, rb, a, out) }
}

/// F16 rows.
///
/// # Safety
/// The [`crate::dispatch::RowsFn`] contract.
#[target_feature(enable = "neon")]
unsafe fn f16_rows(rows: &[u8], rb: usize, a: &ActView<'_>, out: &mut [f32]) {
    // SAFETY: forwarded.
    unsafe { float_rows::<F16>(rows, rb, a, out) }
}

/// BF16 rows.
///
/// # Safety
/// The [`crate::dispatch::RowsFn`] contract.
#[target_feature(enable = "neon")]
unsafe fn bf16_rows(rows: &[u8], rb: usize, a: &ActView<'_>, out: &mut [f32]) {
    // SAFETY: forwarded.
    unsafe { float_rows::<Bf16>(rows, rb, a, out) }
}

pub(crate) static TABLE: Table = Table {
    quant_q8: scalar::quantize_q8,
    quant_q8_k: scalar::quantize_q8_k,
    f32: f32_rows,
    f16: f16_rows,
    bf16: bf16_rows,
    q4_0: q4_0_rows,
    q4_1: scalar::q4_1_rows,
    q5_0: scalar::q5_0_rows,
    q5_1: scalar::q5_1_rows,
    q8_0: q8_0_rows,
    q4_k: scalar::q4_k_rows,
    q5_k: scalar::q5_k_rows,
    q6_k: scalar::q6_k_rows,
    q4_0_mm: None,
    q8_0_mm: None,
    f16_mm: None,
};
