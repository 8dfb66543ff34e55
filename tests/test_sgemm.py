"""sgemm: the packed GEMM (csrc/core/sgemm.c and the micro-kernels) against its
NumPy twin and an exact float64 product, on every ISA x {1, 2} threads, over
shapes that cross the block sizes of the ISA's table; special values, the
BLAS rule for beta == 0, strided views, determinism, and input validation."""

import numpy as np
import pytest
from conftest import rand
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastconv import _kernels, reference

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
EPS = float(np.finfo(np.float32).eps)
TRANS = [(False, False), (True, False), (False, True), (True, True)]
# Keeps a drawn problem to a few milliseconds on the generic kernel; the big
# shapes that cross several block sizes at once are listed in BOUNDARY_SHAPES.
DRAWN_MADDS = 4_000_000


def blocks():
    """The block sizes of the ISA in use (the isa_threads fixture sets it)."""
    return _kernels.gemm_blocksizes()


def operand(rng, rows, cols, pad=0):
    """A float32 (rows, cols) matrix; with pad > 0 a view of the first cols
    columns of a wider array, so its leading dimension exceeds its width."""
    return rand(rng, rows, cols + pad)[:, :cols]


def operands(rng, m, n, k, trans_a, trans_b, pad=0):
    a = operand(rng, *((k, m) if trans_a else (m, k)), pad)
    b = operand(rng, *((n, k) if trans_b else (k, n)), pad)
    return a, b


def exact(a, b, trans_a, trans_b):
    """op(A) @ op(B) in float64, and |op(A)| @ |op(B)| (for the error bound)."""
    a64 = (a.T if trans_a else a).astype(np.float64)
    b64 = (b.T if trans_b else b).astype(np.float64)
    return a64 @ b64, np.abs(a64) @ np.abs(b64)


def tolerance(magnitude, k):
    """Bound on |float32 result - exact|, elementwise, given the magnitude of
    what was summed (|alpha| |op(A)| |op(B)| + |beta| |C|). A k-term float32
    sum has worst-case error below k u times that (Higham, Thm 3.5); rounding
    errors of random data add up like a random walk, so sqrt(k) u is what one
    sees, whatever the blocking or the FMAs. 4 (sqrt(k) + 2) eps leaves a wide
    margin (eps = 2u; the 2 covers the alpha and beta products and the final
    add) while still catching a single wrong or missing term."""
    return 4 * (np.sqrt(k) + 2) * EPS * magnitude + np.finfo(np.float32).tiny


def check(a, b, c=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """Run the native kernel and its twin on copies of the same data and
    compare both with the exact product; return the native result."""
    m, k = a.shape[::-1] if trans_a else a.shape
    n = b.shape[0] if trans_b else b.shape[1]
    c_in = None if c is None else c.copy()
    kw = {"trans_a": trans_a, "trans_b": trans_b, "alpha": alpha, "beta": beta}
    got = _kernels.sgemm(a, b, c, **kw)
    if c is not None:
        assert got is c, "sgemm must write into and return the C it was given"
    twin = reference.sgemm(a, b, None if c_in is None else c_in.copy(), **kw)
    assert got.dtype == np.float32 and got.shape == twin.shape == (m, n)

    prod, magnitude = exact(a, b, trans_a, trans_b)
    want = alpha * prod
    magnitude = abs(alpha) * magnitude
    if beta != 0.0:  # when beta == 0, C is not read (it may hold NaN)
        want = want + beta * c_in.astype(np.float64)
        magnitude = magnitude + abs(beta) * np.abs(c_in.astype(np.float64))
    tol = tolerance(magnitude, k)
    assert np.all(np.isfinite(got)), "non-finite values from finite inputs"
    np.testing.assert_array_less(np.abs(got - want), tol, err_msg="native sgemm vs exact")
    np.testing.assert_array_less(np.abs(twin - want), tol, err_msg="reference sgemm vs exact")
    np.testing.assert_array_less(np.abs(got.astype(np.float64) - twin), 2 * tol,
                                 err_msg="native sgemm vs its twin")
    return got


# ---------------------------------------------------------------------------
# shapes across the block sizes, drawn


def dimension(data, name, register, cache, limit):
    """Small sizes (0 to 3 register tiles), and sizes around the register
    tile and the cache block of the ISA in use (tile +- 1, block +- 1, ...),
    at most limit. k has no register tile: `register` is then just a small
    length to vary around."""
    around = [register - 1, register, register + 1, 2 * register + 1,
              cache - 1, cache, cache + 1, cache + register + 1, 2 * cache + 1]
    choices = st.one_of(st.integers(0, 3 * register),
                        st.sampled_from(sorted({d for d in around if 1 <= d <= limit})))
    return data.draw(choices, label=name)


@FIXTURE_OK
@given(data=st.data())
def test_matches_twin_on_drawn_shapes(isa_threads, data):
    bs = blocks()
    m = dimension(data, "m", bs["mr"], bs["mc"], 4 * bs["mc"])
    n = dimension(data, "n", bs["nr"], bs["nc"], 2 * bs["nc"])
    k = dimension(data, "k", 8, bs["kc"], 4 * bs["kc"])
    if m * n * k > DRAWN_MADDS:  # keep the largest dimension whole, shrink the others
        big = max((m, "m"), (n, "n"), (k, "k"))[1]
        budget = int(np.sqrt(DRAWN_MADDS / max(m, n, k)))
        m, n, k = (d if name == big else min(d, budget) for d, name in ((m, "m"), (n, "n"), (k, "k")))
    trans_a, trans_b = data.draw(st.sampled_from(TRANS), label="trans")
    alpha = data.draw(st.sampled_from([1.0, -1.0, 0.5, 3.0, 0.0]), label="alpha")
    beta = data.draw(st.sampled_from([0.0, 1.0, -0.5, 2.0]), label="beta")
    pad = data.draw(st.sampled_from([0, 0, 1, 7, 32]), label="pad")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    a, b = operands(rng, m, n, k, trans_a, trans_b, pad)
    c = operand(rng, m, n, pad)
    if beta == 0.0:
        c[...] = np.nan  # must be neither read nor propagated
    check(a, b, c, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta)


def boundary_shapes():
    """Shapes that cross several block sizes of the current ISA at once:
    m > MC (several A blocks), n > NC (several B blocks), k > KC (several k
    blocks, beta applied on the first only), with edge tiles everywhere."""
    bs = blocks()
    mr, nr, mc, kc, nc = bs["mr"], bs["nr"], bs["mc"], bs["kc"], bs["nc"]
    return [
        (mc + mr + 1, nr + 1, 2 * kc + 1),
        (mr - 1, nc + nr + 1, kc + 1),
        (2 * mc + 1, 3 * nr - 1, 3 * kc - 1),
        (mc + 1, nc + 1, kc + 1),
    ]


@pytest.mark.parametrize("trans_a, trans_b", TRANS)
def test_matches_twin_across_block_boundaries(isa_threads, rng, trans_a, trans_b):
    for m, n, k in boundary_shapes():
        a, b = operands(rng, m, n, k, trans_a, trans_b, pad=3)
        c = rand(rng, m, n)
        check(a, b, c, trans_a=trans_a, trans_b=trans_b, alpha=0.75, beta=-1.25)


# The im2col GEMMs of the workloads (M, N, K) = (out channels, N * OH * OW,
# C * kh * kw): weight (M, K) @ columns (K, N), with N cut to 4096 and 2048
# for the two largest to keep this file fast. The weight gradients, dy (M, N)
# @ columns (K, N).T, are a tiny C with a long k: see the test after.
IM2COL = [(8, 50176, 25), (16, 12544, 200), (32, 4096, 27), (64, 2048, 288), (128, 2048, 576),
          (16, 16384, 147), (64, 8192, 64)]


@pytest.mark.parametrize("m, n, k", IM2COL)
def test_im2col_shapes(isa_threads, rng, m, n, k):
    a, b = operands(rng, m, n, k, False, False)
    check(a, b)


@pytest.mark.parametrize("m, n, k", [(8, 25, 50176), (16, 200, 12544), (3, 5, 20000), (1, 1, 70000)])
def test_long_reduction_into_a_tiny_c(isa_threads, rng, m, n, k):
    """Weight-gradient shapes: C is tiny and k long (sgemm.c splits k into
    chunks summed in a fixed order). Also with beta != 0, applied once."""
    a, b = operands(rng, m, n, k, False, True)
    check(a, b, trans_b=True)
    check(a, b, rand(rng, m, n), trans_b=True, alpha=-2.0, beta=0.5)


# ---------------------------------------------------------------------------
# BLAS conventions: beta == 0, k == 0, views, memory outside C

@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_beta_zero_never_reads_c(isa_threads, rng, alpha):
    bs = blocks()
    m, n, k = bs["mr"] + 1, bs["nr"] + 1, bs["kc"] + 1
    a, b = operands(rng, m, n, k, False, False)
    for fill in (np.nan, np.inf, -np.inf):
        check(a, b, np.full((m, n), fill, np.float32), alpha=alpha, beta=0.0)


@pytest.mark.parametrize("beta", [0.0, 1.0, -3.0])
def test_empty_sum_scales_c(isa_threads, rng, beta):
    """k == 0: C = beta * C, and exactly zeros when beta == 0, even over NaN."""
    m, n = 5, 7
    a, b = np.empty((m, 0), np.float32), np.empty((0, n), np.float32)
    c = rand(rng, m, n)
    expected = np.zeros((m, n), np.float32) if beta == 0.0 else np.float32(beta) * c
    if beta == 0.0:
        c[...] = np.nan
    got = _kernels.sgemm(a, b, c, alpha=2.0, beta=beta)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(_kernels.sgemm(a, b), np.zeros((m, n), np.float32))


@pytest.mark.parametrize("m, n", [(0, 5), (5, 0), (0, 0)])
def test_empty_c(isa_threads, rng, m, n):
    a, b = rand(rng, m, 3), rand(rng, 3, n)
    assert _kernels.sgemm(a, b).shape == (m, n)
    c = np.empty((m, n), np.float32)
    assert _kernels.sgemm(a, b, c, beta=1.0) is c


def test_beta_one_accumulates(isa_threads, rng):
    """Repeated calls with beta = 1 accumulate, as the weight gradient does."""
    bs = blocks()
    m, n, k = bs["mr"] * 2 + 1, bs["nr"] * 2 + 1, bs["kc"] * 2 + 1
    c = np.zeros((m, n), np.float32)
    total = np.zeros((m, n))
    for _ in range(3):
        a, b = operands(rng, m, n, k, False, False)
        _kernels.sgemm(a, b, c, beta=1.0)
        total += exact(a, b, False, False)[0]
    np.testing.assert_allclose(c, total, rtol=1e-4, atol=1e-3 * np.sqrt(k))


@pytest.mark.parametrize("trans_a, trans_b", TRANS)
def test_strided_c_and_memory_around_it(isa_threads, rng, trans_a, trans_b):
    """C a view inside a larger array: only its m x n elements change (edge
    tiles must not spill into the padding or the rows around)."""
    bs = blocks()
    m, n, k = 2 * bs["mr"] + 1, 2 * bs["nr"] - 1, bs["kc"] + 3
    a, b = operands(rng, m, n, k, trans_a, trans_b, pad=5)
    canvas = np.full((m + 2, n + 2 * bs["nr"]), 7.0, np.float32)
    c = canvas[1:-1, 1:n + 1]
    c[...] = rand(rng, m, n)
    before = canvas.copy()
    check(a, b, c, trans_a=trans_a, trans_b=trans_b, beta=0.5)
    outside = np.ones(canvas.shape, bool)
    outside[1:-1, 1:n + 1] = False
    np.testing.assert_array_equal(canvas[outside], before[outside])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_special_values_propagate_like_the_twin(isa_threads, rng):
    """NaN and infinities in A or B reach exactly the elements of C they
    reach in NumPy: zero padding of edge tiles must not turn inf * 0 into a
    NaN that leaks into real elements."""
    bs = blocks()
    m, n, k = bs["mr"] + 2, bs["nr"] + 3, 2 * bs["kc"] + 5
    a, b = operands(rng, m, n, k, False, False)
    a[1, 3], a[m - 1, k - 1], b[7, n - 1], b[k - 2, 0] = np.inf, -np.inf, np.nan, np.inf
    got = _kernels.sgemm(a, b)
    twin = reference.sgemm(a, b)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(twin))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(twin))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(twin))
    finite = np.isfinite(twin)
    np.testing.assert_allclose(got[finite], twin[finite], rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------------------
# determinism


@pytest.mark.parametrize("m, n, k", [(67, 1001, 777), (8, 25, 50176), (16, 12544, 200)])
def test_deterministic(isa_threads, rng, m, n, k):
    a, b = operands(rng, m, n, k, False, True)
    first = _kernels.sgemm(a, b, trans_b=True)
    for _ in range(2):
        np.testing.assert_array_equal(_kernels.sgemm(a, b, trans_b=True), first)


@pytest.mark.parametrize("m, n, k", [(67, 1001, 777), (8, 25, 50176), (300, 300, 300)])
def test_same_bits_for_any_thread_count(isa_threads, rng, m, n, k):
    """sgemm.c gives every element of C the same sums in the same order
    whatever the thread count (see its header), so results agree bitwise.
    (The fixture picks the ISA and restores the thread count afterwards.)"""
    a, b = operands(rng, m, n, k, False, False)
    results = []
    for threads in (1, 2, 3):
        _kernels.set_num_threads(threads)
        results.append(_kernels.sgemm(a, b))
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


# ---------------------------------------------------------------------------
# input validation (fastconv/_native/gemm.pxi)


def good():
    return np.ones((4, 3), np.float32), np.ones((3, 5), np.float32)


@pytest.mark.parametrize("make, exc, match", [
    (lambda a, b: (a.astype(np.float64), b), TypeError, r"sgemm: `A` must be a float32 array; got float64"),
    (lambda a, b: (a, b.astype(np.float16)), TypeError, r"sgemm: `B` must be a float32 array; got float16"),
    (lambda a, b: (a.tolist(), b), TypeError, r"sgemm: `A` must be a float32 numpy array of rank 2; got list"),
    (lambda a, b: (a[0], b), ValueError, r"sgemm: `A` must have rank 2; got float32 array with shape \(3,\)"),
    (lambda a, b: (a, b[None]), ValueError, r"sgemm: `B` must have rank 2; got float32 array with shape \(1, 3, 5\)"),
    (lambda a, b: (a, b[:2]), ValueError, r"sgemm: inner dimensions must match: op\(A\) is 4x3 but op\(B\) is 2x5"),
    (lambda a, b: (np.ones((4, 6), np.float32)[:, ::2], b), ValueError,
     r"sgemm: `A` must have contiguous rows .* got strides \(24, 8\) for shape \(4, 3\)"),
    (lambda a, b: (a, np.ones((5, 3), np.float32).T), ValueError, r"sgemm: `B` must have contiguous rows"),
    (lambda a, b: (a[::-1], b), ValueError, r"sgemm: `A` must have contiguous rows"),
])
def test_rejects_bad_operands(make, exc, match):
    a, b = make(*good())
    with pytest.raises(exc, match=match):
        _kernels.sgemm(a, b)


def test_rejects_mismatch_under_transposition():
    a, b = good()
    with pytest.raises(ValueError, match=r"op\(A\) is 3x4 but op\(B\) is 3x5 \(trans_a=True, trans_b=False\)"):
        _kernels.sgemm(a, b, trans_a=True)


@pytest.mark.parametrize("make_c, exc, match", [
    (lambda: np.zeros((4, 6), np.float32), ValueError, r"sgemm: `C` must have shape \(4, 5\); got \(4, 6\)"),
    (lambda: np.zeros((5, 4), np.float32), ValueError, r"sgemm: `C` must have shape \(4, 5\); got \(5, 4\)"),
    (lambda: np.zeros((4, 5)), TypeError, r"sgemm: `C` must be a float32 array; got float64"),
    (lambda: np.zeros(20, np.float32), ValueError, r"sgemm: `C` must have rank 2"),
    (lambda: np.zeros((5, 4), np.float32).T, ValueError, r"sgemm: `C` must have contiguous rows"),
    (lambda: np.zeros((4, 5), np.float32)[:, None, :][:, 0, ::-1], ValueError, r"sgemm: `C` must have contiguous rows"),
])
def test_rejects_bad_c(make_c, exc, match):
    a, b = good()
    with pytest.raises(exc, match=match):
        _kernels.sgemm(a, b, make_c())


def test_rejects_read_only_c():
    a, b = good()
    c = np.zeros((4, 5), np.float32)
    c.flags.writeable = False
    with pytest.raises(ValueError, match=r"sgemm: `C` must be writable; got a read-only array"):
        _kernels.sgemm(a, b, c)


def test_rejects_c_overlapping_an_operand():
    buf = np.zeros((4, 8), np.float32)
    a, c = buf[:, :3], buf[:, 2:7]  # column 2 is in both
    with pytest.raises(ValueError, match=r"sgemm: `C` must not overlap `A` or `B`"):
        _kernels.sgemm(a, np.ones((3, 5), np.float32), c)
    b, c = buf[:3, 3:8], buf[3:4, 3:8]
    assert _kernels.sgemm(np.ones((1, 3), np.float32), b, c) is c  # side by side, disjoint: allowed
    square = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match=r"must not overlap"):
        _kernels.sgemm(square, np.ones((4, 4), np.float32), square)


@pytest.mark.parametrize("beta", [1.0, -0.5, float("nan")])
def test_rejects_beta_without_c(beta):
    a, b = good()
    with pytest.raises(ValueError, match=r"sgemm: `beta` must be 0 when `C` is None; got"):
        _kernels.sgemm(a, b, beta=beta)


def test_rejects_non_numeric_scalars():
    a, b = good()
    with pytest.raises(TypeError, match=r"sgemm: `alpha` must be a real number; got 'two'"):
        _kernels.sgemm(a, b, alpha="two")
    with pytest.raises(TypeError, match=r"sgemm: `beta` must be a real number; got None"):
        _kernels.sgemm(a, b, np.zeros((4, 5), np.float32), beta=None)


def test_accepts_single_row_and_column_views():
    """A one-column or one-row view has contiguous rows whatever its other
    stride (x.T of a (1, n) array is (n, 1) with column stride 4 * n)."""
    rng = np.random.default_rng(0)
    col, row = rand(rng, 1, 6).T, rand(rng, 6, 1).T  # (6, 1) and (1, 6)
    np.testing.assert_allclose(_kernels.sgemm(col, row), col @ row, rtol=1e-6)
    np.testing.assert_allclose(_kernels.sgemm(row, col), row @ col, rtol=1e-5)


def test_reference_rejects_nothing_valid():
    """The twin takes the same valid calls (strided views included)."""
    rng = np.random.default_rng(0)
    a, b = operands(rng, 5, 6, 7, False, False, pad=3)
    np.testing.assert_allclose(_kernels.sgemm(a, b), reference.sgemm(a, b), rtol=1e-5, atol=1e-5)


def misaligned(rows, cols):
    """A C-contiguous float32 array whose data pointer is not 4-byte aligned."""
    raw = np.zeros(rows * cols * 4 + 1, np.uint8)[1:]
    return raw.view(np.float32).reshape(rows, cols)


def test_misaligned_and_mistyped_arguments_are_refused(rng):
    a, b = rand(rng, 3, 4), rand(rng, 4, 5)
    bad = misaligned(3, 4)
    assert not bad.flags.aligned
    with pytest.raises(ValueError, match=r"sgemm: `A` must be aligned"):
        _kernels.sgemm(bad, b)
    with pytest.raises(TypeError, match=r"sgemm: `trans_a` must be a bool; got 1"):
        _kernels.sgemm(a, b, trans_a=1)
    with pytest.raises(TypeError, match=r"sgemm: `alpha` must be a real number; got '2'"):
        _kernels.sgemm(a, b, alpha="2")
