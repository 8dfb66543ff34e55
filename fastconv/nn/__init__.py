"""Layers, containers, losses, initialization and gradient checks: the network side of fastconv.

Every public name here is also at the top level (``fc.Conv2d`` is
``fastconv.nn.Conv2d``). Modules: :mod:`module` (Module, Parameter),
:mod:`containers` (Sequential, Residual, Concat), :mod:`fusion` (the fused-kernel patterns any
container applies), :mod:`conv`, :mod:`locally_connected`, :mod:`pooling`, :mod:`linear`,
:mod:`activations`, :mod:`normalization`, :mod:`dropout`, :mod:`losses`,
:mod:`init`, :mod:`checks` (the argument checks every layer uses),
:mod:`gradcheck` and :mod:`convert` (FC layers to convolutions, batch norm folded into convs).
"""

from fastconv.nn.activations import ELU, LeakyReLU, Maxout, ReLU, Sigmoid, Tanh
from fastconv.nn.containers import Concat, Residual, Sequential
from fastconv.nn.conv import Conv2d
from fastconv.nn.convert import fuse_batchnorm
from fastconv.nn.dropout import Dropout
from fastconv.nn.gradcheck import GradcheckResult, gradcheck
from fastconv.nn.linear import Flatten, Linear
from fastconv.nn.locally_connected import LocallyConnected2d
from fastconv.nn.losses import MulticlassSVM, SoftmaxCrossEntropy, l2_penalty
from fastconv.nn.module import Module, Parameter
from fastconv.nn.normalization import BatchNorm1d, BatchNorm2d
from fastconv.nn.pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d

__all__ = [
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "Concat",
    "Conv2d",
    "Dropout",
    "ELU",
    "Flatten",
    "GradcheckResult",
    "LeakyReLU",
    "Linear",
    "LocallyConnected2d",
    "MaxPool2d",
    "Maxout",
    "Module",
    "MulticlassSVM",
    "Parameter",
    "ReLU",
    "Residual",
    "Sequential",
    "Sigmoid",
    "SoftmaxCrossEntropy",
    "Tanh",
    "fuse_batchnorm",
    "gradcheck",
    "l2_penalty",
]
