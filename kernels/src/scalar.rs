//! The `scalar` level: the [`crate::reference`] twins applied row by row, behind the same
//! [`RowsFn`](crate::dispatch::RowsFn) signature as the SIMD tables. Levels without a SIMD kernel
//! for some type (NEON's k-quants) borrow these entries.

use bytemuck::cast_slice as c;

use cheems_formats::blocks::{self, BlockQ8_0, BlockQ8_1};

use crate::dispatch::{ActBufs, ActView, Table};
use crate::reference as r;

macro_rules! scalar_rows {
    ($name:ident, $dot:path, act) => {
        pub(crate) fn $name(rows: &[u8], rb: usize, act: &ActView<'_>, out: &mut [f32]) {
            for (row, o) in rows.chunks_exact(rb).zip(out.iter_mut()) {
                *o = $dot(c(row), c(act.blocks));
            }
        }
    };
    ($name:ident, $dot:path, x) => {
        pub(crate) fn $name(rows: &[u8], rb: usize, act: &ActView<'_>, out: &mut [f32]) {
            for (row, o) in rows.chunks_exact(rb).zip(out.iter_mut()) {
                *o = $dot(c(row), act.x);
            }
        }
    };
}

scalar_rows!(f32_rows, r::dot_f32, x);
scalar_rows!(f16_rows, r::dot_f16_f32, x);
scalar_rows!(bf16_rows, r::dot_bf16_f32, x);
scalar_rows!(q4_0_rows, r::dot_q4_0_q8_0, act);
scalar_rows!(q4_1_rows, r::dot_q4_1_q8_1, act);
scalar_rows!(q5_0_rows, r::dot_q5_0_q8_0, act);
scalar_rows!(q5_1_rows, r::dot_q5_1_q8_1, act);
scalar_rows!(q8_0_rows, r::dot_q8_0_q8_0, act);
scalar_rows!(q4_k_rows, r::dot_q4_k_q8_k, act);
scalar_rows!(q5_k_rows, r::dot_q5_k_q8_k, act);
scalar_rows!(q6_k_rows, r::dot_q6_k_q8_k, act);

/// The reference quantizer, then the side arrays from the blocks.
pub(crate) fn quantize_q8(x: &[f32], out: &mut ActBufs<'_>, q8_1: bool) {
    let nb = x.len() / 32;
    if q8_1 {
        let b: &mut [BlockQ8_1] = bytemuck::cast_slice_mut(&mut out.blocks[..36 * nb]);
        blocks::quantize_row_q8_1(x, b);
        for (i, b) in b.iter().enumerate() {
            out.d[i] = b.d.to_f32();
            out.s[i] = b.s.to_f32();
            out.q[32 * i..32 * i + 32].copy_from_slice(&b.qs);
            for (k, quad) in b.qs.chunks_exact(4).enumerate() {
                out.nsum4[8 * i + k] = -quad.iter().map(|&v| i32::from(v)).sum::<i32>();
            }
            out.nsum[i] = -b.qs.iter().map(|&v| i32::from(v)).sum::<i32>() as f32;
        }
    } else {
        let b: &mut [BlockQ8_0] = bytemuck::cast_slice_mut(&mut out.blocks[..34 * nb]);
        blocks::quantize_row_q8_0(x, b);
        for (i, b) in b.iter().enumerate() {
            out.d[i] = b.d.to_f32();
            out.q[32 * i..32 * i + 32].copy_from_slice(&b.qs);
            for (k, quad) in b.qs.chunks_exact(4).enumerate() {
                out.nsum4[8 * i + k] = -quad.iter().map(|&v| i32::from(v)).sum::<i32>();
            }
            out.nsum[i] = -b.qs.iter().map(|&v| i32::from(v)).sum::<i32>() as f32;
        }
    }
}

/// The reference Q8_K quantizer.
pub(crate) fn quantize_q8_k(x: &[f32], out: &mut [u8]) {
    blocks::quantize_row_q8_k(x, bytemuck::cast_slice_mut(out));
}

pub(crate) static TABLE: Table = Table {
    quant_q8: quantize_q8,
    quant_q8_k: quantize_q8_k,
    f32: f32_rows,
    f16: f16_rows,
    bf16: bf16_rows,
    q4_0: q4_0_rows,
    q4_1: q4_1_rows,
    q5_0: q5_0_rows,
    q5_1: q5_1_rows,
    q8_0: q8_0_rows,
    q4_k: q4_k_rows,
    q5_k: q5_k_rows,
    q6_k: q6_k_rows,
    q4_0_mm: None,
    q8_0_mm: None,
    f16_mm: None,
};
