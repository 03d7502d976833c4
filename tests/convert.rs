//! Converting the tiny fixture checkpoints (made with transformers by
//! `tests/fixtures/make_fixtures.py`) with every weight type: the file's hyper-parameters match
//! config.json, every tensor's values match the checkpoint (exactly at F32, within the type's
//! bound when quantized), and the llama.cpp conventions (Q/K permutation, `-exp(A_log)`, squeezed
//! conv) and the expert records hold. Reading with the independent `gguf` Python package is
//! checked by `tests/interop/check_converted.py` in CI.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use cheems_formats::blocks::dequantize_row;
use cheems_formats::gguf::GgufFile;
use cheems_formats::safetensors::Checkpoint;
use cheems_formats::GgmlType;
use cheems_quantize::plan::{Source, Transform, WEIGHT_TYPES};
use cheems_quantize::{ExpertLayout, Options};
use serde_json::Value as Json;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn config(name: &str) -> Json {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("config.json")).unwrap())
        .unwrap()
}

fn convert(name: &str, opts: &Options) -> (tempfile::TempDir, GgufFile) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(format!("{name}.gguf"));
    cheems_quantize::convert(&fixture(name), &out, opts, 2, false).unwrap();
    let f = GgufFile::open(&out).unwrap();
    (dir, f)
}

fn dequant(f: &GgufFile, name: &str) -> Vec<f32> {
    let t = f.tensor(name).unwrap_or_else(|| panic!("no tensor {name}"));
    let mut out = vec![0f32; t.n_elements() as usize];
    dequantize_row(t.ggml_type, f.tensor_data(t), &mut out).unwrap();
    out
}

fn source(ck: &Checkpoint, name: &str) -> Vec<f32> {
    let (file, t) = ck
        .get(name)
        .unwrap_or_else(|| panic!("no checkpoint tensor {name}"));
    let mut out = vec![0f32; t.n_elements()];
    file.read_f32(t, 0, &mut out, &mut Vec::new()).unwrap();
    out
}

/// Checks `<arch>.<key>` against config.json values, key by key.
fn check_hparams(f: &GgufFile, arch: &str, cfg: &Json, pairs: &[(&str, &str)]) {
    let md = f.metadata();
    assert_eq!(md.get_str("general.architecture").unwrap(), arch);
    for (gkey, ckey) in pairs {
        let want = cfg[*ckey]
            .as_u64()
            .unwrap_or_else(|| panic!("config.json {ckey}"));
        let got = md.get_u64(&format!("{arch}.{gkey}")).unwrap();
        assert_eq!(got, want, "{arch}.{gkey} vs config.json {ckey}");
    }
}

#[test]
fn hyper_parameters_match_config_json() {
    let opts = Options::new(GgmlType::Q8_0);
    let c = config("llama");
    let (_d, f) = convert("llama", &opts);
    check_hparams(
        &f,
        "llama",
        &c,
        &[
            ("embedding_length", "hidden_size"),
            ("block_count", "num_hidden_layers"),
            ("feed_forward_length", "intermediate_size"),
            ("attention.head_count", "num_attention_heads"),
            ("attention.head_count_kv", "num_key_value_heads"),
            ("context_length", "max_position_embeddings"),
            ("vocab_size", "vocab_size"),
        ],
    );
    let head_dim = c["hidden_size"].as_u64().unwrap() / c["num_attention_heads"].as_u64().unwrap();
    assert_eq!(
        f.metadata().get_u64("llama.rope.dimension_count").unwrap(),
        head_dim
    );
    assert!(
        f.tensor("output.weight").is_some(),
        "the llama fixture is untied"
    );

    let c = config("mamba2");
    let (_d, f) = convert("mamba2", &opts);
    check_hparams(
        &f,
        "mamba2",
        &c,
        &[
            ("embedding_length", "hidden_size"),
            ("block_count", "num_hidden_layers"),
            ("ssm.state_size", "state_size"),
            ("ssm.group_count", "n_groups"),
            ("ssm.conv_kernel", "conv_kernel"),
            ("ssm.time_step_rank", "num_heads"),
        ],
    );
    let d_inner = c["expand"].as_u64().unwrap() * c["hidden_size"].as_u64().unwrap();
    assert_eq!(
        f.metadata().get_u64("mamba2.ssm.inner_size").unwrap(),
        d_inner
    );
    assert!(
        f.tensor("output.weight").is_none(),
        "the mamba2 fixture is tied"
    );

    for (name, arch) in [("doge", "doge"), ("doge_moe", "doge"), ("cheems", "cheems")] {
        let c = config(name);
        let (_d, f) = convert(name, &opts);
        check_hparams(
            &f,
            arch,
            &c,
            &[
                ("embedding_length", "hidden_size"),
                ("block_count", "num_hidden_layers"),
                ("feed_forward_length", "intermediate_size"),
                ("attention.head_count", "num_attention_heads"),
                ("attention.head_count_kv", "num_key_value_heads"),
                ("attention.keep_window_size", "keep_window_size"),
            ],
        );
        let md = f.metadata();
        if c["is_moe"].as_bool().unwrap_or(false) {
            check_hparams(
                &f,
                arch,
                &c,
                &[
                    ("expert_count", "num_experts"),
                    ("expert_used_count", "num_experts_per_tok"),
                ],
            );
            assert_eq!(
                md.get_str(&format!("{arch}.expert_layout")).unwrap(),
                "records"
            );
        }
        if arch == "cheems" {
            check_hparams(
                &f,
                arch,
                &c,
                &[
                    ("ssm.state_size", "ssm_state_size"),
                    ("ssm.group_count", "ssm_n_groups"),
                    ("ssm.time_step_rank", "ssm_num_heads"),
                    ("ssm.conv_kernel", "ssm_conv_kernel"),
                ],
            );
            let types: Vec<String> = c["layer_types"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            assert_eq!(
                md.get_str_array("cheems.layer_types").unwrap(),
                types.as_slice()
            );
            for (i, t) in types.iter().enumerate() {
                let has_ssm = f.tensor(&format!("blk.{i}.ssm_in.weight")).is_some();
                let has_attn = f.tensor(&format!("blk.{i}.attn_q.weight")).is_some();
                assert_eq!(
                    (has_ssm, has_attn),
                    (t == "ssd", t == "dma"),
                    "layer {i} is {t}"
                );
            }
        }
        // Tokenizer and template travel in the file.
        assert!(md
            .get_str("tokenizer.huggingface.json")
            .unwrap()
            .contains("\"model\""));
        assert!(md.get_str("tokenizer.chat_template").is_ok());
        assert_eq!(md.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
        let n_vocab = md.get_u64(&format!("{arch}.vocab_size")).unwrap() as usize;
        assert_eq!(
            md.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
            n_vocab
        );
    }
}

/// Every tensor of an F32 conversion equals its checkpoint source bit for bit, through the
/// transform the plan names; the transforms themselves are checked against hand-written
/// definitions below.
#[test]
fn f32_conversion_is_exact_for_every_tensor() {
    for name in [
        "llama",
        "mamba2",
        "mamba2_ssm",
        "doge",
        "doge_moe",
        "cheems",
    ] {
        let opts = Options::new(GgmlType::F32);
        let hf = cheems_quantize::hf::HfDir::open(&fixture(name)).unwrap();
        let plan = cheems_quantize::plan_dir(&hf, &opts).unwrap();
        let (_d, f) = convert(name, &opts);
        assert_eq!(f.tensors().len(), plan.tensors.len());
        for t in &plan.tensors {
            let got = dequant(&f, &t.name);
            let want = match &t.source {
                Source::Tensor { name, transform } => {
                    let v = source(&hf.weights, name);
                    match transform {
                        Transform::None => v,
                        Transform::NegExp => {
                            v.iter().map(|&x| -(f64::from(x).exp()) as f32).collect()
                        }
                        Transform::RopePermute { n_head } => {
                            llama_cpp_permute(&v, *n_head, t.dims.get(1).map_or(1, |_| t.row_len()))
                        }
                    }
                }
                Source::Records { down, up } => {
                    let (d, u) = (source(&hf.weights, down), source(&hf.weights, up));
                    let h = t.row_len();
                    d.chunks(h)
                        .zip(u.chunks(h))
                        .flat_map(|(a, b)| a.iter().chain(b).copied())
                        .collect()
                }
                Source::Values(v) => v.clone(),
            };
            assert_eq!(got.len(), want.len(), "{name}: {}", t.name);
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{name}: tensor {} differs from its source", t.name);
        }
    }
}

/// llama.cpp's `permute`: reshape(n_head, 2, rows/n_head/2, inner).swapaxes(1, 2).
fn llama_cpp_permute(v: &[f32], n_head: usize, inner: usize) -> Vec<f32> {
    let rows = v.len() / inner;
    let half = rows / n_head / 2;
    let mut out = vec![0f32; v.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                let src = h * 2 * half + j * half + i;
                let dst = h * 2 * half + i * 2 + j;
                out[dst * inner..(dst + 1) * inner]
                    .copy_from_slice(&v[src * inner..(src + 1) * inner]);
            }
        }
    }
    out
}

#[test]
fn llama_cpp_conventions_hold() {
    let opts = Options::new(GgmlType::F32);
    // llama: Q and K rows are permuted per head, V is not.
    let c = config("llama");
    let hf = Checkpoint::open(&fixture("llama")).unwrap();
    let (_d, f) = convert("llama", &opts);
    let n_head = c["num_attention_heads"].as_u64().unwrap() as usize;
    let n_kv = c["num_key_value_heads"].as_u64().unwrap() as usize;
    let h = c["hidden_size"].as_u64().unwrap() as usize;
    let q = source(&hf, "model.layers.0.self_attn.q_proj.weight");
    let got = dequant(&f, "blk.0.attn_q.weight");
    assert_ne!(got, q, "Q must be permuted");
    assert_eq!(got, llama_cpp_permute(&q, n_head, h));
    let k = source(&hf, "model.layers.1.self_attn.k_proj.weight");
    assert_eq!(
        dequant(&f, "blk.1.attn_k.weight"),
        llama_cpp_permute(&k, n_kv, h)
    );
    assert_eq!(
        dequant(&f, "blk.0.attn_v.weight"),
        source(&hf, "model.layers.0.self_attn.v_proj.weight")
    );

    // mamba2: ssm_a = -exp(A_log) as [1, nh]; conv squeezed to [W, conv_dim]; the mamba_ssm copy
    // of the same weights gives the same file data.
    let hf = Checkpoint::open(&fixture("mamba2")).unwrap();
    let (_d, f) = convert("mamba2", &opts);
    let a_log = source(&hf, "backbone.layers.0.mixer.A_log");
    let a = dequant(&f, "blk.0.ssm_a");
    assert_eq!(
        a,
        a_log
            .iter()
            .map(|&x| -(f64::from(x).exp()) as f32)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        f.tensor("blk.0.ssm_a").unwrap().dims,
        vec![1, a_log.len() as u64]
    );
    let conv = f.tensor("blk.0.ssm_conv1d.weight").unwrap();
    assert_eq!(
        conv.dims[0],
        config("mamba2")["conv_kernel"].as_u64().unwrap()
    );
    let g = config("mamba2")["n_groups"].as_u64().unwrap();
    assert_eq!(f.tensor("blk.0.ssm_norm.weight").unwrap().dims[1], g);
    let (_d2, f2) = convert("mamba2_ssm", &opts);
    for t in f.tensors() {
        let t2 = f2
            .tensor(&t.name)
            .unwrap_or_else(|| panic!("mamba_ssm conversion lacks {}", t.name));
        assert_eq!(t.dims, t2.dims, "{}", t.name);
        assert_eq!(f.tensor_data(t), f2.tensor_data(t2), "{}", t.name);
    }

    // doge_moe: records interleave down_embed[e] and up_embed[e], and start on a page.
    let hf = Checkpoint::open(&fixture("doge_moe")).unwrap();
    let (_d, f) = convert("doge_moe", &opts);
    let rec = f.tensor("blk.0.ffn_experts.weight").unwrap();
    assert_eq!((f.data_offset() as u64 + rec.offset) % 4096, 0);
    let h = rec.dims[0] as usize;
    let records = dequant(&f, "blk.0.ffn_experts.weight");
    let down = source(&hf, "model.layers.0.mlp.down_embed.weight");
    let up = source(&hf, "model.layers.0.mlp.up_embed.weight");
    for e in [0, 1, rec.dims[2] as usize - 1] {
        assert_eq!(
            &records[2 * e * h..(2 * e + 1) * h],
            &down[e * h..(e + 1) * h]
        );
        assert_eq!(
            &records[(2 * e + 1) * h..(2 * e + 2) * h],
            &up[e * h..(e + 1) * h]
        );
    }
    // ... and the two-table layout still writes the plain tables.
    let mut tables = Options::new(GgmlType::F32);
    tables.expert_layout = ExpertLayout::Tables;
    let (_d, f) = convert("doge_moe", &tables);
    assert_eq!(dequant(&f, "blk.0.ffn_down_embed.weight"), down);
    assert_eq!(
        f.metadata().get_str("doge.expert_layout").unwrap(),
        "tables"
    );
}

/// Worst error of a type relative to a row's largest magnitude (round-trip bounds of the block
/// reference, with margin for the f16 scales).
fn bound(ty: GgmlType) -> f32 {
    match ty {
        GgmlType::F32 => 0.0,
        GgmlType::F16 | GgmlType::BF16 => 4e-3,
        GgmlType::Q8_0 => 1e-2,
        GgmlType::Q6_K => 3e-2,
        // Q5_0: d = max/16, so an opposite-sign value can be off by d (1/16 of the max).
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => 7e-2,
        _ => 0.15,
    }
}

/// Writes a 256-wide, one-layer llama checkpoint of random weights (no tokenizer), so that every
/// block type, k-quants included, applies without fallback.
fn write_wide_llama(dir: &Path) {
    let (h, ff, v) = (256usize, 512usize, 300usize);
    let cfg = serde_json::json!({"architectures": ["LlamaForCausalLM"], "hidden_size": h,
        "intermediate_size": ff, "num_hidden_layers": 1, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": v, "rms_norm_eps": 1e-5, "tie_word_embeddings": false});
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let kv = h / 2;
    let shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![v, h]),
        ("model.norm.weight".into(), vec![h]),
        ("lm_head.weight".into(), vec![v, h]),
        ("model.layers.0.input_layernorm.weight".into(), vec![h]),
        ("model.layers.0.self_attn.q_proj.weight".into(), vec![h, h]),
        ("model.layers.0.self_attn.k_proj.weight".into(), vec![kv, h]),
        ("model.layers.0.self_attn.v_proj.weight".into(), vec![kv, h]),
        ("model.layers.0.self_attn.o_proj.weight".into(), vec![h, h]),
        (
            "model.layers.0.post_attention_layernorm.weight".into(),
            vec![h],
        ),
        ("model.layers.0.mlp.gate_proj.weight".into(), vec![ff, h]),
        ("model.layers.0.mlp.up_proj.weight".into(), vec![ff, h]),
        ("model.layers.0.mlp.down_proj.weight".into(), vec![h, ff]),
    ];
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    let mut state = 0x2545F4914F6CDD1Du64;
    for (name, shape) in &shapes {
        let n: usize = shape.iter().product();
        let begin = data.len();
        for i in 0..n {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Mostly uniform noise with an occasional outlier, per row.
            let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            let x = if i % 97 == 0 { u * 8.0 } else { u };
            data.extend_from_slice(&x.to_le_bytes());
        }
        header.insert(name.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [begin, data.len()]}));
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&data);
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
}

/// Converts `src` with `ty` and checks each tensor's type and per-row error bound.
fn check_type(src: &Path, ty: GgmlType) -> GgufFile {
    let opts = Options::new(ty);
    let hf = cheems_quantize::hf::HfDir::open(src).unwrap();
    let plan = cheems_quantize::plan_dir(&hf, &opts).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    cheems_quantize::convert(src, &out, &opts, 2, false).unwrap();
    let f = GgufFile::open(&out).unwrap();
    for t in &plan.tensors {
        let info = f.tensor(&t.name).unwrap();
        assert_eq!(info.ggml_type, t.ty, "{}", t.name);
        let Source::Tensor {
            name: src,
            transform: Transform::None,
        } = &t.source
        else {
            continue;
        };
        let want = source(&hf.weights, src);
        let got = dequant(&f, &t.name);
        let row = t.row_len();
        for (r, (g, w)) in got.chunks(row).zip(want.chunks(row)).enumerate() {
            let scale = w.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
            let err = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err <= bound(t.ty) * scale,
                "{ty}: {} row {r} ({}) error {err} > {} x {scale}",
                t.name,
                t.ty,
                bound(t.ty)
            );
        }
    }
    f
}

#[test]
fn every_weight_type_converts_within_its_bound() {
    let wide = tempfile::tempdir().unwrap();
    write_wide_llama(wide.path());
    for &ty in WEIGHT_TYPES {
        let f = check_type(wide.path(), ty);
        let ty_of = |n: &str| f.tensor(n).unwrap().ggml_type;
        // The policy: norms F32, the head Q6_K at 4/5-bit types, other matrices the chosen type.
        assert_eq!(ty_of("output_norm.weight"), GgmlType::F32);
        assert_eq!(ty_of("blk.0.ffn_up.weight"), ty);
        assert_eq!(ty_of("blk.0.ffn_down.weight"), ty);
        let low_bit = matches!(
            ty,
            GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q5_0
                | GgmlType::Q5_1
                | GgmlType::Q4_K
                | GgmlType::Q5_K
        );
        assert_eq!(
            ty_of("output.weight"),
            if low_bit { GgmlType::Q6_K } else { ty }
        );
        assert_eq!(
            f.metadata().get_str("tokenizer.ggml.model").unwrap(),
            "none"
        );
        // The 64-wide fixtures exercise the fallback of k-quants to 32-value blocks.
        for name in ["doge_moe", "cheems"] {
            check_type(&fixture(name), ty);
        }
    }
}
