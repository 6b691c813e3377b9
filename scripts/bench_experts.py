#!/usr/bin/env python3
"""Memory and speed of LoRA experts: peak RSS with 0, 1 and 4 resident adapters, and decode
throughput of the base, one adapter unmerged and the same adapter merged (--merge).

    python3 scripts/bench_experts.py --model DIR [--expert target/release/expert] [--rank 16]

DIR is a Qwen3 safetensors directory (scripts/make_bench_model.py writes a random one with the
real Qwen3-0.6B shapes). The adapters are random PEFT-format LoRA adapters (r 16, alpha 32, all
seven projections, f32 storage) written next to the output in a temporary directory: speed and
memory do not depend on the values. Needs numpy and safetensors (no torch). A benchmark, not a test.
"""
import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def make_adapter(out: Path, cfg: dict, r: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    h, i, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    shapes = {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
              "self_attn.o_proj": (h, q), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h),
              "mlp.down_proj": (h, i)}
    t = {}
    for layer in range(cfg["num_hidden_layers"]):
        for m, (o, n) in shapes.items():
            p = f"base_model.model.model.layers.{layer}.{m}"
            t[f"{p}.lora_A.weight"] = (rng.standard_normal((r, n)) / np.sqrt(n)).astype(np.float32)
            t[f"{p}.lora_B.weight"] = (rng.standard_normal((o, r)) * 0.01).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    save_file(t, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "bias": "none",
        "target_modules": [m.split(".")[1] for m in shapes]}))
    return sum(v.size for v in t.values())


def run(cmd):
    out = subprocess.run(["/usr/bin/time", "-f", "RSS_KB %M"] + cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    rss = int([l for l in out.stderr.splitlines() if l.startswith("RSS_KB")][-1].split()[1])
    tests = json.loads(out.stdout)  # `expert bench --json`: one object per test
    prefill = next(t for t in tests if t["prefill_tok_s"] is not None)
    decode = next(t for t in tests if t["decode_tok_s"] is not None)
    return {"prefill_tok_s": prefill["prefill_tok_s"], "decode_tok_s": decode["decode_tok_s"]}, rss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--expert", default="target/release/expert")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    cfg = json.loads((Path(args.model) / "config.json").read_text())
    tmp = Path(tempfile.mkdtemp())
    names = [f"a{k}" for k in range(4)]
    params = [make_adapter(tmp / n, cfg, args.rank, k) for k, n in enumerate(names)]
    bench = [args.expert, "bench", "-m", args.model, "--json", "-p", "32",
             "-n", str(args.gen_tokens), "-r", str(args.runs)]
    flags = lambda ns: sum((["--adapter", f"{n}={tmp / n}"] for n in ns), [])
    rows = [
        ("base, no adapter", bench),
        ("1 adapter resident, unused", bench + flags(names[:1]) + ["--expert", "none"]),
        ("4 adapters resident, unused", bench + flags(names) + ["--expert", "none"]),
        ("1 adapter, unmerged", bench + flags(names[:1])),
        ("4 resident, 1 in use, unmerged", bench + flags(names) + ["--expert", "a0"]),
        ("1 adapter, merged (--merge)", bench + flags(names[:1]) + ["--merge"]),
    ]
    print(f"adapter: r {args.rank}, all seven projections, {params[0]:,} parameters "
          f"({params[0] * 4 / 2**20:.1f} MiB as f32)")
    print("| run | decode tok/s | prefill tok/s | peak RSS MiB |\n|---|---|---|---|")
    for name, cmd in rows:
        r, rss = run(cmd)
        print(f"| {name} | {r['decode_tok_s']:.1f} | {r['prefill_tok_s']:.1f} | {rss:.0f} |", flush=True)


if __name__ == "__main__":
    main()
