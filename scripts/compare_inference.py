#!/usr/bin/env python3
"""Run transformers and expert on the same model and text, side by side.

Prints the perplexity from both, the largest logit difference over the whole
text, and the two greedy continuations of a prompt.

    python3 scripts/compare_inference.py --model DIR --text FILE [--prompt TEXT]
        [--max-new-tokens 32] [--expert target/release/expert] [--json]

Needs torch + transformers (pip install torch transformers safetensors);
float32 on CPU, eager attention: the reference expert is held to.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def find_expert(explicit):
    if explicit:
        return explicit
    for profile in ("release", "debug"):
        p = os.path.join(ROOT, "target", profile, "expert")
        if os.path.exists(p):
            return p
    sys.exit("error: no expert binary found; run `cargo build --release` or pass --expert")


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed: {r.stderr.strip()}")
    return r.stdout


def transformers_side(model_dir, text, prompt, max_new):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(ids, labels=ids)
        p_ids = tok(prompt, return_tensors="pt").input_ids
        gen = model.generate(p_ids, max_new_tokens=max_new, do_sample=False, temperature=None,
                             top_p=None, top_k=None)
    new = gen[0, p_ids.shape[1]:].tolist()
    return {
        "ids": ids[0].tolist(),
        "nll": float(out.loss),
        "logits": out.logits[0].float().numpy(),
        "greedy_ids": new,
        "greedy_text": tok.decode(new, skip_special_tokens=True),
    }


def expert_side(exe, model_dir, text_file, prompt, max_new):
    from safetensors.numpy import load_file

    with tempfile.TemporaryDirectory() as d:
        logits_file = os.path.join(d, "logits.safetensors")
        ppl = json.loads(run([exe, "perplexity", "--model", model_dir, "--file", text_file, "--json",
                              "--logits-out", logits_file]))
        dumped = load_file(logits_file)
    gen = json.loads(run([exe, "chat", "--model", model_dir, "--prompt", prompt, "--raw",
                          "--temperature", "0", "--max-tokens", str(max_new), "--json"]))
    return {"nll": ppl["nll"], "tokens": ppl["tokens"], "logits": dumped["logits"],
            "ids": dumped["ids"].tolist(), "greedy_ids": gen["token_ids"], "greedy_text": gen["text"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face model directory")
    ap.add_argument("--text", required=True, help="UTF-8 text file to score")
    ap.add_argument("--prompt", help="prompt for the greedy continuation (default: the text's first line)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--expert", help="path of the expert binary")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    prompt = args.prompt or text.strip().splitlines()[0]
    exe = find_expert(args.expert)

    ref = transformers_side(args.model, text, prompt, args.max_new_tokens)
    ours = expert_side(exe, args.model, args.text, prompt, args.max_new_tokens)
    if ref["ids"] != ours["ids"][: len(ref["ids"])]:
        print("warning: the two tokenizations differ", file=sys.stderr)
    n = min(len(ref["logits"]), len(ours["logits"]))
    max_diff = float(abs(ref["logits"][:n] - ours["logits"][:n]).max())
    same = ref["greedy_ids"] == ours["greedy_ids"]
    report = {
        "transformers": {"nll": ref["nll"], "ppl": math.exp(ref["nll"]), "greedy_ids": ref["greedy_ids"],
                         "greedy_text": ref["greedy_text"]},
        "expert": {"nll": ours["nll"], "ppl": math.exp(ours["nll"]), "greedy_ids": ours["greedy_ids"],
                   "greedy_text": ours["greedy_text"]},
        "nll_rel_diff": abs(ours["nll"] - ref["nll"]) / abs(ref["nll"]),
        "max_abs_logit_diff": max_diff,
        "greedy_identical": same,
    }
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return
    print(f"{'':14}{'transformers':>18}{'expert':>18}")
    print(f"{'mean NLL':14}{ref['nll']:>18.6f}{ours['nll']:>18.6f}   rel diff {report['nll_rel_diff']:.2e}")
    print(f"{'perplexity':14}{math.exp(ref['nll']):>18.4f}{math.exp(ours['nll']):>18.4f}")
    print(f"max |logit difference| over {n} positions: {max_diff:.3e}")
    print(f"greedy continuation of {prompt!r} ({'identical' if same else 'DIFFERENT'}):")
    print(f"  transformers: {ref['greedy_text']!r}")
    print(f"  expert:       {ours['greedy_text']!r}")
    if not same:
        print(f"  transformers ids: {ref['greedy_ids']}\n  expert ids:       {ours['greedy_ids']}")


if __name__ == "__main__":
    main()
