"""fastconv: train convolutional networks on the CPU at native speed.

>>> import fastconv as fc
>>> model = fc.Sequential(fc.Conv2d(1, 8, 5, padding=2), fc.ReLU(), fc.MaxPool2d(2),
...                       fc.Flatten(), fc.Linear(8 * 14 * 14, 10))
"""

from fastconv import _kernels, backend, checkpoint, convert, data, init, plot, search, train
from fastconv._kernels import (get_conv_algorithm, get_isa, get_num_threads, set_conv_algorithm, set_isa,
                               set_num_threads, supported_isas)
from fastconv.autocast import autocast, get_autocast_dtype
from fastconv.activations import ELU, LeakyReLU, Maxout, Sigmoid, Tanh
from fastconv.backend import BackendMismatchError, get_backend, set_backend
from fastconv.gradcheck import GradcheckResult, gradcheck
from fastconv.dropout import Dropout
from fastconv.info import conv_plan, info
from fastconv.init import manual_seed
from fastconv.layers import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU
from fastconv.losses import MulticlassSVM, SoftmaxCrossEntropy, l2_penalty
from fastconv.containers import Sequential
from fastconv.module import Module, Parameter
from fastconv.normalization import BatchNorm1d, BatchNorm2d
from fastconv.optim import SGD, Adagrad, Adam, Optimizer, RMSprop
from fastconv.schedules import (CosineAnnealingLR, ExponentialLR, InverseTimeLR, LRScheduler,
                                 ReduceLROnPlateau, StepLR)
from fastconv.train import EarlyStopping, Trainer, TrainingDiverged


def _check_environment():
    # The modules that read FASTCONV_ISA and FASTCONV_BACKEND only report a bad value, and
    # it is raised here: the import fails with one short ValueError, and the fastconv
    # command, whose main() runs only after this import, prints it as one line (exit 2).
    problems = [p for p in (_kernels._environment_problem, backend._environment_problem) if p]
    if problems:
        from fastconv.cli import exit_if_this_command

        exit_if_this_command("; ".join(problems))
        raise ValueError("; ".join(problems))


_check_environment()


def __getattr__(name):
    # __version__ is read from the installed metadata on first use: importlib.metadata
    # costs more to import than the rest of fastconv together (see bench/bench_import.py).
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("fastconv")
        except PackageNotFoundError:  # running from a source tree without metadata
            return "0+unknown"
    raise AttributeError(f"module 'fastconv' has no attribute {name!r}")

__all__ = [
    "Adagrad",
    "Adam",
    "AvgPool2d",
    "BackendMismatchError",
    "BatchNorm1d",
    "BatchNorm2d",
    "Conv2d",
    "CosineAnnealingLR",
    "Dropout",
    "ELU",
    "EarlyStopping",
    "ExponentialLR",
    "Flatten",
    "GradcheckResult",
    "InverseTimeLR",
    "LRScheduler",
    "LeakyReLU",
    "Linear",
    "MaxPool2d",
    "Maxout",
    "Module",
    "MulticlassSVM",
    "Optimizer",
    "Parameter",
    "RMSprop",
    "ReLU",
    "ReduceLROnPlateau",
    "SGD",
    "Sequential",
    "Sigmoid",
    "SoftmaxCrossEntropy",
    "StepLR",
    "Tanh",
    "Trainer",
    "TrainingDiverged",
    "autocast",
    "checkpoint",
    "conv_plan",
    "convert",
    "data",
    "get_autocast_dtype",
    "get_backend",
    "get_conv_algorithm",
    "get_isa",
    "get_num_threads",
    "gradcheck",
    "info",
    "init",
    "l2_penalty",
    "manual_seed",
    "plot",
    "search",
    "set_backend",
    "set_conv_algorithm",
    "set_isa",
    "set_num_threads",
    "supported_isas",
    "train",
]
