//! The plain float "blocks": f32, f16 and bf16 rows, converted exactly as ggml's reference row
//! converters (`ggml_fp32_to_fp16_row`, `ggml_fp32_to_bf16_row_ref` and their inverses) do.
//!
//! Also the two scalar conversions every quantizer uses for its f16 scales. Nothing here is
//! SIMD; the kernels crate owns fast conversions.

use half::{bf16, f16};

/// f32 to f16 as ggml's `GGML_FP32_TO_FP16`: round to nearest even (with subnormals and
/// overflow to infinity); every NaN becomes the quiet NaN `0x7e00` with the input's sign.
#[inline]
pub fn fp32_to_fp16(x: f32) -> f16 {
    if x.is_nan() {
        let sign = ((x.to_bits() >> 16) & 0x8000) as u16;
        return f16::from_bits(sign | 0x7e00);
    }
    f16::from_f32(x)
}

/// f16 to f32 as ggml's `GGML_FP16_TO_FP32`: exact for every finite value and infinity; a NaN
/// keeps its payload and comes back quiet.
#[inline]
pub fn fp16_to_fp32(h: f16) -> f32 {
    h.to_f32()
}

/// f32 to bf16 as ggml's `ggml_compute_fp32_to_bf16`: round to nearest even on the top 16 bits;
/// a NaN is truncated and forced quiet (`(u >> 16) | 64`).
#[inline]
pub fn fp32_to_bf16(x: f32) -> bf16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return bf16::from_bits(((u >> 16) | 64) as u16);
    }
    // No overflow: the largest non-NaN pattern is 0xff80_0000.
    bf16::from_bits((u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16)
}

/// bf16 to f32: the bf16 bits become the top half of the f32 (exact, NaN payloads kept).
#[inline]
pub fn bf16_to_fp32(h: bf16) -> f32 {
    f32::from_bits(u32::from(h.to_bits()) << 16)
}

/// Copies an f32 row (ggml's `F32` "quantization" is the identity).
pub fn quantize_row_f32(src: &[f32], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len());
    dst.copy_from_slice(src);
}

/// Copies an f32 row back.
pub fn dequantize_row_f32(src: &[f32], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len());
    dst.copy_from_slice(src);
}

/// f32 row to f16, value by value with [`fp32_to_fp16`].
pub fn quantize_row_f16(src: &[f32], dst: &mut [f16]) {
    debug_assert_eq!(src.len(), dst.len());
    for (y, &x) in dst.iter_mut().zip(src) {
        *y = fp32_to_fp16(x);
    }
}

/// f16 row to f32, value by value with [`fp16_to_fp32`].
pub fn dequantize_row_f16(src: &[f16], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len());
    for (y, &x) in dst.iter_mut().zip(src) {
        *y = fp16_to_fp32(x);
    }
}

/// f32 row to bf16, value by value with [`fp32_to_bf16`].
pub fn quantize_row_bf16(src: &[f32], dst: &mut [bf16]) {
    debug_assert_eq!(src.len(), dst.len());
    for (y, &x) in dst.iter_mut().zip(src) {
        *y = fp32_to_bf16(x);
    }
}

/// bf16 row to f32, value by value with [`bf16_to_fp32`].
pub fn dequantize_row_bf16(src: &[bf16], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len());
    for (y, &x) in dst.iter_mut().zip(src) {
        *y = bf16_to_fp32(x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's `ggml_compute_fp32_to_fp16`, ported bit for bit, as the oracle for `fp32_to_fp16`.
    fn ggml_fp32_to_fp16(f: f32) -> u16 {
        let scale_to_inf = f32::from_bits(0x7780_0000); // 0x1.0p+112f
        let scale_to_zero = f32::from_bits(0x0880_0000); // 0x1.0p-110f
        let mut base = (f.abs() * scale_to_inf) * scale_to_zero;
        let w = f.to_bits();
        let shl1_w = w.wrapping_add(w);
        let sign = w & 0x8000_0000;
        let mut bias = shl1_w & 0xff00_0000;
        if bias < 0x7100_0000 {
            bias = 0x7100_0000;
        }
        base += f32::from_bits((bias >> 1) + 0x0780_0000);
        let bits = base.to_bits();
        let exp_bits = (bits >> 13) & 0x0000_7c00;
        let mantissa_bits = bits & 0x0000_0fff;
        let nonsign = exp_bits + mantissa_bits;
        ((sign >> 16)
            | if shl1_w > 0xff00_0000 {
                0x7e00
            } else {
                nonsign
            }) as u16
    }

    /// ggml's `ggml_compute_fp16_to_fp32`, ported bit for bit.
    fn ggml_fp16_to_fp32(h: u16) -> u32 {
        let w = u32::from(h) << 16;
        let sign = w & 0x8000_0000;
        let two_w = w.wrapping_add(w);
        let exp_offset = 0xe0u32 << 23;
        let exp_scale = f32::from_bits(0x0780_0000); // 0x1.0p-112f
        let normalized = f32::from_bits((two_w >> 4) + exp_offset) * exp_scale;
        let magic_mask = 126u32 << 23;
        let denormalized = f32::from_bits((two_w >> 17) | magic_mask) - 0.5;
        let cutoff = 1u32 << 27;
        sign | if two_w < cutoff {
            denormalized.to_bits()
        } else {
            normalized.to_bits()
        }
    }

    #[test]
    fn fp16_matches_ggml_bit_trick() {
        // Every 251st f32 pattern: 17 million values over all exponents and both signs.
        let mut u: u32 = 0;
        loop {
            let f = f32::from_bits(u);
            assert_eq!(
                fp32_to_fp16(f).to_bits(),
                ggml_fp32_to_fp16(f),
                "f32 bits {u:#010x}"
            );
            match u.checked_add(251) {
                Some(n) => u = n,
                None => break,
            }
        }
        // Exact ties: halfway between two f16 values, for every f16 mantissa at a few exponents.
        for e in [103u32, 110, 113, 120, 127, 140, 142] {
            for m in 0..1024u32 {
                let u = (e << 23) | (m << 13) | 0x1000;
                for bits in [u, u | 0x8000_0000] {
                    let f = f32::from_bits(bits);
                    assert_eq!(fp32_to_fp16(f).to_bits(), ggml_fp32_to_fp16(f), "{bits:#x}");
                }
            }
        }
        for h in 0..=u16::MAX {
            let ours = fp16_to_fp32(f16::from_bits(h)).to_bits();
            assert_eq!(ours, ggml_fp16_to_fp32(h), "f16 bits {h:#06x}");
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_quiets_nan() {
        assert_eq!(fp32_to_bf16(1.0).to_bits(), 0x3f80);
        // Ties: 0x3f80_8000 is halfway, even stays, odd goes up.
        assert_eq!(fp32_to_bf16(f32::from_bits(0x3f80_8000)).to_bits(), 0x3f80);
        assert_eq!(fp32_to_bf16(f32::from_bits(0x3f81_8000)).to_bits(), 0x3f82);
        assert_eq!(fp32_to_bf16(f32::from_bits(0x3f80_8001)).to_bits(), 0x3f81);
        assert_eq!(fp32_to_bf16(f32::MAX).to_bits(), 0x7f80);
        assert_eq!(fp32_to_bf16(f32::from_bits(0x7f80_0001)).to_bits(), 0x7fc0);
        assert_eq!(fp32_to_bf16(f32::from_bits(0xffc1_2345)).to_bits(), 0xffc1);
        assert_eq!(bf16_to_fp32(bf16::from_bits(0xc040)), -3.0);
        // Cross-check with half's own conversion on non-NaN values.
        let mut u: u32 = 7;
        while let Some(n) = u.checked_add(65_537) {
            let f = f32::from_bits(u);
            if !f.is_nan() {
                assert_eq!(fp32_to_bf16(f), bf16::from_f32(f), "{u:#x}");
            }
            u = n;
        }
    }
}
