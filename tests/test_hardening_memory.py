"""No leak: the resident set size stays flat over many forward/backward calls of
a small network (every layer kind with a native kernel), and over many refused
calls (the error paths free what they allocated).

The normal run does 2,000 steps (~8 s); ``FASTCONV_LEAK_STEPS=10000`` the full
10,000 (``-s`` prints the RSS before and after)."""

import os

import numpy as np
import pytest

import fastconv as fc
from fastconv import _kernels

STEPS = int(os.environ.get("FASTCONV_LEAK_STEPS", "2000"))


def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")


def _net():
    fc.manual_seed(0)
    return fc.Sequential(fc.Conv2d(1, 4, 3, padding=1), fc.BatchNorm2d(4), fc.ReLU(), fc.MaxPool2d(2),
                         fc.Conv2d(4, 4, 3, padding=1), fc.Tanh(), fc.AvgPool2d(2), fc.Flatten(),
                         fc.Dropout(0.2), fc.Linear(16, 8), fc.ELU(), fc.Linear(8, 3))


def test_rss_is_flat_over_many_forward_backward_calls():
    model, loss_fn = _net(), fc.SoftmaxCrossEntropy()
    opt = fc.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 4)

    def steps(n):
        for _ in range(n):
            loss_fn(model(x), y)
            opt.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()

    steps(500)  # warm up: allocator pools, OpenMP threads, GEMM workspaces
    before = rss_mib()
    steps(STEPS)
    after = rss_mib()
    print(f"\nRSS over {STEPS} forward/backward steps: {before:.1f} MiB before, {after:.1f} MiB after")
    assert after - before < 4, (before, after)


def test_rss_is_flat_over_refused_calls():
    x = np.ones((2, 3, 8, 8), np.float32)
    bad = [lambda: _kernels.conv2d_forward(x, np.ones((4, 2, 3, 3), np.float32), None, 1, 1),
           # refused after the kernel ran: argmax 9 lies outside a 2x2 window
           lambda: _kernels.maxpool2d_backward(np.ones((2, 3, 4, 4), np.float32), np.full((2, 3, 4, 4), 9, np.uint8),
                                               (2, 3, 8, 8), 2, 2, 0),
           lambda: _kernels.sgemm(np.ones((3, 4), np.float32), np.ones((5, 6), np.float32)),
           lambda: _kernels.relu_forward(x.astype(np.float64))]

    def calls(n):
        for _ in range(n):
            for call in bad:
                with pytest.raises((ValueError, TypeError)):
                    call()

    calls(200)
    before = rss_mib()
    calls(2500)
    after = rss_mib()
    assert after - before < 2, (before, after)
