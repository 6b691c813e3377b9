//! `expert chat` one-shot, end to end on the `tiny` fixture (the real Qwen3
//! tokenizer and chat template, random weights), against references from
//! transformers: the template goldens (tests/fixtures/templates/qwen3.json),
//! the chat goldens (tests/fixtures/chat/tiny.json: greedy answers of whole
//! conversations) and the raw greedy paths of golden.json. Plus the KV-cache
//! reuse across turns at library level.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn tiny() -> &'static str {
    static TINY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TINY.get_or_init(|| fixture("tiny").to_str().unwrap().to_string())
}

fn template_cases() -> Vec<Value> {
    read_json(&root().join("tests/fixtures/templates/qwen3.json"))["cases"]
        .as_array()
        .unwrap()
        .clone()
}

fn template_case(name: &str) -> Value {
    template_cases()
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no template golden {name}"))
}

fn chat_golden() -> Value {
    read_json(&root().join("tests/fixtures/chat/tiny.json"))
}

fn conversation(name: &str) -> Value {
    chat_golden()["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone()
}

fn thinking_flag(v: &Value) -> Option<&'static str> {
    match v.as_bool() {
        Some(true) => Some("--think"),
        Some(false) => Some("--no-think"),
        None => None,
    }
}

fn write_json(dir: &Path, name: &str, v: &Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string(v).unwrap()).unwrap();
    p.to_str().unwrap().to_string()
}

fn run_ok(args: &[&str]) -> String {
    let o = expert(args);
    assert!(o.status.success(), "expert {args:?} failed: {}", stderr(&o));
    stdout(&o)
}

fn run_json(args: &[&str]) -> Value {
    let out = run_ok(args);
    assert_eq!(out.lines().count(), 1, "one JSON object expected: {out}");
    serde_json::from_str(out.trim()).unwrap()
}

/// The one `error:` line of a failed run.
fn run_err(args: &[&str]) -> String {
    let o = expert(args);
    assert_eq!(
        o.status.code(),
        Some(1),
        "expert {args:?} should fail: {}",
        stdout(&o)
    );
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "one error line expected: {e}");
    assert!(e.starts_with("error: "), "{e}");
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    e.trim_end().to_string()
}

/// A copy of the tiny fixture (files linked, not copied, where possible)
/// whose files can be replaced one by one.
fn tiny_variant() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(fixture("tiny")).unwrap() {
        let src = entry.unwrap().path();
        let dst = dir.join(src.file_name().unwrap());
        #[cfg(unix)]
        std::os::unix::fs::symlink(&src, &dst).unwrap();
        #[cfg(not(unix))]
        std::fs::copy(&src, &dst).unwrap();
    }
    (tmp, dir)
}

fn replace(dir: &Path, name: &str, content: &str) {
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, content).unwrap();
}

// ---------------------------------------------------------------------------
// Prompts: --dry-run against transformers' apply_chat_template

#[test]
fn dry_run_equals_every_template_golden_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = template_cases();
    assert!(cases.len() >= 10);
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let file = write_json(tmp.path(), &format!("{name}.json"), &c["messages"]);
        let mut args = vec!["chat", "--model", tiny(), "--messages", &file, "--dry-run"];
        if let Some(f) = thinking_flag(&c["enable_thinking"]) {
            args.push(f);
        }
        // A conversation that ends with the assistant renders without a
        // generation prompt by itself; otherwise --no-generation-prompt asks.
        let ends_with_assistant =
            c["messages"].as_array().unwrap().last().unwrap()["role"] == "assistant";
        if !c["add_generation_prompt"].as_bool().unwrap() {
            assert!(ends_with_assistant, "{name}");
            if name == "three_exchanges" {
                args.push("--no-generation-prompt");
            }
        }
        let out = run_ok(&args);
        assert_eq!(out, c["rendered"].as_str().unwrap(), "case {name}");

        args.push("--json");
        let v = run_json(&args);
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["prompt", "prompt_ids"], "{name}");
        assert_eq!(v["prompt"], c["rendered"], "case {name}");
        assert_eq!(
            ids(&v["prompt_ids"]),
            ids(&c["ids_content_as_text"]),
            "case {name}"
        );
    }
}

#[test]
fn prompt_and_system_flags_render_like_the_goldens() {
    let single = template_case("single_user");
    let prompt = single["messages"][0]["content"].as_str().unwrap();
    let v = run_json(&[
        "chat",
        "--model",
        tiny(),
        "--prompt",
        prompt,
        "--dry-run",
        "--json",
    ]);
    assert_eq!(v.as_object().unwrap().len(), 2);
    assert_eq!(v["prompt"], single["rendered"]);
    assert_eq!(ids(&v["prompt_ids"]), ids(&single["ids_content_as_text"]));

    let sys = template_case("system_user");
    let out = run_ok(&[
        "chat",
        "--model",
        tiny(),
        "--system",
        sys["messages"][0]["content"].as_str().unwrap(),
        "--prompt",
        sys["messages"][1]["content"].as_str().unwrap(),
        "--dry-run",
    ]);
    assert_eq!(out, sys["rendered"].as_str().unwrap());

    // --system replaces the system message of a --messages file.
    let tmp = tempfile::tempdir().unwrap();
    let mut msgs = sys["messages"].clone();
    msgs[0]["content"] = "to be replaced".into();
    let file = write_json(tmp.path(), "m.json", &msgs);
    let out = run_ok(&[
        "chat",
        "--model",
        tiny(),
        "--messages",
        &file,
        "--system",
        sys["messages"][0]["content"].as_str().unwrap(),
        "--dry-run",
    ]);
    assert_eq!(out, sys["rendered"].as_str().unwrap());
}

#[test]
fn think_flags_map_to_enable_thinking() {
    for (name, flag) in [
        ("enable_thinking_true", Some("--think")),
        ("enable_thinking_false", Some("--no-think")),
        ("enable_thinking_unset", None),
    ] {
        let c = template_case(name);
        let mut args = vec![
            "chat".to_string(),
            "--model".into(),
            tiny().into(),
            "--dry-run".into(),
            "--prompt".into(),
            c["messages"][0]["content"].as_str().unwrap().into(),
        ];
        args.extend(flag.map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(run_ok(&args), c["rendered"].as_str().unwrap(), "{name}");
    }
    assert!(run_ok(&[
        "chat",
        "--model",
        tiny(),
        "--prompt",
        "x",
        "--no-think",
        "--dry-run"
    ])
    .ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
    let o = expert(&[
        "chat",
        "--model",
        tiny(),
        "--prompt",
        "x",
        "--think",
        "--no-think",
        "--dry-run",
    ]);
    assert_eq!(o.status.code(), Some(2), "clap rejects the pair");
}

#[test]
fn soft_switches_reach_the_model_unchanged() {
    for text in [
        "Why is the sky blue? /no_think",
        "/think Prove it.",
        "a /think b /no_think",
    ] {
        let out = run_ok(&["chat", "--model", tiny(), "--prompt", text, "--dry-run"]);
        assert_eq!(
            out,
            format!("<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")
        );
    }
}

#[test]
fn user_text_cannot_inject_control_tokens() {
    let c = template_case("injection_special_text_in_user_content");
    let content = c["messages"][0]["content"].as_str().unwrap();
    assert!(content.contains("<|im_end|>") && content.contains("<|im_start|>system"));
    for extra in [&[][..], &["--system", "Be safe."][..]] {
        let mut args = vec![
            "chat",
            "--model",
            tiny(),
            "--prompt",
            content,
            "--dry-run",
            "--json",
        ];
        args.extend_from_slice(extra);
        let v = run_json(&args);
        let got = ids(&v["prompt_ids"]);
        if extra.is_empty() {
            assert_eq!(v["prompt"], c["rendered"]);
            assert_eq!(got, ids(&c["ids_content_as_text"]));
            assert_ne!(
                got,
                ids(&c["ids"]),
                "the naive encoding would obey the injected markers"
            );
        }
        // <|im_start|> / <|im_end|> only where the template puts them: one
        // per turn header and end, plus the generation prompt.
        let turns = 1 + usize::from(!extra.is_empty());
        let count = |id: u32| got.iter().filter(|&&x| x == id).count();
        assert_eq!(
            (count(151644), count(151645)),
            (turns + 1, turns),
            "{extra:?}"
        );
        // The prompt still ends with the template's own generation prompt.
        assert_eq!(got.last_chunk::<3>().unwrap(), &[151644, 77091, 198]);
    }
}

#[test]
fn malformed_messages_files_fail_with_one_line_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = [
        (
            "object.json",
            r#"{"role": "user", "content": "hi"}"#,
            "expected a list of messages",
        ),
        (
            "role.json",
            r#"[{"role": "wizard", "content": "hi"}]"#,
            "[0].role",
        ),
        (
            "content.json",
            r#"[{"role": "user"}]"#,
            "[0].content: missing",
        ),
        (
            "null.json",
            r#"[{"role": "user", "content": null}]"#,
            "[0].content",
        ),
        ("syntax.json", "[", "invalid JSON"),
    ];
    for (name, text, what) in bad {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        let e = run_err(&[
            "chat",
            "--model",
            tiny(),
            "--messages",
            p.to_str().unwrap(),
            "--dry-run",
        ]);
        assert!(e.contains(name) && e.contains(what), "{name}: {e}");
    }
    let e = run_err(&[
        "chat",
        "--model",
        tiny(),
        "--messages",
        "/no/such/conv.json",
        "--dry-run",
    ]);
    assert!(e.contains("/no/such/conv.json"), "{e}");
    // A conversation that ends with the assistant has nothing to answer.
    let p = tmp.path().join("done.json");
    std::fs::write(
        &p,
        r#"[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]"#,
    )
    .unwrap();
    let e = run_err(&[
        "chat",
        "--model",
        tiny(),
        "--messages",
        p.to_str().unwrap(),
        "--max-tokens",
        "2",
    ]);
    assert!(
        e.contains("done.json") && e.contains("ends with an assistant message"),
        "{e}"
    );
}

#[test]
fn raw_feeds_the_text_without_template() {
    let text = "The capital of Brazil is <|im_end|>";
    let out = run_ok(&[
        "chat",
        "--model",
        tiny(),
        "--prompt",
        text,
        "--raw",
        "--dry-run",
    ]);
    assert_eq!(out, text);
    let v = run_json(&[
        "chat",
        "--model",
        tiny(),
        "--prompt",
        text,
        "--raw",
        "--dry-run",
        "--json",
    ]);
    let tok = tokenizers::Tokenizer::from_file(fixture("tiny").join("tokenizer.json")).unwrap();
    // Even raw text never produces control tokens.
    assert!(!ids(&v["prompt_ids"]).contains(&151645));
    assert_eq!(tok.decode(&ids(&v["prompt_ids"]), false).unwrap(), text);
    let e = run_err(&[
        "chat",
        "--model",
        tiny(),
        "--prompt",
        "x",
        "--raw",
        "--system",
        "s",
    ]);
    assert!(e.contains("--raw") && e.contains("--system"), "{e}");
    let e = run_err(&["chat", "--model", tiny(), "--raw"]);
    assert!(e.contains("--raw needs --prompt"), "{e}");
}

#[test]
fn model_without_template_falls_back_to_plain_text_with_a_warning() {
    let (_tmp, dir) = tiny_variant();
    let mut cfg = read_json(&fixture("tiny").join("tokenizer_config.json"));
    cfg.as_object_mut().unwrap().remove("chat_template");
    replace(&dir, "tokenizer_config.json", &cfg.to_string());
    let d = dir.to_str().unwrap();
    let o = expert(&[
        "chat",
        "--model",
        d,
        "--system",
        "Be brief.",
        "--prompt",
        "Hello there",
        "--dry-run",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.starts_with("warning: ") && e.contains("no chat template") && e.contains("plain text"),
        "{e}"
    );
    assert_eq!(stdout(&o), "Be brief.\n\nHello there");
    // Generation works too, and the prompt has no chat markup at all.
    let o = expert(&[
        "chat",
        "--model",
        d,
        "--prompt",
        "Hello there",
        "--max-tokens",
        "3",
        "--json",
        "--temperature",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("no chat template"));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["prompt_tokens"], 2); // "Hello", " there"
}

// ---------------------------------------------------------------------------
// Generation against transformers' greedy answers

#[test]
fn one_shot_greedy_answers_match_transformers_on_whole_conversations() {
    let g = chat_golden();
    let tmp = tempfile::tempdir().unwrap();
    for conv in g["conversations"].as_array().unwrap() {
        let n = conv["max_new_tokens"].to_string();
        for (k, turn) in conv["turns"].as_array().unwrap().iter().enumerate() {
            // The whole conversation from a file, this turn's user message included.
            let file = write_json(
                tmp.path(),
                &format!("{}-{k}.json", conv["name"].as_str().unwrap()),
                &turn["messages"],
            );
            let mut args = vec![
                "chat".to_string(),
                "--model".into(),
                tiny().into(),
                "--messages".into(),
                file,
                "--temperature".into(),
                "0".into(),
                "--max-tokens".into(),
                n.clone(),
                "--json".into(),
            ];
            args.extend(thinking_flag(&conv["enable_thinking"]).map(String::from));
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let v = run_json(&a);
            let what = format!("{} turn {k}", conv["name"]);
            assert_eq!(ids(&v["token_ids"]), ids(&turn["new_ids"]), "{what}");
            assert_eq!(v["text"], turn["text"], "{what}");
            assert_eq!(
                v["prompt_tokens"].as_u64().unwrap() as usize,
                ids(&turn["prompt_ids"]).len(),
                "{what}"
            );
            assert_eq!(v["stop_reason"], "length");

            // The same prompt through --system / --prompt when it is one turn.
            if k == 0 {
                let mut args = vec![
                    "chat".to_string(),
                    "--model".into(),
                    tiny().into(),
                    "--prompt".into(),
                    turn["user"].as_str().unwrap().into(),
                    "--temperature".into(),
                    "0".into(),
                    "--max-tokens".into(),
                    n.clone(),
                    "--json".into(),
                ];
                if let Some(s) = conv["system"].as_str() {
                    args.extend(["--system".to_string(), s.to_string()]);
                }
                args.extend(thinking_flag(&conv["enable_thinking"]).map(String::from));
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                assert_eq!(
                    ids(&run_json(&a)["token_ids"]),
                    ids(&turn["new_ids"]),
                    "{what} via --prompt"
                );
            }
        }
    }
}

#[test]
fn json_output_has_text_ids_and_stats() {
    let v = run_json(&[
        "chat",
        "--model",
        tiny(),
        "--prompt",
        "Hi",
        "--json",
        "--temperature",
        "0",
        "--max-tokens",
        "8",
    ]);
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    for k in ["text", "token_ids", "prompt_tokens", "stop_reason", "stats"] {
        assert!(keys.iter().any(|x| *x == k), "{k} missing: {keys:?}");
    }
    let n = v["token_ids"].as_array().unwrap().len();
    assert!(n <= 8);
    let s = &v["stats"];
    assert_eq!(s["generated_tokens"].as_u64().unwrap() as usize, n);
    assert_eq!(s["prompt_tokens"], v["prompt_tokens"]);
    assert_eq!(
        s["prefill_tokens"], v["prompt_tokens"],
        "a fresh process prefills everything"
    );
    for k in [
        "time_to_first_token_s",
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
    ] {
        assert!(s[k].as_f64().unwrap() >= 0.0, "{k}");
    }
    assert_eq!(s["stop_reason"], v["stop_reason"]);
}

#[test]
fn stats_go_to_stderr_and_stdout_carries_only_the_answer() {
    let turn = &conversation("two_turns")["turns"][0];
    let o = expert(&[
        "chat",
        "--model",
        tiny(),
        "--prompt",
        turn["user"].as_str().unwrap(),
        "--temperature",
        "0",
        "--max-tokens",
        "8",
        "--stats",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{}\n", turn["text"].as_str().unwrap()));
    let e = stderr(&o);
    for (label, value) in [
        ("prompt tokens:", ids(&turn["prompt_ids"]).len().to_string()),
        ("time to first token:", " s".into()),
        ("prefill speed:", "tok/s".into()),
        ("decode speed:", "tok/s".into()),
        ("generated tokens:", "8".into()),
        ("stop reason:", "length".into()),
    ] {
        let line = e
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("{label} missing: {e}"));
        assert!(line.contains(&value), "{line}");
    }
}

/// Splits the golden greedy text of `turn` at a token boundary and returns
/// (stop string spanning it, text before the stop string).
fn spanning_stop(turn: &Value) -> (String, String) {
    let tok = tokenizers::Tokenizer::from_file(fixture("tiny").join("tokenizer.json")).unwrap();
    let new = ids(&turn["new_ids"]);
    let text = turn["text"].as_str().unwrap();
    for k in 1..new.len() {
        let before = tok.decode(&new[..k], false).unwrap();
        let piece = tok.decode(&new[k..k + 1], false).unwrap();
        let (Some(a), Some(b)) = (
            before.chars().last(),
            piece.chars().find(|c| !c.is_whitespace()),
        ) else {
            continue;
        };
        if a.is_whitespace() || !text.starts_with(&before) {
            continue;
        }
        let stop = format!("{a}{}", &piece[..piece.find(b).unwrap() + b.len_utf8()]);
        let at = text.find(&stop).unwrap();
        return (stop, text[..at].to_string());
    }
    panic!("no token boundary to span in {text:?}");
}

#[test]
fn stop_strings_spanning_tokens_stop_and_are_not_printed() {
    let turn = &conversation("two_turns")["turns"][0];
    let (stop, before) = spanning_stop(turn);
    let user = turn["user"].as_str().unwrap();
    let base = [
        "chat",
        "--model",
        tiny(),
        "--prompt",
        user,
        "--temperature",
        "0",
        "--max-tokens",
        "8",
    ];
    let mut args = base.to_vec();
    args.extend(["--stop", "never appears", "--stop", &stop, "--json"]);
    let v = run_json(&args);
    assert_eq!(v["stop_reason"], "stop", "stop {stop:?}");
    assert_eq!(v["text"], before.as_str());
    let mut args = base.to_vec();
    args.extend(["--stop", &stop]);
    assert_eq!(run_ok(&args), format!("{before}\n"));
}

#[test]
fn every_eos_id_of_generation_config_stops_generation() {
    // Declare the 4th greedy token an eos id, first or second in the list:
    // generation must stop there with stop_reason "eos" and not print it.
    let turn = &conversation("two_turns")["turns"][0];
    let new = ids(&turn["new_ids"]);
    let k = new
        .iter()
        .position(|&t| new[..3].iter().all(|&p| p != t))
        .unwrap();
    let tok = tokenizers::Tokenizer::from_file(fixture("tiny").join("tokenizer.json")).unwrap();
    for list in [vec![new[k], 151643], vec![151645, new[k]]] {
        let (_tmp, dir) = tiny_variant();
        let mut gc = read_json(&fixture("tiny").join("generation_config.json"));
        gc["eos_token_id"] = serde_json::json!(list);
        replace(&dir, "generation_config.json", &gc.to_string());
        let v = run_json(&[
            "chat",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            turn["user"].as_str().unwrap(),
            "--temperature",
            "0",
            "--max-tokens",
            "8",
            "--json",
        ]);
        assert_eq!(v["stop_reason"], "eos", "{list:?}");
        assert_eq!(ids(&v["token_ids"]), new[..=k], "{list:?}");
        assert_eq!(v["text"], tok.decode(&new[..k], false).unwrap());
    }
    // The fixture's own list: both Qwen3 end tokens.
    let gc = read_json(&fixture("tiny").join("generation_config.json"));
    assert_eq!(ids(&gc["eos_token_id"]), [151645, 151643]);
}

#[test]
fn hide_thinking_shows_only_the_answer() {
    // A template whose generation prompt opens the thinking block (as
    // Qwen3-Thinking-2507's does): the random model never closes it, so the
    // whole answer is thinking.
    let (_tmp, dir) = tiny_variant();
    replace(
        &dir,
        "chat_template.jinja",
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n<think>\n",
    );
    let d = dir.to_str().unwrap();
    let base = [
        "chat",
        "--model",
        d,
        "--prompt",
        "Hi",
        "--temperature",
        "0",
        "--max-tokens",
        "6",
    ];
    let shown = run_ok(&base);
    assert!(shown.trim().len() > 3, "{shown:?}");
    let mut args = base.to_vec();
    args.push("--hide-thinking");
    assert_eq!(run_ok(&args), "\n");
    args.push("--json");
    let v = run_json(&args);
    assert_eq!(v["text"], "");
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 6);
    // Not a terminal: the thinking is printed plainly, no escape codes.
    assert!(!shown.contains('\x1b'));
}

// ---------------------------------------------------------------------------
// Sampling flags

#[test]
fn top_k_1_tiny_top_p_and_high_min_p_are_greedy_through_the_cli() {
    let turn = &conversation("two_turns")["turns"][0];
    let user = turn["user"].as_str().unwrap();
    // min-p 0.95 keeps only tokens within ln(1/0.95) = 0.051 of the top logit
    // at T = 1; every greedy step of the golden has a larger margin.
    assert!(turn["min_margin"].as_f64().unwrap() > 0.06);
    for flags in [
        &["--temperature", "1.5", "--top-k", "1"][..],
        &["--temperature", "1.5", "--top-p", "0.000001"][..],
        &[
            "--temperature",
            "1",
            "--min-p",
            "0.95",
            "--top-k",
            "100",
            "--top-p",
            "1",
        ][..],
    ] {
        let mut args = vec![
            "chat",
            "--model",
            tiny(),
            "--prompt",
            user,
            "--max-tokens",
            "8",
            "--json",
            "--seed",
            "5",
        ];
        args.extend_from_slice(flags);
        assert_eq!(
            ids(&run_json(&args)["token_ids"]),
            ids(&turn["new_ids"]),
            "{flags:?}"
        );
    }
}

#[test]
fn penalty_flags_change_a_repetitive_answer() {
    // The golden greedy answer repeats a token; penalties must avoid that.
    let turn = &conversation("two_turns")["turns"][0];
    let new = ids(&turn["new_ids"]);
    let repeated = new[new.len() - 1];
    assert!(new.iter().filter(|&&t| t == repeated).count() >= 3);
    let user = turn["user"].as_str().unwrap();
    let run = |flags: &[&str]| {
        let mut args = vec![
            "chat",
            "--model",
            tiny(),
            "--prompt",
            user,
            "--temperature",
            "0",
            "--max-tokens",
            "8",
            "--json",
        ];
        args.extend_from_slice(flags);
        ids(&run_json(&args)["token_ids"])
    };
    for flags in [
        &["--repeat-penalty", "3"][..],
        &["--presence-penalty", "5"][..],
    ] {
        let got = run(flags);
        assert_ne!(got, new, "{flags:?}");
        assert!(
            got.iter().filter(|&&t| t == repeated).count() <= 1,
            "{flags:?}: {got:?}"
        );
        assert_eq!(
            got[..new.iter().position(|&t| t == repeated).unwrap() + 1],
            new[..new.iter().position(|&t| t == repeated).unwrap() + 1]
        );
    }
    // --repeat-last-n 0 switches them off again.
    assert_eq!(run(&["--repeat-penalty", "3", "--repeat-last-n", "0"]), new);
    assert_eq!(run(&["--presence-penalty", "0"]), new);
}

#[test]
fn same_seed_same_text_other_seed_other_text() {
    let run = |seed: &str| {
        run_json(&[
            "chat",
            "--model",
            tiny(),
            "--prompt",
            "Tell me a story",
            "--seed",
            seed,
            "--temperature",
            "0.8",
            "--max-tokens",
            "12",
            "--json",
        ])
    };
    let (a, b, c) = (run("42"), run("42"), run("43"));
    assert_eq!(a["token_ids"], b["token_ids"]);
    assert_eq!(a["text"], b["text"]);
    assert_ne!(a["token_ids"], c["token_ids"]);
}

#[test]
fn invalid_sampling_values_are_one_line_errors_before_loading() {
    // A model whose weights cannot load: a validation error must come first.
    let (_tmp, dir) = tiny_variant();
    replace(&dir, "model.safetensors", "not a safetensors file");
    let d = dir.to_str().unwrap();
    let e = |flags: &[&str]| {
        let mut args = vec!["chat", "--model", d, "--prompt", "x"];
        args.extend_from_slice(flags);
        run_err(&args)
    };
    assert_eq!(
        e(&["--top-p", "1.5"]),
        "error: --top-p must be in (0, 1], got 1.5"
    );
    assert_eq!(
        e(&["--top-p", "0"]),
        "error: --top-p must be in (0, 1], got 0"
    );
    assert!(e(&["--temperature", "-1"]).contains("--temperature"));
    assert!(e(&["--temperature", "NaN"]).contains("--temperature"));
    assert!(e(&["--min-p", "1"]).contains("--min-p"));
    assert!(e(&["--repeat-penalty", "0"]).contains("--repeat-penalty"));
    assert!(e(&["--max-tokens", "0"]).contains("--max-tokens"));
    // top-k 0 while sampling: rejected, whether the temperature comes from a
    // flag or from generation_config.json (0.6 here).
    assert!(e(&["--top-k", "0", "--temperature", "0.7"]).contains("--top-k"));
    assert!(e(&["--top-k", "0"]).contains("--top-k"));
    // ...while greedy it is harmless: the run gets as far as the weights.
    let err = e(&["--top-k", "0", "--temperature", "0"]);
    assert!(err.contains("model.safetensors"), "{err}");
    // A bad generation_config.json value names the file.
    let (_tmp2, dir2) = tiny_variant();
    replace(&dir2, "generation_config.json", r#"{"top_p": 7}"#);
    let err = run_err(&["chat", "--model", dir2.to_str().unwrap(), "--prompt", "x"]);
    assert!(
        err.contains("generation_config.json") && err.contains("top_p"),
        "{err}"
    );
}

#[test]
fn context_limits_are_enforced() {
    let e = run_err(&[
        "chat",
        "--model",
        tiny(),
        "--prompt",
        "Hello there, how are you?",
        "--context",
        "8",
        "--max-tokens",
        "2",
    ]);
    assert!(e.contains("context window"), "{e}");
    let e = run_err(&[
        "chat",
        "--model",
        tiny(),
        "--prompt",
        "x",
        "--context",
        "100000",
    ]);
    assert!(e.contains("--context") && e.contains("512"), "{e}");
    // Without --max-tokens the answer stops at the end of the context window.
    let v = run_json(&[
        "chat",
        "--model",
        tiny(),
        "--prompt",
        "Hi",
        "--context",
        "20",
        "--json",
        "--temperature",
        "0",
    ]);
    let p = v["prompt_tokens"].as_u64().unwrap();
    assert_eq!(v["token_ids"].as_array().unwrap().len() as u64, 20 - p);
    assert_eq!(v["stop_reason"], "length");
}

// ---------------------------------------------------------------------------
// KV-cache reuse across turns, at library level

mod library {
    use super::*;
    use expert::chat::{encode_prompt, ChatTemplate, Message, RenderOptions};
    use expert::generate::{Engine, GenerateOptions};
    use expert::sampling::{Sampler, SamplingParams};
    use expert::tokenizer::Tokenizer;

    struct Chat {
        engine: Engine,
        tok: Tokenizer,
        tmpl: ChatTemplate,
    }

    fn chat() -> Chat {
        let dir = fixture("tiny");
        let model =
            expert::load::dir_model(&dir, candle_core::DType::F32, &candle_core::Device::Cpu)
                .unwrap();
        Chat {
            engine: Engine::new(model),
            tok: Tokenizer::from_dir(&dir).unwrap(),
            tmpl: ChatTemplate::from_dir(&dir).unwrap().unwrap(),
        }
    }

    impl Chat {
        fn prompt(&self, messages: &[Message]) -> Vec<u32> {
            let opts = RenderOptions {
                add_generation_prompt: true,
                enable_thinking: None,
            };
            encode_prompt(&self.tok, &self.tmpl, messages, &opts)
                .unwrap()
                .1
        }

        fn answer(&mut self, prompt: &[u32], n: usize) -> expert::generate::Generation {
            let mut sampler = Sampler::new(SamplingParams::greedy()).unwrap();
            let opts = GenerateOptions {
                max_tokens: n,
                eos_ids: vec![151645, 151643],
                stop_strings: vec![],
            };
            self.engine
                .generate(
                    prompt,
                    &self.tok,
                    &mut sampler,
                    &opts,
                    None,
                    &mut |_| Ok(()),
                )
                .unwrap()
        }
    }

    #[test]
    fn second_turn_with_cache_equals_fresh_prefill_and_transformers() {
        let conv = conversation("two_turns");
        let turns = conv["turns"].as_array().unwrap();
        let mut c = chat();
        let mut messages = vec![Message::new("user", turns[0]["user"].as_str().unwrap())];
        let p1 = c.prompt(&messages);
        assert_eq!(p1, ids(&turns[0]["prompt_ids"]));
        let a1 = c.answer(&p1, 8);
        assert_eq!(a1.token_ids, ids(&turns[0]["new_ids"]));
        messages.push(Message::new("assistant", a1.text.as_str()));
        messages.push(Message::new("user", turns[1]["user"].as_str().unwrap()));
        let p2 = c.prompt(&messages);
        assert_eq!(p2, ids(&turns[1]["prompt_ids"]));

        let cached = c.answer(&p2, 8);
        // Only what follows the cached prefix was prefilled.
        let common = p1.len() + 7; // the last sampled id was never fed back
        assert!(p2[..common] == c.engine.cached_ids()[..common]);
        assert_eq!(cached.stats.prefill_tokens, p2.len() - common);
        assert!(cached.stats.prefill_tokens < cached.stats.prompt_tokens);

        c.engine.reset();
        let fresh = c.answer(&p2, 8);
        assert_eq!(fresh.stats.prefill_tokens, p2.len());
        assert_eq!(cached.token_ids, fresh.token_ids);
        assert_eq!(
            cached.token_ids,
            ids(&turns[1]["new_ids"]),
            "transformers' greedy answer"
        );
    }

    #[test]
    fn thinking_dropped_from_history_truncates_the_cache_to_the_common_prefix() {
        let mut c = chat();
        let mut messages = vec![Message::new("user", "What is 2+2?")];
        let p1 = c.prompt(&messages);
        // The first answer, as a thinking model would have produced it: fed
        // through the cache token by token after the prompt.
        let answer = "<think>\nTwo plus two.\n</think>\n\nIt is 4.";
        let answer_ids = c.tok.encode(answer).unwrap();
        let mut fed = p1.clone();
        fed.extend(&answer_ids);
        c.engine.prefill(&fed).unwrap();
        assert_eq!(c.engine.cached_ids(), &fed[..]);

        messages.push(Message::new("assistant", answer));
        messages.push(Message::new("user", "And 3+3?"));
        let p2 = c.prompt(&messages);
        // The template dropped the thinking: the texts part right after the
        // assistant header, so exactly the first prompt is reused.
        let common = p2.iter().zip(&fed).take_while(|(a, b)| a == b).count();
        assert_eq!(common, p1.len());
        let text = c.tok.decode(&p2, false).unwrap();
        assert!(
            !text.contains("Two plus two") && text.contains("It is 4."),
            "{text}"
        );

        let cached = c.answer(&p2, 6);
        assert_eq!(cached.stats.prefill_tokens, p2.len() - p1.len());
        c.engine.reset();
        let fresh = c.answer(&p2, 6);
        assert_eq!(cached.token_ids, fresh.token_ids);

        // Logits too: the cached and fresh runs agree closely at every step.
        c.engine.reset();
        c.engine.prefill(&fed).unwrap();
        let (a, _) = c.engine.prefill(&p2).unwrap();
        c.engine.reset();
        let (b, _) = c.engine.prefill(&p2).unwrap();
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "max |logit difference| {diff}");
    }
}

// ---------------------------------------------------------------------------
// A GGUF model: the chat template embedded in the file

/// SmolLM2-135M-Instruct Q4_1 as a command-line argument (see
/// `common::smollm2_gguf`).
fn smollm2() -> Option<String> {
    common::smollm2_gguf().map(|p| p.to_str().unwrap().to_string())
}

#[test]
fn gguf_embedded_template_dry_run_equals_goldens() {
    let Some(model) = smollm2() else { return };
    let g = read_json(&root().join("tests/fixtures/templates/smollm2.json"));
    let tmp = tempfile::tempdir().unwrap();
    for c in g["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let file = write_json(tmp.path(), &format!("{name}.json"), &c["messages"]);
        let mut args = vec!["chat", "--model", &model, "--messages", &file, "--dry-run"];
        if !c["add_generation_prompt"].as_bool().unwrap() {
            args.push("--no-generation-prompt");
        }
        let out = run_ok(&args);
        assert_eq!(out, c["rendered"].as_str().unwrap(), "case {name}");
        args.push("--json");
        let v = run_json(&args);
        assert_eq!(
            ids(&v["prompt_ids"]),
            ids(&c["ids_content_as_text"]),
            "case {name}"
        );
    }
}
