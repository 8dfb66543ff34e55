"""Losses on raw class scores: ``forward(scores, y) -> float``, ``backward() -> dscores``."""

from __future__ import annotations

import numpy as np

from fastconv.layers import check_input

REDUCTIONS = ("mean", "sum")


def check_labels(loss, y, n, classes):
    """Integer class indices of shape (n,) in [0, classes), or raise."""
    if not isinstance(y, np.ndarray):
        y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{loss}: `y` must hold integer class indices; got dtype {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"{loss}: `y` must have shape ({n},) to match the scores; got {y.shape}")
    if n and (y.min() < 0 or y.max() >= classes):
        bad = y[(y < 0) | (y >= classes)][0]
        raise ValueError(f"{loss}: `y` must be class indices in [0, {classes}); got {bad}")
    return y.astype(np.intp, copy=False)


class Loss:
    """Base: validates the reduction and holds the gradient of the last forward."""

    def __init__(self, reduction: str = "mean"):
        if reduction not in REDUCTIONS:
            raise ValueError(f"{type(self).__name__}: `reduction` must be one of {REDUCTIONS}; got {reduction!r}")
        self.reduction = reduction
        self._grad = None

    def __call__(self, scores, y) -> float:
        return self.forward(scores, y)

    def backward(self):
        """dL/dscores of the last forward (same shape and dtype as the scores)."""
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._grad

    def _scale(self, n):
        return 1.0 / n if self.reduction == "mean" and n else 1.0

    def __repr__(self):
        return f"{type(self).__name__}(reduction={self.reduction!r})"


class SoftmaxCrossEntropy(Loss):
    """Softmax followed by the negative log-likelihood of the true class:

        L_i = -log(exp(s_{y_i}) / sum_j exp(s_j)) = log(sum_j exp(s_j - m)) - (s_{y_i} - m)

    with m = max_j s_j, so that scores in the thousands neither overflow nor
    underflow. ``forward`` returns the mean over the batch (``reduction="mean"``,
    PyTorch's ``CrossEntropyLoss`` default) or the sum; ``backward`` returns
    (softmax(s) - onehot(y)) / N.

    scores: (N, C) float32; y: (N,) integer class indices.
    """

    def forward(self, scores, y) -> float:
        scores = check_input("SoftmaxCrossEntropy", scores, (2,), "scores")
        n, c = scores.shape
        y = check_labels("SoftmaxCrossEntropy", y, n, c)
        if n == 0:  # PyTorch: the mean of nothing is NaN, the sum 0
            self._grad = np.zeros_like(scores)
            return float("nan") if self.reduction == "mean" else 0.0
        rows = np.arange(n)
        shifted = scores - scores.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        total = exp.sum(axis=1, keepdims=True)
        losses = np.log(total[:, 0]) - shifted[rows, y]
        grad = exp / total
        grad[rows, y] -= 1
        scale = self._scale(n)
        self._grad = (grad * scale).astype(scores.dtype, copy=False)
        return float(losses.sum(dtype=np.float64) * scale)
