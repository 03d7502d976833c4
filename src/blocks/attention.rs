//! Causal grouped-query attention with a KV cache (llama). Query head `h` reads KV head
//! `h / (n_heads / n_kv_heads)`.

use anyhow::{bail, Result};

use super::rope::RopeTable;
use crate::config::Config;
use crate::weights::{Binder, Mat};
use crate::Ctx;

/// The Q, K, V and output projections (with optional biases) shared by attention and DMA.
#[derive(Debug)]
pub struct Qkvo {
    /// [d_model] -> [n_heads·head_dim]
    pub q: Mat,
    /// [d_model] -> [n_kv_heads·head_dim]
    pub k: Mat,
    /// [d_model] -> [n_kv_heads·head_dim]
    pub v: Mat,
    /// [n_heads·head_dim] -> [d_model]
    pub o: Mat,
    pub q_bias: Option<Vec<f32>>,
    pub k_bias: Option<Vec<f32>>,
    pub v_bias: Option<Vec<f32>>,
    pub o_bias: Option<Vec<f32>>,
}

impl Qkvo {
    pub fn bind(b: &Binder<'_>, layer: usize, c: &Config) -> Result<Self> {
        let n = |s: &str| format!("blk.{layer}.{s}");
        let (qd, kvd) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        Ok(Qkvo {
            q: b.mat(&n("attn_q.weight"), c.d_model, qd)?,
            k: b.mat(&n("attn_k.weight"), c.d_model, kvd)?,
            v: b.mat(&n("attn_v.weight"), c.d_model, kvd)?,
            o: b.mat(&n("attn_output.weight"), qd, c.d_model)?,
            q_bias: b.opt_vector(&n("attn_q.bias"), qd)?,
            k_bias: b.opt_vector(&n("attn_k.bias"), kvd)?,
            v_bias: b.opt_vector(&n("attn_v.bias"), kvd)?,
            o_bias: b.opt_vector(&n("attn_output.bias"), c.d_model)?,
        })
    }

    /// `s.q, s.k, s.v` of input `x`.
    pub fn project(&self, cx: &mut Ctx<'_>, x: &[f32], s: &mut AttnScratch) {
        cx.matvec(&self.q, x, &mut s.q);
        cx.matvec(&self.k, x, &mut s.k);
        cx.matvec(&self.v, x, &mut s.v);
        add_bias(&mut s.q, &self.q_bias);
        add_bias(&mut s.k, &self.k_bias);
        add_bias(&mut s.v, &self.v_bias);
    }

    /// `out = W_o · s.out`.
    pub fn output(&self, cx: &mut Ctx<'_>, s: &AttnScratch, out: &mut [f32]) {
        cx.matvec(&self.o, &s.out, out);
        add_bias(out, &self.o_bias);
    }
}

/// Softmax attention of one query head over `n` keys:
/// `out = Σ_j softmax_j(q·k_j·scale + bias_j) v_j`, with `att` as scratch for the weights.
#[allow(clippy::too_many_arguments)]
pub fn attend<'a>(
    q: &[f32],
    n: usize,
    key: impl Fn(usize) -> &'a [f32],
    value: impl Fn(usize) -> &'a [f32],
    bias: impl Fn(usize) -> f32,
    scale: f32,
    att: &mut [f32],
    out: &mut [f32],
) {
    let att = &mut att[..n];
    for (j, a) in att.iter_mut().enumerate() {
        *a = q.iter().zip(key(j)).map(|(a, b)| a * b).sum::<f32>() * scale + bias(j);
    }
    softmax(att);
    out.fill(0.0);
    for (j, &a) in att.iter().enumerate() {
        out.iter_mut().zip(value(j)).for_each(|(o, v)| *o += a * v);
    }
}

/// Plain causal grouped-query attention (llama).
#[derive(Debug)]
pub struct Attention {
    pub proj: Qkvo,
}

/// Keys (after RoPE) and values of every position so far, `[capacity][n_kv_heads·head_dim]`.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub len: usize,
    pub capacity: usize,
}

impl KvCache {
    pub fn new(capacity: usize, kv_dim: usize) -> Self {
        KvCache {
            k: vec![0.0; capacity * kv_dim],
            v: vec![0.0; capacity * kv_dim],
            len: 0,
            capacity,
        }
    }
}

/// Per-token scratch of attention layers.
#[derive(Debug, Clone)]
pub struct AttnScratch {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub out: Vec<f32>,
    /// Attention weights of one head over the cache.
    pub att: Vec<f32>,
}

impl AttnScratch {
    pub fn new(c: &Config, max_keys: usize) -> Self {
        let (q, kv) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        AttnScratch {
            q: vec![0.0; q],
            k: vec![0.0; kv],
            v: vec![0.0; kv],
            out: vec![0.0; q],
            att: vec![0.0; max_keys + 1],
        }
    }
}

pub fn add_bias(x: &mut [f32], b: &Option<Vec<f32>>) {
    if let Some(b) = b {
        x.iter_mut().zip(b).for_each(|(x, b)| *x += b);
    }
}

/// Softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

impl Attention {
    pub fn bind(b: &Binder<'_>, layer: usize, c: &Config) -> Result<Self> {
        Ok(Attention {
            proj: Qkvo::bind(b, layer, c)?,
        })
    }

    /// One token at position `pos`: appends its key and value, attends over the cache.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        cx: &mut Ctx<'_>,
        c: &Config,
        rope: &RopeTable,
        x: &[f32],
        pos: usize,
        cache: &mut KvCache,
        s: &mut AttnScratch,
        out: &mut [f32],
    ) -> Result<()> {
        if cache.len >= cache.capacity {
            bail!("the context is full ({} tokens)", cache.capacity);
        }
        self.proj.project(cx, x, s);
        rope.apply(&mut s.q, pos);
        rope.apply(&mut s.k, pos);
        let kvd = s.k.len();
        let t = cache.len;
        cache.k[t * kvd..(t + 1) * kvd].copy_from_slice(&s.k);
        cache.v[t * kvd..(t + 1) * kvd].copy_from_slice(&s.v);
        cache.len += 1;
        let hd = c.head_dim;
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let (ks, vs) = (&cache.k, &cache.v);
        for h in 0..c.n_heads {
            let off = (h / group) * hd;
            attend(
                &s.q[h * hd..(h + 1) * hd],
                cache.len,
                |j| &ks[j * kvd + off..j * kvd + off + hd],
                |j| &vs[j * kvd + off..j * kvd + off + hd],
                |_| 0.0,
                scale,
                &mut s.att,
                &mut s.out[h * hd..(h + 1) * hd],
            );
        }
        self.proj.output(cx, s, out);
        Ok(())
    }
}
