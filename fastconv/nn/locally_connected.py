"""LocallyConnected2d: a convolution whose filters are not shared across positions."""

from __future__ import annotations

import math

import numpy as np

from fastconv.backend import kernel
from fastconv.nn import init
from fastconv.nn.conv import filter_backward
from fastconv.nn.checks import batched, check_int, check_pair, check_weight
from fastconv.nn.module import Module, Parameter


class LocallyConnected2d(Module):
    """A 2-D layer with its own filter and bias at every output position (untied weights).

    y[n, k, i, j] = bias[k, i, j] + sum_{c, u, v} weight[i, j, k, c, u, v] * x_pad[n, c, i*sh + u, j*sw + v]

    Where a convolution assumes that a feature is worth detecting everywhere,
    this layer learns what to look for at each place: for inputs whose
    structure is centred and aligned (faces cropped around the eyes, say), a
    filter for the eye region and another for the mouth. It has OH * OW times
    the parameters of the Conv2d of the same geometry, so the input size is
    fixed when the layer is made: ``input_size`` (H, W).

    ``weight`` (OH, OW, out_channels, in_channels, kh, kw), ``bias``
    (out_channels, OH, OW). Init as Conv2d: He normal (fan_in =
    in_channels*kh*kw), zero bias. Input (N, C, H, W) or (C, H, W).

    >>> layer = LocallyConnected2d(1, 4, kernel_size=3, input_size=(8, 8))
    >>> layer(np.zeros((2, 1, 8, 8), np.float32)).shape, layer.weight.shape
    ((2, 4, 6, 6), (6, 6, 4, 1, 3, 3))
    """

    def __init__(self, in_channels, out_channels, kernel_size, input_size, stride=1, padding=0, bias=True):
        super().__init__()
        name = "LocallyConnected2d"
        self.in_channels = check_int(name, "in_channels", in_channels)
        self.out_channels = check_int(name, "out_channels", out_channels)
        self.kernel_size = check_pair(name, "kernel_size", kernel_size, 1)
        self.input_size = check_pair(name, "input_size", input_size, 1)
        self.stride = check_pair(name, "stride", stride, 1)
        self.padding = check_pair(name, "padding", padding, 0)
        (h, w), (kh, kw), (sh, sw), (ph, pw) = self.input_size, self.kernel_size, self.stride, self.padding
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(f"{name}: kernel size {self.kernel_size} is larger than the padded input "
                             f"{(h + 2 * ph, w + 2 * pw)} (input_size {self.input_size}, padding {self.padding})")
        self.output_size = ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
        shape = check_weight(name, self.output_size + (self.out_channels, self.in_channels) + self.kernel_size)
        self.weight = Parameter(np.empty(shape, np.float32))
        # Each position's filters as a Conv2d's: fan_in = in_channels * kh * kw.
        fan_in = self.in_channels * kh * kw
        self.weight.data[...] = init.generator().normal(0.0, math.sqrt(2.0 / fan_in), shape)
        self.bias = Parameter(np.zeros((self.out_channels,) + self.output_size, np.float32)) if bias else None
        self.needs_input_grad = True
        self._cache = None

    def forward(self, x):
        x, unbatched = batched("LocallyConnected2d", x, self.in_channels)
        if x.shape[2:] != self.input_size:
            raise ValueError(f"LocallyConnected2d: `x` must be {self.input_size[0]}x{self.input_size[1]} "
                             f"(the layer's input_size); got shape {x.shape[1:] if unbatched else x.shape}")
        b = None if self.bias is None else self.bias.data.astype(x.dtype, copy=False)
        y = kernel("locally_connected2d_forward")(x, self.weight.data.astype(x.dtype, copy=False), b,
                                                  self.stride, self.padding)
        self._cache = (x, unbatched)
        return y[0] if unbatched else y

    def backward(self, dy):
        return filter_backward(self, "LocallyConnected2d", kernel("locally_connected2d_backward"), dy,
                               self.stride, self.padding)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"input_size={self.input_size}, stride={self.stride}, padding={self.padding}, "
                f"bias={self.bias is not None}")
