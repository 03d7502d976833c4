//! `cheems logits <FILE> (--tokens 1,2,3 | --prompt TEXT) --out OUT.npy [--prefill N]`: the logits
//! after each token, as a float32 `[n_tokens, vocab]` array (row t: after tokens 0..=t).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use cheems::{Session, SessionOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model file.
    pub file: PathBuf,
    /// Comma-separated token ids (no BOS or template is added).
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    pub tokens: Vec<u32>,
    /// Text, tokenized with the model's tokenizer (BOS added as the model asks).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Output .npy file.
    #[arg(long)]
    pub out: PathBuf,
    /// Send the first N tokens as one batch (the rest one at a time).
    #[arg(long, default_value_t = 0)]
    pub prefill: usize,
    /// Threads.
    #[arg(short, long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub load: super::run::LoadArgs,
}

pub fn run(a: Args) -> Result<()> {
    let model = Arc::new(a.load.load(&a.file)?);
    let tokens = match &a.prompt {
        Some(p) => {
            let tok = cheems::tokenizer::Tokenizer::from_metadata(model.file.metadata())?;
            tok.encode(p, true)?
        }
        None => a.tokens.clone(),
    };
    if tokens.is_empty() {
        bail!("no tokens: pass --tokens 1,2,3 or a non-empty --prompt");
    }
    if a.prefill > tokens.len() {
        bail!(
            "--prefill {} is more than the {} tokens given",
            a.prefill,
            tokens.len()
        );
    }
    let mut s = Session::new_on(
        model.clone(),
        &SessionOptions {
            threads: a.threads,
            ctx: Some(tokens.len()),
        },
        a.load.device,
    )?;
    let v = model.config.n_vocab;
    let mut out = Vec::with_capacity(tokens.len() * v);
    if a.prefill > 0 {
        s.prefill_all(&tokens[..a.prefill], &mut out)?;
    }
    for &t in &tokens[a.prefill..] {
        out.extend_from_slice(s.decode(t)?);
    }
    cheems::npy::write_f32(&a.out, &[tokens.len(), v], &out)?;
    eprintln!(
        "wrote {} x {} logits to {}",
        tokens.len(),
        v,
        a.out.display()
    );
    Ok(())
}
