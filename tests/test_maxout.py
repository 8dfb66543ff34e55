"""Maxout: the forward against its definition (the notes' max(w1.x + b1,
w2.x + b2) for two pieces), the backward routed through the winning piece,
gradients by central differences, PyTorch parity (a Linear, a view and a max;
skipped without torch), parameters and state_dict, and bad input."""

import numpy as np
import pytest
from conftest import rand

import fastconv as fc
from fastconv.nn.activations import Maxout


def make(rng, in_features, out_features, pieces):
    m = Maxout(in_features, out_features, pieces)
    m.bias.data[:] = rand(rng, out_features * pieces)
    return m


def test_forward_is_max_of_affine_pieces(rng):
    m = make(rng, 5, 3, 2)
    x = rand(rng, 4, 5)
    w, b = m.weight.data, m.bias.data
    # Unit j's pieces are rows 2j and 2j+1: y = max(w1.x + b1, w2.x + b2).
    expected = np.stack([np.maximum(x @ w[2 * j] + b[2 * j], x @ w[2 * j + 1] + b[2 * j + 1])
                         for j in range(3)], axis=-1)
    np.testing.assert_allclose(m(x), expected, rtol=1e-5, atol=1e-6)


def test_backward_routes_through_the_winning_piece(rng):
    m = Maxout(2, 1, 3)
    m.weight.data[:] = [[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]
    m.bias.data[:] = [0.0, 0.0, 0.5]
    x = np.array([[2.0, 1.0], [0.0, 3.0], [-2.0, -2.0]], np.float32)  # winners: pieces 0, 1, 2
    np.testing.assert_array_equal(m(x)[:, 0], [2.0, 3.0, 4.5])
    dy = np.array([[1.0], [10.0], [100.0]], np.float32)
    dx = m.backward(dy)
    np.testing.assert_array_equal(dx, [[1.0, 0.0], [0.0, 10.0], [-100.0, -100.0]])
    np.testing.assert_array_equal(m.bias.grad, [1.0, 10.0, 100.0])
    np.testing.assert_array_equal(m.weight.grad, [[2.0, 1.0], [0.0, 30.0], [-200.0, -200.0]])


def test_ties_go_to_the_first_piece_and_nan_wins():
    m = Maxout(1, 1, 3)
    m.weight.data[:] = [[0.0], [0.0], [1.0]]
    m.bias.data[:] = [1.0, 1.0, 0.0]
    m(np.array([[0.5]], np.float32))
    m.backward(np.ones((1, 1), np.float32))
    np.testing.assert_array_equal(m.bias.grad, [1.0, 0.0, 0.0])
    m.zero_grad()
    assert np.isnan(m(np.array([[np.nan]], np.float32))).all()  # every piece NaN: piece 0 wins
    m.backward(np.ones((1, 1), np.float32))
    np.testing.assert_array_equal(m.bias.grad, [1.0, 0.0, 0.0])


@pytest.mark.parametrize("shape,out_features,pieces", [((4, 5), 3, 2), ((2, 3, 4), 2, 3), ((6,), 4, 1), ((3, 2), 1, 4)])
def test_gradcheck(rng, shape, out_features, pieces):
    m = make(rng, shape[-1], out_features, pieces)
    result = fc.gradcheck(m, rand(rng, *shape))
    assert result.passed, str(result)


def test_one_piece_is_linear(rng):
    m = make(rng, 4, 3, 1)
    lin = fc.Linear(4, 3)
    lin.weight.data[:], lin.bias.data[:] = m.weight.data, m.bias.data
    x = rand(rng, 5, 4)
    np.testing.assert_allclose(m(x), lin(x), rtol=1e-6)


def test_parameters_and_state_dict():
    m = Maxout(6, 4, 3)
    assert [(k, v.shape) for k, v in m.state_dict().items()] == [("weight", (12, 6)), ("bias", (12,))]
    assert not m.bias.data.any() and 0.3 < m.weight.data.std() * np.sqrt(6 / 2) < 3  # He normal
    assert repr(m) == "Maxout(in_features=6, out_features=4, pieces=3)"
    model = fc.Sequential(Maxout(6, 4, 3), fc.Linear(4, 2))
    assert list(model.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]


def test_matches_torch(rng):
    torch = pytest.importorskip("torch")
    m = make(rng, 7, 5, 3)
    x, dy = rand(rng, 6, 7), rand(rng, 6, 5)
    tx, tw, tb = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (x, m.weight.data, m.bias.data))
    ty = torch.nn.functional.linear(tx, tw, tb).view(6, 5, 3).max(dim=-1).values
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(m(x), ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.backward(dy), tx.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.weight.grad, tw.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.bias.grad, tb.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("args,exc,match", [
    ((0, 3, 2), ValueError, r"Maxout: `in_features` must be >= 1; got 0"),
    ((4, 3, 0), ValueError, r"Maxout: `pieces` must be >= 1; got 0"),
    ((4, 3.0, 2), TypeError, r"Maxout: `out_features` must be an int"),
])
def test_constructor_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        Maxout(*args)


def test_bad_input(rng):
    m = Maxout(4, 3, 2)
    with pytest.raises(ValueError, match=r"Maxout: `x` must have 4 features in its last axis; got shape \(2, 5\)"):
        m(rand(rng, 2, 5))
    with pytest.raises(TypeError, match=r"Maxout: `x` must be a float32 array; got dtype float64"):
        m(np.zeros((2, 4)))
    m(rand(rng, 2, 4))
    with pytest.raises(ValueError, match=r"Maxout.backward: `dy` must have the forward output's shape \(2, 3\); got \(2, 6\)"):
        m.backward(rand(rng, 2, 6))
