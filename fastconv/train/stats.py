"""The per-layer statistics the Trainer records once per epoch: distributions and dead units."""

from __future__ import annotations

import numpy as np


def summary(a: np.ndarray, bins: int = 24) -> dict:
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


def activation_summary(a: np.ndarray) -> dict:
    """_summary, plus the dead units of a batch of layer outputs (N, *unit_shape):
    the share of units (each channel and position of an image; each feature)
    whose output is exactly zero for every one of the N examples, and for
    images the share of channels zero at every position of every example.
    A zero share of elements (``zero_fraction``) is a ReLU layer's normal
    sparsity; a dead unit passes no gradient for any of these examples."""
    out = summary(a)
    if a.ndim >= 2 and a.shape[0] > 0:
        silent = np.all(a == 0, axis=0)
        out["dead_units"], out["examples"] = float(np.mean(silent)), int(a.shape[0])
        if a.ndim == 4:
            out["dead_channels"] = float(np.mean(np.all(silent, axis=(1, 2))))
    return out
