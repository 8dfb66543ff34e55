"""conv2d_maxpool_forward (conv, ReLU, 2x2 stride-2 max-pool with argmax in
one kernel) on cifar_small's three layers: fastconv fused, fastconv as two
kernels (conv2d_forward with ReLU, then maxpool2d_forward), its NumPy twin,
and PyTorch (NCHW and channels_last: conv2d, relu, max_pool2d with
indices), at each thread count of the ``threads`` fixture.

GFLOP/s counts the convolution's 2 x multiply-adds (padded taps included).
"""

import numpy as np
import pytest
from peers import to_torch

from fastconv import _kernels, reference

try:
    import torch
except ImportError:
    torch = None

# (N, C, H=W, K): 3x3 kernels, padding 1, as cifar_small.
LAYERS = [(128, 3, 32, 32), (128, 32, 16, 64), (128, 64, 8, 128)]
IMPLS = ["fastconv", "fastconv_unfused", "numpy", "torch_cl", "torch_nchw"]


def _name(layer):
    n, c, hw, k = layer
    return f"{n}x{c}x{hw}x{hw}-{k}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layer", LAYERS, ids=_name)
def test_conv2d_maxpool_forward(benchmark, threads, record, layer, impl):
    n, c, hw, k = layer
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, hw, hw), dtype=np.float32)
    weight = rng.standard_normal((k, c, 3, 3), dtype=np.float32)
    bias = rng.standard_normal(k, dtype=np.float32)
    benchmark.group = f"conv2d_maxpool_forward {_name(layer)} {threads}t"
    if impl == "fastconv":
        benchmark(_kernels.conv2d_maxpool_forward, x, weight, bias, 1, 1, True)
    elif impl == "fastconv_unfused":
        benchmark(lambda: _kernels.maxpool2d_forward(_kernels.conv2d_forward(x, weight, bias, 1, 1, True),
                                                     2, 2, 0))
    elif impl == "numpy":
        benchmark(reference.conv2d_maxpool_forward, x, weight, bias, 1, 1, True)
    else:
        F = torch.nn.functional
        tx, tw, tb = to_torch(x, impl), to_torch(weight, impl), torch.from_numpy(bias)

        def run():
            with torch.no_grad():
                return F.max_pool2d(F.relu(F.conv2d(tx, tw, tb, 1, 1)), 2, 2, 0, return_indices=True)
        benchmark(run)
    record(impl, flop=2 * n * k * hw * hw * c * 9, workload=f"conv2d_maxpool_forward {_name(layer)}")
