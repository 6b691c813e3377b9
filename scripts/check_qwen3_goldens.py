#!/usr/bin/env python3
"""Independent check of tests/fixtures/qwen3/*/golden.json.

A from-scratch float64 numpy implementation of the Qwen3 forward pass (no transformers), reading
only config.json and the safetensors files, recomputes every golden (logit slices, NLL, top-20,
greedy paths, text NLL) and compares. It doubles as a compact, readable reference for the Rust
implementation, including the yarn / linear / dynamic-NTK RoPE variants.

Usage: python3 scripts/check_qwen3_goldens.py [fixture ...]
Needs numpy and nothing else (safetensors files are read by `read_safetensors` below).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "qwen3"


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A safetensors file as float64 arrays: 8-byte header length, JSON header, raw data."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        buf = data[a:b]
        if t["dtype"] == "BF16":  # the top half of an f32
            arr = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif t["dtype"] == "F16":
            arr = np.frombuffer(buf, dtype="<f2")
        elif t["dtype"] == "F32":
            arr = np.frombuffer(buf, dtype="<f4")
        else:
            raise SystemExit(f"{path}: {name}: dtype {t['dtype']} not handled")
        out[name] = arr.astype(np.float64).reshape(t["shape"])
    return out


def load_weights(d: Path) -> dict[str, np.ndarray]:
    files = sorted(d.glob("*.safetensors"))
    index = d / "model.safetensors.index.json"
    if index.exists():
        files = sorted({d / f for f in json.loads(index.read_text())["weight_map"].values()})
    w = {}
    for f in files:
        w.update(read_safetensors(f))
    return w


def rope_inv_freq(cfg: dict, seq_len: int) -> tuple[np.ndarray, float]:
    theta = float(cfg["rope_theta"])
    dim = cfg["head_dim"]
    e = np.arange(0, dim, 2, dtype=np.float64) / dim
    default = 1.0 / theta**e
    rs = cfg.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind == "default":
        return default, 1.0
    if kind == "linear":
        return default / rs["factor"], 1.0
    if kind == "dynamic":
        m = cfg["max_position_embeddings"]
        s = max(seq_len, m)
        base = theta * (rs["factor"] * s / m - (rs["factor"] - 1)) ** (dim / (dim - 2))
        return 1.0 / base**e, 1.0
    if kind == "yarn":
        f, l0 = rs["factor"], rs["original_max_position_embeddings"]
        bf, bs = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1
        corr = lambda r: dim * math.log(l0 / (r * 2 * math.pi)) / (2 * math.log(theta))  # noqa: E731
        low, high = max(math.floor(corr(bf)), 0), min(math.ceil(corr(bs)), dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2) - low) / (high - low), 0, 1)
        inv = (default / f) * ramp + default * (1 - ramp)
        mscale = 1.0 if f <= 1 else 0.1 * math.log(f) + 1.0
        return inv, mscale
    raise NotImplementedError(kind)


def rms(x, w, eps):
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def forward(cfg: dict, w: dict, ids: list[int]) -> np.ndarray:
    L = len(ids)
    H, KV, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps = cfg["rms_norm_eps"]
    inv, scale = rope_inv_freq(cfg, L)  # one fresh full forward: seq_len = L
    ang = np.arange(L)[:, None] * inv[None, :]
    ang = np.concatenate([ang, ang], axis=-1)
    cos, sin = np.cos(ang) * scale, np.sin(ang) * scale  # (L, D)
    x = w["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((L, L), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(L, H, D)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(L, KV, D)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(L, KV, D)
        q = rms(q, w[p + "self_attn.q_norm.weight"], eps)
        k = rms(k, w[p + "self_attn.k_norm.weight"], eps)
        q = q * cos[:, None] + rotate_half(q) * sin[:, None]
        k = k * cos[:, None] + rotate_half(k) * sin[:, None]
        rep = H // KV
        k = np.repeat(k, rep, axis=1)  # head j uses kv head j // rep
        v = np.repeat(v, rep, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(D) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", s, v).reshape(L, H * D)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"], eps)
        g = h @ w[p + "mlp.gate_proj.weight"].T
        u = h @ w[p + "mlp.up_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ w[p + "mlp.down_proj.weight"].T
    x = rms(x, w["model.norm.weight"], eps)
    out_w = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ out_w.T


def nll(logits: np.ndarray, ids: list[int]) -> float:
    z = logits[:-1]
    lse = z.max(-1) + np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1))
    return float(np.mean(lse - z[np.arange(len(ids) - 1), ids[1:]]))


def check(name: str) -> float:
    d = ROOT / name
    cfg = json.loads((d / "config.json").read_text())
    g = json.loads((d / "golden.json").read_text())
    w = load_weights(d)
    worst = 0.0
    for s in g["sequences"]:
        lg = forward(cfg, w, s["ids"])
        lo = s["logits"]
        for pos, vals in zip(lo["positions"], lo["values"]):
            ref = np.array(vals)
            diff = np.abs(lg[pos, lo["start"]:lo["start"] + len(vals)] - ref).max()
            worst = max(worst, diff)
            assert diff < 2e-3, (name, pos, diff)
        assert abs(nll(lg, s["ids"]) - s["nll"]) < 1e-4, (name, nll(lg, s["ids"]), s["nll"])
        top = np.argsort(-lg[-1], kind="stable")[:20]
        assert list(top) == s["last_top"]["ids"], (name, list(top), s["last_top"]["ids"])
        assert np.abs(lg[-1][top] - np.array(s["last_top"]["values"])).max() < 2e-3
        if "rope" in s:
            inv, _ = rope_inv_freq(cfg, len(s["ids"]))
            np.testing.assert_allclose(inv, s["rope"]["inv_freq"], rtol=2e-6)
    for gr in g["greedy"]:
        ids = list(gr["prompt_ids"])
        margin = math.inf
        for _ in gr["new_ids"]:
            last = forward(cfg, w, ids)[-1]
            a, b = np.sort(last)[-2:][::-1]
            margin = min(margin, a - b)
            ids.append(int(np.argmax(last)))
        assert ids[len(gr["prompt_ids"]):] == gr["new_ids"], (name, ids, gr["new_ids"])
        assert abs(margin - gr["min_margin"]) < 2e-3, (margin, gr["min_margin"])
    for t in g.get("texts", []):
        assert abs(nll(forward(cfg, w, t["ids"]), t["ids"]) - t["nll"]) < 1e-4
    return worst


def main() -> None:
    names = sys.argv[1:] or sorted(p.name for p in ROOT.iterdir() if (p / "golden.json").exists())
    for n in names:
        print(f"{n:12s} ok (max |logit diff| vs numpy float64: {check(n):.2e})", flush=True)


if __name__ == "__main__":
    main()
