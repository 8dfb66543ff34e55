"""Dropout: inverted, so that evaluation needs no rescaling."""

from __future__ import annotations

import numpy as np

from fastconv.nn import init
from fastconv.nn.checks import check_grad, check_input, check_real
from fastconv.nn.module import Module


class Dropout(Module):
    """Zero each element with probability ``p`` in training and scale the kept
    ones by 1 / (1 - p), so the expected output equals the input; the identity
    in evaluation (``eval()``) and for p = 0. p = 1 zeroes everything.

        y = x * mask,  mask = (u >= p) / (1 - p),  u ~ U[0, 1) per element
        dx = dy * mask

    The mask is drawn from fastconv's generator (seed it with
    ``fc.manual_seed``), a fresh one on each training forward. As in PyTorch,
    the scale is rounded to the input's dtype first and the input is
    multiplied, so NaN and inf propagate even where dropped (NaN * 0).

    >>> d = Dropout(0.5)
    >>> d.eval()(np.ones(4, np.float32))
    array([1., 1., 1., 1.], dtype=float32)
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = check_real("Dropout", "p", p, 0.0, 1.0)
        self._cache = None

    @np.errstate(over="ignore", invalid="ignore")  # x * scale past float max, inf * 0: IEEE results
    def forward(self, x):
        x = check_input("Dropout", x, range(33))
        if not self.training or self.p == 0.0:
            self._cache = (x.shape, None)  # identity: the backward passes dy through
            return x
        dtype = x.dtype.type
        keep = init.generator().random(x.shape, dtype=np.float32) >= self.p
        scale = dtype(0) if self.p == 1.0 else dtype(1) / dtype(1 - self.p)
        mask = keep * scale
        self._cache = (x.shape, mask)
        return x * mask

    @np.errstate(over="ignore", invalid="ignore")
    def backward(self, dy):
        shape, mask = self._cache
        dy = check_grad("Dropout", dy, shape)
        return dy if mask is None else dy * mask

    def extra_repr(self):
        return f"p={self.p}"
