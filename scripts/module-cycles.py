#!/usr/bin/env python3
"""Finds import cycles between the modules of each crate (a module reads another through
`crate::name` or `super::name`); prints them and exits 1 if there is any.

    python3 scripts/module-cycles.py

A module is a file under src/ (`a/b.rs` and `a/b/mod.rs` are `a::b`); its references are
folded to the other module's top-level name below the crate root (`crate::backend::cpu`
counts as `backend`), and references between a module and its own submodules are not
counted (a parent declares its children and may use them)."""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates")
REF = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
USE_GROUP = re.compile(r"\buse crate::\{([^;]*)\}", re.S)


def modules(src):
    out = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] == "mod":
                rel = rel[:-1]
            if rel in (["lib"], ["main"]):
                continue
            out["::".join(rel)] = open(path).read()
    return out


def top(name):
    return name.split("::")[0]


def find_cycle(graph):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


status = 0
for crate in sorted(os.listdir(ROOT)):
    src = os.path.join(ROOT, crate, "src")
    if not os.path.isdir(src):
        continue
    graph = {}
    for name, text in modules(src).items():
        # Test modules may reach anywhere; comments name modules without using them.
        text = text.split("#[cfg(test)]\nmod tests")[0]
        text = re.sub(r"//[^\n]*", "", text)
        refs = set(REF.findall(text))
        for group in USE_GROUP.findall(text):
            refs |= {p.strip().split("::")[0] for p in group.split(",") if p.strip()}
        me = top(name)
        graph.setdefault(me, set()).update(r for r in refs if r != me)
    cycle = find_cycle(graph)
    if cycle:
        status = 1
        print(f"{crate}: import cycle {' -> '.join(cycle)}")
    else:
        print(f"{crate}: no import cycles between its {len(graph)} top-level modules")
sys.exit(status)
