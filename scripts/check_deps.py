#!/usr/bin/env python3
"""Checks of the library's dependency graph (any feature, normal and build dependencies) that run
without anything beyond cargo and python3:

- MSRV: no other toolchain can be installed here, so no dependency may declare a `rust-version`
  above ours. Our own code is held to it by clippy's `incompatible_msrv` lint, which reads
  `rust-version` from Cargo.toml (part of `cargo clippy -D warnings`).
- Licenses: every dependency's SPDX expression must be satisfiable with permissive licenses
  (cargo-deny would need its advisory database, which is not reachable from here)."""
import json
import subprocess
import sys


def version(text):
    return tuple(int(part) for part in (text or "0").split("."))


meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
root = next(p for p in meta["packages"] if p["name"] == "tower-idempotency")
msrv = version(root.get("rust_version"))

seen, stack = set(), [root["id"]]
while stack:
    node = stack.pop()
    if node in seen:
        continue
    seen.add(node)
    for dep in nodes[node]["deps"]:
        if all(kind["kind"] == "dev" for kind in dep["dep_kinds"]):
            continue
        stack.append(dep["pkg"])

ALLOWED = {
    "MIT", "MIT-0", "Apache-2.0", "Apache-2.0 WITH LLVM-exception", "BSD-2-Clause",
    "BSD-3-Clause", "ISC", "Unicode-3.0", "Zlib", "BSL-1.0", "Unlicense", "CC0-1.0",
}


def allowed(expression):
    """Whether an SPDX expression (with `/` as the old spelling of OR) can be met from ALLOWED."""
    tokens = expression.replace("(", " ( ").replace(")", " ) ").replace("/", " OR ").split()

    def expr(i):
        ok, i = term(i)
        while i < len(tokens) and tokens[i] == "OR":
            other, i = term(i + 1)
            ok = ok or other
        return ok, i

    def term(i):
        ok, i = factor(i)
        while i < len(tokens) and tokens[i] == "AND":
            other, i = factor(i + 1)
            ok = ok and other
        return ok, i

    def factor(i):
        if tokens[i] == "(":
            ok, i = expr(i + 1)
            return ok, i + 1
        name, i = tokens[i], i + 1
        if i < len(tokens) and tokens[i] == "WITH":
            name, i = f"{name} WITH {tokens[i + 1]}", i + 2
        return name in ALLOWED, i

    return expr(0)[0]


refused = sorted(
    (packages[p]["name"], packages[p].get("license"))
    for p in seen
    if p != root["id"] and not allowed(packages[p].get("license") or "")
)
for name, license in refused:
    print(f"{name}: license {license!r} is not in the allowed set")

too_new = sorted(
    (packages[p]["name"], packages[p]["version"], packages[p].get("rust_version"))
    for p in seen
    if version(packages[p].get("rust_version")) > msrv
)
for name, ver, rust in too_new:
    print(f"{name} {ver} needs Rust {rust}, above our rust-version {root['rust_version']}")
if too_new or refused:
    sys.exit(1)
print(
    f"MSRV {root['rust_version']} and permissive licenses: "
    f"all {len(seen) - 1} dependencies of the library pass"
)
