"""Adagrad, RMSprop and Adam: first steps by hand, PyTorch over many steps,
state-dict resume. (SGD's are in test_training.py and test_vs_torch.py.)"""

import numpy as np
import pytest
from conftest import rand

import fastconv as fc


def test_adam_first_step_by_hand():
    p = fc.Parameter(np.array([1.0, -1.0], np.float32))
    opt = fc.Adam([p], lr=0.1)
    p.grad[:] = [0.5, -2.0]
    opt.step()  # bias-corrected m / sqrt(v) = sign(g) on step 1
    np.testing.assert_allclose(p.data, [0.9, -0.9], rtol=1e-5)


def test_adagrad_and_rmsprop_first_step_by_hand():
    p = fc.Parameter(np.array([1.0], np.float32))
    opt = fc.Adagrad([p], lr=0.1)
    p.grad[:] = 2.0
    opt.step()  # sum = 4; p -= 0.1 * 2 / 2
    np.testing.assert_allclose(p.data, [0.9], rtol=1e-6)
    p = fc.Parameter(np.array([1.0], np.float32))
    opt = fc.RMSprop([p], lr=0.01, alpha=0.9)
    p.grad[:] = 2.0
    opt.step()  # v = 0.1 * 4 = 0.4; p -= 0.01 * 2 / sqrt(0.4)
    np.testing.assert_allclose(p.data, [1 - 0.02 / np.sqrt(0.4)], rtol=1e-5)


CASES = [
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.5)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, momentum=0.8, centered=True, weight_decay=0.01)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
]


@pytest.mark.parametrize("name,kwargs", CASES)
def test_optimizers_match_torch(name, kwargs, rng, torch):
    w0 = rand(rng, 4, 3)
    grads = [rand(rng, 4, 3) for _ in range(8)]
    p = fc.Parameter(w0)
    opt = getattr(fc, name)([p], **kwargs)
    tp = torch.nn.Parameter(torch.tensor(w0))
    topt = getattr(torch.optim, name)([tp], **kwargs)
    for g in grads:
        p.grad[...] = g
        opt.step()
        tp.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,kwargs", CASES)
def test_resumed_run_is_identical(name, kwargs, rng):
    grads = [rand(rng, 5) for _ in range(6)]

    def run(split):
        p = fc.Parameter(np.linspace(-1, 1, 5))
        opt = getattr(fc, name)([p], **kwargs)
        for step, g in enumerate(grads):
            if step == split:
                saved = opt.state_dict()
                p = fc.Parameter(p.data.copy())
                opt = getattr(fc, name)([p], **{**kwargs, "lr": 123.0})
                opt.load_state_dict(saved)
            p.grad[...] = g
            opt.step()
        return p.data

    np.testing.assert_array_equal(run(None), run(3))


def test_param_groups_with_their_own_lr():
    a, b = fc.Parameter(np.ones(2)), fc.Parameter(np.ones(2))
    opt = fc.Adam([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    a.grad[:] = b.grad[:] = 1.0
    opt.step()
    np.testing.assert_allclose(a.data, 0.9, rtol=1e-5)
    np.testing.assert_allclose(b.data, 0.5, rtol=1e-5)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]


def test_optimizer_errors():
    p = fc.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match=r"Adam: `betas` must be two numbers in \[0, 1\); got \(0.9, 1.0\)"):
        fc.Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match=r"RMSprop: `eps` must be a finite number >= 0; got nan"):
        fc.RMSprop([p], eps=float("nan"))
    with pytest.raises(ValueError, match="more than one group"):
        fc.Adagrad([{"params": [p]}, {"params": [p]}])
    opt = fc.Adam([p])
    with pytest.raises(ValueError, match=r"param groups have sizes \[2\]; this optimizer has \[1\]"):
        opt.load_state_dict({"state": {}, "param_groups": [{"params": [0, 1]}]})
