//! The ggml tensor types: stable ids (as stored in GGUF), block sizes and block byte sizes.
//!
//! The table covers every type id ggml has assigned, so that files made by llama.cpp can be read
//! and described even when cheems cannot compute with a type (see [`GgmlType::has_blocks`]).
//! Ids that ggml retired (4, 5, 31-33, 36-38) are rejected as unknown.

use std::fmt;

macro_rules! ggml_types {
    ($( $variant:ident = $id:literal, $name:literal, $block:literal, $bytes:literal; )*) => {
        /// A ggml tensor type. The discriminant is the id stored in GGUF files.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)]
        #[repr(u32)]
        pub enum GgmlType {
            $(
                #[doc = concat!("`", $name, "`: ", stringify!($block), " values in ", stringify!($bytes), " bytes.")]
                $variant = $id,
            )*
        }

        impl GgmlType {
            /// Every known type, in id order.
            pub const ALL: &'static [GgmlType] = &[$(GgmlType::$variant),*];

            /// The type with this GGUF id, if ggml defines one.
            pub fn from_id(id: u32) -> Option<Self> {
                match id {
                    $($id => Some(GgmlType::$variant),)*
                    _ => None,
                }
            }

            /// The lower-case name ggml uses (`"q4_0"`, `"bf16"`).
            pub fn name(self) -> &'static str {
                match self { $(GgmlType::$variant => $name,)* }
            }

            /// Number of values in one block (1 for plain types).
            pub fn block_size(self) -> usize {
                match self { $(GgmlType::$variant => $block,)* }
            }

            /// Bytes of one block.
            pub fn type_size(self) -> usize {
                match self { $(GgmlType::$variant => $bytes,)* }
            }
        }
    };
}

ggml_types! {
    F32 = 0, "f32", 1, 4;
    F16 = 1, "f16", 1, 2;
    Q4_0 = 2, "q4_0", 32, 18;
    Q4_1 = 3, "q4_1", 32, 20;
    Q5_0 = 6, "q5_0", 32, 22;
    Q5_1 = 7, "q5_1", 32, 24;
    Q8_0 = 8, "q8_0", 32, 34;
    Q8_1 = 9, "q8_1", 32, 36;
    Q2_K = 10, "q2_k", 256, 84;
    Q3_K = 11, "q3_k", 256, 110;
    Q4_K = 12, "q4_k", 256, 144;
    Q5_K = 13, "q5_k", 256, 176;
    Q6_K = 14, "q6_k", 256, 210;
    Q8_K = 15, "q8_k", 256, 292;
    IQ2_XXS = 16, "iq2_xxs", 256, 66;
    IQ2_XS = 17, "iq2_xs", 256, 74;
    IQ3_XXS = 18, "iq3_xxs", 256, 98;
    IQ1_S = 19, "iq1_s", 256, 50;
    IQ4_NL = 20, "iq4_nl", 32, 18;
    IQ3_S = 21, "iq3_s", 256, 110;
    IQ2_S = 22, "iq2_s", 256, 82;
    IQ4_XS = 23, "iq4_xs", 256, 136;
    I8 = 24, "i8", 1, 1;
    I16 = 25, "i16", 1, 2;
    I32 = 26, "i32", 1, 4;
    I64 = 27, "i64", 1, 8;
    F64 = 28, "f64", 1, 8;
    IQ1_M = 29, "iq1_m", 256, 56;
    BF16 = 30, "bf16", 1, 2;
    TQ1_0 = 34, "tq1_0", 256, 54;
    TQ2_0 = 35, "tq2_0", 256, 66;
    MXFP4 = 39, "mxfp4", 32, 17;
}

impl GgmlType {
    /// Bytes taken by `n` values of this type, or `None` when `n` is not a whole number of blocks
    /// or the size overflows.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        let bs = self.block_size();
        if !n.is_multiple_of(bs) {
            return None;
        }
        (n / bs).checked_mul(self.type_size())
    }

    /// Whether cheems implements this type's block layout (quantize, dequantize, compute).
    pub fn has_blocks(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | Q4_K | Q5_K | Q6_K | Q8_K
        )
    }

    /// Whether this type can be chosen for stored weights by `cheems quantize`.
    pub fn is_weight_type(self) -> bool {
        self.has_blocks() && !matches!(self, GgmlType::Q8_1 | GgmlType::Q8_K)
    }

    /// Whether the type is a block-quantized type (as opposed to a plain float or integer).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bits per weight, including block scales.
    pub fn bits_per_weight(self) -> f64 {
        (self.type_size() * 8) as f64 / self.block_size() as f64
    }

    /// Parses a type name as ggml writes it, case-insensitively (`"Q4_K"`, `"q8_0"`, `"bf16"`).
    pub fn parse(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        // ggml's llama-quantize also accepts the `_m` spelling of the 4/5-bit k-quant mixes.
        let lower = match lower.as_str() {
            "q4_k_m" | "q4_k_s" => "q4_k".to_string(),
            "q5_k_m" | "q5_k_s" => "q5_k".to_string(),
            _ => lower,
        };
        GgmlType::ALL.iter().copied().find(|t| t.name() == lower)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name().to_ascii_uppercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_retired_ids_are_unknown() {
        for &t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t as u32), Some(t));
            assert_eq!(GgmlType::parse(t.name()), Some(t));
        }
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 40, u32::MAX] {
            assert_eq!(GgmlType::from_id(id), None, "id {id}");
        }
    }

    #[test]
    fn row_bytes_rejects_partial_blocks() {
        assert_eq!(GgmlType::Q4_K.row_bytes(512), Some(288));
        assert_eq!(GgmlType::Q4_K.row_bytes(100), None);
        assert_eq!(GgmlType::F32.row_bytes(usize::MAX), None);
    }
}
