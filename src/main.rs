//! The `cheems` command: model conversion and inspection (and, as the engine lands, running).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// cheems: run Mamba-2, Doge, Cheems and Llama models on your own machine.
#[derive(Debug, Parser)]
#[command(name = "cheems", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Convert a Hugging Face checkpoint folder to a model file.
    Quantize(cmd::quantize::Args),
    /// Describe a model file: architecture, hyper-parameters, tokenizer, tensors.
    Info(cmd::info::Args),
    /// Generate text from a prompt.
    Run(cmd::run::Args),
    /// Chat with a model through its chat template (interactive, or one turn per input line).
    Chat(cmd::chat::Args),
    /// Write the logits after each token to a .npy file.
    Logits(cmd::logits::Args),
    /// Perplexity of the model over a text file.
    Perplexity(cmd::perplexity::Args),
    /// Measure prompt processing and generation speed (llama-bench-like).
    Bench(cmd::bench::Args),
    /// Write a random-weight model of a named shape (for benchmarks).
    Synth(cmd::synth::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Quantize(a) => cmd::quantize::run(a),
        Command::Info(a) => cmd::info::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Chat(a) => cmd::chat::run(a),
        Command::Logits(a) => cmd::logits::run(a),
        Command::Perplexity(a) => cmd::perplexity::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Synth(a) => cmd::synth::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain joined by ": ".
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
