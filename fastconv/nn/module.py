"""Module and Parameter: what every layer and container builds on (containers: fastconv.nn.containers).

A module's ``forward`` caches what its ``backward`` needs; ``backward(dy)``
returns dL/dx and *adds* parameter gradients into each ``Parameter.grad``
(``zero_grad()`` resets them), as PyTorch's autograd accumulates.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

from fastconv import _guard


class StateDictKeyError(KeyError, ValueError):
    """A state dict with missing or unexpected keys: a KeyError, and a ValueError like every other bad input."""


class Parameter:
    """A trainable float32 array ``data`` with its gradient ``grad`` (same shape).

    ``data`` is the live storage: ``layer.weight.data[...] = w`` changes the layer.
    """

    __slots__ = ("data", "grad")

    def __init__(self, data):
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        self.grad = np.zeros_like(self.data)

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Parameter(shape={self.data.shape})"


class Module:
    """Base class of layers and containers.

    Subclasses set Parameters, buffers (``register_buffer``) and child Modules
    as attributes; they are found in the order they were set, and named as
    in PyTorch ("0.weight", "features.3.bias", "bn.running_mean").
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        if name in self._buffers:  # reassigning a buffer keeps it registered
            object.__setattr__(self, name, value)
            return
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value: np.ndarray) -> None:
        """Register a non-trainable array saved in ``state_dict`` (e.g. running statistics)."""
        object.__setattr__(self, name, value)
        self._buffers[name] = None  # the value lives in the attribute

    # -- computation ---------------------------------------------------------

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, x):
        return self.forward(x)

    # -- traversal -----------------------------------------------------------

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def children(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def modules(self) -> Iterator[Module]:
        return (m for _, m in self.named_modules())

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self) -> Iterator[Parameter]:
        return (p for _, p in self.named_parameters())

    def named_buffers(self) -> Iterator[tuple[str, np.ndarray]]:
        for prefix, module in self.named_modules():
            for name in module._buffers:
                yield (f"{prefix}.{name}" if prefix else name), getattr(module, name)

    # -- modes and gradients ---------------------------------------------------

    def train(self, mode: bool = True) -> Module:
        """Training mode (dropout active, batch norm on batch statistics); returns self."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        """Evaluation mode; same as ``train(False)``."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Reset every parameter gradient to zero."""
        for p in self.parameters():
            p.grad.fill(0)

    # -- state -----------------------------------------------------------------

    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Copies of all parameters and buffers, keyed as in PyTorch, in PyTorch's layouts."""
        state = OrderedDict()
        for prefix, module in self.named_modules():  # module by module, as PyTorch orders keys
            dot = f"{prefix}." if prefix else ""
            state.update((dot + name, p.data.copy()) for name, p in module._parameters.items())
            state.update((dot + name, np.array(getattr(module, name), copy=True)) for name in module._buffers)
        return state

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy arrays from ``state_dict`` into this module's parameters and buffers.

        With ``strict`` (the default) the keys must match exactly; a missing or
        unexpected key, or a shape that differs, raises ``KeyError``/``ValueError``
        naming it. Values may be NumPy arrays or anything ``np.asarray`` accepts
        (a CPU ``torch.Tensor`` included). Returns ``(missing_keys, unexpected_keys)``.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"load_state_dict: `state_dict` must be a mapping; got {type(state_dict).__name__}")
        targets = OrderedDict()
        for prefix, module in self.named_modules():
            for name in list(module._parameters) + list(module._buffers):
                targets[f"{prefix}.{name}" if prefix else name] = (module, name)
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        if strict and (missing or unexpected):
            raise StateDictKeyError(f"load_state_dict: missing keys {_guard.few(missing)}; "
                                    f"unexpected keys {_guard.few(unexpected)}")
        values = {}
        for key, (module, name) in targets.items():
            if key not in state_dict:
                continue
            current = getattr(module, name)
            current = current.data if isinstance(current, Parameter) else current
            value = np.asarray(state_dict[key])
            if value.shape != current.shape:
                raise ValueError(f"load_state_dict: `{key}` must have shape {current.shape}; got {value.shape}")
            if not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
                raise TypeError(f"load_state_dict: `{key}` must be numeric; got dtype {value.dtype}")
            values[key] = value
        for key, value in values.items():  # all checked before anything changes
            module, name = targets[key]
            current = getattr(module, name)
            current = current.data if isinstance(current, Parameter) else current
            current[...] = value.astype(current.dtype, copy=False)
        return missing, unexpected

    # -- initialization ----------------------------------------------------------

    def init_as_output(self, output: bool) -> None:
        """Called by a container with whether this module's outputs are the
        container's outputs (its last child) or feed later layers. Layers
        whose default init depends on that (Linear: see fastconv.nn.init) re-scale
        their own untouched initial weights; others ignore it."""

    # -- printing ----------------------------------------------------------------

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"  ({name}): " + repr(m).replace("\n", "\n  ") for name, m in self._modules.items()]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"
