"""Shared fixtures: run kernel tests on every ISA path this CPU supports and
with 1 and 2 threads, restoring the previous settings afterwards."""

import contextlib
import itertools

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st

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


@contextlib.contextmanager
def conv_algorithm(mode):
    """set_conv_algorithm(mode) within the block, then the previous mode."""
    previous = _kernels.set_conv_algorithm(mode)
    try:
        yield
    finally:
        _kernels.set_conv_algorithm(previous)


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


def activation(draw, lib):
    """For hypothesis: a random activation layer from ``lib`` (fastconv, or torch.nn: the names agree)."""
    name = draw(st.sampled_from(["ReLU", "LeakyReLU", "ELU", "Sigmoid", "Tanh"]))
    parameter = draw(st.floats(-1.5, 1.5, allow_nan=False))  # LeakyReLU's slope, ELU's alpha
    return getattr(lib, name)(parameter) if name in ("LeakyReLU", "ELU") else getattr(lib, name)()


def pool_size(size, k, s, p, d=1, ceil_mode=False):
    """A pool's outputs along one axis, PyTorch's rule (ceil_mode: the last window must start
    inside the input or the padding before it)."""
    span = d * (k - 1) + 1
    out = (size + 2 * p - span + (s - 1 if ceil_mode else 0)) // s + 1
    return out - 1 if ceil_mode and (out - 1) * s >= size + p else out


def pool_options(draw, kind, h, w, k, s, p):
    """For hypothesis: options beyond kernel, stride and padding for a "maxpool" (dilation,
    ceil_mode) or an "avgpool" (ceil_mode, count_include_pad, divisor_override) of an H x W
    input, often the defaults; None where the drawn options make no pool of it."""
    if not draw(st.integers(0, 2)):
        return {}
    options = {"ceil_mode": draw(st.booleans())}
    if kind == "maxpool":
        options["dilation"] = d = draw(st.integers(1, 2))
        if d > min(h, w):  # keep clear of windows of padding alone
            return None
    else:
        options["count_include_pad"] = draw(st.booleans())
        options["divisor_override"] = draw(st.one_of(st.none(), st.integers(1, 9)))
    if min(pool_size(n, k, s, p, options.get("dilation", 1), options["ceil_mode"]) for n in (h, w)) < 1:
        return None
    return options


@st.composite
def layer_stacks(draw, lib, maxout=False):
    """For hypothesis: (Sequential, input shape) of random layers from ``lib`` (fastconv, or
    torch.nn: the layers take the same arguments): image layers on (C, H, W), some nested in
    a Sequential, a Flatten, vector layers (Maxout too when ``maxout``), a Linear to the scores."""
    c, h, w = draw(st.integers(1, 3)), draw(st.integers(3, 11)), draw(st.integers(3, 11))
    shape, layers = (c, h, w), []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["conv", "maxpool", "avgpool", "act", "bn", "dropout", "nest"]))
        k, s = draw(st.integers(1, 3)), draw(st.integers(1, 2))
        p = draw(st.integers(0, k // 2))
        if h + 2 * p < k or w + 2 * p < k:
            continue
        if kind == "conv":
            out = draw(st.integers(1, 4))
            layers.append(lib.Conv2d(c, out, k, stride=s, padding=p, bias=draw(st.booleans())))
            c, h, w = out, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        elif kind in ("maxpool", "avgpool"):
            options = pool_options(draw, kind, h, w, k, s, p)
            if options is None:
                continue
            layers.append((lib.MaxPool2d if kind == "maxpool" else lib.AvgPool2d)(k, stride=s, padding=p, **options))
            h, w = (pool_size(n, k, s, p, options.get("dilation", 1), options.get("ceil_mode", False)) for n in (h, w))
        elif kind == "bn":
            layers.append(lib.BatchNorm2d(c, eps=draw(st.floats(1e-5, 1e-2)), affine=draw(st.booleans())))
        elif kind == "dropout":
            layers.append(lib.Dropout(0.4))
        else:
            layers.append(activation(draw, lib))
            if kind == "nest":
                layers[-1] = lib.Sequential(layers[-1], lib.Sequential())
    layers.append(lib.Flatten())
    features = c * h * w
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["linear", "bn", "act"] + ["maxout"] * maxout))
        out = draw(st.integers(1, 6))
        if kind == "linear":
            layers.append(lib.Linear(features, out, bias=draw(st.booleans())))
        elif kind == "maxout":
            layers.append(lib.Maxout(features, out, pieces=draw(st.integers(1, 3))))
        elif kind == "bn":
            layers.append(lib.BatchNorm1d(features))
        else:
            layers.append(activation(draw, lib))
        features = out if kind in ("linear", "maxout") else features
    layers.append(lib.Linear(features, draw(st.integers(1, 5))))
    return lib.Sequential(*layers).eval(), shape


def train_run(folder, *options):
    """The run folder of a one-epoch ``fastconv train`` in ``folder`` (no pictures, 1 thread),
    for the tests of what reads checkpoints (export, predict); the thread count is restored."""
    from fastconv.tools import cli

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
