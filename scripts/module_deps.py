#!/usr/bin/env python3
"""The library's module graph, checked: no import loop and no upward import.

Reads every module of `src/` (not `src/bin/`: the binary may use anything; not the `tests`
modules: a test may reach anywhere), takes the paths its code names — `crate::…`, `super::…`
and grouped `crate::{…}` imports; string literals, comments and inline `#[cfg(test)]` modules
left out — resolves each to the longest module it names, and checks

  - that the graph has no cycle (Tarjan's strongly connected components), at every depth of
    the module tree: a module and its submodules count as one node at the depth above them
    (so `a::x -> b -> a` is a loop of `a` and `b`), siblings are separate nodes at theirs; an
    edge between a module and one of its own ancestors or descendants (`use super::*` in a
    submodule, `mod` and `pub use` in its parent) does not count; and
  - that every edge goes to a layer at or below the importer's, by the LAYERS table below,
    which is the order ARCHITECTURE.md describes.

Usage: scripts/module_deps.py [--print] — exits 1 with one line per problem; --print also
prints each module's imports. Nothing outside the standard library.
"""
import os
import re
import sys
from collections import defaultdict

# Module (or prefix) -> layer; a module takes the entry of its longest listed prefix.
LAYERS = {
    # Foundations: data, the hidden truth, metrics and the events that update them.
    "cpu": 0, "progress": 0, "data": 0, "input_range": 0, "evaluation": 0,
    "corruption": 0, "metrics": 0, "events": 0,
    # The method's parts and the model's lifecycle.
    "cnn_cpu": 1, "mlp_cpu": 1, "model": 1, "train": 1, "attribution": 1, "partition": 1,
    "noise_model": 1, "prune": 1, "onnx": 1, "store": 1,
    # Algorithm 1 offline.
    "experiment": 2,
    # The streaming daemon, lowest stage first.
    "stream": 3.0,
    "stream::schema": 3.0, "stream::offsets": 3.0, "stream::online_gmm": 3.0,
    "stream::trigger": 3.0, "stream::replay": 3.0, "stream::guard": 3.0,
    "stream::config": 3.1,
    "stream::verdicter": 3.2, "stream::features": 3.2,
    "stream::cycle": 3.3,
    "stream::engine": 3.4,
    "stream::state": 3.5, "stream::kafka": 3.5,
    "stream::sink": 3.6,
    "stream::scorer": 3.7,
    "stream::source": 3.8,
    "stream::daemon": 3.9,
    # The HTTP API over the store (reads the daemon's handles when composed with it).
    "api": 4,
    # Composition and clients.
    "app": 5, "drivers": 5,
}


def modules(root="src"):
    out = {}
    for dirpath, _, files in os.walk(root):
        if os.path.relpath(dirpath, root).split(os.sep)[0] == "bin":
            continue
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            is_dir_module = parts[-1] in ("mod", "lib", "main")
            if is_dir_module:
                parts = parts[:-1]
            if parts and parts[-1] == "tests":
                continue
            if parts:
                out["::".join(parts)] = (path, is_dir_module)
    return out


STRING = re.compile(r'b?r(#*)"(.|\n)*?"\1|b?"(\\.|[^"\\])*"', re.S)
TEST_ATTR = re.compile(r"#\[cfg\(test\)\]\s*(pub(\([a-z]+\))?\s+)?mod\s+\w+\s*\{")


def code_of(path):
    src = open(path).read()
    src = STRING.sub('""', src)
    src = re.sub(r"//[^\n]*", "", src)
    src = re.sub(r"/\*.*?\*/", "", src, flags=re.S)
    # Inline test modules: from the attribute to the matching closing brace.
    while (m := TEST_ATTR.search(src)) is not None:
        depth, i = 1, m.end()
        while i < len(src) and depth:
            depth += {"{": 1, "}": -1}.get(src[i], 0)
            i += 1
        src = src[: m.start()] + src[i:]
    return src


def expand(text):
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"] (top level of one use tree)."""
    text = text.strip()
    if "{" not in text:
        return [text] if text else []
    head, _, rest = text.partition("{")
    inner = rest[: rest.rfind("}")]
    items, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    items.append(cur)
    out = []
    for it in items:
        for e in expand(it):
            out.append(head + e if e not in ("self", "*") else head.rstrip(":"))
    return out


def references(code):
    """Every `crate::…` or `super::…` path in `code`, grouped imports expanded."""
    refs = []
    for m in re.finditer(r"\b(crate|super)((?:::super)*)::\{", code):
        depth, i = 1, m.end()
        while i < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[i], 0)
            i += 1
        refs += expand(code[m.start():i])
    refs += [m.group(0) for m in re.finditer(r"\b(?:crate|super)(?:::super)*(?:::[A-Za-z_][A-Za-z_0-9]*)+", code)]
    return refs


def resolve(ref, module, is_dir_module, mods):
    """The longest module `ref` (seen from `module`) names, or None."""
    parts = [p for p in ref.split("::") if p]
    if parts[0] == "crate":
        base, parts = [], parts[1:]
    else:
        # `super` of a file module `a::b` (src/a/b.rs) is `a`; of a directory module `a::b`
        # (src/a/b/mod.rs) also `a`.
        base = module.split("::")[:-1] if module else []
        parts = parts[1:]
        while parts and parts[0] == "super":
            base, parts = base[:-1], parts[1:]
    full = base + parts
    for k in range(len(full), 0, -1):
        cand = "::".join(full[:k])
        if cand in mods:
            return cand
    return None


def layer(m):
    parts = m.split("::")
    for k in range(len(parts), 0, -1):
        p = "::".join(parts[:k])
        if p in LAYERS:
            return LAYERS[p]
    return None


def related(a, b):
    return a == b or a.startswith(b + "::") or b.startswith(a + "::")


def graph(mods):
    edges = defaultdict(set)
    for m, (path, is_dir) in mods.items():
        for ref in references(code_of(path)):
            target = resolve(ref, m, is_dir, mods)
            if target and not related(m, target):
                edges[m].add(target)
    return edges


def cycles(nodes, edges):
    index, low, on, stack, out, n = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main():
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    mods = modules()
    edges = graph(mods)
    problems = []
    for m in sorted(mods):
        if layer(m) is None:
            problems.append(f"{m}: not in scripts/module_deps.py's LAYERS (say where it belongs)")
    for m, targets in sorted(edges.items()):
        for t in sorted(targets):
            lm, lt = layer(m), layer(t)
            if lm is not None and lt is not None and lt > lm:
                problems.append(f"upward import: {m} (layer {lm}) -> {t} (layer {lt})")
    depth = max(len(m.split("::")) for m in mods)
    seen = set()
    for d in range(1, depth + 1):
        cut = lambda m: "::".join(m.split("::")[:d])  # noqa: E731
        nodes = {cut(m) for m in mods}
        short = defaultdict(set)
        for m, targets in edges.items():
            for t in targets:
                a, b = cut(m), cut(t)
                if a != b and not related(a, b):
                    short[a].add(b)
        for comp in cycles(nodes, short):
            if tuple(comp) not in seen:
                seen.add(tuple(comp))
                problems.append("import loop: " + " <-> ".join(comp))
    if "--print" in sys.argv:
        for m in sorted(mods):
            print(f"{m} [{layer(m)}] -> {' '.join(sorted(edges.get(m, ()))) or '-'}")
    for p in problems:
        print(f"module-deps: FAIL {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    n_edges = sum(len(v) for v in edges.values())
    print(f"module-deps: {len(mods)} modules, {n_edges} imports: no loop, no upward import")


if __name__ == "__main__":
    main()
