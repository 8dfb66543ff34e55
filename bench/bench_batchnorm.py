"""Batch norm on (128, 32, 32, 32): the training forward (batch statistics),
the evaluation forward (running statistics) and the training backward (dx,
dweight, dbias), fastconv against its NumPy twin and PyTorch (NCHW and
channels_last), at each thread count of the ``threads`` fixture; and the
training step of BatchNorm2d -> ReLU with the ReLU fused in or apart.

GB/s counts the least traffic the op needs, for every implementation: a
forward reads x and writes y (8 bytes per element), a backward reads dy and x
and writes dx (12 bytes per element). fastconv's training forward reads x
twice (statistics, then normalization) and its backward reads dy and x twice,
so their figures can sit below the machine's bandwidth by design.
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
EPS = 1e-5
IMPLS = ["fastconv", "numpy", "torch_cl", "torch_nchw"]


def _data():
    rng = np.random.default_rng(0)
    c = SHAPE[1]
    x = rng.standard_normal(SHAPE, dtype=np.float32) * 2 + 1
    weight, bias = rng.standard_normal(c, dtype=np.float32), rng.standard_normal(c, dtype=np.float32)
    running = rng.standard_normal(c, dtype=np.float32), rng.random(c, dtype=np.float32) + 0.5
    dy = rng.standard_normal(SHAPE, dtype=np.float32)
    return x, weight, bias, running, dy


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm_forward(benchmark, threads, record, training, impl):
    x, weight, bias, (rmean, rvar), _ = _data()
    given = (None, None) if training else (rmean, rvar)
    benchmark.group = f"batchnorm_forward {'train' if training else 'eval'} {NAME} {threads}t"
    if impl in ("fastconv", "numpy"):
        fn = (_kernels if impl == "fastconv" else reference).batchnorm_forward
        benchmark(fn, x, weight, bias, *given, EPS)
    else:
        tx, tw, tb, tm, tv = (to_torch(a, impl) for a in (x, weight, bias, rmean.copy(), rvar.copy()))
        # native_batch_norm is what F.batch_norm runs; in training it also
        # updates the running statistics, as our layer does around the kernel.
        benchmark(torch.ops.aten.native_batch_norm, tx, tw, tb, tm, tv, training, 0.1, EPS)
    record(impl, nbytes=2 * x.nbytes, shape=SHAPE, training=training)


@pytest.mark.parametrize("impl", IMPLS)
def test_batchnorm_backward(benchmark, threads, record, impl):
    x, weight, bias, (rmean, rvar), dy = _data()
    benchmark.group = f"batchnorm_backward train {NAME} {threads}t"
    if impl in ("fastconv", "numpy"):
        ops = _kernels if impl == "fastconv" else reference
        _, mean, var = ops.batchnorm_forward(x, weight, bias, None, None, EPS)
        benchmark(ops.batchnorm_backward, dy, x, weight, mean, var, EPS, True)
    else:
        tx, tw, tb, tm, tv, tdy = (to_torch(a, impl) for a in (x, weight, bias, rmean, rvar, dy))
        _, save_mean, save_invstd = torch.ops.aten.native_batch_norm(tx, tw, tb, tm.clone(), tv.clone(),
                                                                     True, 0.1, EPS)
        benchmark(torch.ops.aten.native_batch_norm_backward, tdy, tx, tw, tm, tv, save_mean, save_invstd,
                  True, EPS, [True, True, True])
    record(impl, nbytes=3 * x.nbytes, shape=SHAPE)


def _bn_relu_step(x, weight, bias, dy, fused):
    """fastconv's training forward and backward of BatchNorm2d -> ReLU (the
    layers' kernel calls): the ReLU in the batch norm's passes, or apart."""
    if fused:
        y, mean, var = _kernels.batchnorm_forward(x, weight, bias, None, None, EPS, True)
        return _kernels.batchnorm_backward(dy, x, weight, mean, var, EPS, True, y)
    z, mean, var = _kernels.batchnorm_forward(x, weight, bias, None, None, EPS)
    y = _kernels.relu_forward(z)
    return _kernels.batchnorm_backward(_kernels.relu_backward(dy, y), x, weight, mean, var, EPS, True)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "apart"])
def test_batchnorm_relu_train_step(benchmark, threads, record, fused):
    """GB/s as the fused pair's least traffic: x read and y written forward;
    dy, y and x read and dx written backward (24 bytes per element)."""
    x, weight, bias, _, dy = _data()
    benchmark.group = f"batchnorm_relu train forward+backward {NAME} {threads}t"
    benchmark(_bn_relu_step, x, weight, bias, dy, fused)
    record("fastconv_fused" if fused else "fastconv_apart", nbytes=6 * x.nbytes, shape=SHAPE)
