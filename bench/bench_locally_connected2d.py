"""The locally connected layer on (64, 16, 16, 16) -> 16 channels, 3x3, padding 1,
forward and backward: fastconv against its NumPy twin (einsum) and PyTorch, which
has no such layer (its definition there: unfold, then a batched matmul per
position, gradients by autograd), at each thread count of the ``threads`` fixture.
FLOP count the multiply-adds of the layer: 2 * N * OH * OW * K * C * kh * kw per
direction (the backward does two of them: dx and dW).
"""

import numpy as np
import pytest

from fastconv import _kernels, reference

try:
    import torch
except ImportError:
    torch = None

N, C, H, K, KS = 64, 16, 16, 16, 3
FLOP = 2 * N * H * H * K * C * KS * KS
IMPLS = ["fastconv", "numpy", "torch"]


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, H), dtype=np.float32)
    w = rng.standard_normal((H, H, K, C, KS, KS), dtype=np.float32) * 0.1
    return x, w, rng.standard_normal(K * H * H, dtype=np.float32).reshape(K, H, H)


def _torch_layer(x, w, b):
    if torch is None:
        pytest.skip("PyTorch is not installed")
    tx, tw, tb = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_(), torch.from_numpy(b)
    wm = tw.reshape(H * H, K, C * KS * KS)

    def forward():
        cols = torch.nn.functional.unfold(tx, KS, padding=1)  # N, C*kh*kw, OH*OW
        return torch.einsum("nqp,pkq->nkp", cols, wm).reshape(N, K, H, H) + tb
    return forward, tx, tw


@pytest.mark.parametrize("impl", IMPLS)
def test_locally_connected2d_forward(benchmark, threads, record, impl):
    x, w, b = _data()
    benchmark.group = f"locally_connected2d_forward {N}x{C}x{H}x{H} -> {K} {KS}x{KS} {threads}t"
    if impl == "torch":
        forward, _, _ = _torch_layer(x, w, b)
        with torch.no_grad():
            benchmark(forward)
    else:
        benchmark((_kernels if impl == "fastconv" else reference).locally_connected2d_forward, x, w, b, 1, 1)
    record(impl, flop=FLOP)


@pytest.mark.parametrize("impl", IMPLS)
def test_locally_connected2d_backward(benchmark, threads, record, impl):
    x, w, b = _data()
    dy = np.random.default_rng(1).standard_normal((N, K, H, H), dtype=np.float32)
    benchmark.group = f"locally_connected2d_backward {N}x{C}x{H}x{H} -> {K} {KS}x{KS} {threads}t"
    if impl == "torch":
        forward, tx, tw = _torch_layer(x, w, b)
        tdy = torch.from_numpy(dy)

        def backward():
            y = forward()
            tx.grad = tw.grad = None
            y.backward(tdy)
        benchmark(backward)  # includes torch's forward: autograd needs its graph
    else:
        benchmark((_kernels if impl == "fastconv" else reference).locally_connected2d_backward, x, w, dy, 1, 1)
    record(impl, flop=2 * FLOP)
