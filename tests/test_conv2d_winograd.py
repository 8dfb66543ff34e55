"""The Winograd F(2x2, 3x3) path of conv2d_forward (and of conv2d_backward's
dx, computed as a convolution) against the NumPy twins, on every ISA x {1, 2}
threads: forced on for every 3x3 unit-stride problem with
``set_winograd("always")``, and where ``"auto"`` takes it."""

import numpy as np
import pytest
from conftest import rand
from hypothesis import given, settings
from hypothesis import strategies as st
from test_conv2d import FIXTURE_OK, Conv, assert_close

from fastconv import _kernels, reference


def winograd_magnitude(x, weight, padding):
    """The scale of F(2x2, 3x3)'s rounding error at each output of
    conv(x, weight) (3x3, stride 1): sum over channels c of (sum of |x_c|
    over the 4x4 patches of the tiles the output may be in, a 5x5 window)
    times (sum of |weight[k, c]|). The transforms add and subtract every
    pixel of the patch and every tap of the filter, and rely on exact
    cancellation; so near zero padding the error is not bounded by the
    direct sum's few nonzero terms, as conv2d's tolerance assumes, but by
    these."""
    (ph, pw) = padding
    taps = np.abs(weight.astype(np.float64)).sum(axis=(2, 3))
    window = np.broadcast_to(taps[:, :, None, None], taps.shape + (5, 5))
    return reference.conv2d_forward(np.abs(x).astype(np.float64), window, None, (1, 1),
                                    (ph + 1, pw + 1))


def winograd_dweight_magnitude(x, dy, padding):
    """The same for dW = G^T (sum over tiles of (A dY A^T) * V) G: per filter
    (k, c), the sum over tiles of (sum of |x_c| over the tile's 4x4 patch)
    times (sum of |dy_k| over its 2x2 outputs)."""
    (ph, pw), (n, _, oh, ow) = padding, dy.shape
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    xp = np.zeros(x.shape[:2] + (2 * th + 2, 2 * tw + 2))
    h, w = min(x.shape[2], 2 * th + 2 - ph), min(x.shape[3], 2 * tw + 2 - pw)
    xp[:, :, ph:ph + h, pw:pw + w] = np.abs(x[:, :, :h, :w])
    patches = sum(xp[:, :, i:i + 2 * th:2, j:j + 2 * tw:2] for i in range(4) for j in range(4))
    dyp = np.zeros((n, dy.shape[1], 2 * th, 2 * tw))
    dyp[:, :, :oh, :ow] = np.abs(dy)
    tiles = sum(dyp[:, :, i::2, j::2] for i in range(2) for j in range(2))
    per_filter = np.einsum("nctu,nktu->kc", patches, tiles)
    return np.broadcast_to(per_filter[:, :, None, None], per_filter.shape + (3, 3))


def check_forward(conv, x, weight, bias, relu=False):
    y = _kernels.conv2d_forward(x, weight, bias, conv.stride, conv.padding, relu)
    expected = reference.conv2d_forward(x, weight, bias, conv.stride, conv.padding, relu)
    magnitude = winograd_magnitude(x, weight, conv.padding)
    if bias is not None:
        magnitude += np.abs(bias)[:, None, None]
    assert_close(y, expected, magnitude, conv.c * 9 + 1, "y")
    if relu:  # the fused ReLU is the same arithmetic as a separate pass
        plain = _kernels.conv2d_forward(x, weight, bias, conv.stride, conv.padding)
        np.testing.assert_array_equal(y, _kernels.relu_forward(plain))


def check_dx(conv, x, weight, dy):
    """dx, dW and db against the twin. dx is a convolution of dy with the
    flipped weights transposed, padding 2 - p: Winograd when that is not
    negative."""
    dx, dw, db = _kernels.conv2d_backward(x, weight, dy, conv.stride, conv.padding)
    ex_dx, ex_dw, ex_db = reference.conv2d_backward(x, weight, dy, conv.stride, conv.padding)
    flipped = weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]
    (ph, pw) = conv.padding
    magnitude = winograd_magnitude(dy, flipped, (2 - ph, 2 - pw)) if min(ph, pw) <= 2 else None
    if magnitude is None:  # not Winograd: the direct sum's bound
        magnitude = reference.conv2d_backward(np.abs(x), np.abs(weight), np.abs(dy), conv.stride,
                                              conv.padding)[0]
    assert_close(dx, ex_dx, magnitude, conv.k * 9, "dx")
    # dW by Winograd when dx needs no col2im: dx as a convolution, which
    # conv2d takes for C >= K, and always when that convolution is Winograd
    if conv.c >= conv.k or min(ph, pw) <= 2:
        mag_dw = winograd_dweight_magnitude(x, dy, conv.padding)
    else:
        mag_dw = reference.conv2d_backward(np.abs(x), np.abs(weight), np.abs(dy), conv.stride,
                                           conv.padding)[1]
    assert_close(dw, ex_dw, mag_dw, conv.n * conv.out[0] * conv.out[1], "dweight")
    assert_close(db, ex_db, reference.conv2d_backward(x, weight, np.abs(dy), conv.stride,
                                                      conv.padding)[2],
                 conv.n * conv.out[0] * conv.out[1], "dbias")


@pytest.fixture
def winograd():
    """Winograd on every 3x3 unit-stride problem for the test, then back."""
    previous = _kernels.set_winograd("always")
    yield
    _kernels.set_winograd(previous)


@st.composite
def winograd_convs(draw, max_n=3, max_c=40):
    """3x3 unit-stride problems: odd and even, square and not, images from
    one pixel up, every padding from 0 to 3 on each side, channel counts
    around the micro-kernel's register tile (4 x 24 on AVX2)."""
    n, c, k = draw(st.integers(1, max_n)), draw(st.integers(1, max_c)), draw(st.integers(1, max_c))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    h = draw(st.integers(max(1, 3 - 2 * ph), 19))
    w = draw(st.integers(max(1, 3 - 2 * pw), 19))
    return Conv(n, c, h, w, k, 3, 3, (1, 1), (ph, pw))


@settings(max_examples=30, deadline=None, suppress_health_check=FIXTURE_OK.suppress_health_check)
@given(conv=winograd_convs(), with_bias=st.booleans(), relu=st.booleans(), seed=st.integers(0, 2**16))
def test_forward_matches_reference(isa_threads, winograd, conv, with_bias, relu, seed):
    x, weight, bias, _ = conv.arrays(np.random.default_rng(seed))
    check_forward(conv, x, weight, bias if with_bias else None, relu)


@settings(max_examples=20, deadline=None, suppress_health_check=FIXTURE_OK.suppress_health_check)
@given(conv=winograd_convs(), seed=st.integers(0, 2**16))
def test_backward_matches_reference(isa_threads, winograd, conv, seed):
    x, weight, _, dy = conv.arrays(np.random.default_rng(seed))
    check_dx(conv, x, weight, dy)


# Blocks of tile rows that split an image, hold several images, or end in
# a partial sliver; the layers of cifar_small (batch cut down).
SHAPES = [Conv(1, 16, 64, 48, 16, 3, 3, (1, 1), (1, 1)),
          Conv(5, 32, 16, 16, 64, 3, 3, (1, 1), (1, 1)),
          Conv(7, 64, 8, 8, 128, 3, 3, (1, 1), (1, 1)),
          Conv(3, 128, 8, 8, 64, 3, 3, (1, 1), (1, 1)),
          Conv(2, 24, 33, 17, 20, 3, 3, (1, 1), (0, 2))]


@pytest.mark.parametrize("conv", SHAPES, ids=str)
def test_larger_problems_match_reference(isa_threads, winograd, rng, conv):
    x, weight, bias, dy = conv.arrays(rng)
    check_forward(conv, x, weight, bias, relu=True)
    check_dx(conv, x, weight, dy)


@pytest.mark.parametrize("conv", SHAPES[1:3], ids=str)
def test_images_do_not_depend_on_the_batch(isa_threads, winograd, rng, conv):
    """Each image's outputs are the same bits alone as inside a batch, and
    run to run: blocks and threads change which tiles go together, never
    the arithmetic of one."""
    x, weight, bias, _ = conv.arrays(rng)
    y = _kernels.conv2d_forward(x, weight, bias, 1, 1)
    np.testing.assert_array_equal(_kernels.conv2d_forward(x, weight, bias, 1, 1), y)
    for i in (0, conv.n - 1):
        np.testing.assert_array_equal(_kernels.conv2d_forward(x[i:i + 1], weight, bias, 1, 1), y[i:i + 1])


def test_auto_takes_winograd_where_it_pays(rng):
    """'auto' runs Winograd on a cifar_small-sized layer (its bits are the
    forced path's, not im2col's) and im2col on a 3-channel input."""
    big = Conv(4, 32, 16, 16, 64, 3, 3, (1, 1), (1, 1))
    few = Conv(4, 3, 16, 16, 64, 3, 3, (1, 1), (1, 1))
    previous = _kernels.set_winograd("auto")
    try:
        results = {}
        for conv in (big, few):
            x, weight, bias, _ = conv.arrays(rng)
            for mode in ("auto", "always", "never"):
                _kernels.set_winograd(mode)
                results[conv, mode] = _kernels.conv2d_forward(x, weight, bias, 1, 1)
    finally:
        _kernels.set_winograd(previous)
    np.testing.assert_array_equal(results[big, "auto"], results[big, "always"])
    assert not np.array_equal(results[big, "auto"], results[big, "never"])
    np.testing.assert_array_equal(results[few, "auto"], results[few, "never"])
    assert not np.array_equal(results[few, "auto"], results[few, "always"])


def test_non_finite_inputs_propagate(isa_threads, winograd, rng):
    """An inf or NaN pixel gives NaN or inf in the outputs it reaches, as in
    the direct sum (the transforms subtract it from itself: NaN)."""
    x = rand(rng, 2, 16, 6, 6)
    x[1, 3, 2, 4] = np.inf
    weight = rand(rng, 16, 16, 3, 3)
    y = _kernels.conv2d_forward(x, weight, None, 1, 1)
    assert np.all(np.isfinite(y[0]))
    assert not np.all(np.isfinite(y[1, :, 1:4, 3:6]))


def test_set_winograd_validates_and_returns_the_previous_mode():
    previous = _kernels.set_winograd("never")
    try:
        assert _kernels.set_winograd("always") == "never"
        with pytest.raises(ValueError, match="`mode` must be one of"):
            _kernels.set_winograd("sometimes")
    finally:
        _kernels.set_winograd(previous)
    assert previous == "auto"
