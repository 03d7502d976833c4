//! The cheems runtime: load a model file once, open sessions, feed tokens, read logits.
//!
//! - [`Model`] maps a file and binds every layer's weights by name and shape ([`weights`]); the
//!   weights stay in the file's bytes, in their stored type.
//! - [`Session`] owns one sequence's state and scratch, sized once; `prefill`/`decode` run the
//!   stack of [`blocks`] (RMSNorm, RoPE, attention, DMA, SSD, MLP, CDMoE).
//! - [`LoadOptions`]: map the file or read it into memory, and bound the CDMoE expert records
//!   a session holds ([`experts`]); [`memory`] reports what is resident.
//! - [`tokenizer`]: text to token ids and back, from the tokenizer carried in the model file.
//!
//! ```no_run
//! use std::sync::Arc;
//! let model = Arc::new(cheems::Model::load("model.gguf".as_ref())?);
//! let mut session = cheems::Session::new(model, &Default::default())?;
//! let logits = session.prefill(&[1, 2, 3])?;
//! println!("{} logits", logits.len());
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod blocks;
#[cfg(feature = "capi")]
pub mod capi;
pub mod chat;
pub mod config;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda/off.rs"]
pub mod cuda;
pub mod default_model;
pub mod device;
pub mod experts;
pub mod memory;
pub mod model;
pub mod npy;
pub mod sampler;
pub mod session;
pub mod snapshot;
pub mod synth;
pub mod tokenizer;
pub mod weights;

use cheems_kernels::matmul::Activations;
use cheems_kernels::matvec::Activation;

pub use config::{Arch, Config};
pub use device::Device;
pub use model::{LoadOptions, Model};
pub use session::{Session, SessionOptions};

/// What a block needs to multiply by weights: the mapped file, the session's thread pool and
/// its activation buffer.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub map: &'a [u8],
    pub pool: &'a cheems_kernels::pool::Pool,
    pub act: &'a mut Activation,
    /// A batch of activation rows and the transposition buffer of batched products.
    pub acts: &'a mut Activations,
    pub tmp: &'a mut [f32],
}

impl Ctx<'_> {
    /// `y = W x`.
    pub fn matvec(&mut self, w: &weights::Mat, x: &[f32], y: &mut [f32]) {
        self.act.quantize_for(w.ty, x);
        cheems_kernels::matvec::matvec(&w.get(self.map), self.act, x, y, self.pool);
    }

    /// `ys[t] = W xs[t]` for every row of `xs` (`[n][w.cols]` into `[n][w.rows]`); the weights are
    /// read once for the whole batch.
    pub fn matmul(&mut self, w: &weights::Mat, xs: &[f32], ys: &mut [f32]) {
        if xs.len() == w.cols {
            return self.matvec(w, xs, ys);
        }
        let m = w.get(self.map);
        cheems_kernels::matmul::matmul_auto(&m, xs, ys, self.acts, self.tmp, self.pool);
    }
}
