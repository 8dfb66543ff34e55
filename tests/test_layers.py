"""Layers: backward against float64 central differences, forward and gradients
against PyTorch, and the errors bad input gets."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastconv as fc
from conftest import rand

# ---------------------------------------------------------------------------
# backward vs central differences (float64, through fc.gradcheck)

CONV_CASES = [  # (N, C, H, W, K, kernel, stride, padding)
    (1, 1, 5, 5, 1, 3, 1, 0),
    (2, 3, 7, 5, 4, (3, 2), (2, 1), (1, 0)),
    (1, 2, 6, 9, 3, 1, 1, 0),
    (2, 2, 5, 4, 2, (5, 4), 1, 0),
    (1, 3, 8, 7, 2, 3, 3, 2),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradcheck(case, rng):
    n, c, h, w, k, kernel, stride, padding = case
    fc.manual_seed(0)
    conv = fc.Conv2d(c, k, kernel, stride=stride, padding=padding)
    conv.bias.data[:] = rand(rng, k)
    result = fc.gradcheck(conv, rand(rng, n, c, h, w))
    assert result.passed, str(result)
    assert result.checked > 0


@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 1)), (3, 1, 0)])
def test_maxpool2d_gradcheck(kernel, stride, padding, rng):
    # Distinct values spaced well beyond the kink distance: no tie within reach.
    x = rng.permutation(2 * 3 * 7 * 6).reshape(2, 3, 7, 6).astype(np.float32) * 0.01
    result = fc.gradcheck(fc.MaxPool2d(kernel, stride, padding), x)
    assert result.passed, str(result)
    assert result.skipped == 0


def test_relu_gradcheck_skips_kinks(rng):
    x = rand(rng, 3, 4, 5)
    x[0, 0, :3] = [0.0, 1e-6, -1e-6]  # at and near the kink
    result = fc.gradcheck(fc.ReLU(), x)
    assert result.passed, str(result)
    assert result.skipped == 3


@pytest.mark.parametrize("shape", [(4, 6), (1, 6), (2, 3, 6)])
def test_linear_gradcheck(shape, rng):
    lin = fc.Linear(6, 5)
    lin.bias.data[:] = rand(rng, 5)
    result = fc.gradcheck(lin, rand(rng, *shape))
    assert result.passed, str(result)


def test_softmax_cross_entropy_gradcheck(rng):
    result = fc.gradcheck(fc.SoftmaxCrossEntropy(), rand(rng, 5, 7, scale=3), y=rng.integers(0, 7, 5))
    assert result.passed, str(result)


def test_sequential_gradcheck(rng):
    fc.manual_seed(1)
    model = fc.Sequential(fc.Conv2d(2, 3, 3, padding=1), fc.ReLU(), fc.MaxPool2d(2),
                          fc.Flatten(), fc.Linear(3 * 3 * 2, 4))
    result = fc.gradcheck(model, rand(rng, 2, 2, 6, 4), max_elements=40)
    assert result.passed, str(result)


def test_gradcheck_catches_a_backward_one_percent_off(rng):
    class Scaled(fc.Linear):
        def backward(self, dy):
            return 1.01 * super().backward(dy)

    result = fc.gradcheck(Scaled(4, 3), rand(rng, 2, 4))
    assert not result.passed
    assert result.max_rel_error > 5e-3
    assert result.worst[0] == "x"


# ---------------------------------------------------------------------------
# against PyTorch, native backend, float32

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _t(a):
    return torch.tensor(a, requires_grad=True)


def _close(ours, theirs, scale=1.0, tol=2e-4):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else theirs
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol * scale)


@given(n=st.integers(1, 3), c=st.integers(1, 4), k=st.integers(1, 5), h=st.integers(1, 11), w=st.integers(1, 11),
       kh=st.integers(1, 5), kw=st.integers(1, 5), sh=st.integers(1, 3), sw=st.integers(1, 3),
       ph=st.integers(0, 3), pw=st.integers(0, 3), bias=st.booleans(), seed=st.integers(0, 2**31))
def test_conv2d_matches_torch(n, c, k, h, w, kh, kw, sh, sw, ph, pw, bias, seed):
    if h + 2 * ph < kh or w + 2 * pw < kw:
        return
    rng = np.random.default_rng(seed)
    conv = fc.Conv2d(c, k, (kh, kw), stride=(sh, sw), padding=(ph, pw), bias=bias)
    if bias:
        conv.bias.data[:] = rand(rng, k)
    x = rand(rng, n, c, h, w)
    y = conv(x)
    dy = rand(rng, *y.shape)
    dx = conv.backward(dy)
    tx, tw = _t(x), _t(conv.weight.data)
    tb = _t(conv.bias.data) if bias else None
    ty = F.conv2d(tx, tw, tb, stride=(sh, sw), padding=(ph, pw))
    ty.backward(torch.tensor(dy))
    scale = np.sqrt(c * kh * kw)
    _close(y, ty, scale)
    _close(dx, tx.grad, np.sqrt(k * kh * kw))
    _close(conv.weight.grad, tw.grad, np.sqrt(n * y.shape[2] * y.shape[3]) * 3)
    if bias:
        _close(conv.bias.grad, tb.grad, np.sqrt(n * y.shape[2] * y.shape[3]) * 3)


@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 10), w=st.integers(1, 10),
       kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 4), sw=st.integers(1, 4),
       ph=st.integers(0, 2), pw=st.integers(0, 2), ties=st.booleans(), seed=st.integers(0, 2**31))
def test_maxpool2d_matches_torch(n, c, h, w, kh, kw, sh, sw, ph, pw, ties, seed):
    if 2 * ph > kh or 2 * pw > kw or h + 2 * ph < kh or w + 2 * pw < kw:
        return
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, (n, c, h, w)).astype(np.float32) if ties else rand(rng, n, c, h, w)
    pool = fc.MaxPool2d((kh, kw), (sh, sw), (ph, pw))
    y = pool(x)
    dy = rand(rng, *y.shape)
    dx = pool.backward(dy)
    tx = _t(x)
    ty = F.max_pool2d(tx, (kh, kw), (sh, sw), (ph, pw))
    ty.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    _close(dx, tx.grad, tol=1e-5)


def test_relu_linear_flatten_cross_entropy_match_torch(rng):
    x = rand(rng, 6, 2, 3, 4)
    lin = fc.Linear(24, 7)
    lin.bias.data[:] = rand(rng, 7)
    relu, flat, ce = fc.ReLU(), fc.Flatten(), fc.SoftmaxCrossEntropy()
    labels = rng.integers(0, 7, 6)
    h = relu(x)
    s = lin(flat(h))
    loss = ce(s, labels)
    dx = relu.backward(flat.backward(lin.backward(ce.backward())))

    tx, tw, tb = _t(x), _t(lin.weight.data), _t(lin.bias.data)
    tloss = F.cross_entropy(F.linear(F.relu(tx).flatten(1), tw, tb), torch.tensor(labels))
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-5)
    _close(dx, tx.grad, tol=1e-5)
    _close(lin.weight.grad, tw.grad, tol=1e-5)
    _close(lin.bias.grad, tb.grad, tol=1e-5)


def test_relu_nan_and_backward_match_torch():
    x = np.array([np.nan, -1.0, 0.0, -0.0, 2.0, np.inf, -np.inf], np.float32)
    relu = fc.ReLU()
    y = relu(x)
    dx = relu.backward(np.ones_like(x))
    tx = _t(x)
    ty = F.relu(tx)
    ty.backward(torch.ones(7))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(dx, tx.grad.numpy())


def test_cross_entropy_stable_for_huge_scores():
    s = np.array([[5000.0, -3000.0, 4990.0], [-1e4, 1e4, 0.0]], np.float32)
    y = np.array([2, 0])
    ce = fc.SoftmaxCrossEntropy()
    loss = ce(s, y)
    ref = F.cross_entropy(torch.tensor(s), torch.tensor(y)).item()
    assert np.isfinite(loss) and loss == pytest.approx(ref, rel=1e-6)
    assert np.all(np.isfinite(ce.backward()))


def test_cross_entropy_sum_reduction_matches_torch(rng):
    s, y = rand(rng, 4, 3), rng.integers(0, 3, 4)
    ce = fc.SoftmaxCrossEntropy(reduction="sum")
    ts = _t(s)
    tl = F.cross_entropy(ts, torch.tensor(y), reduction="sum")
    tl.backward()
    assert ce(s, y) == pytest.approx(tl.item(), rel=1e-5)
    _close(ce.backward(), ts.grad, tol=1e-5)


def test_unbatched_conv_and_pool_match_batched(rng):
    conv, pool = fc.Conv2d(2, 3, 3, padding=1), fc.MaxPool2d(2)
    x = rand(rng, 2, 6, 5)
    y = pool(conv(x))
    assert y.shape == (3, 3, 2)
    dx = conv.backward(pool.backward(np.ones_like(y)))
    assert dx.shape == x.shape
    np.testing.assert_array_equal(y, pool(conv(x[None]))[0])
    np.testing.assert_array_equal(dx, conv.backward(pool.backward(np.ones_like(y)[None]))[0])


def test_non_contiguous_input_is_accepted(rng):
    conv = fc.Conv2d(3, 2, 3)
    x = rand(rng, 2, 8, 8, 3).transpose(0, 3, 1, 2)  # NHWC memory viewed as NCHW
    np.testing.assert_allclose(conv(x), conv(np.ascontiguousarray(x)), rtol=1e-6)


# ---------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("make,x,exc,match", [
    (lambda: fc.Conv2d(3, 4, 3), np.zeros((2, 2, 8, 8), np.float32), ValueError, r"Conv2d: `x` must have 3 channels"),
    (lambda: fc.Conv2d(3, 4, 3), np.zeros((3, 8), np.float32), ValueError, r"Conv2d: `x` must have rank 3 or 4"),
    (lambda: fc.Conv2d(3, 4, 3), np.zeros((1, 3, 8, 8)), TypeError, r"Conv2d: `x` must be a float32 array; got dtype float64"),
    (lambda: fc.Conv2d(3, 4, 3), [[1.0]], TypeError, r"Conv2d: `x` must be a float32 numpy array; got list"),
    (lambda: fc.Conv2d(1, 4, 5), np.zeros((1, 1, 2, 8), np.float32), ValueError, r"kernel size \(5, 5\) is larger than the padded input \(2, 8\)"),
    (lambda: fc.MaxPool2d(3), np.zeros((1, 1, 2, 2), np.float32), ValueError, r"MaxPool2d: kernel size"),
    (lambda: fc.MaxPool2d(2), np.zeros((2, 2), np.float32), ValueError, r"MaxPool2d: `x` must have rank 3 or 4"),
    (lambda: fc.Linear(5, 2), np.zeros((3, 4), np.float32), ValueError, r"Linear: `x` must have 5 features"),
    (lambda: fc.Linear(5, 2), np.zeros((3, 5), np.int64), TypeError, r"Linear: `x` must be a float32 array"),
    (lambda: fc.ReLU(), np.zeros(3, np.float16), TypeError, r"ReLU: `x` must be a float32 array"),
])
def test_layer_errors(make, x, exc, match):
    with pytest.raises(exc, match=match):
        make()(x)


@pytest.mark.parametrize("make,exc,match", [
    (lambda: fc.Conv2d(0, 4, 3), ValueError, r"Conv2d: `in_channels` must be >= 1; got 0"),
    (lambda: fc.Conv2d(3, 4, 3, stride=0), ValueError, r"Conv2d: `stride` must be >= 1; got \(0, 0\)"),
    (lambda: fc.Conv2d(3, 4, 3, padding=-1), ValueError, r"Conv2d: `padding` must be >= 0"),
    (lambda: fc.Conv2d(3, 4, 2.5), TypeError, r"Conv2d: `kernel_size` must be an int or a pair of ints; got 2.5"),
    (lambda: fc.MaxPool2d(2, padding=2), ValueError, r"MaxPool2d: `padding` must be at most half"),
    (lambda: fc.Linear(3, "4"), TypeError, r"Linear: `out_features` must be an int"),
    (lambda: fc.Sequential(fc.ReLU(), "relu"), TypeError, r"Sequential: argument 1 must be a Module"),
])
def test_constructor_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("scores,y,exc,match", [
    (np.zeros((3, 4), np.float32), np.array([0, 1]), ValueError, r"`y` must have shape \(3,\)"),
    (np.zeros((3, 4), np.float32), np.array([0, 1, 4]), ValueError, r"class indices in \[0, 4\); got 4"),
    (np.zeros((3, 4), np.float32), np.array([0.0, 1.0, 2.0]), TypeError, r"integer class indices; got dtype float64"),
    (np.zeros((3, 4, 1), np.float32), np.array([0, 1, 2]), ValueError, r"`scores` must have rank 2"),
])
def test_cross_entropy_errors(scores, y, exc, match):
    with pytest.raises(exc, match=match):
        fc.SoftmaxCrossEntropy()(scores, y)
