//! `cheems synth` and `cheems bench`: every tiny shape is written, loads in the engine and
//! decodes to finite logits at several types, with the converter's layout and type policy;
//! `bench` measures a converted fixture and a synthetic model and reports in a table or JSON;
//! bad arguments are one-line errors.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use cheems::config::LayerKind;
use cheems::synth::{synth, SHAPES};
use cheems::tokenizer::Tokenizer;
use cheems::{Arch, Model, Session, SessionOptions};
use cheems_formats::gguf::GgufFile;
use cheems_formats::GgmlType;
use serde_json::Value as Json;

const TINY: [&str; 4] = ["tiny-mamba2", "tiny-llama", "tiny-doge-moe", "tiny-cheems"];

fn cheems(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cheems"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts a clean failure: exit code 1 and exactly one line on stderr, starting with `error:`.
fn assert_clean_error(out: &Output, what: &str, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: stderr {err}");
    assert_eq!(err.lines().count(), 1, "{what}: {err:?}");
    assert!(err.starts_with("error: "), "{what}: {err}");
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "{what}: {err:?} lacks {needle:?}"
    );
}

fn synth_tiny(dir: &Path, shape: &str, ty: GgmlType, seed: u64) -> PathBuf {
    let out = dir.join(format!("{shape}-{ty}-{seed}.gguf"));
    synth(shape, ty, &out, seed).unwrap();
    out
}

#[test]
fn tiny_shapes_are_listed() {
    for s in TINY {
        assert!(SHAPES.contains(&s));
    }
    for s in [
        "mamba2-130m",
        "llama-110m",
        "doge-60m",
        "doge-120m-moe",
        "cheems-120m",
    ] {
        assert!(SHAPES.contains(&s));
    }
}

#[test]
fn tiny_shapes_load_and_decode() {
    let dir = tempfile::tempdir().unwrap();
    for shape in TINY {
        for ty in [
            GgmlType::F32,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_K,
        ] {
            let what = format!("{shape} {ty}");
            let path = synth_tiny(dir.path(), shape, ty, 7);
            let model = Arc::new(Model::load(&path).unwrap());
            let c = model.config.clone();
            assert_eq!((c.d_model, c.n_vocab), (256, 320), "{what}");
            match shape {
                "tiny-mamba2" => {
                    assert_eq!(c.arch, Arch::Mamba2);
                    let s = c.ssd.unwrap();
                    assert_eq!((s.d_inner, s.n_heads, s.d_state), (512, 8, 32), "{what}");
                }
                "tiny-llama" => {
                    assert_eq!(c.arch, Arch::Llama);
                    assert_eq!((c.n_heads, c.n_kv_heads, c.d_ff), (4, 2, 512), "{what}");
                }
                "tiny-doge-moe" => {
                    assert_eq!(c.arch, Arch::Doge);
                    assert_eq!((c.n_experts, c.n_experts_used, c.keep_window), (64, 4, 8));
                    assert_eq!(c.rope.as_ref().unwrap().dynamic, Some((4.0, 16)));
                }
                _ => {
                    assert_eq!(c.arch, Arch::Cheems);
                    use LayerKind::{Dma, Ssd};
                    assert_eq!(c.layer_kinds, vec![Ssd, Ssd, Ssd, Dma], "{what}");
                    assert_eq!(c.ssd.unwrap().n_groups, 2);
                    assert!(c.ssd.unwrap().rope);
                }
            }
            let mut session = Session::new(
                model,
                &SessionOptions {
                    ctx: Some(64),
                    threads: Some(1),
                },
            )
            .unwrap();
            let mut logits = session.prefill(&[72, 101, 108, 108, 111]).unwrap().to_vec();
            // Past the tiny DMA keep window (8), so eviction runs too.
            for _ in 0..6 {
                assert!(logits.iter().all(|x| x.is_finite()), "{what}");
                let spread = logits.iter().fold(0f32, |m, x| m.max(x.abs()));
                assert!(
                    spread > 1e-4 && spread < 1e3,
                    "{what}: logit scale {spread}"
                );
                let next = logits
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .unwrap()
                    .0 as u32;
                logits = session.decode(next).unwrap().to_vec();
            }
        }
    }
}

#[test]
fn layout_and_type_policy_follow_the_converter() {
    let dir = tempfile::tempdir().unwrap();
    let ty_of = |f: &GgufFile, name: &str| f.tensor(name).unwrap().ggml_type;

    let f = GgufFile::open(&synth_tiny(dir.path(), "tiny-llama", GgmlType::Q4_0, 0)).unwrap();
    assert_eq!(ty_of(&f, "output.weight"), GgmlType::Q6_K);
    assert_eq!(ty_of(&f, "token_embd.weight"), GgmlType::Q4_0);
    assert_eq!(ty_of(&f, "blk.1.attn_norm.weight"), GgmlType::F32);
    assert_eq!(ty_of(&f, "blk.0.ffn_down.weight"), GgmlType::Q4_0);
    assert_eq!(
        f.tensor("blk.0.attn_k.weight").unwrap().dims,
        vec![256, 128]
    );
    let md = f.metadata();
    assert_eq!(md.get_u32("general.file_type").unwrap(), 2);
    assert_eq!(md.get_u32("general.quantization_version").unwrap(), 2);
    assert_eq!(md.get_u32("llama.attention.head_count_kv").unwrap(), 2);

    let f = GgufFile::open(&synth_tiny(dir.path(), "tiny-mamba2", GgmlType::Q4_0, 0)).unwrap();
    assert!(f.tensor("output.weight").is_none());
    assert_eq!(ty_of(&f, "token_embd.weight"), GgmlType::Q6_K);
    for (name, ty) in [
        ("blk.0.ssm_in.weight", GgmlType::Q4_0),
        ("blk.0.ssm_out.weight", GgmlType::Q4_0),
        ("blk.0.ssm_conv1d.weight", GgmlType::F32),
        ("blk.0.ssm_a", GgmlType::F32),
        ("blk.0.ssm_d", GgmlType::F32),
    ] {
        assert_eq!(ty_of(&f, name), ty, "{name}");
    }
    assert_eq!(f.tensor("blk.1.ssm_a").unwrap().dims, vec![1, 8]);
    assert_eq!(
        f.tensor("blk.1.ssm_in.weight").unwrap().dims,
        vec![256, 2 * 512 + 2 * 32 + 8]
    );
    let a = f.tensor_slice::<f32>("blk.0.ssm_a").unwrap();
    assert!(a.iter().all(|&a| (-16.0..=-1.0).contains(&a)), "{a:?}");
    assert_eq!(
        f.metadata().get_u32("mamba2.context_length").unwrap(),
        1 << 20
    );

    let f = GgufFile::open(&synth_tiny(dir.path(), "tiny-doge-moe", GgmlType::Q8_0, 0)).unwrap();
    assert_eq!(f.alignment(), 4096);
    let md = f.metadata();
    assert_eq!(md.get_str("doge.expert_layout").unwrap(), "records");
    assert_eq!(md.get_str("doge.rope.scaling.type").unwrap(), "dynamic");
    let e = f.tensor("blk.0.ffn_experts.weight").unwrap();
    assert_eq!(
        (e.dims.clone(), e.ggml_type),
        (vec![256, 2, 64], GgmlType::Q8_0)
    );
    assert_eq!(ty_of(&f, "blk.0.ffn_gate_inp.weight"), GgmlType::F32);
    assert_eq!(ty_of(&f, "blk.0.attn_dt.weight"), GgmlType::F32);
    assert_eq!(f.tensor("blk.0.attn_dt.weight").unwrap().dims, vec![128, 2]);

    let f = GgufFile::open(&synth_tiny(dir.path(), "tiny-cheems", GgmlType::F16, 0)).unwrap();
    let md = f.metadata();
    assert_eq!(
        md.get_str_array("cheems.layer_types").unwrap(),
        ["ssd", "ssd", "ssd", "dma"]
    );
    assert!(f.tensor("blk.3.attn_q.weight").is_some() && f.tensor("blk.3.ssm_in.weight").is_none());
    assert!(f.tensor("blk.0.ssm_in.weight").is_some() && f.tensor("blk.0.attn_q.weight").is_none());
    assert_eq!(
        f.tensor("blk.0.ssm_norm.weight").unwrap().dims,
        vec![128, 2]
    );
    assert!(md.get_bool("cheems.ssm.rope").unwrap());
    assert!(md.get("general.quantization_version").is_none());
}

#[test]
fn the_tokenizer_is_byte_level() {
    let dir = tempfile::tempdir().unwrap();
    let f = GgufFile::open(&synth_tiny(dir.path(), "tiny-llama", GgmlType::Q8_0, 0)).unwrap();
    let tok = Tokenizer::from_metadata(f.metadata()).unwrap();
    assert_eq!(tok.n_vocab(), 320);
    let s = "Hello, wörld!\n  tabs\tand <|endoftext|>";
    let ids = tok.encode(s, true).unwrap();
    assert_eq!(*ids.last().unwrap(), 256);
    assert_eq!(ids.len(), s.len() - "<|endoftext|>".len() + 1);
    assert_eq!(tok.decode(&ids).unwrap(), s);
    assert_eq!((tok.bos(), tok.eos()), (Some(256), Some(256)));
    assert!(!tok.adds_bos());
    assert!(tok.is_stop(256));
}

#[test]
fn synth_is_deterministic_in_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let a = std::fs::read(synth_tiny(dir.path(), "tiny-cheems", GgmlType::Q4_K, 1)).unwrap();
    let b = dir.path().join("again.gguf");
    synth("tiny-cheems", GgmlType::Q4_K, &b, 1).unwrap();
    assert!(a == std::fs::read(&b).unwrap());
    let c = std::fs::read(synth_tiny(dir.path(), "tiny-cheems", GgmlType::Q4_K, 2)).unwrap();
    assert_eq!(a.len(), c.len());
    assert!(a != c);
    let err = synth("gpt-5", GgmlType::Q8_0, &dir.path().join("x.gguf"), 0).unwrap_err();
    assert!(err.to_string().contains("unknown shape"), "{err}");
}

#[test]
fn synth_and_info_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c.gguf");
    let o = out.to_str().unwrap();
    let run = cheems(&[
        "synth",
        "--shape",
        "tiny-cheems",
        "--type",
        "q4_0",
        "-o",
        o,
        "--seed",
        "3",
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(
        stdout.contains("2701350 parameters") && stdout.contains("MiB"),
        "{stdout}"
    );
    let info = cheems(&["info", o]);
    assert!(info.status.success(), "{}", text(&info.stderr));
    let info = text(&info.stdout);
    for needle in [
        "architecture:  cheems",
        "embedding_length",
        "block_count",
        "[\"ssd\", \"ssd\", \"ssd\", \"dma\"]",
        "model gpt2, pre gpt-2, 320 tokens, 0 merges, bos 256, eos 256",
    ] {
        assert!(info.contains(needle), "info lacks {needle:?}:\n{info}");
    }
    let line = |key: &str| {
        info.lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap_or_default()
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(line("embedding_length"), "256");
    assert_eq!(line("block_count"), "4");
    assert_eq!(line("expert_count"), "64");
    assert_eq!(line("ssm.state_size"), "32");

    let bad = cheems(&["synth", "--shape", "nope", "-o", o]);
    assert_clean_error(&bad, "unknown shape", "unknown shape");
    let bad = cheems(&["synth", "--shape", "tiny-llama", "--type", "q8_k", "-o", o]);
    assert!(!bad.status.success());
}

fn bench_json(args: &[&str]) -> Json {
    let run = cheems(args);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn bench_reports_json_for_a_converted_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cheems.gguf");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/cheems");
    let opts = cheems_quantize::Options::new(GgmlType::Q8_0);
    cheems_quantize::convert(&fixture, &file, &opts, 1, false).unwrap();
    let f = file.to_str().unwrap();
    let j = bench_json(&[
        "bench", f, "-p", "8", "-n", "8", "-r", "2", "-t", "1", "--json",
    ]);
    assert_eq!(j["arch"], "cheems");
    assert_eq!(j["type"], "Q8_0");
    assert_eq!(j["threads"], 1);
    assert_eq!((j["pp"].as_u64(), j["tg"].as_u64()), (Some(8), Some(8)));
    assert_eq!(
        (j["depth"].as_u64(), j["reps"].as_u64()),
        (Some(0), Some(2))
    );
    assert!(j["size_bytes"].as_u64().unwrap() > 0 && j["params"].as_u64().unwrap() > 0);
    assert!(!j["level"].as_str().unwrap().is_empty());
    assert!(j["model"].as_str().unwrap().ends_with("cheems.gguf"));
    for test in ["pp", "tg"] {
        let median = j[format!("{test}_tok_s")].as_f64().unwrap();
        let runs: Vec<f64> = j[format!("{test}_runs")]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(runs.len(), 2);
        assert!(median > 0.0 && runs.iter().all(|&r| r > 0.0), "{j}");
        assert!((median - (runs[0] + runs[1]) / 2.0).abs() <= 1e-6 * median);
    }
}

#[test]
fn bench_with_depth_table_and_skipped_tests() {
    let dir = tempfile::tempdir().unwrap();
    // llama: the KV cache must hold depth + prompt + generation.
    let path = synth_tiny(dir.path(), "tiny-llama", GgmlType::Q4_0, 0);
    let f = path.to_str().unwrap();
    let run = cheems(&[
        "bench", f, "-p", "8", "-n", "4", "-d", "40", "-r", "2", "-t", "1",
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let table = text(&run.stdout);
    for needle in [
        "| model",
        "t/s median",
        "threads",
        "pp8 @ d40",
        "tg4 @ d40",
        "llama",
        "Q4_0",
    ] {
        assert!(table.contains(needle), "table lacks {needle:?}:\n{table}");
    }
    assert_eq!(table.lines().count(), 4, "{table}");

    let j = bench_json(&[
        "bench", f, "-p", "0", "-n", "4", "-r", "1", "-t", "1", "--json",
    ]);
    assert!(j["pp_tok_s"].is_null() && j["pp_runs"].as_array().unwrap().is_empty());
    assert!(j["tg_tok_s"].as_f64().unwrap() > 0.0);
    let j = bench_json(&[
        "bench", f, "-p", "16", "-n", "0", "-r", "1", "-t", "1", "--json",
    ]);
    assert!(j["tg_tok_s"].is_null() && j["pp_tok_s"].as_f64().unwrap() > 0.0);

    let doge = synth_tiny(dir.path(), "tiny-doge-moe", GgmlType::Q8_0, 0);
    let j = bench_json(&[
        "bench",
        doge.to_str().unwrap(),
        "-p",
        "8",
        "-n",
        "4",
        "-d",
        "20",
        "-r",
        "1",
        "-t",
        "1",
        "--json",
    ]);
    assert_eq!(j["depth"], 20);
    assert!(j["pp_tok_s"].as_f64().unwrap() > 0.0 && j["tg_tok_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_refuses_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let path = synth_tiny(dir.path(), "tiny-mamba2", GgmlType::Q8_0, 0);
    let f = path.to_str().unwrap();
    assert_clean_error(&cheems(&["bench", f, "-r", "0"]), "-r 0", "repetitions");
    assert_clean_error(
        &cheems(&["bench", f, "-p", "0", "-n", "0"]),
        "nothing",
        "nothing to measure",
    );
    assert_clean_error(&cheems(&["bench", f, "-t", "0"]), "-t 0", "threads");
    let missing = dir.path().join("missing.gguf");
    assert_clean_error(
        &cheems(&["bench", missing.to_str().unwrap()]),
        "missing file",
        "missing.gguf",
    );
    let not_a_model = dir.path().join("junk.gguf");
    std::fs::write(&not_a_model, b"not a model file at all").unwrap();
    assert_clean_error(
        &cheems(&["bench", not_a_model.to_str().unwrap()]),
        "junk",
        "junk.gguf",
    );
}

#[test]
fn bench_and_run_report_the_expert_cache_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = synth_tiny(dir.path(), "tiny-doge-moe", GgmlType::Q8_0, 0);
    let f = path.to_str().unwrap();
    // 0.02 MiB: 64 of the 128 records (a quarter of a MiB would hold them all).
    let j = bench_json(&[
        "bench",
        f,
        "-p",
        "16",
        "-n",
        "8",
        "-r",
        "2",
        "-t",
        "1",
        "--json",
        "--mem",
        "--expert-cache",
        "0.02",
    ]);
    let e = &j["experts"];
    assert!(e["cache_bytes"].as_u64().unwrap() <= 20971, "{j}");
    assert!(e["cache_records"].as_u64().unwrap() >= 4, "{j}");
    for test in ["pp", "tg"] {
        let (hits, misses) = (e[test]["hits"].as_u64(), e[test]["misses"].as_u64());
        assert!(hits.unwrap() + misses.unwrap() > 0, "{j}");
        assert!(e[test]["bytes_read"].as_u64().is_some(), "{j}");
    }
    let m = &j["mem"];
    assert!(
        m["peak_rss"].as_u64().unwrap() >= m["rss"].as_u64().unwrap(),
        "{j}"
    );
    let cat = |c: &str, k: &str| m["categories"][c][k].as_u64().unwrap();
    assert_eq!(cat("expert tables", "mapped"), 0, "{j}");
    assert!(
        cat("dense weights", "mapped") > 0 && cat("expert cache", "bytes") > 0,
        "{j}"
    );
    assert!(
        cat("state", "bytes") > 0 && cat("scratch", "bytes") > 0,
        "{j}"
    );
    // The table says the same.
    let out = cheems(&[
        "bench",
        f,
        "-p",
        "8",
        "-n",
        "4",
        "-r",
        "1",
        "--mem",
        "--expert-cache",
        "0.02",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    for needle in [
        "expert cache: 0.02 MiB",
        "tg: ",
        "misses",
        "peak RSS (VmHWM)",
        "| dense weights",
    ] {
        assert!(table.contains(needle), "{needle:?} missing:\n{table}");
    }
    // `run -v` reports the cache, and greedy text is the same with and without it.
    let run = |extra: &[&str]| {
        let args = [
            &[
                "run",
                f,
                "-p",
                "abc",
                "-n",
                "24",
                "--temp",
                "0",
                "--ignore-eos",
            ],
            extra,
        ]
        .concat();
        let out = cheems(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        (text(&out.stdout), text(&out.stderr))
    };
    let (free, _) = run(&[]);
    let (bounded, err) = run(&["-v", "--expert-cache", "0.02", "--no-mmap"]);
    assert_eq!(bounded, free);
    assert!(
        err.contains("read into memory") && err.contains("expert cache 0.02 MiB"),
        "{err}"
    );
    assert!(err.contains("experts: ") && err.contains("misses"), "{err}");
    // A bound that cannot hold one token's experts is a clean error.
    assert_clean_error(
        &cheems(&["bench", f, "-n", "4", "--expert-cache", "0.001"]),
        "tiny cache",
        "expert cache",
    );
    assert_clean_error(
        &cheems(&["run", f, "-p", "a", "--expert-cache=-2"]),
        "negative cache",
        "--expert-cache",
    );
}

#[test]
fn run_stops_at_a_full_context_or_shifts_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = synth_tiny(dir.path(), "tiny-llama", GgmlType::Q8_0, 0);
    let f = path.to_str().unwrap();
    let base = [
        "run",
        f,
        "-p",
        "hello",
        "--ctx",
        "16",
        "-n",
        "60",
        "--temp",
        "0",
        "--ignore-eos",
    ];
    let out = cheems(&base);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("the context is full: 16 tokens") && err.contains("--context-shift"),
        "{err}"
    );
    assert!(err.contains("generation: 12 tokens"), "{err}");
    let out = cheems(&[&base[..], &["--context-shift", "--keep", "2", "-v"]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("generation: 60 tokens"), "{err}");
    assert!(
        err.contains("context shift: dropped 7 tokens after the first 2"),
        "{err}"
    );
}
