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
    if "libonnxruntime" in location:
        return "ONNX Runtime (libonnxruntime)"
    if "libstdc++" in location:
        return "ONNX Runtime (libstdc++)"
    if "libc.so" in location or "ld-linux" in location:
        if "malloc" in location or "free" in location or "arena.c" in location:
            return "libc malloc/free"
        if "memmove" in location or "memcpy" in location or "memset" in location:
            return "libc memcpy/memset"
        return "libc (other)"
    m = re.search(r"index\.crates\.io-[0-9a-f]+/([A-Za-z0-9_\-]+?)-\d+\.\d+[^/]*/", location)
    if m:
        return "crate " + m.group(1)
    m = re.search(r"/work/[^/]+/src/([a-z_/]+)\.rs", location)
    if m:
        return "maas src/" + m.group(1) + ".rs"
    if "/out/" in location and ".rs:" in location:
        return "maas generated protobuf code"
    if "/rustc/" in location:
        m = re.search(r"library/([a-z_]+)/", location)
        return "Rust std (" + (m.group(1) if m else "?") + ")"
    if "vdso" in location or "[vdso" in location:
        return "vdso (clock)"
    return "other"


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
        if n * 1000 < program:
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
