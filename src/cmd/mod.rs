//! One module per subcommand: argument parsing and output; the work happens in the crates.

pub mod bench;
pub mod chat;
pub mod info;
pub mod logits;
pub mod perplexity;
pub mod quantize;
pub mod run;
pub mod synth;
