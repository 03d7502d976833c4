//! The Mamba-2 SSD mixer (`architectures.md` eqs. 26-33), with RoPE on B and C for `cheems`
//! (`cheems.md` §4). State per layer is fixed: the last `d_conv - 1` conv inputs and an f32
//! `[n_heads][head_dim][d_state]` SSM state.

use anyhow::Result;
use cheems_kernels::{ssm, vecops};

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

/// Scratch of SSD layers for up to `batch` tokens at a time (sized once).
#[derive(Debug, Clone)]
pub struct SsdScratch {
    /// [batch][in_proj_rows]
    pub zxbcdt: Vec<f32>,
    /// [batch][conv_dim], after conv and SiLU (B and C rotated)
    pub xbc: Vec<f32>,
    /// [batch][d_inner]
    pub y: Vec<f32>,
    /// [batch][n_heads]: Δ and Δ·A of each token
    pub dt: Vec<f32>,
    pub da: Vec<f32>,
    /// [n_heads][head work]: each head's scan runs on its own thread with its own region
    /// (see [`HeadWork`]).
    pub work: Vec<f32>,
    /// Floats of one head's region.
    pub work_len: usize,
}

/// One head's region of [`SsdScratch::work`]: its state `[P][N]` (copied in and out), the
/// chunk's `(C_l · B_s)·decay·Δ_s` `[CHUNK][CHUNK]`, the cumulative Δ·A `[CHUNK]` and its
/// exponentials `[CHUNK]`, the per-token decay weights `[CHUNK]`, and the head's outputs
/// `[batch][P]`.
struct HeadWork<'a> {
    state: &'a mut [f32],
    cb: &'a mut [f32],
    acum: &'a mut [f32],
    eacum: &'a mut [f32],
    w: &'a mut [f32],
    y: &'a mut [f32],
}

impl<'a> HeadWork<'a> {
    fn len(p: usize, n: usize, batch: usize) -> usize {
        p * n + CHUNK * CHUNK + 3 * CHUNK + batch * p
    }

    fn split(buf: &'a mut [f32], p: usize, n: usize) -> Self {
        let (state, r) = buf.split_at_mut(p * n);
        let (cb, r) = r.split_at_mut(CHUNK * CHUNK);
        let (acum, r) = r.split_at_mut(CHUNK);
        let (eacum, r) = r.split_at_mut(CHUNK);
        let (w, y) = r.split_at_mut(CHUNK);
        HeadWork {
            state,
            cb,
            acum,
            eacum,
            w,
            y,
        }
    }
}

/// Tokens per chunk of the chunked scan. The result does not depend on it (the chunked form is
/// exact); it trades the quadratic intra-chunk work against the state passes.
pub const CHUNK: usize = 32;

impl SsdScratch {
    pub fn new(c: &SsdConfig, batch: usize) -> Self {
        let b = batch.max(1);
        SsdScratch {
            zxbcdt: vec![0.0; b * c.in_proj_rows()],
            xbc: vec![0.0; b * c.conv_dim()],
            y: vec![0.0; b * c.d_inner],
            dt: vec![0.0; b * c.n_heads],
            da: vec![0.0; b * c.n_heads],
            work: vec![0.0; c.n_heads * HeadWork::len(c.head_dim, c.d_state, b)],
            work_len: HeadWork::len(c.head_dim, c.d_state, b),
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
        let (di, cd, n, p) = (c.d_inner, c.conv_dim(), c.d_state, c.head_dim);
        let zxbcdt = &mut s.zxbcdt[..c.in_proj_rows()];
        cx.matvec(&self.in_proj, u, zxbcdt);
        add_bias(zxbcdt, &self.in_bias);
        let (z, rest) = zxbcdt.split_at(di);
        let (xbc_in, dt_raw) = rest.split_at(cd);
        // Causal depthwise conv over the last d_conv inputs, then SiLU; shift the conv state.
        self.conv_step(st, xbc_in, &mut s.xbc[..cd]);
        let (x, bc) = s.xbc[..cd].split_at_mut(di);
        let (b, cc) = bc.split_at_mut(c.n_groups * n);
        if !self.rope_inv_freq.is_empty() {
            self.rope(b, pos);
            self.rope(cc, pos);
        }
        let y_row = &mut s.y[..di];
        let heads_per_group = c.n_heads / c.n_groups;
        let nh = c.n_heads;
        for h in 0..nh {
            let dt = crate::blocks::dma::softplus(dt_raw[h] + self.dt_bias[h]);
            s.dt[h] = dt;
            s.da[h] = (dt * self.a[h]).exp();
        }
        // Heads are independent: a few heads per task, each head's state read and written once.
        let per = nh.div_ceil(4 * cx.pool.threads()).max(1);
        let (dts, das, x, b, cc) = (&s.dt[..nh], &s.da[..nh], &*x, &*b, &*cc);
        cx.pool.for_chunks_mut2(
            &mut st.ssm[..nh * p * n],
            per * p * n,
            y_row,
            per * p,
            &|t, states, ys| {
                for (k, (hs, y)) in states.chunks_exact_mut(p * n).zip(ys.chunks_exact_mut(p)).enumerate() {
                    let h = t * per + k;
                    let g = h / heads_per_group;
                    ssm::ssd_step(
                        hs,
                        &x[h * p..(h + 1) * p],
                        &b[g * n..(g + 1) * n],
                        &cc[g * n..(g + 1) * n],
                        dts[h],
                        das[h],
                        self.d[h],
                        y,
                    );
                }
            },
        );
        self.gate_norm_out(cx, y_row, z, out);
    }

    /// `out = W_out(RMSNorm_groups(y ⊙ silu(z)))`.
    fn gate_norm_out(&self, cx: &mut Ctx<'_>, y: &mut [f32], z: &[f32], out: &mut [f32]) {
        self.gate_norm(y, z);
        cx.matvec(&self.out_proj, y, out);
        add_bias(out, &self.out_bias);
    }

    /// `y = RMSNorm_groups(y ⊙ silu(z))` in place.
    fn gate_norm(&self, y: &mut [f32], z: &[f32]) {
        let c = &self.cfg;
        for (y, &zv) in y.iter_mut().zip(z) {
            *y *= silu(zv);
        }
        let gs = c.d_inner / c.n_groups;
        for (yg, wg) in y.chunks_exact_mut(gs).zip(self.norm.chunks_exact(gs)) {
            crate::blocks::norm::rmsnorm_inplace(yg, wg, c.norm_eps);
        }
    }

    /// The causal conv and SiLU of one token's `xbc_in` into `out`, advancing the conv state.
    fn conv_step(&self, st: &mut SsdState, xbc_in: &[f32], out: &mut [f32]) {
        let w = self.cfg.d_conv;
        for (ch, o) in out.iter_mut().enumerate() {
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
            *o = silu(acc);
        }
    }

    /// Several tokens at positions `pos..pos + n` (rows of `u`, `out`): the chunked form of the
    /// scan (`architectures.md` eqs. 34-38), equal to stepping token by token.
    pub fn prefill(
        &self,
        cx: &mut Ctx<'_>,
        u: &[f32],
        pos: usize,
        st: &mut SsdState,
        s: &mut SsdScratch,
        out: &mut [f32],
    ) {
        let c = &self.cfg;
        let (di, cd, n, p, nh) = (c.d_inner, c.conv_dim(), c.d_state, c.head_dim, c.n_heads);
        let rows = c.in_proj_rows();
        let dm = self.in_proj.cols;
        let t_len = u.len() / dm;
        // Projections, conv, RoPE on B and C, Δ, per token.
        cx.matmul(&self.in_proj, u, &mut s.zxbcdt[..t_len * rows]);
        for t in 0..t_len {
            let zx = &mut s.zxbcdt[t * rows..(t + 1) * rows];
            add_bias(zx, &self.in_bias);
            let xbc = &mut s.xbc[t * cd..(t + 1) * cd];
            self.conv_step(st, &zx[di..di + cd], xbc);
            if !self.rope_inv_freq.is_empty() {
                let (b, cc) = xbc[di..].split_at_mut(c.n_groups * n);
                self.rope(b, pos + t);
                self.rope(cc, pos + t);
            }
            for h in 0..nh {
                let dt = crate::blocks::dma::softplus(zx[di + cd + h] + self.dt_bias[h]);
                s.dt[t * nh + h] = dt;
                s.da[t * nh + h] = dt * self.a[h];
            }
        }
        // The scan: heads are independent, one task per head, each over every chunk.
        let heads_per_group = nh / c.n_groups;
        let wl = s.work_len;
        for (h, wk) in s.work.chunks_exact_mut(wl).enumerate() {
            wk[..p * n].copy_from_slice(&st.ssm[h * p * n..(h + 1) * p * n]);
        }
        let (xbc, dts, das) = (&s.xbc, &s.dt, &s.da);
        let d_skip = &self.d;
        cx.pool.for_chunks_mut(&mut s.work, wl, &|h, buf| {
            let wk = HeadWork::split(buf, p, n);
            let g = h / heads_per_group;
            let boff = di + g * n;
            let coff = di + c.n_groups * n + g * n;
            let x_at = |t: usize| &xbc[t * cd + h * p..t * cd + (h + 1) * p];
            let b_at = |t: usize| &xbc[t * cd + boff..t * cd + boff + n];
            let c_at = |t: usize| &xbc[t * cd + coff..t * cd + coff + n];
            let mut c0 = 0;
            while c0 < t_len {
                let q = CHUNK.min(t_len - c0);
                let mut acc = 0.0;
                for l in 0..q {
                    acc += das[(c0 + l) * nh + h];
                    wk.acum[l] = acc;
                    wk.eacum[l] = acc.exp();
                }
                let total = wk.acum[q - 1];
                // C_l · B_s for s <= l, decayed and times Δ_s.
                for l in 0..q {
                    let cl = c_at(c0 + l);
                    for j in 0..=l {
                        wk.cb[l * CHUNK + j] = vecops::dot(cl, b_at(c0 + j))
                            * (wk.acum[l] - wk.acum[j]).exp()
                            * dts[(c0 + j) * nh + h];
                    }
                }
                for l in 0..q {
                    let tl = c0 + l;
                    let y = &mut wk.y[tl * p..(tl + 1) * p];
                    // Off-diagonal: the state entering the chunk, decayed to l.
                    let cl = c_at(tl);
                    for (i, yi) in y.iter_mut().enumerate() {
                        *yi = wk.eacum[l] * vecops::dot(&wk.state[i * n..(i + 1) * n], cl);
                    }
                    // Diagonal: tokens of this chunk up to l.
                    for j in 0..=l {
                        vecops::axpy(wk.cb[l * CHUNK + j], x_at(c0 + j), y);
                    }
                    vecops::axpy(d_skip[h], x_at(tl), y);
                }
                // The state leaving the chunk.
                for j in 0..q {
                    wk.w[j] = (total - wk.acum[j]).exp() * dts[(c0 + j) * nh + h];
                }
                let et = total.exp();
                for i in 0..p {
                    let srow = &mut wk.state[i * n..(i + 1) * n];
                    srow.iter_mut().for_each(|v| *v *= et);
                    for j in 0..q {
                        vecops::axpy(wk.w[j] * x_at(c0 + j)[i], b_at(c0 + j), srow);
                    }
                }
                c0 += q;
            }
        });
        for (h, wk) in s.work.chunks_exact(wl).enumerate() {
            st.ssm[h * p * n..(h + 1) * p * n].copy_from_slice(&wk[..p * n]);
            let y0 = p * n + CHUNK * CHUNK + 3 * CHUNK;
            for t in 0..t_len {
                s.y[t * di + h * p..t * di + (h + 1) * p]
                    .copy_from_slice(&wk[y0 + t * p..y0 + (t + 1) * p]);
            }
        }
        for t in 0..t_len {
            let z = &s.zxbcdt[t * rows..t * rows + di];
            self.gate_norm(&mut s.y[t * di..(t + 1) * di], z);
        }
        cx.matmul(&self.out_proj, &s.y[..t_len * di], &mut out[..t_len * dm]);
        for o in out[..t_len * dm].chunks_exact_mut(dm) {
            add_bias(o, &self.out_bias);
        }
    }
}
