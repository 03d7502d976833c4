//! The k-quants: `Q4_K`, `Q5_K`, `Q6_K` (weights) and `Q8_K` (their activation partner), in
//! 256-value super-blocks.
//!
//! Straight ports of ggml's `quantize_row_q{4,5,6,8}_K_ref` and `dequantize_row_q{4,5,6,8}_K`
//! with their helpers (`nearest_int`, `make_qkx2_quants`, `make_qx_quants`,
//! `get_scale_min_k4`), keeping ggml's float operation order so that the bytes match. These are
//! the reference quantizers without an importance matrix; the imatrix variants
//! (`quantize_row_*_impl`) are not here.

use super::float::{fp16_to_fp32, fp32_to_fp16};
use super::layout::{BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, K_SCALE_SIZE, QK_K};

/// ggml's `GROUP_MAX_EPS`: below this max |x| a group counts as all zeros.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round to nearest, ties to even, by adding `1.5 * 2^23` and reading the
/// mantissa. Exact for `|x| <= 2^22 - 1` (ggml asserts that range; outside it this returns what
/// ggml's release builds return, without panicking).
#[inline]
fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    let i = val.to_bits() as i32;
    (i & 0x007f_ffff) - 0x0040_0000
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8) from the packed
/// 12 bytes of a `Q4_K`/`Q5_K` block.
#[inline]
pub fn get_scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        let d = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (d, m)
    }
}

/// Packs eight 6-bit scales and mins as `get_scale_min_k4` reads them (the inverse, as in
/// ggml's quantizers; values above 63 must already be clamped).
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut q = [0u8; K_SCALE_SIZE];
    for j in 0..8 {
        if j < 4 {
            q[j] = ls[j];
            q[j + 4] = lm[j];
        } else {
            q[j + 4] = (ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4);
            q[j - 4] |= (ls[j] >> 4) << 6;
            q[j] |= (lm[j] >> 4) << 6;
        }
    }
    q
}

/// ggml's `make_qkx2_quants` with `use_mad = false`: an asymmetric `scale * l - min` fit of `x`
/// with `l` in `0..=nmax`, minimizing the weighted squared error over `nstep + 1` candidate
/// scales around `nmax / (max - min)`. Writes the levels to `l_out` and returns `(scale, -min)`
/// (ggml's return value and `*the_min`).
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    l_aux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = l.clamp(0, nmax) as u8;
        let diff = scale * f32::from(l_out[i]) + min - x[i];
        let diff = diff * diff;
        best_error += weights[i] * diff;
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let mut sum_l = 0.0f32;
        let mut sum_l2 = 0.0f32;
        let mut sum_xl = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            l_aux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(l_aux[i]) + this_min - x[i];
                let diff = diff * diff;
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&l_aux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `make_qx_quants` with `rmse_type = 1` and no importance weights (the only form the
/// reference quantizers use): a symmetric fit `scale * (L - nmax)` with `L` in `0..2 * nmax`,
/// weighting each value by `x²`, trying 18 scales around `-nmax / max`. Returns the scale.
fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..x.len()].fill(0);
        return 0.0;
    }
    let mut iscale = -(nmax as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (i, &v) in x.iter().enumerate() {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = v * v;
        let lf = l as f32;
        sumlx += w * v * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
            let w = v * v;
            let lf = l as f32;
            sumlx += w * v * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &v) in x.iter().enumerate() {
                let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
                l_out[i] = (nmax + l) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// The shared first half of `Q4_K` and `Q5_K` quantization: fits each 32-value sub-block with
/// `make_qkx2_quants`, quantizes the scales and mins to 6 bits against their maxima, then
/// re-derives the levels `L` (in `0..=nmax`) with the quantized scales. Returns
/// `(d, dmin, scales)` and fills `l`.
fn quantize_k_scale_min(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    l: &mut [u8; QK_K],
) -> (half::f16, half::f16, [u8; K_SCALE_SIZE]) {
    let mut l_aux = [0u8; 32];
    let mut weights = [0.0f32; 32];
    let mut mins = [0.0f32; QK_K / 32];
    let mut scales = [0.0f32; QK_K / 32];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (scale, min) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            &mut l_aux,
            rmin,
            0.1,
            nstep,
        );
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }

    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..QK_K / 32 {
        // ggml stores the int in a uint8_t (wrapping) before clamping to 63.
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let packed = pack_scale_min_k4(&ls, &lm);
    let d = fp32_to_fp16(max_scale / 63.0);
    let dmin = fp32_to_fp16(max_min / 63.0);

    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, &packed);
        let dj = fp16_to_fp32(d) * f32::from(sc);
        if dj == 0.0 {
            // ggml keeps the levels make_qkx2_quants chose.
            continue;
        }
        let dm = fp16_to_fp32(dmin) * f32::from(m);
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / dj);
            l[32 * j + ii] = q.clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed)
}

/// ggml's `quantize_row_q4_K_ref`.
pub fn quantize_row_q4_k(src: &[f32], dst: &mut [BlockQ4K]) {
    debug_assert_eq!(src.len(), dst.len() * QK_K);
    let mut l = [0u8; QK_K];
    for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
        let (d, dmin, scales) = quantize_k_scale_min(x, 15, -1.0, 20, &mut l);
        y.d = d;
        y.dmin = dmin;
        y.scales = scales;
        for (q, lj) in y.qs.chunks_exact_mut(32).zip(l.chunks_exact(64)) {
            for i in 0..32 {
                q[i] = lj[i] | (lj[i + 32] << 4);
            }
        }
    }
}

/// ggml's `dequantize_row_q4_K`: `d * sc * q - dmin * m` per 32-value sub-block.
pub fn dequantize_row_q4_k(src: &[BlockQ4K], dst: &mut [f32]) {
    debug_assert_eq!(dst.len(), src.len() * QK_K);
    for (x, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = fp16_to_fp32(x.d);
        let min = fp16_to_fp32(x.dmin);
        for (n, (q, y)) in
            x.qs.chunks_exact(32)
                .zip(y.chunks_exact_mut(64))
                .enumerate()
        {
            let (sc, m) = get_scale_min_k4(2 * n, &x.scales);
            let d1 = d * f32::from(sc);
            let m1 = min * f32::from(m);
            let (sc, m) = get_scale_min_k4(2 * n + 1, &x.scales);
            let d2 = d * f32::from(sc);
            let m2 = min * f32::from(m);
            for l in 0..32 {
                y[l] = d1 * f32::from(q[l] & 0x0f) - m1;
                y[l + 32] = d2 * f32::from(q[l] >> 4) - m2;
            }
        }
    }
}

/// ggml's `quantize_row_q5_K_ref`.
pub fn quantize_row_q5_k(src: &[f32], dst: &mut [BlockQ5K]) {
    debug_assert_eq!(src.len(), dst.len() * QK_K);
    let mut l = [0u8; QK_K];
    for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
        let (d, dmin, scales) = quantize_k_scale_min(x, 31, -0.5, 15, &mut l);
        y.d = d;
        y.dmin = dmin;
        y.scales = scales;
        y.qh = [0; QK_K / 8];
        let mut m1 = 1u8;
        let mut m2 = 2u8;
        for (ql, lj) in y.qs.chunks_exact_mut(32).zip(l.chunks_exact(64)) {
            for j in 0..32 {
                let mut l1 = lj[j];
                if l1 > 15 {
                    l1 -= 16;
                    y.qh[j] |= m1;
                }
                let mut l2 = lj[j + 32];
                if l2 > 15 {
                    l2 -= 16;
                    y.qh[j] |= m2;
                }
                ql[j] = l1 | (l2 << 4);
            }
            m1 <<= 2;
            m2 <<= 2;
        }
    }
}

/// ggml's `dequantize_row_q5_K`: `d * sc * q - dmin * m` with 5-bit `q`.
pub fn dequantize_row_q5_k(src: &[BlockQ5K], dst: &mut [f32]) {
    debug_assert_eq!(dst.len(), src.len() * QK_K);
    for (x, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = fp16_to_fp32(x.d);
        let min = fp16_to_fp32(x.dmin);
        let mut u1 = 1u8;
        let mut u2 = 2u8;
        for (n, (ql, y)) in
            x.qs.chunks_exact(32)
                .zip(y.chunks_exact_mut(64))
                .enumerate()
        {
            let (sc, m) = get_scale_min_k4(2 * n, &x.scales);
            let d1 = d * f32::from(sc);
            let m1 = min * f32::from(m);
            let (sc, m) = get_scale_min_k4(2 * n + 1, &x.scales);
            let d2 = d * f32::from(sc);
            let m2 = min * f32::from(m);
            for l in 0..32 {
                let h1 = if x.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if x.qh[l] & u2 != 0 { 16 } else { 0 };
                y[l] = d1 * f32::from((ql[l] & 0x0f) + h1) - m1;
                y[l + 32] = d2 * f32::from((ql[l] >> 4) + h2) - m2;
            }
            u1 <<= 2;
            u2 <<= 2;
        }
    }
}

/// ggml's `quantize_row_q6_K_ref`.
pub fn quantize_row_q6_k(src: &[f32], dst: &mut [BlockQ6K]) {
    debug_assert_eq!(src.len(), dst.len() * QK_K);
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for ib in 0..QK_K / 16 {
            let scale = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..]);
            scales[ib] = scale;
            let abs_scale = scale.abs();
            if abs_scale > max_abs_scale {
                max_abs_scale = abs_scale;
                max_scale = scale;
            }
        }

        if max_abs_scale < GROUP_MAX_EPS {
            *y = bytemuck::Zeroable::zeroed();
            continue;
        }

        let iscale = -128.0 / max_scale;
        y.d = fp32_to_fp16(1.0 / iscale);
        for (s, &scale) in y.scales.iter_mut().zip(&scales) {
            // ggml stores the int in an int8_t (wrapping); the value is in -128..=127 anyway.
            *s = nearest_int(iscale * scale).min(127) as i8;
        }

        for j in 0..QK_K / 16 {
            let d = fp16_to_fp32(y.d) * f32::from(y.scales[j]);
            if d == 0.0 {
                // ggml keeps the levels make_qx_quants chose.
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
                l[16 * j + ii] = (q + 32) as i8;
            }
        }

        for ((ql, qh), lj) in
            y.ql.chunks_exact_mut(64)
                .zip(y.qh.chunks_exact_mut(32))
                .zip(l.chunks_exact(128))
        {
            for i in 0..32 {
                let (l0, l1, l2, l3) = (
                    lj[i] as u8,
                    lj[i + 32] as u8,
                    lj[i + 64] as u8,
                    lj[i + 96] as u8,
                );
                ql[i] = (l0 & 0x0f) | ((l2 & 0x0f) << 4);
                ql[i + 32] = (l1 & 0x0f) | ((l3 & 0x0f) << 4);
                qh[i] = (l0 >> 4) | ((l1 >> 4) << 2) | ((l2 >> 4) << 4) | ((l3 >> 4) << 6);
            }
        }
    }
}

/// ggml's `dequantize_row_q6_K`: `d * scales[j] * (q - 32)` per 16-value sub-block.
pub fn dequantize_row_q6_k(src: &[BlockQ6K], dst: &mut [f32]) {
    debug_assert_eq!(dst.len(), src.len() * QK_K);
    for (x, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = fp16_to_fp32(x.d);
        for (((ql, qh), sc), y) in
            x.ql.chunks_exact(64)
                .zip(x.qh.chunks_exact(32))
                .zip(x.scales.chunks_exact(8))
                .zip(y.chunks_exact_mut(128))
        {
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
                let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                y[l] = d * f32::from(sc[is]) * f32::from(q1);
                y[l + 32] = d * f32::from(sc[is + 2]) * f32::from(q2);
                y[l + 64] = d * f32::from(sc[is + 4]) * f32::from(q3);
                y[l + 96] = d * f32::from(sc[is + 6]) * f32::from(q4);
            }
        }
    }
}

/// ggml's `quantize_row_q8_K_ref`: `d = max / -127` (signed value of largest magnitude),
/// `q = min(127, nearest_int(x / d))`, `bsums` the sums of each 16 quants.
///
/// Deviation: for an all-zero block ggml sets `d` and `qs` to zero but leaves `bsums` as they
/// were in the output buffer; here they are zeroed too.
pub fn quantize_row_q8_k(src: &[f32], dst: &mut [BlockQ8K]) {
    debug_assert_eq!(src.len(), dst.len() * QK_K);
    for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in x {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax == 0.0 {
            *y = bytemuck::Zeroable::zeroed();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in y.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, q) in y.bsums.iter_mut().zip(y.qs.chunks_exact(16)) {
            let sum: i32 = q.iter().map(|&v| i32::from(v)).sum();
            *s = sum as i16;
        }
        y.d = 1.0 / iscale;
    }
}

/// ggml's `dequantize_row_q8_K`: `d * q`.
pub fn dequantize_row_q8_k(src: &[BlockQ8K], dst: &mut [f32]) {
    debug_assert_eq!(dst.len(), src.len() * QK_K);
    for (x, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        for (v, &q) in y.iter_mut().zip(&x.qs) {
            *v = x.d * f32::from(q);
        }
    }
}
