#!/usr/bin/env python3
"""The llama.cpp peer for `expert bench` on a GGUF file (via llama-cpp-python).

Same workload as `expert bench` and scripts/bench_transformers.py: the bench
text cycled to --prompt-tokens (llama.cpp's own tokenizer), one prefill pass,
then greedy decoding of --gen-tokens tokens, eos ignored; one warm-up run,
median of --runs.

    pip install llama-cpp-python      # builds llama.cpp from source
    python3 scripts/bench_llama_cpp.py --model FILE.gguf [--prompt-tokens 128]
        [--gen-tokens 64] [--runs 3] [--threads 2] [--json]
"""
import argparse
import json
import statistics
import time

from bench_transformers import BENCH_TEXT  # the same text as src/cli/bench.rs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import llama_cpp

    llm = llama_cpp.Llama(model_path=args.model, n_ctx=args.prompt_tokens + args.gen_tokens + 8,
                          n_threads=args.threads, n_batch=512, verbose=False)
    base = llm.tokenize(BENCH_TEXT.encode(), add_bos=False, special=False)
    ids = (base * (args.prompt_tokens // len(base) + 1))[: args.prompt_tokens]
    prefill, decode = [], []
    for run in range(args.runs + 1):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        p_s = time.perf_counter() - t0
        d0 = time.perf_counter()
        for _ in range(args.gen_tokens - 1):
            llm.eval([tok])
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        d_s = time.perf_counter() - d0
        if run > 0:
            prefill.append(args.prompt_tokens / p_s)
            decode.append((args.gen_tokens - 1) / d_s)
    r = {"prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens, "runs": args.runs,
         "prefill_tokens_per_s": statistics.median(prefill), "decode_tokens_per_s": statistics.median(decode),
         "threads": args.threads, "llama_cpp_python": llama_cpp.__version__}
    if args.json:
        print(json.dumps(r))
    else:
        print(f"llama.cpp {args.model}: {args.threads} threads, prompt {args.prompt_tokens}, "
              f"{args.gen_tokens} generated: prefill {r['prefill_tokens_per_s']:.1f} tok/s, "
              f"decode {r['decode_tokens_per_s']:.1f} tok/s")


if __name__ == "__main__":
    main()
