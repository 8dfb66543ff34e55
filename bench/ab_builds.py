"""A/B of two fastconv builds on the `fastconv bench` workloads, in one run.

Two builds cannot share a process, so the harness runs in turns, A B B A
A B ..., each turn a fresh process of one build timing every workload
(`fastconv bench --sides fastconv`); slow drifts of a shared machine hit both
builds alike. Prints, per workload and thread count, the median over the
turns of each build's per-turn median and the ratio B / A (< 1: B faster).

    python bench/ab_builds.py --a /path/to/old/venv/bin/python --b "$(which python)" --threads 1,2 --rounds 4
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile

ROW = re.compile(r"^\| (?P<name>[^|]+?) \| (?P<threads>\d+) \| (?P<median>[0-9.e+-]+) \(")


def one_turn(python: str, threads: str, reps: int, only: list[str]) -> dict:
    """{(workload, threads): median ms} from one `fastconv bench` process of `python`."""
    cmd = [python, "-m", "fastconv", "bench", "--sides", "fastconv", "--no-torch", "--threads", threads,
           "--reps", str(reps)]
    for text in only:
        cmd += ["--only", text]
    # From a neutral folder: `python -m` puts the working directory first on
    # sys.path, so run from a source tree both builds would import its package.
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tempfile.gettempdir()).stdout
    return {(m["name"], int(m["threads"])): float(m["median"]) for m in map(ROW.match, out.splitlines()) if m}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="the Python of build A (the baseline)")
    p.add_argument("--b", default=sys.executable, help="the Python of build B (default: this one)")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--reps", type=int, default=15, help="timed turns per workload inside each process")
    p.add_argument("--rounds", type=int, default=3, help="A B B A rounds of turns (each build runs 2 x rounds times)")
    p.add_argument("--only", action="append", default=[], help="only workloads whose name contains TEXT")
    args = p.parse_args(argv)
    runs = {"A": [], "B": []}
    for r in range(args.rounds):
        for side in "ABBA" if r % 2 == 0 else "BAAB":
            runs[side].append(one_turn(args.a if side == "A" else args.b, args.threads, args.reps, args.only))
            print(f"round {r + 1}/{args.rounds}: {side} done", file=sys.stderr)
    keys = [k for k in runs["A"][0] if all(k in t for t in runs["A"] + runs["B"])]
    print("| workload | threads | A ms | B ms | B / A |\n|---|---|---|---|---|")
    for k in keys:
        a = statistics.median(t[k] for t in runs["A"])
        b = statistics.median(t[k] for t in runs["B"])
        print(f"| {k[0]} | {k[1]} | {a:.4g} | {b:.4g} | {b / a:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
