//! The Mamba-2 SSD mixer (`architectures.md` eqs. 26-33), with RoPE on B and C for `cheems`
//! (`cheems.md` §4). State per layer is fixed: the last `d_conv - 1` conv inputs and an f32
//! `[n_heads][head_dim][d_state]` SSM state.

use anyhow::Result;

use super::attention::add_bias;
use super::mlp::silu;
use crate::config::{Config, SsdConfig};
use crate::weights::{Binder, Mat};
use crate::Ctx;

#[derive(Debug)]
pub struct Ssd {
    pub cfg: SsdConfig,
    /// [d_model] -> [z (d_inner) | xBC (conv_dim) | dt (n_heads)]
    pub in_proj: Mat,
    pub in_bias: Option<Vec<f32>>,
    /// [conv_dim][d_conv], tap d_conv-1 is the current token
    pub conv_w: Vec<f32>,
    /// [conv_dim]
    pub conv_b: Option<Vec<f32>>,
    /// [n_heads]
    pub dt_bias: Vec<f32>,
    /// [n_heads], `A = -exp(A_log)`
    pub a: Vec<f32>,
    /// [n_heads]
    pub d: Vec<f32>,
    /// [d_inner], the gated RMSNorm's weight (groups of d_inner/n_groups)
    pub norm: Vec<f32>,
    /// [d_inner] -> [d_model]
    pub out_proj: Mat,
    pub out_bias: Option<Vec<f32>>,
    /// RoPE inverse frequencies over d_state (cheems), empty when B and C are not rotated.
    pub rope_inv_freq: Vec<f32>,
}

/// Fixed-size state of one SSD layer.
#[derive(Debug, Clone)]
pub struct SsdState {
    /// [conv_dim][d_conv - 1], oldest first
    pub conv: Vec<f32>,
    /// [n_heads][head_dim][d_state]
    pub ssm: Vec<f32>,
}

impl SsdState {
    pub fn new(c: &SsdConfig) -> Self {
        SsdState {
            conv: vec![0.0; c.conv_dim() * (c.d_conv - 1)],
            ssm: vec![0.0; c.n_heads * c.head_dim * c.d_state],
        }
    }

    pub fn clear(&mut self) {
        self.conv.fill(0.0);
        self.ssm.fill(0.0);
    }
}

/// Per-token scratch of SSD layers.
#[derive(Debug, Clone)]
pub struct SsdScratch {
    pub zxbcdt: Vec<f32>,
    pub xbc: Vec<f32>,
    pub y: Vec<f32>,
}

impl SsdScratch {
    pub fn new(c: &SsdConfig) -> Self {
        SsdScratch {
            zxbcdt: vec![0.0; c.in_proj_rows()],
            xbc: vec![0.0; c.conv_dim()],
            y: vec![0.0; c.d_inner],
        }
    }
}

impl Ssd {
    pub fn bind(b: &Binder<'_>, layer: usize, c: &Config) -> Result<Self> {
        let s = c
            .ssd
            .ok_or_else(|| anyhow::anyhow!("SSD layer without SSD hyper-parameters"))?;
        let n = |x: &str| format!("blk.{layer}.{x}");
        let rope_inv_freq = match (&c.rope, s.rope) {
            (Some(r), true) => (0..s.d_state / 2)
                .map(|i| 1.0 / r.theta.powf((2 * i) as f32 / s.d_state as f32))
                .collect(),
            _ => Vec::new(),
        };
        Ok(Ssd {
            cfg: s,
            in_proj: b.mat(&n("ssm_in.weight"), c.d_model, s.in_proj_rows())?,
            in_bias: b.opt_vector(&n("ssm_in.bias"), s.in_proj_rows())?,
            conv_w: b.vector(&n("ssm_conv1d.weight"), s.conv_dim() * s.d_conv)?,
            conv_b: b.opt_vector(&n("ssm_conv1d.bias"), s.conv_dim())?,
            dt_bias: b.vector(&n("ssm_dt.bias"), s.n_heads)?,
            a: b.vector(&n("ssm_a"), s.n_heads)?,
            d: b.vector(&n("ssm_d"), s.n_heads)?,
            norm: b.vector(&n("ssm_norm.weight"), s.d_inner)?,
            out_proj: b.mat(&n("ssm_out.weight"), s.d_inner, c.d_model)?,
            out_bias: b.opt_vector(&n("ssm_out.bias"), c.d_model)?,
            rope_inv_freq,
        })
    }

    /// Rotates each group's `d_state` vector of B or C (split halves) for position `pos`.
    fn rope(&self, bc: &mut [f32], pos: usize) {
        let half = self.cfg.d_state / 2;
        for g in bc.chunks_exact_mut(self.cfg.d_state) {
            for (i, &f) in self.rope_inv_freq.iter().enumerate() {
                let (sin, cos) = (pos as f32 * f).sin_cos();
                let (x0, x1) = (g[i], g[i + half]);
                g[i] = x0 * cos - x1 * sin;
                g[i + half] = x0 * sin + x1 * cos;
            }
        }
    }

    /// One token at position `pos`.
    pub fn step(
        &self,
        cx: &mut Ctx<'_>,
        u: &[f32],
        pos: usize,
        st: &mut SsdState,
        s: &mut SsdScratch,
        out: &mut [f32],
    ) {
        let c = &self.cfg;
        let (di, cd, w, n, p) = (c.d_inner, c.conv_dim(), c.d_conv, c.d_state, c.head_dim);
        cx.matvec(&self.in_proj, u, &mut s.zxbcdt);
        add_bias(&mut s.zxbcdt, &self.in_bias);
        let (z, rest) = s.zxbcdt.split_at(di);
        let (xbc_in, dt_raw) = rest.split_at(cd);
        // Causal depthwise conv over the last d_conv inputs, then SiLU; shift the conv state.
        for ch in 0..cd {
            let taps = &self.conv_w[ch * w..(ch + 1) * w];
            let hist = &mut st.conv[ch * (w - 1)..(ch + 1) * (w - 1)];
            let mut acc = self.conv_b.as_ref().map_or(0.0, |b| b[ch]);
            for k in 0..w - 1 {
                acc += taps[k] * hist[k];
            }
            acc += taps[w - 1] * xbc_in[ch];
            if w > 1 {
                hist.copy_within(1.., 0);
                hist[w - 2] = xbc_in[ch];
            }
            s.xbc[ch] = silu(acc);
        }
        let (x, bc) = s.xbc.split_at_mut(di);
        let (b, cc) = bc.split_at_mut(c.n_groups * n);
        if !self.rope_inv_freq.is_empty() {
            self.rope(b, pos);
            self.rope(cc, pos);
        }
        let heads_per_group = c.n_heads / c.n_groups;
        for h in 0..c.n_heads {
            let g = h / heads_per_group;
            let dt = crate::blocks::dma::softplus(dt_raw[h] + self.dt_bias[h]);
            let da = (dt * self.a[h]).exp();
            let (bg, cg) = (&b[g * n..(g + 1) * n], &cc[g * n..(g + 1) * n]);
            for i in 0..p {
                let xi = x[h * p + i];
                let row = &mut st.ssm[(h * p + i) * n..(h * p + i + 1) * n];
                let dtx = dt * xi;
                let mut y = 0.0;
                for k in 0..n {
                    row[k] = row[k] * da + dtx * bg[k];
                    y += row[k] * cg[k];
                }
                s.y[h * p + i] = y + self.d[h] * xi;
            }
        }
        // Gate, then RMSNorm per group of d_inner / n_groups channels.
        for (y, &zv) in s.y.iter_mut().zip(z) {
            *y *= silu(zv);
        }
        let gs = di / c.n_groups;
        for (yg, wg) in s.y.chunks_exact_mut(gs).zip(self.norm.chunks_exact(gs)) {
            crate::blocks::norm::rmsnorm_inplace(yg, wg, c.norm_eps);
        }
        cx.matvec(&self.out_proj, &s.y, out);
        add_bias(out, &self.out_bias);
    }
}
