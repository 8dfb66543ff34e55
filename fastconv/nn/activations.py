"""Activations: ReLU, LeakyReLU, ELU, Sigmoid, Tanh (element-wise, one
kernel call per direction) and Maxout (a linear map, then a max over pieces).

Formulas and gradients are PyTorch's; nothing overflows or warns for large
|x|. At a NaN input the rule is fastconv's own, the same on every CPU: every
forward gives NaN; LeakyReLU's backward takes the x <= 0 branch (negative_slope
* dy), ELU's gives NaN, and Sigmoid's and Tanh's (computed from y) give NaN.
PyTorch's ELU backward at NaN depends on its vector width (NaN on its vector
path, dy on its scalar tail), so fastconv follows its vector path everywhere. Inputs are float32 arrays of any shape (float64 too under the
``reference`` backend, which gradient checks use).
"""

from __future__ import annotations

import numpy as np

from fastconv.nn import init
from fastconv.backend import kernel
from fastconv.nn.checks import (
    check_int,
    check_grad,
    check_input,
    check_real,
    check_weight,
)
from fastconv.nn.module import Module, Parameter


class ReLU(Module):
    """y = max(x, 0), element-wise; dx = dy where y > 0. NaN propagates."""

    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x):
        x = check_input("ReLU", x, range(33))
        self._y = kernel("relu_forward")(x)
        return self._y

    def adopt_output(self, y):
        """Take y = relu(x), computed by the layer before (a fused Conv2d), as
        this layer's forward output: kept for the backward, returned as is.
        None when a MaxPool2d after it was fused too: then only Sequential's
        masked backward (``mask`` with the pool's output) runs."""
        self._y = y
        return y

    @property
    def output(self):
        """The forward's output, kept for the backward (None before a forward,
        or after one fused with a max-pool); a fused BatchNorm backward masks
        with it."""
        return self._y

    def backward(self, dy):
        return self.mask(dy, self._y)

    def mask(self, dy, y):
        """dy where y > 0 (or NaN), else 0: the backward, masked by ``y``.

        A max-pool after this layer sends each window's gradient to the
        window's maximum, whose value is the pooled output; so Sequential
        masks the pooled gradient by the pooled output, a quarter of the
        work for a 2x2 pool, with the same bits as masking after the pool.
        """
        dy = check_input("ReLU.backward", dy, (y.ndim,), "dy")
        return kernel("relu_backward")(dy, y)


class _Elementwise(Module):
    """y = f(x) element-wise through the kernels ``<op>_forward`` and ``<op>_backward``.

    Subclasses set ``op``, ``saves`` (the forward tensor the backward kernel
    takes: "x" or "y") and return their scalar hyper-parameters from ``_args``.
    """

    op = ""
    saves = "y"

    def __init__(self):
        super().__init__()
        self._saved = None

    def _args(self):
        return ()

    def forward(self, x):
        x = check_input(type(self).__name__, x, range(33))
        y = kernel(f"{self.op}_forward")(x, *self._args())
        self._saved = x if self.saves == "x" else y
        return y

    def backward(self, dy):
        dy = check_grad(type(self).__name__, dy, self._saved.shape)
        return kernel(f"{self.op}_backward")(dy, self._saved, *self._args())


class LeakyReLU(_Elementwise):
    """y = x if x > 0 else negative_slope * x; dx = dy if x > 0 else negative_slope * dy.

    >>> LeakyReLU(0.1)(np.array([-2.0, 3.0], np.float32))
    array([-0.2,  3. ], dtype=float32)
    """

    op, saves = "leaky_relu", "x"

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = check_real("LeakyReLU", "negative_slope", negative_slope)

    def _args(self):
        return (self.negative_slope,)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class ELU(_Elementwise):
    """y = x if x > 0 else alpha * (exp(x) - 1); dx = dy if x > 0 else dy * alpha * exp(x).

    At x = NaN both y and dx are NaN.

    The notes' max(alpha (e^x - 1), x) for 0 < alpha <= 1; the gradient is
    taken from x, so any alpha (also > 1 or < 0) is differentiated right.

    >>> ELU()(np.array([-1.0, 2.0], np.float32))
    array([-0.63212055,  2.        ], dtype=float32)
    """

    op, saves = "elu", "x"

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = check_real("ELU", "alpha", alpha)

    def _args(self):
        return (self.alpha,)

    def extra_repr(self):
        return f"alpha={self.alpha}"


class Sigmoid(_Elementwise):
    """y = 1 / (1 + exp(-x)) (computed from exp(-|x|): no overflow); dx = dy * y * (1 - y).

    >>> Sigmoid()(np.array([0.0, 1e4, -1e4], np.float32))
    array([0.5, 1. , 0. ], dtype=float32)
    """

    op = "sigmoid"


class Tanh(_Elementwise):
    """y = tanh(x); dx = dy * (1 - y^2).

    >>> Tanh()(np.array([0.0, 1e4], np.float32))
    array([0., 1.], dtype=float32)
    """

    op = "tanh"


class Maxout(Module):
    """Maxout (Goodfellow et al., 2013): out_features units, each the max of
    ``pieces`` affine functions of x (max(w1.x + b1, w2.x + b2) for
    pieces=2):

        z = x @ weight.T + bias,  y[..., j] = max_k z[..., j * pieces + k]

    A Linear to out_features * pieces units whose consecutive groups of
    ``pieces`` are max-reduced: ``weight`` is (out_features * pieces,
    in_features), ``bias`` (out_features * pieces,), so that state_dict keys
    are "weight" and "bias" and row j * pieces + k is piece k of unit j. The
    backward routes each unit's gradient to its winning piece only (ties: the
    first; a NaN wins, as torch.max). Default init: He normal weights, zero
    bias, as Linear. Input (*, in_features), output (*, out_features).

    >>> Maxout(4, 3, pieces=2)(np.zeros((5, 4), np.float32)).shape
    (5, 3)
    """

    def __init__(self, in_features: int, out_features: int, pieces: int):
        super().__init__()
        self.in_features = check_int("Maxout", "in_features", in_features)
        self.out_features = check_int("Maxout", "out_features", out_features)
        self.pieces = check_int("Maxout", "pieces", pieces)
        shape = check_weight("Maxout", (self.out_features * self.pieces, self.in_features))
        self.weight = Parameter(np.empty(shape, np.float32))
        init.he_normal_(self.weight)
        self.bias = Parameter(np.zeros(self.out_features * self.pieces, np.float32))
        self._cache = None

    def forward(self, x):
        x = check_input("Maxout", x, range(1, 33))
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"Maxout: `x` must have {self.in_features} features in its last axis; got shape {x.shape}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        z = kernel("sgemm")(x2, self.weight.data.astype(x.dtype, copy=False), trans_b=True)
        z = kernel("bias_add")(z, self.bias.data.astype(x.dtype, copy=False))
        z = z.reshape(-1, self.out_features, self.pieces)
        winner = np.argmax(z, axis=-1)[..., None]  # first maximum, or the first NaN
        self._cache = (x2, lead, winner)
        return np.take_along_axis(z, winner, axis=-1).reshape(lead + (self.out_features,))

    def backward(self, dy):
        x2, lead, winner = self._cache
        dy = check_grad("Maxout", dy, lead + (self.out_features,))
        dz = np.zeros(winner.shape[:-1] + (self.pieces,), dy.dtype)  # zero for every losing piece
        np.put_along_axis(dz, winner, dy.reshape(winner.shape), axis=-1)
        dz = dz.reshape(-1, self.out_features * self.pieces)
        dx = kernel("sgemm")(dz, self.weight.data.astype(dz.dtype, copy=False))
        self.weight.grad += kernel("sgemm")(dz, x2, trans_a=True)
        self.bias.grad += dz.sum(axis=0)
        return dx.reshape(lead + (self.in_features,))

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, pieces={self.pieces}"
