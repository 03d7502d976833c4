//! The math of cheems: kernels over slices, each fast path with a scalar reference twin.
//!
//! - [`reference`]: scalar dot products of every weight type with its activation partner
//!   (ggml's generic `vec_dot` semantics), the definition the SIMD kernels are tested against.
//! - [`matvec`]: matrix-vector products over weights borrowed in place, rows split on the
//!   caller's private thread pool.
//! - [`pool`]: that pool (persistent workers; publishing a job allocates nothing).
//!
//! Models, state and file layout live elsewhere (the root crate and `cheems-formats`).

pub mod matvec;
pub mod pool;
pub mod reference;
