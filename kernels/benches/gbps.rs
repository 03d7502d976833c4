//! A quick table of matrix-vector throughput in weight GB/s (10⁹ bytes per second), every type ×
//! kernel level × thread count, from the best of many timed runs: on shared machines the best
//! run is the least disturbed one. The criterion bench (`--bench matvec`) gives the
//! statistically careful version of the same numbers.
//!
//! `cargo bench -p cheems-kernels --bench gbps [-- TYPE...]`; `cold` streams the weights from
//! memory (copies filling 64 MiB, as in decoding), `hot` keeps one copy in cache. The times
//! are of `matvec` alone; the activation conversion it needs once per product (at the active
//! level) is timed separately. `CHEEMS_BENCH_ROWS` changes the row count (default 3352).

#![allow(clippy::unwrap_used)]

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use cheems_formats::GgmlType;
use cheems_kernels::dispatch::{self, available_levels};
use cheems_kernels::matvec::{matvec_at, Activation, MatRef};
use cheems_kernels::pool::Pool;
use common::{matrix, TYPES};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let types: Vec<GgmlType> = TYPES
        .into_iter()
        .filter(|t| args.is_empty() || args.iter().any(|a| a.eq_ignore_ascii_case(t.name())))
        .collect();
    println!(
        "kernel level: {} (levels here: {:?})",
        dispatch::level_name(),
        available_levels().map(|l| l.name()).collect::<Vec<_>>()
    );
    let pools = [Pool::new(1).unwrap(), Pool::new(2).unwrap()];
    let rows = std::env::var("CHEEMS_BENCH_ROWS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3352);
    let cols = 768;
    println!("matvec {rows}x{cols} (rows x cols), weight GB/s, best of many runs");
    println!(
        "{:6} {:12} {:>9} {:>9} {:>9}",
        "type", "level", "hot 1t", "cold 1t", "cold 2t"
    );
    for ty in types {
        let one = matrix(ty, rows, cols, 0x9E37_79B9_7F4A_7C15);
        let copies = (64usize << 20).div_ceil(one.len()).max(2);
        let all: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(copies * one.len())
            .collect();
        let x: Vec<f32> = (0..cols)
            .map(|i| ((i * 7919) % 997) as f32 / 997.0 - 0.5)
            .collect();
        let mut act = Activation::with_capacity(cols);
        let mut y = vec![0f32; rows];
        let t = Instant::now();
        for _ in 0..1000 {
            act.quantize_for(ty, black_box(&x));
        }
        let quant_us = t.elapsed().as_secs_f64() * 1e3;
        for level in available_levels() {
            let mut run = |copies: usize, pool: &Pool| {
                let mut best = Duration::MAX;
                let budget = Instant::now();
                let mut k = 0;
                let mut n = 0;
                while n < 20 || (budget.elapsed() < Duration::from_millis(400) && n < 5000) {
                    k = (k + 1) % copies;
                    let w = MatRef {
                        ty,
                        rows,
                        cols,
                        data: &all[k * one.len()..(k + 1) * one.len()],
                    };
                    let t = Instant::now();
                    matvec_at(level, &w, &act, &x, &mut y, pool);
                    black_box(&y);
                    best = best.min(t.elapsed());
                    n += 1;
                }
                one.len() as f64 / best.as_secs_f64() / 1e9
            };
            let hot = run(1, &pools[0]);
            let c1 = run(copies, &pools[0]);
            let c2 = run(copies, &pools[1]);
            println!(
                "{:6} {:12} {:9.2} {:9.2} {:9.2}   (activation conversion {quant_us:.2} us)",
                ty.name(),
                level.name(),
                hot,
                c1,
                c2
            );
        }
    }
}
