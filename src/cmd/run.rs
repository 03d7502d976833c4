//! `cheems run [FILE] -p <PROMPT> [-n N] [sampling flags] [-t THREADS]`: generate text, streamed
//! to stdout as it is produced; timings to stderr.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use cheems::sampler::{Sampler, SamplerParams};
use cheems::tokenizer::{StreamDecoder, Tokenizer};
use cheems::{Arch, LoadOptions, Model, Session, SessionOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model file (default: the default model, as `cheems chat`; see `CHEEMS_MODEL`).
    pub file: Option<PathBuf>,
    /// The prompt (BOS is added as the model's tokenizer asks; no chat template).
    #[arg(short, long)]
    pub prompt: String,
    /// Tokens to generate at most.
    #[arg(short = 'n', long, default_value_t = 128)]
    pub n_predict: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Positions of a plain-attention KV cache (llama); default: the model's context, at most 4096.
    #[arg(long)]
    pub ctx: Option<usize>,
    /// When a plain-attention (llama) context is full, drop the oldest half of the tokens after
    /// the kept ones and go on (llama.cpp's context shift), instead of stopping.
    #[arg(long)]
    pub context_shift: bool,
    /// Prompt tokens a context shift keeps, after BOS (which is always kept).
    #[arg(long, default_value_t = 0)]
    pub keep: usize,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Threads (default: available cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Restore a session state saved by --save-state before processing the prompt.
    #[arg(long, value_name = "FILE")]
    pub load_state: Option<PathBuf>,
    /// Save the session state (prompt and generated text) when done.
    #[arg(long, value_name = "FILE")]
    pub save_state: Option<PathBuf>,
    /// Print the session's memory and state-file timings to stderr.
    #[arg(short, long)]
    pub verbose: bool,
}

/// How the model file is held (shared by the commands that open sessions).
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Bound the memory of CDMoE expert records to MIB mebibytes: a token's experts are read
    /// from the file when its routing selects them, into a cache that evicts the least recently
    /// used (default: no bound; records are read in place from the mapped file).
    #[arg(long, value_name = "MIB")]
    pub expert_cache: Option<f64>,
    /// Read the weights into memory instead of mapping the file.
    #[arg(long)]
    pub no_mmap: bool,
    /// Where the forward pass runs: cpu, cuda or cuda:N (CUDA needs a build with
    /// `--features cuda`, an NVIDIA GPU and its driver).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: cheems::Device,
}

impl LoadArgs {
    pub fn options(&self) -> Result<LoadOptions> {
        let expert_cache_bytes = match self.expert_cache {
            Some(m) if m.is_finite() && m > 0.0 => Some((m * (1u64 << 20) as f64) as u64),
            Some(m) => bail!("--expert-cache must be a positive number of MiB, not {m}"),
            None => None,
        };
        Ok(LoadOptions {
            expert_cache_bytes,
            use_mmap: !self.no_mmap,
        })
    }

    /// Loads `path` as the flags say.
    pub fn load(&self, path: &std::path::Path) -> Result<Model> {
        Model::load_with(path, &self.options()?)
    }
}

/// One line on how the weights are held and what the expert cache holds (for `-v`).
pub fn describe_memory(model: &Model, session: &Session) -> String {
    let mib = |b: f64| b / (1u64 << 20) as f64;
    let (state, scratch) = session.memory_bytes();
    let held = if model.options.use_mmap {
        "mapped"
    } else {
        "read into memory"
    };
    let mut line = format!(
        "memory: weights {:.1} MiB {held}, session state {:.2} MiB, scratch {:.2} MiB (fixed for the session)",
        mib(model.file.file_size() as f64),
        mib(state as f64),
        mib(scratch as f64)
    );
    match (&model.experts, session.expert_cache()) {
        (Some(src), Some(cache)) => {
            line += &format!(
                "; expert cache {:.2} MiB: {} of {} records of {} bytes ({:.2} MiB of experts in the file)",
                mib(cache.bytes() as f64),
                cache.capacity(),
                src.total_bytes / src.record_bytes.max(1) as u64,
                src.record_bytes,
                mib(src.total_bytes as f64)
            )
        }
        _ if model.options.expert_cache_bytes.is_some() => {
            line += "; the model has no CDMoE experts (--expert-cache has no effect)"
        }
        _ => {}
    }
    line
}

/// The expert cache's counts (for `-v`), if the session has one.
pub fn describe_experts(session: &Session) -> Option<String> {
    let s = session.expert_stats()?;
    Some(format!(
        "experts: {} hits, {} misses (hit rate {:.1}%), {:.2} MiB read",
        s.hits,
        s.misses,
        100.0 * s.hit_rate(),
        s.bytes_read as f64 / (1u64 << 20) as f64
    ))
}

/// Sampling flags shared by `run` and `chat`.
#[derive(Debug, Clone, clap::Args)]
pub struct SamplingArgs {
    /// Temperature; 0 is greedy.
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed (default: from the clock; printed to stderr).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    pub fn params(&self) -> Result<SamplerParams> {
        let bad = |v: f32, lo: f32, hi: f32| v.is_nan() || v < lo || v > hi;
        if bad(self.temperature, 0.0, f32::INFINITY)
            || bad(self.top_p, 0.0, 1.0)
            || bad(self.min_p, 0.0, 1.0)
        {
            bail!(
                "sampling flags out of range: --temp must be >= 0, --top-p and --min-p in [0, 1]"
            );
        }
        if self.repeat_penalty.is_nan() || self.repeat_penalty <= 0.0 {
            bail!("--repeat-penalty must be positive");
        }
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        Ok(SamplerParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed,
            ..SamplerParams::default()
        })
    }
}

pub fn run(a: Args) -> Result<()> {
    let params = a.sampling.params()?;
    if a.prompt.is_empty() {
        bail!("the prompt is empty (pass some text with -p)");
    }
    let file = match &a.file {
        Some(f) => f.clone(),
        None => cheems::default_model::require("cheems run MODEL.gguf -p ...")?,
    };
    let model = Arc::new(a.load.load(&file)?);
    let tok = Tokenizer::from_metadata(model.file.metadata())?;
    let prompt = tok.encode(&a.prompt, true)?;
    if prompt.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    let c = &model.config;
    let ctx = a.ctx.unwrap_or(c.context_length.min(4096));
    if c.arch == Arch::Llama && prompt.len() > ctx {
        bail!(
            "the prompt has {} tokens, more than the context of {ctx} (raise --ctx)",
            prompt.len()
        );
    }
    // Tokens a context shift keeps: BOS, then `--keep` more of the prompt.
    let bos = usize::from(tok.adds_bos() && prompt.first() == tok.bos().as_ref());
    let keep = (bos + a.keep).min(prompt.len());
    if a.context_shift && c.arch == Arch::Llama && keep + 2 > ctx {
        bail!(
            "--keep {} leaves nothing to shift in a context of {ctx} (lower --keep or raise --ctx)",
            a.keep
        );
    }
    let mut session = Session::new_on(
        model.clone(),
        &SessionOptions {
            ctx: Some(ctx),
            threads: a.threads,
        },
        a.load.device,
    )?;
    if a.verbose {
        eprintln!("{}", describe_memory(&model, &session));
    }
    if let Some(p) = &a.load_state {
        let t = Instant::now();
        session.load_state(p)?;
        if a.verbose {
            eprintln!(
                "loaded {} ({} tokens of state) in {:.2} ms",
                p.display(),
                session.pos(),
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    let mut sampler = Sampler::new(params.clone(), c.n_vocab);
    prompt.iter().for_each(|&t| sampler.accept(t));
    eprintln!("seed {}, {} prompt tokens", params.seed, prompt.len());

    let t0 = Instant::now();
    let mut logits = session.prefill(&prompt)?.to_vec();
    let prompt_s = t0.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    let mut stream = StreamDecoder::new();
    let t1 = Instant::now();
    let mut generated = 0;
    for _ in 0..a.n_predict {
        let next = sampler.sample(&logits);
        if !a.ignore_eos && tok.is_stop(next) {
            break;
        }
        if let Some(text) = stream.push(&tok, next) {
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
        generated += 1;
        sampler.accept(next);
        if let Some(cap) = session
            .context_capacity()
            .filter(|&cap| session.pos() >= cap)
        {
            if !a.context_shift {
                eprintln!(
                    "\n[the context is full: {cap} tokens held (--ctx {cap}); stopping. \
                     --context-shift drops the oldest half and goes on; --ctx raises the limit]"
                );
                break;
            }
            let dropped = session.context_shift(keep)?;
            if a.verbose {
                eprintln!(
                    "\n[context shift: dropped {dropped} tokens after the first {keep}; {} held]",
                    session.pos()
                );
            }
        }
        logits.copy_from_slice(session.decode(next)?);
    }
    if let Some(text) = stream.flush() {
        out.write_all(text.as_bytes())?;
    }
    writeln!(out)?;
    let gen_s = t1.elapsed().as_secs_f64();
    if let Some(p) = &a.save_state {
        let t = Instant::now();
        session.save_state(p)?;
        if a.verbose {
            let size = std::fs::metadata(p).map_or(0, |m| m.len());
            eprintln!(
                "saved {} ({size} bytes) in {:.2} ms",
                p.display(),
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    if let Some(line) = describe_experts(&session).filter(|_| a.verbose) {
        eprintln!("{line}");
    }
    eprintln!(
        "prompt: {} tokens in {:.1} ms ({:.1} tok/s); generation: {generated} tokens in {:.1} ms ({:.1} tok/s)",
        prompt.len(),
        prompt_s * 1e3,
        prompt.len() as f64 / prompt_s.max(1e-9),
        gen_s * 1e3,
        generated as f64 / gen_s.max(1e-9)
    );
    Ok(())
}
