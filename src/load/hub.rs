//! Resolving `--model` to local files: a directory, a .gguf file, or a
//! Hugging Face repo id fetched through hf-hub into the standard cache
//! (HF_HOME, HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE are honoured).

use crate::formats::safetensors::{index_shards, INDEX, SINGLE};
use anyhow::{bail, Context, Result};
use hf_hub::{api::sync::ApiBuilder, Cache, Repo, RepoType};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// Branch, tag or commit (default: main).
    pub revision: Option<String>,
    /// Use only the local cache (also set by HF_HUB_OFFLINE=1).
    pub offline: bool,
}

/// Files a model directory may have besides its weights.
const REQUIRED: [&str; 1] = ["config.json"];
const OPTIONAL: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
];

/// Resolves `--model` to a local path: an existing file or directory as is,
/// otherwise a Hub repo id (`owner/name`).
pub fn resolve(model: &str, opts: &HubOptions) -> Result<PathBuf> {
    let p = PathBuf::from(model);
    if p.exists() {
        return Ok(p);
    }
    if !is_repo_id(model) {
        bail!("--model {model}: no such file or directory (and not a Hugging Face repo id like Qwen/Qwen3-0.6B)");
    }
    let repo = match &opts.revision {
        Some(r) => Repo::with_revision(model.to_string(), RepoType::Model, r.clone()),
        None => Repo::model(model.to_string()),
    };
    if opts.offline || env_offline() {
        from_cache(model, repo)
    } else {
        download(model, repo)
    }
}

fn is_repo_id(s: &str) -> bool {
    let mut parts = s.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

fn env_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// The weight files to fetch, given a way to get one file.
fn weight_files(get: &mut dyn FnMut(&str) -> Option<PathBuf>) -> Result<Vec<String>> {
    if get(SINGLE).is_some() {
        return Ok(vec![SINGLE.into()]);
    }
    let index = get(INDEX)
        .context("neither model.safetensors nor model.safetensors.index.json is available")?;
    Ok(index_shards(&index)?.into_iter().map(|(f, _)| f).collect())
}

fn from_cache(model: &str, repo: Repo) -> Result<PathBuf> {
    let cache = Cache::from_env();
    let cached = cache.repo(repo.clone());
    let missing = || {
        anyhow::anyhow!(
            "--model {model} (revision {}): not in the Hugging Face cache at {} and offline mode is on \
             (HF_HUB_OFFLINE or --offline); run once with network access, or pass a local directory",
            repo.revision(),
            cache.path().display()
        )
    };
    let config = cached.get(REQUIRED[0]).ok_or_else(missing)?;
    for f in weight_files(&mut |f| cached.get(f))? {
        cached.get(&f).ok_or_else(missing)?;
    }
    snapshot_dir(&config)
}

fn download(model: &str, repo: Repo) -> Result<PathBuf> {
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    let mut builder = ApiBuilder::from_env().with_progress(true);
    if token.is_some() {
        builder = builder.with_token(token);
    }
    let api = builder
        .build()
        .context("cannot set up the Hugging Face client")?;
    let api = api.repo(repo);
    let fail = |f: &str, e: hf_hub::api::sync::ApiError| {
        anyhow::anyhow!(
            "--model {model}: cannot fetch {f}: {e} (check the repo id, HF_TOKEN for gated models, \
             or set HF_HUB_OFFLINE=1 to use the local cache)"
        )
    };
    let config = api.get(REQUIRED[0]).map_err(|e| fail(REQUIRED[0], e))?;
    for f in OPTIONAL {
        // Absent optional files are fine; the loader says what it misses.
        let _ = api.get(f);
    }
    for f in weight_files(&mut |f| api.get(f).ok())? {
        api.get(&f).map_err(|e| fail(&f, e))?;
    }
    snapshot_dir(&config)
}

fn snapshot_dir(config: &Path) -> Result<PathBuf> {
    config
        .parent()
        .map(Path::to_path_buf)
        .context("cached config.json has no parent directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        assert!(is_repo_id("Qwen/Qwen3-0.6B"));
        assert!(is_repo_id("unsloth/Qwen3-1.7B-GGUF"));
        assert!(!is_repo_id("./model"));
        assert!(!is_repo_id("a/b/c"));
        assert!(!is_repo_id("model-dir"));
        assert!(!is_repo_id("../x/y"));
    }
}
