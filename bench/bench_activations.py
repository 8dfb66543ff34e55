"""Leaky ReLU, ELU, sigmoid and tanh on (128, 32, 32, 32), forward and
backward, fastconv against its NumPy twins and PyTorch, at each thread count
of the ``threads`` fixture. Element-wise, so PyTorch's channels_last and NCHW
tensors run the same dense loop; both are timed for uniformity with the other
layers.

GB/s: a forward reads x and writes y (8 bytes per element); a backward reads
dy and the saved x or y and writes dx (12 bytes per element).
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
# op -> (its parameter or None, the tensor the backward takes: "x" or "y")
OPS = {"leaky_relu": (0.01, "x"), "elu": (1.0, "x"), "sigmoid": (None, "y"), "tanh": (None, "y")}


def _args(op):
    param = OPS[op][0]
    return () if param is None else (param,)


def _data(op):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE, dtype=np.float32) * 3  # both signs, some saturation
    y = getattr(_kernels, f"{op}_forward")(x, *_args(op))
    return x, y, rng.standard_normal(SHAPE, dtype=np.float32)


def _torch_forward(op):
    F = torch.nn.functional
    return {"leaky_relu": lambda t: F.leaky_relu(t, 0.01), "elu": lambda t: F.elu(t, 1.0),
            "sigmoid": torch.sigmoid, "tanh": torch.tanh}[op]


def _torch_backward(op):
    """The ATen kernel autograd calls, as f(dy, saved)."""
    aten = torch.ops.aten
    return {"leaky_relu": lambda g, x: aten.leaky_relu_backward(g, x, 0.01, False),
            "elu": lambda g, x: aten.elu_backward(g, 1.0, 1, 1, False, x),
            "sigmoid": aten.sigmoid_backward, "tanh": aten.tanh_backward}[op]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", OPS)
def test_activation_forward(benchmark, threads, record, op, impl):
    x, _, _ = _data(op)
    benchmark.group = f"{op}_forward {NAME} {threads}t"
    if impl in ("fastconv", "numpy"):
        impl_module = _kernels if impl == "fastconv" else reference
        benchmark(getattr(impl_module, f"{op}_forward"), x, *_args(op))
    else:
        benchmark(_torch_forward(op), to_torch(x, impl))
    record(impl, nbytes=2 * x.nbytes, shape=SHAPE, op=op)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", OPS)
def test_activation_backward(benchmark, threads, record, op, impl):
    x, y, dy = _data(op)
    saved = x if OPS[op][1] == "x" else y
    benchmark.group = f"{op}_backward {NAME} {threads}t"
    if impl in ("fastconv", "numpy"):
        impl_module = _kernels if impl == "fastconv" else reference
        benchmark(getattr(impl_module, f"{op}_backward"), dy, saved, *_args(op))
    else:
        benchmark(_torch_backward(op), to_torch(dy, impl), to_torch(saved, impl))
    record(impl, nbytes=3 * x.nbytes, shape=SHAPE, op=op)
