"""Model conversions: fully connected (FC) layers to convolutions, to slide a
classifier over larger images (:func:`linear_to_conv`), and batch norm folded
into the convolution before it, for inference (:func:`fuse_batchnorm`).

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
from fastconv.nn.module import Module, Parameter
from fastconv.nn.normalization import BatchNorm2d


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


def fuse_batchnorm(model: Module) -> Module:
    """A copy of ``model`` for inference, in eval mode, in which every
    BatchNorm2d that directly follows a Conv2d in a Sequential (anywhere in
    the model: a Residual's body too) is folded into that conv:

        weight' = weight * gamma / sqrt(running_var + eps)
        bias'   = (bias - running_mean) * gamma / sqrt(running_var + eps) + beta

    and removed. The outputs are the eval-mode outputs of ``model`` within
    float32 rounding; one layer fewer runs, and a Conv2d then followed by a
    ReLU fuses with it. The other children keep their names (a Sequential
    of Conv2d, BatchNorm2d, ReLU keeps "0" and "2"), so the state_dict loses
    only the batch norms' keys and gains the convs' biases. A BatchNorm2d
    without running statistics (``track_running_stats=False``) normalizes
    by each batch's own and is left as it is. ``model`` is not changed, and
    ``eval()`` never folds by itself.
    """
    if not isinstance(model, Module):
        raise TypeError(f"fuse_batchnorm: `model` must be a Module; got {type(model).__name__}")
    fused = copy.deepcopy(model).eval()
    for seq in [m for m in fused.modules() if isinstance(m, Sequential)]:
        names = list(seq._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = seq._modules.get(first), seq._modules.get(second)
            if type(conv) is Conv2d and type(bn) is BatchNorm2d and bn.track_running_stats:
                _fold(conv, bn)
                del seq._modules[second]
                object.__delattr__(seq, second)
    return fused


def _fold(conv: Conv2d, bn: BatchNorm2d) -> None:
    """conv becomes conv followed by bn in eval mode (in float64, then rounded once)."""
    k = conv.out_channels
    gamma = bn.weight.data.astype(np.float64) if bn.weight is not None else np.ones(k)
    beta = bn.bias.data.astype(np.float64) if bn.bias is not None else np.zeros(k)
    scale = gamma / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    bias = conv.bias.data.astype(np.float64) if conv.bias is not None else np.zeros(k)
    conv.weight.data[...] = conv.weight.data * scale.reshape(-1, 1, 1, 1)
    conv.bias = Parameter((bias - bn.running_mean) * scale + beta)
