# Builds expert with the `cuda` feature on Windows (twin of scripts/build-cuda.sh).
#
#   .\build-cuda.ps1            # cargo build --release --features cuda
#   .\build-cuda.ps1 -Check     # compile check only
#   .\build-cuda.ps1 -DebugBuild  # a debug build
#   .\build-cuda.ps1 -ComputeCap 89
#
# Needs: the CUDA Toolkit (CUDA_PATH, set by its installer, or nvcc on PATH),
# Visual Studio's C++ build tools (nvcc compiles the kernels with cl.exe; the
# script loads the VS developer environment itself when cl.exe is not on
# PATH), and Rust (rustup, MSVC toolchain).
# The compute capability defaults to the first GPU's (nvidia-smi).
param(
    [switch]$Check,
    [switch]$DebugBuild,
    [string]$ComputeCap = $env:CUDA_COMPUTE_CAP
)
$ErrorActionPreference = "Stop"
Set-Location $PSScriptRoot

function Fail($msg) { Write-Host "build-cuda: $msg" -ForegroundColor Red; exit 1 }

# 1. The CUDA toolkit.
$cuda = $env:CUDA_PATH
if (-not $cuda -or -not (Test-Path (Join-Path $cuda "bin\nvcc.exe"))) {
    $nvcc = Get-Command nvcc.exe -ErrorAction SilentlyContinue
    if ($nvcc) { $cuda = Split-Path (Split-Path $nvcc.Source) }
    else { Fail "CUDA Toolkit not found: install it from https://developer.nvidia.com/cuda-downloads (it sets CUDA_PATH), then open a new terminal" }
}
$env:CUDA_PATH = $cuda
$env:CUDA_HOME = $cuda
$env:PATH = "$(Join-Path $cuda 'bin');$env:PATH"
& nvcc --version | Select-Object -Last 2

# 2. cl.exe for nvcc: load the Visual Studio developer environment if needed.
if (-not (Get-Command cl.exe -ErrorAction SilentlyContinue)) {
    $vswhere = Join-Path ${env:ProgramFiles(x86)} "Microsoft Visual Studio\Installer\vswhere.exe"
    if (-not (Test-Path $vswhere)) { Fail "cl.exe not found: install Visual Studio (or its Build Tools) with the C++ workload" }
    $vs = & $vswhere -latest -products * -requires Microsoft.VisualStudio.Component.VC.Tools.x86.x64 -property installationPath
    if (-not $vs) { Fail "Visual Studio has no C++ tools: add the 'Desktop development with C++' workload" }
    $vcvars = Join-Path $vs "VC\Auxiliary\Build\vcvars64.bat"
    cmd /c "`"$vcvars`" >nul && set" | ForEach-Object {
        if ($_ -match '^([^=]+)=(.*)$') { Set-Item -Path "env:$($matches[1])" -Value $matches[2] }
    }
}

# 3. The GPU architecture.
if (-not $ComputeCap) {
    $smi = Get-Command nvidia-smi.exe -ErrorAction SilentlyContinue
    if ($smi) { $ComputeCap = ((& nvidia-smi --query-gpu=compute_cap --format=csv,noheader | Select-Object -First 1) -replace '\.', '').Trim() }
    if (-not $ComputeCap) { Fail "no GPU visible and -ComputeCap not given (e.g. -ComputeCap 89 for an RTX 40xx)" }
}
$env:CUDA_COMPUTE_CAP = $ComputeCap
if (-not $env:CARGO_TARGET_DIR) { $env:CARGO_TARGET_DIR = "target\cuda" }
Write-Host "build-cuda: compute capability $ComputeCap, target dir $env:CARGO_TARGET_DIR"

# 4. Build.
if ($Check) {
    cargo check --features cuda --all-targets
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
    Write-Host "cargo check --features cuda: ok"
    exit 0
}
if ($DebugBuild) { cargo build --features cuda --bin expert; $out = "$env:CARGO_TARGET_DIR\debug\expert.exe" }
else { cargo build --release --features cuda --bin expert; $out = "$env:CARGO_TARGET_DIR\release\expert.exe" }
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
Write-Host "build-cuda: built $out; e.g.: $out chat --model Qwen/Qwen3-0.6B --device cuda"
Write-Output $out
