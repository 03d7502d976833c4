//! The blocks models are made of, one file each; each binds its weights by name and shape and
//! steps over slices with per-sequence state and scratch.

pub mod attention;
pub mod cdmoe;
pub mod dma;
pub mod mlp;
pub mod norm;
pub mod rope;
pub mod ssd;
