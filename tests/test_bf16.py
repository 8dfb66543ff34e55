"""bf16 mixed precision: the rounding, the bf16 GEMM (bit for bit against the C
emulation of vdpbf16ps, the generic ISA's, and against the NumPy twin; within
bf16 rounding of float32), the convolutions in bf16, fc.autocast, and training
under it. Nothing here needs a CPU with AVX512_BF16: where it lacks, the
native path is the emulation, and the tests check the same bits."""

import json
import threading
import warnings

import numpy as np
import pytest
from conftest import ISAS, rand
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv as fc
from fastconv import _kernels, backend, reference

from fastconv import precision as precision_policy

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)


def bits(a):
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def assert_same_bits(got, want):
    """Equal bit patterns, except that any NaN equals any NaN (payloads are not in the contract)."""
    assert got.shape == want.shape and got.dtype == want.dtype == np.float32
    nan_g, nan_w = np.isnan(got), np.isnan(want)
    assert np.array_equal(nan_g, nan_w), "NaN in different places"
    differ = np.flatnonzero((bits(got) != bits(want)) & ~nan_g)
    assert differ.size == 0, (f"{differ.size} of {got.size} elements differ, first at flat index {differ[0]}: "
                              f"{got.flat[differ[0]]!r} vs {want.flat[differ[0]]!r}")


def on_isa(isa, fn, *args, **kwargs):
    """fn(...) with the kernels on `isa`, the previous ISA restored."""
    previous = _kernels.get_isa()
    _kernels.set_isa(isa)
    try:
        return fn(*args, **kwargs)
    finally:
        _kernels.set_isa(previous)


def as_float(h):
    return (np.asarray(h, np.uint16).astype(np.uint32) << 16).view(np.float32)


# ---------------------------------------------------------------------------
# the rounding

# (float32 bits, bf16 bits): round to nearest even, DAZ, NaN quieted, overflow to Inf
EDGES = [
    (0x3F800000, 0x3F80),  # 1.0
    (0x3F808000, 0x3F80),  # tie, even below
    (0x3F818000, 0x3F82),  # tie, even above
    (0x3F808001, 0x3F81),  # just past the tie
    (0x3F807FFF, 0x3F80),  # just before it
    (0xBF818000, 0xBF82),  # negative tie
    (0x00000000, 0x0000), (0x80000000, 0x8000),  # signed zeros
    (0x00000001, 0x0000), (0x80400000, 0x8000),  # denormals to signed zero
    (0x007FFFFF, 0x0000),  # the largest denormal: zero, not the smallest normal it would round to
    (0x00800000, 0x0080),  # the smallest normal
    (0x7F800000, 0x7F80), (0xFF800000, 0xFF80),  # infinities
    (0x7F7F0000, 0x7F7F),  # the largest bf16
    (0x7F7F7FFF, 0x7F7F),  # below its tie
    (0x7F7F8000, 0x7F80),  # its tie rounds to even: Inf
    (0x7F7FFFFF, 0x7F80), (0xFF7FFFFF, 0xFF80),  # FLT_MAX overflows
    (0x7FC00000, 0x7FC0),  # quiet NaN
    (0x7F800001, 0x7FC0),  # signalling NaN with its payload in the low half: NaN, not Inf
    (0xFF800001, 0xFFC0),
    (0x7FFFFFFF, 0x7FFF),  # the NaN with every bit set: its carry must not wrap
]


def test_rounding_edge_cases(isa_threads):
    x = np.array([f for f, _ in EDGES], np.uint32).view(np.float32)
    want = np.array([h for _, h in EDGES], np.uint16)
    assert np.array_equal(_kernels.to_bfloat16(x), want)
    assert np.array_equal(reference.to_bfloat16(x), want)
    assert np.isnan(as_float(_kernels.to_bfloat16(x[np.isnan(x)]))).all()


def test_rounding_matches_its_twin_on_a_sweep_of_bit_patterns(isa_threads):
    # Every 65521th pattern of the 2^32 (a prime stride: all exponents, all low halves),
    # plus the neighbours of every tie: bit patterns 0x....7FFF, 8000, 8001.
    sweep = np.arange(0, 1 << 32, 65521, dtype=np.uint64).astype(np.uint32)
    ties = (sweep & 0xFFFF0000)[:, None] + np.array([0x7FFF, 0x8000, 0x8001], np.uint32)
    x = np.concatenate([sweep, ties.ravel()]).view(np.float32)
    got = _kernels.to_bfloat16(x)
    assert np.array_equal(got, reference.to_bfloat16(x))
    assert got.shape == x.shape and got.dtype == np.uint16
    normal = np.isfinite(x) & (np.abs(x) < 3.3e38) & (np.abs(x) >= np.finfo(np.float32).tiny)
    # Nearest: within half a bf16 ulp (2^-8 relative) of x; denormals to zero.
    err = np.abs(as_float(got[normal]).astype(np.float64) - x[normal]) / np.abs(x[normal])
    assert err.max() <= 2.0 ** -8
    assert not as_float(got[np.abs(x) < np.finfo(np.float32).tiny]).any()


def test_rounding_keeps_shape_and_rejects_bad_input():
    x = rand(np.random.default_rng(0), 3, 1, 5)
    assert _kernels.to_bfloat16(x).shape == (3, 1, 5)
    assert _kernels.to_bfloat16(np.zeros(0, np.float32)).shape == (0,)
    with pytest.raises(TypeError, match=r"to_bfloat16: `x` must be a float32 numpy array; got float64"):
        _kernels.to_bfloat16(np.zeros(3))
    with pytest.raises(ValueError, match=r"to_bfloat16: `x` must be C-contiguous"):
        _kernels.to_bfloat16(np.zeros((4, 4), np.float32)[:, ::2])


# ---------------------------------------------------------------------------
# the bf16 GEMM

def bf16_sgemm(A, B, C=None, **kw):
    return _kernels.sgemm(A, B, None if C is None else C.copy(), precision="bfloat16", **kw)


def check_gemm(A, B, C=None, **kw):
    """Native == generic (the C emulation) == the NumPy twin, bit for bit; returns the result."""
    got = bf16_sgemm(A, B, C, **kw)
    assert_same_bits(got, on_isa("generic", bf16_sgemm, A, B, C, **kw))
    want = reference.sgemm(A, B, None if C is None else C.copy(), precision="bfloat16", **kw)
    assert_same_bits(got, want)
    return got


SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, -3e-39, 3.3e38, -3e38, 1e-30, 1e30],
                   np.float32)


@settings(FIXTURE_OK, max_examples=30)
@given(m=st.integers(1, 40), n=st.integers(1, 70), k=st.integers(1, 600), ta=st.booleans(),
       tb=st.booleans(), alpha=st.sampled_from([1.0, 0.5, -1.7]), beta=st.sampled_from([0.0, 1.0, 0.3]),
       special=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_gemm_same_bits_as_emulation_and_twin(isa_threads, m, n, k, ta, tb, alpha, beta, special, seed):
    rng = np.random.default_rng(seed)
    A = rand(rng, *((k, m) if ta else (m, k)))
    B = rand(rng, *((n, k) if tb else (k, n)))
    if special:  # NaN, Inf, denormals, overflow and underflow of products and sums
        for M in (A, B):
            M.flat[rng.integers(0, M.size, size=max(1, M.size // 50))] = rng.choice(SPECIAL, max(1, M.size // 50))
    C = rand(rng, m, n)
    check_gemm(A, B, C, trans_a=ta, trans_b=tb, alpha=alpha, beta=beta)


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 300, 513), (257, 5, 3), (9, 4100, 17), (300, 70, 1000),
                                   (8, 48, 256), (7, 47, 255), (64, 3, 50000)])
def test_gemm_blocks_edges_and_long_k(isa_threads, m, n, k):
    """Across the register tiles, the cache blocks (NC = 4080 on AVX-512), odd k (the
    padded pair), several k blocks, and a tiny C with a long k (no k split in bf16)."""
    rng = np.random.default_rng(m * 7 + n * 11 + k)
    check_gemm(rand(rng, m, k), rand(rng, k, n))


def test_gemm_within_bf16_rounding_of_float32(isa_threads):
    rng = np.random.default_rng(3)
    for m, n, k in [(33, 65, 700), (5, 200, 31), (128, 128, 128)]:
        A, B = rand(rng, m, k), rand(rng, k, n)
        got = bf16_sgemm(A, B).astype(np.float64)
        exact = A.astype(np.float64) @ B.astype(np.float64)
        # Each operand rounded within 2^-9 relative, products exact, sums in float32.
        bound = (2.0 ** -8 + 2.0 ** -9 + k * 2.0 ** -24) * (np.abs(A).astype(np.float64) @ np.abs(B))
        assert np.all(np.abs(got - exact) <= bound)
        assert np.abs(got - exact).max() > 0  # the rounding is there: this is not float32


def test_gemm_exact_where_bf16_represents_everything(isa_threads):
    """Small integers are bf16 values and their sums are exact in float32: the bf16 GEMM is exact."""
    rng = np.random.default_rng(4)
    A = rng.integers(-8, 9, (37, 300)).astype(np.float32)
    B = rng.integers(-8, 9, (300, 29)).astype(np.float32)
    assert np.array_equal(bf16_sgemm(A, B), A @ B)


def test_gemm_thread_count_does_not_change_the_bits():
    rng = np.random.default_rng(5)
    A, B = rand(rng, 200, 900), rand(rng, 900, 300)
    threads = _kernels.get_num_threads()
    try:
        _kernels.set_num_threads(1)
        one = bf16_sgemm(A, B)
        _kernels.set_num_threads(2)
        assert_same_bits(bf16_sgemm(A, B), one)
    finally:
        _kernels.set_num_threads(threads)


def test_gemm_rejects_a_bad_precision():
    A = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError, match=r"sgemm: `precision` must be one of \('float32', 'bfloat16'\); got 'bf8'"):
        _kernels.sgemm(A, A, precision="bf8")


def test_twin_block_size_is_the_kernels():
    """The twin's bits depend on the k block: it must be the C constant FC_BF16_KC. With
    k = 2 * BF16_KC + 1 an off-by-one block would move the padded pair and the sums' order."""
    rng = np.random.default_rng(6)
    k = 2 * reference.BF16_KC + 1
    A, B = rand(rng, 3, k), rand(rng, k, 5)
    assert_same_bits(bf16_sgemm(A, B), reference.sgemm(A, B, precision="bfloat16"))


# ---------------------------------------------------------------------------
# convolutions in bf16

CONVS = [  # x shape, weight shape, stride, padding
    ((2, 3, 9, 9), (5, 3, 3, 3), 1, 1),
    ((3, 16, 8, 8), (32, 16, 3, 3), 1, 1),  # a Winograd shape in float32
    ((2, 8, 7, 7), (16, 8, 1, 1), 1, 0),  # pointwise; K = 16 is a direct shape in float32
    ((4, 3, 11, 11), (8, 3, 5, 5), 2, 2),  # strided
    ((1, 40, 4, 4), (8, 40, 3, 3), 1, 1),  # batch 1, k = 360 > one block
]


def direct_pays_in_bf16(k, c, kernel, stride):
    """plan.c's direct rule in bf16: K a multiple of 16 up to 128; strided with a kernel
    larger than 1x1, or at unit stride K = 16, or K = 32 but with C < 16 or a kernel
    neither 3x3 nor 1x1. None: it does not apply at all."""
    if k % 16 or k > 128:
        return None
    if stride != 1:
        return kernel != (1, 1)
    return k < 32 or (k == 32 and (c < 16 or kernel not in ((3, 3), (1, 1))))


def test_bf16_plans_direct_by_its_rule_and_winograd_only_where_it_runs():
    """bf16 direct (tests/test_conv2d_direct_bf16.py) takes a forward, and a dx as the
    convolution of dy, by its float32 rule for K a multiple of 16, on every ISA (emulated
    where the CPU has no bf16 instructions), and never dW; bf16 Winograd
    (tests/test_conv2d_winograd_bf16.py) takes the 3x3 stride-1 shapes where forced,
    and under auto where float32's rule pays, which these shapes are too small for (too
    few tiles or channels); a strided dx by phases where forced."""
    for isa in ISAS:
        for x_shape, w_shape, stride, padding in CONVS:
            (k, c), kernel = w_shape[:2], w_shape[2:]
            for mode in ("auto", "direct", "winograd", "polyphase"):
                plan = on_isa(isa, _kernels.plan_conv2d, x_shape, w_shape, stride, padding, mode=mode,
                              precision="bfloat16")
                forced = mode == "direct"
                fwd, dx = direct_pays_in_bf16(k, c, kernel, stride), direct_pays_in_bf16(c, k, kernel, 1)
                if mode in ("auto", "direct"):
                    assert (plan["forward"][0] == "direct") == bool(fwd or (forced and fwd is not None))
                    if stride == 1:
                        assert (plan["dx"][0] == "direct") == bool(dx or (forced and dx is not None))
                gemms = {"pointwise", "implicit_im2col", "im2col", "direct"}
                if mode == "winograd" and kernel == (3, 3) and stride == 1:
                    gemms.add("winograd")
                if mode == "polyphase" and stride != 1:
                    assert plan["dx"][0] == "polyphase"
                    gemms.add("polyphase")
                assert {plan[d][0] for d in ("forward", "dx", "dweight")} <= gemms
                assert plan["dweight"][0] != "direct"
                assert (plan["forward"][0] == "winograd") == ("winograd" in gemms)


@pytest.mark.parametrize("case", range(len(CONVS)))
def test_conv_forward_same_bits_every_algorithm(isa_threads, case):
    x_shape, w_shape, stride, padding = CONVS[case]
    rng = np.random.default_rng(case)
    x, w, b = rand(rng, *x_shape), rand(rng, *w_shape, scale=0.3), rand(rng, w_shape[0])
    want = reference.conv2d_forward(x, w, b, stride, padding, True, "bfloat16")
    previous = _kernels.get_conv_algorithm()
    try:
        # direct has bits of its own in bf16 (tests/test_conv2d_direct_bf16.py)
        for mode in ("no-direct", "im2col", "implicit_im2col", "pointwise"):
            _kernels.set_conv_algorithm(mode)
            assert_same_bits(_kernels.conv2d_forward(x, w, b, stride, padding, True, "bfloat16"), want)
        if want.shape[2] >= 2 and want.shape[3] >= 2:
            y, am = _kernels.conv2d_maxpool_forward(x, w, b, stride, padding, True, "bfloat16")
            wy, wam = reference.maxpool2d_forward(want, 2, 2, 0)
            assert_same_bits(y, wy)
            assert np.array_equal(am, wam)
    finally:
        _kernels.set_conv_algorithm(previous)
    y32 = reference.conv2d_forward(x, w, b, stride, padding, True)
    scale = np.abs(y32).max()
    assert np.abs(want - y32).max() <= 2e-2 * scale and np.abs(want - y32).max() > 0


@pytest.mark.parametrize("case", range(len(CONVS)))
def test_conv_backward_within_bf16_of_float32_and_same_bits_on_every_isa(isa_threads, case):
    x_shape, w_shape, stride, padding = CONVS[case]
    rng = np.random.default_rng(100 + case)
    x, w = rand(rng, *x_shape), rand(rng, *w_shape, scale=0.3)
    y = reference.conv2d_forward(x, w, None, stride, padding)
    dy = rand(rng, *y.shape)
    got = _kernels.conv2d_backward(x, w, dy, stride, padding, True, "bfloat16")
    generic = on_isa("generic", _kernels.conv2d_backward, x, w, dy, stride, padding, True, "bfloat16")
    twin = reference.conv2d_backward(x, w, dy, stride, padding, True, "bfloat16")
    exact = reference.conv2d_backward(x, w, dy, stride, padding)
    for name, g, e, t, f in zip(("dx", "dW", "db"), got, generic, twin, exact):
        assert_same_bits(g, e)
        scale = np.abs(f).max()
        assert np.abs(g - t).max() <= 1e-5 * scale, name  # the same bf16 products, sums cut otherwise
        assert np.abs(g - f).max() <= 2e-2 * scale, name


# the first float32 that rounds to Inf (halfway past bf16's largest, a tie to even), and two more
@pytest.mark.parametrize("big", [np.uint32(0x7F7F8000).view(np.float32), 3.4e38, np.finfo(np.float32).max],
                         ids=str)
def test_conv_dx_with_a_weight_that_rounds_to_inf_keeps_the_twins_pattern(isa_threads, big):
    """A finite float32 weight past bf16's largest value rounds to Inf: dx as
    a convolution would multiply dy's padding zeros by it (NaN), so it takes
    col2im, whose Inf and NaN fall where the twin's do."""
    rng = np.random.default_rng(7)
    x, w = rand(rng, 2, 16, 6, 6), rand(rng, 8, 16, 3, 3, scale=0.1)
    w[0, 0, 0, 0] = np.float32(big)
    assert reference.to_bfloat16(w[0, 0, 0, 0]) == 0x7F80  # rounds to +Inf
    plan = _kernels.plan_conv2d(x.shape, w.shape, 1, 1, precision="bfloat16")
    assert plan["dx"][0] != "im2col" and "if w rounded to bf16 is finite" in plan["dx"][1]
    dy = rand(rng, 2, 8, 6, 6)
    dx = _kernels.conv2d_backward(x, w, dy, 1, 1, True, "bfloat16")[0]
    twin = reference.conv2d_backward(x, w, dy, 1, 1, True, "bfloat16")[0]
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(twin))
    np.testing.assert_array_equal(np.isinf(dx), np.isinf(twin))
    assert np.isinf(dx).any()


def test_conv_kernels_reject_a_bad_precision():
    x, w = np.ones((1, 1, 3, 3), np.float32), np.ones((1, 1, 3, 3), np.float32)
    for call in (lambda: _kernels.conv2d_forward(x, w, None, 1, 1, precision="half"),
                 lambda: _kernels.conv2d_backward(x, w, np.ones((1, 1, 3, 3), np.float32), 1, 1, precision="half"),
                 lambda: _kernels.plan_conv2d(x.shape, w.shape, precision="half")):
        with pytest.raises(ValueError, match=r"`precision` must be one of \('float32', 'bfloat16'\); got 'half'"):
            call()


# ---------------------------------------------------------------------------
# fc.autocast

def test_autocast_nests_and_restores():
    assert fc.get_autocast_dtype() == "float32"
    with fc.autocast("bfloat16"):
        assert fc.get_autocast_dtype() == "bfloat16"
        with fc.autocast("float32"):
            assert fc.get_autocast_dtype() == "float32"
        with fc.autocast("bf16", enabled=False):
            assert fc.get_autocast_dtype() == "float32"
        assert fc.get_autocast_dtype() == "bfloat16"
        with pytest.raises(ZeroDivisionError):
            with fc.autocast("float32"):
                1 / 0
        assert fc.get_autocast_dtype() == "bfloat16"
    assert fc.get_autocast_dtype() == "float32"


def test_autocast_same_instance_reentered_and_as_decorator():
    policy = fc.autocast("bfloat16")
    with policy:
        with fc.autocast("fp32"):
            with policy:
                assert fc.get_autocast_dtype() == "bfloat16"
            assert fc.get_autocast_dtype() == "float32"
        assert fc.get_autocast_dtype() == "bfloat16"

    @fc.autocast("bfloat16")
    def inside():
        return fc.get_autocast_dtype()

    assert inside() == "bfloat16" and fc.get_autocast_dtype() == "float32"


def test_autocast_is_per_thread():
    seen, entered, release = {}, threading.Event(), threading.Event()

    def other():
        entered.wait(10)
        seen["other"] = fc.get_autocast_dtype()  # main is inside bf16 meanwhile
        with fc.autocast("bfloat16"):
            seen["other_inside"] = fc.get_autocast_dtype()
        release.set()

    t = threading.Thread(target=other)
    t.start()
    with fc.autocast("bfloat16"):
        entered.set()
        release.wait(10)
        seen["main"] = fc.get_autocast_dtype()
    t.join(10)
    assert seen == {"other": "float32", "other_inside": "bfloat16", "main": "bfloat16"}


def test_autocast_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"autocast: `dtype` must be one of \('bfloat16', 'float32'\).*got 'float16'"):
        fc.autocast("float16")
    with pytest.raises(TypeError, match=r"autocast: `enabled` must be a bool; got 1"):
        fc.autocast("bfloat16", enabled=1)


@pytest.mark.parametrize("isa", _kernels.supported_isas())
def test_autocast_warns_once_where_bf16_is_emulated(isa, monkeypatch):
    monkeypatch.setattr(precision_policy, "_warned", False)
    emulated = on_isa(isa, _kernels.bf16_kernel) == "emulated"
    assert on_isa("generic", _kernels.bf16_kernel) == "emulated"  # the reference table emulates

    def enter():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fc.autocast("bfloat16"):
                pass
        return [w for w in caught if "emulated" in str(w.message)]

    first = on_isa(isa, enter)
    assert len(first) == (1 if emulated else 0)
    if emulated:
        assert issubclass(first[0].category, RuntimeWarning) and repr(isa) in str(first[0].message)
    assert on_isa(isa, enter) == []  # once


def test_info_names_the_bf16_kernel():
    assert fc.info()["bf16_kernel"] == _kernels.bf16_kernel() in ("avx512_bf16", "emulated")


def test_autocast_covers_exactly_the_conv_and_gemm_kernels():
    assert set(precision_policy.AUTOCAST_KERNELS) == {"sgemm", "conv2d_forward", "conv2d_maxpool_forward",
                                              "conv2d_backward"}
    assert set(precision_policy.AUTOCAST_KERNELS) <= set(_kernels.KERNELS)
    with fc.autocast("bfloat16"):
        assert {n: precision_policy.kernel_precision(n) for n in ("sgemm", "relu_forward", "batchnorm_forward")} == \
               {"sgemm": "bfloat16", "relu_forward": None, "batchnorm_forward": None}


def test_linear_under_autocast_is_the_bf16_gemm_and_stays_float32():
    rng = np.random.default_rng(7)
    layer = fc.Linear(300, 7)
    layer.bias.data[:] = rand(rng, 7)
    x, dy = rand(rng, 5, 300), rand(rng, 5, 7)
    with fc.autocast("bfloat16"):
        y = layer(x)
        dx = layer.backward(dy)
    w = layer.weight.data
    assert_same_bits(y, reference.bias_add(reference.sgemm(x, w, trans_b=True, precision="bfloat16"),
                                           layer.bias.data))
    assert_same_bits(dx, reference.sgemm(dy, w, precision="bfloat16"))
    assert_same_bits(layer.weight.grad, reference.sgemm(dy, x, trans_a=True, precision="bfloat16"))
    assert y.dtype == dx.dtype == layer.weight.data.dtype == layer.weight.grad.dtype == np.float32
    y32 = layer(x)  # outside: float32 again
    assert np.abs(y32 - y).max() > 0 and np.allclose(y32, y, rtol=0, atol=2e-2 * np.abs(y32).max())


@pytest.mark.parametrize("backend", ["native", "check"])
def test_conv_net_under_autocast_within_bf16_of_float32(backend):
    rng = np.random.default_rng(8)
    fc.manual_seed(0)
    # Smooth activations and pooling: bf16 moves a ReLU's kink or a max-pool's winner, and
    # with it a whole gradient value to another pixel, which no elementwise bound allows for.
    # The second conv has no bias: before batch norm, its true gradient is zero up to rounding.
    model = fc.Sequential(fc.Conv2d(3, 16, 3, padding=1), fc.Tanh(), fc.AvgPool2d(2),
                          fc.Conv2d(16, 16, 3, padding=1, bias=False), fc.BatchNorm2d(16), fc.Tanh(),
                          fc.Flatten(), fc.Linear(16 * 4 * 4, 10))
    x, dy = rand(rng, 16, 3, 8, 8), rand(rng, 16, 10)

    def run(precision):
        model.zero_grad()
        with fc.autocast(precision):
            y = model(x)
            dx = model.backward(dy)
        return [y, dx] + [p.grad.copy() for p in model.parameters()]

    previous = fc.get_backend()
    fc.set_backend(backend)
    try:
        f32, b16 = run("float32"), run("bfloat16")
    finally:
        fc.set_backend(previous)
    for a, b in zip(f32, b16):
        assert b.dtype == np.float32
        assert np.abs(a - b).max() <= 3e-2 * max(np.abs(a).max(), 1e-6)
    assert any(np.abs(a - b).max() > 0 for a, b in zip(f32, b16))  # bf16 did run


@pytest.mark.parametrize("shape,cout", [((8, 32, 16, 16), 64), ((2, 16, 32, 32), 16), ((4, 64, 8, 8), 128)])
def test_check_backend_accepts_bf16_winograd(shape, cout):
    """Where auto takes bf16 Winograd (it rounds its transformed tiles, the reference x
    and w), the check backend compares within bf16's tolerance, not float32's; a wrong
    answer is still caught."""
    rng = np.random.default_rng(3)
    layer = fc.Conv2d(shape[1], cout, 3, padding=1)
    x = rand(rng, *shape)
    previous = fc.get_backend()
    fc.set_backend("check")
    try:
        with fc.autocast("bfloat16"):
            y = layer(x)
            layer.backward(rand(rng, *y.shape))
    finally:
        fc.set_backend(previous)
    assert backend._mismatch(y, y * (1 + 2.0**-4), loose=True) is not None
    assert backend._mismatch(y, y * (1 + 2.0**-9), loose=True) is None


# ---------------------------------------------------------------------------
# training

def test_training_under_bf16_converges_like_float32():
    data = fc.data.load_digits()
    X, y = data.X[:600], data.y[:600]
    Xt, yt = data.X[1200:], data.y[1200:]
    results = {}
    for precision in ("fp32", "bf16"):
        fc.manual_seed(0)
        model = fc.Sequential(fc.Conv2d(1, 8, 3, padding=1), fc.ReLU(), fc.MaxPool2d(2), fc.Flatten(),
                              fc.Linear(8 * 4 * 4, 10))
        trainer = fc.Trainer(model, fc.SoftmaxCrossEntropy(), fc.SGD(model.parameters(), lr=0.1, momentum=0.9),
                             batch_size=32, seed=0, progress=False, verbose=False, precision=precision)
        history = trainer.fit((X, y), epochs=4)
        results[precision] = (history["train_loss"], trainer.evaluate((Xt, yt))["accuracy"])
        assert all(p.data.dtype == np.float32 for p in model.parameters())
    (loss32, acc32), (loss16, acc16) = results["fp32"], results["bf16"]
    assert loss16[-1] < 0.5 * loss16[0]
    assert acc32 > 0.8 and acc16 >= acc32 - 0.05
    assert loss16 != loss32  # it trained in bf16, not float32


def _accuracy_script():
    """bench/bf16_accuracy.py as a module (it is a script, not part of the package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bf16_accuracy.py"
    if not path.is_file():
        pytest.skip(f"{path} is not here (an installed copy without the repository)")
    spec = importlib.util.spec_from_file_location("bf16_accuracy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bf16_accuracy_script_learns_digits_as_float32_does(tmp_path, capsys):
    """bench/bf16_accuracy.py on a small model and part of the digits: bf16
    learns (far above the 10% of chance) and ends within a few points of the
    float32 run from the same seed, on a test split neither trained on."""
    from fastconv.tools.cli import load_data

    script = _accuracy_script()
    data = load_data("digits", None, 0.1)
    data["train"] = script.subset(data["train"], 600, seed=0)
    results = script.compare(data, "conv8x3p1-relu-pool2-fc10", epochs=5, seed=0)
    acc32, acc16 = (results[p]["test"]["accuracy"] for p in ("fp32", "bf16"))
    assert acc32 > 0.75 and acc16 > 0.75 and abs(acc16 - acc32) <= 0.04  # both 86-87% here
    loss32, loss16 = (results[p]["history"]["train_loss"] for p in ("fp32", "bf16"))
    assert loss16 != loss32 and loss16[-1] < 0.5 * loss16[0]  # it trained in bf16, and learnt
    # The command line: the tables and the JSON of both runs.
    assert script.main(["--arch", "conv8x3p1-relu-pool2-fc10", "--epochs", "1", "--train-images", "200",
                        "--eval-images", "100", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "200 training, 100 validation, 100 test images; 1 epochs, seed 0" in out
    assert "| epoch | fp32 train loss | bf16 train loss | fp32 val acc | bf16 val acc |" in out
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["config"]["train_images"] == 200 and saved["bf16_kernel"] == _kernels.bf16_kernel()
    assert len(saved["bf16"]["history"]["val_accuracy"]) == 1 and 0 <= saved["fp32"]["test"]["accuracy"] <= 1


def test_trainer_rejects_a_bad_precision():
    model = fc.Sequential(fc.Flatten(), fc.Linear(4, 2))
    with pytest.raises(ValueError, match=r"Trainer: `precision` must be one of .*'bf16'.*; got 'half'"):
        fc.Trainer(model, fc.SoftmaxCrossEntropy(), fc.SGD(model.parameters(), lr=0.1), precision="half")


def test_cli_train_precision_bf16(tmp_path, monkeypatch):
    from fastconv.tools import cli

    used = []
    original = backend.kernel_precision
    monkeypatch.setattr(backend, "kernel_precision", lambda name: used.append(original(name)) or used[-1])
    monkeypatch.chdir(tmp_path)
    args = ["train", "--epochs", "1", "--arch", "conv8x3p1-relu-pool2-fc10", "--threads", "1", "--out", "run",
            "--no-progress"]
    assert cli.main(args + ["--precision", "bf16"]) == 0
    assert "bfloat16" in used
    used.clear()
    assert cli.main(args + ["--out", "run32"]) == 0
    assert used and "bfloat16" not in used


def test_to_bfloat16_keeps_a_zero_dimensional_shape():
    x = np.array(1.5, dtype=np.float32)
    assert reference.to_bfloat16(x).shape == _kernels.to_bfloat16(x).shape == ()
    assert reference.to_bfloat16(x) == _kernels.to_bfloat16(x)
