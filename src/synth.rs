//! Random-weight models of named shapes, written straight to a model file (`cheems synth`), so
//! benchmarks need neither a checkpoint nor Python.
//!
//! A shape fixes one architecture's hyper-parameters. [`synth`] lays out the file exactly as
//! `cheems quantize` would for a checkpoint of that shape: the same metadata keys, tensor names
//! and dims (`formats/FORMAT.md`), the same default type policy
//! ([`cheems_quantize::plan::choose_type`]: vectors and the sensitive SSM/DMA/router parameters
//! stay F32, the output head gets Q6_K at 4- and 5-bit types), and `general.alignment = 4096`
//! with CDMoE expert records. It adds a minimal byte-level tokenizer (the 256 GPT-2 byte
//! characters, `<|endoftext|>` as BOS and EOS at id 256, `[PAD<i>]` up to the vocabulary size,
//! no merges), so `cheems run` works on the file and llama.cpp can read it too.
//!
//! Weights are streamed: a few MB of rows at a time are generated and quantized on all cores and
//! written, so the model is never held in memory. Each row's values come from a generator seeded
//! by (seed, tensor, row), so a file depends on the shape, type and seed only, not on the thread
//! count. Values keep activations in range: matrices uniform with standard deviation 0.02, norms
//! and residual scales 1, Mamba's initialisation for the SSM parameters (`A = -exp(U(ln 1,
//! ln 16))`, `dt_bias = softplus⁻¹(dt)` with `dt` log-uniform in [1e-3, 0.1], `D = 1`, conv
//! weights and bias `U(-0.5, 0.5)`), DMA's `A` in `-U(0.5, 2)`.
//!
//! | shape | arch | hyper-parameters | params |
//! |---|---|---|---|
//! | `mamba2-130m` | mamba2 | d_model 768, 24 layers, d_state 128, head_dim 64, expand 2 (24 heads), 1 group, conv 4, vocab 50288, tied | 129 M |
//! | `llama-110m` | llama | hidden 768, 12 layers, 12 heads, 12 KV heads, FFN 2048, vocab 32768, untied, context 2048 | 135 M |
//! | `llama-110m-tied` | llama | `llama-110m` with the output head tied to the embedding: the file llama.cpp's numbers in `targets.md` were measured on (110 M parameters, 221 MB at F16) | 110 M |
//! | `doge-60m` | doge | hidden 512, 16 layers, 4 heads, 2 KV heads, head_dim 128, MLP 1024, vocab 32768, tied, keep window 2048, dynamic NTK RoPE x4 over 2048 | 54 M |
//! | `doge-120m-moe` | doge | `doge-60m` with CDMoE: 4096 experts, 32 used, shared MLP 1024, expert records | 122 M |
//! | `cheems-120m` | cheems | hidden 768, 12 layers, DMA at layers 3, 7, 11 (i % 4 == 3) and SSD elsewhere; SSD 24 heads x 64, d_state 128, 1 group, conv 4, RoPE on B and C; DMA 12 heads, 4 KV heads, head_dim 64, keep window 2048; dense MLP 2048; vocab 32768, tied | 120 M |
//! | `tiny-mamba2`, `tiny-llama`, `tiny-doge-moe`, `tiny-cheems` | | the same layouts at hidden 256, 2 to 4 layers, vocab 320 (tiny-doge-moe and tiny-cheems with CDMoE, 64 experts, and a keep window of 8), for tests | 1 to 3 M |
//!
//! Not here: converting real checkpoints (`cheems-quantize`) and running models (the engine).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use cheems_formats::blocks::quantize_row;
use cheems_formats::gguf::{GgufWriter, Metadata, TensorSpec, Value};
use cheems_formats::GgmlType;
use cheems_quantize::plan::{
    choose_type, file_type, Class, Options, PlannedTensor, Source, Transform,
};

use crate::Arch;

/// The shapes [`synth`] knows.
pub const SHAPES: &[&str] = &[
    "mamba2-130m",
    "llama-110m",
    "llama-110m-tied",
    "doge-60m",
    "doge-120m-moe",
    "cheems-120m",
    "tiny-mamba2",
    "tiny-llama",
    "tiny-doge-moe",
    "tiny-cheems",
];

/// Values of f32 generated per chunk (the unit of quantizing and writing): 8 MB worth.
const CHUNK_VALUES: usize = 2 << 20;

/// Standard deviation of weight matrices.
const STD: f32 = 0.02;

/// Page alignment of files with CDMoE experts, as the converter writes it.
const EXPERT_ALIGN: u32 = 4096;

/// Id of `<|endoftext|>` (BOS and EOS) in the synthetic tokenizer.
const EOS_ID: u32 = 256;

/// Writes a random-weight model of shape `shape` to `out`, weight matrices stored as `ty` (the
/// converter's `--type`), values drawn from `seed`.
pub fn synth(shape: &str, ty: GgmlType, out: &Path, seed: u64) -> Result<()> {
    let s = lookup(shape)?;
    if !ty.is_weight_type() {
        bail!("type {ty} is not a weight type");
    }
    let plan = plan(&s, ty);
    let specs = plan
        .tensors
        .iter()
        .map(|(t, _)| TensorSpec::new(t.name.clone(), t.dims.clone(), t.ty))
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut writer = GgufWriter::create(out, &plan.metadata, specs)
        .with_context(|| format!("cannot create {}", out.display()))?;
    let mut bytes = Vec::new();
    for (i, (t, init)) in plan.tensors.iter().enumerate() {
        let row_len = t.row_len();
        let n_rows = (t.n_elements() / row_len as u64) as usize;
        let row_bytes = t.ty.row_bytes(row_len).ok_or_else(|| {
            anyhow!(
                "tensor `{}`: rows of {row_len} are not whole {} blocks",
                t.name,
                t.ty
            )
        })?;
        let rows_per_chunk = (CHUNK_VALUES / row_len).max(1);
        let mut first = 0;
        while first < n_rows {
            let n = rows_per_chunk.min(n_rows - first);
            bytes.resize(n * row_bytes, 0);
            let job = Rows {
                ty: t.ty,
                row_len,
                row_bytes,
                init: *init,
                seed,
                tensor: i as u64,
                first,
            };
            job.fill(&mut bytes, threads)
                .with_context(|| format!("tensor `{}`", t.name))?;
            writer
                .write_data(&bytes)
                .with_context(|| format!("cannot write {}", out.display()))?;
            first += n;
        }
    }
    writer
        .finish()
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

/// One line describing a shape's hyper-parameters, or `None` for an unknown name.
pub fn describe(shape: &str) -> Option<String> {
    let s = shape_of(shape)?;
    let mut d = format!(
        "{} ({}): hidden {}, {} layers, vocab {}, {}",
        s.name,
        s.arch.name(),
        s.d_model,
        s.n_layers,
        s.n_vocab,
        if s.tied { "tied" } else { "untied" }
    );
    if let Some(m) = &s.ssd {
        d += &format!(
            "; SSD {} heads x {}, d_state {}, {} group(s), conv {}",
            m.n_heads,
            m.d_inner / m.n_heads,
            m.d_state,
            m.n_groups,
            m.d_conv
        );
    }
    if s.n_heads > 0 {
        d += &format!(
            "; {} {} heads, {} KV heads, head_dim {}",
            if s.arch == Arch::Llama {
                "attention"
            } else {
                "DMA"
            },
            s.n_heads,
            s.n_kv_heads,
            s.head_dim
        );
    }
    if s.arch == Arch::Cheems {
        d += &format!("; DMA every {}th layer", s.dma_period);
    }
    if s.d_ff > 0 {
        d += &format!("; MLP {}", s.d_ff);
    }
    if let Some((e, k)) = s.moe {
        d += &format!("; CDMoE {e} experts, {k} used");
    }
    Some(d)
}

fn lookup(shape: &str) -> Result<Shape> {
    shape_of(shape).ok_or_else(|| {
        anyhow!(
            "unknown shape `{shape}` (choose one of: {})",
            SHAPES.join(", ")
        )
    })
}

/// An SSD mixer's shape.
#[derive(Clone, Copy, Debug)]
struct SsdShape {
    d_inner: usize,
    d_state: usize,
    n_groups: usize,
    n_heads: usize,
    d_conv: usize,
}

impl SsdShape {
    const fn mamba(d_model: usize, d_state: usize, head_dim: usize) -> Self {
        SsdShape {
            d_inner: 2 * d_model,
            d_state,
            n_groups: 1,
            n_heads: 2 * d_model / head_dim,
            d_conv: 4,
        }
    }

    fn conv_dim(&self) -> usize {
        self.d_inner + 2 * self.n_groups * self.d_state
    }

    fn in_proj_rows(&self) -> usize {
        2 * self.d_inner + 2 * self.n_groups * self.d_state + self.n_heads
    }
}

/// A named shape: every hyper-parameter the file records.
#[derive(Clone, Copy, Debug)]
struct Shape {
    name: &'static str,
    arch: Arch,
    n_vocab: usize,
    d_model: usize,
    n_layers: usize,
    tied: bool,
    context: usize,
    eps: f32,
    /// Attention (llama) or DMA (doge, cheems) heads; 0 for mamba2.
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    /// MLP width (CDMoE's shared MLP); 0 for mamba2.
    d_ff: usize,
    keep_window: usize,
    /// Doge's dynamic NTK RoPE: (factor, original context).
    rope_dynamic: Option<(f32, usize)>,
    ssd: Option<SsdShape>,
    /// CDMoE (experts, experts used per token).
    moe: Option<(usize, usize)>,
    /// cheems: layer i is DMA iff `i % dma_period == dma_period - 1`.
    dma_period: usize,
}

const LLAMA: Shape = Shape {
    name: "llama-110m",
    arch: Arch::Llama,
    n_vocab: 32768,
    d_model: 768,
    n_layers: 12,
    tied: false,
    context: 2048,
    eps: 1e-6,
    n_heads: 12,
    n_kv_heads: 12,
    head_dim: 64,
    d_ff: 2048,
    keep_window: 0,
    rope_dynamic: None,
    ssd: None,
    moe: None,
    dma_period: 0,
};

const MAMBA2: Shape = Shape {
    name: "mamba2-130m",
    arch: Arch::Mamba2,
    n_vocab: 50288,
    d_model: 768,
    n_layers: 24,
    tied: true,
    context: 1 << 20,
    eps: 1e-5,
    n_heads: 0,
    n_kv_heads: 0,
    head_dim: 0,
    d_ff: 0,
    ssd: Some(SsdShape::mamba(768, 128, 64)),
    ..LLAMA
};

const DOGE: Shape = Shape {
    name: "doge-60m",
    arch: Arch::Doge,
    n_vocab: 32768,
    d_model: 512,
    n_layers: 16,
    tied: true,
    context: 2048,
    eps: 1e-6,
    n_heads: 4,
    n_kv_heads: 2,
    head_dim: 128,
    d_ff: 1024,
    keep_window: 2048,
    rope_dynamic: Some((4.0, 2048)),
    ..LLAMA
};

const CHEEMS: Shape = Shape {
    name: "cheems-120m",
    arch: Arch::Cheems,
    d_model: 768,
    n_layers: 12,
    n_heads: 12,
    n_kv_heads: 4,
    head_dim: 64,
    d_ff: 2048,
    rope_dynamic: None,
    ssd: Some(SsdShape::mamba(768, 128, 64)),
    dma_period: 4,
    ..DOGE
};

fn shape_of(name: &str) -> Option<Shape> {
    let tiny = |base: Shape, name: &'static str| Shape {
        name,
        n_vocab: 320,
        d_model: 256,
        n_layers: 2,
        ..base
    };
    Some(match name {
        "mamba2-130m" => MAMBA2,
        "llama-110m" => LLAMA,
        "llama-110m-tied" => Shape {
            name: "llama-110m-tied",
            tied: true,
            ..LLAMA
        },
        "doge-60m" => DOGE,
        "doge-120m-moe" => Shape {
            name: "doge-120m-moe",
            moe: Some((4096, 32)),
            ..DOGE
        },
        "cheems-120m" => CHEEMS,
        "tiny-mamba2" => Shape {
            ssd: Some(SsdShape::mamba(256, 32, 64)),
            ..tiny(MAMBA2, "tiny-mamba2")
        },
        "tiny-llama" => Shape {
            n_heads: 4,
            n_kv_heads: 2,
            d_ff: 512,
            ..tiny(LLAMA, "tiny-llama")
        },
        "tiny-doge-moe" => Shape {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 64,
            d_ff: 256,
            keep_window: 8,
            rope_dynamic: Some((4.0, 16)),
            moe: Some((64, 4)),
            ..tiny(DOGE, "tiny-doge-moe")
        },
        "tiny-cheems" => Shape {
            n_layers: 4,
            n_heads: 4,
            n_kv_heads: 2,
            d_ff: 512,
            keep_window: 8,
            ssd: Some(SsdShape {
                d_inner: 256,
                d_state: 32,
                n_groups: 2,
                n_heads: 4,
                d_conv: 4,
            }),
            moe: Some((64, 4)),
            ..tiny(CHEEMS, "tiny-cheems")
        },
        _ => return None,
    })
}

/// How a tensor's values are drawn.
#[derive(Clone, Copy, Debug)]
enum Init {
    /// Uniform around 0 with this standard deviation.
    Centered(f32),
    Const(f32),
    /// Uniform in `[lo, hi)`.
    Range(f32, f32),
    /// Mamba's `A = -exp(U(ln 1, ln 16))` (stored as `ssm_a`, already negated).
    SsmA,
    /// Mamba's `dt_bias = softplus⁻¹(dt)`, `dt` log-uniform in [1e-3, 0.1] (floor 1e-4).
    DtBias,
}

const W: Init = Init::Centered(STD);
const ONE: Init = Init::Const(1.0);

/// The file to write: metadata and tensors with their stored types and values.
struct Plan {
    metadata: Metadata,
    tensors: Vec<(PlannedTensor, Init)>,
}

impl Plan {
    /// Adds a tensor with ggml dims `dims` (innermost first).
    fn add(&mut self, name: String, dims: &[usize], class: Class, init: Init) {
        let t = PlannedTensor {
            name,
            dims: dims.iter().map(|&d| d as u64).collect(),
            class,
            source: Source::Tensor {
                name: String::new(),
                transform: Transform::None,
            },
            ty: GgmlType::F32,
        };
        self.tensors.push((t, init));
    }

    fn key(&mut self, arch: Arch, key: &str, value: impl Into<Value>) {
        self.metadata.set(format!("{}.{key}", arch.name()), value);
    }
}

/// The converter's layout for a checkpoint of shape `s`, types assigned for `ty`.
fn plan(s: &Shape, ty: GgmlType) -> Plan {
    let mut p = Plan {
        metadata: Metadata::new(),
        tensors: Vec::new(),
    };
    p.metadata.set("general.architecture", s.arch.name());
    p.metadata.set("general.type", "model");
    p.metadata.set("general.name", s.name);
    let (h, v) = (s.d_model, s.n_vocab);
    let embed_class = if s.tied {
        Class::Output
    } else {
        Class::Embedding
    };
    p.add("token_embd.weight".into(), &[h, v], embed_class, W);
    p.add("output_norm.weight".into(), &[h], Class::Vector, ONE);
    if !s.tied {
        p.add("output.weight".into(), &[h, v], Class::Output, W);
    }
    match s.arch {
        Arch::Llama => llama(s, &mut p),
        Arch::Mamba2 => mamba2(s, &mut p),
        Arch::Doge | Arch::Cheems => doge(s, &mut p),
    }
    tokenizer(&mut p.metadata, v);
    let opts = Options::new(ty);
    for (t, _) in &mut p.tensors {
        t.ty = choose_type(t, &opts);
    }
    p.metadata.set("general.file_type", file_type(ty));
    if ty.is_quantized() {
        p.metadata.set("general.quantization_version", 2u32);
    }
    p
}

/// Keys shared by the attention architectures, as the converter writes them.
fn attention_keys(s: &Shape, p: &mut Plan) {
    let a = s.arch;
    p.key(a, "vocab_size", s.n_vocab as u32);
    p.key(a, "context_length", s.context as u32);
    p.key(a, "embedding_length", s.d_model as u32);
    p.key(a, "block_count", s.n_layers as u32);
    p.key(a, "feed_forward_length", s.d_ff as u32);
}

fn llama(s: &Shape, p: &mut Plan) {
    let a = s.arch;
    attention_keys(s, p);
    p.key(a, "rope.dimension_count", s.head_dim as u32);
    p.key(a, "attention.head_count", s.n_heads as u32);
    p.key(a, "attention.head_count_kv", s.n_kv_heads as u32);
    p.key(a, "attention.layer_norm_rms_epsilon", s.eps);
    if s.head_dim != s.d_model / s.n_heads {
        p.key(a, "attention.key_length", s.head_dim as u32);
        p.key(a, "attention.value_length", s.head_dim as u32);
    }
    p.key(a, "rope.freq_base", 10000f32);
    let (h, q, kv) = (s.d_model, s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
    for i in 0..s.n_layers {
        let g = |n: &str| format!("blk.{i}.{n}");
        p.add(g("attn_norm.weight"), &[h], Class::Vector, ONE);
        p.add(g("attn_q.weight"), &[h, q], Class::Weight, W);
        p.add(g("attn_k.weight"), &[h, kv], Class::Weight, W);
        p.add(g("attn_v.weight"), &[h, kv], Class::Weight, W);
        p.add(g("attn_output.weight"), &[q, h], Class::Weight, W);
        p.add(g("ffn_norm.weight"), &[h], Class::Vector, ONE);
        mlp(s, p, i);
    }
}

fn mlp(s: &Shape, p: &mut Plan, i: usize) {
    let (h, f) = (s.d_model, s.d_ff);
    p.add(
        format!("blk.{i}.ffn_gate.weight"),
        &[h, f],
        Class::Weight,
        W,
    );
    p.add(format!("blk.{i}.ffn_up.weight"), &[h, f], Class::Weight, W);
    p.add(
        format!("blk.{i}.ffn_down.weight"),
        &[f, h],
        Class::Weight,
        W,
    );
}

fn ssd_keys(arch: Arch, m: &SsdShape, p: &mut Plan) {
    p.key(arch, "ssm.conv_kernel", m.d_conv as u32);
    p.key(arch, "ssm.inner_size", m.d_inner as u32);
    p.key(arch, "ssm.state_size", m.d_state as u32);
    p.key(arch, "ssm.time_step_rank", m.n_heads as u32);
    p.key(arch, "ssm.group_count", m.n_groups as u32);
}

/// The Mamba-2 mixer tensors of layer `i` (shared by mamba2 and cheems).
fn ssd_layer(h: usize, m: &SsdShape, p: &mut Plan, i: usize) {
    let g = |n: &str| format!("blk.{i}.{n}");
    let (cd, nh) = (m.conv_dim(), m.n_heads);
    p.add(g("ssm_in.weight"), &[h, m.in_proj_rows()], Class::Weight, W);
    let conv = Init::Range(-0.5, 0.5);
    p.add(
        g("ssm_conv1d.weight"),
        &[m.d_conv, cd],
        Class::Precise,
        conv,
    );
    p.add(g("ssm_conv1d.bias"), &[cd], Class::Vector, conv);
    p.add(g("ssm_dt.bias"), &[nh], Class::Vector, Init::DtBias);
    p.add(g("ssm_a"), &[1, nh], Class::Precise, Init::SsmA);
    p.add(g("ssm_d"), &[1, nh], Class::Precise, ONE);
    let norm = if m.n_groups > 1 {
        vec![m.d_inner / m.n_groups, m.n_groups]
    } else {
        vec![m.d_inner]
    };
    p.add(g("ssm_norm.weight"), &norm, Class::Vector, ONE);
    p.add(g("ssm_out.weight"), &[m.d_inner, h], Class::Weight, W);
}

fn mamba2(s: &Shape, p: &mut Plan) {
    let a = s.arch;
    let Some(m) = s.ssd else { return };
    p.key(a, "vocab_size", s.n_vocab as u32);
    p.key(a, "context_length", s.context as u32);
    p.key(a, "embedding_length", s.d_model as u32);
    p.key(a, "feed_forward_length", 0u32);
    p.key(a, "attention.head_count", 0u32);
    p.key(a, "block_count", s.n_layers as u32);
    ssd_keys(a, &m, p);
    p.key(a, "attention.layer_norm_rms_epsilon", s.eps);
    for i in 0..s.n_layers {
        p.add(
            format!("blk.{i}.attn_norm.weight"),
            &[s.d_model],
            Class::Vector,
            ONE,
        );
        ssd_layer(s.d_model, &m, p, i);
    }
}

fn doge(s: &Shape, p: &mut Plan) {
    let a = s.arch;
    attention_keys(s, p);
    p.key(a, "attention.head_count", s.n_heads as u32);
    p.key(a, "attention.head_count_kv", s.n_kv_heads as u32);
    p.key(a, "attention.key_length", s.head_dim as u32);
    p.key(a, "attention.value_length", s.head_dim as u32);
    p.key(a, "attention.layer_norm_rms_epsilon", s.eps);
    p.key(a, "attention.keep_window_size", s.keep_window as u32);
    p.key(a, "rope.dimension_count", s.head_dim as u32);
    p.key(a, "rope.freq_base", 10000f32);
    if let Some((factor, orig)) = s.rope_dynamic {
        p.key(a, "rope.scaling.type", "dynamic");
        p.key(a, "rope.scaling.factor", factor);
        p.key(a, "rope.scaling.original_context_length", orig as u32);
    }
    if let Some((n_experts, n_used)) = s.moe {
        p.metadata.set("general.alignment", EXPERT_ALIGN);
        p.key(a, "expert_count", n_experts as u32);
        p.key(a, "expert_used_count", n_used as u32);
        p.key(a, "expert_layout", "records");
    }
    let is_dma = |i: usize| a == Arch::Doge || i % s.dma_period == s.dma_period - 1;
    if let (Arch::Cheems, Some(m)) = (a, &s.ssd) {
        ssd_keys(a, m, p);
        p.key(a, "ssm.chunk_size", 256u32);
        p.key(a, "ssm.rope", true);
        p.key(a, "ssm.layer_norm_rms_epsilon", 1e-5f32);
        let types: Vec<&str> = (0..s.n_layers)
            .map(|i| if is_dma(i) { "dma" } else { "ssd" })
            .collect();
        p.key(a, "layer_types", types);
    }
    let (h, d) = (s.d_model, s.head_dim);
    let (q, kv) = (s.n_heads * d, s.n_kv_heads * d);
    for i in 0..s.n_layers {
        let g = |n: &str| format!("blk.{i}.{n}");
        p.add(g("attn_norm.weight"), &[h], Class::Vector, ONE);
        p.add(g("attn_residual.weight"), &[h], Class::Vector, ONE);
        match &s.ssd {
            Some(m) if !is_dma(i) => ssd_layer(h, m, p, i),
            _ => {
                p.add(g("attn_q.weight"), &[h, q], Class::Weight, W);
                p.add(g("attn_k.weight"), &[h, kv], Class::Weight, W);
                p.add(g("attn_v.weight"), &[h, kv], Class::Weight, W);
                p.add(g("attn_q_norm.weight"), &[d], Class::Vector, ONE);
                p.add(g("attn_k_norm.weight"), &[d], Class::Vector, ONE);
                p.add(g("attn_dt.weight"), &[kv, s.n_kv_heads], Class::Precise, W);
                let dma_a = Init::Range(-2.0, -0.5);
                p.add(g("attn_a"), &[s.n_kv_heads], Class::Vector, dma_a);
                p.add(g("attn_output.weight"), &[q, h], Class::Weight, W);
            }
        }
        p.add(g("ffn_norm.weight"), &[h], Class::Vector, ONE);
        p.add(g("ffn_residual.weight"), &[h], Class::Vector, ONE);
        mlp(s, p, i);
        if let Some((n_experts, _)) = s.moe {
            let nk = (n_experts as f64).sqrt().floor() as usize;
            p.add(g("ffn_gate_inp.weight"), &[h, 2 * nk], Class::Precise, W);
            p.add(
                g("ffn_experts.weight"),
                &[h, 2, n_experts],
                Class::Experts,
                W,
            );
        }
    }
}

/// GPT-2's byte-level character of each byte (`bytes_to_unicode`): printable Latin-1 bytes stand
/// for themselves, the other 68 get U+0100.. in byte order.
fn byte_chars() -> Vec<String> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0x100u32;
    (0..=255u8)
        .map(|b| {
            let code = if printable(b) {
                u32::from(b)
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(code).unwrap_or('?').to_string()
        })
        .collect()
}

/// A byte-level tokenizer without merges: every byte is a token, `<|endoftext|>` is BOS and EOS,
/// the rest of the vocabulary is unused padding.
fn tokenizer(md: &mut Metadata, n_vocab: usize) {
    let mut tokens = byte_chars();
    let mut types = vec![1i32; tokens.len()];
    tokens.push("<|endoftext|>".into());
    types.push(3);
    for i in tokens.len()..n_vocab {
        tokens.push(format!("[PAD{i}]"));
        types.push(5);
    }
    md.set("tokenizer.ggml.bos_token_id", EOS_ID);
    md.set("tokenizer.ggml.eos_token_id", EOS_ID);
    md.set("tokenizer.ggml.add_bos_token", false);
    md.set("tokenizer.ggml.add_eos_token", false);
    md.set("tokenizer.ggml.model", "gpt2");
    md.set("tokenizer.ggml.pre", "gpt-2");
    md.set("tokenizer.ggml.tokens", tokens);
    md.set("tokenizer.ggml.token_type", types);
    md.set("tokenizer.ggml.merges", Vec::<String>::new());
}

/// A chunk of consecutive rows of one tensor to generate and quantize.
#[derive(Clone, Copy, Debug)]
struct Rows {
    ty: GgmlType,
    row_len: usize,
    row_bytes: usize,
    init: Init,
    seed: u64,
    tensor: u64,
    /// Index of the chunk's first row in the tensor.
    first: usize,
}

impl Rows {
    /// Fills `out` (whole rows of stored bytes), split over up to `threads` threads.
    fn fill(&self, out: &mut [u8], threads: usize) -> Result<()> {
        let n_rows = out.len() / self.row_bytes;
        let per = n_rows.div_ceil(threads.max(1)).max(1);
        if per >= n_rows {
            return self.fill_part(out, self.first);
        }
        std::thread::scope(|scope| {
            let workers: Vec<_> = out
                .chunks_mut(per * self.row_bytes)
                .enumerate()
                .map(|(k, part)| scope.spawn(move || self.fill_part(part, self.first + k * per)))
                .collect();
            workers.into_iter().try_for_each(|w| {
                w.join()
                    .map_err(|_| anyhow!("a weight-generating thread panicked"))?
            })
        })
    }

    fn fill_part(&self, out: &mut [u8], first: usize) -> Result<()> {
        let mut row = vec![0f32; self.row_len];
        for (j, dst) in out.chunks_mut(self.row_bytes).enumerate() {
            let mut rng = Rng::new(self.seed, self.tensor, (first + j) as u64);
            row.iter_mut().for_each(|x| *x = rng.draw(self.init));
            quantize_row(self.ty, &row, dst)?;
        }
        Ok(())
    }
}

/// wyrand: a fast 64-bit generator, seeded per row.
#[derive(Clone, Debug)]
struct Rng(u64);

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Rng {
    fn new(seed: u64, tensor: u64, row: u64) -> Self {
        Rng(splitmix64(splitmix64(splitmix64(seed) ^ tensor) ^ row))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xA076_1D64_78BD_642F);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xE703_7ED1_A0B4_28DB);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    fn draw(&mut self, init: Init) -> f32 {
        let u = self.uniform();
        match init {
            Init::Centered(std) => (2.0 * u - 1.0) * std * 3f32.sqrt(),
            Init::Const(c) => c,
            Init::Range(lo, hi) => lo + u * (hi - lo),
            Init::SsmA => -(u * 16f32.ln()).exp(),
            Init::DtBias => {
                let (lo, hi) = (1e-3f64.ln(), 0.1f64.ln());
                let dt = (lo + f64::from(u) * (hi - lo)).exp().max(1e-4);
                (dt + (-(-dt).exp_m1()).ln()) as f32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_shape_is_known_and_described() {
        for name in SHAPES {
            let s = shape_of(name).unwrap();
            assert_eq!(s.name, *name);
            assert!(describe(name).unwrap().starts_with(name));
        }
        assert!(lookup("gpt-5")
            .unwrap_err()
            .to_string()
            .contains("mamba2-130m"));
    }

    #[test]
    fn parameter_counts_match_the_targets() {
        let params = |name: &str| -> u64 {
            plan(&shape_of(name).unwrap(), GgmlType::F16)
                .tensors
                .iter()
                .map(|(t, _)| t.n_elements())
                .sum()
        };
        let m = |name| params(name) as f64 / 1e6;
        assert!(
            (128.0..130.0).contains(&m("mamba2-130m")),
            "{}",
            m("mamba2-130m")
        );
        assert!(
            (134.0..136.0).contains(&m("llama-110m")),
            "{}",
            m("llama-110m")
        );
        assert!((50.0..60.0).contains(&m("doge-60m")), "{}", m("doge-60m"));
        assert!(
            (115.0..130.0).contains(&m("doge-120m-moe")),
            "{}",
            m("doge-120m-moe")
        );
        assert!(
            (110.0..130.0).contains(&m("cheems-120m")),
            "{}",
            m("cheems-120m")
        );
    }

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let c = byte_chars();
        assert_eq!(c[b' ' as usize], "Ġ");
        assert_eq!(c[b'\n' as usize], "Ċ");
        assert_eq!(c[b'a' as usize], "a");
        assert_eq!(c[0xAD], "Ń");
        let unique: std::collections::HashSet<_> = c.iter().collect();
        assert_eq!(unique.len(), 256);
    }

    #[test]
    fn initialisers_stay_in_range() {
        let mut r = Rng::new(1, 2, 3);
        for _ in 0..10_000 {
            let a = r.draw(Init::SsmA);
            assert!((-16.0..=-1.0).contains(&a), "{a}");
            let dt = r.draw(Init::DtBias);
            let sp = (1.0 + f64::from(dt).exp()).ln();
            assert!((0.9e-4..=0.11).contains(&sp), "{dt} {sp}");
            let w = r.draw(W);
            assert!(w.abs() <= STD * 3f32.sqrt());
        }
        let mean: f32 = (0..10_000).map(|_| r.draw(W)).sum::<f32>() / 10_000.0;
        assert!(mean.abs() < 1e-3);
    }
}
