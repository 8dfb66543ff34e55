"""Pooling: MaxPool2d (argmax routing of the gradient), AvgPool2d and the adaptive pools
(AdaptiveAvgPool2d, AdaptiveMaxPool2d), with PyTorch's semantics."""

from __future__ import annotations

import numpy as np

from fastconv import _guard
from fastconv.backend import kernel
from fastconv.nn.checks import batched, check_flag, check_grad, check_input, check_pair
from fastconv.nn.module import Module


def _pool_args(layer, kernel_size, stride, padding, dilation=1, ceil_mode=False):
    """A pooling layer's (kernel, stride, padding, dilation) pairs and ceil_mode:
    stride defaults to the kernel, padding is at most half the kernel (as
    PyTorch requires, whatever the dilation)."""
    kernel = check_pair(layer, "kernel_size", kernel_size, 1)
    stride = kernel if stride is None else check_pair(layer, "stride", stride, 1)
    padding = check_pair(layer, "padding", padding, 0)
    dilation = check_pair(layer, "dilation", dilation, 1)
    if 2 * padding[0] > kernel[0] or 2 * padding[1] > kernel[1]:
        raise ValueError(f"{layer}: `padding` must be at most half of `kernel_size` {kernel}; got {padding}")
    return kernel, stride, padding, dilation, check_flag(layer, "ceil_mode", ceil_mode)


def _output_size(layer, size, kernel, stride, padding, dilation, ceil_mode):
    """(OH, OW) of a pool over an input of `size` (H, W), by PyTorch's rule:
    (H + 2*ph - dh*(kh-1) - 1) / sh + 1 rounded down, or up with ceil_mode
    unless the last window would then start in the bottom (right) padding.
    Raises unless there is at least one output and every window reaches the input."""
    out = []
    for axis, h, k, s, p, d in zip(("height", "width"), size, kernel, stride, padding, dilation):
        span, up = d * (k - 1) + 1, s - 1 if ceil_mode else 0
        if h + 2 * p + up < span:
            extent = f"kernel size {kernel}" + (f" at dilation {dilation}" if d > 1 else "")
            slack = f" even with ceil_mode's stride - 1 = {up} more" if up else ""
            raise ValueError(f"{layer}: {extent} is larger than the padded input "
                             f"{(size[0] + 2 * padding[0], size[1] + 2 * padding[1])}{slack} "
                             f"(input {tuple(size)}, padding {padding})")
        o = (h + 2 * p - span + up) // s + 1
        if ceil_mode and (o - 1) * s >= h + p:
            o -= 1
        # With dilation > H a window that starts in the padding may jump over the input;
        # PyTorch returns -inf there with an index outside it. Only the first few windows start there.
        if d > h and any((i * s - p) % d >= h for i in range(min(o, -(-p // s)))):
            raise ValueError(f"{layer}: with `dilation` {dilation} and padding {padding}, a window on the "
                             f"input {tuple(size)} holds only padding along its {axis}: every window must "
                             f"reach the input")
        out.append(o)
    return tuple(out)


def _check_divisor(layer, divisor_override):
    if divisor_override is None:
        return None
    if isinstance(divisor_override, bool) or not isinstance(divisor_override, (int, np.integer)):
        raise TypeError(f"{layer}: `divisor_override` must be None or an int; got {_guard.plain(divisor_override)!r}")
    if divisor_override < 1:
        raise ValueError(f"{layer}: `divisor_override` must be None or >= 1; got {divisor_override}")
    return int(divisor_override)


class _Pool2d(Module):
    """A pooling layer over (N, C, H, W) or (C, H, W) input; subclasses name their
    options beyond the kernel, stride and padding in ``_options``, and their
    defaults, shown by ``extra_repr`` only when changed."""

    _defaults: dict = {}

    def _input(self, x):
        """(x as NCHW, unbatched), checked: the windows must fit the padded input."""
        x, unbatched = batched(type(self).__name__, x)
        _output_size(type(self).__name__, x.shape[2:], self.kernel_size, self.stride, self.padding,
                     getattr(self, "dilation", (1, 1)), self.ceil_mode)
        return x, unbatched

    @property
    def _options(self):
        return {name: getattr(self, name) for name in self._defaults}

    def extra_repr(self):
        more = "".join(f", {k}={v}" for k, v in self._options.items() if v != self._defaults[k])
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}{more}"


class MaxPool2d(_Pool2d):
    """Max over kh x kw windows; the backward routes each gradient to the window's
    recorded winner, as PyTorch's MaxPool2d. ``stride`` defaults to
    ``kernel_size``; ``padding`` (at most half the kernel) counts as -inf;
    ``dilation`` spaces the window's taps (dh, dw) apart; ``ceil_mode`` rounds
    the output size up, OH = ceil((H + 2*ph - dh*(kh-1) - 1) / sh) + 1, but a
    last window that would start in the bottom padding is dropped. Ties go to
    the first maximum in row-major window order; NaN propagates.

    >>> MaxPool2d(3, stride=2, ceil_mode=True)(np.ones((1, 3, 8, 8), np.float32)).shape
    (1, 3, 4, 4)
    """

    _defaults = {"dilation": (1, 1), "ceil_mode": False}

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        (self.kernel_size, self.stride, self.padding, self.dilation,
         self.ceil_mode) = _pool_args("MaxPool2d", kernel_size, stride, padding, dilation, ceil_mode)
        self._cache = self.output = None

    def forward(self, x):
        x, unbatched = self._input(x)
        y, argmax = kernel("maxpool2d_forward")(x, self.kernel_size, self.stride, self.padding, **self._options)
        self._cache = (x.shape, argmax, unbatched)
        self.output = y[0] if unbatched else y  # Sequential's ReLU -> MaxPool2d backward reads it
        return self.output

    @property
    def is_2x2(self):
        """A plain 2x2 window at stride 2: no padding, no dilation, no ceil_mode
        (what Conv2d.forward_maxpool computes)."""
        return (self.kernel_size == (2, 2) and self.stride == (2, 2) and self.padding == (0, 0)
                and self._options == self._defaults)

    def adopt_output(self, y, argmax, x_shape, unbatched):
        """Take (y, argmax) of this pool on an input of x_shape, computed by
        the layer before (Conv2d.forward_maxpool), as this layer's forward:
        kept for the backward; returns y (without its batch axis if unbatched)."""
        self._cache = (x_shape, argmax, unbatched)
        self.output = y[0] if unbatched else y
        return self.output

    def backward(self, dy):
        x_shape, argmax, unbatched = self._cache
        dy = check_input("MaxPool2d.backward", dy, (3,) if unbatched else (4,), "dy")
        dy = dy[None] if unbatched else dy
        dx = kernel("maxpool2d_backward")(dy, argmax, x_shape, self.kernel_size, self.stride, self.padding,
                                          **self._options)
        return dx[0] if unbatched else dx


class AvgPool2d(_Pool2d):
    """Mean over kh x kw windows; the backward spreads each gradient evenly
    over its window, as PyTorch's AvgPool2d. ``stride`` defaults to
    ``kernel_size``; ``padding`` (at most half the kernel) is zeros;
    ``ceil_mode`` rounds the output size up as MaxPool2d's. The divisor is
    ``divisor_override`` if given; else with ``count_include_pad`` the
    window's size within the padded input (kh * kw, less where a ceil_mode
    window runs past the padding); else its count of real elements.
    Input (N, C, H, W) or (C, H, W); OH = (H + 2*ph - kh) // sh + 1.

    >>> AvgPool2d(2)(np.ones((1, 3, 8, 8), np.float32)).shape
    (1, 3, 4, 4)
    """

    _defaults = {"ceil_mode": False, "count_include_pad": True, "divisor_override": None}

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__()
        self.kernel_size, self.stride, self.padding, _, self.ceil_mode = _pool_args(
            "AvgPool2d", kernel_size, stride, padding, 1, ceil_mode)
        self.count_include_pad = check_flag("AvgPool2d", "count_include_pad", count_include_pad)
        self.divisor_override = _check_divisor("AvgPool2d", divisor_override)
        self._cache = None

    def forward(self, x):
        x, unbatched = self._input(x)
        y = kernel("avgpool2d_forward")(x, self.kernel_size, self.stride, self.padding, **self._options)
        self._cache = (x.shape, y.shape, unbatched)
        return y[0] if unbatched else y

    def backward(self, dy):
        x_shape, y_shape, unbatched = self._cache
        dy = check_grad("AvgPool2d", dy, y_shape[1:] if unbatched else y_shape)
        dy = dy[None] if unbatched else dy
        dx = kernel("avgpool2d_backward")(dy, x_shape, self.kernel_size, self.stride, self.padding,
                                          **self._options)
        return dx[0] if unbatched else dx


class _AdaptivePool2d(Module):
    """Pools (N, C, H, W) or (C, H, W) input to a fixed ``output_size`` (an int
    or an (OH, OW) pair, any size >= 1) whatever H and W are: output cell
    (i, j) pools rows [floor(i H / OH), ceil((i + 1) H / OH)) and the columns
    likewise, as PyTorch (windows may differ in size and overlap)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = check_pair(type(self).__name__, "output_size", output_size, 1)
        self._cache = None

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveAvgPool2d(_AdaptivePool2d):
    """The mean over each adaptive window; ``AdaptiveAvgPool2d(1)`` is the
    global average pool of ResNets. The backward spreads each gradient
    evenly over its window.

    >>> AdaptiveAvgPool2d(1)(np.ones((2, 64, 8, 8), np.float32)).shape
    (2, 64, 1, 1)
    """

    def forward(self, x):
        x, unbatched = batched("AdaptiveAvgPool2d", x)
        y = kernel("adaptive_avgpool2d_forward")(x, self.output_size)
        self._cache = (x.shape, y.shape, unbatched)
        return y[0] if unbatched else y

    def backward(self, dy):
        x_shape, y_shape, unbatched = self._cache
        dy = check_grad("AdaptiveAvgPool2d", dy, y_shape[1:] if unbatched else y_shape)
        dx = kernel("adaptive_avgpool2d_backward")(dy[None] if unbatched else dy, x_shape)
        return dx[0] if unbatched else dx


class AdaptiveMaxPool2d(_AdaptivePool2d):
    """The maximum over each adaptive window (ties: the first in row-major
    order; NaN wins); the backward routes each gradient to its window's winner.
    ``indices`` holds the winners' positions in their H x W planes after a
    forward, as PyTorch's ``return_indices``."""

    def forward(self, x):
        x, unbatched = batched("AdaptiveMaxPool2d", x)
        y, argmax = kernel("adaptive_maxpool2d_forward")(x, self.output_size)
        self._cache = (x.shape, argmax, unbatched)
        return y[0] if unbatched else y

    @property
    def indices(self):
        return None if self._cache is None else self._cache[1][0] if self._cache[2] else self._cache[1]

    def backward(self, dy):
        x_shape, argmax, unbatched = self._cache
        dy = check_grad("AdaptiveMaxPool2d", dy, argmax.shape[1:] if unbatched else argmax.shape)
        dx = kernel("adaptive_maxpool2d_backward")(dy[None] if unbatched else dy, argmax, x_shape)
        return dx[0] if unbatched else dx
