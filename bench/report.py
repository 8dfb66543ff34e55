"""Turn a pytest-benchmark JSON into the Markdown table README shows.

    pytest bench/ --benchmark-json=bench.json
    python bench/report.py bench.json

Benchmarks of one workload differ only in the ``impl`` they record
(fastconv, numpy, torch_cl, torch_nchw, ...); each row is one workload at
one thread count, with every implementation's median and the ratio
peer_time / fastconv_time (> 1 means fastconv is faster).
"""

import json
import re
import sys
from collections import defaultdict


def rows(path):
    with open(path) as f:
        benches = json.load(f)["benchmarks"]
    table = defaultdict(dict)
    for b in benches:
        info = b.get("extra_info", {})
        impl = info.get("impl", "?")
        # The workload is the test id without the impl and thread parameters.
        params = [p for p in re.split(r"[\[\]-]", b["name"])[1:] if p and p != impl and not re.fullmatch(r"\d+t", p)]
        workload = info.get("workload") or f"{b['name'].split('[')[0]} {' '.join(params)}".strip()
        table[(workload, info.get("threads"))][impl] = b["stats"]["median"] * 1e3
    return table


def main(path):
    table = rows(path)
    peers = sorted({impl for medians in table.values() for impl in medians if impl != "fastconv"})
    header = ["workload", "threads", "fastconv ms"] + [f"{p} ms" for p in peers] + [f"vs {p}" for p in peers]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for (workload, threads), medians in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        ours = medians.get("fastconv")
        cells = [workload, str(threads), f"{ours:.3f}" if ours else "-"]
        cells += [f"{medians[p]:.3f}" if p in medians else "-" for p in peers]
        cells += [f"{medians[p] / ours:.2f}x" if ours and p in medians else "-" for p in peers]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench.json")
