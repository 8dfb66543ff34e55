"""The Winograd F(2x2, 3x3) path of conv2d_forward (and of conv2d_backward's
dx, computed as a convolution) against the NumPy twins, on every ISA x {1, 2}
threads: forced on for every 3x3 unit-stride problem with
``set_conv_algorithm("winograd")``, and where ``"auto"`` takes it. Also NaN,
infinities and values near FLT_MAX, on every convolution algorithm: they give
the direct sum's NaN and infinities."""

import functools
from typing import NamedTuple

import numpy as np
import pytest
from conftest import ISAS, assert_bits_equal, conv_algorithm, on_every_isa
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


def flipped(weight):
    """The weights of dx's convolution: transposed, flipped in both axes."""
    return weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]


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
    (ph, pw) = conv.padding
    magnitude = winograd_magnitude(dy, flipped(weight), (2 - ph, 2 - pw)) if min(ph, pw) <= 2 else None
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
    with conv_algorithm("winograd"):
        yield


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


# Output widths 1 .. 33, tile rows of 1 .. 17 tiles: every partial vector of
# the transforms at 8 and at 16 tiles a vector (the masked stores of
# AVX-512's), the layouts of several whole tile rows a vector (8-wide outputs:
# 2 rows at 8 lanes, 4 at 16; 16-wide: 2 at 16), with and without a last odd
# row; batch 1 and 2, odd and even heights.
def _height(ow):
    return {8: 8, 16: 16, 9: 8, 17: 16}.get(ow, (7, 3, 9, 1, 17, 5)[ow % 6])


WIDTHS = [Conv(1 + ow % 2, 5, _height(ow), ow, 6, 3, 3, (1, 1), (1, 1)) for ow in range(1, 34)]
WIDTHS += [Conv(1, 4, 7, 8, 3, 3, 3, (1, 1), (1, 1)), Conv(1, 4, 9, 16, 3, 3, 3, (1, 1), (1, 1)),
           Conv(2, 3, 12, 8, 5, 3, 3, (1, 1), (1, 1)), Conv(1, 3, 6, 18, 4, 3, 3, (1, 1), (0, 0))]


def exact(rng, *shape):
    """Quarters in [-1/2, 1/2]: every sum of these small problems is exact in
    float32, by any algorithm, so pooled maxima and ties match bit for bit."""
    return (rng.integers(-2, 3, size=shape) / 4).astype(np.float32)


@pytest.mark.parametrize("conv", WIDTHS, ids=str)
def test_every_width_matches_reference(isa_threads, winograd, rng, conv):
    x, weight, bias, dy = conv.arrays(rng)
    check_forward(conv, x, weight, bias, relu=True)
    check_dx(conv, x, weight, dy)
    if min(conv.out) < 2:  # no 2x2 window to pool
        return
    xq, wq, bq = exact(rng, *x.shape), exact(rng, *weight.shape), exact(rng, conv.k)
    pooled, argmax = _kernels.conv2d_maxpool_forward(xq, wq, bq, conv.stride, conv.padding)
    twin_pooled, twin_argmax = reference.conv2d_maxpool_forward(xq, wq, bq, conv.stride, conv.padding)
    np.testing.assert_array_equal(pooled, twin_pooled)
    np.testing.assert_array_equal(argmax, twin_argmax)


SIMD_ISAS = [isa for isa in ISAS if isa != "generic"]


@pytest.mark.skipif(len(SIMD_ISAS) < 2, reason=f"needs AVX2 and AVX-512; this CPU and build have {ISAS}")
@pytest.mark.parametrize("conv", WIDTHS, ids=str)
def test_transforms_give_the_same_bits_at_every_vector_width(winograd, rng, conv):
    """The transforms add and subtract lane by lane (kernels/ref/winograd_impl.h),
    so 8 and 16 tiles a vector give the same bits; the AVX2 and AVX-512 GEMM
    micro-kernels between them both sum each element of M over the channels in
    order with FMAs, so the whole forward, conv + pool and dx agree bit for bit.
    dW too where its GEMM's sum over the tiles is one K block of either
    micro-kernel (at most 160 tiles)."""
    x, weight, bias, dy = conv.arrays(rng)
    x[0, 0, 0, 0] = -0.0  # a signed zero through the transforms and the ReLU
    tiles = conv.n * -(-conv.out[0] // 2) * -(-conv.out[1] // 2)

    def run():
        y = _kernels.conv2d_forward(x, weight, bias, conv.stride, conv.padding, True)
        pooled = (_kernels.conv2d_maxpool_forward(x, weight, bias, conv.stride, conv.padding)
                  if min(conv.out) >= 2 else ())
        dx, dw, _ = _kernels.conv2d_backward(x, weight, dy, conv.stride, conv.padding)
        return (y, *pooled, dx) + ((dw,) if tiles <= 160 else ())

    results = on_every_isa(run)
    for isa in SIMD_ISAS[1:]:
        for got, expected in zip(results[isa], results[SIMD_ISAS[0]]):
            if got.dtype == np.float32:
                assert_bits_equal(got, expected)
            else:  # the argmax
                np.testing.assert_array_equal(got, expected)


def test_auto_takes_winograd_where_it_pays(rng):
    """'auto' runs Winograd on a cifar_small-sized layer (its bits are the
    forced path's, not im2col's) and im2col on a 3-channel input."""
    big = Conv(4, 32, 16, 16, 64, 3, 3, (1, 1), (1, 1))
    few = Conv(4, 3, 16, 16, 64, 3, 3, (1, 1), (1, 1))
    results = {}
    for conv in (big, few):
        x, weight, bias, _ = conv.arrays(rng)
        for mode in ("auto", "winograd", "no-winograd"):
            with conv_algorithm(mode):
                results[conv, mode] = _kernels.conv2d_forward(x, weight, bias, 1, 1)
    np.testing.assert_array_equal(results[big, "auto"], results[big, "winograd"])
    assert not np.array_equal(results[big, "auto"], results[big, "no-winograd"])
    np.testing.assert_array_equal(results[few, "auto"], results[few, "no-winograd"])
    assert not np.array_equal(results[few, "auto"], results[few, "winograd"])


# ---------------------------------------------------------------------------
# NaN, infinities and values near FLT_MAX: every path gives the direct sum's
# pattern. The transforms would not (an infinite pixel minus itself is NaN;
# a patch of 2e38 overflows inside V), so Winograd takes only inputs whose
# range it can handle, and the direct and im2col paths run the others.

FLT_MAX = float(np.finfo(np.float32).max)
# auto, each algorithm forced (where it applies; auto's choice elsewhere), and auto without Winograd
MODES = ("auto",) + _kernels.CONV_ALGORITHMS + ("no-winograd",)

# Winograd in auto mode (forward, dx and dW), in always mode only, and the
# paths without it: the direct kernel (K = 16 and, 5x5, K = 8; im2col on the
# generic ISA), im2col with col2im (strided), and a 5x5 dx by convolution.
NONFINITE_SHAPES = {
    "winograd-auto": Conv(4, 17, 16, 16, 17, 3, 3, (1, 1), (1, 1)),
    "winograd-odd": Conv(2, 5, 9, 11, 6, 3, 3, (1, 1), (0, 2)),
    "direct-k16": Conv(2, 8, 9, 10, 16, 3, 3, (1, 1), (1, 1)),
    "direct-k8-5x5": Conv(2, 16, 7, 9, 8, 5, 5, (1, 1), (2, 2)),
    "im2col-strided": Conv(2, 6, 9, 8, 5, 3, 3, (2, 2), (1, 1)),
    "im2col-5x5": Conv(2, 7, 8, 8, 4, 5, 5, (1, 1), (2, 2)),
}
NONFINITE_KINDS = ("nan", "inf", "huge-finite", "overflow", "overflow-of-products")


# The slices of the other two arrays that multiply plane (i, j) of one.
PARTNERS = {"x": lambda i, j: {"weight": np.s_[:, j], "dy": np.s_[i]},
            "weight": lambda i, j: {"x": np.s_[:, j], "dy": np.s_[:, i]},
            "dy": lambda i, j: {"x": np.s_[i], "weight": np.s_[j]}}


def nonfinite_arrays(conv, where, kind):
    """x, weight, dy (float32, standard normal) with values of `kind` in the
    array `where`, in its planes (0, 0) and (1, 1) (image or filter, channel):
    nan: NaN in its first, last and one middle element;
    inf: +inf and -inf two pixels apart (windows over both: inf - inf), and
      +inf alone in the other plane's last element;
    huge-finite: a central 4x4 patch (or the whole plane, when smaller) of
      +-2e38 and the other arrays * 2^-16: every direct sum stays finite,
      while the transforms of the patch alone would overflow;
    overflow: patches of +1e38 and -1e38 in the two planes, and the slices of
      the other arrays that multiply them in [2, 3]: terms of 2e38 to 3e38,
      so a sum of two or more overflows to +-inf, and one alone is finite;
    overflow-of-products: the same terms from 1e19 times [2e19, 3e19]."""
    rng = np.random.default_rng(NONFINITE_KINDS.index(kind))
    x, weight, _, dy = conv.arrays(rng)
    arrays = {"x": x, "weight": weight, "dy": dy}
    a = arrays[where]
    rows, cols = a.shape[2:]
    r0, c0 = (rows - min(4, rows)) // 2, (cols - min(4, cols)) // 2
    patch = np.s_[r0:r0 + min(4, rows), c0:c0 + min(4, cols)]
    if kind == "nan":
        a.flat[0] = a.flat[-1] = a[1, 1, rows // 2, cols // 2] = np.nan
    elif kind == "inf":
        a[0, 0, rows // 2, c0], a[0, 0, rows // 2, c0 + 2] = np.inf, -np.inf
        a[1, 1, -1, -1] = np.inf
    elif kind == "huge-finite":
        for name in arrays:
            if name != where:
                arrays[name] *= 2.0**-16
        a[0, 0][patch] = 2e38 * rng.choice([-1.0, 1.0], a[0, 0][patch].shape)
    else:
        value = 1e38 if kind == "overflow" else 1e19
        for plane, sign in (((0, 0), 1.0), ((1, 1), -1.0)):
            a[plane][patch] = sign * value
            for name, index in PARTNERS[where](*plane).items():
                part = arrays[name][index]
                part[...] = rng.uniform(2.0, 3.0, part.shape) * (1e38 / value)
    return x, weight, dy


class Expected(NamedTuple):
    """The float32 direct sum's classes, from float64 sums: exact (float64),
    masks nan, posinf, neginf and finite; magnitude and length for
    assert_close on the finite outputs."""

    exact: np.ndarray
    nan: np.ndarray
    posinf: np.ndarray
    neginf: np.ndarray
    finite: np.ndarray
    magnitude: np.ndarray
    length: int


def direct_classes(bilinear, a, b, magnitude, length, what):
    """The classes of the float32 direct sum bilinear(a, b) in any order:
    with pos and neg the float64 sums of its positive and of its negative
    finite terms, every partial sum lies in [-neg, pos]. So it is NaN where
    the float64 sum is (a NaN, or inf - inf); +-inf where that is +-inf, or
    where it is beyond 1.1 FLT_MAX while the other side stays below 0.9
    FLT_MAX; finite where both sides stay below 0.9 FLT_MAX. The test's
    values put every output in one of these (checked here): none is
    borderline. magnitude(fa, fb) bounds the rounding of the finite ones,
    given a and b with their non-finite values zeroed."""
    with np.errstate(all="ignore"):
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        exact = bilinear(a64, b64)
        fa, fb = np.where(np.isfinite(a64), a64, 0), np.where(np.isfinite(b64), b64, 0)
        total, net = bilinear(np.abs(fa), np.abs(fb)), bilinear(fa, fb)
        pos, neg = (total + net) / 2, (total - net) / 2
    other = np.where(exact > 0, neg, pos)  # the side that could overflow the other way
    big = np.isinf(exact) | (np.isfinite(exact) & (np.abs(exact) > 1.1 * FLT_MAX))
    infinite = big & (other < 0.9 * FLT_MAX)
    finite = np.isfinite(exact) & (np.maximum(pos, neg) < 0.9 * FLT_MAX)
    nan = np.isnan(exact)
    assert np.all(nan | infinite | finite), f"{what}: borderline outputs in the test's values"
    return Expected(exact, nan, infinite & (exact > 0), infinite & (exact < 0), finite,
                    np.maximum(magnitude(fa, fb), pos + neg), length)


@functools.lru_cache(maxsize=None)
def nonfinite_expected(name, where, kind):
    """Expected y, dx and dweight of nonfinite_arrays(NONFINITE_SHAPES[name], where, kind)."""
    conv = NONFINITE_SHAPES[name]
    x, weight, dy = nonfinite_arrays(conv, where, kind)
    (ph, pw), (oh, ow) = conv.padding, conv.out
    three = (conv.kh, conv.kw, conv.stride) == (3, 3, (1, 1))  # Winograd's: its bounds

    def forward(a, b):
        return reference.conv2d_forward(a, b, None, conv.stride, conv.padding)

    def dx_of(a, b):  # dx of dy a and weight b
        return reference.conv2d_backward(np.zeros(x.shape), b, a, conv.stride, conv.padding)[0]

    def dweight_of(a, b):  # dW of x a and dy b
        return reference.conv2d_backward(a, np.zeros(weight.shape), b, conv.stride,
                                         conv.padding, need_dx=False)[1]

    def y_magnitude(a, b):
        return winograd_magnitude(a, b, conv.padding) if three else 0.0

    def dx_magnitude(a, b):
        return winograd_magnitude(a, flipped(b), (2 - ph, 2 - pw)) if three else 0.0

    def dweight_magnitude(a, b):
        return winograd_dweight_magnitude(a, b, conv.padding) if three else 0.0

    return {"y": direct_classes(forward, x, weight, y_magnitude, conv.c * conv.kh * conv.kw, "y"),
            "dx": direct_classes(dx_of, dy, weight, dx_magnitude, conv.k * conv.kh * conv.kw, "dx"),
            "dweight": direct_classes(dweight_of, x, dy, dweight_magnitude, conv.n * oh * ow,
                                      "dweight")}


def assert_pattern(actual, expected, what):
    """NaN, +inf and -inf exactly where expected; finite elsewhere, and close."""
    for label, mask, got in (("NaN", expected.nan, np.isnan(actual)),
                             ("+inf", expected.posinf, actual == np.inf),
                             ("-inf", expected.neginf, actual == -np.inf)):
        wrong = mask != got
        assert not wrong.any(), (f"{what}: {int(wrong.sum())} outputs where {label} is "
                                 f"{'missing' if (mask & ~got).any() else 'unexpected'}, "
                                 f"first at {np.argwhere(wrong)[0]}")
    f = expected.finite
    assert_close(actual[f], expected.exact[f], expected.magnitude[f], expected.length, what)


@pytest.mark.parametrize("kind", NONFINITE_KINDS)
@pytest.mark.parametrize("where", ["x", "weight", "dy"])
@pytest.mark.parametrize("name", NONFINITE_SHAPES)
def test_non_finite_and_huge_inputs_give_the_direct_sums_pattern(isa_threads, name, where, kind):
    """y, dx and dW in every algorithm mode: Inf where the direct sum
    overflows or meets an infinity, NaN only where it has a NaN or inf - inf
    (zero padding enters it as zero terms: 0 * inf is NaN), finite and
    accurate elsewhere."""
    conv = NONFINITE_SHAPES[name]
    x, weight, dy = nonfinite_arrays(conv, where, kind)
    expected = nonfinite_expected(name, where, kind)
    for mode in MODES:
        with conv_algorithm(mode):
            y = _kernels.conv2d_forward(x, weight, None, conv.stride, conv.padding)
            dx, dweight, _ = _kernels.conv2d_backward(x, weight, dy, conv.stride, conv.padding)
            dw_alone = _kernels.conv2d_backward(x, weight, dy, conv.stride, conv.padding,
                                                need_dx=False)[1]
        for out, key in ((y, "y"), (dx, "dx"), (dweight, "dweight"), (dw_alone, "dweight")):
            assert_pattern(out, expected[key], f"{mode}: {key}")


def test_auto_runs_winograd_on_the_first_nonfinite_shape(rng):
    """The shape that stands for Winograd in auto mode runs it, forward, dx
    and dW, on inputs in range: the same bits as forced, not as without it."""
    conv = NONFINITE_SHAPES["winograd-auto"]
    x, weight, _, dy = conv.arrays(rng)
    results = {}
    for mode in MODES:
        with conv_algorithm(mode):
            results[mode] = (_kernels.conv2d_forward(x, weight, None, 1, 1),
                             *_kernels.conv2d_backward(x, weight, dy, 1, 1)[:2])
    for auto, always, never in zip(results["auto"], results["winograd"], results["no-winograd"]):
        np.testing.assert_array_equal(auto, always)
        assert not np.array_equal(auto, never)


def test_inputs_in_range_but_large_still_run_winograd(rng):
    """The range guard leaves Winograd to inputs far from FLT_MAX: scaling x
    and dy by 2^40 scales its bits exactly (im2col's bits are others)."""
    conv = NONFINITE_SHAPES["winograd-auto"]
    x, weight, _, dy = conv.arrays(rng)
    with conv_algorithm("winograd"):
        y, (_, dw, _) = (_kernels.conv2d_forward(x, weight, None, 1, 1),
                         _kernels.conv2d_backward(x, weight, dy, 1, 1))
        big = np.float32(2.0**40)
        np.testing.assert_array_equal(_kernels.conv2d_forward(x * big, weight, None, 1, 1), y * big)
        np.testing.assert_array_equal(
            _kernels.conv2d_backward(x * big, weight, dy * big, 1, 1)[1], dw * big * big)


def test_non_finite_last_value_of_a_short_input_keeps_winograd_off(isa_threads, rng):
    """The range pass's tail: x of 3 .. 99 floats (every vector tail at 8 and at
    16 lanes) whose last value is NaN or inf gives the path without Winograd."""
    for w in range(1, 34):
        conv = Conv(1, 1, 3, w, 2, 3, 3, (1, 1), (1, 1))
        x, weight, _, _ = conv.arrays(rng)
        x.flat[-1] = (np.nan, np.inf, -np.inf)[w % 3]
        with conv_algorithm("no-winograd"):
            plain = _kernels.conv2d_forward(x, weight, None, 1, 1)
        with conv_algorithm("winograd"):
            y = _kernels.conv2d_forward(x, weight, None, 1, 1)
        np.testing.assert_array_equal(y, plain, err_msg=f"width {w}")


def test_one_non_finite_value_anywhere_keeps_winograd_off(isa_threads, rng):
    """One NaN or inf in x at any offset (first and last element, either
    side of a vector's or the threads' split of the range pass) gives the
    NaN and inf of the path without Winograd, not a tile's worth of NaN."""
    # x: 34680 floats, split over threads, neither half a whole number of vectors
    conv = Conv(8, 17, 15, 17, 17, 3, 3, (1, 1), (1, 1))
    x, weight, _, _ = conv.arrays(rng)
    size, half = x.size, x.size // 2
    for i, e in enumerate([0, 1, 15, 16, half - 1, half, half + 1, size - 17, size - 2, size - 1]):
        bad = x.copy()
        bad.flat[e] = (np.nan, np.inf, -np.inf)[i % 3]
        with conv_algorithm("no-winograd"):
            plain = _kernels.conv2d_forward(bad, weight, None, 1, 1)
        with conv_algorithm("winograd"):
            y = _kernels.conv2d_forward(bad, weight, None, 1, 1)
        assert np.isfinite(plain).sum() > plain.size - 20 * conv.k  # it reaches a few outputs
        np.testing.assert_array_equal(y, plain, err_msg=f"{bad.flat[e]} at {e}")
