"""fastconv against PyTorch on the CPU (skipped when torch is not installed):
layer outputs and gradients, the loss, SGD's updates, state dicts both ways.
Native backend, float32."""

import numpy as np
import pytest
from conftest import rand
from hypothesis import given
from hypothesis import strategies as st
from test_training import lenet

import fastconv as fc

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
       ph=st.integers(0, 2), pw=st.integers(0, 2), dh=st.integers(1, 3), dw=st.integers(1, 3),
       ceil_mode=st.booleans(), ties=st.booleans(), seed=st.integers(0, 2**31))
def test_maxpool2d_matches_torch(n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode, ties, seed):
    """Any geometry torch pools; where fastconv refuses, torch refuses too, or (a dilated window
    of padding alone) gives -inf with an index outside the input."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, (n, c, h, w)).astype(np.float32) if ties else rand(rng, n, c, h, w)
    args = dict(kernel_size=(kh, kw), stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), ceil_mode=ceil_mode)
    tx = _t(x)
    try:
        ty = F.max_pool2d(tx, **args)
    except RuntimeError:
        ty = None
    try:
        pool = fc.MaxPool2d(**args)
        y = pool(x)
    except ValueError as e:
        assert ty is None or ("holds only padding" in str(e) and (ty == -np.inf).any()), (str(e), ty)
        return
    assert ty is not None
    dy = rand(rng, *y.shape)
    dx = pool.backward(dy)
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




@pytest.mark.parametrize("kwargs", [
    dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    dict(lr=0.05, momentum=0.5, dampening=0.3, weight_decay=0.1),
])
def test_sgd_matches_torch(kwargs, rng):
    w0 = rand(rng, 5, 3)
    grads = [rand(rng, 5, 3) for _ in range(5)]
    p = fc.Parameter(w0)
    opt = fc.SGD([p], **kwargs)
    tp = torch.nn.Parameter(torch.tensor(w0))
    topt = torch.optim.SGD([tp], **kwargs)
    for g in grads:
        p.grad[...] = g
        opt.step()
        tp.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_torch_loads_our_state_dict_and_back(rng):
    model = lenet()
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16 * 7 * 7, 10))
    net.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    x = rand(rng, 3, 1, 28, 28)
    with torch.no_grad():
        np.testing.assert_allclose(model(x), net(torch.tensor(x)).numpy(), rtol=1e-4, atol=1e-4)
    other = lenet()
    other.load_state_dict(net.state_dict())  # torch tensors accepted
    np.testing.assert_allclose(other(x), model(x), rtol=1e-6)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # PyTorch's note on its copy
@pytest.mark.parametrize("kernel", [1, 3, (5, 3), 2, (4, 3)])
def test_conv2d_string_padding_matches_torch(kernel, rng):
    x = rand(rng, 2, 3, 7, 6)
    for padding in ("same", "valid"):
        conv = fc.Conv2d(3, 4, kernel, padding=padding)
        ref = F.conv2d(torch.tensor(x), torch.tensor(conv.weight.data), torch.tensor(conv.bias.data), padding=padding)
        _close(conv(x), ref, scale=3)


def test_conv2d_string_padding_errors():
    with pytest.raises(ValueError, match=r"padding='same' needs stride 1 \(as PyTorch\); got stride \(2, 1\)"):
        fc.Conv2d(1, 1, 2, stride=(2, 1), padding="same")
    with pytest.raises(ValueError, match=r"`padding` must be an int, a pair, 'valid' or 'same'; got 'full'"):
        fc.Conv2d(1, 1, 3, padding="full")
