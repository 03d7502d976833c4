//! CPU kernels of cheems (SIMD with runtime dispatch, each with a scalar reference twin).
//!
//! Empty until the engine lands: the formats crate holds the scalar block reference for now.
