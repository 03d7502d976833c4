//! A conversion plan: the model file's metadata and, for every tensor it will hold, where the
//! values come from (a checkpoint tensor, maybe transformed, or two tables interleaved into
//! expert records) and which ggml type stores them.
//!
//! The type policy lives here too: [`Class`] says what a tensor is, [`choose_type`] maps a class,
//! the requested type and the user's `--tensor-type` overrides to the stored type.

use anyhow::{bail, Result};
use cheems_formats::gguf::Metadata;
use cheems_formats::GgmlType;
use regex::Regex;

/// How values are derived from a checkpoint tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Transform {
    /// Copied as they are.
    None,
    /// llama.cpp's Q/K row permutation (`permute` in its converter): the rows of each of
    /// `n_head` heads go from split-half order to interleaved pairs, so that adjacent-pair RoPE
    /// on the stored rows equals split-half RoPE on the checkpoint's.
    RopePermute { n_head: usize },
    /// `A = -exp(A_log)` (Mamba-2's `ssm_a`, as llama.cpp stores it).
    NegExp,
}

/// Where a planned tensor's values come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// One checkpoint tensor.
    Tensor { name: String, transform: Transform },
    /// CDMoE expert records: for each expert e, row e of `down` then row e of `up`.
    Records { down: String, up: String },
    /// Values computed by the converter (e.g. llama3 `rope_freqs`).
    Values(Vec<f32>),
}

/// What a tensor is, for the type policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A vector (norm weights, biases, residual scales): always F32.
    Vector,
    /// A small parameter the math is sensitive to (SSM A, D, conv; DMA dt; router): F32.
    Precise,
    /// The token embedding when the output head is separate.
    Embedding,
    /// The output head, or the token embedding when it doubles as the head.
    Output,
    /// Expert records or tables.
    Experts,
    /// Any other weight matrix.
    Weight,
}

/// One tensor of the model file.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    pub name: String,
    /// ggml order, innermost first.
    pub dims: Vec<u64>,
    pub class: Class,
    pub source: Source,
    /// Stored type, filled by [`Plan::assign_types`].
    pub ty: GgmlType,
}

impl PlannedTensor {
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1) as usize
    }

    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A whole conversion.
#[derive(Debug)]
pub struct Plan {
    pub arch: &'static str,
    pub metadata: Metadata,
    pub tensors: Vec<PlannedTensor>,
}

/// User choices that shape the plan.
#[derive(Clone, Debug)]
pub struct Options {
    /// The base type of weight matrices (`--type`).
    pub ty: GgmlType,
    /// `--tensor-type REGEX=TYPE`, tried in order; the first match wins.
    pub overrides: Vec<(Regex, GgmlType)>,
    /// How CDMoE experts are stored.
    pub expert_layout: ExpertLayout,
}

impl Options {
    pub fn new(ty: GgmlType) -> Self {
        Options {
            ty,
            overrides: Vec::new(),
            expert_layout: ExpertLayout::Records,
        }
    }
}

/// Layout of CDMoE expert tables in the file (see `formats/FORMAT.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertLayout {
    /// One `[H, 2, E]` tensor per layer: expert e's `down_embed` row then its `up_embed` row.
    Records,
    /// The checkpoint's two `[H, E]` tables.
    Tables,
}

impl ExpertLayout {
    pub fn name(self) -> &'static str {
        match self {
            ExpertLayout::Records => "records",
            ExpertLayout::Tables => "tables",
        }
    }
}

/// Parses `REGEX=TYPE`.
pub fn parse_override(s: &str) -> Result<(Regex, GgmlType)> {
    let Some((re, ty)) = s.rsplit_once('=') else {
        bail!("--tensor-type `{s}`: expected REGEX=TYPE");
    };
    let ty = parse_weight_type(ty)?;
    let re = Regex::new(re).map_err(|e| anyhow::anyhow!("--tensor-type `{s}`: bad regex: {e}"))?;
    Ok((re, ty))
}

/// Parses a weight type name accepted by `--type`.
pub fn parse_weight_type(s: &str) -> Result<GgmlType> {
    match GgmlType::parse(s) {
        Some(t) if t.is_weight_type() => Ok(t),
        _ => bail!(
            "unknown or unsupported weight type `{s}` (choose one of: {})",
            WEIGHT_TYPES
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The weight types `cheems quantize --type` accepts.
pub const WEIGHT_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// llama.cpp's `general.file_type` (`llama_ftype`) for a base type.
pub fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q4_K => 15, // Q4_K_M
        GgmlType::Q5_K => 17, // Q5_K_M
        GgmlType::Q6_K => 18,
        GgmlType::BF16 => 32,
        _ => 0,
    }
}

fn is_low_bit(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q4_K | Q5_K)
}

/// The stored type of a tensor: the default policy, then overrides, then the fallback for rows
/// that are not a whole number of blocks (as llama.cpp: k-quants fall back to a 32-block type,
/// and 32-block types to F16).
pub fn choose_type(t: &PlannedTensor, opts: &Options) -> GgmlType {
    let base = opts.ty;
    let default = match t.class {
        Class::Vector | Class::Precise => GgmlType::F32,
        // More bits for the head at 4/5-bit types, as llama.cpp's mixes do.
        Class::Output if is_low_bit(base) => GgmlType::Q6_K,
        Class::Embedding | Class::Output | Class::Experts | Class::Weight => base,
    };
    // 1-D tensors stay F32 whatever is asked: every consumer reads them as f32.
    let chosen = if t.dims.len() <= 1 || matches!(t.source, Source::Values(_)) {
        GgmlType::F32
    } else {
        opts.overrides
            .iter()
            .find(|(re, _)| re.is_match(&t.name))
            .map_or(default, |&(_, ty)| ty)
    };
    fallback(chosen, t.row_len())
}

fn fallback(ty: GgmlType, row_len: usize) -> GgmlType {
    if row_len.is_multiple_of(ty.block_size()) {
        return ty;
    }
    let next = match ty {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    fallback(next, row_len)
}

impl Plan {
    /// Fills every tensor's stored type from the options.
    pub fn assign_types(&mut self, opts: &Options) {
        for t in &mut self.tensors {
            t.ty = choose_type(t, opts);
        }
        self.metadata.set("general.file_type", file_type(opts.ty));
        if opts.ty.is_quantized() {
            self.metadata.set("general.quantization_version", 2u32);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn planned(name: &str, dims: Vec<u64>, class: Class) -> PlannedTensor {
        PlannedTensor {
            name: name.into(),
            dims,
            class,
            source: Source::Tensor {
                name: String::new(),
                transform: Transform::None,
            },
            ty: GgmlType::F32,
        }
    }

    #[test]
    fn policy_keeps_vectors_f32_and_boosts_the_head() {
        let opts = Options::new(GgmlType::Q4_0);
        assert_eq!(
            choose_type(&planned("a", vec![64], Class::Weight), &opts),
            GgmlType::F32
        );
        assert_eq!(
            choose_type(&planned("a", vec![4, 64], Class::Precise), &opts),
            GgmlType::F32
        );
        assert_eq!(
            choose_type(
                &planned("output.weight", vec![256, 64], Class::Output),
                &opts
            ),
            GgmlType::Q6_K
        );
        assert_eq!(
            choose_type(&planned("w", vec![256, 64], Class::Weight), &opts),
            GgmlType::Q4_0
        );
        let opts8 = Options::new(GgmlType::Q8_0);
        assert_eq!(
            choose_type(
                &planned("output.weight", vec![256, 64], Class::Output),
                &opts8
            ),
            GgmlType::Q8_0
        );
    }

    #[test]
    fn overrides_win_and_partial_blocks_fall_back() {
        let mut opts = Options::new(GgmlType::Q4_K);
        opts.overrides
            .push(parse_override(r"ffn_down=q8_0").unwrap());
        assert_eq!(
            choose_type(
                &planned("blk.0.ffn_down.weight", vec![256, 8], Class::Weight),
                &opts
            ),
            GgmlType::Q8_0
        );
        // 96 is a multiple of 32 but not of 256: Q4_K falls back to Q5_0.
        assert_eq!(
            choose_type(&planned("w", vec![96, 8], Class::Weight), &opts),
            GgmlType::Q5_0
        );
        // 40 is not a multiple of 32 either: F16.
        assert_eq!(
            choose_type(&planned("w", vec![40, 8], Class::Weight), &opts),
            GgmlType::F16
        );
        assert!(parse_override("nope").is_err());
        assert!(parse_override("x=q8_k").is_err());
    }
}
