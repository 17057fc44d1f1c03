#!/usr/bin/env python3
"""Fails when the library's top-level modules import each other in a circle.

Reads `src/*.rs` (and `src/<dir>/` as one module), outside `#[cfg(test)]`, and follows every
`crate::<module>` path: a module may depend on another, never on itself through others. A
circle is where one piece of code should have been moved to a module of its own."""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(__file__), "..", "src")


def sources(module):
    single = os.path.join(SRC, module + ".rs")
    if os.path.exists(single):
        return [single]
    return [
        os.path.join(folder, name)
        for folder, _, names in os.walk(os.path.join(SRC, module))
        for name in names
        if name.endswith(".rs")
    ]


modules = {name[:-3] for name in os.listdir(SRC) if name.endswith(".rs") and name != "lib.rs"}
modules |= {name for name in os.listdir(SRC) if os.path.isdir(os.path.join(SRC, name))}
graph = {module: set() for module in modules}
for module in modules:
    for path in sources(module):
        text = open(path).read().split("#[cfg(test)]")[0]
        # `use crate::{a, b::c}` names modules after its braces; `crate::a` names one.
        for block in re.findall(r"use crate::\{(.*?)\};", text, re.S):
            depth, item, items = 0, "", []
            for char in block:
                depth += char == "{"
                depth -= char == "}"
                if char == "," and depth == 0:
                    items.append(item)
                    item = ""
                else:
                    item += char
            items.append(item)
            graph[module] |= {i.strip().split("::")[0] for i in items}
        graph[module] |= set(re.findall(r"crate::([a-z_]+)", text))
    graph[module] &= modules - {module}

circles = set()


def walk(start, node, path):
    for following in graph[node]:
        if following == start:
            circles.add(" -> ".join(path + [start]))
        elif following not in path:
            walk(start, following, path + [following])


for module in sorted(modules):
    walk(module, module, [module])
if circles:
    print("module import circles:")
    for circle in sorted(circles):
        print("  " + circle)
    sys.exit(1)
print(f"no import circles among the library's {len(modules)} modules")
