//! The bytes of cheems: model files and weight block layouts.
//!
//! - [`gguf`]: the GGUF v3 container, read in place through a memory map (hostile-input validation)
//!   and written by streaming tensors to disk.
//! - [`ggml_type`]: the table of ggml tensor types (ids, block sizes, byte sizes).
//! - [`blocks`]: the ggml block layouts (`#[repr(C)]`, `Pod`) with the scalar reference quantizer and
//!   dequantizer of each type. These reference functions *are* the spec; fast kernels live in
//!   `cheems-kernels` and are tested against them.
//! - [`safetensors`]: a minimal, validating reader of Hugging Face `.safetensors` headers, for the
//!   converter.
//!
//! Nothing here computes with models; that is the job of the kernels and the runtime.
//!
//! ```
//! use cheems_formats::ggml_type::GgmlType;
//! // 64 Q4_0 weights take two blocks of 18 bytes.
//! assert_eq!(GgmlType::Q4_0.row_bytes(64), Some(36));
//! ```

pub mod blocks;
pub mod error;
pub mod ggml_type;
pub mod gguf;
pub mod safetensors;

pub use error::{Error, Result};
pub use ggml_type::GgmlType;
