//! The 32-value ("legacy") quants: `Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`, `Q8_1`.
//!
//! Straight ports of `quantize_row_*_ref` and `dequantize_row_*` from ggml's `ggml-quants.c`,
//! keeping ggml's float operation order and its float-to-integer conversions (truncation toward
//! zero after adding `.5`, `roundf` for the 8-bit types), so the bytes match ggml's for every
//! finite input. Only the k-quants live elsewhere ([`super::kquants`]).
//!
//! C converts an out-of-range float to an integer with undefined behaviour; Rust's `as`
//! saturates. The two differ only for inputs that are NaN or infinite, where ggml's bytes are
//! not defined either.

use super::float::{fp16_to_fp32, fp32_to_fp16};
use super::layout::{
    BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, QK4_0, QK4_1, QK5_0, QK5_1,
    QK8_0, QK8_1,
};

/// The value of largest magnitude in `x` (the first one on ties), as ggml's symmetric quantizers
/// pick it: the sign is kept so that the extreme maps onto the quant range's wider end.
#[inline]
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// The minimum and maximum of `x`, with ggml's strict comparisons (starting from `±f32::MAX`).
#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// `max |x|` written as ggml's `MAX(amax, fabsf(v))` macro evaluates it.
#[inline]
fn absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    for &v in x {
        amax = if amax > v.abs() { amax } else { v.abs() };
    }
    amax
}

/// `d ? 1.0f/d : 0.0f`.
#[inline]
fn inverse_or_zero(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// ggml's `quantize_row_q4_0_ref`: `d = max / -8` where `max` is the signed value of largest
/// magnitude, `q = min(15, trunc(x / d + 8.5))`.
pub fn quantize_row_q4_0(src: &[f32], dst: &mut [BlockQ4_0]) {
    debug_assert_eq!(src.len(), dst.len() * QK4_0);
    for (x, y) in src.chunks_exact(QK4_0).zip(dst.iter_mut()) {
        let max = signed_absmax(x);
        let d = max / -8.0;
        let id = inverse_or_zero(d);
        y.d = fp32_to_fp16(d);
        for j in 0..QK4_0 / 2 {
            let x0 = x[j] * id;
            let x1 = x[QK4_0 / 2 + j] * id;
            let xi0 = ((x0 + 8.5) as i8).min(15) as u8;
            let xi1 = ((x1 + 8.5) as i8).min(15) as u8;
            y.qs[j] = xi0 | (xi1 << 4);
        }
    }
}

/// ggml's `dequantize_row_q4_0`: `(q - 8) * d`.
pub fn dequantize_row_q4_0(src: &[BlockQ4_0], dst: &mut [f32]) {
    debug_assert_eq!(dst.len(), src.len() * QK4_0);
    for (x, y) in src.iter().zip(dst.chunks_exact_mut(QK4_0)) {
        let d = fp16_to_fp32(x.d);
        for j in 0..QK4_0 / 2 {
            let x0 = i32::from(x.qs[j] & 0x0f) - 8;
            let x1 = i32::from(x.qs[j] >> 4) - 8;
            y[j] = x0 as f32 * d;
            y[j + QK4_0 / 2] = x1 as f32 * d;
        }
    }
}

/// ggml's `quantize_row_q4_1_ref`: `d = (max - min) / 15`, `m = min`,
/// `q = min(15, trunc((x - min) / d + 0.5))`.
pub fn quantize_row_q4_1(src: &[f32], dst: &mut [BlockQ4_1]) {
    debug_assert_eq!(src.len(), dst.len() * QK4_1);
    for (x, y) in src.chunks_exact(QK4_1).zip(dst.iter_mut()) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = inverse_or_zero(d);
        y.d = fp32_to_fp16(d);
        y.m = fp32_to_fp16(min);
        for j in 0..QK4_1 / 2 {
            let x0 = (x[j] - min) * id;
            let x1 = (x[QK4_1 / 2 + j] - min) * id;
            let xi0 = ((x0 + 0.5) as i8).min(15) as u8;
            let xi1 = ((x1 + 0.5) as i8).min(15) as u8;
            y.qs[j] = xi0 | (xi1 << 4);
        }
    }
}

/// ggml's `dequantize_row_q4_1`: `q * d + m`.
pub fn dequantize_row_q4_1(src: &[BlockQ4_1], dst: &mut [f32]) {
    debug_assert_eq!(dst.len(), src.len() * QK4_1);
    for (x, y) in src.iter().zip(dst.chunks_exact_mut(QK4_1)) {
        let d = fp16_to_fp32(x.d);
        let m = fp16_to_fp32(x.m);
        for j in 0..QK4_1 / 2 {
            let x0 = i32::from(x.qs[j] & 0x0f);
            let x1 = i32::from(x.qs[j] >> 4);
            y[j] = x0 as f32 * d + m;
            y[j + QK4_1 / 2] = x1 as f32 * d + m;
        }
    }
}

/// ggml's `quantize_row_q5_0_ref`: `d = max / -16`, `q = min(31, trunc(x / d + 16.5))`.
pub fn quantize_row_q5_0(src: &[f32], dst: &mut [BlockQ5_0]) {
    debug_assert_eq!(src.len(), dst.len() * QK5_0);
    for (x, y) in src.chunks_exact(QK5_0).zip(dst.iter_mut()) {
        let max = signed_absmax(x);
        let d = max / -16.0;
        let id = inverse_or_zero(d);
        y.d = fp32_to_fp16(d);
        let mut qh = 0u32;
        for j in 0..QK5_0 / 2 {
            let x0 = x[j] * id;
            let x1 = x[QK5_0 / 2 + j] * id;
            let xi0 = ((x0 + 16.5) as i8).min(31) as u8;
            let xi1 = ((x1 + 16.5) as i8).min(31) as u8;
            y.qs[j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
            qh |= u32::from((xi0 & 0x10) >> 4) << j;
            qh |= u32::from((xi1 & 0x10) >> 4) << (j + QK5_0 / 2);
        }
        y.qh = qh.to_le_bytes();
    }
}

/// ggml's `dequantize_row_q5_0`: `(q - 16) * d`.
pub fn dequantize_row_q5_0(src: &[BlockQ5_0], dst: &mut [f32]) {
    debug_assert_eq!(dst.len(), src.len() * QK5_0);
    for (x, y) in src.iter().zip(dst.chunks_exact_mut(QK5_0)) {
        let d = fp16_to_fp32(x.d);
        let qh = u32::from_le_bytes(x.qh);
        for j in 0..QK5_0 / 2 {
            let xh_0 = ((qh >> j) << 4) & 0x10;
            let xh_1 = (qh >> (j + 12)) & 0x10;
            let x0 = (u32::from(x.qs[j] & 0x0f) | xh_0) as i32 - 16;
            let x1 = (u32::from(x.qs[j] >> 4) | xh_1) as i32 - 16;
            y[j] = x0 as f32 * d;
            y[j + QK5_0 / 2] = x1 as f32 * d;
        }
    }
}

/// ggml's `quantize_row_q5_1_ref`: `d = (max - min) / 31`, `m = min`,
/// `q = trunc((x - min) / d + 0.5)`.
pub fn quantize_row_q5_1(src: &[f32], dst: &mut [BlockQ5_1]) {
    debug_assert_eq!(src.len(), dst.len() * QK5_1);
    for (x, y) in src.chunks_exact(QK5_1).zip(dst.iter_mut()) {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = inverse_or_zero(d);
        y.d = fp32_to_fp16(d);
        y.m = fp32_to_fp16(min);
        let mut qh = 0u32;
        for j in 0..QK5_1 / 2 {
            let x0 = (x[j] - min) * id;
            let x1 = (x[QK5_1 / 2 + j] - min) * id;
            // ggml converts straight to uint8_t here, without the `MIN(31, ...)`.
            let xi0 = (x0 + 0.5) as u8;
            let xi1 = (x1 + 0.5) as u8;
            y.qs[j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
            qh |= u32::from((xi0 & 0x10) >> 4) << j;
            qh |= u32::from((xi1 & 0x10) >> 4) << (j + QK5_1 / 2);
        }
        y.qh = qh.to_le_bytes();
    }
}

/// ggml's `dequantize_row_q5_1`: `q * d + m`.
pub fn dequantize_row_q5_1(src: &[BlockQ5_1], dst: &mut [f32]) {
    debug_assert_eq!(dst.len(), src.len() * QK5_1);
    for (x, y) in src.iter().zip(dst.chunks_exact_mut(QK5_1)) {
        let d = fp16_to_fp32(x.d);
        let m = fp16_to_fp32(x.m);
        let qh = u32::from_le_bytes(x.qh);
        for j in 0..QK5_1 / 2 {
            let xh_0 = ((qh >> j) << 4) & 0x10;
            let xh_1 = (qh >> (j + 12)) & 0x10;
            let x0 = (u32::from(x.qs[j] & 0x0f) | xh_0) as i32;
            let x1 = (u32::from(x.qs[j] >> 4) | xh_1) as i32;
            y[j] = x0 as f32 * d + m;
            y[j + QK5_1 / 2] = x1 as f32 * d + m;
        }
    }
}

/// ggml's `quantize_row_q8_0_ref`: `d = max|x| / 127`, `q = roundf(x / d)` (ties away from zero).
pub fn quantize_row_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) {
    debug_assert_eq!(src.len(), dst.len() * QK8_0);
    for (x, y) in src.chunks_exact(QK8_0).zip(dst.iter_mut()) {
        let d = absmax(x) / 127.0;
        let id = inverse_or_zero(d);
        y.d = fp32_to_fp16(d);
        for (q, &v) in y.qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
    }
}

/// ggml's `dequantize_row_q8_0`: `q * d`.
pub fn dequantize_row_q8_0(src: &[BlockQ8_0], dst: &mut [f32]) {
    debug_assert_eq!(dst.len(), src.len() * QK8_0);
    for (x, y) in src.iter().zip(dst.chunks_exact_mut(QK8_0)) {
        let d = fp16_to_fp32(x.d);
        for (v, &q) in y.iter_mut().zip(&x.qs) {
            *v = f32::from(q) * d;
        }
    }
}

/// ggml's `quantize_row_q8_1_ref`: as `Q8_0`, plus `s = f16(sum(q) * d)`.
pub fn quantize_row_q8_1(src: &[f32], dst: &mut [BlockQ8_1]) {
    debug_assert_eq!(src.len(), dst.len() * QK8_1);
    for (x, y) in src.chunks_exact(QK8_1).zip(dst.iter_mut()) {
        let d = absmax(x) / 127.0;
        let id = inverse_or_zero(d);
        y.d = fp32_to_fp16(d);
        let mut sum = 0i32;
        for (q, &v) in y.qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
            sum += i32::from(*q);
        }
        y.s = fp32_to_fp16(sum as f32 * d);
    }
}

/// `q * d`, ignoring `s` (ggml declares but never defines `dequantize_row_q8_1`; this is the
/// obvious inverse, the same formula as `Q8_0`).
pub fn dequantize_row_q8_1(src: &[BlockQ8_1], dst: &mut [f32]) {
    debug_assert_eq!(dst.len(), src.len() * QK8_1);
    for (x, y) in src.iter().zip(dst.chunks_exact_mut(QK8_1)) {
        let d = fp16_to_fp32(x.d);
        for (v, &q) in y.iter_mut().zip(&x.qs) {
            *v = f32::from(q) * d;
        }
    }
}
