"""conv2d_forward / conv2d_backward: native kernels against their NumPy twins
(on every ISA x {1, 2} threads) and against PyTorch; independence from
batch chunking, determinism, and input validation."""

import contextlib
from typing import NamedTuple

import numpy as np
import pytest
from conftest import ISAS, conv_algorithm, rand
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastconv import _kernels, reference

try:
    import torch
except ImportError:  # PyTorch comparisons are skipped without it
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

EPS = float(np.finfo(np.float32).eps)


# ---------------------------------------------------------------------------
# helpers

class Conv(NamedTuple):
    """One convolution problem: x (n, c, h, w), weight (k, c, kh, kw)."""

    n: int
    c: int
    h: int
    w: int
    k: int
    kh: int
    kw: int
    stride: tuple
    padding: tuple

    @property
    def out(self):
        (sh, sw), (ph, pw) = self.stride, self.padding
        return (self.h + 2 * ph - self.kh) // sh + 1, (self.w + 2 * pw - self.kw) // sw + 1

    def arrays(self, rng):
        """x, weight, bias and an upstream gradient dy, all float32."""
        x = rand(rng, self.n, self.c, self.h, self.w)
        weight = rand(rng, self.k, self.c, self.kh, self.kw)
        bias = rand(rng, self.k)
        dy = rand(rng, self.n, self.k, *self.out)
        return x, weight, bias, dy


def assert_close(actual, expected, magnitude, length, what):
    """Elementwise |actual - expected| <= 4 sqrt(length) eps * magnitude.

    `magnitude` is the same sum with every term made non-negative, and
    `length` the number of terms summed. The error of a float32 sum of
    random terms grows like eps * magnitude; the sqrt(length) factor leaves
    room for either implementation's summation order, while a misplaced or
    missing term (about magnitude / length) still shows for the reduction
    lengths used here.
    """
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == np.float32, f"{what}: dtype {actual.dtype}"
    tol = 4 * np.sqrt(length) * EPS * magnitude.astype(np.float64)
    err = np.abs(actual.astype(np.float64) - expected)
    worst = np.unravel_index(np.argmax(err - tol), err.shape)
    assert np.all(err <= tol), (
        f"{what}: error {err[worst]:.3g} > tolerance {tol[worst]:.3g} at {worst} "
        f"(got {actual[worst]!r}, expected {expected[worst]!r})")


def check_forward(conv, x, weight, bias, relu=False):
    y = _kernels.conv2d_forward(x, weight, bias, conv.stride, conv.padding, relu)
    expected = reference.conv2d_forward(x, weight, bias, conv.stride, conv.padding, relu)
    abs_bias = None if bias is None else np.abs(bias)
    magnitude = reference.conv2d_forward(np.abs(x), np.abs(weight), abs_bias, conv.stride, conv.padding)
    assert_close(y, expected, magnitude, conv.c * conv.kh * conv.kw + 1, "y")
    if relu:  # the fused ReLU is the same arithmetic as a separate pass
        plain = _kernels.conv2d_forward(x, weight, bias, conv.stride, conv.padding)
        np.testing.assert_array_equal(y, _kernels.relu_forward(plain))


def check_backward(conv, x, weight, dy, need_dx):
    dx, dw, db = _kernels.conv2d_backward(x, weight, dy, conv.stride, conv.padding, need_dx=need_dx)
    ex_dx, ex_dw, ex_db = reference.conv2d_backward(x, weight, dy, conv.stride, conv.padding)
    mag_dx, mag_dw, mag_db = reference.conv2d_backward(
        np.abs(x), np.abs(weight), np.abs(dy), conv.stride, conv.padding)
    batch_terms = conv.n * conv.out[0] * conv.out[1]
    assert_close(dw, ex_dw, mag_dw, batch_terms, "dweight")
    assert_close(db, ex_db, mag_db, batch_terms, "dbias")
    if need_dx:
        assert_close(dx, ex_dx, mag_dx, conv.k * conv.kh * conv.kw, "dx")
    else:
        assert dx is None


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@st.composite
def convs(draw, max_n=4):
    """Any valid problem: every stride 1..3, padding 0..kernel+1 (beyond
    kernel-1, a stride-1 dx convolves dy with a negative padding), image
    sizes from the smallest that fits the kernel (a 1x1 output) up."""
    n, c, k = draw(st.integers(1, max_n)), draw(st.integers(1, 4)), draw(st.integers(1, 5))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    ph, pw = draw(st.integers(0, kh + 1)), draw(st.integers(0, kw + 1))
    h_min, w_min = max(1, kh - 2 * ph), max(1, kw - 2 * pw)
    h, w = draw(st.integers(h_min, h_min + 9)), draw(st.integers(w_min, w_min + 9))
    stride = draw(st.sampled_from([1, 2, 3]) | st.tuples(st.integers(1, 3), st.integers(1, 3)))
    padding = ph if ph == pw and draw(st.booleans()) else (ph, pw)
    return Conv(n, c, h, w, k, kh, kw, _pair(stride), _pair(padding)), stride, padding


@st.composite
def direct_convs(draw):
    """Unit-stride problems with channel counts at and around the direct
    kernel's (K in {8, 16}; dx of a 16 -> 8 or 8 -> 16 layer is one too)."""
    n, c = draw(st.integers(1, 3)), draw(st.sampled_from([1, 2, 7, 8, 9, 15, 16, 17]))
    k = draw(st.sampled_from([7, 8, 9, 15, 16, 17]))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    ph, pw = draw(st.integers(0, kh + 1)), draw(st.integers(0, kw + 1))
    h_min, w_min = max(1, kh - 2 * ph), max(1, kw - 2 * pw)
    h, w = draw(st.integers(h_min, h_min + 14)), draw(st.integers(w_min, w_min + 14))
    return Conv(n, c, h, w, k, kh, kw, (1, 1), (ph, pw))


@st.composite
def forced_direct_convs(draw):
    """Problems for the direct tiles forced (set_conv_algorithm("direct")), so
    that the ones auto does not take (K = 32 with C >= 16) run too: K at and
    around 8, 16 and 32, C = 1..9 (and 16, 32, for dx as a direct
    convolution), kernels 1..7, strides 1..3 (AVX-512's K = 16 and 32 tiles
    take any), every padding from 0 to kernel + 1, batch 1 to 3, odd and
    non-square images from the smallest that fits the kernel."""
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 9) | st.sampled_from([16, 32]))
    k = draw(st.sampled_from([8, 16, 32, 48, 64]) | st.sampled_from([7, 9, 15, 17, 31, 33, 63, 144]))
    kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    stride = draw(st.sampled_from([(1, 1), (2, 2), (1, 2), (2, 1), (3, 3), (3, 2)]))
    ph, pw = draw(st.integers(0, kh + 1)), draw(st.integers(0, kw + 1))
    h_min, w_min = max(1, kh - 2 * ph), max(1, kw - 2 * pw)
    h, w = draw(st.integers(h_min, h_min + 20)), draw(st.integers(w_min, w_min + 20))
    return Conv(n, c, h, w, k, kh, kw, stride, (ph, pw))


def direct_tiles_take(isa, conv):
    """Whether the ISA table has direct tiles for conv's K and stride
    (kernels/direct.h): on AVX2 and AVX-512, K = 8 at unit stride and the
    multiples of 16 up to 128 at any stride; generic none."""
    unit = conv.stride == (1, 1)
    return isa != "generic" and ((conv.k % 16 == 0 and conv.k <= 128) or (unit and conv.k == 8))


@contextlib.contextmanager
def direct_forced():
    previous = _kernels.set_conv_algorithm("direct")
    try:
        yield
    finally:
        _kernels.set_conv_algorithm(previous)


def plan_of(conv, mode="auto", need_dx=True):
    return _kernels.plan_conv2d((conv.n, conv.c, conv.h, conv.w), (conv.k, conv.c, conv.kh, conv.kw),
                                conv.stride, conv.padding, need_dx=need_dx, mode=mode)


# Edge cases named, so that every run covers them whatever hypothesis draws.
EDGES = {
    "kernel-fills-padded-image": Conv(1, 3, 3, 5, 2, 5, 7, (1, 1), (1, 1)),
    "pointwise-identity": Conv(3, 5, 7, 6, 4, 1, 1, (1, 1), (0, 0)),
    "pointwise-strided": Conv(2, 3, 7, 8, 4, 1, 1, (2, 1), (0, 0)),
    "pointwise-batch1": Conv(1, 6, 5, 9, 3, 1, 1, (1, 1), (0, 0)),
    "c1-k1": Conv(5, 1, 11, 13, 1, 3, 3, (2, 3), (1, 2)),
    "primes-nonsquare": Conv(3, 2, 13, 7, 5, 5, 3, (3, 2), (4, 2)),
    "stride-beyond-kernel": Conv(2, 2, 10, 10, 3, 2, 2, (3, 3), (1, 1)),
    "all-padding-taps": Conv(2, 2, 2, 2, 3, 3, 3, (2, 2), (1, 1)),
    "single-pixel": Conv(2, 1, 1, 1, 2, 5, 5, (1, 1), (2, 2)),
    "odd-batch-split": Conv(7, 3, 9, 8, 4, 3, 2, (1, 2), (1, 0)),
    "batch1-large": Conv(1, 8, 30, 31, 6, 3, 3, (1, 1), (1, 1)),
    # Unit strides pack the GEMM's B straight from x (implicit im2col): an
    # output narrower than the image (no one-span copy), groups of small
    # images whose packed blocks straddle images, and rows longer than the
    # packer's row buffer.
    "unit-stride-valid": Conv(3, 3, 9, 11, 5, 3, 4, (1, 1), (0, 1)),
    "unit-stride-groups": Conv(9, 5, 6, 7, 7, 3, 3, (1, 1), (1, 1)),
    "unit-stride-long-rows": Conv(2, 2, 37, 41, 3, 3, 3, (1, 1), (1, 1)),
    # A stride-1 dx with C >= K is a convolution of dy with padding
    # kernel-1-padding: negative here (in both axes, unequal), so its taps
    # skip dy's border; and the same with C < K (col2im).
    "unit-stride-padding-beyond-kernel": Conv(3, 3, 5, 4, 2, 3, 2, (1, 1), (3, 2)),
    "unit-stride-padding-beyond-kernel-widening": Conv(3, 2, 5, 4, 3, 3, 2, (1, 1), (3, 2)),
    "unit-stride-1xk-wide-padding": Conv(1, 3, 1, 6, 2, 1, 3, (1, 1), (2, 0)),
    # The direct kernel (csrc/conv/direct.c: unit strides, K in {8, 16},
    # on AVX2): the lenet layers, batch 1, non-square odd sizes, fewer output
    # pixels than a register tile, many taps, and dx convolving 16 -> 8
    # channels (direct too), or 8 -> 1 (col2im); K = 16 with rows of 4 + 3
    # pixels, 7 x 8 + 7 of them, 4 x 6 + 3 taps (dW's groups, the staging's
    # transposes, the dW tiles, each with a partial last).
    "direct-lenet-conv2": Conv(3, 8, 14, 14, 16, 5, 5, (1, 1), (2, 2)),
    "direct-lenet-conv1": Conv(2, 1, 28, 28, 8, 5, 5, (1, 1), (2, 2)),
    "direct-batch1-nonsquare": Conv(1, 3, 7, 9, 8, 3, 5, (1, 1), (0, 2)),
    "direct-fewer-pixels-than-a-tile": Conv(2, 5, 2, 3, 16, 3, 3, (1, 1), (1, 1)),
    "direct-dx-16-to-8": Conv(3, 16, 5, 6, 8, 5, 5, (1, 1), (2, 1)),
    "direct-padding-beyond-kernel": Conv(2, 4, 5, 6, 16, 3, 3, (1, 1), (3, 4)),
    "direct-many-taps": Conv(2, 40, 6, 5, 16, 5, 5, (1, 1), (2, 2)),
    "direct-k8-many-taps": Conv(3, 70, 4, 7, 8, 3, 3, (1, 1), (1, 1)),
    "direct-k16-partial-groups": Conv(2, 3, 9, 7, 16, 3, 3, (1, 1), (1, 1)),
}

# The direct tiles forced (the K >= 32 and strided tiles; auto takes
# some of them): issue 18's first layers (3 -> 16 and 3 -> 32, 3x3, at
# 32x32: 16-pixel tiles within one output row), lenet conv2 (tiles across
# rows), the 7x7/2 stem (one-row tiles at stride 2), K = 32 with fewer pixels
# than a tile, strides 3 and unequal, dx as a K = 32 direct convolution, and
# output rows with partial tiles at both strides.
DIRECT_FORCED = {
    "first-layer-k16": Conv(2, 3, 32, 32, 16, 3, 3, (1, 1), (1, 1)),
    "first-layer-k32": Conv(2, 3, 32, 32, 32, 3, 3, (1, 1), (1, 1)),
    "lenet-conv2": Conv(3, 8, 14, 14, 16, 5, 5, (1, 1), (2, 2)),
    "stem-7x7-s2": Conv(2, 3, 64, 64, 16, 7, 7, (2, 2), (3, 3)),
    "stem-7x7-s2-k32-nonsquare": Conv(1, 3, 37, 29, 32, 7, 7, (2, 2), (3, 3)),
    "k32-fewer-pixels-than-a-tile": Conv(2, 5, 2, 3, 32, 3, 3, (1, 1), (1, 1)),
    "stride-3x2-rect": Conv(1, 5, 13, 11, 16, 2, 4, (3, 2), (1, 0)),
    "dx-as-k32-convolution": Conv(2, 32, 7, 6, 32, 3, 3, (1, 1), (1, 1)),
    "partial-row-tiles-s2": Conv(1, 2, 9, 70, 16, 3, 3, (2, 2), (1, 1)),
    "partial-row-tiles-s1": Conv(1, 4, 5, 33, 32, 1, 3, (1, 1), (0, 1)),
    # ResNet's stage-entry 3x3/2s at K = 64 and 128 (four and eight parts of 16), and K = 48
    "resnet-down-k64": Conv(2, 32, 16, 16, 64, 3, 3, (2, 2), (1, 1)),
    "resnet-down-k128-odd": Conv(1, 64, 9, 7, 128, 3, 3, (2, 2), (1, 1)),
    "k48-first-layer": Conv(2, 3, 11, 20, 48, 3, 3, (1, 1), (1, 1)),
    "dx-as-k64-convolution": Conv(1, 64, 6, 5, 64, 3, 3, (1, 1), (1, 1)),
}


# ---------------------------------------------------------------------------
# against the NumPy twins

@FIXTURE_OK
@given(case=convs(), with_bias=st.booleans(), relu=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_forward_matches_reference(isa_threads, case, with_bias, relu, seed):
    conv, stride, padding = case
    x, weight, bias, _ = conv.arrays(np.random.default_rng(seed))
    bias = bias if with_bias else None
    y = _kernels.conv2d_forward(x, weight, bias, stride, padding)
    assert y.shape == (conv.n, conv.k) + conv.out
    check_forward(conv, x, weight, bias, relu)


@FIXTURE_OK
@given(case=convs(), need_dx=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_backward_matches_reference(isa_threads, case, need_dx, seed):
    conv, stride, padding = case
    x, weight, _, dy = conv.arrays(np.random.default_rng(seed))
    check_backward(conv, x, weight, dy, need_dx)


@FIXTURE_OK
@given(conv=direct_convs(), relu=st.booleans(), need_dx=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_direct_shapes_match_reference(isa_threads, conv, relu, need_dx, seed):
    x, weight, bias, dy = conv.arrays(np.random.default_rng(seed))
    check_forward(conv, x, weight, bias, relu)
    check_backward(conv, x, weight, dy, need_dx)


@FIXTURE_OK
@given(conv=forced_direct_convs(), with_bias=st.booleans(), relu=st.booleans(), need_dx=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_forced_direct_matches_reference(isa_threads, conv, with_bias, relu, need_dx, seed):
    """Direct wherever the ISA's tiles take the shape (plan_conv2d says so),
    auto's choice elsewhere: forward (bias or none, fused ReLU), dx, dW, db."""
    isa, _ = isa_threads
    takes = direct_tiles_take(isa, conv)
    assert (plan_of(conv, "direct")["forward"][0] == "direct") == takes
    assert (plan_of(conv, "direct", need_dx=False)["dweight"][0] == "direct") == takes
    x, weight, bias, dy = conv.arrays(np.random.default_rng(seed))
    with direct_forced():
        # The fused ReLU only where direct runs: the explicit im2col GEMM
        # without bias sums k in blocks, but in one pass with the ReLU fused
        # (core/sgemm.c, gemm_serial's `fused`), so there its bits differ
        # from the plain forward's for C*kh*kw > kc (a known bug, not
        # direct's; 1x16x3x6 -> 8, 3x6 kernel, stride 2).
        check_forward(conv, x, weight, bias if with_bias else None, relu and takes)
        check_backward(conv, x, weight, dy, need_dx)


@pytest.mark.parametrize("conv", DIRECT_FORCED.values(), ids=DIRECT_FORCED.keys())
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_forced_direct_edges(isa_threads, rng, conv, with_bias):
    x, weight, bias, dy = conv.arrays(rng)
    bias = bias if with_bias else None
    with direct_forced():
        check_forward(conv, x, weight, bias, relu=False)
        check_forward(conv, x, weight, bias, relu=True)
        check_backward(conv, x, weight, dy, need_dx=True)
        check_backward(conv, x, weight, dy, need_dx=False)


@pytest.mark.skipif(not {"avx2", "avx512"} <= set(ISAS), reason="needs the AVX2 and AVX-512 tables")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("conv", [DIRECT_FORCED["first-layer-k16"], DIRECT_FORCED["lenet-conv2"],
                                  EDGES["direct-fewer-pixels-than-a-tile"], EDGES["direct-dx-16-to-8"],
                                  EDGES["direct-many-taps"], EDGES["direct-k16-partial-groups"]],
                         ids=["first-layer", "lenet-conv2", "fewer-pixels-than-a-tile", "dx-16-to-8",
                              "many-taps", "partial-groups"])
def test_direct_k16_avx512_has_avx2_bits(rng, conv, threads):
    """AVX-512's K = 16 tiles do AVX2's operations lane by lane (each output
    one FMA chain over the taps in order, then the bias and the ReLU; each
    dW partial one chain over the pixels in raster order): the same bits, at
    a given thread count, forward, dx, dW and db."""
    x, weight, bias, dy = conv.arrays(rng)
    old_isa, old_threads = _kernels.get_isa(), _kernels.get_num_threads()
    got = {}
    try:
        _kernels.set_num_threads(threads)
        for isa in ("avx2", "avx512"):
            _kernels.set_isa(isa)
            assert plan_of(conv)["forward"][0] == "direct"
            got[isa] = (_kernels.conv2d_forward(x, weight, bias, conv.stride, conv.padding, True),
                        *_kernels.conv2d_backward(x, weight, dy, conv.stride, conv.padding))
    finally:
        _kernels.set_isa(old_isa)
        _kernels.set_num_threads(old_threads)
    for name, a, b in zip(("y", "dx", "dW", "db"), got["avx2"], got["avx512"]):
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("conv", [DIRECT_FORCED["first-layer-k32"]._replace(n=7),
                                  DIRECT_FORCED["stem-7x7-s2"]._replace(n=7, h=21, w=19)],
                         ids=["k32", "strided"])
def test_forced_direct_is_deterministic(isa_threads, rng, conv):
    """Forced direct (K = 32, strided): an image's output does not
    depend on the batch split, and dW and db repeat bit for bit at a thread
    count."""
    x, weight, bias, dy = conv.arrays(rng)
    with direct_forced():
        y = _kernels.conv2d_forward(x, weight, bias, conv.stride, conv.padding)
        first = _kernels.conv2d_backward(x, weight, dy, conv.stride, conv.padding, need_dx=False)
        for lo, hi in [(0, 1), (1, 3), (3, 7)]:
            part = _kernels.conv2d_forward(x[lo:hi], weight, bias, conv.stride, conv.padding)
            np.testing.assert_array_equal(part, y[lo:hi])
        for _ in range(2):
            again = _kernels.conv2d_backward(x, weight, dy, conv.stride, conv.padding, need_dx=False)
            for got, want in zip(again[1:], first[1:]):
                np.testing.assert_array_equal(got, want)


# Output widths 1 .. 33 through the im2col family's copies (im2col rows, col2im
# channels, implicit im2col's packer): every vector tail at 8 and at 16 floats,
# unit stride with "same" padding (a plane's taps as one span) and stride 2
# (a strided gather per output row); batch 1, odd and even heights.
WIDTH_CASES = [Conv(1, 3, 3 + ow % 4, ow, 4, 3, 3, (1, 1), (1, 1)) for ow in range(1, 34)]
WIDTH_CASES += [Conv(1, 2, 4 + ow % 3, 2 * ow + 1, 3, 3, 3, (2, 2), (1, 1)) for ow in range(1, 34)]


@pytest.fixture(params=["im2col", "implicit_im2col"])
def copies_algorithm(request):
    previous = _kernels.set_conv_algorithm(request.param)
    yield request.param
    _kernels.set_conv_algorithm(previous)


@pytest.mark.parametrize("conv", WIDTH_CASES, ids=str)
def test_every_width_through_the_copies(isa_threads, copies_algorithm, rng, conv):
    x, weight, bias, dy = conv.arrays(rng)
    check_forward(conv, x, weight, bias)
    check_backward(conv, x, weight, dy, need_dx=True)


@pytest.mark.parametrize("conv", EDGES.values(), ids=EDGES.keys())
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
def test_forward_edges(isa_threads, rng, conv, with_bias, relu):
    x, weight, bias, _ = conv.arrays(rng)
    check_forward(conv, x, weight, bias if with_bias else None, relu)


@pytest.mark.parametrize("algorithm", ["im2col", "implicit_im2col", "pointwise", "auto"])
@pytest.mark.parametrize("conv", [Conv(1, 16, 3, 6, 8, 3, 6, (2, 2), (0, 0)),   # k = 288: two k blocks
                                  Conv(2, 40, 5, 4, 12, 2, 3, (1, 1), (1, 1)),  # k = 240
                                  Conv(3, 200, 4, 5, 6, 1, 1, (1, 1), (0, 0)),  # 1x1, k = 200
                                  Conv(1, 64, 6, 7, 10, 3, 3, (1, 2), (1, 1))], ids=str)
def test_fused_relu_without_bias_is_relu_of_the_plain_forward(isa_threads, rng, algorithm, conv):
    """Between one k block and one pass (k over the GEMM's block, at most
    FC_GEMM_ONE_PASS_K), a ReLU alone must not change the GEMM's k blocks:
    the fused output is relu(plain output) bit for bit, with and without a bias."""
    x, weight = rand(rng, conv.n, conv.c, conv.h, conv.w), rand(rng, conv.k, conv.c, conv.kh, conv.kw)
    for bias in (None, rand(rng, conv.k)):
        with conv_algorithm(algorithm):
            y = _kernels.conv2d_forward(x, weight, bias, conv.stride, conv.padding, True)
            plain = _kernels.conv2d_forward(x, weight, bias, conv.stride, conv.padding)
        np.testing.assert_array_equal(y, _kernels.relu_forward(plain))


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("algorithm", ["im2col", "implicit_im2col", "pointwise"])
@pytest.mark.parametrize("conv", [Conv(3, 16, 9, 11, 32, 1, 1, (1, 1), (0, 0)),  # 1x1, k = 16
                                  Conv(2, 16, 12, 12, 13, 1, 1, (2, 2), (0, 0)),  # 1x1 strided, odd K
                                  Conv(2, 3, 10, 7, 20, 3, 3, (1, 1), (1, 1)),    # k = 27
                                  Conv(1, 5, 6, 6, 7, 3, 3, (2, 1), (1, 0)),      # edge tiles only
                                  Conv(5, 16, 7, 5, 48, 3, 3, (1, 1), (1, 1))], ids=str)  # k = 144
def test_bias_in_the_gemm_store_is_a_separate_add(isa_threads, rng, precision, algorithm, conv):
    """The micro-kernels that add the bias (and apply the ReLU) as they store
    a tile give the bits of the GEMM without bias, then the bias added, then
    relu_forward: in both precisions, on the tile edges too (k within one
    block, where the plain GEMM's k blocks are the fused pass's)."""
    x, weight = rand(rng, conv.n, conv.c, conv.h, conv.w), rand(rng, conv.k, conv.c, conv.kh, conv.kw)
    bias = rand(rng, conv.k)
    with conv_algorithm(algorithm):
        plain = _kernels.conv2d_forward(x, weight, None, conv.stride, conv.padding, precision=precision)
        biased = plain + bias[None, :, None, None]
        for relu in (False, True):
            y = _kernels.conv2d_forward(x, weight, bias, conv.stride, conv.padding, relu, precision=precision)
            np.testing.assert_array_equal(y, _kernels.relu_forward(biased) if relu else biased)


def test_fused_relu_keeps_nan_and_zeroes_negatives(isa_threads, rng):
    conv = EDGES["unit-stride-groups"]
    x, weight, bias, _ = conv.arrays(rng)
    x[1, 2, 3, 4] = np.nan
    y = _kernels.conv2d_forward(x, weight, bias, 1, 1, relu=True)
    plain = _kernels.conv2d_forward(x, weight, bias, 1, 1)
    assert np.isnan(y).sum() == np.isnan(plain).sum() > 0
    assert (y[~np.isnan(y)] >= 0).all() and (plain < 0).any()


@st.composite
def strided_convs(draw):
    """Strided problems for the polyphase dx: strides 2..4 (rectangular too),
    kernels smaller and larger than the stride (phases without taps, and
    phases of several), padding up to kernel + 1 (phases that crop dy: a
    negative padding), channel counts where the phases run direct (C = 8,
    16, 32) and where they do not."""
    n, c = draw(st.integers(1, 3)), draw(st.sampled_from([1, 3, 8, 16, 32]))
    k = draw(st.sampled_from([2, 8, 16, 33]))
    kh, kw = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(2, 4))
    ph, pw = draw(st.integers(0, kh + 1)), draw(st.integers(0, kw + 1))
    h_min, w_min = max(1, kh - 2 * ph), max(1, kw - 2 * pw)
    h, w = draw(st.integers(h_min, h_min + 12)), draw(st.integers(w_min, w_min + 12))
    return Conv(n, c, h, w, k, kh, kw, (sh, sw), (ph, pw))


@FIXTURE_OK
@given(conv=strided_convs(), seed=st.integers(0, 2**32 - 1))
def test_polyphase_dx_matches_reference(isa_threads, conv, seed):
    """A strided dx by phases (forced, so also where auto leaves it to col2im,
    and on every ISA), against the twin; dW and db as auto's."""
    x, weight, _, dy = conv.arrays(np.random.default_rng(seed))
    with conv_algorithm("polyphase"):
        assert plan_of(conv, "polyphase")["dx"][0] == "polyphase"
        check_backward(conv, x, weight, dy, need_dx=True)


@pytest.mark.parametrize("conv, alone", [(Conv(128, 16, 32, 32, 32, 3, 3, (2, 2), (1, 1)), True),
                                         (Conv(9, 32, 15, 13, 64, 3, 3, (2, 2), (1, 1)), True),
                                         (Conv(5, 8, 14, 11, 16, 5, 5, (2, 3), (2, 1)), True),
                                         (Conv(3, 16, 9, 9, 8, 2, 2, (3, 3), (0, 0)), True),
                                         # a 3x3 phase into C = 32: Winograd by the batch's tiles
                                         # (not a block's; one image alone has too few)
                                         (Conv(3, 32, 48, 48, 16, 5, 5, (2, 2), (2, 2)), False),
                                         (Conv(5, 32, 30, 30, 16, 5, 5, (2, 2), (2, 2)), False)], ids=str)
def test_polyphase_dx_is_the_same_bits_at_any_thread_count_and_block(rng, conv, alone):
    """Each dx pixel is one phase's forward output, by the algorithm planned
    for the whole batch: the same bits at 1 and 2 threads, and whether the
    batch runs in one block of images or several (128 images take several);
    and, where its phases plan alike, for an image alone."""
    x, weight, _, dy = conv.arrays(rng)
    old = _kernels.get_num_threads()
    got = []
    try:
        with conv_algorithm("polyphase"):
            for threads in (1, 2):
                _kernels.set_num_threads(threads)
                got.append(_kernels.conv2d_backward(x, weight, dy, conv.stride, conv.padding)[0])
            one = _kernels.conv2d_backward(x[:1], weight, dy[:1], conv.stride, conv.padding)[0]
    finally:
        _kernels.set_num_threads(old)
    np.testing.assert_array_equal(got[0], got[1])
    if alone:
        np.testing.assert_array_equal(got[0][:1], one)


def test_polyphase_dx_is_auto_where_the_phases_run_direct(isa_threads):
    """Auto takes the phases for a float32 3x3 stride-2 layer into C = 16 or
    32 channels where the ISA has the direct tiles, and col2im elsewhere."""
    isa, _ = isa_threads
    down = plan_of(Conv(8, 16, 16, 16, 32, 3, 3, (2, 2), (1, 1)))["dx"]
    assert down[0] == ("im2col" if isa == "generic" else "polyphase"), down


@pytest.mark.parametrize("conv", EDGES.values(), ids=EDGES.keys())
@pytest.mark.parametrize("need_dx", [True, False], ids=["dx", "no-dx"])
def test_backward_edges(isa_threads, rng, conv, need_dx):
    x, weight, _, dy = conv.arrays(rng)
    check_backward(conv, x, weight, dy, need_dx)


@pytest.mark.parametrize("name", ["odd-batch-split", "direct-lenet-conv1", "direct-lenet-conv2"])
def test_need_dx_false_gives_the_same_parameter_gradients(isa_threads, rng, name):
    conv = EDGES[name]
    x, weight, _, dy = conv.arrays(rng)
    with_dx = _kernels.conv2d_backward(x, weight, dy, conv.stride, conv.padding)
    without = _kernels.conv2d_backward(x, weight, dy, conv.stride, conv.padding, need_dx=False)
    assert without[0] is None
    np.testing.assert_array_equal(with_dx[1], without[1])
    np.testing.assert_array_equal(with_dx[2], without[2])


def test_empty_batch(rng):
    conv = Conv(0, 3, 6, 6, 4, 3, 3, (1, 1), (1, 1))
    x, weight, bias, dy = conv.arrays(rng)
    assert _kernels.conv2d_forward(x, weight, bias, 1, 1).shape == (0, 4, 6, 6)
    dx, dw, db = _kernels.conv2d_backward(x, weight, dy, 1, 1)
    assert dx.shape == x.shape
    assert not dw.any() and not db.any()


# ---------------------------------------------------------------------------
# chunking and determinism

# A long reduction (C*kh*kw = 2304) into few outputs: the case where sgemm
# would sum k in chunks for a small C but not for a wide one; the conv asks
# sgemm not to, so an image's result does not depend on its group.
DEEP_FEW_OUTPUTS = Conv(7, 256, 8, 8, 32, 3, 3, (1, 1), (1, 1))


@pytest.mark.parametrize("conv", [EDGES["odd-batch-split"], EDGES["pointwise-identity"]._replace(n=7),
                                  DEEP_FEW_OUTPUTS, EDGES["direct-lenet-conv2"]._replace(n=7),
                                  EDGES["direct-batch1-nonsquare"]._replace(n=7)],
                         ids=["3x2", "pointwise", "deep", "direct-k16", "direct-k8"])
def test_batch_chunking_does_not_change_results(isa_threads, rng, conv):
    """Per-image outputs are the same whether the batch runs whole or in
    parts (parts of 1 image run the GEMM multi-threaded, larger ones split
    the batch over threads; small images are grouped several per GEMM)."""
    x, weight, bias, dy = conv.arrays(rng)
    y = _kernels.conv2d_forward(x, weight, bias, conv.stride, conv.padding)
    dx = _kernels.conv2d_backward(x, weight, dy, conv.stride, conv.padding)[0]
    for lo, hi in [(0, 1), (1, 3), (3, 7)]:
        part = _kernels.conv2d_forward(x[lo:hi], weight, bias, conv.stride, conv.padding)
        np.testing.assert_array_equal(part, y[lo:hi])
        part_dx = _kernels.conv2d_backward(x[lo:hi], weight, dy[lo:hi], conv.stride, conv.padding)[0]
        np.testing.assert_array_equal(part_dx, dx[lo:hi])


@pytest.mark.parametrize("n", [1, 5], ids=["batch1", "batch5"])
@pytest.mark.parametrize("c, k", [(6, 10), (10, 6), (8, 16), (16, 8)],
                         ids=["dx-col2im", "dx-convolution", "direct-k16", "direct-k8"])
def test_bitwise_deterministic(isa_threads, rng, n, c, k):
    conv = Conv(n, c, 12, 11, k, 3, 3, (1, 1), (1, 1))
    x, weight, bias, dy = conv.arrays(rng)
    first_y = _kernels.conv2d_forward(x, weight, bias, 1, 1)
    first = _kernels.conv2d_backward(x, weight, dy, 1, 1)
    for _ in range(3):
        np.testing.assert_array_equal(_kernels.conv2d_forward(x, weight, bias, 1, 1), first_y)
        for got, want in zip(_kernels.conv2d_backward(x, weight, dy, 1, 1), first):
            np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------
# against PyTorch

TORCH_CASES = {
    "lenet-conv2": Conv(4, 8, 14, 14, 16, 5, 5, (1, 1), (2, 2)),
    "stem-7x7-s2": Conv(3, 3, 17, 19, 8, 7, 7, (2, 2), (3, 3)),
    "mixed": Conv(2, 5, 11, 6, 7, 4, 2, (3, 1), (2, 1)),
    "pointwise": Conv(3, 16, 5, 5, 8, 1, 1, (1, 1), (0, 0)),
}


@needs_torch
@pytest.mark.parametrize("conv", TORCH_CASES.values(), ids=TORCH_CASES.keys())
def test_matches_pytorch(isa_threads, rng, conv):
    x, weight, bias, dy = conv.arrays(rng)
    tx, tw, tb = (torch.from_numpy(a.copy()).requires_grad_() for a in (x, weight, bias))
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=conv.stride, padding=conv.padding)
    ty.backward(torch.from_numpy(dy))

    y = _kernels.conv2d_forward(x, weight, bias, conv.stride, conv.padding)
    dx, dw, db = _kernels.conv2d_backward(x, weight, dy, conv.stride, conv.padding)
    mag_y = reference.conv2d_forward(np.abs(x), np.abs(weight), np.abs(bias), conv.stride, conv.padding)
    mag_dx, mag_dw, mag_db = reference.conv2d_backward(
        np.abs(x), np.abs(weight), np.abs(dy), conv.stride, conv.padding)
    batch_terms = conv.n * conv.out[0] * conv.out[1]
    assert_close(y, ty.detach().numpy(), mag_y, conv.c * conv.kh * conv.kw + 1, "y")
    assert_close(dx, tx.grad.numpy(), mag_dx, conv.k * conv.kh * conv.kw, "dx")
    assert_close(dw, tw.grad.numpy(), mag_dw, batch_terms, "dweight")
    assert_close(db, tb.grad.numpy(), mag_db, batch_terms, "dbias")


# ---------------------------------------------------------------------------
# validation

def _x(*shape, dtype=np.float32):
    return np.zeros(shape, dtype=dtype)


GOOD_X, GOOD_W, GOOD_B, GOOD_DY = _x(2, 3, 8, 8), _x(4, 3, 3, 3), _x(4), _x(2, 4, 6, 6)

# (forward and backward arguments, error, message): each case differs from a
# valid call in one argument. Both kernels share the x/weight/stride/padding
# validation, so those cases run through both.
SHARED_ERRORS = {
    "x-dtype": (dict(x=_x(2, 3, 8, 8, dtype=np.float64)), TypeError,
                r"`x` must be a float32 array; got float64 array with shape \(2, 3, 8, 8\)"),
    "x-list": (dict(x=[[[[0.0]]]]), TypeError, r"`x` must be a float32 numpy array of rank 4; got list"),
    "x-rank": (dict(x=_x(3, 8, 8)), ValueError, r"`x` must have rank 4; got float32 array with shape \(3, 8, 8\)"),
    "x-noncontiguous": (dict(x=_x(2, 3, 8, 16)[..., ::2]), ValueError,
                        r"`x` must be C-contiguous; got non-contiguous float32 array"),
    "x-no-channels": (dict(x=_x(2, 0, 8, 8)), ValueError, r"`x` must have non-zero C, H and W"),
    "weight-dtype": (dict(weight=_x(4, 3, 3, 3, dtype=np.float16)), TypeError, r"`weight` must be a float32 array"),
    "weight-rank": (dict(weight=_x(4, 27)), ValueError, r"`weight` must have rank 4"),
    "channel-mismatch": (dict(weight=_x(4, 2, 3, 3)), ValueError,
                         r"`weight` must have 3 input channels to match `x` \(2, 3, 8, 8\); "
                         r"got weight shape \(4, 2, 3, 3\)"),
    "kernel-taller-than-padded": (dict(weight=_x(4, 3, 11, 3)), ValueError,
                                  r"kernel height 11 is larger than the padded input height 8 \+ 2\*0 = 8"),
    "kernel-wider-than-padded": (dict(weight=_x(4, 3, 3, 11), padding=1), ValueError,
                                 r"kernel width 11 is larger than the padded input width 8 \+ 2\*1 = 10"),
    "stride-0": (dict(stride=0), ValueError, r"`stride` must be >= 1; got \(0, 0\)"),
    "stride-pair-0": (dict(stride=(1, 0)), ValueError, r"`stride` must be >= 1; got \(1, 0\)"),
    "stride-float": (dict(stride=1.5), TypeError, r"`stride` must be an int or an \(h, w\) pair of ints; got 1.5"),
    "stride-bool": (dict(stride=True), TypeError, r"`stride` must be an int or an \(h, w\) pair"),
    "stride-triple": (dict(stride=(1, 1, 1)), TypeError, r"`stride` must be an int or an \(h, w\) pair"),
    "padding-negative": (dict(padding=-1), ValueError, r"`padding` must be >= 0; got \(-1, -1\)"),
    "padding-pair-negative": (dict(padding=(0, -2)), ValueError, r"`padding` must be >= 0; got \(0, -2\)"),
}

FORWARD_ERRORS = {
    "bias-shape": (dict(bias=_x(5)), ValueError, r"`bias` must have shape \(4,\); got \(5,\)"),
    "bias-rank": (dict(bias=_x(1, 4)), ValueError, r"`bias` must have rank 1"),
    "bias-dtype": (dict(bias=_x(4, dtype=np.float64)), TypeError, r"`bias` must be a float32 array"),
    "relu-not-bool": (dict(relu=1), TypeError, r"`relu` must be a bool; got 1"),
}

BACKWARD_ERRORS = {
    "dy-shape": (dict(dy=_x(2, 4, 8, 8)), ValueError, r"`dy` must have shape \(2, 4, 6, 6\); got \(2, 4, 8, 8\)"),
    "dy-channels": (dict(dy=_x(2, 5, 6, 6)), ValueError, r"`dy` must have shape \(2, 4, 6, 6\)"),
    "dy-dtype": (dict(dy=_x(2, 4, 6, 6, dtype=np.float64)), TypeError, r"`dy` must be a float32 array"),
    "dy-noncontiguous": (dict(dy=_x(2, 4, 6, 12)[..., ::2]), ValueError, r"`dy` must be C-contiguous"),
}


def _forward(x=GOOD_X, weight=GOOD_W, bias=GOOD_B, stride=1, padding=0, relu=False):
    return _kernels.conv2d_forward(x, weight, bias, stride, padding, relu)


def _backward(x=GOOD_X, weight=GOOD_W, dy=GOOD_DY, stride=1, padding=0):
    # The expected dy shape follows the other arguments, so that a bad x,
    # weight, stride or padding is what the kernel reports.
    return _kernels.conv2d_backward(x, weight, dy, stride, padding)


@pytest.mark.parametrize("fn", [_forward, _backward], ids=["forward", "backward"])
@pytest.mark.parametrize("kwargs, error, match", SHARED_ERRORS.values(), ids=SHARED_ERRORS.keys())
def test_shared_validation(fn, kwargs, error, match):
    name = "conv2d_forward" if fn is _forward else "conv2d_backward"
    with pytest.raises(error, match=f"{name}: .*{match}"):
        fn(**kwargs)


@pytest.mark.parametrize("kwargs, error, match", FORWARD_ERRORS.values(), ids=FORWARD_ERRORS.keys())
def test_forward_validation(kwargs, error, match):
    with pytest.raises(error, match=f"conv2d_forward: {match}"):
        _forward(**kwargs)


@pytest.mark.parametrize("kwargs, error, match", BACKWARD_ERRORS.values(), ids=BACKWARD_ERRORS.keys())
def test_backward_validation(kwargs, error, match):
    with pytest.raises(error, match=f"conv2d_backward: {match}"):
        _backward(**kwargs)


def test_valid_defaults_pass():
    """The validation cases above differ from these calls in one argument only."""
    assert _forward().shape == GOOD_DY.shape
    assert _backward()[1].shape == GOOD_W.shape


def test_huge_sizes_get_the_wrappers_message():
    one = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(ValueError, match=r"conv2d_forward: output or column matrix too large"):
        _kernels.conv2d_forward(one, one, None, 1, 2**31)
    with pytest.raises(ValueError, match=r"`stride` must be at most 2\*\*48"):
        _kernels.conv2d_forward(one, one, None, 2**50, 0)


# ---------------------------------------------------------------------------
# the layer: fused Conv2d + ReLU in a Sequential, and skipping dx

def _conv_relu_pair(seed=0):
    import fastconv as fc
    fc.manual_seed(seed)
    return fc.Conv2d(3, 5, 3, padding=1), fc.ReLU()


def test_sequential_fuses_conv_relu_with_the_same_results(isa_threads, rng):
    import fastconv as fc
    x = rng.standard_normal((4, 3, 9, 7), dtype=np.float32)
    dy = rng.standard_normal((4, 5, 9, 7), dtype=np.float32)
    conv, relu = _conv_relu_pair()
    conv.bias.data[:] = rng.standard_normal(5, dtype=np.float32)
    y_apart = relu(conv(x))  # one by one, as Sequential ran before fusing
    dx_apart = conv.backward(relu.backward(dy))
    grads_apart = conv.weight.grad.copy(), conv.bias.grad.copy()
    conv.zero_grad()
    model = fc.Sequential(conv, relu)
    y = model(x)
    np.testing.assert_array_equal(y, y_apart)
    assert (y == 0).any()  # the ReLU did clamp something
    np.testing.assert_array_equal(model.backward(dy), dx_apart)
    np.testing.assert_array_equal(conv.weight.grad, grads_apart[0])
    np.testing.assert_array_equal(conv.bias.grad, grads_apart[1])


def test_fused_conv_relu_gradcheck():
    import fastconv as fc
    conv, relu = _conv_relu_pair(1)
    model = fc.Sequential(conv, relu)
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 4)).astype(np.float32)
    result = fc.gradcheck(model, x)
    assert result.passed and result.checked > 0, str(result)


def test_needs_input_grad_false_skips_dx(isa_threads, rng):
    import fastconv as fc
    x = rng.standard_normal((3, 3, 6, 6), dtype=np.float32)
    dy = rng.standard_normal((3, 5, 6, 6), dtype=np.float32)
    conv, _ = _conv_relu_pair()
    conv(x)
    assert conv.backward(dy) is not None
    expected = conv.weight.grad.copy(), conv.bias.grad.copy()
    conv.zero_grad()
    conv.needs_input_grad = False
    model = fc.Sequential(conv)
    model(x)
    assert model.backward(dy) is None
    np.testing.assert_array_equal(conv.weight.grad, expected[0])
    np.testing.assert_array_equal(conv.bias.grad, expected[1])
