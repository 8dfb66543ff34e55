"""fc.gradcheck itself: it passes right backwards on both backends, and the
native mode catches a wrong native kernel that the reference mode cannot see."""

import numpy as np
import pytest
from conftest import rand

import fastconv as fc
from fastconv import _kernels

LAYERS = {
    "conv": (lambda: fc.Conv2d(3, 4, 3, stride=(2, 1), padding=1), (2, 3, 7, 6)),
    "conv_winograd_shape": (lambda: fc.Conv2d(16, 16, 3, padding=1), (2, 16, 8, 8)),
    "linear": (lambda: fc.Linear(12, 5), (3, 12)),
    "batchnorm": (lambda: fc.BatchNorm2d(3), (4, 3, 5, 5)),
    "seq": (lambda: fc.Sequential(fc.Conv2d(2, 8, 3, padding=1), fc.ReLU(), fc.MaxPool2d(2), fc.Flatten(),
                                  fc.Linear(8 * 9, 4)), (2, 2, 6, 6)),
    "tanh": (fc.Tanh, (3, 7)),
    "conv_bn_relu": (lambda: fc.Sequential(fc.Conv2d(2, 3, 3, padding=1, bias=False), fc.BatchNorm2d(3), fc.ReLU(),
                                          fc.Flatten(), fc.Linear(3 * 4 * 4, 2)), (3, 2, 4, 4)),  # fused bn -> relu
}


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("name", LAYERS)
def test_right_backwards_pass(rng, name, backend):
    make, shape = LAYERS[name]
    fc.manual_seed(0)
    layer = make()
    x = rand(rng, *shape)
    result = fc.gradcheck(layer, x, backend=backend, max_elements=40)
    assert result.passed, str(result)
    assert result.checked > 0
    assert layer.parameters() == [] or all(p.data.dtype == np.float32 for p in layer.parameters())


def test_native_mode_catches_a_wrong_native_kernel(rng, monkeypatch):
    right = _kernels.conv2d_backward

    def wrong(*args, **kwargs):  # dW 1.5x too large: a bug in the C path only
        dx, dw, db = right(*args, **kwargs)
        return dx, dw * np.float32(1.5), db

    monkeypatch.setattr(_kernels, "conv2d_backward", wrong)
    fc.manual_seed(0)
    conv, x = fc.Conv2d(2, 3, 3, padding=1), rand(rng, 2, 2, 5, 5)
    assert fc.gradcheck(conv, x).passed  # the reference mode never calls the native kernel
    result = fc.gradcheck(conv, x, backend="native")
    assert not result.passed and result.worst[0] == "weight" and result.max_rel_error > 0.3, str(result)


def test_native_mode_leaves_the_module_as_it_was(rng):
    fc.manual_seed(0)
    lin = fc.Linear(4, 3)
    w, g = lin.weight.data, lin.weight.grad
    previous = fc.get_backend()
    fc.gradcheck(lin, rand(rng, 2, 4), backend="native")
    assert lin.weight.data is w and lin.weight.grad is g and fc.get_backend() == previous


def test_bad_backend():
    with pytest.raises(ValueError, match=r"gradcheck: `backend` must be 'reference' or 'native'; got 'check'"):
        fc.gradcheck(fc.ReLU(), np.ones(3, np.float32), backend="check")
