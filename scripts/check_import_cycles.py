#!/usr/bin/env python3
"""Fails when modules under src/ import each other in a cycle.

Reads the `use` graph from the text: `use crate::…`, `use super::…`, `use self::…` and inline
`crate::a::b` paths, each resolved to the longest module path that exists (a file `src/a/b.rs` or
`src/a/b/mod.rs` is module `a::b`). A parent using its own children (mod.rs re-exporting or
dispatching) is not an edge, and neither is test code (`#[cfg(test)]` modules and what follows
them in a file): the graph is the product's. Prints the cycles (strongly connected groups) and exits 1 if any.

    python3 scripts/check_import_cycles.py [--graph] [SRC_DIR]
"""
import re
import sys
from pathlib import Path

args = [a for a in sys.argv[1:] if not a.startswith("--")]
src = Path(args[0] if args else Path(__file__).resolve().parent.parent / "src")
modules = {}
for f in src.rglob("*.rs"):
    parts = list(f.relative_to(src).with_suffix("").parts)
    if parts[-1] == "mod":
        parts = parts[:-1]
    if parts in (["lib"], ["main"]):
        parts = []
    modules["::".join(parts)] = f

PATH = re.compile(r"\b(crate|super|self)((?:::\w+)+)")
USE = re.compile(r"\buse\s+(crate|super|self)::(\{[^;]*\}|[^;]*);", re.S)


def resolve(current: str, head: str, rest: list[str]) -> str | None:
    here = current.split("::") if current else []
    base = [] if head == "crate" else here if head == "self" else here[:-1]
    segs = base + [s for s in rest if s]
    while segs and segs[0] == "super":  # super::super::…
        base = base[:-1]
        segs = base + segs[1:]
    for n in range(len(segs), -1, -1):
        if "::".join(segs[:n]) in modules:
            return "::".join(segs[:n])
    return None


def use_paths(tree: str) -> list[list[str]]:
    """`a::{b, c::d}` → [[a, b], [a, c, d]] (globs and renames kept to the path)."""
    tree = re.sub(r"\s+", "", tree)
    m = re.match(r"^(.*?)\{(.*)\}$", tree)
    if not m:
        return [[s for s in re.sub(r"as\w+$", "", tree).split("::") if s and s != "*"]]
    prefix = [s for s in m.group(1).split("::") if s]
    out, depth, cur = [], 0, ""
    for ch in m.group(2) + ",":
        if ch == "," and depth == 0:
            if cur:
                out += [prefix + p for p in use_paths(cur)]
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    return out


TEST_MOD = re.compile(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)")
# Modules compiled only for tests (`#[cfg(test)] mod x;` in their parent) are left out.
for mod, f in list(modules.items()):
    for name in TEST_MOD.findall(f.read_text()):
        modules.pop(f"{mod}::{name}" if mod else name, None)

edges: dict[str, set[str]] = {m: set() for m in modules}
for mod, f in modules.items():
    text = re.sub(r"//[^\n]*", "", f.read_text())
    test = TEST_MOD.search(text)
    if test:  # unit tests sit at the end of a file
        text = text[: test.start()]
    found = [(h, p) for h, t in USE.findall(text) for p in use_paths(t)]
    found += [(h, r.split("::")[1:]) for h, r in PATH.findall(USE.sub("", text))]
    for head, rest in found:
        target = resolve(mod, head, rest)
        if target is None or target == mod:
            continue
        if target.startswith(mod + "::") or (mod == "" and target):  # parent → own child
            continue
        edges[mod].add(target)

# Tarjan's strongly connected components.
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]


def visit(v: str) -> None:
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        group = []
        while True:
            w = stack.pop()
            on.discard(w)
            group.append(w)
            if w == v:
                break
        if len(group) > 1:
            sccs.append(sorted(group))


sys.setrecursionlimit(10000)
for v in sorted(edges):
    if v not in index:
        visit(v)
if "--graph" in sys.argv:
    for v in sorted(edges):
        for w in sorted(edges[v]):
            print(f"{v or 'crate'} -> {w}")
for group in sccs:
    print("cycle: " + ", ".join(group))
    for v in group:
        for w in sorted(edges[v] & set(group)):
            print(f"    {v} -> {w}")
if sccs:
    sys.exit(1)
print(f"no import cycles among {len(modules)} modules")
