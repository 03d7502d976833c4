//! The `cheems` command as a user meets it: `quantize` and `info` on good input, and on bad
//! input a one-line `error:` message and a non-zero exit (never a panic, which exits 101).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cheems(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cheems"))
        .args(args)
        .output()
        .unwrap()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts a clean failure: exit code 1 and exactly one line on stderr, starting with `error:`.
fn assert_clean_error(out: &Output, what: &str, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: status {:?}, stderr {err}",
        out.status
    );
    assert_eq!(
        err.lines().count(),
        1,
        "{what}: expected one line, got {err:?}"
    );
    assert!(err.starts_with("error: "), "{what}: {err}");
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "{what}: {err:?} lacks {needle:?}"
    );
}

fn quantize(name: &str, ty: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{name}-{ty}.gguf"));
    let run = cheems(&[
        "quantize",
        fixture(name).to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--type",
        ty,
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(
        stdout.contains("total") && stdout.contains("bpw"),
        "summary table missing: {stdout}"
    );
    out
}

#[test]
fn quantize_then_info_shows_the_hyper_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let f = quantize("cheems", "q4_0", dir.path());
    let info = cheems(&["info", f.to_str().unwrap()]);
    assert!(info.status.success());
    let s = text(&info.stdout);
    for want in [
        "architecture:  cheems",
        "block_count",
        "layer_types",
        "keep_window_size",
        "expert_count",
        "Q4_0",
        "chat template: yes",
    ] {
        assert!(s.contains(want), "info lacks {want:?}:\n{s}");
    }
    let listed = cheems(&["info", f.to_str().unwrap(), "--tensors"]);
    let s = text(&listed.stdout);
    assert!(
        s.contains("blk.0.ssm_in.weight") && s.contains("blk.1.ffn_experts.weight"),
        "{s}"
    );

    let f = quantize("mamba2", "f16", dir.path());
    let s = text(&cheems(&["info", f.to_str().unwrap()]).stdout);
    assert!(
        s.contains("architecture:  mamba2") && s.contains("ssm.state_size"),
        "{s}"
    );
}

/// Hostile files, each made from a valid one; `info` must print one line and exit 1.
#[test]
fn info_on_corrupt_files_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(quantize("doge", "q8_0", dir.path())).unwrap();
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    cases.push(("bad magic", bad_magic, "magic"));
    let mut v2 = good.clone();
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    cases.push(("version 2", v2, "version"));
    cases.push(("truncated header", good[..40].to_vec(), ""));
    cases.push(("truncated data", good[..good.len() - 100].to_vec(), ""));
    let mut counts = good.clone();
    counts[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    cases.push(("absurd tensor count", counts, ""));
    cases.push(("empty file", Vec::new(), ""));
    cases.push((
        "safetensors file",
        std::fs::read(fixture("doge").join("model.safetensors")).unwrap(),
        "",
    ));
    for (what, bytes, needle) in cases {
        let p = dir.path().join("bad.gguf");
        std::fs::write(&p, bytes).unwrap();
        assert_clean_error(&cheems(&["info", p.to_str().unwrap()]), what, needle);
    }
    assert_clean_error(
        &cheems(&["info", "/nonexistent/model.gguf"]),
        "missing file",
        "nonexistent",
    );
}

#[test]
fn quantize_rejects_bad_input_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    let o = out.to_str().unwrap();
    assert_clean_error(
        &cheems(&["quantize", "/nonexistent", "-o", o]),
        "missing folder",
        "not a directory",
    );
    assert_clean_error(
        &cheems(&[
            "quantize",
            fixture("doge_legacy").to_str().unwrap(),
            "-o",
            o,
        ]),
        "legacy doge",
        "remote-code",
    );
    // An architecture cheems does not run.
    let gpt2 = dir.path().join("gpt2");
    std::fs::create_dir(&gpt2).unwrap();
    std::fs::write(
        gpt2.join("config.json"),
        r#"{"architectures": ["GPT2LMHeadModel"]}"#,
    )
    .unwrap();
    std::fs::copy(
        fixture("doge").join("model.safetensors"),
        gpt2.join("model.safetensors"),
    )
    .unwrap();
    assert_clean_error(
        &cheems(&["quantize", gpt2.to_str().unwrap(), "-o", o]),
        "gpt2",
        "unsupported architecture",
    );
    // A config that disagrees with the weights.
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("doge").join("config.json")).unwrap(),
    )
    .unwrap();
    let ff = cfg["intermediate_size"].as_u64().unwrap() + 32;
    cfg["intermediate_size"] = ff.into();
    let h = cfg["hidden_size"].as_u64().unwrap();
    std::fs::write(broken.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(
        fixture("doge").join("model.safetensors"),
        broken.join("model.safetensors"),
    )
    .unwrap();
    assert_clean_error(
        &cheems(&["quantize", broken.to_str().unwrap(), "-o", o]),
        "shape mismatch",
        &format!("expected [{ff}, {h}]"),
    );
    assert!(!out.exists(), "a failed conversion must not leave a file");
    // Bad flags are refused by the argument parser (exit 2), never a panic.
    let bad_type = cheems(&[
        "quantize",
        fixture("doge").to_str().unwrap(),
        "-o",
        o,
        "--type",
        "q9_9",
    ]);
    assert_eq!(
        bad_type.status.code(),
        Some(2),
        "{}",
        text(&bad_type.stderr)
    );
    assert!(text(&bad_type.stderr).contains("q9_9"));
    let bad_override = cheems(&[
        "quantize",
        fixture("doge").to_str().unwrap(),
        "-o",
        o,
        "--tensor-type",
        "ffn_(=q8_0",
    ]);
    assert_clean_error(&bad_override, "bad regex", "regex");
}

/// Converts a fixture to F32 in `dir`.
fn convert_f32(name: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{name}.gguf"));
    let run = cheems(&[
        "quantize",
        fixture(name).to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--type",
        "f32",
        "-q",
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    out
}

/// `cheems run --temp 0` prints what transformers' `generate` produced (token by token, 32 steps).
#[test]
fn run_greedy_matches_transformers_generate() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    for name in ["llama", "doge", "cheems"] {
        let f = convert_f32(name, dir.path());
        let z = std::fs::File::open(fixture(name).join("reference.npz")).unwrap();
        let mut z = zip::ZipArchive::new(z).unwrap();
        let mut read = |k: &str| {
            let mut b = Vec::new();
            z.by_name(&format!("{k}.npy"))
                .unwrap()
                .read_to_end(&mut b)
                .unwrap();
            cheems::npy::parse(&b)
                .unwrap()
                .data
                .iter()
                .map(|&x| x as u32)
                .collect::<Vec<u32>>()
        };
        let (prompt, greedy) = (read("greedy_prompt"), read("greedy"));
        let model = cheems_formats::gguf::GgufFile::open(&f).unwrap();
        let tok = cheems::tokenizer::Tokenizer::from_metadata(model.metadata()).unwrap();
        let prompt_text = tok.decode(&prompt[usize::from(tok.adds_bos())..]).unwrap();
        assert_eq!(
            tok.encode(&prompt_text, true).unwrap(),
            prompt,
            "{name}: the prompt must survive a text round trip"
        );
        let out = cheems(&[
            "run",
            f.to_str().unwrap(),
            "-p",
            &prompt_text,
            "-n",
            "32",
            "--temp",
            "0",
            "--ignore-eos",
            "-t",
            "1",
        ]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let want = tok.decode(&greedy).unwrap();
        assert_eq!(text(&out.stdout).trim_end_matches('\n'), want, "{name}");
        assert!(text(&out.stderr).contains("tok/s"), "timings go to stderr");
    }
}

#[test]
fn run_and_logits_refuse_bad_input_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let f = convert_f32("llama", dir.path());
    let f = f.to_str().unwrap();
    let npy = dir.path().join("l.npy");
    let npy = npy.to_str().unwrap();
    let long = "the cat sat on the mat ".repeat(20);
    assert_clean_error(
        &cheems(&["run", f, "-p", &long, "--ctx", "16"]),
        "prompt longer than the context",
        "context",
    );
    assert_clean_error(&cheems(&["run", f, "-p", ""]), "empty prompt", "empty");
    assert_clean_error(
        &cheems(&["logits", f, "--tokens", "1,2,999999", "--out", npy]),
        "unknown token",
        "outside the vocabulary",
    );
    assert_clean_error(
        &cheems(&["run", f, "-p", "hi", "--top-p", "3"]),
        "bad flag value",
        "top-p",
    );
    // A well-formed file of an architecture cheems does not run.
    let other = dir.path().join("gpt2.gguf");
    let mut md = cheems_formats::gguf::Metadata::new();
    md.set("general.architecture", "gpt2");
    cheems_formats::gguf::GgufWriter::create(&other, &md, Vec::new())
        .unwrap()
        .finish()
        .unwrap();
    assert_clean_error(
        &cheems(&["run", other.to_str().unwrap(), "-p", "hi"]),
        "gpt2 file",
        "unsupported architecture",
    );
    // logits writes [n_tokens, vocab] float32.
    let ok = cheems(&["logits", f, "--tokens", "1,2,3", "--out", npy]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let a = cheems::npy::parse(&std::fs::read(npy).unwrap()).unwrap();
    assert_eq!(a.shape[0], 3);
}
