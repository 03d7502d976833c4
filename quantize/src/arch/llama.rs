//! `LlamaForCausalLM` → `llama`, exactly as llama.cpp's converter writes it: its tensor names and
//! keys, Q and K rows permuted for adjacent-pair RoPE, llama3 RoPE as a `rope_freqs` tensor.

use anyhow::{bail, Result};
use serde_json::Value as Json;

use super::{Builder, Rope};
use crate::plan::{Class, Transform};

pub(super) fn build(b: &mut Builder<'_>) -> Result<()> {
    let cfg = b.cfg();
    let d_model = cfg.usize("hidden_size")?;
    let n_layer = cfg.usize("num_hidden_layers")?;
    let n_ff = cfg.usize("intermediate_size")?;
    let n_head = cfg.usize("num_attention_heads")?;
    let n_head_kv = cfg.usize_or("num_key_value_heads", n_head)?;
    if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
        bail!("config.json: num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_head_kv}");
    }
    let head_dim = cfg.usize_or("head_dim", d_model / n_head)?;
    if head_dim % 2 != 0 {
        bail!("config.json: head_dim {head_dim} must be even for RoPE");
    }
    let max_pos = cfg.usize_or("max_position_embeddings", 2048)?;
    let eps = cfg.f64_or("rms_norm_eps", 1e-6)?;
    if let Some(act) = cfg.opt_str("hidden_act") {
        if act != "silu" {
            bail!("config.json: hidden_act `{act}` is not supported (only silu)");
        }
    }
    let rope = Rope::from_config(cfg)?;
    let tied = cfg.bool_or("tie_word_embeddings", false)?;

    b.embeddings(
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
        d_model,
        tied,
    )?;
    let a = "llama";
    let md = &mut b.md;
    md.set(format!("{a}.vocab_size"), b.n_vocab as u32);
    md.set(format!("{a}.context_length"), max_pos as u32);
    md.set(format!("{a}.embedding_length"), d_model as u32);
    md.set(format!("{a}.block_count"), n_layer as u32);
    md.set(format!("{a}.feed_forward_length"), n_ff as u32);
    md.set(format!("{a}.rope.dimension_count"), head_dim as u32);
    md.set(format!("{a}.attention.head_count"), n_head as u32);
    md.set(format!("{a}.attention.head_count_kv"), n_head_kv as u32);
    md.set(format!("{a}.attention.layer_norm_rms_epsilon"), eps as f32);
    if head_dim != d_model / n_head {
        md.set(format!("{a}.attention.key_length"), head_dim as u32);
        md.set(format!("{a}.attention.value_length"), head_dim as u32);
    }
    rope.write(md, a, max_pos, &["default", "linear", "llama3"])?;
    if rope.kind == "llama3" {
        b.add_values("rope_freqs.weight", llama3_rope_factors(&rope, head_dim));
    }

    let (q_rows, kv_rows) = (n_head * head_dim, n_head_kv * head_dim);
    for i in 0..n_layer {
        let p = format!("model.layers.{i}");
        let g = |s: &str| format!("blk.{i}.{s}");
        b.add(
            g("attn_norm.weight"),
            &format!("{p}.input_layernorm.weight"),
            &[d_model],
            Class::Vector,
        )?;
        for (proj, rows, heads) in [("q", q_rows, n_head), ("k", kv_rows, n_head_kv)] {
            let w = format!("{p}.self_attn.{proj}_proj.weight");
            let dims = vec![d_model as u64, rows as u64];
            let t = Transform::RopePermute { n_head: heads };
            b.add_as(
                g(&format!("attn_{proj}.weight")),
                &w,
                &[rows, d_model],
                dims,
                Class::Weight,
                t.clone(),
            )?;
            let bias = format!("{p}.self_attn.{proj}_proj.bias");
            if b.hf.has(&bias) {
                b.add_as(
                    g(&format!("attn_{proj}.bias")),
                    &bias,
                    &[rows],
                    vec![rows as u64],
                    Class::Vector,
                    t,
                )?;
            }
        }
        b.add(
            g("attn_v.weight"),
            &format!("{p}.self_attn.v_proj.weight"),
            &[kv_rows, d_model],
            Class::Weight,
        )?;
        b.add_if_present(
            g("attn_v.bias"),
            &format!("{p}.self_attn.v_proj.bias"),
            &[kv_rows],
            Class::Vector,
        )?;
        b.add(
            g("attn_output.weight"),
            &format!("{p}.self_attn.o_proj.weight"),
            &[d_model, q_rows],
            Class::Weight,
        )?;
        b.add_if_present(
            g("attn_output.bias"),
            &format!("{p}.self_attn.o_proj.bias"),
            &[d_model],
            Class::Vector,
        )?;
        b.add(
            g("ffn_norm.weight"),
            &format!("{p}.post_attention_layernorm.weight"),
            &[d_model],
            Class::Vector,
        )?;
        b.add(
            g("ffn_gate.weight"),
            &format!("{p}.mlp.gate_proj.weight"),
            &[n_ff, d_model],
            Class::Weight,
        )?;
        b.add(
            g("ffn_up.weight"),
            &format!("{p}.mlp.up_proj.weight"),
            &[n_ff, d_model],
            Class::Weight,
        )?;
        b.add(
            g("ffn_down.weight"),
            &format!("{p}.mlp.down_proj.weight"),
            &[d_model, n_ff],
            Class::Weight,
        )?;
    }
    Ok(())
}

/// The per-frequency divisors of llama3 RoPE scaling, as llama.cpp's converter computes them.
fn llama3_rope_factors(rope: &Rope, head_dim: usize) -> Vec<f32> {
    let p = &rope.params;
    let get = |k: &str, d: f64| p.get(k).and_then(Json::as_f64).unwrap_or(d);
    let factor = get("factor", 8.0);
    let low = get("low_freq_factor", 1.0);
    let high = get("high_freq_factor", 4.0);
    let old_ctx = get("original_max_position_embeddings", 8192.0);
    let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / rope.theta.powf((2 * i) as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}
