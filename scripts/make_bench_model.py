#!/usr/bin/env python3
"""A random-weight checkpoint with the real Qwen3-0.6B shapes, for benchmarks.

No trained Qwen3 weights are available here; speed does not depend on the
values, so this gives representative throughput. Not committed (1.2 GB).

    python3 scripts/make_bench_model.py [--out /tmp/qwen3-0.6b-random] [--shared DIR]   # default: the in-repo Qwen3-0.6B config and tokenizer
"""
import argparse
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/qwen3-0.6b-random")
    ap.add_argument("--shared", default=None)
    args = ap.parse_args()
    if args.shared is None:
        from qwen3_reference import reference_dir

        args.shared = str(reference_dir())
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(args.shared)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(args.out)
    for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"]:
        shutil.copy(os.path.join(args.shared, f), os.path.join(args.out, f))
    print(args.out)


if __name__ == "__main__":
    main()
