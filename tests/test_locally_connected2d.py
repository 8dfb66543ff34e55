"""locally_connected2d_forward / _backward: native kernels against their NumPy twins
(every ISA x {1, 2} threads, hypothesis over shapes), against an unfold + einsum
in PyTorch, thread-count independence, the LocallyConnected2d layer (gradients by
central differences, a trainable network, errors naming the argument)."""

import numpy as np
import pytest
from conftest import rand
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv as fc
from fastconv import _kernels, reference

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)


def out_size(h, k, s, p):
    return (h + 2 * p - k) // s + 1


def operands(rng, n, c, h, w, k, kernel, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    x = rand(rng, n, c, h, w)
    weight = rand(rng, oh, ow, k, c, kh, kw, scale=0.3)
    bias = rand(rng, k, oh, ow)
    dy = rand(rng, n, k, oh, ow)
    return x, weight, bias, dy


def check(x, weight, bias, dy, stride, padding):
    """Native against the twin, forward and backward (sums in another order: a tolerance)."""
    tol = dict(rtol=2e-5, atol=2e-5)
    y = _kernels.locally_connected2d_forward(x, weight, bias, stride, padding)
    np.testing.assert_allclose(y, reference.locally_connected2d_forward(x, weight, bias, stride, padding), **tol)
    got = _kernels.locally_connected2d_backward(x, weight, dy, stride, padding)
    want = reference.locally_connected2d_backward(x, weight, dy, stride, padding)
    for g, e, name in zip(got, want, ("dx", "dweight", "dbias")):
        assert g.shape == e.shape and g.dtype == np.float32, name
        np.testing.assert_allclose(g, e, err_msg=name, **tol)
    dx, dw, db = _kernels.locally_connected2d_backward(x, weight, dy, stride, padding, need_dx=False)
    assert dx is None and np.array_equal(dw, got[1]) and np.array_equal(db, got[2])
    return y, got


CASES = [  # (n, c, h, w, k, kernel, stride, padding)
    (1, 1, 5, 5, 1, (3, 3), (1, 1), (0, 0)),      # batch 1, one channel
    (2, 3, 9, 8, 4, (3, 3), (1, 2), (1, 1)),      # non-square, strides differ
    (3, 2, 7, 11, 5, (2, 4), (2, 1), (1, 2)),     # even, non-square kernel
    (4, 3, 6, 6, 2, (6, 6), (1, 1), (0, 0)),      # one output position: a Linear per image
    (2, 4, 8, 8, 3, (1, 1), (1, 1), (0, 0)),      # 1x1: a per-pixel Linear
    (5, 2, 10, 10, 3, (3, 3), (3, 3), (1, 1)),    # windows that do not overlap
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference(isa_threads, rng, case):
    n, c, h, w, k, kernel, stride, padding = case
    check(*operands(rng, *case), stride, padding)


@FIXTURE_OK
@given(n=st.integers(1, 4), c=st.integers(1, 4), h=st.integers(1, 10), w=st.integers(1, 10),
       k=st.integers(1, 5), kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3),
       sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_matches_reference_any_shape(isa_threads, n, c, h, w, k, kh, kw, sh, sw, ph, pw, seed):
    if h + 2 * ph < kh or w + 2 * pw < kw:
        return
    rng = np.random.default_rng(seed)
    check(*operands(rng, n, c, h, w, k, (kh, kw), (sh, sw), (ph, pw)), (sh, sw), (ph, pw))


def test_no_bias_and_empty_batch(rng):
    x, weight, bias, dy = operands(rng, 2, 3, 6, 5, 4, (3, 3), (1, 1), (1, 1))
    np.testing.assert_allclose(_kernels.locally_connected2d_forward(x, weight, None, 1, 1),
                               reference.locally_connected2d_forward(x, weight, None, 1, 1), rtol=2e-5, atol=2e-5)
    empty = np.zeros((0,) + x.shape[1:], np.float32)
    assert _kernels.locally_connected2d_forward(empty, weight, bias, 1, 1).shape == (0, 4, 6, 5)
    dx, dw, db = _kernels.locally_connected2d_backward(empty, weight, dy[:0], 1, 1)
    assert dx.shape == empty.shape and not dw.any() and not db.any()


def test_independent_of_thread_count(rng):
    """Each position's GEMM runs on one thread and dx adds positions in order: the same bits."""
    x, weight, bias, dy = operands(rng, 16, 8, 20, 20, 8, (3, 3), (1, 1), (1, 1))
    old = fc.get_num_threads()
    try:
        runs = []
        for t in (1, 2):
            fc.set_num_threads(t)
            runs.append((_kernels.locally_connected2d_forward(x, weight, bias, 1, 1),
                         *_kernels.locally_connected2d_backward(x, weight, dy, 1, 1)))
    finally:
        fc.set_num_threads(old)
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


def test_matches_torch_unfold(rng, torch):
    """PyTorch has no locally connected layer; its definition there: unfold, then one
    matrix per position (einsum), gradients by autograd."""
    x, weight, bias, dy = operands(rng, 3, 2, 7, 9, 4, (3, 2), (2, 1), (1, 0))
    oh, ow, k = weight.shape[:3]
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(weight, requires_grad=True)
    tb = torch.tensor(bias, requires_grad=True)
    cols = torch.nn.functional.unfold(tx, (3, 2), padding=(1, 0), stride=(2, 1))  # N, C*kh*kw, OH*OW
    ty = torch.einsum("nqp,pkq->nkp", cols, tw.reshape(oh * ow, k, -1)).reshape(3, k, oh, ow) + tb
    ty.backward(torch.tensor(dy))
    y = _kernels.locally_connected2d_forward(x, weight, bias, (2, 1), (1, 0))
    dx, dw, db = _kernels.locally_connected2d_backward(x, weight, dy, (2, 1), (1, 0))
    for got, want in ((y, ty), (dx, tx.grad), (dw, tw.grad), (db, tb.grad)):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=2e-5, atol=2e-5)


def test_layer_gradients_by_central_differences():
    fc.manual_seed(0)
    layer = fc.LocallyConnected2d(2, 3, kernel_size=(3, 2), input_size=(5, 6), stride=(1, 2), padding=1)
    x = np.random.default_rng(1).standard_normal((2, 2, 5, 6))
    result = fc.gradcheck(layer, x)
    assert result.passed, result


def test_layer_shapes_init_and_unbatched():
    fc.manual_seed(0)
    layer = fc.LocallyConnected2d(3, 8, kernel_size=3, input_size=(12, 10), padding=1)
    assert layer.weight.shape == (12, 10, 8, 3, 3, 3) and layer.bias.shape == (8, 12, 10)
    assert layer.weight.data.std() == pytest.approx(np.sqrt(2 / 27), rel=0.05)  # He, fan_in = C*kh*kw
    x = np.random.default_rng(0).standard_normal((3, 12, 10)).astype(np.float32)
    batched = layer(x[None])[0]
    y = layer(x)
    assert y.shape == (8, 12, 10)
    np.testing.assert_array_equal(y, batched)
    assert layer.backward(np.ones_like(y)).shape == x.shape
    assert set(layer.state_dict()) == {"weight", "bias"}


def test_untied_weights_learn_position_specific_features():
    """Class = which half of the image holds a bright spot: a locally connected layer
    followed by a Linear fits it (its filters differ by position)."""
    rng = np.random.default_rng(0)
    n = 256
    y = rng.integers(0, 2, n)
    x = 0.1 * rng.standard_normal((n, 1, 6, 6)).astype(np.float32)
    x[np.arange(n), 0, rng.integers(0, 6, n), np.where(y == 0, 1, 4)] += 2.0
    fc.manual_seed(0)
    model = fc.Sequential(fc.LocallyConnected2d(1, 2, 3, input_size=(6, 6)), fc.ReLU(), fc.Flatten(),
                          fc.Linear(2 * 4 * 4, 2))
    opt = fc.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = fc.SoftmaxCrossEntropy()
    for _ in range(60):
        loss(model(x), y)
        opt.zero_grad()
        model.backward(loss.backward())
        opt.step()
    assert np.mean(model(x).argmax(axis=1) == y) > 0.95


@pytest.mark.parametrize("kwargs, message", [
    (dict(in_channels=0, out_channels=2, kernel_size=3, input_size=8), r"`in_channels` must be >= 1; got 0"),
    (dict(in_channels=1, out_channels=2, kernel_size=9, input_size=8), r"kernel size \(9, 9\) is larger"),
    (dict(in_channels=1, out_channels=2, kernel_size=3, input_size=(8,)), r"`input_size` must be an int or a pair"),
    (dict(in_channels=1, out_channels=2, kernel_size=3, input_size=8, stride=0), r"`stride` must be >= 1"),
])
def test_layer_rejects_bad_arguments(kwargs, message):
    with pytest.raises((ValueError, TypeError), match="LocallyConnected2d: " + message):
        fc.LocallyConnected2d(**kwargs)


def test_layer_rejects_another_input_size():
    layer = fc.LocallyConnected2d(1, 2, 3, input_size=(8, 8))
    with pytest.raises(ValueError, match=r"`x` must be 8x8 \(the layer's input_size\); got shape \(2, 1, 9, 8\)"):
        layer(np.zeros((2, 1, 9, 8), np.float32))


def test_kernel_rejects_mismatched_weight(rng):
    x, weight, bias, dy = operands(rng, 2, 3, 6, 5, 4, (3, 3), (1, 1), (1, 1))
    with pytest.raises(ValueError, match=r"a filter per output position, shape \(6, 5, K, C, kh, kw\).*got \(5, 5"):
        _kernels.locally_connected2d_forward(x, weight[:5], bias, 1, 1)
    with pytest.raises(ValueError, match=r"`weight` must have rank 6"):
        _kernels.locally_connected2d_forward(x, weight[0, 0], bias, 1, 1)
    with pytest.raises(ValueError, match=r"`bias`"):
        _kernels.locally_connected2d_forward(x, weight, bias[:, :2], 1, 1)
    with pytest.raises(ValueError, match=r"`dy`"):
        _kernels.locally_connected2d_backward(x, weight, dy[:, :2], 1, 1)
