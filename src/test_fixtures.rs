//! Paths of the committed test fixtures, for unit tests. Everything a test
//! reads lives inside the repository (tests/fixtures/), never beside it.

use std::path::{Path, PathBuf};

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

/// The real Qwen3 tokenizer (tokenizer.json, tokenizer_config.json with the
/// chat template, generation_config.json), as the `tiny` fixture carries it.
pub fn qwen3_tokenizer_dir() -> PathBuf {
    fixtures().join("qwen3/tiny")
}

/// The real Qwen3-0.6B config.json, generation_config.json and
/// tokenizer_config.json (tests/fixtures/qwen3-0.6b/SOURCES.md).
pub fn qwen3_0_6b_dir() -> PathBuf {
    fixtures().join("qwen3-0.6b")
}
