"""avgpool2d_forward / avgpool2d_backward: native kernels against their NumPy
twins (every ISA x {1, 2} threads) and PyTorch (skipped without torch),
padding counted in the divisor, the ceil_mode, count_include_pad and
divisor_override options, thread-count independence, the AvgPool2d layer's
gradients by central differences, and input validation."""

import numpy as np
import pytest
from conftest import rand
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastconv as fc
from fastconv import _kernels, reference
from fastconv.nn.pooling import AvgPool2d

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

PAR_MIN = 16384  # FC_POOL_PAR_MIN in csrc/pool/avgpool2d.c


def bits(a):
    return np.ascontiguousarray(a).view(np.uint32)


def check(x, kernel, stride, padding, dy=None, **options):
    """Native against reference, forward and backward. Sums are in another
    order (NumPy's pairwise vs the kernel's row-major), hence a tolerance."""
    y = _kernels.avgpool2d_forward(x, kernel, stride, padding, **options)
    np.testing.assert_allclose(y, reference.avgpool2d_forward(x, kernel, stride, padding, **options),
                               rtol=1e-5, atol=1e-6, equal_nan=True)
    dy = rand(np.random.default_rng(0), *y.shape) if dy is None else dy
    dx = _kernels.avgpool2d_backward(dy, x.shape, kernel, stride, padding, **options)
    np.testing.assert_allclose(dx, reference.avgpool2d_backward(dy, x.shape, kernel, stride, padding, **options),
                               rtol=1e-5, atol=1e-6, equal_nan=True)
    assert y.dtype == dx.dtype == np.float32 and dx.shape == x.shape
    return y, dx


CASES = [  # (x shape, kernel, stride, padding)
    ((1, 1, 4, 4), 2, 2, 0),
    ((2, 3, 7, 6), 3, 2, 1),
    ((2, 2, 5, 9), (3, 2), (1, 2), (1, 1)),
    ((1, 2, 6, 6), 3, 1, 0),                 # overlapping windows
    ((1, 1, 3, 3), 3, 3, 1),                 # padding on every side of one window
    ((3, 1, 1, 7), (1, 3), 1, (0, 1)),
    ((0, 2, 4, 4), 2, 2, 0),                 # empty batch
    ((8, 8, 16, 16), 2, 2, 0),               # 16384: the parallel threshold
    ((8, 8, 16, 15), 2, 2, 0),               # just below
    ((3, 5, 33, 35), 3, 2, 1),               # ragged split of planes over threads
]


@pytest.mark.parametrize("shape,kernel,stride,padding", CASES, ids=str)
def test_matches_reference(isa_threads, rng, shape, kernel, stride, padding):
    check(rand(rng, *shape), kernel, stride, padding)


@settings(FIXTURE_OK, max_examples=40)
@given(n=st.integers(0, 2), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3),
       ph=st.integers(0, 2), pw=st.integers(0, 2), seed=st.integers(0, 2**31))
def test_matches_reference_any_shape(isa_threads, n, c, h, w, kh, kw, sh, sw, ph, pw, seed):
    if 2 * ph > kh or 2 * pw > kw or h + 2 * ph < kh or w + 2 * pw < kw:
        return
    check(rand(np.random.default_rng(seed), n, c, h, w), (kh, kw), (sh, sw), (ph, pw))


def test_padding_counts_in_the_divisor():
    x = np.ones((1, 1, 2, 2), np.float32)
    y = _kernels.avgpool2d_forward(x, 2, 1, 1)  # windows hold 1, 2 or 4 real ones of 4
    np.testing.assert_array_equal(y[0, 0], [[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]])
    dx = _kernels.avgpool2d_backward(np.ones_like(y), x.shape, 2, 1, 1)
    np.testing.assert_array_equal(dx, np.ones_like(x))  # each input is in 4 windows, 1/4 each


def test_special_values_stay_in_their_windows():
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 0, 0], x[0, 0, 3, 3] = np.nan, np.inf
    y = _kernels.avgpool2d_forward(x, 2, 2, 0)
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 1, 1] == np.inf and y[0, 0, 0, 1] == y[0, 0, 1, 0] == 0


def test_thread_count_agnostic(rng):
    x = rand(rng, 4, 6, 37, 29)
    old = _kernels.get_num_threads()
    try:
        runs = []
        for t in (1, 2):
            _kernels.set_num_threads(t)
            runs.append(check(x, 3, 2, 1))
    finally:
        _kernels.set_num_threads(old)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(bits(a), bits(b))


# ---------------------------------------------------------------------------
# ceil_mode, count_include_pad, divisor_override

def torch_size(size, k, s, p, ceil_mode):
    out = (size + 2 * p - k + (s - 1 if ceil_mode else 0)) // s + 1
    return out - 1 if ceil_mode and (out - 1) * s >= size + p else out


@st.composite
def option_cases(draw, n_min=0):
    """(x shape, kernel, stride, padding, options): every combination of the options, valid geometry."""
    kh, kw, sh, sw = (draw(st.integers(1, 4)) for _ in range(4))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h, w = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    options = dict(ceil_mode=draw(st.booleans()), count_include_pad=draw(st.booleans()),
                   divisor_override=draw(st.one_of(st.none(), st.integers(1, 20))))
    assume(min(torch_size(h, kh, sh, ph, options["ceil_mode"]), torch_size(w, kw, sw, pw, options["ceil_mode"])) >= 1)
    shape = (draw(st.integers(n_min, 2)), draw(st.integers(1, 3)), h, w)
    return shape, (kh, kw), (sh, sw), (ph, pw), options


@FIXTURE_OK
@given(case=option_cases(), seed=st.integers(0, 2**31))
def test_options_match_reference(isa_threads, case, seed):
    shape, kernel, stride, padding, options = case
    check(rand(np.random.default_rng(seed), *shape), kernel, stride, padding, **options)


@settings(max_examples=80, deadline=None)
@given(case=option_cases(n_min=1), seed=st.integers(0, 2**31))
def test_options_match_torch(case, seed):
    torch = pytest.importorskip("torch")
    shape, kernel, stride, padding, options = case
    rng = np.random.default_rng(seed)
    x = rand(rng, *shape)
    pool = AvgPool2d(kernel, stride, padding, **options)
    t = torch.from_numpy(x.copy()).requires_grad_(True)
    y_t = torch.nn.functional.avg_pool2d(t, kernel, stride, padding, **options)
    dy = rand(rng, *y_t.shape)
    y_t.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(pool(x), y_t.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(pool.backward(dy), t.grad.numpy(), rtol=1e-6, atol=1e-7)


OPTIONS = [dict(ceil_mode=True), dict(count_include_pad=False), dict(ceil_mode=True, count_include_pad=False),
           dict(divisor_override=3), dict(ceil_mode=True, divisor_override=5),
           dict(ceil_mode=True, count_include_pad=False, divisor_override=2)]


OPTION_SHAPES = [  # (x shape, kernel, stride, padding)
    ((1, 1, 5, 5), 2, 2, 1),             # ceil_mode: the last window would start in the bottom padding
    ((1, 2, 7, 9), 3, 2, 1),             # ceil_mode: last windows run past the padding
    ((2, 3, 6, 11), (2, 3), (2, 3), (1, 1)),
    ((1, 1, 3, 3), 4, 2, 0),             # only ceil_mode pools this: a window larger than the input
    ((3, 5, 33, 35), 3, 2, 1),           # parallel, ragged
]


def _pools(shape, kernel, stride, padding, ceil_mode=False, **_):
    return all(torch_size(n, k, s, p, ceil_mode) >= 1 for n, k, s, p in
               zip(shape[2:], np.broadcast_to(kernel, 2), np.broadcast_to(stride, 2), np.broadcast_to(padding, 2)))


@pytest.mark.parametrize("shape,kernel,stride,padding,options",
                         [g + (o,) for g in OPTION_SHAPES for o in OPTIONS if _pools(*g, **o)], ids=str)
def test_option_shapes(isa_threads, rng, shape, kernel, stride, padding, options):
    check(rand(rng, *shape), kernel, stride, padding, **options)


def test_ceil_mode_divisor_stops_at_the_padded_edge():
    # 4 ones, windows of 3 at stride 2, padding 1: [-1, 2), [1, 4) and, by ceil_mode, [3, 6),
    # which the padded extent [-1, 5) cuts to [3, 5): 1 real element of a counted size 2
    x = np.ones((1, 1, 1, 4), np.float32)
    geometry = ((1, 3), (1, 2), (0, 1))
    for f in (_kernels.avgpool2d_forward, reference.avgpool2d_forward):
        np.testing.assert_array_equal(f(x, *geometry, ceil_mode=True)[0, 0, 0], np.float32([2 / 3, 1, 0.5]))
        np.testing.assert_array_equal(f(x, *geometry, ceil_mode=True, count_include_pad=False)[0, 0, 0], [1, 1, 1])
        np.testing.assert_array_equal(f(x, *geometry, ceil_mode=True, divisor_override=4)[0, 0, 0], [0.5, 0.75, 0.25])
        # windows of 2 over 3 ones: the third would start in the right padding, so there is none
        np.testing.assert_array_equal(f(x[..., :3], (1, 2), (1, 2), (0, 1), ceil_mode=True)[0, 0, 0], [0.5, 1])


def test_default_options_are_the_plain_call_bit_for_bit(isa_threads, rng):
    x = rand(rng, 2, 3, 9, 8)
    for kernel, stride, padding in [(2, 2, 0), (3, 2, 1)]:
        y = _kernels.avgpool2d_forward(x, kernel, stride, padding)
        y2 = _kernels.avgpool2d_forward(x, kernel, stride, padding, False, True, None)
        dy = rand(rng, *y.shape)
        np.testing.assert_array_equal(bits(y2), bits(y))
        np.testing.assert_array_equal(bits(_kernels.avgpool2d_backward(dy, x.shape, kernel, stride, padding, False,
                                                                       True, None)),
                                      bits(_kernels.avgpool2d_backward(dy, x.shape, kernel, stride, padding)))


# ---------------------------------------------------------------------------
# layer

@pytest.mark.parametrize("kernel,stride,padding,options", [
    (2, None, 0, {}), (3, 2, 1, {}), ((3, 2), (1, 2), (1, 1), {}), (3, 1, 0, {}),
    (3, 2, 1, dict(ceil_mode=True)), (2, 2, 1, dict(ceil_mode=True, count_include_pad=False)),
    ((3, 2), (2, 3), (1, 1), dict(count_include_pad=False)), (2, 2, 0, dict(divisor_override=3, ceil_mode=True)),
    (4, 3, 2, dict(ceil_mode=True, divisor_override=7))], ids=str)
def test_gradcheck(rng, kernel, stride, padding, options):
    result = fc.gradcheck(AvgPool2d(kernel, stride, padding, **options), rand(rng, 2, 2, 6, 5))
    assert result.passed, str(result)


def test_layer_unbatched_and_defaults(rng):
    pool = AvgPool2d(2)
    assert pool.stride == (2, 2) and pool.padding == (0, 0)
    x = rand(rng, 3, 6, 4)
    y = pool(x)
    assert y.shape == (3, 3, 2)
    np.testing.assert_allclose(y, _kernels.avgpool2d_forward(x[None], 2, 2, 0)[0])
    assert pool.backward(np.ones_like(y)).shape == x.shape
    assert fc.gradcheck(pool, x).passed


# ---------------------------------------------------------------------------
# against PyTorch

@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3),
       ph=st.integers(0, 2), pw=st.integers(0, 2), seed=st.integers(0, 2**31))
def test_matches_torch(n, c, h, w, kh, kw, sh, sw, ph, pw, seed):
    torch = pytest.importorskip("torch")
    if 2 * ph > kh or 2 * pw > kw or h + 2 * ph < kh or w + 2 * pw < kw:
        return
    rng = np.random.default_rng(seed)
    x = rand(rng, n, c, h, w)
    pool = AvgPool2d((kh, kw), (sh, sw), (ph, pw))
    theirs = torch.nn.AvgPool2d((kh, kw), (sh, sw), (ph, pw))
    assert repr(pool) == repr(theirs)
    t = torch.from_numpy(x.copy()).requires_grad_(True)
    y_t = theirs(t)
    dy = rand(rng, *y_t.shape)
    y_t.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(pool(x), y_t.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(pool.backward(dy), t.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_matches_torch_large_padded(torch, rng):
    x = rand(rng, 4, 8, 32, 32)
    y_t = torch.nn.functional.avg_pool2d(torch.from_numpy(x), 3, 2, 1)  # count_include_pad=True
    np.testing.assert_allclose(_kernels.avgpool2d_forward(x, 3, 2, 1), y_t.numpy(), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------
# bad input

X = np.zeros((2, 3, 4, 4), np.float32)


@pytest.mark.parametrize("args,exc,match", [
    ((X[0], 2, 2, 0), ValueError, r"avgpool2d_forward: `x` must have rank 4; got float32 array with shape \(3, 4, 4\)"),
    ((X.astype(np.float64), 2, 2, 0), TypeError, r"avgpool2d_forward: `x` must be a float32 array"),
    ((X, 2, 2, 2), ValueError, r"avgpool2d_forward: `padding` must be at most half the kernel size \(2, 2\); got \(2, 2\)"),
    ((X, 5, 1, 0), ValueError, r"avgpool2d_forward: kernel height 5 is larger than the padded input height 4"),
    ((X, 0, 1, 0), ValueError, r"avgpool2d_forward: `kernel` must be >= 1; got \(0, 0\)"),
    ((X, 2, (1, 0), 0), ValueError, r"`stride` must be >= 1; got \(1, 0\)"),
    ((X, 2.0, 1, 0), TypeError, r"`kernel` must be an int or an \(h, w\) pair of ints; got 2.0"),
])
def test_forward_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        _kernels.avgpool2d_forward(*args)


@pytest.mark.parametrize("options,exc,match", [
    (dict(divisor_override=0), ValueError, r"avgpool2d_forward: `divisor_override` must be None or in \[1, 2\*\*48\]; got 0"),
    (dict(divisor_override=-1), ValueError, r"`divisor_override` must be None or in \[1, 2\*\*48\]; got -1"),
    (dict(divisor_override=2**49), ValueError, r"`divisor_override` must be None or in \[1, 2\*\*48\]"),
    (dict(divisor_override=1.5), TypeError, r"avgpool2d_forward: `divisor_override` must be None or an int; got 1.5"),
    (dict(divisor_override=False), TypeError, r"`divisor_override` must be None or an int; got False"),
    (dict(ceil_mode=1), TypeError, r"avgpool2d_forward: `ceil_mode` must be a bool; got 1"),
    (dict(count_include_pad="yes"), TypeError, r"avgpool2d_forward: `count_include_pad` must be a bool"),
])
def test_forward_bad_options(options, exc, match):
    with pytest.raises(exc, match=match):
        _kernels.avgpool2d_forward(X, 2, 2, 0, **options)
    with pytest.raises(exc, match=match.replace("forward", "backward")):
        _kernels.avgpool2d_backward(np.zeros((2, 3, 2, 2), np.float32), X.shape, 2, 2, 0, **options)


@pytest.mark.parametrize("args,exc,match", [
    ((np.zeros((2, 3, 2, 3), np.float32), X.shape, 2, 2, 0), ValueError,
     r"avgpool2d_backward: `dy` must have shape \(2, 3, 2, 2\); got \(2, 3, 2, 3\)"),
    ((np.zeros((2, 3, 2, 2), np.float32), (2, 3, 4), 2, 2, 0), ValueError,
     r"avgpool2d_backward: `x_shape` must be 4 non-negative ints \(N, C, H, W\); got \(2, 3, 4\)"),
    ((np.zeros((2, 3, 2, 2), np.float32), "abcd", 2, 2, 0), TypeError, r"`x_shape` must be a tuple of 4 ints"),
    ((np.zeros((2, 3, 2, 2), np.float64), X.shape, 2, 2, 0), TypeError, r"avgpool2d_backward: `dy` must be a float32 array"),
])
def test_backward_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        _kernels.avgpool2d_backward(*args)


@pytest.mark.parametrize("make,exc,match", [
    (lambda: AvgPool2d(2, padding=2), ValueError, r"AvgPool2d: `padding` must be at most half of `kernel_size` \(2, 2\); got \(2, 2\)"),
    (lambda: AvgPool2d(0), ValueError, r"AvgPool2d: `kernel_size` must be >= 1; got \(0, 0\)"),
    (lambda: AvgPool2d(2, stride=1.5), TypeError, r"AvgPool2d: `stride` must be an int or a pair of ints; got 1.5"),
    (lambda: AvgPool2d(3)(np.zeros((1, 1, 2, 2), np.float32)), ValueError,
     r"AvgPool2d: kernel size \(3, 3\) is larger than the padded input \(2, 2\)"),
    (lambda: AvgPool2d(2)(np.zeros((2, 2), np.float32)), ValueError, r"AvgPool2d: `x` must have rank 3 or 4"),
    (lambda: AvgPool2d(2, divisor_override=0), ValueError, r"AvgPool2d: `divisor_override` must be None or >= 1; got 0"),
    (lambda: AvgPool2d(2, divisor_override=-3), ValueError, r"`divisor_override` must be None or >= 1; got -3"),
    (lambda: AvgPool2d(2, divisor_override=2.0), TypeError, r"AvgPool2d: `divisor_override` must be None or an int; got 2.0"),
    (lambda: AvgPool2d(2, divisor_override=True), TypeError, r"`divisor_override` must be None or an int; got True"),
    (lambda: AvgPool2d(2, ceil_mode="no"), TypeError, r"AvgPool2d: `ceil_mode` must be a bool; got 'no'"),
    (lambda: AvgPool2d(2, count_include_pad=0), TypeError, r"AvgPool2d: `count_include_pad` must be a bool; got 0"),
    (lambda: AvgPool2d(5, stride=2, ceil_mode=True)(np.zeros((1, 1, 3, 3), np.float32)), ValueError,
     r"AvgPool2d: kernel size \(5, 5\) is larger than the padded input \(3, 3\) even with ceil_mode's stride - 1 = 1"),
])
def test_layer_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_layer_backward_dy_shape_checked(rng):
    pool = AvgPool2d(2)
    pool(rand(rng, 1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"AvgPool2d.backward: `dy` must have the forward output's shape \(1, 2, 2, 2\)"):
        pool.backward(rand(rng, 1, 2, 2, 3))
