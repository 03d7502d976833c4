//! `cheems synth --shape <NAME> --type <t> -o <FILE> [--seed N]`: a random-weight model of a
//! named shape, for benchmarks (the shapes and values are described in `cheems::synth`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use cheems::synth::{describe, synth, SHAPES};
use cheems_formats::gguf::GgufFile;
use cheems_formats::GgmlType;
use cheems_quantize::plan::parse_weight_type;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Shape: mamba2-130m, llama-110m, llama-110m-tied, doge-60m, doge-120m-moe, cheems-120m (tiny-mamba2,
    /// tiny-llama, tiny-doge-moe, tiny-cheems for tests).
    #[arg(long)]
    pub shape: String,
    /// Stored type of weight matrices, as `cheems quantize --type`: f32, f16, bf16, q8_0, q4_0,
    /// q4_1, q5_0, q5_1, q4_k, q5_k, q6_k.
    #[arg(long = "type", default_value = "q8_0", value_parser = parse_weight_type)]
    pub ty: GgmlType,
    /// Output model file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(a: Args) -> Result<()> {
    let Some(what) = describe(&a.shape) else {
        anyhow::bail!(
            "unknown shape `{}` (choose one of: {})",
            a.shape,
            SHAPES.join(", ")
        );
    };
    let start = Instant::now();
    synth(&a.shape, a.ty, &a.output, a.seed)?;
    let seconds = start.elapsed().as_secs_f64();
    let f = GgufFile::open(&a.output)
        .with_context(|| format!("cannot read back {}", a.output.display()))?;
    let params: u64 = f.tensors().iter().map(|t| t.n_elements()).sum();
    println!("{what}");
    println!(
        "wrote {}: {:.2} MiB, {params} parameters ({:.1} M), {} weights, seed {}, in {seconds:.2} s",
        a.output.display(),
        f.file_size() as f64 / (1u64 << 20) as f64,
        params as f64 / 1e6,
        a.ty,
        a.seed,
    );
    Ok(())
}
