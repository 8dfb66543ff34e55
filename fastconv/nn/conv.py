"""Conv2d: 2-D convolution, one kernel call per direction through :func:`fastconv.backend.kernel`
(the native planner chooses the algorithm: see ``fc.conv_plan``)."""

from __future__ import annotations

import numpy as np

from fastconv.backend import kernel
from fastconv.nn import init
from fastconv.nn.checks import batched, check_input, check_int, check_pair, check_weight
from fastconv.nn.module import Module, Parameter


def filter_backward(layer, name, conv, dy, *args):
    """The backward of a layer whose forward cached (x, unbatched) and whose kernel
    `conv(x, W, dy, *args, need_dx)` gives (dx, dW, db): adds dW and db to the
    parameters' gradients, returns dx (None when nothing before needs it)."""
    x, unbatched = layer._cache
    dy = check_input(f"{name}.backward", dy, (3,) if unbatched else (4,), "dy")
    dy = dy[None] if unbatched else dy
    dx, dw, db = conv(x, layer.weight.data.astype(x.dtype, copy=False), dy, *args,
                      need_dx=bool(layer.needs_input_grad))
    layer.weight.grad += dw
    if layer.bias is not None:
        layer.bias.grad += db
    if dx is None:
        return None
    return dx[0] if unbatched else dx


def _conv_padding(padding, kernel_size, stride, dilation):
    """PyTorch's padding argument: ints, or "valid" (none) and "same" (output
    size = input size, stride 1 only, as PyTorch). "same" pads each axis by
    dilation*(k-1) in all, half before and the rest after, as PyTorch does:
    an even kernel at odd dilation gets one more row and column after, which
    the kernels take as such (no copy of the input). Returns an (h, w) pair,
    or ((top, bottom), (left, right)) when the sides differ."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        if stride != (1, 1):
            raise ValueError(f"Conv2d: padding='same' needs stride 1 (as PyTorch); got stride {stride}")
        total = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
        sides = tuple((t // 2, t - t // 2) for t in total)
        return sides if any(a != b for a, b in sides) else (sides[0][0], sides[1][0])
    if isinstance(padding, str):
        raise ValueError(f"Conv2d: `padding` must be an int, a pair, 'valid' or 'same'; got {padding!r}")
    return check_pair("Conv2d", "padding", padding, 0)


def _sides(padding):
    """((top, bottom), (left, right)) of a layer's padding."""
    ph, pw = padding
    return (ph, ph) if isinstance(ph, int) else ph, (pw, pw) if isinstance(pw, int) else pw


class Conv2d(Module):
    """2-D convolution (cross-correlation, as PyTorch) with zero padding.

    y[n, k, i, j] = bias[k] + sum_{c, u, v} weight[k, c, u, v] * x_pad[n, g*C_g + c, i*sh + u*dh, j*sw + v*dw]

    with g = k // (out_channels / groups), C_g = in_channels / groups.
    Input (N, C_in, H, W) or (C_in, H, W); output (N, C_out, OH, OW) with
    OH = (H + 2*ph - dh*(kh-1) - 1) // sh + 1 (OW likewise). ``weight`` has
    shape (out_channels, in_channels / groups, kh, kw), as PyTorch. ``padding``
    is an int, an (h, w) pair, "valid" or "same" (stride 1; an even kernel gets
    the extra row and column after, as PyTorch). ``dilation`` spaces the taps;
    ``groups`` splits the channels into groups convolved separately
    (``groups == in_channels`` is the depthwise convolution, which has its own
    algorithm). Default init: He normal weights (std sqrt(2 / fan_in), fan_in =
    in_channels / groups * kh * kw), zero bias.

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

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True):
        super().__init__()
        name = "Conv2d"
        self.in_channels = check_int(name, "in_channels", in_channels)
        self.out_channels = check_int(name, "out_channels", out_channels)
        self.kernel_size = check_pair(name, "kernel_size", kernel_size, 1)
        self.stride = check_pair(name, "stride", stride, 1)
        self.dilation = check_pair(name, "dilation", dilation, 1)
        self.groups = check_int(name, "groups", groups)
        for what, channels in (("in_channels", self.in_channels), ("out_channels", self.out_channels)):
            if channels % self.groups:
                raise ValueError(f"Conv2d: `groups` must divide `{what}`; got groups={self.groups}, "
                                 f"{what}={channels}")
        self.padding = _conv_padding(padding, self.kernel_size, self.stride, self.dilation)
        shape = check_weight(name, (self.out_channels, self.in_channels // self.groups) + self.kernel_size)
        self.weight = Parameter(np.empty(shape, np.float32))
        init.he_normal_(self.weight)
        self.bias = Parameter(np.zeros(self.out_channels, np.float32)) if bias else None
        self.needs_input_grad = True
        self._cache = None

    def _inputs(self, x):
        """(x batched, unbatched, weight, bias) for a conv kernel; checks x."""
        x, unbatched = batched("Conv2d", x, self.in_channels)
        (top, bottom), (left, right) = _sides(self.padding)
        (h, w), span = x.shape[2:], self._span()
        if h + top + bottom < span[0] or w + left + right < span[1]:
            what = "kernel size" if span == self.kernel_size else "dilated kernel size"
            raise ValueError(
                f"Conv2d: {what} {span} is larger than the padded input "
                f"{(h + top + bottom, w + left + right)} (input {(h, w)}, padding {self.padding})")
        b = self.bias.data if self.bias is not None else None
        return (x, unbatched, self.weight.data.astype(x.dtype, copy=False),
                None if b is None else b.astype(x.dtype, copy=False))

    def _span(self):
        """The rows and columns one output's taps cover."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))

    @property
    def plain(self):
        """No dilation, no groups, the same padding on both sides: the conv2d_* kernels'
        case (which conv2d_maxpool_forward, fused with a pool, needs)."""
        return self.dilation == (1, 1) and self.groups == 1 and isinstance(self.padding[0], int)

    def output_size(self, h, w):
        """(OH, OW) for an input of h x w."""
        (sh, sw), ((top, bottom), (left, right)), (eh, ew) = self.stride, _sides(self.padding), self._span()
        return (h + top + bottom - eh) // sh + 1, (w + left + right - ew) // sw + 1

    def _kernel(self, direction):
        """The kernel and its arguments after the arrays: conv2d_* for a plain conv, else conv2d_ex_*."""
        if self.plain:
            return kernel(f"conv2d_{direction}"), (self.stride, self.padding)
        return kernel(f"conv2d_ex_{direction}"), (self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x, relu=False):
        """y = conv(x) + bias; max(y, 0) in the same pass when ``relu``."""
        x, unbatched, weight, bias = self._inputs(x)
        conv, args = self._kernel("forward")
        y = conv(x, weight, bias, *args, relu)
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
        conv, args = self._kernel("backward")
        return filter_backward(self, "Conv2d", conv, dy, *args)

    def extra_repr(self):
        more = "".join(f", {k}={v}" for k, v, default in (("dilation", self.dilation, (1, 1)),
                                                           ("groups", self.groups, 1)) if v != default)
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}{more}, bias={self.bias is not None}")
