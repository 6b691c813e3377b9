#!/usr/bin/env bash
# expert and transformers on the same workload, one after the other in one run
# (llama.cpp: scripts/bench_peers.sh, which writes BENCHMARKS.md).
#
#   scripts/bench_compare.sh MODEL_DIR|FILE.gguf [PROMPT_TOKENS] [GEN_TOKENS] [RUNS]
#
# Prints expert's `bench --json` for the default, --quantize q8_0 and q4_k
# (a GGUF: as stored), then transformers with the same workload (prompt
# length, greedy decode length; scripts/bench_transformers.py, float32,
# torch's default threads), skipped with a note when torch is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
model="$1"; p="${2:-128}"; g="${3:-64}"; runs="${4:-3}"
exe=target/release/expert
[ -x "$exe" ] || cargo build --release
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); commit $(git rev-parse --short HEAD)"
quants=("" q8_0 q4_k)
case "$model" in *.gguf) quants=("") ;; esac
for q in "${quants[@]}"; do
  printf 'expert %-6s ' "${q:-f32}"
  "$exe" bench --model "$model" -p "$p" -n "$g" -r "$runs" --json ${q:+--quantize "$q"} 2>/dev/null
done
if python3 -c "import torch, transformers" 2>/dev/null; then
  printf 'transformers f32 '
  python3 scripts/bench_transformers.py --model "$model" --prompt-tokens "$p" --gen-tokens "$g" --runs "$runs" --json 2>/dev/null
else
  echo "transformers: skipped (torch/transformers not installed)"
fi
