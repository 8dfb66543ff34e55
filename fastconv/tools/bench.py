"""Side-by-side timing of fastconv against its peers: ``fastconv bench``
(also ``python bench/compare.py``).

Times fastconv, PyTorch in channels_last ("torch_cl", its fastest CPU
configuration) and in NCHW ("torch_nchw") when it is installed, and NumPy
(``numpy.matmul`` on OpenBLAS for sgemm, fastconv's NumPy twins, i.e.
im2col + OpenBLAS, for layers and nets) in one process, on the same arrays,
for the benchmark workloads below (the README's tables); prints a Markdown table with the
median and minimum time per call, GFLOP/s or GB/s, the share of the measured
FLOP peak, and the ratio peer time / fastconv time (> 1: fastconv is faster).

Frameworks side by side in one process disturb each other; the harness
guards against the ways seen so far:

- An idle OpenBLAS worker spins ~100 ms after each call, on the core the next
  framework needs. ``OPENBLAS_THREAD_TIMEOUT`` shortens that, but OpenBLAS
  reads it once, when NumPy loads: :func:`main` re-executes the process with
  it set when NumPy came first (``fastconv bench`` imports NumPy before this
  module runs), and the table says whether it was in effect.
- A libgomp team spins ~10 ms after a parallel region, and a sleeping one
  takes time to wake: before each timed turn a side runs untimed calls.
- glibc's adaptive mmap threshold returns big blocks to the OS when one
  framework frees them, so the next one faults them back in page by page:
  :func:`pin_malloc` fixes the thresholds with ``mallopt``.
- Turns alternate A B C, then C B A, over many repetitions, so slow drifts
  (clock, other load on a shared machine) hit every side alike.
  ``--fairness`` times each side alone as well, to show taking turns does not
  change its figure.

The rows named "... bf16" time mixed precision: fastconv under
``fc.autocast("bfloat16")`` (sgemm with ``precision="bfloat16"``) against
PyTorch under ``torch.autocast("cpu", dtype=torch.bfloat16)``, both with
float32 parameters and inputs; ``--only bf16`` selects them. They have no
NumPy side (OpenBLAS has no bf16 GEMM; the NumPy twins emulate it, slowly),
a 2-D GEMM has one PyTorch layout (in the NCHW column), and their "% peak"
is left out: the peak measured is float32's FMA, and a bf16 dot product
does twice its FLOP per instruction.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

OPENBLAS_TIMEOUT = "1"  # OpenBLAS clamps to its minimum: 2**4 cycles of spinning
SIDES = ("fastconv", "torch_cl", "torch_nchw", "numpy")
PEERS = SIDES[1:]
LABELS = {"fastconv": "fastconv", "torch_cl": "PyTorch CL", "torch_nchw": "PyTorch NCHW",
          "numpy": "NumPy/OpenBLAS"}


# -- the networks (bench/bench_nets.py uses these too): the built-ins of fastconv.models -----------------


def lenet(lib):
    """The built-in ``lenet`` for 10 classes; ``lib`` is ``fastconv`` or ``torch.nn``."""
    from fastconv.models import build_model

    return build_model("lenet", (1, 28, 28), 10, lib=lib)


def cifar_small(lib):
    """The built-in ``cifar_small`` for 10 classes; ``lib`` is ``fastconv`` or ``torch.nn``."""
    from fastconv.models import build_model

    return build_model("cifar_small", (3, 32, 32), 10, lib=lib)


def resnet20(lib):
    """ResNet-20 (fastconv.models.resnet20) for 10 classes; ``lib`` is ``fastconv`` or ``torch.nn``."""
    from fastconv.models import resnet20

    return resnet20(10, lib=lib)


# name -> (builder, batch shape, GFLOP of one training step at that batch: 3x the forward's).
# ResNet-20's forward is 40.8 M multiply-adds per 32x32 image (its convs and the Linear).
NETS = {"lenet": (lenet, (64, 1, 28, 28), 0.284), "cifar_small": (cifar_small, (128, 3, 32, 32), 7.7),
        "resnet20": (resnet20, (128, 3, 32, 32), 31.3)}


def batch(shape, seed=0):
    """A float32 batch of `shape` and integer labels in [0, 10)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(np.float32), rng.integers(0, 10, shape[0])


# The precisions a workload runs in (fc.autocast's names), and what its name gets.
PRECISIONS = {"float32": "", "bfloat16": " bf16"}


def torch_autocast(precision):
    """PyTorch's policy for `precision`: ``torch.autocast("cpu", dtype=torch.bfloat16)``
    for "bfloat16", disabled (float32) for "float32"."""
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16")


def fastconv_step(build, x, y, precision="float32"):
    """One SGD step (lr 0.01, momentum 0.9, softmax cross-entropy) of a fresh
    fastconv model, forward and backward under ``fc.autocast(precision)``."""
    import fastconv as fc

    fc.manual_seed(0)
    model = build(fc)
    # As the PyTorch peers, whose input batch does not require grad: no dL/dx
    # for the images.
    model[0].needs_input_grad = False
    loss_fn = fc.SoftmaxCrossEntropy()
    opt = fc.SGD(model.parameters(), lr=0.01, momentum=0.9)
    policy = fc.autocast(precision)

    def step():
        with policy:
            loss_fn(model(x), y)
            opt.zero_grad()
            model.backward(loss_fn.backward())
        opt.step()
    return step


def fastconv_inference(build, x, precision="float32"):
    """A forward of a fresh fastconv model in eval mode, under ``fc.autocast(precision)``."""
    import fastconv as fc

    model = build(fc).eval()
    policy = fc.autocast(precision)

    def forward():
        with policy:
            return model(x)
    return forward


def torch_model(build, side, x):
    """A fresh PyTorch model and the batch as a tensor, both channels_last for "torch_cl"."""
    import torch

    model = build(torch.nn)
    tx = torch.from_numpy(x)
    if side == "torch_cl":
        model = model.to(memory_format=torch.channels_last)
        tx = tx.contiguous(memory_format=torch.channels_last)
    return model, tx


def torch_step(build, side, x, y, precision="float32"):
    """The PyTorch twin of :func:`fastconv_step`: the forward and the loss under
    :func:`torch_autocast`, the backward after it, as PyTorch's AMP recipe does."""
    import torch

    model, tx = torch_model(build, side, x)
    ty = torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        with torch_autocast(precision):
            loss = loss_fn(model(tx), ty)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def torch_inference(build, side, x, precision="float32"):
    """The PyTorch twin of :func:`fastconv_inference` (no_grad, eval mode)."""
    import torch

    model, tx = torch_model(build, side, x)
    model.eval()

    def forward():
        with torch.no_grad(), torch_autocast(precision):
            return model(tx)
    return forward


# -- workloads ------------------------------------------------------------------------------------------

# The workloads, defined here once (bench/ reads them too).
# (N, C, H=W, K, kernel, stride, pad); "tiny" runs shrink N and H.
CONVS = [(64, 1, 28, 8, 5, 1, 2), (64, 8, 14, 16, 5, 1, 2), (128, 3, 32, 32, 3, 1, 1),
         (128, 32, 16, 64, 3, 1, 1), (32, 64, 8, 128, 3, 1, 1), (16, 3, 64, 16, 7, 2, 3),
         (128, 64, 8, 64, 1, 1, 0),
         # ResNet-20's layers at batch 128: its first layer, a stride-2 3x3 and the 1x1 stride-2
         # projection shortcut where a stage halves the image, and 3x3s at 8x8.
         (128, 3, 32, 16, 3, 1, 1), (128, 16, 32, 32, 3, 2, 1), (128, 16, 32, 32, 1, 2, 0),
         (128, 64, 8, 64, 3, 1, 1), (128, 128, 8, 128, 3, 1, 1),
         # The 3x3s that take most of ResNet-20's step: its first and second stages' convs.
         (128, 16, 32, 16, 3, 1, 1), (128, 32, 16, 32, 3, 1, 1)]
# Depthwise 3x3 (groups = C), in CONVS's layout: as in a MobileNet block at 32x32 and 16x16.
DEPTHWISE = [(128, 32, 32, 32, 3, 1, 1), (128, 64, 16, 64, 3, 1, 1)]
# (M, N, K): C (M x N) = A (M x K) @ B (K x N); the im2col shapes, a dW shape, squares.
GEMMS = [(8, 50176, 25), (16, 12544, 200), (32, 131072, 27), (64, 32768, 288), (128, 2048, 576),
         (16, 16384, 147), (64, 8192, 64), (8, 25, 50176), (1024, 1024, 1024), (2048, 2048, 2048)]
POOLS = [(128, 32, 32, 32), (64, 16, 28, 28)]
RELU = (128, 32, 32, 32)
# The bf16 rows: the training steps of these NETS, cifar_small inference at these
# batches, and these GEMMS (cifar_small's second conv as im2col at batch 128, a square).
BF16_NETS = ("cifar_small", "resnet20")
BF16_INFERENCE = (256,)
BF16_GEMMS = [(64, 32768, 288), (1024, 1024, 1024)]


@dataclass
class Workload:
    """One row of the table: `make[side]()` returns the callable to time."""

    name: str
    make: dict[str, Callable[[], Callable[[], object]]]
    flop: float = 0.0   # per call, for GFLOP/s and % of peak
    nbytes: float = 0.0  # per call, for GB/s (when flop is 0)
    precision: str = "float32"  # a key of PRECISIONS


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _tensor(torch, a, side):
    t = torch.from_numpy(a)
    return t.contiguous(memory_format=torch.channels_last) if side == "torch_cl" and t.dim() == 4 else t


def _no_grad(torch, fn):
    def call():
        with torch.no_grad():
            return fn()
    return call


def _reference_backend(fn):
    """Run fn with the layers on the NumPy twins (im2col + OpenBLAS)."""
    import fastconv as fc

    def call():
        fc.set_backend("reference")
        try:
            return fn()
        finally:
            fc.set_backend("native")
    return call


def conv_workloads(name, x_shape, w_shape, s, p, g, rand, precision="float32"):
    """The forward and backward rows ("<name> fwd", "<name> bwd") of one conv
    layer: x of x_shape, weights of w_shape (K, C / g, kh, kw), stride s and
    padding p (ints), g groups; arrays from rand(*shape). In "bfloat16",
    fastconv's kernels take ``precision="bfloat16"`` and PyTorch runs under
    :func:`torch_autocast` (its backward on the bf16 tensors autocast makes)."""
    from fastconv import _kernels as K
    from fastconv import reference as R

    torch = _torch()
    nb, kout, (kh, kw) = x_shape[0], w_shape[0], w_shape[2:]
    x, w, bias = rand(*x_shape), rand(*w_shape), rand(kout)
    oh, ow = (x_shape[2] + 2 * p - kh) // s + 1, (x_shape[3] + 2 * p - kw) // s + 1
    dy = rand(nb, kout, oh, ow)
    flop = 2.0 * nb * kout * oh * ow * w_shape[1] * kh * kw
    # The grouped kernels take dilation and groups; the plain ones are what Conv2d runs otherwise.
    fwd_kernel, bwd_kernel, more = ("conv2d_forward", "conv2d_backward", ()) if g == 1 else \
        ("conv2d_ex_forward", "conv2d_ex_backward", ((1, 1), g))
    kw_ = {"precision": precision} if precision != "float32" else {}
    fwd = {side: lambda x=x, w=w, b=bias, s=s, p=p, f=getattr(lib, fwd_kernel), more=more:
           lambda: f(x, w, b, (s, s), (p, p), *more, **kw_) for side, lib in (("fastconv", K), ("numpy", R))}
    bwd = {side: lambda x=x, w=w, dy=dy, s=s, p=p, f=getattr(lib, bwd_kernel), more=more:
           lambda: f(x, w, dy, (s, s), (p, p), *more, **kw_) for side, lib in (("fastconv", K), ("numpy", R))}
    if torch is not None:
        low = torch.bfloat16 if precision == "bfloat16" else torch.float32
        for side in ("torch_cl", "torch_nchw"):
            def f(side=side, x=x, w=w, b=bias, s=s, p=p, g=g):
                tx, tw, tb = _tensor(torch, x, side), _tensor(torch, w, side), torch.from_numpy(b)

                def conv():
                    with torch_autocast(precision):
                        return torch.nn.functional.conv2d(tx, tw, tb, s, p, groups=g)
                return _no_grad(torch, conv)

            def g_(side=side, x=x, w=w, dy=dy, s=s, p=p, g=g):
                tx, tw, tdy = (_tensor(torch, a, side).to(low) for a in (x, w, dy))
                return lambda: torch.ops.aten.convolution_backward(
                    tdy, tx, tw, [tw.shape[0]], [s, s], [p, p], [1, 1], False, [0, 0], g, [True, True, True])
            fwd[side], bwd[side] = f, g_
    suffix = PRECISIONS[precision]
    return [Workload(f"{name} fwd{suffix}", fwd, flop=flop, precision=precision),
            Workload(f"{name} bwd{suffix}", bwd, flop=2 * flop, precision=precision)]


def workloads(tiny=False):
    """The benchmark workloads (shrunk to a few KB each when `tiny`)."""
    import numpy as np

    from fastconv import _kernels as K
    from fastconv import reference as R

    torch = _torch()
    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    out = []
    for m, n, k in GEMMS[:3] if tiny else GEMMS:
        m, n, k = (min(v, 16) for v in (m, n, k)) if tiny else (m, n, k)
        a, b = r(m, k), r(k, n)
        out.append(Workload(f"sgemm {m}x{n}x{k}", {"fastconv": lambda a=a, b=b: lambda: K.sgemm(a, b),
                                                   "numpy": lambda a=a, b=b: lambda: np.matmul(a, b)},
                            flop=2.0 * m * n * k))
    layers = [conv + (1,) for conv in CONVS] + [conv + (conv[1],) for conv in DEPTHWISE]
    for nb, c, hw, kout, ks, s, p, g in layers[2:4] + layers[-1:] if tiny else layers:
        nb, hw = (2, min(hw, 8)) if tiny else (nb, hw)
        name = f"conv {nb}x{c}x{hw}x{hw} -> {kout}, {ks}x{ks} s{s} p{p}" + (" depthwise" if g > 1 else "")
        out += conv_workloads(name, (nb, c, hw, hw), (kout, c // g, ks, ks), s, p, g, r)
    # Conv, ReLU and 2x2 max-pool with indices, as a net runs them: one kernel
    # in fastconv (the pool in Winograd's output transform where it applies).
    for nb, c, hw, kout, ks, s, p in CONVS[3:4] if tiny else CONVS[2:4]:
        nb, hw = (2, min(hw, 8)) if tiny else (nb, hw)
        x, w, bias = r(nb, c, hw, hw), r(kout, c, ks, ks), r(kout)
        flop = 2.0 * nb * kout * hw * hw * c * ks * ks
        fused = {"fastconv": lambda x=x, w=w, b=bias: lambda: K.conv2d_maxpool_forward(x, w, b, 1, 1, True),
                 "numpy": lambda x=x, w=w, b=bias: lambda: R.conv2d_maxpool_forward(x, w, b, 1, 1, True)}
        if torch is not None:
            for side in ("torch_cl", "torch_nchw"):
                def f(side=side, x=x, w=w, b=bias):
                    F = torch.nn.functional
                    tx, tw, tb = _tensor(torch, x, side), _tensor(torch, w, side), torch.from_numpy(b)
                    return _no_grad(torch, lambda: F.max_pool2d(F.relu(F.conv2d(tx, tw, tb, 1, 1)), 2, 2, 0,
                                                                return_indices=True))
                fused[side] = f
        out.append(Workload(f"conv+relu+pool {nb}x{c}x{hw}x{hw} -> {kout}, 3x3 p1, max 2x2/2", fused,
                            flop=flop))
    for shape in POOLS[1:] if tiny else POOLS:
        shape = (2, 3, 8, 8) if tiny else shape
        x = r(*shape)
        y, am = K.maxpool2d_forward(x, 2, 2, 0)
        dy = r(*y.shape)
        name = "maxpool 2x2/2 " + "x".join(map(str, shape))
        fwd = {"fastconv": lambda x=x: lambda: K.maxpool2d_forward(x, 2, 2, 0),
               "numpy": lambda x=x: lambda: R.maxpool2d_forward(x, 2, 2, 0)}
        bwd = {"fastconv": lambda dy=dy, am=am, s=x.shape: lambda: K.maxpool2d_backward(dy, am, s, 2, 2, 0),
               "numpy": lambda dy=dy, am=am, s=x.shape: lambda: R.maxpool2d_backward(dy, am, s, 2, 2, 0)}
        if torch is not None:
            for side in ("torch_cl", "torch_nchw"):
                def f(side=side, x=x):
                    tx = _tensor(torch, x, side)
                    return _no_grad(torch, lambda: torch.nn.functional.max_pool2d(tx, 2, 2, 0, return_indices=True))

                def g(side=side, x=x, dy=dy):
                    tx, tdy = _tensor(torch, x, side), _tensor(torch, dy, side)
                    _, idx = torch.nn.functional.max_pool2d(tx, 2, 2, 0, return_indices=True)
                    return lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                        tdy, tx, [2, 2], [2, 2], [0, 0], [1, 1], False, idx)
                fwd[side], bwd[side] = f, g
        # Traffic fastconv needs (x, y, a uint8 argmax), used for every side so GB/s compare as speed.
        out.append(Workload(f"{name} fwd+argmax", fwd, nbytes=x.nbytes + y.nbytes + am.nbytes))
        out.append(Workload(f"{name} bwd", bwd, nbytes=x.nbytes + dy.nbytes + am.nbytes))
    x = r(2, 3, 8, 8) if tiny else r(*RELU)
    relu = {"fastconv": lambda: lambda: K.relu_forward(x), "numpy": lambda: lambda: R.relu_forward(x)}
    if torch is not None:
        for side in ("torch_cl", "torch_nchw"):
            def make(side=side):
                t = _tensor(torch, x, side)
                return _no_grad(torch, lambda: torch.relu(t))
            relu[side] = make
    out.append(Workload("relu " + "x".join(map(str, x.shape)), relu, nbytes=2 * x.nbytes))
    out += _net_workloads(torch, tiny)
    out += _bf16_workloads(torch, tiny, r)
    return out


def _net_workloads(torch, tiny, nets=tuple(NETS), inference=(1, 256), precision="float32"):
    """Training steps of `nets` and cifar_small inference at batches `inference`,
    in `precision`; a NumPy side (the twins) in float32 only."""

    out, suffix = [], PRECISIONS[precision]
    for net in nets:
        build, shape, gflop = NETS[net]
        shape = (2,) + shape[1:] if tiny else shape
        x, y = batch(shape)
        sides = {"fastconv": lambda b=build, x=x, y=y: fastconv_step(b, x, y, precision)}
        if precision == "float32":
            sides["numpy"] = lambda b=build, x=x, y=y: _reference_backend(fastconv_step(b, x, y))
        if torch is not None:
            for side in ("torch_cl", "torch_nchw"):
                sides[side] = lambda b=build, side=side, x=x, y=y: torch_step(b, side, x, y, precision)
        out.append(Workload(f"{net} train step b{shape[0]}{suffix}", sides,
                            flop=gflop * 1e9 * shape[0] / NETS[net][1][0], precision=precision))
    for nb in [min(nb, 2) for nb in inference] if tiny else inference:
        x, _ = batch((nb, 3, 32, 32))
        sides = {"fastconv": lambda x=x: fastconv_inference(cifar_small, x, precision)}
        if precision == "float32":
            sides["numpy"] = lambda x=x: _reference_backend(fastconv_inference(cifar_small, x))
        if torch is not None:
            for side in ("torch_cl", "torch_nchw"):
                sides[side] = lambda side=side, x=x: torch_inference(cifar_small, side, x, precision)
        # Inference is the forward third of the step's FLOP.
        out.append(Workload(f"cifar_small inference b{nb}{suffix}", sides, flop=7.7e9 / 3 * nb / 128,
                            precision=precision))
    return out


def _bf16_workloads(torch, tiny, rand):
    """The bf16 rows: GEMMs, training steps and inference (see the module docstring)."""
    from fastconv import _kernels as K

    out = []
    for m, n, k in BF16_GEMMS[:1] if tiny else BF16_GEMMS:
        m, n, k = (min(v, 16) for v in (m, n, k)) if tiny else (m, n, k)
        a, b = rand(m, k), rand(k, n)
        sides = {"fastconv": lambda a=a, b=b: lambda: K.sgemm(a, b, precision="bfloat16")}
        if torch is not None:
            def theirs(a=a, b=b):
                ta, tb = torch.from_numpy(a), torch.from_numpy(b)

                def mm():
                    with torch_autocast("bfloat16"):
                        return torch.mm(ta, tb)
                return mm
            sides["torch_nchw"] = theirs
        out.append(Workload(f"sgemm {m}x{n}x{k} bf16", sides, flop=2.0 * m * n * k, precision="bfloat16"))
    return out + _net_workloads(torch, tiny, BF16_NETS, BF16_INFERENCE, "bfloat16")


# -- timing ---------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Seconds per call of each timed turn; `calls` calls per turn."""

    per_call: list[float] = field(default_factory=list)
    calls: int = 1

    @property
    def median(self):
        return statistics.median(self.per_call)

    @property
    def best(self):
        return min(self.per_call)


def _turn(fn, warm, calls, clock=time.perf_counter):
    """Untimed calls that wake the side's thread team, then `calls` timed calls: seconds per call."""
    for _ in range(warm):
        fn()
    t = clock()
    for _ in range(calls):
        fn()
    return (clock() - t) / calls


def calibrate(fn, turn_seconds, clock=time.perf_counter):
    """(warm, calls) per turn: about 1 ms (at least one call) of warming and
    `turn_seconds` of timed calls. Also runs fn's first calls (workspaces, JIT)."""
    fn()
    once = max(_turn(fn, 1, 1, clock), 1e-7)
    return max(1, min(10, round(1e-3 / once))), max(1, min(10000, round(turn_seconds / once)))


def time_sides(fns, reps, turn_seconds=0.01, alone=False, clock=time.perf_counter):
    """Time each callable of `fns` ({side: fn}) over `reps` turns.

    Taking turns (the default): A B C, C B A, A B C, ... so that drifts hit
    every side alike. `alone`: each side's turns back to back, the others idle.
    Returns {side: Timing}.
    """
    plan = {side: calibrate(fn, turn_seconds, clock) for side, fn in fns.items()}
    out = {side: Timing(calls=plan[side][1]) for side in fns}
    order = list(fns)
    if alone:
        for side in order:
            out[side].per_call = [_turn(fns[side], *plan[side], clock) for _ in range(reps)]
        return out
    for rep in range(reps):
        for side in order if rep % 2 == 0 else order[::-1]:
            out[side].per_call.append(_turn(fns[side], *plan[side], clock))
    return out


# -- the process: threads, malloc, OpenBLAS -------------------------------------------------------------


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks below it are reused from the heap
TRIM_THRESHOLD = 1 << 30


def pin_malloc():
    """Fix glibc's mmap and trim thresholds (no adaptation), so blocks freed by one
    framework are reused by the next instead of returned to the OS and faulted
    back in. Returns True when done (glibc found), False otherwise."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
            bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False


class Threads:
    """Context manager: n threads for fastconv, PyTorch and NumPy's BLAS."""

    def __init__(self, n):
        self.n, self._limiter = n, None

    def __enter__(self):
        import fastconv as fc

        self._old = fc.get_num_threads()
        fc.set_num_threads(self.n)
        torch = _torch()
        if torch is not None:
            self._old_torch = torch.get_num_threads()
            torch.set_num_threads(self.n)
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            self._limiter = threadpool_limits(limits=self.n, user_api="blas")
        return self

    def __exit__(self, *exc):
        import fastconv as fc

        fc.set_num_threads(self._old)
        torch = _torch()
        if torch is not None:
            torch.set_num_threads(self._old_torch)
        if self._limiter is not None:
            self._limiter.restore_original_limits()


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(threads, peak_seconds=0.2):
    """What the table was measured on: {key: text}, with the FLOP peak measured now."""
    import numpy as np

    import fastconv as fc
    from fastconv import _kernels

    torch = _torch()
    with Threads(threads):
        peak = _kernels.peak_gflops(threads, seconds=peak_seconds)
    blas = "unknown"
    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(f"{i.get('internal_api')} {i.get('version')}" for i in threadpool_info()
                         if i.get("user_api") == "blas") or blas
    except ImportError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return {
        "CPU": f"{cpu_model()}, {cpus} CPUs{load}",
        "ISA": fc.get_isa(),
        "bf16 GEMM": f"{_kernels.bf16_kernel()} (what the bf16 rows run on)",
        "peak": f"{peak:.1f} GFLOP/s at {threads} thread(s), measured (FMA loop, fastconv.peak_gflops)",
        "versions": f"fastconv {fc.__version__}, NumPy {np.__version__} ({blas}), "
                    f"PyTorch {torch.__version__ if torch is not None else 'not installed'}",
        "OPENBLAS_THREAD_TIMEOUT": os.environ.get("OPENBLAS_THREAD_TIMEOUT", "not set (OpenBLAS workers spin "
                                                                            "~100 ms after each call)"),
        "_peak": peak,
    }


# -- the table ------------------------------------------------------------------------------------------


def _ms(t):
    """Milliseconds to 4 significant digits (ratios recomputed from the table agree to 0.1 %)."""
    ms = t * 1e3
    return f"{ms:.4g}" if ms < 1000 else f"{ms:.0f}"


def rows(results, threads, peak):
    """The table's rows: [(workload name, threads, {column: text})] from
    results [(Workload, {side: Timing})]."""
    out = []
    for w, timings in results:
        cells = {}
        ours = timings.get("fastconv")
        for side in SIDES:
            t = timings.get(side)
            if t is None:
                continue
            cells[f"{LABELS[side]} ms"] = f"{_ms(t.median)} ({_ms(t.best)})"
            if side != "fastconv" and ours is not None:
                cells[f"vs {LABELS[side]}"] = f"{t.median / ours.median:.2f}x"
        if ours is not None:
            if w.flop:
                cells["rate"] = f"{w.flop / ours.median / 1e9:.1f} GFLOP/s"
                if w.precision == "float32":  # the peak is float32's
                    cells["% peak"] = f"{100 * w.flop / ours.median / 1e9 / peak:.0f}%"
            elif w.nbytes:
                cells["rate"] = f"{w.nbytes / ours.median / 1e9:.1f} GB/s"
        out.append((w.name, threads, cells))
    return out


def columns(sides):
    cols = ["workload", "threads"] + [f"{LABELS[s]} ms" for s in SIDES if s in sides] + ["rate", "% peak"]
    return cols + [f"vs {LABELS[s]}" for s in PEERS if s in sides]


def markdown(table_rows, sides, header=True):
    """A Markdown table of `rows()` output ('-' where a side did not run);
    without the header lines when `header` is false (rows printed as measured)."""
    cols = columns(sides)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] if header else []
    for name, threads, cells in table_rows:
        values = [name, str(threads)] + [cells.get(c, "-") for c in cols[2:]]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------------------


def add_arguments(p):
    """The options of ``fastconv bench`` / ``bench/compare.py``; bad values are
    usage errors (exit code 2), as for the other commands."""
    from fastconv.tools.args import positive_float, positive_int

    p.add_argument("--threads", default=None, type=_thread_list, metavar="N[,N...]",
                   help="thread counts, each applied to every library (default: all CPUs)")
    p.add_argument("--reps", type=positive_int, default=15, metavar="N",
                   help="timed turns per side (default: %(default)s)")
    p.add_argument("--turn-ms", type=positive_float, default=20.0, metavar="MS",
                   help="timed calls per turn add up to about this (default: %(default)s)")
    p.add_argument("--only", action="append", default=[], metavar="TEXT",
                   help="only workloads whose name contains TEXT (repeatable)")
    p.add_argument("--sides", default=",".join(SIDES), metavar="A,B",
                   help=f"which of {', '.join(SIDES)} to time (default: all that are installed)")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even when it is installed")
    p.add_argument("--fairness", action="store_true",
                   help="also time each side alone and print alone / taking-turns medians")
    p.add_argument("--tiny", action="store_true", help="tiny arrays: checks the harness, measures nothing")
    p.add_argument("--list", action="store_true", help="print the workload names and exit")


def _thread_list(text):
    """"1,2" -> [1, 2]; an argparse type."""
    import argparse

    try:
        counts = [int(t) for t in str(text).split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated whole numbers; got {text!r}") from None
    if min(counts) < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {text!r}")
    return counts


def run(args, out=None):
    """Measure and print (to `out`, default sys.stdout); returns the exit code."""
    out = sys.stdout if out is None else out
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    bad = [s for s in sides if s not in SIDES]
    if bad or "fastconv" not in sides:
        raise ValueError(f"fastconv bench: --sides must include fastconv and name only {SIDES}; got {args.sides!r}")
    if args.no_torch or _torch() is None:
        sides = [s for s in sides if not s.startswith("torch")]
    import fastconv as fc

    from fastconv.tools.args import UsageError, check_threads

    counts = args.threads or [fc.get_num_threads()]
    for n in args.threads or []:
        check_threads(n)
    every = workloads(args.tiny)
    todo = [w for w in every if not args.only or any(t in w.name for t in args.only)]
    unmatched = [t for t in args.only if not any(t in w.name for w in every)]
    if unmatched:
        raise UsageError(f"--only: must be part of a workload's name (see --list); got {unmatched[0]!r}")
    if args.list:
        print("\n".join(w.name for w in todo), file=out)
        return 0
    pinned = pin_malloc()
    for n in counts:
        info = machine(n, peak_seconds=0.02 if args.tiny else 0.2)
        print(f"\n### {n} thread(s)\n", file=out)
        for key, value in info.items():
            if not key.startswith("_"):
                print(f"- {key}: {value}", file=out)
        print(f"- malloc thresholds pinned: {'yes' if pinned else 'no (not glibc)'}; {args.reps} turns per side, "
              f"A B C / C B A; median (min) per call; vs X = X's median / fastconv's (> 1: fastconv faster)\n",
              file=out)
        fairness = []
        print(markdown([], sides), file=out)
        with Threads(n):
            for w in todo:
                fns = {s: w.make[s]() for s in sides if s in w.make}
                timings = time_sides(fns, args.reps, args.turn_ms / 1e3)
                print(markdown(rows([(w, timings)], n, info["_peak"]), sides, header=False), file=out, flush=True)
                if args.fairness:
                    alone = time_sides(fns, args.reps, args.turn_ms / 1e3, alone=True)
                    fairness.append((w.name, {s: alone[s].median / timings[s].median for s in fns}))
                del fns
        if fairness:
            print("\nFairness: median alone / median taking turns (1.00 = taking turns changes nothing)\n", file=out)
            cols = ["workload"] + [LABELS[s] for s in sides]
            print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols), file=out)
            for name, ratio in fairness:
                print("| " + " | ".join([name] + [f"{ratio[s]:.2f}" if s in ratio else "-" for s in sides]) + " |",
                      file=out)
        out.flush()
    return 0


def reexec_for_openblas(argv):
    """Set OPENBLAS_THREAD_TIMEOUT and re-execute when NumPy is already loaded
    without it (OpenBLAS reads it once, at load). Returns only when no
    re-execution is needed or possible."""
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = OPENBLAS_TIMEOUT
    if "numpy" in sys.modules and argv and os.path.isfile(argv[0]):
        # python -m fastconv: run as a module again (as a script, its folder would lead sys.path).
        start = ["-m", "fastconv"] if os.path.basename(argv[0]) == "__main__.py" else [argv[0]]
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable] + start + list(argv[1:]))


def main(argv=None):
    """``python bench/compare.py [options]``; see ``--help``."""
    p = argparse.ArgumentParser(prog="compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))
