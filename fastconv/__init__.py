"""fastconv: train convolutional networks on the CPU at native speed.

>>> import fastconv as fc
>>> model = fc.Sequential(fc.Conv2d(1, 8, 5, padding=2), fc.ReLU(), fc.MaxPool2d(2),
...                       fc.Flatten(), fc.Linear(8 * 14 * 14, 10))
"""

from importlib.metadata import PackageNotFoundError, version as _version

from fastconv import convert, init
from fastconv._kernels import get_isa, get_num_threads, set_isa, set_num_threads, supported_isas
from fastconv.backend import BackendMismatchError, get_backend, set_backend
from fastconv.gradcheck import GradcheckResult, gradcheck
from fastconv.info import info
from fastconv.init import manual_seed
from fastconv.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU
from fastconv.losses import MulticlassSVM, SoftmaxCrossEntropy, l2_penalty
from fastconv.module import Module, Parameter, Sequential
from fastconv.optim import SGD, Adagrad, Adam, Optimizer, RMSprop
from fastconv.schedules import (CosineAnnealingLR, ExponentialLR, InverseTimeLR, LRScheduler,
                                 ReduceLROnPlateau, StepLR)

try:
    __version__ = _version("fastconv")
except PackageNotFoundError:  # running from a source tree without metadata
    __version__ = "0+unknown"

__all__ = [
    "Adagrad",
    "Adam",
    "BackendMismatchError",
    "Conv2d",
    "CosineAnnealingLR",
    "ExponentialLR",
    "Flatten",
    "GradcheckResult",
    "InverseTimeLR",
    "LRScheduler",
    "Linear",
    "MaxPool2d",
    "Module",
    "MulticlassSVM",
    "Optimizer",
    "Parameter",
    "RMSprop",
    "ReLU",
    "ReduceLROnPlateau",
    "SGD",
    "Sequential",
    "SoftmaxCrossEntropy",
    "StepLR",
    "convert",
    "get_backend",
    "get_isa",
    "get_num_threads",
    "gradcheck",
    "info",
    "init",
    "l2_penalty",
    "manual_seed",
    "set_backend",
    "set_isa",
    "set_num_threads",
    "supported_isas",
]
