"""Learning-rate schedules: sequences against closed forms and PyTorch."""

import math

import numpy as np
import pytest

import fastconv as fc


def _opt(lr=0.1):
    return fc.SGD([fc.Parameter(np.zeros(1))], lr=lr)


def _sequence(sched, epochs=25):
    lrs = [sched.get_last_lr()[0]]
    for _ in range(epochs):
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    return lrs


@pytest.mark.parametrize("make,closed", [
    (lambda o: fc.StepLR(o, step_size=4, gamma=0.5), lambda t: 0.1 * 0.5 ** (t // 4)),
    (lambda o: fc.ExponentialLR(o, gamma=0.9), lambda t: 0.1 * 0.9 ** t),
    (lambda o: fc.InverseTimeLR(o, decay_rate=0.5), lambda t: 0.1 / (1 + 0.5 * t)),
    (lambda o: fc.CosineAnnealingLR(o, T_max=10, eta_min=0.01),
     lambda t: 0.01 + 0.09 * (1 + math.cos(math.pi * t / 10)) / 2),
])
def test_closed_forms(make, closed):
    sched = make(_opt())
    np.testing.assert_allclose(_sequence(sched), [closed(t) for t in range(26)], rtol=1e-12)
    np.testing.assert_allclose([sched.closed_form(0.1, t) for t in range(26)], [closed(t) for t in range(26)])


@pytest.mark.parametrize("name,kwargs", [
    ("StepLR", dict(step_size=3, gamma=0.3)), ("ExponentialLR", dict(gamma=0.8)),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.001)),
])
def test_match_torch(name, kwargs, torch):
    ours = _sequence(getattr(fc, name)(_opt(), **kwargs))
    topt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = getattr(torch.optim.lr_scheduler, name)(topt, **kwargs)
    theirs = [sched.get_last_lr()[0]]
    for _ in range(25):
        topt.step()
        sched.step()
        theirs.append(sched.get_last_lr()[0])
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)


METRICS = [1.0, 0.9, 0.95, 0.95, 0.95, 0.89, 0.9, 0.9, 0.9, 0.9, 0.9, 0.5, 0.6, 0.6, 0.6, 0.6]


@pytest.mark.parametrize("kwargs", [dict(patience=2), dict(patience=1, cooldown=2, factor=0.5),
                                    dict(mode="max", patience=1, threshold_mode="abs", threshold=0.01, min_lr=0.02)])
def test_reduce_on_plateau_matches_torch(kwargs, torch):
    opt = _opt()
    ours = fc.ReduceLROnPlateau(opt, **kwargs)
    topt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kwargs)
    for m in METRICS:
        ours.step(m)
        theirs.step(m)
        assert opt.param_groups[0]["lr"] == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12)


def test_reduce_on_plateau_reduces_after_patience():
    opt = _opt()
    sched = fc.ReduceLROnPlateau(opt, patience=2, factor=0.5)
    for m in [1.0, 1.0, 1.0]:
        sched.step(m)
    assert opt.param_groups[0]["lr"] == 0.1
    sched.step(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


def test_state_dict_resume():
    opt = _opt()
    sched = fc.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(5):
        sched.step()
    state = sched.state_dict()
    opt2 = _opt()
    sched2 = fc.StepLR(opt2, step_size=2, gamma=0.5)
    opt2.load_state_dict(opt.state_dict())  # the rates come with the optimizer, as in PyTorch
    sched2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.25)
    sched.step()
    sched2.step()
    assert sched.get_last_lr() == sched2.get_last_lr()
    with pytest.raises(KeyError, match="unexpected keys"):
        sched2.load_state_dict({"bogus": 1})


def test_schedule_errors():
    with pytest.raises(ValueError, match=r"StepLR: `step_size` must be an int >= 1; got 0"):
        fc.StepLR(_opt(), step_size=0)
    with pytest.raises(ValueError, match=r"CosineAnnealingLR: `T_max` must be an int >= 1"):
        fc.CosineAnnealingLR(_opt(), T_max=0)
    with pytest.raises(TypeError, match="must be a fastconv Optimizer"):
        fc.ExponentialLR(object(), gamma=0.5)
    with pytest.raises(ValueError, match=r"`mode` must be 'min' or 'max'"):
        fc.ReduceLROnPlateau(_opt(), mode="up")


def test_chained_schedules_and_manual_changes_match_torch(torch):
    def run(lib, sched_mod):
        p = fc.Parameter(np.zeros(1)) if lib is fc else torch.nn.Parameter(torch.zeros(1))
        opt = lib.SGD([p], lr=0.1) if lib is fc else torch.optim.SGD([p], lr=0.1)
        a = sched_mod.StepLR(opt, step_size=2, gamma=0.5)
        b = sched_mod.ExponentialLR(opt, gamma=0.9)
        c = sched_mod.CosineAnnealingLR(opt, T_max=4)
        lrs = []
        for epoch in range(12):
            if epoch == 5:
                opt.param_groups[0]["lr"] = 0.05  # set by hand: the schedules carry on from it
            if lib is not fc:
                opt.step()
            for sched in (a, b, c):
                sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        return lrs

    np.testing.assert_allclose(run(fc, fc), run(torch, torch.optim.lr_scheduler), rtol=1e-9, atol=1e-15)
