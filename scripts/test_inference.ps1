# Smoke test of `expert chat` on the original project's five standard prompts
# (chat template, thinking off, greedy) next to transformers. Twin of
# scripts/test_inference.sh: same defaults, same shared logic in
# scripts/compare_inference.py; keep the two in step.
#
#   .\scripts\test_inference.ps1 [-Model DIR] [-Release] [other compare_inference.py flags]
param(
    [string]$Model = "tests/fixtures/qwen3/tiny",
    [switch]$Release,
    [Parameter(ValueFromRemainingArguments = $true)][string[]]$Rest = @()
)
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..")
$python = if ($env:PYTHON) { $env:PYTHON } else { "python" }
$build = if ($Release) { "release" } else { "debug" }
& $python scripts/compare_inference.py --model $Model --standard-prompts --chat `
    --max-new-tokens 32 --build $build --skip-missing-reference @Rest
exit $LASTEXITCODE
