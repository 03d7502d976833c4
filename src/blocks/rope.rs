//! Rotary position embedding in both pairings, with linear and dynamic-NTK scaling.
//!
//! Doge's dynamic NTK (Hugging Face `rope_type: dynamic`) recomputes the base when the sequence
//! seen by a forward call exceeds the original context: `θ' = θ·((f·S/L₀) − (f−1))^(D/(D−2))`
//! with `S = position + 1`. cheems applies the per-token rule (each token rotated with the base
//! of its own step), which is what Hugging Face's token-by-token decoding does; a long Hugging
//! Face prefill instead rotates every position with the base of the last one.

use crate::config::{Rope, RopePairing};

/// Precomputed inverse frequencies of the unscaled base.
#[derive(Clone, Debug)]
pub struct RopeTable {
    pub cfg: Rope,
    inv_freq: Vec<f32>,
}

impl RopeTable {
    pub fn new(cfg: &Rope) -> Self {
        RopeTable {
            cfg: cfg.clone(),
            inv_freq: inv_freq(cfg.theta, cfg.dim),
        }
    }

    /// Rotates each `dim`-sized head of `x` (heads back to back) for position `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        for head in x.chunks_exact_mut(self.cfg.dim) {
            for i in 0..self.cfg.dim / 2 {
                let (sin, cos) = self.angle(pos, i).sin_cos();
                self.rotate_pair(head, i, cos, sin);
            }
        }
    }

    /// The angle of pair `i` at position `pos`, exactly as [`RopeTable::apply`] computes it.
    fn angle(&self, pos: usize, i: usize) -> f32 {
        let p = pos as f32 / self.cfg.linear_factor;
        let f = match self.cfg.dynamic.filter(|&(_, orig)| pos + 1 > orig) {
            Some((factor, orig)) => {
                dynamic_inv_freq(self.cfg.theta, self.cfg.dim, factor, orig, pos + 1, i)
            }
            None => self.inv_freq[i],
        };
        p * f
    }

    fn rotate_pair(&self, head: &mut [f32], i: usize, cos: f32, sin: f32) {
        let (a, b) = match self.cfg.pairing {
            RopePairing::Halves => (i, i + self.cfg.dim / 2),
            RopePairing::Adjacent => (2 * i, 2 * i + 1),
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0 * cos - x1 * sin;
        head[b] = x0 * sin + x1 * cos;
    }

    /// The rotation that moves a vector rotated for position `from` to position `to`: per
    /// pair, `(cos, sin)` of the difference of the two angles (taken in f64, so the result is
    /// the rotation [`RopeTable::apply`] would have made at `to`, up to rounding). Fills `cos`
    /// and `sin` (`dim / 2` values each).
    pub fn shift(&self, from: usize, to: usize, cos: &mut [f32], sin: &mut [f32]) {
        for (i, (c, s)) in cos.iter_mut().zip(sin.iter_mut()).enumerate() {
            let d = f64::from(self.angle(to, i)) - f64::from(self.angle(from, i));
            let (sd, cd) = d.sin_cos();
            (*c, *s) = (cd as f32, sd as f32);
        }
    }

    /// Rotates each head of `x` by a rotation from [`RopeTable::shift`].
    pub fn rotate(&self, x: &mut [f32], cos: &[f32], sin: &[f32]) {
        for head in x.chunks_exact_mut(self.cfg.dim) {
            for (i, (&c, &s)) in cos.iter().zip(sin).enumerate() {
                self.rotate_pair(head, i, c, s);
            }
        }
    }
}

fn inv_freq(theta: f32, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / dim as f32))
        .collect()
}

fn dynamic_inv_freq(theta: f32, dim: usize, factor: f32, orig: usize, seq: usize, i: usize) -> f32 {
    let d = dim as f64;
    let base = f64::from(theta)
        * ((f64::from(factor) * seq as f64 / orig as f64) - (f64::from(factor) - 1.0))
            .powf(d / (d - 2.0));
    (1.0 / base.powf((2 * i) as f64 / d)) as f32
}
