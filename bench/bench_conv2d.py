"""Conv2d forward, and backward (dx + dW + db), on the layer shapes of
workloads.md: fastconv against its NumPy twin and PyTorch (NCHW and
channels_last), at each thread count of the ``threads`` fixture.

    pytest bench/bench_conv2d.py -p no:cacheprovider --benchmark-json=conv.json

GFLOP/s counts 2 x multiply-adds with padded taps included, for every
implementation: a forward is 2*N*K*OH*OW*C*kh*kw FLOP and a backward twice
that (dx and dW; db is noise). Batch-1 forwards of the cifar_small layers
time the other threading path (one image, the GEMM on all threads).
"fastconv_im2col" is fastconv with Winograd off (``set_conv_algorithm("no-winograd")``):
on the 3x3 unit-stride layers, the A/B of the two algorithms.
"""

import numpy as np
import pytest

from fastconv import _kernels, reference
from fastconv.tools.bench import CONVS

try:
    import torch
except ImportError:
    torch = None

# (N, C, H=W, K, kernel, stride, padding): the harness's table (fastconv bench).
LAYERS = CONVS
CIFAR_LAYERS = [(1,) + layer[1:] for layer in LAYERS[2:5]]
IMPLS = ["fastconv", "fastconv_im2col", "numpy", "torch_cl", "torch_nchw"]


def _name(layer):
    n, c, hw, k, kernel, stride, padding = layer
    return f"{n}x{c}x{hw}x{hw}-{k}k{kernel}s{stride}p{padding}"


def _data(layer):
    n, c, hw, k, kernel, stride, padding = layer
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, hw, hw), dtype=np.float32)
    weight = rng.standard_normal((k, c, kernel, kernel), dtype=np.float32)
    bias = rng.standard_normal(k, dtype=np.float32)
    out = (hw + 2 * padding - kernel) // stride + 1
    dy = rng.standard_normal((n, k, out, out), dtype=np.float32)
    flop = 2 * n * k * out * out * c * kernel * kernel
    return x, weight, bias, dy, flop


def torch_tensors(arrays, impl):
    if torch is None:
        pytest.skip("PyTorch is not installed")
    ts = [torch.from_numpy(a) for a in arrays]
    if impl == "torch_cl":  # biases stay 1-D; 4-D tensors go channels_last
        ts = [t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in ts]
    return ts


def with_mode(run, mode):
    """run under the conv algorithm mode (``set_conv_algorithm``)."""
    def call():
        previous = _kernels.set_conv_algorithm(mode)
        try:
            return run()
        finally:
            _kernels.set_conv_algorithm(previous)
    return call


def _im2col(run):
    """run with Winograd off."""
    return with_mode(run, "no-winograd")


def _forward(impl, layer):
    """A zero-argument forward of `impl` on `layer`, and its FLOP."""
    x, weight, bias, _, flop = _data(layer)
    stride, padding = layer[5], layer[6]
    if impl.startswith("fastconv"):
        run = lambda: _kernels.conv2d_forward(x, weight, bias, stride, padding)
        return (_im2col(run) if impl == "fastconv_im2col" else run), flop
    if impl == "numpy":
        return (lambda: reference.conv2d_forward(x, weight, bias, stride, padding)), flop
    tx, tw, tb = torch_tensors((x, weight, bias), impl)

    def run():
        with torch.no_grad():
            return torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=padding)

    return run, flop


def _backward(impl, layer):
    """A zero-argument backward (dx, dW, db) of `impl` on `layer`, and its FLOP."""
    x, weight, bias, dy, flop = _data(layer)
    stride, padding = layer[5], layer[6]
    if impl.startswith("fastconv"):
        run = lambda: _kernels.conv2d_backward(x, weight, dy, stride, padding)
        return (_im2col(run) if impl == "fastconv_im2col" else run), 2 * flop
    if impl == "numpy":
        return (lambda: reference.conv2d_backward(x, weight, dy, stride, padding)), 2 * flop
    tx, tw, tdy = torch_tensors((x, weight, dy), impl)
    # The kernel autograd calls, without the graph bookkeeping around it.
    return (lambda: torch.ops.aten.convolution_backward(
        tdy, tx, tw, [weight.shape[0]], [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], 1,
        [True, True, True])), 2 * flop


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layer", LAYERS + CIFAR_LAYERS, ids=_name)
def test_conv2d_forward(benchmark, threads, record, layer, impl):
    run, flop = _forward(impl, layer)
    benchmark.group = f"conv2d_forward {_name(layer)} {threads}t"
    benchmark(run)
    record(impl, flop=flop, workload=f"conv2d_forward {_name(layer)}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layer", LAYERS, ids=_name)
def test_conv2d_backward(benchmark, threads, record, layer, impl):
    run, flop = _backward(impl, layer)
    benchmark.group = f"conv2d_backward {_name(layer)} {threads}t"
    benchmark(run)
    record(impl, flop=flop, workload=f"conv2d_backward {_name(layer)}")
