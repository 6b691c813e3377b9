#!/usr/bin/env python3
"""List a Hugging Face checkpoint's tensors and validate them against config.json.

The original project's weight-inspection tool, kept. It reads only the
safetensors headers (standard library only: no torch, no safetensors package)
and gives the same verdicts, in the same words, as `expert inspect`:
missing tensors, wrong shapes, unsupported dtypes, and the lm_head rule
(absent + tied -> share the embedding; absent + untied -> error; present +
tied -> the stored copy is used).

    python3 scripts/check_safetensors_keys.py MODEL_DIR [--json]

Exit status: 0 valid, 1 invalid, 2 unreadable input.
"""
import argparse
import json
import os
import re
import struct
import sys


def read_header(path):
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: too short for a safetensors header")
        (n,) = struct.unpack("<Q", raw)
        if n > os.path.getsize(path):
            raise ValueError(f"{path}: header length {n} exceeds the file size")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def safetensors_files(model_dir):
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return sorted({os.path.join(model_dir, v) for v in weight_map.values()})
    raise ValueError(f"{model_dir}: no model.safetensors or model.safetensors.index.json found")


def expected_tensors(cfg):
    """Every tensor a Qwen3 config implies, with its shape (lm_head only when untied)."""
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    d = cfg.get("head_dim") or h // heads
    q, kv = heads * d, kv_heads * d
    out = [("model.embed_tokens.weight", [cfg["vocab_size"], h])]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        out += [(f"{p}.input_layernorm.weight", [h]),
                (f"{p}.self_attn.q_proj.weight", [q, h]),
                (f"{p}.self_attn.k_proj.weight", [kv, h]),
                (f"{p}.self_attn.v_proj.weight", [kv, h])]
        if cfg.get("attention_bias"):
            out += [(f"{p}.self_attn.q_proj.bias", [q]),
                    (f"{p}.self_attn.k_proj.bias", [kv]),
                    (f"{p}.self_attn.v_proj.bias", [kv])]
        out += [(f"{p}.self_attn.o_proj.weight", [h, q]),
                (f"{p}.self_attn.q_norm.weight", [d]),
                (f"{p}.self_attn.k_norm.weight", [d]),
                (f"{p}.post_attention_layernorm.weight", [h]),
                (f"{p}.mlp.gate_proj.weight", [i, h]),
                (f"{p}.mlp.up_proj.weight", [i, h]),
                (f"{p}.mlp.down_proj.weight", [h, i])]
    out.append(("model.norm.weight", [h]))
    if not cfg.get("tie_word_embeddings", False):
        out.append(("lm_head.weight", [cfg["vocab_size"], h]))
    return out


def natural_key(name):
    return [(0, int(p)) if p.isdigit() else (1, p) for p in name.split(".")]


def validate(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    tensors = {}
    for path in safetensors_files(model_dir):
        for name, info in read_header(path).items():
            tensors[name] = {"name": name, "dtype": info["dtype"], "shape": info["shape"],
                             "file": os.path.basename(path)}
    expected = expected_tensors(cfg)
    tied = cfg.get("tie_word_embeddings", False)
    has_head = "lm_head.weight" in tensors
    lm_head = {(True, False): "tied", (True, True): "tied_stored_copy",
               (False, True): "untied", (False, False): None}[(tied, has_head)]
    if tied and has_head:
        expected.append(("lm_head.weight", [cfg["vocab_size"], cfg["hidden_size"]]))
    problems = []
    for name, shape in expected:
        t = tensors.get(name)
        if t is None and name == "lm_head.weight":
            problems.append("missing tensor `lm_head.weight` (tie_word_embeddings is false, "
                            "so the checkpoint must store it)")
        elif t is None:
            problems.append(f"missing tensor `{name}`")
        elif t["shape"] != shape:
            problems.append(f"{t['file']}: tensor `{name}`: expected shape {fmt(shape)}, "
                            f"found {fmt(t['shape'])}")
        elif t["dtype"] not in ("BF16", "F16", "F32"):
            problems.append(f"{t['file']}: tensor `{name}`: dtype {t['dtype']} is not supported "
                            "(expected BF16, F16 or F32)")
    wanted = {n for n, _ in expected}
    listed = sorted(tensors.values(), key=lambda t: natural_key(t["name"]))
    return {
        "valid": not problems,
        "lm_head": lm_head,
        "problems": problems,
        "unused": [t["name"] for t in listed if t["name"] not in wanted],
        "tensors": listed,
    }


def fmt(shape):
    return "[" + ", ".join(str(x) for x in shape) + "]"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--json", action="store_true", help="print the verdict as JSON")
    args = ap.parse_args()
    try:
        report = validate(args.model_dir)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for t in report["tensors"]:
            print(f"  {t['name']:<55} {t['dtype']:<5} {fmt(t['shape'])}  {t['file']}")
        print(f"lm_head      {report['lm_head'] or 'MISSING'}")
        for u in report["unused"]:
            print(f"unused       {u}")
        for p in report["problems"]:
            print(f"problem      {p}")
        print("verdict      " + ("OK" if report["valid"] else f"INVALID ({len(report['problems'])} problems)"))
    return 0 if report["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
