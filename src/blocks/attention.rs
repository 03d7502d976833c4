//! Causal grouped-query attention with a KV cache (llama). Query head `h` reads KV head
//! `h / (n_heads / n_kv_heads)`.

use anyhow::{bail, Result};
use cheems_kernels::vecops;

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

    /// Rows `..n` of `s.q, s.k, s.v` from the `n` rows of `xs`.
    pub fn project(&self, cx: &mut Ctx<'_>, xs: &[f32], n: usize, s: &mut AttnScratch) {
        let (qd, kvd) = (self.q.rows, self.k.rows);
        cx.matmul(&self.q, xs, &mut s.q[..n * qd]);
        cx.matmul(&self.k, xs, &mut s.k[..n * kvd]);
        cx.matmul(&self.v, xs, &mut s.v[..n * kvd]);
        for t in 0..n {
            add_bias(&mut s.q[t * qd..(t + 1) * qd], &self.q_bias);
            add_bias(&mut s.k[t * kvd..(t + 1) * kvd], &self.k_bias);
            add_bias(&mut s.v[t * kvd..(t + 1) * kvd], &self.v_bias);
        }
    }

    /// `out[t] = W_o · s.out[t]` for `n` rows.
    pub fn output(&self, cx: &mut Ctx<'_>, s: &AttnScratch, n: usize, out: &mut [f32]) {
        let (qd, h) = (self.o.cols, self.o.rows);
        cx.matmul(&self.o, &s.out[..n * qd], &mut out[..n * h]);
        for t in 0..n {
            add_bias(&mut out[t * h..(t + 1) * h], &self.o_bias);
        }
    }
}

/// Softmax attention of one query head over `n` keys and values stored as rows `stride` floats
/// apart (`keys[j·stride..][..d]`, `values[j·stride..][..d]`, `d = q.len()`):
/// `out = Σ_j softmax_j(q·k_j·scale + bias_j) v_j` (no bias: zero), with `att` as scratch for
/// the weights.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    n: usize,
    keys: &[f32],
    values: &[f32],
    stride: usize,
    bias: Option<&[f32]>,
    scale: f32,
    att: &mut [f32],
    out: &mut [f32],
) {
    let att = &mut att[..n];
    vecops::dot_rows(q, keys, stride, scale, att);
    if let Some(bias) = bias {
        att.iter_mut().zip(&bias[..n]).for_each(|(a, b)| *a += b);
    }
    vecops::softmax(att);
    vecops::sum_rows(att, values, stride, out);
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

/// Scratch of attention layers for a batch of up to `batch` tokens (sized once).
#[derive(Debug, Clone)]
pub struct AttnScratch {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub out: Vec<f32>,
    /// Per query head: its attention weights over the cache and its outputs for the batch
    /// (`[n_heads][max_keys + 1 + batch·head_dim]`), so heads run on different threads.
    pub att: Vec<f32>,
    /// Tokens of a batch.
    pub batch: usize,
}

impl AttnScratch {
    pub fn new(c: &Config, max_keys: usize, batch: usize) -> Self {
        let (q, kv, b) = (
            c.n_heads * c.head_dim,
            c.n_kv_heads * c.head_dim,
            batch.max(1),
        );
        AttnScratch {
            q: vec![0.0; b * q],
            k: vec![0.0; b * kv],
            v: vec![0.0; b * kv],
            out: vec![0.0; b * q],
            att: vec![0.0; c.n_heads * (max_keys + 1 + b * c.head_dim)],
            batch: b,
        }
    }
}

pub fn add_bias(x: &mut [f32], b: &Option<Vec<f32>>) {
    if let Some(b) = b {
        x.iter_mut().zip(b).for_each(|(x, b)| *x += b);
    }
}

impl Attention {
    pub fn bind(b: &Binder<'_>, layer: usize, c: &Config) -> Result<Self> {
        Ok(Attention {
            proj: Qkvo::bind(b, layer, c)?,
        })
    }

    /// `n` tokens at positions `pos..pos + n` (rows of `xs` and `out`): each appends its key and
    /// value and attends over the cache so far.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        cx: &mut Ctx<'_>,
        c: &Config,
        rope: &RopeTable,
        xs: &[f32],
        pos: usize,
        cache: &mut KvCache,
        s: &mut AttnScratch,
        out: &mut [f32],
    ) -> Result<()> {
        let n = xs.len() / c.d_model;
        if cache.len + n > cache.capacity {
            bail!("the context is full ({} tokens)", cache.capacity);
        }
        self.proj.project(cx, xs, n, s);
        let (hd, kvd, qd) = (
            c.head_dim,
            c.n_kv_heads * c.head_dim,
            c.n_heads * c.head_dim,
        );
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        // Every token's key and value into the cache first, then each query head attends for
        // every token of the batch (one task per head; token t sees the cache up to itself).
        let l0 = cache.len;
        for t in 0..n {
            let (q, k) = (
                &mut s.q[t * qd..(t + 1) * qd],
                &mut s.k[t * kvd..(t + 1) * kvd],
            );
            rope.apply(q, pos + t);
            rope.apply(k, pos + t);
            let at = l0 + t;
            cache.k[at * kvd..(at + 1) * kvd].copy_from_slice(k);
            cache.v[at * kvd..(at + 1) * kvd].copy_from_slice(&s.v[t * kvd..(t + 1) * kvd]);
        }
        cache.len += n;
        let (ks, vs) = (&cache.k, &cache.v);
        let per_head = s.att.len() / c.n_heads;
        let keys = per_head - s.batch * hd;
        let qs = &s.q[..n * qd];
        cx.pool.for_chunks_mut(&mut s.att, per_head, &|h, buf| {
            let off = (h / group) * hd;
            let (att, outs) = buf.split_at_mut(keys);
            for t in 0..n {
                attend(
                    &qs[t * qd + h * hd..t * qd + (h + 1) * hd],
                    l0 + t + 1,
                    &ks[off..],
                    &vs[off..],
                    kvd,
                    None,
                    scale,
                    att,
                    &mut outs[t * hd..(t + 1) * hd],
                );
            }
        });
        for (h, buf) in s.att.chunks_exact(per_head).enumerate() {
            for t in 0..n {
                s.out[t * qd + h * hd..t * qd + (h + 1) * hd]
                    .copy_from_slice(&buf[keys + t * hd..keys + (t + 1) * hd]);
            }
        }
        self.proj.output(cx, s, n, out);
        Ok(())
    }
}
