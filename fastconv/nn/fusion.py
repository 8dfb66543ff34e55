"""Fusion: runs of consecutive layers that execute as fewer kernel calls.

Each pattern is declared once below, as a row of ``FORWARD`` or ``BACKWARD``:
the exact layer classes it matches (a subclass may override forward, so it is
never fused), when it applies, and how it runs, through the layers' public
methods. Any container runs its children through :func:`forward` and
:func:`backward`, so every container fuses the same way; a new fusion is one
function and one row here.

Fused and unfused runs give the same bits (tests/test_fusion.py). While a
container is observed (:func:`observe`, which the Trainer uses to record each
layer's output and gradient), it runs its children one by one, so that every
intermediate array exists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterable, Sequence

from fastconv.backend import get_backend
from fastconv.nn.activations import ReLU
from fastconv.nn.containers import Residual
from fastconv.nn.conv import Conv2d
from fastconv.nn.normalization import BatchNorm1d, BatchNorm2d
from fastconv.nn.pooling import MaxPool2d
from fastconv.nn.module import Module


@dataclasses.dataclass(frozen=True)
class Pattern:
    """Consecutive children of the classes ``layers`` (exactly those classes)
    run by ``run(mods, array)`` where ``applies(mods, array)``."""

    name: str
    layers: tuple[type, ...]
    applies: Callable[[Sequence[Module], object], bool]
    run: Callable[[Sequence[Module], object], object]

    def matches(self, mods: Sequence[Module]) -> bool:
        return len(mods) == len(self.layers) and all(type(m) is c for m, c in zip(mods, self.layers))


# -- forward ---------------------------------------------------------------------------------------

def _pool_fits(mods, x) -> bool:
    """conv2d_maxpool_forward's conditions: a 2x2 stride-2 pool, a plain conv (no
    dilation or groups, even padding), the native
    backend (the check backend compares argmax exactly, which the twin's own
    rounding may flip on near ties) and a conv output of at least 2x2."""
    conv, _, pool = mods
    shape = getattr(x, "shape", ())
    return (pool.is_2x2 and conv.plain and get_backend() == "native" and len(shape) in (3, 4)
            and min(conv.output_size(*shape[-2:])) >= 2)


def _conv_relu_pool(mods, x):
    """One kernel: the full-size activations are never stored where the conv
    runs as Winograd (each 2x2 output tile is a pool window). The ReLU keeps
    nothing; the backward masks the pooled gradient (relu_maxpool2d_backward)."""
    conv, relu, pool = mods
    y, argmax, shape, unbatched = conv.forward_maxpool(x, relu=True)
    relu.adopt_output(None)
    return pool.adopt_output(y, argmax, shape, unbatched)


def _conv_relu(mods, x):
    """One pass over the activations instead of two; the ReLU adopts the rectified output."""
    conv, relu = mods
    return relu.adopt_output(conv.forward(x, relu=True))


def _residual_relu(mods, x):
    """The ReLU in the residual add's pass (one pass over the block's output
    instead of two); the ReLU adopts the rectified sum."""
    residual, relu = mods
    return relu.adopt_output(residual.forward(x, relu=True))


def _batchnorm_relu(mods, x):
    """The ReLU in the batch norm's normalize pass (conv -> bn -> relu: one pass
    over the activations instead of two); the ReLU adopts the rectified output.
    The same in eval mode (running statistics)."""
    bn, relu = mods
    return relu.adopt_output(bn.forward(x, relu=True))


def _always(mods, array) -> bool:
    return True


# -- backward --------------------------------------------------------------------------------------

def _pool_ran(mods, dy) -> bool:
    return mods[1].output is not None


def _relu_pool_backward(mods, dy):
    """ReLU's mask applied to the pooled gradient, before the pool spreads it
    (see ReLU.mask): a quarter of the work for a 2x2 pool, the same bits."""
    relu, pool = mods
    return pool.backward(relu.mask(dy, pool.output))


def _relu_kept_output(mods, dy) -> bool:
    return mods[1].output is not None


def _batchnorm_relu_backward(mods, dy):
    """The ReLU's mask applied to dy as the batch norm's backward reads it (no
    masked copy of dy written and read back); its output, however the forward
    ran (fused or not), is the mask. The same bits as the two backwards."""
    bn, relu = mods
    return bn.backward(dy, relu_y=relu.output)


# Tried in order at each child; the first that matches and applies runs.
FORWARD = (
    Pattern("conv2d_relu_maxpool2d", (Conv2d, ReLU, MaxPool2d), _pool_fits, _conv_relu_pool),
    Pattern("conv2d_relu", (Conv2d, ReLU), _always, _conv_relu),
    Pattern("residual_relu", (Residual, ReLU), _always, _residual_relu),
    Pattern("batchnorm2d_relu", (BatchNorm2d, ReLU), _always, _batchnorm_relu),
    Pattern("batchnorm1d_relu", (BatchNorm1d, ReLU), _always, _batchnorm_relu),
)
BACKWARD = (
    Pattern("relu_maxpool2d_backward", (ReLU, MaxPool2d), _pool_ran, _relu_pool_backward),
    Pattern("batchnorm2d_relu_backward", (BatchNorm2d, ReLU), _relu_kept_output, _batchnorm_relu_backward),
    Pattern("batchnorm1d_relu_backward", (BatchNorm1d, ReLU), _relu_kept_output, _batchnorm_relu_backward),
)


# -- running children ------------------------------------------------------------------------------

_observed = threading.local()
Observer = Callable[[str, Module, object], None]


@contextlib.contextmanager
def observe(container: Module, record: Observer):
    """Within the block, ``container`` runs its children unfused and calls
    ``record(name, child, array)`` with each child's output in the forward
    and with the gradient at each child's output in the backward."""
    previous = getattr(_observed, "value", None)
    _observed.value = (container, record)
    try:
        yield
    finally:
        _observed.value = previous


def _observer(container) -> Observer | None:
    value = getattr(_observed, "value", None)
    return value[1] if value is not None and value[0] is container else None


def forward(container: Module, children: Iterable[tuple[str, Module]], x):
    """Run ``children`` (name, module) in order on x, fused where a FORWARD pattern applies."""
    named = list(children)
    record = _observer(container)
    i = 0
    while i < len(named):
        mods = [m for _, m in named[i:]]
        pattern = None if record else next(
            (p for p in FORWARD if p.matches(mods[:len(p.layers)]) and p.applies(mods[:len(p.layers)], x)), None)
        if pattern is not None:
            x = pattern.run(mods[:len(pattern.layers)], x)
            i += len(pattern.layers)
        else:
            x = mods[0](x)
            if record:
                record(named[i][0], mods[0], x)
            i += 1
    return x


def backward(container: Module, children: Iterable[tuple[str, Module]], dy):
    """Backpropagate dy through ``children`` in reverse, fused where a BACKWARD pattern applies."""
    named = list(children)
    record = _observer(container)
    i = len(named)
    while i > 0:
        pattern = None
        if not record:
            for p in BACKWARD:
                mods = [m for _, m in named[max(0, i - len(p.layers)):i]]
                if p.matches(mods) and p.applies(mods, dy):
                    pattern = p
                    break
        if pattern is not None:
            dy = pattern.run(mods, dy)
            i -= len(pattern.layers)
        else:
            if record:
                record(named[i - 1][0], named[i - 1][1], dy)
            dy = named[i - 1][1].backward(dy)
            i -= 1
    return dy
