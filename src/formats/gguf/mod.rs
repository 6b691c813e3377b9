//! GGUF, llama.cpp's file format: read ([`GgufFile`]), write ([`write_file`]),
//! the GGML type table, Hugging Face ↔ GGUF tensor names and the
//! `tokenizer.ggml.*` token types.
//!
//! Rotary layout: llama.cpp's converter permutes the rows of Llama q/k weights
//! so that rotary pairs are adjacent (x[2i], x[2i+1]); Llama GGUFs are
//! therefore run with the interleaved rotation (`rope.interleaved`), Qwen2 and
//! Qwen3 GGUFs with the NeoX half split, like their safetensors.

mod names;
mod read;
mod types;
mod value;
mod write;

pub use names::gguf_name;
pub use read::{GgufFile, GgufTensor};
pub use types::{
    file_type, ggml_dtype, ggml_type_id, is_float, parse_quant_type, type_name, QUANT_TYPES,
};
pub use value::{vtype, MetaArray, MetaValue};
pub use write::write_file;

use std::io::Read;
use std::path::Path;

/// llama.cpp token types (`tokenizer.ggml.token_type`).
pub const TOKEN_NORMAL: i64 = 1;
pub const TOKEN_CONTROL: i64 = 3;
pub const TOKEN_USER_DEFINED: i64 = 4;
pub const TOKEN_UNUSED: i64 = 5;

/// True when `path` names a GGUF file (by extension or magic).
pub fn is_gguf(path: &Path) -> bool {
    if !path.is_file() {
        return false;
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}
