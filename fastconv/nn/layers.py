"""The core layers: Conv2d, MaxPool2d, AvgPool2d, ReLU, Linear, Flatten.

Each direction is one kernel call through :func:`fastconv.backend.kernel`.
Inputs are float32 NumPy arrays (float64 too under the ``reference``
backend, which gradient checks use); any memory layout is accepted and
made C-contiguous. Conv2d and MaxPool2d also take unbatched (C, H, W)
input, as PyTorch does.
"""

from __future__ import annotations

import zlib

import numpy as np

from fastconv import _guard, init
from fastconv.backend import get_backend, kernel
from fastconv.module import Module, Parameter


def _pair(layer, name, v, minimum):
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (v, v)
    if (not isinstance(v, (tuple, list)) or len(v) != 2
            or any(isinstance(e, bool) or not isinstance(e, (int, np.integer)) for e in v)):
        raise TypeError(f"{layer}: `{name}` must be an int or a pair of ints; got {_guard.plain(v)!r}")
    if min(v) < minimum:
        raise ValueError(f"{layer}: `{name}` must be >= {minimum}; got {tuple(int(e) for e in v)}")
    return int(v[0]), int(v[1])


def _positive_int(layer, name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{layer}: `{name}` must be an int; got {_guard.plain(v)!r}")
    if v < 1:
        raise ValueError(f"{layer}: `{name}` must be >= 1; got {v}")
    return int(v)


def check_size(layer, what, shape, bytes_per_element=4):
    """Refuse, before allocating, arrays of `shape` that need more memory than this process can get."""
    nbytes = bytes_per_element
    for d in shape:
        nbytes *= int(d)
    _guard.check_memory(nbytes, f"{layer}: {what} of shape {_guard.short(tuple(int(d) for d in shape))}")
    return tuple(shape)


def check_weight(layer, shape):
    """check_size for a weight: its float32 data and gradient, and the float64 draw that
    initializes it (numpy's generators make float64), 16 bytes per element at the peak."""
    return check_size(layer, "`weight` (float32 data and gradient, float64 initial draw)", shape, 16)


def check_input(layer, x, ranks, what="x"):
    """Return x as a C-contiguous float array of one of the given ranks, or raise."""
    allowed = (np.float32, np.float64) if get_backend() == "reference" else (np.float32,)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{layer}: `{what}` must be a float32 numpy array; got {type(x).__name__}")
    if x.dtype not in allowed:
        raise TypeError(f"{layer}: `{what}` must be a float32 array; got dtype {x.dtype} with shape {x.shape}")
    if x.ndim not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ValueError(f"{layer}: `{what}` must have rank {want}; got shape {x.shape}")
    if not (x.flags.c_contiguous and x.flags.aligned):  # the copy below must fit, e.g. of a broadcast view
        check_size(layer, f"`{what}` (copied to C order)", x.shape)
    return np.require(x, requirements=("C", "A"))  # copies only views the kernels can't read


def _batched(layer, x, channels=None):
    """(x as NCHW, whether a batch axis was added) for (N, C, H, W) or (C, H, W) input."""
    x = check_input(layer, x, (3, 4))
    unbatched = x.ndim == 3
    if unbatched:
        x = x[None]
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{layer}: `x` must have {channels} channels, shape (N, {channels}, H, W); "
            f"got shape {x.shape[1:] if unbatched else x.shape}")
    return x, unbatched


def _conv_padding(padding, kernel_size, stride):
    """PyTorch's padding argument: ints, or "valid" (none) and "same" (output
    size = input size; stride 1, and odd kernels, since the kernels pad
    symmetrically and PyTorch puts an even kernel's extra row at the end)."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        if stride != (1, 1) or kernel_size[0] % 2 == 0 or kernel_size[1] % 2 == 0:
            raise ValueError(f"Conv2d: padding='same' needs stride 1 and an odd kernel size; "
                             f"got stride {stride}, kernel_size {kernel_size}")
        return (kernel_size[0] // 2, kernel_size[1] // 2)
    if isinstance(padding, str):
        raise ValueError(f"Conv2d: `padding` must be an int, a pair, 'valid' or 'same'; got {padding!r}")
    return _pair("Conv2d", "padding", padding, 0)


class Conv2d(Module):
    """2-D convolution (cross-correlation, as PyTorch) with zero padding.

    y[n, k, i, j] = bias[k] + sum_{c, u, v} weight[k, c, u, v] * x_pad[n, c, i*sh + u, j*sw + v]

    Input (N, C_in, H, W) or (C_in, H, W); output (N, C_out, OH, OW) with
    OH = (H + 2*ph - kh) // sh + 1 (OW likewise). ``weight`` has shape
    (out_channels, in_channels, kh, kw), as PyTorch. ``padding`` is an int, an
    (h, w) pair, "valid" or "same". Default init: He normal weights
    (std sqrt(2 / fan_in), fan_in = in_channels*kh*kw), zero bias.

    ``needs_input_grad`` (default True): when set to False, ``backward``
    skips dL/dx and returns None, as PyTorch does for an input that does not
    require grad. Set it on a network's first layer, whose input gradient
    (the images') nobody reads: ``model[0].needs_input_grad = False``; this
    saves the dx GEMM and col2im. In a ``Sequential``, a Conv2d directly
    followed by a ``ReLU`` computes the ReLU in its own pass (``relu=True``
    of ``forward``); the ReLU then keeps that output for its backward, so
    results and gradients are those of the two layers run one by one.

    >>> conv = Conv2d(3, 16, kernel_size=3, padding=1)
    >>> conv(np.zeros((8, 3, 32, 32), np.float32)).shape
    (8, 16, 32, 32)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        name = "Conv2d"
        self.in_channels = _positive_int(name, "in_channels", in_channels)
        self.out_channels = _positive_int(name, "out_channels", out_channels)
        self.kernel_size = _pair(name, "kernel_size", kernel_size, 1)
        self.stride = _pair(name, "stride", stride, 1)
        self.padding = _conv_padding(padding, self.kernel_size, self.stride)
        shape = check_weight(name, (self.out_channels, self.in_channels) + self.kernel_size)
        self.weight = Parameter(np.empty(shape, np.float32))
        init.he_normal_(self.weight)
        self.bias = Parameter(np.zeros(self.out_channels, np.float32)) if bias else None
        self.needs_input_grad = True
        self._cache = None

    def _inputs(self, x):
        """(x batched, unbatched, weight, bias) for a conv kernel; checks x."""
        x, unbatched = _batched("Conv2d", x, self.in_channels)
        kh, kw = self.kernel_size
        (ph, pw), (h, w) = self.padding, x.shape[2:]
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(
                f"Conv2d: kernel size {self.kernel_size} is larger than the padded input "
                f"{(h + 2 * ph, w + 2 * pw)} (input {(h, w)}, padding {self.padding})")
        b = self.bias.data if self.bias is not None else None
        return (x, unbatched, self.weight.data.astype(x.dtype, copy=False),
                None if b is None else b.astype(x.dtype, copy=False))

    def output_size(self, h, w):
        """(OH, OW) for an input of h x w."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    def forward(self, x, relu=False):
        """y = conv(x) + bias; max(y, 0) in the same pass when ``relu``."""
        x, unbatched, weight, bias = self._inputs(x)
        y = kernel("conv2d_forward")(x, weight, bias, self.stride, self.padding, relu)
        self._cache = (x, unbatched)
        return y[0] if unbatched else y

    def forward_maxpool(self, x, relu=False):
        """The 2x2 stride-2 max-pool of ``forward(x, relu)``, in one kernel
        call that need not store the full-size output: (pooled, argmax,
        the conv output's shape, unbatched), for MaxPool2d.adopt_output. The
        output must be at least 2x2."""
        x, unbatched, weight, bias = self._inputs(x)
        y, argmax = kernel("conv2d_maxpool_forward")(x, weight, bias, self.stride, self.padding,
                                                     relu)
        self._cache = (x, unbatched)
        return y, argmax, (x.shape[0], self.out_channels) + self.output_size(*x.shape[2:]), unbatched

    def backward(self, dy):
        x, unbatched = self._cache
        dy = check_input("Conv2d.backward", dy, (3,) if unbatched else (4,), "dy")
        dy = dy[None] if unbatched else dy
        dx, dw, db = kernel("conv2d_backward")(x, self.weight.data.astype(x.dtype, copy=False), dy,
                                               self.stride, self.padding,
                                               need_dx=bool(self.needs_input_grad))
        self.weight.grad += dw
        if self.bias is not None:
            self.bias.grad += db
        if dx is None:
            return None
        return dx[0] if unbatched else dx

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


class MaxPool2d(Module):
    """Max over kh x kw windows; the backward routes each gradient to the window's
    recorded winner. ``stride`` defaults to ``kernel_size``; ``padding`` (at most
    half the kernel) counts as -inf. Ties go to the first maximum in row-major
    window order; NaN propagates; as PyTorch.
    """

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        name = "MaxPool2d"
        self.kernel_size = _pair(name, "kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else _pair(name, "stride", stride, 1)
        self.padding = _pair(name, "padding", padding, 0)
        if 2 * self.padding[0] > self.kernel_size[0] or 2 * self.padding[1] > self.kernel_size[1]:
            raise ValueError(
                f"MaxPool2d: `padding` must be at most half of `kernel_size` {self.kernel_size}; "
                f"got {self.padding}")
        self._cache = self.output = None

    def forward(self, x):
        x, unbatched = _batched("MaxPool2d", x)
        (kh, kw), (ph, pw), (h, w) = self.kernel_size, self.padding, x.shape[2:]
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(
                f"MaxPool2d: kernel size {self.kernel_size} is larger than the padded input "
                f"{(h + 2 * ph, w + 2 * pw)} (input {(h, w)}, padding {self.padding})")
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


def _fingerprint(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).view(np.uint8))


class Linear(Module):
    """Fully connected: y = x @ weight.T + bias, for x of shape (*, in_features).

    ``weight`` is (out_features, in_features), as PyTorch. Default init: He
    normal weights (std sqrt(2 / in_features)), zero bias; as the last layer
    of a Sequential (the class scores), std CLASSIFIER_GAIN / sqrt(in_features)
    (0.1 / sqrt(in_features)), so that the first softmax loss is about ln(C)
    (see fastconv.init).
    """

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features = _positive_int("Linear", "in_features", in_features)
        self.out_features = _positive_int("Linear", "out_features", out_features)
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


# ---------------------------------------------------------------------------
# helpers shared with the toolbox layers (activations, normalization, dropout)

def check_real(layer, name, v, lo=-np.inf, hi=np.inf):
    """v as a float, or raise: a real number (not a bool), finite, in [lo, hi]."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{layer}: `{name}` must be a real number; got {type(v).__name__} {_guard.plain(v)!r}")
    try:
        f = float(v)
    except OverflowError:  # an int beyond the float range
        f = np.inf
    if not (np.isfinite(f) and lo <= f <= hi):
        bounds = (f" in [{lo:g}, {hi:g}]" if np.isfinite(hi) else f" >= {lo:g}") if np.isfinite(lo) else ""
        raise ValueError(f"{layer}: `{name}` must be a finite number{bounds}; got {_guard.plain(v)!r}")
    return f


def check_grad(layer, dy, shape):
    """dy as a C-contiguous float array of exactly `shape` (the forward output's), or raise."""
    dy = check_input(f"{layer}.backward", dy, (len(shape),), "dy")
    if dy.shape != tuple(shape):
        raise ValueError(f"{layer}.backward: `dy` must have the forward output's shape {tuple(shape)}; got {dy.shape}")
    return dy


def _pool_args(layer, kernel_size, stride, padding):
    """A pooling layer's (kernel, stride, padding) pairs: stride defaults to the
    kernel, padding is at most half the kernel (as PyTorch requires)."""
    kernel = _pair(layer, "kernel_size", kernel_size, 1)
    stride = kernel if stride is None else _pair(layer, "stride", stride, 1)
    padding = _pair(layer, "padding", padding, 0)
    if 2 * padding[0] > kernel[0] or 2 * padding[1] > kernel[1]:
        raise ValueError(f"{layer}: `padding` must be at most half of `kernel_size` {kernel}; got {padding}")
    return kernel, stride, padding


def _pool_input(layer, x, kernel, padding):
    """(x as NCHW, unbatched) for a pooling layer, checking the window fits the padded input."""
    x, unbatched = _batched(layer, x)
    (kh, kw), (ph, pw), (h, w) = kernel, padding, x.shape[2:]
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise ValueError(
            f"{layer}: kernel size {kernel} is larger than the padded input "
            f"{(h + 2 * ph, w + 2 * pw)} (input {(h, w)}, padding {padding})")
    return x, unbatched


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
