//! The cheems runtime.
