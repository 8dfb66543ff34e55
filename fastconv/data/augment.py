"""Data augmentation per minibatch: :class:`RandomCrop`, :class:`RandomHorizontalFlip`,
:class:`Compose`, and :func:`parse` for the CLI's ``--augment crop4,flip``.

A transform is called as ``transform(X, rng)`` on a batch X (N, C, H, W) and
returns a new array (the batch may be a view of the dataset); all its
randomness comes from ``rng``, a ``np.random.Generator``. The Trainer passes
a generator of its own whose state is saved in every checkpoint, so a
resumed run draws the same crops and flips as an uninterrupted one.

>>> augment = fc.data.Compose(fc.data.RandomCrop(32, padding=4), fc.data.RandomHorizontalFlip())
>>> trainer = fc.Trainer(model, loss, opt, augment=augment)

Each transform is a few whole-batch NumPy operations (no loop over images):
the crop gathers every image's window from a strided view of the padded batch.
"""

from __future__ import annotations

import numpy as np

from fastconv import _guard
from fastconv.nn.checks import check_pair

__all__ = ["Compose", "RandomCrop", "RandomHorizontalFlip", "parse"]


def _check_batch(X, who: str) -> np.ndarray:
    if not isinstance(X, np.ndarray) or X.ndim != 4:
        raise ValueError(f"{who}: the batch must be a numpy array (N, C, H, W); got "
                         f"{getattr(X, 'shape', type(X).__name__)}")
    return X


class RandomCrop:
    """A random ``size`` window of each image after zero-padding ``padding`` pixels on every side.

    Pads with zeros: on data normalized to zero mean per channel (as
    ``fastconv train`` does before training) that is padding with the
    channel mean. The offsets are drawn once per image, uniformly over
    the ``(H + 2p - h + 1) x (W + 2p - w + 1)`` positions, rows first.
    """

    def __init__(self, size, padding: int = 0):
        self.size = check_pair("RandomCrop", "size", size, minimum=1)
        if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
            raise ValueError(f"RandomCrop: `padding` must be an int >= 0; got {_guard.plain(padding)!r}")
        self.padding = int(padding)

    def __call__(self, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        X = _check_batch(X, "RandomCrop")
        p, (h, w) = self.padding, self.size
        n, c, H, W = X.shape
        if h > H + 2 * p or w > W + 2 * p:
            raise ValueError(f"RandomCrop: `size` {self.size} must fit the padded images "
                             f"({H + 2 * p}x{W + 2 * p}: {H}x{W} plus padding {p}); got {h}x{w}")
        padded = np.pad(X, ((0, 0), (0, 0), (p, p), (p, p))) if p else X
        top = rng.integers(0, H + 2 * p - h + 1, size=n)
        left = rng.integers(0, W + 2 * p - w + 1, size=n)
        windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(2, 3))  # (N, C, H', W', h, w)
        # The advanced indices on axes 0, 2, 3 are split by the slice on axis 1, so
        # their broadcast axis (N) comes first: the result is (N, C, h, w), a copy.
        return windows[np.arange(n), :, top, left]

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p`` (one draw per image)."""

    def __init__(self, p: float = 0.5):
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)) or not 0 <= p <= 1:
            raise ValueError(f"RandomHorizontalFlip: `p` must be a number in [0, 1]; got {_guard.plain(p)!r}")
        self.p = float(p)

    def __call__(self, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        X = _check_batch(X, "RandomHorizontalFlip")
        flip = rng.random(X.shape[0]) < self.p
        return np.where(flip[:, None, None, None], X[..., ::-1], X)

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """The transforms in order, each drawing from the same generator."""

    def __init__(self, *transforms):
        for t in transforms:
            if not callable(t):
                raise TypeError(f"Compose: each transform must be callable as t(X, rng); got {type(t).__name__}")
        self.transforms = list(transforms)

    def __call__(self, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for t in self.transforms:
            X = t(X, rng)
        return X

    def __repr__(self):
        return f"Compose({', '.join(map(repr, self.transforms))})"


def parse(text: str, input_shape) -> Compose | None:
    """``--augment`` of ``fastconv train``: comma-separated ``cropP`` (a random crop
    of the image's own size after padding P pixels), ``flip`` or ``flipP``
    (horizontal flip with probability P, default 0.5), or ``none``."""
    if text in (None, "", "none"):
        return None
    transforms = []
    for item in text.split(","):
        item = item.strip()
        try:
            if item.startswith("crop") and item[4:].isdigit():
                if len(input_shape) != 3:
                    raise ValueError(f"crop needs images (C, H, W); the data has examples of shape {input_shape}")
                transforms.append(RandomCrop(tuple(input_shape[1:]), padding=int(item[4:])))
            elif item == "flip":
                transforms.append(RandomHorizontalFlip())
            elif item.startswith("flip"):
                transforms.append(RandomHorizontalFlip(float(item[4:])))
            else:
                raise ValueError("expected cropP (P: padding in pixels), flip or flipP (P: probability)")
        except ValueError as e:
            raise ValueError(f"--augment: {item!r}: {e}") from None
    return Compose(*transforms)
