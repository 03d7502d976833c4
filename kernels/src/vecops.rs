//! f32 vector kernels of attention over the KV cache: `dot` (query · key) and `axpy`
//! (`y += a·x`, weights times values), at the active level.
//!
//! The fast paths are the same chunked loop compiled with the level's features enabled
//! (`#[target_feature]`), which the compiler turns into 8- (AVX2) or 16-lane (AVX-512) vector code
//! with several independent accumulators; the scalar twins [`dot_ref`] and [`axpy_ref`] are the
//! plain sequential loops. `dot` sums in a different order than `dot_ref`, so the two agree to
//! rounding (the parity suite checks a relative bound); `axpy` is exact per element.

use crate::dispatch::{level, Level};

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
}
