"""The parameter and array checks of every layer: one vocabulary, one message form.

Each raises naming the layer, the argument, what was expected and what came:
``Conv2d: `stride` must be >= 1; got (0, 1)``. The native bridge
(``fastconv/_native/checks.pxi``) checks the arguments of each kernel call
once more, in C types, for callers that bypass the layers.
"""

from __future__ import annotations

import math

import numpy as np

from fastconv import _guard
from fastconv.backend import get_backend


def check_pair(layer, name, v, minimum):
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (v, v)
    if (not isinstance(v, (tuple, list)) or len(v) != 2
            or any(isinstance(e, bool) or not isinstance(e, (int, np.integer)) for e in v)):
        raise TypeError(f"{layer}: `{name}` must be an int or a pair of ints; got {_guard.plain(v)!r}")
    if min(v) < minimum:
        raise ValueError(f"{layer}: `{name}` must be >= {minimum}; got {tuple(int(e) for e in v)}")
    return int(v[0]), int(v[1])


def check_int(layer, name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{layer}: `{name}` must be an int; got {_guard.plain(v)!r}")
    if v < 1:
        raise ValueError(f"{layer}: `{name}` must be >= 1; got {v}")
    return int(v)


def check_flag(layer, name, v):
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{layer}: `{name}` must be a bool; got {_guard.plain(v)!r}")
    return bool(v)


def check_size(layer, what, shape, bytes_per_element=4):
    """Refuse, before allocating, arrays of `shape` that need more memory than this process can get."""
    nbytes = bytes_per_element
    for d in shape:
        nbytes *= int(d)
    _guard.check_memory(nbytes, f"{layer}: {what} of shape {_guard.short(tuple(int(d) for d in shape))}")
    return tuple(shape)


def check_weight(layer, shape):
    """check_size for a weight: its float32 data and gradient, and the float64 draw that
    initializes it (numpy's generators make float64), 16 bytes per element at the peak."""
    return check_size(layer, "`weight` (float32 data and gradient, float64 initial draw)", shape, 16)


def check_input(layer, x, ranks, what="x"):
    """Return x as a C-contiguous float array of one of the given ranks, or raise."""
    allowed = (np.float32, np.float64) if get_backend() == "reference" else (np.float32,)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{layer}: `{what}` must be a float32 numpy array; got {type(x).__name__}")
    if x.dtype not in allowed:
        raise TypeError(f"{layer}: `{what}` must be a float32 array; got dtype {x.dtype} with shape {x.shape}")
    if x.ndim not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ValueError(f"{layer}: `{what}` must have rank {want}; got shape {x.shape}")
    if not (x.flags.c_contiguous and x.flags.aligned):  # the copy below must fit, e.g. of a broadcast view
        check_size(layer, f"`{what}` (copied to C order)", x.shape)
    return np.require(x, requirements=("C", "A"))  # copies only views the kernels can't read


def batched(layer, x, channels=None):
    """(x as NCHW, whether a batch axis was added) for (N, C, H, W) or (C, H, W) input."""
    x = check_input(layer, x, (3, 4))
    unbatched = x.ndim == 3
    if unbatched:
        x = x[None]
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{layer}: `x` must have {channels} channels, shape (N, {channels}, H, W); "
            f"got shape {x.shape[1:] if unbatched else x.shape}")
    return x, unbatched


def check_real(layer, name, v, lo=-np.inf, hi=np.inf):
    """v as a float, or raise: a real number (not a bool), finite, in [lo, hi]."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{layer}: `{name}` must be a real number; got {type(v).__name__} {_guard.plain(v)!r}")
    try:
        f = float(v)
    except OverflowError:  # an int beyond the float range
        f = np.inf
    if not (np.isfinite(f) and lo <= f <= hi):
        bounds = (f" in [{lo:g}, {hi:g}]" if np.isfinite(hi) else f" >= {lo:g}") if np.isfinite(lo) else ""
        raise ValueError(f"{layer}: `{name}` must be a finite number{bounds}; got {_guard.plain(v)!r}")
    return f


def check_grad(layer, dy, shape):
    """dy as a C-contiguous float array of exactly `shape` (the forward output's), or raise."""
    dy = check_input(f"{layer}.backward", dy, (len(shape),), "dy")
    if dy.shape != tuple(shape):
        raise ValueError(f"{layer}.backward: `dy` must have the forward output's shape {tuple(shape)}; got {dy.shape}")
    return dy


def is_int(v, lo: int, hi: int | None = None) -> bool:
    return type(v) is int and lo <= v and (hi is None or v <= hi)


def is_number(v) -> bool:
    return type(v) in (int, float) and math.isfinite(v)
