"""Pooling: MaxPool2d (argmax routing of the gradient), AvgPool2d and the adaptive pools
(AdaptiveAvgPool2d, AdaptiveMaxPool2d), with PyTorch's semantics."""

from __future__ import annotations

from fastconv.backend import kernel
from fastconv.nn.checks import batched, check_grad, check_input, check_pair
from fastconv.nn.module import Module


def _pool_args(layer, kernel_size, stride, padding):
    """A pooling layer's (kernel, stride, padding) pairs: stride defaults to the
    kernel, padding is at most half the kernel (as PyTorch requires)."""
    kernel = check_pair(layer, "kernel_size", kernel_size, 1)
    stride = kernel if stride is None else check_pair(layer, "stride", stride, 1)
    padding = check_pair(layer, "padding", padding, 0)
    if 2 * padding[0] > kernel[0] or 2 * padding[1] > kernel[1]:
        raise ValueError(f"{layer}: `padding` must be at most half of `kernel_size` {kernel}; got {padding}")
    return kernel, stride, padding


def _pool_input(layer, x, kernel, padding):
    """(x as NCHW, unbatched) for a pooling layer, checking the window fits the padded input."""
    x, unbatched = batched(layer, x)
    (kh, kw), (ph, pw), (h, w) = kernel, padding, x.shape[2:]
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise ValueError(
            f"{layer}: kernel size {kernel} is larger than the padded input "
            f"{(h + 2 * ph, w + 2 * pw)} (input {(h, w)}, padding {padding})")
    return x, unbatched


class MaxPool2d(Module):
    """Max over kh x kw windows; the backward routes each gradient to the window's
    recorded winner. ``stride`` defaults to ``kernel_size``; ``padding`` (at most
    half the kernel) counts as -inf. Ties go to the first maximum in row-major
    window order; NaN propagates; as PyTorch.
    """

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = _pool_args("MaxPool2d", kernel_size, stride, padding)
        self._cache = self.output = None

    def forward(self, x):
        x, unbatched = _pool_input("MaxPool2d", x, self.kernel_size, self.padding)
        y, argmax = kernel("maxpool2d_forward")(x, self.kernel_size, self.stride, self.padding)
        self._cache = (x.shape, argmax, unbatched)
        self.output = y[0] if unbatched else y  # Sequential's ReLU -> MaxPool2d backward reads it
        return self.output

    @property
    def is_2x2(self):
        """A 2x2 window at stride 2 without padding (what Conv2d.forward_maxpool computes)."""
        return self.kernel_size == (2, 2) and self.stride == (2, 2) and self.padding == (0, 0)

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
        dx = kernel("maxpool2d_backward")(dy, argmax, x_shape, self.kernel_size, self.stride, self.padding)
        return dx[0] if unbatched else dx

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    """Mean over kh x kw windows; the backward spreads each gradient evenly
    over its window. ``stride`` defaults to ``kernel_size``; zero ``padding``
    (at most half the kernel) counts in the divisor kh * kw. These are
    PyTorch's defaults, count_include_pad=True and ceil_mode=False.
    Input (N, C, H, W) or (C, H, W); OH = (H + 2*ph - kh) // sh + 1.

    >>> AvgPool2d(2)(np.ones((1, 3, 8, 8), np.float32)).shape
    (1, 3, 4, 4)
    """

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = _pool_args("AvgPool2d", kernel_size, stride, padding)
        self._cache = None

    def forward(self, x):
        x, unbatched = _pool_input("AvgPool2d", x, self.kernel_size, self.padding)
        y = kernel("avgpool2d_forward")(x, self.kernel_size, self.stride, self.padding)
        self._cache = (x.shape, y.shape, unbatched)
        return y[0] if unbatched else y

    def backward(self, dy):
        x_shape, y_shape, unbatched = self._cache
        dy = check_grad("AvgPool2d", dy, y_shape[1:] if unbatched else y_shape)
        dy = dy[None] if unbatched else dy
        dx = kernel("avgpool2d_backward")(dy, x_shape, self.kernel_size, self.stride, self.padding)
        return dx[0] if unbatched else dx

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


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
