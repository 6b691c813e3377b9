"""The real Qwen3 tokenizer and Qwen3-0.6B config, as one directory, from files in the repository.

tests/fixtures/qwen3-0.6b/ holds config.json, generation_config.json and tokenizer_config.json
(SOURCES.md there says where they come from); the 11 MB tokenizer.json is kept once, in
tests/fixtures/qwen3/tiny/ (byte-identical). Scripts that want a Hugging Face-style directory
(AutoTokenizer / AutoConfig.from_pretrained) call `reference_dir()`.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FILES = {
    "config.json": REPO_ROOT / "tests/fixtures/qwen3-0.6b/config.json",
    "generation_config.json": REPO_ROOT / "tests/fixtures/qwen3-0.6b/generation_config.json",
    "tokenizer_config.json": REPO_ROOT / "tests/fixtures/qwen3-0.6b/tokenizer_config.json",
    "tokenizer.json": REPO_ROOT / "tests/fixtures/qwen3/tiny/tokenizer.json",
}


def reference_dir() -> Path:
    """A temporary directory (removed at exit) linking the four files under their usual names."""
    d = Path(tempfile.mkdtemp(prefix="qwen3-reference-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    for name, src in FILES.items():
        (d / name).symlink_to(src)
    return d
