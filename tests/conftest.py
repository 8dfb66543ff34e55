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


def bits(a):
    return np.ascontiguousarray(a).view(np.uint32)


def assert_bits_equal(actual, expected):
    """Bit for bit, except that a NaN's sign and payload are free: IEEE 754
    leaves them unspecified when both operands are NaN (x86 returns the first
    operand's, and the compiler may swap the operands of a commutative add)."""
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    ok = ~np.isnan(expected)
    np.testing.assert_array_equal(bits(actual[ok]), bits(expected[ok]))


def on_every_isa(fn, threads=1):
    """{isa: fn()} for every ISA this CPU supports, at `threads` threads."""
    old_isa, old_threads = _kernels.get_isa(), _kernels.get_num_threads()
    results = {}
    try:
        for isa in ISAS:
            _kernels.set_isa(isa)
            _kernels.set_num_threads(threads)
            results[isa] = fn()
    finally:
        _kernels.set_isa(old_isa)
        _kernels.set_num_threads(old_threads)
    return results


def assert_isas_agree(fn, threads=1):
    """fn() returns a tuple of arrays; every ISA's equal the generic ISA's bits
    (the element-wise and batch-norm entries promise it: kernels/eltwise.h,
    kernels/batchnorm.h)."""
    results = on_every_isa(fn, threads)
    for isa, outputs in results.items():
        for got, expected in zip(outputs, results["generic"]):
            assert_bits_equal(got, expected)
