//! The interactive chat end to end: scripted stdin (a pipe: no line editor),
//! signals sent to the process, a pseudo-terminal for the rustyline path, on
//! the `tiny` fixture. Greedy answers are checked against transformers'
//! (tests/fixtures/chat/tiny.json), conversation state through the files
//! /save and --session write.

mod common;

use common::process::*;
use common::*;
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn tiny() -> &'static str {
    static TINY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TINY.get_or_init(|| fixture("tiny").to_str().unwrap().to_string())
}

fn conversation(name: &str) -> Value {
    read_json(&root().join("tests/fixtures/chat/tiny.json"))["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone()
}

// ---------------------------------------------------------------------------

#[test]
fn two_turns_reuse_the_cache_and_match_transformers() {
    for name in ["two_turns", "system_no_think"] {
        let conv = conversation(name);
        let turns = conv["turns"].as_array().unwrap();
        let n = conv["max_new_tokens"].to_string();
        let mut args = vec![
            "chat",
            "--model",
            tiny(),
            "--temperature",
            "0",
            "--max-tokens",
            &n,
            "--json",
        ];
        if let Some(s) = conv["system"].as_str() {
            args.extend(["--system", Box::leak(s.to_string().into_boxed_str())]);
        }
        if conv["enable_thinking"] == false {
            args.push("--no-think");
        }
        let script: String = turns
            .iter()
            .map(|t| format!("{}\n", t["user"].as_str().unwrap()))
            .collect();
        let (code, out, err) = repl(&args, &script);
        assert_eq!(code, 0, "{err}");
        let got = answers(&out);
        assert_eq!(got.len(), turns.len(), "{out}\n{err}");
        for (k, (a, t)) in got.iter().zip(turns).enumerate() {
            assert_eq!(ids(&a["token_ids"]), ids(&t["new_ids"]), "{name} turn {k}");
            assert_eq!(a["text"], t["text"], "{name} turn {k}");
            assert_eq!(
                a["prompt_tokens"].as_u64().unwrap() as usize,
                ids(&t["prompt_ids"]).len()
            );
        }
        // Turn 2 prefilled only what the cache did not hold: the first prompt
        // and the first answer (all but its last id, which was never fed back).
        // With thinking off, Qwen3's template drops the empty think block of
        // the earlier answer, so the cache is cut back to where they part.
        let mut cached = ids(&turns[0]["prompt_ids"]);
        let new = ids(&turns[0]["new_ids"]);
        cached.extend(&new[..new.len() - 1]);
        let p2 = ids(&turns[1]["prompt_ids"]);
        let common = cached.iter().zip(&p2).take_while(|(a, b)| a == b).count();
        if name == "two_turns" {
            assert_eq!(common, cached.len(), "the whole first turn is reused");
        } else {
            assert!(
                common < ids(&turns[0]["prompt_ids"]).len(),
                "the think block was dropped"
            );
        }
        let s = &got[1]["stats"];
        assert_eq!(
            s["prefill_tokens"].as_u64().unwrap() as usize,
            p2.len() - common,
            "{name}"
        );
        assert!(common > 0);
        assert_eq!(got[0]["stats"]["prefill_tokens"], got[0]["prompt_tokens"]);
    }
}

#[test]
fn undo_save_reset_load_round_trip() {
    let conv = conversation("two_turns");
    let t = conv["turns"].as_array().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let saved = tmp.path().join("conv.json");
    let s = saved.to_str().unwrap();
    let third = "Something else entirely.";
    let script = format!(
        "{}\n{}\n/undo\n/save {s}\n/reset\n/load {s}\n{third}\n/save {s}.after\n",
        t[0]["user"].as_str().unwrap(),
        t[1]["user"].as_str().unwrap()
    );
    let (code, out, err) = repl(
        &[
            "chat",
            "--model",
            tiny(),
            "--temperature",
            "0",
            "--max-tokens",
            "8",
            "--json",
        ],
        &script,
    );
    assert_eq!(code, 0, "{err}");
    // /save after /undo holds exactly the first exchange.
    assert_eq!(
        messages(&saved),
        [
            msg("user", t[0]["user"].as_str().unwrap()),
            msg("assistant", t[0]["text"].as_str().unwrap())
        ]
    );
    assert!(
        err.contains("last exchange removed") && err.contains("loaded 2 messages"),
        "{err}"
    );
    // After /load the third answer continues the loaded conversation: it is
    // what a fresh process answers to that conversation.
    let got = answers(&out);
    assert_eq!(got.len(), 3);
    let after = messages(&tmp.path().join("conv.json.after"));
    assert_eq!(after.len(), 4);
    assert_eq!(after[2], msg("user", third));
    let file = tmp.path().join("three.json");
    std::fs::write(&file, serde_json::to_string(&after[..3]).unwrap()).unwrap();
    let o = expert(&[
        "chat",
        "--model",
        tiny(),
        "--messages",
        file.to_str().unwrap(),
        "--temperature",
        "0",
        "--max-tokens",
        "8",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let fresh: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(got[2]["token_ids"], fresh["token_ids"]);
    assert_eq!(after[3]["content"], fresh["text"]);
    // ...and /reset + /load did not throw the cache away: the loaded
    // conversation's prefix was still there.
    assert!(got[2]["stats"]["prefill_tokens"].as_u64() < got[2]["prompt_tokens"].as_u64());
}

#[test]
fn commands_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("c.json");
    let f = f.to_str().unwrap();
    let script = format!(
        "/help\n/frobnicate\n/set top_p 1.5\n/set top_k 0\n/set\n/params\n/set temperature 0\n/set max_tokens 3\n/params\n\
         /system Be brief.\n/system\n/no_think\nHi\n/think\nHi\n/no_think Hi\n/stats\n/save {f}\n/undo\n/undo\n/undo\n/undo\n/exit\nnever sent\n"
    );
    let (code, out, err) = repl(&["chat", "--model", tiny()], &script);
    assert_eq!(code, 0, "{err}");
    for c in [
        "/help",
        "/system",
        "/think",
        "/no_think",
        "/set",
        "/params",
        "/stats",
        "/reset",
        "/undo",
        "/save",
        "/load",
        "/exit",
    ] {
        assert!(out.contains(c), "/help does not list {c}:\n{out}");
    }
    assert!(
        err.contains("unknown command /frobnicate") && err.contains("/help"),
        "{err}"
    );
    let set_err: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(set_err.len(), 3, "{err}");
    assert_eq!(set_err[0], "error: top_p must be in (0, 1], got 1.5");
    assert!(set_err[1].contains("top_k"), "{err}");
    assert!(set_err[2].contains("usage: /set KEY VALUE"), "{err}");
    // The rejected value left the previous one in place; defaults come from
    // generation_config.json (0.6, 0.95, 20).
    let params: Vec<&str> = out.lines().filter(|l| l.starts_with("top_p ")).collect();
    assert_eq!(params.len(), 2);
    assert!(params[0].ends_with(" 0.95"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("temperature ") && l.ends_with(" 0.6")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("top_k ") && l.ends_with(" 20")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("max_tokens ") && l.ends_with(" 3")),
        "{out}"
    );
    assert!(out.contains("Be brief."), "/system shows the prompt");
    assert!(
        out.contains("prompt tokens:") && out.contains("reused from the KV cache"),
        "{out}"
    );
    // Three exchanges: /no_think and /think change the rendered prompt, the
    // soft switch with text is sent as a message.
    let saved = messages(Path::new(f));
    let roles: Vec<&str> = saved.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(
        roles,
        [
            "system",
            "user",
            "assistant",
            "user",
            "assistant",
            "user",
            "assistant"
        ]
    );
    assert_eq!(saved[0]["content"], "Be brief.");
    assert_eq!(saved[5]["content"], "/no_think Hi");
    assert!(out.contains("nothing to undo"), "{out}");
    assert!(!out.contains("never sent") && !err.contains("never sent"));
}

#[test]
fn think_switches_change_the_prompt_like_the_flags() {
    let dry = |flag: Option<&str>| {
        let mut a = vec![
            "chat",
            "--model",
            tiny(),
            "--prompt",
            "Hi",
            "--dry-run",
            "--json",
        ];
        a.extend(flag);
        let o = expert(&a);
        let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        v["prompt_ids"].as_array().unwrap().len() as u64
    };
    let (code, out, err) = repl(
        &[
            "chat",
            "--model",
            tiny(),
            "--temperature",
            "0",
            "--max-tokens",
            "1",
            "--json",
        ],
        "/reset\nHi\n/reset\n/no_think\nHi\n/reset\n/think\nHi\n",
    );
    assert_eq!(code, 0, "{err}");
    let got: Vec<u64> = answers(&out)
        .iter()
        .map(|a| a["prompt_tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(
        got,
        [dry(None), dry(Some("--no-think")), dry(Some("--think"))]
    );
    assert_ne!(got[0], got[1]);
}

#[test]
fn multi_line_input() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("m.json");
    let script = format!(
        "first line \\\nsecond line\n\"\"\"\nblock one\n\n  block two\n\"\"\"\n/save {}\n",
        f.display()
    );
    let (code, _, err) = repl(&["chat", "--model", tiny(), "--max-tokens", "2"], &script);
    assert_eq!(code, 0, "{err}");
    let saved = messages(&f);
    assert_eq!(saved[0], msg("user", "first line\nsecond line"));
    assert_eq!(saved[2], msg("user", "block one\n\n  block two"));
    assert_eq!(saved.len(), 4);
}

#[cfg(unix)]
#[test]
fn ctrl_c_mid_answer_keeps_the_conversation() {
    let tmp = tempfile::tempdir().unwrap();
    let session = tmp.path().join("s.json");
    // No --max-tokens: the answer would run to the end of the context (~500
    // tokens, seconds), so SIGINT lands while it streams.
    let mut child = cmd(&[
        "chat",
        "--model",
        tiny(),
        "--session",
        session.to_str().unwrap(),
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let out = Captured::spawn(child.stdout.take().unwrap());
    let err = Captured::spawn(child.stderr.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "Tell me a long story.").unwrap();
    out.wait(0, "the answer to start", |t| t.chars().count() > 5);
    let start = Instant::now();
    signal(&child, libc::SIGINT);
    let at = out.wait_for(0, "[interrupted]");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "generation did not stop promptly"
    );
    // The process is alive and the conversation goes on.
    writeln!(stdin, "/set max_tokens 3\nGo on.").unwrap();
    drop(stdin);
    assert_eq!(wait_exit(&mut child), 0, "{}", err.text());
    let text = out.text();
    assert!(text.len() > at, "a second answer follows: {text}");
    let saved = messages(&session);
    assert_eq!(saved.len(), 4, "{saved:?}");
    assert_eq!(saved[0], msg("user", "Tell me a long story."));
    assert_eq!(saved[1]["role"], "assistant");
    assert_eq!(saved[1]["interrupted"], true);
    let partial = saved[1]["content"].as_str().unwrap();
    assert!(
        !partial.is_empty() && text.contains(partial),
        "the partial answer is kept as shown"
    );
    assert!(err.text().contains("interrupted"), "{}", err.text());
    assert_eq!(saved[2], msg("user", "Go on."));
    assert!(saved[3].get("interrupted").is_none());
}

#[cfg(unix)]
#[test]
fn session_survives_sigkill_and_resumes() {
    let conv = conversation("two_turns");
    let t = conv["turns"].as_array().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let session = tmp.path().join("s.json");
    let s = session.to_str().unwrap();
    let args = [
        "chat",
        "--model",
        tiny(),
        "--session",
        s,
        "--temperature",
        "0",
        "--max-tokens",
        "8",
        "--json",
    ];
    let mut child = cmd(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = Captured::spawn(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", t[0]["user"].as_str().unwrap()).unwrap();
    out.wait(0, "the first answer", |t| t.contains('\n'));
    // Killed without any chance to clean up; stdin stays open.
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    assert_eq!(
        messages(&session),
        [
            msg("user", t[0]["user"].as_str().unwrap()),
            msg("assistant", t[0]["text"].as_str().unwrap())
        ]
    );
    // Resumed: the next answer continues that conversation, as transformers'.
    let (code, out, err) = repl(&args, &format!("{}\n", t[1]["user"].as_str().unwrap()));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("resumed session") && err.contains("2 messages"),
        "{err}"
    );
    let got = answers(&out);
    assert_eq!(ids(&got[0]["token_ids"]), ids(&t[1]["new_ids"]));
    assert_eq!(messages(&session).len(), 4);
    // A broken session file is an error, never overwritten.
    std::fs::write(&session, "{not json").unwrap();
    let (code, _, err) = repl(&args, "hello\n");
    assert_eq!(code, 1);
    assert!(err.contains("s.json") && err.starts_with("error:"), "{err}");
    assert_eq!(std::fs::read_to_string(&session).unwrap(), "{not json");
}

#[test]
fn context_overflow_drops_the_oldest_turns_but_not_the_system_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let session = tmp.path().join("s.json");
    let script: String = (1..=8)
        .map(|i| format!("Message number {i}, please answer it.\n"))
        .collect();
    let (code, out, err) = repl(
        &[
            "chat",
            "--model",
            tiny(),
            "--context",
            "96",
            "--max-tokens",
            "8",
            "--temperature",
            "0",
            "--system",
            "You are a helpful assistant.",
            "--session",
            session.to_str().unwrap(),
            "--json",
        ],
        &script,
    );
    assert_eq!(code, 0, "{err}");
    let got = answers(&out);
    assert_eq!(got.len(), 8, "every message got an answer: {err}");
    let notices: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("outgrew the context window"))
        .collect();
    assert!(!notices.is_empty(), "{err}");
    assert!(notices
        .iter()
        .all(|l| l.starts_with("note: ") && l.contains("dropped the oldest")));
    for a in &got {
        assert!(
            a["prompt_tokens"].as_u64().unwrap() + a["token_ids"].as_array().unwrap().len() as u64
                <= 96
        );
    }
    let saved = messages(&session);
    assert_eq!(saved[0], msg("system", "You are a helpful assistant."));
    assert_eq!(
        saved[saved.len() - 2]["content"],
        "Message number 8, please answer it."
    );
    assert!(saved.len() < 17, "old turns were dropped: {}", saved.len());
    assert_eq!(saved[1]["role"], "user");
    // A message that cannot fit at all is refused, and the REPL goes on.
    let long = "word ".repeat(200);
    let (code, out, err) = repl(
        &[
            "chat",
            "--model",
            tiny(),
            "--context",
            "64",
            "--max-tokens",
            "4",
            "--json",
        ],
        &format!("{long}\nHi\n"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("does not fit the context window"), "{err}");
    assert_eq!(answers(&out).len(), 1);
}

#[test]
fn end_of_input_exits_cleanly() {
    let (code, out, err) = repl(&["chat", "--model", tiny()], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty(), "{out}");
}

// ---------------------------------------------------------------------------
// A pseudo-terminal: rustyline, Ctrl-C typed into the terminal, Ctrl-D.

#[cfg(unix)]
mod pty {
    use super::*;

    #[test]
    fn terminal_session_with_ctrl_c_and_ctrl_d() {
        let tmp = tempfile::tempdir().unwrap();
        let history = tmp.path().join("hist/history");
        let saved = tmp.path().join("conv.json");
        let mut c = cmd(&["chat", "--model", tiny()]);
        c.env("EXPERT_HISTORY", &history).env("TERM", "xterm");
        let (mut child, master) = spawn_pty(c);
        let out = Captured::spawn(master.try_clone().unwrap());
        let mut keys = master;
        let mut at = out.wait_for(0, ">>> ");
        keys.write_all(b"Tell me a long story.\r").unwrap();
        // Thinking-free random text streams; interrupt it from the keyboard.
        at = out.wait(at, "the answer to start", |t| {
            t.chars().filter(|c| !c.is_ascii_control()).count() > 40
        });
        keys.write_all(b"\x03").unwrap();
        at = out.wait_for(at, "[interrupted]");
        at = out.wait_for(at, ">>> ");
        keys.write_all(format!("/save {}\r", saved.display()).as_bytes())
            .unwrap();
        at = out.wait_for(at, "saved 2 messages");
        // Wait for the editor to be back in raw mode (it prints the prompt
        // after entering it); a key sent earlier meets the cooked terminal.
        at = out.wait_for(at, ">>> ");
        // Ctrl-C at an empty prompt asks; Ctrl-D exits with status 0.
        keys.write_all(b"\x03").unwrap();
        at = out.wait_for(at, "Ctrl-C again");
        out.wait_for(at, ">>> ");
        keys.write_all(b"\x04").unwrap();
        assert_eq!(wait_exit(&mut child), 0, "{}", out.text());
        let conv = messages(&saved);
        assert_eq!(conv[0], msg("user", "Tell me a long story."));
        assert_eq!(conv[1]["interrupted"], true);
        // The terminal showed the answer dimmed? No thinking here, so plain;
        // the history file has the entries typed.
        let h = std::fs::read_to_string(&history).unwrap();
        assert!(
            h.contains("Tell me a long story.") && h.contains("/save"),
            "{h}"
        );
    }

    #[test]
    fn thinking_is_dimmed_on_a_terminal() {
        // A template whose generation prompt opens the thinking block: the
        // whole (random) answer is thinking, shown dimmed; --hide-thinking
        // shows none of it.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("model");
        std::fs::create_dir(&dir).unwrap();
        for entry in std::fs::read_dir(fixture("tiny")).unwrap() {
            let src = entry.unwrap().path();
            std::os::unix::fs::symlink(&src, dir.join(src.file_name().unwrap())).unwrap();
        }
        std::fs::write(
            dir.join("chat_template.jinja"),
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n<think>\n",
        )
        .unwrap();
        for hide in [false, true] {
            let mut args = vec![
                "chat",
                "--model",
                dir.to_str().unwrap(),
                "--max-tokens",
                "6",
                "--temperature",
                "0",
            ];
            if hide {
                args.push("--hide-thinking");
            }
            let mut c = cmd(&args);
            c.env("TERM", "xterm");
            let (mut child, master) = spawn_pty(c);
            let out = Captured::spawn(master.try_clone().unwrap());
            let mut keys = master;
            let at = out.wait_for(0, ">>> ");
            keys.write_all(b"Hi\r").unwrap();
            let end = out.wait_for(at, ">>> ");
            let answer = String::from_utf8_lossy(&out.0.lock().unwrap()[at..end]).into_owned();
            keys.write_all(b"\x04").unwrap();
            assert_eq!(wait_exit(&mut child), 0);
            let dimmed = answer.contains("\x1b[2m") && answer.contains("\x1b[0m");
            assert_eq!(dimmed, !hide, "{answer:?}");
            if hide {
                // Only the echo of "Hi", line ends and terminal escapes.
                let mut visible = String::new();
                let mut chars = answer.chars();
                while let Some(c) = chars.next() {
                    if c == '\x1b' {
                        // CSI: ESC [ parameters final-letter
                        for d in chars.by_ref() {
                            if d.is_ascii_alphabetic() && d != '[' {
                                break;
                            }
                        }
                    } else if !c.is_whitespace() {
                        visible.push(c);
                    }
                }
                assert_eq!(visible, "Hi>>>", "{answer:?}");
            }
        }
    }
}
