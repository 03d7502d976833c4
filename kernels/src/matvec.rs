//! Matrix-vector products over weights borrowed in place from the model file, in their stored
//! type. The activation is converted once per product to the weight type's partner
//! ([`Activation`]), then each row is an integer dot product (ggml's scheme) run by the active
//! level's SIMD kernels ([`crate::dispatch`]), four rows per pass, rows split across the
//! caller's thread pool. The `*_at` variants take the level as an argument (parity tests,
//! side-by-side benchmarks).

use cheems_formats::blocks::{self, vec_dot_type};
use cheems_formats::GgmlType;

use crate::dispatch::{self, ActBufs, ActView, Level};
use crate::pool::Pool;

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
///
/// Besides the partner's ggml blocks (the bytes `cheems_formats::blocks::quantize_row` makes,
/// which the scalar twins read), a Q8_0/Q8_1 partner keeps level-independent side arrays for
/// the SIMD kernels: the quants contiguous, each block's scale (and Q8_1 `s`) as f32, and for
/// Q8_0 minus the sum of every 4 consecutive quants and of each block (the offset corrections
/// that let kernels multiply unsigned weight quants). Q8_K blocks already carry their `bsums` and are read in
/// place.
#[derive(Debug, Clone)]
pub struct Activation {
    /// 8-byte aligned storage for the quantized blocks.
    store: Vec<u64>,
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    nsum4: Vec<i32>,
    nsum: Vec<f32>,
    ty: GgmlType,
    n: usize,
    /// The last conversion succeeded (whole blocks, within capacity).
    ok: bool,
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
            q: vec![0; blocks * 32],
            d: vec![0.0; blocks],
            s: vec![0.0; blocks],
            nsum4: vec![0; blocks * 8],
            nsum: vec![0.0; blocks],
            ty: GgmlType::F32,
            n: 0,
            ok: false,
        }
    }

    /// Converts `x` for products with weights of type `weight_ty` (at the active kernel
    /// level; every level makes the same bytes).
    pub fn quantize_for(&mut self, weight_ty: GgmlType, x: &[f32]) {
        self.quantize_for_at(dispatch::level(), weight_ty, x);
    }

    /// [`Activation::quantize_for`] with the quantizer of a given level (the scalar one where
    /// this CPU lacks it).
    pub fn quantize_for_at(&mut self, level: Level, weight_ty: GgmlType, x: &[f32]) {
        let ty = vec_dot_type(weight_ty);
        self.ty = ty;
        self.n = x.len();
        self.ok = true;
        if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            return; // float weights read x directly
        }
        let len = ty.row_bytes(x.len());
        let blocks: &mut [u8] = bytemuck::cast_slice_mut(&mut self.store);
        let Some(len) = len.filter(|&l| l <= blocks.len() && x.len() <= self.q.len()) else {
            self.ok = false;
            debug_assert!(
                false,
                "activation of {} values for {ty} (capacity {})",
                x.len(),
                self.q.len()
            );
            return;
        };
        let table = dispatch::table(level).unwrap_or(&crate::scalar::TABLE);
        let blocks = &mut blocks[..len];
        match ty {
            GgmlType::Q8_0 | GgmlType::Q8_1 => {
                let nb = x.len() / 32;
                let mut bufs = ActBufs {
                    blocks,
                    q: &mut self.q[..32 * nb],
                    d: &mut self.d[..nb],
                    s: &mut self.s[..nb],
                    nsum4: &mut self.nsum4[..8 * nb],
                    nsum: &mut self.nsum[..nb],
                };
                // SAFETY: `x` is whole blocks (`row_bytes` is `Some`), the buffers are sized
                // for them, and `table` is for a level this CPU supports.
                unsafe { (table.quant_q8)(x, &mut bufs, ty == GgmlType::Q8_1) };
            }
            GgmlType::Q8_K => {
                // SAFETY: as above, for Q8_K blocks.
                unsafe { (table.quant_q8_k)(x, blocks) };
            }
            _ => {
                let ok = blocks::quantize_row(ty, x, blocks);
                debug_assert!(ok.is_ok(), "activation quantize: {ok:?}");
                self.ok = ok.is_ok();
            }
        }
    }

    /// The partner row as ggml blocks (empty for float partners), as the last
    /// [`Activation::quantize_for`] made it.
    pub fn partner_bytes(&self) -> &[u8] {
        if matches!(self.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            return &[];
        }
        self.bytes()
    }

    fn bytes(&self) -> &[u8] {
        let all: &[u8] = bytemuck::cast_slice(&self.store);
        &all[..self.ty.row_bytes(self.n).unwrap_or(0)]
    }

    /// The kernels' view, if this activation was prepared for `cols`-value rows of `weight_ty`
    /// (float types read `x`, which must then hold `cols` values).
    pub(crate) fn view<'a>(
        &'a self,
        weight_ty: GgmlType,
        cols: usize,
        x: &'a [f32],
    ) -> Option<ActView<'a>> {
        let partner = vec_dot_type(weight_ty);
        if matches!(partner, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            return (x.len() == cols).then_some(ActView {
                n: cols,
                x,
                blocks: &[],
                q: &[],
                d: &[],
                s: &[],
                nsum4: &[],
                nsum: &[],
            });
        }
        if !self.ok || self.ty != partner || self.n != cols {
            return None;
        }
        let nb = cols / 32;
        Some(ActView {
            n: cols,
            x,
            blocks: self.bytes(),
            q: &self.q[..cols],
            d: &self.d[..nb],
            s: &self.s[..nb],
            nsum4: &self.nsum4[..cols / 4],
            nsum: &self.nsum[..nb],
        })
    }
}

/// `w_row · x` for one row of weight type `ty`, with `act` holding `x` in the partner format,
/// at the active kernel level. Unsupported types, and an activation not prepared for this row
/// (other type or length), give NaN.
pub fn row_dot(ty: GgmlType, row: &[u8], act: &Activation, x: &[f32]) -> f32 {
    row_dot_at(dispatch::level(), ty, row, act, x)
}

/// [`row_dot`] at a given kernel level (NaN where this CPU lacks it).
pub fn row_dot_at(level: Level, ty: GgmlType, row: &[u8], act: &Activation, x: &[f32]) -> f32 {
    let partner = vec_dot_type(ty);
    let cols = if matches!(partner, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        x.len()
    } else {
        act.n
    };
    let Some(kernel) = dispatch::table(level).and_then(|t| t.get(ty)) else {
        return f32::NAN;
    };
    let Some(view) = act.view(ty, cols, x) else {
        debug_assert!(
            false,
            "row_dot: activation not prepared for {cols} values of {ty}"
        );
        return f32::NAN;
    };
    if ty.row_bytes(cols) != Some(row.len()) {
        debug_assert!(
            false,
            "row_dot: {} bytes is not a {cols}-value {ty} row",
            row.len()
        );
        return f32::NAN;
    }
    if cols == 0 {
        return 0.0;
    }
    let mut out = [0f32];
    // SAFETY: `row` is one row of `cols` values of `ty` (checked above), `view` was prepared
    // for `cols` values of `ty`'s partner (`Activation::view`), and `table` hands out only
    // levels this CPU supports.
    unsafe { kernel(row, row.len(), &view, &mut out) };
    out[0]
}

/// `y = W x` at the active kernel level. `act` must hold `x` converted for `w.ty`
/// ([`Activation::quantize_for`]); `y` has `w.rows` values. Rows are split across `pool`.
pub fn matvec(w: &MatRef<'_>, act: &Activation, x: &[f32], y: &mut [f32], pool: &Pool) {
    matvec_at(dispatch::level(), w, act, x, y, pool);
}

/// [`matvec`] at a given kernel level. A level this CPU lacks, an unsupported type or
/// mismatched shapes fill `y` with NaN.
pub fn matvec_at(
    level: Level,
    w: &MatRef<'_>,
    act: &Activation,
    x: &[f32],
    y: &mut [f32],
    pool: &Pool,
) {
    let rb = w.row_bytes();
    let kernel = dispatch::table(level).and_then(|t| t.get(w.ty));
    let view = act.view(w.ty, w.cols, x);
    let shapes_ok = y.len() == w.rows
        && w.ty.row_bytes(w.cols).is_some()
        && w.rows.checked_mul(rb).is_some_and(|b| b <= w.data.len());
    let (Some(kernel), Some(view), true) = (kernel, view, shapes_ok) else {
        debug_assert!(
            !level.is_supported() || dispatch::table(level).and_then(|t| t.get(w.ty)).is_none(),
            "matvec: {}x{} {} with {} outputs, {} bytes, activation for {}x{}: mismatch",
            w.rows,
            w.cols,
            w.ty,
            y.len(),
            w.data.len(),
            act.ty,
            act.n
        );
        y.fill(f32::NAN);
        return;
    };
    if w.cols == 0 {
        y.fill(0.0);
        return;
    }
    let rows = |first: usize, ys: &mut [f32]| {
        let bytes = &w.data[first * rb..(first + ys.len()) * rb];
        // SAFETY: `bytes` holds exactly `ys.len()` rows of `w.cols` values of `w.ty`, `view`
        // was prepared for them (`Activation::view`), and `table` hands out only levels this
        // CPU supports.
        unsafe { kernel(bytes, rb, &view, ys) };
    };
    if w.rows <= 64 || pool.threads() == 1 {
        rows(0, y);
        return;
    }
    // Chunks of rows big enough to amortise the hand-off, small enough to balance the threads;
    // a multiple of 4 so that the 4-row kernels see no ragged chunk edges.
    let chunk = (w.rows / (4 * pool.threads()))
        .clamp(16, 1024)
        .next_multiple_of(4);
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
