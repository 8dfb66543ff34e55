"""Optimizers with PyTorch's update rules, argument names and defaults.

One base class owns parameter groups, ``zero_grad`` and the state dict;
each optimizer implements only ``_update`` for one parameter.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from fastconv._guard import plain
from fastconv.nn.module import Parameter


def _finite(v) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond the float range
        return False


class Optimizer:
    """Base class. ``params`` is an iterable of Parameters, or of dicts
    ``{"params": [...], "lr": ...}`` (parameter groups with their own settings).
    ``param_groups[i]["lr"]`` is what learning-rate schedules change."""

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        try:
            params = list(params)
        except TypeError:
            raise TypeError(f"{type(self).__name__}: `params` must be an iterable of Parameters or param-group "
                            f"dicts; got {type(params).__name__}") from None
        if not params:
            raise ValueError(f"{type(self).__name__}: `params` is an empty list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        self.state: dict[int, dict] = {}
        seen = set()
        for i, group in enumerate(groups):
            if not isinstance(group, dict) or "params" not in group:
                raise TypeError(f"{type(self).__name__}: param group {i} must be a dict with 'params'")
            group = {**self.defaults, **group, "params": list(group["params"])}
            for p in group["params"]:
                if not isinstance(p, Parameter):
                    raise TypeError(f"{type(self).__name__}: params must be Parameters; got {type(p).__name__}")
                if id(p) in seen:
                    raise ValueError(f"{type(self).__name__}: a parameter appears in more than one group")
                seen.add(id(p))
            self._check_hyperparameters(group)
            self.param_groups.append(group)

    def _check_hyperparameters(self, group):
        for key in self.defaults:
            v = group[key]
            if isinstance(v, (bool, tuple)):
                continue
            if not isinstance(v, (int, float, np.floating, np.integer)) or not _finite(v) or v < 0:
                raise ValueError(f"{type(self).__name__}: `{key}` must be a finite number >= 0; got {plain(v)!r}")

    def _indexed(self):
        """(index, param, group) over all parameters; indices key the state, as PyTorch."""
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                yield i, p, group
                i += 1

    def zero_grad(self) -> None:
        """Reset the gradients of every parameter to zero."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad.fill(0)

    def step(self) -> None:
        """Update every parameter from its ``.grad``."""
        for i, p, group in self._indexed():
            self._update(p, self.state.setdefault(i, {}), group)

    def _update(self, p: Parameter, state: dict, group: dict) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """``{"state": {index: {buffer: array}}, "param_groups": [...]}`` (copies), as PyTorch."""
        ids = iter(range(10**9))
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [next(ids) for _ in g["params"]]}
                  for g in self.param_groups]
        state = {i: copy.deepcopy(s) for i, s in self.state.items() if s}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore buffers and hyperparameters saved by :meth:`state_dict` (copied)."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if groups is None or "state" not in state_dict:
            raise ValueError("load_state_dict: `state_dict` must have 'state' and 'param_groups' keys")
        if len(groups) != len(self.param_groups) or any(
                len(g["params"]) != len(mine["params"]) for g, mine in zip(groups, self.param_groups)):
            raise ValueError(
                "load_state_dict: the saved param groups have sizes "
                f"{[len(g['params']) for g in groups]}; this optimizer has "
                f"{[len(g['params']) for g in self.param_groups]}")
        buffers_of = {id(mine): self._buffers_for(g, {**mine, **g}, j) for j, (g, mine) in
                      enumerate(zip(groups, self.param_groups))}
        params = {i: (p, buffers_of[id(group)]) for i, p, group in self._indexed()}
        new_state = {}
        for key, buffers in state_dict["state"].items():
            i = int(key) if isinstance(key, int) or (isinstance(key, str) and key.isdigit()) else None
            if i not in params:
                raise ValueError(f"load_state_dict: state for parameter {key!r}, which does not exist")
            p, kinds = params[i]
            if not isinstance(buffers, dict) or (buffers and buffers.keys() != kinds.keys()):
                names = sorted(buffers) if isinstance(buffers, dict) else buffers
                raise ValueError(f"load_state_dict: the state of parameter {i} must have the buffers "
                                 f"{sorted(kinds)} of {type(self).__name__}; got {names!r:.200}")
            new_state[i] = {}
            for name, value in buffers.items():
                if not kinds[name]:  # a step count, saved as a number or a 0-d array
                    value = np.asarray(value).item() if np.ndim(value) == 0 else value
                    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value) \
                            or value < 0:
                        raise ValueError(f"load_state_dict: {name!r} of parameter {i} must be a finite number "
                                         f">= 0; got {value!r:.100}")
                else:
                    value = np.array(value, dtype=np.float32, copy=True)
                    if value.shape != p.data.shape:
                        raise ValueError(
                            f"load_state_dict: buffer {name!r} of parameter {i} must have shape "
                            f"{p.data.shape}; got {value.shape}")
                new_state[i][name] = value
        for mine, saved in zip(self.param_groups, groups):
            mine.update({k: v for k, v in saved.items() if k != "params"})
        self.state = new_state

    def _buffers_for(self, saved: dict, merged: dict, j: int) -> dict:
        """{buffer name: is an array} that this optimizer keeps per parameter with the settings
        of ``merged``; the settings are checked as the constructor checks them.

        Found by one step of a fresh optimizer of this type on a one-element parameter,
        so every optimizer's own rule says which buffers it keeps."""
        unknown = sorted(k for k in saved if k not in self.defaults and k not in ("params", "initial_lr"))
        if unknown:
            raise ValueError(f"load_state_dict: param group {j} has unknown settings {unknown!r:.200}")
        initial = merged.get("initial_lr", 0.0)  # set by learning-rate schedules
        if isinstance(initial, bool) or not isinstance(initial, (int, float)) or not _finite(initial) or initial < 0:
            raise ValueError(f"load_state_dict: param group {j} `initial_lr` must be a finite number >= 0; "
                             f"got {initial!r:.100}")
        probe = Parameter(np.zeros(1, np.float32))
        try:
            fresh = type(self)([probe], **{k: merged[k] for k in self.defaults})
        except (TypeError, ValueError) as e:
            raise ValueError(f"load_state_dict: param group {j}: {str(e)[:300]}") from None
        fresh.step()
        return {name: isinstance(v, np.ndarray) and v.ndim > 0 for name, v in fresh.state.get(0, {}).items()}

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(g.items()) if k != "params"]
        return "\n".join(lines + [")"])


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, PyTorch's rule:

        g = grad + weight_decay * p
        buf = g (first step), then buf = momentum * buf + (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf
        p = p - lr * g

    ``weight_decay`` is L2 regularization (0.5 * wd * |p|^2 added to the loss).
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=bool(nesterov)))
        for g in self.param_groups:
            if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
                raise ValueError("SGD: Nesterov momentum requires a momentum > 0 and zero dampening")

    def _update(self, p, state, group):
        g = p.grad
        if group["weight_decay"]:
            g = g + np.float32(group["weight_decay"]) * p.data
        momentum = group["momentum"]
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(g, dtype=np.float32, copy=True)
            else:
                buf *= np.float32(momentum)
                buf += np.float32(1 - group["dampening"]) * g
            g = g + np.float32(momentum) * buf if group["nesterov"] else buf
        p.data -= np.float32(group["lr"]) * g


def _decayed(p, group):
    """The gradient with L2 weight decay folded in: grad + weight_decay * p."""
    wd = group["weight_decay"]
    return p.grad + np.float32(wd) * p.data if wd else p.grad


class Adagrad(Optimizer):
    """Adagrad, PyTorch's rule: per-parameter rates shrinking with the summed squared gradients.

        g = grad + weight_decay * p;  sum += g^2
        p -= lr / (1 + (t - 1) * lr_decay) * g / (sqrt(sum) + eps)
    """

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps))
        # As PyTorch: the sums exist from the start, filled from the constructor's value.
        for i, p, _ in self._indexed():
            self.state[i] = {"step": 0, "sum": np.full_like(p.data, initial_accumulator_value)}

    def _update(self, p, state, group):
        state["step"] += 1
        g = _decayed(p, group)
        clr = group["lr"] / (1 + (state["step"] - 1) * group["lr_decay"])
        state["sum"] += g * g
        p.data -= np.float32(clr) * g / (np.sqrt(state["sum"]) + np.float32(group["eps"]))


class RMSprop(Optimizer):
    """RMSprop, PyTorch's rule (Adagrad with a leaky, running average of g^2):

        g = grad + weight_decay * p;  v = alpha * v + (1 - alpha) * g^2
        avg = sqrt(v - m^2) + eps with m = alpha * m + (1 - alpha) * g if centered, else sqrt(v) + eps
        buf = momentum * buf + g / avg;  p -= lr * buf   (p -= lr * g / avg without momentum)
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=bool(centered)))

    def _update(self, p, state, group):
        if not state:
            state["step"] = 0
            state["square_avg"] = np.zeros_like(p.data)
            if group["momentum"] > 0:
                state["momentum_buffer"] = np.zeros_like(p.data)
            if group["centered"]:
                state["grad_avg"] = np.zeros_like(p.data)
        state["step"] += 1
        g = _decayed(p, group)
        alpha = np.float32(group["alpha"])
        v = state["square_avg"]
        v *= alpha
        v += (1 - alpha) * g * g
        if group["centered"]:
            m = state["grad_avg"]
            m *= alpha
            m += (1 - alpha) * g
            avg = np.sqrt(v - m * m) + np.float32(group["eps"])
        else:
            avg = np.sqrt(v) + np.float32(group["eps"])
        if group["momentum"] > 0:
            buf = state["momentum_buffer"]
            buf *= np.float32(group["momentum"])
            buf += g / avg
            p.data -= np.float32(group["lr"]) * buf
        else:
            p.data -= np.float32(group["lr"]) * g / avg


class Adam(Optimizer):
    """Adam, PyTorch's rule (L2 weight decay added to the gradient, as torch.optim.Adam):

        g = grad + weight_decay * p
        m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2
        p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    With ``amsgrad`` the running maximum of v is used in the denominator.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        betas = tuple(betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Adam: `betas` must be two numbers in [0, 1); got {betas}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=bool(amsgrad)))

    def _update(self, p, state, group):
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p.data)
            state["exp_avg_sq"] = np.zeros_like(p.data)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = np.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]
        beta1, beta2 = group["betas"]
        g = _decayed(p, group)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m += np.float32(1 - beta1) * (g - m)
        v *= np.float32(beta2)
        v += np.float32(1 - beta2) * g * g
        if group["amsgrad"]:
            np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            v = state["max_exp_avg_sq"]
        step_size = group["lr"] / (1 - beta1 ** t)
        denom = np.sqrt(v) / np.float32(np.sqrt(1 - beta2 ** t)) + np.float32(group["eps"])
        p.data -= np.float32(step_size) * m / denom


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter), PyTorch's rule and defaults: the weight
    decay is decoupled from the gradient, a shrink of the weights before the
    Adam step on the plain gradient:

        p *= 1 - lr * weight_decay;  then Adam's update with g = grad

    ``weight_decay`` defaults to 0.01, as torch.optim.AdamW.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)

    def _update(self, p, state, group):
        p.data *= np.float32(1 - group["lr"] * group["weight_decay"])
        super()._update(p, state, {**group, "weight_decay": 0.0})
