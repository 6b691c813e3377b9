#!/usr/bin/env bash
# expert and llama.cpp side by side, in one run, on the same files and
# threads; writes BENCHMARKS.md. Not part of CI (about 40 minutes the first
# time: it builds llama.cpp and makes the models; about 15 after that, on an
# AVX-512 CPU twice that for the AVX2 pass below).
#
#   scripts/bench_peers.sh [-p 128] [-n 64] [-r 3] [-t THREADS] [-o BENCHMARKS.md] [--rows f32,q8_0,...] [--native-only]
#
# On a CPU with AVX-512 it then runs every row again on the AVX2 paths, a
# stand-in for the AVX2-only CPUs (AMD Zen 3) this project also runs on:
# expert with EXPERT_SIMD=avx2 against a second llama.cpp built with
# -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF, a second table in the
# same file. --native-only skips it.
#
# Everything it builds or makes lives in $EXPERT_PEER_DIR (default
# ~/.cache/expert-peer):
#   - llama.cpp's llama-bench and llama-quantize, built from the llama.cpp
#     tree vendored in the llama-cpp-python 0.3.36 source distribution on PyPI
#     (-DGGML_NATIVE=ON: compiled for this CPU);
#   - a Python venv with torch, transformers and llama.cpp's gguf-py;
#   - a random-weight checkpoint of the exact Qwen3-0.6B shape (bf16,
#     scripts/make_bench_model.py) and its GGUFs made by llama.cpp's own
#     converter (f32, f16, bf16) and quantizer (q8_0, q4_0, q4_k_m);
#   - SmolLM2-135M-Instruct Q4_1 (scripts/fetch_test_model.sh).
# It measures the machine's read bandwidth (a 2 GiB array on 2 MiB pages
# summed by every thread, before and after the rows), then runs
# `expert bench` and `llama-bench` back to back per row, and writes the
# table with the ratios expert/llama.cpp and expert/bandwidth ceiling
# (weight bytes read per decoded token ÷ bandwidth).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
P=128 N=64 R=3 T=$(lscpu -p=core 2>/dev/null | grep -v '^#' | sort -u | wc -l) OUT=BENCHMARKS.md ROWS=all
AVX2=auto
[ "$T" -gt 0 ] || T=$(nproc)
while [ $# -gt 0 ]; do
  case "$1" in
    -p) P=$2; shift 2 ;; -n) N=$2; shift 2 ;; -r) R=$2; shift 2 ;; -t) T=$2; shift 2 ;;
    -o) OUT=$2; shift 2 ;; --rows) ROWS=$2; shift 2 ;; --native-only) AVX2=no; shift ;;
    *) echo "error: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
D=${EXPERT_PEER_DIR:-$HOME/.cache/expert-peer}
mkdir -p "$D"
log() { echo "[bench_peers $(date +%H:%M:%S)] $*" >&2; }

# 1. llama.cpp from the PyPI source distribution.
L=$D/llama_cpp_python-0.3.36/vendor/llama.cpp
if [ ! -x "$D/build/bin/llama-bench" ] || [ ! -x "$D/build/bin/llama-quantize" ]; then
  log "building llama.cpp (10-15 min on 2 cores)"
  if [ ! -d "$L" ]; then
    # Not --no-binary :all: — that builds cmake itself from source.
    (cd "$D" && pip download -q --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d . \
      && tar xzf llama_cpp_python-0.3.36.tar.gz)
  fi
  command -v cmake >/dev/null || apt-get install -y -q cmake >/dev/null
  cmake -S "$L" -B "$D/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF >/dev/null
  cmake --build "$D/build" -j"$(nproc)" --target llama-bench llama-quantize >"$D/build.log" 2>&1 \
    || { tail -20 "$D/build.log" >&2; exit 1; }
fi
LB=$D/build/bin/llama-bench LQ=$D/build/bin/llama-quantize
# 1b. The AVX2-only llama.cpp, where this CPU has AVX-512 (the AVX2 pass).
if [ "$AVX2" = auto ]; then
  if grep -qw avx512f /proc/cpuinfo; then AVX2=yes; else AVX2=no; fi
fi
LB2=$D/build-avx2/bin/llama-bench
if [ "$AVX2" = yes ] && [ ! -x "$LB2" ]; then
  log "building an AVX2-only llama.cpp (10-15 min on 2 cores)"
  cmake -S "$L" -B "$D/build-avx2" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
    -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF >/dev/null
  cmake --build "$D/build-avx2" -j"$(nproc)" --target llama-bench >"$D/build-avx2.log" 2>&1 \
    || { tail -20 "$D/build-avx2.log" >&2; exit 1; }
fi

# 2. Python with torch, transformers and gguf-py (for the model and the converter).
PY=$D/venv/bin/python
if ! "$PY" -c "import torch, transformers, gguf" 2>/dev/null; then
  log "making the Python venv (torch, transformers, gguf-py)"
  python3 -m venv "$D/venv"
  "$D/venv/bin/pip" install -q torch transformers safetensors numpy sentencepiece
  "$D/venv/bin/pip" install -q -e "$L/gguf-py"
fi

# 3. The models.
M=$D/qwen3-0.6b-random
[ -f "$M/model.safetensors" ] || { log "making $M"; "$PY" scripts/make_bench_model.py --out "$M" >/dev/null; }
for t in f32 f16 bf16; do
  [ -f "$D/qwen3-0.6b-$t.gguf" ] || { log "converting to $t"; "$PY" "$L/convert_hf_to_gguf.py" "$M" --outtype "$t" --outfile "$D/qwen3-0.6b-$t.gguf" >/dev/null 2>&1; }
done
for q in q8_0 q4_0 q4_k_m; do
  [ -f "$D/qwen3-0.6b-$q.gguf" ] || { log "quantizing to $q"; "$LQ" "$D/qwen3-0.6b-f32.gguf" "$D/qwen3-0.6b-$q.gguf" "${q^^}" >/dev/null 2>&1; }
done
bash scripts/fetch_test_model.sh >/dev/null
SMOL=${EXPERT_TEST_MODEL_DIR:-$HOME/.cache/expert-test-models}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

# 4. expert itself.
cargo build --release -q
EXE=$root/target/release/expert

# 5. Read bandwidth: every thread sums its share of a 2 GiB array, on 2 MiB
# pages (the ceiling; expert's weights are on them) and on 4 KiB pages (what
# a TLB-bound reader gets; 15-45 % less in the VMs this was written on).
BW=$D/bandwidth2
if [ ! -x "$BW" ]; then
  cat > "$D/bandwidth2.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <omp.h>
#include <immintrin.h>
int main(int argc, char **argv) {
  size_t n = (size_t)1 << 29; /* floats: 2 GiB */
  float *a = aligned_alloc(2 << 20, n * sizeof(float));
  /* "huge": transparent huge pages, asked for before the first touch. */
  if (argc > 1 && argv[1][0] == 'h') madvise(a, n * sizeof(float), MADV_HUGEPAGE);
  #pragma omp parallel for
  for (size_t i = 0; i < n; i++) a[i] = (float)(i & 7);
  double best = 0; float sink = 0;
  for (int rep = 0; rep < 5; rep++) {
    double t0 = omp_get_wtime(); float total = 0;
    #pragma omp parallel for reduction(+:total)
    for (size_t i = 0; i < n; i += 32) {
      __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_load_ps(a + i), _mm256_load_ps(a + i + 8)),
                               _mm256_add_ps(_mm256_load_ps(a + i + 16), _mm256_load_ps(a + i + 24)));
      float v[8]; _mm256_storeu_ps(v, s); total += v[0] + v[7];
    }
    double gbs = n * sizeof(float) / (omp_get_wtime() - t0) / 1e9;
    if (gbs > best) best = gbs; sink += total;
  }
  printf("%.2f\n", best); return sink == 12345.0f;
}
EOF
  gcc -O2 -mavx2 -fopenmp "$D/bandwidth2.c" -o "$BW"
fi
GBS=$(OMP_NUM_THREADS=$T "$BW" huge)
GBS_4K=$(OMP_NUM_THREADS=$T "$BW")
log "read bandwidth $GBS GB/s on 2 MiB pages, $GBS_4K GB/s on 4 KiB pages, with $T threads"

# 6. The rows: label | expert's model | expert's flags | llama.cpp's file.
rows=(
  "f32|$D/qwen3-0.6b-f32.gguf||$D/qwen3-0.6b-f32.gguf"
  "f16|$D/qwen3-0.6b-f16.gguf||$D/qwen3-0.6b-f16.gguf"
  "bf16|$D/qwen3-0.6b-bf16.gguf||$D/qwen3-0.6b-bf16.gguf"
  "bf16 checkpoint (safetensors)|$M||$D/qwen3-0.6b-bf16.gguf"
  "q8_0|$D/qwen3-0.6b-q8_0.gguf||$D/qwen3-0.6b-q8_0.gguf"
  "q4_0|$D/qwen3-0.6b-q4_0.gguf||$D/qwen3-0.6b-q4_0.gguf"
  "q4_k_m|$D/qwen3-0.6b-q4_k_m.gguf||$D/qwen3-0.6b-q4_k_m.gguf"
  "SmolLM2-135M-Instruct Q4_1|$SMOL||$SMOL"
)
RES=$D/results-$(date +%Y%m%d-%H%M%S)
# One pass: every row with expert capped at $1 (EXPERT_SIMD) against the
# llama-bench at $2, results into $RES/$1.
pass() {
local simd=$1 LB=$2 out=$RES/$1 i=0
mkdir -p "$out"
for row in "${rows[@]}"; do
  IFS='|' read -r label model flags gguf <<<"$row"
  i=$((i + 1))
  key=$(echo "$label" | cut -d' ' -f1)
  if [ "$ROWS" != all ] && [[ ",$ROWS," != *",$key,"* ]]; then continue; fi
  # Both engines load from a warm page cache (this VM reclaims cold pages).
  warm() { if [ -d "$1" ]; then cat "$1"/*.safetensors >/dev/null; else cat "$1" >/dev/null; fi; }
  warm "$model"
  log "$label ($simd): expert"
  # shellcheck disable=SC2086
  EXPERT_SIMD=$simd "$EXE" bench -m "$model" $flags -p "$P" -n "$N" -r "$R" -t "$T" --json > "$out/$i-expert.json"
  warm "$gguf"
  log "$label ($simd): llama.cpp"
  if ! "$LB" -m "$gguf" -p "$P" -n "$N" -r "$R" -t "$T" -o json > "$out/$i-llama.json" 2>/dev/null; then
    # Seen on an AMX CPU (Xeon, 2026-12-02): llama.cpp 0.3.36 crashes in
    # its repacked (AMX) quantized weights. The row is then measured
    # without the repack, and the table says so.
    log "$label: llama.cpp failed; again with --repack 0"
    "$LB" -m "$gguf" -p "$P" -n "$N" -r "$R" -t "$T" --repack 0 -o json > "$out/$i-llama.json" 2>/dev/null
    echo "--repack 0" > "$out/$i-llama-note"
  fi
  echo "$label" > "$out/$i-label"
  echo "$gguf" > "$out/$i-gguf"
done
}
pass native "$LB"
# The VM's bandwidth drifts (22 to 29 GB/s on 4 KiB pages within an hour,
# 2026-12-03): measured again after the rows, the higher figure is the ceiling.
GBS_END=$(OMP_NUM_THREADS=$T "$BW" huge)
log "read bandwidth after the rows: $GBS_END GB/s on 2 MiB pages"
GBS=$(awk -v a="$GBS" -v b="$GBS_END" 'BEGIN { print (a > b ? a : b) }')
if [ "$AVX2" = yes ]; then pass avx2 "$LB2"; fi

# 7. The table.
"$PY" - "$RES" "$GBS" "$T" "$P" "$N" "$R" "$OUT" "$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo '+dirty')" "$GBS_4K" <<'EOF'
import json, os, sys, datetime, glob
res, gbs, threads, p, n, r, out, commit, gbs_4k = sys.argv[1:10]
gbs, gbs_4k = float(gbs), float(gbs_4k)
import gguf

def bytes_per_token(path):
    """Weight bytes read per decoded token: every tensor but the embedding
    table, which is read whole only when it doubles as the output layer."""
    rd = gguf.GGUFReader(path)
    names = {t.name for t in rd.tensors}
    total = 0
    for t in rd.tensors:
        if t.name == "token_embd.weight" and "output.weight" in names:
            continue
        total += int(t.n_bytes)
    return total

def table(res):
  lines = []
  notes = set()
  cpu = None
  for lab in sorted(glob.glob(os.path.join(res, "*-label")), key=lambda f: int(os.path.basename(f).split("-")[0])):
    i = os.path.basename(lab).split("-")[0]
    label = open(lab).read().strip()
    gguf_path = open(os.path.join(res, f"{i}-gguf")).read().strip()
    ex = json.load(open(os.path.join(res, f"{i}-expert.json")))
    ll = json.load(open(os.path.join(res, f"{i}-llama.json")))
    cpu = cpu or ex[0]["cpu"]
    e_pp = next(t for t in ex if t["prefill_tok_s"] is not None)
    e_tg = next(t for t in ex if t["decode_tok_s"] is not None)
    l_pp = next(t for t in ll if t["n_prompt"] > 0 and t["n_gen"] == 0)
    l_tg = next(t for t in ll if t["n_gen"] > 0 and t["n_prompt"] == 0)
    note = os.path.join(res, f"{i}-llama-note")
    if os.path.exists(note):
        label += " †"
        notes.add("† llama.cpp crashed (segmentation fault) with its default weight repacking on this CPU "
                  "(its AMX path), so this row's llama.cpp figures are with `--repack 0`.")
    bpt = bytes_per_token(gguf_path)
    ceiling = gbs * 1e9 / bpt
    f = lambda v, s: f"{v:.1f} ± {s:.1f}"
    lines.append(
        f"| {label} | {e_tg['format']} | {f(l_pp['avg_ts'], l_pp['stddev_ts'])} | {f(l_tg['avg_ts'], l_tg['stddev_ts'])} "
        f"| {f(e_pp['prefill_tok_s'], e_pp['prefill_tok_s_stddev'])} | {f(e_tg['decode_tok_s'], e_tg['decode_tok_s_stddev'])} "
        f"| **{e_pp['prefill_tok_s'] / l_pp['avg_ts']:.2f}** / **{e_tg['decode_tok_s'] / l_tg['avg_ts']:.2f}** "
        f"| {bpt / 1e6:.0f} MB → {ceiling:.1f} | {e_tg['decode_tok_s'] / ceiling:.0%} / {l_tg['avg_ts'] / ceiling:.0%} "
        f"| {e_tg['load_s']:.2f} s, {e_tg['peak_rss_bytes'] / 2**20:.0f} MiB |")
  return cpu, lines, notes

cpu, lines, notes = table(os.path.join(res, "native"))
head = f"""# Benchmarks: expert and llama.cpp side by side

Written by `scripts/bench_peers.sh` on {datetime.date.today()} at commit `{commit}`, in one run: each row runs
`expert bench` and then llama.cpp's `llama-bench` (llama-cpp-python 0.3.36's vendored llama.cpp, built here
with `-DGGML_NATIVE=ON`) on the same file with the same threads.

- CPU: {cpu['model']}; flags: {' '.join(cpu['flags'])}
- threads: {threads}; prompt {p} tokens (prefill, tok/s), decode {n} tokens (tok/s); mean ± standard deviation of {r} repetitions after a warm-up
- read bandwidth: {gbs:.1f} GB/s (2 GiB on 2 MiB pages summed by {threads} threads, the higher of a measurement before and one after the rows; on 4 KiB pages {gbs_4k:.1f} GB/s); ceiling = bandwidth ÷ weight bytes read per decoded token. expert holds its weights on 2 MiB pages (`ops::huge_pages`); llama.cpp maps the file (4 KiB pages)
- the Qwen3 rows are a random-weight checkpoint of the exact Qwen3-0.6B shape (`scripts/make_bench_model.py`), its GGUFs made by
  llama.cpp's `convert_hf_to_gguf.py` (f32, f16, bf16) and `llama-quantize` (q8_0, q4_0, q4_k_m); the safetensors row runs expert on the
  checkpoint itself against llama.cpp on the bf16 GGUF.

| model | expert holds | llama.cpp prefill | llama.cpp decode | expert prefill | expert decode | expert ÷ llama.cpp (prefill / decode) | bytes/token → ceiling tok/s | decode ÷ ceiling (expert / llama.cpp) | expert load, peak RSS |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|
"""
columns = """| model | expert holds | llama.cpp prefill | llama.cpp decode | expert prefill | expert decode | expert ÷ llama.cpp (prefill / decode) | bytes/token → ceiling tok/s | decode ÷ ceiling (expert / llama.cpp) | expert load, peak RSS |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|
"""
text = head + "\n".join(lines) + "\n" + "".join("\n" + n + "\n" for n in sorted(notes))
if os.path.isdir(os.path.join(res, "avx2")):
    _, lines2, notes2 = table(os.path.join(res, "avx2"))
    text += f"""
## The AVX2 paths, on the same CPU in the same run

A stand-in for the AVX2-only CPUs (AMD Zen 3) this project also runs on, not a measurement on one: expert with
`EXPERT_SIMD=avx2` (every kernel of ours on its AVX2 path; the `gemm` crate, which expert uses for f32, f16 and
bf16 prompt rows where there is no AVX-512, keeps its own choice) against a second llama.cpp built from the same
source with `-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF` (its default
weight repacking then works). Same files, threads and bandwidth as above.

{columns}""" + "\n".join(lines2) + "\n" + "".join("\n" + n + "\n" for n in sorted(notes2))
open(out, "w").write(text)
print(open(out).read())
EOF
log "raw results in $RES"
