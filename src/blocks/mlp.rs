//! The gated MLP: `W_down(silu(W_gate x) ⊙ W_up x)` (llama, doge, and CDMoE's shared MLP).

use anyhow::Result;

use crate::weights::{Binder, Mat};
use crate::Ctx;

#[derive(Debug)]
pub struct Mlp {
    /// [d_model] -> [d_ff]
    pub gate: Mat,
    /// [d_model] -> [d_ff]
    pub up: Mat,
    /// [d_ff] -> [d_model]
    pub down: Mat,
}

pub fn silu(x: f32) -> f32 {
    cheems_kernels::vecops::silu_ref(x)
}

impl Mlp {
    pub fn bind(b: &Binder<'_>, layer: usize, d_model: usize, d_ff: usize) -> Result<Self> {
        let n = |s: &str| format!("blk.{layer}.{s}.weight");
        Ok(Mlp {
            gate: b.mat(&n("ffn_gate"), d_model, d_ff)?,
            up: b.mat(&n("ffn_up"), d_model, d_ff)?,
            down: b.mat(&n("ffn_down"), d_ff, d_model)?,
        })
    }

    /// `out[t] = MLP(xs[t])` for the rows of `xs`; `h1`, `h2` hold `[n][d_ff]`.
    pub fn forward(
        &self,
        cx: &mut Ctx<'_>,
        xs: &[f32],
        h1: &mut [f32],
        h2: &mut [f32],
        out: &mut [f32],
    ) {
        let n = xs.len() / self.gate.cols;
        let (h1, h2) = (&mut h1[..n * self.gate.rows], &mut h2[..n * self.up.rows]);
        cx.matmul(&self.gate, xs, h1);
        cx.matmul(&self.up, xs, h2);
        cheems_kernels::vecops::silu_mul(h2, h1);
        cx.matmul(&self.down, h2, &mut out[..n * self.down.rows]);
    }
}
