"""Batch normalization: BatchNorm1d and BatchNorm2d, with PyTorch's semantics,
names and state_dict keys.

Each direction is one kernel call (``batchnorm_forward``/``batchnorm_backward``,
which see the input as (N, C, *)); the running statistics are updated here.
A ReLU after the layer can run inside those calls (``relu`` of ``forward``,
``relu_y`` of ``backward``: the fusion rows of fastconv.nn.fusion).
"""

from __future__ import annotations

import numpy as np

from fastconv.backend import kernel
from fastconv.nn.checks import (
    check_int,
    check_grad,
    check_input,
    check_real,
    check_size,
)
from fastconv.nn.module import Module, Parameter


class _BatchNorm(Module):
    """Per-channel normalization of (N, C, *) input; subclasses fix the ranks.

    Training: y = (x - mean) / sqrt(var + eps) * weight + bias with the batch
    mean and biased variance over N and the trailing axes, and (when
    ``track_running_stats``) running_mean/running_var move towards the batch
    mean and the *unbiased* variance:

        running = (1 - momentum) * running + momentum * batch_statistic

    with ``momentum=None`` meaning the cumulative average (momentum =
    1 / num_batches_tracked). Evaluation normalizes with the running
    statistics, or with the batch's when they are not tracked.

    ``weight`` (init 1) and ``bias`` (init 0) exist when ``affine`` (``bias``
    only when also ``bias=True``, PyTorch's keyword-only option). Buffers
    ``running_mean`` (zeros), ``running_var`` (ones), float32 (C,), and
    ``num_batches_tracked`` (int64, 0-d) exist when ``track_running_stats``;
    state_dict keys are PyTorch's.
    """

    ranks: tuple = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *, bias: bool = True):
        super().__init__()
        name = type(self).__name__
        self.num_features = c = check_int(name, "num_features", num_features)
        check_size(name, "`num_features` statistics", (4, c))
        self.eps = check_real(name, "eps", eps, 0.0)
        self.momentum = None if momentum is None else check_real(name, "momentum", momentum, 0.0, 1.0)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        self.weight = Parameter(np.ones(c, np.float32)) if self.affine else None
        self.bias = Parameter(np.zeros(c, np.float32)) if self.affine and bias else None
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(c, np.float32))
            self.register_buffer("running_var", np.ones(c, np.float32))
            self.register_buffer("num_batches_tracked", np.array(0, np.int64))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self._cache = None

    def forward(self, x, relu=False):
        """The normalized x; max(., 0) in the same pass when ``relu`` (a ReLU
        after this layer, fused: the bits of the two layers run apart)."""
        name = type(self).__name__
        x = check_input(name, x, self.ranks)
        c = self.num_features
        if x.shape[1] != c:
            raise ValueError(f"{name}: `x` must have {c} channels in axis 1; got shape {x.shape}")
        batch_stats = self.training or not self.track_running_stats
        count = x.size // c  # values per channel
        if batch_stats and count <= 1:
            raise ValueError(f"{name}: batch statistics need more than 1 value per channel; "
                             f"got input shape {x.shape}")
        w, b = (None if p is None else p.data.astype(x.dtype, copy=False) for p in (self.weight, self.bias))
        given = (None, None) if batch_stats else (self.running_mean, self.running_var)
        y, mean, var = kernel("batchnorm_forward")(x, w, b, *given, self.eps, bool(relu))
        if self.training and self.track_running_stats:
            self._update_running_stats(mean, var, count)
        self._cache = (x, mean, var, batch_stats)
        return y

    def backward(self, dy, relu_y=None):
        """dx from dy at this layer's output; with ``relu_y``, the output of a
        ReLU after this layer, dy is the gradient at the ReLU's output and
        its mask is applied in the same passes (the bits of ReLU.backward
        then this)."""
        x, mean, var, batch_stats = self._cache
        dy = check_grad(type(self).__name__, dy, x.shape)
        w = None if self.weight is None else self.weight.data.astype(x.dtype, copy=False)
        dx, dweight, dbias = kernel("batchnorm_backward")(dy, x, w, mean, var, self.eps, batch_stats,
                                                          relu_y)
        if self.weight is not None:
            self.weight.grad += dweight
        if self.bias is not None:
            self.bias.grad += dbias
        return dx

    def _update_running_stats(self, mean, var, count):
        self.num_batches_tracked += 1  # in place: a 0-d array
        f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (count / (count - 1))
        self.running_mean[...] = (1 - f) * self.running_mean + f * mean
        self.running_var[...] = (1 - f) * self.running_var + f * unbiased

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalization of (N, C) or (N, C, L) input over N (and L); see
    :class:`_BatchNorm` for the formula and the running statistics.

    >>> bn = BatchNorm1d(16)
    >>> bn(np.random.randn(32, 16).astype(np.float32)).shape
    (32, 16)
    """

    ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalization of (N, C, H, W) input over N, H and W; see
    :class:`_BatchNorm` for the formula and the running statistics.

    >>> bn = BatchNorm2d(8)
    >>> sorted(bn.state_dict())
    ['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
    """

    ranks = (4,)
