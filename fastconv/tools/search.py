"""Random hyperparameter search: random draws, not a grid (which wastes trials on the
unimportant axes), and the
learning rate and regularization strength on a log scale.

>>> space = {"lr": fc.search.LogUniform(1e-4, 1e-1),          # 10 ** uniform(-4, -1)
...          "weight_decay": fc.search.LogUniform(1e-6, 1e-2),
...          "momentum": fc.search.Uniform(0.5, 0.99),
...          "batch_size": fc.search.Choice([32, 64])}
>>> def build(config):
...     model = fc.models.build_model("digits", (1, 8, 8), 10)
...     opt = fc.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"],
...                  weight_decay=config["weight_decay"])
...     return model, fc.SoftmaxCrossEntropy(), opt
>>> result = fc.search.random_search(build, space, n_trials=10, train=train, val=val, epochs=3,
...                                  out_dir="runs/search")
>>> result.best_config
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fastconv.nn import init
from fastconv._kernels import get_num_threads, set_num_threads
from fastconv.train.checkpoint import atomic_write, atomic_write_json
from fastconv.data import as_dataset, kfold
from fastconv.train import Trainer, TrainingDiverged

__all__ = ["Choice", "LogUniform", "SearchResult", "Uniform", "random_search", "run_trial", "sample"]


class LogUniform:
    """low * (high / low) ** u with u ~ U(0, 1): the same as 10 ** uniform(log10 low, log10 high)."""

    def __init__(self, low: float, high: float):
        if not (0 < low <= high and math.isfinite(high)):
            raise ValueError(f"LogUniform: need 0 < low <= high; got low={low!r}, high={high!r}")
        self.low, self.high = float(low), float(high)

    def sample(self, rng: np.random.Generator) -> float:
        return float(10 ** rng.uniform(math.log10(self.low), math.log10(self.high)))

    def describe(self) -> dict:
        return {"log_uniform": [self.low, self.high]}

    def __repr__(self):
        return f"LogUniform({self.low:g}, {self.high:g})"


class Uniform:
    """uniform(low, high): for parameters that act additively (momentum, dropout)."""

    def __init__(self, low: float, high: float):
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ValueError(f"Uniform: need finite low <= high; got low={low!r}, high={high!r}")
        self.low, self.high = float(low), float(high)

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))

    def describe(self) -> dict:
        return {"uniform": [self.low, self.high]}

    def __repr__(self):
        return f"Uniform({self.low:g}, {self.high:g})"


class Choice:
    """One of ``values``, each equally likely."""

    def __init__(self, values):
        self.values = list(values)
        if not self.values:
            raise ValueError("Choice: `values` is empty")

    def sample(self, rng: np.random.Generator):
        v = self.values[int(rng.integers(len(self.values)))]
        return v.item() if isinstance(v, np.generic) else v

    def describe(self) -> dict:
        return {"choice": self.values}

    def __repr__(self):
        return f"Choice({self.values!r})"


def sample(space: dict, rng: np.random.Generator) -> dict:
    """One configuration: each distribution in ``space`` drawn once (in key order); constants kept."""
    if not isinstance(space, dict) or not space:
        raise TypeError("random_search: `space` must be a non-empty dict of name -> distribution or value; "
                        f"got {space!r}")
    return {k: (v.sample(rng) if hasattr(v, "sample") else v) for k, v in space.items()}


@dataclasses.dataclass
class SearchResult:
    """Trials sorted by validation accuracy (best first); ``best_config`` is the winner's configuration."""

    trials: list
    best_config: dict
    best: dict
    space: dict


def _row_key(t):
    acc = t["val_accuracy"]
    loss = t["val_loss"] if t["val_loss"] is not None else math.inf
    return (acc is None, -(acc or 0.0), loss, t["trial"])


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _trainer(build_fn: Callable[[dict], Any], config: dict, trial_seed: int) -> Trainer:
    init.manual_seed(trial_seed)
    built = build_fn(dict(config))
    if isinstance(built, Trainer):
        trainer = built
        trainer.seed = trial_seed
    elif isinstance(built, tuple) and len(built) in (3, 4):
        trainer = Trainer(*built, batch_size=int(config.get("batch_size", 64)), seed=trial_seed)
    else:
        raise TypeError("random_search: `build_fn` must return a Trainer or "
                        f"(model, loss_fn, optimizer[, scheduler]); got {type(built).__name__}")
    trainer.verbose, trainer.progress, trainer.checkpoint_dir = False, False, None
    return trainer


def run_trial(build_fn: Callable[[dict], Any], trial: int, config: dict, trial_seed: int, train, val, epochs: int,
              threads: int | None = None, folds: int | None = None, fold_seed: int = 0) -> dict:
    """Train one trial and return its record (see :func:`random_search`); runs the same in a Dask worker.

    With ``threads``, the kernels use that many threads (set in this process).
    With ``folds`` K, ``val`` is unused: the trial trains K times, from the same
    initialization seed, on the folds of ``train`` (:func:`fastconv.data.kfold`
    with ``fold_seed``), and its val_accuracy, val_loss and train_loss are the
    means over the folds of each fold's best epoch (``fold_val_accuracy``
    lists them).
    """
    if threads is not None:
        set_num_threads(threads)
    splits = [(train, val)] if folds is None else list(kfold(train, folds, fold_seed))
    record = {"trial": trial, "seed": trial_seed, "config": config, "status": "ok", "val_accuracy": None,
              "val_loss": None, "train_loss": None, "best_epoch": None, "epochs": 0, "time": 0.0}
    start = time.perf_counter()
    best = []
    for part, held_out in splits:
        trainer = _trainer(build_fn, config, trial_seed)
        try:
            history = trainer.fit(part, held_out, epochs=epochs)
        except TrainingDiverged as e:
            record.update(status="diverged", error=str(e), epochs=record["epochs"] + len(trainer.history["epoch"]))
            break
        b = history["best_epoch"] - 1
        best.append((history["val_accuracy"][b], history["val_loss"][b], history["train_loss"][b], b + 1))
        record["epochs"] += len(history["epoch"])
    if record["status"] == "ok":
        acc, loss, train_loss, epoch = (list(v) for v in zip(*best))
        record.update(val_accuracy=float(np.mean(acc)), val_loss=float(np.mean(loss)),
                      train_loss=float(np.mean(train_loss)), best_epoch=epoch[0] if folds is None else None)
        if folds is not None:
            record.update(fold_val_accuracy=acc, fold_best_epoch=epoch)
    record["time"] = time.perf_counter() - start
    return record


def _failed(trial: int, config: dict, trial_seed: int, error: BaseException, runs: int) -> dict:
    """The record of a trial that never finished: its worker died each of the ``runs`` times it ran."""
    return {"trial": trial, "seed": trial_seed, "config": config, "status": "failed", "val_accuracy": None,
            "val_loss": None, "train_loss": None, "best_epoch": None, "epochs": 0, "time": 0.0,
            "error": f"the worker process died each of the {runs} times it ran this trial "
                     f"({type(error).__name__}: {error})"}


def random_search(build_fn: Callable[[dict], Any], space: dict, n_trials: int, train, val, epochs: int = 3,
                  seed: int = 0, out_dir=None, verbose: bool = True,
                  log: Callable[[str], None] | None = None, *, scheduler=None, workers: int | None = None,
                  threads: int | None = None, retries: int = 1, folds: int | None = None) -> SearchResult:
    """Train ``n_trials`` configurations drawn at random from ``space``; return them ranked.

    ``space`` maps names to :class:`LogUniform`, :class:`Uniform`,
    :class:`Choice` or constants. Draws come from a generator seeded with
    ``seed``. Trial i (from 1) gets the seed ``seed + i``: fastconv's weight
    initialization is seeded with it (``fc.manual_seed``) before
    ``build_fn(config)`` runs, and the trainer shuffles with it.

    ``build_fn(config)`` returns a :class:`Trainer` or a tuple
    ``(model, loss_fn, optimizer[, scheduler])``, for which a Trainer is made
    with ``batch_size=config.get("batch_size", 64)``. Each trial trains
    ``epochs`` epochs on ``train`` and is scored by the validation accuracy
    (and loss) of its best epoch. A trial whose loss diverges is recorded with
    status "diverged" and ranked last.

    On a Dask cluster (``pip install "fastconv[dask]"``): ``scheduler`` (an
    address such as "tcp://host:8786", or a ``distributed.Client``) sends the
    trials to that cluster; ``workers=N`` without a scheduler starts a local
    cluster of N worker processes. ``build_fn`` then travels to the workers
    (by cloudpickle, as Dask does), so it should not capture large data;
    ``train`` and ``val`` are sent to each worker once. Seeds, records and the
    table are the same as a serial search's run with the same ``threads``.
    A trial whose worker dies is run again on another worker; one that killed
    ``retries + 1`` workers is recorded with status "failed" and ranked last.

    ``folds`` K (cross-validation): ``val`` must be None; each trial trains
    on the K stratified folds of ``train`` (the same folds for every trial,
    drawn with ``seed``) and is scored by the mean over the folds of the
    validation accuracy (and loss) of each fold's best epoch.

    ``threads``: kernel threads of each trial (default: 1 on a Dask cluster,
    so that trials sharing a machine do not oversubscribe it; the current
    setting in a serial search, which sets nothing then).

    With ``out_dir``, writes ``results.csv`` and ``results.json`` (all trials,
    best first, with their seeds and configurations) and ``best_config.json``.
    """
    log = log or print
    if isinstance(n_trials, bool) or not isinstance(n_trials, (int, np.integer)) or n_trials < 1:
        raise ValueError(f"random_search: `n_trials` must be an int >= 1; got {n_trials!r}")
    for name, value in (("workers", workers), ("threads", threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"random_search: `{name}` must be an int >= 1 or None; got {value!r}")
    if scheduler is not None and workers is not None:
        raise ValueError("random_search: give either `scheduler` (an existing Dask cluster) or `workers` (a local "
                         f"one), not both; got scheduler={scheduler!r}, workers={workers!r}")
    if isinstance(retries, bool) or not isinstance(retries, (int, np.integer)) or retries < 0:
        raise ValueError(f"random_search: `retries` must be an int >= 0; got {retries!r}")
    if folds is not None:
        if val is not None:
            raise ValueError("random_search: with `folds` the validation data are the folds of `train`; "
                             f"pass val=None (got {type(val).__name__})")
        kfold(train, folds, seed)  # checks `folds` now, not in every trial
    train, val = as_dataset(train, "train"), None if val is None else as_dataset(val, "val")
    if val is None and folds is None:
        raise ValueError("random_search: `val` is None; give validation data, or `folds` to cross-validate")
    rng = np.random.default_rng(seed)
    configs = [sample(space, rng) for _ in range(n_trials)]  # drawn up front: trial i's config doesn't depend on others
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
    tasks = [(build_fn, i, config, int(seed) + i) for i, config in enumerate(configs, 1)]
    if scheduler is None and workers is None:
        done = ((i, run_trial(*task, train, val, epochs, threads, folds, seed)) for i, task in enumerate(tasks))
    else:
        from fastconv.train.distributed import map_trials

        done = map_trials(run_trial, tasks, (train, val), scheduler=scheduler, workers=workers, retries=retries,
                          epochs=epochs, threads=threads or 1, folds=folds, fold_seed=seed)
    trials = [None] * n_trials
    threads_before = get_num_threads()
    try:
        for i, record in done:
            if isinstance(record, BaseException):
                record = _failed(*tasks[i][1:], record, runs=retries + 1)
            trials[i] = record
            if verbose:
                shown = "  ".join(f"{k} {_fmt(v)}" for k, v in record["config"].items())
                outcome = (f"val acc {100 * record['val_accuracy']:.1f}% (loss {record['val_loss']:.4f})"
                           if record["status"] == "ok" else record["status"])
                log(f"trial {record['trial']:>{len(str(n_trials))}}/{n_trials}  {shown}  -> {outcome}  "
                    f"{record['time']:.1f}s")
    finally:
        set_num_threads(threads_before)  # a serial search with `threads` leaves the caller's setting as it was
    ranked = sorted(trials, key=_row_key)
    for rank, t in enumerate(ranked, 1):
        t["rank"] = rank
    described = {k: (v.describe() if hasattr(v, "describe") else {"constant": v}) for k, v in space.items()}
    result = SearchResult(trials=ranked, best_config=dict(ranked[0]["config"]), best=ranked[0], space=described)
    if out_dir is not None:
        _write_results(out_dir, result, seed, epochs)
    return result


def _write_results(out_dir, result: SearchResult, seed, epochs) -> None:
    names = list(result.space)
    columns = ["rank", "trial", "seed", "status", "val_accuracy", "val_loss", "train_loss", "best_epoch", "epochs",
               "time"] + names
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for t in result.trials:
        writer.writerow([("" if t.get(c) is None else t[c]) for c in columns[:10]] + [t["config"][n] for n in names])
    atomic_write(os.path.join(out_dir, "results.csv"), buf.getvalue().encode())
    atomic_write_json(os.path.join(out_dir, "results.json"),
                      {"seed": seed, "epochs": epochs, "space": result.space, "trials": result.trials,
                       "best_config": result.best_config})
    atomic_write_json(os.path.join(out_dir, "best_config.json"), result.best_config)
