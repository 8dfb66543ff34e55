"""Learning-rate schedules, stepped once per epoch, as PyTorch's lr_scheduler.

Each ``step()`` moves one epoch on and changes ``optimizer.param_groups[i]["lr"]``
by the schedule's rule, from the rate the group has now (so schedules chain,
as in PyTorch); ``closed_form(base_lr, epoch)`` is the rate of a schedule
used alone.

>>> opt = fc.SGD(model.parameters(), lr=0.1)
>>> sched = fc.StepLR(opt, step_size=10, gamma=0.5)
>>> for epoch in range(30):
...     train_one_epoch(); sched.step()
"""

from __future__ import annotations

import math

from fastconv.train.optim import Optimizer


def _check_positive(cls, name, v, allow_zero=False):
    try:
        finite = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:  # an int beyond the float range
        finite = False
    if not finite or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{cls}: `{name}` must be a finite number {bound}; got {v!r}")
    return v


class _Stateful:
    """state_dict / load_state_dict over every attribute but the optimizer.

    ``_settings`` names the constructor's hyperparameters. Loading restores
    the counters and keeps the settings this object was made with, so that a
    resumed run can be given a new plan (a cosine over more epochs); where
    they differ from the saved ones, ``_replan`` brings the rates in line.
    """

    _settings: tuple = ()

    def state_dict(self) -> dict:
        """Every attribute but the optimizer (plain numbers and lists)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state: dict) -> None:
        """Restore the counters of :meth:`state_dict`; each value must be of the kind the
        attribute holds now (a number of the same sign, the same string, a list as long)."""
        if not isinstance(state, dict):
            raise TypeError(f"{type(self).__name__}.load_state_dict: `state` must be a dict; got {type(state).__name__}")
        current = self.state_dict()
        unknown = set(state) - set(current)
        if unknown:
            raise KeyError(f"{type(self).__name__}.load_state_dict: unexpected keys {sorted(unknown)!r:.200}")
        for key, value in state.items():  # settings are this object's own: only compared, below
            if key not in self._settings and not _same_kind(current[key], value):
                raise ValueError(f"{type(self).__name__}.load_state_dict: `{key}` must be like {current[key]!r:.100} "
                                 f"(same type, sign and length); got {value!r:.100}")
        changed = any(k in state and state[k] != current[k] for k in self._settings)
        self.__dict__.update({k: v for k, v in state.items() if k not in self._settings})
        if changed:
            self._replan()

    def _replan(self) -> None:
        """After a load whose settings differ from this object's (none to do by default)."""


def _same_kind(now, new) -> bool:
    """Whether ``new`` may replace ``now`` in a schedule's state."""
    if isinstance(now, bool) or isinstance(now, str):
        return type(new) is type(now) and (isinstance(now, bool) or new == now)  # modes are fixed at construction
    if isinstance(now, (int, float)):
        if isinstance(new, bool) or not isinstance(new, (int, float)) or math.isnan(new):
            return False
        return math.isinf(now) or (math.isfinite(new) and (new >= 0) == (now >= 0))
    if isinstance(now, list):
        return isinstance(new, list) and len(new) == len(now) and all(map(_same_kind, now, new))
    if now is None:
        return new is None or _same_kind(0.0, new) or _same_kind(-1.0, new)
    return False


class LRScheduler(_Stateful):
    """Base. As in PyTorch, each ``step()`` changes the rate the group has now
    (``next_lr``), so that schedules chain and a rate set by hand carries on;
    ``closed_form`` gives the rate of a schedule used alone, from the group's
    initial rate ``base_lr``. Loading a state dict restores the schedule's
    counters, not the rates: those come with the optimizer's state dict
    (load it first). When this schedule's settings differ from the saved
    ones (PyTorch would take the saved ones), they win and each group's rate
    becomes ``closed_form(base_lr, last_epoch)``: a 6-epoch cosine resumed as
    a 9-epoch one goes on down the 9-epoch curve instead of climbing back up.
    """

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: `optimizer` must be a fastconv Optimizer; got {type(optimizer).__name__}")
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = 0

    def next_lr(self, lr: float, base_lr: float, epoch: int) -> float:
        """The rate for ``epoch`` from the rate of the epoch before."""
        raise NotImplementedError

    def closed_form(self, base_lr: float, epoch: int) -> float:
        raise NotImplementedError

    def step(self) -> None:
        """Advance one epoch and set each group's learning rate."""
        self.last_epoch += 1
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.next_lr(group["lr"], base, self.last_epoch)

    def _replan(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.closed_form(base, self.last_epoch)

    def get_last_lr(self) -> list:
        """The learning rate of each parameter group, as last set."""
        return [g["lr"] for g in self.optimizer.param_groups]


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size): drop by ``gamma`` every ``step_size`` epochs."""

    _settings = ("step_size", "gamma")

    def __init__(self, optimizer, step_size, gamma=0.1):
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"StepLR: `step_size` must be an int >= 1; got {step_size!r}")
        self.step_size, self.gamma = step_size, _check_positive("StepLR", "gamma", gamma, allow_zero=True)
        super().__init__(optimizer)

    def next_lr(self, lr, base_lr, epoch):
        return lr * self.gamma if epoch % self.step_size == 0 else lr

    def closed_form(self, base_lr, epoch):
        return base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(LRScheduler):
    """lr = base_lr * gamma ** epoch."""

    _settings = ("gamma",)

    def __init__(self, optimizer, gamma):
        self.gamma = _check_positive("ExponentialLR", "gamma", gamma, allow_zero=True)
        super().__init__(optimizer)

    def next_lr(self, lr, base_lr, epoch):
        return lr * self.gamma

    def closed_form(self, base_lr, epoch):
        return base_lr * self.gamma ** epoch


class InverseTimeLR(LRScheduler):
    """The notes' 1/t decay: lr = base_lr / (1 + decay_rate * epoch / decay_steps)."""

    _settings = ("decay_rate", "decay_steps")

    def __init__(self, optimizer, decay_rate, decay_steps=1):
        self.decay_rate = _check_positive("InverseTimeLR", "decay_rate", decay_rate, allow_zero=True)
        self.decay_steps = _check_positive("InverseTimeLR", "decay_steps", decay_steps)
        super().__init__(optimizer)

    def next_lr(self, lr, base_lr, epoch):
        return lr * self._denominator(epoch - 1) / self._denominator(epoch)

    def _denominator(self, epoch):
        return 1.0 + self.decay_rate * epoch / self.decay_steps

    def closed_form(self, base_lr, epoch):
        return base_lr / self._denominator(epoch)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2."""

    _settings = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max, eta_min=0.0):
        if isinstance(T_max, bool) or not isinstance(T_max, int) or not 1 <= T_max <= 2**53:  # exact as a float
            raise ValueError(f"CosineAnnealingLR: `T_max` must be an int >= 1 and <= 2**53; got {T_max!r}")
        self.T_max, self.eta_min = T_max, _check_positive("CosineAnnealingLR", "eta_min", eta_min, allow_zero=True)
        super().__init__(optimizer)

    def next_lr(self, lr, base_lr, epoch):
        # PyTorch's recursive form; at the bottom of each cosine (where the
        # ratio below would divide by zero) it restarts from the closed form's step.
        t = self.T_max
        if (epoch - 1 - t) % (2 * t) == 0:
            return lr + (base_lr - self.eta_min) * (1 - math.cos(math.pi / t)) / 2
        return (self.eta_min + (1 + math.cos(math.pi * epoch / t)) / (1 + math.cos(math.pi * (epoch - 1) / t))
                * (lr - self.eta_min))

    def closed_form(self, base_lr, epoch):
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


class ReduceLROnPlateau(_Stateful):
    """Multiply the learning rate by ``factor`` when a metric has not improved
    for more than ``patience`` epochs; ``step(metric)`` once per epoch. PyTorch's
    rule: improvement means metric < best * (1 - threshold) in mode "min" with
    threshold_mode "rel" (best + threshold etc. for "abs", reversed for "max");
    after a reduction, ``cooldown`` epochs pass before counting again; rates
    never go below ``min_lr``, and changes smaller than ``eps`` are skipped.
    """

    _settings = ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lrs", "eps")

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8):
        name = "ReduceLROnPlateau"
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{name}: `optimizer` must be a fastconv Optimizer; got {type(optimizer).__name__}")
        if mode not in ("min", "max"):
            raise ValueError(f"{name}: `mode` must be 'min' or 'max'; got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"{name}: `threshold_mode` must be 'rel' or 'abs'; got {threshold_mode!r}")
        if not 0 <= factor < 1:
            raise ValueError(f"{name}: `factor` must be in [0, 1); got {factor!r}")
        n = len(optimizer.param_groups)
        min_lrs = list(min_lr) if isinstance(min_lr, (list, tuple)) else [min_lr] * n
        if len(min_lrs) != n:
            raise ValueError(f"{name}: `min_lr` must have one value per param group ({n}); got {len(min_lrs)}")
        self.optimizer = optimizer
        self.mode, self.factor, self.patience, self.threshold = mode, factor, patience, threshold
        self.threshold_mode, self.cooldown, self.min_lrs, self.eps = threshold_mode, cooldown, min_lrs, eps
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0

    def is_better(self, a, best):
        if self.mode == "min":
            return a < (best * (1 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold)
        return a > (best * (1 + self.threshold) if self.threshold_mode == "rel" else best + self.threshold)

    def step(self, metric) -> None:
        current = float(metric)
        self.last_epoch += 1
        if self.is_better(current, self.best):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            for group, min_lr in zip(self.optimizer.param_groups, self.min_lrs):
                new_lr = max(group["lr"] * self.factor, min_lr)
                if group["lr"] - new_lr > self.eps:
                    group["lr"] = new_lr
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0

    def get_last_lr(self) -> list:
        return [g["lr"] for g in self.optimizer.param_groups]
