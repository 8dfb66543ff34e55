"""Max-pool 2x2 stride 2 (workloads.md): forward with argmax and backward
through it, fastconv against its NumPy twin and PyTorch (NCHW and
channels_last), at each thread count of the ``threads`` fixture.

GB/s counts the traffic fastconv's kernels need (float32 x/dy/dx/y and a
uint8 argmax), for every implementation, so the figures compare as
throughput: forward reads x and writes y and argmax; backward reads dy and
argmax and writes dx.
"""

import numpy as np
import pytest
from peers import to_torch

from fastconv import _kernels, reference

try:
    import torch
except ImportError:
    torch = None

SHAPES = [(128, 32, 32, 32), (64, 16, 28, 28)]
KERNEL, STRIDE, PADDING = 2, 2, 0
IMPLS = ["fastconv", "numpy", "torch_cl", "torch_nchw"]


def _data(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    y, am = _kernels.maxpool2d_forward(x, KERNEL, STRIDE, PADDING)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    return x, y, am, dy


def _name(shape):
    return "x".join(map(str, shape))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=_name)
def test_maxpool2d_forward(benchmark, threads, record, shape, impl):
    x, y, am, _ = _data(shape)
    benchmark.group = f"maxpool2d_forward {_name(shape)} {threads}t"
    if impl == "fastconv":
        benchmark(_kernels.maxpool2d_forward, x, KERNEL, STRIDE, PADDING)
    elif impl == "numpy":
        benchmark(reference.maxpool2d_forward, x, KERNEL, STRIDE, PADDING)
    else:
        benchmark(torch.nn.functional.max_pool2d, to_torch(x, impl), KERNEL, STRIDE, PADDING,
                  return_indices=True)
    record(impl, nbytes=x.nbytes + y.nbytes + am.nbytes, shape=shape)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=_name)
def test_maxpool2d_backward(benchmark, threads, record, shape, impl):
    x, _, am, dy = _data(shape)
    benchmark.group = f"maxpool2d_backward {_name(shape)} {threads}t"
    if impl == "fastconv":
        benchmark(_kernels.maxpool2d_backward, dy, am, x.shape, KERNEL, STRIDE, PADDING)
    elif impl == "numpy":
        benchmark(reference.maxpool2d_backward, dy, am, x.shape, KERNEL, STRIDE, PADDING)
    else:
        tx = to_torch(x, impl)
        _, idx = torch.nn.functional.max_pool2d(tx, KERNEL, STRIDE, PADDING, return_indices=True)
        tdy = to_torch(dy, impl)  # the same memory format as the forward's output
        benchmark(torch.ops.aten.max_pool2d_with_indices_backward, tdy, tx, [KERNEL] * 2,
                  [STRIDE] * 2, [PADDING] * 2, [1, 1], False, idx)
    record(impl, nbytes=dy.nbytes + am.nbytes + x.nbytes, shape=shape)
