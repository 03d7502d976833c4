//! The default model that ships in the repository (`models/cheems-default.gguf`, Q8_0) against
//! the PyTorch model it was exported from (tests/fixtures/cheems_ref.py, float32), on a two-turn
//! chat prompt run token by token. The reference is `tests/fixtures/default_model/reference.npz`,
//! made by `tools/train/make_reference.py` from the trained checkpoint: the first 4096 logits of
//! every position and the full-vocabulary argmax.
//!
//! The file is Q8_0, so the bound is the quantized one (the F32 conversion of the same checkpoint
//! agrees within 1e-4 of the logit scale; `tools/train/check_parity.py` checks it when a model is
//! exported, and the architecture's F32 parity is `tests/parity.rs`).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use cheems::npy::Array;
use cheems::{Model, Session, SessionOptions};

fn reference() -> HashMap<String, Array> {
    common::read_npz(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/default_model/reference.npz"),
    )
}

#[test]
fn shipped_default_model_matches_pytorch() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cheems-default.gguf");
    let model = Arc::new(Model::load(&path).unwrap());
    assert_eq!(model.config.arch, cheems::config::Arch::Cheems);
    let r = reference();
    let toks: Vec<u32> = r["tokens"].data.iter().map(|&t| t as u32).collect();
    let head = &r["logits_head"];
    let k = head.shape[1];
    let mut s = Session::new(
        model,
        &SessionOptions {
            threads: Some(2),
            ctx: None,
        },
    )
    .unwrap();
    let (mut worst, mut same_argmax, mut sq, mut sq_ref) = (0.0f64, 0, 0.0f64, 0.0f64);
    for (t, &tok) in toks.iter().enumerate() {
        let logits = s.decode(tok).unwrap();
        let want = &head.data[t * k..(t + 1) * k];
        let scale = r["max_abs"].data[t].max(1.0);
        for (&a, &b) in logits[..k].iter().zip(want) {
            let d = f64::from(a) - b;
            worst = worst.max(d.abs() / scale);
            sq += d * d;
            sq_ref += b * b;
        }
        let argmax = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap();
        same_argmax += usize::from(argmax as f64 == r["argmax"].data[t]);
    }
    let rel_rms = (sq / sq_ref).sqrt();
    eprintln!(
        "default model, Q8_0 vs PyTorch f32: max |dlogit|/scale {worst:.3e}, relative RMS {rel_rms:.3e}, \
         argmax equal at {same_argmax}/{} positions",
        toks.len()
    );
    // Q8_0 bounds, as the quantized parity tests use (measured: see the model card).
    assert!(worst < 0.05, "max |dlogit| / scale {worst}");
    assert!(rel_rms < 0.03, "relative RMS error {rel_rms}");
    assert!(
        same_argmax * 10 >= toks.len() * 9,
        "argmax equal at only {same_argmax}/{}",
        toks.len()
    );
}
