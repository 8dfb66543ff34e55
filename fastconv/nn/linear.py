"""Linear (fully connected) and Flatten."""

from __future__ import annotations

import zlib

import numpy as np

from fastconv.backend import kernel
from fastconv.nn import init
from fastconv.nn.checks import check_input, check_int, check_weight
from fastconv.nn.module import Module, Parameter


def _fingerprint(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).view(np.uint8))


class Linear(Module):
    """Fully connected: y = x @ weight.T + bias, for x of shape (*, in_features).

    ``weight`` is (out_features, in_features), as PyTorch. Default init: He
    normal weights (std sqrt(2 / in_features)), zero bias; as the last layer
    of a Sequential (the class scores), std CLASSIFIER_GAIN / sqrt(in_features)
    (0.1 / sqrt(in_features)), so that the first softmax loss is about ln(C)
    (see fastconv.nn.init).
    """

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features = check_int("Linear", "in_features", in_features)
        self.out_features = check_int("Linear", "out_features", out_features)
        shape = check_weight("Linear", (self.out_features, self.in_features))
        self.weight = Parameter(np.empty(shape, np.float32))
        init.he_normal_(self.weight)
        self._as_output, self._drawn = False, _fingerprint(self.weight.data)
        self.bias = Parameter(np.zeros(self.out_features, np.float32)) if bias else None
        self._cache = None

    def init_as_output(self, output: bool) -> None:
        """Scale this layer's own initial draw between He (hidden) and
        classifier_normal_ (output), while the layer is fresh: never run, its
        weights still that draw. Weights set, loaded or used stay as they are."""
        if output == self._as_output or self._drawn is None or _fingerprint(self.weight.data) != self._drawn:
            return
        scale = init.CLASSIFIER_GAIN / np.sqrt(2.0)
        self.weight.data *= np.float32(scale if output else 1.0 / scale)
        self._as_output, self._drawn = output, _fingerprint(self.weight.data)

    def forward(self, x):
        self._drawn = None  # its outputs have been seen: the init is final
        x = check_input("Linear", x, range(1, 33))
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"Linear: `x` must have {self.in_features} features in its last axis; got shape {x.shape}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        w = self.weight.data.astype(x.dtype, copy=False)
        y = kernel("sgemm")(x2, w, trans_b=True)
        if self.bias is not None:
            y = kernel("bias_add")(y, self.bias.data.astype(x.dtype, copy=False))
        self._cache = (x2, lead)
        return y.reshape(lead + (self.out_features,))

    def backward(self, dy):
        x2, lead = self._cache
        dy = check_input("Linear.backward", dy, (len(lead) + 1,), "dy").reshape(-1, self.out_features)
        w = self.weight.data.astype(x2.dtype, copy=False)
        dx = kernel("sgemm")(dy, w)
        if self.weight.grad.dtype == dy.dtype:  # accumulate in place: dW += dy.T @ x
            kernel("sgemm")(dy, x2, self.weight.grad, trans_a=True, beta=1.0)
        else:
            self.weight.grad += kernel("sgemm")(dy, x2, trans_a=True)
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=0)
        return dx.reshape(lead + (self.in_features,))

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Flatten(Module):
    """Reshape dims ``start_dim..end_dim`` into one (default: all but the batch axis)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)
        self._shape = None

    def forward(self, x):
        x = check_input("Flatten", x, range(1, 33))
        for name, d in (("start_dim", self.start_dim), ("end_dim", self.end_dim)):
            if not -x.ndim <= d < x.ndim:
                raise ValueError(f"Flatten: `{name}` must be in [{-x.ndim}, {x.ndim - 1}] for shape {x.shape}; got {d}")
        start, end = self.start_dim % x.ndim, self.end_dim % x.ndim
        if start > end:
            raise ValueError(f"Flatten: start_dim {self.start_dim} comes after end_dim {self.end_dim} for shape {x.shape}")
        self._shape = x.shape
        return x.reshape(x.shape[:start] + (int(np.prod(x.shape[start:end + 1])),) + x.shape[end + 1:])

    def backward(self, dy):
        return np.asarray(dy).reshape(self._shape)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
