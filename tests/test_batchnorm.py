"""batchnorm_forward / batchnorm_backward: native kernels against their NumPy
twins (every ISA x {1, 2} threads), accuracy of the statistics, thread-count
independence; BatchNorm1d/2d gradients by central differences, PyTorch parity
over several train and eval steps (skipped without torch), and input
validation."""

import warnings

import numpy as np
import pytest
from conftest import assert_bits_equal, assert_isas_agree, rand
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import fastconv as fc
from fastconv import _kernels, reference
from fastconv.nn.normalization import BatchNorm1d, BatchNorm2d

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

PAR_MIN = 32768  # FC_BN_PAR_MIN in csrc/norm/batchnorm.c


def bits(a):
    return np.ascontiguousarray(a).view(np.uint32)


def close(got, expected, scale=1.0):
    """float32 results of double-accumulated statistics: a few ulp of the scale."""
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6 * scale, equal_nan=True)


def params(rng, c, affine):
    if not affine:
        return None, None
    return rand(rng, c) + 1.0, rand(rng, c)


def check(x, weight, bias, mean=None, var=None, eps=1e-5, dy=None):
    """Native against reference, forward and backward; returns the native results."""
    rng = np.random.default_rng(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _kernels.batchnorm_forward(x, weight, bias, mean, var, eps)
        expected = reference.batchnorm_forward(x, weight, bias, mean, var, eps)
        y, m, v = got
        for g, e in zip(got, expected):
            close(g, e, scale=max(1.0, float(np.abs(e[np.isfinite(e)]).max(initial=0))))
        batch_stats = mean is None
        dy = rand(rng, *x.shape) if dy is None else dy
        grads = _kernels.batchnorm_backward(dy, x, weight, m, v, eps, batch_stats)
        expected = reference.batchnorm_backward(dy, x, weight, m, v, eps, batch_stats)
        count = max(x.size // max(x.shape[1], 1), 1)
        for g, e, scale in zip(grads, expected, (1.0, np.sqrt(count), np.sqrt(count))):
            close(g, e, scale=3 * scale)
    return got, grads


# ---------------------------------------------------------------------------
# native against reference

SHAPES = [
    (2, 3), (7, 1), (1, 4, 5), (3, 2, 1), (2, 3, 4, 5), (1, 1, 1, 9), (2, 2, 3, 2, 2),
    (0, 3, 4),                               # empty batch: eval and backward only
    (16, 8, 16, 16), (16, 8, 16, 16 - 1),    # 32768 and just below the threshold
    (3, 5, 37, 59),                          # 32745, odd per-channel length
    (64, 513),                               # (N, C), inner = 1, channels ragged over threads
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_matches_reference(isa_threads, rng, shape, affine):
    x = rand(rng, *shape, scale=2.0) + 0.5
    weight, bias = params(rng, shape[1], affine)
    running = rand(rng, shape[1]), np.abs(rand(rng, shape[1])) + 0.1
    check(x, weight, bias, *running)  # evaluation: given statistics
    if x.size:
        check(x, weight, bias)  # training: batch statistics


@settings(FIXTURE_OK, max_examples=30)
@given(n=st.integers(1, 6), c=st.integers(1, 6), inner=st.lists(st.integers(1, 7), max_size=3),
       affine=st.booleans(), offset=st.sampled_from([0.0, 1e3]), eps=st.sampled_from([1e-5, 1e-3, 0.5]),
       seed=st.integers(0, 2**31))
def test_matches_reference_any_shape(isa_threads, n, c, inner, affine, offset, eps, seed):
    rng = np.random.default_rng(seed)
    shape = (n, c, *inner)
    if n * int(np.prod(inner)) < 2:
        return
    x = rand(rng, *shape) + np.float32(offset)
    weight, bias = params(rng, c, affine)
    check(x, weight, bias, eps=eps)
    check(x, weight, bias, rand(rng, c), np.abs(rand(rng, c)), eps=eps)


# Rows of 1 to 40 values reach every tail of the row sums (4 lanes) and of every
# ISA's vector loops; 65 channels of (N, C) cross a 64-channel tile; the last
# shapes are over the threshold, split over threads.
TAIL_SHAPES = [(3, 2, n) for n in range(1, 41)] + [(5, 65), (2, 65, 3), (40, 64, 13), (PAR_MIN // 64 + 1, 65)]


@pytest.mark.parametrize("threads", (1, 2))
def test_every_isa_gives_the_same_bits(rng, threads):
    for shape in TAIL_SHAPES:
        x, dy = rand(rng, *shape, scale=2.0) + 3.0, rand(rng, *shape)
        weight, bias = params(rng, shape[1], True)
        running = rand(rng, shape[1]), np.abs(rand(rng, shape[1])) + 0.1

        def both_modes():
            (train, grads), (evaluate, frozen) = check(x, weight, bias, dy=dy), check(x, weight, bias, *running, dy=dy)
            return (*train, *grads, *evaluate, *frozen)
        assert_isas_agree(both_modes, threads)


def test_statistics_are_accurate_far_from_zero(rng):
    """Mean 1e4, std 1: a float accumulator or E[x^2] - E[x]^2 without the
    shift would lose the variance; ours matches float64 to float32 rounding."""
    x = (rand(rng, 64, 4, 32, 32) + np.float32(1e4)).astype(np.float32)
    _, mean, var = _kernels.batchnorm_forward(x, None, None, None, None, 1e-5)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2, 3)), rtol=1e-7)
    np.testing.assert_allclose(var, x64.var(axis=(0, 2, 3)), rtol=1e-6)


def test_constant_channel_has_zero_variance():
    x = np.full((4, 2, 3), 7.25, np.float32)
    y, mean, var = _kernels.batchnorm_forward(x, None, None, None, None, 1e-5)
    assert mean.tolist() == [7.25, 7.25] and var.tolist() == [0.0, 0.0]
    assert not y.any()


def test_nan_and_inf_stay_in_their_channel(rng):
    x = rand(rng, 4, 3, 5)
    x[1, 0, 2] = np.nan
    x[2, 1, 0] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for impl in (_kernels, reference):
            y, mean, var = impl.batchnorm_forward(x, None, None, None, None, 1e-5)
            assert np.isnan(mean[0]) and mean[1] == np.inf and np.isfinite(mean[2])
            assert np.isnan(var[:2]).all() and np.isfinite(var[2])
            assert np.isnan(y[:, :2]).all() and np.isfinite(y[:, 2]).all()


@pytest.mark.parametrize("shape", [(8, 5, 33, 31), (300, 130)], ids=str)  # rows; columns in 3 tiles
def test_thread_count_agnostic(rng, shape):
    x, dy = rand(rng, *shape) + 3, rand(rng, *shape)
    weight, bias = params(rng, shape[1], True)
    old = _kernels.get_num_threads()
    try:
        runs = []
        for t in (1, 2):
            _kernels.set_num_threads(t)
            runs.append(check(x, weight, bias, dy=dy))
    finally:
        _kernels.set_num_threads(old)
    (fw1, bw1), (fw2, bw2) = runs
    for a, b in zip(fw1 + bw1, fw2 + bw2):
        np.testing.assert_array_equal(bits(a), bits(b))


# ---------------------------------------------------------------------------
# a ReLU fused in: relu of the forward, relu_y of the backward

SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)


def sprinkle(rng, a, fraction):
    """a with about `fraction` of its entries replaced by NaN, +-inf and +-0."""
    a = a.copy()
    hit = rng.random(a.shape) < fraction
    a[hit] = rng.choice(SPECIALS, size=int(hit.sum()))
    return a


def check_fused(x, weight, bias, mean=None, var=None, eps=1e-5, dy=None):
    """The fused calls give the bits of batchnorm then relu_forward, and of
    relu_backward then batchnorm_backward (a NaN's sign and payload free: the
    sanitizers' build gave dbias +NaN fused and -NaN apart), and agree with
    their twins."""
    dy = rand(np.random.default_rng(2), *x.shape) if dy is None else dy
    y, m, v = _kernels.batchnorm_forward(x, weight, bias, mean, var, eps)
    fused = _kernels.batchnorm_forward(x, weight, bias, mean, var, eps, relu=True)
    ry = _kernels.relu_forward(y)
    for got, want in zip(fused, (ry, m, v)):
        assert_bits_equal(got, want)
    batch_stats = mean is None
    want = _kernels.batchnorm_backward(_kernels.relu_backward(dy, ry), x, weight, m, v, eps, batch_stats)
    grads = _kernels.batchnorm_backward(dy, x, weight, m, v, eps, batch_stats, relu_y=ry)
    for got, w in zip(grads, want):
        assert_bits_equal(got, w)
    twin = reference.batchnorm_forward(x, weight, bias, mean, var, eps, relu=True)
    twin_grads = reference.batchnorm_backward(dy, x, weight, m, v, eps, batch_stats, relu_y=ry)
    for g, e in zip(fused, twin):
        close(g, e, scale=max(1.0, float(np.abs(e[np.isfinite(e)]).max(initial=0))))
    count = max(x.size // max(x.shape[1], 1), 1)
    for g, e, scale in zip(grads, twin_grads, (1.0, np.sqrt(count), np.sqrt(count))):
        close(g, e, scale=3 * scale * max(1.0, float(np.abs(e[np.isfinite(e)]).max(initial=0))))
    return fused, grads


@settings(FIXTURE_OK, max_examples=40)
@given(n=st.integers(1, 6), c=st.integers(1, 9), inner=st.lists(st.integers(1, 9), max_size=3),
       affine=st.booleans(), training=st.booleans(), special=st.sampled_from([0.0, 0.05]),
       seed=st.integers(0, 2**31))
@example(n=5, c=6, inner=[2, 9], affine=False, training=False, special=0.05, seed=0)  # NaN signs differed
def test_fused_relu_has_the_unfused_bits_any_shape(isa_threads, n, c, inner, affine, training, special, seed):
    """Batch 1, odd and 1-element rows (inner = 1 is the (N, C) path); NaN, inf
    and signed zeros in x (in training they spoil their channel's statistics,
    with running ones only their element, whose NaN output passes dy) and in dy."""
    rng = np.random.default_rng(seed)
    shape = (n, c, *inner)
    if training and n * int(np.prod(inner)) < 2:
        return
    x = sprinkle(rng, rand(rng, *shape, scale=2.0) + 0.5, special)
    dy = sprinkle(rng, rand(rng, *shape), special)
    weight, bias = params(rng, c, affine)
    running = () if training else (rand(rng, c), np.abs(rand(rng, c)) + 0.1)
    check_fused(x, weight, bias, *running, dy=dy)


@pytest.mark.parametrize("shape", TAIL_SHAPES + [(16, 8, 16, 16), (3, 5, 37, 59), (64, 513), (1, 70, 33, 1)],
                         ids=str)
def test_fused_relu_has_the_unfused_bits(isa_threads, rng, shape):
    """Every tail of the row sums and of the vector loops, tiles of 64 channels,
    and sizes over the threshold, split over threads; both modes."""
    x, dy = rand(rng, *shape, scale=2.0) + 0.25, rand(rng, *shape)
    weight, bias = params(rng, shape[1], True)
    check_fused(x, weight, bias, dy=dy)
    check_fused(x, weight, None, rand(rng, shape[1]), np.abs(rand(rng, shape[1])) + 0.1, dy=dy)


def test_fused_relu_keeps_nan_and_minus_zero_and_masks_dy():
    """relu_forward's rules (v < 0 ? 0 : v: NaN and -0 kept) and relu_backward's
    (dy passes where the output is NaN, +0 elsewhere it is masked), by hand."""
    x = np.array([[-1.0, -0.0, 0.0, 2.0, np.nan, np.inf, -np.inf]], np.float32).reshape(1, 1, 7)
    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
    y, _, _ = _kernels.batchnorm_forward(x, None, -zero, zero, one, 0.0, relu=True)  # bias -0: y = x
    np.testing.assert_array_equal(bits(y.ravel()), bits(np.array([0.0, -0.0, 0.0, 2.0, np.nan, np.inf, 0.0], np.float32)))
    dy = np.full_like(x, -3.0)
    dx, dweight, dbias = _kernels.batchnorm_backward(dy, x, None, zero, one, 0.0, False, relu_y=y)
    np.testing.assert_array_equal(bits(dx.ravel()), bits(np.array([0, 0, 0, -3, -3, -3, 0], np.float32)))
    assert dbias.tolist() == [-9.0]


# ---------------------------------------------------------------------------
# layers: gradients by central differences

LAYER_CASES = [  # (class, input shape, constructor kwargs)
    (BatchNorm1d, (5, 3), {}),
    (BatchNorm1d, (3, 2, 4), {}),
    (BatchNorm1d, (4, 3), {"affine": False}),
    (BatchNorm2d, (3, 2, 3, 4), {}),
    (BatchNorm2d, (2, 3, 2, 2), {"track_running_stats": False}),
    (BatchNorm2d, (2, 2, 3, 3), {"momentum": None, "eps": 1e-3}),
    (BatchNorm2d, (2, 2, 2, 3), {"bias": False}),
]


@pytest.mark.parametrize("cls,shape,kwargs", LAYER_CASES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck(rng, cls, shape, kwargs, training):
    bn = cls(shape[1], **kwargs)
    for _, p in bn.named_parameters():
        p.data[:] = rand(rng, shape[1]) + 1.5
    if bn.track_running_stats:
        bn.running_mean[:] = rand(rng, shape[1])
        bn.running_var[:] = np.abs(rand(rng, shape[1])) + 0.5
    bn.train(training)
    result = fc.gradcheck(bn, rand(rng, *shape, scale=2.0) + 1.0)
    assert result.passed, str(result)
    assert result.skipped == 0


def test_running_statistics_by_hand(rng):
    """momentum 0.1 then 0.1; momentum None: the plain average of the batches."""
    xs = [rand(rng, 6, 2, 3) * (i + 1) + i for i in range(3)]
    for momentum in (0.1, None):
        bn = BatchNorm1d(2, momentum=momentum)
        mean, var = np.zeros(2), np.ones(2)
        for i, x in enumerate(xs, start=1):
            bn(x)
            f = 1.0 / i if momentum is None else momentum
            x64 = x.astype(np.float64)
            mean = (1 - f) * mean + f * x64.mean(axis=(0, 2))
            var = (1 - f) * var + f * x64.var(axis=(0, 2), ddof=1)
            assert int(bn.num_batches_tracked) == i
        np.testing.assert_allclose(bn.running_mean, mean, rtol=1e-5)
        np.testing.assert_allclose(bn.running_var, var, rtol=1e-5)
        assert bn.running_mean.dtype == bn.running_var.dtype == np.float32
        assert bn.num_batches_tracked.dtype == np.int64 and bn.num_batches_tracked.shape == ()


def test_eval_uses_running_statistics_and_leaves_them(rng):
    bn = BatchNorm2d(3)
    bn.running_mean[:] = [1.0, -2.0, 0.5]
    bn.running_var[:] = [4.0, 0.25, 1.0]
    bn.weight.data[:] = [2.0, 1.0, -1.0]
    bn.bias.data[:] = [0.0, 1.0, 3.0]
    bn.eval()
    x = rand(rng, 2, 3, 4, 4)
    shape = (1, 3, 1, 1)
    expected = ((x - bn.running_mean.reshape(shape)) / np.sqrt(bn.running_var.reshape(shape) + 1e-5)
                * bn.weight.data.reshape(shape) + bn.bias.data.reshape(shape))
    np.testing.assert_allclose(bn(x), expected, rtol=1e-5, atol=1e-6)
    assert int(bn.num_batches_tracked) == 0 and bn.running_mean.tolist() == [1.0, -2.0, 0.5]


def test_buffers_and_state_dict():
    assert list(BatchNorm2d(3).state_dict()) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert list(BatchNorm1d(3, affine=False).state_dict()) == ["running_mean", "running_var", "num_batches_tracked"]
    assert list(BatchNorm1d(3, track_running_stats=False).state_dict()) == ["weight", "bias"]
    assert list(BatchNorm1d(3, bias=False).state_dict()) == ["weight", "running_mean", "running_var", "num_batches_tracked"]
    bn = BatchNorm2d(2)
    state = bn.state_dict()
    state["running_mean"][:] = 5.0
    state["num_batches_tracked"] = np.array(7)
    bn.load_state_dict(state)
    assert bn.running_mean.tolist() == [5.0, 5.0] and int(bn.num_batches_tracked) == 7
    model = fc.Sequential(fc.Conv2d(1, 2, 3), BatchNorm2d(2))
    assert "1.running_var" in model.state_dict()


def test_backward_accumulates_into_grads(rng):
    bn = BatchNorm1d(4)
    x, dy = rand(rng, 8, 4), rand(rng, 8, 4)
    bn(x)
    bn.backward(dy)
    g1 = bn.weight.grad.copy()
    bn(x)
    bn.backward(dy)
    np.testing.assert_allclose(bn.weight.grad, 2 * g1, rtol=1e-6)


# ---------------------------------------------------------------------------
# against PyTorch

@pytest.fixture
def torch():
    return pytest.importorskip("torch")


TORCH_CASES = [  # (class name, input shape, kwargs)
    ("BatchNorm1d", (8, 5), {}),
    ("BatchNorm1d", (4, 3, 7), {"momentum": None}),
    ("BatchNorm1d", (6, 4), {"affine": False, "eps": 1e-3}),
    ("BatchNorm2d", (4, 3, 5, 6), {}),
    ("BatchNorm2d", (2, 4, 3, 3), {"momentum": 0.3, "affine": False}),
    ("BatchNorm2d", (3, 2, 4, 4), {"track_running_stats": False}),
    ("BatchNorm2d", (3, 2, 4, 4), {"momentum": None, "track_running_stats": False}),
    ("BatchNorm2d", (2, 3, 3, 2), {"bias": False}),
]


@pytest.mark.parametrize("name,shape,kwargs", TORCH_CASES, ids=str)
def test_matches_torch_over_steps(torch, rng, name, shape, kwargs):
    """Three training steps (outputs, input and parameter gradients, running
    statistics, num_batches_tracked), then evaluation; weights updated between
    steps so that later batches see other parameters."""
    ours = {"BatchNorm1d": BatchNorm1d, "BatchNorm2d": BatchNorm2d}[name](shape[1], **kwargs)
    theirs = getattr(torch.nn, name)(shape[1], **kwargs)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for step in range(4):
        training = step < 3
        ours.train(training)
        theirs.train(training)
        x, dy = rand(rng, *shape, scale=step + 1.0) + step, rand(rng, *shape)
        t = torch.from_numpy(x.copy()).requires_grad_(True)
        y_t = theirs(t)
        y_t.backward(torch.from_numpy(dy))
        ours.zero_grad()
        np.testing.assert_allclose(ours(x), y_t.detach().numpy(), rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose(ours.backward(dy), t.grad.numpy(), rtol=1e-4, atol=2e-5)
        for key, p in ours.named_parameters():
            theirs_p = getattr(theirs, key)
            np.testing.assert_allclose(p.grad, theirs_p.grad.numpy(), rtol=1e-4, atol=1e-4, err_msg=key)
            with torch.no_grad():  # a step of plain SGD on both, so the parameters move
                theirs_p -= 0.1 * theirs_p.grad
            theirs_p.grad = None
            p.data -= 0.1 * p.grad
        for key, value in theirs.state_dict().items():
            mine = ours.state_dict()[key]
            assert mine.dtype == value.numpy().dtype and mine.shape == tuple(value.shape), key
            np.testing.assert_allclose(mine, value.numpy(), rtol=1e-5, atol=1e-6, err_msg=key)


def test_state_dict_loads_into_torch_and_back(torch, rng):
    ours = BatchNorm2d(3)
    for _ in range(2):
        ours(rand(rng, 4, 3, 5, 5) * 2 + 1)
    theirs = torch.nn.BatchNorm2d(3)
    theirs.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in ours.state_dict().items()})
    assert int(theirs.num_batches_tracked) == 2
    x = rand(rng, 2, 3, 5, 5)
    ours.eval()
    theirs.eval()
    np.testing.assert_allclose(ours(x), theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    again = BatchNorm2d(3).eval()
    again.load_state_dict(theirs.state_dict())
    np.testing.assert_array_equal(again(x), ours(x))


# ---------------------------------------------------------------------------
# bad input

X = np.zeros((4, 3, 2), np.float32)
C3 = np.zeros(3, np.float32)


@pytest.mark.parametrize("args,exc,match", [
    ((X[0, 0], None, None, None, None, 1e-5), ValueError,
     r"batchnorm_forward: `x` must have rank >= 2 \(N, C, ...\); got float32 array with shape \(2,\)"),
    ((X.astype(np.float64), None, None, None, None, 1e-5), TypeError, r"batchnorm_forward: `x` must be a float32 array"),
    ((X, np.zeros(2, np.float32), None, None, None, 1e-5), ValueError,
     r"batchnorm_forward: `weight` must have shape \(3,\); got \(2,\)"),
    ((X, None, C3.astype(np.float64), None, None, 1e-5), TypeError, r"`bias` must be a float32 array"),
    ((X, None, None, C3, None, 1e-5), ValueError,
     r"`mean` and `var` must both be None \(batch statistics\) or both arrays; got float32 array with shape \(3,\) and NoneType"),
    ((X, None, None, C3, C3[:2], 1e-5), ValueError, r"batchnorm_forward: `var` must have shape \(3,\); got \(2,\)"),
    ((X, None, None, None, None, -1e-5), ValueError, r"batchnorm_forward: `eps` must be a finite number >= 0; got -1e-05"),
    ((X, None, None, None, None, float("nan")), ValueError, r"`eps` must be a finite number"),
    ((X, None, None, None, None, "1e-5"), TypeError, r"batchnorm_forward: `eps` must be a real number; got str"),
    ((X[:0], None, None, None, None, 1e-5), ValueError,
     r"batchnorm_forward: batch statistics need at least one value per channel; got `x` with shape \(0, 3, 2\)"),
    ((X, None, None, None, None, 1e-5, 1), TypeError, r"batchnorm_forward: `relu` must be a bool; got 1"),
])
def test_forward_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        _kernels.batchnorm_forward(*args)
    if len(args) > 6:  # the twin checks what it adds too
        with pytest.raises(exc, match=match):
            reference.batchnorm_forward(*args)


@pytest.mark.parametrize("args,exc,match", [
    ((X[:2], X, None, C3, C3, 1e-5, True), ValueError,
     r"batchnorm_backward: `dy` must have shape \(4, 3, 2\); got \(2, 3, 2\)"),
    ((X, X, None, C3[:1], C3, 1e-5, True), ValueError, r"batchnorm_backward: `mean` must have shape \(3,\)"),
    ((X, X, None, C3, None, 1e-5, False), TypeError, r"batchnorm_backward: `var` must be a float32 numpy array"),
    ((X, X, C3.T.copy()[:2], C3, C3, 1e-5, True), ValueError, r"`weight` must have shape \(3,\); got \(2,\)"),
    ((X, X, None, C3, C3, float("inf"), True), ValueError, r"batchnorm_backward: `eps` must be a finite number"),
    ((X, X, None, C3, C3, 1e-5, True, X[:, :2].copy()), ValueError,
     r"batchnorm_backward: `relu_y` must have shape \(4, 3, 2\); got \(4, 2, 2\)"),
    ((X, X, None, C3, C3, 1e-5, True, X.astype(np.float64)), TypeError,
     r"batchnorm_backward: `relu_y` must be a float32 array"),
    ((X, X, None, C3, C3, 1e-5, True, X.reshape(4, 6)), ValueError, r"batchnorm_backward: `relu_y` must have shape"),
    ((X, X, None, C3, C3, 1e-5, True, X.T), ValueError, r"batchnorm_backward: `relu_y` must be C-contiguous"),
])
def test_backward_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        _kernels.batchnorm_backward(*args)
    if len(args) > 7 and "must have shape" in match:  # the twin checks the shape of what it adds
        with pytest.raises(exc, match=match):
            reference.batchnorm_backward(*args)


@pytest.mark.parametrize("make,x,exc,match", [
    (lambda: BatchNorm1d(3), np.zeros((4, 2), np.float32), ValueError,
     r"BatchNorm1d: `x` must have 3 channels in axis 1; got shape \(4, 2\)"),
    (lambda: BatchNorm1d(3), np.zeros((4, 3, 2, 2), np.float32), ValueError, r"BatchNorm1d: `x` must have rank 2 or 3"),
    (lambda: BatchNorm2d(3), np.zeros((4, 3, 2), np.float32), ValueError, r"BatchNorm2d: `x` must have rank 4"),
    (lambda: BatchNorm2d(3), np.zeros((1, 3, 1, 1), np.float32), ValueError,
     r"BatchNorm2d: batch statistics need more than 1 value per channel; got input shape \(1, 3, 1, 1\)"),
    (lambda: BatchNorm1d(3, track_running_stats=False).eval(), np.zeros((1, 3), np.float32), ValueError,
     r"need more than 1 value per channel"),
    (lambda: BatchNorm1d(2), np.zeros((4, 2)), TypeError, r"BatchNorm1d: `x` must be a float32 array; got dtype float64"),
])
def test_layer_bad_input(make, x, exc, match):
    with pytest.raises(exc, match=match):
        make()(x)


@pytest.mark.parametrize("make,exc,match", [
    (lambda: BatchNorm1d(0), ValueError, r"BatchNorm1d: `num_features` must be >= 1; got 0"),
    (lambda: BatchNorm2d(2.0), TypeError, r"BatchNorm2d: `num_features` must be an int"),
    (lambda: BatchNorm2d(2, eps=-1.0), ValueError, r"BatchNorm2d: `eps` must be a finite number >= 0; got -1.0"),
    (lambda: BatchNorm2d(2, momentum=1.5), ValueError, r"BatchNorm2d: `momentum` must be a finite number in \[0, 1\]; got 1.5"),
    (lambda: BatchNorm1d(2, momentum="0.1"), TypeError, r"BatchNorm1d: `momentum` must be a real number; got str"),
])
def test_constructor_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_backward_dy_shape_checked(rng):
    bn = BatchNorm2d(2)
    bn(rand(rng, 2, 2, 3, 3))
    with pytest.raises(ValueError, match=r"BatchNorm2d.backward: `dy` must have the forward output's shape \(2, 2, 3, 3\)"):
        bn.backward(rand(rng, 2, 2, 3, 2))
