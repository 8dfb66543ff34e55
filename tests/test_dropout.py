"""Dropout: keep rate and scale (seeded, statistically), the backward through
the same mask, identity in eval and for p = 0, zeros for p = 1, special
values without warnings, PyTorch's conventions (skipped without torch), and
bad arguments."""

import warnings

import numpy as np
import pytest
from conftest import rand

import fastconv as fc
from fastconv.nn.dropout import Dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_keep_rate_and_scale(p):
    fc.manual_seed(123)
    n = 200_000
    y = Dropout(p)(np.ones(n, np.float32))
    kept = y != 0
    # The kept count is Binomial(n, 1 - p): within 5 standard deviations.
    assert abs(kept.sum() - n * (1 - p)) < 5 * np.sqrt(n * p * (1 - p))
    assert np.all(y[kept] == np.float32(1) / np.float32(1 - p))  # scale rounded to float32, then applied
    assert abs(y.mean() - 1.0) < 5 * np.sqrt(p / (1 - p) / n)  # the expectation is preserved


def test_seeded_masks_repeat_and_fresh_each_call(rng):
    x = rand(rng, 64, 32)
    d = Dropout(0.5)
    fc.manual_seed(7)
    a, b = d(x), d(x)
    fc.manual_seed(7)
    np.testing.assert_array_equal(d(x), a)
    assert not np.array_equal(a != 0, b != 0)


def test_backward_uses_the_forward_mask(rng):
    x, dy = rand(rng, 8, 9), rand(rng, 8, 9)
    d = Dropout(0.3)
    y = d(x)
    dx = d.backward(dy)
    mask = (y != 0) / np.float32(0.7)
    np.testing.assert_array_equal(dx, dy * mask.astype(np.float32))
    np.testing.assert_array_equal(y, x * mask.astype(np.float32))


def test_gradcheck_with_a_fixed_mask(rng):
    d = Dropout(0.4)

    def f(x):  # reseeding makes every forward draw the same mask
        fc.manual_seed(0)
        return d(x), d.backward

    result = fc.gradcheck(f, rand(rng, 3, 4, 5))
    assert result.passed, str(result)
    d.eval()
    assert fc.gradcheck(d, rand(rng, 3, 4)).passed


def test_eval_and_p0_are_identity(rng):
    x, dy = rand(rng, 4, 5), rand(rng, 4, 5)
    for d in (Dropout(0.5).eval(), Dropout(0.0)):
        assert d(x) is x
        assert d.backward(dy) is dy


def test_p1_zeroes_everything_nan_stays(rng):
    x = rand(rng, 3, 4)
    x[0, 0], x[1, 1] = np.nan, np.inf
    d = Dropout(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = d(x)
        dx = d.backward(np.ones_like(x))
    assert np.isnan(y[0, 0]) and np.isnan(y[1, 1])  # NaN * 0 and inf * 0, as PyTorch
    assert not np.delete(y.ravel(), [0, 5]).any() and not dx.any()


def test_no_warnings_for_special_values(rng):
    x = np.array([np.inf, -np.inf, np.nan, 3e38, -3e38, 1.0] * 50, np.float32)
    d = Dropout(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inf * 0 and 3e38 * 2 are IEEE results, not warnings
        y, dx = d(x), d.backward(x)
    assert y.dtype == dx.dtype == np.float32 and np.isinf(y).any()


def test_float64_under_reference_backend(rng):
    previous = fc.get_backend()
    fc.set_backend("reference")
    try:
        x = rand(rng, 100).astype(np.float64)
        y = Dropout(0.25)(x)
        kept = y != 0
        assert y.dtype == np.float64 and kept.any()
        np.testing.assert_array_equal(y[kept], x[kept] * (1.0 / 0.75))  # the scale in float64
    finally:
        fc.set_backend(previous)


def test_state_and_repr():
    d = Dropout(0.2)
    assert repr(d) == "Dropout(p=0.2)" and d.state_dict() == {} and list(d.parameters()) == []


# ---------------------------------------------------------------------------
# against PyTorch's conventions (the masks come from different generators)

def test_matches_torch_conventions():
    torch = pytest.importorskip("torch")
    x = np.ones(10_000, np.float32)
    fc.manual_seed(1)
    ours = Dropout(0.3)(x)
    theirs = torch.nn.functional.dropout(torch.from_numpy(x), 0.3, training=True).numpy()
    assert set(np.unique(ours)) == set(np.unique(theirs))  # {0, the same float32 scale}
    special = np.array([np.nan, np.inf, 1.0], np.float32)
    np.testing.assert_array_equal(Dropout(1.0)(special),
                                  torch.nn.functional.dropout(torch.from_numpy(special), 1.0, True).numpy())


# ---------------------------------------------------------------------------
# bad arguments

@pytest.mark.parametrize("p,exc,match", [
    (-0.1, ValueError, r"Dropout: `p` must be a finite number in \[0, 1\]; got -0.1"),
    (1.5, ValueError, r"Dropout: `p` must be a finite number in \[0, 1\]; got 1.5"),
    (float("nan"), ValueError, r"`p` must be a finite number in \[0, 1\]; got nan"),
    ("0.5", TypeError, r"Dropout: `p` must be a real number; got str '0.5'"),
    (True, TypeError, r"Dropout: `p` must be a real number; got bool True"),
])
def test_bad_p(p, exc, match):
    with pytest.raises(exc, match=match):
        Dropout(p)


def test_bad_input(rng):
    d = Dropout()
    with pytest.raises(TypeError, match=r"Dropout: `x` must be a float32 array; got dtype float64"):
        d(np.zeros(3))
    d(rand(rng, 2, 3))
    with pytest.raises(ValueError, match=r"Dropout.backward: `dy` must have the forward output's shape \(2, 3\); got \(3, 2\)"):
        d.backward(rand(rng, 3, 2))
