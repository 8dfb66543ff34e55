"""Adaptive average and max pooling: the native kernels against their NumPy
twins on every ISA at 1 and 2 threads, the layers against PyTorch (forward,
dx, indices), gradient checks, and bad arguments."""

import numpy as np
import pytest
from conftest import rand
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv as fc
from fastconv import _kernels, reference

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def pools(draw):
    """(x shape, output size): output sizes below, at and above the input's, and the global 1."""
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 17)), draw(st.integers(1, 17))
    size = draw(st.one_of(st.just(1), st.tuples(st.integers(1, h + 3), st.integers(1, w + 3))))
    return (n, c, h, w), size


def _ties(rng, shape):
    """Values on a coarse grid: many ties, so the first-maximum rule is exercised."""
    return (rng.integers(-3, 4, shape) / 2).astype(np.float32)


@FIXTURE_OK
@given(case=pools(), seed=st.integers(0, 2**32 - 1))
def test_kernels_match_the_twins(isa_threads, case, seed):
    shape, size = case
    rng = np.random.default_rng(seed)
    x, xt = rand(rng, *shape), _ties(rng, shape)
    y = _kernels.adaptive_avgpool2d_forward(x, size)
    np.testing.assert_allclose(y, reference.adaptive_avgpool2d_forward(x, size), rtol=1e-5, atol=1e-6)
    dy = rand(rng, *y.shape)
    np.testing.assert_allclose(_kernels.adaptive_avgpool2d_backward(dy, shape),
                               reference.adaptive_avgpool2d_backward(dy, shape), rtol=1e-5, atol=1e-6)
    for v in (x, xt):
        ym, am = _kernels.adaptive_maxpool2d_forward(v, size)
        want_y, want_am = reference.adaptive_maxpool2d_forward(v, size)
        np.testing.assert_array_equal(ym, want_y)
        np.testing.assert_array_equal(am, want_am)
        np.testing.assert_array_equal(_kernels.adaptive_maxpool2d_backward(dy, am, shape),
                                      reference.adaptive_maxpool2d_backward(dy, am, shape))


def test_results_do_not_depend_on_the_thread_count(rng):
    x = rand(rng, 4, 64, 33, 31)  # large enough to run in parallel
    threads = _kernels.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            _kernels.set_num_threads(t)
            y = _kernels.adaptive_avgpool2d_forward(x, (5, 3))
            outs.append((y, _kernels.adaptive_avgpool2d_backward(y, x.shape),
                         *_kernels.adaptive_maxpool2d_forward(x, 1)))
    finally:
        _kernels.set_num_threads(threads)
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


def test_global_average_pool_is_the_plane_mean(isa_threads, rng):
    x = rand(rng, 3, 16, 8, 8)
    np.testing.assert_allclose(_kernels.adaptive_avgpool2d_forward(x, 1)[:, :, 0, 0], x.mean(axis=(2, 3)),
                               rtol=1e-5, atol=1e-6)
    dx = _kernels.adaptive_avgpool2d_backward(np.ones((3, 16, 1, 1), np.float32), x.shape)
    np.testing.assert_array_equal(dx, np.full(x.shape, 1 / 64, np.float32))


@FIXTURE_OK
@given(case=pools(), seed=st.integers(0, 2**32 - 1), unbatched=st.booleans())
def test_layers_match_torch(isa_threads, torch, case, seed, unbatched):
    shape, size = case
    rng = np.random.default_rng(seed)
    for ours, theirs, x in ((fc.AdaptiveAvgPool2d(size), torch.nn.AdaptiveAvgPool2d(size), rand(rng, *shape)),
                            (fc.AdaptiveMaxPool2d(size), torch.nn.AdaptiveMaxPool2d(size, return_indices=True),
                             _ties(rng, shape))):
        x = x[0] if unbatched else x
        tx = torch.from_numpy(x.copy()).requires_grad_()
        out = theirs(tx)
        ty, indices = out if isinstance(out, tuple) else (out, None)
        y = ours(x)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
        if indices is not None:
            np.testing.assert_array_equal(ours.indices, indices.numpy())
        dy = rand(rng, *y.shape)
        ty.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(ours.backward(dy), tx.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("size", [1, (2, 3), (4, 4)], ids=str)
def test_gradcheck(rng, backend, size):
    x = rand(rng, 2, 3, 5, 7)  # 5 and 7 into 2, 3, 4: windows of unequal size that overlap
    for layer in (fc.AdaptiveAvgPool2d(size), fc.AdaptiveMaxPool2d(size)):
        result = fc.gradcheck(layer, x, backend=backend)
        assert result.passed and result.checked > 0, str(result)


def test_bad_arguments():
    x = np.zeros((1, 2, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"AdaptiveAvgPool2d: `output_size` must be >= 1; got \(0, 2\)"):
        fc.AdaptiveAvgPool2d((0, 2))
    with pytest.raises(TypeError, match="AdaptiveMaxPool2d: `output_size` must be an int or a pair"):
        fc.AdaptiveMaxPool2d("1")
    with pytest.raises(ValueError, match=r"AdaptiveAvgPool2d: `x` must have rank 3 or 4; got shape \(4, 4\)"):
        fc.AdaptiveAvgPool2d(1)(x[0, 0])
    layer = fc.AdaptiveAvgPool2d(2)
    layer(x)
    with pytest.raises(ValueError, match=r"must have the forward output's shape \(1, 2, 2, 2\); got \(1, 2, 1, 1\)"):
        layer.backward(np.zeros((1, 2, 1, 1), np.float32))
    with pytest.raises(ValueError, match=r"adaptive_avgpool2d_forward: input .* non-zero C, H and W"):
        _kernels.adaptive_avgpool2d_forward(np.zeros((1, 2, 0, 4), np.float32), 1)
    _, am = _kernels.adaptive_maxpool2d_forward(x, 2)
    with pytest.raises(ValueError, match=r"adaptive_maxpool2d_backward: `argmax` must hold indices in \[0, 16\)"):
        _kernels.adaptive_maxpool2d_backward(np.zeros(am.shape, np.float32), am + 16, x.shape)
    with pytest.raises(TypeError, match="`argmax` must be an int64 array"):
        _kernels.adaptive_maxpool2d_backward(np.zeros(am.shape, np.float32), am.astype(np.int32), x.shape)
    with pytest.raises(ValueError, match=r"`dy` must have the N and C of `x_shape` \(1, 2\)"):
        _kernels.adaptive_avgpool2d_backward(np.zeros((1, 3, 2, 2), np.float32), x.shape)
