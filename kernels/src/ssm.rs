//! The Mamba-2 SSD recurrence of one head for one token, fused: each row of the state is read
//! once, decayed and updated, written once, and dotted with C in the same pass
//! (`architectures.md`, the per-token step):
//!
//! `h[i][k] = h[i][k]·exp(Δ·A) + (Δ·x[i])·B[k]`, `y[i] = Σ_k h[i][k]·C[k] + D·x[i]`.
//!
//! [`ssd_step_ref`] is the scalar twin (sequential sums); [`ssd_step_at`] runs the same chunked
//! loop compiled for the level's vector width. The state update is the same IEEE operations in
//! the same order at every level (a product, a product, a sum per element: no fused
//! multiply-add), so the state is bit-identical across levels; `y` sums in lanes and agrees to
//! rounding.
//!
//! Not here: Δ (softplus), the conv, the gate and the projections (`src/blocks/ssd.rs`).

use crate::dispatch::{level, Level};

/// One head's step, the scalar twin. `state` is `[x.len()][b.len()]`, `c` as long as `b`, `y`
/// as long as `x`; `da` is `exp(Δ·A)`.
pub fn ssd_step_ref(
    state: &mut [f32],
    x: &[f32],
    b: &[f32],
    c: &[f32],
    dt: f32,
    da: f32,
    d: f32,
    y: &mut [f32],
) {
    let n = b.len();
    if n == 0 {
        for (yi, &xi) in y.iter_mut().zip(x) {
            *yi = d * xi;
        }
        return;
    }
    for ((row, &xi), yi) in state.chunks_exact_mut(n).zip(x).zip(y.iter_mut()) {
        let dtx = dt * xi;
        let mut acc = 0.0;
        for k in 0..n {
            row[k] = row[k] * da + dtx * b[k];
            acc += row[k] * c[k];
        }
        *yi = acc + d * xi;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn step_lanes<const L: usize>(
    state: &mut [f32],
    x: &[f32],
    b: &[f32],
    c: &[f32],
    dt: f32,
    da: f32,
    d: f32,
    y: &mut [f32],
) {
    let n = b.len();
    if n == 0 {
        return ssd_step_ref(state, x, b, c, dt, da, d, y);
    }
    let c = &c[..n];
    for ((row, &xi), yi) in state.chunks_exact_mut(n).zip(x).zip(y.iter_mut()) {
        let dtx = dt * xi;
        let mut acc = [0f32; L];
        let mut rc = row.chunks_exact_mut(L);
        let (mut bc, mut cc) = (b.chunks_exact(L), c.chunks_exact(L));
        for ((r, bv), cv) in (&mut rc).zip(&mut bc).zip(&mut cc) {
            for i in 0..L {
                let v = r[i] * da + dtx * bv[i];
                r[i] = v;
                acc[i] += v * cv[i];
            }
        }
        let mut tail = 0.0;
        for ((r, bv), cv) in rc
            .into_remainder()
            .iter_mut()
            .zip(bc.remainder())
            .zip(cc.remainder())
        {
            *r = *r * da + dtx * bv;
            tail += *r * cv;
        }
        *yi = acc.iter().sum::<f32>() + tail + d * xi;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn step_avx2(
        state: &mut [f32],
        x: &[f32],
        b: &[f32],
        c: &[f32],
        dt: f32,
        da: f32,
        d: f32,
        y: &mut [f32],
    ) {
        super::step_lanes::<16>(state, x, b, c, dt, da, d, y)
    }

    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn step_avx512(
        state: &mut [f32],
        x: &[f32],
        b: &[f32],
        c: &[f32],
        dt: f32,
        da: f32,
        d: f32,
        y: &mut [f32],
    ) {
        super::step_lanes::<32>(state, x, b, c, dt, da, d, y)
    }
}

/// [`ssd_step_ref`] at `lvl` (the scalar twin where the CPU lacks it).
#[allow(clippy::too_many_arguments)]
pub fn ssd_step_at(
    lvl: Level,
    state: &mut [f32],
    x: &[f32],
    b: &[f32],
    c: &[f32],
    dt: f32,
    da: f32,
    d: f32,
    y: &mut [f32],
) {
    debug_assert!(c.len() >= b.len() && state.len() >= x.len() * b.len());
    match lvl {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is supported by this CPU (checked).
        Level::Avx512Vnni if lvl.is_supported() => unsafe {
            x86::step_avx512(state, x, b, c, dt, da, d, y)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 if lvl.is_supported() => unsafe {
            x86::step_avx2(state, x, b, c, dt, da, d, y)
        },
        // NEON is aarch64's baseline: the chunked loop vectorizes as it is.
        Level::Neon => step_lanes::<16>(state, x, b, c, dt, da, d, y),
        _ => ssd_step_ref(state, x, b, c, dt, da, d, y),
    }
}

/// [`ssd_step_at`] at the active level.
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn ssd_step(
    state: &mut [f32],
    x: &[f32],
    b: &[f32],
    c: &[f32],
    dt: f32,
    da: f32,
    d: f32,
    y: &mut [f32],
) {
    ssd_step_at(level(), state, x, b, c, dt, da, d, y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::available_levels;

    #[test]
    fn every_level_matches_the_scalar_twin() {
        let mut s = 0x2545_f491u32;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        };
        for (p, n) in [(0usize, 8usize), (1, 1), (3, 0), (2, 7), (5, 16), (4, 33), (64, 128), (3, 130)] {
            let x: Vec<f32> = (0..p).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let c: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let h0: Vec<f32> = (0..p * n).map(|_| rnd()).collect();
            let (dt, da, d) = (0.3, 0.9, 0.7);
            let mut want_h = h0.clone();
            let mut want_y = vec![0f32; p];
            ssd_step_ref(&mut want_h, &x, &b, &c, dt, da, d, &mut want_y);
            for lvl in available_levels() {
                let mut h = h0.clone();
                let mut y = vec![0f32; p];
                ssd_step_at(lvl, &mut h, &x, &b, &c, dt, da, d, &mut y);
                assert_eq!(h, want_h, "{lvl}: state p={p} n={n}");
                for i in 0..p {
                    let mag: f32 = (0..n).map(|k| (want_h[i * n + k] * c[k]).abs()).sum::<f32>()
                        + (d * x[i]).abs();
                    assert!(
                        (y[i] - want_y[i]).abs() <= 1e-5 * mag.max(1.0),
                        "{lvl}: y p={p} n={n} i={i}: {} vs {}",
                        y[i],
                        want_y[i]
                    );
                }
            }
        }
    }
}
