"""The training loop: :class:`Trainer`, :class:`EarlyStopping`, and models from spec strings.

>>> trainer = fc.Trainer(model, fc.SoftmaxCrossEntropy(), opt, batch_size=64,
...                      early_stopping=fc.EarlyStopping(patience=5), checkpoint_dir="runs/lenet", seed=0)
>>> history = trainer.fit(train, val, epochs=20)    # train/val: fc.data.Dataset or (X, y)
>>> trainer.evaluate(test)                          # {"loss": ..., "accuracy": ...}

What the trainer watches, after the notes on babysitting the learning
process: the loss of every iteration; train and validation loss and accuracy
per epoch; and once per epoch (on the epoch's last minibatch) each layer's
activation and gradient distribution and each parameter's update-to-weight
ratio ||lr * update|| / ||w||, which should be around 1e-3 (much lower: the
learning rate is too small; much higher: too large).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import re
import sys
import time
from collections.abc import Callable

import numpy as np

from fastconv import checkpoint as ckpt
from fastconv.autocast import autocast
from fastconv import init
from fastconv.data import Dataset, as_dataset
from fastconv import fusion
from fastconv.containers import Sequential
from fastconv.module import Module
from fastconv.schedules import ReduceLROnPlateau

__all__ = ["ARCHS", "EarlyStopping", "Trainer", "TrainingDiverged", "build_model", "confusion_matrix", "load_model"]


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the message names the epoch and the iteration."""


def _mode_for(monitor: str) -> str:
    if monitor.endswith("loss"):
        return "min"
    if monitor.endswith("accuracy"):
        return "max"
    raise ValueError(f"`monitor` must name a loss or an accuracy, e.g. 'val_loss' or 'val_accuracy'; got {monitor!r}")


def _count(name: str, value, allow_none: bool = True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"EarlyStopping: `{name}` must be an int >= 1{' or None' if allow_none else ''}; "
                         f"got {value!r}")
    return int(value)


def _number(name: str, value, low: float | None = None):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(value) or (low is not None and value < low):
        bound = f" >= {low:g}" if low is not None else ""
        raise ValueError(f"EarlyStopping: `{name}` must be a finite number{bound}; got {value!r}")
    return float(value)


class EarlyStopping:
    """Stop training when any of four triggers fires on ``monitor``'s per-epoch values.

    1. No improvement: the best value has not improved by more than
       ``min_delta`` for ``patience`` epochs (``patience=None`` turns it off).
    2. An absolute value: the metric reached ``target`` (e.g. 0.99 for
       "val_accuracy", or 0.05 for "val_loss").
    3. Worse over N epochs: the metric got worse than the epoch before,
       ``worse_epochs`` epochs in a row (a decrease in performance).
    4. Average change over N epochs: over the last ``window`` epochs the
       metric improved by less than ``min_average_change`` per epoch on
       average ((first - last) / window for a loss, (last - first) / window
       for an accuracy; it needs window + 1 values).

    "Better" is lower for a loss, higher for an accuracy. ``monitor`` is
    "val_loss", "val_accuracy", "train_loss" or "train_accuracy"; the
    trainer calls :meth:`step` once per epoch, and after a stop
    ``reason`` says which trigger fired.

    >>> stopper = EarlyStopping(patience=3, min_delta=1e-3, monitor="val_loss")
    >>> stopper = EarlyStopping(patience=None, target=0.98, monitor="val_accuracy")
    >>> stopper = EarlyStopping(patience=None, window=5, min_average_change=1e-3)
    """

    def __init__(self, patience: int | None = 5, min_delta: float = 0.0, monitor: str = "val_loss", *,
                 target: float | None = None, worse_epochs: int | None = None, window: int | None = None,
                 min_average_change: float = 0.0):
        self.patience = _count("patience", patience)
        self.min_delta = _number("min_delta", min_delta, 0.0)
        if monitor not in ("val_loss", "val_accuracy", "train_loss", "train_accuracy"):
            raise ValueError("EarlyStopping: `monitor` must be 'val_loss', 'val_accuracy', 'train_loss' or "
                             f"'train_accuracy'; got {monitor!r}")
        self.monitor, self.mode = monitor, _mode_for(monitor)
        self.target = _number("target", target)
        self.worse_epochs = _count("worse_epochs", worse_epochs)
        self.window = _count("window", window)
        self.min_average_change = _number("min_average_change", min_average_change)
        if self.patience is None and self.target is None and self.worse_epochs is None and self.window is None:
            raise ValueError("EarlyStopping: no trigger is set; give `patience`, `target`, `worse_epochs` "
                             "or `window`")
        self.reset()

    def reset(self) -> None:
        self.best: float | None = None
        self.num_bad_epochs = 0
        self.num_worse_epochs = 0
        self.recent: list[float] = []  # the last window + 1 values
        self.should_stop = False
        self.reason: str | None = None

    def _gain(self, old: float, new: float) -> float:
        """How much better new is than old (negative: worse)."""
        return old - new if self.mode == "min" else new - old

    def step(self, value: float) -> bool:
        """Record this epoch's metric; returns True when training should stop."""
        value = float(value)
        if self.best is None or self._gain(self.best, value) > self.min_delta:
            self.best, self.num_bad_epochs = value, 0
        else:
            self.num_bad_epochs += 1
        worse = bool(self.recent) and self._gain(self.recent[-1], value) < 0
        self.num_worse_epochs = self.num_worse_epochs + 1 if worse else 0
        self.recent = (self.recent + [value])[-(self.window or 1) - 1:]
        name = self.monitor
        if self.target is not None and self._gain(self.target, value) >= 0:
            self.reason = f"{name} {value:.6g} reached the target {self.target:g}"
        elif self.patience is not None and self.num_bad_epochs >= self.patience:
            self.reason = f"{name} did not improve by more than {self.min_delta:g} for {self.patience} epochs"
        elif self.worse_epochs is not None and self.num_worse_epochs >= self.worse_epochs:
            self.reason = f"{name} got worse {self.worse_epochs} epochs in a row"
        elif self.window is not None and len(self.recent) == self.window + 1 and \
                self._gain(self.recent[0], value) / self.window < self.min_average_change:
            change = self._gain(self.recent[0], value) / self.window
            self.reason = (f"{name} improved by {change:.6g} per epoch on average over the last {self.window} "
                           f"epochs, less than {self.min_average_change:g}")
        self.should_stop = self.reason is not None
        return self.should_stop

    def state_dict(self) -> dict:
        return {"best": self.best, "num_bad_epochs": self.num_bad_epochs, "should_stop": self.should_stop,
                "num_worse_epochs": self.num_worse_epochs, "recent": list(self.recent), "reason": self.reason,
                "patience": self.patience, "min_delta": self.min_delta, "monitor": self.monitor,
                "target": self.target, "worse_epochs": self.worse_epochs, "window": self.window,
                "min_average_change": self.min_average_change}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.num_bad_epochs = state["best"], int(state["num_bad_epochs"])
        self.should_stop = bool(state["should_stop"])
        # checkpoints from before the other triggers have only the three above
        self.num_worse_epochs = int(state.get("num_worse_epochs", 0))
        self.recent = [float(v) for v in state.get("recent", [])][-(self.window or 1) - 1:]
        self.reason = state.get("reason")

    def __repr__(self):
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in ("target", "worse_epochs", "window")
                        if getattr(self, k) is not None)
        if self.window is not None:
            extra += f", min_average_change={self.min_average_change}"
        return f"EarlyStopping(patience={self.patience}, min_delta={self.min_delta}, monitor={self.monitor!r}{extra})"


def _summary(a: np.ndarray, bins: int = 24) -> dict:
    """Mean, std, range, fraction of exact zeros, and a histogram of an array."""
    a = np.asarray(a, np.float64).ravel()
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "zero_fraction": float(np.mean(a == 0)),
                "hist": [], "edges": []}
    lo, hi = float(finite.min()), float(finite.max())
    counts, edges = np.histogram(finite, bins=bins, range=(lo, hi) if hi > lo else (lo - 0.5, hi + 0.5))
    return {"mean": float(finite.mean()), "std": float(finite.std()), "min": lo, "max": hi,
            "zero_fraction": float(np.mean(a == 0)), "hist": counts.tolist(), "edges": edges.tolist()}


def _activation_summary(a: np.ndarray) -> dict:
    """_summary, plus the dead units of a batch of layer outputs (N, *unit_shape):
    the share of units (each channel and position of an image; each feature)
    whose output is exactly zero for every one of the N examples, and for
    images the share of channels zero at every position of every example.
    A zero share of elements (``zero_fraction``) is a ReLU layer's normal
    sparsity; a dead unit passes no gradient for any of these examples."""
    out = _summary(a)
    if a.ndim >= 2 and a.shape[0] > 0:
        silent = np.all(a == 0, axis=0)
        out["dead_units"], out["examples"] = float(np.mean(silent)), int(a.shape[0])
        if a.ndim == 4:
            out["dead_channels"] = float(np.mean(np.all(silent, axis=(1, 2))))
    return out


def _new_history() -> dict:
    return {"iteration_loss": [], "epoch": [], "train_loss": [], "train_accuracy": [], "val_loss": [],
            "val_accuracy": [], "lr": [], "time": [], "stats": [], "best_epoch": None, "best_metric": None,
            "monitor": None, "stopped_early": False, "stop_reason": None, "iterations_per_epoch": None}


@contextlib.contextmanager
def _no_image_grad(model):
    """Nobody reads the gradient of the images: a first Conv2d skips its dx
    (the user's setting is restored afterwards)."""
    first = model[0] if isinstance(model, Sequential) and len(model) else None
    if not hasattr(first, "needs_input_grad"):
        yield
        return
    saved, first.needs_input_grad = first.needs_input_grad, False
    try:
        yield
    finally:
        first.needs_input_grad = saved


# Trainer(precision=...): float32, or bf16 mixed precision (fastconv.autocast).
PRECISIONS = ("fp32", "bf16", "float32", "bfloat16")


class Trainer:
    """Minibatch training with validation, checkpoints, early stopping and statistics.

    Args:
        model: the network (a :class:`Module`; per-layer statistics need a :class:`Sequential`).
        loss_fn: e.g. :class:`fastconv.SoftmaxCrossEntropy`.
        optimizer: e.g. :class:`fastconv.SGD` over ``model.parameters()``.
        scheduler: a learning-rate schedule, stepped once per epoch
            (:class:`ReduceLROnPlateau` gets the validation loss).
        batch_size: examples per minibatch.
        early_stopping: an :class:`EarlyStopping`, or None to run all epochs.
        checkpoint_dir: where ``last/``, ``best/`` and ``history.json`` go
            (see :mod:`fastconv.checkpoint`); None keeps everything in memory.
        seed: seeds the generator that shuffles the minibatches.
        progress: a tqdm bar per epoch; None shows it when stderr is a terminal.
        verbose: print a one-line summary per epoch.
        monitor: the metric that picks the ``best`` checkpoint: "val_loss"
            (default: the early-stopping metric, else val_loss) or "val_accuracy";
            "train_*" when there is no validation data.
        metadata: JSON-able data stored in every checkpoint (e.g. how to rebuild the model).
        log: where summary lines go (default ``print``).
        distributed: None, or "mpi" for synchronous data-parallel training
            over MPI (run under ``mpirun -n P``): each rank trains on its
            shard of every global batch of ``batch_size``, gradients are
            averaged, and only rank 0 logs and writes checkpoints. ``fit`` and
            ``evaluate`` are then collective: every rank calls them. Batch norm
            and dropout semantics: see :mod:`fastconv.distributed`.
        precision: "fp32" (default), or "bf16": every forward and backward
            (``fit``, ``evaluate``) inside ``fc.autocast("bfloat16")``.

    ``fit`` returns the history (also saved as ``history.json``):
    ``iteration_loss``; per epoch ``epoch``, ``train_loss``, ``train_accuracy``
    (averaged over the epoch's minibatches as they were trained), ``val_loss``,
    ``val_accuracy``, ``lr``, ``time``; ``stats`` (one record per epoch:
    ``update_ratio`` per parameter, ``activations`` and ``gradients`` per
    layer output, ``param_grads`` per parameter, each with mean, std, range,
    zero fraction and a histogram); ``best_epoch``, ``best_metric``,
    ``monitor``, ``stopped_early``.
    """

    def __init__(self, model: Module, loss_fn, optimizer, scheduler=None, batch_size: int = 64,
                 early_stopping: EarlyStopping | None = None, checkpoint_dir=None, seed: int = 0,
                 progress: bool | None = None, verbose: bool = True, monitor: str | None = None,
                 metadata: dict | None = None, log: Callable[[str], None] | None = None, distributed=None,
                 precision: str = "fp32"):
        if not isinstance(model, Module):
            raise TypeError(f"Trainer: `model` must be a fastconv Module; got {type(model).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"Trainer: `batch_size` must be an int >= 1; got {batch_size!r}")
        if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"Trainer: `early_stopping` must be an EarlyStopping; got {type(early_stopping).__name__}")
        if precision not in PRECISIONS:
            raise ValueError(f"Trainer: `precision` must be one of {PRECISIONS}; got {precision!r}")
        self.precision = precision  # fc.autocast's dtype around every forward and backward
        self.model, self.loss_fn, self.optimizer, self.scheduler = model, loss_fn, optimizer, scheduler
        self.batch_size, self.early_stopping, self.seed = int(batch_size), early_stopping, seed
        self.checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self.progress, self.verbose = progress, verbose
        self.monitor = monitor or (early_stopping.monitor if early_stopping else "val_loss")
        _mode_for(self.monitor)
        self.metadata = dict(metadata or {})
        self.log = log or print
        self.history = _new_history()
        self.epoch = 0          # epochs completed
        self.iteration = 0      # minibatches trained
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self._best_state = None
        self._rng = np.random.default_rng(seed)
        self._dist = None
        if distributed is not None:
            from fastconv.distributed import data_parallel

            self._dist = data_parallel(distributed)
            if self._dist.rank != 0:  # one rank speaks and writes for all
                self.progress, self.verbose = False, False

    # -- public -----------------------------------------------------------------------

    def fit(self, train, val=None, epochs: int = 10, resume: bool = False) -> dict:
        """Train for ``epochs`` epochs in all (a resumed run counts those already done).

        With ``resume=True`` the state saved in ``checkpoint_dir/last`` (model,
        optimizer, scheduler, RNG states, history, early-stopping counter, best
        metric) is loaded first, so the run ends exactly as an uninterrupted
        one would. At the end the weights of the best epoch are loaded into
        the model. Raises :class:`TrainingDiverged` on a NaN or infinite loss,
        leaving the checkpoints as they were.
        """
        train = as_dataset(train, "train")
        val = None if val is None else as_dataset(val, "val")
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"Trainer.fit: `epochs` must be an int >= 1; got {epochs!r}")
        if len(train) == 0:
            raise ValueError("Trainer.fit: the training set is empty")
        monitor = self.monitor if val is not None else self.monitor.replace("val_", "train_")
        if resume:
            self._resume()
        else:
            self.history, self.epoch, self.iteration = _new_history(), 0, 0
            self.best_metric = self.best_epoch = self._best_state = None
            self._rng = np.random.default_rng(self.seed)
            if self.early_stopping is not None:
                self.early_stopping.reset()
        self.history["monitor"] = monitor
        self.history["iterations_per_epoch"] = math.ceil(len(train) / self.batch_size)
        if self.checkpoint_dir is not None:
            os.makedirs(self.checkpoint_dir, exist_ok=True)
            for name in ("best", "last"):  # refused now, not after the first epoch
                ckpt.refuse_symlink(os.path.join(self.checkpoint_dir, name))
        if self._dist is not None:
            self._dist.setup(self.model, len(train), self.batch_size)
        stopper = self.early_stopping
        while self.epoch < epochs and not (stopper is not None and stopper.should_stop):
            self._run_epoch(train, val, epochs, monitor)
        self.history["stopped_early"] = bool(stopper is not None and stopper.should_stop)
        self.history["stop_reason"] = stopper.reason if self.history["stopped_early"] else None
        if self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        self._save_history()
        return self.history

    def evaluate(self, data, batch_size: int | None = None) -> dict:
        """Mean loss and accuracy over ``data`` (a Dataset or (X, y)) in eval mode."""
        data = as_dataset(data, "data")
        if len(data) == 0:
            raise ValueError("Trainer.evaluate: `data` is empty")
        was_training = self.model.training
        self.model.eval()
        try:
            total, correct = 0.0, 0
            part = data if self._dist is None else self._dist.shard_dataset(data)
            for xb, yb in part.batches(batch_size or max(self.batch_size, 256)):
                with autocast(self.precision):
                    scores = self.model(xb)
                total += self.loss_fn(scores, yb) * len(yb)
                correct += int(np.count_nonzero(scores.argmax(axis=1) == yb))
        finally:
            self.model.train(was_training)
        if self._dist is not None:
            total, correct = self._dist.sum(total, correct)
        return {"loss": total / len(data), "accuracy": correct / len(data)}

    def predict(self, X, batch_size: int | None = None, return_scores: bool = False) -> np.ndarray:
        """Predicted class indices (N,) for images X (N, C, H, W); or the raw scores (N, K)."""
        X = np.asarray(X, np.float32)
        was_training = self.model.training
        self.model.eval()
        try:
            bs = batch_size or max(self.batch_size, 256)
            scores = np.concatenate([self.model(X[i:i + bs]) for i in range(0, X.shape[0], bs)])
        finally:
            self.model.train(was_training)
        return scores if return_scores else scores.argmax(axis=1)

    def overfit_check(self, data, n: int = 20, steps: int = 300, lr: float | None = None, tol: float = 0.01,
                      seed: int = 0, init_tol: float = 0.5) -> dict:
        """The two first sanity checks of a new network: is the loss at
        initialization what small initial scores give, and can the network
        drive the loss to ~0 on ``n`` examples?

        The expected initial loss is the loss of all-equal scores: ln(K) for
        softmax cross-entropy over K classes, (K - 1) * margin for the
        multiclass SVM. A first loss more than ``init_tol`` away from it means
        scores that start too large (an output layer initialized as a hidden
        one, unnormalized data) or a wrong loss. Then a copy of the model (the
        trainer's own model is untouched) is trained on ``n`` examples drawn
        with ``seed``, full batch, with the optimizer's type and settings but
        no weight decay and dropout off, for up to ``steps`` steps.

        Returns {"passed", "initial_ok", "fits", "initial_loss",
        "expected_initial_loss", "final_loss", "steps", "accuracy", "n"}:
        initial_ok means |initial_loss - expected_initial_loss| <= init_tol
        (a check for a new, untrained model), fits means final_loss < tol,
        passed means both.
        """
        data = as_dataset(data, "data")
        n = min(int(n), len(data))
        if n < 1:
            raise ValueError("overfit_check: need at least one example")
        idx = np.sort(np.random.default_rng(seed).permutation(len(data))[:n])
        X, y = data.X[idx], data.y[idx]
        model = copy.deepcopy(self.model).train()
        for m in model.modules():
            if "dropout" in type(m).__name__.lower():
                m.eval()
        group = self.optimizer.param_groups[0]
        settings = {k: group[k] for k in self.optimizer.defaults if k in group}
        settings["lr"] = lr if lr is not None else group.get("initial_lr", group["lr"])
        if "weight_decay" in settings:
            settings["weight_decay"] = 0.0
        opt = type(self.optimizer)(list(model.parameters()), **settings)
        loss_fn = copy.deepcopy(self.loss_fn)
        k = data.num_classes
        expected = float(loss_fn(np.zeros((n, max(k, int(y.max()) + 1)), np.float32), y))
        initial = loss = loss_fn(model(X), y)
        step = 0
        for step in range(1, steps + 1):
            opt.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
            scores = model(X)
            loss = loss_fn(scores, y)
            if not math.isfinite(loss) or loss < tol:
                break
        model.eval()
        accuracy = float(np.mean(model(X).argmax(axis=1) == y))
        initial_ok = bool(abs(initial - expected) <= init_tol)
        fits = bool(math.isfinite(loss) and loss < tol)
        return {"passed": initial_ok and fits, "initial_ok": initial_ok, "fits": fits,
                "initial_loss": float(initial), "expected_initial_loss": expected, "final_loss": float(loss),
                "steps": step, "accuracy": accuracy, "n": n}

    # -- one epoch --------------------------------------------------------------------

    def _show_progress(self) -> bool:
        if self.progress is not None:
            return bool(self.progress)
        return sys.stderr.isatty()

    def _run_epoch(self, train: Dataset, val: Dataset | None, epochs: int, monitor: str) -> None:
        epoch = self.epoch  # 0-based index of the epoch being run
        start = time.perf_counter()
        n_batches = math.ceil(len(train) / self.batch_size)
        bar = None
        if self._show_progress():
            from tqdm.auto import tqdm

            bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False,
                       dynamic_ncols=True, file=sys.stderr)
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        new_losses = []
        stats = None
        try:
            # A diverging loss is reported below.
            with np.errstate(over="ignore", invalid="ignore"), autocast(self.precision):
                for it, (xb, yb) in enumerate(train.batches(self.batch_size, shuffle=True, rng=self._rng)):
                    if self._dist is not None:
                        xb, yb = self._dist.shard(xb, yb)
                    record = it == n_batches - 1
                    scores, acts = self._forward(xb, record)
                    loss = self.loss_fn(scores, yb)
                    hits, n = int(np.count_nonzero(scores.argmax(axis=1) == yb)), len(yb)
                    self.optimizer.zero_grad()
                    grads = self._backward(self.loss_fn.backward(), record)
                    if self._dist is not None:  # checked after the reduction, so all ranks agree on divergence
                        loss, hits, n = self._dist.allreduce(self.model, loss, hits, n)
                    if not math.isfinite(loss):
                        self.history["iteration_loss"].extend(new_losses)
                        self._diverged(f"the training loss is {loss} at epoch {epoch + 1}, iteration {it + 1} "
                                       f"of {n_batches} (step {self.iteration + 1}, lr {lr:g})")
                    if record:
                        before = {name: p.data.copy() for name, p in self.model.named_parameters()}
                    self.optimizer.step()
                    if record:
                        stats = self._stats(epoch, before, acts, grads)
                    self.iteration += 1
                    new_losses.append(float(loss))
                    loss_sum += float(loss) * n
                    correct += hits
                    seen += n
                    if bar is not None:
                        bar.update(1)
                        if it % 5 == 0 or record:
                            bar.set_postfix(loss=f"{loss:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
                metrics = {"train_loss": loss_sum / seen, "train_accuracy": correct / seen}
                v = self.evaluate(val) if val is not None else None
        finally:
            if bar is not None:
                bar.close()
        if v is not None:
            metrics["val_loss"], metrics["val_accuracy"] = v["loss"], v["accuracy"]
            if not math.isfinite(v["loss"]):
                self.history["iteration_loss"].extend(new_losses)
                self._diverged(f"the validation loss is {v['loss']} after epoch {epoch + 1} "
                               f"(step {self.iteration}, lr {lr:g})")
        h = self.history
        h["iteration_loss"].extend(new_losses)
        h["epoch"].append(epoch + 1)
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            h[key].append(metrics.get(key))
        h["lr"].append(lr)
        if stats is not None:
            h["stats"].append(stats)

        if self.scheduler is not None:
            if isinstance(self.scheduler, ReduceLROnPlateau):
                key = "loss" if self.scheduler.mode == "min" else "accuracy"
                self.scheduler.step(metrics.get(f"val_{key}", metrics[f"train_{key}"]))
            else:
                self.scheduler.step()
        value = metrics[monitor]
        improved = self.best_metric is None or (
            value < self.best_metric if _mode_for(monitor) == "min" else value > self.best_metric)
        if improved:
            self.best_metric, self.best_epoch = float(value), epoch + 1
            self._best_state = self.model.state_dict()
        if self.early_stopping is not None:
            self.early_stopping.step(metrics[self.early_stopping.monitor if val is not None
                                             else self.early_stopping.monitor.replace("val_", "train_")])
        h["best_epoch"], h["best_metric"] = self.best_epoch, self.best_metric
        self.epoch = epoch + 1
        h["time"].append(time.perf_counter() - start)
        if self._writes_files():
            encoded = ckpt.dumps_json(self.history).encode()
            self._save("last", encoded)
            if improved:  # after last, which then holds the same weights: see _resume_best
                self._save("best")
            self._save_history(encoded)
        if self.verbose:
            self.log(self._summary_line(epochs, metrics, lr, stats, improved))

    def _summary_line(self, epochs, metrics, lr, stats, improved) -> str:
        parts = [f"epoch {self.epoch:>{len(str(epochs))}}/{epochs}",
                 f"train loss {metrics['train_loss']:.4f} acc {100 * metrics['train_accuracy']:5.1f}%"]
        if "val_loss" in metrics:
            parts.append(f"val loss {metrics['val_loss']:.4f} acc {100 * metrics['val_accuracy']:5.1f}%")
        parts.append(f"lr {lr:.3g}")
        if stats:
            ratios = [r for name, r in stats["update_ratio"].items() if r is not None and name.endswith("weight")]
            if ratios:
                parts.append(f"update/weight {float(np.median(ratios)):.1e}")
        parts.append(f"{self.history['time'][-1]:.1f}s")
        return "  ".join(parts) + ("  *" if improved else "")

    def _forward(self, x, record: bool):
        """Scores; with ``record``, also each child's output (containers only: those
        that run their children through fastconv.fusion, which then runs them unfused)."""
        if not record:
            return self.model(x), None
        outputs = []
        with fusion.observe(self.model, lambda name, layer, y: outputs.append((f"{name}.{type(layer).__name__}", y))):
            scores = self.model(x)
        return scores, outputs or None

    def _backward(self, dy, record: bool):
        """Backpropagate; with ``record``, also the gradient at each child's output."""
        grads = []
        with _no_image_grad(self.model), contextlib.ExitStack() as stack:
            if record:
                stack.enter_context(fusion.observe(
                    self.model, lambda name, layer, g: grads.append((f"{name}.{type(layer).__name__}", g))))
            self.model.backward(dy)
        return grads[::-1] or None

    def _stats(self, epoch, before, acts, grads) -> dict:
        ratios, weights, param_grads = {}, {}, {}
        for name, p in self.model.named_parameters():
            scale = float(np.linalg.norm(before[name]))
            update = float(np.linalg.norm(p.data - before[name]))
            ratios[name] = update / scale if scale > 0 else None
            weights[name] = {"mean": float(p.data.mean()), "std": float(p.data.std())}
            param_grads[name] = _summary(p.grad)
        return {"epoch": epoch + 1, "iteration": self.iteration + 1, "update_ratio": ratios, "weights": weights,
                "param_grads": param_grads,
                "activations": {k: _activation_summary(v) for k, v in acts or []},
                "gradients": {k: _summary(v) for k, v in grads or []}}

    def _diverged(self, what: str):
        self.history["diverged"] = what
        self._save_history()
        kept = ""
        if self.checkpoint_dir is not None:
            kept = (f"; checkpoints untouched in {self.checkpoint_dir} (last: epoch {self.epoch}"
                    + (f", best: epoch {self.best_epoch})" if self.best_epoch else ")"))
        raise TrainingDiverged(f"training diverged: {what}. Try a lower learning rate{kept}")

    # -- checkpoints --------------------------------------------------------------------

    def _trainer_state(self) -> dict:
        return {"epoch": self.epoch, "iteration": self.iteration, "seed": self.seed, "batch_size": self.batch_size,
                "monitor": self.monitor, "best_metric": self.best_metric, "best_epoch": self.best_epoch,
                "early_stopping": None if self.early_stopping is None else self.early_stopping.state_dict(),
                "rng": {"shuffle": self._rng.bit_generator.state, "init": init.generator().bit_generator.state},
                "user": self.metadata}

    def _writes_files(self) -> bool:
        return self.checkpoint_dir is not None and (self._dist is None or self._dist.rank == 0)

    def _save(self, name: str, history: bytes | None = None) -> None:
        if not self._writes_files():
            return
        ckpt.save_checkpoint(os.path.join(self.checkpoint_dir, name), self.model, self.optimizer, self.scheduler,
                             meta=self._trainer_state(), files={"history.json": history} if history else None)

    def _save_history(self, encoded: bytes | None = None) -> None:
        if self._writes_files():
            encoded = encoded or ckpt.dumps_json(self.history).encode()
            ckpt.atomic_write(os.path.join(self.checkpoint_dir, "history.json"), encoded)

    def _resume(self) -> None:
        if self.checkpoint_dir is None:
            raise ValueError("Trainer.fit: resume=True needs a `checkpoint_dir`")
        last = os.path.join(self.checkpoint_dir, "last")
        try:
            info = ckpt.read_metadata(last)
        except FileNotFoundError:
            raise FileNotFoundError(f"Trainer.fit: resume=True but there is no checkpoint {last} to resume from "
                                    "(no epoch finished yet?)") from None
        history = ckpt.read_json(last, info["folder"], "history.json")
        _check_resume_state(last, info["meta"], history)
        state = ckpt.load_checkpoint(last, self.model, self.optimizer, self.scheduler)
        if state["batch_size"] != self.batch_size:
            raise ValueError(f"Trainer.fit: the run to resume used batch_size {state['batch_size']}; "
                             f"this trainer has {self.batch_size}")
        self.history, self.epoch, self.iteration = history, state["epoch"], state["iteration"]
        self.best_metric, self.best_epoch = state["best_metric"], state["best_epoch"]
        if self.early_stopping is not None:
            if state["early_stopping"] is None:
                raise ValueError("Trainer.fit: the run to resume was trained without early stopping; "
                                 "resume it with early_stopping=None")
            self.early_stopping.load_state_dict(state["early_stopping"])
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]["shuffle"]
        init.generator().bit_generator.state = state["rng"]["init"]
        self._best_state = None
        if self.best_epoch is not None:
            self._best_state = self._resume_best()

    def _resume_best(self) -> dict:
        """The best epoch's weights, as ``last`` names them; repairs ``best`` after a crash.

        ``last`` is written before ``best``, so a crash between the two leaves
        a ``last`` whose best epoch is its own epoch and an older ``best``:
        then ``last``'s weights (in the model now) are the best ones, and
        ``best`` is written again from them."""
        best = os.path.join(self.checkpoint_dir, "best")
        try:
            saved = ckpt.read_metadata(best)["meta"].get("epoch")
        except FileNotFoundError:
            saved = None
        if saved == self.best_epoch:
            return ckpt.load_weights(best, self.model)
        if self.best_epoch != self.epoch:
            raise ckpt.CheckpointError(f"checkpoint {best} holds epoch {saved}; the run's last checkpoint "
                                       f"names epoch {self.best_epoch} as the best")
        self._save("best")
        return self.model.state_dict()


def _is_int(v, lo: int, hi: int | None = None) -> bool:
    return type(v) is int and lo <= v and (hi is None or v <= hi)


def _is_number(v) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


_PER_EPOCH = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "time")


def _check_resume_state(path: str, meta: dict, history) -> None:
    """Every field of a ``last`` checkpoint that resuming reads has the type, range and
    meaning a run writes (a tampered file is refused naming the field, before anything changes)."""
    def need(where, value, ok, expected):
        ckpt.require(path, where, value, ok, expected)

    epoch = meta.get("epoch")
    need("checkpoint.json `meta.epoch`", epoch, _is_int(epoch, 1), "an int >= 1")
    need("checkpoint.json `meta.iteration`", meta.get("iteration"), _is_int(meta.get("iteration"), 0), "an int >= 0")
    need("checkpoint.json `meta.batch_size`", meta.get("batch_size"), _is_int(meta.get("batch_size"), 1),
         "an int >= 1")
    best_epoch, best_metric = meta.get("best_epoch"), meta.get("best_metric")
    need("checkpoint.json `meta.best_epoch`", best_epoch, best_epoch is None or _is_int(best_epoch, 1, epoch),
         f"null or an int in [1, {epoch}]")
    need("checkpoint.json `meta.best_metric`", best_metric,
         _is_number(best_metric) if best_epoch is not None else best_metric is None,
         "a finite number (null when there is no best epoch)")
    stop = meta.get("early_stopping")
    need("checkpoint.json `meta.early_stopping`", stop, stop is None or (
        isinstance(stop, dict) and (stop.get("best") is None or _is_number(stop.get("best")))
        and _is_int(stop.get("num_bad_epochs"), 0, epoch) and type(stop.get("should_stop")) is bool),
        f"null or {{best: a number or null, num_bad_epochs: an int in [0, {epoch}], should_stop: a bool}}")
    rng = meta.get("rng")
    need("checkpoint.json `meta.rng`", rng, isinstance(rng, dict) and {"shuffle", "init"} <= rng.keys(),
         "{shuffle, init}: bit-generator states")
    for name in ("shuffle", "init"):
        try:
            np.random.default_rng().bit_generator.state = rng[name]
            ok = True
        except (TypeError, ValueError, KeyError, OverflowError):
            ok = False
        need(f"checkpoint.json `meta.rng.{name}`", rng[name], ok, "a PCG64 bit-generator state")
    need("history.json", history, isinstance(history, dict) and _new_history().keys() <= history.keys(),
         f"an object with the keys {sorted(_new_history())}")
    for key in _PER_EPOCH:
        values = history[key]
        need(f"history.json `{key}`", values, isinstance(values, list) and len(values) == epoch
             and all(v is None or _is_number(v) for v in values), f"a list of {epoch} numbers (one per epoch)")
    need("history.json `epoch`", history["epoch"], history["epoch"] == list(range(1, epoch + 1)),
         f"[1, ..., {epoch}]")
    need("history.json `iteration_loss`", history["iteration_loss"], isinstance(history["iteration_loss"], list)
         and all(_is_number(v) for v in history["iteration_loss"]), "a list of finite numbers")
    need("history.json `stats`", history["stats"], isinstance(history["stats"], list), "a list")
    for key, value in (("best_epoch", best_epoch), ("best_metric", best_metric)):
        need(f"history.json `{key}`", history[key], history[key] == value, f"{value} (as checkpoint.json says)")


# -- metrics ---------------------------------------------------------------------------------


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """counts[i, j] = number of examples of class i predicted as class j."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"confusion_matrix: shapes differ: {y_true.shape} and {y_pred.shape}")
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (y_true, y_pred), 1)
    return counts


# -- models from spec strings -------------------------------------------------------------------

ARCHS = {
    "digits": "conv32x3p1-relu-conv32x3p1-relu-pool2-fc128-relu-fc{classes}",
    "lenet": "conv6x5p2-relu-pool2-conv16x5-relu-pool2-fc120-relu-fc84-relu-fc{classes}",
    "cifar_small": "conv32x3p1-relu-pool2-conv64x3p1-relu-pool2-conv64x3p1-relu-pool2-fc128-relu-fc{classes}",
    "mlp": "fc128-relu-fc{classes}",
}

SPEC_HELP = """\
An architecture is a built-in name or a spec string of layers joined by '-':
  conv<OUT>x<K>[s<S>][p<P>]  Conv2d: OUT filters of KxK, stride S (1), zero padding P (0)
  pool<K>[s<S>]              MaxPool2d: KxK windows, stride S (K)
  avgpool<K>[s<S>]           AvgPool2d (when this build has it)
  fc<N>                      Linear to N outputs (a Flatten is put in front of the first)
  relu, leakyrelu, tanh, sigmoid, elu       activations (all but relu when this build has them)
  drop<P>                    Dropout with drop probability P, e.g. drop0.5
  bn                         BatchNorm2d after a conv, BatchNorm1d after an fc
The last layer must be fc<number of classes>. Input channels and sizes are
inferred from the data. Built-ins (K = the number of classes):
""" + "\n".join(f"  {k:12} {v.replace('{classes}', 'K')}" for k, v in ARCHS.items())

_TOKENS = [
    ("conv", re.compile(r"conv(\d+)x(\d+)(?:s(\d+))?(?:p(\d+))?")),
    ("avgpool", re.compile(r"avgpool(\d+)(?:s(\d+))?")),
    ("pool", re.compile(r"(?:max)?pool(\d+)(?:s(\d+))?")),
    ("fc", re.compile(r"fc(\d+)")),
    ("drop", re.compile(r"drop(?:out)?(0?\.\d+|0|1)")),
    ("act", re.compile(r"relu|leakyrelu|tanh|sigmoid|elu")),
    ("bn", re.compile(r"bn")),
    ("flatten", re.compile(r"flatten")),
]
_ACTIVATIONS = {"relu": "ReLU", "leakyrelu": "LeakyReLU", "tanh": "Tanh", "sigmoid": "Sigmoid", "elu": "ELU"}


def _layer_class(name: str, token: str):
    import fastconv

    cls = getattr(fastconv, name, None)
    if cls is None:
        for module in ("layers", "activations", "dropout", "normalization"):
            try:
                cls = getattr(__import__(f"fastconv.{module}", fromlist=[name]), name, None)
            except ImportError:
                cls = None
            if cls is not None:
                break
    if cls is None:
        raise ValueError(f"arch: {token!r} needs fastconv.{name}, which this version of fastconv does not have")
    return cls


def resolve_arch(arch: str, num_classes: int) -> str:
    """A built-in name's spec string for ``num_classes`` classes, or ``arch`` itself."""
    return ARCHS[arch].format(classes=num_classes) if arch in ARCHS else arch


def _check_sizes(token: str, *sizes) -> None:
    """Before any size arithmetic: a zero stride or kernel would divide by zero."""
    for name, v in sizes:
        if v < 1:
            raise ValueError(f"arch: {token!r}: the {name} must be >= 1; got {v}")


def build_model(arch: str, input_shape, num_classes: int | None = None, dropout: float = 0.0) -> Sequential:
    """A :class:`Sequential` from a built-in name or a spec string (see ``SPEC_HELP``).

    ``input_shape`` is one example's (C, H, W) (or (features,)); sizes flow
    through the layers, so a layer that does not fit raises ``ValueError``
    naming it. ``dropout`` > 0 puts a Dropout(dropout) before every fc layer.

    >>> build_model("conv8x3p1-relu-pool2-fc10", (1, 8, 8)).state_dict().keys()
    odict_keys(['0.weight', '0.bias', '4.weight', '4.bias'])
    """
    from fastconv.layers import Conv2d, Flatten, Linear, MaxPool2d

    if not isinstance(arch, str) or not arch.strip():
        raise ValueError(f"arch: must be a built-in name ({', '.join(ARCHS)}) or a spec string; got {arch!r}")
    spec = resolve_arch(arch.strip().lower(), num_classes if num_classes is not None else 10)
    if not 0 <= dropout < 1:
        raise ValueError(f"arch: `dropout` must be in [0, 1); got {dropout!r}")
    shape = tuple(int(s) for s in input_shape)
    layers: list[Module] = []
    last_kind = None
    for token in spec.split("-"):
        kind, m = next(((k, r.fullmatch(token)) for k, r in _TOKENS if r.fullmatch(token)), (None, None))
        if kind is None:
            raise ValueError(f"arch: unknown layer {token!r} in {spec!r}; expected conv<OUT>x<K>[s<S>][p<P>], "
                             "pool<K>[s<S>], fc<N>, relu, drop<P>, bn, ... (see `fastconv train --help`)")
        if kind in ("conv", "pool", "avgpool") and len(shape) != 3:
            raise ValueError(f"arch: {token!r} needs an image (C, H, W) input; it gets shape {shape}")
        if kind == "conv":
            out, k = int(m[1]), int(m[2])
            s, p = int(m[3] or 1), int(m[4] or 0)
            _check_sizes(token, ("filters", out), ("kernel size", k), ("stride", s))
            h, w = (shape[1] + 2 * p - k) // s + 1, (shape[2] + 2 * p - k) // s + 1
            if h < 1 or w < 1 or out < 1 or k < 1 or s < 1:
                raise ValueError(f"arch: {token!r} does not fit its input of shape {shape} (kernel {k}, padding {p})")
            layers.append(Conv2d(shape[0], out, k, stride=s, padding=p))
            shape = (out, h, w)
        elif kind in ("pool", "avgpool"):
            k = int(m[1])
            s = int(m[2] or k)
            _check_sizes(token, ("kernel size", k), ("stride", s))
            h, w = (shape[1] - k) // s + 1, (shape[2] - k) // s + 1
            if h < 1 or w < 1 or k < 1 or s < 1:
                raise ValueError(f"arch: {token!r} does not fit its input of shape {shape}")
            cls = MaxPool2d if kind == "pool" else _layer_class("AvgPool2d", token)
            layers.append(cls(k, stride=s))
            shape = (shape[0], h, w)
        elif kind in ("fc", "flatten"):
            if len(shape) > 1:
                layers.append(Flatten())
                shape = (int(np.prod(shape)),)
            if kind == "fc":
                if dropout > 0:
                    layers.append(_layer_class("Dropout", f"dropout {dropout}")(dropout))
                out = int(m[1])
                if out < 1:
                    raise ValueError(f"arch: {token!r} must have at least one output")
                layers.append(Linear(shape[0], out))
                shape = (out,)
        elif kind == "drop":
            layers.append(_layer_class("Dropout", token)(float(m[1])))
        elif kind == "act":
            layers.append(_layer_class(_ACTIVATIONS[token], token)())
        elif kind == "bn":
            cls = _layer_class("BatchNorm2d" if len(shape) == 3 else "BatchNorm1d", token)
            layers.append(cls(shape[0]))
        last_kind = kind
    if last_kind != "fc":
        raise ValueError(f"arch: {spec!r} must end with fc<number of classes> (class scores); it ends with {token!r}")
    if num_classes is not None and shape[0] != num_classes:
        raise ValueError(f"arch: {spec!r} ends with {shape[0]} outputs but the data has {num_classes} classes")
    return Sequential(*layers)


def load_model(path) -> tuple[Sequential, dict]:
    """Rebuild the model of a checkpoint written by ``fastconv train`` and load its weights.

    Returns (model, metadata); metadata["user"] holds what the command stored:
    "arch", "input_shape", "classes", "normalization", "data", "config".
    """
    info = ckpt.read_metadata(path)
    user = info["meta"].get("user") or {}
    _check_user_meta(path, user)
    if "arch" not in user or "input_shape" not in user:
        raise ckpt.CheckpointError(f"checkpoint {os.fspath(path)} does not say how to rebuild its model (no arch); "
                                   "build the model in Python and use fastconv.checkpoint.load_checkpoint")
    model = build_model(user["arch"], user["input_shape"], len(user["classes"]), user.get("dropout", 0.0))
    ckpt.load_checkpoint(path, model)
    return model.eval(), info["meta"]


def _check_user_meta(path, user) -> None:
    """The fields ``fastconv train`` stores under meta.user, as far as they are present."""
    def need(key, ok, expected):
        ckpt.require(os.fspath(path), f"checkpoint.json `meta.user{'.' + key if key else ''}`",
                     user.get(key) if key else user, ok, expected)

    need("", isinstance(user, dict), "an object")
    checks = {
        "arch": (lambda v: isinstance(v, str) and v.strip() != "", "an architecture spec string"),
        "input_shape": (lambda v: isinstance(v, list) and 1 <= len(v) <= 3 and all(_is_int(d, 1, 2**31) for d in v),
                        "a list of 1 to 3 ints >= 1"),
        "classes": (lambda v: isinstance(v, list) and 1 <= len(v) <= 2**20 and all(isinstance(c, str) for c in v),
                    "a list of class names (strings)"),
        "dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
        "normalization": (lambda v: isinstance(v, dict) and all(
            isinstance(v.get(k), list) and all(_is_number(x) for x in v[k]) for k in ("mean", "std"))
            and len(v["mean"]) == len(v["std"]) and all(x > 0 for x in v["std"]),
            "{mean, std}: lists of finite numbers of one length, std > 0"),
        "data": (lambda v: isinstance(v, str), "a data set name or path"),
        "data_dir": (lambda v: v is None or isinstance(v, str), "null or a folder path"),
        "val_fraction": (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    }
    for key, (ok, expected) in checks.items():
        if key in user:
            need(key, ok(user[key]), expected)
