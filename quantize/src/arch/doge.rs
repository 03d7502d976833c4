//! `DogeForCausalLM` → `doge` and `CheemsForCausalLM` → `cheems` (see `formats/FORMAT.md` for the
//! names). Both share the DMA attention, the FFN (dense MLP or CDMoE) and the residual scales;
//! Cheems' SSD layers are Mamba-2 mixers (`mamba2.rs`).
//!
//! Only the current Hugging Face Doge layout (transformers >= 4.54: `q_norm`/`k_norm`, `A` and
//! `dt_proj` per KV head) is converted. The older remote-code layout computes a different
//! function (no QK norm, a mask per query head) and is refused with a message saying so.

use anyhow::{bail, Result};
use serde_json::Value as Json;

use super::mamba2::Ssd;
use super::{Builder, Rope};
use crate::plan::{Class, ExpertLayout, PlannedTensor, Source};

/// Page alignment of files with expert tables (as `general.alignment`, so llama.cpp's GGUF
/// parser, which allows no other padding, still reads them): on-demand reads start on a page.
const EXPERT_ALIGN: u32 = 4096;

pub(super) fn build(b: &mut Builder<'_>, cheems: bool, layout: ExpertLayout) -> Result<()> {
    let cfg = b.cfg();
    let a = if cheems { "cheems" } else { "doge" };
    refuse_legacy(b, cheems)?;
    let d_model = cfg.usize("hidden_size")?;
    let n_layer = cfg.usize("num_hidden_layers")?;
    let n_ff = cfg.usize("intermediate_size")?;
    let n_head = cfg.usize("num_attention_heads")?;
    let n_head_kv = cfg.usize_or("num_key_value_heads", n_head)?;
    if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
        bail!("config.json: num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_head_kv}");
    }
    let head_dim = cfg.usize_or("head_dim", d_model / n_head)?;
    let max_pos = cfg.usize_or("max_position_embeddings", 2048)?;
    let keep_window = cfg.usize_or("keep_window_size", 2048)?;
    let eps = cfg.f64_or("rms_norm_eps", 1e-6)?;
    let tied = cfg.bool_or("tie_word_embeddings", cheems)?;
    if let Some(act) = cfg.opt_str("hidden_act") {
        if act != "silu" {
            bail!("config.json: hidden_act `{act}` is not supported (only silu)");
        }
    }
    if cfg.get("sliding_window").is_some() {
        bail!("config.json: sliding_window is set; DMA with a sliding window has no exact bounded cache and is not supported");
    }
    let is_moe = cfg.bool_or("is_moe", false)?;
    let (n_expert, n_expert_used) = if is_moe {
        (cfg.usize("num_experts")?, cfg.usize("num_experts_per_tok")?)
    } else {
        (0, 0)
    };
    let nk = (n_expert as f64).sqrt().floor() as usize;
    if is_moe && (nk == 0 || n_expert_used == 0 || n_expert_used > nk * nk) {
        bail!("config.json: num_experts {n_expert} / num_experts_per_tok {n_expert_used} do not form a product-key grid");
    }
    let rope = Rope::from_config(cfg)?;
    let layer_types = if cheems {
        cheems_layer_types(b, n_layer)?
    } else {
        vec!["dma"; n_layer]
    };

    b.embeddings(
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
        d_model,
        tied,
    )?;
    let md = &mut b.md;
    md.set(format!("{a}.vocab_size"), b.n_vocab as u32);
    md.set(format!("{a}.context_length"), max_pos as u32);
    md.set(format!("{a}.embedding_length"), d_model as u32);
    md.set(format!("{a}.block_count"), n_layer as u32);
    md.set(format!("{a}.feed_forward_length"), n_ff as u32);
    md.set(format!("{a}.attention.head_count"), n_head as u32);
    md.set(format!("{a}.attention.head_count_kv"), n_head_kv as u32);
    md.set(format!("{a}.attention.key_length"), head_dim as u32);
    md.set(format!("{a}.attention.value_length"), head_dim as u32);
    md.set(format!("{a}.attention.layer_norm_rms_epsilon"), eps as f32);
    md.set(
        format!("{a}.attention.keep_window_size"),
        keep_window as u32,
    );
    md.set(format!("{a}.rope.dimension_count"), head_dim as u32);
    rope.write(md, a, max_pos, &["default", "linear", "dynamic"])?;
    if is_moe {
        md.set("general.alignment", EXPERT_ALIGN);
        md.set(format!("{a}.expert_count"), n_expert as u32);
        md.set(format!("{a}.expert_used_count"), n_expert_used as u32);
        md.set(format!("{a}.expert_layout"), layout.name());
    }

    let ssd = if cheems {
        Some(cheems_ssd(b, d_model)?)
    } else {
        None
    };
    if let Some(ssd) = &ssd {
        let cfg = b.cfg();
        ssd.write(b, a);
        b.md.set(
            format!("{a}.ssm.chunk_size"),
            cfg.usize_or("ssm_chunk_size", 256)? as u32,
        );
        b.md.set(format!("{a}.ssm.rope"), cfg.bool_or("ssm_rope", true)?);
        b.md.set(
            format!("{a}.ssm.layer_norm_rms_epsilon"),
            cfg.f64_or("ssm_norm_eps", 1e-5)? as f32,
        );
        b.md.set(
            format!("{a}.layer_types"),
            layer_types
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        );
    }

    let (q_rows, kv_rows) = (n_head * head_dim, n_head_kv * head_dim);
    for (i, kind) in layer_types.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let g = |s: &str| format!("blk.{i}.{s}");
        b.add(
            g("attn_norm.weight"),
            &format!("{p}.input_layernorm.weight"),
            &[d_model],
            Class::Vector,
        )?;
        b.add(
            g("attn_residual.weight"),
            &format!("{p}.input_residual"),
            &[d_model],
            Class::Vector,
        )?;
        match (*kind, &ssd) {
            ("ssd", Some(ssd)) => ssd.layer(b, i, &format!("{p}.mixer"))?,
            _ => {
                let s = |n: &str| format!("{p}.self_attn.{n}");
                b.add(
                    g("attn_q.weight"),
                    &s("q_proj.weight"),
                    &[q_rows, d_model],
                    Class::Weight,
                )?;
                b.add(
                    g("attn_k.weight"),
                    &s("k_proj.weight"),
                    &[kv_rows, d_model],
                    Class::Weight,
                )?;
                b.add(
                    g("attn_v.weight"),
                    &s("v_proj.weight"),
                    &[kv_rows, d_model],
                    Class::Weight,
                )?;
                b.add_if_present(
                    g("attn_q.bias"),
                    &s("q_proj.bias"),
                    &[q_rows],
                    Class::Vector,
                )?;
                b.add_if_present(
                    g("attn_k.bias"),
                    &s("k_proj.bias"),
                    &[kv_rows],
                    Class::Vector,
                )?;
                b.add_if_present(
                    g("attn_v.bias"),
                    &s("v_proj.bias"),
                    &[kv_rows],
                    Class::Vector,
                )?;
                b.add(
                    g("attn_q_norm.weight"),
                    &s("q_norm.weight"),
                    &[head_dim],
                    Class::Vector,
                )?;
                b.add(
                    g("attn_k_norm.weight"),
                    &s("k_norm.weight"),
                    &[head_dim],
                    Class::Vector,
                )?;
                b.add(
                    g("attn_dt.weight"),
                    &s("dt_proj.weight"),
                    &[n_head_kv, kv_rows],
                    Class::Precise,
                )?;
                b.add_if_present(
                    g("attn_dt.bias"),
                    &s("dt_proj.bias"),
                    &[n_head_kv],
                    Class::Vector,
                )?;
                b.add(g("attn_a"), &s("A"), &[n_head_kv], Class::Vector)?;
                b.add(
                    g("attn_output.weight"),
                    &s("o_proj.weight"),
                    &[d_model, q_rows],
                    Class::Weight,
                )?;
                b.add_if_present(
                    g("attn_output.bias"),
                    &s("o_proj.bias"),
                    &[d_model],
                    Class::Vector,
                )?;
            }
        }
        b.add(
            g("ffn_norm.weight"),
            &format!("{p}.post_attention_layernorm.weight"),
            &[d_model],
            Class::Vector,
        )?;
        b.add(
            g("ffn_residual.weight"),
            &format!("{p}.post_attention_residual"),
            &[d_model],
            Class::Vector,
        )?;
        let m = |n: &str| format!("{p}.mlp.{n}");
        b.add(
            g("ffn_gate.weight"),
            &m("gate_proj.weight"),
            &[n_ff, d_model],
            Class::Weight,
        )?;
        b.add(
            g("ffn_up.weight"),
            &m("up_proj.weight"),
            &[n_ff, d_model],
            Class::Weight,
        )?;
        b.add(
            g("ffn_down.weight"),
            &m("down_proj.weight"),
            &[d_model, n_ff],
            Class::Weight,
        )?;
        b.add_if_present(
            g("ffn_gate.bias"),
            &m("gate_proj.bias"),
            &[n_ff],
            Class::Vector,
        )?;
        b.add_if_present(g("ffn_up.bias"), &m("up_proj.bias"), &[n_ff], Class::Vector)?;
        b.add_if_present(
            g("ffn_down.bias"),
            &m("down_proj.bias"),
            &[d_model],
            Class::Vector,
        )?;
        if is_moe {
            b.add(
                g("ffn_gate_inp.weight"),
                &m("router_gate.weight"),
                &[2 * nk, d_model],
                Class::Precise,
            )?;
            let (down, up) = (m("down_embed.weight"), m("up_embed.weight"));
            b.hf.tensor(&down, &[n_expert, d_model])?;
            b.hf.tensor(&up, &[n_expert, d_model])?;
            match layout {
                ExpertLayout::Records => b.tensors.push(PlannedTensor {
                    name: g("ffn_experts.weight"),
                    dims: vec![d_model as u64, 2, n_expert as u64],
                    class: Class::Experts,
                    source: Source::Records { down, up },
                    ty: cheems_formats::GgmlType::F32,
                }),
                ExpertLayout::Tables => {
                    for (name, src) in [
                        ("ffn_down_embed.weight", &down),
                        ("ffn_up_embed.weight", &up),
                    ] {
                        b.add(g(name), src, &[n_expert, d_model], Class::Experts)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Refuses the older remote-code Doge layouts, naming what differs.
fn refuse_legacy(b: &Builder<'_>, cheems: bool) -> Result<()> {
    let hf = b.hf;
    if hf.has("model.word_embed.weight") {
        bail!("this checkpoint uses the pre-June-2025 remote-code names (model.word_embed, pre_layernorm, ...); convert it with a transformers >= 4.54 Doge first or export the HF-native layout");
    }
    let n_layer = b.cfg().usize("num_hidden_layers")?;
    for i in 0..n_layer {
        let attn = format!("model.layers.{i}.self_attn");
        if !hf.has(&format!("{attn}.q_proj.weight")) {
            continue; // an SSD layer of a cheems model
        }
        if !hf.has(&format!("{attn}.q_norm.weight")) {
            let a_shape = hf.shape(&format!("{attn}.A")).map(|s| s.to_vec());
            bail!(
                "layer {i} has no q_norm/k_norm (A shape {a_shape:?}): this is the older remote-code {} layout, which computes a different function (no QK norm, a dynamic mask per query head); only the transformers-native layout (transformers >= 4.54) is supported",
                if cheems { "Cheems" } else { "Doge" }
            );
        }
    }
    Ok(())
}

fn cheems_layer_types(b: &Builder<'_>, n_layer: usize) -> Result<Vec<&'static str>> {
    let cfg = b.cfg();
    if let Some(list) = cfg.get("layer_types").and_then(Json::as_array) {
        if list.len() != n_layer {
            bail!(
                "config.json: layer_types has {} entries, num_hidden_layers is {n_layer}",
                list.len()
            );
        }
        return list
            .iter()
            .map(|v| match v.as_str() {
                Some("ssd") => Ok("ssd"),
                Some("dma") => Ok("dma"),
                _ => bail!("config.json: layer_types entry {v} is neither \"ssd\" nor \"dma\""),
            })
            .collect();
    }
    let period = cfg.usize_or("attn_layer_period", 8)?;
    let offset = cfg.usize_or("attn_layer_offset", 7)?;
    if period == 0 {
        bail!("config.json: attn_layer_period must be positive");
    }
    Ok((0..n_layer)
        .map(|i| if i % period == offset { "dma" } else { "ssd" })
        .collect())
}

fn cheems_ssd(b: &Builder<'_>, d_model: usize) -> Result<Ssd> {
    let cfg = b.cfg();
    let n_head = cfg.usize("ssm_num_heads")?;
    let head_dim = cfg.usize_or("ssm_head_dim", 64)?;
    let ssd = Ssd {
        d_model,
        d_inner: n_head * head_dim,
        d_state: cfg.usize_or("ssm_state_size", 128)?,
        n_group: cfg.usize_or("ssm_n_groups", 1)?,
        n_head,
        d_conv: cfg.usize_or("ssm_conv_kernel", 4)?,
    };
    ssd.validate()?;
    Ok(ssd)
}
