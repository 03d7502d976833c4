//! What the kernel benches share: the weight types they time, their random matrices and the
//! criterion settings.

use cheems_formats::{blocks, GgmlType};

/// Every weight type, the common ones first.
pub const TYPES: [GgmlType; 11] = [
    GgmlType::Q4_0,
    GgmlType::Q8_0,
    GgmlType::F16,
    GgmlType::F32,
    GgmlType::BF16,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// A `rows × cols` matrix of values in [-0.05, 0.05) (xorshift from `seed`) stored as `ty`.
pub fn matrix(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let w: Vec<f32> = (0..rows * cols)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect();
    let mut data = vec![0u8; ty.row_bytes(rows * cols).unwrap_or(0)];
    blocks::quantize_row(ty, &w, &mut data).expect("benchmark matrix quantizes");
    data
}

/// Criterion with 30 samples after a 500 ms warm-up, measuring for `measure_ms`; with
/// `CHEEMS_BENCH_QUICK` set, 10 samples, 200 ms and `quick_ms`. (`gbps` times by hand.)
#[allow(dead_code)]
pub fn criterion(measure_ms: u64, quick_ms: u64) -> criterion::Criterion {
    let quick = std::env::var_os("CHEEMS_BENCH_QUICK").is_some();
    criterion::Criterion::default()
        .sample_size(if quick { 10 } else { 30 })
        .warm_up_time(std::time::Duration::from_millis(if quick {
            200
        } else {
            500
        }))
        .measurement_time(std::time::Duration::from_millis(if quick {
            quick_ms
        } else {
            measure_ms
        }))
}
