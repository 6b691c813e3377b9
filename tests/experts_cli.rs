//! Experts end to end on the tiny Qwen3 fixture: the manifest, `expert
//! route` and its cache, `--expert auto` in one-shot chat, and the REPL's
//! `/experts` / `/expert` commands. (What the router chooses on real text is
//! tested on SmolLM2 in tests/experts_smollm2.rs.)

mod common;

use common::*;
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

fn tiny() -> String {
    fixture("tiny").to_string_lossy().into_owned()
}

fn manifest(dir: &Path, french_examples: &str) -> String {
    let lora = root().join("tests/fixtures/lora");
    let text = format!(
        "threshold = -1.0\n\n\
         [[expert]]\nname = \"code\"\nadapter = \"{}\"\ndescription = \"code\"\n\
         examples = [\"def f(x):\\n    return x + 1\", \"for i in range(10):\\n    print(i)\"]\n\n\
         [[expert]]\nname = \"prose\"\nadapter = \"{}\"\n\
         examples = [{french_examples}]\n",
        lora.join("r8-all").display(),
        lora.join("rslora-sub").display(),
    );
    let p = dir.join("experts.toml");
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn route_ranks_caches_and_invalidates() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manifest(
        tmp.path(),
        "\"Il était une fois une reine.\", \"Le chat dort.\"",
    );
    let cache = tmp.path().join(".experts.toml.route-cache.json");
    let base = tiny();
    let run = |extra: &[&str]| {
        let mut a = vec![
            "route",
            "-m",
            &base,
            "--manifest",
            &m,
            "--json",
            "-p",
            "def g(y):",
            "-p",
            "Bonjour",
        ];
        a.extend_from_slice(extra);
        let o = expert(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        o
    };
    let o = run(&[]);
    assert!(stderr(&o).contains("computed, cached in"), "{}", stderr(&o));
    assert!(cache.is_file());
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for v in &lines {
        let r = v["ranking"].as_array().unwrap();
        assert_eq!(r.len(), 2);
        assert!(r[0]["score"].as_f64() >= r[1]["score"].as_f64());
        // threshold -1: the best expert is always chosen.
        assert_eq!(v["chosen"], r[0]["expert"]);
    }
    // Same base, same examples: from the cache, same scores.
    let o2 = run(&[]);
    assert!(
        stderr(&o2).contains("example embeddings from"),
        "{}",
        stderr(&o2)
    );
    assert_eq!(stdout(&o), stdout(&o2));
    // Another base representation (bf16): recomputed.
    let o3 = run(&["--dtype", "bf16"]);
    assert!(
        stderr(&o3).contains("computed, cached in"),
        "{}",
        stderr(&o3)
    );
    // Edited examples: recomputed.
    manifest(tmp.path(), "\"Le chien aboie.\"");
    let o4 = run(&[]);
    assert!(
        stderr(&o4).contains("computed, cached in"),
        "{}",
        stderr(&o4)
    );
    // Text output names the choice.
    let o = expert(&["route", "-m", &tiny(), "--manifest", &m, "-p", "def g(y):"]);
    assert!(stdout(&o).contains("<- chosen"), "{}", stdout(&o));
}

#[test]
fn manifest_errors_are_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("experts.toml");
    std::fs::write(
        &p,
        "[[expert]]\nname = \"a\"\nadapter = \"x\"\nexamples = [\"hi\"]\ncolour = 1\n",
    )
    .unwrap();
    let o = expert(&[
        "route",
        "-m",
        &tiny(),
        "--manifest",
        p.to_str().unwrap(),
        "-p",
        "x",
    ]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("experts.toml: invalid manifest (line 5)") && err.contains("colour"),
        "{err}"
    );
    // A manifest whose adapter is missing: chat names the expert and the path.
    std::fs::write(
        &p,
        "[[expert]]\nname = \"a\"\nadapter = \"missing\"\nexamples = [\"hi\"]\n",
    )
    .unwrap();
    let o = expert(&[
        "chat",
        "-m",
        &tiny(),
        "--manifest",
        p.to_str().unwrap(),
        "--prompt",
        "x",
        "--raw",
        "-n",
        "1",
    ]);
    let err = stderr(&o);
    assert!(
        err.starts_with("error: adapter a: ") && err.contains("missing: not a directory"),
        "{err}"
    );
}

#[test]
fn auto_routing_in_one_shot_chat_is_inspectable() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manifest(tmp.path(), "\"Il était une fois une reine.\"");
    let o = expert(&[
        "chat",
        "-m",
        &tiny(),
        "--manifest",
        &m,
        "--expert",
        "auto",
        "--prompt",
        "def h(z):",
        "--raw",
        "-n",
        "3",
        "--temperature",
        "0",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let chosen = v["routing"]["chosen"].as_str().unwrap();
    assert_eq!(v["expert"], chosen);
    assert_eq!(v["routing"]["ranking"][0]["expert"], chosen);
    assert!(
        stderr(&o).contains(&format!("router: {chosen} (score")),
        "{}",
        stderr(&o)
    );
    // A threshold above every score: the base answers, and says so.
    let text = std::fs::read_to_string(&m)
        .unwrap()
        .replace("threshold = -1.0", "threshold = 1.0");
    std::fs::write(&m, text).unwrap();
    let o = expert(&[
        "chat",
        "-m",
        &tiny(),
        "--manifest",
        &m,
        "--expert",
        "auto",
        "--prompt",
        "def h(z):",
        "--raw",
        "-n",
        "3",
        "--temperature",
        "0",
        "--json",
    ]);
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["expert"], Value::Null);
    assert_eq!(v["routing"]["chosen"], Value::Null);
    assert!(stderr(&o).contains("router: no expert"), "{}", stderr(&o));
}

#[test]
fn repl_switches_experts_per_turn() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manifest(tmp.path(), "\"Il était une fois une reine.\"");
    let mut child = Command::new(env!("CARGO_BIN_EXE_expert"))
        .args([
            "chat",
            "-m",
            &tiny(),
            "--manifest",
            &m,
            "-n",
            "3",
            "--temperature",
            "0",
            "--json",
            "--context",
            "256",
            "--expert",
            "none",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"/experts\n/expert prose\nHello\nAgain\n/expert nope\n/expert off\nHello\n/expert auto\ndef f():\n/help\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (out, err) = (stdout(&o), stderr(&o));
    let answers: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 4, "{out}");
    assert_eq!(answers[0]["expert"], "prose");
    assert_eq!(answers[1]["expert"], "prose");
    // Same expert: the second turn reuses the KV cache; switching clears it.
    assert!(
        answers[1]["stats"]["prefill_tokens"].as_u64()
            < answers[1]["stats"]["prompt_tokens"].as_u64()
    );
    assert_eq!(answers[2]["expert"], Value::Null);
    assert_eq!(
        answers[2]["stats"]["prefill_tokens"],
        answers[2]["stats"]["prompt_tokens"]
    );
    assert!(answers[3]["routing"]["chosen"].is_string());
    assert_eq!(answers[3]["expert"], answers[3]["routing"]["chosen"]);
    for want in [
        "expert: off (base model)",
        "code ",
        "expert prose answers from the next message",
        "error: no expert named nope (loaded: code, prose)",
        "expert off: the base model answers",
        "expert auto: the router chooses for each message",
        "/expert NAME|auto|off",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
}
