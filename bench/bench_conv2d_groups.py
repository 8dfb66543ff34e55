"""Depthwise Conv2d (groups = C; the tests are tests/test_conv2d_groups.py)
forward, and backward (dx + dW + db), on the depthwise layers of
workloads.md: fastconv's depthwise planes against the same layer run per
group (``set_conv_algorithm("no-depthwise")``), the NumPy twin and PyTorch
(NCHW and channels_last), at each thread count of the ``threads`` fixture.

    pytest bench/bench_conv2d_groups.py -p no:cacheprovider --benchmark-json=dw.json

GFLOP/s counts 2 x multiply-adds with padded taps included: a forward is
2*N*K*OH*OW*kh*kw FLOP and a backward twice that.
"""

import numpy as np
import pytest
from bench_conv2d import torch, torch_tensors, with_mode

from fastconv import _kernels, reference
from fastconv.tools.bench import DEPTHWISE

IMPLS = ["fastconv", "fastconv_per_group", "numpy", "torch_cl", "torch_nchw"]


def _name(layer):
    n, c, hw, k, kernel, stride, padding = layer
    return f"{n}x{c}x{hw}x{hw}-{k}k{kernel}s{stride}p{padding}g{c}"


def _data(layer):
    n, c, hw, k, kernel, stride, padding = layer
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, hw, hw), dtype=np.float32)
    weight = rng.standard_normal((k, 1, kernel, kernel), dtype=np.float32)
    bias = rng.standard_normal(k, dtype=np.float32)
    out = (hw + 2 * padding - kernel) // stride + 1
    dy = rng.standard_normal((n, k, out, out), dtype=np.float32)
    return x, weight, bias, dy, 2 * n * k * out * out * kernel * kernel


def _forward(impl, layer):
    x, weight, bias, _, flop = _data(layer)
    stride, padding, groups = layer[5], layer[6], layer[1]
    args = (stride, padding, 1, groups)
    if impl.startswith("fastconv"):
        run = lambda: _kernels.conv2d_ex_forward(x, weight, bias, *args)
        return (with_mode(run, "no-depthwise") if impl == "fastconv_per_group" else run), flop
    if impl == "numpy":
        return (lambda: reference.conv2d_ex_forward(x, weight, bias, *args)), flop
    tx, tw, tb = torch_tensors((x, weight, bias), impl)

    def run():
        with torch.no_grad():
            return torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=padding, groups=groups)

    return run, flop


def _backward(impl, layer):
    x, weight, bias, dy, flop = _data(layer)
    stride, padding, groups = layer[5], layer[6], layer[1]
    args = (stride, padding, 1, groups)
    if impl.startswith("fastconv"):
        run = lambda: _kernels.conv2d_ex_backward(x, weight, dy, *args)
        return (with_mode(run, "no-depthwise") if impl == "fastconv_per_group" else run), 2 * flop
    if impl == "numpy":
        return (lambda: reference.conv2d_ex_backward(x, weight, dy, *args)), 2 * flop
    tx, tw, tdy = torch_tensors((x, weight, dy), impl)
    # The kernel autograd calls, without the graph bookkeeping around it.
    return (lambda: torch.ops.aten.convolution_backward(
        tdy, tx, tw, [weight.shape[0]], [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], groups,
        [True, True, True])), 2 * flop


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layer", DEPTHWISE, ids=_name)
def test_conv2d_depthwise_forward(benchmark, threads, record, layer, impl):
    run, flop = _forward(impl, layer)
    benchmark.group = f"conv2d_depthwise_forward {_name(layer)} {threads}t"
    benchmark(run)
    record(impl, flop=flop, workload=f"conv2d_depthwise_forward {_name(layer)}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layer", DEPTHWISE, ids=_name)
def test_conv2d_depthwise_backward(benchmark, threads, record, layer, impl):
    run, flop = _backward(impl, layer)
    benchmark.group = f"conv2d_depthwise_backward {_name(layer)} {threads}t"
    benchmark(run)
    record(impl, flop=flop, workload=f"conv2d_depthwise_backward {_name(layer)}")
