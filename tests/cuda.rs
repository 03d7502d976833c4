//! The CUDA engine (`cargo test --features cuda --test cuda`).
//!
//! - Without a GPU (or without the feature): asking for `--device cuda` fails with a clear
//!   one-line error; the GPU tests print that they were skipped and pass.
//! - With a GPU: one parity suite runs the same cases on the CPU and on CUDA, op by op (products
//!   of every weight type, RMSNorm, RoPE, attention, CDMoE routing) with normalised error bounds,
//!   then whole models: the fixture models against the transformers logits stored with them
//!   (`tests/fixtures/models`), the GPU against the CPU on the same file for every weight type,
//!   the tiny synth models (DMA evictions, CDMoE), and snapshots moved between the devices.
//!
//! Errors are normalised by the reference's scale: `max |gpu − ref| / max |ref|` (per op or
//! per model run), and each bound is printed with the measured value.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cheems::{Device, Model, Session, SessionOptions};
use cheems_formats::GgmlType;
use cheems_quantize::Options;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn load(name: &str, ty: GgmlType) -> (tempfile::TempDir, Arc<Model>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    cheems_quantize::convert(&fixture(name), &out, &Options::new(ty), 1, false).unwrap();
    let model = Arc::new(Model::load(&out).unwrap());
    (dir, model)
}

fn opts(ctx: usize) -> SessionOptions {
    SessionOptions {
        threads: Some(2),
        ctx: Some(ctx),
    }
}

/// Without a GPU or without the `cuda` feature, a CUDA session is refused with one clear line.
#[test]
fn cuda_without_a_gpu_is_a_clear_error() {
    let (_d, model) = load("llama", GgmlType::F32);
    match Session::new_on(model, &opts(8), Device::Cuda(0)) {
        Ok(s) => eprintln!("skipped: a GPU is present ({})", s.device_name()),
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("{msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
            if cfg!(feature = "cuda") {
                assert!(msg.contains("cuda:0"), "{msg}");
            } else {
                assert!(msg.contains("--features cuda"), "{msg}");
            }
        }
    }
}

/// The command line says the same and exits non-zero.
#[test]
fn device_flag_without_a_gpu_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.gguf");
    cheems::synth::synth("tiny-llama", GgmlType::Q8_0, &m, 0).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cheems"))
        .args([
            "run",
            m.to_str().unwrap(),
            "-p",
            "hi",
            "-n",
            "2",
            "--device",
            "cuda",
        ])
        .output()
        .unwrap();
    if out.status.success() {
        eprintln!("skipped: a GPU is present");
        return;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert!(err.contains("cuda"), "{err}");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_cheems"))
        .args(["run", m.to_str().unwrap(), "-p", "hi", "--device", "tpu"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown device `tpu`"));
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::*;
    use std::collections::HashMap;

    use cheems::blocks::attention::attend;
    use cheems::blocks::cdmoe::{route, MoeScratch};
    use cheems::blocks::norm::rmsnorm;
    use cheems::blocks::rope::RopeTable;
    use cheems::config::{Rope, RopePairing};
    use cheems::cuda::ops::Ops;
    use cheems::npy::Array;
    use cheems_kernels::matvec::{matvec, Activation, MatRef};
    use cheems_kernels::pool::Pool;

    const MODELS: [&str; 5] = ["llama", "mamba2", "doge", "doge_moe", "cheems"];

    /// The GPU, or `None` (and a note) when this machine has none.
    fn ops_or_skip(test: &str) -> Option<Ops> {
        match Ops::new(0) {
            Ok(o) => Some(o),
            Err(e) => {
                eprintln!("{test}: skipped, no GPU: {e:#}");
                None
            }
        }
    }

    struct Rng(u64);
    impl Rng {
        fn f(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n).map(|_| self.f() * scale).collect()
        }
    }

    /// `max |a − b| / max |b|`
    fn rel(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f64, |m, x| m.max(f64::from(x.abs())));
        let err = a
            .iter()
            .zip(b)
            .fold(0f64, |m, (x, y)| m.max(f64::from((x - y).abs())));
        if scale == 0.0 {
            err
        } else {
            err / scale
        }
    }

    /// (type, bound vs the CPU kernel, bound vs f64 on the dequantized weights) of each product.
    fn product_cases() -> [(GgmlType, f64, f64); 11] {
        use GgmlType::*;
        [
            (F32, 1e-5, 1e-5),
            (F16, 1e-5, 1e-5),
            (BF16, 1e-5, 1e-5),
            (Q8_0, 1e-4, 2e-2),
            (Q4_0, 1e-4, 2e-2),
            (Q4_1, 1e-4, 2e-2),
            (Q5_0, 1e-4, 2e-2),
            (Q5_1, 1e-4, 2e-2),
            // The CPU uses Q8_K activations (blocks of 256), the GPU q8_1 blocks of 32.
            (Q4_K, 3e-2, 2e-2),
            (Q5_K, 3e-2, 2e-2),
            (Q6_K, 3e-2, 2e-2),
        ]
    }

    /// K-quants against f64 with the GPU's own int8 activation blocks (ggml's Q8_0 quants of x,
    /// whose CPU quantizer is checked bit-exact against ggml's elsewhere): only summation order
    /// remains, and for Q4_K/Q5_K the min term, which multiplies the block's activation sum
    /// rounded to f16 as ggml's q8_1 holds it.
    fn same_act_bound(ty: GgmlType) -> Option<f64> {
        use GgmlType::*;
        match ty {
            Q6_K => Some(1e-5),
            Q4_K | Q5_K => Some(1e-3),
            _ => None,
        }
    }

    /// `[n][rows]` f64 products of dequantized weights `deq` (`[rows][cols]`) with the rows of
    /// `x` (each through `act` first, when given: the int8 activation blocks), plus `bias`.
    fn f64_products(
        deq: &[f32],
        cols: usize,
        x: &[f32],
        bias: Option<&[f32]>,
        act: impl Fn(&[f32]) -> Vec<f32>,
    ) -> Vec<f32> {
        let rows = deq.len() / cols;
        let mut out = Vec::with_capacity(x.len() / cols * rows);
        for xt in x.chunks_exact(cols) {
            let xt = act(xt);
            for r in 0..rows {
                let dot = deq[r * cols..(r + 1) * cols]
                    .iter()
                    .zip(&xt)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum::<f64>();
                out.push((dot + bias.map_or(0.0, |b| f64::from(b[r]))) as f32);
            }
        }
        out
    }

    /// The rows of `wf` (`cols` values each) stored as `ty`, and dequantized again.
    fn typed_matrix(ty: GgmlType, wf: &[f32], cols: usize) -> (Vec<u8>, Vec<f32>) {
        let mut data = vec![0u8; ty.row_bytes(cols).unwrap() * (wf.len() / cols)];
        cheems_formats::blocks::quantize_row(ty, wf, &mut data).unwrap();
        let mut deq = vec![0f32; wf.len()];
        cheems_formats::blocks::dequantize_row(ty, &data, &mut deq).unwrap();
        (data, deq)
    }

    /// x through ggml's Q8_0 quants and back (the GPU's int8 activation blocks).
    fn q8_roundtrip(x: &[f32]) -> Vec<f32> {
        let mut qb = vec![0u8; GgmlType::Q8_0.row_bytes(x.len()).unwrap()];
        let mut xq = vec![0f32; x.len()];
        cheems_formats::blocks::quantize_row(GgmlType::Q8_0, x, &mut qb).unwrap();
        cheems_formats::blocks::dequantize_row(GgmlType::Q8_0, &qb, &mut xq).unwrap();
        xq
    }

    #[test]
    fn kernels_compile_with_nvrtc() {
        // SAFETY: probes for the shared library with dlopen.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!(
                "skipped: NVRTC (libnvrtc.so.13) not found; set LD_LIBRARY_PATH to its directory"
            );
            return;
        }
        let ptx = cheems::cuda::compile((9, 0)).unwrap();
        eprintln!("kernels compiled to {} bytes of PTX", ptx.to_src().len());
    }

    /// Every weight type's product against the CPU's (same activation quantization) and against
    /// f64 math on the dequantized weights.
    #[test]
    fn products_match_the_cpu_for_every_type() {
        let Some(ops) = ops_or_skip("products") else {
            return;
        };
        let pool = Pool::new(2).unwrap();
        let mut rng = Rng(11);
        for (ty, vs_cpu, vs_ref) in product_cases() {
            let bs = ty.block_size().max(if ty.is_quantized() { 32 } else { 1 });
            let mut shapes = vec![(1, 256), (7, 512), (33, 768), (300, 2048), (1000, 1024)];
            if bs == 32 {
                shapes.extend([(3, 32), (5, 96), (2, 4096)]);
            }
            if bs == 1 {
                shapes.extend([(3, 1), (17, 33), (5, 100), (4, 8)]);
            }
            let (mut worst_cpu, mut worst_ref, mut worst_same) = (0f64, 0f64, 0f64);
            for (si, (rows, cols)) in shapes.into_iter().enumerate() {
                // 1 row, or a batch (8 per launch, and a remainder)
                let n = [1, 3, 8, 13][si % 4];
                let wf = rng.vec(rows * cols, 0.05);
                let x = rng.vec(n * cols, 1.0);
                let (data, deq) = typed_matrix(ty, &wf, cols);
                let w = MatRef {
                    ty,
                    rows,
                    cols,
                    data: &data,
                };
                let mut act = Activation::with_capacity(cols);
                let mut cpu = vec![0f32; n * rows];
                for (xt, yt) in x.chunks_exact(cols).zip(cpu.chunks_exact_mut(rows)) {
                    act.quantize_for(ty, xt);
                    matvec(&w, &act, xt, yt, &pool);
                }
                let reference = f64_products(&deq, cols, &x, None, |v| v.to_vec());
                let gpu = ops.matmul(&w, &x).unwrap();
                if let Some(bound) = same_act_bound(ty) {
                    let same = f64_products(&deq, cols, &x, None, q8_roundtrip);
                    let e = rel(&gpu, &same);
                    assert!(
                        e <= bound,
                        "{ty} {rows}x{cols}, {n} rows: {e:.2e} vs f64 with the same int8 activations (max {bound:.0e})"
                    );
                    worst_same = worst_same.max(e);
                }
                let (ec, er) = (rel(&gpu, &cpu), rel(&gpu, &reference));
                assert!(
                    ec <= vs_cpu && er <= vs_ref,
                    "{ty} {rows}x{cols}, {n} rows: {ec:.2e} vs CPU (max {vs_cpu:.0e}), {er:.2e} vs f64 (max {vs_ref:.0e})"
                );
                worst_cpu = worst_cpu.max(ec);
                worst_ref = worst_ref.max(er);
            }
            eprintln!("product {ty}: max error {worst_cpu:.2e} vs CPU (bound {vs_cpu:.0e}), {worst_ref:.2e} vs f64 (bound {vs_ref:.0e}){}",
                same_act_bound(ty).map_or(String::new(), |b| format!(", {worst_same:.2e} vs f64 with the same int8 activations (bound {b:.0e})")));
        }
    }

    /// Batches on the tensor cores (where the GPU has them: compute capability 8.0+) and on the
    /// CUDA cores, for every type: 1 to 3 matrices in one launch, rows that are not whole tiles,
    /// widths that are not whole stages, with and without biases, 9 to 130 tokens; against the
    /// same references and bounds as the single products.
    #[test]
    fn batched_products_match_the_cpu_for_every_type() {
        let Some(ops) = ops_or_skip("batched products") else {
            return;
        };
        eprintln!(
            "batched products: tensor cores {} (from {} tokens)",
            if ops.tensor_cores() { "on" } else { "off" },
            cheems::cuda::MMA_MIN
        );
        let pool = Pool::new(2).unwrap();
        let mut rng = Rng(23);
        for (ty, vs_cpu, vs_ref) in product_cases() {
            let bs = ty.block_size().max(if ty.is_quantized() { 32 } else { 1 });
            // (rows of each matrix, width in blocks of bs or 32 values, tokens, biases)
            let unit = bs.max(32);
            let mut cases: Vec<(Vec<usize>, usize, usize, bool)> = vec![
                (vec![100], 2 * unit, 9, false),
                (vec![300, 64, 64], 3 * unit, 33, true),
                (vec![1000, 1000], 1024.max(unit), 64, true),
                (vec![70], 2048, 128, false),
                (vec![130, 7, 1], unit, 130, true),
            ];
            if bs == 32 {
                cases.push((vec![65], 96, 17, true));
            }
            if bs == 1 {
                cases.extend([
                    (vec![17, 5], 33, 20, true),
                    (vec![40], 100, 64, false),
                    (vec![3], 1, 12, true),
                ]);
            }
            let (mut worst_cpu, mut worst_ref, mut worst_same) = (0f64, 0f64, 0f64);
            for (rows, cols, n, with_bias) in cases {
                let x = rng.vec(n * cols, 1.0);
                let mut mats = Vec::new();
                for &r in &rows {
                    let wf = rng.vec(r * cols, 0.05);
                    let (data, deq) = typed_matrix(ty, &wf, cols);
                    let bias = with_bias.then(|| rng.vec(r, 0.5));
                    mats.push((r, data, deq, bias));
                }
                let ws: Vec<_> = mats
                    .iter()
                    .map(|(r, data, _, bias)| {
                        let w = MatRef {
                            ty,
                            rows: *r,
                            cols,
                            data,
                        };
                        (w, bias.as_deref())
                    })
                    .collect();
                for (path, mma_min) in [("tensor cores", 1), ("CUDA cores", usize::MAX)] {
                    let gpu = ops.products(&ws, &x, mma_min).unwrap();
                    for (m, ((r, _, deq, bias), y)) in mats.iter().zip(&gpu).enumerate() {
                        let what = format!("{ty} {path}: matrix {m} of {rows:?}x{cols}, {n} tokens, bias {with_bias}");
                        let mut act = Activation::with_capacity(cols);
                        let mut cpu = vec![0f32; n * r];
                        for (xt, yt) in x.chunks_exact(cols).zip(cpu.chunks_exact_mut(*r)) {
                            act.quantize_for(ty, xt);
                            matvec(&ws[m].0, &act, xt, yt, &pool);
                            if let Some(b) = bias {
                                yt.iter_mut().zip(b).for_each(|(y, b)| *y += b);
                            }
                        }
                        let reference =
                            f64_products(deq, cols, &x, bias.as_deref(), |v| v.to_vec());
                        if let Some(bound) = same_act_bound(ty) {
                            let same = f64_products(deq, cols, &x, bias.as_deref(), q8_roundtrip);
                            let e = rel(y, &same);
                            assert!(e <= bound, "{what}: {e:.2e} vs f64 with the same int8 activations (max {bound:.0e})");
                            worst_same = worst_same.max(e);
                        }
                        let (ec, er) = (rel(y, &cpu), rel(y, &reference));
                        assert!(
                            ec <= vs_cpu && er <= vs_ref,
                            "{what}: {ec:.2e} vs CPU (max {vs_cpu:.0e}), {er:.2e} vs f64 (max {vs_ref:.0e})"
                        );
                        worst_cpu = worst_cpu.max(ec);
                        worst_ref = worst_ref.max(er);
                    }
                }
            }
            eprintln!("batched product {ty}: max error {worst_cpu:.2e} vs CPU (bound {vs_cpu:.0e}), {worst_ref:.2e} vs f64 (bound {vs_ref:.0e}){}",
                same_act_bound(ty).map_or(String::new(), |b| format!(", {worst_same:.2e} vs f64 with the same int8 activations (bound {b:.0e})")));
        }
    }

    /// Times one product launch on the tensor cores and on the CUDA cores for batch sizes around
    /// the threshold (`--ignored`; prints, checks nothing but that both run).
    #[test]
    #[ignore = "timing, run by hand on a GPU"]
    fn product_timings() {
        let Some(ops) = ops_or_skip("product timings") else {
            return;
        };
        use GgmlType::*;
        let mut rng = Rng(5);
        for (rows, cols) in [(2304, 768), (768, 2048)] {
            for ty in [F16, Q8_0, Q4_0, Q4_K] {
                let wf = rng.vec(rows * cols, 0.05);
                let mut data = vec![0u8; ty.row_bytes(cols).unwrap() * rows];
                cheems_formats::blocks::quantize_row(ty, &wf, &mut data).unwrap();
                let w = MatRef {
                    ty,
                    rows,
                    cols,
                    data: &data,
                };
                let mut line = format!("timing {ty} {rows}x{cols} µs (cuda cores / tensor cores):");
                for n in [2, 4, 6, 8, 12, 16, 32, 64, 128] {
                    let x = rng.vec(n * cols, 1.0);
                    let old = ops.time_product(&w, &x, usize::MAX, 200).unwrap();
                    let new = ops.time_product(&w, &x, 1, 200).unwrap();
                    line += &format!(" n{n} {:.1}/{:.1}", old * 1e6, new * 1e6);
                }
                eprintln!("{line}");
            }
        }
    }

    #[test]
    fn rmsnorm_matches_the_cpu() {
        let Some(ops) = ops_or_skip("rmsnorm") else {
            return;
        };
        let mut rng = Rng(5);
        let mut worst = 0f64;
        for (rows, n) in [(1, 64), (4, 768), (2, 4000), (3, 7)] {
            let x = rng.vec(rows * n, 3.0);
            let w = rng.vec(n, 1.0);
            let gpu = ops.rmsnorm(&x, &w, 1e-5).unwrap();
            let mut cpu = vec![0f32; rows * n];
            for r in 0..rows {
                rmsnorm(
                    &x[r * n..(r + 1) * n],
                    &w,
                    1e-5,
                    &mut cpu[r * n..(r + 1) * n],
                );
            }
            worst = worst.max(rel(&gpu, &cpu));
        }
        eprintln!("rmsnorm: max error {worst:.2e} (bound 1e-5)");
        assert!(worst <= 1e-5);
    }

    #[test]
    fn rope_matches_the_cpu() {
        let Some(ops) = ops_or_skip("rope") else {
            return;
        };
        let mut rng = Rng(9);
        let mut worst = 0f64;
        for pairing in [RopePairing::Halves, RopePairing::Adjacent] {
            for (linear, dynamic) in [(1.0, None), (2.0, None), (1.0, Some((4.0, 16)))] {
                for dim in [16, 64, 128] {
                    let r = Rope {
                        theta: 10000.0,
                        dim,
                        pairing,
                        linear_factor: linear,
                        dynamic,
                    };
                    let table = RopeTable::new(&r);
                    for pos in [0, 5, 100, 3000] {
                        let x = rng.vec(3 * dim, 1.0);
                        let gpu = ops.rope(&x, &r, pos).unwrap();
                        let mut cpu = x.clone();
                        table.apply(&mut cpu, pos);
                        let e = rel(&gpu, &cpu);
                        assert!(
                            e <= 1e-5,
                            "{pairing:?} linear {linear} {dynamic:?} dim {dim} pos {pos}: {e:.2e}"
                        );
                        worst = worst.max(e);
                    }
                }
            }
        }
        eprintln!("rope: max error {worst:.2e} (bound 1e-5)");
    }

    #[test]
    fn attention_matches_the_cpu() {
        let Some(ops) = ops_or_skip("attention") else {
            return;
        };
        let mut rng = Rng(3);
        let mut worst = 0f64;
        for (n_heads, n_kv, hd) in [(4, 2, 16), (12, 4, 64), (4, 4, 128), (2, 1, 256)] {
            for n in [1, 7, 300, 2049] {
                for with_bias in [false, true] {
                    let q = rng.vec(n_heads * hd, 1.0);
                    let k = rng.vec(n_kv * n * hd, 1.0);
                    let v = rng.vec(n_kv * n * hd, 1.0);
                    let bias = rng.vec(n_kv * n, 2.0);
                    let b = with_bias.then_some(&bias[..]);
                    let gpu = ops.attention(&q, &k, &v, n_heads, n_kv, hd, n, b).unwrap();
                    let scale = 1.0 / (hd as f32).sqrt();
                    let mut cpu = vec![0f32; n_heads * hd];
                    let mut att = vec![0f32; n];
                    let group = n_heads / n_kv;
                    for h in 0..n_heads {
                        let g = h / group;
                        let base = g * n;
                        attend(
                            &q[h * hd..(h + 1) * hd],
                            n,
                            &k[base * hd..(base + n) * hd],
                            &v[base * hd..(base + n) * hd],
                            hd,
                            with_bias.then(|| &bias[base..base + n]),
                            scale,
                            &mut att,
                            &mut cpu[h * hd..(h + 1) * hd],
                        );
                    }
                    let e = rel(&gpu, &cpu);
                    assert!(
                        e <= 1e-4,
                        "heads {n_heads}/{n_kv} hd {hd} n {n} bias {with_bias}: {e:.2e}"
                    );
                    worst = worst.max(e);
                }
            }
        }
        eprintln!("attention: max error {worst:.2e} (bound 1e-4)");
    }

    #[test]
    fn routing_matches_the_cpu() {
        let Some(ops) = ops_or_skip("routing") else {
            return;
        };
        let mut rng = Rng(17);
        for (nk, k) in [(8, 5), (8, 8), (16, 3), (64, 32), (5, 1), (4, 12)] {
            for round in 0..20 {
                let router: Vec<f32> = if round % 2 == 0 {
                    rng.vec(2 * nk, 2.0)
                } else {
                    // few distinct values: ties
                    (0..2 * nk)
                        .map(|_| ((rng.f() * 4.0).round()) * 0.25)
                        .collect()
                };
                let m = k.min(nk);
                let mut s = MoeScratch {
                    router: router.clone(),
                    idx_x: vec![0; nk],
                    idx_y: vec![0; nk],
                    cand: vec![(0.0, 0); m * m],
                    row: Vec::new(),
                };
                let (max, total) = route(nk, k, &mut s);
                let (ids, wts) = ops.route(&router, nk, k).unwrap();
                let want: Vec<usize> = s.cand[..k].iter().map(|c| c.1).collect();
                assert_eq!(ids, want, "nk {nk} k {k} round {round}");
                for (w, c) in wts.iter().zip(&s.cand[..k]) {
                    let cpu = (c.0 - max).exp() / total;
                    assert!((w - cpu).abs() <= 1e-6, "weight {w} vs {cpu}");
                }
            }
        }
        eprintln!("routing: the same experts and weights (within 1e-6) as the CPU");
    }

    fn reference(name: &str) -> HashMap<String, Array> {
        common::read_npz(&fixture(name).join("reference.npz"))
    }

    fn tokens(a: &Array) -> Vec<u32> {
        a.data.iter().map(|&t| t as u32).collect()
    }

    /// Token by token on `device`: every logits row and every trace.
    fn run(
        model: &Arc<Model>,
        toks: &[u32],
        device: Device,
        trace: bool,
    ) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let mut s = Session::new_on(model.clone(), &opts(toks.len()), device).unwrap();
        s.set_trace(trace);
        let mut logits = Vec::new();
        let mut traces = Vec::new();
        for &t in toks {
            logits.push(s.decode(t).unwrap().to_vec());
            if trace {
                traces.push(s.trace().unwrap().to_vec());
            }
        }
        (logits, traces)
    }

    /// The fixture models in F32 on the GPU against transformers' logits, token by token (the
    /// CPU's bound in tests/parity.rs is 1e-4 of the logit scale; the GPU's is 1e-3: float
    /// sums in another order, `expf`/`sincosf` of CUDA), and greedy generation.
    #[test]
    fn fixtures_match_transformers_on_the_gpu() {
        if ops_or_skip("fixtures").is_none() {
            return;
        }
        for name in MODELS {
            let r = reference(name);
            let toks = tokens(&r["tokens"]);
            let (_d, model) = load(name, GgmlType::F32);
            let (logits, traces) = run(&model, &toks, Device::Cuda(0), true);
            let want = &r["logits"];
            let v = want.shape[1];
            let scale = want.data.iter().fold(0f64, |m, x| m.max(x.abs()));
            let tol = 1e-3 * scale;
            let mut worst = 0f64;
            for (t, row) in logits.iter().enumerate() {
                let err = row
                    .iter()
                    .zip(&want.data[t * v..(t + 1) * v])
                    .fold(0f64, |m, (a, b)| m.max((f64::from(*a) - b).abs()));
                worst = worst.max(err);
                if err > tol {
                    let first = common::first_diverging_layer(&r["hidden"], &traces[t], t, 1e-3);
                    panic!("{name}: token {t}: GPU logits differ by {err:.3e} (tolerance {tol:.3e}); first diverging layer output: {first:?} (0 = embeddings)");
                }
            }
            eprintln!(
                "fixture {name} on GPU: {} tokens, max |Δlogit| {worst:.2e} = {:.2e} of the logit scale {scale:.2} (bound 1e-3)",
                toks.len(),
                worst / scale
            );
            // Without a trace, single tokens take the decode step as it runs in generation (for
            // all-SSD models the persistent `ssd_decode` kernel).
            let fused = Session::new_on(model.clone(), &opts(8), Device::Cuda(0))
                .unwrap()
                .device_name()
                .contains("fused");
            assert_eq!(
                fused,
                name == "mamba2",
                "{name}: the fused decode kernel is for models of SSD layers only"
            );
            let (plain, _) = run(&model, &toks, Device::Cuda(0), false);
            let worst = plain.iter().enumerate().fold(0f64, |m, (t, row)| {
                row.iter()
                    .zip(&want.data[t * v..(t + 1) * v])
                    .fold(m, |m, (a, b)| m.max((f64::from(*a) - b).abs()))
            });
            eprintln!(
                "fixture {name} on GPU, decode path: max |Δlogit| {:.2e} of the logit scale (bound 1e-3)",
                worst / scale
            );
            assert!(
                worst <= tol,
                "{name}: decode-path logits differ by {worst:.3e} (tolerance {tol:.3e})"
            );
            // All tokens as one batch (SSD layers: the `ssd_scan` recurrence in one launch).
            let mut s = Session::new_on(model.clone(), &opts(toks.len()), Device::Cuda(0)).unwrap();
            let mut all = Vec::new();
            s.prefill_all(&toks, &mut all).unwrap();
            let worst = all
                .iter()
                .zip(&want.data)
                .fold(0f64, |m, (a, b)| m.max((f64::from(*a) - b).abs()));
            eprintln!(
                "fixture {name} on GPU, one batch of {}: max |Δlogit| {:.2e} of the logit scale (bound 1e-3)",
                toks.len(),
                worst / scale
            );
            assert!(
                worst <= tol,
                "{name}: batch logits differ by {worst:.3e} (tolerance {tol:.3e})"
            );
            // Two batches (13 tokens, then the rest): the states, conv history and positions
            // carried from one call to the next (SSD layers: a partial chunk, then a chunk
            // that starts mid-sequence).
            let mut s = Session::new_on(model.clone(), &opts(toks.len()), Device::Cuda(0)).unwrap();
            let mut all = Vec::new();
            s.prefill_all(&toks[..13], &mut all).unwrap();
            s.prefill_all(&toks[13..], &mut all).unwrap();
            let worst = all
                .iter()
                .zip(&want.data)
                .fold(0f64, |m, (a, b)| m.max((f64::from(*a) - b).abs()));
            eprintln!(
                "fixture {name} on GPU, batches of 13 and {}: max |Δlogit| {:.2e} of the logit scale (bound 1e-3)",
                toks.len() - 13,
                worst / scale
            );
            assert_eq!(all.len(), want.data.len(), "{name}: logits of every token");
            assert!(
                worst <= tol,
                "{name}: two-batch logits differ by {worst:.3e} (tolerance {tol:.3e})"
            );
            // Greedy generation, prompt through prefill.
            let prompt = tokens(&r["greedy_prompt"]);
            let want = tokens(&r["greedy"]);
            let mut s = Session::new_on(
                model.clone(),
                &opts(prompt.len() + want.len()),
                Device::Cuda(0),
            )
            .unwrap();
            let got = common::greedy(&mut s, &prompt, want.len());
            assert_eq!(
                got, want,
                "{name}: GPU greedy tokens differ from transformers' generate"
            );
        }
    }

    /// A CDMoE model's top-k routing is discontinuous: where an int8 activation quant moves by
    /// one (see below), a token can choose another expert, and its logits move by more than
    /// any product error (the CPU suite leaves CDMoE models out of its kernel-vs-dequantized
    /// comparison for the same reason). Quantized CDMoE files get this bound; at F32/F16/BF16
    /// the routing matches and the tight bounds hold.
    const MOE_QUANTIZED_BOUND: f64 = 0.1;

    fn moe_bound(model: &Model, ty: GgmlType, bound: f64) -> f64 {
        if model.config.n_experts > 0 && ty.is_quantized() {
            bound.max(MOE_QUANTIZED_BOUND)
        } else {
            bound
        }
    }

    /// Every weight type: the GPU against the CPU on the same file. DMA models until their
    /// first eviction (a top-k choice between near-equal scores may flip under a 1e-6
    /// perturbation; the synth test below covers evictions at F32).
    #[test]
    fn every_type_matches_the_cpu_on_the_fixture_models() {
        if ops_or_skip("types").is_none() {
            return;
        }
        use GgmlType::*;
        // The products equal the CPU's (see products_match_the_cpu_for_every_type), but int8
        // activation quants are a step function: a last-bit difference upstream (summation
        // order) can move one quant by 1, hence 1e-2 for quantized files. K-quants multiply q8_1
        // activation blocks of 32 on the GPU (Q8_K blocks of 256 on the CPU), and files of the 4- and
        // 5-bit types carry a Q6_K output head: theirs is the k-quants' bound.
        let cases = [
            (F16, 1e-3),
            (BF16, 1e-3),
            (Q8_0, 1e-2),
            (Q4_0, 3e-2),
            (Q4_1, 3e-2),
            (Q5_0, 3e-2),
            (Q5_1, 3e-2),
            (Q4_K, 3e-2),
            (Q6_K, 3e-2),
        ];
        for name in MODELS {
            let r = reference(name);
            let toks = tokens(&r["tokens"]);
            for (ty, bound) in cases {
                let (_d, model) = load(name, ty);
                let bound = moe_bound(&model, ty, bound);
                let kw = model.config.keep_window;
                let n = if kw > 0 {
                    kw.min(toks.len())
                } else {
                    toks.len()
                };
                let (gpu, _) = run(&model, &toks[..n], Device::Cuda(0), false);
                let (cpu, _) = run(&model, &toks[..n], Device::Cpu, false);
                let e = rel(
                    &gpu.iter().flatten().copied().collect::<Vec<_>>(),
                    &cpu.iter().flatten().copied().collect::<Vec<_>>(),
                );
                eprintln!("{name} {ty}: GPU vs CPU max |Δlogit| {e:.2e} of the logit scale over {n} tokens (bound {bound:.0e})");
                assert!(e <= bound, "{name} {ty}: {e:.3e} > {bound}");
            }
        }
    }

    /// The tiny synth models (hidden 256, CDMoE with 64 experts, a keep window of 8: DMA evicts)
    /// at F32, Q8_0 and Q4_0, 40 tokens, GPU against CPU.
    #[test]
    fn synth_models_match_the_cpu() {
        if ops_or_skip("synth").is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for shape in ["tiny-llama", "tiny-mamba2", "tiny-doge-moe", "tiny-cheems"] {
            // Quantized activations: see every_type_matches_the_cpu_on_the_fixture_models; Q4_0
            // files carry a Q6_K output head (Q8_K activations on the CPU).
            for (ty, bound) in [
                (GgmlType::F32, 1e-3),
                (GgmlType::Q8_0, 1e-2),
                (GgmlType::Q4_0, 3e-2),
            ] {
                let p = dir.path().join(format!("{shape}-{ty}.gguf"));
                cheems::synth::synth(shape, ty, &p, 1).unwrap();
                let model = Arc::new(Model::load(&p).unwrap());
                let bound = moe_bound(&model, ty, bound);
                let mut rng = Rng(21);
                let toks: Vec<u32> = (0..40)
                    .map(|_| ((rng.f() + 1.0) * 0.5 * (model.config.n_vocab - 1) as f32) as u32)
                    .collect();
                let (gpu, _) = run(&model, &toks, Device::Cuda(0), false);
                let (cpu, _) = run(&model, &toks, Device::Cpu, false);
                let e = rel(
                    &gpu.iter().flatten().copied().collect::<Vec<_>>(),
                    &cpu.iter().flatten().copied().collect::<Vec<_>>(),
                );
                eprintln!("synth {shape} {ty}: GPU vs CPU {e:.2e} of the logit scale over 40 tokens (bound {bound:.0e})");
                assert!(e <= bound, "{shape} {ty}: {e:.3e}");
            }
        }
    }

    /// A prompt batch goes through a DMA layer in a few launches (`dma_plan` decides the
    /// sequential inserts at once). The tiny synth DMA models (keep window 8) at F32 fed in
    /// batches of several sizes over several calls (5 tokens: not full; 64: fills up and evicts;
    /// then more, with single tokens between) give the CPU's logits for every token, and after
    /// each call the downloaded state is the CPU's after the same tokens: the same lengths, slots
    /// and positions, keys, values and scores within float tolerance. At Q8_0 (the attention
    /// output quantized for the next product) two batches until the first eviction: past it, a
    /// quantized file's CPU and GPU runs drift apart by eviction and routing flips whatever the
    /// batching (see every_type_matches_the_cpu_on_the_fixture_models).
    #[test]
    fn dma_batches_match_the_cpu() {
        use cheems::snapshot::LayerState;
        if ops_or_skip("dma batches").is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for shape in ["tiny-doge-moe", "tiny-cheems"] {
            for (ty, bound) in [(GgmlType::F32, 1e-3), (GgmlType::Q8_0, 1e-2)] {
                let p = dir.path().join(format!("{shape}-{ty}.gguf"));
                cheems::synth::synth(shape, ty, &p, 1).unwrap();
                let model = Arc::new(Model::load(&p).unwrap());
                let bound = moe_bound(&model, ty, bound);
                let kw = model.config.keep_window;
                let chunks = if ty == GgmlType::F32 {
                    assert!(
                        kw > 5 && kw < 5 + 64,
                        "{shape}: the second batch must evict"
                    );
                    vec![5, 64, 30, 1, 128, 2, 3, 7]
                } else {
                    vec![3, kw - 3]
                };
                let total: usize = chunks.iter().sum();
                let mut rng = Rng(33);
                let toks: Vec<u32> = (0..total)
                    .map(|_| ((rng.f() + 1.0) * 0.5 * (model.config.n_vocab - 1) as f32) as u32)
                    .collect();
                let mut g = Session::new_on(model.clone(), &opts(total), Device::Cuda(0)).unwrap();
                let mut c = Session::new(model.clone(), &opts(total)).unwrap();
                let (mut at, mut worst, mut worst_state) = (0, 0f64, 0f64);
                for &n in &chunks {
                    let chunk = &toks[at..at + n];
                    at += n;
                    let (mut ga, mut ca) = (Vec::new(), Vec::new());
                    g.prefill_all(chunk, &mut ga).unwrap();
                    c.prefill_all(chunk, &mut ca).unwrap();
                    let e = rel(&ga, &ca);
                    assert!(
                        e <= bound,
                        "{shape} {ty}: a batch of {n} to position {at}: {e:.3e} (bound {bound:.0e})"
                    );
                    worst = worst.max(e);
                    if ty != GgmlType::F32 {
                        continue;
                    }
                    let (gs, cs) = (g.snapshot(), c.snapshot());
                    assert_eq!(gs.pos, cs.pos);
                    let mut dma_layers = 0;
                    for (l, (a, b)) in gs.layers.iter().zip(&cs.layers).enumerate() {
                        let (LayerState::Dma(a), LayerState::Dma(b)) = (a, b) else {
                            continue;
                        };
                        dma_layers += 1;
                        let hd = b.head_dim();
                        assert_eq!(a.len, b.len, "{shape} layer {l} at {at}: entries held");
                        let (mut ka, mut kb) = (Vec::new(), Vec::new());
                        let (mut sa, mut sb) = (Vec::new(), Vec::new());
                        for (h, &len) in b.len.iter().enumerate() {
                            let slots = h * kw..h * kw + len;
                            assert_eq!(
                                a.pos[slots.clone()],
                                b.pos[slots.clone()],
                                "{shape} layer {l} head {h} at {at}: positions by slot"
                            );
                            let rows = slots.start * hd..slots.end * hd;
                            ka.extend_from_slice(&a.k[rows.clone()]);
                            ka.extend_from_slice(&a.v[rows.clone()]);
                            kb.extend_from_slice(&b.k[rows.clone()]);
                            kb.extend_from_slice(&b.v[rows]);
                            sa.extend_from_slice(&a.score[slots.clone()]);
                            sb.extend_from_slice(&b.score[slots]);
                        }
                        let e = rel(&ka, &kb).max(rel(&sa, &sb));
                        assert!(
                            e <= 1e-4,
                            "{shape} layer {l} at {at}: keys, values, scores {e:.3e} (bound 1e-4)"
                        );
                        worst_state = worst_state.max(e);
                    }
                    assert!(dma_layers > 0, "{shape}: no DMA layer");
                }
                let states = if ty == GgmlType::F32 {
                    format!("; states: the same slots and positions, keys/values/scores {worst_state:.2e} (bound 1e-4)")
                } else {
                    String::new()
                };
                eprintln!("dma batches {shape} {ty} ({chunks:?}): GPU vs CPU logits {worst:.2e} (bound {bound:.0e}){states}");
            }
        }
    }

    /// Snapshots taken on the GPU restore on the GPU and on the CPU (and back), and the next
    /// logits agree.
    #[test]
    fn snapshots_move_between_devices() {
        if ops_or_skip("snapshots").is_none() {
            return;
        }
        for name in MODELS {
            let r = reference(name);
            let toks = tokens(&r["tokens"]);
            let (_d, model) = load(name, GgmlType::F32);
            let half = toks.len() / 2;
            let mut g = Session::new_on(model.clone(), &opts(toks.len()), Device::Cuda(0)).unwrap();
            g.prefill(&toks[..half]).unwrap();
            let snap = g.snapshot();
            let a: Vec<f32> = g.decode(toks[half]).unwrap().to_vec();
            g.restore(&snap).unwrap();
            let b: Vec<f32> = g.decode(toks[half]).unwrap().to_vec();
            assert_eq!(a, b, "{name}: GPU restore");
            let mut c = Session::new(model.clone(), &opts(toks.len())).unwrap();
            c.restore(&snap).unwrap();
            let cpu: Vec<f32> = c.decode(toks[half]).unwrap().to_vec();
            let e = rel(&a, &cpu);
            assert!(e <= 1e-3, "{name}: GPU state continued on the CPU: {e:.2e}");
            // And a CPU state continued on the GPU.
            let csnap = c.snapshot();
            g.restore(&csnap).unwrap();
            let on_gpu: Vec<f32> = g.decode(toks[half + 1]).unwrap().to_vec();
            let on_cpu: Vec<f32> = c.decode(toks[half + 1]).unwrap().to_vec();
            let e2 = rel(&on_gpu, &on_cpu);
            assert!(
                e2 <= 1e-3,
                "{name}: CPU state continued on the GPU: {e2:.2e}"
            );
            eprintln!("snapshot {name}: GPU→CPU {e:.2e}, CPU→GPU {e2:.2e}");
        }
    }
}
