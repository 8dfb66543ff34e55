"""The kernel contract (DESIGN.md): every native kernel has a NumPy twin with
the same name and signature, and native kernels release the GIL, so Python
threads may run them side by side and still get correct results."""

import functools
import inspect
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import rand

from fastconv import _kernels, reference

CORE = ("sgemm", "conv2d_forward", "conv2d_backward", "maxpool2d_forward",
        "maxpool2d_backward", "relu_forward", "relu_backward")


# ---------------------------------------------------------------------------
# names and signatures

def test_core_kernels_are_listed():
    assert set(CORE) <= set(_kernels.KERNELS)
    assert len(set(_kernels.KERNELS)) == len(_kernels.KERNELS)


@pytest.mark.parametrize("name", _kernels.KERNELS)
def test_twin_has_same_signature(name):
    native = getattr(_kernels, name, None)
    assert callable(native), f"fastconv._kernels.{name} is listed in KERNELS but missing"
    twin = getattr(reference, name, None)
    assert callable(twin), f"fastconv._kernels.{name} has no twin in fastconv.reference"
    # Cython 3 binds def functions by default, so they carry a real signature;
    # parameter names, kinds and defaults must all agree.
    assert inspect.signature(native) == inspect.signature(twin)
    assert native.__doc__, f"fastconv._kernels.{name} has no docstring"


def _reference_functions():
    return sorted(name for name, f in vars(reference).items()
                  if inspect.isfunction(f) and f.__module__ == reference.__name__
                  and not name.startswith("_"))


@pytest.mark.parametrize("name", _reference_functions())
def test_every_twin_has_a_native_kernel(name):
    native = getattr(_kernels, name, None)
    assert callable(native), f"fastconv.reference.{name} has no native counterpart"
    assert inspect.signature(native) == inspect.signature(getattr(reference, name))


@pytest.mark.parametrize("kernel", [1, 2, (3, 5), 16, (16, 17), (1, 256), (1, 257), (300, 1)])
def test_argmax_dtype_agrees(kernel):
    assert _kernels.argmax_dtype(kernel) == reference.argmax_dtype(kernel)


# ---------------------------------------------------------------------------
# one workload per kernel, for the GIL and the concurrency tests

_PATTERN = (np.arange(97) * 7919 % 97 - 48).astype(np.float32)  # -48..48, shuffled


def _ramp(*shape):
    """Cheap, deterministic float32 data with ties and negatives (-48..48)."""
    return np.resize(_PATTERN, shape)


def _vec(s):
    """s Mi elements in [-3, 3]: the interesting range of every activation."""
    return _ramp(s, 1 << 20) / 16


def _conv(s, groups=1):
    return _ramp(s, 16, 16, 16) / 48, _ramp(32, 16 // groups, 3, 3) / 48


def _maxpool2d_backward(s):
    x = _ramp(s, 16, 64, 64)
    y, am = _kernels.maxpool2d_forward(x, 3, 1, 1)
    return y, am, x.shape, 3, 1, 1


def _local(s):
    """x (s, 8, 16, 16) and a filter per output position (3x3, padding 1)."""
    return _ramp(s, 8, 16, 16) / 48, _ramp(16, 16, 8, 8, 3, 3) / 48


def _adaptive_maxpool2d_backward(s):
    _, am = _kernels.adaptive_maxpool2d_forward(_ramp(s, 16, 64, 64), (5, 7))
    return _ramp(s, 16, 5, 7), am, (s, 16, 64, 64)


def _batchnorm_backward(s):
    x, w, b = _ramp(s, 64, 32, 32) / 16, _ramp(64) / 48, _ramp(64) / 48
    _, mean, var = _kernels.batchnorm_forward(x, w, b, None, None, 1e-5)
    return _ramp(s, 64, 32, 32)[::-1].copy() / 48, x, w, mean, var, 1e-5, True


# name -> (args: scale -> a fresh argument tuple doing about `scale` units of
# work, the largest scale to try (memory stays under ~250 MB), tolerance of
# the native result against the twin: 0 for bit-exact kernels).
ARGS = {
    "sgemm": (lambda s: (_ramp(64 * s, 256), _ramp(256, 256)), 1024, 1e-5),
    "to_bfloat16": (lambda s: (_vec(s),), 16, 0),
    "conv2d_forward": (lambda s: (*_conv(s), None, 1, 1, True), 2048, 1e-4),
    "conv2d_backward": (lambda s: (*_conv(s), _ramp(s, 32, 16, 16) / 48, 1, 1), 2048, 1e-3),
    "conv2d_maxpool_forward": (lambda s: (*_conv(s), None, 1, 1, True), 2048, 1e-4),
    # depthwise, multiplier 2, dilation 2
    "conv2d_ex_forward": (lambda s: (*_conv(s, groups=16), None, 1, 2, 2, 16, True), 2048, 1e-4),
    "conv2d_ex_backward": (lambda s: (*_conv(s, groups=16), _ramp(s, 32, 16, 16) / 48, 1, 2, 2, 16),
                           2048, 1e-3),
    "maxpool2d_forward": (lambda s: (_ramp(s, 16, 64, 64), 5, 1, 2), 64, 0),
    "maxpool2d_backward": (_maxpool2d_backward, 128, 0),
    "relu_forward": (lambda s: (_vec(s),), 16, 0),
    "relu_backward": (lambda s: (_vec(s)[::-1].copy(), np.maximum(_vec(s), 0)), 16, 0),
    "bias_add": (lambda s: (_ramp(s, 64, 128, 128), _ramp(64)), 32, 0),
    "leaky_relu_forward": (lambda s: (_vec(s), 0.01), 16, 1e-6),
    "leaky_relu_backward": (lambda s: (_vec(s)[::-1].copy(), _vec(s), 0.01), 16, 1e-6),
    "elu_forward": (lambda s: (_vec(s), 1.0), 16, 1e-5),
    "elu_backward": (lambda s: (_vec(s)[::-1].copy(), _vec(s), 1.0), 16, 1e-5),
    "sigmoid_forward": (lambda s: (_vec(s),), 16, 1e-5),
    "sigmoid_backward": (lambda s: (_vec(s)[::-1].copy(), _vec(s) / 7 + 0.5), 16, 1e-5),  # y in (0, 1)
    "tanh_forward": (lambda s: (_vec(s),), 16, 1e-5),
    "tanh_backward": (lambda s: (_vec(s)[::-1].copy(), _vec(s) / 3.5), 16, 1e-5),  # y in (-1, 1)
    "batchnorm_forward": (lambda s: (_ramp(s, 64, 32, 32) / 16, _ramp(64) / 48, _ramp(64) / 48,
                                     None, None, 1e-5), 256, 1e-4),
    "batchnorm_backward": (_batchnorm_backward, 256, 1e-3),
    "avgpool2d_forward": (lambda s: (_ramp(s, 16, 64, 64), 5, 1, 2), 64, 1e-5),
    "avgpool2d_backward": (lambda s: (_ramp(s, 16, 64, 64), (s, 16, 64, 64), 3, 1, 1), 128, 1e-5),
    "locally_connected2d_forward": (lambda s: (*_local(s), None, 1, 1), 256, 1e-4),
    "locally_connected2d_backward": (lambda s: (*_local(s), _ramp(s, 8, 16, 16) / 48, 1, 1), 256, 1e-3),
    "adaptive_avgpool2d_forward": (lambda s: (_ramp(s, 16, 64, 64), (5, 7)), 512, 1e-5),
    "adaptive_avgpool2d_backward": (lambda s: (_ramp(s, 16, 5, 7), (s, 16, 64, 64)), 128, 1e-5),
    "adaptive_maxpool2d_forward": (lambda s: (_ramp(s, 16, 64, 64), (5, 7)), 512, 0),
    "adaptive_maxpool2d_backward": (_adaptive_maxpool2d_backward, 512, 0),
    "add_relu": (lambda s: (_vec(s), _vec(s)[::-1].copy(), True), 16, 0),
}


def _workload(name):
    if name not in ARGS:
        pytest.fail(f"kernel {name!r} has no workload: add one to ARGS in {__file__}")
    return ARGS[name]


# ---------------------------------------------------------------------------
# the GIL is released around the C call

def _timed(call, repeat=2):
    """The fastest of `repeat` calls, in seconds (robust to preemption)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return best


def _stall(call):
    """Run call() in a worker thread while this thread spins in Python.

    Returns (the call's duration, the longest stretch of it during which this
    thread could not run). A kernel that held the GIL would stall this thread
    for the whole call.
    """
    span = []
    ready = threading.Event()

    def worker():
        ready.wait()
        t0 = time.perf_counter()
        try:
            call()
        finally:
            span.append((t0, time.perf_counter()))

    gaps = []
    th = threading.Thread(target=worker)
    th.start()
    ready.set()
    last = time.perf_counter()
    while th.is_alive():
        now = time.perf_counter()
        if now - last > 2e-4:
            gaps.append((last, now))
        last = now
    th.join()
    t0, t1 = span[0]
    longest = max([min(b, t1) - max(a, t0) for a, b in gaps] + [0.0])
    return t1 - t0, longest


@pytest.fixture
def one_thread():
    """Kernels on one thread, so that a core is left for the spinning thread."""
    old = _kernels.get_num_threads()
    _kernels.set_num_threads(1)
    yield
    _kernels.set_num_threads(old)


@pytest.mark.parametrize("name", _kernels.KERNELS)
def test_kernel_releases_the_gil(one_thread, name):
    args, max_scale, _ = _workload(name)
    kernel = getattr(_kernels, name)
    scale, call = 1, functools.partial(kernel, *args(1))
    while _timed(call) < 0.04 and scale < max_scale:  # grow until a call takes >= 40 ms
        scale *= 2
        call = functools.partial(kernel, *args(scale))
    ratios = []
    for _ in range(3):  # the best of 3: a busy machine may preempt this thread
        duration, longest = _stall(call)
        if duration < 0.01:
            pytest.skip(f"{name} is too fast ({duration * 1e3:.1f} ms) to observe the GIL")
        ratios.append(longest / duration)
        if ratios[-1] < 0.5:
            break
    assert min(ratios) < 0.5, (
        f"{name}: the calling thread held the GIL for {min(ratios):.0%} of a "
        f"{duration * 1e3:.0f} ms call (best of {len(ratios)})")


# ---------------------------------------------------------------------------
# concurrent calls are correct

@pytest.fixture
def two_threads():
    old = _kernels.get_num_threads()
    _kernels.set_num_threads(2)
    yield
    _kernels.set_num_threads(old)


def test_maxpool_and_relu_side_by_side(rng, two_threads):
    """Two Python threads, started together, each calling a different kernel
    family on large inputs (above the parallel thresholds) several times."""
    x = rand(rng, 8, 32, 32, 32)
    y_ref, am_ref = reference.maxpool2d_forward(x, 2, 2, 0)
    dy_pool = rand(rng, *y_ref.shape)
    dx_pool_ref = reference.maxpool2d_backward(dy_pool, am_ref, x.shape, 2, 2, 0)
    r = rand(rng, 4, 32, 64, 64)
    dy_relu = rand(rng, *r.shape)
    r_ref = reference.relu_forward(r)
    dr_ref = reference.relu_backward(dy_relu, r_ref)

    start = threading.Barrier(2)
    errors = []

    def pool():
        start.wait()
        for _ in range(6):
            y, am = _kernels.maxpool2d_forward(x, 2, 2, 0)
            dx = _kernels.maxpool2d_backward(dy_pool, am, x.shape, 2, 2, 0)
            if not (np.array_equal(y, y_ref) and np.array_equal(am, am_ref)
                    and np.array_equal(dx, dx_pool_ref)):
                errors.append("maxpool2d")

    def relu():
        start.wait()
        for _ in range(6):
            y = _kernels.relu_forward(r)
            dx = _kernels.relu_backward(dy_relu, y)
            if not (np.array_equal(y, r_ref) and np.array_equal(dx, dr_ref)):
                errors.append("relu")

    threads = [threading.Thread(target=pool), threading.Thread(target=relu)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_all_kernels_from_a_thread_pool(two_threads):
    """Every kernel, three calls each, shuffled, four in flight at once (each
    with a team of two OpenMP threads), against the twins."""
    names = list(_kernels.KERNELS)
    expected = {name: getattr(reference, name)(*_workload(name)[0](1)) for name in names}

    def run(name):
        return name, getattr(_kernels, name)(*ARGS[name][0](1))  # fresh arrays: bias_add is in place

    work = names * 3
    np.random.default_rng(0).shuffle(work)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, work))
    for name, got in results:
        tol = ARGS[name][2]
        want = expected[name]
        got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
        assert len(got) == len(want), name
        for g, e in zip(got, want):
            if e is None:
                assert g is None, name
            elif tol == 0:
                np.testing.assert_array_equal(g, e, err_msg=name)
            else:
                np.testing.assert_allclose(g, e, rtol=tol, atol=tol, err_msg=name)
