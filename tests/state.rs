//! Session snapshots: restoring a snapshot (in memory or from a file) continues exactly as the
//! original session would; states of other models or broken files are refused and leave the
//! session unchanged.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cheems::{Model, Session, SessionOptions};
use cheems_formats::GgmlType;
use cheems_quantize::Options;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn load(name: &str, dir: &Path) -> Arc<Model> {
    let out = dir.join(format!("{name}.gguf"));
    cheems_quantize::convert(
        &fixture(name),
        &out,
        &Options::new(GgmlType::Q8_0),
        1,
        false,
    )
    .unwrap();
    Arc::new(Model::load(&out).unwrap())
}

fn session(m: &Arc<Model>) -> Session {
    Session::new(
        m.clone(),
        &SessionOptions {
            threads: Some(1),
            ctx: Some(64),
        },
    )
    .unwrap()
}

fn continue_with(s: &mut Session, toks: &[u32]) -> Vec<Vec<f32>> {
    toks.iter()
        .map(|&t| s.decode(t).unwrap().to_vec())
        .collect()
}

#[test]
fn restored_sessions_continue_identically() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["llama", "mamba2", "doge", "doge_moe", "cheems"] {
        let m = load(name, dir.path());
        let prompt: Vec<u32> = (3..23).collect();
        let next: Vec<u32> = (40..50).collect();
        let mut a = session(&m);
        a.prefill(&prompt).unwrap();
        let snap = a.snapshot();
        let path = dir.path().join(format!("{name}.state"));
        a.save_state(&path).unwrap();
        let want = continue_with(&mut a, &next);
        // In memory, into the same session after it moved on.
        a.restore(&snap).unwrap();
        assert_eq!(a.pos(), prompt.len());
        assert_eq!(continue_with(&mut a, &next), want, "{name}: restore");
        // From the file, into a fresh session.
        let mut b = session(&m);
        b.load_state(&path).unwrap();
        assert_eq!(continue_with(&mut b, &next), want, "{name}: load_state");
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(size as usize, snap.byte_size(), "{name}: byte_size");
        eprintln!("{name}: state of {} tokens is {size} bytes", prompt.len());
    }
}

#[test]
fn foreign_and_broken_states_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (doge, llama) = (load("doge", dir.path()), load("llama", dir.path()));
    let mut a = session(&doge);
    a.prefill(&[5, 6, 7]).unwrap();
    let path = dir.path().join("doge.state");
    a.save_state(&path).unwrap();

    let mut other = session(&llama);
    other.prefill(&[1, 2]).unwrap();
    let before = other.logits().to_vec();
    let err = format!("{:#}", other.load_state(&path).unwrap_err());
    assert!(err.contains("different model"), "{err}");
    assert_eq!((other.pos(), other.logits()), (2, before.as_slice()));

    let bytes = std::fs::read(&path).unwrap();
    let mut b = session(&doge);
    for (what, data, needle) in [
        ("truncated", bytes[..bytes.len() - 7].to_vec(), "truncated"),
        (
            "bad magic",
            [b"XXXXXXXX".as_slice(), &bytes[8..]].concat(),
            "magic",
        ),
        ("trailing", [bytes.as_slice(), &[0u8]].concat(), "trailing"),
    ] {
        let p = dir.path().join("bad.state");
        std::fs::write(&p, data).unwrap();
        let err = format!("{:#}", b.load_state(&p).unwrap_err());
        assert!(err.contains(needle), "{what}: {err}");
        assert_eq!(b.pos(), 0, "{what}: the session must be unchanged");
    }
}
