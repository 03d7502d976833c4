//! `cheems bench <FILE> [-p 512] [-n 128] [-t N] [-r 5] [-d DEPTH] [--json]`: prompt processing
//! and generation speed, measured separately, as llama-bench does.
//!
//! Each repetition starts from a fresh session or, with `-d`, from DEPTH random tokens of context
//! (prefilled once, untimed, and restored from a snapshot before every repetition). The prompt test then times one `prefill` of `-p` random tokens; the generation test
//! times `-n` single-token `decode`s that start right after the depth context (not after the
//! prompt, as llama-bench's `tg`), fed random tokens. A warm-up run (a short prefill and one
//! decode) comes first. The report gives the median, minimum, maximum and standard deviation of
//! the tokens per second of every test, as a table or, with `--json`, one JSON object on stdout.
//!
//! With `--expert-cache MIB` (CDMoE models) each test also reports the expert cache's hits,
//! misses and bytes read over its repetitions (after the warm-up, so the generation test runs
//! with a warm cache). `--mem` adds the peak RSS (`VmHWM`) and, by category (header, dense
//! weights, expert tables, expert cache, state, scratch), the bytes mapped in this process
//! (`/proc/self/pagemap`) and the bytes in memory (`mincore`; for the file, the page cache).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use cheems::experts::ExpertStats;
use cheems::memory::{model_regions, report, rss};
use cheems::snapshot::SessionState;
use cheems::{Model, Session, SessionOptions};
use cheems_formats::GgmlType;

use super::run::LoadArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model file (cheems or llama.cpp GGUF).
    pub file: PathBuf,
    /// Tokens of the prompt-processing test (0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Tokens of the generation test (0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Threads (default: available cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub reps: usize,
    /// Tokens of context before each test (prefilled, not timed).
    #[arg(short = 'd', long = "n-depth", default_value_t = 0)]
    pub depth: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Report peak RSS and resident bytes by category after the tests.
    #[arg(long)]
    pub mem: bool,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Tokens of the warm-up prefill at most.
const WARMUP_TOKENS: usize = 32;

/// Tokens per second of the repetitions of one test.
#[derive(Debug)]
struct Stats {
    runs: Vec<f64>,
}

impl Stats {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.runs.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    fn min(&self) -> f64 {
        self.runs.iter().copied().fold(f64::INFINITY, f64::min)
    }

    fn max(&self) -> f64 {
        self.runs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }

    /// Sample standard deviation (0 for one run).
    fn stddev(&self) -> f64 {
        let n = self.runs.len();
        if n < 2 {
            return 0.0;
        }
        let mean = self.runs.iter().sum::<f64>() / n as f64;
        let var = self.runs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        var.sqrt()
    }
}

/// What the table's leading columns say about the model and the run.
#[derive(Debug)]
struct Header {
    model: String,
    arch: &'static str,
    ty: String,
    size_bytes: u64,
    params: u64,
    threads: usize,
    /// The CPU kernels' SIMD level, or the GPU (`cuda:0`).
    level: String,
}

pub fn run(a: Args) -> Result<()> {
    if a.reps == 0 {
        bail!("-r/--repetitions must be at least 1");
    }
    if a.n_prompt == 0 && a.n_gen == 0 {
        bail!("nothing to measure: -p and -n are both 0");
    }
    if a.threads == Some(0) {
        bail!("-t/--threads must be at least 1");
    }
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let model = Arc::new(a.load.load(&a.file)?);
    let mut header = Header {
        model: a.file.file_name().map_or_else(
            || a.file.display().to_string(),
            |n| n.to_string_lossy().into(),
        ),
        arch: model.config.arch.name(),
        ty: type_summary(&model),
        size_bytes: model.file.file_size() as u64,
        params: model.file.tensors().iter().map(|t| t.n_elements()).sum(),
        threads,
        level: cheems_kernels::level_name().to_string(),
    };
    let n_vocab = model.config.n_vocab;
    // Room for the depth, the prompt test and the generation test (plain attention only uses it).
    let ctx = a.depth + a.n_prompt + a.n_gen;
    let mut session = Session::new_on(
        model.clone(),
        &SessionOptions {
            ctx: Some(ctx),
            threads: Some(threads),
        },
        a.load.device,
    )?;
    if let cheems::Device::Cuda(n) = a.load.device {
        header.level = format!("cuda:{n}");
    }
    let mut rng = 0x5EED_u64;
    let mut tokens = |n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((rng >> 33) % n_vocab as u64) as u32
            })
            .collect()
    };
    let depth_tokens = tokens(a.depth);
    let prompt = tokens(a.n_prompt);
    let gen = tokens(a.n_gen);

    // Warm-up: touch the weights and fill the caches once.
    if a.n_prompt > 0 {
        session
            .prefill(&prompt[..a.n_prompt.min(WARMUP_TOKENS)])
            .context("warm-up prefill")?;
    }
    if a.n_gen > 0 {
        session.decode(gen[0]).context("warm-up decode")?;
    }

    // The depth context, prefilled once.
    session.reset();
    let depth = if a.depth > 0 {
        session
            .prefill(&depth_tokens)
            .with_context(|| format!("prefilling {} tokens of depth", a.depth))?;
        Some(session.snapshot())
    } else {
        None
    };

    if !a.json {
        print_table_head();
    }
    let depth_label = if a.depth > 0 {
        format!(" @ d{}", a.depth)
    } else {
        String::new()
    };
    let stats = |s: &Session| s.expert_stats().unwrap_or_default();
    let mut experts = Vec::new();
    let mut pp = Stats { runs: Vec::new() };
    if a.n_prompt > 0 {
        let before = stats(&session);
        for rep in 0..a.reps {
            start(&mut session, depth.as_ref())?;
            let t0 = Instant::now();
            session
                .prefill(&prompt)
                .with_context(|| format!("prompt test, repetition {}", rep + 1))?;
            pp.runs
                .push(a.n_prompt as f64 / t0.elapsed().as_secs_f64().max(1e-9));
        }
        experts.push(("pp", stats(&session).since(&before)));
        if !a.json {
            print_row(&header, &format!("pp{}{depth_label}", a.n_prompt), &pp);
        }
    }
    let mut tg = Stats { runs: Vec::new() };
    if a.n_gen > 0 {
        let before = stats(&session);
        for rep in 0..a.reps {
            start(&mut session, depth.as_ref())?;
            let t0 = Instant::now();
            for &t in &gen {
                session
                    .decode(t)
                    .with_context(|| format!("generation test, repetition {}", rep + 1))?;
            }
            tg.runs
                .push(a.n_gen as f64 / t0.elapsed().as_secs_f64().max(1e-9));
        }
        experts.push(("tg", stats(&session).since(&before)));
        if !a.json {
            print_row(&header, &format!("tg{}{depth_label}", a.n_gen), &tg);
        }
    }
    let cache = session.expert_cache().map(|c| (c.bytes(), c.capacity()));
    let experts = cache.map(|c| (c, experts));
    let mem = a.mem.then(|| memory(&model, &session));
    if !a.json {
        if let Some(((bytes, records), tests)) = &experts {
            println!();
            println!(
                "expert cache: {:.2} MiB, {records} records",
                bytes_mib(*bytes as u64)
            );
            for (test, s) in tests {
                println!(
                    "  {test}: {} hits, {} misses (hit rate {:.1}%), {:.2} MiB read",
                    s.hits,
                    s.misses,
                    100.0 * s.hit_rate(),
                    bytes_mib(s.bytes_read)
                );
            }
        }
        if let Some(m) = &mem {
            print_memory(m);
        }
    }
    if a.json {
        let median = |s: &Stats| (!s.runs.is_empty()).then(|| s.median());
        let out = serde_json::json!({
            "model": a.file.display().to_string(),
            "arch": header.arch,
            "type": header.ty,
            "size_bytes": header.size_bytes,
            "params": header.params,
            "threads": header.threads,
            "level": header.level,
            "device": session.device_name(),
            "pp": a.n_prompt,
            "tg": a.n_gen,
            "depth": a.depth,
            "reps": a.reps,
            "pp_tok_s": median(&pp),
            "tg_tok_s": median(&tg),
            "pp_runs": pp.runs,
            "tg_runs": tg.runs,
            "experts": experts.map(|((bytes, records), tests)| {
                let mut o = serde_json::json!({"cache_bytes": bytes, "cache_records": records});
                for (test, s) in tests {
                    o[test] = stats_json(&s);
                }
                o
            }),
            "mem": mem.map(|m| {
                let mut cats = serde_json::Map::new();
                for (c, bytes, mapped, in_memory) in &m.categories {
                    cats.insert(
                        c.to_string(),
                        serde_json::json!({"bytes": bytes, "mapped": mapped, "in_memory": in_memory}),
                    );
                }
                serde_json::json!({
                    "peak_rss": m.peak_rss,
                    "rss": m.rss,
                    "state_bytes": m.state,
                    "categories": cats,
                })
            }),
        });
        println!("{out}");
    }
    Ok(())
}

fn bytes_mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn stats_json(s: &ExpertStats) -> serde_json::Value {
    serde_json::json!({"hits": s.hits, "misses": s.misses, "bytes_read": s.bytes_read})
}

/// What `--mem` reports.
#[derive(Debug)]
struct Memory {
    peak_rss: Option<u64>,
    rss: Option<u64>,
    state: usize,
    /// (category, bytes, mapped in this process, in memory per mincore)
    categories: Vec<(&'static str, u64, Option<u64>, Option<u64>)>,
}

fn memory(model: &Model, session: &Session) -> Memory {
    let mut regions = model_regions(model);
    regions.extend(session.memory_regions());
    let now = rss();
    Memory {
        peak_rss: now.map(|r| r.peak),
        rss: now.map(|r| r.current),
        state: session.memory_bytes().0,
        categories: report(&regions)
            .into_iter()
            .map(|(c, b, m, i)| (c.name(), b, m, i))
            .collect(),
    }
}

fn print_memory(m: &Memory) {
    let mib = |b: Option<u64>| b.map_or("?".to_string(), |b| format!("{:.2}", bytes_mib(b)));
    println!();
    println!(
        "memory: peak RSS (VmHWM) {} MiB, RSS now {} MiB",
        mib(m.peak_rss),
        mib(m.rss)
    );
    println!(
        "| {:<14} | {:>10} | {:>22} | {:>22} |",
        "category", "MiB", "resident, this process", "in memory (mincore)"
    );
    println!(
        "| {:-<14} | {:->9}: | {:->21}: | {:->21}: |",
        "", "", "", ""
    );
    for (c, bytes, mapped, in_memory) in &m.categories {
        println!(
            "| {c:<14} | {:>10} | {:>22} | {:>22} |",
            mib(Some(*bytes)),
            mib(*mapped),
            mib(*in_memory)
        );
    }
}

/// Puts the session at the start of a test: empty, or holding the depth context.
fn start(session: &mut Session, depth: Option<&SessionState>) -> Result<()> {
    match depth {
        Some(snap) => session.restore(snap).context("restoring the depth context"),
        None => {
            session.reset();
            Ok(())
        }
    }
}

/// llama.cpp's name of `general.file_type` (`llama_ftype`), else the type holding the most bytes.
fn type_summary(model: &Model) -> String {
    let ftype = model
        .file
        .metadata()
        .get("general.file_type")
        .and_then(|v| v.as_u64());
    let name = match ftype {
        Some(0) => Some("F32"),
        Some(1) => Some("F16"),
        Some(2) => Some("Q4_0"),
        Some(3) => Some("Q4_1"),
        Some(7) => Some("Q8_0"),
        Some(8) => Some("Q5_0"),
        Some(9) => Some("Q5_1"),
        Some(10) => Some("Q2_K"),
        Some(11) => Some("Q3_K_S"),
        Some(12) => Some("Q3_K_M"),
        Some(13) => Some("Q3_K_L"),
        Some(14) => Some("Q4_K_S"),
        Some(15) => Some("Q4_K_M"),
        Some(16) => Some("Q5_K_S"),
        Some(17) => Some("Q5_K_M"),
        Some(18) => Some("Q6_K"),
        Some(32) => Some("BF16"),
        _ => None,
    };
    if let Some(n) = name {
        return n.to_string();
    }
    let mut by_type: Vec<(GgmlType, u64)> = Vec::new();
    for t in model.file.tensors() {
        match by_type.iter_mut().find(|r| r.0 == t.ggml_type) {
            Some(r) => r.1 += t.size as u64,
            None => by_type.push((t.ggml_type, t.size as u64)),
        }
    }
    by_type
        .iter()
        .max_by_key(|r| r.1)
        .map_or_else(|| "?".to_string(), |r| r.0.to_string())
}

const COLUMNS: [(&str, usize); 12] = [
    ("model", 28),
    ("arch", 6),
    ("type", 6),
    ("size", 10),
    ("params", 9),
    ("threads", 7),
    ("level", 15),
    ("test", 14),
    ("t/s median", 11),
    ("min", 10),
    ("max", 10),
    ("sd", 8),
];

fn print_line(cells: &[String]) {
    let mut line = String::from("|");
    for (i, (cell, (_, w))) in cells.iter().zip(COLUMNS).enumerate() {
        // Text left-aligned, numbers right-aligned, as llama-bench.
        if i < 3 || i == 6 || i == 7 {
            line += &format!(" {cell:<w$} |");
        } else {
            line += &format!(" {cell:>w$} |");
        }
    }
    println!("{line}");
}

fn print_table_head() {
    print_line(&COLUMNS.map(|(name, _)| name.to_string()));
    let mut line = String::from("|");
    for (i, (_, w)) in COLUMNS.iter().enumerate() {
        let dashes = "-".repeat(*w);
        if i < 3 || i == 6 || i == 7 {
            line += &format!(" {dashes} |");
        } else {
            line += &format!(" {}: |", &dashes[1..]);
        }
    }
    println!("{line}");
}

fn print_row(h: &Header, test: &str, s: &Stats) {
    print_line(&[
        h.model.clone(),
        h.arch.to_string(),
        h.ty.clone(),
        format!("{:.2} MiB", h.size_bytes as f64 / (1u64 << 20) as f64),
        format!("{:.2} M", h.params as f64 / 1e6),
        h.threads.to_string(),
        h.level.to_string(),
        test.to_string(),
        format!("{:.2}", s.median()),
        format!("{:.2}", s.min()),
        format!("{:.2}", s.max()),
        format!("{:.2}", s.stddev()),
    ]);
}
