#!/usr/bin/env bash
# Compile-checks the `cuda` feature on a machine without a GPU.
#
# CUDA 13.0's compiler comes from PyPI (`cuda-toolkit` wheels; CUDA 12's
# nvcc is not published there), into a virtual environment that is reused.
# `cargo check` builds candle's CUDA kernels (nvcc, sm_90 by default) and
# type-checks expert with the feature on; it needs no driver or GPU.
#
#   scripts/check-cuda.sh            # cargo check --features cuda
#   scripts/check-cuda.sh build      # cargo build --release --features cuda
# Env: CUDA_VENV (default .cuda), CUDA_COMPUTE_CAP (default 90),
#      CARGO_TARGET_DIR (default target/cuda, kept apart from CPU builds).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${CUDA_VENV:-$PWD/.cuda}"
if [ ! -x "$venv/bin/pip" ]; then
  python3 -m venv "$venv"
fi
if ! ls "$venv"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc >/dev/null 2>&1; then
  "$venv/bin/pip" install -q "cuda-toolkit[nvcc,nvvm,crt,cudart,cccl]==13.0.2"
fi
CU=$(ls -d "$venv"/lib/python3*/site-packages/nvidia/cu13 | head -n1)
export PATH="$CU/bin:$PATH" CUDA_HOME="$CU" CUDA_PATH="$CU"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda}"
nvcc --version | tail -n 2
if [ "${1:-check}" = build ]; then
  cargo build --release --features cuda
else
  cargo check --features cuda --all-targets
fi
