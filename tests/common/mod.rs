//! Helpers shared by the integration tests (`mod common;` in each test that uses them).
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use cheems::npy::{self, Array};
use cheems::Session;

/// Every array of a `.npz` archive (a reference file written by the Python fixture scripts), by name
/// without the `.npy` suffix.
pub fn read_npz(path: &Path) -> HashMap<String, Array> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut z = zip::ZipArchive::new(f).unwrap();
    let mut out = HashMap::new();
    for i in 0..z.len() {
        let mut e = z.by_index(i).unwrap();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).unwrap();
        out.insert(
            e.name().trim_end_matches(".npy").to_string(),
            npy::parse(&bytes).unwrap(),
        );
    }
    out
}

/// The index of the largest logit.
pub fn argmax(logits: &[f32]) -> usize {
    logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

/// `n` greedy tokens after `prompt`, on whatever device the session runs.
pub fn greedy(s: &mut Session, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut logits = s.prefill(prompt).unwrap().to_vec();
    let mut got = Vec::new();
    for _ in 0..n {
        let next = argmax(&logits) as u32;
        got.push(next);
        logits = s.decode(next).unwrap().to_vec();
    }
    got
}

/// The first layer whose residual stream (ours: `trace`, `[L+1][H]` flattened, for token `t`)
/// differs from the reference `hidden` (`[L+1, T, H]`) by more than `rel` of the layer's scale;
/// 0 is the embeddings. Names where a logit mismatch starts.
pub fn first_diverging_layer(hidden: &Array, trace: &[f32], t: usize, rel: f64) -> Option<usize> {
    let (n_t, h) = (hidden.shape[1], hidden.shape[2]);
    (0..hidden.shape[0]).find(|&l| {
        let ours = &trace[l * h..(l + 1) * h];
        let theirs = &hidden.data[(l * n_t + t) * h..(l * n_t + t + 1) * h];
        let s = theirs.iter().fold(0f64, |m, x| m.max(x.abs()));
        ours.iter()
            .zip(theirs)
            .any(|(a, b)| (f64::from(*a) - b).abs() > rel * s.max(1.0))
    })
}
