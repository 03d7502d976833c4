//! llama.cpp's context shift on a plain-attention session (`Session::context_shift`): the oldest
//! half of the tokens after the kept ones is dropped and the later keys are re-rotated for their
//! new positions.
//!
//! Where it is exact: in a one-layer model each cached key and value depends only on its token
//! and position, so after a shift the cache must equal a fresh prefill of the same tokens at the
//! same (new) positions, and the next logits must match that session's to rounding (the shifted
//! keys are rotated twice: 1e-4 of the logit scale). With more layers the later tokens' keys
//! also saw the dropped ones, so the shift is an approximation by design (as in llama.cpp); there
//! the test checks the bookkeeping: positions, repeated shifts, and that refusals change nothing.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use cheems::synth::synth;
use cheems::{Model, Session, SessionOptions};
use cheems_formats::gguf::{GgufFile, GgufWriter, TensorSpec};
use cheems_formats::GgmlType;

/// `src` cut down to its first layer.
fn one_layer(src: &Path, out: &Path) {
    let f = GgufFile::open(src).unwrap();
    let mut md = f.metadata().clone();
    md.set("llama.block_count", 1u32);
    let keep: Vec<_> = f
        .tensors()
        .iter()
        .filter(|t| !t.name.starts_with("blk.") || t.name.starts_with("blk.0."))
        .collect();
    let specs = keep
        .iter()
        .map(|t| TensorSpec::new(t.name.clone(), t.dims.clone(), t.ggml_type))
        .collect();
    let mut w = GgufWriter::create(out, &md, specs).unwrap();
    for t in keep {
        w.write_data(f.tensor_data(t)).unwrap();
    }
    w.finish().unwrap();
}

fn session(m: &Arc<Model>, ctx: usize) -> Session {
    let opts = SessionOptions {
        threads: Some(1),
        ctx: Some(ctx),
    };
    Session::new(m.clone(), &opts).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_shifted_one_layer_cache_equals_a_fresh_prefill_at_the_new_positions() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("tiny-llama.gguf");
    synth("tiny-llama", GgmlType::F32, &full, 5).unwrap();
    let path = dir.path().join("one-layer.gguf");
    one_layer(&full, &path);
    let m = Arc::new(Model::load(&path).unwrap());
    assert_eq!(m.config.n_layers, 1);
    let tokens: Vec<u32> = (0..48).map(|i| (i * 53 + 7) % 320).collect();
    for keep in [0, 1, 5] {
        let mut a = session(&m, 48);
        a.prefill(&tokens).unwrap();
        let dropped = a.context_shift(keep).unwrap();
        assert_eq!(dropped, (48 - keep) / 2);
        assert_eq!(a.pos(), 48 - dropped);
        let kept: Vec<u32> = [&tokens[..keep], &tokens[keep + dropped..]].concat();
        let mut b = session(&m, 48);
        b.prefill(&kept).unwrap();
        for next in [3, 200, 77] {
            let (la, lb) = (a.decode(next).unwrap().to_vec(), b.decode(next).unwrap());
            let scale = lb.iter().fold(0f32, |s, v| s.max(v.abs()));
            let d = max_diff(&la, lb);
            assert!(
                d <= 1e-4 * scale.max(1.0),
                "keep {keep}: {d} (scale {scale})"
            );
        }
    }
}

#[test]
fn shifts_repeat_and_refusals_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-llama.gguf");
    synth("tiny-llama", GgmlType::Q8_0, &path, 2).unwrap();
    let m = Arc::new(Model::load(&path).unwrap());
    let mut s = session(&m, 16);
    assert_eq!(s.context_capacity(), Some(16));
    s.prefill(&(0..16).collect::<Vec<u32>>()).unwrap();
    let e = s.decode(1).unwrap_err().to_string();
    assert!(e.contains("context is full"), "{e}");
    // Generate 100 tokens in a context of 16, shifting whenever it is full.
    let mut shifts = 0;
    for t in 0..100 {
        if s.pos() == 16 {
            assert_eq!(s.context_shift(2).unwrap(), 7);
            assert_eq!(s.pos(), 9);
            shifts += 1;
        }
        assert!(s.decode(t % 300).unwrap().iter().all(|v| v.is_finite()));
    }
    assert!(shifts >= 10, "{shifts}");
    // Nothing to drop: refused, nothing changed.
    let mut short = session(&m, 16);
    short.prefill(&[1, 2, 3]).unwrap();
    let before = short.logits().to_vec();
    assert!(short.context_shift(2).is_err());
    assert_eq!(short.pos(), 3);
    assert_eq!(short.logits(), before.as_slice());
    // Other architectures keep a constant-size state: nothing to shift.
    let mamba = dir.path().join("tiny-mamba2.gguf");
    synth("tiny-mamba2", GgmlType::Q8_0, &mamba, 2).unwrap();
    let m = Arc::new(Model::load(&mamba).unwrap());
    let mut s = session(&m, 16);
    assert_eq!(s.context_capacity(), None);
    s.prefill(&[1, 2, 3]).unwrap();
    let e = s.context_shift(0).unwrap_err().to_string();
    assert!(e.contains("plain attention"), "{e}");
    assert_eq!(s.pos(), 3);
}
