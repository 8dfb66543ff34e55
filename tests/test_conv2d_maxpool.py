"""conv2d_maxpool_forward, the 2x2 stride-2 max-pool of a convolution in one
kernel (fused into Winograd's output transform), against the unfused pair
and the NumPy twin on every ISA x {1, 2} threads; and Sequential's Conv2d,
ReLU, MaxPool2d(2) chain, which runs on it."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_conv2d import FIXTURE_OK
from conftest import conv_algorithm
from test_conv2d_winograd import MODES, NONFINITE_KINDS, NONFINITE_SHAPES, nonfinite_arrays, nonfinite_expected

import fastconv as fc
from fastconv import _kernels, reference


@pytest.fixture(params=["winograd", "no-winograd"])
def algorithm(request):
    with conv_algorithm(request.param):
        yield request.param


def exact(rng, *shape):
    """Quarters in [-1/2, 1/2]: every sum of the convolution, by any
    algorithm, is exact in float32, so results and ties match bit for bit."""
    return (rng.integers(-2, 3, size=shape) / 4).astype(np.float32)


@st.composite
def problems(draw):
    """3x3 unit stride (Winograd's) or any stride and kernel (im2col's), odd
    and even outputs of at least 2x2, batch 1 up."""
    n, c, k = draw(st.integers(1, 3)), draw(st.integers(1, 20)), draw(st.integers(1, 20))
    kh, kw = draw(st.sampled_from([(3, 3), (3, 3), (1, 1), (5, 3)]))
    stride = draw(st.sampled_from([1, 1, 2]))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(kh - 2 * ph + stride, 13))
    w = draw(st.integers(kw - 2 * pw + stride, 13))
    return (n, c, h, w), (k, c, kh, kw), stride, (ph, pw)


@settings(max_examples=25, deadline=None, suppress_health_check=FIXTURE_OK.suppress_health_check)
@given(problem=problems(), with_bias=st.booleans(), relu=st.booleans(), seed=st.integers(0, 2**16))
def test_matches_the_unfused_pair_and_the_twin(isa_threads, algorithm, problem, with_bias, relu, seed):
    x_shape, w_shape, stride, padding = problem
    rng = np.random.default_rng(seed)
    x, weight = exact(rng, *x_shape), exact(rng, *w_shape)
    bias = exact(rng, w_shape[0]) if with_bias else None
    y, argmax = _kernels.conv2d_maxpool_forward(x, weight, bias, stride, padding, relu)
    conv = _kernels.conv2d_forward(x, weight, bias, stride, padding, relu)
    pooled, pooled_argmax = _kernels.maxpool2d_forward(conv, 2, 2, 0)
    np.testing.assert_array_equal(y, pooled)
    np.testing.assert_array_equal(argmax, pooled_argmax)
    twin_y, twin_argmax = reference.conv2d_maxpool_forward(x, weight, bias, stride, padding, relu)
    np.testing.assert_array_equal(y, twin_y)
    np.testing.assert_array_equal(argmax, twin_argmax)
    assert argmax.dtype == np.uint8


def test_larger_layers_match_the_unfused_pair(isa_threads, algorithm, rng):
    """cifar_small-like layers (several blocks per thread, images split
    across blocks) with random weights: the same bits as conv then pool."""
    for x_shape, k in [((6, 32, 16, 16), 64), ((17, 64, 8, 8), 128), ((2, 16, 30, 18), 24)]:
        x = rng.standard_normal(x_shape).astype(np.float32)
        weight = rng.standard_normal((k, x_shape[1], 3, 3)).astype(np.float32)
        bias = rng.standard_normal(k).astype(np.float32)
        y, argmax = _kernels.conv2d_maxpool_forward(x, weight, bias, 1, 1, True)
        pooled, pooled_argmax = _kernels.maxpool2d_forward(
            _kernels.conv2d_forward(x, weight, bias, 1, 1, True), 2, 2, 0)
        np.testing.assert_array_equal(y, pooled)
        np.testing.assert_array_equal(argmax, pooled_argmax)


def test_nan_and_ties_follow_maxpool_rules(isa_threads, algorithm, rng):
    """Zero weights make every window a tie (first tap wins); a NaN pixel
    makes NaN windows (the last NaN tap wins), as maxpool2d_forward."""
    x = exact(rng, 2, 16, 8, 8)
    weight = np.zeros((16, 16, 3, 3), np.float32)
    y, argmax = _kernels.conv2d_maxpool_forward(x, weight, None, 1, 1)
    assert not y.any() and not argmax.any()
    x[1, 0, 3, 3] = np.nan
    weight = exact(rng, 16, 16, 3, 3)
    y, argmax = _kernels.conv2d_maxpool_forward(x, weight, None, 1, 1, True)
    pooled, pooled_argmax = _kernels.maxpool2d_forward(
        _kernels.conv2d_forward(x, weight, None, 1, 1, True), 2, 2, 0)
    assert np.isnan(y[1]).any() and not np.isnan(y[0]).any()
    np.testing.assert_array_equal(y, pooled)
    np.testing.assert_array_equal(argmax, pooled_argmax)


@pytest.mark.parametrize("kind", NONFINITE_KINDS)
@pytest.mark.parametrize("where", ["x", "weight"])
@pytest.mark.parametrize("name", ["winograd-auto", "winograd-odd", "direct-k16"])
def test_non_finite_and_huge_inputs_pool_the_direct_sums_pattern(isa_threads, name, where, kind):
    """The pool of the direct sum's NaN and infinities (see
    test_conv2d_winograd's test of conv2d_forward) in every algorithm mode,
    with the bits of the unfused pair, on the 3x3 unit-stride shapes (the
    others are always conv, then pool)."""
    conv = NONFINITE_SHAPES[name]
    x, weight, _ = nonfinite_arrays(conv, where, kind)
    e = nonfinite_expected(name, where, kind)["y"]
    direct = np.where(e.posinf, np.inf, np.where(e.neginf, -np.inf, e.exact))  # NaN kept
    expected = reference.maxpool2d_forward(direct, 2, 2, 0)[0]
    for mode in MODES:
        with conv_algorithm(mode):
            y, argmax = _kernels.conv2d_maxpool_forward(x, weight, None, conv.stride, conv.padding)
            pooled, pooled_argmax = _kernels.maxpool2d_forward(
                _kernels.conv2d_forward(x, weight, None, conv.stride, conv.padding), 2, 2, 0)
        np.testing.assert_array_equal(y, pooled, err_msg=mode)
        np.testing.assert_array_equal(argmax, pooled_argmax, err_msg=mode)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(expected), err_msg=mode)
        np.testing.assert_array_equal(np.where(np.isinf(y), np.sign(y), 0),
                                      np.where(np.isinf(expected), np.sign(expected), 0),
                                      err_msg=mode)


@pytest.mark.parametrize("kwargs, error, match, impls", [
    ({"x": np.ones((1, 1, 4, 1), np.float32)}, ValueError, r"output of \(2, 1\); the 2x2 pool needs at least \(2, 2\)",
     (_kernels, reference)),
    ({"relu": 1}, TypeError, "`relu` must be a bool", (_kernels, reference)),
    ({"bias": np.ones(3, np.float32)}, ValueError, "`bias`", (_kernels,)),
])
def test_validation(kwargs, error, match, impls):
    call = {"x": np.ones((1, 1, 4, 4), np.float32), "weight": np.ones((2, 1, 3, 1), np.float32),
            "bias": None, "stride": 1, "padding": 0}
    call.update(kwargs)
    for impl in impls:
        with pytest.raises(error, match=match):
            impl.conv2d_maxpool_forward(**call)


def _chain(c, k, kernel=3, stride=1, padding=1, pool=2):
    fc.manual_seed(3)
    return fc.Sequential(fc.Conv2d(c, k, kernel, stride=stride, padding=padding), fc.ReLU(),
                         fc.MaxPool2d(pool), fc.Flatten())


def _layer_by_layer(model, x, dy):
    """Forward and backward of each layer on its own: no fusion."""
    for m in model:
        x = m(x)
    out = x
    for m in reversed(list(model)):
        dy = m.backward(dy)
    return out, dy


@pytest.mark.parametrize("shape, k, kernel, stride", [
    ((8, 32, 16, 16), 64, 3, 1),   # Winograd with the pool in its output transform
    ((4, 3, 11, 9), 8, 3, 1),      # im2col, odd output: the last row and column are dropped
    ((2, 4, 12, 12), 6, 3, 2),     # strided
    ((5, 16, 9), 32, 3, 1),        # unbatched input
])
def test_sequential_runs_the_chain_fused_with_the_same_bits(isa_threads, rng, shape, k, kernel, stride):
    x = rng.standard_normal(shape).astype(np.float32)
    fused, plain = _chain(shape[-3], k, kernel, stride), _chain(shape[-3], k, kernel, stride)
    y = fused(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = fused.backward(dy)
    y_plain, dx_plain = _layer_by_layer(plain, x, dy)
    np.testing.assert_array_equal(y, y_plain)
    np.testing.assert_array_equal(dx, dx_plain)
    for p, q in zip(fused.parameters(), plain.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)
    assert fused[1]._y is None  # the full-size activations were not kept


def test_sequential_does_not_fuse_other_pools_or_backends(rng):
    """A 3x3 pool, and the check backend (which compares each kernel with its
    twin, argmax exactly), run the layers one by one."""
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    model = _chain(3, 4, pool=3)
    model(x)
    assert model[1]._y is not None
    model = _chain(3, 4)
    fc.set_backend("check")
    try:
        model(x)
    finally:
        fc.set_backend("native")
    assert model[1]._y is not None
    model(x)
    assert model[1]._y is None
