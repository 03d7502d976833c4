//! Prefill products (`ys[t] = W xs[t]` for a batch of tokens) in FLOP/s: criterion's
//! throughput is set to `2 · rows · cols · batch` elements per iteration, so its `Gelem/s`
//! column reads as GFLOP/s (a multiply-add counts as two). The path is the one the engine takes
//! (`matmul::matmul_auto`, which `Ctx::matmul` calls): AMX-BF16 tiles for F16/BF16 where the CPU
//! has them (`CHEEMS_AMX=0` turns them off), the F16 tile kernel, the dequantize-and-GEMM path,
//! or the level's integer tile kernel.
//!
//! `cargo bench -p cheems-kernels --bench matmul [-- FILTER]`; `CHEEMS_BENCH_QUICK=1` for short
//! runs. Shapes: the Mamba-2 130m in-projection (3352 × 768) and out-projection (768 × 1536),
//! the Llama 110m MLP up-projection (2048 × 768), 128 tokens (the engine's prefill batch).

#![allow(clippy::unwrap_used)]

mod common;

use std::hint::black_box;

use cheems_formats::GgmlType;
use cheems_kernels::matmul::{self, Activations};
use cheems_kernels::matvec::MatRef;
use cheems_kernels::pool::Pool;
use common::{matrix, TYPES};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SHAPES: [(&str, usize, usize); 3] = [
    ("m2-in", 3352, 768),
    ("m2-out", 768, 1536),
    ("llama-up", 2048, 768),
];
const BATCH: usize = 128;

fn prefill(c: &mut Criterion) {
    let mut g = c.benchmark_group("matmul");
    let pools = [Pool::new(1).unwrap(), Pool::new(2).unwrap()];
    // The types with tile kernels: Q4_0, Q8_0, F16 (the first three of the common list), and
    // BF16 (AMX tiles where the CPU has them, else dequantized tiles and GEMM).
    for ty in TYPES.into_iter().take(3).chain([GgmlType::BF16]) {
        for (name, rows, cols) in SHAPES {
            let data = matrix(ty, rows, cols, 7);
            let w = MatRef {
                ty,
                rows,
                cols,
                data: &data,
            };
            let xs: Vec<f32> = (0..BATCH * cols)
                .map(|i| ((i * 7919) % 997) as f32 / 997.0 - 0.5)
                .collect();
            let mut ys = vec![0f32; BATCH * rows];
            let mut acts = Activations::with_capacity(BATCH, cols);
            g.throughput(Throughput::Elements((2 * rows * cols * BATCH) as u64));
            for pool in &pools {
                let mut tmp = vec![0f32; matmul::gemm_scratch(cols, pool).max(BATCH * cols)];
                let id = format!("{ty}/{name}/{}t", pool.threads());
                g.bench_function(BenchmarkId::from_parameter(id), |b| {
                    b.iter(|| {
                        matmul::matmul_auto(&w, black_box(&xs), &mut ys, &mut acts, &mut tmp, pool);
                        black_box(&ys);
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion(2000, 800);
    targets = prefill
}
criterion_main!(benches);
