"""Winograd F(2x2, 3x3) in bf16 (conv2d_forward, conv2d_maxpool_forward and
conv2d_backward with precision="bfloat16"): bit for bit against an emulated
twin, on every ISA x {1, 2} threads; within bf16 rounding of float32; its
error against a float64 direct sum within a small factor of bf16 im2col's;
the range guards; the plan.

The twin does what conv/winograd.c does: the float32 transforms of the ISA
tables (adds and subtracts in a fixed order, the same bits on every ISA:
kernels/ref/winograd_impl.h) and of winograd.c (the weights, dW's last
step), then the 16 GEMMs by the reference bf16 GEMM (reference.sgemm,
precision="bfloat16": the native bf16 GEMM's bits), which rounds U and V
(dW: V and Yhat) to bf16 once. The forward's sums run over C per tile, so
its bits are the same at any thread count; dW's run over tiles, cut into
the blocks and threads of winograd.c's plan_dweight, which the twin
follows."""


import numpy as np
import pytest
from conftest import ISAS, assert_bits_equal, conv_algorithm, rand
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv as fc
from fastconv import _kernels, reference

F32 = np.float32
HALF = F32(0.5)
FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)


# ---------------------------------------------------------------------------
# the twin

def tiles_of(oh, ow):
    return (oh + 1) // 2, (ow + 1) // 2


def input_transform(x, padding, th, tw):
    """V = B^T d B of every 4x4 patch d: (16, C, tiles), tiles in (n, ty, tx) order."""
    (ph, pw), (n, c, h, w) = padding, x.shape
    xp = np.zeros((n, c, 2 * th + 2, 2 * tw + 2), F32)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    d = [[xp[:, :, i:i + 2 * th:2, j:j + 2 * tw:2] for j in range(4)] for i in range(4)]
    t = [[d[0][j] - d[2][j] for j in range(4)], [d[1][j] + d[2][j] for j in range(4)],
         [d[2][j] - d[1][j] for j in range(4)], [d[1][j] - d[3][j] for j in range(4)]]
    v = []
    for i in range(4):
        v += [t[i][0] - t[i][2], t[i][1] + t[i][2], t[i][2] - t[i][1], t[i][1] - t[i][3]]
    return np.stack([a.transpose(1, 0, 2, 3).reshape(c, -1) for a in v])


def weight_transform(weight):
    """U = G g G^T of every filter: (16, K, C), as winograd.c's transform_weights."""
    g = weight.astype(F32)
    rows = lambda i: g[:, :, i, :]  # noqa: E731
    t = [rows(0), HALF * ((rows(0) + rows(1)) + rows(2)), HALF * ((rows(0) - rows(1)) + rows(2)), rows(2)]
    u = []
    for i in range(4):
        a, b, c = t[i][..., 0], t[i][..., 1], t[i][..., 2]
        u += [a, HALF * ((a + b) + c), HALF * ((a - b) + c), c]
    return np.stack(u)


def output_transform(m, bias, relu, n, k, th, tw, oh, ow):
    """Y = A^T M A (+ bias, ReLU) of M (16, K, tiles), as the ISA tables' wg_output."""
    m = [p.reshape(k, n, th, tw).transpose(1, 0, 2, 3) for p in m]
    a = [(m[i] + m[4 + i]) + m[8 + i] for i in range(4)]
    c = [(m[4 + i] - m[8 + i]) - m[12 + i] for i in range(4)]
    o = [(a[0] + a[1]) + a[2], (a[1] - a[2]) - a[3], (c[0] + c[1]) + c[2], (c[1] - c[2]) - c[3]]
    y = np.empty((n, k, 2 * th, 2 * tw), F32)
    for e in range(4):
        if bias is not None:
            o[e] = o[e] + bias.astype(F32)[None, :, None, None]
        if relu:
            o[e] = np.where(o[e] < 0, F32(0), o[e])
        y[:, :, e // 2::2, e % 2::2] = o[e]
    return np.ascontiguousarray(y[:, :, :oh, :ow])


def twin_forward(x, weight, bias, padding, relu=False):
    n, _, h, w = x.shape
    k = weight.shape[0]
    oh, ow = h + 2 * padding[0] - 2, w + 2 * padding[1] - 2
    th, tw = tiles_of(oh, ow)
    v, u = input_transform(x, padding, th, tw), weight_transform(weight)
    m = [reference.sgemm(u[xi], v[xi], precision="bfloat16") for xi in range(16)]
    return output_transform(m, bias, relu, n, k, th, tw, oh, ow)


def flipped(weight):
    return np.ascontiguousarray(weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


def twin_dx(weight, dy, padding):
    """dx as the forward convolution of dy with the flipped weights, padding 2 - p."""
    return twin_forward(dy, flipped(weight), None, (2 - padding[0], 2 - padding[1]))


def grad_transform(dy, th, tw):
    """Yhat = A dY A^T of every 2x2 output tile: (16, K, tiles)."""
    n, k, oh, ow = dy.shape
    dyp = np.zeros((n, k, 2 * th, 2 * tw), F32)
    dyp[:, :, :oh, :ow] = dy
    y = [[dyp[:, :, q::2, b::2] for b in range(2)] for q in range(2)]
    z = [[y[q][0], y[q][0] + y[q][1], y[q][0] - y[q][1], -y[q][1]] for q in range(2)]
    out = [None] * 16
    for c in range(4):
        out[c], out[4 + c] = z[0][c], z[0][c] + z[1][c]
        out[8 + c], out[12 + c] = z[0][c] - z[1][c], -z[1][c]
    return np.stack([a.transpose(1, 0, 2, 3).reshape(k, -1) for a in out])


def split_range(total, parts, i):
    """fc_split_range (core/fc_omp.h)."""
    q, r = divmod(total, parts)
    lo = i * q + min(i, r)
    return lo, lo + q + (1 if i < r else 0)


def twin_dweight(x, dy, padding, nthreads):
    """dW by the blocks and threads of winograd.c's plan_dweight: each thread's
    blocks summed by the bf16 GEMM into its Mw (beta 1 after its first), the
    threads' Mw added in thread order, then G^T Mw G."""
    n, c = x.shape[:2]
    k, (oh, ow) = dy.shape[1], dy.shape[2:]
    th, tw = tiles_of(oh, ow)
    fit = max(1, (128 * 1024) // (16 * (c + k)))
    rows = min(max(1, fit // tw), -(-n * th // max(nthreads, 1)))
    nblocks = -(-n * th // rows)
    team = min(max(nthreads, 1), nblocks)
    v, yhat = input_transform(x, padding, th, tw), grad_transform(dy, th, tw)
    parts = []
    for t in range(team):
        lo, hi = split_range(nblocks, team, t)
        mw = np.zeros((16, c, k), F32)
        for blk in range(lo, hi):
            cols = slice(blk * rows * tw, min(n * th, (blk + 1) * rows) * tw)
            for xi in range(16):
                reference.sgemm(v[xi][:, cols], yhat[xi][:, cols], C=mw[xi], trans_b=True,
                                beta=0.0 if blk == lo else 1.0, precision="bfloat16")
        parts.append(mw)
    m = parts[0].copy()
    for part in parts[1:]:
        m = m + part
    m = [m[xi].T for xi in range(16)]  # (K, C)
    r = [[m[j] + HALF * (m[4 + j] + m[8 + j]), HALF * (m[4 + j] - m[8 + j]),
          HALF * (m[4 + j] + m[8 + j]) + m[12 + j]] for j in range(4)]  # r[j][i]
    g = np.empty((k, c, 3, 3), F32)
    for i in range(3):
        r0, r1, r2, r3 = (r[j][i] for j in range(4))
        g[:, :, i, 0] = r0 + HALF * (r1 + r2)
        g[:, :, i, 1] = HALF * (r1 - r2)
        g[:, :, i, 2] = HALF * (r1 + r2) + r3
    return g


# ---------------------------------------------------------------------------
# bit for bit

@st.composite
def shapes(draw, max_n=3, max_c=40):
    """3x3 unit-stride problems: batch 1 up, odd and even, square and not,
    padding 0 to 2 per side (dx's convolution then pads 2 - p >= 0, so it
    runs Winograd too), channel counts off every vector width."""
    n, c, k = draw(st.integers(1, max_n)), draw(st.integers(1, max_c)), draw(st.integers(1, max_c))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, 3 - 2 * ph), 17))
    w = draw(st.integers(max(1, 3 - 2 * pw), 17))
    return n, c, h, w, k, (ph, pw)


def arrays(shape, seed):
    n, c, h, w, k, (ph, pw) = shape
    rng = np.random.default_rng(seed)
    x, weight, bias = rand(rng, n, c, h, w), rand(rng, k, c, 3, 3, scale=0.3), rand(rng, k)
    dy = rand(rng, n, k, h + 2 * ph - 2, w + 2 * pw - 2)
    return x, weight, bias, dy


def check_all(shape, seed, relu, threads):
    x, weight, bias, dy = arrays(shape, seed)
    padding = shape[5]
    with conv_algorithm("winograd"):
        plan = _kernels.plan_conv2d(x.shape, weight.shape, 1, padding, mode="winograd",
                                    precision="bfloat16")
        assert {plan[d][0] for d in ("forward", "dx", "dweight")} == {"winograd"}, plan
        want = twin_forward(x, weight, bias, padding, relu)
        assert_bits_equal(_kernels.conv2d_forward(x, weight, bias, 1, padding, relu, "bfloat16"), want)
        if min(want.shape[2:]) >= 2:
            got, argmax = _kernels.conv2d_maxpool_forward(x, weight, bias, 1, padding, relu, "bfloat16")
            pooled, want_argmax = reference.maxpool2d_forward(want, 2, 2, 0)
            assert_bits_equal(got, pooled)
            np.testing.assert_array_equal(argmax, want_argmax)
        dx, dw, db = _kernels.conv2d_backward(x, weight, dy, 1, padding, True, "bfloat16")
        assert_bits_equal(dx, twin_dx(weight, dy, padding))
        want_dw = twin_dweight(x, dy, padding, threads)
        assert_bits_equal(dw, want_dw)
        assert_bits_equal(_kernels.conv2d_backward(x, weight, dy, 1, padding, False, "bfloat16")[1],
                          want_dw)
        np.testing.assert_allclose(db, dy.sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5 * dy.size)


@settings(max_examples=15, deadline=None, suppress_health_check=FIXTURE_OK.suppress_health_check)
@given(shape=shapes(), relu=st.booleans(), seed=st.integers(0, 2**16))
def test_same_bits_as_the_twin(isa_threads, shape, relu, seed):
    check_all(shape, seed, relu, isa_threads[1])


# Blocks of tile rows that split an image or hold several; several dW
# blocks per thread; C past one bf16 k block (256); the layers of
# cifar_small and ResNet-20 (batch cut down).
LARGE = [(1, 16, 64, 48, 16, (1, 1)),
         (5, 32, 16, 16, 64, (1, 1)),
         (3, 300, 6, 6, 24, (1, 1)),
         (2, 24, 33, 17, 20, (0, 2)),
         (4, 16, 32, 32, 16, (1, 1)),
         (6, 64, 8, 8, 64, (1, 1))]


@pytest.mark.parametrize("shape", LARGE, ids=str)
def test_larger_problems_same_bits_as_the_twin(isa_threads, shape):
    check_all(shape, 7, True, isa_threads[1])


def test_forward_bits_do_not_depend_on_isa_or_threads():
    """The transforms and the bf16 GEMM give the same bits on every table, and
    the forward's sums run over C per tile: one answer for every ISA and
    thread count (dW's sums over tiles are cut by threads: per thread count)."""
    x, weight, bias, dy = arrays((3, 24, 15, 13, 40, (1, 1)), 3)
    results = {}
    old_isa, old_threads = _kernels.get_isa(), _kernels.get_num_threads()
    try:
        with conv_algorithm("winograd"):
            for isa in ISAS:
                for threads in (1, 2):
                    _kernels.set_isa(isa)
                    _kernels.set_num_threads(threads)
                    results[isa, threads] = (
                        _kernels.conv2d_forward(x, weight, bias, 1, 1, False, "bfloat16"),
                        *_kernels.conv2d_backward(x, weight, dy, 1, 1, True, "bfloat16")[:2])
    finally:
        _kernels.set_isa(old_isa)
        _kernels.set_num_threads(old_threads)
    for (isa, threads), (y, dx, dw) in results.items():
        assert_bits_equal(y, results["generic", 1][0])
        assert_bits_equal(dx, results["generic", 1][1])
        assert_bits_equal(dw, results["generic", threads][2])


# ---------------------------------------------------------------------------
# accuracy

def direct64(x, weight, padding):
    return reference.conv2d_forward(x.astype(np.float64), weight.astype(np.float64), None, 1, padding)


def rms(a):
    return float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))


# bf16 Winograd's RMS error against the float64 direct sum, at most this
# many times bf16 im2col's on the same inputs (measured: 1.65-1.75x, y and dW)
WINOGRAD_BF16_ERROR_FACTOR = 3.0


@pytest.mark.parametrize("shape", [(4, 16, 16, 16, 16, (1, 1)), (2, 64, 8, 8, 64, (1, 1)),
                                   (2, 128, 8, 8, 32, (1, 1)), (1, 33, 11, 9, 17, (0, 2))], ids=str)
def test_error_against_float64_within_a_small_factor_of_im2col(shape):
    """Inputs of unit scale: rounding V and U to bf16 (sums of up to 4 pixels,
    of up to 9 taps) costs about as much as rounding x and w (im2col); the
    transforms' own float32 error is far below bf16's."""
    n, c, h, w, k, padding = shape
    rng = np.random.default_rng(sum(shape[:5]))
    x, weight = rand(rng, n, c, h, w), rand(rng, k, c, 3, 3)
    dy = rand(rng, n, k, h + 2 * padding[0] - 2, w + 2 * padding[1] - 2)
    exact = direct64(x, weight, padding)
    exact_dw = reference.conv2d_backward(x.astype(np.float64), weight.astype(np.float64),
                                         dy.astype(np.float64), 1, padding, need_dx=False)[1]
    out = {}
    for mode in ("winograd", "im2col"):
        with conv_algorithm(mode):
            y = _kernels.conv2d_forward(x, weight, None, 1, padding, False, "bfloat16")
            dw = _kernels.conv2d_backward(x, weight, dy, 1, padding, False, "bfloat16")[1]
            out[mode] = (rms(y - exact), rms(dw - exact_dw))
    for i, what in enumerate(("y", "dW")):
        wino, gemm = out["winograd"][i], out["im2col"][i]
        assert 0 < wino <= WINOGRAD_BF16_ERROR_FACTOR * gemm, (what, wino, gemm)
    # and both far above float32 Winograd's
    with conv_algorithm("winograd"):
        y32 = _kernels.conv2d_forward(x, weight, None, 1, padding)
    assert rms(y32 - exact) < 0.05 * out["winograd"][0]


@pytest.mark.parametrize("shape", LARGE[:3], ids=str)
def test_within_bf16_rounding_of_float32(shape):
    x, weight, bias, dy = arrays(shape, 11)
    padding = shape[5]
    with conv_algorithm("winograd"):
        f32 = (_kernels.conv2d_forward(x, weight, bias, 1, padding, True),
               *_kernels.conv2d_backward(x, weight, dy, 1, padding))
        b16 = (_kernels.conv2d_forward(x, weight, bias, 1, padding, True, "bfloat16"),
               *_kernels.conv2d_backward(x, weight, dy, 1, padding, True, "bfloat16"))
    for name, a, b in zip(("y", "dx", "dW", "db"), f32, b16):
        scale = np.abs(a).max()
        assert np.abs(a - b).max() <= 2e-2 * scale, name
        if name != "db":
            assert np.abs(a - b).max() > 0, name  # bf16 did run


# ---------------------------------------------------------------------------
# the range guards

def test_out_of_range_input_takes_the_next_algorithm(isa_threads):
    """NaN, Inf or values near FLT_MAX in x: forced Winograd in bf16 declines
    (forward, dW) and gives the bf16 bits of the path without it. (dx reads
    w and dy alone: it still runs Winograd.)"""
    rng = np.random.default_rng(5)
    x, weight, bias, dy = arrays((2, 17, 12, 10, 18, (1, 1)), 5)
    for bad in (np.nan, np.inf, -np.inf, 0.3 * np.finfo(np.float32).max):
        xb = x.copy()
        xb.flat[rng.integers(x.size)] = bad
        results = {}
        for mode in ("winograd", "no-winograd"):
            with conv_algorithm(mode):
                results[mode] = (_kernels.conv2d_forward(xb, weight, bias, 1, 1, False, "bfloat16"),
                                 _kernels.conv2d_backward(xb, weight, dy, 1, 1, False, "bfloat16")[1])
        for got, want in zip(results["winograd"], results["no-winograd"]):
            assert_bits_equal(got, want)


def test_large_inputs_in_range_still_run_winograd():
    """Far from FLT_MAX the guard keeps Winograd: scaling x and dy by 2^40
    scales its bits exactly (bf16 rounding commutes with powers of two away
    from the ends of the range)."""
    x, weight, bias, dy = arrays((3, 20, 12, 12, 24, (1, 1)), 9)
    big = F32(2.0**40)
    with conv_algorithm("winograd"):
        y = _kernels.conv2d_forward(x, weight, None, 1, 1, False, "bfloat16")
        dw = _kernels.conv2d_backward(x, weight, dy, 1, 1, False, "bfloat16")[1]
        assert_bits_equal(_kernels.conv2d_forward(x * big, weight, None, 1, 1, False, "bfloat16"), y * big)
        assert_bits_equal(_kernels.conv2d_backward(x * big, weight, dy * big, 1, 1, False, "bfloat16")[1],
                          dw * big * big)
    assert_bits_equal(y, twin_forward(x, weight, None, (1, 1)))


# ---------------------------------------------------------------------------
# the plan

PLAN_SHAPES = [  # x shape, weight shape, padding
    ((128, 16, 32, 32), (16, 16, 3, 3), 1),  # ResNet-20, stage 1
    ((128, 32, 16, 16), (32, 32, 3, 3), 1),
    ((128, 64, 8, 8), (64, 64, 3, 3), 1),
    ((128, 32, 16, 16), (64, 32, 3, 3), 1),  # cifar_small
    ((128, 64, 8, 8), (128, 64, 3, 3), 1),
    ((128, 3, 32, 32), (32, 3, 3, 3), 1),  # C = 3: no Winograd
    ((1, 64, 8, 8), (128, 64, 3, 3), 1),  # 16 tiles: no Winograd
    ((8, 16, 12, 12), (8, 16, 3, 3), 1),  # K = 8: direct in float32, never in bf16
    ((8, 16, 12, 12), (16, 16, 3, 3), 1),  # K = 16: direct in both
]


@pytest.mark.parametrize("shape", PLAN_SHAPES, ids=str)
def test_bf16_winograd_is_planned_where_float32_winograd_is(shape):
    """With U packed once and V rounded into the bf16 kernel's slivers, bf16 Winograd
    measured faster than the bf16 GEMM algorithms (plan.c): auto without direct takes it
    where float32's does, and forcing it runs it wherever forcing float32's does. (Direct,
    first in the table, takes what its rule gives it in either precision:
    tests/test_bf16.py.)"""
    x_shape, w_shape, padding = shape
    for need_dx in (True, False):
        for mode in ("no-direct", "winograd"):
            f32 = _kernels.plan_conv2d(x_shape, w_shape, 1, padding, need_dx=need_dx, mode=mode)
            b16 = _kernels.plan_conv2d(x_shape, w_shape, 1, padding, need_dx=need_dx, mode=mode,
                                       precision="bfloat16")
            for d in ("forward", "dx", "dweight"):
                if f32[d] is None:
                    continue
                assert b16[d][0] not in ("direct", "depthwise"), (mode, d, b16[d])
                assert (f32[d][0] == "winograd") == (b16[d][0] == "winograd"), (mode, d, f32[d], b16[d])


def test_forced_bf16_winograd_runs_the_twins_bits():
    x, weight, bias, dy = arrays((4, 16, 16, 16, 16, (1, 1)), 2)
    assert _kernels.plan_conv2d(x.shape, weight.shape, 1, 1, mode="winograd",
                                precision="bfloat16")["forward"][0] == "winograd"
    with conv_algorithm("winograd"):
        y = _kernels.conv2d_forward(x, weight, bias, 1, 1, False, "bfloat16")
        dx, dw, _ = _kernels.conv2d_backward(x, weight, dy, 1, 1, True, "bfloat16")
    assert_bits_equal(y, twin_forward(x, weight, bias, (1, 1)))
    assert_bits_equal(dx, twin_dx(weight, dy, (1, 1)))
    assert_bits_equal(dw, twin_dweight(x, dy, (1, 1), _kernels.get_num_threads()))


def test_conv_plan_under_autocast_shows_the_bf16_plan():
    model = fc.Sequential(fc.Conv2d(3, 16, 3, padding=1), fc.ReLU(), fc.Conv2d(16, 32, 3, padding=1))
    plain = [row["forward"][0] for row in fc.conv_plan(model, (128, 3, 32, 32))]
    with fc.autocast("bfloat16"):
        b16 = [row["forward"][0] for row in fc.conv_plan(model, (128, 3, 32, 32))]
    explicit = [row["forward"][0] for row in fc.conv_plan(model, (128, 3, 32, 32), precision="bfloat16")]
    assert plain[1] == "winograd" and b16 == explicit
    assert b16 == ["direct", "winograd"]  # K = 16 by bf16 direct; K = 32, C = 16 by Winograd
