//! The ggml block layouts and their scalar reference quantizers and dequantizers.
//!
//! Block structs ([`BlockQ4_0`] ... [`BlockQ8K`]) are `#[repr(C)]` and `Pod`, byte for byte as
//! ggml's `ggml-common.h`, so tensor data can be borrowed as typed slices. The functions here are
//! ports of ggml's `quantize_row_*_ref` and `dequantize_row_*` that keep ggml's float operation
//! order: for every finite input they produce the same bytes and bit-identical floats, which
//! `formats/tests/blocks_vectors.rs` checks against vectors made by `gguf-py` and by ggml's own C.
//! They are the spec that fast kernels (in `cheems-kernels`) are tested against; nothing here is
//! SIMD or multi-threaded, and nothing here does the imatrix-weighted quantization of
//! `llama-quantize`.
//!
//! Entry points: [`quantize_row`] and [`dequantize_row`] dispatch on a [`GgmlType`] over byte
//! slices and validate lengths; the typed per-type functions (`quantize_row_q4_0(&[f32],
//! &mut [BlockQ4_0])`, ...) trust their caller (`debug_assert!` only). [`vec_dot_type`] names each
//! weight type's activation partner.
//!
//! # Round-trip error
//!
//! `|dequantize(quantize(x)) - x|`, per value, relative to `amax`, the largest `|x|` of the block
//! (of the 256-value super-block for k-quants). The bounds hold while the f16 scales are normal
//! numbers: for blocks with `amax` from `1e-3` (`Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`) or `1e-2` (the
//! others) up to `6e4`. Smaller blocks get f16-subnormal scales and lose precision, larger ones
//! overflow the f16 scale or min to infinity, exactly as in ggml (`Q8_K`'s f32 scale has neither
//! limit). The legacy bounds are worst cases derived from the formulas: half a quantization step,
//! or a whole step for the one value of the symmetric types that lies opposite `max` and clips to
//! the top level, plus the f16 rounding of `d` and `m`. The k-quant bounds are measured on random
//! normal, uniform, one-signed, heavy-tailed, sparse and mixed-scale data, with a margin: their
//! scale search has no simple worst case. `tests.rs` checks every bound on such data.
//!
//! | type | bits/weight | bound | why |
//! | --- | --- | --- | --- |
//! | `F32` | 32 | 0 | identity |
//! | `F16` | 16 | `2^-11` relative to the value | round to nearest even (f16 normal range) |
//! | `BF16` | 16 | `2^-8` relative to the value | round to nearest even |
//! | `Q8_K` | 9.1 | `amax / 250` | step `amax/127`, f32 `d` |
//! | `Q8_0`, `Q8_1` | 8.5, 9 | `amax / 220` | step `amax/127`, plus f16 `d` |
//! | `Q6_K` | 6.56 | `amax / 32` | measured (worst seen `amax / 40`) |
//! | `Q5_1` | 6 | `amax / 29.5` | step `(max - min)/31 <= 2·amax/31`, plus f16 `d`, `m` |
//! | `Q5_K` | 5.5 | `amax / 15` | measured (worst seen `amax / 17.6`) |
//! | `Q5_0` | 5.5 | `amax / 15.8` | step `amax/16`; the value opposite `max` clips by a step |
//! | `Q4_1` | 5 | `amax / 14.5` | step `(max - min)/15 <= 2·amax/15`, plus f16 `d`, `m` |
//! | `Q4_K` | 4.5 | `amax / 8` | measured (worst seen `amax / 10`) |
//! | `Q4_0` | 4.5 | `amax / 7.9` | step `amax/8`; the value opposite `max` clips by a step |
//!
//! # Deviations from ggml
//!
//! - NaN or infinite inputs: C's float-to-integer conversion is undefined there and ggml's
//!   bytes are whatever the compiler made; Rust's `as` saturates. Finite inputs match exactly.
//! - `Q8_K` of an all-zero block: ggml leaves `bsums` as they were in the output buffer; here
//!   they are zeroed.
//! - `Q8_1` dequantization: ggml has none (it only declares `dequantize_row_q8_1`); here it is
//!   `d * q`, ignoring `s`, as for `Q8_0`. (`Q8_K`'s is ggml's `dequantize_row_q8_K`.)

mod float;
mod kquants;
mod layout;
mod legacy;

#[cfg(test)]
mod tests;

pub use float::{
    bf16_to_fp32, dequantize_row_bf16, dequantize_row_f16, dequantize_row_f32, fp16_to_fp32,
    fp32_to_bf16, fp32_to_fp16, quantize_row_bf16, quantize_row_f16, quantize_row_f32,
};
pub use kquants::{
    dequantize_row_q4_k, dequantize_row_q5_k, dequantize_row_q6_k, dequantize_row_q8_k,
    get_scale_min_k4, quantize_row_q4_k, quantize_row_q5_k, quantize_row_q6_k, quantize_row_q8_k,
};
pub use layout::{
    BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_0,
    BlockQ8_1, K_SCALE_SIZE, QK4_0, QK4_1, QK5_0, QK5_1, QK8_0, QK8_1, QK_K,
};
pub use legacy::{
    dequantize_row_q4_0, dequantize_row_q4_1, dequantize_row_q5_0, dequantize_row_q5_1,
    dequantize_row_q8_0, dequantize_row_q8_1, quantize_row_q4_0, quantize_row_q4_1,
    quantize_row_q5_0, quantize_row_q5_1, quantize_row_q8_0, quantize_row_q8_1,
};

use crate::bail_invalid;
use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use bytemuck::Pod;

/// The type ggml quantizes activations to before a dot product with weights of type `ty`
/// (ggml-cpu's `type_traits_cpu[ty].vec_dot_type`): `Q4_0`/`Q5_0`/`Q8_0` → `Q8_0`,
/// `Q4_1`/`Q5_1`/`Q8_1` → `Q8_1`, k-quants → `Q8_K`, float types → themselves.
///
/// Types without blocks in cheems get ggml's partner too (`IQ4_NL`/`MXFP4` → `Q8_0`, the other
/// 256-value types → `Q8_K`). Where ggml's table has no entry (`Q8_K` itself, the integer
/// types, `F64`) it reads as `F32`, and so does this.
pub fn vec_dot_type(ty: GgmlType) -> GgmlType {
    use GgmlType as T;
    match ty {
        T::F32 => T::F32,
        T::F16 => T::F16,
        T::BF16 => T::BF16,
        T::Q4_0 | T::Q5_0 | T::Q8_0 | T::IQ4_NL | T::MXFP4 => T::Q8_0,
        T::Q4_1 | T::Q5_1 | T::Q8_1 => T::Q8_1,
        T::Q2_K
        | T::Q3_K
        | T::Q4_K
        | T::Q5_K
        | T::Q6_K
        | T::IQ2_XXS
        | T::IQ2_XS
        | T::IQ3_XXS
        | T::IQ1_S
        | T::IQ3_S
        | T::IQ2_S
        | T::IQ4_XS
        | T::IQ1_M
        | T::TQ1_0
        | T::TQ2_0 => T::Q8_K,
        T::Q8_K | T::I8 | T::I16 | T::I32 | T::I64 | T::F64 => T::F32,
    }
}

/// Quantizes `src` (a whole number of `ty` blocks) into `dst`, which must hold exactly
/// `ty.row_bytes(src.len())` bytes. `dst` may have any alignment.
///
/// ```
/// use cheems_formats::{blocks, GgmlType};
/// # fn main() -> cheems_formats::Result<()> {
/// let x: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) / 8.0).collect();
/// let mut q = vec![0u8; 2 * 34]; // two Q8_0 blocks
/// blocks::quantize_row(GgmlType::Q8_0, &x, &mut q)?;
/// let mut y = vec![0.0f32; 64];
/// blocks::dequantize_row(GgmlType::Q8_0, &q, &mut y)?;
/// assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() <= 4.0 / 220.0));
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// [`Error::Unsupported`] for types without blocks in cheems ([`GgmlType::has_blocks`]);
/// [`Error::Invalid`] when `src` is not a whole number of blocks or `dst` has the wrong length.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    check_supported(ty)?;
    let Some(expected) = ty.row_bytes(src.len()) else {
        bail_invalid!(
            "quantize {}: {} values is not a whole number of {}-value blocks",
            ty,
            src.len(),
            ty.block_size()
        );
    };
    if dst.len() != expected {
        bail_invalid!(
            "quantize {}: {} values need {} bytes, destination holds {}",
            ty,
            src.len(),
            expected,
            dst.len()
        );
    }
    use GgmlType as T;
    match ty {
        T::F32 => quantize_into(src, dst, 1, quantize_row_f32),
        T::F16 => quantize_into(src, dst, 1, quantize_row_f16),
        T::BF16 => quantize_into(src, dst, 1, quantize_row_bf16),
        T::Q4_0 => quantize_into(src, dst, QK4_0, quantize_row_q4_0),
        T::Q4_1 => quantize_into(src, dst, QK4_1, quantize_row_q4_1),
        T::Q5_0 => quantize_into(src, dst, QK5_0, quantize_row_q5_0),
        T::Q5_1 => quantize_into(src, dst, QK5_1, quantize_row_q5_1),
        T::Q8_0 => quantize_into(src, dst, QK8_0, quantize_row_q8_0),
        T::Q8_1 => quantize_into(src, dst, QK8_1, quantize_row_q8_1),
        T::Q4_K => quantize_into(src, dst, QK_K, quantize_row_q4_k),
        T::Q5_K => quantize_into(src, dst, QK_K, quantize_row_q5_k),
        T::Q6_K => quantize_into(src, dst, QK_K, quantize_row_q6_k),
        T::Q8_K => quantize_into(src, dst, QK_K, quantize_row_q8_k),
        _ => return Err(unsupported(ty)),
    }
    Ok(())
}

/// Dequantizes `src` (a whole number of `ty` blocks, any alignment) into `dst`, which must hold
/// exactly the number of values those blocks encode.
///
/// # Errors
/// [`Error::Unsupported`] for types without blocks in cheems; [`Error::Invalid`] when `src` is
/// not a whole number of blocks or `dst` has the wrong length.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    check_supported(ty)?;
    let type_size = ty.type_size();
    if !src.len().is_multiple_of(type_size) {
        bail_invalid!(
            "dequantize {}: {} bytes is not a whole number of {}-byte blocks",
            ty,
            src.len(),
            type_size
        );
    }
    let expected = (src.len() / type_size).checked_mul(ty.block_size());
    if expected != Some(dst.len()) {
        bail_invalid!(
            "dequantize {}: {} bytes hold {} values, destination holds {}",
            ty,
            src.len(),
            expected.map_or_else(|| "too many".to_string(), |n| n.to_string()),
            dst.len()
        );
    }
    use GgmlType as T;
    match ty {
        T::F32 => dequantize_from(src, dst, 1, dequantize_row_f32),
        T::F16 => dequantize_from(src, dst, 1, dequantize_row_f16),
        T::BF16 => dequantize_from(src, dst, 1, dequantize_row_bf16),
        T::Q4_0 => dequantize_from(src, dst, QK4_0, dequantize_row_q4_0),
        T::Q4_1 => dequantize_from(src, dst, QK4_1, dequantize_row_q4_1),
        T::Q5_0 => dequantize_from(src, dst, QK5_0, dequantize_row_q5_0),
        T::Q5_1 => dequantize_from(src, dst, QK5_1, dequantize_row_q5_1),
        T::Q8_0 => dequantize_from(src, dst, QK8_0, dequantize_row_q8_0),
        T::Q8_1 => dequantize_from(src, dst, QK8_1, dequantize_row_q8_1),
        T::Q4_K => dequantize_from(src, dst, QK_K, dequantize_row_q4_k),
        T::Q5_K => dequantize_from(src, dst, QK_K, dequantize_row_q5_k),
        T::Q6_K => dequantize_from(src, dst, QK_K, dequantize_row_q6_k),
        T::Q8_K => dequantize_from(src, dst, QK_K, dequantize_row_q8_k),
        _ => return Err(unsupported(ty)),
    }
    Ok(())
}

fn unsupported(ty: GgmlType) -> Error {
    Error::Unsupported(format!("{ty}: cheems has no block layout for this type"))
}

fn check_supported(ty: GgmlType) -> Result<()> {
    if ty.has_blocks() {
        Ok(())
    } else {
        Err(unsupported(ty))
    }
}

/// Runs a typed quantizer over a byte destination of validated length: in place when `dst` is
/// aligned for `B`, else block by block through a stack copy.
fn quantize_into<B: Pod>(src: &[f32], dst: &mut [u8], qk: usize, f: fn(&[f32], &mut [B])) {
    match bytemuck::try_cast_slice_mut::<u8, B>(dst) {
        Ok(blocks) => f(src, blocks),
        Err(_) => {
            let mut block = [B::zeroed()];
            for (x, out) in src
                .chunks_exact(qk)
                .zip(dst.chunks_exact_mut(size_of::<B>()))
            {
                f(x, &mut block);
                out.copy_from_slice(bytemuck::bytes_of(&block[0]));
            }
        }
    }
}

/// Runs a typed dequantizer over a byte source of validated length: in place when `src` is
/// aligned for `B`, else block by block through an unaligned read.
fn dequantize_from<B: Pod>(src: &[u8], dst: &mut [f32], qk: usize, f: fn(&[B], &mut [f32])) {
    match bytemuck::try_cast_slice::<u8, B>(src) {
        Ok(blocks) => f(blocks, dst),
        Err(_) => {
            for (bytes, y) in src
                .chunks_exact(size_of::<B>())
                .zip(dst.chunks_exact_mut(qk))
            {
                let block: B = bytemuck::pod_read_unaligned(bytes);
                f(std::slice::from_ref(&block), y);
            }
        }
    }
}
