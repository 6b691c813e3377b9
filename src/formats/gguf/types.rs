//! GGML tensor types: the one table of ids, llama.cpp names and file types.

use anyhow::{Context, Result};
use candle_core::quantized::GgmlDType;

struct TypeInfo {
    dtype: GgmlDType,
    /// The type id in a GGUF tensor header.
    id: u32,
    /// llama.cpp's spelling (`Q4_K`).
    name: &'static str,
    /// llama.cpp's `general.file_type` (llama_ftype) for a file of this type
    /// (k-quants: the `_S` variant, every tensor the same type).
    file_type: u32,
}

const fn t(dtype: GgmlDType, id: u32, name: &'static str, file_type: u32) -> TypeInfo {
    TypeInfo {
        dtype,
        id,
        name,
        file_type,
    }
}

/// Every type candle can hold.
const TYPES: [TypeInfo; 15] = [
    t(GgmlDType::F32, 0, "F32", 0),
    t(GgmlDType::F16, 1, "F16", 1),
    t(GgmlDType::Q4_0, 2, "Q4_0", 2),
    t(GgmlDType::Q4_1, 3, "Q4_1", 3),
    t(GgmlDType::Q5_0, 6, "Q5_0", 8),
    t(GgmlDType::Q5_1, 7, "Q5_1", 9),
    t(GgmlDType::Q8_0, 8, "Q8_0", 7),
    t(GgmlDType::Q8_1, 9, "Q8_1", 7),
    t(GgmlDType::Q2K, 10, "Q2_K", 10),
    t(GgmlDType::Q3K, 11, "Q3_K", 11),
    t(GgmlDType::Q4K, 12, "Q4_K", 14),
    t(GgmlDType::Q5K, 13, "Q5_K", 16),
    t(GgmlDType::Q6K, 14, "Q6_K", 18),
    t(GgmlDType::Q8K, 15, "Q8_K", 7),
    t(GgmlDType::BF16, 30, "BF16", 32),
];

/// The types weights can be quantized to (`--quantize`, `expert quantize --type`).
pub const QUANT_TYPES: [GgmlDType; 10] = [
    GgmlDType::Q8_0,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

fn info(t: GgmlDType) -> &'static TypeInfo {
    // Every GgmlDType variant is in the table (checked by a test).
    TYPES.iter().find(|i| i.dtype == t).unwrap_or(&TYPES[0])
}

/// GGML tensor type id → candle's type, or a message naming the type.
pub fn ggml_dtype(id: u32) -> std::result::Result<GgmlDType, String> {
    if let Some(i) = TYPES.iter().find(|i| i.id == id) {
        return Ok(i.dtype);
    }
    let name = match id {
        4 | 5 => "Q4_2/Q4_3 (removed from ggml)",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "unknown",
    };
    Err(format!(
        "type {name} (id {id}) is not supported (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)"
    ))
}

/// GGML type id of a candle type (for writing).
pub fn ggml_type_id(t: GgmlDType) -> u32 {
    info(t).id
}

/// llama.cpp's spelling of a type (`Q4_K`, `Q8_0`, `F16`).
pub fn type_name(t: GgmlDType) -> &'static str {
    info(t).name
}

/// llama.cpp's `general.file_type` for a file whose weights are all `t`.
pub fn file_type(t: GgmlDType) -> u32 {
    info(t).file_type
}

pub fn is_float(t: GgmlDType) -> bool {
    matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// Parses a quantization type name (`q4_k`, `Q4_K`, `q8_0`).
pub fn parse_quant_type(s: &str) -> Result<GgmlDType> {
    QUANT_TYPES
        .iter()
        .copied()
        .find(|t| type_name(*t).eq_ignore_ascii_case(s))
        .with_context(|| {
            let names: Vec<String> = QUANT_TYPES
                .iter()
                .map(|t| type_name(*t).to_ascii_lowercase())
                .collect();
            format!(
                "unknown quantization type `{s}` (expected one of: {})",
                names.join(", ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_both_ways() {
        let e = ggml_dtype(16).unwrap_err();
        assert!(e.contains("IQ2_XXS"), "{e}");
        assert_eq!(ggml_dtype(12).unwrap(), GgmlDType::Q4K);
        for i in &TYPES {
            assert_eq!(ggml_dtype(ggml_type_id(i.dtype)).unwrap(), i.dtype);
            assert_eq!(type_name(i.dtype), i.name);
        }
        assert_eq!(parse_quant_type("Q4_K").unwrap(), GgmlDType::Q4K);
        assert_eq!(parse_quant_type("q5_1").unwrap(), GgmlDType::Q5_1);
        let e = parse_quant_type("q4_k_m").unwrap_err().to_string();
        assert!(e.contains("q8_0, q4_0, q4_1") && e.contains("q6_k"), "{e}");
        assert_eq!(file_type(GgmlDType::Q4K), 14);
    }
}
