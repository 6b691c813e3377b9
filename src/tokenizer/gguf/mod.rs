//! A tokenizer rebuilt from GGUF metadata alone, the way transformers'
//! `from_pretrained(dir, gguf_file=…)` rebuilds it
//! (`integrations/gguf/gguf_tokenizer_mapping.py`):
//!
//! - `tokenizer.ggml.model = gpt2`: byte-level BPE over `tokenizer.ggml.tokens`
//!   (ids are positions; a token spelled outside the byte alphabet is
//!   re-spelled from its UTF-8 bytes) and `tokenizer.ggml.merges`;
//! - tokens of type CONTROL (3) become special added tokens, USER_DEFINED (4)
//!   plain added tokens (Qwen's `<think>`);
//! - the pre-tokenizer follows `tokenizer.ggml.pre`: the Qwen2 split regex for
//!   `qwen2` (Qwen2/Qwen3 files), the Llama-3 regex for `llama-bpe` and
//!   friends, and otherwise GPT-2's byte-level regex (`smollm`, `gpt2`, …);
//! - BOS/EOS from `tokenizer.ggml.{bos,eos}_token_id`, BOS prepended only when
//!   `tokenizer.ggml.add_bos_token` is true;
//! - the chat template from `tokenizer.chat_template`.
//!
//! Note on `smollm`: llama.cpp (and SmolLM2's own tokenizer.json) isolate
//! digits before the GPT-2 regex; transformers' GGUF loader does not. The two
//! differ only on whitespace runs in front of a digit. We follow transformers,
//! which is what the goldens record; a tokenizer.json placed beside the GGUF
//! gives the upstream behaviour instead (see [`load`]).
//!
//! The other direction (tokenizer.json → `tokenizer.ggml.*`, for
//! `expert quantize`) is in `export`.

mod export;

pub use export::tokenizer_metadata;

use crate::formats::gguf::{GgufFile, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_USER_DEFINED};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::path::Path;

/// transformers' `Qwen2Tokenizer.PRETOKENIZE_REGEX` (also Qwen3's).
pub const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

/// The split regex for a `tokenizer.ggml.pre` value, None for GPT-2's own.
pub fn split_regex(pre: &str) -> Option<&'static str> {
    match pre {
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => Some(QWEN2_SPLIT),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "dbrx" | "smaug-bpe" => Some(LLAMA3_SPLIT),
        "gpt-4o" | "llama4" | "minimax-m2" => Some(GPT4O_SPLIT),
        _ => None,
    }
}

/// GPT-2's byte → printable character table.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
    }
    table
}

/// The tokenizer, BOS/EOS and add-BOS flag of a GGUF file.
pub fn tokenizer(file: &GgufFile) -> Result<Tokenizer> {
    let hf = hf_tokenizer(file)?;
    let tokens = file
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .and_then(|a| a.strings())
        .unwrap_or(&[]);
    let name = |key: &str| -> Result<Option<String>> {
        Ok(file
            .opt_u64(key)?
            .and_then(|id| tokens.get(id as usize).cloned()))
    };
    let bos = name("tokenizer.ggml.bos_token_id")?;
    let eos = name("tokenizer.ggml.eos_token_id")?;
    let add_bos = file
        .opt_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(false);
    Ok(Tokenizer::from_hf(hf).with_special_tokens(bos, eos, add_bos))
}

/// `tokenizer.chat_template`, if the file has one.
pub fn chat_template(file: &GgufFile) -> Option<String> {
    file.get("tokenizer.chat_template")
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

/// Token texts llama.cpp treats as end-of-generation when they are control
/// tokens (`llama_vocab::impl::load`, the `special_eog_ids` scan).
const EOG_TEXTS: [&str; 10] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<｜end▁of▁sentence｜>",
];

/// End-of-generation ids: `eos`/`eot` from the metadata plus every control
/// token llama.cpp recognises as an end of turn (SmolLM2: `<|im_end|>` and
/// `<|endoftext|>`).
pub fn eog_ids(file: &GgufFile) -> Vec<u32> {
    let mut out = vec![];
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if let Ok(Some(id)) = file.opt_u64(key) {
            if !out.contains(&(id as u32)) {
                out.push(id as u32);
            }
        }
    }
    let tokens = file
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .and_then(|a| a.strings());
    let types = file
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.as_array())
        .and_then(|a| a.ints());
    if let (Some(tokens), Some(types)) = (tokens, types) {
        for (id, (t, ty)) in tokens.iter().zip(types).enumerate() {
            if ty == TOKEN_CONTROL && EOG_TEXTS.contains(&t.as_str()) && !out.contains(&(id as u32))
            {
                out.push(id as u32);
            }
        }
    }
    out
}

/// The tokenizer for a GGUF model: the embedded one, or — only when the file
/// has no usable embedded tokenizer — a `tokenizer.json` beside it.
pub fn load(file: &GgufFile) -> Result<Tokenizer> {
    match tokenizer(file) {
        Ok(t) => Ok(t),
        Err(e) => {
            let beside = file
                .path
                .parent()
                .unwrap_or(Path::new("."))
                .join("tokenizer.json");
            if beside.is_file() {
                let dir = beside.parent().unwrap_or(Path::new("."));
                Tokenizer::from_dir(dir)
                    .with_context(|| format!("{e:#}; and the tokenizer.json beside it failed"))
            } else {
                Err(e)
            }
        }
    }
}

/// Builds the Hugging Face tokenizer described by the metadata.
pub fn hf_tokenizer(file: &GgufFile) -> Result<tokenizers::Tokenizer> {
    let json =
        tokenizer_json(file).map_err(|e| anyhow::anyhow!("{}: {e:#}", file.path.display()))?;
    json.parse::<tokenizers::Tokenizer>().map_err(|e| {
        anyhow::anyhow!(
            "{}: cannot build the tokenizer from its metadata: {e}",
            file.path.display()
        )
    })
}

/// The tokenizer.json equivalent of the metadata.
pub fn tokenizer_json(file: &GgufFile) -> Result<String> {
    let model = file
        .opt_str("tokenizer.ggml.model")?
        .context("no embedded tokenizer (metadata `tokenizer.ggml.model` is missing)")?;
    if model != "gpt2" {
        bail!(
            "metadata `tokenizer.ggml.model`: `{model}` tokenizers are not supported (only gpt2-style byte-level BPE); \
             place the model's tokenizer.json beside the file"
        );
    }
    let (tokens, merges, types) = token_arrays(file)?;
    let alphabet: HashSet<char> = bytes_to_unicode().into_iter().collect();
    let vocab = bpe_vocab(tokens, &alphabet);
    let merge_pairs = merge_pairs(merges)?;
    let added = added_tokens(tokens, &types, &alphabet);
    let pre_tokenizer = pre_tokenizer(file)?;
    let post_processor = post_processor(file, tokens)?;
    let out = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merge_pairs,
        }
    });
    Ok(serde_json::to_string(&out)?)
}

/// `tokenizer.ggml.{tokens,merges,token_type}`; a file without token types
/// has only normal tokens.
fn token_arrays(file: &GgufFile) -> Result<(&[String], &[String], Vec<i64>)> {
    let tokens = file
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .and_then(|a| a.strings())
        .context("metadata `tokenizer.ggml.tokens`: missing or not an array of strings")?;
    let merges = file
        .get("tokenizer.ggml.merges")
        .and_then(|v| v.as_array())
        .and_then(|a| a.strings())
        .context("metadata `tokenizer.ggml.merges`: missing or not an array of strings")?;
    let types = match file.get("tokenizer.ggml.token_type") {
        None => vec![TOKEN_NORMAL; tokens.len()],
        Some(v) => v
            .as_array()
            .and_then(|a| a.ints())
            .context("metadata `tokenizer.ggml.token_type`: expected an array of integers")?,
    };
    if types.len() != tokens.len() {
        bail!(
            "metadata `tokenizer.ggml.token_type` has {} entries for {} tokens",
            types.len(),
            tokens.len()
        );
    }
    Ok((tokens, merges, types))
}

fn in_alphabet(alphabet: &HashSet<char>, token: &str) -> bool {
    token.chars().all(|c| alphabet.contains(&c))
}

/// The BPE vocabulary: ids are positions; a token spelled outside the byte
/// alphabet is re-spelled from its UTF-8 bytes.
fn bpe_vocab(tokens: &[String], alphabet: &HashSet<char>) -> Map<String, Value> {
    let spelling = bytes_to_unicode();
    let mut vocab = Map::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        let spelled = if in_alphabet(alphabet, token) {
            token.clone()
        } else {
            token.bytes().map(|b| spelling[b as usize]).collect()
        };
        vocab.insert(spelled, json!(id));
    }
    vocab
}

/// `"a b"` merges as tokenizer.json's `[a, b]` pairs.
fn merge_pairs(merges: &[String]) -> Result<Vec<Value>> {
    let mut merge_pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        let (a, b) = m
            .split_once(' ')
            .with_context(|| format!("metadata `tokenizer.ggml.merges`: entry {i} {m:?} is not two tokens separated by a space"))?;
        merge_pairs.push(json!([a, b]));
    }
    Ok(merge_pairs)
}

/// Control tokens as special added tokens, user-defined ones as plain added
/// tokens.
fn added_tokens(tokens: &[String], types: &[i64], alphabet: &HashSet<char>) -> Vec<Value> {
    let mut added = vec![];
    for (id, (token, &t)) in tokens.iter().zip(types).enumerate() {
        // As transformers: a control token spelled outside the byte alphabet
        // is a llama.cpp mislabel and is skipped; user-defined ones are added
        // only when they are vocabulary entries as spelled.
        let special = match t {
            TOKEN_CONTROL => true,
            TOKEN_USER_DEFINED => false,
            _ => continue,
        };
        if !in_alphabet(alphabet, token) || token.is_empty() {
            continue;
        }
        added.push(json!({
            "id": id, "content": token, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": special,
        }));
    }
    added
}

/// The pre-tokenizer named by `tokenizer.ggml.pre`: its split regex then
/// byte-level, or GPT-2's byte-level regex alone.
fn pre_tokenizer(file: &GgufFile) -> Result<Value> {
    let pre = file.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
    Ok(match split_regex(pre) {
        Some(regex) => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
            ]
        }),
        None => {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
        }
    })
}

/// BOS/EOS added by the post-processor when the file asks for them; null
/// when it asks for neither.
fn post_processor(file: &GgufFile, tokens: &[String]) -> Result<Value> {
    let special = |key: &str| -> Result<Option<(u32, String)>> {
        Ok(file
            .opt_u64(key)?
            .and_then(|id| tokens.get(id as usize).map(|t| (id as u32, t.clone()))))
    };
    let add_bos = file
        .opt_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(false);
    let add_eos = file
        .opt_bool("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);
    let bos = if add_bos {
        special("tokenizer.ggml.bos_token_id")?
    } else {
        None
    };
    let eos = if add_eos {
        special("tokenizer.ggml.eos_token_id")?
    } else {
        None
    };
    Ok(if bos.is_none() && eos.is_none() {
        Value::Null
    } else {
        template_processing(bos.as_ref(), eos.as_ref())
    })
}

/// A `TemplateProcessing` wrapping single sequences and pairs in BOS/EOS.
fn template_processing(bos: Option<&(u32, String)>, eos: Option<&(u32, String)>) -> Value {
    let piece = |(_, t): &(u32, String), type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let mut single = vec![];
    let mut pair = vec![];
    let mut specials = Map::new();
    if let Some(b) = bos {
        single.push(piece(b, 0));
        pair.push(piece(b, 0));
    }
    single.push(seq("A", 0));
    pair.push(seq("A", 0));
    if let Some(e) = eos {
        single.push(piece(e, 0));
        pair.push(piece(e, 0));
    }
    if let Some(b) = bos {
        pair.push(piece(b, 1));
    }
    pair.push(seq("B", 1));
    if let Some(e) = eos {
        pair.push(piece(e, 1));
    }
    for (id, t) in bos.into_iter().chain(eos) {
        specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = bytes_to_unicode();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        let distinct: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }
}
