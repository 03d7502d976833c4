//! `Mamba2ForCausalLM` (Hugging Face names) and `mamba_ssm` checkpoints (original names and
//! config) → `mamba2`, exactly as llama.cpp's converter writes it: `ssm_a = -exp(A_log)` as
//! `[1, n_head]`, `ssm_d` as `[1, n_head]`, the conv weight squeezed to `[kernel, conv_dim]`, the
//! gated norm as `[d_inner/G, G]` when `G > 1`. The SSD mixer mapping is shared with `cheems`.

use anyhow::{bail, Result};
use serde_json::Value as Json;

use super::Builder;
use crate::hf::Config;
use crate::plan::{Class, Transform};

/// Shape of an SSD mixer.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ssd {
    pub d_model: usize,
    pub d_inner: usize,
    pub d_state: usize,
    pub n_group: usize,
    pub n_head: usize,
    pub d_conv: usize,
}

impl Ssd {
    pub fn conv_dim(&self) -> usize {
        self.d_inner + 2 * self.n_group * self.d_state
    }

    pub fn in_proj_rows(&self) -> usize {
        2 * self.d_inner + 2 * self.n_group * self.d_state + self.n_head
    }

    pub fn validate(&self) -> Result<()> {
        let s = self;
        if s.n_head == 0 || s.n_group == 0 || !s.d_inner.is_multiple_of(s.n_head) {
            bail!(
                "SSD: d_inner {} is not a multiple of the head count {}",
                s.d_inner,
                s.n_head
            );
        }
        if !s.n_head.is_multiple_of(s.n_group) || !s.d_inner.is_multiple_of(s.n_group) {
            bail!(
                "SSD: head count {} and d_inner {} must be multiples of n_groups {}",
                s.n_head,
                s.d_inner,
                s.n_group
            );
        }
        if s.d_conv == 0 {
            bail!("SSD: conv kernel must be at least 1");
        }
        Ok(())
    }

    /// Writes the `<arch>.ssm.*` keys llama.cpp reads.
    pub fn write(&self, b: &mut Builder<'_>, arch: &str) {
        let md = &mut b.md;
        md.set(format!("{arch}.ssm.conv_kernel"), self.d_conv as u32);
        md.set(format!("{arch}.ssm.inner_size"), self.d_inner as u32);
        md.set(format!("{arch}.ssm.state_size"), self.d_state as u32);
        md.set(format!("{arch}.ssm.time_step_rank"), self.n_head as u32);
        md.set(format!("{arch}.ssm.group_count"), self.n_group as u32);
    }

    /// The mixer tensors of layer `i`, read from `<prefix>.{in_proj,conv1d,...}`.
    pub fn layer(&self, b: &mut Builder<'_>, i: usize, prefix: &str) -> Result<()> {
        let s = *self;
        let g = |n: &str| format!("blk.{i}.{n}");
        let h = |n: &str| format!("{prefix}.{n}");
        let (nh, cd) = (s.n_head as u64, s.conv_dim());
        b.add(
            g("ssm_in.weight"),
            &h("in_proj.weight"),
            &[s.in_proj_rows(), s.d_model],
            Class::Weight,
        )?;
        b.add_if_present(
            g("ssm_in.bias"),
            &h("in_proj.bias"),
            &[s.in_proj_rows()],
            Class::Vector,
        )?;
        let conv_dims = vec![s.d_conv as u64, cd as u64];
        b.add_as(
            g("ssm_conv1d.weight"),
            &h("conv1d.weight"),
            &[cd, 1, s.d_conv],
            conv_dims,
            Class::Precise,
            Transform::None,
        )?;
        b.add_if_present(
            g("ssm_conv1d.bias"),
            &h("conv1d.bias"),
            &[cd],
            Class::Vector,
        )?;
        b.add(g("ssm_dt.bias"), &h("dt_bias"), &[s.n_head], Class::Vector)?;
        b.add_as(
            g("ssm_a"),
            &h("A_log"),
            &[s.n_head],
            vec![1, nh],
            Class::Precise,
            Transform::NegExp,
        )?;
        b.add_as(
            g("ssm_d"),
            &h("D"),
            &[s.n_head],
            vec![1, nh],
            Class::Precise,
            Transform::None,
        )?;
        let norm_dims = if s.n_group > 1 {
            vec![(s.d_inner / s.n_group) as u64, s.n_group as u64]
        } else {
            vec![s.d_inner as u64]
        };
        b.add_as(
            g("ssm_norm.weight"),
            &h("norm.weight"),
            &[s.d_inner],
            norm_dims,
            Class::Vector,
            Transform::None,
        )?;
        b.add(
            g("ssm_out.weight"),
            &h("out_proj.weight"),
            &[s.d_model, s.d_inner],
            Class::Weight,
        )?;
        b.add_if_present(
            g("ssm_out.bias"),
            &h("out_proj.bias"),
            &[s.d_model],
            Class::Vector,
        )?;
        Ok(())
    }
}

pub(super) fn build(b: &mut Builder<'_>) -> Result<()> {
    let cfg = b.cfg();
    // mamba_ssm's config.json keeps the mixer's arguments under `ssm_cfg`.
    let ssm_cfg = cfg.get("ssm_cfg").cloned().unwrap_or(Json::Null);
    let sub = Config(&ssm_cfg);
    let is_ssm_names = cfg.get("d_model").is_some();
    let first = |hf: &str, ssm: &str, sub_key: bool| -> Result<Option<usize>> {
        if let Some(v) = cfg.opt_usize(hf)? {
            return Ok(Some(v));
        }
        if sub_key {
            if let Some(v) = sub.opt_usize(ssm)? {
                return Ok(Some(v));
            }
        }
        cfg.opt_usize(ssm)
    };
    let d_model = first("hidden_size", "d_model", false)?
        .ok_or_else(|| anyhow::anyhow!("config.json has neither `hidden_size` nor `d_model`"))?;
    let n_layer = first("num_hidden_layers", "n_layer", false)?.ok_or_else(|| {
        anyhow::anyhow!("config.json has neither `num_hidden_layers` nor `n_layer`")
    })?;
    if let Some(layer) = sub.opt_str("layer") {
        if layer != "Mamba2" {
            bail!("mamba_ssm config: ssm_cfg.layer is `{layer}`; only Mamba2 is supported");
        }
    }
    if cfg.usize_or("d_intermediate", 0)? != 0 {
        bail!("mamba_ssm config: d_intermediate > 0 (an MLP after each mixer) is not supported");
    }
    if cfg
        .get("attn_layer_idx")
        .and_then(Json::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        bail!("mamba_ssm config: attention layers (attn_layer_idx) are not supported");
    }
    let d_state = first("state_size", "d_state", true)?.unwrap_or(128);
    let head_dim = first("head_dim", "headdim", true)?.unwrap_or(64);
    let expand = first("expand", "expand", true)?.unwrap_or(2);
    let n_group = first("n_groups", "ngroups", true)?.unwrap_or(1);
    let d_conv = first("conv_kernel", "d_conv", true)?.unwrap_or(4);
    let d_inner = expand * d_model;
    if head_dim == 0 || d_inner % head_dim != 0 {
        bail!("config.json: d_inner {d_inner} is not a multiple of head_dim {head_dim}");
    }
    let n_head = cfg.opt_usize("num_heads")?.unwrap_or(d_inner / head_dim);
    if n_head * head_dim != d_inner {
        bail!("config.json: num_heads {n_head} x head_dim {head_dim} != expand x hidden_size = {d_inner}");
    }
    if let Some(limit) = cfg.get("time_step_limit").and_then(Json::as_array) {
        let lo = limit.first().and_then(Json::as_f64).unwrap_or(0.0);
        let hi = limit.get(1).and_then(Json::as_f64);
        if lo != 0.0 || hi.is_some_and(f64::is_finite) {
            bail!("config.json: time_step_limit {limit:?} is not supported (only (0, inf))");
        }
    }
    let eps = cfg
        .opt_f64("layer_norm_epsilon")?
        .or(cfg.opt_f64("rms_norm_eps")?)
        .unwrap_or(1e-5);
    let tied = if is_ssm_names {
        cfg.bool_or("tie_embeddings", true)?
    } else {
        cfg.bool_or("tie_word_embeddings", false)? || !b.hf.has("lm_head.weight")
    };
    let ssd = Ssd {
        d_model,
        d_inner,
        d_state,
        n_group,
        n_head,
        d_conv,
    };
    ssd.validate()?;

    let embed = if b.hf.has("backbone.embedding.weight") {
        "backbone.embedding.weight"
    } else {
        "backbone.embeddings.weight"
    };
    b.embeddings(
        embed,
        "backbone.norm_f.weight",
        "lm_head.weight",
        d_model,
        tied,
    )?;
    let a = "mamba2";
    b.md.set(format!("{a}.vocab_size"), b.n_vocab as u32);
    b.md.set(format!("{a}.context_length"), 1u32 << 20);
    b.md.set(format!("{a}.embedding_length"), d_model as u32);
    b.md.set(format!("{a}.feed_forward_length"), 0u32);
    b.md.set(format!("{a}.attention.head_count"), 0u32);
    b.md.set(format!("{a}.block_count"), n_layer as u32);
    ssd.write(b, a);
    b.md.set(format!("{a}.attention.layer_norm_rms_epsilon"), eps as f32);
    for i in 0..n_layer {
        let p = format!("backbone.layers.{i}");
        b.add(
            format!("blk.{i}.attn_norm.weight"),
            &format!("{p}.norm.weight"),
            &[d_model],
            Class::Vector,
        )?;
        ssd.layer(b, i, &format!("{p}.mixer"))?;
    }
    Ok(())
}
