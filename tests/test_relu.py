"""relu_forward / relu_backward: native kernels against their NumPy twins (on
every ISA x {1, 2} threads, bit for bit), against PyTorch (torch.relu and its
autograd), special values, and input validation."""

import numpy as np
import pytest
from conftest import assert_isas_agree, rand
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastconv import _kernels, reference

try:
    import torch
except ImportError:  # PyTorch comparisons are skipped without it
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

PAR_MIN = 32768  # FC_STREAM_PAR_MIN in csrc/eltwise/activations.c

SPECIAL = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0,
                    1e-45, -1e-45, 1.1754942e-38, -1.1754942e-38,  # subnormals
                    np.finfo(np.float32).max, -np.finfo(np.float32).max], dtype=np.float32)


def bits(a):
    """Bitwise view: NaN payloads and the sign of zero must match too."""
    return np.ascontiguousarray(a).view(np.uint32)


def assert_bits_equal(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    np.testing.assert_array_equal(bits(a), bits(b))


def with_specials(rng, shape):
    """Normals with ~10% of the entries replaced by SPECIAL values."""
    x = np.array(rand(rng, *shape), dtype=np.float32)  # a 0-d array, not a scalar, for ()
    flat = x.reshape(-1)
    hit = rng.random(flat.size) < 0.1
    flat[hit] = rng.choice(SPECIAL, size=int(hit.sum()))
    return x


def check(x, dy):
    y = _kernels.relu_forward(x)
    assert_bits_equal(y, reference.relu_forward(x))
    dx = _kernels.relu_backward(dy, y)
    assert_bits_equal(dx, reference.relu_backward(dy, y))
    assert y is not x and dx is not dy
    return y, dx


SHAPES = [
    (), (0,), (0, 3), (2, 0, 4), (1,), (7,), (15,), (16,), (17,), (33,),
    (3, 5), (2, 3, 4, 5), (1, 1, 1, 1, 1, 9),
    (PAR_MIN - 1,), (PAR_MIN,), (PAR_MIN + 1,), (PAR_MIN + 15,),
    (8, 64, 64), (2, 16, 31, 33),   # just above / below the threshold in 4-D
    (3, 7, 1561),                   # 32781, odd size: a ragged split over threads
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(isa_threads, rng, shape):
    check(with_specials(rng, shape), with_specials(rng, shape))


@pytest.mark.parametrize("threads", (1, 2))
def test_every_isa_gives_the_same_bits(rng, threads):
    """1 to 40 elements reach every vector tail of every ISA's rows, alone and
    as the last thread's share of a split."""
    for size in (*range(1, 41), PAR_MIN + 17, PAR_MIN + 40):
        x, dy = with_specials(rng, (size,)), with_specials(rng, (size,))
        check(x, dy)
        assert_isas_agree(lambda: check(x, dy), threads)


@settings(FIXTURE_OK, max_examples=30)
@given(data=st.data())
def test_matches_reference_any_values(isa_threads, data):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=12))
    floats = st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)
    x = data.draw(hnp.arrays(np.float32, shape, elements=floats))
    dy = data.draw(hnp.arrays(np.float32, shape, elements=floats))
    check(x, dy)


def test_special_values():
    x = SPECIAL
    y = _kernels.relu_forward(x)
    # NaN kept (both signs), negatives -> +0.0, -0.0 kept as -0.0 (x < 0 is false), inf kept.
    expected = np.array([np.nan, -np.nan, np.inf, 0, 0, -0.0, 1, 0, 1e-45, 0,
                         1.1754942e-38, 0, np.finfo(np.float32).max, 0], dtype=np.float32)
    assert_bits_equal(y, expected)
    dy = np.arange(1, x.size + 1, dtype=np.float32)
    dx = _kernels.relu_backward(dy, y)
    # dy passes where y > 0 or y is NaN; zero where y <= 0 (including -0.0).
    passes = ~(y <= 0)
    assert_bits_equal(dx, np.where(passes, dy, np.float32(0)))
    assert passes.tolist() == [True, True, True, False, False, False, True, False,
                               True, False, True, False, True, False]


def test_backward_uses_y_not_dy_sign():
    y = np.array([1.0, 0.0, np.nan, 2.0], dtype=np.float32)
    dy = np.array([-3.0, 5.0, np.nan, np.inf], dtype=np.float32)
    assert_bits_equal(_kernels.relu_backward(dy, y), np.array([-3.0, 0.0, np.nan, np.inf], np.float32))


def test_thread_count_agnostic(rng):
    x, dy = with_specials(rng, (5, 3, 71, 67)), rand(rng, 5, 3, 71, 67)
    old = _kernels.get_num_threads()
    out = []
    try:
        for t in (1, 2):
            _kernels.set_num_threads(t)
            out.append(check(x, dy))
    finally:
        _kernels.set_num_threads(old)
    for a, b in zip(*out):
        assert_bits_equal(a, b)


def test_inputs_not_modified(rng):
    x, dy = with_specials(rng, (PAR_MIN + 3,)), rand(rng, PAR_MIN + 3)
    x0, dy0 = x.copy(), dy.copy()
    y = _kernels.relu_forward(x)
    y0 = y.copy()
    _kernels.relu_backward(dy, y)
    assert_bits_equal(x, x0)
    assert_bits_equal(dy, dy0)
    assert_bits_equal(y, y0)


# ---------------------------------------------------------------------------
# against PyTorch

@needs_torch
@pytest.mark.parametrize("shape", [(14,), (3, 5), (2, 3, 8, 8), (PAR_MIN + 7,), (4, 16, 28, 28)], ids=str)
def test_matches_torch(rng, shape):
    x = with_specials(rng, shape)
    x[(0,) * x.ndim] = np.nan  # at least one NaN and one -0.0
    x.reshape(-1)[-1] = -0.0
    dy = with_specials(rng, shape)
    t = torch.from_numpy(x.copy()).requires_grad_(True)
    y_t = torch.relu(t)
    y_t.backward(torch.from_numpy(dy))
    y = _kernels.relu_forward(x)
    assert_bits_equal(y, y_t.detach().numpy())
    # autograd: dx = dy where relu(x) > 0 or is NaN (threshold_backward on the result)
    assert_bits_equal(_kernels.relu_backward(dy, y), t.grad.numpy())


@needs_torch
def test_matches_torch_special_values():
    t = torch.from_numpy(SPECIAL.copy()).requires_grad_(True)
    y_t = torch.relu(t)
    dy = np.arange(1, SPECIAL.size + 1, dtype=np.float32)
    y_t.backward(torch.from_numpy(dy))
    y = _kernels.relu_forward(SPECIAL)
    assert_bits_equal(y, y_t.detach().numpy())
    assert_bits_equal(_kernels.relu_backward(dy, y), t.grad.numpy())


# ---------------------------------------------------------------------------
# bad input

X = np.zeros((2, 3), dtype=np.float32)


@pytest.mark.parametrize("x,exc,match", [
    (X.astype(np.float64), TypeError, r"relu_forward: `x` must be a float32 array; got float64 array with shape \(2, 3\)"),
    (X.astype(np.int32), TypeError, r"`x` must be a float32 array; got int32"),
    (X.tolist(), TypeError, r"relu_forward: `x` must be a float32 numpy array; got list"),
    (1.5, TypeError, r"`x` must be a float32 numpy array; got float"),
    (None, TypeError, r"`x` must be a float32 numpy array; got NoneType"),
    (X.T, ValueError, r"`x` must be C-contiguous; got non-contiguous float32 array with shape \(3, 2\)"),
    (np.zeros(8, np.float32)[::2], ValueError, r"`x` must be C-contiguous"),
])
def test_forward_bad_input(x, exc, match):
    with pytest.raises(exc, match=match):
        _kernels.relu_forward(x)


@pytest.mark.parametrize("dy,y,exc,match", [
    (X.astype(np.float64), X, TypeError, r"relu_backward: `dy` must be a float32 array; got float64"),
    (X, X.astype(np.float16), TypeError, r"relu_backward: `y` must be a float32 array; got float16"),
    (X, X.tolist(), TypeError, r"`y` must be a float32 numpy array; got list"),
    (None, X, TypeError, r"`dy` must be a float32 numpy array; got NoneType"),
    (X, X.T, ValueError, r"`y` must be C-contiguous"),
    (np.asfortranarray(np.zeros((3, 2), np.float32)), X, ValueError, r"`dy` must be C-contiguous"),
    (X, np.zeros((3, 2), np.float32), ValueError, r"relu_backward: `y` must have shape \(2, 3\); got \(3, 2\)"),
    (X, X.reshape(6), ValueError, r"`y` must have shape \(2, 3\); got \(6,\)"),
    (X, X[:1], ValueError, r"`y` must have shape \(2, 3\); got \(1, 3\)"),
])
def test_backward_bad_input(dy, y, exc, match):
    with pytest.raises(exc, match=match):
        _kernels.relu_backward(dy, y)
