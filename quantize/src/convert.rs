//! Executes a [`Plan`]: streams every tensor from the checkpoint through its transform and the
//! block quantizer to the model file, a few megabytes at a time, rows quantized in parallel on a
//! private thread pool. Memory stays near `threads x chunk` whatever the model's size.

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use cheems_formats::blocks;
use cheems_formats::gguf::{GgufWriter, TensorSpec};
use cheems_formats::safetensors::{Checkpoint, SafetensorsFile, StTensor};
use cheems_formats::GgmlType;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;

use crate::hf::HfDir;
use crate::plan::{Options, Plan, PlannedTensor, Source, Transform};

/// Target size of one chunk of f32 values (the unit of reading and quantizing).
const CHUNK_BYTES: usize = 8 << 20;

/// How a conversion went, per stored type.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub arch: String,
    /// (type, tensors, elements, bytes), in first-seen order.
    pub by_type: Vec<(GgmlType, usize, u64, u64)>,
    pub seconds: f64,
    pub file_bytes: u64,
    pub source_bytes: u64,
}

impl Summary {
    fn add(&mut self, ty: GgmlType, elements: u64, bytes: u64) {
        match self.by_type.iter_mut().find(|r| r.0 == ty) {
            Some(r) => {
                r.1 += 1;
                r.2 += elements;
                r.3 += bytes;
            }
            None => self.by_type.push((ty, 1, elements, bytes)),
        }
    }

    /// A table: tensors, parameters, bytes and bits per weight per type, and totals.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<6} {:>8} {:>14} {:>14} {:>7}\n",
            "type", "tensors", "params", "bytes", "bpw"
        );
        let (mut n, mut e, mut b) = (0, 0, 0);
        for &(ty, tn, te, tb) in &self.by_type {
            s += &format!(
                "{:<6} {:>8} {:>14} {:>14} {:>7.3}\n",
                ty.to_string(),
                tn,
                te,
                tb,
                tb as f64 * 8.0 / te.max(1) as f64
            );
            (n, e, b) = (n + tn, e + te, b + tb);
        }
        s += &format!(
            "{:<6} {:>8} {:>14} {:>14} {:>7.3}\n",
            "total",
            n,
            e,
            b,
            b as f64 * 8.0 / e.max(1) as f64
        );
        s += &format!(
            "{}: {:.1} MiB from {:.1} MiB of checkpoint in {:.2} s",
            self.arch,
            self.file_bytes as f64 / (1 << 20) as f64,
            self.source_bytes as f64 / (1 << 20) as f64,
            self.seconds
        );
        s
    }
}

/// Builds the plan of a checkpoint folder (types assigned), without writing anything.
pub fn plan_dir(hf: &HfDir, opts: &Options) -> Result<Plan> {
    let mut plan = crate::arch::plan(hf, opts)?;
    plan.assign_types(opts);
    Ok(plan)
}

/// Converts the checkpoint in `hf_dir` to the model file `out`.
pub fn convert(
    hf_dir: &Path,
    out: &Path,
    opts: &Options,
    threads: usize,
    progress: bool,
) -> Result<Summary> {
    let start = Instant::now();
    let hf = HfDir::open(hf_dir)?;
    let plan = plan_dir(&hf, opts)?;
    let specs = plan
        .tensors
        .iter()
        .map(|t| TensorSpec::new(t.name.clone(), t.dims.clone(), t.ty))
        .collect();
    let total_bytes: u64 = plan
        .tensors
        .iter()
        .map(|t| t.ty.row_bytes(t.n_elements() as usize).unwrap_or(0) as u64)
        .sum();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .context("start the quantization threads")?;
    let mut writer = GgufWriter::create(out, &plan.metadata, specs)?;
    let bar = ProgressBar::with_draw_target(
        Some(total_bytes),
        if progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:32}] {bytes}/{total_bytes} {wide_msg}")
            .map_err(|e| anyhow!("progress bar template: {e}"))?
            .progress_chars("=> "),
    );
    let mut summary = Summary {
        arch: plan.arch.to_string(),
        source_bytes: hf.weights.data_bytes(),
        ..Summary::default()
    };
    let mut st = Streamer {
        ck: &hf.weights,
        pool: &pool,
        scratch: Vec::new(),
        bytes: Vec::new(),
    };
    for (i, t) in plan.tensors.iter().enumerate() {
        bar.set_message(format!(
            "{}/{} {} ({})",
            i + 1,
            plan.tensors.len(),
            t.name,
            t.ty
        ));
        st.tensor(t, &mut |data| {
            writer.write_data(data)?;
            bar.inc(data.len() as u64);
            Ok(())
        })
        .with_context(|| format!("convert tensor `{}`", t.name))?;
        summary.add(
            t.ty,
            t.n_elements(),
            t.ty.row_bytes(t.n_elements() as usize).unwrap_or(0) as u64,
        );
    }
    writer.finish()?;
    bar.finish_and_clear();
    summary.file_bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// Reads planned tensors chunk by chunk and hands their stored bytes to a sink.
struct Streamer<'a> {
    ck: &'a Checkpoint,
    pool: &'a rayon::ThreadPool,
    scratch: Vec<u8>,
    bytes: Vec<u8>,
}

type Sink<'s> = dyn FnMut(&[u8]) -> Result<()> + 's;

impl<'a> Streamer<'a> {
    fn get(&self, name: &str) -> Result<(&'a SafetensorsFile, &'a StTensor)> {
        let ck: &'a Checkpoint = self.ck;
        ck.get(name)
            .ok_or_else(|| anyhow!("checkpoint has no tensor `{name}`"))
    }

    fn tensor(&mut self, t: &PlannedTensor, sink: &mut Sink<'_>) -> Result<()> {
        let row_len = t.row_len();
        let total = t.n_elements() as usize;
        let rows_per_chunk = (CHUNK_BYTES / 4 / row_len.max(1)).max(1);
        match &t.source {
            Source::Values(v) => self.emit(t, v, sink),
            Source::Tensor { name, transform } => {
                let (file, st) = self.get(name)?;
                match transform {
                    Transform::RopePermute { n_head } => {
                        // Whole heads at a time: the permutation stays inside a head.
                        let head = total / n_head.max(&1);
                        let rows = st.shape.first().copied().unwrap_or(1) / n_head.max(&1);
                        if head * n_head != total || rows % 2 != 0 {
                            bail!(
                                "cannot split {:?} into {n_head} heads of an even number of rows",
                                st.shape
                            );
                        }
                        let inner = head / rows;
                        let mut src = vec![0f32; head];
                        let mut dst = vec![0f32; head];
                        for h in 0..*n_head {
                            file.read_f32(st, h * head, &mut src, &mut self.scratch)?;
                            permute_head(&src, &mut dst, rows, inner);
                            self.emit(t, &dst, sink)?;
                        }
                        Ok(())
                    }
                    Transform::None | Transform::NegExp => {
                        let mut buf = vec![0f32; (rows_per_chunk * row_len).min(total)];
                        let mut at = 0;
                        while at < total {
                            let n = buf.len().min(total - at);
                            file.read_f32(st, at, &mut buf[..n], &mut self.scratch)?;
                            if *transform == Transform::NegExp {
                                // In f64, rounded once: the nearest f32 to -exp(A_log).
                                buf[..n]
                                    .iter_mut()
                                    .for_each(|x| *x = -(f64::from(*x).exp()) as f32);
                            }
                            self.emit(t, &buf[..n], sink)?;
                            at += n;
                        }
                        Ok(())
                    }
                }
            }
            Source::Records { down, up } => {
                let (fd, sd) = self.get(down)?;
                let (fu, su) = self.get(up)?;
                let h = row_len;
                let n_expert = t.dims.get(2).copied().unwrap_or(0) as usize;
                let per_chunk = (rows_per_chunk / 2).max(1);
                let mut d = vec![0f32; per_chunk * h];
                let mut u = vec![0f32; per_chunk * h];
                let mut rec = vec![0f32; per_chunk * 2 * h];
                let mut e = 0;
                while e < n_expert {
                    let n = per_chunk.min(n_expert - e);
                    fd.read_f32(sd, e * h, &mut d[..n * h], &mut self.scratch)?;
                    fu.read_f32(su, e * h, &mut u[..n * h], &mut self.scratch)?;
                    for k in 0..n {
                        rec[2 * k * h..(2 * k + 1) * h].copy_from_slice(&d[k * h..(k + 1) * h]);
                        rec[(2 * k + 1) * h..(2 * k + 2) * h]
                            .copy_from_slice(&u[k * h..(k + 1) * h]);
                    }
                    self.emit(t, &rec[..2 * n * h], sink)?;
                    e += n;
                }
                Ok(())
            }
        }
    }

    /// Quantizes whole rows of `values` to the tensor's type and sends the bytes on.
    fn emit(&mut self, t: &PlannedTensor, values: &[f32], sink: &mut Sink<'_>) -> Result<()> {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            bail!("value {} is not finite ({})", i, values[i]);
        }
        let row_len = t.row_len();
        let ty = t.ty;
        let row_bytes = ty.row_bytes(row_len).ok_or_else(|| {
            anyhow!("row of {row_len} values is not a whole number of {ty} blocks")
        })?;
        if row_len == 0 || !values.len().is_multiple_of(row_len) {
            bail!(
                "internal: a chunk of {} values is not whole rows of {row_len}",
                values.len()
            );
        }
        let n_rows = values.len() / row_len;
        self.bytes.resize(n_rows * row_bytes, 0);
        let bytes = &mut self.bytes;
        self.pool.install(|| {
            bytes
                .par_chunks_mut(row_bytes)
                .zip(values.par_chunks(row_len))
                .try_for_each(|(dst, src)| blocks::quantize_row(ty, src, dst))
        })?;
        sink(&self.bytes)
    }
}

/// llama.cpp's Q/K permutation of one head's `rows` rows of `inner` values: split-half pairs
/// (row i and row i + rows/2) become adjacent rows (2i, 2i+1).
fn permute_head(src: &[f32], dst: &mut [f32], rows: usize, inner: usize) {
    let half = rows / 2;
    for i in 0..half {
        for j in 0..2 {
            let from = (j * half + i) * inner;
            let to = (2 * i + j) * inner;
            dst[to..to + inner].copy_from_slice(&src[from..from + inner]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_matches_llama_cpp() {
        // One head of 4 rows [a0, a1, b0, b1] becomes [a0, b0, a1, b1].
        let src = [0.0, 1.0, 2.0, 3.0];
        let mut dst = [0.0; 4];
        permute_head(&src, &mut dst, 4, 1);
        assert_eq!(dst, [0.0, 2.0, 1.0, 3.0]);
    }
}
