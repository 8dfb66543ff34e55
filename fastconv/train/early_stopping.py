"""Early stopping: four triggers on one monitored metric (see :class:`EarlyStopping`)."""

from __future__ import annotations

import math

import numpy as np


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
