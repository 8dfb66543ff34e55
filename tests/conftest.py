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


def train_run(folder, *options):
    """The run folder of a one-epoch ``fastconv train`` in ``folder`` (no pictures, 1 thread),
    for the tests of what reads checkpoints (export, predict); the thread count is restored."""
    from fastconv import cli

    threads = _kernels.get_num_threads()
    try:
        args = ["train", "--epochs", "1", "--no-plots", "--threads", "1", "--out", str(folder / "run"), *options]
        assert cli.main(args) == 0
    finally:
        _kernels.set_num_threads(threads)
    return folder / "run"


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A checkpoint of a small CNN on the shipped digits: (1, 8, 8) grayscale, classes "0".."9"."""
    return train_run(tmp_path_factory.mktemp("digits"), "--arch", "conv8x3p1-bn-relu-pool2-fc10")


@pytest.fixture(scope="session")
def rgb_run(tmp_path_factory):
    """A checkpoint of a small CNN on random (3, 6, 5) uint8 images of classes cat, dog, bird."""
    folder = tmp_path_factory.mktemp("rgb")
    rng = np.random.default_rng(7)
    np.savez(folder / "rgb.npz", X=rng.integers(0, 256, (60, 3, 6, 5), dtype=np.uint8),
             y=rng.integers(0, 3, 60), classes=np.array(["cat", "dog", "bird"]))
    return train_run(folder, "--data", str(folder / "rgb.npz"), "--arch", "conv4x3p1-relu-pool2-fc3")
