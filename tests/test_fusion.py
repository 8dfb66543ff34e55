"""Fusion as a pass: the patterns of fastconv.nn.fusion run inside any container
that runs its children through it, give the bits of the unfused layers, are
never applied to subclasses, and are switched off while a container is observed."""

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
    assert [p.name for p in fusion.FORWARD] == ["conv2d_relu_maxpool2d", "conv2d_relu", "residual_relu"]
    assert [p.name for p in fusion.BACKWARD] == ["relu_maxpool2d_backward"]


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
