"""Where a training step's time goes, layer by layer: fastconv's kernel calls
inside the step that ``fastconv bench`` times (every call of
``fastconv._kernels`` timed, by kind), and each distinct conv layer of the
net timed on its own against PyTorch channels_last, forward and backward,
taking turns in this process (the harness of ``fastconv bench``). A layer
slower than PyTorch's shows up by shape, with its calls per step.

    python bench/layers.py                        # resnet20, 1 and 2 threads
    python bench/layers.py --net cifar_small --threads 2 --reps 21
    python bench/layers.py --precision bfloat16   # against PyTorch's bf16 autocast

The in-step column is what the layer cost inside the step (its caches as
the step leaves them); the per-layer columns time it alone, both sides
alike. Read the step itself from ``fastconv bench --only "train step"``.
"""

import argparse
import collections
import functools
import re
import time

from fastconv.tools import bench as compare

# A kernel's name -> the kind of work it does, for the in-step totals.
KINDS = [("conv", r"conv2d"), ("batch norm", r"batchnorm"), ("add", r"^add"), ("relu", r"relu"),
         ("pool", r"pool"), ("linear, loss, other", r".")]
# The conv kernels, each with its arguments' positions of stride, padding and groups
# (None: 1). conv2d_maxpool_forward's time includes its 2x2 pool.
CONV_KERNELS = {"conv2d_forward": (3, 4, None), "conv2d_backward": (3, 4, None),
                "conv2d_maxpool_forward": (3, 4, None),
                "conv2d_ex_forward": (3, 4, 6), "conv2d_ex_backward": (3, 4, 6)}


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def kind_of(name):
    return next(kind for kind, pattern in KINDS if re.search(pattern, name))


def step_profile(net, threads, steps, precision="float32"):
    """Run `steps` fastconv training steps of `net` (after 2 untimed) with every
    kernel call timed. Returns (seconds per step, {kernel: seconds per step},
    {conv: [forward calls per step, seconds per step in the step]}), a conv
    keyed by (x shape, weight shape, stride, padding, groups)."""
    import fastconv as fc
    from fastconv import _kernels as K

    build, shape, _ = compare.NETS[net]
    x, y = compare.batch(shape)
    fc.set_num_threads(threads)
    by_kernel = collections.defaultdict(float)
    convs = collections.defaultdict(lambda: [0, 0.0])

    def timed(name, fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            spent = time.perf_counter() - t
            by_kernel[name] += spent
            if name in CONV_KERNELS:
                stride, padding, groups = CONV_KERNELS[name]
                key = (args[0].shape, args[1].shape, _pair(args[stride]), _pair(args[padding]),
                       1 if groups is None else args[groups])
                convs[key][0] += name.endswith("forward")
                convs[key][1] += spent
            return out
        return call

    step = compare.fastconv_step(build, x, y, precision)
    originals = {name: getattr(K, name) for name in dir(K)
                 if not name.startswith("_") and callable(getattr(K, name))
                 and not isinstance(getattr(K, name), type)}
    for name, fn in originals.items():
        setattr(K, name, timed(name, fn))
    try:
        for _ in range(2):
            step()
        by_kernel.clear()
        convs.clear()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        total = (time.perf_counter() - t) / steps
    finally:
        for name, fn in originals.items():
            setattr(K, name, fn)
    return (total, {k: v / steps for k, v in by_kernel.items()},
            {k: [n // steps, v / steps] for k, (n, v) in convs.items()})


def layer_rows(convs, threads, reps, sides, precision="float32"):
    """Time each conv of `convs` alone: {key: {direction: {side: Timing}}}."""
    import numpy as np

    rng = np.random.default_rng(0)

    def rand(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    out = {}
    with compare.Threads(threads):
        for key in convs:
            x_shape, w_shape, (sh, sw), (ph, pw), groups = key
            if sh != sw or ph != pw:  # the bench's rows are square
                continue
            fwd, bwd = compare.conv_workloads("layer", x_shape, w_shape, sh, ph, groups, rand,
                                              precision)
            out[key] = {}
            for direction, w in (("fwd", fwd), ("bwd", bwd)):
                fns = {side: w.make[side]() for side in sides if side in w.make}
                out[key][direction] = compare.time_sides(fns, reps)
    return out


def report(net, threads, steps, reps, precision="float32"):
    total, by_kernel, convs = step_profile(net, threads, steps, precision)
    sides = ["fastconv"] + (["torch_cl"] if compare._torch() is not None else [])
    timed = layer_rows(convs, threads, reps, sides, precision)
    ms = lambda s: f"{s * 1e3:.3g}"  # noqa: E731
    print(f"\n### {net} train step{compare.PRECISIONS[precision]}, {threads} thread(s)\n")
    print(f"fastconv step {ms(total)} ms, of which kernels {ms(sum(by_kernel.values()))} ms:",
          ", ".join(f"{kind} {ms(sum(v for k, v in by_kernel.items() if kind_of(k) == kind))}"
                    for kind, _ in KINDS), "\n")
    print("| conv layer (x, weight, stride, padding) | calls per step | in the step ms | "
          "fastconv fwd / bwd ms | PyTorch CL fwd / bwd ms | fastconv / PyTorch |")
    print("|---|---|---|---|---|---|")
    for key, (calls, spent) in sorted(convs.items(), key=lambda kv: -kv[1][1]):
        x_shape, w_shape, stride, padding, groups = key
        name = f"{'x'.join(map(str, x_shape))}, {'x'.join(map(str, w_shape))}, s{stride[0]} p{padding[0]}" + \
            (f" g{groups}" if groups > 1 else "")
        if key not in timed:
            print(f"| {name} | {calls} | {ms(spent)} | - | - | - |")
            continue
        t = {d: {side: timing.median for side, timing in timed[key][d].items()} for d in ("fwd", "bwd")}
        mine = f"{ms(t['fwd']['fastconv'])} / {ms(t['bwd']['fastconv'])}"
        if "torch_cl" in sides:
            peer = t["fwd"]["torch_cl"] + t["bwd"]["torch_cl"]
            theirs = f"{ms(t['fwd']['torch_cl'])} / {ms(t['bwd']['torch_cl'])}"
            ratio = f"{(t['fwd']['fastconv'] + t['bwd']['fastconv']) / peer:.2f}"
        else:
            theirs = ratio = "-"
        print(f"| {name} | {calls} | {ms(spent)} | {mine} | {theirs} | {ratio} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="resnet20", choices=sorted(compare.NETS))
    p.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default 1,2)")
    p.add_argument("--steps", type=int, default=5, help="profiled steps (default 5)")
    p.add_argument("--reps", type=int, default=15, help="turns per side for each layer (default 15)")
    p.add_argument("--precision", default="float32", choices=sorted(compare.PRECISIONS),
                   help="fc.autocast's precision, PyTorch's autocast beside it (default float32)")
    args = p.parse_args(argv)
    compare.pin_malloc()
    for n in (int(t) for t in args.threads.split(",")):
        report(args.net, n, args.steps, args.reps, args.precision)


if __name__ == "__main__":
    main()
