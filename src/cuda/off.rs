//! The CUDA engine's types when cheems is built without the `cuda` feature: they exist so that
//! callers compile the same way, and opening a GPU session says how to get one.

use std::sync::Arc;

use anyhow::{bail, Result};

use crate::model::Model;
use crate::snapshot::LayerState as State;

/// Where a model keeps its uploaded weights (nothing without the feature).
#[derive(Debug, Default)]
pub struct WeightCache;

/// A session on a GPU; none can exist without the feature.
#[derive(Debug)]
pub enum GpuSession {}

impl GpuSession {
    /// Always fails: this build has no CUDA support.
    pub fn new(_model: &Arc<Model>, ordinal: usize, _ctx: usize) -> Result<Self> {
        bail!("--device cuda:{ordinal}: this cheems was built without CUDA support (rebuild with `cargo build --release --features cuda`)")
    }

    pub fn device_name(&self) -> String {
        match *self {}
    }

    pub fn device_bytes(&self) -> (usize, usize) {
        match *self {}
    }

    pub fn reset(&mut self) -> Result<()> {
        match *self {}
    }

    pub fn forward(
        &mut self,
        _tokens: &[u32],
        _pos: usize,
        _all: Option<&mut Vec<f32>>,
        _logits: &mut [f32],
        _trace: Option<&mut [f32]>,
    ) -> Result<()> {
        match *self {}
    }

    pub fn download(&self, _model: &Model, _pos: usize) -> Result<Vec<State>> {
        match *self {}
    }

    pub fn upload(&mut self, _states: &[State], _pos: usize) -> Result<()> {
        match *self {}
    }
}
