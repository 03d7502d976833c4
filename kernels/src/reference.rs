//! Scalar reference kernels: the slow, obviously-correct twins that every fast kernel is tested
//! against. Dot products of a weight row with an activation row in the weight type's partner
//! format follow ggml's generic `ggml_vec_dot_*` semantics: integer products summed per block (or
//! sub-block), then scaled in f32.

use cheems_formats::blocks::{
    get_scale_min_k4, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1, QK_K,
};
use half::{bf16, f16};

/// `Σ x_i·y_i` of f32 rows.
pub fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// F16 weights times f32 activations.
pub fn dot_f16_f32(x: &[f16], y: &[f32]) -> f32 {
    x.iter().zip(y).map(|(a, b)| a.to_f32() * b).sum()
}

/// BF16 weights times f32 activations.
pub fn dot_bf16_f32(x: &[bf16], y: &[f32]) -> f32 {
    x.iter().zip(y).map(|(a, b)| a.to_f32() * b).sum()
}

/// Q4_0 · Q8_0.
pub fn dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    let mut sum = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let mut s = 0i32;
        for j in 0..16 {
            let lo = i32::from(bx.qs[j] & 0x0f) - 8;
            let hi = i32::from(bx.qs[j] >> 4) - 8;
            s += lo * i32::from(by.qs[j]) + hi * i32::from(by.qs[j + 16]);
        }
        sum += s as f32 * (bx.d.to_f32() * by.d.to_f32());
    }
    sum
}

/// Q4_1 · Q8_1 (`m·s` carries the offset: `s = d_y·Σ q_y`).
pub fn dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    let mut sum = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let mut s = 0i32;
        for j in 0..16 {
            s += i32::from(bx.qs[j] & 0x0f) * i32::from(by.qs[j])
                + i32::from(bx.qs[j] >> 4) * i32::from(by.qs[j + 16]);
        }
        sum += s as f32 * (bx.d.to_f32() * by.d.to_f32()) + bx.m.to_f32() * by.s.to_f32();
    }
    sum
}

fn q5_high(qh: [u8; 4], j: usize) -> (i32, i32) {
    let qh = u32::from_le_bytes(qh);
    (
        (((qh >> j) << 4) & 0x10) as i32,
        ((qh >> (j + 12)) & 0x10) as i32,
    )
}

/// Q5_0 · Q8_0.
pub fn dot_q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    let mut sum = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let mut s = 0i32;
        for j in 0..16 {
            let (h0, h1) = q5_high(bx.qh, j);
            let lo = (i32::from(bx.qs[j] & 0x0f) | h0) - 16;
            let hi = (i32::from(bx.qs[j] >> 4) | h1) - 16;
            s += lo * i32::from(by.qs[j]) + hi * i32::from(by.qs[j + 16]);
        }
        sum += s as f32 * (bx.d.to_f32() * by.d.to_f32());
    }
    sum
}

/// Q5_1 · Q8_1.
pub fn dot_q5_1_q8_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    let mut sum = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let mut s = 0i32;
        for j in 0..16 {
            let (h0, h1) = q5_high(bx.qh, j);
            let lo = i32::from(bx.qs[j] & 0x0f) | h0;
            let hi = i32::from(bx.qs[j] >> 4) | h1;
            s += lo * i32::from(by.qs[j]) + hi * i32::from(by.qs[j + 16]);
        }
        sum += s as f32 * (bx.d.to_f32() * by.d.to_f32()) + bx.m.to_f32() * by.s.to_f32();
    }
    sum
}

/// Q8_0 · Q8_0.
pub fn dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    let mut sum = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let s: i32 = bx
            .qs
            .iter()
            .zip(&by.qs)
            .map(|(&a, &b)| i32::from(a) * i32::from(b))
            .sum();
        sum += s as f32 * (bx.d.to_f32() * by.d.to_f32());
    }
    sum
}

/// Σ over 32-value sub-block `j` of a k-quant block: `Σ q_x · q_y`.
fn sub_dot(qx: &[i8; QK_K], qy: &[i8; QK_K], from: usize, len: usize) -> i32 {
    qx[from..from + len]
        .iter()
        .zip(&qy[from..from + len])
        .map(|(&a, &b)| i32::from(a) * i32::from(b))
        .sum()
}

/// The unsigned 4-bit (and, for Q5_K, 5-bit) quants of a Q4_K/Q5_K block in value order.
fn unpack_q4k(qs: &[u8; QK_K / 2], qh: Option<&[u8; QK_K / 8]>) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for c in 0..QK_K / 64 {
        for l in 0..32 {
            let b = qs[32 * c + l];
            let (mut lo, mut hi) = (b & 0x0f, b >> 4);
            if let Some(qh) = qh {
                lo |= ((qh[l] >> (2 * c)) & 1) << 4;
                hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
            }
            q[64 * c + l] = lo as i8;
            q[64 * c + 32 + l] = hi as i8;
        }
    }
    q
}

fn dot_k4_like(d: f16, dmin: f16, scales: &[u8; 12], q: &[i8; QK_K], by: &BlockQ8K) -> f32 {
    let (mut s, mut m) = (0i32, 0i32);
    for j in 0..QK_K / 32 {
        let (sc, mn) = get_scale_min_k4(j, scales);
        s += i32::from(sc) * sub_dot(q, &by.qs, 32 * j, 32);
        let bsum = i32::from(by.bsums[2 * j]) + i32::from(by.bsums[2 * j + 1]);
        m += i32::from(mn) * bsum;
    }
    d.to_f32() * by.d * s as f32 - dmin.to_f32() * by.d * m as f32
}

/// Q4_K · Q8_K.
pub fn dot_q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    x.iter()
        .zip(y)
        .map(|(bx, by)| dot_k4_like(bx.d, bx.dmin, &bx.scales, &unpack_q4k(&bx.qs, None), by))
        .sum()
}

/// Q5_K · Q8_K.
pub fn dot_q5_k_q8_k(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
    x.iter()
        .zip(y)
        .map(|(bx, by)| {
            dot_k4_like(
                bx.d,
                bx.dmin,
                &bx.scales,
                &unpack_q4k(&bx.qs, Some(&bx.qh)),
                by,
            )
        })
        .sum()
}

/// Q6_K · Q8_K.
pub fn dot_q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let mut q = [0i8; QK_K];
        for half in 0..2 {
            let (ql, qh) = (&bx.ql[64 * half..], &bx.qh[32 * half..]);
            let out = &mut q[128 * half..];
            for l in 0..32 {
                out[l] = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
                out[l + 32] = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                out[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                out[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            }
        }
        let mut s = 0i32;
        for j in 0..QK_K / 16 {
            s += i32::from(bx.scales[j]) * sub_dot(&q, &by.qs, 16 * j, 16);
        }
        sum += bx.d.to_f32() * by.d * s as f32;
    }
    sum
}
