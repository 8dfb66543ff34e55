"""fastconv.tools.search: log-uniform/uniform/choice draws, seeded trials, ranked results."""

import csv
import json
import math

import numpy as np
import pytest

import fastconv as fc
from fastconv import data as D
from fastconv.tools import search as S
from fastconv.train import Trainer
from fastconv.models import build_model


def test_distributions():
    rng = np.random.default_rng(0)
    lr = np.array([S.LogUniform(1e-6, 10).sample(rng) for _ in range(4000)])
    assert lr.min() >= 1e-6 and lr.max() <= 10
    # log-uniform: each decade equally likely (the notes' 10 ** uniform(-6, 1))
    counts = np.histogram(np.log10(lr), bins=7, range=(-6, 1))[0]
    assert counts.min() > 0.8 * 4000 / 7
    u = np.array([S.Uniform(0.5, 0.9).sample(rng) for _ in range(2000)])
    assert 0.5 <= u.min() and u.max() <= 0.9 and abs(u.mean() - 0.7) < 0.02
    c = [S.Choice([32, 64]).sample(rng) for _ in range(200)]
    assert set(c) == {32, 64} and all(type(v) is int for v in c)
    assert S.sample({"a": S.Choice(["x"]), "b": 3}, rng) == {"a": "x", "b": 3}
    with pytest.raises(ValueError, match=r"LogUniform: need 0 < low <= high; got low=0"):
        S.LogUniform(0, 1)
    with pytest.raises(ValueError, match=r"Uniform: need finite low <= high"):
        S.Uniform(1, 0)
    with pytest.raises(ValueError, match=r"Choice: `values` is empty"):
        S.Choice([])


@pytest.fixture(scope="module")
def splits():
    train, val = D.train_val_split(D.load_digits()[:300], 0.3, seed=0)
    norm = D.Normalizer.fit(train)
    return norm(train), norm(val)


def build(config):
    model = build_model("conv4x3p1-relu-pool2-fc10", (1, 8, 8), 10)
    opt = fc.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"])
    return model, fc.SoftmaxCrossEntropy(), opt


SPACE = {"lr": S.LogUniform(1e-3, 1e-1), "momentum": S.Uniform(0.5, 0.9), "batch_size": S.Choice([32, 64])}


def test_random_search_ranks_records_and_writes_tables(splits, tmp_path):
    train, val = splits
    lines = []
    result = S.random_search(build, SPACE, n_trials=3, train=train, val=val, epochs=1, seed=7,
                             out_dir=tmp_path, log=lines.append)
    accs = [t["val_accuracy"] for t in result.trials]
    assert accs == sorted(accs, reverse=True) and [t["rank"] for t in result.trials] == [1, 2, 3]
    assert sorted(t["seed"] for t in result.trials) == [8, 9, 10]
    assert result.best_config == result.trials[0]["config"] and result.best is result.trials[0]
    assert all(1e-3 <= t["config"]["lr"] <= 1e-1 for t in result.trials)
    assert len(lines) == 3 and lines[0].startswith("trial 1/3  lr ") and "val acc" in lines[0]

    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["trial"]) for r in rows] == [t["trial"] for t in result.trials]
    assert list(rows[0])[:5] == ["rank", "trial", "seed", "status", "val_accuracy"] and "lr" in rows[0]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["space"]["lr"] == {"log_uniform": [1e-3, 1e-1]} and saved["seed"] == 7
    assert saved["trials"][0]["config"] == result.best_config
    assert json.loads((tmp_path / "best_config.json").read_text()) == result.best_config

    again = S.random_search(build, SPACE, n_trials=3, train=train, val=val, epochs=1, seed=7, verbose=False)
    assert [t["config"] for t in again.trials] == [t["config"] for t in result.trials]
    assert [t["val_loss"] for t in again.trials] == [t["val_loss"] for t in result.trials]  # trials are seeded


def test_diverged_trials_rank_last_and_trainers_are_accepted(splits):
    train, val = splits

    def build_trainer(config):
        model, loss, opt = build(config)
        return Trainer(model, loss, opt, batch_size=64)

    space = {"lr": S.Choice([1e7, 0.05]), "momentum": 0.9}
    result = S.random_search(build_trainer, space, n_trials=4, train=train, val=val, epochs=1, seed=1, verbose=False)
    statuses = [t["status"] for t in result.trials]
    assert "diverged" in statuses and "ok" in statuses
    assert statuses == sorted(statuses, key=lambda s: s != "ok")
    assert result.best["config"]["lr"] == 0.05
    bad = next(t for t in result.trials if t["status"] == "diverged")
    assert bad["val_accuracy"] is None and "training diverged" in bad["error"]


def test_random_search_argument_errors(splits):
    train, val = splits
    with pytest.raises(ValueError, match=r"`n_trials` must be an int >= 1; got 0"):
        S.random_search(build, SPACE, 0, train, val)
    with pytest.raises(TypeError, match=r"`space` must be a non-empty dict"):
        S.random_search(build, {}, 1, train, val)
    with pytest.raises(TypeError, match=r"`build_fn` must return a Trainer or \(model, loss_fn, optimizer"):
        S.random_search(lambda c: None, SPACE, 1, train, val, verbose=False)
    assert math.isclose(S.LogUniform(2, 2).sample(np.random.default_rng(0)), 2)
