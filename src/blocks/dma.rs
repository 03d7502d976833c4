//! Dynamic Mask Attention (Doge) with its exact bounded KV cache.
//!
//! Each key j carries a score per KV head, `s_j = exp(A · softplus(W_dt v_j + b_dt))`, that
//! depends on its own values only (not on the query), and that is added to the attention logit.
//! Once more than `keep_window` keys are visible, a query attends to the `keep_window` keys of
//! highest score. Because scores never change and the visible set only grows, a key that falls
//! out of the top `keep_window` never returns, so a cache of `keep_window` entries per KV head,
//! evicting the lowest score on each insert, is exact (`architectures.md` §1.7).
//!
//! **Definition of ties** (where the reference is unspecified): scores are computed in f32; among
//! equal lowest scores the oldest key is evicted (the more recent key is kept), and a new key
//! whose score equals the lowest replaces that entry.

use anyhow::Result;

use super::attention::{add_bias, attend, AttnScratch, Qkvo};
use super::norm::rmsnorm_inplace;
use super::rope::RopeTable;
use crate::config::Config;
use crate::weights::{Binder, Mat};
use crate::Ctx;

#[derive(Debug)]
pub struct Dma {
    pub proj: Qkvo,
    /// [head_dim], shared by all query heads
    pub q_norm: Vec<f32>,
    /// [head_dim], shared by all KV heads
    pub k_norm: Vec<f32>,
    /// [n_kv_heads·head_dim] -> [n_kv_heads]: the score projection of all KV heads' values
    pub dt: Mat,
    pub dt_bias: Option<Vec<f32>>,
    /// [n_kv_heads]
    pub a: Vec<f32>,
}

/// The bounded cache of one DMA layer: per KV head at most `keep_window` entries of
/// (key after norm and RoPE, value, score, position).
#[derive(Debug, Clone)]
pub struct DmaCache {
    pub keep_window: usize,
    head_dim: usize,
    /// [n_kv_heads][keep_window][head_dim]
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    /// [n_kv_heads][keep_window]
    pub score: Vec<f32>,
    pub pos: Vec<usize>,
    /// Entries held per KV head.
    pub len: Vec<usize>,
}

impl DmaCache {
    pub fn new(c: &Config) -> Self {
        let (kw, hd, g) = (c.keep_window, c.head_dim, c.n_kv_heads);
        DmaCache {
            keep_window: kw,
            head_dim: hd,
            k: vec![0.0; g * kw * hd],
            v: vec![0.0; g * kw * hd],
            score: vec![0.0; g * kw],
            pos: vec![0; g * kw],
            len: vec![0; g],
        }
    }

    pub fn clear(&mut self) {
        self.len.fill(0);
    }

    /// Values per key.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Offers a key to head `g`'s cache; applies the eviction rule.
    pub fn insert(&mut self, g: usize, k: &[f32], v: &[f32], score: f32, pos: usize) {
        let (kw, hd) = (self.keep_window, self.head_dim);
        let base = g * kw;
        let slot = if self.len[g] < kw {
            self.len[g] += 1;
            self.len[g] - 1
        } else {
            // The lowest score; among equals, the oldest.
            let mut m = 0;
            for i in 1..kw {
                let (si, sm) = (self.score[base + i], self.score[base + m]);
                if si < sm || (si == sm && self.pos[base + i] < self.pos[base + m]) {
                    m = i;
                }
            }
            if score < self.score[base + m] {
                return; // the newcomer itself is the lowest: it is never attended to
            }
            m
        };
        let at = (base + slot) * hd;
        self.k[at..at + hd].copy_from_slice(k);
        self.v[at..at + hd].copy_from_slice(v);
        self.score[base + slot] = score;
        self.pos[base + slot] = pos;
    }
}

/// `log(1 + e^x)` as PyTorch computes it (linear above 20).
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

impl Dma {
    pub fn bind(b: &Binder<'_>, layer: usize, c: &Config) -> Result<Self> {
        let n = |s: &str| format!("blk.{layer}.{s}");
        let (kvd, hd) = (c.n_kv_heads * c.head_dim, c.head_dim);
        Ok(Dma {
            proj: Qkvo::bind(b, layer, c)?,
            q_norm: b.vector(&n("attn_q_norm.weight"), hd)?,
            k_norm: b.vector(&n("attn_k_norm.weight"), hd)?,
            dt: b.mat(&n("attn_dt.weight"), kvd, c.n_kv_heads)?,
            dt_bias: b.opt_vector(&n("attn_dt.bias"), c.n_kv_heads)?,
            a: b.vector(&n("attn_a"), c.n_kv_heads)?,
        })
    }

    /// `n` tokens at positions `pos..pos + n` (rows of `xs` and `out`), one after another:
    /// each is offered to the bounded cache, then attends over it.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        cx: &mut Ctx<'_>,
        c: &Config,
        rope: &RopeTable,
        xs: &[f32],
        pos: usize,
        cache: &mut DmaCache,
        s: &mut AttnScratch,
        out: &mut [f32],
    ) {
        let n = xs.len() / c.d_model;
        self.proj.project(cx, xs, n, s);
        let (hd, eps) = (c.head_dim, c.norm_eps);
        let (kvd, qd, g_n) = (c.n_kv_heads * hd, c.n_heads * hd, c.n_kv_heads);
        s.q[..n * qd]
            .chunks_exact_mut(hd)
            .for_each(|h| rmsnorm_inplace(h, &self.q_norm, eps));
        s.k[..n * kvd]
            .chunks_exact_mut(hd)
            .for_each(|h| rmsnorm_inplace(h, &self.k_norm, eps));
        // Scores of the new keys, one per KV head, from all KV heads' values: [n][n_kv_heads],
        // kept in the attention-weight scratch until each token is inserted.
        let mut dt = [0f32; 64];
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let kw = cache.keep_window;
        for t in 0..n {
            rope.apply(&mut s.q[t * qd..(t + 1) * qd], pos + t);
            rope.apply(&mut s.k[t * kvd..(t + 1) * kvd], pos + t);
            let dt = &mut dt[..g_n];
            cx.matvec(&self.dt, &s.v[t * kvd..(t + 1) * kvd], dt);
            add_bias(dt, &self.dt_bias);
            for (g, &d) in dt.iter().enumerate() {
                let score = (self.a[g] * softplus(d)).exp();
                let (k, v) = (
                    &s.k[t * kvd + g * hd..t * kvd + (g + 1) * hd],
                    &s.v[t * kvd + g * hd..t * kvd + (g + 1) * hd],
                );
                cache.insert(g, k, v, score, pos + t);
            }
            let (ks, vs, sc, lens) = (&cache.k, &cache.v, &cache.score, &cache.len);
            let per_head = s.att.len() / c.n_heads;
            let qs = &s.q[t * qd..(t + 1) * qd];
            cx.pool.for_chunks_mut(&mut s.att, per_head, &|h, buf| {
                let base = (h / group) * kw;
                let (att, out) = buf.split_at_mut(per_head - hd);
                attend(
                    &qs[h * hd..(h + 1) * hd],
                    lens[h / group],
                    &ks[base * hd..(base + kw) * hd],
                    &vs[base * hd..(base + kw) * hd],
                    hd,
                    Some(&sc[base..base + kw]),
                    scale,
                    att,
                    out,
                );
            });
            for (h, buf) in s.att.chunks_exact(per_head).enumerate() {
                s.out[t * qd + h * hd..t * qd + (h + 1) * hd]
                    .copy_from_slice(&buf[per_head - hd..]);
            }
        }
        self.proj.output(cx, s, n, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bounded cache holds exactly the reference's selection: the `keep_window` highest
    /// scores among every key seen so far (ties: the more recent key), after every insert.
    #[test]
    fn bounded_cache_equals_top_k_over_all_keys() {
        let (kw, hd) = (5, 2);
        let mut cache = DmaCache {
            keep_window: kw,
            head_dim: hd,
            k: vec![0.0; kw * hd],
            v: vec![0.0; kw * hd],
            score: vec![0.0; kw],
            pos: vec![0; kw],
            len: vec![0],
        };
        let mut seen: Vec<(f32, usize)> = Vec::new();
        let mut seed = 3u64;
        for pos in 0..200 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // 8 distinct scores: ties are frequent.
            let score = ((seed >> 61) as f32 + 1.0) / 8.0;
            let key = [pos as f32, -(pos as f32)];
            cache.insert(0, &key, &key, score, pos);
            seen.push((score, pos));
            let mut want = seen.clone();
            want.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
            want.truncate(kw);
            let mut want: Vec<usize> = want.iter().map(|w| w.1).collect();
            want.sort_unstable();
            let n = cache.len[0];
            let mut got: Vec<usize> = cache.pos[..n].to_vec();
            got.sort_unstable();
            assert_eq!(got, want, "after position {pos}");
            // Keys and values moved with their entries.
            for j in 0..n {
                assert_eq!(cache.k[j * hd], cache.pos[j] as f32);
            }
        }
    }
}
