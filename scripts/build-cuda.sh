#!/usr/bin/env bash
# Builds expert with the `cuda` feature (Linux twin of build-cuda.ps1).
#
#   scripts/build-cuda.sh            # cargo build --release --features cuda
#   scripts/build-cuda.sh --check    # compile check only (no GPU, driver or CUDA libraries needed)
#   scripts/build-cuda.sh --debug    # a debug build
#
# The CUDA toolkit: $CUDA_HOME / $CUDA_PATH, /usr/local/cuda, or nvcc on PATH.
# Without one, CUDA 13.0 comes from PyPI into a reused virtual environment
# (.cuda; see shared/notes/cuda-build.md),
# with the libraries the link needs (cublas, curand, nvrtc, cudart).
# The binary links libcuda.so.1 from the NVIDIA driver: run it where the
# driver is installed (LD_LIBRARY_PATH must reach the toolkit's libraries).
#
# Env: CUDA_COMPUTE_CAP (default: the first GPU's, from nvidia-smi; else 90,
#      i.e. H100/H200), CUDA_VENV (default .cuda), CARGO_TARGET_DIR (default
#      target/cuda, kept apart from CPU builds), CUDAFORGE_THREADS (kernel
#      compile jobs, default 2).
# Output: the path of the built binary, as the last line of stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=release
for arg in "$@"; do
  case "$arg" in
    --check) mode=check ;;
    --debug) mode=debug ;;
    --release) mode=release ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "build-cuda: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done
log() { echo "build-cuda: $*" >&2; }

# 1. A CUDA toolkit.
cuda=""
for c in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
  if [ -n "$c" ] && [ -x "$c/bin/nvcc" ]; then cuda="$c"; break; fi
done
if [ -z "$cuda" ] && command -v nvcc >/dev/null 2>&1; then
  cuda="$(cd "$(dirname "$(command -v nvcc)")/.." && pwd)"
fi
if [ -z "$cuda" ]; then
  venv="${CUDA_VENV:-$PWD/.cuda}"
  log "no CUDA toolkit found; using CUDA 13.0 from PyPI in $venv"
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  extras="nvcc,nvvm,crt,cudart,cccl"
  [ "$mode" = check ] || extras="$extras,cublas,curand,nvrtc"
  if ! "$venv/bin/python" - "$extras" <<'EOF'
import importlib.metadata as m, sys
need = {"nvcc": "nvidia-cuda-nvcc", "cublas": "nvidia-cublas", "curand": "nvidia-curand", "nvrtc": "nvidia-cuda-nvrtc"}
have = {d.metadata["Name"].lower() for d in m.distributions()}
sys.exit(0 if all(any(h.startswith(need[e]) for h in have) for e in sys.argv[1].split(",") if e in need) else 1)
EOF
  then
    "$venv/bin/pip" install -q "cuda-toolkit[$extras]==13.0.2"
  fi
  cuda="$(ls -d "$venv"/lib/python3*/site-packages/nvidia/cu13 | head -n1)"
  # The wheels ship versioned libraries only; the linker wants libX.so.
  for lib in "$cuda"/lib/lib*.so.*; do
    [ -e "$lib" ] || continue
    base="${lib%%.so.*}.so"
    [ -e "$base" ] || ln -s "$(basename "$lib")" "$base"
  done
fi
export PATH="$cuda/bin:$PATH" CUDA_HOME="$cuda" CUDA_PATH="$cuda"
export LD_LIBRARY_PATH="$cuda/lib:$cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvcc --version | tail -n 2 >&2

# 2. The GPU architecture to compile the kernels for.
if [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
  cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d '.' || true)"
  CUDA_COMPUTE_CAP="${cap:-90}"
  [ -n "$cap" ] || log "no GPU visible; compiling for compute capability 9.0 (H100/H200): set CUDA_COMPUTE_CAP for another GPU"
fi
export CUDA_COMPUTE_CAP CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda}"
log "compute capability $CUDA_COMPUTE_CAP, target dir $CARGO_TARGET_DIR"

# 3. Build.
case "$mode" in
  check)
    cargo check --features cuda --all-targets
    echo "cargo check --features cuda: ok"
    exit 0
    ;;
  debug) cargo build --features cuda --bin expert; out="$CARGO_TARGET_DIR/debug/expert" ;;
  release) cargo build --release --features cuda --bin expert; out="$CARGO_TARGET_DIR/release/expert" ;;
esac
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1' && [ ! -e "$cuda/lib/stubs/libcuda.so" ]; then
  log "note: no NVIDIA driver here (libcuda.so.1); the binary runs only where one is installed"
fi
log "built $out; run it with LD_LIBRARY_PATH=$cuda/lib, e.g.: $out chat --model Qwen/Qwen3-0.6B --device cuda"
echo "$out"
