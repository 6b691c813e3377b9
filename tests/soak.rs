//! Soak: one long REPL session on the `tiny` fixture with a small context
//! window, so the conversation is trimmed over and over. No error, the
//! trimming notices appear, peak memory does not grow between turn 50 and
//! the last turn (< 10 %), and decode speed does not drift down.
//!
//! `EXPERT_SOAK_TURNS` (default 500) sets the length; the figures are
//! printed (`cargo test --release --test soak -- --nocapture`).

mod common;

use common::process::*;
use common::*;
use serde_json::Value;
use std::io::Write;
use std::process::Stdio;

/// Peak resident memory (VmHWM) of a running process, in KiB.
#[cfg(target_os = "linux")]
fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

#[cfg(target_os = "linux")]
fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// CPU seconds (user + system) a running process has used.
#[cfg(target_os = "linux")]
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[cfg(target_os = "linux")]
#[test]
fn five_hundred_turns_on_a_small_context() {
    let turns: usize = std::env::var("EXPERT_SOAK_TURNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    assert!(turns >= 100, "EXPERT_SOAK_TURNS must be >= 100");
    let tiny = fixture("tiny");
    let mut child = cmd(&[
        "chat",
        "--model",
        tiny.to_str().unwrap(),
        "--context",
        "96",
        "--max-tokens",
        "6",
        "--seed",
        "7",
        "--json",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let out = Captured::spawn(child.stdout.take().unwrap());
    let err = Captured::spawn(child.stderr.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let pid = child.id();
    let mut at = 0;
    let mut answers: Vec<Value> = Vec::new();
    let (mut rss_50, mut rss_last) = (0, 0);
    let (mut now_50, mut now_last) = (0, 0);
    // CPU time at turns 10, 60, turns - 50 and the last: the cost of a turn
    // without the noise of other processes on a shared machine.
    let mut cpu = Vec::new();
    let start = std::time::Instant::now();
    for turn in 1..=turns {
        writeln!(
            stdin,
            "Message {turn}: tell me something about the number {turn}."
        )
        .unwrap();
        at = out.wait(at, "an answer", |t| t.contains('\n'));
        let text = out.text();
        let line = text[..at].lines().last().unwrap().to_string();
        answers.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
        if [10, 60, turns - 50, turns].contains(&turn) {
            cpu.push(cpu_secs(pid));
        }
        if turn == 50 {
            rss_50 = peak_rss_kib(pid);
            now_50 = status_kib(pid, "VmRSS:");
        }
        if turn == turns {
            rss_last = peak_rss_kib(pid);
            now_last = status_kib(pid, "VmRSS:");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    drop(stdin);
    assert_eq!(wait_exit(&mut child), 0, "{}", err.text());
    let e = err.text();
    assert!(!e.contains("error"), "{e}");
    let notices = e
        .lines()
        .filter(|l| l.contains("outgrew the context window"))
        .count();
    let speed = |range: std::ops::Range<usize>| {
        let v: Vec<f64> = answers[range]
            .iter()
            .map(|a| a["stats"]["decode_tokens_per_s"].as_f64().unwrap())
            .filter(|&s| s > 0.0)
            .collect();
        median(v)
    };
    let (early, late) = (speed(10..60), speed(turns - 50..turns));
    let (cpu_early, cpu_late) = ((cpu[1] - cpu[0]) / 50.0, (cpu[3] - cpu[2]) / 50.0);
    let growth = (rss_last as f64 - rss_50 as f64) / rss_50 as f64;
    eprintln!(
        "soak: {turns} turns in {secs:.1} s; {notices} trimming notices; peak RSS {rss_50} KiB at turn 50, \
         {rss_last} KiB at turn {turns} ({:+.1} %; current RSS {now_50} -> {now_last} KiB); decode (median) {early:.1} tok/s (turns 11-60) vs {late:.1} tok/s (last 50); \
         CPU per turn {:.1} ms vs {:.1} ms",
        growth * 100.0,
        cpu_early * 1e3,
        cpu_late * 1e3
    );
    assert_eq!(answers.len(), turns);
    assert!(notices > turns / 2, "{notices} trimming notices");
    for a in &answers {
        assert!(
            a["prompt_tokens"].as_u64().unwrap() + a["token_ids"].as_array().unwrap().len() as u64
                <= 96
        );
    }
    assert!(
        growth.abs() < 0.10,
        "peak RSS {rss_50} KiB -> {rss_last} KiB"
    );
    // A shared CI machine is noisy: a drift is both a late wall-clock speed
    // under half the early one and a turn costing 1.5 × the CPU time.
    assert!(
        late > 0.5 * early || cpu_late < 1.5 * cpu_early,
        "decode {early:.1} -> {late:.1} tok/s, CPU per turn {cpu_early:.4} -> {cpu_late:.4} s"
    );
}
