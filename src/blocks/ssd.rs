//! The Mamba-2 SSD mixer (`architectures.md` eqs. 26-33), with RoPE on B and C for `cheems`
//! (`cheems.md` §4). State per layer is fixed: the last `d_conv - 1` conv inputs and an f32
//! `[n_heads][head_dim][d_state]` SSM state.

use anyhow::Result;
use cheems_kernels::{ssm, vecops};

use super::attention::add_bias;
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
    /// `conv_w` transposed, [d_conv][conv_dim] (the conv runs along the channels)
    pub conv_wt: Vec<f32>,
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
    /// [n_groups][chunks of batch][CHUNK][CHUNK]: each group's C·Bᵀ block per chunk, shared
    /// by the group's heads (see [`ssm::ssd_cb`]).
    pub cb: Vec<f32>,
}

/// Tokens per chunk of the chunked scan (see [`ssm::CHUNK`]).
pub const CHUNK: usize = ssm::CHUNK;

/// Floats of one head's region of [`SsdScratch::work`]: the scan's work space, then the head's
/// outputs `[batch][P]`.
fn head_work_len(p: usize, n: usize, batch: usize) -> usize {
    ssm::scan_work_len(p, n) + batch * p
}

impl SsdScratch {
    pub fn new(c: &SsdConfig, batch: usize) -> Self {
        let b = batch.max(1);
        SsdScratch {
            zxbcdt: vec![0.0; b * c.in_proj_rows()],
            xbc: vec![0.0; b * c.conv_dim()],
            y: vec![0.0; b * c.d_inner],
            dt: vec![0.0; b * c.n_heads],
            da: vec![0.0; b * c.n_heads],
            work: vec![0.0; c.n_heads * head_work_len(c.head_dim, c.d_state, b)],
            work_len: head_work_len(c.head_dim, c.d_state, b),
            cb: vec![0.0; c.n_groups * ssm::cb_len(b)],
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
        let conv_w = b.vector(&n("ssm_conv1d.weight"), s.conv_dim() * s.d_conv)?;
        let mut conv_wt = vec![0.0; conv_w.len()];
        for (ch, taps) in conv_w.chunks_exact(s.d_conv).enumerate() {
            for (k, &v) in taps.iter().enumerate() {
                conv_wt[k * s.conv_dim() + ch] = v;
            }
        }
        Ok(Ssd {
            cfg: s,
            in_proj: b.mat(&n("ssm_in.weight"), c.d_model, s.in_proj_rows())?,
            in_bias: b.opt_vector(&n("ssm_in.bias"), s.in_proj_rows())?,
            conv_w,
            conv_wt,
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
        let _ = xbc_in;
        self.conv(st, zxbcdt, c.in_proj_rows(), di, 1, &mut s.xbc[..cd]);
        let (x, bc) = s.xbc[..cd].split_at_mut(di);
        let (b, cc) = bc.split_at_mut(c.n_groups * n);
        if !self.rope_inv_freq.is_empty() {
            self.rope(b, pos);
            self.rope(cc, pos);
        }
        let y_row = &mut s.y[..di];
        let heads_per_group = c.n_heads / c.n_groups;
        let nh = c.n_heads;
        for (h, &raw) in dt_raw.iter().enumerate().take(nh) {
            let dt = crate::blocks::dma::softplus(raw + self.dt_bias[h]);
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
                for (k, (hs, y)) in states
                    .chunks_exact_mut(p * n)
                    .zip(ys.chunks_exact_mut(p))
                    .enumerate()
                {
                    let h = t * per + k;
                    let g = h / heads_per_group;
                    let step = ssm::Step {
                        x: &x[h * p..(h + 1) * p],
                        b: &b[g * n..(g + 1) * n],
                        c: &cc[g * n..(g + 1) * n],
                        dt: dts[h],
                        decay: das[h],
                        d: self.d[h],
                    };
                    ssm::ssd_step(hs, &step, y);
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
        vecops::silu_mul(y, z);
        let gs = c.d_inner / c.n_groups;
        for (yg, wg) in y.chunks_exact_mut(gs).zip(self.norm.chunks_exact(gs)) {
            crate::blocks::norm::rmsnorm_inplace(yg, wg, c.norm_eps);
        }
    }

    /// The causal conv and SiLU of `t_len` tokens into `out` (`[t_len][conv_dim]`), advancing
    /// the conv state; token `t`'s input is `zx[t * rows + off..][..conv_dim]`. Per token, the
    /// taps run along the channels (vector loops), each channel summed in tap order.
    fn conv(
        &self,
        st: &mut SsdState,
        zx: &[f32],
        rows: usize,
        off: usize,
        t_len: usize,
        out: &mut [f32],
    ) {
        let (w, cd) = (self.cfg.d_conv, self.cfg.conv_dim());
        let h = w - 1;
        for t in 0..t_len {
            let o = &mut out[t * cd..(t + 1) * cd];
            match &self.conv_b {
                Some(b) => o.copy_from_slice(b),
                None => o.fill(0.0),
            }
            // Tap k reads position t + k of [history (w - 1) | inputs].
            for k in 0..w {
                let taps = &self.conv_wt[k * cd..(k + 1) * cd];
                let pos = t + k;
                if pos >= h {
                    let src = &zx[(pos - h) * rows + off..(pos - h) * rows + off + cd];
                    for ((o, &tp), &x) in o.iter_mut().zip(taps).zip(src) {
                        *o += tp * x;
                    }
                } else {
                    for (ch, (o, &tp)) in o.iter_mut().zip(taps).enumerate() {
                        *o += tp * st.conv[ch * h + pos];
                    }
                }
            }
            vecops::silu_inplace(o);
        }
        // The new history: the last w - 1 positions (reading only later positions of the old).
        for ch in 0..cd {
            for k in 0..h {
                let pos = t_len + k;
                st.conv[ch * h + k] = if pos >= h {
                    zx[(pos - h) * rows + off + ch]
                } else {
                    st.conv[ch * h + pos]
                };
            }
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
            add_bias(&mut s.zxbcdt[t * rows..(t + 1) * rows], &self.in_bias);
        }
        self.conv(st, &s.zxbcdt, rows, di, t_len, &mut s.xbc[..t_len * cd]);
        for t in 0..t_len {
            let zx = &s.zxbcdt[t * rows..(t + 1) * rows];
            let xbc = &mut s.xbc[t * cd..(t + 1) * cd];
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
        // C·Bᵀ of each group and chunk, once for the group's heads: one task per block.
        let ng = c.n_groups;
        let gcb = ssm::cb_len(t_len);
        let nch = gcb / ssm::CB_LEN;
        let xbc = &s.xbc;
        cx.pool
            .for_chunks_mut(&mut s.cb[..ng * gcb], ssm::CB_LEN, &|i, out| {
                let (g, ch) = (i / nch, i % nch);
                let t0 = ch * CHUNK * cd;
                let q = CHUNK.min(t_len - ch * CHUNK);
                let b = &xbc[t0 + di + g * n..];
                let cc = &xbc[t0 + di + ng * n + g * n..];
                ssm::ssd_cb(b, cc, cd, n, q, out);
            });
        // The scan: heads are independent, one task per head, each over every chunk.
        let heads_per_group = nh / c.n_groups;
        let wl = s.work_len;
        let sw = ssm::scan_work_len(p, n);
        let (dts, das, cbs) = (&s.dt, &s.da, &s.cb);
        let d_skip = &self.d;
        cx.pool.for_chunks_mut2(
            &mut s.work[..nh * wl],
            wl,
            &mut st.ssm[..nh * p * n],
            p * n,
            &|h, buf, state| {
                let (work, y) = buf.split_at_mut(sw);
                let g = h / heads_per_group;
                let seq = ssm::Seq {
                    x: &xbc[h * p..],
                    b: &xbc[di + g * n..],
                    c: &xbc[di + c.n_groups * n + g * n..],
                    stride: cd,
                    dt: &dts[h..],
                    dta: &das[h..],
                    dt_stride: nh,
                    d: d_skip[h],
                    p,
                    n,
                    len: t_len,
                };
                let cb = &cbs[g * gcb..(g + 1) * gcb];
                ssm::ssd_scan(state, &seq, cb, work, &mut y[..t_len * p]);
            },
        );
        for (h, wk) in s.work.chunks_exact(wl).enumerate() {
            for t in 0..t_len {
                s.y[t * di + h * p..t * di + (h + 1) * p]
                    .copy_from_slice(&wk[sw + t * p..sw + (t + 1) * p]);
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
