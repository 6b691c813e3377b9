//! A model whose header promises more memory than the machine has fails
//! before anything is allocated, with one line saying how much it needs:
//! crafted safetensors and GGUF headers over sparse files, against the
//! machine's memory and against a low `ulimit -v`.

mod common;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use common::*;
use expert::formats::gguf::{write_file, MetaValue};
use std::path::{Path, PathBuf};

/// The tiny fixture's config and tokenizer with one embedding tensor of
/// `rows` × `cols` BF16 declared in model.safetensors (a sparse file).
fn huge_safetensors(dir: &Path, rows: u64, cols: u64) -> PathBuf {
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("tiny").join(f), dir.join(f)).unwrap();
    }
    let n = rows * cols * 2;
    let header = serde_json::json!({
        "model.embed_tokens.weight": {"dtype": "BF16", "shape": [rows, cols], "data_offsets": [0, n]}
    })
    .to_string();
    let path = dir.join("model.safetensors");
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(bytes.len() as u64 + n).unwrap();
    dir.to_path_buf()
}

/// A GGUF whose one F32 tensor is `rows` × 32 (a sparse file).
fn huge_gguf(dir: &Path, rows: u64) -> PathBuf {
    let p = dir.join("huge.gguf");
    let t = QTensor::quantize(
        &Tensor::ones((2, 32), DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    write_file(
        &p,
        &[(
            "general.architecture".into(),
            MetaValue::String("qwen3".into()),
        )],
        &[("token_embd.weight".into(), t)],
    )
    .unwrap();
    let mut b = std::fs::read(&p).unwrap();
    // The tensor's ne[1] (rows): after the header, key, value and the name.
    let name = b"token_embd.weight";
    let at = b.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 4 + 8;
    b[at..at + 8].copy_from_slice(&rows.to_le_bytes());
    let data_at = b.len() as u64 - 2 * 32 * 4;
    std::fs::write(&p, &b).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(data_at + rows * 32 * 4).unwrap();
    p
}

fn refusal(o: &std::process::Output, file: &str, limit: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ")
            && err.contains(file)
            && err.contains("loading needs at least")
            && err.contains("GiB")
            && err.contains(limit),
        "{err}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn more_than_the_machine_has_is_refused_saying_how_much() {
    let tmp = tempfile::tempdir().unwrap();
    // 2^40 bf16 parameters: 2 TiB held as bf16 (bf16 stays bf16 on the CPU).
    let dir = huge_safetensors(tmp.path(), 1 << 20, 1 << 20);
    let o = expert(&["chat", "--model", dir.to_str().unwrap(), "--prompt", "hi"]);
    refusal(&o, dir.to_str().unwrap(), "available");
    assert!(stderr(&o).contains("2048.0 GiB"), "{}", stderr(&o));
    let g = huge_gguf(tmp.path(), 1 << 35);
    let o = expert(&["chat", "--model", g.to_str().unwrap(), "--prompt", "hi"]);
    refusal(&o, "huge.gguf", "available");
}

#[cfg(target_os = "linux")]
#[test]
fn a_low_ulimit_v_is_respected_before_mapping() {
    let tmp = tempfile::tempdir().unwrap();
    // 1.5 GiB of bf16 weights plus the 1.5 GiB mapped file under a 2.5 GiB address-space limit.
    let dir = huge_safetensors(tmp.path(), 1 << 20, 768);
    let g = huge_gguf(tmp.path(), 3 << 23);
    for model in [dir.to_str().unwrap(), g.to_str().unwrap()] {
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -v 2621440 && exec \"$0\" chat --model \"$1\" --prompt hi")
            .arg(env!("CARGO_BIN_EXE_expert"))
            .arg(model)
            .output()
            .unwrap();
        refusal(&o, model, "ulimit -v");
    }
}
