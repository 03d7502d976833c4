//! `cheems perplexity <FILE> -f <TEXT> [--ctx N]`: perplexity of the model over a text file,
//! scored in independent windows of `ctx` tokens (every token after a window's first is scored).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use cheems::tokenizer::Tokenizer;
use cheems::{Session, SessionOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model file.
    pub file: PathBuf,
    /// Text file to score.
    #[arg(short = 'f', long)]
    pub text: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Threads.
    #[arg(short, long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub load: super::run::LoadArgs,
}

pub fn run(a: Args) -> Result<()> {
    if a.ctx < 2 {
        bail!("--ctx must be at least 2");
    }
    let text =
        std::fs::read_to_string(&a.text).with_context(|| format!("read {}", a.text.display()))?;
    let model = Arc::new(a.load.load(&a.file)?);
    let tok = Tokenizer::from_metadata(model.file.metadata())?;
    let ids = tok.encode(&text, true)?;
    if ids.len() < 2 {
        bail!("{} holds fewer than 2 tokens", a.text.display());
    }
    let v = model.config.n_vocab;
    let mut s = Session::new_on(
        model.clone(),
        &SessionOptions {
            ctx: Some(a.ctx),
            threads: a.threads,
        },
        a.load.device,
    )?;
    let (mut nll, mut count) = (0f64, 0usize);
    let mut logits = Vec::new();
    let t0 = Instant::now();
    for window in ids.chunks(a.ctx).filter(|w| w.len() >= 2) {
        s.reset();
        logits.clear();
        s.prefill_all(window, &mut logits)?;
        for (t, &next) in window.iter().enumerate().skip(1) {
            let row = &logits[(t - 1) * v..t * v];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = f64::from(max)
                + row
                    .iter()
                    .map(|&l| f64::from(l - max).exp())
                    .sum::<f64>()
                    .ln();
            nll += lse - f64::from(row[next as usize]);
            count += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "perplexity: {:.4} over {count} tokens (windows of {} tokens)",
        (nll / count as f64).exp(),
        a.ctx
    );
    eprintln!("{:.1} tokens/s", ids.len() as f64 / secs.max(1e-9));
    Ok(())
}
