#!/usr/bin/env python3
"""The library's module graph, checked: no import loop and no upward import.

Reads every module of `src/` (not `src/bin/`: the binary may use anything), takes the
`crate::…` paths its code names (comments, doc links and `#[cfg(test)]` modules left out,
so a test may reach anywhere), resolves each to the longest module it names, and checks

  - that the graph has no cycle (Tarjan's strongly connected components), a module and its
    own submodules counting as one; and
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
    "cnn_cpu": 1, "model": 1, "train": 1, "attribution": 1, "partition": 1,
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
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            if parts:
                out["::".join(parts)] = path
    return out


TEST_MOD = re.compile(r"^#\[cfg\(test\)\]\s*\n\s*(pub(\(crate\))?\s+)?mod\s+\w+\s*\{", re.M)


def code_of(path):
    src = open(path).read()
    m = TEST_MOD.search(src)
    if m:
        src = src[: m.start()]
    return re.sub(r"//[^\n]*", "", src)


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
    for m, path in mods.items():
        for ref in re.findall(r"crate::([a-z_0-9]+(?:::[a-z_0-9]+)*)", code_of(path)):
            parts = ref.split("::")
            target = next(("::".join(parts[:k]) for k in range(len(parts), 0, -1)
                           if "::".join(parts[:k]) in mods), None)
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
    for comp in cycles(mods, edges):
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
