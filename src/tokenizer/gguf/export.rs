//! The other way: a Hugging Face tokenizer → `tokenizer.ggml.*` metadata
//! (for `expert quantize`), as llama.cpp's converter writes it.

use super::QWEN2_SPLIT;
use crate::formats::gguf::{
    MetaArray, MetaValue, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNUSED, TOKEN_USER_DEFINED,
};
use crate::formats::json::read_value;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// tokenizer.ggml.* and tokenizer.chat_template from a Hugging Face
/// tokenizer.json / tokenizer_config.json, as llama.cpp's converter writes
/// them (`get_vocab_base`, `SpecialVocab`). None without a tokenizer.json.
pub fn tokenizer_metadata(
    dir: &Path,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    vocab_size: usize,
) -> Result<Option<Vec<(String, MetaValue)>>> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Ok(None);
    }
    let tj = read_value(&path)?;
    let model = &tj["model"];
    if model["type"].as_str() != Some("BPE") {
        bail!(
            "{}: only byte-level BPE tokenizers can be written to GGUF",
            path.display()
        );
    }
    let (by_id, added_special) = tokens_by_id(&path, &tj)?;
    let (tokens, types) = token_list(&by_id, &added_special, vocab_size);
    let merges = merges(&path, model)?;
    let pre = pre_name(&path, &tj)?;
    let mut m = vec![
        ("tokenizer.ggml.model".to_string(), gguf_str("gpt2")),
        ("tokenizer.ggml.pre".into(), gguf_str(pre)),
        (
            "tokenizer.ggml.tokens".into(),
            MetaValue::Array(MetaArray::String(tokens.clone())),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            MetaValue::Array(MetaArray::I32(types)),
        ),
        (
            "tokenizer.ggml.merges".into(),
            MetaValue::Array(MetaArray::String(merges)),
        ),
    ];
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.is_file() {
        read_value(&tc_path)?
    } else {
        Value::Null
    };
    m.extend(special_ids(&tc, &tokens, bos_token_id, eos_token_id));
    if let Some(t) = chat_template(dir, &tc)? {
        m.push(("tokenizer.chat_template".into(), MetaValue::String(t)));
    }
    Ok(Some(m))
}

/// Every token text by id (the BPE vocabulary, then the added tokens over
/// it), and whether each added token is special.
fn tokens_by_id(
    path: &Path,
    tj: &Value,
) -> Result<(BTreeMap<usize, String>, BTreeMap<usize, bool>)> {
    let vocab = tj["model"]["vocab"]
        .as_object()
        .with_context(|| format!("{}: model.vocab: expected an object", path.display()))?;
    let mut by_id: BTreeMap<usize, String> = BTreeMap::new();
    for (t, id) in vocab {
        let id = id
            .as_u64()
            .with_context(|| format!("{}: vocab entry {t:?}: bad id", path.display()))?;
        by_id.insert(id as usize, t.clone());
    }
    let mut added_special: BTreeMap<usize, bool> = BTreeMap::new();
    for a in tj["added_tokens"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) else {
            continue;
        };
        by_id.insert(id as usize, content.to_string());
        added_special.insert(id as usize, a["special"].as_bool().unwrap_or(false));
    }
    Ok((by_id, added_special))
}

/// `tokenizer.ggml.tokens` and `token_type`: ids without a token (up to the
/// config's vocab size) become unused `[PAD{i}]` entries.
fn token_list(
    by_id: &BTreeMap<usize, String>,
    added_special: &BTreeMap<usize, bool>,
    vocab_size: usize,
) -> (Vec<String>, Vec<i32>) {
    let n = vocab_size.max(by_id.keys().next_back().map_or(0, |m| m + 1));
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for i in 0..n {
        match by_id.get(&i) {
            None => {
                tokens.push(format!("[PAD{i}]"));
                types.push(TOKEN_UNUSED as i32);
            }
            Some(t) => {
                let ty = match added_special.get(&i) {
                    None => TOKEN_NORMAL,
                    Some(true) => TOKEN_CONTROL,
                    // llama.cpp's does_token_look_special: `<|…|>` is control.
                    Some(false) if t.starts_with("<|") && t.ends_with("|>") => TOKEN_CONTROL,
                    Some(false) => TOKEN_USER_DEFINED,
                };
                tokens.push(t.clone());
                types.push(ty as i32);
            }
        }
    }
    (tokens, types)
}

/// `tokenizer.ggml.merges` as `"a b"` strings, from either spelling.
fn merges(path: &Path, model: &Value) -> Result<Vec<String>> {
    model["merges"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|m| match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(p) if p.len() == 2 => Ok(format!(
                "{} {}",
                p[0].as_str().unwrap_or_default(),
                p[1].as_str().unwrap_or_default()
            )),
            other => bail!(
                "{}: merge {other}: expected \"a b\" or [a, b]",
                path.display()
            ),
        })
        .collect()
}

/// The pre-tokenizer's llama.cpp name, by the split regex it uses.
fn pre_name(path: &Path, tj: &Value) -> Result<&'static str> {
    let pre_json = tj["pre_tokenizer"].to_string();
    Ok(if pre_json.contains(&serde_json::to_string(QWEN2_SPLIT)?) {
        "qwen2"
    } else if tj["pre_tokenizer"]["type"] == "ByteLevel" {
        "gpt2"
    } else {
        bail!(
            "{}: this pre-tokenizer has no llama.cpp name (expected Qwen2's split regex or GPT-2 byte-level)",
            path.display()
        );
    })
}

/// Special ids: tokenizer_config.json's strings, else config.json's ids;
/// then its add-BOS/EOS flags.
fn special_ids(
    tc: &Value,
    tokens: &[String],
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
) -> Vec<(String, MetaValue)> {
    let id_of = |field: &str| -> Option<u32> {
        let v = &tc[field];
        let text = v.as_str().or_else(|| v["content"].as_str())?;
        tokens.iter().position(|t| t == text).map(|i| i as u32)
    };
    let mut m = vec![];
    let bos = id_of("bos_token").or(bos_token_id);
    let eos = id_of("eos_token").or(eos_token_id);
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", bos),
        ("tokenizer.ggml.eos_token_id", eos),
        ("tokenizer.ggml.unknown_token_id", id_of("unk_token")),
        ("tokenizer.ggml.padding_token_id", id_of("pad_token")),
    ] {
        if let Some(id) = id {
            m.push((key.to_string(), MetaValue::U32(id)));
        }
    }
    for (field, key) in [
        ("add_bos_token", "tokenizer.ggml.add_bos_token"),
        ("add_eos_token", "tokenizer.ggml.add_eos_token"),
    ] {
        if let Some(b) = tc[field].as_bool() {
            m.push((key.to_string(), MetaValue::Bool(b)));
        }
    }
    m
}

/// The chat template: chat_template.jinja beside tokenizer.json, else
/// tokenizer_config.json's `chat_template` string.
fn chat_template(dir: &Path, tc: &Value) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    Ok(if jinja.is_file() {
        Some(
            std::fs::read_to_string(&jinja)
                .with_context(|| format!("cannot read {}", jinja.display()))?,
        )
    } else {
        tc["chat_template"].as_str().map(str::to_string)
    })
}

fn gguf_str(v: &str) -> MetaValue {
    MetaValue::String(v.to_string())
}
