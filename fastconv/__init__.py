"""fastconv: train convolutional networks on the CPU at native speed.

>>> import fastconv as fc
>>> model = fc.Sequential(fc.Conv2d(1, 8, 5, padding=2), fc.ReLU(), fc.MaxPool2d(2),
...                       fc.Flatten(), fc.Linear(8 * 14 * 14, 10))
"""

from fastconv import _kernels, backend, data, models, nn, tools, train
from fastconv._kernels import (get_conv_algorithm, get_isa, get_num_threads, set_conv_algorithm, set_isa,
                               set_num_threads, supported_isas)
from fastconv.precision import autocast, get_autocast_dtype
from fastconv.backend import BackendMismatchError, get_backend, set_backend
from fastconv.nn import (ELU, AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Concat,
                         Conv2d, Dropout, Flatten, GradcheckResult, LeakyReLU, Linear, LocallyConnected2d, MaxPool2d,
                         Maxout, Module, MulticlassSVM, Parameter, ReLU, Residual, Sequential, Sigmoid,
                         SoftmaxCrossEntropy, Tanh, convert, fuse_batchnorm, gradcheck, init, l2_penalty)
from fastconv.nn.init import manual_seed
from fastconv.tools import plot, search
from fastconv.tools.info import conv_plan, info
from fastconv.train import (SGD, Adagrad, Adam, AdamW, CosineAnnealingLR, EarlyStopping, ExponentialLR,
                            InverseTimeLR, LRScheduler, Optimizer, ReduceLROnPlateau, RMSprop, StepLR, Trainer,
                            TrainingDiverged, checkpoint)


def _check_environment():
    # The modules that read FASTCONV_ISA and FASTCONV_BACKEND only report a bad value, and
    # it is raised here: the import fails with one short ValueError, and the fastconv
    # command, whose main() runs only after this import, prints it as one line (exit 2).
    problems = [p for p in (_kernels._environment_problem, backend._environment_problem) if p]
    if problems:
        from fastconv.tools.cli import exit_if_this_command

        exit_if_this_command("; ".join(problems))
        raise ValueError("; ".join(problems))


_check_environment()


# Tools loaded on first use, so that ``import fastconv`` stays quick: name -> module.
_LAZY = {"export_onnx": "fastconv.tools.onnx", "from_torch": "fastconv.tools.from_torch"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
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
    "AdamW",
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "AvgPool2d",
    "BackendMismatchError",
    "BatchNorm1d",
    "BatchNorm2d",
    "Concat",
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
    "LocallyConnected2d",
    "MaxPool2d",
    "Maxout",
    "Module",
    "MulticlassSVM",
    "Optimizer",
    "Parameter",
    "RMSprop",
    "ReLU",
    "ReduceLROnPlateau",
    "Residual",
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
    "export_onnx",
    "from_torch",
    "fuse_batchnorm",
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
    "models",
    "nn",
    "plot",
    "search",
    "set_backend",
    "set_conv_algorithm",
    "set_isa",
    "set_num_threads",
    "supported_isas",
    "tools",
    "train",
]
