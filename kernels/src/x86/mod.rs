//! x86-64 kernels: [`avx2`] (AVX2 + FMA + F16C), [`avx512`] (AVX-512 F/BW/VL/VNNI) and [`amx`]
//! (AMX-BF16 tiles for the F16/BF16 prefill products, on top of AVX-512).
//!
//! The 256-bit integer kernels of every quantized type are written once, in
//! [`kernels_256!`], and expanded in both modules under each module's `#[target_feature]` set;
//! they call three per-level primitives the module defines:
//!
//! - `udot(u, y, acc)`: `acc + Σ₄ u·y` per i32 lane (u unsigned, at most 63; y signed), i.e.
//!   `vpmaddubsw` + `vpmaddwd` + `vpaddd` on AVX2, one `vpdpbusd` with VNNI;
//! - `sdot(x, y, nsum4)`: `Σ₄ x·y` for signed x (AVX2: the `vpsignb` trick; VNNI: `x ^ 0x80`
//!   is `x + 128` unsigned, and `nsum4 << 7` removes the `128·Σ₄ y` this adds);
//! - `bits32(qh)`: byte `i` is `0xff` where bit `i` of `qh` is set (Q5 high bits).
//!
//! Lane `k` of a 256-bit integer dot covers the four bytes `4k..4k+4` of its 32-byte block, so
//! each lane's sum is an exact integer; per block the lanes are converted to f32 and
//! fused-multiply-added with the block's scale. Only that float step differs from the scalar
//! reference (which scales the block's total): see the parity tolerances in `tests/parity.rs`.
//!
//! Each `*_n::<R>` kernel dots `R` rows at once (sharing the activation loads) over the blocks
//! `b0..b1`; the `*_rows` entries run them four (or two) rows at a time, then one.

pub(crate) mod amx;
pub(crate) mod avx2;
pub(crate) mod avx512;
pub(crate) mod quant;

use core::arch::x86_64::*;

/// Sum of the lanes of `v`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(crate) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Sum of the lanes of `v`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(crate) fn hsum128(v: __m128) -> f32 {
    let s = _mm_add_ps(v, _mm_movehl_ps(v, v));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The little-endian u16 at `p` (any alignment).
///
/// # Safety
/// `p..p + 2` is readable.
#[inline(always)]
pub(crate) unsafe fn rd16(p: *const u8) -> i32 {
    // SAFETY: the caller guarantees two readable bytes; `read_unaligned` needs no alignment.
    i32::from(unsafe { p.cast::<u16>().read_unaligned() })
}

/// The little-endian u32 at `p` (any alignment).
///
/// # Safety
/// `p..p + 4` is readable.
#[inline(always)]
pub(crate) unsafe fn rd32(p: *const u8) -> u32 {
    // SAFETY: the caller guarantees four readable bytes; `read_unaligned` needs no alignment.
    unsafe { p.cast::<u32>().read_unaligned() }
}

/// Lane 0: the f16 at `p` as f32 (F16C, exact).
///
/// # Safety
/// `p..p + 2` is readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(crate) unsafe fn f16s(p: *const u8) -> __m128 {
    // SAFETY: forwarded from the caller.
    _mm_cvtph_ps(_mm_cvtsi32_si128(unsafe { rd16(p) }))
}

/// Lanes 0 and 1: the two f16 at `p` and `p + 2` as f32.
///
/// # Safety
/// `p..p + 4` is readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(crate) unsafe fn f16x2(p: *const u8) -> __m128 {
    // SAFETY: forwarded from the caller.
    _mm_cvtph_ps(_mm_cvtsi32_si128(unsafe { rd32(p) } as i32))
}

/// Element `i` of an f32 row at `p`.
///
/// # Safety
/// Element `i` is in the row.
#[inline(always)]
pub(crate) unsafe fn one_f32(p: *const u8, i: usize) -> f32 {
    // SAFETY: forwarded from the caller.
    unsafe { p.cast::<f32>().add(i).read_unaligned() }
}

/// Element `i` of an f16 row at `p`, as f32.
///
/// # Safety
/// Element `i` is in the row.
#[inline(always)]
pub(crate) unsafe fn one_f16(p: *const u8, i: usize) -> f32 {
    // SAFETY: forwarded from the caller.
    half::f16::from_bits(unsafe { p.cast::<u16>().add(i).read_unaligned() }).to_f32()
}

/// Element `i` of a bf16 row at `p`, as f32.
///
/// # Safety
/// Element `i` is in the row.
#[inline(always)]
pub(crate) unsafe fn one_bf16(p: *const u8, i: usize) -> f32 {
    // SAFETY: forwarded from the caller.
    f32::from_bits(u32::from(unsafe { p.cast::<u16>().add(i).read_unaligned() }) << 16)
}

/// Bytes between the end of the rows being dotted and the prefetch position.
pub(crate) const PF_AHEAD: usize = 8192;

/// Prefetches the cache lines covering `bytes + 64` bytes from `p` (weights streaming from
/// memory: a kernel working on a group of rows prefetches the next group at the same pace).
#[inline(always)]
pub(crate) fn prefetch(p: *const u8, bytes: usize) {
    let mut o = 0;
    while o <= bytes {
        // SAFETY: a prefetch never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(o).cast()) };
        o += 64;
    }
}

/// The f16s at `p[r] + off` for `r < R ≤ 4`, packed into a u64 (row `r` in bits `16r..`).
///
/// # Safety
/// The `R` pairs of bytes are readable.
#[inline(always)]
pub(crate) unsafe fn pack_f16<const R: usize>(p: &[*const u8; R], off: usize) -> u64 {
    let mut v = 0u64;
    for (r, q) in p.iter().enumerate() {
        // SAFETY: forwarded from the caller.
        v |= (unsafe { rd16(q.add(off)) } as u64) << (16 * r);
    }
    v
}

/// The 8 six-bit scales and 8 six-bit mins of a Q4_K/Q5_K block's 12 scale bytes at `p`, as
/// two u64 of bytes (ggml's `utmp` shuffle; equals `get_scale_min_k4` for `j = 0..8`).
///
/// # Safety
/// `p..p + 12` is readable.
#[inline(always)]
pub(crate) unsafe fn k4_scales(p: *const u8) -> (u64, u64) {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    // SAFETY: forwarded from the caller.
    let (u0, u1, u2) = unsafe { (rd32(p), rd32(p.add(4)), rd32(p.add(8))) };
    let m3 = ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4);
    let m2 = u1 & KMASK1;
    let s1 = (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4);
    let s0 = u0 & KMASK1;
    (
        u64::from(s0) | (u64::from(s1) << 32),
        u64::from(m2) | (u64::from(m3) << 32),
    )
}

/// Runs an `R`-row kernel over every row of a [`RowsFn`](crate::dispatch::RowsFn) call: `R`
/// rows at a time, then one at a time. Expands inside an `unsafe fn` with the kernel's target
/// features; `$k::<R>(ptrs, prefetch, 0, nb, act)` must be sound for rows of `rb` bytes.
macro_rules! drive_rows {
    ($k:ident, $r:literal, $rows:ident, $rb:ident, $act:ident, $out:ident, $nb:expr) => {{
        let base = $rows.as_ptr();
        let nb: usize = $nb;
        let n = $out.len();
        // The first stretch of the rows, which the running prefetch starts beyond.
        crate::x86::prefetch(base, crate::x86::PF_AHEAD.min($rows.len()));
        let mut i = 0;
        // Prefetching stops at the end of the rows (beyond it, it re-touches the rows at hand):
        // another thread may be reading what follows.
        let pf_at = |at: usize, len: usize| {
            if at + len <= $rows.len() {
                base.wrapping_add(at)
            } else {
                base.wrapping_add(at.min($rows.len()).saturating_sub(len))
            }
        };
        while i + $r <= n {
            let p: [*const u8; $r] = core::array::from_fn(|k| base.wrapping_add((i + k) * $rb));
            let pf = pf_at((i + $r) * $rb + crate::x86::PF_AHEAD, $r * $rb);
            // SAFETY: rows `i..i + R` lie inside `rows` (`rows.len() == out.len() * rb`, the
            // `RowsFn` contract), each `nb` blocks long, and `act` matches them; `pf` is only
            // prefetched.
            let v = unsafe { $k::<$r>(p, pf, 0, nb, $act) };
            $out[i..i + $r].copy_from_slice(&v);
            i += $r;
        }
        while i < n {
            let pf = pf_at((i + 1) * $rb + crate::x86::PF_AHEAD, $rb);
            // SAFETY: as above, for the single row `i`.
            $out[i] = unsafe { $k::<1>([base.wrapping_add(i * $rb)], pf, 0, nb, $act) }[0];
            i += 1;
        }
    }};
}
pub(crate) use drive_rows;

/// The 256-bit integer kernels of every quantized type, expanded in a module that defines
/// `udot`, `sdot`, `bits32` and `FOLD_OFFSET` for the feature set `$feat`.
macro_rules! kernels_256 {
    ($feat:literal) => {
        use crate::dispatch::ActView;
        use crate::x86::{f16s, f16x2, hsum, hsum128, k4_scales, rd32};

        /// The 32-value block kernels share one skeleton: per block, the activation's quants
        /// (and offset sums) are loaded once for the `R ≤ 4` rows; the rows' f16 scales are
        /// gathered into one u64 and converted together (`vcvtph2ps`), times the activation
        /// scale, then spread to each row's lanes with one permute; each row adds
        /// `f32(lane sums) · scale`. The `m·s` terms of Q4_1/Q5_1 go to one 4-lane accumulator
        /// holding a lane per row. `$lanes` computes the i32 lane sums of one row's block at
        /// `p` from the activation block `y` and its `nsum4` (zero where the module folds the
        /// offset `$offset` of unsigned quants into the float accumulators: `FOLD_OFFSET`).
        #[rustfmt::skip]
        macro_rules! legacy_kernel {
            ($name:ident, $bs:literal, $mins:literal, $offset:literal, |$p:ident, $y:ident, $ns:ident| $lanes:block) => {
                /// `R` rows over blocks `b0..b1`.
                ///
                /// # Safety
                /// Each `w[r]` points at a row of at least `b1` blocks of the kernel's type, `a`
                /// holds the partner of at least `32·b1` values, `R ≤ 4`.
                #[target_feature(enable = $feat)]
                #[inline]
                pub(crate) unsafe fn $name<const R: usize>(
                    w: [*const u8; R],
                    pf: *const u8,
                    b0: usize,
                    b1: usize,
                    a: &ActView<'_>,
                ) -> [f32; R] {
                    const { assert!(R <= 4) };
                    let mut acc = [_mm256_setzero_ps(); R];
                    let mut macc = _mm_setzero_ps();
                    let (q, d, s, ns) =
                        (a.q.as_ptr(), a.d.as_ptr(), a.s.as_ptr(), a.nsum4.as_ptr());
                    // Folding the offset out of the integer dots: `-offset · Σ y` per block,
                    // times each row's scale, goes to the per-row lanes of `macc`.
                    let fold = FOLD_OFFSET && $offset != 0;
                    for b in b0..b1 {
                        crate::x86::prefetch(pf.wrapping_add((b - b0) * R * $bs), R * $bs);
                        // SAFETY: block `b < b1` of every row and of the activation is in
                        // bounds (caller).
                        unsafe {
                            let $y = _mm256_loadu_si256(q.add(32 * b).cast());
                            let $ns = if fold {
                                _mm256_setzero_si256()
                            } else {
                                _mm256_loadu_si256(ns.add(8 * b).cast())
                            };
                            let p: [*const u8; R] = core::array::from_fn(|r| w[r].add($bs * b));
                            let dx = _mm_cvtph_ps(_mm_cvtsi64_si128(
                                crate::x86::pack_f16::<R>(&p, 0) as i64,
                            ));
                            let scale = _mm256_castps128_ps256(_mm_mul_ps(
                                dx,
                                _mm_broadcast_ss(&*d.add(b)),
                            ));
                            if $mins {
                                let m = _mm_cvtph_ps(_mm_cvtsi64_si128(crate::x86::pack_f16::<R>(
                                    &p, 2,
                                ) as i64));
                                macc = _mm_fmadd_ps(m, _mm_broadcast_ss(&*s.add(b)), macc);
                            }
                            if fold {
                                let off = _mm_set1_ps(*a.nsum.get_unchecked(b) * $offset as f32);
                                macc = _mm_fmadd_ps(_mm256_castps256_ps128(scale), off, macc);
                            }
                            for r in 0..R {
                                let $p = p[r];
                                let lanes: __m256i = $lanes;
                                let sc =
                                    _mm256_permutevar8x32_ps(scale, _mm256_set1_epi32(r as i32));
                                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), sc, acc[r]);
                            }
                        }
                    }
                    let mut mins = [0f32; 4];
                    // SAFETY: `mins` has room for the 4 lanes.
                    unsafe { _mm_storeu_ps(mins.as_mut_ptr(), macc) };
                    let mut out = [0f32; R];
                    for r in 0..R {
                        out[r] = hsum(acc[r]) + mins[r];
                    }
                    out
                }
            };
        }

        legacy_kernel!(q4_0_n, 18, false, 8, |p, y, ns| {
            let nib = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(2).cast()));
            let u = _mm256_and_si256(
                _mm256_srlv_epi64(nib, _mm256_setr_epi64x(0, 0, 4, 4)),
                _mm256_set1_epi8(0x0f),
            );
            udot(u, y, _mm256_slli_epi32::<3>(ns))
        });

        legacy_kernel!(q8_0_n, 34, false, 0, |p, y, ns| {
            sdot(_mm256_loadu_si256(p.add(2).cast()), y, ns)
        });

        legacy_kernel!(q4_1_n, 20, true, 0, |p, y, _ns| {
            let nib = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(4).cast()));
            let u = _mm256_and_si256(
                _mm256_srlv_epi64(nib, _mm256_setr_epi64x(0, 0, 4, 4)),
                _mm256_set1_epi8(0x0f),
            );
            udot(u, y, _mm256_setzero_si256())
        });

        legacy_kernel!(q5_0_n, 22, false, 16, |p, y, ns| {
            let hb = _mm256_and_si256(bits32(rd32(p.add(2))), _mm256_set1_epi8(0x10));
            let nib = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(6).cast()));
            let u = _mm256_or_si256(
                _mm256_and_si256(
                    _mm256_srlv_epi64(nib, _mm256_setr_epi64x(0, 0, 4, 4)),
                    _mm256_set1_epi8(0x0f),
                ),
                hb,
            );
            udot(u, y, _mm256_slli_epi32::<4>(ns))
        });

        legacy_kernel!(q5_1_n, 24, true, 0, |p, y, _ns| {
            let hb = _mm256_and_si256(bits32(rd32(p.add(4))), _mm256_set1_epi8(0x10));
            let nib = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(8).cast()));
            let u = _mm256_or_si256(
                _mm256_and_si256(
                    _mm256_srlv_epi64(nib, _mm256_setr_epi64x(0, 0, 4, 4)),
                    _mm256_set1_epi8(0x0f),
                ),
                hb,
            );
            udot(u, y, _mm256_setzero_si256())
        });

        /// Q4_K × Q8_K over blocks `b0..b1` of `R` rows (`with_qh`: Q5_K's fifth bits).
        ///
        /// # Safety
        /// Each `w[r]` points at a row of at least `b1` Q4_K (Q5_K when `QH`) blocks, `a.blocks`
        /// holds at least `b1` Q8_K blocks.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn k4_n<const R: usize, const QH: bool>(
            w: [*const u8; R],
            pf: *const u8,
            b0: usize,
            b1: usize,
            a: &ActView<'_>,
        ) -> [f32; R] {
            let m4 = _mm256_set1_epi8(0x0f);
            let one = _mm256_set1_epi8(1);
            let (bs, qs0) = if QH { (176, 48) } else { (144, 16) };
            let mut acc = [_mm256_setzero_ps(); R];
            let mut macc = [_mm_setzero_ps(); R];
            for b in b0..b1 {
                crate::x86::prefetch(pf.wrapping_add((b - b0) * R * bs), R * bs);
                // SAFETY: block `b < b1` of every row and of the activation is in bounds.
                unsafe {
                    let yb = a.blocks.as_ptr().add(292 * b);
                    let yd = _mm_load_ss(yb.cast());
                    let yq = yb.add(4);
                    let bsums = yb.add(260);
                    let q8s = _mm_hadd_epi16(
                        _mm_loadu_si128(bsums.cast()),
                        _mm_loadu_si128(bsums.add(16).cast()),
                    );
                    for r in 0..R {
                        let p = w[r].add(bs * b);
                        let dm = _mm_mul_ps(f16x2(p), _mm_broadcastss_ps(yd));
                        let (sc, mn) = k4_scales(p.add(4));
                        let mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
                        let prod = _mm_madd_epi16(mins, q8s);
                        macc[r] = _mm_fmadd_ps(
                            _mm_cvtepi32_ps(prod),
                            _mm_shuffle_ps::<0x55>(dm, dm),
                            macc[r],
                        );
                        let sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(
                            _mm_cvtsi64_si128(sc as i64),
                        ));
                        let mut hbits = if QH {
                            _mm256_loadu_si256(p.add(16).cast())
                        } else {
                            _mm256_setzero_si256()
                        };
                        let mut sumi = _mm256_setzero_si256();
                        for j in 0..4 {
                            let q4 = _mm256_loadu_si256(p.add(qs0 + 32 * j).cast());
                            let mut lo = _mm256_and_si256(q4, m4);
                            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q4), m4);
                            if QH {
                                let hl = _mm256_and_si256(hbits, one);
                                let hh = _mm256_and_si256(_mm256_srli_epi16::<1>(hbits), one);
                                hbits = _mm256_srli_epi16::<2>(hbits);
                                lo = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hl));
                                hi = _mm256_or_si256(hi, _mm256_slli_epi16::<4>(hh));
                            }
                            let k = (4 * j) as i16;
                            let sl =
                                _mm256_shuffle_epi8(sc16, _mm256_set1_epi16(k | ((k + 1) << 8)));
                            let sh = _mm256_shuffle_epi8(
                                sc16,
                                _mm256_set1_epi16((k + 2) | ((k + 3) << 8)),
                            );
                            let yl = _mm256_loadu_si256(yq.add(64 * j).cast());
                            let yh = _mm256_loadu_si256(yq.add(64 * j + 32).cast());
                            let pl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, yl), sl);
                            let ph = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, yh), sh);
                            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
                        }
                        acc[r] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(sumi),
                            _mm256_broadcastss_ps(dm),
                            acc[r],
                        );
                    }
                }
            }
            let mut out = [0f32; R];
            for r in 0..R {
                out[r] = hsum(acc[r]) - hsum128(macc[r]);
            }
            out
        }

        /// Q4_K × Q8_K (see [`k4_n`]).
        ///
        /// # Safety
        /// As [`k4_n`].
        #[target_feature(enable = $feat)]
        #[inline]
        pub(crate) unsafe fn q4_k_n<const R: usize>(
            w: [*const u8; R],
            pf: *const u8,
            b0: usize,
            b1: usize,
            a: &ActView<'_>,
        ) -> [f32; R] {
            // SAFETY: forwarded.
            unsafe { k4_n::<R, false>(w, pf, b0, b1, a) }
        }

        /// Q5_K × Q8_K (see [`k4_n`]).
        ///
        /// # Safety
        /// As [`k4_n`].
        #[target_feature(enable = $feat)]
        #[inline]
        pub(crate) unsafe fn q5_k_n<const R: usize>(
            w: [*const u8; R],
            pf: *const u8,
            b0: usize,
            b1: usize,
            a: &ActView<'_>,
        ) -> [f32; R] {
            // SAFETY: forwarded.
            unsafe { k4_n::<R, true>(w, pf, b0, b1, a) }
        }

        /// Q6_K × Q8_K over blocks `b0..b1` of `R` rows.
        ///
        /// # Safety
        /// Each `w[r]` points at a row of at least `b1` Q6_K blocks, `a.blocks` holds at least
        /// `b1` Q8_K blocks.
        #[target_feature(enable = $feat)]
        #[inline]
        pub(crate) unsafe fn q6_k_n<const R: usize>(
            w: [*const u8; R],
            pf: *const u8,
            b0: usize,
            b1: usize,
            a: &ActView<'_>,
        ) -> [f32; R] {
            let m4 = _mm256_set1_epi8(0x0f);
            let m3 = _mm256_set1_epi8(3);
            let m30 = _mm256_set1_epi8(0x30);
            let mut acc = [_mm256_setzero_ps(); R];
            for b in b0..b1 {
                crate::x86::prefetch(pf.wrapping_add((b - b0) * R * 210), R * 210);
                // SAFETY: block `b < b1` of every row and of the activation is in bounds.
                unsafe {
                    let yb = a.blocks.as_ptr().add(292 * b);
                    let yd = _mm_load_ss(yb.cast());
                    let yq = yb.add(4);
                    let bsums = _mm256_loadu_si256(yb.add(260).cast());
                    for r in 0..R {
                        let p = w[r].add(210 * b);
                        let d = _mm_mul_ss(f16s(p.add(208)), yd);
                        let scb = _mm_loadu_si128(p.add(192).cast());
                        // Σ_j sc_j·bsum_j, times 32: the offset of the unsigned 6-bit quants.
                        let bias = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scb), bsums);
                        let mut sumi =
                            _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(bias));
                        for h in 0..2 {
                            let ql = p.add(64 * h);
                            let qhv = _mm256_loadu_si256(p.add(128 + 32 * h).cast());
                            let l0 = _mm256_loadu_si256(ql.cast());
                            let l1 = _mm256_loadu_si256(ql.add(32).cast());
                            let qh2 = _mm256_srli_epi16::<2>(qhv);
                            let qg = [
                                _mm256_or_si256(
                                    _mm256_and_si256(l0, m4),
                                    _mm256_slli_epi16::<4>(_mm256_and_si256(qhv, m3)),
                                ),
                                _mm256_or_si256(
                                    _mm256_and_si256(l1, m4),
                                    _mm256_slli_epi16::<4>(_mm256_and_si256(qh2, m3)),
                                ),
                                _mm256_or_si256(
                                    _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4),
                                    _mm256_and_si256(qhv, m30),
                                ),
                                _mm256_or_si256(
                                    _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4),
                                    _mm256_and_si256(qh2, m30),
                                ),
                            ];
                            for (g, &qv) in qg.iter().enumerate() {
                                let t = (8 * h + 2 * g) as i8;
                                let pick = _mm_setr_epi8(
                                    t,
                                    t,
                                    t,
                                    t,
                                    t,
                                    t,
                                    t,
                                    t,
                                    t + 1,
                                    t + 1,
                                    t + 1,
                                    t + 1,
                                    t + 1,
                                    t + 1,
                                    t + 1,
                                    t + 1,
                                );
                                let sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scb, pick));
                                let y = _mm256_loadu_si256(yq.add(128 * h + 32 * g).cast());
                                let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(qv, y), sc);
                                sumi = _mm256_add_epi32(sumi, prod);
                            }
                        }
                        acc[r] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(sumi),
                            _mm256_broadcastss_ps(d),
                            acc[r],
                        );
                    }
                }
            }
            let mut out = [0f32; R];
            for r in 0..R {
                out[r] = hsum(acc[r]);
            }
            out
        }

        macro_rules! rows_fn {
            ($name:ident, $k:ident, $r:literal, $qk:literal) => {
                /// Row kernel (see [`crate::dispatch::RowsFn`]).
                ///
                /// # Safety
                /// The [`crate::dispatch::RowsFn`] contract.
                #[target_feature(enable = $feat)]
                pub(crate) unsafe fn $name(
                    rows: &[u8],
                    rb: usize,
                    act: &ActView<'_>,
                    out: &mut [f32],
                ) {
                    crate::x86::drive_rows!($k, $r, rows, rb, act, out, act.n / $qk);
                }
            };
        }

        rows_fn!(q4_1_rows, q4_1_n, 4, 32);
        rows_fn!(q5_0_rows, q5_0_n, 4, 32);
        rows_fn!(q5_1_rows, q5_1_n, 4, 32);
        rows_fn!(q4_k_rows, q4_k_n, 2, 256);
        rows_fn!(q5_k_rows, q5_k_n, 2, 256);
        rows_fn!(q6_k_rows, q6_k_n, 2, 256);
    };
}
pub(crate) use kernels_256;
