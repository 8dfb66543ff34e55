"""ReLU on (128, 32, 32, 32) (workloads.md), forward and backward, fastconv
against its NumPy twin and PyTorch, at each thread count of the ``threads``
fixture. ReLU is element-wise, so PyTorch's channels_last and NCHW tensors
run the same dense loop; both are timed for uniformity with the other layers.

GB/s: forward reads x and writes y (8 bytes per element); backward reads dy
and y and writes dx (12 bytes per element).
"""

import numpy as np
import pytest
from peers import to_torch

from fastconv import _kernels, reference

try:
    import torch
except ImportError:
    torch = None

SHAPE = (128, 32, 32, 32)
NAME = "x".join(map(str, SHAPE))
IMPLS = ["fastconv", "numpy", "torch_cl", "torch_nchw"]


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE, dtype=np.float32)  # half negative: a real mask
    return x, _kernels.relu_forward(x), rng.standard_normal(SHAPE, dtype=np.float32)


@pytest.mark.parametrize("impl", IMPLS)
def test_relu_forward(benchmark, threads, record, impl):
    x, _, _ = _data()
    benchmark.group = f"relu_forward {NAME} {threads}t"
    if impl == "fastconv":
        benchmark(_kernels.relu_forward, x)
    elif impl == "numpy":
        benchmark(reference.relu_forward, x)
    else:
        benchmark(torch.relu, to_torch(x, impl))
    record(impl, nbytes=2 * x.nbytes, shape=SHAPE)


@pytest.mark.parametrize("impl", IMPLS)
def test_relu_backward(benchmark, threads, record, impl):
    _, y, dy = _data()
    benchmark.group = f"relu_backward {NAME} {threads}t"
    if impl == "fastconv":
        benchmark(_kernels.relu_backward, dy, y)
    elif impl == "numpy":
        benchmark(reference.relu_backward, dy, y)
    else:
        benchmark(torch.ops.aten.threshold_backward, to_torch(dy, impl), to_torch(y, impl), 0)
    record(impl, nbytes=3 * y.nbytes, shape=SHAPE)
