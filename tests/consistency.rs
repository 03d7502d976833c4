//! Self-consistency of the engine's two paths: a prompt prefilled in one batch, in two pieces, or
//! token by token gives the same logits (SSD layers: the chunked scan equals the recurrence); a
//! long DMA run keeps its cache at `keep_window` entries per head; expert records and expert
//! tables give the same model.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cheems::{Model, Session, SessionOptions};
use cheems_formats::GgmlType;
use cheems_quantize::{ExpertLayout, Options};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn load_with(name: &str, opts: &Options) -> (tempfile::TempDir, Arc<Model>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    cheems_quantize::convert(&fixture(name), &out, opts, 1, false).unwrap();
    (dir, Arc::new(Model::load(&out).unwrap()))
}

/// A deterministic prompt of `n` ids, avoiding repeats in a row.
fn prompt(n: usize, vocab: usize) -> Vec<u32> {
    let mut s = 0x1234_5678u64;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            3 + ((s >> 33) as usize % (vocab - 3)) as u32
        })
        .collect()
}

fn session(m: &Arc<Model>) -> Session {
    Session::new(
        m.clone(),
        &SessionOptions {
            threads: Some(2),
            ctx: Some(512),
        },
    )
    .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn prefill_in_one_batch_in_pieces_and_token_by_token_agree() {
    for name in ["llama", "mamba2", "doge", "doge_moe", "cheems"] {
        let (_d, m) = load_with(name, &Options::new(GgmlType::F32));
        // 150 tokens: several prefill batches, several SSD chunks each, DMA evictions.
        let toks = prompt(150, m.config.n_vocab);
        let mut all = Vec::new();
        session(&m).prefill_all(&toks, &mut all).unwrap();
        let v = m.config.n_vocab;
        let mut one = session(&m);
        let whole = one.prefill(&toks).unwrap().to_vec();
        let mut two = session(&m);
        two.prefill(&toks[..77]).unwrap();
        let pieces = two.prefill(&toks[77..]).unwrap().to_vec();
        let mut step = session(&m);
        let scale = whole.iter().fold(0f32, |a, x| a.max(x.abs()));
        for (t, &tok) in toks.iter().enumerate() {
            let row = step.decode(tok).unwrap();
            let d = max_diff(row, &all[t * v..(t + 1) * v]);
            assert!(
                d <= 1e-4 * scale,
                "{name}: token {t}: batched prefill differs from decoding by {d}"
            );
        }
        assert!(
            max_diff(&whole, step.logits()) <= 1e-4 * scale,
            "{name}: one batch vs token by token"
        );
        assert!(
            max_diff(&pieces, step.logits()) <= 1e-4 * scale,
            "{name}: two pieces vs token by token"
        );
        assert_eq!((one.pos(), two.pos(), step.pos()), (150, 150, 150));
    }
}

#[test]
fn dma_cache_stays_at_keep_window() {
    for name in ["doge", "cheems"] {
        let (_d, m) = load_with(name, &Options::new(GgmlType::F32));
        let kw = m.config.keep_window;
        let mut s = session(&m);
        let toks = prompt(4 * kw, m.config.n_vocab);
        for (i, &t) in toks.iter().enumerate() {
            s.decode(t).unwrap();
            let lens = s.dma_cache_lens();
            assert!(!lens.is_empty());
            for per_head in lens {
                assert!(
                    per_head.iter().all(|&n| n == (i + 1).min(kw)),
                    "{name}: after {} tokens: {per_head:?}",
                    i + 1
                );
            }
        }
    }
}

#[test]
fn expert_records_and_tables_are_the_same_model() {
    let (_a, records) = load_with("doge_moe", &Options::new(GgmlType::F32));
    let mut tables_opts = Options::new(GgmlType::F32);
    tables_opts.expert_layout = ExpertLayout::Tables;
    let (_b, tables) = load_with("doge_moe", &tables_opts);
    let toks = prompt(30, records.config.n_vocab);
    let (mut a, mut b) = (session(&records), session(&tables));
    for &t in &toks {
        let (x, y) = (a.decode(t).unwrap().to_vec(), b.decode(t).unwrap().to_vec());
        assert_eq!(x, y);
    }
}

#[test]
fn bad_input_is_refused_and_leaves_the_session_unchanged() {
    let (_d, m) = load_with("llama", &Options::new(GgmlType::F32));
    let mut s = Session::new(
        m.clone(),
        &SessionOptions {
            threads: Some(1),
            ctx: Some(8),
        },
    )
    .unwrap();
    assert!(s.prefill(&[]).unwrap_err().to_string().contains("empty"));
    let v = m.config.n_vocab as u32;
    assert!(s
        .decode(v)
        .unwrap_err()
        .to_string()
        .contains("outside the vocabulary"));
    s.prefill(&[1, 2, 3]).unwrap();
    let before = s.logits().to_vec();
    let err = s.prefill(&[4, 5, 6, 7, 8, 9]).unwrap_err().to_string();
    assert!(err.contains("context is full"), "{err}");
    assert_eq!(s.pos(), 3);
    assert_eq!(s.logits(), before.as_slice());
    assert!(s.prefill(&[4, v + 7]).is_err());
    assert_eq!(s.pos(), 3);
}

/// CDMoE as the engine computes it (routing by product keys, experts gathered from the file's
/// records) equals a dense loop over every expert of the checkpoint's own tables, with weight
/// zero for the experts outside the top k.
#[test]
fn cdmoe_gather_equals_a_dense_loop_over_all_experts() {
    use cheems::blocks::cdmoe::MoeScratch;
    use cheems::model::Ffn;
    use cheems_formats::safetensors::Checkpoint;

    let (_d, m) = load_with("doge_moe", &Options::new(GgmlType::F32));
    let c = &m.config;
    let (h, ff, e, k, nk) = (c.d_model, c.d_ff, c.n_experts, c.n_experts_used, c.n_keys());
    let ck = Checkpoint::open(&fixture("doge_moe")).unwrap();
    let read = |name: &str| {
        let (f, t) = ck.get(name).unwrap();
        let mut v = vec![0f32; t.n_elements()];
        f.read_f32(t, 0, &mut v, &mut Vec::new()).unwrap();
        v
    };
    let matvec = |w: &[f32], x: &[f32]| -> Vec<f32> {
        w.chunks(x.len())
            .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    };
    let silu = |v: f32| v / (1.0 + (-v).exp());
    let pool = cheems_kernels::pool::Pool::new(1).unwrap();
    let mut act = cheems_kernels::matvec::Activation::with_capacity(ff.max(h));
    let mut acts = cheems_kernels::matmul::Activations::with_capacity(1, ff.max(h));
    let mut tmp = vec![0f32; ff.max(h)];
    let mut scratch = MoeScratch::new(c);
    for layer in 0..c.n_layers {
        let Some((_, _, Ffn::CdMoe(moe))) = &m.layers[layer].ffn else {
            panic!("layer {layer} is not CDMoE")
        };
        let p = format!("model.layers.{layer}.mlp.");
        let (router, down, up) = (
            read(&format!("{p}router_gate.weight")),
            read(&format!("{p}down_embed.weight")),
            read(&format!("{p}up_embed.weight")),
        );
        let (wg, wu, wd) = (
            read(&format!("{p}gate_proj.weight")),
            read(&format!("{p}up_proj.weight")),
            read(&format!("{p}down_proj.weight")),
        );
        for trial in 0..5 {
            let x: Vec<f32> = (0..h)
                .map(|i| ((i * 7 + trial * 13) as f32 * 0.37).sin())
                .collect();
            // Dense reference.
            let r = matvec(&router, &x);
            let mut sums: Vec<(f32, usize)> = (0..nk * nk)
                .map(|id| (r[id / nk] + r[nk + id % nk], id))
                .collect();
            sums.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let top = &sums[..k];
            let z: f32 = top.iter().map(|s| (s.0 - top[0].0).exp()).sum();
            let (g, u) = (matvec(&wg, &x), matvec(&wu, &x));
            let hidden: Vec<f32> = g.iter().zip(&u).map(|(a, b)| silu(*a) * b).collect();
            let mut want = matvec(&wd, &hidden);
            for id in 0..e {
                let w = top
                    .iter()
                    .find(|s| s.1 == id)
                    .map_or(0.0, |s| (s.0 - top[0].0).exp() / z);
                let d: f32 = down[id * h..(id + 1) * h]
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| a * b)
                    .sum();
                let alpha = silu(d) * w;
                want.iter_mut()
                    .zip(&up[id * h..(id + 1) * h])
                    .for_each(|(o, v)| *o += alpha * v);
            }
            // The engine.
            let mut cx = cheems::Ctx {
                map: m.map(),
                pool: &pool,
                act: &mut act,
                acts: &mut acts,
                tmp: &mut tmp,
            };
            let (mut h1, mut h2, mut out) = (vec![0f32; ff], vec![0f32; ff], vec![0f32; h]);
            moe.forward(&mut cx, &x, &mut h1, &mut h2, &mut scratch, None, &mut out)
                .unwrap();
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert!(
                max_diff(&out, &want) <= 1e-5 * scale.max(1.0),
                "layer {layer} trial {trial}: {:?} vs {:?}",
                &out[..4],
                &want[..4]
            );
        }
    }
}
