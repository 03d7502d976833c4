//! `cheems quantize`: converts a Hugging Face checkpoint folder to a model file (GGUF v3).
//!
//! The pipeline: [`hf`] opens the folder (config, safetensors shards, tokenizer files), [`arch`]
//! maps one architecture's config and tensors to the file's keys and tensor names, [`plan`]
//! decides each tensor's stored type, [`vocab`] carries the tokenizer and chat template, and
//! [`convert`] streams the tensors through the block quantizer to disk. The file conventions are
//! in `formats/FORMAT.md`.
//!
//! This crate depends on the formats crate only; the runtime does not depend on it.

pub mod arch;
pub mod convert;
pub mod hf;
pub mod plan;
pub mod vocab;

pub use convert::{convert, plan_dir, Summary};
pub use plan::{ExpertLayout, Options};
