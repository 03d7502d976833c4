//! Batched products for prefill: `Y = X Wᵀ` for a batch of activation rows.
//!
//! Four paths, chosen by [`matmul_auto`] (which `Ctx::matmul` in the root crate calls):
//! - [`matmul_amx`]: F16 and BF16 weights on AMX-BF16 tiles where the CPU has them (Sapphire
//!   Rapids and later), each product split into two or three bf16 products that keep f32
//!   accuracy (the private `x86::amx` module explains the split).
//! - [`matmul`]: integer products with the activations in their partner format. Each task takes
//!   a range of weight rows; where the level has a tile kernel (Q4_0 and Q8_0 on AVX-512 VNNI),
//!   it repacks 16 rows at a time and runs every activation over them (`vpdpbusd`, one float
//!   step per block for 16 rows); otherwise the decode row kernels run one activation at a
//!   time over rows held in cache (bit for bit what one matvec per row gives). Small batches
//!   of every type take it too.
//! - [`matmul_f16`]: F16 weights on levels with an F16 kernel (AVX-512): rows converted to f32
//!   a few at a time, the activations transposed so that one register holds 16 of them.
//! - [`matmul_gemm`] (the other types, batches of [`GEMM_MIN`] rows or more): tiles of [`TILE`]
//!   rows dequantized to f32 (F32 weights used in place) and multiplied with the whole batch by
//!   the `gemm` crate's f32 kernels, writing straight into `Y`.

use cheems_formats::GgmlType;

use crate::dispatch::{self, Level};
use crate::matvec::{Activation, MatRef};
use crate::pool::Pool;

/// A batch of activation rows, each converted for the weight type it multiplies. Sized once.
#[derive(Debug, Clone)]
pub struct Activations {
    rows: Vec<Activation>,
    n: usize,
}

impl Activations {
    /// Room for `batch` rows of up to `max_cols` values.
    pub fn with_capacity(batch: usize, max_cols: usize) -> Self {
        Activations {
            rows: (0..batch.max(1))
                .map(|_| Activation::with_capacity(max_cols))
                .collect(),
            n: 0,
        }
    }

    /// Rows the batch can hold.
    pub fn capacity(&self) -> usize {
        self.rows.len()
    }

    /// Converts the rows of `xs` (`n` rows of `cols`) for products with `weight_ty`.
    pub fn quantize_for(&mut self, weight_ty: GgmlType, xs: &[f32], cols: usize) {
        let n = xs.len() / cols.max(1);
        debug_assert!(n <= self.rows.len());
        for (a, x) in self.rows.iter_mut().zip(xs.chunks_exact(cols)) {
            a.quantize_for(weight_ty, x);
        }
        self.n = n;
    }
}

/// Batches of at least this many rows take the dequantize-and-GEMM path.
pub const GEMM_MIN: usize = 8;
/// Activations handed to a tile kernel at a time.
const MM_GROUP: usize = 128;
/// Weight rows dequantized at a time by one thread in the GEMM path.
pub const TILE: usize = 64;

/// f32 values of `tmp` the GEMM path needs for `w` on `pool` (one tile per thread).
pub fn gemm_scratch(cols: usize, pool: &Pool) -> usize {
    pool.threads() * TILE * cols
}

/// Whether [`matmul_gemm`] takes a batch of `n` rows of `w` with `tmp_len` values of scratch.
/// Types with an integer tile kernel at the active level take [`matmul`] instead.
pub fn use_gemm(w: &MatRef<'_>, n: usize, tmp_len: usize, pool: &Pool) -> bool {
    n >= GEMM_MIN
        && tmp_len >= gemm_scratch(w.cols, pool)
        && w.ty.has_blocks()
        && dispatch::table(dispatch::level())
            .and_then(|t| t.mm(w.ty))
            .is_none()
}

/// The destination of the GEMM path, shared by the threads (each writes its own columns).
struct Dst(*mut f32);
// SAFETY: threads write disjoint column ranges of `ys` (their own weight rows), and `ys` stays
// mutably borrowed by `matmul_gemm` until the pool's job is done.
unsafe impl Sync for Dst {}

/// `ys[t] = W xs[t]` (`xs` `[n][cols]`, `ys` `[n][rows]`) through f32 GEMM on dequantized tiles
/// of `W`; `tmp` holds [`gemm_scratch`] values. Call when [`use_gemm`] says so.
pub fn matmul_gemm(w: &MatRef<'_>, xs: &[f32], ys: &mut [f32], tmp: &mut [f32], pool: &Pool) {
    let (cols, rows) = (w.cols, w.rows);
    let n = xs.len() / cols.max(1);
    assert!(ys.len() >= n * rows && tmp.len() >= gemm_scratch(cols, pool));
    let rb = w.row_bytes();
    let threads = pool.threads();
    let per = rows.div_ceil(threads);
    let in_place: Option<&[f32]> = if w.ty == GgmlType::F32 {
        bytemuck::try_cast_slice(w.data).ok()
    } else {
        None
    };
    let dst = Dst(ys.as_mut_ptr());
    let dst = &dst;
    pool.for_chunks_mut(
        &mut tmp[..threads * TILE * cols],
        TILE * cols,
        &|th, scratch| {
            let mut r0 = th * per;
            let end = ((th + 1) * per).min(rows);
            while r0 < end {
                let r = TILE.min(end - r0);
                let tile: &[f32] = match in_place {
                    Some(all) => &all[r0 * cols..(r0 + r) * cols],
                    None => {
                        for k in 0..r {
                            let row = &w.data[(r0 + k) * rb..(r0 + k + 1) * rb];
                            let out = &mut scratch[k * cols..(k + 1) * cols];
                            if cheems_formats::blocks::dequantize_row(w.ty, row, out).is_err() {
                                out.fill(f32::NAN); // unreachable: the type was checked by use_gemm
                            }
                        }
                        &scratch[..r * cols]
                    }
                };
                // SAFETY: dst is `[n][rows]` (asserted above); this thread writes columns r0..r0+r,
                // which no other thread writes; lhs is `[n][cols]` and rhs the tile `[r][cols]` read
                // as a `cols × r` matrix (row stride 1, column stride cols); all within bounds.
                unsafe {
                    gemm::gemm(
                        n,
                        r,
                        cols,
                        dst.0.add(r0),
                        1,
                        rows as isize,
                        false,
                        xs.as_ptr(),
                        1,
                        cols as isize,
                        tile.as_ptr(),
                        cols as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                r0 += r;
            }
        },
    );
}

/// Whether [`matmul_f16`] takes a batch of `n` rows of `w` (F16 weights, a level with an F16
/// tile kernel, `tmp_len` values of scratch).
pub fn use_f16_mm(w: &MatRef<'_>, n: usize, tmp_len: usize) -> bool {
    w.ty == GgmlType::F16
        && n >= GEMM_MIN
        && tmp_len >= n.next_multiple_of(16) * w.cols
        && dispatch::table(dispatch::level()).is_some_and(|t| t.f16_mm.is_some())
}

/// `ys[t] = W xs[t]` for F16 weights: the activations transposed into `tmp` (`[cols][n]`, `n`
/// padded to a multiple of 16: `n.next_multiple_of(16) · cols` values), each task a range of weight rows converted to f32
/// a few rows at a time and multiplied with every group (see the level's F16 kernel).
pub fn matmul_f16(w: &MatRef<'_>, xs: &[f32], ys: &mut [f32], tmp: &mut [f32], pool: &Pool) {
    matmul_f16_at(dispatch::level(), w, xs, ys, tmp, pool);
}

/// [`matmul_f16`] at a given level; a level without the kernel, or mismatched shapes, fill `ys`
/// with NaN.
pub fn matmul_f16_at(
    level: Level,
    w: &MatRef<'_>,
    xs: &[f32],
    ys: &mut [f32],
    tmp: &mut [f32],
    pool: &Pool,
) {
    let (cols, rows) = (w.cols, w.rows);
    let n = xs.len() / cols.max(1);
    let rb = w.row_bytes();
    let groups = n.div_ceil(16);
    let kernel = dispatch::table(level).and_then(|t| t.f16_mm);
    let shapes_ok = w.ty == GgmlType::F16
        && xs.len() == n * cols
        && ys.len() >= n * rows
        && tmp.len() >= groups * 16 * cols
        && rows.checked_mul(rb).is_some_and(|b| b <= w.data.len());
    let (Some(kernel), true) = (kernel, shapes_ok) else {
        ys.fill(f32::NAN);
        return;
    };
    if n == 0 || rows == 0 || cols == 0 {
        ys[..n * rows].fill(0.0);
        return;
    }
    let np = groups * 16;
    let xt = &mut tmp[..np * cols];
    for t in 0..np {
        if t < n {
            for (k, &v) in xs[t * cols..(t + 1) * cols].iter().enumerate() {
                xt[k * np + t] = v;
            }
        } else {
            for k in 0..cols {
                xt[k * np + t] = 0.0;
            }
        }
    }
    let xt = &*xt;
    let chunk = (rows / (4 * pool.threads()))
        .clamp(6, 120)
        .next_multiple_of(6);
    let dst = Dst(ys.as_mut_ptr());
    let dst = &dst;
    pool.run(rows.div_ceil(chunk), &|c| {
        let r0 = c * chunk;
        let nr = chunk.min(rows - r0);
        // SAFETY: the rows `r0..r0 + nr` are whole F16 rows of `cols` values, `xt` holds the
        // groups, and the outputs `t * rows + r0 + r` lie in `ys` (`ys.len() >= n * rows`),
        // written by this task only (its rows); `table` hands out only supported levels.
        unsafe {
            kernel(
                &w.data[r0 * rb..(r0 + nr) * rb],
                rb,
                xt,
                cols,
                n,
                dst.0.add(r0),
                rows,
            )
        };
    });
}

/// Values of `tmp` (f32-sized words) the AMX path needs for `n` activations of `cols` values:
/// the split bf16 activations, `n` padded to 16 and `cols` to 32.
pub fn amx_scratch(n: usize, cols: usize) -> usize {
    n.next_multiple_of(16) * cols.next_multiple_of(32)
}

/// Whether [`matmul_amx`] takes a batch of `n` rows of `w`: F16 or BF16 weights, AMX tiles
/// active ([`dispatch::amx`]), a batch of at least [`GEMM_MIN`] and [`amx_scratch`] values of
/// scratch.
pub fn use_amx(w: &MatRef<'_>, n: usize, tmp_len: usize) -> bool {
    matches!(w.ty, GgmlType::F16 | GgmlType::BF16)
        && n >= GEMM_MIN
        && tmp_len >= amx_scratch(n, w.cols)
        && dispatch::amx()
}

/// `ys[t] = W xs[t]` for F16 or BF16 weights on AMX-BF16 tiles (see the private `x86::amx`
/// module): the activations split into two bf16 halves and packed into `tmp`
/// ([`amx_scratch`] values), each task a range of weight rows packed 32 at a time (F16 weights
/// split exactly into two bf16 halves) and multiplied with every activation. Three bf16
/// products per F16 weight (two per BF16 weight) accumulate in f32: the split loses less than
/// `2⁻¹⁵ Σ|w·x|`, on top of the f32 summation's rounding (measured: at most `2.7e-6 Σ|w·x|`
/// in the tests' shapes). Without AMX ([`dispatch::amx_available`]), or with
/// mismatched shapes, `ys` is filled with NaN.
pub fn matmul_amx(w: &MatRef<'_>, xs: &[f32], ys: &mut [f32], tmp: &mut [f32], pool: &Pool) {
    let (cols, rows) = (w.cols, w.rows);
    let n = xs.len() / cols.max(1);
    let rb = w.row_bytes();
    let shapes_ok = matches!(w.ty, GgmlType::F16 | GgmlType::BF16)
        && xs.len() == n * cols
        && ys.len() >= n * rows
        && tmp.len() >= amx_scratch(n, cols)
        && rows.checked_mul(rb).is_some_and(|b| b <= w.data.len());
    if !shapes_ok || !dispatch::amx_available() {
        ys.fill(f32::NAN);
        return;
    }
    if n == 0 || rows == 0 || cols == 0 {
        ys[..n * rows].fill(0.0);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use crate::x86::amx;
        let block = cols.div_ceil(amx::KT) * 2 * amx::TW;
        let xb: &mut [u32] = bytemuck::cast_slice_mut(&mut tmp[..n.div_ceil(16) * block]);
        pool.for_chunks_mut(xb, block, &|b, dst| {
            let nt = (n - 16 * b).min(16);
            // SAFETY: block `b` holds tokens `16b..16b + nt` of `xs` (`n` rows of `cols`); `dst`
            // is its `block` words; AMX availability implies the AVX-512 level.
            unsafe { amx::pack_tokens(xs.as_ptr().add(16 * b * cols), cols, nt, dst) };
        });
        let xb = &*xb;
        let chunk = (rows / (4 * pool.threads()))
            .clamp(amx::PANEL, 8 * amx::PANEL)
            .next_multiple_of(amx::PANEL);
        let dst = Dst(ys.as_mut_ptr());
        let dst = &dst;
        let f16 = w.ty == GgmlType::F16;
        pool.run(rows.div_ceil(chunk), &|c| {
            let r0 = c * chunk;
            let nr = chunk.min(rows - r0);
            let part = &w.data[r0 * rb..(r0 + nr) * rb];
            // SAFETY: AMX is available (checked above); `part` holds whole rows of `cols`
            // values of `w.ty`, `xb` the packed blocks of the `n` tokens, and the outputs
            // `t * rows + r0 + r` lie in `ys` (`ys.len() >= n * rows`), written by this task
            // only (its rows).
            unsafe {
                let out = dst.0.add(r0);
                if f16 {
                    amx::mm_rows::<true>(part, rb, cols, xb, n, out, rows);
                } else {
                    amx::mm_rows::<false>(part, rb, cols, xb, n, out, rows);
                }
            }
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (tmp, pool);
        ys.fill(f32::NAN);
    }
}

/// `ys[t] = W xs[t]` for the rows of `xs` (`[n][w.cols]` into `[n][w.rows]`) by the path the
/// active level has for the weight type: AMX tiles for F16 and BF16 where the CPU has them
/// ([`matmul_amx`]), the F16 tile kernel ([`matmul_f16`]), the
/// dequantize-and-GEMM path ([`matmul_gemm`]), else [`matmul`] with `acts` converted here.
/// `tmp` is the scratch of the first two (a path whose scratch does not fit is skipped).
pub fn matmul_auto(
    w: &MatRef<'_>,
    xs: &[f32],
    ys: &mut [f32],
    acts: &mut Activations,
    tmp: &mut [f32],
    pool: &Pool,
) {
    let n = xs.len() / w.cols.max(1);
    if use_amx(w, n, tmp.len()) {
        matmul_amx(w, xs, ys, tmp, pool);
    } else if use_f16_mm(w, n, tmp.len()) {
        matmul_f16(w, xs, ys, tmp, pool);
    } else if use_gemm(w, n, tmp.len(), pool) {
        matmul_gemm(w, xs, ys, tmp, pool);
    } else {
        acts.quantize_for(w.ty, xs, w.cols);
        matmul(w, acts, xs, ys, pool);
    }
}

/// `ys[t] = W xs[t]` for the `n` rows of `xs` (`[n][cols]`) into `ys` (`[n][rows]`) with integer
/// dot products: `acts` must hold `xs` converted for `w.ty`. Each task takes a range of weight
/// rows (small enough to stay in cache) and runs it against every activation, four at a time,
/// with the level's tile kernel (Q4_0, Q8_0 on AVX-512 VNNI) or else its row kernels one
/// activation at a time (bit for bit what one matvec per row gives).
pub fn matmul(w: &MatRef<'_>, acts: &Activations, xs: &[f32], ys: &mut [f32], pool: &Pool) {
    matmul_at(dispatch::level(), w, acts, xs, ys, pool);
}

/// [`matmul`] at a given kernel level. A level this CPU lacks, an unsupported type or
/// mismatched shapes fill `ys` with NaN.
pub fn matmul_at(
    level: Level,
    w: &MatRef<'_>,
    acts: &Activations,
    xs: &[f32],
    ys: &mut [f32],
    pool: &Pool,
) {
    let (n, cols, rows) = (acts.n, w.cols, w.rows);
    let rb = w.row_bytes();
    let table = dispatch::table(level);
    let kernel = table.and_then(|t| t.get(w.ty));
    let mm = table.and_then(|t| t.mm(w.ty));
    let shapes_ok = xs.len() == n * cols
        && ys.len() >= n * rows
        && w.ty.row_bytes(cols).is_some()
        && rows.checked_mul(rb).is_some_and(|b| b <= w.data.len())
        && (0..n).all(|t| {
            acts.rows[t]
                .view(w.ty, cols, &xs[t * cols..(t + 1) * cols])
                .is_some()
        });
    let (Some(kernel), true) = (kernel, shapes_ok) else {
        debug_assert!(
            !level.is_supported() || kernel.is_none(),
            "matmul: {rows}x{cols} {} with {n} activations: mismatch",
            w.ty
        );
        ys.fill(f32::NAN);
        return;
    };
    if n == 0 || rows == 0 {
        return;
    }
    if cols == 0 {
        ys[..n * rows].fill(0.0);
        return;
    }
    // Rows per task: for the row kernels about 24 KiB of weights (L1-resident while every
    // activation passes), for the tile kernels (which repack 16 rows at a time) enough tasks to
    // balance the threads; a multiple of 16.
    let chunk = match mm {
        Some(_) => (rows / (4 * pool.threads())).clamp(16, 128),
        None => (24 * 1024 / rb.max(1)).clamp(4, 256),
    }
    .next_multiple_of(16);
    let dst = Dst(ys.as_mut_ptr());
    let dst = &dst;
    let view = |t: usize| acts.rows[t].view(w.ty, cols, &xs[t * cols..(t + 1) * cols]);
    pool.run(rows.div_ceil(chunk), &|c| {
        let r0 = c * chunk;
        let nr = chunk.min(rows - r0);
        let bytes = &w.data[r0 * rb..(r0 + nr) * rb];
        let mut t0 = 0;
        while t0 < n {
            let tn = MM_GROUP.min(n - t0);
            // Every view was checked above; `None` is unreachable.
            let Some(v0) = view(t0) else { return };
            let mut views = [v0; MM_GROUP];
            for (k, v) in views.iter_mut().enumerate().take(tn).skip(1) {
                *v = view(t0 + k).unwrap_or(v0);
            }
            match mm {
                // SAFETY: `bytes` holds `nr` rows of `cols` values of `w.ty`, the views were
                // prepared for them, `table` hands out only supported levels, and the outputs
                // `(t0 + t) * rows + r0 + r` lie in `ys` (`ys.len() >= n * rows`), written by
                // this task only (its rows).
                Some(mm) => unsafe { mm(bytes, rb, &views[..tn], dst.0.add(t0 * rows + r0), rows) },
                None => {
                    for (t, v) in views.iter().enumerate().take(tn) {
                        // SAFETY: as above; the output row segment `r0..r0 + nr` of token
                        // `t0 + t` is this task's alone.
                        unsafe {
                            let out =
                                std::slice::from_raw_parts_mut(dst.0.add((t0 + t) * rows + r0), nr);
                            kernel(bytes, rb, v, out);
                        }
                    }
                }
            }
            t0 += tn;
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cheems_formats::blocks::quantize_row;

    /// Σ|x·w|, the scale a product's rounding error is measured against.
    fn abs_dot(x: &[f32], w: &[f32]) -> f32 {
        x.iter().zip(w).map(|(a, b)| (a * b).abs()).sum()
    }

    /// Activations (`nx` values) and weights (`nw`) in [-0.5, 0.5) from a seeded LCG.
    fn random_inputs(seed: u64, nx: usize, nw: usize) -> (Vec<f32>, Vec<f32>) {
        let mut s = seed;
        let mut rnd = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let xs = (0..nx).map(|_| rnd()).collect();
        let ws = (0..nw).map(|_| rnd()).collect();
        (xs, ws)
    }

    /// The rows of `data` (`ty`, `cols` values each) dequantized by the scalar reference.
    fn dequantize_rows(ty: GgmlType, data: &[u8], cols: usize) -> Vec<f32> {
        let rb = ty.row_bytes(cols).unwrap();
        let mut deq = vec![0f32; data.len() / rb * cols];
        for (src, dst) in data.chunks_exact(rb).zip(deq.chunks_exact_mut(cols)) {
            cheems_formats::blocks::dequantize_row(ty, src, dst).unwrap();
        }
        deq
    }

    /// `x · w` in f64 and `Σ|x·w|` (f32 products), the scale of its rounding error.
    fn dot_f64(x: &[f32], w: &[f32]) -> (f64, f64) {
        let dot = x
            .iter()
            .zip(w)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        let mag = x.iter().zip(w).map(|(a, b)| f64::from((a * b).abs())).sum();
        (dot, mag)
    }

    /// The rows of `wf` (`cols` values each) quantized to `ty`.
    fn quantize_rows(ty: GgmlType, wf: &[f32], cols: usize) -> Vec<u8> {
        let rb = ty.row_bytes(cols).unwrap();
        let mut data = vec![0u8; wf.len() / cols * rb];
        for (w, dst) in wf.chunks_exact(cols).zip(data.chunks_exact_mut(rb)) {
            quantize_row(ty, w, dst).unwrap();
        }
        data
    }

    /// The batched product at every level: bit for bit one matvec per row where the level runs
    /// row kernels, within rounding of the scalar twins where it has a tile kernel; row counts
    /// off the tiles, odd block counts, 1 to 9 activations and one batch over [`MM_GROUP`].
    #[test]
    fn matmul_matches_matvec_per_row_at_every_level() {
        let pool = Pool::new(2).unwrap();
        for (rows, cols) in [(70, 256), (3, 96), (9, 32), (20, 800), (17, 2080)] {
            // One shape also with more activations than a tile kernel takes at a time.
            let ns: &[usize] = if rows == 70 {
                &[1, 2, 3, 4, 5, 9, MM_GROUP + 3]
            } else {
                &[1, 2, 3, 4, 5, 9]
            };
            for &n in ns {
                let (xs, wf) = random_inputs((rows * 31 + n) as u64, n * cols, rows * cols);
                for ty in [
                    GgmlType::F32,
                    GgmlType::F16,
                    GgmlType::Q8_0,
                    GgmlType::Q4_0,
                    GgmlType::Q5_0,
                ] {
                    let data = quantize_rows(ty, &wf, cols);
                    let w = MatRef {
                        ty,
                        rows,
                        cols,
                        data: &data,
                    };
                    for level in crate::dispatch::available_levels() {
                        let mut acts = Activations::with_capacity(n, cols);
                        let mut act = Activation::with_capacity(cols);
                        for (a, x) in acts.rows.iter_mut().zip(xs.chunks_exact(cols)) {
                            a.quantize_for_at(level, ty, x);
                        }
                        acts.n = n;
                        let mut ys = vec![0f32; n * rows];
                        matmul_at(level, &w, &acts, &xs, &mut ys, &pool);
                        let tiled = crate::dispatch::table(level)
                            .and_then(|t| t.mm(ty))
                            .is_some();
                        for t in 0..n {
                            let x = &xs[t * cols..(t + 1) * cols];
                            act.quantize_for_at(level, ty, x);
                            let mut y = vec![0f32; rows];
                            let lv = if tiled { Level::Scalar } else { level };
                            crate::matvec::matvec_at(lv, &w, &act, x, &mut y, &pool);
                            let got = &ys[t * rows..(t + 1) * rows];
                            if !tiled {
                                assert_eq!(got, y.as_slice(), "{level} {ty} {rows}x{cols} row {t}");
                                continue;
                            }
                            for r in 0..rows {
                                let mag = abs_dot(x, &wf[r * cols..(r + 1) * cols]);
                                assert!(
                                    (got[r] - y[r]).abs() <= 1e-5 * mag.max(1.0),
                                    "{level} {ty} {rows}x{cols} n {n} token {t} row {r}: {} vs {}",
                                    got[r],
                                    y[r]
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The F16 kernel against the scalar row dots, at every level that has it; row counts off
    /// the register blocks (every remainder of 6 rows), batches off the groups of 16, rows longer
    /// than a segment.
    #[test]
    fn f16_tiles_match_the_scalar_dots() {
        let pool = Pool::new(2).unwrap();
        for (rows, cols, n) in [
            (13, 64, 8),
            (70, 256, 17),
            (7, 1040, 33),
            (12, 16, 16),
            (17, 64, 20),
            (9, 48, 5),
            (8, 32, 40),
            // Tasks of 60 rows, more than 128 activations.
            (480, 80, 140),
        ] {
            let (xs, wf) = random_inputs((rows * 7 + n) as u64, n * cols, rows * cols);
            let data = quantize_rows(GgmlType::F16, &wf, cols);
            let w = MatRef {
                ty: GgmlType::F16,
                rows,
                cols,
                data: &data,
            };
            for level in crate::dispatch::available_levels() {
                if crate::dispatch::table(level).is_none_or(|t| t.f16_mm.is_none()) {
                    continue;
                }
                let mut ys = vec![0f32; n * rows];
                let mut tmp = vec![0f32; n.next_multiple_of(16) * cols];
                matmul_f16_at(level, &w, &xs, &mut ys, &mut tmp, &pool);
                let act = Activation::with_capacity(cols);
                for t in 0..n {
                    let x = &xs[t * cols..(t + 1) * cols];
                    let mut y = vec![0f32; rows];
                    crate::matvec::matvec_at(Level::Scalar, &w, &act, x, &mut y, &pool);
                    for r in 0..rows {
                        let mag = abs_dot(x, &wf[r * cols..(r + 1) * cols]);
                        let got = ys[t * rows + r];
                        assert!(
                            (got - y[r]).abs() <= 1e-5 * mag.max(1.0),
                            "{level} {rows}x{cols} n {n} token {t} row {r}: {got} vs {}",
                            y[r]
                        );
                    }
                }
            }
        }
    }

    /// The AMX path against an f64 product with the weights as stored (F16, BF16), when this
    /// machine has AMX-BF16 (else it says so and checks only the NaN contract): row counts off
    /// the 16-row tiles and 32-row panels, columns off the 32-column tiles (odd too), token
    /// counts off the 16-token blocks and odd block counts, rows longer than a packed segment
    /// (1024 columns, the later segments adding to the output). The bound is the one
    /// [`matmul_amx`] documents, tightened to `1e-5 Σ|w·x|` (bf16 alone would be ~`4e-3`).
    #[test]
    fn amx_tiles_match_the_f64_product() {
        let pool = Pool::new(2).unwrap();
        if !crate::dispatch::amx_available() {
            eprintln!(
                "amx_tiles_match_the_f64_product: AMX-BF16 unavailable (CPU, OS or CHEEMS_AMX=0), \
                 skipped"
            );
            let w = MatRef {
                ty: GgmlType::F16,
                rows: 2,
                cols: 32,
                data: &[0u8; 128],
            };
            let mut ys = vec![0f32; 2 * 8];
            matmul_amx(&w, &[0.0; 8 * 32], &mut ys, &mut vec![0.0; 16 * 32], &pool);
            assert!(ys.iter().all(|v| v.is_nan()));
            return;
        }
        let mut worst = 0f64;
        for (rows, cols, n) in [
            (13, 64, 8),
            (70, 256, 17),
            (33, 1040, 33),
            (12, 16, 16),
            (17, 50, 20),
            (9, 47, 5),
            (32, 32, 40),
            (480, 80, 140),
            (40, 2300, 48),
            (100, 768, 128),
        ] {
            let (xs, wf) = random_inputs((rows * 5 + n) as u64, n * cols, rows * cols);
            for ty in [GgmlType::F16, GgmlType::BF16] {
                let data = quantize_rows(ty, &wf, cols);
                let deq = dequantize_rows(ty, &data, cols);
                let w = MatRef {
                    ty,
                    rows,
                    cols,
                    data: &data,
                };
                let mut ys = vec![f32::NAN; n * rows];
                let mut tmp = vec![f32::NAN; amx_scratch(n, cols)];
                matmul_amx(&w, &xs, &mut ys, &mut tmp, &pool);
                for t in 0..n {
                    let x = &xs[t * cols..(t + 1) * cols];
                    for r in 0..rows {
                        let wr = &deq[r * cols..(r + 1) * cols];
                        let (want, mag) = dot_f64(x, wr);
                        let got = f64::from(ys[t * rows + r]);
                        let err = (got - want).abs() / mag.max(1e-30);
                        worst = worst.max(err);
                        assert!(
                            err <= 1e-5,
                            "{ty} {rows}x{cols} n {n} token {t} row {r}: {got} vs {want}"
                        );
                    }
                }
            }
        }
        eprintln!("amx_tiles_match_the_f64_product: worst error {worst:.2e} of Σ|w·x|");
    }

    /// The GEMM path against a plain f64 product with the weights dequantized by the scalar
    /// reference, for every weight type, with row counts that split unevenly across threads
    /// and tiles.
    #[test]
    fn gemm_path_equals_the_dequantized_product() {
        let pool = Pool::new(2).unwrap();
        let (rows, cols, n) = (3 * TILE + 5, 256, GEMM_MIN + 3);
        let (xs, wf) = random_inputs(7, n * cols, rows * cols);
        for ty in [
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
            let data = quantize_rows(ty, &wf, cols);
            let deq = dequantize_rows(ty, &data, cols);
            let w = MatRef {
                ty,
                rows,
                cols,
                data: &data,
            };
            let mut ys = vec![0f32; n * rows];
            let mut tmp = vec![0f32; gemm_scratch(cols, &pool)];
            matmul_gemm(&w, &xs, &mut ys, &mut tmp, &pool);
            for t in 0..n {
                for r in 0..rows {
                    let x = &xs[t * cols..(t + 1) * cols];
                    let wr = &deq[r * cols..(r + 1) * cols];
                    let (want, mag) = dot_f64(x, wr);
                    let got = f64::from(ys[t * rows + r]);
                    assert!(
                        (got - want).abs() <= 1e-5 * mag.max(1.0),
                        "{ty} token {t} row {r}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
