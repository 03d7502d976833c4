//! CDMoE experts read on demand: with the expert cache bounded to a quarter of the expert bytes
//! (so records are evicted and read again), a session produces exactly the logits and tokens of
//! one reading every record in place, mapped or read into memory, for records and tables; the
//! mapped expert tables never enter the process; a bound too small for one token, and records
//! that cannot be read, are clean errors.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cheems::memory::{mapped, model_regions, Category};
use cheems::synth::synth;
use cheems::{LoadOptions, Model, Session, SessionOptions};
use cheems_formats::GgmlType;
use cheems_quantize::{ExpertLayout, Options};

fn fixture(dir: &Path, layout: ExpertLayout) -> PathBuf {
    let out = dir.join(format!("doge_moe_{layout:?}.gguf"));
    let mut opts = Options::new(GgmlType::Q8_0);
    opts.expert_layout = layout;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/doge_moe");
    cheems_quantize::convert(&src, &out, &opts, 1, false).unwrap();
    out
}

fn session(m: &Arc<Model>) -> Session {
    let opts = SessionOptions {
        threads: Some(2),
        ctx: Some(64),
    };
    Session::new(m.clone(), &opts).unwrap()
}

/// The logits after a prompt and after each of `n` greedy tokens, and the tokens.
fn generate(m: &Arc<Model>, n: usize) -> (Vec<Vec<f32>>, Vec<u32>) {
    let mut s = session(m);
    let vocab = m.config.n_vocab as u32;
    let prompt: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % vocab).collect();
    let mut logits = vec![s.prefill(&prompt).unwrap().to_vec()];
    let mut tokens = Vec::new();
    for _ in 0..n {
        let last = logits.last().unwrap();
        let next = (0..last.len())
            .max_by(|&a, &b| last[a].total_cmp(&last[b]))
            .unwrap() as u32;
        tokens.push(next);
        logits.push(s.decode(next).unwrap().to_vec());
    }
    (logits, tokens)
}

fn expert_bytes(m: &Model) -> u64 {
    m.file
        .tensors()
        .iter()
        .filter(|t| cheems::experts::is_expert_table(&t.name))
        .map(|t| t.size as u64)
        .sum()
}

#[test]
fn a_bounded_expert_cache_gives_the_same_logits_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = vec![
        (
            "doge_moe records",
            fixture(dir.path(), ExpertLayout::Records),
        ),
        ("doge_moe tables", fixture(dir.path(), ExpertLayout::Tables)),
    ];
    for (shape, ty) in [
        ("tiny-doge-moe", GgmlType::Q4_0),
        ("tiny-cheems", GgmlType::Q4_K),
    ] {
        let out = dir.path().join(format!("{shape}.gguf"));
        synth(shape, ty, &out, 3).unwrap();
        files.push((shape, out));
    }
    for (what, path) in &files {
        let free = Arc::new(Model::load(path).unwrap());
        let (want_logits, want_tokens) = generate(&free, 24);
        let quarter = expert_bytes(&free) / 4;
        for use_mmap in [true, false] {
            let opts = LoadOptions {
                expert_cache_bytes: Some(quarter),
                use_mmap,
            };
            let m = Arc::new(Model::load_with(path, &opts).unwrap());
            assert_eq!(m.fingerprint, free.fingerprint, "{what}");
            let mut s = session(&m);
            let cache = s.expert_cache().unwrap();
            assert!(cache.bytes() as u64 <= quarter, "{what}");
            let record = m.experts.as_ref().unwrap().record_bytes;
            let (got_logits, got_tokens) = generate(&m, 24);
            assert_eq!(got_tokens, want_tokens, "{what} mmap {use_mmap}");
            assert_eq!(got_logits, want_logits, "{what} mmap {use_mmap}");
            // The same run in a session we can inspect: records were evicted and read again.
            let prompt: Vec<u32> = (0..40).collect();
            s.prefill(&prompt).unwrap();
            for t in 0..24 {
                s.decode(t).unwrap();
            }
            let st = s.expert_stats().unwrap();
            let cache = s.expert_cache().unwrap();
            let (k, layers) = (m.config.n_experts_used as u64, m.config.n_layers as u64);
            assert_eq!(st.hits + st.misses, 64 * k * layers, "{what}");
            assert!(
                st.hits > 0 && st.misses as usize > cache.capacity(),
                "{what}: {st:?}"
            );
            assert_eq!(cache.len(), cache.capacity(), "{what}");
            assert_eq!(st.bytes_read, st.misses * record as u64, "{what}");
            if use_mmap {
                // No expert page entered the process through the map.
                let tables = model_regions(&m)
                    .into_iter()
                    .filter(|r| r.category == Category::ExpertTables);
                let resident: u64 = tables.map(|r| mapped(r.addr, r.len).unwrap()).sum();
                assert_eq!(resident, 0, "{what}");
            }
        }
    }
}

#[test]
fn a_cache_too_small_for_one_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture(dir.path(), ExpertLayout::Records);
    let opts = LoadOptions {
        expert_cache_bytes: Some(1000),
        ..LoadOptions::default()
    };
    let m = Arc::new(Model::load_with(&path, &opts).unwrap());
    let e = Session::new(m, &SessionOptions::default()).unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("expert cache") && e.contains("needs 8"), "{e}");
}

#[test]
fn unreadable_records_are_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture(dir.path(), ExpertLayout::Records);
    let opts = LoadOptions {
        expert_cache_bytes: Some(1 << 20),
        use_mmap: false,
    };
    let m = Arc::new(Model::load_with(&path, &opts).unwrap());
    let mut s = session(&m);
    s.prefill(&[1, 2, 3]).unwrap();
    // The file loses its data: every record not cached yet is now past its end.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(m.file.data_offset() as u64).unwrap();
    let e = (4..200).find_map(|t| s.decode(t).err()).unwrap();
    let e = format!("{e:#}");
    assert!(e.contains("cannot read expert records"), "{e}");
}

#[test]
fn models_without_experts_ignore_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    synth("tiny-mamba2", GgmlType::Q8_0, &out, 1).unwrap();
    let opts = LoadOptions {
        expert_cache_bytes: Some(1),
        use_mmap: false,
    };
    let m = Arc::new(Model::load_with(&out, &opts).unwrap());
    assert!(m.experts.is_none());
    let mut s = session(&m);
    let a = s.prefill(&[1, 2, 3]).unwrap().to_vec();
    let free = Arc::new(Model::load(&out).unwrap());
    assert_eq!(session(&free).prefill(&[1, 2, 3]).unwrap(), a.as_slice());
    assert!(s.expert_stats().is_none());
}
