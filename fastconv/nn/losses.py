"""Losses on raw class scores: ``forward(scores, y) -> float``, ``backward() -> dscores``."""

from __future__ import annotations

import numpy as np

from fastconv._guard import plain
from fastconv.nn.checks import check_input, check_real

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

    reductions = REDUCTIONS

    def __init__(self, reduction: str = "mean"):
        if reduction not in self.reductions:
            raise ValueError(f"{type(self).__name__}: `reduction` must be one of {self.reductions}; got {reduction!r}")
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
    """Softmax followed by the negative log-likelihood of the true class, as
    PyTorch's ``CrossEntropyLoss``:

        L_i = -log(exp(s_{y_i}) / sum_j exp(s_j)) = log(sum_j exp(s_j - m)) - (s_{y_i} - m)

    with m = max_j s_j, so that scores in the thousands neither overflow nor
    underflow. With ``label_smoothing`` e in [0, 1] the target is
    (1 - e) * onehot(y) + e / C instead of onehot(y):
    L_i = (1 - e) * L_i + e / C * sum_j -log softmax(s)_j.

    ``forward`` returns the mean over the batch (``reduction="mean"``, the
    default), the sum, or (``"none"``) the (N,) array of the L_i. ``backward``
    returns (softmax(s) - target) / N for "mean" (without the / N for
    "sum"); for "none" it takes the gradient of the per-example losses,
    ``backward(dloss)`` (shape (N,); ones when omitted), and returns
    (softmax(s) - target) * dloss[:, None].

    scores: (N, C) float32; y: (N,) integer class indices.
    """

    reductions = ("mean", "sum", "none")

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__(reduction)
        self.label_smoothing = check_real("SoftmaxCrossEntropy", "label_smoothing", label_smoothing, 0.0, 1.0)

    def forward(self, scores, y):
        scores = check_input("SoftmaxCrossEntropy", scores, (2,), "scores")
        n, c = scores.shape
        y = check_labels("SoftmaxCrossEntropy", y, n, c)
        rows = np.arange(n)
        shifted = scores - scores.max(axis=1, keepdims=True, initial=-np.inf) if n else scores
        exp = np.exp(shifted)
        total = exp.sum(axis=1, keepdims=True)
        log_total = np.log(total[:, 0])
        losses = log_total - shifted[rows, y]
        grad = exp / total
        e = self.label_smoothing
        if e:
            uniform = log_total - shifted.mean(axis=1)  # mean_j -log softmax(s)_j
            losses = (1 - e) * losses + e * uniform
            grad -= scores.dtype.type(e / c)
        grad[rows, y] -= scores.dtype.type(1 - e)
        if self.reduction == "none":
            self._grad = grad
            return losses.astype(scores.dtype, copy=False)
        if n == 0:  # PyTorch: the mean of nothing is NaN, the sum 0
            self._grad = np.zeros_like(scores)
            return float("nan") if self.reduction == "mean" else 0.0
        scale = self._scale(n)
        self._grad = (grad * scale).astype(scores.dtype, copy=False)
        return float(losses.sum(dtype=np.float64) * scale)

    def backward(self, dloss=None):
        """dL/dscores of the last forward; for reduction "none", of sum(L_i * dloss_i)."""
        grad = super().backward()
        if self.reduction != "none":
            if dloss is not None:
                raise ValueError(f"SoftmaxCrossEntropy.backward: `dloss` is for reduction='none'; "
                                 f"this loss has reduction={self.reduction!r}")
            return grad
        if dloss is None:
            return grad
        dloss = check_input("SoftmaxCrossEntropy.backward", np.asarray(dloss, grad.dtype), (1,), "dloss")
        if dloss.shape != grad.shape[:1]:
            raise ValueError(f"SoftmaxCrossEntropy.backward: `dloss` must have shape {grad.shape[:1]}; "
                             f"got {dloss.shape}")
        return grad * dloss[:, None]

    def __repr__(self):
        return f"SoftmaxCrossEntropy(reduction={self.reduction!r}, label_smoothing={self.label_smoothing})"


class MulticlassSVM(Loss):
    """The multiclass SVM (Weston-Watkins) hinge loss:

        L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + margin)        (squared=False)
        L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + margin) ** 2   (squared=True, the L2-SVM)

    averaged over the batch (``reduction="mean"``) or summed. Example from the
    notes: scores [13, -7, 11], true class 0, margin 10 give 0 + 8 = 8.

    PyTorch's ``MultiMarginLoss(p=1, margin=m)`` computes the same sum but
    also divides each L_i by the number of classes C: ours = C * theirs
    (with p=2, ``squared=True``).
    """

    def __init__(self, margin: float = 1.0, squared: bool = False, reduction: str = "mean"):
        super().__init__(reduction)
        if not np.isfinite(margin):
            raise ValueError(f"MulticlassSVM: `margin` must be a finite number; got {plain(margin)!r}")
        self.margin, self.squared = float(margin), bool(squared)

    def forward(self, scores, y) -> float:
        scores = check_input("MulticlassSVM", scores, (2,), "scores")
        n, c = scores.shape
        y = check_labels("MulticlassSVM", y, n, c)
        rows = np.arange(n)
        margins = np.maximum(0, scores - scores[rows, y][:, None] + scores.dtype.type(self.margin))
        margins[rows, y] = 0
        per_class = 2 * margins if self.squared else (margins > 0).astype(scores.dtype)
        per_class[rows, y] = -per_class.sum(axis=1)
        scale = self._scale(n)
        self._grad = (per_class * scale).astype(scores.dtype, copy=False)
        if n == 0:
            return float("nan") if self.reduction == "mean" else 0.0
        losses = (margins.astype(np.float64) ** 2 if self.squared else margins).sum(dtype=np.float64)
        return float(losses * scale)

    def __repr__(self):
        return f"MulticlassSVM(margin={self.margin}, squared={self.squared}, reduction={self.reduction!r})"


def l2_penalty(model, reg: float, include_bias: bool = False) -> float:
    """The L2 regularization term 0.5 * reg * sum(w ** 2) over the model's weights.

    Parameters named ``bias`` are left out unless ``include_bias``. This is
    the value a loss curve adds to the data loss; its gradient, reg * w, is
    what the optimizers' ``weight_decay=reg`` applies (to every parameter).
    """
    if not np.isfinite(reg) or reg < 0:
        raise ValueError(f"l2_penalty: `reg` must be a finite number >= 0; got {plain(reg)!r}")
    total = sum(float(np.sum(np.square(p.data, dtype=np.float64)))
                for name, p in model.named_parameters() if include_bias or not name.endswith("bias"))
    return 0.5 * reg * total
