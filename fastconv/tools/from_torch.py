"""PyTorch import: ``fc.from_torch(torch_module)`` builds the equivalent fastconv model.

An ``nn.Sequential`` (nested too) of the layers both libraries have becomes
a :class:`fastconv.Sequential` with the same weights and buffers, each layer
in the mode (train or eval) its PyTorch twin is in, so outputs agree. Each
PyTorch class has one small function in the table of :func:`_converters`;
a layer without a row, or with an option fastconv lacks (Conv2d's
padding_mode != "zeros", MaxPool2d's return_indices=True, ...), raises
ValueError naming its position and the option.

A torch module with its own forward cannot be read, so residual and concat
blocks are mapped by what their class declares it computes: the attribute
``fastconv_container`` (one row of :data:`PATTERNS`), which the PyTorch
twins of fc.Residual and fc.Concat (``fastconv.models.containers(torch.nn)``)
carry. torch is imported only here, when called; fastconv never needs it
otherwise.
"""

from __future__ import annotations

import numpy as np

import fastconv as fc


class FromTorchError(ValueError):
    """A PyTorch layer fastconv cannot reproduce; the message names its position."""


def _label(m, where: str) -> str:
    return f"layer {where} ({type(m).__name__})" if where else f"the model ({type(m).__name__})"


def _require(m, where: str, **expected) -> None:
    """Refuse ``m`` unless each attribute has the value fastconv implements."""
    for name, want in expected.items():
        got = getattr(m, name)
        if got != want and not (isinstance(got, tuple) and set(got) == {want}):
            raise FromTorchError(f"from_torch: {_label(m, where)}: `{name}` must be {want!r} "
                                 f"(the only value fastconv has); got {got!r}")


def _copy(param, tensor) -> None:
    param.data[...] = tensor.detach().cpu().numpy().astype(np.float32, copy=False)


def _at(where: str, name: str) -> str:
    """The path of child ``name`` of the module at ``where`` ("" for the model itself)."""
    return f"{where}.{name}" if where else name


def _children(m, where, convert):
    return [convert(child, _at(where, name)) for name, child in m.named_children()]


def _sequential(m, where, convert):
    return fc.Sequential(*_children(m, where, convert))


def _conv2d(m, where, convert):
    _require(m, where, padding_mode="zeros")
    conv = fc.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                     dilation=m.dilation, groups=m.groups, bias=m.bias is not None)
    _copy(conv.weight, m.weight)
    if m.bias is not None:
        _copy(conv.bias, m.bias)
    return conv


def _maxpool2d(m, where, convert):
    _require(m, where, return_indices=False)  # fastconv keeps the argmax inside the layer
    return fc.MaxPool2d(m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                        ceil_mode=m.ceil_mode)


def _avgpool2d(m, where, convert):
    return fc.AvgPool2d(m.kernel_size, stride=m.stride, padding=m.padding, ceil_mode=m.ceil_mode,
                        count_include_pad=m.count_include_pad, divisor_override=m.divisor_override)


def _adaptive_pool(cls):
    def convert(m, where, _):
        if hasattr(m, "return_indices"):  # max pools only
            _require(m, where, return_indices=False)
        return cls(m.output_size)
    return convert


def _linear(m, where, convert):
    linear = fc.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    _copy(linear.weight, m.weight)
    if m.bias is not None:
        _copy(linear.bias, m.bias)
    return linear


def _batchnorm(cls):
    def convert(m, where, _):
        bn = cls(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                 track_running_stats=m.track_running_stats)
        if m.affine:
            _copy(bn.weight, m.weight)
            _copy(bn.bias, m.bias)
        if m.track_running_stats:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                getattr(bn, name)[...] = getattr(m, name).detach().cpu().numpy()
        return bn
    return convert


def _same(cls, *attrs):
    """A layer whose arguments are the PyTorch layer's attributes of the same names."""
    return lambda m, where, convert: cls(*(getattr(m, a) for a in attrs))


def _converters(nn) -> dict:
    return {
        nn.Sequential: _sequential,
        nn.Conv2d: _conv2d,
        nn.MaxPool2d: _maxpool2d,
        nn.AvgPool2d: _avgpool2d,
        nn.AdaptiveAvgPool2d: _adaptive_pool(fc.AdaptiveAvgPool2d),
        nn.AdaptiveMaxPool2d: _adaptive_pool(fc.AdaptiveMaxPool2d),
        nn.ReLU: _same(fc.ReLU),
        nn.LeakyReLU: _same(fc.LeakyReLU, "negative_slope"),
        nn.ELU: _same(fc.ELU, "alpha"),
        nn.Sigmoid: _same(fc.Sigmoid),
        nn.Tanh: _same(fc.Tanh),
        nn.BatchNorm1d: _batchnorm(fc.BatchNorm1d),
        nn.BatchNorm2d: _batchnorm(fc.BatchNorm2d),
        nn.Dropout: _same(fc.Dropout, "p"),
        nn.Linear: _linear,
        nn.Flatten: _same(fc.Flatten, "start_dim", "end_dim"),
    }


def _own_arrays(m, where, pattern):
    """A declared block holds its layers' parameters only: its forward could use any of its own."""
    own = [name for name, _ in (*m.named_parameters(recurse=False), *m.named_buffers(recurse=False))]
    if own:
        raise FromTorchError(f"from_torch: {_label(m, where)} declares fastconv_container = {pattern!r} but holds "
                             f"parameters or buffers of its own ({', '.join(own)}), which that pattern does not use")


def _residual(relu):
    pattern = "residual_relu" if relu else "residual"

    def residual(m, where, convert):
        _own_arrays(m, where, pattern)
        names = [name for name, _ in m.named_children()]
        if "body" not in names or set(names) - {"body", "shortcut"}:
            raise FromTorchError(f"from_torch: {_label(m, where)} declares fastconv_container = {pattern!r}, so its "
                                 f"children must be `body` and, optionally, `shortcut`; it has {names}")
        from torch.nn import Identity

        shortcut = getattr(m, "shortcut", None)
        identity = shortcut is None or type(shortcut) is Identity
        block = fc.Residual(convert(m.body, _at(where, "body")),
                            None if identity else convert(shortcut, _at(where, "shortcut")))
        return fc.Sequential(block, fc.ReLU()) if relu else block
    return residual


def _concat(m, where, convert):
    _own_arrays(m, where, "concat")
    return fc.Concat(*_children(m, where, convert), dim=getattr(m, "dim", 1))


# What a torch module's class may declare as ``fastconv_container``: the computation its forward does.
#   "residual":      body(x) + shortcut(x), children `body` and `shortcut` (None or nn.Identity: + x)
#   "residual_relu": relu(body(x) + shortcut(x)), the same children; becomes Sequential(Residual, ReLU)
#   "concat":        torch.cat([m(x) for m in self.children()], dim=self.dim) (dim 1 when absent)
PATTERNS = {"residual": _residual(relu=False), "residual_relu": _residual(relu=True), "concat": _concat}


def _unmapped(m, where, table) -> str:
    """Why ``m`` has no converter, and what from_torch maps instead."""
    cls = type(m)
    known = ", ".join(sorted(c.__name__ for c in table))
    if cls.__module__.startswith("torch."):
        return f"from_torch: {_label(m, where)} has no fastconv equivalent (torch.nn layers mapped: {known})"
    hint = (" It has a `body`: if its forward is body(x) + shortcut(x) (or relu of that), declare "
            "fastconv_container = 'residual' (or 'residual_relu') on its class." if hasattr(m, "body") else "")
    return (f"from_torch: {_label(m, where)} is a module of its own ({cls.__module__}.{cls.__qualname__}); "
            f"fastconv cannot read its forward.{hint} from_torch maps the torch.nn layers {known}, and residual "
            f"and concat blocks whose class declares fastconv_container = {' | '.join(map(repr, PATTERNS))}, as "
            "the twins of fastconv.models.containers(torch.nn) do (README: from_torch)")


def from_torch(module) -> fc.Module:
    """The fastconv model equivalent to PyTorch ``module``, weights and buffers copied.

    ``module`` is a ``torch.nn.Sequential`` (nested ones too) of Conv2d,
    MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, AdaptiveMaxPool2d, ReLU,
    LeakyReLU, ELU, Sigmoid, Tanh, BatchNorm1d, BatchNorm2d, Dropout, Linear
    and Flatten, or one such layer, and of residual and concat blocks: a module
    whose class declares ``fastconv_container`` (:data:`PATTERNS`), as the
    PyTorch twins of fc.Residual and fc.Concat (``fc.models.containers(torch.nn)``,
    which ``fc.models.resnet(20, lib=torch.nn)`` is built of) do. Each fastconv
    layer takes its PyTorch twin's train/eval mode. Weights are copied as
    float32. Raises FromTorchError (a ValueError) naming the first layer that
    cannot be mapped ("layer 2.1 (GELU)"), its unsupported option, or, for a
    module with a forward of its own, its class and the patterns supported.

    >>> net = fc.from_torch(torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU()))
    >>> net(np.ones((1, 4), np.float32)).shape
    (1, 2)
    """
    try:
        from torch import nn
    except ImportError:
        raise ImportError("from_torch needs PyTorch (pip install torch)") from None
    table = _converters(nn)

    def convert(m, where: str):
        pattern = getattr(type(m), "fastconv_container", None)
        if pattern is None:
            row = table.get(type(m))
            if row is None:
                raise FromTorchError(_unmapped(m, where, table))
        elif pattern in PATTERNS:
            row = PATTERNS[pattern]
        else:
            raise FromTorchError(f"from_torch: {_label(m, where)}: `fastconv_container` must be one of "
                                 f"{', '.join(map(repr, PATTERNS))}; got {pattern!r}")
        try:
            layer = row(m, where, convert)
        except FromTorchError:
            raise
        except (ValueError, TypeError) as e:  # an argument a fastconv layer refuses
            raise FromTorchError(f"from_torch: {_label(m, where)}: {e}") from None
        for mine in ([layer, *layer.children()] if pattern == "residual_relu" else [layer]):
            object.__setattr__(mine, "training", bool(m.training))  # its own mode only, as in torch
        return layer

    if not isinstance(module, nn.Module):
        raise TypeError(f"from_torch: `module` must be a torch.nn.Module; got {type(module).__name__}")
    return convert(module, "")
