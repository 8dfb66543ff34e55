"""Gradient checking: analytic backward against float64 central differences.

The numeric gradients always come from the NumPy twins in float64 (the
``reference`` backend), so they are accurate to ~1e-10. By default the
analytic gradients do too (``backend="reference"``): that checks a layer's
backward formulas, not the native kernels, so a wrong native kernel (a conv
dW scaled by 1.5) passes it. ``backend="native"`` takes the analytic
gradients from the native kernels in float32 instead, against the same
float64 numeric ones, with a float32-sized tolerance.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fastconv import backend as _backend
from fastconv.nn.losses import Loss
from fastconv.nn.module import Module

@dataclasses.dataclass
class GradcheckResult:
    """Outcome of :func:`gradcheck`; truthy when it passed."""

    passed: bool
    max_rel_error: float   # max over checked elements of |a - n| / max(|a|, |n|, 1e-8)
    worst: tuple           # (tensor name, index, analytic, numeric) of the element nearest to failing
    checked: int           # elements compared
    skipped: int           # elements within `kink` of a non-differentiable point
    worst_ratio: float = 0.0  # its |a - n| / (atol + rtol * max(|a|, |n|)); passed means every one <= 1

    def __bool__(self):
        return self.passed

    def __str__(self):
        name, index, a, n = self.worst
        verdict = "passed: every element is within" if self.passed else "FAILED: an element is outside"
        # A large relative error on a gradient near 0 is within atol; say so, or it reads as a failure.
        return (f"gradcheck {verdict} its tolerance atol + rtol * |gradient| (the worst: "
                f"{name}{list(index)}, analytic {a:.6g}, numeric {n:.6g}, at {self.worst_ratio:.3g}x its tolerance); "
                f"max relative error {self.max_rel_error:.3g}; {self.checked} checked, {self.skipped} skipped "
                "near kinks")


def gradcheck(module_or_fn, x, y=None, *, eps=1e-6, rtol=None, atol=None, kink=1e-4,
              seed=0, max_elements=None, backend: str = "reference") -> GradcheckResult:
    """Compare a backward with centered differences (f(v + eps) - f(v - eps)) / (2 eps).

    ``module_or_fn`` is a :class:`Module` (checked on ``x`` and every
    parameter, with the scalar loss sum(forward(x) * g) for a fixed random
    g), a loss (``forward(x, y)``, ``backward()``; checked on ``x``), or a
    callable ``f(x) -> (out, backward)`` with ``backward(dout) -> dx``.

    ``backend`` is where the analytic gradients come from: "reference" (the
    NumPy twins in float64; checks the backward's formulas) or "native" (the
    C kernels in float32; checks the kernels too). The numeric gradients are
    float64 reference ones either way.

    An element passes when |a - n| <= atol + rtol * max(|a|, |n|); by
    default rtol = 1e-5 and atol = 1e-8 for "reference", and rtol = 1e-3 and
    atol = 1e-4 * max|a| over the tensor for "native" (float32 sums). Elements
    within ``kink`` of a non-differentiable point (a ReLU at 0, a max-pool
    tie) are skipped and counted: they are found by one-sided differences
    of step ``kink`` that disagree. ``max_elements`` checks a random subset
    per tensor. A backward 1% off fails on "reference", 1.5x off on "native".

    >>> fc.gradcheck(fc.Conv2d(2, 3, 3), x, backend="native").passed
    True
    """
    if backend not in ("reference", "native"):
        raise ValueError(f"gradcheck: `backend` must be 'reference' or 'native'; got {backend!r}")
    native = backend == "native"
    rtol = (1e-3 if native else 1e-5) if rtol is None else rtol
    x = np.array(x, dtype=np.float64)
    params = list(module_or_fn.named_parameters()) if isinstance(module_or_fn, Module) else []
    saved = [(p, p.data, p.grad) for _, p in params]
    previous = _backend.get_backend()
    try:
        if native:  # the analytic gradients in float32 on the C kernels, as in training
            _backend.set_backend("native")
            for p, data, _ in saved:
                p.data, p.grad = data.astype(np.float32), np.zeros(data.shape, np.float32)
            _, analytic = _objective(module_or_fn, x.astype(np.float32), y, np.random.default_rng(seed))
            grads = [analytic["x"]] + [p.grad.copy() for _, p in params]
        _backend.set_backend("reference")
        for p, data, _ in saved:
            p.data, p.grad = data.astype(np.float64), np.zeros(data.shape, np.float64)
        f, analytic = _objective(module_or_fn, x, y, np.random.default_rng(seed))
        if not native:
            grads = [analytic["x"]] + [p.grad.copy() for _, p in params]
        tensors = [("x", x, grads[0])] + [(n, p.data, g) for (n, p), g in zip(params, grads[1:])]
        result = GradcheckResult(True, 0.0, ("x", (), 0.0, 0.0), 0, 0)
        rng = np.random.default_rng(seed + 1)
        for name, value, grad in tensors:
            grad = np.asarray(grad, dtype=np.float64)
            tol = atol if atol is not None else (1e-4 * float(np.max(np.abs(grad), initial=0.0)) if native else 1e-8)
            _check_tensor(f, name, value, grad, eps, rtol, tol, kink, rng, max_elements, result)
        return result
    finally:
        _backend.set_backend(previous)
        for p, data, grad in saved:
            p.data, p.grad = data, grad


def _objective(target, x, y, rng):
    """(f, analytic grads): f() evaluates the scalar objective at the current
    values. g is drawn in float32, so that both backends weigh by the same g."""
    if isinstance(target, Module):
        target.zero_grad()
        out = target.forward(x)
        g = rng.standard_normal(out.shape).astype(np.float32).astype(out.dtype)
        dx = target.backward(g)
        return (lambda: float(np.sum(target.forward(x) * g))), {"x": dx}
    if isinstance(target, Loss):
        target.forward(x, y)
        dx = target.backward().copy()
        return (lambda: target.forward(x, y)), {"x": dx}
    if callable(target):
        out, back = target(x)
        g = rng.standard_normal(np.shape(out)).astype(np.float32).astype(np.asarray(out).dtype)
        dx = back(g)
        return (lambda: float(np.sum(target(x)[0] * g))), {"x": dx}
    raise TypeError(f"gradcheck: `module_or_fn` must be a Module, a loss or a callable; got {type(target).__name__}")


def _check_tensor(f, name, value, grad, eps, rtol, atol, kink, rng, max_elements, result):
    flat, gflat = value.reshape(-1), np.asarray(grad, dtype=np.float64).reshape(-1)
    idx = np.arange(flat.size)
    if max_elements is not None and flat.size > max_elements:
        idx = rng.choice(flat.size, max_elements, replace=False)
    for i in idx:
        orig = flat[i]

        def at(v):
            flat[i] = v
            return f()

        center = at(orig)
        plus_k, minus_k = at(orig + kink), at(orig - kink)
        forward_d, backward_d = (plus_k - center) / kink, (center - minus_k) / kink
        if abs(forward_d - backward_d) > 1e-2 * max(abs(forward_d), abs(backward_d)) + 1e-6:
            flat[i] = orig
            result.skipped += 1
            continue
        numeric = (at(orig + eps) - at(orig - eps)) / (2 * eps)
        flat[i] = orig
        a = gflat[i]
        rel = abs(a - numeric) / max(abs(a), abs(numeric), 1e-8)
        ratio = abs(a - numeric) / (atol + rtol * max(abs(a), abs(numeric)))
        result.checked += 1
        result.passed = result.passed and bool(ratio <= 1)
        result.max_rel_error = max(result.max_rel_error, float(rel))
        if ratio > result.worst_ratio:
            index = tuple(int(j) for j in np.unravel_index(i, value.shape))  # Python ints: messages read x[0, 1]
            result.worst, result.worst_ratio = (name, index, float(a), float(numeric)), float(ratio)
