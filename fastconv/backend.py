"""Which implementation the layers call: the native kernels, their NumPy
twins, or both compared (``check``).

Layers never import a kernel directly: they call ``kernel("name")(...)``, the
one dispatch point that :func:`set_backend` controls. The initial backend is
read from the ``FASTCONV_BACKEND`` environment variable (default ``native``).
"""

from __future__ import annotations

import functools
import os

import numpy as np

from fastconv import _kernels, reference
from fastconv.precision import kernel_precision

BACKENDS = ("native", "reference", "check")

# Kernels that write into one of their arguments: (positional index, keyword).
_IN_PLACE = {"bias_add": (0, "y"), "sgemm": (2, "C")}


class BackendMismatchError(RuntimeError):
    """Raised by the ``check`` backend when native and reference results differ."""


def _validate(name, where):
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"{where}: backend must be one of {BACKENDS}; got {name!r}")
    return name


def _backend_from_environment():
    """FASTCONV_BACKEND (any case; unset or empty: native), and what is wrong with it or None.
    A bad value is returned, not raised: fastconv/__init__.py raises it (see _kernels)."""
    raw = os.environ.get("FASTCONV_BACKEND", "")
    name = raw.strip().lower() or "native"
    if name in BACKENDS:
        return name, None
    return "native", f"FASTCONV_BACKEND must be one of {BACKENDS}; got {raw!r}"


_backend, _environment_problem = _backend_from_environment()


def set_backend(name: str) -> None:
    """Select the kernels the layers call: ``"native"`` (C, the default),
    ``"reference"`` (NumPy twins) or ``"check"`` (both; raises
    :class:`BackendMismatchError` when they disagree)."""
    global _backend
    _backend = _validate(name, "set_backend")


def get_backend() -> str:
    """The backend in use: ``"native"``, ``"reference"`` or ``"check"``."""
    return _backend


def kernel(name: str):
    """The implementation of kernel ``name`` for the current backend, in this
    thread's autocast precision when ``name`` is one autocast covers."""
    if _backend == "native":
        fn = getattr(_kernels, name)
    elif _backend == "reference":
        fn = getattr(reference, name)
    else:
        fn = lambda *args, **kwargs: _checked(name, args, kwargs)  # noqa: E731
    precision = kernel_precision(name)
    return functools.partial(fn, precision=precision) if precision else fn


def _copy_in_place_arg(name, args, kwargs):
    """Give the reference its own copy of an argument the kernel writes to."""
    if name not in _IN_PLACE:
        return args, kwargs
    pos, key = _IN_PLACE[name]
    args, kwargs = list(args), dict(kwargs)
    if len(args) > pos and args[pos] is not None:
        args[pos] = args[pos].copy()
    elif kwargs.get(key) is not None:
        kwargs[key] = kwargs[key].copy()
    return tuple(args), kwargs


def _checked(name, args, kwargs):
    ref_args, ref_kwargs = _copy_in_place_arg(name, args, kwargs)
    expected = getattr(reference, name)(*ref_args, **ref_kwargs)
    got = getattr(_kernels, name)(*args, **kwargs)
    outputs = zip(got, expected) if isinstance(got, tuple) else [(got, expected)]
    shapes = [a.shape for a in args if isinstance(a, np.ndarray)]
    for i, (g, e) in enumerate(outputs):
        if g is None and e is None:
            continue
        err = _mismatch(g, e, loose=kwargs.get("precision") == "bfloat16")
        if err is not None:
            raise BackendMismatchError(
                f"check backend: kernel {name!r} output {i} differs from the reference "
                f"(input shapes {shapes}): {err}")
    return got


def _mismatch(got, expected, loose=False):
    """None when the arrays agree within float32 tolerance (bf16's when `loose`), else a
    description. In bf16 the two sides may round different operands: the reference rounds
    x and w, bf16 Winograd its transformed tiles (RMS error 1.7x the GEMM path's)."""
    if got.shape != expected.shape or got.dtype != expected.dtype:
        return f"got {got.dtype}{got.shape}, expected {expected.dtype}{expected.shape}"
    if not np.issubdtype(got.dtype, np.floating):
        bad = np.count_nonzero(got != expected)
        return f"{bad} integer elements differ" if bad else None
    scale = float(np.max(np.abs(expected[np.isfinite(expected)]), initial=1.0))
    rtol, atol = (2.0**-6, 2.0**-5) if loose else (1e-3, 1e-4)
    if np.allclose(got, expected, rtol=rtol, atol=atol * scale, equal_nan=True):
        return None
    diff = np.abs(got.astype(np.float64) - expected)
    worst = np.unravel_index(np.nanargmax(np.where(np.isnan(diff), np.inf, diff)), diff.shape)
    return (f"max abs error {diff[worst]:.3g} at index {tuple(int(i) for i in worst)} "
            f"(native {got[worst].item()!r}, reference {expected[worst].item()!r}, scale {scale:.3g})")
