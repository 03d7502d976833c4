//! The `avx512-vnni` level: AVX-512 F/BW/VL/VNNI on top of AVX2/FMA/F16C (Ice Lake and later,
//! Zen 4 and later).
//!
//! `vpdpbusd` does a 4-way u8 × i8 dot into i32 lanes in one instruction. Signed Q8_0 weights
//! become unsigned by `x ^ 0x80 = x + 128`, and the activation's `-Σ₄ y` side array (times 128)
//! seeds the accumulator to cancel the offset; Q4_0 and Q5_0 use the same array times 8 and 16
//! for their `-8`/`-16` offsets. Q4_0 and Q8_0 (the decode-critical types) and the float types
//! run 512 bits wide, two 32-value blocks per step; the other quantized types run the shared
//! 256-bit kernels with VNNI primitives.

use core::arch::x86_64::*;

use crate::dispatch::Table;

/// `acc + Σ₄ u·y` per i32 lane.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn udot(u: __m256i, y: __m256i, acc: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, u, y)
}

/// `Σ₄ x·y` per i32 lane for signed x: `Σ (x + 128)·y − 128·Σ y`, exact.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn sdot(x: __m256i, y: __m256i, nsum4: __m256i) -> __m256i {
    let xu = _mm256_xor_si256(x, _mm256_set1_epi8(-128));
    _mm256_dpbusd_epi32(_mm256_slli_epi32::<7>(nsum4), xu, y)
}

/// Byte `i` is `0xff` where bit `i` of `qh` is set.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn bits32(qh: u32) -> __m256i {
    _mm256_movm_epi8(qh)
}

/// `vpdpbusd` seeds its accumulator with the offset for free: no folding.
const FOLD_OFFSET: bool = false;

crate::x86::kernels_256!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni");

/// The 512-bit kernels of Q4_0 and Q8_0: two blocks per step (lanes 0-7 block `b`, 8-15
/// block `b + 1`); the `2R` f16 scales of a step are converted together and spread to each
/// row's lanes with one permute; an odd last block goes through the 256-bit kernel. `$x`
/// builds the 64 weight bytes of blocks `b, b + 1` of the row at `p` (as unsigned bytes for
/// `vpdpbusd`), `$nbias` the offset seed from the activation's `nsum4` lanes.
macro_rules! pair_kernel {
    ($name:ident, $tail:ident, $bs:literal, $hi16:literal,
     |$ns:ident| $nbias:expr, |$p:ident| $x:block) => {
        /// `R` rows over blocks `b0..b1`.
        ///
        /// # Safety
        /// As the 256-bit kernel `$tail`.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        #[inline]
        unsafe fn $name<const R: usize>(
            w: [*const u8; R],
            pf: *const u8,
            b0: usize,
            b1: usize,
            a: &ActView<'_>,
        ) -> [f32; R] {
            const { assert!(R <= 4) };
            let mut acc = [_mm512_setzero_ps(); R];
            let (q, d, ns) = (a.q.as_ptr(), a.d.as_ptr(), a.nsum4.as_ptr());
            // Lanes 0-3 of the scales: block `b` of rows 0-3; lanes 4-7: block `b + 1`.
            let dy_index = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
            let mut b = b0;
            while b + 2 <= b1 {
                crate::x86::prefetch(pf.wrapping_add((b - b0) * R * $bs), 2 * R * $bs);
                // SAFETY: blocks `b, b + 1 < b1` of every row and of the activation are in
                // bounds (caller).
                unsafe {
                    let y = _mm512_loadu_si512(q.add(32 * b).cast());
                    let $ns = _mm512_loadu_si512(ns.add(8 * b).cast());
                    let nbias = $nbias;
                    let p: [*const u8; R] = core::array::from_fn(|r| w[r].add($bs * b));
                    let dx = _mm256_cvtph_ps(_mm_set_epi64x(
                        crate::x86::pack_f16::<R>(&p, $bs) as i64,
                        crate::x86::pack_f16::<R>(&p, 0) as i64,
                    ));
                    let dy = _mm256_permutevar8x32_ps(
                        _mm256_castpd_ps(_mm256_castpd128_pd256(_mm_load_sd(d.add(b).cast()))),
                        dy_index,
                    );
                    let v = _mm256_mul_ps(dx, dy);
                    let scale = if $hi16 {
                        // Lanes 8-15: the scales over 16, for lanes holding 16 × high nibbles.
                        let v16 = _mm256_mul_ps(v, _mm256_set1_ps(1.0 / 16.0));
                        _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                            _mm512_castpd256_pd512(_mm256_castps_pd(v)),
                            _mm256_castps_pd(v16),
                        ))
                    } else {
                        _mm512_castps256_ps512(v)
                    };
                    for r in 0..R {
                        let $p = p[r];
                        let x: __m512i = $x;
                        let s = _mm512_dpbusd_epi32(nbias, x, y);
                        let ri = r as i32;
                        let index = if $hi16 {
                            let (h, c, ch) = (ri + 8, ri + 4, ri + 12);
                            _mm512_setr_epi32(
                                ri, ri, ri, ri, h, h, h, h, c, c, c, c, ch, ch, ch, ch,
                            )
                        } else {
                            let c = ri + 4;
                            _mm512_setr_epi32(
                                ri, ri, ri, ri, ri, ri, ri, ri, c, c, c, c, c, c, c, c,
                            )
                        };
                        let sc = _mm512_permutexvar_ps(index, scale);
                        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, acc[r]);
                    }
                }
                b += 2;
            }
            let mut out = [0f32; R];
            if b < b1 {
                // SAFETY: forwarded; block `b < b1`.
                out = unsafe { $tail::<R>(w, pf, b, b1, a) };
            }
            for r in 0..R {
                out[r] += _mm512_reduce_add_ps(acc[r]);
            }
            out
        }
    };
}

// Q4_0 without shifts: one AND keeps the low nibbles of a block in its first 16 bytes and
// 16 × the high nibbles in its last 16 (`vpdpbusd` has no i16 saturation to fear); the
// offset of those lanes is 16 × 8 and their scale a sixteenth.
pair_kernel!(
    q4_0_z,
    q4_0_n,
    18,
    true,
    |ns| {
        _mm512_sllv_epi32(
            ns,
            _mm512_setr_epi32(3, 3, 3, 3, 7, 7, 7, 7, 3, 3, 3, 3, 7, 7, 7, 7),
        )
    },
    |p| {
        let lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(2).cast()));
        let hi = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(20).cast()));
        let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        let m = _mm512_setr_epi64(
            0x0f0f_0f0f_0f0f_0f0f,
            0x0f0f_0f0f_0f0f_0f0f,
            0xf0f0_f0f0_f0f0_f0f0_u64 as i64,
            0xf0f0_f0f0_f0f0_f0f0_u64 as i64,
            0x0f0f_0f0f_0f0f_0f0f,
            0x0f0f_0f0f_0f0f_0f0f,
            0xf0f0_f0f0_f0f0_f0f0_u64 as i64,
            0xf0f0_f0f0_f0f0_f0f0_u64 as i64,
        );
        _mm512_and_si512(z, m)
    }
);

pair_kernel!(
    q8_0_z,
    q8_0_n,
    34,
    false,
    |ns| _mm512_slli_epi32::<7>(ns),
    |p| {
        let lo = _mm256_loadu_si256(p.add(2).cast());
        let hi = _mm256_loadu_si256(p.add(36).cast());
        let x = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        _mm512_xor_si512(x, _mm512_set1_epi8(-128))
    }
);

rows_fn!(q4_0_rows, q4_0_z, 4, 32);
rows_fn!(q8_0_rows, q8_0_z, 4, 32);

/// The prefill tiles of Q4_0 and Q8_0 ([`crate::dispatch::MmFn`]), packed on the fly: a panel of
/// [`PANEL`] weight rows is repacked once into a per-task buffer, per block eight groups of four
/// quants of every row side by side (`[8][16 rows][4]` unsigned bytes) and the rows' scales as
/// f32; then every activation runs over it. One `vpdpbusd` with four quants of the activation
/// broadcast does four multiply-adds for each of the 16 rows, so a block's integer sums of 16 rows
/// end up in the 16 lanes of one register, and the float step (convert, scale, accumulate) is
/// done once per block for 16 rows instead of once per row. The offsets of the unsigned quants
/// (+128 for Q8_0, +8 for Q4_0) times the activation block's sum seed the integer accumulator.
/// Panels longer than [`SEG_BLOCKS`] blocks run in segments, the later ones adding to `out`.
const PANEL: usize = 16;
/// Blocks of a panel packed at a time. A packed block is nine vectors: 8 groups of 64 quant
/// bytes, then 16 f32 scales; the buffer is `SEG_BLOCKS · 576` bytes on the stack.
const SEG_BLOCKS: usize = 64;

/// Packs blocks `b0..b0 + nb` of the rows at `p` (`n ≤ 16` rows; the others are zeros).
///
/// # Safety
/// Each `p[r]` for `r < n` points at a row of at least `b0 + nb` blocks of `bs` bytes (Q4_0 when
/// `Q4`, else Q8_0); `buf` holds `nb` packed blocks.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn pack_panel<const Q4: bool>(
    p: &[*const u8; PANEL],
    n: usize,
    b0: usize,
    nb: usize,
    words: &mut [u32],
) {
    let bs = if Q4 { 18 } else { 34 };
    for r in 0..PANEL {
        for k in 0..nb {
            let w = &mut words[144 * k..144 * (k + 1)];
            if r >= n {
                for g in 0..8 {
                    w[16 * g + r] = 0;
                }
                w[128 + r] = 0;
                continue;
            }
            // SAFETY: block `b0 + k` of row `r < n` is in bounds (caller).
            unsafe {
                let base = p[r].add(bs * (b0 + k));
                w[128 + r] = u32::from(base.cast::<u16>().read_unaligned());
                if Q4 {
                    for g in 0..4 {
                        let v = crate::x86::rd32(base.add(2 + 4 * g));
                        w[16 * g + r] = v & 0x0f0f_0f0f;
                        w[16 * (g + 4) + r] = (v >> 4) & 0x0f0f_0f0f;
                    }
                } else {
                    for g in 0..8 {
                        w[16 * g + r] = crate::x86::rd32(base.add(2 + 4 * g)) ^ 0x8080_8080;
                    }
                }
            }
        }
    }
    // The scales, stored as f16 bits in the low halves of the ninth vector: to f32.
    for blk in words.chunks_exact_mut(144).take(nb) {
        // SAFETY: words `128..144` of the block are in bounds.
        unsafe {
            let h = _mm512_cvtepi32_epi16(_mm512_loadu_si512(blk.as_ptr().add(128).cast()));
            _mm512_storeu_ps(blk.as_mut_ptr().add(128).cast(), _mm512_cvtph_ps(h));
        }
    }
}

/// The 16 rows of a packed segment times activations `t..t + T` over its `nb` blocks starting at
/// block `b0`; adds to `out` when `add`.
///
/// # Safety
/// `buf` holds `nb` packed blocks; each activation holds at least `b0 + nb` blocks; the outputs
/// `(t + k) * ld + r` for `r < rows` are writable.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn panel_tokens<const T: usize, const OFFSET: i32>(
    buf: &[u32],
    nb: usize,
    b0: usize,
    acts: &[ActView<'_>],
    t: usize,
    out: *mut f32,
    ld: usize,
    rows: usize,
    add: bool,
) {
    let Ok(a) = <&[ActView<'_>; T]>::try_from(&acts[t..t + T]) else {
        return;
    };
    let mut acc = [_mm512_setzero_ps(); T];
    let qp: [*const i8; T] = core::array::from_fn(|i| a[i].q.as_ptr().wrapping_add(32 * b0));
    let dp: [*const f32; T] = core::array::from_fn(|i| a[i].d.as_ptr().wrapping_add(b0));
    let sp: [*const f32; T] = core::array::from_fn(|i| a[i].nsum.as_ptr().wrapping_add(b0));
    for (k, blk) in buf.chunks_exact(144).take(nb).enumerate() {
        // SAFETY: block `b0 + k` of every activation is in bounds (caller); the packed block
        // holds 144 words, 64-byte aligned.
        unsafe {
            let mut sums: [__m512i; T] = core::array::from_fn(|i| {
                // The sum is an integer of at most 32 · 128 in magnitude, exact in f32
                // (the quantizer's), so the unchecked conversion is a plain `cvttss2si`
                // (`as` adds saturation and NaN checks per token and block).
                _mm512_set1_epi32((*sp[i].add(k)).to_int_unchecked::<i32>() * OFFSET)
            });
            for g in 0..8 {
                let x = _mm512_load_si512(blk.as_ptr().add(16 * g).cast());
                for i in 0..T {
                    let y =
                        _mm512_set1_epi32(qp[i].add(32 * k + 4 * g).cast::<i32>().read_unaligned());
                    sums[i] = _mm512_dpbusd_epi32(sums[i], x, y);
                }
            }
            let dw = _mm512_load_ps(blk.as_ptr().add(128).cast());
            for i in 0..T {
                let sc = _mm512_mul_ps(dw, _mm512_set1_ps(*dp[i].add(k)));
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[i]), sc, acc[i]);
            }
        }
    }
    let m: __mmask16 = if rows >= 16 { !0 } else { (1u16 << rows) - 1 };
    for (i, &v) in acc.iter().enumerate() {
        // SAFETY: the `rows` outputs of activation `t + i` are writable (caller); masked-off
        // lanes are not accessed.
        unsafe {
            let o = out.add((t + i) * ld);
            let v = if add {
                _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, o))
            } else {
                v
            };
            _mm512_mask_storeu_ps(o, m, v);
        }
    }
}

/// The tile kernel of Q4_0 (`Q4`) or Q8_0 weights.
///
/// # Safety
/// The [`crate::dispatch::MmFn`] contract.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn mm_packed<const Q4: bool>(
    rows: &[u8],
    rb: usize,
    acts: &[ActView<'_>],
    out: *mut f32,
    ld: usize,
) {
    let Some(first) = acts.first() else { return };
    let nb_all = first.n / 32;
    let n_rows = rows.len() / rb.max(1);
    /// The packed segment, 64-byte aligned.
    #[repr(align(64))]
    struct Packed([u32; SEG_BLOCKS * 144]);
    let mut packed = Packed([0; SEG_BLOCKS * 144]);
    let buf = &mut packed.0;
    let base = rows.as_ptr();
    let mut r0 = 0;
    while r0 < n_rows {
        let nr = PANEL.min(n_rows - r0);
        let p: [*const u8; PANEL] =
            core::array::from_fn(|k| base.wrapping_add((r0 + k.min(nr - 1)) * rb));
        let mut b0 = 0;
        while b0 < nb_all {
            let nb = SEG_BLOCKS.min(nb_all - b0);
            // SAFETY: rows `r0..r0 + nr` hold `nb_all` blocks each (caller); `buf` has room
            // for `SEG_BLOCKS` packed blocks.
            unsafe { pack_panel::<Q4>(&p, nr, b0, nb, buf) };
            let mut t = 0;
            while t < acts.len() {
                let tn = (acts.len() - t).min(8);
                let o = out.wrapping_add(r0);
                let add = b0 > 0;
                // SAFETY: forwarded; activations `t..t + tn` exist, the outputs
                // `(t + k) * ld + r0 + r` for `r < nr` are writable (caller).
                unsafe {
                    macro_rules! go {
                        ($($n:literal),*) => {
                            match tn {
                                $($n => if Q4 {
                                    panel_tokens::<$n, 8>(buf, nb, b0, acts, t, o, ld, nr, add)
                                } else {
                                    panel_tokens::<$n, 128>(buf, nb, b0, acts, t, o, ld, nr, add)
                                },)*
                                _ => {}
                            }
                        };
                    }
                    go!(1, 2, 3, 4, 5, 6, 7, 8);
                }
                t += tn;
            }
            b0 += nb;
        }
        r0 += nr;
    }
}

/// Q4_0 tile kernel (see [`mm_packed`]).
///
/// # Safety
/// The [`crate::dispatch::MmFn`] contract.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4_0_mm(rows: &[u8], rb: usize, acts: &[ActView<'_>], out: *mut f32, ld: usize) {
    // SAFETY: forwarded.
    unsafe { mm_packed::<true>(rows, rb, acts, out, ld) }
}

/// Q8_0 tile kernel (see [`mm_packed`]).
///
/// # Safety
/// The [`crate::dispatch::MmFn`] contract.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_0_mm(rows: &[u8], rb: usize, acts: &[ActView<'_>], out: *mut f32, ld: usize) {
    // SAFETY: forwarded.
    unsafe { mm_packed::<false>(rows, rb, acts, out, ld) }
}

/// F16 rows per register block of the F16 prefill kernel.
const F16_RB: usize = 6;
/// Values of a row converted to f32 at a time (the per-task buffer is `F16_RB · F16_SEG`).
const F16_SEG: usize = 2048;

/// `F16_RB` (or `RB`) converted rows times token groups `g0..g0 + TG` over values `k0..k0 + kn`
/// of the segment: 16 tokens per register, the weights broadcast one value at a time.
///
/// # Safety
/// `wf` holds `RB` rows of `kn` floats (`F16_SEG` apart); `xt` holds `cols × groups × 16`
/// floats (see [`crate::dispatch::F16MmFn`]); `k0 + kn <= cols`, `g0 + TG <= groups`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn f16_block<const RB: usize, const TG: usize>(
    wf: *const f32,
    xt: *const f32,
    groups: usize,
    g0: usize,
    k0: usize,
    kn: usize,
) -> [[__m512; TG]; RB] {
    let mut acc = [[_mm512_setzero_ps(); TG]; RB];
    // SAFETY: the indices stay inside the buffers (caller).
    unsafe {
        let stride = 16 * groups;
        let xg: [*const f32; TG] = core::array::from_fn(|g| xt.add(k0 * stride + (g0 + g) * 16));
        for k in 0..kn {
            let xv: [__m512; TG] = core::array::from_fn(|g| _mm512_loadu_ps(xg[g].add(stride * k)));
            for (r, ar) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*wf.add(r * F16_SEG + k));
                for (a, &x) in ar.iter_mut().zip(&xv) {
                    *a = _mm512_fmadd_ps(w, x, *a);
                }
            }
        }
    }
    acc
}

/// The F16 prefill kernel ([`crate::dispatch::F16MmFn`]): per block of [`F16_RB`] rows, segments
/// of [`F16_SEG`] values converted to f32 (F16C) into a stack buffer, then two token groups at a
/// time; each register holds one row's products with 16 activations, scattered to `out` at the
/// end (the first segment stores, later ones add).
///
/// # Safety
/// The [`crate::dispatch::F16MmFn`] contract.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn f16_mm(
    rows: &[u8],
    rb: usize,
    xt: &[f32],
    cols: usize,
    n: usize,
    out: *mut f32,
    ld: usize,
) {
    /// Rows `r0..r0 + RB` (converted in `wf`) times every group over the segment `k0..k0 + kn`.
    ///
    /// # Safety
    /// As the caller's.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows_block<const RB: usize>(
        wf: *const f32,
        xt: *const f32,
        _cols: usize,
        n: usize,
        k0: usize,
        kn: usize,
        out: *mut f32,
        ld: usize,
        r0: usize,
    ) {
        let groups = n.div_ceil(16);
        let index = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(ld as i32),
        );
        let mut g = 0;
        while g < groups {
            let tg = match groups - g {
                1 => 1,
                2 | 3 => 2,
                _ => 4,
            };
            let (acc4, acc2, acc1);
            let accs: &[[__m512; 4]] = match tg {
                4 => {
                    // SAFETY: forwarded; groups `g..g + 4` exist.
                    acc4 = unsafe { f16_block::<RB, 4>(wf, xt, groups, g, k0, kn) };
                    &acc4
                }
                2 => {
                    // SAFETY: forwarded; groups `g..g + 2` exist.
                    acc2 = unsafe { f16_block::<RB, 2>(wf, xt, groups, g, k0, kn) }
                        .map(|a| [a[0], a[1], _mm512_setzero_ps(), _mm512_setzero_ps()]);
                    &acc2
                }
                _ => {
                    // SAFETY: forwarded; group `g` exists.
                    acc1 = unsafe { f16_block::<RB, 1>(wf, xt, groups, g, k0, kn) }.map(|a| {
                        [
                            a[0],
                            _mm512_setzero_ps(),
                            _mm512_setzero_ps(),
                            _mm512_setzero_ps(),
                        ]
                    });
                    &acc1
                }
            };
            for (r, a) in accs.iter().enumerate() {
                for (gi, &v) in a.iter().enumerate().take(tg) {
                    let t0 = 16 * (g + gi);
                    let m: __mmask16 = if n - t0 >= 16 {
                        !0
                    } else {
                        (1u16 << (n - t0)) - 1
                    };
                    // SAFETY: outputs `t * ld + r0 + r` for the tokens `t < n` in the mask are
                    // writable (caller); masked-off lanes are not accessed.
                    unsafe {
                        let base = out.add(t0 * ld + r0 + r);
                        let v = if k0 > 0 {
                            _mm512_add_ps(
                                v,
                                _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m, index, base),
                            )
                        } else {
                            v
                        };
                        _mm512_mask_i32scatter_ps::<4>(base, m, index, v);
                    }
                }
            }
            g += tg;
        }
    }
    #[repr(align(64))]
    struct Buf([f32; F16_RB * F16_SEG]);
    let mut buf = Buf([0.0; F16_RB * F16_SEG]);
    let wf = &mut buf.0;
    let n_rows = rows.len() / rb.max(1);
    let base = rows.as_ptr();
    let mut r0 = 0;
    while r0 < n_rows {
        let nr = F16_RB.min(n_rows - r0);
        let mut k0 = 0;
        while k0 < cols {
            let kn = F16_SEG.min(cols - k0);
            for r in 0..nr {
                // SAFETY: row `r0 + r` holds `cols` f16 (caller); `wf` row `r` holds `F16_SEG`.
                unsafe {
                    let src = base.add((r0 + r) * rb + 2 * k0).cast::<u16>();
                    let dst = wf.as_mut_ptr().add(r * F16_SEG);
                    let mut k = 0;
                    while k < kn {
                        let m: __mmask16 = if kn - k >= 16 {
                            !0
                        } else {
                            (1u16 << (kn - k)) - 1
                        };
                        let h = _mm256_maskz_loadu_epi16(m, src.add(k).cast());
                        _mm512_mask_storeu_ps(dst.add(k), m, _mm512_cvtph_ps(h));
                        k += 16;
                    }
                }
            }
            // SAFETY: forwarded; rows `r0..r0 + nr` are converted in `wf`.
            unsafe {
                let (w, x) = (wf.as_ptr(), xt.as_ptr());
                match nr {
                    6 => rows_block::<6>(w, x, cols, n, k0, kn, out, ld, r0),
                    5 => rows_block::<5>(w, x, cols, n, k0, kn, out, ld, r0),
                    4 => rows_block::<4>(w, x, cols, n, k0, kn, out, ld, r0),
                    3 => rows_block::<3>(w, x, cols, n, k0, kn, out, ld, r0),
                    2 => rows_block::<2>(w, x, cols, n, k0, kn, out, ld, r0),
                    _ => rows_block::<1>(w, x, cols, n, k0, kn, out, ld, r0),
                }
            }
            k0 += kn;
        }
        r0 += nr;
    }
}

/// Float rows times the f32 activation, `R` rows at a time, 32 values per step, the tail
/// through masked loads.
macro_rules! float_kernel {
    ($n_fn:ident, $rows_fn:ident, $load16:ident, $esize:literal) => {
        /// # Safety
        /// Each `w[r]` points at a row of `n` values of the kernel's type; `a.x` holds `n`.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        #[inline]
        unsafe fn $n_fn<const R: usize>(
            w: [*const u8; R],
            pf: *const u8,
            _b0: usize,
            n: usize,
            a: &ActView<'_>,
        ) -> [f32; R] {
            let x = a.x.as_ptr();
            let mut acc0 = [_mm512_setzero_ps(); R];
            let mut acc1 = [_mm512_setzero_ps(); R];
            let mut i = 0;
            // SAFETY: every unmasked index read is below `n`, inside each row and `a.x`
            // (masked-off lanes are not accessed).
            unsafe {
                while i + 32 <= n {
                    crate::x86::prefetch(pf.wrapping_add(i * R * $esize), 32 * R * $esize);
                    let x0 = _mm512_loadu_ps(x.add(i));
                    let x1 = _mm512_loadu_ps(x.add(i + 16));
                    for r in 0..R {
                        acc0[r] = _mm512_fmadd_ps($load16(w[r], i, !0), x0, acc0[r]);
                        acc1[r] = _mm512_fmadd_ps($load16(w[r], i + 16, !0), x1, acc1[r]);
                    }
                    i += 32;
                }
                while i < n {
                    let m: __mmask16 = if n - i >= 16 {
                        !0
                    } else {
                        (1u16 << (n - i)) - 1
                    };
                    let x0 = _mm512_maskz_loadu_ps(m, x.add(i));
                    for r in 0..R {
                        acc0[r] = _mm512_fmadd_ps($load16(w[r], i, m), x0, acc0[r]);
                    }
                    i += 16;
                }
            }
            let mut out = [0f32; R];
            for r in 0..R {
                out[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[r], acc1[r]));
            }
            out
        }

        rows_fn!($rows_fn, $n_fn, 4, 1);
    };
}

/// Sixteen f32 at element `i` of the row at `p` (lanes outside `m` are zero, not read).
///
/// # Safety
/// The elements `i + k` for the lanes `k` in `m` are in the row.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn ld_f32(p: *const u8, i: usize, m: __mmask16) -> __m512 {
    // SAFETY: forwarded from the caller; masked-off lanes do not fault.
    unsafe { _mm512_maskz_loadu_ps(m, p.cast::<f32>().add(i)) }
}

/// Sixteen f16 at element `i` of the row at `p`, as f32.
///
/// # Safety
/// As [`ld_f32`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn ld_f16(p: *const u8, i: usize, m: __mmask16) -> __m512 {
    // SAFETY: forwarded from the caller; masked-off lanes do not fault.
    unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p.add(2 * i).cast())) }
}

/// Sixteen bf16 at element `i` of the row at `p`, as f32.
///
/// # Safety
/// As [`ld_f32`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn ld_bf16(p: *const u8, i: usize, m: __mmask16) -> __m512 {
    // SAFETY: forwarded from the caller; masked-off lanes do not fault.
    let h = unsafe { _mm256_maskz_loadu_epi16(m, p.add(2 * i).cast()) };
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
}

float_kernel!(f32_z, f32_rows, ld_f32, 4);
float_kernel!(f16_z, f16_rows, ld_f16, 2);
float_kernel!(bf16_z, bf16_rows, ld_bf16, 2);

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
    q4_0_mm: Some(q4_0_mm),
    q8_0_mm: Some(q8_0_mm),
    f16_mm: Some(f16_mm),
};
