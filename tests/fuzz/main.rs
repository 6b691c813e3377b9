//! Fuzz targets (stable Rust; see `harness.rs` and docs/development.md):
//! the GGUF reader, the safetensors loader and its shard index, config.json,
//! the chat templates with hostile messages and roles, the streaming
//! detokenizer on random byte-level token sequences, and the REPL's input
//! reader and command parser. In the suite each runs for one second (the
//! smoke); `EXPERT_FUZZ_SECS=300 cargo test --release --test fuzz -- --nocapture --test-threads 1`
//! is the long run. `cargo test --release --test fuzz -- --ignored make_corpus`
//! rewrites the seed corpus from the fixtures.

mod harness;

use expert::chat::conversation::Message;
use expert::chat::prompt::Prompter;
use expert::chat::template::{ChatTemplate, RenderOptions};
use expert::tokenizer::Tokenizer;
use harness::{root, Target};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/qwen3").join(name)
}

/// A scratch directory per target, reused across inputs.
fn scratch(name: &str) -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR
        .get_or_init(|| tempfile::tempdir().unwrap())
        .path()
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    Box::leak(dir.into_boxed_path())
}

fn link(from: &Path, to: &Path) {
    let _ = std::fs::remove_file(to);
    #[cfg(unix)]
    std::os::unix::fs::symlink(from, to).unwrap();
    #[cfg(not(unix))]
    std::fs::copy(from, to).unwrap();
}

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_dir(&fixture("tiny")).unwrap())
}

/// An error as the CLI prints it: one line after `error: `.
fn one_line(e: &anyhow::Error) -> String {
    let msg = format!("{e:#}");
    assert!(!msg.trim().is_empty(), "an empty error message");
    msg
}

const JSON_DICT: &[&[u8]] = &[
    b"null",
    b"-1",
    b"0",
    b"1e308",
    b"-1e308",
    b"18446744073709551615",
    b"4294967296",
    b"1.5",
    b"[]",
    b"{}",
    b"\"\"",
    b"true",
    b"\"\\u0000\"",
    b"\"num_hidden_layers\"",
    b"\"hidden_size\"",
    b"\"head_dim\"",
    b"\"num_key_value_heads\"",
    b"\"vocab_size\"",
    b"\"rope_scaling\"",
    b"\"rope_type\"",
    b"\"factor\"",
    b"\"yarn\"",
    b"\"dynamic\"",
    b"\"tie_word_embeddings\"",
    b"\"max_position_embeddings\"",
    b"\"dtype\"",
    b"\"shape\"",
    b"\"data_offsets\"",
    b"\"F32\"",
    b"\"BF16\"",
    b"\"I64\"",
    b"\"weight_map\"",
    b"\"model-00002-of-00003.safetensors\"",
    b"\"../config.json\"",
    b"\"/etc/passwd\"",
];

// ---------------------------------------------------------------------------
// Targets

fn gguf_target(bytes: &[u8]) {
    let path = scratch("gguf").join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    let file = match expert::formats::gguf::GgufFile::open(&path) {
        Ok(f) => f,
        Err(e) => {
            let msg = one_line(&e);
            assert!(
                msg.contains("model.gguf"),
                "the error names the file: {msg}"
            );
            return;
        }
    };
    let _ = file.metadata_json(16);
    if let Ok(tok) = expert::tokenizer::gguf::load(&file).map_err(|e| one_line(&e)) {
        if let Ok(ids) = tok.encode_with_specials("hello <|im_start|>user\nthere é") {
            let _ = tok.decode(&ids, false);
            let mut stream = tok.stream();
            for &id in &ids {
                let _ = stream.push(id);
            }
            let _ = stream.finish();
        }
    }
    let _ = expert::tokenizer::gguf::chat_template(&file);
    let _ = expert::tokenizer::gguf::eog_ids(&file);
    if let Ok(model) =
        expert::load::gguf_model(&file, candle_core::DType::F32, &candle_core::Device::Cpu)
            .map_err(|e| one_line(&e))
    {
        let mut cache = model.new_cache();
        let _ = model.forward_last(&[0, 1], &mut cache);
    }
}

fn load_dir(dir: &Path) {
    match expert::load::dir_model(dir, candle_core::DType::F32, &candle_core::Device::Cpu) {
        Ok(model) => {
            let mut cache = model.new_cache();
            let _ = model.forward_last(&[0, 1], &mut cache);
        }
        Err(e) => {
            one_line(&e);
        }
    }
}

fn safetensors_target(bytes: &[u8]) {
    let dir = scratch("safetensors");
    link(
        &fixture("linear").join("config.json"),
        &dir.join("config.json"),
    );
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    load_dir(dir);
}

fn safetensors_index_target(bytes: &[u8]) {
    let dir = scratch("safetensors_index");
    let src = fixture("sharded");
    for entry in std::fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap();
        if name != "model.safetensors.index.json" && !dir.join(name).exists() {
            link(&p, &dir.join(name));
        }
    }
    std::fs::write(dir.join("model.safetensors.index.json"), bytes).unwrap();
    if let Err(e) =
        expert::formats::safetensors::index_shards(&dir.join("model.safetensors.index.json"))
    {
        let msg = one_line(&e);
        assert!(
            msg.contains("index.json"),
            "the error names the file: {msg}"
        );
    }
    load_dir(dir);
}

fn config_target(bytes: &[u8]) {
    let dir = scratch("config");
    link(
        &fixture("linear").join("model.safetensors"),
        &dir.join("model.safetensors"),
    );
    std::fs::write(dir.join("config.json"), bytes).unwrap();
    match expert::model::ModelConfig::from_file(&dir.join("config.json")) {
        Ok(c) => {
            let _ = c.validate();
            let _ = c.context_length();
            let _ = c.parameter_count();
            load_dir(dir);
        }
        Err(e) => {
            let msg = one_line(&e);
            assert!(
                msg.contains("config.json"),
                "the error names the file: {msg}"
            );
        }
    }
}

/// Chat input: a first line of flags (`t`/`f`: thinking on/off, `g`: a
/// generation prompt, `s`: the SmolLM2 template), then messages separated
/// by U+001E, each `role U+001F content`.
fn parse_chat(bytes: &[u8]) -> (String, Vec<Message>) {
    let text = String::from_utf8_lossy(bytes);
    let (flags, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let messages = rest
        .split('\u{1e}')
        .filter(|m| !m.is_empty())
        .take(64)
        .map(|m| {
            let (role, content) = m.split_once('\u{1f}').unwrap_or(("user", m));
            Message::new(role, content)
        })
        .collect();
    (flags.to_string(), messages)
}

fn templates() -> &'static (Prompter, Prompter) {
    static T: OnceLock<(Prompter, Prompter)> = OnceLock::new();
    T.get_or_init(|| {
        let qwen3 = Prompter::load(&fixture("tiny"), None, tokenizer()).unwrap();
        let v = common_json(&root().join("tests/fixtures/templates/smollm2.json"));
        let src = v["source"]["chat_template"].as_str().unwrap();
        let smol = Prompter::load(Path::new("smollm2.gguf"), Some(src), tokenizer()).unwrap();
        (qwen3, smol)
    })
}

fn common_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn chat_target(bytes: &[u8]) {
    let (flags, messages) = parse_chat(bytes);
    let opts = RenderOptions {
        add_generation_prompt: flags.contains('g'),
        enable_thinking: if flags.contains('t') {
            Some(true)
        } else if flags.contains('f') {
            Some(false)
        } else {
            None
        },
    };
    let (qwen3, smol) = templates();
    let prompter = if flags.contains('s') { smol } else { qwen3 };
    let tok = tokenizer();
    if let Ok((_, ids)) = prompter
        .encode(tok, &messages, &opts)
        .map_err(|e| one_line(&e))
    {
        // Injection safety: only the template's own markup becomes control
        // tokens, whatever the messages contain (one <|im_start|> per message
        // at most, plus the generation prompt and SmolLM2's default system).
        let im_start = tok.encode_with_specials("<|im_start|>").unwrap();
        assert_eq!(im_start.len(), 1);
        let n = ids.iter().filter(|&&i| i == im_start[0]).count();
        assert!(
            n <= messages.len() + 2,
            "{n} <|im_start|> tokens for {} messages: {messages:?}",
            messages.len()
        );
    }
    // The template alone (no tokenizer): never a panic.
    if let Ok(t) = ChatTemplate::from_source(
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
        None,
        None,
    ) {
        let _ = t.render(&messages, &opts);
    }
}

fn detokenizer_target(bytes: &[u8]) {
    let tok = tokenizer();
    let mut u = arbitrary::Unstructured::new(bytes);
    let skip_special: bool = u.arbitrary().unwrap_or(false);
    let limit = tok.vocab_size() as u32 + 8;
    let mut ids = Vec::new();
    while !u.is_empty() && ids.len() < 256 {
        // Byte-level tokens (the first 256 ids) most of the time.
        let id = match u.int_in_range(0u8..=3).unwrap_or(0) {
            0 | 1 => u.int_in_range(0u32..=255).unwrap_or(0),
            _ => u.int_in_range(0..=limit).unwrap_or(0),
        };
        ids.push(id);
    }
    let mut stream = if skip_special {
        tok.stream_with(true)
    } else {
        tok.stream()
    };
    let mut shown = String::new();
    for &id in &ids {
        match stream.push(id) {
            Ok(Some(piece)) => shown.push_str(&piece),
            Ok(None) => {}
            Err(e) => {
                one_line(&e);
                return;
            }
        }
    }
    shown.push_str(&stream.finish().unwrap());
    assert_eq!(shown, stream.text(), "pieces == text()");
    let full = tok.decode(&ids, skip_special).unwrap();
    assert_eq!(shown, full, "streamed == decode(all) for {ids:?}");
}

fn repl_target(bytes: &[u8]) {
    let entries = expert::cli::chat::fuzzing::repl_input(bytes);
    // At most one entry per line (plus a command's parse), and each
    // message's single-line text comes from the input as typed.
    let lines = bytes.split(|&b| b == b'\n').count();
    assert!(
        entries.len() <= 2 * lines,
        "{} entries for {lines} lines",
        entries.len()
    );
    let text = String::from_utf8_lossy(bytes);
    for e in entries.iter().flatten() {
        if !e.contains('\n')
            && !e.contains("\"\"\"")
            && !e.ends_with('\\')
            && !e.starts_with(|c: char| c.is_uppercase())
        {
            assert!(text.contains(e.as_str()), "{e:?} not in the input");
        }
    }
    let (typed, _rest) = expert::cli::chat::fuzzing::type_ahead(bytes);
    let enters = bytes.iter().filter(|&&b| b == b'\r' || b == b'\n').count();
    assert!(typed.len() <= enters);
}

// ---------------------------------------------------------------------------
// The smoke (and, with EXPERT_FUZZ_SECS, the long run) of each target.

#[test]
fn fuzz_gguf() {
    Target {
        name: "gguf",
        dict: &[
            b"GGUF",
            b"general.architecture",
            b"qwen3",
            b"llama",
            b"qwen3.block_count",
        ],
        hot: 8192,
    }
    .run(gguf_target);
}

#[test]
fn fuzz_safetensors() {
    Target {
        name: "safetensors",
        dict: JSON_DICT,
        hot: 4096,
    }
    .run(safetensors_target);
}

#[test]
fn fuzz_safetensors_index() {
    Target {
        name: "safetensors_index",
        dict: JSON_DICT,
        hot: usize::MAX,
    }
    .run(safetensors_index_target);
}

#[test]
fn fuzz_config() {
    Target {
        name: "config",
        dict: JSON_DICT,
        hot: usize::MAX,
    }
    .run(config_target);
}

#[test]
fn fuzz_chat_template() {
    Target {
        name: "chat_template",
        dict: &[
            b"<|im_start|>",
            b"<|im_end|>",
            b"<think>",
            b"</think>",
            b"<tool_call>",
            b"<|endoftext|>",
            b"{{ raise_exception('x') }}",
            b"{% for %}",
            b"\x1e",
            b"\x1fsystem\x1f",
            b"\x1etool\x1f",
            b"\x1eassistant\x1f",
            b"\x1e\x1f",
            b"\0",
        ],
        hot: usize::MAX,
    }
    .run(chat_target);
}

#[test]
fn fuzz_detokenizer() {
    Target {
        name: "detokenizer",
        dict: &[b"\xff\xff\xff", b"\x00\x00\x00\x00"],
        hot: usize::MAX,
    }
    .run(detokenizer_target);
}

#[test]
fn fuzz_repl_input() {
    Target {
        name: "repl_input",
        dict: &[
            b"\"\"\"",
            b"\\\n",
            b"\n/set ",
            b"\n/system ",
            b"\n/load ",
            b"\n/think ",
            b"\r\n",
            b"\xff",
            b"\xc3",
            b"\x1b[A",
            b"\x7f",
        ],
        hot: usize::MAX,
    }
    .run(repl_target);
}

// ---------------------------------------------------------------------------
// The seed corpus, made from the fixtures.

#[test]
#[ignore = "rewrites tests/fuzz/corpus from the fixtures"]
fn make_corpus() {
    let corpus = root().join("tests/fuzz/corpus");
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let d = corpus.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
    };
    // GGUF: the `linear` fixture quantized (expert quantize, Q8_0), and the
    // smallest valid file (one key, one tensor).
    let tmp = tempfile::tempdir().unwrap();
    let q = tmp.path().join("linear-q8_0.gguf");
    expert::quantize::write_gguf(
        &fixture("linear"),
        candle_core::quantized::GgmlDType::Q8_0,
        &q,
    )
    .unwrap();
    put("gguf", "linear-q8_0.gguf", &std::fs::read(&q).unwrap());
    let small = tmp.path().join("small.gguf");
    let t = candle_core::quantized::QTensor::quantize(
        &candle_core::Tensor::ones((2, 32), candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap(),
        candle_core::quantized::GgmlDType::F32,
    )
    .unwrap();
    expert::formats::gguf::write_file(
        &small,
        &[(
            "general.architecture".into(),
            expert::formats::gguf::MetaValue::String("qwen3".into()),
        )],
        &[("a".into(), t)],
    )
    .unwrap();
    put("gguf", "small.gguf", &std::fs::read(&small).unwrap());
    // The `linear` model with SmolLM2's GGUF tokenizer cut to its first 400
    // tokens (and the merges among them), when the test model is fetched.
    let smol = std::env::var_os("EXPERT_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/expert-test-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if smol.is_file() {
        use expert::formats::gguf::{GgufFile, MetaArray, MetaValue};
        let smol = GgufFile::open(&smol).unwrap();
        let lin = GgufFile::open(&q).unwrap();
        const KEEP: usize = 400;
        let tokens: Vec<String> = match smol.get("tokenizer.ggml.tokens") {
            Some(MetaValue::Array(MetaArray::String(t))) => t[..KEEP].to_vec(),
            _ => panic!("no tokens"),
        };
        let known: std::collections::HashSet<&str> = tokens.iter().map(String::as_str).collect();
        let mut meta: Vec<(String, MetaValue)> = lin
            .metadata
            .iter()
            .filter(|(k, _)| !k.starts_with("tokenizer."))
            .cloned()
            .collect();
        for (k, v) in &smol.metadata {
            if !k.starts_with("tokenizer.") {
                continue;
            }
            let v = match v {
                MetaValue::Array(MetaArray::String(a)) if k == "tokenizer.ggml.merges" => {
                    MetaValue::Array(MetaArray::String(
                        a.iter()
                            .filter(|m| {
                                let (l, r) = m.split_once(' ').unwrap_or((m, ""));
                                known.contains(l)
                                    && known.contains(r)
                                    && known.contains(format!("{l}{r}").as_str())
                            })
                            .cloned()
                            .collect(),
                    ))
                }
                MetaValue::Array(MetaArray::String(a)) => {
                    MetaValue::Array(MetaArray::String(a[..KEEP.min(a.len())].to_vec()))
                }
                MetaValue::Array(MetaArray::I32(a)) => {
                    MetaValue::Array(MetaArray::I32(a[..KEEP.min(a.len())].to_vec()))
                }
                MetaValue::Array(MetaArray::F32(a)) => {
                    MetaValue::Array(MetaArray::F32(a[..KEEP.min(a.len())].to_vec()))
                }
                other => other.clone(),
            };
            meta.push((k.clone(), v));
        }
        let tensors: Vec<(String, candle_core::quantized::QTensor)> = lin
            .tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    lin.qtensor(&t.name, &candle_core::Device::Cpu).unwrap(),
                )
            })
            .collect();
        let out = tmp.path().join("tok.gguf");
        expert::formats::gguf::write_file(&out, &meta, &tensors).unwrap();
        put(
            "gguf",
            "linear-smollm2-tokenizer.gguf",
            &std::fs::read(&out).unwrap(),
        );
    }
    // safetensors: the `linear` fixture's weights; the sharded index.
    put(
        "safetensors",
        "linear.safetensors",
        &std::fs::read(fixture("linear").join("model.safetensors")).unwrap(),
    );
    put(
        "safetensors_index",
        "sharded.index.json",
        &std::fs::read(fixture("sharded").join("model.safetensors.index.json")).unwrap(),
    );
    // config.json of every fixture.
    for name in [
        "tiny",
        "untied-f32",
        "sharded",
        "yarn",
        "linear",
        "dynamic",
        "trained",
    ] {
        put(
            "config",
            &format!("{name}.json"),
            &std::fs::read(fixture(name).join("config.json")).unwrap(),
        );
    }
    // Chat: the template goldens' conversations.
    for (file, flag) in [("qwen3", ""), ("smollm2", "s")] {
        let v = common_json(&root().join(format!("tests/fixtures/templates/{file}.json")));
        for case in v["cases"].as_array().unwrap() {
            let mut flags = flag.to_string();
            if case["add_generation_prompt"] == true {
                flags.push('g');
            }
            match case["enable_thinking"].as_bool() {
                Some(true) => flags.push('t'),
                Some(false) => flags.push('f'),
                None => {}
            }
            let msgs: Vec<String> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    format!(
                        "{}\u{1f}{}",
                        m["role"].as_str().unwrap_or("user"),
                        m["content"].as_str().unwrap_or("")
                    )
                })
                .collect();
            let text = format!("{flags}\n{}", msgs.join("\u{1e}"));
            put(
                "chat_template",
                &format!("{file}-{}.txt", case["name"].as_str().unwrap()),
                text.as_bytes(),
            );
        }
    }
    // Detokenizer: the tiny fixture's golden id sequences (as the target
    // reads them: a flag byte, then a selector byte and a big-endian id).
    let golden = common_json(&fixture("tiny").join("golden.json"));
    for (k, seq) in golden["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .take(4)
    {
        let mut b = vec![0u8];
        for id in seq["ids"].as_array().unwrap() {
            b.push(3);
            b.extend_from_slice(&(id.as_u64().unwrap() as u32).to_be_bytes());
        }
        put("detokenizer", &format!("tiny-{k}.bin"), &b);
    }
    // The REPL: the scripts of tests/repl.rs.
    for (name, script) in [
        ("commands", "/help\n/frobnicate\n/set top_p 1.5\n/set top_k 0\n/set\n/params\n/set temperature 0\n/system Be brief.\n/system\n/no_think\nHi\n/think\n/no_think Hi\n/stats\n/save c.json\n/undo\n/load c.json\n/exit\n"),
        ("multiline", "first line \\\nsecond line\n\"\"\"\nblock one\n\n  block two\n\"\"\"\n\"\"\"Hello\nworld\"\"\"\n"),
        ("crlf", "hello\r\n/help\r\n\r\n"),
        ("typed", "hel\x7flo\rsecond\x1b[A line\r\n"),
    ] {
        put("repl_input", &format!("{name}.txt"), script.as_bytes());
    }
}
