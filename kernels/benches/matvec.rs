//! Matrix-vector products in weight bytes per second (decode is memory-bound), per weight type,
//! kernel level and thread count, on two shapes of the mamba2-130m / llama-110m decode:
//! `in_proj` (3352 rows × 768 columns) and `down` (768 rows × 2048 columns).
//!
//! - `matvec_cold`: each iteration multiplies the next of enough copies of the matrix to fill
//!   64 MiB (twice this machine's L3), so weights stream from memory as in decoding a model.
//! - `matvec_hot`: one copy, cache-resident: the kernels' compute ceiling (one thread, every
//!   level including the scalar twins).
//!
//! Each timed iteration converts the activation too (`Activation::quantize_for`), as a model
//! does once per product. Run: `cargo bench -p cheems-kernels --bench matvec [-- FILTER]`;
//! `CHEEMS_BENCH_QUICK=1` shortens the measurements.

#![allow(clippy::unwrap_used)]

mod common;

use std::hint::black_box;

use cheems_kernels::dispatch::{self, available_levels, Level};
use cheems_kernels::matvec::{matvec_at, Activation, MatRef};
use cheems_kernels::pool::Pool;
use common::{matrix, TYPES};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SHAPES: [(&str, usize, usize); 2] = [
    ("in_proj_3352x768", 3352, 768),
    ("down_768x2048", 768, 2048),
];

fn activation(cols: usize) -> Vec<f32> {
    (0..cols)
        .map(|i| ((i * 7919) % 997) as f32 / 997.0 - 0.5)
        .collect()
}

fn simd_levels() -> Vec<Level> {
    available_levels().filter(|&l| l != Level::Scalar).collect()
}

fn config(c: &mut Criterion) {
    eprintln!(
        "kernel level: {} (detected {}; benchmarked: {:?})",
        dispatch::level_name(),
        dispatch::detected_level(),
        available_levels().collect::<Vec<_>>()
    );
    let _ = c;
}

fn cold(c: &mut Criterion) {
    let pools = [Pool::new(1).unwrap(), Pool::new(2).unwrap()];
    let mut g = c.benchmark_group("matvec_cold");
    for ty in TYPES {
        for (name, rows, cols) in SHAPES {
            let one = matrix(ty, rows, cols, 7);
            let copies = (64usize << 20).div_ceil(one.len()).max(2);
            let mut all = Vec::with_capacity(copies * one.len());
            for _ in 0..copies {
                all.extend_from_slice(&one);
            }
            let x = activation(cols);
            let mut act = Activation::with_capacity(cols);
            let mut y = vec![0f32; rows];
            g.throughput(Throughput::Bytes(one.len() as u64));
            for level in simd_levels() {
                for pool in &pools {
                    let id = format!("{ty}/{name}/{level}/{}t", pool.threads());
                    let mut k = 0;
                    g.bench_function(BenchmarkId::from_parameter(id), |b| {
                        b.iter(|| {
                            k = (k + 1) % copies;
                            let w = MatRef {
                                ty,
                                rows,
                                cols,
                                data: &all[k * one.len()..(k + 1) * one.len()],
                            };
                            act.quantize_for(ty, black_box(&x));
                            matvec_at(level, &w, &act, &x, &mut y, pool);
                            black_box(&y);
                        })
                    });
                }
            }
        }
    }
    g.finish();
}

fn hot(c: &mut Criterion) {
    let pool = Pool::new(1).unwrap();
    let mut g = c.benchmark_group("matvec_hot");
    let (name, rows, cols) = SHAPES[0];
    for ty in TYPES {
        let data = matrix(ty, rows, cols, 11);
        let x = activation(cols);
        let mut act = Activation::with_capacity(cols);
        let mut y = vec![0f32; rows];
        let w = MatRef {
            ty,
            rows,
            cols,
            data: &data,
        };
        g.throughput(Throughput::Bytes(data.len() as u64));
        for level in available_levels() {
            let id = format!("{ty}/{name}/{level}/1t");
            g.bench_function(BenchmarkId::from_parameter(id), |b| {
                b.iter(|| {
                    act.quantize_for(ty, black_box(&x));
                    matvec_at(level, &w, &act, &x, &mut y, &pool);
                    black_box(&y);
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion(1500, 500);
    targets = config, cold, hot
}
criterion_main!(benches);
