//! transformers' template goldens (tests/fixtures/templates/*.json), read
//! by the unit tests of the template and the prompt encoder.

use super::conversation::Message;
use super::template::RenderOptions;
use serde_json::Value as Json;
use std::path::Path;

pub fn qwen_dir() -> std::path::PathBuf {
    crate::test_fixtures::qwen3_tokenizer_dir()
}

pub fn fixture(name: &str) -> Json {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/templates")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

pub struct Case {
    pub name: String,
    pub messages: Vec<Message>,
    pub opts: RenderOptions,
    pub rendered: String,
    pub ids: Vec<u32>,
    pub ids_content_as_text: Vec<u32>,
}

pub fn cases(json: &Json) -> Vec<Case> {
    let ids = |v: &Json| -> Vec<u32> {
        v.as_array()
            .map(|a| a.iter().map(|x| x.as_u64().unwrap() as u32).collect())
            .unwrap_or_default()
    };
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            messages: serde_json::from_value(c["messages"].clone()).unwrap(),
            opts: RenderOptions {
                add_generation_prompt: c["add_generation_prompt"].as_bool().unwrap(),
                enable_thinking: c["enable_thinking"].as_bool(),
            },
            rendered: c["rendered"].as_str().unwrap().to_string(),
            ids: ids(&c["ids"]),
            ids_content_as_text: ids(&c["ids_content_as_text"]),
        })
        .collect()
}
