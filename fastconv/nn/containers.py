"""Containers: modules made of modules. Each runs its children through
:mod:`fastconv.nn.fusion`, so the fused patterns apply inside any of them."""

from __future__ import annotations

from fastconv.nn import fusion
from fastconv.nn.module import Module


class Sequential(Module):
    """Modules applied in order; children are named "0", "1", ... as in PyTorch.

    >>> model = Sequential(Linear(4, 8), ReLU(), Linear(8, 2))
    >>> model.state_dict().keys()  # "0.weight", "0.bias", "2.weight", "2.bias"
    """

    def __init__(self, *modules: Module):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: argument {i} must be a Module; got {type(m).__name__}")
            setattr(self, str(i), m)
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
