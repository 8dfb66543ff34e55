"""maxpool2d_forward / maxpool2d_backward: native kernels against their NumPy
twins (on every ISA x {1, 2} threads) and against PyTorch; edge semantics
(ties, NaN, -inf, padding), the dilation and ceil_mode options, and input
validation."""

import numpy as np
import pytest
from conftest import rand
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fastconv import _kernels, reference

try:
    import torch
except ImportError:  # PyTorch comparisons are skipped without it
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


# ---------------------------------------------------------------------------
# helpers

def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def make_input(rng, shape, mode):
    """float32 input of `shape`; `mode` picks the value distribution."""
    if mode == "normal":
        return rand(rng, *shape)
    x = rng.integers(-2, 3, size=shape).astype(np.float32)  # many ties
    if mode == "nan":
        x[rng.random(shape) < 0.15] = np.nan
    elif mode == "inf":
        x[rng.random(shape) < 0.2] = -np.inf
        x[rng.random(shape) < 0.05] = np.inf
    elif mode == "neg_inf":
        x[...] = -np.inf
        x[rng.random(shape) < 0.05] = np.nan
    elif mode == "signed_zero":
        x = np.where(rng.random(shape) < 0.5, np.float32(-0.0), np.float32(0.0)).astype(np.float32)
        x[rng.random(shape) < 0.1] = -1.0
    return x


MODES = ("normal", "ties", "nan", "inf", "neg_inf", "signed_zero")


def bits(a):
    """Bitwise view, so that NaN == NaN and -0.0 != 0.0."""
    return np.ascontiguousarray(a).view(np.uint32)


def check_native_vs_reference(x, kernel, stride, padding, rng, **options):
    y, am = _kernels.maxpool2d_forward(x, kernel, stride, padding, **options)
    y_ref, am_ref = reference.maxpool2d_forward(x, kernel, stride, padding, **options)
    kh, kw = _pair(kernel)
    assert y.shape == y_ref.shape and y.dtype == np.float32 and y.flags.c_contiguous
    assert am.dtype == reference.argmax_dtype(kernel) == _kernels.argmax_dtype(kernel)
    assert am.dtype == (np.uint8 if kh * kw <= 256 else np.int32)
    np.testing.assert_array_equal(bits(y), bits(y_ref))
    np.testing.assert_array_equal(am, am_ref)

    dy = rand(rng, *y.shape)
    dx = _kernels.maxpool2d_backward(dy, am, x.shape, kernel, stride, padding, **options)
    dx_ref = reference.maxpool2d_backward(dy, am_ref, x.shape, kernel, stride, padding, **options)
    assert dx.shape == x.shape and dx.dtype == np.float32
    # Overlapping windows add several dy into one dx: allow float reordering.
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-6)
    return y, am


@st.composite
def pool_cases(draw, big_kernel=False):
    """(x shape, kernel, stride, padding, mode, seed) with a valid geometry."""
    if big_kernel:  # kh*kw > 256: int32 argmax
        kh = draw(st.integers(1, 20))
        kw = draw(st.integers(256 // kh + 1, 256 // kh + 4))
    else:
        kh, kw = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    sh, sw = draw(st.integers(1, kh + 1)), draw(st.integers(1, kw + 1))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(max(1, kh - 2 * ph), kh + 11))
    w = draw(st.integers(max(1, kw - 2 * pw), kw + 11))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    # ints and (h, w) pairs are both accepted
    as_pair = draw(st.booleans())
    kernel = (kh, kw) if as_pair or kh != kw else kh
    stride = (sh, sw) if as_pair or sh != sw else sh
    padding = (ph, pw) if as_pair or ph != pw else ph
    mode = draw(st.sampled_from(MODES))
    seed = draw(st.integers(0, 2**32 - 1))
    return (n, c, h, w), kernel, stride, padding, mode, seed


# ---------------------------------------------------------------------------
# native vs reference

@FIXTURE_OK
@given(case=pool_cases())
def test_matches_reference(isa_threads, case):
    shape, kernel, stride, padding, mode, seed = case
    rng = np.random.default_rng(seed)
    check_native_vs_reference(make_input(rng, shape, mode), kernel, stride, padding, rng)


@settings(FIXTURE_OK, max_examples=15)
@given(case=pool_cases(big_kernel=True))
def test_matches_reference_int32_argmax(isa_threads, case):
    shape, kernel, stride, padding, mode, seed = case
    rng = np.random.default_rng(seed)
    _, am = check_native_vs_reference(make_input(rng, shape, mode), kernel, stride, padding, rng)
    assert am.dtype == np.int32


# Fixed geometries: the workloads, planes above the parallel threshold (16384
# input elements), primes, non-square everything, and a uint8/int32 boundary.
SHAPES = [
    ((1, 1, 1, 1), 1, 1, 0),
    ((1, 3, 13, 17), 2, 2, 0),
    ((2, 5, 11, 7), (3, 2), (2, 1), (1, 1)),
    ((1, 2, 19, 23), (1, 5), (1, 6), (0, 2)),
    ((3, 2, 9, 31), (4, 3), (5, 4), (2, 1)),
    ((2, 8, 37, 41), 3, 2, 1),                 # 24k elements: parallel path
    ((1, 3, 97, 131), (2, 3), (2, 3), (1, 0)),
    ((64, 16, 28, 28), 2, 2, 0),               # workload
    ((4, 32, 32, 32), 2, 2, 0),                # workload, smaller batch
    ((1, 2, 20, 20), 16, 1, 8),                # kh*kw = 256: last uint8 size
    ((1, 2, 20, 21), (16, 17), (3, 4), (8, 8)),  # 272: int32
    ((2, 1, 3, 300), (1, 257), 1, (0, 128)),   # 257: int32, one row
]


@pytest.mark.parametrize("mode", ["normal", "ties", "nan"])
@pytest.mark.parametrize("shape,kernel,stride,padding", SHAPES)
def test_fixed_shapes(isa_threads, rng, shape, kernel, stride, padding, mode):
    x = make_input(rng, shape, mode)
    check_native_vs_reference(x, kernel, stride, padding, rng)


def test_empty_batch(isa_threads):
    x = np.empty((0, 3, 8, 8), dtype=np.float32)
    y, am = _kernels.maxpool2d_forward(x, 2, 2, 0)
    assert y.shape == am.shape == (0, 3, 4, 4)
    dx = _kernels.maxpool2d_backward(y, am, x.shape, 2, 2, 0)
    assert dx.shape == x.shape


# The 2x2 stride-2 path (its row kernels in csrc/pool/maxpool2d.c): rows shorter than, equal to and
# longer than one 8-window vector, with a scalar tail, rows of 4 to 7 windows (4-window
# steps: lenet's 14x14 planes, odd widths), odd H and W (an uncovered last row and
# column), batch 1, above and below the parallel threshold.
SHAPES_2X2 = [(1, 1, 2, 2), (1, 1, 3, 3), (2, 3, 2, 33), (1, 2, 17, 16), (1, 1, 5, 31),
              (3, 4, 9, 48), (1, 5, 64, 65), (2, 64, 30, 34), (1, 1, 255, 2),
              (1, 1, 2, 8), (1, 3, 7, 9), (1, 2, 5, 11), (3, 1, 4, 13), (2, 16, 14, 14),
              (1, 1, 3, 15)]
# Pooled widths 1 .. 33 from even and odd input widths: every tail of the 8- and 4-window
# steps (of AVX2's kernels, which the AVX-512 table uses too).
SHAPES_2X2 += [(1 + (pw % 3 == 0), 2, 3 + 2 * (pw % 2), 2 * pw + pw % 2) for pw in range(1, 34)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES_2X2, ids=str)
def test_2x2_stride_2_path(isa_threads, rng, shape, mode):
    check_native_vs_reference(make_input(rng, shape, mode), 2, 2, 0, rng)


def test_2x2_backward_writes_every_element(isa_threads, rng):
    """No memset on this path: dx comes from np.empty, so memory that held NaN
    just before (likely reused by malloc) must be overwritten everywhere."""
    x = make_input(rng, (2, 3, 17, 19), "ties")
    y, am = _kernels.maxpool2d_forward(x, 2, 2, 0)
    dy = rand(rng, *y.shape)
    expected = reference.maxpool2d_backward(dy, am, x.shape, 2, 2, 0)
    for _ in range(5):
        poison = np.full(x.shape, np.nan, dtype=np.float32)
        del poison
        dx = _kernels.maxpool2d_backward(dy, am, x.shape, 2, 2, 0)
        np.testing.assert_array_equal(bits(dx), bits(expected))


@pytest.mark.parametrize("value,count", [(4, 1), (255, 1), (7, 6)])
def test_2x2_backward_counts_stray_indices(isa_threads, rng, value, count):
    x = rand(rng, 1, 2, 6, 20)  # rows of 10 windows: a vector and a tail
    y, am = _kernels.maxpool2d_forward(x, 2, 2, 0)
    am = am.copy()
    am.reshape(-1)[[0, 9, 10, 29, 30, 59][:count]] = value
    with pytest.raises(ValueError, match=f"has {count} indices outside their window"):
        _kernels.maxpool2d_backward(rand(rng, *y.shape), am, x.shape, 2, 2, 0)


def test_thread_count_agnostic(rng):
    """Same bits with 1 and 2 threads, above the parallel threshold."""
    x = make_input(rng, (3, 16, 45, 47), "ties")
    dy = rand(rng, 3, 16, 23, 24)
    old = _kernels.get_num_threads()
    out = []
    try:
        for t in (1, 2):
            _kernels.set_num_threads(t)
            y, am = _kernels.maxpool2d_forward(x, 3, 2, 1)
            out.append((y, am, _kernels.maxpool2d_backward(dy, am, x.shape, 3, 2, 1)))
    finally:
        _kernels.set_num_threads(old)
    for a, b in zip(*out):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


def test_inputs_not_modified(rng):
    x = rand(rng, 2, 3, 9, 9)
    x0 = x.copy()
    y, am = _kernels.maxpool2d_forward(x, 3, 2, 1)
    dy = rand(rng, *y.shape)
    dy0, am0 = dy.copy(), am.copy()
    _kernels.maxpool2d_backward(dy, am, x.shape, 3, 2, 1)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)
    np.testing.assert_array_equal(am, am0)


# ---------------------------------------------------------------------------
# edge semantics, by hand

def pool1(window, kernel=None, padding=0):
    """Pool one (kh, kw) window given as a 2-D list; returns (y, argmax) scalars."""
    x = np.array(window, dtype=np.float32)[None, None]
    kernel = kernel or x.shape[2:]
    y, am = _kernels.maxpool2d_forward(x, kernel, 1, padding)
    y_ref, am_ref = reference.maxpool2d_forward(x, kernel, 1, padding)
    np.testing.assert_array_equal(bits(y), bits(y_ref))
    np.testing.assert_array_equal(am, am_ref)
    return y, am


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("window,value,index", [
    ([[1, 3], [3, 2]], 3, 1),                 # tie: first in row-major order
    ([[5, 5], [5, 5]], 5, 0),
    ([[1, 2, 7], [7, 0, 7]], 7, 2),
    ([[-0.0, 0.0]], -0.0, 0),                 # -0.0 == 0.0: the first wins, sign kept
    ([[0.0, -0.0]], 0.0, 0),
    ([[1, NAN], [3, 2]], NAN, 1),             # NaN beats numbers
    ([[1, NAN], [3, NAN]], NAN, 3),           # last NaN wins (PyTorch's scan)
    ([[NAN, 9], [INF, 2]], NAN, 0),
    ([[-INF, -INF], [-INF, -INF]], -INF, 0),  # all -inf: first element
    ([[-INF, 1e-38], [-1e38, -INF]], 1e-38, 1),
    ([[1, INF], [INF, 2]], INF, 1),
    ([[-3.0, -2.0], [-2.5, -7.0]], -2.0, 1),
])
def test_window_semantics(window, value, index):
    y, am = pool1(window)
    yv = y.item()
    if np.isnan(value):
        assert np.isnan(yv)
    else:
        assert yv == np.float32(value) and np.signbit(yv) == np.signbit(value)
    assert am.item() == index


def test_nan_payload_of_the_winner_is_kept():
    x = np.zeros((1, 1, 1, 3), dtype=np.float32)
    x.view(np.uint32)[0, 0, 0, :2] = [0x7FC00001, 0xFFC00002]  # two distinct NaNs
    y, am = _kernels.maxpool2d_forward(x, (1, 3), 1, 0)
    assert am.item() == 1
    assert y.view(np.uint32).item() == 0xFFC00002


def test_padding_never_wins():
    # All inputs negative or -inf: the zero/-inf padding must never be chosen.
    for fill in (-5.0, -np.inf):
        x = np.full((1, 2, 5, 4), fill, dtype=np.float32)
        y, am = _kernels.maxpool2d_forward(x, 3, 1, 1)
        assert np.all(y == fill)
        dy = np.ones_like(y)
        # Backward accepts every index (none on padding) and routes it to x.
        dx = _kernels.maxpool2d_backward(dy, am, x.shape, 3, 1, 1)
        assert dx.sum() == y.size
        # Each argmax is the first real element of its window (PyTorch's start).
        oy, ox = np.meshgrid(np.arange(5), np.arange(4), indexing="ij")
        first = np.maximum(1 - oy, 0) * 3 + np.maximum(1 - ox, 0)
        np.testing.assert_array_equal(am[0, 0], first)


def test_neg_inf_window_with_padding_points_inside():
    x = np.full((1, 1, 3, 3), -np.inf, dtype=np.float32)
    y, am = _kernels.maxpool2d_forward(x, 3, 1, 1)
    np.testing.assert_array_equal(am[0, 0], [[4, 3, 3], [1, 0, 0], [1, 0, 0]])
    assert np.all(y == -np.inf)


def test_backward_sums_overlapping_windows():
    # 3x3 stride 1 over a single peak: every window picks it, dx sums all dy.
    x = np.zeros((1, 1, 4, 4), dtype=np.float32)
    x[0, 0, 1, 2] = 1.0
    y, am = _kernels.maxpool2d_forward(x, 3, 1, 1)
    dy = np.arange(1, 17, dtype=np.float32).reshape(1, 1, 4, 4)
    dx = _kernels.maxpool2d_backward(dy, am, x.shape, 3, 1, 1)
    hit = y[0, 0] == 1.0
    assert dx[0, 0, 1, 2] == dy[0, 0][hit].sum()
    np.testing.assert_allclose(dx, reference.maxpool2d_backward(dy, am, x.shape, 3, 1, 1))


# ---------------------------------------------------------------------------
# against PyTorch

def torch_pool(x, kernel, stride, padding, dy, channels_last=False, dilation=1, ceil_mode=False):
    """PyTorch's values, our within-window argmax (tap index), and dx by autograd."""
    t = torch.from_numpy(x.copy())
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    t.requires_grad_(True)
    y, flat = torch.nn.functional.max_pool2d(t, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    y.backward(torch.from_numpy(dy))
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pair(kernel), _pair(stride), _pair(padding), _pair(dilation)
    oh, ow = y.shape[2:]
    flat = flat.numpy()
    iy, ix = flat // x.shape[3], flat % x.shape[3]
    wy, ry = np.divmod(iy - (np.arange(oh)[:, None] * sh - ph), dh)
    wx, rx = np.divmod(ix - (np.arange(ow)[None, :] * sw - pw), dw)
    assert np.all((wy >= 0) & (wy < kh) & (wx >= 0) & (wx < kw) & (ry == 0) & (rx == 0))
    return y.detach().numpy(), wy * kw + wx, t.grad.numpy()


TORCH_CASES = [
    ((2, 3, 8, 8), 2, 2, 0),
    ((1, 2, 13, 11), 3, 2, 1),
    ((3, 2, 7, 17), (2, 5), (1, 3), (1, 2)),
    ((1, 4, 10, 9), (3, 3), 1, 1),
    ((2, 1, 5, 29), (1, 4), (3, 5), (0, 2)),
    ((1, 1, 20, 21), (16, 17), (3, 4), (8, 8)),  # int32 argmax
    ((4, 16, 28, 28), 2, 2, 0),
]


@needs_torch
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,kernel,stride,padding", TORCH_CASES)
def test_matches_torch(rng, shape, kernel, stride, padding, mode, channels_last):
    x = make_input(rng, shape, mode)
    y, am = _kernels.maxpool2d_forward(x, kernel, stride, padding)
    dy = rand(rng, *y.shape)
    y_t, am_t, dx_t = torch_pool(x, kernel, stride, padding, dy, channels_last)
    np.testing.assert_array_equal(bits(y), bits(y_t))
    np.testing.assert_array_equal(am, am_t)
    dx = _kernels.maxpool2d_backward(dy, am, x.shape, kernel, stride, padding)
    np.testing.assert_allclose(dx, dx_t, rtol=1e-5, atol=1e-6)


@needs_torch
@settings(max_examples=30)
@given(case=pool_cases())
def test_matches_torch_random_geometry(case):
    shape, kernel, stride, padding, mode, seed = case
    rng = np.random.default_rng(seed)
    x = make_input(rng, shape, mode)
    y, am = _kernels.maxpool2d_forward(x, kernel, stride, padding)
    dy = rand(rng, *y.shape)
    y_t, am_t, dx_t = torch_pool(x, kernel, stride, padding, dy)
    np.testing.assert_array_equal(bits(y), bits(y_t))
    np.testing.assert_array_equal(am, am_t)
    dx = _kernels.maxpool2d_backward(dy, am, x.shape, kernel, stride, padding)
    np.testing.assert_allclose(dx, dx_t, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# dilation and ceil_mode (the general loop; PyTorch's output size and windows)

def torch_size(size, k, s, p, d, ceil_mode):
    """PyTorch's pooling_output_shape, for the test's own arithmetic."""
    span = d * (k - 1) + 1
    out = (size + 2 * p - span + (s - 1 if ceil_mode else 0)) // s + 1
    return out - 1 if ceil_mode and (out - 1) * s >= size + p else out


def some_window_is_padding(size, k, s, p, d, out):
    """A window whose taps all miss the input (refused: PyTorch's -inf with an outside index)."""
    return any(all(not 0 <= o * s - p + i * d < size for i in range(k)) for o in range(out))


@st.composite
def option_cases(draw):
    """(x shape, kernel, stride, padding, options, mode, seed): any dilation and ceil_mode with a
    valid geometry, inputs as small as one pixel, as large as several windows."""
    shape, kernel, stride, padding, mode, seed = draw(pool_cases())
    kh, kw = _pair(kernel)
    dh, dw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ceil_mode = draw(st.booleans())
    h = draw(st.integers(1, dh * (kh - 1) + 8))
    w = draw(st.integers(1, dw * (kw - 1) + 8))
    assume(pool_sizes((1, 1, h, w), kernel, stride, padding, (dh, dw), ceil_mode))
    dilation = (dh, dw) if dh != dw or draw(st.booleans()) else dh
    return shape[:2] + (h, w), kernel, stride, padding, dict(dilation=dilation, ceil_mode=ceil_mode), mode, seed


@FIXTURE_OK
@given(case=option_cases())
def test_options_match_reference(isa_threads, case):
    shape, kernel, stride, padding, options, mode, seed = case
    rng = np.random.default_rng(seed)
    check_native_vs_reference(make_input(rng, shape, mode), kernel, stride, padding, rng, **options)


@needs_torch
@settings(max_examples=60)
@given(case=option_cases())
def test_options_match_torch(case):
    """Values bit for bit, argmax as torch's indices, dx as torch's autograd."""
    shape, kernel, stride, padding, options, mode, seed = case
    rng = np.random.default_rng(seed)
    x = make_input(rng, shape, mode)
    y, am = _kernels.maxpool2d_forward(x, kernel, stride, padding, **options)
    dy = rand(rng, *y.shape)
    y_t, am_t, dx_t = torch_pool(x, kernel, stride, padding, dy, **options)
    np.testing.assert_array_equal(bits(y), bits(y_t))
    np.testing.assert_array_equal(am, am_t)
    dx = _kernels.maxpool2d_backward(dy, am, x.shape, kernel, stride, padding, **options)
    np.testing.assert_allclose(dx, dx_t, rtol=1e-5, atol=1e-6)


# Every option combination on batch 1, odd and non-square inputs, a uint8/int32 boundary, the
# 2x2 stride-2 geometry whose ceil_mode on an odd size leaves the row kernels, and a parallel plane.
OPTION_SHAPES = [
    ((1, 1, 5, 5), 2, 2, 1),          # ceil_mode: the last window would start in the bottom padding
    ((1, 3, 7, 9), 2, 2, 0),          # odd: ceil_mode adds a clipped last row and column
    ((2, 2, 6, 8), 2, 2, 0),          # even: ceil_mode changes nothing
    ((1, 2, 11, 6), (3, 2), (2, 3), (1, 1)),
    ((3, 1, 1, 13), (1, 4), (1, 3), (0, 2)),
    ((1, 1, 4, 3), 4, 3, 0),          # ceil_mode: a window larger than the input (PyTorch allows it)
    ((2, 2, 20, 21), (16, 17), (3, 4), (8, 8)),  # int32 argmax
    ((2, 8, 37, 41), 3, 2, 1),        # 24k elements: the parallel path
]


OPTIONS = [dict(dilation=1, ceil_mode=True), dict(dilation=2, ceil_mode=False), dict(dilation=(3, 1), ceil_mode=True),
           dict(dilation=(1, 2))]


def pool_sizes(shape, kernel, stride, padding, dilation=1, ceil_mode=False):
    """(OH, OW), or None where the options make no valid pool of this input."""
    out = []
    for size, k, s, p, d in zip(shape[2:], _pair(kernel), _pair(stride), _pair(padding), _pair(dilation)):
        o = torch_size(size, k, s, p, d, ceil_mode)
        if o < 1 or some_window_is_padding(size, k, s, p, d, o):
            return None
        out.append(o)
    return tuple(out)


@pytest.mark.parametrize("shape,kernel,stride,padding,options",
                         [g + (o,) for g in OPTION_SHAPES for o in OPTIONS if pool_sizes(*g, **o)], ids=str)
def test_option_shapes(isa_threads, rng, shape, kernel, stride, padding, options):
    x = make_input(rng, shape, "ties")
    y, _ = check_native_vs_reference(x, kernel, stride, padding, rng, **options)
    assert y.shape[2:] == pool_sizes(shape, kernel, stride, padding, **options)
    if torch is not None:
        y_t, _, _ = torch_pool(x, kernel, stride, padding, rand(rng, *y.shape), **options)
        np.testing.assert_array_equal(bits(y), bits(y_t))


@pytest.mark.parametrize("h,k,s,p,want", [(5, 2, 2, 1, 3), (6, 2, 2, 1, 4), (7, 3, 2, 0, 3), (4, 4, 3, 0, 1),
                                         (3, 4, 2, 0, 1), (10, 3, 4, 1, 3), (9, 3, 3, 1, 4), (4, 2, 3, 1, 2)])
def test_ceil_mode_output_size(h, k, s, p, want):
    """Rounded up, except that the last window must start inside the input or the top padding."""
    x = np.zeros((1, 1, h, h), np.float32)
    for f in (_kernels.maxpool2d_forward, reference.maxpool2d_forward):
        assert f(x, k, s, p, ceil_mode=True)[0].shape == (1, 1, want, want)
    assert torch_size(h, k, s, p, 1, True) == want


def test_default_options_are_the_plain_call_bit_for_bit(isa_threads, rng):
    """Spelled out, the defaults take today's paths (the 2x2 row kernels too) with the same bits;
    ceil_mode on even sizes changes nothing."""
    for shape, kernel, stride, padding in [((2, 3, 16, 14), 2, 2, 0), ((1, 2, 9, 7), 3, 2, 1)]:
        x = make_input(rng, shape, "ties")
        y, am = _kernels.maxpool2d_forward(x, kernel, stride, padding)
        for options in (dict(dilation=1, ceil_mode=False), dict(dilation=(1, 1), ceil_mode=kernel == 2)):
            y2, am2 = _kernels.maxpool2d_forward(x, kernel, stride, padding, **options)
            np.testing.assert_array_equal(bits(y2), bits(y))
            np.testing.assert_array_equal(am2, am)
            dy = rand(rng, *y.shape)
            np.testing.assert_array_equal(
                bits(_kernels.maxpool2d_backward(dy, am, x.shape, kernel, stride, padding, **options)),
                bits(_kernels.maxpool2d_backward(dy, am, x.shape, kernel, stride, padding)))


def test_dilated_window_of_neg_inf_points_at_its_first_real_tap():
    # 3x3 taps 2 apart, padding 1: the top-left window's first real tap is (1, 1), index 4
    x = np.full((1, 1, 5, 5), -np.inf, np.float32)
    y, am = _kernels.maxpool2d_forward(x, 3, 1, 1, dilation=2)
    np.testing.assert_array_equal(am, reference.maxpool2d_forward(x, 3, 1, 1, dilation=2)[1])
    assert am[0, 0, 0, 0] == 4 and am[0, 0, 1, 1] == 0 and np.all(y == -np.inf)
    dx = _kernels.maxpool2d_backward(np.ones_like(y), am, x.shape, 3, 1, 1, dilation=2)
    assert dx.sum() == y.size  # every index lands on the input


# ---------------------------------------------------------------------------
# bad input

F32 = np.zeros((1, 2, 6, 6), dtype=np.float32)


@pytest.mark.parametrize("x,kwargs,exc,match", [
    (F32.astype(np.float64), {}, TypeError, r"`x` must be a float32 array; got float64"),
    (F32.astype(np.float16), {}, TypeError, r"`x` must be a float32 array"),
    (F32.tolist(), {}, TypeError, r"`x` must be a float32 numpy array of rank 4; got list"),
    (F32[0], {}, ValueError, r"`x` must have rank 4; got float32 array with shape \(2, 6, 6\)"),
    (F32[None], {}, ValueError, r"`x` must have rank 4"),
    (F32[..., ::2], {}, ValueError, r"`x` must be C-contiguous"),
    (np.zeros((1, 0, 6, 6), np.float32), {}, ValueError, r"non-zero C, H and W"),
    (np.zeros((1, 2, 0, 6), np.float32), {}, ValueError, r"non-zero C, H and W"),
    (F32, {"padding": 2}, ValueError, r"`padding` must be at most half the kernel size \(2, 2\); got \(2, 2\)"),
    (F32, {"kernel": 3, "padding": (1, 2)}, ValueError, r"`padding` must be at most half"),
    (F32, {"padding": -1}, ValueError, r"`padding` must be >= 0"),
    (F32, {"kernel": 7}, ValueError, r"kernel height 7 is larger than the padded input height 6 \+ 2\*0 = 6"),
    (F32, {"kernel": (2, 9), "padding": (0, 1)}, ValueError, r"kernel width 9 is larger than the padded input width"),
    (F32, {"kernel": 0}, ValueError, r"`kernel` must be >= 1"),
    (F32, {"stride": 0}, ValueError, r"`stride` must be >= 1; got \(0, 0\)"),
    (F32, {"stride": (1, 0)}, ValueError, r"`stride` must be >= 1"),
    (F32, {"stride": -2}, ValueError, r"`stride` must be >= 1"),
    (F32, {"kernel": 2.0}, TypeError, r"`kernel` must be an int or an \(h, w\) pair of ints"),
    (F32, {"kernel": True}, TypeError, r"`kernel` must be an int or an \(h, w\) pair"),
    (F32, {"stride": (1, 2, 3)}, TypeError, r"`stride` must be an int or an \(h, w\) pair"),
    (F32, {"padding": None}, TypeError, r"`padding` must be an int or an \(h, w\) pair"),
    (F32, {"dilation": 0}, ValueError, r"`dilation` must be >= 1; got \(0, 0\)"),
    (F32, {"dilation": (1, -2)}, ValueError, r"`dilation` must be >= 1; got \(1, -2\)"),
    (F32, {"dilation": 1.5}, TypeError, r"`dilation` must be an int or an \(h, w\) pair"),
    (F32, {"kernel": 3, "dilation": 3}, ValueError,
     r"kernel height 3 at dilation 3 \(spanning 7\) is larger than the padded input height 6"),
    (F32, {"kernel": 9, "stride": 3, "ceil_mode": True}, ValueError,
     r"kernel height 9 is larger than the padded input height 6 \+ 2\*0 = 6 by more than stride - 1 = 2"),
    (F32, {"ceil_mode": 1}, TypeError, r"`ceil_mode` must be a bool; got 1"),
    (F32, {"ceil_mode": None}, TypeError, r"`ceil_mode` must be a bool"),
    (np.zeros((1, 1, 2, 2), np.float32), {"kernel": 2, "stride": 1, "padding": 1, "dilation": 3}, ValueError,
     r"window 0 along the height holds only padding \(input height 2, padding 1, stride 1, `dilation` 3\)"),
])
def test_forward_bad_input(x, kwargs, exc, match):
    args = {"kernel": 2, "stride": 2, "padding": 0, **kwargs}
    with pytest.raises(exc, match=match):
        _kernels.maxpool2d_forward(x, **args)


@pytest.fixture
def pooled(rng):
    x = rand(rng, 2, 3, 7, 9)
    y, am = _kernels.maxpool2d_forward(x, 3, 2, 1)  # out (2, 3, 4, 5)
    return x, rand(rng, *y.shape), am


def test_backward_bad_dy(pooled):
    x, dy, am = pooled
    def call(d):
        return _kernels.maxpool2d_backward(d, am, x.shape, 3, 2, 1)

    with pytest.raises(TypeError, match=r"`dy` must be a float32 array; got float64"):
        call(dy.astype(np.float64))
    with pytest.raises(ValueError, match=r"`dy` must have rank 4"):
        call(dy[0])
    with pytest.raises(ValueError, match=r"`dy` must have shape \(2, 3, 4, 5\); got \(2, 3, 4, 4\)"):
        call(np.ascontiguousarray(dy[..., :4]))
    with pytest.raises(ValueError, match=r"`dy` must be C-contiguous"):
        call(np.asfortranarray(dy))


def test_backward_bad_argmax(pooled):
    x, dy, am = pooled
    def call(a):
        return _kernels.maxpool2d_backward(dy, a, x.shape, 3, 2, 1)

    with pytest.raises(TypeError, match=r"`argmax` must be a uint8 array for kernel \(3, 3\); got int32"):
        call(am.astype(np.int32))
    with pytest.raises(TypeError, match=r"`argmax` must be a uint8 array .* got int64"):
        call(am.astype(np.int64))
    with pytest.raises(TypeError, match=r"`argmax` must be a uint8 array .* got list"):
        call(am.tolist())
    with pytest.raises(ValueError, match=r"`argmax` must have shape \(2, 3, 4, 5\); got \(2, 3, 4, 4\)"):
        call(np.ascontiguousarray(am[..., :4]))
    with pytest.raises(ValueError, match=r"`argmax` must have shape \(2, 3, 4, 5\); got \(120,\)"):
        call(am.ravel())
    with pytest.raises(ValueError, match=r"`argmax` must be C-contiguous"):
        call(np.asfortranarray(am))


def test_backward_int32_argmax_required_for_big_kernels(rng):
    x = rand(rng, 1, 1, 20, 20)
    y, am = _kernels.maxpool2d_forward(x, 17, 1, 0)
    assert am.dtype == np.int32
    with pytest.raises(TypeError, match=r"`argmax` must be a int32 array for kernel \(17, 17\); got uint8"):
        _kernels.maxpool2d_backward(y, am.astype(np.uint8), x.shape, 17, 1, 0)


@pytest.mark.parametrize("dtype,value,where,count", [
    (np.uint8, 9, (0, 0, 1, 1), 1),     # 3x3 window: 9 is past its end
    (np.uint8, 255, (1, 2, 3, 4), 1),
    (np.uint8, 0, (0, 0, 0, 0), 1),     # top-left window, index 0 is padding
    (np.uint8, 2, (0, 0, 0, 3), 1),     # top row: index 2 is on the top padding row
    (np.uint8, 8, (0, 0, 3, 4), 1),     # bottom-right window: 8 is past x's corner
    (np.uint8, 9, slice(None), 120),    # all of them
])
def test_backward_out_of_window_argmax(pooled, dtype, value, where, count):
    x, dy, am = pooled
    bad = am.copy()
    bad[where] = value
    with pytest.raises(ValueError, match=rf"`argmax` has {count} indices outside their window or on padding"):
        _kernels.maxpool2d_backward(dy, bad, x.shape, 3, 2, 1)


@pytest.mark.parametrize("value", [-1, -2**31, 17 * 17, 2**31 - 1])
def test_backward_out_of_window_int32_argmax(rng, value):
    x = rand(rng, 1, 2, 20, 20)
    y, am = _kernels.maxpool2d_forward(x, 17, 1, 0)
    am[0, 1, 2, 3] = value
    with pytest.raises(ValueError, match=r"`argmax` has 1 indices outside their window"):
        _kernels.maxpool2d_backward(y, am, x.shape, 17, 1, 0)


@pytest.mark.parametrize("x_shape,exc,match", [
    ((2, 3, 7), ValueError, r"`x_shape` must be 4 non-negative ints \(N, C, H, W\); got \(2, 3, 7\)"),
    ((2, 3, 7, 9, 1), ValueError, r"`x_shape` must be 4 non-negative ints"),
    ((-2, 3, 7, 9), ValueError, r"`x_shape` must be 4 non-negative ints"),
    ((2, 3, -7, 9), ValueError, r"`x_shape` must be 4 non-negative ints"),
    (None, TypeError, r"`x_shape` must be a tuple of 4 ints; got None"),
    ((2, 3, "a", 9), TypeError, r"`x_shape` must be a tuple of 4 ints"),
    (7, TypeError, r"`x_shape` must be a tuple of 4 ints"),
    ((2, 0, 7, 9), ValueError, r"non-zero C, H and W"),
    ((2, 3, 7, 8), ValueError, r"`dy` must have shape \(2, 3, 4, 4\); got \(2, 3, 4, 5\)"),
    ((2, 3, 1, 9), ValueError, r"`dy` must have shape"),
    ((2, 3, 7, 1), ValueError, r"`dy` must have shape \(2, 3, 4, 1\); got \(2, 3, 4, 5\)"),
])
def test_backward_bad_x_shape(pooled, x_shape, exc, match):
    _, dy, am = pooled
    with pytest.raises(exc, match=match):
        _kernels.maxpool2d_backward(dy, am, x_shape, 3, 2, 1)


def test_backward_bad_geometry(pooled):
    x, dy, am = pooled
    with pytest.raises(ValueError, match=r"`padding` must be at most half"):
        _kernels.maxpool2d_backward(dy, am, x.shape, 3, 2, 2)
    with pytest.raises(ValueError, match=r"`stride` must be >= 1"):
        _kernels.maxpool2d_backward(dy, am, x.shape, 3, 0, 1)
    with pytest.raises(ValueError, match=r"kernel height 10 is larger than the padded input height"):
        _kernels.maxpool2d_backward(dy, am, x.shape, 10, 2, 1)


def test_backward_takes_the_forwards_options(pooled):
    x, dy, am = pooled  # (2, 3, 7, 9) pooled 3/2/1: (4, 5) either way
    with pytest.raises(ValueError, match=r"`dy` must have shape \(2, 3, 3, 4\); got \(2, 3, 4, 5\)"):
        _kernels.maxpool2d_backward(dy, am, x.shape, 3, 2, 1, dilation=2)
    with pytest.raises(ValueError, match=r"`dilation` must be >= 1"):
        _kernels.maxpool2d_backward(dy, am, x.shape, 3, 2, 1, dilation=0)
    with pytest.raises(TypeError, match=r"`ceil_mode` must be a bool; got 'yes'"):
        _kernels.maxpool2d_backward(dy, am, x.shape, 3, 2, 1, ceil_mode="yes")
    # index 3 is tap (1, 1), 2 rows and columns on at dilation 2: off the input in the windows of
    # the last row and column (8 of 20 per plane, 6 planes)
    y, am2 = _kernels.maxpool2d_forward(x, 2, 2, 1, dilation=2)
    bad = np.full_like(am2, 3)
    with pytest.raises(ValueError, match=r"`argmax` has 48 indices outside their window or on padding"):
        _kernels.maxpool2d_backward(rand(np.random.default_rng(0), *y.shape), bad, x.shape, 2, 2, 1, dilation=2)


def test_backward_huge_x_shape():
    """An x_shape no machine could hold is refused before allocating dx."""
    one = np.zeros((1, 1, 1, 1), dtype=np.float32)
    with pytest.raises(ValueError, match=r"`x_shape` \(1, 1, 33554432, 33554432\) has more than \d+ elements"):
        _kernels.maxpool2d_backward(one, one.astype(np.uint8), (1, 1, 2**25, 2**25), 1, 2**26, 0)


# -- Sequential: ReLU then MaxPool2d masks the pooled gradient (ReLU.mask) ----------------------------

def _relu_pool_input(rng, shape):
    """Signs mixed, with exact zeros, ties and a NaN, so every branch of both masks is taken."""
    x = rng.standard_normal(shape).astype(np.float32)
    x[rng.random(shape) < 0.2] = 0.0
    x[..., 0, 1] = x[..., 0, 0]
    x.flat[3] = np.nan
    return x


@pytest.mark.parametrize("kernel, stride, padding, options", [
    (2, 2, 0, {}), (3, 2, 1, {}), (3, 1, 1, {}), ((2, 3), (1, 2), (1, 0), {}),
    (2, 2, 0, dict(ceil_mode=True)), (3, 2, 1, dict(dilation=2, ceil_mode=True)), (2, 1, 1, dict(dilation=(1, 3)))],
    ids=str)
def test_sequential_relu_pool_backward_is_bitwise_the_unfused_one(isa_threads, rng, kernel, stride, padding, options):
    """Also with dilation and ceil_mode: the winner's ReLU output is still the pooled output."""
    import fastconv as fc
    x = _relu_pool_input(rng, (3, 4, 9, 7))
    relu, pool = fc.ReLU(), fc.MaxPool2d(kernel, stride, padding, **options)
    y = pool(relu(x))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx_apart = relu.backward(pool.backward(dy))
    model = fc.Sequential(fc.ReLU(), fc.MaxPool2d(kernel, stride, padding, **options))
    np.testing.assert_array_equal(model(x), y)

    def full_size_mask(dy):
        raise AssertionError("the ReLU's full-size backward ran; the pooled gradient should be masked")
    model[0].backward = full_size_mask
    dx = model.backward(dy)
    assert (dx == 0).mean() > 0.5 and np.isnan(x).any()  # the masks did work
    np.testing.assert_array_equal(dx.view(np.uint32), dx_apart.view(np.uint32))


def test_sequential_conv_relu_pool_backward_is_the_unfused_one(isa_threads, rng):
    import fastconv as fc
    fc.manual_seed(0)
    layers = [fc.Conv2d(2, 3, 3, padding=1), fc.ReLU(), fc.MaxPool2d(2), fc.Flatten(), fc.Linear(3 * 4 * 3, 5)]
    x = rng.standard_normal((2, 2, 8, 7)).astype(np.float32)
    dy = rng.standard_normal((2, 5)).astype(np.float32)
    h = x
    for m in layers:
        h = m(h)
    d = dy
    for m in reversed(layers):
        d = m.backward(d)
    apart = [p.grad.copy() for m in layers for p in m.parameters()]
    for m in layers:
        m.zero_grad()
    model = fc.Sequential(*layers)
    np.testing.assert_array_equal(model(x), h)
    np.testing.assert_array_equal(model.backward(dy), d)
    for p, g in zip(model.parameters(), apart):
        np.testing.assert_array_equal(p.grad, g)
    assert fc.gradcheck(fc.Sequential(fc.ReLU(), fc.MaxPool2d(2)), x).passed
