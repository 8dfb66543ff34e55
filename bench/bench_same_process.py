"""fastconv and PyTorch in one process, taking turns: does either slow the other?

One round is a conv2d forward of (64, 32, 32, 32) by 32 3x3 filters: fastconv
alone, PyTorch (NCHW) alone, and "turns" = one fastconv call then one PyTorch
call. Both get the ``threads`` fixture's thread count. With no
oversubscription, turns ~= fastconv alone + PyTorch alone; each library's
idle OpenMP workers spinning while the other one runs would show up as
turns being slower than that sum. tests/test_distribution.py checks the
thread counts of the same situation without timing anything.
"""

import numpy as np
import pytest

from fastconv import _kernels

torch = pytest.importorskip("torch")

X_SHAPE, W_SHAPE = (64, 32, 32, 32), (32, 32, 3, 3)


def _calls():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(X_SHAPE, dtype=np.float32)
    w = rng.standard_normal(W_SHAPE, dtype=np.float32)
    b = np.zeros(W_SHAPE[0], np.float32)
    xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)

    def fastconv():
        _kernels.conv2d_forward(x, w, b, (1, 1), (1, 1))

    def pytorch():
        torch.nn.functional.conv2d(xt, wt, bt, 1, 1)

    def turns():
        fastconv()
        pytorch()

    return {"fastconv": fastconv, "torch": pytorch, "turns": turns}


@pytest.mark.parametrize("impl", ["fastconv", "torch", "turns"])
def test_conv2d_taking_turns(benchmark, threads, record, impl):
    fn = _calls()[impl]
    benchmark.group = f"conv2d {X_SHAPE} in one process with torch, {threads}t"
    benchmark(fn)
    record(impl, shape=X_SHAPE)
