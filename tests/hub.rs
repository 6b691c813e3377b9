//! `--model owner/name` resolves through the standard Hugging Face cache
//! layout (no Hub is reachable here, so the cache is pre-populated).

mod common;

use common::*;
use std::process::Command;

/// HF_HOME/hub/models--Qwen--Qwen3-0.6B/{refs/<rev>, snapshots/<hash>/…}
fn fake_cache(revision: &str) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub/models--Qwen--Qwen3-0.6B");
    let snap = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join(revision), "0123abcd").unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(fixture("tiny").join(f), snap.join(f)).unwrap();
    }
    home
}

fn run(home: &std::path::Path, args: &[&str], offline_env: bool) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_expert"));
    c.args(args)
        .env("HF_HOME", home)
        .env_remove("HF_HUB_OFFLINE");
    if offline_env {
        c.env("HF_HUB_OFFLINE", "1");
    }
    c.output().unwrap()
}

#[test]
fn repo_id_resolves_from_the_cache_offline() {
    let home = fake_cache("main");
    let o = run(
        home.path(),
        &["inspect", "--model", "Qwen/Qwen3-0.6B", "--json"],
        true,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["valid"], true);
    assert!(v["path"].as_str().unwrap().ends_with("snapshots/0123abcd"));
    // --offline does the same without the variable.
    let o = run(
        home.path(),
        &["inspect", "--model", "Qwen/Qwen3-0.6B", "--offline"],
        false,
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn revision_selects_the_ref() {
    let home = fake_cache("v1.0");
    let o = run(
        home.path(),
        &[
            "inspect",
            "--model",
            "Qwen/Qwen3-0.6B",
            "--revision",
            "v1.0",
        ],
        true,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        home.path(),
        &["inspect", "--model", "Qwen/Qwen3-0.6B"],
        true,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("revision main"), "{}", stderr(&o));
}

#[test]
fn offline_and_not_cached_says_what_to_do() {
    let home = tempfile::tempdir().unwrap();
    let o = run(
        home.path(),
        &["inspect", "--model", "Qwen/Qwen3-0.6B"],
        true,
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: --model Qwen/Qwen3-0.6B"), "{err}");
    assert!(
        err.contains("not in the Hugging Face cache") && err.contains("offline"),
        "{err}"
    );
}

#[test]
fn a_path_that_is_not_there_is_not_a_repo_id() {
    let o = expert(&["inspect", "--model", "./no/such/dir"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no such file or directory"),
        "{}",
        stderr(&o)
    );
}
