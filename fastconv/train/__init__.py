"""Training: the :class:`Trainer` and its parts.

:mod:`trainer` (the loop), :mod:`early_stopping`, :mod:`stats` (per-layer
statistics), :mod:`metrics`, :mod:`checkpoint` (atomic safetensors
checkpoints), :mod:`optim`, :mod:`schedules` and :mod:`distributed` (data
parallelism over MPI). The models the command line trains are in
:mod:`fastconv.models`.
"""

from fastconv.train.early_stopping import EarlyStopping
from fastconv.train.metrics import confusion_matrix
from fastconv.train.optim import SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop
from fastconv.train.schedules import (CosineAnnealingLR, ExponentialLR, InverseTimeLR, LRScheduler,
                                      ReduceLROnPlateau, StepLR)
from fastconv.train.trainer import Trainer, TrainingDiverged

__all__ = ["Adagrad", "Adam", "AdamW", "CosineAnnealingLR", "EarlyStopping", "ExponentialLR", "InverseTimeLR",
           "LRScheduler", "Optimizer", "RMSprop", "ReduceLROnPlateau", "SGD", "StepLR", "Trainer",
           "TrainingDiverged", "confusion_matrix"]
