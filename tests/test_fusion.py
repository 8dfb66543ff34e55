"""Fusion as a pass: the patterns of fastconv.nn.fusion run inside any container
that runs its children through it, give the bits of the unfused layers, are
never applied to subclasses, and are switched off while a container is observed."""

import copy

import numpy as np
import pytest
from conftest import Calls, rand, unfused

import fastconv as fc
from fastconv.nn import fusion
from fastconv.nn.module import Module


def net():
    fc.manual_seed(0)
    return [fc.Conv2d(2, 8, 3, padding=1), fc.ReLU(), fc.MaxPool2d(2), fc.Conv2d(8, 4, 3, padding=1), fc.ReLU(),
            fc.Flatten(), fc.Linear(4 * 5 * 4, 3)]


KERNELS = ("conv2d_forward", "conv2d_maxpool_forward", "relu_forward", "maxpool2d_forward",
           "relu_backward", "maxpool2d_backward")


def test_patterns_are_declared_once():
    assert [p.name for p in fusion.FORWARD] == ["conv2d_relu_maxpool2d", "conv2d_relu", "residual_relu",
                                                "batchnorm2d_relu", "batchnorm1d_relu"]
    assert [p.name for p in fusion.BACKWARD] == ["relu_maxpool2d_backward", "batchnorm2d_relu_backward",
                                                 "batchnorm1d_relu_backward"]


@pytest.mark.parametrize("shape", [(2, 2, 10, 8), (1, 2, 11, 9), (2, 10, 8)], ids=str)
def test_sequential_fuses_with_the_unfused_bits(isa_threads, rng, monkeypatch, shape):
    layers = net()
    x = rand(rng, *shape)
    batched = len(shape) == 4
    dy = rand(rng, *((shape[0], 3) if batched else (3,)))
    if not batched:
        layers[5] = fc.Flatten(0)
    want, want_dx, want_grads = unfused(layers, x, dy)
    model = fc.Sequential(*layers)
    calls = Calls(monkeypatch, KERNELS)
    np.testing.assert_array_equal(model(x), want)
    np.testing.assert_array_equal(model.backward(dy), want_dx)
    for p, g in zip(model.parameters(), want_grads):
        np.testing.assert_array_equal(p.grad, g)
    # conv-relu-pool as one kernel, conv-relu as one; the ReLUs never ran alone;
    # the first ReLU's mask ran on the pooled gradient
    assert calls.counts == {"conv2d_forward": 1, "conv2d_maxpool_forward": 1, "relu_forward": 0,
                            "maxpool2d_forward": 0, "relu_backward": 2, "maxpool2d_backward": 1}


@pytest.mark.parametrize("pool", [fc.MaxPool2d(2, ceil_mode=True), fc.MaxPool2d(2, dilation=2),
                                  fc.MaxPool2d(2, padding=1), fc.MaxPool2d(2, stride=1)], ids=repr)
@pytest.mark.parametrize("shape", [(2, 2, 10, 8), (1, 2, 11, 9)], ids=str)
def test_only_the_plain_2x2_pool_fuses(isa_threads, rng, monkeypatch, pool, shape):
    """Any other option (ceil_mode too, even where it changes nothing) runs the conv, then the pool."""
    assert fc.MaxPool2d(2).is_2x2 and fc.MaxPool2d(2, dilation=1, ceil_mode=False).is_2x2 and not pool.is_2x2
    layers = net()[:2] + [pool]
    x = rand(rng, *shape)
    want, want_dx, want_grads = unfused(layers, x, np.ones_like(layers[-1](layers[1](layers[0](x)))))
    model = fc.Sequential(*layers)
    calls = Calls(monkeypatch, KERNELS)
    y = model(x)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(model.backward(np.ones_like(y)), want_dx)
    for p, g in zip(model.parameters(), want_grads):
        np.testing.assert_array_equal(p.grad, g)
    assert calls.counts["conv2d_maxpool_forward"] == 0 and calls.counts["maxpool2d_forward"] == 1


def test_a_user_container_fuses_too(rng, monkeypatch):
    class Block(Module):  # any container: children through the same pass
        def __init__(self, *mods):
            super().__init__()
            self.mods = [(f"m{i}", m) for i, m in enumerate(mods)]
            for name, m in self.mods:
                setattr(self, name, m)

        def forward(self, x):
            return fusion.forward(self, self.mods, x)

        def backward(self, dy):
            return fusion.backward(self, self.mods, dy)

    layers = net()[:3]
    x, dy = rand(rng, 2, 2, 8, 8), rand(rng, 2, 8, 4, 4)
    want, want_dx, _ = unfused(layers, x, dy)
    calls = Calls(monkeypatch, KERNELS)
    block = Block(*layers)
    np.testing.assert_array_equal(block(x), want)
    np.testing.assert_array_equal(block.backward(dy), want_dx)
    assert calls.counts["conv2d_maxpool_forward"] == 1 and calls.counts["relu_forward"] == 0


def test_subclasses_are_not_fused(rng, monkeypatch):
    class LoggedReLU(fc.ReLU):  # a user override must run
        seen = 0

        def forward(self, x):
            LoggedReLU.seen += 1
            return super().forward(x)

    fc.manual_seed(0)
    model = fc.Sequential(fc.Conv2d(2, 4, 3), LoggedReLU(), fc.MaxPool2d(2))
    calls = Calls(monkeypatch, KERNELS)
    model(rand(rng, 1, 2, 6, 6))
    assert LoggedReLU.seen == 1 and calls.counts["conv2d_maxpool_forward"] == 0


def test_reference_backend_runs_conv_relu_fused_but_pools_apart(rng, monkeypatch):
    model = fc.Sequential(*net()[:3])
    previous = fc.get_backend()
    fc.set_backend("check")  # conv2d_maxpool_forward's argmax is native-only (near ties)
    try:
        calls = Calls(monkeypatch, KERNELS)
        model(rand(rng, 2, 2, 8, 8))
    finally:
        fc.set_backend(previous)
    assert calls.counts["conv2d_maxpool_forward"] == 0 and calls.counts["maxpool2d_forward"] == 1


def test_observed_container_runs_unfused_and_reports_each_child(rng, monkeypatch):
    layers = net()
    model = fc.Sequential(*layers)
    x, dy = rand(rng, 2, 2, 10, 8), rand(rng, 2, 3)
    want, want_dx, want_grads = unfused(layers, x, dy)
    outs, grads = [], []
    calls = Calls(monkeypatch, KERNELS)
    with fusion.observe(model, lambda name, layer, a: outs.append((name, type(layer).__name__, a))):
        y = model(x)
    with fusion.observe(model, lambda name, layer, g: grads.append((name, g))):
        dx = model.backward(dy)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(dx, want_dx)
    for p, g in zip(model.parameters(), want_grads):
        np.testing.assert_array_equal(p.grad, g)
    assert [n for n, _, _ in outs] == [str(i) for i in range(7)] and outs[1][1] == "ReLU"
    assert [n for n, _ in grads] == [str(i) for i in reversed(range(7))]
    assert calls.counts["conv2d_maxpool_forward"] == 0 and calls.counts["relu_forward"] == 2
    # only the observed container: outside the block, fusion is back
    model(x)
    assert calls.counts["conv2d_maxpool_forward"] == 1


# -- batch norm -> ReLU ----------------------------------------------------------------------------

BN_KERNELS = ("batchnorm_forward", "batchnorm_backward", "relu_forward", "relu_backward")


def bn_net(pool):
    """conv -> bn -> relu twice; the second ReLU before a max-pool (whose backward
    row, ReLU -> MaxPool2d, takes that ReLU) or before a conv."""
    fc.manual_seed(0)
    tail = [fc.MaxPool2d(2), fc.Flatten(), fc.Linear(4 * 5 * 4, 3)] if pool else \
        [fc.Conv2d(4, 2, 1), fc.Flatten(), fc.Linear(2 * 10 * 8, 3)]
    return [fc.Conv2d(2, 6, 3, padding=1, bias=False), fc.BatchNorm2d(6), fc.ReLU(),
            fc.Conv2d(6, 4, 3, padding=1, bias=False), fc.BatchNorm2d(4, affine=False), fc.ReLU(), *tail]


def assert_bits(got, want):
    np.testing.assert_array_equal(np.ascontiguousarray(got).view(np.uint32), np.ascontiguousarray(want).view(np.uint32))


def state_bits(layers):
    """Every parameter, its gradient and every buffer (running statistics), as bits."""
    out = []
    for m in layers:
        out += [p.data for p in m.parameters()] + [p.grad for p in m.parameters()] + \
            [np.asarray(b) for _, b in m.named_buffers()]
    return [np.ascontiguousarray(a).view(np.uint8) for a in out]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("pool", [True, False], ids=["pool", "conv"])
@pytest.mark.parametrize("shape", [(2, 2, 10, 8), (1, 2, 10, 8)], ids=str)
def test_batchnorm_relu_fuses_with_the_unfused_bits(isa_threads, rng, monkeypatch, shape, pool, training):
    layers = bn_net(pool)
    model = fc.Sequential(*layers).train(training)
    apart = copy.deepcopy(layers)  # after Sequential: the Linear's init is rescaled as the output layer
    x, dy = rand(rng, *shape), rand(rng, shape[0], 3)
    want, want_dx, want_grads = unfused(apart, x, dy)
    for p, g in zip((p for m in apart for p in m.parameters()), want_grads):  # unfused() zeroed them
        p.grad[...] = g
    want_state = state_bits(apart)
    calls = Calls(monkeypatch, BN_KERNELS)
    assert_bits(model(x), want)
    for relu, bn_out in ((layers[2], apart[2].output), (layers[5], apart[5].output)):  # the ReLUs adopted
        assert_bits(relu.output, bn_out)
    assert_bits(model.backward(dy), want_dx)
    for got, expected in zip(state_bits(layers), want_state):
        np.testing.assert_array_equal(got, expected)
    # the ReLUs ran inside the batch norms' forwards; the first one's mask inside its
    # batch norm's backward too, the second's on the pooled gradient or in its batch norm's
    assert calls.counts == {"batchnorm_forward": 2, "batchnorm_backward": 2, "relu_forward": 0,
                            "relu_backward": 1 if pool else 0}


@pytest.mark.parametrize("shape", [(5, 6), (1, 6, 3), (4, 6, 7)], ids=str)
def test_batchnorm1d_relu_fuses_with_the_unfused_bits(isa_threads, rng, monkeypatch, shape):
    fc.manual_seed(0)
    head = [fc.Linear(4, 6)] if len(shape) == 2 else []
    layers = [*head, fc.BatchNorm1d(6), fc.ReLU(), fc.Flatten(), fc.Linear(6 * int(np.prod(shape[2:])), 2)]
    x = rand(rng, shape[0], 4) if head else rand(rng, *shape)
    dy = rand(rng, shape[0], 2)
    model = fc.Sequential(*layers)
    apart = copy.deepcopy(layers)
    want, want_dx, want_grads = unfused(apart, x, dy)
    calls = Calls(monkeypatch, BN_KERNELS)
    assert_bits(model(x), want)
    assert_bits(model.backward(dy), want_dx)
    for p, g in zip(model.parameters(), want_grads):
        assert_bits(p.grad, g)
    assert calls.counts["relu_forward"] == 0 and calls.counts["relu_backward"] == 0


@pytest.mark.parametrize("cls,shape", [(fc.BatchNorm2d, (2, 3, 4, 5)), (fc.BatchNorm1d, (4, 3))], ids=str)
def test_batchnorm_relu_in_eval_mode_passes_nan_and_inf_as_unfused(isa_threads, rng, cls, shape):
    """With running statistics a NaN or an infinity stays in its element: NaN
    is kept by the ReLU and passes dy back, +inf passes, -inf is cut."""
    fc.manual_seed(0)
    layers = [cls(3), fc.ReLU()]
    layers[0].running_mean[...] = rand(rng, 3)
    model = fc.Sequential(*layers).eval()
    apart = copy.deepcopy(layers)
    x, dy = rand(rng, *shape), rand(rng, *shape)
    x.flat[:5] = [np.nan, np.inf, -np.inf, 0.0, -0.0]
    want, want_dx, want_grads = unfused(apart, x, dy)
    assert_bits(model(x), want)
    assert_bits(model.backward(dy), want_dx)
    for p, g in zip(model.parameters(), want_grads):
        assert_bits(p.grad, g)
    assert np.isnan(want.flat[0]) and want.flat[1] == np.inf and want.flat[2] == 0 and want_dx.flat[0] != 0


def test_observed_batchnorm_relu_runs_unfused(rng, monkeypatch):
    model = fc.Sequential(*bn_net(pool=False))
    x, dy = rand(rng, 2, 2, 10, 8), rand(rng, 2, 3)
    calls = Calls(monkeypatch, BN_KERNELS)
    with fusion.observe(model, lambda *a: None):
        y = model(x)
        dx = model.backward(dy)
    assert calls.counts == {"batchnorm_forward": 2, "batchnorm_backward": 2, "relu_forward": 2, "relu_backward": 2}
    model.zero_grad()
    assert_bits(model(x), y)  # fused: the same bits
    assert_bits(model.backward(dy), dx)


def test_batchnorm_relu_backward_after_an_unfused_forward(rng):
    """The fused backward masks with the ReLU's kept output, which the unfused
    forward (observed) kept as well: the same bits either way."""
    layers = bn_net(pool=False)[:3]
    model, apart = fc.Sequential(*layers), copy.deepcopy(layers)
    x, dy = rand(rng, 2, 2, 6, 5), rand(rng, 2, 6, 6, 5)
    want, want_dx, want_grads = unfused(apart, x, dy)
    with fusion.observe(model, lambda *a: None):
        assert_bits(model(x), want)
    assert_bits(model.backward(dy), want_dx)
    for p, g in zip(model.parameters(), want_grads):
        assert_bits(p.grad, g)


def _without(monkeypatch, prefix):
    """Switch off the fusion rows whose names start with prefix ("" for all)."""
    for table in ("FORWARD", "BACKWARD"):
        monkeypatch.setattr(fusion, table, tuple(p for p in getattr(fusion, table) if not p.name.startswith(prefix)))


def _resnet20_step(x, labels):
    """ResNet-20 after one SGD step from fixed weights: its state (parameters,
    gradients, running statistics) as bits."""
    fc.manual_seed(3)
    model = fc.models.resnet20()
    opt = fc.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loss_fn = fc.SoftmaxCrossEntropy()
    loss_fn(model(x), labels)
    opt.zero_grad()
    model.backward(loss_fn.backward())
    opt.step()
    return state_bits([model])


@pytest.mark.parametrize("off", ["batchnorm", ""], ids=["bn_rows_off", "all_rows_off"])
def test_resnet20_sgd_step_is_the_same_fused_or_not(isa_threads, rng, monkeypatch, off):
    x, labels = rand(rng, 2, 3, 16, 16), rng.integers(0, 10, 2)
    calls = Calls(monkeypatch, BN_KERNELS)
    fused = _resnet20_step(x, labels)
    # 21 batch norms, 10 followed by a ReLU (the stem's and each block body's first): no ReLU
    # runs alone but the 9 blocks' backwards (their forwards are in the residual adds)
    assert calls.counts == {"batchnorm_forward": 21, "batchnorm_backward": 21, "relu_forward": 0, "relu_backward": 9}
    with monkeypatch.context() as m:
        _without(m, off)
        apart = _resnet20_step(x, labels)
    assert calls.counts["relu_forward"] == (10 if off else 19)  # the rows were off
    assert len(fused) == len(apart)
    for got, want in zip(fused, apart):
        np.testing.assert_array_equal(got, want)
