"""Converting fully connected (FC) layers to convolutions, to slide a classifier over larger images.

A Linear that looks at a C x H x W volume (after a Flatten) is the same as a
Conv2d with an H x W kernel and no padding; a Linear after that is a 1 x 1
convolution. The converted network gives the same scores on the original
input size, as an (N, classes, 1, 1) map, and slides over a larger image in
one forward pass, giving an (N, classes, OH, OW) map of scores: the same as
evaluating the original network at every stride of its receptive field.
"""

from __future__ import annotations

import copy

import numpy as np

from fastconv.nn.conv import Conv2d
from fastconv.nn.linear import Flatten, Linear
from fastconv.nn.containers import Sequential
from fastconv.nn.module import Module


def linear_to_conv(model: Sequential, input_shape) -> Sequential:
    """Return an all-convolutional copy of ``model`` for inputs of ``input_shape`` (C, H, W).

    ``model`` is a :class:`Sequential` whose Linear layers follow a Flatten
    (or another converted Linear); other layers are copied unchanged.

    >>> conv_net = linear_to_conv(model, (1, 28, 28))
    >>> conv_net(x).shape          # x of shape (N, 1, 28, 28)
    (N, 10, 1, 1)
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"linear_to_conv: `model` must be a Sequential; got {type(model).__name__}")
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"linear_to_conv: `input_shape` must be (C, H, W) with positive sizes; got {input_shape!r}")
    y = np.zeros((1,) + shape, np.float32)  # what the converted layers so far output
    layers: list[Module] = []
    for i, layer in enumerate(model):
        if isinstance(layer, Flatten):
            continue  # the Linear after it reads the unflattened volume instead
        if isinstance(layer, Linear):
            volume = y.shape[1:]
            if y.ndim != 4 or int(np.prod(volume)) != layer.in_features:
                raise ValueError(
                    f"linear_to_conv: layer {i} (Linear with {layer.in_features} inputs) follows an "
                    f"output of shape {volume}, not a (C, H, W) volume of {layer.in_features} values")
            new = Conv2d(volume[0], layer.out_features, volume[1:], bias=layer.bias is not None)
            new.weight.data[...] = layer.weight.data.reshape(new.weight.data.shape)
            if layer.bias is not None:
                new.bias.data[...] = layer.bias.data
        else:
            new = copy.deepcopy(layer)
        layers.append(new)
        y = new(y)
    return Sequential(*layers)
