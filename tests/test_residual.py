"""Residual and Concat: against PyTorch (forward, dx, dW, db, running
statistics) on many shapes, on every ISA at 1 and 2 threads; the fused
residual add + ReLU against the unfused layers, bit for bit; the add_relu
kernel against its twin; gradient checks of the containers and of a
user-defined block."""

import numpy as np
import pytest
from conftest import Calls, rand, unfused
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv as fc
from fastconv import _kernels, reference
from fastconv.models import containers
from fastconv.nn import fusion

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=25)
TORCH_OK = settings(FIXTURE_OK, max_examples=8)  # x 6 ISA-thread pairs; each example builds torch twins
SPECIAL = np.array([np.nan, -np.nan, 0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 3e38, -3e38], np.float32)


def _bits(a):
    """The bit patterns, every NaN as one: which NaN a + b of two NaNs gives is
    the instruction's choice of operand (x86 returns the first, and compilers
    swap the operands of a commutative add), so only NaN-ness is compared."""
    return np.where(np.isnan(a), np.uint32(0x7FC00000), a.view(np.uint32))


# -- the add_relu kernel -----------------------------------------------------------------------------

@FIXTURE_OK
@given(n=st.one_of(st.integers(0, 100), st.integers(32768, 70000)), seed=st.integers(0, 2**32 - 1))
def test_add_relu_matches_its_twin_and_the_unfused_bits(isa_threads, n, seed):
    rng = np.random.default_rng(seed)
    a, b = rand(rng, n), rand(rng, n)
    a[: min(n, 40)] = np.resize(SPECIAL, min(n, 40))  # every pair of special values, signed zeros included
    b[: min(n, 40)] = np.repeat(SPECIAL, 4)[: min(n, 40)]
    for relu in (False, True):
        got = _kernels.add_relu(a, b, relu)
        assert got.dtype == np.float32 and got.shape == a.shape
        np.testing.assert_array_equal(_bits(got), _bits(reference.add_relu(a, b, relu)))
        with np.errstate(over="ignore"):  # 3e38 + 3e38
            unfused = _kernels.relu_forward(_kernels.add_relu(a, b, False)) if relu else a + b
        np.testing.assert_array_equal(_bits(got), _bits(unfused))


def test_add_relu_every_short_length(isa_threads, rng):
    """Lengths 0 .. 48: every vector tail at 8 and at 16 lanes, with negative, -0 and NaN sums."""
    for n in range(49):
        a, b = rand(rng, n), rand(rng, n)
        a[::5], b[::5] = -0.0, -0.0
        a[3::7] = np.nan
        for relu in (False, True):
            np.testing.assert_array_equal(_bits(_kernels.add_relu(a, b, relu)),
                                          _bits(reference.add_relu(a, b, relu)))


def test_add_relu_arguments():
    a = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"add_relu: `b` must have shape \(2, 3\); got \(3, 2\)"):
        _kernels.add_relu(a, a.T.copy(), True)
    with pytest.raises(TypeError, match="add_relu: `relu` must be a bool"):
        _kernels.add_relu(a, a, 1)
    with pytest.raises(TypeError, match="add_relu: `b` must be a float32 array"):
        _kernels.add_relu(a, a.astype(np.float64), False)


# -- against PyTorch ---------------------------------------------------------------------------------

def _block(lib, cin, cout, stride, bias):
    """A basic block of ``lib`` (fastconv or torch.nn): a projection shortcut when the shape changes."""
    residual = containers(lib)[0]
    body = lib.Sequential(lib.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias), lib.BatchNorm2d(cout),
                          lib.ReLU(), lib.Conv2d(cout, cout, 3, padding=1, bias=bias), lib.BatchNorm2d(cout))
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = lib.Sequential(lib.Conv2d(cin, cout, 1, stride=stride, bias=bias), lib.BatchNorm2d(cout))
    return lib.Sequential(lib.Conv2d(cin, cin, 1), residual(body, shortcut), lib.ReLU())


def _torch_twin(torch, model, build):
    twin = build(torch.nn)
    twin.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in model.state_dict().items()})
    return twin


def _compare(torch, model, twin, x, dy, rtol=1e-4, zero=()):
    """Forward, dx, every gradient and every buffer of model against its PyTorch twin.
    `zero`: parameters whose gradient is zero but for rounding (a conv bias feeding a
    training-mode batch norm): both libraries' rounding noise, held to the gradients' scale."""
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = twin(tx)
    y = model(x)
    scale = float(np.abs(ty.detach().numpy()).max()) + 1e-6
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol, atol=rtol * scale)
    ty.backward(torch.from_numpy(dy))
    dx = model.backward(dy)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=rtol, atol=rtol * (float(tx.grad.abs().max()) + 1e-6))
    theirs = {name: p.grad.numpy() for name, p in twin.named_parameters()}
    # A gradient that is a sum of cancelling terms (a batch norm's weight) is
    # compared at the scale of the model's gradients, not at its own.
    scale = max(float(np.abs(g).max()) for g in theirs.values())
    for name, p in model.named_parameters():
        atol = rtol * scale / (1 if name in zero else 10)
        np.testing.assert_allclose(p.grad, theirs[name], rtol=rtol, atol=atol, err_msg=name)
    buffers = dict(twin.named_buffers())
    for name, b in model.named_buffers():
        np.testing.assert_allclose(b, buffers[name].numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


@TORCH_OK
@given(n=st.integers(2, 3), cin=st.integers(1, 6), cout=st.integers(1, 6), hw=st.integers(3, 9),
       stride=st.integers(1, 2), bias=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_residual_block_matches_torch(isa_threads, torch, n, cin, cout, hw, stride, bias, seed):
    rng = np.random.default_rng(seed)
    fc.manual_seed(seed % 1000)
    model = _block(fc, cin, cout, stride, bias)
    twin = _torch_twin(torch, model, lambda lib: _block(lib, cin, cout, stride, bias))
    x = rand(rng, n, cin, hw, hw)
    oh = (hw - 1) // stride + 1
    for mode in (True, False):  # training (batch statistics, running stats move) and eval
        model.train(mode), twin.train(mode)
        model.zero_grad(), twin.zero_grad()
        zero = {"1.body.0.bias", "1.body.3.bias", "1.shortcut.0.bias"} if mode and bias else ()
        _compare(torch, model, twin, x, rand(rng, n, cout, oh, oh), zero=zero)


def _inception(lib, c, widths):
    branches = [lib.Conv2d(c, widths[0], 1),
                lib.Sequential(lib.Conv2d(c, widths[1], 3, padding=1), lib.ReLU()),
                lib.Sequential(lib.MaxPool2d(3, stride=1, padding=1), lib.Conv2d(c, widths[2], 1))]
    return containers(lib)[1](*branches)


@TORCH_OK
@given(n=st.integers(1, 3), c=st.integers(1, 5), widths=st.tuples(*[st.integers(1, 5)] * 3),
       hw=st.integers(2, 8), seed=st.integers(0, 2**32 - 1))
def test_concat_matches_torch(isa_threads, torch, n, c, widths, hw, seed):
    rng = np.random.default_rng(seed)
    fc.manual_seed(seed % 1000)
    model = _inception(fc, c, widths)
    twin = _torch_twin(torch, model, lambda lib: _inception(lib, c, widths))
    assert list(model.state_dict()) == list(twin.state_dict())
    _compare(torch, model, twin, rand(rng, n, c, hw, hw), rand(rng, n, sum(widths), hw, hw))


def test_concat_along_another_axis():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    cat = fc.Concat(fc.Flatten(2), fc.ReLU(), dim=-1)
    np.testing.assert_array_equal(cat(x), np.concatenate([x, np.maximum(x, 0)], axis=-1))
    dx = cat.backward(np.ones((2, 3, 8), np.float32))
    np.testing.assert_array_equal(dx, np.where(x > 0, 2, 1).astype(np.float32))


# -- fusion ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stride", [1, 2])
def test_residual_relu_fuses_with_the_unfused_bits(isa_threads, rng, monkeypatch, stride):
    fc.manual_seed(0)
    layers = list(_block(fc, 4, 6 if stride == 2 else 4, stride, False))
    x = rand(rng, 3, 4, 8, 8)
    x[0, 0, :2] = 0.0  # zeros and exact cancellations through the add
    dy = rand(rng, 3, layers[1].body[0].out_channels, 8 // stride, 8 // stride)
    out, want_dx, want_grads = unfused(layers, x, dy)  # one by one: the add, then the ReLU kernel
    model = fc.Sequential(*layers)
    calls = Calls(monkeypatch, ("add_relu", "relu_forward"))
    np.testing.assert_array_equal(_bits(model(x)), _bits(out))
    np.testing.assert_array_equal(_bits(model.backward(dy)), _bits(want_dx))
    for p, g in zip(model.parameters(), want_grads):
        np.testing.assert_array_equal(_bits(p.grad), _bits(g))
    # the body's ReLU is in its BatchNorm2d's pass; the block's is in the forward's add;
    # the backward adds the branches' dx
    assert calls.counts == {"add_relu": 2, "relu_forward": 0}
    with fusion.observe(model, lambda *a: None):  # observed: unfused, the same bits
        np.testing.assert_array_equal(_bits(model(x)), _bits(out))


# -- gradient checks ---------------------------------------------------------------------------------

class ScaledSkip(fc.Module):
    """The README's user-defined block: y = x + scale * body(x), scale learned."""

    def __init__(self, body):
        super().__init__()
        self.body, self.scale = body, fc.Parameter(np.full(1, 0.1, np.float32))

    def forward(self, x):
        self.h = self.body(x)
        return x + self.scale.data * self.h

    def backward(self, dy):
        self.scale.grad += np.sum(dy * self.h)
        return dy + self.body.backward(self.scale.data * dy)


def _gradcheck_cases():
    fc.manual_seed(0)
    smooth = lambda c, k, s=1: fc.Sequential(fc.Conv2d(c, k, 3, stride=s, padding=1), fc.Tanh())  # noqa: E731
    return {
        "residual_identity": fc.Residual(smooth(3, 3)),
        "residual_projection": fc.Residual(smooth(3, 4, 2), fc.Conv2d(3, 4, 1, stride=2)),
        "residual_in_sequential_with_relu": fc.Sequential(fc.Residual(smooth(3, 3)), fc.ReLU()),
        "concat": fc.Concat(fc.Conv2d(3, 2, 1), smooth(3, 4), fc.AvgPool2d(3, stride=1, padding=1)),
        "user_block": ScaledSkip(smooth(3, 3)),
        "user_block_in_residual": fc.Residual(fc.Sequential(ScaledSkip(smooth(3, 3)), fc.Conv2d(3, 3, 1))),
    }


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("name", list(_gradcheck_cases()))
def test_gradcheck(rng, name, backend):
    module = _gradcheck_cases()[name]
    result = fc.gradcheck(module, rand(rng, 2, 3, 5, 5), backend=backend, max_elements=60)
    assert result.passed and result.checked > 0, str(result)


def test_user_block_composes_with_the_containers(rng):
    fc.manual_seed(0)
    block = ScaledSkip(fc.Sequential(fc.Conv2d(8, 8, 3, padding=1), fc.Tanh()))
    model = fc.Sequential(fc.Conv2d(3, 8, 3, padding=1), block, fc.AdaptiveAvgPool2d(1), fc.Flatten(),
                          fc.Linear(8, 10))
    assert list(model.state_dict()) == ["0.weight", "0.bias", "1.scale", "1.body.0.weight", "1.body.0.bias",
                                        "4.weight", "4.bias"]
    x = rand(rng, 2, 3, 6, 6)
    assert model(x).shape == (2, 10)
    dx = model.backward(np.ones((2, 10), np.float32) / 2)
    assert dx.shape == x.shape and block.scale.grad[0] != 0


# -- structure and errors ----------------------------------------------------------------------------

def test_state_dict_keys_and_identity_shortcut(rng):
    fc.manual_seed(0)
    model = fc.models.resnet20()
    keys = list(model.state_dict())
    assert "3.body.0.weight" in keys and "3.body.4.running_var" in keys and not any(
        k.startswith("3.shortcut") for k in keys)
    assert "9.shortcut.0.weight" in keys and "9.shortcut.1.num_batches_tracked" in keys
    res = fc.Residual(fc.Sequential(fc.Conv2d(2, 2, 1)))
    res.body[0].weight.data[...] = 0
    x = rand(rng, 1, 2, 3, 3)
    np.testing.assert_array_equal(res(x), x)  # body 0: the identity shortcut alone


def test_a_branch_without_input_gradient_counts_as_zero(rng):
    conv = fc.Conv2d(2, 2, 3, padding=1)
    conv.needs_input_grad = False
    res = fc.Residual(conv)
    x, dy = rand(rng, 1, 2, 4, 4), rand(rng, 1, 2, 4, 4)
    res(x)
    np.testing.assert_array_equal(res.backward(dy), dy)


def test_bad_arguments(rng):
    with pytest.raises(TypeError, match="Residual: `body` must be a Module; got str"):
        fc.Residual("conv")
    with pytest.raises(TypeError, match="Residual: `shortcut` must be a Module; got int"):
        fc.Residual(fc.ReLU(), 3)
    res = fc.Residual(fc.Conv2d(2, 4, 3, padding=1))
    with pytest.raises(ValueError, match=r"Residual: body\(x\) and x must have the same shape to be added; "
                                         r"got \(1, 4, 5, 5\) and \(1, 2, 5, 5\)"):
        res(rand(rng, 1, 2, 5, 5))
    with pytest.raises(ValueError, match="Concat: needs at least one branch"):
        fc.Concat()
    with pytest.raises(TypeError, match="Concat: `dim` must be an int"):
        fc.Concat(fc.ReLU(), dim=1.0)
    cat = fc.Concat(fc.Conv2d(2, 3, 1), fc.Conv2d(2, 3, 3))
    with pytest.raises(ValueError, match=r"except in axis 1; branch 1 gives \(1, 3, 3, 3\)"):
        cat(rand(rng, 1, 2, 5, 5))
    cat = fc.Concat(fc.ReLU(), fc.ReLU(), dim=4)
    with pytest.raises(ValueError, match=r"Concat: `dim` must be in \[-4, 3\]"):
        cat(rand(rng, 1, 2, 5, 5))
