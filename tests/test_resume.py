"""`fastconv train --resume`: options that define the run are refused when they
differ, --epochs re-plans epoch-length schedules (no climbing learning rate),
the early-stopping options are honoured; and the schedules' load rule behind it."""

import json
import math

import numpy as np
import pytest

import fastconv as fc
from fastconv.tools import cli

ARCH = "fc16-relu-fc10"


def train(tmp_path, *args):
    return cli.main(["train", "--arch", ARCH, "--out", str(tmp_path / "run"), "--no-plots", "--threads", "1",
                     "--patience", "0", *map(str, args)])


def history(tmp_path):
    return json.loads((tmp_path / "run" / "history.json").read_text())


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_more_epochs_replan_the_schedule(tmp_path, capsys, schedule):
    assert train(tmp_path, "--epochs", 6, "--schedule", schedule) == 0
    assert train(tmp_path, "--epochs", 9, "--resume") == 0
    out = capsys.readouterr().out
    assert "resuming with --epochs 9 (the run was planned for 6)" in out
    h = history(tmp_path)
    assert h["epoch"] == list(range(1, 10))
    base = h["lr"][0]
    if schedule == "cosine":  # epochs 7-9 run on the 9-epoch cosine, going down to its minimum
        expected = [base * (1 + math.cos(math.pi * t / 9)) / 2 for t in (6, 7, 8)]
        assert "the cosine schedule now reaches its minimum at epoch 9" in out
    else:  # the 9-epoch step schedule drops every 3 epochs
        expected = [base * 0.1 ** (t // 3) for t in (6, 7, 8)]
    assert h["lr"][6:] == pytest.approx(expected, rel=1e-9)
    assert h["lr"][6] >= h["lr"][7] >= h["lr"][8]
    assert "epochs = 9" in (tmp_path / "run" / "config.toml").read_text()  # the run's plan from now on
    assert train(tmp_path, "--resume") == 0  # nothing left: the plan is 9 epochs
    assert history(tmp_path)["epoch"] == list(range(1, 10))


@pytest.mark.parametrize("option,value,key", [
    ("--lr", 0.5, "lr"), ("--seed", 3, "seed"), ("--arch", "fc32-relu-fc10", "arch"),
    ("--optimizer", "sgd", "optimizer"), ("--batch-size", 16, "batch_size"), ("--schedule", "exp", "schedule"),
    ("--momentum", 0.5, "momentum"),
])
def test_options_that_change_the_run_are_refused(tmp_path, capsys, option, value, key):
    assert train(tmp_path, "--epochs", 2) == 0
    capsys.readouterr()
    assert train(tmp_path, "--epochs", 3, "--resume", option, value) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"({key} = " in err[0] and f"{option} {value!r}" in err[0], err
    assert "start a new run" in err[0]
    assert history(tmp_path)["epoch"] == [1, 2]  # nothing was trained


def test_early_stopping_options_on_the_command_line(tmp_path, capsys):
    assert train(tmp_path, "--epochs", 30, "--stop-at", 0.5, "--monitor", "val_accuracy") == 0
    out = capsys.readouterr().out
    h = history(tmp_path)
    assert h["stopped_early"] and len(h["epoch"]) < 30
    assert "early stop: val_accuracy" in out and "reached the target 0.5" in out
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--min-delta", "-1"])
    assert e.value.code == 2
    assert "--min-delta: must be a finite number >= 0; got -1" in capsys.readouterr().err


def test_loaded_schedule_keeps_its_own_settings():
    """A schedule loads the saved counters and keeps the settings it was made
    with; when those differ, the rates follow its closed form from the saved epoch."""
    params = [fc.Parameter(np.zeros(3, np.float32))]
    old_opt = fc.SGD(params, lr=0.1)
    old = fc.CosineAnnealingLR(old_opt, T_max=6)
    for _ in range(6):
        old.step()
    opt = fc.SGD(params, lr=0.1)
    new = fc.CosineAnnealingLR(opt, T_max=10)
    opt.load_state_dict(old_opt.state_dict())
    new.load_state_dict(old.state_dict())
    assert new.T_max == 10 and new.last_epoch == 6
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * (1 + math.cos(math.pi * 6 / 10)) / 2)
    rates = []
    for _ in range(4):
        new.step()
        rates.append(opt.param_groups[0]["lr"])
    assert rates == pytest.approx([0.1 * (1 + math.cos(math.pi * t / 10)) / 2 for t in (7, 8, 9, 10)], abs=1e-12)
    # the same settings: the rates are the optimizer's, untouched (manual changes carry on)
    same_opt = fc.SGD(params, lr=0.1)
    same = fc.CosineAnnealingLR(same_opt, T_max=6)
    old_opt.param_groups[0]["lr"] = 0.03
    same_opt.load_state_dict(old_opt.state_dict())
    same.load_state_dict(old.state_dict())
    assert same_opt.param_groups[0]["lr"] == 0.03
