//! f32 vector kernels at the active level: `dot` (query · key) and `axpy` (`y += a·x`, weights
//! times values) for attention over the KV cache, and SiLU (`silu_inplace`, `silu_mul`: the
//! gates of the MLP and of the SSD mixer, the SSD conv's activation); and the attention loops
//! over strided cache rows, `dot_rows` (a query against every key) and `sum_rows` (the weighted
//! sum of the values), which keep the query or the output in registers.
//!
//! The fast paths are the same chunked loop compiled with the level's features enabled
//! (`#[target_feature]`), which the compiler turns into 8- (AVX2) or 16-lane (AVX-512) vector code
//! with several independent accumulators; the scalar twins [`dot_ref`] and [`axpy_ref`] are the
//! plain sequential loops. `dot` sums in a different order than `dot_ref`, so the two agree to
//! rounding (the parity suite checks a relative bound); `axpy` is exact per element.

use crate::dispatch::{level, Level};

/// Reference: `out[j] = scale · (q · rows[j])`, row `j` at `base[j · stride..][..q.len()]`.
pub fn dot_rows_ref(q: &[f32], base: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot_ref(q, &base[j * stride..j * stride + q.len()]) * scale;
    }
}

/// Reference: `out = Σ_j w[j] · rows[j]`, row `j` at `base[j · stride..][..out.len()]`.
pub fn sum_rows_ref(w: &[f32], base: &[f32], stride: usize, out: &mut [f32]) {
    out.fill(0.0);
    let d = out.len();
    for (j, &a) in w.iter().enumerate() {
        axpy_ref(a, &base[j * stride..j * stride + d], out);
    }
}

/// The sum of 16 lanes as a tree of pairwise sums (vector halves added, not a serial chain).
#[inline(always)]
fn tree_sum16(a: &[f32; 16]) -> f32 {
    let h: [f32; 8] = core::array::from_fn(|i| a[i] + a[i + 8]);
    let q: [f32; 4] = core::array::from_fn(|i| h[i] + h[i + 4]);
    let p: [f32; 2] = core::array::from_fn(|i| q[i] + q[i + 2]);
    p[0] + p[1]
}

/// `dot_rows` for rows of exactly `D` values, the query held in registers.
#[inline(always)]
fn dot_rows_d<const D: usize>(
    q: &[f32; D],
    base: &[f32],
    stride: usize,
    scale: f32,
    out: &mut [f32],
) {
    for (j, o) in out.iter_mut().enumerate() {
        let Some(k) = base.get(j * stride..).and_then(|r| r.first_chunk::<D>()) else {
            *o = f32::NAN; // unreachable: the caller checked the extent
            continue;
        };
        let mut acc = [0f32; 16];
        for c in 0..D / 16 {
            for i in 0..16 {
                acc[i] = k[16 * c + i].mul_add(q[16 * c + i], acc[i]);
            }
        }
        *o = tree_sum16(&acc) * scale;
    }
}

/// `sum_rows` for rows of exactly `D` values, the output held in registers: even and odd rows
/// into two sets of accumulators (two independent chains of multiply-adds, so the adds do not
/// wait on each other's latency), added at the end.
#[inline(always)]
fn sum_rows_d<const D: usize>(w: &[f32], base: &[f32], stride: usize, out: &mut [f32; D]) {
    let row = |j: usize| base.get(j * stride..).and_then(|r| r.first_chunk::<D>());
    let (mut even, mut odd) = ([0f32; D], [0f32; D]);
    let pairs = w.len() / 2;
    for j in 0..pairs {
        let (a, b) = (w[2 * j], w[2 * j + 1]);
        let (Some(u), Some(v)) = (row(2 * j), row(2 * j + 1)) else {
            continue; // unreachable: the caller checked the extent
        };
        for i in 0..D {
            even[i] = a.mul_add(u[i], even[i]);
            odd[i] = b.mul_add(v[i], odd[i]);
        }
    }
    if let (Some(&a), Some(u)) = (w.get(2 * pairs), row(2 * pairs)) {
        for i in 0..D {
            even[i] = a.mul_add(u[i], even[i]);
        }
    }
    *out = core::array::from_fn(|i| even[i] + odd[i]);
}

#[inline(always)]
fn dot_rows_lanes(q: &[f32], base: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    let d = q.len();
    let rows = out.len();
    if rows > 0 && (rows - 1) * stride + d > base.len() {
        return dot_rows_ref(q, base, stride, scale, out);
    }
    if let Some(q) = q.first_chunk::<64>().filter(|_| d == 64) {
        dot_rows_d::<64>(q, base, stride, scale, out)
    } else if let Some(q) = q.first_chunk::<128>().filter(|_| d == 128) {
        dot_rows_d::<128>(q, base, stride, scale, out)
    } else {
        for (j, o) in out.iter_mut().enumerate() {
            *o = dot_lanes::<16>(q, &base[j * stride..j * stride + d]) * scale;
        }
    }
}

#[inline(always)]
fn sum_rows_lanes(w: &[f32], base: &[f32], stride: usize, out: &mut [f32]) {
    let d = out.len();
    let rows = w.len();
    if rows > 0 && (rows - 1) * stride + d > base.len() {
        return sum_rows_ref(w, base, stride, out);
    }
    if let Some(o) = out.first_chunk_mut::<64>().filter(|_| d == 64) {
        sum_rows_d::<64>(w, base, stride, o)
    } else if let Some(o) = out.first_chunk_mut::<128>().filter(|_| d == 128) {
        sum_rows_d::<128>(w, base, stride, o)
    } else {
        out.fill(0.0);
        for (j, &a) in w.iter().enumerate() {
            axpy_lanes(a, &base[j * stride..j * stride + d], out);
        }
    }
}

/// Reference SiLU: `x / (1 + exp(-x))` with libm's `exp`.
#[inline]
pub fn silu_ref(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `exp(x)` for the vector loops: `2^n · p(f)` with `n = round(x·log₂e)`, `f = x − n·ln 2`
/// (Cody-Waite), `p` the degree-6 Taylor polynomial (relative error below 4e-7 over the
/// clamped range `[-87, 88]`; beyond it, `exp` of the bound).
#[inline(always)]
fn exp_lane(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 · 2²³: adding and subtracting it rounds to the nearest integer (ties to even).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let f = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + f * (1.0
            + f * (0.5
                + f * (1.0 / 6.0 + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0))))));
    // 2ⁿ from the bits of `t`, whose low mantissa bits hold `2²² + n` (n in [-126, 127]): adding
    // the bias and shifting the sum into the exponent field leaves `(n + 127) << 23`. Integer
    // lane operations only; `n as i32` (a saturating conversion) does not vectorize.
    let scale = f32::from_bits(t.to_bits().wrapping_add(127) << 23);
    p * scale
}

#[inline(always)]
fn silu_lane(x: f32) -> f32 {
    x / (1.0 + exp_lane(-x))
}

#[inline(always)]
fn silu_inplace_lanes(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = silu_lane(*v));
}

#[inline(always)]
fn silu_mul_lanes(y: &mut [f32], z: &[f32]) {
    y.iter_mut().zip(z).for_each(|(a, &b)| *a *= silu_lane(b));
}

/// Reference softmax in place: `x[i] = exp(x[i] − max) / Σ exp(x[j] − max)`, libm's `exp`,
/// sequential sums.
pub fn softmax_ref(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// Softmax with the maximum and the sum in 16 lanes and the vector `exp` ([`exp_lane`]).
#[inline(always)]
fn softmax_lanes(x: &mut [f32]) {
    const L: usize = 16;
    let mut m = [f32::NEG_INFINITY; L];
    let mut chunks = x.chunks_exact(L);
    for c in &mut chunks {
        for i in 0..L {
            m[i] = m[i].max(c[i]);
        }
    }
    let max = chunks.remainder().iter().copied().fold(
        m.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        f32::max,
    );
    let mut acc = [0f32; L];
    let mut chunks = x.chunks_exact_mut(L);
    for c in &mut chunks {
        for i in 0..L {
            c[i] = exp_lane(c[i] - max);
            acc[i] += c[i];
        }
    }
    let mut sum = tree_sum16(&acc);
    for v in chunks.into_remainder() {
        *v = exp_lane(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// Sequential reference: `Σ a[i]·b[i]` over the shorter length.
pub fn dot_ref(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0, |s, (x, y)| s + x * y)
}

/// Reference: `y[i] += alpha · x[i]` over the shorter length.
pub fn axpy_ref(alpha: f32, x: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(o, v)| *o += alpha * v);
}

#[inline(always)]
fn dot_lanes<const L: usize>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..L {
            acc[i] += x[i] * y[i];
        }
    }
    let tail = ra.iter().zip(rb).fold(0.0, |s, (x, y)| s + x * y);
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy_lanes(alpha: f32, x: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(o, v)| *o += alpha * v);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        super::dot_lanes::<8>(a, b)
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy_avx2(alpha: f32, x: &[f32], y: &mut [f32]) {
        super::axpy_lanes(alpha, x, y)
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_inplace_avx2(x: &mut [f32]) {
        super::silu_inplace_lanes(x)
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul_avx2(y: &mut [f32], z: &[f32]) {
        super::silu_mul_lanes(y, z)
    }

    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn dot_rows_avx512(
        q: &[f32],
        base: &[f32],
        stride: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        let (d, rows) = (q.len(), out.len());
        let fits = rows == 0 || (rows - 1) * stride + d <= base.len();
        let done = match d {
            // SAFETY: AVX-512F (caller); the rows are inside `base` (`fits`).
            16 if fits => unsafe { dot_rows_16x::<1>(q, base, stride, scale, out) },
            // SAFETY: as above.
            32 if fits => unsafe { dot_rows_16x::<2>(q, base, stride, scale, out) },
            // SAFETY: as above.
            64 if fits => unsafe { dot_rows_16x::<4>(q, base, stride, scale, out) },
            // SAFETY: as above.
            128 if fits => unsafe { dot_rows_16x::<8>(q, base, stride, scale, out) },
            _ => 0,
        };
        super::dot_rows_lanes(
            q,
            &base[(done * stride).min(base.len())..],
            stride,
            scale,
            &mut out[done..],
        )
    }

    /// The first `16 · ⌊rows / 16⌋` dots of `dot_rows` for rows of `16 · C` values, 16 keys at a
    /// time: each key's products in the lanes of one register, then the 16 registers reduced
    /// together (pairwise sums across registers, four shuffle levels) into one register of 16
    /// dots, instead of one horizontal sum per key. Returns how many dots it wrote.
    ///
    /// # Safety
    /// AVX-512F; `q.len() == 16 · C`; rows `j < out.len()` lie inside `base` at `j · stride`.
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn dot_rows_16x<const C: usize>(
        q: &[f32],
        base: &[f32],
        stride: usize,
        scale: f32,
        out: &mut [f32],
    ) -> usize {
        use core::arch::x86_64::*;
        let blocks = out.len() / 16;
        // SAFETY: `q` holds `16 · C` floats; every row read is inside `base` (caller); the
        // stores write `out[16b..16b + 16]` for `b < blocks`.
        unsafe {
            let qv: [__m512; C] = core::array::from_fn(|c| _mm512_loadu_ps(q.as_ptr().add(16 * c)));
            let sc = _mm512_set1_ps(scale);
            for b in 0..blocks {
                let a: [__m512; 16] = core::array::from_fn(|i| {
                    let row = base.as_ptr().add((16 * b + i) * stride);
                    let mut acc = _mm512_mul_ps(_mm512_loadu_ps(row), qv[0]);
                    for (c, &qc) in qv.iter().enumerate().skip(1) {
                        acc = _mm512_fmadd_ps(_mm512_loadu_ps(row.add(16 * c)), qc, acc);
                    }
                    acc
                });
                // Pairs within 128-bit lanes: [a₀+a₂, b₀+b₂, a₁+a₃, b₁+b₃] per lane.
                let p: [__m512; 8] = core::array::from_fn(|i| {
                    let (x, y) = (a[2 * i], a[2 * i + 1]);
                    _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y))
                });
                // Four keys per 128-bit lane, in order.
                let f: [__m512; 4] = core::array::from_fn(|i| {
                    let (x, y) = (p[2 * i], p[2 * i + 1]);
                    _mm512_add_ps(
                        _mm512_shuffle_ps::<0b01_00_01_00>(x, y),
                        _mm512_shuffle_ps::<0b11_10_11_10>(x, y),
                    )
                });
                // Across the 128-bit lanes: twice halving.
                let h: [__m512; 2] = core::array::from_fn(|i| {
                    let (x, y) = (f[2 * i], f[2 * i + 1]);
                    _mm512_add_ps(
                        _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
                        _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
                    )
                });
                let v = _mm512_add_ps(
                    _mm512_shuffle_f32x4::<0b10_00_10_00>(h[0], h[1]),
                    _mm512_shuffle_f32x4::<0b11_01_11_01>(h[0], h[1]),
                );
                _mm512_storeu_ps(out.as_mut_ptr().add(16 * b), _mm512_mul_ps(v, sc));
            }
        }
        16 * blocks
    }

    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn sum_rows_avx512(w: &[f32], base: &[f32], stride: usize, out: &mut [f32]) {
        super::sum_rows_lanes(w, base, stride, out)
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_rows_avx2(
        q: &[f32],
        base: &[f32],
        stride: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        super::dot_rows_lanes(q, base, stride, scale, out)
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn sum_rows_avx2(w: &[f32], base: &[f32], stride: usize, out: &mut [f32]) {
        super::sum_rows_lanes(w, base, stride, out)
    }

    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn silu_inplace_avx512(x: &mut [f32]) {
        super::silu_inplace_lanes(x)
    }

    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn silu_mul_avx512(y: &mut [f32], z: &[f32]) {
        super::silu_mul_lanes(y, z)
    }

    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn softmax_avx512(x: &mut [f32]) {
        super::softmax_lanes(x)
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax_avx2(x: &mut [f32]) {
        super::softmax_lanes(x)
    }

    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        super::dot_lanes::<16>(a, b)
    }

    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn axpy_avx512(alpha: f32, x: &[f32], y: &mut [f32]) {
        super::axpy_lanes(alpha, x, y)
    }
}

/// `Σ a[i]·b[i]` over the shorter length at `lvl` (which must be supported; the scalar twin
/// otherwise).
pub fn dot_at(lvl: Level, a: &[f32], b: &[f32]) -> f32 {
    match lvl {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is supported by this CPU (checked).
        Level::Avx512Vnni if lvl.is_supported() => unsafe { x86::dot_avx512(a, b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 if lvl.is_supported() => unsafe { x86::dot_avx2(a, b) },
        // NEON is aarch64's baseline: the chunked loop vectorizes as it is.
        Level::Neon => dot_lanes::<16>(a, b),
        _ => dot_ref(a, b),
    }
}

/// `y[i] += alpha · x[i]` over the shorter length at `lvl`.
pub fn axpy_at(lvl: Level, alpha: f32, x: &[f32], y: &mut [f32]) {
    match lvl {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is supported by this CPU (checked).
        Level::Avx512Vnni if lvl.is_supported() => unsafe { x86::axpy_avx512(alpha, x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 if lvl.is_supported() => unsafe { x86::axpy_avx2(alpha, x, y) },
        Level::Neon => axpy_lanes(alpha, x, y),
        _ => axpy_ref(alpha, x, y),
    }
}

/// `x[i] = silu(x[i])` at `lvl` (the vector levels use a polynomial `exp`, within 1e-6
/// relative of [`silu_ref`]).
pub fn silu_inplace_at(lvl: Level, x: &mut [f32]) {
    match lvl {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is supported by this CPU (checked).
        Level::Avx512Vnni if lvl.is_supported() => unsafe { x86::silu_inplace_avx512(x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 if lvl.is_supported() => unsafe { x86::silu_inplace_avx2(x) },
        Level::Neon => silu_inplace_lanes(x),
        _ => x.iter_mut().for_each(|v| *v = silu_ref(*v)),
    }
}

/// `y[i] *= silu(z[i])` over the shorter length at `lvl`.
pub fn silu_mul_at(lvl: Level, y: &mut [f32], z: &[f32]) {
    match lvl {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is supported by this CPU (checked).
        Level::Avx512Vnni if lvl.is_supported() => unsafe { x86::silu_mul_avx512(y, z) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 if lvl.is_supported() => unsafe { x86::silu_mul_avx2(y, z) },
        Level::Neon => silu_mul_lanes(y, z),
        _ => y.iter_mut().zip(z).for_each(|(a, &b)| *a *= silu_ref(b)),
    }
}

/// Softmax in place at `lvl` (the vector `exp`, within 1e-6 of [`softmax_ref`] relative to the
/// largest weight).
pub fn softmax_at(lvl: Level, x: &mut [f32]) {
    match lvl {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is supported by this CPU (checked).
        Level::Avx512Vnni if lvl.is_supported() => unsafe { x86::softmax_avx512(x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 if lvl.is_supported() => unsafe { x86::softmax_avx2(x) },
        Level::Neon => softmax_lanes(x),
        _ => softmax_ref(x),
    }
}

/// [`softmax_at`] at the active level.
#[inline]
pub fn softmax(x: &mut [f32]) {
    softmax_at(level(), x)
}

/// `out[j] = scale · (q · rows[j])` for `out.len()` rows at `base[j · stride..]`, at `lvl`.
pub fn dot_rows_at(
    lvl: Level,
    q: &[f32],
    base: &[f32],
    stride: usize,
    scale: f32,
    out: &mut [f32],
) {
    match lvl {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is supported by this CPU (checked).
        Level::Avx512Vnni if lvl.is_supported() => unsafe {
            x86::dot_rows_avx512(q, base, stride, scale, out)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 if lvl.is_supported() => unsafe {
            x86::dot_rows_avx2(q, base, stride, scale, out)
        },
        Level::Neon => dot_rows_lanes(q, base, stride, scale, out),
        _ => dot_rows_ref(q, base, stride, scale, out),
    }
}

/// `out = Σ_j w[j] · rows[j]` for `w.len()` rows at `base[j · stride..]`, at `lvl`.
pub fn sum_rows_at(lvl: Level, w: &[f32], base: &[f32], stride: usize, out: &mut [f32]) {
    match lvl {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is supported by this CPU (checked).
        Level::Avx512Vnni if lvl.is_supported() => unsafe {
            x86::sum_rows_avx512(w, base, stride, out)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 if lvl.is_supported() => unsafe { x86::sum_rows_avx2(w, base, stride, out) },
        Level::Neon => sum_rows_lanes(w, base, stride, out),
        _ => sum_rows_ref(w, base, stride, out),
    }
}

/// [`dot_rows_at`] at the active level.
#[inline]
pub fn dot_rows(q: &[f32], base: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    dot_rows_at(level(), q, base, stride, scale, out)
}

/// [`sum_rows_at`] at the active level.
#[inline]
pub fn sum_rows(w: &[f32], base: &[f32], stride: usize, out: &mut [f32]) {
    sum_rows_at(level(), w, base, stride, out)
}

/// [`silu_inplace_at`] at the active level.
#[inline]
pub fn silu_inplace(x: &mut [f32]) {
    silu_inplace_at(level(), x)
}

/// [`silu_mul_at`] at the active level.
#[inline]
pub fn silu_mul(y: &mut [f32], z: &[f32]) {
    silu_mul_at(level(), y, z)
}

/// [`dot_at`] at the active level.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_at(level(), a, b)
}

/// [`axpy_at`] at the active level.
#[inline]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    axpy_at(level(), alpha, x, y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::available_levels;

    #[test]
    fn every_level_matches_the_scalar_twin() {
        let mut s = 0x9e37_79b9u32;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        };
        for n in [0usize, 1, 7, 16, 31, 64, 100, 128, 257] {
            let a: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let want = dot_ref(&a, &b);
            let mag: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum();
            let mut want_y: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let y0 = want_y.clone();
            axpy_ref(0.37, &a, &mut want_y);
            for lvl in available_levels() {
                let got = dot_at(lvl, &a, &b);
                assert!(
                    (got - want).abs() <= 1e-5 * mag.max(1.0),
                    "{lvl}: dot n={n}: {got} vs {want}"
                );
                let mut y = y0.clone();
                axpy_at(lvl, 0.37, &a, &mut y);
                assert_eq!(y, want_y, "{lvl}: axpy n={n}");
            }
        }
    }

    #[test]
    fn silu_at_every_level_is_within_1e6_of_the_scalar_twin() {
        let mut xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.01).collect();
        xs.extend([
            -200.0, -100.0, -88.5, -87.0, -30.0, 0.0, -0.0, 1e-30, 30.0, 88.5, 100.0, 1e30,
        ]);
        let z: Vec<f32> = xs.iter().rev().copied().collect();
        for lvl in available_levels() {
            let mut a = xs.clone();
            silu_inplace_at(lvl, &mut a);
            let mut m = z.clone();
            silu_mul_at(lvl, &mut m, &xs);
            for (i, &x) in xs.iter().enumerate() {
                let want = silu_ref(x);
                assert!(
                    (a[i] - want).abs() <= 1e-6 * want.abs() + 1e-30,
                    "{lvl}: silu({x}) = {} vs {want}",
                    a[i]
                );
                let want_m = z[i] * want;
                assert!(
                    (m[i] - want_m).abs() <= 1e-6 * want_m.abs() + 1e-30,
                    "{lvl}: {} * silu({x}) = {} vs {want_m}",
                    z[i],
                    m[i]
                );
            }
        }
    }

    #[test]
    fn softmax_at_every_level_matches_the_scalar_twin() {
        let mut s = 0x9e37_79b9u32;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 40.0 - 20.0
        };
        for n in [1usize, 5, 16, 17, 100, 513] {
            let mut x: Vec<f32> = (0..n).map(|_| rnd()).collect();
            if n > 5 {
                // A masked score and a far-below-the-maximum one.
                x[3] = f32::NEG_INFINITY;
                x[4] = -1.0e4;
            }
            let mut want = x.clone();
            softmax_ref(&mut want);
            for lvl in available_levels() {
                let mut got = x.clone();
                softmax_at(lvl, &mut got);
                let sum: f32 = got.iter().sum();
                assert!((sum - 1.0).abs() <= 1e-5, "{lvl} n {n}: sum {sum}");
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!((a - b).abs() <= 1e-6, "{lvl} n {n} [{i}]: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn strided_rows_at_every_level_match_the_twins() {
        let mut s = 0x1234_5678u32;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        };
        for (d, stride, rows) in [
            (64usize, 192usize, 37usize),
            (128, 160, 50),
            (32, 40, 33),
            (16, 16, 48),
            (64, 64, 16),
            (16, 16, 1),
            (128, 130, 5),
            (8, 24, 3),
            (64, 64, 0),
            (160, 200, 2),
        ] {
            let base: Vec<f32> = (0..rows * stride + d).map(|_| rnd()).collect();
            let q: Vec<f32> = (0..d).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..rows).map(|_| rnd()).collect();
            let mut want_s = vec![0f32; rows];
            dot_rows_ref(&q, &base, stride, 0.125, &mut want_s);
            let mut want_o = vec![0f32; d];
            sum_rows_ref(&w, &base, stride, &mut want_o);
            for lvl in available_levels() {
                let mut got = vec![0f32; rows];
                dot_rows_at(lvl, &q, &base, stride, 0.125, &mut got);
                for (j, (a, b)) in got.iter().zip(&want_s).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * (d as f32),
                        "{lvl}: dot_rows d={d} row {j}: {a} vs {b}"
                    );
                }
                let mut o = vec![7f32; d];
                sum_rows_at(lvl, &w, &base, stride, &mut o);
                for (i, (a, b)) in o.iter().zip(&want_o).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * (rows as f32 + 1.0),
                        "{lvl}: sum_rows d={d} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}
