#!/usr/bin/env bash
# Fails when code, tests, scripts or CI refer to the directory beside the
# checkout (the developers' shared folder): a fresh clone has none, so
# everything a build, test or run needs must live inside the repository.
#   bash scripts/check_self_contained.sh [ROOT]
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"
pattern='\.\./'"shared"   # spelled in two pieces so this file does not match itself
if hits=$(grep -rnI -e "$pattern" src tests scripts .ci); then
  printf '%s\n' "$hits" >&2
  echo "error: the lines above refer to a directory outside the repository; copy what they need into tests/fixtures/" >&2
  exit 1
fi
echo "self-contained: src/ tests/ scripts/ .ci/ refer to nothing outside the repository"
