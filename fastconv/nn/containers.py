"""Containers: modules made of modules. Sequential runs its children through
:mod:`fastconv.nn.fusion`, so the fused patterns apply inside any of them
(a Residual's body is a Sequential of its own); Residual and Concat run
parallel branches on one input."""

from __future__ import annotations

import numpy as np

from fastconv.backend import kernel
from fastconv.nn.checks import check_input
from fastconv.nn.module import Module


def _check_module(container, what, m):
    if not isinstance(m, Module):
        raise TypeError(f"{container}: {what} must be a Module; got {type(m).__name__}")
    return m


def _add(container, a, b, relu=False, what=("one branch's dx", "the other's")):
    """a + b (then max(., 0) when ``relu``) through the residual-add kernel."""
    a, b = check_input(container, a, range(33), what[0]), check_input(container, b, range(33), what[1])
    if a.shape != b.shape:
        raise ValueError(f"{container}: {what[0]} and {what[1]} must have the same shape to be added; "
                         f"got {a.shape} and {b.shape}")
    return kernel("add_relu")(a, b, bool(relu))


def _add_grads(container, dx, more):
    """dx + more, where None (a branch whose input gradient was not asked for) counts as zero."""
    return more if dx is None else dx if more is None else _add(container, dx, more)


class Sequential(Module):
    """Modules applied in order; children are named "0", "1", ... as in PyTorch.

    >>> model = Sequential(Linear(4, 8), ReLU(), Linear(8, 2))
    >>> model.state_dict().keys()  # "0.weight", "0.bias", "2.weight", "2.bias"
    """

    def __init__(self, *modules: Module):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), _check_module("Sequential", f"argument {i}", m))
        for i, m in enumerate(modules):
            m.init_as_output(i == len(modules) - 1)

    def init_as_output(self, output: bool) -> None:
        """A nested Sequential's outputs are its last child's."""
        if len(self):
            self[-1].init_as_output(output)

    def forward(self, x):
        return fusion.forward(self, self._modules.items(), x)

    def backward(self, dy):
        return fusion.backward(self, self._modules.items(), dy)

    def __getitem__(self, i):
        mods = list(self._modules.values())
        if not isinstance(i, slice):
            return mods[i]
        view = Sequential()  # the same layers: their initialization is not revisited
        for j, m in enumerate(mods[i]):
            setattr(view, str(j), m)
        return view

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module: Module) -> Sequential:
        if not isinstance(module, Module):
            raise TypeError(f"Sequential.append: `module` must be a Module; got {type(module).__name__}")
        if len(self):
            self[-1].init_as_output(False)
        setattr(self, str(len(self)), module)
        module.init_as_output(True)
        return self


class Residual(Module):
    """y = body(x) + shortcut(x), or body(x) + x when ``shortcut`` is None
    (the identity): the skip connection of ResNets. The children are named
    ``body`` and ``shortcut``, as the attributes of the equivalent PyTorch
    module, so state_dict keys read "3.body.0.weight", "3.shortcut.1.running_mean".
    The backward sends dy through both branches and adds the two dx.

    In a Sequential, a Residual directly followed by a ReLU computes
    max(y, 0) in the add's own pass (``relu=True`` of ``forward``); the ReLU
    keeps that output for its backward, so the results are those of the two
    layers run one by one, bit for bit.

    >>> block = Residual(Sequential(Conv2d(16, 16, 3, padding=1), BatchNorm2d(16)))
    >>> Sequential(block, ReLU())(np.zeros((2, 16, 8, 8), np.float32)).shape
    (2, 16, 8, 8)
    """

    def __init__(self, body: Module, shortcut: Module | None = None):
        super().__init__()
        self.body = _check_module("Residual", "`body`", body)
        self.shortcut = None if shortcut is None else _check_module("Residual", "`shortcut`", shortcut)
        for branch in (self.body, self.shortcut):
            if branch is not None:
                branch.init_as_output(False)  # summed, then fed on: hidden layers

    def forward(self, x, relu=False):
        """body(x) + shortcut(x); max(., 0) in the same pass when ``relu``."""
        a = self.body(x)
        b = x if self.shortcut is None else self.shortcut(x)
        # A shape-changing body (a stride, new channels) needs a shortcut that matches it.
        return _add("Residual", a, b, relu, ("body(x)", "x" if self.shortcut is None else "shortcut(x)"))

    def backward(self, dy):
        dx = self.body.backward(dy)
        return _add_grads("Residual", dx, dy if self.shortcut is None else self.shortcut.backward(dy))


class Concat(Module):
    """The branches' outputs on one input, concatenated along ``dim`` (1, the
    channels, by default): Inception- and DenseNet-style blocks. Branches are
    named "0", "1", ...; their outputs must agree in every other axis. The
    backward splits dy along ``dim``, runs each branch's backward on its
    part, and adds the dx.

    >>> cat = Concat(Conv2d(8, 4, 1), Conv2d(8, 6, 3, padding=1))
    >>> cat(np.zeros((2, 8, 5, 5), np.float32)).shape
    (2, 10, 5, 5)
    """

    def __init__(self, *branches: Module, dim: int = 1):
        super().__init__()
        if not branches:
            raise ValueError("Concat: needs at least one branch")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise TypeError(f"Concat: `dim` must be an int; got {dim!r}")
        self.dim = int(dim)
        for i, m in enumerate(branches):
            setattr(self, str(i), _check_module("Concat", f"branch {i}", m))
            m.init_as_output(False)
        self._sizes = None

    def forward(self, x):
        outs = [check_input("Concat", m(x), range(1, 33), f"branch {i}'s output")
                for i, m in enumerate(self.children())]
        ndim = outs[0].ndim
        if not -ndim <= self.dim < ndim:
            raise ValueError(f"Concat: `dim` must be in [{-ndim}, {ndim - 1}] for outputs of shape {outs[0].shape}; "
                             f"got {self.dim}")
        axis = self.dim % ndim
        for i, y in enumerate(outs):
            if y.ndim != ndim or y.shape[:axis] + y.shape[axis + 1:] != outs[0].shape[:axis] + outs[0].shape[axis + 1:]:
                raise ValueError(f"Concat: every branch's output must match branch 0's shape {outs[0].shape} "
                                 f"except in axis {axis}; branch {i} gives {y.shape}")
        self._sizes = (axis, [y.shape[axis] for y in outs])
        return np.concatenate(outs, axis=axis)

    def backward(self, dy):
        axis, sizes = self._sizes
        dy = check_input("Concat.backward", dy, range(1, 33), "dy")
        if dy.ndim <= axis or dy.shape[axis] != sum(sizes):
            raise ValueError(f"Concat.backward: `dy` must have {sum(sizes)} elements in axis {axis}; got {dy.shape}")
        parts = np.split(dy, np.cumsum(sizes)[:-1], axis=axis)
        dx = None
        for m, part in zip(self.children(), parts):
            dx = _add_grads("Concat", dx, m.backward(np.ascontiguousarray(part)))
        return dx

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def extra_repr(self):
        return f"dim={self.dim}"


# Last: fusion's patterns name the classes above (Residual), and Sequential
# reads fusion only when it runs.
from fastconv.nn import fusion  # noqa: E402
