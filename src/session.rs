//! A session: one sequence's state (KV caches, DMA caches, SSD states, position) and scratch,
//! sized once when it is opened. Decoding allocates nothing.

use std::sync::Arc;

use anyhow::{bail, Result};
use cheems_kernels::matvec::{row_f32, Activation};

use crate::blocks::attention::{AttnScratch, KvCache};
use crate::blocks::cdmoe::MoeScratch;
use crate::blocks::dma::DmaCache;
use crate::blocks::norm::rmsnorm;
use crate::blocks::ssd::{SsdScratch, SsdState};
use crate::model::{Ffn, Mixer, Model};
use crate::Ctx;

/// How a session is opened.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Positions a plain-attention (llama) KV cache holds; `None`: the model's context length,
    /// capped at 4096.
    pub ctx: Option<usize>,
    /// Threads of the session's private pool (`None`: available cores).
    pub threads: Option<usize>,
}

#[derive(Debug)]
enum State {
    Kv(KvCache),
    Dma(DmaCache),
    Ssd(SsdState),
}

#[derive(Debug)]
struct Scratch {
    x: Vec<f32>,
    xb: Vec<f32>,
    xb2: Vec<f32>,
    h1: Vec<f32>,
    h2: Vec<f32>,
    attn: AttnScratch,
    ssd: Option<SsdScratch>,
    moe: Option<MoeScratch>,
    act: Activation,
    logits: Vec<f32>,
}

pub struct Session {
    model: Arc<Model>,
    pool: rayon::ThreadPool,
    pos: usize,
    states: Vec<State>,
    sc: Scratch,
    /// When enabled, the residual stream after the embedding and after each layer ([L+1][d_model]).
    trace: Option<Vec<f32>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn new(model: Arc<Model>, opts: &SessionOptions) -> Result<Self> {
        let c = &model.config;
        let threads = opts
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build()?;
        let ctx = opts.ctx.unwrap_or(c.context_length.min(4096)).max(1);
        let states = model
            .layers
            .iter()
            .map(|l| match &l.mixer {
                Mixer::Attention(_) => State::Kv(KvCache::new(ctx, c.n_kv_heads * c.head_dim)),
                Mixer::Dma(_) => State::Dma(DmaCache::new(c)),
                Mixer::Ssd(s) => State::Ssd(SsdState::new(&s.cfg)),
            })
            .collect();
        let max_keys = ctx.max(c.keep_window);
        let widest = [
            c.d_model,
            c.d_ff,
            c.n_heads * c.head_dim,
            c.ssd.map_or(0, |s| s.d_inner),
        ]
        .into_iter()
        .max()
        .unwrap_or(c.d_model);
        let sc = Scratch {
            x: vec![0.0; c.d_model],
            xb: vec![0.0; c.d_model],
            xb2: vec![0.0; c.d_model],
            h1: vec![0.0; c.d_ff],
            h2: vec![0.0; c.d_ff],
            attn: AttnScratch::new(c, max_keys),
            ssd: c.ssd.as_ref().map(SsdScratch::new),
            moe: (c.n_experts > 0).then(|| MoeScratch::new(c)),
            act: Activation::with_capacity(widest),
            logits: vec![0.0; c.n_vocab],
        };
        Ok(Session {
            model,
            pool,
            pos: 0,
            states,
            sc,
            trace: None,
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Tokens consumed so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Forgets the sequence.
    pub fn reset(&mut self) {
        self.pos = 0;
        for s in &mut self.states {
            match s {
                State::Kv(kv) => kv.len = 0,
                State::Dma(d) => d.clear(),
                State::Ssd(s) => s.clear(),
            }
        }
    }

    /// Records the residual stream after every layer of each following token.
    pub fn set_trace(&mut self, on: bool) {
        let c = &self.model.config;
        self.trace = on.then(|| vec![0.0; (c.n_layers + 1) * c.d_model]);
    }

    /// The residual stream of the last token: `[L+1][d_model]` (embedding first), if tracing.
    pub fn trace(&self) -> Option<&[f32]> {
        self.trace.as_deref()
    }

    /// Feeds tokens one after another; returns the logits after the last.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        if tokens.is_empty() {
            bail!("empty prompt: nothing to process");
        }
        for &t in tokens {
            self.step(t)?;
        }
        Ok(&self.sc.logits)
    }

    /// Feeds one token; returns the logits that predict the next.
    pub fn decode(&mut self, token: u32) -> Result<&[f32]> {
        self.step(token)?;
        Ok(&self.sc.logits)
    }

    /// The logits after the last token.
    pub fn logits(&self) -> &[f32] {
        &self.sc.logits
    }

    fn step(&mut self, token: u32) -> Result<()> {
        let model = &*self.model;
        let c = &model.config;
        if token as usize >= c.n_vocab {
            bail!(
                "token id {token} is outside the vocabulary (0..{})",
                c.n_vocab
            );
        }
        let map = model.map();
        let pos = self.pos;
        let Scratch {
            x,
            xb,
            xb2,
            h1,
            h2,
            attn,
            ssd,
            moe,
            act,
            logits,
        } = &mut self.sc;
        let mut cx = Ctx {
            map,
            pool: &self.pool,
            act,
        };
        row_f32(&model.embed.get(map), token as usize, x);
        if let Some(t) = &mut self.trace {
            t[..c.d_model].copy_from_slice(x);
        }
        for (l, (layer, state)) in model.layers.iter().zip(self.states.iter_mut()).enumerate() {
            rmsnorm(x, &layer.attn_norm, c.norm_eps, xb);
            match (&layer.mixer, state) {
                (Mixer::Attention(a), State::Kv(kv)) => {
                    let rope = model
                        .rope
                        .as_ref()
                        .ok_or_else(|| anyhow::anyhow!("attention without RoPE"))?;
                    a.step(&mut cx, c, rope, xb, pos, kv, attn, xb2)?;
                }
                (Mixer::Dma(d), State::Dma(cache)) => {
                    let rope = model
                        .rope
                        .as_ref()
                        .ok_or_else(|| anyhow::anyhow!("DMA without RoPE"))?;
                    d.step(&mut cx, c, rope, xb, pos, cache, attn, xb2);
                }
                (Mixer::Ssd(s), State::Ssd(st)) => {
                    let scratch = ssd
                        .as_mut()
                        .ok_or_else(|| anyhow::anyhow!("SSD scratch missing"))?;
                    s.step(&mut cx, xb, pos, st, scratch, xb2);
                }
                _ => bail!("layer {l}: state does not match its mixer"),
            }
            residual(x, &layer.attn_residual, xb2);
            if let Some((norm, res, ffn)) = &layer.ffn {
                rmsnorm(x, norm, c.norm_eps, xb);
                match ffn {
                    Ffn::Mlp(m) => m.forward(&mut cx, xb, h1, h2, xb2),
                    Ffn::CdMoe(m) => {
                        let s = moe
                            .as_mut()
                            .ok_or_else(|| anyhow::anyhow!("MoE scratch missing"))?;
                        m.forward(&mut cx, xb, h1, h2, s, xb2);
                    }
                }
                residual(x, res, xb2);
            }
            if let Some(t) = &mut self.trace {
                t[(l + 1) * c.d_model..(l + 2) * c.d_model].copy_from_slice(x);
            }
        }
        rmsnorm(x, &model.output_norm, c.norm_eps, xb);
        cx.matvec(&model.output, xb, logits);
        self.pos += 1;
        Ok(())
    }
}

/// `x = scale ⊙ x + branch` (Doge), or `x += branch`.
fn residual(x: &mut [f32], scale: &Option<Vec<f32>>, branch: &[f32]) {
    match scale {
        Some(s) => x
            .iter_mut()
            .zip(s)
            .zip(branch)
            .for_each(|((x, s), b)| *x = s * *x + b),
        None => x.iter_mut().zip(branch).for_each(|(x, b)| *x += b),
    }
}
