//! Hyper-parameters of a model, read from the file's metadata (`formats/FORMAT.md` lists the
//! keys per architecture). Everything the engine sizes or branches on is here, validated once.

use anyhow::{bail, Context, Result};
use cheems_formats::gguf::Metadata;

/// The architectures cheems runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mamba2,
    Doge,
    Cheems,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mamba2 => "mamba2",
            Arch::Doge => "doge",
            Arch::Cheems => "cheems",
        }
    }
}

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopePairing {
    /// `(i, i + D/2)`: Hugging Face's `rotate_half` (doge, cheems).
    Halves,
    /// `(2i, 2i + 1)`: llama.cpp's `llama` files (Q/K rows permuted by the converter).
    Adjacent,
}

/// RoPE settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub theta: f32,
    /// Rotated dimensions (the head size).
    pub dim: usize,
    pub pairing: RopePairing,
    /// Linear position scaling (positions divided by it).
    pub linear_factor: f32,
    /// Doge's dynamic NTK: (factor, original context). See `rope.rs`.
    pub dynamic: Option<(f32, usize)>,
}

/// The layer kinds of a hybrid stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// Plain causal grouped-query attention (llama).
    Attention,
    /// Dynamic Mask Attention (doge, cheems).
    Dma,
    /// Mamba-2 SSD mixer.
    Ssd,
}

/// Shape of the SSD mixers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SsdConfig {
    pub d_inner: usize,
    pub d_state: usize,
    pub n_groups: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    pub d_conv: usize,
    /// ε of the gated RMSNorm.
    pub norm_eps: f32,
    /// Rotate B and C with RoPE (cheems).
    pub rope: bool,
}

impl SsdConfig {
    pub fn conv_dim(&self) -> usize {
        self.d_inner + 2 * self.n_groups * self.d_state
    }

    pub fn in_proj_rows(&self) -> usize {
        2 * self.d_inner + 2 * self.n_groups * self.d_state + self.n_heads
    }
}

/// Every hyper-parameter the engine uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub arch: Arch,
    pub n_vocab: usize,
    pub d_model: usize,
    pub n_layers: usize,
    /// Kind of each layer's mixer.
    pub layer_kinds: Vec<LayerKind>,
    /// Width of the MLP (0: no FFN sublayer, as mamba2).
    pub d_ff: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub norm_eps: f32,
    pub context_length: usize,
    pub rope: Option<Rope>,
    /// DMA's bounded cache size per KV head.
    pub keep_window: usize,
    pub ssd: Option<SsdConfig>,
    /// CDMoE: (experts, experts used per token); 0 when the FFN is a dense MLP.
    pub n_experts: usize,
    pub n_experts_used: usize,
    /// Doge-style residual scales on the skip paths.
    pub residual_scales: bool,
}

impl Config {
    /// Reads and checks the hyper-parameters of a file.
    pub fn from_metadata(md: &Metadata) -> Result<Self> {
        let arch_name = md.get_str("general.architecture")?;
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "mamba2" => Arch::Mamba2,
            "doge" => Arch::Doge,
            "cheems" => Arch::Cheems,
            other => bail!(
                "unsupported architecture `{other}` (cheems runs llama, mamba2, doge and cheems)"
            ),
        };
        let a = arch.name();
        let key = |k: &str| format!("{a}.{k}");
        let u = |k: &str| md.get_usize(&key(k)).with_context(|| format!("{a} model"));
        let d_model = u("embedding_length")?;
        let n_layers = u("block_count")?;
        let n_vocab = match md.opt_usize(&key("vocab_size"))? {
            Some(v) => v,
            None => md
                .get_str_array("tokenizer.ggml.tokens")
                .map(|t| t.len())
                .unwrap_or(0),
        };
        let mut c = Config {
            arch,
            n_vocab,
            d_model,
            n_layers,
            layer_kinds: Vec::new(),
            d_ff: md.opt_usize(&key("feed_forward_length"))?.unwrap_or(0),
            n_heads: md.opt_usize(&key("attention.head_count"))?.unwrap_or(0),
            n_kv_heads: 0,
            head_dim: 0,
            norm_eps: md
                .opt_f32(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
            context_length: md.opt_usize(&key("context_length"))?.unwrap_or(2048),
            rope: None,
            keep_window: 0,
            ssd: None,
            n_experts: md.opt_usize(&key("expert_count"))?.unwrap_or(0),
            n_experts_used: md.opt_usize(&key("expert_used_count"))?.unwrap_or(0),
            residual_scales: matches!(arch, Arch::Doge | Arch::Cheems),
        };
        if c.n_heads > 0 {
            c.n_kv_heads = md
                .opt_usize(&key("attention.head_count_kv"))?
                .unwrap_or(c.n_heads);
            c.head_dim = md
                .opt_usize(&key("attention.key_length"))?
                .or(md.opt_usize(&key("rope.dimension_count"))?)
                .unwrap_or(d_model / c.n_heads);
            if c.n_kv_heads == 0 || !c.n_heads.is_multiple_of(c.n_kv_heads) {
                bail!(
                    "{a}: {} attention heads are not a multiple of {} KV heads",
                    c.n_heads,
                    c.n_kv_heads
                );
            }
            let scaling = md.opt_str(&key("rope.scaling.type"))?.unwrap_or("none");
            let factor = md.opt_f32(&key("rope.scaling.factor"))?.unwrap_or(1.0);
            let orig = md
                .opt_usize(&key("rope.scaling.original_context_length"))?
                .unwrap_or(c.context_length);
            c.rope = Some(Rope {
                theta: md.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0),
                dim: md
                    .opt_usize(&key("rope.dimension_count"))?
                    .unwrap_or(c.head_dim),
                pairing: if arch == Arch::Llama {
                    RopePairing::Adjacent
                } else {
                    RopePairing::Halves
                },
                linear_factor: if scaling == "linear" { factor } else { 1.0 },
                dynamic: (scaling == "dynamic").then_some((factor, orig)),
            });
            if !matches!(scaling, "none" | "linear" | "dynamic") {
                bail!("{a}: RoPE scaling `{scaling}` is not supported");
            }
        }
        if matches!(arch, Arch::Mamba2 | Arch::Cheems) {
            let d_inner = u("ssm.inner_size")?;
            let n_heads = u("ssm.time_step_rank")?;
            let n_groups = md.opt_usize(&key("ssm.group_count"))?.unwrap_or(1);
            if n_heads == 0 || d_inner % n_heads != 0 || n_groups == 0 || n_heads % n_groups != 0 {
                bail!("{a}: SSD inner size {d_inner}, heads {n_heads} and groups {n_groups} do not divide");
            }
            c.ssd = Some(SsdConfig {
                d_inner,
                d_state: u("ssm.state_size")?,
                n_groups,
                n_heads,
                head_dim: d_inner / n_heads,
                d_conv: u("ssm.conv_kernel")?,
                norm_eps: if arch == Arch::Cheems {
                    md.opt_f32(&key("ssm.layer_norm_rms_epsilon"))?
                        .unwrap_or(1e-5)
                } else {
                    c.norm_eps
                },
                rope: arch == Arch::Cheems && md.opt_bool(&key("ssm.rope"))?.unwrap_or(true),
            });
        }
        c.layer_kinds = match arch {
            Arch::Llama => vec![LayerKind::Attention; n_layers],
            Arch::Mamba2 => vec![LayerKind::Ssd; n_layers],
            Arch::Doge => vec![LayerKind::Dma; n_layers],
            Arch::Cheems => {
                let types = md.get_str_array(&key("layer_types"))?;
                if types.len() != n_layers {
                    bail!("cheems: {} layer types for {n_layers} layers", types.len());
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "ssd" => Ok(LayerKind::Ssd),
                        "dma" => Ok(LayerKind::Dma),
                        other => bail!("cheems: unknown layer type `{other}`"),
                    })
                    .collect::<Result<_>>()?
            }
        };
        if matches!(arch, Arch::Doge | Arch::Cheems) {
            c.keep_window = md
                .opt_usize(&key("attention.keep_window_size"))?
                .unwrap_or(2048);
            if c.keep_window == 0 {
                bail!("{a}: keep_window_size must be positive");
            }
        }
        if c.n_experts > 0 {
            let nk = (c.n_experts as f64).sqrt() as usize;
            if c.n_experts_used == 0 || c.n_experts_used > nk * nk {
                bail!(
                    "{a}: {} experts used of a {nk}x{nk} product-key grid is not supported",
                    c.n_experts_used
                );
            }
        }
        if d_model == 0 || n_layers == 0 || c.n_vocab == 0 {
            bail!("{a}: embedding_length, block_count and the vocabulary must be positive");
        }
        Ok(c)
    }

    /// Side of the CDMoE product-key grid (`⌊√E⌋`).
    pub fn n_keys(&self) -> usize {
        (self.n_experts as f64).sqrt() as usize
    }
}
