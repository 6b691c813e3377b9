//! `expert bench` end to end (the CI smoke, seconds long): llama-bench's
//! flags and the `--json` interface other tools read. Speed itself is
//! measured by scripts/bench_peers.sh, never by a test.

mod common;

use common::*;

fn tests_of(o: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_str::<serde_json::Value>(&stdout(o))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// One object per test with the named fields; prefill tests carry prefill
/// figures only, decode tests decode figures only; depth and thread lists
/// multiply the tests (a thread list runs one child process per count).
#[test]
fn json_has_one_object_per_test_with_the_named_fields() {
    let tiny = fixture("tiny");
    let o = expert(&[
        "bench",
        "-m",
        tiny.to_str().unwrap(),
        "-p",
        "8,16",
        "-n",
        "4",
        "-d",
        "0,8",
        "-r",
        "2",
        "-t",
        "1,2",
        "--json",
    ]);
    let tests = tests_of(&o);
    assert_eq!(tests.len(), 2 * 2 * 3, "{tests:?}");
    for t in &tests {
        for f in [
            "model",
            "format",
            "threads",
            "prompt_tokens",
            "gen_tokens",
            "depth",
            "prefill_tok_s",
            "prefill_tok_s_stddev",
            "decode_tok_s",
            "decode_tok_s_stddev",
            "load_s",
            "huge_pages_s",
            "peak_rss_bytes",
            "cpu",
        ] {
            assert!(t.get(f).is_some(), "missing {f} in {t}");
        }
        assert!(t["cpu"]["model"].is_string() && t["cpu"]["flags"].is_array());
        assert!(t["peak_rss_bytes"].as_u64().unwrap() > 0);
        assert_eq!(
            t["format"], "bf16",
            "the tiny fixture is stored as bf16 and held so"
        );
        assert_eq!(t["samples_tok_s"].as_array().unwrap().len(), 2);
        let prefill = t["prompt_tokens"].as_u64().unwrap() > 0;
        assert_eq!(t["prefill_tok_s"].is_number(), prefill);
        assert_eq!(t["decode_tok_s"].is_number(), !prefill);
        let speed = if prefill {
            &t["prefill_tok_s"]
        } else {
            &t["decode_tok_s"]
        };
        assert!(speed.as_f64().unwrap() > 0.0);
    }
    let threads: Vec<u64> = tests
        .iter()
        .map(|t| t["threads"].as_u64().unwrap())
        .collect();
    assert_eq!(threads.iter().filter(|&&n| n == 1).count(), 6);
    assert_eq!(threads.iter().filter(|&&n| n == 2).count(), 6);
    let depths: Vec<u64> = tests.iter().map(|t| t["depth"].as_u64().unwrap()).collect();
    assert_eq!(depths.iter().filter(|&&d| d == 8).count(), 6);
}

/// The text table names each test as llama-bench does (pp/tg, @ dN).
#[test]
fn table_names_tests_like_llama_bench() {
    let tiny = fixture("tiny");
    let o = expert(&[
        "bench",
        "-m",
        tiny.to_str().unwrap(),
        "-p",
        "8",
        "-n",
        "4",
        "-d",
        "16",
        "-r",
        "1",
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("| 1 | pp8 @ d16 |") && out.contains("| 1 | tg4 @ d16 |"),
        "{out}"
    );
}

/// `EXPERT_SIMD` caps the kernels and is recorded with the CPU; a value
/// that is not a cap is one `error:` line naming it.
#[test]
fn simd_cap_is_recorded_and_checked() {
    let tiny = fixture("tiny");
    let m = tiny.to_str().unwrap();
    let args = ["bench", "-m", m, "-p", "8", "-n", "2", "-r", "1", "--json"];
    for simd in ["native", "avx2", "scalar"] {
        let tests = tests_of(&expert_env(&args, &[("EXPERT_SIMD", simd)]));
        assert!(tests.iter().all(|t| t["cpu"]["simd"] == simd), "{tests:?}");
    }
    let o = expert_env(&args, &[("EXPERT_SIMD", "avx3")]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: EXPERT_SIMD") && err.contains("avx3"),
        "{err}"
    );
}

/// Bad values end in one `error:` line naming the flag.
#[test]
fn bad_flags_are_one_error_line() {
    let tiny = fixture("tiny");
    let m = tiny.to_str().unwrap();
    for (args, flag) in [
        (
            vec!["bench", "-m", m, "-p", "0", "-n", "0"],
            "--prompt-tokens",
        ),
        (vec!["bench", "-m", m, "-r", "0"], "--repetitions"),
        (vec!["bench", "-m", m, "-t", "0"], "--threads"),
        (
            vec!["chat", "-m", m, "-p", "hi", "--threads", "1,2"],
            "--threads",
        ),
    ] {
        let o = expert(&args);
        let err = stderr(&o);
        assert!(!o.status.success());
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.starts_with("error:") && err.contains(flag), "{err}");
    }
}
