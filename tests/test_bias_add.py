"""bias_add: in place, native against its NumPy twin (every ISA x {1, 2}
threads, bit for bit: each element gets one float add), special values, and
input validation."""

import numpy as np
import pytest
from conftest import assert_bits_equal, assert_isas_agree, bits, rand
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastconv import _kernels, reference

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

PAR_MIN = 32768  # FC_BIAS_PAR_MIN in csrc/eltwise/bias_add.c


def check(y, bias):
    """bias_add on y in place; compare with the twin on a copy."""
    with np.errstate(all="ignore"):  # inf - inf and overflow are part of the test
        expected = reference.bias_add(y.copy(), bias.copy())
    bias0 = bias.copy()
    out = _kernels.bias_add(y, bias)
    assert out is y, "bias_add must return its (modified in place) argument"
    assert_bits_equal(y, expected)
    np.testing.assert_array_equal(bits(bias), bits(bias0))


SHAPES = [
    # rank 2 (Linear): inner == 1 path
    (1, 1), (1, 10), (7, 3), (64, 10), (PAR_MIN - 1, 1), (PAR_MIN, 2), (PAR_MIN + 1, 3),
    (0, 5), (5, 0), (0, 0),
    # rank 4 (Conv2d): one row per (n, c)
    (1, 1, 1, 1), (2, 3, 4, 5), (1, 7, 13, 17), (2, 3, 0, 5), (0, 3, 4, 4),
    (2, 16, 32, 32),               # 32768 elements: exactly the threshold
    (2, 16, 31, 33), (3, 11, 31, 33),  # just below, ragged above
    (128, 8, 1, 1),                # inner == 1 in rank 4
    # other ranks
    (3, 4, 5), (2, 3, 2, 2, 3), (4, 5, 1),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(isa_threads, rng, shape):
    check(rand(rng, *shape), rand(rng, shape[1]))


@settings(FIXTURE_OK, max_examples=30)
@given(data=st.data())
def test_matches_reference_any_values(isa_threads, data):
    shape = data.draw(hnp.array_shapes(min_dims=2, max_dims=5, min_side=0, max_side=9))
    floats = st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)
    y = data.draw(hnp.arrays(np.float32, shape, elements=floats))
    bias = data.draw(hnp.arrays(np.float32, (shape[1],), elements=floats))
    check(y, bias)


def test_special_values():
    y = np.array([[1.0, np.inf, -np.inf, np.nan, -0.0, 0.0, -0.0]], dtype=np.float32)
    bias = np.array([np.nan, -np.inf, -np.inf, 1.0, -0.0, -0.0, 0.0], dtype=np.float32)
    _kernels.bias_add(y, bias)
    expected = np.array([[np.nan, np.nan, -np.inf, np.nan, -0.0, 0.0, 0.0]], dtype=np.float32)
    assert_bits_equal(y, expected)


def test_in_place_rank2_and_rank4(rng):
    for shape in [(6, 4), (2, 4, 3, 5)]:
        y = rand(rng, *shape)
        bias = rand(rng, 4)
        before = y.copy()
        view = y  # the same object, seen from outside
        out = _kernels.bias_add(y, bias)
        assert out is y and np.shares_memory(out, view)
        np.testing.assert_array_equal(view, before + bias.reshape((1, 4) + (1,) * (y.ndim - 2)))


def test_writes_through_a_contiguous_view(rng):
    base = rand(rng, 4, 3, 5, 5)
    part = base[1:3]  # C-contiguous view of the middle of base
    expected = base.copy()
    expected[1:3] += np.arange(3, dtype=np.float32).reshape(1, 3, 1, 1)
    _kernels.bias_add(part, np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal(base, expected)


def test_thread_count_agnostic(rng):
    y0, bias = rand(rng, 4, 9, 37, 41), rand(rng, 9)
    old = _kernels.get_num_threads()
    out = []
    try:
        for t in (1, 2):
            _kernels.set_num_threads(t)
            out.append(_kernels.bias_add(y0.copy(), bias))
    finally:
        _kernels.set_num_threads(old)
    np.testing.assert_array_equal(bits(out[0]), bits(out[1]))


@pytest.mark.parametrize("make_bias", [
    lambda y: y[0],               # the first row of a rank-2 y
    lambda y: y.reshape(-1)[5:8],  # a window in the middle
], ids=["row", "window"])
def test_bias_overlapping_y_is_refused(make_bias):
    # The C loop reads bias while it updates y: an overlap would be read
    # after it has been changed, so the wrapper refuses it.
    y = np.arange(12, dtype=np.float32).reshape(4, 3)
    y0 = y.copy()
    with pytest.raises(ValueError, match=r"bias_add: `bias` must not overlap `y`"):
        _kernels.bias_add(y, make_bias(y))
    np.testing.assert_array_equal(y, y0)


# ---------------------------------------------------------------------------
# bad input

Y = np.zeros((2, 3, 4, 4), dtype=np.float32)
B = np.zeros(3, dtype=np.float32)


def read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("y,bias,exc,match", [
    (Y.astype(np.float64), B, TypeError, r"bias_add: `y` must be a float32 array; got float64 array with shape \(2, 3, 4, 4\)"),
    (Y, B.astype(np.float64), TypeError, r"bias_add: `bias` must be a float32 array; got float64"),
    (Y.tolist(), B, TypeError, r"`y` must be a float32 numpy array; got list"),
    (Y, B.tolist(), TypeError, r"`bias` must be a float32 numpy array of rank 1; got list"),
    (Y, None, TypeError, r"`bias` must be a float32 numpy array of rank 1; got NoneType"),
    (np.zeros(3, np.float32), B, ValueError, r"`y` must have rank >= 2 \(N, C, \.\.\.\); got float32 array with shape \(3,\)"),
    (np.ones((), np.float32), B, ValueError, r"`y` must have rank >= 2"),
    (Y, np.zeros(4, np.float32), ValueError, r"bias_add: `bias` must have shape \(3,\); got \(4,\)"),
    (Y, np.zeros((1, 3), np.float32), ValueError, r"`bias` must have rank 1; got float32 array with shape \(1, 3\)"),
    (Y, np.zeros(6, np.float32)[::2], ValueError, r"`bias` must be C-contiguous"),
    (Y.transpose(0, 1, 3, 2), B, ValueError, r"`y` must be C-contiguous; got non-contiguous"),
    (Y[:, :, ::2], B, ValueError, r"`y` must be C-contiguous"),
    (read_only(Y), B, ValueError, r"bias_add: `y` must be writable; got a read-only array"),
])
def test_bad_input(y, bias, exc, match):
    with pytest.raises(exc, match=match):
        _kernels.bias_add(y, bias)


def test_read_only_bias_is_fine(rng):
    check(rand(rng, 3, 4), read_only(rand(rng, 4)))


# Rows of 1 to 40 elements reach every vector tail of every ISA's rows (16 floats
# and the compiler's unrolling); the (N, C) cases cross the thread split.
TAIL_SHAPES = [(2, 3, n) for n in range(1, 41)] + [(3, n) for n in range(1, 41)] + [(PAR_MIN + 7, 3)]


@pytest.mark.parametrize("threads", (1, 2))
def test_every_isa_gives_the_same_bits(rng, threads):
    for shape in TAIL_SHAPES:
        y, bias = rand(rng, *shape), rand(rng, shape[1])
        check(y.copy(), bias)
        assert_isas_agree(lambda: (_kernels.bias_add(y.copy(), bias),), threads)
