//! A running chat never loses what the user typed or said: invalid UTF-8
//! lines are skipped, lines typed while an answer streams are sent next,
//! SIGTERM and SIGHUP save the interrupted answer and exit cleanly (during
//! prefill and decode, one-shot and REPL), and what a model emits reaches a
//! terminal escaped. On the `tiny` fixture, and SmolLM2 where a prefill must
//! be long enough to land a signal in.

mod common;

use common::process::*;
use common::*;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn tiny() -> String {
    fixture("tiny").to_str().unwrap().to_string()
}

fn spawn_piped(args: &[&str]) -> (Child, std::process::ChildStdin, Captured, Captured) {
    let mut child = cmd(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Captured::spawn(child.stdout.take().unwrap());
    let err = Captured::spawn(child.stderr.take().unwrap());
    let stdin = child.stdin.take().unwrap();
    (child, stdin, out, err)
}

// ---------------------------------------------------------------------------
// Input

#[test]
fn invalid_utf8_line_is_reported_and_skipped() {
    let t = tiny();
    let mut script = b"Hi\n".to_vec();
    script.extend_from_slice(b"caf\xe9 au lait\n/params\n\"\"\"\nblock \xff\n\"\"\"\nHi again\n");
    let mut child = cmd(&[
        "chat",
        "--model",
        &t,
        "--max-tokens",
        "3",
        "--temperature",
        "0",
        "--json",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    child.stdin.take().unwrap().write_all(&script).unwrap();
    let o = child.wait_with_output().unwrap();
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(
        answers(&out).len(),
        2,
        "both good messages answered: {out}\n{err}"
    );
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 2, "{err}");
    assert!(
        errors[0].contains("stdin line 2")
            && errors[0].contains("UTF-8")
            && errors[0].contains("0xe9"),
        "{err}"
    );
    assert!(errors[1].contains("stdin line 5"), "{err}");
    assert!(err.contains("temperature"), "/params still ran: {err}");
}

#[test]
fn lines_typed_while_an_answer_streams_are_sent_next() {
    let tmp = tempfile::tempdir().unwrap();
    let session = tmp.path().join("s.json");
    let t = tiny();
    let (mut child, mut stdin, out, err) = spawn_piped(&[
        "chat",
        "--model",
        &t,
        "--max-tokens",
        "40",
        "--session",
        session.to_str().unwrap(),
    ]);
    writeln!(stdin, "Tell me a story.").unwrap();
    out.wait(0, "the answer to start", |t| t.chars().count() > 3);
    // Typed while the first answer streams.
    write!(stdin, "Second message\n/set max_tokens 2\nThird\n").unwrap();
    drop(stdin);
    assert_eq!(wait_exit(&mut child), 0, "{}", err.text());
    let saved = messages(&session);
    let users: Vec<&str> = saved
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["Tell me a story.", "Second message", "Third"]);
    assert_eq!(saved.len(), 6, "{saved:?}");
    assert!(saved[1].get("interrupted").is_none());
}

// ---------------------------------------------------------------------------
// Signals

fn sigterm_or_sighup_mid_answer_in_the_repl(sig: i32, code: i32, name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let session = tmp.path().join("s.json");
    let t = tiny();
    let (mut child, mut stdin, out, err) = spawn_piped(&[
        "chat",
        "--model",
        &t,
        "--session",
        session.to_str().unwrap(),
    ]);
    writeln!(stdin, "Tell me a long story.").unwrap();
    out.wait(0, "the answer to start", |t| t.chars().count() > 5);
    let start = Instant::now();
    signal(&child, sig);
    assert_eq!(wait_exit(&mut child), code, "{}", err.text());
    assert!(start.elapsed() < Duration::from_secs(10), "exited promptly");
    drop(stdin);
    let text = out.text();
    assert!(text.trim_end().ends_with("[interrupted]"), "{text}");
    let saved = messages(&session);
    assert_eq!(saved.len(), 2, "{saved:?}");
    assert_eq!(saved[0], msg("user", "Tell me a long story."));
    assert_eq!(saved[1]["interrupted"], true);
    let partial = saved[1]["content"].as_str().unwrap();
    assert!(
        !partial.is_empty() && text.contains(partial),
        "kept as shown"
    );
    let e = err.text();
    assert!(
        e.contains(&format!("{name} received")) && e.contains("s.json"),
        "{e}"
    );
    // Written atomically: no temporary file left beside it.
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

#[cfg(unix)]
#[test]
fn sigterm_mid_answer_saves_it_and_exits() {
    sigterm_or_sighup_mid_answer_in_the_repl(libc::SIGTERM, 143, "SIGTERM");
}

#[cfg(unix)]
#[test]
fn sighup_mid_answer_saves_it_and_exits() {
    sigterm_or_sighup_mid_answer_in_the_repl(libc::SIGHUP, 129, "SIGHUP");
}

#[cfg(unix)]
#[test]
fn sigterm_one_shot_mid_answer_prints_the_partial_answer() {
    let t = tiny();
    let (mut child, stdin, out, err) =
        spawn_piped(&["chat", "--model", &t, "--prompt", "Tell me a long story."]);
    drop(stdin);
    out.wait(0, "the answer to start", |t| t.chars().count() > 5);
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child), 143, "{}", err.text());
    assert!(
        out.text().trim_end().ends_with("[interrupted]"),
        "{}",
        out.text()
    );
    assert!(err.text().contains("SIGTERM received"), "{}", err.text());
}

#[cfg(unix)]
#[test]
fn sigterm_at_the_prompt_exits_at_once_with_the_session_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let session = tmp.path().join("s.json");
    let t = tiny();
    let (mut child, mut stdin, out, err) = spawn_piped(&[
        "chat",
        "--model",
        &t,
        "--max-tokens",
        "3",
        "--json",
        "--session",
        session.to_str().unwrap(),
    ]);
    writeln!(stdin, "Hi").unwrap();
    out.wait(0, "the answer", |t| t.contains('\n'));
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child), 143, "{}", err.text());
    drop(stdin);
    assert_eq!(messages(&session).len(), 2);
}

/// The SmolLM2 GGUF: $EXPERT_SMOLLM2_GGUF (scripts/test.sh), else the
/// fetch script's cache; None (skipped) unless EXPERT_REQUIRE_TEST_MODEL=1.
fn smollm2() -> Option<PathBuf> {
    let p = match std::env::var_os("EXPERT_SMOLLM2_GGUF") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/expert-test-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    if p.is_file() {
        return Some(p);
    }
    assert!(
        std::env::var("EXPERT_REQUIRE_TEST_MODEL").map_or(true, |v| v != "1"),
        "{} not found and EXPERT_REQUIRE_TEST_MODEL=1",
        p.display()
    );
    eprintln!("SKIPPED: {} not found", p.display());
    None
}

/// A message long enough that its prefill takes a while (~1000 tokens).
fn long_message() -> String {
    "Please summarise the following words carefully. ".repeat(120)
}

#[cfg(unix)]
#[test]
fn sigterm_during_prefill_in_the_repl() {
    let Some(model) = smollm2() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let session = tmp.path().join("s.json");
    let (mut child, mut stdin, out, err) = spawn_piped(&[
        "chat",
        "--model",
        model.to_str().unwrap(),
        "--max-tokens",
        "1",
        "--json",
        "--session",
        session.to_str().unwrap(),
    ]);
    writeln!(stdin, "Hi").unwrap();
    let at = out.wait(0, "the first answer", |t| t.contains('\n'));
    writeln!(stdin, "{}", long_message()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child), 143, "{}", err.text());
    drop(stdin);
    let text = out.text();
    let second: Value = serde_json::from_str(text[at..].trim()).unwrap();
    // Stopped before its first token: the signal landed in the prefill.
    assert_eq!(second["stop_reason"], "interrupted", "{second}");
    assert_eq!(second["token_ids"].as_array().unwrap().len(), 0);
    assert!(second["prompt_tokens"].as_u64().unwrap() > 500);
    let saved = messages(&session);
    assert_eq!(saved.len(), 4, "{saved:?}");
    assert_eq!(saved[2], msg("user", &long_message()));
    assert_eq!(saved[3]["content"], "");
    assert_eq!(saved[3]["interrupted"], true);
}

#[cfg(unix)]
#[test]
fn sigterm_during_prefill_one_shot() {
    let Some(model) = smollm2() else { return };
    let prompt = long_message();
    // The signal must land after loading; retried with a longer wait if
    // it came while the model was still loading.
    for wait_ms in [1500, 4000, 10000] {
        let (mut child, stdin, out, err) = spawn_piped(&[
            "chat",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            &prompt,
            "--json",
        ]);
        drop(stdin);
        std::thread::sleep(Duration::from_millis(wait_ms));
        signal(&child, libc::SIGTERM);
        assert_eq!(wait_exit(&mut child), 143, "{}", err.text());
        let text = out.text();
        if text.trim().is_empty() {
            continue; // still loading
        }
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["stop_reason"], "interrupted", "{v}");
        assert!(err.text().contains("SIGTERM received"));
        if v["token_ids"].as_array().unwrap().is_empty() {
            return;
        }
    }
    panic!("the signal never landed in the prefill");
}

// ---------------------------------------------------------------------------
// What the model emits, on a terminal

/// The `tiny` fixture with an untied lm_head that only ever picks ESC
/// (0x1b) or BEL (0x07): every token it generates is a control character.
fn control_character_model(dir: &Path) {
    let src = fixture("tiny");
    for f in [
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut config = read_json(&src.join("config.json"));
    config["tie_word_embeddings"] = false.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let vocab = read_json(&dir.join("tokenizer.json"))["model"]["vocab"].clone();
    // Byte-level BPE: bytes 0..=32 are the characters U+0100 + byte.
    let id = |b: u32| {
        vocab[char::from_u32(0x100 + b).unwrap().to_string()]
            .as_u64()
            .unwrap() as usize
    };
    let (esc, bel) = (id(0x1b), id(0x07));
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let embed = st.tensor("model.embed_tokens.weight").unwrap();
    let (rows, cols) = (embed.shape()[0], embed.shape()[1]);
    // h·row(ESC) = -h·row(BEL): one of the two always wins (all else is 0).
    let mut w = vec![0f32; rows * cols];
    for c in 0..cols {
        w[esc * cols + c] = 1.0;
        w[bel * cols + c] = -1.0;
    }
    let lm_head: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    views.push((
        "lm_head.weight".into(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![rows, cols], &lm_head)
            .unwrap(),
    ));
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
}

#[cfg(unix)]
#[test]
fn control_characters_from_the_model_are_escaped_on_a_terminal_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    control_character_model(&dir);
    let m = dir.to_str().unwrap();
    let args = [
        "chat",
        "--model",
        m,
        "--max-tokens",
        "8",
        "--temperature",
        "0",
    ];
    // A pipe gets the text exactly as generated; so does --json.
    let mut a = args.to_vec();
    a.extend(["--prompt", "Hi"]);
    let o = expert(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    let raw: Vec<u8> = o
        .stdout
        .iter()
        .copied()
        .filter(|&b| b == 0x1b || b == 0x07)
        .collect();
    assert_eq!(raw.len(), 8, "{:?}", stdout(&o));
    a.push("--json");
    let v: Value = serde_json::from_str(stdout(&expert(&a)).trim()).unwrap();
    assert_eq!(
        v["text"]
            .as_str()
            .unwrap()
            .chars()
            .filter(|c| c.is_control())
            .count(),
        8
    );
    // A terminal sees them escaped.
    let mut c = cmd(&args);
    c.env("TERM", "xterm");
    let (mut child, master) = spawn_pty(c);
    let out = Captured::spawn(master.try_clone().unwrap());
    let mut keys = master;
    let at = out.wait_for(0, ">>> ");
    keys.write_all(b"Hi\r").unwrap();
    let end = out.wait_for(at, ">>> ");
    let answer = out.0.lock().unwrap()[at..end].to_vec();
    keys.write_all(b"\x04").unwrap();
    assert_eq!(wait_exit(&mut child), 0);
    let text = String::from_utf8_lossy(&answer);
    assert!(!answer.contains(&0x07), "{text:?}");
    assert_eq!(
        text.matches("^[").count() + text.matches("^G").count(),
        8,
        "{text:?}"
    );
}

#[cfg(unix)]
#[test]
fn terminal_keeps_typed_ahead_lines_and_skips_invalid_utf8() {
    let tmp = tempfile::tempdir().unwrap();
    let saved = tmp.path().join("c.json");
    let t = tiny();
    let mut c = cmd(&["chat", "--model", &t, "--max-tokens", "40"]);
    c.env("TERM", "xterm");
    let (mut child, master) = spawn_pty(c);
    let out = Captured::spawn(master.try_clone().unwrap());
    let mut keys = master;
    let mut at = out.wait_for(0, ">>> ");
    keys.write_all(b"Tell me a story.\r").unwrap();
    at = out.wait(at, "the answer to start", |t| {
        t.chars().filter(|c| !c.is_ascii_control()).count() > 30
    });
    // Typed during the answer: one whole line and the start of another.
    keys.write_all(b"typed ahead\runfin").unwrap();
    // The typed line is shown after the next prompt and answered; the
    // unfinished one waits in the editor.
    at = out.wait_for(at, ">>> typed ahead");
    at = out.wait_for(at, ">>> ");
    at = out.wait_for(at, "unfin");
    keys.write_all(b"ished\r").unwrap();
    at = out.wait_for(at, ">>> ");
    // A line that is not UTF-8: reported, skipped, the chat goes on.
    keys.write_all(b"bad \xff\xfe line\r").unwrap();
    at = out.wait_for(at, "not valid UTF-8");
    at = out.wait_for(at, ">>> ");
    keys.write_all(format!("/save {}\r", saved.display()).as_bytes())
        .unwrap();
    at = out.wait_for(at, "saved 6 messages");
    out.wait_for(at, ">>> ");
    keys.write_all(b"\x04").unwrap();
    assert_eq!(wait_exit(&mut child), 0, "{}", out.text());
    let users: Vec<String> = messages(&saved)
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(users, ["Tell me a story.", "typed ahead", "unfinished"]);
}
