//! `cheems quantize <HF_DIR> -o <FILE.gguf> --type <t>`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use cheems_quantize::plan::{parse_override, parse_weight_type};
use cheems_quantize::{ExpertLayout, Options};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer files).
    pub hf_dir: PathBuf,
    /// Output model file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Stored type of weight matrices: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k.
    #[arg(long = "type", default_value = "q8_0", value_parser = parse_weight_type)]
    pub ty: cheems_formats::GgmlType,
    /// Override the type of tensors whose file name matches REGEX (repeatable; first match wins).
    #[arg(long = "tensor-type", value_name = "REGEX=TYPE")]
    pub tensor_type: Vec<String>,
    /// Layout of CDMoE expert tables: records (one expert's rows together) or tables.
    #[arg(long, default_value = "records", value_parser = ["records", "tables"])]
    pub expert_layout: String,
    /// Threads for quantizing (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(a: Args) -> Result<()> {
    let mut opts = Options::new(a.ty);
    for o in &a.tensor_type {
        opts.overrides.push(parse_override(o)?);
    }
    opts.expert_layout = if a.expert_layout == "tables" {
        ExpertLayout::Tables
    } else {
        ExpertLayout::Records
    };
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let progress = !a.quiet && std::io::stderr().is_terminal();
    let summary = cheems_quantize::convert(&a.hf_dir, &a.output, &opts, threads, progress)?;
    if !a.quiet {
        println!("{}", summary.table());
        println!("wrote {}", a.output.display());
    }
    Ok(())
}
