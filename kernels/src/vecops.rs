//! f32 vector kernels at the active level: `dot` (query · key) and `axpy` (`y += a·x`, weights
//! times values) for attention over the KV cache, and SiLU (`silu_inplace`, `silu_mul`: the
//! gates of the MLP and of the SSD mixer, the SSD conv's activation).
//!
//! The fast paths are the same chunked loop compiled with the level's features enabled
//! (`#[target_feature]`), which the compiler turns into 8- (AVX2) or 16-lane (AVX-512) vector code
//! with several independent accumulators; the scalar twins [`dot_ref`] and [`axpy_ref`] are the
//! plain sequential loops. `dot` sums in a different order than `dot_ref`, so the two agree to
//! rounding (the parity suite checks a relative bound); `axpy` is exact per element.

use crate::dispatch::{level, Level};

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
    let n = (x * LOG2E + ROUND) - ROUND;
    let f = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + f * (1.0
            + f * (0.5
                + f * (1.0 / 6.0 + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
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
}
