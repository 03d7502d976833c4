//! The smallest program that uses the cheems library: load a model file, open a session, and
//! generate greedily from a prompt.
//!
//! `cargo run --release --example generate -- model.gguf "The capital of France is"`

use std::io::Write;
use std::sync::Arc;

use anyhow::{bail, Result};
use cheems::tokenizer::{StreamDecoder, Tokenizer};
use cheems::{Model, Session, SessionOptions};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, prompt] = args.as_slice() else {
        bail!("usage: generate <model.gguf> <prompt>");
    };
    let model = Arc::new(Model::load(path.as_ref())?);
    let tok = Tokenizer::from_metadata(model.file.metadata())?;
    let mut session = Session::new(model.clone(), &SessionOptions::default())?;
    let mut logits = session.prefill(&tok.encode(prompt, true)?)?.to_vec();
    let mut text = StreamDecoder::new();
    let mut out = std::io::stdout().lock();
    for _ in 0..64 {
        let next = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap_or(0) as u32;
        if tok.is_stop(next) {
            break;
        }
        if let Some(piece) = text.push(&tok, next) {
            out.write_all(piece.as_bytes())?;
            out.flush()?;
        }
        logits.copy_from_slice(session.decode(next)?);
    }
    writeln!(out)?;
    Ok(())
}
