"""Shared fixtures: run kernel tests on every ISA path this CPU supports and
with 1 and 2 threads, restoring the previous settings afterwards."""

import itertools

import numpy as np
import pytest
from hypothesis import settings

from fastconv import _kernels

settings.register_profile("default", max_examples=40, deadline=None)
settings.register_profile("long", max_examples=2000, deadline=None)
settings.load_profile("default")

ISAS = _kernels.supported_isas()
THREADS = (1, 2)


@pytest.fixture(params=list(itertools.product(ISAS, THREADS)), ids=lambda p: f"{p[0]}-{p[1]}t")
def isa_threads(request):
    """Parametrize a test over (ISA, thread count); the kernels use them meanwhile."""
    isa, threads = request.param
    old_isa, old_threads = _kernels.get_isa(), _kernels.get_num_threads()
    _kernels.set_isa(isa)
    _kernels.set_num_threads(threads)
    yield isa, threads
    _kernels.set_isa(old_isa)
    _kernels.set_num_threads(old_threads)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def rand(rng, *shape, scale=1.0):
    """A C-contiguous float32 array of standard normals."""
    return (scale * rng.standard_normal(shape)).astype(np.float32)


@pytest.fixture
def torch():
    """PyTorch for comparison tests; the test is skipped when it is not installed."""
    return pytest.importorskip("torch")


class Calls:
    """Counts the native kernel calls by name."""

    def __init__(self, monkeypatch, names):
        self.counts = dict.fromkeys(names, 0)
        for name in names:
            real = getattr(_kernels, name)

            def counted(*args, _real=real, _name=name, **kwargs):
                self.counts[_name] += 1
                return _real(*args, **kwargs)
            monkeypatch.setattr(_kernels, name, counted)


def unfused(layers, x, dy):
    """(output, dx, parameter gradients) of layers run one by one: the fusion tests' oracle."""
    for m in layers:
        x = m(x)
    out = x
    for m in reversed(layers):
        dy = m.backward(dy)
    grads = [p.grad.copy() for m in layers for p in m.parameters()]
    for m in layers:
        m.zero_grad()
    return out, dy, grads
