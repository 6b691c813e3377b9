#!/usr/bin/env python3
"""The peer for `expert bench`: the same workload in transformers.

Same prompt ids (the bench text cycled to --prompt-tokens, tokenized by the
model's tokenizer), greedy decoding of --gen-tokens tokens with the KV cache,
eos ignored; one warm-up run, median of --runs. float32 on CPU by default.

    python3 scripts/bench_transformers.py --model DIR|FILE.gguf [--prompt-tokens 128]
        [--gen-tokens 64] [--runs 3] [--threads N] [--json]
"""
import argparse
import json
import statistics
import time

# Keep in step with BENCH_TEXT in src/cli/bench.rs.
BENCH_TEXT = ("The lighthouse keeper wrote down every ship that passed, the wind, "
              "the colour of the water and the hour the fog rolled in. ")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    import os
    kw = {}
    path = args.model
    if path.endswith(".gguf"):  # transformers dequantizes GGUF weights to float
        path, kw["gguf_file"] = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(path, **kw)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype), **kw).eval()
    load_s = time.perf_counter() - t0
    base = tok(BENCH_TEXT, add_special_tokens=False).input_ids
    ids = (base * (args.prompt_tokens // len(base) + 1))[: args.prompt_tokens]
    prompt = torch.tensor([ids])
    prefill, decode, ttft = [], [], []
    with torch.inference_mode():
        for run in range(args.runs + 1):
            start = time.perf_counter()
            out = model(prompt, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[0, -1].argmax().view(1, 1)
            p_s = time.perf_counter() - start
            d0 = time.perf_counter()
            for _ in range(args.gen_tokens - 1):
                out = model(nxt, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = out.logits[0, -1].argmax().view(1, 1)
            d_s = time.perf_counter() - d0
            if run > 0:
                prefill.append(args.prompt_tokens / p_s)
                decode.append((args.gen_tokens - 1) / d_s)
                ttft.append(p_s)
    r = {"prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens, "runs": args.runs,
         "prefill_tokens_per_s": statistics.median(prefill), "decode_tokens_per_s": statistics.median(decode),
         "time_to_first_token_s": statistics.median(ttft), "load_s": load_s, "dtype": args.dtype,
         "threads": torch.get_num_threads(), "torch": torch.__version__}
    if args.json:
        print(json.dumps(r))
    else:
        print(f"transformers {args.model}: {args.dtype}, {r['threads']} threads, prompt {args.prompt_tokens}, "
              f"{args.gen_tokens} generated, median of {args.runs}")
        print(f"  prefill {r['prefill_tokens_per_s']:.1f} tok/s, first token {r['time_to_first_token_s']:.3f} s, "
              f"decode {r['decode_tokens_per_s']:.1f} tok/s")


if __name__ == "__main__":
    main()
