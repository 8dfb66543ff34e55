"""Average pooling on (128, 32, 32, 32), 2x2 stride 2 and 3x3 stride 2
padding 1, forward and backward, fastconv against its NumPy twin and PyTorch
(NCHW and channels_last), at each thread count of the ``threads`` fixture.

GB/s counts the least traffic, for every implementation: a forward reads x
and writes y; a backward reads dy and writes dx.
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
POOLS = [(2, 2, 0), (3, 2, 1)]  # (kernel, stride, padding)
IMPLS = ["fastconv", "numpy", "torch_cl", "torch_nchw"]


def _data(pool):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE, dtype=np.float32)
    y = _kernels.avgpool2d_forward(x, *pool)
    return x, y, rng.standard_normal(y.shape, dtype=np.float32)


def _pool_name(pool):
    return "k{}s{}p{}".format(*pool)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("pool", POOLS, ids=_pool_name)
def test_avgpool2d_forward(benchmark, threads, record, pool, impl):
    x, y, _ = _data(pool)
    benchmark.group = f"avgpool2d_forward {NAME} {_pool_name(pool)} {threads}t"
    if impl in ("fastconv", "numpy"):
        benchmark((_kernels if impl == "fastconv" else reference).avgpool2d_forward, x, *pool)
    else:
        benchmark(torch.nn.functional.avg_pool2d, to_torch(x, impl), *pool)  # count_include_pad=True
    record(impl, nbytes=x.nbytes + y.nbytes, shape=SHAPE, pool=_pool_name(pool))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("pool", POOLS, ids=_pool_name)
def test_avgpool2d_backward(benchmark, threads, record, pool, impl):
    x, _, dy = _data(pool)
    kernel, stride, padding = pool
    benchmark.group = f"avgpool2d_backward {NAME} {_pool_name(pool)} {threads}t"
    if impl in ("fastconv", "numpy"):
        benchmark((_kernels if impl == "fastconv" else reference).avgpool2d_backward, dy, x.shape, *pool)
    else:
        benchmark(torch.ops.aten.avg_pool2d_backward, to_torch(dy, impl), to_torch(x, impl), [kernel] * 2,
                  [stride] * 2, [padding] * 2, False, True, None)
    record(impl, nbytes=dy.nbytes + x.nbytes, shape=SHAPE, pool=_pool_name(pool))
