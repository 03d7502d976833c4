//! A session: one sequence's state (KV caches, DMA caches, SSD states, position), scratch, and
//! the CDMoE expert cache when the model bounds it, all sized once when it is opened. Decoding
//! allocates nothing.

use std::sync::Arc;

use anyhow::{bail, Result};
use cheems_kernels::matmul::Activations;
use cheems_kernels::matvec::{row_f32, Activation};
use cheems_kernels::pool::Pool;

use crate::blocks::attention::{AttnScratch, KvCache};
use crate::blocks::cdmoe::MoeScratch;
use crate::blocks::dma::DmaCache;
use crate::blocks::norm::rmsnorm;
use crate::blocks::ssd::{SsdScratch, SsdState};
use crate::cuda::GpuSession;
use crate::device::Device;
use crate::experts::{ExpertCache, ExpertStats};
use crate::memory::{Category, Region};
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

use crate::snapshot::{LayerState as State, SessionState};

/// Tokens a prefill processes together, layer by layer.
pub const MAX_BATCH: usize = 128;

#[derive(Debug)]
struct Scratch {
    /// [MAX_BATCH][d_model]: residual stream, normed input, branch output
    x: Vec<f32>,
    xb: Vec<f32>,
    xb2: Vec<f32>,
    h1: Vec<f32>,
    h2: Vec<f32>,
    attn: AttnScratch,
    ssd: Option<SsdScratch>,
    moe: Option<MoeScratch>,
    act: Activation,
    /// A batch of activations and the transposition buffer of batched products.
    acts: Activations,
    tmp: Vec<f32>,
    logits: Vec<f32>,
}

pub struct Session {
    model: Arc<Model>,
    pool: Pool,
    pos: usize,
    states: Vec<State>,
    sc: Scratch,
    /// CDMoE expert records, when the model bounds them (`LoadOptions::expert_cache_bytes`).
    experts: Option<ExpertCache>,
    /// When enabled, the residual stream after the embedding and after each layer ([L+1][d_model]).
    trace: Option<Vec<f32>>,
    /// On a GPU, the device state and forward pass (`states` then only mirrors it for
    /// snapshots and checks).
    gpu: Option<GpuSession>,
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
        Self::new_on(model, opts, Device::Cpu)
    }

    /// Opens a session whose forward pass runs on `device` (a GPU needs the `cuda` feature;
    /// without it, or without a GPU and driver, this fails with a one-line reason).
    pub fn new_on(model: Arc<Model>, opts: &SessionOptions, device: Device) -> Result<Self> {
        let mut s = Self::new_cpu(model, opts)?;
        if let Device::Cuda(n) = device {
            let ctx = s.context_capacity().unwrap_or(1);
            s.gpu = Some(GpuSession::new(&s.model, n, ctx)?);
        }
        Ok(s)
    }

    /// Where the forward pass runs, in words (`cpu`, `cuda:0 (NVIDIA H200)`).
    pub fn device_name(&self) -> String {
        self.gpu
            .as_ref()
            .map_or_else(|| "cpu".to_string(), GpuSession::device_name)
    }

    /// On a GPU: bytes of device memory of the model's weights and of this session.
    pub fn device_bytes(&self) -> Option<(usize, usize)> {
        self.gpu.as_ref().map(GpuSession::device_bytes)
    }

    fn new_cpu(model: Arc<Model>, opts: &SessionOptions) -> Result<Self> {
        let c = &model.config;
        let threads = opts
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let pool = Pool::new(threads.max(1))?;
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
        let widest_rows = [
            c.d_model,
            c.d_ff,
            c.n_heads * c.head_dim,
            c.ssd.map_or(0, |s| s.in_proj_rows()),
        ]
        .into_iter()
        .max()
        .unwrap_or(c.d_model);
        let sc = Scratch {
            x: vec![0.0; MAX_BATCH * c.d_model],
            xb: vec![0.0; MAX_BATCH * c.d_model],
            xb2: vec![0.0; MAX_BATCH * c.d_model],
            h1: vec![0.0; MAX_BATCH * c.d_ff],
            h2: vec![0.0; MAX_BATCH * c.d_ff],
            attn: AttnScratch::new(c, max_keys, MAX_BATCH),
            ssd: c.ssd.as_ref().map(|s| SsdScratch::new(s, MAX_BATCH)),
            moe: (c.n_experts > 0).then(|| MoeScratch::new(c)),
            act: Activation::with_capacity(widest),
            acts: Activations::with_capacity(MAX_BATCH, widest),
            // transposition of small batches, or one dequantized weight tile per thread
            tmp: vec![
                0.0;
                (MAX_BATCH * widest_rows)
                    .max(threads.max(1) * cheems_kernels::matmul::TILE * widest)
            ],
            logits: vec![0.0; c.n_vocab],
        };
        let experts = match &model.experts {
            Some(src) => Some(ExpertCache::new(src, c.n_experts_used)?),
            None => None,
        };
        Ok(Session {
            model,
            pool,
            pos: 0,
            states,
            sc,
            experts,
            trace: None,
            gpu: None,
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
        if let Some(g) = &mut self.gpu {
            if let Err(e) = g.reset() {
                eprintln!("cheems: resetting the GPU session failed: {e:#}");
            }
        }
        for s in &mut self.states {
            match s {
                State::Kv(kv) => kv.len = 0,
                State::Dma(d) => d.clear(),
                State::Ssd(s) => s.clear(),
            }
        }
    }

    /// Bytes the session holds: (state, scratch). Fixed when it is opened: SSD states and DMA
    /// caches have constant size; a llama KV cache is allocated for `ctx` positions up front.
    /// (The expert cache, if any, is [`Session::expert_cache`].)
    pub fn memory_bytes(&self) -> (usize, usize) {
        let sum = |c: Category| {
            self.memory_regions()
                .iter()
                .filter(|r| r.category == c)
                .map(|r| r.len)
                .sum()
        };
        (sum(Category::State), sum(Category::Scratch))
    }

    /// The expert cache, when the model bounds expert memory.
    pub fn expert_cache(&self) -> Option<&ExpertCache> {
        self.experts.as_ref()
    }

    /// Hits, misses and bytes read of the expert cache so far.
    pub fn expert_stats(&self) -> Option<ExpertStats> {
        self.experts.as_ref().map(ExpertCache::stats)
    }

    /// Every buffer the session owns, by category (state, scratch, expert cache), for memory
    /// reports.
    pub fn memory_regions(&self) -> Vec<Region> {
        fn push<T>(out: &mut Vec<Region>, category: Category, v: &[T]) {
            out.push(Region {
                category,
                addr: v.as_ptr() as usize,
                len: size_of_val(v),
            });
        }
        let mut out = Vec::new();
        let state = Category::State;
        for s in &self.states {
            match s {
                State::Kv(kv) => {
                    push(&mut out, state, &kv.k);
                    push(&mut out, state, &kv.v);
                }
                State::Dma(d) => {
                    push(&mut out, state, &d.k);
                    push(&mut out, state, &d.v);
                    push(&mut out, state, &d.score);
                    push(&mut out, state, &d.pos);
                    push(&mut out, state, &d.len);
                }
                State::Ssd(st) => {
                    push(&mut out, state, &st.conv);
                    push(&mut out, state, &st.ssm);
                }
            }
        }
        let sc = &self.sc;
        let mut scratch = vec![
            &sc.x[..],
            &sc.xb,
            &sc.xb2,
            &sc.h1,
            &sc.h2,
            &sc.logits,
            &sc.tmp,
            &sc.attn.q,
            &sc.attn.k,
            &sc.attn.v,
            &sc.attn.out,
            &sc.attn.att,
        ];
        if let Some(s) = &sc.ssd {
            scratch.extend([&s.zxbcdt[..], &s.xbc, &s.y, &s.dt, &s.da, &s.work]);
        }
        if let Some(m) = &sc.moe {
            scratch.extend([&m.router[..], &m.row]);
        }
        for v in scratch {
            push(&mut out, Category::Scratch, v);
        }
        if let Some(c) = &self.experts {
            let (addr, len) = c.region();
            out.push(Region {
                category: Category::ExpertCache,
                addr,
                len,
            });
        }
        out
    }

    /// A copy of everything the session remembers (KV caches only as far as they are filled).
    pub fn snapshot(&self) -> SessionState {
        if let Some(g) = &self.gpu {
            match g.download(&self.model, self.pos) {
                Ok(layers) => {
                    return SessionState {
                        fingerprint: self.model.fingerprint,
                        pos: self.pos,
                        layers,
                    }
                }
                Err(e) => eprintln!("cheems: reading the GPU session's state failed: {e:#}"),
            }
        }
        let layers = self
            .states
            .iter()
            .map(|s| match s {
                State::Kv(kv) => {
                    let row = kv.k.len() / kv.capacity.max(1);
                    let mut c = KvCache::new(kv.len.max(1), row);
                    c.k[..kv.len * row].copy_from_slice(&kv.k[..kv.len * row]);
                    c.v[..kv.len * row].copy_from_slice(&kv.v[..kv.len * row]);
                    c.len = kv.len;
                    State::Kv(c)
                }
                other => other.clone(),
            })
            .collect();
        SessionState {
            fingerprint: self.model.fingerprint,
            pos: self.pos,
            layers,
        }
    }

    /// Goes back to a snapshot of this model's sessions. The snapshot is checked first; on an
    /// error the session is unchanged.
    pub fn restore(&mut self, snap: &SessionState) -> Result<()> {
        if snap.fingerprint != self.model.fingerprint {
            bail!("the state belongs to a different model");
        }
        if snap.layers.len() != self.states.len() {
            bail!(
                "the state has {} layers, the model {}",
                snap.layers.len(),
                self.states.len()
            );
        }
        for (i, (from, to)) in snap.layers.iter().zip(&self.states).enumerate() {
            let fits = match (from, to) {
                (State::Kv(a), State::Kv(b)) => {
                    a.len <= b.capacity
                        && a.k.len() / a.capacity.max(1) == b.k.len() / b.capacity.max(1)
                }
                (State::Dma(a), State::Dma(b)) => {
                    a.k.len() == b.k.len() && a.len.len() == b.len.len()
                }
                (State::Ssd(a), State::Ssd(b)) => {
                    a.conv.len() == b.conv.len() && a.ssm.len() == b.ssm.len()
                }
                _ => false,
            };
            if !fits {
                bail!("layer {i} of the state does not fit this session (kind or size; for llama, raise --ctx)");
            }
        }
        for (from, to) in snap.layers.iter().zip(self.states.iter_mut()) {
            match (from, to) {
                (State::Kv(a), State::Kv(b)) => {
                    let n = a.len * (a.k.len() / a.capacity.max(1));
                    b.k[..n].copy_from_slice(&a.k[..n]);
                    b.v[..n].copy_from_slice(&a.v[..n]);
                    b.len = a.len;
                }
                (State::Dma(a), State::Dma(b)) => b.clone_from(a),
                (State::Ssd(a), State::Ssd(b)) => b.clone_from(a),
                _ => {}
            }
        }
        if let Some(g) = &mut self.gpu {
            g.upload(&snap.layers, snap.pos)?;
        }
        self.pos = snap.pos;
        Ok(())
    }

    /// Saves the state to a file (see [`crate::snapshot`] for the layout).
    pub fn save_state(&self, path: &std::path::Path) -> Result<()> {
        self.snapshot().save(path)
    }

    /// Restores a state saved by [`Session::save_state`] for this model.
    pub fn load_state(&mut self, path: &std::path::Path) -> Result<()> {
        let kv_capacity = self
            .states
            .iter()
            .find_map(|s| match s {
                State::Kv(kv) => Some(kv.capacity),
                _ => None,
            })
            .unwrap_or(0);
        let snap = SessionState::load(path, &self.snapshot(), kv_capacity)?;
        self.restore(&snap)
    }

    /// Positions a plain-attention (llama) KV cache holds, or `None` when the model keeps a
    /// constant-size state instead (SSD states, DMA caches).
    pub fn context_capacity(&self) -> Option<usize> {
        self.states.iter().find_map(|s| match s {
            State::Kv(kv) => Some(kv.capacity),
            _ => None,
        })
    }

    /// llama.cpp's context shift: drops the oldest half of the tokens after the first `keep`
    /// from every KV cache, moves the later ones down, and re-rotates their cached keys (keys
    /// are cached after RoPE) for their new positions; the session continues at
    /// `pos - dropped`. Returns the number of tokens dropped. For plain attention (llama) only.
    /// On an error the session is unchanged.
    pub fn context_shift(&mut self, keep: usize) -> Result<usize> {
        let held = self.pos;
        let drop = held.saturating_sub(keep) / 2;
        if self.context_capacity().is_none() {
            bail!(
                "context shift applies to plain attention (llama); {} keeps a constant-size state",
                self.model.config.arch.name()
            );
        }
        if drop == 0 {
            bail!("nothing to drop: {held} tokens held, the first {keep} kept");
        }
        if self.gpu.is_some() {
            // The shift runs on the host copy of the caches.
            let snap = self.snapshot();
            let gpu = self.gpu.take();
            let r = self.restore(&snap);
            self.gpu = gpu;
            r?;
        }
        let rope = self
            .model
            .rope
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("attention without RoPE"))?;
        let half = rope.cfg.dim / 2;
        let (cos, rest) = self.sc.tmp.split_at_mut(half);
        let sin = &mut rest[..half];
        for s in &mut self.states {
            if let State::Kv(kv) = s {
                let row = kv.k.len() / kv.capacity.max(1);
                kv.k.copy_within((keep + drop) * row..held * row, keep * row);
                kv.v.copy_within((keep + drop) * row..held * row, keep * row);
                kv.len = held - drop;
            }
        }
        for j in keep..held - drop {
            rope.shift(j + drop, j, cos, sin);
            for s in &mut self.states {
                if let State::Kv(kv) = s {
                    let row = kv.k.len() / kv.capacity.max(1);
                    rope.rotate(&mut kv.k[j * row..(j + 1) * row], cos, sin);
                }
            }
        }
        self.pos = held - drop;
        if let Some(g) = &mut self.gpu {
            g.upload(&self.states, self.pos)?;
        }
        Ok(drop)
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

    /// Feeds a prompt, layer by layer in batches of [`MAX_BATCH`] tokens (SSD layers use the
    /// chunked scan); returns the logits after the last token. On an error (an unknown token id,
    /// a full context) the session is unchanged.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        if tokens.is_empty() {
            bail!("empty prompt: nothing to process");
        }
        self.check(tokens)?;
        for chunk in tokens.chunks(MAX_BATCH) {
            self.forward(chunk, None)?;
        }
        Ok(&self.sc.logits)
    }

    /// Like [`Session::prefill`], appending the logits after every token to `out`
    /// (`[tokens.len()][n_vocab]`).
    pub fn prefill_all(&mut self, tokens: &[u32], out: &mut Vec<f32>) -> Result<()> {
        self.check(tokens)?;
        for chunk in tokens.chunks(MAX_BATCH) {
            self.forward(chunk, Some(out))?;
        }
        Ok(())
    }

    /// Feeds one token; returns the logits that predict the next. (An error reading expert
    /// records from the file, the one failure possible once the token is checked, leaves the
    /// sequence part-way through the token: reset or restore the session after it.)
    pub fn decode(&mut self, token: u32) -> Result<&[f32]> {
        self.check(&[token])?;
        self.forward(&[token], None)?;
        Ok(&self.sc.logits)
    }

    /// The logits after the last token.
    pub fn logits(&self) -> &[f32] {
        &self.sc.logits
    }

    /// Entries held by each DMA layer's cache, per KV head (for inspection and tests).
    pub fn dma_cache_lens(&self) -> Vec<Vec<usize>> {
        self.states
            .iter()
            .filter_map(|s| match s {
                State::Dma(d) => Some(d.len.clone()),
                _ => None,
            })
            .collect()
    }

    /// Refuses tokens that would fail part-way, so a failed call leaves the session as it was.
    fn check(&self, tokens: &[u32]) -> Result<()> {
        let c = &self.model.config;
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= c.n_vocab) {
            bail!("token id {t} is outside the vocabulary (0..{})", c.n_vocab);
        }
        for s in &self.states {
            if let State::Kv(kv) = s {
                if kv.len + tokens.len() > kv.capacity {
                    bail!(
                        "the context is full: {} tokens held, {} more do not fit in {}",
                        kv.len,
                        tokens.len(),
                        kv.capacity
                    );
                }
            }
        }
        Ok(())
    }

    /// Runs up to [`MAX_BATCH`] tokens through the stack, layer by layer. Fills the logits of
    /// the last token, or of every token into `all`.
    fn forward(&mut self, tokens: &[u32], mut all: Option<&mut Vec<f32>>) -> Result<()> {
        if let Some(g) = &mut self.gpu {
            g.forward(
                tokens,
                self.pos,
                all,
                &mut self.sc.logits,
                self.trace.as_deref_mut(),
            )?;
            self.pos += tokens.len();
            return Ok(());
        }
        let model = &*self.model;
        let c = &model.config;
        let (n, h) = (tokens.len(), c.d_model);
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
            acts,
            tmp,
            logits,
        } = &mut self.sc;
        let mut cx = Ctx {
            map,
            pool: &self.pool,
            act,
            acts,
            tmp,
        };
        let embed = model.embed.get(map);
        for (t, &tok) in tokens.iter().enumerate() {
            row_f32(&embed, tok as usize, &mut x[t * h..(t + 1) * h]);
        }
        let last = (n - 1) * h..n * h;
        if let Some(tr) = &mut self.trace {
            tr[..h].copy_from_slice(&x[last.clone()]);
        }
        for (l, (layer, state)) in model.layers.iter().zip(self.states.iter_mut()).enumerate() {
            for t in 0..n {
                rmsnorm(
                    &x[t * h..(t + 1) * h],
                    &layer.attn_norm,
                    c.norm_eps,
                    &mut xb[t * h..(t + 1) * h],
                );
            }
            let rope = model.rope.as_ref();
            match (&layer.mixer, state) {
                (Mixer::Attention(a), State::Kv(kv)) => {
                    let rope = rope.ok_or_else(|| anyhow::anyhow!("attention without RoPE"))?;
                    a.forward(
                        &mut cx,
                        c,
                        rope,
                        &xb[..n * h],
                        pos,
                        kv,
                        attn,
                        &mut xb2[..n * h],
                    )?;
                }
                (Mixer::Dma(d), State::Dma(cache)) => {
                    let rope = rope.ok_or_else(|| anyhow::anyhow!("DMA without RoPE"))?;
                    d.forward(
                        &mut cx,
                        c,
                        rope,
                        &xb[..n * h],
                        pos,
                        cache,
                        attn,
                        &mut xb2[..n * h],
                    );
                }
                (Mixer::Ssd(s), State::Ssd(st)) => {
                    let scratch = ssd
                        .as_mut()
                        .ok_or_else(|| anyhow::anyhow!("SSD scratch missing"))?;
                    if n == 1 {
                        s.step(&mut cx, &xb[..h], pos, st, scratch, &mut xb2[..h]);
                    } else {
                        s.prefill(&mut cx, &xb[..n * h], pos, st, scratch, &mut xb2[..n * h]);
                    }
                }
                _ => bail!("layer {l}: state does not match its mixer"),
            }
            for t in 0..n {
                residual(
                    &mut x[t * h..(t + 1) * h],
                    &layer.attn_residual,
                    &xb2[t * h..(t + 1) * h],
                );
            }
            if let Some((norm, res, ffn)) = &layer.ffn {
                for t in 0..n {
                    let r = t * h..(t + 1) * h;
                    rmsnorm(&x[r.clone()], norm, c.norm_eps, &mut xb[r]);
                }
                let (xs, out) = (&xb[..n * h], &mut xb2[..n * h]);
                match ffn {
                    Ffn::Mlp(m) => m.forward(&mut cx, xs, h1, h2, out),
                    Ffn::CdMoe(m) => {
                        let s = moe
                            .as_mut()
                            .ok_or_else(|| anyhow::anyhow!("MoE scratch missing"))?;
                        m.forward(&mut cx, xs, h1, h2, s, self.experts.as_mut(), out)?;
                    }
                }
                for t in 0..n {
                    residual(&mut x[t * h..(t + 1) * h], res, &xb2[t * h..(t + 1) * h]);
                }
            }
            if let Some(tr) = &mut self.trace {
                tr[(l + 1) * h..(l + 2) * h].copy_from_slice(&x[last.clone()]);
            }
        }
        let first = if all.is_some() { 0 } else { n - 1 };
        for t in first..n {
            rmsnorm(
                &x[t * h..(t + 1) * h],
                &model.output_norm,
                c.norm_eps,
                &mut xb[..h],
            );
            cx.matvec(&model.output, &xb[..h], logits);
            if let Some(all) = all.as_mut() {
                all.extend_from_slice(logits);
            }
        }
        self.pos += n;
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
