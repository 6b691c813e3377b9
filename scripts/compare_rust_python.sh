#!/usr/bin/env bash
# expert vs transformers on the original project's five standard prompts:
# perplexity and max |logit difference| over the prompts, and each prompt's
# greedy raw continuation side by side. Without torch/transformers (CI) it
# says so in one line and shows expert's side only.
#
#   scripts/compare_rust_python.sh [--model DIR] [--max-new-tokens N] [--release] [--check] [--json]
#
# Default model: the tiny Qwen3 fixture. The logic lives in
# scripts/compare_inference.py; scripts/compare_rust_python.ps1 is its twin.
set -euo pipefail
cd "$(dirname "$0")/.."
model=tests/fixtures/qwen3/tiny
build=debug
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --release) build=release; shift ;;
    *) extra+=("$1"); shift ;;
  esac
done
exec "${PYTHON:-python3}" scripts/compare_inference.py --model "$model" --standard-prompts \
  --max-new-tokens 16 --build "$build" --skip-missing-reference ${extra[@]+"${extra[@]}"}
