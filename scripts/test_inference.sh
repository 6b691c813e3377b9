#!/usr/bin/env bash
# Smoke test of `expert chat` on the original project's five standard
# prompts: each goes through the model's chat template (thinking off) with
# greedy decoding, next to transformers' answer to the same chat prompt, after
# the perplexity / logit comparison over the prompts. Without
# torch/transformers (CI) it says so in one line and shows expert's side only.
#
#   scripts/test_inference.sh [--model DIR] [--max-new-tokens N] [--release] [--check] [--json]
#
# Default model: the tiny Qwen3 fixture. The logic lives in
# scripts/compare_inference.py; scripts/test_inference.ps1 is its twin.
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
exec "${PYTHON:-python3}" scripts/compare_inference.py --model "$model" --standard-prompts --chat \
  --max-new-tokens 32 --build "$build" --skip-missing-reference ${extra[@]+"${extra[@]}"}
