"""Peak memory of one training step: fastconv against PyTorch (channels_last
and NCHW), each side in a fresh process, so one's allocations cannot hide in
the other's heap.

    python bench/peak_memory.py [--net cifar_small] [--steps 5] [--threads 2]

A child imports both libraries, builds the model and the batch, runs one
warm-up step and records its resident set size (RSS), then runs the timed
steps; the figure is the peak RSS (ru_maxrss) minus that baseline: what the
steps themselves add at their worst (activations, gradients, workspaces).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile


def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(side, net, steps, threads):
    import numpy as np  # noqa: F401  (loaded before the baseline, as torch)
    import torch

    import fastconv as fc
    from fastconv.tools.bench import NETS, batch, fastconv_step, torch_step

    fc.set_num_threads(threads)
    torch.set_num_threads(threads)
    build, shape, _ = NETS[net]
    x, y = batch(shape)
    before = _rss_mib()
    step = fastconv_step(build, x, y) if side == "fastconv" else torch_step(build, side, x, y)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for _ in range(steps):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"side": side, "baseline_mib": before, "peak_mib": max(peak, peak_before),
                      "added_mib": max(peak, peak_before) - before}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="cifar_small", choices=["cifar_small", "lenet"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a.child, a.net, a.steps, a.threads)
    print(f"| {a.net} step, {a.threads} threads | baseline MiB | peak MiB | added by the steps MiB |")
    print("|---|---|---|---|")
    for side in ("fastconv", "torch_cl", "torch_nchw"):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", side, "--net", a.net, "--steps", str(a.steps),
                              "--threads", str(a.threads)], capture_output=True, text=True, check=True,
                             cwd=tempfile.gettempdir())  # the installed fastconv, not ./fastconv
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {side} | {r['baseline_mib']:.0f} | {r['peak_mib']:.0f} | {r['added_mib']:.0f} |")


if __name__ == "__main__":
    main()
