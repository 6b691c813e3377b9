#!/usr/bin/env python3
"""Run transformers and expert on the same model and text, side by side.

Prints the perplexity from both, the largest logit difference over the whole
text, and the two greedy continuations of each prompt.

    python3 scripts/compare_inference.py --model DIR [--text FILE] [--prompt TEXT]...
        [--standard-prompts] [--chat] [--max-new-tokens 32] [--expert BIN | --build debug|release]
        [--skip-missing-reference] [--check] [--json]

  --text FILE          text to score (default: the prompts, one a line)
  --prompt TEXT        a prompt to continue greedily (repeatable; default: the text's first line)
  --standard-prompts   add the original project's five standard prompts
  --chat               wrap each prompt in the model's chat template (thinking off) on both
                       sides, as `expert chat --prompt` does; default: raw completion
  --build PROFILE      build expert with cargo first and use that binary
  --skip-missing-reference
                       where torch/transformers cannot be imported, say so in one line and show
                       expert's side only (exit 0) instead of failing; no stand-in reference
  --check              exit 1 when a greedy path differs or the NLL differs by more than 1e-4

Needs torch + transformers (pip install torch transformers safetensors) for
the reference: float32 on CPU, eager attention, the reference expert is held
to. scripts/compare_rust_python.{sh,ps1} and scripts/test_inference.{sh,ps1}
are thin wrappers over this file.
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

# The original project's standard prompts (scripts/test_inference.ps1).
STANDARD_PROMPTS = [
    "Olá, como você está?",
    "What is the capital of Brazil?",
    "def fibonacci(n):",
    "Hello world",
    "The capital of Brazil is",
]


def find_expert(explicit, build):
    if explicit:
        return explicit
    exe = "expert.exe" if os.name == "nt" else "expert"
    if build:
        cmd = ["cargo", "build", "--quiet", "--bin", "expert"] + (["--release"] if build == "release" else [])
        print(f"building: {' '.join(cmd)}", file=sys.stderr)
        r = subprocess.run(cmd, cwd=ROOT)
        if r.returncode != 0:
            sys.exit(f"error: {' '.join(cmd)} failed")
        return os.path.join(ROOT, "target", "release" if build == "release" else "debug", exe)
    for profile in ("release", "debug"):
        p = os.path.join(ROOT, "target", profile, exe)
        if os.path.exists(p):
            return p
    sys.exit("error: no expert binary found; run `cargo build --release` or pass --expert / --build")


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8")
    if r.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed: {r.stderr.strip()}")
    return r.stdout


def reference_missing():
    """None when torch and transformers import, else why not."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return f"{e.name or e} is not installed"
    return None


def transformers_side(model_dir, text, prompts, max_new, chat):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    ids = tok(text, return_tensors="pt").input_ids
    greedy = []
    with torch.no_grad():
        out = model(ids, labels=ids)
        for prompt in prompts:
            if chat:
                if not tok.chat_template:
                    sys.exit(f"error: --chat: {model_dir} has no chat template")
                rendered = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                   add_generation_prompt=True, enable_thinking=False)
                p_ids = tok(rendered, add_special_tokens=False, return_tensors="pt").input_ids
            else:
                p_ids = tok(prompt, return_tensors="pt").input_ids
            gen = model.generate(p_ids, attention_mask=torch.ones_like(p_ids), max_new_tokens=max_new,
                                 do_sample=False, temperature=None, top_p=None, top_k=None)
            new = gen[0, p_ids.shape[1]:].tolist()
            greedy.append({"prompt_tokens": p_ids.shape[1], "ids": new,
                           "text": tok.decode(new, skip_special_tokens=True)})
    return {"ids": ids[0].tolist(), "nll": float(out.loss), "logits": out.logits[0].float().numpy(),
            "greedy": greedy}


def expert_side(exe, model_dir, text_file, prompts, max_new, chat, want_logits):
    ppl_cmd = [exe, "perplexity", "--model", model_dir, "--file", text_file, "--json"]
    result = {}
    with tempfile.TemporaryDirectory() as d:
        if want_logits:
            logits_file = os.path.join(d, "logits.safetensors")
            ppl = json.loads(run(ppl_cmd + ["--logits-out", logits_file]))
            from safetensors.numpy import load_file

            dumped = load_file(logits_file)
            result["logits"], result["ids"] = dumped["logits"], dumped["ids"].tolist()
        else:
            ppl = json.loads(run(ppl_cmd))
    result.update(nll=ppl["nll"], tokens=ppl["tokens"], greedy=[])
    for prompt in prompts:
        mode = ["--no-think"] if chat else ["--raw"]
        gen = json.loads(run([exe, "chat", "--model", model_dir, "--prompt", prompt, *mode,
                              "--temperature", "0", "--max-tokens", str(max_new), "--json"]))
        result["greedy"].append({"prompt_tokens": gen["prompt_tokens"], "ids": gen["token_ids"], "text": gen["text"],
                                 "stop_reason": gen["stop_reason"],
                                 "decode_tokens_per_s": gen["stats"]["decode_tokens_per_s"]})
    return result


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face model directory")
    ap.add_argument("--text", help="UTF-8 text file to score (default: the prompts, one a line)")
    ap.add_argument("--prompt", action="append", default=[], help="prompt to continue greedily (repeatable)")
    ap.add_argument("--standard-prompts", action="store_true", help="add the five standard prompts")
    ap.add_argument("--chat", action="store_true", help="use the chat template (thinking off) on both sides")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--expert", help="path of the expert binary")
    ap.add_argument("--build", choices=["debug", "release"], help="cargo build expert first and use it")
    ap.add_argument("--skip-missing-reference", action="store_true",
                    help="without torch/transformers, show expert's side only and exit 0")
    ap.add_argument("--check", action="store_true", help="exit 1 on a greedy or NLL mismatch")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    prompts = list(args.prompt) + (STANDARD_PROMPTS if args.standard_prompts else [])
    with tempfile.TemporaryDirectory() as tmp:
        if args.text:
            text_file = args.text
            with open(text_file, encoding="utf-8") as f:
                text = f.read()
            prompts = prompts or [text.strip().splitlines()[0]]
        elif prompts:
            text = "\n".join(prompts) + "\n"
            text_file = os.path.join(tmp, "prompts.txt")
            with open(text_file, "w", encoding="utf-8") as f:
                f.write(text)
        else:
            sys.exit("error: give --text, --prompt or --standard-prompts")
        exe = find_expert(args.expert, args.build)

        missing = reference_missing()
        if missing and not args.skip_missing_reference:
            sys.exit(f"error: the transformers reference cannot run: {missing} "
                     "(pip install torch transformers safetensors, or pass --skip-missing-reference)")
        ref = None if missing else transformers_side(args.model, text, prompts, args.max_new_tokens, args.chat)
        ours = expert_side(exe, args.model, text_file, prompts, args.max_new_tokens, args.chat, ref is not None)
    report(args, exe, prompts, ref, ours, missing)


def report(args, exe, prompts, ref, ours, missing):
    skipped = (f"transformers reference: skipped ({missing}; pip install torch transformers safetensors "
               "to compare) - expert's side only") if missing else None
    rows = []
    for i, prompt in enumerate(prompts):
        e = ours["greedy"][i]
        row = {"prompt": prompt, "expert": e}
        if ref:
            t = ref["greedy"][i]
            row["transformers"] = t
            row["identical"] = t["ids"] == e["ids"]
            row["first_difference"] = first_difference(t["ids"], e["ids"])
        rows.append(row)
    summary = {"model": args.model, "expert_binary": exe, "mode": "chat" if args.chat else "raw",
               "expert": {"nll": ours["nll"], "ppl": math.exp(ours["nll"]), "tokens": ours["tokens"]},
               "transformers": None, "reference_skipped": skipped, "prompts": rows}
    failed = False
    if ref:
        n = min(len(ref["logits"]), len(ours["logits"]))
        max_diff = float(abs(ref["logits"][:n] - ours["logits"][:n]).max())
        rel = abs(ours["nll"] - ref["nll"]) / abs(ref["nll"])
        summary["transformers"] = {"nll": ref["nll"], "ppl": math.exp(ref["nll"])}
        summary.update(nll_rel_diff=rel, max_abs_logit_diff=max_diff,
                       tokenizations_identical=ref["ids"] == ours["ids"][: len(ref["ids"])])
        failed = rel > 1e-4 or not all(r["identical"] for r in rows)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print(f"model: {args.model}   expert: {exe}   mode: {summary['mode']}   max new tokens: {args.max_new_tokens}")
        if skipped:
            print(skipped)
            print(f"{'':14}{'expert':>18}")
            print(f"{'mean NLL':14}{ours['nll']:>18.6f}")
            print(f"{'perplexity':14}{math.exp(ours['nll']):>18.4f}   over {ours['tokens']} tokens")
        else:
            if not summary["tokenizations_identical"]:
                print("warning: the two tokenizations of the text differ")
            print(f"{'':14}{'transformers':>18}{'expert':>18}")
            print(f"{'mean NLL':14}{ref['nll']:>18.6f}{ours['nll']:>18.6f}   rel diff {summary['nll_rel_diff']:.2e}")
            print(f"{'perplexity':14}{math.exp(ref['nll']):>18.4f}{math.exp(ours['nll']):>18.4f}")
            print(f"max |logit difference| over the text: {summary['max_abs_logit_diff']:.3e}")
        for r in rows:
            e = r["expert"]
            print()
            verdict = "" if "identical" not in r else (
                "  (identical)" if r["identical"] else f"  (DIFFERENT from token {r['first_difference']})")
            print(f"prompt {r['prompt']!r}: {e['prompt_tokens']} tokens{verdict}")
            if "transformers" in r:
                print(f"  transformers: {r['transformers']['text']!r}")
            print(f"  expert:       {e['text']!r}   [{len(e['ids'])} tokens, {e['stop_reason']}, "
                  f"{e['decode_tokens_per_s']:.1f} tok/s]")
            if "identical" in r and not r["identical"]:
                print(f"  transformers ids: {r['transformers']['ids']}\n  expert ids:       {e['ids']}")
    if args.check and failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
