//! Matrix-vector products over weights borrowed in place from the model file, in their stored
//! type. The activation is converted once per product to the weight type's partner
//! ([`Activation`]), then each row is an integer dot product (ggml's scheme), rows split across
//! the caller's thread pool.

use cheems_formats::blocks::{self, vec_dot_type};
use cheems_formats::GgmlType;

use crate::pool::Pool;

use crate::reference as r;

/// A weight matrix: `rows` rows of `cols` values of type `ty`, row-major, in place.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> MatRef<'a> {
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.cols).unwrap_or(0)
    }

    /// Row `i`'s bytes.
    pub fn row(&self, i: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[i * rb..(i + 1) * rb]
    }
}

/// An activation row held in f32 and in the partner format of the weights it multiplies.
/// Sized once (`with_capacity`); converting never allocates afterwards.
#[derive(Debug, Clone)]
pub struct Activation {
    /// 8-byte aligned storage for the quantized blocks.
    store: Vec<u64>,
    ty: GgmlType,
    n: usize,
}

impl Activation {
    /// Room for rows of up to `max_cols` values in any partner format.
    pub fn with_capacity(max_cols: usize) -> Self {
        // Q8_K is the largest partner per value (292 bytes per 256); f32 needs none (read from x).
        let blocks = max_cols.div_ceil(32) + 1;
        let bytes =
            blocks * GgmlType::Q8_1.type_size() + (max_cols / 256 + 1) * GgmlType::Q8_K.type_size();
        Activation {
            store: vec![0; bytes.div_ceil(8)],
            ty: GgmlType::F32,
            n: 0,
        }
    }

    /// Converts `x` for products with weights of type `weight_ty`.
    pub fn quantize_for(&mut self, weight_ty: GgmlType, x: &[f32]) {
        let ty = vec_dot_type(weight_ty);
        self.ty = ty;
        self.n = x.len();
        if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            return; // float weights read x directly
        }
        let len = ty.row_bytes(x.len()).unwrap_or(0);
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut self.store);
        // Infallible for a row of whole blocks within capacity, which callers guarantee.
        let ok = blocks::quantize_row(ty, x, &mut bytes[..len]);
        debug_assert!(ok.is_ok(), "activation quantize: {ok:?}");
    }

    fn bytes(&self) -> &[u8] {
        let all: &[u8] = bytemuck::cast_slice(&self.store);
        &all[..self.ty.row_bytes(self.n).unwrap_or(0)]
    }
}

/// `w_row · x` for one row of weight type `ty`, with `act` holding `x` in the partner format.
pub fn row_dot(ty: GgmlType, row: &[u8], act: &Activation, x: &[f32]) -> f32 {
    use bytemuck::cast_slice as c;
    match ty {
        GgmlType::F32 => r::dot_f32(c(row), x),
        GgmlType::F16 => r::dot_f16_f32(c(row), x),
        GgmlType::BF16 => r::dot_bf16_f32(c(row), x),
        GgmlType::Q4_0 => r::dot_q4_0_q8_0(c(row), c(act.bytes())),
        GgmlType::Q4_1 => r::dot_q4_1_q8_1(c(row), c(act.bytes())),
        GgmlType::Q5_0 => r::dot_q5_0_q8_0(c(row), c(act.bytes())),
        GgmlType::Q5_1 => r::dot_q5_1_q8_1(c(row), c(act.bytes())),
        GgmlType::Q8_0 => r::dot_q8_0_q8_0(c(row), c(act.bytes())),
        GgmlType::Q4_K => r::dot_q4_k_q8_k(c(row), c(act.bytes())),
        GgmlType::Q5_K => r::dot_q5_k_q8_k(c(row), c(act.bytes())),
        GgmlType::Q6_K => r::dot_q6_k_q8_k(c(row), c(act.bytes())),
        // Loading refuses other types, so this is never reached with real weights.
        _ => f32::NAN,
    }
}

/// `y = W x`. `act` must hold `x` converted for `w.ty` ([`Activation::quantize_for`]).
pub fn matvec(w: &MatRef<'_>, act: &Activation, x: &[f32], y: &mut [f32], pool: &Pool) {
    debug_assert_eq!(y.len(), w.rows);
    debug_assert_eq!(x.len(), w.cols);
    let rb = w.row_bytes();
    let rows = |first: usize, ys: &mut [f32]| {
        for (k, yi) in ys.iter_mut().enumerate() {
            let i = first + k;
            *yi = row_dot(w.ty, &w.data[i * rb..(i + 1) * rb], act, x);
        }
    };
    if w.rows <= 64 || pool.threads() == 1 {
        rows(0, y);
        return;
    }
    // Chunks of rows big enough to amortise the hand-off, small enough to balance the threads.
    let chunk = (w.rows / (4 * pool.threads())).clamp(16, 1024);
    pool.for_chunks_mut(y, chunk, &|c, ys| rows(c * chunk, ys));
}

/// `y += alpha · row` for one weight row (dequantized on the fly; `scratch` holds one row).
pub fn row_axpy(ty: GgmlType, row: &[u8], alpha: f32, y: &mut [f32], scratch: &mut [f32]) {
    let s = &mut scratch[..y.len()];
    let ok = blocks::dequantize_row(ty, row, s);
    debug_assert!(ok.is_ok());
    for (yi, si) in y.iter_mut().zip(s.iter()) {
        *yi += alpha * si;
    }
}

/// Row `i` of a matrix as f32 (embedding lookup).
pub fn row_f32(w: &MatRef<'_>, i: usize, out: &mut [f32]) {
    let ok = blocks::dequantize_row(w.ty, w.row(i), out);
    debug_assert!(ok.is_ok());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn xorshift(state: &mut u64) -> f32 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }

    /// Every type's integer dot equals "dequantize both, f32 dot" within the partner's rounding.
    #[test]
    fn row_dot_matches_dequantized_math() {
        let mut s = 0x9E3779B97F4A7C15u64;
        let n = 512;
        for &ty in &[
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            let w: Vec<f32> = (0..n).map(|_| xorshift(&mut s)).collect();
            let x: Vec<f32> = (0..n).map(|_| xorshift(&mut s) * 3.0).collect();
            let mut row = vec![0u8; ty.row_bytes(n).unwrap()];
            blocks::quantize_row(ty, &w, &mut row).unwrap();
            let mut wd = vec![0f32; n];
            blocks::dequantize_row(ty, &row, &mut wd).unwrap();
            let exact: f32 = wd.iter().zip(&x).map(|(a, b)| a * b).sum();
            let mut act = Activation::with_capacity(n);
            act.quantize_for(ty, &x);
            let got = row_dot(ty, &row, &act, &x);
            let norm: f32 = wd.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
            // The activation's own quantization (8 bits) bounds the difference.
            assert!(
                (got - exact).abs() <= 1e-2 * norm,
                "{ty}: {got} vs {exact} (norm {norm})"
            );
        }
    }
}
