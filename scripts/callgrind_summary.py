#!/usr/bin/env python3
"""Groups a callgrind profile's self cost (instructions) by where the code comes from: each Rust
crate, maas's own modules, ONNX Runtime, and libc's malloc/memcpy. Usage:
    callgrind_summary.py CALLGRIND_OUT [REQUESTS]
With REQUESTS, also prints instructions per request."""
import re
import subprocess
import sys
from collections import defaultdict


def group(location: str) -> str:
    """The library for C/C++ code; for Rust code the crate of the function (maas: its module), taken
    from the symbol, so code inlined from std or other crates counts where it runs."""
    if "libonnxruntime" in location:
        return "ONNX Runtime (libonnxruntime)"
    if "libstdc++" in location:
        return "ONNX Runtime (libstdc++ new/delete)"
    if "libc.so" in location or "ld-linux" in location:
        if "malloc" in location or "free" in location or "arena.c" in location:
            return "libc malloc/free"
        if "memmove" in location or "memcpy" in location or "memset" in location:
            return "libc memcpy/memset"
        return "libc (other)"
    # "file:function [object]": the function's path
    func = location.split(":", 1)[1] if ":" in location else location
    func = func.split(" [", 1)[0].lstrip("<&*( ")
    if "::" not in func:
        return "other C code (" + func.split("(")[0][:24] + ")" if func and not func.startswith("0x") else "other (no symbol)"
    parts = re.split(r"::|<| as ", func)
    crate = parts[0] if parts else "?"
    if crate == "maas":
        return "maas::" + "::".join(p for p in parts[1:3] if p and p[0].islower())
    if crate in ("core", "alloc", "std", "__rustc"):
        return "Rust std (" + crate + ")"
    if not crate or crate.startswith("0x") or crate == "???":
        return "other (no symbol)"
    return "crate " + crate.replace("_", "-")


def main() -> None:
    path = sys.argv[1]
    requests = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    out = subprocess.run(
        ["callgrind_annotate", "--auto=no", "--threshold=100", path], capture_output=True, text=True, check=True
    ).stdout
    totals: dict[str, int] = defaultdict(int)
    program = 0
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([\s\d.]+%\)\s+(.*)", line)
        if not m:
            continue
        n = int(m.group(1).replace(",", ""))
        where = m.group(2)
        if where.startswith("PROGRAM TOTALS"):
            program = n
            continue
        totals[group(where)] += n
    print(f"{'where (self cost)':45} {'instructions':>14} {'share':>7}" + (f" {'per request':>12}" if requests else ""))
    for name, n in sorted(totals.items(), key=lambda kv: -kv[1]):
        if n * 1000 < program and not name.startswith("maas"):
            continue
        row = f"{name:45} {n:>14,} {100.0 * n / program:>6.1f}%"
        if requests:
            row += f" {n / requests:>12,.0f}"
        print(row)
    row = f"{'total':45} {program:>14,} {100.0:>6.1f}%"
    if requests:
        row += f" {program / requests:>12,.0f}"
    print(row)


if __name__ == "__main__":
    main()
