//! The math of cheems: kernels over slices, each fast path with a scalar reference twin.
//!
//! - [`reference`](mod@reference): scalar dot products of every weight type with its activation partner
//!   (ggml's generic `vec_dot` semantics), the definition the SIMD kernels are tested against.
//! - [`dispatch`]: the instruction-set level (detected once, overridable for tests and
//!   benchmarks) and its table of row kernels.
//! - [`matvec`]: matrix-vector products over weights borrowed in place, rows split on the
//!   caller's private thread pool.
//! - [`matmul`]: the batched products of prefill (integer tiles for Q4_0/Q8_0, an F16 kernel,
//!   dequantized tiles through `gemm` for the other types).
//! - [`ssm`]: the Mamba-2 SSD recurrence, one fused step per head and the chunked scan.
//! - [`vecops`]: f32 vector kernels (attention's dot products and weighted sums, SiLU).
//! - [`pool`]: that pool (persistent workers; publishing a job allocates nothing).
//! - private: `scalar` (the reference twins behind the kernel signature), `x86` (AVX2 and
//!   AVX-512 VNNI kernels), `neon` (aarch64).
//!
//! Models, state and file layout live elsewhere (the root crate and `cheems-formats`).
//!
//! ```
//! use cheems_formats::{blocks, GgmlType};
//! use cheems_kernels::matvec::{matvec, Activation, MatRef};
//! use cheems_kernels::pool::Pool;
//!
//! let (rows, cols) = (3, 64);
//! let w: Vec<f32> = (0..rows * cols).map(|i| (i % 7) as f32 - 3.0).collect();
//! let mut data = vec![0u8; GgmlType::Q8_0.row_bytes(rows * cols).unwrap()];
//! blocks::quantize_row(GgmlType::Q8_0, &w, &mut data).unwrap();
//! let x = vec![0.5f32; cols];
//! let mut act = Activation::with_capacity(cols);
//! act.quantize_for(GgmlType::Q8_0, &x);
//! let mut y = vec![0f32; rows];
//! let m = MatRef { ty: GgmlType::Q8_0, rows, cols, data: &data };
//! matvec(&m, &act, &x, &mut y, &Pool::new(1).unwrap());
//! let want: f32 = w[..cols].iter().map(|v| v * 0.5).sum();
//! assert!((y[0] - want).abs() < 1e-3 * want.abs().max(1.0));
//! println!("kernel level: {}", cheems_kernels::dispatch::level_name());
//! ```

pub mod dispatch;
pub mod matmul;
pub mod matvec;
#[cfg(target_arch = "aarch64")]
mod neon;
pub mod pool;
pub mod reference;
mod scalar;
pub mod ssm;
pub mod vecops;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use dispatch::{force_level, level_name, Level};

/// The CUDA C source of the GPU kernels (compiled at run time with NVRTC by the root crate's
/// optional `cuda` feature).
pub const CUDA_SOURCE: &str = include_str!("cuda/kernels.cu");
