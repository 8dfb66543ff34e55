"""Layers, containers, losses, initialization and gradient checks: the network side of fastconv.

Every public name here is also at the top level (``fc.Conv2d`` is
``fastconv.nn.Conv2d``). Modules: :mod:`module` (Module, Parameter),
:mod:`containers` (Sequential), :mod:`fusion` (the fused-kernel patterns any
container applies), :mod:`conv`, :mod:`locally_connected`, :mod:`pooling`, :mod:`linear`,
:mod:`activations`, :mod:`normalization`, :mod:`dropout`, :mod:`losses`,
:mod:`init`, :mod:`checks` (the argument checks every layer uses),
:mod:`gradcheck` and :mod:`convert` (FC layers to convolutions).
"""

from fastconv.nn.activations import ELU, LeakyReLU, Maxout, ReLU, Sigmoid, Tanh
from fastconv.nn.containers import Sequential
from fastconv.nn.conv import Conv2d
from fastconv.nn.dropout import Dropout
from fastconv.nn.gradcheck import GradcheckResult, gradcheck
from fastconv.nn.linear import Flatten, Linear
from fastconv.nn.locally_connected import LocallyConnected2d
from fastconv.nn.losses import MulticlassSVM, SoftmaxCrossEntropy, l2_penalty
from fastconv.nn.module import Module, Parameter
from fastconv.nn.normalization import BatchNorm1d, BatchNorm2d
from fastconv.nn.pooling import AvgPool2d, MaxPool2d

__all__ = [
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
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
    "Sequential",
    "Sigmoid",
    "SoftmaxCrossEntropy",
    "Tanh",
    "gradcheck",
    "l2_penalty",
]
