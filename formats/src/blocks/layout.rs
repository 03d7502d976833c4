//! The block structs, field for field as ggml's `ggml-common.h` lays them out.
//!
//! Every struct is `#[repr(C)]`, `Pod` and has a compile-time size assert, checked again against
//! [`GgmlType::type_size`] in the tests. All fields are at even offsets and no struct has padding
//! (the `Pod` derive refuses padding), so the bytes of a `&[BlockQ4_0]` are exactly the bytes of a
//! ggml `q4_0` tensor. Only the quantize/dequantize code lives elsewhere.
//!
//! [`GgmlType::type_size`]: crate::ggml_type::GgmlType::type_size

use bytemuck::{Pod, Zeroable};
use half::f16;

/// Values in one `Q4_0` block.
pub const QK4_0: usize = 32;
/// Values in one `Q4_1` block.
pub const QK4_1: usize = 32;
/// Values in one `Q5_0` block.
pub const QK5_0: usize = 32;
/// Values in one `Q5_1` block.
pub const QK5_1: usize = 32;
/// Values in one `Q8_0` block.
pub const QK8_0: usize = 32;
/// Values in one `Q8_1` block.
pub const QK8_1: usize = 32;
/// Values in one k-quant super-block (`Q4_K`, `Q5_K`, `Q6_K`, `Q8_K`).
pub const QK_K: usize = 256;
/// Bytes of packed 6-bit scales and mins in `Q4_K` and `Q5_K`.
pub const K_SCALE_SIZE: usize = 12;

/// `block_q4_0`: 32 values as `d * (q - 8)`, `q` in 0..=15. 18 bytes, 4.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0 {
    /// Scale (delta).
    pub d: f16,
    /// Nibbles: byte `j` holds value `j` in its low nibble and value `j + 16` in its high nibble.
    pub qs: [u8; QK4_0 / 2],
}

/// `block_q4_1`: 32 values as `d * q + m`, `q` in 0..=15. 20 bytes, 5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_1 {
    /// Scale (delta).
    pub d: f16,
    /// Offset: the block's minimum.
    pub m: f16,
    /// Nibbles: byte `j` holds value `j` (low) and value `j + 16` (high).
    pub qs: [u8; QK4_1 / 2],
}

/// `block_q5_0`: 32 values as `d * (q - 16)`, `q` in 0..=31. 22 bytes, 5.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_0 {
    /// Scale (delta).
    pub d: f16,
    /// Fifth bits: bit `j` of this little-endian `u32` is bit 4 of value `j`.
    pub qh: [u8; 4],
    /// Low four bits: byte `j` holds value `j` (low nibble) and value `j + 16` (high nibble).
    pub qs: [u8; QK5_0 / 2],
}

/// `block_q5_1`: 32 values as `d * q + m`, `q` in 0..=31. 24 bytes, 6 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_1 {
    /// Scale (delta).
    pub d: f16,
    /// Offset: the block's minimum.
    pub m: f16,
    /// Fifth bits: bit `j` of this little-endian `u32` is bit 4 of value `j`.
    pub qh: [u8; 4],
    /// Low four bits: byte `j` holds value `j` (low nibble) and value `j + 16` (high nibble).
    pub qs: [u8; QK5_1 / 2],
}

/// `block_q8_0`: 32 values as `d * q`, `q` in -127..=127. 34 bytes, 8.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    /// Scale (delta).
    pub d: f16,
    /// Quants, in value order.
    pub qs: [i8; QK8_0],
}

/// `block_q8_1`: 32 values as `d * q`, plus `s = d * sum(q)` for the offset term of `Q4_1`/`Q5_1`
/// dot products. 36 bytes. An activation type, not a storage type.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_1 {
    /// Scale (delta).
    pub d: f16,
    /// `d * sum(qs)`, rounded to f16.
    pub s: f16,
    /// Quants, in value order.
    pub qs: [i8; QK8_1],
}

/// `block_q4_K`: 8 sub-blocks of 32 values as `d * sc[j] * q - dmin * m[j]`, `q` in 0..=15, with
/// 6-bit sub-block scales `sc` and mins `m`. 144 bytes, 4.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4K {
    /// Super-block scale of the quantized sub-block scales.
    pub d: f16,
    /// Super-block scale of the quantized sub-block mins.
    pub dmin: f16,
    /// Eight 6-bit scales and eight 6-bit mins: bytes 0..4 hold scales 0..4 (low 6 bits), bytes
    /// 4..8 mins 0..4 (low 6 bits), bytes 8..12 the low nibbles of scale/min 4..8; the top two
    /// bits of bytes 0..8 hold the high bits of scale/min 4..8 (see `get_scale_min_k4`).
    pub scales: [u8; K_SCALE_SIZE],
    /// Nibbles: per 64 values, byte `l` holds value `l` (low) and value `l + 32` (high).
    pub qs: [u8; QK_K / 2],
}

/// `block_q5_K`: as [`BlockQ4K`] with a fifth bit per value, `q` in 0..=31. 176 bytes, 5.5 bits
/// per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5K {
    /// Super-block scale of the quantized sub-block scales.
    pub d: f16,
    /// Super-block scale of the quantized sub-block mins.
    pub dmin: f16,
    /// Eight 6-bit scales and mins, packed as in [`BlockQ4K::scales`].
    pub scales: [u8; K_SCALE_SIZE],
    /// Fifth bits: bit `2i` of byte `l` is for value `64i + l`, bit `2i + 1` for `64i + 32 + l`.
    pub qh: [u8; QK_K / 8],
    /// Low four bits: per 64 values, byte `l` holds value `l` (low) and `l + 32` (high).
    pub qs: [u8; QK_K / 2],
}

/// `block_q6_K`: 16 sub-blocks of 16 values as `d * scales[j] * (q - 32)`, `q` in 0..=63.
/// 210 bytes, 6.5625 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ6K {
    /// Low four bits: per 128 values, byte `l` holds value `l` (low) and `l + 64` (high), byte
    /// `l + 32` holds value `l + 32` (low) and `l + 96` (high).
    pub ql: [u8; QK_K / 2],
    /// High two bits: per 128 values, byte `l` holds values `l`, `l + 32`, `l + 64`, `l + 96` at
    /// bits 0, 2, 4, 6.
    pub qh: [u8; QK_K / 4],
    /// Sub-block scales, 8-bit signed.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale.
    pub d: f16,
}

/// `block_q8_K`: 256 values as `d * q` with an f32 scale and per-16 sums, the activation partner
/// of the k-quants. 292 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8K {
    /// Scale (delta), f32 unlike the other blocks.
    pub d: f32,
    /// Quants, in value order.
    pub qs: [i8; QK_K],
    /// Sum of each group of 16 quants.
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);
