#!/usr/bin/env python3
"""Regenerate the test fixtures under tests/fixtures/.

Usage:
    python3 scripts/make_fixtures.py                 # every generator that exists
    python3 scripts/make_fixtures.py --only qwen3    # one generator (repeatable)
    python3 scripts/make_fixtures.py --list
    python3 scripts/make_fixtures.py --shared /path/to/qwen3-tokenizer   # default: the copies in tests/fixtures

Each generator is a module `scripts/fixtures/<name>.py` exposing
`generate(repo_root: pathlib.Path, shared_dir: pathlib.Path) -> None`.
Modules are loaded by file path (no package __init__ needed); a known
generator whose file does not exist yet is skipped, so generators can be
added independently.

Requirements: torch, transformers, safetensors, numpy, tokenizers
(`pip install torch transformers safetensors numpy`).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = SCRIPTS_DIR.parent
FIXTURE_MODULES_DIR = SCRIPTS_DIR / "fixtures"

# Order matters only for the default "run everything" mode.
KNOWN_GENERATORS = ["qwen3", "templates", "smollm2"]


def available_generators() -> list[str]:
    names = [n for n in KNOWN_GENERATORS if (FIXTURE_MODULES_DIR / f"{n}.py").is_file()]
    # Also pick up any other generator module dropped into scripts/fixtures/.
    for path in sorted(FIXTURE_MODULES_DIR.glob("*.py")):
        name = path.stem
        if name.startswith("_") or name in names:
            continue
        names.append(name)
    return names


def load_generator(name: str):
    path = FIXTURE_MODULES_DIR / f"{name}.py"
    if not path.is_file():
        raise SystemExit(f"no generator module {path}")
    spec = importlib.util.spec_from_file_location(f"fixture_gen_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    if not hasattr(module, "generate"):
        raise SystemExit(f"{path} has no generate(repo_root, shared_dir) function")
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only this generator (repeatable); default: all available")
    parser.add_argument("--shared", type=Path, default=None,
                        help="directory holding the real Qwen3 tokenizer/config files "
                             "(default: the in-repo copies, see scripts/qwen3_reference.py)")
    parser.add_argument("--list", action="store_true", help="list available generators and exit")
    args = parser.parse_args(argv)

    available = available_generators()
    if args.list:
        print("\n".join(available))
        return 0

    names = args.only or available
    for name in names:
        if name not in available:
            raise SystemExit(f"unknown or missing generator {name!r}; available: {', '.join(available)}")

    if args.shared is None:
        sys.path.insert(0, str(SCRIPTS_DIR))
        from qwen3_reference import reference_dir

        shared_dir = reference_dir()
    else:
        shared_dir = args.shared.resolve()
    for name in names:
        print(f"=== generator: {name} (shared dir: {shared_dir})", flush=True)
        load_generator(name).generate(REPO_ROOT, shared_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
